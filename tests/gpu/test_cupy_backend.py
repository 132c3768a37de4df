"""The fused CuPy BatchNorm kernels against the generic path, on a real GPU (marker ``gpu``).

The first tests run anywhere: normlab imports without CuPy, dispatch never
picks the fused path for other arrays, and the launch geometry covers every
value. The rest need a CUDA GPU with CuPy; without one they are skipped with
the reason "needs a CUDA GPU with CuPy". Run them with ``pytest -m gpu``.
"""
import importlib
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import normlab as nl
from normlab import paths
from normlab.core import normalize_backward
from normlab.kernels import cupy_batch_norm

from .helpers import assert_close



# ---------------------------------------------------------------- runs anywhere

def test_importing_normlab_never_imports_cupy():
    code = "import sys, normlab, normlab.kernels.cupy_batch_norm; sys.exit('cupy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_numpy_and_torch_inputs_take_the_generic_path(rng):
    import torch

    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    assert not cupy_batch_norm.accepts(x)
    assert not cupy_batch_norm.accepts(torch.from_numpy(x))
    for arr in (x, torch.from_numpy(x)):
        _, cache = nl.batch_norm_forward(arr)
        assert not isinstance(cache, cupy_batch_norm.FusedBatchNormCache)


@pytest.mark.parametrize("sm_count", [1, 8, 132])
@pytest.mark.parametrize("channels", [1, 3, 64, 1000])
@pytest.mark.parametrize("m", [1, 2, 255, 1024, 5000, 200_704, 2**24 + 3, 2**31 - 1])
def test_split_covers_every_value_once(m, channels, sm_count):
    parts, chunk = cupy_batch_norm.split(m, channels, sm_count)
    assert parts >= 1 and chunk >= 1
    assert (parts - 1) * chunk < m <= parts * chunk, "slices must cover [0, m) and none may be empty"
    assert chunk <= 2**24, "float32 counts must stay exact"
    assert parts * chunk < 2**32, "slice ends must fit in 32 bits"


def test_elementwise_grid_is_bounded():
    for total in (1, 255, 256, 257, 10**6, 2**31 - 1):
        blocks = cupy_batch_norm.elementwise_grid(total, 132)
        assert 1 <= blocks <= math.ceil(total / cupy_batch_norm.BLOCK)
        assert blocks * cupy_batch_norm.BLOCK < 2**31


# ---------------------------------------------------------------- needs a GPU

@pytest.fixture
def cp():
    return pytest.importorskip("cupy", reason="needs a CUDA GPU with CuPy")


def _inputs(cp, rng, shape, offset=3.0, affine=True):
    c = shape[1]
    host = dict(
        x=rng.standard_normal(shape) * 2.0 + offset,
        w=rng.standard_normal(c) + 1.0 if affine else None,
        b=rng.standard_normal(c) if affine else None,
        rm=rng.standard_normal(c),
        rv=rng.random(c) + 0.5,
        dy=rng.standard_normal(shape),
    )
    return {k: None if v is None else cp.asarray(v, dtype=cp.float32) for k, v in host.items()}


def _run(a, training, fused, monkeypatch):
    """Forward and backward through the public API; running buffers are copied so both runs start alike."""
    monkeypatch.setattr(paths, "enabled", fused)
    rm, rv = a["rm"].copy(), a["rv"].copy()
    y, cache = nl.batch_norm_forward(a["x"], a["w"], a["b"], running_mean=rm, running_var=rv,
                                     training=training, momentum=0.1, eps=1e-5)
    assert isinstance(cache, cupy_batch_norm.FusedBatchNormCache) == fused
    dx, dw, db = nl.batch_norm_backward(a["dy"], cache)
    return dict(y=y, rm=rm, rv=rv, dx=dx, dw=dw, db=db), cache


# Odd sizes, sizes that are not multiples of the block (256), one value per sample,
# a single sample, more slices per channel than threads, and the benchmark shapes.
SHAPES = [
    (2, 3, 5, 7), (4, 3, 33, 31), (5, 3, 1, 1), (1, 4, 6, 5), (3, 2, 257, 129),
    (32, 64, 32, 32), (8, 256, 14, 14), (16, 8, 67, 67),
]


@pytest.mark.gpu
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_matches_generic(cp, rng, monkeypatch, shape, training):
    a = _inputs(cp, rng, shape)
    fused, _ = _run(a, training, True, monkeypatch)
    generic, _ = _run(a, training, False, monkeypatch)
    for key in generic:
        assert isinstance(fused[key], cp.ndarray), f"{key} is not a CuPy array"
        assert fused[key].device == a["x"].device
        assert fused[key].dtype == generic[key].dtype
        assert_close(fused[key], generic[key], what=key)


@pytest.mark.gpu
def test_fused_without_affine_parameters(cp, rng, monkeypatch):
    a = _inputs(cp, rng, (4, 5, 9, 11), affine=False)
    fused, _ = _run(a, True, True, monkeypatch)
    generic, _ = _run(a, True, False, monkeypatch)
    assert fused["dw"] is None and fused["db"] is None
    for key in ("y", "rm", "rv", "dx"):
        assert_close(fused[key], generic[key], what=key)


@pytest.mark.gpu
def test_fused_is_deterministic(cp, rng, monkeypatch):
    """No atomics: two runs on the same input give bitwise equal results."""
    a = _inputs(cp, rng, (16, 8, 67, 67))
    first, _ = _run(a, True, True, monkeypatch)
    second, _ = _run(a, True, True, monkeypatch)
    for key in first:
        assert bool(cp.array_equal(first[key], second[key])), key


