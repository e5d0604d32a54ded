"""Reading Keras files without Keras (convcli.keras_files).

The reference arrays are Keras' own: ``small/<name>.weights.npz`` holds ``layer.get_weights()``
of the model that Keras saved in every format (tests/fixtures/keras/make_fixtures.py).
The hostile files are made here from the good ones.
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from convcli import keras_files  # noqa: E402 (after the h5py skip)
from convcli.errors import ConvcliError, InputError  # noqa: E402 (after the h5py skip)
from convcli.keras_files import KerasFile, read_keras_model, read_keras_weights  # noqa: E402 (after the h5py skip)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "keras"
SMALL = FIXTURES / "small"
APPS = FIXTURES / "apps"
MODELS = sorted(p.name.split(".")[0] for p in SMALL.glob("*.expected.json"))

# Keras 3 count_params with weights=None and default configs (the published figures).
KERAS_TOTALS = {
    "VGG16": 138_357_544,
    "VGG19": 143_667_240,
    "ResNet50": 25_636_712,
    "ResNet50V2": 25_613_800,
    "ResNet101": 44_707_176,
    "MobileNet": 4_253_864,
    "MobileNetV2": 3_538_984,
    "MobileNetV3Small": 2_554_968,
    "EfficientNetB0": 5_330_571,
    "EfficientNetV2B0": 7_200_312,
    "InceptionV3": 23_851_784,
    "InceptionResNetV2": 55_873_736,
    "Xception": 22_910_480,
    "DenseNet121": 8_062_504,
    "NASNetMobile": 5_326_716,
    "ConvNeXtTiny": 28_589_128,
}


def keras_arrays(name: str) -> dict[str, list[np.ndarray]]:
    """Keras' ``layer.get_weights()`` per layer, from the ``<layer>/<index>`` npz."""
    per_layer: dict[str, dict[int, np.ndarray]] = {}
    with np.load(SMALL / f"{name}.weights.npz") as archive:
        for key in archive.files:
            layer, index = key.rsplit("/", 1)
            per_layer.setdefault(layer, {})[int(index)] = archive[key]
    return {layer: [d[i] for i in sorted(d)] for layer, d in per_layer.items()}


def config_of(name: str) -> dict[str, Any]:
    return json.loads((SMALL / f"{name}.json").read_text())


def assert_same_weights(found: dict[str, list[np.ndarray]], name: str) -> None:
    reference = keras_arrays(name)
    assert sorted(found) == sorted(reference)
    for layer, arrays in reference.items():
        assert len(found[layer]) == len(arrays), layer
        for got, want in zip(found[layer], arrays, strict=True):
            assert got.dtype == np.float32
            assert got.shape == want.shape, layer
            np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=layer)


def without_object_ids(value: Any) -> Any:
    """A config without the ``shared_object_id`` keys that only ``.keras`` archives add."""
    if isinstance(value, dict):
        return {k: without_object_ids(v) for k, v in value.items() if k != "shared_object_id"}
    if isinstance(value, list):
        return [without_object_ids(v) for v in value]
    return value


def layer_names(config: dict[str, Any]) -> list[str]:
    return [entry.get("name", entry["config"].get("name")) for entry in config["config"]["layers"]]


# ---------------------------------------------------------------- good files


def test_fixtures_exist() -> None:
    assert len(MODELS) >= 12


@pytest.mark.parametrize("name", MODELS)
def test_keras_archive_config_and_weights(name: str) -> None:
    model = read_keras_model(SMALL / f"{name}.keras")
    assert isinstance(model, KerasFile)
    assert without_object_ids(model.config) == config_of(name)
    assert model.weights is not None
    assert_same_weights(model.weights, name)


@pytest.mark.parametrize("name", MODELS)
def test_legacy_h5_config_and_weights(name: str) -> None:
    model = read_keras_model(SMALL / f"{name}.h5")
    reference = config_of(name)
    assert model.config["class_name"] == reference["class_name"]
    assert layer_names(model.config) == layer_names(reference)
    assert model.weights is not None
    assert_same_weights(model.weights, name)


@pytest.mark.parametrize("name", MODELS)
def test_weights_h5_with_the_config(name: str) -> None:
    weights = read_keras_weights(SMALL / f"{name}.weights.h5", config_of(name))
    assert_same_weights(weights, name)


@pytest.mark.parametrize("name", MODELS)
def test_weights_h5_by_stored_names(name: str) -> None:
    assert_same_weights(read_keras_weights(SMALL / f"{name}.weights.h5"), name)


