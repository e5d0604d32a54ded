"""convcli.forward: parameter initialisation, weights files and the forward pass of whole models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from convcli import forward, threads
from convcli import layers as L
from convcli.errors import InputError, ShapeError, WeightsError
from convcli.spec import parse_arrow
from tests.test_ops import conv2d_naive, keras_same, local_naive, pool_naive

LENET = "INPUT(12,12,1) => CONV(4,3,pad=same) => RELU => POOL(2) => CONV(6,3) => TANH => AVGPOOL(2) => FC(8) => ELU => DO(0.5) => FC(5) => SOFTMAX"


def random_params(model: L.Model, seed: int) -> dict[str, np.ndarray]:
    """Non-trivial values for every parameter (biases and BN statistics included)."""
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in model.param_shapes().items():
        values = rng.standard_normal(shape).astype(np.float32) * np.float32(0.5)
        params[key] = np.abs(values) + np.float32(0.5) if key.endswith("variance") else values
    return params


# --------------------------------------------------------------------------- init_params


def test_init_params_shapes_and_he_scale() -> None:
    model = parse_arrow("INPUT(16,16,64) => CONV(128,3) => BN => LOCAL(4,3) => FC(300)")
    params = forward.init_params(model, seed=3)
    assert {k: v.shape for k, v in params.items()} == model.param_shapes()
    assert all(v.dtype == np.float32 for v in params.values())
    # He normal: std sqrt(2 / fan_in), fan_in = F*F*D for conv (576) and local (3*3*128), in for dense
    assert params["conv1.kernel"].std() == pytest.approx(math.sqrt(2 / 576), rel=0.02)
    assert params["conv1.kernel"].mean() == pytest.approx(0, abs=0.002)
    assert params["local1.kernel"].std() == pytest.approx(math.sqrt(2 / 1152), rel=0.02)
    assert params["fc1.kernel"].std() == pytest.approx(math.sqrt(2 / (12 * 12 * 4)), rel=0.02)
    assert not params["conv1.bias"].any() and not params["local1.bias"].any()
    assert (params["bn1.gamma"] == 1).all() and (params["bn1.moving_variance"] == 1).all()
    assert not params["bn1.beta"].any() and not params["bn1.moving_mean"].any()


def test_init_params_is_reproducible_per_seed_and_per_layer() -> None:
    model = parse_arrow("INPUT(8,8,3) => CONV(4,3) => FC(5)")
    a, b, c = (forward.init_params(model, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.kernel"], c["conv1.kernel"])
    # another layer in front of the FC leaves conv1's weights as they were
    bigger = parse_arrow("INPUT(8,8,3) => CONV(4,3) => RELU => CONV(2,3) => FC(5)")
    assert np.array_equal(forward.init_params(bigger, seed=1)["conv1.kernel"], a["conv1.kernel"])


# --------------------------------------------------------------------------- weights files


def test_save_and_load_weights_round_trip(tmp_path: Path) -> None:
    model = parse_arrow(LENET)
    params = random_params(model, 0)
    path = tmp_path / "w.npz"
    forward.save_weights(params, path)
    loaded = forward.load_weights(model, path)
    assert loaded.keys() == params.keys()
    assert all(np.array_equal(loaded[k], params[k]) and loaded[k].dtype == np.float32 for k in params)
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temporary file left behind
    forward.save_weights({"conv1.kernel": np.zeros((1,), np.float32)}, path)  # replaced whole
    assert list(np.load(path).files) == ["conv1.kernel"]


def test_save_weights_into_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="folder .*nope does not exist"):
        forward.save_weights({}, tmp_path / "nope" / "w.npz")


def _write(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_load_weights_errors_name_key_and_shapes(tmp_path: Path) -> None:
    model = parse_arrow("INPUT(8,8,1) => CONV(4,3) => FC(2)")
    good = {"conv1.kernel": np.zeros((3, 3, 1, 4)), "conv1.bias": np.zeros(4),
            "fc1.kernel": np.zeros((144, 2)), "fc1.bias": np.zeros(2)}
    missing = dict(good)
    del missing["fc1.bias"]
    with pytest.raises(WeightsError, match=r"missing array 'fc1\.bias' \(expected shape \(2\)\)"):
        forward.load_weights(model, _write(tmp_path / "a.npz", **missing))
    with pytest.raises(WeightsError, match=r"array 'conv1\.kernel' has shape \(3, 3, 3, 4\), expected \(3, 3, 1, 4\)"):
        forward.load_weights(model, _write(tmp_path / "b.npz", **{**good, "conv1.kernel": np.zeros((3, 3, 3, 4))}))
    with pytest.raises(WeightsError, match=r"unexpected array 'conv9\.kernel' \(shape \(1\)\)"):
        forward.load_weights(model, _write(tmp_path / "c.npz", **good, **{"conv9.kernel": np.zeros(1)}))
    with pytest.raises(WeightsError, match="does not exist"):
        forward.load_weights(model, tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(WeightsError, match="junk.npz is not a readable .npz archive"):
        forward.load_weights(model, tmp_path / "junk.npz")
    np.savez(tmp_path / "objects.npz", **{**good, "fc1.bias": np.array([None, 1], dtype=object)})
    with pytest.raises(WeightsError, match="objects.npz: member 'fc1.bias': .*pickle"):
        forward.load_weights(model, tmp_path / "objects.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(WeightsError, match="single array, not a .npz"):
        forward.load_weights(model, tmp_path / "single.npy")
    assert forward.load_weights(model, _write(tmp_path / "ok.npz", **good))["fc1.kernel"].dtype == np.float32


# --------------------------------------------------------------------------- run


def lenet_by_hand(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """The LENET model composed from the test oracles, in float64."""
    z = np.maximum(conv2d_naive(x, p["conv1.kernel"], p["conv1.bias"], pads=(*keras_same(12, 3, 1), *keras_same(12, 3, 1))), 0)
    z = pool_naive(z, (2, 2), (2, 2), "valid", np.max)
    z = np.tanh(conv2d_naive(z, p["conv2.kernel"], p["conv2.bias"]))
    z = pool_naive(z, (2, 2), (2, 2), "valid", np.mean)
    z = z.reshape(len(z), -1) @ p["fc1.kernel"].astype(np.float64) + p["fc1.bias"]
    z = np.where(z > 0, z, np.expm1(z))
    z = z @ p["fc2.kernel"].astype(np.float64) + p["fc2.bias"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_run_matches_the_model_composed_by_hand() -> None:
    model = parse_arrow(LENET)
    params = random_params(model, 1)
    x = np.random.default_rng(2).random((3, 12, 12, 1), dtype=np.float32)
    seen: list[tuple[str, tuple[int, ...], float]] = []
    out = forward.run(model, x, params, on_layer=lambda layer, y, s: seen.append((layer.name, y.shape, s)))
    np.testing.assert_allclose(out, lenet_by_hand(x, params), rtol=1e-4, atol=1e-6)
    assert out.dtype == np.float32
    assert [(name, shape) for name, shape, _ in seen] == [
        (layer.name, (3, *shape)) for layer, _, shape in model.shapes()
    ]
    assert all(s >= 0 for _, _, s in seen)


def test_fused_pass_without_callback_gives_the_same_result() -> None:
    # without on_layer, CONV => RELU, FC => ELU, ... are fused and activations run in place
    model = parse_arrow(LENET)
    params = random_params(model, 1)
    x = np.random.default_rng(2).random((3, 12, 12, 1), dtype=np.float32)
    np.testing.assert_allclose(forward.run(model, x, params), lenet_by_hand(x, params), rtol=1e-4, atol=1e-6)
    local = parse_arrow("INPUT(6,6,2) => LOCAL(3,3) => LRELU(0.005) => FLATTEN => FC(4) => SIGMOID")
    p = random_params(local, 3)
    y = np.random.default_rng(4).standard_normal((2, 6, 6, 2)).astype(np.float32)
    z = local_naive(y, p["local1.kernel"].astype(np.float64), p["local1.bias"], (3, 3), (1, 1))
    z = np.where(z > 0, z, 0.005 * z).reshape(2, -1) @ p["fc1.kernel"].astype(np.float64) + p["fc1.bias"]
    np.testing.assert_allclose(forward.run(local, y, p), 1 / (1 + np.exp(-z)), rtol=1e-4, atol=1e-6)


def test_in_place_activations_never_touch_the_callers_input() -> None:
    x = -np.ones((2, 3, 3, 1), np.float32)
    for text in ("INPUT(3,3,1) => RELU", "INPUT(3,3,1) => FLATTEN => SIGMOID", "INPUT(3,3,1) => DO(0.5) => TANH"):
        out = forward.run(parse_arrow(text), x, {})
        assert (x == -1).all() and out.min() >= -1, text


def test_fused_activations_are_applied() -> None:
    model = parse_arrow("INPUT(6,6,2) => CONV(3,3,activation=relu) => LOCAL(2,2,activation=tanh) => FC(4,activation=softmax)")
    params = random_params(model, 4)
    x = np.random.default_rng(5).standard_normal((2, 6, 6, 2)).astype(np.float32)
    z = np.maximum(conv2d_naive(x, params["conv1.kernel"], params["conv1.bias"]), 0)
    z = np.tanh(local_naive(z, params["local1.kernel"].astype(np.float64), params["local1.bias"], (2, 2), (1, 1)))
    z = z.reshape(2, -1) @ params["fc1.kernel"].astype(np.float64) + params["fc1.bias"]
    expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(forward.run(model, x, params), expected, rtol=1e-4, atol=1e-6)


def test_fused_leaky_relu_uses_keras_slope_and_layer_keeps_its_alpha() -> None:
    fused = parse_arrow("INPUT(3) => FC(3,activation=lrelu)")
    layer = parse_arrow("INPUT(3) => FC(3) => LRELU(0.005)")
    p = {"fc1.kernel": np.eye(3, dtype=np.float32), "fc1.bias": np.zeros(3, np.float32)}
    x = np.array([[-2.0, 0.0, 4.0]], np.float32)
    np.testing.assert_allclose(forward.run(fused, x, p), [[-0.4, 0, 4]], rtol=1e-6)
    np.testing.assert_allclose(forward.run(layer, x, p), [[-0.01, 0, 4]], rtol=1e-6)


def test_run_batch_norm_gap_zero_padding_and_strided_conv() -> None:
    model = parse_arrow("INPUT(7,7,3) => ZEROPAD(1) => CONV(4,3,stride=2,bias=false) => BN => GAP")
    params = random_params(model, 6)
    x = np.random.default_rng(7).standard_normal((2, 7, 7, 3)).astype(np.float32)
    z = conv2d_naive(x, params["conv1.kernel"], None, (2, 2), (1, 1, 1, 1))
    z = (z - params["bn1.moving_mean"]) / np.sqrt(params["bn1.moving_variance"].astype(np.float64) + 1e-3)
    z = z * params["bn1.gamma"] + params["bn1.beta"]
    np.testing.assert_allclose(forward.run(model, x, params), z.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)


def test_dropout_is_identity_unless_training_with_a_seed() -> None:
    model = parse_arrow("INPUT(1000) => DO(0.25)")
    x = np.ones((4, 1000), np.float32)
    assert np.array_equal(forward.run(model, x, {}), x)
    a = forward.run(model, x, {}, train_dropout=True, seed=1)
    b = forward.run(model, x, {}, train_dropout=True, seed=1)
    c = forward.run(model, x, {}, train_dropout=True, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(float((a == 0).mean()) - 0.25) < 0.03
    np.testing.assert_allclose(a[a != 0], 1 / 0.75, rtol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_run_batches_equals_one_pass(batch_size: int) -> None:
    model = parse_arrow(LENET)
    params = random_params(model, 10)
    x = np.random.default_rng(11).random((5, 12, 12, 1), dtype=np.float32)
    done: list[int] = []
    stats = forward.layer_stats(model)
    out = forward.run_batches(model, x, params, batch_size=batch_size, stats=stats, on_batch=done.append)
    np.testing.assert_allclose(out, forward.run(model, x, params), rtol=1e-6, atol=1e-7)
    assert sum(done) == 5 and len(done) == -(-5 // batch_size)
    # statistics over all batches = statistics of the whole output of each layer
    seen: dict[str, np.ndarray] = {}
    forward.run(model, x, params, on_layer=lambda layer, y, s: seen.__setitem__(layer.name, y.copy()))
    for s in stats.values():
        whole = seen[s.layer.name]
        assert s.minimum == pytest.approx(float(whole.min()), abs=1e-6)
        assert s.maximum == pytest.approx(float(whole.max()), abs=1e-6)
        assert s.mean == pytest.approx(float(whole.astype(np.float64).mean()), rel=1e-5, abs=1e-7)
        if s.layer.name == "relu1":
            assert s.zero_fraction == pytest.approx(float((whole == 0).mean()))
        else:
            assert s.zero_fraction is None
    assert stats["conv1"].to_json()["name"] == "conv1"


def test_run_errors() -> None:
    model = parse_arrow("INPUT(8,8,1) => CONV(2,3) => FC(2)")
    params = forward.init_params(model)
    with pytest.raises(ShapeError, match=r"expects inputs of shape \(8, 8, 1\).*Received: an array of shape \(1, 8, 8, 3\)"):
        forward.run(model, np.zeros((1, 8, 8, 3), np.float32), params)
    del params["fc1.bias"]
    with pytest.raises(WeightsError, match=r"missing parameter 'fc1\.bias' for layer 'fc1' \(Dense\)"):
        forward.run(model, np.zeros((1, 8, 8, 1), np.float32), params)


def test_run_agrees_with_pytorch() -> None:
    torch = pytest.importorskip("torch")
    fn = torch.nn.functional
    # 16 wide, 3x3, stride 2, same: Keras pads 0 before and 1 after (TensorFlow's rule)
    model = parse_arrow("INPUT(16,16,3) => CONV(8,3,stride=2,pad=same) => RELU => CONV(6,3,dilation=2,pad=1) => "
                        "SIGMOID => POOL(2) => FLATTEN => FC(7) => SOFTMAX")
    params = random_params(model, 8)
    x = np.random.default_rng(9).standard_normal((4, 16, 16, 3)).astype(np.float32)
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def weight(key: str):
        return torch.from_numpy(params[key].transpose(3, 2, 0, 1).copy())

    assert keras_same(16, 3, 2) == (0, 1)
    t = fn.pad(t, (0, 1, 0, 1))  # left, right, top, bottom
    t = fn.relu(fn.conv2d(t, weight("conv1.kernel"), torch.from_numpy(params["conv1.bias"]), stride=2))
    t = torch.sigmoid(fn.conv2d(t, weight("conv2.kernel"), torch.from_numpy(params["conv2.bias"]), padding=1, dilation=2))
    t = fn.max_pool2d(t, 2)
    t = t.permute(0, 2, 3, 1).reshape(4, -1)  # channels-last flatten, as Keras
    t = torch.softmax(t @ torch.from_numpy(params["fc1.kernel"]) + torch.from_numpy(params["fc1.bias"]), dim=1)
    np.testing.assert_allclose(forward.run(model, x, params), t.numpy(), rtol=1e-4, atol=1e-6)



FUSED = (
    "INPUT(11,11,3) => CONV(8,3,pad=same) => BN => RELU => DWCONV(3,pad=same) => BN => RELU6"
    " => SEPCONV(6,3) => BN => SIGMOID => CONV(6,3,groups=2,activation=relu) => LOCAL(4,3) => RELU"
    " => BN => CONV(5,1) => BN => FLATTEN => FC(5) => BN => SOFTMAX"
)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_stats_of_the_fused_pass_equal_those_of_each_layer_computed_alone(
    batch_size: int, split: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stats`` gathered on the fused pass (batch norms folded, activations applied per block,
    statistics of each block) equal numpy's min/max/mean of every layer's own output, and the
    fused pass returns what the layer-by-layer pass returns; also when each batch runs as two
    halves on two threads."""
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setattr(forward, "SPLIT_MACS", 0 if split else 10**18)
    halves = forward._run_halves
    calls: list[int] = []
    monkeypatch.setattr(forward, "_run_halves", lambda *args: calls.append(len(args[1])) or halves(*args))
    model = parse_arrow(FUSED)
    params = random_params(model, 3)
    params["bn2.gamma"][1] = 0  # a zero scale: this batch norm cannot be undone, so it is not folded
    x = np.random.default_rng(4).random((7, 11, 11, 3), dtype=np.float32)
    stats = forward.layer_stats(model)
    out = forward.run_batches(model, x, params, batch_size=batch_size, stats=stats)
    seen: dict[str, np.ndarray] = {}
    expected = forward.run(model, x, params, on_layer=lambda layer, y, s: seen.__setitem__(layer.name, y.copy()))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert list(stats) == [layer.name for layer in model.layers]
    for s in stats.values():
        whole = seen[s.layer.name].astype(np.float64)
        scale = float(np.abs(whole).max())
        assert s.minimum == pytest.approx(whole.min(), abs=2e-5 * scale), s.layer.name
        assert s.maximum == pytest.approx(whole.max(), abs=2e-5 * scale), s.layer.name
        assert s.mean == pytest.approx(whole.mean(), abs=2e-5 * scale), s.layer.name
        assert s.count == whole.size
        if s.relu:
            assert s.zero_fraction == pytest.approx(float((whole == 0).mean())), s.layer.name
    folded = {s.layer.name: s.folded_into for s in stats.values() if s.folded_into}
    assert folded == {"bn1": "conv1", "bn3": "sepconv1", "bn5": "conv3", "bn6": "fc1"}  # bn2: zero scale; bn4: after an activation
    assert stats["bn1"].seconds == 0 and stats["bn1"].to_json()["folded_into"] == "conv1"
    assert stats["conv1"].seconds > 0 and stats["relu1"].seconds > 0
    assert "folded_into" not in stats["conv1"].to_json()
    assert bool(calls) == (split and batch_size > 1)
