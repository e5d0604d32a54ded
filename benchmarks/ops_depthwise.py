"""Depthwise convolution: convcli.ops.depthwise_conv2d beside PyTorch's grouped conv2d.

    python benchmarks/ops_depthwise.py [--repeat 7] [--batch 8] [--threads 1] [--case NAME ...]

The layers are MobileNetV2's 3x3 depthwise convolutions at 224x224 input (stride 1 and
the stride-2 ones) and ConvNeXt-Tiny's first 7x7 one. convcli gets a channels-last batch
(N, H, W, C) and Keras' "same" padding, as `convcli run` calls it; PyTorch gets the same
values as an NCHW tensor with ``torch.nn.functional.conv2d(groups=C)`` and symmetric
padding (its fastest layout; for the stride-2 layers both compute the same number of
outputs, aligned differently, so only the stride-1 results are compared). Both run the
same number of threads (``--threads``: ``torch.set_num_threads``; numpy's element-wise
work is single-threaded). Timings: passes interleaved, after one warm-up each, best of
``--repeat`` (median also shown). Needs torch (CPU build, ``pip install torch``);
without it convcli's times are printed alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convcli import ops

CASES: dict[str, tuple[int, int, int, int, int]] = {
    # name: (H, W, C, kernel, stride)
    "mnv2-block0-112x112x32": (112, 112, 32, 3, 1),
    "mnv2-block1-112x112x96-s2": (112, 112, 96, 3, 2),
    "mnv2-block2-56x56x144": (56, 56, 144, 3, 1),
    "mnv2-block4-28x28x192": (28, 28, 192, 3, 1),
    "mnv2-block8-14x14x384": (14, 14, 384, 3, 1),
    "mnv2-block15-7x7x960": (7, 7, 960, 3, 1),
    "convnext-56x56x96-7x7": (56, 56, 96, 7, 1),
}


def _time(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _case(name: str, batch: int, repeat: int, rng: np.random.Generator, torch: Any) -> str:
    """One table row: best times of both, their ratio and the largest difference."""
    h, w, c, f, s = CASES[name]
    x = rng.standard_normal((batch, h, w, c), dtype=np.float32)
    kernel = rng.standard_normal((f, f, c, 1), dtype=np.float32) * np.float32(0.3)
    bias = rng.standard_normal(c, dtype=np.float32)

    def ours() -> np.ndarray:
        return ops.depthwise_conv2d(x, kernel, bias, strides=s, padding="same")

    ours()
    runs_ours: list[float] = []
    runs_torch: list[float] = []
    diff = "-"
    if torch is not None:
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        wt = torch.from_numpy(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1)))
        bt = torch.from_numpy(bias)

        def theirs() -> Any:
            with torch.no_grad():
                return torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=f // 2, groups=c)

        reference = theirs()
        if s == 1:
            expected = reference.numpy().transpose(0, 2, 3, 1)
            diff = f"{float(np.abs(ours() - expected).max() / np.abs(expected).max()):.1e}"
        for _ in range(repeat):  # interleaved: both see the same machine load
            runs_ours += _time(ours, 1)
            runs_torch += _time(theirs, 1)
    else:
        runs_ours = _time(ours, repeat)
    best = min(runs_ours) * 1e3
    line = f"{name:32} {best:11.2f}"
    medians = f"{statistics.median(runs_ours) * 1e3:.2f}"
    if runs_torch:
        best_torch = min(runs_torch) * 1e3
        line += f" {best_torch:9.2f} {best / best_torch:6.2f} {diff:>9}"
        medians += f" / {statistics.median(runs_torch) * 1e3:.2f}"
    return line + f"   (medians {medians})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    args = parser.parse_args()
    torch: Any
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("torch is not installed: convcli's times only", file=sys.stderr)
    rng = np.random.default_rng(0)
    header = f"{f'layer (batch {args.batch})':32} {'convcli ms':>11} {'torch ms':>9} {'ratio':>6} {'max diff':>9}"
    print(header)
    print("-" * len(header))
    for name in args.case or CASES:
        print(_case(name, args.batch, args.repeat, rng, torch), flush=True)


if __name__ == "__main__":
    main()
