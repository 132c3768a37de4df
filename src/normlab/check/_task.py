"""What every exercise checker shares: the `Task` interface, array comparison, and mistake naming.

A task never runs the student's code itself. ``cases()`` gives plain inputs,
something calls the student's function on them (`run` here, in the notebook;
the instructor's grader, in a separate kernel), and ``judge()`` compares the
plain outputs with normlab's reference and with known-wrong variants. Keeping
the two apart is what lets the grader keep expected values out of the
student's process.

Hints give the size and place of an error and name a recognised mistake; they
never print expected values, so a failing check does not leak the answer.
"""
import copy
from dataclasses import dataclass

import numpy as np

# (rtol, atol) per dtype: a float32 answer computed in a different order than the
# reference differs by a few ulps times the reduction length.
TOLERANCES = {np.dtype(np.float64): (1e-6, 1e-8), np.dtype(np.float32): (1e-4, 1e-5)}

# A float64 answer off by no more than float32 round-off: no classic mistake matched, so say what the size means.
FLOAT32_LEVEL = ("a float64 case with only float32-level error: somewhere the computation loses float64 "
                 "precision (a cast to float32), or a small term such as eps is slightly off")


@dataclass
class Check:
    name: str
    passed: bool
    message: str = ""  # "" when passed; otherwise a hint that never reveals expected values


class Task:
    """One coded exercise task. Subclasses set the class attributes and implement `cases` and `judge`."""

    name: str = ""
    chapter: int = 0
    function: str = ""  # the student's function in the notebook; defaults to ``name``
    points: float = 1.0

    def __init__(self):
        if not self.function:
            self.function = self.name

    def cases(self):
        """Deterministic inputs, each ``{"args": [...], "kwargs": {...}}`` of plain, picklable data."""
        raise NotImplementedError

    def judge(self, outputs):
        """``outputs[i] = {"result", "args", "error"}`` for ``cases()[i]``; returns a list of `Check`."""
        raise NotImplementedError

    def cases_for(self, outputs):
        """The cases, after checking that ``outputs`` has one entry per case."""
        cases = self.cases()
        if len(outputs) != len(cases):
            raise ValueError(f"{self.name}: judge got {len(outputs)} outputs for {len(cases)} cases")
        return cases

    def __repr__(self):
        return f"<Task {self.name} (chapter {self.chapter}, {self.points:g} points)>"


# ---------------------------------------------------------------------------------------------------------------
# Running the student's function locally (the notebook's check cells).


def to_plain(obj, _depth=0):
    """Convert a return value to NumPy arrays and Python scalars/containers, so it can be pickled and compared.

    torch tensors and CuPy arrays become NumPy; anything unknown becomes its type name.
    Standalone on purpose: the grader can run it inside the student's kernel.
    """
    if _depth > 5:
        return "<nested too deep>"
    if obj is None or isinstance(obj, (bool, int, float, complex, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, (list, tuple)):
        items = [to_plain(o, _depth + 1) for o in obj]
        return tuple(items) if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        return {str(k): to_plain(v, _depth + 1) for k, v in obj.items()}
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):  # torch.Tensor
        return obj.detach().cpu().numpy().copy()
    if hasattr(obj, "get") and hasattr(obj, "__cuda_array_interface__"):  # cupy.ndarray
        return obj.get()
    if hasattr(obj, "__array__") or hasattr(obj, "__array_namespace__"):
        try:
            return np.asarray(obj).copy()
        except Exception:  # noqa: BLE001 - any foreign array that refuses conversion is just "not an array"
            pass
    return f"<{type(obj).__name__} object>"


def call_case(student_fn, case):
    """Call ``student_fn`` on a fresh copy of one case; never raises."""
    args = copy.deepcopy(list(case.get("args", [])))
    kwargs = copy.deepcopy(dict(case.get("kwargs", {})))
    try:
        result = student_fn(*args, **kwargs)
        error = None
    except Exception as e:  # noqa: BLE001 - a student's bug is a failed check, not a crash
        message = str(e)
        result, error = None, (f"{type(e).__name__}: {message}" if message else type(e).__name__)[:300]
    return {"result": to_plain(result), "args": to_plain(args), "error": error}


def run(task, student_fn):
    """Call ``student_fn`` on every case of ``task`` in this process and judge the outputs."""
    outputs = [call_case(student_fn, case) for case in task.cases()]
    return task.judge(outputs)


class Report(list):
    """The list of `Check` a checker returns; shows nothing in a notebook, since the summary is already printed."""

    def _ipython_display_(self):
        pass

    @property
    def passed(self):
        return sum(c.passed for c in self)


def summary(name, checks):
    """The deterministic lines a check cell prints: one summary line, then one hint per failed check."""
    lines = [f"{name}: {sum(c.passed for c in checks)}/{len(checks)} checks passed"]
    lines += [f"  - {c.name}: {c.message}" for c in checks if not c.passed]
    return "\n".join(lines)


def check_and_print(task, student_fn):
    checks = Report(run(task, student_fn))
    print(summary(task.name, checks))
    return checks


# ---------------------------------------------------------------------------------------------------------------
# Comparison helpers the tasks use in `judge`.


def tolerance(dtype):
    return TOLERANCES.get(np.dtype(dtype), TOLERANCES[np.dtype(np.float32)])


def _close(got, expected, dtype):
    rtol, atol = tolerance(dtype)
    return got.shape == expected.shape and bool(np.allclose(got, expected, rtol=rtol, atol=atol))


