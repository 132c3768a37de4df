"""Chapter 7: RMSNorm forward and backward over a token's features, and the wiring of a pre-LN block."""
import numpy as np

import normlab as nl

from . import _wrong
from ._task import ArrayTask


def _tokens(r, shape, scale=1.0):
    """Token features with a different mean and scale per token, so that centring or wrong axes show."""
    lead = shape[:-1] + (1,)
    return scale * (r.normal(0, 1, shape) * r.uniform(0.5, 2, lead) + r.normal(0, 1.5, lead))


def _rms(x, axis=-1, eps=1e-6, eps_outside=False):
    """``eps_outside``: True adds eps after the sqrt, ``"sqrt"`` adds sqrt(eps) after it."""
    ms = np.mean(np.square(x), axis=axis, keepdims=True)
    if eps_outside == "sqrt":
        return np.sqrt(ms) + np.sqrt(eps)
    return np.sqrt(ms) + eps if eps_outside else np.sqrt(ms + eps)


def _rms_norm_wrong(x, gamma, eps, *, axis=-1, eps_outside=False, centre=False):
    """``centre``: True is LayerNorm without its bias; ``"statistic"`` divides x by its standard deviation;
    ``"numerator"`` divides x - mean by the RMS. Each keeps the mean somewhere."""
    x = np.asarray(x, np.float64)
    if centre is True:  # LayerNorm without its bias: the classic mistake of keeping the mean
        return _wrong.normalize(x, axis, eps=eps, eps_outside=eps_outside) * gamma
    if centre == "statistic":
        return x / np.sqrt(np.var(x, axis=axis, keepdims=True) + eps) * gamma
    if centre == "numerator":
        return (x - x.mean(axis=axis, keepdims=True)) / _rms(x, axis, eps) * gamma
    return x / _rms(x, axis, eps, eps_outside) * gamma


