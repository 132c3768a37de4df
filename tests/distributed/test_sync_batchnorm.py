"""SyncBatchNorm on 1, 2 and 3 CPU processes (gloo over loopback) against torch's BatchNorm on the whole batch.

torch is the oracle: every rank trains on its slice of a batch, and the test
process runs ``torch.nn.BatchNorm`` on the concatenation. Each group of
processes is started once per module (``launch`` spawns them and bounds the time).
"""
import copy
import datetime

import numpy as np
import pytest
import torch
import torch.distributed as dist
from sync_workers import cnn_batches, full_batch, small_cnn, train
from torch import nn as tnn

import sync_workers
from normlab.distributed import (
    SyncBatchNorm,
    WorkerError,
    chan_merge,
    convert_sync_batchnorm,
    launch,
    merge_moments,
)

EXACT = dict(rtol=0, atol=1e-10)
TIME_LIMIT = 90  # seconds for one group of processes, start-up included; a hang fails instead of blocking CI

SCENARIOS_2 = {  # per-rank batch sizes; spatial shape; more options
    "equal": dict(sizes=[4, 4], channels=3, spatial=(5, 2), seed=1),
    "unequal": dict(sizes=[7, 2], channels=3, spatial=(4,), seed=2),
    "empty rank": dict(sizes=[0, 6], channels=4, spatial=(3, 3), seed=3),
    "one value per channel on a rank": dict(sizes=[1, 5], channels=2, spatial=(), seed=4),
    "no affine, cumulative momentum": dict(sizes=[3, 5], channels=3, spatial=(2,), seed=5, affine=False,
                                           momentum=None),
}
SCENARIOS_3 = {
    "unequal and empty": dict(sizes=[3, 0, 5], channels=3, spatial=(2, 3), seed=6),
    "one sample each": dict(sizes=[1, 1, 1], channels=2, spatial=(3,), seed=7),
}
FLOAT32 = dict(sizes=[5, 3], channels=3, spatial=(6,), seed=8, dtype="float32", mean=1e4)
DDP_STEPS, DDP_BATCH = 10, 16


@pytest.fixture(scope="module")
def world_two():
    specs = list(SCENARIOS_2.values()) + [FLOAT32]
    return launch(sync_workers.world_two, 2, specs, DDP_STEPS, DDP_BATCH, timeout=TIME_LIMIT)


COLLECTIVE_TIME_LIMIT = 10  # seconds a collective waits for a missing rank
VICTIM = 2


