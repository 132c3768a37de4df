"""`normlab grade` on a batch of hostile and broken submissions, graded in ONE run with --jobs 2.

Every submission is built from the chapter 2 reference solution (`solutions/02.md`)
or the generated blank exercise, then mutated. Each row is then checked for its
status, its score and the message that explains it; the batch must complete and
give every file a row.
"""
import csv
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import types
from pathlib import Path

import jupytext
import nbformat
import pytest

import normlab
from normlab.check import TASKS
from normlab.cli import main
from normlab.grading import Grader

REPO = Path(__file__).resolve().parents[2]
CH2 = [t for t in TASKS.values() if t.chapter == 2]
FULL = sum(t.points for t in CH2)
POINTS = {t.name: t.points for t in CH2}
TIMEOUT = 8  # seconds per cell and per call; the two runaway submissions cost one or two of these each


def solution():
    return jupytext.read(REPO / "solutions" / "02.md")


def replace(nb, old, new):
    """Mutate the code cell containing ``old``; fails loudly if the solution no longer has that text."""
    cells = [c for c in nb.cells if c.cell_type == "code" and old in c.source]
    assert cells, f"solutions/02.md no longer contains {old!r}; update this test's mutation"
    cells[0].source = cells[0].source.replace(old, new)
    return nb


def add_cell(nb, source, after_imports=True):
    """Insert a code cell right after the import cell (so later cells still define the functions)."""
    index = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code") + 1 if after_imports else len(nb.cells)
    nb.cells.insert(index, nbformat.v4.new_code_cell(source))
    return nb


def save(nb, path):
    jupytext.write(nb, path, fmt="ipynb" if path.suffix == ".ipynb" else "md:myst")


class Listener:
    """A TCP server on 127.0.0.1 that counts connections: the sandboxed kernels must never reach it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


WRONG_FUNCTIONS = """
def batch_norm_forward(x, gamma, beta, eps=1e-5):
    return x
def batch_norm_conv(x, gamma, beta, eps=1e-5):
    return x
"""

CHECK_FILE = Path(normlab.check.__file__).with_name("_task.py")
# Each of these alone would make a checker running in the kernel pass WRONG_FUNCTIONS
# (test_each_patch_would_fool_a_checker_in_the_kernel); the grader must not be fooled by all of them together.
PATCHES = {
    "printed summary": 'import normlab.check\nnormlab.check.batch_norm_forward = lambda fn: print("7/7 passed")',
    "task list": "import normlab.check\nnormlab.check.TASKS.clear()",
    "compare": "import normlab.check._task as task_module\n"
               'task_module.compare = lambda label, *a, **k: task_module.Check(label, True, "")',
    "reference": "import normlab\nnormlab.batch_norm_forward = lambda x, *a, **k: (x, None)",
    "allclose": "import numpy\nnumpy.allclose = lambda *a, **k: True",
    "file on disk": f"try:\n    with open({str(CHECK_FILE)!r}, 'a') as f:\n        f.write('\\nTASKS = {{}}\\n')\n"
                    "except OSError as e:\n    print('could not patch the file:', e)",
}
FOOLING = ("compare", "reference", "allclose")
SLEEPER = "import time; time.sleep(1234)"  # the background_process submission's daemon

# A task that ignores the harness's alarm and the interrupt: only killing its kernel stops it.
HANG = """    while True:
        try:
            while True:
                pass
        except BaseException:
            pass
    ### BEGIN SOLUTION
    mean = x.mean(axis=0)"""


def probe_code(outside):
    """A cell that tries to read, list and write what the kernel must not reach; the task functions then
    raise ``RuntimeError("reached [...]")`` naming what it did reach, so the row's messages tell."""
    host_passwd = Path("/etc/passwd").read_text().splitlines()[0] if Path("/etc/passwd").exists() else "?"
    return textwrap.dedent(f"""
        import os
        reached = []
        def attempt(name, action):
            try:
                if action():
                    reached.append(name)
            except OSError:
                pass
        def read(path):
            with open(path) as f:
                return f.read()
        attempt("host /etc/passwd", lambda: {host_passwd!r} in read("/etc/passwd"))
        attempt("another checkout's solutions", lambda: "SOLUTION" in read({str(outside / "solutions" / "02.md")!r}))
        attempt("the repository", lambda: read({str(REPO / "pyproject.toml")!r}))
        attempt("the repository's folder", lambda: set(os.listdir({str(REPO)!r})) - {{".venv", "src"}})
        attempt("/usr/bin", lambda: os.listdir("/usr/bin"))
        for d in ("/tmp", "/var/tmp", "/dev/shm"):  # writes must stay private: the test looks for them
            attempt(d + " is shared", lambda d=d: open(os.path.join(d, {outside.name + "-w"!r}), "w").write("x") and 0)
        attempt("/tmp unbounded", lambda: open({"/tmp/" + outside.name + "-big"!r}, "wb").write(bytes(65 * 2**20)))
        def past_fsize():
            with open("big_file", "wb") as f:
                f.seek(300 * 2**20)
                return f.write(b"x")
        attempt("a file past RLIMIT_FSIZE", past_fsize)
        def batch_norm_forward(x, gamma, beta, eps=1e-5):
            raise RuntimeError(f"reached {{reached}}")
        batch_norm_conv = batch_norm_forward
    """)


