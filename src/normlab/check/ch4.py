"""Chapter 4: running statistics in PyTorch's convention, the eval forward pass, and folding BN into a Linear."""
import numpy as np

import normlab as nl

from . import _wrong
from ._task import ArrayTask, Check


def _channel_axes(x):
    return (0,) + tuple(range(2, np.ndim(x)))


class UpdateRunningStats(ArrayTask):
    """``update_running_stats(running_mean, running_var, x, momentum=0.1) -> None``, updating the buffers in place."""

    name = "update_running_stats"
    chapter = 4
    points = 2.0
    outputs = ("running_mean", "running_var")
    label_arg = 2

    def make_cases(self):
        r = np.random.default_rng(41)
        cases = []
        # the float32 case is square, so that statistics over the wrong axis still fit the buffers
        for shape, momentum, dtype in (((8, 4), 0.1, np.float64), ((4, 3, 2, 2), 0.3, np.float64),
                                       ((5, 5), 0.1, np.float32)):
            c = shape[1]
            x = r.normal(r.normal(0, 2, (1, c) + (1,) * (len(shape) - 2)), 1.5, shape).astype(dtype)
            cases.append({"args": [r.normal(0, 1, c).astype(dtype), r.uniform(0.5, 2, c).astype(dtype), x],
                          "kwargs": {"momentum": momentum}})
        return cases

    def student_values(self, output):
        args = output["args"]
        if not isinstance(args, (list, tuple)) or len(args) < 2:
            return None, Check("buffers", False, "the buffers were not returned by the grader")
        return [args[0], args[1]], None  # the buffers after the call: the update must happen in place

    def reference(self, running_mean, running_var, x, momentum=0.1):
        nl.batch_norm_forward(x, running_mean=running_mean, running_var=running_var, momentum=momentum)
        return running_mean, running_var

    def mistakes(self, running_mean, running_var, x, momentum=0.1):
        def update(biased=False, wrong_side=False, untouched=False, batch_only=False, axes=None):
            def f(rm, rv, x, momentum=momentum):
                x = np.asarray(x, np.float64)
                if untouched:
                    return rm, rv
                over = _channel_axes(x) if axes is None else axes
                mean, var = x.mean(axis=over), x.var(axis=over)
                if not biased:
                    n = x.shape[0] if batch_only else x.size // mean.size  # batch_only: n = N, not N*H*W
                    var = var * n / (n - 1)
                m = 1 - momentum if wrong_side else momentum
                return (1 - m) * rm + m * mean, (1 - m) * rv + m * var
            return f

        return [
            ("buffers unchanged: the update must happen in place; rebinding the names or returning new "
             "arrays leaves the caller's buffers as they were", update(untouched=True)),
            ("biased running variance: PyTorch stores the unbiased batch variance", update(biased=True)),
            ("momentum applied to the old value: PyTorch's momentum weights the new batch statistic",
             update(wrong_side=True)),
            ("n = N in the unbiased correction: for 4-D input each channel has N*H*W values",
             update(batch_only=True)),
            ("wrong axis: statistics per sample (axis 1); the buffers hold one per channel, over the batch",
             update(axes=1)),
        ]


