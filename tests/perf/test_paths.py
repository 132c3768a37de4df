"""The one dispatch point: which path each call takes, and the one switch that turns them all off."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import normlab as nl
from normlab import axes, paths
from normlab.core import NormCache
from normlab.paths import cupy_fused, numba_cpu

HAS_NUMBA = importlib.util.find_spec("numba") is not None
LARGE = (8, 16, 512)  # above numba_cpu.MIN_ELEMENTS

LAYOUTS = {  # every norm's layout, and whether its statistics come from the input
    "batch_norm-train": (axes.batch_layout(LARGE), True),
    "batch_norm-eval": (axes.batch_layout(LARGE), False),
    "instance_norm": (axes.instance_layout(LARGE), True),
    "group_norm": (axes.group_layout(LARGE, 4), True),
    "layer_norm": (axes.layer_layout(LARGE, (512,)), True),
    "rms_norm": (axes.rms_layout(LARGE, (512,)), True),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_the_compiled_path_declares_every_layout_and_the_gpu_path_only_batch_norm(name):
    layout, input_stats = LAYOUTS[name]
    x = np.zeros(LARGE, np.float32)
    assert numba_cpu.PATH.coverage.covers(x, layout, input_stats)
    assert not numba_cpu.PATH.coverage.covers(x.astype(np.int32), layout, input_stats)
    assert not numba_cpu.PATH.coverage.covers(x[:1, :1], layout, input_stats)  # below MIN_ELEMENTS
    case = paths.case_of(layout, input_stats)
    assert (case in cupy_fused.PATH.coverage.cases) == name.startswith("batch_norm")
    assert not cupy_fused.PATH.coverage.covers(x, layout, input_stats)  # NumPy is not CuPy


def test_rms_norm_is_a_layout_property_not_a_branch():
    """RMSNorm differs from LayerNorm by the layout's centre flag alone."""
    ln, rms = axes.layer_layout((4, 6), (6,)), axes.rms_layout((4, 6), (6,))
    assert (ln.view_shape, ln.reduce, ln.param_shape, ln.plan) == (rms.view_shape, rms.reduce, rms.param_shape,
                                                                    rms.plan)
    assert ln.centre and not rms.centre


@pytest.mark.skipif(not HAS_NUMBA, reason="Numba is not installed")
def test_one_switch_sends_every_call_to_the_generic_core(rng):
    x = rng.standard_normal(LARGE).astype(np.float32)
    dy = rng.standard_normal(LARGE).astype(np.float32)
    fast_y, fast_cache = nl.rms_norm_forward(x, 512)
    assert isinstance(fast_cache, numba_cpu.CompiledCache)
    with paths.reference_only():
        assert paths.select(x, axes.rms_layout(LARGE, (512,)), None, None, None) is None
        y, cache = nl.rms_norm_forward(x, 512)
        assert isinstance(cache, NormCache)
        dx_generic_from_fast_cache = nl.rms_norm_backward(dy, fast_cache)[0]  # the generic backward reads it too
    assert paths.enabled
    np.testing.assert_allclose(fast_y, y, atol=1e-5)
    np.testing.assert_allclose(dx_generic_from_fast_cache, nl.rms_norm_backward(dy, cache)[0], atol=1e-5)


def test_reference_only_restores_the_switch_after_an_error():
    with pytest.raises(RuntimeError):
        with paths.reference_only():
            raise RuntimeError("inside")
    assert paths.enabled


@pytest.mark.skipif(not HAS_NUMBA, reason="Numba is not installed")
def test_the_environment_variable_turns_the_fast_paths_off():
    script = ("import numpy as np, normlab as nl; x = np.ones((8, 16, 512), np.float32); x[0] = 0\n"
              "print(type(nl.batch_norm_forward(x)[1]).__name__)")
    names = []
    for value in ("0", "1"):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "NORMLAB_FAST_PATHS": value})
        assert done.returncode == 0, done.stderr[-2000:]
        names.append(done.stdout.strip())
    assert names == ["NormCache", "CompiledCache"]


def test_arrays_of_another_library_keep_the_generic_core(rng):
    import torch

    x = rng.standard_normal(LARGE).astype(np.float32)
    assert paths.select(x, axes.batch_layout(LARGE), torch.ones(16), None, None) is None
