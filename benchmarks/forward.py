"""Forward-pass benchmark: convcli (numpy im2col + BLAS) beside PyTorch CPU.

    python3 benchmarks/forward.py [--repeat 5] [--case alexnet-conv1 ...] [--json]
    python3 benchmarks/forward.py --command [--repeat 5]   # `convcli run` as users run it

Time: both frameworks in one fresh process per case, passes interleaved (so both see
the same machine load), after one warm-up pass each: the best of ``--repeat`` passes
(median also shown). Peak memory, in a separate fresh process per framework, with
glibc's mmap threshold fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_, so freed blocks go back
to the system and RSS follows the live arrays): after the model, weights, input and one
warm-up pass (one-time buffers such as BLAS workspaces are then in the baseline), the
kernel's peak-RSS mark is reset (/proc/self/clear_refs), one pass runs, and the peak is
read back: VmHWM - VmRSS before. Both frameworks use the same
weights (convcli's He-normal init, seed 0, transposed to PyTorch's layouts), the same
input and the same number of threads (``--threads``, default 2: OpenBLAS for numpy,
``torch.set_num_threads`` for PyTorch). GFLOP/s counts 2 FLOPs per multiply-accumulate
of the conv and dense layers (``Layer.macs``). The outputs of the two are compared
(max abs difference, relative to the largest output value).

PyTorch is optional (``pip install torch``, CPU build): without it, convcli's numbers are
printed alone with a note.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _memory import reset_peak, status  # benchmarks/_memory.py, beside this script

ROOT = Path(__file__).resolve().parent.parent

CASES: dict[str, tuple[str, int]] = {
    # name: (model in the lecture's arrow notation, batch size)
    "alexnet-conv1": ("INPUT(227,227,3) => CONV(96,11,stride=4) => RELU", 16),
    "alexnet-convs": (
        ("INPUT(227,227,3) => CONV(96,11,stride=4) => RELU => POOL(3,stride=2)"
        " => CONV(256,5,pad=2) => RELU => POOL(3,stride=2)"
        " => CONV(384,3,pad=1) => RELU => CONV(384,3,pad=1) => RELU => CONV(256,3,pad=1) => RELU"
        " => POOL(3,stride=2)"),
        8,
    ),
    "vgg16-blocks12": (
        ("INPUT(224,224,3) => [CONV(64,3,pad=same) => RELU] * 2 => POOL(2)"
        " => [CONV(128,3,pad=same) => RELU] * 2 => POOL(2)"),
        4,
    ),
    "lenet5": (
        ("INPUT(32,32,1) => CONV(6,5) => TANH => AVGPOOL(2) => CONV(16,5) => TANH => AVGPOOL(2)"
        " => FC(120) => TANH => FC(84) => TANH => FC(10) => SOFTMAX"),
        256,
    ),
}

# Real architectures: Keras 3's own keras.applications configs (tests/fixtures/keras/apps)
KERAS_CASES: dict[str, tuple[str, int]] = {
    "resnet50": ("ResNet50", 8),
    "mobilenetv2": ("MobileNetV2", 8),
}

SETTLE_SECONDS = 0.25
"""Pause before each timed pass: the other framework's idle threads (PyTorch's OpenMP
threads, OpenBLAS's) keep spinning on the cores for a while after a pass, which slowed
the pass that followed them by 10-30 % in an interleaved run; a command starts with quiet
cores."""

COMMAND_CASES: dict[str, tuple[int, float]] = {
    # `convcli run` as users run it: name: (images, target ratio to PyTorch's compute)
    "alexnet-convs": (48, 1.0),
    "vgg16-blocks12": (16, 1.2),
}

TARGETS = {"alexnet-conv1": 1.5, "alexnet-convs": 1.3, "vgg16-blocks12": 1.3, "lenet5": 1.5,
           "resnet50": 1.3, "mobilenetv2": 2.0}


# ----------------------------------------------------------------------------- in the worker


def _convcli_forward(model: Any, params: dict[str, Any]) -> Any:
    from convcli import forward

    def fn(x: Any) -> Any:  # as `convcli run` computes it: a large batch in two halves on two threads
        return forward.run_batches(model, x, params, batch_size=len(x))

    return fn


def _torch_forward(model: Any, params: dict[str, Any], threads: int) -> Any:
    """The same model with torch.nn.functional in PyTorch's native NCHW layout; weights are
    transposed once here (conv (F,F,C,K) -> (K,C,F,F); the first dense layer's rows from
    Keras' channels-last flatten order to NCHW's), so no layout work is timed."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from convcli import layers as L

    torch.set_num_threads(threads)
    steps = []
    for layer, in_shape, _ in model.shapes():
        if isinstance(layer, L.Conv2D):
            weight = torch.from_numpy(np.ascontiguousarray(params[f"{layer.name}.kernel"].transpose(3, 2, 0, 1)))
            bias = torch.from_numpy(params[f"{layer.name}.bias"]) if layer.use_bias else None
            top, bottom, left, right = layer.padding_amounts(in_shape)
            symmetric = top == bottom and left == right

            def conv(t, w=weight, b=bias, s=layer.strides, d=layer.dilation, p=(top, bottom, left, right), sym=symmetric):
                if not sym:
                    t = F.pad(t, (p[2], p[3], p[0], p[1]))
                return F.conv2d(t, w, b, stride=s, padding=(p[0], p[2]) if sym else 0, dilation=d)

            steps.append(conv)
            if layer.activation:
                steps.append(_torch_activation(layer.activation))
        elif isinstance(layer, L.Dense):
            kernel = params[f"{layer.name}.kernel"]
            weight = torch.from_numpy(np.ascontiguousarray(kernel.T))
            bias = torch.from_numpy(params[f"{layer.name}.bias"]) if layer.use_bias else None
            steps.append(lambda t, w=weight, b=bias: F.linear(t, w, b))
            if layer.activation:
                steps.append(_torch_activation(layer.activation))
        elif isinstance(layer, L.Flatten):
            h, w, c = in_shape
            # Keras flattens (H, W, C); torch's tensor is (C, H, W): permute the next dense
            # layer's kernel rows once instead of the activations at every call.
            nxt = model.layers[model.layers.index(layer) + 1]
            key = f"{nxt.name}.kernel"
            rows = params[key].reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
            params = {**params, key: np.ascontiguousarray(rows)}
            steps.append(lambda t: t.reshape(t.shape[0], -1))
        elif isinstance(layer, L.Activation):
            steps.append(_torch_activation(layer.function))
        elif isinstance(layer, L.MaxPooling2D):
            steps.append(lambda t, k=layer.pool_size, s=layer.strides: F.max_pool2d(t, k, s))
        elif isinstance(layer, L.AveragePooling2D):
            steps.append(lambda t, k=layer.pool_size, s=layer.strides: F.avg_pool2d(t, k, s))
        else:
            raise SystemExit(f"benchmark: no PyTorch translation for {layer.type}")

    def fn(x: Any) -> Any:
        with torch.inference_mode():
            t = torch.from_numpy(x)
            for step in steps:
                t = step(t)
            return t

    return fn


