"""Layers with state: parameters, running buffers, train/eval, and a torch-compatible state_dict.

Each layer works for any rank its op accepts. Parameters and buffers start
as NumPy arrays of the layer's ``dtype`` (float32 unless the constructor's
``dtype=`` says otherwise, as torch's factory argument) and move to the
input's array library and device on the first call with such an input, so the
same layer runs on NumPy, CuPy or torch.

Input dtypes: an input of the layer's dtype, or a narrower float (float16 and
bfloat16 are computed in float32 and returned in their own dtype). A wider
input (float64 into a float32 layer) is a ValueError that leaves the layer as
it was: its buffers and gradients would otherwise silently stay float32.
"""
import numpy as np

from ._backend import convert, namespace, to_host
from .batch_norm import batch_norm_forward
from .core import normalize_backward
from .group_norm import group_norm_forward
from .instance_norm import instance_norm_forward
from .layer_norm import as_shape, layer_norm_forward
from .local_response_norm import local_response_norm_backward, local_response_norm_forward
from .rms_norm import rms_norm_forward
from .running_stats import cumulative_momentum

__all__ = ["BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm", "LocalResponseNorm", "Dropout"]

_LAYER_DTYPES = ("float16", "float32", "float64")


def layer_dtype(dtype):
    """A NumPy dtype from ``None`` (float32), a NumPy dtype or name, or a torch dtype."""
    if dtype is None:
        return np.dtype(np.float32)
    name = str(np.dtype(dtype) if isinstance(dtype, type) else dtype).removeprefix("torch.")
    if name not in _LAYER_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_LAYER_DTYPES)} (or None for float32), got {dtype!r}")
    return np.dtype(name)


class _Norm:
    _arrays = ("weight", "bias", "running_mean", "running_var")
    _op_backward = staticmethod(normalize_backward)

    def __init__(self, dtype=None):
        self.dtype = layer_dtype(dtype)
        self.training = True
        self.grads = {"weight": None, "bias": None}
        self._cache = None

    def __call__(self, x):
        return self.forward(x)

    def _require_dtype(self, x):
        """Refuse, before any work, an input wider than the layer (see the module docstring)."""
        xp = namespace(x)
        if not xp.isdtype(x.dtype, "real floating"):
            raise ValueError(f"{type(self).__name__} expects a floating-point input, got dtype {x.dtype}")
        if xp.finfo(x.dtype).bits > self.dtype.itemsize * 8:
            name = str(x.dtype).removeprefix("torch.")
            raise ValueError(
                f"{type(self).__name__}: input dtype {name} is wider than the layer's dtype {self.dtype}; "
                f"create the layer with dtype={name} (torch's factory argument) or cast the input to "
                f"{self.dtype}"
            )

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def backward(self, dy):
        """Gradient w.r.t. the last forward's input; fills ``grads['weight']`` and ``grads['bias']``."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward()")
        dx, dweight, dbias = self._op_backward(dy, self._cache)
        self.grads = {"weight": dweight, "bias": dbias}
        return dx

    def state_dict(self):
        """Torch's keys: weight, bias, running_mean, running_var, num_batches_tracked (those this layer has)."""
        state = {k: getattr(self, k, None) for k in self._arrays}
        if getattr(self, "track_running_stats", False):
            state["num_batches_tracked"] = self.num_batches_tracked
        return {k: v for k, v in state.items() if v is not None}

    def load_state_dict(self, state_dict):
        """Load NumPy arrays or torch tensors. All keys and shapes are checked before anything changes."""
        current = self.state_dict()
        missing, unexpected = set(current) - set(state_dict), set(state_dict) - set(current)
        if missing or unexpected:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}"
            )
        staged = {}
        for key, value in state_dict.items():
            if key == "num_batches_tracked":
                staged[key] = int(to_host(value))
                continue
            host = np.asarray(to_host(value))
            if host.shape != tuple(current[key].shape):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {key} has shape {host.shape}, "
                    f"expected {tuple(current[key].shape)}"
                )
            staged[key] = convert(np.array(host, dtype=self.dtype, copy=True), like=current[key])  # torch's copy_
        for key, value in staged.items():
            setattr(self, key, value)

    def _adopt(self, x):
        """Check ``x``'s dtype, then move parameters and buffers to its library and device (no-op when there)."""
        self._require_dtype(x)
        for key in self._arrays:
            value = getattr(self, key, None)
            if value is not None:
                setattr(self, key, convert(value, like=x))

    def _affine_params(self, shape, enabled, with_bias=True):
        self.weight = np.ones(shape, dtype=self.dtype) if enabled else None
        self.bias = np.zeros(shape, dtype=self.dtype) if enabled and with_bias else None

    def _init_per_channel(self, num_features, eps, momentum, affine, track_running_stats):
        """BatchNorm's and InstanceNorm's shared state: (C,) parameters and, when tracking, running buffers."""
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self._affine_params((num_features,), affine)
        self.running_mean = np.zeros(num_features, dtype=self.dtype) if track_running_stats else None
        self.running_var = np.ones(num_features, dtype=self.dtype) if track_running_stats else None
        self.num_batches_tracked = 0

    def _require_channels(self, x, num_features):
        if x.ndim >= 2 and x.shape[1] != num_features:
            raise ValueError(
                f"{type(self).__name__}(num_features={num_features}) got an input with {x.shape[1]} channels "
                f"(shape {tuple(x.shape)}); channels are axis 1"
            )


