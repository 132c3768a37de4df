"""The fast paths behind the generic core, and the one place that chooses among them.

`normlab.core` is the reference: it reads like the maths and runs on every
Array API library. A fast path computes the same result with fewer passes
over memory, which is what decides the speed of a normalization (it does about
ten flops per element, too few to keep a processor busy while it waits for
memory). Each path declares its `Coverage`: the array library, the dtypes,
the input ranks, and which `Case` of a layout it takes (one statistic per
channel or per row; centred or not; statistics of the input or constants).
`select` is the only place where a path is chosen; `select_backward` hands a
path's own cache back to it. A new norm is a `normlab.axes.Layout`, and every
path whose coverage holds its case picks it up.

The paths, in the order they are asked:

- `numba_cpu`: compiled CPU kernels (Numba) for NumPy arrays;
- `cupy_fused`: fused CUDA kernels for BatchNorm on NCHW float32 CuPy arrays.

One switch turns them all off, for tests and for students who step through
the reference: ``normlab.paths.enabled = False``, the context manager
`reference_only`, or ``NORMLAB_FAST_PATHS=0`` in the environment.
"""
import functools
import importlib
import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..kernels.cupy_batch_norm import is_cupy_array

enabled = os.environ.get("NORMLAB_FAST_PATHS", "1") != "0"
"""False: every call takes the generic core."""

_PATH_MODULES = ("numba_cpu", "cupy_fused")


@dataclass(frozen=True)
class Case:
    """One kind of call a layout makes: what a statistic covers, whether it centres, where it comes from."""

    statistic: str  # "per_channel" (BatchNorm) or "per_row" (LayerNorm, GroupNorm, InstanceNorm, RMSNorm)
    centre: bool  # False for RMSNorm
    input_stats: bool  # True: statistics of the input (training; LayerNorm always); False: constants (eval)


def case_of(layout, input_stats):
    return Case("per_channel" if layout.plan.per_channel else "per_row", layout.centre, input_stats)


@dataclass(frozen=True)
class Coverage:
    library: str  # "numpy" or "cupy": the one array type every array of the call must have
    dtypes: frozenset  # input dtype names
    cases: frozenset  # of Case
    ranks: tuple | None = None  # input ranks, None for any
    min_elements: int = 1

    def covers(self, x, layout, input_stats):
        return (_library(x) == self.library and str(x.dtype) in self.dtypes
                and case_of(layout, input_stats) in self.cases
                and (self.ranks is None or x.ndim in self.ranks) and x.size >= self.min_elements)


def cases(statistic, centre=(True,), input_stats=(True,)):
    return frozenset(Case(statistic, c, s) for c in centre for s in input_stats)


@contextmanager
def reference_only():
    """Within this block every call takes the generic core."""
    global enabled
    saved, enabled = enabled, False
    try:
        yield
    finally:
        enabled = saved


@functools.cache
def all_paths():
    """Every fast path, in the order `select` asks them (imported on first use)."""
    return tuple(importlib.import_module(f"{__name__}.{name}").PATH for name in _PATH_MODULES)


def select(x, layout, weight, bias, stats):
    """The fast path for ``normalize(x, layout, weight, bias, stats=stats)``, or None for the generic core."""
    if not enabled:
        return None
    others = [a for a in (weight, bias, *(stats or ())) if a is not None]
    if any(_library(a) != _library(x) for a in others):
        return None
    for path in all_paths():
        if path.coverage.covers(x, layout, stats is None) and path.usable() and path.accepts(x, *others):
            return path
    return None


def select_backward(dy, cache):
    """The path that made ``cache``, when it can also take ``dy``; otherwise None (the generic backward)."""
    path = getattr(cache, "path", None)
    if enabled and path is not None and path.usable() and path.accepts_backward(dy, cache):
        return path
    return None


def _library(a):
    if type(a) is np.ndarray:  # not a subclass (np.matrix, masked arrays): those keep the generic path
        return "numpy"
    if is_cupy_array(a):
        return "cupy"
    return "other"
