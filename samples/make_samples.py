"""Rebuild the sample images from photographs bundled with scikit-image.

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

scikit-image is needed only to run this script (``pip install scikit-image``), not by
convcli. Run from anywhere: ``python samples/make_samples.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def _skimage_data() -> Path:
    import skimage

    return Path(skimage.__file__).resolve().parent / "data"


def main() -> None:
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


if __name__ == "__main__":
    main()
