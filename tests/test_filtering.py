"""Tests of the filtering engine against scipy.ndimage, hand computations and a loop oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from convcli.errors import InputError, KernelError, ShapeError
from convcli.filtering import MODES, correlate, filter_chain, gradient_magnitude, plan

EPS32 = float(np.finfo(np.float32).eps)
METHODS = ["auto", "separable", "fft", "direct"]

# The lecture's 3x3 receptive field (its "132" hand example) and kernels written out by hand.
REGION = np.array([[93, 139, 101], [26, 252, 196], [135, 230, 18]], dtype=np.float32)
BOX3 = np.full((3, 3), 1 / 9)
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=float)
SOBEL_Y = SOBEL_X.T.copy()
LAPLACIAN4 = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=float)


def scipy_reference(
    x: np.ndarray, weights: np.ndarray, mode: str, cval: float
) -> np.ndarray:
    """Per-channel scipy.ndimage.correlate in float64 (the contract's definition)."""
    x64 = np.asarray(x, dtype=np.float64)
    if x64.ndim == 2:
        return ndimage.correlate(x64, weights, mode=mode, cval=cval)
    return np.stack(
        [
            ndimage.correlate(x64[..., c], weights, mode=mode, cval=cval)
            for c in range(x64.shape[2])
        ],
        axis=-1,
    )


def assert_float32_close(
    got: np.ndarray, want: np.ndarray, weights: np.ndarray, magnitude: float
) -> None:
    """Equal up to float32 rounding of the sum: a few eps times sum|w| times max|input|."""
    assert got.dtype == np.float32
    assert got.shape == want.shape
    tolerance = 4 * EPS32 * float(np.abs(weights).sum()) * max(magnitude, 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance)


# ----------------------------------------------------------------- naive loop oracle


def extend_index(i: int, n: int, mode: str) -> int | None:
    """Where position i (maybe outside 0..n-1) reads from, per scipy.ndimage's docs."""
    if 0 <= i < n:
        return i
    if mode == "constant":
        return None
    if mode == "nearest":
        return min(max(i, 0), n - 1)
    if mode == "wrap":
        return i % n
    if mode == "reflect":  # d c b a | a b c d | d c b a
        m = i % (2 * n)
        return m if m < n else 2 * n - 1 - m
    if n == 1:  # mirror of a single sample
        return 0
    m = i % (2 * n - 2)  # mirror: d c b | a b c d | c b a
    return m if m < n else 2 * n - 2 - m


def naive_correlate(
    x: np.ndarray,
    weights: np.ndarray,
    mode: str,
    cval: float,
    padding: int,
    stride: int,
) -> np.ndarray:
    """The lecture's sliding window, one output position at a time (2-D image)."""
    h, w = x.shape
    kh, kw = weights.shape
    out_h = (h + 2 * padding - kh) // stride + 1
    out_w = (w + 2 * padding - kw) // stride + 1
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            total = 0.0
            for a in range(kh):
                for b in range(kw):
                    r = extend_index(i * stride - padding + a, h, mode)
                    c = extend_index(j * stride - padding + b, w, mode)
                    value = cval if r is None or c is None else float(x[r, c])
                    total += weights[a, b] * value
            out[i, j] = total
    return out


# ----------------------------------------------------------------- hand computations


def test_lecture_box3_region_gives_132() -> None:
    result = correlate(REGION, BOX3, padding="valid")
    assert result.shape == (1, 1)
    assert result[0, 0] == pytest.approx(1190 / 9, rel=1e-6)  # 132.22...


@pytest.mark.parametrize("method", ["auto", "separable", "direct"])
def test_zero_padding_sobel_by_hand(method: str) -> None:
    # Each value worked out on paper from the 3x3 region padded by one ring of zeros,
    # e.g. top-left: 2*139 + 1*252 = 530; centre: (101-93) + 2*(196-26) + (18-135) = 231.
    want = np.array(
        [[530, 186, -530], [873, 231, -873], [712, -64, -712]], dtype=np.float32
    )
    # Integer kernels split into integer factors, so every path is exact here.
    got = correlate(
        REGION, SOBEL_X, mode="constant", cval=0.0, padding=1, method=method
    )  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, want)
    # The same with padding "same" and constant mode (scipy's definition).
    same = correlate(REGION, SOBEL_X, mode="constant", method=method)  # type: ignore[arg-type]
    np.testing.assert_array_equal(same, want)
    # Stride 2: (3 - 3 + 2*1)/2 + 1 = 2 positions per axis: rows/columns 0 and 2.
    strided = correlate(
        REGION, SOBEL_X, mode="constant", padding=1, stride=2, method=method
    )  # type: ignore[arg-type]
    np.testing.assert_array_equal(strided, want[::2, ::2])


