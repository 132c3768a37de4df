"""One submission, in its own process: ``python -m normlab.grading.worker JOBDIR``.

The grader writes ``JOBDIR/job.json`` (code cells, task functions, limits) and
the cases, one pickle per task. This worker starts a sandboxed kernel (see
`sandbox`), runs the code cells one at a time with a time limit each, then runs
the harness for each task, which writes plain outputs into the kernel's
working folder. It records what happened in ``JOBDIR/result.json`` after every
step, so that the grader still learns something if it has to kill the worker.
It never judges anything: the grader does that in its own process.

The work folder is the student's. As root, the worker first gives itself a
mount namespace and puts a size-capped tmpfs on it (the kernel inherits it),
so that many files under ``RLIMIT_FSIZE`` cannot fill the machine's disk
either; it goes away with the worker. After each task, the worker copies the
task's output files, if they are regular files within the size limit, into
``JOBDIR/out``, where the grader reads them.

A hung task costs only itself. The harness notes which call it is in; a call
that outlives its limit (the harness's own alarm was caught and ignored) is
interrupted, and if that does not stop it either, the kernel is killed, a
fresh one is started, the notebook's set-up (imports, definitions and
assignments at top level, see `setup_code`) is run again, and the remaining
tasks go on, all within the submission's time limit.

Only the shell channel is connected. IOPub (printed output, plots) is never
subscribed to, so the kernel's messages are dropped at the source, and a cell
that prints megabytes costs the grader nothing.
"""
import ast
import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.connect import write_connection_file

SANDBOX = Path(__file__).with_name("sandbox.py")
INTERRUPT_GRACE_S = 5.0  # after SIGINT, how long a cell gets to stop before the kernel is killed
OUT_OF_TIME = "the submission's time limit was reached"  # the detail of whatever that left not run
CALL_GRACE_S = 2.0  # past a call's limit, how long the harness's own alarm gets to stop it
STARTUP_TIMEOUT_S = 60.0
SETUP_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
               ast.AnnAssign)


def kill_uid(uid):
    """Kill every process of a kernel's private uid: children the student started, daemonised or not."""
    if uid is None or os.getuid() != 0:
        return
    # `kill -9 -1` as that uid reaches exactly that uid's processes. /bin/kill, not sys.executable:
    # the interpreter may live where the uid cannot enter (e.g. /root/.pyenv).
    kill = shutil.which("kill") or "/bin/kill"
    subprocess.run([kill, "-9", "-1"], user=uid, group=uid, extra_groups=[], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _is_setup(node):
    """Imports, definitions and assignments; an ``if``/``try`` only when everything in it is set-up too."""
    if isinstance(node, SETUP_NODES):
        return True
    if isinstance(node, ast.If):
        return all(map(_is_setup, node.body + node.orelse))
    if isinstance(node, ast.Try):
        bodies = node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body]
        return all(isinstance(n, ast.Pass) or _is_setup(n) for n in bodies)
    return False


