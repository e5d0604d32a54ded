"""convcli.images: reading, dtype rules, writing, atomic replacement, errors."""

from __future__ import annotations

import io
import os
import stat
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convcli import images
from convcli.errors import InputError
from convcli.images import (
    DEFAULT_MAX_PIXELS,
    encode_image,
    output_format,
    read_image,
    to_unit_float,
    write_image,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def pillow_pixels(path: Path) -> np.ndarray:
    """Reference decode straight from Pillow, as (H, W, C)."""
    with Image.open(path) as image:
        array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


def pillow_mode(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a few hundred bytes: a cheap 'bomb')."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1) * 4))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------ the samples themselves


@pytest.mark.parametrize(
    "name, mode, depth, channels, has_alpha",
    [
        ("astronaut.png", "RGB", 8, 3, False),
        ("camera.png", "L", 8, 1, False),
        ("chelsea-rgba.png", "RGBA", 8, 3, True),
        ("coffee-16bit.png", "I;16", 16, 1, False),
    ],
)
def test_samples_read_as_float32_on_their_own_scale(
    name: str, mode: str, depth: int, channels: int, has_alpha: bool
) -> None:
    loaded = read_image(SAMPLES / name)
    reference = pillow_pixels(SAMPLES / name)
    assert loaded.mode == mode and loaded.bit_depth == depth
    assert loaded.data.dtype == np.float32 and loaded.data.shape[2] == channels
    np.testing.assert_array_equal(loaded.data, reference[:, :, :channels].astype(np.float32))
    if has_alpha:
        np.testing.assert_array_equal(loaded.alpha, reference[:, :, 3])
    else:
        assert loaded.alpha is None


def test_samples_are_real_and_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLES.iterdir() if p.is_file())
    assert total < 5_000_000
    deep = read_image(SAMPLES / "coffee-16bit.png").data
    assert deep.max() > 255 and len(np.unique(deep)) > 256 * 16  # really uses 16 bits
    alpha = read_image(SAMPLES / "chelsea-rgba.png").alpha
    assert alpha is not None and alpha.min() == 0 and alpha.max() == 255


def test_gray_is_float_luma_without_rounding() -> None:
    rgb = pillow_pixels(SAMPLES / "astronaut.png").astype(np.float64)
    expected = rgb[:, :, 0] * 0.299 + rgb[:, :, 1] * 0.587 + rgb[:, :, 2] * 0.114
    loaded = read_image(SAMPLES / "astronaut.png", gray=True)
    assert loaded.mode == "L" and loaded.data.shape[2] == 1
    np.testing.assert_allclose(loaded.data[:, :, 0], expected, rtol=1e-6, atol=1e-4)
    assert not np.all(loaded.data == np.rint(loaded.data))  # not rounded to integers


def test_gray_keeps_alpha() -> None:
    loaded = read_image(SAMPLES / "chelsea-rgba.png", gray=True)
    assert loaded.mode == "LA" and loaded.alpha is not None and loaded.data.shape[2] == 1


def test_palette_images_expand_to_rgb_and_rgba(tmp_path: Path) -> None:
    palette = Image.open(SAMPLES / "astronaut.png").convert("P")
    palette.save(tmp_path / "p.png")
    loaded = read_image(tmp_path / "p.png")
    assert loaded.mode == "RGB"
    np.testing.assert_array_equal(loaded.data, np.asarray(palette.convert("RGB")))
    palette.save(tmp_path / "pt.png", transparency=0)
    assert read_image(tmp_path / "pt.png").mode == "RGBA"


def test_to_unit_float_divides_by_the_depth_range() -> None:
    eight = to_unit_float(SAMPLES / "camera.png")
    np.testing.assert_allclose(eight, pillow_pixels(SAMPLES / "camera.png") / 255.0, rtol=1e-6)
    sixteen = to_unit_float(SAMPLES / "coffee-16bit.png")
    np.testing.assert_allclose(
        sixteen, pillow_pixels(SAMPLES / "coffee-16bit.png") / 65535.0, rtol=1e-6
    )
    assert eight.dtype == sixteen.dtype == np.float32
    assert to_unit_float(SAMPLES / "chelsea-rgba.png").shape[2] == 3  # alpha not included


# ------------------------------------------------------------------------------- .npy in


