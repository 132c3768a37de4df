r"""BatchNorm whose statistics span every process: `SyncBatchNorm` over ``torch.distributed``.

When a batch is split over W processes, plain BatchNorm normalizes each slice
with its own statistics (a "ghost batch"). `SyncBatchNorm` computes them over
the whole batch instead, with two collectives per layer and step:

- **forward**, one ``all_gather`` of each rank's per-channel ``(count, mean, M2)``
  (``M2`` is the sum of squared deviations from the local mean), merged with the
  parallel formula of Chan, Golub and LeVeque (`merge_moments`). Each rank then
  normalizes its own slice with the global mean and biased variance, and updates
  the running statistics with the global count and the unbiased variance;
- **backward**, one ``all_reduce`` (sum) of the two per-channel sums that chapter
  3's compact formula needs, :math:`\sum dy` and :math:`\sum dy\,\hat x`, then
  :math:`dx = \frac{\gamma}{\sigma}\bigl(dy - \tfrac1N\sum dy - \hat x\,\tfrac1N\sum dy\,\hat x\bigr)`
  with N the global count. The gradients of γ and β stay the local sums: the
  data-parallel wrapper (DDP) adds or averages them over the ranks, as it does for
  every other parameter.

Payload per layer and step, for C channels, W ranks and b bytes per value: each
rank contributes (2C+1)·b bytes to the gather (and receives W times that) and
2C·b bytes to the all-reduce. ``bench/distributed.py`` measures it.

Ranks whose batch is smaller, or empty, take part like the others (every rank
must run the same forward and backward passes, or the collectives wait for the
missing one; `launch` sets a time limit so that a dead rank is an error, not a
hang). In eval the running statistics are used and nothing is communicated.
Without an initialized process group, or with one rank, `SyncBatchNorm` is
`normlab.torch_bridge.BatchNorm`.

Communication is ``torch.distributed`` only: gloo on CPU tensors (which
``torch.nn.SyncBatchNorm`` refuses) and NCCL on CUDA. The class is deliberately
not a subclass of ``torch.nn.SyncBatchNorm``: DistributedDataParallel rejects
those on CPU modules.
"""
import datetime
import os
import pickle
import sys
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from ._backend import compute_dtype, namespace, numel
from ._checks import require_eps, require_momentum, require_per_channel
from .axes import batch_layout
from .core import compute_stats, normalize, normalize_backward
from .running_stats import unbiased_var, update_running_stats
from .torch_bridge import BatchNorm, _twin_of

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "chan_merge", "merge_moments", "launch", "WorkerError"]

_OP = "SyncBatchNorm"


# ---------------------------------------------------------------------------------------------------------------
# Merging statistics (Chan, Golub and LeVeque 1979)


def chan_merge(a, b):
    r"""Merge two groups' ``(count, mean, M2)`` into those of their union.

    With :math:`\delta = \bar x_b - \bar x_a` and :math:`n = n_a + n_b`:
    :math:`\bar x = \bar x_a + \delta\,n_b/n` and
    :math:`M_2 = M_{2,a} + M_{2,b} + \delta^2 n_a n_b / n`. Only differences of
    means are squared, so no digits cancel the way they do in E[x²]−E[x]².
    Works on numbers, NumPy arrays and torch tensors (per channel).
    """
    (na, mean_a, m2a), (nb, mean_b, m2b) = a, b
    n = na + nb
    if n == 0:
        return n, mean_a, m2a
    delta = mean_b - mean_a
    return n, mean_a + delta * (nb / n), m2a + m2b + delta * delta * (na * nb / n)


def merge_moments(counts, means, m2s):
    r"""Chan's merge of W groups at once: ``counts`` (W,), ``means`` and ``m2s`` (W, C) -> (N, mean, M2).

    The W-way form of `chan_merge` (equal to merging pairwise, in exact arithmetic):
    :math:`\bar x = \sum_r n_r \bar x_r / N` and
    :math:`M_2 = \sum_r M_{2,r} + \sum_r n_r (\bar x_r - \bar x)^2`. The mean is
    accumulated as an offset from the largest group's mean, so that float32 keeps
    the digits of data whose mean is large compared with its spread. Groups with
    a count of 0 contribute nothing.
    """
    counts = counts.reshape(-1, 1)
    total = counts.sum()
    reference = means[int(torch.argmax(counts))]
    weights = counts / torch.clamp(total, min=1)
    mean = reference + (weights * (means - reference)).sum(0)
    m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
    return total, mean, m2


# ---------------------------------------------------------------------------------------------------------------
# The collectives, with an error that says what went wrong


def _all_gather(out, packet, group):
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # newer torch renamed it
    _collective(gather, "the all_gather of the batch statistics (forward)", group, out, packet)


def _all_reduce(sums, group):
    _collective(dist.all_reduce, "the all_reduce of sum(dy) and sum(dy * x_hat) (backward)", group, sums)