class BatchNorm(_Norm):
    """BatchNorm for inputs (N, C, *) of any rank >= 2; see `normlab.batch_norm`.

    As ``torch.nn.BatchNorm{1,2,3}d``: in training the batch statistics are used
    and the running buffers updated (``momentum=None``: cumulative average over
    ``num_batches_tracked``); in eval the running buffers are used, unless
    ``track_running_stats=False``, in which case batch statistics are always used.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 dtype=None):
        super().__init__(dtype)
        self._init_per_channel(num_features, eps, momentum, affine, track_running_stats)

    def forward(self, x):
        self._require_channels(x, self.num_features)
        self._adopt(x)
        updating = self.training and self.track_running_stats
        momentum = self.momentum
        if updating and momentum is None:
            momentum = cumulative_momentum(self.num_batches_tracked + 1)
        y, self._cache = batch_norm_forward(
            x, self.weight, self.bias, running_mean=self.running_mean, running_var=self.running_var,
            training=self.training or not self.track_running_stats, momentum=momentum, eps=self.eps,
        )
        if updating:  # counted only once the call has succeeded
            self.num_batches_tracked += 1
        return y


class InstanceNorm(_Norm):
    """InstanceNorm for inputs (N, C, *spatial) of any rank >= 3; see `normlab.instance_norm`.

    As ``torch.nn.InstanceNorm{1,2,3}d``: affine and tracking are off by default;
    when tracking, eval uses the running buffers.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False, *,
                 dtype=None):
        super().__init__(dtype)
        self._init_per_channel(num_features, eps, momentum, affine, track_running_stats)

    def forward(self, x):
        self._require_channels(x, self.num_features)
        self._adopt(x)
        y, self._cache = instance_norm_forward(
            x, self.weight, self.bias, running_mean=self.running_mean, running_var=self.running_var,
            use_input_stats=self.training or not self.track_running_stats,
            momentum=0.0 if self.momentum is None else self.momentum, eps=self.eps,
        )
        return y


class GroupNorm(_Norm):
    """GroupNorm for inputs (N, C, *); see `normlab.group_norm`. No running statistics."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, dtype=None):
        super().__init__(dtype)
        if num_groups <= 0 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels={num_channels} must be divisible by num_groups={num_groups}")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self._affine_params((num_channels,), affine)

    def forward(self, x):
        self._require_channels(x, self.num_channels)
        self._adopt(x)
        y, self._cache = group_norm_forward(x, self.num_groups, self.weight, self.bias, eps=self.eps)
        return y


class LayerNorm(_Norm):
    """LayerNorm over the trailing ``normalized_shape`` axes; see `normlab.layer_norm`. No running statistics."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *, dtype=None):
        super().__init__(dtype)
        self.normalized_shape = as_shape(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        self._affine_params(self.normalized_shape, elementwise_affine, with_bias=bias)

    def forward(self, x):
        self._adopt(x)
        y, self._cache = layer_norm_forward(x, self.normalized_shape, self.weight, self.bias, eps=self.eps)
        return y



class RMSNorm(_Norm):
    """RMSNorm over the trailing ``normalized_shape`` axes; see `normlab.rms_norm`. Weight only, no bias.

    As ``torch.nn.RMSNorm``: ``eps=None`` is the machine epsilon of the compute dtype.
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, *, dtype=None):
        super().__init__(dtype)
        self.normalized_shape = as_shape(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        self.weight = np.ones(self.normalized_shape, dtype=self.dtype) if elementwise_affine else None
        self.bias = None

    def forward(self, x):
        self._adopt(x)
        y, self._cache = rms_norm_forward(x, self.normalized_shape, self.weight, eps=self.eps)
        return y


class LocalResponseNorm(_Norm):
    """LocalResponseNorm across channels; see `normlab.local_response_norm`. No parameters, so any float
    input keeps its own dtype."""

    _op_backward = staticmethod(local_response_norm_backward)

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__(None)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.weight = self.bias = None

    def forward(self, x):
        y, self._cache = local_response_norm_forward(x, self.size, self.alpha, self.beta, self.k)
        return y


from .dropout import Dropout  # noqa: E402
