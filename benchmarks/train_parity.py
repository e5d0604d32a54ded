"""Training parity with PyTorch: the same model, initial weights and full batch; after one
SGD step and after one and three Adam steps (Keras' defaults), every weight of convcli's
``train`` loop against PyTorch's, relative to the weight tensor's magnitude.

    PYTHONPATH=. /work/kvenv/bin/python benchmarks/train_parity.py      # any Python with torch

``tests/test_train_torch.py`` asserts the same numbers (skipped without torch). Columns:
both sides in float64 (the algorithms alone), convcli in float32 (as ``convcli train``
runs) against PyTorch in float64, and both in float32.

The model is the lecture's: conv, batch norm, leaky ReLU, max pool, conv, batch norm, leaky
ReLU, average pool, dense, softmax, with categorical cross-entropy.

How the comparison is made, and why:

- Both sides in float64 isolate the algorithms from rounding: convcli's layers keep a
  float64 batch and float64 weights in float64, and PyTorch's modules are cast to float64.
  There every array agrees to about 1e-13 of its magnitude. convcli in float32 (what
  ``convcli train`` runs) against PyTorch in float64 then shows what float32 rounding adds.
- Weights are compared, not updates, each tensor relative to its own magnitude:
  ``max|w_convcli - w_torch| / max|w_torch|``. Every initial weight (biases, batch
  norm's gamma, beta and moving statistics too) is drawn at random, of order 0.1..1, so no
  tensor is near zero.
- A conv bias that feeds a batch norm has a true gradient of exactly zero (the batch norm
  subtracts every per-channel constant again): in float64 both sides leave it where it was
  (it moves by ~1e-14), while a float32 forward leaves a gradient of rounding noise,
  |g| ~ 1e-9..1e-8. SGD moves it by lr times that. Adam moves every weight by about
  ``lr * g / (|g| + eps)`` on its first step, so noise of 1e-9..1e-8 against eps = 1e-7
  moves it by 1-10 % of lr, in a direction the noise sets (measured: 6e-5 of the bias's
  magnitude after one step at lr 1e-3, 1.7e-4 after three). In float32, those two arrays
  are compared on what they are, noise: each moved by less than 10 % of lr per Adam step
  (a real gradient moves a weight by about lr per step), and by less than 1e-6 lr per SGD
  step. Every other array is within 1e-4 of PyTorch's, relative to its magnitude
  (measured: at most 3e-6, most below 2e-7).
- PyTorch's Adam adds epsilon to sqrt(v_hat) (v bias-corrected), Keras' (and convcli's) to
  sqrt(v) before the correction: ``w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``
  (keras/src/optimizers/adam.py) against ``w -= lr / (1 - b1^t) * m / (sqrt(v) /
  sqrt(1 - b2^t) + eps)`` (torch/optim/adam.py). The two agree when PyTorch's epsilon at step t
  is ``eps / sqrt(1 - b2^t)``, which is set before each of its steps.
- Batch norm's moving averages: both use momentum 0.99 (PyTorch's ``momentum=0.01``), but
  PyTorch averages the unbiased batch variance (divided by n - 1), Keras the biased one
  (divided by n); PyTorch's update is converted by (n - 1) / n before comparing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convcli import forward, optim, train  # noqa: E402
from convcli.spec import parse_arrow  # noqa: E402

MODEL = ("INPUT(12,12,3) => CONV(8,3,pad=same) => BN => LRELU(0.1) => POOL(2) => CONV(16,3) => BN "
         "=> LRELU(0.1) => AVGPOOL(2) => FC(10) => SOFTMAX")
BATCH = 16
MOMENTUM = 0.99
BN_FED_BIASES = ("conv1.bias", "conv2.bias")
CASES = [("sgd", 0.1, 1), ("adam", 0.001, 1), ("adam", 0.001, 3)]
TOLERANCE = 1e-4


def starting_point(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(float32 weights in convcli's layout, x (16, 12, 12, 3), one-hot y): He-normal kernels
    from convcli's initialiser, every other array drawn at random too."""
    model = parse_arrow(MODEL)
    params = forward.init_params(model, seed=seed)
    rng = np.random.default_rng([seed, 7])
    for key, value in params.items():
        kind = key.split(".")[1]
        shape = value.shape
        if kind == "bias":
            params[key] = rng.normal(0.0, 0.5, shape).astype(np.float32)
        elif kind == "gamma":
            params[key] = rng.uniform(0.6, 1.4, shape).astype(np.float32)
        elif kind in ("beta", "moving_mean"):
            params[key] = rng.normal(0.0, 0.3, shape).astype(np.float32)
        elif kind == "moving_variance":
            params[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    x = rng.standard_normal((BATCH, 12, 12, 3)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, BATCH)]
    return params, x, y


