"""The kernel library: named kernels from TOML files, kernel files, and inline matrices.

A *kernel* is a small matrix laid on the image, multiplied element-wise and summed
(cross-correlation, as in the lecture). :class:`Kernel` holds the matrix as written in its
file, an optional exact ``scale`` (``1/9``) and the *effective* weights (scale applied).
A :class:`GradientPair` names two kernels whose responses ``gx`` and ``gy`` combine into the
gradient magnitude ``sqrt(gx² + gy²)`` (``sobel``, ``prewitt``, ``scharr``).

Library folders hold one TOML file per kernel or family. The built-in folder is
``convcli/_kernels`` in an installed wheel (pyproject force-includes the repository's
``kernels/`` there), else ``<repo>/kernels``. User folders come from ``--kernel-path``
(repeatable) and ``CONVCLI_KERNEL_PATH`` (``:``-separated); a user kernel with the same name
as a built-in one wins.

File format (see ``kernels/README.md``)::

    name = "box3"                  # a single kernel at top level ...
    description = "3x3 box blur"
    scale = "1/9"                  # optional, exact: a fraction string or a number
    matrix = [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    source = "where the numbers come from"

or a family: ``[[kernel]]`` tables with the same keys and ``[[pair]]`` tables with
``name``, ``description``, ``x``, ``y`` (names of kernels in the same file), ``source``.
A file ``F.toml`` in a library folder may only define the name ``F`` or names that start
with ``F-``: the registry then finds ``sobel-x`` by opening ``sobel-x.toml`` or
``sobel.toml`` only, and parses the rest of the library only when it must list it.

Like imageio's plugin registry, folders are scanned cheaply and files parsed when asked.
No scipy or Pillow here: ``convcli kernels`` must start fast.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

import convcli
from convcli.errors import KernelError

__all__ = [
    "ENV_VAR",
    "GradientPair",
    "Kernel",
    "KernelLibrary",
    "LibraryEntry",
    "builtin_folder",
    "format_number",
    "kernel_folders",
    "load_matrix_file",
    "parse_matrix",
    "read_kernel_file",
    "resolve_kernel",
]

ENV_VAR = "CONVCLI_KERNEL_PATH"
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.+-]*$")
_KERNEL_KEYS = ("name", "description", "scale", "matrix", "source")
_PAIR_KEYS = ("name", "description", "x", "y", "source")
_TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".dat")


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Kernel:
    """One kernel.

    ``weights`` are the effective float64 values (scale applied), read-only; ``matrix`` the
    values as written before the scale (equal to ``weights`` when there is no scale).
    """

    name: str
    weights: np.ndarray
    scale: Fraction | None = None
    description: str = ""
    source: str = ""
    path: Path | None = None
    builtin: bool = False
    matrix: np.ndarray | None = field(default=None, repr=False)

    @property
    def written(self) -> np.ndarray:
        """The matrix as written in its file (before ``scale``)."""
        return self.weights if self.matrix is None else self.matrix

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return (int(self.weights.shape[0]), int(self.weights.shape[1]))

    @property
    def size_label(self) -> str:
        """``"3x3"`` (rows x columns)."""
        return f"{self.shape[0]}x{self.shape[1]}"

    @property
    def rank(self) -> int:
        """Matrix rank; 1 means separable into a column times a row (two 1-D passes)."""
        return int(np.linalg.matrix_rank(self.weights))

    @property
    def separable(self) -> bool:
        """True when the kernel is an outer product of two vectors (rank 1)."""
        return self.rank == 1

    @property
    def total(self) -> float:
        """Sum of the effective weights (1 for blurs, 0 for edge detectors)."""
        return math.fsum(self.weights.ravel().tolist())

    def separable_factors(self) -> tuple[list[int], list[int]] | None:
        """Whole-number column and row whose outer product is the written matrix, or None.

        Only for separable (rank 1) kernels written with whole numbers; the scale stays apart.

        >>> resolve_kernel("sobel-x").separable_factors()
        ([1, 2, 1], [-1, 0, 1])
        """
        written = self.written
        if not self.separable or not np.all(written == np.round(written)):
            return None
        # Python integers (an object array): exact at any size, where int64 wraps at 9.2e18
        matrix = np.array([[int(v) for v in row] for row in written.tolist()], dtype=object)
        i, j = np.unravel_index(int(np.argmax(np.abs(written))), matrix.shape)
        column = matrix[:, j]
        divisor = math.gcd(*(int(v) for v in column))
        first = next(int(v) for v in column if v != 0)
        divisor = -divisor if first < 0 else divisor
        column_factor = [int(v) // divisor for v in column]
        row = [Fraction(int(v) * divisor, int(matrix[i, j])) for v in matrix[i, :]]
        if any(v.denominator != 1 for v in row):
            return None
        row_factor = [int(v) for v in row]
        # Show the smoothing factor (all one sign) positive: sobel-y = [-1 0 1] x [1 2 1].
        if all(v >= 0 for v in column_factor) is False and all(v <= 0 for v in row_factor):
            column_factor = [-v for v in column_factor]
            row_factor = [-v for v in row_factor]
        if not np.array_equal(np.outer(column_factor, row_factor), matrix):
            return None
        return column_factor, row_factor

    def exact_total(self) -> Fraction | None:
        """The sum as an exact fraction when the written values are integers, else None."""
        written = self.written
        if not np.all(written == np.round(written)):
            return None
        total = Fraction(sum(int(v) for v in written.ravel().tolist()))  # Python ints: no wrap-around
        return total * self.scale if self.scale is not None else total


@dataclass(frozen=True, eq=False)
class GradientPair:
    """Two kernels whose responses combine into the gradient magnitude sqrt(gx² + gy²)."""

    name: str
    x: Kernel
    y: Kernel
    description: str = ""
    source: str = ""
    path: Path | None = None
    builtin: bool = False


@dataclass(frozen=True)
class LibraryEntry:
    """One name in the library listing; ``overrides`` is set when a user file shadows a built-in."""

    item: Kernel | GradientPair
    overrides: bool = False


# ----------------------------------------------------------------------------- numbers


def _parse_number(token: str, where: str) -> Fraction:
    """``"3"``, ``"-0.5"``, ``"1/9"``, ``"1e-3"`` -> exact Fraction; KernelError otherwise."""
    text = token.strip()
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None and not math.isfinite(value):
        raise KernelError(f"{where}: NaN and infinite values are not allowed in a kernel. Received: {text}")
    try:
        return Fraction(text)
    except ZeroDivisionError:
        raise KernelError(f"{where}: division by zero in {text!r}") from None
    except ValueError:
        raise KernelError(
            f"{where}: {text!r} is not a number (expected integers, decimals or fractions like 1/9)"
        ) from None


def _value_from_toml(value: Any, where: str) -> Fraction:
    if isinstance(value, bool):
        raise KernelError(f"{where}: {value!r} is not a number")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise KernelError(f"{where}: NaN and infinite values are not allowed in a kernel. Received: {value}")
        return Fraction(repr(value))
    if isinstance(value, str):
        return _parse_number(value, where)
    raise KernelError(f"{where}: {value!r} is not a number")


def format_number(value: float | Fraction) -> str:
    """Compact display: integers without a point, others to 4 decimals (``10.3333``)."""
    if isinstance(value, Fraction):
        return str(value)
    if float(value).is_integer():
        return str(int(value))
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


#: The largest magnitude a kernel weight may have: images are filtered in float32, where a
#: larger weight becomes infinite (and 0 * inf gives NaN where the answer is 0).
MAX_WEIGHT = float(np.finfo(np.float32).max)


def _check_range(values: list[Fraction], where: str) -> None:
    for value in values:
        if abs(value) > MAX_WEIGHT:
            shown = f"{float(value):.4g}" if abs(value) < 1e308 else "beyond 1e308"
            raise KernelError(
                f"{where}: the weight {shown} is outside float32's range (|w| <= {MAX_WEIGHT:.4g}), "
                "in which images are filtered"
            )


def _to_arrays(
    rows: list[list[Fraction]], scale: Fraction | None, where: str = "kernel"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Written values -> (effective weights, written matrix or None when there is no scale).

    Raises:
        KernelError: a written or effective weight outside float32's range.
    """
    _check_range([v for row in rows for v in row], where)
    if scale is not None:
        _check_range([v * scale for row in rows for v in row], where)
    written = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    if scale is None:
        return _readonly(written), None
    effective = np.array([[float(v * scale) for v in row] for row in rows], dtype=np.float64)
    return _readonly(effective), _readonly(written)


