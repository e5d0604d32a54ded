"""The Typer application, its error boundary and the helpers every command shares.

The ``convcli.cli`` package is the only place that imports typer or rich. Each command
lives in its own module (``cmd_filter``, ``cmd_shapes``, ...) and registers itself on
:data:`app`. Heavy modules (scipy, Pillow) are imported inside the commands that need
them, so ``convcli --help``, ``convcli kernels`` and ``convcli shapes`` start fast.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from convcli import __version__
from convcli.errors import ConvcliError

EXIT_BAD_INPUT = 2

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class _Group(TyperGroup):
    """Catches convcli's own errors at one boundary: one line on stderr, exit status 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ConvcliError as exc:
            fail(str(exc))


def fail(message: str) -> typer.Exit:
    """Print one error line on stderr and exit with status 2 (no traceback)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(EXIT_BAD_INPUT) from None


app = typer.Typer(
    cls=_Group,
    name="convcli",
    help="Image convolution and CNN layer arithmetic, as the lecture teaches them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"convcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Image convolution and CNN layer arithmetic, as the lecture teaches them."""


out_console = Console(highlight=False, soft_wrap=True)


def print_json(document: object) -> None:
    """Print one JSON document on stdout and nothing else (``--json`` everywhere)."""
    import json

    sys.stdout.write(json.dumps(document, indent=2) + "\n")

