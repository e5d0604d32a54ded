"""convcli: image convolution and CNN layer arithmetic from the command line."""

from __future__ import annotations

# The single source of the version (pyproject reads it from here). A literal rather than
# importlib.metadata, which costs ~15 ms of start-up on every command.
__version__ = "0.1.0"

__all__ = ["__version__"]
