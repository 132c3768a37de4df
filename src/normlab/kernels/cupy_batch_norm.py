r"""Fused CuPy kernels for BatchNorm on NCHW float32: the GPU fast path behind the generic path.

The generic path (`normlab.core`) builds BatchNorm from array operations, and
each one reads or writes the whole tensor. Here the same maths takes three
kernels per pass, which is what memory-bound code needs:

forward
    1. ``bn_stats_partial``: each block runs Welford's update over a slice of
       one channel, then merges its threads' (count, mean, M2) with Chan's
       formula; grid (blocks per channel, C).
    2. ``bn_stats_finalize``: one block per channel merges those partials,
       again with Chan's formula, in float64, and writes mean, var and rstd;
       it also updates float32 running buffers, with the same float32
       operations as `normlab.running_stats.update_running_stats` (which
       would otherwise take about a dozen small launches).
    3. ``bn_normalize``: ``y = γ·(x - μ)·rstd + β``, one elementwise pass.
backward
    1-2. ``bn_backward_partial``/``bn_backward_finalize``: the two per-channel
       sums Σdy (= dβ) and Σdy·x̂ (= dγ) in the same pass over dy and x.
    3. ``bn_backward_dx``: ``dx = γ·rstd·(dy - (Σdy + x̂·Σdy·x̂)/m)``, which is
       the core's ``r·(g - mean(g) - x̂·mean(g·x̂))`` with ``g = γ·dy``.

Welford's running mean is kept relative to one value of the channel
(``x[0, c, 0, 0]``, the *shift*), so that float32 rounding of a large mean
does not swallow a small variance (and a constant channel gives x̂ = 0 exactly).
This helps as long as that first value is typical of its channel; one far
outlier there makes it no better than Welford without a shift. x̂ is
recomputed as ``((x - shift) - centre)·rstd`` in both passes; the cache holds x itself (as cuDNN does) rather than a
second tensor x̂, which saves a full write in the forward pass.

CuPy is imported inside functions only: importing this module (and normlab)
never needs CuPy or a GPU. `FusedBatchNormCache` has every attribute of
`normlab.core.NormCache`, so `normlab.core.normalize_backward` also accepts it.
"""
import functools
import math

import numpy as np

from ..axes import batch_layout

# Threads per block. The reductions halve the active threads each step, so this must be a power of two.
BLOCK = 256

# Kernel indices are 32-bit unsigned: larger tensors take the generic path.
MAX_ELEMENTS = 2**31 - 1

