"""Run normlab's forward and hand-derived backward inside torch autograd.

`NormFunction` is a ``torch.autograd.Function`` whose backward is normlab's
hand-derived one (`normlab.core.normalize_backward`), not torch's. The modules
subclass torch's own norm layers, so parameters, buffers, ``state_dict`` and
``repr`` are torch's; only ``forward`` is normlab's. `convert_norms` swaps them
into an existing model, and `fold_into` merges an eval BatchNorm into the layer
before it.

CPU tensors of a dtype NumPy has reach normlab as NumPy views of the same
memory (no copy), so they take normlab's fast paths (`normlab.paths`), and the
results come back as tensors over the NumPy arrays, again without a copy;
running buffers are updated in place through their views. Other tensors (CUDA,
bfloat16) run through the generic core on torch operations.
"""
from functools import partial

import torch
from torch import nn as tnn

from .batch_norm import batch_norm_forward
from .core import normalize_backward
from .fold import fold_batch_norm
from .group_norm import group_norm_forward
from .instance_norm import instance_norm_forward
from .layer_norm import layer_norm_forward
from .local_response_norm import local_response_norm_backward, local_response_norm_forward
from .rms_norm import rms_norm_forward

__all__ = ["NormFunction", "BatchNorm", "GroupNorm", "LayerNorm", "InstanceNorm", "RMSNorm", "LocalResponseNorm",
           "convert_norms", "fold_into"]

_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)


def on_host(*tensors):
    """True when NumPy can view every given tensor without a copy (CPU, a dtype NumPy has)."""
    return all(t is None or (t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES) for t in tensors)


def view(t, host):
    """``t`` detached, as a NumPy view of its memory when ``host``."""
    if t is None:
        return None
    return t.detach().numpy() if host else t.detach()


def _tensor(a):
    return None if a is None or isinstance(a, torch.Tensor) else torch.from_numpy(a)


class NormFunction(torch.autograd.Function):
    """``y = forward_fn(x, weight, bias)`` with normlab's ``backward_fn``; ``forward_fn`` returns ``(y, cache)``.

    ``host`` (see `on_host`) passes NumPy views instead of tensors.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, forward_fn, backward_fn=normalize_backward, host=False):
        y, ctx.cache = forward_fn(*(view(t, host) for t in (x, weight, bias)))
        ctx.backward_fn, ctx.host = backward_fn, host
        return _tensor(y) if host else y

    @staticmethod
    def backward(ctx, dy):
        host = ctx.host and on_host(dy)
        grads = ctx.backward_fn(view(dy, host) if host else dy, ctx.cache)
        return (*(_tensor(g) if host else g for g in grads), None, None, None)


class BatchNorm(tnn.modules.batchnorm._BatchNorm):
    """Drop-in for ``nn.BatchNorm1d/2d/3d`` (any rank >= 2) with normlab's forward and backward."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank >= 2, got shape {tuple(input.shape)}")

    def forward(self, x):
        updating = self.training and self.track_running_stats
        momentum = self.momentum
        if updating and momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked + 1)
        host = on_host(x, self.weight, self.bias, self.running_mean, self.running_var)
        fn = partial(batch_norm_forward, running_mean=view(self.running_mean, host),
                     running_var=view(self.running_var, host),
                     training=self.training or not self.track_running_stats, momentum=momentum, eps=self.eps)
        y = NormFunction.apply(x, self.weight, self.bias, fn, normalize_backward, host)
        if updating:
            self.num_batches_tracked.add_(1)
        return y


class InstanceNorm(tnn.modules.instancenorm._InstanceNorm):
    """Drop-in for ``nn.InstanceNorm1d/2d/3d`` (batched input, rank >= 3)."""

    def _check_input_dim(self, input):
        if input.dim() < 3:
            raise ValueError(f"expected an input of rank >= 3, got shape {tuple(input.shape)}")

    def _get_no_batch_dim(self):
        return -1  # unbatched input is not supported: every rank is batched here

    def forward(self, x):
        self._check_input_dim(x)
        host = on_host(x, self.weight, self.bias, self.running_mean, self.running_var)
        fn = partial(instance_norm_forward, running_mean=view(self.running_mean, host),
                     running_var=view(self.running_var, host),
                     use_input_stats=self.training or not self.track_running_stats,
                     momentum=0.0 if self.momentum is None else self.momentum, eps=self.eps)
        return NormFunction.apply(x, self.weight, self.bias, fn, normalize_backward, host)


