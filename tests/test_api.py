"""The Python API (``import convcli``): lazy, and the same answers and rules as the commands.

References come from outside the code under test: scipy.ndimage.correlate, the lecture's
numbers (132, 55x55x96, 34,944 / 105,705,600, the 4.5 that does not fit), hand sums.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage as ndi

import convcli
from convcli.errors import ConvcliError, ShapeError
from tests.conftest import ROOT, SAMPLES

REGION = np.array([[93, 139, 101], [26, 252, 196], [135, 230, 18]], dtype=np.float32)
SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)


def test_import_convcli_loads_no_numpy_scipy_or_pillow() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import convcli"],
                          capture_output=True, env=env, timeout=60, check=True)
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.decode().splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "convcli" in imported  # the measurement works
    assert not imported & {"numpy", "scipy", "PIL", "typer", "rich"}


def test_api_names_are_listed() -> None:
    for name in ("correlate", "filter_chain", "load_kernel", "conv_output_size", "load_model", "summary",
                 "run", "loss"):
        assert name in convcli.__all__ and name in dir(convcli) and callable(getattr(convcli, name))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        convcli.nope  # noqa: B018


def test_correlate_is_the_lecture_hand_computation() -> None:
    # the lecture: the 1/9 box on this region gives 132 (1190/9 = 132.22...)
    out = convcli.correlate(REGION, "box3", padding="valid")
    assert out.dtype == np.float32 and out.shape == (1, 1)
    assert out[0, 0] == pytest.approx(1190 / 9, rel=1e-6)


@pytest.mark.parametrize("mode", ["reflect", "constant", "nearest", "mirror", "wrap"])
def test_correlate_matches_scipy(mode: str) -> None:
    image = np.random.default_rng(7).random((9, 11, 3)).astype(np.float32)
    expected = np.stack([ndi.correlate(image[:, :, c].astype(np.float64), SOBEL_X, mode=mode, cval=0.5)
                         for c in range(3)], axis=-1)
    got = convcli.correlate(image, SOBEL_X, mode=mode, cval=0.5)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_correlate_with_a_gradient_pair_is_the_magnitude() -> None:
    image = np.random.default_rng(3).random((8, 8)).astype(np.float32)
    gx = ndi.correlate(image.astype(np.float64), SOBEL_X, mode="reflect")
    gy = ndi.correlate(image.astype(np.float64), SOBEL_X.T, mode="reflect")
    expected = np.hypot(gx, gy)
    np.testing.assert_allclose(convcli.correlate(image, "sobel"), expected, atol=1e-4)
    np.testing.assert_allclose(convcli.correlate(image, (SOBEL_X, SOBEL_X.T)), expected, atol=1e-4)


def test_filter_chain_applies_each_kernel_in_turn() -> None:
    image = np.random.default_rng(5).random((10, 10)).astype(np.float32)
    box = np.full((3, 3), 1 / 9)
    expected = ndi.correlate(ndi.correlate(image.astype(np.float64), box, mode="nearest"), SOBEL_X, mode="nearest")
    got = convcli.filter_chain(image, ["box3", "1 0 -1; 2 0 -2; 1 0 -1"], mode="nearest")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_stride_that_does_not_fit_is_refused() -> None:
    # (10 - 3)/2 + 1 = 4.5: the lecture's rule refuses it, as convcli filter does
    with pytest.raises(ShapeError, match=r"4\.5"):
        convcli.correlate(np.zeros((10, 10)), "box3", padding="valid", stride=2)
    assert convcli.correlate(np.zeros((11, 11)), "box3", padding="valid", stride=2).shape == (5, 5)


def test_load_kernel() -> None:
    box = convcli.load_kernel("box3")
    np.testing.assert_allclose(box.weights, np.full((3, 3), 1 / 9))
    pair = convcli.load_kernel("sobel")
    assert (pair.x.name, pair.y.name) == ("sobel-x", "sobel-y")
    with pytest.raises(ConvcliError, match="sobelx"):
        convcli.load_kernel("sobelx")


def test_conv_output_size_lecture_numbers() -> None:
    assert convcli.conv_output_size(227, 11, stride=4) == 55  # AlexNet conv1
    assert convcli.conv_output_size(5, 3, stride=2, padding=1) == 3  # cs231n demo
    assert convcli.conv_output_size(224, 11, stride=4, padding="same") == 56  # ceil(224/4)
    assert convcli.conv_output_size(10, 3, dilation=2) == 6  # covers 5: (10 - 5) + 1
    with pytest.raises(ShapeError, match=r"4\.5 is not an integer"):
        convcli.conv_output_size(10, 3, stride=2)
    with pytest.raises(ConvcliError, match="padding=bogus"):
        convcli.conv_output_size(10, 3, padding="bogus")


def test_summary_is_callable_even_after_its_module_is_imported() -> None:
    import convcli.summary as module

    assert module.summarize is not None
    assert convcli.summary("INPUT(8,8,1) => CONV(2,3)").total_params == 2 * 9 + 2


def test_summary_str_and_json() -> None:
    s = convcli.summary("INPUT(227,227,3) => CONV(96,11,stride=4) => RELU => POOL(3,stride=2)")
    # the lecture: 55x55x96, 34,944 shared and 105,705,600 unshared parameters
    assert s.rows[0].output_shape == (55, 55, 96)
    assert s.to_json()["total_params"] == 34_944
    text = str(s)
    assert "55x55x96" in text.split() and "34,944" in text.split()
    assert all(len(line) <= 80 for line in text.splitlines())
    vgg = convcli.summary(SAMPLES / "vgg16.toml")
    assert vgg.total_params == 138_357_544  # Keras' VGG16
    with pytest.raises(ShapeError, match=r"4\.5"):
        convcli.summary("INPUT(10,10,3) => CONV(8,3,stride=2)")


def test_run_with_given_weights_is_a_hand_sum() -> None:
    model = convcli.load_model("INPUT(4,4,1) => CONV(1,3)")
    weights = {"conv1.kernel": np.ones((3, 3, 1, 1)), "conv1.bias": np.array([0.5])}
    x = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    out = convcli.run(model, x, weights)
    # each output: the sum of a 3x3 window of 0..15, plus the bias
    expected = [[x[r:r + 3, c:c + 3].sum() + 0.5 for c in range(2)] for r in range(2)]
    np.testing.assert_allclose(out[:, :, 0], expected)
    batch = convcli.run(model, np.stack([x, x]), weights)
    assert batch.shape == (2, 2, 2, 1)


def test_run_random_weights_agree_with_the_command(cli) -> None:
    import json

    from PIL import Image

    model = "INPUT(8,8,1) => CONV(4,3) => RELU => POOL(2) => FC(10) => SOFTMAX"
    result = cli("run", model, str(SAMPLES / "digit-3.png"), "--seed", "3", "--json")
    expected = np.asarray(json.loads(result.stdout)["output"], dtype=np.float32)
    image = np.asarray(Image.open(SAMPLES / "digit-3.png").convert("L"), dtype=np.float32)[:, :, None] / 255
    np.testing.assert_allclose(convcli.run(model, image, seed=3), expected[0], rtol=1e-5, atol=1e-7)
    # a TOML model's own weights file is used, as by the command
    named = json.loads(cli("run", str(SAMPLES / "digits.toml"), str(SAMPLES / "digit-3.png"), "--json").stdout)
    np.testing.assert_allclose(convcli.run(SAMPLES / "digits.toml", image), named["output"][0], rtol=1e-5, atol=1e-7)


def test_loss_keras_semantics() -> None:
    assert convcli.loss("mse", [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]) == pytest.approx(0.5)
    assert convcli.loss("categorical-crossentropy", [[0, 1, 0]], [[0.05, 0.9, 0.05]]) == pytest.approx(-np.log(0.9))
    with pytest.raises(ConvcliError, match="mse"):
        convcli.loss("nope", [1], [1])


def test_docs_api_examples_run() -> None:
    path = ROOT / "docs" / "api.md"
    failures, tried = doctest.testfile(str(path), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert tried >= 10 and failures == 0
