"""Which array library an input belongs to, and how to compute in it.

Everything goes through `array-api-compat`, so NumPy, CuPy, torch tensors and
`array-api-strict` share one code path. CuPy is never imported here: the
namespace comes from the array itself.
"""
import math

import array_api_compat
import numpy as np

_NUMPY = array_api_compat.array_namespace(np.empty(0))


def namespace(*arrays):
    """The Array API namespace shared by the given arrays (``None`` entries are ignored)."""
    present = [a for a in arrays if a is not None]
    if present and all(type(a) is np.ndarray for a in present):  # the common case, without the general lookup
        return _NUMPY
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as exc:
        kinds = ", ".join(sorted({type(a).__module__ + "." + type(a).__name__ for a in present}))
        raise ValueError(f"all arrays must come from one array library, got {kinds}") from exc


def device(x):
    return array_api_compat.device(x)


def numel(shape):
    return math.prod(shape)


def compute_dtype(xp, dtype):
    """float16/bfloat16 are computed in float32; float32/float64 in themselves."""
    if not xp.isdtype(dtype, "real floating"):
        raise ValueError(f"expected a floating-point input, got dtype {dtype}")
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def to_host(a):
    """A NumPy view or copy of any supported array (torch, CuPy, array-api-strict, NumPy)."""
    import numpy as np

    if hasattr(a, "detach"):  # torch
        return a.detach().cpu().numpy()
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    if type(a).__module__.startswith("array_api_strict"):
        return np.asarray(a._array)
    return np.asarray(a)


def convert(a, like):
    """``a`` as an array of ``like``'s library and device (a no-op when it already is)."""
    if a is None:
        return None
    xp = namespace(like)
    try:
        if namespace(a) is xp and device(a) == device(like):
            return a
    except (ValueError, TypeError):
        pass
    return xp.asarray(to_host(a), device=device(like))