CUDA_SOURCE = r"""
// Element (n, c, s) of a C-contiguous (N, C, H, W) tensor sits at (n*C + c)*HW + s.
// Channel c owns m = N*HW values, numbered i = n*HW + s for i in [0, m).

#ifndef NL_BLOCK
#define NL_BLOCK 256
#endif

__device__ __forceinline__ unsigned int nl_min(unsigned int a, unsigned int b) { return a < b ? a : b; }

// Integer division costs about as much as the rest of the work on one value, so the loops
// below divide once per thread and then step through the indices with additions only.

// The values i, i + NL_BLOCK, i + 2*NL_BLOCK, ... of channel c, where i = n*hw + s.
// offset = (n*C + c)*hw + s is the value's place in memory; s stays in [0, hw).
struct NlChannelWalk {
    long long offset, step_offset, wrap;
    unsigned int s, hw, step_s;
};

__device__ __forceinline__ NlChannelWalk nl_channel_walk(unsigned int i, unsigned int c, unsigned int channels,
                                                         unsigned int hw) {
    NlChannelWalk w;
    const unsigned int n = i / hw;
    const long long row = (long long)channels * hw;  // from sample n to sample n + 1
    w.s = i - n * hw;
    w.hw = hw;
    w.offset = n * row + (long long)c * hw + w.s;
    w.step_s = NL_BLOCK % hw;
    w.step_offset = (long long)(NL_BLOCK / hw) * row + w.step_s;
    w.wrap = row - hw;  // s went past the end of its plane: next sample, s - hw
    return w;
}

__device__ __forceinline__ void nl_channel_next(NlChannelWalk& w) {
    w.s += w.step_s;
    w.offset += w.step_offset;
    if (w.s >= w.hw) { w.s -= w.hw; w.offset += w.wrap; }
}

// Flat indices i, i + step, ... of the whole tensor, with c = (i / hw) % C, the channel of i,
// and s = i % hw kept in step. step / hw < 2^32 and c + step_c + 1 < 2C, so one wrap each suffices.
struct NlFlatWalk {
    unsigned int s, c, hw, channels, step_s, step_c;
};

__device__ __forceinline__ NlFlatWalk nl_flat_walk(unsigned int i, unsigned int step, unsigned int channels,
                                                   unsigned int hw) {
    NlFlatWalk w;
    const unsigned int plane = i / hw;
    w.s = i - plane * hw;
    w.c = plane % channels;
    w.hw = hw;
    w.channels = channels;
    w.step_s = step % hw;
    w.step_c = (step / hw) % channels;
    return w;
}

__device__ __forceinline__ void nl_flat_next(NlFlatWalk& w) {
    w.s += w.step_s;
    w.c += w.step_c;
    if (w.s >= w.hw) { w.s -= w.hw; w.c += 1; }
    if (w.c >= w.channels) w.c -= w.channels;
}

// Chan, Golub and LeVeque: merge the summary (n_b, mean_b, m2_b) into (n_a, mean_a, m2_a).
// An empty side is handled exactly, so threads and blocks that saw no values are harmless.
template <typename T>
__device__ __forceinline__ void nl_chan_merge(T& n_a, T& mean_a, T& m2_a, T n_b, T mean_b, T m2_b) {
    if (n_b == T(0)) return;
    if (n_a == T(0)) { n_a = n_b; mean_a = mean_b; m2_a = m2_b; return; }
    const T n = n_a + n_b;
    const T delta = mean_b - mean_a;
    const T w_b = n_b / n;
    mean_a += delta * w_b;
    m2_a += m2_b + delta * delta * n_a * w_b;
    n_a = n;
}

// Tree merge of every thread's summary; thread 0 ends with the block's.
// Step `half`: threads t < half read slot t + half and write slot t, disjoint sets,
// and every thread reaches every barrier (the loop bounds do not depend on t).
template <typename T>
__device__ void nl_block_welford(T* sn, T* smean, T* sm2, T& n, T& mean, T& m2) {
    const unsigned int t = threadIdx.x;
    sn[t] = n; smean[t] = mean; sm2[t] = m2;
    __syncthreads();
    for (unsigned int half = NL_BLOCK / 2; half > 0; half >>= 1) {
        if (t < half) {
            nl_chan_merge<T>(n, mean, m2, sn[t + half], smean[t + half], sm2[t + half]);
            sn[t] = n; smean[t] = mean; sm2[t] = m2;
        }
        __syncthreads();
    }
}

// The same tree for two plain sums.
template <typename T>
__device__ void nl_block_sum2(T* sa, T* sb, T& a, T& b) {
    const unsigned int t = threadIdx.x;
    sa[t] = a; sb[t] = b;
    __syncthreads();
    for (unsigned int half = NL_BLOCK / 2; half > 0; half >>= 1) {
        if (t < half) {
            a += sa[t + half]; b += sb[t + half];
            sa[t] = a; sb[t] = b;
        }
        __syncthreads();
    }
}

// Forward 1/3. Grid (parts, C). Block b of channel c takes values [b*chunk, min((b+1)*chunk, m)).
// Writes part[c][b] = (count, mean, M2) of (x - shift), shift = x[0, c, 0, 0].
extern "C" __global__ void bn_stats_partial(const float* __restrict__ x, float* __restrict__ part,
                                            unsigned int channels, unsigned int hw, unsigned int m,
                                            unsigned int chunk) {
    __shared__ float sn[NL_BLOCK], smean[NL_BLOCK], sm2[NL_BLOCK];
    const unsigned int c = blockIdx.y;
    const unsigned int start = blockIdx.x * chunk;
    const unsigned int end = nl_min(start + chunk, m);
    const float shift = x[(long long)c * hw];
    float n = 0.0f, mean = 0.0f, m2 = 0.0f;
    NlChannelWalk w = nl_channel_walk(start + threadIdx.x, c, channels, hw);
    for (unsigned int i = start + threadIdx.x; i < end; i += NL_BLOCK, nl_channel_next(w)) {
        const float v = x[w.offset] - shift;
        n += 1.0f;  // exact: the host keeps chunk <= 2^24
        const float delta = v - mean;
        mean += delta / n;
        m2 += delta * (v - mean);
    }
    nl_block_welford<float>(sn, smean, sm2, n, mean, m2);
    if (threadIdx.x == 0) {
        float* out = part + 3 * ((long long)c * gridDim.x + blockIdx.x);
        out[0] = n; out[1] = mean; out[2] = m2;
    }
}

// Forward 2/3. Grid (C). Merges the `parts` partials of channel c in float64 and writes
// shift, centre (mean of x - shift), mean = shift + centre, biased var, rstd = 1/sqrt(var + eps).
// With update != 0 it also updates the running buffers as PyTorch does:
// running = keep*running + momentum*batch (keep = 1 - momentum), var stored unbiased (var*bessel).
// The _rn intrinsics are never fused into an FMA, so each step rounds as the generic path's
// separate float32 array operations do. With update == 0 the running pointers are not touched.
extern "C" __global__ void bn_stats_finalize(const float* __restrict__ x, const float* __restrict__ part,
                                             unsigned int hw, unsigned int parts, float eps,
                                             float* __restrict__ shift_out, float* __restrict__ centre_out,
                                             float* __restrict__ mean_out, float* __restrict__ var_out,
                                             float* __restrict__ rstd_out, float* running_mean,
                                             float* running_var, float momentum, float keep, float bessel,
                                             unsigned int update) {
    __shared__ double sn[NL_BLOCK], smean[NL_BLOCK], sm2[NL_BLOCK];
    const unsigned int c = blockIdx.x;
    double n = 0.0, mean = 0.0, m2 = 0.0;
    for (unsigned int k = threadIdx.x; k < parts; k += NL_BLOCK) {
        const float* p = part + 3 * ((long long)c * parts + k);
        nl_chan_merge<double>(n, mean, m2, (double)p[0], (double)p[1], (double)p[2]);
    }
    nl_block_welford<double>(sn, smean, sm2, n, mean, m2);
    if (threadIdx.x == 0) {
        const float shift = x[(long long)c * hw];
        const float centre = (float)mean;
        const float var = fmaxf((float)(m2 / n), 0.0f);
        shift_out[c] = shift;
        centre_out[c] = centre;
        mean_out[c] = shift + centre;
        var_out[c] = var;
        rstd_out[c] = 1.0f / sqrtf(var + eps);
        if (update) {
            running_mean[c] = __fadd_rn(__fmul_rn(keep, running_mean[c]), __fmul_rn(momentum, shift + centre));
            const float unbiased = __fmul_rn(var, bessel);
            running_var[c] = __fadd_rn(__fmul_rn(keep, running_var[c]), __fmul_rn(momentum, unbiased));
        }
    }
}

// Forward 3/3. Grid-stride over all elements: y = ((x - shift) - centre) * rstd * weight + bias.
extern "C" __global__ void bn_normalize(const float* __restrict__ x, const float* __restrict__ shift,
                                        const float* __restrict__ centre, const float* __restrict__ rstd,
                                        const float* __restrict__ weight, const float* __restrict__ bias,
                                        float* __restrict__ y, unsigned int channels, unsigned int hw,
                                        unsigned int total) {
    const unsigned int stride = NL_BLOCK * gridDim.x;
    const unsigned int first = blockIdx.x * NL_BLOCK + threadIdx.x;
    NlFlatWalk w = nl_flat_walk(first, stride, channels, hw);
    for (unsigned int i = first; i < total; i += stride, nl_flat_next(w)) {
        const unsigned int c = w.c;
        const float xhat = ((x[i] - shift[c]) - centre[c]) * rstd[c];
        y[i] = xhat * weight[c] + bias[c];
    }
}

// Backward 1/2. Grid (parts, C), the same slices as bn_stats_partial.
// Writes part[c][b] = (sum dy, sum dy * xhat).
extern "C" __global__ void bn_backward_partial(const float* __restrict__ dy, const float* __restrict__ x,
                                               const float* __restrict__ shift, const float* __restrict__ centre,
                                               const float* __restrict__ rstd, float* __restrict__ part,
                                               unsigned int channels, unsigned int hw, unsigned int m,
                                               unsigned int chunk) {
    __shared__ float s_dy[NL_BLOCK], s_dyx[NL_BLOCK];
    const unsigned int c = blockIdx.y;
    const unsigned int start = blockIdx.x * chunk;
    const unsigned int end = nl_min(start + chunk, m);
    const float k = shift[c], mu = centre[c], r = rstd[c];
    float sum_dy = 0.0f, sum_dyx = 0.0f;
    NlChannelWalk w = nl_channel_walk(start + threadIdx.x, c, channels, hw);
    for (unsigned int i = start + threadIdx.x; i < end; i += NL_BLOCK, nl_channel_next(w)) {
        const float g = dy[w.offset];
        sum_dy += g;
        sum_dyx += g * (((x[w.offset] - k) - mu) * r);
    }
    nl_block_sum2<float>(s_dy, s_dyx, sum_dy, sum_dyx);
    if (threadIdx.x == 0) {
        float* out = part + 2 * ((long long)c * gridDim.x + blockIdx.x);
        out[0] = sum_dy; out[1] = sum_dyx;
    }
}

// Backward 2/2 (reduction). Grid (C). Sums the partials of channel c in float64.
extern "C" __global__ void bn_backward_finalize(const float* __restrict__ part, unsigned int parts,
                                                float* __restrict__ sum_dy_out, float* __restrict__ sum_dyx_out) {
    __shared__ double sa[NL_BLOCK], sb[NL_BLOCK];
    const unsigned int c = blockIdx.x;
    double a = 0.0, b = 0.0;
    for (unsigned int k = threadIdx.x; k < parts; k += NL_BLOCK) {
        const float* p = part + 2 * ((long long)c * parts + k);
        a += (double)p[0];
        b += (double)p[1];
    }
    nl_block_sum2<double>(sa, sb, a, b);
    if (threadIdx.x == 0) {
        sum_dy_out[c] = (float)a;
        sum_dyx_out[c] = (float)b;
    }
}

// Backward, elementwise. dx = rstd * weight * (dy - inv_m * (sum_dy + xhat * sum_dyx));
// inv_m = 1/m with batch statistics, 0 in eval (constant statistics).
extern "C" __global__ void bn_backward_dx(const float* __restrict__ dy, const float* __restrict__ x,
                                          const float* __restrict__ shift, const float* __restrict__ centre,
                                          const float* __restrict__ rstd, const float* __restrict__ weight,
                                          const float* __restrict__ sum_dy, const float* __restrict__ sum_dyx,
                                          float inv_m, float* __restrict__ dx, unsigned int channels,
                                          unsigned int hw, unsigned int total) {
    const unsigned int stride = NL_BLOCK * gridDim.x;
    const unsigned int first = blockIdx.x * NL_BLOCK + threadIdx.x;
    NlFlatWalk w = nl_flat_walk(first, stride, channels, hw);
    for (unsigned int i = first; i < total; i += stride, nl_flat_next(w)) {
        const unsigned int c = w.c;
        const float xhat = ((x[i] - shift[c]) - centre[c]) * rstd[c];
        dx[i] = rstd[c] * weight[c] * (dy[i] - inv_m * (sum_dy[c] + xhat * sum_dyx[c]));
    }
}
"""

