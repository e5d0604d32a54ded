from __future__ import annotations

from convcli import __version__
from tests.conftest import run_convcli


def test_version(cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"convcli {__version__}"


def test_help_lists_commands_subprocess() -> None:
    proc = run_convcli("--help")
    assert proc.returncode == 0
    assert b"Usage" in proc.stdout
