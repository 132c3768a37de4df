"""`pip install normlab` and `pip install 'normlab[grade]'` from a built wheel, in a fresh virtual environment.

Without the extra, `normlab grade` must stop before grading with one line that names it, exit non-zero and
write nothing; with it, a reference solution is graded to full marks. Not the repository's `make`: a
non-editable install, as an instructor gets it from an index.
"""
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run(*args, cwd=None, timeout=900):
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_grade_extra_in_a_fresh_venv(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source)
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("normlab-*.whl"))
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    assert run(base, "-m", "venv", venv).returncode == 0
    python = venv / "bin" / "python"
    plain = run(python, "-m", "pip", "install", "-q", wheel)
    assert plain.returncode == 0, plain.stderr

    subs = tmp_path / "subs"
    subs.mkdir()
    jupytext.write(jupytext.read(REPO / "solutions" / "05.md"), subs / "alice_05.ipynb", fmt="ipynb")
    for command in ([venv / "bin" / "normlab"], [python, "-m", "normlab"]):
        missing = run(*command, "grade", subs, "--out", tmp_path / "g.csv", cwd=tmp_path)
        assert missing.returncode == 3
        assert missing.stderr.count("\n") == 1 and "pip install 'normlab[grade]'" in missing.stderr, missing.stderr
        assert missing.stdout == "" and not (tmp_path / "g.csv").exists()

    extra = run(python, "-m", "pip", "install", "-q", f"normlab[grade] @ {wheel.as_uri()}")
    assert extra.returncode == 0, extra.stderr
    graded = run(venv / "bin" / "normlab", "grade", subs, "--out", tmp_path / "g.csv", "--json", tmp_path / "g.json",
                 "-q", cwd=tmp_path)
    assert graded.returncode == 0, graded.stderr
    row = next(csv.DictReader((tmp_path / "g.csv").open()))
    assert (row["student_id"], row["status"], row["total"], row["max_total"]) == ("alice", "ok", "5", "5"), row