KERNEL_NAMES = (
    "bn_stats_partial", "bn_stats_finalize", "bn_normalize",
    "bn_backward_partial", "bn_backward_finalize", "bn_backward_dx",
)


def is_cupy_array(a):
    """True for a CuPy ndarray, decided without importing CuPy."""
    return type(a).__module__.split(".")[0] == "cupy" and type(a).__name__ == "ndarray"


def accepts(x, *params):
    """Whether the fused kernels handle ``x`` (with ``params``: weight, bias, running buffers; ``None`` allowed).

    Only a non-empty C-contiguous float32 CuPy array of rank 4 whose parameters
    are CuPy arrays on the same device. Anything else, including inputs that
    would make the generic path raise, goes through the generic path.
    """
    if not is_cupy_array(x) or x.ndim != 4 or x.dtype != np.float32 or not x.flags.c_contiguous:
        return False
    if not 0 < x.size <= MAX_ELEMENTS or x.shape[1] > 65535:  # grid.y holds the channel
        return False
    return all(p is None or (is_cupy_array(p) and p.device == x.device) for p in params)


def split(m, channels, sm_count):
    """``(parts, chunk)``: each channel's m values are cut into ``parts`` slices of ``chunk`` (the last may be shorter).

    Enough blocks to fill the GPU (about 4 per multiprocessor), never fewer
    than 4 values per thread, and never more than 2^24 values per block, so
    that float32 counts stay exact. Every slice is non-empty.
    """
    parts = math.ceil(4 * sm_count / channels)
    parts = min(parts, math.ceil(m / (4 * BLOCK)))
    parts = max(parts, math.ceil(m / 2**24), 1)
    chunk = math.ceil(m / parts)
    return math.ceil(m / chunk), chunk


