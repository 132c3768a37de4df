"""nbval: completed notebooks reproduce the reference check outputs; blank exercises fail every check cell."""
from exercise_helpers import ROOT, check_cell_indices, run_nbval


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
