"""normlab.nn layers: train/eval, gradients, torch-compatible state_dict, and following the input's backend."""
import numpy as np
import pytest
import torch
from torch import nn as tnn

import normlab as nl
from normlab import nn as nlnn

from .helpers import random_input, randomize_torch_module

# (normlab layer, its torch twin) for every configuration whose state_dict keys differ.
LAYER_PAIRS = {
    "bn": (lambda: nlnn.BatchNorm(3, dtype=np.float64), lambda: tnn.BatchNorm2d(3)),
    "bn-noaffine": (lambda: nlnn.BatchNorm(3, affine=False, dtype=np.float64), lambda: tnn.BatchNorm2d(3, affine=False)),
    "bn-notrack": (lambda: nlnn.BatchNorm(3, track_running_stats=False, dtype=np.float64),
                   lambda: tnn.BatchNorm2d(3, track_running_stats=False)),
    "in": (lambda: nlnn.InstanceNorm(3, dtype=np.float64), lambda: tnn.InstanceNorm2d(3)),
    "in-affine-track": (lambda: nlnn.InstanceNorm(3, affine=True, track_running_stats=True, dtype=np.float64),
                        lambda: tnn.InstanceNorm2d(3, affine=True, track_running_stats=True)),
    "gn": (lambda: nlnn.GroupNorm(1, 3, dtype=np.float64), lambda: tnn.GroupNorm(1, 3)),
    "gn-noaffine": (lambda: nlnn.GroupNorm(3, 3, affine=False, dtype=np.float64), lambda: tnn.GroupNorm(3, 3, affine=False)),
    "ln": (lambda: nlnn.LayerNorm((4, 5), dtype=np.float64), lambda: tnn.LayerNorm((4, 5))),
    "ln-nobias": (lambda: nlnn.LayerNorm(5, bias=False, dtype=np.float64), lambda: tnn.LayerNorm(5, bias=False)),
    "ln-noaffine": (lambda: nlnn.LayerNorm(5, elementwise_affine=False, dtype=np.float64),
                    lambda: tnn.LayerNorm(5, elementwise_affine=False)),
}


@pytest.mark.parametrize("name", LAYER_PAIRS)
def test_state_dict_keys_equal_torchs(name):
    make_ours, make_theirs = LAYER_PAIRS[name]
    ours, theirs = make_ours(), make_theirs()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert tuple(np.shape(ours.state_dict()[key])) == tuple(value.shape), key


@pytest.mark.parametrize("name", LAYER_PAIRS)
def test_train_eval_backward_and_grads(name, rng):
    make_ours, _ = LAYER_PAIRS[name]
    layer = make_ours()
    assert layer.training
    assert layer.eval() is layer and not layer.training
    assert layer.train() is layer and layer.training
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((2, 3, 4, 5)))
    x = random_input(rng, (2, 3, 4, 5))
    dy = rng.standard_normal(x.shape)
    y = layer(x)
    assert y.shape == x.shape
    dx = layer.backward(dy)
    assert dx.shape == x.shape
    weight = layer.state_dict().get("weight")
    bias = layer.state_dict().get("bias")
    assert set(layer.grads) == {"weight", "bias"}
    for key, param in (("weight", weight), ("bias", bias)):
        if param is None:
            assert layer.grads[key] is None
        else:
            assert layer.grads[key].shape == param.shape
    if bias is not None:  # dβ is the sum of dy over everything but β's own axes
        reduce = tuple(range(x.ndim - bias.ndim)) if name.startswith("ln") else (0, 2, 3)
        np.testing.assert_allclose(layer.grads["bias"], dy.sum(axis=reduce), rtol=1e-6)


def test_batch_norm_eval_uses_running_stats_and_train_uses_batch_stats(rng):
    layer = nlnn.BatchNorm(3, momentum=0.5, dtype=np.float64)
    for _ in range(3):
        layer(random_input(rng, (8, 3, 4)))
    assert layer.num_batches_tracked == 3
    state = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    x = random_input(rng, (8, 3, 4))
    y_eval = layer.eval()(x)
    expected, _ = nl.batch_norm_forward(x, state["weight"], state["bias"], running_mean=state["running_mean"].copy(),
                                        running_var=state["running_var"].copy(), training=False)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-6, atol=1e-6)
    assert layer.num_batches_tracked == 3  # eval neither counts nor updates
    np.testing.assert_array_equal(layer.running_mean, state["running_mean"])
    y_train = layer.train()(x)
    np.testing.assert_allclose(y_train, nl.batch_norm_forward(x, state["weight"], state["bias"])[0], atol=1e-6)


