r"""LayerNorm: one mean and variance per sample, over the trailing ``normalized_shape`` axes.

Input ``x`` of shape (*, *normalized_shape); ``weight`` and ``bias`` have shape
``normalized_shape`` and act elementwise:

.. math::
    y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot \gamma + \beta

There are no running statistics: training and eval compute the same thing.
"""
import operator

from ._checks import require_eps, require_shape
from .axes import layer_layout
from .core import normalize, normalize_backward

_OP = "layer_norm"


def as_shape(normalized_shape):
    try:
        return (operator.index(normalized_shape),)
    except TypeError:
        return tuple(operator.index(n) for n in normalized_shape)


def require_trailing_shape(x, normalized_shape, op):
    """``normalized_shape`` as a tuple, checked to be the input's trailing dimensions."""
    shape = as_shape(normalized_shape)
    k = len(shape)
    if k == 0 or x.ndim < k or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(
            f"{op}: normalized_shape {shape} must equal the trailing dimensions of the input, "
            f"got input of shape {tuple(x.shape)}"
        )
    return shape


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, *, eps=1e-5):
    """LayerNorm forward. Returns ``(y, cache)``."""
    shape = require_trailing_shape(x, normalized_shape, _OP)
    for name, a in (("weight", weight), ("bias", bias)):
        require_shape(name, a, shape, _OP, x)
    require_eps(eps, _OP)
    y, cache, _ = normalize(x, layer_layout(x.shape, shape), weight, bias, eps=eps)
    return y, cache


def layer_norm_backward(dy, cache):
    """Returns ``(dx, dweight, dbias)``; ``dweight`` and ``dbias`` have shape ``normalized_shape``."""
    return normalize_backward(dy, cache)
