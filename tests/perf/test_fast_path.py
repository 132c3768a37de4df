"""The compiled CPU path for NumPy arrays against the generic Array-API core it stands behind.

The ``fast_path`` fixture lets the compiled kernels (`normlab.paths.numba_cpu`)
take inputs of every size, so that small shapes cover the edge cases. The
reference is the generic path run on the same arrays, with the one switch
(``normlab.paths.enabled``) off. Every comparison first checks that the
compiled path really ran (by its cache's type), so no test can pass by
comparing the generic path with itself. No timings here: those live in bench/.
"""
import importlib.util
import os
import threading
import zlib

import numpy as np
import pytest

import normlab as nl
from normlab import paths
from normlab.core import NormCache, normalize_backward
from normlab.paths import numba_cpu

HAS_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="Numba is not installed")


@pytest.fixture
def fast_path(any_size_compiled):
    """The compiled path, for inputs of every size; `_expected_cache` is the cache type that proves it ran."""
    if not HAS_NUMBA:
        pytest.skip("Numba is not installed")
    return "compiled"


def _expected_cache(fast_path, training=True):
    return numba_cpu.CompiledCache

# Largest error allowed, relative to the largest magnitude of the reference (sums like dβ grow with the input).
TOL = {np.float32: 1e-6, np.float64: 1e-12}


def _norm_cases():
    """(name, shape, forward(x, w, b, buffers, training), backward, parameter shape, has running buffers)."""
    def bn(x, w, b, buffers, training):
        rm, rv = buffers
        return nl.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, training=training)

    def inorm(x, w, b, buffers, training):
        rm, rv = buffers
        return nl.instance_norm_forward(x, w, b, running_mean=rm, running_var=rv, use_input_stats=training)

    def gn(groups):
        return lambda x, w, b, buffers, training: nl.group_norm_forward(x, groups, w, b)

    def ln(k):
        return lambda x, w, b, buffers, training: nl.layer_norm_forward(x, x.shape[x.ndim - k:], w, b)

    def rms(k):
        return lambda x, w, b, buffers, training: nl.rms_norm_forward(x, x.shape[x.ndim - k:], w)

    cases = []
    # The last shape of BatchNorm (4-D), InstanceNorm, GroupNorm and LayerNorm is big enough for the fast
    # path to work in several blocks of samples, the last one shorter than the others.
    for shape in [(7, 3), (5, 3, 7), (4, 3, 5, 6), (2, 3, 2, 3, 4), (700, 3), (5, 3, 100, 100)]:
        cases.append(("batch_norm", shape, bn, nl.batch_norm_backward, (3,), True))
    for shape in [(4, 3, 7), (2, 3, 5, 6), (2, 3, 2, 3, 4), (3, 3, 150, 160)]:
        cases.append(("instance_norm", shape, inorm, nl.instance_norm_backward, (3,), True))
    for shape, groups in [((4, 6), 3), ((3, 6, 7), 2), ((2, 6, 4, 5), 3), ((2, 6, 4, 5), 1), ((2, 6, 4, 5), 6),
                          ((5, 6, 100, 100), 3)]:
        cases.append((f"group_norm({groups})", shape, gn(groups), nl.group_norm_backward, (6,), False))
    for shape, k in [((4, 7), 1), ((2, 3, 5, 6), 2), ((2, 3, 5, 6), 3), ((3, 5), 2), ((300, 1000), 1)]:
        cases.append((f"layer_norm(last {k})", shape, ln(k), nl.layer_norm_backward, shape[len(shape) - k:], False))
    for shape, k in [((4, 7), 1), ((2, 3, 5, 6), 2), ((300, 1000), 1)]:
        cases.append((f"rms_norm(last {k})", shape, rms(k), nl.rms_norm_backward, shape[len(shape) - k:], False))
    return cases


CASES = _norm_cases()


def _close(actual, expected, dtype, scale=1.0):
    expected = np.asarray(expected)
    scale = max(scale, float(np.abs(expected).max())) if expected.size else scale
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL[dtype] * scale)


def _sum_scale(dy, cache, n_params):
    """The size of the rounding error of dγ or dβ, sums of m terms dy·x̂ or dy: about ε·√m·|term|.

    Two correct implementations that add in a different order differ by that much, which for the
    sums over 50 000 values of the larger shapes is more than 1e-6 of the result.
    """
    m = dy.size // max(n_params, 1)
    return float(np.sqrt(m) * np.abs(dy).max() * max(1.0, np.abs(cache.xhat).max()))