def _where(err):
    """Size and position of the largest error, e.g. ``max abs error 3.2e-01 at index (1, 2)``."""
    if err.ndim == 0:
        return f"abs error {float(err):.1e}"
    idx = np.unravel_index(int(np.argmax(err)), err.shape)
    return f"max abs error {float(err[idx]):.1e} at index {tuple(int(i) for i in idx)}"


def as_array(value):
    """The student's value as a float64 NumPy array, or None when it is not numeric."""
    if isinstance(value, (bool, str)) or value is None:
        return None
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return a


def compare(label, got, expected, *, dtype=np.float64, mistakes=()):
    """Check one output against the reference; name a known mistake when ``got`` matches one.

    ``mistakes`` is a sequence of ``(description, wrong_value)``: the outputs a
    classic mistake would give. They are only used to name the error.
    """
    expected = np.asarray(expected, dtype=np.float64)
    a = as_array(got)
    if a is None:
        kind = "None" if got is None else type(got).__name__
        return Check(label, False, f"expected a numeric array, got {kind}")
    if a.shape != expected.shape:
        if a.size == expected.size:
            return Check(label, False, f"wrong shape {a.shape} (right number of elements; reshape or keep the "
                                       f"input's layout), expected shape {expected.shape}")
        return Check(label, False, f"wrong shape {a.shape}, expected shape {expected.shape}")
    if not np.all(np.isfinite(a)):
        idx = np.argwhere(~np.isfinite(a))[0]
        return Check(label, False, f"contains NaN or inf, first at index {tuple(int(i) for i in idx)}")
    narrow = getattr(got, "dtype", None) if isinstance(got, (np.ndarray, np.generic)) else None
    if np.dtype(dtype) == np.float64 and narrow is not None and narrow.kind == "f" and narrow.itemsize < 8:
        # float32 round-off is within the float64 tolerance, so only the dtype shows a silent cast
        return Check(label, False, f"a float64 case returned {narrow}: the computation casts down "
                                   f"somewhere; keep the input's dtype")
    if _close(a, expected, dtype):
        return Check(label, True, "")
    where = _where(np.abs(a - expected))
    for description, wrong in mistakes:
        wrong = np.asarray(wrong, dtype=np.float64)
        if wrong.shape == a.shape and not _close(wrong, expected, dtype) and _close(a, wrong, dtype):
            return Check(label, False, f"{description} ({where})")
    if np.dtype(dtype) == np.float64 and _close(a, expected, np.float32):
        return Check(label, False, f"{FLOAT32_LEVEL} ({where})")
    return Check(label, False, where)


def unpack(result, count, label):
    """Split a result that should be a tuple of ``count`` values; returns (values, failed Check or None)."""
    if count == 1:
        return [result], None
    if not isinstance(result, (tuple, list)) or len(result) != count:
        kind = type(result).__name__ if not isinstance(result, (tuple, list)) else f"{len(result)} values"
        return None, Check(label, False, f"expected a tuple of {count} values, got {kind}")
    return list(result), None


def case_label(i, x):
    """A short, answer-free description of case ``i``: dtype and shape of its main input."""
    x = np.asarray(x)
    return f"case {i + 1} ({x.dtype}, shape {tuple(x.shape)})"


class ArrayTask(Task):
    """A task whose student function returns arrays that are compared one by one with a reference.

    Subclasses give ``outputs`` (names of the returned values), ``make_cases``,
    ``reference(*args, **kwargs)`` returning a tuple of arrays, and optionally
    ``mistakes(*args, **kwargs)`` returning ``[(description, tuple of arrays)]``.
    Each output of each case is one `Check`.
    """

    outputs = ("y",)
    label_arg = 0  # which positional argument describes a case in check names (dtype and shape)

    def make_cases(self):
        raise NotImplementedError

    def reference(self, *args, **kwargs):
        raise NotImplementedError

    def mistakes(self, *args, **kwargs):
        return []

    def student_values(self, output):
        """The values to compare, from one output; ``(values, None)`` or ``(None, failed Check)``."""
        return unpack(output["result"], len(self.outputs), "return value")

    def cases(self):
        return self.make_cases()

    def judge(self, outputs):
        cases = self.cases_for(outputs)
        checks = []
        for i, (case, output) in enumerate(zip(cases, outputs)):
            label = case_label(i, case["args"][self.label_arg])
            names = [f"{label}: {n}" for n in self.outputs]
            if output.get("error") is not None:
                checks.append(Check(names[0], False, f"raised {output['error']}"))
                checks += [Check(n, False, "not checked: the call raised") for n in names[1:]]
                continue
            values, failure = self.student_values(output)
            if failure is not None:
                checks += [Check(n, False, failure.message) for n in names]
                continue
            args, kwargs = copy.deepcopy(case["args"]), copy.deepcopy(case.get("kwargs", {}))
            expected = self.reference(*args, **kwargs)
            wrongs = []
            for description, wrong_fn in self.mistakes(*case["args"], **case.get("kwargs", {})):
                a, k = copy.deepcopy(case["args"]), copy.deepcopy(case.get("kwargs", {}))
                try:
                    wrongs.append((description, wrong_fn(*a, **k)))
                except ValueError:  # a mistake that cannot happen on this case's shapes (it would not broadcast)
                    pass
            dtype = np.asarray(case["args"][self.label_arg]).dtype
            for k, name in enumerate(names):
                mistakes = [(d, w[k]) for d, w in wrongs]
                checks.append(compare(name, values[k], expected[k], dtype=dtype, mistakes=mistakes))
        return checks