@pytest.mark.parametrize("name", MODELS)
def test_json_config_has_no_weights(name: str) -> None:
    model = read_keras_model(SMALL / f"{name}.json")
    assert model.config == config_of(name)
    assert model.weights is None


def test_weights_follow_the_model_order_with_a_config() -> None:
    weights = read_keras_weights(SMALL / "residual.weights.h5", config_of("residual"))
    assert list(weights) == ["conv_a", "bn_a", "conv_b", "shortcut", "bn_b", "predictions"]


def test_variable_order_per_class() -> None:
    """Keras' order: BN gamma, beta, moving mean, moving variance (absent ones left out)."""
    weights = read_keras_model(SMALL / "norms.keras").weights
    assert weights is not None
    conv = read_keras_model(SMALL / "norms.keras").config
    del conv
    shapes = {name: [a.shape for a in arrays] for name, arrays in weights.items()}
    assert shapes["bn"] == [(4,)] * 4
    assert shapes["bn_noscale"] == [(4,)] * 3
    assert shapes["bn_nocenter"] == [(4,)] * 3
    assert shapes["bn_bare"] == [(4,)] * 2
    assert shapes["norm_stored"] == [(3,), (3,), ()]
    assert shapes["layernorm_nocenter"] == [(4,)]
    # moving variances are positive, betas and means are not all positive
    assert np.all(weights["bn_bare"][1] > 0)
    depthwise = read_keras_model(SMALL / "convs.keras").weights
    assert depthwise is not None
    assert [a.shape for a in depthwise["depthwise_m2"]] == [(3, 3, 4, 2), (8,)]
    assert [a.shape for a in depthwise["separable_m2"]] == [(3, 3, 4, 2), (1, 1, 8, 3)]
    assert [a.shape for a in depthwise["grouped"]] == [(3, 3, 2, 6), (6,)]
    up = read_keras_model(SMALL / "upsampling.keras").weights
    assert up is not None
    assert [a.shape for a in up["tconv_same"]] == [(3, 3, 4, 3), (4,)]


def test_nested_models_are_flattened_under_layer_names() -> None:
    model = read_keras_model(SMALL / "nested.keras")
    assert model.weights is not None
    assert {"seq_conv", "seq_bn", "inner_conv", "shared_conv", "logits"} == set(model.weights)
    assert "seq_block" not in model.weights


def test_config_names_take_precedence_over_stored_names() -> None:
    """Keras loads a .weights.h5 by position: a renamed layer still gets its arrays."""
    config = config_of("reshape")
    for entry in config["config"]["layers"]:
        if entry["name"] == "dense":
            entry["name"] = entry["config"]["name"] = "renamed"
    weights = read_keras_weights(SMALL / "reshape.weights.h5", config)
    np.testing.assert_array_equal(weights["renamed"][0], keras_arrays("reshape")["dense"][0])


def test_weights_without_stored_names_need_the_config(tmp_path: Path) -> None:
    path = tmp_path / "m.weights.h5"
    shutil.copy(SMALL / "residual.weights.h5", path)
    with h5py.File(path, "r+") as f:
        groups: list[Any] = []
        f.visititems(lambda name, obj: groups.append(obj) if name.endswith("vars") else None)
        for group in groups:
            del group.attrs["name"]
    assert_same_weights(read_keras_weights(path, config_of("residual")), "residual")
    with pytest.raises(InputError, match=r"names no layer for the weights at layers/.*config"):
        read_keras_weights(path)


def test_read_keras_weights_takes_archives_and_legacy_files() -> None:
    assert_same_weights(read_keras_weights(SMALL / "convs.keras"), "convs")
    assert_same_weights(read_keras_weights(SMALL / "convs.h5"), "convs")


def test_keras2_weights_only_h5(tmp_path: Path) -> None:
    """Keras 2 ``save_weights("w.h5")``: layer_names at the root, ``:0`` suffixes."""
    kernel = np.arange(24, dtype=np.float64).reshape(2, 2, 3, 2)
    bias = np.array([0.5, -1.5])
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"input_1", b"conv"])
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        g = f.create_group("conv")
        g.attrs["weight_names"] = np.array([b"conv/kernel:0", b"conv/bias:0"])
        g.create_dataset("conv/kernel:0", data=kernel)
        g.create_dataset("conv/bias:0", data=bias)
    weights = read_keras_weights(path)
    assert list(weights) == ["conv"]
    np.testing.assert_array_equal(weights["conv"][0], kernel.astype(np.float32))
    np.testing.assert_array_equal(weights["conv"][1], bias.astype(np.float32))
    with pytest.raises(InputError, match="weights only .*--weights"):
        read_keras_model(path)


