"""The lecture's hand computation: lay a kernel on a region, multiply element-wise, sum.

>>> from convcli.kernels import resolve_kernel
>>> box3 = resolve_kernel("box3")
>>> region = np.array([[93, 139, 101], [26, 252, 196], [135, 230, 18]], dtype=float)
>>> result = explain(region, box3.weights, scale=box3.scale, matrix=box3.written)
>>> result.exact_sum, round(result.sum, 4), result.rounded
(Fraction(1190, 9), 132.2222, 132)

Regions can also be cut out of an image around a pixel (:func:`region_at`). The border is
handled exactly as ``convcli filter`` (and ``scipy.ndimage.correlate``) handle it: the image
is extended by ``mode`` (default ``reflect``), so the explained sum equals the filtered value
at that pixel. For an even-sized kernel the "centre" is at row ``rows // 2`` and column
``cols // 2`` of the kernel, scipy.ndimage's convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from convcli import filtering
from convcli.errors import InputError

__all__ = ["MODES", "Explanation", "explain", "region_at"]

#: scipy.ndimage's border modes (the filtering engine's).
MODES = tuple(filtering.MODES)


@dataclass(frozen=True, eq=False)
class Explanation:
    """One output value worked out by hand.

    ``weights`` are the effective kernel values (scale applied); ``matrix``/``scale`` the
    kernel as written (``1/9 ×`` ones); ``products`` = region × weights element-wise;
    ``sum`` their sum (float64, ``math.fsum``); ``exact_sum`` the exact fraction when the
    region and the written kernel are whole numbers (``1190/9``), else None.
    """

    region: np.ndarray
    weights: np.ndarray
    products: np.ndarray
    sum: float
    exact_sum: Fraction | None
    scale: Fraction | None
    matrix: np.ndarray

    @property
    def rounded(self) -> int:
        """The sum rounded to the nearest integer (as an integer image would store it, before clipping)."""
        return int(np.rint(self.sum))


def _whole(array: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(array)) and np.all(array == np.round(array)))  # any size: Python ints sum them


def explain(
    region: np.ndarray,
    weights: np.ndarray,
    *,
    scale: Fraction | None = None,
    matrix: np.ndarray | None = None,
) -> Explanation:
    """Multiply ``region`` and ``weights`` element-wise and sum (no flip: cross-correlation).

    Args:
        region: the image values under the kernel, 2-D.
        weights: the effective kernel values, same shape.
        scale: the kernel's exact scale, when written as ``scale × matrix`` (for display and
            the exact sum).
        matrix: the kernel as written before ``scale``; defaults to ``weights``.

    Raises:
        InputError: region and kernel of different shapes, or not 2-D.
    """
    region = np.asarray(region, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if region.ndim != 2 or weights.ndim != 2:
        raise InputError(f"region and kernel must be 2-D matrices. Received shapes {region.shape} and {weights.shape}")
    if region.shape != weights.shape:
        raise InputError(
            f"The region is {region.shape[0]}x{region.shape[1]} but the kernel is "
            f"{weights.shape[0]}x{weights.shape[1]}: they must have the same size"
        )
    written = weights if matrix is None else np.asarray(matrix, dtype=np.float64)
    products = region * weights
    total = math.fsum(products.ravel().tolist())
    exact: Fraction | None = None
    if _whole(region) and _whole(written):
        # Python integers: exact at any size (int64 would wrap around beyond 9.2e18)
        integer_sum = sum(
            int(a) * int(b) for a, b in zip(region.ravel().tolist(), written.ravel().tolist(), strict=True)
        )
        exact = Fraction(integer_sum) * (scale if scale is not None else 1)
        try:
            total = float(exact)
        except OverflowError:  # beyond float64: the exact sum still says it
            total = math.copysign(math.inf, exact)
    return Explanation(
        region=region,
        weights=weights,
        products=products,
        sum=total,
        exact_sum=exact,
        scale=scale,
        matrix=written,
    )


def _border_index(index: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map positions outside 0..n-1 back into the image, as scipy.ndimage's modes do.

    Returns -1 for positions that take ``cval`` (mode ``constant``).
    """
    if mode == "reflect":  # d c b a | a b c d | d c b a  (half-sample symmetric)
        m = np.mod(index, 2 * n)
        return np.where(m < n, m, 2 * n - 1 - m)
    if mode == "mirror":  # d c b | a b c d | c b a  (whole-sample symmetric)
        if n == 1:
            return np.zeros_like(index)
        m = np.mod(index, 2 * n - 2)
        return np.where(m < n, m, 2 * n - 2 - m)
    if mode == "nearest":  # a a a | a b c d | d d d
        return np.clip(index, 0, n - 1)
    if mode == "wrap":  # a b c d | a b c d | a b c d
        return np.mod(index, n)
    if mode == "constant":
        return np.where((index >= 0) & (index < n), index, -1)
    raise InputError(f"Unknown value for `mode`. Allowed values are: {', '.join(MODES)}. Received: mode={mode}")


def region_at(
    image: np.ndarray,
    x: int,
    y: int,
    shape: tuple[int, int],
    *,
    mode: str = "reflect",
    cval: float = 0.0,
) -> np.ndarray:
    """The ``shape`` region of a 2-D ``image`` centred on column ``x``, row ``y``.

    Rows ``y - rows//2 ...`` and columns ``x - cols//2 ...``; positions outside the image
    follow ``mode`` as in ``scipy.ndimage.correlate``, so
    ``explain(region_at(img, x, y, w.shape, mode=m), w).sum`` equals
    ``scipy.ndimage.correlate(img, w, mode=m)[y, x]``.

    Raises:
        InputError: (x, y) outside the image, an unknown mode, or a non-2-D image.
    """
    if image.ndim != 2:
        raise InputError(f"region_at needs a 2-D image. Received shape {image.shape}")
    height, width = image.shape
    if not (0 <= x < width and 0 <= y < height):
        raise InputError(
            f"--at {x},{y} is outside the image (width {width}, height {height}): "
            f"X must be in 0..{width - 1} and Y in 0..{height - 1}"
        )
    rows, cols = shape
    row_index = _border_index(np.arange(rows) + y - rows // 2, height, mode)
    col_index = _border_index(np.arange(cols) + x - cols // 2, width, mode)
    region = image[np.ix_(np.maximum(row_index, 0), np.maximum(col_index, 0))].astype(np.float64)
    if mode == "constant":
        outside = (row_index[:, None] < 0) | (col_index[None, :] < 0)
        region[outside] = cval
    return region
