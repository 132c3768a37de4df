"""The grader process: one worker process and one sandboxed kernel per submission; judging happens here.

For each submission the grader

1. parses it as data (`submission.load`: links and non-regular files are
   refused unread) and decides its chapter;
2. writes the chapter's cases (inputs only) and the code cells into a private
   job folder, and starts ``python -m normlab.grading.worker`` on it in a new
   session, killing that whole session if it outlives the submission's limit.
   What the kernel may see (the allowlist, see `sandbox`) is worked out once
   per batch, in `Grader._isolation`;
3. kills every process left under the submission's private uid;
4. reads the outputs back as plain data (`plain.load`, never a pickle) and
   calls ``Task.judge`` here, where student code never ran;
5. scores each task as ``points * passed / total`` checks.

Nothing a submission does can stop the batch: every failure becomes a status
on that submission's row.
"""
import json
import os
import pickle
import queue
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import plain, submission
from .library_use import library_calls

# Worst first: a row's status is the worst thing that happened to it.
STATUSES = ("invalid", "grader_error", "kernel_died", "timeout", "memory", "error", "ok")
MAX_OUTPUT_BYTES = 256 * 2**20  # also the kernel's RLIMIT_FSIZE: it cannot write a file we would refuse
UID_BASE = 1_000_000  # private uids for kernels, far above any real account
TMP_MB = 64  # each of the kernel's private /tmp, /var/tmp and /dev/shm
WORK_MB = 512  # the kernel's work folder (a tmpfs when grading as root): room for two outputs at the limit


@dataclass
class TaskGrade:
    name: str
    points: float
    score: float = 0.0
    passed: int = 0
    total: int = 0
    messages: list = field(default_factory=list)  # one per failed check: "check name: hint"


@dataclass
class Grade:
    path: str
    status: str = "ok"
    chapter: int | None = None
    score: float = 0.0
    max_score: float | None = None
    detail: str = ""  # the first thing that went wrong, e.g. "code cell 3: ZeroDivisionError: division by zero"
    tasks: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # every non-ok cell or task run, in order
    isolation: list = field(default_factory=list)
    seconds: float = 0.0
    student_id: str = ""  # from the roster, else from the file name (`gradebook.id_from_path`)
    name: str = ""
    answers: list = field(default_factory=list)  # written answers: {"question", "cell", "text", "blank"}
    library_use: list = field(default_factory=list)  # advisory: {"task", "calls"}; never changes the score
    manual: list = field(default_factory=list)  # the instructor's points: {"question", "points", "max_points"}
    total: float = 0.0  # score + manual points
    max_total: float | None = None  # max_score + the chapter's manual maxima

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        """The inverse of `to_dict`, for reports read back (``normlab grade merge``)."""
        data = dict(data)
        data["tasks"] = [TaskGrade(**t) for t in data.get("tasks", [])]
        return cls(**data)


def _out_of_time(entry):
    """A cell or task the worker skipped because the submission's time limit was reached."""
    from .worker import OUT_OF_TIME

    return entry["state"] == "not_run" and entry["detail"] == OUT_OF_TIME


def _worst(statuses):
    return min(statuses, key=STATUSES.index, default="ok")


