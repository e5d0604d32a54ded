"""convcli: image convolution and CNN layer arithmetic from the command line and Python.

The Python API (:mod:`convcli.api`) is loaded on first use, so ``import convcli`` stays as
fast as ``convcli --help`` (no numpy, scipy or Pillow until a function needs them):

>>> import convcli
>>> convcli.conv_output_size(227, 11, stride=4)
55
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The single source of the version (pyproject reads it from here). A literal rather than
# importlib.metadata, which costs ~15 ms of start-up on every command.
__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from convcli.api import (
        conv_output_size,
        correlate,
        filter_chain,
        load_kernel,
        load_model,
        loss,
        run,
        summary,
    )
    from convcli.errors import ConvcliError

_API = (
    "conv_output_size", "correlate", "filter_chain", "load_kernel", "load_model", "loss", "run", "summary",
)

__all__ = [
    "ConvcliError", "__version__",
    "conv_output_size", "correlate", "filter_chain", "load_kernel", "load_model", "loss", "run", "summary",
]


def __getattr__(name: str) -> Any:  # PEP 562: the API loads on first use
    if name == "summary":
        # the module convcli.summary answers calls as the API function (see its end), so
        # `from convcli import summary` and `convcli.summary(model)` both work
        import importlib

        return importlib.import_module("convcli.summary")
    if name in _API:
        from convcli import api

        return getattr(api, name)
    if name == "ConvcliError":
        from convcli.errors import ConvcliError

        return ConvcliError
    raise AttributeError(f"module 'convcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
