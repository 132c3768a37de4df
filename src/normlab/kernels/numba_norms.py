r"""Compiled CPU kernels (Numba) for training-mode normalization of NumPy arrays.

A normalization layer does about ten flops per element, so its speed is the
number of times it moves the data. NumPy runs one operation per pass over the
array, so even a careful NumPy version takes six to ten passes for a forward
and backward. Here each statistic's values are reduced
and then normalized while they are still in the core's cache, so x (and dy)
come from memory once per pass:

forward, per statistic
    Σd and Σd² of d = x - shift, centred on the mean of the first 32 values
    (or rows), so that the biased variance is mean(d²) - mean(d)² (float64),
    with a second pass centred on the mean itself when the shift lies more than
    a standard deviation away; then ``y = (x - mean)·rstd·γ + β``;
backward, per statistic
    Σ γ·dy and Σ γ·dy·x̂, then ``dx = rstd·(γ·dy - mean(γ·dy) - x̂·mean(γ·dy·x̂))``;
    the per-channel sums Σ dy (= dβ) and Σ dy·x̂ (= dγ) are gathered on the way.

Two families of kernels cover every norm, in the ``(N, C, S)`` picture of
`normlab.axes.Plan`:

- *rows*: one statistic per (sample, group), whose values are one contiguous
  row of length (C/G)·S: GroupNorm, InstanceNorm (G = C), LayerNorm and
  RMSNorm (G = 1, S = 1; RMSNorm's ``centre=False`` drops the mean);
- *channels*: one statistic per channel, over (N, S): BatchNorm. With S = 1
  (BatchNorm1d) a channel's values lie a row apart, so the *columns* kernels
  give each task a block of whole rows instead.

The kernels run on Numba's thread pool, one thread per free core unless
`normlab.set_num_threads` (or ``NORMLAB_NUM_THREADS``) caps them, in the threading layer Numba picks
(TBB, OpenMP or its own ``workqueue``; ``NUMBA_THREADING_LAYER`` chooses).
``workqueue`` must not be entered by two Python threads at once, so a lock
serializes the calls; GNU OpenMP cannot run in a process forked after it
started, which `fork_safe` tells `normlab.paths.numba_cpu`.
γ and β are always arrays here (ones and zeros when the layer has none).
Outputs (y, dx) of 32 MiB or more come from `normlab.kernels.outputs`, which
hands one out again once nothing refers to it: new memory costs one and a half
to two and a half more write passes.
Importing this module imports Numba, which takes a third of a second; only
`normlab.paths.numba_cpu` imports it, on first use.
"""
import contextlib
import os
import sys
import threading
import time

import numba
import numpy as np

from . import outputs, threads

_LOCK = threading.Lock()

TASKS = numba.config.NUMBA_NUM_THREADS
"""Work is split into this many tasks whatever the number of threads that run them, so that results
(the order of every sum) do not depend on how busy the machine is."""

_PROBE_INTERVAL_S = 0.01
_probe = {"at": -1.0, "threads": TASKS}
# Others' busy cores are averaged over windows of 0.1 to 1 s (an older window says little about now).
_BUSY_WINDOW_S = (0.1, 1.0)
_busy = {"at": None, "cpu_s": 0.0, "own_s": 0.0, "others": None}


def threads_now():
    """Threads for the next launch: one per core that no other process is using.

    Static scheduling hands each thread an equal share; when another process holds a core, the
    thread that waits for it holds up the whole launch (measured: 3.5 to 5 times slower on 2
    busy cores). On Linux a core counts as taken when /proc/stat shows another runnable thread
    now *and* other work has kept that many cores busy over the last 0.1 to 1 s: a thread that
    runs only for a moment would otherwise halve the threads of the launch that follows. It is read at most every 10 ms. Elsewhere
    every thread is used.
    """
    now = time.monotonic()
    if now - _probe["at"] > _PROBE_INTERVAL_S:
        _probe["at"], _probe["threads"] = now, _free_cores(now)
    return _probe["threads"]


