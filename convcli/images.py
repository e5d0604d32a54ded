"""Every image read and write of convcli, and every dtype rule, in one place.

Pillow and numpy do the work. Pillow is imported inside the functions, never at module
import, so commands that do not touch images start fast.

Rules (the contract's § filter):

- Pixels are read as float32 ``(H, W, C)`` on the image's own integer scale: 0..255 for
  8-bit images, 0..65535 for 16-bit ones, raw values for ``.npy`` and float images.
- Alpha is kept apart and passes through unchanged; it is dropped only when the result no
  longer has the input's size (``--padding valid``, ``--stride``), since then no pixel of
  the result corresponds to one of the input.
- Integer outputs are rounded to nearest, then clipped to the depth's range; ``--abs``
  takes the absolute value first, ``--rescale`` maps the result's min..max onto the range.
- ``.npy`` outputs hold the raw float32 result: no rounding, no clipping.
- Files are read and written through :mod:`convcli.fileio` (atomic replace, devices
  written in place, normal modes). An error never leaves a partial file nor touches an
  existing one.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from convcli.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

#: Pillow's own decompression-bomb limit: it refuses images over twice
#: ``PIL.Image.MAX_IMAGE_PIXELS`` (2 * 89,478,485). A literal so that importing this
#: module does not import Pillow.
DEFAULT_MAX_PIXELS = 178_956_970

#: ITU-R 601-2 luma weights, the ones Pillow's ``convert("L")`` uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

#: Pillow modes read as they are, with their bit depth and whether the last band is alpha.
_NATIVE_MODES: dict[str, tuple[int | None, bool]] = {
    "L": (8, False),
    "LA": (8, True),
    "RGB": (8, False),
    "RGBA": (8, True),
    "CMYK": (8, False),
    "I;16": (16, False),
    "I;16L": (16, False),
    "I;16B": (16, False),
    "I;16N": (16, False),
    "F": (None, False),
}

_NPY_MAGIC = b"\x93NUMPY"


@dataclass
class LoadedImage:
    """An image as convcli filters it.

    Attributes:
        data: float32 ``(H, W, C)`` colour (or gray) channels on the image's own scale.
        alpha: the alpha channel ``(H, W)`` in its stored dtype, or None.
        mode: the Pillow mode the result is written in ("L", "RGB", "RGBA", "I;16", ...);
            "npy" for ``.npy`` input.
        bit_depth: 8, 16, or None for float images and ``.npy``.
        source: the path or "-" it came from (for messages).
        format: Pillow's format name of the source ("PNG", "JPEG", ...) or "NPY".
        squeeze: the source was a 2-D ``.npy`` array (written back as 2-D).
        info: metadata carried to the output (the ICC profile).
    """

    data: np.ndarray
    alpha: np.ndarray | None
    mode: str
    bit_depth: int | None
    source: str = "-"
    format: str | None = None
    squeeze: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.data.shape[0]), int(self.data.shape[1])


def _label(source: str | Path) -> str:
    return "stdin" if str(source) == "-" else f"'{source}'"


def _read_bytes(source: str | Path) -> bytes:
    """All bytes of a file or of stdin, with the errors a user can act on."""
    from convcli import fileio

    return fileio.read_bytes(source, what="input")


def _load_npy(raw: bytes | Path, source: str | Path) -> LoadedImage:
    """A ``.npy`` input from its bytes, or straight from its file (no bytes copy)."""
    from convcli import fileio

    array = fileio.load_npy(raw, label=f"input {_label(source)}")
    if array.ndim not in (2, 3):
        raise InputError(
            f".npy input {_label(source)} must be an (H, W) or (H, W, C) array. Received shape {array.shape}"
        )
    if array.dtype.kind not in "biuf":
        raise InputError(
            f".npy input {_label(source)} must hold numbers. Received dtype {array.dtype}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0 or (array.ndim == 3 and array.shape[2] == 0):
        raise InputError(f".npy input {_label(source)} is empty: shape {array.shape}")
    squeeze = array.ndim == 2
    data = np.ascontiguousarray(array, dtype=np.float32)
    if squeeze:
        data = data[:, :, None]
    return LoadedImage(data, None, "npy", None, str(source), "NPY", squeeze)


def _is_npy_file(source: str | Path) -> bool:
    """A regular file (not stdin, nor a pipe that a peek would consume) that starts with
    numpy's magic string."""
    import stat

    if str(source) == "-":
        return False
    try:
        if not stat.S_ISREG(os.stat(source).st_mode):
            return False
        with open(source, "rb") as handle:
            return handle.read(len(_NPY_MAGIC)) == _NPY_MAGIC
    except OSError:
        return False  # the reader below says what is wrong


