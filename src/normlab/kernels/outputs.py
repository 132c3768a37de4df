"""Output arrays for the compiled kernels: a large output is handed out again once nothing refers to it.

An array of 32 MiB or more does not come from malloc's free lists but from
the operating system, as new pages that it zeroes when they are first written:
one and a half to two and a half more write passes over the output, measured by
``bench/run.py`` (``fresh_output_s_per_byte`` for a plain fill, and the
kernels' ``no_recycling_ms``). A training loop asks for outputs of the same
shapes at every step, so `empty_like` keeps the latest `KEEP` large outputs it
made and gives one of them out again, for a call of the same shape and dtype,
once no other object holds a reference to it, strong or weak.

Why a reference count is the right test: every NumPy view of an array keeps a
reference to the array that owns the memory (its ``base``), and so do
``memoryview``, ``torch.from_numpy`` and DLPack exports. An array nobody refers
to but this module can therefore not be read or written by anyone else. A weak
reference does not raise the count, so an array with one is never handed out
again: a ``weakref.ref(y)`` sees y's values or nothing. (A raw address such as
``a.ctypes.data`` kept without the array is no more valid here than it is after
the array is freed.) Off outside CPython, where reference counts
do not say this, and with ``NORMLAB_RECYCLE_OUTPUTS=0``. `release` lets the
kept arrays go.
"""
import os
import sys
import threading
import weakref

import numpy as np

MIN_BYTES = 32 * 2**20
"""Smaller outputs reuse memory malloc keeps anyway (its mmap threshold is at most 32 MiB)."""
KEEP = 4
"""Outputs kept: y and dx of the step before, and of the one before that, which the caller
still holds while it asks for the next (``y, cache = forward(x)`` rebinds y only afterwards)."""

enabled = sys.implementation.name == "cpython" and os.environ.get("NORMLAB_RECYCLE_OUTPUTS", "1") != "0"
"""False: every output is a new array."""

_kept = []
_lock = threading.Lock()


def _references(arrays, i):
    return sys.getrefcount(arrays[i])


_UNREFERENCED = _references([np.empty(0)], 0)
"""What `_references` counts for an array held by nothing but the list (measured, since interpreters differ)."""


def _unreferenced(arrays, i):
    return _references(arrays, i) == _UNREFERENCED and weakref.getweakrefcount(arrays[i]) == 0


def empty_like(x):
    """An uninitialized C-contiguous array of ``x``'s shape and dtype, recycled when large (see the module)."""
    if not enabled or x.nbytes < MIN_BYTES:
        return np.empty(x.shape, x.dtype)
    with _lock:
        for i in range(len(_kept)):
            if _kept[i].shape == x.shape and _kept[i].dtype == x.dtype and _unreferenced(_kept, i):
                out = _kept.pop(i)
                _kept.append(out)
                return out
        out = np.empty(x.shape, x.dtype)
        _kept.append(out)
        del _kept[:max(len(_kept) - KEEP, 0)]  # an array the caller still holds stays valid: it is just no longer recycled
        return out


def release():
    """Let go of the kept outputs (their memory returns to the system once the caller's references go)."""
    with _lock:
        _kept.clear()


def kept_bytes():
    """Bytes of the outputs kept now, referenced elsewhere or not."""
    with _lock:
        return sum(a.nbytes for a in _kept)
