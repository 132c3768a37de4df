r"""The one normalization core that every norm shares (BatchNorm, LayerNorm, InstanceNorm, GroupNorm, RMSNorm).

Forward, over the reduction set :math:`R` of a `Layout` (:math:`m = |R|`):

.. math::
    \mu = \tfrac1m \sum_R x, \qquad
    \sigma^2 = \tfrac1m \sum_R (x-\mu)^2, \qquad
    \hat x = \frac{x-\mu}{\sqrt{\sigma^2+\epsilon}}, \qquad
    y = \gamma \hat x + \beta

Backward, with :math:`g = \gamma \cdot dy` and :math:`r = 1/\sqrt{\sigma^2+\epsilon}`:

.. math::
    dx = r\,\bigl(g - \overline{g} - \hat x\,\overline{g \hat x}\bigr), \qquad
    d\gamma = \textstyle\sum dy\,\hat x, \qquad d\beta = \sum dy

where bars average over :math:`R`. When the statistics are constants (eval
mode), the two averaged terms vanish and :math:`dx = r\,g`.

A layout that does not centre (RMSNorm) takes :math:`\mu = 0`, so that
:math:`\sigma^2` is the mean square; its backward loses the :math:`\overline{g}`
term, which came from differentiating :math:`\mu`.

This module is the reference. `normlab.paths` may hand a call to a faster
path that computes the same thing (`normalize` asks it first); its caches
offer every attribute of `NormCache`, so `normalize_backward` takes them too.
"""
from dataclasses import dataclass

from . import paths
from ._backend import compute_dtype, device, namespace, numel
from .axes import Layout


@dataclass
class NormCache:
    """What the backward pass needs; produced by `normalize` and consumed by `normalize_backward`."""

    xhat: object  # normalized input, shape layout.view_shape, compute dtype
    rstd: object  # 1/sqrt(var + eps), broadcastable against xhat
    layout: Layout
    weight: object  # γ in compute dtype reshaped to layout.param_shape, or None
    weight_shape: tuple  # γ's own shape, for dγ/dβ
    has_bias: bool
    batch_stats: bool  # False when the statistics were constants (eval)
    input_shape: tuple
    input_dtype: object
    param_dtype: object


def compute_stats(x, reduce, centre=True):
    """Mean and biased variance over ``reduce`` (keepdims), and ``x - mean``.

    Without centring the mean is 0 and the variance is the mean square.

    Corrected two-pass: shift by a first estimate of the mean, then average
    the (small, exactly computed) deviations. This stays accurate for float32
    data whose mean is large compared with its spread, where E[x²]-E[x]² and
    even a plain two-pass mean lose the digits that matter.
    """
    xp = namespace(x)
    if not centre:
        mean_square = xp.mean(x * x, axis=reduce, keepdims=True)
        return xp.zeros_like(mean_square), mean_square, x
    shift = xp.mean(x, axis=reduce, keepdims=True)
    d = x - shift
    correction = xp.mean(d, axis=reduce, keepdims=True)
    var = xp.mean(d * d, axis=reduce, keepdims=True) - correction * correction
    var = xp.maximum(var, xp.zeros_like(var))
    return shift + correction, var, d - correction


def normalize(x, layout, weight=None, bias=None, *, eps, stats=None):
    """Normalize ``x`` over ``layout`` and apply the affine map.

    ``stats=None`` takes the batch statistics; otherwise ``stats=(mean, var)``
    are constants broadcastable in the view shape (running statistics in eval).

    Returns ``y`` (input shape and dtype), the `NormCache`, and the batch
    ``(mean, biased_var)`` in the compute dtype (``None`` when ``stats`` were given).
    """
    fast = paths.select(x, layout, weight, bias, stats)
    if fast is not None:  # the same result with fewer passes over memory
        return fast.forward(x, layout, weight, bias, eps=eps, stats=stats)
    xp = namespace(x, weight, bias)
    ctype = compute_dtype(xp, x.dtype)
    xv = xp.reshape(xp.astype(x, ctype, copy=False), layout.view_shape)

    if stats is None:
        if numel(x.shape) == 0:  # nothing to average: torch returns an empty output and no update
            zeros = xp.zeros(layout.stat_shape, dtype=ctype, device=device(x))
            mean, var, centered = zeros, zeros, xv
        else:
            mean, var, centered = compute_stats(xv, layout.reduce, layout.centre)
        batch = (mean, var)
    else:
        mean, var = (xp.astype(s, ctype, copy=False) for s in stats)
        centered, batch = xv - mean, None
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = centered * rstd

    y = xp.reshape(xhat, x.shape)
    w = None if weight is None else xp.reshape(xp.astype(weight, ctype, copy=False), layout.param_shape)
    if w is not None:
        y = y * w
    if bias is not None:
        y = y + xp.reshape(xp.astype(bias, ctype, copy=False), layout.param_shape)

    params = weight if weight is not None else bias
    cache = NormCache(
        xhat=xhat,
        rstd=rstd,
        layout=layout,
        weight=w,
        weight_shape=tuple(params.shape) if params is not None else (),
        has_bias=bias is not None,
        batch_stats=stats is None,
        input_shape=tuple(x.shape),
        input_dtype=x.dtype,
        param_dtype=params.dtype if params is not None else None,
    )
    return xp.astype(y, x.dtype, copy=False), cache, batch


def normalize_backward(dy, cache):
    """Gradients ``(dx, dweight, dbias)`` of `normalize`; ``dweight``/``dbias`` are ``None`` without γ/β."""
    c = cache
    if tuple(dy.shape) != c.input_shape:
        raise ValueError(f"dy has shape {tuple(dy.shape)}, but the forward input had shape {c.input_shape}")
    fast = paths.select_backward(dy, c)
    if fast is not None:
        return fast.backward(dy, c)
    xp = namespace(dy, c.xhat)
    dyc = xp.astype(dy, c.xhat.dtype, copy=False)

    param_axes = _param_reduce_axes(len(c.input_shape), c.layout.param_shape)
    dweight = dbias = None
    if c.has_bias:
        dbias = _param_grad(xp, xp.sum(dyc, axis=param_axes), c)
    if c.weight is not None:
        xhat = xp.reshape(c.xhat, c.input_shape)
        dweight = _param_grad(xp, xp.sum(dyc * xhat, axis=param_axes), c)

    g = dyc if c.weight is None else dyc * c.weight
    g = xp.reshape(g, c.layout.view_shape)
    if c.batch_stats and numel(c.input_shape) > 0:
        r = c.layout.reduce
        projection = c.xhat * xp.mean(g * c.xhat, axis=r, keepdims=True)
        if c.layout.centre:
            g = g - xp.mean(g, axis=r, keepdims=True)
        g = g - projection
    dx = xp.reshape(g * c.rstd, c.input_shape)
    return xp.astype(dx, c.input_dtype, copy=False), dweight, dbias


def _param_reduce_axes(ndim, param_shape):
    """Axes of the input along which γ is broadcast, i.e. the axes dγ sums over."""
    padded = (1,) * (ndim - len(param_shape)) + tuple(param_shape)
    return tuple(i for i, n in enumerate(padded) if n == 1)


def _param_grad(xp, summed, cache):
    return xp.astype(xp.reshape(summed, cache.weight_shape), cache.param_dtype, copy=False)
