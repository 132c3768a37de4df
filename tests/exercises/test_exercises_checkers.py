"""Each checker: the reference solution passes, each classic mistake is caught and named, nothing leaks.

The reference functions are the solutions' own code (exec'd from solutions/NN.md),
so these tests also check that the single source is right. Each mutant below
makes one classic mistake, written independently of the checker's wrong variants.
"""
import re

import jupytext
import numpy as np
import pytest
from exercise_helpers import ROOT

import normlab.check as check
from normlab import exercises
from normlab.check import TASKS, Check, run, to_plain


def _load_solutions():
    """{function name: function} from the code cells of every solution notebook (check cells skipped)."""
    functions = {}
    for path in exercises.solution_files(ROOT):
        namespace = {}
        for cell in jupytext.read(path).cells:
            if cell.cell_type == "code" and not exercises.is_check_cell(cell):
                exec(compile(cell.source, f"{path.name}", "exec"), namespace)  # noqa: S102 - our own solutions
        functions.update({k: v for k, v in namespace.items() if callable(v) and not k.startswith("_")})
    return functions


SOLUTIONS = _load_solutions()


def sol(name):
    return SOLUTIONS[TASKS[name].function]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reference_solution_passes_every_check(name):
    checks = run(TASKS[name], sol(name))
    assert len(checks) >= 2
    assert [c for c in checks if not c.passed] == []
    assert all(c.message == "" for c in checks)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_blank_function_fails_every_check(name):
    def blank(*args, **kwargs):
        raise NotImplementedError()

    checks = run(TASKS[name], blank)
    assert checks and not any(c.passed for c in checks)
    assert "raised NotImplementedError" in checks[0].message


@pytest.mark.parametrize("name", sorted(TASKS))
def test_cases_are_deterministic_and_plain(name):
    import pickle

    a, b = TASKS[name].cases(), TASKS[name].cases()
    assert pickle.dumps(a) == pickle.dumps(b)
    assert all(set(case) == {"args", "kwargs"} for case in a)


# --- mutants: one classic mistake each ------------------------------------------------------------------------

def _norm(x, axes, eps, ddof=0, eps_outside=False):
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True, ddof=ddof)
    return (x - mean) / (np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps))


def _channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _layer_stats_pre(x, weights, biases, activation="tanh"):
    act = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "linear": lambda z: z}[activation]
    means, stds, h = [], [], x
    for w, b in zip(weights, biases):
        z = h @ w + b
        means.append(z.mean())
        stds.append(z.std())
        h = act(z)
    return np.array(means), np.array(stds)


def _layer_stats_unit_std(x, weights, biases, activation="tanh"):
    means, _ = sol("layer_stats")(x, weights, biases, activation)
    act = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "linear": lambda z: z}[activation]
    stds, h = [], x
    for w, b in zip(weights, biases):
        h = act(h @ w + b)
        stds.append(h.std(axis=0).mean())
    return means, np.array(stds)


def _swap_last_two(fn):
    def mutant(*args, **kwargs):
        dx, dgamma, dbeta = fn(*args, **kwargs)
        return dx, dbeta, dgamma
    return mutant


def _bn_backward_constant_stats(dy, x, gamma, eps=1e-5):
    _, dgamma, dbeta = sol("batch_norm_backward_compact")(dy, x, gamma, eps)
    return dy * gamma / np.sqrt(x.var(axis=0) + eps), dgamma, dbeta


def _bn_backward_no_var(dy, x, gamma, eps=1e-5):
    _, dgamma, dbeta = sol("batch_norm_backward_compact")(dy, x, gamma, eps)
    g = dy * gamma
    return (g - g.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps), dgamma, dbeta


def _grad_check_all_ones(name, x, seed, h=1e-5):
    target = check.gradcheck_target(name)
    dy = np.ones_like(x)
    numeric = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        numeric[i] = (np.sum(target.forward(xp) * dy) - np.sum(target.forward(xm) * dy)) / (2 * h)
    backward = target.backward(x, dy)
    return float(np.max(np.abs(backward - numeric))), dy  # abs error: tiny for the buggy target with ones


