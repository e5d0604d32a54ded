"""`convcli filter`: apply a chain of kernels to images (the command-line layer).

The work is done by :mod:`convcli.kernels` (what a ``--kernel`` means),
:mod:`convcli.filtering` (the engine) and :mod:`convcli.images` (reading and writing).
They, scipy and Pillow are imported inside the command so ``convcli --help`` starts fast.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import typer

from convcli.cli._app import (
    FAILURES,
    app,
    describe_failure,
    err_console,
    examples,
    fail,
    note,
    print_error,
    quiet_option,
)
from convcli.errors import InputError, ShapeError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from convcli.images import LoadedImage

_DEFAULT_MAX_PIXELS = 178_956_970  # = convcli.images.DEFAULT_MAX_PIXELS (Pillow's limit)


def refuses_terminal(stream: TextIO | Any) -> bool:
    """True when binary image data would go to a terminal (the command then refuses)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def parse_padding(text: str) -> int | str:
    """``--padding``: "same", "valid" or a non-negative integer P.

    >>> parse_padding("2"), parse_padding("VALID")
    (2, 'valid')
    """
    value = text.strip().lower()
    if value in ("same", "valid"):
        return value
    if value.isascii() and value.isdigit():  # not "²", which isdigit accepts and int refuses
        return int(value)
    raise InputError(
        "Unknown value for `padding`. Allowed values are: same, valid, or a non-negative "
        f"integer P. Received: padding={text}"
    )


def check_mode(mode: str) -> str:
    """Validate ``--mode`` before any file is read (the engine checks it too)."""
    from convcli.filtering import MODES

    if mode not in MODES:
        raise InputError(
            f"Unknown value for `mode`. Allowed values are: {', '.join(MODES)}. Received: mode={mode}"
        )
    return mode