def test_npy_input_is_raw(tmp_path: Path) -> None:
    values = np.array([[-3.25, 0.0], [1e6, 0.5]], dtype=np.float64)
    np.save(tmp_path / "a.npy", values)
    loaded = read_image(tmp_path / "a.npy")
    assert loaded.mode == "npy" and loaded.bit_depth is None and loaded.squeeze
    np.testing.assert_array_equal(loaded.data[:, :, 0], values.astype(np.float32))


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros(5), r"must be an \(H, W\) or \(H, W, C\) array"),
        (np.zeros((2, 2, 2, 2)), r"must be an \(H, W\) or \(H, W, C\) array"),
        (np.array([["a", "b"]]), "must hold numbers"),
        (np.zeros((0, 3)), "is empty"),
    ],
)
def test_bad_npy_arrays(tmp_path: Path, array: np.ndarray, match: str) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(InputError, match=match):
        read_image(tmp_path / "bad.npy")


def test_npy_with_a_bad_header(tmp_path: Path) -> None:
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="not a readable .npy"):
        read_image(tmp_path / "bad.npy")


# ----------------------------------------------------------------------------- bad files


def test_missing_file() -> None:
    with pytest.raises(InputError, match="nowhere/x.png does not exist"):
        read_image("nowhere/x.png")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"is empty \(0 bytes\)"):
        read_image(tmp_path / "e.png")


def test_text_named_png(tmp_path: Path) -> None:
    (tmp_path / "t.png").write_text("this is not an image\n")
    with pytest.raises(InputError, match="is not an image Pillow can read"):
        read_image(tmp_path / "t.png")


def test_truncated_png(tmp_path: Path) -> None:
    (tmp_path / "cut.png").write_bytes((SAMPLES / "astronaut.png").read_bytes()[:40_000])
    with pytest.raises(InputError, match="is truncated or corrupt"):
        read_image(tmp_path / "cut.png")


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path)


def test_decompression_bomb_names_the_option(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_header_only(20_000, 20_000))
    with pytest.raises(
        InputError, match=r"400,000,000 pixels.*178,956,970.*--max-pixels 400000000"
    ):
        read_image(tmp_path / "bomb.png")
    # Pillow refuses at twice its MAX_IMAGE_PIXELS default, int(1024 * 1024 * 1024 // 4 // 3)
    assert DEFAULT_MAX_PIXELS == 2 * (1024 * 1024 * 1024 // 4 // 3)


def test_max_pixels_can_be_lowered_and_disabled() -> None:
    with pytest.raises(InputError, match="262,144 pixels, over the limit of 1,000"):
        read_image(SAMPLES / "camera.png", max_pixels=1000)
    assert read_image(SAMPLES / "camera.png", max_pixels=None).size == (512, 512)


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeStdin:
        buffer = io.BytesIO((SAMPLES / "camera.png").read_bytes())

    monkeypatch.setattr(sys, "stdin", FakeStdin())
    assert read_image("-").size == (512, 512)

    class EmptyStdin:
        buffer = io.BytesIO(b"")

    monkeypatch.setattr(sys, "stdin", EmptyStdin())
    with pytest.raises(InputError, match="stdin is empty"):
        read_image("-")


# -------------------------------------------------------------------------------- writing


def decode(payload: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(payload))
    image.load()
    return image


def test_round_to_nearest_then_clip_8bit() -> None:
    like = read_image(SAMPLES / "camera.png")
    data = np.array([[-3.4, 0.49, 0.51, 1.6, 254.4, 255.6, 300.0]], dtype=np.float32)
    payload, _ = encode_image(data, like=like, fmt="PNG")
    image = decode(payload)
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), [[0, 0, 1, 2, 254, 255, 255]])


def test_round_to_nearest_then_clip_16bit() -> None:
    like = read_image(SAMPLES / "coffee-16bit.png")
    data = np.array([[-1.0, 256.4, 256.6, 65534.6, 70000.0]], dtype=np.float32)
    image = decode(encode_image(data, like=like, fmt="PNG")[0])
    assert image.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(image), [[0, 256, 257, 65535, 65535]])


def test_abs_then_round() -> None:
    like = read_image(SAMPLES / "camera.png")
    data = np.array([[-3.6, -300.0, 7.2]], dtype=np.float32)
    image = decode(encode_image(data, like=like, fmt="PNG", absolute=True)[0])
    np.testing.assert_array_equal(np.asarray(image), [[4, 255, 7]])


