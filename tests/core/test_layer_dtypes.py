"""Layers take torch's ``dtype=`` factory argument: float32 by default, exact to torch in float64."""
import numpy as np
import pytest
import torch

from normlab import nn as nlnn

from .helpers import TIGHT, randomize_torch_module


@pytest.mark.parametrize("momentum", [None, 0.0, 0.3, 1.0])
def test_float64_batch_norm_steps_match_torch(momentum, rng):
    theirs = randomize_torch_module(torch.nn.BatchNorm2d(3, momentum=momentum, dtype=torch.float64), rng)
    ours = nlnn.BatchNorm(3, momentum=momentum, dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    for _ in range(4):
        x, dy = rng.standard_normal((4, 3, 2, 3)) * 2 + 1, rng.standard_normal((4, 3, 2, 3))
        xt = torch.tensor(x, requires_grad=True)
        theirs.zero_grad()
        yt = theirs(xt)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(ours(x), yt.detach().numpy(), **TIGHT)
        np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), **TIGHT)
        np.testing.assert_allclose(ours.grads["weight"], theirs.weight.grad.numpy(), **TIGHT)
        np.testing.assert_allclose(ours.grads["bias"], theirs.bias.grad.numpy(), **TIGHT)
    state = ours.state_dict()
    for key, value in theirs.state_dict().items():
        if key == "num_batches_tracked":
            assert state[key] == int(value) == 4
        else:
            assert state[key].dtype == np.float64
            np.testing.assert_allclose(state[key], value.numpy(), **TIGHT)
    ours.eval(), theirs.eval()
    x = rng.standard_normal((4, 3, 2, 3))
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), **TIGHT)


LAYERS = {
    "BatchNorm": (lambda d: nlnn.BatchNorm(4, dtype=d), (6, 4, 3)),
    "InstanceNorm": (lambda d: nlnn.InstanceNorm(4, affine=True, track_running_stats=True, dtype=d), (6, 4, 3)),
    "GroupNorm": (lambda d: nlnn.GroupNorm(2, 4, dtype=d), (6, 4, 3)),
    "LayerNorm": (lambda d: nlnn.LayerNorm((4, 3), dtype=d), (6, 4, 3)),
    "RMSNorm": (lambda d: nlnn.RMSNorm((4, 3), dtype=d), (6, 4, 3)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_float64_input_into_a_float32_layer_is_refused_and_changes_nothing(name, rng):
    make, shape = LAYERS[name]
    layer = make(None)
    layer(rng.standard_normal(shape).astype(np.float32))
    layer.backward(rng.standard_normal(shape).astype(np.float32))
    before = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    grads_before = dict(layer.grads)
    for bad in (rng.standard_normal(shape), torch.from_numpy(rng.standard_normal(shape))):
        with pytest.raises(ValueError, match=r"float64.*float32.*dtype=float64"):
            layer(bad)
    after = layer.state_dict()
    assert list(after) == list(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
        assert np.asarray(after[key]).dtype == before[key].dtype
    assert layer.grads == grads_before


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", LAYERS)
def test_half_input_into_a_float32_layer_is_computed_in_float32(name, half, rng):
    make, shape = LAYERS[name]
    x32 = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    x = x32.to(getattr(torch, half))
    layer, reference = make(None), make(None)
    y = layer(x)
    assert y.dtype == x.dtype
    expected = reference(x.float())  # the same half values, widened first: what "computed in float32" means
    np.testing.assert_allclose(y.float().numpy(), expected.to(x.dtype).float().numpy(), rtol=0, atol=0)
    buffers = {k: v for k, v in layer.state_dict().items() if k != "num_batches_tracked"}
    assert all(v.dtype == torch.float32 for v in buffers.values())


def test_dtype_accepts_numpy_torch_and_names():
    for spec in (np.float64, np.dtype("float64"), "float64", torch.float64):
        assert nlnn.BatchNorm(3, dtype=spec).running_var.dtype == np.float64
    assert nlnn.LayerNorm(3).weight.dtype == np.float32