def _dx_scale(dy, cache):
    """The size of the terms whose sum is dx = rstd·(γ·dy - mean(γ·dy) - x̂·mean(γ·dy·x̂)): rstd·|γ·dy|.

    When a statistic covers few values those terms nearly cancel (with two values per group, dx is
    close to 0), and every float32 implementation, the generic one included, is then off by a few
    units in the last place of the terms, not of their small sum.
    """
    weight = 1.0 if cache.weight is None else float(np.abs(cache.weight).max())
    return float(np.abs(dy).max() * weight * np.abs(cache.rstd).max())


def _run(case, x, w, b, buffers, training, dy):
    _, _, forward, backward, _, _ = case
    y, cache = forward(x, w, b, buffers, training)
    return y, cache, backward(dy, cache)


def _generic(monkeypatch):
    monkeypatch.setattr(paths, "enabled", False)


# Eval (constant running statistics) exists only for the norms with running buffers.
MODES = [(case, training) for case in CASES for training in ((True, False) if case[5] else (True,))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("case,training", MODES,
                         ids=[f"{c[0]}-{c[1]}-{'train' if t else 'eval'}" for c, t in MODES])
def test_fast_path_matches_generic_path(case, training, affine, dtype, fast_path, monkeypatch):
    name, shape, _, _, pshape, has_buffers = case
    rng = np.random.default_rng(zlib.crc32(repr((name, shape, training, affine)).encode()))
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3.0) + rng.uniform(-2, 2)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)  # random, never all-ones: that makes BatchNorm's dx zero
    w = rng.uniform(0.5, 1.5, pshape).astype(dtype) if affine else None
    b = rng.uniform(-1, 1, pshape).astype(dtype) if affine and not name.startswith("rms") else None
    buffers = (rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)) if has_buffers else (None, None)
    fast_buffers = tuple(None if a is None else a.copy() for a in buffers)

    y, cache, grads = _run(case, x, w, b, fast_buffers, training, dy)
    assert isinstance(cache, _expected_cache(fast_path, training)), f"the {fast_path} path did not run"

    _generic(monkeypatch)
    y_ref, cache_ref, grads_ref = _run(case, x, w, b, buffers, training, dy)
    assert isinstance(cache_ref, NormCache)

    assert y.dtype == y_ref.dtype == dtype and y.shape == y_ref.shape
    _close(y, y_ref, dtype)
    sum_scale = _sum_scale(dy, cache_ref, int(np.prod(pshape)))
    dx_scale = _dx_scale(dy, cache_ref)
    for i, (got, ref) in enumerate(zip(grads, grads_ref)):
        assert (got is None) == (ref is None)
        if ref is not None:
            assert got.shape == ref.shape and got.dtype == ref.dtype
            _close(got, ref, dtype, scale=dx_scale if i == 0 else sum_scale)  # dx, then the sums dγ and dβ
    for got, ref in zip(fast_buffers, buffers):  # running buffers updated in place alike (or left alike in eval)
        if ref is not None:
            _close(got, ref, dtype)

    # The fast cache also offers the generic cache's attributes: the generic backward reads it the same way.
    for i, (got, ref) in enumerate(zip(normalize_backward(dy, cache), grads_ref)):
        if ref is not None:
            _close(got, ref, dtype, scale=dx_scale if i == 0 else sum_scale)


LARGE = [c for c in CASES if np.prod(c[1]) > 1 << 16]  # many values per statistic, several threads' work


