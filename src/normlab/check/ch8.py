"""Chapter 8: inverted dropout forward and backward, LocalResponseNorm forward, and an SGD step with weight decay.

The dropout tasks take the uniform numbers ``u`` that decide the mask, so the
answer is deterministic: an element is dropped where ``u < p``, as in
``normlab.dropout.dropout_forward``, which is the reference (given those ``u``).
"""
import copy

import numpy as np

import normlab as nl
from normlab.dropout import dropout_backward, dropout_forward

from ._task import ArrayTask, Check, Task, compare

EVAL_SCALED = ("scaling at eval instead of in training: the eval output is rescaled, as the original "
               "(non-inverted) dropout does")
TRAIN_UNSCALED = ("scaling at eval instead of in training: the kept values are not rescaled in training, as the "
                  "original (non-inverted) dropout does")
KEEP_PROBABILITY = ("keep versus drop probability: p was used as the probability of keeping an element "
                    "(tflearn's and TF1's convention); here p is torch's drop probability")


def _dropout_cases(seed, specs):
    r = np.random.default_rng(seed)
    cases = []
    for shape, p, training, dtype in specs:
        u = r.random(shape)
        cases.append((r.normal(0, 1, shape).astype(dtype), float(p), u, training))
    return cases


class DropoutForward(ArrayTask):
    """``dropout_forward(x, p, u, training=True) -> y``; drop where ``u < p``, torch's drop probability p."""

    name = "dropout_forward"
    chapter = 8
    points = 2.0

    def make_cases(self):
        specs = [((4, 6), 0.3, True, np.float64), ((2, 3, 4, 4), 0.5, True, np.float64),
                 ((5, 8), 0.2, True, np.float32), ((4, 6), 0.3, False, np.float64),
                 ((3, 5), 0.6, False, np.float32)]
        return [{"args": [x, p, u], "kwargs": {"training": training}}
                for x, p, u, training in _dropout_cases(81, specs)]

    def reference(self, x, p, u, training=True):
        # normlab's own forward, on the mask these u give (the mask its generator would draw)
        return (dropout_forward(np.asarray(x), p, training=training, rng=_ReplayGenerator(u))[0],)

    def mistakes(self, x, p, u, training=True):
        x, u = np.asarray(x, np.float64), np.asarray(u)
        keep = u >= p
        if not training:
            return [(EVAL_SCALED, lambda *a, **k: (x * (1 - p),)),
                    ("in eval, dropout is the identity: the mask was applied",
                     lambda *a, **k: (x * keep / (1 - p),))]
        return [
            (TRAIN_UNSCALED, lambda *a, **k: (x * keep,)),
            (KEEP_PROBABILITY, lambda *a, **k: (x * (u < p) / p,)),
            (KEEP_PROBABILITY + " (the scale 1/p)", lambda *a, **k: (x * keep / p,)),
            ("the mask is the wrong way round: the kept and the dropped elements are swapped",
             lambda *a, **k: (x * (u < p) / (1 - p),)),
        ]


class _ReplayGenerator:
    """Stands in for a NumPy Generator whose next ``random(shape)`` is ``u``: normlab's forward on a given mask."""

    def __init__(self, u):
        self._u = np.asarray(u, dtype=np.float64)

    def random(self, shape):
        if tuple(shape) != self._u.shape:
            raise ValueError(f"u has shape {self._u.shape}, x has shape {tuple(shape)}")
        return self._u


