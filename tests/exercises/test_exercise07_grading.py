"""Exercise 07 through the instructor's grader: full marks for the solutions, zero for the blank
notebook, and partial credit with the named mistake for a post-LN block."""
import csv
import json
import shutil
import subprocess
import sys

import nbformat
import pytest
from exercise_helpers import ROOT

from normlab import exercises
from normlab.check import tasks_for_chapter

POST_LN_BLOCK = '''def pre_ln_block(x, params, eps=1e-5):
    p = params
    h = layer_norm(x + token_mixing(x, p["w_mix"]), p["gamma1"], p["beta1"], eps)
    return layer_norm(h + feed_forward(h, p["w1"], p["w2"]), p["gamma2"], p["beta2"], eps)
'''


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("grade07")
    root = base / "repo"
    (root / "solutions").mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / "07.md", root / "solutions" / "07.md")
    exercises.generate(root, base / "blank", base / "completed", log=lambda msg: None)

    submissions = base / "submissions"
    submissions.mkdir()
    shutil.copy(base / "completed" / "07.ipynb", submissions / "alice_07.ipynb")
    shutil.copy(base / "blank" / "07.ipynb", submissions / "blank_07.ipynb")
    nb = nbformat.read(base / "completed" / "07.ipynb", as_version=4)
    block = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("def pre_ln_block")]
    assert len(block) == 1
    block[0].source = POST_LN_BLOCK
    nbformat.write(nb, submissions / "bob_07.ipynb")

    out, report = base / "grades.csv", base / "grades.json"
    proc = subprocess.run([sys.executable, "-m", "normlab.cli", "grade", str(submissions), "--out", str(out),
                           "--json", str(report), "-q"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(out.open())}
    entries = {e["path"].split("/")[-1]: e for e in json.loads(report.read_text())["submissions"]}
    return rows, entries


def test_solutions_get_full_marks_and_blank_gets_zero(graded):
    rows, _ = graded
    full = sum(t.points for t in tasks_for_chapter(7))
    assert full == 7
    assert (rows["alice_07.ipynb"]["chapter"], float(rows["alice_07.ipynb"]["score"])) == ("7", full)
    assert float(rows["alice_07.ipynb"]["max_score"]) == full
    assert (rows["blank_07.ipynb"]["status"], float(rows["blank_07.ipynb"]["score"])) == ("ok", 0)


def test_post_ln_block_loses_only_its_task_and_is_named(graded):
    rows, entries = graded
    assert float(rows["bob_07.ipynb"]["score"]) == 5
    tasks = {t["name"]: t for t in entries["bob_07.ipynb"]["tasks"]}
    assert tasks["pre_ln_block"]["score"] == 0 and tasks["rms_norm_backward"]["score"] == 3
    assert all("normalizes after the residual add" in m for m in tasks["pre_ln_block"]["messages"])
