"""Every op on every backend: the output follows the input's library, device and dtype, and
matches the NumPy float64 result. array-api-strict fails on any NumPy-only call in the library.
"""
import numpy as np
import pytest
import torch

import normlab as nl
from normlab._backend import compute_dtype, namespace

from .helpers import random_input


def _bn(training):
    def forward(x, w, b, rm, rv):
        return nl.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, training=training, momentum=0.3)
    return forward


def _in(use_input_stats):
    def forward(x, w, b, rm, rv):
        return nl.instance_norm_forward(x, w, b, running_mean=rm, running_var=rv,
                                        use_input_stats=use_input_stats, momentum=0.3)
    return forward


# name: (input shape, parameter shape, whether it takes running buffers, forward(x, w, b, rm, rv), backward)
OPS = {
    "batch_norm-train": ((5, 3, 4), (3,), True, _bn(True), nl.batch_norm_backward),
    "batch_norm-eval": ((5, 3, 4), (3,), True, _bn(False), nl.batch_norm_backward),
    "instance_norm-train": ((5, 3, 4), (3,), True, _in(True), nl.instance_norm_backward),
    "instance_norm-eval": ((5, 3, 4), (3,), True, _in(False), nl.instance_norm_backward),
    "layer_norm": ((5, 3, 4), (3, 4), False,
                   lambda x, w, b, rm, rv: nl.layer_norm_forward(x, (3, 4), w, b), nl.layer_norm_backward),
    "group_norm": ((5, 6, 4), (6,), False,
                   lambda x, w, b, rm, rv: nl.group_norm_forward(x, 3, w, b), nl.group_norm_backward),
    "rms_norm": ((5, 3, 4), (3, 4), False,
                 lambda x, w, b, rm, rv: nl.rms_norm_forward(x, (3, 4), w), nl.rms_norm_backward),
    "local_response_norm": ((5, 6, 4), (6,), False,
                            lambda x, w, b, rm, rv: nl.local_response_norm_forward(x, 3, 0.5, 0.75, 1.0),
                            nl.local_response_norm_backward),
}


def make_inputs(rng, op):
    shape, param_shape, buffered, _, _ = OPS[op]
    channels = param_shape[0]
    return {
        "x": random_input(rng, shape),
        "w": rng.uniform(-1.5, 1.5, param_shape),
        "b": rng.uniform(-1.5, 1.5, param_shape),
        "rm": rng.standard_normal(channels) if buffered else None,
        "rv": rng.uniform(0.5, 2.0, channels) if buffered else None,
        "dy": rng.standard_normal(shape),
    }


def run_op(op, arrays):
    """Forward and backward; returns y, dx, dweight, dbias, running_mean, running_var (buffers after the call)."""
    _, _, _, forward, backward = OPS[op]
    y, cache = forward(arrays["x"], arrays["w"], arrays["b"], arrays["rm"], arrays["rv"])
    dx, dw, db = backward(arrays["dy"], cache)
    return {"y": y, "dx": dx, "dweight": dw, "dbias": db, "running_mean": arrays["rm"], "running_var": arrays["rv"]}


def convert_all(backend, host, dtype):
    return {k: None if v is None else backend.asarray(v, dtype=dtype) for k, v in host.items()}


@pytest.mark.parametrize("op", OPS)
def test_output_follows_input_and_matches_numpy_float64(backend, op, rng):
    host = make_inputs(rng, op)
    reference = run_op(op, {k: None if v is None else v.copy() for k, v in host.items()})
    arrays = convert_all(backend, host, "float64")
    results = run_op(op, arrays)
    for key, value in results.items():
        if value is None:
            assert reference[key] is None
            continue
        assert backend.is_native(value), f"{key} came back as {type(value)}"
        assert backend.same_device(value, arrays["x"]), key
        assert value.dtype == backend.dtype("float64"), key
        np.testing.assert_allclose(backend.to_numpy(value), reference[key], rtol=1e-12, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("op", OPS)
def test_float32_stays_float32_and_agrees(backend, op, rng):
    host = make_inputs(rng, op)
    reference = run_op(op, {k: None if v is None else v.copy() for k, v in host.items()})
    results = run_op(op, convert_all(backend, host, "float32"))
    for key, value in results.items():
        if value is not None:
            assert value.dtype == backend.dtype("float32"), key
            np.testing.assert_allclose(backend.to_numpy(value), reference[key], rtol=1e-4, atol=1e-4, err_msg=key)


HALF_CASES = [
    ("numpy", "float16"), ("torch", "float16"), ("torch", "bfloat16"),
    pytest.param("cupy", "float16", marks=pytest.mark.gpu),
]
HALF_TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2}  # a few units in the last place at |y| ~ 2


