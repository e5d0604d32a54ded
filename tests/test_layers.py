"""Layer objects: output shapes, Keras parameter layouts, counts and MACs.

References: the lecture's AlexNet conv1 figures, hand computations, a naive loop oracle
that slides the window position by position, and (when installed) PyTorch's own layers.
"""

from __future__ import annotations

import doctest
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli import layers as L
from convcli.errors import ModelError, ShapeError


def test_doctests() -> None:
    failures, tried = doctest.testmod(L)
    assert tried >= 3 and failures == 0


def _positions(n: int, k: int, s: int, before: int, after: int) -> int:
    """Naive oracle: count the window positions 0, s, 2s, ... that fit in the padded input."""
    count, start = 0, 0
    while start + k <= n + before + after:
        count += 1
        start += s
    return count


# ---- the lecture's AlexNet conv1 ---------------------------------------------------

ALEX_CONV1 = L.Conv2D(name="conv1", filters=96, kernel_size=(11, 11), strides=(4, 4))


def test_alexnet_conv1_volume_and_parameters() -> None:
    assert ALEX_CONV1.output_shape((227, 227, 3)) == (55, 55, 96)
    assert ALEX_CONV1.param_shapes((227, 227, 3)) == {"kernel": (11, 11, 3, 96), "bias": (96,)}
    assert ALEX_CONV1.params((227, 227, 3)) == 34_944
    assert ALEX_CONV1.params_unshared((227, 227, 3)) == 105_705_600
    # 290,400 neurons, each 11*11*3 = 363 multiply-accumulates
    assert ALEX_CONV1.macs((227, 227, 3)) == 290_400 * 363


def test_locally_connected_is_the_unshared_count() -> None:
    local = L.LocallyConnected2D(name="local1", filters=96, kernel_size=(11, 11), strides=(4, 4))
    assert local.output_shape((227, 227, 3)) == (55, 55, 96)
    assert local.param_shapes((227, 227, 3)) == {"kernel": (55 * 55, 363, 96), "bias": (55, 55, 96)}
    assert local.params((227, 227, 3)) == 105_705_600
    assert local.params_unshared((227, 227, 3)) == 105_705_600


