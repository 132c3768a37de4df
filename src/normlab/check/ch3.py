"""Chapter 3: the BatchNorm backward pass (staged and compact), and a gradient check that can fail."""
import numpy as np

import normlab as nl
from normlab.gradcheck import rel_error

from ._task import ArrayTask, Check, Task, case_label


def _reference_backward(dy, x, gamma, eps):
    beta = np.zeros_like(gamma)  # a bias makes normlab return dβ; its value does not change any gradient
    _, cache = nl.batch_norm_forward(x, gamma, beta, eps=eps)
    return nl.batch_norm_backward(dy, cache)


def _stats(x, eps):
    x = np.asarray(x, np.float64)
    rstd = 1.0 / np.sqrt(x.var(axis=0) + eps)
    return (x - x.mean(axis=0)) * rstd, rstd


def _staged_backward(dy, x, gamma, eps, *, axis=0, ddof=0, dvar_ddof=0, dmean_term=True, eps_outside=None):
    """The staged BatchNorm backward with one classic mistake switched on (never used as a reference).

    ``ddof`` divides the forward's variance by n - ddof, ``dvar_ddof`` the variance's own derivative;
    ``eps_outside`` is ``"exact"`` (the true gradient of a forward with sqrt(var) + eps) or ``"naive"``
    (that std plugged into the right chain, as when only the forward line is changed).
    """
    dy, x, gamma = (np.asarray(a, np.float64) for a in (dy, x, gamma))
    n = x.shape[axis]
    xc = x - x.mean(axis=axis, keepdims=True)
    var = (xc ** 2).sum(axis=axis, keepdims=True) / (n - ddof)
    std = np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps)
    x_hat = xc / std
    g = dy * gamma
    dstd = -(g * xc).sum(axis=axis, keepdims=True) / std ** 2
    dvar = dstd * 0.5 / (np.sqrt(var) if eps_outside == "exact" else std)
    dxc = g / std + 2.0 * xc / (n - dvar_ddof) * dvar
    dx = dxc - dxc.mean(axis=axis, keepdims=True) if dmean_term else dxc
    return dx, (dy * x_hat).sum(axis=0), dy.sum(axis=0)


MISSING_DMEAN = "dx is missing the dmean term, the path through the batch mean"
UNBIASED = ("unbiased variance (dividing by N-1) in the backward: the forward it differentiates normalises "
            "with the biased batch variance")
EPS_OUTSIDE = "eps outside the sqrt in the backward"
WRONG_AXIS = ("wrong axis: statistics per sample (axis 1); BatchNorm's are per feature, over the batch "
              "(axis 0)")


class BatchNormBackwardStaged(ArrayTask):
    """``batch_norm_backward_staged(dy, x, gamma, eps=1e-5) -> (dx, dgamma, dbeta)`` for x of shape (N, D)."""

    name = "batch_norm_backward_staged"
    chapter = 3
    points = 3.0
    outputs = ("dx", "dgamma", "dbeta")
    seed = 31

    def make_cases(self):
        r = np.random.default_rng(self.seed)
        cases = []
        for (n, d), dtype in (((8, 5), np.float64), ((5, 3), np.float64), ((16, 4), np.float32)):
            x = r.normal(2.0, 1.5, (n, d))
            cases.append({"args": [r.normal(0, 1, (n, d)).astype(dtype), x.astype(dtype),
                                   r.normal(1, 0.5, d).astype(dtype)], "kwargs": {"eps": 1e-5}})
        return cases

    def reference(self, dy, x, gamma, eps=1e-5):
        return _reference_backward(dy, x, gamma, eps)

    def mistakes(self, dy, x, gamma, eps=1e-5):
        def swapped(dy, x, gamma, eps=eps):
            dx, dgamma, dbeta = _reference_backward(dy, x, gamma, eps)
            return dx, dbeta, dgamma

        def constant_stats(dy, x, gamma, eps=eps):
            _, dgamma, dbeta = _reference_backward(dy, x, gamma, eps)
            _, rstd = _stats(x, eps)
            return np.asarray(dy, np.float64) * gamma * rstd, dgamma, dbeta

        def no_variance_path(dy, x, gamma, eps=eps):
            _, dgamma, dbeta = _reference_backward(dy, x, gamma, eps)
            _, rstd = _stats(x, eps)
            g = np.asarray(dy, np.float64) * gamma
            return (g - g.mean(axis=0)) * rstd, dgamma, dbeta

        def staged(**mistake):
            return lambda dy, x, gamma, eps=eps: _staged_backward(dy, x, gamma, eps, **mistake)

        return [
            ("dgamma and dbeta swapped", swapped),
            ("dx treats the batch mean and variance as constants (the eval-mode gradient); in training both "
             "depend on x", constant_stats),
            ("dx is missing the path through the variance", no_variance_path),
            (MISSING_DMEAN, staged(dmean_term=False)),
            (UNBIASED, staged(ddof=1, dvar_ddof=1)),
            (UNBIASED, staged(ddof=1)),
            (EPS_OUTSIDE, staged(eps_outside="exact")),
            (EPS_OUTSIDE, staged(eps_outside="naive")),
            (WRONG_AXIS, staged(axis=1)),
        ]


