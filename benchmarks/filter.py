"""Filtering speed on a 3840x2160 RGB photograph: convcli beside scipy.ndimage, OpenCV, libvips.

Run from the repository root:  python benchmarks/filter.py [--repeat N] [--kernels box3,sobel]

Part 1, compute only (float32 array in memory, border mode reflect), best of N:
  convcli's engine (convcli.filtering), plain per-channel scipy.ndimage.correlate into
  float32, and OpenCV cv2.filter2D on the float32 RGB array with BORDER_REFLECT (the same
  border as ndimage's "reflect"). Sobel is the gradient magnitude sqrt(gx² + gy²) in all three.
Part 2, whole process, paired runs (each repeat runs every tool once, in rotating order):
  PNG to PNG: `python -m convcli filter big.png --kernel K -o out.png`, a minimal OpenCV
  script (cv2.imread, cv2.filter2D with BORDER_REFLECT, cv2.imwrite at PNG level 1) and
  libvips (`vips conv big.png out.png[compression=1] K.mat`, box3 and gaussian5 only:
  its conv takes 40 s and 140 s a run on 15x15 and 31x31);
  .npy to .npy (the photo as float32): convcli and the OpenCV script (np.load, filter2D,
  np.save). Median time, spread, the median of the per-run ratios, median CPU time
  (user + system, all threads: less moved by other load than wall time), peak memory
  (each process's own maximum resident set), the output's size and the machine's
  one-minute load average as the kernel's rounds end.
  OpenCV may live in another Python: set OPENCV_PYTHON=/path/to/python. Missing tools are
  skipped with a note.

The kernel weights are built here with numpy (binomial and Gaussian formulas) so the
benchmark does not depend on the kernel library; 15x15 and 31x31 kernels are passed to
convcli as .npy kernel files. OpenCV (opencv-python-headless) and ImageMagick are used
only here, never by convcli.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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


OPENCV_SCRIPT = """
import sys, cv2, numpy as np
src, dst, *kernels = sys.argv[1:]
npy = src.endswith(".npy")
img = np.load(src) if npy else cv2.imread(src)
if len(kernels) == 2:
    gx = cv2.filter2D(img, cv2.CV_32F, np.load(kernels[0]), borderType=cv2.BORDER_REFLECT)
    gy = cv2.filter2D(img, cv2.CV_32F, np.load(kernels[1]), borderType=cv2.BORDER_REFLECT)
    out = cv2.magnitude(gx, gy)
    if not npy:
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
else:
    out = cv2.filter2D(img, -1, np.load(kernels[0]), borderType=cv2.BORDER_REFLECT)
if npy:
    np.save(dst, out)
else:
    cv2.imwrite(dst, out, [cv2.IMWRITE_PNG_COMPRESSION, 1])
"""


def vips_matrix(w: np.ndarray) -> str:
    """libvips' text matrix: "width height scale offset", then the rows."""
    rows, cols = w.shape
    lines = [f"{cols} {rows} 1 0"] + [" ".join(repr(float(v)) for v in row) for row in w]
    return "\n".join(lines) + "\n"