def _torch_activation(name: str) -> Any:
    import torch

    return {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
            "relu6": lambda t: torch.clamp(t, 0, 6), "softmax": lambda t: torch.softmax(t, dim=1)}[name]


def _torch_graph(model: Any, params: dict[str, Any], threads: int) -> Any:
    """A keras.applications graph with torch.nn.functional in NCHW, layer by layer as
    PyTorch's eager models run (batch norm as its own op). Weights are transposed once."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from convcli import layers as L

    torch.set_num_threads(threads)

    def tensor(key: str, axes: tuple[int, ...] | None = None) -> Any:
        array = params[key]
        return torch.from_numpy(np.ascontiguousarray(array.transpose(axes) if axes else array))

    ops = []
    for node in model.nodes():
        layer, name, shape = node.layer, node.layer.name, node.input_shapes[0]
        if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D)):
            if isinstance(layer, L.Conv2D):
                weight, groups = tensor(f"{name}.kernel", (3, 2, 0, 1)), layer.groups
            else:
                k = params[f"{name}.depthwise_kernel"]  # (F, F, C, m) -> (C*m, 1, F, F)
                weight = torch.from_numpy(np.ascontiguousarray(k.reshape(*k.shape[:2], -1).transpose(2, 0, 1)[:, None]))
                groups = shape[2]
            bias = tensor(f"{name}.bias") if layer.use_bias else None
            top, bottom, left, right = layer.padding_amounts(shape)

            def fn(t, w=weight, b=bias, s=layer.strides, d=layer.dilation, p=(left, right, top, bottom), g=groups, a=layer.activation):
                if any(p):
                    t = F.pad(t, p)
                t = F.conv2d(t, w, b, stride=s, dilation=d, groups=g)
                return _torch_activation(a)(t) if a else t
        elif isinstance(layer, L.BatchNormalization):
            stats = [tensor(f"{name}.{key}") for key in ("moving_mean", "moving_variance")]
            gamma = tensor(f"{name}.gamma") if layer.scale else None
            beta = tensor(f"{name}.beta") if layer.center else None

            def fn(t, m=stats[0], v=stats[1], g=gamma, b=beta, e=layer.epsilon):
                return F.batch_norm(t, m, v, g, b, False, 0.0, e)
        elif isinstance(layer, L.Activation):
            fn = _torch_activation(layer.function)
        elif isinstance(layer, L.ReLU):
            fn = (lambda t, hi=layer.max_value: torch.clamp(t, 0, hi)) if layer.max_value is not None else torch.relu
        elif isinstance(layer, L.ZeroPadding2D):
            top, bottom, left, right = layer.padding
            fn = lambda t, p=(left, right, top, bottom): F.pad(t, p)  # noqa: E731
        elif isinstance(layer, L.MaxPooling2D):
            top, bottom, left, right = layer.padding_amounts(shape)

            def fn(t, k=layer.pool_size, s=layer._strides, p=(left, right, top, bottom)):
                if any(p):
                    t = F.pad(t, p, value=float("-inf"))
                return F.max_pool2d(t, k, s)
        elif isinstance(layer, L.GlobalAveragePooling2D):
            fn = lambda t: t.mean(dim=(2, 3))  # noqa: E731
        elif isinstance(layer, L.Dense):
            weight, bias = tensor(f"{name}.kernel", (1, 0)), tensor(f"{name}.bias") if layer.use_bias else None

            def fn(t, w=weight, b=bias, a=layer.activation):
                t = F.linear(t, w, b)
                return _torch_activation(a)(t) if a else t
        elif isinstance(layer, L.Add):
            fn = lambda *ts: torch.stack(ts).sum(0) if len(ts) > 2 else ts[0] + ts[1]  # noqa: E731
        elif isinstance(layer, L.Dropout):
            fn = lambda t: t  # noqa: E731
        else:
            raise SystemExit(f"benchmark: no PyTorch translation for {layer.type}")
        ops.append((name, node.inputs, fn))

    last_use: dict[str, int] = {}
    for index, (_, inputs, _) in enumerate(ops):
        for source in inputs:
            last_use[source] = index

    def run(x: Any) -> Any:
        with torch.inference_mode():
            values = {model.input_name: torch.from_numpy(x)}
            for index, (name, inputs, fn) in enumerate(ops):
                values[name] = fn(*(values[i] for i in inputs))
                for source in inputs:  # free what no later layer reads, as an eager model does
                    if last_use[source] == index and source != model.output_name:
                        del values[source]
            return values[model.output_name]

    return run


def _setup(case: str, framework: str, threads: int, batch: int | None = None) -> tuple[Any, Any, Any]:
    import numpy as np

    from convcli import forward
    from convcli.spec import load_model, parse_arrow

    if case in KERAS_CASES:
        app, default = KERAS_CASES[case]
        model = load_model(str(ROOT / "tests" / "fixtures" / "keras" / "apps" / f"{app}.json"))
    else:
        text, default = CASES[case]
        model = parse_arrow(text)
    batch = batch or default
    params = forward.init_params(model, seed=0)
    x = np.random.default_rng(1).random((batch, *model.input_shape), dtype=np.float32)
    if framework == "torch":
        translate = _torch_graph if case in KERAS_CASES else _torch_forward
        return model, translate(model, params, threads), np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return model, _convcli_forward(model, params), x


def memory_worker(case: str, framework: str, threads: int) -> dict[str, Any]:
    """One forward pass's peak memory (after a warm-up pass), in bytes."""
    _, fn, x = _setup(case, framework, threads)
    out = fn(x)  # warm-up: one-time buffers (BLAS workspaces, ...) join the baseline
    del out
    exact = reset_peak()
    before = status("VmRSS")
    fn(x)
    return {"peak_bytes": status("VmHWM") - before, "peak_exact": exact}