# ---- shapes against the naive oracle --------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 64), k=st.integers(1, 7), s=st.integers(1, 4), p=st.integers(0, 3),
    d=st.integers(1, 3),
)
def test_conv_output_matches_window_count_or_refuses(n: int, k: int, s: int, p: int, d: int) -> None:
    k_eff = (k - 1) * d + 1
    conv = L.Conv2D(name="c", filters=2, kernel_size=(k, k), strides=(s, s), padding=(p, p, p, p), dilation=(d, d))
    count = _positions(n, k_eff, s, p, p)
    fits = n + 2 * p >= k_eff and (n + 2 * p - k_eff) % s == 0
    if fits:
        assert conv.output_shape((n, n, 3)) == (count, count, 2)
    else:
        with pytest.raises(ShapeError, match="layer 'c' \\(Conv2D\\)"):
            conv.output_shape((n, n, 3))


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 64), k=st.integers(1, 7), s=st.integers(1, 4))
def test_same_padding_is_keras_ceil_with_extra_at_bottom_right(n: int, k: int, s: int) -> None:
    conv = L.Conv2D(name="c", filters=1, kernel_size=(k, k), strides=(s, s), padding="same")
    out = -(-n // s)
    assert conv.output_shape((n, n, 1)) == (out, out, 1)
    top, bottom, left, right = conv.padding_amounts((n, n, 1))
    assert bottom - top in (0, 1) and right - left in (0, 1)
    # the padded input holds exactly the windows Keras takes (trailing rows may be unused)
    assert _positions(n, k, s, top, bottom) >= out


def test_same_padding_example_by_hand() -> None:
    # 224 wide, F=11, S=4: out 56 needs (56-1)*4 + 11 - 224 = 7 pixels: 3 before, 4 after
    conv = L.Conv2D(name="c", filters=1, kernel_size=(11, 11), strides=(4, 4), padding="same")
    assert conv.padding_amounts((224, 224, 3)) == (3, 4, 3, 4)
    assert conv.output_shape((224, 224, 3)) == (56, 56, 1)


def test_rectangular_inputs_and_kernels() -> None:
    conv = L.Conv2D(name="c", filters=4, kernel_size=(3, 5), strides=(1, 2), padding=(1, 1, 2, 2))
    # height (20 - 3 + 2)/1 + 1 = 20, width (31 - 5 + 4)/2 + 1 = 16
    assert conv.output_shape((20, 31, 2)) == (20, 16, 4)
    assert conv.param_shapes((20, 31, 2)) == {"kernel": (3, 5, 2, 4), "bias": (4,)}


def test_pooling_lecture_example_and_default_stride() -> None:
    pool = L.MaxPooling2D(name="pool1", pool_size=(2, 2))
    assert pool.strides == (2, 2)  # Keras: strides default to the pool size
    assert pool.output_shape((224, 224, 64)) == (112, 112, 64)
    assert pool.params((224, 224, 64)) == 0 and pool.macs((224, 224, 64)) == 0
    overlapping = L.MaxPooling2D(name="pool2", pool_size=(3, 3), strides=(2, 2))
    assert overlapping.output_shape((55, 55, 96)) == (27, 27, 96)  # AlexNet pool1


def test_pooling_that_does_not_fit_names_layer_and_fraction() -> None:
    pool = L.AveragePooling2D(name="s4", pool_size=(2, 2))
    with pytest.raises(ShapeError, match=r"layer 's4' \(AveragePooling2D\).*3\.5 is not an integer"):
        pool.output_shape((7, 7, 16))
    assert L.AveragePooling2D(name="s", pool_size=(2, 2), padding="same").output_shape((7, 7, 16)) == (4, 4, 16)


def test_dense_flatten_global_pooling() -> None:
    assert L.Flatten(name="f").output_shape((7, 7, 512)) == (25_088,)
    fc = L.Dense(name="fc1", units=4096)
    assert fc.param_shapes((25_088,)) == {"kernel": (25_088, 4096), "bias": (4096,)}
    assert fc.params((25_088,)) == 102_764_544  # VGG16 fc1 in Keras' summary
    assert fc.macs((25_088,)) == 25_088 * 4096
    assert L.Dense(name="x", units=3, use_bias=False).params((5,)) == 15
    assert L.GlobalAveragePooling2D(name="g").output_shape((7, 7, 512)) == (512,)
    assert L.GlobalMaxPooling2D(name="g").output_shape((7, 7, 512)) == (512,)
    # Keras' Dense acts on the last axis of a higher-rank input (ConvNeXt's pointwise layers):
    # Dense(10) on (None, 7, 7, 512) is (None, 7, 7, 10) with 512 * 10 + 10 parameters
    head = L.Dense(name="head", units=10)
    assert head.output_shape((7, 7, 512)) == (7, 7, 10)
    assert head.params((7, 7, 512)) == 5_130


def test_batch_norm_zero_padding_dropout_activation() -> None:
    bn = L.BatchNormalization(name="bn1")
    assert bn.epsilon == 1e-3
    assert bn.param_shapes((8, 8, 32)) == {name: (32,) for name in ("gamma", "beta", "moving_mean", "moving_variance")}
    assert bn.params((8, 8, 32)) == 128
    pad = L.ZeroPadding2D(name="z", padding=(1, 2, 3, 4))
    assert pad.output_shape((10, 10, 3)) == (13, 17, 3)
    assert L.Dropout(name="d", rate=0.5).output_shape((4096,)) == (4096,)
    assert L.Activation(name="a", function="leaky_relu").alpha == 0.3  # Keras' default slope
    assert L.Activation(name="a", function="elu").alpha == 1.0
    assert L.Activation(name="a", function="relu").alpha is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: L.Conv2D(name="c", filters=0, kernel_size=(3, 3)), "`filters` must be a positive integer"),
        (lambda: L.Conv2D(name="c", filters=1, kernel_size=(3, 3), padding="full"), "Received: padding='full'"),
        (lambda: L.Conv2D(name="c", filters=1, kernel_size=(3, 3), activation="swoosh"), "Received: activation=swoosh"),
        (lambda: L.Activation(name="a", function="swoosh"), "Allowed values are: linear, relu, relu6"),
        (lambda: L.Dropout(name="d", rate=1.5), "rate"),
        (lambda: L.MaxPooling2D(name="p", pool_size=(2, 2), padding="full"), "Allowed values are: valid, same"),
    ],
)
def test_bad_layer_arguments(make, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        make()


def test_conv_needs_a_volume() -> None:
    with pytest.raises(ShapeError, match=r"layer 'c' \(Conv2D\) needs a 3-D input"):
        L.Conv2D(name="c", filters=1, kernel_size=(3, 3)).output_shape((100,))


def test_model_shapes_and_weight_keys() -> None:
    model = L.Model(
        input_shape=(32, 32, 1),
        layers=(
            L.Conv2D(name="c1", filters=6, kernel_size=(5, 5)),
            L.AveragePooling2D(name="s2"),
            L.Flatten(name="f"),
            L.Dense(name="out", units=10),
        ),
    )
    assert [out for _, _, out in model.shapes()] == [(28, 28, 6), (14, 14, 6), (1176,), (10,)]
    assert model.output_shape() == (10,)
    assert model.param_shapes() == {
        "c1.kernel": (5, 5, 1, 6), "c1.bias": (6,), "out.kernel": (1176, 10), "out.bias": (10,),
    }
    assert model.count_params() == 156 + 11_770


def test_model_refuses_duplicate_names_and_bad_input() -> None:
    relu = L.Activation(name="a", function="relu")
    with pytest.raises(ModelError, match="two layers are named 'a'"):
        L.Model(input_shape=(4, 4, 1), layers=(relu, relu))
    with pytest.raises(ModelError, match="input shape"):
        L.Model(input_shape=(4, 4), layers=())


# ---- optional cross-check against PyTorch's layers (shapes and parameter counts) -------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(4, 40), k=st.integers(1, 5), s=st.integers(1, 3), p=st.integers(0, 2),
    d=st.integers(1, 2), depth=st.integers(1, 4), filters=st.integers(1, 5),
)
def test_against_torch_conv2d(n: int, k: int, s: int, p: int, d: int, depth: int, filters: int) -> None:
    torch = pytest.importorskip("torch")
    k_eff = (k - 1) * d + 1
    if n + 2 * p < k_eff or (n + 2 * p - k_eff) % s:
        return  # torch floors; convcli refuses (tested above)
    layer = torch.nn.Conv2d(depth, filters, k, stride=s, padding=p, dilation=d, device="meta")
    out = layer(torch.empty(1, depth, n, n, device="meta"))
    conv = L.Conv2D(name="c", filters=filters, kernel_size=(k, k), strides=(s, s), padding=(p, p, p, p), dilation=(d, d))
    oh, ow, of = conv.output_shape((n, n, depth))
    assert (1, of, oh, ow) == tuple(out.shape)
    assert conv.params((n, n, depth)) == sum(math.prod(t.shape) for t in layer.parameters())
