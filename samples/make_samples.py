"""Rebuild the samples: the photographs bundled with scikit-image, and the digit model.

    python samples/make_samples.py            # both
    python samples/make_samples.py digits     # only the digit model (needs only convcli)
    python samples/make_samples.py images     # only the photographs (needs scikit-image)

scikit-image ships a few public-domain photographs as data files inside its package
(``skimage/data``). Two are copied as they are; two more are derived from photographs so
that the samples also cover an RGBA image and a 16-bit grayscale PNG:

- ``astronaut.png``: Eileen Collins, NASA (public domain), 512x512 RGB, copied.
- ``camera.png``: the "cameraman" photograph, 512x512 8-bit grayscale, copied.
- ``chelsea-rgba.png``: the "chelsea" cat photograph (451x300 RGB) with a soft elliptical
  alpha mask (opaque centre fading to transparent corners), 8-bit RGBA.
- ``coffee-16bit.png``: the "coffee" photograph (600x400 RGB) turned into luma
  (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B, the weights Pillow's ``convert("L")`` uses)
  in floating point and stored on the full 16-bit scale, so it holds far more than 256
  distinct levels.

scikit-image is needed only for the photographs (``pip install scikit-image``), not by
convcli. Run from anywhere.

The digit model (``digits.toml``) is trained by convcli itself, with the command
``DIGITS_TRAIN`` below, on the 1,347 training images of ``digits-all.npz`` (its
``heldout`` array holds the other 450 out, and they are the validation set):

- ``digits.npz``: the trained weights (``convcli train --save-weights``);
- ``digits-heldout.npz``: the 450 held-out images ``x`` (N, 8, 8, 1) float32, their ``y``,
  and ``accuracy``, the held-out accuracy that ``convcli train`` measured after the last
  epoch (its ``val_accuracy``);
- ``digit-0.png`` ... ``digit-9.png``: for each digit, the first held-out image that the
  model classifies correctly with probability > 0.9 after rounding to an 8-bit PNG
  (value * 255, rounded), so they are picked, not random (the held-out accuracy is the
  honest number).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent

# The exact command that made digits.npz, run from the repository's root.
DIGITS_TRAIN = (
    "convcli train samples/digits.toml samples/digits-all.npz --loss categorical-crossentropy"
    " --epochs 12 --batch-size 32 --lr 0.003 --optimizer adam --seed 0 --save-weights samples/digits.npz"
)


def _skimage_data() -> Path:
    import skimage

    return Path(skimage.__file__).resolve().parent / "data"


def make_digits() -> None:
    """Train digits.npz with ``DIGITS_TRAIN``; write digits-heldout.npz and digit-*.png."""
    root = HERE.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "convcli", *DIGITS_TRAIN.split()[1:], "--json"]
    done = subprocess.run(command, cwd=root, env=env, check=True, capture_output=True, text=True)
    history = json.loads(done.stdout)["history"]
    for epoch in history:
        print(f"epoch {epoch['epoch']}: loss {epoch['loss']:.4f}, val_accuracy {epoch['val_accuracy']:.4f}")
    accuracy = history[-1]["val_accuracy"]

    sys.path.insert(0, str(root))
    from convcli import forward
    from convcli.spec import load_model

    with np.load(HERE / "digits-all.npz") as data:
        held = data["heldout"]
        x, y = data["x"][held], data["y"][held]
    np.savez_compressed(HERE / "digits-heldout.npz", x=x, y=y, accuracy=np.float64(accuracy))
    print(f"held-out accuracy {accuracy:.4f} ({round(accuracy * len(y))}/{len(y)})")

    model = load_model(str(HERE / "digits.toml"))
    params = forward.load_weights(model, HERE / "digits.npz")
    rounded = np.rint(x[..., 0] * 255).astype(np.uint8)
    probabilities = forward.run(model, (rounded / 255.0).astype(np.float32)[..., None], params)
    for digit in range(10):
        for index in np.flatnonzero(y == digit):
            if probabilities[index].argmax() == digit and probabilities[index, digit] > 0.9:
                Image.fromarray(rounded[index], mode="L").save(HERE / f"digit-{digit}.png", optimize=True)
                print(f"digit-{digit}.png: held-out image {index}, p({digit}) = {probabilities[index, digit]:.4f}")
                break


def make_images() -> None:
    """The photographs, from scikit-image's data files."""
    data = _skimage_data()
    shutil.copyfile(data / "astronaut.png", HERE / "astronaut.png")
    shutil.copyfile(data / "camera.png", HERE / "camera.png")

    cat = np.asarray(Image.open(data / "chelsea.png").convert("RGB"))
    h, w = cat.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    # elliptical distance from the centre: 0 at the centre, 1 on the inscribed ellipse
    r = np.hypot((y - (h - 1) / 2) / (h / 2), (x - (w - 1) / 2) / (w / 2))
    alpha = np.clip((1.15 - r) / 0.4, 0.0, 1.0)  # opaque inside r=0.75, clear beyond r=1.15
    rgba = np.dstack([cat, np.rint(alpha * 255).astype(np.uint8)])
    Image.fromarray(rgba).save(HERE / "chelsea-rgba.png", optimize=True)

    coffee = np.asarray(Image.open(data / "coffee.png").convert("RGB")).astype(np.float64)
    luma = coffee @ np.array([0.299, 0.587, 0.114])
    deep = np.rint(luma * (65535 / 255)).astype(np.uint16)
    Image.fromarray(deep).save(HERE / "coffee-16bit.png", optimize=True)


def main() -> None:
    parts = sys.argv[1:] or ["images", "digits"]
    for part in parts:
        if part not in ("images", "digits"):
            raise SystemExit(f"unknown part {part!r}: images, digits")
    if "images" in parts:
        make_images()
    if "digits" in parts:
        make_digits()


if __name__ == "__main__":
    main()
