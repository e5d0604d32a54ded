"""`convcli run` through the CLI: in-process (CliRunner) and as a real process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convcli import forward
from convcli.spec import load_model, parse_arrow

SMALL = "INPUT(6,6,1) => CONV(3,3,pad=same) => RELU => POOL(2) => FC(4) => SOFTMAX"
SMALL_MODEL = parse_arrow(SMALL)


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """A .npy batch of three 6x6x1 inputs."""
    path = tmp_path / "batch.npy"
    np.save(path, np.random.default_rng(0).random((3, 6, 6, 1), dtype=np.float32))
    return path


def run_json(cli, *args: str) -> dict:
    result = cli("run", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # exactly one document on stdout


def assert_error(result, *fragments: str) -> None:
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --------------------------------------------------------------------------- the digits demo


def test_digits_demo_prints_seven(cli, samples: Path) -> None:
    result = cli("run", str(samples / "digits.toml"), str(samples / "digit-7.png"))
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "named by the model file" in text
    for name in ("conv1", "relu1", "pool1", "fc2", "softmax1", "Zeros", "8x8x16", "Top 5"):
        assert name in text
    top = text[text.index("Top 5"):].splitlines()
    rank_one = next(line.split() for line in top if line.split()[:1] == ["1"])
    assert rank_one[1] == "7" and float(rank_one[2]) > 0.9


def test_digits_json_top5_and_output_match_the_library(cli, samples: Path) -> None:
    doc = run_json(cli, str(samples / "digits.toml"), str(samples / "digit-7.png"), str(samples / "digit-3.png"))
    model = load_model(str(samples / "digits.toml"))
    pixels = np.stack([np.asarray(Image.open(samples / f"digit-{d}.png").convert("L"), np.float32) / 255
                       for d in (7, 3)])[..., None]
    expected = forward.run(model, pixels, forward.load_weights(model, samples / "digits.npz"))
    assert doc["output_shape"] == [2, 10]
    np.testing.assert_allclose(doc["output"], expected, rtol=1e-6, atol=1e-7)
    assert [row[0]["class"] for row in doc["top"]] == ["7", "3"]
    assert doc["top"][0][0]["probability"] > 0.9
    assert len(doc["top"][0]) == 5
    probs = [entry["probability"] for entry in doc["top"][1]]
    assert probs == sorted(probs, reverse=True)
    assert [layer["name"] for layer in doc["layers"]] == [layer.name for layer in model.layers]
    relu1 = doc["layers"][1]
    assert relu1["min"] == 0 and 0 < relu1["zero_fraction"] < 1
    assert doc["layers"][0]["zero_fraction"] is None


def test_digits_in_a_real_process(samples: Path) -> None:
    from tests.conftest import run_convcli

    done = run_convcli("run", str(samples / "digits.toml"), str(samples / "digit-1.png"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["top"][0][0]["class"] == "1"
    assert done.stderr == b""


def test_image_from_stdin(samples: Path) -> None:
    from tests.conftest import run_convcli

    done = run_convcli("run", str(samples / "digits.toml"), "-", "--json", input=(samples / "digit-4.png").read_bytes())
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["inputs"] == ["-"] and doc["top"][0][0]["class"] == "4"


# --------------------------------------------------------------------------- weights and seeds


def test_random_weights_are_reproducible_and_saved(cli, batch: Path, tmp_path: Path) -> None:
    a = run_json(cli, SMALL, str(batch), "--seed", "3", "--save-weights", str(tmp_path / "w.npz"))
    b = run_json(cli, SMALL, str(batch), "--seed", "3")
    c = run_json(cli, SMALL, str(batch), "--seed", "4")
    assert a["output"] == b["output"] and a["output"] != c["output"]
    again = run_json(cli, SMALL, str(batch), "--weights", str(tmp_path / "w.npz"))
    assert again["output"] == a["output"]
    expected = forward.run(SMALL_MODEL, np.load(batch), forward.init_params(SMALL_MODEL, seed=3))
    np.testing.assert_allclose(a["output"], expected, rtol=1e-6)
    default = run_json(cli, SMALL, str(batch))
    assert default["seed"] == 0
    np.testing.assert_allclose(default["output"], forward.run(SMALL_MODEL, np.load(batch), forward.init_params(SMALL_MODEL)), rtol=1e-6)


def test_output_file_is_the_final_output(cli, batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.npy"
    result = cli("run", SMALL, str(batch), str(batch), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    saved = np.load(out)
    assert saved.dtype == np.float32 and saved.shape == (6, 4)
    np.testing.assert_allclose(saved.sum(axis=1), 1, rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.npy", "out.npy"]
    labels = run_json(cli, SMALL, str(batch), str(batch))["inputs"]
    assert labels == [f"{batch}[{i}]" for i in (0, 1, 2)] * 2  # batch members are labelled by index


def test_single_npy_input_and_flat_model(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.ones((6, 6, 1), np.float32))
    doc = run_json(cli, SMALL, str(tmp_path / "one.npy"))
    assert doc["output_shape"] == [1, 4] and doc["inputs"] == [str(tmp_path / "one.npy")]
    np.save(tmp_path / "flat.npy", np.array([1.0, -2.0, 3.0], np.float32))
    weights = tmp_path / "w.npz"
    np.savez(weights, **{"fc1.kernel": np.eye(3, dtype=np.float32)[:, :2], "fc1.bias": np.array([0.5, 0], np.float32)})
    doc = run_json(cli, "INPUT(3) => FC(2) => SIGMOID", str(tmp_path / "flat.npy"), "--weights", str(weights))
    np.testing.assert_allclose(doc["output"], [[1 / (1 + np.exp(-1.5)), 1 / (1 + np.exp(2.0))]], rtol=1e-6)
    assert "top" not in doc  # no softmax, no classes


def test_class_names_from_the_model_file(cli, tmp_path: Path) -> None:
    toml = tmp_path / "pets.toml"
    toml.write_text('input = [2, 2, 1]\nclass_names = ["cat", "dog", "owl"]\n'
                    '[[layers]]\ntype = "fc"\nunits = 3\n[[layers]]\ntype = "softmax"\n')
    np.savez(tmp_path / "w.npz", **{"fc1.kernel": np.array([[0, 0, 1]] * 4, np.float32), "fc1.bias": np.zeros(3, np.float32)})
    np.save(tmp_path / "x.npy", np.ones((2, 2, 1), np.float32))
    result = cli("run", str(toml), str(tmp_path / "x.npy"), "--weights", str(tmp_path / "w.npz"))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout[result.stdout.index("Top 3"):].splitlines()
    top = [line.split() for line in lines if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert [row[1] for row in top] == ["owl", "cat", "dog"]
    p_owl = np.exp(4) / (np.exp(4) + 2)  # logits 0, 0, 4
    assert top[0][2] == f"{p_owl:.4f}"


def test_weights_named_by_a_toml_model(cli, tmp_path: Path) -> None:
    toml = tmp_path / "m.toml"
    toml.write_text('input = [3]\nweights = "sub/w.npz"\n[[layers]]\ntype = "fc"\nunits = 1\n')
    np.save(tmp_path / "x.npy", np.array([1.0, 2.0, 3.0], np.float32))
    result = cli("run", str(toml), str(tmp_path / "x.npy"))
    assert_error(result, "sub/w.npz does not exist")
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "sub" / "w.npz", **{"fc1.kernel": np.array([[1.0], [10.0], [100.0]], np.float32),
                                             "fc1.bias": np.array([0.5], np.float32)})
    assert run_json(cli, str(toml), str(tmp_path / "x.npy"), "--seed", "5")["output"] == [[321.5]]
    np.savez(tmp_path / "other.npz", **{"fc1.kernel": np.ones((3, 1), np.float32), "fc1.bias": np.zeros(1, np.float32)})
    assert run_json(cli, str(toml), str(tmp_path / "x.npy"), "--weights", str(tmp_path / "other.npz"))["output"] == [[6.0]]


def test_train_dropout(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((2, 400), np.float32))
    model = "INPUT(400) => DO(0.5)"
    plain = run_json(cli, model, str(tmp_path / "x.npy"))
    assert np.array_equal(plain["output"], np.ones((2, 400)))
    a = run_json(cli, model, str(tmp_path / "x.npy"), "--train-dropout", "--seed", "1")
    b = run_json(cli, model, str(tmp_path / "x.npy"), "--train-dropout", "--seed", "1")
    assert a["output"] == b["output"]
    values = np.array(a["output"])
    assert set(np.unique(values)) == {0.0, 2.0} and abs((values == 0).mean() - 0.5) < 0.1


def test_gray_and_rgb_images_are_converted_to_the_model_depth(cli, tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    weights = tmp_path / "w.npz"
    np.savez(weights, **{"fc1.kernel": np.eye(36, dtype=np.float32), "fc1.bias": np.zeros(36, np.float32)})
    doc = run_json(cli, "INPUT(6,6,1) => FLATTEN => FC(36)", str(tmp_path / "rgb.png"), "--weights", str(weights))
    luma = (rgb.astype(np.float64) / 255) @ [0.299, 0.587, 0.114]  # ITU-R 601, as Pillow's "L"
    np.testing.assert_allclose(np.array(doc["output"]).reshape(6, 6), luma, rtol=1e-5)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    doc = run_json(cli, "INPUT(6,6,3) => FLATTEN", str(tmp_path / "gray.png"))
    np.testing.assert_allclose(np.array(doc["output"]).reshape(6, 6, 3), np.repeat(rgb[..., :1] / 255, 3, axis=2), rtol=1e-6)


# --------------------------------------------------------------------------- feature maps


def test_save_maps_writes_one_labelled_grid_per_layer(cli, samples: Path, tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    result = cli("run", str(samples / "digits.toml"), str(samples / "digit-7.png"), "--save-maps", str(maps))
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in maps.iterdir())
    assert names == ["00-input.png", "01-conv1.png", "02-relu1.png", "03-conv2.png", "04-relu2.png", "05-pool1.png"]
    conv1 = Image.open(maps / "01-conv1.png")
    assert conv1.mode == "RGB"  # gray tiles, a colour bar
    # 16 maps of 8x8, enlarged 6x to 48 pixels, in a 4x4 grid: wider and taller than 4 * 48
    assert conv1.size[0] > 4 * 48 and conv1.size[1] > 4 * 48
    pixels = np.asarray(conv1)
    assert pixels.max() == 255 and pixels.min() == 0


def test_scale_maps_and_grid_layout() -> None:
    maps = np.zeros((3, 4, 5), np.float32)
    maps[..., 0] = np.arange(12).reshape(3, 4)
    maps[..., 1] = -7  # constant: all 0
    scaled = forward.scale_maps(maps)
    assert scaled[..., 0].min() == 0 and scaled[..., 0].max() == 255
    assert scaled[0, 1, 0] == round(255 / 11)
    assert not scaled[..., 1].any()
    grid = forward.feature_map_grid(np.random.default_rng(0).random((100, 100, 7)), "t")
    # 7 maps: 3 columns, 3 rows of 100x100 tiles (no enlarging needed)
    assert 300 < grid.size[0] < 340 and 300 < grid.size[1] < 400


# --------------------------------------------------------------------------- errors


def test_image_of_the_wrong_size_names_both_shapes(cli, samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.npy"
    result = cli("run", "INPUT(28,28,1) => CONV(4,3)", str(samples / "digit-7.png"), "-o", str(out))
    assert_error(result, "8x8x1", "28x28x1", "does not resize")
    assert not out.exists()


@pytest.mark.parametrize("make,fragments", [
    (lambda d: np.save(d / "bad.npy", np.zeros((5, 5, 1))), ["(5, 5, 1)", "(6, 6, 1)"]),
    (lambda d: (d / "bad.npy").write_bytes(b"junk"), ["not a readable .npy"]),
    (lambda d: np.save(d / "bad.npy", np.array(["a"])), ["does not hold a numeric array"]),
])
def test_bad_npy_inputs(cli, tmp_path: Path, make, fragments) -> None:
    make(tmp_path)
    assert_error(cli("run", SMALL, str(tmp_path / "bad.npy"), "-o", str(tmp_path / "o.npy")), *fragments)
    assert not (tmp_path / "o.npy").exists()


def test_wrongly_shaped_weights(cli, batch: Path, tmp_path: Path) -> None:
    params = forward.init_params(SMALL_MODEL)
    params["conv1.kernel"] = np.zeros((3, 3, 2, 3), np.float32)
    np.savez(tmp_path / "w.npz", **params)
    result = cli("run", SMALL, str(batch), "--weights", str(tmp_path / "w.npz"), "-o", str(tmp_path / "o.npy"))
    assert_error(result, "'conv1.kernel'", "(3, 3, 2, 3)", "expected (3, 3, 1, 3)")
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("args,fragments", [
    (["-o", "{d}/out.txt"], ["ending in .npy"]),
    (["-o", "{d}/nope/out.npy"], ["folder", "does not exist"]),
    (["--save-weights", "{d}/w.npy"], ["ending in .npz"]),
    (["--weights", "{d}/missing.npz"], ["missing.npz does not exist"]),
    (["--weights", "{d}/batch.npy", "--seed", "1"], ["single array, not a .npz"]),
    (["--batch-size", "0"], ["--batch-size must be a positive integer"]),
])
def test_option_errors(cli, batch: Path, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    args = [a.format(d=tmp_path) for a in args]
    assert_error(cli("run", SMALL, str(batch), *args), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.npy"]


def test_model_and_input_errors(cli, batch: Path, tmp_path: Path) -> None:
    assert_error(cli("run", "INPUT(10,10,1) => CONV(1,3,stride=2)", str(batch)), "4.5")
    assert_error(cli("run", SMALL, str(tmp_path / "none.png")), "none.png")
    assert_error(cli("run", "INPUT(6) => FC(2)", str(tmp_path / "x.png")), "flat inputs")


def test_no_progress_bar_when_stderr_is_not_a_terminal(batch: Path) -> None:
    from tests.conftest import run_convcli

    done = run_convcli("run", SMALL, str(batch), str(batch), "--batch-size", "2", "--json")
    assert done.returncode == 0 and done.stderr == b""
    assert json.loads(done.stdout)["output_shape"] == [6, 4]


def test_progress_bar_on_a_terminal_for_large_batches(cli, batch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from convcli.cli import _app

    monkeypatch.setattr(type(_app.err_console), "is_terminal", property(lambda self: True))
    result = cli("run", SMALL, str(batch), str(batch), "--batch-size", "2", "--json")
    assert result.exit_code == 0
    assert "\x1b[?25l" in result.stderr  # the live progress display started (and hid the cursor)
    assert json.loads(result.stdout)["output_shape"] == [6, 4]
    small = cli("run", SMALL, str(batch), "--batch-size", "64", "--json")  # one batch: no bar
    assert small.exit_code == 0 and small.stderr == ""


def test_table_of_a_folded_batch_norm(cli, tmp_path: Path) -> None:
    """The table comes from the fused pass: a batch norm folded into the conv before it has
    no time of its own ("-", explained under the table; "folded_into" in --json), and every
    layer's statistics are those of its own output, computed here layer by layer."""
    text = "INPUT(8,8,2) => CONV(4,3,pad=same) => BN => RELU => POOL(2) => FLATTEN => FC(3) => SOFTMAX"
    model = parse_arrow(text)
    x = np.random.default_rng(5).random((2, 8, 8, 2), dtype=np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    params = forward.init_params(model, seed=0)
    seen: dict[str, np.ndarray] = {}
    forward.run(model, x, params, on_layer=lambda layer, y, s: seen.__setitem__(layer.name, y.copy()))

    doc = run_json(cli, text, str(path))
    layers = {layer["name"]: layer for layer in doc["layers"]}
    assert layers["bn1"]["folded_into"] == "conv1" and layers["bn1"]["seconds"] == 0
    assert "folded_into" not in layers["conv1"]
    for name, output in seen.items():
        assert layers[name]["min"] == pytest.approx(float(output.min()), abs=1e-5)
        assert layers[name]["max"] == pytest.approx(float(output.max()), abs=1e-5)
        assert layers[name]["mean"] == pytest.approx(float(output.astype(np.float64).mean()), abs=1e-5)
    assert layers["relu1"]["zero_fraction"] == pytest.approx(float((seen["relu1"] == 0).mean()))

    result = cli("run", text, str(path))
    assert result.exit_code == 0, result.stderr
    bn_row = next(line for line in result.stdout.splitlines() if line.startswith("bn1 "))
    assert bn_row.split()[3] == "-"
    assert "batch norm folded into the layer above it" in result.stdout