def _open_pil(raw: bytes, source: str | Path, max_pixels: int | None) -> PILImage.Image:
    from PIL import Image

    # convcli checks the pixel count itself (below) against --max-pixels; Pillow's global
    # check would warn, then refuse at a limit the user cannot change from the command line.
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(io.BytesIO(raw))
    except Exception:  # UnidentifiedImageError, or a plugin choking on a bad header
        raise InputError(
            f"{_label(source)} is not an image Pillow can read (expected PNG, JPEG, TIFF, "
            "BMP, WebP, ... or .npy)"
        ) from None
    width, height = image.size
    if max_pixels and width * height > max_pixels:
        raise InputError(
            f"{_label(source)} has {width}x{height} = {width * height:,} pixels, over the "
            f"limit of {max_pixels:,} that guards against decompression bombs; if you trust "
            f"the file, raise the limit with --max-pixels {width * height} (0 means no limit)"
        )
    try:
        image.load()
    except Exception as exc:  # truncated data, bad CRC, broken zlib stream, ...
        raise InputError(
            f"{_label(source)} is truncated or corrupt: Pillow could not decode it ({exc})"
        ) from None
    return image


def _normalise_mode(image: PILImage.Image) -> tuple[PILImage.Image, str, int | None, bool]:
    """Bring rare modes to one convcli filters; returns (image, mode, depth, has_alpha)."""
    mode = image.mode
    if mode in _NATIVE_MODES:
        depth, has_alpha = _NATIVE_MODES[mode]
        return image, ("I;16" if mode.startswith("I;16") else mode), depth, has_alpha
    if mode == "I" and image.format == "PNG":
        # 16-bit grayscale PNG as older Pillow versions open it
        return image, "I;16", 16, False
    if mode == "I":
        return image.convert("F"), "F", None, False
    if mode == "1":
        return image.convert("L"), "L", 8, False
    if mode in ("P", "PA"):
        # A palette cannot hold filtered values: expand it.
        with_alpha = mode == "PA" or "transparency" in image.info
        target = "RGBA" if with_alpha else "RGB"
        return image.convert(target), target, 8, with_alpha
    if mode in ("La", "LA"):
        return image.convert("LA"), "LA", 8, True
    if mode in ("RGBa", "RGBX"):
        target = "RGBA" if mode == "RGBa" else "RGB"
        return image.convert(target), target, 8, target == "RGBA"
    return image.convert("RGB"), "RGB", 8, False  # YCbCr, LAB, HSV, ...


def _luma(data: np.ndarray, mode: str, source: str | Path) -> np.ndarray:
    channels = data.shape[2]
    if channels == 1:
        return data
    if channels == 3:
        weights = np.asarray(LUMA_WEIGHTS, dtype=np.float32)
        return (data @ weights)[:, :, None]
    raise InputError(
        f"--gray needs a gray or RGB image; {_label(source)} has {channels} channels (mode {mode})"
    )


def read_image(
    source: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, gray: bool = False
) -> LoadedImage:
    """Read an image file, ``.npy`` array or stdin (``"-"``) for filtering.

    Args:
        source: a path, or "-" for stdin. ``.npy`` data is recognised by its content.
        max_pixels: refuse images with more pixels than this (decompression bombs);
            None or 0 means no limit.
        gray: convert colour to one luma channel, 0.299 R + 0.587 G + 0.114 B, in float
            (no rounding); alpha is kept.

    Returns:
        The pixels as float32 (H, W, C), alpha apart, and the mode and depth to write back.

    Raises:
        InputError: missing, empty, truncated or unreadable file; not an image; too many
            pixels (the message says how to raise the limit with ``--max-pixels``).
    """
    from convcli import fileio

    if _is_npy_file(source):
        # read into the array itself: a 100 MB array needs 100 MB, not 200 more for bytes
        loaded = _load_npy(Path(source), source)
    elif (raw := _read_bytes(source)).startswith(_NPY_MAGIC) or str(source).lower().endswith(
        ".npy"
    ):
        loaded = _load_npy(raw, source)  # refuses an .npz or anything else named .npy
    else:
        if fileio.sniff(raw) == "npz":
            raise InputError(f"{_label(source)} is a .npz archive of several arrays; give one .npy array or an image")
        image = _open_pil(raw, source, max_pixels)
        fmt = image.format
        info = {k: image.info[k] for k in ("icc_profile",) if image.info.get(k)}
        if image.mode == "CMYK" and gray:
            image = image.convert("RGB")
        image, mode, depth, has_alpha = _normalise_mode(image)
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        alpha = None
        if has_alpha:
            alpha = np.ascontiguousarray(array[:, :, -1])
            array = array[:, :, :-1]
        data = array.astype(np.float32)
        loaded = LoadedImage(data, alpha, mode, depth, str(source), fmt, False, info)
    if gray and loaded.data.shape[2] != 1:
        loaded.data = np.ascontiguousarray(_luma(loaded.data, loaded.mode, source))
        if loaded.mode != "npy":
            loaded.mode = "LA" if loaded.alpha is not None else "L"
            loaded.info = {}  # a colour ICC profile does not fit a gray image
    return loaded


