"""Filtering band by band: the results of the banded paths against independent references.

- ``filtering.filter_bands`` against per-channel ``scipy.ndimage.correlate`` (float64) for
  every border mode it takes, chains and gradient pairs, bands far thinner than usual.
- The band-wise PNG encoder: its stream is decoded by Pillow and, separately, by
  ``zlib.decompress`` (which checks the combined Adler-32) and a naive PNG row unfilter
  written here from the PNG specification.
- ``images.open_rows`` on ``.npy`` files against ``np.load``.
- ``convcli filter`` on images tall enough to be cut into bands, against scipy.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from convcli import filtering, images
from convcli.errors import InputError

BOX3 = np.full((3, 3), 1 / 9)
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
TILTED = np.array([[1, 2, 0], [-1, 3, 1], [0, 0, -2]], dtype=np.float64)
TALL = np.outer(
    np.arange(1.0, 8.0), [1.0, -2.0, 1.0]
)  # 7x3: a halo of 3 rows each side


def scipy_chain(
    image: np.ndarray, steps: list, mode: str, cval: float = 0.0
) -> np.ndarray:
    """Each step in turn with scipy.ndimage.correlate per channel, in float64."""
    result = image.astype(np.float64)
    for step in steps:
        kernels = step if isinstance(step, tuple) else (step,)
        planes = [
            np.stack(
                [
                    ndimage.correlate(result[:, :, c], k, mode=mode, cval=cval)
                    for c in range(result.shape[2])
                ],
                axis=-1,
            )
            for k in kernels
        ]
        result = (
            planes[0] if len(planes) == 1 else np.sqrt(planes[0] ** 2 + planes[1] ** 2)
        )
    return result


def banded(
    image: np.ndarray, steps: list, mode: str, rows: int, cval: float = 0.0
) -> np.ndarray:
    x = image.astype(np.float32)
    parts = filtering.filter_bands(
        lambda r0, r1: x[r0:r1],
        x.shape[0],
        steps,
        lambda r0, r1, result: (r0, r1, result.copy()),
        mode=mode,
        cval=cval,
        workers=2,
        rows=rows,
    )
    out = np.empty(x.shape, np.float32)
    expected_start = 0
    for r0, r1, result in parts:
        assert r0 == expected_start  # in order, no gap
        out[r0:r1] = result
        expected_start = r1
    assert expected_start == x.shape[0]
    return out


@pytest.mark.parametrize("mode", ["reflect", "constant", "nearest", "mirror"])
@pytest.mark.parametrize(
    "steps",
    [
        [BOX3],
        [TILTED],
        [TALL],
        [(SOBEL_X, SOBEL_X.T)],
        [TALL, TILTED.T, (SOBEL_X, SOBEL_X.T)],
    ],
    ids=["box3", "tilted", "tall", "sobel", "chain"],
)
def test_bands_equal_scipy(mode: str, steps: list) -> None:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (53, 19, 3)).astype(np.float64)
    exact = scipy_chain(image, steps, mode, cval=5.0)
    result = banded(image, steps, mode, rows=4, cval=5.0)
    np.testing.assert_allclose(result, exact, rtol=1e-5, atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 12),
    rows=st.integers(1, 17),
    mode=st.sampled_from(["reflect", "constant", "nearest", "mirror"]),
    seed=st.integers(0, 2**16),
)
def test_bands_of_any_size_equal_scipy(
    height: int, width: int, rows: int, mode: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 50, (height, width, 2))
    kernel = rng.normal(0, 1, (int(rng.integers(1, 6)), int(rng.integers(1, 6))))
    exact = scipy_chain(image, [kernel], mode)
    result = banded(image, [kernel], mode, rows=rows)
    np.testing.assert_allclose(result, exact, rtol=1e-4, atol=1e-3)


def test_bands_refuse_wrap() -> None:
    with pytest.raises(InputError, match="wrap"):
        list(
            filtering.filter_bands(
                lambda a, b: np.zeros((b - a, 4, 1), np.float32),
                9,
                [BOX3],
                lambda *a: a,
                mode="wrap",
            )
        )


def test_band_size_ignores_the_number_of_threads() -> None:
    # the split (and hence a file's bytes) is the same whatever the cores
    # at least 64 rows and four halos, band + halo a multiple of 32 rows
    assert filtering.band_rows(2160, [BOX3]) == 96 - 2
    assert filtering.band_rows(2160, [np.ones((31, 31))]) == 160 - 30
    assert filtering.band_rows(2160, [BOX3, (SOBEL_X, SOBEL_X.T)]) == 96 - 4
    assert filtering.band_rows(100, [BOX3]) == 100


# ------------------------------------------------------------------ PNG written by bands


def adler32_naive(data: bytes) -> int:
    """RFC 1950's definition, summed in Python (no zlib)."""
    low, high = 1, 0
    for byte in data:
        low = (low + byte) % 65521
        high = (high + low) % 65521
    return (high << 16) | low


