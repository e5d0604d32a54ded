"""Upsampling, cropping, reshape, permute, rescaling, normalisation and merges of
convcli.ops against loops and hand computations (oracles in tests/oracles.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli import ops
from convcli.errors import ModelError, ShapeError
from tests.oracles import (
    layer_norm_naive,
    upsample_bilinear_naive,
    upsample_nearest_naive,
)


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- upsampling


@pytest.mark.parametrize("size", [(2, 2), (3, 2), (1, 4), (1, 1), (4, 3)])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_upsampling_matches_oracle(size, interpolation: str) -> None:
    rng = np.random.default_rng(100 + size[0] * 10 + size[1])
    x = rand(rng, 2, 5, 7, 3)
    oracle = upsample_nearest_naive if interpolation == "nearest" else upsample_bilinear_naive
    out = ops.upsampling2d(x, size, interpolation)
    assert out.dtype == np.float32 and out.shape == (2, 5 * size[0], 7 * size[1], 3)
    np.testing.assert_allclose(out, oracle(x, size), rtol=1e-6, atol=1e-6)


def test_upsampling_by_hand() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32).reshape(1, 2, 2, 1)
    assert ops.upsampling2d(x)[0, :, :, 0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    # bilinear, factor 2: output centres at input coordinates -0.25 (clamped to 0), 0.25,
    # 0.75, 1.25 (clamped to 1): weights 1, 3/4+1/4, 1/4+3/4, 1 along each axis
    row = ops.upsampling2d(x, 2, "bilinear")[0, 0, :, 0].tolist()
    assert row == [1.0, 1.25, 1.75, 2.0]
    assert ops.upsampling2d(x, 2, "bilinear")[0, :, 0, 0].tolist() == [1.0, 1.5, 2.5, 3.0]
    # a single pixel stays constant whatever the interpolation
    one = np.full((1, 1, 1, 2), 7.0, np.float32)
    assert (ops.upsampling2d(one, (3, 3), "bilinear") == 7.0).all()


def test_upsampling_errors() -> None:
    with pytest.raises(ModelError, match="Allowed values are: nearest, bilinear. Received: interpolation=bicubic"):
        ops.upsampling2d(np.zeros((1, 2, 2, 1), np.float32), 2, "bicubic")
    with pytest.raises(ShapeError, match="`size` must be positive"):
        ops.upsampling2d(np.zeros((1, 2, 2, 1), np.float32), 0)


# --------------------------------------------------------------------------- cropping, reshape, permute


@pytest.mark.parametrize("cropping", [(0, 0, 0, 0), (1, 2, 0, 3), (3, 0, 2, 2), (0, 4, 5, 0)])
def test_cropping(cropping) -> None:
    rng = np.random.default_rng(200)
    x = rand(rng, 2, 5, 6, 3)
    top, bottom, left, right = cropping
    out = ops.cropping2d(x, cropping)
    assert out.shape == (2, 5 - top - bottom, 6 - left - right, 3)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            assert (out[:, i, j] == x[:, i + top, j + left]).all()


def test_cropping_errors() -> None:
    with pytest.raises(ShapeError, match=r"\(3, 2, 0, 0\) must be non-negative and leave at least one row"):
        ops.cropping2d(np.zeros((1, 5, 6, 1), np.float32), (3, 2, 0, 0))
    with pytest.raises(ShapeError, match="non-negative"):
        ops.cropping2d(np.zeros((1, 5, 6, 1), np.float32), (-1, 0, 0, 0))


def test_reshape_keeps_the_batch_and_c_order() -> None:
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    out = ops.reshape(x, (4, -1))
    assert out.shape == (2, 4, 3)
    # sample b, flat index i: C order within the sample
    for b in range(2):
        flat = [x[b, i, j] for i in range(3) for j in range(4)]
        assert out[b].reshape(-1).tolist() == flat
    assert ops.reshape(np.zeros((3, 1, 1, 8), np.float32), (8,)).shape == (3, 8)
    assert ops.reshape(np.zeros((3, 8), np.float32), (1, 1, 8)).shape == (3, 1, 1, 8)  # the SE block's reshape


@pytest.mark.parametrize("target", [(5,), (4, -1, 2), (-1, -1), (0, 12), (-2, 6)])
def test_reshape_errors(target) -> None:
    with pytest.raises(ShapeError, match=r"a sample of shape \(3, 4\) \(12 values\) cannot become"):
        ops.reshape(np.zeros((2, 3, 4), np.float32), target)


def test_permute_is_1_based_like_keras() -> None:
    rng = np.random.default_rng(300)
    x = rand(rng, 2, 3, 4, 5)
    out = ops.permute(x, (3, 1, 2))
    assert out.shape == (2, 5, 3, 4) and out.flags.c_contiguous
    for i, j, k in [(0, 0, 0), (4, 2, 3), (1, 1, 2)]:
        assert out[1, i, j, k] == x[1, j, k, i]
    assert ops.permute(rand(rng, 2, 6, 7), (2, 1)).shape == (2, 7, 6)
    with pytest.raises(ShapeError, match=r"`dims` must order the axes 1..3.*Received: dims=\(0, 1, 2\)"):
        ops.permute(x, (0, 1, 2))


# --------------------------------------------------------------------------- rescaling, normalization


def test_rescaling() -> None:
    x = np.array([[[[0.0, 127.5, 255.0]]]], np.float32)
    np.testing.assert_allclose(ops.rescaling(x, 1 / 127.5, -1.0), [[[[-1, 0, 1]]]], atol=1e-7)
    np.testing.assert_allclose(ops.rescaling(x, 1 / 255), [[[[0, 0.5, 1]]]], atol=1e-7)
    per_channel = ops.rescaling(x, np.array([1, 2, 3], np.float32), np.array([0, 1, -1], np.float32))
    assert per_channel.dtype == np.float32 and per_channel.tolist() == [[[[0.0, 256.0, 764.0]]]]


def test_normalization_keras_3() -> None:
    x = np.array([[[[3.0, 5.0, 1.0]]]], np.float32)
    mean = np.array([1.0, 1.0, 1.0], np.float32)
    variance = np.array([4.0, 0.0, 1e-20], np.float32)
    # (x - mean) / max(sqrt(var), 1e-7): std 2, then the 1e-7 floor for var 0 and 1e-20
    out = ops.normalization(x, mean, variance)
    np.testing.assert_allclose(out, [[[[1.0, 4.0 / 1e-7, 0.0]]]], rtol=1e-6)
    back = ops.normalization(out, mean, variance, invert=True)
    np.testing.assert_allclose(back, x, rtol=1e-6)
    # Keras stores mean/variance broadcastable, e.g. (1, 1, 1, C)
    np.testing.assert_allclose(ops.normalization(x, mean.reshape(1, 1, 1, 3), variance.reshape(1, 1, 1, 3)), out)
    with pytest.raises(ShapeError, match="do not broadcast"):
        ops.normalization(x, np.zeros(2, np.float32), np.ones(2, np.float32))


LAYER_NORM_CASES = [
    # (shape, axis, epsilon, scale, center)
    ((2, 4, 5, 6), -1, 1e-3, True, True),
    ((2, 4, 5, 6), -1, 1e-6, True, True),  # ConvNeXt
    ((2, 4, 5, 6), (1, 2, 3), 1e-3, True, False),
    ((2, 4, 5, 6), (2, 3), 1e-3, False, True),
    ((3, 7), -1, 1e-3, False, False),
    ((2, 4, 5, 6), 1, 1e-5, True, True),
]


@pytest.mark.parametrize("index", range(len(LAYER_NORM_CASES)))
def test_layer_norm_matches_oracle(index: int) -> None:
    shape, axis, epsilon, scale, center = LAYER_NORM_CASES[index]
    rng = np.random.default_rng(400 + index)
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)
    axes = (axis,) if isinstance(axis, int) else axis
    normalised = tuple(shape[a] for a in axes)
    gamma = rand(rng, *normalised) if scale else None
    beta = rand(rng, *normalised) if center else None
    out = ops.layer_norm(x, gamma, beta, epsilon=epsilon, axis=axis)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, layer_norm_naive(x, gamma, beta, epsilon, axes), rtol=1e-5, atol=1e-5)


def test_layer_norm_by_hand_and_large_offsets() -> None:
    # [1, 3]: mean 2, biased variance 1 -> (x - 2) / sqrt(1 + eps)
    out = ops.layer_norm(np.array([[1.0, 3.0]], np.float32), epsilon=1e-3)
    np.testing.assert_allclose(out, [[-1 / np.sqrt(1.001), 1 / np.sqrt(1.001)]], rtol=1e-6)
    # values near 1e4 with spread 1: the statistics must not lose the spread
    rng = np.random.default_rng(410)
    x = (1e4 + rng.standard_normal((2, 64))).astype(np.float32)
    np.testing.assert_allclose(ops.layer_norm(x, epsilon=1e-6), layer_norm_naive(x, None, None, 1e-6, (-1,)),
                               rtol=1e-3, atol=2e-3)  # float32 input itself is only ~1e-3 exact at 1e4
    with pytest.raises(ShapeError, match=r"`gamma` must have shape \(6,\)"):
        ops.layer_norm(rand(rng, 2, 6), np.ones(5, np.float32))
    with pytest.raises(ShapeError, match="not the batch axis"):
        ops.layer_norm(rand(rng, 2, 6), axis=0)


@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False), (False, False)])
def test_batch_norm_scale_and_center_off(scale: bool, center: bool) -> None:
    rng = np.random.default_rng(500)
    x, gamma, beta, mean = rand(rng, 2, 3, 3, 4), rand(rng, 4), rand(rng, 4), rand(rng, 4)
    var = rng.random(4).astype(np.float32) + 0.1
    out = ops.batch_norm(x, gamma if scale else None, beta if center else None, mean, var)
    g = gamma.astype(np.float64) if scale else 1.0
    b = beta.astype(np.float64) if center else 0.0
    expected = g * (x.astype(np.float64) - mean) / np.sqrt(var.astype(np.float64) + 1e-3) + b
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- merges


def _loop_merge(kind: str, xs: list[np.ndarray]) -> np.ndarray:
    """Element by element over the broadcast sample shape, each input indexed with its
    own size-1 axes pinned at 0 (Keras' broadcasting after expanding axes at 1)."""
    ndim = max(x.ndim for x in xs)
    xs = [x.reshape(x.shape[:1] + (1,) * (ndim - x.ndim) + x.shape[1:]).astype(np.float64) for x in xs]
    shape = tuple(max(x.shape[a] for x in xs) for a in range(ndim))
    out = np.zeros(shape)
    for index in np.ndindex(shape):
        values = [float(x[tuple(i if x.shape[a] > 1 else 0 for a, i in enumerate(index))]) for x in xs]
        if kind == "add":
            out[index] = sum(values)
        elif kind == "subtract":
            out[index] = values[0] - values[1]
        elif kind == "multiply":
            out[index] = float(np.prod(values))
        elif kind == "average":
            out[index] = sum(values) / len(values)
        elif kind == "maximum":
            out[index] = max(values)
        else:
            out[index] = min(values)
    return out


MERGE_SHAPES = [
    [(2, 3, 4, 5), (2, 3, 4, 5)],
    [(2, 3, 4, 5), (2, 3, 4, 5), (2, 3, 4, 5)],
    [(2, 3, 4, 5), (2, 1, 1, 5)],  # squeeze-and-excitation's channel weights
    [(2, 1, 1, 5), (2, 3, 4, 5)],
    [(2, 3, 4, 5), (2, 5)],  # fewer axes: new axes right after the batch axis
    [(2, 3, 1, 5), (2, 1, 4, 1), (2, 4, 5)],
    [(3, 6), (3, 6)],
]


@pytest.mark.parametrize("kind", ["add", "subtract", "multiply", "average", "maximum", "minimum"])
@pytest.mark.parametrize("index", range(len(MERGE_SHAPES)))
def test_elementwise_merges_match_loops(kind: str, index: int) -> None:
    shapes = MERGE_SHAPES[index]
    if kind == "subtract" and len(shapes) != 2:
        return
    rng = np.random.default_rng(600 + index)
    xs = [rand(rng, *shape) for shape in shapes]
    out = ops.merge(kind, xs)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _loop_merge(kind, xs), rtol=1e-6, atol=1e-6)
    assert all(x.shape == s for x, s in zip(xs, shapes))  # inputs untouched


