"""Exercise 09's checkers catch and name the classic mistakes, and ``normlab grade`` grades the notebook.

The generic exercise tests (tests/exercises/) already run every checker on the
reference solution and on a blank, and nbval on the notebooks; here each mutant
makes one classic mistake of distributed BatchNorm, written independently of
the checker's own wrong variants.
"""
import json
import subprocess
import sys
from pathlib import Path

import jupytext
import numpy as np
import pytest

from normlab import exercises
from normlab.check import TASKS, run

ROOT = Path(__file__).resolve().parents[2]


def _solutions():
    namespace = {}
    for cell in jupytext.read(ROOT / "solutions" / "09.md").cells:
        if cell.cell_type == "code" and not exercises.is_check_cell(cell):
            exec(compile(cell.source, "09.md", "exec"), namespace)  # noqa: S102 - our own solution
    return namespace


SOL = _solutions()


def _channel_shape(a):
    return (1, a.shape[1]) + (1,) * (a.ndim - 2)


def _merge_without_mean_term(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    n = n_a + n_b
    return n, (n_a * mean_a + n_b * mean_b) / n, m2_a + m2_b


def _merge_equal_weights(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    n, _, m2 = SOL["merge_two_ranks"](n_a, mean_a, m2_a, n_b, mean_b, m2_b)
    return n, (mean_a + mean_b) / 2, m2


def _running(variance):
    def mutant(counts, means, m2s, running_mean, running_var, momentum=0.1):
        n = counts.sum()
        mean = (counts[:, None] * means).sum(0) / n
        m2 = m2s.sum(0) + (counts[:, None] * (means - mean) ** 2).sum(0)
        var = variance(counts, m2s, m2, n)
        return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var
    return mutant


def _backward(count=None, own_sums=False):
    def mutant(dy, x_hat, gamma, inv_std, sums_dy, sums_dy_xhat, total_count):
        axes = (0,) + tuple(range(2, dy.ndim))
        if own_sums:
            sums_dy, sums_dy_xhat = dy.sum(axis=axes)[None], (dy * x_hat).sum(axis=axes)[None]
        n = count(dy) if count else total_count
        shape = _channel_shape(dy)
        return (gamma * inv_std).reshape(shape) * (dy - sums_dy.sum(0).reshape(shape) / n
                                                   - x_hat * sums_dy_xhat.sum(0).reshape(shape) / n)
    return mutant


MUTANTS = [
    ("merge_two_ranks", _merge_without_mean_term, "without the mean term"),
    ("merge_two_ranks", _merge_equal_weights, "equal weights"),
    ("sync_running_stats", _running(lambda counts, m2s, m2, n: m2 / n), "biased global variance"),
    ("sync_running_stats", _running(lambda counts, m2s, m2, n: m2s.sum(0) / (n - 1)), "without the mean term"),
    ("sync_running_stats", _running(lambda counts, m2s, m2, n: m2 / (counts[0] - 1)), "local count"),
    ("sync_running_stats",  # the mean of the ranks' own unbiased variances
     _running(lambda counts, m2s, m2, n: np.mean([m2s[r] / (counts[r] - 1) for r in range(len(counts))
                                                  if counts[r] > 1], axis=0)), "without the mean term"),
    ("sync_batch_norm_backward", _backward(count=lambda dy: dy.shape[0]), "local count"),  # rows only
    ("sync_batch_norm_backward", _backward(count=lambda dy: dy.size // dy.shape[1]), "local count"),
    ("sync_batch_norm_backward", _backward(own_sums=True), "own sums"),
    ("sync_batch_norm_backward",
     lambda dy, x_hat, gamma, inv_std, *sums: (gamma * inv_std).reshape(_channel_shape(dy)) * dy, "as constants"),
]


@pytest.mark.parametrize("name, mutant, phrase", MUTANTS, ids=[f"{m[0]}:{m[2]}" for m in MUTANTS])
def test_classic_mistake_is_caught_and_named(name, mutant, phrase):
    checks = run(TASKS[name], mutant)
    failed = [c for c in checks if not c.passed]
    assert failed, f"{name} did not catch: {phrase}"
    assert any(phrase in c.message for c in failed), [c.message for c in failed]


def test_reference_is_batchnorm_on_the_full_batch_not_the_solution():
    """The expected values come from normlab on the concatenated batch: check one against numpy by hand."""
    task = TASKS["merge_two_ranks"]
    case = task.cases()[0]
    n, mean, m2 = task.reference(*case["args"])
    n_a, mean_a, m2_a, n_b, mean_b, m2_b = case["args"]
    assert n == n_a + n_b
    np.testing.assert_allclose(mean, (n_a * mean_a + n_b * mean_b) / n, rtol=1e-12)
    np.testing.assert_allclose(m2, m2_a + m2_b + (mean_b - mean_a) ** 2 * n_a * n_b / n, rtol=1e-12)


def test_normlab_grade_gives_full_marks_to_the_solution_and_zero_to_the_blank(tmp_path):
    executed = exercises.execute(exercises.read_solution(ROOT / "solutions" / "09.md"), ROOT / "solutions" / "09.md")
    solved = tmp_path / "solved.ipynb"
    solved.write_text(exercises.render(executed, "09", keep_answers=True), encoding="utf-8")
    blank = tmp_path / "blank.ipynb"
    blank.write_bytes((ROOT / "exercises" / "09.ipynb").read_bytes())
    report = tmp_path / "grades.json"
    proc = subprocess.run([sys.executable, "-m", "normlab.cli", "grade", str(solved), str(blank), "-q",
                           "--out", str(tmp_path / "grades.csv"), "--json", str(report)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    entries = {Path(e["path"]).name: e for e in json.loads(report.read_text())["submissions"]}
    points = sum(t.points for t in TASKS.values() if t.chapter == 9)
    assert entries["solved.ipynb"]["chapter"] == 9
    assert entries["solved.ipynb"]["score"] == entries["solved.ipynb"]["max_score"] == points
    assert entries["blank.ipynb"]["score"] == 0 and entries["blank.ipynb"]["max_score"] == points