def build_batch(folder, port, marker, outside):
    """Write the submissions; returns ``{file name: expectation}`` used by the assertions."""
    folder.mkdir()
    sol = solution
    save(sol(), folder / "correct.ipynb")
    save(sol(), folder / "correct_myst.md")
    save(replace(sol(), "np.sqrt(var + eps)\n    return gamma * x_hat", "(np.sqrt(var) + eps)\n    return gamma * x_hat"),
         folder / "wrong_eps.ipynb")
    nb = add_cell(sol(), "raise ValueError('boom')")
    save(replace(nb, "axes = (0, 2, 3)", "raise KeyError('no conv yet')"), folder / "raises.ipynb")
    nb = add_cell(sol(), "while True:\n    pass")
    save(replace(nb, "axes = (0, 2, 3)", "while True:\n        pass"), folder / "infinite_loop.ipynb")
    save(add_cell(sol(), "import os\nos._exit(3)"), folder / "os_exit.ipynb")
    stubborn = "import time\nwhile True:\n    try:\n        time.sleep(0.1)\n    except KeyboardInterrupt:\n        pass"
    save(add_cell(sol(), stubborn), folder / "ignores_interrupt.ipynb")
    # A process that outlives its kernel: the grader must kill it with everything else under the private uid.
    # (Python, not `sleep`: the kernel's filesystem holds the Python installation and nothing of /usr/bin.)
    daemon = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {SLEEPER!r}], start_new_session=True)"
    save(add_cell(sol(), daemon), folder / "background_process.ipynb")

    # Cheating by patching the checker and the library in the kernel, and the library on disk.
    nb = sol()
    nb.cells = [c for c in nb.cells if not (c.cell_type == "code" and "def batch_norm" in c.source)]
    save(add_cell(add_cell(nb, WRONG_FUNCTIONS), "\n".join(PATCHES.values())), folder / "monkeypatch.ipynb")

    # What the kernel can reach of the machine (see PROBE), and a task that cannot be stopped.
    nb = sol()
    nb.cells = [c for c in nb.cells if not (c.cell_type == "code" and "def batch_norm" in c.source)]
    save(add_cell(nb, probe_code(outside)), folder / "probe_filesystem.ipynb")
    nb = replace(sol_with_hang(), "gamma.reshape(1, -1, 1, 1) * x_hat", "scaled(gamma.reshape(1, -1, 1, 1)) * x_hat")
    # set-up that the fresh kernel must run again: an assignment and a helper that the second task uses
    save(add_cell(nb, "SCALE = 1.0\n\ndef scaled(a):\n    return a * SCALE\n\nprint('not set-up')"),
         folder / "hung_task.ipynb")
    nb = replace(sol(), "    ### BEGIN SOLUTION\n    mean = x.mean(axis=0)", "    import os\n    os._exit(4)\n"
                 "    ### BEGIN SOLUTION\n    mean = x.mean(axis=0)")
    save(nb, folder / "task_kills_kernel.ipynb")

    # Tampering with the output files: a pickle that would create `marker` if the grader ever unpickled it.
    tamper = f"""
import io, numpy as np, normlab.grading.harness as harness
class Evil:
    def __reduce__(self):
        return (io.open, ({str(marker)!r}, "w"))
def evil_dump(obj, json_path, npz_path):
    np.savez(npz_path, a0=np.array([Evil()], dtype=object))
    with open(json_path, "w") as f:
        f.write('{{"outputs": {{"__array__": "a0"}}}}')
harness.dump = evil_dump
"""
    save(add_cell(sol(), tamper, after_imports=False), folder / "tamper_outputs.ipynb")

    # Reading the solutions, the git history, the tests, and the other submissions.
    secrets = [REPO / "solutions", REPO / ".git", REPO / "tests", folder]
    snoop = f"""
import os
seen = []
for d in {[str(s) for s in secrets]!r}:
    try:
        seen += os.listdir(d)
    except Exception:
        pass
try:
    seen.append(open({str(REPO / 'solutions' / '02.md')!r}).read()[:20])
except Exception:
    pass
def batch_norm_forward(x, gamma, beta, eps=1e-5):
    raise RuntimeError(f"saw {{seen}}")
def batch_norm_conv(x, gamma, beta, eps=1e-5):
    raise RuntimeError(f"saw {{seen}}")
"""
    nb = sol()
    nb.cells = [c for c in nb.cells if not (c.cell_type == "code" and "def batch_norm" in c.source)]
    save(add_cell(nb, snoop), folder / "read_solutions.ipynb")

    save(add_cell(sol(), "print('x' * 5_000_000)\nfor i in range(200_000):\n    print(i)"), folder / "big_output.ipynb")
    save(add_cell(sol(), "hog = bytearray(4 * 2**30)"), folder / "memory_hog.ipynb")

    # Network: plain sockets (audit hook and namespace), and a child process (only the namespace stops it).
    net = f"""
import socket, subprocess, sys
reached = []
for address in [("127.0.0.1", {port}), ("10.255.255.1", 80)]:
    try:
        socket.create_connection(address, timeout=1).close()
        reached.append(address)
    except OSError:
        pass
child = "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1); print('reached')"
try:
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=10).stdout
    if "reached" in out:
        reached.append("child process")
except Exception:
    pass
assert not reached, reached
"""
    save(add_cell(sol(), net), folder / "network.ipynb")

    nb = sol()
    nb.metadata["kernelspec"] = {"name": "ir", "language": "R", "display_name": "R"}
    save(nb, folder / "foreign_kernel.ipynb")
    (folder / "empty.ipynb").write_text("")
    (folder / "invalid_json.ipynb").write_text('{"cells": [')
    (folder / "not_a_notebook.ipynb").write_text('{"hello": "world"}')
    (folder / "blank_02.ipynb").write_bytes((REPO / "exercises" / "02.ipynb").read_bytes())


