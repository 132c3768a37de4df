"""Parity with PyTorch on the CPU, in float64, to 1e-10.

Layers are compared with torch's layers (not bare functions), because
``momentum=None`` needs the batch count that only a layer keeps. Each case runs
several training steps (forward, backward with a random upstream gradient,
running statistics), then an eval step, forward and backward.
"""
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from torch import nn as tnn

from normlab import functional as NF
from normlab import nn as nlnn

from .helpers import SHAPES, assert_results_match, assert_states_match, random_input, step_both, twin_layers

MOMENTA = [None, 0.0, 0.3, 1.0]
TRAIN_STEPS = 3


def run_train_then_eval(torch_layer, ours, shape, rng):
    for step in range(TRAIN_STEPS):
        x, dy = random_input(rng, shape), rng.standard_normal(shape)
        assert_results_match(*step_both(torch_layer, ours, x, dy))
        assert_states_match(torch_layer, ours)
    torch_layer.eval()
    ours.eval()
    assert not ours.training
    x, dy = random_input(rng, shape), rng.standard_normal(shape)
    assert_results_match(*step_both(torch_layer, ours, x, dy))
    assert_states_match(torch_layer, ours)


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("track", [True, False], ids=["track", "notrack"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_batch_norm_layer(rank, momentum, track, affine, rng):
    torch_layer, ours = twin_layers("batch", rank, rng, momentum=momentum, affine=affine, track_running_stats=track)
    run_train_then_eval(torch_layer, ours, SHAPES[rank], rng)


@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("track", [True, False], ids=["track", "notrack"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_instance_norm_layer(rank, momentum, track, affine, rng):
    torch_layer, ours = twin_layers("instance", rank, rng, momentum=momentum, affine=affine, track_running_stats=track)
    run_train_then_eval(torch_layer, ours, SHAPES[rank], rng)


def test_instance_norm_running_var_is_mean_of_unbiased_instance_vars(rng):
    """DESIGN: when tracking, running var = mean over n of the unbiased per-instance variances."""
    x = random_input(rng, (4, 3, 5, 2))
    ours = nlnn.InstanceNorm(3, momentum=1.0, track_running_stats=True, dtype=np.float64)
    ours(x)
    expected_var = np.var(x, axis=(2, 3), ddof=1).mean(axis=0)
    np.testing.assert_allclose(ours.running_var, expected_var, rtol=1e-6)
    np.testing.assert_allclose(ours.running_mean, x.mean(axis=(2, 3)).mean(axis=0), rtol=1e-6, atol=1e-6)


GROUP_SHAPES = {2: (5, 6), 3: (4, 6, 3), 4: (3, 6, 2, 3), 5: (2, 6, 2, 2, 2)}


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_group_norm_layer(rank, groups, affine, rng):
    torch_layer = tnn.GroupNorm(groups, 6, affine=affine).double()
    if affine:
        with torch.no_grad():
            torch_layer.weight.uniform_(-1.5, 1.5)
            torch_layer.bias.uniform_(-1.5, 1.5)
    ours = nlnn.GroupNorm(groups, 6, affine=affine, dtype=np.float64)
    ours.load_state_dict(torch_layer.state_dict())
    run_train_then_eval(torch_layer, ours, GROUP_SHAPES[rank], rng)


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("normalized_dims", [1, 2])
@pytest.mark.parametrize(
    "affine, bias", [(True, True), (True, False), (False, True)], ids=["affine", "affine-nobias", "noaffine"]
)
def test_layer_norm_layer(rank, normalized_dims, affine, bias, rng):
    shape = SHAPES[rank]
    normalized_shape = shape[-normalized_dims:]
    torch_layer = tnn.LayerNorm(normalized_shape, elementwise_affine=affine, bias=bias).double()
    with torch.no_grad():
        for p in torch_layer.parameters():
            p.uniform_(-1.5, 1.5)
    ours = nlnn.LayerNorm(normalized_shape, elementwise_affine=affine, bias=bias, dtype=np.float64)
    ours.load_state_dict(torch_layer.state_dict())
    run_train_then_eval(torch_layer, ours, shape, rng)


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("momentum", [None, 0.3])
def test_batch_norm_zero_size_batch(rank, momentum, rng):
    """torch: an empty output, running stats untouched (the batch is still counted), zero dweight and dbias."""
    torch_layer, ours = twin_layers("batch", rank, rng, momentum=momentum)
    before = {k: np.array(v, copy=True) for k, v in ours.state_dict().items()}
    shape = (0,) + SHAPES[rank][1:]
    theirs, mine = step_both(torch_layer, ours, np.zeros(shape), np.zeros(shape))
    assert_results_match(theirs, mine)
    assert mine["y"].shape == shape
    np.testing.assert_array_equal(mine["dweight"], 0.0)
    np.testing.assert_array_equal(mine["dbias"], 0.0)
    np.testing.assert_array_equal(ours.running_mean, before["running_mean"])
    np.testing.assert_array_equal(ours.running_var, before["running_var"])
    assert_states_match(torch_layer, ours)


@pytest.mark.parametrize("shape", [(0, 6), (0, 6, 3)])
def test_group_and_layer_norm_zero_size_batch(shape, rng):
    for torch_layer, ours in ((tnn.GroupNorm(3, 6).double(), nlnn.GroupNorm(3, 6, dtype=np.float64)),
                              (tnn.LayerNorm(shape[1:]).double(), nlnn.LayerNorm(shape[1:], dtype=np.float64))):
        ours.load_state_dict(torch_layer.state_dict())
        theirs, mine = step_both(torch_layer, ours, np.zeros(shape), np.zeros(shape))
        assert_results_match(theirs, mine)
        np.testing.assert_array_equal(mine["dweight"], 0.0)


# --- normlab.functional against torch.nn.functional -------------------------------------------------

@pytest.mark.parametrize("name", ["batch_norm", "layer_norm", "group_norm", "instance_norm"])
def test_functional_signatures_equal_torch(name):
    def described(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert described(getattr(NF, name)) == described(getattr(TF, name))


def functional_calls(t):
    """(name, args, kwargs) triples; ``t`` makes fresh float64 tensors, so each side gets its own buffers."""
    shape = (4, 6, 3, 2)
    x = t("x", shape)
    return [
        ("batch_norm", (x, t("rm", 6), t("rv", 6)), {}),  # training=False: the running buffers are used
        ("batch_norm", (x, t("rm", 6), t("rv", 6), t("w", 6), t("b", 6), True, 0.3, 1e-3), {}),
        ("batch_norm", (x, t("rm", 6), t("rv", 6)), dict(weight=t("w", 6), bias=t("b", 6), training=True, momentum=1.0)),
        ("batch_norm", (x, None, None), dict(training=True, eps=1e-2)),
        ("batch_norm", (x, t("rm", 6), t("rv", 6), None, t("b", 6)), dict(training=False, eps=0.5)),
        ("layer_norm", (x, shape[-2:]), {}),
        ("layer_norm", (x, (shape[-1],), t("w", 2), t("b", 2), 1e-3), {}),
        ("layer_norm", (x, list(shape[1:])), dict(weight=t("w", shape[1:]), eps=0.1)),
        ("group_norm", (x, 3), {}),
        ("group_norm", (x, 2, t("w", 6), t("b", 6), 1e-3), {}),
        ("group_norm", (x, 6), dict(bias=t("b", 6))),
        ("instance_norm", (x,), {}),
        ("instance_norm", (x, t("rm", 6), t("rv", 6), t("w", 6), t("b", 6), True, 0.3, 1e-3), {}),
        ("instance_norm", (x, t("rm", 6), t("rv", 6)), dict(use_input_stats=False, weight=t("w", 6))),
    ]


@pytest.mark.parametrize("index", range(len(functional_calls(lambda role, shape: None))))
def test_functional_matches_torch_functional(index, rng):
    seed = int(rng.integers(1 << 30))

    def tensor_maker():
        values = np.random.default_rng(seed)
        cache = {}

        def t(role, shape):
            key = (role, str(shape))
            if key not in cache:
                cache[key] = values.uniform(0.5, 2.0, shape) if role == "rv" else values.standard_normal(shape) * 2 + 0.5
            return torch.tensor(cache[key])  # a fresh tensor per call: each side owns its buffers

        return t

    name, args, kwargs = functional_calls(tensor_maker())[index]
    name_t, args_t, kwargs_t = functional_calls(tensor_maker())[index]
    ours = getattr(NF, name)(*args, **kwargs)
    theirs = getattr(TF, name_t)(*args_t, **kwargs_t)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-10, atol=1e-10)
    # The running buffers (positions 1 and 2 where present) were updated in place in the same way.
    for mine, their in zip(args[1:], args_t[1:]):
        if isinstance(mine, torch.Tensor):
            np.testing.assert_allclose(mine.numpy(), their.numpy(), rtol=1e-10, atol=1e-10)