class BatchNormBackwardCompact(BatchNormBackwardStaged):
    """``batch_norm_backward_compact(dy, x, gamma, eps=1e-5) -> (dx, dgamma, dbeta)``: the one-line dx."""

    name = "batch_norm_backward_compact"
    points = 2.0
    seed = 32


class GradcheckTarget:
    """A forward/backward pair for the gradient-check exercise, looked up by name (so the grader can pass a name).

    ``forward(x) -> y`` and ``backward(x, dy) -> dx``, both float64 NumPy.
    """

    def __init__(self, name, forward, backward, correct):
        self.name, self.forward, self.backward, self.correct = name, forward, backward, correct

    def __repr__(self):
        return f"<gradcheck target {self.name!r}>"


def _bn_forward(x):
    return nl.batch_norm_forward(np.asarray(x, np.float64))[0]


def _bn_backward(x, dy):
    _, cache = nl.batch_norm_forward(np.asarray(x, np.float64))
    return nl.batch_norm_backward(np.asarray(dy, np.float64), cache)[0]


def _ln_forward(x):
    x = np.asarray(x, np.float64)
    return nl.layer_norm_forward(x, x.shape[-1])[0]


def _ln_backward(x, dy):
    x = np.asarray(x, np.float64)
    _, cache = nl.layer_norm_forward(x, x.shape[-1])
    return nl.layer_norm_backward(np.asarray(dy, np.float64), cache)[0]