def elementwise_grid(total, sm_count):
    """Blocks for a grid-stride elementwise kernel: enough to fill the GPU, no more than the work needs."""
    return max(1, min(math.ceil(total / BLOCK), 32 * sm_count))


@functools.cache
def _kernels(device_id):
    """The compiled kernels for one device, by name: compiled (or read from CuPy's disk cache) once per process."""
    import cupy

    module = cupy.RawModule(code=CUDA_SOURCE, options=(f"-DNL_BLOCK={BLOCK}",))
    return {name: module.get_function(name) for name in KERNEL_NAMES}


@functools.cache
def _sm_count(device_id):
    import cupy

    try:
        return int(cupy.cuda.Device(device_id).attributes["MultiProcessorCount"])
    except Exception:  # only the launch geometry depends on it, never the result
        return 80


def _per_channel(a, channels, fill, copy=False):
    """``a`` as a contiguous float32 (C,) array (``a`` itself when it already is, unless ``copy``),
    or ``fill`` repeated when ``a`` is None."""
    import cupy

    if a is None:
        return cupy.full((channels,), fill, dtype=cupy.float32)
    if not copy and a.dtype == np.float32 and a.flags.c_contiguous:
        return a  # like the generic path, which keeps γ as given (astype with copy=False)
    return cupy.array(a, dtype=cupy.float32, copy=True, order="C").reshape(channels)


