"""Shared fixtures: the CLI as users run it, in-process and as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings
from typer.testing import CliRunner

from convcli.cli import app

# Hypothesis draws its examples from a fixed seed: a failure reproduces on every run and
# machine (the examples printed with it are the ones that fail).
settings.register_profile("convcli", derandomize=True)
settings.load_profile("convcli")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@pytest.fixture
def cli() -> Callable[..., object]:
    """Invoke the Typer app in-process: ``cli("shapes", "--W", "227", ...)``."""
    runner = CliRunner()

    def invoke(*args: str, input: bytes | str | None = None, env: dict[str, str] | None = None):
        return runner.invoke(app, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


def run_convcli(
    *args: str, input: bytes | None = None, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m convcli ARGS`` as a real process (stdin/stdout as bytes)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "convcli", *args],
        input=input,
        capture_output=True,
        cwd=cwd,
        env=full_env,
        timeout=120,
    )


@pytest.fixture
def samples() -> Path:
    return SAMPLES
