"""The one file boundary: reading by content with size checks, writing without data loss."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from convcli import fileio
from convcli.errors import InputError, KernelError, WeightsError

ROOT = Path(__file__).resolve().parent.parent
CAMERA = str(ROOT / "samples" / "camera.png")
SMALL = "INPUT(6,6,1) => CONV(3,3,pad=same) => RELU => POOL(2) => FC(4) => SOFTMAX"


def normal_mode() -> int:
    """0666 minus the process umask (read the only way os allows: by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def lying_npy(shape: tuple[int, ...], dtype: str = "<f8", data: bytes = b"\0" * 16) -> bytes:
    """A version-1.0 .npy file whose header declares ``shape`` but holds only ``data``."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ----------------------------------------------------------------------------- reading


def test_sniff_by_content() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(3))
    assert fileio.sniff(buffer.getvalue()) == "npy"
    buffer = io.BytesIO()
    np.savez(buffer, a=np.arange(3))
    assert fileio.sniff(buffer.getvalue()) == "npz"
    assert fileio.sniff(b"1 2 3") is None


def test_load_npy_round_trip(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", values)
    np.testing.assert_array_equal(fileio.load_npy(tmp_path / "a.npy"), values)
    np.testing.assert_array_equal(fileio.load_npy((tmp_path / "a.npy").read_bytes()), values)


def test_a_header_that_lies_is_refused_before_allocation(tmp_path: Path) -> None:
    # 10^12 float64 = 8 TB declared, 16 bytes present: refused from the header alone
    (tmp_path / "liar.npy").write_bytes(lying_npy((1_000_000, 1_000_000)))
    with pytest.raises(InputError, match=r"declares shape \(1000000, 1000000\) of float64 "
                       r"\(8,000,000,000,000 bytes\) but the file holds only 16 bytes"):
        fileio.load_npy(tmp_path / "liar.npy")
    with pytest.raises(InputError, match="declares shape"):
        fileio.load_npy((tmp_path / "liar.npy").read_bytes())


def test_an_honest_small_header_passes() -> None:
    data = lying_npy((2,), data=np.array([1.5, -2.0]).tobytes())
    np.testing.assert_array_equal(fileio.load_npy(data), [1.5, -2.0])


def test_npz_named_npy_and_npy_named_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", a=np.zeros(2), b=np.ones(2))
    os.replace(tmp_path / "two.npz", tmp_path / "really-an-archive.npy")
    with pytest.raises(InputError, match="is a .npz archive of several arrays, expected one .npy array"):
        fileio.load_npy(tmp_path / "really-an-archive.npy")
    np.save(tmp_path / "one.npy", np.zeros(2))
    os.replace(tmp_path / "one.npy", tmp_path / "really-an-array.npz")
    with pytest.raises(InputError, match="is a single array, not a .npz archive"), fileio.open_npz(
        tmp_path / "really-an-array.npz"
    ):
        pass


def test_pickled_arrays_are_never_loaded(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickle"):
        fileio.load_npy(tmp_path / "objects.npy")


def zero_bomb(path: Path, name: str, n_bytes: int) -> None:
    """An .npz whose member ``name`` inflates to ``n_bytes`` of zeros (a few hundred KB on disk)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        member.write(lying_npy((n_bytes // 8,), data=b""))
        chunk = b"\0" * (1 << 22)
        for _ in range(n_bytes // len(chunk)):
            member.write(chunk)


def test_npz_members_are_listed_before_any_is_inflated(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    zero_bomb(path, "big", 1 << 28)
    assert path.stat().st_size < 2_000_000
    with fileio.open_npz(path) as archive:
        assert archive.members["big"][0] == (1 << 25,)
        assert archive.nbytes("big") == 1 << 28


def test_npz_member_whose_header_lies(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("k.npy", lying_npy((1000, 1000)))
    with pytest.raises(InputError, match=r"member 'k': the .npy header declares shape \(1000, 1000\)"), \
            fileio.open_npz(path):
        pass


def test_weights_keys_are_checked_before_inflating(tmp_path: Path) -> None:
    from convcli import forward
    from convcli.spec import parse_arrow

    model = parse_arrow(SMALL)
    path = tmp_path / "w.npz"
    zero_bomb(path, "other.kernel", 1 << 28)  # 256 MiB once inflated: never inflated
    with pytest.raises(WeightsError, match=r"missing array 'conv1.kernel'"):
        forward.load_weights(model, path)


@pytest.mark.parametrize(
    "name, expected",
    [("", "an empty name is not a file"), (".", "is a folder, expected a file"), ("missing.npy", "does not exist")],
)
def test_input_path_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=expected):
        fileio.read_bytes(name)


def test_non_utf8_text_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "k.txt").write_bytes(b"1 2\xff")
    with pytest.raises(KernelError, match=r"k.txt is not UTF-8 text \(byte 3"):
        fileio.read_text(tmp_path / "k.txt", what="kernel file", error=KernelError)


# ----------------------------------------------------------------------------- writing


def test_write_file_gives_a_normal_mode(tmp_path: Path) -> None:
    fileio.write_file(tmp_path / "x.bin", lambda stream: stream.write(b"abc"))
    assert (tmp_path / "x.bin").read_bytes() == b"abc"
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == normal_mode()


def test_write_file_failure_keeps_the_old_file(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"old")

    def broken(stream) -> None:
        stream.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(InputError, match=r"cannot write .*x.bin: No space left on device"):
        fileio.write_file(tmp_path / "x.bin", broken)
    assert (tmp_path / "x.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_a_symlink_stays_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real.bin").write_bytes(b"old")
    (tmp_path / "link.bin").symlink_to(tmp_path / "real.bin")
    fileio.write_file(tmp_path / "link.bin", lambda stream: stream.write(b"new"))
    assert (tmp_path / "link.bin").is_symlink()
    assert (tmp_path / "real.bin").read_bytes() == b"new"


def _read_fifo(path: Path, into: list[bytes]) -> threading.Thread:
    def reader() -> None:
        with open(path, "rb") as stream:
            into.append(stream.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


def test_a_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    thread = _read_fifo(fifo, received)
    fileio.write_file(fifo, lambda stream: stream.write(b"through the pipe"))
    thread.join(10)
    assert received == [b"through the pipe"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # not replaced by a regular file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_filter_into_a_fifo(cli, tmp_path: Path) -> None:
    fifo = tmp_path / "out.npy"
    os.mkfifo(fifo)
    received: list[bytes] = []
    thread = _read_fifo(fifo, received)
    result = cli("filter", CAMERA, "-k", "identity", "-o", str(fifo))
    thread.join(10)
    assert result.exit_code == 0, result.stderr
    from PIL import Image

    expected = np.asarray(Image.open(CAMERA), np.float32)
    np.testing.assert_array_equal(np.load(io.BytesIO(received[0])), expected)
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_check_writable_reports_each_cause(tmp_path: Path) -> None:
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(InputError, match="a part of the path is a file, not a folder"):
        fileio.check_writable(tmp_path / "afile" / "out.npy", "-o")
    with pytest.raises(InputError, match="folder .*nope does not exist"):
        fileio.check_writable(tmp_path / "nope" / "out.npy", "-o")
    with pytest.raises(InputError, match="is a folder, expected a file name"):
        fileio.check_writable(tmp_path, "-o")
    with pytest.raises(InputError, match="an empty name"):
        fileio.check_writable("", "-o")
    with pytest.raises(InputError, match="afile/maps: a part of the path is a file, not a folder"):
        fileio.check_output_folder(tmp_path / "afile" / "maps", "--save-maps")
    fileio.check_output_folder(tmp_path / "new" / "maps", "--save-maps")  # may be created
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not stop root")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(InputError, match="permission denied"):
            fileio.check_writable(folder / "x.npy", "-o")
    finally:
        folder.chmod(0o755)


# ----------------------------------------------------------------------------- run: all outputs checked first


@pytest.fixture
def one_input(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(3).random((6, 6, 1), dtype=np.float32))
    return path


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--save-maps", "afile/maps"], "--save-maps: cannot write afile/maps: a part of the path is a file"),
        (["--save-maps", "afile"], "--save-maps: "),
        (["--save-weights", "afile/w.npz"], "--save-weights: cannot write afile/w.npz"),
        (["--save-weights", "nope/w.npz"], "folder nope does not exist"),
    ],
)
def test_run_checks_every_output_before_writing_the_first(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_input: Path, extra: list[str], fragment: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_bytes(b"a file, not a folder")
    (tmp_path / "out.npy").write_bytes(b"previous output")
    result = cli("run", SMALL, str(one_input), "-o", "out.npy", *extra)
    assert_one_line_error(result, fragment)
    assert (tmp_path / "out.npy").read_bytes() == b"previous output"
    assert (tmp_path / "afile").read_bytes() == b"a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "out.npy", "x.npy"]


def test_every_file_run_and_filter_write_has_a_normal_mode(cli, tmp_path: Path, one_input: Path) -> None:
    result = cli("run", SMALL, str(one_input), "-o", str(tmp_path / "out.npy"),
                 "--save-weights", str(tmp_path / "w.npz"), "--save-maps", str(tmp_path / "maps"))
    assert result.exit_code == 0, result.stderr
    result = cli("filter", CAMERA, "-k", "box3", "-o", str(tmp_path / "f.png"))
    assert result.exit_code == 0, result.stderr
    written = [tmp_path / "out.npy", tmp_path / "w.npz", tmp_path / "f.png", *(tmp_path / "maps").iterdir()]
    assert len(written) > 4
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {normal_mode()}


# ----------------------------------------------------------------------------- signals

_SLOW_WRITER = """
import signal, sys, time
from convcli import fileio
# a shell starts background jobs with SIGINT ignored, and children inherit that: restore
# Python's default (Ctrl-C raises KeyboardInterrupt), as in a command typed at a terminal
signal.signal(signal.SIGINT, signal.default_int_handler)
fileio.install_signal_cleanup()

def slow(stream):
    stream.write(b"partial")
    stream.flush()
    print("writing", flush=True)
    time.sleep(60)

fileio.write_file(sys.argv[1], slow)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_write_leaves_no_temporary_file(tmp_path: Path, signum: int) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous output")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env=env) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"writing\n"
            assert len(list(tmp_path.iterdir())) == 2  # the temporary file exists now
            proc.send_signal(signum)
            proc.wait(30)
        finally:
            proc.kill()
    assert proc.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert target.read_bytes() == b"previous output"


def test_sigterm_during_a_real_command(tmp_path: Path) -> None:
    """`convcli filter` on a large image, stopped by SIGTERM while it works: nothing left."""
    big = tmp_path / "big.npy"
    np.save(big, np.random.default_rng(0).random((3000, 3000), dtype=np.float32))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "convcli", "filter", str(big), "-k", "gaussian7", "-k",
                             "gaussian7", "-k", "gaussian7", "-o", str(tmp_path / "out.npy")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    time.sleep(1.0)
    proc.terminate()
    proc.wait(30)
    assert proc.returncode in (-signal.SIGTERM, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) in (["big.npy"], ["big.npy", "out.npy"])
    if (tmp_path / "out.npy").exists():  # finished before the signal: then it is whole
        assert np.load(tmp_path / "out.npy").shape == (3000, 3000)
