"""Pictures where people would rather look than read (Pillow only, no matplotlib).

- :func:`kernel_heatmap`: a kernel's matrix as a heatmap, diverging colours around 0 (blue
  negative, red positive, white-grey 0), its values written in the cells
  (``convcli kernels NAME --png out.png``).
- :func:`feature_map_grid`: one layer's feature maps as a labelled grid in a colormap, each
  map on its own min..max or all on one shared range, with a colour bar
  (``convcli run --save-maps DIR``); :func:`input_picture` shows an RGB input as one
  colour picture.
- :func:`filter_grid`: the first conv layer's kernels as a grid of small pictures, RGB
  when they have three input channels, as the lecture's figure of AlexNet's first-layer
  filters (``convcli run --save-filters out.png``).

Colormaps are linear interpolations between a few anchor colours:

>>> colormap_lut("gray")[[0, 128, 255]].tolist()
[[0, 0, 0], [128, 128, 128], [255, 255, 255]]
>>> colormap_lut("coolwarm")[[0, 255]].tolist()  # a diverging map: blue to red
[[59, 76, 192], [180, 4, 38]]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np

from convcli.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

COLORMAPS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "gray": ((0, 0, 0), (255, 255, 255)),
    # matplotlib's viridis and magma sampled at 0, 1/4, 1/2, 3/4 and 1 (perceptually uniform)
    "viridis": ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)),
    "magma": ((0, 0, 4), (81, 18, 124), (183, 55, 121), (252, 137, 97), (252, 253, 191)),
    # Moreland's diverging "cool to warm" (blue, grey-white, red), for signed values
    "coolwarm": ((59, 76, 192), (221, 221, 221), (180, 4, 38)),
}
"""Colormap names (``--colormap``) and their evenly spaced anchor colours."""

MapRange = Literal["per-map", "shared"]
MAP_RANGES: tuple[str, ...] = ("per-map", "shared")

_BACKGROUND = (40, 40, 40)
_TEXT = (235, 235, 235)
_MIN_TILE = 48
_MAX_GRID_SIDE = 4096


def colormap_lut(name: str) -> np.ndarray:
    """The (256, 3) uint8 lookup table of a colormap.

    Raises:
        InputError: an unknown name (with the allowed ones).
    """
    if name not in COLORMAPS:
        raise InputError(
            f"Unknown value for `colormap`. Allowed values are: {', '.join(COLORMAPS)}. Received: colormap={name}"
        )
    anchors = np.array(COLORMAPS[name], dtype=np.float64)
    where = np.linspace(0, 1, len(anchors))
    x = np.linspace(0, 1, 256)
    return np.rint(np.stack([np.interp(x, where, anchors[:, c]) for c in range(3)], axis=-1)).astype(np.uint8)


def apply_colormap(values: np.ndarray, name: str) -> np.ndarray:
    """Values in [0, 1] (any shape) as RGB uint8 (shape + (3,)) through a colormap."""
    index = np.rint(np.clip(values, 0, 1) * 255).astype(np.intp)
    return colormap_lut(name)[index]


def check_map_range(value_range: str) -> str:
    """Validate ``--map-range`` (per-map or shared)."""
    if value_range not in MAP_RANGES:
        raise InputError(
            f"Unknown value for `map-range`. Allowed values are: {', '.join(MAP_RANGES)}. "
            f"Received: map-range={value_range}"
        )
    return value_range


def normalise(maps: np.ndarray, value_range: str = "per-map") -> tuple[np.ndarray, float, float]:
    """Maps (H, W, D) onto [0, 1]: each map on its own min..max (``per-map``) or all on the
    overall min..max (``shared``). A constant map becomes 0. Returns (values, low, high)
    where low..high is the shared range (the overall one for ``per-map``).

    >>> v, low, high = normalise(np.array([[[0.0, 5.0], [2.0, 5.0]]]), "per-map")
    >>> v[..., 0].tolist(), v[..., 1].tolist(), (low, high)
    ([[0.0, 1.0]], [[0.0, 0.0]], (0.0, 5.0))
    >>> normalise(np.array([[[0.0, 5.0], [2.0, 5.0]]]), "shared")[0].tolist()
    [[[0.0, 1.0], [0.4, 1.0]]]
    """
    check_map_range(value_range)
    maps = np.asarray(maps, dtype=np.float64)
    overall = (float(maps.min()), float(maps.max())) if maps.size else (0.0, 0.0)
    if value_range == "shared":
        low = np.full((1, 1, maps.shape[2]), overall[0])
        span = np.full((1, 1, maps.shape[2]), overall[1] - overall[0])
    else:
        low = maps.min(axis=(0, 1), keepdims=True)
        span = maps.max(axis=(0, 1), keepdims=True) - low
    values = np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)
    return values, overall[0], overall[1]


def _font(size: int = 11) -> object:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def format_value(value: float) -> str:
    """A short label for a number: integers plain, others with 3 significant digits.

    >>> format_value(4.0), format_value(-0.125), format_value(1e-5), format_value(12345.6)
    ('4', '-0.125', '1e-05', '1.23e+04')
    """
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def colour_bar(width: int, name: str, low: str, high: str, caption: str = "") -> PILImage.Image:
    """A horizontal colour bar with its two end labels (and a caption between them)."""
    from PIL import Image, ImageDraw

    bar_h, text_h = 12, 14
    width = max(width, 120)
    ramp = apply_colormap(np.linspace(0, 1, width)[np.newaxis, :].repeat(bar_h, axis=0), name)
    canvas = Image.new("RGB", (width, bar_h + text_h + 2), _BACKGROUND)
    canvas.paste(Image.fromarray(ramp, "RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((0, bar_h + 1), low, fill=_TEXT, font=font)  # type: ignore[arg-type]
    right = draw.textlength(high, font=font)  # type: ignore[arg-type]
    draw.text((width - right, bar_h + 1), high, fill=_TEXT, font=font)  # type: ignore[arg-type]
    if caption:
        middle = draw.textlength(caption, font=font)  # type: ignore[arg-type]
        draw.text(((width - middle) / 2, bar_h + 1), caption, fill=_TEXT, font=font)  # type: ignore[arg-type]
    return canvas


def _grid_layout(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return cols, math.ceil(n / cols)


def _tiles(rgb: np.ndarray, minimum: int = _MIN_TILE) -> np.ndarray:
    """Tiles (N, h, w, 3) enlarged (nearest neighbour) to at least ``minimum`` pixels a side."""
    zoom = max(1, minimum // max(rgb.shape[1], rgb.shape[2]))
    if zoom > 1:
        rgb = rgb.repeat(zoom, axis=1).repeat(zoom, axis=2)
    return rgb


def _paste_grid(tiles: np.ndarray, title: str, labels: list[str], bar: PILImage.Image | None) -> PILImage.Image:
    from PIL import Image, ImageDraw

    n, th, tw = tiles.shape[:3]
    cols, rows = _grid_layout(n)
    gap, label_h, title_h = 4, 13 if labels else 0, 18
    cell_w, cell_h = max(tw, 24) + gap, th + label_h + gap
    width = max(cols * cell_w + gap, 7 * len(title) + 2 * gap, (bar.width + 2 * gap) if bar else 0)
    height = title_h + rows * cell_h + gap + ((bar.height + gap) if bar else 0)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((gap, 3), title, fill=_TEXT, font=font)  # type: ignore[arg-type]
    for index in range(n):
        r, c = divmod(index, cols)
        x0, y0 = gap + c * cell_w, title_h + r * cell_h
        if labels:
            draw.text((x0, y0), labels[index], fill=(200, 200, 200), font=font)  # type: ignore[arg-type]
        canvas.paste(Image.fromarray(np.ascontiguousarray(tiles[index]), "RGB"), (x0, y0 + label_h))
    if bar is not None:
        canvas.paste(bar, (gap, title_h + rows * cell_h + gap))
    return canvas


def feature_map_grid(
    maps: np.ndarray, title: str, *, colormap: str = "gray", value_range: str = "per-map"
) -> PILImage.Image:
    """One layer's feature maps (H, W, D) as a labelled grid picture (RGB) with a colour bar.

    ``value_range``: ``per-map`` scales each map on its own min..max (every map uses the
    whole colormap; the bar reads "each map's min .. max"); ``shared`` puts every map on the
    layer's overall min..max (maps can be compared; the bar shows the two numbers). Maps are
    laid out in a near-square grid, enlarged to at least 48 pixels, subsampled when the grid
    would exceed 4096 pixels.
    """
    h, w, d = maps.shape
    cols, rows = _grid_layout(d)
    step = max(1, math.ceil(cols * w / _MAX_GRID_SIDE), math.ceil(rows * h / _MAX_GRID_SIDE))
    values, low, high = normalise(maps[::step, ::step], value_range)
    rgb = apply_colormap(np.moveaxis(values, -1, 0), colormap)
    tiles = _tiles(rgb)
    if value_range == "shared":
        bar = colour_bar(min(tiles.shape[2] * cols, 480), colormap, format_value(low), format_value(high))
    else:
        bar = colour_bar(min(tiles.shape[2] * cols, 480), colormap, "min", "max", "each map")
    return _paste_grid(tiles, title, [str(i) for i in range(d)], bar)


def input_picture(x: np.ndarray, title: str) -> PILImage.Image:
    """The model's input (H, W, D) as it is: an RGB input as one colour picture, a gray one
    as gray, on the [0, 1] scale images are read on (values outside are clipped)."""
    h, w, d = x.shape
    if d == 3:
        rgb = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)[np.newaxis]
        tiles = _tiles(rgb, 96)
        return _paste_grid(tiles, title, [], None)
    return feature_map_grid(x, title, colormap="gray", value_range="shared")


def kernel_heatmap(weights: np.ndarray, labels: list[list[str]], title: str) -> PILImage.Image:
    """A kernel as a heatmap: diverging colours symmetric around 0 (blue negative, red
    positive; the strongest weight of either sign takes the full colour), each cell's value
    written in it (``labels``: the numbers as the kernel file writes them)."""
    from PIL import Image, ImageDraw

    weights = np.asarray(weights, dtype=np.float64)
    rows, cols = weights.shape
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textlength(t, font=font) for row in labels for t in row)  # type: ignore[arg-type]
    cell = int(max(36, text_w + 10))
    peak = float(np.abs(weights).max())
    values = 0.5 + (weights / (2 * peak) if peak > 0 else 0 * weights)
    colours = apply_colormap(values, "coolwarm")
    title_h, gap = 20, 6
    bar = colour_bar(max(cols * cell, 160), "coolwarm", format_value(-peak), format_value(peak), "0")
    canvas = Image.new("RGB", (max(cols * cell, bar.width, 7 * len(title)) + 2 * gap,
                               title_h + rows * cell + 2 * gap + bar.height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 4), title, fill=_TEXT, font=font)  # type: ignore[arg-type]
    block = colours.repeat(cell, axis=0).repeat(cell, axis=1)
    block[::cell, :] = _BACKGROUND  # thin grid lines between the cells
    block[:, ::cell] = _BACKGROUND
    canvas.paste(Image.fromarray(np.ascontiguousarray(block), "RGB"), (gap, title_h))
    for r in range(rows):
        for c in range(cols):
            red, green, blue = (int(v) for v in colours[r, c])
            ink = (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)
            text = labels[r][c]
            tw = draw.textlength(text, font=font)  # type: ignore[arg-type]
            draw.text((gap + c * cell + (cell - tw) / 2, title_h + r * cell + cell / 2 - 7), text, fill=ink, font=font)  # type: ignore[arg-type]
    canvas.paste(bar, (gap, title_h + rows * cell + gap))
    return canvas


def side_by_side(pictures: list[PILImage.Image]) -> PILImage.Image:
    """Pictures next to each other, top-aligned (a gradient pair's two kernels)."""
    from PIL import Image

    width = sum(p.width for p in pictures)
    canvas = Image.new("RGB", (width, max(p.height for p in pictures)), _BACKGROUND)
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, 0))
        x += picture.width
    return canvas


