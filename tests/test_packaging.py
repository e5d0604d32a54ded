"""The wheel ships the kernel library, and `convcli kernels` finds it from any folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_convcli


def test_pyproject_force_includes_the_kernel_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = config["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["force-include"]["kernels"] == "convcli/_kernels"
    assert "kernels" in config["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]


def test_kernels_from_another_folder(tmp_path: Path) -> None:
    result = run_convcli("kernels", "--json", cwd=tmp_path, env={"CONVCLI_KERNEL_PATH": ""})
    assert result.returncode == 0, result.stderr.decode()
    names = {entry["name"] for entry in json.loads(result.stdout)}
    assert {"box3", "sobel", "curve"} <= names


def test_built_wheel_contains_the_library_and_works_from_elsewhere(tmp_path: Path) -> None:
    """Build the wheel (hatchling, in-process, well under a second), unpack it as a
    site-packages folder, and run `convcli kernels` from an unrelated folder against it."""
    wheel_builder = pytest.importorskip("hatchling.builders.wheel")
    built = list(wheel_builder.WheelBuilder(str(ROOT)).build(directory=str(tmp_path / "dist"), versions=["standard"]))
    assert len(built) == 1
    with zipfile.ZipFile(built[0]) as wheel:
        names = wheel.namelist()
        shipped = {Path(n).name for n in names if n.startswith("convcli/_kernels/")}
        assert {f.name for f in (ROOT / "kernels").glob("*.toml")} <= shipped
        site = tmp_path / "site"
        wheel.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONVCLI_KERNEL_PATH")}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run(
        [sys.executable, "-m", "convcli", "kernels", "box3", "--json"],
        cwd=elsewhere, env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    document = json.loads(result.stdout)
    assert Path(document["path"]) == site / "convcli" / "_kernels" / "box3.toml"
    assert document["matrix"] == [[1 / 9] * 3] * 3


def test_installed_script_finds_the_library_from_any_folder(tmp_path: Path) -> None:
    """The console script of this environment (CI installs the project with plain
    ``pip install .``) lists the kernels from an unrelated folder, with no PYTHONPATH."""
    script = Path(sys.executable).parent / "convcli"
    if not script.exists():
        pytest.skip("convcli is not installed in this environment")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONVCLI_KERNEL_PATH")}
    where = subprocess.run(
        [sys.executable, "-c", "import convcli; print(convcli.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    result = subprocess.run([str(script), "kernels", "box3", "--json"], cwd=tmp_path, env=env, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    document = json.loads(result.stdout)
    assert document["matrix"] == [[1 / 9] * 3] * 3
    if "site-packages" in where:  # a real (not editable) install: the wheel's own copy
        assert Path(document["path"]) == Path(where).parent / "_kernels" / "box3.toml"
