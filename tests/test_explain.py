"""`convcli explain` and convcli.explain: the lecture's hand computations.

References: the lecture's figures (132, 6600, 0), scipy.ndimage.correlate for regions taken
from an image with each border mode, and a naive loop oracle for the products.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convcli.errors import InputError
from convcli.explain import MODES, explain, region_at
from convcli.kernels import ENV_VAR, resolve_kernel

# The lecture's hand computation: the 1/9 box kernel on this region gives 1190/9 ≈ 132.
# The slide shows the products cut (not rounded) to one decimal: 26/9 = 2.89 appears as 2.8.
LECTURE_REGION = "93 139 101; 26 252 196; 135 230 18"
LECTURE_PRODUCTS_1DP = [[10.3, 15.4, 11.2], [2.8, 28.0, 21.7], [15.0, 25.5, 2.0]]

# The lecture's two 7x7 receptive fields for the curve detector, copied from the slides.
CURVE_FIELD_MATCH = [
    [0, 0, 0, 0, 0, 0, 30],
    [0, 0, 0, 0, 50, 50, 50],
    [0, 0, 0, 20, 50, 0, 0],
    [0, 0, 0, 50, 50, 0, 0],
    [0, 0, 0, 50, 50, 0, 0],
    [0, 0, 0, 50, 50, 0, 0],
    [0, 0, 0, 50, 50, 0, 0],
]
CURVE_FIELD_OTHER = [
    [0, 0, 0, 0, 0, 0, 0],
    [0, 40, 0, 0, 0, 0, 0],
    [40, 0, 40, 0, 0, 0, 0],
    [40, 20, 0, 0, 0, 0, 0],
    [0, 50, 0, 0, 0, 0, 0],
    [0, 0, 50, 0, 0, 0, 0],
    [25, 25, 0, 50, 0, 0, 0],
]


@pytest.fixture(autouse=True)
def _no_user_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def as_inline(matrix: list[list[int]]) -> str:
    return "; ".join(" ".join(str(v) for v in row) for row in matrix)


def naive_products(region: np.ndarray, weights: np.ndarray) -> np.ndarray:
    out = np.empty(region.shape)
    for i in range(region.shape[0]):
        for j in range(region.shape[1]):
            out[i, j] = region[i, j] * weights[i, j]
    return out


# ----------------------------------------------------------------------------- the core


def test_lecture_box3_gives_132() -> None:
    box3 = resolve_kernel("box3")
    region = np.array([[93, 139, 101], [26, 252, 196], [135, 230, 18]], dtype=float)
    result = explain(region, box3.weights, scale=box3.scale, matrix=box3.written)
    assert result.exact_sum == Fraction(1190, 9)
    assert result.sum == pytest.approx(132.2222, abs=1e-4)
    assert result.rounded == 132
    np.testing.assert_allclose(np.floor(result.products * 10) / 10, LECTURE_PRODUCTS_1DP)
    np.testing.assert_allclose(result.products, naive_products(region, box3.weights))


@pytest.mark.parametrize(("field", "expected"), [(CURVE_FIELD_MATCH, 6600), (CURVE_FIELD_OTHER, 0)])
def test_lecture_curve_detector(field: list[list[int]], expected: int) -> None:
    curve = resolve_kernel("curve")
    result = explain(np.array(field, dtype=float), curve.weights)
    assert result.exact_sum == expected and result.sum == expected
    assert result.products.sum() == expected


def test_no_flip_it_is_correlation() -> None:
    region = np.arange(9.0).reshape(3, 3)
    sobel_x = resolve_kernel("sobel-x").weights
    # By hand: (2 - 0) + 2 * (5 - 3) + (8 - 6) = 8; a flipped kernel (convolution) gives -8.
    assert explain(region, sobel_x).sum == 8


def test_exact_sum_only_for_whole_numbers() -> None:
    result = explain(np.array([[0.5, 1.0]]), np.array([[1.0, 1.0]]))
    assert result.exact_sum is None and result.sum == 1.5


def test_size_mismatch() -> None:
    with pytest.raises(InputError, match=r"The region is 3x3 but the kernel is 5x5: they must have the same size"):
        explain(np.zeros((3, 3)), np.zeros((5, 5)))


@settings(max_examples=80, deadline=None)
@given(
    image=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9), elements=st.integers(0, 255)),
    kernel_shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    mode=st.sampled_from(MODES),
    cval=st.sampled_from([0.0, 7.5]),
    data=st.data(),
)
def test_region_at_matches_scipy_correlate(image, kernel_shape, mode, cval, data) -> None:
    """The explained sum at (x, y) is the filtered value there, for every border mode."""
    weights = data.draw(hnp.arrays(np.float64, kernel_shape, elements=st.integers(-5, 5)))
    y = data.draw(st.integers(0, image.shape[0] - 1))
    x = data.draw(st.integers(0, image.shape[1] - 1))
    expected = ndi.correlate(image, weights, mode=mode, cval=cval)[y, x]
    region = region_at(image, x, y, kernel_shape, mode=mode, cval=cval)
    assert explain(region, weights).sum == pytest.approx(expected, abs=1e-9)


def test_region_at_is_centred_on_column_x_row_y() -> None:
    image = np.arange(30.0).reshape(5, 6)  # value = 6 * row + column
    region = region_at(image, 4, 1, (3, 3))
    assert region.tolist() == [[3, 4, 5], [9, 10, 11], [15, 16, 17]]
    with pytest.raises(InputError, match=r"--at 6,1 is outside the image \(width 6, height 5\): X must be in 0\.\.5 and Y in 0\.\.4"):
        region_at(image, 6, 1, (3, 3))
    with pytest.raises(InputError, match=r"Unknown value for `mode`\. Allowed values are: reflect, constant"):
        region_at(image, 1, 1, (3, 3), mode="bogus")


# ----------------------------------------------------------------------------- the command


def test_cli_lecture_region(cli) -> None:
    result = cli("explain", "--region", LECTURE_REGION, "--kernel", "box3")
    assert result.exit_code == 0, result.stderr
    assert "sum = 1190/9 = 132.2222 ≈ 132" in result.stdout
    for text in ("252", "10.3333", "28", "scale 1/9"):
        assert text in result.stdout


def test_cli_lecture_region_json(cli) -> None:
    result = cli("explain", "--region", LECTURE_REGION, "--kernel", "box3", "--json")
    document = json.loads(result.stdout)
    assert document["region"] == [[93, 139, 101], [26, 252, 196], [135, 230, 18]]
    assert document["kernel"] == [[1 / 9] * 3] * 3
    assert document["scale"] == "1/9"
    np.testing.assert_allclose(np.floor(np.array(document["products"]) * 10) / 10, LECTURE_PRODUCTS_1DP)
    assert document["sum"] == pytest.approx(1190 / 9)
    assert document["sum_exact"] == "1190/9"
    assert document["rounded"] == 132


@pytest.mark.parametrize(("field", "expected"), [(CURVE_FIELD_MATCH, 6600), (CURVE_FIELD_OTHER, 0)])
def test_cli_curve_detector(cli, field, expected) -> None:
    result = cli("explain", "--region", as_inline(field), "--kernel", "curve", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["sum"] == expected
    text = cli("explain", "--region", as_inline(field), "--kernel", "curve").stdout
    assert f"sum = {expected}" in text


def test_cli_region_from_npy_and_inline_kernel(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "field.npy", np.array(CURVE_FIELD_MATCH))
    result = cli("explain", "--region", str(tmp_path / "field.npy"), "--kernel", as_inline(
        resolve_kernel("curve").weights.astype(int).tolist()), "--json")
    assert json.loads(result.stdout)["sum"] == 6600


@pytest.fixture
def rgb_png(tmp_path: Path) -> tuple[Path, np.ndarray]:
    from PIL import Image

    pixels = np.random.default_rng(3).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    path = tmp_path / "small.png"
    Image.fromarray(pixels, "RGB").save(path)
    return path, pixels


@pytest.mark.parametrize("mode", MODES)
def test_cli_image_pixel_matches_scipy(cli, rgb_png, mode: str) -> None:
    path, pixels = rgb_png
    channel = pixels[:, :, 1].astype(np.float64)
    for x, y in ((0, 0), (12, 8), (6, 4), (12, 0)):
        result = cli("explain", str(path), "--at", f"{x},{y}", "--kernel", "sobel-x", "--mode", mode,
                     "--cval", "3", "--channel", "1", "--json")
        assert result.exit_code == 0, result.stderr
        document = json.loads(result.stdout)
        expected = ndi.correlate(channel, resolve_kernel("sobel-x").weights, mode=mode, cval=3)[y, x]
        assert document["sum"] == pytest.approx(expected)
        assert document["at"] == {"x": x, "y": y} and document["mode"] == mode


def test_cli_image_npy_and_gray(cli, tmp_path: Path, rgb_png) -> None:
    image = np.arange(35.0).reshape(5, 7)
    np.save(tmp_path / "img.npy", image)
    result = cli("explain", str(tmp_path / "img.npy"), "--at", "2,3", "--kernel", "identity", "--json")
    assert json.loads(result.stdout)["sum"] == image[3, 2]  # X column 2, Y row 3
    path, pixels = rgb_png
    luma = pixels @ np.array([0.299, 0.587, 0.114])
    result = cli("explain", str(path), "--at", "5,5", "--kernel", "box3", "--gray", "--json")
    assert json.loads(result.stdout)["sum"] == pytest.approx(ndi.correlate(luma, np.full((3, 3), 1 / 9))[5, 5], abs=1e-3)


def test_cli_rich_output_for_an_image(cli, rgb_png) -> None:
    path, _ = rgb_png
    result = cli("explain", str(path), "--at", "0,0", "--kernel", "box3")
    assert result.exit_code == 0
    assert "centred on x=0, y=0 (channel 0), border mode reflect" in result.stdout
    assert "products" in result.stdout and "sum = " in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--region", "1 2; 3 4", "--kernel", "box3"], "The region is 2x2 but the kernel is 3x3"),
        (["--kernel", "box3"], "give either IMAGE --at X,Y or --region MATRIX"),
        (["IMG", "--at", "1,1", "--region", "1", "--kernel", "box3"], "give either IMAGE --at X,Y or --region MATRIX"),
        (["--at", "1,1", "--kernel", "box3"], "--at X,Y needs an IMAGE"),
        (["IMG", "--region", "1", "--kernel", "identity"], "IMAGE (IMG) is only used with --at X,Y"),
        (["IMG", "--at", "13,2", "--kernel", "box3"], "--at 13,2 is outside the image (width 13, height 9)"),
        (["IMG", "--at", "-1,2", "--kernel", "box3"], "--at -1,2 is outside the image"),
        (["IMG", "--at", "1;2", "--kernel", "box3"], "Invalid value for `--at`: expected X,Y (column, row)"),
        (["IMG", "--at", "1,1", "--kernel", "box3", "--channel", "3"], "--channel 3 is out of range"),
        (["IMG", "--at", "1,1", "--kernel", "box3", "--mode", "bogus"], "Unknown value for `mode`. Allowed values are: reflect, constant, nearest, mirror, wrap. Received: mode=bogus"),
        (["--region", "1 2 3; 4 5", "--kernel", "box3"], "rows have different lengths"),
        (["--region", "1 a 3", "--kernel", "box3"], "'a' is not a number"),
        (["--region", LECTURE_REGION, "--kernel", "sobel"], "'sobel' is a gradient pair"),
        (["--region", LECTURE_REGION, "--kernel", "bx3"], "Unknown kernel 'bx3'. Did you mean: box3"),
        (["missing.png", "--at", "1,1", "--kernel", "box3"], "missing.png"),
    ],
)
def test_cli_errors(cli, rgb_png, args: list[str], message: str) -> None:
    path, _ = rgb_png
    args = [str(path) if a == "IMG" else a for a in args]
    message = message.replace("IMAGE (IMG)", f"IMAGE ({path})")
    result = cli("explain", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("mode", ["reflect", "constant", "wrap"])
def test_explain_agrees_with_convcli_filter(cli, rgb_png, tmp_path: Path, mode: str) -> None:
    """The explained sum is what `convcli filter` computes at that pixel (float32 aside)."""
    path, _ = rgb_png
    out = tmp_path / f"filtered-{mode}.npy"
    result = cli("filter", str(path), "--kernel", "sharpen", "--mode", mode, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    filtered = np.load(out).reshape(9, 13, -1)
    for x, y in ((0, 0), (12, 8), (7, 3)):
        document = json.loads(cli("explain", str(path), "--at", f"{x},{y}", "--kernel", "sharpen",
                                  "--mode", mode, "--channel", "2", "--json").stdout)
        assert document["sum"] == pytest.approx(float(filtered[y, x, 2]), abs=1e-3)
