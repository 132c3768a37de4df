"""normlab inside torch autograd: the bridge modules train exactly like torch's own layers."""
import copy
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn as tnn

import normlab as nl
from normlab import torch_bridge as tb


def small_cnn(norm=tnn.BatchNorm2d):
    return tnn.Sequential(
        tnn.Conv2d(1, 4, 3, padding=1), norm(4), tnn.ReLU(),
        tnn.Conv2d(4, 6, 3, padding=1), norm(6), tnn.ReLU(),
        tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(6 * 4 * 4, 3),
    ).double()


def train(model, batches, steps=20):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for x, target in batches[:steps]:
        optimizer.zero_grad()
        loss = tnn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


def make_batches(steps=20, seed=0):
    """Learnable data: the label is the brightest of three horizontal bands of the image."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        x = torch.randn(16, 1, 8, 8, generator=generator, dtype=torch.float64) * 2 + 1
        bands = torch.stack([x[:, 0, :3].mean((1, 2)), x[:, 0, 3:6].mean((1, 2)), x[:, 0, 6:].mean((1, 2))], 1)
        batches.append((x, bands.argmax(1)))
    return batches


@pytest.mark.parametrize("how", ["convert_norms", "bridge_class"])
def test_cnn_trains_along_the_same_loss_trajectory_as_torch(how):
    torch.manual_seed(0)
    reference = small_cnn()
    if how == "convert_norms":
        bridged = tb.convert_norms(copy.deepcopy(reference))
    else:
        bridged = small_cnn(tb.BatchNorm)
        bridged.load_state_dict(reference.state_dict())
    assert sum(isinstance(m, tb.BatchNorm) for m in bridged.modules()) == 2
    batches = make_batches()
    expected, losses = train(reference, batches), train(bridged, batches)
    assert expected[-5:].mean() < expected[:5].mean()  # the run actually learns, so the trajectory is informative
    np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-8)
    for (key, theirs), (key_b, ours) in zip(reference.state_dict().items(), bridged.state_dict().items()):
        assert key == key_b
        np.testing.assert_allclose(ours.double().numpy(), theirs.double().numpy(), rtol=0, atol=1e-8, err_msg=key)
    x = batches[0][0]
    with torch.no_grad():
        np.testing.assert_allclose(bridged.eval()(x).numpy(), reference.eval()(x).numpy(), atol=1e-8)


def twins(torch_module):
    """A float64 torch module with random affine parameters and its bridge twin, sharing nothing."""
    torch_module = torch_module.double()
    with torch.no_grad():
        for p in torch_module.parameters():
            p.uniform_(-1.5, 1.5)
        if getattr(torch_module, "running_var", None) is not None:
            torch_module.running_mean.uniform_(-1, 1)
            torch_module.running_var.uniform_(0.5, 2.0)
    container = tnn.Sequential(copy.deepcopy(torch_module))
    return torch_module, tb.convert_norms(container)[0]


BRIDGE_CASES = {
    "batch_norm": (lambda: tnn.BatchNorm2d(3), (4, 3, 3, 2)),
    "batch_norm-momentum-none": (lambda: tnn.BatchNorm1d(3, momentum=None), (6, 3)),
    "group_norm": (lambda: tnn.GroupNorm(2, 4), (3, 4, 5)),
    "layer_norm": (lambda: tnn.LayerNorm((4, 5)), (3, 2, 4, 5)),
    "instance_norm": (lambda: tnn.InstanceNorm2d(3, affine=True), (2, 3, 4, 3)),
    "instance_norm-tracking": (lambda: tnn.InstanceNorm1d(3, affine=True, track_running_stats=True), (2, 3, 6)),
    "rms_norm": (lambda: tnn.RMSNorm((4, 5)), (3, 2, 4, 5)),
    "rms_norm-eps": (lambda: tnn.RMSNorm(5, eps=1e-3), (3, 4, 5)),
    "local_response_norm": (lambda: tnn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=1.0), (2, 5, 3, 2)),
}


@pytest.mark.parametrize("name", BRIDGE_CASES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bridge_gradients_match_torch_with_random_dy(name, mode, rng):
    make, shape = BRIDGE_CASES[name]
    theirs, ours = twins(make())
    assert type(ours).__module__ == tb.__name__
    theirs.train(mode == "train"), ours.train(mode == "train")
    for _ in range(2):  # a second step sees the updated running statistics
        x = rng.standard_normal(shape) * 2 + 0.5
        dy = torch.from_numpy(rng.standard_normal(shape))
        results = []
        for module in (theirs, ours):
            xt = torch.tensor(x, requires_grad=True)
            module.zero_grad()
            module(xt).backward(dy)
            results.append([xt.grad] + [p.grad for p in module.parameters()] + list(module.buffers()))
        for expected, got in zip(*results):
            np.testing.assert_allclose(got.double().numpy(), expected.double().numpy(), rtol=1e-10, atol=1e-10)


def normlab_function(forward_fn):
    """x, weight, bias -> y through `NormFunction`, i.e. normlab's forward and hand-derived backward."""
    return lambda x, weight, bias: tb.NormFunction.apply(x, weight, bias, forward_fn)