@pytest.mark.parametrize("case", CASES[:1] + LARGE, ids=lambda c: f"{c[0]}-{c[1]}")
def test_backward_leaves_the_cache_unchanged(case, rng, fast_path):
    """Calling backward twice (e.g. torch's retain_graph) gives the same gradients both times.

    The cache holds the input itself, as torch does; neither pass may write into it, nor into dy.
    """
    name, shape, _, _, pshape, has_buffers = case
    x = rng.standard_normal(shape).astype(np.float32)
    x_before = x.copy()
    w, b = rng.uniform(0.5, 1.5, pshape).astype(np.float32), rng.standard_normal(pshape).astype(np.float32)
    b = None if name.startswith("rms") else b
    buffers = (np.zeros(3, np.float32), np.ones(3, np.float32)) if has_buffers else (None, None)
    y, cache, first = _run(case, x, w, b, buffers, True, rng.standard_normal(shape).astype(np.float32))
    assert isinstance(cache, _expected_cache(fast_path))
    dy = rng.standard_normal(shape).astype(np.float32)
    dy_before = dy.copy()
    once, twice = case[3](dy, cache), case[3](dy, cache)
    for a, c in zip(once, twice):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(dy, dy_before)
    assert not np.shares_memory(y, x) and not np.shares_memory(once[0], dy)


@pytest.mark.parametrize("case", [c for c in CASES if len(c[1]) >= 3][::2], ids=lambda c: f"{c[0]}-{c[1]}")
def test_float32_with_mean_1e4_stays_within_2e_3_of_float64(case, rng, fast_path):
    """The fast paths keep the corrected two-pass variance: large-mean float32 data loses no digits."""
    name, shape, _, _, pshape, has_buffers = case
    if np.prod(shape) < 65536:  # more values per statistic, so that the mean's rounding error matters
        shape = (shape[0] * 4,) + shape[1:]
    x64 = 1e4 + rng.standard_normal(shape)
    dy64 = rng.standard_normal(shape)
    w64, b64 = rng.uniform(0.5, 1.5, pshape), rng.uniform(-1, 1, pshape)
    buffers = (None, None)
    y32, cache, g32 = _run(case, x64.astype(np.float32), w64.astype(np.float32), b64.astype(np.float32), buffers,
                           True, dy64.astype(np.float32))
    assert isinstance(cache, _expected_cache(fast_path))
    y64, _, g64 = _run(case, x64, w64, b64, buffers, True, dy64)
    np.testing.assert_allclose(y32, y64, rtol=0, atol=2e-3)
    np.testing.assert_allclose(g32[0], g64[0], rtol=0, atol=2e-3)


@pytest.mark.parametrize("norm", ["layer_norm", "batch_norm"])
def test_a_shift_far_from_the_mean_is_replaced_by_the_mean(norm, rng, fast_path):
    """The kernels centre on the first values of each statistic (see `numba_norms`). Here those values
    sit 300 away from the rest, about 180 standard deviations: without the second pass centred on
    the mean itself, float32 loses 1e-4 of the variance."""
    if norm == "layer_norm":
        x64 = rng.standard_normal((4, 1 << 20))
        x64[:, :32] += 300
        forward = lambda x: nl.layer_norm_forward(x, x.shape[-1:])  # noqa: E731
    else:
        x64 = rng.standard_normal((64, 2, 16384))
        x64[:32, :, 0] += 300
        forward = lambda x: nl.batch_norm_forward(x, training=True)  # noqa: E731
    y32, cache = forward(x64.astype(np.float32))[:2]
    assert isinstance(cache, _expected_cache(fast_path))
    with paths.reference_only():
        y64 = forward(x64.astype(np.float32).astype(np.float64))[0]
    np.testing.assert_allclose(y32, y64, rtol=0, atol=1e-6 * np.abs(y64).max())


def test_float16_is_computed_in_float32_and_returned_in_float16(rng, fast_path, monkeypatch):
    x = rng.standard_normal((6, 4, 5)).astype(np.float16)
    dy = rng.standard_normal(x.shape).astype(np.float16)
    w = rng.uniform(0.5, 1.5, 4).astype(np.float16)
    y, cache = nl.batch_norm_forward(x, w, None)
    dx, dw, _ = nl.batch_norm_backward(dy, cache)
    assert isinstance(cache, _expected_cache(fast_path))
    assert y.dtype == dx.dtype == dw.dtype == np.float16
    _generic(monkeypatch)
    y_ref, cache_ref = nl.batch_norm_forward(x, w, None)
    dx_ref, dw_ref, _ = nl.batch_norm_backward(dy, cache_ref)
    for got, ref in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=2e-3, atol=2e-3)


class _Subclass(np.ndarray):
    pass


def _other_inputs():
    import array_api_strict
    import torch

    yield "array_api_strict", lambda a: array_api_strict.asarray(a)
    yield "torch", lambda a: torch.from_numpy(a)
    yield "ndarray subclass", lambda a: a.view(_Subclass)


