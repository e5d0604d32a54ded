"""Every read of a user file and every write of an output, in one place.

The rules written once here:

- Reading: a path or ``-`` (stdin); ``.npy`` and ``.npz`` recognised by their content,
  not their name; a ``.npy`` header's declared size checked against the bytes the file
  holds before anything is allocated; an ``.npz`` archive's members listed (names, shapes,
  dtypes from their headers) before any member is inflated; pickles never loaded.
- Writing: a regular file (or a new name) is written to a temporary file in the same
  folder, then renamed over the destination, so an error never leaves a partial file nor
  touches an existing one; a symbolic link is followed (the file it names is replaced,
  the link stays); a device or FIFO (``-o /dev/null``) is written in place, never replaced
  by a regular file. Files get a normal file's mode (0666 minus the umask).
- Every output a command will write can be checked before the first one is written
  (:func:`check_writable`, :func:`check_output_folder`).
- Temporary files still being written are removed when the process is told to stop
  (SIGTERM, as Ctrl-C does): :func:`install_signal_cleanup`.

Errors are :class:`~convcli.errors.ConvcliError` subclasses (the caller picks which) with
a one-line message naming the file.
"""

from __future__ import annotations

import io
import math
import os
import signal
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, TypeVar

from convcli.errors import ConvcliError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "NPY_MAGIC",
    "NpzArchive",
    "check_output_folder",
    "check_writable",
    "install_signal_cleanup",
    "label_of",
    "load_npy",
    "npy_rows",
    "open_npz",
    "read_bytes",
    "read_text",
    "remove_partial_files",
    "sniff",
    "write_file",
]

NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")

T = TypeVar("T")
ErrorType = type[ConvcliError]


def label_of(source: str | Path) -> str:
    """How messages name a source: ``stdin`` for ``-``, else the path."""
    return "stdin" if str(source) == "-" else str(source)


def sniff(data: bytes) -> str | None:
    """The kind of array file ``data`` starts with: ``"npy"``, ``"npz"`` or None.

    >>> sniff(b"\\x93NUMPY\\x01\\x00"), sniff(b"PK\\x03\\x04..."), sniff(b"1 2 3")
    ('npy', 'npz', None)
    """
    if data.startswith(NPY_MAGIC):
        return "npy"
    if data.startswith(_ZIP_MAGICS):
        return "npz"
    return None


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _input_path(source: str | Path, what: str, error: ErrorType) -> Path:
    """``source`` as a Path after checking it names an existing file (not a folder)."""
    if str(source) == "":  # Path("") would be "." (a folder)
        raise error(f"{what}: an empty name is not a file")
    path = Path(source)
    _check_input_path(path, what, error)
    return path


def _check_input_path(path: Path, what: str, error: ErrorType) -> None:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is a folder, expected a file")


def read_bytes(source: str | Path, *, what: str = "input", error: ErrorType = InputError) -> bytes:
    """All bytes of a file, or of stdin when ``source`` is ``-``.

    Raises:
        error: the file is missing, a folder, unreadable, or empty (stdin too).
    """
    if str(source) == "-":
        try:
            data = sys.stdin.buffer.read()
        except OSError as exc:
            raise error(f"{what}: cannot read stdin: {exc.strerror or exc}") from None
        if not data:
            raise error(f"stdin is empty: nothing to read as {what}")
        return data
    path = _input_path(source, what, error)
    try:
        data = path.read_bytes()
    except MemoryError:
        raise error(f"{what} {path} is too large to read into memory") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if not data:
        raise error(f"{what} {path} is empty (0 bytes)")
    return data


