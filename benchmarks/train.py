"""Training benchmark: `convcli train`'s loop beside PyTorch CPU, time per epoch and peak memory.

    PYTHONPATH=. python3 benchmarks/train.py [--epochs 3] [--repeat 2] [--case digits ...] [--json]

Cases (the same model, batch size and optimizer on both sides):

- ``digits``: samples/digits.toml (conv 16, conv 32, max pool, dense 64, dense 10, softmax) on
  the 1,347 training images of samples/digits-all.npz, batches of 32, Adam lr 0.003 (the
  command that trains the bundled weights);
- ``cifar``: a CIFAR-sized network, 32x32x3 input, conv3x3-32 relu conv3x3-32 relu pool
  conv3x3-64 relu conv3x3-64 relu pool dense-10 softmax ('same' convolutions), on 2,048
  random images with random labels, batches of 64, Adam lr 0.001.

Each framework runs in a fresh process of its own per case and round (``--repeat`` rounds,
the frameworks taking turns so both see the same machine load): one warm-up epoch, then
``--epochs`` timed epochs; the time per epoch is the median of a round, the best round is
shown. PyTorch runs with ``torch.set_num_threads(2)`` and, as a second row, one thread.
convcli's training loop sets numpy's OpenBLAS to one thread itself (``convcli.threads.blas_threads``:
its products are small, and on busy cores two BLAS threads were 10x slower).

Peak memory: the process's ``ru_maxrss`` at the end (the whole process: interpreter,
libraries, data, model, training), and what the timed epochs add: the kernel's peak-RSS mark
is reset after the warm-up epoch (/proc/self/clear_refs) and read back at the end, minus the
resident size at the reset.

PyTorch is optional (a CPU build, e.g. ``/work/kvenv``); without it, convcli's rows are
printed alone with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _memory import reset_peak, status  # benchmarks/_memory.py, beside this script

ROOT = Path(__file__).resolve().parent.parent

CIFAR = ("INPUT(32,32,3) => CONV(32,3,pad=same) => RELU => CONV(32,3,pad=same) => RELU => POOL(2)"
         " => CONV(64,3,pad=same) => RELU => CONV(64,3,pad=same) => RELU => POOL(2) => FC(10) => SOFTMAX")
CASES: dict[str, dict[str, Any]] = {
    "digits": {"batch": 32, "lr": 0.003},
    "cifar": {"batch": 64, "lr": 0.001, "images": 2048},
}
TARGET_TIME, TARGET_MEMORY = 1.5, 2.0


# ----------------------------------------------------------------------------- in the worker


def _peak() -> int:
    """The process's peak resident size so far, in bytes (ru_maxrss is in KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _data(case: str) -> tuple[Any, Any]:
    """(x (N, H, W, D) float32, integer labels (N,))."""
    import numpy as np

    if case == "digits":
        with np.load(ROOT / "samples" / "digits-all.npz") as data:
            keep = ~data["heldout"]
            return data["x"][keep], data["y"][keep]
    rng = np.random.default_rng(0)
    n = CASES[case]["images"]
    return rng.random((n, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, n)


def worker_convcli(case: str, epochs: int) -> dict[str, Any]:
    from convcli import forward, optim, train
    from convcli.spec import load_model, parse_arrow

    model = load_model(str(ROOT / "samples" / "digits.toml")) if case == "digits" else parse_arrow(CIFAR)
    x, labels = _data(case)
    y = train.encode_targets(labels, model.output_shape())
    params = forward.init_params(model, seed=0)
    adam = optim.make_optimizer("adam", CASES[case]["lr"])
    warm = train.fit(model, params, x, y, loss="categorical-crossentropy", epochs=1,
                     batch_size=CASES[case]["batch"], optimizer=adam, seed=0)
    reset_peak()
    before = status("VmRSS")
    history = train.fit(model, params, x, y, loss="categorical-crossentropy", epochs=epochs,
                        batch_size=CASES[case]["batch"], optimizer=adam, seed=1)
    return {"seconds": [s.seconds for s in history], "peak": _peak(), "growth": status("VmHWM") - before,
            "loss": history[-1].loss if history else warm[-1].loss}


def worker_torch(case: str, epochs: int, threads: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if case == "digits":
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10),
        )
    else:
        net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(8 * 8 * 64, 10),
        )
    x, labels = _data(case)
    inputs = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    targets = torch.from_numpy(labels.astype(np.int64))
    # Keras' Adam: PyTorch's epsilon sits after the bias correction (see train_parity.py); the
    # difference does not change the work done
    opt = torch.optim.Adam(net.parameters(), lr=CASES[case]["lr"], eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()  # softmax and cross-entropy, fused as PyTorch users write it
    batch = CASES[case]["batch"]
    generator = torch.Generator().manual_seed(0)
    net.train()
    seconds, total, before = [], 0.0, 0
    for epoch in range(epochs + 1):
        if epoch == 1:  # after the warm-up epoch
            reset_peak()
            before = status("VmRSS")
        started = time.perf_counter()
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            opt.zero_grad()
            loss = loss_fn(net(inputs[index]), targets[index])
            loss.backward()
            opt.step()
            total += loss.item() * len(index)
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds[1:], "peak": _peak(), "growth": status("VmHWM") - before,
            "loss": total / len(inputs)}


