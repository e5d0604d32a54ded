"""The lecture's six loss functions, with Keras' exact semantics.

Each loss takes ``y_true`` and ``y_pred`` of the same shape and returns one value per
sample: the last axis holds one sample's values (its outputs or its class
probabilities), every other axis indexes samples. :func:`compute` then averages the
per-sample values, which is Keras' default ``"sum_over_batch_size"`` reduction.

The definitions follow ``keras/src/losses/losses.py`` and the numpy backend's
``nn.py`` (Keras 3), with ``epsilon = 1e-7`` (``keras.backend.epsilon()``):

- mse: ``mean((y - p)**2, axis=-1)``
- mae: ``mean(|y - p|, axis=-1)``
- mape: ``100 * mean(|y - p| / max(|y|, eps), axis=-1)``
- msle: ``mean((ln(max(p, eps) + 1) - ln(max(y, eps) + 1))**2, axis=-1)``
- binary-crossentropy: ``mean(-(y ln p + (1 - y) ln(1 - p)), axis=-1)``,
  p clipped to [eps, 1 - eps]
- categorical-crossentropy: ``-sum(y ln p, axis=-1)`` where p is first divided by its
  sum over the last axis, then clipped to [eps, 1 - eps]. A *sum* over the classes,
  not a mean: that is what Keras computes.

Computation is in float64 (Keras computes in float32 by default; results agree to
float32 precision).

>>> round(compute("binary-crossentropy", [1.0], [0.87]), 4)   # the lecture's student
0.1393
>>> round(compute("mae", [1.0], [0.87]), 2)
0.13
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from convcli.errors import InputError

#: ``keras.backend.epsilon()``: the clip for probabilities and the floor for divisors.
EPSILON = 1e-7


def mean_squared_error(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-sample mean squared error: ``mean((y - p)**2, axis=-1)``."""
    return np.mean(np.square(y_true - y_pred), axis=-1)


