r"""NumPy fast path behind `normlab.core.normalize` and `normlab.core.normalize_backward`.

The generic core is the reference: it reads like the maths and runs on any
Array API library. This module computes the same thing for plain NumPy arrays
with fewer passes over memory, which is what decides the speed of a
normalization layer (it does about ten flops per element, far too few to keep
a CPU busy while it waits for memory). It is an implementation detail: the core
calls it only when every array is a ``numpy.ndarray``, and the tests check that
it agrees with the generic path.

Every supported norm is seen through one picture. The input is viewed as
``(N, C, S)``: samples, channels, and everything else flattened (BatchNorm,
InstanceNorm, GroupNorm); LayerNorm is GroupNorm with one group over
``(rows, features, 1)``. γ and β act per channel ``c``. A statistic is taken
either per channel over ``(N, S)`` (BatchNorm, and the constant running
statistics of eval mode), or per ``(sample, group)`` over the group's channels
and ``S``, where the group's values are contiguous in memory.

The levers, each counted in passes over an array of the input's size:

- reductions are dot products (``np.vecdot``, with a vector of ones for a
  plain sum): one read of each operand and no temporary;
- like torch, the cache keeps ``x`` itself (no copy) and the statistics, and
  ``d = x - mean`` is recomputed where it is needed, a block at a time; the
  backward derives ``Σ dy·x̂`` from ``Σ dy·d``, so x̂ is never written out;
- the backward is the compact formula written as ``dx = α·dy + β·d + γ`` with
  α, β, γ tiny per-(sample, channel) arrays, after two reductions;
- elementwise work runs block by block (whole samples, about 512 KiB each), so
  that the several NumPy operations of one step find their block still in the
  core's cache: each step reads and writes the big arrays once from memory,
  however many NumPy calls it takes;
- variance without losing digits: when the data is centred (|mean| <= std/4,
  the usual case for activations) the first pass takes Σx and Σx², whose
  difference E[x²] - mean² then cancels less than a tenth of a bit, and the
  later passes use ``x`` in place of ``d`` (their sums corrected by the mean).
  Otherwise a second pass takes the corrected two-pass variance of the generic
  core: Σd and Σd² with ``d = x - shift``; the mean of ``d`` corrects the
  shift's rounding error, which keeps float32 data with a mean of 1e4 accurate.
"""
from dataclasses import dataclass

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def accepts(x, *others):
    """True when the fast path may run: plain ``numpy.ndarray`` inputs (no subclass, no other library)."""
    arrays = [a for a in (x, *others) if a is not None]
    return all(type(a) is np.ndarray for a in arrays) and x.dtype in _FLOAT_DTYPES and x.size > 0