def time_worker(case: str, frameworks: list[str], repeat: int, threads: int, out_dir: str,
                batch: int | None = None) -> dict[str, Any]:
    """Times of ``repeat`` passes per framework, interleaved in one process (so that both
    see the same machine load), after one warm-up pass each; the outputs are saved."""
    import numpy as np

    setups = {name: _setup(case, name, threads, batch) for name in frameworks}
    times: dict[str, list[float]] = {name: [] for name in frameworks}
    for name, (_, fn, x) in setups.items():
        out = fn(x)
        result = out.numpy() if name == "torch" else out
        if name == "torch" and result.ndim == 4:
            result = result.transpose(0, 2, 3, 1)
        np.save(os.path.join(out_dir, f"{case}-{name}.npy"), np.ascontiguousarray(result))
    for round_ in range(repeat):
        order = frameworks if round_ % 2 == 0 else frameworks[::-1]
        for name in order:
            _, fn, x = setups[name]
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)
    model = setups[frameworks[0]][0]
    batch = batch or (KERAS_CASES.get(case) or CASES[case])[1]
    macs = sum(node.layer.macs(*node.input_shapes) for node in model.nodes()) * batch
    return {name: {"best": min(t), "median": float(np.median(t)), "flops": 2 * macs} for name, t in times.items()}


