"""The convolution, pooling and flat-layer computations of convcli.ops against the naive
loop oracles of tests/oracles.py.

The oracles loop over output positions in float64 (numpy-ml keeps ``conv2D_naive`` beside
its fast im2col conv for the same purpose); the fast ops must agree to float32 rounding.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli import ops
from convcli.errors import ModelError, ShapeError
from tests.oracles import (
    conv2d_naive,
    keras_same,
    local_naive,
    pool_naive,
    resolved_pads,
)

__all__ = ["conv2d_naive", "keras_same", "local_naive", "pool_naive"]  # tests/test_forward.py imports them from here

RTOL, ATOL = 1e-4, 1e-4


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- conv2d


def test_lecture_hand_example_gives_132() -> None:
    region = np.array([[93, 139, 101], [26, 252, 196], [135, 230, 18]], np.float32)
    kernel = np.full((3, 3, 1, 1), 1 / 9, np.float32)
    out = ops.conv2d(region.reshape(1, 3, 3, 1), kernel)
    assert out.shape == (1, 1, 1, 1)
    assert out[0, 0, 0, 0] == pytest.approx(1190 / 9, rel=1e-6)  # 132.22..., "≈ 132"


def test_alexnet_conv1_volume_is_55x55x96() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((1, 227, 227, 3), dtype=np.float32)
    kernel = rand(rng, 11, 11, 3, 96)
    out = ops.conv2d(x, kernel, strides=4)
    assert out.shape == (1, 55, 55, 96) and out.dtype == np.float32
    # spot-check three neurons by hand: the window at (4i, 4j), all 11x11x3 weights, summed
    for i, j, f in [(0, 0, 0), (54, 54, 95), (13, 40, 7)]:
        window = x[0, 4 * i : 4 * i + 11, 4 * j : 4 * j + 11, :].astype(np.float64)
        assert out[0, i, j, f] == pytest.approx(float((window * kernel[..., f]).sum()), rel=1e-4, abs=1e-4)


CONV_CASES = [
    # (N, H, W, C, F_h, F_w, K, strides, padding, dilation)
    (2, 7, 7, 1, 3, 3, 2, (1, 1), "valid", (1, 1)),
    (2, 7, 9, 3, 3, 3, 4, (1, 1), "same", (1, 1)),
    (1, 9, 8, 2, 3, 2, 3, (2, 3), "same", (1, 1)),
    (3, 10, 10, 3, 3, 3, 2, (2, 2), "valid", (1, 1)),  # the lecture's 4.5: Keras floors to 4
    (2, 11, 11, 1, 5, 5, 3, (3, 3), 2, (1, 1)),
    (1, 8, 9, 4, 3, 3, 5, (1, 1), (1, 0, 2, 1), (1, 1)),
    (2, 9, 9, 2, 3, 3, 2, (1, 1), "valid", (2, 2)),
    (1, 10, 11, 1, 3, 2, 2, (2, 1), "same", (2, 3)),
    (1, 12, 12, 3, 3, 3, 4, (1, 2), "same", (3, 1)),
    (2, 6, 6, 5, 1, 1, 3, (1, 1), "valid", (1, 1)),  # 1x1: the matmul-only path
    (1, 7, 7, 2, 1, 1, 3, (2, 2), "valid", (1, 1)),
    (1, 5, 5, 1, 5, 5, 1, (1, 1), "valid", (1, 1)),
    (2, 8, 8, 3, 4, 4, 2, (4, 4), "same", (1, 1)),
    (2, 9, 8, 1, 3, 3, 50, (1, 2), "same", (1, 1)),  # many filters: no column grouping
    (1, 7, 7, 3, 3, 3, 64, (2, 2), "valid", (1, 1)),
    (1, 12, 14, 2, 5, 3, 6, (1, 2), "valid", (1, 1)),  # few filters: grouped columns, strided
]


@pytest.mark.parametrize("index", range(len(CONV_CASES)))
@pytest.mark.parametrize("use_bias", [True, False])
def test_conv2d_matches_naive_oracle(index: int, use_bias: bool) -> None:
    n, h, w, c, fh, fw, k, strides, padding, dilation = CONV_CASES[index]
    rng = np.random.default_rng(1000 + index)
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, fh, fw, c, k), rand(rng, k)
    out = ops.conv2d(x, kernel, bias if use_bias else None, strides=strides, padding=padding, dilation=dilation)
    expected = conv2d_naive(x, kernel, bias if use_bias else None, strides,
                            resolved_pads(h, w, fh, fw, strides, padding, dilation), dilation)
    assert out.dtype == np.float32
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


def test_conv2d_same_padding_keeps_size_and_puts_extra_at_bottom_right() -> None:
    # A 2x2 kernel with "same" pads 0 rows on top and 1 at the bottom (Keras): the output
    # at (0, 0) sees x[0:2, 0:2] and the last row sees x[-1] and a zero row.
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = ops.conv2d(x, np.ones((2, 2, 1, 1), np.float32), padding="same")
    assert out.shape == (1, 4, 4, 1)
    assert out[0, 0, 0, 0] == 0 + 1 + 4 + 5
    assert out[0, 3, 3, 0] == 15
    assert out[0, 3, 0, 0] == 12 + 13


@pytest.mark.parametrize("activation,reference", [
    ("relu", lambda z: np.maximum(z, 0)),
    ("sigmoid", lambda z: 1 / (1 + np.exp(-z))),
    ("tanh", np.tanh),
    ("elu", lambda z: np.where(z > 0, z, np.expm1(z))),
    ("leaky_relu", lambda z: np.where(z > 0, z, 0.2 * z)),  # keras.activations.leaky_relu's default slope
    ("softmax", lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)),
])
def test_conv2d_fused_activation(activation: str, reference) -> None:
    rng = np.random.default_rng(3)
    x, kernel, bias = rand(rng, 2, 6, 6, 2), rand(rng, 3, 3, 2, 4), rand(rng, 4)
    out = ops.conv2d(x, kernel, bias, padding="same", activation=activation)
    logits = conv2d_naive(x, kernel, bias, pads=(1, 1, 1, 1))
    np.testing.assert_allclose(out, reference(logits), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("k", [4, 50])
@pytest.mark.parametrize("chunk_bytes", [1, 3000, 20_000, 10**9])
def test_conv2d_chunking_gives_the_same_result(c: int, k: int, chunk_bytes: int) -> None:
    # 1 byte: one output row per chunk; 3000: a few rows of one sample; 20000: a few
    # samples per chunk; 1e9: the whole batch at once.
    rng = np.random.default_rng(5)
    x, kernel, bias = rand(rng, 5, 9, 8, c), rand(rng, 3, 3, c, k), rand(rng, k)
    out = ops.conv2d(x, kernel, bias, strides=(2, 1), padding="same", activation="relu", chunk_bytes=chunk_bytes)
    expected = np.maximum(conv2d_naive(x, kernel, bias, (2, 1), resolved_pads(9, 8, 3, 3, (2, 1), "same", (1, 1))), 0)
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_conv2d_memory_is_bounded_by_the_chunk_not_the_batch() -> None:
    rng = np.random.default_rng(6)
    x, kernel = rand(rng, 64, 32, 32, 8), rand(rng, 3, 3, 8, 8)
    full_im2col = 64 * 30 * 30 * 3 * 3 * 8 * 4  # 16.6 MB if built in one piece
    output = 64 * 30 * 30 * 8 * 4  # 1.8 MB
    chunk = 256 * 1024
    peak = _peak_bytes(lambda: ops.conv2d(x, kernel, chunk_bytes=chunk))
    assert peak < output + 2 * chunk + 200_000 < full_im2col / 4


def test_conv2d_chunk_never_exceeds_the_global_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    x, kernel = rand(rng, 64, 32, 32, 8), rand(rng, 3, 3, 8, 8)
    monkeypatch.setattr(ops, "IM2COL_BUDGET_BYTES", 128 * 1024)
    outputs: list[np.ndarray] = []
    peak = _peak_bytes(lambda: outputs.append(ops.conv2d(x, kernel, chunk_bytes=10**9)))  # asks for more than allowed
    assert peak < 64 * 30 * 30 * 8 * 4 + 2 * 128 * 1024 + 200_000
    np.testing.assert_allclose(outputs[0][:1], conv2d_naive(x[:1], kernel), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(outputs[0][-1:], conv2d_naive(x[-1:], kernel), rtol=RTOL, atol=ATOL)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 3),
    fh=st.integers(1, 4), fw=st.integers(1, 4), k=st.integers(1, 3),
    sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
    padding=st.sampled_from(["valid", "same", 0, 1, 2]), seed=st.integers(0, 2**16),
)
def test_conv2d_hypothesis(n, h, w, c, fh, fw, k, sh, sw, dh, dw, padding, seed) -> None:
    pads = resolved_pads(h, w, fh, fw, (sh, sw), padding, (dh, dw))
    eh, ew = (fh - 1) * dh + 1, (fw - 1) * dw + 1
    rng = np.random.default_rng(seed)
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, fh, fw, c, k), rand(rng, k)
    if h + pads[0] + pads[1] < eh or w + pads[2] + pads[3] < ew:
        with pytest.raises(ShapeError, match="larger than"):
            ops.conv2d(x, kernel, bias, strides=(sh, sw), padding=padding, dilation=(dh, dw))
        return
    out = ops.conv2d(x, kernel, bias, strides=(sh, sw), padding=padding, dilation=(dh, dw))
    np.testing.assert_allclose(out, conv2d_naive(x, kernel, bias, (sh, sw), pads, (dh, dw)), rtol=RTOL, atol=ATOL)


def test_conv2d_errors_name_the_shapes() -> None:
    x = np.zeros((1, 5, 5, 3), np.float32)
    with pytest.raises(ShapeError, match=r"\(F_h, F_w, 3, K\).*\(3, 3, 2, 4\)"):
        ops.conv2d(x, np.zeros((3, 3, 2, 4), np.float32))
    with pytest.raises(ShapeError, match="kernel of size 7 is larger than the padded input of size 5"):
        ops.conv2d(x, np.zeros((7, 7, 3, 1), np.float32))
    with pytest.raises(ShapeError, match=r"\(N, H, W, C\).*\(5, 5, 3\)"):
        ops.conv2d(x[0], np.zeros((3, 3, 3, 1), np.float32))
    with pytest.raises(ShapeError, match="Allowed values are: .*same.*Received: padding='full'"):
        ops.conv2d(x, np.zeros((3, 3, 3, 1), np.float32), padding="full")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"bias must have shape \(4,\)"):
        ops.conv2d(x, np.zeros((3, 3, 3, 4), np.float32), np.zeros(3, np.float32))


# --------------------------------------------------------------------------- locally connected


@pytest.mark.parametrize("n,h,w,c,fh,fw,k,strides", [
    (2, 6, 6, 3, 3, 3, 2, (1, 1)),
    (1, 7, 9, 1, 3, 2, 3, (2, 3)),
    (3, 5, 5, 2, 5, 5, 4, (1, 1)),
    (2, 9, 8, 2, 2, 3, 1, (2, 2)),
])
@pytest.mark.parametrize("use_bias", [True, False])
def test_locally_connected_matches_naive_oracle(n, h, w, c, fh, fw, k, strides, use_bias) -> None:
    rng = np.random.default_rng(n * 100 + h)
    oh, ow = (h - fh) // strides[0] + 1, (w - fw) // strides[1] + 1
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, oh * ow, fh * fw * c, k), rand(rng, oh, ow, k)
    out = ops.locally_connected2d(x, kernel, bias if use_bias else None, kernel_size=(fh, fw), strides=strides)
    expected = local_naive(x, kernel.astype(np.float64), bias if use_bias else None, (fh, fw), strides)
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


def test_locally_connected_with_shared_weights_is_a_convolution() -> None:
    rng = np.random.default_rng(11)
    x, kernel, bias = rand(rng, 2, 8, 7, 3), rand(rng, 3, 3, 3, 4), rand(rng, 4)
    oh, ow = 3, 3  # (8-3)//2+1, (7-3)//2+1
    unshared = np.broadcast_to(kernel.reshape(1, 27, 4), (oh * ow, 27, 4))
    out = ops.locally_connected2d(x, unshared, np.broadcast_to(bias, (oh, ow, 4)), kernel_size=3,
                                  strides=2, activation="relu")
    np.testing.assert_allclose(out, ops.conv2d(x, kernel, bias, strides=2, activation="relu"), rtol=1e-5, atol=1e-5)


def test_locally_connected_chunked_and_errors() -> None:
    rng = np.random.default_rng(12)
    x, kernel = rand(rng, 4, 6, 6, 2), rand(rng, 16, 18, 3)
    expected = local_naive(x, kernel.astype(np.float64), None, (3, 3), (1, 1))
    np.testing.assert_allclose(ops.locally_connected2d(x, kernel, kernel_size=3, chunk_bytes=1), expected,
                               rtol=RTOL, atol=ATOL)
    with pytest.raises(ShapeError, match=r"must be \(16, 18, K\).*\(9, 18, 3\)"):
        ops.locally_connected2d(x, kernel[:9], kernel_size=3)


# --------------------------------------------------------------------------- pooling


POOL_CASES = [
    # (H, W, pool, strides, padding)
    (4, 4, (2, 2), (2, 2), "valid"),
    (5, 7, (2, 2), (2, 2), "valid"),
    (7, 7, (3, 3), (2, 2), "valid"),  # the lecture's overlapping pooling F=3, S=2
    (5, 7, (2, 2), (2, 2), "same"),
    (7, 6, (3, 3), (2, 2), "same"),
    (6, 9, (3, 2), (1, 3), "same"),
    (5, 5, (5, 5), (1, 1), "valid"),
    (3, 4, (1, 1), (2, 2), "same"),
    (9, 9, (2, 3), (3, 2), "valid"),
    (9, 8, (3, 2), (3, 2), "valid"),  # tiles the image exactly (the average's fast path)
    (6, 6, (1, 3), (1, 3), "valid"),
]


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("h,w,size,strides,padding", POOL_CASES)
def test_pooling_matches_naive_oracle(h, w, size, strides, padding, split, monkeypatch) -> None:
    """Also with the batch split in two halves on two threads (as large inputs are)."""
    if split:
        monkeypatch.setattr(ops, "POOL_SPLIT_BYTES", 0)
    rng = np.random.default_rng(h * w)
    x = rand(rng, 3, h, w, 3)
    np.testing.assert_array_equal(ops.max_pool2d(x, size, strides, padding),
                                  pool_naive(x, size, strides, padding, np.max))
    np.testing.assert_allclose(ops.avg_pool2d(x, size, strides, padding),
                               pool_naive(x, size, strides, padding, np.mean), rtol=1e-5, atol=1e-6)


def test_pooling_by_hand() -> None:
    x = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]], np.float32).reshape(1, 4, 4, 1)
    # cs231n's max-pool figure: 2x2 filters, stride 2
    assert ops.max_pool2d(x)[0, :, :, 0].tolist() == [[6, 8], [3, 4]]
    assert ops.avg_pool2d(x)[0, :, :, 0].tolist() == [[3.25, 5.25], [2, 2]]
    # avg 'same' on a 3x3 image, 2x2/2: the corner window covers only the real pixel 8
    y = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    assert ops.avg_pool2d(y, 2, 2, "same")[0, :, :, 0].tolist() == [[2, 3.5], [6.5, 8]]
    # max 'same' with negative values: the padding (-inf) never wins
    assert ops.max_pool2d(-y - 1, 2, 2, "same")[0, :, :, 0].tolist() == [[-1, -3], [-7, -9]]


def test_global_pooling_and_flatten() -> None:
    rng = np.random.default_rng(21)
    x = rand(rng, 2, 3, 4, 5)
    gap, gmp = ops.global_avg_pool2d(x), ops.global_max_pool2d(x)
    for b in range(2):
        for ch in range(5):
            values = [float(x[b, i, j, ch]) for i in range(3) for j in range(4)]
            assert gap[b, ch] == pytest.approx(sum(values) / 12, rel=1e-5, abs=1e-6)
            assert gmp[b, ch] == max(values)
    flat = ops.flatten(x)
    assert flat.shape == (2, 60)
    # channels-last order: index (i * W + j) * D + d
    assert flat[1, (2 * 4 + 3) * 5 + 4] == x[1, 2, 3, 4]
    assert flat[0, (1 * 4 + 0) * 5 + 2] == x[0, 1, 0, 2]


def test_zero_pad2d() -> None:
    x = np.ones((1, 2, 3, 1), np.float32)
    out = ops.zero_pad2d(x, (1, 2, 0, 1))
    assert out.shape == (1, 5, 4, 1)
    assert out.sum() == 6 and out[0, 1:3, 0:3, 0].tolist() == [[1, 1, 1], [1, 1, 1]]


# --------------------------------------------------------------------------- dense, activations


@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_matches_loops(use_bias: bool) -> None:
    rng = np.random.default_rng(31)
    x, kernel, bias = rand(rng, 3, 7), rand(rng, 7, 4), rand(rng, 4)
    out = ops.dense(x, kernel, bias if use_bias else None, activation="relu")
    for b in range(3):
        for u in range(4):
            z = sum(float(x[b, i]) * float(kernel[i, u]) for i in range(7)) + (float(bias[u]) if use_bias else 0)
            assert out[b, u] == pytest.approx(max(z, 0.0), rel=1e-5, abs=1e-6)
    with pytest.raises(ShapeError, match=r"kernel must be \(7, units\).*\(6, 4\)"):
        ops.dense(x, kernel[:6])


def test_activations_by_hand() -> None:
    z = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]], np.float32)
    assert ops.relu(z).tolist() == [[0, 0, 0, 0.5, 3]]
    # the lecture's leaky ReLU with alpha = 0.005
    np.testing.assert_allclose(ops.leaky_relu(z, 0.005), [[-0.01, -0.0025, 0, 0.5, 3]], rtol=1e-6)
    np.testing.assert_allclose(ops.leaky_relu(z, 2.0), [[-4, -1, 0, 0.5, 3]], rtol=1e-6)
    np.testing.assert_allclose(ops.sigmoid(z), [[1 / (1 + math.exp(-v)) for v in z[0]]], rtol=1e-6)
    np.testing.assert_allclose(ops.tanh(z), [[math.tanh(v) for v in z[0]]], rtol=1e-6)
    np.testing.assert_allclose(ops.elu(z, 0.5), [[0.5 * math.expm1(v) if v < 0 else v for v in z[0]]], rtol=1e-6)
    for name in ("relu", "sigmoid", "tanh", "elu", "softmax", "leaky_relu"):
        assert ops.activate(z, name).dtype == np.float32
    assert ops.activate(z, None) is z and ops.activate(z, "linear") is z
    with pytest.raises(ModelError, match="Allowed values are: linear, relu.*Received: activation=swishy"):
        ops.activate(z, "swishy")


def test_sigmoid_does_not_overflow() -> None:
    z = np.array([-1000.0, 1000.0], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert ops.sigmoid(z).tolist() == [0.0, 1.0]


def test_softmax_matches_formula_and_is_stable() -> None:
    rng = np.random.default_rng(41)
    z = rand(rng, 4, 10)
    expected = np.exp(z.astype(np.float64)) / np.exp(z.astype(np.float64)).sum(-1, keepdims=True)
    np.testing.assert_allclose(ops.softmax(z), expected, rtol=1e-6)
    huge = np.array([[1000.0, 1001.0, 1002.0], [-1e4, 0.0, 1e4], [3e38, 3e38, -3e38]], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = ops.softmax(huge)
    small = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    np.testing.assert_allclose(p[0], small, rtol=1e-6)
    assert p[1].tolist() == [0.0, 0.0, 1.0]
    np.testing.assert_allclose(p[2], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-80, 80, width=32), min_size=1, max_size=12), st.floats(-1e4, 1e4, width=32))
def test_softmax_is_shift_invariant(logits: list[float], shift: float) -> None:
    z = np.array([logits], np.float32)
    p = ops.softmax(z)
    assert abs(float(p.sum()) - 1.0) < 1e-5 and (p >= 0).all()
    np.testing.assert_allclose(ops.softmax(z + np.float32(shift)), p, atol=2e-3)


def test_batch_norm_matches_formula() -> None:
    rng = np.random.default_rng(51)
    x = rand(rng, 2, 3, 3, 4)
    gamma, beta, mean = rand(rng, 4), rand(rng, 4), rand(rng, 4)
    var = rng.random(4).astype(np.float32) + 0.1
    out = ops.batch_norm(x, gamma, beta, mean, var)
    expected = gamma * (x.astype(np.float64) - mean) / np.sqrt(var.astype(np.float64) + 1e-3) + beta
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32
    with pytest.raises(ShapeError, match=r"`moving_variance` must have shape \(4,\)"):
        ops.batch_norm(x, gamma, beta, mean, var[:3])


def test_dropout_identity_at_inference_and_inverted_in_training() -> None:
    x = np.ones((200, 500), np.float32)
    assert ops.dropout(x, 0.5) is x
    a = ops.dropout(x, 0.3, training=True, rng=np.random.default_rng(7))
    b = ops.dropout(x, 0.3, training=True, rng=np.random.default_rng(7))
    assert np.array_equal(a, b) and a.dtype == np.float32
    values = np.unique(a)
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7, rel=1e-6)
    dropped = float((a == 0).mean())
    # 100,000 Bernoulli(0.3) draws: 5 standard deviations is 0.0072
    assert abs(dropped - 0.3) < 0.0075
    assert abs(float(a.mean()) - 1.0) < 0.02  # inverted dropout keeps the expectation
    with pytest.raises(ShapeError, match=r"rate` must be in \[0, 1\)"):
        ops.dropout(x, 1.0, training=True)
