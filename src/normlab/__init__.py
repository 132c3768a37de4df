"""normlab: BatchNorm, LayerNorm, InstanceNorm, GroupNorm, RMSNorm and LocalResponseNorm from scratch,
exact to PyTorch.

One core (`normlab.core`) normalizes over a set of axes; each norm only says
which axes (`normlab.axes`). Inputs may be NumPy, CuPy, torch or any Array API
array; outputs come back as the same type, on the same device.
"""
from . import axes, core, functional, gradcheck, nn, paths, running_stats
from .batch_norm import batch_norm_backward, batch_norm_forward
from .fold import fold_batch_norm
from .group_norm import group_norm_backward, group_norm_forward
from .instance_norm import instance_norm_backward, instance_norm_forward
from .kernels.threads import get_num_threads, set_num_threads
from .layer_norm import layer_norm_backward, layer_norm_forward
from .local_response_norm import local_response_norm_backward, local_response_norm_forward
from .rms_norm import rms_norm_backward, rms_norm_forward

__version__ = "0.1.0"

__all__ = [
    "batch_norm_forward", "batch_norm_backward",
    "layer_norm_forward", "layer_norm_backward",
    "group_norm_forward", "group_norm_backward",
    "instance_norm_forward", "instance_norm_backward",
    "rms_norm_forward", "rms_norm_backward",
    "local_response_norm_forward", "local_response_norm_backward",
    "set_num_threads", "get_num_threads",
    "fold_batch_norm", "functional", "nn", "gradcheck", "running_stats", "axes", "core", "paths",
]