def _collective(op, what, group, *tensors):
    try:
        op(*tensors, group=group)
    except RuntimeError as exc:  # gloo and NCCL raise DistBackendError, a RuntimeError, on a dead peer or timeout
        raise RuntimeError(
            f"{_OP}: {what} over {dist.get_world_size(group)} ranks failed on rank {dist.get_rank(group)}. "
            "Did another rank stop, time out, or skip this step? Every rank must run the same forward "
            f"and backward passes. The backend said: {exc}"
        ) from exc


def _sync_group(process_group):
    """The group to synchronize over, or None when there is no one to synchronize with."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


# ---------------------------------------------------------------------------------------------------------------
# The layer


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode BatchNorm over the union of every rank's batch, with normlab's core doing the maths."""

    @staticmethod
    def forward(ctx, x, weight, bias, running, eps, group):
        # ``running`` is (running_mean, running_var, momentum), or None: updated in place, not differentiated.
        x = x.detach()
        detach = lambda t: None if t is None else t.detach()  # noqa: E731
        weight, bias = detach(weight), detach(bias)
        channels = x.shape[1]
        layout = batch_layout(x.shape)
        ctype = compute_dtype(namespace(x), x.dtype)

        # This rank's (count, mean, M2) per channel; an empty batch sends a count of 0.
        count = numel(x.shape) // channels if channels else 0
        if count > 0:
            mean, var, _ = compute_stats(x.to(ctype), layout.reduce)
            mean, m2 = mean.reshape(channels), var.reshape(channels) * count
        else:
            mean = m2 = torch.zeros(channels, dtype=ctype, device=x.device)
        packet = torch.cat([torch.tensor([float(count)], dtype=ctype, device=x.device), mean, m2])
        world = dist.get_world_size(group)
        gathered = torch.empty(world * packet.numel(), dtype=ctype, device=x.device)
        _all_gather(gathered, packet, group)
        gathered = gathered.reshape(world, packet.numel())  # one row per rank
        total, mean, m2 = merge_moments(gathered[:, 0], gathered[:, 1:channels + 1], gathered[:, channels + 1:])

        total = int(round(float(total)))
        if total == 1:  # every rank sees the same total, so every rank raises: nothing is left waiting
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)} "
                f"on this rank and 1 value per channel over all {dist.get_world_size(group)} ranks"
            )
        var = m2 / max(total, 1)  # biased: what the forward normalizes with
        stats = (mean.reshape(layout.param_shape), var.reshape(layout.param_shape))
        y, ctx.cache, _ = normalize(x, layout, weight, bias, eps=eps, stats=stats)
        if running is not None and total > 0:
            running_mean, running_var, momentum = running
            update_running_stats(running_mean, running_var, mean, unbiased_var(var, total), momentum)
        ctx.total, ctx.group = total, group
        return y

    @staticmethod
    def backward(ctx, dy):
        cache = ctx.cache
        xhat = cache.xhat
        dy = dy.to(xhat.dtype)
        reduce = cache.layout.reduce
        # The two per-channel sums of the compact formula are all that crosses between ranks.
        local = torch.stack([dy.sum(reduce), (dy * xhat).sum(reduce)])
        sums = local.clone()
        _all_reduce(sums, ctx.group)
        shape = cache.layout.param_shape
        mean_dy = (sums[0] / max(ctx.total, 1)).reshape(shape)
        mean_dy_xhat = (sums[1] / max(ctx.total, 1)).reshape(shape)
        # The cache holds the statistics as constants, so the core's backward is exactly (γ/σ)·(its argument):
        # it applies the outer factor of dx = (γ/σ)·(dy - mean(dy) - x̂·mean(dy·x̂)).
        dx, _, _ = normalize_backward(dy - mean_dy - xhat * mean_dy_xhat, cache)
        dweight = dbias = None
        if cache.weight is not None:
            dweight = local[1].to(cache.param_dtype)
        if cache.has_bias:
            dbias = local[0].to(cache.param_dtype)
        return dx, dweight, dbias, None, None, None