def to_unit_float(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image as float32 (H, W, C) in [0, 1] (8-bit / 255, 16-bit / 65535).

    Alpha is not included; ``.npy`` and float images are returned as they are.

    Raises:
        InputError: as :func:`read_image`.
    """
    loaded = read_image(path, max_pixels=max_pixels)
    if loaded.bit_depth is None:
        return loaded.data
    return loaded.data / np.float32(2**loaded.bit_depth - 1)


# ----------------------------------------------------------------------------- bands


@dataclass
class ImageRows:
    """An image opened to be filtered band by band: rows are converted when asked.

    Only the file's own pixels stay in memory (a decoded Pillow image, or nothing at all
    for a ``.npy`` file, whose rows are read from disk as needed), never a float32 copy
    of the whole image.

    Attributes:
        height, width: the image's size.
        like: the image's mode, depth, alpha and metadata as :func:`read_image` gives
            them, with ``data`` an empty (0, W, C) array and ``alpha``, when the image
            has one, an empty (0, W) array (:meth:`alpha` reads its rows).
    """

    height: int
    width: int
    like: LoadedImage
    _read: Any  # (r0, r1) -> stored rows (n, W, C) in the file's dtype, alpha included
    _colours: int  # stored bands that are colour (the rest is alpha)
    _gray: bool
    _decoder: _PngDecoder | None = None

    def close(self) -> None:
        """Stop a decoding still under way (after an error, or Ctrl-C)."""
        if self._decoder is not None:
            self._decoder.stop()

    def alpha(self, r0: int, r1: int) -> np.ndarray | None:
        """Rows r0..r1 of the alpha channel (n, W) as stored, or None."""
        if self.like.alpha is None:
            return None
        return np.ascontiguousarray(self._read(r0, r1)[:, :, -1])

    def read(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 as float32 (n, W, C), as :func:`read_image` converts them."""
        stored = self._read(r0, r1)
        data = np.asarray(stored[:, :, : self._colours], dtype=np.float32)
        if self._gray and data.shape[2] != 1:
            data = _luma(data, self.like.mode, self.like.source)
        return data


#: PNG colour type -> Pillow mode, for the 8-bit, non-interlaced PNGs decoded in bands.
_PNG_MODES = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}