@pytest.mark.parametrize("backend, dtype", HALF_CASES, indirect=["backend"])
@pytest.mark.parametrize("op", OPS)
def test_half_precision_comes_back_in_its_own_dtype_computed_in_float32(backend, dtype, op, rng):
    host = make_inputs(rng, op)
    host["x"] = host["x"] + 100.0  # in half precision, a channel sum of these overflows or loses most digits
    low = convert_all(backend, host, dtype)
    results = run_op(op, low)
    # The float64 reference is computed from exactly the values the half-precision input holds.
    as_stored = {k: None if v is None else backend.to_numpy(v).astype(np.float64) for k, v in low.items()}
    as_stored.update(rm=host["rm"], rv=host["rv"])
    reference = run_op(op, as_stored)
    for key in ("y", "dx", "dweight", "dbias"):
        value = results[key]
        if reference[key] is None:  # no parameter of that kind (RMSNorm has no bias, LRN neither)
            assert value is None, key
            continue
        assert value.dtype == backend.dtype(dtype), f"{key} came back as {value.dtype}"
        tol = HALF_TOLERANCE[dtype] * max(1.0, float(np.max(np.abs(reference[key]))))
        np.testing.assert_allclose(backend.to_numpy(value).astype(np.float64), reference[key],
                                   rtol=0, atol=tol, err_msg=key)


def test_mixing_array_libraries_is_a_value_error():
    x = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="one array library"):
        nl.batch_norm_forward(x, np.ones(3))


@pytest.mark.parametrize("name, expected", [("float64", "float64"), ("float32", "float32")])
def test_compute_dtype_keeps_full_precision(backend, name, expected):
    xp = namespace(backend.asarray(np.zeros(1)))
    assert compute_dtype(xp, backend.dtype(name)) == backend.dtype(expected)


def assert_float64_computed_in_float64(backend, rng):
    host = 1e4 + rng.standard_normal((8, 3, 5))
    expected = torch.nn.functional.batch_norm(torch.tensor(host), None, None, training=True).numpy()
    for op_result in (
        nl.batch_norm_forward(backend.asarray(host))[0],
        nl.instance_norm_forward(backend.asarray(host))[0],
        nl.group_norm_forward(backend.asarray(host), 3)[0],
    ):
        assert op_result.dtype == backend.dtype("float64")
    y = nl.batch_norm_forward(backend.asarray(host))[0]
    np.testing.assert_allclose(backend.to_numpy(y), expected, rtol=0, atol=1e-9)
    expected_ln = torch.nn.functional.layer_norm(torch.tensor(host), (5,)).numpy()
    y_ln = nl.layer_norm_forward(backend.asarray(host), 5)[0]
    np.testing.assert_allclose(backend.to_numpy(y_ln), expected_ln, rtol=0, atol=1e-9)


def test_float64_is_not_mistaken_for_a_half_dtype(backend, rng):
    """``np.dtype('float64') == None`` is True: a check like ``dtype in (xp.float16, None)`` would compute
    float64 in float32. With a mean of 1e4 and unit spread, float32 would be off by ~1e-4; float64 by ~1e-12.
    The reference is torch (an independent implementation), not normlab itself."""
    assert_float64_computed_in_float64(backend, rng)


@pytest.fixture
def generic_path_only(monkeypatch):
    """Turn off the fast paths, so that NumPy arrays take the generic Array API core."""
    from normlab import paths

    monkeypatch.setattr(paths, "enabled", False)


@pytest.mark.parametrize("backend", ["numpy"], indirect=True)
def test_float64_is_not_mistaken_for_a_half_dtype_on_the_generic_path(backend, generic_path_only, rng):
    assert_float64_computed_in_float64(backend, rng)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("op", OPS)
def test_compiled_path_agrees_with_the_generic_path(op, dtype, rng, monkeypatch, any_size_compiled):
    host = make_inputs(rng, op)
    fast = run_op(op, {k: None if v is None else v.astype(dtype) for k, v in host.items()})
    from normlab import paths

    monkeypatch.setattr(paths, "enabled", False)
    generic = run_op(op, {k: None if v is None else v.astype(dtype) for k, v in host.items()})
    tolerance = {"float16": 2e-3, "float32": 2e-5, "float64": 1e-12}[dtype]
    for key, value in generic.items():
        if value is not None:
            assert fast[key].dtype == value.dtype, key
            np.testing.assert_allclose(fast[key].astype(np.float64), value.astype(np.float64), rtol=tolerance,
                                       atol=tolerance * 10, err_msg=key)