class DropoutBackward(ArrayTask):
    """``dropout_backward(dy, p, u) -> dx`` for the training-mode forward with the same ``u``."""

    name = "dropout_backward"
    chapter = 8
    points = 1.0

    def make_cases(self):
        specs = [((4, 6), 0.3, True, np.float64), ((2, 3, 5), 0.5, True, np.float64),
                 ((6, 4), 0.25, True, np.float32)]
        # a random upstream gradient: with all ones, dx would just be the scaled mask
        return [{"args": [x, p, u], "kwargs": {}} for x, p, u, _ in _dropout_cases(82, specs)]

    def reference(self, dy, p, u):
        _, cache = dropout_forward(np.asarray(dy), p, training=True, rng=_ReplayGenerator(u))
        return (dropout_backward(np.asarray(dy), cache),)

    def mistakes(self, dy, p, u):
        dy, u = np.asarray(dy, np.float64), np.asarray(u)
        keep = u >= p
        return [
            ("the gradient lacks the forward's training-time scaling (non-inverted dropout)",
             lambda *a, **k: (dy * keep,)),
            (KEEP_PROBABILITY, lambda *a, **k: (dy * (u < p) / p,)),
            ("the gradient ignores the mask: dropped elements get no gradient", lambda *a, **k: (dy / (1 - p),)),
        ]


def _lrn(x, size, alpha, beta, k, before, after, alpha_over_size=True):
    """LRN with a window of ``before`` channels before and ``after`` after each channel (zero-padded)."""
    x = np.asarray(x, np.float64)
    squares = np.moveaxis(x**2, 1, 0)
    c = squares.shape[0]
    padded = np.concatenate([np.zeros((before,) + squares.shape[1:]), squares,
                             np.zeros((after,) + squares.shape[1:])])
    window = np.stack([padded[i:i + before + after + 1].sum(axis=0) for i in range(c)])
    scale = alpha / size if alpha_over_size else alpha
    return x / np.moveaxis(k + scale * window, 0, 1) ** beta


class LocalResponseNormForward(ArrayTask):
    """``local_response_norm_forward(x, size, alpha=1e-4, beta=0.75, k=1.0) -> y`` for x of shape (N, C, *)."""

    name = "local_response_norm_forward"
    chapter = 8
    points = 2.0

    def make_cases(self):
        r = np.random.default_rng(83)
        # alpha far above the default 1e-4, so that the window's contents change the output beyond tolerance
        specs = [((2, 7, 3, 3), 5, 1.0, 0.75, 2.0, np.float64), ((3, 6, 4), 4, 2.0, 0.75, 1.0, np.float64),
                 ((2, 8, 2, 2), 2, 1.5, 0.5, 1.0, np.float64), ((2, 5, 3), 3, 0.8, 0.75, 1.0, np.float32)]
        return [{"args": [r.normal(0, 1.5, shape).astype(dtype), size],
                 "kwargs": {"alpha": alpha, "beta": beta, "k": k}}
                for shape, size, alpha, beta, k, dtype in specs]

    def reference(self, x, size, alpha=1e-4, beta=0.75, k=1.0):
        return (nl.local_response_norm_forward(x, size, alpha=alpha, beta=beta, k=k)[0],)

    def mistakes(self, x, size, alpha=1e-4, beta=0.75, k=1.0):
        before, after = size // 2, (size - 1) // 2  # torch's zero padding

        def variant(b, a, over_size=True):
            return lambda *args, **kw: (_lrn(x, size, alpha, beta, k, b, a, over_size),)

        return [
            ("LRN window off by one: it spans size + 1 channels", variant(before, after + 1)),
            ("LRN window off by one: it spans size - 1 channels", variant(max(before - 1, 0), after)),
            ("LRN window off by one: it sits one channel late", variant(before - 1, after + 1)),
            ("LRN window: size was used as a radius, as TensorFlow's depth_radius is", variant(size, size)),
            ("alpha is not divided by size, as in the AlexNet paper's and TensorFlow's form",
             variant(before, after, over_size=False)),
        ]


def _decayed(name, value):
    """Decay only weights with 2 or more axes (conv and linear); never biases or BatchNorm's gamma and beta."""
    return np.ndim(value) >= 2


def _sgd_step(params, grads, velocity, lr, momentum, weight_decay, decoupled, decay_rule=_decayed):
    new_params, new_velocity = {}, {}
    for name, w in params.items():
        w, g, v = (np.asarray(a, np.float64) for a in (w, grads[name], velocity[name]))
        wd = weight_decay if decay_rule(name, w) else 0.0
        if decoupled:
            v = momentum * v + g
            w = w - lr * v - lr * wd * w
        else:
            v = momentum * v + g + wd * w
            w = w - lr * v
        new_params[name], new_velocity[name] = w, v
    return new_params, new_velocity