# ----------------------------------------------------------------------------- the driver


def _run_worker(side: str, case: str, epochs: int, threads: int) -> dict[str, Any] | None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, __file__, "--worker", side, "--case", case, "--epochs", str(epochs), "--threads", str(threads)],
        capture_output=True, text=True, env=env,
    )
    if done.returncode != 0:
        print(f"{side} ({case}) failed:\n{done.stderr}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per process (after one warm-up)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best is shown")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--worker", choices=["convcli", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case = (args.case or ["digits"])[0]
        if args.worker == "convcli":
            print(json.dumps(worker_convcli(case, args.epochs)))
        else:
            print(json.dumps(worker_torch(case, args.epochs, args.threads)))
        return

    try:
        import torch

        have_torch, torch_version = True, torch.__version__
    except ImportError:
        have_torch, torch_version = False, ""
    load_before = os.getloadavg()
    sides = [("convcli", 1)] + ([("torch", 2), ("torch", 1)] if have_torch else [])
    results: dict[str, dict[str, Any]] = {}
    for case in args.case or list(CASES):
        best: dict[str, dict[str, Any]] = {}
        for _ in range(args.repeat):
            for side, threads in sides:
                label = "convcli" if side == "convcli" else f"torch-{threads}"
                found = _run_worker(side, case, args.epochs, threads)
                if found is None:
                    continue
                found["epoch"] = _median(found["seconds"])
                if label not in best or found["epoch"] < best[label]["epoch"]:
                    peak = min(found["peak"], best[label]["peak"]) if label in best else found["peak"]
                    growth = found["growth"]
                    if label in best:
                        growth = min(growth, best[label]["growth"])
                    best[label] = dict(found, peak=peak, growth=growth)
        results[case] = best
    load_after = os.getloadavg()
    if args.json:
        print(json.dumps({"results": results, "load": [load_before, load_after]}, indent=2))
        return
    import numpy

    print(f"training, time per epoch (median of {args.epochs} after a warm-up, best of {args.repeat} rounds); "
          f"numpy {numpy.__version__}, PyTorch {torch_version or 'not installed'}; Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs; load average "
          f"{' '.join(f'{v:.2f}' for v in load_before)} at the start, "
          f"{' '.join(f'{v:.2f}' for v in load_after)} at the end")
    print(f"{'case':<8} {'framework':<18} {'s/epoch':>8} {'vs torch-2':>10} {'peak RSS':>9} {'vs':>6} "
          f"{'training adds':>13} {'final loss':>10}")
    for case, best in results.items():
        reference = best.get("torch-2")
        for label, found in best.items():
            ratio = f"{found['epoch'] / reference['epoch']:.2f}x" if reference else "-"
            memory = f"{found['peak'] / reference['peak']:.2f}x" if reference else "-"
            name = {"convcli": "convcli (1 BLAS)", "torch-2": "PyTorch 2 threads",
                    "torch-1": "PyTorch 1 thread"}[label]
            print(f"{case:<8} {name:<18} {found['epoch']:>8.3f} {ratio:>10} {found['peak'] / 2**20:>7.0f}MB "
                  f"{memory:>6} {found['growth'] / 2**20:>11.0f}MB {found['loss']:>10.4f}")
    if not have_torch:
        print("torch is not installed: convcli alone (pip install torch, CPU build, to compare)")
    else:
        print(f"targets: time within {TARGET_TIME}x of PyTorch (2 threads), peak memory within {TARGET_MEMORY}x")


if __name__ == "__main__":
    main()