def test_bfloat16_weights_saved_by_keras() -> None:
    weights = read_keras_weights(SMALL / "bfloat16.weights.h5")
    assert_same_weights(weights, "bfloat16")
    assert_same_weights(read_keras_weights(SMALL / "bfloat16.weights.h5", config_of("bfloat16")), "bfloat16")


def test_bfloat16_variables(tmp_path: Path) -> None:
    """Keras stores bfloat16 as 2 opaque bytes: the high half of the float32."""
    values = np.array([[0.80078125, -0.88671875], [0.28515625, 3.0]], dtype=np.float32)
    high = (values.view(np.uint32) >> 16).astype("<u2")
    path = tmp_path / "bf.weights.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("layers/dense/vars/0", data=high.view("V2"))
        ds.attrs["dtype"] = "bfloat16"
        f["layers/dense/vars"].attrs["name"] = "d"
    np.testing.assert_array_equal(read_keras_weights(path)["d"][0], values)


# ---------------------------------------------------------------- the apps fixtures


@pytest.mark.parametrize("name", sorted(KERAS_TOTALS))
def test_apps_fixtures_match_the_published_totals(name: str) -> None:
    figures = json.loads((APPS / f"{name}.expected.json").read_text())
    assert figures["count_params"] == KERAS_TOTALS[name]
    assert sum(row["count_params"] for row in figures["layers"]) == KERAS_TOTALS[name]
    model = read_keras_model(APPS / f"{name}.json")
    assert layer_names(model.config) == [row["name"] for row in figures["layers"]]


# ---------------------------------------------------------------- bad input


def rezip(source: Path, target: Path, skip: str = "", extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            if info.filename != skip:
                new.writestr(info.filename, old.read(info.filename))
        for member, data in (extra or {}).items():
            new.writestr(member, data)
    return target


def test_archive_without_config(tmp_path: Path) -> None:
    path = rezip(SMALL / "residual.keras", tmp_path / "m.keras", skip="config.json")
    with pytest.raises(InputError, match=r"m\.keras has no config\.json"):
        read_keras_model(path)


def test_archive_with_a_config_that_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "[1, 2]")
    with pytest.raises(InputError, match=r"config\.json is not a Keras model config"):
        read_keras_model(path)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{not json")
    with pytest.raises(InputError, match=r"config\.json is not valid JSON"):
        read_keras_model(path)


def test_archive_without_weights_has_none(tmp_path: Path) -> None:
    path = rezip(SMALL / "residual.keras", tmp_path / "m.keras", skip="model.weights.h5")
    assert read_keras_model(path).weights is None
    with pytest.raises(InputError, match="holds no model.weights.h5"):
        read_keras_weights(path)


def test_truncated_archive(tmp_path: Path) -> None:
    data = (SMALL / "residual.keras").read_bytes()
    path = tmp_path / "m.keras"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"m\.keras is damaged"):
        read_keras_model(path)