@settings(max_examples=60, deadline=None)
@given(first=st.binary(max_size=300), second=st.binary(max_size=300))
def test_adler32_combine(first: bytes, second: bytes) -> None:
    combined = images._adler32_combine(
        adler32_naive(first), adler32_naive(second), len(second)
    )
    assert combined == adler32_naive(first + second)


def test_adler32_combine_long_blocks() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.bytes(200_000), rng.bytes(150_001)  # beyond 65521: the modulus matters
    assert images._adler32_combine(
        zlib.adler32(a), zlib.adler32(b), len(b)
    ) == zlib.adler32(a + b)


def png_chunks(payload: bytes) -> list[tuple[bytes, bytes]]:
    assert payload[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(payload):
        (length,) = struct.unpack(">I", payload[at : at + 4])
        kind, data = payload[at + 4 : at + 8], payload[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", payload[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + data)
        chunks.append((kind, data))
        at += 12 + length
    return chunks


def unfilter_naive(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """PNG specification section 9: undo each row's filter byte by byte (types 0-4)."""
    out = bytearray()
    previous = bytearray(stride)
    at = 0
    for _ in range(height):
        kind, line = raw[at], bytearray(raw[at + 1 : at + 1 + stride])
        at += 1 + stride
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (
                    line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)
                ) & 255
        out += line
        previous = line
    return np.frombuffer(bytes(out), np.uint8).reshape(height, stride)


@pytest.mark.parametrize(
    "mode, channels", [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4)]
)
@pytest.mark.parametrize("level", [0, 1, 9])
def test_png_bands_decode_to_the_same_pixels(
    tmp_path: Path, mode: str, channels: int, level: int
) -> None:
    rng = np.random.default_rng(11)
    height, width = 45, 13
    base = np.linspace(0, 255, height * width * channels).reshape(
        height, width, channels
    )
    values = (
        np.clip(base + rng.normal(0, 12, base.shape), 0, 255).round().astype(np.uint8)
    )
    source = tmp_path / "in.png"
    Image.fromarray(values[:, :, 0] if channels == 1 else values, mode).save(source)
    rows = images.open_rows(source)
    assert rows is not None
    colours = channels - (mode in ("LA", "RGBA"))

    def run(finish):  # identity "filter", in bands of 4 rows, 2 threads
        return filtering.filter_bands(
            rows.read, rows.height, [np.ones((1, 1))], finish, rows=4, workers=2
        )

    out = tmp_path / "out.png"
    images.write_bands(out, rows, run, fmt="PNG", compress_level=level)
    payload = out.read_bytes()
    chunks = png_chunks(payload)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    assert sum(k == b"IDAT" for k, _ in chunks) > 1  # one per band
    raw = zlib.decompress(
        b"".join(d for k, d in chunks if k == b"IDAT")
    )  # checks Adler-32
    naive = unfilter_naive(raw, height, width * channels, channels)
    np.testing.assert_array_equal(naive.reshape(values.shape), values)
    with Image.open(io.BytesIO(payload)) as decoded:
        assert decoded.mode == mode
        array = np.asarray(decoded)
    np.testing.assert_array_equal(array.reshape(values.shape), values)
    assert colours == rows.like.data.shape[2]


# ------------------------------------------------------------------ .npy read by rows


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", "u1", "<i2", ">u2"])
@pytest.mark.parametrize("shape", [(23, 7), (23, 7, 3)])
def test_npy_rows_equal_np_load(
    tmp_path: Path, dtype: str, shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(5)
    array = (rng.random(shape) * 200).astype(dtype)
    path = tmp_path / "a.npy"
    np.save(path, array)
    rows = images.open_rows(path)
    assert rows is not None and rows.like.squeeze == (len(shape) == 2)
    expected = np.asarray(array, np.float32).reshape(shape[0], shape[1], -1)
    np.testing.assert_array_equal(rows.read(0, 23), expected)
    np.testing.assert_array_equal(rows.read(5, 9), expected[5:9])


def test_npy_rows_leave_odd_files_to_the_whole_reader(tmp_path: Path) -> None:
    fortran = tmp_path / "f.npy"
    np.save(fortran, np.asfortranarray(np.ones((4, 5), np.float32)))
    truncated = tmp_path / "t.npy"
    np.save(truncated, np.ones((40, 50), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:-7])
    assert images.open_rows(fortran) is None
    assert images.open_rows(truncated) is None


# ------------------------------------------------------------------ the command, in bands


def assert_rounded(actual: np.ndarray, exact: np.ndarray) -> None:
    """Rounded to nearest and clipped; 1 off only within float32 rounding of a .5 tie."""
    expected = np.clip(np.rint(exact), 0, 255)
    diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    near_tie = np.abs(np.abs(exact - np.floor(exact)) - 0.5) < 1e-3
    assert diff.max() <= 1 and np.all(diff[~near_tie] == 0)


@pytest.fixture
def whole_reader_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-image reader fails: a command that passes read its input in bands."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("read whole")

    monkeypatch.setattr(images, "read_image", refuse)


@pytest.mark.parametrize(
    "mode, kernel, weights, extra",
    [
        ("RGB", "box3", [BOX3], []),
        ("RGBA", "sobel", [(SOBEL_X, SOBEL_X.T)], ["--mode", "nearest"]),
        ("L", "1 2 0; -1 3 1; 0 0 -2", [TILTED], ["--abs"]),
        ("RGB", "box3", [BOX3, BOX3], ["--mode", "constant", "--cval", "40"]),
    ],
)
def test_filter_command_in_bands_equals_scipy(
    cli,
    tmp_path: Path,
    whole_reader_refused: None,
    mode: str,
    kernel: str,
    weights: list,
    extra: list[str],
) -> None:
    rng = np.random.default_rng(2)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    height, width = 1100, 9  # > 8 bands of 64 rows
    values = rng.integers(0, 256, (height, width, channels)).astype(np.uint8)
    source = tmp_path / "tall.png"
    Image.fromarray(values[:, :, 0] if channels == 1 else values, mode).save(source)
    out = tmp_path / "out.png"
    kernels = ["-k", kernel] * (2 if len(weights) == 2 else 1)
    result = cli("filter", str(source), *kernels, *extra, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    cval = 40.0 if "--cval" in extra else 0.0
    border = extra[extra.index("--mode") + 1] if "--mode" in extra else "reflect"
    colour = values[:, :, :3] if mode == "RGBA" else values
    exact = scipy_chain(colour.astype(np.float64), weights, border, cval)
    if "--abs" in extra:
        exact = np.abs(exact)
    with Image.open(out) as decoded:
        assert decoded.mode == mode
        array = np.asarray(decoded).reshape(height, width, channels)
    assert_rounded(array[:, :, : colour.shape[2]], exact)
    if mode == "RGBA":
        np.testing.assert_array_equal(array[:, :, 3], values[:, :, 3])


@pytest.mark.parametrize("shape", [(1030, 6), (1030, 6, 2)])
def test_filter_command_npy_in_bands(
    cli, tmp_path: Path, whole_reader_refused: None, shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(4)
    array = rng.normal(0, 100, shape).astype(np.float64)
    source = tmp_path / "in.npy"
    np.save(source, array)
    out = tmp_path / "out.npy"
    result = cli(
        "filter", str(source), "-k", "1 2 0; -1 3 1; 0 0 -2", "--abs", "-o", str(out)
    )
    assert result.exit_code == 0, result.stderr
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == shape
    cube = array.astype(np.float32).astype(np.float64).reshape(shape[0], shape[1], -1)
    exact = np.abs(scipy_chain(cube, [TILTED], "reflect")).reshape(shape)
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-2)


def test_gray_in_bands(cli, tmp_path: Path, whole_reader_refused: None) -> None:
    rng = np.random.default_rng(9)
    values = rng.integers(0, 256, (1100, 5, 3)).astype(np.uint8)
    source = tmp_path / "rgb.png"
    Image.fromarray(values, "RGB").save(source)
    out = tmp_path / "out.npy"
    result = cli("filter", str(source), "-k", "box3", "--gray", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    luma = values.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    exact = ndimage.correlate(luma, BOX3, mode="reflect")
    np.testing.assert_allclose(np.load(out), exact, rtol=1e-5, atol=1e-3)


def test_16_bit_png_in_bands(cli, tmp_path: Path, whole_reader_refused: None) -> None:
    rng = np.random.default_rng(12)
    values = rng.integers(0, 65536, (1100, 7)).astype(np.uint16)
    source = tmp_path / "deep.png"
    Image.fromarray(values).save(source)
    out = tmp_path / "out.png"
    result = cli("filter", str(source), "-k", "1 2 0; -1 3 1; 0 0 -2", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    exact = ndimage.correlate(values.astype(np.float64), TILTED, mode="reflect")
    with Image.open(out) as decoded:
        assert decoded.mode == "I;16"
        array = np.asarray(decoded).astype(np.int64)
    expected = np.clip(np.rint(exact), 0, 65535)
    assert np.abs(array - expected).max() <= 1  # float32 sums of values near 2**18
    assert np.mean(array == expected) > 0.99


# ------------------------------------------------------------------ PNG decoded while filtered


def resplit_idat(payload: bytes, size: int) -> bytes:
    """The same PNG with its image data cut into IDAT chunks of ``size`` bytes."""
    chunks = png_chunks(payload)
    data = b"".join(d for k, d in chunks if k == b"IDAT")

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body))
        )

    head = [chunk(k, d) for k, d in chunks if k not in (b"IDAT", b"IEND")]
    pieces = [chunk(b"IDAT", data[i : i + size]) for i in range(0, len(data), size)]
    return b"\x89PNG\r\n\x1a\n" + b"".join(head + pieces) + chunk(b"IEND", b"")


@pytest.fixture
def pillow_open_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's whole-file open fails: a PNG that passes was decoded while filtered."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("opened whole")

    monkeypatch.setattr(images, "_open_pil", refuse)


@pytest.mark.parametrize(
    "mode, channels", [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4)]
)
@pytest.mark.parametrize("idat_size", [7, 5000])
def test_png_decoded_while_filtered_equals_scipy(
    cli,
    tmp_path: Path,
    pillow_open_refused: None,
    mode: str,
    channels: int,
    idat_size: int,
) -> None:
    rng = np.random.default_rng(21)
    height, width = 1100, 11  # many bands; IDAT pieces far smaller and larger than a row
    values = rng.integers(0, 256, (height, width, channels)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(values[:, :, 0] if channels == 1 else values, mode).save(
        buffer, "PNG"
    )
    source = tmp_path / "in.png"
    source.write_bytes(resplit_idat(buffer.getvalue(), idat_size))
    out = tmp_path / "out.png"
    result = cli(
        "filter", str(source), "-k", "1 2 0; -1 3 1; 0 0 -2", "--abs", "-o", str(out)
    )
    assert result.exit_code == 0, result.stderr
    colours = channels - (mode in ("LA", "RGBA"))
    exact = np.abs(
        scipy_chain(values[:, :, :colours].astype(np.float64), [TILTED], "reflect")
    )
    with Image.open(out) as decoded:
        assert decoded.mode == mode
        array = np.asarray(decoded).reshape(height, width, channels)
    assert_rounded(array[:, :, :colours], exact)
    np.testing.assert_array_equal(array[:, :, colours:], values[:, :, colours:])


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_broken_png_decoded_in_bands_fails_cleanly(tmp_path: Path, damage: str) -> None:
    from tests.conftest import run_convcli

    rng = np.random.default_rng(22)
    values = rng.integers(0, 256, (1100, 40, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(values, "RGB").save(buffer, "PNG")
    payload = resplit_idat(buffer.getvalue(), 4000)
    chunks = png_chunks(payload)
    idat = [i for i, (k, _) in enumerate(chunks) if k == b"IDAT"]
    if damage == "truncated":  # the last half of the image data is gone
        keep = payload.index(b"IDAT") + sum(
            len(chunks[i][1]) + 12 for i in idat[: len(idat) // 2]
        )
        broken = payload[:keep]
    else:  # garbage in the middle of the deflate stream, CRCs recomputed
        middle = idat[len(idat) // 2]
        body = bytes(len(chunks[middle][1]))
        fixed = (
            struct.pack(">I", len(body))
            + b"IDAT"
            + body
            + struct.pack(">I", zlib.crc32(b"IDAT" + body))
        )
        parts = [
            struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
            for k, d in chunks
        ]
        parts[middle] = fixed
        broken = b"\x89PNG\r\n\x1a\n" + b"".join(parts)
    source = tmp_path / "broken.png"
    source.write_bytes(broken)
    out = tmp_path / "out.png"
    done = run_convcli("filter", str(source), "-k", "box3", "-o", str(out))
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "truncated or corrupt" in lines[0] and "broken.png" in lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["broken.png"]  # nothing written


def test_inputs_from_pipes_are_read_whole(tmp_path: Path) -> None:
    """A FIFO (as `<(cat x.npy)` gives) is read once, start included, for .npy and PNG."""
    import os
    import threading

    from tests.conftest import run_convcli

    rng = np.random.default_rng(30)
    array = rng.normal(0, 10, (40, 30)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, array)
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 30)).astype(np.uint8)).save(png, "PNG")
    for payload, out in ((buffer.getvalue(), "out.npy"), (png.getvalue(), "out.png")):
        fifo = tmp_path / "in.fifo"
        os.mkfifo(fifo)
        writer = threading.Thread(target=lambda p=payload, f=fifo: f.write_bytes(p))
        writer.start()
        done = run_convcli("filter", str(fifo), "-k", "box3", "-o", str(tmp_path / out))
        writer.join()
        fifo.unlink()
        assert done.returncode == 0, done.stderr.decode()
    expected = ndimage.correlate(array.astype(np.float64), BOX3, mode="reflect")
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-4
    )