def setup_code(source):
    """The set-up part of a cell, to run again in a fresh kernel: its top-level imports, function and class
    definitions and assignments, without the calls, loops and prints around them. "" when there is none."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)  # magics and !shell lines, as the kernel saw them
    except Exception:  # noqa: BLE001 - without IPython, plain Python cells still work
        pass
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    keep = [node for node in tree.body if _is_setup(node)]
    return ast.unparse(ast.Module(body=keep, type_ignores=[])) if keep else ""


def _read_small(path, size=64):
    """Up to ``size`` bytes of a regular file in the student's folder, never through a link; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.read(fd, size) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def kernel_env(work):
    """A small, explicit environment: nothing from the grader's environment leaks in (no PYTHONPATH)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": str(work), "TMPDIR": str(work),
        "IPYTHONDIR": str(work / ".ipython"), "JUPYTER_RUNTIME_DIR": str(work / ".jupyter"),
        "MPLCONFIGDIR": str(work / ".matplotlib"), "XDG_CACHE_HOME": str(work / ".cache"),
        "MPLBACKEND": "Agg", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
        # one thread each: parallel jobs share the cores, and every BLAS thread reserves address space
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }
    return env


class Worker:
    def __init__(self, jobdir):
        self.jobdir = Path(jobdir)
        self.job = json.loads((self.jobdir / "job.json").read_text())
        self.work = self.jobdir / "work"
        self.deadline = time.monotonic() + self.job["submission_timeout"]
        self.result = {"kernel": "not_started", "kernel_detail": "", "cells": [], "tasks": {}, "isolation": {}}
        self.proc = None
        self.client = None
        self.starts = 0
        self.cleanup = []  # folders outside the job folder to remove at the end
        self.out = self.jobdir / "out"
        self.out.mkdir(mode=0o700, exist_ok=True)

    def cap_work_folder(self):
        """As root: a private mount namespace with a tmpfs of ``work_mb`` on the work folder. Must run
        before any thread starts (``unshare`` refuses a multi-threaded process)."""
        size = self.job.get("work_mb")
        if not size or os.getuid() != 0 or not self.job.get("namespaces", True):
            return
        from . import sandbox

        notebook = self.work / self.job["notebook"]
        try:
            data = notebook.read_bytes()
            sandbox._call(sandbox._libc.unshare, sandbox.CLONE_NEWNS)
            sandbox._mount(None, "/", None, sandbox.MS_REC | sandbox.MS_PRIVATE)
            sandbox._mount("tmpfs", str(self.work), "tmpfs", sandbox.MS_NOSUID | sandbox.MS_NODEV,
                           f"size={int(size)}m,mode=700")
            notebook.write_bytes(data)
            self.result["work"] = {"enforced": [f"work folder: {size} MiB tmpfs"], "problems": []}
        except OSError as e:
            self.result["work"] = {"enforced": [], "problems": [f"work folder on disk, no size cap: {e}"]}

    def export(self, stem):
        """Copy one task's output files from the work folder into ``out/``: regular files only, never through
        a link, at most the size the grader accepts. A file that fails this is left behind (the grader then
        reports it missing)."""
        limit = (self.job.get("fsize_mb") or 2**20) * 2**20
        for suffix in (".json", ".npz"):
            source = self.work / (stem + suffix)
            try:
                fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
                    continue
                with os.fdopen(os.dup(fd), "rb") as src, open(self.out / (stem + suffix), "wb") as dst:
                    shutil.copyfileobj(src, dst)
            finally:
                os.close(fd)

    def save(self):
        tmp = self.jobdir / "result.json.tmp"
        tmp.write_text(json.dumps(self.result))
        tmp.chmod(0o600)
        tmp.replace(self.jobdir / "result.json")

    # -- kernel ---------------------------------------------------------------------------------------------

    def _runtime_folder(self):
        """A fresh folder for this start's connection file and sockets, made by us: the student's uid has had
        no chance to plant links in it, so writing the connection file there as root is safe."""
        runtime = self.jobdir / f"kernel{self.starts}"
        if len(str(runtime)) > 80:  # a Unix socket path must fit in 108 bytes
            runtime = Path(tempfile.mkdtemp(prefix="nlg-", dir="/tmp"))
            self.cleanup.append(runtime)
        else:
            runtime.mkdir(mode=0o700)
        return runtime

    def start_kernel(self, startup_timeout=STARTUP_TIMEOUT_S):
        uid = self.job.get("uid")
        self.starts += 1
        runtime = self._runtime_folder()
        conn = runtime / "connection.json"
        write_connection_file(str(conn), ip=str(runtime / "k"), transport="ipc")
        newroot = self.jobdir / "root"  # the mount point of the kernel's new root (see sandbox)
        newroot.mkdir(mode=0o700, exist_ok=True)
        config = {
            "memory_mb": self.job.get("memory_mb"), "uid": uid, "hide": self.job["hide"],
            "readonly": self.job["readonly"], "reveal": self.job.get("reveal", []),
            "report": str(self.jobdir / "sandbox.json"), "connection_file": str(conn),
            "namespaces": self.job.get("namespaces", True), "newroot": str(newroot), "workdir": str(self.work),
            "allow_ro": self.job.get("allow_ro", []) + [str(self.jobdir / "cases")],
            "allow_rw": [str(self.work), str(runtime)],
            "tmp_mb": self.job.get("tmp_mb", 64), "fsize_mb": self.job.get("fsize_mb"),
        }
        (self.jobdir / "sandbox_config.json").write_text(json.dumps(config))
        (self.jobdir / "sandbox_config.json").chmod(0o600)  # read by the sandbox before it drops root
        if uid is not None and os.getuid() == 0:
            paths = [runtime, conn] + ([self.work, *self.work.iterdir()] if self.starts == 1 else [])
            for path in paths:  # at the first start work/ holds only what the grader put there
                os.chown(path, uid, uid, follow_symlinks=False)
        log = open(os.open(self.jobdir / "kernel.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-s", str(SANDBOX), str(self.jobdir / "sandbox_config.json")],
            cwd=self.work, env=kernel_env(self.work), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        self.client = BlockingKernelClient()
        self.client.load_connection_file(str(conn))
        self.client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        deadline = time.monotonic() + startup_timeout
        msg_id = self.client.kernel_info()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                reply = self.client.get_shell_msg(timeout=0.25)
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                self.result["kernel"] = "running"
                try:
                    self.result["isolation"] = json.loads((self.jobdir / "sandbox.json").read_text())
                except (OSError, ValueError):
                    self.result["isolation"] = {"enforced": [], "problems": ["the sandbox wrote no report"]}
                return True
        self.result["kernel"] = "start_failed"
        self.result["kernel_detail"] = self.log_tail()
        return False

    def stop_kernel(self):
        """Kill the kernel and everything the student started under its uid."""
        if self.client is not None:
            self.client.stop_channels()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        kill_uid(self.job.get("uid"))

    def log_tail(self, size=1500):
        try:
            data = (self.jobdir / "kernel.log").read_bytes()[-size:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace").strip()

    def execute(self, code, limit, progress=None, call_limit=None):
        """Run one cell within ``limit`` seconds and the submission's deadline: ``(state, detail)``,
        state in ok / error / timeout / died / hung.

        With ``progress`` (the file in which the harness writes which call it is in), a call that runs
        ``call_limit + CALL_GRACE_S`` seconds without the file changing counts as past its limit too.
        """
        msg_id = self.client.execute(code, store_history=False, allow_stdin=False, stop_on_error=False)
        if limit < self.remaining():
            overall = time.monotonic() + limit, f"the {limit:g} s limit"
        else:
            overall = self.deadline, f"the submission's {self.job['submission_timeout']:g} s time limit"
        deadline, why = overall
        interrupted = False
        seen = None
        while True:
            try:
                reply = self.client.get_shell_msg(timeout=0.25)
            except queue.Empty:
                reply = None
            if progress is not None and not interrupted:
                current = _read_small(progress)
                if current is not None and current != seen:  # a new call started: it gets its own limit
                    seen = current
                    call = time.monotonic() + call_limit + CALL_GRACE_S, f"the {call_limit:g} s limit of one call"
                    deadline, why = min(overall, call)
            if reply is not None and reply["parent_header"].get("msg_id") == msg_id:
                content = reply["content"]
                if interrupted:
                    return "timeout", f"interrupted at {why}"
                if content.get("status") == "ok":
                    return "ok", ""
                name, value = content.get("ename", "Error"), content.get("evalue", "")
                return "error", (f"{name}: {value}" if value else name)[:300]
            if self.proc.poll() is not None:
                return "died", f"the kernel exited (code {self.proc.returncode})"
            if time.monotonic() > deadline:
                if interrupted:
                    return "hung", f"did not stop at {why}, nor {INTERRUPT_GRACE_S:g} s after an interrupt"
                os.kill(self.proc.pid, signal.SIGINT)
                interrupted = True
                deadline = time.monotonic() + INTERRUPT_GRACE_S

    def remaining(self):
        return self.deadline - time.monotonic()

    # -- the run --------------------------------------------------------------------------------------------

    def restart(self, after):
        """A fresh kernel with the notebook's set-up run again, after task ``after`` hung or killed its kernel."""
        self.stop_kernel()
        entry = {"after": after, "state": "not_run", "detail": ""}
        self.result.setdefault("restarts", []).append(entry)
        if self.remaining() <= 0:
            entry["detail"] = OUT_OF_TIME
            return False
        if not self.start_kernel(min(STARTUP_TIMEOUT_S, self.remaining())):
            entry["state"], entry["detail"] = "start_failed", self.result["kernel_detail"][-300:]
            return False
        ran = [cell["cell"] for cell in self.result["cells"] if cell["state"] != "not_run"]
        for index in ran:
            code = setup_code(self.job["cells"][index - 1])
            if not code:
                continue
            if self.remaining() <= 0:
                entry["state"], entry["detail"] = "timeout", OUT_OF_TIME
                return False
            state, detail = self.execute(code, self.job["cell_timeout"])
            if state in ("died", "hung"):
                entry["state"], entry["detail"] = state, f"set-up of code cell {index}: {detail}"
                return False
        entry["state"] = "ran"
        return True

    def run(self):
        self.cap_work_folder()
        self.save()
        if not self.start_kernel():
            self.save()
            return
        cell_timeout = self.job["cell_timeout"]
        alive = True
        for index, code in enumerate(self.job["cells"], start=1):
            entry = {"cell": index, "state": "not_run", "detail": ""}
            self.result["cells"].append(entry)
            if not alive or self.remaining() <= 0:
                entry["detail"] = "the kernel had died" if not alive else OUT_OF_TIME
                continue
            entry["state"], entry["detail"] = self.execute(code, cell_timeout)
            alive = entry["state"] not in ("died", "hung")
            self.save()
        for task in self.job["tasks"]:
            entry = {"state": "not_run", "detail": ""}
            self.result["tasks"][task["name"]] = entry
            if not alive or self.remaining() <= 0:
                entry["detail"] = (OUT_OF_TIME if self.remaining() <= 0
                                   else "the kernel had died")
                continue
            out = self.work / f".grader-{task['name']}"
            progress = str(out) + ".progress"
            code = ("from normlab.grading.harness import run_task as __normlab_run_task\n"
                    f"__normlab_run_task(globals(), {task['function']!r}, {task['cases']!r}, "
                    f"{str(out) + '.json'!r}, {str(out) + '.npz'!r}, {float(cell_timeout)!r}, {progress!r})\n"
                    "del __normlab_run_task\n")
            budget = cell_timeout * (task["n_cases"] + 1) + 10
            state, detail = self.execute(code, budget, progress=progress, call_limit=cell_timeout)
            entry["state"], entry["detail"] = ("ran" if state == "ok" else state), detail
            entry["json"], entry["npz"] = str(out) + ".json", str(out) + ".npz"
            if state == "ok":
                self.export(out.name)
            if state in ("died", "hung") and task is not self.job["tasks"][-1]:
                alive = self.restart(task["name"])  # the tasks after this one get a fresh kernel
                entry["detail"] += ("; a fresh kernel ran the set-up again for the remaining tasks" if alive
                                    else "; no fresh kernel could take over the remaining tasks")
            else:
                alive = state not in ("died", "hung")
            self.save()
        self.result["kernel"] = "running" if alive else "dead"
        self.save()

    def stop(self):
        if self.client is not None:
            self.client.stop_channels()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    worker = Worker(argv[0])
    try:
        worker.run()
    finally:
        worker.stop()
        for folder in worker.cleanup:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