@dataclass(frozen=True)
class Step:
    """One kernel of the chain as the engine takes it, with its name for messages."""

    name: str
    weights: Any  # np.ndarray, or (weights_x, weights_y) for a gradient magnitude

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the kernel (of each kernel of a gradient pair)."""
        first = self.weights[0] if isinstance(self.weights, tuple) else self.weights
        return int(first.shape[0]), int(first.shape[1])


def output_size(
    size: tuple[int, int],
    steps: list[Step],
    padding: int | str,
    stride: int,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """(height, width) after the chain; ShapeError when the neurons do not fit.

    Each step applies the lecture's (W - F + 2P)/S + 1 on both axes. A fractional size
    is refused, as ``convcli shapes`` refuses it, with the paddings or strides that fit.
    A padding that grows the image beyond ``max_pixels`` (after any step) is refused
    before anything is allocated, as an input that large is.
    """
    from convcli.geometry import conv_output_length, fitting_paddings, fitting_strides

    height, width = size
    for step in steps:
        lengths = []
        for axis, n, f in (("height", height, step.shape[0]), ("width", width, step.shape[1])):
            try:
                lengths.append(conv_output_length(n, f, stride, padding))  # type: ignore[arg-type]
            except ShapeError as exc:
                hint = ""
                if isinstance(padding, int) or padding == "valid":
                    padding_int = 0 if padding == "valid" else int(padding)
                    # strides beyond half the image keep one or two pixels: not worth suggesting
                    strides = [
                        s
                        for s in fitting_strides(n, f, padding_int, limit=6)
                        if s <= max(1, n // 2)
                    ][:3]
                    paddings = fitting_paddings(n, f, stride)
                    fits = []
                    if strides:
                        fits.append("--stride " + " or ".join(map(str, strides)))
                    if paddings:
                        fits.append("--padding " + " or ".join(map(str, paddings)))
                    fits.append("--padding same (ceil(n/S) outputs, as Keras)")
                    hint = "; these fit: " + ", ".join(fits)
                raise ShapeError(
                    f"kernel {step.name} ({step.shape[0]}x{step.shape[1]}) on an image {axis} "
                    f"of {n}: {exc}{hint}"
                ) from None
        height, width = lengths
        if max_pixels and height * width > max_pixels:
            raise ShapeError(
                f"--padding {padding} makes a {height}x{width} result ({height * width:,} pixels), over "
                f"the limit of {max_pixels:,}; raise it with --max-pixels {height * width} if that is meant"
            )
    return height, width


@dataclass(frozen=True)
class Job:
    source: str
    dest: str


def _image_files(folder: Path) -> list[Path]:
    from PIL import Image

    readable = set(Image.registered_extensions()) | {".npy"}
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in readable
    )


def plan_jobs(
    inputs: list[str], output: str | None, out_dir: Path | None, fmt: str | None
) -> list[Job]:
    """Pair each input with its destination; every check that needs no pixels.

    Raises:
        InputError: a missing input or output folder, several inputs without --out-dir,
            two inputs with the same output name, an output over its own input.
    """
    from convcli import fileio
    from convcli.images import extension_for, output_format

    if output is not None and out_dir is not None:
        raise InputError("give either -o OUTPUT or --out-dir DIR, not both")
    sources: list[str] = []
    for item in inputs:
        if item == "-":
            if len(inputs) > 1 or out_dir is not None:
                raise InputError(
                    "stdin (-) can only be filtered alone, with -o OUTPUT or to stdout"
                )
            sources.append(item)
            continue
        if item == "":
            raise InputError("an empty name is not an input file")
        path = Path(item)
        if path.is_dir():
            if out_dir is None:
                raise InputError(f"'{path}' is a folder: give --out-dir DIR for the results")
            found = _image_files(path)
            if not found:
                raise InputError(f"Folder '{path}' holds no image or .npy files")
            sources.extend(str(p) for p in found)
        elif not path.exists():
            raise InputError(f"No such file: '{path}'")
        else:
            sources.append(item)

    if out_dir is None:
        if len(sources) > 1:
            raise InputError(
                f"{len(sources)} inputs: give --out-dir DIR to filter several images "
                "(-o names one output)"
            )
        dest = output if output is not None else "-"
        output_format(dest, fmt)  # fail early on an unknown format or extension
        fileio.check_writable(dest, "-o")
        return [Job(sources[0], dest)]

    fileio.check_output_folder(out_dir, "--out-dir")  # made later if missing, as --save-maps
    suffix = extension_for(output_format("-", fmt)) if fmt is not None else None
    jobs: list[Job] = []
    taken: dict[Path, str] = {}
    for source in sources:
        src = Path(source)
        dest_path = out_dir / (src.stem + suffix if suffix else src.name)
        output_format(dest_path, None)
        key = dest_path.resolve()
        if key == src.resolve():
            raise InputError(
                f"--out-dir '{out_dir}' holds the input '{src}': the result would overwrite it; "
                "choose another folder"
            )
        if key in taken:
            raise InputError(f"'{taken[key]}' and '{source}' would both be written to '{dest_path}'")
        taken[key] = source
        jobs.append(Job(source, str(dest_path)))
    return jobs


@dataclass(frozen=True)
class Options:
    mode: str
    cval: float
    padding: int | str
    stride: int
    gray: bool
    absolute: bool
    rescale: bool
    fmt: str | None
    compress_level: int
    max_pixels: int | None


_ALLOCATOR_TUNED: list[bool] = []


def _keep_freed_memory() -> None:
    """Ask glibc's malloc to reuse freed band buffers rather than return them to the
    system: each band allocates a few megabytes, which by default are mapped afresh
    and page-faulted in every time (measured on a 4K PNG: 0.2 s of system time in a
    1 s run, 0.09 s with these settings; peak memory unchanged). A no-op elsewhere."""
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED.append(True)
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 128 << 20)


def _filter_in_bands(
    job: Job, steps: list[Step], options: Options, workers: int | None
) -> bool:
    """Filter one file band by band when its options allow it; False when they do not.

    Same-size output (padding same, stride 1), no wrap-around, no --rescale (which needs
    the whole result's range), a file (not stdin), written as PNG or .npy: decoding's
    output is converted, filtered, rounded and encoded a band at a time on all cores, and
    no whole float32 copy of the image is ever made.
    """
    from convcli import filtering, images

    if (
        options.padding != "same"
        or options.stride != 1
        or options.mode == "wrap"
        or options.rescale
        or job.source == "-"
    ):
        return False
    try:
        if images.output_format(job.dest, options.fmt) not in ("PNG", "NPY"):
            return False
    except InputError:
        return False  # the whole-image path reports it
    rows = images.open_rows(job.source, max_pixels=options.max_pixels, gray=options.gray)
    if rows is None:
        return False
    fmt = images.band_format(rows, job.dest, options.fmt)
    if fmt is None:
        rows.close()
        return False
    weights = [step.weights for step in steps]
    _keep_freed_memory()

    def run(finish: Any) -> Any:
        return filtering.filter_bands(
            rows.read,
            rows.height,
            weights,
            finish,
            mode=options.mode,
            cval=options.cval,
            workers=workers,
        )

    try:
        images.write_bands(
            job.dest,
            rows,
            run,
            fmt=fmt,
            absolute=options.absolute,
            compress_level=options.compress_level,
        )
    finally:
        rows.close()
    return True


def filter_one(
    job: Job, steps: list[Step], options: Options, workers: int | None = None
) -> bool:
    """Read, filter and write one image. Returns True when its alpha was dropped.

    ``workers``: threads for this image (default: every core).
    """
    from convcli import filtering
    from convcli.images import read_image, write_image

    if _filter_in_bands(job, steps, options, workers):
        return False  # same size: alpha is kept
    image: LoadedImage = read_image(job.source, max_pixels=options.max_pixels, gray=options.gray)
    output_size(image.size, steps, options.padding, options.stride, options.max_pixels)
    result: np.ndarray = filtering.filter_chain(
        image.data,
        [step.weights for step in steps],
        mode=options.mode,
        cval=options.cval,
        padding=options.padding,  # type: ignore[arg-type]
        stride=options.stride,
        workers=workers,
    )
    return write_image(
        result,
        job.dest,
        like=image,
        format=options.fmt,
        rescale=options.rescale,
        absolute=options.absolute,
        compress_level=options.compress_level,
    )


def _resolve_steps(specs: list[str], kernel_paths: list[Path]) -> list[Step]:
    from convcli.kernels import GradientPair, resolve_kernel

    steps = []
    for spec in specs:
        kernel = resolve_kernel(spec, kernel_paths)
        if isinstance(kernel, GradientPair):
            steps.append(Step(kernel.name, (kernel.x.weights, kernel.y.weights)))
        else:
            steps.append(Step(kernel.name, kernel.weights))
    return steps


_ALPHA_NOTE = (
    "the result is smaller than the input (--padding/--stride), so the alpha "
    "channel was dropped"
)


def _run_batch(jobs: list[Job], steps: list[Step], options: Options, workers: int) -> None:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from rich.markup import escape

    failures = 0
    dropped_any = False
    show_progress = refuses_terminal(sys.stderr)
    # numpy, scipy.ndimage and Pillow's codecs release the GIL: threads use every core.
    cores = os.cpu_count() or 1
    # Images side by side share the cores: each gets its part (and at least one).
    per_image = max(1, cores // workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(filter_one, job, steps, options, per_image): job for job in jobs
        }
        progress = None
        if show_progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            progress = Progress(
                TextColumn("filtering"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            progress.start()
            task = progress.add_task("filter", total=len(jobs))
        try:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    dropped_any |= future.result()
                except FAILURES as exc:  # a bad file or a failed write: report it, go on
                    failures += 1
                    print_error(f"{job.source}: {describe_failure(exc)}")
                if progress is not None:
                    progress.advance(task)
        except BaseException:  # Ctrl-C: start no new file (those running finish atomically)
            for future in futures:
                future.cancel()
            raise
        finally:
            if progress is not None:
                progress.stop()
    if dropped_any:
        note(_ALPHA_NOTE)
    if show_progress:
        done = len(jobs) - failures
        err_console.print(
            f"filtered {done} of {len(jobs)} images into {escape(str(Path(jobs[0].dest).parent))}"
        )
    if failures:
        raise typer.Exit(2)


@app.command(
    "filter",
    epilog=examples(
        "convcli filter samples/astronaut.png -k sobel -o edges.png",
        "convcli filter samples/camera.png -k gaussian5 -k sharpen -o out.png",
        'convcli filter samples/camera.png -k "1 0 -1; 2 0 -2; 1 0 -1" --abs -o gx.png',
        "convcli filter samples/*.png -k box3 --out-dir blurred/",
    ),
)
def filter_command(
    inputs: list[str] = typer.Argument(
        ...,
        metavar="INPUT...",
        help="Image files (any format Pillow reads), .npy arrays, folders (with --out-dir), or - for stdin.",
        show_default=False,
    ),
    kernel: list[str] = typer.Option(
        ...,
        "--kernel",
        "-k",
        metavar="K",
        help='Library name (convcli kernels), kernel file, or inline matrix "1 0 -1; 2 0 -2; 1 0 -1" '
        "(fractions like 1/9 allowed). Repeat to apply a chain, in order.",
        show_default=False,
    ),
    output: str | None = typer.Option(
        None,
        "--output",
        "-o",
        metavar="OUTPUT",
        help="Output file (format from its extension; .npy = raw float32), or - for stdout. "
        "Default: stdout.",
        show_default=False,
    ),
    out_dir: Path | None = typer.Option(
        None,
        "--out-dir",
        metavar="DIR",
        help="Folder for the results of several inputs (same file names); made if missing.",
        show_default=False,
    ),
    mode: str = typer.Option(
        "reflect",
        "--mode",
        "-m",
        metavar="[reflect|constant|nearest|mirror|wrap]",
        help="Border mode (scipy.ndimage's names and meanings).",
    ),
    cval: float = typer.Option(0.0, "--cval", help="Value outside the image for --mode constant."),
    padding: str = typer.Option(
        "same",
        "--padding",
        "-p",
        metavar="same|valid|P",
        help="same: output has the input's size; valid: only where the kernel fits; "
        "P: extend by P pixels per side (per --mode), then valid.",
    ),
    stride: int = typer.Option(
        1, "--stride", "-s", metavar="S", help="Keep every S-th output position."
    ),
    gray: bool = typer.Option(
        False, "--gray", help="Convert to one luma channel first (0.299 R + 0.587 G + 0.114 B)."
    ),
    absolute: bool = typer.Option(
        False, "--abs", help="Absolute value before rounding (edges of both signs)."
    ),
    rescale: bool = typer.Option(
        False, "--rescale", help="Map the result's min..max onto the full range."
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        "-f",
        metavar="FMT",
        help="Output format for stdout or --out-dir: png (default), jpg, tif, webp, npy, ...",
        show_default=False,
    ),
    compress_level: int = typer.Option(
        1,
        "--compress-level",
        metavar="0-9",
        help="PNG zlib level (1 is fast; Pillow's default 6 is ~4x slower).",
    ),
    max_pixels: int = typer.Option(
        _DEFAULT_MAX_PIXELS,
        "--max-pixels",
        metavar="N",
        help="Refuse images with more pixels (decompression bombs); 0 = no limit.",
    ),
    kernel_path: list[Path] = typer.Option(
        [],
        "--kernel-path",
        metavar="DIR",
        help="Extra folder of kernel files (repeatable).",
        show_default=False,
    ),
    jobs: int = typer.Option(
        0,
        "--jobs",
        "-j",
        metavar="N",
        help="Images filtered at once with --out-dir (0 = one per core).",
        show_default=False,
    ),
    quiet: bool = quiet_option(),
) -> None:
    """Filter images with a chain of kernels (cross-correlation, as scipy.ndimage.correlate)."""
    check_mode(mode)
    pad = parse_padding(padding)
    if stride < 1:
        fail(
            f"Unknown value for `stride`. Allowed values are: integers >= 1. Received: stride={stride}"
        )
    if not 0 <= compress_level <= 9:
        fail(
            "Unknown value for `compress-level`. Allowed values are: 0 to 9. "
            f"Received: compress-level={compress_level}"
        )
    if max_pixels < 0:
        fail(
            f"Unknown value for `max-pixels`. Allowed values are: 0 (no limit) or more. Received: {max_pixels}"
        )
    if jobs < 0:
        fail(
            f"Unknown value for `jobs`. Allowed values are: 0 (one per core) or more. Received: {jobs}"
        )

    steps = _resolve_steps(kernel, kernel_path)
    planned = plan_jobs(inputs, output, out_dir, fmt)
    if planned[0].dest == "-" and refuses_terminal(sys.stdout):
        fail(
            "refusing to write binary image data to a terminal: give -o OUTPUT "
            "or redirect stdout (convcli filter ... > out.png)"
        )
    options = Options(
        mode=mode,
        cval=cval,
        padding=pad,
        stride=stride,
        gray=gray,
        absolute=absolute,
        rescale=rescale,
        fmt=fmt,
        compress_level=compress_level,
        max_pixels=max_pixels or None,
    )
    if out_dir is None:
        if filter_one(planned[0], steps, options):
            note(_ALPHA_NOTE)
        return
    from convcli import fileio

    # a missing output folder is made (with its parents), as run --save-maps makes its folder
    fileio.make_folder(out_dir, "--out-dir")
    workers = min(jobs or os.cpu_count() or 1, len(planned))
    _run_batch(planned, steps, options, workers)