@pytest.mark.parametrize("host", [True, False], ids=["numpy-views", "torch-ops"])
def test_cpu_tensors_reach_the_fast_path_through_numpy_views(host, rng, monkeypatch, any_size_compiled):
    """On the host route the forward runs on NumPy views of the tensors' memory (so the compiled path serves),
    running buffers are updated in place through those views, and both routes give torch's results."""
    from normlab.core import NormCache
    from normlab.paths import numba_cpu

    pytest.importorskip("numba")
    monkeypatch.setattr(tb, "on_host", lambda *tensors: host)
    theirs, ours = twins(tnn.BatchNorm2d(3))
    buffer_memory = ours.running_mean.data_ptr()
    seen = []
    real_forward = tb.NormFunction.forward

    def spy(ctx, *args):
        y = real_forward(ctx, *args)
        seen.append(type(ctx.cache))
        return y

    monkeypatch.setattr(tb.NormFunction, "forward", staticmethod(spy))
    x = rng.standard_normal((4, 3, 5, 5))
    dy = torch.from_numpy(rng.standard_normal(x.shape))
    grads = []
    for module in (theirs, ours):
        xt = torch.tensor(x, requires_grad=True)
        module(xt).backward(dy)
        grads.append([xt.grad, module.weight.grad, module.bias.grad, module.running_mean, module.running_var])
    assert seen == [numba_cpu.CompiledCache if host else NormCache]
    assert ours.running_mean.data_ptr() == buffer_memory  # updated in place, not replaced
    for expected, got in zip(*grads):
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-10, atol=1e-10)


def test_bridge_keeps_non_numpy_dtypes_on_torch_ops(rng):
    bf16 = torch.from_numpy(rng.standard_normal((4, 6)).astype(np.float32)).to(torch.bfloat16)
    assert not tb.on_host(bf16) and tb.on_host(bf16.float())
    layer = tb.convert_norms(tnn.Sequential(tnn.LayerNorm(6, dtype=torch.bfloat16)))[0]
    assert layer(bf16).dtype == torch.bfloat16


GRADCHECK_CASES = {
    "batch_norm-train": ((5, 3, 2), (3,), lambda: partial(nl.batch_norm_forward, training=True)),
    "batch_norm-eval": ((5, 3, 2), (3,), lambda: partial(
        nl.batch_norm_forward, training=False, running_mean=torch.rand(3, dtype=torch.float64),
        running_var=torch.rand(3, dtype=torch.float64) + 0.5)),
    "instance_norm": ((2, 3, 4), (3,), lambda: nl.instance_norm_forward),
    "group_norm": ((2, 4, 3), (4,), lambda: lambda x, w, b: nl.group_norm_forward(x, 2, w, b)),
    "layer_norm": ((3, 2, 4), (2, 4), lambda: lambda x, w, b: nl.layer_norm_forward(x, (2, 4), w, b)),
    "rms_norm": ((3, 2, 4), (2, 4), lambda: lambda x, w, b: nl.rms_norm_forward(x, (2, 4), w)),
}


@pytest.mark.parametrize("name", GRADCHECK_CASES)
def test_torch_gradcheck_on_the_bridge_function(name):
    x_shape, param_shape, make_forward = GRADCHECK_CASES[name]
    generator = torch.Generator().manual_seed(1)
    inputs = tuple(torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
                   for shape in (x_shape, param_shape, param_shape))
    assert torch.autograd.gradcheck(normlab_function(make_forward()), inputs, eps=1e-6, atol=1e-7)
