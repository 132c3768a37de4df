"""Generate the student notebooks ``exercises/NN.ipynb`` from the reference solutions ``solutions/NN.md``.

    python -m normlab.exercises build [--root DIR] [--solutions-out DIR]
    python -m normlab.exercises check [--root DIR]

``build`` executes each solution notebook in a fresh ``python3`` kernel, then
writes the exercise: code between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
becomes ``raise NotImplementedError()``, written answers between
``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` become a prompt, and
every output is stripped except those of the check cells (tag ``check``), which
keep the reference run's output (with the cell's position as execution count,
since nbval refuses a reference output on a cell that looks unrun). That output
is stored as visibly expected, ``(expected once your code is complete)
batch_norm_forward: 4/4 checks passed``, so that a blank notebook does not look
as if it passes; the folder's ``nbval_sanitize.cfg`` drops the prefix before
nbval compares, and its ``conftest.py`` applies that file whenever pytest runs
a notebook of the folder without ``--nbval-sanitize-with``. nbval then compares a
student's check outputs with the reference. ``--solutions-out`` also writes the
completed notebooks (answers kept, same outputs, same two files), which must pass nbval.

``check`` regenerates into a temporary folder and exits 1, naming each stale,
missing or extra file, when ``exercises/`` differs.

The output is deterministic (sorted JSON, fixed cell ids, no execution counts
or timestamps) so that the drift check compares like with like.
"""
import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

CHECK_TAG = "check"
COMPARE_TAG = "nbval-check-output"  # nbval --nbval-lax compares the outputs of cells with this tag
CODE_BEGIN, CODE_END = "### BEGIN SOLUTION", "### END SOLUTION"
TEXT_SOLUTION = re.compile(r"<!-- BEGIN SOLUTION -->.*?<!-- END SOLUTION -->", re.DOTALL)
ANSWER_PROMPT = "**YOUR ANSWER HERE**"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
SOLUTION_FILE = re.compile(r"^\d\d\.md$")
EXPECTED_PREFIX = "(expected once your code is complete) "
SANITIZE_FILE = "nbval_sanitize.cfg"
SANITIZE_RULES = r"""# Written by `python -m normlab.exercises build`. The check cells of these notebooks store the reference
# summary as "(expected once your code is complete) NAME: K/K checks passed"; nbval applies this rule to the
# stored and the fresh output alike, so the prefix is dropped before they are compared.

[expected-output-prefix]
regex: (?m)^(\(expected once your code is complete\) )?(\w+: \d+/\d+ checks passed)
replace: \2
"""
CONFTEST = """\
\"\"\"Written by `python -m normlab.exercises build`: `pytest --nbval-lax NN.ipynb` uses nbval_sanitize.cfg.

The check cells store their expected output with a visible prefix; the sanitize file drops it before nbval
compares. An explicit --nbval-sanitize-with wins.
\"\"\"
from pathlib import Path


def pytest_configure(config):
    if getattr(config.option, "nbval_sanitize_with", "") is None:
        config.option.nbval_sanitize_with = str(Path(__file__).with_name("nbval_sanitize.cfg"))
"""
SUPPORT_FILES = {SANITIZE_FILE: SANITIZE_RULES, "conftest.py": CONFTEST}


def default_root():
    """The repository root: the folder above ``src/`` for a source checkout, else the working directory."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "solutions").is_dir() else Path.cwd()


def solution_files(root):
    return sorted(p for p in (Path(root) / "solutions").iterdir() if SOLUTION_FILE.match(p.name))


def is_check_cell(cell):
    return cell.cell_type == "code" and CHECK_TAG in cell.get("metadata", {}).get("tags", [])


def blank_code(source, where="?"):
    """Replace each solution block (markers included) by ``raise NotImplementedError()`` at the marker's indent."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == CODE_BEGIN:
            if inside:
                raise ValueError(f"{where}: nested {CODE_BEGIN}")
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + "raise NotImplementedError()")
        elif stripped == CODE_END:
            if not inside:
                raise ValueError(f"{where}: {CODE_END} without {CODE_BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {CODE_BEGIN} without {CODE_END}")
    return "\n".join(out)


def blank_text(source):
    return TEXT_SOLUTION.sub(ANSWER_PROMPT, source)


def clean_outputs(outputs):
    """Check-cell outputs without execution counts or transient metadata, consecutive streams merged."""
    cleaned = []
    for out in outputs:
        out = dict(out)
        if out.get("output_type") == "stream":
            if cleaned and cleaned[-1].get("output_type") == "stream" and cleaned[-1]["name"] == out["name"]:
                cleaned[-1]["text"] += out["text"]
                continue
            cleaned.append({"name": out["name"], "output_type": "stream", "text": out["text"]})
        elif out.get("output_type") == "execute_result":
            cleaned.append({"data": dict(out["data"]), "execution_count": None, "metadata": {},
                            "output_type": "execute_result"})
        elif out.get("output_type") == "display_data":
            cleaned.append({"data": dict(out["data"]), "metadata": {}, "output_type": "display_data"})
        else:  # an error in a check cell means the reference itself is broken
            raise RuntimeError(f"reference check cell produced {out.get('output_type')}: {out}")
    return cleaned


