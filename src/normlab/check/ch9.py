"""Chapter 9: SyncBatchNorm's maths: Chan's merge of (count, mean, M2), the running statistics, and dx from sums.

Each case is cut from a full batch split over ranks (some unequal, some empty),
and the reference is normlab's BatchNorm on that full batch, the thing
SyncBatchNorm must equal. The reference is kept per case, keyed by the case's bytes.
"""
import hashlib

import numpy as np

import normlab as nl
from normlab.core import compute_stats

from ._task import ArrayTask

MEAN_TERM = ("averaging variances without the mean term: the spread between the ranks' means is part of the "
             "global variance")
EQUAL_WEIGHTS = "the ranks' means were averaged with equal weights, but their counts differ"
BIASED = "biased global variance in the running statistics: PyTorch stores the unbiased one"
LOCAL_COUNT = "dividing by the local count: the statistics are over the global batch"


def _digest(args):
    h = hashlib.sha256()
    for a in args:
        if isinstance(a, np.ndarray):
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        else:
            h.update(repr(a).encode())
    return h.hexdigest()


def _split_batch(r, sizes, channels, spatial=(), dtype=np.float64, mean=0.0):
    """A full batch with a different mean and spread per channel, and its slices, one per rank."""
    shape = (sum(sizes), channels, *spatial)
    per_channel = (1, channels) + (1,) * len(spatial)
    x = (mean + r.normal(0, 3, per_channel) + r.uniform(0.5, 2, per_channel) * r.normal(0, 1, shape)).astype(dtype)
    bounds = np.cumsum([0, *sizes])
    return x, [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _moments(part):
    """(count, mean, M2) per channel of one rank's slice, over every axis but 1; zeros for an empty slice."""
    channels = part.shape[1]
    count = part.size // channels if channels else 0
    if count == 0:
        return 0, np.zeros(channels, part.dtype), np.zeros(channels, part.dtype)
    axes = (0,) + tuple(range(2, part.ndim))
    mean, var, _ = compute_stats(part, axes)
    return count, mean.reshape(channels), (var * count).reshape(channels)


class _FromFullBatch(ArrayTask):
    """``build(r, spec) -> (case, expected)``; `reference` returns the expected values of the case it is given."""

    seed = 0
    specs = ()

    def make_cases(self):
        r = np.random.default_rng(self.seed)
        self._expected, cases = {}, []
        for spec in self.specs:
            case, expected = self.build(r, *spec)
            self._expected[_digest(case["args"])] = expected
            cases.append(case)
        return cases

    def reference(self, *args, **kwargs):
        return self._expected[_digest(args)]


class MergeTwoRanks(_FromFullBatch):
    """``merge_two_ranks(n_a, mean_a, m2_a, n_b, mean_b, m2_b) -> (n, mean, m2)``, per channel."""

    name = "merge_two_ranks"
    chapter = 9
    points = 2.0
    outputs = ("n", "mean", "m2")
    label_arg = 1
    seed = 91
    specs = (((5, 3), 3, np.float64, 0.0), ((1, 7), 4, np.float64, 2.0), ((0, 6), 2, np.float64, 0.0),
             ((400, 250), 3, np.float32, 1e4))

    def build(self, r, sizes, channels, dtype, mean):
        x, (a, b) = _split_batch(r, sizes, channels, dtype=dtype, mean=mean)
        (na, mean_a, m2a), (nb, mean_b, m2b) = _moments(a), _moments(b)
        n, mean_all, m2 = _moments(x.astype(np.float64))
        return {"args": [na, mean_a, m2a, nb, mean_b, m2b], "kwargs": {}}, (n, mean_all, m2)

    def mistakes(self, na, mean_a, m2a, nb, mean_b, m2b):
        n = na + nb
        mean_a, mean_b, m2a, m2b = (np.asarray(v, np.float64) for v in (mean_a, mean_b, m2a, m2b))
        weighted = (na * mean_a + nb * mean_b) / n

        def variance_average():
            var = [m2 / k if k else np.zeros_like(m2) for m2, k in ((m2a, na), (m2b, nb))]
            return n * (var[0] + var[1]) / 2

        return [
            (MEAN_TERM, lambda *a: (n, weighted, m2a + m2b)),
            (MEAN_TERM, lambda *a: (n, weighted, variance_average())),
            (EQUAL_WEIGHTS, lambda *a: (n, (mean_a + mean_b) / 2, m2a + m2b + (mean_b - mean_a) ** 2 * na * nb / n)),
        ]


class SyncRunningStats(_FromFullBatch):
    """``sync_running_stats(counts, means, m2s, running_mean, running_var, momentum=0.1) -> (mean, var)``.

    ``counts`` (W,), ``means`` and ``m2s`` (W, C): every rank's statistics, as the forward's all_gather
    delivers them. Returns the updated running mean and running variance (PyTorch's convention).
    """

    name = "sync_running_stats"
    chapter = 9
    points = 2.0
    outputs = ("running_mean", "running_var")
    label_arg = 1
    seed = 92
    specs = (((4, 4), 3, np.float64, 0.1), ((3, 0, 5), 2, np.float64, 0.3), ((1, 6), 3, np.float64, 0.1),
             ((8, 3, 5, 2), 4, np.float32, 0.1))

    def build(self, r, sizes, channels, dtype, momentum):
        x, parts = _split_batch(r, sizes, channels, spatial=(2,), dtype=dtype, mean=1.0)
        stats = [_moments(p) for p in parts]
        counts = np.array([s[0] for s in stats])
        means, m2s = (np.stack([s[k] for s in stats]).astype(dtype) for k in (1, 2))
        running_mean, running_var = r.normal(0, 1, channels).astype(dtype), r.uniform(0.5, 2, channels).astype(dtype)
        rm, rv = running_mean.astype(np.float64), running_var.astype(np.float64)
        nl.batch_norm_forward(x.astype(np.float64), running_mean=rm, running_var=rv, momentum=momentum)
        case = {"args": [counts, means, m2s, running_mean, running_var], "kwargs": {"momentum": momentum}}
        return case, (rm, rv)

    def mistakes(self, counts, means, m2s, running_mean, running_var, momentum=0.1):
        counts = np.asarray(counts, np.float64)
        means, m2s, rm, rv = (np.asarray(v, np.float64) for v in (means, m2s, running_mean, running_var))
        n = counts.sum()
        mean = (counts[:, None] * means).sum(0) / n
        m2 = m2s.sum(0) + (counts[:, None] * (means - mean) ** 2).sum(0)

        def update(mean, var):
            return lambda *a, **k: ((1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * var)

        local = counts[0] if counts[0] > 1 else n  # one rank's count, as a rank that forgot the others would use
        with np.errstate(divide="ignore", invalid="ignore"):
            rank_vars = m2s / (counts[:, None] - 1)  # each rank's unbiased variance (none for a rank of < 2)
        has_var = counts > 1
        return [
            (BIASED, update(mean, m2 / n)),
            (MEAN_TERM, update(mean, m2s.sum(0) / (n - 1))),
            (MEAN_TERM, update(mean, rank_vars[has_var].mean(0))),
            (MEAN_TERM, update(mean, (counts[has_var, None] * rank_vars[has_var]).sum(0) / counts[has_var].sum())),
            (LOCAL_COUNT, update(mean, m2 / n * local / (local - 1))),
            (LOCAL_COUNT, update(mean, m2 / (local - 1))),
            (EQUAL_WEIGHTS, update(means[counts > 0].mean(0), m2 / (n - 1))),
            ("momentum applied to the old value: PyTorch's momentum weights the NEW batch statistic",
             lambda *a, **k: (momentum * rm + (1 - momentum) * mean, momentum * rv + (1 - momentum) * m2 / (n - 1))),
        ]


class SyncBatchNormBackward(_FromFullBatch):
    """``sync_batch_norm_backward(dy, x_hat, gamma, inv_std, sums_dy, sums_dy_xhat, total_count) -> dx``.

    For this rank's slice: ``dy`` and ``x_hat`` of shape (N, C, *), ``gamma`` and ``inv_std`` (C,),
    ``sums_dy`` and ``sums_dy_xhat`` (W, C) with one row per rank, ``total_count`` the values per
    channel over every rank.
    """

    name = "sync_batch_norm_backward"
    chapter = 9
    points = 3.0
    outputs = ("dx",)
    seed = 93
    specs = (((4, 6), 1, 3, (5,), np.float64), ((3, 0, 5), 2, 2, (2, 3), np.float64),
             ((2, 7), 0, 4, (), np.float64), ((6, 6), 1, 3, (4,), np.float32))

    def build(self, r, sizes, rank, channels, spatial, dtype):
        x, parts = _split_batch(r, sizes, channels, spatial=spatial, dtype=dtype)
        dy = r.normal(0, 1, x.shape).astype(dtype)  # a random upstream gradient, never all-ones
        gamma = r.uniform(0.5, 1.5, channels).astype(dtype)
        x64 = x.astype(np.float64)
        _, cache = nl.batch_norm_forward(x64, gamma.astype(np.float64), np.zeros(channels))
        dx, _, _ = nl.batch_norm_backward(dy.astype(np.float64), cache)
        mean_var = [s.reshape(channels) for s in compute_stats(x64, (0,) + tuple(range(2, x.ndim)))[:2]]
        inv_std = 1.0 / np.sqrt(mean_var[1] + 1e-5)
        shape = (1, channels) + (1,) * len(spatial)
        x_hat = (x64 - mean_var[0].reshape(shape)) * inv_std.reshape(shape)
        bounds = np.cumsum([0, *sizes])
        rows = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        axes = (0,) + tuple(range(2, x.ndim))
        sums_dy = np.stack([dy[s].astype(np.float64).sum(axis=axes) for s in rows])
        sums_dy_xhat = np.stack([(dy[s] * x_hat[s]).sum(axis=axes) for s in rows])
        own = rows[rank]
        args = [dy[own], x_hat[own].astype(dtype), gamma, inv_std.astype(dtype), sums_dy.astype(dtype),
                sums_dy_xhat.astype(dtype), int(x.size // channels)]
        return {"args": args, "kwargs": {}}, (dx[own],)

    def mistakes(self, dy, x_hat, gamma, inv_std, sums_dy, sums_dy_xhat, total_count):
        dy, x_hat, gamma, inv_std, sums_dy, sums_dy_xhat = (
            np.asarray(v, np.float64) for v in (dy, x_hat, gamma, inv_std, sums_dy, sums_dy_xhat))
        shape = (1, dy.shape[1]) + (1,) * (dy.ndim - 2)
        axes = (0,) + tuple(range(2, dy.ndim))

        def dx(sum_dy, sum_dy_xhat, count):
            return ((gamma * inv_std).reshape(shape) * (dy - sum_dy.reshape(shape) / count
                                                        - x_hat * sum_dy_xhat.reshape(shape) / count),)

        local = dy.size // dy.shape[1]
        ranks = sums_dy.shape[0]
        return [
            (LOCAL_COUNT, lambda *a: dx(sums_dy.sum(0), sums_dy_xhat.sum(0), local)),
            (LOCAL_COUNT, lambda *a: dx(sums_dy.sum(0), sums_dy_xhat.sum(0), total_count / ranks)),
            (LOCAL_COUNT, lambda *a: dx(sums_dy.sum(0), sums_dy_xhat.sum(0), dy.shape[0])),
            ("only this rank's own sums: the all_reduce adds every rank's",
             lambda *a: dx(dy.sum(axis=axes), (dy * x_hat).sum(axis=axes), total_count)),
            ("the ranks' sums were averaged instead of added",
             lambda *a: dx(sums_dy.mean(0), sums_dy_xhat.mean(0), total_count)),
            ("dx treats the batch mean and variance as constants; they depend on every rank's x",
             lambda *a: ((gamma * inv_std).reshape(shape) * dy,)),
        ]


TASKS = [MergeTwoRanks(), SyncRunningStats(), SyncBatchNormBackward()]