@pytest.mark.parametrize("kind,convert", list(_other_inputs()), ids=[k for k, _ in _other_inputs()])
def test_non_numpy_inputs_never_take_the_fast_path(kind, convert, rng, any_size_compiled):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    for forward in (lambda a: nl.batch_norm_forward(a), lambda a: nl.group_norm_forward(a, 3),
                    lambda a: nl.instance_norm_forward(a), lambda a: nl.layer_norm_forward(a, 5),
                    lambda a: nl.rms_norm_forward(a, 5)):
        _, cache = forward(convert(x))
        assert isinstance(cache, NormCache), f"{kind} input reached a fast path"


@pytest.mark.parametrize("layout", ["fortran", "strided", "float64 weights"])
def test_unusual_memory_layouts_match_the_generic_path(layout, rng, fast_path, monkeypatch):
    """Fortran-ordered or strided inputs, and parameters of another dtype, give the generic path's answer."""
    x = rng.standard_normal((40, 6, 5, 7)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    if layout == "fortran":
        x, dy = np.asfortranarray(x), np.asfortranarray(dy)
    elif layout == "strided":
        x, dy = x[:, :, ::2, :], dy[:, :, ::2, :]
    else:
        w, b = w.astype(np.float64), b.astype(np.float64)
    for forward, backward in ((lambda a: nl.batch_norm_forward(a, w, b), nl.batch_norm_backward),
                              (lambda a: nl.group_norm_forward(a, 3, w, b), nl.group_norm_backward),
                              (lambda a: nl.layer_norm_forward(a, a.shape[-1]), nl.layer_norm_backward),
                              (lambda a: nl.rms_norm_forward(a, a.shape[-1]), nl.rms_norm_backward)):
        y, cache = forward(x)
        grads = backward(dy, cache)
        assert isinstance(cache, _expected_cache(fast_path))
        with monkeypatch.context() as patch:
            _generic(patch)
            y_ref, cache_ref = forward(x)
            grads_ref = backward(dy, cache_ref)
        _close(y, y_ref, np.float32)
        _close(grads[0], grads_ref[0], np.float32, scale=_dx_scale(dy, cache_ref))
        for got, ref in zip(grads[1:], grads_ref[1:]):
            if ref is not None:
                _close(got, ref, np.float32, scale=_sum_scale(dy, cache_ref, ref.size))


# ---- the compiled kernels' thread pool ------------------------------------------------------------------


def _layer_norm_round_trip(x, dy):
    y, cache = nl.layer_norm_forward(x, x.shape[-1])
    return (y, *nl.layer_norm_backward(dy, cache)[:1]), cache


def test_small_inputs_take_the_generic_core_and_large_ones_the_compiled_path(rng):
    small = rng.standard_normal((4, 3, 5)).astype(np.float32)
    assert isinstance(nl.batch_norm_forward(small)[1], NormCache)
    large = rng.standard_normal((8, 8, numba_cpu.MIN_ELEMENTS // 64)).astype(np.float32)
    expected = numba_cpu.CompiledCache if HAS_NUMBA else NormCache
    assert isinstance(nl.batch_norm_forward(large)[1], expected)


def test_where_the_kernels_cannot_load_the_generic_core_serves(rng, monkeypatch):
    """E.g. a read-only install with no writable cache for Numba: normlab still works, on the generic core."""
    import sys

    numba_cpu._kernels.cache_clear()
    import normlab.kernels

    monkeypatch.setitem(sys.modules, "normlab.kernels.numba_norms", None)  # importing it now raises ImportError
    monkeypatch.delattr(normlab.kernels, "numba_norms", raising=False)
    monkeypatch.setattr(numba_cpu, "UNAVAILABLE", None)
    try:
        x = rng.standard_normal((8, 8, numba_cpu.MIN_ELEMENTS // 64)).astype(np.float32)
        y, cache = nl.batch_norm_forward(x)
        assert isinstance(cache, NormCache)
        assert not numba_cpu.PATH.usable() and "numba_norms" in numba_cpu.UNAVAILABLE
        assert np.allclose(y.mean(axis=(0, 2)), 0, atol=1e-5)
    finally:
        numba_cpu._kernels.cache_clear()  # the next test imports the real kernels again


@needs_numba
@pytest.mark.usefixtures("any_size_compiled")
def test_concurrent_calls_from_python_threads_agree_with_one_call(rng):
    """Numba's default thread pool must not be entered twice at once; the kernels serialize their launches."""
    x, dy = rng.standard_normal((2, 64, 300)).astype(np.float32)
    expected, cache = _layer_norm_round_trip(x, dy)
    assert isinstance(cache, numba_cpu.CompiledCache)
    mismatches, errors = [], []

    def work():
        try:
            for _ in range(50):
                got, _ = _layer_norm_round_trip(x, dy)
                mismatches.extend(i for i, (a, b) in enumerate(zip(got, expected)) if not np.array_equal(a, b))
        except Exception as exc:  # noqa: BLE001 - reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not mismatches


@needs_numba
@pytest.mark.usefixtures("any_size_compiled")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_process_forked_after_the_kernels_ran_still_computes_correctly(rng):
    """GNU OpenMP cannot run in a forked child; such a child falls back to the generic core instead of dying."""
    x, dy = rng.standard_normal((2, 64, 300)).astype(np.float32)
    expected, cache = _layer_norm_round_trip(x, dy)  # the parent has launched the kernels
    assert isinstance(cache, numba_cpu.CompiledCache)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 1
        try:
            got, child_cache = _layer_norm_round_trip(x, dy)
            parent_dx = nl.layer_norm_backward(dy, cache)[0]  # a cache from before the fork
            fine = all(np.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip((*got, parent_dx), (*expected, expected[1])))
            os.write(write_end, type(child_cache).__name__.encode())
            code = 0 if fine else 2
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    child_cache_type = os.read(read_end, 100).decode()
    os.close(read_end)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child ended with status {status}"
    safe = numba_cpu._kernels().fork_safe()
    assert child_cache_type == ("CompiledCache" if safe else "NormCache")


@needs_numba
@pytest.mark.usefixtures("any_size_compiled")
def test_nan_in_the_input_shows_in_the_output(rng):
    """The kernels allow reassociation but keep IEEE NaN semantics: bad data is never silently normalized."""
    x = rng.standard_normal((4, 3, 10)).astype(np.float32)
    x[1, 2, 3] = np.nan
    y, cache = nl.group_norm_forward(x, 3)
    assert isinstance(cache, numba_cpu.CompiledCache)
    assert np.isnan(y[1, 2]).all() and not np.isnan(y[0]).any()
    y, cache = nl.batch_norm_forward(x)
    assert np.isnan(y[:, 2]).all() and not np.isnan(y[:, :2]).any()


@needs_numba
@pytest.mark.slow
def test_the_kernels_compile_without_a_warning(tmp_path):
    """A compiler warning would reach the user's stderr (and fail the book's build): compile every kernel afresh."""
    import subprocess
    import sys

    script = """
import warnings
import numpy as np
import normlab as nl
from dataclasses import replace
from normlab.paths import numba_cpu
numba_cpu.NumbaPath.coverage = replace(numba_cpu.NumbaPath.coverage, min_elements=1)
warnings.simplefilter("error")
x = np.random.default_rng(0).standard_normal((6, 4, 5)).astype(np.float32)
for forward, backward, a in [
    (lambda a: nl.batch_norm_forward(a), nl.batch_norm_backward, x),
    (lambda a: nl.batch_norm_forward(a), nl.batch_norm_backward, x[:, :, 0].copy()),
    (lambda a: nl.group_norm_forward(a, 2), nl.group_norm_backward, x),
    (lambda a: nl.layer_norm_forward(a, 5), nl.layer_norm_backward, x),
    (lambda a: nl.rms_norm_forward(a, 5), nl.rms_norm_backward, x),
    (lambda a: nl.batch_norm_forward(a, running_mean=np.zeros(4, np.float32), running_var=np.ones(4, np.float32),
                                     training=False), nl.batch_norm_backward, x),
    (lambda a: nl.batch_norm_forward(a, running_mean=np.zeros(4, np.float32), running_var=np.ones(4, np.float32),
                                     training=False), nl.batch_norm_backward, x[:, :, 0].copy()),
]:
    y, cache = forward(a)
    assert isinstance(cache, numba_cpu.CompiledCache)
    backward(y, cache)
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