def mean_absolute_error(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-sample mean absolute error: ``mean(|y - p|, axis=-1)``."""
    return np.mean(np.abs(y_true - y_pred), axis=-1)


def mean_absolute_percentage_error(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-sample MAPE: ``100 * mean(|y - p| / max(|y|, 1e-7), axis=-1)`` (Keras)."""
    return 100.0 * np.mean(np.abs(y_true - y_pred) / np.maximum(np.abs(y_true), EPSILON), axis=-1)


def mean_squared_logarithmic_error(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-sample MSLE: ``mean((ln(max(p,eps)+1) - ln(max(y,eps)+1))**2, axis=-1)``.

    Values below ``1e-7`` (zero and negatives) are raised to ``1e-7`` first, as Keras does.
    """
    first_log = np.log1p(np.maximum(y_pred, EPSILON))
    second_log = np.log1p(np.maximum(y_true, EPSILON))
    return np.mean(np.square(first_log - second_log), axis=-1)


def binary_crossentropy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-sample binary cross-entropy, natural log, p clipped to [1e-7, 1 - 1e-7].

    ``mean(-(y ln p + (1 - y) ln(1 - p)), axis=-1)``.
    """
    p = np.clip(y_pred, EPSILON, 1.0 - EPSILON)
    return np.mean(-(y_true * np.log(p) + (1.0 - y_true) * np.log(1.0 - p)), axis=-1)


def categorical_crossentropy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-sample categorical cross-entropy: ``-sum(y ln p, axis=-1)``, natural log.

    As in Keras, each row of ``p`` is divided by its sum first (so unnormalised scores
    are accepted), then clipped to [1e-7, 1 - 1e-7].

    Raises:
        InputError: fewer than two classes on the last axis, or a row of predictions whose
            sum is not positive (it cannot be normalised).
    """
    if y_pred.shape[-1] < 2:
        raise InputError(
            "categorical-crossentropy needs at least 2 classes on the last axis "
            f"(one row per sample). Received: shape={format_shape(y_pred.shape)}. "
            "For one probability per sample use binary-crossentropy."
        )
    sums = np.sum(y_pred, axis=-1, keepdims=True)
    if not np.all(sums > 0):
        bad = np.argwhere(~(sums[..., 0] > 0))[0]
        where = ", ".join(str(int(i)) for i in bad) or "0"
        raise InputError(
            "categorical-crossentropy needs predictions whose sum over each row is positive "
            f"(they are divided by it). Received: row {where} sums to {float(sums[tuple(bad)][0]):g}"
        )
    p = np.clip(y_pred / sums, EPSILON, 1.0 - EPSILON)
    return -np.sum(y_true * np.log(p), axis=-1)


LossFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: The six losses of the lecture, by their convcli names.
LOSSES: dict[str, LossFunction] = {
    "mse": mean_squared_error,
    "mae": mean_absolute_error,
    "mape": mean_absolute_percentage_error,
    "msle": mean_squared_logarithmic_error,
    "binary-crossentropy": binary_crossentropy,
    "categorical-crossentropy": categorical_crossentropy,
}


@dataclass(frozen=True)
class LossInfo:
    """How a loss is written down: its formula, its Keras name and what it measures."""

    name: str
    formula: str
    keras: str
    description: str


LOSS_INFO: dict[str, LossInfo] = {
    "mse": LossInfo(
        "mse",
        "mean over samples of  mean_i (y_i - p_i)^2",
        "keras.losses.mean_squared_error",
        "mean squared error",
    ),
    "mae": LossInfo(
        "mae",
        "mean over samples of  mean_i |y_i - p_i|",
        "keras.losses.mean_absolute_error",
        "mean absolute error",
    ),
    "mape": LossInfo(
        "mape",
        "mean over samples of  100 * mean_i |y_i - p_i| / max(|y_i|, 1e-7)",
        "keras.losses.mean_absolute_percentage_error",
        "mean absolute percentage error",
    ),
    "msle": LossInfo(
        "msle",
        "mean over samples of  mean_i (ln(max(p_i,1e-7) + 1) - ln(max(y_i,1e-7) + 1))^2",
        "keras.losses.mean_squared_logarithmic_error",
        "mean squared logarithmic error",
    ),
    "binary-crossentropy": LossInfo(
        "binary-crossentropy",
        "mean over samples of  mean_i -[y_i ln(p_i) + (1 - y_i) ln(1 - p_i)],"
        "  p clipped to [1e-7, 1 - 1e-7]",
        "keras.losses.binary_crossentropy",
        "binary cross-entropy (natural log)",
    ),
    "categorical-crossentropy": LossInfo(
        "categorical-crossentropy",
        "mean over samples of  -sum_i y_i ln(p_i),"
        "  p divided by its row sum, then clipped to [1e-7, 1 - 1e-7]",
        "keras.losses.categorical_crossentropy",
        "categorical cross-entropy (natural log)",
    ),
}

# Keras' long names and short aliases, spelled with '-' (underscores are accepted too).
_ALIASES: dict[str, str] = {
    "mean-squared-error": "mse",
    "mean-absolute-error": "mae",
    "mean-absolute-percentage-error": "mape",
    "mean-squared-logarithmic-error": "msle",
    "bce": "binary-crossentropy",
    "cce": "categorical-crossentropy",
    "binary-cross-entropy": "binary-crossentropy",
    "categorical-cross-entropy": "categorical-crossentropy",
}


def resolve_name(name: str) -> str:
    """Return the canonical loss name for ``name`` (Keras' long names are accepted).

    >>> resolve_name("mean_squared_error")
    'mse'

    Raises:
        InputError: an unknown name, listing the allowed ones.
    """
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in LOSSES:
        raise InputError(
            "Unknown value for `loss`. Allowed values are: "
            f"{', '.join(LOSSES)}. Received: loss={name}"
        )
    return key


def format_shape(shape: tuple[int, ...]) -> str:
    """``(2, 3)`` for a shape, ``(3,)`` for one axis."""
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _align(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reconcile two shapes that mean the same samples, else return them unchanged.

    - Keras' rule (``squeeze_or_expand_to_same_rank``): ``(N, 1)`` against ``(N,)`` gives
      N samples of one value each.
    - Extra leading axes of size 1 are dropped: ``(1, 3)`` against ``(3,)`` is one sample.
    """
    if y.ndim == p.ndim + 1 and y.shape[-1] == 1 and y.shape[:-1] == p.shape:
        return y, p[..., np.newaxis]
    if p.ndim == y.ndim + 1 and p.shape[-1] == 1 and p.shape[:-1] == y.shape:
        return y[..., np.newaxis], p
    longer, shorter = (y, p) if y.ndim > p.ndim else (p, y)
    extra = longer.ndim - shorter.ndim
    if extra and all(n == 1 for n in longer.shape[:extra]) and longer.shape[extra:] == shorter.shape:
        return y.reshape(longer.shape), p.reshape(longer.shape)
    return y, p


def prepare(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as float64 of one shape, checked: what every loss receives.

    A scalar becomes shape ``(1,)``. ``(N, 1)`` against ``(N,)`` and extra leading axes
    of size 1 are reconciled (see :func:`_align`); any other difference is an error.

    Raises:
        InputError: shapes that differ (naming both), no values, NaN or infinity.
    """
    try:
        y = np.asarray(y_true, dtype=np.float64)
        p = np.asarray(y_pred, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"loss values must be real numbers: {exc}") from None
    if y.ndim == 0:
        y = y.reshape(1)
    if p.ndim == 0:
        p = p.reshape(1)
    if y.shape != p.shape:
        y, p = _align(y, p)
    if y.shape != p.shape:
        raise InputError(
            "--true and --pred must have the same shape. Received: "
            f"true shape={format_shape(y.shape)}, pred shape={format_shape(p.shape)}"
        )
    if y.size == 0:
        raise InputError("--true and --pred are empty: nothing to compare")
    for label, array in (("true", y), ("pred", p)):
        if not np.all(np.isfinite(array)):
            raise InputError(f"--{label} holds NaN or infinite values; only finite numbers are allowed")
    return y, p


def per_sample(name: str, y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """The loss of each sample: an array of shape ``y_true.shape[:-1]``.

    A scalar or a 1-D array is one sample (Keras reduces the last axis).

    Raises:
        InputError: unknown name, shapes that differ, empty or non-finite values.
    """
    loss = LOSSES[resolve_name(name)]
    y, p = prepare(y_true, y_pred)
    return np.asarray(loss(y, p), dtype=np.float64)


def compute(name: str, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """The loss averaged over samples (Keras' default ``sum_over_batch_size``).

    >>> compute("mse", [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]])
    0.5
    """
    return float(np.mean(per_sample(name, y_true, y_pred)))


# --- reading Y and P ----------------------------------------------------------------

_NUMBER_SPLIT = re.compile(r"[\s,]+")


def _is_header(line: str) -> bool:
    """True when no token of the line is a number (a CSV header)."""
    for token in _NUMBER_SPLIT.split(line):
        try:
            float(token)
        except ValueError:
            continue
        return False
    return True


def parse_values(text: str, *, label: str = "values") -> np.ndarray:
    """Parse numbers written as text: rows split by ``;`` or new lines, values by spaces
    or commas. One row gives a 1-D array (one sample), several rows a 2-D array.

    Lines starting with ``#`` are comments. A first line with no number at all (a CSV
    header such as ``y_true,y_pred``) is skipped.

    >>> parse_values("1 0 0; 0 1 0").shape
    (2, 3)
    >>> parse_values("0.87")
    array([0.87])

    Raises:
        InputError: a value that is not a number, rows of different lengths, no values.
    """
    rows: list[list[float]] = []
    first = True
    header = ""
    for line in re.split(r"[;\n\r]", text):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if first and _is_header(line):
            first = False
            header = line
            continue
        first = False
        row: list[float] = []
        for token in _NUMBER_SPLIT.split(line):
            if not token:
                continue
            try:
                value = float(token)
            except ValueError:
                raise InputError(
                    f"{label}: {token!r} is not a number (expected numbers split by spaces or "
                    "commas, rows by ';' or new lines)"
                ) from None
            if not math.isfinite(value):
                raise InputError(f"{label}: {token!r} is not a finite number")
            row.append(value)
        if row:
            rows.append(row)
    if not rows:
        seen = f" ({header!r} holds no number)" if header else ""
        raise InputError(f"{label}: no numbers found{seen}")
    lengths = {len(row) for row in rows}
    if len(lengths) > 1:
        raise InputError(
            f"{label}: rows have different lengths ({', '.join(str(len(r)) for r in rows)}); "
            "every row needs the same number of values"
        )
    array = np.array(rows, dtype=np.float64)
    return array[0] if len(rows) == 1 else array


def _from_npy_bytes(data: bytes, label: str) -> np.ndarray:
    from convcli import fileio

    array = fileio.load_npy(data, label=label)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{label}: the .npy array must hold real numbers (got dtype {array.dtype})")
    array = array.astype(np.float64)
    return array.reshape(1) if array.ndim == 0 else array


def values_from_bytes(data: bytes, *, label: str = "stdin") -> np.ndarray:
    """Values from raw bytes (stdin): a ``.npy`` array when it starts with numpy's magic
    string, otherwise text as in :func:`parse_values`.

    Raises:
        InputError: empty input, an unreadable array, or text that is not numbers.
    """
    if not data.strip():
        raise InputError(f"{label}: no input (expected numbers or a .npy array)")
    if data.startswith(b"\x93NUMPY"):
        return _from_npy_bytes(data, label)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{label}: neither a .npy array nor UTF-8 text of numbers") from None
    return parse_values(text, label=label)


def read_values(source: str, *, label: str = "values") -> np.ndarray:
    """Values from a ``.npy`` or ``.csv``/text file, or from inline numbers.

    ``source`` is a file when it names an existing file or ends in ``.npy``/``.csv``;
    otherwise it is parsed as inline numbers (``"1 0 0; 0 1 0"``, ``"0.87"``).
    Reading ``-`` (stdin) is the caller's business: see :func:`values_from_bytes`.

    Raises:
        InputError: a missing or unreadable file, or text that is not numbers.
    """
    path = Path(source)
    looks_like_file = source.lower().endswith((".npy", ".csv", ".txt"))
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except OSError:  # e.g. a name too long to be a path: inline numbers
        is_file = is_dir = False
    if is_file:
        from convcli import fileio

        data = fileio.read_bytes(path, what=label)
        if source.lower().endswith(".npy"):
            return _from_npy_bytes(data, f"{label} ({source})")
        return values_from_bytes(data, label=f"{label} ({source})")  # also a .npy array by another name
    if is_dir:
        raise InputError(f"{label}: {source} is a folder; expected a .npy or .csv file or numbers")
    if looks_like_file:
        raise InputError(f"{label}: no such file: {source}")
    return parse_values(source, label=label)
