r"""RMSNorm: LayerNorm without centring; one root mean square per sample, over the trailing axes.

Input ``x`` of shape (*, *normalized_shape); ``weight`` has shape
``normalized_shape`` and acts elementwise; there is no bias:

.. math::
    y = \frac{x}{\sqrt{\tfrac1m \sum x^2 + \epsilon}} \odot \gamma

``eps=None`` (torch's default) is the machine epsilon of the compute dtype:
float32's for float16 and bfloat16 input, which are computed in float32.
The core does the work with a layout that does not centre
(`normlab.axes.rms_layout`), so the backward is LayerNorm's without the
term that came from the mean.
"""
import math

from ._backend import compute_dtype, namespace
from ._checks import require_shape
from .axes import rms_layout
from .core import normalize, normalize_backward
from .layer_norm import require_trailing_shape

_OP = "rms_norm"


def rms_norm_forward(x, normalized_shape, weight=None, *, eps=None):
    """RMSNorm forward. Returns ``(y, cache)``."""
    shape = require_trailing_shape(x, normalized_shape, _OP)
    require_shape("weight", weight, shape, _OP, x)
    if eps is None:
        xp = namespace(x, weight)
        eps = float(xp.finfo(compute_dtype(xp, x.dtype)).eps)
    elif not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{_OP}: eps must be None or a finite number >= 0, got {eps!r}")
    y, cache, _ = normalize(x, rms_layout(x.shape, shape), weight, None, eps=eps)
    return y, cache


def rms_norm_backward(dy, cache):
    """Returns ``(dx, dweight, None)``; ``dweight`` has shape ``normalized_shape`` (None without weight)."""
    return normalize_backward(dy, cache)