class GroupNorm(tnn.GroupNorm):
    """Drop-in for ``nn.GroupNorm``."""

    def forward(self, x):
        fn = partial(group_norm_forward, num_groups=self.num_groups, eps=self.eps)
        return NormFunction.apply(x, self.weight, self.bias, lambda x, w, b: fn(x, weight=w, bias=b),
                                  normalize_backward, on_host(x, self.weight, self.bias))


class LayerNorm(tnn.LayerNorm):
    """Drop-in for ``nn.LayerNorm``."""

    def forward(self, x):
        fn = partial(layer_norm_forward, normalized_shape=self.normalized_shape, eps=self.eps)
        return NormFunction.apply(x, self.weight, self.bias, lambda x, w, b: fn(x, weight=w, bias=b),
                                  normalize_backward, on_host(x, self.weight, self.bias))


class RMSNorm(tnn.RMSNorm):
    """Drop-in for ``nn.RMSNorm``."""

    def forward(self, x):
        fn = partial(rms_norm_forward, normalized_shape=self.normalized_shape, eps=self.eps)
        return NormFunction.apply(x, self.weight, None, lambda x, w, b: fn(x, weight=w),
                                  normalize_backward, on_host(x, self.weight))


class LocalResponseNorm(tnn.LocalResponseNorm):
    """Drop-in for ``nn.LocalResponseNorm``."""

    def forward(self, x):
        fn = partial(local_response_norm_forward, size=self.size, alpha=self.alpha, beta=self.beta, k=self.k)
        return NormFunction.apply(x, None, None, lambda x, w, b: fn(x), local_response_norm_backward, on_host(x))


_REPLACEMENTS = (
    (tnn.modules.batchnorm._BatchNorm, BatchNorm),
    (tnn.modules.instancenorm._InstanceNorm, InstanceNorm),
    (tnn.GroupNorm, GroupNorm),
    (tnn.LayerNorm, LayerNorm),
    (tnn.RMSNorm, RMSNorm),
    (tnn.LocalResponseNorm, LocalResponseNorm),
)


def convert_norms(model):
    """Replace, in place, every torch norm layer in ``model`` by its normlab twin, keeping its state."""
    for name, child in model.named_children():
        for torch_type, twin in _REPLACEMENTS:
            if isinstance(child, torch_type) and not isinstance(child, twin):
                replacement = _twin_of(child, twin)
                setattr(model, name, replacement)
                break
        else:
            convert_norms(child)
    return model


def _twin_of(module, twin):
    replacement = twin.__new__(twin)
    replacement.__dict__.update(module.__dict__)  # same parameters, buffers and hyperparameters
    return replacement


def fold_into(layer, bn):
    """A copy of ``layer`` (``nn.Linear`` or ``nn.ConvNd``) with the eval-mode ``bn`` after it folded in."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError("fold_into needs a BatchNorm that tracks running statistics")
    out = layer.weight.shape[0]
    if bn.num_features != out:
        raise ValueError(f"fold_into: BatchNorm has {bn.num_features} features but the layer has {out} outputs")
    with torch.no_grad():
        weight, bias = fold_batch_norm(
            layer.weight.detach(), None if layer.bias is None else layer.bias.detach(),
            bn.running_mean, bn.running_var,
            None if bn.weight is None else bn.weight.detach(), None if bn.bias is None else bn.bias.detach(), bn.eps,
        )
        folded = _copy_with_bias(layer)
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    return folded


def _copy_with_bias(layer):
    import copy

    folded = copy.deepcopy(layer)
    if folded.bias is None:
        folded.bias = tnn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                                device=layer.weight.device))
    return folded
