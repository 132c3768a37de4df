"""Inverted dropout, as ``torch.nn.functional.dropout`` and ``torch.nn.Dropout``.

In training each element is zeroed with probability ``p`` (the *drop*
probability, torch's convention) and the survivors are scaled by 1/(1-p), so
the expected output equals the input. In eval the layer is the identity:
nothing is rescaled at test time, because the scaling already happened in
training. (tflearn and TF1's ``tf.nn.dropout`` take the *keep* probability
instead: their ``dropout(x, 0.8)`` is torch's ``p=0.2``.)

The mask is drawn on the host with a NumPy ``Generator``, so a seed gives the
same mask on every array library, then moved to the input's library and device.
"""
import numbers

import numpy as np

from ._backend import convert, namespace

__all__ = ["dropout_forward", "dropout_backward", "Dropout"]


def _check_p(p, where):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{where}: dropout probability p must be a number in [0, 1] (the probability of "
                         f"zeroing an element), got {p!r}")
    return float(p)


def _generator(rng):
    if rng is None or isinstance(rng, (numbers.Integral, np.random.SeedSequence)):
        return np.random.default_rng(rng)
    if callable(getattr(rng, "random", None)):  # a numpy.random.Generator, or anything with its random(shape)
        return rng
    raise ValueError(f"dropout: rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def dropout_forward(x, p, *, training=True, rng=None):
    """Inverted dropout. Returns ``(y, cache)``; pass ``cache`` to `dropout_backward`.

    ``p`` is the probability of zeroing an element: where ``rng.random(x.shape) < p``.
    ``rng`` is a NumPy ``Generator`` (advanced by the call), an int seed, or None
    for fresh entropy.
    In eval (``training=False``), or with ``p == 0``, ``y`` is ``x`` itself.
    """
    p = _check_p(p, "dropout_forward")
    xp = namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise ValueError(f"dropout_forward: expected a floating-point input, got dtype {x.dtype}")
    if not training or p == 0.0:
        return x, {"scale": None, "shape": tuple(x.shape)}
    keep = _generator(rng).random(tuple(x.shape)) >= p  # P(keep) = 1 - p
    # p == 1 drops everything; torch returns zeros there rather than 0 * inf
    factor = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    scale = xp.astype(convert(keep, like=x), x.dtype) * factor
    return x * scale, {"scale": scale, "shape": tuple(x.shape)}


def dropout_backward(dy, cache):
    """Gradient w.r.t. the input: ``dy`` times the forward's mask and 1/(1-p) (``dy`` itself in eval)."""
    if tuple(dy.shape) != cache["shape"]:
        raise ValueError(f"dropout_backward: dy has shape {tuple(dy.shape)}, the forward input had {cache['shape']}")
    if cache["scale"] is None:
        return dy
    return dy * convert(cache["scale"], like=dy)


class Dropout:
    """Inverted dropout layer, as ``torch.nn.Dropout(p)``; ``seed`` makes its masks reproducible.

    Each training call draws a new mask from the layer's own generator, so two
    layers built with the same seed give the same sequence of masks. No
    parameters: ``grads`` stays empty and ``state_dict()`` is ``{}``.
    """

    def __init__(self, p=0.5, *, seed=None):
        self.p = _check_p(p, "Dropout")
        self.seed = seed
        self._rng = _generator(seed)
        self.training = True
        self.grads = {}
        self._cache = None

    def __call__(self, x):
        return self.forward(x)

    def __repr__(self):
        return f"Dropout(p={self.p:g})"

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def forward(self, x):
        y, self._cache = dropout_forward(x, self.p, training=self.training, rng=self._rng)
        return y

    def backward(self, dy):
        """Gradient w.r.t. the last forward's input."""
        if self._cache is None:
            raise RuntimeError("Dropout.backward() called before forward()")
        return dropout_backward(dy, self._cache)

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        if state_dict:
            raise ValueError(f"Dropout.load_state_dict: unexpected keys {sorted(state_dict)}")