def read_text(source: str | Path, *, what: str = "input", error: ErrorType = InputError) -> str:
    """A UTF-8 text file (or stdin) as a string.

    Raises:
        error: as :func:`read_bytes`, or the bytes are not UTF-8 text.
    """
    data = read_bytes(source, what=what, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {label_of(source)} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})"
        ) from None


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _npy_header(stream: IO[bytes], label: str, error: ErrorType) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape, Fortran order and dtype from a ``.npy`` header; the stream is left at the data."""
    import numpy as np

    fmt = np.lib.format
    try:
        major, _minor = fmt.read_magic(stream)
        if major == 1:
            shape, fortran, dtype = fmt.read_array_header_1_0(stream)
        elif major in (2, 3):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unknown .npy format version {major}")
    except (ValueError, EOFError, OSError, SyntaxError, TypeError, RecursionError, MemoryError) as exc:
        raise error(f"{label}: not a readable .npy array ({exc})") from None
    if dtype.hasobject:
        raise error(f"{label}: the .npy array holds Python objects (a pickle); convcli never loads pickles")
    return tuple(int(n) for n in shape), bool(fortran), dtype


def _data_bytes(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    return math.prod(shape) * dtype.itemsize


def _read_npy(stream: IO[bytes], size: int, label: str, error: ErrorType) -> np.ndarray:
    start = stream.tell()
    shape, _fortran, dtype = _npy_header(stream, label, error)
    need = _data_bytes(shape, dtype)
    have = size - stream.tell()
    if need > have:
        raise error(
            f"{label}: the .npy header declares shape {_shape_text(shape)} of {dtype} ({need:,} bytes) "
            f"but the file holds only {have:,} bytes of data"
        )
    stream.seek(start)
    import numpy as np

    try:
        array = np.lib.format.read_array(stream, allow_pickle=False)
    except MemoryError:
        raise error(f"{label}: the array needs {need:,} bytes, more memory than is available") from None
    except (ValueError, EOFError, OSError) as exc:
        raise error(f"{label}: not a readable .npy array ({exc})") from None
    return np.asarray(array)


def load_npy(
    source: str | Path | bytes, *, label: str | None = None, what: str = "input", error: ErrorType = InputError
) -> np.ndarray:
    """One array from a ``.npy`` file, from stdin (``-``) or from bytes already read.

    The content decides, not the name: an ``.npz`` archive (or anything else) is refused
    with a message that says what it is. The header's declared size is checked against
    the bytes present before the array is allocated.

    Raises:
        error: missing or unreadable file, not a ``.npy`` array, a header that declares
            more data than the file holds, an object (pickle) array.
    """
    if isinstance(source, (bytes, bytearray)):
        name = label or "input"
        return _array_from_bytes(bytes(source), name, error)
    name = label or f"{what} {label_of(source)}"
    if str(source) == "-":
        return _array_from_bytes(read_bytes(source, what=what, error=error), name, error)
    path = _input_path(source, what, error)
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            head = stream.read(len(NPY_MAGIC))
            _refuse_other_kind(head, name, error)
            stream.seek(0)
            return _read_npy(stream, size, name, error)
    except OSError as exc:
        raise error(f"{name} cannot be read: {exc.strerror or exc}") from None


def npy_rows(
    source: str | Path, *, label: str | None = None, error: ErrorType = InputError
) -> tuple[tuple[int, ...], np.dtype[Any], Callable[[int, int], np.ndarray]] | None:
    """A ``.npy`` file opened to be read a few rows at a time, never whole.

    Returns (shape, dtype, read) where ``read(r0, r1)`` gives rows r0..r1 (along the
    first axis) in the file's dtype, read with ``preadv`` (safe from several threads);
    the file stays open until ``read`` is garbage-collected. Returns None for anything
    that is not a numeric C-ordered array whose file holds exactly the bytes its header
    declares (stdin, Fortran order, a lying header, not a ``.npy`` at all): those are
    read whole, with :func:`load_npy`'s checks and messages.
    """
    import weakref

    import numpy as np

    if str(source) == "-":
        return None
    name = label or f"input {label_of(source)}"
    try:
        handle = os.open(source, os.O_RDONLY)
    except OSError:
        return None
    try:
        with os.fdopen(os.dup(handle), "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if sniff(stream.read(len(NPY_MAGIC))) != "npy":
                raise ValueError
            stream.seek(0)
            shape, fortran, dtype = _npy_header(stream, name, error)
            offset = stream.tell()
    except (ValueError, OSError, ConvcliError):
        os.close(handle)
        return None
    if fortran or dtype.kind not in "biuf" or not shape or size != offset + _data_bytes(shape, dtype):
        os.close(handle)
        return None
    row_bytes = _data_bytes(shape[1:], dtype)

    def read(r0: int, r1: int) -> np.ndarray:
        rows = np.empty((r1 - r0, *shape[1:]), dtype=dtype)
        view = rows.data.cast("B")
        done = 0
        while done < len(view):
            try:
                count = os.preadv(handle, [view[done:]], offset + r0 * row_bytes + done)
            except OSError as exc:
                raise error(f"{name} cannot be read: {exc.strerror or exc}") from None
            if count <= 0:
                raise error(f"{name} was truncated while it was being read")
            done += count
        return rows

    weakref.finalize(read, os.close, handle)
    return shape, dtype, read


def _refuse_other_kind(head: bytes, label: str, error: ErrorType) -> None:
    kind = sniff(head)
    if kind == "npz":
        raise error(f"{label} is a .npz archive of several arrays, expected one .npy array")
    if kind != "npy":
        raise error(f"{label} is not a readable .npy array (it does not start with numpy's magic string)")


def _array_from_bytes(data: bytes, label: str, error: ErrorType) -> np.ndarray:
    _refuse_other_kind(data[: len(NPY_MAGIC)], label, error)
    return _read_npy(io.BytesIO(data), len(data), label, error)


class NpzArchive:
    """An ``.npz`` archive whose members are known (name, shape, dtype) before any is read.

    Each member's ``.npy`` header is read (a few hundred bytes inflated) and its declared
    size checked against the archive's record of the member's size; arrays are inflated
    only by :meth:`read`.

    Attributes:
        members: ``{name: (shape, dtype)}`` in archive order (names without ``.npy``).
    """

    def __init__(self, archive: zipfile.ZipFile, label: str, error: ErrorType) -> None:
        self._zip = archive
        self._label = label
        self._error = error
        self._infos: dict[str, zipfile.ZipInfo] = {}
        self.members: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = info.filename.removesuffix(".npy")
            where = f"{label}: member '{name}'"
            try:
                with archive.open(info) as member:
                    shape, _fortran, dtype = _npy_header(member, where, error)
                    header_size = member.tell()
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, EOFError, OSError) as exc:
                raise error(f"{where} cannot be read ({exc})") from None
            need = _data_bytes(shape, dtype)
            if header_size + need != info.file_size:
                raise error(
                    f"{where}: the .npy header declares shape {_shape_text(shape)} of {dtype} ({need:,} bytes) "
                    f"but the member holds {max(info.file_size - header_size, 0):,} bytes of data"
                )
            self._infos[name] = info
            self.members[name] = (shape, dtype)

    def nbytes(self, name: str) -> int:
        """The bytes member ``name`` takes once read."""
        shape, dtype = self.members[name]
        return _data_bytes(shape, dtype)

    def read(self, name: str) -> np.ndarray:
        """Inflate and return member ``name``."""
        import numpy as np

        where = f"{self._label}: member '{name}'"
        try:
            with self._zip.open(self._infos[name]) as member:
                return np.asarray(np.lib.format.read_array(member, allow_pickle=False))
        except MemoryError:
            raise self._error(f"{where} needs {self.nbytes(name):,} bytes, more memory than is available") from None
        except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
            raise self._error(f"{where} cannot be read ({exc})") from None


@contextmanager
def open_npz(
    source: str | Path, *, what: str = "archive", error: ErrorType = InputError
) -> Iterator[NpzArchive]:
    """Open an ``.npz`` archive (recognised by content) and list its members.

    >>> import io, numpy as np, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> np.savez(os.path.join(folder, "w.npz"), a=np.zeros((2, 3), np.float32))
    >>> with open_npz(os.path.join(folder, "w.npz")) as archive:
    ...     archive.members["a"][0], archive.read("a").sum()
    ((2, 3), np.float32(0.0))

    Raises:
        error: missing, unreadable, a single ``.npy`` array, not a zip archive, a member
            that is not a ``.npy`` array or whose header lies about its size.
    """
    label = f"{what} {label_of(source)}"
    path = _input_path(source, what, error)
    try:
        stream = open(path, "rb")  # noqa: SIM115  (closed by the with below, after the yield)
    except OSError as exc:
        raise error(f"{label} cannot be read: {exc.strerror or exc}") from None
    with stream:
        head = stream.read(len(NPY_MAGIC))
        if sniff(head) == "npy":
            raise error(f"{label} is a single array, not a .npz archive of named arrays")
        stream.seek(0)
        try:
            archive = zipfile.ZipFile(stream)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise error(f"{label} is not a readable .npz archive ({exc})") from None
        with archive:
            yield NpzArchive(archive, label, error)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK
"""The mode of every file convcli writes: a normal file's (0666 minus the umask)."""

