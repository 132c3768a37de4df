"""Kernel launcher for one submission: lock the process down, then become an IPython kernel.

Run as ``python -s sandbox.py CONFIG.json`` (by path, so that nothing from
normlab is imported before the lock-down). It applies, in order, whatever the
OS allows, records what it managed in ``config["report"]``, and then runs
``ipykernel`` in this same process, so that the grader's SIGINT and SIGKILL
reach the kernel itself.

1. Network: a new network namespace (``unshare(CLONE_NEWNET)``), which has no
   interface up, not even loopback. The kernel talks to the grader over Unix
   sockets (ZMQ ``ipc`` transport), which a network namespace does not cut.
   An IPC namespace too, so System V shared memory, semaphores and message
   queues are the kernel's own.
2. Files, by allowlist: a new mount namespace with a new root, an empty tmpfs
   into which exactly these are bind-mounted, at their usual paths: the Python
   installation (its prefixes and the folders on its ``sys.path``), the
   normlab package, the system folders its shared libraries come from, the
   task's cases, all read-only; the submission's work folder, read-write;
   ``/dev/null``, ``zero``, ``full``, ``random``, ``urandom``; private,
   size-capped tmpfs at ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (the work
   folder itself is one too, put there by the worker); a ``/proc``
   that shows only the kernel's own processes (only under a private uid); an
   ``/etc`` with nothing but a two-line ``passwd`` and ``group``. Symbolic
   links on the way to an allowed path are copied as links. Then
   ``pivot_root`` into it, detach the old root, and make ``/`` read-only.
   Nothing else on the machine exists for the kernel, so nothing else needs
   hiding. Should this fail, the older blocklist stands in: the repository
   and the Python prefix read-only and the hidden paths (``solutions/``,
   ``tests/``, ``.git``, the submission folders) covered by empty tmpfs.
3. Limits: ``RLIMIT_AS`` (memory), ``RLIMIT_FSIZE`` (no file bigger than the
   grader would read back), ``RLIMIT_CORE`` = 0, and ``RLIMIT_NPROC`` when
   running under a private uid.
4. Identity: when started as root, drop to a private uid/gid that owns only
   the submission's working folder, so that student code can write nowhere
   else, cannot signal the grader, and can be cleaned up with ``kill -1``.
5. An audit hook (``sys.addaudithook``) refuses inet ``connect``/``sendto``,
   opening or listing the hidden paths, and writing under the read-only ones;
   without a network namespace it also refuses starting subprocesses. Audit
   hooks can be bypassed with ctypes, so this is a second line only; 1, 2 and
   4 are the real walls.

Without namespaces (not root and no user namespaces, or a locked-down
container), 1 and 2 are lost and 5 stands in for them; 4 also needs root. The
report, copied into every grade row as ``isolation``, says what held, and
``setup_ms`` how long the lock-down took.
"""
import ctypes
import errno
import json
import os
import platform
import resource
import signal
import stat
import sys
import tempfile
import time

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWIPC = 0x00020000, 0x10000000, 0x40000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
PR_SET_PDEATHSIG, MNT_DETACH = 1, 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)


