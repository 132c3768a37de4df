"""The book's numeric claims are reproducible: ``pytest --nbval-lax`` over every chapter.

How to mark a claim (for chapter writers)
-----------------------------------------
Give a code cell that *prints* a key number of your chapter the cell tag ``nbval-check-output``
(in MyST: ``:tags: [nbval-check-output]`` under the ``{code-cell}`` line), and print at a stable
precision (``print(f"std = {s:.3f}")``, not ``print(s)``). nbval reads that tag natively under
``--nbval-lax``. Test markers never appear in the text a reader sees: a ``# NBVAL_...`` comment in
a cell fails this test (DESIGN.md, "The book reads like a good textbook page"). Only tagged cells
are compared; every other cell must still run without error. Tag text outputs only (nbval does not
compare images). Every numbered chapter (``book/NN_*.md``) needs at least one tagged cell. Use
fixed seeds and ``torch.set_num_threads(1)``-independent maths: a claim that changes between two
runs on the same machine fails here. ``nbval_sanitize.cfg`` (next to this file) absorbs round-off
below 1e-13, ``-0.000`` vs ``0.000``, and digits past the 6th decimal.

Where the reference outputs come from
-------------------------------------
A MyST ``.md`` chapter has no stored outputs, so nbval needs a reference from somewhere. Executing
the notebook here once to make the reference and again to check it would only prove that two runs
in one test agree. Instead the reference is the run that *made the book*: ``make book`` executes
every chapter and myst-nb writes it, outputs included, to ``_build/jupyter_execute/book/NAME.ipynb``.
This test converts each ``book/NAME.md`` with jupytext, checks that the built notebook has exactly
the same code (so a stale build cannot be the reference), then lets nbval re-run the built notebook
in a fresh kernel and compare the marked cells. A pass therefore means: the numbers printed in
the published HTML are the numbers the code produces, again, in a new process.

Without a build the tests skip (they fail under ``CI``, where ``make test`` has just built the book).
"""
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("NORMLAB_BOOK_BUILD", REPO / "_build"))
EXECUTED = BUILD / "jupyter_execute"
SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")
TAG = "nbval-check-output"  # nbval maps it to its NBVAL_CHECK_OUTPUT marker
COMMENT_MARKER = re.compile(r"^\s*#\s*(NBVAL_\w+|PYTEST_VALIDATE_\w+)", flags=re.M)


def toc_notebooks():
    """The .md pages of _toc.yml that are notebooks (they carry jupytext front matter)."""
    toc = (REPO / "_toc.yml").read_text()
    names = re.findall(r"^\s*(?:root|-?\s*file):\s*(\S+)\s*$", toc, flags=re.M)
    pages = [REPO / (name.removesuffix(".md") + ".md") for name in names]
    return [p.relative_to(REPO).with_suffix("").as_posix() for p in pages if "jupytext:" in p.read_text()]


def is_numbered_chapter(name):
    return re.fullmatch(r"book/\d\d_\w+", name) is not None


def is_tagged(cell):
    return TAG in cell.get("metadata", {}).get("tags", [])


def code_sources(nb):
    return [cell.source.strip() for cell in nb.cells if cell.cell_type == "code"]


def run_nbval(notebook, workdir):
    """Run ``pytest --nbval-lax`` on one notebook in a subprocess; return (returncode, output, junit root)."""
    junit = workdir / "junit.xml"
    cmd = [
        sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
        f"--nbval-sanitize-with={SANITIZE}", "--nbval-cell-timeout=600",
        "-p", "no:cacheprovider", "-q", f"--junitxml={junit}", str(notebook),
    ]  # fmt: skip
    # cwd=workdir: the inner pytest finds no project config and collects only this notebook.
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=1800)
    output = proc.stdout + proc.stderr
    root = ET.parse(junit).getroot() if junit.exists() else None
    return proc.returncode, output, root


def passed_cases(junit_root):
    cases = junit_root.iter("testcase")
    return [c.get("name") for c in cases if not any(child.tag in ("failure", "error", "skipped") for child in c)]


