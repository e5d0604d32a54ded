"""Tables fit the width and never cut a name or a number; plain text in a pipe.

The names and numbers to look for come from the summary data (``convcli summary --json``)
and the kernel library, not from the rendered table.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from rich.console import Console

from convcli.cli._tables import Column, TableSpec, fit, print_table, render
from tests.conftest import SAMPLES, run_convcli

BOX_CHARACTERS = re.compile("[\u2500-\u257f\u2580-\u259f]")
"""Unicode's box-drawing and block elements."""


def _summary_document(model: str) -> dict:
    from convcli.spec import load_model
    from convcli.summary import summarize

    return summarize(load_model(model)).to_json()


def _tokens(text: str) -> set[str]:
    return set(text.split())


@pytest.mark.parametrize("columns", [40, 80, 120])
@pytest.mark.parametrize("model", ["vgg16.toml", "alexnet.toml", "lenet5.toml"])
def test_summary_piped_keeps_every_name_and_number(cli, columns: int, model: str) -> None:
    document = _summary_document(str(SAMPLES / model))
    result = cli("summary", str(SAMPLES / model), env={"COLUMNS": str(columns)})
    assert result.exit_code == 0
    out = result.stdout
    tokens = _tokens(out)
    for layer in document["layers"]:
        assert layer["name"] in tokens  # whole, never split or ellipsised
        assert f"{layer['params']:,}" in tokens
        assert "x".join(map(str, layer["output_shape"])) in tokens  # H x W x D
    assert f"{document['total_params']:,}" in tokens
    assert not BOX_CHARACTERS.search(out)
    assert "…" not in out
    # the table fits (the totals' text wraps to fit too)
    widest = max(len(line) for line in out.splitlines())
    if columns >= 80:
        assert widest <= columns
    assert result.stderr == ""  # no note into a pipe (a terminal gets one, see below)


def test_summary_wide_shows_every_column_and_number(cli) -> None:
    document = _summary_document(str(SAMPLES / "vgg16.toml"))
    out = cli("summary", str(SAMPLES / "vgg16.toml"), env={"COLUMNS": "200"}).stdout
    tokens = _tokens(out)
    for layer in document["layers"]:
        assert f"{layer['macs']:,}" in tokens
        if layer["params_unshared"] is not None:
            assert f"{layer['params_unshared']:,}" in tokens


@pytest.mark.parametrize("columns", [40, 80, 120])
def test_kernel_list_keeps_names_and_scales(cli, columns: int) -> None:
    document = json.loads(cli("kernels", "--json").stdout)
    out = cli("kernels", env={"COLUMNS": str(columns)}).stdout
    tokens = _tokens(out)
    for entry in document:
        assert entry["name"] in tokens
        if columns >= 80 and entry.get("scale"):
            assert entry["scale"] in tokens  # 1/4096 whole, never 1/40…
    if columns >= 80:  # at 40 the longest word of a description is wider than the room left
        assert all(len(line) <= columns for line in out.splitlines())
    assert not BOX_CHARACTERS.search(out) and "…" not in out


@pytest.mark.parametrize("columns", [40, 80])
def test_run_table_keeps_layer_names(cli, columns: int) -> None:
    result = cli("run", str(SAMPLES / "digits.toml"), str(SAMPLES / "digit-3.png"), env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    names = [layer["name"] for layer in _summary_document(str(SAMPLES / "digits.toml"))["layers"]]
    tokens = _tokens(out)
    assert all(name in tokens for name in names)
    assert all(len(line) <= columns for line in out.splitlines())
    assert not BOX_CHARACTERS.search(out)


@pytest.mark.parametrize(
    "args",
    [
        ("explain", "--region", "93 139 101; 26 252 196; 135 230 18", "--kernel", "box3"),
        ("kernels", "gaussian7"),
        ("shapes", "--W", "227", "--F", "11", "--S", "4", "--K", "96"),
        ("--help",),
        ("filter", "--help"),
    ],
    ids=["explain", "kernel", "shapes", "help", "filter-help"],
)
def test_piped_output_has_no_box_characters(args: tuple[str, ...]) -> None:
    proc = run_convcli(*args)
    assert proc.returncode == 0
    assert not BOX_CHARACTERS.search(proc.stdout.decode())
    assert "\x1b[" not in proc.stdout.decode()  # no colour codes either


def _spec() -> TableSpec:
    table = TableSpec(
        columns=[
            Column("name"), Column("value", justify="right"), Column("extra", drop=1),
            Column("note", wrap=True), Column("more", drop=2),
        ],
        title="a title that is long enough to wrap between its words at forty columns",
    )
    table.add_row("conv_block_12345", "1,234,567", "x" * 12, "a few words that may wrap", "y" * 10)
    table.add_row("fc", "10", "z", "short", "w")
    return table


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_render_fits_terminal_width_with_box_rules(width: int) -> None:
    lines, left_out = render(_spec(), width, plain=False)
    text = "\n".join(line.plain for line in lines)
    assert all(len(line.plain) <= width for line in lines)
    assert "conv_block_12345" in text.split() and "1,234,567" in text.split()
    assert "─" in text  # a terminal gets a ruled header
    # secondary columns go first, the highest rank first
    if "more" not in left_out and "extra" in left_out:
        pytest.fail("'more' (rank 2) must be left out before 'extra' (rank 1)")


def test_fit_drops_highest_rank_first_then_wraps() -> None:
    spec = _spec()
    # natural: 16 + 9 + 12 + 25 + 10 + 4 gaps of 2 = 80
    assert fit(spec, 80) == ([0, 1, 2, 3, 4], [16, 9, 12, 25, 10])
    kept, widths = fit(spec, 70)  # the note wraps first (narrow_first)
    assert kept == [0, 1, 2, 3, 4] and widths[3] == 15
    kept, _ = fit(spec, 50)
    assert kept == [0, 1, 2, 3]  # "more" (rank 2) left out
    kept, widths = fit(spec, 10)  # nothing more to leave out: essential columns whole
    assert kept == [0, 1, 3] and widths == [16, 9, 5]


def test_print_table_on_a_terminal_console(capsys: pytest.CaptureFixture[str]) -> None:
    from convcli.cli import _app

    console = Console(force_terminal=True, width=40, color_system=None)
    saved = _app.err_console
    _app.err_console = Console(file=sys.stderr, force_terminal=False, soft_wrap=True)
    try:
        print_table(_spec(), console)
    finally:
        _app.err_console = saved
    captured = capsys.readouterr()
    assert "─" in captured.out
    assert all(len(line) <= 40 for line in captured.out.splitlines())
    assert captured.err.startswith("note: left out extra, more")  # in column order