class _PngDecoder:
    """A PNG decoded on a thread of its own while the rows already decoded are used.

    Pillow's own decoder does the work (inflate, row filters, unpacking: its C code
    releases the GIL), fed the file's IDAT data piece by piece as ``ImageFile.load``
    feeds it. How many rows are complete is counted by inflating the same pieces again
    with zlib (output discarded): Pillow completes every row whose bytes it has
    inflated, so the count, less one row for safety, is never ahead of the image.
    Bands can then be filtered and encoded on the other core while the rest of the file
    is still being decoded.
    """

    def __init__(
        self, image: PILImage.Image, idat: list[memoryview], row_bytes: int, label: str
    ) -> None:
        import threading

        from PIL import Image

        self.image = image
        self.height = image.size[1]
        self.label = label
        self.ready = 0
        self.error: BaseException | None = None
        self.stopped = False
        self.changed = threading.Condition()
        decoder = Image._getdecoder(image.mode, "zip", (image.mode,))
        decoder.setimage(image.im, (0, 0, *image.size))
        self.thread = threading.Thread(
            target=self._run, args=(decoder, idat, row_bytes), daemon=True
        )
        self.thread.start()

    def _run(self, decoder: Any, idat: list[memoryview], row_bytes: int) -> None:
        import zlib

        counter = zlib.decompressobj()
        inflated = 0
        try:
            pending = b""
            for piece in idat:
                for start in range(0, len(piece), 1 << 16):
                    if self.stopped:
                        return
                    data = pending + bytes(piece[start : start + (1 << 16)])
                    consumed, status = decoder.decode(data)
                    if consumed < 0:  # the last row is done, or the data is broken
                        if status < 0:
                            raise ValueError(f"broken image data (Pillow's code {status})")
                        self._publish(self.height)
                        return
                    # the bytes Pillow took are inflated once more, to count the rows
                    inflated += len(counter.decompress(data[:consumed]))
                    pending = data[consumed:]
                    self._publish(min(self.height, max(0, inflated // row_bytes - 1)))
            raise EOFError("the image data ends before the last row")
        except BaseException as exc:  # reported to the threads waiting for rows
            with self.changed:
                self.error = exc
                self.changed.notify_all()
        finally:
            decoder.cleanup()

    def _publish(self, rows: int) -> None:
        with self.changed:
            self.ready = max(self.ready, rows)
            self.changed.notify_all()

    def wait(self, rows: int) -> None:
        """Block until the first ``rows`` rows are decoded."""
        with self.changed:
            while self.ready < rows and self.error is None:
                self.changed.wait()
            if self.ready < rows:
                raise InputError(
                    f"{self.label} is truncated or corrupt: its image data could not be "
                    f"decoded ({self.error})"
                )

    def stop(self) -> None:
        """Stop decoding (the result is no longer wanted)."""
        self.stopped = True


def _png_in_bands(
    raw: bytes, source: str | Path, max_pixels: int | None
) -> tuple[PILImage.Image, _PngDecoder] | None:
    """A plain 8-bit PNG (gray, RGB, with or without alpha, not interlaced, no colour
    profile) opened to be decoded while it is filtered; None for anything else."""
    import struct

    if not raw.startswith(b"\x89PNG\r\n\x1a\n") or raw[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", raw[16:29])
    if depth != 8 or colour not in _PNG_MODES or interlace != 0 or width == 0 or height == 0:
        return None
    if max_pixels and width * height > max_pixels:
        return None  # the whole-image path says what to do
    idat: list[memoryview] = []
    view = memoryview(raw)
    at = 8
    while at + 8 <= len(raw):
        (length,) = struct.unpack(">I", raw[at : at + 4])
        kind = raw[at + 4 : at + 8]
        if at + 12 + length > len(raw):
            return None
        if kind == b"IDAT":
            idat.append(view[at + 8 : at + 8 + length])
        elif kind in (b"iCCP", b"PLTE", b"acTL"):
            return None  # a profile to carry, a palette, an animation: read whole
        elif kind == b"IEND":
            break
        at += 12 + length
    if not idat:
        return None
    try:
        from PIL import Image

        mode = _PNG_MODES[colour]
        image = Image.new(mode, (width, height))
        row_bytes = 1 + width * len(mode)
        return image, _PngDecoder(image, idat, row_bytes, _label(source))
    except (AttributeError, TypeError, ValueError, OSError):  # another Pillow's internals
        return None


def open_rows(
    source: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, gray: bool = False
) -> ImageRows | None:
    """Open an image file or ``.npy`` file to be read band by band.

    The same rules as :func:`read_image` (the same errors, the same float32 values);
    returns None for stdin, pipes and devices, and for ``.npy`` files that are not plain
    C-ordered arrays, which the caller reads whole.

    Raises:
        InputError: as :func:`read_image`.
    """
    import stat

    try:
        if str(source) == "-" or not stat.S_ISREG(os.stat(source).st_mode):
            return None  # stdin, a pipe: read once, whole, by read_image
    except OSError:
        return None  # read_image says what is wrong
    if _is_npy_file(source):
        return _open_npy_rows(Path(source), gray)
    raw = _read_bytes(source)
    if raw.startswith((_NPY_MAGIC, b"PK")) or str(source).lower().endswith(".npy"):
        return None  # read_image refuses it with the right words
    streamed = _png_in_bands(raw, source, max_pixels)
    if streamed is not None:
        image, decoder = streamed
        return _rows_of(image, image.mode, 8, "A" in image.mode, "PNG", {}, source, gray, decoder)
    image = _open_pil(raw, source, max_pixels)
    del raw
    fmt = image.format
    info = {k: image.info[k] for k in ("icc_profile",) if image.info.get(k)}
    if image.mode == "CMYK" and gray:
        image = image.convert("RGB")
    image, mode, depth, has_alpha = _normalise_mode(image)
    if image.mode not in _NATIVE_MODES and not (image.mode == "I" and mode == "I;16"):
        return None  # rare: read whole
    return _rows_of(image, mode, depth, has_alpha, fmt, info, source, gray, None)


def _rows_of(
    image: PILImage.Image,
    mode: str,
    depth: int | None,
    has_alpha: bool,
    fmt: str | None,
    info: dict[str, Any],
    source: str | Path,
    gray: bool,
    decoder: _PngDecoder | None,
) -> ImageRows:
    """Rows of a Pillow image (still being decoded by ``decoder``, if given)."""
    width, height = image.size
    bands = len(image.getbands())
    colours = bands - 1 if has_alpha else bands
    if gray and colours not in (1, 3):
        if decoder is not None:
            decoder.stop()
        _luma(np.empty((0, 0, colours), np.float32), mode, source)  # raises the message

    def read(r0: int, r1: int) -> np.ndarray:
        if decoder is not None:
            decoder.wait(r1)
        array = np.asarray(image.crop((0, r0, width, r1)))
        return array[:, :, None] if array.ndim == 2 else array

    # a placeholder like ``data``: the alpha rows are read with the colours
    alpha = np.empty((0, width), np.uint8) if has_alpha else None
    empty = np.empty((0, width, colours), np.float32)
    like = LoadedImage(empty, alpha, mode, depth, str(source), fmt, False, info)
    if gray and colours != 1:
        like.data = like.data[:, :, :1]
        like.mode = "LA" if alpha is not None else "L"
        like.info = {}
    return ImageRows(height, width, like, read, colours, gray, decoder)


def _open_npy_rows(path: Path, gray: bool) -> ImageRows | None:
    from convcli import fileio

    opened = fileio.npy_rows(path, label=f"input {_label(path)}")
    if opened is None:
        return None
    shape, _dtype, read_file = opened
    if len(shape) not in (2, 3) or 0 in shape:
        return None
    height, width = shape[0], shape[1]
    channels = shape[2] if len(shape) == 3 else 1

    def read(r0: int, r1: int) -> np.ndarray:
        return read_file(r0, r1).reshape(r1 - r0, width, channels)

    empty = np.empty((0, width, channels), np.float32)
    like = LoadedImage(empty, None, "npy", None, str(path), "NPY", len(shape) == 2)
    if gray and channels not in (1, 3):
        _luma(like.data, "npy", path)
    if gray and channels != 1:
        like.data = like.data[:, :, :1]
    return ImageRows(height, width, like, read, channels, gray)


# ----------------------------------------------------------------------------- writing


def output_format(dest: str | Path, format: str | None = None) -> str:
    """The format to write: "NPY" or a Pillow format name ("PNG", "JPEG", ...).

    ``format`` (a name or an extension, any case: "png", "jpg", "tiff", "npy") wins; else
    the destination's extension; stdout ("-") defaults to PNG.

    Raises:
        InputError: unknown format or extension, or a ``format`` that contradicts the
            destination's extension.
    """
    from_ext = None
    if str(dest) != "-":
        suffix = Path(dest).suffix.lower()
        if suffix:
            from_ext = _format_from_name(suffix, f"the extension of '{dest}'")
        elif format is None:
            raise InputError(
                f"Cannot tell the output format of '{dest}': give it an extension "
                "(.png, .jpg, .tif, .npy, ...) or use --format"
            )
    if format is not None:
        chosen = _format_from_name(format, "--format")
        if from_ext is not None and chosen != from_ext:
            raise InputError(
                f"--format {format} does not match the extension of '{dest}' ({from_ext})"
            )
        return chosen
    return from_ext or "PNG"


#: Formats every Pillow build writes, by extension or name: known without
#: ``Image.registered_extensions()``, which imports all of Pillow's ~40 plugins (about a
#: tenth of a second, more than the rest of a small filter run's start-up).
_CORE_FORMATS = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "tif": "TIFF",
    "tiff": "TIFF",
    "bmp": "BMP",
    "gif": "GIF",
}


def _format_from_name(name: str, what: str) -> str:
    key = name.lower().lstrip(".")
    if key == "npy":
        return "NPY"
    if key in _CORE_FORMATS:
        return _CORE_FORMATS[key]
    from PIL import Image

    extensions = Image.registered_extensions()
    fmt = extensions.get("." + key)
    if fmt is None and key.upper() in Image.SAVE:
        fmt = key.upper()
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(
            f"Unknown output format for {what}. Allowed values are: png, jpg, tif, bmp, "
            f"webp, gif, ppm, npy, ... (any format Pillow writes). Received: {name}"
        )
    return fmt


def extension_for(fmt: str) -> str:
    """The usual file extension of a format name returned by :func:`output_format`."""
    if fmt == "NPY":
        return ".npy"
    common = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}
    if fmt in common:
        return common[fmt]
    from PIL import Image

    for ext, name in Image.registered_extensions().items():
        if name == fmt:
            return ext
    return "." + fmt.lower()


def _integer_pixels(
    data: np.ndarray, bit_depth: int, *, rescale: bool, absolute: bool, scratch: bool = False
) -> np.ndarray:
    """Round to nearest and clip to 0..2**bit_depth-1 (after --abs / --rescale).

    NaN becomes 0, infinity the end of the range. ``scratch``: ``data`` (float32) may be
    overwritten, which saves a copy (a band that is encoded right after).
    """
    top = np.float32(2**bit_depth - 1)
    if scratch and data.dtype == np.float32:
        work = data
        if absolute:
            np.abs(work, out=work)
    else:
        work = np.abs(data, dtype=np.float32) if absolute else np.array(data, np.float32)
    if rescale:
        lo, hi = float(np.nanmin(work)), float(np.nanmax(work))
        if hi > lo:
            np.subtract(work, np.float32(lo), out=work)
            work *= np.float32(float(top) / (hi - lo))
        else:
            work.fill(0.0)
    np.rint(work, out=work)
    # clip is one fast pass, but keeps NaN: min() is NaN exactly when some value is.
    np.clip(work, np.float32(0), top, out=work)
    if np.isnan(work.min()):
        work[np.isnan(work)] = 0.0
    return work.astype(np.uint8 if bit_depth == 8 else np.uint16)


def _npy_values(data: np.ndarray, *, rescale: bool, absolute: bool) -> np.ndarray:
    work = np.array(data, dtype=np.float32, copy=True)
    if absolute:
        np.abs(work, out=work)
    if rescale:
        lo, hi = float(np.nanmin(work)), float(np.nanmax(work))
        if hi > lo:
            work = (work - np.float32(lo)) / np.float32(hi - lo)
        else:
            work.fill(0.0)
    return work


def _output_pixels(
    data: np.ndarray, like: LoadedImage, *, rescale: bool, absolute: bool
) -> tuple[np.ndarray, str, bool]:
    """Pixels (H, W, C) in the output's dtype, their Pillow mode, and whether alpha was dropped."""
    height, width, channels = data.shape
    alpha = like.alpha
    dropped = alpha is not None and alpha.shape != (height, width)
    if dropped:
        alpha = None
    if like.mode == "F" or (like.bit_depth is None and like.mode != "npy"):
        if channels != 1:
            raise InputError(f"cannot write a {channels}-channel float image")
        return _npy_values(data, rescale=rescale, absolute=absolute), "F", dropped

    depth = like.bit_depth or 8
    pixels = _integer_pixels(data, depth, rescale=rescale, absolute=absolute)
    if depth == 16:
        if channels != 1:
            raise InputError("16-bit output is supported for one (gray) channel only")
        return pixels, "I;16", dropped
    if like.mode == "CMYK" and channels == 4:
        return pixels, "CMYK", dropped
    if alpha is not None:
        pixels = np.concatenate([pixels, alpha.astype(np.uint8)[:, :, None]], axis=2)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(pixels.shape[2])
    if mode is None:
        raise InputError(
            f"cannot write {channels} channels as an image (1 to 4 allowed); write .npy instead"
        )
    return pixels, mode, dropped


#: PNG colour types by Pillow mode (PNG specification, table 11.1).
_PNG_COLOUR_TYPES = {"L": 0, "I;16": 0, "RGB": 2, "LA": 4, "RGBA": 6}
#: Below this many bytes, one deflate stream; above, slices compressed in parallel.
_PNG_SLICE_BYTES = 2 << 20


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    import struct
    import zlib

    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(payload, zlib.crc32(kind)))
    )