def test_concatenate() -> None:
    rng = np.random.default_rng(700)
    a, b, c = rand(rng, 2, 3, 4, 5), rand(rng, 2, 3, 4, 2), rand(rng, 2, 3, 4, 1)
    out = ops.merge("concatenate", [a, b, c])
    assert out.shape == (2, 3, 4, 8)
    assert (out[..., :5] == a).all() and (out[..., 5:7] == b).all() and (out[..., 7] == c[..., 0]).all()
    rows = ops.merge("concatenate", [a, rand(rng, 2, 1, 4, 5)], axis=1)
    assert rows.shape == (2, 4, 4, 5) and (rows[:, :3] == a).all()
    with pytest.raises(ShapeError, match=r"agree on every axis but -1. Received shapes \(2, 3, 4, 5\), \(2, 3, 3, 2\)"):
        ops.merge("concatenate", [a, rand(rng, 2, 3, 3, 2)])
    with pytest.raises(ShapeError, match="same number of axes"):
        ops.merge("concatenate", [a, rand(rng, 2, 5)])
    with pytest.raises(ShapeError, match="axis=0"):
        ops.merge("concatenate", [a, a], axis=0)


def test_merge_errors() -> None:
    a = np.zeros((2, 3, 4, 5), np.float32)
    with pytest.raises(ShapeError, match=r"do not broadcast. Received shapes \(2, 3, 4, 5\), \(2, 3, 4, 4\)"):
        ops.merge("add", [a, np.zeros((2, 3, 4, 4), np.float32)])
    with pytest.raises(ShapeError, match="different batch sizes"):
        ops.merge("add", [a, np.zeros((3, 3, 4, 5), np.float32)])
    with pytest.raises(ShapeError, match="subtract: needs exactly 2 inputs. Received: 3"):
        ops.merge("subtract", [a, a, a])
    with pytest.raises(ModelError, match="Allowed values are: add, subtract.*Received: kind=dot"):
        ops.merge("dot", [a, a])
    with pytest.raises(ShapeError, match="at least one input"):
        ops.merge("add", [])
    assert (ops.merge("add", [a + 1]) == 1).all()


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["add", "multiply", "average", "maximum", "minimum"]),
    shapes=st.lists(st.tuples(st.sampled_from([1, 3]), st.sampled_from([1, 2]), st.sampled_from([1, 4])),
                    min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_merge_broadcasting_hypothesis(kind: str, shapes, seed: int) -> None:
    rng = np.random.default_rng(seed)
    xs = [rand(rng, 2, *shape) for shape in shapes]
    np.testing.assert_allclose(ops.merge(kind, xs), _loop_merge(kind, xs), rtol=1e-6, atol=1e-6)
