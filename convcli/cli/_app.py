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


def _help_markup() -> Any:
    """Rich help (panels, colours) on a terminal; click's plain help in a pipe or a file."""
    isatty = getattr(sys.stdout, "isatty", None)
    return "rich" if isatty is not None and isatty() else None


app = typer.Typer(
    cls=_Group,
    rich_markup_mode=_help_markup(),
    name="convcli",
    help="Image convolution and CNN layer arithmetic, as the lecture teaches them.",
    no_args_is_help=True,
    # shell completion (--install-completion) costs start-up nothing measurable: the same
    # 210 modules load for `convcli shapes` with and without it, CPU time within noise
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"convcli {__version__}")
        raise typer.Exit()


_quiet = False


def _set_quiet(value: bool) -> None:
    global _quiet
    if value:
        _quiet = True


QUIET_HELP = "Print no notes on stderr (errors still show)."


def quiet_option() -> Any:
    """``-q/--quiet`` for a command (the same switch as ``convcli -q COMMAND``)."""
    return typer.Option(False, "--quiet", "-q", callback=_set_quiet, expose_value=False, help=QUIET_HELP)


def note(message: str) -> None:
    """A note for the user on stderr (not an error; ``-q`` silences it)."""
    if not _quiet:
        err_console.print(f"note: {escape(message)}", highlight=False)


def examples(*lines: str) -> str:
    """The epilog of a command's ``--help``: its examples, one command a line."""
    if _help_markup() is None:  # click rewraps paragraphs unless they start with \b
        return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
    return "[bold]Examples:[/bold]\n" + "\n".join(f"  {escape(line)}" for line in lines)


@app.callback(
    epilog=examples(
        "convcli filter samples/astronaut.png -k sobel -o edges.png",
        "convcli shapes --width 227 --kernel-size 11 --stride 4 --filters 96",
        "convcli summary samples/vgg16.toml",
        "convcli run samples/digits.toml samples/digit-7.png",
    )
)
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Image convolution and CNN layer arithmetic, as the lecture teaches them."""
    global _quiet
    _quiet = quiet


out_console = Console(highlight=False, soft_wrap=True)


def print_json(document: object) -> None:
    """Print one JSON document on stdout and nothing else (``--json`` everywhere)."""
    import json

    sys.stdout.write(json.dumps(document, indent=2) + "\n")

