"""Grouped, depthwise, separable, dilated and transposed convolutions of convcli.ops
against the naive loop oracles of tests/oracles.py (and, when PyTorch is installed,
against torch.nn.functional as a second opinion)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli import geometry, ops
from convcli.errors import ShapeError
from tests.oracles import (
    conv2d_naive,
    conv2d_transpose_naive,
    conv_transpose_length_naive,
    depthwise_naive,
    resolved_pads,
)

RTOL, ATOL = 1e-5, 1e-5


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- dilation


DILATED_CASES = [
    # (N, H, W, C, F_h, F_w, K, strides, padding, dilation): Keras' same padding for the
    # dilated extent (F - 1) * D + 1, with and without strides
    (1, 9, 9, 2, 3, 3, 3, (1, 1), "same", (2, 2)),
    (2, 10, 7, 1, 3, 3, 2, (2, 2), "same", (2, 2)),
    (1, 11, 12, 3, 3, 2, 4, (3, 2), "same", (2, 3)),
    (1, 8, 8, 2, 2, 2, 2, (2, 2), "same", (3, 3)),  # even kernel: the extra row at the bottom
    (2, 13, 9, 2, 3, 3, 3, (2, 1), "valid", (3, 2)),
    (1, 7, 7, 1, 3, 3, 1, (1, 1), "same", (4, 4)),  # extent 9 > 7: more padding than input
]


@pytest.mark.parametrize("index", range(len(DILATED_CASES)))
def test_dilated_conv2d_with_strides_and_same_padding(index: int) -> None:
    n, h, w, c, fh, fw, k, strides, padding, dilation = DILATED_CASES[index]
    rng = np.random.default_rng(2000 + index)
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, fh, fw, c, k), rand(rng, k)
    pads = resolved_pads(h, w, fh, fw, strides, padding, dilation)
    out = ops.conv2d(x, kernel, bias, strides=strides, padding=padding, dilation=dilation)
    close(out, conv2d_naive(x, kernel, bias, strides, pads, dilation))
    if padding == "same":
        assert out.shape[1:3] == (-(-h // strides[0]), -(-w // strides[1]))


def test_dilated_same_padding_by_hand() -> None:
    # 5x5 input, 3x3 kernel dilated by 2 (extent 5), same: 2 zeros each side, so output
    # (0, 0) sees only x[0, 0], x[0, 2], x[2, 0], x[2, 2] (kernel taps (1,1),(1,2),(2,1),(2,2))
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    out = ops.conv2d(x, np.ones((3, 3, 1, 1), np.float32), padding="same", dilation=2)
    assert out[0, 0, 0, 0] == 0 + 2 + 10 + 12
    assert out[0, 2, 2, 0] == sum(x[0, i, j, 0] for i in (0, 2, 4) for j in (0, 2, 4))


# --------------------------------------------------------------------------- grouped


GROUPED_CASES = [
    # (N, H, W, C, F, K, groups, strides, padding, dilation)
    (2, 6, 7, 4, 3, 6, 2, 1, "same", 1),
    (1, 8, 8, 6, 3, 9, 3, 2, "same", 1),
    (1, 9, 7, 6, 2, 6, 3, 1, "valid", 2),
    (2, 5, 5, 8, 1, 8, 4, 1, "valid", 1),  # 1x1 grouped
    (1, 7, 7, 3, 3, 3, 3, 1, "same", 1),  # groups == C: depthwise, multiplier 1
    (1, 7, 6, 3, 3, 6, 3, 2, "same", 1),  # groups == C, multiplier 2
    (1, 10, 10, 4, 5, 4, 4, 1, "same", 2),
]


@pytest.mark.parametrize("index", range(len(GROUPED_CASES)))
@pytest.mark.parametrize("use_bias", [True, False])
def test_grouped_conv2d_matches_oracle(index: int, use_bias: bool) -> None:
    n, h, w, c, f, k, groups, s, padding, d = GROUPED_CASES[index]
    rng = np.random.default_rng(3000 + index)
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, f, f, c // groups, k), rand(rng, k)
    b = bias if use_bias else None
    out = ops.conv2d(x, kernel, b, strides=s, padding=padding, dilation=d, groups=groups)
    pads = resolved_pads(h, w, f, f, (s, s), padding, (d, d))
    close(out, conv2d_naive(x, kernel, b, (s, s), pads, (d, d), groups=groups))


def test_grouped_conv2d_by_hand() -> None:
    # Two groups of one channel each, 1x1 kernels: output 0 reads channel 0 only, output 1
    # channel 1 only (Keras order: group g makes outputs g*K/groups ..).
    x = np.array([[[[2.0, 3.0]]]], np.float32)
    kernel = np.array([10.0, 100.0], np.float32).reshape(1, 1, 1, 2)
    assert ops.conv2d(x, kernel, groups=2)[0, 0, 0].tolist() == [20.0, 300.0]


def test_grouped_softmax_spans_all_groups() -> None:
    rng = np.random.default_rng(3100)
    x, kernel = rand(rng, 1, 4, 4, 4), rand(rng, 3, 3, 2, 6)
    out = ops.conv2d(x, kernel, padding="same", groups=2, activation="softmax")
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)


def test_grouped_errors() -> None:
    x = np.zeros((1, 5, 5, 6), np.float32)
    with pytest.raises(ShapeError, match="`groups` must be a positive divisor of the input depth 6. Received: groups=4"):
        ops.conv2d(x, np.zeros((3, 3, 1, 4), np.float32), groups=4)
    with pytest.raises(ShapeError, match=r"with groups=3 the kernel must be \(F_h, F_w, 2, K\).*\(3, 3, 2, 4\)"):
        ops.conv2d(x, np.zeros((3, 3, 2, 4), np.float32), groups=3)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 2), h=st.integers(3, 8), w=st.integers(3, 8), cg=st.integers(1, 2),
    groups=st.integers(1, 3), kg=st.integers(1, 2), f=st.integers(1, 3), s=st.integers(1, 2),
    d=st.integers(1, 2), padding=st.sampled_from(["valid", "same"]), seed=st.integers(0, 2**16),
)
def test_grouped_conv2d_hypothesis(n, h, w, cg, groups, kg, f, s, d, padding, seed) -> None:
    eff = (f - 1) * d + 1
    if padding == "valid" and (h < eff or w < eff):
        return
    rng = np.random.default_rng(seed)
    x, kernel, bias = rand(rng, n, h, w, cg * groups), rand(rng, f, f, cg, kg * groups), rand(rng, kg * groups)
    out = ops.conv2d(x, kernel, bias, strides=s, padding=padding, dilation=d, groups=groups)
    pads = resolved_pads(h, w, f, f, (s, s), padding, (d, d))
    close(out, conv2d_naive(x, kernel, bias, (s, s), pads, (d, d), groups=groups))


# --------------------------------------------------------------------------- depthwise


DEPTHWISE_CASES = [
    # (N, H, W, C, F_h, F_w, m, strides, padding, dilation)
    (2, 7, 8, 3, 3, 3, 1, (1, 1), "same", (1, 1)),
    (1, 9, 7, 2, 3, 3, 2, (2, 2), "same", (1, 1)),
    (2, 10, 9, 3, 3, 3, 1, (1, 1), "same", (2, 2)),
    (1, 11, 11, 2, 5, 5, 3, (2, 3), "valid", (1, 1)),
    (1, 9, 9, 4, 3, 3, 1, (2, 2), "same", (2, 2)),
    (3, 6, 5, 2, 2, 2, 4, (1, 1), "same", (2, 1)),
    (1, 8, 8, 5, 7, 7, 1, (1, 1), "same", (1, 1)),  # ConvNeXt's 7x7
    (2, 6, 6, 3, 1, 1, 2, (1, 1), "valid", (1, 1)),
    (1, 12, 10, 4, 3, 2, 1, (3, 2), "valid", (1, 1)),
    (1, 5, 5, 2, 3, 3, 1, (1, 1), 1, (1, 1)),  # an integer padding
    (2, 9, 8, 3, 3, 3, 1, (2, 1), "same", (1, 1)),  # vertical stride only: the contiguous-row path
    (1, 10, 7, 2, 3, 2, 1, (3, 1), "valid", (2, 1)),
]


@pytest.mark.parametrize("index", range(len(DEPTHWISE_CASES)))
@pytest.mark.parametrize("use_bias", [True, False])
def test_depthwise_matches_oracle(index: int, use_bias: bool) -> None:
    n, h, w, c, fh, fw, m, strides, padding, dilation = DEPTHWISE_CASES[index]
    rng = np.random.default_rng(4000 + index)
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, fh, fw, c, m), rand(rng, c * m)
    b = bias if use_bias else None
    out = ops.depthwise_conv2d(x, kernel, b, strides=strides, padding=padding, dilation=dilation)
    pads = resolved_pads(h, w, fh, fw, strides, padding, dilation)
    close(out, depthwise_naive(x, kernel, b, strides, pads, dilation))


def test_depthwise_by_hand() -> None:
    # channel 0 under an all-ones kernel, channel 1 under all-twos (multiplier 1), and the
    # channel order c*m + j with multiplier 2
    x = np.stack([np.full((3, 3), 1.0), np.full((3, 3), 10.0)], axis=-1)[None].astype(np.float32)
    kernel = np.stack([np.ones((3, 3)), 2 * np.ones((3, 3))], axis=-1)[..., None].astype(np.float32)
    assert ops.depthwise_conv2d(x, kernel)[0, 0, 0].tolist() == [9.0, 180.0]
    kernel2 = np.ones((3, 3, 2, 2), np.float32) * np.array([1, -1], np.float32)
    assert ops.depthwise_conv2d(x, kernel2)[0, 0, 0].tolist() == [9.0, -9.0, 90.0, -90.0]


@pytest.mark.parametrize("activation", ["relu6", "softmax", "hard_swish"])
def test_depthwise_fused_activation_and_chunks(activation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4100)
    x, kernel, bias = rand(rng, 5, 6, 7, 3), rand(rng, 3, 3, 3, 1), rand(rng, 3)
    logits = depthwise_naive(x, kernel, bias, (1, 1), (1, 1, 1, 1))
    expected = ops.activate(logits.astype(np.float32), activation)
    for chunk in (1, 700, 10**9):  # one sample per step, two, the whole batch
        monkeypatch.setattr(ops, "DEPTHWISE_CHUNK_BYTES", chunk)
        close(ops.depthwise_conv2d(x, kernel, bias, padding="same", activation=activation), expected)


def test_depthwise_errors() -> None:
    x = np.zeros((1, 5, 5, 3), np.float32)
    with pytest.raises(ShapeError, match=r"\(F_h, F_w, 3, multiplier\).*\(3, 3, 2, 1\)"):
        ops.depthwise_conv2d(x, np.zeros((3, 3, 2, 1), np.float32))
    with pytest.raises(ShapeError, match=r"bias must have shape \(6,\)"):
        ops.depthwise_conv2d(x, np.zeros((3, 3, 3, 2), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ShapeError, match="kernel of size 7 is larger"):
        ops.depthwise_conv2d(x, np.zeros((7, 7, 3, 1), np.float32))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 4), m=st.integers(1, 3),
    fh=st.integers(1, 4), fw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
    dh=st.integers(1, 2), dw=st.integers(1, 2), padding=st.sampled_from(["valid", "same", 0, 1]),
    seed=st.integers(0, 2**16),
)
def test_depthwise_hypothesis(n, h, w, c, m, fh, fw, sh, sw, dh, dw, padding, seed) -> None:
    pads = resolved_pads(h, w, fh, fw, (sh, sw), padding, (dh, dw))
    rng = np.random.default_rng(seed)
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, fh, fw, c, m), rand(rng, c * m)
    if h + pads[0] + pads[1] < (fh - 1) * dh + 1 or w + pads[2] + pads[3] < (fw - 1) * dw + 1:
        with pytest.raises(ShapeError, match="larger than"):
            ops.depthwise_conv2d(x, kernel, bias, strides=(sh, sw), padding=padding, dilation=(dh, dw))
        return
    out = ops.depthwise_conv2d(x, kernel, bias, strides=(sh, sw), padding=padding, dilation=(dh, dw))
    close(out, depthwise_naive(x, kernel, bias, (sh, sw), pads, (dh, dw)))


# --------------------------------------------------------------------------- separable


@pytest.mark.parametrize("strides,padding,dilation,m", [
    (1, "same", 1, 1), (2, "same", 1, 2), (1, "valid", 2, 1), (2, "valid", 1, 3),
])
def test_separable_is_depthwise_then_pointwise(strides, padding, dilation, m) -> None:
    rng = np.random.default_rng(5000 + m)
    x = rand(rng, 2, 9, 8, 3)
    depthwise, pointwise, bias = rand(rng, 3, 3, 3, m), rand(rng, 1, 1, 3 * m, 5), rand(rng, 5)
    out = ops.separable_conv2d(x, depthwise, pointwise, bias, strides=strides, padding=padding,
                               dilation=dilation, activation="relu")
    pads = resolved_pads(9, 8, 3, 3, (strides, strides), padding, (dilation, dilation))
    middle = depthwise_naive(x, depthwise, None, (strides, strides), pads, (dilation, dilation))
    close(out, np.maximum(conv2d_naive(middle, pointwise, bias), 0))


def test_separable_errors() -> None:
    x = np.zeros((1, 5, 5, 3), np.float32)
    with pytest.raises(ShapeError, match=r"pointwise kernel must be \(1, 1, 6, K\).*\(1, 1, 3, 4\)"):
        ops.separable_conv2d(x, np.zeros((3, 3, 3, 2), np.float32), np.zeros((1, 1, 3, 4), np.float32))


# --------------------------------------------------------------------------- transposed


@pytest.mark.parametrize("n,f,s,padding,output_padding,d,expected", [
    # worked by hand from Keras' rule (valid: (n-1)s + max(eff, s); same: n*s; with an
    # output_padding op: (n-1)s + eff + op, or (n-1)s + eff % 2 + op)
    (7, 3, 2, "valid", None, 1, 15), (7, 3, 2, "same", None, 1, 14), (7, 3, 2, "same", 1, 1, 14),
    (7, 3, 2, "valid", 1, 1, 16), (7, 2, 2, "same", 0, 1, 12), (4, 1, 3, "valid", None, 1, 12),
    (4, 1, 3, "valid", 0, 1, 10), (5, 3, 1, "same", None, 2, 5), (5, 3, 1, "valid", None, 2, 9),
    (1, 4, 4, "same", 3, 1, 3),
])
def test_conv_transpose_output_length(n, f, s, padding, output_padding, d, expected) -> None:
    assert conv_transpose_length_naive(n, f, s, padding, output_padding, d) == expected
    assert geometry.conv_transpose_output_length(n, f, s, padding, output_padding, d) == expected


TRANSPOSE_CASES = [
    # (N, H, W, C, F_h, F_w, K, strides, padding, output_padding, dilation)
    (2, 5, 6, 3, 3, 3, 4, (2, 2), "same", None, (1, 1)),
    (2, 5, 6, 3, 3, 3, 4, (2, 2), "valid", None, (1, 1)),
    (1, 5, 6, 3, 3, 3, 4, (2, 2), "same", (1, 1), (1, 1)),
    (1, 5, 6, 3, 3, 3, 4, (2, 2), "valid", (1, 0), (1, 1)),
    (2, 4, 4, 2, 2, 2, 3, (2, 2), "same", None, (1, 1)),  # U-Net's 2x2 / 2
    (1, 4, 5, 2, 4, 4, 3, (3, 3), "same", (2, 2), (1, 1)),
    (1, 4, 5, 2, 4, 3, 3, (3, 2), "valid", None, (1, 1)),
    (1, 3, 3, 2, 3, 3, 2, (1, 1), "same", None, (2, 2)),
    (1, 3, 4, 2, 3, 3, 2, (1, 1), "valid", None, (2, 1)),
    (1, 6, 5, 3, 5, 5, 2, (2, 2), "same", (0, 1), (1, 1)),
    (1, 4, 4, 2, 1, 1, 2, (3, 3), "valid", None, (1, 1)),  # stride > kernel: gaps of zeros
    (2, 3, 3, 1, 2, 2, 1, (3, 3), "same", (1, 2), (1, 1)),
]


@pytest.mark.parametrize("index", range(len(TRANSPOSE_CASES)))
@pytest.mark.parametrize("use_bias", [True, False])
def test_conv2d_transpose_matches_oracle(index: int, use_bias: bool) -> None:
    n, h, w, c, fh, fw, k, strides, padding, output_padding, dilation = TRANSPOSE_CASES[index]
    rng = np.random.default_rng(6000 + index)
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, fh, fw, k, c), rand(rng, k)
    b = bias if use_bias else None
    out = ops.conv2d_transpose(x, kernel, b, strides=strides, padding=padding, output_padding=output_padding,
                               dilation=dilation)
    close(out, conv2d_transpose_naive(x, kernel, b, strides, padding, output_padding, dilation))


def test_conv2d_transpose_by_hand() -> None:
    # One pixel of value 1 at stride 2 spreads the 2x2 kernel; two pixels' patches sit 2 apart.
    x = np.array([[[[1.0], [2.0]]]], np.float32)  # 1x2 image
    kernel = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32).reshape(2, 2, 1, 1)
    out = ops.conv2d_transpose(x, kernel, strides=2)[0, :, :, 0]
    assert out.tolist() == [[1, 2, 2, 4], [3, 4, 6, 8]]


@pytest.mark.parametrize("strides,f", [((1, 1), 3), ((2, 2), 3), ((2, 3), 4), ((3, 3), 3)])
def test_conv2d_transpose_is_the_adjoint_of_conv2d(strides, f) -> None:
    # <T x, z> = <x, conv2d(z)> for the same kernel (valid padding, no output padding):
    # the defining property of the transposed convolution, independent of any loop.
    rng = np.random.default_rng(6100 + f)
    x = rand(rng, 2, 4, 5, 3)
    kernel = rand(rng, f, f, 2, 3)  # transpose: (F, F, K=2, C=3); conv2d: 2 channels in, 3 out
    tx = ops.conv2d_transpose(x, kernel, strides=strides)
    z = rand(rng, *tx.shape)
    conv = ops.conv2d(z, kernel, strides=strides)
    assert conv.shape == x.shape
    lhs = float(np.sum(tx.astype(np.float64) * z))
    rhs = float(np.sum(x.astype(np.float64) * conv))
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_conv2d_transpose_chunks_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6200)
    x, kernel, bias = rand(rng, 5, 4, 4, 2), rand(rng, 3, 3, 3, 2), rand(rng, 3)
    expected = np.tanh(conv2d_transpose_naive(x, kernel, bias, (2, 2), "same"))
    monkeypatch.setattr(ops, "CHUNK_BYTES", 1)
    close(ops.conv2d_transpose(x, kernel, bias, strides=2, padding="same", activation="tanh"), expected)
    with pytest.raises(ShapeError, match=r"\(F_h, F_w, K, 2\).*\(3, 3, 2, 3\)"):
        ops.conv2d_transpose(x, np.zeros((3, 3, 2, 3), np.float32))
    with pytest.raises(ShapeError, match=r"output_padding` must be non-negative and strictly less than the strides"):
        ops.conv2d_transpose(x, kernel, strides=2, output_padding=2)
    with pytest.raises(ShapeError, match="Allowed values are: valid, same. Received: padding=1"):
        ops.conv2d_transpose(x, kernel, padding=1)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 2), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 3), k=st.integers(1, 3),
    fh=st.integers(1, 4), fw=st.integers(1, 4), sh=st.integers(1, 3), sw=st.integers(1, 3),
    dh=st.integers(1, 2), dw=st.integers(1, 2), padding=st.sampled_from(["valid", "same"]),
    op=st.none() | st.tuples(st.integers(0, 2), st.integers(0, 2)), seed=st.integers(0, 2**16),
)
def test_conv2d_transpose_hypothesis(n, h, w, c, k, fh, fw, sh, sw, dh, dw, padding, op, seed) -> None:
    if op is not None and (op[0] >= sh or op[1] >= sw):
        return
    rng = np.random.default_rng(seed)
    x, kernel, bias = rand(rng, n, h, w, c), rand(rng, fh, fw, k, c), rand(rng, k)
    out = ops.conv2d_transpose(x, kernel, bias, strides=(sh, sw), padding=padding, output_padding=op,
                               dilation=(dh, dw))
    close(out, conv2d_transpose_naive(x, kernel, bias, (sh, sw), padding, op, (dh, dw)))


# --------------------------------------------------------------------------- PyTorch, if present


def test_against_torch_functional() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(7000)

    def nchw(a: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    def nhwc(t) -> np.ndarray:
        return t.detach().numpy().transpose(0, 2, 3, 1)

    x = rand(rng, 2, 9, 10, 6)
    # grouped, dilated: torch weight (K, C/groups, F, F)
    kernel, bias = rand(rng, 3, 3, 2, 9), rand(rng, 9)
    expected = F.conv2d(nchw(x), torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()), torch.from_numpy(bias),
                        padding=2, dilation=2, groups=3)
    close(ops.conv2d(x, kernel, bias, padding=2, dilation=2, groups=3), nhwc(expected))
    # depthwise, multiplier 2, stride 2
    dk = rand(rng, 3, 3, 6, 2)
    expected = F.conv2d(nchw(x), torch.from_numpy(dk.reshape(3, 3, 1, 12).transpose(3, 2, 0, 1).copy()),
                        stride=2, padding=1, groups=6)
    close(ops.depthwise_conv2d(x, dk, strides=2, padding=1), nhwc(expected))
    # transposed, valid: torch weight (C_in, K, F, F), output (H-1)*S + F
    tk, tb = rand(rng, 3, 3, 4, 6), rand(rng, 4)
    expected = F.conv_transpose2d(nchw(x), torch.from_numpy(tk.transpose(3, 2, 0, 1).copy()), torch.from_numpy(tb),
                                  stride=2)
    close(ops.conv2d_transpose(x, tk, tb, strides=2), nhwc(expected))
