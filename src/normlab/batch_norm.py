r"""BatchNorm: one mean and variance per channel, over the batch and every spatial axis.

Input ``x`` of shape (N, C, *) (rank >= 2); ``weight``, ``bias``, ``running_mean``
and ``running_var`` of shape (C,). For each channel c, over the
m = N·prod(*) values of that channel:

.. math::
    y = \frac{x - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}}\,\gamma_c + \beta_c

Training uses the batch's biased variance and, when running buffers are given,
updates them in place: ``running = (1 - momentum)·running + momentum·batch``,
storing the unbiased variance ``σ²·m/(m-1)``. Eval uses the running buffers.

The core may hand the work to a fast path (`normlab.paths`: compiled CPU
kernels, fused CUDA kernels), with the same results.
"""
from ._backend import namespace, numel
from ._checks import (
    require_eps,
    require_momentum,
    require_more_than_one_value_per_channel,
    require_per_channel,
)
from .axes import batch_layout
from .core import normalize, normalize_backward
from .running_stats import unbiased_var, update_running_stats

_OP = "batch_norm"


def batch_norm_forward(x, weight=None, bias=None, *, running_mean=None, running_var=None,
                       training=True, momentum=0.1, eps=1e-5):
    """BatchNorm forward. Returns ``(y, cache)``; ``y`` has the shape, dtype and backend of ``x``.

    Running buffers, when given, are updated in place in training, and are
    required in eval. ``momentum`` must be a number here; ``momentum=None``
    (a cumulative average) needs a batch count, which `normlab.nn.BatchNorm` keeps.
    """
    require_per_channel(x, _OP, 2, "(N, C, *)", weight=weight, bias=bias,
                        running_mean=running_mean, running_var=running_var)
    channels = x.shape[1]
    layout = batch_layout(x.shape)

    if not training:
        if running_mean is None:
            raise ValueError(
                f"{_OP}: eval mode (training=False) needs running_mean and running_var of shape ({channels},) "
                f"for input of shape {tuple(x.shape)}"
            )
        if not eps >= 0:
            raise ValueError(f"{_OP}: eps must be >= 0, got {eps!r}")
        xp = namespace(x, running_mean)
        stats = tuple(xp.reshape(s, layout.param_shape) for s in (running_mean, running_var))
        y, cache, _ = normalize(x, layout, weight, bias, eps=eps, stats=stats)
        return y, cache

    require_eps(eps, _OP)
    if running_mean is not None:
        if momentum is None:
            raise ValueError(
                f"{_OP}: momentum=None (a cumulative average) needs the batch count kept by normlab.nn.BatchNorm; "
                "with bare buffers pass momentum=1/k for the k-th batch"
            )
        require_momentum(momentum, _OP)
    require_more_than_one_value_per_channel(x)
    y, cache, batch = normalize(x, layout, weight, bias, eps=eps)
    if running_mean is not None and numel(x.shape) > 0:
        mean, var = batch
        xp = namespace(x)
        n = numel(x.shape) // channels
        mean, var = xp.reshape(mean, (channels,)), xp.reshape(var, (channels,))
        update_running_stats(running_mean, running_var, mean, unbiased_var(var, n), momentum)
    return y, cache


def batch_norm_backward(dy, cache):
    """Returns ``(dx, dweight, dbias)``. In eval the statistics are constants, so ``dx = γ·dy/√(var+ε)``."""
    return normalize_backward(dy, cache)