def _repo_root():
    """The source checkout normlab runs from (editable install), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").exists() and (root / "src" / "normlab").is_dir() else None


def _inside(path, other):
    """True when ``path`` is ``other`` or one of its parents."""
    return other == path or path in other.parents


def _kernel_sys_path(root):
    """``sys.path`` of the kernel's interpreter, as the sandbox starts it (``-s``, the kernel's environment)."""
    from .worker import kernel_env

    code = "import json, sys; print(json.dumps([p for p in sys.path if p]))"
    try:
        out = subprocess.run([sys.executable, "-s", "-c", code], cwd=root, env=kernel_env(Path(root)),
                             capture_output=True, text=True, check=True, timeout=60).stdout
        return [Path(p) for p in json.loads(out)]
    except (OSError, subprocess.SubprocessError, ValueError):
        return [Path(p) for p in sys.path if p]  # ours: a superset of the kernel's, less the user site


def _interpreter(executable):
    """The ELF program interpreter (dynamic loader) of ``executable``, e.g. /lib64/ld-linux-x86-64.so.2."""
    import struct

    try:
        with open(executable, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only; else the folders found below must do
                return None
            end = "<" if head[5] == 1 else ">"
            phoff, = struct.unpack(end + "Q", head[32:40])
            phentsize, phnum = struct.unpack(end + "HH", head[54:58])
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                p_type, _, p_offset, _, _, p_filesz = struct.unpack(end + "IIQQQQ", f.read(40))
                if p_type == 3:  # PT_INTERP
                    f.seek(p_offset)
                    return f.read(p_filesz).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def _library_paths(python_paths):
    """The system folders this Python loads shared libraries from, as the kernel will look them up.

    Read from this process's own memory map (it runs the same interpreter, NumPy and normlab as the
    kernel), outside the Python folders; plus the dynamic loader and ``/etc/ld.so.cache``. A folder is
    also allowed by the names the loader knows it by (``/lib/x86_64-linux-gnu`` for
    ``/usr/lib/x86_64-linux-gnu``), so that the links on the way exist in the kernel's root.
    """
    folders = set()
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        maps = []
    for line in maps:
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/") and ".so" in fields[5]:
            folder = Path(fields[5].strip()).parent
            if not any(_inside(p, folder) for p in python_paths):
                folders.add(folder)
    paths = set(folders)
    for alias in ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib"):
        real = Path(alias).resolve()
        for folder in folders:
            if real != Path(alias) and _inside(real, folder):
                paths.add(Path(alias) / folder.relative_to(real))
    loader = _interpreter(os.path.realpath(sys.executable))
    for extra in (loader, "/etc/ld.so.cache"):
        if extra and os.path.lexists(extra):
            paths.add(Path(extra))
    return paths


class Grader:
    """Grade submissions; see `grade`. ``tasks`` defaults to ``normlab.check.TASKS``."""

    def __init__(self, tasks=None, *, timeout=30.0, submission_timeout=None, memory_mb=2048, jobs=1,
                 progress=None, keep_temp=False, namespaces=True, work_mb=WORK_MB):
        if tasks is None:
            from normlab.check import TASKS as tasks
        if not tasks:
            raise ValueError("no tasks to grade against")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if jobs < 1 or jobs > 64:
            raise ValueError(f"jobs must be between 1 and 64, got {jobs}")
        if memory_mb is not None and memory_mb < 256:
            raise ValueError(f"memory_mb must be at least 256 (a kernel needs that much to start), got {memory_mb}")
        self.tasks = dict(tasks)
        self.timeout = float(timeout)
        self.submission_timeout = float(submission_timeout or max(120.0, 10 * self.timeout))
        if self.submission_timeout <= 0:
            raise ValueError(f"submission_timeout must be positive, got {submission_timeout}")
        self.memory_mb = memory_mb
        self.jobs = jobs
        self.progress = progress
        self.keep_temp = keep_temp
        self.namespaces = namespaces  # False: audit hook and rlimits only, as on a system without namespaces
        if work_mb is not None and work_mb < 16:
            raise ValueError(f"work_mb must be at least 16 (the kernel keeps its settings there), got {work_mb}")
        self.work_mb = work_mb  # None: the work folder stays on disk, capped per file only
        self._task_lock = threading.Lock()

    # -- isolation settings shared by all submissions -------------------------------------------------------

    def _isolation(self, inputs, root):
        """What the kernels may see (``allow_ro``, the allowlist) and, for the fallback without a new root,
        what they must not (``hide``, ``readonly``, ``reveal``)."""
        import normlab

        repo = _repo_root()
        package = Path(normlab.__file__).resolve().parent
        prefixes = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
        python = set(prefixes) | {Path(sys.executable)}
        for entry in _kernel_sys_path(root):
            # an editable install puts the checkout's src/ on sys.path: allow the package, not its folder
            if entry.exists() and not (_inside(entry, package) and not any(_inside(p, entry) for p in prefixes)):
                python.add(entry)
        resolved = {Path(os.path.realpath(p)) for p in python}
        allow = python | {package} | _library_paths(resolved | {package})
        hide, readonly = [], []
        if repo is not None:
            hide += [repo / name for name in ("solutions", "tests", ".git") if (repo / name).exists()]
            readonly.append(repo)
        readonly += [Path(p).resolve() for p in {sys.prefix, sys.base_prefix}]
        # other students' submissions: hide where they came from, unless that would hide what the kernel needs
        needed = [root, package, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
        for p in inputs:
            p = Path(p).resolve()
            if not any(_inside(p, n) for n in needed):
                hide.append(p)
        reveal = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), package.parent}
        reveal |= {Path(p).resolve() for p in sys.path if p and Path(p).is_dir() and "site-packages" in p}
        return {"allow_ro": sorted({str(p) for p in allow}), "hide": sorted({str(p) for p in hide}),
                "readonly": sorted({str(p) for p in readonly}), "reveal": sorted(str(p) for p in reveal)}

    # -- one submission -------------------------------------------------------------------------------------

    def _write_job(self, jobdir, sub, chapter_tasks, uid, isolation):
        jobdir.chmod(0o711)  # the kernel's uid may pass through to work/ and cases/, not list or read the rest
        work = jobdir / "work"
        work.mkdir(mode=0o700)
        (work / sub.path.name).write_bytes(sub.data)  # the bytes read once in `submission.load`; no second read
        cases_dir = jobdir / "cases"
        cases_dir.mkdir(mode=0o755)
        tasks, cases = [], {}
        for task in chapter_tasks:
            cases[task.name] = task.cases()
            path = cases_dir / f"{task.name}.pkl"
            with open(path, "wb") as f:
                pickle.dump(cases[task.name], f)
            path.chmod(0o644)
            tasks.append({"name": task.name, "function": task.function, "cases": str(path),
                          "n_cases": len(cases[task.name])})
        job = {"cells": sub.cells, "tasks": tasks, "cell_timeout": self.timeout,
               "submission_timeout": self.submission_timeout, "memory_mb": self.memory_mb, "uid": uid,
               "namespaces": self.namespaces, "tmp_mb": TMP_MB, "fsize_mb": MAX_OUTPUT_BYTES // 2**20,
               "work_mb": self.work_mb, "notebook": sub.path.name, **isolation}
        (jobdir / "job.json").write_text(json.dumps(job))
        (jobdir / "job.json").chmod(0o600)  # the kernel's uid may enter jobdir but has no business reading this
        return cases

    def _run_worker(self, jobdir):
        """Run the worker; returns ``(killed, returncode)``. Kills its whole session past the time limit."""
        from .worker import STARTUP_TIMEOUT_S  # here, not at the top: `python -m ...worker` must import it first
        with open(jobdir / "worker.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "normlab.grading.worker", str(jobdir)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        try:
            proc.wait(timeout=self.submission_timeout + STARTUP_TIMEOUT_S + 15)
            return False, proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True, proc.returncode

    @staticmethod
    def _kill_uid(uid):
        from .worker import kill_uid  # here, not at the top: see `_run_worker`

        kill_uid(uid)

    def _outputs(self, task, cases, entry, out):
        """The outputs to judge for one task: what the kernel wrote, or an error output per case."""
        def failed(error):
            return [{"result": None, "args": case.get("args", []), "error": error} for case in cases]

        if entry is None:
            return failed("not run: the submission stopped before this task")
        if entry["state"] != "ran":
            reason = {"timeout": "timed out", "died": "the kernel died", "hung": "timed out"}.get(entry["state"])
            return failed(f"not run: {entry['detail'] or reason or entry['state']}")
        paths = [out / Path(entry[k]).name for k in ("json", "npz")]
        for p in paths:  # the worker copied only regular files; check again all the same
            if not p.exists() or not stat.S_ISREG(os.lstat(p).st_mode):
                return failed("grader: the task's output files are missing, or were links or over the size "
                              "limit (did the code replace them?)")
        try:
            data = plain.load(*paths, max_bytes=MAX_OUTPUT_BYTES)
        except plain.PlainDataError as e:
            return failed(f"grader: {e}")
        if isinstance(data, dict) and isinstance(data.get("missing"), str):
            return failed(f"NameError: {data['missing']}")
        outputs = data.get("outputs") if isinstance(data, dict) else None
        if (not isinstance(outputs, list) or len(outputs) != len(cases)
                or not all(isinstance(o, dict) and set(o) == {"result", "args", "error"}
                           and (o["error"] is None or isinstance(o["error"], str)) for o in outputs)):
            return failed("grader: the output file does not have the expected layout (was it tampered with?)")
        return outputs

    def _judge(self, grade, chapter_tasks, cases, result, out):
        entries = result.get("tasks", {})
        for task in chapter_tasks:
            tg = TaskGrade(task.name, float(task.points))
            grade.tasks.append(tg)
            outputs = self._outputs(task, cases[task.name], entries.get(task.name), out)
            refused = [o["error"] for o in outputs if (o["error"] or "").startswith("grader:")]
            if refused:
                grade.problems.append(("error", f"{task.name}: outputs refused: {refused[0][len('grader: '):]}"))
            for o in outputs:
                err = o["error"] or ""
                if err.startswith("TimeoutError: the call took"):
                    grade.problems.append(("timeout", f"{task.function}: {err}"))
                elif err.startswith("MemoryError"):
                    grade.problems.append(("memory", f"{task.function}: {err}"))
            try:
                checks = list(task.judge(outputs))
            except Exception as e:  # noqa: BLE001 - a checker bug must not lose the batch
                tg.messages.append(f"grader: the checker failed on these outputs: {type(e).__name__}: {e}"[:300])
                grade.problems.append(("grader_error", f"{task.name}: checker failed: {type(e).__name__}: {e}"))
                continue
            tg.total = len(checks)
            tg.passed = sum(bool(c.passed) for c in checks)
            tg.score = tg.points * tg.passed / tg.total if tg.total else 0.0
            tg.messages = [f"{c.name}: {c.message}" for c in checks if not c.passed]

    def grade_one(self, path, uid, isolation, root):
        start = time.monotonic()
        grade = Grade(str(path))
        try:
            self._grade_into(grade, path, uid, isolation, root)
        except Exception as e:  # noqa: BLE001 - a grader bug on one file still gives that file a row
            grade.status, grade.detail = "grader_error", f"{type(e).__name__}: {e}"[:300]
        grade.seconds = round(time.monotonic() - start, 2)
        return grade

    def _grade_into(self, grade, path, uid, isolation, root):
        sub = submission.load(path, self.tasks)
        grade.chapter = sub.chapter
        grade.answers = sub.answers
        chapter_tasks = [t for t in self.tasks.values() if t.chapter == sub.chapter]
        if sub.chapter is not None:
            grade.max_score = float(sum(t.points for t in chapter_tasks))
        if sub.problem:
            grade.status, grade.detail = "invalid", sub.problem
            grade.tasks = [TaskGrade(t.name, float(t.points), messages=[f"not graded: {sub.problem}"])
                           for t in chapter_tasks]
            return
        grade.library_use = library_calls(sub.cells, chapter_tasks)
        jobdir = Path(tempfile.mkdtemp(prefix=f"{sub.path.stem[:40]}-", dir=root))
        try:
            with self._task_lock:  # Task objects are shared by the threads; they need not be thread-safe
                cases = self._write_job(jobdir, sub, chapter_tasks, uid, isolation)
            killed, returncode = self._run_worker(jobdir)
            self._kill_uid(uid)
            result_path = jobdir / "result.json"
            result = json.loads(result_path.read_text()) if result_path.exists() else {}
            reports = [result.get("isolation", {}), result.get("work", {})]
            grade.isolation = [x for r in reports for x in r.get("enforced", [])] + [
                f"not enforced: {p}" for r in reports for p in r.get("problems", [])]
            if killed:
                grade.problems.append(("timeout", f"the submission ran past its {self.submission_timeout:g} s limit"))
            elif returncode != 0 or result.get("kernel") == "start_failed":
                log = result.get("kernel_detail") or (jobdir / "worker.log").read_text(errors="replace")[-1500:]
                grade.problems.append(("grader_error", f"the kernel could not be run: {log.strip()[-600:]}"))
            for cell in result.get("cells", []):
                state = cell["state"]
                kind = {"error": "memory" if cell["detail"].startswith("MemoryError") else "error",
                        "timeout": "timeout", "hung": "timeout", "died": "kernel_died"}.get(state)
                if kind:
                    grade.problems.append((kind, f"code cell {cell['cell']}: {cell['detail']}"))
            for name, entry in result.get("tasks", {}).items():
                kind = {"error": "error", "timeout": "timeout", "hung": "timeout",
                        "died": "kernel_died"}.get(entry["state"])
                if kind:
                    grade.problems.append((kind, f"calling {name}: {entry['detail']}"))
            skipped = [f"code cell {c['cell']}" for c in result.get("cells", []) if _out_of_time(c)]
            skipped += [f"calling {name}" for name, e in result.get("tasks", {}).items() if _out_of_time(e)]
            if skipped and not killed:  # e.g. a slow kernel start ate the limit: that is a timeout, not "ok"
                grade.problems.append(("timeout", f"the submission's {self.submission_timeout:g} s time limit "
                                                  f"was reached before {skipped[0]}"))
            with self._task_lock:
                self._judge(grade, chapter_tasks, cases, result, jobdir / "out")
        finally:
            if not self.keep_temp:
                shutil.rmtree(jobdir, ignore_errors=True)
        grade.score = round(sum(t.score for t in grade.tasks), 6)
        grade.total = grade.score
        grade.status = _worst(kind for kind, _ in grade.problems)
        worst = [d for k, d in grade.problems if k == grade.status]
        grade.detail = worst[0][:300] if worst else ""
        grade.problems = [f"{k}: {d}"[:300] for k, d in grade.problems]

    # -- a batch --------------------------------------------------------------------------------------------

    def grade(self, paths, files=None):
        """Grade every notebook under ``paths`` (or just ``files``, found there); one `Grade` per file, in order."""
        files = submission.find(paths) if files is None else list(files)
        if not files:
            raise ValueError(f"no notebooks (.ipynb, or .md with jupytext front matter) found in {list(map(str, paths))}")
        root = Path(tempfile.mkdtemp(prefix="normlab-grade-"))
        root.chmod(0o711)
        isolation = self._isolation(paths, root)
        slots = queue.Queue()
        base = UID_BASE + (os.getpid() % 40_000) * 100  # distinct from any other grader running now
        for slot in range(self.jobs):
            slots.put(base + slot if os.getuid() == 0 else None)
        grades = [None] * len(files)
        lock = threading.Lock()

        def work(i):
            uid = slots.get()
            try:
                return i, self.grade_one(files[i], uid, isolation, root)
            finally:
                slots.put(uid)

        try:
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                done = 0
                for future in as_completed([pool.submit(work, i) for i in range(len(files))]):
                    i, grade = future.result()
                    grades[i] = grade
                    with lock:
                        done += 1
                        if self.progress:
                            self.progress(done, len(files), grade)
        finally:
            if not self.keep_temp:
                shutil.rmtree(root, ignore_errors=True)
        return grades


def select_shard(files, index, count):
    """The ``index``-th (1-based) of ``count`` shards of ``files``: every ``count``-th file of the sorted list.

    Deterministic for the same set of files on any machine, and balanced: chapters and sizes interleave.
    """
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: the shard number must be between 1 and {count}")
    return sorted(files, key=str)[index - 1::count]


def grade(paths, tasks=None, **options):
    """Grade the notebooks under ``paths`` (see `Grader` for the options); returns a list of `Grade`."""
    return Grader(tasks, **options).grade(paths)
