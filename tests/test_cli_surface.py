"""The surface every command shares: -V, -q, examples in --help, choices shown, one
meaning per short option, long option spellings, models from stdin, output folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer

from convcli import __version__
from convcli.cli import app
from tests.conftest import SAMPLES, run_convcli

COMMANDS = ["filter", "kernels", "explain", "shapes", "summary", "run", "loss"]


def _click_commands() -> dict[str, Any]:
    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def test_short_version_flag(cli) -> None:
    for flag in ("-V", "--version"):
        result = cli(flag)
        assert result.exit_code == 0 and result.stdout == f"convcli {__version__}\n"


# every registered command, a new one included
@pytest.mark.parametrize("command", [*COMMANDS, *sorted(set(_click_commands()) - set(COMMANDS))])
def test_help_ends_with_two_to_four_examples(command: str) -> None:
    proc = run_convcli(command, "--help")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    tail = text[text.rindex("Examples:"):].splitlines()[1:]
    examples = [line.strip() for line in tail if line.strip()]
    assert 2 <= len(examples) <= 4
    assert all(line.startswith(f"convcli {command}") or f"| convcli {command}" in line for line in examples)


def test_choices_are_shown_in_help() -> None:
    for command in ("filter", "explain"):
        text = run_convcli(command, "--help").stdout.decode()
        assert "[reflect|constant|nearest|mirror|wrap]" in text
    assert "binary-crossentropy|categorical-crossentropy]" in run_convcli("loss", "--help").stdout.decode()


def test_one_meaning_per_short_option() -> None:
    meaning: dict[str, tuple[str, str]] = {}
    for name, command in _click_commands().items():
        for param in command.params:
            if param.param_type_name != "option":
                continue
            longs = sorted((o for o in param.opts if o.startswith("--")), key=len, reverse=True)
            for short in (o for o in param.opts if len(o) == 2 and o[0] == "-" and o[1] != "-"):
                first = meaning.setdefault(short, (longs[0], name))
                assert first[0] == longs[0], (
                    f"{short} is {first[0]} in {first[1]} but {longs[0]} in {name}"
                )
    assert meaning["-p"][0] == "--padding" and meaning["-q"][0] == "--quiet"


def test_quiet_silences_notes(cli, tmp_path: Path) -> None:
    args = ["run", str(SAMPLES / "digits.toml"), str(SAMPLES / "digit-3.png"), "-o", str(tmp_path / "out.npy")]
    loud = cli(*args)
    assert loud.exit_code == 0 and "note: wrote" in loud.stderr
    for quiet in (["-q", *args], [*args, "--quiet"]):
        result = cli(*quiet)
        assert result.exit_code == 0 and result.stderr == ""
        assert result.stdout.splitlines()[1].split()[0] == "Layer"  # the table itself stays
    errors = cli("-q", "run", str(SAMPLES / "digits.toml"), "missing.png")
    assert errors.exit_code == 2 and errors.stderr.startswith("error:")  # errors are never silenced


@pytest.mark.parametrize(
    "args",
    [
        ["--width", "227", "--kernel-size", "11", "--stride", "4", "--depth", "3", "--filters", "96"],
        ["--W", "227", "--F", "11", "--S", "4", "--D", "3", "--K", "96"],
        ["--w", "227", "--f", "11", "-s", "4", "--d", "3", "--k", "96"],
        ["--WIDTH", "227", "--Kernel-Size", "11", "--stride", "4", "--filters", "96"],
    ],
    ids=["long", "lecture", "lowercase", "any-case"],
)
def test_shapes_spellings_agree(cli, args: list[str]) -> None:
    doc = json.loads(cli("shapes", *args, "--json").stdout)
    # the lecture's AlexNet conv1: 55x55x96, 34,944 shared parameters
    assert doc["output"] == {"height": 55, "width": 55, "depth": 96}
    assert doc["params_shared"] == 34_944


def test_shapes_prints_height_first(cli) -> None:
    # width 32, height 16: (16 - 3 + 2)/1 + 1 = 16 rows, 32 columns
    out = cli("shapes", "--width", "32", "--height", "16", "--kernel-size", "3", "--padding", "1",
              "--filters", "8").stdout
    assert "input 16x32x3" in out
    assert "16 x 32 x 8" in out
    assert out.index("output height") < out.index("output width")


TOML_MODEL = (SAMPLES / "lenet5.toml").read_text()


@pytest.mark.parametrize(
    "stdin",
    [
        TOML_MODEL,
        "INPUT(32,32,1) => CONV(6,5) => RELU => POOL(2) => CONV(16,5) => RELU => POOL(2) => FC(120) => FC(84) => FC(10)",
        (SAMPLES / "keras" / "lenet5_tfjs_model.json").read_text(),
    ],
    ids=["toml", "arrow", "keras-json"],
)
def test_summary_reads_a_model_from_stdin(cli, stdin: str) -> None:
    result = cli("summary", "-", "--json", input=stdin)
    assert result.exit_code == 0, result.stderr
    # LeNet-5 (32x32 input): 61,706 parameters in every spelling
    assert json.loads(result.stdout)["total_params"] == 61_706


def test_summary_stdin_empty_is_one_error_line(cli) -> None:
    result = cli("summary", "-", input="")
    assert result.exit_code == 2
    assert result.stderr == "error: stdin is empty: nothing to read as a model (MODEL -)\n"


def test_run_reads_the_model_from_stdin(cli) -> None:
    from_file = json.loads(cli("run", str(SAMPLES / "digits.toml"), str(SAMPLES / "digit-7.png"), "--json").stdout)
    toml = (SAMPLES / "digits.toml").read_text()
    # the model names its weights relative to its folder; on stdin give them with --weights
    weights = from_file["weights"]
    result = cli("run", "-", str(SAMPLES / "digit-7.png"), "--weights", weights, "--json", input=toml)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["output"] == from_file["output"]
    both = cli("run", "-", "-", input=toml)
    assert both.exit_code == 2 and "not both" in both.stderr


def test_output_folders_are_made_alike(cli, tmp_path: Path) -> None:
    out_dir = tmp_path / "new" / "filtered"
    maps = tmp_path / "new" / "maps"
    filtered = cli("filter", str(SAMPLES / "digit-1.png"), str(SAMPLES / "digit-2.png"), "-k", "box3",
                   "--out-dir", str(out_dir))
    assert filtered.exit_code == 0, filtered.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["digit-1.png", "digit-2.png"]
    ran = cli("run", str(SAMPLES / "digits.toml"), str(SAMPLES / "digit-7.png"), "--save-maps", str(maps))
    assert ran.exit_code == 0, ran.stderr
    assert any(maps.iterdir())
    # a file where the folder should be: the same refusal from both
    blocker = tmp_path / "file"
    blocker.write_text("x")
    a = cli("filter", str(SAMPLES / "digit-1.png"), str(SAMPLES / "digit-2.png"), "-k", "box3", "--out-dir", str(blocker))
    b = cli("run", str(SAMPLES / "digits.toml"), str(SAMPLES / "digit-7.png"), "--save-maps", str(blocker))
    assert a.exit_code == b.exit_code == 2
    assert a.stderr == f"error: --out-dir: {blocker} exists and is not a folder\n"
    assert b.stderr == f"error: --save-maps: {blocker} exists and is not a folder\n"