def pass_worker(case: str, batch: int, threads: int) -> dict[str, Any]:
    """PyTorch's compute on ``batch`` images: the best of two passes after a warm-up."""
    _, fn, x = _setup(case, "torch", threads, batch)
    fn(x)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return {"seconds": min(times)}


# ----------------------------------------------------------------------------- the parent


def _worker(args: argparse.Namespace, *worker_args: str, memory: bool = False) -> dict[str, Any] | str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    env["OMP_NUM_THREADS"] = str(args.threads)
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *worker_args, "--repeat", str(args.repeat), "--threads", str(args.threads)],
        capture_output=True, text=True, env=env, check=False,
    )
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _torch_available() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed passes per case (best is reported)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both frameworks")
    parser.add_argument("--case", action="append", choices=sorted({**CASES, **KERAS_CASES}), help="run only these cases")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--command", action="store_true",
                        help="time the `convcli run` command as users run it (table included) beside PyTorch")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, case, *rest = args.worker
        if args.threads == 1 and hasattr(os, "sched_setaffinity"):  # one CPU: convcli's halves too
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        if mode == "memory":
            print(json.dumps(memory_worker(case, rest[0], args.threads)))
        elif mode == "pass":
            print(json.dumps(pass_worker(case, int(rest[0]), args.threads)))
        else:
            print(json.dumps(time_worker(case, rest[2:], args.repeat, args.threads, rest[0], int(rest[1]) or None)))
        return

    import numpy as np

    torch_version = _torch_available()
    if args.command:
        command_table(args, torch_version)
        return
    results = []
    frameworks = ["convcli"] + (["torch"] if torch_version else [])
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.case or [*CASES, *KERAS_CASES]:
            row: dict[str, Any] = {"case": case, "batch": (KERAS_CASES.get(case) or CASES[case])[1]}
            timed = _worker(args, "time", case, tmp, "0", *frameworks)
            for name in frameworks:
                memory = _worker(args, "memory", case, name, memory=True)
                if isinstance(timed, str) or isinstance(memory, str):
                    row[name] = timed if isinstance(timed, str) else memory
                else:
                    row[name] = {**timed[name], **memory}
            if all(isinstance(row.get(name), dict) for name in ("convcli", "torch")):
                ours = np.load(os.path.join(tmp, f"{case}-convcli.npy"))
                theirs = np.load(os.path.join(tmp, f"{case}-torch.npy"))
                row["max_abs_diff"] = float(np.abs(ours - theirs).max())
                row["max_abs_output"] = float(np.abs(theirs).max())
                row["time_ratio"] = row["convcli"]["best"] / row["torch"]["best"]
                row["memory_ratio"] = row["convcli"]["peak_bytes"] / max(row["torch"]["peak_bytes"], 1)
            results.append(row)
    if args.json:
        print(json.dumps({"threads": args.threads, "torch": torch_version, "results": results}, indent=2))
        return
    _print_table(results, args, torch_version)


