"""The compiled CPU path: Numba kernels (`normlab.kernels.numba_norms`) for NumPy arrays.

It covers every layout on float16/32/64 NumPy arrays of at least
`MIN_ELEMENTS` values: statistics of the input for every norm, centred or
not, and BatchNorm's constant statistics (eval). Numba is imported on first
use; where it is missing or the kernels cannot load, `usable` is False and
`UNAVAILABLE` says why, and the generic core serves instead.
"""
import os
from functools import cache

import numpy as np

from . import Coverage, cases

MIN_ELEMENTS = 1 << 15
"""Smaller inputs take the generic core. Their time goes to call overhead, which the kernels do not
cut, and a session that only ever normalizes small arrays (the exercises, say) never imports Numba."""

UNAVAILABLE = None
"""Why the kernels could not be loaded here (an exception's text), or None."""

_forked_from_omp = False


def _kernels_or_none():
    global UNAVAILABLE
    try:
        from ..kernels import numba_norms
    except Exception as exc:  # noqa: BLE001 - e.g. Numba missing, or no writable cache directory
        UNAVAILABLE = f"{type(exc).__name__}: {exc}"
        return None
    return numba_norms


_kernels = cache(_kernels_or_none)


def _after_fork_in_child():
    global _forked_from_omp
    if _kernels.cache_info().currsize and _kernels() is not None and not _kernels().fork_safe():
        _forked_from_omp = True  # the parent's GNU OpenMP pool cannot serve a forked child


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


class CompiledCache:
    """``x`` itself and the float64 statistics, as torch keeps them (x̂ is recomputed in the backward).

    It also offers every attribute of `normlab.core.NormCache` (x̂ is computed on
    first use), so the generic `normalize_backward` accepts it as well, e.g. for a
    dy that is not a NumPy array. As in torch, changing ``x`` in place between the
    forward and the backward changes the gradient.
    """

    def __init__(self, x, mean, rstd, weight, layout, *, batch_stats, has_bias, has_weight,
                 input_shape, input_dtype, param_dtype, weight_shape):
        self.path = PATH
        self.plan, self.x, self.mean64, self.rstd64 = layout.plan, x, mean, rstd
        self.weight_c, self.has_weight = weight, has_weight  # γ per channel (ones when the layer has none)
        self.layout, self.batch_stats, self.has_bias = layout, batch_stats, has_bias
        self.input_shape, self.input_dtype = input_shape, input_dtype
        self.param_dtype, self.weight_shape = param_dtype, weight_shape
        self._xhat = None

    def _stat(self):
        """Index that spreads a per-statistic array over ``x`` seen as in `_view`."""
        return np.s_[None, :, None] if self.plan.per_channel else np.s_[:, None]

    @property
    def xhat(self):
        if self._xhat is None:
            xhat = (_view(self.x, self.plan) - self.mean64[self._stat()]) * self.rstd64[self._stat()]
            self._xhat = xhat.astype(self.x.dtype).reshape(self.layout.view_shape)
        return self._xhat

    @property
    def rstd(self):
        """1/sqrt(var + eps) in the generic cache's shape (broadcastable against ``xhat``)."""
        shape = self.layout.stat_shape if self.batch_stats else self.layout.param_shape  # as the core's
        return self.rstd64.astype(self.x.dtype).reshape(shape)

    @property
    def weight(self):
        return self.weight_c.reshape(self.layout.param_shape) if self.has_weight else None


class NumbaPath:
    name = "compiled CPU kernels (Numba)"
    coverage = Coverage(
        library="numpy",
        dtypes=frozenset({"float16", "float32", "float64"}),
        cases=cases("per_row", centre=(True, False)) | cases("per_channel", input_stats=(True, False)),
        min_elements=MIN_ELEMENTS,
    )

    def usable(self):
        return not _forked_from_omp and _kernels() is not None

    def accepts(self, x, *others):
        return True  # the coverage says it all: plain ndarrays, any memory layout (copied if need be)

    def accepts_backward(self, dy, cache):
        return type(dy) is np.ndarray

    def forward(self, x, layout, weight=None, bias=None, *, eps, stats=None):
        """As `normlab.core.normalize`: ``y``, the cache, and the batch ``(mean, var)`` (None for constants)."""
        kernels, p = _kernels(), layout.plan
        ctype = np.float32 if x.dtype == np.float16 else x.dtype
        xc = np.ascontiguousarray(x, dtype=ctype)
        w = np.ones(p.c, ctype) if weight is None else np.ascontiguousarray(weight, dtype=ctype).reshape(p.c)
        b = np.zeros(p.c, ctype) if bias is None else np.ascontiguousarray(bias, dtype=ctype).reshape(p.c)
        if stats is not None:  # constant per-channel statistics (the coverage admits no other kind)
            mean, var = (np.asarray(s, np.float64).reshape(p.c) for s in stats)
            y = kernels.channels_apply(_view(xc, p), mean, 1.0 / np.sqrt(var + eps), w, b)
        elif p.per_channel:
            y, mean, var = kernels.channels_forward(_view(xc, p), w, b, eps)
        else:
            y, mean, var = kernels.rows_forward(_view(xc, p), w, b, p.c // p.groups, p.s, p.groups, eps,
                                                layout.centre)
        rstd = 1.0 / np.sqrt(var + eps)

        params = weight if weight is not None else bias
        cache = CompiledCache(xc, mean, rstd, w, layout, batch_stats=stats is None, has_bias=bias is not None,
                              has_weight=weight is not None, input_shape=tuple(x.shape), input_dtype=x.dtype,
                              param_dtype=None if params is None else params.dtype,
                              weight_shape=() if params is None else tuple(params.shape))
        batch = None
        if stats is None:
            batch = tuple(a.astype(ctype).reshape(layout.stat_shape) for a in (mean, var))
        return y.reshape(x.shape).astype(x.dtype, copy=False), cache, batch

    def backward(self, dy, cache):
        """As `normlab.core.normalize_backward`, for a `CompiledCache` and a NumPy ``dy``."""
        kernels, c, p = _kernels(), cache, cache.plan
        dyc = np.ascontiguousarray(dy, dtype=c.x.dtype)
        if p.per_channel:
            dx, sum_dy_xhat, sum_dy = kernels.channels_backward(_view(c.x, p), _view(dyc, p), c.mean64, c.rstd64,
                                                                c.weight_c, c.batch_stats)
        else:
            dx, sum_dy_xhat, sum_dy = kernels.rows_backward(_view(c.x, p), _view(dyc, p), c.mean64, c.rstd64,
                                                            c.weight_c, p.c // p.groups, p.s, p.groups, p.c,
                                                            c.layout.centre)
        dweight = _param_grad(sum_dy_xhat, c) if c.has_weight else None
        dbias = _param_grad(sum_dy, c) if c.has_bias else None
        return dx.reshape(c.input_shape).astype(c.input_dtype, copy=False), dweight, dbias


PATH = NumbaPath()


def _view(a, plan):
    """``a`` as the kernels see it: (N, C, S) per channel, or one row per (sample, group)."""
    return a.reshape(plan.n, plan.c, plan.s) if plan.per_channel else a.reshape(plan.n * plan.groups, -1)


def _param_grad(summed, cache):
    return summed.reshape(cache.weight_shape).astype(cache.param_dtype)