class FusedBatchNormCache:
    """What the fused backward needs: x itself and the per-channel shift, centre and rstd.

    It also offers every attribute of `normlab.core.NormCache` (``xhat`` is
    computed on first use), so the generic `normalize_backward` accepts it too.
    """

    def __init__(self, x, shift, centre, rstd, weight, has_bias, batch_stats, param_dtype):
        channels = x.shape[1]
        self.x = x  # kept, not copied: changing x in place before backward changes the gradient
        self.shift, self.centre, self.rstd_c = shift, centre, rstd
        self.weight_c = weight  # float32 (C,), or None
        self.layout = batch_layout(x.shape)
        self.has_bias = has_bias
        self.batch_stats = batch_stats
        self.input_shape = tuple(x.shape)
        self.input_dtype = x.dtype
        self.param_dtype = param_dtype
        self.weight_shape = (channels,) if param_dtype is not None else ()
        self._xhat = None

    def _view(self, a):
        return a.reshape(self.layout.param_shape)

    @property
    def rstd(self):
        return self._view(self.rstd_c)

    @property
    def weight(self):
        return None if self.weight_c is None else self._view(self.weight_c)

    @property
    def xhat(self):
        if self._xhat is None:
            self._xhat = ((self.x - self._view(self.shift)) - self._view(self.centre)) * self.rstd
        return self._xhat


