"""Inverted dropout: torch's scaling and eval identity, the backward, seeding, and bad input."""
import numpy as np
import pytest
import torch

import normlab as nl
from normlab.dropout import Dropout, dropout_backward, dropout_forward
from normlab.gradcheck import numerical_gradient, rel_error


def _nonzero_input(rng, shape):
    """No zeros in x, so a zero in the output can only come from the mask."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 1e-3, 1.0, x)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_training_scale_matches_torch(p):
    """Survivors are x / (1 - p) in both, and about a fraction p of the elements is zeroed."""
    rng = np.random.default_rng(0)
    x = _nonzero_input(rng, (200, 50))
    y, _ = dropout_forward(x, p, rng=1)
    torch.manual_seed(1)
    y_torch = torch.nn.functional.dropout(torch.from_numpy(x), p, training=True).numpy()
    for out in (y, y_torch):
        kept = out != 0
        np.testing.assert_allclose(out[kept] / x[kept], 1.0 / (1.0 - p), rtol=1e-12)
        assert abs(1.0 - kept.mean() - p) < 0.02  # 10 000 Bernoulli draws: std of the fraction <= 0.005
    # the same expectation: torch's and ours agree on E[y] = x, checked over many masks
    mean = np.mean([dropout_forward(x[:1], p, rng=s)[0] for s in range(4000)], axis=0)
    assert np.max(np.abs(mean - x[:1])) < 6 * np.max(np.abs(x[:1])) * np.sqrt(p / (1 - p) / 4000)


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_eval_is_the_identity_as_in_torch(p):
    x = np.random.default_rng(2).standard_normal((3, 4))
    y, cache = dropout_forward(x, p, training=False, rng=0)
    expected = torch.nn.functional.dropout(torch.from_numpy(x), p, training=False).numpy()
    np.testing.assert_array_equal(y, expected)
    dy = np.random.default_rng(3).standard_normal(x.shape)
    np.testing.assert_array_equal(dropout_backward(dy, cache), dy)


def test_p_one_gives_zeros_as_torch():
    x = np.random.default_rng(4).standard_normal((3, 4))
    y, cache = dropout_forward(x, 1.0, rng=0)
    expected = torch.nn.functional.dropout(torch.from_numpy(x), 1.0, training=True).numpy()
    np.testing.assert_array_equal(y, expected)
    assert np.all(np.isfinite(dropout_backward(np.ones_like(x), cache)))


@pytest.mark.parametrize("p", [0.25, 0.6])
def test_backward_matches_numerical_gradient_and_torch(p):
    rng = np.random.default_rng(5)
    x = _nonzero_input(rng, (4, 6))
    dy = rng.standard_normal(x.shape)  # random upstream gradient, never all ones
    y, cache = dropout_forward(x, p, rng=7)
    dx = dropout_backward(dy, cache)
    # the same seed redraws the same mask, so the forward is a fixed function of x
    numeric = numerical_gradient(lambda z: dropout_forward(z, p, rng=7)[0], x, dy)
    assert rel_error(dx, numeric) < 1e-8
    # torch: its own mask and autograd; the gradient is dy / (1 - p) where kept, 0 where dropped
    xt = torch.from_numpy(x).requires_grad_()
    torch.manual_seed(7)
    yt = torch.nn.functional.dropout(xt, p, training=True)
    yt.backward(torch.from_numpy(dy))
    for out, grad in ((y, dx), (yt.detach().numpy(), xt.grad.numpy())):
        kept = out != 0
        np.testing.assert_allclose(grad[kept], dy[kept] / (1 - p), rtol=1e-12)
        assert np.all(grad[~kept] == 0)


def test_layer_train_eval_and_backward():
    x = _nonzero_input(np.random.default_rng(8), (5, 7))
    layer = Dropout(0.4, seed=0)
    assert layer.training and nl.nn.Dropout is Dropout
    y = layer(x)
    assert np.any(y == 0) and np.any(y != 0)
    dy = np.random.default_rng(9).standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backward(dy) == 0, y == 0)
    layer.eval()
    assert layer(x) is x and layer.backward(dy) is dy
    assert layer.train().training and layer.state_dict() == {} and layer.grads == {}


def test_layer_follows_torch_input():
    x = torch.randn(4, 5, dtype=torch.float64) + 3.0
    layer = Dropout(0.5, seed=1)
    y = layer(x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64
    kept = y != 0
    torch.testing.assert_close(y[kept], 2 * x[kept])


def test_seeded_layers_repeat_and_advance():
    x = np.ones((6, 8))
    a, b = Dropout(0.5, seed=42), Dropout(0.5, seed=42)
    first_a, first_b = a(x), b(x)
    np.testing.assert_array_equal(first_a, first_b)
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.array_equal(first_a, a(x))  # a fresh mask on every call
    np.testing.assert_array_equal(dropout_forward(x, 0.5, rng=3)[0], dropout_forward(x, 0.5, rng=3)[0])
    # the mask does not depend on the array library: one seed, one mask
    np.testing.assert_array_equal(Dropout(0.5, seed=5)(x), Dropout(0.5, seed=5)(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5", None, True, float("nan")])
def test_bad_p_is_a_value_error(p):
    with pytest.raises(ValueError, match="probability p"):
        Dropout(p)
    with pytest.raises(ValueError, match="probability p"):
        dropout_forward(np.ones(3), p)


def test_bad_input_is_a_value_error_and_leaves_the_generator_alone():
    layer = Dropout(0.5, seed=0)
    with pytest.raises(ValueError, match="floating-point"):
        layer(np.ones(3, dtype=np.int64))
    np.testing.assert_array_equal(layer(np.ones(10)), Dropout(0.5, seed=0)(np.ones(10)))
    _, cache = dropout_forward(np.ones((2, 3)), 0.5, rng=0)
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        dropout_backward(np.ones((3, 2)), cache)
    with pytest.raises(ValueError, match="rng"):
        dropout_forward(np.ones(3), 0.5, rng="seed")


def test_array_api_strict_input_stays_in_its_library():
    """No NumPy-only call: an array-api-strict input gives an array-api-strict output and gradient."""
    xps = pytest.importorskip("array_api_strict")
    x_np = _nonzero_input(np.random.default_rng(10), (4, 5))
    x = xps.asarray(x_np)
    y, cache = dropout_forward(x, 0.5, rng=3)
    dx = dropout_backward(xps.asarray(np.ones((4, 5))), cache)
    assert type(y) is type(x) and type(dx) is type(x)
    np.testing.assert_allclose(np.asarray(y._array), dropout_forward(x_np, 0.5, rng=3)[0])