#: Temporary files being written right now (removed on SIGTERM / Ctrl-C).
_PARTIAL: set[str] = set()


def _stat(path: Path, option: str, error: ErrorType) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise error(f"{option}: cannot write {path}: a part of the path is a file, not a folder") from None
    except OSError as exc:
        raise error(f"{option}: cannot write {path}: {exc.strerror or exc}") from None


def _check_folder(folder: Path, option: str, error: ErrorType, target: Path) -> None:
    try:
        st = folder.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{option}: cannot write {target}: folder {folder} does not exist") from None
    except OSError as exc:
        raise error(f"{option}: cannot write {target}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{option}: cannot write {target}: {folder} is a file, not a folder")
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    if read_only or not os.access(folder, os.W_OK | os.X_OK):
        why = "the file system is read-only" if read_only else "permission denied"
        raise error(f"{option}: cannot write into folder {folder}: {why}")


def _folder_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_writable(path: str | Path, option: str = "output", *, error: ErrorType = InputError) -> None:
    """Check, before anything is computed or written, that ``path`` can be written.

    ``-`` (stdout) is always fine; a device or FIFO must allow writing; otherwise the
    folder must exist, be a folder and be writable (the file itself is replaced by rename,
    so its own permissions do not matter).

    Raises:
        error: naming the option, the path and what is wrong.
    """
    if str(path) == "-":
        return
    if str(path) == "":  # Path("") would be "." (a folder)
        raise error(f"{option}: an empty name is not a file name")
    path = Path(path)
    st = _stat(path, option, error)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise error(f"{option}: {path} is a folder, expected a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        if not os.access(path, os.W_OK):
            raise error(f"{option}: cannot write {path}: permission denied")
        return
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    _check_folder(_folder_of(real), option, error, path)


def check_output_folder(folder: str | Path, option: str = "output folder", *, error: ErrorType = InputError) -> None:
    """Check that ``folder`` is (or can be created as) a writable folder.

    Raises:
        error: it is a file, or its nearest existing ancestor is a file or not writable.
    """
    if str(folder) == "":
        raise error(f"{option}: an empty name is not a folder name")
    folder = Path(folder)
    st = _stat(folder, option, error)
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise error(f"{option}: {folder} exists and is not a folder")
        _check_folder(folder, option, error, folder)
        return
    ancestor = folder.absolute().parent
    while True:
        try:
            st = ancestor.stat()
            break
        except (FileNotFoundError, NotADirectoryError):
            ancestor = ancestor.parent
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{option}: cannot create folder {folder}: {ancestor} is a file, not a folder")
    _check_folder(ancestor, option, error, folder)


def make_folder(folder: str | Path, option: str = "output folder", *, error: ErrorType = InputError) -> Path:
    """Create ``folder`` (and its parents) if needed; errors as one line."""
    folder = Path(folder)
    check_output_folder(folder, option, error=error)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{option}: cannot create folder {folder}: {exc.strerror or exc}") from None
    return folder


def write_file(
    path: str | Path, write: Callable[[BinaryIO], T], *, what: str = "output", error: ErrorType = InputError
) -> T:
    """Write an output file through ``write(stream)`` and return what it returns.

    A regular file (or a new name) is written to a temporary file in its folder, given a
    normal file's mode, then renamed over the destination; on any error (or Ctrl-C,
    SIGTERM with :func:`install_signal_cleanup`) the temporary file is removed and an
    existing file is left as it was. A symbolic link is followed. A device or FIFO is
    written in place.

    Raises:
        error: the folder is missing or not writable, the disk is full, ... (one line
            naming the file); errors raised by ``write`` pass through.
    """
    path = Path(path)
    check_writable(path, what, error=error)
    st = _stat(path, what, error)
    if st is not None and not stat.S_ISREG(st.st_mode):  # /dev/null, a FIFO, a terminal
        # encoded in memory first: numpy and Pillow may seek, which a pipe cannot
        buffer = io.BytesIO()
        result = write(buffer)
        try:
            with os.fdopen(os.open(path, os.O_WRONLY), "wb") as stream:
                stream.write(buffer.getbuffer())
        except OSError as exc:
            raise error(f"{what}: cannot write {path}: {exc.strerror or exc}") from None
        return result
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        handle, temp = tempfile.mkstemp(dir=_folder_of(target), prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise error(f"{what}: cannot write {path}: {exc.strerror or exc}") from None
    _PARTIAL.add(temp)
    try:
        with os.fdopen(handle, "wb") as stream:
            result = write(stream)
        os.chmod(temp, FILE_MODE)
        os.replace(temp, target)
    except BaseException as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise error(f"{what}: cannot write {path}: {exc.strerror or exc}") from None
        raise
    finally:
        _PARTIAL.discard(temp)
    return result


def remove_partial_files() -> None:
    """Remove every temporary file still being written (safe inside a signal handler)."""
    for temp in list(_PARTIAL):
        try:
            os.unlink(temp)
        except OSError:
            pass


def _terminate(signum: int, frame: object) -> None:
    remove_partial_files()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_signal_cleanup() -> None:
    """On SIGTERM (and SIGHUP), remove partial files, then die of the signal as usual.

    Only the console script calls this (a library does not take over signals).
    """
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _terminate)