def _free_cores(now):
    try:
        with open("/proc/stat", "rb") as f:
            lines = f.read().splitlines()
        running = next(int(line.split()[1]) for line in lines if line.startswith(b"procs_running"))
        busy_cpu_s = _busy_cpu_seconds(lines[0])
        ours = _own_running_threads()
    except (OSError, StopIteration, ValueError, IndexError):
        return TASKS
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # Our own pool's threads spin for a while after a launch and count as runnable: only others' count.
    return _threads_for(cores, max(running - max(ours, 1), 0), _busy_other_cores(now, busy_cpu_s))


def _threads_for(cores, others_running, busy_others):
    """Threads for a launch, given the other threads runnable now and the cores others kept busy
    lately (None: not known yet, so the runnable count alone decides)."""
    others = others_running if busy_others is None else min(others_running, round(busy_others))
    return max(1, min(TASKS, cores - others))


def _busy_cpu_seconds(cpu_line):
    """Seconds all cores have spent busy since boot, from /proc/stat's first line (user, nice,
    system, irq, softirq and steal; not idle or iowait)."""
    ticks = [int(v) for v in cpu_line.split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _busy_other_cores(now, busy_cpu_s):
    """Cores other processes kept busy, on average, over the latest complete window (None: none yet)."""
    times = os.times()
    own_s = times.user + times.system
    elapsed = None if _busy["at"] is None else now - _busy["at"]
    if elapsed is None or elapsed > _BUSY_WINDOW_S[1]:
        _busy.update(at=now, cpu_s=busy_cpu_s, own_s=own_s, others=None)
    elif elapsed >= _BUSY_WINDOW_S[0]:
        others = (busy_cpu_s - _busy["cpu_s"] - (own_s - _busy["own_s"])) / elapsed
        _busy.update(at=now, cpu_s=busy_cpu_s, own_s=own_s, others=max(others, 0.0))
    return _busy["others"]


def _own_running_threads():
    """Threads of this process that are runnable now (Linux: state R in /proc/self/task/*/stat)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as f:
                count += f.read().rsplit(b")", 1)[1].split()[0] == b"R"
        except (OSError, IndexError):
            pass
    return count


_last_launch = {"threads": None}
_pool = {"started": False}


def last_launch_threads():
    """Threads the latest kernel launch ran on (None before the first), e.g. to report a benchmark's."""
    return _last_launch["threads"]


def _start_pool():
    """Start Numba's thread pool, keeping torch's thread count: with Numba's OpenMP layer, starting the
    pool resets the OpenMP thread count that torch reads, so a ``torch.set_num_threads(1)`` made before
    normlab's first kernel would silently become one thread per core."""
    torch = sys.modules.get("torch")
    saved = torch.get_num_threads() if torch is not None else None
    numba.get_num_threads()
    if torch is not None and torch.get_num_threads() != saved:
        torch.set_num_threads(saved)
    _pool["started"] = True


@contextlib.contextmanager
def _launch():
    """One launch at a time (see the module docstring), on as many threads as there are free cores,
    but never more than `normlab.set_num_threads` allows (``numba.set_num_threads`` is overridden here)."""
    with _LOCK:
        if not _pool["started"]:
            _start_pool()
        cap = threads.get_num_threads()
        n = threads_now() if cap is None else min(cap, threads_now())
        numba.set_num_threads(n)
        _last_launch["threads"] = n
        yield


def compile_all():
    """Compile (or load from Numba's disk cache) every kernel for float32 and float64, on tiny inputs.

    ``make install`` runs this (``python -m normlab.kernels.numba_norms``), so that a user's first call
    loads compiled code instead of waiting seconds for the compiler.
    """
    for dtype in (np.float32, np.float64):
        x = np.linspace(-1, 1, 2 * 4 * 3, dtype=dtype).reshape(2, 4, 3)
        dy = x[::-1].copy()
        w, b = np.ones(4, dtype), np.zeros(4, dtype)
        for centre in (True, False):
            rows = x.reshape(4, 6)
            y, mean, var = rows_forward(rows, w, b, 2, 3, 2, 1e-5, centre)
            rows_backward(rows, dy.reshape(4, 6), mean, 1 / np.sqrt(var + 1e-5), w, 2, 3, 2, 4, centre)
        for a, d in ((x, dy), (x[:, :, :1].copy(), dy[:, :, :1].copy())):
            y, mean, var = channels_forward(a, w, b, 1e-5)
            rstd = 1 / np.sqrt(var + 1e-5)
            for batch_stats in (True, False):
                channels_backward(a, d, mean, rstd, w, batch_stats)
            channels_apply(a, mean, rstd, w, b)


def fork_safe():
    """False when a process forked from this one must not launch these kernels (GNU OpenMP is running)."""
    try:
        return numba.threading_layer() != "omp"
    except ValueError:  # no kernel has run yet, so no thread pool has started
        return True


def rows_forward(x, weight, bias, channels_per_group, s, groups, eps, centre=True):
    """Normalize each row of ``x`` (R, L); returns ``y`` and the float64 mean and biased variance per row.

    Row r belongs to group ``r % groups``, whose channels each own ``s`` consecutive values.
    Without ``centre`` (RMSNorm) the mean is 0 and the variance is the mean square.
    """
    y = outputs.empty_like(x)
    mean, var = np.empty(x.shape[0]), np.empty(x.shape[0])
    with _launch():
        _rows_forward(x, weight, bias, channels_per_group, s, groups, eps, centre, y, mean, var)
    return y, mean, var


def rows_backward(x, dy, mean, rstd, weight, channels_per_group, s, groups, channels, centre=True):
    """``dx`` and the per-channel Σ dy·x̂ and Σ dy (float64) for `rows_forward`."""
    dx = outputs.empty_like(x)
    parts = np.zeros((2, TASKS, channels))  # per task: Σ dy·x̂, Σ dy
    with _launch():
        _rows_backward(x, dy, mean, rstd, weight, channels_per_group, s, groups, centre, dx, parts[0], parts[1])
    return dx, parts[0].sum(axis=0), parts[1].sum(axis=0)


def channels_forward(x, weight, bias, eps):
    """BatchNorm of ``x`` (N, C, S); returns ``y`` and the float64 mean and biased variance per channel."""
    y = outputs.empty_like(x)
    mean, var = np.empty(x.shape[1]), np.empty(x.shape[1])
    with _launch():
        if x.shape[2] == 1:
            _columns_forward(x[:, :, 0], weight, bias, eps, y[:, :, 0], mean, var, TASKS)
        else:
            _channels_forward(x, weight, bias, eps, y, mean, var)
    return y, mean, var


def channels_backward(x, dy, mean, rstd, weight, batch_stats=True):
    """``dx``, and Σ dy·x̂ and Σ dy per channel (float64), for `channels_forward` or, without
    ``batch_stats``, for `channels_apply` (constant statistics: ``dx = γ·rstd·dy``)."""
    dx = outputs.empty_like(x)
    sum_dy_xhat, sum_dy = np.empty(x.shape[1]), np.empty(x.shape[1])
    with _launch():
        if x.shape[2] == 1:
            _columns_backward(x[:, :, 0], dy[:, :, 0], mean, rstd, weight, batch_stats, dx[:, :, 0], sum_dy_xhat,
                              sum_dy, TASKS)
        else:
            _channels_backward(x, dy, mean, rstd, weight, batch_stats, dx, sum_dy_xhat, sum_dy)
    return dx, sum_dy_xhat, sum_dy


def channels_apply(x, mean, rstd, weight, bias):
    """``y = (x - mean)·rstd·γ + β`` per channel of ``x`` (N, C, S), with given float64 statistics (eval)."""
    y = outputs.empty_like(x)
    with _launch():
        if x.shape[2] == 1:
            _columns_apply(x[:, :, 0], mean, rstd, weight, bias, y[:, :, 0], TASKS)
        else:
            _channels_apply(x, mean, rstd, weight, bias, y)
    return y


# Reassociation lets the compiler split a sum over several vector accumulators; NaN and
# infinity keep their IEEE meaning (no 'nnan'/'ninf'), so bad input still shows as NaN.
_FASTMATH = {"reassoc", "contract"}
# Only the explicit prange loops run in parallel: each parallel region costs a launch, which the
# small array expressions between the passes are not worth.
_PRANGE_ONLY = {"prange": True, "comprehension": False, "reduction": False, "inplace_binop": False,
                "setitem": False, "numpy": False, "stencil": False, "fusion": False}
_jit = numba.njit(parallel=_PRANGE_ONLY, cache=True, nogil=True, fastmath=_FASTMATH)
_inline = numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, inline="always")