class _PngBands:
    """PNG encoding by bands of rows, each band's deflate independent of the others.

    Each band is row-filtered and deflated on its own (zlib releases the GIL, so bands
    run on all cores) and ends on a byte boundary (Z_FULL_FLUSH), so the bands
    concatenate into one valid zlib stream, as pigz does; the Adler-32 checksums of the
    bands are combined at the end.

    Every row uses the PNG "Sub" filter (each byte minus the byte one pixel to its left:
    one numpy subtraction, no row depends on another band), and level 1 deflates with
    zlib's run-length strategy (Z_RLE). Measured on 3840x2160 RGB filter results (box3,
    sobel, gaussian31) against Up + default strategy: deflate time the same or less
    (Huffman coding dominates at level 1), files 3-20% smaller, 0.93-1.02x the size of
    OpenCV's level-1 PNG (libpng choosing a filter per row). Paeth would be 15-20%
    smaller still but costs as much CPU as the deflate itself.
    """

    def __init__(self, width: int, height: int, mode: str, depth: int, level: int) -> None:
        self.width, self.height, self.mode, self.depth, self.level = (
            width,
            height,
            mode,
            depth,
            level,
        )
        self.checksum = 1
        self.started = False

    def encode(self, pixels: np.ndarray, last: bool) -> tuple[bytes, int, int, bool]:
        """One band (n, W, C) of uint8/uint16 pixels: (deflated bytes, Adler-32, length,
        ``last``); ``last`` for the image's last band, which ends the deflate stream."""
        import zlib

        if pixels.dtype == np.uint16:
            pixels = pixels.astype(">u2")
        n = pixels.shape[0]
        rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(n, -1)
        bpp = rows.shape[1] // self.width  # bytes per pixel
        filtered = np.empty((n, rows.shape[1] + 1), dtype=np.uint8)
        filtered[:, 0] = 1  # "Sub"
        filtered[:, 1 : bpp + 1] = rows[:, :bpp]
        np.subtract(rows[:, bpp:], rows[:, :-bpp], out=filtered[:, bpp + 1 :])
        data = filtered.data.cast("B")
        strategy = zlib.Z_RLE if self.level == 1 else zlib.Z_DEFAULT_STRATEGY
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, -15, 8, strategy)
        body = compressor.compress(data) + compressor.flush(
            zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH
        )
        return body, zlib.adler32(data), len(data), last

    def start(self, stream: BinaryIO, icc: bytes | None) -> None:
        """Signature, header and colour profile."""
        import struct
        import zlib

        stream.write(b"\x89PNG\r\n\x1a\n")
        header = struct.pack(
            ">IIBBBBB",
            self.width,
            self.height,
            self.depth,
            _PNG_COLOUR_TYPES[self.mode],
            0,
            0,
            0,
        )
        stream.write(_png_chunk(b"IHDR", header))
        if icc:
            stream.write(_png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc)))

    def write(self, stream: BinaryIO, part: tuple[bytes, int, int, bool]) -> None:
        """One encoded band as an IDAT chunk (the zlib header before the first, the
        combined checksum after the last, then the end of the file)."""
        import struct

        body, checksum, length, last = part
        self.checksum = _adler32_combine(self.checksum, checksum, length)
        pieces = [body]
        if not self.started:
            # deflate, 32K window (0x78); FLEVEL/FCHECK as zlib writes them per level
            level = self.level
            pieces.insert(
                0,
                b"\x78"
                + (
                    b"\x01"
                    if level < 2
                    else b"\x5e"
                    if level < 6
                    else b"\x9c"
                    if level == 6
                    else b"\xda"
                ),
            )
            self.started = True
        if last:
            pieces.append(struct.pack(">I", self.checksum))
        stream.write(_png_chunk(b"IDAT", b"".join(pieces)))
        if last:
            stream.write(_png_chunk(b"IEND", b""))


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """Adler-32 of A + B from those of A and B and the length of B (zlib's
    ``adler32_combine``, which Python's zlib module does not expose)."""
    base = 65521
    rem = second_length % base
    low = first & 0xFFFF
    high = (rem * low) % base
    low += (second & 0xFFFF) + base - 1
    high += (first >> 16) + (second >> 16) + base - rem
    return (low % base) | ((high % base) << 16)