def forward(x, weight=None, bias=None, *, eps, stats=None, running=None):
    """Fused BatchNorm forward for an input that `accepts` takes. Inputs must already be validated.

    ``stats=None`` uses the batch statistics; ``stats=(running_mean, running_var)``
    uses those as constants (eval). Returns ``(y, cache, batch)`` like
    `normlab.core.normalize`: ``batch`` is ``(mean, biased_var)``, float32 of
    shape (C,), or ``None`` in eval.

    ``running=(running_mean, running_var, momentum)`` (training only) asks the
    kernels to update C-contiguous float32 buffers in place; ``batch`` is then
    ``None``, which tells the caller there is nothing left to update. Buffers of
    other dtypes or layouts are left to the caller, and ``batch`` is returned.
    """
    import cupy

    n, channels, h, w = x.shape
    hw, total = h * w, x.size
    m = n * hw
    u32 = np.uint32
    with x.device:
        sms = _sm_count(x.device.id)
        kernels = _kernels(x.device.id)
        gamma = _per_channel(weight, channels, 1.0)
        beta = _per_channel(bias, channels, 0.0)
        if stats is None:
            parts, chunk = split(m, channels, sms)
            part = cupy.empty((channels, parts, 3), dtype=cupy.float32)
            shift, centre, mean, var, rstd = (cupy.empty((channels,), dtype=cupy.float32) for _ in range(5))
            update = running is not None and all(b.dtype == np.float32 and b.flags.c_contiguous for b in running[:2])
            # Without an update the kernel never touches the running pointers; mean and var stand in for them.
            running_mean, running_var, momentum = running if update else (mean, var, 0.0)
            kernels["bn_stats_partial"]((parts, channels), (BLOCK,), (x, part, u32(channels), u32(hw), u32(m), u32(chunk)))
            kernels["bn_stats_finalize"](
                (channels,), (BLOCK,),
                (x, part, u32(hw), u32(parts), np.float32(eps), shift, centre, mean, var, rstd,
                 running_mean, running_var, np.float32(momentum), np.float32(1.0 - momentum),
                 np.float32(m / (m - 1) if m > 1 else 1.0), u32(update)),
            )
            batch = None if update else (mean, var)
        else:
            # The same float32 operations as the generic path, so eval outputs agree to the last bit but one.
            # Copies: the cache must not follow later updates of the running buffers.
            shift = _per_channel(stats[0], channels, 0.0, copy=True)
            var = _per_channel(stats[1], channels, 0.0, copy=True)
            centre = cupy.zeros((channels,), dtype=cupy.float32)
            rstd = 1.0 / cupy.sqrt(var + eps)
            batch = None
        y = cupy.empty_like(x)
        kernels["bn_normalize"](
            (elementwise_grid(total, sms),), (BLOCK,),
            (x, shift, centre, rstd, gamma, beta, y, u32(channels), u32(hw), u32(total)),
        )
    params = weight if weight is not None else bias
    cache = FusedBatchNormCache(
        x, shift, centre, rstd,
        weight=None if weight is None else gamma,
        has_bias=bias is not None,
        batch_stats=stats is None,
        param_dtype=None if params is None else params.dtype,
    )
    return y, cache, batch


def backward(dy, cache, *, use_kernels=True):
    """Gradients ``(dx, dweight, dbias)`` for a `FusedBatchNormCache`.

    The kernels run when ``dy`` is a C-contiguous float32 CuPy array on the
    input's device and ``use_kernels`` is true; otherwise the generic
    `normalize_backward` takes the cache, with the same results.
    """
    if tuple(dy.shape) != cache.input_shape:
        raise ValueError(f"dy has shape {tuple(dy.shape)}, but the forward input had shape {cache.input_shape}")
    if not (use_kernels and accepts(dy, cache.x)):
        from ..core import normalize_backward  # imported here: the core asks this module's path first

        return normalize_backward(dy, cache)
    import cupy

    x = cache.x
    n, channels, h, w = x.shape
    hw, total = h * w, x.size
    m = n * hw
    u32 = np.uint32
    with x.device:
        sms = _sm_count(x.device.id)
        kernels = _kernels(x.device.id)
        parts, chunk = split(m, channels, sms)
        part = cupy.empty((channels, parts, 2), dtype=cupy.float32)
        sum_dy = cupy.empty((channels,), dtype=cupy.float32)
        sum_dyx = cupy.empty((channels,), dtype=cupy.float32)
        kernels["bn_backward_partial"](
            (parts, channels), (BLOCK,),
            (dy, x, cache.shift, cache.centre, cache.rstd_c, part, u32(channels), u32(hw), u32(m), u32(chunk)),
        )
        kernels["bn_backward_finalize"]((channels,), (BLOCK,), (part, u32(parts), sum_dy, sum_dyx))
        gamma = cache.weight_c if cache.weight_c is not None else cupy.ones((channels,), dtype=cupy.float32)
        inv_m = np.float32(1.0 / m if cache.batch_stats else 0.0)
        dx = cupy.empty_like(dy)
        kernels["bn_backward_dx"](
            (elementwise_grid(total, sms),), (BLOCK,),
            (dy, x, cache.shift, cache.centre, cache.rstd_c, gamma, sum_dy, sum_dyx, inv_m, dx,
             u32(channels), u32(hw), u32(total)),
        )
    dweight = sum_dyx.astype(cache.param_dtype, copy=False) if cache.weight_c is not None else None
    dbias = sum_dy.astype(cache.param_dtype, copy=False) if cache.has_bias else None
    return dx, dweight, dbias