@dataclass(frozen=True)
class Plan:
    """How a Layout maps onto the ``(N, C, S)`` picture (see the module docstring)."""

    n: int
    c: int
    s: int
    groups: int  # statistics per (sample, group); 0 means one statistic per channel

    @property
    def per_channel(self):
        return self.groups == 0

    @property
    def count(self):
        """m, the number of values behind one statistic."""
        return self.n * self.s if self.per_channel else (self.c // self.groups) * self.s


def plan_for(shape, layout, stats=None):
    """The `Plan` for this input and Layout, or ``None`` when the fast path does not cover it.

    ``stats`` are the constant (mean, var) of eval mode, or ``None`` for batch statistics.
    """
    shape, nd = tuple(shape), len(shape)
    view, reduce = tuple(layout.view_shape), tuple(layout.reduce)
    batch_stats = stats is None
    if nd >= 2 and tuple(layout.param_shape) == (1, shape[1]) + (1,) * (nd - 2):
        n, c, s = shape[0], shape[1], _prod(shape[2:])
        if view == shape and reduce == (0, *range(2, nd)):  # BatchNorm; in eval, constants per channel
            return Plan(n, c, s, 0) if batch_stats or all(a.size == c for a in stats) else None
        if not batch_stats:
            return None
        if view == shape and nd >= 3 and reduce == tuple(range(2, nd)):  # InstanceNorm
            return Plan(n, c, s, c)
        if len(view) == 3 and reduce == (2,) and view[0] == n and c % view[1] == 0:  # GroupNorm
            return Plan(n, c, s, view[1])
        return None
    k = len(layout.param_shape)
    if batch_stats and view == shape and 0 < k <= nd and reduce == tuple(range(nd - k, nd)) \
            and tuple(layout.param_shape) == shape[nd - k:]:  # LayerNorm
        return Plan(_prod(shape[:nd - k]), _prod(shape[nd - k:]), 1, 1)
    return None


class FastCache:
    """The fast path's cache: the input itself and the statistics, as torch keeps them.

    ``d = x - shift`` (minus the centre, when that matters) is recomputed block by
    block wherever it is needed, from cache-resident blocks, instead of being
    stored: one full-size array fewer to write and to allocate. As in torch,
    changing ``x`` in place between the forward and the backward changes the
    gradient.

    It also offers every attribute of `normlab.core.NormCache` (x̂ is computed
    on first use), so the generic `normalize_backward` accepts it as well.
    """

    def __init__(self, plan, x2, shift, centre, rstd, scale, weight, layout, *, has_bias, batch_stats,
                 input_shape, input_dtype, param_dtype, weight_shape):
        self.plan, self.x2, self.shift, self.centre = plan, x2, shift, centre
        self.uses_x = False  # True when the data is centred enough to use x itself in place of d
        self.mean = None  # per statistic, kept when uses_x
        self.rstd_stat, self.weight_c = rstd, weight
        self.scale = scale  # (factor, per-channel factor or None): γ·rstd, see `_scale`; y = scale·d + β
        self.layout, self.has_bias, self.batch_stats = layout, has_bias, batch_stats
        self.input_shape, self.input_dtype = input_shape, input_dtype
        self.param_dtype, self.weight_shape = param_dtype, weight_shape
        self._xhat = self._spread_step = None

    def centred(self, rows, out, step):
        """``d = x - shift (- centre)`` for the samples ``rows``, written to ``out``, shaped (k, C·S)."""
        p = self.plan
        if self._spread_step != step:  # spread the statistics once per block size, not once per block
            self._shift_at = _Spread(p, self.shift, None, step)
            self._centre_at = None if self.centre is None else _Spread(p, self.centre, None, step)
            self._spread_step = step
        flat = out[:(rows.stop - rows.start) * p.c * p.s]
        _apply(np.subtract, _flat(self.x2, rows), self._shift_at.block(rows), flat)
        if self._centre_at is not None:
            _apply(np.subtract, flat, self._centre_at.block(rows), flat)
        return flat.reshape(rows.stop - rows.start, -1)

    @property
    def xhat(self):
        if self._xhat is None:
            p = self.plan
            d = self.centred(slice(0, p.n), np.empty(self.x2.size, self.x2.dtype), p.n)
            rstd = _per_nc(p, self.rstd_stat)
            xhat = _data_view(p, d) * (rstd[..., None] if p.s > 1 else rstd)
            self._xhat = xhat.reshape(self.layout.view_shape)
        return self._xhat

    @property
    def rstd(self):
        """1/sqrt(var + eps) in the generic cache's shape (broadcastable against ``xhat``)."""
        return self.rstd_stat.reshape(_stat_shape(self.layout, self.batch_stats, self.plan))

    @property
    def weight(self):
        return None if self.weight_c is None else self.weight_c.reshape(self.layout.param_shape)


def forward(x, layout, plan, weight=None, bias=None, *, eps, stats=None):
    """As `normlab.core.normalize`: returns ``y``, the cache, and the batch ``(mean, var)`` (``None`` in eval)."""
    p = plan
    ctype = np.float32 if x.dtype == np.float16 else x.dtype
    # C order throughout: blocks of rows are then contiguous, and their flat views write through.
    x2 = np.ascontiguousarray(x, dtype=ctype).reshape(p.n, p.c * p.s)
    w = None if weight is None else weight.astype(ctype, copy=False).reshape(p.c)
    b = None if bias is None else bias.astype(ctype, copy=False).reshape(p.c)
    blocks, step = _blocks(p)
    scratch = np.empty(step * p.c * p.s, dtype=ctype)  # one block of d at a time, in the cache

    params = weight if weight is not None else bias
    cache = FastCache(p, x2, None, None, None, None, w, layout, has_bias=bias is not None,
                      batch_stats=stats is None, input_shape=tuple(x.shape), input_dtype=x.dtype,
                      param_dtype=None if params is None else params.dtype,
                      weight_shape=() if params is None else tuple(params.shape))
    if stats is None:
        # Pass 1: Σx and Σx² of each block.
        shift, var = _sum_and_sumsq(p, x2, blocks, None, step, scratch)
        var -= shift * shift
        cache.shift = _per_nc(p, shift)
        if np.all(16 * shift * shift <= var):
            # The data is centred (|mean| <= std/4): E[x²] - mean² then loses at most a tenth of a
            # bit to cancellation, as accurate as two passes, and the backward may use x for d.
            cache.uses_x, cache.mean, centre = True, shift, 0
        else:
            # Corrected two-pass: pass 2 sums d = x - shift and d²; the mean of d, the "centre",
            # corrects the shift's rounding error.
            centre, squares = _sum_and_sumsq(p, x2, blocks, cache, step, scratch)
            var = np.maximum(squares - centre * centre, 0)
        rstd = 1 / np.sqrt(var + eps)
        if np.max(np.abs(centre) * rstd) > np.finfo(ctype).eps:  # the shift was off by more than rounding
            cache.centre, cache._spread_step = _per_nc(p, centre), None
        batch = tuple(a.astype(ctype, copy=False).reshape(_stat_shape(layout, True, p)) for a in (shift + centre, var))
    else:
        mean, var = (np.asarray(a, dtype=ctype).reshape(p.c) for a in stats)
        cache.shift = mean[None, :]
        rstd = 1 / np.sqrt(var + eps)
        batch = None
    cache.rstd_stat = rstd = rstd.astype(ctype, copy=False)

    # Last pass, block by block: read x, write y = scale·d + β, with scale = γ·rstd.
    cache.scale = _scale(p, rstd, w)
    scale_at = _Spread(p, *cache.scale, step)
    y = np.empty(x2.shape, dtype=ctype)
    if cache.uses_x and cache.scale[1] is None:  # y = scale·x + (β - scale·mean): d is never formed
        offset = -(cache.shift * cache.scale[0]) if b is None else b - cache.shift * cache.scale[0]
        offset_at = _Spread(p, offset, None, step)
        for rows in blocks:
            y_rows = _flat(y, rows)
            _apply(np.multiply, _flat(x2, rows), scale_at.block(rows), y_rows)
            _apply(np.add, y_rows, offset_at.block(rows), y_rows)
    else:
        bias_at = None if b is None else _Spread(p, b[None, :], None, step)
        for rows in blocks:
            y_rows = _flat(y, rows)
            _apply(np.multiply, cache.centred(rows, scratch, step).reshape(-1), scale_at.block(rows), y_rows)
            if bias_at is not None:
                _apply(np.add, y_rows, bias_at.block(rows), y_rows)
    return y.reshape(x.shape).astype(x.dtype, copy=False), cache, batch


def backward(dy, cache):
    """As `normlab.core.normalize_backward`, for a `FastCache` and a NumPy ``dy``."""
    c, p, w = cache, cache.plan, cache.weight_c
    dy2 = np.ascontiguousarray(dy, dtype=c.x2.dtype).reshape(p.n, p.c * p.s)
    blocks, step = _blocks(p)
    scratch = np.empty(step * p.c * p.s, dtype=dy2.dtype)
    dbias = dweight = beta = gamma = None
    if c.batch_stats or w is not None or c.has_bias:
        # One pass of two reductions, Σ dy and Σ dy·d; everything else comes from these small sums.
        total_dy, total_dy_xhat, sum_g, sum_g_d = _backward_sums(p, dy2, c, blocks, step, scratch)
        dbias = _param_grad(total_dy, c) if c.has_bias else None
        dweight = _param_grad(total_dy_xhat, c) if w is not None else None
        if c.batch_stats:
            # dx = rstd·(g - mean(g) - x̂·mean(g·x̂)) with g = γ·dy and x̂ = rstd·d, i.e. α·dy + β·d + γ,
            # where α = γ·rstd is the forward's scale.
            r = c.rstd_stat
            beta = -(r * r * r * sum_g_d) / p.count
            gamma = -(r * sum_g) / p.count
            if c.uses_x:  # β·d + γ = β·x + (γ - β·mean)
                gamma = gamma - beta * c.mean

    # Block by block: read dy and x, write dx = α·dy (+ β·d + γ).
    alpha_at = _Spread(p, *c.scale, step)
    if beta is not None:
        beta_at, gamma_at = _Spread(p, _per_nc(p, beta), None, step), _Spread(p, _per_nc(p, gamma), None, step)
    dx = np.empty(dy2.shape, dtype=dy2.dtype)
    for rows in blocks:
        dx_rows = _flat(dx, rows)
        _apply(np.multiply, _flat(dy2, rows), alpha_at.block(rows), dx_rows)
        if beta is not None:
            term = scratch[:dx_rows.size]
            d = _flat(c.x2, rows) if c.uses_x else c.centred(rows, scratch, step).reshape(-1)
            _apply(np.multiply, d, beta_at.block(rows), term)
            np.add(dx_rows, term, out=dx_rows)
            _apply(np.add, dx_rows, gamma_at.block(rows), dx_rows)
    return _finish(dx, c), dweight, dbias


def _backward_sums(p, dy2, c, blocks, step, scratch):
    """Σ dy and Σ dy·x̂ per channel, and Σ γ·dy and Σ γ·dy·d per statistic, in one blocked pass."""
    w, rstd_nc = c.weight_c, _per_nc(p, c.rstd_stat)

    def d_of(rows):  # d = x - mean, or x itself when the sums are corrected afterwards (uses_x)
        return c.x2[rows] if c.uses_x else c.centred(rows, scratch, step)

    if p.s > 1:  # per-(sample, channel) sums over S, then the small (N, C) arrays do the rest
        sum_dy, sum_dy_d = [], []
        for rows in blocks:
            k, d = rows.stop - rows.start, d_of(rows)
            sum_dy.append(_sum_rows(dy2[rows].reshape(-1, p.s)).reshape(k, p.c))
            sum_dy_d.append(np.vecdot(dy2[rows].reshape(k, p.c, p.s), d.reshape(k, p.c, p.s)))
        sum_dy, sum_dy_d = np.concatenate(sum_dy), np.concatenate(sum_dy_d)
        if c.uses_x:  # Σ dy·(x - mean) = Σ dy·x - mean·Σ dy
            sum_dy_d -= c.shift * sum_dy
        if p.per_channel:
            total_dy, total_dy_d = sum_dy.sum(axis=0), sum_dy_d.sum(axis=0)
            return total_dy, c.rstd_stat * total_dy_d, *_weighted(total_dy, total_dy_d, w)
        return (sum_dy.sum(axis=0), _col_sums(sum_dy_d, weights=rstd_nc),
                _stat_sum(p, sum_dy, w), _stat_sum(p, sum_dy_d, w))
    # S == 1: each (sample, channel) holds one value, so the sums run over samples or channels directly.
    total_dy = total_dy_xhat = 0
    sum_g, sum_g_d = [], []
    products = np.empty((step, p.c), dtype=dy2.dtype)
    for rows in blocks:
        dy_rows, d = dy2[rows], d_of(rows)
        total_dy = total_dy + dy_rows.sum(axis=0)
        if p.per_channel:  # BatchNorm1d
            total_dy_xhat = total_dy_xhat + np.einsum("nc,nc->c", dy_rows, d)
        else:  # LayerNorm, or GroupNorm of a 2-D input
            product = np.multiply(dy_rows, d, out=products[:rows.stop - rows.start])
            total_dy_xhat = total_dy_xhat + _col_sums(product, weights=rstd_nc[rows])
            sum_g.append(_stat_sum(p, dy_rows, w))
            sum_g_d.append(_stat_sum(p, product, w))
            if c.uses_x:  # Σ rstd·dy·(x - mean) and Σ γ·dy·(x - mean), from the sums with x
                total_dy_xhat = total_dy_xhat - _col_sums(dy_rows, weights=(rstd_nc * c.shift)[rows])
                sum_g_d[-1] = sum_g_d[-1] - c.mean[rows] * sum_g[-1]
    if p.per_channel:
        if c.uses_x:
            total_dy_xhat = total_dy_xhat - c.mean * total_dy
        return total_dy, c.rstd_stat * total_dy_xhat, *_weighted(total_dy, total_dy_xhat, w)
    return total_dy, total_dy_xhat, np.concatenate(sum_g), np.concatenate(sum_g_d)


def _sum_and_sumsq(p, x2, blocks, cache, step, scratch):
    """Per statistic, the means of x and of x² (``cache=None``), or of d and d² for ``cache.centred``."""
    sums, squares = [], []
    for rows in blocks:
        a = x2[rows] if cache is None else cache.centred(rows, scratch, step)
        sums.append(_block_stat_sum(p, a))
        squares.append(_block_stat_sumsq(p, a))
    return _merge(p, sums) / p.count, _merge(p, squares) / p.count


def _weighted(total_dy, total_dy_d, w):
    """Per channel, Σ γ·dy and Σ γ·dy·d are the totals times γ."""
    return (total_dy, total_dy_d) if w is None else (total_dy * w, total_dy_d * w)


# ---- the (N, C, S) picture ------------------------------------------------------------------------------


def _prod(shape):
    out = 1
    for n in shape:
        out *= n
    return out


def _data_view(p, a):
    """``a`` as (N, C, S), or (N, C) when S == 1 (a trailing axis of length 1 makes NumPy's inner loops crawl)."""
    return a.reshape((p.n, p.c, p.s) if p.s > 1 else (p.n, p.c))


# Elementwise work runs on blocks of whole samples: rows of the data seen as (N, C·S). Each block is
# handed to NumPy flat, next to a coefficient spread out to the same length, because NumPy runs an
# operation between same-shape contiguous arrays much faster than a broadcast against short rows
# (measured here: about 2.5 times faster than multiplying by a per-row coefficient whose rows are
# shorter than NumPy's internal buffer of 8192 elements).
_BLOCK = 1 << 17  # elements per block (512 KiB in float32): a step's blocks stay in the L2 and L3 caches


_MIN_ROW = 16384  # elements per row of a repeating coefficient: long enough for NumPy's fast loops


def _blocks(p):
    """Row slices of the (N, C·S) view, each about `_BLOCK` elements; and the rows per block.

    The rows per block are a multiple of `_samples_per_template`, so every block but perhaps the
    last is a whole number of templates.
    """
    per = _samples_per_template(p)
    step = max(per, _BLOCK // (p.c * p.s) // per * per)
    return [slice(i, min(i + step, p.n)) for i in range(0, p.n, step)], step


def _flat(a2, rows):
    """The rows ``rows`` of a C-contiguous (N, C·S) array, as a flat view (never a copy)."""
    assert a2.flags.c_contiguous, "blocks must be views, which needs a C-contiguous array"
    return a2[rows].reshape(-1)


class _Spread:
    """A (1 or N, C) or (N, 1) coefficient spread to the elements of a block of samples, for `_apply`.

    ``channel``, a (C,) vector, multiplies it when given: LayerNorm's scale rstd[n]·γ[c] is built
    block by block that way, never as a full-size array.
    """

    def __init__(self, p, nc, channel, step):
        if channel is not None and nc.shape[0] == 1:  # one sample: the product is small, form it now
            nc, channel = nc * channel, None
        self.nc, self.repeat = nc, (p.c * p.s) // nc.shape[1]
        self.shared = None
        if nc.shape[0] == 1:  # the same for every sample: one template, built once, repeating along rows
            self.samples = _samples_per_template(p)
            self.shared = np.tile(np.repeat(nc[0], self.repeat), self.samples)
        self.channel = None if channel is None else _Spread(p, channel[None, :], None, step)

    def block(self, rows):
        """The coefficient for the samples ``rows``: flat, either block-long or a repeating template."""
        k = rows.stop - rows.start
        if self.shared is not None:
            if k % self.samples == 0:
                return self.shared
            return np.tile(self.shared[:self.shared.size // self.samples], k)
        spread = np.repeat(self.nc[rows], self.repeat, axis=1).reshape(-1)
        if self.channel is not None:
            _apply(np.multiply, spread, self.channel.block(rows), spread)
        return spread


def _samples_per_template(p):
    """Samples in a repeating template: enough for rows of `_MIN_ROW` elements (see `_apply`)."""
    return -(-_MIN_ROW // (p.c * p.s))


def _apply(ufunc, flat, coefficient, out):
    """``ufunc(flat, coefficient)`` into ``out``; a shorter coefficient repeats along rows of its length."""
    if coefficient.size != flat.size:
        flat, out = flat.reshape(-1, coefficient.size), out.reshape(-1, coefficient.size)
    return ufunc(flat, coefficient, out=out)


def _scale(p, rstd, w):
    """γ·rstd as `_Spread` arguments: one small array, or LayerNorm's (N, 1) rstd and (C,) γ kept apart."""
    rstd_nc = _per_nc(p, rstd)
    if w is None or rstd_nc.shape[1] == p.c:
        return (rstd_nc if w is None else rstd_nc * w), None
    return rstd_nc, w


def _block_stat_sum(p, block):
    """Σ of a block of samples (k, C·S) per statistic: (C,) per channel, or (k, G) per (sample, group)."""
    if p.per_channel:
        if p.s == 1:
            return block.sum(axis=0)
        return _sum_rows(block.reshape(-1, p.s)).reshape(-1, p.c).sum(axis=0)
    span = block.shape[1] // p.groups
    return _sum_rows(block.reshape(-1, span)).reshape(-1, p.groups)


def _block_stat_sumsq(p, block):
    """Σ of squares of a block, per statistic, shaped like `_block_stat_sum`."""
    if p.per_channel:
        if p.s == 1:
            return np.einsum("nc,nc->c", block, block)
        per_row = block.reshape(-1, p.c, p.s)
        return np.vecdot(per_row, per_row).sum(axis=0)
    grouped = block.reshape(block.shape[0], p.groups, -1)
    return np.vecdot(grouped, grouped)


def _merge(p, parts):
    """Block results into one statistic: per channel they add up; per sample they stack."""
    return np.sum(parts, axis=0) if p.per_channel else np.concatenate(parts, axis=0)


def _per_nc(p, stat):
    """A statistic spread to (N or 1, C): per channel -> (1, C); per (n, group) -> (N, C) or (N, 1)."""
    if p.per_channel:
        return stat[None, :]
    if p.groups == 1:
        return stat  # (N, 1) broadcasts over the channels without a copy
    return np.repeat(stat, p.c // p.groups, axis=1)


def _sum_rows(a2):
    """Σ along the rows of a 2-D array, as one dot product per row (one read, no temporary).

    Single-threaded on purpose: a multi-threaded BLAS call between NumPy's single-threaded passes
    must first wake its sleeping threads, which on a busy machine can cost more than the sum itself.
    """
    return np.vecdot(a2, np.ones(a2.shape[1], dtype=a2.dtype))


def _row_sums(p, a):
    """Σ over S, shape (N, C). With S == 1 that is ``a`` itself."""
    if p.s == 1:
        return a
    return _sum_rows(a.reshape(p.n * p.c, p.s)).reshape(p.n, p.c)


def _col_sums(nc, weights=None):
    """Σ over N of an (N, C) array, optionally weighting row n by ``weights[n]`` ((1, C), (N, C) or (N, 1))."""
    if weights is None:
        return nc.sum(axis=0)
    if weights.shape[0] == 1:
        return weights[0] * nc.sum(axis=0)
    if weights.shape[1] == 1:
        return np.einsum("n,nc->c", weights[:, 0], nc)
    return np.einsum("nc,nc->c", weights, nc)


def _stat_sum(p, nc, weight=None):
    """From per-(n, c) sums to per-statistic sums, optionally weighting channel c by ``weight[c]``."""
    if p.per_channel:
        total = _col_sums(nc)
        return total if weight is None else total * weight
    if p.groups == 1:
        return (_sum_rows(nc) if weight is None else np.vecdot(nc, weight))[:, None]
    grouped = nc.reshape(nc.shape[0], p.groups, -1)
    if weight is None:
        return grouped.sum(axis=2)
    return np.einsum("ngk,gk->ng", grouped, weight.reshape(p.groups, -1))


def _stat_shape(layout, batch_stats, p):
    """The shape of a statistic in the generic core (its view shape with the reduced axes kept as 1)."""
    if not batch_stats:
        return tuple(layout.param_shape)
    return tuple(1 if i in layout.reduce else n for i, n in enumerate(layout.view_shape))


def _finish(dx, cache):
    return dx.reshape(cache.input_shape).astype(cache.input_dtype, copy=False)


def _param_grad(summed, cache):
    return summed.reshape(cache.weight_shape).astype(cache.param_dtype, copy=False)
