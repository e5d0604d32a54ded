"""Whole-process start-up time of the light commands, beside ``python -c "import typer"``.

Run from the repository root:  python benchmarks/startup.py [--repeat N]

Each command runs as a fresh process (the installed ``convcli`` script when it is on PATH,
else ``python -m convcli``); the table shows the median and best wall time of N runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _time(cmd: list[str], repeat: int, env: dict[str, str]) -> tuple[float, float]:
    times = []
    for _ in range(repeat + 1):  # the first run warms the file cache and is dropped
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    env = dict(os.environ, COLUMNS="100")
    script = shutil.which("convcli")
    if script:
        convcli = [script]
        how = f"installed script {script}"
    else:
        convcli = [sys.executable, "-m", "convcli"]
        env["PYTHONPATH"] = str(ROOT)
        how = "python -m convcli"
    cases = [
        ('python -c "import typer"', [sys.executable, "-c", "import typer"]),
        ("python -c \"import scipy.ndimage\"", [sys.executable, "-c", "import scipy.ndimage"]),
        ("convcli --help", [*convcli, "--help"]),
        ("convcli kernels", [*convcli, "kernels"]),
        ("convcli shapes --W 227 --F 11 --S 4 --K 96", [*convcli, "shapes", "--W", "227", "--F", "11", "--S", "4", "--K", "96"]),
    ]
    print(f"# start-up, {args.repeat} runs each, {how}, Python {sys.version.split()[0]}")
    base = None
    print(f"| {'command':<45} | median (ms) | best (ms) | vs import typer |")
    print(f"|{'-' * 47}|------------:|----------:|----------------:|")
    for label, cmd in cases:
        median, best = _time(cmd, args.repeat, env)
        base = base or median
        print(f"| {label:<45} | {median * 1e3:11.0f} | {best * 1e3:9.0f} | {median / base:14.2f}x |")


if __name__ == "__main__":
    main()
