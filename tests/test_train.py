"""Training: the backward walk of the layer graph, the mini-batch loop, the digits demo.

Reference values are computed here by hand (softmax regression's gradient written out with
numpy) or by central finite differences of the loss, never read back from the trainer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convcli import forward, losses, optim, threads, train
from convcli.errors import ModelError
from convcli.spec import parse_arrow

ROOT = Path(__file__).resolve().parent.parent


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_one_full_batch_sgd_epoch_is_w_minus_lr_times_the_hand_gradient() -> None:
    model = parse_arrow("INPUT(3) => FC(4) => SOFTMAX")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    kernel = rng.standard_normal((3, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    params = {"fc1.kernel": kernel.copy(), "fc1.bias": bias.copy()}
    # by hand: d(mean cross-entropy)/dz = (softmax(z) - onehot) / N
    onehot = np.eye(4)[labels]
    p = _softmax(x.astype(np.float64) @ kernel + bias)
    dz = (p - onehot) / len(x)
    lr = 0.1
    expected_kernel = kernel - lr * (x.T.astype(np.float64) @ dz)
    expected_bias = bias - lr * dz.sum(axis=0)
    y = train.encode_targets(labels, (4,))
    history = train.fit(model, params, x, y, loss="categorical-crossentropy", epochs=1, batch_size=5,
                        optimizer=optim.make_optimizer("sgd", lr), shuffle=False)
    np.testing.assert_allclose(params["fc1.kernel"], expected_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["fc1.bias"], expected_bias, rtol=1e-5, atol=1e-6)
    hand_loss = float(np.mean(-np.log(p[np.arange(5), labels])))
    assert history[0].loss == pytest.approx(hand_loss, rel=1e-5)
    assert history[0].accuracy == pytest.approx(np.mean(p.argmax(1) == labels))


def test_mse_gradient_of_a_two_layer_dense_model_by_hand() -> None:
    model = parse_arrow("INPUT(2) => FC(2, activation=tanh) => FC(1)")
    w1 = np.array([[0.5, -1.0], [0.25, 2.0]], np.float32)
    b1 = np.array([0.1, -0.2], np.float32)
    w2 = np.array([[1.5], [-0.5]], np.float32)
    b2 = np.array([0.3], np.float32)
    params = {"fc1.kernel": w1, "fc1.bias": b1, "fc2.kernel": w2, "fc2.bias": b2}
    x = np.array([[1.0, 2.0], [-1.0, 0.5]], np.float32)
    y = np.array([[1.0], [0.0]], np.float32)
    h = np.tanh(x.astype(np.float64) @ w1 + b1)
    out = h @ w2 + b2
    dout = 2 * (out - y) / 2  # mean over 2 samples of (p - y)^2
    dw2 = h.T @ dout
    dh = dout @ w2.T * (1 - h**2)
    dw1 = x.T @ dh
    value, grads = train.loss_and_gradients(model, params, x, y, "mse")
    assert value == pytest.approx(float(np.mean((out - y) ** 2)), rel=1e-6)
    np.testing.assert_allclose(grads["fc2.kernel"], dw2, rtol=1e-5)
    np.testing.assert_allclose(grads["fc2.bias"], dout.sum(0), rtol=1e-5)
    np.testing.assert_allclose(grads["fc1.kernel"], dw1, rtol=1e-5)
    np.testing.assert_allclose(grads["fc1.bias"], dh.sum(0), rtol=1e-5)


@pytest.mark.parametrize(
    "spec, loss",
    [
        ("INPUT(6,6,2) => CONV(3,3,pad=same,activation=tanh) => AVGPOOL(2) => FLATTEN => FC(3) => SOFTMAX",
         "categorical-crossentropy"),
        ("INPUT(7,7,2) => CONV(3,3,stride=2) => BN => ACT(tanh) => GAP => FC(2) => SIGMOID",
         "binary-crossentropy"),
        ("INPUT(5,5,1) => LOCAL(2,2) => ACT(softplus) => FLATTEN => FC(2)", "mse"),
        ("INPUT(6,6,2) => CONV(4,3,pad=same,activation=tanh) => CONCAT(CONV(2,1) | AVGPOOL(3,stride=1,pad=same) "
         "=> CONV(3,1)) => ADD(CONV(5,1,activation=tanh) | ACT(sigmoid)) => GAP => FC(3) => SOFTMAX",
         "categorical-crossentropy"),
    ],
)
def test_gradients_match_finite_differences_of_the_loss(spec: str, loss: str) -> None:
    """Central differences of the batch loss (float32 forward: a step of 1e-2 and a loose
    tolerance), for every parameter of conv, batch norm, pooling, locally connected, dense."""
    model = parse_arrow(spec)
    params = forward.init_params(model, seed=3)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, *model.input_shape)).astype(np.float32)
    out_shape = model.output_shape()
    y = rng.random((4, *out_shape)).astype(np.float32)
    if loss == "categorical-crossentropy":
        y = np.eye(out_shape[-1], dtype=np.float32)[rng.integers(0, out_shape[-1], 4)]
    _, grads = train.loss_and_gradients(model, params, x, y, loss)

    def batch_loss(p: dict[str, np.ndarray]) -> float:
        tape = train.forward_train(model, p, x)
        return losses.compute(loss, y, tape.output)

    step = 1e-2
    for key in train.trainable_keys(model):
        flat = params[key].reshape(-1)
        picks = rng.choice(flat.size, size=min(flat.size, 6), replace=False)
        for i in picks:
            saved = flat[i]
            flat[i] = saved + step
            up = batch_loss(params)
            flat[i] = saved - step
            down = batch_loss(params)
            flat[i] = saved
            numeric = (up - down) / (2 * step)
            assert grads[key].reshape(-1)[i] == pytest.approx(numeric, rel=3e-2, abs=2e-3), key


def test_batch_norm_moving_averages_follow_keras_momentum() -> None:
    model = parse_arrow("INPUT(2) => BN => FC(1)")
    params = forward.init_params(model, seed=0)
    x = np.array([[1.0, 2.0], [3.0, 6.0]], np.float32)
    train.fit(model, params, x, np.zeros((2, 1), np.float32), loss="mse", epochs=1, batch_size=2,
              optimizer=optim.make_optimizer("sgd", 0.01), shuffle=False)
    # moving = 0.99 * moving + 0.01 * batch statistic (biased variance), Keras' BatchNormalization
    np.testing.assert_allclose(params["bn1.moving_mean"], [0.01 * 2.0, 0.01 * 4.0], rtol=1e-6)
    np.testing.assert_allclose(params["bn1.moving_variance"], [0.99 + 0.01 * 1.0, 0.99 + 0.01 * 4.0], rtol=1e-6)


def test_dropout_masks_are_drawn_from_the_seed_and_drop_gradients() -> None:
    model = parse_arrow("INPUT(50) => DO(0.5) => FC(1)")
    x = np.ones((1, 50), np.float32)
    y = np.zeros((1, 1), np.float32)
    params = {"fc1.kernel": np.ones((50, 1), np.float32), "fc1.bias": np.zeros(1, np.float32)}
    _, g1 = train.loss_and_gradients(model, params, x, y, "mse", rng=np.random.default_rng(4))
    _, g2 = train.loss_and_gradients(model, params, x, y, "mse", rng=np.random.default_rng(4))
    np.testing.assert_array_equal(g1["fc1.kernel"], g2["fc1.kernel"])
    kept = g1["fc1.kernel"].ravel() != 0
    assert 10 < kept.sum() < 40  # about half the units are disconnected for this batch


def test_layers_without_a_backward_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from convcli.layers import UpSampling2D

    monkeypatch.setattr(UpSampling2D, "has_backward", False)  # every layer type has one now
    model = parse_arrow("INPUT(8,8,1) => CONV(2,3) => UPSAMPLE(2) => FLATTEN => FC(2)")
    with pytest.raises(ModelError, match=r"'up1' \(UpSampling2D\)"):
        train.check_trainable(model)


def test_integer_labels_outside_the_classes_are_refused() -> None:
    with pytest.raises(Exception, match="class labels must be in 0..2"):
        train.encode_targets(np.array([0, 3]), (3,))


def test_the_documented_digits_command_reaches_97_percent_held_out(tmp_path: Path) -> None:
    """samples/README.md's `convcli train` command, run as users run it (a process of its
    own, from the repository's root, with the machine's default BLAS threads), trains the
    digits to at least 97 % on the 450 held-out images that DATA's 'heldout' array marks,
    as the trainer reports and as a naive forward pass of the written weights counts."""
    import shlex

    from tests.test_digits import digits_probabilities_naive

    readme = (ROOT / "samples" / "README.md").read_text()
    (command,) = [line for line in readme.splitlines() if line.startswith("convcli train samples/digits.toml")]
    sys.path.insert(0, str(ROOT / "samples"))
    try:
        import make_samples
    finally:
        sys.path.remove(str(ROOT / "samples"))
    assert command == make_samples.DIGITS_TRAIN
    argv = shlex.split(command)[1:]
    out = tmp_path / "digits.npz"
    argv[argv.index("--save-weights") + 1] = str(out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "convcli", *argv, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["samples"] == 1347 and document["validation_samples"] == 450
    with np.load(ROOT / "samples" / "digits-all.npz") as data:
        x, y = data["x"][data["heldout"]], data["y"][data["heldout"]]
    with np.load(out) as trained:
        accuracy = float(np.mean(digits_probabilities_naive(dict(trained), x).argmax(axis=1) == y))
    assert accuracy >= 0.97
    assert document["history"][-1]["val_accuracy"] == pytest.approx(accuracy, abs=1.5 / 450)


def test_a_heldout_array_in_data_is_the_validation_set(cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    y = np.array([0, 1] * 5)
    heldout = np.zeros(10, bool)
    heldout[[1, 4, 8]] = True
    np.savez(tmp_path / "data.npz", x=x, y=y, heldout=heldout)
    np.savez(tmp_path / "train.npz", x=x[~heldout], y=y[~heldout])
    np.savez(tmp_path / "val.npz", x=x[heldout], y=y[heldout])
    common = ["--loss", "categorical-crossentropy", "--epochs", "2", "--batch-size", "3", "--lr", "0.1",
              "--optimizer", "sgd", "--json"]
    split = cli("train", "INPUT(3) => FC(2) => SOFTMAX", str(tmp_path / "data.npz"), *common,
                "--save-weights", str(tmp_path / "a.npz"))
    assert split.exit_code == 0, split.stderr
    by_files = cli("train", "INPUT(3) => FC(2) => SOFTMAX", str(tmp_path / "train.npz"), *common,
                   "--validation", str(tmp_path / "val.npz"), "--save-weights", str(tmp_path / "b.npz"))
    assert by_files.exit_code == 0, by_files.stderr
    a, b = json.loads(split.stdout), json.loads(by_files.stdout)
    assert a["samples"] == 7 and a["validation_samples"] == 3
    assert a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"]
    with np.load(tmp_path / "a.npz") as wa, np.load(tmp_path / "b.npz") as wb:
        np.testing.assert_array_equal(wa["fc1.kernel"], wb["fc1.kernel"])


@pytest.mark.parametrize(
    ("heldout", "extra", "message"),
    [
        (np.zeros(10, bool), [], "leaves no sample"),
        (np.zeros(9, bool), [], "'heldout' must be 10 booleans"),
        (np.arange(10) % 2, [], "'heldout' must be 10 booleans"),
        (np.arange(10) < 3, ["--validation", "0.2"], "holds its own held-out split"),
    ],
)
def test_bad_heldout_arrays_are_refused(cli, tmp_path: Path, heldout: np.ndarray, extra: list[str],
                                        message: str) -> None:
    np.savez(tmp_path / "data.npz", x=np.zeros((10, 3), np.float32), y=np.zeros(10, int), heldout=heldout)
    out = tmp_path / "w.npz"
    result = cli("train", "INPUT(3) => FC(2) => SOFTMAX", str(tmp_path / "data.npz"), "--loss", "mse",
                 "--epochs", "1", "--batch-size", "2", "--lr", "0.1", "--optimizer", "sgd",
                 "--save-weights", str(out), *extra)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_blas_threads_is_a_no_op_without_a_known_openblas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_openblas_threads", lambda: None)
    with threads.blas_threads(1):
        product = np.ones((2, 3), np.float32) @ np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(product, np.full((2, 2), 3.0))


def test_blas_threads_are_set_and_restored() -> None:
    found = threads._openblas_threads()
    if found is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS found in /proc/self/maps")
    get, _ = found
    before = get()
    with threads.blas_threads(1):
        assert get() == 1
    assert get() == before


CHECKED = ("INPUT(8,8,3) => CONV(4,3,pad=same) => BN => LRELU => POOL(2) => CONV(6,2,stride=2,activation=relu) "
           "=> AVGPOOL(1) => FLATTEN => DO(0.3) => FC(5) => SOFTMAX")


def test_check_gradients_passes_for_the_lecture_layers() -> None:
    checks = train.check_gradients(parse_arrow(CHECKED), seed=1)
    assert [c.layer for c in checks] == ["conv1", "bn1", "lrelu1", "pool1", "conv2", "avgpool1", "flatten1",
                                         "dropout1", "fc1", "softmax1"]
    assert all(c.checked > 0 and c.worst < 1e-2 for c in checks), checks


def test_check_gradients_finds_a_wrong_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    from convcli.layers import Dense
    from convcli.layers.base import Gradients

    right = Dense.backward

    def doubled(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = right(self, *args, **kwargs)
        return Gradients(result.inputs, {k: 2 * v for k, v in result.params.items()})

    monkeypatch.setattr(Dense, "backward", doubled)
    checks = {c.layer: c.worst for c in train.check_gradients(parse_arrow(CHECKED), seed=1)}
    assert checks["fc1"] > 0.3 and checks["conv1"] < 1e-2


HALVES = "INPUT(10,10,2) => CONV(4,3,pad=same) => RELU => POOL(2) => CONV(5,2) => TANH => FLATTEN => FC(3) => SOFTMAX"


@pytest.mark.parametrize("batch", [2, 7])
def test_a_batch_in_two_halves_gives_the_whole_batchs_loss_and_gradients(batch: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    model = parse_arrow(HALVES)
    params = forward.init_params(model, seed=3)
    rng = np.random.default_rng(4)
    x = rng.random((batch, 10, 10, 2), dtype=np.float32)
    y = train.encode_targets(rng.integers(0, 3, batch), model.output_shape())
    value, grads = train.loss_and_gradients(model, params, x, y, "categorical-crossentropy")
    with ThreadPoolExecutor(max_workers=1) as pool:
        halves_value, halves_grads, updates, p = train._step_halves(model, params, x, y, "categorical-crossentropy", pool)
    assert halves_value == pytest.approx(value, rel=1e-6) and updates == {}
    np.testing.assert_allclose(p, forward.run(model, x, params), rtol=1e-5, atol=1e-7)
    assert set(halves_grads) == set(grads)
    for key, g in grads.items():
        np.testing.assert_allclose(halves_grads[key], g, rtol=1e-4, atol=1e-7 * float(np.abs(g).max() + 1))


def test_training_in_halves_follows_the_same_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two epochs of SGD with every batch in two halves on two threads end at the weights of
    the same training computed batch by batch; models whose samples interact in training
    (batch norm) or that draw random numbers (dropout) are never split."""
    model = parse_arrow(HALVES)
    rng = np.random.default_rng(5)
    x = rng.random((20, 10, 10, 2), dtype=np.float32)
    y = train.encode_targets(rng.integers(0, 3, 20), model.output_shape())
    monkeypatch.setattr(threads, "cores", lambda: 2)
    ends = {}
    for split in (False, True):
        monkeypatch.setattr(forward, "SPLIT_MACS", 0 if split else 10**18)
        assert train._halves_worth_it(model, 8) == split
        params = forward.init_params(model, seed=6)
        train.fit(model, params, x, y, loss="categorical-crossentropy", epochs=2, batch_size=8,
                  optimizer=optim.make_optimizer("sgd", 0.1), seed=1)
        ends[split] = params
    for key in ends[False]:
        np.testing.assert_allclose(ends[True][key], ends[False][key], rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(forward, "SPLIT_MACS", 0)
    assert not train._halves_worth_it(parse_arrow("INPUT(4,4,1) => CONV(2,3) => BN => FLATTEN => FC(2)"), 8)
    assert not train._halves_worth_it(parse_arrow("INPUT(4,4,1) => CONV(2,3) => DO(0.5) => FLATTEN => FC(2)"), 8)
    monkeypatch.setattr(threads, "cores", lambda: 1)
    assert not train._halves_worth_it(model, 8)
