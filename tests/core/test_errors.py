"""Bad input raises ValueError naming the problem and the shapes; a failed call changes no running buffer."""
import re

import numpy as np
import pytest
import torch

import normlab as nl
from normlab import nn as nlnn


def x_of(*shape):
    return np.random.default_rng(0).standard_normal(shape)


def fresh_buffers(c=3):
    return {"running_mean": np.full(c, 0.25), "running_var": np.full(c, 1.5)}


ONE_VALUE = "Expected more than 1 value per channel when training, got input size"

# (id, call, words the message must contain). Each call builds its own inputs.
CASES = [
    # BatchNorm
    ("bn-rank-1", lambda: nl.batch_norm_forward(x_of(5)), ["rank", "(5,)"]),
    ("bn-weight-shape", lambda: nl.batch_norm_forward(x_of(4, 3), np.ones(4)), ["weight", "(3,)", "(4, 3)", "(4,)"]),
    ("bn-bias-shape", lambda: nl.batch_norm_forward(x_of(4, 3, 2), None, np.ones((3, 1))),
     ["bias", "(3,)", "(4, 3, 2)", "(3, 1)"]),
    ("bn-running-mean-shape", lambda: nl.batch_norm_forward(x_of(4, 3), running_mean=np.zeros(2), running_var=np.ones(3)),
     ["running_mean", "(3,)", "(2,)"]),
    ("bn-running-var-shape", lambda: nl.batch_norm_forward(x_of(4, 3), running_mean=np.zeros(3), running_var=np.ones(5)),
     ["running_var", "(3,)", "(5,)"]),
    ("bn-eps-zero", lambda: nl.batch_norm_forward(x_of(4, 3), eps=0.0), ["eps", "0.0"]),
    ("bn-eps-negative", lambda: nl.batch_norm_forward(x_of(4, 3), eps=-1e-5), ["eps", "-1e-05"]),
    ("bn-one-value-2d", lambda: nl.batch_norm_forward(x_of(1, 3)), [ONE_VALUE, "(1, 3)"]),
    ("bn-one-value-4d", lambda: nl.batch_norm_forward(x_of(1, 3, 1, 1)), [ONE_VALUE, "(1, 3, 1, 1)"]),
    ("bn-eval-no-buffers", lambda: nl.batch_norm_forward(x_of(4, 3), training=False),
     ["running_mean", "running_var", "(3,)", "(4, 3)"]),
    ("bn-one-buffer", lambda: nl.batch_norm_forward(x_of(4, 3), running_mean=np.zeros(3)), ["running_var"]),
    ("bn-momentum-range", lambda: nl.batch_norm_forward(x_of(4, 3), momentum=1.5, **fresh_buffers()), ["momentum", "1.5"]),
    ("bn-integer-input", lambda: nl.batch_norm_forward(np.arange(12).reshape(4, 3)), ["floating", "int"]),
    ("bn-backward-dy-shape", lambda: nl.batch_norm_backward(x_of(4, 2), nl.batch_norm_forward(x_of(4, 3))[1]),
     ["(4, 2)", "(4, 3)"]),
    # LayerNorm
    ("ln-normalized-shape", lambda: nl.layer_norm_forward(x_of(4, 3, 5), (3,)), ["normalized_shape", "(3,)", "(4, 3, 5)"]),
    ("ln-too-long-shape", lambda: nl.layer_norm_forward(x_of(5), (2, 5)), ["(2, 5)", "(5,)"]),
    ("ln-weight-shape", lambda: nl.layer_norm_forward(x_of(4, 3, 5), (3, 5), np.ones(5)), ["weight", "(3, 5)", "(5,)"]),
    ("ln-eps-zero", lambda: nl.layer_norm_forward(x_of(4, 5), 5, eps=0), ["eps"]),
    # GroupNorm
    ("gn-rank-1", lambda: nl.group_norm_forward(x_of(6), 2), ["rank", "(6,)"]),
    ("gn-not-divisible", lambda: nl.group_norm_forward(x_of(2, 6, 3), 4), ["divisible", "C=6", "G=4", "(2, 6, 3)"]),
    ("gn-zero-groups", lambda: nl.group_norm_forward(x_of(2, 6, 3), 0), ["divisible", "G=0"]),
    ("gn-weight-per-group", lambda: nl.group_norm_forward(x_of(2, 6, 3), 3, np.ones(3)), ["weight", "(6,)", "(3,)"]),
    ("gn-eps-negative", lambda: nl.group_norm_forward(x_of(2, 6, 3), 3, eps=-1.0), ["eps"]),
    # InstanceNorm
    ("in-rank-2", lambda: nl.instance_norm_forward(x_of(4, 3)), ["rank", "(4, 3)"]),
    ("in-weight-shape", lambda: nl.instance_norm_forward(x_of(4, 3, 5), np.ones(5)), ["weight", "(3,)", "(5,)"]),
    ("in-eps-zero", lambda: nl.instance_norm_forward(x_of(4, 3, 5), eps=0.0), ["eps"]),
    ("in-one-spatial", lambda: nl.instance_norm_forward(x_of(4, 3, 1)),
     ["Expected more than 1 spatial element when training, got input size", "(4, 3, 1)"]),
    ("in-no-buffers-without-input-stats", lambda: nl.instance_norm_forward(x_of(4, 3, 5), use_input_stats=False),
     ["running_mean", "(3,)", "(4, 3, 5)"]),
    # RMSNorm
    ("rms-trailing-shape", lambda: nl.rms_norm_forward(x_of(2, 4, 3), (3, 4)), ["normalized_shape", "(3, 4)", "(2, 4, 3)"]),
    ("rms-more-dims-than-input", lambda: nl.rms_norm_forward(x_of(4), (1, 4)), ["(1, 4)", "(4,)"]),
    ("rms-weight-shape", lambda: nl.rms_norm_forward(x_of(2, 5), 5, np.ones(4)), ["weight", "(5,)", "(4,)", "(2, 5)"]),
    ("rms-eps-negative", lambda: nl.rms_norm_forward(x_of(2, 5), 5, eps=-1e-6), ["eps", "-1e-06"]),
    # LocalResponseNorm
    ("lrn-rank-2", lambda: nl.local_response_norm_forward(x_of(4, 3), 2), ["rank", "(4, 3)"]),
    ("lrn-size-0", lambda: nl.local_response_norm_forward(x_of(4, 3, 2), 0), ["size", "0"]),
    ("lrn-size-float", lambda: nl.local_response_norm_forward(x_of(4, 3, 2), 2.5), ["size", "2.5"]),
    # Layers: the channel count is fixed at construction
    ("layer-bn-channels", lambda: nlnn.BatchNorm(3, dtype="float64")(x_of(4, 5, 2)),
     ["num_features=3", "5 channels", "(4, 5, 2)"]),
    ("layer-in-channels", lambda: nlnn.InstanceNorm(3, dtype="float64")(x_of(4, 2, 6)),
     ["num_features=3", "2 channels", "(4, 2, 6)"]),
    ("layer-gn-channels", lambda: nlnn.GroupNorm(2, 6, dtype="float64")(x_of(4, 4, 3)),
     ["num_features=6", "4 channels", "(4, 4, 3)"]),
    ("layer-gn-not-divisible", lambda: nlnn.GroupNorm(4, 6), ["divisible", "6", "4"]),
    ("layer-ln-shape", lambda: nlnn.LayerNorm((3, 4), dtype="float64")(x_of(2, 4, 3)), ["(3, 4)", "(2, 4, 3)"]),
    ("layer-rms-shape", lambda: nlnn.RMSNorm((3, 4), dtype="float64")(x_of(2, 4, 3)), ["(3, 4)", "(2, 4, 3)"]),
    # Layers: an input wider than the layer's dtype
    ("layer-bn-float64-into-float32", lambda: nlnn.BatchNorm(3)(x_of(4, 3)),
     ["BatchNorm", "float64", "float32", "dtype=float64"]),
    ("layer-rms-float64-into-float32", lambda: nlnn.RMSNorm(3)(x_of(4, 3)), ["RMSNorm", "float64", "float32"]),
    ("layer-ln-torch-float64-into-float32", lambda: nlnn.LayerNorm(3)(torch.zeros(2, 3, dtype=torch.float64)),
     ["float64", "float32"]),
    ("layer-bad-dtype", lambda: nlnn.BatchNorm(3, dtype="int32"), ["dtype", "int32"]),
]


