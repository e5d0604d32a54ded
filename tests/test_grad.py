"""Every backward of convcli.grad against central finite differences in float64.

Each layer's forward is written out here once more, in float64, from its definition (a loop
over output positions or window offsets, never im2col), and checked against the float32
forward of convcli.ops so the derivative is taken of the same computation. The scalar
``sum(forward(...) * R)`` with a fixed random R has the output gradient R; its derivative
by central differences (step 1e-6) is the oracle for every input and parameter gradient.
Adjoint identities (<conv(x), G> = <x, dx> = <K, dK>) cover many random geometries fast.
"""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli import grad, losses, ops, optim
from convcli.errors import InputError, ModelError, ShapeError
from tests import oracles

H = 1e-6
GRAD_RTOL = 1e-6  # worst |analytic - numeric| over max |numeric|, central differences in float64


# --------------------------------------------------------------------------- oracles


def keras_same(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding written out: ceil(n / s) outputs, the odd pixel after."""
    eff = (k - 1) * d + 1
    total = max((math.ceil(n / s) - 1) * s + eff - n, 0)
    return total // 2, total - total // 2


def conv_ref(x, kernel, bias, strides, pads, dilation):
    """Per output position: the dilated window of the zero-padded input against the kernel."""
    n = x.shape[0]
    fh, fw, _, k = kernel.shape
    top, bottom, left, right = pads
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    eh, ew = (fh - 1) * dilation[0] + 1, (fw - 1) * dilation[1] + 1
    oh = (xp.shape[1] - eh) // strides[0] + 1
    ow = (xp.shape[2] - ew) // strides[1] + 1
    out = np.zeros((n, oh, ow, k))
    for i in range(oh):
        for j in range(ow):
            r, s = i * strides[0], j * strides[1]
            window = xp[:, r : r + eh : dilation[0], s : s + ew : dilation[1], :]
            out[:, i, j] = np.tensordot(window, kernel, axes=3)
    return out if bias is None else out + bias


def local_ref(x, kernel, bias, size, strides):
    """Per output position, its own weights (Keras' LocallyConnected2D, valid padding)."""
    n, h, w, _ = x.shape
    oh, ow = (h - size[0]) // strides[0] + 1, (w - size[1]) // strides[1] + 1
    out = np.zeros((n, oh, ow, kernel.shape[2]))
    for i in range(oh):
        for j in range(ow):
            r, s = i * strides[0], j * strides[1]
            window = x[:, r : r + size[0], s : s + size[1], :].reshape(n, -1)
            out[:, i, j] = window @ kernel[i * ow + j]
    return out + bias


def pool_ref(x, size, strides, padding, how):
    """Per output position: max, or mean over the real pixels of the window (Keras)."""
    n, h, w, c = x.shape
    if padding == "same":
        (top, _), (left, _) = keras_same(h, size[0], strides[0]), keras_same(w, size[1], strides[1])
        oh, ow = math.ceil(h / strides[0]), math.ceil(w / strides[1])
    else:
        top = left = 0
        oh, ow = (h - size[0]) // strides[0] + 1, (w - size[1]) // strides[1] + 1
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            r, s = i * strides[0] - top, j * strides[1] - left
            window = x[:, max(r, 0) : r + size[0], max(s, 0) : s + size[1], :]
            out[:, i, j] = window.max(axis=(1, 2)) if how == "max" else window.mean(axis=(1, 2))
    return out


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sparsemax(z):
    """Martins & Astudillo (2016), Algorithm 1, one row at a time."""
    out = np.zeros_like(z)
    for index in np.ndindex(z.shape[:-1]):
        row = z[index]
        ordered = np.sort(row)[::-1]
        k = max(i for i in range(1, len(row) + 1) if 1 + i * ordered[i - 1] > ordered[:i].sum())
        out[index] = np.maximum(row - (ordered[:k].sum() - 1) / k, 0)
    return out


SELU = (1.6732632423543772848170429916717, 1.0507009873554804934193349852946)  # Klambauer et al. 2017

# Each activation from its textbook definition in float64 (alpha: Keras' default of its parameter).
ACTIVATION_REF: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "linear": lambda z, a: z,
    "relu": lambda z, a: np.where(z > 0, z, 0.0),
    "relu6": lambda z, a: np.minimum(np.maximum(z, 0.0), 6.0),
    "leaky_relu": lambda z, a: np.where(z > 0, z, a * z),
    "elu": lambda z, a: np.where(z > 0, z, a * (np.exp(z) - 1.0)),
    "selu": lambda z, a: SELU[1] * np.where(z > 0, z, SELU[0] * (np.exp(z) - 1.0)),
    "celu": lambda z, a: np.where(z > 0, z, a * (np.exp(z / a) - 1.0)),
    "gelu": lambda z, a: z * 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2))),
    "silu": lambda z, a: z * _sig(z),
    "swish": lambda z, a: z * _sig(z),
    "hard_silu": lambda z, a: z * np.clip(z / 6 + 0.5, 0, 1),
    "hard_swish": lambda z, a: z * np.clip(z / 6 + 0.5, 0, 1),
    "mish": lambda z, a: z * np.tanh(np.log(1 + np.exp(z))),
    "sigmoid": lambda z, a: _sig(z),
    "hard_sigmoid": lambda z, a: np.clip(z / 6 + 0.5, 0, 1),
    "sparse_sigmoid": lambda z, a: np.clip((z + 1) / 2, 0, 1),
    "log_sigmoid": lambda z, a: np.log(_sig(z)),
    "tanh": lambda z, a: (np.exp(z) - np.exp(-z)) / (np.exp(z) + np.exp(-z)),
    "hard_tanh": lambda z, a: np.clip(z, -1, 1),
    "tanh_shrink": lambda z, a: z - np.tanh(z),
    "softplus": lambda z, a: np.log(1 + np.exp(z)),
    "softsign": lambda z, a: z / (1 + np.abs(z)),
    "squareplus": lambda z, a: (z + np.sqrt(z * z + a)) / 2,
    "sparse_plus": lambda z, a: np.where(z <= -1, 0.0, np.where(z < 1, (z + 1) ** 2 / 4, z)),
    "exponential": lambda z, a: np.exp(z),
    "soft_shrink": lambda z, a: np.where(z > a, z - a, np.where(z < -a, z + a, 0.0)),
    "hard_shrink": lambda z, a: np.where(np.abs(z) > a, z, 0.0),
    "threshold": lambda z, a: np.where(z > a, z, 0.0),
    "softmax": lambda z, a: _softmax(z),
    "log_softmax": lambda z, a: np.log(_softmax(z)),
    "sparsemax": lambda z, a: _sparsemax(z),
    "glu": lambda z, a: z[..., : z.shape[-1] // 2] * _sig(z[..., z.shape[-1] // 2 :]),
}
PARAMETER = {"leaky_relu": 0.2, "elu": 1.3, "celu": 0.7, "squareplus": 4.0, "soft_shrink": 0.5,
             "hard_shrink": 0.5, "threshold": 0.4}
KINKS = (0.0, 0.4, 0.5, 1.0, 3.0, 6.0)


def batch_norm_ref(x, gamma, beta, eps):
    """(x - mean) / sqrt(var + eps) * gamma + beta with the batch's mean and np.var (ddof 0)."""
    axes = tuple(range(x.ndim - 1))
    return (x - x.mean(axis=axes)) / np.sqrt(x.var(axis=axes) + eps) * gamma + beta


def numeric_gradient(f: Callable[[], float], arr: np.ndarray) -> np.ndarray:
    """d f / d arr by central differences, perturbing ``arr`` in place one element at a time."""
    out = np.zeros(arr.shape)
    flat = arr.reshape(-1)
    assert flat.base is arr or flat is arr or np.shares_memory(flat, arr)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + H
        up = f()
        flat[i] = old - H
        down = f()
        flat[i] = old
        out.flat[i] = (up - down) / (2 * H)
    return out


