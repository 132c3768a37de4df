"""How the compiled kernels decide how many cores another process holds (`threads_now`).

A core counts as taken only when another thread is runnable now and other work has kept
that many cores busy over the last window: a moment's kernel thread must not halve a launch.
"""
import os

import pytest

pytest.importorskip("numba")
from normlab.kernels import numba_norms  # noqa: E402

needs_two_tasks = pytest.mark.skipif(numba_norms.TASKS < 2, reason="needs Numba's pool of at least 2 threads")


@needs_two_tasks
@pytest.mark.parametrize(
    "others_running, busy_others, expected",
    [
        (1, 0.05, 2),  # runnable for a moment, idle on average: keep both cores
        (1, 0.97, 1),  # a busy process beside us
        (1, None, 1),  # no window measured yet: the runnable count decides
        (0, 1.0, 2),  # busy lately, but nothing else runnable now
        (3, 2.6, 1),  # never fewer than one thread
    ],
)
def test_threads_for_two_cores(others_running, busy_others, expected):
    assert numba_norms._threads_for(2, others_running, busy_others) == expected


@pytest.fixture
def fresh_window(monkeypatch):
    monkeypatch.setattr(numba_norms, "_busy", {"at": None, "cpu_s": 0.0, "own_s": 0.0, "others": None})
    own = {"s": 10.0}
    monkeypatch.setattr(os, "times", lambda: os.times_result((own["s"], 0.0, 0.0, 0.0, 0.0)))
    return own


def test_busy_other_cores_averages_over_a_window(fresh_window):
    own = fresh_window
    assert numba_norms._busy_other_cores(100.0, 500.0) is None  # the window starts
    assert numba_norms._busy_other_cores(100.05, 500.1) is None  # too short to say
    own["s"] += 0.2  # this process used 0.2 s of the 0.2 s + 0.2 s of busy time in 0.2 s
    assert numba_norms._busy_other_cores(100.2, 500.4) == pytest.approx(1.0)
    own["s"] += 0.1  # the next window: only this process was busy
    assert numba_norms._busy_other_cores(100.4, 500.5) == pytest.approx(0.0)


def test_a_stale_window_is_discarded(fresh_window):
    numba_norms._busy_other_cores(100.0, 500.0)
    numba_norms._busy_other_cores(100.2, 500.4)
    assert numba_norms._busy_other_cores(105.0, 510.0) is None  # 4.8 s since: says little about now
    assert numba_norms._busy_other_cores(105.2, 510.2) == pytest.approx(1.0)


def test_threads_now_on_this_machine_is_a_valid_count(monkeypatch):
    monkeypatch.setitem(numba_norms._probe, "at", -1.0)  # probe now, not from the cache
    n = numba_norms.threads_now()
    assert 1 <= n <= numba_norms.TASKS
