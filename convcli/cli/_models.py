"""MODEL arguments of ``summary`` and ``run``: a file, the arrow notation, or ``-`` (stdin)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from convcli.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from convcli.layers import Model

def _suffix(data: bytes) -> str | None:
    """The file type of a model given on stdin, from its content."""
    head = data.lstrip()[:64]
    if data.startswith(b"PK\x03\x04"):
        return ".keras"
    if data.startswith(b"\x89HDF\r\n\x1a\n"):
        return ".h5"
    if head.startswith(b"{"):
        return ".json"
    text = data.decode("utf-8", errors="replace")
    if "[[layers]]" in text or "=>" not in text and "input" in text and "=" in text:
        return ".toml"
    return None  # the arrow notation


def read_model(source: str, input_shape: tuple[int, ...] | None = None) -> Model:
    """Load the MODEL argument: ``-`` reads the model from stdin (TOML, Keras JSON or
    .keras/.h5 file, or arrow notation, told apart by their content); anything else goes
    to ``load_model``. ``input_shape`` fills the sizes a Keras model leaves open."""
    from convcli import fileio
    from convcli.spec import load_model

    if source != "-":
        return load_model(source, input_shape)
    data = fileio.read_bytes("-", what="a model (MODEL -)")
    if not data.strip():
        raise InputError("stdin is empty: nothing to read as a model (MODEL -)")
    suffix = _suffix(data)
    if suffix is None:
        try:
            return load_model(data.decode("utf-8").strip(), input_shape)
        except UnicodeDecodeError:
            raise InputError("the model on stdin is neither text (TOML, JSON, arrow notation) nor a Keras file") from None
    with tempfile.TemporaryDirectory(prefix="convcli-") as folder:
        path = Path(folder) / f"stdin{suffix}"
        path.write_bytes(data)
        return load_model(str(path), input_shape)
