"""What each rank runs in the distributed tests (a plain module, so spawned processes can import it).

Every rank builds the same full batch from a seed and keeps its own slice, so the
test process can rebuild the full batch and compute torch's BatchNorm on it.
"""
import os
import time

import torch
import torch.distributed as dist
from torch import nn as tnn

from normlab.distributed import SyncBatchNorm, convert_sync_batchnorm


def full_batch(sizes, channels, spatial, seed, dtype=torch.float64, mean=0.0):
    """x, dy (concatenation of every rank's batch) and random gamma, beta for one scenario."""
    g = torch.Generator().manual_seed(seed)
    shape = (sum(sizes), channels, *spatial)
    # a different mean and spread per channel, so that per-channel mistakes show
    scale = torch.rand((1, channels) + (1,) * len(spatial), generator=g, dtype=torch.float64) + 0.5
    shift = torch.randn((1, channels) + (1,) * len(spatial), generator=g, dtype=torch.float64) * 3
    x = mean + shift + scale * torch.randn(shape, generator=g, dtype=torch.float64)
    dy = torch.randn(shape, generator=g, dtype=torch.float64)  # random upstream gradient, never all-ones
    gamma = torch.rand(channels, generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(channels, generator=g, dtype=torch.float64)
    return x.to(dtype), dy.to(dtype), gamma.to(dtype), beta.to(dtype)


def rank_slice(sizes, rank):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _train_steps(spec, rank):
    """Two training steps of SyncBatchNorm on this rank's slice; what the test compares with torch."""
    dtype = getattr(torch, spec.get("dtype", "float64"))
    layer = SyncBatchNorm(spec["channels"], momentum=spec.get("momentum", 0.1), affine=spec.get("affine", True),
                          dtype=dtype)
    results = []
    for step in range(2):
        x, dy, gamma, beta = full_batch(spec["sizes"], spec["channels"], spec["spatial"], spec["seed"] + step,
                                        dtype=dtype, mean=spec.get("mean", 0.0))
        if layer.affine:
            with torch.no_grad():
                layer.weight.copy_(gamma)
                layer.bias.copy_(beta)
            layer.weight.grad = layer.bias.grad = None
        own = rank_slice(spec["sizes"], rank)
        x = x[own].clone().requires_grad_(True)
        y = layer(x)
        (y * dy[own]).sum().backward()
        results.append({
            "y": y.detach(), "dx": x.grad,
            "dweight": None if layer.weight is None else layer.weight.grad.clone(),
            "dbias": None if layer.bias is None else layer.bias.grad.clone(),
            "running_mean": layer.running_mean.clone(), "running_var": layer.running_var.clone(),
            "num_batches_tracked": int(layer.num_batches_tracked),
        })
    return results


class _NoCommunication:
    """Makes every collective raise, and counts the attempts."""

    NAMES = ("all_reduce", "all_gather", "all_gather_single", "all_gather_into_tensor", "broadcast")

    def __enter__(self):
        self.saved, self.calls = {}, 0
        for name in self.NAMES:
            if hasattr(dist, name):
                self.saved[name] = getattr(dist, name)
                setattr(dist, name, self._refuse)
        return self

    def _refuse(self, *args, **kwargs):
        self.calls += 1
        raise AssertionError("a collective was called")

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(dist, name, fn)


def _eval_without_communication(rank):
    """Train one step, then evaluate on this rank alone: eval must not communicate."""
    layer = SyncBatchNorm(3, dtype=torch.float64)
    x, _, _, _ = full_batch([4, 4], 3, (2,), seed=5)
    layer(x[rank_slice([4, 4], rank)])
    layer.eval()
    x_eval = torch.randn(3 + rank, 3, 2, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
    with _NoCommunication() as guard:
        y = layer(x_eval)
    return {"calls": guard.calls, "x": x_eval, "y": y.detach(), "state": layer.state_dict()}


def _bad_inputs():
    """Rank < 2 and a wrong channel count are a ValueError on every rank, before any communication."""
    layer = SyncBatchNorm(3, dtype=torch.float64)
    messages = []
    for bad in (torch.zeros(6, dtype=torch.float64), torch.zeros(4, 5, 2, dtype=torch.float64)):
        with _NoCommunication():
            try:
                layer(bad)
            except ValueError as exc:
                messages.append(str(exc))
    return {"messages": messages, "num_batches_tracked": int(layer.num_batches_tracked)}


def _one_value_per_channel_overall(rank):
    """A global batch of one value per channel is torch's error on every rank, and changes no state."""
    layer = SyncBatchNorm(2, dtype=torch.float64)
    x = torch.randn(1 if rank == 0 else 0, 2, dtype=torch.float64)
    try:
        layer(x)
        message = None
    except ValueError as exc:
        message = str(exc)
    return {"message": message, "state": layer.state_dict()}


def small_cnn():
    torch.manual_seed(0)
    return tnn.Sequential(
        tnn.Conv2d(1, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(),
        tnn.Conv2d(4, 6, 3, padding=1), tnn.BatchNorm2d(6), tnn.ReLU(),
        tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(6 * 4 * 4, 3),
    ).double()


def cnn_batches(steps, batch, seed=0):
    """Learnable data: the label is the brightest of three horizontal bands of the image."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        x = torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float64) * 2 + 1
        bands = torch.stack([x[:, 0, :3].mean((1, 2)), x[:, 0, 3:6].mean((1, 2)), x[:, 0, 6:].mean((1, 2))], 1)
        batches.append((x, bands.argmax(1)))
    return batches


def train(model, batches, own=slice(None)):
    """SGD with momentum; returns the losses of this process's part of each batch, and the final state."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for x, target in batches:
        optimizer.zero_grad()
        loss = tnn.functional.cross_entropy(model(x[own]), target[own])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    module = getattr(model, "module", model)
    return losses, {k: v.detach().clone() for k, v in module.state_dict().items()}


def _ddp_training(rank, world, steps, batch):
    model = convert_sync_batchnorm(small_cnn())
    ddp = tnn.parallel.DistributedDataParallel(model)
    per_rank = batch // world
    return train(ddp, cnn_batches(steps, batch), slice(rank * per_rank, (rank + 1) * per_rank))


def world_two(scenarios, ddp_steps, ddp_batch):
    rank, world = dist.get_rank(), dist.get_world_size()
    return {
        "scenarios": [_train_steps(spec, rank) for spec in scenarios],
        "eval": _eval_without_communication(rank),
        "bad": _bad_inputs(),
        "one_value": _one_value_per_channel_overall(rank),
        "ddp": _ddp_training(rank, world, ddp_steps, ddp_batch),
    }


def world_three(scenarios, victim):
    """The scenarios, then a rank dies mid-step: the survivors return what they saw."""
    rank = dist.get_rank()
    every_rank = [None] * dist.get_world_size()  # the victim's results must outlive it
    dist.all_gather_object(every_rank, [_train_steps(spec, rank) for spec in scenarios])
    return {"scenarios": every_rank, "dying": _dying_rank(victim)}


def _dying_rank(victim):
    """One step completes on every rank; in the next ``victim`` dies after its forward, mid-step."""
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [4] * world
    layer = SyncBatchNorm(3, dtype=torch.float64)
    x, dy, _, _ = full_batch(sizes, 3, (2,), seed=9)
    own = rank_slice(sizes, rank)
    (layer(x[own]) * dy[own]).sum().backward()
    y = layer(x[own])
    if rank == victim:
        os._exit(17)
    start = time.monotonic()
    try:
        (y * dy[own]).sum().backward()
    except RuntimeError as exc:
        return {"error": str(exc), "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}
