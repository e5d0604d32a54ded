"""Train the bundled digit classifier (samples/digits.toml) once, and export it.

    python3 samples/train_digits.py

Data: scikit-learn's bundled 8x8 handwritten digits (1,797 images, pixel values 0..16,
scaled to [0, 1]), split once into a stratified training set and a held-out set
(25 %, ``random_state=0``). Model: the LeNet-style CNN of ``digits.toml``, trained with
PyTorch on the CPU from a fixed seed.

Writes, next to this script:

- ``digits.npz``: the weights in Keras layouts, keys ``<layer>.<param>``: conv
  ``kernel`` (F, F, D, K) from PyTorch's (K, D, F, F); dense ``kernel`` (in, out), the
  first one with its rows permuted from PyTorch's channels-first flatten (D, H, W) to
  convcli's channels-last flatten (H, W, D).
- ``digits-heldout.npz``: the held-out set, ``x`` (N, 8, 8, 1) float32 in [0, 1] and
  ``y`` (N,) int64, plus ``accuracy`` (the held-out accuracy measured here, with PyTorch).
- ``digit-0.png`` ... ``digit-9.png``: for each digit, the first held-out image that the
  model classifies correctly with probability > 0.9 after rounding to an 8-bit PNG
  (value * 255, rounded).

As a check on the export, the held-out accuracy is computed twice: by PyTorch and by a
small numpy channels-last forward pass that reads only the exported arrays.

scikit-learn, torch and Pillow are needed for this script only, never by convcli.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
HELDOUT_FRACTION = 0.25
EPOCHS = 60
BATCH = 32
LEARNING_RATE = 1e-3


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as (N, 8, 8, 1) float32 in [0, 1], split stratified and reproducibly."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=HELDOUT_FRACTION, stratify=y, random_state=SEED
    )
    return x_train, y_train, x_test, y_test


def build_torch_model():  # noqa: ANN201 - torch.nn.Sequential
    """The network of digits.toml, in PyTorch (channels-first inside)."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),  # conv1: 8x8x16 ('same' for a 3x3 stride-1 kernel)
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),  # conv2: 8x8x32
        nn.ReLU(),
        nn.MaxPool2d(2),  # pool1: 4x4x32
        nn.Flatten(),  # 512, in (D, H, W) order
        nn.Linear(512, 64),  # fc1
        nn.ReLU(),
        nn.Linear(64, 10),  # fc2 (softmax in digits.toml; the loss here takes logits)
    )


