"""The one cap on how many threads normlab's compiled CPU kernels run on.

By default every launch of a Numba kernel uses one thread per core that no
other process is using (`normlab.kernels.numba_norms.threads_now`). That is
the fastest choice for a user, but it ignores ``numba.set_num_threads``: a
benchmark that pins every library to one thread must pin normlab here, with
``normlab.set_num_threads(1)`` or ``NORMLAB_NUM_THREADS=1`` in the environment.
The cap only lowers the number of threads; the work is still split into the
same tasks, so results do not change with it. This module does not import
Numba, so setting the cap costs nothing in a session that never launches a kernel.
"""
import operator
import os

ENV_VAR = "NORMLAB_NUM_THREADS"


def _checked(n, source):
    """``n`` as a positive int, or None for no cap; anything else is a ValueError naming ``source``."""
    if n is None:
        return None
    if isinstance(n, bool):  # True is an int to Python, but never a thread count
        raise ValueError(f"{source} must be a positive integer or None, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise ValueError(f"{source} must be a positive integer or None, got {n!r}") from None
    if n < 1:
        raise ValueError(f"{source} must be at least 1 (None removes the cap), got {n}")
    return n


def cap_from_env(environ=os.environ):
    """The cap that ``NORMLAB_NUM_THREADS`` asks for: None when it is unset or empty."""
    text = environ.get(ENV_VAR, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{ENV_VAR} must be a positive integer, got {text!r}") from None
    return _checked(value, ENV_VAR)


_cap = cap_from_env()


def set_num_threads(n):
    """Run normlab's compiled CPU kernels on at most ``n`` threads; ``None`` removes the cap.

    Without a cap each launch uses one thread per free core. ``n`` larger than the
    number of cores is allowed and then changes nothing. A bad ``n`` (0, negative,
    not an integer) raises ValueError and leaves the cap as it was.
    """
    global _cap
    _cap = _checked(n, "normlab.set_num_threads(n): n")


def get_num_threads():
    """The cap set by `set_num_threads` or ``NORMLAB_NUM_THREADS``, or None when there is none."""
    return _cap