def require_reference(path):
    if path.is_file():
        return
    message = f"{path} is missing: run `make book` first (it writes the executed chapters nbval compares against)"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so a missing build is a failure)")
    pytest.skip(message)


@pytest.mark.slow
@pytest.mark.parametrize("name", toc_notebooks())
def test_chapter_claims_reproduce(name, tmp_path):
    import jupytext
    import nbformat

    reference = EXECUTED / f"{name}.ipynb"
    require_reference(reference)
    source = jupytext.read(REPO / f"{name}.md")
    built = nbformat.read(reference, as_version=4)
    assert code_sources(built) == code_sources(source), (
        f"{reference} was built from a different version of {name}.md: run `make book` again"
    )

    comments = [c.source for c in built.cells if c.cell_type == "code" and COMMENT_MARKER.search(c.source)]
    assert not comments, (
        f"{name}.md shows a test marker as a comment; use the cell tag {TAG!r} instead:\n"
        + "\n---\n".join(src[:200] for src in comments)
    )
    marked = [cell for cell in built.cells if cell.cell_type == "code" and is_tagged(cell)]
    if is_numbered_chapter(name):
        assert marked, f"{name}.md tags no cell {TAG!r}: tag the cells that print its key numbers"
    for cell in marked:
        assert cell.get("outputs"), f"{name}: a {TAG!r} cell has no output to compare:\n{cell.source[:200]}"

    # The build runs each chapter with its own folder as the working directory (a chapter may
    # read committed files, e.g. bench/results). The copy lives in tmp_path, so its first cell
    # moves the kernel there; nothing is written into the repository.
    chdir = nbformat.v4.new_code_cell(f"import os\nos.chdir({str((REPO / name).parent)!r})")
    built.cells.insert(0, chdir)
    notebook = tmp_path / reference.name
    nbformat.write(built, notebook)
    returncode, output, junit = run_nbval(notebook, tmp_path)
    assert returncode == 0, f"nbval failed on {name}:\n{output[-6000:]}"
    assert junit is not None, f"nbval wrote no report for {name}:\n{output[-2000:]}"
    ran = len(passed_cases(junit))
    assert ran == len(code_sources(built)), f"only {ran} cells of {name} passed:\n{output[-2000:]}"


def _tiny_notebook(printed, stored, tagged=True):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(f"print({printed!r})", execution_count=2)
    if tagged:
        cell.metadata["tags"] = [TAG]
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored + "\n")]
    nb.cells = [nbformat.v4.new_code_cell("x = 1", execution_count=1), cell]
    return nb


@pytest.mark.parametrize(
    "printed, stored, tagged, should_pass",
    [
        ("std = 0.583", "std = 0.583", True, True),
        ("std = 0.583", "std = 0.584", True, False),  # a changed claim in a tagged cell is caught
        ("std = 0.583", "std = 0.584", False, True),  # an untagged cell is not compared (--nbval-lax)
        ("dbias = -0.000", "dbias = 0.000", True, True),  # the sign of zero is noise
        ("dbias = 3.1e-17", "dbias = -2.2e-16", True, True),  # so is round-off
        ("dbias = 3.1e-05", "dbias = -2.2e-05", True, False),  # but a real number is not round-off
    ],
)
def test_tagged_cells_are_really_compared(tmp_path, printed, stored, tagged, should_pass):
    """The mechanism itself: nbval reads the cell tag, and with our sanitize file fails on a
    changed claim and passes on noise."""
    import nbformat

    notebook = tmp_path / "tiny.ipynb"
    nbformat.write(_tiny_notebook(printed, stored, tagged), notebook)
    returncode, output, _ = run_nbval(notebook, tmp_path)
    assert (returncode == 0) == should_pass, output[-3000:]


def test_book_sources_show_no_test_markers():
    """No page of the book carries a visible ``NBVAL`` marker; tags are the only mechanism."""
    offenders = []
    for page in sorted((REPO / "book").glob("*.md")):
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if "NBVAL" in line:
                offenders.append(f"{page.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "visible test markers (use the cell tag instead):\n" + "\n".join(offenders)
