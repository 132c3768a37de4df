"""Forward-only functions with exactly the signatures and defaults of ``torch.nn.functional``."""
from .batch_norm import batch_norm_forward
from .group_norm import group_norm_forward
from .instance_norm import instance_norm_forward
from .layer_norm import layer_norm_forward
from .local_response_norm import local_response_norm_forward
from .rms_norm import rms_norm_forward

__all__ = ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm"]


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """As ``torch.nn.functional.batch_norm``: running buffers updated in place when training."""
    return batch_norm_forward(input, weight, bias, running_mean=running_mean, running_var=running_var,
                              training=training, momentum=momentum, eps=eps)[0]


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """As ``torch.nn.functional.layer_norm``."""
    return layer_norm_forward(input, normalized_shape, weight, bias, eps=eps)[0]


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """As ``torch.nn.functional.group_norm``."""
    return group_norm_forward(input, num_groups, weight, bias, eps=eps)[0]


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    """As ``torch.nn.functional.instance_norm``."""
    return instance_norm_forward(input, weight, bias, running_mean=running_mean, running_var=running_var,
                                 use_input_stats=use_input_stats, momentum=momentum, eps=eps)[0]


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """As ``torch.nn.functional.rms_norm``: ``eps=None`` is the compute dtype's machine epsilon."""
    return rms_norm_forward(input, normalized_shape, weight, eps=eps)[0]


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0):
    """As ``torch.nn.functional.local_response_norm``."""
    return local_response_norm_forward(input, size, alpha, beta, k)[0]
