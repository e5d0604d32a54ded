"""Every ```console example in README.md and docs/*.md runs as shown, so the docs cannot rot.

A block holds commands (``$ ...``) each followed by its expected output (stdout and stderr
as a terminal would interleave them, into a pipe: plain tables at 80 columns). Each page
runs in a fresh folder holding the bundled ``samples/``, with ``convcli`` on PATH; the
commands of a page run in order, so a file one example writes can be read by the next.

Comparison: whitespace runs are equal to each other (tables realign when a number gets a
digit longer), and ``...`` in the expected output stands for any text (timings: run's ms
column, "forward pass ... ms"; absolute paths).

To rewrite the outputs after a change of the commands (then read the diff):
``python -m tests.test_docs --update [FILE.md ...]``
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "samples" / "README.md"]
FENCE = re.compile(r"^```console\n(.*?)^```$", re.M | re.S)


@dataclass
class Example:
    command: str
    expected: str
    start: int  # offsets of the output in the page, for --update
    end: int


def examples(text: str) -> list[Example]:
    """The commands of a page's ```console blocks, with their expected outputs."""
    found = []
    for block in FENCE.finditer(text):
        body_start = block.start(1)
        pieces = list(re.finditer(r"^\$ (.*)\n", block.group(1), re.M))
        for n, piece in enumerate(pieces):
            out_start = body_start + piece.end()
            out_end = body_start + pieces[n + 1].start() if n + 1 < len(pieces) else block.end(1)
            found.append(Example(piece.group(1), text[out_start:out_end], out_start, out_end))
    return found


def _environment(folder: Path) -> dict[str, str]:
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "convcli"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m convcli "$@"\n')
    shim.chmod(0o755)
    python = Path(sys.executable).parent
    env = dict(os.environ)
    env.update(
        PATH=os.pathsep.join([str(bin_dir), str(python), env.get("PATH", "")]),
        PYTHONPATH=str(ROOT),
        COLUMNS="80",
        NO_COLOR="1",
        PYTHONHASHSEED="0",
    )
    env.pop("CONVCLI_KERNEL_PATH", None)
    return env


def run_page(path: Path, folder: Path) -> list[tuple[Example, str]]:
    """Run every example of ``path`` in ``folder``; (example, actual output) pairs."""
    shutil.copytree(ROOT / "samples", folder / "samples")  # 2 MB; paths stay inside the folder
    env = _environment(folder)
    results = []
    for example in examples(path.read_text()):
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", example.command],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
        )
        results.append((example, proc.stdout.decode(errors="replace")))
    return results


def _pattern(expected: str) -> re.Pattern[str]:
    parts = []
    for token in expected.split():
        if re.fullmatch(r"-{2,}", token):  # a table rule: as wide as its column's widest cell
            parts.append("-{2,}")
            continue
        pieces = token.split("...")
        parts.append(".*?".join(re.escape(p) for p in pieces))
    return re.compile(r"\s*" + r"\s+".join(parts) + r"\s*", re.S)


def matches(expected: str, actual: str) -> bool:
    """Whitespace-insensitive match; ``...`` matches any text, and a table's rule any rule
    (a timing column widens by a digit on a busy machine)."""
    return _pattern(expected).fullmatch(actual) is not None


_TIMING = [
    (re.compile(r"forward pass [\d.]+ ms; wall time [\d.]+ ms"), "forward pass ... ms; wall time ... ms"),
]


def mask(command: str, output: str) -> str:
    """Replace what changes from run to run (timings) by ``...`` (for --update)."""
    for pattern, replacement in _TIMING:
        output = pattern.sub(replacement, output)
    output = output.replace(str(ROOT), "...")  # where the checkout happens to be
    lines = output.split("\n")
    ms_end = None
    for n, line in enumerate(lines):
        header = re.match(r"^Layer\s.*?\bms\b", line)
        if header:
            ms_end = header.end()
            continue
        if ms_end is None or not line.strip():
            ms_end = None if not line.strip() else ms_end
            continue
        if set(line.strip()) <= {"-", " "}:
            continue
        if line.startswith("total"):  # the footer ends the layer table
            lines[n] = re.sub(r"^total(\s+)[\d.]+", r"total\1...", line)
            ms_end = None
            continue
        # the token ending at the ms column (numbers are right-aligned under the header)
        token = re.search(r"(\S+)$", line[:ms_end])
        if token and re.fullmatch(r"[\d.]+", token.group(1)):
            lines[n] = line[: token.start(1)] + "..." + line[token.end(1):]
    return "\n".join(lines)


OPTIONAL_TOOLS = ("jq", "file")
"""Tools some examples pipe into; an example using one that is not installed is not checked."""


def _missing_tool(command: str) -> str | None:
    for tool in OPTIONAL_TOOLS:
        if re.search(rf"(^|[|;&]\s*){tool}\b", command) and not shutil.which(tool):
            return tool
    return None


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_console_examples_run_as_shown(page: Path, tmp_path: Path) -> None:
    if not shutil.which("bash"):
        pytest.skip("bash is needed to run the examples")
    failures = []
    for example, actual in run_page(page, tmp_path):
        if _missing_tool(example.command):
            continue
        if not matches(example.expected, actual):
            failures.append(f"$ {example.command}\n--- expected\n{example.expected}--- got\n{actual}")
    assert not failures, f"{len(failures)} example(s) of {page.name} differ:\n\n" + "\n".join(failures)


def test_pages_have_examples() -> None:
    counts = {p.relative_to(ROOT).as_posix(): len(examples(p.read_text())) for p in PAGES}
    assert counts["README.md"] >= 4
    assert sum(counts.values()) >= 40


@pytest.mark.parametrize(
    "expected, actual, ok",
    [
        ("a  b\n", "a b", True),
        ("x ... z\n", "x 12.5 ms z\n", True),
        ("x ... z\n", "x y\n", False),
        ("total ...\n", "total 0.78\n", True),
        ("1,234\n", "1,235\n", False),
    ],
)
def test_matching_rules(expected: str, actual: str, ok: bool) -> None:
    assert matches(expected, actual) is ok


def _update(paths: list[Path]) -> None:
    for path in paths:
        text = path.read_text()
        with tempfile.TemporaryDirectory() as folder:
            results = run_page(path, Path(folder))
        for example, actual in reversed(results):
            if matches(example.expected, actual):
                continue
            new = "\n".join(line.rstrip() for line in mask(example.command, actual).split("\n"))
            if new and not new.endswith("\n"):
                new += "\n"
            text = text[: example.start] + new + text[example.end:]
        path.write_text(text)
        print(f"{path.relative_to(ROOT)}: {len(results)} examples")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--update"]
    if "--update" in sys.argv:
        _update([Path(a).resolve() for a in args] or PAGES)
