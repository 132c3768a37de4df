"""Running statistics: PyTorch's EMA and cumulative average, and the other conventions the course compares."""
import numpy as np
import pytest
import torch

import normlab as nl
from normlab import nn as nlnn
from normlab import running_stats as rs

from .helpers import random_input


def test_torch_ema_weights_the_new_value(rng):
    old, new = rng.standard_normal(5), rng.standard_normal(5)
    np.testing.assert_allclose(rs.ema(old, new, 0.1), 0.9 * old + 0.1 * new)
    np.testing.assert_array_equal(rs.ema(old, new, 0.0), old)
    np.testing.assert_array_equal(rs.ema(old, new, 1.0), new)


@pytest.mark.parametrize("helper, default_decay", [(rs.keras_update, 0.99), (rs.cs231n_update, 0.9)])
def test_keras_flax_and_cs231n_weight_the_old_value(helper, default_decay, rng):
    """Keras/Flax call 0.99 the momentum and CS231n 0.9: both are the weight of the OLD value."""
    old, new = rng.standard_normal(5), rng.standard_normal(5)
    np.testing.assert_allclose(helper(old, new), default_decay * old + (1 - default_decay) * new)
    np.testing.assert_allclose(helper(old, new), rs.ema(old, new, 1 - default_decay))  # torch's m = 1 - decay
    np.testing.assert_allclose(helper(old, new, 0.5), rs.decay_ema(old, new, 0.5))


def test_unbiased_var_applies_bessels_correction(rng):
    x = rng.standard_normal((7, 3))
    biased = x.var(axis=0)
    np.testing.assert_allclose(rs.unbiased_var(biased, 7), x.var(axis=0, ddof=1))
    np.testing.assert_array_equal(rs.unbiased_var(biased, 1), biased)  # nothing to correct with one value


def test_cumulative_momentum_is_one_over_the_batch_count():
    assert [rs.cumulative_momentum(k) for k in (1, 2, 4)] == [1.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="num_batches_tracked"):
        rs.cumulative_momentum(0)


def test_batch_norm_running_stats_follow_torch_ema_with_unbiased_variance(rng):
    running_mean, running_var = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    expected_mean, expected_var = running_mean.copy(), running_var.copy()
    for _ in range(4):
        x = random_input(rng, (6, 3, 5))
        nl.batch_norm_forward(x, running_mean=running_mean, running_var=running_var, momentum=0.1)
        expected_mean = 0.9 * expected_mean + 0.1 * x.mean(axis=(0, 2))
        expected_var = 0.9 * expected_var + 0.1 * x.var(axis=(0, 2), ddof=1)  # stored UNBIASED (n = 30)
    np.testing.assert_allclose(running_mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(running_var, expected_var, rtol=1e-12)


@pytest.mark.parametrize("layer_cls", [nlnn.BatchNorm, torch.nn.BatchNorm1d])
def test_momentum_none_is_the_plain_average_of_batch_statistics(layer_cls, rng):
    """normlab and torch alike: with momentum=None, the k-th batch gets weight 1/k."""
    layer = layer_cls(3, momentum=None, dtype=torch.float64)
    batches = [random_input(rng, (8, 3, 4)) for _ in range(5)]
    for x in batches:
        layer(torch.from_numpy(x) if isinstance(layer, torch.nn.Module) else x)
    as_numpy = lambda a: a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)  # noqa: E731
    np.testing.assert_allclose(as_numpy(layer.running_mean), np.mean([x.mean(axis=(0, 2)) for x in batches], 0),
                               rtol=1e-6)
    np.testing.assert_allclose(as_numpy(layer.running_var),
                               np.mean([x.var(axis=(0, 2), ddof=1) for x in batches], 0), rtol=1e-6)
    assert int(layer.num_batches_tracked) == 5


def test_instance_norm_momentum_none_keeps_the_buffers_as_torch_does(rng):
    """torch passes momentum 0.0 to instance_norm when momentum is None: the buffers never move."""
    ours = nlnn.InstanceNorm(3, momentum=None, track_running_stats=True, dtype=np.float64)
    theirs = torch.nn.InstanceNorm1d(3, momentum=None, track_running_stats=True).double()
    x = random_input(rng, (4, 3, 6))
    ours(x), theirs(torch.from_numpy(x))
    np.testing.assert_array_equal(ours.running_mean, theirs.running_mean.numpy())
    np.testing.assert_array_equal(ours.running_var, theirs.running_var.numpy())
    np.testing.assert_array_equal(ours.running_var, 1.0)


def test_book_worked_example_momentum_0_3_same_batch_twice():
    """The book's example: five features valued 1..5, each constant over a batch of two rows, momentum 0.3.

    The batch means are 1..5 and the batch variances 0, so from (mean 0, var 1):
    running mean 0.3, 0.6, ... then 0.51, 1.02, ...; running var 0.7, then 0.49.
    """
    batch = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]] * 2)
    features = batch[0]
    expected = [(0.3 * features, np.full(5, 0.7)), ((0.7 * 0.3 + 0.3) * features, np.full(5, 0.7 * 0.7))]
    np.testing.assert_allclose(expected[1][0][:2], [0.51, 1.02])

    torch_bn = torch.nn.BatchNorm1d(5, momentum=0.3).double()
    ours = nlnn.BatchNorm(5, momentum=0.3, dtype=np.float64)
    bare_mean, bare_var = np.zeros(5), np.ones(5)
    for mean, var in expected:
        torch_bn(torch.from_numpy(batch))
        ours(batch)
        nl.batch_norm_forward(batch, running_mean=bare_mean, running_var=bare_var, momentum=0.3)
        for running_mean, running_var in ((torch_bn.running_mean.numpy(), torch_bn.running_var.numpy()),
                                          (ours.running_mean, ours.running_var), (bare_mean, bare_var)):
            np.testing.assert_allclose(running_mean, mean, rtol=1e-6)
            np.testing.assert_allclose(running_var, var, rtol=1e-6)