def _check_rows(rows: list[list[Fraction]], where: str) -> None:
    if not rows or all(len(r) == 0 for r in rows):
        raise KernelError(f"{where}: the kernel is empty (expected rows of numbers)")
    widths = [len(r) for r in rows]
    if len(set(widths)) != 1:
        detail = ", ".join(f"row {i + 1} has {w}" for i, w in enumerate(widths))
        raise KernelError(f"{where}: rows have different lengths ({detail}); every row needs the same number of values")


# ----------------------------------------------------------------------------- inline / text


def parse_matrix(text: str, *, name: str = "inline", where: str | None = None) -> Kernel:
    """Parse an inline matrix: rows split by ``;`` (or newlines), values by spaces or commas.

    Fractions such as ``1/9`` are exact. A leading scale may be written as
    ``"1/9 * 1 1 1; 1 1 1; 1 1 1"``. ``#`` starts a comment (for text files).

    >>> parse_matrix("1 0 -1; 2, 0, -2; 1 0 -1").weights.tolist()
    [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]
    >>> k = parse_matrix("1/9 * 1 1 1; 1 1 1; 1 1 1"); (str(k.scale), round(k.total, 12))
    ('1/9', 1.0)

    Raises:
        KernelError: empty, ragged, non-numeric, NaN or infinite values.
    """
    where = where or f"kernel {text.strip()!r}"
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    scale: Fraction | None = None
    if "*" in body:
        head, _, rest = body.partition("*")
        if "*" in rest or not head.strip() or len(head.split()) != 1:
            raise KernelError(f"{where}: a scale is written once, before the rows, like \"1/9 * 1 1 1; 1 1 1; 1 1 1\"")
        scale = _parse_number(head, where)
        body = rest
    rows: list[list[Fraction]] = []
    for raw in re.split(r"[;\n]", body):
        tokens = [t for t in re.split(r"[\s,]+", raw.strip()) if t]
        if tokens:
            rows.append([_parse_number(t, where) for t in tokens])
    _check_rows(rows, where)
    weights, matrix = _to_arrays(rows, scale, where)
    return Kernel(name=name, weights=weights, scale=scale, matrix=matrix, description="inline matrix")