# How the loops are written, and why:
# - elementwise work runs in the input's dtype (``t = x.dtype.type``): for float32, a vector
#   register then holds twice as many values as in float64;
# - sums run in the input's dtype over blocks of `_SUM_BLOCK` values, and in float64 across
#   blocks: as fast as float32 and, for sums of millions of values, within a few roundings;
# - the float64 mean enters elementwise work as two parts, ``mu + mu_lo``, so that x - mean
#   is rounded once, not twice, for values near the mean, where it matters;
# - loops index from 0 over slices: an index such as c0 + k might be negative as far as the
#   compiler knows, and the wraparound check for that stops it from vectorizing the loop.
_SUM_BLOCK = 512
_PILOT_VALUES = 32
_ROW_BLOCK = 32  # rows per flush of `_rows_backward`'s per-channel sums into float64


@_inline
def _centred_sums(a, shift):
    """Σ (a - shift) and Σ (a - shift)², for a 1-D array and a scalar of its dtype."""
    total, squares = 0.0, 0.0
    for start in range(0, a.shape[0], _SUM_BLOCK):
        block = a[start:start + _SUM_BLOCK]
        part, part_squares = a.dtype.type(0), a.dtype.type(0)
        for i in range(block.shape[0]):
            d = block[i] - shift
            part += d
            part_squares += d * d
        total += part
        squares += part_squares
    return total, squares