def convcli_after(name: str, lr: float, steps: int, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """The weights after ``steps`` full-batch steps of ``convcli train``'s loop, computed in
    ``dtype`` (float32 is what ``convcli train`` uses; the layers keep a float64 batch and
    float64 weights in float64)."""
    model = parse_arrow(MODEL)
    params, x, y = starting_point(seed)
    params = {key: value.astype(dtype) for key, value in params.items()}
    x, y = x.astype(dtype), y.astype(dtype)
    train.fit(model, params, x, y, loss="categorical-crossentropy", epochs=steps, batch_size=BATCH,
              optimizer=optim.make_optimizer(name, lr), shuffle=False)
    return params


def torch_after(name: str, lr: float, steps: int, seed: int = 0, dtype: str = "float64") -> dict[str, np.ndarray]:
    """The same steps in PyTorch (channels-first inside; weights read from and written back to
    convcli's layout), in ``dtype``."""
    import torch
    from torch import nn

    class FlattenChannelsLast(nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h.permute(0, 2, 3, 1).flatten(1)  # (H, W, D) order, as convcli and Keras

    params, x, y = starting_point(seed)
    t = getattr(torch, dtype)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, eps=1e-3, momentum=1 - MOMENTUM), nn.LeakyReLU(0.1),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16, eps=1e-3, momentum=1 - MOMENTUM), nn.LeakyReLU(0.1),
        nn.AvgPool2d(2), FlattenChannelsLast(), nn.Linear(64, 10),
    ).to(t)
    convs = {"conv1": net[0], "conv2": net[4]}
    norms = {"bn1": net[1], "bn2": net[5]}
    dense = net[9]

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(t)

    with torch.no_grad():
        for layer, conv in convs.items():
            conv.weight.copy_(tensor(params[f"{layer}.kernel"].transpose(3, 2, 0, 1)))  # (F,F,D,K) -> (K,D,F,F)
            conv.bias.copy_(tensor(params[f"{layer}.bias"]))
        for layer, norm in norms.items():
            norm.weight.copy_(tensor(params[f"{layer}.gamma"]))
            norm.bias.copy_(tensor(params[f"{layer}.beta"]))
            norm.running_mean.copy_(tensor(params[f"{layer}.moving_mean"]))
            norm.running_var.copy_(tensor(params[f"{layer}.moving_variance"]))
        dense.weight.copy_(tensor(params["fc1.kernel"].T))
        dense.bias.copy_(tensor(params["fc1.bias"]))
    inputs, targets = tensor(x.transpose(0, 3, 1, 2)), tensor(y)
    beta_2 = 0.999
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, beta_2), eps=1e-7, foreach=False)
    # Keras' moving variance, followed beside PyTorch's (see the module docstring)
    keras_variance = {layer: params[f"{layer}.moving_variance"].astype(np.float64) for layer in norms}
    net.train()
    for step in range(1, steps + 1):
        if name == "adam":
            opt.param_groups[0]["eps"] = 1e-7 / np.sqrt(1 - beta_2**step)  # Keras' epsilon placement
        before = {layer: norm.running_var.detach().double().numpy().copy() for layer, norm in norms.items()}
        opt.zero_grad()
        p = torch.softmax(net(inputs), dim=1).clamp(1e-7, 1 - 1e-7)  # Keras' clipping
        loss = -(targets * torch.log(p)).sum(dim=1).mean()
        loss.backward()
        opt.step()
        for layer, norm in norms.items():
            n = BATCH * {"bn1": 12 * 12, "bn2": 4 * 4}[layer]
            unbiased = (norm.running_var.detach().double().numpy() - MOMENTUM * before[layer]) / (1 - MOMENTUM)
            keras_variance[layer] = MOMENTUM * keras_variance[layer] + (1 - MOMENTUM) * unbiased * (n - 1) / n

    def array(v: torch.Tensor) -> np.ndarray:
        return v.detach().double().numpy()

    out: dict[str, np.ndarray] = {}
    for layer, conv in convs.items():
        out[f"{layer}.kernel"] = array(conv.weight).transpose(2, 3, 1, 0)
        out[f"{layer}.bias"] = array(conv.bias)
    for layer, norm in norms.items():
        out[f"{layer}.gamma"] = array(norm.weight)
        out[f"{layer}.beta"] = array(norm.bias)
        out[f"{layer}.moving_mean"] = array(norm.running_mean)
        out[f"{layer}.moving_variance"] = keras_variance[layer]
    out["fc1.kernel"] = array(dense.weight).T
    out["fc1.bias"] = array(dense.bias)
    return out


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| relative to the largest magnitude in ``b``."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def noise_bound(name: str, lr: float, steps: int) -> float:
    """How far a weight whose true gradient is zero may move on rounding noise (absolute)."""
    return 0.1 * lr * steps if name == "adam" else 1e-6 * lr * steps


