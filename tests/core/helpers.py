"""Helpers shared by the core tests: torch twins of normlab layers, and comparisons in float64."""
import numpy as np
import torch
from torch import nn as tnn

from normlab import nn as nlnn

# One small input shape per rank; every axis > 1 so that no statistic is taken over a single value.
SHAPES = {2: (6, 3), 3: (4, 3, 5), 4: (3, 3, 4, 2), 5: (2, 3, 3, 2, 2)}
TORCH_BATCH_NORM = {2: tnn.BatchNorm1d, 3: tnn.BatchNorm1d, 4: tnn.BatchNorm2d, 5: tnn.BatchNorm3d}
TORCH_INSTANCE_NORM = {3: tnn.InstanceNorm1d, 4: tnn.InstanceNorm2d, 5: tnn.InstanceNorm3d}

TIGHT = dict(rtol=1e-10, atol=1e-10)


def random_input(rng, shape, channel_axis=1):
    """Random float64 data with a different mean and scale per channel, so that statistics matter."""
    x = rng.standard_normal(shape)
    if len(shape) > channel_axis:
        stat_shape = [1] * len(shape)
        stat_shape[channel_axis] = shape[channel_axis]
        x = x * rng.uniform(0.5, 3.0, stat_shape) + rng.uniform(-2.0, 2.0, stat_shape)
    return x


def randomize_torch_module(module, rng):
    """Random affine parameters and running buffers, so that no test passes because of 1s and 0s."""
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            t = getattr(module, name, None)
            if t is not None:
                t.copy_(torch.from_numpy(rng.uniform(-1.5, 1.5, tuple(t.shape))))
        if getattr(module, "running_var", None) is not None:
            module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, tuple(module.running_var.shape))))
    return module


def twin_layers(kind, rank, rng, **options):
    """A float64 torch layer with random state and the normlab layer loaded from its state_dict."""
    channels = SHAPES[rank][1]
    if kind == "batch":
        torch_layer = TORCH_BATCH_NORM[rank](channels, **options)
        ours = nlnn.BatchNorm(channels, **options, dtype=np.float64)
    elif kind == "instance":
        torch_layer = TORCH_INSTANCE_NORM[rank](channels, **options)
        ours = nlnn.InstanceNorm(channels, **options, dtype=np.float64)
    else:
        raise ValueError(kind)
    torch_layer = randomize_torch_module(torch_layer.double(), rng)
    ours.load_state_dict(torch_layer.state_dict())
    return torch_layer, ours


def step_both(torch_layer, ours, x, dy):
    """One forward and backward through both layers; returns ``(torch results, normlab results)`` as NumPy."""
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_layer(xt)
    yt.backward(torch.from_numpy(dy))
    theirs = {"y": yt.detach().numpy(), "dx": xt.grad.numpy()}
    for name in ("weight", "bias"):
        p = getattr(torch_layer, name, None)
        theirs["d" + name] = None if p is None else p.grad.numpy().copy()
        if p is not None:
            p.grad = None
    y = ours(x)
    dx = ours.backward(dy)
    mine = {"y": y, "dx": dx, "dweight": ours.grads["weight"], "dbias": ours.grads["bias"]}
    return theirs, mine


def assert_results_match(theirs, mine, **tol):
    tol = tol or TIGHT
    assert set(theirs) == set(mine)
    for key in theirs:
        if theirs[key] is None:
            assert mine[key] is None, f"{key}: torch has none, normlab gave one"
        else:
            assert mine[key] is not None, f"{key}: normlab gave none"
            np.testing.assert_allclose(np.asarray(mine[key]), theirs[key], err_msg=key, **tol)


def assert_states_match(torch_layer, ours, **tol):
    tol = tol or TIGHT
    theirs, mine = torch_layer.state_dict(), ours.state_dict()
    assert list(mine) == list(theirs)
    for key, value in theirs.items():
        if key == "num_batches_tracked":
            assert int(mine[key]) == int(value)
        else:
            np.testing.assert_allclose(np.asarray(mine[key]), value.numpy(), err_msg=key, **tol)
