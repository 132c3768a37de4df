"""Large kernel outputs are handed out again (`normlab.kernels.outputs`), but never while anything refers to one.

`recycling` lowers the size threshold so that small arrays stand in for the
hundreds of MiB it is meant for; each output is stamped with values that would
show if another call wrote into its memory.
"""
import threading
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normlab as nl
from normlab.kernels import outputs

pytest.importorskip("numba")


@pytest.fixture
def recycling(monkeypatch, any_size_compiled):
    monkeypatch.setattr(outputs, "MIN_BYTES", 0)
    monkeypatch.setattr(outputs, "enabled", True)
    outputs.release()
    yield
    outputs.release()


def _address(a):
    return a.__array_interface__["data"][0]


def _layer_norm(x):
    return nl.layer_norm_forward(x, x.shape[-1:])


def test_an_output_nobody_holds_is_handed_out_again(recycling, rng):
    x = rng.standard_normal((64, 32))
    expected = _layer_norm(2 * x)[0].copy()
    outputs.release()
    y, cache = _layer_norm(x)
    first = _address(y)
    del y, cache
    y, _ = _layer_norm(2 * x)
    assert _address(y) == first
    np.testing.assert_array_equal(y, expected)


def _holders():
    """name: (make a holder of y, read the holder's values as an array)."""
    torch = pytest.importorskip("torch")
    same = np.asarray
    return {
        "the array": (lambda y: y, same),
        "a slice": (lambda y: y[1:], same),
        "a reshape": (lambda y: y.reshape(-1), same),
        "a transpose": (lambda y: y.T, same),
        "a memoryview": (memoryview, same),
        "a list": (lambda y: [y], lambda held: held[0]),
        "a torch tensor": (torch.from_numpy, lambda t: t.numpy()),
        "a DLPack tensor": (torch.from_dlpack, lambda t: t.numpy()),
    }


@pytest.mark.parametrize("holder", list(_holders()))
def test_an_output_still_referenced_keeps_its_values(holder, recycling, rng):
    make, read = _holders()[holder]
    x, dy = rng.standard_normal((2, 64, 32))
    y, cache = _layer_norm(x)
    expected = read(make(y.copy()))
    held = make(y)
    del y, cache
    for scale in (3.0, -1.0, 0.5):  # more outputs than are kept, from forwards and backwards
        _, later = _layer_norm(scale * x + rng.standard_normal(x.shape))
        nl.layer_norm_backward(dy, later)
    np.testing.assert_array_equal(read(held), expected)


def test_an_output_held_only_weakly_keeps_its_values_or_dies(recycling):
    y = outputs.empty_like(np.empty((64, 32)))
    y[...] = 1.0
    held = weakref.ref(y)
    del y
    outputs.empty_like(np.empty((64, 32)))[...] = 2.0  # the same shape: must not be the weakly held one
    assert np.all(held() == 1.0)
    for shape in range(outputs.KEEP + 1):  # other shapes push it out of the kept outputs
        outputs.empty_like(np.empty((shape + 1, 32)))[...] = 3.0
    assert held() is None


def test_a_backward_cache_keeps_its_input_from_reuse(recycling, rng):
    """A layer's output is the next layer's input, which the next layer's cache keeps for its backward."""
    x, dy = rng.standard_normal((2, 64, 32))
    h, _ = _layer_norm(x)
    _, second = _layer_norm(h)
    expected_dx, _, _ = nl.layer_norm_backward(dy, second)
    del h
    for _ in range(outputs.KEEP + 1):
        _layer_norm(rng.standard_normal(x.shape))
    dx, _, _ = nl.layer_norm_backward(dy, second)
    np.testing.assert_array_equal(dx, expected_dx)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["new", "drop", "view"]), st.integers(0, 7), st.sampled_from([8, 12])),
                max_size=40))
def test_no_two_live_outputs_share_memory(program):
    """Any sequence of new outputs, dropped outputs and views: every live array keeps its stamp."""
    saved = outputs.MIN_BYTES, outputs.enabled
    outputs.MIN_BYTES, outputs.enabled = 0, True
    outputs.release()
    try:
        live = []  # (array or view, stamp)
        for step, (action, index, n) in enumerate(program):
            if action == "new":
                a = outputs.empty_like(np.empty((n, 4)))
                a[...] = step
                live.append((a, step))
            elif live and action == "drop":
                del live[index % len(live)]
            elif live:
                a, stamp = live.pop(index % len(live))
                live.append((a[::2], stamp))
            for a, stamp in live:
                assert np.all(a == stamp)
        assert len(outputs._kept) <= outputs.KEEP
    finally:
        outputs.MIN_BYTES, outputs.enabled = saved
        outputs.release()


def test_small_outputs_and_a_disabled_switch_keep_nothing(monkeypatch, rng):
    outputs.release()
    outputs.empty_like(np.empty((64, 32)))  # 16 KiB, under the real threshold
    assert outputs.kept_bytes() == 0
    monkeypatch.setattr(outputs, "MIN_BYTES", 0)
    monkeypatch.setattr(outputs, "enabled", False)
    outputs.empty_like(np.empty((64, 32)))
    assert outputs.kept_bytes() == 0
    monkeypatch.setattr(outputs, "enabled", True)
    outputs.empty_like(np.empty((64, 32)))
    assert outputs.kept_bytes() == 64 * 32 * 8
    outputs.release()
    assert outputs.kept_bytes() == 0


def test_threads_asking_at_once_never_get_the_same_array(recycling):
    errors = []

    def work(stamp):
        for _ in range(300):
            a = outputs.empty_like(np.empty((16, 16)))
            a[...] = stamp
            if not np.all(a == stamp):
                errors.append(stamp)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
