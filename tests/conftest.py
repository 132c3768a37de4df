"""Shared test fixtures: the array backends every op is tested on, and the GPU skip rule.

The ``backend`` fixture runs a test once per array library: NumPy, array-api-strict
(which rejects any NumPy-only call that would break on CuPy), torch on the CPU,
and CuPy. CuPy cases carry the ``gpu`` marker; they, and every other test marked
``gpu``, are skipped with a clear reason on a machine without CuPy and a CUDA device.
"""
import functools

import numpy as np
import pytest

from normlab._backend import device, namespace, to_host

GPU_SKIP_REASON = "needs a CUDA GPU with CuPy (run `pytest -m gpu` on a GPU machine)"


@functools.cache
def cuda_gpu_available():
    """True when CuPy imports and sees at least one CUDA device. CuPy is imported only here, lazily."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or CUDARuntimeError when there is no driver or device
        return False


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not cuda_gpu_available():
        skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
        for item in gpu_items:
            item.add_marker(skip)


class Backend:
    """One array library, with the two conversions tests need: from NumPy, and back to NumPy."""

    def __init__(self, name):
        self.name = name
        if name == "numpy":
            self.xp = np
        elif name == "array_api_strict":
            import array_api_strict

            self.xp = array_api_strict
        elif name == "torch":
            import torch

            self.xp = torch
        elif name == "cupy":
            import cupy

            self.xp = cupy
        else:
            raise ValueError(f"unknown backend {name!r}")

    def __repr__(self):
        return f"Backend({self.name!r})"

    def dtype(self, name):
        """The backend's dtype object called ``name`` ('float32', 'float16', 'bfloat16', ...)."""
        return getattr(self.xp, name)

    def asarray(self, a, dtype=None):
        """A fresh array of this backend holding ``a`` (a NumPy array or nested list); never a view of ``a``."""
        host = np.array(a, copy=True)
        out = self.xp.from_numpy(host) if self.name == "torch" else self.xp.asarray(host)
        return out if dtype is None else self.astype(out, dtype)

    def astype(self, a, dtype):
        if isinstance(dtype, str):
            dtype = self.dtype(dtype)
        return namespace(a).astype(a, dtype)

    @staticmethod
    def to_numpy(a):
        """A NumPy copy of any backend's array (torch bfloat16 goes through float32, which NumPy lacks)."""
        if a is None:
            return None
        if type(a).__module__.startswith("torch") and str(a.dtype) == "torch.bfloat16":
            a = a.float()
        return np.array(to_host(a), copy=True)

    def is_native(self, a):
        """Whether ``a`` belongs to this backend's array library (its array type, not a NumPy fallback)."""
        return namespace(a) is namespace(self.asarray(np.zeros(1)))

    def same_device(self, a, b):
        return device(a) == device(b)


BACKEND_NAMES = ["numpy", "array_api_strict", "torch", pytest.param("cupy", marks=pytest.mark.gpu)]


@pytest.fixture(params=BACKEND_NAMES)
def backend(request):
    """Each test using this runs once per array library (CuPy only on a GPU machine)."""
    return Backend(request.param)


@pytest.fixture
def rng():
    """A seeded NumPy generator, fresh for every test so each test is reproducible on its own."""
    return np.random.default_rng(12345)


def to_numpy(a):
    """Module-level alias of `Backend.to_numpy`, for tests that have no backend at hand."""
    return Backend.to_numpy(a)


@pytest.fixture
def any_size_compiled(monkeypatch):
    """The compiled CPU path takes inputs of every size (it normally starts at `numba_cpu.MIN_ELEMENTS`)."""
    from dataclasses import replace

    from normlab.paths import numba_cpu

    monkeypatch.setattr(numba_cpu.NumbaPath, "coverage", replace(numba_cpu.NumbaPath.coverage, min_elements=1))