def test_archive_member_too_large_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip bomb: 64 MiB of zeros pack into a few kB; the declared size is checked first."""
    bomb = b"\0" * (64 * 2**20)
    path = rezip(
        SMALL / "residual.keras", tmp_path / "m.keras", skip="model.weights.h5",
        extra={"model.weights.h5": bomb},
    )  # fmt: skip
    assert path.stat().st_size < 2**20
    monkeypatch.setattr(keras_files, "MAX_WEIGHTS_BYTES", 2**20)
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    with pytest.raises(InputError, match=r"model\.weights\.h5 unpacks to 67,108,864 bytes"):
        read_keras_model(path)
    assert "model.weights.h5" not in opened


def test_config_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keras_files, "MAX_CONFIG_BYTES", 1000)
    with pytest.raises(InputError, match=r"config\.json unpacks to [\d,]+ bytes; at most 1,000"):
        read_keras_model(SMALL / "residual.keras")
    with pytest.raises(InputError, match=r"residual\.json is [\d,]+ bytes"):
        read_keras_model(SMALL / "residual.json")


@pytest.mark.parametrize("suffix", ["h5", "weights.h5"])
def test_truncated_h5(tmp_path: Path, suffix: str) -> None:
    data = (SMALL / f"convs.{suffix}").read_bytes()
    path = tmp_path / f"m.{suffix}"
    path.write_bytes(data[: len(data) // 3])
    reader = read_keras_model if suffix == "h5" else read_keras_weights
    with pytest.raises(InputError, match=rf"m\.{suffix.replace('.', '.')}.* (is not a readable HDF5|is damaged)"):
        reader(path)


def test_corrupt_h5_bytes(tmp_path: Path) -> None:
    """The magic number survives, the superblock and everything after it are noise."""
    data = bytearray((SMALL / "convs.weights.h5").read_bytes())
    rng = np.random.default_rng(7)
    data[8:] = rng.integers(0, 256, len(data) - 8, dtype=np.uint8).tobytes()
    path = tmp_path / "m.weights.h5"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"m\.weights\.h5"):
        read_keras_weights(path)


@pytest.mark.parametrize(
    ("name", "reader", "seed"),
    [("convs.weights.h5", read_keras_weights, 20240611), ("nested.h5", read_keras_model, 5)],
)
def test_damaged_bytes_give_an_input_error_or_a_result(
    tmp_path: Path, name: str, reader: Any, seed: int
) -> None:
    """A few bytes overwritten anywhere: never anything but InputError (25 files a seed;
    seed 5 damages a link table of nested.h5, where h5py raises RuntimeError)."""
    data = (SMALL / name).read_bytes()
    rng = np.random.default_rng(seed)
    path = tmp_path / name
    for _ in range(25):
        damaged = bytearray(data)
        for where in rng.integers(8, len(data), int(rng.integers(1, 8))):
            damaged[where] = int(rng.integers(0, 256))
        path.write_bytes(bytes(damaged))
        try:
            reader(path)
        except InputError as exc:
            assert str(path) in str(exc)
            assert "\n" not in str(exc)


def test_non_numeric_dataset(tmp_path: Path) -> None:
    path = tmp_path / "m.weights.h5"
    shutil.copy(SMALL / "residual.weights.h5", path)
    with h5py.File(path, "r+") as f:
        group = f["layers/conv2d/vars"]
        del group["0"]
        group.create_dataset("0", data=np.array([b"not", b"numbers"]))
    with pytest.raises(InputError, match=r"layers/conv2d/vars/0 holds \|S7, not numbers"):
        read_keras_weights(path, config_of("residual"))


def test_external_link_is_not_followed(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("secret", data=np.ones(3))
    path = tmp_path / "m.weights.h5"
    shutil.copy(SMALL / "residual.weights.h5", path)
    with h5py.File(path, "r+") as f:
        group = f["layers/conv2d/vars"]
        del group["0"]
        group["0"] = h5py.ExternalLink(str(other), "secret")
    with pytest.raises(InputError, match=r"vars/0 is a link \(ExternalLink\)"):
        read_keras_weights(path, config_of("residual"))


def test_weights_that_match_no_layer(tmp_path: Path) -> None:
    config = config_of("residual")
    config["config"]["layers"] = [e for e in config["config"]["layers"] if e["name"] != "shortcut"]
    with pytest.raises(InputError, match=r"weights at layers/conv2d_2 match no layer"):
        read_keras_weights(SMALL / "residual.weights.h5", config)


def test_hdf5_without_keras_content(tmp_path: Path) -> None:
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.ones(2))
    with pytest.raises(InputError, match="without a Keras model config"):
        read_keras_model(path)
    with pytest.raises(InputError, match="holds no Keras weights"):
        read_keras_weights(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n....", "is not a Keras model: expected a .keras archive"),
        (b"", "is not a Keras model"),
        (b'{"class_name": "Functional", "config": ', "not valid JSON"),
        (b'{"layers": []}', "not a Keras model config"),
        (b"{" + b"[" * 100_000, "not valid JSON"),
        (b'{"a":' * 100_000, "not valid JSON"),
    ],
)
def test_not_a_keras_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_keras_model(path)


def test_weights_file_of_another_format(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"hello")
    with pytest.raises(InputError, match=r"w\.bin is not an HDF5 file"):
        read_keras_weights(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothing\.keras does not exist"):
        read_keras_model(tmp_path / "nothing.keras")
    with pytest.raises(InputError, match="is a directory"):
        read_keras_weights(tmp_path)


def test_missing_h5py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(InputError, match=r'needs h5py: pip install "convcli\[keras\]"'):
        read_keras_model(SMALL / "residual.h5")
    with pytest.raises(InputError, match=r'needs h5py: pip install "convcli\[keras\]"'):
        read_keras_model(SMALL / "residual.keras")
    # A JSON config needs no h5py.
    assert read_keras_model(SMALL / "residual.json").weights is None


def test_errors_are_one_line_and_of_the_family(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ConvcliError) as info:
        read_keras_model(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_module_imports_no_numpy_or_h5py() -> None:
    """``convcli summary`` starts without numpy: importing the reader must not pull it in."""
    import subprocess

    code = (
        "import sys, convcli.keras_files; "
        "print('numpy' in sys.modules, 'h5py' in sys.modules)"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- as users run them

# activations is left out: its act_sparsemax channels are Keras 3.15's sparsemax, which is not
# the paper's (see tests/fixtures/keras/README.md); test_keras_parity.py handles that case.
RUNNABLE = [m for m in MODELS if m != "activations"]
FORMATS = {
    ".keras": lambda name: [str(SMALL / f"{name}.keras")],
    ".h5": lambda name: [str(SMALL / f"{name}.h5")],
    ".json + .weights.h5": lambda name: [
        str(SMALL / f"{name}.json"), "--weights", str(SMALL / f"{name}.weights.h5"),
    ],
}  # fmt: skip


def assert_one_line_error(result: Any, *fragments: str) -> None:
    code = result.returncode if hasattr(result, "returncode") else result.exit_code
    assert code == 2
    stderr = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("name", RUNNABLE)
def test_run_matches_keras_predict(cli: Any, tmp_path: Path, name: str, fmt: str) -> None:
    """``convcli run`` on each Keras file format gives Keras' ``predict`` within 1e-4."""
    out = tmp_path / "out.npy"
    x = SMALL / f"{name}.input.npy"
    model, *weights = FORMATS[fmt](name)
    open_size = ["--input-shape", "6,5,3"] if name == "open_size" else []
    result = cli("run", model, str(x), *weights, *open_size, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    reference = np.load(SMALL / f"{name}.output.npy")
    found = np.load(out)
    assert found.shape == reference.shape
    np.testing.assert_allclose(found, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("suffix", [".keras", ".h5", ".json"])
def test_summary_reads_every_format(cli: Any, suffix: str) -> None:
    figures = json.loads((SMALL / "nested.expected.json").read_text())
    result = cli("summary", str(SMALL / f"nested{suffix}"), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["total_params"] == figures["count_params"] == 323
    assert list(summary["output_shape"]) == figures["output_shape"]


def test_run_with_weights_of_another_model_names_the_layer(cli: Any) -> None:
    result = cli(
        "run", str(SMALL / "residual.json"), str(SMALL / "residual.input.npy"),
        "--weights", str(SMALL / "convs.weights.h5"),
    )  # fmt: skip
    assert_one_line_error(result, "convs.weights.h5", "weights at layers/conv2d_3 match no layer")


def test_run_with_a_kernel_of_the_wrong_shape_names_both_shapes(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "m.weights.h5"
    shutil.copy(SMALL / "residual.weights.h5", path)
    with h5py.File(path, "r+") as f:
        group = f["layers/conv2d_1/vars"]  # conv_b, the second Conv2D of the model
        del group["0"]
        group.create_dataset("0", data=np.zeros((3, 3, 4, 5), np.float32))
    result = cli(
        "run", str(SMALL / "residual.json"), str(SMALL / "residual.input.npy"),
        "--weights", str(path),
    )  # fmt: skip
    assert_one_line_error(result, "conv_b", "(3, 3, 4, 5)", "(3, 3, 4, 4)")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_damaged_file_is_one_line_in_a_real_process(tmp_path: Path, suffix: str) -> None:
    from tests.conftest import run_convcli

    data = (SMALL / f"residual{suffix}").read_bytes()
    path = tmp_path / f"m{suffix}"
    path.write_bytes(data[: len(data) // 2])
    done = run_convcli("summary", str(path))
    assert done.returncode == 2
    assert_one_line_error(done, str(path))


def test_missing_h5py_in_a_real_process(tmp_path: Path) -> None:
    """Without h5py, an HDF5 file is refused with the extra to install."""
    from tests.conftest import run_convcli

    shadow = tmp_path / "shadow" / "h5py"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named h5py')\n")
    root = Path(__file__).resolve().parent.parent
    done = run_convcli(
        "summary", str(SMALL / "residual.h5"),
        env={"PYTHONPATH": f"{root}:{shadow.parent}"},
    )  # fmt: skip
    assert done.returncode == 2
    assert_one_line_error(done, 'pip install "convcli[keras]"')
    json_done = run_convcli(
        "summary", str(SMALL / "residual.json"), env={"PYTHONPATH": f"{root}:{shadow.parent}"}
    )
    assert json_done.returncode == 0, json_done.stderr
