"""RMSNorm and LocalResponseNorm against torch (float64 to 1e-10), their properties, and their gradients.

torch is the oracle: ``F.rms_norm``/``nn.RMSNorm`` and ``F.local_response_norm``, differentiated by
torch autograd with a random upstream gradient.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import normlab as nl
from normlab import functional as nlf
from normlab import nn as nlnn
from normlab.gradcheck import numerical_gradient, rel_error

from .helpers import TIGHT

RMS_CASES = [((6, 5), (5,)), ((4, 3, 6), (6,)), ((4, 3, 6), (3, 6)), ((2, 3, 4, 5), (5,)), ((2, 3, 4, 5), (4, 5))]


def torch_results(fn, x, dy, *params):
    """fn(x, *params) in torch float64 autograd: y, dx and one gradient per parameter (None stays None)."""
    xt = torch.tensor(x, requires_grad=True)
    pt = [None if p is None else torch.tensor(p, requires_grad=True) for p in params]
    y = fn(xt, *pt)
    y.backward(torch.from_numpy(dy))
    return [y.detach().numpy(), xt.grad.numpy()] + [None if p is None else p.grad.numpy() for p in pt]


@pytest.mark.parametrize("eps", [None, 1e-3], ids=["eps-None", "eps-1e-3"])
@pytest.mark.parametrize("with_weight", [True, False], ids=["weight", "noweight"])
@pytest.mark.parametrize("shape,normalized", RMS_CASES, ids=[f"{s}-{n}" for s, n in RMS_CASES])
def test_rms_norm_matches_torch(shape, normalized, with_weight, eps, rng):
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0) + rng.uniform(-1, 1)
    dy = rng.standard_normal(shape)
    weight = rng.uniform(-1.5, 1.5, normalized) if with_weight else None
    expected = torch_results(lambda a, w: F.rms_norm(a, normalized, w, eps), x, dy, weight)
    y, cache = nl.rms_norm_forward(x, normalized, weight, eps=eps)
    dx, dweight, dbias = nl.rms_norm_backward(dy, cache)
    assert dbias is None and (dweight is None) == (weight is None)
    for got, want in zip((y, dx, dweight), expected):
        if want is not None:
            np.testing.assert_allclose(got, want, **TIGHT)
    np.testing.assert_allclose(nlf.rms_norm(x, normalized, weight, eps), expected[0], **TIGHT)


def test_rms_norm_eps_none_is_the_compute_dtypes_machine_epsilon():
    """Tiny rows make eps visible: with eps = finfo(float32).eps, x/sqrt(mean x² + eps) is far from x/|x|."""
    x = np.full((2, 4), 1e-4, np.float32)
    for dtype, torch_dtype in ((np.float32, torch.float32), (np.float16, torch.float16)):
        expected = F.rms_norm(torch.from_numpy(x.astype(dtype)), (4,)).float().numpy()
        got = nl.rms_norm_forward(x.astype(dtype), 4)[0]
        assert got.dtype == dtype
        np.testing.assert_allclose(got.astype(np.float32), expected, rtol=2e-3)
        assert abs(float(expected[0, 0]) - 1.0) > 0.1  # eps matters at this scale, so the check can fail
    x64 = np.full((2, 4), 1e-9)
    np.testing.assert_allclose(nl.rms_norm_forward(x64, 4)[0], F.rms_norm(torch.from_numpy(x64), (4,)).numpy(),
                               **TIGHT)


def test_rms_norm_of_an_all_zero_row_is_finite(rng):
    x = rng.standard_normal((3, 8))
    x[1] = 0.0
    for dtype in (np.float32, np.float64):
        y, cache = nl.rms_norm_forward(x.astype(dtype), 8, np.ones(8, dtype))
        dx, dweight, _ = nl.rms_norm_backward(rng.standard_normal(x.shape).astype(dtype), cache)
        assert np.isfinite(y).all() and np.isfinite(dx).all() and np.isfinite(dweight).all()
        assert (y[1] == 0).all()


def test_rms_norm_layer_matches_torch_layer_and_keeps_its_state_dict_keys(rng):
    theirs = torch.nn.RMSNorm((3, 4), dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.uniform_(-1.5, 1.5)
    ours = nlnn.RMSNorm((3, 4), dtype=np.float64)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    x, dy = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 3, 4))
    y_t, dx_t, dw_t = torch_results(lambda a, w: F.rms_norm(a, (3, 4), w, None), x, dy, theirs.weight.detach().numpy())
    np.testing.assert_allclose(ours(x), y_t, **TIGHT)
    np.testing.assert_allclose(ours.backward(dy), dx_t, **TIGHT)
    np.testing.assert_allclose(ours.grads["weight"], dw_t, **TIGHT)
    assert ours.grads["bias"] is None
    assert nlnn.RMSNorm(4, elementwise_affine=False).state_dict() == {}


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_rms_norm_is_layer_norm_on_zero_mean_rows(rows, features, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features)) * rng.uniform(0.1, 10)
    x -= x.mean(axis=1, keepdims=True)
    dy = rng.standard_normal(x.shape)
    y_rms, cache_rms = nl.rms_norm_forward(x, features, eps=1e-5)
    y_ln, cache_ln = nl.layer_norm_forward(x, features, eps=1e-5)
    np.testing.assert_allclose(y_rms, y_ln, atol=1e-9)
    # The gradients differ (LayerNorm projects out the mean direction), but not on zero-mean dy's part:
    dy0 = dy - dy.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(nl.rms_norm_backward(dy0, cache_rms)[0], nl.layer_norm_backward(dy0, cache_ln)[0],
                               atol=1e-8)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3))
def test_rms_norm_is_invariant_to_scaling_each_row(seed, scale):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 9))
    y = nl.rms_norm_forward(x, 9, eps=0.0)[0]
    np.testing.assert_allclose(nl.rms_norm_forward(x * scale, 9, eps=0.0)[0], y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.sqrt((y * y).mean(axis=1)), 1.0, rtol=1e-12)


LRN_SHAPES = [(3, 7, 4), (2, 6, 3, 4), (2, 5, 2, 3, 2)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("shape", LRN_SHAPES, ids=str)
def test_local_response_norm_matches_torch(shape, size, rng):
    x, dy = rng.standard_normal(shape) * 2, rng.standard_normal(shape)
    alpha, beta, k = 0.3, 0.7, 1.5  # large enough that the neighbours' energy moves the result
    expected = torch_results(lambda a: F.local_response_norm(a, size, alpha, beta, k), x, dy)
    y, cache = nl.local_response_norm_forward(x, size, alpha, beta, k)
    dx, none_w, none_b = nl.local_response_norm_backward(dy, cache)
    assert none_w is None and none_b is None
    np.testing.assert_allclose(y, expected[0], **TIGHT)
    np.testing.assert_allclose(dx, expected[1], **TIGHT)
    np.testing.assert_allclose(nlf.local_response_norm(x, size, alpha, beta, k), expected[0], **TIGHT)
    assert np.abs(y - x / k**beta).max() > 1e-3  # the window sum matters in this case


def test_local_response_norm_defaults_and_layer_match_torch(rng):
    x, dy = rng.standard_normal((4, 9, 5, 5)) * 30, rng.standard_normal((4, 9, 5, 5))
    theirs = torch.nn.LocalResponseNorm(5)
    ours = nlnn.LocalResponseNorm(5)
    y_t, dx_t = torch_results(theirs, x, dy)
    np.testing.assert_allclose(ours(x), y_t, **TIGHT)
    np.testing.assert_allclose(ours.backward(dy), dx_t, **TIGHT)
    assert ours.state_dict() == {} and ours.grads == {"weight": None, "bias": None}


def test_local_response_norm_window_is_the_channels_torch_uses():
    """A single non-zero channel c raises s only in the channels whose window holds c."""
    for size in (2, 3, 4):
        x = np.zeros((1, 7, 1))
        x[0, 3, 0] = 10.0
        s = nl.local_response_norm_forward(x, size, alpha=1.0, beta=1.0, k=1.0)[1].s[0, :, 0]
        touched = [c for c in range(7) if s[c] > 1.0]
        assert touched == list(range(3 - (size - 1) // 2, 3 + size // 2 + 1)), size


@pytest.mark.parametrize("name", ["rms_norm", "rms_norm-noweight", "local_response_norm"])
def test_gradients_match_numerical_gradient_with_random_dy(name, rng):
    x, dy = rng.standard_normal((3, 5, 4)), rng.standard_normal((3, 5, 4))
    if name.startswith("rms"):
        w = None if name.endswith("noweight") else rng.uniform(0.5, 1.5, (5, 4))
        forward = lambda a, w_=w: nl.rms_norm_forward(a, (5, 4), w_, eps=1e-5)  # noqa: E731
        dx, dw, _ = nl.rms_norm_backward(dy, forward(x)[1])
        if w is not None:
            assert rel_error(dw, numerical_gradient(lambda v: forward(x, v)[0], w, dy)) < 1e-7
    else:
        forward = lambda a: nl.local_response_norm_forward(a, 3, 0.5, 0.75, 1.0)  # noqa: E731
        dx = nl.local_response_norm_backward(dy, forward(x)[1])[0]
    assert rel_error(dx, numerical_gradient(lambda v: forward(v)[0], x, dy)) < 1e-7
