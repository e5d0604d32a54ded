"""Make docs/astronaut-sobel.png: the astronaut sample beside its Sobel edges, filtered by
convcli itself. Run from the repository root: python docs/make_before_after.py"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SIDE = 256  # each half, in pixels: small enough for the README's first screen


def main() -> None:
    source = ROOT / "samples" / "astronaut.png"
    with tempfile.TemporaryDirectory() as folder:
        edges_path = Path(folder) / "edges.png"
        subprocess.run(
            [sys.executable, "-m", "convcli", "filter", str(source), "--kernel", "sobel", "-o", str(edges_path)],
            check=True, cwd=ROOT,
        )
        before = Image.open(source).convert("RGB").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
        after = Image.open(edges_path).convert("RGB").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    picture = Image.new("RGB", (2 * SIDE + 8, SIDE), (255, 255, 255))
    picture.paste(before, (0, 0))
    picture.paste(after, (SIDE + 8, 0))
    out = ROOT / "docs" / "astronaut-sobel.png"
    picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
