"""The generator: exercises/ is up to date, blanks hide every answer, and the output format suits nbval."""
import json
import shutil
import subprocess
import sys

import jupytext
import nbformat
import pytest

from normlab import exercises
from normlab.check import TASKS

from exercise_helpers import ROOT

SOLUTIONS = exercises.solution_files(ROOT)


def test_exercises_match_a_fresh_generation(generated):
    """The drift check: a commit that changes solutions/ must also commit the regenerated exercises/."""
    exercise_dir, _ = generated
    assert exercises.stale_files(ROOT, exercise_dir) == []


def test_every_chapter_has_a_solution_and_tasks():
    chapters = sorted({t.chapter for t in TASKS.values()})
    assert {1, 2, 3, 4, 5, 6, 7, 8} <= set(chapters)
    assert [p.stem for p in SOLUTIONS] == [f"{c:02d}" for c in chapters]
    for chapter in chapters:
        tasks = [t for t in TASKS.values() if t.chapter == chapter]
        assert 2 <= len(tasks) <= 4, f"chapter {chapter} has {len(tasks)} coded tasks"


def _solution_lines(path):
    """Non-trivial lines inside the solution markers, ``(code, text)``: none may reach an exercise."""
    nb = jupytext.read(path)
    lines, text = [], []
    for cell in nb.cells:
        if cell.cell_type == "code":
            inside = False
            for line in cell.source.splitlines():
                if line.strip() == exercises.CODE_BEGIN:
                    inside = True
                elif line.strip() == exercises.CODE_END:
                    inside = False
                elif inside and len(line.strip()) > 12:
                    lines.append(line.strip())
        else:
            for block in exercises.TEXT_SOLUTION.findall(cell.source):
                text += [s.strip() for s in block.splitlines()[1:-1] if len(s.strip()) > 12]
    assert lines and text, f"{path} lacks code or written solution blocks"
    return lines, text


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_exercise_hides_answers_and_keeps_only_check_outputs(solution):
    exercise = ROOT / "exercises" / f"{solution.stem}.ipynb"
    nb = nbformat.read(exercise, as_version=4)
    nbformat.validate(nb)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    text = "\n".join(c.source for c in nb.cells)
    code_lines, text_lines = _solution_lines(solution)
    for line in code_lines:
        assert line not in code, f"{exercise.name} leaks a solution line: {line!r}"
    for line in text_lines:
        assert line not in text, f"{exercise.name} leaks a written answer: {line!r}"
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert text.count("raise NotImplementedError()") >= 2
    answers = [c for c in nb.cells if "answer" in c.metadata.get("tags", [])]
    assert 1 <= len(answers) <= 2 and all(c.source == exercises.ANSWER_PROMPT for c in answers)
    assert nb.metadata.kernelspec.name == "python3"

    checks = [c for c in nb.cells if exercises.is_check_cell(c)]
    assert len(checks) == len([t for t in TASKS.values() if t.chapter == int(solution.stem)])
    for cell in nb.cells:
        if exercises.is_check_cell(cell):
            # nbval compares this cell by its tag; no test marker shows in the student's code
            assert exercises.COMPARE_TAG in cell.metadata.tags and "NBVAL" not in cell.source
            summary = "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream")
            assert summary.endswith(" checks passed\n") and summary.count("\n") == 1, summary
            assert summary.startswith(exercises.EXPECTED_PREFIX), "a blank notebook must not look as if it passes"
            n, total = summary.split(": ")[1].split(" ")[0].split("/")
            assert n == total, f"the reference fails its own check: {summary!r}"
        elif cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_signatures_and_docstrings_survive_blanking():
    source = 'def f(x, eps=1e-5):\n    """Doc."""\n    y = 1\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n'
    assert exercises.blank_code(source) == 'def f(x, eps=1e-5):\n    """Doc."""\n    y = 1\n    raise NotImplementedError()'


@pytest.mark.parametrize("source", ["### BEGIN SOLUTION\nx = 1\n", "x = 1\n### END SOLUTION\n",
                                    "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n"])
def test_unbalanced_markers_are_an_error(source):
    with pytest.raises(ValueError, match="SOLUTION"):
        exercises.blank_code(source, "here")


def test_written_answers_become_a_prompt():
    text = "Q?\n\n<!-- BEGIN SOLUTION -->\nsecret\nanswer\n<!-- END SOLUTION -->\n"
    assert exercises.blank_text(text) == f"Q?\n\n{exercises.ANSWER_PROMPT}\n"


def test_stale_missing_and_extra_files_are_named(generated, tmp_path):
    exercise_dir, _ = generated
    root = tmp_path / "repo"
    shutil.copytree(exercise_dir, root / "exercises")
    (root / "exercises" / "02.ipynb").unlink()
    stale = root / "exercises" / "03.ipynb"
    nb = json.loads(stale.read_text())
    nb["cells"][0]["source"] += " edited by hand"
    stale.write_text(json.dumps(nb))
    (root / "exercises" / "99.ipynb").write_text("{}")
    assert exercises.stale_files(root, exercise_dir) == [
        "exercises/02.ipynb is missing", "exercises/03.ipynb is stale", "exercises/99.ipynb has no solutions/99.md"]


def test_check_command_exits_nonzero_and_names_stale_files(tmp_path):
    """The CLI on a one-chapter copy of the repository: stale, then rebuilt, then up to date."""
    root = tmp_path / "repo"
    (root / "solutions").mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / "02.md", root / "solutions" / "02.md")
    (root / "exercises").mkdir()
    (root / "exercises" / "02.ipynb").write_text("{}")

    def cli(mode):
        return subprocess.run([sys.executable, "-m", "normlab.exercises", mode, "--root", str(root)],
                              capture_output=True, text=True, timeout=120)

    stale = cli("check")
    assert stale.returncode == 1 and "exercises/02.ipynb is stale" in stale.stderr
    assert cli("build").returncode == 0
    assert (root / "exercises" / "02.ipynb").read_bytes() == (ROOT / "exercises" / "02.ipynb").read_bytes()
    fresh = cli("check")
    assert fresh.returncode == 0, fresh.stderr