def train(x_train: np.ndarray, y_train: np.ndarray):  # noqa: ANN201
    """Adam on cross-entropy, fixed seed, CPU; returns the trained torch model."""
    import torch

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    model = build_torch_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.nn.CrossEntropyLoss()
    inputs = torch.from_numpy(x_train).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    targets = torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            optimizer.zero_grad()
            loss = loss_fn(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if epoch % 10 == 9:
            print(f"epoch {epoch + 1:3d}  training loss {total / len(inputs):.4f}")
    model.eval()
    return model


def torch_probabilities(model, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
    import torch

    with torch.no_grad():
        logits = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
        return torch.softmax(logits, dim=1).numpy()


def export_weights(model) -> dict[str, np.ndarray]:  # noqa: ANN001
    """PyTorch parameters -> Keras layouts with convcli's ``<layer>.<param>`` keys."""
    conv1, conv2, fc1, fc2 = model[0], model[2], model[6], model[8]

    def array(t) -> np.ndarray:  # noqa: ANN001
        return t.detach().numpy().astype(np.float32)

    # fc1 sees pool1's 4x4x32 output. PyTorch flattens it as (D, H, W): weight[o, d, h, w];
    # convcli (like Keras) flattens channels-last (H, W, D): kernel[(h, w, d), o].
    fc1_weight = array(fc1.weight).reshape(64, 32, 4, 4)  # (out, D, H, W)
    return {
        "conv1.kernel": array(conv1.weight).transpose(2, 3, 1, 0).copy(),  # (K,D,F,F) -> (F,F,D,K)
        "conv1.bias": array(conv1.bias),
        "conv2.kernel": array(conv2.weight).transpose(2, 3, 1, 0).copy(),
        "conv2.bias": array(conv2.bias),
        "fc1.kernel": fc1_weight.transpose(2, 3, 1, 0).reshape(4 * 4 * 32, 64).copy(),
        "fc1.bias": array(fc1.bias),
        "fc2.kernel": array(fc2.weight).T.copy(),  # (out, in) -> (in, out)
        "fc2.bias": array(fc2.bias),
    }


# --- an independent numpy check of the exported arrays (channels-last throughout) -----


def _conv_same_3x3(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(N, H, W, D) * (3, 3, D, K) cross-correlation with one pixel of zero padding."""
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = sliding_window_view(padded, (3, 3), axis=(1, 2))  # (N, H, W, D, 3, 3)
    return np.einsum("nhwdij,ijdk->nhwk", windows, kernel, optimize=True) + bias


def numpy_probabilities(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Forward pass of digits.toml from the exported (Keras-layout) arrays only."""
    h = np.maximum(_conv_same_3x3(x, weights["conv1.kernel"], weights["conv1.bias"]), 0)
    h = np.maximum(_conv_same_3x3(h, weights["conv2.kernel"], weights["conv2.bias"]), 0)
    n, height, width, depth = h.shape
    h = h.reshape(n, height // 2, 2, width // 2, 2, depth).max(axis=(2, 4))  # 2x2 max pool
    h = h.reshape(n, -1)  # channels-last flatten (H, W, D)
    h = np.maximum(h @ weights["fc1.kernel"] + weights["fc1.bias"], 0)
    logits = h @ weights["fc2.kernel"] + weights["fc2.bias"]
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def write_pngs(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, out: Path) -> None:
    """digit-<d>.png: the first held-out image of each digit the model gets right (p > 0.9)
    once rounded to 8 bits, exactly as convcli will read it back."""
    from PIL import Image

    rounded = np.rint(x[..., 0] * 255).astype(np.uint8)
    probabilities = numpy_probabilities(weights, (rounded / 255.0).astype(np.float32)[..., None])
    for digit in range(10):
        for index in np.flatnonzero(y == digit):
            if probabilities[index].argmax() == digit and probabilities[index, digit] > 0.9:
                Image.fromarray(rounded[index], mode="L").save(out / f"digit-{digit}.png", optimize=True)
                print(
                    f"digit-{digit}.png: held-out image {index}, "
                    f"p({digit}) = {probabilities[index, digit]:.4f}"
                )
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the outputs")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # deterministic and reproducible on any machine

    x_train, y_train, x_test, y_test = load_split()
    print(f"training images {len(x_train)}, held-out images {len(x_test)}")
    model = train(x_train, y_train)

    torch_accuracy = float((torch_probabilities(model, x_test).argmax(1) == y_test).mean())
    weights = export_weights(model)
    numpy_accuracy = float((numpy_probabilities(weights, x_test).argmax(1) == y_test).mean())
    correct = int(round(torch_accuracy * len(y_test)))
    print(f"held-out accuracy (PyTorch): {torch_accuracy:.4f} ({correct}/{len(y_test)})")
    print(f"held-out accuracy (numpy, exported weights, channels-last): {numpy_accuracy:.4f}")
    if abs(numpy_accuracy - torch_accuracy) * len(y_test) > 1:
        raise SystemExit("the exported weights do not reproduce PyTorch's accuracy")

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "digits.npz", **weights)
    np.savez_compressed(
        args.out / "digits-heldout.npz",
        x=x_test.astype(np.float32),
        y=y_test.astype(np.int64),
        accuracy=np.float64(torch_accuracy),
    )
    write_pngs(weights, x_test, y_test, args.out)
    print(f"wrote digits.npz, digits-heldout.npz and digit-*.png to {args.out}")


if __name__ == "__main__":
    main()