def assert_gradient(analytic: np.ndarray | None, numeric: np.ndarray, rtol: float = GRAD_RTOL) -> None:
    assert analytic is not None
    assert analytic.shape == numeric.shape
    scale = max(float(np.abs(numeric).max()), 1e-12)
    worst = float(np.abs(analytic - numeric).max()) / scale
    assert worst <= rtol, f"worst relative error {worst:.2e}"


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


# --------------------------------------------------------------------------- convolution

CONV_CASES = [
    # n, h, w, c, fh, fw, k, strides, padding, dilation
    (2, 7, 6, 3, 3, 3, 4, (1, 1), "valid", (1, 1)),
    (2, 7, 6, 3, 3, 3, 4, (1, 1), "same", (1, 1)),
    (1, 9, 8, 2, 3, 2, 3, (2, 2), "same", (1, 1)),
    (2, 8, 7, 2, 3, 3, 2, (2, 3), "valid", (1, 1)),
    (1, 9, 9, 2, 3, 3, 2, (1, 1), "same", (2, 2)),
    (1, 9, 8, 2, 2, 3, 2, (2, 1), "valid", (2, 3)),
    (1, 6, 7, 1, 5, 3, 2, (2, 2), (1, 2, 0, 1), (1, 1)),
    (2, 5, 5, 3, 1, 1, 4, (1, 1), "valid", (1, 1)),
    (1, 10, 9, 2, 4, 4, 3, (3, 3), "same", (1, 1)),
    (1, 5, 5, 2, 3, 3, 2, (1, 1), 1, (1, 1)),
]


def _conv_pads(h, w, fh, fw, strides, padding, dilation):
    if padding == "same":
        return (*keras_same(h, fh, strides[0], dilation[0]), *keras_same(w, fw, strides[1], dilation[1]))
    if padding == "valid":
        return (0, 0, 0, 0)
    if isinstance(padding, int):
        return (padding,) * 4
    return padding


@pytest.mark.parametrize(
    "case, chunk_bytes",
    [(case, None) for case in CONV_CASES]
    # im2col chunks of a few output rows of one sample, as a large image gets them
    + [(CONV_CASES[i], 100) for i in (1, 3, 5, 6)],
)
def test_conv2d_backward_matches_finite_differences(case, chunk_bytes) -> None:
    n, h, w, c, fh, fw, k, strides, padding, dilation = case
    rng = np.random.default_rng(11)
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, fh, fw, c, k), rand(rng, k)
    pads = _conv_pads(h, w, fh, fw, strides, padding, dilation)
    out = conv_ref(x, kernel, bias, strides, pads, dilation)
    # the oracle is the forward convcli runs
    fast = ops.conv2d(x, kernel, bias, strides=strides, padding=padding, dilation=dilation)
    np.testing.assert_allclose(fast, out, rtol=1e-4, atol=1e-4)
    r = rand(rng, *out.shape)

    def loss() -> float:
        return float(np.sum(conv_ref(x, kernel, bias, strides, pads, dilation) * r))

    dx, dk, db = grad.conv2d_backward(
        x, kernel, r, strides=strides, padding=padding, dilation=dilation, chunk_bytes=chunk_bytes
    )
    assert dx.dtype == dk.dtype == np.float64
    assert_gradient(dx, numeric_gradient(loss, x))
    assert_gradient(dk, numeric_gradient(loss, kernel))
    assert_gradient(db, numeric_gradient(loss, bias))


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_float32_stays_float32_and_agrees(case) -> None:
    """float32 takes other paths (with stride 1 the input gradient is the forward's conv2d
    with the turned kernel); they agree with the float64 results checked above."""
    n, h, w, c, fh, fw, k, strides, padding, dilation = case
    rng = np.random.default_rng(3)
    x, kernel = rand(rng, n, h, w, c), rand(rng, fh, fw, c, k)
    pads = _conv_pads(h, w, fh, fw, strides, padding, dilation)
    g = rand(rng, *conv_ref(x, kernel, None, strides, pads, dilation).shape)
    options = {"strides": strides, "padding": padding, "dilation": dilation}
    wide = grad.conv2d_backward(x, kernel, g, **options)
    narrow = grad.conv2d_backward(x.astype(np.float32), kernel.astype(np.float32), g.astype(np.float32), **options)
    for a, b in zip(narrow, wide):
        assert a is not None and b is not None
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    skipped = grad.conv2d_backward(x.astype(np.float32), kernel.astype(np.float32), g.astype(np.float32),
                                   input_gradient=False, **options)
    assert skipped[0] is None
    np.testing.assert_array_equal(skipped[1], narrow[1])


