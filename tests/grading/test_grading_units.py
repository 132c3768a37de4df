"""The grader's parts that need no kernel: plain-data transport, reading submissions, the harness, the CLI."""
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import pytest

from normlab.check import TASKS
from normlab.cli import main
from normlab.grading import Grader, harness, plain, submission

REPO = Path(__file__).resolve().parents[2]


def roundtrip(obj, tmp_path):
    plain.dump(obj, tmp_path / "o.json", tmp_path / "o.npz")
    return plain.load(tmp_path / "o.json", tmp_path / "o.npz", max_bytes=2**30)


def test_plain_roundtrip_keeps_types_values_and_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    obj = {"y": rng.normal(size=(3, 4)).astype(np.float32), "pair": (np.arange(5), None),
           "stats": [1, 2.5, float("nan"), float("inf"), -float("inf"), True, "text", 1 + 2j, np.float64(0.5)]}
    back = roundtrip(obj, tmp_path)
    assert back["y"].dtype == np.float32 and np.array_equal(back["y"], obj["y"])
    assert isinstance(back["pair"], tuple) and np.array_equal(back["pair"][0], np.arange(5)) and back["pair"][1] is None
    stats = back["stats"]
    assert stats[:2] == [1, 2.5] and np.isnan(stats[2]) and stats[3:] == [float("inf"), -float("inf"), True, "text",
                                                                            1 + 2j, 0.5]