# Runs a command and prints its wall time, peak resident set and CPU time (user +
# system, all threads). A small process of its own does the fork: a child's maximum RSS
# counts what it had before exec, so forking from this (large) benchmark process would
# report this process's size.
MEASURE = """
import os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status),
      usage.ru_utime + usage.ru_stime)
"""


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, peak resident memory (MiB) and CPU seconds (user + system) of one
    process, from its own rusage."""
    done = subprocess.run(
        [sys.executable, "-S", "-c", MEASURE, *cmd],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        wall, peak, code, cpu = done.stdout.split()
    except ValueError:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}") from None
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {code}): {done.stderr.strip()}")
    return float(wall), int(peak) / 1024, float(cpu)  # Linux: kilobytes


Tool = tuple[str, Callable[[Path, Path], list[str]]]


def process_table(
    folder: Path, sources: dict[str, Path], names: list[str], repeat: int
) -> tuple[list[dict[str, object]], list[str]]:
    """Whole process, paired: each repeat runs every tool once, in a rotating order.

    Per tool: median wall time, its spread (min-max), peak memory and output size; the
    ratio convcli / tool is taken within each repeat, then its median is reported, so a
    load change on the shared machine hits both sides of a ratio alike.
    """
    notes: list[str] = []
    env = dict(
        os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    # Byte-code compiled once, as an installed package has it (with PYTHONDONTWRITEBYTECODE
    # set, every run would otherwise compile convcli's sources again); __pycache__ is
    # ignored by git.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "convcli")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    opencv_python = os.environ.get("OPENCV_PYTHON", sys.executable)
    has_cv = (
        subprocess.run(
            [opencv_python, "-c", "import cv2"], capture_output=True, check=False
        ).returncode
        == 0
    )
    if not has_cv:
        notes.append(
            "OpenCV is not importable (pip install opencv-python-headless, or point "
            "OPENCV_PYTHON at a Python that has it): its column is skipped"
        )
    vips = shutil.which("vips")
    if vips is None:
        notes.append(
            "libvips is not installed (apt-get install libvips-tools): its column is skipped"
        )
    script = folder / "opencv_filter.py"
    script.write_text(OPENCV_SCRIPT)

    rows: list[dict[str, object]] = []
    for kind, src in sources.items():
        for name in names:
            spec, weights = kernels()[name]
            if spec.endswith(".npy"):
                np.save(folder / spec, weights)
                spec = str(folder / spec)
            pair = isinstance(weights, tuple)
            kfiles = [folder / f"{name}_{i}.npy" for i in range(2 if pair else 1)]
            for path, w in zip(kfiles, weights if pair else (weights,), strict=True):
                np.save(path, np.asarray(w, dtype=np.float32))
            ext = ".npy" if kind == "npy" else ".png"
            tools: list[Tool] = [
                (
                    "convcli",
                    lambda s, o, spec=spec: [
                        sys.executable, "-m", "convcli", "filter", str(s), "--kernel", spec, "-o", str(o),
                    ],
                )
            ]  # fmt: skip
            if has_cv:
                tools.append(
                    (
                        "OpenCV",
                        lambda s, o, k=kfiles: [opencv_python, str(script), str(s), str(o), *map(str, k)],
                    )
                )  # fmt: skip
            # libvips' conv takes 40 s (15x15) and 140 s (31x31) a run: small kernels only
            if vips and kind == "png" and not pair and np.shape(weights)[0] <= 5:
                matrix = folder / f"{name}.mat"
                matrix.write_text(vips_matrix(np.asarray(weights)))
                tools.append(
                    ("libvips", lambda s, o, m=matrix: [vips, "conv", str(s), f"{o}[compression=1]", str(m)])
                )  # fmt: skip
            times: dict[str, list[float]] = {t: [] for t, _ in tools}
            cpu: dict[str, list[float]] = {t: [] for t, _ in tools}
            memory: dict[str, float] = {}
            sizes: dict[str, int] = {}
            for i in range(repeat):
                order = tools[i % len(tools) :] + tools[: i % len(tools)]
                for tool, command in order:
                    out = folder / f"out-{tool}{ext}"
                    wall, peak, seconds = run_measured(command(src, out), env)
                    times[tool].append(wall)
                    cpu[tool].append(seconds)
                    memory[tool] = max(memory.get(tool, 0.0), peak)
                    sizes[tool] = out.stat().st_size
            load = os.getloadavg()[0]  # one-minute load average as these rounds end
            for tool, _ in tools:
                ratios = [c / t for c, t in zip(times["convcli"], times[tool], strict=True)]
                rows.append(
                    {
                        "input": kind,
                        "kernel": name,
                        "tool": tool,
                        "median": statistics.median(times[tool]),
                        "min": min(times[tool]),
                        "max": max(times[tool]),
                        "ratio": statistics.median(ratios),
                        "cpu": statistics.median(cpu[tool]),
                        "memory": memory[tool],
                        "size": sizes[tool],
                        "load": load,
                    }
                )
            print(f"  ran {kind} {name}", file=sys.stderr)
    return rows, notes


# ----------------------------------------------------------------------------- report


def fmt_time(t: float | None) -> str:
    return "—" if t is None else f"{t:.3f} s"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{a / b:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs per measurement (compute: best kept; whole process: median)",
    )
    parser.add_argument(
        "--kernels", default=",".join(kernels()), help="comma-separated subset"
    )
    parser.add_argument(
        "--no-process", action="store_true", help="skip the whole-process part"
    )
    parser.add_argument(
        "--no-compute", action="store_true", help="skip the compute-only part"
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

        print(f"load average before the runs: {os.getloadavg()}\n")
        if not args.no_compute:
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
        npy = folder / "big.npy"
        np.save(npy, photo)
        rows, notes = process_table(
            folder, {"png": src, "npy": npy}, names, args.repeat
        )
        print(
            f"\nWhole process, paired runs ({args.repeat} each, rotating order); ratio = "
            "median over runs of convcli's time / the tool's (below 1: convcli is faster)\n"
        )
        print(
            "| input | kernel | tool | median | spread | convcli / tool | CPU | peak memory "
            "| output | load |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print(
                f"| {row['input']} | {row['kernel']} | {row['tool']} | {row['median']:.3f} s "
                f"| {row['min']:.2f}-{row['max']:.2f} s | {row['ratio']:.2f} "
                f"| {row['cpu']:.2f} s | {row['memory']:.0f} MiB | {row['size'] / 1e6:.2f} MB "
                f"| {row['load']:.1f} |"
            )
        for note in notes:
            print(f"\nnote: {note}")
        print(f"\nload average after the runs: {os.getloadavg()}")


if __name__ == "__main__":
    main()
