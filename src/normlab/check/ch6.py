"""Chapter 6: GroupNorm forward and backward, and LayerNorm as GroupNorm with one group."""
import numpy as np

import normlab as nl

from . import _wrong
from ._task import ArrayTask


def _cases(seed, shapes_groups):
    r = np.random.default_rng(seed)
    cases = []
    for shape, groups, dtype in shapes_groups:
        c = shape[1]
        # a different mean per channel, so every choice of axes gives a different answer
        x = r.normal(0, 1, shape) * r.uniform(0.5, 2, (1, c) + (1,) * (len(shape) - 2)) \
            + r.normal(0, 2, (shape[0], c) + (1,) * (len(shape) - 2))
        cases.append((r, x.astype(dtype), groups, dtype))
    return cases


def _group_view(x, groups, interleaved=False):
    n, c = x.shape[:2]
    x = np.asarray(x, np.float64)
    if interleaved:  # channel c in group c % G
        return x.reshape(n, c // groups, groups, -1).transpose(0, 2, 1, 3).reshape(n, groups, -1), True
    return x.reshape(n, groups, -1), False


def _wrong_group_norm(x, groups, gamma, beta, eps, interleaved=False, eps_outside=False):
    view, transposed = _group_view(x, groups, interleaved)
    y = _wrong.normalize(view, 2, eps=eps, eps_outside=eps_outside)
    n, c = x.shape[:2]
    if transposed:
        y = y.reshape(n, groups, c // groups, -1).transpose(0, 2, 1, 3)
    return _wrong.affine(y.reshape(x.shape), gamma, beta)


class GroupNormForward(ArrayTask):
    """``group_norm_forward(x, num_groups, gamma, beta, eps=1e-5) -> y`` for x of shape (N, C, *)."""

    name = "group_norm_forward"
    chapter = 6
    points = 2.0

    def make_cases(self):
        cases = []
        for r, x, groups, dtype in _cases(61, [((2, 6, 4, 4), 3, np.float64), ((3, 4, 5), 2, np.float64),
                                               ((2, 8, 3, 3), 4, np.float32)]):
            c = x.shape[1]
            cases.append({"args": [x, groups, r.normal(1, 0.3, c).astype(dtype), r.normal(0, 1, c).astype(dtype)],
                          "kwargs": {"eps": 1e-3}})
        return cases

    def reference(self, x, num_groups, gamma, beta, eps=1e-5):
        return (nl.group_norm_forward(x, num_groups, gamma, beta, eps=eps)[0],)

    def mistakes(self, x, num_groups, gamma, beta, eps=1e-5):
        c = np.shape(x)[1]
        return [
            ("wrong axes: one statistic per (sample, channel), as InstanceNorm (G = C) does; a group spans C/G "
             "channels", lambda x, G, g, b, eps=eps: (_wrong_group_norm(x, c, g, b, eps),)),
            ("wrong axes: one statistic per sample over all channels, as LayerNorm (G = 1) does",
             lambda x, G, g, b, eps=eps: (_wrong_group_norm(x, 1, g, b, eps),)),
            ("wrong axes: one statistic per channel over the batch, as BatchNorm does",
             lambda x, G, g, b, eps=eps: (_wrong.normalize(x, (0,) + tuple(range(2, np.ndim(x))), g, b, eps=eps),)),
            ("interleaved groups: channel c went to group c % G; a group is a block of consecutive channels",
             lambda x, G, g, b, eps=eps: (_wrong_group_norm(x, G, g, b, eps, True),)),
            ("eps outside the sqrt",
             lambda x, G, g, b, eps=eps: (_wrong_group_norm(x, G, g, b, eps, eps_outside=True),)),
        ]


class GroupNormBackward(ArrayTask):
    """``group_norm_backward(dy, x, num_groups, gamma, eps=1e-5) -> (dx, dgamma, dbeta)``."""

    name = "group_norm_backward"
    chapter = 6
    points = 3.0
    outputs = ("dx", "dgamma", "dbeta")

    def make_cases(self):
        cases = []
        for r, x, groups, dtype in _cases(62, [((2, 6, 3, 3), 3, np.float64), ((4, 4, 5), 2, np.float64),
                                               ((3, 8, 4), 2, np.float32)]):
            c = x.shape[1]
            cases.append({"args": [r.normal(0, 1, x.shape).astype(dtype), x, groups,
                                   r.normal(1, 0.3, c).astype(dtype)], "kwargs": {"eps": 1e-5}})
        return cases

    @staticmethod
    def _grads(dy, x, num_groups, gamma, eps):
        _, cache = nl.group_norm_forward(x, num_groups, gamma, np.zeros_like(gamma), eps=eps)
        return nl.group_norm_backward(dy, cache)

    def reference(self, dy, x, num_groups, gamma, eps=1e-5):
        return self._grads(dy, x, num_groups, gamma, eps)

    def mistakes(self, dy, x, num_groups, gamma, eps=1e-5):
        def swapped(dy, x, G, g, eps=eps):
            dx, dgamma, dbeta = self._grads(dy, x, G, g, eps)
            return dx, dbeta, dgamma

        def constant_stats(dy, x, G, g, eps=eps):
            _, dgamma, dbeta = self._grads(dy, x, G, g, eps)
            view, _ = _group_view(x, G)
            rstd = 1.0 / np.sqrt(view.var(axis=2, keepdims=True) + eps)
            rstd = np.repeat(rstd, view.shape[2], axis=2).reshape(x.shape)
            return _wrong.affine(np.asarray(dy, np.float64) * rstd, g, None), dgamma, dbeta

        return [
            ("dgamma and dbeta swapped", swapped),
            ("dx treats the group mean and variance as constants; they depend on x", constant_stats),
        ]


class LayerNormViaGroupNorm(ArrayTask):
    """``layer_norm_via_group_norm(x, gamma, beta, eps=1e-5) -> y``.

    x of shape (N, C, H, W); LayerNorm over (C, H, W) with gamma and beta of shape (C, H, W),
    written with the student's own ``group_norm_forward``.
    """

    name = "layer_norm_via_group_norm"
    chapter = 6
    points = 1.0

    def make_cases(self):
        cases = []
        for r, x, _, dtype in _cases(63, [((3, 4, 2, 3), 1, np.float64), ((2, 2, 4, 4), 1, np.float32)]):
            shape = x.shape[1:]
            cases.append({"args": [x, r.normal(1, 0.3, shape).astype(dtype), r.normal(0, 1, shape).astype(dtype)],
                          "kwargs": {"eps": 1e-3}})
        return cases

    def reference(self, x, gamma, beta, eps=1e-5):
        return (nl.layer_norm_forward(x, x.shape[1:], gamma, beta, eps=eps)[0],)

    def mistakes(self, x, gamma, beta, eps=1e-5):
        def norm(axes):
            return lambda x, g, b, eps=eps: (_wrong.normalize(x, axes, eps=eps) * g + b,)
        return [
            ("wrong axes: one statistic per (sample, channel), as GroupNorm with G = C does; LayerNorm is G = 1",
             norm((2, 3))),
            ("wrong axes: one statistic per channel over the batch, as BatchNorm does", norm((0, 2, 3))),
        ]


TASKS = [GroupNormForward(), GroupNormBackward(), LayerNormViaGroupNorm()]