class SyncBatchNorm(BatchNorm):
    """BatchNorm over every rank's batch at once; any input rank >= 2, on CPU (gloo) or CUDA (NCCL).

    Parameters, buffers and ``state_dict`` keys are torch's (``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``), so a
    ``torch.nn.SyncBatchNorm`` or ``BatchNorm2d`` state loads as is.
    ``process_group=None`` means the default group. Synchronization happens in
    training only; in eval (and without a group, or with one rank) this is
    `normlab.torch_bridge.BatchNorm`.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def forward(self, x):
        # Checked on this rank before communicating. (Another rank's bad input makes that rank raise, and
        # this one then fails with the collectives' error when the time limit is reached.)
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{_OP}({self.num_features}) expects an input of shape (N, {self.num_features}, *), "
                             f"got shape {tuple(x.shape)}")
        group = _sync_group(self.process_group) if self.training else None
        if group is None:
            return super().forward(x)
        require_per_channel(x, _OP, 2, "(N, C, *)", weight=self.weight, bias=self.bias,
                            running_mean=self.running_mean, running_var=self.running_var)
        require_eps(self.eps, _OP)
        updating = self.track_running_stats
        momentum = self.momentum
        if updating and momentum is None:  # a cumulative average: the k-th batch gets weight 1/k
            momentum = 1.0 / float(self.num_batches_tracked + 1)
        if updating:
            require_momentum(momentum, _OP)
        running = (self.running_mean, self.running_var, momentum) if updating else None
        y = _SyncBatchNormFunction.apply(x, self.weight, self.bias, running, self.eps, group)
        if updating:
            self.num_batches_tracked.add_(1)
        return y

    def extra_repr(self):
        return super().extra_repr() + ("" if self.process_group is None else ", process_group=<given>")


def convert_sync_batchnorm(module, process_group=None):
    """Replace every BatchNorm in ``module`` (``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``, normlab's) by
    `SyncBatchNorm`, keeping its parameters, buffers, hyperparameters, mode and hooks (the very same tensors,
    so an optimizer built beforehand still updates them). Returns the module; a BatchNorm given on its own
    comes back converted."""
    if isinstance(module, _BatchNorm) and type(module) is not SyncBatchNorm:
        converted = _twin_of(module, SyncBatchNorm)
        converted.process_group = process_group
        return converted
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module


# ---------------------------------------------------------------------------------------------------------------
# Running a function on W local processes


class WorkerError(RuntimeError):
    """Some rank of `launch` raised, died or ran out of time. ``outcomes[r]`` is ``(kind, detail)`` for rank r:
    ``("ok", value)``, ``("error", traceback text)``, ``("exited", exit code)`` or ``("timeout", seconds)``."""

    def __init__(self, outcomes):
        self.outcomes = outcomes
        lines = [f"rank {r}: {kind}" + ("" if kind == "ok" else f": {detail}") for r, (kind, detail) in
                 enumerate(outcomes)]
        super().__init__("launch: not every rank finished\n" + "\n".join(lines))


def launch(fn, world_size, *args, timeout=120.0, collective_timeout=30.0, backend="gloo", threads=1):
    """Run ``fn(*args)`` on ``world_size`` new processes that form one ``torch.distributed`` group.

    Each process is a fresh interpreter, forked from a server that has imported torch
    once (the ``forkserver`` start method; ``spawn`` where that is missing), so
    ``fn`` must be importable: a function of a module, not of a notebook. It joins a
    group through a file rendezvous in a fresh temporary folder (gloo traffic stays
    on the loopback interface), runs with ``threads`` torch threads and returns
    ``fn``'s value. Returns the values by rank.
    Every collective waits at most ``collective_timeout`` seconds, and the whole run at most ``timeout``;
    a rank that raises, dies or runs out of time makes this raise `WorkerError`.
    """
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ValueError(f"launch: world_size must be a positive int, got {world_size!r}")
    context = _start_context()
    with tempfile.TemporaryDirectory(prefix="normlab-dist-") as folder:
        processes = [context.Process(target=_run_rank, daemon=True,
                                     args=(fn, args, rank, world_size, folder, backend, collective_timeout, threads))
                     for rank in range(world_size)]
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        late = [p for p in processes if p.is_alive()]
        for process in late:
            process.kill()
            process.join()
        outcomes = []
        for rank, process in enumerate(processes):
            path = os.path.join(folder, f"result-{rank}.pkl")
            if process in late:
                outcomes.append(("timeout", timeout))
            elif os.path.exists(path):
                with open(path, "rb") as f:
                    outcomes.append(pickle.load(f))
            else:
                outcomes.append(("exited", process.exitcode))
    if any(kind != "ok" for kind, _ in outcomes):
        raise WorkerError(outcomes)
    return [value for _, value in outcomes]


def _start_context():
    if "forkserver" not in torch.multiprocessing.get_all_start_methods():
        return torch.multiprocessing.get_context("spawn")
    context = torch.multiprocessing.get_context("forkserver")
    # Imported once by the server (at its first use), not again by every process it forks.
    context.set_forkserver_preload(["torch", "torch.distributed", "normlab.distributed"])
    return context


def _run_rank(fn, args, rank, world_size, folder, backend, collective_timeout, threads):
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    elif sys.platform == "darwin":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0")
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(backend, init_method="file://" + os.path.join(folder, "rendezvous"), rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=collective_timeout))
        outcome = ("ok", fn(*args))
        pickle.dumps(outcome)  # an unpicklable value is this rank's error, not a missing result
    except BaseException:  # noqa: BLE001 - whatever happened is reported to the parent
        outcome = ("error", traceback.format_exc())
    path = os.path.join(folder, f"result-{rank}.pkl")
    with open(path + ".tmp", "wb") as f:
        pickle.dump(outcome, f)
    os.replace(path + ".tmp", path)  # the parent never reads half a file
    if dist.is_initialized():
        dist.destroy_process_group()
