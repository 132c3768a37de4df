"""Compiled fast path behind `normlab.core.normalize`: Numba kernels for training mode on NumPy arrays.

`normlab.kernels.numba_norms` holds the kernels and says why they are fast;
this module connects them to the core. It runs only for batch statistics
(training mode) on float16/32/64 NumPy arrays of a layout that
`normlab._fast_numpy.plan_for` covers; everything else (eval mode, other
libraries) takes the NumPy fast path or the generic core. Numba is optional
(the ``fast`` extra): without it `USE_NUMBA` is False and nothing changes but
the speed. The tests check that this path agrees with the generic core.
"""
import importlib.util
import os
from functools import cache

import numpy as np

from ._fast_numpy import _stat_shape

USE_NUMBA = importlib.util.find_spec("numba") is not None
"""Switch: the core uses the compiled kernels while True (the tests turn it off to reach the NumPy path)."""

MIN_ELEMENTS = 1 << 15
"""Smaller inputs take the NumPy path. Their time goes to call overhead, which the kernels do not cut,
and a session that only ever normalizes small arrays (the exercises, say) never waits for Numba to
compile the kernels (about 15 seconds per dtype, once: Numba caches them on disk)."""


UNAVAILABLE = None
"""Why the kernels could not be loaded here (an exception's text), or None."""


def enabled(x):
    return USE_NUMBA and x.size >= MIN_ELEMENTS and _kernels() is not None


@cache
def _kernels():
    """The kernels module, imported on first use (Numba takes a third of a second), or None where it fails."""
    global USE_NUMBA, UNAVAILABLE
    try:
        from .kernels import numba_norms
    except Exception as exc:  # noqa: BLE001 - e.g. no writable cache directory for Numba: the NumPy path serves
        USE_NUMBA, UNAVAILABLE = False, f"{type(exc).__name__}: {exc}"
        return None
    return numba_norms


def _after_fork_in_child():
    global USE_NUMBA
    if _kernels.cache_info().currsize and _kernels() is not None and not _kernels().fork_safe():
        USE_NUMBA = False  # the child takes the NumPy path: its parent's OpenMP pool cannot serve it


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


class CompiledCache:
    """``x`` itself and the float64 statistics, as torch keeps them (x̂ is recomputed in the backward).

    It also offers every attribute of `normlab.core.NormCache` (x̂ is computed on
    first use), so the generic `normalize_backward` accepts it as well, e.g. for a dy
    that is not a NumPy array. As in torch, changing ``x`` in place between the
    forward and the backward changes the gradient.
    """

    batch_stats = True

    def __init__(self, plan, x, mean, rstd, weight, layout, *, has_bias, has_weight,
                 input_shape, input_dtype, param_dtype, weight_shape):
        self.plan, self.x, self.mean64, self.rstd64 = plan, x, mean, rstd
        self.weight_c, self.has_weight = weight, has_weight  # γ per channel (ones when the layer has none)
        self.layout, self.has_bias = layout, has_bias
        self.input_shape, self.input_dtype = input_shape, input_dtype
        self.param_dtype, self.weight_shape = param_dtype, weight_shape
        self._xhat = None

    @property
    def xhat(self):
        if self._xhat is None:
            p = self.plan
            if p.per_channel:
                x, stat = self.x.reshape(p.n, p.c, p.s), np.s_[None, :, None]
            else:
                x, stat = self.x.reshape(p.n * p.groups, -1), np.s_[:, None]
            xhat = ((x - self.mean64[stat]) * self.rstd64[stat]).astype(self.x.dtype)
            self._xhat = xhat.reshape(self.layout.view_shape)
        return self._xhat

    @property
    def rstd(self):
        """1/sqrt(var + eps) in the generic cache's shape (broadcastable against ``xhat``)."""
        return self.rstd64.astype(self.x.dtype).reshape(_stat_shape(self.layout, True, self.plan))

    @property
    def weight(self):
        return self.weight_c.reshape(self.layout.param_shape) if self.has_weight else None


def forward(x, layout, plan, weight=None, bias=None, *, eps):
    """As `normlab.core.normalize` with batch statistics: ``y``, the cache, and the batch ``(mean, var)``."""
    kernels, p = _kernels(), plan
    ctype = np.float32 if x.dtype == np.float16 else x.dtype
    xc = np.ascontiguousarray(x, dtype=ctype)
    w = np.ones(p.c, ctype) if weight is None else np.ascontiguousarray(weight, dtype=ctype).reshape(p.c)
    b = np.zeros(p.c, ctype) if bias is None else np.ascontiguousarray(bias, dtype=ctype).reshape(p.c)
    if p.per_channel:
        y, mean, var = kernels.channels_forward(xc.reshape(p.n, p.c, p.s), w, b, eps)
    else:
        y, mean, var = kernels.rows_forward(xc.reshape(p.n * p.groups, -1), w, b, p.c // p.groups, p.s,
                                            p.groups, eps)
    rstd = 1.0 / np.sqrt(var + eps)

    params = weight if weight is not None else bias
    cache = CompiledCache(p, xc, mean, rstd, w, layout, has_bias=bias is not None, has_weight=weight is not None,
                          input_shape=tuple(x.shape), input_dtype=x.dtype,
                          param_dtype=None if params is None else params.dtype,
                          weight_shape=() if params is None else tuple(params.shape))
    stat_shape = _stat_shape(layout, True, p)
    batch = tuple(a.astype(ctype).reshape(stat_shape) for a in (mean, var))
    return y.reshape(x.shape).astype(x.dtype, copy=False), cache, batch


def backward(dy, cache):
    """As `normlab.core.normalize_backward`, for a `CompiledCache` and a NumPy ``dy``."""
    kernels, c, p = _kernels(), cache, cache.plan
    dyc = np.ascontiguousarray(dy, dtype=c.x.dtype)
    if p.per_channel:
        shape = (p.n, p.c, p.s)
        dx, sum_dy_xhat, sum_dy = kernels.channels_backward(c.x.reshape(shape), dyc.reshape(shape), c.mean64,
                                                            c.rstd64, c.weight_c)
    else:
        rows = (p.n * p.groups, -1)
        dx, sum_dy_xhat, sum_dy = kernels.rows_backward(c.x.reshape(rows), dyc.reshape(rows), c.mean64, c.rstd64,
                                                        c.weight_c, p.c // p.groups, p.s, p.groups, p.c)
    dweight = _param_grad(sum_dy_xhat, c) if c.has_weight else None
    dbias = _param_grad(sum_dy, c) if c.has_bias else None
    return dx.reshape(c.input_shape).astype(c.input_dtype, copy=False), dweight, dbias


def _param_grad(summed, cache):
    return summed.reshape(cache.weight_shape).astype(cache.param_dtype)
