"""The filtering engine: 2-D cross-correlation of images, exact and fast.

Every public function computes what :func:`scipy.ndimage.correlate` computes for each
channel with the same ``mode`` and ``cval`` (to float32 rounding), the lecture's "lay
the kernel on the image, multiply element-wise, sum" with no flip. What differs is how:
for each kernel the engine picks the cheapest exact method (:func:`plan`).

* ``"separable"``: the kernel is written as a short sum of outer products
  ``K = sum_s u_s v_s^T`` (one term for box, Gaussian, Sobel; two for the Laplacians and
  sharpen). The factors come from cross approximation (rows and columns of the kernel
  itself, so integer and dyadic kernels split exactly) or the SVD, and are used only
  when the reconstruction is exact to float32 rounding; else the kernel's own rows,
  which is always exact. Each term is a vertical pass with ``u_s`` then a horizontal
  pass with ``v_s``, done strip by strip (a strip is finished while it is in cache):
  short 1-D filters as shifted whole-strip adds over all channels at once (mirror
  pairs share one product, a common weight such as 1/9 is applied once), longer ones
  as small banded float32 matrix products (BLAS ``sgemm``). No Python loop visits a
  pixel. The split into strips is fixed, so results are bit-identical for any number
  of threads.
* ``"fft"``: large kernels of high rank, by overlap-add FFT
  (:func:`scipy.signal.oaconvolve`) on the image extended with :func:`numpy.pad` in the
  matching mode.
* ``"direct"``: :func:`scipy.ndimage.correlate` itself: tiny images, where set-up costs
  dominate, and images holding NaN or infinity when a product method would spread them
  to outputs that scipy (which skips zero weights) leaves finite.

Work is float32 throughout and strips are spread over the cores with a thread pool
(numpy's element-wise operations release the GIL; its matrix products do not, so each
product is kept small enough that OpenBLAS does not start threads of its own).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import as_strided

from convcli.errors import InputError, KernelError, ShapeError

__all__ = [
    "MODES",
    "correlate",
    "filter_bands",
    "filter_chain",
    "gradient_magnitude",
    "plan",
]

#: scipy.ndimage border modes and the :func:`numpy.pad` mode that extends an array the same
#: way (checked element by element against scipy in the tests, also far beyond one period).
MODES: dict[str, str] = {
    "reflect": "symmetric",  # d c b a | a b c d | d c b a
    "constant": "constant",  # k k k k | a b c d | k k k k
    "nearest": "edge",  # a a a a | a b c d | d d d d
    "mirror": "reflect",  # d c b | a b c d | c b a
    "wrap": "wrap",  # a b c d | a b c d | a b c d
}

Method = Literal["auto", "separable", "fft", "direct"]
Step = np.ndarray | tuple[np.ndarray, np.ndarray]

_EPS32 = float(np.finfo(np.float32).eps)
# Largest sum of separable terms worth running before FFT or the direct method win.
_MAX_TERMS = 16
# Output rows per strip, rows per vertical band matrix and columns per horizontal block
# of the banded products (measured on a 3840x2160 RGB image: blocks of 16-32 keep the
# band matrices small while each sgemm call is still large enough to run near full
# speed). Shifted adds run on strips as tall: a numpy call's own cost outweighs the
# cache (band by band, box3 0.042 s of thread time with strips of 32 rows, 0.055 s
# with 16, 0.118 s with 4; binomial 5x5 0.084 s, 0.095 s, 0.136 s).
_STRIP_ROWS = 32
_BAND_ROWS = 16
_BLOCK_COLS = 16
_STRIPS_PER_TASK = 2
_BATCH_ROWS = 8
_BLAS_SINGLE_THREAD_MNK = 4 * 65536
# When a 1-D pass runs as shifted adds rather than banded products. Measured on a
# 3840x2160 RGB image filtered band by band, one band per core, as `convcli filter`
# runs it: a shifted add costs about 0.15-0.3 ns per element; a horizontal banded
# product multiplies (16 + k - 1) x C taps per output, zeros of the Kronecker block
# included (2.5 + 0.15 k ns), a vertical one 16 + k - 1 taps while holding the GIL.
# Vertically, adds win up to about 13 operations (Gaussian 9x9: 0.135 s against
# 0.151 s of thread time, 11x11: 0.168 s against 0.146 s); horizontally up to about
# k + 16 operations (a symmetric 31-tap Gaussian's 45: 0.34 s against 0.40 s; binomial
# 5x5, 7 and 6 operations: 0.08 s against 0.21 s both ways).
_SHIFT_ADD_OPS_VERTICAL = 13
_SHIFT_ADD_OPS_EXTRA = 16


def _vertical_adds(ops: int) -> bool:
    """Whether a vertical pass of ``ops`` whole-strip operations runs as shifted adds."""
    return ops <= _SHIFT_ADD_OPS_VERTICAL


def _horizontal_adds(ops: int, taps: int) -> bool:
    """Whether a horizontal pass of ``ops`` operations on a ``taps``-long filter runs as
    shifted adds (its banded product's cost grows with ``taps`` too)."""
    return ops <= taps + _SHIFT_ADD_OPS_EXTRA


# --------------------------------------------------------------------------- validation


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(
            "Unknown value for `mode`. Allowed values are: "
            f"{', '.join(MODES)}. Received: mode={mode!r}"
        )
    return mode


def _check_weights(weights: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise KernelError(
            f"Kernel weights must be a 2-D array of numbers. Received: {weights!r}"
        ) from None
    if w.ndim != 2 or w.size == 0:
        raise KernelError(
            f"Kernel weights must be a non-empty 2-D array. Received shape {w.shape}"
        )
    if not np.all(np.isfinite(w)):
        raise KernelError(
            "Kernel weights must be finite numbers. Received NaN or infinity"
        )
    return w


def _check_image(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image)
    if x.ndim not in (2, 3) or x.size == 0:
        raise InputError(
            "The image must be a non-empty (height, width) or (height, width, channels) "
            f"array. Received shape {x.shape}"
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise InputError(f"The image must hold numbers. Received dtype {x.dtype}")
    return x


def _check_geometry(padding: int | str, stride: int) -> None:
    if (
        isinstance(stride, bool)
        or not isinstance(stride, (int, np.integer))
        or stride < 1
    ):
        raise InputError(
            f"Unknown value for `stride`. Allowed values are: an integer >= 1. "
            f"Received: stride={stride!r}"
        )
    if padding in ("same", "valid"):
        return
    if (
        isinstance(padding, bool)
        or not isinstance(padding, (int, np.integer))
        or padding < 0
    ):
        raise InputError(
            "Unknown value for `padding`. Allowed values are: same, valid, or an integer "
            f">= 0. Received: padding={padding!r}"
        )


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """How one kernel will be applied: the method and, for ``separable``, its terms.

    ``columns[s]`` is the vertical 1-D filter ``u_s`` and ``rows[s]`` the horizontal one
    ``v_s``; ``sum_s outer(columns[s], rows[s])`` equals the kernel to float32 rounding.
    """

    method: Literal["separable", "fft", "direct"]
    weights: np.ndarray
    columns: tuple[np.ndarray, ...] = ()
    rows: tuple[np.ndarray, ...] = ()


def _pivot(residual: np.ndarray) -> tuple[int, int]:
    """Largest entry, or one at least a quarter as large that divides its row exactly.

    A power-of-two pivot keeps dyadic kernels dyadic: the binomial 5x5 splits into
    [4, 16, 24, 16, 4] / 256 and [1/4, 1, 3/2, 1, 1/4] rather than into factors of 1/6.
    """
    magnitude = np.abs(residual)
    largest = float(magnitude.max())
    order = np.argsort(-magnitude, axis=None, kind="stable")
    for flat in order:
        i, j = np.unravel_index(flat, residual.shape)
        if magnitude[i, j] < largest / 4:
            break
        row = residual[i, :] / residual[i, j]
        if np.array_equal(row.astype(np.float32), row):
            return int(i), int(j)
    i, j = np.unravel_index(int(order[0]), residual.shape)
    return int(i), int(j)


def _cross_terms(w: np.ndarray, rank: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``rank`` steps of cross approximation with full pivoting (skeleton decomposition).

    Each step takes the largest remaining entry w[i, j] and removes the outer product of
    its column with its row divided by it. Factors are then columns and rows of the
    kernel itself, so integer and dyadic kernels (Sobel, binomial, Laplacian) split
    into factors that are exact in float32, unlike the SVD's square roots.
    """
    residual = w.copy()
    cols: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for _ in range(rank):
        i, j = _pivot(residual)
        pivot = residual[i, j]
        if pivot == 0.0:
            break
        cols.append(residual[:, j].copy())
        rows.append(residual[i, :] / pivot)
        residual -= np.outer(cols[-1], rows[-1])
    return cols, rows


def _term_ops(u: np.ndarray, v: np.ndarray) -> int:
    """Whole-strip operations a term takes (banded products counted as their cost)."""
    vertical = _shift_add_ops(_tap_groups(u))
    horizontal = _shift_add_ops(_tap_groups(v))
    k = v.shape[0]
    return (vertical if _vertical_adds(vertical) else _SHIFT_ADD_OPS_VERTICAL + 1) + (
        horizontal if _horizontal_adds(horizontal, k) else k + _SHIFT_ADD_OPS_EXTRA + 1
    )


def _balance(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u/g, v*g for the g that makes the term cheapest, among exact rescalings only.

    Moving a factor between u and v does not change the kernel; choosing it so that
    weights become 1 or -1 saves whole-array multiplications (Sobel x is taken as
    [1, 2, 1]^T [-1, 0, 1], one subtraction horizontally).
    """
    best, best_ops = (u, v), _term_ops(u, v)
    target = np.outer(u, v)
    for g in {float(a) * sign for a in np.abs(u[u != 0]) for sign in (1.0, -1.0)} | {
        -1.0
    }:
        u2, v2 = u / g, v * g
        exact = np.array_equal(u2.astype(np.float32), u2) and np.array_equal(
            v2.astype(np.float32), v2
        )
        if exact and np.array_equal(np.outer(u2, v2), target):
            ops = _term_ops(u2, v2)
            if ops < best_ops:
                best, best_ops = (u2, v2), ops
    return best


def _separable_terms(
    w: np.ndarray, max_terms: int | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """:func:`_find_separable_terms`, remembered per kernel (the bands of one image, and
    the images of a batch, plan the same kernel again and again)."""
    key = (w.shape, w.tobytes(), max_terms)
    found = _TERMS.get(key)
    if found is None:
        found = _find_separable_terms(w, max_terms)
        if len(_TERMS) >= 64:
            _TERMS.clear()
        _TERMS[key] = found
    return list(found[0]), list(found[1])


_TERMS: dict[tuple[tuple[int, ...], bytes, int | None], tuple[list[np.ndarray], list[np.ndarray]]] = {}


def _find_separable_terms(
    w: np.ndarray, max_terms: int | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Exact sum-of-outer-products form of ``w`` with as few terms as possible.

    The singular values decide first which numbers of terms r can work at all: any
    rank-r form misses ``w`` by at least the Frobenius norm of the discarded singular
    values (Eckart-Young), and the sum of absolute errors is at least that. From that
    smallest possible r on, tries cross approximation, then the SVD truncated to rank r;
    a form is accepted only when, with its factors rounded to float32, both the
    reconstruction error and the rounding the separate passes add stay within a few
    float32 units of ``sum |w|`` (the size of one output's float32 rounding per unit of
    input). Falls back to the kernel's own rows (or columns), which is always exact.
    With ``max_terms``, a kernel that needs more terms gets none (empty lists) at once:
    a large kernel of high rank costs one SVD here, not a search over every rank.
    """
    kh, kw = w.shape
    scale = float(np.abs(w).sum())
    if scale == 0.0:
        return [np.zeros(kh)], [np.zeros(kw)]
    tolerance = 4 * _EPS32 * scale
    if max_terms is not None and min(kh, kw) > 2 * max_terms:
        # A large kernel: a randomized range finder (Halko, Martinsson & Tropp 2011,
        # Algorithm 4.1) tells in O(k^2) whether max_terms terms can hold it at all,
        # where a full SVD of a 1001x1001 kernel takes seconds. A wrong "no" only costs
        # speed (FFT and direct are exact too).
        sketch = w @ np.random.default_rng(0).standard_normal((kw, max_terms + 8))
        basis = np.linalg.qr(sketch)[0]
        projected = basis.T @ w
        if float(np.linalg.norm(w - basis @ projected)) > tolerance:
            return [], []
        u_small, s, vt = np.linalg.svd(projected, full_matrices=False)
        u = basis @ u_small
    else:
        u, s, vt = np.linalg.svd(w)
    # tails[r] = sqrt(sum of s_i^2 for i >= r): the least error of any rank-r form
    tails = np.sqrt(np.cumsum((s * s)[::-1])[::-1])
    fits = np.nonzero(tails <= tolerance)[0]
    lowest = max(1, int(fits[0]) if fits.size else min(kh, kw))
    if max_terms is not None and lowest > max_terms:
        return [], []
    last = min(kh, kw) if max_terms is None else min(min(kh, kw), max_terms + 1)
    for r in range(lowest, last):
        svd = (
            [u[:, i] * np.sqrt(s[i]) for i in range(r)],
            [vt[i] * np.sqrt(s[i]) for i in range(r)],
        )
        for cols, rows in (_cross_terms(w, r), svd):
            if len(cols) != r:
                continue
            cols32 = [c.astype(np.float32).astype(np.float64) for c in cols]
            rows32 = [v.astype(np.float32).astype(np.float64) for v in rows]
            approx = sum(np.outer(c, v) for c, v in zip(cols32, rows32, strict=True))
            error = float(np.abs(w - approx).sum())
            # Each term is rounded in its own passes: its size sum|u| * sum|v| bounds that.
            spread = sum(
                float(np.abs(c).sum() * np.abs(v).sum()) for c, v in zip(cols, rows)
            )
            if error <= 4 * _EPS32 * scale and spread <= 4 * scale:
                balanced = [_balance(c, v) for c, v in zip(cols32, rows32, strict=True)]
                return [c for c, _ in balanced], [v for _, v in balanced]
    if max_terms is not None and min(kh, kw) > max_terms:
        return [], []
    if kh <= kw:  # K = sum_t e_t outer K[t]: one term per kernel row
        unit = np.eye(kh)
        return [unit[t] for t in range(kh)], [w[t] for t in range(kh)]
    unit = np.eye(kw)
    return [w[:, t] for t in range(kw)], [unit[t] for t in range(kw)]


def _cost(
    method: str,
    shape: tuple[int, ...],
    w: np.ndarray,
    terms: tuple[list[np.ndarray], list[np.ndarray]],
) -> float:
    """Rough seconds for one method on a float32 image of ``shape``.

    Per-element constants measured on a 3840x2160 RGB image with 2 cores: a whole-strip
    numpy operation (one shifted add) about 0.32 ns, a batched horizontal banded product
    about 2.5 + 0.15 k ns (band by band, on a busy machine; 1.2 + 0.05 k ns was measured
    on the whole image), a vertical one 0.5 + 0.045 k ns, scipy.ndimage.correlate
    about 1 ns per kernel tap, the overlap-add FFT 20-25 ns (a random 9x9 kernel: nine
    terms 0.51 s, FFT 0.62 s; 15x15: 0.57 s and 0.65 s).
    """
    h, w_ = shape[0], shape[1]
    n = float(h * w_ * (shape[2] if len(shape) == 3 else 1))
    kh, kw = w.shape
    if method == "separable":
        per_element = 0.0
        for u, v in zip(*terms, strict=True):
            vertical_ops = _shift_add_ops(_tap_groups(u.astype(np.float32)))
            if _unit_tap(u.astype(np.float32)) is None:  # else a free shift
                if _vertical_adds(vertical_ops):
                    per_element += vertical_ops * 0.32e-9
                else:
                    per_element += 0.5e-9 + 0.045e-9 * kh
            ops = _shift_add_ops(_tap_groups(v.astype(np.float32)))
            per_element += (
                (ops + 1) * 0.32e-9
                if _horizontal_adds(ops, v.shape[0])
                else 2.5e-9 + 0.15e-9 * kw
            )
        return n * per_element + 3e-6 * (h / _STRIP_ROWS + 1) * (w_ / _BLOCK_COLS + 1)
    if method == "fft":
        return n * 2.3e-8 * max(1.0, float(np.log2(kh * kw)) / 10) + 1e-3
    return n * kh * kw * 1.0e-9 + 1e-5


def plan(weights: np.ndarray, shape: tuple[int, ...], method: Method = "auto") -> Plan:
    """Choose the cheapest exact way to correlate an image of ``shape`` with ``weights``.

    ``method`` forces one (used by the tests to check every path against scipy).
    """
    w = _check_weights(weights)
    if method not in ("auto", "separable", "fft", "direct"):
        raise InputError(
            "Unknown value for `method`. Allowed values are: auto, separable, fft, direct. "
            f"Received: method={method!r}"
        )
    cols: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    if method in ("auto", "separable"):
        cols, rows = _separable_terms(w, _MAX_TERMS if method == "auto" else None)
    if method == "auto":
        candidates = {
            m: _cost(m, tuple(shape), w, (cols, rows)) for m in ("fft", "direct")
        }
        if 0 < len(cols) <= _MAX_TERMS:
            candidates["separable"] = _cost("separable", tuple(shape), w, (cols, rows))
        method = min(candidates, key=candidates.__getitem__)  # type: ignore[assignment, arg-type]
    if method == "separable":
        return Plan("separable", w, tuple(cols), tuple(rows))
    return Plan(method, w)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- helpers


def _workers(requested: int | None = None) -> int:
    """Threads to use: ``requested`` (at least 1), else the available cores (at most 8)."""
    if requested is not None:
        return max(1, int(requested))
    return max(
        1,
        min(
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1),
            8,
        ),
    )


def _channels_last(x: np.ndarray) -> np.ndarray:
    """A contiguous float32 (H, W, C) copy or view of a (H, W) or (H, W, C) image."""
    return np.ascontiguousarray(x[..., None] if x.ndim == 2 else x, dtype=np.float32)


def _run_parallel(tasks: Sequence[Callable[[], None]], workers: int) -> None:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(task) for task in tasks]:
            future.result()


def _extension_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Indices into an axis of length n that extend it by ``before``/``after`` per ``mode``.

    -1 marks a ``constant`` (cval) position. Built with :func:`numpy.pad` on ``arange``,
    so it extends exactly as :func:`numpy.pad` (and hence scipy.ndimage) does.
    """
    base = np.arange(n)
    if mode == "constant":
        return np.pad(base, (before, after), mode="constant", constant_values=-1)
    return np.pad(base, (before, after), mode=MODES[mode])  # type: ignore[call-overload]


def _take_extended(
    x: np.ndarray, start: int, stop: int, axis: int, mode: str, cval: float
) -> np.ndarray:
    """``x`` along ``axis`` at positions start..stop-1, which may lie outside the array."""
    n = x.shape[axis]
    before = max(0, -start)
    after = max(0, stop - n)
    idx = _extension_index(n, before, after, mode)[start + before : stop + before]
    out = np.take(x, np.maximum(idx, 0), axis=axis)
    if mode == "constant" and (idx < 0).any():
        sl: list[slice | np.ndarray] = [slice(None)] * x.ndim
        sl[axis] = idx < 0
        out[tuple(sl)] = cval
    return out


def _blas_chunk(fixed: int, n: int) -> int:
    """Length of the free dimension per matrix product, ``fixed`` being the other two.

    OpenBLAS spreads a product over its own threads once m*n*k exceeds 4 * 65536. Those
    threads fight the engine's own (and, on a busy machine, everything else): a
    16x18x11520 product was measured 60x slower threaded than single. Keeping every
    product under the threshold makes the strips the only unit of parallelism.
    """
    return max(1, min(n, _BLAS_SINGLE_THREAD_MNK // max(fixed, 1)))


def _band(filter_1d: np.ndarray, n_out: int) -> np.ndarray:
    """(n_out, n_out + k - 1) matrix B with B[i, i + t] = filter[t] (correlation)."""
    k = filter_1d.shape[0]
    band = np.zeros((n_out, n_out + k - 1), dtype=np.float32)
    i = np.arange(n_out)[:, None]
    band[i, i + np.arange(k)[None, :]] = filter_1d.astype(np.float32)[None, :]
    return band


# --------------------------------------------------------------------------- methods


@dataclass
class _Term:
    """One separable term u v^T, prepared for a given image width and channel count."""

    column: np.ndarray  # u, vertical, float32
    row: np.ndarray  # v, horizontal, float32
    column_shift: (
        int | None
    )  # u is a unit vector at this tap: the vertical pass is a copy
    taps: (
        list[tuple[tuple[int, ...], float]] | None
    )  # v as shifted adds: (taps, weight)
    vtaps: list[tuple[tuple[int, ...], float]] | None  # u as shifted adds, when cheaper
    taps_scale: float  # common factor of v's taps, applied once at the end (1: none)
    vtaps_scale: float  # same for u
    bands: dict[int, np.ndarray]  # rows -> band matrix of u
    blocks: dict[
        int, np.ndarray
    ]  # columns -> Kronecker band matrix of v (all channels)
    edge_cval: float  # constant mode: the vertically filtered image outside the border
    batched: bool  # banded horizontal products small enough to run as one batch


def _unit_tap(f: np.ndarray) -> int | None:
    nonzero = np.flatnonzero(f)
    return int(nonzero[0]) if nonzero.size == 1 and f[nonzero[0]] == 1.0 else None


def _tap_groups(v: np.ndarray) -> list[tuple[tuple[int, ...], float]]:
    """Non-zero taps of a 1-D filter, mirror pairs with equal (or opposite) weight joined.

    A group ``((i, j), w)`` stands for w * (x[i] + x[j]); ``((j, i), w)`` with j > i for
    w * (x[j] - x[i]) when v[i] = -v[j] (a symmetric or antisymmetric filter costs one
    product per pair, e.g. [1, 4, 6, 4, 1] or [-1, 0, 1]).
    """
    k = v.shape[0]
    groups: list[tuple[tuple[int, ...], float]] = []
    done: set[int] = set()
    for i in map(int, np.flatnonzero(v)):
        if i in done:
            continue
        j = k - 1 - i
        if j > i and v[j] == v[i]:
            groups.append(((i, j), float(v[i])))
            done.update((i, j))
        elif j > i and v[j] == -v[i]:
            groups.append(((j, i), float(v[j])))
            done.update((i, j))
        else:
            groups.append(((i,), float(v[i])))
            done.add(i)
    return groups


def _shift_add_ops(groups: list[tuple[tuple[int, ...], float]]) -> int:
    """Whole-array operations :func:`_apply_groups` takes for ``groups`` (writing dst)."""
    ops = 0
    for number, (taps, weight) in enumerate(groups):
        if len(taps) == 2:
            ops += 1 + (weight != 1.0) if number == 0 else 2 + (abs(weight) != 1.0)
        else:
            ops += 1 if number == 0 or abs(weight) == 1.0 else 2
    return max(ops, 1)


def _factor_out(
    groups: list[tuple[tuple[int, ...], float]],
) -> tuple[list[tuple[tuple[int, ...], float]], float]:
    """Groups divided by a common weight when that saves operations (box: 1/9 once).

    Only exact divisions are used: every weight w must satisfy float32(w / s) * s == w.
    """
    best, best_scale, best_ops = groups, 1.0, _shift_add_ops(groups)
    for scale in {abs(weight) for _, weight in groups} - {1.0, 0.0}:
        scaled = [(taps, weight / scale) for taps, weight in groups]
        exact = all(
            np.float32(np.float32(weight / scale) * np.float32(scale))
            == np.float32(weight)
            and np.float32(weight / scale) == weight / scale
            for _, weight in groups
        )
        ops = _shift_add_ops(scaled) + 1
        if exact and ops < best_ops:
            best, best_scale, best_ops = scaled, scale, ops
    return best, best_scale


def _apply_groups(
    groups: list[tuple[tuple[int, ...], float]],
    tap: Callable[[int], np.ndarray],
    dst: np.ndarray,
    first: bool,
    scratch: np.ndarray,
    scale: float = 1.0,
) -> None:
    """dst (+)= scale * sum over groups of weight * (tap(i) +/- tap(j)), as whole-array
    operations (``scale`` other than 1 only when ``first``)."""
    if scale != 1.0:
        _apply_groups(groups, tap, dst, first, scratch)
        np.multiply(dst, np.float32(scale), out=dst)
        return
    if not groups:
        if first:
            dst[...] = 0.0
        return
    for number, (taps, weight) in enumerate(groups):
        a = tap(taps[0])
        if len(taps) == 2:
            combine = np.add if taps[0] < taps[1] else np.subtract
            if number == 0 and first:
                combine(a, tap(taps[1]), out=dst)
                if weight != 1.0:
                    np.multiply(dst, np.float32(weight), out=dst)
                continue
            combine(a, tap(taps[1]), out=scratch)
            if abs(weight) != 1.0:
                np.multiply(scratch, np.float32(weight), out=scratch)
            (np.subtract if weight == -1.0 else np.add)(dst, scratch, out=dst)
        elif number == 0 and first:
            np.multiply(a, np.float32(weight), out=dst)
        elif abs(weight) == 1.0:
            (np.add if weight == 1.0 else np.subtract)(dst, a, out=dst)
        else:
            np.multiply(a, np.float32(weight), out=scratch)
            np.add(dst, scratch, out=dst)


_TapGroups = list[tuple[tuple[int, ...], float]]


@functools.lru_cache(maxsize=256)
def _term_taps(
    column: bytes, row: bytes, first: bool
) -> tuple[_TapGroups | None, float, _TapGroups | None, float]:
    """Shifted-add groups and common factors of a term's horizontal and vertical
    filters (float32 bytes), None for a pass that runs as banded products. Remembered:
    every band of an image and every image of a batch asks again for the same kernel."""
    u = np.frombuffer(column, dtype=np.float32)
    v = np.frombuffer(row, dtype=np.float32)
    groups, taps_scale = _factor_out(_tap_groups(v)) if first else (_tap_groups(v), 1.0)
    ops = _shift_add_ops(groups) + (taps_scale != 1.0)
    vgroups, vtaps_scale = _factor_out(_tap_groups(u))
    vops = _shift_add_ops(vgroups) + (vtaps_scale != 1.0)
    return (
        groups if _horizontal_adds(ops, v.shape[0]) else None,
        taps_scale,
        vgroups if _vertical_adds(vops) else None,
        vtaps_scale,
    )


def _prepare_term(
    column: np.ndarray,
    row: np.ndarray,
    h: int,
    w: int,
    c: int,
    cval: float,
    first: bool,
) -> _Term:
    """Band matrices and tap groups of one term (``first``: it writes the output, not adds)."""
    u = column.astype(np.float32)
    v = row.astype(np.float32)
    eye = np.eye(c, dtype=np.float32)
    taps, taps_scale, vtaps, vtaps_scale = _term_taps(u.tobytes(), v.tobytes(), first)
    last_rows = h % _BAND_ROWS or _BAND_ROWS
    last_cols = w % _BLOCK_COLS or _BLOCK_COLS
    return _Term(
        column=u,
        row=v,
        column_shift=_unit_tap(u),
        taps=taps,
        vtaps=vtaps,
        taps_scale=taps_scale,
        vtaps_scale=vtaps_scale,
        bands={n: _band(u, n) for n in {_BAND_ROWS, last_rows}},
        blocks={}
        if taps is not None
        else {n: np.kron(_band(v, n).T, eye) for n in {_BLOCK_COLS, last_cols}},
        edge_cval=cval * float(u.astype(np.float64).sum()),
        batched=_STRIP_ROWS * (_BLOCK_COLS + v.shape[0] - 1) * c * _BLOCK_COLS * c
        <= _BLAS_SINGLE_THREAD_MNK,
    )


def _separable(
    x: np.ndarray,
    plans: Sequence[Plan],
    mode: str,
    cval: float,
    workers: int,
    rows: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """Sum over terms of (vertical pass with u, then horizontal pass with v), by strips.

    Each strip of output rows is finished (vertical products into a cache-sized buffer,
    then the horizontal pass straight into the output) before the next, so the image is
    read once and written once. Horizontal passes with at most three non-zero taps are
    shifted adds (a weight of 1 costs one add); longer ones are banded products with all
    channels at once. The split into strips, bands and blocks is fixed, independent of
    ``workers``, so the result is bit-identical for any number of threads.

    With two plans the result is the gradient magnitude sqrt(g1² + g2²), per strip.
    ``rows`` (first, last): only those output rows are made (the image's own border is
    still the border). Returns None when the image holds NaN or infinity that a banded
    product spread further than scipy.ndimage would (the caller then uses the direct
    method).
    """
    h, w, c = x.shape
    first_row, last_row = rows if rows is not None else (0, h)
    out = np.empty((last_row - first_row, w, c), dtype=np.float32)
    x2 = x.reshape(h, w * c)
    o2 = out.reshape(-1, w * c)
    prepared = [
        [
            _prepare_term(u, v, last_row - first_row, w, c, cval, first=s == 0)
            for s, (u, v) in enumerate(zip(p.columns, p.rows, strict=True))
        ]
        for p in plans
    ]
    widest = max(t.row.shape[0] for terms in prepared for t in terms)
    # Banded products multiply every tap, zeros too, so a NaN or infinity in the image
    # would reach outputs that scipy.ndimage (which skips zero weights) leaves finite.
    check_finite = any(
        t.taps is None or (t.vtaps is None and t.column_shift is None)
        for terms in prepared
        for t in terms
    )
    non_finite: list[bool] = []
    # Fixed by the kernel alone (never by ``workers``): results do not depend on threads.
    strip_rows = _STRIP_ROWS
    strips = list(range(first_row, last_row, strip_rows))

    def source_rows(t: _Term, r0: int, r1: int) -> np.ndarray:
        """Input rows that vertical outputs r0..r1 read (extended beyond the border)."""
        k = t.column.shape[0]
        lo, hi = r0 - k // 2, r1 - k // 2 + k - 1
        return (
            x2[lo:hi]
            if lo >= 0 and hi <= h
            else _take_extended(x2, lo, hi, 0, mode, cval)
        )

    def vertical(
        t: _Term,
        i0: int,
        i1: int,
        buf: np.ndarray,
        scratch: np.ndarray,
        view: bool = False,
    ) -> np.ndarray:
        """Rows i0..i1 of the vertical pass, into ``buf`` (or, if ``view``, a view of x
        when the pass is a pure shift)."""
        n = i1 - i0
        if t.column_shift is not None:
            src = source_rows(t, i0, i1)[t.column_shift : t.column_shift + n]
            if view:
                return src
            np.copyto(buf[:n], src)
            return buf[:n]
        if t.vtaps is not None:
            src = source_rows(t, i0, i1)
            _apply_groups(
                t.vtaps,
                lambda tap: src[tap : tap + n],
                buf[:n],
                True,
                scratch[:n],
                t.vtaps_scale,
            )
            return buf[:n]
        for r0 in range(i0, i1, _BAND_ROWS):
            r1 = min(r0 + _BAND_ROWS, i1)
            src = source_rows(t, r0, r1)
            band = t.bands[r1 - r0]
            step = _blas_chunk(band.shape[0] * band.shape[1], w * c)
            for j0 in range(0, w * c, step):
                np.matmul(
                    band,
                    src[:, j0 : j0 + step],
                    out=buf[r0 - i0 : r1 - i0, j0 : j0 + step],
                )
        return buf[:n]

    def padded_vertical(
        t: _Term, i0: int, i1: int, vpad: np.ndarray, tmp: np.ndarray
    ) -> np.ndarray:
        """The vertical pass of rows i0..i1, written into ``vpad`` between the columns
        that extend it beyond the left and right border (filled per ``mode``)."""
        n = i1 - i0
        k = t.row.shape[0]
        left, right = k // 2, k - 1 - k // 2
        padded = vpad[:n, : (w + k - 1) * c]
        vertical(t, i0, i1, padded[:, left * c : (left + w) * c], tmp)
        if left or right:
            edge = t.edge_cval if t.column_shift is None else cval
            p3 = padded.reshape(n, w + k - 1, c)
            index = _extension_index(w, left, right, mode)
            outside = np.r_[0:left, left + w : left + w + right]
            if mode == "constant":
                p3[:, outside] = edge
            else:
                p3[:, outside] = p3[:, left + index[outside]]
        return padded

    def shifted_adds(
        t: _Term,
        i0: int,
        i1: int,
        vpad: np.ndarray,
        dst: np.ndarray,
        first: bool,
        tmp: np.ndarray,
    ) -> None:
        """Vertical pass into a column-padded buffer, then horizontal shifted adds."""
        padded = padded_vertical(t, i0, i1, vpad, tmp)
        assert t.taps is not None
        _apply_groups(
            t.taps,
            lambda tap: padded[:, tap * c : (tap + w) * c],
            dst,
            first,
            tmp[: i1 - i0],
            t.taps_scale,
        )

    def batched_banded(
        t: _Term,
        i0: int,
        i1: int,
        vpad: np.ndarray,
        dst: np.ndarray,
        first: bool,
        tmp: np.ndarray,
    ) -> None:
        """Vertical pass into a column-padded buffer, then every full column block's
        banded product in one batched ``matmul`` (overlapping windows as a strided view:
        no Python loop over blocks, and numpy runs the batch without the GIL)."""
        n = i1 - i0
        k = t.row.shape[0]
        padded = padded_vertical(t, i0, i1, vpad, tmp)
        target = dst if first else tmp[:n]
        b = _BLOCK_COLS
        full = w // b
        size = padded.itemsize
        # numpy releases the GIL for a batch of more than 500 products: split the rows
        # too, so each product is (8 rows) x (block + k - 1) x (block), a few microseconds.
        rows = min(_BATCH_ROWS, n)
        for r0, r1, per in ((0, n - n % rows, rows), (n - n % rows, n, n % rows)):
            if full == 0 or r1 <= r0:
                continue
            src, out = padded[r0:r1], target[r0:r1]
            windows = as_strided(
                src,
                shape=((r1 - r0) // per, full, per, (b + k - 1) * c),
                strides=(per * src.strides[0], b * c * size, src.strides[0], size),
                writeable=False,
            )
            blocks_out = as_strided(
                out,
                shape=((r1 - r0) // per, full, per, b * c),
                strides=(per * out.strides[0], b * c * size, out.strides[0], size),
            )
            np.matmul(windows, t.blocks[b], out=blocks_out)
        if w > full * b:
            j0, rest = full * b, w - full * b
            np.matmul(
                padded[:, j0 * c : (j0 + rest + k - 1) * c],
                t.blocks[rest],
                out=target[:, j0 * c : w * c],
            )
        if not first:
            np.add(dst, target, out=dst)

    def banded(
        t: _Term, v: np.ndarray, dst: np.ndarray, first: bool, tmp: np.ndarray
    ) -> None:
        n = v.shape[0]
        k = t.row.shape[0]
        left = k // 2
        edge = t.edge_cval if t.column_shift is None else cval
        full = t.blocks[max(t.blocks)]
        step = _blas_chunk(full.shape[0] * full.shape[1], n)
        for j0 in range(0, w, _BLOCK_COLS):
            j1 = min(j0 + _BLOCK_COLS, w)
            lo, hi = j0 - left, j1 - left + k - 1
            if lo >= 0 and hi <= w:
                seg = v[:, lo * c : hi * c]
            else:
                seg = _take_extended(v.reshape(n, w, c), lo, hi, 1, mode, edge).reshape(
                    n, -1
                )
            block = t.blocks[j1 - j0]
            for r0 in range(0, n, step):
                r1 = min(r0 + step, n)
                target = dst[r0:r1, j0 * c : j1 * c]
                if first:
                    np.matmul(seg[r0:r1], block, out=target)
                else:
                    scratch = tmp[r0:r1, : (j1 - j0) * c]
                    np.matmul(seg[r0:r1], block, out=scratch)
                    np.add(target, scratch, out=target)

    def run(chunk: list[int]) -> None:
        shape = (strip_rows, w * c)
        buf = np.empty(shape, dtype=np.float32)
        tmp = np.empty(shape, dtype=np.float32)
        vpad = np.empty((strip_rows, (w + widest - 1) * c), dtype=np.float32)
        second = np.empty(shape, dtype=np.float32) if len(prepared) > 1 else None
        for i0 in chunk:
            i1 = min(i0 + strip_rows, last_row)
            rows_out = o2[i0 - first_row : i1 - first_row]
            for number, terms in enumerate(prepared):
                dst = rows_out if number == 0 else second[: i1 - i0]  # type: ignore[index]
                for s, t in enumerate(terms):
                    if t.taps is not None:
                        shifted_adds(t, i0, i1, vpad, dst, s == 0, tmp)
                    elif t.batched:
                        batched_banded(t, i0, i1, vpad, dst, s == 0, tmp)
                    else:
                        banded(
                            t,
                            vertical(t, i0, i1, buf, tmp, view=True),
                            dst,
                            s == 0,
                            tmp,
                        )
            if check_finite and not np.isfinite(rows_out).all():
                non_finite.append(True)
            if second is not None:  # the gradient magnitude, as gradient_magnitude does
                g1, g2 = rows_out, second[: i1 - i0]
                np.multiply(g1, g1, out=g1)
                np.multiply(g2, g2, out=g2)
                np.add(g1, g2, out=g1)
                np.sqrt(g1, out=g1)

    tasks = [
        (lambda chunk=strips[i : i + _STRIPS_PER_TASK]: run(chunk))
        for i in range(0, len(strips), _STRIPS_PER_TASK)
    ]
    _run_parallel(tasks, workers)
    if non_finite and not np.isfinite(x).all():
        return None
    return out


def _whole_fft_convolve(x: np.ndarray, kernel: np.ndarray, mode: str, axes: tuple[int, int]) -> np.ndarray:
    """``scipy.signal.fftconvolve(x, kernel, mode, axes=(0, 1))`` for ``mode`` "full" or
    "valid", on scipy.fft alone (importing scipy.signal takes longer than the transform)."""
    import scipy.fft as sfft

    h, w_ = x.shape[0], x.shape[1]
    kh, kw = kernel.shape[0], kernel.shape[1]
    full = (h + kh - 1, w_ + kw - 1)
    size = tuple(sfft.next_fast_len(n, real=True) for n in full)
    spectrum = sfft.rfftn(x, size, axes=axes) * sfft.rfftn(kernel, size, axes=axes)
    result = sfft.irfftn(spectrum, size, axes=axes)
    if mode == "full":
        return result[: full[0], : full[1]]
    return result[kh - 1 : h, kw - 1 : w_]


def _fft(x: np.ndarray, w: np.ndarray, mode: str, cval: float) -> np.ndarray:
    kh, kw = w.shape
    h, w_ = x.shape[0], x.shape[1]
    kernel = np.ascontiguousarray(w[::-1, ::-1, None], dtype=np.float32)
    # overlap-add wins when the kernel is small beside the image; one whole FFT when it
    # is not (a 1001x1001 kernel on a 1024x1024 image: 1.5 s against 3.9 s)
    if kh * kw * 16 >= h * w_:
        convolve: Callable[..., np.ndarray] = _whole_fft_convolve
    else:
        from scipy.signal import oaconvolve

        convolve = oaconvolve
    before_h, before_w = kh // 2, kw // 2
    if mode == "constant":
        # no padded copy: correlate(x, w, cval) = correlate(x - cval, w, 0) + cval * sum(w),
        # and zeros outside are what the FFT's own zero padding supplies
        shifted = x - np.float32(cval) if cval else x
        full = convolve(shifted, kernel, mode="full", axes=(0, 1))
        top, left = kh - 1 - before_h, kw - 1 - before_w
        result = full[top:top + h, left:left + w_]
        if cval:
            result = result + np.float32(cval * float(w.sum()))
        return np.ascontiguousarray(result, dtype=np.float32)
    pad = ((before_h, kh - 1 - before_h), (before_w, kw - 1 - before_w), (0, 0))
    xp = np.pad(x, pad, mode=MODES[mode])  # type: ignore[call-overload]
    result = convolve(xp, kernel, mode="valid", axes=(0, 1))
    return np.asarray(result, dtype=np.float32)


def _direct(
    x: np.ndarray, w: np.ndarray, mode: str, cval: float, workers: int
) -> np.ndarray:
    from scipy import ndimage

    out = np.empty_like(x)
    tasks = [
        (
            lambda ch=ch: ndimage.correlate(
                x[..., ch], w, output=out[..., ch], mode=mode, cval=cval
            )
        )
        for ch in range(x.shape[2])
    ]
    _run_parallel(tasks, workers)
    return out


def _correlate_same(
    x: np.ndarray, p: Plan, mode: str, cval: float, workers: int
) -> np.ndarray:
    """scipy.ndimage.correlate(x[..., c], weights, mode, cval) for every channel c."""
    if p.method == "separable":
        result = _separable(x, [p], mode, cval, workers)
        if result is not None:
            return result
    elif p.method == "fft":
        result = _fft(x, p.weights, mode, cval)
        # The FFT mixes every value of a block: NaN or infinity spreads to all of it.
        if np.isfinite(result).all() or np.isfinite(x).all():
            return result
    return _direct(x, p.weights, mode, cval, workers)


# --------------------------------------------------------------------------- public API


def correlate(
    image: np.ndarray,
    weights: np.ndarray,
    *,
    mode: str = "reflect",
    cval: float = 0.0,
    padding: int | Literal["same", "valid"] = "same",
    stride: int = 1,
    method: Method = "auto",
    workers: int | None = None,
) -> np.ndarray:
    """Cross-correlate each channel of ``image`` with the 2-D kernel ``weights``.

    Parameters:
        image: (H, W) or (H, W, C) array of numbers (used as float32); every channel
            is filtered on its own.
        weights: the 2-D kernel, laid on the image without flipping.
        mode: how the image is extended beyond its border, with scipy.ndimage's names:
            reflect, constant (with ``cval``), nearest, mirror, wrap.
        cval: the value outside the image for ``mode="constant"``.
        padding: ``"same"`` (output the size of the input: exactly
            ``scipy.ndimage.correlate``), ``"valid"`` (only positions where the kernel lies
            wholly inside the image) or an integer P (the image extended by P on every side
            per ``mode``, then valid; ``mode="constant", cval=0`` is zero padding).
        stride: keep output positions 0, S, 2S, ... of that result: the lecture's
            (W - F + 2P) / S + 1, floored when it is not an integer (as Keras/PyTorch).
        method: ``"auto"`` (the cheapest exact method) or one of ``separable``, ``fft``,
            ``direct``.
        workers: threads to use (default: the available cores).

    Returns:
        float32 array, (H', W') or (H', W', C) like the input.

    Raises:
        InputError: unknown mode, padding or stride, or an image that is not 2-D/3-D.
        KernelError: weights that are not a finite non-empty 2-D array.
        ShapeError: a kernel larger than the (padded) image with ``valid``/integer padding.

    >>> img = np.array([[93, 139, 101], [26, 252, 196], [135, 230, 18]], np.float32)
    >>> round(float(correlate(img, np.full((3, 3), 1 / 9), padding="valid")[0, 0]), 3)
    132.222
    """
    x = _check_image(image)
    _check_mode(mode)
    _check_geometry(padding, stride)
    w = _check_weights(weights)
    squeeze = x.ndim == 2
    x3 = _channels_last(x)
    n_workers = _workers(workers)
    cval = float(cval)
    kh, kw = w.shape
    h, w_ = x3.shape[:2]

    if padding == "same":
        result = _correlate_same(x3, plan(w, x3.shape, method), mode, cval, n_workers)
        if stride > 1:
            result = result[::stride, ::stride]
        return np.ascontiguousarray(result[..., 0] if squeeze else result)

    pad = 0 if padding == "valid" else int(padding)
    out_h = (h + 2 * pad - kh) // stride + 1
    out_w = (w_ + 2 * pad - kw) // stride + 1
    if h + 2 * pad < kh or w_ + 2 * pad < kw:
        raise ShapeError(
            f"The kernel ({kh}x{kw}) is larger than the image ({h}x{w_}) with padding "
            f"{pad}: no output position fits. Use padding='same' or a larger padding."
        )
    # Output (i, j) sits at centre (i*S - P + kh//2, j*S - P + kw//2) of the "same" result.
    first_r, last_r = kh // 2 - pad, (out_h - 1) * stride - pad + kh // 2
    first_c, last_c = kw // 2 - pad, (out_w - 1) * stride - pad + kw // 2
    if first_r >= 0 and last_r < h and first_c >= 0 and last_c < w_:
        src, offset = x3, 0
    else:
        # Centres outside the image: extend by P so every window lies inside (the
        # extension's own border handling is then never used).
        src = _take_extended(x3, -pad, h + pad, 0, mode, cval)
        src = np.ascontiguousarray(_take_extended(src, -pad, w_ + pad, 1, mode, cval))
        offset = pad
    full = _correlate_same(src, plan(w, src.shape, method), mode, cval, n_workers)
    result = full[
        first_r + offset : last_r + offset + 1 : stride,
        first_c + offset : last_c + offset + 1 : stride,
    ]
    return np.ascontiguousarray(result[..., 0] if squeeze else result)


def gradient_magnitude(
    image: np.ndarray,
    weights_x: np.ndarray,
    weights_y: np.ndarray,
    *,
    mode: str = "reflect",
    cval: float = 0.0,
    padding: int | Literal["same", "valid"] = "same",
    stride: int = 1,
    method: Method = "auto",
    workers: int | None = None,
) -> np.ndarray:
    """sqrt(gx² + gy²) of the correlations with ``weights_x`` and ``weights_y``.

    Takes the same keyword options as :func:`correlate`; float32 result, computed as
    ``np.sqrt(gx * gx + gy * gy)`` in float32. With ``padding="same"`` and separable
    kernels (Sobel, Prewitt, Scharr) both gradients and the magnitude are made strip by
    strip, without full-size intermediate arrays.
    """
    options: dict[str, Any] = {
        "mode": mode,
        "cval": cval,
        "padding": padding,
        "stride": stride,
        "method": method,
        "workers": workers,
    }
    x = _check_image(image)
    _check_mode(mode)
    _check_geometry(padding, stride)
    wx, wy = _check_weights(weights_x), _check_weights(weights_y)
    if padding == "same" and method in ("auto", "separable"):
        x3 = _channels_last(x)
        px, py = plan(wx, x3.shape, method), plan(wy, x3.shape, method)
        if px.method == "separable" and py.method == "separable":
            fused = _separable(x3, [px, py], mode, float(cval), _workers(workers))
            if fused is not None:
                result = fused[::stride, ::stride]
                return np.ascontiguousarray(result[..., 0] if x.ndim == 2 else result)
    gx = correlate(x, wx, **options)  # type: ignore[arg-type]
    gy = correlate(x, wy, **options)  # type: ignore[arg-type]
    np.multiply(gx, gx, out=gx)
    np.multiply(gy, gy, out=gy)
    np.add(gx, gy, out=gx)
    return np.sqrt(gx, out=gx)


def filter_chain(
    image: np.ndarray,
    steps: Sequence[Step],
    *,
    mode: str = "reflect",
    cval: float = 0.0,
    padding: int | Literal["same", "valid"] = "same",
    stride: int = 1,
    method: Method = "auto",
    workers: int | None = None,
) -> np.ndarray:
    """Apply each step in turn with the same options, like stacked conv layers.

    A step is a 2-D weights array (:func:`correlate`) or a ``(weights_x, weights_y)``
    pair (:func:`gradient_magnitude`). Returns float32.
    """
    _check_mode(mode)
    _check_geometry(padding, stride)
    if len(steps) == 0:
        raise KernelError("The filter chain is empty: give at least one kernel")
    x = _check_image(image)
    options: dict[str, Any] = {
        "mode": mode,
        "cval": cval,
        "padding": padding,
        "stride": stride,
        "method": method,
        "workers": workers,
    }
    result = np.asarray(x, dtype=np.float32)
    for step in steps:
        if isinstance(step, tuple):
            weights_x, weights_y = step
            result = gradient_magnitude(result, weights_x, weights_y, **options)
        else:
            result = correlate(result, step, **options)  # type: ignore[arg-type]
    return result


# --------------------------------------------------------------------------- bands


def _halo(steps: Sequence[Step]) -> tuple[int, int]:
    """Rows above and below an output row that a chain reads (its receptive field)."""
    above = below = 0
    for step in steps:
        kernels = step if isinstance(step, tuple) else (step,)
        rows = [int(np.shape(k)[0]) for k in kernels]
        above += max(k // 2 for k in rows)
        below += max(k - 1 - k // 2 for k in rows)
    return above, below


def band_rows(height: int, steps: Sequence[Step]) -> int:
    """Output rows per band for :func:`filter_bands` (``height`` when one band is best).

    A band re-reads ``halo`` rows on each side, so it is at least four halos tall (at
    most a quarter more rows to filter; taller bands cost memory: a 31x31 kernel's
    bands of 240 rows took a 4K PNG's peak from 126 to 154 MiB) and at least 64 rows
    (4K RGB: 3 MB of float32, a cache-friendly unit that each core finishes alone); a
    band and its halo fill whole strips of the engine (32 rows), since a short last
    strip costs nearly a whole one (box15 0.22 s a 4K image in bands of 82 + 14 rows,
    0.27 s in bands of 64 + 14). An image of fewer than eight such bands is one band.
    The split never depends on the number of threads, so neither do the results (nor
    the bytes of a file encoded band by band).

    >>> band_rows(2160, [np.ones((3, 3))]), band_rows(2160, [np.ones((15, 15))])
    (94, 82)
    """
    above, below = _halo(steps)
    halo = above + below
    total = -(-(max(64, 4 * halo) + halo) // _STRIP_ROWS) * _STRIP_ROWS
    rows = total - halo
    return height if height < 8 * rows else rows


def _separable_rows(
    source: np.ndarray,
    step: Step,
    mode: str,
    cval: float,
    workers: int,
    first: int,
    last: int,
) -> np.ndarray | None:
    """Rows first..last of ``filter_chain(source, [step])`` by the separable method alone
    (the halo rows around them are read, never filtered); None when the step's plan is
    not separable, or NaN or infinity need the direct method."""
    x = _channels_last(_check_image(source))
    kernels = step if isinstance(step, tuple) else (step,)
    plans = [plan(k, x.shape) for k in kernels]
    if any(p.method != "separable" for p in plans):
        return None
    result = _separable(x, plans, mode, float(cval), workers, rows=(first, last))
    if result is None or source.ndim == 3:
        return result
    return result[..., 0]


def filter_bands(
    read_rows: Callable[[int, int], np.ndarray],
    height: int,
    steps: Sequence[Step],
    finish: Callable[[int, int, np.ndarray], object],
    *,
    mode: str = "reflect",
    cval: float = 0.0,
    workers: int | None = None,
    rows: int | None = None,
) -> Iterator[object]:
    """:func:`filter_chain` (``padding="same"``, stride 1) band by band, in order.

    The image is never held whole: ``read_rows(r0, r1)`` returns input rows r0..r1 as
    float32 (n, W, C); each band of output rows is computed from its rows plus the
    chain's receptive field above and below (the halo), then ``finish(r0, r1, result)``
    turns it into whatever the caller keeps (encoded bytes, say). A chain of one
    separable kernel filters only the band's own rows (the halo is read, not filtered).
    Bands run on all cores, read, filter and finish in the same thread while the band
    is in cache; the results of ``finish`` are yielded in order, at most a few bands
    ahead of the consumer, so memory stays a few bands whatever the image's size.

    The result of every band equals the rows of ``filter_chain(image, steps, ...)``: a
    band that touches the image's top or bottom border has that border as its own, so
    the border rule applies there as on the whole image (``wrap`` reads the opposite
    border and is therefore refused here). Each output row lies at least the halo away
    from any other band edge, so every value it reads is the same as in the whole image.

    Raises:
        InputError: unknown ``mode``, or ``mode="wrap"``.
    """
    _check_mode(mode)
    if mode == "wrap":
        raise InputError("filter_bands cannot wrap around: filter the whole image instead")
    if len(steps) == 0:
        raise KernelError("The filter chain is empty: give at least one kernel")
    n_workers = _workers(workers)
    above, below = _halo(steps)
    # Never thinner than the halo: a band at a border must hold every row the border
    # rule reflects back in, as the whole image does.
    size = max(rows or band_rows(height, steps), 2 * (above + below), 1)
    starts = list(range(0, height, size))
    # One band: the engine itself spreads it over the cores.
    engine_workers = n_workers if len(starts) == 1 else 1

    def band(r0: int) -> object:
        r1 = min(r0 + size, height)
        lo, hi = max(0, r0 - above), min(height, r1 + below)
        source = read_rows(lo, hi)
        result = (
            _separable_rows(source, steps[0], mode, cval, engine_workers, r0 - lo, r1 - lo)
            if len(steps) == 1
            else None
        )
        if result is None:
            chain = filter_chain(source, steps, mode=mode, cval=cval, workers=engine_workers)
            result = chain[r0 - lo : r1 - lo]
        return finish(r0, r1, result)

    if len(starts) == 1 or n_workers == 1:
        for r0 in starts:
            yield band(r0)
        return
    ahead = n_workers + 1  # finished bands wait here for their turn: bounded memory
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        pending = [pool.submit(band, r0) for r0 in starts[:ahead]]
        following = iter(starts[ahead:])
        try:
            while pending:
                done = pending.pop(0).result()
                nxt = next(following, None)
                if nxt is not None:
                    pending.append(pool.submit(band, nxt))
                yield done
        finally:
            for future in pending:
                future.cancel()
