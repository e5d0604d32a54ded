"""`convcli loss` through the CLI: in-process and as a real process reading stdin."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_convcli


def test_lecture_student_binary_crossentropy(cli) -> None:
    result = cli("loss", "binary-crossentropy", "--true", "1", "--pred", "0.87")
    assert result.exit_code == 0, result.stderr
    assert "binary-crossentropy = 0.139262" in result.stdout
    assert "ln(p_i)" in result.stdout  # the formula used is printed
    assert "keras.losses.binary_crossentropy" in result.stdout


def test_lecture_student_absolute_error(cli) -> None:
    result = cli("loss", "mae", "--true", "1.00", "--pred", "0.87")
    assert result.exit_code == 0, result.stderr
    assert "mae = 0.13\n" in result.stdout


def test_json_document(cli) -> None:
    result = cli(
        "loss", "categorical-crossentropy",
        "--true", "1 0 0; 0 1 0",
        "--pred", "0.7 0.2 0.1; 0.1 0.8 0.1",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["name"] == "categorical-crossentropy"
    assert document["per_sample"] == pytest.approx([-math.log(0.7), -math.log(0.8)])
    assert document["value"] == pytest.approx((-math.log(0.7) - math.log(0.8)) / 2)
    assert document["samples"] == 2
    assert document["shape"] == [2, 3]


def test_human_output_lists_per_sample_values(cli) -> None:
    result = cli("loss", "mse", "--true", "1 2; 3 4", "--pred", "1 3; 3 6")
    assert result.exit_code == 0, result.stderr
    assert "mse = 1.25" in result.stdout  # (0 + 1)/2 = 0.5 and (0 + 4)/2 = 2
    assert "sample 0: 0.5" in result.stdout
    assert "sample 1: 2" in result.stdout


def test_files_csv_and_npy(cli, tmp_path: Path) -> None:
    (tmp_path / "y.csv").write_text("10,20\n30,40\n")
    np.save(tmp_path / "p.npy", np.array([[11.0, 18.0], [30.0, 44.0]]))
    y, p = str(tmp_path / "y.csv"), str(tmp_path / "p.npy")
    result = cli("loss", "mape", "--true", y, "--pred", p, "--json")
    assert result.exit_code == 0, result.stderr
    # 100 * mean(1/10, 2/20) = 10 ; 100 * mean(0, 4/40) = 5
    assert json.loads(result.stdout)["per_sample"] == pytest.approx([10.0, 5.0])


def test_stdin_in_process(cli) -> None:
    result = cli("loss", "mse", "--true", "-", "--pred", "0 0; 0 0", "--json", input="1 2\n3 4\n")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["value"] == pytest.approx((1 + 4 + 9 + 16) / 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("mse", "--true", "1 2 3", "--pred", "1 2"), "true shape=(3,), pred shape=(2,)"),
        (("hinge", "--true", "1", "--pred", "1"), "Allowed values are: mse, mae"),
        (("mse", "--true", "1 x", "--pred", "1 2"), "'x' is not a number"),
        (("mse", "--true", "nothere.csv", "--pred", "1"), "no such file: nothere.csv"),
        (("mse", "--true", "-", "--pred", "-"), "only one of --true and --pred"),
        (
            ("categorical-crossentropy", "--true", "1; 0", "--pred", "0.9; 0.1"),
            "at least 2 classes",
        ),
    ],
)
def test_errors_exit_2_with_one_line(cli, args: tuple[str, ...], message: str) -> None:
    result = cli("loss", *args, input="")
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_subprocess_reads_predictions_from_stdin() -> None:
    proc = run_convcli(
        "loss", "binary-crossentropy", "--true", "1; 0", "--pred", "-", "--json", input=b"0.87\n0.2\n"
    )
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["per_sample"] == pytest.approx([-math.log(0.87), -math.log(0.8)])
    assert proc.stderr == b""


def test_subprocess_reads_npy_from_stdin() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([[0.0, 1.0, 0.0]], dtype=np.float32))
    proc = run_convcli(
        "loss", "categorical-crossentropy", "--true", "-", "--pred", "0.2 0.5 0.3", input=buffer.getvalue()
    )
    # one row from the .npy (shape (1, 3)) against one inline row (shape (3,)): one sample
    assert proc.returncode == 0, proc.stderr
    assert b"categorical-crossentropy = 0.693147" in proc.stdout
    proc = run_convcli(
        "loss", "categorical-crossentropy", "--true", "-", "--pred", "0.2 0.5 0.3; 0.2 0.5 0.3",
        input=_npy(np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert b"categorical-crossentropy = " in proc.stdout
    value = float(proc.stdout.split(b"= ", 1)[1].split()[0])
    assert value == pytest.approx((-math.log(0.5) - math.log(0.2)) / 2, rel=1e-5)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