def _bn_backward_without_variance_path(x, dy):
    """A classic bug: dx = (dy - mean(dy)) / std. With dy all ones it returns zero, which happens to be right."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    return (dy - dy.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5)


GRADCHECK_TARGETS = {
    t.name: t for t in (
        GradcheckTarget("batch_norm", _bn_forward, _bn_backward, True),
        GradcheckTarget("layer_norm", _ln_forward, _ln_backward, True),
        GradcheckTarget("batch_norm_buggy", _bn_forward, _bn_backward_without_variance_path, False),
    )
}


def gradcheck_target(name):
    """The forward/backward pair named ``name``: one of ``GRADCHECK_TARGETS``."""
    try:
        return GRADCHECK_TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown gradcheck target {name!r}; choose one of {sorted(GRADCHECK_TARGETS)}") from None


class GradCheck(Task):
    """``grad_check(name, x, seed) -> (rel_error, dy)``.

    The student compares ``gradcheck_target(name).backward(x, dy)`` with a
    numerical gradient of ``sum(forward(x) * dy)`` that they write, with an
    upstream gradient ``dy`` of their choice, and returns the relative error and
    that ``dy``. A good check reports a tiny error for the correct backward
    passes and a large one for the buggy one.
    """

    name = "grad_check"
    chapter = 3
    points = 2.0
    SMALL = 1e-5  # a correct backward, checked in float64, is far below this
    LARGE = 1e-2  # a real bug is far above this

    def cases(self):
        r = np.random.default_rng(33)
        return [
            {"args": ["batch_norm", r.normal(1.0, 2.0, (5, 3)), 0], "kwargs": {}},
            {"args": ["layer_norm", r.normal(0.0, 1.0, (3, 4)), 1], "kwargs": {}},
            {"args": ["batch_norm_buggy", r.normal(-1.0, 1.0, (6, 2)), 2], "kwargs": {}},
            {"args": ["batch_norm_buggy", r.normal(0.5, 3.0, (4, 3)), 3], "kwargs": {}},
        ]

    def judge(self, outputs):
        cases = self.cases_for(outputs)
        checks = []
        for i, (case, output) in enumerate(zip(cases, outputs)):
            target_name, x, _ = case["args"]
            target = gradcheck_target(target_name)
            label = f"{case_label(i, x)}, target {target_name!r}"
            if output.get("error") is not None:
                checks += [Check(f"{label}: dy", False, f"raised {output['error']}"),
                           Check(f"{label}: verdict", False, "not checked: the call raised")]
                continue
            result = output["result"]
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                checks += [Check(f"{label}: {part}", False, "expected a tuple (rel_error, dy)")
                           for part in ("dy", "verdict")]
                continue
            rel, dy = result
            checks.append(self._judge_dy(f"{label}: dy", dy, np.shape(x)))
            checks.append(self._judge_verdict(f"{label}: verdict", rel, dy, target, x))
        return checks

    @staticmethod
    def _constant(dy):
        a = np.asarray(dy, dtype=np.float64)
        return a.size > 0 and np.all(a == a.flat[0])

    def _judge_dy(self, label, dy, shape):
        try:
            a = np.asarray(dy, dtype=np.float64)
        except (TypeError, ValueError):
            return Check(label, False, f"dy must be an array of shape {shape}, got {type(dy).__name__}")
        if a.shape != shape:
            return Check(label, False, f"dy must have the shape of x, {shape}, got {a.shape}")
        if self._constant(a):
            return Check(label, False, "all-ones (constant) upstream gradient: sum(forward(x) * dy) is then a sum "
                                       "of normalized values, which does not depend on x, so the correct dx is "
                                       "zero and a backward that also returns zero passes")
        return Check(label, True, "")

    @staticmethod
    def _one_sided_error(target, x, dy, h=1e-5):
        """The relative error a check with one-sided differences would report here, or None if dy is unusable."""
        x = np.asarray(x, np.float64)
        try:
            dy = np.asarray(dy, np.float64)
        except (TypeError, ValueError):
            return None
        if dy.shape != x.shape:
            return None
        base, numeric = np.sum(target.forward(x) * dy), np.zeros_like(x)
        for i in np.ndindex(*x.shape):
            shifted = x.copy()
            shifted[i] += h
            numeric[i] = (np.sum(target.forward(shifted) * dy) - base) / h
        return rel_error(target.backward(x, dy), numeric)

    def _judge_verdict(self, label, rel, dy, target, x):
        if isinstance(rel, bool) or not isinstance(rel, (int, float)) or not np.isfinite(rel):
            return Check(label, False, f"rel_error must be a finite float, got {rel!r:.40}")
        if target.correct and rel < self.SMALL:
            return Check(label, True, "")
        if not target.correct and rel > self.LARGE:
            return Check(label, True, "")
        if target.correct:
            hint = f"reported relative error {rel:.1e} for the correct {target.name} backward (a good check " \
                   f"gives < {self.SMALL:.0e})"
            one_sided = self._one_sided_error(target, x, dy)
            if one_sided is not None and one_sided > self.SMALL and one_sided / 10 < rel < one_sided * 10:
                return Check(label, False, f"{hint}: about what one-sided differences give, whose error "
                                           "shrinks only in proportion to h")
            if rel > 0.1:
                return Check(label, False, f"{hint}: the numerical gradient is not that of sum(forward(x) * dy) "
                                           "for the dy given to the backward")
            return Check(label, False, f"{hint}: the numerical gradient is too inaccurate; look at the step h "
                                       "and the difference formula")
        hint = f"reported relative error {rel:.1e} for a broken backward: the check missed the bug"
        if self._constant(dy):
            hint += " because of the all-ones upstream gradient"
        return Check(label, False, hint)


TASKS = [BatchNormBackwardStaged(), BatchNormBackwardCompact(), GradCheck()]
