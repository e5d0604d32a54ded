"""`convcli train` as users run it: in-process (the `cli` fixture) and as a real process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_convcli

TINY = "INPUT(3) => FC(2) => SOFTMAX"


def _data(folder: Path) -> Path:
    rng = np.random.default_rng(5)
    path = folder / "data.npz"
    np.savez(path, x=rng.standard_normal((6, 3)).astype(np.float32), y=np.array([0, 1, 1, 0, 1, 0]))
    return path


def _weights(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    kernel = np.array([[0.5, -0.5], [1.0, 0.25], [-1.0, 2.0]], np.float32)
    bias = np.array([0.1, -0.1], np.float32)
    path = folder / "start.npz"
    np.savez(path, **{"fc1.kernel": kernel, "fc1.bias": bias})
    return path, kernel, bias


def test_one_sgd_epoch_writes_w_minus_lr_grad(cli, tmp_path: Path) -> None:
    data = _data(tmp_path)
    start, kernel, bias = _weights(tmp_path)
    out = tmp_path / "out.npz"
    result = cli("train", TINY, str(data), "--weights", str(start), "--loss", "categorical-crossentropy",
                 "--epochs", "1", "--batch-size", "6", "--lr", "0.5", "--optimizer", "sgd", "--no-shuffle",
                 "--save-weights", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    with np.load(data) as d:
        x, labels = d["x"].astype(np.float64), d["y"]
    z = x @ kernel + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - np.eye(2)[labels]) / len(x)  # the mean cross-entropy's gradient, by hand
    with np.load(out) as trained:
        np.testing.assert_allclose(trained["fc1.kernel"], kernel - 0.5 * x.T @ dz, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(trained["fc1.bias"], bias - 0.5 * dz.sum(0), rtol=1e-5, atol=1e-6)
    document = json.loads(result.stdout)
    assert document["history"][0]["loss"] == pytest.approx(float(np.mean(-np.log(p[np.arange(6), labels]))), rel=1e-5)
    assert document["samples"] == 6 and document["optimizer"] == "sgd"


def test_epoch_lines_validation_and_plot(cli, tmp_path: Path) -> None:
    data = _data(tmp_path)
    result = cli("train", TINY, str(data), "--loss", "categorical-crossentropy", "--epochs", "3",
                 "--batch-size", "2", "--lr", "0.01", "--optimizer", "adam", "--validation", "0.5",
                 "--save-weights", str(tmp_path / "w.npz"), "--plot", str(tmp_path / "curves.png"))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("val_loss" in line and line.endswith(" s") for line in lines)
    from PIL import Image

    with Image.open(tmp_path / "curves.png") as picture:
        assert picture.size == (1280, 300)


def test_a_folder_of_class_subfolders(cli, tmp_path: Path) -> None:
    from PIL import Image

    for name, value in (("dark", 20), ("light", 230)):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (4, 4), value + i).save(tmp_path / "images" / name / f"{i}.png")
    result = cli("train", "INPUT(4,4,1) => FLATTEN => FC(2) => SOFTMAX", str(tmp_path / "images"),
                 "--loss", "categorical-crossentropy", "--epochs", "2", "--batch-size", "3", "--lr", "0.1",
                 "--optimizer", "momentum", "--save-weights", str(tmp_path / "w.npz"), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == 6


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--loss", "hinge"], "hinge"),
        (["--optimizer", "rmsprop"], "Allowed values are: sgd, momentum, adam"),
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--validation", "1.5"], "--validation takes a fraction"),
        (["--save-weights", "w.txt"], "ending in .npz"),
    ],
)
def test_bad_options_are_one_line_errors(cli, tmp_path: Path, extra: list[str], message: str) -> None:
    data = _data(tmp_path)
    args = {"--loss": "mse", "--epochs": "1", "--batch-size": "2", "--lr": "0.1", "--optimizer": "sgd",
            "--save-weights": str(tmp_path / "w.npz")}
    args.update(dict(zip(extra[::2], extra[1::2])))
    result = cli("train", TINY, str(data), *[item for pair in args.items() for item in pair])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert not (tmp_path / "w.npz").exists()


def test_bad_data_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((2, 3), np.float32))
    common = ["--loss", "mse", "--epochs", "1", "--batch-size", "2", "--lr", "0.1", "--optimizer", "sgd",
              "--save-weights", str(tmp_path / "w.npz")]
    proc = run_convcli("train", TINY, str(tmp_path / "nolabels.npz"), *common)
    assert proc.returncode == 2 and b"missing: y" in proc.stderr and b"Traceback" not in proc.stderr
    assert not (tmp_path / "w.npz").exists()


def test_ctrl_c_keeps_the_last_finished_epoch(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((256, 3)).astype(np.float32), y=rng.integers(0, 2, 256))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(
        [sys.executable, "-m", "convcli", "train", TINY, "d.npz", "--loss", "categorical-crossentropy",
         "--epochs", "100000", "--batch-size", "1", "--lr", "0.01", "--optimizer", "sgd", "--save-weights", "w.npz"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"epoch 1/100000")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert b"interrupted: wrote w.npz" in err
    with np.load(tmp_path / "w.npz") as trained:
        assert sorted(trained) == ["fc1.bias", "fc1.kernel"]


def test_check_gradients_prints_one_row_per_layer(cli) -> None:
    result = cli("train", "--check-gradients", "INPUT(6,6,1) => CONV(2,3) => RELU => FLATTEN => FC(3) => SOFTMAX", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["layers"]
    assert [r["layer"] for r in rows] == ["conv1", "relu1", "flatten1", "fc1", "softmax1"]
    assert all(r["worst_relative_error"] < 1e-2 for r in rows)
    missing = cli("train", "INPUT(3) => FC(2)", "data.npz")
    assert missing.exit_code == 2 and "train needs --loss" in missing.stderr
