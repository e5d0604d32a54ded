"""`convcli shapes`: the lecture's worked arithmetic, --json, and the 4.5 that does not fit."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_convcli


def imported_packages(stderr: bytes) -> set[str]:
    """Top-level packages a ``PYTHONPROFILEIMPORTTIME=1`` run imported, from its stderr."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.decode().splitlines()
        if line.startswith("import time:") and "|" in line
    }


def _json(cli, *args: str) -> dict:
    result = cli("shapes", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_alexnet_conv1_worked_out(cli) -> None:
    result = cli("shapes", "--W", "227", "--F", "11", "--S", "4", "--D", "3", "--K", "96")
    assert result.exit_code == 0
    out = " ".join(result.stdout.split())  # the table may wrap on narrow terminals
    assert "(227 - 11 + 2*0)/4 + 1 = 55" in out
    assert "55 x 55 x 96" in out
    assert "290,400" in out
    assert "11 * 11 * 3 = 363 (+1 bias)" in out
    assert "96 * 363 + 96 = 34,944" in out
    assert "290,400 * 364 = 105,705,600" in out
    assert "290,400 * 363 = 105,415,200" in out  # multiply-accumulates


def test_alexnet_conv1_json(cli) -> None:
    doc = _json(cli, "--W", "227", "--F", "11", "--S", "4", "--D", "3", "--K", "96")
    assert doc["output"] == {"height": 55, "width": 55, "depth": 96}
    assert doc["neurons"] == 290_400
    assert doc["weights_per_filter"] == 363
    assert doc["params_shared"] == 34_944
    assert doc["params_unshared"] == 105_705_600
    assert doc["macs"] == 105_415_200 and doc["flops"] == 2 * 105_415_200


def test_cs231n_demo(cli) -> None:
    # cs231n's animated demo: 5x5x3 input, two 3x3 filters, padding 1, stride 2 -> 3x3x2
    doc = _json(cli, "--W", "5", "--F", "3", "--S", "2", "--P", "1", "--D", "3", "--K", "2")
    assert doc["output"] == {"height": 3, "width": 3, "depth": 2}
    assert doc["neurons"] == 18
    assert doc["weights_per_filter"] == 27
    assert doc["params_shared"] == 2 * 27 + 2


def test_pooling(cli) -> None:
    doc = _json(cli, "--W", "224", "--F", "2", "--S", "2", "--D", "64", "--pool")
    assert doc["output"] == {"height": 112, "width": 112, "depth": 64}
    assert doc["params_shared"] == 0
    result = cli("shapes", "--W", "224", "--F", "2", "--S", "2", "--D", "64", "--pool")
    assert "(224 - 2)/2 + 1 = 112" in result.stdout
    assert "112 x 112 x 64" in result.stdout


def test_rectangular_same_and_dilation(cli) -> None:
    doc = _json(cli, "--W", "32", "--H", "16", "--F", "3", "--P", "1", "--K", "8")
    assert doc["output"] == {"height": 16, "width": 32, "depth": 8}
    # Keras same: ceil(224/4) = 56, total padding (56-1)*4 + 11 - 224 = 7: 3 before, 4 after
    doc = _json(cli, "--W", "224", "--F", "11", "--S", "4", "--P", "same", "--K", "96")
    assert doc["output"]["width"] == 56
    assert doc["padding"] == {"top": 3, "bottom": 4, "left": 3, "right": 4}
    # a 3x3 filter with dilation 2 covers 5x5: (10 - 5)/1 + 1 = 6
    doc = _json(cli, "--W", "10", "--F", "3", "--dilation", "2")
    assert doc["output"]["width"] == 6 and doc["effective_kernel"] == 5
    assert doc["weights_per_filter"] == 27  # dilation spreads the weights, it adds none


def test_four_and_a_half_does_not_fit(cli) -> None:
    result = cli("shapes", "--W", "10", "--F", "3", "--S", "2", "--P", "0")
    assert result.exit_code == 2
    assert result.stdout == ""
    err = " ".join(result.stderr.split())
    assert err.startswith("error:")
    assert "(10 - 3 + 2*0)/2 + 1 = 4.5 is not an integer" in err
    assert "Paddings that fit with S=2: none" in err  # 7 + 2P is always odd
    assert "strides that fit with P=0: 1, 7" in err


def test_not_fitting_lists_nearest_paddings(cli) -> None:
    result = cli("shapes", "--W", "10", "--F", "3", "--S", "3", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    assert "Paddings that fit with S=3: 1, 4, 7" in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--W", "0", "--F", "3"), "W must be a positive integer"),
        (("--W", "10", "--F", "3", "--P", "bogus"), "Unknown value for P. Allowed values are: a non-negative integer, same, valid. Received: P=bogus"),
        (("--W", "10", "--F", "3", "--P", "-1"), "P must be a non-negative integer"),
        (("--W", "3", "--F", "5"), "larger than the padded width 3"),
        (("--W", "10", "--F", "3", "--K", "0"), "K must be a positive integer"),
    ],
)
def test_bad_arguments(cli, args: tuple[str, ...], message: str) -> None:
    result = cli("shapes", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_subprocess_json_and_no_numpy_at_start_up() -> None:
    proc = run_convcli(
        "shapes", "--W", "227", "--F", "11", "--S", "4", "--K", "96", "--json",
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["params_unshared"] == 105_705_600
    imported = imported_packages(proc.stderr)
    assert "convcli" in imported  # the measurement works
    assert not imported & {"numpy", "scipy", "PIL"}, os.linesep.join(sorted(imported))