def test_lecture_fractional_size_is_floored() -> None:
    # W=10, F=3, P=0, S=2: (10 - 3 + 0)/2 + 1 = 4.5 -> 4 positions (Keras/PyTorch floor).
    x = np.arange(100, dtype=np.float32).reshape(10, 10)
    got = correlate(x, BOX3, padding="valid", stride=2)
    assert got.shape == (4, 4)
    # Box mean of a linear ramp is the centre value: centres at 1, 3, 5, 7.
    centres = np.arange(1, 9, 2)
    np.testing.assert_allclose(got, 10 * centres[:, None] + centres[None, :], rtol=1e-6)


def test_reflect_modes_by_hand() -> None:
    # 1-pixel-high row [1 2 3] with the horizontal kernel [1 0 0] reads the left neighbour.
    x = np.array([[1, 2, 3]], dtype=np.float32)
    k = np.array([[1.0, 0.0, 0.0]])
    expected_first = {"reflect": 1, "mirror": 2, "nearest": 1, "wrap": 3, "constant": 7}
    for mode, first in expected_first.items():
        got = correlate(x, k, mode=mode, cval=7.0)
        np.testing.assert_array_equal(got, [[first, 1, 2]])


# ----------------------------------------------------------------- against scipy


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, str, float]:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    h = draw(st.integers(1, 24))
    w = draw(st.integers(1, 24))
    channels = draw(st.sampled_from([None, 1, 3]))
    kh = draw(st.integers(1, 9))  # also larger than the image, and even sizes
    kw = draw(st.integers(1, 9))
    kind = draw(st.sampled_from(["random", "rank1", "rank2", "integer", "box"]))
    if kind == "random":
        weights = rng.standard_normal((kh, kw))
    elif kind == "rank1":
        weights = np.outer(rng.standard_normal(kh), rng.standard_normal(kw))
    elif kind == "rank2":
        weights = sum(
            np.outer(rng.standard_normal(kh), rng.standard_normal(kw)) for _ in range(2)
        )
    elif kind == "integer":
        weights = rng.integers(-4, 5, (kh, kw)).astype(float)
    else:
        weights = np.full((kh, kw), 1 / (kh * kw))
    shape = (h, w) if channels is None else (h, w, channels)
    image = (rng.random(shape) * 255).astype(np.float32)
    mode = draw(st.sampled_from(list(MODES)))
    cval = draw(st.sampled_from([0.0, 1.5, -40.0, 255.0]))
    return image, np.asarray(weights), mode, cval


@settings(max_examples=150, deadline=None)
@given(cases(), st.sampled_from(METHODS))
def test_same_equals_scipy_correlate(
    case: tuple[np.ndarray, np.ndarray, str, float], method: str
) -> None:
    image, weights, mode, cval = case
    got = correlate(image, weights, mode=mode, cval=cval, method=method)  # type: ignore[arg-type]
    want = scipy_reference(image, weights, mode, cval)
    assert_float32_close(got, want, weights, max(255.0, abs(cval)))