def test_rescale_maps_min_max_onto_the_range() -> None:
    like = read_image(SAMPLES / "coffee-16bit.png")
    data = np.array([[-10.0, -5.0, 0.0, 30.0]], dtype=np.float32)
    image = decode(encode_image(data, like=like, fmt="PNG", rescale=True)[0])
    # (x + 10) / 40 * 65535
    np.testing.assert_array_equal(np.asarray(image), [[0, 8192, 16384, 65535]])


def test_rgba_alpha_reattached_or_dropped_when_the_size_changes() -> None:
    like = read_image(SAMPLES / "chelsea-rgba.png")
    image = decode(encode_image(like.data, like=like, fmt="PNG")[0])
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(image), pillow_pixels(SAMPLES / "chelsea-rgba.png"))
    smaller, dropped = encode_image(like.data[1:-1, 1:-1], like=like, fmt="PNG")
    assert dropped and decode(smaller).mode == "RGB"


def test_npy_output_is_raw_float32() -> None:
    like = read_image(SAMPLES / "camera.png")
    data = np.array([[-3.25, 1000.5], [0.125, 7.0]], dtype=np.float32)
    payload, _ = encode_image(data, like=like, fmt="NPY")
    saved = np.load(io.BytesIO(payload))
    assert saved.dtype == np.float32 and saved.shape == (2, 2)  # gray: 2-D
    np.testing.assert_array_equal(saved, data)
    rgb = read_image(SAMPLES / "astronaut.png")
    assert np.load(io.BytesIO(encode_image(rgb.data, like=rgb, fmt="NPY")[0])).shape == (
        512,
        512,
        3,
    )


def test_write_then_read_is_lossless(tmp_path: Path) -> None:
    for name in ("astronaut.png", "camera.png", "chelsea-rgba.png", "coffee-16bit.png"):
        loaded = read_image(SAMPLES / name)
        write_image(loaded.data, tmp_path / name, like=loaded)
        np.testing.assert_array_equal(pillow_pixels(tmp_path / name), pillow_pixels(SAMPLES / name))
        assert pillow_mode(tmp_path / name) == pillow_mode(SAMPLES / name)


def test_written_file_has_a_normal_mode_and_no_temp_left(tmp_path: Path) -> None:
    loaded = read_image(SAMPLES / "camera.png")
    write_image(loaded.data, tmp_path / "out.png", like=loaded)
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_failed_write_leaves_existing_file_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out.jpg"
    target.write_bytes(b"precious")
    loaded = read_image(SAMPLES / "coffee-16bit.png")
    with pytest.raises(InputError, match="cannot write a 16-bit grayscale image as JPEG"):
        write_image(loaded.data, target, like=loaded)
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jpg"]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_interrupted_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    target = tmp_path / f"out{suffix}"
    target.write_bytes(b"precious")
    loaded = read_image(SAMPLES / "camera.png")

    def broken_writer(*args: object, **kwargs: object) -> None:
        stream = args[1] if isinstance(args[0], Image.Image) else args[0]
        stream.write(b"\x89PNG half")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", broken_writer)  # Pillow's writers (TIFF, ...)
    monkeypatch.setattr(images, "_write_png", broken_writer)  # convcli's own PNG writer
    with pytest.raises(KeyboardInterrupt):
        write_image(loaded.data, target, like=loaded)
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16"])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_png_writer_is_lossless_in_slices(
    monkeypatch: pytest.MonkeyPatch, mode: str, level: int
) -> None:
    rng = np.random.default_rng(1)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "I;16": 1}[mode]
    top = 65535 if mode == "I;16" else 255
    # smooth photo-like content plus noise, 97 rows so the slices are uneven
    base = np.linspace(0, top, 97 * 61 * channels).reshape(97, 61, channels)
    values = np.clip(base + rng.normal(0, top / 20, base.shape), 0, top).round()
    like = images.LoadedImage(
        values[:, :, :1].astype(np.float32), None, mode, 16 if mode == "I;16" else 8
    )
    like.info = {"icc_profile": b"not a real profile, carried as bytes"}
    data = values.astype(np.float32)
    if mode in ("LA", "RGBA"):
        like.alpha = values[:, :, -1].astype(np.uint8)
        data = data[:, :, :-1]
    monkeypatch.setattr(images, "_PNG_SLICE_BYTES", 1000)
    monkeypatch.setattr(images.os, "cpu_count", lambda: 5)
    payload, _ = encode_image(data, like=like, fmt="PNG", compress_level=level)
    image = decode(payload)
    assert image.mode == mode
    assert image.info.get("icc_profile") == like.info["icc_profile"]
    array = np.asarray(image)
    np.testing.assert_array_equal(array.reshape(values.shape), values)


