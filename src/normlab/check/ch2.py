"""Chapter 2: the BatchNorm training forward pass, for fully connected and convolutional inputs."""
import numpy as np

import normlab as nl

from . import _wrong
from ._task import ArrayTask


def _rng(seed):
    return np.random.default_rng(seed)


class BatchNormForward(ArrayTask):
    """``batch_norm_forward(x, gamma, beta, eps=1e-5) -> y`` for x of shape (N, D), training mode."""

    name = "batch_norm_forward"
    chapter = 2
    points = 3.0

    def make_cases(self):
        r = _rng(2)
        x1 = r.normal(3.0, 2.0, (8, 5))
        x2 = r.normal(0.0, 1.0, (6, 4)) * np.array([1.0, 0.01, 5.0, 0.3])  # one channel with a tiny spread
        x3 = r.normal(-1.0, 0.5, (16, 3)).astype(np.float32)
        x4 = r.normal(0.0, 3.0, (2, 3))  # the smallest batch training allows
        return [
            {"args": [x1, r.normal(1, 0.3, 5), r.normal(0, 1, 5)], "kwargs": {"eps": 1e-5}},
            {"args": [x2, r.normal(1, 0.3, 4), r.normal(0, 1, 4)], "kwargs": {"eps": 1e-3}},
            {"args": [x3, r.normal(1, 0.3, 3).astype(np.float32), r.normal(0, 1, 3).astype(np.float32)],
             "kwargs": {"eps": 0.1}},
            {"args": [x4, r.normal(1, 0.3, 3), r.normal(0, 1, 3)], "kwargs": {}},
        ]

    def reference(self, x, gamma, beta, eps=1e-5):
        return (nl.batch_norm_forward(x, gamma, beta, eps=eps)[0],)

    def mistakes(self, x, gamma, beta, eps=1e-5):
        return [
            ("eps outside the sqrt",
             lambda x, g, b, eps=eps: (_wrong.normalize(x, 0, g, b, eps=eps, eps_outside=True),)),
            ("biased variance expected: normalize with the batch variance dividing by N, not N-1",
             lambda x, g, b, eps=eps: (_wrong.normalize(x, 0, g, b, eps=eps, ddof=1),)),
            ("wrong axes: you normalised each sample over its features (axis 1); BatchNorm averages over the "
             "batch (axis 0), one statistic per feature",
             lambda x, g, b, eps=eps: (_wrong.normalize(x, 1, g, b, eps=eps),)),
            ("gamma and beta swapped",
             lambda x, g, b, eps=eps: (_wrong.normalize(x, 0, b, g, eps=eps),)),
        ]


N_NOT_NHW = "n = N: each channel of a 4-D input has N*H*W values, not N"


def _over_batch_size(x, gamma, beta, eps, mean_too):
    """Channel statistics as sums over (N, H, W) divided by N alone (only the variance's, or both)."""
    x = np.asarray(x, np.float64)
    n, axes = x.shape[0], (0, 2, 3)
    mean = x.sum(axis=axes, keepdims=True) / n if mean_too else x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).sum(axis=axes, keepdims=True) / n
    return _wrong.affine((x - mean) / np.sqrt(var + eps), gamma, beta)


class BatchNormConv(ArrayTask):
    """``batch_norm_conv(x, gamma, beta, eps=1e-5) -> y`` for x of shape (N, C, H, W), training mode."""

    name = "batch_norm_conv"
    chapter = 2
    points = 2.0

    def make_cases(self):
        r = _rng(3)
        x1 = r.normal(1.0, 2.0, (4, 3, 5, 5)) + r.normal(0, 3, (4, 1, 1, 1))  # samples differ in mean
        x2 = (r.normal(0.0, 1.0, (2, 4, 3, 6)) + r.normal(0, 2, (1, 1, 3, 6))).astype(np.float32)
        return [
            {"args": [x1, r.normal(1, 0.3, 3), r.normal(0, 1, 3)], "kwargs": {}},
            {"args": [x2, r.normal(1, 0.3, 4).astype(np.float32), r.normal(0, 1, 4).astype(np.float32)],
             "kwargs": {"eps": 1e-3}},
        ]

    def reference(self, x, gamma, beta, eps=1e-5):
        return (nl.batch_norm_forward(x, gamma, beta, eps=eps)[0],)

    def mistakes(self, x, gamma, beta, eps=1e-5):
        def wrong(axes):
            return lambda x, g, b, eps=eps: (_wrong.normalize(x, axes, g, b, eps=eps),)
        return [
            ("wrong axes: you normalised per sample over (C, H, W), as LayerNorm does; BatchNorm takes one "
             "statistic per channel, over (N, H, W)", wrong((1, 2, 3))),
            ("wrong axes: you normalised per (sample, channel) over (H, W), as InstanceNorm does; BatchNorm also "
             "averages over the batch axis", wrong((2, 3))),
            ("wrong axes: you averaged over the batch axis only, giving one statistic per (c, h, w) position; "
             "a conv BatchNorm also averages over H and W", wrong(0)),
            ("eps outside the sqrt",
             lambda x, g, b, eps=eps: (_wrong.normalize(x, (0, 2, 3), g, b, eps=eps, eps_outside=True),)),
            (N_NOT_NHW, lambda x, g, b, eps=eps: (_over_batch_size(x, g, b, eps, mean_too=True),)),
            (N_NOT_NHW, lambda x, g, b, eps=eps: (_over_batch_size(x, g, b, eps, mean_too=False),)),
        ]


TASKS = [BatchNormForward(), BatchNormConv()]
