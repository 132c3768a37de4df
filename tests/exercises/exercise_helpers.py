"""Helpers for the exercise tests: paths, and running nbval in a subprocess."""
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from normlab import exercises

ROOT = Path(__file__).resolve().parents[2]


def check_cell_indices(notebook_path):
    """0-based positions, among code cells, of the check cells (nbval names its items ``Cell <that index>``)."""
    import nbformat

    nb = nbformat.read(notebook_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    return {i for i, c in enumerate(code) if exercises.is_check_cell(c)}, len(code)


def run_nbval(notebooks, workdir):
    """Run ``pytest --nbval-lax`` on copies of ``notebooks`` in a subprocess.

    Returns the exit code and ``{(notebook name, cell index): passed}`` parsed from the JUnit report.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    names = []
    for nb in notebooks:
        (workdir / nb.name).write_bytes(nb.read_bytes())
        names.append(nb.name)
        for support in exercises.SUPPORT_FILES:  # the sanitize rules and the conftest that applies them
            if (nb.parent / support).is_file():
                (workdir / support).write_bytes((nb.parent / support).read_bytes())
    report = workdir / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
         f"--junitxml={report}", *names],
        cwd=workdir, capture_output=True, text=True, timeout=300,
    )
    results = {}
    for case in ET.parse(report).iter("testcase"):
        match = re.fullmatch(r"Cell (\d+)", case.attrib["name"])
        assert match, f"unexpected nbval item {case.attrib}"
        failed = any(child.tag in ("failure", "error") for child in case)
        results[(case.attrib["classname"].split("/")[-1], int(match.group(1)))] = not failed
    return proc.returncode, results, proc.stdout
