"""`normlab.set_num_threads` / ``NORMLAB_NUM_THREADS``: the cap on the compiled kernels' threads.

Every kernel launch sets Numba's thread count itself (one thread per free core),
so ``numba.set_num_threads`` alone does not pin normlab; a benchmark that pins
every library to one thread relies on this cap. The tests read the threads the
launcher really used (`numba_norms.last_launch_threads` and Numba's own count),
and make the uncapped count known by fixing `threads_now`, so that a busy
machine (one free core) cannot make "capped" and "uncapped" look alike.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import normlab as nl
from normlab.kernels import threads
from normlab.paths import numba_cpu

HAS_NUMBA = importlib.util.find_spec("numba") is not None
pytestmark = pytest.mark.skipif(not HAS_NUMBA, reason="Numba is not installed")


@pytest.fixture
def kernels(monkeypatch):
    """The kernel module, with an uncapped launch known to use 2 threads; the cap is restored after."""
    from normlab.kernels import numba_norms

    if numba_norms.TASKS < 2:
        pytest.skip("Numba's pool has a single thread here: a cap of 1 changes nothing")
    monkeypatch.setattr(numba_norms, "threads_now", lambda: 2)
    saved = nl.get_num_threads()
    yield numba_norms
    nl.set_num_threads(saved)


def _round_trip(rng):
    """A BatchNorm forward and backward large enough for the compiled path; returns (y, dx, cache)."""
    x = rng.standard_normal((64, 8, numba_cpu.MIN_ELEMENTS // 256)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, cache = nl.batch_norm_forward(x)
    return y, nl.batch_norm_backward(dy, cache)[0], cache


def test_a_cap_of_one_runs_the_kernels_on_one_thread_and_clearing_it_restores_two(kernels):
    import numba

    nl.set_num_threads(1)
    assert nl.get_num_threads() == 1
    *_, cache = _round_trip(np.random.default_rng(0))
    assert isinstance(cache, numba_cpu.CompiledCache)  # the kernels really ran
    assert kernels.last_launch_threads() == 1 and numba.get_num_threads() == 1

    nl.set_num_threads(None)
    assert nl.get_num_threads() is None
    _round_trip(np.random.default_rng(0))
    assert kernels.last_launch_threads() == 2 and numba.get_num_threads() == 2


def test_the_launcher_overrides_numba_set_num_threads_unless_normlab_is_capped(kernels):
    """The trap the cap exists for: numba.set_num_threads(1) before a call is not kept."""
    import numba

    nl.set_num_threads(None)
    numba.set_num_threads(1)
    _round_trip(np.random.default_rng(0))
    assert kernels.last_launch_threads() == 2


def test_a_cap_above_the_free_cores_changes_nothing(kernels):
    nl.set_num_threads(64)
    _round_trip(np.random.default_rng(0))
    assert kernels.last_launch_threads() == 2


def test_results_do_not_depend_on_the_cap(kernels):
    """The work is split into the same tasks whatever the thread count, so every sum is summed alike."""
    nl.set_num_threads(1)
    y1, dx1, _ = _round_trip(np.random.default_rng(1))
    nl.set_num_threads(None)
    y2, dx2, _ = _round_trip(np.random.default_rng(1))
    assert np.array_equal(y1, y2) and np.array_equal(dx1, dx2)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True, [1]])
def test_a_bad_cap_is_a_value_error_and_keeps_the_old_cap(bad):
    saved = nl.get_num_threads()
    try:
        nl.set_num_threads(3)
        with pytest.raises(ValueError, match="set_num_threads"):
            nl.set_num_threads(bad)
        assert nl.get_num_threads() == 3
    finally:
        nl.set_num_threads(saved)


def test_numpy_integers_are_accepted():
    saved = nl.get_num_threads()
    try:
        nl.set_num_threads(np.int64(2))
        assert nl.get_num_threads() == 2 and type(nl.get_num_threads()) is int
    finally:
        nl.set_num_threads(saved)


@pytest.mark.parametrize("text, cap", [("", None), (" 3 ", 3), ("1", 1)])
def test_the_environment_variable_sets_the_cap(text, cap):
    assert threads.cap_from_env({threads.ENV_VAR: text}) == cap
    assert threads.cap_from_env({}) is None


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_a_bad_environment_variable_is_a_value_error_naming_it(text):
    with pytest.raises(ValueError, match="NORMLAB_NUM_THREADS"):
        threads.cap_from_env({threads.ENV_VAR: text})


def test_a_fresh_process_reads_the_environment_variable_at_import():
    env = {**os.environ, threads.ENV_VAR: "1"}
    code = "import normlab; print(normlab.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    assert out.stdout.strip() == "1"


def test_the_first_kernel_keeps_torchs_thread_count():
    """Starting Numba's OpenMP pool resets the OpenMP thread count torch reads; the first launch puts it back.

    In a fresh process, since the pool starts once per process.
    """
    pytest.importorskip("torch")
    code = """if True:
        import numpy as np, torch, normlab as nl
        torch.set_num_threads(1)
        x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
        nl.layer_norm_forward(x, (1024,))
        from normlab.kernels import numba_norms
        import numba
        print(numba_norms.last_launch_threads() is not None, torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NORMLAB_NUM_THREADS": ""})
    assert out.returncode == 0, out.stderr
    launched, torch_threads, pool = out.stdout.split()
    if int(pool) < 2:
        pytest.skip("one core: the pool cannot change torch's count")
    assert launched == "True" and torch_threads == "1"