@_inline
def _pilot_mean(a):
    """The mean of up to `_PILOT_VALUES` values at the start of ``a`` (n, s), from up to as many of
    its n parts: a cheap estimate of the mean to centre on."""
    n, s = a.shape
    if n == 0 or s == 0:
        return 0.0
    parts = min(n, _PILOT_VALUES)
    per_part = max(min(s, _PILOT_VALUES // parts), 1)
    total = 0.0
    for i in range(parts):
        for j in range(per_part):
            total += a[i, j]
    return total / (parts * per_part)


@_inline
def _channel_centred_sums(x, c, shift):
    """Σ (x - shift) and Σ (x - shift)² over channel c of ``x`` (N, C, S)."""
    total, squares = 0.0, 0.0
    for i in range(x.shape[0]):
        part, part_squares = _centred_sums(x[i, c], shift)
        total += part
        squares += part_squares
    return total, squares


@_inline
def _gradient_sums(dy, x, mu, mu_lo):
    """Σ dy and Σ dy·(x - mean), for 1-D arrays and the mean in two parts of their dtype."""
    total, products = 0.0, 0.0
    for start in range(0, x.shape[0], _SUM_BLOCK):
        xb, dyb = x[start:start + _SUM_BLOCK], dy[start:start + _SUM_BLOCK]
        part, part_products = x.dtype.type(0), x.dtype.type(0)
        for i in range(xb.shape[0]):
            part += dyb[i]
            part_products += dyb[i] * (xb[i] - mu - mu_lo)
        total += part
        products += part_products
    return total, products


@_inline
def _two_parts(value, t):
    """A float64 as the sum of two numbers of type t: the nearest one, and the rest."""
    hi = t(value)
    return hi, t(value - hi)


@_jit
def _rows_forward(x, weight, bias, cpg, s, groups, eps, centred, y, mean, var):
    rows, length = x.shape
    t = x.dtype.type
    for r in numba.prange(rows):
        xr, yr = x[r], y[r]
        shift = t(_pilot_mean(x[r:r + 1])) if centred else t(0)
        total_d, squares = _centred_sums(xr, shift)
        centre = total_d / length if centred else 0.0
        if centre * centre > squares / length - centre * centre:  # the pilot missed: centre on this mean
            shift = t(shift + centre)
            total_d, squares = _centred_sums(xr, shift)
            centre = total_d / length
        mean[r], var[r] = shift + centre, max(squares / length - centre * centre, 0.0)
        mu, mu_lo = _two_parts(mean[r], t)
        rs = t(1.0 / np.sqrt(var[r] + eps))
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


@_inline
def _row_statistics(x, dy, mean, rstd, weight, length, centred):
    """For one row with s = 1: its centre in two parts, rstd, mean(γ·dy) and mean(γ·dy·x̂), in x's dtype."""
    t = x.dtype.type
    mu, mu_lo = _two_parts(mean, t)
    rs = t(rstd)
    sum_g, sum_g_d = 0.0, 0.0  # Σ γ·dy and Σ γ·dy·(x - mean)
    for start in range(0, x.shape[0], _SUM_BLOCK):
        xb, dyb, wb = x[start:start + _SUM_BLOCK], dy[start:start + _SUM_BLOCK], weight[start:start + _SUM_BLOCK]
        part_g, part_g_d = t(0), t(0)
        for k in range(xb.shape[0]):
            g = wb[k] * dyb[k]
            part_g += g
            part_g_d += g * (xb[k] - mu - mu_lo)
        sum_g += part_g
        sum_g_d += part_g_d
    return mu, mu_lo, rs, t(sum_g / length) if centred else t(0), t(sum_g_d * rstd / length)


@_inline
def _four_rows_backward(x, dy, dx, mean, rstd, weight, length, centred, acc):
    """dx for four rows (4, L) of one group, with their Σ dy and Σ dy·x̂ per channel added to acc (2, L).

    Written out row by row on purpose: the four rows share one update of the accumulators, and
    with one scalar per row's statistic the compiler vectorizes the loop (with a loop over the
    rows, or the statistics in an array, it does not).
    """
    u0, l0, s0, g0, h0 = _row_statistics(x[0], dy[0], mean[0], rstd[0], weight, length, centred)
    u1, l1, s1, g1, h1 = _row_statistics(x[1], dy[1], mean[1], rstd[1], weight, length, centred)
    u2, l2, s2, g2, h2 = _row_statistics(x[2], dy[2], mean[2], rstd[2], weight, length, centred)
    u3, l3, s3, g3, h3 = _row_statistics(x[3], dy[3], mean[3], rstd[3], weight, length, centred)
    for k in range(length):
        e0 = (x[0, k] - u0 - l0) * s0  # x̂
        e1 = (x[1, k] - u1 - l1) * s1
        e2 = (x[2, k] - u2 - l2) * s2
        e3 = (x[3, k] - u3 - l3) * s3
        d0, d1, d2, d3, w = dy[0, k], dy[1, k], dy[2, k], dy[3, k], weight[k]
        dx[0, k] = s0 * (w * d0 - g0 - e0 * h0)
        dx[1, k] = s1 * (w * d1 - g1 - e1 * h1)
        dx[2, k] = s2 * (w * d2 - g2 - e2 * h2)
        dx[3, k] = s3 * (w * d3 - g3 - e3 * h3)
        acc[0, k] += (d0 + d1) + (d2 + d3)
        acc[1, k] += (d0 * e0 + d1 * e1) + (d2 * e2 + d3 * e3)


@_jit
def _rows_backward(x, dy, mean, rstd, weight, cpg, s, groups, centred, dx, part_dy_xhat, part_dy):
    rows, length = x.shape
    t = x.dtype.type
    tasks = part_dy.shape[0]
    per_task = (rows + tasks - 1) // tasks
    for task in numba.prange(tasks):
        first, last = task * per_task, min(rows, (task + 1) * per_task)
        # With s = 1, a row's per-channel Σ dy and Σ dy·x̂ go into sums of the input's dtype first,
        # which are flushed into the task's float64 sums every `_ROW_BLOCK` rows: half the bytes
        # per update, and the loop vectorizes (a float32 + float64 update in every iteration does not).
        block = np.zeros((2, cpg * groups), x.dtype)  # Σ dy, Σ dy·x̂
        unflushed = 0
        r = first
        while r < last:
            step = 4 if s == 1 and groups == 1 and last - r >= 4 else 1
            if step == 4:  # LayerNorm and RMSNorm
                rows4 = slice(r, r + 4)
                _four_rows_backward(x[rows4], dy[rows4], dx[rows4], mean[rows4], rstd[rows4], weight, length,
                                    centred, block)
            else:
                xr, dyr, dxr = x[r], dy[r], dx[r]
                c0 = (r % groups) * cpg
                w = weight[c0:c0 + cpg]
                if s == 1:
                    mu, mu_lo, rs, mean_g, mean_g_xhat = _row_statistics(xr, dyr, mean[r], rstd[r], w, length, centred)
                    acc = block[:, c0:c0 + cpg]
                    for k in range(cpg):
                        xhat = (xr[k] - mu - mu_lo) * rs
                        dxr[k] = rs * (w[k] * dyr[k] - mean_g - xhat * mean_g_xhat)
                        acc[0, k] += dyr[k]
                        acc[1, k] += dyr[k] * xhat
                else:
                    mu, mu_lo = _two_parts(mean[r], t)
                    rs = t(rstd[r])
                    sum_g, sum_g_xhat = 0.0, 0.0  # Σ γ·dy and Σ γ·dy·x̂ over the row
                    acc_dy, acc_dy_xhat = part_dy[task, c0:c0 + cpg], part_dy_xhat[task, c0:c0 + cpg]
                    for k in range(cpg):
                        channel_dy, channel_dy_d = _gradient_sums(dyr[k * s:(k + 1) * s], xr[k * s:(k + 1) * s],
                                                                  mu, mu_lo)
                        acc_dy[k] += channel_dy
                        acc_dy_xhat[k] += channel_dy_d * rs
                        sum_g += w[k] * channel_dy
                        sum_g_xhat += w[k] * (channel_dy_d * rs)
                    mean_g, mean_g_xhat = t(sum_g / length) if centred else t(0), t(sum_g_xhat / length)
                    for k in range(cpg):
                        xk, dyk, dxk = xr[k * s:(k + 1) * s], dyr[k * s:(k + 1) * s], dxr[k * s:(k + 1) * s]
                        wk = w[k]
                        for i in range(s):
                            xhat = (xk[i] - mu - mu_lo) * rs
                            dxk[i] = rs * (wk * dyk[i] - mean_g - xhat * mean_g_xhat)
            r += step
            unflushed += step
            if s == 1 and (unflushed >= _ROW_BLOCK or r == last):
                task_dy, task_dy_xhat = part_dy[task], part_dy_xhat[task]
                for c in range(block.shape[1]):
                    task_dy[c] += block[0, c]
                    task_dy_xhat[c] += block[1, c]
                    block[0, c], block[1, c] = 0, 0
                unflushed = 0


@_jit
def _channels_forward(x, weight, bias, eps, y, mean, var):
    n, channels, s = x.shape
    m = n * s
    t = x.dtype.type
    for c in numba.prange(channels):
        shift = t(_pilot_mean(x[:, c]))
        total_d, squares = _channel_centred_sums(x, c, shift)
        centre = total_d / m
        if centre * centre > squares / m - centre * centre:  # the pilot missed: centre on this mean
            shift = t(shift + centre)
            total_d, squares = _channel_centred_sums(x, c, shift)
            centre = total_d / m
        mean[c], var[c] = shift + centre, max(squares / m - centre * centre, 0.0)
        mu, mu_lo = _two_parts(mean[c], t)
        scale, offset = t(weight[c] / np.sqrt(var[c] + eps)), bias[c]
        for i in range(n):
            xc, yc = x[i, c], y[i, c]
            for j in range(s):
                yc[j] = (xc[j] - mu - mu_lo) * scale + offset


@_jit
def _channels_backward(x, dy, mean, rstd, weight, batch_stats, dx, sum_dy_xhat, sum_dy):
    n, channels, s = x.shape
    m = n * s
    inv_m = 1.0 / m if batch_stats else 0.0  # constant statistics: the two averaged terms vanish
    t = x.dtype.type
    for c in numba.prange(channels):
        mu, mu_lo = _two_parts(mean[c], t)
        total_dy = 0.0
        total_dy_d = 0.0  # Σ dy·(x - mean)
        for i in range(n):
            part, part_products = _gradient_sums(dy[i, c], x[i, c], mu, mu_lo)
            total_dy += part
            total_dy_d += part_products
        rs = rstd[c]
        sum_dy[c], sum_dy_xhat[c] = total_dy, total_dy_d * rs
        # dx = γ·rstd·(dy - Σdy/m - (x - mean)·rstd²·Σ dy·(x - mean)/m)
        scale, mean_dy, slope = t(weight[c] * rs), t(total_dy * inv_m), t(total_dy_d * rs * rs * inv_m)
        for i in range(n):
            xc, dyc, dxc = x[i, c], dy[i, c], dx[i, c]
            for j in range(s):
                dxc[j] = scale * (dyc[j] - mean_dy - (xc[j] - mu - mu_lo) * slope)


# BatchNorm1d: a channel's values lie a row apart. Each task takes a block of whole rows, which it
# reads contiguously and which stays in its core's cache from one pass to the next; the tasks' sums
# per channel are added up between the passes. Within a task, sums run per channel in the input's
# dtype over `_SUM_BLOCK` rows, then in float64.
_PILOT_ROWS = 32


@_inline
def _add_centred_column_sums(rows, shift, total, squares):
    """total[c] += Σ (x - shift[c]) and squares[c] += Σ (x - shift[c])² over the rows."""
    part, part_squares = np.empty(rows.shape[1], rows.dtype), np.empty(rows.shape[1], rows.dtype)
    for start in range(0, rows.shape[0], _SUM_BLOCK):
        block = rows[start:start + _SUM_BLOCK]
        part[:] = 0
        part_squares[:] = 0
        for i in range(block.shape[0]):
            row = block[i]
            for c in range(row.shape[0]):
                d = row[c] - shift[c]
                part[c] += d
                part_squares[c] += d * d
        total += part
        squares += part_squares


@_inline
def _add_gradient_column_sums(dy_rows, x_rows, mu, mu_lo, total, products):
    """total[c] += Σ dy and products[c] += Σ dy·(x - mean[c]) over the rows."""
    part, part_products = np.empty(x_rows.shape[1], x_rows.dtype), np.empty(x_rows.shape[1], x_rows.dtype)
    for start in range(0, x_rows.shape[0], _SUM_BLOCK):
        xb, dyb = x_rows[start:start + _SUM_BLOCK], dy_rows[start:start + _SUM_BLOCK]
        part[:] = 0
        part_products[:] = 0
        for i in range(xb.shape[0]):
            x_row, dy_row = xb[i], dyb[i]
            for c in range(x_row.shape[0]):
                part[c] += dy_row[c]
                part_products[c] += dy_row[c] * (x_row[c] - mu[c] - mu_lo[c])
        total += part
        products += part_products


@_inline
def _task_totals(parts):
    """Σ over tasks (rows) of a (tasks, C) float64 array."""
    total = np.zeros(parts.shape[1])
    for task in range(parts.shape[0]):
        row = parts[task]
        for c in range(row.shape[0]):
            total[c] += row[c]
    return total


# Between the parallel passes, per-channel arithmetic is written as loops: an array expression
# there would become a parallel region of its own (or, with those turned off, a compiler warning).


@_jit
def _columns_forward(x, weight, bias, eps, y, mean, var, tasks):
    n, channels = x.shape
    t = x.dtype.type
    per_task = (n + tasks - 1) // tasks
    # Centre on the mean of the first rows, a close estimate of the mean: one pass then takes Σd and
    # Σd², and E[d²] - mean(d)² cancels little. Where the estimate is off by more than a standard
    # deviation, which costs more than a bit, a second pass centres on the mean itself.
    pilot = min(n, _PILOT_ROWS)
    pilot_sum = np.zeros(channels, x.dtype)  # only an estimate: the input's precision is plenty
    for i in range(pilot):
        row = x[i]
        for c in range(channels):
            pilot_sum[c] += row[c]
    shift = np.empty(channels, x.dtype)
    for c in range(channels):
        shift[c] = t(pilot_sum[c] / pilot)
    for attempt in range(2):
        sums_d, squares = np.zeros((tasks, channels)), np.zeros((tasks, channels))
        for task in numba.prange(tasks):
            rows = x[task * per_task:(task + 1) * per_task]
            _add_centred_column_sums(rows, shift, sums_d[task], squares[task])
        total_d, total_squares = _task_totals(sums_d), _task_totals(squares)
        far = False
        for c in range(channels):
            centre = total_d[c] / n
            mean[c] = shift[c] + centre
            var[c] = total_squares[c] / n - centre * centre
            far = far or centre * centre > var[c]
        if not far:
            break
        for c in range(channels):
            shift[c] = t(mean[c])
    mu, mu_lo, scale = np.empty(channels, x.dtype), np.empty(channels, x.dtype), np.empty(channels, x.dtype)
    for c in range(channels):
        var[c] = max(var[c], 0.0)
        mu[c] = t(mean[c])
        mu_lo[c] = t(mean[c] - mu[c])
        scale[c] = t(weight[c] / np.sqrt(var[c] + eps))
    for task in numba.prange(tasks):
        for i in range(task * per_task, min(n, (task + 1) * per_task)):
            x_row, y_row = x[i], y[i]
            for c in range(channels):
                y_row[c] = (x_row[c] - mu[c] - mu_lo[c]) * scale[c] + bias[c]


@_jit
def _columns_backward(x, dy, mean, rstd, weight, batch_stats, dx, sum_dy_xhat, sum_dy, tasks):
    n, channels = x.shape
    inv_n = 1.0 / n if batch_stats else 0.0
    t = x.dtype.type
    per_task = (n + tasks - 1) // tasks
    mu, mu_lo = np.empty(channels, x.dtype), np.empty(channels, x.dtype)
    for c in range(channels):
        mu[c] = t(mean[c])
        mu_lo[c] = t(mean[c] - mu[c])
    totals, products = np.zeros((tasks, channels)), np.zeros((tasks, channels))  # Σ dy, Σ dy·(x - mean)
    for task in numba.prange(tasks):
        rows = slice(task * per_task, (task + 1) * per_task)
        _add_gradient_column_sums(dy[rows], x[rows], mu, mu_lo, totals[task], products[task])
    total_dy, total_dy_d = _task_totals(totals), _task_totals(products)
    scale, mean_dy, slope = np.empty(channels, x.dtype), np.empty(channels, x.dtype), np.empty(channels, x.dtype)
    for c in range(channels):
        sum_dy[c] = total_dy[c]
        sum_dy_xhat[c] = total_dy_d[c] * rstd[c]
        scale[c] = t(weight[c] * rstd[c])
        mean_dy[c] = t(total_dy[c] * inv_n)
        slope[c] = t(total_dy_d[c] * rstd[c] * rstd[c] * inv_n)
    for task in numba.prange(tasks):
        for i in range(task * per_task, min(n, (task + 1) * per_task)):
            x_row, dy_row, dx_row = x[i], dy[i], dx[i]
            for c in range(channels):
                dx_row[c] = scale[c] * (dy_row[c] - mean_dy[c] - (x_row[c] - mu[c] - mu_lo[c]) * slope[c])


@_jit
def _channels_apply(x, mean, rstd, weight, bias, y):
    n, channels, s = x.shape
    t = x.dtype.type
    for task in numba.prange(n * channels):
        i, c = task // channels, task % channels
        mu, mu_lo = _two_parts(mean[c], t)
        scale, offset = t(weight[c] * rstd[c]), bias[c]
        xc, yc = x[i, c], y[i, c]
        for j in range(s):
            yc[j] = (xc[j] - mu - mu_lo) * scale + offset


@_jit
def _columns_apply(x, mean, rstd, weight, bias, y, tasks):
    n, channels = x.shape
    t = x.dtype.type
    per_task = (n + tasks - 1) // tasks
    mu, mu_lo, scale = np.empty(channels, x.dtype), np.empty(channels, x.dtype), np.empty(channels, x.dtype)
    for c in range(channels):
        mu[c] = t(mean[c])
        mu_lo[c] = t(mean[c] - mu[c])
        scale[c] = t(weight[c] * rstd[c])
    for task in numba.prange(tasks):
        for i in range(task * per_task, min(n, (task + 1) * per_task)):
            x_row, y_row = x[i], y[i]
            for c in range(channels):
                y_row[c] = (x_row[c] - mu[c] - mu_lo[c]) * scale[c] + bias[c]


if __name__ == "__main__":
    start = time.perf_counter()
    compile_all()
    print(f"normlab: compiled kernels ready in {time.perf_counter() - start:.1f} s")