def filter_grid(kernel: np.ndarray, title: str) -> PILImage.Image:
    """A conv layer's kernels (F, F, D, K) as a grid of K pictures.

    Three input channels: each filter as an RGB picture, all on the layer's common
    min..max (as the lecture's figure of AlexNet's first-layer filters). Otherwise: each
    filter's mean over its input channels, in diverging colours symmetric around 0.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    fh, fw, d, k = kernel.shape
    filters = np.moveaxis(kernel, -1, 0)  # (K, F, F, D)
    if d == 3:
        low, high = float(filters.min()), float(filters.max())
        span = high - low if high > low else 1.0
        rgb = np.rint((filters - low) / span * 255).astype(np.uint8)
        bar = colour_bar(160, "gray", format_value(low), format_value(high), "each channel")
    else:
        mean = filters.mean(axis=-1)
        peak = float(np.abs(mean).max())
        values = 0.5 + (mean / (2 * peak) if peak > 0 else 0 * mean)
        rgb = apply_colormap(values, "coolwarm")
        bar = colour_bar(160, "coolwarm", format_value(-peak), format_value(peak), "0")
    return _paste_grid(_tiles(rgb, 32), title, [str(i) for i in range(k)], bar)


def save_png(picture: PILImage.Image, path: str, what: str) -> None:
    """Write a picture as PNG through the one file boundary (temporary file + rename)."""
    from convcli import fileio

    fileio.write_file(path, lambda stream: picture.save(stream, format="PNG"), what=what)
