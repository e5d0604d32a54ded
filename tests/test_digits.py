"""The bundled digit classifier: trained by ``convcli train`` (the command in
samples/README.md), it classifies at least 97 % of the 450 held-out digits, as an
independent numpy forward pass of the saved arrays counts them, and the README states the
number measured.
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


def digits_probabilities_naive(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """samples/digits.toml's forward pass written out from the saved arrays alone, in
    float64: two 3x3 'same' convolutions (one pixel of zeros around) as explicit sums over
    the nine kernel positions, ReLU, a 2x2 max pool, a channels-last (H, W, D) flatten, two
    dense layers and a softmax."""
    h = x.astype(np.float64)
    for conv in ("conv1", "conv2"):
        kernel, bias = weights[f"{conv}.kernel"].astype(np.float64), weights[f"{conv}.bias"]
        padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = np.zeros((*h.shape[:3], kernel.shape[3]))
        for i in range(3):
            for j in range(3):
                out += padded[:, i:i + h.shape[1], j:j + h.shape[2], :] @ kernel[i, j]
        h = np.maximum(out + bias, 0)
    n, height, width, depth = h.shape
    h = h.reshape(n, height // 2, 2, width // 2, 2, depth).max(axis=(2, 4)).reshape(n, -1)
    h = np.maximum(h @ weights["fc1.kernel"] + weights["fc1.bias"], 0)
    z = h @ weights["fc2.kernel"] + weights["fc2.bias"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_heldout_set_is_the_marked_split_of_all_digits(heldout: dict[str, np.ndarray], samples: Path) -> None:
    with np.load(samples / "digits-all.npz") as data:
        mask = data["heldout"]
        np.testing.assert_array_equal(heldout["x"], data["x"][mask])
        np.testing.assert_array_equal(heldout["y"], data["y"][mask])


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


def test_heldout_accuracy_is_at_least_97_percent_and_the_documented_one(
    samples: Path, heldout: dict[str, np.ndarray]
) -> None:
    with np.load(samples / "digits.npz") as data:
        weights = {key: data[key] for key in data.files}
    correct = int((digits_probabilities_naive(weights, heldout["x"]).argmax(axis=1) == heldout["y"]).sum())
    assert correct / 450 >= 0.97
    # what convcli train measured (its last val_accuracy), and what the documents say
    assert round(float(heldout["accuracy"]) * 450) == correct
    stated = f"{100 * correct / 450:.2f} % ({correct} of 450 images)"
    assert f"**Held-out accuracy: {stated}.**" in (samples / "README.md").read_text()
    toml = (samples / "digits.toml").read_text()
    assert f"Held-out accuracy: {100 * correct / 450:.2f} %" in toml and f"({correct} of 450 images)" in toml


def test_convcli_forward_pass_agrees_with_the_naive_one(samples: Path, heldout: dict[str, np.ndarray]) -> None:
    from convcli import forward
    from convcli.spec import load_model

    model = load_model(str(samples / "digits.toml"))
    params = forward.load_weights(model, samples / "digits.npz")
    probabilities = forward.run(model, heldout["x"], params)
    expected = digits_probabilities_naive(params, heldout["x"])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), expected.argmax(axis=1))


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
