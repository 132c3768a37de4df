"""Runs inside the student's kernel: call the student's function on a task's cases, write plain outputs.

The grader sends the cases (inputs only, never expected values) as a pickle it
wrote itself, and reads back JSON + npz (see `plain`), never a pickle, because
by then the student's code has run in this process and could have changed
anything here. Whatever it changes can only change its own outputs, which the
grader judges in its own process.
"""
import pickle
import signal
import time

from .plain import dump


class _CallTimeout(BaseException):
    """Raised by SIGALRM inside a student's call; BaseException so that a bare ``except Exception`` misses it."""


def _on_alarm(signum, frame):
    raise _CallTimeout


def _error_text(e):
    message = str(e)
    return (f"{type(e).__name__}: {message}" if message else type(e).__name__)[:300]


def call_with_limit(fn, args, kwargs, seconds):
    """``(result, error)`` of ``fn(*args, **kwargs)``; error is ``"Type: message"`` or None. Never raises."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    timeout = f"TimeoutError: the call took more than {seconds:g} s"
    try:
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            result = fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        # a function that caught the alarm and returned late still ran past its limit
        return (None, timeout) if time.monotonic() - start > seconds else (result, None)
    except _CallTimeout:
        return None, timeout
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a student's bug is a failed check, not a grader crash
        return None, _error_text(e)
    finally:
        signal.signal(signal.SIGALRM, previous)


def _note_progress(path, index):
    """Tell the worker which call is running, so that it can time each call (see ``worker.execute``)."""
    if path is None:
        return
    try:
        with open(path, "w") as f:
            f.write(str(index))
    except OSError:  # the student may have made this impossible; the task's overall budget still holds
        pass


def run_task(namespace, function, cases_path, json_path, npz_path, seconds, progress_path=None):
    """Call ``namespace[function]`` on every case in ``cases_path``; write ``{"outputs": [...]}`` or ``{"missing": ...}``.

    Before each call its number goes into ``progress_path``.
    """
    with open(cases_path, "rb") as f:
        cases = pickle.load(f)  # written by the grader, not by the student
    fn = namespace.get(function)
    if not callable(fn):
        found = "not defined" if fn is None else f"a {type(fn).__name__}, not a function"
        dump({"missing": f"`{function}` is {found}"}, json_path, npz_path)
        return
    outputs, timed_out = [], False
    for index, case in enumerate(cases):
        args, kwargs = list(case.get("args", [])), dict(case.get("kwargs", {}))
        if timed_out:  # one runaway call is enough: do not spend the limit again on every case
            outputs.append({"result": None, "args": args, "error": "not run: an earlier call timed out"})
            continue
        _note_progress(progress_path, index)
        result, error = call_with_limit(fn, args, kwargs, seconds)
        timed_out = error is not None and error.startswith("TimeoutError: the call took")
        outputs.append({"result": result, "args": args, "error": error})
    _note_progress(progress_path, "done")
    dump({"outputs": outputs}, json_path, npz_path)