def _print_table(results: list[dict[str, Any]], args: argparse.Namespace, torch_version: str | None) -> None:
    import platform

    import numpy as np

    print(f"threads: {args.threads}, best of {args.repeat} passes; numpy {np.__version__}, "
          f"PyTorch {torch_version or 'not installed (convcli alone)'}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end")
    print()
    print("| case | batch | convcli ms (median) | GFLOP/s | peak MB | PyTorch ms (median) | GFLOP/s | peak MB "
          "| time ratio (target) | memory ratio | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
        cells = [row["case"], str(row["batch"])]
        for framework in ("convcli", "torch"):
            m = row.get(framework)
            if isinstance(m, dict):
                cells += [f"{m['best'] * 1e3:.1f} ({m['median'] * 1e3:.1f})", f"{m['flops'] / m['best'] / 1e9:.0f}",
                          f"{m['peak_bytes'] / 2**20:.0f}"]
            else:
                cells += [m if isinstance(m, str) else "-", "-", "-"]
        if "time_ratio" in row:
            cells += [f"{row['time_ratio']:.2f}x (<= {TARGETS[row['case']]}x)", f"{row['memory_ratio']:.2f}x",
                      f"{row['max_abs_diff']:.1e} (of {row['max_abs_output']:.3g})"]
        else:
            cells += ["-", "-", "-"]
        print("| " + " | ".join(cells) + " |")
    if torch_version is None:
        print("\nPyTorch is not installed: `pip install torch` (CPU) to compare.")


def _run_command(args: argparse.Namespace, model: str, inputs: str) -> float:
    """Wall time of `convcli run MODEL INPUTS` in a fresh process, its table read from a pipe."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "convcli", "run", model, inputs], capture_output=True, env=env, check=True)
    return time.perf_counter() - start


def command_table(args: argparse.Namespace, torch_version: str | None) -> None:
    """`convcli run` as users run it: per round, the command on N + 1 images and on 1 image
    (their difference cancels start-up, model parsing and the first image) and PyTorch's
    compute on N images in its own process, in a rotating order; medians over the rounds."""
    import platform

    import numpy as np

    cases = [case for case in (args.case or COMMAND_CASES) if case in COMMAND_CASES]
    print(f"`convcli run` (whole command, default table output into a pipe) beside PyTorch; threads: "
          f"{args.threads}, {args.repeat} rounds; numpy {np.__version__}, PyTorch {torch_version or 'not installed'}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    print("| case | images | command on N+1 ms | command on 1 ms | difference ms (spread) | engine alone ms "
          "| PyTorch ms | ratio (target) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            n, target = COMMAND_CASES[case]
            text = CASES[case][0]
            rng = np.random.default_rng(1)
            shape = _setup(case, "convcli", args.threads, 1)[0].input_shape
            many, one = os.path.join(tmp, "many.npy"), os.path.join(tmp, "one.npy")
            np.save(many, rng.random((n + 1, *shape), dtype=np.float32))
            np.save(one, rng.random((1, *shape), dtype=np.float32))
            engine = _worker(args, "time", case, tmp, str(n), "convcli")
            _run_command(args, text, one)  # warm the page cache
            rounds: dict[str, list[float]] = {"many": [], "one": [], "torch": []}
            jobs = ["many", "one"] + (["torch"] if torch_version else [])
            for round_ in range(args.repeat):
                for job in jobs[round_ % len(jobs):] + jobs[: round_ % len(jobs)]:
                    if job == "torch":
                        done = _worker(args, "pass", case, str(n))
                        if isinstance(done, dict):
                            rounds["torch"].append(done["seconds"])
                    else:
                        rounds[job].append(_run_command(args, text, many if job == "many" else one))
            diffs = [a - b for a, b in zip(rounds["many"], rounds["one"])]
            med = {k: float(np.median(v)) if v else math.nan for k, v in rounds.items()}
            diff = float(np.median(diffs))
            engine_ms = f"{engine['convcli']['median'] * 1e3:.0f}" if isinstance(engine, dict) else "-"
            ratio = f"{diff / med['torch']:.2f}x (<= {target}x)" if rounds["torch"] else "-"
            print(f"| {case} | {n} | {med['many'] * 1e3:.0f} | {med['one'] * 1e3:.0f} | {diff * 1e3:.0f} "
                  f"({min(diffs) * 1e3:.0f}-{max(diffs) * 1e3:.0f}) | {engine_ms} | "
                  f"{med['torch'] * 1e3:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