def trained_torch_batch_norm(rng, steps=5):
    bn = randomize_torch_module(tnn.BatchNorm2d(3), rng)
    for _ in range(steps):
        bn(torch.from_numpy(random_input(rng, (6, 3, 4, 4))).float())
    return bn.eval()


@pytest.mark.parametrize("source", ["tensors", "numpy"])
def test_load_state_dict_from_trained_torch_batch_norm_gives_the_same_eval_output(source, rng):
    torch_bn = trained_torch_batch_norm(rng)
    state = torch_bn.state_dict()
    if source == "numpy":
        state = {k: v.numpy() for k, v in state.items()}
    ours = nlnn.BatchNorm(3, dtype=np.float64)
    ours.load_state_dict(state)
    ours.eval()
    assert ours.num_batches_tracked == 5
    x = random_input(rng, (5, 3, 4, 4)).astype(np.float32)
    with torch.no_grad():
        expected = torch_bn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(x), expected, rtol=1e-5, atol=1e-5)
    # Loaded arrays are copies: changing the source later does not reach into the layer.
    before = np.array(ours.running_mean, copy=True)
    with torch.no_grad():
        torch_bn.running_mean.add_(1.0)
    if source == "numpy":
        state["running_mean"] += 1.0
    np.testing.assert_array_equal(ours.running_mean, before)


BAD_STATES = {
    "missing-key": lambda s: {k: v for k, v in s.items() if k != "running_var"},
    "unexpected-key": lambda s: {**s, "running_max": np.zeros(3)},
    "wrong-shape": lambda s: {**s, "running_var": np.ones(4)},
    "wrong-shape-last": lambda s: {**{k: v for k, v in s.items() if k != "bias"}, "bias": np.ones((3, 1))},
}


@pytest.mark.parametrize("bad", BAD_STATES)
def test_bad_state_dict_is_rejected_and_changes_nothing(bad, rng):
    layer = nlnn.BatchNorm(3, dtype=np.float64)
    layer(random_input(rng, (4, 3)))
    before = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    good = {k: np.full(np.shape(v), 7.0) for k, v in before.items() if k != "num_batches_tracked"}
    good["num_batches_tracked"] = np.array(9)
    with pytest.raises(ValueError) as info:
        layer.load_state_dict(BAD_STATES[bad](good))
    assert any(word in str(info.value) for word in ("running_var", "running_max", "bias"))
    after = layer.state_dict()
    assert list(after) == list(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


LAYERS_FOR_BACKENDS = {
    "bn": lambda: nlnn.BatchNorm(3, momentum=None, dtype=np.float64),
    "in": lambda: nlnn.InstanceNorm(3, affine=True, track_running_stats=True, dtype=np.float64),
    "gn": lambda: nlnn.GroupNorm(3, 3, dtype=np.float64),
    "ln": lambda: nlnn.LayerNorm((3, 5), dtype=np.float64),
}


@pytest.mark.parametrize("name", LAYERS_FOR_BACKENDS)
def test_layers_follow_the_input_backend(backend, name, rng):
    layer, reference = LAYERS_FOR_BACKENDS[name](), LAYERS_FOR_BACKENDS[name]()
    for step in range(2):
        x = random_input(rng, (4, 3, 5)).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        if step == 1:
            layer.eval(), reference.eval()
        y = layer(backend.asarray(x))
        dx = layer.backward(backend.asarray(dy))
        y_ref, dx_ref = reference(x), reference.backward(dy)
        for value in (y, dx, *layer.grads.values(), *layer.state_dict().values()):
            if not isinstance(value, int):
                assert backend.is_native(value), type(value)
        np.testing.assert_allclose(backend.to_numpy(y), y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(backend.to_numpy(dx), dx_ref, rtol=1e-5, atol=1e-5)
        for key, value in reference.state_dict().items():
            np.testing.assert_allclose(backend.to_numpy(layer.state_dict()[key]), value, rtol=1e-5, atol=1e-6)


def test_a_layer_moves_between_backends(rng):
    layer = nlnn.BatchNorm(3, dtype=np.float64)
    x = random_input(rng, (4, 3)).astype(np.float32)
    y_torch = layer(torch.from_numpy(x))
    assert isinstance(y_torch, torch.Tensor) and isinstance(layer.running_mean, torch.Tensor)
    y_numpy = layer(x)
    assert isinstance(y_numpy, np.ndarray) and isinstance(layer.running_mean, np.ndarray)
    np.testing.assert_allclose(y_numpy, y_torch.numpy(), rtol=1e-6)
    assert layer.num_batches_tracked == 2
