"""The backward of every layer type that was not trainable before, in float64, and training
through them end to end.

For each layer: its float64 forward is first checked against a naive oracle of
tests/oracles.py (or a numpy expression of its definition), so the derivative is taken of the
right computation; then ``sum(forward(...) * R)`` for a fixed random R is differentiated by
central differences (step 1e-6), entry by entry, with respect to every input and every
trainable parameter, and compared with what the layer's ``backward`` returns for the output
gradient R. Shapes are seeded, odd-sized, with strides, same/valid padding and dilation
where the layer has them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from convcli import layers as L
from convcli import train
from convcli.errors import ModelError
from convcli.layers.base import Context
from convcli.spec import parse_arrow
from tests import oracles
from tests.test_grad import assert_gradient, numeric_gradient

Oracle = Callable[[Mapping[str, np.ndarray], Sequence[np.ndarray]], np.ndarray]


def check_layer(layer: L.Layer, input_shapes: Sequence[tuple[int, ...]], oracle: Oracle, *, seed: int,
                batch: int = 2, weights: dict[str, np.ndarray] | None = None, rtol: float = 1e-6) -> None:
    """The layer's float64 forward equals ``oracle``; its backward equals central differences
    of that forward for every input and every trainable parameter."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((batch, *shape)) for shape in input_shapes]
    if weights is None:
        weights = {name: rng.standard_normal(shape) for name, shape in layer.param_shapes(*input_shapes).items()}
    ctx = Context()
    out, saved = layer.forward_train(weights, xs, ctx)
    assert out.dtype == np.float64, "a float64 batch must stay float64"
    assert out.shape == (batch, *layer.output_shape(*input_shapes))
    np.testing.assert_allclose(out, oracle(weights, xs), rtol=1e-10, atol=1e-10)
    r = rng.standard_normal(out.shape)
    result = layer.backward(weights, xs, out, saved, r.copy())

    def scalar() -> float:
        return float(np.sum(layer.forward_train(weights, xs, ctx)[0] * r))

    frozen = set(layer.frozen_params())
    assert set(result.params) == {p for p in layer.param_shapes(*input_shapes) if p not in frozen}
    for name, analytic in result.params.items():
        assert analytic.dtype == np.float64, name
        assert_gradient(analytic, numeric_gradient(scalar, weights[name]), rtol)
    assert len(result.inputs) == len(xs)
    for x, analytic in zip(xs, result.inputs):
        assert_gradient(analytic, numeric_gradient(scalar, x), rtol)


# --------------------------------------------------------------------------- convolutions

DEPTHWISE_CASES = [
    # h, w, c, kernel, strides, padding, dilation, multiplier, use_bias, activation
    (7, 6, 3, (3, 3), (1, 1), "valid", (1, 1), 1, True, None),
    (7, 5, 2, (3, 3), (2, 2), "same", (1, 1), 2, True, None),
    (9, 8, 2, (3, 2), (1, 1), "same", (2, 2), 1, False, "tanh"),
    (8, 9, 3, (2, 3), (2, 1), "valid", (1, 2), 3, True, "silu"),
    (6, 7, 2, (3, 3), (1, 1), (1, 0, 2, 1), (1, 1), 1, True, None),
]


