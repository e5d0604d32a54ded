"""The Typer application, its error boundary and the helpers every command shares.

The ``convcli.cli`` package is the only place that imports typer or rich. Each command
lives in its own module (``cmd_filter``, ``cmd_shapes``, ...) and registers itself on
:data:`app`. Heavy modules (scipy, Pillow) are imported inside the commands that need
them, so ``convcli --help``, ``convcli kernels`` and ``convcli shapes`` start fast.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from typer.core import TyperGroup

from convcli import __version__
from convcli.errors import ConvcliError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

# emoji=False: a file named "holiday:x:photo.png" is printed as it is, not with an emoji
err_console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

#: Failures that bad input, a full disk or a hostile file can cause anywhere: reported as
#: one line like ConvcliError, never as a traceback.
FAILURES: tuple[type[BaseException], ...] = (
    ConvcliError,
    OSError,
    MemoryError,
    RecursionError,
    OverflowError,
    UnicodeError,
)


def describe_failure(exc: BaseException) -> str:
    """The one-line message for a failure in :data:`FAILURES`."""
    if isinstance(exc, ConvcliError):
        return str(exc)
    if isinstance(exc, MemoryError):
        detail = f" ({exc})" if str(exc) else ""
        return f"out of memory{detail}: the input or the model is too large for the memory available"
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply to be processed"
    if isinstance(exc, OverflowError):
        return f"a number is too large: {exc}"
    if isinstance(exc, UnicodeError):
        return f"text that is not valid UTF-8: {exc}"
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename is not None:
            return f"cannot access {exc.filename}: {what}"
        return what
    return str(exc)


def print_error(message: str) -> None:
    """One ``error: ...`` line on stderr; ``message`` is printed as it is (no markup, no emoji)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message.replace("\n", " ")))


def _silence_broken_stdout() -> None:
    """After a broken pipe: send what is left of stdout to /dev/null so the interpreter's
    final flush does not fail again (Python's documented recipe, docs: signal, SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests)
        pass


def _stdout_silenced() -> bool:
    """True when stdout was redirected to /dev/null after a broken pipe."""
    if type(sys.stdout).__name__ == "PacifyFlushWrapper":
        return True
    try:
        out, null = os.fstat(sys.stdout.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):
        return False
    return (out.st_rdev, out.st_ino) == (null.st_rdev, null.st_ino) and not os.isatty(sys.stdout.fileno())


class _Group(TyperGroup):
    """The one error boundary: every failure becomes one line on stderr and exit status 2.

    convcli's own errors, OS errors (read-only folder, full disk), MemoryError,
    RecursionError, OverflowError and decode errors from anywhere, and the option parser's
    usage errors. A broken pipe on stdout exits 0 quietly (as ``cat`` does); Ctrl-C exits
    130 after removing partial files. numpy's RuntimeWarnings never reach stderr.
    """

    def invoke(self, ctx: Any) -> Any:
        from convcli import fileio

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # overflow/invalid value in numpy
                return super().invoke(ctx)
        except BrokenPipeError:
            _silence_broken_stdout()
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            fileio.remove_partial_files()
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except FAILURES as exc:
            fail(describe_failure(exc))
        except ValueError as exc:
            # the system's refusal of a path with a NUL byte (a shell cannot pass one; the
            # test runner and the Python API can); any other ValueError is a bug: let it show
            if "null byte" not in str(exc):
                raise
            fail("a file name contains a NUL byte")

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        from typer._click.exceptions import ClickException

        try:
            result = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        except ClickException as exc:
            if not standalone_mode:
                raise
            if type(exc).__name__ != "NoArgsIsHelpError":  # the help was printed already
                print_error(_usage_message(exc))
            sys.exit(EXIT_BAD_INPUT)
        except SystemExit as exc:
            # rich (and the parser) meet a broken pipe (`convcli --help | head -1`) by sending
            # stdout to /dev/null and exiting 1; a closed pipe is no failure (as for cat)
            if exc.code == 1 and _stdout_silenced():
                sys.exit(0)
            raise
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def _usage_message(exc: Any) -> str:
    """The option parser's error on one line, with where to look for help."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def fail(message: str) -> NoReturn:
    """Print one error line on stderr and exit with status 2 (no traceback)."""
    print_error(message)
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


out_console = Console(highlight=False, soft_wrap=True, emoji=False)


def strict_json(value: object) -> object:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, so that the
    document is strict JSON (``null``), never ``NaN``/``Infinity``.

    >>> strict_json({"a": [1.0, float("nan")], "b": float("inf")})
    {'a': [1.0, None], 'b': None}
    """
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy scalars and arrays
        return strict_json(value.tolist())
    return value


def print_json(document: object) -> None:
    """Print one JSON document on stdout and nothing else (``--json`` everywhere); strict
    JSON: a non-finite number is ``null``."""
    import json

    sys.stdout.write(json.dumps(strict_json(document), indent=2, allow_nan=False) + "\n")