def test_conv2d_backward_memory_stays_bounded() -> None:
    """A batch whose im2col would take 27 MiB in one piece is processed in chunks: the peak
    is the input, its gradient and the output gradient plus about one chunk."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32, 32, 8), dtype=np.float32)  # 2 MiB
    kernel = rng.standard_normal((3, 3, 8, 8), dtype=np.float32)
    g = rng.standard_normal((64, 32, 32, 8), dtype=np.float32)
    chunk = 2**20
    tracemalloc.start()
    try:
        grad.conv2d_backward(x, kernel, g, padding="same", chunk_bytes=chunk)
        grad.conv2d_backward(x.astype(np.float64), kernel, g, padding="same", chunk_bytes=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    im2col = 64 * 32 * 32 * 72 * 8  # float64: 36 MiB in one piece
    assert peak < 6 * x.nbytes * 2 + 4 * chunk < im2col


def test_conv2d_backward_without_bias_and_bad_shapes() -> None:
    x, kernel = np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1))
    assert grad.conv2d_backward(x, kernel, np.ones((1, 2, 2, 1)), use_bias=False)[2] is None
    with pytest.raises(ShapeError, match=r"output gradient must have the forward's output shape \(1, 2, 2, 1\)"):
        grad.conv2d_backward(x, kernel, np.ones((1, 3, 3, 1)))
    with pytest.raises(ShapeError, match="kernel must be"):
        grad.conv2d_backward(x, np.ones((3, 3, 1, 1)), np.ones((1, 2, 2, 1)))
    with pytest.raises(ShapeError, match="larger than the padded input"):
        grad.conv2d_backward(x, np.ones((5, 5, 2, 1)), np.ones((1, 1, 1, 1)))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 3),
    fh=st.integers(1, 4), fw=st.integers(1, 4), k=st.integers(1, 3),
    sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
    padding=st.sampled_from(["valid", "same"]), chunk=st.sampled_from([None, 50, 400]),
    seed=st.integers(0, 2**16),
)
def test_conv2d_backward_is_the_adjoint(n, h, w, c, fh, fw, k, sh, sw, dh, dw, padding, chunk, seed) -> None:
    """The convolution is linear in x and in the kernel, so the backward is its transpose:
    <conv(x, K), G> = <x, dx> = <K, dK>, for any geometry the forward accepts."""
    pads = _conv_pads(h, w, fh, fw, (sh, sw), padding, (dh, dw))
    if h + pads[0] + pads[1] < (fh - 1) * dh + 1 or w + pads[2] + pads[3] < (fw - 1) * dw + 1:
        return
    rng = np.random.default_rng(seed)
    x, kernel = rand(rng, n, h, w, c), rand(rng, fh, fw, c, k)
    out = conv_ref(x, kernel, None, (sh, sw), pads, (dh, dw))
    g = rand(rng, *out.shape)
    dx, dk, db = grad.conv2d_backward(x, kernel, g, strides=(sh, sw), padding=padding, dilation=(dh, dw),
                                      chunk_bytes=chunk)
    total = float(np.sum(out * g))
    assert float(np.sum(x * dx)) == pytest.approx(total, rel=1e-9, abs=1e-9)
    assert float(np.sum(kernel * dk)) == pytest.approx(total, rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(db, g.sum(axis=(0, 1, 2)))
    # float32 takes the forward's conv2d for stride 1: the same gradients to float32 rounding
    narrow = grad.conv2d_backward(x.astype(np.float32), kernel.astype(np.float32), g.astype(np.float32),
                                  strides=(sh, sw), padding=padding, dilation=(dh, dw), chunk_bytes=chunk)
    assert narrow[0] is not None
    np.testing.assert_allclose(narrow[0], dx, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(dx).max())))
    np.testing.assert_allclose(narrow[1], dk, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(dk).max())))


@pytest.mark.parametrize("chunk_bytes", [None, 60])
@pytest.mark.parametrize(
    "n, h, w, c, size, strides, k",
    [(2, 5, 6, 2, (3, 3), (1, 1), 3), (1, 7, 6, 3, (2, 3), (2, 1), 2), (2, 4, 4, 1, (1, 1), (1, 1), 2),
     (1, 9, 8, 2, (3, 2), (3, 2), 2)],
)
def test_locally_connected2d_backward_matches_finite_differences(n, h, w, c, size, strides, k, chunk_bytes) -> None:
    rng = np.random.default_rng(5)
    oh, ow = (h - size[0]) // strides[0] + 1, (w - size[1]) // strides[1] + 1
    x = rand(rng, n, h, w, c)
    kernel, bias = rand(rng, oh * ow, size[0] * size[1] * c, k), rand(rng, oh, ow, k)
    out = local_ref(x, kernel, bias, size, strides)
    fast = ops.locally_connected2d(x, kernel, bias, kernel_size=size, strides=strides)
    np.testing.assert_allclose(fast, out, rtol=1e-4, atol=1e-4)
    r = rand(rng, *out.shape)

    def loss() -> float:
        return float(np.sum(local_ref(x, kernel, bias, size, strides) * r))

    dx, dk, db = grad.locally_connected2d_backward(x, kernel, r, kernel_size=size, strides=strides,
                                                   chunk_bytes=chunk_bytes)
    skipped = grad.locally_connected2d_backward(x, kernel, r, kernel_size=size, strides=strides, input_gradient=False)
    assert skipped[0] is None
    np.testing.assert_allclose(skipped[1], dk, rtol=1e-12)
    assert_gradient(dx, numeric_gradient(loss, x))
    assert_gradient(dk, numeric_gradient(loss, kernel))
    assert_gradient(db, numeric_gradient(loss, bias))


# --------------------------------------------------------------------------- pooling

POOL_CASES = [
    # h, w, size, strides, padding
    (6, 6, (2, 2), (2, 2), "valid"),
    (7, 5, (2, 2), (2, 2), "same"),
    (7, 7, (3, 3), (2, 2), "valid"),  # overlapping windows
    (7, 8, (3, 3), (2, 2), "same"),
    (5, 9, (2, 3), (1, 2), "same"),
    (9, 6, (3, 2), (3, 1), "valid"),
]


@pytest.mark.parametrize("how", ["max", "avg"])
@pytest.mark.parametrize("h, w, size, strides, padding", POOL_CASES)
def test_pool_backward_matches_finite_differences(h, w, size, strides, padding, how) -> None:
    rng = np.random.default_rng(8)
    x = rng.permutation(2 * h * w * 3).reshape(2, h, w, 3) / 7.0  # distinct values: no ties, no kinks
    forward = ops.max_pool2d if how == "max" else ops.avg_pool2d
    out = pool_ref(x, size, strides, padding, how)
    np.testing.assert_allclose(forward(x, size, strides, padding), out, rtol=1e-5, atol=1e-4)
    r = rand(rng, *out.shape)

    def loss() -> float:
        return float(np.sum(pool_ref(x, size, strides, padding, how) * r))

    if how == "max":
        dx = grad.max_pool2d_backward(x, r, size, strides, padding)
    else:
        dx = grad.avg_pool2d_backward(x.shape, r, size, strides, padding)
    assert_gradient(dx, numeric_gradient(loss, x))


def pool_backward_loops(x, g, size, strides, padding, how):
    """Each output position hands its gradient to its window: all of it to the window's
    first maximum (row-major), or an equal share to each real pixel for the mean."""
    n, h, w, c = x.shape
    if padding == "same":
        (top, _), (left, _) = keras_same(h, size[0], strides[0]), keras_same(w, size[1], strides[1])
    else:
        top = left = 0
    dx = np.zeros_like(x)
    for b in range(n):
        for i in range(g.shape[1]):
            for j in range(g.shape[2]):
                r, s = i * strides[0] - top, j * strides[1] - left
                r0, s0 = max(r, 0), max(s, 0)
                window = x[b, r0 : r + size[0], s0 : s + size[1]]
                for ch in range(c):
                    if how == "max":
                        u, v = np.unravel_index(np.argmax(window[:, :, ch]), window.shape[:2])
                        dx[b, r0 + u, s0 + v, ch] += g[b, i, j, ch]
                    else:
                        dx[b, r0 : r + size[0], s0 : s + size[1], ch] += g[b, i, j, ch] / window[:, :, ch].size
    return dx


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 9), w=st.integers(1, 9), ph=st.integers(1, 4), pw=st.integers(1, 4),
    sh=st.integers(1, 4), sw=st.integers(1, 4), padding=st.sampled_from(["valid", "same"]),
    how=st.sampled_from(["max", "avg"]), ties=st.booleans(), seed=st.integers(0, 2**16),
)
def test_pool_backward_matches_the_loops_for_any_geometry(h, w, ph, pw, sh, sw, padding, how, ties, seed) -> None:
    if padding == "valid" and (h < ph or w < pw):
        return
    rng = np.random.default_rng(seed)
    # with ties (few distinct values, as after a ReLU) the first maximum must win
    x = rng.integers(0, 3, (2, h, w, 2)).astype(float) if ties else rand(rng, 2, h, w, 2)
    forward = ops.max_pool2d if how == "max" else ops.avg_pool2d
    out = forward(x, (ph, pw), (sh, sw), padding)
    g = rand(rng, *out.shape)
    if how == "max":
        dx = grad.max_pool2d_backward(x, g, (ph, pw), (sh, sw), padding)
    else:
        dx = grad.avg_pool2d_backward(x.shape, g, (ph, pw), (sh, sw), padding)
    np.testing.assert_allclose(dx, pool_backward_loops(x, g, (ph, pw), (sh, sw), padding, how), rtol=1e-12, atol=1e-12)


def test_max_pool_backward_sends_ties_to_the_first_maximum() -> None:
    """PyTorch's max_pool2d (and so Keras on torch) routes a tied window's gradient to the
    first maximum in row-major order; overlapping windows each pick their own."""
    x = np.array([[5.0, 5.0, 1.0], [5.0, 2.0, 5.0], [0.0, 0.0, 0.0]]).reshape(1, 3, 3, 1)
    g = np.array([[1.0, 10.0], [100.0, 1000.0]]).reshape(1, 2, 2, 1)
    dx = grad.max_pool2d_backward(x, g, 2, 1)
    # windows: [5 5; 5 2] -> (0, 0); [5 1; 2 5] -> (0, 1); [5 2; 0 0] -> (1, 0); [2 5; 0 0] -> (1, 2)
    expected = np.array([[1.0, 10.0, 0.0], [100.0, 0.0, 1000.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


def test_global_pool_backward() -> None:
    rng = np.random.default_rng(2)
    x = rand(rng, 2, 3, 4, 5)
    r = rand(rng, 2, 5)
    np.testing.assert_allclose(
        grad.global_avg_pool2d_backward(x.shape, r),
        numeric_gradient(lambda: float(np.sum(x.mean(axis=(1, 2)) * r)), x),
        rtol=1e-8, atol=1e-9,
    )
    assert_gradient(grad.global_max_pool2d_backward(x, r), numeric_gradient(lambda: float(np.sum(x.max(axis=(1, 2)) * r)), x))
    np.testing.assert_allclose(ops.global_max_pool2d(x), x.max(axis=(1, 2)), rtol=1e-6)
    # ties share the gradient evenly, as torch.amax does
    tied = np.zeros((1, 2, 2, 1))
    tied[0, 0, 0, 0] = tied[0, 1, 1, 0] = 3.0
    np.testing.assert_array_equal(grad.global_max_pool2d_backward(tied, np.array([[4.0]]))[0, :, :, 0], [[2, 0], [0, 2]])


def test_flatten_and_zero_pad_backward() -> None:
    rng = np.random.default_rng(4)
    x = rand(rng, 2, 3, 4, 2)
    r = rand(rng, 2, 24)
    assert ops.flatten(x).dtype == np.float64  # a float64 batch keeps its precision
    np.testing.assert_array_equal(ops.flatten(x), x.reshape(2, -1))
    assert_gradient(grad.flatten_backward(x.shape, r), numeric_gradient(lambda: float(np.sum(x.reshape(2, -1) * r)), x))
    pads = (1, 2, 0, 3)
    rp = rand(rng, 2, 6, 7, 2)
    np.testing.assert_array_equal(ops.zero_pad2d(x, pads), np.pad(x, ((0, 0), (1, 2), (0, 3), (0, 0))))
    assert_gradient(
        grad.zero_pad2d_backward(rp, pads),
        numeric_gradient(lambda: float(np.sum(np.pad(x, ((0, 0), (1, 2), (0, 3), (0, 0))) * rp)), x),
    )
    with pytest.raises(ShapeError, match="cannot take the shape"):
        grad.flatten_backward((2, 3), r)


# --------------------------------------------------------------------------- dense, activations


def test_every_activation_has_an_oracle() -> None:
    assert set(ACTIVATION_REF) == set(ops.ACTIVATIONS)


@pytest.mark.parametrize("activation", list(ops.ACTIVATIONS))
def test_activation_backward_matches_finite_differences(activation) -> None:
    rng = np.random.default_rng(14)
    z = rng.uniform(-4.5, 7.0, (4, 6))
    near = np.min([np.abs(np.abs(z) - k) for k in KINKS], axis=0) < 1e-3
    z[near] += 0.01  # away from the kinks, where the derivative is one-sided
    if activation in ("softmax", "log_softmax", "sparsemax"):
        z = rng.uniform(-1.0, 1.0, (4, 6))  # several values in sparsemax's support
    a = PARAMETER.get(activation, 0.0)
    out = ACTIVATION_REF[activation](z, a)
    fast = ops.activate(z.astype(np.float32), activation, a if activation in PARAMETER else None)
    np.testing.assert_allclose(fast, out, rtol=2e-5, atol=2e-5)  # the oracle is convcli's forward
    r = rand(rng, *out.shape)

    def loss() -> float:
        return float(np.sum(ACTIVATION_REF[activation](z, a) * r))

    numeric = numeric_gradient(loss, z)
    assert_gradient(grad.activation_backward(activation, r, x=z, alpha=a), numeric)
    if activation in grad.FROM_OUTPUT:
        assert_gradient(grad.activation_backward(activation, r, output=out, alpha=a), numeric)
    else:
        with pytest.raises(ModelError, match="cannot be read from its output"):
            grad.activation_backward(activation, r, output=out, alpha=a)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "softmax", "leaky_relu"])
def test_dense_with_a_fused_activation_matches_finite_differences(activation) -> None:
    rng = np.random.default_rng(6)
    x, kernel, bias = rand(rng, 4, 5), rand(rng, 5, 3) * 0.7, rand(rng, 3)
    alpha = 0.2 if activation == "leaky_relu" else None

    def forward() -> np.ndarray:
        return ACTIVATION_REF[activation](x @ kernel + bias, alpha or 0.0)

    out = forward()
    fast = ops.dense(x, kernel, bias, activation=activation, alpha=alpha)
    np.testing.assert_allclose(fast, out, rtol=1e-5, atol=1e-5)
    r = rand(rng, *out.shape)

    def loss() -> float:
        return float(np.sum(forward() * r))

    pre = grad.activation_backward(activation, r, output=out, alpha=alpha)
    dx, dk, db = grad.dense_backward(x, kernel, pre)
    assert_gradient(dx, numeric_gradient(loss, x))
    assert_gradient(dk, numeric_gradient(loss, kernel))
    assert_gradient(db, numeric_gradient(loss, bias))


def test_activation_backward_defaults_and_kinks() -> None:
    z = np.array([-2.0, 0.0, 3.0])
    g = np.ones(3)
    # the derivative of ReLU at 0 is 0 (PyTorch), from the input or the output;
    # leaky_relu's default slope is Keras' activations.leaky_relu 0.2
    np.testing.assert_array_equal(grad.activation_backward("relu", g, output=np.maximum(z, 0)), [0, 0, 1])
    np.testing.assert_array_equal(grad.activation_backward("relu", g, x=z), [0, 0, 1])
    np.testing.assert_allclose(grad.activation_backward("leaky_relu", g, x=z), [0.2, 0.2, 1])
    np.testing.assert_array_equal(grad.activation_backward(None, g * 2, output=z), [2, 2, 2])
    with pytest.raises(ModelError, match="Allowed values are: linear, relu"):
        grad.activation_backward("swish2", g, x=z)
    with pytest.raises(ModelError, match="cannot be read from the output with alpha=-0.1"):
        grad.activation_backward("leaky_relu", g, output=z, alpha=-0.1)
    with pytest.raises(ModelError, match="needs the activation's input or output"):
        grad.activation_backward("tanh", g)
    with pytest.raises(ShapeError, match="output gradient must have"):
        grad.activation_backward("glu", g, x=np.ones(4))


@pytest.mark.parametrize(
    "max_value, negative_slope, threshold", [(None, 0.0, 0.0), (6.0, 0.0, 0.0), (2.5, 0.3, 0.5), (None, 0.1, -1.0)]
)
def test_relu_layer_backward_matches_finite_differences(max_value, negative_slope, threshold) -> None:
    rng = np.random.default_rng(15)
    z = rng.uniform(-3, 8, (3, 7))

    def forward() -> np.ndarray:  # Keras' ReLU layer, written out
        top = z if max_value is None else np.minimum(z, max_value)
        return np.where(z > threshold, top, negative_slope * (z - threshold))

    fast = ops.relu(z.astype(np.float32), max_value=max_value, negative_slope=negative_slope, threshold=threshold) \
        if threshold >= 0 else None
    if fast is not None:
        np.testing.assert_allclose(fast, forward(), rtol=1e-6, atol=1e-6)
    r = rand(rng, 3, 7)
    assert_gradient(
        grad.relu_layer_backward(z, r, max_value=max_value, negative_slope=negative_slope, threshold=threshold),
        numeric_gradient(lambda: float(np.sum(forward() * r)), z),
    )


# --------------------------------------------------------------------------- batch norm, dropout, merges


@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 5, 3)])
def test_batch_norm_train_matches_keras_and_finite_differences(shape) -> None:
    rng = np.random.default_rng(9)
    x = rand(rng, *shape) * 2 + 1
    d = shape[-1]
    gamma, beta = rand(rng, d), rand(rng, d)
    mean0, var0 = rand(rng, d), rng.uniform(0.5, 2.0, d)
    out, state = grad.batch_norm_train(x, gamma, beta, mean0, var0)
    np.testing.assert_allclose(out, batch_norm_ref(x, gamma, beta, 1e-3), rtol=1e-12, atol=1e-12)
    axes = tuple(range(len(shape) - 1))
    # Keras: moving = moving * 0.99 + batch * 0.01, with the biased (ddof 0) batch variance
    np.testing.assert_allclose(state.moving_mean, 0.99 * mean0 + 0.01 * x.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(state.moving_variance, 0.99 * var0 + 0.01 * x.var(axis=axes, ddof=0), rtol=1e-12)
    r = rand(rng, *shape)

    def loss() -> float:
        return float(np.sum(batch_norm_ref(x, gamma, beta, 1e-3) * r))

    dx, dgamma, dbeta = grad.batch_norm_backward(r, state)
    assert_gradient(dx, numeric_gradient(loss, x))
    assert_gradient(dgamma, numeric_gradient(loss, gamma))
    assert_gradient(dbeta, numeric_gradient(loss, beta))
    # with the moving statistics the training state produces, convcli's inference forward agrees
    inference = ops.batch_norm(x, gamma, beta, x.mean(axis=axes), x.var(axis=axes))
    np.testing.assert_allclose(inference, out, rtol=1e-4, atol=1e-4)


def test_batch_norm_train_momentum_and_shape_errors() -> None:
    x = np.array([[0.0, 1.0], [4.0, 3.0]])
    _, state = grad.batch_norm_train(x, np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), momentum=0.5)
    np.testing.assert_allclose(state.moving_mean, [1.0, 1.0])  # 0.5 * 0 + 0.5 * (2, 2)
    np.testing.assert_allclose(state.moving_variance, [2.5, 1.0])  # 0.5 * 1 + 0.5 * (4, 1)
    with pytest.raises(ShapeError, match=r"`gamma` must have shape \(2,\)"):
        grad.batch_norm_train(x, np.ones(3), np.zeros(2), np.zeros(2), np.ones(2))


def test_dropout_mask_is_the_forward_draw_and_backward_matches() -> None:
    rng = np.random.default_rng(1)
    x = rand(rng, 4, 6).astype(np.float32)
    rate = 0.4
    out = ops.dropout(x, rate, training=True, rng=np.random.default_rng(77))
    mask = grad.dropout_mask(x.shape, rate, np.random.default_rng(77))
    assert 0 < mask.sum() < mask.size
    np.testing.assert_array_equal(out, np.where(mask, x * np.float32(1 / 0.6), 0))
    r = rand(rng, 4, 6)
    # dropout is linear in x: a difference quotient with a large step is exact to rounding
    xs = x.astype(np.float64)

    def loss() -> float:
        return float(np.sum(ops.dropout(xs, rate, training=True, rng=np.random.default_rng(77)) * r))

    step = np.zeros_like(xs)
    numeric = np.zeros_like(xs)
    for i in range(xs.size):
        step.flat[i] = 0.5
        up = float(np.sum(ops.dropout(xs + step, rate, training=True, rng=np.random.default_rng(77)) * r))
        down = float(np.sum(ops.dropout(xs - step, rate, training=True, rng=np.random.default_rng(77)) * r))
        numeric.flat[i] = (up - down) / 1.0
        step.flat[i] = 0.0
    assert loss() == pytest.approx(float(np.sum(out * r)), rel=1e-6)
    np.testing.assert_allclose(grad.dropout_backward(r, mask, rate), numeric, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(grad.dropout_backward(r, np.ones((4, 6), bool), 0.0), r)
    with pytest.raises(ShapeError, match=r"`rate` must be in \[0, 1\)"):
        grad.dropout_mask((2,), 1.0, np.random.default_rng(0))


def test_merge_backwards() -> None:
    rng = np.random.default_rng(12)
    a, b, c = rand(rng, 2, 3, 3, 2), rand(rng, 2, 3, 3, 4), rand(rng, 2, 3, 3, 1)
    r = rand(rng, 2, 3, 3, 7)

    def loss() -> float:
        return float(np.sum(np.concatenate([a, b, c], axis=-1) * r))

    parts = grad.concatenate_backward(r, [2, 4, 1])
    for part, arr in zip(parts, (a, b, c)):
        assert_gradient(part, numeric_gradient(loss, arr))
    s = rand(rng, 2, 3, 3, 2)
    a2 = rand(rng, 2, 3, 3, 2)
    for part, arr in zip(grad.add_backward(s, 2), (a, a2)):
        assert_gradient(part, numeric_gradient(lambda: float(np.sum((a + a2) * s)), arr))
    with pytest.raises(ShapeError, match="do not add up"):
        grad.concatenate_backward(r, [2, 2])


# --------------------------------------------------------------------------- losses


def _loss_inputs(name: str, rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    if name == "categorical-crossentropy":
        y = np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]
        return y, rng.uniform(0.05, 1.0, shape)  # unnormalised scores: the row sum matters too
    if name == "binary-crossentropy":
        return rng.integers(0, 2, shape).astype(float), rng.uniform(0.05, 0.95, shape)
    if name == "msle":
        return rng.uniform(0.0, 3.0, shape), rng.uniform(0.1, 3.0, shape)
    return rand(rng, *shape), rand(rng, *shape)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4), (6,)])
@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_loss_gradient_matches_finite_differences(name, shape) -> None:
    rng = np.random.default_rng(13)
    y, p = _loss_inputs(name, rng, shape)
    analytic = grad.loss_gradient(name, y, p)
    numeric = numeric_gradient(lambda: losses.compute(name, y, p), p)
    assert_gradient(analytic, numeric, rtol=1e-6)


def test_loss_gradient_is_the_batch_mean_and_keeps_the_shape() -> None:
    # mse on 2 samples of one value: d/dp of ((p1 - y1)^2 + (p2 - y2)^2) / 2 = (p - y)
    g = grad.loss_gradient("mse", np.array([[1.0], [0.0]]), np.array([0.5, 2.0]))
    assert g.shape == (2,)
    np.testing.assert_allclose(g, [-0.5, 2.0])
    # categorical cross-entropy after a softmax: the gradient wrt the logits is (p - y) / N
    logits = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    y = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    p = ACTIVATION_REF["softmax"](logits, 0.0)
    through = grad.activation_backward("softmax", grad.loss_gradient("cce", y, p), output=p)
    np.testing.assert_allclose(through, (p - y) / 2, rtol=1e-9, atol=1e-12)


def test_loss_gradient_is_zero_where_keras_clips() -> None:
    # a probability below 1e-7 (or above 1 - 1e-7) is clipped: no gradient flows back
    g = grad.loss_gradient("binary-crossentropy", [1.0, 0.0, 1.0], [1e-9, 1.0, 0.5])
    np.testing.assert_allclose(g, [0.0, 0.0, -2.0 / 3.0])  # -(1 / 0.5) / 3 values
    g = grad.loss_gradient("categorical-crossentropy", [[1.0, 0.0]], [[1e-9, 1.0]])
    np.testing.assert_array_equal(g, [[0.0, 0.0]])
    g = grad.loss_gradient("msle", [1.0, 1.0], [-3.0, 1e-7])
    assert g[0] == 0.0 and g[1] < 0
    # |y - p| has derivative 0 where y == p
    np.testing.assert_array_equal(grad.loss_gradient("mae", [1.0, 2.0], [1.0, 3.0]), [0.0, 0.5])


def test_loss_gradient_refuses_what_the_loss_refuses() -> None:
    with pytest.raises(InputError, match="Allowed values are: mse"):
        grad.loss_gradient("hinge", [1.0], [1.0])
    with pytest.raises(InputError, match="same shape"):
        grad.loss_gradient("mse", [1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="sum over each row is positive"):
        grad.loss_gradient("cce", [[1.0, 0.0]], [[0.0, 0.0]])


def test_doctests() -> None:
    failures, tried = doctest.testmod(grad)
    assert tried > 5 and failures == 0


# --------------------------------------------------------------------------- PyTorch autograd


def _lecture_model(torch, conv_bias: bool):
    """The lecture's model (conv, batch norm, leaky ReLU, max and average pooling, dense,
    softmax, categorical cross-entropy) on one seeded batch: convcli's forward (ops) and
    backward (grad) beside torch autograd on the same float32 weights.

    Returns (weights, our gradients, torch's gradients, our loss, torch's loss)."""
    F = torch.nn.functional
    rng = np.random.default_rng(21)
    n, classes = 6, 4
    x = rng.uniform(0, 1, (n, 9, 9, 2)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    y = np.eye(classes, dtype=np.float32)[labels]
    weights = {
        "conv": (rng.standard_normal((3, 3, 2, 5)) * 0.4).astype(np.float32),
        "conv_b": (rng.standard_normal(5) * 0.1).astype(np.float32),
        "gamma": rng.uniform(0.5, 1.5, 5).astype(np.float32),
        "beta": (rng.standard_normal(5) * 0.1).astype(np.float32),
        "dense": (rng.standard_normal((2 * 2 * 5, classes)) * 0.4).astype(np.float32),
        "dense_b": (rng.standard_normal(classes) * 0.1).astype(np.float32),
    }
    if not conv_bias:
        del weights["conv_b"]
    alpha = 0.1
    # convcli: forward with ops (and the training batch norm), backward with grad
    z1 = ops.conv2d(x, weights["conv"], weights.get("conv_b"), padding="same")
    z2, bn = grad.batch_norm_train(z1, weights["gamma"], weights["beta"], np.zeros(5), np.ones(5))
    a2 = ops.leaky_relu(z2, alpha)
    p3 = ops.max_pool2d(a2, 2, 2, "same")  # 9x9 -> 5x5
    p4 = ops.avg_pool2d(p3, 2, 2, "valid")  # 5x5 -> 2x2
    f5 = ops.flatten(p4)
    probs = ops.dense(f5, weights["dense"], weights["dense_b"], activation="softmax")
    ours_loss = losses.compute("categorical-crossentropy", y, probs)
    g = grad.loss_gradient("categorical-crossentropy", y, probs).astype(np.float32)
    g = grad.activation_backward("softmax", g, output=probs)
    g, d_dense, d_dense_b = grad.dense_backward(f5, weights["dense"], g)
    g = grad.flatten_backward(p4.shape, g)
    g = grad.avg_pool2d_backward(p3.shape, g, 2, 2, "valid")
    g = grad.max_pool2d_backward(a2, g, 2, 2, "same")
    g = grad.activation_backward("leaky_relu", g, output=a2, alpha=alpha)
    g, d_gamma, d_beta = grad.batch_norm_backward(g, bn)
    _, d_conv, d_conv_b = grad.conv2d_backward(x, weights["conv"], g, padding="same", use_bias=conv_bias,
                                               input_gradient=False)
    ours = {"conv": d_conv, "conv_b": d_conv_b, "gamma": d_gamma, "beta": d_beta,
            "dense": d_dense, "dense_b": d_dense_b}

    # torch, channels-first inside; Keras' "same" for a 3x3 stride-1 conv is padding 1;
    # for the 2x2 stride-2 pool over 9 pixels it is one row/column after (-inf for max)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    tx = torch.tensor(x).permute(0, 3, 1, 2)
    z = F.conv2d(tx, t["conv"].permute(3, 2, 0, 1), t.get("conv_b"), padding=1)
    mean = z.mean(dim=(0, 2, 3), keepdim=True)
    var = ((z - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    z = (z - mean) / torch.sqrt(var + 1e-3) * t["gamma"].view(1, -1, 1, 1) + t["beta"].view(1, -1, 1, 1)
    z = F.leaky_relu(z, alpha)
    z = F.max_pool2d(F.pad(z, (0, 1, 0, 1), value=-float("inf")), 2, 2)
    z = F.avg_pool2d(z, 2, 2)
    z = z.permute(0, 2, 3, 1).reshape(n, -1)  # channels-last flatten, as Keras
    probs_t = torch.softmax(z @ t["dense"] + t["dense_b"], dim=-1)
    q = torch.clip(probs_t / probs_t.sum(-1, keepdim=True), 1e-7, 1 - 1e-7)
    loss_t = -(torch.tensor(y) * torch.log(q)).sum(-1).mean()
    loss_t.backward()
    theirs = {key: tensor.grad.numpy() for key, tensor in t.items()}
    return weights, {key: ours[key] for key in weights}, theirs, ours_loss, loss_t.item()


def test_lecture_model_gradients_match_torch_autograd() -> None:
    torch = pytest.importorskip("torch")
    _, ours, theirs, ours_loss, their_loss = _lecture_model(torch, conv_bias=True)
    assert ours_loss == pytest.approx(their_loss, rel=1e-5)
    for key, value in ours.items():
        assert value is not None
        scale = float(np.abs(theirs[key]).max())
        # the conv bias feeds a batch norm, which removes it: both gradients are float32 noise
        floor = 1e-6 if key == "conv_b" else 0.0
        assert float(np.abs(value - theirs[key]).max()) <= 1e-4 * scale + floor, key
    assert float(np.abs(ours["conv_b"]).max()) < 1e-5 < float(np.abs(ours["conv"]).max())


def test_lecture_model_one_sgd_and_one_adam_step_match_torch() -> None:
    """From the same weights, one full-batch step: every weight within 1e-4 (relative to the
    largest of its array) of torch.optim's. The conv has no bias before its batch norm, as
    Keras models write it (a bias there gets only float32 noise as its gradient, and Adam
    turns any noise into a step of about lr)."""
    torch = pytest.importorskip("torch")
    weights, ours, theirs, _, _ = _lecture_model(torch, conv_bias=False)
    # Keras adds epsilon to sqrt(v) before v's bias correction: at step 1 that is torch's
    # Adam with epsilon / sqrt(1 - beta_2)
    torch_optimizers = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
        "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.9, 0.999), eps=1e-7 / math.sqrt(0.001)),
    }
    for name, make in torch_optimizers.items():
        params = {key: value.copy() for key, value in weights.items()}
        optim.make_optimizer(name, 0.1 if name == "sgd" else 0.01).step(params, ours)
        tensors = {key: torch.tensor(value, requires_grad=True) for key, value in weights.items()}
        for key, tensor in tensors.items():
            tensor.grad = torch.tensor(theirs[key])
        make(list(tensors.values())).step()
        for key, value in params.items():
            expected = tensors[key].detach().numpy()
            moved = float(np.abs(expected - weights[key]).max())
            assert moved > 1e-4, (name, key)
            assert float(np.abs(value - expected).max()) <= 1e-4 * float(np.abs(expected).max()), (name, key)


# --------------------------------------------------------------------------- layers added with the graph


DEPTHWISE_CASES = [
    # n, h, w, c, fh, fw, m, strides, padding, dilation
    (2, 6, 5, 2, 3, 3, 1, (1, 1), "same", (1, 1)),
    (1, 7, 6, 3, 3, 2, 2, (2, 1), "valid", (1, 1)),
    (1, 8, 7, 2, 3, 3, 2, (1, 2), "same", (2, 1)),
    (1, 5, 5, 2, 2, 2, 1, (2, 2), (1, 0, 1, 2), (1, 1)),
]


@pytest.mark.parametrize("case", DEPTHWISE_CASES)
def test_depthwise_and_separable_backward_match_finite_differences(case) -> None:
    n, h, w, c, fh, fw, m, strides, padding, dilation = case
    rng = np.random.default_rng(16)
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, fh, fw, c, m), rand(rng, c * m)
    pads = oracles.resolved_pads(h, w, fh, fw, strides, padding, dilation)
    out = oracles.depthwise_naive(x, kernel, bias, strides, pads, dilation)
    options = {"strides": strides, "padding": padding, "dilation": dilation}
    np.testing.assert_allclose(ops.depthwise_conv2d(x, kernel, bias, **options), out, rtol=1e-4, atol=1e-4)
    r = rand(rng, *out.shape)

    def loss() -> float:
        return float(np.sum(oracles.depthwise_naive(x, kernel, bias, strides, pads, dilation) * r))

    dx, dk, db = grad.depthwise_conv2d_backward(x, kernel, r, **options)
    assert_gradient(dx, numeric_gradient(loss, x))
    assert_gradient(dk, numeric_gradient(loss, kernel))
    assert_gradient(db, numeric_gradient(loss, bias))

    # separable: the depthwise step (no bias), then a 1x1 convolution with the bias
    pointwise, pbias = rand(rng, 1, 1, c * m, 3), rand(rng, 3)

    def separable() -> np.ndarray:
        middle = oracles.depthwise_naive(x, kernel, None, strides, pads, dilation)
        return np.tensordot(middle, pointwise[0, 0], axes=1) + pbias

    np.testing.assert_allclose(ops.separable_conv2d(x, kernel, pointwise, pbias, **options), separable(),
                               rtol=1e-4, atol=1e-4)
    r2 = rand(rng, *separable().shape)

    def loss2() -> float:
        return float(np.sum(separable() * r2))

    sx, sdk, spk, sb = grad.separable_conv2d_backward(x, kernel, pointwise, r2, **options)
    assert_gradient(sx, numeric_gradient(loss2, x))
    assert_gradient(sdk, numeric_gradient(loss2, kernel))
    assert_gradient(spk, numeric_gradient(loss2, pointwise))
    assert_gradient(sb, numeric_gradient(loss2, pbias))


TRANSPOSE_CASES = [
    # n, h, w, c, fh, fw, k, strides, padding, output_padding, dilation
    (2, 3, 4, 2, 3, 3, 2, (2, 2), "valid", None, (1, 1)),
    (1, 4, 3, 2, 3, 2, 3, (2, 3), "same", None, (1, 1)),
    (1, 3, 3, 3, 3, 3, 2, (2, 2), "same", (1, 0), (1, 1)),
    (1, 3, 4, 2, 2, 3, 2, (1, 1), "valid", None, (2, 2)),
    (1, 4, 4, 1, 4, 4, 2, (3, 3), "valid", (2, 1), (1, 1)),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_conv2d_transpose_backward_matches_finite_differences(case) -> None:
    n, h, w, c, fh, fw, k, strides, padding, output_padding, dilation = case
    rng = np.random.default_rng(17)
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, fh, fw, k, c), rand(rng, k)

    def forward() -> np.ndarray:
        return oracles.conv2d_transpose_naive(x, kernel, bias, strides, padding, output_padding, dilation)

    options = {"strides": strides, "padding": padding, "output_padding": output_padding, "dilation": dilation}
    out = forward()
    np.testing.assert_allclose(ops.conv2d_transpose(x, kernel, bias, **options), out, rtol=1e-4, atol=1e-4)
    r = rand(rng, *out.shape)

    def loss() -> float:
        return float(np.sum(forward() * r))

    dx, dk, db = grad.conv2d_transpose_backward(x, kernel, r, **options)
    assert_gradient(dx, numeric_gradient(loss, x))
    assert_gradient(dk, numeric_gradient(loss, kernel))
    assert_gradient(db, numeric_gradient(loss, bias))
    narrow = grad.conv2d_transpose_backward(x.astype(np.float32), kernel.astype(np.float32), r.astype(np.float32),
                                            **options)
    assert narrow[0] is not None and narrow[0].dtype == np.float32
    np.testing.assert_allclose(narrow[0], dx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("interpolation, size", [("nearest", (2, 3)), ("bilinear", (2, 2)), ("bilinear", (3, 1))])
def test_upsampling2d_backward_matches_finite_differences(interpolation, size) -> None:
    rng = np.random.default_rng(18)
    x = rand(rng, 2, 3, 4, 2)
    naive = oracles.upsample_nearest_naive if interpolation == "nearest" else oracles.upsample_bilinear_naive
    out = naive(x, size)
    np.testing.assert_allclose(ops.upsampling2d(x, size, interpolation), out, rtol=1e-5, atol=1e-5)
    r = rand(rng, *out.shape)
    dx = grad.upsampling2d_backward(x.shape, r, size, interpolation)
    assert_gradient(dx, numeric_gradient(lambda: float(np.sum(naive(x, size) * r)), x))


def test_cropping_reshape_permute_rescaling_normalization_backward() -> None:
    rng = np.random.default_rng(19)
    x = rand(rng, 2, 5, 6, 3)
    crop = (1, 2, 0, 3)
    r = rand(rng, 2, 2, 3, 3)
    assert_gradient(grad.cropping2d_backward(r, crop),
                    numeric_gradient(lambda: float(np.sum(x[:, 1:3, 0:3] * r)), x))
    np.testing.assert_array_equal(ops.cropping2d(x, crop), x[:, 1:3, 0:3])
    r = rand(rng, 2, 15, 6)
    assert_gradient(grad.reshape_backward(x.shape, r), numeric_gradient(lambda: float(np.sum(x.reshape(2, 15, 6) * r)), x))
    r = rand(rng, 2, 3, 5, 6)
    np.testing.assert_array_equal(ops.permute(x, (3, 1, 2)), np.moveaxis(x, 3, 1))
    assert_gradient(grad.permute_backward(r, (3, 1, 2)),
                    numeric_gradient(lambda: float(np.sum(np.moveaxis(x, 3, 1) * r)), x))
    r = rand(rng, *x.shape)
    scale = np.array([0.5, -2.0, 3.0])
    assert_gradient(grad.rescaling_backward(r, scale), numeric_gradient(lambda: float(np.sum((x * scale + 1) * r)), x))
    variance = np.array([4.0, 0.25, 0.0])  # 0: Keras divides by its floor 1e-7
    std = np.maximum(np.sqrt(variance), 1e-7)
    for invert in (False, True):
        def normalized() -> np.ndarray:
            return x * std + 1 if invert else (x - 1) / std  # noqa: B023 - evaluated within the loop

        np.testing.assert_allclose(ops.normalization(x, 1.0, variance, invert=invert), normalized(), rtol=1e-5, atol=1e-6)
        assert_gradient(grad.normalization_backward(r, variance, invert=invert),
                        numeric_gradient(lambda: float(np.sum(normalized() * r)), x))
    with pytest.raises(ShapeError, match="do not order the sample axes"):
        grad.permute_backward(r, (1, 2))


@pytest.mark.parametrize("axis, with_gamma, with_beta", [(-1, True, True), ((1, 2, 3), True, False), ((2,), False, True)])
def test_layer_norm_backward_matches_finite_differences(axis, with_gamma, with_beta) -> None:
    rng = np.random.default_rng(20)
    x = rand(rng, 2, 3, 4, 3) * 2 + 0.5
    axes = (axis,) if isinstance(axis, int) else axis
    normalised = tuple(x.shape[a] for a in axes)
    gamma = rand(rng, *normalised) if with_gamma else None
    beta = rand(rng, *normalised) if with_beta else None

    def forward() -> np.ndarray:
        return oracles.layer_norm_naive(x, gamma, beta, 1e-3, axes)

    np.testing.assert_allclose(ops.layer_norm(x, gamma, beta, axis=axis), forward(), rtol=1e-4, atol=1e-4)
    r = rand(rng, *x.shape)

    def loss() -> float:
        return float(np.sum(forward() * r))

    dx, dgamma, dbeta = grad.layer_norm_backward(x, r, gamma, axis=axis, use_beta=with_beta)
    assert_gradient(dx, numeric_gradient(loss, x))
    if gamma is not None:
        assert_gradient(dgamma, numeric_gradient(loss, gamma))
    else:
        assert dgamma is None
    if beta is not None:
        assert_gradient(dbeta, numeric_gradient(loss, beta))
    else:
        assert dbeta is None


MERGE_REF = {
    "add": lambda xs: sum(xs[1:], xs[0]),
    "subtract": lambda xs: xs[0] - xs[1],
    "multiply": lambda xs: np.prod(np.broadcast_arrays(*xs), axis=0),
    "average": lambda xs: sum(xs[1:], xs[0]) / len(xs),
    "maximum": lambda xs: np.max(np.broadcast_arrays(*xs), axis=0),
    "minimum": lambda xs: np.min(np.broadcast_arrays(*xs), axis=0),
}


@pytest.mark.parametrize("kind", list(MERGE_REF))
def test_merge_backward_matches_finite_differences(kind) -> None:
    rng = np.random.default_rng(22)
    # a full input, one broadcast over the positions (Keras: fewer axes go after the batch), one over rows
    shapes = [(2, 3, 4, 2), (2, 2), (2, 3, 1, 2)] if kind != "subtract" else [(2, 3, 4, 2), (2, 3, 1, 2)]
    xs = [rand(rng, *s) for s in shapes]

    def forward() -> np.ndarray:
        expanded = [a.reshape(a.shape[:1] + (1,) * (4 - a.ndim) + a.shape[1:]) for a in xs]
        return MERGE_REF[kind](expanded)

    np.testing.assert_allclose(ops.merge(kind, xs), forward(), rtol=1e-5, atol=1e-5)
    r = rand(rng, *forward().shape)
    for analytic, arr in zip(grad.merge_backward(kind, xs, r), xs):
        assert analytic.shape == arr.shape
        assert_gradient(analytic, numeric_gradient(lambda: float(np.sum(forward() * r)), arr))


def test_merge_backward_ties_and_concatenate() -> None:
    # torch.maximum splits a tie evenly; Keras folds maximum over the inputs in order
    a, b, c = np.array([[1.0, 2.0]]), np.array([[1.0, 3.0]]), np.array([[1.0, 0.0]])
    da, db, dc = grad.merge_backward("maximum", [a, b, c], np.array([[8.0, 8.0]]))
    np.testing.assert_array_equal(da, [[2.0, 0.0]])  # max(max(a, b), c): (4 then 2 from the tie with c)
    np.testing.assert_array_equal(db, [[2.0, 8.0]])
    np.testing.assert_array_equal(dc, [[4.0, 0.0]])
    parts = grad.merge_backward("concatenate", [np.ones((1, 2, 2)), np.ones((1, 2, 3))], np.arange(10.0).reshape(1, 2, 5))
    np.testing.assert_array_equal(parts[1][0, 0], [2, 3, 4])
    with pytest.raises(ModelError, match="Allowed values are: add"):
        grad.merge_backward("dot", [a, b], a)


# --------------------------------------------------------------------------- learning, end to end


def train_digits(epochs: int) -> tuple[float, float, float]:
    """samples/digits.toml's network (conv 16, conv 32, max pool, dense 64, dense 10,
    softmax), He-initialised from seed 0, trained by these backward passes and Keras' Adam
    (batch 32) on the 1,347 training digits of samples/digits-all.npz.

    Returns (first epoch's mean loss, last epoch's, held-out accuracy on the 450 others)."""
    from pathlib import Path

    data = np.load(Path(__file__).resolve().parent.parent / "samples" / "digits-all.npz")
    x, y, held = data["x"], data["y"], data["heldout"]
    assert x.shape == (1797, 8, 8, 1) and held.sum() == 450
    x_train, y_train = x[~held], np.eye(10, dtype=np.float32)[y[~held]]
    rng = np.random.default_rng(0)

    def he(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:-1]))).astype(np.float32)

    params = {"c1": he(3, 3, 1, 16), "b1": np.zeros(16, np.float32), "c2": he(3, 3, 16, 32),
              "b2": np.zeros(32, np.float32), "f1": he(512, 64), "g1": np.zeros(64, np.float32),
              "f2": he(64, 10), "g2": np.zeros(10, np.float32)}
    adam = optim.make_optimizer("adam")

    def forward(batch: np.ndarray) -> tuple[np.ndarray, ...]:
        a1 = ops.conv2d(batch, params["c1"], params["b1"], padding="same", activation="relu")
        a2 = ops.conv2d(a1, params["c2"], params["b2"], padding="same", activation="relu")
        pooled = ops.max_pool2d(a2, 2)
        flat = ops.flatten(pooled)
        hidden = ops.dense(flat, params["f1"], params["g1"], activation="relu")
        return a1, a2, pooled, flat, hidden, ops.dense(hidden, params["f2"], params["g2"], activation="softmax")

    first_loss = last_loss = 0.0
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        total = 0.0
        for start in range(0, len(order), 32):
            index = order[start : start + 32]
            batch, target = x_train[index], y_train[index]
            a1, a2, pooled, flat, hidden, probs = forward(batch)
            total += losses.compute("categorical-crossentropy", target, probs) * len(index)
            g = grad.loss_gradient("categorical-crossentropy", target, probs).astype(np.float32)
            g = grad.activation_backward("softmax", g, output=probs)
            g, d_f2, d_g2 = grad.dense_backward(hidden, params["f2"], g)
            g, d_f1, d_g1 = grad.dense_backward(flat, params["f1"], grad.activation_backward("relu", g, output=hidden))
            g = grad.max_pool2d_backward(a2, grad.flatten_backward(pooled.shape, g), 2)
            g, d_c2, d_b2 = grad.conv2d_backward(a1, params["c2"], grad.activation_backward("relu", g, output=a2),
                                                 padding="same")
            _, d_c1, d_b1 = grad.conv2d_backward(batch, params["c1"], grad.activation_backward("relu", g, output=a1),
                                                 padding="same", input_gradient=False)
            adam.step(params, {"c1": d_c1, "b1": d_b1, "c2": d_c2, "b2": d_b2, "f1": d_f1, "g1": d_g1,
                               "f2": d_f2, "g2": d_g2})
        first_loss = first_loss or total / len(order)
        last_loss = total / len(order)
    accuracy = float(np.mean(forward(x[held])[-1].argmax(axis=1) == y[held]))
    return first_loss, last_loss, accuracy


def test_the_digits_cnn_learns_from_scratch_with_these_gradients() -> None:
    """Five epochs classify the held-out digits as well as the small CNNs published for
    this set (>= 95%). In a process of its own with one BLAS thread: batches of 32 8x8
    images are many tiny products, which a multithreaded BLAS on busy cores runs several
    times slower than one thread does."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    code = "import json; from tests.test_grad import train_digits; print(json.dumps(train_digits(5)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    first_loss, last_loss, accuracy = json.loads(done.stdout.strip().splitlines()[-1])
    assert last_loss < first_loss / 5
    assert accuracy >= 0.95
