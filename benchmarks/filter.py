"""Filtering speed on a 3840x2160 RGB photograph: convcli beside scipy.ndimage, OpenCV, ImageMagick.

Run from the repository root:  python benchmarks/filter.py [--repeat N] [--kernels box3,sobel]

Part 1, compute only (float32 array in memory, border mode reflect):
  convcli's engine (convcli.filtering), plain per-channel scipy.ndimage.correlate into
  float32, and OpenCV cv2.filter2D on the float32 RGB array with BORDER_REFLECT (the same
  border as ndimage's "reflect"). Sobel is the gradient magnitude sqrt(gx² + gy²) in all three.
Part 2, whole process (read PNG, filter, write PNG), best of N:
  `python -m convcli filter big.png --kernel K -o out.png`, ImageMagick's
  `convert big.png -morphology Convolve ... out.png`, and a minimal OpenCV script
  (imread, filter2D, imwrite). Missing tools are skipped with a note.

The kernel weights are built here with numpy (binomial and Gaussian formulas) so the
benchmark does not depend on the kernel library; 15x15 and 31x31 kernels are passed to
convcli as .npy kernel files. OpenCV (opencv-python-headless) and ImageMagick are used
only here, never by convcli.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from math import comb
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WIDTH, HEIGHT = 3840, 2160


def binomial(n: int) -> np.ndarray:
    """Row n of Pascal's triangle, normalised: the binomial approximation of a Gaussian."""
    row = np.array([comb(n - 1, i) for i in range(n)], dtype=np.float64)
    return row / row.sum()


def gaussian(n: int, sigma: float) -> np.ndarray:
    r = np.arange(n) - n // 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    return g / g.sum()


SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def kernels() -> dict[str, tuple[str, np.ndarray | tuple[np.ndarray, np.ndarray]]]:
    """name -> (what convcli's --kernel gets, weights or an (x, y) gradient pair)."""
    return {
        "box3": ("box3", np.full((3, 3), 1 / 9)),
        "sobel": ("sobel", (SOBEL_X, SOBEL_X.T.copy())),
        "gaussian5": ("gaussian5", np.outer(binomial(5), binomial(5))),
        "box15": ("box15.npy", np.full((15, 15), 1 / 225)),
        "gaussian31": (
            "gaussian31.npy",
            np.outer(gaussian(31, 5.0), gaussian(31, 5.0)),
        ),
    }


def best_time(fn: Callable[[], object], repeat: int, slow: float = 3.0) -> float:
    """Best wall time of ``repeat`` runs (a single run when one already takes > ``slow`` s)."""
    best = float("inf")
    for i in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        if i == 0 and best > slow:
            break
    return best


def make_photo(folder: Path) -> Path:
    """The astronaut photograph resized to 3840x2160 with Lanczos, saved as PNG."""
    from PIL import Image

    sample = ROOT / "samples" / "astronaut.png"
    if sample.exists():
        image = Image.open(sample).convert("RGB")
    else:
        from skimage import data  # type: ignore[import-not-found]

        image = Image.fromarray(data.astronaut())
    big = image.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)
    path = folder / "big.png"
    big.save(path, compress_level=1)
    return path


# ----------------------------------------------------------------------------- compute


Weights = np.ndarray | tuple[np.ndarray, np.ndarray]


def engine(photo: np.ndarray, weights: Weights) -> np.ndarray:
    """convcli's filtering engine."""
    from convcli import filtering

    if isinstance(weights, tuple):
        return filtering.gradient_magnitude(photo, *weights, mode="reflect")
    return filtering.correlate(photo, weights, mode="reflect")


def scipy_ndimage(photo: np.ndarray, weights: Weights) -> np.ndarray:
    """Plain scipy.ndimage.correlate, one channel at a time, into float32."""
    from scipy import ndimage

    def per_channel(w: np.ndarray) -> np.ndarray:
        out = np.empty_like(photo)
        for c in range(photo.shape[2]):
            ndimage.correlate(photo[..., c], w, output=out[..., c], mode="reflect")
        return out

    if isinstance(weights, tuple):
        gx, gy = per_channel(weights[0]), per_channel(weights[1])
        return np.sqrt(gx * gx + gy * gy)
    return per_channel(weights)