def _rms_norm_backward_formula(dy, x, gamma, eps, *, axis=-1, eps_outside=False, centre_dx=False,
                               constant_rms=False):
    """The compact RMSNorm gradient, with one mistake switched on (never used as a reference)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    r = _rms(x, axis, eps, eps_outside)
    x_hat = x / r
    g = dy * gamma
    param_axes = tuple(range(x.ndim - 1))
    dgamma = (dy * x_hat).sum(axis=param_axes)
    if constant_rms:
        return g / r, dgamma
    dx = g - x_hat * (g * x_hat).mean(axis=axis, keepdims=True)
    if centre_dx:
        dx = dx - g.mean(axis=axis, keepdims=True)
    return dx / r, dgamma


class RMSNormForward(ArrayTask):
    """``rms_norm_forward(x, gamma, eps=1e-6) -> y``: RMSNorm over the last axis (a token's D features)."""

    name = "rms_norm_forward"
    chapter = 7
    points = 2.0

    def make_cases(self):
        r = np.random.default_rng(71)
        cases = []
        # the small-scale case has mean(x²) near eps, where eps outside the sqrt shows
        for shape, scale, eps, dtype in [((2, 5, 8), 1.0, 1e-5, np.float64), ((3, 4, 6), 0.03, 1e-3, np.float64),
                                         ((6, 10), 1.0, 1e-6, np.float64), ((2, 6, 16), 1.0, 1e-5, np.float32)]:
            x = _tokens(r, shape, scale).astype(dtype)
            gamma = r.normal(1, 0.3, shape[-1]).astype(dtype)
            cases.append({"args": [x, gamma], "kwargs": {"eps": eps}})
        return cases

    def reference(self, x, gamma, eps=1e-6):
        return (nl.rms_norm_forward(x, x.shape[-1:], gamma, eps=eps)[0],)

    def mistakes(self, x, gamma, eps=1e-6):
        centring = "centring: RMSNorm does not subtract the mean; only LayerNorm does"
        eps_outside = "eps outside the sqrt: it belongs inside, with the mean of the squares"
        return [
            (centring, lambda x, g, eps=eps: (_rms_norm_wrong(x, g, eps, centre=True),)),
            ("centring in the statistic: the standard deviation subtracts the mean; RMSNorm divides by the root "
             "mean square", lambda x, g, eps=eps: (_rms_norm_wrong(x, g, eps, centre="statistic"),)),
            (centring, lambda x, g, eps=eps: (_rms_norm_wrong(x, g, eps, centre="numerator"),)),
            (eps_outside, lambda x, g, eps=eps: (_rms_norm_wrong(x, g, eps, eps_outside=True),)),
            (eps_outside, lambda x, g, eps=eps: (_rms_norm_wrong(x, g, eps, eps_outside="sqrt"),)),
            ("wrong axes: the statistic is taken over the tokens (axis T); RMSNorm takes it over each token's "
             "features (the last axis, D)", lambda x, g, eps=eps: (_rms_norm_wrong(x, g, eps, axis=-2),)),
            ("wrong axes: one statistic over all of (T, D); RMSNorm takes one per token",
             lambda x, g, eps=eps: (_rms_norm_wrong(x, g, eps, axis=(-2, -1)),)),
        ]


class RMSNormBackward(ArrayTask):
    """``rms_norm_backward(dy, x, gamma, eps=1e-6) -> (dx, dgamma)``."""

    name = "rms_norm_backward"
    chapter = 7
    points = 3.0
    outputs = ("dx", "dgamma")
    label_arg = 1

    def make_cases(self):
        r = np.random.default_rng(72)
        cases = []
        for shape, scale, eps, dtype in [((2, 5, 8), 1.0, 1e-5, np.float64), ((3, 4, 6), 0.03, 1e-3, np.float64),
                                         ((6, 10), 1.0, 1e-6, np.float64), ((2, 6, 16), 1.0, 1e-5, np.float32)]:
            x = _tokens(r, shape, scale).astype(dtype)
            dy = r.normal(0, 1, shape).astype(dtype)  # random upstream gradient, never all ones
            gamma = r.normal(1, 0.3, shape[-1]).astype(dtype)
            cases.append({"args": [dy, x, gamma], "kwargs": {"eps": eps}})
        return cases

    def reference(self, dy, x, gamma, eps=1e-6):
        _, cache = nl.rms_norm_forward(x, x.shape[-1:], gamma, eps=eps)
        dx, dgamma, _ = nl.rms_norm_backward(dy, cache)
        return dx, dgamma

    def mistakes(self, dy, x, gamma, eps=1e-6):
        def layer_norm_grads(dy, x, g, eps=eps):
            _, cache = nl.layer_norm_forward(np.asarray(x, np.float64), x.shape[-1:], np.asarray(g, np.float64),
                                             None, eps=eps)
            dx, dgamma, _ = nl.layer_norm_backward(np.asarray(dy, np.float64), cache)
            return dx, dgamma

        def formula(**mistake):
            return lambda dy, x, g, eps=eps: _rms_norm_backward_formula(dy, x, g, eps, **mistake)

        centring = ("centring: dx has the term that LayerNorm's mean subtraction contributes; RMSNorm subtracts "
                    "no mean")
        return [
            (centring, layer_norm_grads),
            (centring, formula(centre_dx=True)),
            ("dx treats the root mean square as a constant; it depends on x", formula(constant_rms=True)),
            ("eps outside the sqrt: it belongs inside, with the mean of the squares", formula(eps_outside=True)),
            ("wrong axes: the statistic is taken over the tokens (axis T); RMSNorm takes it over each token's "
             "features (the last axis, D)", formula(axis=-2)),
        ]


def _layer_norm(h, gamma, beta, eps, axis=-1):
    return _wrong.normalize(h, axis, eps=eps) * gamma + beta


def token_mixing(h, w):
    """A stand-in for causal self-attention: each token takes the mean of the tokens up to it, then ``@ w``."""
    counts = np.arange(1, h.shape[-2] + 1).reshape(-1, 1)
    return (np.cumsum(h, axis=-2) / counts) @ w


def feed_forward(h, w1, w2):
    """The position-wise MLP of a transformer block, with a ReLU."""
    return np.maximum(h @ w1, 0.0) @ w2


def _block(x, p, eps, *, first="pre", second="pre", axis=-1):
    """One transformer block, each sublayer wired as named; only ``"pre"`` for both is right.

    ``"post"`` normalizes after the residual add, ``"pre_and_post"`` normalizes the
    sublayer's input and again after the residual add, ``"skip_normalized"`` replaces the
    residual stream by its normalized value, ``"output"`` normalizes the sublayer's
    output, and ``second="reads_x"`` feeds the block's input to the second sublayer.
    """
    x = np.asarray(x, np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}

    def norm(h, i):
        return _layer_norm(h, p[f"gamma{i}"], p[f"beta{i}"], eps, axis)

    def sublayer(h, f, i, how):
        if how == "pre":
            return h + f(norm(h, i))
        if how == "post":
            return norm(h + f(h), i)
        if how == "pre_and_post":
            return norm(h + f(norm(h, i)), i)
        if how == "skip_normalized":
            h = norm(h, i)
            return h + f(h)
        if how == "output":
            return h + norm(f(h), i)
        raise ValueError(how)

    h = sublayer(x, lambda h: token_mixing(h, p["w_mix"]), 1, first)
    ff = lambda h: feed_forward(h, p["w1"], p["w2"])  # noqa: E731
    if second == "reads_x":
        return h + ff(norm(x, 2))
    return sublayer(h, ff, 2, second)


class PreLNBlock(ArrayTask):
    """``pre_ln_block(x, params, eps=1e-5) -> y``: one pre-LN transformer block on x of shape (N, T, D).

    ``params`` holds ``gamma1, beta1, w_mix`` (first sublayer, `token_mixing`) and
    ``gamma2, beta2, w1, w2`` (second sublayer, `feed_forward`).
    """

    name = "pre_ln_block"
    chapter = 7
    points = 2.0

    def make_cases(self):
        r = np.random.default_rng(73)
        cases = []
        for (n, t, d), dtype in [((2, 5, 8), np.float64), ((3, 7, 6), np.float64), ((2, 4, 12), np.float32)]:
            x = _tokens(r, (n, t, d)).astype(dtype)
            params = {
                "gamma1": r.normal(1, 0.3, d), "beta1": r.normal(0, 0.3, d),
                "w_mix": r.normal(0, 1 / np.sqrt(d), (d, d)),
                "gamma2": r.normal(1, 0.3, d), "beta2": r.normal(0, 0.3, d),
                "w1": r.normal(0, 1 / np.sqrt(d), (d, 2 * d)), "w2": r.normal(0, 1 / np.sqrt(2 * d), (2 * d, d)),
            }
            cases.append({"args": [x, {k: v.astype(dtype) for k, v in params.items()}], "kwargs": {"eps": 1e-5}})
        return cases

    def reference(self, x, params, eps=1e-5):
        def norm(h, i):
            return nl.layer_norm_forward(h, h.shape[-1:], params[f"gamma{i}"], params[f"beta{i}"], eps=eps)[0]

        h = x + token_mixing(norm(x, 1), params["w_mix"])
        return (h + feed_forward(norm(h, 2), params["w1"], params["w2"]),)

    def mistakes(self, x, params, eps=1e-5):
        def wiring(**how):
            return lambda x, p, eps=eps: (_block(x, p, eps, **how),)

        post = ("the block normalizes after the residual add, as post-LN does; in a pre-LN block the residual "
                "stream is never normalized")
        return [
            (post, wiring(first="post", second="post")),
            (post, wiring(first="post")),
            (post, wiring(second="post")),
            (post, wiring(first="pre_and_post", second="pre_and_post")),
            (post, wiring(first="pre_and_post")),
            (post, wiring(second="pre_and_post")),
            ("the skip connection carries the normalized x; it must carry the block's input unchanged",
             wiring(first="skip_normalized", second="skip_normalized")),
            ("the norm is applied to each sublayer's output; pre-LN normalizes what goes into the sublayer",
             wiring(first="output", second="output")),
            ("the second sublayer reads the block's input; it must read the output of the first residual add",
             wiring(second="reads_x")),
            ("wrong axes: the norms average over the tokens (axis T); LayerNorm averages each token's features "
             "(the last axis, D)", wiring(axis=-2)),
        ]


TASKS = [RMSNormForward(), RMSNormBackward(), PreLNBlock()]
