"""The one family of errors convcli raises for bad user input.

The CLI catches :class:`ConvcliError` at a single boundary, prints its message on one
line and exits with status 2. Anything else escaping is a bug.
"""

from __future__ import annotations


class ConvcliError(Exception):
    """Base class: bad arguments or bad input, reported to the user as one line."""


class InputError(ConvcliError):
    """An input file or value is missing, unreadable or malformed."""


class KernelError(ConvcliError):
    """A kernel name, file or inline matrix is unknown or invalid."""


class ShapeError(ConvcliError):
    """Layer sizes that do not fit (a fractional output size) or are impossible."""


class ModelError(ConvcliError):
    """A model definition (arrow notation, TOML, Keras JSON) is invalid."""


class WeightsError(ConvcliError):
    """A weights file is missing arrays, has extra ones, or has wrong shapes."""