def _running_update(biased=False, old_side=False, rebind=False):
    def mutant(running_mean, running_var, x, momentum=0.1):
        axes = (0,) + tuple(range(2, x.ndim))
        mean, var = x.mean(axis=axes), x.var(axis=axes, ddof=0 if biased else 1)
        m = 1 - momentum if old_side else momentum
        new_mean, new_var = (1 - m) * running_mean + m * mean, (1 - m) * running_var + m * var
        if rebind:
            return new_mean, new_var
        running_mean[...], running_var[...] = new_mean, new_var
    return mutant


def _eval_batch_stats(x, running_mean, running_var, gamma, beta, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    return _channel(gamma, x.ndim) * _norm(x, axes, eps) + _channel(beta, x.ndim)


def _eval_eps_outside(x, running_mean, running_var, gamma, beta, eps=1e-5):
    x_hat = (x - _channel(running_mean, x.ndim)) / (np.sqrt(_channel(running_var, x.ndim)) + eps)
    return _channel(gamma, x.ndim) * x_hat + _channel(beta, x.ndim)


def _fold_keep_mean(weight, bias, running_mean, running_var, gamma, beta, eps=1e-5):
    scale = gamma / np.sqrt(running_var + eps)
    return weight * scale[:, None], bias * scale + beta


def _fold_columns(weight, bias, running_mean, running_var, gamma, beta, eps=1e-5):
    scale = gamma / np.sqrt(running_var + eps)
    return weight * scale[None, :], (bias - running_mean) * scale + beta


def _stream(step):
    def mutant(values, *args, **kwargs):
        running, out = np.zeros(values.shape[1:]), []
        for t, x in enumerate(values, start=1):
            running = step(running, x, t, *args, **kwargs)
            out.append(running)
        return np.array(out)
    return mutant


def _ema_mutant(correct=True, new_side=False, offset=0):
    def mutant(values, decay=0.9):
        v, out = np.zeros(values.shape[1:]), []
        for t, x in enumerate(values, start=1):
            v = (1 - decay) * v + decay * x if new_side else decay * v + (1 - decay) * x
            out.append(v / (1 - decay ** (t + offset)) if correct else v)
        return np.array(out)
    return mutant


def _kalman_no_predict(z, meas_var, process_var, x0, p0):
    return sol("kalman_scalar")(z, meas_var, 0.0, x0, p0)


def _group_norm_with(groups_of):
    def mutant(x, num_groups, gamma, beta, eps=1e-5):
        return sol("group_norm_forward")(x, groups_of(x, num_groups), gamma, beta, eps)
    return mutant


def _group_norm_interleaved(x, num_groups, gamma, beta, eps=1e-5):
    n, c = x.shape[:2]
    g = x.reshape(n, c // num_groups, num_groups, -1).transpose(0, 2, 1, 3).reshape(n, num_groups, -1)
    y = _norm(g, 2, eps).reshape(n, num_groups, c // num_groups, -1).transpose(0, 2, 1, 3).reshape(x.shape)
    return _channel(gamma, x.ndim) * y + _channel(beta, x.ndim)


def _group_norm_backward_constant(dy, x, num_groups, gamma, eps=1e-5):
    _, dgamma, dbeta = sol("group_norm_backward")(dy, x, num_groups, gamma, eps)
    n, c = x.shape[:2]
    g = x.reshape(n, num_groups, -1)
    inv_std = np.broadcast_to(1 / np.sqrt(g.var(axis=2, keepdims=True) + eps), g.shape).reshape(x.shape)
    return dy * _channel(gamma, x.ndim) * inv_std, dgamma, dbeta


MUTANTS = [
    ("layer_stats", _layer_stats_pre, "pre-activations"),
    ("layer_stats", _layer_stats_unit_std, "per-unit std"),
    ("shift_metric", lambda b, a: float(np.mean((a.mean(0) - b.mean(0)) / (b.std(0) + 1e-8))), "signed shifts"),
    ("shift_metric", lambda b, a: float(np.mean(np.abs(a.mean(1) - b.mean(1)) / (b.std(1) + 1e-8))), "wrong axis"),
    ("shift_metric", lambda b, a: float(np.mean(np.abs(a.mean(0) - b.mean(0)))), "not scaled"),
    ("batch_norm_forward", lambda x, g, b, eps=1e-5: g * _norm(x, 0, eps, eps_outside=True) + b, "eps outside the sqrt"),
    ("batch_norm_forward", lambda x, g, b, eps=1e-5: g * _norm(x, 0, eps, ddof=1) + b, "biased variance"),
    ("batch_norm_forward", lambda x, g, b, eps=1e-5: g * _norm(x, 1, eps) + b, "wrong axes"),
    ("batch_norm_forward", lambda x, g, b, eps=1e-5: b * _norm(x, 0, eps) + g, "gamma and beta swapped"),
    ("batch_norm_conv", lambda x, g, b, eps=1e-5: _channel(g, 4) * _norm(x, (1, 2, 3), eps) + _channel(b, 4),
     "as LayerNorm does"),
    ("batch_norm_conv", lambda x, g, b, eps=1e-5: _channel(g, 4) * _norm(x, (2, 3), eps) + _channel(b, 4),
     "as InstanceNorm does"),
    ("batch_norm_conv", lambda x, g, b, eps=1e-5: _channel(g, 4) * _norm(x, 0, eps) + _channel(b, 4),
     "batch axis only"),
    ("batch_norm_conv",
     lambda x, g, b, eps=1e-5: _channel(g, 4) * _norm(x, (0, 2, 3), eps, eps_outside=True) + _channel(b, 4),
     "eps outside the sqrt"),
    ("batch_norm_backward_staged", _swap_last_two(lambda *a, **k: sol("batch_norm_backward_staged")(*a, **k)),
     "dgamma and dbeta swapped"),
    ("batch_norm_backward_staged", _bn_backward_constant_stats, "as constants"),
    ("batch_norm_backward_compact", _bn_backward_no_var, "path through the variance"),
    ("batch_norm_backward_compact", _swap_last_two(lambda *a, **k: sol("batch_norm_backward_compact")(*a, **k)),
     "dgamma and dbeta swapped"),
    ("grad_check", _grad_check_all_ones, "all-ones"),
    ("update_running_stats", _running_update(biased=True), "biased running variance"),
    ("update_running_stats", _running_update(old_side=True), "momentum applied to the old value"),
    ("update_running_stats", _running_update(rebind=True), "in place"),
    ("batch_norm_eval", _eval_batch_stats, "batch statistics used in eval"),
    ("batch_norm_eval", _eval_eps_outside, "eps outside the sqrt"),
    ("fold_linear", _fold_keep_mean, "subtract running_mean"),
    ("fold_linear", _fold_columns, "scaled the columns"),
    ("cumulative_mean", _stream(lambda r, x, t: r + (x - r) / (t + 1)), "off by one"),
    ("cumulative_mean", _stream(lambda r, x, t: 0.9 * r + 0.1 * x), "fixed momentum 0.1"),
    ("ema_bias_corrected", _ema_mutant(correct=False), "no bias correction"),
    ("ema_bias_corrected", _ema_mutant(new_side=True), "decay applied to the new value"),
    ("ema_bias_corrected", _ema_mutant(offset=1), "off by one"),
    ("kalman_scalar", _kalman_no_predict, "no predict step"),
    ("group_norm_forward", _group_norm_with(lambda x, g: x.shape[1]), "InstanceNorm"),
    ("group_norm_forward", _group_norm_with(lambda x, g: 1), "LayerNorm"),
    ("group_norm_forward", _group_norm_interleaved, "interleaved groups"),
    ("group_norm_backward", _swap_last_two(lambda *a, **k: sol("group_norm_backward")(*a, **k)),
     "dgamma and dbeta swapped"),
    ("group_norm_backward", _group_norm_backward_constant, "as constants"),
    ("layer_norm_via_group_norm", lambda x, g, b, eps=1e-5: g * _norm(x, (2, 3), eps) + b, "G = C"),
]


def _lrn_window(before, after, alpha_over_size=True):
    """LRN over channels [c - before(size), c + after(size)], written here with a loop over channels."""
    def mutant(x, size, alpha=1e-4, beta=0.75, k=1.0):
        lo, hi = before(size), after(size)
        energy = np.stack([(x[:, max(c - lo, 0):c + hi + 1] ** 2).sum(axis=1) for c in range(x.shape[1])], axis=1)
        return x / (k + (alpha / size if alpha_over_size else alpha) * energy) ** beta
    return mutant


def _sgd_decay_everything(params, grads, velocity, lr, momentum, weight_decay, decoupled):
    new_v = {n: momentum * velocity[n] + grads[n] + (0 if decoupled else weight_decay * w) for n, w in params.items()}
    return {n: w - lr * new_v[n] - (lr * weight_decay * w if decoupled else 0) for n, w in params.items()}, new_v


def _sgd_always_l2(params, grads, velocity, lr, momentum, weight_decay, decoupled):
    return sol("sgd_step")(params, grads, velocity, lr, momentum, weight_decay, False)


MUTANTS += [
    ("dropout_forward", lambda x, p, u, training=True: x * (u >= p) if training else x * (1 - p), "scaling at eval"),
    ("dropout_forward", lambda x, p, u, training=True: x * (u < p) / p if training else x, "keep versus drop"),
    ("dropout_backward", lambda dy, p, u: dy * (u >= p), "training-time scaling"),
    ("dropout_backward", lambda dy, p, u: dy * (u < p) / p, "keep versus drop"),
    ("local_response_norm_forward", _lrn_window(lambda s: s // 2, lambda s: s // 2), "off by one"),
    ("local_response_norm_forward", _lrn_window(lambda s: (s - 1) // 2, lambda s: s // 2), "off by one"),
    ("local_response_norm_forward", _lrn_window(lambda s: s, lambda s: s), "radius"),
    ("local_response_norm_forward", _lrn_window(lambda s: s // 2, lambda s: (s - 1) // 2, False), "divided by size"),
    ("sgd_step", _sgd_decay_everything, "decaying the bias and BatchNorm parameters"),
    ("sgd_step", _sgd_always_l2, "decoupled and L2 swapped"),
]


def _rms_forward(axis=-1, centre=False, eps_outside=False):
    def mutant(x, gamma, eps=1e-6):
        h = x - x.mean(axis=axis, keepdims=True) if centre else x
        ms = (h ** 2).mean(axis=axis, keepdims=True)
        return gamma * h / (np.sqrt(ms) + eps if eps_outside else np.sqrt(ms + eps))
    return mutant


def _rms_backward(extra_mean=False, constant=False, axis=-1):
    """The RMSNorm gradient written out, with one mistake."""
    def mutant(dy, x, gamma, eps=1e-6):
        rms = np.sqrt((x ** 2).mean(axis=axis, keepdims=True) + eps)
        x_hat = x / rms
        g = dy * gamma
        dgamma = (dy * x_hat).reshape(-1, x.shape[-1]).sum(axis=0)
        if constant:
            return g / rms, dgamma
        dx = g - x_hat * (g * x_hat).mean(axis=axis, keepdims=True)
        if extra_mean:
            dx = dx - g.mean(axis=axis, keepdims=True)
        return dx / rms, dgamma
    return mutant


def _block_mutant(wiring):
    def ln(h, gamma, beta, eps):
        return gamma * (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + eps) + beta

    def mix(h, w):
        return (np.cumsum(h, axis=1) / np.arange(1, h.shape[1] + 1)[:, None]) @ w

    def mutant(x, p, eps=1e-5):
        n1 = lambda h: ln(h, p["gamma1"], p["beta1"], eps)  # noqa: E731
        n2 = lambda h: ln(h, p["gamma2"], p["beta2"], eps)  # noqa: E731
        f1 = lambda h: mix(h, p["w_mix"])  # noqa: E731
        f2 = lambda h: np.maximum(h @ p["w1"], 0) @ p["w2"]  # noqa: E731
        if wiring == "post":
            h = n1(x + f1(x))
            return n2(h + f2(h))
        if wiring == "normalized skip":
            h = n1(x)
            h = h + f1(h)
            h = n2(h)
            return h + f2(h)
        if wiring == "pre and post":  # pre-norms kept, and a norm after each residual add
            h = n1(x + f1(n1(x)))
            return n2(h + f2(n2(h)))
        h = x + f1(n1(x))  # wiring == "second reads x"
        return h + f2(n2(x))
    return mutant


def _rms_divides_by_std(x, gamma, eps=1e-6):
    return gamma * x / np.sqrt(x.var(axis=-1, keepdims=True) + eps)


def _rms_centred_numerator(x, gamma, eps=1e-6):
    return gamma * (x - x.mean(axis=-1, keepdims=True)) / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + eps)


def _rms_adds_sqrt_eps(x, gamma, eps=1e-6):
    return gamma * x / (np.sqrt((x ** 2).mean(axis=-1, keepdims=True)) + np.sqrt(eps))


MUTANTS += [
    ("rms_norm_forward", _rms_forward(centre=True), "centring"),
    ("rms_norm_forward", _rms_forward(eps_outside=True), "eps outside the sqrt"),
    ("rms_norm_forward", _rms_forward(axis=-2), "over the tokens (axis T)"),
    ("rms_norm_backward", _rms_backward(extra_mean=True), "centring"),
    ("rms_norm_backward", _rms_backward(constant=True), "as a constant"),
    ("rms_norm_backward", _rms_backward(axis=-2), "over the tokens (axis T)"),
    ("pre_ln_block", _block_mutant("post"), "normalizes after the residual add"),
    ("pre_ln_block", _block_mutant("normalized skip"), "skip connection carries the normalized x"),
    ("pre_ln_block", _block_mutant("second reads x"), "second sublayer reads the block's input"),
    ("pre_ln_block", _block_mutant("pre and post"), "normalizes after the residual add"),
    ("rms_norm_forward", _rms_divides_by_std, "centring"),
    ("rms_norm_forward", _rms_centred_numerator, "centring"),
    ("rms_norm_forward", _rms_adds_sqrt_eps, "eps outside the sqrt"),
]


def _expected_values(task):
    """Every value the reference produces for ``task``, to make sure no hint prints one."""
    values = []
    if not hasattr(task, "reference"):
        return values
    for case in task.cases():
        import copy

        for out in task.reference(*copy.deepcopy(case["args"]), **case["kwargs"]):
            values += [float(v) for v in np.ravel(np.asarray(out, np.float64))]
    return values


def _leaks(message, values):
    return [v for v in values if abs(v) > 1e-3 and any(s in message for s in (f"{v:.4f}", f"{v:.6g}", repr(v)))]


def test_leak_detector_detects_a_leak():
    assert _leaks("expected 0.123457 here", [0.12345678]) and not _leaks("max abs error 1.2e-01", [0.12345678])


@pytest.mark.parametrize("name, mutant, phrase", MUTANTS, ids=[f"{m[0]}:{m[2]}" for m in MUTANTS])
def test_classic_mistake_is_caught_and_named(name, mutant, phrase):
    checks = run(TASKS[name], mutant)
    failed = [c for c in checks if not c.passed]
    assert failed, f"{name} did not catch: {phrase}"
    assert any(phrase in c.message for c in failed), [c.message for c in failed]
    values = _expected_values(TASKS[name])
    for c in failed:
        assert c.message and not _leaks(c.message, values), c.message


def test_hints_give_size_and_location_of_an_unnamed_error():
    def off_by_a_bit(x, g, b, eps=1e-5):
        y = sol("batch_norm_forward")(x, g, b, eps)
        y[1, 2] += 0.25
        return y

    checks = run(TASKS["batch_norm_forward"], off_by_a_bit)
    assert not any(c.passed for c in checks)
    assert checks[0].message == "max abs error 2.5e-01 at index (1, 2)"


def test_wrong_shape_and_wrong_type_are_reported():
    checks = run(TASKS["batch_norm_forward"], lambda x, g, b, eps=1e-5: x.T)
    assert "wrong shape" in checks[0].message
    checks = run(TASKS["batch_norm_backward_staged"], lambda dy, x, g, eps=1e-5: dy)
    assert "expected a tuple of 3 values" in checks[0].message
    checks = run(TASKS["batch_norm_forward"], lambda x, g, b, eps=1e-5: "y")
    assert "expected a numeric array, got str" in checks[0].message
    checks = run(TASKS["batch_norm_forward"], lambda x, g, b, eps=1e-5: x * np.nan)
    assert "NaN" in checks[0].message


def test_tolerance_depends_on_dtype():
    """An error of 1e-5 (relative) passes the float32 case and fails the float64 ones."""
    def slightly_off(x, g, b, eps=1e-5):
        return sol("batch_norm_forward")(x, g, b, eps) * (1 + 1e-5)

    checks = run(TASKS["batch_norm_forward"], slightly_off)
    by_dtype = {("float32" in c.name): c.passed for c in checks}
    assert by_dtype == {True: True, False: False}


def test_float32_answers_computed_in_float32_pass():
    def in_float32(x, g, b, eps=1e-5):
        return sol("batch_norm_forward")(x.astype(np.float32), g.astype(np.float32), b.astype(np.float32), eps)

    checks = run(TASKS["batch_norm_forward"], in_float32)
    assert all(c.passed for c in checks if "float32" in c.name)


def test_checker_prints_one_summary_line_and_a_hint_per_failure(capsys):
    result = check.batch_norm_forward(sol("batch_norm_forward"))
    assert capsys.readouterr().out == "batch_norm_forward: 4/4 checks passed\n"
    assert all(isinstance(c, Check) for c in result) and result.passed == 4

    def bad(x, g, b, eps=1e-5):
        raise ValueError("boom")

    result = check.batch_norm_forward(bad)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "batch_norm_forward: 0/4 checks passed"
    assert len(lines) == 1 + 4 and all("raised ValueError: boom" in line for line in lines[1:])


def test_student_cannot_corrupt_the_cases():
    def vandal(x, g, b, eps=1e-5):
        x[...] = 0
        return x

    run(TASKS["batch_norm_forward"], vandal)
    assert [c for c in run(TASKS["batch_norm_forward"], sol("batch_norm_forward")) if not c.passed] == []


def test_to_plain_converts_torch_and_containers():
    import torch

    plain = to_plain((torch.ones(2, requires_grad=True), [np.float32(1.5), {"a": None}], object()))
    assert isinstance(plain[0], np.ndarray) and plain[0].tolist() == [1.0, 1.0]
    assert plain[1] == [1.5, {"a": None}] and plain[2] == "<object object>"


def test_task_interface_for_the_grader():
    """What `normlab grade` relies on: names, functions, points, and judging outputs made elsewhere."""
    assert set(TASKS) == {name for name in TASKS if callable(getattr(check, name))}
    assert {1, 2, 3, 4, 5, 6, 7, 8} <= {t.chapter for t in TASKS.values()}
    for name, task in TASKS.items():
        assert task.name == name and task.function and task.points > 0
    task = TASKS["update_running_stats"]
    outputs = [{"result": None, "args": None, "error": "RuntimeError: kernel died"} for _ in task.cases()]
    checks = task.judge(outputs)
    assert checks and not any(c.passed for c in checks)


def test_gradcheck_targets_are_named_and_unknown_names_rejected():
    assert check.gradcheck_target("batch_norm").correct
    assert not check.gradcheck_target("batch_norm_buggy").correct
    with pytest.raises(ValueError, match="unknown gradcheck target"):
        check.gradcheck_target("nope")


def test_messages_are_deterministic():
    first = [c.message for c in run(TASKS["group_norm_forward"], _group_norm_interleaved)]
    second = [c.message for c in run(TASKS["group_norm_forward"], _group_norm_interleaved)]
    assert first == second and all(re.search(r"at index \(", m) for m in first)


def test_sgd_step_reference_is_torchs_sgd_with_decay_on_weights_only():
    """The L2 cases' reference is torch.optim.SGD(weight_decay) with biases and BN parameters in a no-decay group."""
    import torch

    from normlab.check.ch8 import _sgd_step

    for case in TASKS["sgd_step"].cases():
        params, grads, velocity = case["args"]
        kw = case["kwargs"]
        expected, _ = _sgd_step(params, grads, velocity, kw["lr"], kw["momentum"], kw["weight_decay"], False)
        tensors = {n: torch.tensor(w, requires_grad=True) for n, w in params.items()}
        groups = [{"params": [t for n, t in tensors.items() if t.ndim >= 2], "weight_decay": kw["weight_decay"]},
                  {"params": [t for n, t in tensors.items() if t.ndim < 2], "weight_decay": 0.0}]
        opt = torch.optim.SGD(groups, lr=kw["lr"], momentum=kw["momentum"])
        for n, t in tensors.items():
            t.grad = torch.tensor(grads[n])
            opt.state[t]["momentum_buffer"] = torch.tensor(velocity[n])
        opt.step()
        for n, t in tensors.items():
            np.testing.assert_allclose(t.detach().numpy(), expected[n], rtol=1e-12, atol=1e-12)


# --- issue 15: hints that name the mistake and never print the fix ----------------------------------------------

def _staged(dmean=True, ddof=0, eps_outside=False, axis=0):
    """A student's staged BatchNorm backward, with one mistake."""
    def mutant(dy, x, gamma, eps=1e-5):
        n = x.shape[axis]
        xc = x - x.mean(axis=axis, keepdims=True)
        var = (xc ** 2).sum(axis=axis, keepdims=True) / (n - ddof)
        std = np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps)
        x_hat = xc / std
        dx_hat = dy * gamma
        dstd = -(dx_hat * xc).sum(axis=axis, keepdims=True) / std ** 2
        dvar = dstd * 0.5 / std
        dxc = dx_hat / std + 2.0 * xc / n * dvar
        dx = dxc - dxc.mean(axis=axis, keepdims=True) if dmean else dxc
        return dx, (dy * x_hat).sum(axis=0), dy.sum(axis=0)
    return mutant


def _running_n_is_batch(running_mean, running_var, x, momentum=0.1):
    axes = (0,) + tuple(range(2, x.ndim))
    n = x.shape[0]
    running_mean[...] = (1 - momentum) * running_mean + momentum * x.mean(axis=axes)
    running_var[...] = (1 - momentum) * running_var + momentum * x.var(axis=axes) * n / (n - 1)


def _running_wrong_axis(running_mean, running_var, x, momentum=0.1):
    running_mean[...] = (1 - momentum) * running_mean + momentum * x.mean(axis=1)
    running_var[...] = (1 - momentum) * running_var + momentum * x.var(axis=1, ddof=1)


def _conv_n_is_batch(x, g, b, eps=1e-5):
    n = x.shape[0]
    mean = x.sum(axis=(0, 2, 3), keepdims=True) / n
    var = ((x - mean) ** 2).sum(axis=(0, 2, 3), keepdims=True) / n
    return _channel(g, 4) * (x - mean) / np.sqrt(var + eps) + _channel(b, 4)


def _eval_no_affine(x, running_mean, running_var, gamma, beta, eps=1e-5):
    return (x - _channel(running_mean, x.ndim)) / np.sqrt(_channel(running_var, x.ndim) + eps)


def _eval_last_axis(x, running_mean, running_var, gamma, beta, eps=1e-5):
    return gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta  # broadcasts along the last axis


def _fold_no_beta(weight, bias, running_mean, running_var, gamma, beta, eps=1e-5):
    scale = gamma / np.sqrt(running_var + eps)
    return weight * scale[:, None], (bias - running_mean) * scale


def _eval_divides_by_var(x, running_mean, running_var, gamma, beta, eps=1e-5):
    x_hat = (x - _channel(running_mean, x.ndim)) / (_channel(running_var, x.ndim) + eps)
    return _channel(gamma, x.ndim) * x_hat + _channel(beta, x.ndim)


def _ema_new_side(values, decay=0.9):
    return _ema_mutant(new_side=True)(values, decay)


# fragments of the corrected formulas: a hint that names a mistake must not contain any of them
FIXES = ["sqrt(var + eps)", "sqrt(running_var + eps)", "sum(dy * x_hat)", "sum(dy)", "(1 - momentum)",
         "(1 - decay)", "1 - decay**t", "+ beta", "/ 2h", "f(x-h)", "p / (p + meas_var)", "(N, G, C/G",
         "running_mean[...]", "dmean / n", "/ n"]

NAMED = [
    ("batch_norm_backward_staged", _staged(dmean=False), "missing the dmean term"),
    ("batch_norm_backward_staged", _staged(ddof=1), "unbiased variance"),
    ("batch_norm_backward_compact", _staged(ddof=1), "unbiased variance"),
    ("batch_norm_backward_staged", _staged(eps_outside=True), "eps outside the sqrt"),
    ("batch_norm_backward_staged", _staged(axis=1), "wrong axis"),
    ("batch_norm_conv", _conv_n_is_batch, "n = N"),
    ("update_running_stats", _running_n_is_batch, "n = N"),
    ("update_running_stats", _running_wrong_axis, "wrong axis"),
    ("update_running_stats", _running_update(old_side=True), "momentum applied to the old value"),
    ("update_running_stats", _running_update(rebind=True), "in place"),
    ("batch_norm_eval", _eval_no_affine, "without the affine map"),
    ("batch_norm_eval", _eval_last_axis, "wrong axis"),
    ("batch_norm_eval", _eval_eps_outside, "eps outside the sqrt"),
    ("batch_norm_eval", _eval_divides_by_var, "divided by the variance"),
    ("fold_linear", _fold_no_beta, "without beta"),
    ("batch_norm_backward_staged", _swap_last_two(lambda *a, **k: sol("batch_norm_backward_staged")(*a, **k)),
     "dgamma and dbeta swapped"),
    ("group_norm_backward", _swap_last_two(lambda *a, **k: sol("group_norm_backward")(*a, **k)),
     "dgamma and dbeta swapped"),
    ("ema_bias_corrected", _ema_new_side, "decay applied to the new value"),
    ("ema_bias_corrected", _ema_mutant(correct=False), "no bias correction"),
    ("group_norm_forward", _group_norm_interleaved, "interleaved groups"),
]


@pytest.mark.parametrize("name, mutant, phrase", NAMED, ids=[f"{m[0]}:{m[2]}" for m in NAMED])
def test_mistake_is_named_without_printing_the_fix(name, mutant, phrase):
    checks = run(TASKS[name], mutant)
    failed = [c for c in checks if not c.passed]
    assert failed, f"{name} did not catch: {phrase}"
    assert any(phrase in c.message for c in failed), [c.message for c in failed]
    for c in failed:
        assert not [fix for fix in FIXES if fix in c.message], c.message


def test_eps_outside_the_sqrt_is_named_on_every_float64_case_of_the_backward():
    """Its error there is only ~1e-5 relative, yet each float64 dx is named, not a bare max abs error."""
    checks = run(TASKS["batch_norm_backward_staged"], _staged(eps_outside=True))
    dx64 = [c for c in checks if "float64" in c.name and c.name.endswith(": dx")]
    assert dx64 and all(not c.passed and c.message.startswith("eps outside the sqrt") for c in dx64)
    err = [float(re.search(r"max abs error (\S+) ", c.message).group(1)) for c in dx64]
    assert max(err) < 1e-3  # the small error the issue describes


def test_float32_level_error_in_a_float64_case_says_so():
    def in_float32(x, g, b, eps=1e-5):
        return sol("batch_norm_forward")(x.astype(np.float32), g.astype(np.float32), b.astype(np.float32), eps)

    def cast_back(x, g, b, eps=1e-5):
        return in_float32(x, g, b, eps).astype(x.dtype)

    checks = run(TASKS["batch_norm_forward"], cast_back)
    failed = [c for c in checks if not c.passed]
    assert failed and all("float64" in c.name and "float32-level error" in c.message for c in failed)

    def rms_in_float32(x, gamma, eps=1e-6):  # float32 round-off is within float64's tolerance here
        return sol("rms_norm_forward")(x.astype(np.float32), gamma.astype(np.float32), eps)

    for task, answer in (("batch_norm_forward", in_float32), ("rms_norm_forward", rms_in_float32)):
        failed = [c for c in run(TASKS[task], answer) if not c.passed]
        assert failed and all("float64" in c.name and "returned float32" in c.message for c in failed), task

    def far_off(x, g, b, eps=1e-5):
        return sol("batch_norm_forward")(x, g, b, eps) + 0.1

    assert not any("float32-level" in c.message for c in run(TASKS["batch_norm_forward"], far_off))


def _grad_check_with(difference, weighted=True):
    def mutant(name, x, seed, h=1e-5):
        target = check.gradcheck_target(name)
        dy = np.random.default_rng(seed).standard_normal(x.shape)
        w = dy if weighted else np.ones_like(dy)
        numeric = np.zeros_like(x)
        for i in np.ndindex(*x.shape):
            xp, xm = x.copy(), x.copy()
            xp[i] += h
            xm[i] -= h if difference == "central" else 0.0
            numeric[i] = (np.sum(target.forward(xp) * w) - np.sum(target.forward(xm) * w)) / (
                2 * h if difference == "central" else h)
        return nl_rel_error(target.backward(x, dy), numeric), dy
    return mutant


def nl_rel_error(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def test_grad_check_verdict_hint_fits_the_target_and_the_method():
    one_sided = [c for c in run(TASKS["grad_check"], _grad_check_with("forward")) if not c.passed]
    assert one_sided and all("one-sided" in c.message for c in one_sided if "verdict" in c.name)
    # a central-difference check with a different bug is not told to use central differences
    unweighted = [c for c in run(TASKS["grad_check"], _grad_check_with("central", weighted=False))
                  if not c.passed and "verdict" in c.name]
    assert unweighted
    for c in unweighted:
        assert "central" not in c.message and "one-sided" not in c.message
        target = re.search(r"target '(\w+)'", c.name).group(1)
        if target == "layer_norm":
            assert "layer_norm backward" in c.message and "BN" not in c.message
    ones = [c for c in run(TASKS["grad_check"], _grad_check_all_ones) if not c.passed and c.name.endswith("dy")]
    assert ones and all("BN" not in c.message and "all-ones" in c.message for c in ones)
