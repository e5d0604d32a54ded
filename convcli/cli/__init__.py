"""The command-line interface: ``convcli.cli:main`` is the console script.

Importing this package registers every command on the Typer app. Each ``cmd_*`` module
keeps its heavy imports (scipy, Pillow) inside its command functions.
"""

from __future__ import annotations

import sys

from convcli.cli import (  # noqa: F401  (importing a module registers its commands)
    cmd_explain,
    cmd_filter,
    cmd_kernels,
    cmd_loss,
    cmd_run,
    cmd_shapes,
    cmd_summary,
    cmd_train,
)
from convcli.cli._app import app, fail

__all__ = ["app", "fail", "main"]


def main() -> None:
    """Console-script entry point."""
    from convcli import fileio

    fileio.install_signal_cleanup()
    try:
        app()
    except BrokenPipeError:  # e.g. `convcli kernels | head -1`
        sys.stderr.close()
        sys.exit(0)
