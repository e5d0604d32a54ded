"""Hostile input, every command: one ``error:`` line, exit 2, no traceback, nothing written.

The corpus is built by :func:`build_corpus` (lying ``.npy`` headers, archives under the
wrong name, small zip bombs, documents nested too deeply, non-UTF-8 text, a path under a
regular file); each case then runs as a user would run it and is held to the contract.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli.errors import ConvcliError

ROOT = Path(__file__).resolve().parent.parent
CAMERA = str(ROOT / "samples" / "camera.png")
SMALL = "INPUT(6,6,1) => CONV(3,3,pad=same) => RELU => POOL(2) => FC(4) => SOFTMAX"
OLD = b"old output, must survive byte for byte"


def lying_npy(shape: tuple[int, ...], dtype: str = "<f8", data: bytes = b"\0" * 16) -> bytes:
    """A version-1.0 .npy file whose header declares ``shape`` but holds only ``data``."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def build_corpus(folder: Path) -> None:
    """Write the hostile files into ``folder`` (all small; the largest is a few hundred KB)."""
    np.save(folder / "x.npy", np.random.default_rng(9).random((6, 6, 1), dtype=np.float32))
    (folder / "liar.npy").write_bytes(lying_npy((100_000, 100_000, 3)))  # declares 240 GB
    (folder / "liar2d.npy").write_bytes(lying_npy((60_000, 60_000)))
    np.savez(folder / "archive.npz", a=np.zeros((6, 6, 1)), b=np.zeros(3))
    os.replace(folder / "archive.npz", folder / "archive-named.npy")
    np.save(folder / "single.npy", np.zeros(3))
    os.replace(folder / "single.npy", folder / "single-named.npz")
    np.save(folder / "objects.npy", np.array([{"pickle": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(folder / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("huge.kernel.npy", "w", force_zip64=True) as member:  # 128 MiB of zeros
        member.write(lying_npy((1 << 24,), data=b""))
        for _ in range(32):
            member.write(b"\0" * (1 << 22))
    with zipfile.ZipFile(folder / "liar.npz", "w") as archive:
        archive.writestr("conv1.kernel.npy", lying_npy((3, 3, 1, 3000)))
    (folder / "deep.toml").write_text("input = " + "[" * 3000 + "]" * 3000)
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "latin1.toml").write_bytes('input = [6, 6, 1]  # café\n'.encode("latin-1"))
    (folder / "latin1.txt").write_bytes("1 2 1 # é".encode("latin-1"))
    (folder / "afile").write_bytes(b"a regular file, not a folder")
    (folder / "folder.toml").mkdir()
    (folder / "out.png").write_bytes(OLD)
    (folder / "out.npy").write_bytes(OLD)


CASES: list[tuple[str, list[str], str]] = [
    # (id, arguments, a fragment the one line must hold)
    ("filter-lying-npy", ["filter", "liar.npy", "-k", "box3", "-o", "out.npy"], "declares shape (100000, 100000, 3)"),
    ("filter-archive-as-npy", ["filter", "archive-named.npy", "-k", "box3", "-o", "out.npy"], ".npz archive"),
    ("filter-pickle", ["filter", "objects.npy", "-k", "box3", "-o", "out.npy"], "pickle"),
    ("filter-kernel-lying-npy", ["filter", CAMERA, "-k", "liar2d.npy", "-o", "out.png"], "declares shape"),
    ("filter-kernel-latin1", ["filter", CAMERA, "-k", "latin1.txt", "-o", "out.png"], "latin1.txt"),
    ("filter-padding-superscript", ["filter", CAMERA, "-k", "box3", "--padding", "²", "-o", "out.png"], "padding=²"),
    ("filter-under-a-file", ["filter", CAMERA, "-k", "box3", "-o", "afile/out.png"], "afile/out.png"),
    ("filter-empty-name", ["filter", "", "-k", "box3", "-o", "out.png"], "empty name"),
    ("filter-emoji-name", ["filter", "holiday:x:photo.png", "-k", "box3", "-o", "out.png"], "holiday:x:photo.png"),
    ("filter-usage", ["filter", CAMERA, "-k"], "'-k' requires an argument"),
    ("run-lying-npy", ["run", SMALL, "liar.npy", "-o", "out.npy"], "declares shape (100000, 100000, 3)"),
    ("run-archive-as-npy", ["run", SMALL, "archive-named.npy", "-o", "out.npy"], ".npz archive"),
    ("run-npy-as-weights", ["run", SMALL, "x.npy", "--weights", "single-named.npz", "-o", "out.npy"], "single array"),
    ("run-bomb-weights", ["run", SMALL, "x.npy", "--weights", "bomb.npz", "-o", "out.npy"], "missing array"),
    ("run-lying-weights", ["run", SMALL, "x.npy", "--weights", "liar.npz", "-o", "out.npy"], "declares shape"),
    ("run-negative-seed", ["run", SMALL, "x.npy", "--seed", "-1", "-o", "out.npy"], "--seed"),
    ("run-maps-under-a-file", ["run", SMALL, "x.npy", "-o", "out.npy", "--save-maps", "afile/maps"], "afile/maps"),
    ("run-deep-arrow", ["run", "INPUT(6,6,1) => " + "[" * 2000 + "FC(2)" + "] * 1" * 2000, "x.npy"], "nested"),
    ("run-usage", ["run"], "Missing argument 'MODEL'"),
    ("summary-deep-toml", ["summary", "deep.toml"], "deep.toml"),
    ("summary-deep-json", ["summary", "deep.json"], "deep.json"),
    ("summary-latin1", ["summary", "latin1.toml"], "not UTF-8"),
    ("summary-folder", ["summary", "folder.toml"], "folder.toml is a folder"),
    ("loss-lying-npy", ["loss", "mse", "--true", "liar.npy", "--pred", "1"], "declares shape"),
    ("loss-pickle", ["loss", "mse", "--true", "objects.npy", "--pred", "1"], "pickle"),
    ("explain-at-superscript", ["explain", CAMERA, "--at", "²,1", "-k", "box3"], "--at"),
    ("shapes-usage", ["shapes", "--W", "227", "--F", "11", "--bogus"], "No such option: --bogus"),
    ("shapes-not-a-number", ["shapes", "--W", "x", "--F", "3"], "'x' is not a valid int"),
    ("kernels-usage", ["kernels", "--json", "--nope"], "No such option"),
]


def _listing(folder: Path) -> dict[str, bytes | None]:
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in folder.iterdir()}


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    build_corpus(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("args, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_case_is_one_line_and_writes_nothing(cli, corpus: Path, args: list[str], fragment: str) -> None:
    before = _listing(corpus)
    result = cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]
    assert _listing(corpus) == before  # nothing written, the old outputs byte-identical


def test_a_file_name_is_printed_as_it_is(cli, corpus: Path) -> None:
    # rich would turn ":x:" into an emoji and "[b]" into markup
    for name in ("holiday:x:photo.png", "[b]bold[/b].png"):
        result = cli("filter", name, "-k", "box3", "-o", "out.png")
        assert result.exit_code == 2
        assert name in result.stderr


def test_a_usage_error_in_a_real_process_is_one_line() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "convcli", "shapes", "--W", "5", "--bogus"],
                          capture_output=True, env=env, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.decode().startswith("error: No such option: --bogus")
    assert proc.stderr.count(b"\n") == 1


def test_a_closed_pipe_exits_zero_quietly(tmp_path: Path) -> None:
    """`convcli run ... --json | head -c 10`: stdout closes early; exit 0, nothing on stderr."""
    np.save(tmp_path / "x.npy", np.zeros((64, 64, 3), np.float32))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen([sys.executable, "-m", "convcli", "run", "INPUT(64,64,3) => CONV(16,3,pad=same)",
                           str(tmp_path / "x.npy"), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(10) == b'{\n  "model'
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(60)
    assert (proc.returncode, err) == (0, b"")


def test_one_bad_file_or_failed_write_does_not_stop_a_batch(cli, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.save(inputs / "good.npy", np.arange(16, dtype=np.float32).reshape(4, 4))
    (inputs / "liar.npy").write_bytes(lying_npy((50_000, 50_000)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "blocked.npy").mkdir()  # the result of blocked.npy cannot replace a folder
    np.save(inputs / "blocked.npy", np.zeros((4, 4), np.float32))
    result = cli("filter", str(inputs), "-k", "identity", "--out-dir", str(out))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines), result.stderr
    assert any("liar.npy" in line and "declares shape" in line for line in lines)
    assert any("blocked.npy" in line for line in lines)
    np.testing.assert_array_equal(np.load(out / "good.npy"), np.arange(16).reshape(4, 4))


def test_json_is_strict(cli) -> None:
    result = cli("loss", "mse", "--true", "1 2", "--pred", "1e308 -1e308", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))
    assert document["value"] is None  # (1e308)² overflows: inf is not a JSON number


def test_numpy_warnings_do_not_reach_stderr(cli) -> None:
    result = cli("loss", "mse", "--true", "1 2", "--pred", "1e308 -1e308")
    assert result.exit_code == 0
    assert result.stderr == ""


# ----------------------------------------------------------------------------- hypothesis over the parsers


def _never_crashes(parse: Callable[[str], object], text: str) -> None:
    try:
        parse(text)
    except ConvcliError:  # refused with a message: fine; anything else escaping is a bug
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_option_parsers_accept_or_refuse_cleanly(text: str) -> None:
    from convcli.cli.cmd_explain import parse_at
    from convcli.cli.cmd_filter import check_mode, parse_padding

    for parse in (parse_padding, parse_at, check_mode):
        _never_crashes(parse, text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789 ;,./*-+eE²١", max_size=24))
def test_inline_matrices_accept_or_refuse_cleanly(text: str) -> None:
    from convcli.kernels import parse_matrix

    _never_crashes(parse_matrix, text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-(10**30), 10**30), st.sampled_from(["same", "valid", "²", "-1", ""])),
                min_size=1, max_size=5))
def test_shapes_options_accept_or_refuse_cleanly(values: list[object]) -> None:
    from typer.testing import CliRunner

    from convcli.cli import app

    options = ["--W", "--F", "--S", "--P", "--K"]
    args = ["shapes"] + [x for pair in zip(options, map(str, values)) for x in pair]
    if "--F" not in args:
        args += ["--F", "3"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code in (0, 2)
    if result.exit_code == 2:
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


# ----------------------------------------------------------------------------- no algorithmic cliffs


def _naive_fitting_paddings(n: int, kernel: int, stride: int, count: int) -> list[int]:
    """Every P from 0 up, kept when (n - kernel + 2P) is a non-negative multiple of stride."""
    return [p for p in range(n + kernel + 2 * stride + 1) if n - kernel + 2 * p >= 0
            and (n - kernel + 2 * p) % stride == 0][:count]


def _naive_divisors(span: int) -> list[int]:
    return [s for s in range(1, span + 1) if span % s == 0]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.integers(1, 40), st.integers(1, 40), st.integers(0, 50))
def test_fitting_paddings_and_strides_match_a_loop(n: int, kernel: int, stride: int, near: int) -> None:
    from convcli import geometry

    every = _naive_fitting_paddings(n, kernel, stride, 10**9)
    assert geometry.fitting_paddings(n, kernel, stride) == every[:3]
    assert geometry.fitting_paddings(n, kernel, stride, near=near) == sorted(
        every, key=lambda p: (abs(p - near), p))[:3]
    span = n - kernel
    if span > 0:
        divisors = _naive_divisors(span)
        assert geometry.fitting_strides(n, kernel) == divisors[:3]
        assert geometry.fitting_strides(n, kernel, near=near) == sorted(
            divisors, key=lambda s: (abs(s - near), s))[:3]


def test_shapes_with_a_huge_width_answers_at_once(cli) -> None:
    # (100000001 - 2)/2 + 1 = 50000000.5: no padding fits with S=2 (2P is even, 99999999 odd);
    # strides that fit divide 99999999 = 3^2 * 11111111
    result = cli("shapes", "--W", "100000001", "--F", "2", "--S", "2")
    assert result.exit_code == 2
    assert "50000000.5" in result.stderr and "Paddings that fit with S=2: none" in result.stderr
    assert "strides that fit with P=0: 1, 3" in result.stderr
    huge = cli("shapes", "--W", str(10**30), "--F", "3", "--S", "7")
    assert huge.exit_code in (0, 2) and "Traceback" not in huge.stderr


def test_a_padding_beyond_max_pixels_is_refused_before_allocating(cli, tmp_path: Path) -> None:
    result = cli("filter", CAMERA, "-k", "box3", "--padding", "100000", "-o", str(tmp_path / "out.png"))
    assert result.exit_code == 2
    # camera.png is 512x512: (512 - 3 + 200000)/1 + 1 = 200510 on each side
    assert "200510x200510" in result.stderr and "--max-pixels" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_large_high_rank_kernel_goes_to_fft_without_a_search(monkeypatch: pytest.MonkeyPatch) -> None:
    from scipy import ndimage

    from convcli import filtering

    rng = np.random.default_rng(61)
    image = rng.random((48, 64, 1), dtype=np.float32)
    kernel = rng.standard_normal((61, 61))
    real_svd = np.linalg.svd

    def small_svd_only(a: np.ndarray, *args: object, **kwargs: object) -> object:
        assert min(np.shape(a)) <= 40, "a full SVD of the large kernel"
        return real_svd(a, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "svd", small_svd_only)
    filtering._TERMS.clear()
    assert filtering.plan(kernel, image.shape).method == "fft"
    result = filtering.correlate(image, kernel, mode="reflect")
    expected = ndimage.correlate(image[:, :, 0].astype(np.float64), kernel, mode="reflect")
    np.testing.assert_allclose(result[:, :, 0], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_a_large_low_rank_kernel_stays_separable() -> None:
    from convcli import filtering

    rng = np.random.default_rng(2)
    u, v = rng.standard_normal((2, 101)), rng.standard_normal((2, 101))
    kernel = u.T @ v  # rank 2
    filtering._TERMS.clear()
    cols, rows = filtering._find_separable_terms(kernel, max_terms=16)
    assert len(cols) == 2
    rebuilt = sum(np.outer(c, r) for c, r in zip(cols, rows, strict=True))
    np.testing.assert_allclose(rebuilt, kernel, atol=1e-5 * np.abs(kernel).max())


@pytest.mark.parametrize("shape", [(3, 3), (4, 5), (2, 6), (7, 4)])
@pytest.mark.parametrize("cval", [0.0, 2.5])
def test_fft_constant_mode_matches_scipy(shape: tuple[int, int], cval: float) -> None:
    from scipy import ndimage

    from convcli import filtering

    rng = np.random.default_rng(sum(shape))
    image = rng.random((21, 30, 2), dtype=np.float32)
    kernel = rng.standard_normal(shape)
    result = filtering.correlate(image, kernel, mode="constant", cval=cval, method="fft")
    for channel in range(2):
        expected = ndimage.correlate(image[:, :, channel].astype(np.float64), kernel, mode="constant", cval=cval)
        np.testing.assert_allclose(result[:, :, channel], expected, atol=2e-5 * np.abs(expected).max())


# ----------------------------------------------------------------------------- exact where it says exact


def test_explain_exact_sum_does_not_wrap(cli) -> None:
    # 3e9 * 4e9 + 1 + 1 + 1 = 12000000000000000003, beyond int64's 9223372036854775807
    result = cli("explain", "--region", "3000000000 1; 1 1", "-k", "4000000000 1; 1 1", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["sum_exact"] == "12000000000000000003"


def test_kernel_sum_and_factors_do_not_wrap(cli) -> None:
    result = cli("kernels", "10000000000000000000 10000000000000000000; 10000000000000000000 10000000000000000000")
    assert result.exit_code == 0, result.stderr
    assert "sum: 40000000000000000000" in result.stdout  # 4 * 10^19, exact
    assert "row [10000000000000000000 10000000000000000000]" in result.stdout


@pytest.mark.parametrize("spec", ["1e39", "1e300 * 1 1", "1e20 * 1e20 0"])
def test_weights_beyond_float32_are_refused(cli, spec: str) -> None:
    result = cli("filter", CAMERA, "-k", spec, "-o", "-")
    assert result.exit_code == 2
    assert "outside float32's range" in result.stderr and result.stderr.count("\n") == 1


def test_npy_and_toml_weights_beyond_float32_are_refused(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.array([[0.0, 1e39]]))
    (tmp_path / "big.toml").write_text('name = "big"\nmatrix = [[1e39, 0]]\n')
    for kernel in ("big.npy", "big.toml"):
        result = cli("filter", CAMERA, "-k", str(tmp_path / kernel), "-o", str(tmp_path / "out.png"))
        assert result.exit_code == 2, kernel
        assert "outside float32's range" in result.stderr
    assert not (tmp_path / "out.png").exists()
