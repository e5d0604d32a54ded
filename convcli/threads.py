"""Threads: numpy's OpenBLAS thread count, and work split over the machine's cores.

numpy's element-wise loops, copies and matrix products release the GIL, so two Python
threads each working on half a batch (each product on one BLAS thread) keep both cores
busy through every step of a pass, where OpenBLAS's own threads share only the products
and wait on each other when another process holds a core.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Callable, Iterator

__all__ = ["blas_threads", "cores"]


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def _openblas_threads() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """(get, set) of the thread count of the OpenBLAS that numpy loaded, found as
    threadpoolctl finds it (the shared objects mapped into this process); None when numpy
    uses another BLAS or the platform has no /proc/self/maps."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        # numpy's wheels build OpenBLAS with a symbol prefix and suffix; a system one has none
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"), ("openblas", "")):
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if getter is not None and setter is not None:
                getter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
                return (lambda g=getter: int(g())), (lambda n, s=setter: s(n))
    return None


@contextlib.contextmanager
def blas_threads(count: int) -> Iterator[None]:
    """Run the block with numpy's OpenBLAS on ``count`` threads, then restore its setting.

    Training multiplies many small matrices (a batch of 32 8x8 digits makes products of a
    few million multiply-adds): OpenBLAS splits each over its threads, and waking them
    costs more than the product, several times more on busy cores (digits: 2.2 s per epoch
    on two threads, 0.22 s on one). The setting is the process's: every thread sees it.
    Does nothing when numpy's BLAS is not an OpenBLAS that can be found.
    """
    found = _openblas_threads()
    if found is None:
        yield
        return
    get, set_ = found
    before = get()
    set_(count)
    try:
        yield
    finally:
        set_(before)
