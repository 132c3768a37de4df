"""The fused CUDA BatchNorm kernels, run on the CPU by `cuda_emulator`, against the generic NumPy path.

These run without a GPU: they check the kernels' index maths, slicing of each
channel into blocks, Welford/Chan merges, barriers and the host code's launch
arguments through the real `normlab.batch_norm_forward`/`batch_norm_backward`.
`test_cupy_backend.py` runs the same comparisons on a real GPU.
"""
import importlib
import importlib.util
import sys

import numpy as np
import pytest

import normlab as nl
from normlab import paths
from normlab.core import normalize_backward
from normlab.kernels import cupy_batch_norm

from . import cuda_emulator
from .helpers import assert_close

pytestmark = [
    pytest.mark.skipif(cuda_emulator.compiler() is None, reason="needs a C++17 compiler (g++) to emulate CUDA"),
    # The stand-in `cupy` module must never shadow a real one in the same process.
    pytest.mark.skipif(importlib.util.find_spec("cupy") is not None,
                       reason="CuPy is installed: the real kernels are tested by test_cupy_backend.py"),
]



@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return cuda_emulator.fake_cupy(tmp_path_factory.mktemp("cuda_emulator"), sm_count=2)


@pytest.fixture
def emulate(fake, monkeypatch):
    """Installs the stand-in ``cupy``; returns a function ``(block, sm_count) -> fake`` that sets the geometry."""
    def configure(block=32, sm_count=2):
        monkeypatch.setattr(cupy_batch_norm, "BLOCK", block)
        fake.sm_count = sm_count
        cupy_batch_norm._kernels.cache_clear()
        cupy_batch_norm._sm_count.cache_clear()
        return fake

    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(paths, "enabled", True)
    yield configure
    cupy_batch_norm._kernels.cache_clear()
    cupy_batch_norm._sm_count.cache_clear()