@pytest.mark.gpu
def test_fused_large_mean_stays_accurate(cp, rng):
    """DESIGN's numerics rule: float32 data with mean 1e4 within 2e-3 of a float64 reference."""
    x = (rng.standard_normal((16, 4, 20, 20)) + 1e4).astype(np.float32)
    y, cache = nl.batch_norm_forward(cp.asarray(x))
    assert isinstance(cache, cupy_batch_norm.FusedBatchNormCache)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(x64.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    assert np.max(np.abs(cp.asnumpy(y) - ref)) < 2e-3


@pytest.mark.gpu
def test_generic_backward_accepts_the_fused_cache(cp, rng, monkeypatch):
    """normlab.nn calls `normalize_backward` on the cache; it must agree with the fused backward."""
    a = _inputs(cp, rng, (4, 6, 10, 10))
    fused, cache = _run(a, True, True, monkeypatch)
    dx, dw, db = normalize_backward(a["dy"], cache)
    for key, value in (("dx", dx), ("dw", dw), ("db", db)):
        assert_close(value, fused[key], what=key)


@pytest.mark.gpu
def test_noncontiguous_dy_falls_back_to_the_generic_backward(cp, rng, monkeypatch):
    a = _inputs(cp, rng, (4, 6, 10, 12))
    fused, cache = _run(a, True, True, monkeypatch)
    strided = cp.asfortranarray(a["dy"])
    assert not strided.flags.c_contiguous
    dx, dw, db = nl.batch_norm_backward(strided, cache)
    assert_close(dx, fused["dx"], what="dx")
    assert_close(dw, fused["dw"], what="dw")


@pytest.mark.gpu
@pytest.mark.parametrize("make", [
    lambda cp, x: x.astype(cp.float16),
    lambda cp, x: x.astype(cp.float64),
    lambda cp, x: cp.asfortranarray(x),
    lambda cp, x: x.reshape(x.shape[0], x.shape[1], -1),
])
def test_other_cupy_inputs_take_the_generic_path(cp, rng, make):
    x = make(cp, cp.asarray(rng.standard_normal((4, 3, 5, 6)), dtype=cp.float32))
    y, cache = nl.batch_norm_forward(x)
    assert not isinstance(cache, cupy_batch_norm.FusedBatchNormCache)
    assert isinstance(y, cp.ndarray) and y.dtype == x.dtype


@pytest.mark.gpu
def test_nn_batchnorm_on_cupy_matches_torch(cp, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((8, 5, 7, 9)).astype(np.float32)
    layer = nl.nn.BatchNorm(5)
    ref = torch.nn.BatchNorm2d(5)
    for _ in range(2):
        y = layer(cp.asarray(x))
        y_ref = ref(torch.from_numpy(x))
        assert isinstance(y, cp.ndarray)
        assert_close(y, y_ref, what="y")
    assert_close(layer.running_mean, ref.running_mean, what="running_mean")
    assert_close(layer.running_var, ref.running_var, what="running_var")


def test_gpu_benchmark_imports_anywhere_and_explains_what_it_needs():
    """`bench.gpu` must import without CuPy, and fail only in main(), saying what is missing."""
    root = Path(__file__).resolve().parents[2]
    code = "import sys, bench.gpu; sys.exit('cupy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here: the benchmark would run, not explain")
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--no-save"], cwd=root, capture_output=True, text=True)
    assert done.returncode != 0
    assert "needs a CUDA GPU with CuPy" in done.stderr


@pytest.mark.gpu
def test_kernel_running_update_is_bitwise_the_generic_formula(cp, rng):
    """The finalize kernel updates float32 buffers in place; it must round as `update_running_stats` does."""
    from normlab.running_stats import unbiased_var, update_running_stats

    x = cp.asarray(rng.standard_normal((6, 4, 5, 7)) * 3 + 1, dtype=cp.float32)
    _, _, (mean, var) = cupy_batch_norm.forward(x, eps=1e-5)
    rm0 = cp.asarray(rng.standard_normal(4), dtype=cp.float32)
    rv0 = cp.asarray(rng.random(4) + 0.5, dtype=cp.float32)
    rm, rv = rm0.copy(), rv0.copy()
    _, _, batch = cupy_batch_norm.forward(x, eps=1e-5, running=(rm, rv, 0.3))
    assert batch is None, "float32 buffers must be updated by the kernel"
    expected_m, expected_v = rm0.copy(), rv0.copy()
    update_running_stats(expected_m, expected_v, mean, unbiased_var(var, 6 * 5 * 7), 0.3)
    assert bool(cp.array_equal(rm, expected_m)) and bool(cp.array_equal(rv, expected_v))


@pytest.mark.gpu
def test_float64_running_buffers_with_the_fused_path(cp, rng, monkeypatch):
    a = _inputs(cp, rng, (4, 3, 6, 5))
    a["rm"], a["rv"] = a["rm"].astype(cp.float64), a["rv"].astype(cp.float64)
    fused, _ = _run(a, True, True, monkeypatch)
    generic, _ = _run(a, True, False, monkeypatch)
    assert fused["rm"].dtype == cp.float64
    for key in ("y", "rm", "rv", "dx"):
        assert_close(fused[key], generic[key], what=key)
