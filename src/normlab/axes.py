"""The norms differ only here: which axes they reduce, whether they centre, and how γ, β broadcast.

Each function maps an input shape to a `Layout`. Statistics are computed on
``x`` reshaped to ``view_shape`` and reduced over ``reduce``; γ and β are
reshaped to ``param_shape`` and broadcast against ``x`` itself. A layout that
does not centre (RMSNorm) divides by the root mean square instead of the
standard deviation.

Every layout also gives its reduction as a `Plan`, the ``(N, C, S)`` picture
the fast paths (`normlab.paths`) work in, so that a new norm defined here is
picked up by every path without a line of its own there.
"""
from dataclasses import dataclass

from ._backend import numel


@dataclass(frozen=True)
class Plan:
    """The input seen as ``(N, C, S)``: samples, channels, everything else flattened.

    γ and β act per channel. A statistic is taken either per channel over
    ``(N, S)`` (``groups == 0``: BatchNorm), or per (sample, group) over the
    group's ``C/groups`` channels and ``S``, values that lie contiguously in
    memory (GroupNorm; InstanceNorm is ``groups == C``; LayerNorm and RMSNorm
    are one group over ``(rows, features, 1)``).
    """

    n: int
    c: int
    s: int
    groups: int

    @property
    def per_channel(self):
        return self.groups == 0

    @property
    def count(self):
        """m, the number of values behind one statistic."""
        return self.n * self.s if self.per_channel else (self.c // self.groups) * self.s


@dataclass(frozen=True)
class Layout:
    view_shape: tuple  # shape in which the statistics are taken
    reduce: tuple  # axes of view_shape that one statistic averages over
    param_shape: tuple  # γ/β reshaped to broadcast against the input
    plan: Plan  # the same reduction in the fast paths' (N, C, S) picture
    centre: bool = True  # False: no mean is subtracted, and the "variance" is the mean square

    @property
    def stat_shape(self):
        """The shape of one statistic array: ``view_shape`` with the reduced axes kept as 1."""
        return tuple(1 if i in self.reduce else n for i, n in enumerate(self.view_shape))


def _per_channel(shape):
    return (1, shape[1]) + (1,) * (len(shape) - 2)


def _nc_s(shape):
    return shape[0], shape[1], numel(shape[2:])


def batch_layout(shape):
    """BatchNorm: one statistic per channel, over N and all spatial axes."""
    return Layout(tuple(shape), (0,) + tuple(range(2, len(shape))), _per_channel(shape), Plan(*_nc_s(shape), 0))


def instance_layout(shape):
    """InstanceNorm: one statistic per (sample, channel), over the spatial axes."""
    n, c, s = _nc_s(shape)
    return Layout(tuple(shape), tuple(range(2, len(shape))), _per_channel(shape), Plan(n, c, s, c))


def group_layout(shape, num_groups):
    """GroupNorm: one statistic per (sample, group), over C/G channels and all spatial axes."""
    n, c, s = _nc_s(shape)
    view = (n, num_groups, (c // num_groups) * s)
    return Layout(view, (2,), _per_channel(shape), Plan(n, c, s, num_groups))


def layer_layout(shape, normalized_shape, *, centre=True):
    """LayerNorm: one statistic per leading index, over the trailing ``normalized_shape`` axes."""
    k = len(normalized_shape)
    rows, features = numel(shape[:len(shape) - k]), numel(normalized_shape)
    return Layout(tuple(shape), tuple(range(len(shape) - k, len(shape))), tuple(normalized_shape),
                  Plan(rows, features, 1, 1), centre)


def rms_layout(shape, normalized_shape):
    """RMSNorm: LayerNorm's reduction without centring, ``x / sqrt(mean(x²) + eps)``."""
    return layer_layout(shape, normalized_shape, centre=False)