def _write_png(
    stream: BinaryIO, pixels: np.ndarray, mode: str, level: int, icc: bytes | None
) -> None:
    """Write a whole 8- or 16-bit image as PNG, its bands deflated on all cores
    (:class:`_PngBands` says how)."""
    height, width, channels = pixels.shape
    encoder = _PngBands(width, height, mode, 16 if pixels.dtype == np.uint16 else 8, level)
    slices = max(1, min(os.cpu_count() or 1, pixels.nbytes // _PNG_SLICE_BYTES))
    bounds = [height * i // slices for i in range(slices + 1)]
    jobs = [(bounds[i], bounds[i + 1]) for i in range(slices) if bounds[i + 1] > bounds[i]]

    def encode(job: tuple[int, int]) -> tuple[bytes, int, int, bool]:
        return encoder.encode(pixels[job[0] : job[1]], job[1] == height)

    if len(jobs) == 1:
        parts = [encode(jobs[0])]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            parts = list(pool.map(encode, jobs))
    encoder.start(stream, icc)
    for part in parts:
        encoder.write(stream, part)


def _from_array(pixels: np.ndarray, mode: str) -> PILImage.Image:
    """A Pillow image of ``mode`` from (H, W, C) pixels (fromarray shares the buffer: fast)."""
    from PIL import Image

    planes = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    if mode != "CMYK":
        image = Image.fromarray(planes)
        if image.mode == mode:
            return image
    height, width = pixels.shape[:2]
    if mode == "I;16":
        pixels = pixels.astype("<u2")  # I;16 is little-endian whatever the machine
    return Image.frombytes(mode, (width, height), pixels.tobytes())


def encode_image(
    data: np.ndarray,
    *,
    like: LoadedImage,
    fmt: str,
    rescale: bool = False,
    absolute: bool = False,
    compress_level: int = 1,
) -> tuple[bytes, bool]:
    """Encode a filter result as file bytes (see :func:`write_image`).

    Returns the bytes and whether the input's alpha was dropped (the size changed).
    """
    buffer = io.BytesIO()
    dropped = _encode_into(
        buffer,
        data,
        like=like,
        fmt=fmt,
        rescale=rescale,
        absolute=absolute,
        compress_level=compress_level,
    )
    return buffer.getvalue(), dropped


def _encode_into(
    stream: BinaryIO,
    data: np.ndarray,
    *,
    like: LoadedImage,
    fmt: str,
    rescale: bool,
    absolute: bool,
    compress_level: int,
) -> bool:
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise InputError(f"expected an (H, W) or (H, W, C) result, got shape {data.shape}")
    if fmt == "NPY":
        values = _npy_values(data, rescale=rescale, absolute=absolute)
        if like.squeeze or (like.mode != "npy" and values.shape[2] == 1):
            values = values[:, :, 0]
        np.save(stream, values, allow_pickle=False)
        return False
    pixels, mode, dropped = _output_pixels(data, like, rescale=rescale, absolute=absolute)
    options: dict[str, Any] = {}
    if fmt == "PNG":
        if not 0 <= compress_level <= 9:
            raise InputError(
                f"Unknown value for compress_level. Allowed values are: 0 to 9. "
                f"Received: compress_level={compress_level}"
            )
        if mode in _PNG_COLOUR_TYPES:
            _write_png(stream, pixels, mode, compress_level, like.info.get("icc_profile"))
            return dropped
        options["compress_level"] = compress_level
    if fmt == "JPEG":
        options["quality"] = 92  # ImageMagick's default; Pillow's 75 visibly blurs edge maps
    if like.info.get("icc_profile") and fmt in ("PNG", "JPEG", "TIFF", "WEBP"):
        options["icc_profile"] = like.info["icc_profile"]
    image = _from_array(pixels, mode)
    try:
        image.save(stream, format=fmt, **options)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        what = {"I;16": "16-bit grayscale", "F": "32-bit float"}.get(image.mode, image.mode)
        holders = {"I;16": "PNG or TIFF", "F": "TIFF", "CMYK": "JPEG or TIFF"}.get(
            image.mode, "PNG or TIFF"
        )
        raise InputError(
            f"cannot write a {what} image as {fmt} ({exc}); choose a format that holds it "
            f"({holders}; .npy for raw values)"
        ) from None
    return dropped


def write_image(
    data: np.ndarray,
    dest: str | Path,
    *,
    like: LoadedImage,
    format: str | None = None,
    rescale: bool = False,
    absolute: bool = False,
    compress_level: int = 1,
) -> bool:
    """Write a filter result as an image file, ``.npy``, or to stdout (``"-"``).

    Integer formats: ``absolute`` first, then ``rescale`` (min..max onto the full range),
    then round to nearest and clip to the input's depth (0..255 or 0..65535); the input's
    mode is kept and its alpha re-attached when the size still matches. ``.npy``: the raw
    float32 values (``absolute`` applied; ``rescale`` maps onto 0..1), alpha not included,
    2-D when the result has one channel. Files are replaced atomically.

    Args:
        data: the float32 result, (H, W) or (H, W, C).
        dest: a path or "-" for stdout.
        like: the input the result came from (mode, depth, alpha).
        format: format name or extension; default from ``dest``'s extension (PNG for stdout).
        compress_level: zlib level for PNG, 0..9 (1 is fast; Pillow's default is 6).

    Returns:
        True when the input's alpha was dropped because the result's size differs from
        the input's (``--padding valid``, ``--padding P``, ``--stride``).

    Raises:
        InputError: unknown format, a mode the format cannot hold, a missing folder.
    """
    fmt = output_format(dest, format)
    if str(dest) == "-":
        payload, dropped = encode_image(
            data,
            like=like,
            fmt=fmt,
            rescale=rescale,
            absolute=absolute,
            compress_level=compress_level,
        )
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()
        return dropped
    from convcli import fileio

    path = Path(dest)
    if path.is_dir():
        raise InputError(f"Output '{path}' is a folder; use --out-dir to write into a folder")

    def encode(stream: BinaryIO) -> bool:
        return _encode_into(
            stream,
            data,
            like=like,
            fmt=fmt,
            rescale=rescale,
            absolute=absolute,
            compress_level=compress_level,
        )

    return fileio.write_file(path, encode, what="output")


def band_format(rows: ImageRows, dest: str | Path, format: str | None) -> str | None:
    """The output format when :func:`write_bands` can write ``rows``' result, else None.

    Bands are written as ``.npy`` (any input) and as PNG (8-bit inputs of PNG's colour
    types); other formats go through :func:`write_image`.
    """
    fmt = output_format(dest, format)
    if fmt == "NPY":
        return fmt
    like = rows.like
    channels = like.data.shape[2] + (like.alpha is not None)
    mode = like.mode if like.mode != "npy" else {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(channels)
    if fmt == "PNG" and mode in ("L", "LA", "RGB", "RGBA") and (like.bit_depth or 8) == 8:
        return fmt
    if fmt == "PNG" and mode == "I;16" and like.bit_depth == 16:
        return fmt
    return None


def write_bands(
    dest: str | Path,
    rows: ImageRows,
    run: Callable[[Callable[[int, int, np.ndarray], object]], Iterator[object]],
    *,
    fmt: str,
    absolute: bool = False,
    compress_level: int = 1,
) -> None:
    """Write a result that ``run`` produces band by band, without holding it whole.

    ``run(finish)`` must call ``finish(r0, r1, result_rows)`` for consecutive bands of
    rows (from any thread) and yield its results in order, as
    :func:`convcli.filtering.filter_bands` does. Each band is converted (``absolute``,
    round, clip, cast: :func:`write_image`'s rules) and, for PNG, row-filtered and
    deflated inside ``finish``, on the thread that made it; this function writes the
    parts in order to a temporary file that replaces ``dest`` at the end. ``fmt`` is
    "PNG" or "NPY", as :func:`band_format` returns it; the result has the input's size.

    Raises:
        InputError: a missing output folder, ``compress_level`` outside 0..9.
    """
    like = rows.like
    height, width = rows.height, rows.width
    channels = like.data.shape[2]
    if fmt == "NPY":
        from numpy.lib import format as npy_format

        flat = like.squeeze or (like.mode != "npy" and channels == 1)
        shape = (height, width) if flat else (height, width, channels)

        def finish_npy(r0: int, r1: int, result: np.ndarray) -> np.ndarray:
            values = np.asarray(result, dtype="<f4")
            if absolute:
                values = np.abs(values, out=values if values is not result else None)
            return values

        def write_npy(stream: BinaryIO) -> None:
            npy_format.write_array_header_1_0(
                stream, {"descr": "<f4", "fortran_order": False, "shape": shape}
            )
            for values in run(finish_npy):
                stream.write(np.ascontiguousarray(values).data.cast("B"))  # type: ignore[arg-type]

        _write_output(dest, write_npy)
        return

    if not 0 <= compress_level <= 9:
        raise InputError(
            f"Unknown value for compress_level. Allowed values are: 0 to 9. "
            f"Received: compress_level={compress_level}"
        )
    has_alpha = like.alpha is not None
    depth = 16 if like.mode == "I;16" else 8
    layers = channels + has_alpha
    mode = "I;16" if depth == 16 else {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[layers]
    encoder = _PngBands(width, height, mode, depth, compress_level)

    def finish_png(r0: int, r1: int, result: np.ndarray) -> tuple[bytes, int, int, bool]:
        pixels = _integer_pixels(result, depth, rescale=False, absolute=absolute, scratch=True)
        alpha = rows.alpha(r0, r1)
        if alpha is not None:
            pixels = np.concatenate([pixels, alpha[:, :, None].astype(np.uint8)], axis=2)
        return encoder.encode(pixels, r1 == height)

    def write_png(stream: BinaryIO) -> None:
        encoder.start(stream, like.info.get("icc_profile"))
        for part in run(finish_png):
            encoder.write(stream, part)  # type: ignore[arg-type]

    _write_output(dest, write_png)


def _write_output(dest: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(stream)`` to stdout ("-") or through :func:`convcli.fileio.write_file`."""
    if str(dest) == "-":
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    from convcli import fileio

    path = Path(dest)
    if path.is_dir():
        raise InputError(f"Output '{path}' is a folder; use --out-dir to write into a folder")
    fileio.write_file(path, write, what="output")
