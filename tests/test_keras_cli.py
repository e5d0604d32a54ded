"""Keras files from the command line: ``.keras``, legacy ``.h5`` and ``.json`` + ``.weights.h5``
for ``convcli summary`` and ``convcli run`` (outputs against Keras' own predict, saved by
tests/fixtures/keras/small_models.py), and their refusals."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

SMALL = Path(__file__).parent / "fixtures" / "keras" / "small"
pytest.importorskip("h5py")


def _run(cli, tmp_path: Path, *args: str) -> np.ndarray:
    out = tmp_path / "out.npy"
    result = cli("run", *args, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    return np.load(out)


@pytest.mark.parametrize("name", ["residual", "branches", "nested", "norms", "convs"])
@pytest.mark.parametrize("form", ["keras", "h5", "json+weights.h5"])
def test_run_keras_files_matches_keras_predict(cli, tmp_path: Path, name: str, form: str) -> None:
    x = str(SMALL / f"{name}.input.npy")
    if form == "json+weights.h5":
        args = [str(SMALL / f"{name}.json"), x, "--weights", str(SMALL / f"{name}.weights.h5")]
    else:
        args = [str(SMALL / f"{name}.{form}"), x]
    out = _run(cli, tmp_path, *args)
    reference = np.load(SMALL / f"{name}.output.npy")
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["keras", "h5"])
def test_summary_of_keras_files_gives_keras_totals(cli, form: str) -> None:
    expected = json.loads((SMALL / "branches.expected.json").read_text())
    result = cli("summary", str(SMALL / f"branches.{form}"), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["total_params"] == expected["count_params"]


def test_weights_flag_overrides_the_files_own(cli, tmp_path: Path) -> None:
    model = SMALL / "residual.keras"
    x = str(SMALL / "residual.input.npy")
    own = _run(cli, tmp_path, str(model), x)
    saved = tmp_path / "w.npz"
    assert cli("run", str(model), x, "--save-weights", str(saved)).exit_code == 0
    with np.load(saved) as archive:
        doubled = {key: archive[key] * 2 for key in archive.files}
    np.savez(tmp_path / "doubled.npz", **doubled)
    other = _run(cli, tmp_path, str(model), x, "--weights", str(tmp_path / "doubled.npz"))
    assert not np.allclose(own, other)
    # the saved .npz holds the .keras file's own weights: running with it gives the same output
    np.testing.assert_allclose(_run(cli, tmp_path, str(model), x, "--weights", str(saved)), own, rtol=1e-6)


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_archive_without_config_is_refused(cli, tmp_path: Path) -> None:
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(SMALL / "residual.keras") as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            if item.filename != "config.json":
                target.writestr(item, source.read(item))
    _one_line_error(cli("summary", str(broken)), "broken.keras")


def test_truncated_h5_is_refused(cli, tmp_path: Path) -> None:
    data = (SMALL / "residual.h5").read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    _one_line_error(cli("run", str(cut), str(SMALL / "residual.input.npy")), "cut.h5")


def test_weights_of_another_model_name_the_layer_and_both_shapes(cli) -> None:
    result = cli("run", str(SMALL / "residual.json"), str(SMALL / "residual.input.npy"),
                 "--weights", str(SMALL / "convs.weights.h5"))
    _one_line_error(result, "convs.weights.h5")


def test_a_lambda_layer_is_refused_by_name_and_never_run(cli) -> None:
    result = cli("summary", str(SMALL / "lambda.keras"))
    _one_line_error(result, "Lambda")
