"""`convcli run`: the command-line layer over the library core."""

from __future__ import annotations

from convcli.cli._app import app  # noqa: F401
