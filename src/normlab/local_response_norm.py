r"""LocalResponseNorm (AlexNet's): each value divided by the energy of its neighbouring channels.

Input ``x`` of shape (N, C, *) (rank >= 3). For channel c, over the window
W(c) of ``size`` channels from c - size//2 to c + (size-1)//2, zero outside
0..C-1 (torch's padding):

.. math::
    s_c = k + \frac{\alpha}{n} \sum_{j \in W(c)} x_j^2, \qquad y_c = x_c\, s_c^{-\beta}

with n = ``size``. There are no parameters and no statistics. The backward:

.. math::
    dx_i = dy_i\, s_i^{-\beta}
         - \frac{2\alpha\beta}{n}\, x_i \sum_{c:\, i \in W(c)} dy_c\, x_c\, s_c^{-\beta-1}

where the channels c whose window holds i run from i - (size-1)//2 to
i + size//2: the same window, mirrored.
"""
import math
import operator
from dataclasses import dataclass

from ._backend import compute_dtype, device, namespace
from ._checks import require_rank

_OP = "local_response_norm"


@dataclass
class LocalResponseNormCache:
    x: object  # the input, compute dtype
    s: object  # k + α/n·Σ_window x², compute dtype
    size: int
    alpha: float
    beta: float
    input_dtype: object


def local_response_norm_forward(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """LocalResponseNorm forward. Returns ``(y, cache)``."""
    require_rank(x, 3, _OP, "(N, C, *)")
    try:
        size = operator.index(size)
    except TypeError:
        raise ValueError(f"{_OP}: size must be an integer >= 1, got {size!r}") from None
    if size < 1:
        raise ValueError(f"{_OP}: size must be an integer >= 1, got {size}")
    for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{_OP}: {name} must be a finite number, got {value!r}")
    xp = namespace(x)
    xc = xp.astype(x, compute_dtype(xp, x.dtype), copy=False)
    s = k + alpha * (_window_sum(xp, xc * xc, size // 2, (size - 1) // 2) / size)
    y = xc / s**beta
    return xp.astype(y, x.dtype, copy=False), LocalResponseNormCache(xc, s, size, alpha, beta, x.dtype)


def local_response_norm_backward(dy, cache):
    """Returns ``(dx, None, None)``: the layer has no parameters."""
    c = cache
    if tuple(dy.shape) != tuple(c.x.shape):
        raise ValueError(f"dy has shape {tuple(dy.shape)}, but the forward input had shape {tuple(c.x.shape)}")
    xp = namespace(dy, c.x)
    dyc = xp.astype(dy, c.x.dtype, copy=False)
    through_s = _window_sum(xp, dyc * c.x * c.s ** (-c.beta - 1), (c.size - 1) // 2, c.size // 2)
    dx = dyc / c.s**c.beta - (2 * c.alpha * c.beta / c.size) * c.x * through_s
    return xp.astype(dx, c.input_dtype, copy=False), None, None


def _window_sum(xp, a, before, after):
    """Σ of ``a`` over channels c - before .. c + after, for every channel c (axis 1), zero outside."""
    channels = a.shape[1]

    def zeros(count):
        return xp.zeros((a.shape[0], count, *a.shape[2:]), dtype=a.dtype, device=device(a))

    padded = xp.concat([zeros(before), a, zeros(after)], axis=1)
    total = padded[:, 0:channels, ...]
    for offset in range(1, before + after + 1):
        total = total + padded[:, offset:offset + channels, ...]
    return total
