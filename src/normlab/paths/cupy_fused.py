"""The GPU path: fused CUDA kernels (`normlab.kernels.cupy_batch_norm`) for BatchNorm on CuPy arrays.

It covers BatchNorm, in training and eval, on non-empty C-contiguous float32
(N, C, H, W) CuPy arrays whose parameters live on the same device. CuPy is
never imported unless such an array arrives. The running buffers are updated
by `normlab.batch_norm`, as on every other path.
"""
from ..kernels import cupy_batch_norm
from . import Coverage, cases


class CupyFusedPath:
    name = "fused CUDA kernels (CuPy)"
    coverage = Coverage(
        library="cupy",
        dtypes=frozenset({"float32"}),
        cases=cases("per_channel", input_stats=(True, False)),
        ranks=(4,),
    )

    def usable(self):
        return True

    def accepts(self, x, *others):
        return cupy_batch_norm.accepts(x, *others)

    def accepts_backward(self, dy, cache):
        return cupy_batch_norm.accepts(dy, cache.x)

    def forward(self, x, layout, weight=None, bias=None, *, eps, stats=None):
        y, cache, batch = cupy_batch_norm.forward(x, weight, bias, eps=eps, stats=stats)
        cache.path = self
        if batch is not None:  # the generic core's (1, C, 1, 1) statistics
            batch = tuple(s.reshape(layout.param_shape) for s in batch)
        return y, cache, batch

    def backward(self, dy, cache):
        return cupy_batch_norm.backward(dy, cache)


PATH = CupyFusedPath()
