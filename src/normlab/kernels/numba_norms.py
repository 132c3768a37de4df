r"""Compiled CPU kernels (Numba) for training-mode normalization of NumPy arrays.

A normalization layer does about ten flops per element, so its speed is the
number of times it moves the data. NumPy runs one operation per pass over the
array, and the best NumPy path (`normlab._fast_numpy`) still takes six to ten
passes for a forward and backward. Here each statistic's values are reduced
and then normalized while they are still in the core's cache, so x (and dy)
come from memory once per pass:

forward, per statistic
    the mean, then the biased variance Σ(x - mean)²/m (a true two-pass
    variance, accumulated in float64), then ``y = (x - mean)·rstd·γ + β``;
backward, per statistic
    Σ γ·dy and Σ γ·dy·x̂, then ``dx = rstd·(γ·dy - mean(γ·dy) - x̂·mean(γ·dy·x̂))``;
    the per-channel sums Σ dy (= dβ) and Σ dy·x̂ (= dγ) are gathered on the way.

Two families of kernels cover the four norms, in `normlab._fast_numpy`'s
``(N, C, S)`` picture:

- *rows*: one statistic per (sample, group), whose values are one contiguous
  row of length (C/G)·S: GroupNorm, InstanceNorm (G = C) and LayerNorm
  (G = 1, S = 1);
- *channels*: one statistic per channel, over (N, S): BatchNorm.

The kernels run on Numba's thread pool, in the threading layer Numba picks
(TBB, OpenMP or its own ``workqueue``; ``NUMBA_THREADING_LAYER`` chooses).
``workqueue`` must not be entered by two Python threads at once, so a lock
serializes the calls; GNU OpenMP cannot run in a process forked after it
started, which `fork_safe` tells `normlab._fast_numba`.
γ and β are always arrays here (ones and zeros when the layer has none).
Importing this module imports Numba, which takes a third of a second; only
`normlab._fast_numba` imports it, on first use.
"""
import threading

import numba
import numpy as np

_LOCK = threading.Lock()

# Channels per task in BatchNorm1d (S == 1), where a channel's values lie a row apart: a block of
# channels is read row by row, one contiguous run per row, which the compiler vectorizes.
_CHANNEL_BLOCK = 64


def fork_safe():
    """False when a process forked from this one must not launch these kernels (GNU OpenMP is running)."""
    try:
        return numba.threading_layer() != "omp"
    except ValueError:  # no kernel has run yet, so no thread pool has started
        return True


def rows_forward(x, weight, bias, channels_per_group, s, groups, eps):
    """Normalize each row of ``x`` (R, L); returns ``y`` and the float64 mean and biased variance per row.

    Row r belongs to group ``r % groups``, whose channels each own ``s`` consecutive values.
    """
    y = np.empty_like(x)
    mean, var = np.empty(x.shape[0]), np.empty(x.shape[0])
    with _LOCK:
        _rows_forward(x, weight, bias, channels_per_group, s, groups, eps, y, mean, var)
    return y, mean, var


def rows_backward(x, dy, mean, rstd, weight, channels_per_group, s, groups, channels):
    """``dx`` and the per-channel Σ dy·x̂ and Σ dy (float64) for `rows_forward`."""
    dx = np.empty_like(x)
    parts = np.zeros((2, numba.get_num_threads(), channels))  # per task: Σ dy·x̂, Σ dy
    with _LOCK:
        _rows_backward(x, dy, mean, rstd, weight, channels_per_group, s, groups, dx, parts[0], parts[1])
    return dx, parts[0].sum(axis=0), parts[1].sum(axis=0)


def channels_forward(x, weight, bias, eps):
    """BatchNorm of ``x`` (N, C, S); returns ``y`` and the float64 mean and biased variance per channel."""
    y = np.empty_like(x)
    mean, var = np.empty(x.shape[1]), np.empty(x.shape[1])
    with _LOCK:
        if x.shape[2] == 1:
            _columns_forward(x[:, :, 0], weight, bias, eps, y[:, :, 0], mean, var, _CHANNEL_BLOCK)
        else:
            _channels_forward(x, weight, bias, eps, y, mean, var)
    return y, mean, var


def channels_backward(x, dy, mean, rstd, weight):
    """``dx``, and Σ dy·x̂ and Σ dy per channel (float64), for `channels_forward`."""
    dx = np.empty_like(x)
    sum_dy_xhat, sum_dy = np.empty(x.shape[1]), np.empty(x.shape[1])
    with _LOCK:
        if x.shape[2] == 1:
            _columns_backward(x[:, :, 0], dy[:, :, 0], mean, rstd, weight, dx[:, :, 0], sum_dy_xhat, sum_dy,
                              _CHANNEL_BLOCK)
        else:
            _channels_backward(x, dy, mean, rstd, weight, dx, sum_dy_xhat, sum_dy)
    return dx, sum_dy_xhat, sum_dy