def _load_npy(path: Path) -> Kernel:
    from convcli import fileio

    array = fileio.load_npy(path, label=f"{path}", what="kernel file", error=KernelError)
    if array.ndim != 2 or array.size == 0:
        raise KernelError(f"{path}: a kernel must be a non-empty 2-D array. Received shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise KernelError(f"{path}: a kernel must hold real numbers. Received dtype {array.dtype}")
    weights = array.astype(np.float64)
    if not np.all(np.isfinite(weights)):
        raise KernelError(f"{path}: NaN and infinite values are not allowed in a kernel")
    if np.abs(weights).max() > MAX_WEIGHT:
        raise KernelError(
            f"{path}: the weight {np.abs(weights).max():.4g} is outside float32's range "
            f"(|w| <= {MAX_WEIGHT:.4g}), in which images are filtered"
        )
    return Kernel(name=path.stem, weights=_readonly(weights), path=path, description=f"array from {path.name}")


# ----------------------------------------------------------------------------- TOML files


def _parse_toml_kernel(table: dict[str, Any], path: Path, builtin: bool, where: str) -> Kernel:
    unknown = sorted(set(table) - set(_KERNEL_KEYS))
    if unknown:
        raise KernelError(f"{where}: unknown key {unknown[0]!r}. Allowed keys are: {', '.join(_KERNEL_KEYS)}")
    name = table.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise KernelError(f"{where}: `name` must be a string of letters, digits, '-', '_' or '.' starting with a letter. Received: {name!r}")
    where = f"{path}: kernel {name!r}"
    matrix = table.get("matrix")
    if matrix is None:
        raise KernelError(f"{where}: missing `matrix` (a list of rows, e.g. [[1, 1], [1, 1]])")
    if not isinstance(matrix, list) or not all(isinstance(r, list) for r in matrix):
        raise KernelError(f"{where}: `matrix` must be a list of rows, e.g. [[1, 1], [1, 1]]")
    rows = [[_value_from_toml(v, where) for v in row] for row in matrix]
    _check_rows(rows, where)
    scale: Fraction | None = None
    if "scale" in table:
        scale = _value_from_toml(table["scale"], f"{where}: `scale`")
        if scale == 0:
            raise KernelError(f"{where}: `scale` must not be 0")
    for key in ("description", "source"):
        if key in table and not isinstance(table[key], str):
            raise KernelError(f"{where}: `{key}` must be a string")
    weights, written = _to_arrays(rows, scale, where)
    return Kernel(
        name=name,
        weights=weights,
        scale=scale,
        description=table.get("description", ""),
        source=table.get("source", ""),
        path=path,
        builtin=builtin,
        matrix=written,
    )


def read_kernel_file(path: Path, *, builtin: bool = False) -> dict[str, Kernel | GradientPair]:
    """Parse one library TOML file into ``{name: Kernel | GradientPair}`` (in file order).

    Raises:
        KernelError: naming the file and the problem (bad TOML, unknown keys, bad matrix,
            a pair naming a kernel that the file does not define, a name defined twice).
    """
    import tomllib

    from convcli import fileio

    text = fileio.read_text(path, what="kernel file", error=KernelError)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KernelError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise KernelError(f"{path}: not valid TOML (nested too deeply)") from None

    items: dict[str, Kernel | GradientPair] = {}

    def add(item: Kernel | GradientPair) -> None:
        if item.name in items:
            raise KernelError(f"{path}: the name {item.name!r} is defined twice")
        items[item.name] = item

    top_level = {k: v for k, v in document.items() if k not in ("kernel", "pair")}
    if top_level:
        add(_parse_toml_kernel(top_level, path, builtin, f"{path}"))
    for group in ("kernel", "pair"):
        tables = document.get(group, [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise KernelError(f"{path}: `{group}` must be an array of tables ([[{group}]])")
    for table in document.get("kernel", []):
        add(_parse_toml_kernel(table, path, builtin, f"{path}: [[kernel]]"))
    for table in document.get("pair", []):
        unknown = sorted(set(table) - set(_PAIR_KEYS))
        if unknown:
            raise KernelError(f"{path}: [[pair]]: unknown key {unknown[0]!r}. Allowed keys are: {', '.join(_PAIR_KEYS)}")
        name = table.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise KernelError(f"{path}: [[pair]]: `name` must be a kernel name. Received: {name!r}")
        parts = []
        for axis in ("x", "y"):
            ref = table.get(axis)
            target = items.get(ref) if isinstance(ref, str) else None
            if not isinstance(target, Kernel):
                defined = ", ".join(n for n, i in items.items() if isinstance(i, Kernel)) or "none"
                raise KernelError(
                    f"{path}: pair {name!r}: `{axis}` must name a kernel defined in the same file "
                    f"(defined: {defined}). Received: {axis}={ref!r}"
                )
            parts.append(target)
        if parts[0].shape != parts[1].shape:
            raise KernelError(f"{path}: pair {name!r}: x and y kernels must have the same size")
        add(
            GradientPair(
                name=name,
                x=parts[0],
                y=parts[1],
                description=table.get("description", ""),
                source=table.get("source", ""),
                path=path,
                builtin=builtin,
            )
        )
    if not items:
        raise KernelError(f"{path}: no kernel defined (expected `name` and `matrix`, or [[kernel]] tables)")
    return items


def load_matrix_file(path: Path) -> Kernel:
    """A bare matrix from a file: a 2-D ``.npy`` array or a plain-text matrix (not TOML).

    Raises:
        KernelError: unreadable file, wrong shape, non-numeric, ragged, NaN/inf.
    """
    if path.suffix.lower() == ".toml":
        raise KernelError(f"{path}: expected a .npy array or a plain-text matrix, not a .toml kernel file")
    item = _load_file(path)
    assert isinstance(item, Kernel)  # only .toml files hold pairs
    return item


def _load_file(path: Path) -> Kernel | GradientPair:
    """A kernel file given by path: .toml (library format), .npy, or a plain-text matrix."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _load_npy(path)
    if suffix == ".toml":
        items = read_kernel_file(path)
        pairs = [i for i in items.values() if isinstance(i, GradientPair)]
        if len(items) == 1:
            return next(iter(items.values()))
        if len(pairs) == 1:
            return pairs[0]
        raise KernelError(
            f"{path}: the file defines several kernels ({', '.join(items)}); put it in a folder "
            "given with --kernel-path and pick one by name"
        )
    from convcli import fileio

    data = fileio.read_bytes(path, what="kernel file", error=KernelError)
    if fileio.sniff(data) == "npy":  # a .npy array under another name
        return _load_npy(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KernelError(f"{path}: not a text matrix, a .toml kernel file or a .npy array") from None
    kernel = parse_matrix(text, name=path.stem, where=str(path))
    return Kernel(
        name=path.stem,
        weights=kernel.weights,
        scale=kernel.scale,
        matrix=kernel.matrix,
        description=f"matrix from {path.name}",
        path=path,
    )


# ----------------------------------------------------------------------------- folders


def builtin_folder(package_dir: Path | None = None) -> Path:
    """The built-in kernel folder: ``convcli/_kernels`` when installed, else ``<repo>/kernels``."""
    package_dir = package_dir or Path(convcli.__file__).resolve().parent
    shipped = package_dir / "_kernels"
    return shipped if shipped.is_dir() else package_dir.parent / "kernels"


def kernel_folders(
    extra_paths: Sequence[Path | str] = (), environ: Mapping[str, str] | None = None
) -> list[Path]:
    """User kernel folders in priority order: ``--kernel-path`` ones, then ``CONVCLI_KERNEL_PATH``.

    Raises:
        KernelError: a folder that does not exist (naming where it came from).
    """
    environ = os.environ if environ is None else environ
    folders: list[Path] = []
    for raw in extra_paths:
        folder = Path(raw).expanduser()
        if not folder.is_dir():
            raise KernelError(f"--kernel-path {raw}: no such folder (expected a folder of .toml kernel files)")
        folders.append(folder)
    for raw in environ.get(ENV_VAR, "").split(os.pathsep):
        if not raw.strip():
            continue
        folder = Path(raw).expanduser()
        if not folder.is_dir():
            raise KernelError(f"{ENV_VAR} entry {raw}: no such folder (expected a folder of .toml kernel files)")
        folders.append(folder)
    return folders


def _candidate_stems(name: str) -> Iterator[str]:
    """``haar-edge-vertical`` -> ``haar-edge-vertical``, ``haar-edge``, ``haar``."""
    parts = name.split("-")
    for end in range(len(parts), 0, -1):
        yield "-".join(parts[:end])


class KernelLibrary:
    """User folders (first wins) over the built-in folder; files parsed only when needed."""

    def __init__(self, user_folders: Sequence[Path] = (), builtin: Path | None = None) -> None:
        self.user_folders = [Path(p) for p in user_folders]
        self.builtin = builtin if builtin is not None else builtin_folder()
        self._cache: dict[Path, dict[str, Kernel | GradientPair]] = {}

    @classmethod
    def from_environment(cls, extra_paths: Sequence[Path | str] = ()) -> KernelLibrary:
        """``--kernel-path`` folders, then ``CONVCLI_KERNEL_PATH``, then the built-ins."""
        return cls(kernel_folders(extra_paths))

    def _folders(self) -> list[tuple[Path, bool]]:
        return [(f, False) for f in self.user_folders] + [(self.builtin, True)]

    def _read(self, path: Path, builtin: bool) -> dict[str, Kernel | GradientPair]:
        if path not in self._cache:
            items = read_kernel_file(path, builtin=builtin)
            stem = path.stem
            for name in items:
                if name != stem and not name.startswith(stem + "-"):
                    raise KernelError(
                        f"{path}: kernel name {name!r} must be {stem!r} or start with {stem + '-'!r} "
                        "(a library file F.toml defines F or F-something)"
                    )
            self._cache[path] = items
        return self._cache[path]

    def get(self, name: str) -> Kernel | GradientPair:
        """The kernel or pair called ``name``; user folders first.

        Raises:
            KernelError: unknown name (listing close names), or a malformed file.
        """
        for folder, builtin in self._folders():
            for stem in _candidate_stems(name):
                path = folder / f"{stem}.toml"
                if path.is_file():
                    item = self._read(path, builtin).get(name)
                    if item is not None:
                        return item
        raise KernelError(self._unknown_message(name))

    def names(self, *, skip_broken: bool = True) -> list[str]:
        """Every name in every folder (broken files skipped when ``skip_broken``)."""
        found: set[str] = set()
        for folder, builtin in self._folders():
            for path in sorted(folder.glob("*.toml")):
                try:
                    found.update(self._read(path, builtin))
                except KernelError:
                    if not skip_broken:
                        raise
        return sorted(found)

    def _unknown_message(self, name: str) -> str:
        import difflib

        names = self.names()
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        close += [n for n in names if n.lower() == name.lower() and n not in close]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return (
            f"Unknown kernel {name!r}.{hint} `convcli kernels` lists the library; a kernel may also "
            'be a file path or an inline matrix such as "1 0 -1; 2 0 -2; 1 0 -1"'
        )

    def entries(self) -> list[LibraryEntry]:
        """Every name ``--kernel`` accepts, sorted; user entries replace built-ins (flagged).

        Raises:
            KernelError: a malformed file, or one name defined by two files of one folder.
        """
        chosen: dict[str, LibraryEntry] = {}
        for folder, builtin in reversed(self._folders()):  # lowest priority first
            seen_here: dict[str, Path] = {}
            parsed = [(f, self._read(f, builtin)) for f in sorted(folder.glob("*.toml"))]
            for path, items in parsed:
                for name, item in items.items():
                    if name in seen_here:
                        raise KernelError(f"kernel {name!r} is defined twice in {folder}: {seen_here[name].name} and {path.name}")
                    seen_here[name] = path
                    previous = chosen.get(name)
                    overrides = previous is not None and (previous.overrides or previous.item.builtin)
                    chosen[name] = LibraryEntry(item=item, overrides=overrides and not builtin)
        return [chosen[n] for n in sorted(chosen)]


# ----------------------------------------------------------------------------- resolve


def _looks_like_path(spec: str) -> bool:
    return (
        "/" in spec
        or "\\" in spec
        or spec.lower().endswith((".toml", ".npy", *_TEXT_SUFFIXES))
        or spec.startswith(("~", "."))
    )


def _looks_inline(spec: str) -> bool:
    if re.search(r"[;,\s*]", spec):
        return True
    try:
        float(spec)  # a 1x1 matrix, including "nan" and "inf" (refused by the parser)
        return True
    except ValueError:
        pass
    first = spec[0]
    if first.isdigit() or first in "+-" or (first == "." and len(spec) > 1 and spec[1].isdigit()):
        return True
    return False


def resolve_kernel(spec: str, extra_paths: Sequence[Path | str] = ()) -> Kernel | GradientPair:
    """Turn a ``--kernel`` value into a kernel (or a gradient pair).

    ``spec`` is a library name (``convcli kernels``), a path to a kernel file (``.toml`` in
    the library format, ``.npy`` 2-D array, or a plain-text matrix), or an inline matrix
    (``"1 0 -1; 2 0 -2; 1 0 -1"``, fractions allowed, optional leading ``"1/9 * ..."``).
    A bare name is looked up in the library first; an existing file of that name is used
    only when the library has no such kernel. ``extra_paths`` are user folders (``--kernel-path``)
    searched before ``CONVCLI_KERNEL_PATH`` and the built-ins.

    >>> str(resolve_kernel("box3").scale), resolve_kernel("box3").exact_total()
    ('1/9', Fraction(1, 1))
    >>> resolve_kernel("sobel").x.name
    'sobel-x'

    Raises:
        KernelError: empty spec, unknown name (with close names), missing file, ragged rows,
            a non-numeric value (named), NaN/inf, or a malformed file (named with the problem).
    """
    text = spec.strip()
    if not text:
        raise KernelError("Empty kernel. Expected a library name (see `convcli kernels`), a file, or an inline matrix like \"1 0 -1; 2 0 -2; 1 0 -1\"")
    path = Path(text).expanduser()
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except OSError:  # e.g. a long inline matrix: "File name too long"
        is_file = is_dir = False
    if NAME_PATTERN.match(text) and not _looks_like_path(text) and not _looks_inline(text):
        # A bare name: the library first, so a stray file called "box3" in the current
        # folder does not shadow the built-in; such a file is used only when no kernel has its name.
        try:
            return KernelLibrary.from_environment(extra_paths).get(text)
        except KernelError:
            if is_file:
                return _load_file(path)
            raise
    if is_file:
        return _load_file(path)
    if is_dir:
        raise KernelError(f"{text}: is a folder; give a kernel file, or use --kernel-path for a folder of kernels")
    if _looks_inline(text):
        return parse_matrix(text)
    if _looks_like_path(text):
        raise KernelError(f"Kernel file not found: {text}")
    return KernelLibrary.from_environment(extra_paths).get(text)
