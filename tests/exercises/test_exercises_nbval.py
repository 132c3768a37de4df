"""nbval: completed notebooks reproduce the reference check outputs; blank exercises fail every check cell."""
import shutil
import subprocess
import sys

import nbformat
from exercise_helpers import ROOT, check_cell_indices, run_nbval

from normlab import exercises


def test_completed_notebooks_pass_nbval(generated, tmp_path):
    _, completed_dir = generated
    notebooks = sorted(completed_dir.glob("*.ipynb"))
    assert len(notebooks) == len(list((ROOT / "solutions").glob("[0-9][0-9].md"))) >= 7
    returncode, results, stdout = run_nbval(notebooks, tmp_path)
    assert returncode == 0, stdout[-3000:]
    for nb in notebooks:
        checks, code_cells = check_cell_indices(nb)
        assert checks, nb.name
        ran = {i for (name, i) in results if name == nb.name}
        assert ran == set(range(code_cells)), f"{nb.name}: nbval ran cells {sorted(ran)}"
        assert all(results[(nb.name, i)] for i in checks)


def test_blank_exercises_fail_every_check_cell(tmp_path):
    notebooks = sorted((ROOT / "exercises").glob("*.ipynb"))
    assert len(notebooks) == len(list((ROOT / "solutions").glob("[0-9][0-9].md"))) >= 7
    returncode, results, stdout = run_nbval(notebooks, tmp_path)
    assert returncode != 0
    for nb in notebooks:
        checks, code_cells = check_cell_indices(nb)
        for i in range(code_cells):
            assert (nb.name, i) in results, f"{nb.name} cell {i} did not run"
            if i in checks:
                assert not results[(nb.name, i)], f"{nb.name}: blank check cell {i} passed"
            else:  # definitions of unfinished functions run fine; only the checks object
                assert results[(nb.name, i)], f"{nb.name}: non-check cell {i} failed"


def test_the_documented_command_from_the_repo_root(generated, tmp_path):
    """`pytest --nbval-lax exercises/01.ipynb` run at the repository root (its pyproject.toml, the folder's
    conftest.py): a notebook whose code is complete passes against the stored "(expected ...)" outputs, and
    without the sanitize rules the same notebook would fail, so the rules are what makes it pass."""
    _, completed_dir = generated
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "exercises", root / "exercises")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    student = nbformat.read(root / "exercises" / "01.ipynb", as_version=4)
    completed = nbformat.read(completed_dir / "01.ipynb", as_version=4)
    for mine, answer in zip(student.cells, completed.cells):  # fill in the code; keep the stored outputs
        if mine.cell_type == "code":
            mine.source = answer.source
    assert any(o.get("text", "").startswith(exercises.EXPECTED_PREFIX) for c in student.cells
               for o in c.get("outputs", []))
    nbformat.write(student, root / "exercises" / "01.ipynb")

    def nbval(*extra):
        return subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                               *extra, "exercises/01.ipynb"], cwd=root, capture_output=True, text=True,
                              timeout=300)

    done = nbval()
    assert done.returncode == 0, done.stdout[-3000:]
    (root / "exercises" / "conftest.py").unlink()
    bare = nbval()
    assert bare.returncode != 0 and "checks passed" in bare.stdout