@settings(max_examples=60, deadline=None)
@given(
    cases(),
    st.sampled_from(METHODS),
    st.one_of(st.just("valid"), st.integers(0, 5)),
    st.integers(1, 3),
)
def test_padding_and_stride_equal_loop_oracle(
    case: tuple[np.ndarray, np.ndarray, str, float],
    method: str,
    padding: str | int,
    stride: int,
) -> None:
    image, weights, mode, cval = case
    image = image[:12, :12, 0] if image.ndim == 3 else image[:12, :12]
    pad = 0 if padding == "valid" else int(padding)
    h, w = image.shape
    kh, kw = weights.shape
    if h + 2 * pad < kh or w + 2 * pad < kw:
        with pytest.raises(ShapeError, match="larger than the image"):
            correlate(
                image, weights, mode=mode, cval=cval, padding=padding, stride=stride
            )  # type: ignore[arg-type]
        return
    got = correlate(
        image,
        weights,
        mode=mode,
        cval=cval,
        padding=padding,
        stride=stride,
        method=method,  # type: ignore[arg-type]
    )
    want = naive_correlate(image, weights, mode, cval, pad, stride)
    assert_float32_close(got, want, weights, max(255.0, abs(cval)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", list(MODES))
def test_far_extension_matches_scipy(method: str, mode: str) -> None:
    # Kernels many times larger than the image read the extension several periods out.
    rng = np.random.default_rng(7)
    for shape in [(1, 1), (1, 5), (2, 3, 3), (4, 1, 2)]:
        image = (rng.random(shape) * 100).astype(np.float32)
        weights = rng.standard_normal((11, 8))
        got = correlate(image, weights, mode=mode, cval=3.0, method=method)  # type: ignore[arg-type]
        assert_float32_close(
            got, scipy_reference(image, weights, mode, 3.0), weights, 100.0
        )


@pytest.mark.parametrize("method", METHODS)
def test_one_by_one_kernel_scales(method: str) -> None:
    image = np.random.default_rng(3).random((5, 7, 3)).astype(np.float32)
    got = correlate(image, np.array([[2.5]]), method=method)  # type: ignore[arg-type]
    np.testing.assert_allclose(got, image * 2.5, rtol=2 * EPS32)


def test_integer_image_is_accepted() -> None:
    image = np.random.default_rng(4).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    got = correlate(image, LAPLACIAN4)
    assert_float32_close(
        got, scipy_reference(image, LAPLACIAN4, "reflect", 0.0), LAPLACIAN4, 255
    )


def test_large_image_all_paths_agree_and_threads_are_bit_identical() -> None:
    # Big enough for many strips and column blocks; odd sizes leave partial ones.
    rng = np.random.default_rng(5)
    image = (rng.random((301, 257, 3)) * 255).astype(np.float32)
    gaussian = np.outer(*(2 * [np.exp(-0.5 * (np.arange(-7, 8) / 3.0) ** 2)]))
    gaussian /= gaussian.sum()
    for weights in (gaussian, LAPLACIAN4, rng.standard_normal((6, 9))):
        want = scipy_reference(image, weights, "mirror", 0.0)
        one = correlate(image, weights, mode="mirror", method="separable", workers=1)
        two = correlate(image, weights, mode="mirror", method="separable", workers=2)
        np.testing.assert_array_equal(one, two)
        assert_float32_close(one, want, weights, 255)
        fft = correlate(image, weights, mode="mirror", method="fft")
        assert_float32_close(fft, want, weights, 255)


# ----------------------------------------------------------------- the plan


def test_plan_uses_fewest_exact_separable_terms() -> None:
    shape = (2160, 3840, 3)
    assert plan(BOX3, shape).method == "separable"
    assert len(plan(BOX3, shape).columns) == 1
    assert len(plan(SOBEL_X, shape).columns) == 1
    assert len(plan(LAPLACIAN4, shape, "separable").columns) == 2
    # A random kernel has full rank: its own rows, which reconstruct it exactly.
    weights = np.random.default_rng(6).standard_normal((5, 5))
    p = plan(weights, shape, "separable")
    assert len(p.columns) == 5
    rebuilt = sum(np.outer(u, v) for u, v in zip(p.columns, p.rows, strict=True))
    np.testing.assert_array_equal(rebuilt, weights)
    # Large kernels of full rank go to the FFT.
    assert (
        plan(np.random.default_rng(6).standard_normal((31, 31)), shape).method == "fft"
    )


# ----------------------------------------------------------------- gradient and chains


def test_gradient_magnitude_is_hypot_of_scipy() -> None:
    image = (np.random.default_rng(8).random((40, 33, 3)) * 255).astype(np.float32)
    got = gradient_magnitude(image, SOBEL_X, SOBEL_Y, mode="nearest")
    want = np.hypot(
        scipy_reference(image, SOBEL_X, "nearest", 0.0),
        scipy_reference(image, SOBEL_Y, "nearest", 0.0),
    )
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * EPS32 * 8 * 255 * 2)


def test_filter_chain_applies_steps_in_turn() -> None:
    image = (np.random.default_rng(9).random((20, 18)) * 255).astype(np.float32)
    got = filter_chain(image, [BOX3, (SOBEL_X, SOBEL_Y)], mode="wrap")
    blurred = scipy_reference(image, BOX3, "wrap", 0.0)
    want = np.hypot(
        scipy_reference(blurred, SOBEL_X, "wrap", 0.0),
        scipy_reference(blurred, SOBEL_Y, "wrap", 0.0),
    )
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
    # Like stacked valid conv layers: 20 -> 18 -> 16 rows.
    assert filter_chain(image, [BOX3, BOX3], mode="reflect", padding="valid").shape == (
        16,
        14,
    )


# ----------------------------------------------------------------- bad input


def test_unknown_mode_lists_allowed_values() -> None:
    with pytest.raises(
        InputError,
        match=r"Unknown value for `mode`\. Allowed values are: reflect, constant, nearest, "
        r"mirror, wrap\. Received: mode='bogus'",
    ):
        correlate(REGION, BOX3, mode="bogus")
    with pytest.raises(InputError, match="mode='bogus'"):
        filter_chain(REGION, [BOX3], mode="bogus")


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.array([1.0, 2.0]), "non-empty 2-D array. Received shape"),
        (np.zeros((0, 3)), "non-empty 2-D array"),
        (np.array([[1.0, np.nan]]), "finite"),
        (np.array([[np.inf]]), "finite"),
    ],
)
def test_bad_weights(weights: np.ndarray, message: str) -> None:
    with pytest.raises(KernelError, match=message):
        correlate(REGION, weights)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stride": 0}, r"`stride`.*Received: stride=0"),
        ({"padding": -1}, r"`padding`.*Received: padding=-1"),
        ({"padding": "full"}, r"`padding`.*same, valid.*Received: padding='full'"),
        ({"method": "magic"}, r"`method`.*Received: method='magic'"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        correlate(REGION, BOX3, **options)  # type: ignore[arg-type]


def test_bad_images_and_sizes() -> None:
    with pytest.raises(InputError, match=r"Received shape \(2, 2, 2, 2\)"):
        correlate(np.zeros((2, 2, 2, 2)), BOX3)
    with pytest.raises(
        ShapeError, match=r"kernel \(3x3\) is larger than the image \(2x5\)"
    ):
        correlate(np.zeros((2, 5)), BOX3, padding="valid")
    with pytest.raises(KernelError, match="empty"):
        filter_chain(REGION, [])


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_fused_gradient_magnitude_is_bit_identical_to_two_correlations(
    mode: str,
) -> None:
    image = (np.random.default_rng(10).random((150, 97, 3)) * 255).astype(np.float32)
    fused = gradient_magnitude(image, SOBEL_X, SOBEL_Y, mode=mode, cval=9.0)
    gx = correlate(image, SOBEL_X, mode=mode, cval=9.0)
    gy = correlate(image, SOBEL_Y, mode=mode, cval=9.0)
    np.testing.assert_array_equal(fused, np.sqrt(gx * gx + gy * gy))
    want = np.hypot(
        scipy_reference(image, SOBEL_X, mode, 9.0),
        scipy_reference(image, SOBEL_Y, mode, 9.0),
    )
    np.testing.assert_allclose(fused, want, rtol=0, atol=4 * EPS32 * 8 * 255 * 2)
    strided = gradient_magnitude(image, SOBEL_X, SOBEL_Y, mode=mode, cval=9.0, stride=2)
    np.testing.assert_allclose(strided, want[::2, ::2], rtol=0, atol=4 * EPS32 * 8 * 255 * 2)


@pytest.mark.parametrize(
    "weights",
    [SOBEL_X, SOBEL_Y, LAPLACIAN4, np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256],
    ids=["sobel-x", "sobel-y", "laplacian4", "binomial5"],
)
def test_dyadic_kernels_on_integer_images_are_exact(weights: np.ndarray) -> None:
    # Every product and partial sum is exact in float32 here, so splitting the kernel
    # must not cost a single bit: the factors are taken exactly (no SVD square roots).
    image = np.random.default_rng(11).integers(0, 256, (70, 90, 3)).astype(np.float32)
    want = scipy_reference(image, weights, "reflect", 0.0).astype(np.float32)
    np.testing.assert_array_equal(correlate(image, weights), want)


@pytest.mark.parametrize("method", METHODS)
def test_nan_in_image_stays_where_scipy_puts_it(method: str) -> None:
    # scipy.ndimage skips zero weights, so a NaN reaches only the outputs whose window
    # gives it a non-zero weight; FFT and banded products must not spread it further.
    image = np.ones((40, 37, 2), dtype=np.float32)
    image[20, 18, 1] = np.nan
    rng = np.random.default_rng(12)
    sparse = rng.standard_normal((9, 9)) * (rng.random((9, 9)) > 0.3)  # banded products
    for weights in (sparse, SOBEL_X):
        got = correlate(image, weights, method=method)  # type: ignore[arg-type]
        want = scipy_reference(image, weights, "reflect", 0.0)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(weights).sum())


@pytest.mark.parametrize("taps", [25, 45])
@pytest.mark.parametrize("mode", list(MODES))
def test_long_horizontal_filters_on_colour_images(mode: str, taps: int) -> None:
    # Random rows of 25 and 45 taps take too many shifted adds: banded products, batched
    # (25) or, beyond the batched product size on 3 channels, block by block (45).
    rng = np.random.default_rng(13)
    image = (rng.random((40, 50, 3)) * 255).astype(np.float32)
    weights = rng.standard_normal((3, taps))
    got = correlate(image, weights, mode=mode, cval=-2.0, method="separable")
    assert_float32_close(got, scipy_reference(image, weights, mode, -2.0), weights, 255)