def test_missing_output_folder(tmp_path: Path) -> None:
    loaded = read_image(SAMPLES / "camera.png")
    with pytest.raises(InputError, match="folder .*nope does not exist"):
        write_image(loaded.data, tmp_path / "nope" / "x.png", like=loaded)


def test_png_compress_level_is_used() -> None:
    loaded = read_image(SAMPLES / "astronaut.png")
    stored = encode_image(loaded.data, like=loaded, fmt="PNG", compress_level=0)[0]
    fast = encode_image(loaded.data, like=loaded, fmt="PNG", compress_level=1)[0]
    assert len(stored) > 512 * 512 * 3 > len(fast)
    np.testing.assert_array_equal(np.asarray(decode(stored)), np.asarray(decode(fast)))


@pytest.mark.parametrize(
    "dest, fmt, expected",
    [
        ("out.png", None, "PNG"),
        ("OUT.JPG", None, "JPEG"),
        ("x.tif", None, "TIFF"),
        ("x.npy", None, "NPY"),
        ("-", None, "PNG"),
        ("-", "jpg", "JPEG"),
        ("-", "NPY", "NPY"),
        ("out", "webp", "WEBP"),
        ("out.png", "png", "PNG"),
    ],
)
def test_output_format(dest: str, fmt: str | None, expected: str) -> None:
    assert output_format(dest, fmt) == expected


@pytest.mark.parametrize(
    "dest, fmt, match",
    [
        ("out", None, "Cannot tell the output format of 'out'"),
        ("out.xyz", None, "Unknown output format .* Received: .xyz"),
        ("-", "bogus", "Unknown output format for --format.* Received: bogus"),
        ("out.png", "jpg", "--format jpg does not match the extension of 'out.png'"),
    ],
)
def test_output_format_errors(dest: str, fmt: str | None, match: str) -> None:
    with pytest.raises(InputError, match=match):
        output_format(dest, fmt)


def test_float_tiff_stays_float_and_raw(tmp_path: Path) -> None:
    values = np.array([[-1.5, 0.25], [300.125, 7.0]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    loaded = read_image(tmp_path / "f.tif")
    assert loaded.mode == "F" and loaded.bit_depth is None
    write_image(loaded.data * 2, tmp_path / "g.tif", like=loaded)
    with Image.open(tmp_path / "g.tif") as image:
        assert image.mode == "F"
        np.testing.assert_array_equal(np.asarray(image), values * 2)  # no rounding, no clipping
    with pytest.raises(InputError, match=r"cannot write a 32-bit float image as PNG.*\(TIFF; .npy"):
        write_image(loaded.data, tmp_path / "g.png", like=loaded)


@pytest.mark.parametrize(
    "convert, suffix, mode_in, mode_out",
    [("CMYK", ".jpg", "CMYK", "CMYK"), ("1", ".png", "L", "L"), ("LA", ".png", "LA", "LA")],
)
def test_other_modes(
    tmp_path: Path, convert: str, suffix: str, mode_in: str, mode_out: str
) -> None:
    source = tmp_path / f"in{suffix}"
    with Image.open(SAMPLES / "astronaut.png") as image:
        image.convert(convert).save(source)
    loaded = read_image(source)
    assert loaded.mode == mode_in
    write_image(loaded.data, tmp_path / f"out{suffix}", like=loaded)
    assert pillow_mode(tmp_path / f"out{suffix}") == mode_out
    if suffix == ".png":
        np.testing.assert_array_equal(
            pillow_pixels(tmp_path / f"out{suffix}"),
            pillow_pixels(source)
            if convert != "1"
            else pillow_pixels(source).astype(np.uint8) * 255,
        )
