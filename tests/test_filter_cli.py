"""`convcli filter` end to end: results against scipy.ndimage.correlate, options, batch, errors.

Reference values are computed here, in float64, with scipy.ndimage.correlate on pixels
decoded by Pillow directly; the command's integer outputs must equal them rounded to
nearest and clipped (a difference of 1 is allowed only where the float64 value lies within float32 rounding
of a .5 tie, which float32 arithmetic may round the other way).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from convcli.cli.cmd_filter import Step, output_size, parse_padding, refuses_terminal
from convcli.errors import InputError, ShapeError
from tests.conftest import ROOT, run_convcli

SAMPLES = ROOT / "samples"
BOX3 = np.full((3, 3), 1 / 9)
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
SOBEL_Y = SOBEL_X.T
# No symmetry at all: a flipped kernel (convolution instead of correlation) would differ.
TILTED = np.array([[1, 2, 0], [-1, 3, 1], [0, 0, -2]], dtype=np.float64)
TILTED_TEXT = "1 2 0; -1 3 1; 0 0 -2"
MODES = ["reflect", "constant", "nearest", "mirror", "wrap"]


def pixels(path: Path | bytes) -> tuple[np.ndarray, str]:
    """Decoded pixels (H, W, C) and mode, straight from Pillow."""
    source = io.BytesIO(path) if isinstance(path, bytes) else path
    with Image.open(source) as image:
        array = np.asarray(image)
        mode = image.mode
    return (array[:, :, None] if array.ndim == 2 else array), mode


def reference(
    image: np.ndarray, weights: np.ndarray, mode: str = "reflect", cval: float = 0.0
) -> np.ndarray:
    """Per-channel scipy.ndimage.correlate in float64."""
    image = image.astype(np.float64)
    return np.stack(
        [
            ndimage.correlate(image[:, :, c], weights, mode=mode, cval=cval)
            for c in range(image.shape[2])
        ],
        axis=-1,
    )


def float32_tolerance(exact: np.ndarray) -> float:
    """What float32 arithmetic may lose on sums of this size (a few float32 ulps of the largest)."""
    return max(1e-3, 4e-7 * float(np.abs(exact).max()))


def assert_raw(actual: np.ndarray, exact: np.ndarray) -> None:
    """Raw float32 results equal the float64 reference to float32 rounding."""
    assert actual.dtype == np.float32 and actual.shape == exact.shape
    np.testing.assert_allclose(actual, exact, rtol=1e-6, atol=float32_tolerance(exact))


def assert_rounded(actual: np.ndarray, exact: np.ndarray, top: int) -> None:
    expected = np.clip(np.rint(exact), 0, top)
    assert actual.shape == expected.shape
    diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    near_tie = np.abs(np.abs(exact - np.floor(exact)) - 0.5) < float32_tolerance(exact)
    assert diff.max() <= 1
    assert np.all(diff[~near_tie] == 0), f"{np.count_nonzero(diff[~near_tie])} pixels differ"


def ok(result) -> None:  # noqa: ANN001 - click Result
    assert result.exit_code == 0, result.stderr


# ---------------------------------------------------------------- exact against scipy


@pytest.mark.parametrize(
    "name, top",
    [
        ("camera.png", 255),
        ("astronaut.png", 255),
        ("chelsea-rgba.png", 255),
        ("coffee-16bit.png", 65535),
    ],
)
def test_box3_equals_scipy_correlate_rounded(cli, tmp_path: Path, name: str, top: int) -> None:
    out = tmp_path / "out.png"
    ok(cli("filter", str(SAMPLES / name), "--kernel", "box3", "-o", str(out)))
    source, source_mode = pixels(SAMPLES / name)
    result, mode = pixels(out)
    assert mode == source_mode  # L, RGB, RGBA, I;16 all kept
    colour = source[:, :, :3] if source_mode == "RGBA" else source
    assert_rounded(result[:, :, : colour.shape[2]], reference(colour, BOX3), top)
    if source_mode == "RGBA":
        np.testing.assert_array_equal(result[:, :, 3], source[:, :, 3])  # alpha untouched


@pytest.mark.parametrize("mode", MODES)
def test_every_border_mode_matches_scipy_raw(cli, tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out.npy"
    ok(
        cli(
            "filter",
            str(SAMPLES / "astronaut.png"),
            "-k",
            TILTED_TEXT,
            "--mode",
            mode,
            "--cval",
            "77.5",
            "-o",
            str(out),
        )
    )
    source, _ = pixels(SAMPLES / "astronaut.png")
    raw = np.load(out)
    assert raw.dtype == np.float32 and raw.shape == (512, 512, 3)
    assert_raw(raw, reference(source, TILTED, mode, 77.5))


def test_modes_really_differ_at_the_border(cli, tmp_path: Path) -> None:
    # Reads 2 pixels beyond the edge, where all five extensions differ (one pixel beyond,
    # reflect and nearest agree).
    corners = "0 0 0 0 1; 0 0 0 0 0; 0 0 0 0 0; 0 0 0 0 0; 2 0 0 0 0"
    borders = []
    for mode in MODES:
        out = tmp_path / f"{mode}.npy"
        ok(
            cli(
                "filter", str(SAMPLES / "camera.png"), "-k", corners, "--mode", mode, "-o", str(out)
            )
        )
        borders.append(np.load(out)[0].tobytes())
    assert len(set(borders)) == len(MODES)


def test_npy_output_is_raw_float32_with_negatives(cli, tmp_path: Path) -> None:
    out = tmp_path / "gx.npy"
    ok(cli("filter", str(SAMPLES / "camera.png"), "-k", "sobel-x", "-o", str(out)))
    raw = np.load(out)
    source, _ = pixels(SAMPLES / "camera.png")
    assert raw.dtype == np.float32 and raw.shape == (512, 512)
    assert raw.min() < -255 and raw.max() > 255  # nothing clipped
    assert_raw(raw, reference(source, SOBEL_X)[:, :, 0])


def test_16bit_stays_16bit_and_npy_is_raw(cli, tmp_path: Path) -> None:
    out = tmp_path / "gy.npy"
    ok(cli("filter", str(SAMPLES / "coffee-16bit.png"), "-k", "sobel-y", "-o", str(out)))
    source, _ = pixels(SAMPLES / "coffee-16bit.png")
    assert_raw(np.load(out), reference(source, SOBEL_Y)[:, :, 0])
    png = tmp_path / "gy.png"
    ok(cli("filter", str(SAMPLES / "coffee-16bit.png"), "-k", "sobel-y", "--abs", "-o", str(png)))
    result, mode = pixels(png)
    assert mode == "I;16" and result.max() > 255
    assert_rounded(result, np.abs(reference(source, SOBEL_Y)), 65535)


def test_npy_input_to_npy_and_png(cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    array = rng.normal(100, 80, size=(40, 30)).astype(np.float32)
    np.save(tmp_path / "in.npy", array)
    ok(cli("filter", str(tmp_path / "in.npy"), "-k", TILTED_TEXT, "-o", str(tmp_path / "out.npy")))
    raw = np.load(tmp_path / "out.npy")
    assert raw.shape == (40, 30)
    expected = ndimage.correlate(array.astype(np.float64), TILTED, mode="reflect")
    assert_raw(raw, expected)
    ok(cli("filter", str(tmp_path / "in.npy"), "-k", TILTED_TEXT, "-o", str(tmp_path / "out.png")))
    result, mode = pixels(tmp_path / "out.png")
    assert mode == "L"
    assert_rounded(result[:, :, 0], expected, 255)


def test_inline_fractions_equal_the_library_kernel(cli, tmp_path: Path) -> None:
    ok(cli("filter", str(SAMPLES / "astronaut.png"), "-k", "box3", "-o", str(tmp_path / "a.png")))
    ok(
        cli(
            "filter",
            str(SAMPLES / "astronaut.png"),
            "-k",
            "1/9 1/9 1/9; 1/9,1/9,1/9; 1/9 1/9 1/9",
            "-o",
            str(tmp_path / "b.png"),
        )
    )
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_kernel_from_a_user_folder_and_from_a_file(cli, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "tilted.toml").write_text(
        'name = "tilted"\ndescription = "no symmetry"\nmatrix = [[1, 2, 0], [-1, 3, 1], [0, 0, -2]]\n'
    )
    ok(
        cli(
            "filter",
            str(SAMPLES / "camera.png"),
            "-k",
            "tilted",
            "--kernel-path",
            str(folder),
            "-o",
            str(tmp_path / "a.npy"),
        )
    )
    ok(
        cli(
            "filter",
            str(SAMPLES / "camera.png"),
            "-k",
            str(folder / "tilted.toml"),
            "-o",
            str(tmp_path / "b.npy"),
        )
    )
    source, _ = pixels(SAMPLES / "camera.png")
    expected = reference(source, TILTED)[:, :, 0]
    assert_raw(np.load(tmp_path / "a.npy"), expected)
    assert_raw(np.load(tmp_path / "b.npy"), expected)


def test_a_chain_applies_kernels_in_turn(cli, tmp_path: Path) -> None:
    out = tmp_path / "chain.npy"
    ok(cli("filter", str(SAMPLES / "camera.png"), "-k", "box3", "-k", TILTED_TEXT, "-o", str(out)))
    source, _ = pixels(SAMPLES / "camera.png")
    expected = reference(reference(source, BOX3), TILTED)[:, :, 0]
    assert_raw(np.load(out), expected)


def test_gradient_pairs_give_the_magnitude(cli, tmp_path: Path) -> None:
    ok(cli("filter", str(SAMPLES / "astronaut.png"), "-k", "sobel", "-o", str(tmp_path / "m.npy")))
    ok(cli("filter", str(SAMPLES / "astronaut.png"), "-k", "sobel", "-o", str(tmp_path / "m.png")))
    source, _ = pixels(SAMPLES / "astronaut.png")
    magnitude = np.hypot(reference(source, SOBEL_X), reference(source, SOBEL_Y))
    assert_raw(np.load(tmp_path / "m.npy"), magnitude)
    result, mode = pixels(tmp_path / "m.png")
    assert mode == "RGB"
    assert_rounded(result, magnitude, 255)


def test_abs_and_rescale(cli, tmp_path: Path) -> None:
    source, _ = pixels(SAMPLES / "camera.png")
    gx = reference(source, SOBEL_X)
    ok(
        cli(
            "filter",
            str(SAMPLES / "camera.png"),
            "-k",
            "sobel-x",
            "-o",
            str(tmp_path / "plain.png"),
        )
    )
    assert_rounded(pixels(tmp_path / "plain.png")[0], gx, 255)  # negatives clip to 0
    ok(
        cli(
            "filter",
            str(SAMPLES / "camera.png"),
            "-k",
            "sobel-x",
            "--abs",
            "-o",
            str(tmp_path / "abs.png"),
        )
    )
    assert_rounded(pixels(tmp_path / "abs.png")[0], np.abs(gx), 255)
    ok(
        cli(
            "filter",
            str(SAMPLES / "camera.png"),
            "-k",
            "sobel-x",
            "--rescale",
            "-o",
            str(tmp_path / "r.png"),
        )
    )
    rescaled = (gx - gx.min()) / (gx.max() - gx.min()) * 255
    result = pixels(tmp_path / "r.png")[0]
    assert result.min() == 0 and result.max() == 255
    assert_rounded(result, rescaled, 255)


def test_gray_filters_one_luma_channel(cli, tmp_path: Path) -> None:
    ok(
        cli(
            "filter",
            str(SAMPLES / "astronaut.png"),
            "--gray",
            "-k",
            "box3",
            "-o",
            str(tmp_path / "g.png"),
        )
    )
    rgb, _ = pixels(SAMPLES / "astronaut.png")
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    result, mode = pixels(tmp_path / "g.png")
    assert mode == "L"
    assert_rounded(result, reference(luma[:, :, None], BOX3), 255)


# ------------------------------------------------------------------ padding and stride


def test_padding_valid_shrinks_by_f_minus_1(cli, tmp_path: Path) -> None:
    ok(
        cli(
            "filter",
            str(SAMPLES / "camera.png"),
            "-k",
            TILTED_TEXT,
            "--padding",
            "valid",
            "-o",
            str(tmp_path / "v.npy"),
        )
    )
    source, _ = pixels(SAMPLES / "camera.png")
    raw = np.load(tmp_path / "v.npy")
    assert raw.shape == (510, 510)  # (512 - 3)/1 + 1
    assert_raw(raw, reference(source, TILTED)[1:-1, 1:-1, 0])


def test_integer_padding_is_the_lectures_zero_padding(cli, tmp_path: Path) -> None:
    ok(
        cli(
            "filter",
            str(SAMPLES / "camera.png"),
            "-k",
            TILTED_TEXT,
            "--padding",
            "2",
            "--mode",
            "constant",
            "-o",
            str(tmp_path / "p.npy"),
        )
    )
    source, _ = pixels(SAMPLES / "camera.png")
    padded = np.pad(source[:, :, 0].astype(np.float64), 2)
    raw = np.load(tmp_path / "p.npy")
    assert raw.shape == (514, 514)  # (512 - 3 + 2*2)/1 + 1
    assert_raw(raw, ndimage.correlate(padded, TILTED, mode="constant")[1:-1, 1:-1])


def test_stride_subsamples(cli, tmp_path: Path) -> None:
    ok(
        cli(
            "filter",
            str(SAMPLES / "camera.png"),
            "-k",
            TILTED_TEXT,
            "--stride",
            "2",
            "-o",
            str(tmp_path / "s.npy"),
        )
    )
    source, _ = pixels(SAMPLES / "camera.png")
    raw = np.load(tmp_path / "s.npy")
    assert raw.shape == (256, 256)
    assert_raw(raw, reference(source, TILTED)[::2, ::2, 0])


def test_lecture_padding_and_stride_that_fit(cli, tmp_path: Path) -> None:
    # The lecture: W=10, F=3, P=1, S=3 gives (10 - 3 + 2)/3 + 1 = 4.
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    np.save(tmp_path / "ten.npy", image)
    ok(
        cli(
            "filter",
            str(tmp_path / "ten.npy"),
            "-k",
            TILTED_TEXT,
            "--padding",
            "1",
            "--stride",
            "3",
            "--mode",
            "constant",
            "-o",
            str(tmp_path / "o.npy"),
        )
    )
    padded = np.pad(image.astype(np.float64), 1)
    naive = np.array(
        [
            [np.sum(padded[3 * i : 3 * i + 3, 3 * j : 3 * j + 3] * TILTED) for j in range(4)]
            for i in range(4)
        ]
    )
    assert_raw(np.load(tmp_path / "o.npy"), naive)


def test_neurons_that_do_not_fit_are_refused(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "ten.npy", np.zeros((10, 10), dtype=np.float32))
    out = tmp_path / "o.npy"
    result = cli(
        "filter",
        str(tmp_path / "ten.npy"),
        "-k",
        "box3",
        "--padding",
        "valid",
        "--stride",
        "2",
        "-o",
        str(out),
    )
    assert result.exit_code == 2
    assert "(10 - 3 + 2*0)/2 + 1 = 4.5 is not an integer: the neurons do not fit" in result.stderr
    assert "--padding same" in result.stderr
    assert not out.exists()


def test_output_size_helper() -> None:
    box = Step("box3", BOX3)
    assert output_size((227, 227), [Step("k", np.zeros((11, 11)))], 0, 4) == (55, 55)
    assert output_size((512, 300), [box, box], "valid", 1) == (508, 296)
    assert output_size((512, 301), [box], "same", 2) == (256, 151)
    with pytest.raises(ShapeError, match="width of 10: .*4.5"):
        output_size((11, 10), [box], 0, 2)


def test_parse_padding() -> None:
    assert [parse_padding(p) for p in ("same", "Valid", "0", "3")] == ["same", "valid", 0, 3]
    with pytest.raises(InputError, match="Received: padding=-1"):
        parse_padding("-1")


def test_alpha_is_dropped_with_a_note_when_the_size_changes(cli, tmp_path: Path) -> None:
    result = cli(
        "filter",
        str(SAMPLES / "chelsea-rgba.png"),
        "-k",
        "box3",
        "--padding",
        "valid",
        "-o",
        str(tmp_path / "v.png"),
    )
    ok(result)
    assert "alpha channel was dropped" in result.stderr
    image, mode = pixels(tmp_path / "v.png")
    assert mode == "RGB" and image.shape == (298, 449, 3)


# ---------------------------------------------------------------------- stdin / stdout


def test_stdout_is_the_default_output(cli, tmp_path: Path) -> None:
    result = cli("filter", str(SAMPLES / "camera.png"), "-k", "box3")
    ok(result)
    ok(cli("filter", str(SAMPLES / "camera.png"), "-k", "box3", "-o", str(tmp_path / "f.png")))
    assert result.stdout_bytes == (tmp_path / "f.png").read_bytes()
    assert result.stderr == ""


def test_format_chooses_the_stdout_format(cli) -> None:
    jpeg = cli("filter", str(SAMPLES / "astronaut.png"), "-k", "box3", "-o", "-", "--format", "jpg")
    ok(jpeg)
    assert jpeg.stdout_bytes[:3] == b"\xff\xd8\xff"
    raw = cli("filter", str(SAMPLES / "camera.png"), "-k", "box3", "--format", "npy")
    ok(raw)
    assert np.load(io.BytesIO(raw.stdout_bytes)).dtype == np.float32


def test_stdin_to_stdout_subprocess() -> None:
    proc = run_convcli(
        "filter", "-", "--kernel", "box3", "-o", "-", input=(SAMPLES / "camera.png").read_bytes()
    )
    assert proc.returncode == 0, proc.stderr
    result, mode = pixels(proc.stdout)
    source, _ = pixels(SAMPLES / "camera.png")
    assert mode == "L"
    assert_rounded(result, reference(source, BOX3), 255)
    assert proc.stderr == b""


def test_shell_pipeline(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    py = sys.executable
    command = (
        f'cat "{SAMPLES / "camera.png"}" | "{py}" -m convcli filter - --kernel box3 -o - '
        f'| "{py}" -m convcli filter - --kernel sobel-x --abs > "{tmp_path / "piped.png"}"'
    )
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, env=env, timeout=120)
    source, _ = pixels(SAMPLES / "camera.png")
    blurred = np.clip(np.rint(reference(source, BOX3)), 0, 255)  # the pipe carries 8-bit pixels
    result, mode = pixels(tmp_path / "piped.png")
    assert mode == "L"
    assert_rounded(result, np.abs(reference(blurred, SOBEL_X)), 255)


class _Stream:
    def __init__(self, tty: bool) -> None:
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_refuses_terminal_helper() -> None:
    assert refuses_terminal(_Stream(True)) is True
    assert refuses_terminal(_Stream(False)) is False
    assert refuses_terminal(io.BytesIO()) is False


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_binary_to_a_real_terminal_is_refused(tmp_path: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "convcli", "filter", str(SAMPLES / "camera.png"), "-k", "box3"],
            stdout=follower,
            stderr=subprocess.PIPE,
            env=env,
            timeout=120,
            cwd=tmp_path,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: refusing to write binary image data to a terminal"
    )


# -------------------------------------------------------------------------------- batch


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut.png", "camera.png", "chelsea-rgba.png", "coffee-16bit.png"):
        shutil.copy(SAMPLES / name, folder / name)
    (folder / "notes.txt").write_text("not an image, skipped by extension\n")
    return folder


def test_batch_over_a_folder(cli, tmp_path: Path, photo_folder: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = cli("filter", str(photo_folder), "-k", "sobel", "--out-dir", str(out))
    ok(result)
    assert result.stderr == "" and result.stdout == ""  # no progress bar when not a terminal
    names = sorted(p.name for p in out.iterdir())
    assert names == ["astronaut.png", "camera.png", "chelsea-rgba.png", "coffee-16bit.png"]
    for name in names:
        single = tmp_path / f"single-{name}"
        ok(cli("filter", str(SAMPLES / name), "-k", "sobel", "-o", str(single)))
        assert (out / name).read_bytes() == single.read_bytes()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_batch_shows_progress_when_stderr_is_a_terminal(tmp_path: Path, photo_folder: Path) -> None:
    import pty

    out = tmp_path / "out"
    out.mkdir()
    leader, follower = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100")
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "convcli",
            "filter",
            str(photo_folder),
            "-k",
            "box3",
            "--out-dir",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
    ) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        stdout = proc.stdout.read() if proc.stdout else b""
    os.close(leader)
    assert proc.returncode == 0
    terminal = b"".join(chunks).decode(errors="replace")
    assert "4/4" in terminal and "filtered 4 of 4 images" in terminal
    assert stdout == b""
    assert len(list(out.iterdir())) == 4


def test_batch_of_listed_inputs_to_npy(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ok(
        cli(
            "filter",
            str(SAMPLES / "camera.png"),
            str(SAMPLES / "coffee-16bit.png"),
            "-k",
            "box3",
            "--out-dir",
            str(out),
            "--format",
            "npy",
            "--jobs",
            "2",
        )
    )
    assert sorted(p.name for p in out.iterdir()) == ["camera.npy", "coffee-16bit.npy"]
    for name in ("camera", "coffee-16bit"):
        source, _ = pixels(SAMPLES / f"{name}.png")
        assert_raw(np.load(out / f"{name}.npy"), reference(source, BOX3)[:, :, 0])


def test_batch_goes_on_past_a_bad_file(cli, tmp_path: Path, photo_folder: Path) -> None:
    (photo_folder / "broken.png").write_text("text, not a PNG")
    out = tmp_path / "out"
    out.mkdir()
    result = cli("filter", str(photo_folder), "-k", "box3", "--out-dir", str(out))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.png" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [
        "astronaut.png",
        "camera.png",
        "chelsea-rgba.png",
        "coffee-16bit.png",
    ]


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda f, o: [str(f)], "is a folder: give --out-dir DIR"),
        (
            lambda f, o: [str(f / "camera.png"), str(f / "astronaut.png")],
            "2 inputs: give --out-dir DIR",
        ),
        (lambda f, o: [str(f), "--out-dir", str(f)], "the result would overwrite it"),
        (
            lambda f, o: [str(f), "--out-dir", str(f / "camera.png")],
            "--out-dir: .*camera.png exists and is not a folder",
        ),
        (
            lambda f, o: [str(f), str(f / "camera.png"), "--out-dir", str(o)],
            "would both be written to",
        ),
        (lambda f, o: ["-", "--out-dir", str(o)], r"stdin \(-\) can only be filtered alone"),
    ],
)
def test_batch_errors(cli, tmp_path: Path, photo_folder: Path, make_args, message: str) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    out.mkdir()
    result = cli("filter", *make_args(photo_folder, out), "-k", "box3")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    import re

    assert re.search(message, result.stderr)
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------- bad input


def _png_header_only(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
        + chunk(b"IEND", b"")
    )


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "text.png").write_text("hello, I am text\n")
    (tmp / "cut.png").write_bytes((SAMPLES / "astronaut.png").read_bytes()[:50_000])
    (tmp / "bomb.png").write_bytes(_png_header_only(20_000, 20_000))
    return {name: tmp / f"{name}.png" for name in ("empty", "text", "cut", "bomb")}


CAMERA = str(SAMPLES / "camera.png")
BAD_CASES = [
    ("empty", ["{empty}", "-k", "box3"], r"empty \(0 bytes\)"),
    ("text", ["{text}", "-k", "box3"], "is not an image Pillow can read"),
    ("truncated", ["{cut}", "-k", "box3"], "is truncated or corrupt"),
    ("missing", ["{tmp}/nowhere.png", "-k", "box3"], "No such file: '.*nowhere.png'"),
    ("unknown kernel", [CAMERA, "-k", "sobelx"], "Unknown kernel 'sobelx'.*sobel-x"),
    ("ragged kernel", [CAMERA, "-k", "1 2 3; 4 5"], "different lengths"),
    ("non-numeric kernel", [CAMERA, "-k", "1 2; x 4"], "'x' is not a number"),
    ("nan kernel", [CAMERA, "-k", "1 nan; 2 3"], "NaN and infinite values are not allowed"),
    ("inf kernel", [CAMERA, "-k", "1 2; -inf 3"], "NaN and infinite values are not allowed"),
    (
        "unknown mode",
        [CAMERA, "-k", "box3", "--mode", "bogus"],
        "Unknown value for `mode`. Allowed values are: reflect, constant, nearest, mirror, wrap. Received: mode=bogus",
    ),
    ("bad padding", [CAMERA, "-k", "box3", "--padding", "lots"], "Received: padding=lots"),
    ("bad stride", [CAMERA, "-k", "box3", "--stride", "0"], "Received: stride=0"),
    (
        "bad compress level",
        [CAMERA, "-k", "box3", "--compress-level", "12"],
        "Received: compress-level=12",
    ),
    ("bomb", ["{bomb}", "-k", "box3"], "over the limit of 178,956,970.*--max-pixels 400000000"),
    (
        "max pixels",
        [CAMERA, "-k", "box3", "--max-pixels", "1000"],
        "262,144 pixels, over the limit of 1,000",
    ),
    (
        "does not fit",
        [CAMERA, "-k", "box3", "--padding", "valid", "--stride", "2"],
        "255.5 is not an integer",
    ),
    (
        "16-bit as jpeg",
        [str(SAMPLES / "coffee-16bit.png"), "-k", "box3", "--format", "jpg"],
        "cannot write a 16-bit grayscale image as JPEG",
    ),
]


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
@pytest.mark.parametrize("case, args, message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_one_line_exit_2_output_untouched(
    cli, tmp_path: Path, case: str, args: list[str], message: str, existing: bool
) -> None:
    import re

    paths = _bad_inputs(tmp_path)
    out = tmp_path / ("out.jpg" if "--format" in args else "out.png")
    if existing:
        out.write_bytes(b"previous result, must survive")
    argv = [a.format(tmp=tmp_path, **paths) for a in args]
    result = cli("filter", *argv, "-o", str(out))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    if existing:
        assert out.read_bytes() == b"previous result, must survive"
    else:
        assert not out.exists()
    leftovers = {p.name for p in tmp_path.iterdir()} - {p.name for p in paths.values()} - {out.name}
    assert leftovers == set()  # no temporary file left behind


def test_missing_output_folder(cli, tmp_path: Path) -> None:
    result = cli("filter", CAMERA, "-k", "box3", "-o", str(tmp_path / "nope" / "x.png"))
    assert result.exit_code == 2
    assert (
        result.stderr.startswith("error: -o: cannot write ")
        and "nope does not exist" in result.stderr
        and result.stderr.count("\n") == 1
    )
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["-", "-k", "box3"], b"", b"error: stdin is empty"),
        (["-", "-k", "box3"], b"definitely not an image", b"error: stdin is not an image"),
        (
            ["-", "-k", "box3"],
            (SAMPLES / "astronaut.png").read_bytes()[:20_000],
            b"error: stdin is truncated",
        ),
        (["-", "-k", "nosuchkernel"], b"", b"error: Unknown kernel 'nosuchkernel'"),
    ],
)
def test_bad_input_in_a_real_process(args: list[str], stdin: bytes, message: bytes) -> None:
    proc = run_convcli("filter", *args, input=stdin)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.startswith(message) and proc.stderr.count(b"\n") == 1
    assert b"Traceback" not in proc.stderr


def test_importing_the_cli_loads_neither_scipy_nor_pillow() -> None:
    code = "import sys, convcli.cli; print(sorted({'scipy', 'PIL', 'convcli.images'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=60)
    assert proc.stdout.strip() == b"[]", proc.stderr


# ------------------------------------------------- the whole command against a loop oracle

# scipy.ndimage's border modes as numpy.pad modes (scipy "reflect" repeats the edge pixel).
NUMPY_PAD = {
    "reflect": "symmetric",
    "mirror": "reflect",
    "nearest": "edge",
    "wrap": "wrap",
    "constant": "constant",
}


def naive_filter(
    image: np.ndarray, weights: np.ndarray, mode: str, cval: float, padding: int | str, stride: int
) -> np.ndarray:
    """The lecture's definition, one output position at a time (float64)."""
    fh, fw = weights.shape
    if padding == "same":
        pads = ((fh // 2, fh - 1 - fh // 2), (fw // 2, fw - 1 - fw // 2))
    else:
        p = 0 if padding == "valid" else int(padding)
        pads = ((p, p), (p, p))
    extra = {"constant_values": cval} if mode == "constant" else {}
    padded = np.pad(image.astype(np.float64), pads, mode=NUMPY_PAD[mode], **extra)
    rows = range(0, padded.shape[0] - fh + 1, stride)
    cols = range(0, padded.shape[1] - fw + 1, stride)
    return np.array(
        [[np.sum(padded[i : i + fh, j : j + fw] * weights) for j in cols] for i in rows]
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    height=st.integers(4, 12),
    width=st.integers(4, 12),
    fh=st.integers(1, 4),
    fw=st.integers(1, 4),
    mode=st.sampled_from(MODES),
    padding=st.sampled_from(["same", "valid", 0, 1, 2]),
    stride=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_filter_command_matches_a_loop_oracle(
    cli,
    height: int,
    width: int,
    fh: int,
    fw: int,
    mode: str,
    padding: int | str,
    stride: int,
    seed: int,
) -> None:
    import re
    import tempfile

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width)).astype(np.float32)
    weights = rng.integers(-4, 5, size=(fh, fw)).astype(np.float64)
    text = "; ".join(" ".join(str(int(v)) for v in row) for row in weights)
    with tempfile.TemporaryDirectory() as folder:
        source, out = Path(folder) / "in.npy", Path(folder) / "out.npy"
        np.save(source, image)
        result = cli(
            "filter",
            str(source),
            "-k",
            text,
            "--mode",
            mode,
            "--cval",
            "9",
            "--padding",
            str(padding),
            "--stride",
            str(stride),
            "-o",
            str(out),
        )
        if padding != "same" and any(
            (n - f + 2 * (0 if padding == "valid" else int(padding))) % stride
            for n, f in ((height, fh), (width, fw))
        ):
            assert result.exit_code == 2
            assert re.search(r"= \d+\.\d+ is not an integer: the neurons do not fit", result.stderr)
            assert not out.exists()
            return
        ok(result)
        np.testing.assert_allclose(
            np.load(out),
            naive_filter(image, weights, mode, 9.0, padding, stride),
            rtol=1e-6,
            atol=1e-3,
        )


def test_npy_through_stdin_and_stdout_subprocess() -> None:
    array = np.arange(30, dtype=np.float32).reshape(5, 6) * -1.5
    buffer = io.BytesIO()
    np.save(buffer, array)
    proc = run_convcli("filter", "-", "-k", TILTED_TEXT, "--format", "npy", input=buffer.getvalue())
    assert proc.returncode == 0, proc.stderr
    raw = np.load(io.BytesIO(proc.stdout))
    assert_raw(raw, ndimage.correlate(array.astype(np.float64), TILTED, mode="reflect"))
    assert raw.min() < 0  # raw: negative values kept