def comparison(name: str, lr: float, steps: int, ours_dtype: str = "float64",
               theirs_dtype: str = "float64") -> list[tuple[str, float, float]]:
    """(weight, convcli against PyTorch, how far PyTorch moved it), both relative to the
    weight tensor's magnitude, for every array of the model."""
    start, _, _ = starting_point()
    ours = convcli_after(name, lr, steps, dtype=ours_dtype)
    theirs = torch_after(name, lr, steps, dtype=theirs_dtype)
    assert set(ours) == set(theirs) == set(start)
    return [(key, relative(ours[key], theirs[key]), relative(start[key], theirs[key])) for key in start]


def main() -> None:
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to compare with (pip install torch, CPU build)")
        return
    print(f"convcli train against PyTorch {torch.__version__}: {MODEL}")
    print(f"batch of {BATCH}, full-batch steps; |w_convcli - w_torch| max / |w_torch| max per array")
    for name, lr, steps in CASES:
        both64 = comparison(name, lr, steps, "float64", "float64")
        ours32 = comparison(name, lr, steps, "float32", "float64")
        both32 = comparison(name, lr, steps, "float32", "float32")
        print(f"\n{name}, lr {lr}, {steps} step{'s' if steps > 1 else ''}")
        print(f"{'weight':<20} {'both float64':>12} {'convcli f32':>11} {'both f32':>9} {'torch step':>10}")
        for (key, d64, moved), (_, d32, _), (_, dd32, _) in zip(both64, ours32, both32):
            note = "  feeds a BN: gradient 0" if key in BN_FED_BIASES else ""
            print(f"{key:<20} {d64:>12.1e} {d32:>11.1e} {dd32:>9.1e} {moved:>10.1e}{note}")
        worst64 = max(d for _, d, _ in both64)
        worst32 = max(d for key, d, _ in ours32 if key not in BN_FED_BIASES)
        print(f"worst, both in float64: {worst64:.1e}; convcli in float32, BN-fed biases aside: {worst32:.1e} "
              f"(tolerance {TOLERANCE:g})")
        start, _, _ = starting_point()
        ours = convcli_after(name, lr, steps)
        for key in BN_FED_BIASES:
            moved = float(np.max(np.abs(ours[key] - start[key])))
            print(f"  float32 {key} moved by {moved:.1e} (rounding-noise bound {noise_bound(name, lr, steps):.1e})")

if __name__ == "__main__":
    main()