def leftovers(outside):
    """The files the probe submission writes in /tmp, /var/tmp and /dev/shm: only its private ones may get them."""
    return [Path(d, outside.name + "-w") for d in ("/tmp", "/var/tmp", "/dev/shm")]


@pytest.fixture(scope="module")
def outside():
    """Another checkout of the course, world-readable, outside the grader's folders: kernels must not see it."""
    folder = Path(tempfile.mkdtemp(prefix="normlab-other-checkout-"))
    try:
        folder.chmod(0o755)
        (folder / "solutions").mkdir(mode=0o755)
        (folder / "solutions" / "02.md").write_text((REPO / "solutions" / "02.md").read_text())
        (folder / "solutions" / "02.md").chmod(0o644)
        yield folder
    finally:
        for leftover in leftovers(folder) + [Path(f"/tmp/{folder.name}-big")]:  # if a kernel could write there
            leftover.unlink(missing_ok=True)
        for p in sorted(folder.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
        folder.rmdir()


@pytest.fixture(scope="module")
def graded(tmp_path_factory, outside):
    tmp = tmp_path_factory.mktemp("grading")
    listener = Listener()
    marker = tmp / "subs" / "unpickled-by-the-grader"
    digest = hashlib.sha256(CHECK_FILE.read_bytes()).hexdigest()
    try:
        build_batch(tmp / "subs", listener.port, marker, outside)
        out, js = tmp / "grades.csv", tmp / "grades.json"
        code = main(["grade", str(tmp / "subs"), "--out", str(out), "--json", str(js),
                     "--timeout", str(TIMEOUT), "--jobs", "2", "--memory-mb", "2048"])
    finally:
        listener.close()
    left_behind = [str(p) for p in leftovers(outside) if p.exists()]
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    for chapter_csv in tmp.glob("grades-ch*.csv"):  # the task columns are in each chapter's own CSV
        for r in csv.DictReader(chapter_csv.open()):
            rows[Path(r["path"]).name].update(r)
    entries = {Path(e["path"]).name: e for e in json.loads(js.read_text())["submissions"]}
    return {"code": code, "rows": rows, "sleepers": leftover_sleepers(), "entries": entries,
            "accepted": listener.accepted, "marker": marker, "left_behind": left_behind,
            "check_file_unchanged": hashlib.sha256(CHECK_FILE.read_bytes()).hexdigest() == digest,
            "json_size": js.stat().st_size, "names": sorted(p.name for p in (tmp / "subs").iterdir())}


def leftover_sleepers():
    """Processes running SLEEPER (the background_process submission's daemon)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if SLEEPER.encode() in status.read_bytes().split(b"\0"):
                found.append(status.parent.name)
        except OSError:
            pass
    return found


def row(graded, name):
    r = graded["rows"][name]
    return r, graded["entries"][name]


def messages(entry, task=None):
    return " | ".join(m for t in entry["tasks"] if task in (None, t["name"]) for m in t["messages"])


def test_batch_completes_with_a_row_for_every_file(graded):
    assert graded["code"] == 0
    assert sorted(graded["rows"]) == graded["names"]
    assert sorted(graded["entries"]) == graded["names"]
    assert list(graded["rows"]) == sorted(graded["rows"])  # report order is the sorted paths


@pytest.mark.parametrize("name", ["correct.ipynb", "correct_myst.md"])
def test_reference_solution_gets_full_marks(graded, name):
    r, e = row(graded, name)
    assert (r["status"], float(r["score"]), float(r["max_score"])) == ("ok", FULL, FULL), e
    assert all(t["passed"] == t["total"] > 0 for t in e["tasks"])


def test_wrong_answer_loses_only_that_task_and_names_the_mistake(graded):
    r, e = row(graded, "wrong_eps.ipynb")
    assert r["status"] == "ok"
    assert float(r["batch_norm_forward"]) == 0 and float(r["batch_norm_conv"]) == POINTS["batch_norm_conv"]
    assert "eps outside the sqrt" in messages(e, "batch_norm_forward")


def test_raising_code_is_recorded_and_grading_continues(graded):
    r, e = row(graded, "raises.ipynb")
    assert r["status"] == "error" and "ValueError: boom" in r["detail"]
    assert float(r["batch_norm_forward"]) == POINTS["batch_norm_forward"] and float(r["batch_norm_conv"]) == 0
    assert "KeyError" in messages(e, "batch_norm_conv")


def test_infinite_loops_in_a_cell_and_in_a_function_time_out(graded):
    r, e = row(graded, "infinite_loop.ipynb")
    assert r["status"] == "timeout" and "code cell" in r["detail"]
    assert float(r["batch_norm_forward"]) == POINTS["batch_norm_forward"] and float(r["batch_norm_conv"]) == 0
    assert "TimeoutError" in messages(e, "batch_norm_conv")


def test_os_exit_kills_the_kernel_not_the_batch(graded):
    r, e = row(graded, "os_exit.ipynb")
    assert r["status"] == "kernel_died" and float(r["score"]) == 0
    assert "exited" in r["detail"]


def test_a_cell_that_ignores_interrupts_gets_its_kernel_killed(graded):
    r, e = row(graded, "ignores_interrupt.ipynb")
    assert r["status"] == "timeout" and "did not stop" in r["detail"] and float(r["score"]) == 0
    assert "not run" in messages(e)


@pytest.mark.skipif(os.getuid() != 0, reason="only a root grader runs kernels under a private uid it can clean up")
def test_background_processes_do_not_outlive_grading(graded):
    r, _ = row(graded, "background_process.ipynb")
    assert (r["status"], float(r["score"])) == ("ok", FULL)
    assert graded["sleepers"] == []


def test_submission_time_limit_stops_the_remaining_cells(tmp_path):
    nb = solution()
    for _ in range(4):
        add_cell(nb, "import time\ntime.sleep(2)")
    (tmp_path / "subs").mkdir()
    save(nb, tmp_path / "subs" / "slow.ipynb")
    js = tmp_path / "g.json"
    assert main(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "g.csv"), "--json", str(js), "-q",
                 "--timeout", "5", "--submission-timeout", "3"]) == 0
    (entry,) = json.loads(js.read_text())["submissions"]
    assert entry["status"] == "timeout" and "submission's 3 s time limit" in entry["detail"]
    assert entry["score"] == 0


def test_monkeypatching_the_checker_or_library_changes_nothing(graded):
    r, e = row(graded, "monkeypatch.ipynb")
    assert float(r["score"]) == 0 and r["status"] == "ok"
    assert all(t["total"] > 0 and t["passed"] == 0 for t in e["tasks"])
    assert graded["check_file_unchanged"]


def test_the_checker_submodule_is_a_module():
    """`import normlab.check._task` must give the module the patches target, not a checker that shadows it."""
    import normlab.check._task as task_module

    assert isinstance(task_module, types.ModuleType) and hasattr(task_module, "compare")


@pytest.mark.parametrize("patch", FOOLING)
def test_each_patch_would_fool_a_checker_in_the_kernel(patch):
    """The control for the monkeypatch case: in the process where the patch ran, the checker passes the wrong
    functions. So a grader that judged inside the kernel would give the monkeypatch submission full marks."""
    code = "\n".join([WRONG_FUNCTIONS, PATCHES[patch], textwrap.dedent("""
        from normlab.check import ch2
        from normlab.check._task import run
        checks = [c for task in ch2.TASKS for c in run(task, globals()[task.function])]
        print(sum(c.passed for c in checks), len(checks))
    """)])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    passed, total = map(int, out.stdout.split())
    assert passed == total > 0, (patch, out.stdout)


def test_tampered_output_files_are_refused_never_unpickled(graded):
    r, e = row(graded, "tamper_outputs.ipynb")
    assert float(r["score"]) == 0 and r["status"] == "error" and "outputs refused" in r["detail"]
    assert "grader:" in messages(e)
    assert not graded["marker"].exists()


def test_solutions_tests_git_and_other_submissions_are_invisible(graded):
    r, e = row(graded, "read_solutions.ipynb")
    assert float(r["score"]) == 0
    assert "saw []" in messages(e)


def test_megabytes_of_output_do_not_reach_the_report(graded):
    r, e = row(graded, "big_output.ipynb")
    assert (r["status"], float(r["score"])) == ("ok", FULL)
    assert graded["json_size"] < 1_000_000


def test_memory_past_the_cap_fails_in_the_kernel(graded):
    r, e = row(graded, "memory_hog.ipynb")
    assert r["status"] == "memory" and r["detail"].startswith("code cell") and "MemoryError" in r["detail"]
    assert float(r["score"]) == FULL
    assert any("RLIMIT_AS" in x for x in e["isolation"])


@pytest.mark.skipif(os.getuid() != 0 or sys.platform != "linux", reason="the new root needs root on Linux")
def test_the_kernel_sees_the_filesystem_by_allowlist(graded):
    """Nothing outside Python, normlab and the work folder is readable, and /tmp, /var/tmp, /dev/shm are
    private and capped: neither another checkout, nor the host's /etc/passwd, nor the repository."""
    r, e = row(graded, "probe_filesystem.ipynb")
    assert float(r["score"]) == 0 and "reached []" in messages(e), messages(e)
    assert graded["left_behind"] == []
    assert any(x.startswith("filesystem by allowlist") for x in e["isolation"])
    assert any(x.startswith("RLIMIT_FSIZE") for x in e["isolation"])


@pytest.mark.skipif(os.getuid() != 0 or sys.platform != "linux", reason="the tmpfs work folder needs root on Linux")
def test_the_work_folder_is_capped_in_total_not_only_per_file(tmp_path):
    """Files each under RLIMIT_FSIZE must not add up past the work folder's cap (nor reach the host's disk)."""
    fill = textwrap.dedent("""
        import os
        written = 0
        try:
            for i in range(4):
                with open(f"filler{i}", "wb") as f:
                    f.write(bytes(12 * 2**20))
                written += 12
        except OSError as e:
            written = f"{written} MiB, then {type(e).__name__}"
        for i in range(4):  # room again for the harness's outputs
            if os.path.exists(f"filler{i}"):
                os.remove(f"filler{i}")
        def batch_norm_forward(x, gamma, beta, eps=1e-5):
            raise RuntimeError(f"wrote {written}")
        batch_norm_conv = batch_norm_forward
    """)
    nb = solution()
    nb.cells = [c for c in nb.cells if not (c.cell_type == "code" and "def batch_norm" in c.source)]
    (tmp_path / "subs").mkdir()
    save(add_cell(nb, fill), tmp_path / "subs" / "fills_work.ipynb")
    (g,) = Grader(timeout=TIMEOUT, work_mb=32).grade([tmp_path / "subs"])
    assert "wrote 24 MiB, then OSError" in " ".join(g.tasks[0].messages), g.tasks[0].messages
    assert "work folder: 32 MiB tmpfs" in g.isolation
    assert "normlab-grade-" not in Path("/proc/self/mountinfo").read_text()  # no mount left on the host


def test_a_hung_task_costs_only_itself(graded):
    """batch_norm_forward catches the alarm and the interrupt; its kernel is killed, a fresh one runs the
    set-up again (imports, the helper and the constant that batch_norm_conv needs), and the next task passes."""
    r, e = row(graded, "hung_task.ipynb")
    assert r["status"] == "timeout" and "did not stop" in r["detail"] and "fresh kernel" in r["detail"], r["detail"]
    assert float(r["batch_norm_forward"]) == 0
    assert float(r["batch_norm_conv"]) == POINTS["batch_norm_conv"], messages(e, "batch_norm_conv")


def test_a_task_that_kills_its_kernel_costs_only_itself(graded):
    r, e = row(graded, "task_kills_kernel.ipynb")
    assert r["status"] == "kernel_died" and "fresh kernel" in r["detail"], r["detail"]
    assert float(r["batch_norm_forward"]) == 0
    assert float(r["batch_norm_conv"]) == POINTS["batch_norm_conv"], messages(e, "batch_norm_conv")


def test_hung_tasks_stay_within_the_submission_time_limit(tmp_path):
    """Both tasks hang; the first one's hang reaches the submission's limit, so no fresh kernel is started and
    the second task is not run, for that reason."""
    nb = replace(sol_with_hang(), "    ### BEGIN SOLUTION\n    axes = (0, 2, 3)", HANG.replace("mean = x.mean(axis=0)",
                                                                                             "axes = (0, 2, 3)"))
    (tmp_path / "subs").mkdir()
    save(nb, tmp_path / "subs" / "hangs_twice.ipynb")
    (g,) = Grader(timeout=2, submission_timeout=6).grade([tmp_path / "subs"])
    assert g.status == "timeout" and "did not stop" in g.detail and "no fresh kernel" in g.detail, g.detail
    conv = next(t for t in g.tasks if t.name == "batch_norm_conv")
    assert conv.score == 0 and "not run: the submission's time limit was reached" in " ".join(conv.messages)


def sol_with_hang():
    return replace(solution(), "    ### BEGIN SOLUTION\n    mean = x.mean(axis=0)", HANG)


def test_network_is_unreachable(graded):
    r, e = row(graded, "network.ipynb")
    assert (r["status"], float(r["score"])) == ("ok", FULL), r["detail"]
    assert graded["accepted"] == 0


@pytest.mark.parametrize("name, reason", [
    ("foreign_kernel.ipynb", "not Python"),
    ("empty.ipynb", "empty file"),
    ("invalid_json.ipynb", "not valid JSON"),
    ("not_a_notebook.ipynb", "not a valid notebook"),
])
def test_invalid_files_get_an_invalid_row(graded, name, reason):
    r, e = row(graded, name)
    assert r["status"] == "invalid" and reason in r["detail"] and float(r["score"]) == 0


def test_blank_exercise_scores_zero(graded):
    r, e = row(graded, "blank_02.ipynb")
    assert (r["chapter"], float(r["score"])) == ("2", 0)
    assert "NotImplementedError" in messages(e)


@pytest.mark.skipif(sys.platform != "linux", reason="namespaces are Linux only")
def test_isolation_report_lists_what_was_enforced(graded):
    _, e = row(graded, "correct.ipynb")
    assert "audit hook" in e["isolation"]
    assert any(x.startswith("RLIMIT_AS") for x in e["isolation"])


def test_without_namespaces_the_audit_hook_still_blocks_network_snooping_and_writes(tmp_path):
    """The fallback for systems without namespaces: a weaker wall (ctypes could pass it), but a wall."""
    listener = Listener()
    check_file = Path(normlab.check.__file__).with_name("_task.py")
    digest = hashlib.sha256(check_file.read_bytes()).hexdigest()
    subs = tmp_path / "subs"
    subs.mkdir()
    attempts = {
        "net": f"import socket\nsocket.create_connection(('127.0.0.1', {listener.port}), timeout=1)",
        "child": "import subprocess\nsubprocess.run(['true'])",
        "snoop": f"open({str(REPO / 'solutions' / '02.md')!r}).read()",
        "write": f"open({str(check_file)!r}, 'a').write('TASKS = {{}}')",
    }
    for name, code in attempts.items():
        save(add_cell(solution(), code), subs / f"{name}.ipynb")
    try:
        grades = Grader(timeout=TIMEOUT, jobs=2, namespaces=False).grade([subs])
    finally:
        listener.close()
    details = {Path(g.path).stem: g for g in grades}
    for name in attempts:
        g = details[name]
        assert g.status == "error" and "PermissionError" in g.detail and g.score == FULL, (name, g.detail)
        assert any(x.startswith("not enforced: no namespaces") for x in g.isolation)
    assert listener.accepted == 0
    assert hashlib.sha256(check_file.read_bytes()).hexdigest() == digest