def mark_expected(outputs):
    """Prefix each summary line of the check cell's stdout, so the stored reference reads as expected output."""
    marked = []
    for out in outputs:
        if out.get("output_type") == "stream" and out["name"] == "stdout":
            lines = out["text"].splitlines(keepends=True)
            out = {**out, "text": "".join(EXPECTED_PREFIX + line if re.match(r"\w+: \d+/\d+ checks passed", line)
                                          else line for line in lines)}
        marked.append(out)
    return marked


def read_solution(path):
    import jupytext

    nb = jupytext.read(path)
    if nb.metadata.get("kernelspec", {}).get("name") != "python3":
        raise ValueError(f"{path}: the jupytext front matter must declare kernelspec name python3")
    return nb


def execute(nb, path, timeout=300):
    """Run a copy of ``nb`` in a fresh python3 kernel, in a temporary working directory."""
    import copy

    from nbclient import NotebookClient

    nb = copy.deepcopy(nb)
    with tempfile.TemporaryDirectory() as cwd:
        NotebookClient(nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": cwd}},
                       allow_errors=False).execute()
    for cell in nb.cells:
        if is_check_cell(cell) and COMPARE_TAG not in cell.metadata.get("tags", []):
            raise ValueError(f"{path}: a check cell lacks the {COMPARE_TAG!r} tag:\n{cell.source}")
    return nb


def render(executed, stem, *, keep_answers):
    """The exercise (``keep_answers=False``) or completed notebook, as deterministic JSON text."""
    import nbformat

    cells, code_cells = [], 0
    for i, cell in enumerate(executed.cells):
        cell_id = f"nb{stem}-{i:02d}"
        tags = sorted(cell.get("metadata", {}).get("tags", []))
        metadata = {"tags": tags} if tags else {}
        if is_check_cell(cell):  # Jupyter then refuses to edit or delete it, so the grader still finds it
            metadata.update(deletable=False, editable=False)
        source = cell.source
        if cell.cell_type == "code":
            code_cells += 1
            if not keep_answers:
                source = blank_code(source, f"solutions/{stem}.md cell {i}")
            outputs = mark_expected(clean_outputs(cell.get("outputs", []))) if is_check_cell(cell) else []
            new = nbformat.v4.new_code_cell(source, id=cell_id, metadata=metadata, outputs=outputs)
            if is_check_cell(cell):
                # nbval skips comparing a cell that looks unrun; the code cell's position keeps the count stable
                new.execution_count = code_cells
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(source if keep_answers else blank_text(source),
                                                id=cell_id, metadata=metadata)
        else:
            new = nbformat.v4.new_raw_cell(source, id=cell_id, metadata=metadata)
        cells.append(new)
    nb = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python"},
        "normlab": {"chapter": int(stem), "generated_from": f"solutions/{stem}.md"},
    })
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def generate(root, out_dir, solutions_out=None, log=print):
    """Write every exercise notebook into ``out_dir`` (and completed ones into ``solutions_out``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if solutions_out is not None:
        Path(solutions_out).mkdir(parents=True, exist_ok=True)
    written = []
    for folder in [out_dir] + ([Path(solutions_out)] if solutions_out is not None else []):
        for name, text in SUPPORT_FILES.items():
            (folder / name).write_text(text, encoding="utf-8")
    for path in solution_files(root):
        stem = path.stem
        log(f"executing {path.relative_to(root)}")
        executed = execute(read_solution(path), path)
        (out_dir / f"{stem}.ipynb").write_text(render(executed, stem, keep_answers=False), encoding="utf-8")
        if solutions_out is not None:
            (Path(solutions_out) / f"{stem}.ipynb").write_text(render(executed, stem, keep_answers=True),
                                                               encoding="utf-8")
        written.append(f"{stem}.ipynb")
    return written


def stale_files(root, generated_dir):
    """Names of exercise files that differ from, are missing from, or are absent in a fresh generation."""
    current_dir = Path(root) / "exercises"
    def files(folder):
        paths = list(folder.glob("*.ipynb")) + [folder / n for n in SUPPORT_FILES if (folder / n).is_file()]
        return {p.name: p.read_bytes() for p in paths}

    fresh = files(Path(generated_dir))
    current = files(current_dir) if current_dir.is_dir() else {}
    problems = []
    for name in sorted(fresh.keys() | current.keys()):
        if name not in current:
            problems.append(f"exercises/{name} is missing")
        elif name not in fresh:
            problems.append(f"exercises/{name} has no solutions/{Path(name).stem}.md")
        elif fresh[name] != current[name]:
            problems.append(f"exercises/{name} is stale")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m normlab.exercises", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["build", "check"])
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: this checkout)")
    parser.add_argument("--solutions-out", type=Path, default=None,
                        help="build: also write the completed notebooks (answers kept) here")
    args = parser.parse_args(argv)
    root = (args.root or default_root()).resolve()
    if not (root / "solutions").is_dir():
        parser.error(f"no solutions/ folder under {root}")

    if args.mode == "build":
        written = generate(root, root / "exercises", args.solutions_out)
        print(f"wrote {len(written)} notebooks to {root / 'exercises'}")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        generate(root, tmp, log=lambda msg: None)
        problems = stale_files(root, tmp)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        print("exercises/ is out of date: run `python -m normlab.exercises build` and commit exercises/",
              file=sys.stderr)
        return 1
    print("exercises/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