@pytest.fixture(scope="module")
def world_three():
    """Per rank ``(kind, value)``: three ranks run the scenarios, then rank 2 dies in the middle of a step."""
    with pytest.raises(WorkerError) as info:
        launch(sync_workers.world_three, 3, list(SCENARIOS_3.values()), VICTIM, timeout=TIME_LIMIT,
               collective_timeout=COLLECTIVE_TIME_LIMIT)
    return info.value.outcomes


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """This process's own torch work on one thread: tiny tensors, and a CPU shared with the ranks."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torch_reference(spec):
    """torch.nn.BatchNorm on the full batch, two steps: per step y, dx, dweight, dbias and the running stats."""
    dtype = torch.float64  # the float32 scenario is compared with float64 torch
    layer = tnn.BatchNorm1d(spec["channels"], momentum=spec.get("momentum", 0.1), affine=spec.get("affine", True),
                            dtype=dtype)
    steps = []
    for step in range(2):
        x, dy, gamma, beta = full_batch(spec["sizes"], spec["channels"], spec["spatial"], spec["seed"] + step,
                                        mean=spec.get("mean", 0.0))
        if spec.get("dtype") == "float32":
            x, dy = x.float().double(), dy.float().double()  # the float32 values the ranks saw, in float64
            gamma, beta = gamma.float().double(), beta.float().double()
        if layer.affine:
            with torch.no_grad():
                layer.weight.copy_(gamma)
                layer.bias.copy_(beta)
            layer.weight.grad = layer.bias.grad = None
        x = x.reshape(x.shape[0], x.shape[1], -1).requires_grad_(True)  # BatchNorm1d takes (N, C, L)
        y = layer(x)
        (y * dy.reshape(x.shape)).sum().backward()
        steps.append({
            "y": y.detach().reshape(dy.shape), "dx": x.grad.reshape(dy.shape),
            "dweight": None if layer.weight is None else layer.weight.grad.clone(),
            "dbias": None if layer.bias is None else layer.bias.grad.clone(),
            "running_mean": layer.running_mean.clone(), "running_var": layer.running_var.clone(),
            "num_batches_tracked": int(layer.num_batches_tracked),
        })
    return steps


def assert_matches_full_batch(spec, per_rank, **tolerance):
    for step, expected in enumerate(torch_reference(spec)):
        got = [rank[step] for rank in per_rank]
        for key in ("y", "dx"):  # the ranks' slices, concatenated, are the full batch's
            np.testing.assert_allclose(torch.cat([g[key] for g in got]).double(), expected[key], **tolerance,
                                       err_msg=f"step {step}: {key}")
        for key in ("dweight", "dbias"):  # the sum over ranks is the full batch's gradient
            if expected[key] is None:
                assert all(g[key] is None for g in got)
            else:
                total = sum(g[key].double() for g in got)
                np.testing.assert_allclose(total, expected[key], **tolerance, err_msg=f"step {step}: {key}")
        for g in got:  # every rank holds the full batch's running statistics
            for key in ("running_mean", "running_var"):
                np.testing.assert_allclose(g[key].double(), expected[key], **tolerance, err_msg=f"step {step}: {key}")
            assert g["num_batches_tracked"] == expected["num_batches_tracked"]


@pytest.mark.parametrize("name", list(SCENARIOS_2))
def test_two_ranks_equal_batchnorm_on_the_concatenated_batch(world_two, name):
    index = list(SCENARIOS_2).index(name)
    assert_matches_full_batch(SCENARIOS_2[name], [rank["scenarios"][index] for rank in world_two], **EXACT)


@pytest.mark.parametrize("name", list(SCENARIOS_3))
def test_three_ranks_equal_batchnorm_on_the_concatenated_batch(world_three, name):
    index = list(SCENARIOS_3).index(name)
    assert [kind for kind, _ in world_three] == ["ok", "ok", "exited"], world_three
    every_rank = world_three[0][1]["scenarios"]  # gathered from all three before the victim died
    assert_matches_full_batch(SCENARIOS_3[name], [rank[index] for rank in every_rank], **EXACT)


def test_float32_with_mean_1e4_stays_within_2e_3_of_float64(world_two):
    per_rank = [rank["scenarios"][-1] for rank in world_two]
    assert per_rank[0][0]["y"].dtype == torch.float32
    assert_matches_full_batch(FLOAT32, per_rank, rtol=2e-3, atol=2e-3)


def test_eval_uses_the_running_statistics_without_communicating(world_two):
    for rank in world_two:
        result = rank["eval"]
        assert result["calls"] == 0
        reference = tnn.BatchNorm1d(3, dtype=torch.float64)
        reference.load_state_dict(result["state"])
        reference.eval()
        np.testing.assert_allclose(result["y"], reference(result["x"]).detach(), **EXACT)
        assert result["state"]["num_batches_tracked"] == 1


def test_bad_input_is_a_value_error_before_any_communication(world_two):
    for rank in world_two:
        first, second = rank["bad"]["messages"]
        assert "expects an input of shape (N, 3, *), got shape (6,)" in first
        assert "expects an input of shape (N, 3, *), got shape (4, 5, 2)" in second
        assert rank["bad"]["num_batches_tracked"] == 0


def test_one_value_per_channel_over_all_ranks_is_an_error_on_every_rank(world_two):
    for rank in world_two:
        assert "Expected more than 1 value per channel when training" in rank["one_value"]["message"]
        state = rank["one_value"]["state"]
        assert int(state["num_batches_tracked"]) == 0
        assert torch.equal(state["running_mean"], torch.zeros(2, dtype=torch.float64))
        assert torch.equal(state["running_var"], torch.ones(2, dtype=torch.float64))


def test_ddp_with_syncbatchnorm_trains_like_one_process_on_the_full_batch(world_two):
    expected_losses, expected_state = train(small_cnn(), cnn_batches(DDP_STEPS, DDP_BATCH))
    assert expected_losses[-1] < expected_losses[0]  # it learns, so the trajectory is informative
    # each rank's loss is the mean over its half; equal halves make their average the full batch's loss
    losses = np.mean([rank["ddp"][0] for rank in world_two], axis=0)
    np.testing.assert_allclose(losses, expected_losses, rtol=0, atol=1e-8)
    for rank in world_two:
        state = rank["ddp"][1]
        assert list(state) == list(expected_state)
        for key, value in expected_state.items():
            np.testing.assert_allclose(state[key].double(), value.double(), rtol=0, atol=1e-8, err_msg=key)


def test_a_rank_dying_mid_step_is_a_clear_error_on_the_others_not_a_hang(world_three):
    assert world_three[VICTIM] == ("exited", 17)
    for rank, (kind, value) in enumerate(world_three):
        if rank == VICTIM:
            continue
        assert kind == "ok", value
        error = value["dying"]["error"]
        assert "SyncBatchNorm" in error and "all_reduce" in error and "Did another rank stop" in error
        assert value["dying"]["seconds"] < COLLECTIVE_TIME_LIMIT + 5  # the collective's time limit, not a hang


# ---------------------------------------------------------------------------------------------------------------
# In this process: no group, a group of one, conversion, the merge


def _train_and_compare(layer, reference, x, dy):
    for module in (layer, reference):
        with torch.no_grad():
            module.weight.copy_(torch.linspace(0.5, 1.5, x.shape[1], dtype=torch.float64))
            module.bias.copy_(torch.linspace(-1, 1, x.shape[1], dtype=torch.float64))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = layer(xa), reference(xb)
    (ya * dy).sum().backward()
    (yb * dy).sum().backward()
    np.testing.assert_allclose(ya.detach(), yb.detach(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(xa.grad, xb.grad, rtol=0, atol=1e-12)
    for (name, a), (_, b) in zip(layer.state_dict().items(), reference.state_dict().items()):
        np.testing.assert_allclose(a.double(), b.double(), rtol=0, atol=1e-12, err_msg=name)


def test_without_a_process_group_it_is_batchnorm():
    assert not dist.is_initialized()
    x, dy, _, _ = full_batch([6], 3, (4, 4), seed=11)
    _train_and_compare(SyncBatchNorm(3, dtype=torch.float64), tnn.BatchNorm2d(3, dtype=torch.float64), x, dy)


def test_with_a_group_of_one_rank_it_is_batchnorm(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=10))
    try:
        x, dy, _, _ = full_batch([5], 2, (3,), seed=12)
        _train_and_compare(SyncBatchNorm(2, dtype=torch.float64), tnn.BatchNorm1d(2, dtype=torch.float64), x, dy)
    finally:
        dist.destroy_process_group()


def test_state_dict_keys_are_torch_syncbatchnorm_keys_and_its_state_loads():
    theirs = tnn.SyncBatchNorm(5)
    with torch.no_grad():
        for tensor in theirs.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 2.0)
    ours = SyncBatchNorm(5)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_bad_input_without_a_group_is_a_value_error():
    for layer in (SyncBatchNorm(3), SyncBatchNorm(3, affine=False, track_running_stats=False)):
        for bad in (torch.zeros(3), torch.zeros(4, 2, 5)):
            with pytest.raises(ValueError, match=r"expects an input of shape \(N, 3, \*\)"):
                layer(bad)
        assert layer.num_batches_tracked is None or int(layer.num_batches_tracked) == 0


def test_convert_sync_batchnorm_keeps_every_state_entry():
    torch.manual_seed(3)
    model = tnn.Sequential(
        tnn.Conv2d(1, 4, 3), tnn.BatchNorm2d(4),
        tnn.Sequential(tnn.Flatten(), tnn.Linear(4, 5), tnn.BatchNorm1d(5, momentum=None, eps=1e-3)),
        tnn.SyncBatchNorm(5, affine=False), tnn.BatchNorm3d(2, track_running_stats=False),
    ).double()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(7)
    model[2][2].eval()
    before = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    originals = [m for m in model.modules() if isinstance(m, tnn.modules.batchnorm._BatchNorm)]
    settings = [(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, m.training) for m in originals]
    group = object()  # any handle: conversion only stores it

    converted = convert_sync_batchnorm(model, process_group=group)
    assert converted is model
    layers = [m for m in model.modules() if isinstance(m, tnn.modules.batchnorm._BatchNorm)]
    assert len(layers) == 4 and all(type(m) is SyncBatchNorm and m.process_group is group for m in layers)
    assert [(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, m.training)
            for m in layers] == settings
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)
    for key, tensor in before.items():
        assert after[key] is tensor, key  # the very same tensors: an existing optimizer still updates them

    single = tnn.BatchNorm1d(3)
    assert type(convert_sync_batchnorm(single)) is SyncBatchNorm


def test_converted_model_without_a_group_trains_like_the_original():
    reference = small_cnn()
    converted = convert_sync_batchnorm(copy.deepcopy(reference))
    batches = cnn_batches(3, 8)
    np.testing.assert_allclose(train(converted, batches)[0], train(reference, batches)[0], rtol=0, atol=1e-10)


def _two_pass(x):
    return x.size, x.mean(), ((x - x.mean()) ** 2).sum()


@pytest.mark.parametrize("sizes", [[5, 3], [1, 7, 2], [0, 4, 0, 6], [9]])
def test_merge_equals_the_statistics_of_the_union(sizes):
    rng = np.random.default_rng(sum(sizes))
    groups = [rng.normal(3.0 + i, 1.0 + i, n) for i, n in enumerate(sizes)]
    stats = [(n, g.mean() if n else 0.0, ((g - g.mean()) ** 2).sum() if n else 0.0) for n, g in zip(sizes, groups)]
    n, mean, m2 = _two_pass(np.concatenate(groups))

    pairwise = stats[0]
    for s in stats[1:]:
        pairwise = chan_merge(pairwise, s)
    np.testing.assert_allclose(pairwise[1:], (mean, m2), rtol=1e-12)
    assert pairwise[0] == n

    counts = torch.tensor([s[0] for s in stats], dtype=torch.float64)
    means = torch.tensor([[s[1]] for s in stats], dtype=torch.float64)
    m2s = torch.tensor([[s[2]] for s in stats], dtype=torch.float64)
    total, merged_mean, merged_m2 = merge_moments(counts, means, m2s)
    assert float(total) == n
    np.testing.assert_allclose([float(merged_mean[0]), float(merged_m2[0])], [mean, m2], rtol=1e-12)


def test_merge_in_float32_keeps_the_digits_at_mean_1e4():
    rng = np.random.default_rng(0)
    groups = [1e4 + rng.standard_normal(n) for n in (300, 200, 500)]
    n, mean, m2 = _two_pass(np.concatenate(groups))
    counts = torch.tensor([g.size for g in groups], dtype=torch.float32)
    means = torch.tensor([[np.float32(g).astype(np.float64).mean()] for g in groups], dtype=torch.float32)
    m2s = torch.tensor([[((g - g.mean()) ** 2).sum()] for g in groups], dtype=torch.float32)
    _, merged_mean, merged_m2 = merge_moments(counts, means, m2s)
    assert abs(float(merged_mean[0]) - mean) < 2e-3
    assert abs(float(merged_m2[0]) / n - m2 / n) < 2e-3