# Reassociation lets the compiler split a sum over several vector accumulators; NaN and
# infinity keep their IEEE meaning (no 'nnan'/'ninf'), so bad input still shows as NaN.
_jit = numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})

# Loops index from 0 over slices: an index such as c0 + k might be negative as far as the
# compiler knows, and the wraparound check for that stops it from vectorizing the loop.
# Sums accumulate in float64; elementwise work runs in the input's dtype (``t = x.dtype.type``),
# which for float32 fits twice as many values in a vector register. The float64 mean enters it as
# two parts, ``mu + mu_lo``: x - mu is then exact for values near the mean, where it matters.


@_jit
def _rows_forward(x, weight, bias, cpg, s, groups, eps, y, mean, var):
    rows, length = x.shape
    t = x.dtype.type
    for r in numba.prange(rows):
        xr, yr = x[r], y[r]
        total = 0.0
        for i in range(length):
            total += xr[i]
        shift = t(total / length)
        total_d = 0.0  # Σ (x - shift), which corrects the shift's rounding
        squares = 0.0
        for i in range(length):
            d = xr[i] - shift
            total_d += d
            squares += d * d
        centre = total_d / length
        mean[r], var[r] = shift + centre, max(squares / length - centre * centre, 0.0)
        rs, mu, mu_lo = t(1.0 / np.sqrt(var[r] + eps)), t(mean[r]), t(mean[r] - t(mean[r]))
        c0 = (r % groups) * cpg
        w, b = weight[c0:c0 + cpg], bias[c0:c0 + cpg]
        if s == 1:
            for k in range(cpg):
                yr[k] = (xr[k] - mu - mu_lo) * (rs * w[k]) + b[k]
        else:
            for k in range(cpg):
                xk, yk = xr[k * s:(k + 1) * s], yr[k * s:(k + 1) * s]
                scale, offset = rs * w[k], b[k]
                for i in range(s):
                    yk[i] = (xk[i] - mu - mu_lo) * scale + offset


@_jit
def _rows_backward(x, dy, mean, rstd, weight, cpg, s, groups, dx, part_dy_xhat, part_dy):
    rows, length = x.shape
    t = x.dtype.type
    tasks = part_dy.shape[0]
    per_task = (rows + tasks - 1) // tasks
    for task in numba.prange(tasks):
        for r in range(task * per_task, min(rows, (task + 1) * per_task)):
            xr, dyr, dxr = x[r], dy[r], dx[r]
            mu, mu_lo, rs, c0 = t(mean[r]), t(mean[r] - t(mean[r])), t(rstd[r]), (r % groups) * cpg
            w = weight[c0:c0 + cpg]
            acc_dy, acc_dy_xhat = part_dy[task, c0:c0 + cpg], part_dy_xhat[task, c0:c0 + cpg]
            sum_g = 0.0  # Σ γ·dy over the row
            sum_g_xhat = 0.0  # Σ γ·dy·x̂ over the row
            if s == 1:
                for k in range(cpg):
                    g, xhat = dyr[k], (xr[k] - mu - mu_lo) * rs
                    acc_dy[k] += g
                    acc_dy_xhat[k] += g * xhat
                    sum_g += w[k] * g
                    sum_g_xhat += w[k] * (g * xhat)
            else:
                for k in range(cpg):
                    xk, dyk = xr[k * s:(k + 1) * s], dyr[k * s:(k + 1) * s]
                    channel_dy = 0.0
                    channel_dy_d = 0.0  # Σ dy·(x - mean)
                    for i in range(s):
                        channel_dy += dyk[i]
                        channel_dy_d += dyk[i] * (xk[i] - mu - mu_lo)
                    acc_dy[k] += channel_dy
                    acc_dy_xhat[k] += channel_dy_d * rs
                    sum_g += w[k] * channel_dy
                    sum_g_xhat += w[k] * (channel_dy_d * rs)
            mean_g, mean_g_xhat = t(sum_g / length), t(sum_g_xhat / length)
            if s == 1:
                for k in range(cpg):
                    xhat = (xr[k] - mu - mu_lo) * rs
                    dxr[k] = rs * (w[k] * dyr[k] - mean_g - xhat * mean_g_xhat)
            else:
                for k in range(cpg):
                    xk, dyk, dxk = xr[k * s:(k + 1) * s], dyr[k * s:(k + 1) * s], dxr[k * s:(k + 1) * s]
                    wk = w[k]
                    for i in range(s):
                        xhat = (xk[i] - mu - mu_lo) * rs
                        dxk[i] = rs * (wk * dyk[i] - mean_g - xhat * mean_g_xhat)