def _inputs(rng, shape, offset=3.0, affine=True):
    c = shape[1]
    x = (rng.standard_normal(shape) * 2.0 + offset).astype(np.float32)
    w = (rng.standard_normal(c) + 1.0).astype(np.float32) if affine else None
    b = rng.standard_normal(c).astype(np.float32) if affine else None
    rm = rng.standard_normal(c).astype(np.float32)
    rv = (rng.random(c) + 0.5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, w, b, rm, rv, dy


def _fake(a):
    return None if a is None else cuda_emulator.as_fake(a)


def _run(x, w, b, rm, rv, dy, training, fused):
    """Forward and backward through the public API, on fake-CuPy (fused) or NumPy (generic) arrays."""
    conv = _fake if fused else (lambda a: None if a is None else a.copy())
    rm, rv = conv(rm), conv(rv)
    y, cache = nl.batch_norm_forward(conv(x), conv(w), conv(b), running_mean=rm, running_var=rv,
                                     training=training, momentum=0.1, eps=1e-5)
    assert isinstance(cache, cupy_batch_norm.FusedBatchNormCache) == fused
    dx, dw, db = nl.batch_norm_backward(conv(dy), cache)
    return dict(y=y, rm=rm, rv=rv, dx=dx, dw=dw, db=db), cache


# (shape, block, sm_count): ragged last slice; more partials than threads in the finalize
# kernel (35 > 32); one value per sample (H=W=1); a single sample; planes shorter than a
# block (hw = 6, 9), so that a thread's step crosses several samples; grid-stride loops that
# go round several times (total > 32 * sm_count * block); the real block size, 256.
GEOMETRIES = [
    ((4, 3, 7, 9), 32, 2),
    ((4, 2, 33, 33), 32, 64),
    ((5, 3, 1, 1), 32, 2),
    ((1, 4, 6, 5), 32, 3),
    ((40, 3, 2, 3), 32, 1),
    ((64, 5, 3, 3), 32, 1),
    ((3, 5, 17, 19), 32, 1),
    ((2, 3, 5, 7), 256, 2),
]


@pytest.mark.parametrize("shape,block,sm_count", GEOMETRIES)
@pytest.mark.parametrize("training", [True, False])
def test_fused_matches_generic(emulate, rng, shape, block, sm_count, training):
    emulate(block, sm_count)
    m = shape[0] * shape[2] * shape[3]
    parts, _ = cupy_batch_norm.split(m, shape[1], sm_count)
    if shape == (4, 2, 33, 33):
        assert parts > block, "this case must give the finalize kernel more partials than threads"
    args = _inputs(rng, shape)
    fused, _ = _run(*args, training=training, fused=True)
    generic, _ = _run(*args, training=training, fused=False)
    for key in generic:
        assert type(fused[key]) is cuda_emulator.ndarray, f"{key} is not a (stand-in) CuPy array"
        assert fused[key].dtype == generic[key].dtype
        assert_close(fused[key], generic[key], what=key)


def test_without_affine_parameters(emulate, rng):
    emulate()
    args = _inputs(rng, (3, 4, 5, 6), affine=False)
    fused, _ = _run(*args, training=True, fused=True)
    generic, _ = _run(*args, training=True, fused=False)
    assert fused["dw"] is None and fused["db"] is None
    for key in ("y", "rm", "rv", "dx"):
        assert_close(fused[key], generic[key], what=key)


def test_large_mean_stays_accurate(emulate, rng):
    """DESIGN's numerics rule: float32 data with mean 1e4 within 2e-3 of a float64 reference."""
    emulate(sm_count=4)
    x = (rng.standard_normal((8, 3, 10, 10)) + 1e4).astype(np.float32)
    y, _ = nl.batch_norm_forward(_fake(x))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3), keepdims=True)
    ref = (x64 - mean) / np.sqrt(x64.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    assert np.max(np.abs(np.asarray(y) - ref)) < 2e-3


def test_generic_backward_accepts_the_fused_cache(emulate, rng):
    """`normalize_backward` (used by normlab.nn) must give the fused backward's results from a fused cache."""
    emulate()
    x, w, b, rm, rv, dy = _inputs(rng, (3, 4, 5, 6))
    fused, cache = _run(x, w, b, rm, rv, dy, training=True, fused=True)
    dx, dw, db = normalize_backward(_fake(dy), cache)
    assert_close(dx, fused["dx"], what="dx")
    assert_close(dw, fused["dw"], what="dweight")
    assert_close(db, fused["db"], what="dbias")


def test_switch_off_takes_the_generic_path(emulate, rng, monkeypatch):
    emulate()
    monkeypatch.setattr(paths, "enabled", False)
    x = _fake(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    _, cache = nl.batch_norm_forward(x)
    assert not isinstance(cache, cupy_batch_norm.FusedBatchNormCache)


@pytest.mark.parametrize("make", [
    lambda x: x.astype(np.float64),  # not float32
    lambda x: x.transpose(0, 1, 3, 2),  # not C-contiguous
    lambda x: x.reshape(x.shape[0], x.shape[1], -1),  # rank 3
])
def test_other_inputs_take_the_generic_path(emulate, rng, make):
    emulate()
    x = make(_fake(rng.standard_normal((2, 3, 4, 5)).astype(np.float32)))
    _, cache = nl.batch_norm_forward(x)
    assert not isinstance(cache, cupy_batch_norm.FusedBatchNormCache)


def test_emulator_catches_a_divergent_barrier(tmp_path):
    """The emulator must fail, not pass or hang, when one thread skips a __syncthreads()."""
    source = r'''
    extern "C" __global__ void bad(float* out, unsigned int n) {
        __shared__ float s[NL_BLOCK];
        if (threadIdx.x == 0) return;
        s[threadIdx.x] = 1.0f;
        __syncthreads();
        out[threadIdx.x] = s[threadIdx.x] + (float)n;
    }
    '''
    dll, signatures = cuda_emulator.build(source, ("-DNL_BLOCK=4",), tmp_path)
    kernel = cuda_emulator._Kernel(dll, "bad", signatures["bad"], 4)
    out = cuda_emulator.as_fake(np.zeros(4, np.float32))
    with pytest.raises(RuntimeError, match="__syncthreads"):
        kernel((1,), (4,), (out, np.uint32(0)))
    with pytest.raises(TypeError, match="numpy.uint32"):
        kernel((1,), (4,), (out, 0))


@pytest.mark.parametrize("constant", [0.0, 3.7, 1e4 / 3])
def test_constant_channel_gives_exactly_beta(emulate, rng, constant):
    """Zero variance: x̂ must be exactly 0 (the shift makes every x - shift exactly 0), not noise / sqrt(eps)."""
    emulate()
    x = rng.standard_normal((8, 3, 5, 5)).astype(np.float32)
    x[:, 1] = constant
    w, b = rng.uniform(0.5, 2.0, 3).astype(np.float32), rng.uniform(-1.0, 1.0, 3).astype(np.float32)
    y, _ = nl.batch_norm_forward(_fake(x), _fake(w), _fake(b))
    assert np.all(np.asarray(y)[:, 1] == b[1])


def test_kernel_running_update_is_bitwise_the_generic_formula(emulate, rng):
    """The finalize kernel's in-place update must round exactly as `update_running_stats` does."""
    from normlab.running_stats import unbiased_var, update_running_stats

    emulate()
    x = _fake(rng.standard_normal((6, 4, 5, 7)).astype(np.float32) * 3 + 1)
    _, _, (mean, var) = cupy_batch_norm.forward(x, eps=1e-5)
    rm0, rv0 = rng.standard_normal(4).astype(np.float32), (rng.random(4) + 0.5).astype(np.float32)
    rm, rv = _fake(rm0), _fake(rv0)
    _, _, batch = cupy_batch_norm.forward(x, eps=1e-5, running=(rm, rv, 0.3))
    assert batch is None, "float32 buffers must be updated by the kernel"
    expected_m, expected_v = rm0.copy(), rv0.copy()
    update_running_stats(expected_m, expected_v, np.asarray(mean), unbiased_var(np.asarray(var), 6 * 5 * 7), 0.3)
    assert np.array_equal(np.asarray(rm), expected_m) and np.array_equal(np.asarray(rv), expected_v)


def test_float64_running_buffers_are_updated_by_the_generic_code(emulate, rng):
    emulate()
    args = list(_inputs(rng, (4, 3, 6, 5)))
    args[3], args[4] = args[3].astype(np.float64), args[4].astype(np.float64)
    fused, _ = _run(*args, training=True, fused=True)
    generic, _ = _run(*args, training=True, fused=False)
    assert fused["rm"].dtype == np.float64
    assert_close(fused["rm"], generic["rm"], what="rm")
    assert_close(fused["rv"], generic["rv"], what="rv")
