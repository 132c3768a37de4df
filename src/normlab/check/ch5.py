"""Chapter 5: running statistics as estimators: cumulative mean, bias-corrected EMA, a scalar Kalman filter."""
import numpy as np

from normlab import running_stats

from ._task import ArrayTask


def _stream(seed, shape, dtype):
    r = np.random.default_rng(seed)
    return (r.normal(2.0, 1.0, shape) + np.linspace(0, 1, shape[0]).reshape(-1, *(1,) * (len(shape) - 1))
            ).astype(dtype)


class CumulativeMean(ArrayTask):
    """``cumulative_mean(batch_means) -> estimates``: PyTorch's ``momentum=None``, from a running value of 0.

    ``batch_means`` has shape (T, C); row k of the result is the running mean after batch k+1.
    """

    name = "cumulative_mean"
    chapter = 5
    points = 1.0
    outputs = ("estimates",)

    def make_cases(self):
        return [{"args": [_stream(51, (10, 3), np.float64)], "kwargs": {}},
                {"args": [_stream(52, (25, 2), np.float32)], "kwargs": {}}]

    @staticmethod
    def _run(values, momentum_of_k):
        values = np.asarray(values, np.float64)
        running, out = np.zeros(values.shape[1:]), []
        for k, batch in enumerate(values, start=1):
            running = running_stats.ema(running, batch, momentum_of_k(k))
            out.append(running)
        return (np.array(out),)

    def reference(self, values):
        return self._run(values, running_stats.cumulative_momentum)

    def mistakes(self, values):
        return [
            ("off by one: the k-th batch (counting from 1) gets weight 1/k, so the first estimate is the first batch",
             lambda v: self._run(v, lambda k: 1.0 / (k + 1))),
            ("fixed momentum 0.1: that is PyTorch's default EMA; momentum=None means weight 1/k",
             lambda v: self._run(v, lambda k: 0.1)),
        ]


class EmaBiasCorrected(ArrayTask):
    """``ema_bias_corrected(values, decay=0.9) -> estimates``: Adam-style bias-corrected EMA from 0.

    ``v_t = decay * v_{t-1} + (1 - decay) * x_t`` and ``estimate_t = v_t / (1 - decay**t)``, t from 1.
    """

    name = "ema_bias_corrected"
    chapter = 5
    points = 2.0
    outputs = ("estimates",)

    def make_cases(self):
        return [{"args": [_stream(53, (12, 3), np.float64)], "kwargs": {"decay": 0.9}},
                {"args": [_stream(54, (30,), np.float64)], "kwargs": {"decay": 0.8}},
                {"args": [_stream(55, (20, 2), np.float32)], "kwargs": {"decay": 0.95}}]

    @staticmethod
    def _run(values, decay, correct=True, wrong_side=False, power_offset=0):
        values = np.asarray(values, np.float64)
        v, out = np.zeros(values.shape[1:]), []
        for t, x in enumerate(values, start=1):
            v = running_stats.decay_ema(v, x, 1 - decay if wrong_side else decay)
            out.append(v / (1 - decay ** (t + power_offset)) if correct else v)
        return (np.array(out),)

    def reference(self, values, decay=0.9):
        return self._run(values, decay)

    def mistakes(self, values, decay=0.9):
        return [
            ("no bias correction: the early estimates are pulled towards the starting value 0",
             lambda v, decay=decay: self._run(v, decay, correct=False)),
            ("decay applied to the new value: decay weights the old average",
             lambda v, decay=decay: self._run(v, decay, wrong_side=True)),
            ("bias correction off by one in the power of decay (t counts from 1)",
             lambda v, decay=decay: self._run(v, decay, power_offset=1)),
        ]


def kalman(z, meas_var, process_var, x0, p0, predict=True, gain_flipped=False):
    """Scalar Kalman filter for a slowly drifting constant; returns the estimates and their variances."""
    x, p, xs, ps = float(x0), float(p0), [], []
    for zt in np.asarray(z, np.float64):
        if predict:
            p = p + process_var
        k = meas_var / (p + meas_var) if gain_flipped else p / (p + meas_var)
        x = x + k * (zt - x)
        p = (1 - k) * p
        xs.append(x)
        ps.append(p)
    return np.array(xs), np.array(ps)


class KalmanScalar(ArrayTask):
    """``kalman_scalar(z, meas_var, process_var, x0, p0) -> (estimates, variances)``."""

    name = "kalman_scalar"
    chapter = 5
    points = 2.0
    outputs = ("estimates", "variances")

    def make_cases(self):
        r = np.random.default_rng(56)
        truth = np.cumsum(r.normal(0, 0.1, 40)) + 3.0
        return [
            {"args": [truth + r.normal(0, 0.5, 40), 0.25, 0.01, 0.0, 10.0], "kwargs": {}},
            {"args": [r.normal(1.0, 2.0, 15), 4.0, 0.5, 1.0, 1.0], "kwargs": {}},
        ]

    def reference(self, z, meas_var, process_var, x0, p0):
        return kalman(z, meas_var, process_var, x0, p0)

    def mistakes(self, z, meas_var, process_var, x0, p0):
        return [
            ("no predict step: add process_var to the variance before each update, or the filter stops "
             "following a drifting value", lambda *a: kalman(*a, predict=False)),
            ("gain flipped: the new measurement got the weight that belongs to the estimate",
             lambda *a: kalman(*a, gain_flipped=True)),
        ]


TASKS = [CumulativeMean(), EmaBiasCorrected(), KalmanScalar()]
