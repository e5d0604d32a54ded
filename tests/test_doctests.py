"""The examples in every module's docstrings run (doctest), so they cannot rot."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import convcli

MODULES = ["convcli"] + sorted(
    name
    for _, name, _ in pkgutil.walk_packages(convcli.__path__, "convcli.")
    if name != "convcli.__main__"  # running it would start the command line
)


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctests of {name} failed (run python -m doctest -v)"


def test_doctests_exist() -> None:
    attempted = 0
    for name in MODULES:
        finder = doctest.DocTestFinder()
        attempted += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert attempted >= 50
