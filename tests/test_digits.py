"""The bundled digit classifier: convcli's forward pass reproduces the trained accuracy.

samples/train_digits.py trained the model with PyTorch and recorded its held-out accuracy
in samples/digits-heldout.npz (``accuracy``); here convcli's own numpy forward pass runs the
same weights from samples/digits.npz on the same held-out digits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_convcli


@pytest.fixture(scope="module")
def heldout() -> dict[str, np.ndarray]:
    from tests.conftest import SAMPLES

    with np.load(SAMPLES / "digits-heldout.npz") as data:
        return {key: data[key] for key in data.files}


def test_heldout_set_format(heldout: dict[str, np.ndarray]) -> None:
    x, y = heldout["x"], heldout["y"]
    assert x.dtype == np.float32 and x.shape == (len(y), 8, 8, 1)
    assert 0.0 <= x.min() and x.max() <= 1.0
    # scikit-learn's pixels are integers 0..16, scaled by 1/16
    np.testing.assert_array_equal(x * 16, np.round(x * 16))
    assert y.dtype.kind == "i" and set(np.unique(y)) == set(range(10))
    # a stratified 25 % split of 1,797 images: 43 to 46 of each digit
    counts = np.bincount(y, minlength=10)
    assert len(y) == 450 and counts.min() >= 43 and counts.max() <= 46


def test_weights_match_the_model_file(samples: Path) -> None:
    from convcli.spec import load_model

    model = load_model(str(samples / "digits.toml"))
    assert model.class_names == tuple(str(d) for d in range(10))
    with np.load(samples / "digits.npz") as weights:
        assert {key: weights[key].shape for key in weights.files} == model.param_shapes()
        assert all(weights[key].dtype == np.float32 for key in weights.files)


def test_forward_pass_reproduces_recorded_accuracy(samples: Path, heldout: dict[str, np.ndarray]) -> None:
    from convcli import forward
    from convcli.spec import load_model

    model = load_model(str(samples / "digits.toml"))
    params = forward.load_weights(model, samples / "digits.npz")
    probabilities = forward.run(model, heldout["x"], params)
    assert probabilities.shape == (len(heldout["y"]), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    correct = int((probabilities.argmax(axis=1) == heldout["y"]).sum())
    recorded = float(heldout["accuracy"]) * len(heldout["y"])
    assert correct / len(heldout["y"]) >= 0.97
    assert abs(correct - recorded) <= 1, (correct, recorded)


@pytest.mark.parametrize("digit", [0, 3, 7])
def test_png_digits_are_heldout_images_rounded_to_8_bits(
    samples: Path, heldout: dict[str, np.ndarray], digit: int
) -> None:
    from PIL import Image

    with Image.open(samples / f"digit-{digit}.png") as image:
        assert image.mode == "L" and image.size == (8, 8)
        pixels = np.asarray(image)
    rounded = np.rint(heldout["x"][..., 0] * 255).astype(np.uint8)
    matches = np.flatnonzero((rounded == pixels).all(axis=(1, 2)))
    assert matches.size >= 1
    assert digit in set(heldout["y"][matches].tolist())


def test_run_classifies_digit_7(samples: Path) -> None:
    proc = run_convcli(
        "run", str(samples / "digits.toml"), str(samples / "digit-7.png"),
        "--weights", str(samples / "digits.npz"), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    document = json.loads(proc.stdout)
    probabilities = np.asarray(document["output"], dtype=np.float64).reshape(-1, 10)[0]
    assert probabilities.argmax() == 7
    assert probabilities[7] > 0.9


@pytest.mark.parametrize("digit", range(10))
def test_every_png_digit_is_classified(cli, samples: Path, digit: int) -> None:
    result = cli(
        "run", str(samples / "digits.toml"), str(samples / f"digit-{digit}.png"),
        "--weights", str(samples / "digits.npz"), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    probabilities = np.asarray(json.loads(result.stdout)["output"]).reshape(-1, 10)[0]
    assert probabilities.argmax() == digit


def test_run_without_weights_option_uses_the_trained_weights(cli, samples: Path) -> None:
    # the command: the model file names its weights (weights = "digits.npz")
    result = cli("run", str(samples / "digits.toml"), str(samples / "digit-7.png"), "--json")
    assert result.exit_code == 0, result.stderr
    probabilities = np.asarray(json.loads(result.stdout)["output"]).reshape(-1, 10)[0]
    assert probabilities.argmax() == 7 and probabilities[7] > 0.9