def _call(fn, *args):
    if fn(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _mount(source, target, fstype, flags, data=None):
    enc = (lambda s: None if s is None else s.encode())
    _call(_libc.mount, enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


def _unshare(with_user_namespace):
    if not with_user_namespace:
        _call(_libc.unshare, CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)
        return
    uid, gid = os.getuid(), os.getgid()
    _call(_libc.unshare, CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)
    # map ourselves to ourselves, so files keep their owners and we stay unprivileged outside
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def _kept_flags(path):
    """The flags of the mount holding ``path``: a remount must keep them, or a user namespace refuses it."""
    st = os.statvfs(path).f_flag
    keep = 0
    for st_flag, ms_flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                             (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                             (os.ST_RELATIME, MS_RELATIME), (os.ST_RDONLY, MS_RDONLY)):
        if st & st_flag:
            keep |= ms_flag
    return keep


def _make_readonly(path):
    keep = _kept_flags(path)
    _mount(path, path, None, MS_BIND | MS_REC)
    _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)


# -- the new root (filesystem by allowlist) ---------------------------------------------------------------------


class NewRoot:
    """An empty tmpfs at ``root`` that gets exactly the allowed paths, at the paths they have on the host."""

    def __init__(self, root):
        self.root = root
        self.bound = []  # host paths bind-mounted so far; anything under them is already visible
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")

    def inside(self, path):
        return self.root + path

    def _visible(self, path):
        return any(path == b or path.startswith(b.rstrip("/") + "/") for b in self.bound)

    def place(self, path, readonly=True, _depth=0):
        """Make ``path`` appear as on the host: links on the way become the same links, the end is bind-mounted."""
        if _depth > 40:
            raise OSError(errno.ELOOP, f"too many symbolic links on the way to {path}")
        parts = [p for p in path.split("/") if p]
        current = "/"
        for i, part in enumerate(parts):
            host = os.path.join(current, part)
            if self._visible(host):
                return
            try:
                info = os.lstat(host)
            except FileNotFoundError:
                return  # gone since the grader listed it: nothing to allow
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(host)
                if not os.path.lexists(self.inside(host)):
                    os.symlink(target, self.inside(host))
                rest = parts[i + 1:]
                return self.place(os.path.normpath(os.path.join(current, target, *rest)), readonly, _depth + 1)
            if i == len(parts) - 1:
                return self._bind(host, info, readonly)
            if not os.path.isdir(self.inside(host)):
                os.mkdir(self.inside(host), 0o755)
            current = host

    def _bind(self, host, info, readonly, device=False):
        target = self.inside(host)
        if stat.S_ISDIR(info.st_mode):
            os.makedirs(target, 0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            open(target, "a").close()
        _mount(host, target, None, MS_BIND)  # not MS_REC: mounts below an allowed path stay out of sight
        flags = MS_REMOUNT | MS_BIND | MS_NOSUID | _kept_flags(host) | (MS_RDONLY if readonly else 0)
        _mount(None, target, None, flags if device else flags | MS_NODEV)
        self.bound.append(host)

    def device(self, name):
        host = f"/dev/{name}"
        self._bind(host, os.stat(host), readonly=False, device=True)

    def tmpfs(self, path, size_mb):
        os.makedirs(self.inside(path), 0o755, exist_ok=True)
        _mount("tmpfs", self.inside(path), "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(size_mb)}m,mode=1777")

    def write(self, path, text):
        os.makedirs(os.path.dirname(self.inside(path)), 0o755, exist_ok=True)
        with open(self.inside(path), "w") as f:
            f.write(text)

    def proc(self):
        """A procfs in which a private uid sees only its own processes; False when the kernel refuses one."""
        os.makedirs(self.inside("/proc"), 0o555, exist_ok=True)
        for options in ("hidepid=invisible,subset=pid", "hidepid=2"):  # subset= needs Linux 5.8
            try:
                _mount("proc", self.inside("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, options)
            except OSError:
                continue
            for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                                 ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
                os.symlink(target, self.inside(f"/dev/{name}"))
            return True
        os.rmdir(self.inside("/proc"))
        return False

    def enter(self, workdir):
        """``pivot_root`` into the new root, detach the old one, make ``/`` read-only, go to ``workdir``."""
        number = SYS_PIVOT_ROOT.get(platform.machine())
        if number is None:
            raise OSError(errno.ENOSYS, f"no pivot_root syscall number known for {platform.machine()}")
        old = self.inside("/.old-root")
        os.mkdir(old, 0o700)
        _call(_libc.syscall, ctypes.c_long(number), self.root.encode(), old.encode())
        try:  # past this point there is no going back: the old root must go, or the kernel must not run
            os.chdir("/")
            _call(_libc.umount2, b"/.old-root", MNT_DETACH)
            os.rmdir("/.old-root")
            _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            os.chdir(workdir)
        except OSError as e:
            raise PivotedError(f"after pivot_root: {e}") from e


class PivotedError(Exception):
    """The new root was entered but could not be finished; the kernel must not start."""


def build_root(cfg, private_uid):
    """Build the allowlisted root and enter it; returns what it holds, for the report. Raises OSError before
    ``pivot_root`` (the old root is then still in place, so the caller can fall back)."""
    fs = NewRoot(cfg["newroot"])
    size = cfg.get("tmp_mb", 64)
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        fs.tmpfs(path, size)
    for name in DEVICES:
        fs.device(name)
    for path in cfg["allow_ro"]:
        fs.place(path, readonly=True)
    for path in cfg["allow_rw"]:
        fs.place(path, readonly=False)
    uid = private_uid if private_uid is not None else os.getuid()
    home = cfg["workdir"]
    fs.write("/etc/passwd", f"root:x:0:0::/nonexistent:/nonexistent\nstudent:x:{uid}:{uid}::{home}:/nonexistent\n")
    fs.write("/etc/group", f"root:x:0:\nstudent:x:{uid}:\n")
    # /proc only for a private uid: to root it would show every process on the machine, and their roots
    proc = private_uid is not None and fs.proc()
    fs.enter(cfg["workdir"])
    return ["filesystem by allowlist: a new root with only Python, normlab and the system libraries "
            "(read-only) and the work folder (read-write)",
            f"private /tmp, /var/tmp and /dev/shm ({size} MiB tmpfs each)",
            "/proc shows only the kernel's own processes" if proc else "no /proc"]


def _hide(path):
    if os.path.isdir(path):
        _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=555")
    elif os.path.exists(path):
        _mount("/dev/null", path, None, MS_BIND)


def _blocked_ancestor(path):
    """The top-most folder on the way to ``path`` that other users may not enter, or None."""
    current = "/"
    for part in path.strip("/").split("/"):
        if not os.stat(current).st_mode & 0o001:
            return current, part
        current = os.path.join(current, part)
    return None


def _reveal(paths):
    """Make ``paths`` reachable for an unprivileged uid without opening up their private parents.

    A Python under ``/root/.pyenv`` is the usual case: ``/root`` is 0700. The
    blocked folder is covered by a tmpfs that holds only bind mounts of the
    entries on the way to ``paths``; everything else in it stays out of sight.
    """
    for _ in range(32):  # each round unblocks one level
        blocked = {}
        for path in paths:
            hit = _blocked_ancestor(path)
            if hit:
                blocked.setdefault(hit[0], set()).add(hit[1])
        if not blocked:
            return
        for folder, children in blocked.items():
            stash = tempfile.mkdtemp(prefix="normlab-stash-")
            _mount(folder, stash, None, MS_BIND | MS_REC)
            _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
            for child in children:
                source = os.path.join(stash, child)
                target = os.path.join(folder, child)
                if os.path.isdir(source):
                    os.mkdir(target)
                else:
                    open(target, "w").close()
                _mount(source, target, None, MS_BIND | MS_REC)
            _call(_libc.umount2, stash.encode(), MNT_DETACH)
            os.rmdir(stash)


def lock_down(cfg):
    """Apply the walls the OS allows; returns whether namespaces held. Writes the report of what is enforced."""
    start = time.perf_counter()
    enforced, problems = [], []
    report = open(cfg["report"], "w")  # open now: after pivot_root the job folder is out of sight
    private_uid = cfg.get("uid") if os.getuid() == 0 else None
    namespaces = False
    try:
        if not cfg.get("namespaces", True):  # to exercise the fallback on a machine that has namespaces
            raise OSError("namespaces switched off in the configuration")
        _unshare(with_user_namespace=os.getuid() != 0)
        namespaces = True
        enforced.append("network namespace (no interfaces)")
        enforced.append("IPC namespace")
    except OSError as e:
        problems.append(f"no namespaces: {e}")
    allowlist = False
    if namespaces:
        try:
            _mount(None, "/", None, MS_REC | MS_PRIVATE)  # our mounts must not leak back to the host
            enforced += build_root(cfg, private_uid)
            allowlist = True
        except PivotedError as e:
            json.dump({"enforced": enforced, "problems": problems + [str(e)]}, report)
            report.close()
            os._exit(70)
        except OSError as e:
            problems.append(f"filesystem allowlist failed ({e}); hiding paths by blocklist instead")
    if namespaces and not allowlist:
        try:
            if private_uid is not None:
                _reveal(cfg.get("reveal", []))
            for path in cfg["readonly"]:
                _make_readonly(path)
            for path in cfg["hide"]:
                _hide(path)
            enforced.append("mount namespace (read-only repository, hidden paths)")
        except OSError as e:
            problems.append(f"mounts failed: {e}")

    if cfg.get("memory_mb"):
        limit = int(cfg["memory_mb"]) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        enforced.append(f"RLIMIT_AS {cfg['memory_mb']} MiB")
    if cfg.get("fsize_mb"):
        limit = int(cfg["fsize_mb"]) * 2**20
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        enforced.append(f"RLIMIT_FSIZE {cfg['fsize_mb']} MiB")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    uid = cfg.get("uid")
    unreachable = [p for p in cfg.get("reveal", []) if _blocked_ancestor(p)] if not namespaces else []
    if uid is not None and unreachable:
        # without a mount namespace we cannot open a path to Python for another uid; keep root rather than fail
        problems.append(f"kernel keeps the grader's uid: other users cannot enter {unreachable[0]}")
        uid = None
    if uid is not None and os.getuid() == 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))  # counted per uid, and this uid is ours alone
        enforced.append(f"private uid {uid}")
    else:
        uid = None
    enforced.append("audit hook")
    with report:  # opened before dropping root: the report folder is not the student's
        json.dump({"enforced": enforced, "problems": problems,
                   "setup_ms": round(1000 * (time.perf_counter() - start), 2)}, report)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _call(_libc.prctl, PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
    return namespaces


def install_audit_hook(hidden, readonly, block_subprocess):
    import socket

    hidden = tuple(os.path.realpath(p) for p in hidden)
    readonly = tuple(os.path.realpath(p) for p in readonly)
    inet = (socket.AF_INET, socket.AF_INET6)
    realpath, fspath, sep = os.path.realpath, os.fspath, os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def under(path, roots):
        if isinstance(path, int) or path is None:
            return False
        path = realpath(os.fsdecode(fspath(path)))
        return any(path == r or path.startswith(r + sep) for r in roots)

    def writes(args):
        mode, flags = (args[1], args[2]) if len(args) >= 3 else (None, 0)
        return (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)

    def hook(event, args):
        if event in ("socket.connect", "socket.sendto") and args[0].family in inet:
            raise PermissionError("network access is disabled while grading")
        if event in ("open", "os.listdir", "os.scandir") and args and under(args[0], hidden):
            raise PermissionError(f"{args[0]} is not available while grading")
        if ((event == "open" and writes(args)) or event in ("os.remove", "os.rename", "os.rmdir", "os.truncate",
                                                             "os.chmod", "os.symlink", "os.link")) \
                and args and under(args[0], readonly):
            raise PermissionError(f"{args[0]} is read-only while grading")
        if block_subprocess and event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn"):
            raise PermissionError("starting processes is disabled while grading")

    sys.addaudithook(hook)


def main():
    sys.path.pop(0)  # this file's folder; the kernel should import nothing from here by accident
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    namespaces = lock_down(cfg)
    install_audit_hook(cfg["hide"], cfg["readonly"], block_subprocess=not namespaces)
    import runpy

    sys.argv = ["ipykernel_launcher", "-f", cfg["connection_file"]]
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