@pytest.mark.parametrize("case", DEPTHWISE_CASES)
def test_depthwise_conv2d_backward(case) -> None:
    h, w, c, kernel, strides, padding, dilation, m, use_bias, activation = case
    layer = L.DepthwiseConv2D(name="dw", kernel_size=kernel, strides=strides, padding=padding, dilation=dilation,
                              depth_multiplier=m, use_bias=use_bias, activation=activation)
    pads = oracles.resolved_pads(h, w, *kernel, strides, padding, dilation)

    def oracle(wt: Mapping[str, np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
        z = oracles.depthwise_naive(xs[0], wt["depthwise_kernel"], wt.get("bias"), strides, pads, dilation)
        return oracles.activation_oracles()[activation](z) if activation else z

    check_layer(layer, [(h, w, c)], oracle, seed=sum(map(ord, str(case))) % 1000)


SEPARABLE_CASES = [
    # h, w, c, filters, kernel, strides, padding, dilation, multiplier, use_bias
    (7, 6, 3, 4, (3, 3), (1, 1), "valid", (1, 1), 1, True),
    (7, 7, 2, 3, (3, 3), (2, 2), "same", (1, 1), 2, True),
    (9, 8, 2, 2, (3, 3), (1, 1), "same", (2, 1), 1, False),
    (6, 9, 3, 5, (2, 3), (1, 2), "valid", (1, 1), 1, True),
]


@pytest.mark.parametrize("case", SEPARABLE_CASES)
def test_separable_conv2d_backward(case) -> None:
    h, w, c, k, kernel, strides, padding, dilation, m, use_bias = case
    layer = L.SeparableConv2D(name="sep", filters=k, kernel_size=kernel, strides=strides, padding=padding,
                              dilation=dilation, depth_multiplier=m, use_bias=use_bias)
    pads = oracles.resolved_pads(h, w, *kernel, strides, padding, dilation)

    def oracle(wt: Mapping[str, np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
        middle = oracles.depthwise_naive(xs[0], wt["depthwise_kernel"], None, strides, pads, dilation)
        return oracles.conv2d_naive(middle, wt["pointwise_kernel"], wt.get("bias"))

    check_layer(layer, [(h, w, c)], oracle, seed=len(str(case)) + k)


GROUPED_CASES = [
    # h, w, c, filters, groups, kernel, strides, padding, dilation
    (6, 7, 4, 6, 2, (3, 3), (1, 1), "valid", (1, 1)),
    (7, 7, 6, 6, 3, (3, 3), (2, 2), "same", (1, 1)),
    (8, 7, 4, 4, 2, (3, 2), (1, 1), "same", (2, 1)),
    (7, 6, 3, 6, 3, (3, 3), (1, 1), "same", (1, 1)),  # one channel per group: the depthwise path
    (7, 8, 2, 2, 2, (3, 3), (2, 1), "valid", (1, 2)),
]


@pytest.mark.parametrize("case", GROUPED_CASES)
def test_grouped_conv2d_backward(case) -> None:
    h, w, c, k, groups, kernel, strides, padding, dilation = case
    layer = L.Conv2D(name="conv", filters=k, groups=groups, kernel_size=kernel, strides=strides,
                     padding=padding, dilation=dilation)
    pads = oracles.resolved_pads(h, w, *kernel, strides, padding, dilation)

    def oracle(wt: Mapping[str, np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
        return oracles.conv2d_naive(xs[0], wt["kernel"], wt["bias"], strides, pads, dilation, groups=groups)

    check_layer(layer, [(h, w, c)], oracle, seed=groups * 31 + h)


def test_grouped_conv2d_backward_skips_the_input_gradient_of_a_first_layer() -> None:
    layer = L.Conv2D(name="conv", filters=4, groups=2, kernel_size=(3, 3))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 5, 5, 4))
    weights = {"kernel": rng.standard_normal((3, 3, 2, 4)), "bias": np.zeros(4)}
    out, saved = layer.forward_train(weights, [x], Context())
    result = layer.backward(weights, [x], out, saved, np.ones_like(out), need_input=False)
    assert result.inputs == [None]
    # with a gradient of ones, the bias gradient counts the output positions
    np.testing.assert_array_equal(result.params["bias"], np.full(4, 9.0))


TRANSPOSE_CASES = [
    # h, w, c, filters, kernel, strides, padding, output_padding, dilation
    (3, 4, 2, 3, (3, 3), (1, 1), "valid", None, (1, 1)),
    (3, 3, 2, 2, (3, 3), (2, 2), "same", None, (1, 1)),
    (4, 3, 3, 2, (3, 2), (2, 3), "valid", None, (1, 1)),
    (3, 4, 2, 2, (3, 3), (2, 2), "same", (1, 0), (1, 1)),
    (4, 4, 2, 3, (2, 3), (1, 1), "same", None, (2, 2)),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_conv2d_transpose_backward(case) -> None:
    h, w, c, k, kernel, strides, padding, output_padding, dilation = case
    layer = L.Conv2DTranspose(name="deconv", filters=k, kernel_size=kernel, strides=strides, padding=padding,
                              output_padding=output_padding, dilation=dilation)

    def oracle(wt: Mapping[str, np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
        return oracles.conv2d_transpose_naive(xs[0], wt["kernel"], wt["bias"], strides, padding, output_padding,
                                              dilation)

    check_layer(layer, [(h, w, c)], oracle, seed=7 * h + w + k)


# --------------------------------------------------------------------------- moving values


@pytest.mark.parametrize("size, interpolation", [((2, 2), "nearest"), ((3, 2), "nearest"),
                                                 ((2, 2), "bilinear"), ((2, 3), "bilinear")])
def test_upsampling2d_backward(size, interpolation) -> None:
    layer = L.UpSampling2D(name="up", size=size, interpolation=interpolation)
    naive = oracles.upsample_nearest_naive if interpolation == "nearest" else oracles.upsample_bilinear_naive
    check_layer(layer, [(3, 5, 2)], lambda wt, xs: naive(xs[0], size), seed=size[0] * 10 + size[1])


@pytest.mark.parametrize("cropping", [(1, 1, 1, 1), (0, 2, 3, 0), (2, 1, 0, 1)])
def test_cropping2d_backward(cropping) -> None:
    top, bottom, left, right = cropping
    layer = L.Cropping2D(name="crop", cropping=cropping)
    check_layer(layer, [(5, 6, 2)], lambda wt, xs: xs[0][:, top : 5 - bottom, left : 6 - right], seed=sum(cropping))


@pytest.mark.parametrize("target, shape", [((15, 4), (15, 4)), ((-1, 3), (20, 3)), ((60,), (60,))])
def test_reshape_backward(target, shape) -> None:
    layer = L.Reshape(name="reshape", target_shape=target)
    check_layer(layer, [(3, 5, 4)], lambda wt, xs: xs[0].reshape(len(xs[0]), *shape), seed=len(target))


@pytest.mark.parametrize("dims", [(2, 1, 3), (3, 1, 2), (1, 3, 2)])
def test_permute_backward(dims) -> None:
    layer = L.Permute(name="permute", dims=dims)
    check_layer(layer, [(3, 4, 5)], lambda wt, xs: np.transpose(xs[0], (0, *dims)), seed=dims[0])


# --------------------------------------------------------------------------- scaling and normalisation


@pytest.mark.parametrize("scale, offset", [(1 / 127.5, -1.0), ((0.5, -2.0, 3.0), (0.1, 0.2, 0.3))])
def test_rescaling_backward(scale, offset) -> None:
    layer = L.Rescaling(name="rescale", scale=scale, offset=offset)
    check_layer(layer, [(3, 4, 3)], lambda wt, xs: xs[0] * np.asarray(scale) + np.asarray(offset), seed=3)


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("constants", [True, False])
def test_normalization_backward(invert, constants) -> None:
    mean, variance = (0.5, -1.0, 2.0), (4.0, 0.25, 9.0)
    if constants:
        layer = L.Normalization(name="norm", mean=mean, variance=variance, invert=invert)
        weights: dict[str, np.ndarray] = {}
    else:  # Keras stores adapted statistics as weights; they are not trained
        layer = L.Normalization(name="norm", invert=invert)
        weights = {"mean": np.array(mean), "variance": np.array(variance), "count": np.array(10.0)}
    std = np.sqrt(variance)

    def oracle(wt: Mapping[str, np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
        return xs[0] * std + np.array(mean) if invert else (xs[0] - np.array(mean)) / std

    check_layer(layer, [(3, 4, 3)], oracle, seed=11, weights=weights)
    assert layer.frozen_params() == (() if constants else ("mean", "variance", "count"))


@pytest.mark.parametrize("center, scale, epsilon", [(True, True, 1e-3), (False, True, 1e-6), (True, False, 1e-3),
                                                    (False, False, 1e-3)])
def test_layer_normalization_backward(center, scale, epsilon) -> None:
    layer = L.LayerNormalization(name="ln", center=center, scale=scale, epsilon=epsilon)

    def oracle(wt: Mapping[str, np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
        return oracles.layer_norm_naive(xs[0], wt.get("gamma"), wt.get("beta"), epsilon, [-1])

    check_layer(layer, [(3, 5, 4)], oracle, seed=int(center) + 2 * int(scale))
    check_layer(layer, [(7,)], oracle, seed=9)  # after a flatten: one vector per sample


def test_layer_scale_backward() -> None:
    layer = L.LayerScale(name="ls", init_values=1e-6)
    check_layer(layer, [(3, 4, 5)], lambda wt, xs: xs[0] * wt["gamma"], seed=12)
    check_layer(layer, [(6,)], lambda wt, xs: xs[0] * wt["gamma"], seed=13)


# --------------------------------------------------------------------------- merges


MERGE_CONSTANT_CASES = [
    # layer class, constant, constant index, numpy oracle
    (L.Add, 3.0, 1, lambda x: x + 3.0),  # MobileNetV3's hard-swish: x + 3.0
    (L.Multiply, 1 / 6, 1, lambda x: x * (1 / 6)),
    (L.Subtract, 2.0, 0, lambda x: 2.0 - x),
    (L.Subtract, 0.5, 1, lambda x: x - 0.5),
    (L.Average, 1.0, 1, lambda x: (x + 1.0) / 2),
    (L.Maximum, 0.25, 1, lambda x: np.maximum(x, 0.25)),
    (L.Minimum, -0.25, 0, lambda x: np.minimum(-0.25, x)),
]


@pytest.mark.parametrize("cls, constant, index, expected", MERGE_CONSTANT_CASES)
def test_merge_with_a_constant_backward(cls, constant, index, expected) -> None:
    layer = cls(name="merge", constant=constant, constant_index=index)
    check_layer(layer, [(3, 4, 2)], lambda wt, xs: expected(xs[0]), seed=int(constant * 100) % 97)


def test_merge_of_two_inputs_and_a_constant_backward() -> None:
    layer = L.Multiply(name="gate", constant=2.0, constant_index=2)
    check_layer(layer, [(3, 4, 2), (1, 1, 2)], lambda wt, xs: xs[0] * xs[1] * 2.0, seed=21)


@pytest.mark.parametrize("scale", [0.17, 1.0, -2.5])
def test_custom_scale_layer_backward(scale) -> None:
    layer = L.CustomScaleLayer(name="scaled", scale=scale)
    check_layer(layer, [(3, 4, 2), (3, 4, 2)], lambda wt, xs: xs[0] + scale * xs[1], seed=int(abs(scale) * 10))


def test_every_layer_type_has_a_backward() -> None:
    assert [cls.__name__ for cls in L.REGISTRY.types if not cls.has_backward] == []


# --------------------------------------------------------------------------- training end to end

MOBILE = (
    "INPUT(8,8,3) => CONV(8,3,stride=2,pad=same) => BN => RELU6 => "
    "RESIDUAL(DWCONV(3,pad=same,activation=relu6) => CONV(8,1) => BN) => "
    "SEPCONV(12,3,pad=same,activation=relu) => UP(2) => LN => "
    "CONV(12,3,stride=2,pad=same,groups=3) => UP(2,interpolation=bilinear) => CROP(1) => "
    "DECONV(6,3,stride=2,pad=same) => LAYERSCALE(0.5) => RESCALE(2.0, 0.1) => PERMUTE([2,1,3]) => "
    "GAP => RESHAPE([2,3]) => FLATTEN => FC(3) => SOFTMAX"
)


def test_mobile_like_graph_learns_with_full_batch_sgd() -> None:
    model = parse_arrow(MOBILE)
    types = {node.layer.type for node in model.nodes()}
    assert {"DepthwiseConv2D", "SeparableConv2D", "Add", "UpSampling2D", "LayerNormalization", "Conv2DTranspose",
            "Cropping2D", "LayerScale", "Rescaling", "Permute", "Reshape"} <= types
    from convcli import forward, optim

    params = forward.init_params(model, seed=0)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((12, 8, 8, 3)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(12) % 3]
    losses = []
    optimizer = optim.SGD(learning_rate=0.2)
    keys = train.trainable_keys(model)
    for _ in range(8):
        loss, grads = train.loss_and_gradients(model, params, x, y, "categorical-crossentropy")
        losses.append(loss)
        optimizer.step({key: params[key] for key in keys}, grads)
    assert losses[0] == pytest.approx(math.log(3), abs=0.3)  # near chance at the start
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.75 * losses[0], losses


def test_mobile_like_graph_passes_check_gradients(cli) -> None:
    checks = train.check_gradients(parse_arrow(MOBILE), seed=2)
    assert len(checks) == len(parse_arrow(MOBILE).nodes())
    assert all(c.checked > 0 for c in checks)
    assert max(c.worst for c in checks) < 1e-6, [(c.layer, c.worst) for c in checks]
    result = cli("train", "--check-gradients", MOBILE, "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["layers"]
    assert [r["layer"] for r in rows] == [c.layer for c in checks]
    assert max(r["worst_relative_error"] for r in rows) < 1e-6


def test_check_gradients_runs_in_float64_and_still_finds_a_wrong_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    model = parse_arrow("INPUT(6,6,2) => DWCONV(3,pad=same) => LN => GAP => FC(2)")
    worst = {c.layer: c.worst for c in train.check_gradients(model, seed=4)}
    # float64 central differences: far below float32's 1e-3 rounding floor
    assert max(worst.values()) < 1e-7, worst
    right = L.LayerNormalization.backward

    def halved(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = right(self, *args, **kwargs)
        return type(result)([g / 2 for g in result.inputs], result.params)

    monkeypatch.setattr(L.LayerNormalization, "backward", halved)
    worst = {c.layer: c.worst for c in train.check_gradients(model, seed=4)}
    assert worst["ln1"] > 0.4 and worst["dwconv1"] < 1e-7


def test_check_gradients_is_not_fooled_by_ties_at_a_kink() -> None:
    # Max pooling after a ReLU sees windows of zeros: a tie, where the two one-sided slopes
    # differ (1 up, 0 down) and the backward rightly sends the gradient to one of them.
    model = parse_arrow("INPUT(6,6,1) => CONV(4,3,pad=same) => RELU => MAXPOOL(2)")
    params = {"conv1.kernel": np.full((3, 3, 1, 4), -0.3, np.float32), "conv1.bias": np.zeros(4, np.float32)}
    x = np.random.default_rng([0, 3]).standard_normal((2, 6, 6, 1))  # the batch check_gradients draws
    relu = np.maximum(oracles.conv2d_naive(x, params["conv1.kernel"], None, pads=(1, 1, 1, 1)), 0)
    tiles = relu.reshape(2, 3, 2, 3, 2, 4)
    assert np.sum(tiles.max(axis=(2, 4)) == 0) >= 3  # whole windows of zeros: ties at the kink
    checks = train.check_gradients(model, params, seed=0, entries=10_000)  # every entry
    assert {c.layer: c.checked for c in checks}["pool1"] == 2 * 6 * 6 * 4
    assert all(c.worst < 1e-7 for c in checks), checks


def test_check_gradients_measures_again_when_a_kink_lies_within_the_step() -> None:
    # One sample's pre-activation just above 0, the other's just below: moving the kernel
    # weight by the check's step crosses the ReLU's kink on both sides, so every quotient
    # of that step is off; the entry is measured again with a step 1000 times smaller.
    x = np.random.default_rng([0, 3]).standard_normal((2, 1))  # the batch check_gradients draws
    kernel = 2e-5 / (x[0, 0] - x[1, 0])
    bias = 1e-5 - x[0, 0] * kernel
    z = x[:, 0] * kernel + bias
    assert z[0] > 0 > z[1] and np.all(np.abs(z) < 2 * 1e-3 * np.abs(x[:, 0]))
    params = {"fc1.kernel": np.array([[kernel]]), "fc1.bias": np.array([bias])}
    model = parse_arrow("INPUT(1) => FC(1,activation=relu)")
    assert train.check_gradients(model, params, seed=0)[0].worst < 1e-9
    monkeypatch = pytest.MonkeyPatch()
    with monkeypatch.context() as patched:
        patched.setattr(train, "KINK_RETRY", math.inf)  # no second measurement: the kink shows
        assert train.check_gradients(model, params, seed=0)[0].worst > 1e-3


def test_a_layer_without_a_backward_is_still_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L.Permute, "has_backward", False)
    with pytest.raises(ModelError, match=r"'permute1' \(Permute\)"):
        train.check_trainable(parse_arrow("INPUT(2,3,4) => PERMUTE([2,1,3])"))


def test_the_cli_still_refuses_a_layer_without_a_backward(cli, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L.UpSampling2D, "has_backward", False)
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4, 4, 1), np.float32), y=np.array([0, 1]))
    result = cli("train", "INPUT(4,4,1) => UPSAMPLE(2) => FLATTEN => FC(2)", str(tmp_path / "d.npz"), "--loss",
                 "mse", "--epochs", "1", "--batch-size", "2", "--lr", "0.1", "--optimizer", "sgd",
                 "--save-weights", str(tmp_path / "w.npz"))
    assert result.exit_code == 2 and "'up1' (UpSampling2D)" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert not (tmp_path / "w.npz").exists()


def test_the_new_backward_kernels_refuse_bad_shapes() -> None:
    from convcli import grad
    from convcli.errors import ShapeError

    x, g = np.ones((1, 4, 4, 4)), np.ones((1, 2, 2, 4))
    with pytest.raises(ShapeError, match="positive divisor of the input depth 4. Received: groups=3"):
        grad.grouped_conv2d_backward(x, np.ones((3, 3, 1, 3)), g, groups=3)
    with pytest.raises(ShapeError, match=r"kernel must be \(F_h, F_w, 2, K\)"):
        grad.grouped_conv2d_backward(x, np.ones((3, 3, 4, 4)), g, groups=2)
    with pytest.raises(ShapeError, match=r"`gamma` must have shape \(4,\)"):
        grad.layer_scale_backward(x, np.ones(3), x)
    with pytest.raises(ShapeError, match="output gradient must have the forward's output shape"):
        grad.layer_scale_backward(x, np.ones(4), g)


def test_convcli_train_trains_the_mobile_like_graph(tmp_path) -> None:
    from tests.conftest import run_convcli

    rng = np.random.default_rng(9)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((12, 8, 8, 3)).astype(np.float32), y=np.arange(12) % 3)
    proc = run_convcli("train", MOBILE, str(tmp_path / "d.npz"), "--loss", "categorical-crossentropy", "--epochs", "5",
                       "--batch-size", "12", "--lr", "0.2", "--optimizer", "sgd", "--no-shuffle",
                       "--save-weights", str(tmp_path / "w.npz"), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    losses = [epoch["loss"] for epoch in json.loads(proc.stdout)["history"]]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    with np.load(tmp_path / "w.npz") as trained:
        assert {"dwconv1.depthwise_kernel", "sepconv1.pointwise_kernel", "deconv1.kernel", "layerscale1.gamma",
                "ln1.gamma", "conv3.kernel"} <= set(trained)


# --------------------------------------------------------------------------- precision


def test_a_float64_batch_stays_float64_and_float32_stays_the_default() -> None:
    from convcli import ops

    rng = np.random.default_rng(30)
    x = rng.standard_normal((2, 6, 5, 3))
    kernel = rng.standard_normal((3, 3, 3, 4))
    bias = rng.standard_normal(4)
    exact = oracles.conv2d_naive(x, kernel.astype(np.float32), bias, (2, 1), (1, 1, 1, 1))
    out = ops.conv2d(x, kernel.astype(np.float32), bias, strides=(2, 1), padding=1)
    assert out.dtype == np.float64  # the weights follow the batch's precision
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-12 * np.abs(exact).max() * 10)
    single = ops.conv2d(x.astype(np.float32), kernel, bias, strides=(2, 1), padding=1)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, exact, rtol=1e-5, atol=1e-5)
    for name in ("gelu", "silu", "hard_swish", "softplus", "log_softmax", "sparsemax", "tanh_shrink", "elu"):
        assert ops.activate(x, name).dtype == np.float64, name
        assert ops.activate(x.astype(np.float32), name).dtype == np.float32, name
    z = np.linspace(-3, 3, 13)
    np.testing.assert_allclose(ops.activate(z, "hard_sigmoid"), np.clip(z / 6 + 0.5, 0, 1), rtol=0, atol=1e-15)