def opencv(photo: np.ndarray, weights: Weights) -> np.ndarray:
    """cv2.filter2D on the float32 RGB array, BORDER_REFLECT (= ndimage's reflect)."""
    import cv2  # type: ignore[import-not-found]

    def filter2d(w: np.ndarray) -> np.ndarray:
        return cv2.filter2D(
            photo, -1, w.astype(np.float32), borderType=cv2.BORDER_REFLECT
        )

    if isinstance(weights, tuple):
        return cv2.magnitude(filter2d(weights[0]), filter2d(weights[1]))
    return filter2d(weights)


def compute_table(
    photo: np.ndarray, names: list[str], repeat: int
) -> list[tuple[str, float, float, float | None]]:
    try:
        import cv2  # type: ignore[import-not-found]  # noqa: F401

        has_cv = True
    except ImportError:
        has_cv = False
        print(
            "note: OpenCV (cv2) is not installed: its column is skipped",
            file=sys.stderr,
        )

    rows = []
    for name in names:
        weights = kernels()[name][1]
        # Same answer first (the engine is exact; OpenCV agrees to float32 rounding).
        ours, theirs = engine(photo, weights), scipy_ndimage(photo, weights)
        scale = float(np.abs(theirs).max()) or 1.0
        assert np.abs(ours - theirs).max() <= 1e-4 * scale, name
        t_engine = best_time(lambda w=weights: engine(photo, w), repeat)
        t_scipy = best_time(lambda w=weights: scipy_ndimage(photo, w), repeat)
        t_cv = best_time(lambda w=weights: opencv(photo, w), repeat) if has_cv else None
        rows.append((name, t_engine, t_scipy, t_cv))
        print(f"  computed {name}", file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------- processes


def imagemagick() -> list[str] | None:
    """The ImageMagick command (magick or convert), or None when only a stand-in exists."""
    for candidate in (["magick"], ["convert"]):
        exe = shutil.which(candidate[0])
        if exe is None:
            continue
        probe = subprocess.run(
            [exe, "-version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and "Version: ImageMagick" in probe.stdout:
            return [exe]
    return None


def im_kernel(w: np.ndarray) -> str:
    rows, cols = w.shape
    values = " ".join(",".join(repr(float(v)) for v in row) for row in w)
    return f"{cols}x{rows}: {values}"


def imagemagick_command(
    exe: list[str], src: Path, dst: Path, weights: object
) -> list[str]:
    if isinstance(weights, tuple):
        # sqrt(gx² + gy²): -evaluate works on values scaled to [0, 1], so pow 2, plus,
        # pow 0.5 gives the magnitude in the image's own range.
        gx, gy = (im_kernel(w) for w in weights)
        return [
            *exe, str(src),
            "(", "-clone", "0", "-morphology", "Convolve", gx, "-evaluate", "pow", "2", ")",
            "(", "-clone", "0", "-morphology", "Convolve", gy, "-evaluate", "pow", "2", ")",
            "-delete", "0", "-compose", "plus", "-composite", "-evaluate", "pow", "0.5",
            str(dst),
        ]  # fmt: skip
    return [*exe, str(src), "-morphology", "Convolve", im_kernel(weights), str(dst)]  # type: ignore[arg-type]


OPENCV_SCRIPT = """
import sys, cv2, numpy as np
src, dst, kx = sys.argv[1:4]
img = cv2.imread(src)
if len(sys.argv) > 4:
    ky = sys.argv[4]
    gx = cv2.filter2D(img, cv2.CV_32F, np.load(kx), borderType=cv2.BORDER_REFLECT)
    gy = cv2.filter2D(img, cv2.CV_32F, np.load(ky), borderType=cv2.BORDER_REFLECT)
    out = np.clip(np.rint(cv2.magnitude(gx, gy)), 0, 255).astype(np.uint8)
else:
    out = cv2.filter2D(img, -1, np.load(kx), borderType=cv2.BORDER_REFLECT)
cv2.imwrite(dst, out)
"""


def process_table(
    folder: Path, src: Path, names: list[str], repeat: int
) -> tuple[list[tuple[str, float | None, float | None, float | None]], list[str]]:
    notes: list[str] = []
    env = dict(
        os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    has_filter = (
        ROOT / "convcli" / "cli" / "cmd_filter.py"
    ).exists() and subprocess.run(
        [sys.executable, "-m", "convcli", "filter", "--help"],
        capture_output=True,
        env=env,
        check=False,
    ).returncode == 0
    if not has_filter:
        notes.append(
            "`convcli filter` is not available in this checkout: its column is skipped"
        )
    im = imagemagick()
    if im is None:
        notes.append(
            "ImageMagick is not installed (apt-get install imagemagick): its column is skipped"
        )
    try:
        import cv2  # type: ignore[import-not-found]  # noqa: F401

        has_cv = True
    except ImportError:
        has_cv = False
        notes.append("OpenCV is not installed: its column is skipped")
    script = folder / "opencv_filter.py"
    script.write_text(OPENCV_SCRIPT)

    def run(cmd: list[str]) -> Callable[[], None]:
        def go() -> None:
            subprocess.run(
                cmd,
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

        return go

    rows = []
    for name in names:
        spec, weights = kernels()[name]
        if spec.endswith(".npy"):
            np.save(folder / spec, weights)
            spec = str(folder / spec)
        if isinstance(weights, tuple):
            kfiles = [folder / f"{name}_x.npy", folder / f"{name}_y.npy"]
            for path, w in zip(kfiles, weights, strict=True):
                np.save(path, w.astype(np.float32))
        else:
            kfiles = [folder / f"{name}_cv.npy"]
            np.save(kfiles[0], weights.astype(np.float32))
        out = folder / "out.png"
        t_convcli = t_im = t_cv = None
        if has_filter:
            cmd = [
                sys.executable,
                "-m",
                "convcli",
                "filter",
                str(src),
                "--kernel",
                spec,
                "-o",
                str(out),
            ]
            t_convcli = best_time(run(cmd), repeat, slow=20.0)
        if im is not None:
            t_im = best_time(
                run(imagemagick_command(im, src, out, weights)), repeat, slow=20.0
            )
        if has_cv:
            cmd = [sys.executable, str(script), str(src), str(out), *map(str, kfiles)]
            t_cv = best_time(run(cmd), repeat, slow=20.0)
        rows.append((name, t_convcli, t_im, t_cv))
        print(f"  ran {name}", file=sys.stderr)
    return rows, notes


# ----------------------------------------------------------------------------- report


def fmt_time(t: float | None) -> str:
    return "—" if t is None else f"{t:.3f} s"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{a / b:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement (best is kept)"
    )
    parser.add_argument(
        "--kernels", default=",".join(kernels()), help="comma-separated subset"
    )
    parser.add_argument(
        "--no-process", action="store_true", help="skip the whole-process part"
    )
    args = parser.parse_args()
    names = [n for n in args.kernels.split(",") if n]
    unknown = sorted(set(names) - set(kernels()))
    if unknown:
        parser.error(f"unknown kernels {unknown}; allowed: {', '.join(kernels())}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        src = make_photo(folder)
        from PIL import Image

        photo = np.asarray(Image.open(src).convert("RGB"), dtype=np.float32)
        print(
            f"Photo: {WIDTH}x{HEIGHT} RGB (float32 for compute), {os.cpu_count()} CPUs\n"
        )

        print(
            "Compute only (array in memory; ratio = other / convcli, > 1 means convcli is faster)\n"
        )
        print(
            "| kernel | convcli engine | scipy.ndimage per channel | ratio | OpenCV filter2D | ratio |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for name, t_engine, t_scipy, t_cv in compute_table(photo, names, args.repeat):
            print(
                f"| {name} | {fmt_time(t_engine)} | {fmt_time(t_scipy)} | {fmt_ratio(t_scipy, t_engine)} "
                f"| {fmt_time(t_cv)} | {fmt_ratio(t_cv, t_engine)} |"
            )
        if args.no_process:
            return
        rows, notes = process_table(folder, src, names, args.repeat)
        print(
            f"\nWhole process, read PNG + filter + write PNG (best of {args.repeat})\n"
        )
        print(
            "| kernel | convcli filter | ImageMagick convert | ratio | OpenCV script | ratio |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for name, t_convcli, t_im, t_cv in rows:
            print(
                f"| {name} | {fmt_time(t_convcli)} | {fmt_time(t_im)} | {fmt_ratio(t_im, t_convcli)} "
                f"| {fmt_time(t_cv)} | {fmt_ratio(t_cv, t_convcli)} |"
            )
        for note in notes:
            print(f"\nnote: {note}")


if __name__ == "__main__":
    main()