class SGDStep(Task):
    """``sgd_step(params, grads, velocity, lr, momentum, weight_decay, decoupled) -> (params, velocity)``.

    Dicts of arrays keyed by parameter name; a new pair of dicts is returned.
    One check per case and per returned dict.
    """

    name = "sgd_step"
    chapter = 8
    points = 2.0
    SHAPES = {"conv.weight": (3, 2, 3, 3), "conv.bias": (3,), "bn.weight": (3,), "bn.bias": (3,),
              "fc.weight": (4, 12), "fc.bias": (4,)}

    def cases(self):
        r = np.random.default_rng(84)
        cases = []
        for momentum, weight_decay, decoupled in [(0.9, 0.1, False), (0.9, 0.1, True), (0.5, 0.05, False),
                                                  (0.8, 0.2, True)]:
            def draw(scale, offset=0.0):
                return {n: r.normal(offset, scale, s) for n, s in self.SHAPES.items()}
            params, grads, velocity = draw(1.0, 0.5), draw(0.5), draw(0.3)  # a velocity from earlier steps
            cases.append({"args": [params, grads, velocity],
                          "kwargs": {"lr": 0.1, "momentum": momentum, "weight_decay": weight_decay,
                                     "decoupled": decoupled}})
        return cases

    def _mistakes(self, kw):
        def decay_all(name, value):
            return True

        return [
            ("decaying the bias and BatchNorm parameters (the 1-D parameters)",
             _sgd_step(*kw["args"], **kw["kwargs"], decay_rule=decay_all)),
            ("decoupled and L2 swapped: " + ("the decay went into the velocity, as an L2 penalty's gradient does"
                                             if kw["kwargs"]["decoupled"] else
                                             "the decay bypassed the velocity, as decoupled decay does"),
             _sgd_step(*kw["args"], **{**kw["kwargs"], "decoupled": not kw["kwargs"]["decoupled"]})),
            ("no momentum: the old velocity is ignored",
             _sgd_step(*kw["args"], **{**kw["kwargs"], "momentum": 0.0})),
        ]

    def judge(self, outputs):
        cases = self.cases_for(outputs)
        checks = []
        for i, (case, output) in enumerate(zip(cases, outputs)):
            kw = case["kwargs"]
            label = (f"case {i + 1} ({'decoupled' if kw['decoupled'] else 'L2'}, momentum {kw['momentum']:g}, "
                     f"weight_decay {kw['weight_decay']:g})")
            names = [f"{label}: params", f"{label}: velocity"]
            if output.get("error") is not None:
                checks += [Check(names[0], False, f"raised {output['error']}"),
                           Check(names[1], False, "not checked: the call raised")]
                continue
            result = output["result"]
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                kind = f"{len(result)} values" if isinstance(result, (tuple, list)) else type(result).__name__
                checks += [Check(n, False, f"expected a tuple (params, velocity) of two dicts, got {kind}")
                           for n in names]
                continue
            expected = _sgd_step(*copy.deepcopy(case["args"]), **kw)
            wrongs = self._mistakes(copy.deepcopy(case))
            for k, name in enumerate(names):
                checks.append(self._compare_dict(name, result[k], expected[k], [(d, w[k]) for d, w in wrongs]))
        return checks

    @staticmethod
    def _compare_dict(name, got, expected, mistakes):
        if not isinstance(got, dict) or set(got) != set(expected):
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            return Check(name, False, f"expected a dict with keys {sorted(expected)}, got {keys}")
        for key in expected:  # the first parameter that is wrong names the problem
            one = compare(key, got[key], expected[key], mistakes=[(d, w[key]) for d, w in mistakes])
            if not one.passed:
                return Check(name, False, f"{key}: {one.message}")
        return Check(name, True, "")


TASKS = [DropoutForward(), DropoutBackward(), LocalResponseNormForward(), SGDStep()]