class BatchNormEval(ArrayTask):
    """``batch_norm_eval(x, running_mean, running_var, gamma, beta, eps=1e-5) -> y``."""

    name = "batch_norm_eval"
    chapter = 4
    points = 2.0

    def make_cases(self):
        r = np.random.default_rng(42)
        cases = []
        # C == W in the 4-D case, so that (C,) arrays broadcast along the last axis still fit
        for shape, eps, dtype in (((8, 4), 1e-5, np.float64), ((3, 4, 3, 4), 1e-3, np.float64),
                                  ((6, 5), 0.1, np.float32)):
            c = shape[1]
            x = r.normal(1.0, 2.0, shape)
            args = [x, r.normal(-1, 1, c), r.uniform(0.01, 3, c), r.normal(1, 0.3, c), r.normal(0, 1, c)]
            cases.append({"args": [a.astype(dtype) for a in args], "kwargs": {"eps": eps}})
        return cases

    def reference(self, x, running_mean, running_var, gamma, beta, eps=1e-5):
        return (nl.batch_norm_forward(x, gamma, beta, running_mean=running_mean, running_var=running_var,
                                      training=False, eps=eps)[0],)

    def mistakes(self, x, running_mean, running_var, gamma, beta, eps=1e-5):
        def running(eps_outside=False, no_sqrt=False, no_affine=False, last_axis=False):
            def f(x, rm, rv, g, b, eps=eps):
                shape = (-1,) if last_axis else (1, -1) + (1,) * (np.ndim(x) - 2)
                rm, rv = np.reshape(rm, shape).astype(np.float64), np.reshape(rv, shape).astype(np.float64)
                if no_sqrt:
                    scale = rv + eps
                else:
                    scale = np.sqrt(rv) + eps if eps_outside else np.sqrt(rv + eps)
                y = (np.asarray(x, np.float64) - rm) / scale
                if no_affine:
                    return (y,)
                return (_wrong.affine(y, g, b, param_axis=np.ndim(x) - 1 if last_axis else 1),)
            return f

        return [
            ("batch statistics used in eval: normalise with running_mean and running_var, not the batch's",
             lambda x, rm, rv, g, b, eps=eps: (_wrong.normalize(x, _channel_axes(x), g, b, eps=eps),)),
            ("eps outside the sqrt", running(eps_outside=True)),
            ("divided by the variance instead of the standard deviation", running(no_sqrt=True)),
            ("eval without the affine map: gamma and beta still apply in eval", running(no_affine=True)),
            ("wrong axis: the per-channel arrays were broadcast along the last axis, not the channel axis 1",
             running(last_axis=True)),
        ]


class FoldLinear(ArrayTask):
    """``fold_linear(weight, bias, running_mean, running_var, gamma, beta, eps=1e-5) -> (weight, bias)``.

    ``weight`` has PyTorch's Linear shape (out_features, in_features).
    """

    name = "fold_linear"
    chapter = 4
    points = 2.0
    outputs = ("folded_weight", "folded_bias")

    def make_cases(self):
        r = np.random.default_rng(43)
        cases = []
        for (out, inp), dtype in (((4, 6), np.float64), ((5, 5), np.float64), ((3, 7), np.float32)):
            args = [r.normal(0, 1, (out, inp)), r.normal(0, 1, out), r.normal(0, 2, out), r.uniform(0.2, 3, out),
                    r.normal(1, 0.3, out), r.normal(0, 1, out)]
            cases.append({"args": [a.astype(dtype) for a in args], "kwargs": {"eps": 1e-3}})
        return cases

    def reference(self, weight, bias, running_mean, running_var, gamma, beta, eps=1e-5):
        return nl.fold_batch_norm(weight, bias, running_mean, running_var, gamma, beta, eps=eps)

    def mistakes(self, weight, bias, running_mean, running_var, gamma, beta, eps=1e-5):
        def fold(columns=False, keep_mean=False, eps_outside=False, no_beta=False):
            def f(w, b, rm, rv, g, be, eps=eps):
                w, b, rm, rv = (np.asarray(a, np.float64) for a in (w, b, rm, rv))
                scale = g / (np.sqrt(rv) + eps if eps_outside else np.sqrt(rv + eps))
                folded_w = w * scale[None, :] if columns and w.shape[0] == w.shape[1] else w * scale[:, None]
                folded_b = (b if keep_mean else b - rm) * scale + (0.0 if no_beta else be)
                return folded_w, folded_b
            return f

        return [
            ("scaled the columns (inputs): BatchNorm scales each OUTPUT feature, the rows of a Linear weight "
             "of shape (out_features, in_features)", fold(columns=True)),
            ("forgot to subtract running_mean from the bias before scaling", fold(keep_mean=True)),
            ("eps outside the sqrt", fold(eps_outside=True)),
            ("folded without beta: the folded bias lacks BatchNorm's shift", fold(no_beta=True)),
        ]


TASKS = [UpdateRunningStats(), BatchNormEval(), FoldLinear()]