@_jit
def _channels_forward(x, weight, bias, eps, y, mean, var):
    n, channels, s = x.shape
    m = n * s
    t = x.dtype.type
    for c in numba.prange(channels):
        total = 0.0
        for i in range(n):
            xc = x[i, c]
            for j in range(s):
                total += xc[j]
        shift = t(total / m)
        total_d = 0.0
        squares = 0.0
        for i in range(n):
            xc = x[i, c]
            for j in range(s):
                d = xc[j] - shift
                total_d += d
                squares += d * d
        centre = total_d / m
        mean[c], var[c] = shift + centre, max(squares / m - centre * centre, 0.0)
        mu, mu_lo = t(mean[c]), t(mean[c] - t(mean[c]))
        scale, offset = t(weight[c] / np.sqrt(var[c] + eps)), bias[c]
        for i in range(n):
            xc, yc = x[i, c], y[i, c]
            for j in range(s):
                yc[j] = (xc[j] - mu - mu_lo) * scale + offset


@_jit
def _channels_backward(x, dy, mean, rstd, weight, dx, sum_dy_xhat, sum_dy):
    n, channels, s = x.shape
    m = n * s
    t = x.dtype.type
    for c in numba.prange(channels):
        mu, mu_lo = t(mean[c]), t(mean[c] - t(mean[c]))
        total_dy = 0.0
        total_dy_d = 0.0  # Σ dy·(x - mean)
        for i in range(n):
            xc, dyc = x[i, c], dy[i, c]
            for j in range(s):
                total_dy += dyc[j]
                total_dy_d += dyc[j] * (xc[j] - mu - mu_lo)
        rs = rstd[c]
        sum_dy[c], sum_dy_xhat[c] = total_dy, total_dy_d * rs
        # dx = γ·rstd·(dy - Σdy/m - (x - mean)·rstd²·Σ dy·(x - mean)/m)
        scale, mean_dy, slope = t(weight[c] * rs), t(total_dy / m), t(total_dy_d * rs * rs / m)
        for i in range(n):
            xc, dyc, dxc = x[i, c], dy[i, c], dx[i, c]
            for j in range(s):
                dxc[j] = scale * (dyc[j] - mean_dy - (xc[j] - mu - mu_lo) * slope)


@_jit
def _columns_forward(x, weight, bias, eps, y, mean, var, block):
    n, channels = x.shape
    for blk in numba.prange((channels + block - 1) // block):
        c0, c1 = blk * block, min(channels, (blk + 1) * block)
        width = c1 - c0
        total = np.zeros(width)
        for i in range(n):
            xi = x[i, c0:c1]
            for k in range(width):
                total[k] += xi[k]
        shift = (total / n).astype(x.dtype)
        total_d, squares = np.zeros(width), np.zeros(width)
        for i in range(n):
            xi = x[i, c0:c1]
            for k in range(width):
                d = xi[k] - shift[k]
                total_d[k] += d
                squares[k] += d * d
        centre = total_d / n
        mean[c0:c1] = shift + centre
        var[c0:c1] = np.maximum(squares / n - centre * centre, 0.0)
        mu = mean[c0:c1].astype(x.dtype)
        mu_lo = (mean[c0:c1] - mu).astype(x.dtype)
        scale = (weight[c0:c1] / np.sqrt(var[c0:c1] + eps)).astype(x.dtype)
        b = bias[c0:c1]
        for i in range(n):
            xi, yi = x[i, c0:c1], y[i, c0:c1]
            for k in range(width):
                yi[k] = (xi[k] - mu[k] - mu_lo[k]) * scale[k] + b[k]


@_jit
def _columns_backward(x, dy, mean, rstd, weight, dx, sum_dy_xhat, sum_dy, block):
    n, channels = x.shape
    for blk in numba.prange((channels + block - 1) // block):
        c0, c1 = blk * block, min(channels, (blk + 1) * block)
        width = c1 - c0
        mu, rs = mean[c0:c1].astype(x.dtype), rstd[c0:c1]
        mu_lo = (mean[c0:c1] - mu).astype(x.dtype)
        total_dy = np.zeros(width)
        total_dy_d = np.zeros(width)  # Σ dy·(x - mean)
        for i in range(n):
            xi, dyi = x[i, c0:c1], dy[i, c0:c1]
            for k in range(width):
                total_dy[k] += dyi[k]
                total_dy_d[k] += dyi[k] * (xi[k] - mu[k] - mu_lo[k])
        sum_dy[c0:c1], sum_dy_xhat[c0:c1] = total_dy, total_dy_d * rs
        scale = (weight[c0:c1] * rs).astype(x.dtype)
        mean_dy = (total_dy / n).astype(x.dtype)
        slope = (total_dy_d * rs * rs / n).astype(x.dtype)
        for i in range(n):
            xi, dyi, dxi = x[i, c0:c1], dy[i, c0:c1], dx[i, c0:c1]
            for k in range(width):
                dxi[k] = scale[k] * (dyi[k] - mean_dy[k] - (xi[k] - mu[k] - mu_lo[k]) * slope[k])