@pytest.mark.parametrize("call, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_value_error_that_names_the_shapes(call, words):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_one_value_per_channel_uses_torchs_wording():
    with pytest.raises(ValueError, match="^" + re.escape(ONE_VALUE)):
        nl.batch_norm_forward(x_of(1, 4))
    with pytest.raises(ValueError, match=re.escape(ONE_VALUE)):  # the same words torch uses
        torch.nn.functional.batch_norm(torch.zeros(1, 4), None, None, training=True)


# --- a failed call changes nothing ------------------------------------------------------------------

FAILING_BUFFERED_CALLS = {
    "bn-one-value": lambda buf: nl.batch_norm_forward(x_of(1, 3), **buf),
    "bn-weight-shape": lambda buf: nl.batch_norm_forward(x_of(4, 3), np.ones(2), **buf),
    "bn-eps": lambda buf: nl.batch_norm_forward(x_of(4, 3), eps=0.0, **buf),
    "bn-momentum": lambda buf: nl.batch_norm_forward(x_of(4, 3), momentum=-0.1, **buf),
    "bn-momentum-none": lambda buf: nl.batch_norm_forward(x_of(4, 3), momentum=None, **buf),
    "bn-integer-input": lambda buf: nl.batch_norm_forward(np.ones((4, 3), dtype=np.int64), **buf),
    "bn-mixed-libraries": lambda buf: nl.batch_norm_forward(torch.ones(4, 3, dtype=torch.float64), **buf),
    "in-one-spatial": lambda buf: nl.instance_norm_forward(x_of(4, 3, 1), **buf),
    "in-bias-shape": lambda buf: nl.instance_norm_forward(x_of(4, 3, 5), None, np.ones(4), **buf),
    "in-eps": lambda buf: nl.instance_norm_forward(x_of(4, 3, 5), eps=-1.0, **buf),
    "in-mixed-libraries": lambda buf: nl.instance_norm_forward(torch.ones(4, 3, 5, dtype=torch.float64), **buf),
}


@pytest.mark.parametrize("name", FAILING_BUFFERED_CALLS)
def test_failed_call_leaves_running_buffers_untouched(name):
    buffers = fresh_buffers()
    before = {k: v.copy() for k, v in buffers.items()}
    with pytest.raises(ValueError):
        FAILING_BUFFERED_CALLS[name](buffers)
    for key in buffers:
        np.testing.assert_array_equal(buffers[key], before[key], err_msg=key)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_failed_layer_call_changes_neither_buffers_nor_batch_count(momentum):
    layer = nlnn.BatchNorm(3, momentum=momentum)
    layer(x_of(4, 3).astype(np.float32))  # one good batch, so the buffers are not at their initial values
    before = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    for bad in (x_of(1, 3), x_of(4, 2), x_of(3), x_of(4, 3)):  # x_of(4, 3) is float64: wider than the layer
        with pytest.raises(ValueError):
            layer(bad)
    after = layer.state_dict()
    assert after["num_batches_tracked"] == before["num_batches_tracked"] == 1
    for key in ("running_mean", "running_var", "weight", "bias"):
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
        assert after[key].dtype == np.float32, key


def test_eval_needs_no_positive_eps_but_training_does():
    """eps <= 0 is an error only where batch statistics are used (DESIGN); eval with eps=0 is fine."""
    y, _ = nl.batch_norm_forward(x_of(4, 3), training=False, eps=0.0, **fresh_buffers())
    assert np.all(np.isfinite(y))
    with pytest.raises(ValueError, match="eps"):
        nl.batch_norm_forward(x_of(4, 3), training=True, eps=0.0, **fresh_buffers())
