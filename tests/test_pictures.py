"""Pictures: kernel heatmaps, feature maps in a colormap with a colour bar, filter grids.

Colours are checked against published colormap values (matplotlib's viridis and Moreland's
cool-warm end points) and against values worked out by hand from the inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convcli import pictures
from convcli.errors import InputError

BLUE, MIDDLE, RED = (59, 76, 192), (221, 221, 221), (180, 4, 38)  # Moreland's cool-warm


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _has(image: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"))
    return np.all(pixels == colour, axis=-1)


def test_colormap_end_points_are_the_published_ones() -> None:
    viridis = pictures.colormap_lut("viridis")
    # matplotlib: viridis(0) = (0.267004, 0.004874, 0.329415), viridis(1) = (0.993248, 0.906157, 0.143936)
    assert viridis[0].tolist() == [68, 1, 84]
    assert viridis[255].tolist() == [253, 231, 37]
    gray = pictures.colormap_lut("gray")
    assert gray[:, 0].tolist() == list(range(256))
    with pytest.raises(InputError, match="Allowed values are: gray, viridis, magma, coolwarm. Received: colormap=jet"):
        pictures.colormap_lut("jet")


def test_normalise_per_map_and_shared() -> None:
    maps = np.zeros((2, 2, 2))
    maps[..., 0] = [[0, 2], [4, 8]]
    maps[..., 1] = 4.0  # constant
    per_map, low, high = pictures.normalise(maps, "per-map")
    assert per_map[..., 0].tolist() == [[0, 0.25], [0.5, 1]]
    assert per_map[..., 1].tolist() == [[0, 0], [0, 0]]  # a constant map: the low end
    shared, low, high = pictures.normalise(maps, "shared")
    assert (low, high) == (0, 8)
    assert shared[..., 1].tolist() == [[0.5, 0.5], [0.5, 0.5]]  # 4 on 0..8
    with pytest.raises(InputError, match="map-range=wide"):
        pictures.normalise(maps, "wide")


def test_kernel_heatmap_colours_follow_the_signs(cli, tmp_path: Path) -> None:
    out = tmp_path / "sobel-x.png"
    result = cli("kernels", "sobel-x", "--png", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith(f"note: wrote {out}")
    image = _open(out)
    # sobel-x: -2 (the strongest negative) takes the blue end, +2 the red end, 0 the middle
    centre = tuple(pictures.colormap_lut("coolwarm")[128])  # 0 maps to 128/255 of the way
    assert max(abs(int(a) - b) for a, b in zip(centre, MIDDLE)) <= 2
    blue, red, middle = _has(image, BLUE), _has(image, RED), _has(image, centre)
    assert blue.any() and red.any() and middle.any()
    # the negative column is on the left, the positive on the right (the colour bar aside)
    rows = slice(0, image.height * 2 // 3)
    assert np.nonzero(blue[rows])[1].mean() < np.nonzero(middle[rows])[1].mean() < np.nonzero(red[rows])[1].mean()


def test_kernel_png_of_a_gradient_pair_draws_both(cli, tmp_path: Path) -> None:
    one = tmp_path / "x.png"
    pair = tmp_path / "pair.png"
    assert cli("kernels", "sobel-x", "--png", str(one)).exit_code == 0
    assert cli("kernels", "sobel", "--png", str(pair)).exit_code == 0
    assert _open(pair).width == 2 * _open(one).width


@pytest.mark.parametrize(
    "args, message",
    [
        (["--png", "k.png"], "--png draws one kernel: give its NAME"),
        (["box3", "--png", "k.jpg"], "--png writes a .png file"),
    ],
)
def test_kernel_png_errors(cli, tmp_path: Path, args: list[str], message: str) -> None:
    result = cli("kernels", *[str(tmp_path / a) if a in ("k.png", "k.jpg") else a for a in args])
    assert result.exit_code == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def _tile_pixel(picture: Image.Image, index: int, tile: int = 48) -> tuple[int, ...]:
    """A pixel inside tile ``index`` of a grid of 2 columns (gap 4, title 18, label 13)."""
    gap, title_h, label_h = 4, 18, 13
    cell_w = max(tile, 24) + gap
    row, col = divmod(index, 2)
    x = gap + col * cell_w + tile // 2
    y = title_h + row * (tile + label_h + gap) + label_h + tile // 2
    return tuple(picture.convert("RGB").getpixel((x, y)))  # type: ignore[arg-type]


def test_feature_maps_per_map_and_shared_range() -> None:
    maps = np.zeros((4, 4, 2))
    maps[..., 0] = 1.0
    maps[:, :2, 0] = 0.0  # map 0: 0 on the left half, 1 on the right
    maps[..., 1] = 0.5  # map 1: constant 0.5
    per_map = pictures.feature_map_grid(maps, "t", colormap="viridis", value_range="per-map")
    shared = pictures.feature_map_grid(maps, "t", colormap="viridis", value_range="shared")
    viridis = pictures.colormap_lut("viridis")
    # a constant map on its own range is the low end; on the shared 0..1 it is the middle
    assert _tile_pixel(per_map, 1) == tuple(viridis[0])
    assert _tile_pixel(shared, 1) == tuple(viridis[128])  # round(0.5 * 255) = 128
    # matplotlib's viridis(0.5) = (0.128729, 0.563265, 0.551229): (33, 144, 141) within a unit
    assert np.abs(viridis[128].astype(int) - (33, 144, 141)).max() <= 2
    # both pictures carry a colour bar: every colour of the map appears in a row
    assert _has(shared, tuple(viridis[255])).any() and _has(shared, tuple(viridis[64])).any()


def test_run_draws_an_rgb_input_in_colour_and_the_filters(cli, tmp_path: Path) -> None:
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:3, :, 0] = 255  # top half red
    rgb[3:, :, 1] = 255  # bottom half green
    Image.fromarray(rgb).save(tmp_path / "in.png")
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    kernel[:, :, 0, 0] = 1.0  # filter 0: the red channel only
    kernel[:, :, :, 1] = -1.0  # filter 1: every channel -1
    np.savez(tmp_path / "w.npz", **{"conv1.kernel": kernel, "conv1.bias": np.zeros(2, np.float32)})
    result = cli("run", "INPUT(6,6,3) => CONV(2,3)", str(tmp_path / "in.png"), "--weights", str(tmp_path / "w.npz"),
                 "--save-maps", str(tmp_path / "maps"), "--save-filters", str(tmp_path / "filters.png"))
    assert result.exit_code == 0, result.stderr
    picture = _open(tmp_path / "maps" / "00-input.png")
    assert _has(picture, (255, 0, 0)).any() and _has(picture, (0, 255, 0)).any()
    filters = _open(tmp_path / "filters.png")
    # one range for the layer, -1..1: filter 0 is R = 1 -> 255, G = B = 0 -> 128; filter 1 is black
    # each 3x3 filter enlarged 10 times: 30 x 30 pixels
    assert _has(filters, (255, 128, 128)).sum() >= 30 * 30
    assert _has(filters, (0, 0, 0)).sum() >= 30 * 30


def test_run_picture_option_errors(cli, samples: Path, tmp_path: Path) -> None:
    base = ["run", str(samples / "digits.toml"), str(samples / "digit-7.png")]
    bad = cli(*base, "--save-maps", str(tmp_path / "m"), "--colormap", "jet")
    assert bad.exit_code == 2 and "colormap=jet" in bad.stderr and not (tmp_path / "m").exists()
    no_conv = cli("run", "INPUT(8,8,1) => FLATTEN => FC(2)", str(samples / "digit-7.png"),
                  "--save-filters", str(tmp_path / "f.png"))
    assert no_conv.exit_code == 2 and "no conv layer" in no_conv.stderr
    assert not (tmp_path / "f.png").exists()
