from __future__ import annotations

import os
import subprocess
import sys

import pytest

from convcli import __version__
from tests.conftest import ROOT, run_convcli


def test_version(cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"convcli {__version__}"


def test_help_lists_commands_subprocess() -> None:
    proc = run_convcli("--help")
    assert proc.returncode == 0
    assert b"Usage" in proc.stdout


COMMANDS = ["filter", "kernels", "explain", "shapes", "summary", "run", "loss"]


def test_help_lists_every_command_with_a_description(cli) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    for command in COMMANDS:
        row = next((line for line in lines if f" {command} " in line), None)
        assert row is not None, f"{command} missing from --help"
        # the row carries a one-line description after the command name
        assert len(row.split(command, 1)[1].strip(" │")) > 10


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(cli, command: str) -> None:
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def _imported_modules(*args: str) -> set[str]:
    """Top-level packages a real ``convcli ARGS`` process imports (from ``-X importtime``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "convcli", *args],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    names = set()
    for line in proc.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("kernels",),
        ("shapes", "--W", "227", "--F", "11", "--S", "4", "--K", "96"),
    ],
    ids=["help", "kernels", "shapes"],
)
def test_fast_commands_do_not_import_scipy_or_pillow(args: tuple[str, ...]) -> None:
    imported = _imported_modules(*args)
    assert "typer" in imported  # the measurement works
    assert not imported & {"scipy", "PIL"}