def test_plain_converts_torch_tensors_and_names_unknown_objects(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.randn(2, 3, dtype=torch.bfloat16, requires_grad=True)
    back = roundtrip([t, object()], tmp_path)
    assert back[0].dtype == np.float32 and np.array_equal(back[0], t.detach().float().numpy())
    assert back[1] == "<object object>"


def test_plain_refuses_pickles_unknown_tags_and_oversize_files(tmp_path):
    np.savez(tmp_path / "o.npz", a0=np.array([{"x": 1}], dtype=object))
    (tmp_path / "o.json").write_text('{"__array__": "a0"}')
    with pytest.raises(plain.PlainDataError, match="pickle"):
        plain.load(tmp_path / "o.json", tmp_path / "o.npz", max_bytes=2**30)
    np.savez(tmp_path / "o.npz")
    for tree in ['{"__reduce__": 1}', '{"__array__": "missing"}', '{"__tuple__": 3}', '{"a": 1, "b": 2}']:
        (tmp_path / "o.json").write_text(tree)
        with pytest.raises(plain.PlainDataError):
            plain.load(tmp_path / "o.json", tmp_path / "o.npz", max_bytes=2**30)
    np.savez(tmp_path / "o.npz", a0=np.zeros(1000))
    (tmp_path / "o.json").write_text('{"__array__": "a0"}')
    with pytest.raises(plain.PlainDataError, match="limit"):
        plain.load(tmp_path / "o.json", tmp_path / "o.npz", max_bytes=1000)


def test_plain_refuses_compression_bombs_and_lying_headers(tmp_path):
    (tmp_path / "o.json").write_text('{"__array__": "a0"}')
    np.savez_compressed(tmp_path / "o.npz", a0=np.zeros(2**24))  # 128 MiB of zeros in a tiny file
    assert (tmp_path / "o.npz").stat().st_size < 2**20
    with pytest.raises(plain.PlainDataError, match="limit"):
        plain.load(tmp_path / "o.json", tmp_path / "o.npz", max_bytes=2**20)
    # a header claiming 10**12 float64 over a few bytes of data
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(tmp_path / "o.npz", "w") as zf:
        zf.writestr("a0.npy", header.getvalue() + b"\0" * 64)  # the header writer adds the magic
    with pytest.raises(plain.PlainDataError, match="claims more data"):
        plain.load(tmp_path / "o.json", tmp_path / "o.npz", max_bytes=2**30)


def test_harness_records_errors_and_stops_a_runaway_call(tmp_path):
    def slow(x):
        while True:
            pass

    result, error = harness.call_with_limit(slow, [1], {}, 0.2)
    assert result is None and error.startswith("TimeoutError")
    assert harness.call_with_limit(lambda: 1 / 0, [], {}, 5)[1] == "ZeroDivisionError: division by zero"
    assert harness.call_with_limit(lambda: exit(3), [], {}, 5)[1] == "SystemExit: 3"

    cases = [{"args": [np.arange(3.0)], "kwargs": {"k": 2}}, {"args": [np.ones(2)], "kwargs": {}}]
    (tmp_path / "c.pkl").write_bytes(pickle.dumps(cases))
    files = [str(tmp_path / "o.json"), str(tmp_path / "o.npz")]

    def scale(x, k=1):
        x *= k  # in place: the grader sees the arguments after the call
        return x.sum()

    harness.run_task({"scale": scale}, "scale", str(tmp_path / "c.pkl"), *files, 5)
    outputs = plain.load(tmp_path / "o.json", tmp_path / "o.npz", max_bytes=2**30)["outputs"]
    assert [o["result"] for o in outputs] == [6.0, 2.0] and [o["error"] for o in outputs] == [None, None]
    assert np.array_equal(outputs[0]["args"][0], [0.0, 2.0, 4.0])
    harness.run_task({}, "scale", str(tmp_path / "c.pkl"), *files, 5)
    assert "not defined" in plain.load(tmp_path / "o.json", tmp_path / "o.npz", max_bytes=2**30)["missing"]


def notebook(cells, **metadata):
    nb = nbformat.v4.new_notebook(metadata=metadata)
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    return nb


def chapter_of(nb, name="sub.ipynb"):
    return submission.detect_chapter(nb, submission.Path(name), TASKS)


def test_chapter_rule_order():
    ch2, ch3 = ([t for t in TASKS.values() if t.chapter == c] for c in (2, 3))
    calls_ch3 = f"normlab.check.{ch3[0].name}(f)"
    defs_ch2 = f"def {ch2[0].function}(x):\n    pass"
    assert chapter_of(notebook([defs_ch2], normlab={"chapter": 5})) == (5, None)
    assert chapter_of(notebook([defs_ch2, calls_ch3])) == (3, None)  # a checker call beats a definition
    assert chapter_of(notebook([defs_ch2]), "alice_04.ipynb") == (2, None)  # a definition beats the file name
    assert chapter_of(notebook(["x = 1"]), "alice_04.ipynb") == (4, None)
    assert chapter_of(notebook(["x = 1"]), "s1234567.ipynb")[0] is None
    tie = notebook([defs_ch2, f"def {ch3[0].function}(x):\n    pass"])
    assert chapter_of(tie, "bob-3.ipynb") == (3, None)
    assert "ambiguous" in chapter_of(tie)[1]


@pytest.mark.parametrize("kernelspec, ok", [
    ({"name": "python3", "language": "python"}, True),
    ({"name": "conda-env-course-py", "language": "python"}, True),
    ({"name": "python3"}, True),
    ({"name": "ir", "language": "R"}, False),
    ({"name": "julia-1.10"}, False),
])
def test_kernel_name_rule(tmp_path, kernelspec, ok):
    kernelspec = {**kernelspec, "display_name": kernelspec["name"]}
    nb = notebook([f"def {next(iter(TASKS.values())).function}(x):\n    return x"], kernelspec=kernelspec)
    path = tmp_path / "sub.ipynb"
    nbformat.write(nb, path)
    sub = submission.load(path, TASKS)
    assert (sub.problem is None) == ok, sub.problem


def test_check_cells_are_not_run(tmp_path):
    nb = notebook(["a = 1", "normlab.check.x(f)"])
    nb.cells[1].metadata["tags"] = ["check"]
    nb.metadata["normlab"] = {"chapter": 2}
    nbformat.write(nb, tmp_path / "s.ipynb")
    assert submission.load(tmp_path / "s.ipynb", TASKS).cells == ["a = 1"]


def test_find_walks_folders_and_skips_readmes_and_checkpoints(tmp_path):
    (tmp_path / "a" / ".ipynb_checkpoints").mkdir(parents=True)
    (tmp_path / "a" / "x.ipynb").write_text("{}")
    (tmp_path / "a" / ".ipynb_checkpoints" / "x-checkpoint.ipynb").write_text("{}")
    (tmp_path / "a" / "README.md").write_text("# notes\n")
    (tmp_path / "a" / "y.md").write_text("---\njupytext:\n  formats: md:myst\n---\n")
    assert [p.name for p in submission.find([tmp_path])] == ["x.ipynb", "y.md"]
    with pytest.raises(FileNotFoundError):
        submission.find([tmp_path / "nope"])


def test_cli_exit_codes_for_grader_failures(tmp_path, capsys):
    assert main(["grade", str(tmp_path / "missing"), "--out", str(tmp_path / "g.csv")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["grade", str(tmp_path / "empty"), "--out", str(tmp_path / "g.csv")]) == 2
    assert "no notebooks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["grade", str(tmp_path), "--jobs", "0"])
    with pytest.raises(ValueError, match="memory_mb"):
        Grader(memory_mb=10)
    with pytest.raises(ValueError, match="work_mb"):
        Grader(work_mb=8)


def test_invalid_files_are_graded_without_a_kernel(tmp_path):
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "empty_02.ipynb").write_text("")
    (tmp_path / "subs" / "junk.ipynb").write_text("[1, 2")
    out, js = tmp_path / "g.csv", tmp_path / "g.json"
    assert main(["grade", str(tmp_path / "subs"), "--out", str(out), "--json", str(js), "-q"]) == 0
    entries = json.loads(js.read_text())["submissions"]
    assert [(e["status"], e["chapter"]) for e in entries] == [("invalid", 2), ("invalid", None)]
    assert entries[0]["max_score"] == sum(t.points for t in TASKS.values() if t.chapter == 2)
    assert out.read_text().count("\n") == 3


def secret_token():
    return "TOKEN-" + os.urandom(8).hex()


def report_text(tmp_path, capsys):
    return (tmp_path / "g.csv").read_text() + (tmp_path / "g.json").read_text() + "".join(capsys.readouterr())


def test_symbolic_links_and_what_lies_behind_them_get_invalid_rows(tmp_path, capsys):
    """A link is never followed: not to a reference solution (graded today as full marks), not to /etc/passwd,
    not into a linked folder. Each link, and a FIFO, gets its own invalid row; nothing is skipped silently."""
    token = secret_token()
    elsewhere, subs = tmp_path / "elsewhere", tmp_path / "subs"
    elsewhere.mkdir()
    subs.mkdir()
    solution = jupytext.read(REPO / "solutions" / "02.md")
    jupytext.write(solution, elsewhere / "02.ipynb", fmt="ipynb")
    (elsewhere / "notes.txt").write_text(token)
    (subs / "linked_solution.ipynb").symlink_to(elsewhere / "02.ipynb")
    (subs / "passwd_02.ipynb").symlink_to("/etc/passwd")
    (subs / "linked_folder").symlink_to(elsewhere, target_is_directory=True)
    (subs / "notes_link").symlink_to(elsewhere / "notes.txt")
    os.mkfifo(subs / "fifo_02.ipynb")
    assert main(["grade", str(subs), "--out", str(tmp_path / "g.csv"), "--json", str(tmp_path / "g.json")]) == 0
    entries = {Path(e["path"]).name: e for e in json.loads((tmp_path / "g.json").read_text())["submissions"]}
    assert sorted(entries) == ["fifo_02.ipynb", "linked_folder", "linked_solution.ipynb", "notes_link",
                               "passwd_02.ipynb"]
    for name, e in entries.items():
        assert e["status"] == "invalid" and e["score"] == 0, (name, e["detail"])
        why = "not a regular file (a FIFO)" if name.startswith("fifo") else "is a symbolic link"
        assert why in e["detail"] and "nothing" in e["detail"], (name, e["detail"])
    text = report_text(tmp_path, capsys)
    assert token not in text and Path("/etc/passwd").read_text().splitlines()[0] not in text

    # a file given by a path that goes through a linked folder is refused too
    link = subs / "linked_folder" / "02.ipynb"
    assert main(["grade", str(link), "--out", str(tmp_path / "g.csv"), "--json", str(tmp_path / "g.json")]) == 0
    (entry,) = json.loads((tmp_path / "g.json").read_text())["submissions"]
    assert entry["status"] == "invalid" and f"reached through the symbolic link {subs / 'linked_folder'}" in \
        entry["detail"]


def test_an_invalid_file_is_described_never_quoted(tmp_path, capsys):
    """Whatever makes a file invalid, its row gives the size and the kind of problem, never its bytes."""
    token = secret_token()
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "bad_json_02.ipynb").write_text(token + " {")
    (subs / "not_a_notebook_02.ipynb").write_text(json.dumps({"hello": token}))
    (subs / "latin1_02.ipynb").write_bytes(token.encode() + b"\xff\xfe")
    (subs / "bad_cells_02.ipynb").write_text(json.dumps(
        {"cells": [{"cell_type": "code", "source": 5, "metadata": {token: token}}], "metadata": {},
         "nbformat": 4, "nbformat_minor": 5}))
    foreign = notebook(["x = 1"], kernelspec={"name": token, "language": token, "display_name": token})
    nbformat.write(foreign, subs / "foreign_02.ipynb")
    (subs / "bad_myst_02.md").write_text(f"---\njupytext: [{token}\nkernelspec: {{\n---\n")
    assert main(["grade", str(subs), "--out", str(tmp_path / "g.csv"), "--json", str(tmp_path / "g.json")]) == 0
    entries = json.loads((tmp_path / "g.json").read_text())["submissions"]
    assert len(entries) == 6 and all(e["status"] == "invalid" for e in entries), [e["detail"] for e in entries]
    details = {Path(e["path"]).stem: e["detail"] for e in entries}
    assert "not valid JSON" in details["bad_json_02"] and f"{len(token) + 2} bytes" in details["bad_json_02"]
    assert "not UTF-8" in details["latin1_02"] and "not Python" in details["foreign_02"]
    assert token not in report_text(tmp_path, capsys)
