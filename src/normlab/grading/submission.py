"""Reading a submission: parse it, refuse what is not a Python notebook, and decide its chapter.

Parsing happens in the grader process, but only as data (JSON or MyST text);
nothing in the file is executed here.

Chapter rule, first signal that names a chapter wins:

1. notebook metadata ``{"normlab": {"chapter": N}}``, if present;
2. the checkers its code cells call (``normlab.check.<task>`` or
   ``check.<task>(``), check cells included;
3. the task functions its code cells define at top level (``def <function>(``);
4. a chapter number in the file name: a standalone ``N`` or ``0N`` (``02.ipynb``,
   ``alice_02.ipynb``, ``ch2-bob.md``).

Within a signal, the chapter named most often wins; a tie is broken by the
file name, else the submission is invalid as ambiguous.

Refused without reading a byte through them: symbolic links, and anything
reached through one (a file given by a path with a linked folder on the way,
or a linked folder met while walking), and files that are not regular files
(FIFOs, devices). Each still gets a row. The reason for an invalid row never
quotes the file: it gives the size and the kind of problem, so that a link to
``/etc/passwd`` or a file of secrets cannot put its bytes into a report.
"""
import os
import re
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MAX_BYTES = 20 * 2**20  # a completed exercise is well under 1 MiB; anything huge is not a submission
SUFFIXES = (".ipynb", ".md")
MAX_ANSWER_CHARS = 20_000  # per written answer in the reports
ANSWER_PROMPT = "**YOUR ANSWER HERE**"  # what `normlab.exercises` leaves in a blank answer cell


@dataclass
class Submission:
    path: Path
    cells: list = field(default_factory=list)  # sources of the code cells to run (check cells left out)
    data: bytes = b""  # the file's bytes as read once here; the job gets these, never a second read of the path
    chapter: int | None = None
    problem: str | None = None  # why the file is not a valid submission; None when it is
    answers: list = field(default_factory=list)  # the written answers: {"question", "cell", "text"}


def _kernel_problem(metadata):
    """Why the notebook's declared kernel is not Python, or None. We always run our own Python kernel.

    The kernel's name is not quoted: it is the file's content, and the file is invalid.
    """
    spec = metadata.get("kernelspec") or {}
    language = spec.get("language") or (metadata.get("language_info") or {}).get("name")
    name = spec.get("name")
    if language is not None and str(language).lower() != "python":
        return "the notebook's kernel is not Python (its kernelspec declares another language)"
    if language is None and name is not None and not str(name).lower().startswith("python"):
        return "the notebook's kernel is not Python (its kernelspec names a kernel that is not python*)"
    return None


def _read_notebook(path, text):
    import nbformat

    if path.suffix == ".md":
        import jupytext

        return jupytext.reads(text, fmt="md:myst")
    with warnings.catch_warnings():  # schema nits (a missing display_name) should not cost a student the grade
        warnings.simplefilter("ignore")
        nb = nbformat.reads(text, as_version=4)
    if not isinstance(nb.get("cells"), list) or not all(
            isinstance(c, dict) and isinstance(c.get("source"), str) and c.get("cell_type") for c in nb.cells):
        raise ValueError("cells must be a list of cells with a cell_type and a source")
    return nb


def _metadata_chapter(metadata, tasks):
    """The chapter the notebook's metadata declares (``{"normlab": {"chapter": N}}``), if it is known."""
    meta = metadata.get("normlab")
    chapter = meta.get("chapter") if isinstance(meta, dict) else None
    return chapter if isinstance(chapter, int) and chapter in {t.chapter for t in tasks.values()} else None


def _raw_metadata_chapter(text, tasks):
    """The declared chapter of a JSON notebook that nbformat refused (its metadata may still say)."""
    import json

    try:
        nb = json.loads(text)
    except ValueError:
        return None
    if not isinstance(nb, dict) or not isinstance(nb.get("metadata"), dict):
        return None
    return _metadata_chapter(nb["metadata"], tasks)


def written_answers(nb):
    """The markdown cells tagged ``answer``, as ``{"question": "answerK", "cell": id, "text": ...}``.

    Questions are numbered in notebook order, so that ``answer2`` is the same question in every copy of
    an exercise; the text is capped at MAX_ANSWER_CHARS.
    """
    answers = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags") or []
        if cell.cell_type == "markdown" and isinstance(tags, list) and "answer" in tags:
            text = cell.source
            if len(text) > MAX_ANSWER_CHARS:
                text = text[:MAX_ANSWER_CHARS] + f"\n[... {len(cell.source) - MAX_ANSWER_CHARS} more characters]"
            answers.append({"question": f"answer{len(answers) + 1}", "cell": str(cell.get("id") or ""),
                            "text": text, "blank": text.strip() in ("", ANSWER_PROMPT)})
    return answers


def _filename_chapter(path, chapters):
    for match in re.finditer(r"(?<![0-9])0?([1-9])(?![0-9])", path.stem):
        if int(match.group(1)) in chapters:
            return int(match.group(1))
    return None


def detect_chapter(nb, path, tasks):
    """The chapter of a parsed notebook (see the module docstring), or ``(None, reason)``."""
    chapters = {t.chapter for t in tasks.values()}
    by_name = {t.name: t.chapter for t in tasks.values()}
    by_function = {t.function: t.chapter for t in tasks.values()}
    from_name = _filename_chapter(path, chapters)

    meta = _metadata_chapter(nb.metadata, tasks)
    if meta is not None:
        return meta, None
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    signals = [
        [by_name[m] for m in re.findall(r"\bcheck\s*\.\s*(\w+)\s*\(", code) if m in by_name]
        + [by_name[m] for m in re.findall(r"\bnormlab\.check\.(\w+)", code) if m in by_name],
        [by_function[m] for m in re.findall(r"^def\s+(\w+)\s*\(", code, flags=re.M) if m in by_function],
    ]
    for votes in signals:
        if not votes:
            continue
        counts = Counter(votes).most_common()
        best = [ch for ch, n in counts if n == counts[0][1]]
        if len(best) == 1:
            return best[0], None
        if from_name in best:
            return from_name, None
        return None, f"ambiguous chapter: the code matches chapters {sorted(best)} equally"
    if from_name is not None:
        return from_name, None
    return None, "cannot tell the chapter: no known checker call, task function or chapter number in the name"


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode):
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def symlink_on_the_way(path):
    """The first symbolic link among the components of ``path`` as written, or None.

    For a relative path only the written components count (not the current
    folder's own parents); for an absolute one, every component from ``/``.
    """
    path = Path(path)
    parts = path.parts
    current = Path(parts[0]) if path.is_absolute() else Path()
    for part in parts[1:] if path.is_absolute() else parts:
        current = current / part
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return current
        except OSError:
            return None  # a missing component: reading will say so
    return None


def _read(path):
    """The file's bytes, read without following a link; ``(data, None)`` or ``(None, reason)``."""
    link = symlink_on_the_way(path)
    if link is not None:
        where = "is a symbolic link" if link == path else f"is reached through the symbolic link {link}"
        return None, f"the submission {where}: refused, nothing behind the link was read"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        return None, f"cannot open the file: {type(e).__name__} ({os.strerror(e.errno) if e.errno else e})"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, f"not a regular file ({_kind(info.st_mode)}): refused, nothing was read"
        if info.st_size > MAX_BYTES:
            return None, f"file is {info.st_size / 2**20:.0f} MiB, over the {MAX_BYTES // 2**20} MiB limit"
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        return None, f"cannot read the file: {type(e).__name__} ({os.strerror(e.errno) if e.errno else e})"
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        return None, f"file grew past the {MAX_BYTES // 2**20} MiB limit while being read"
    return data, None


def _load(path, tasks):
    sub = Submission(path)
    data, sub.problem = _read(path)
    if sub.problem:
        return sub
    size = f"{len(data)} bytes"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        sub.problem = f"not UTF-8 text ({size})"
        return sub
    if not text.strip():
        sub.problem = f"empty file ({size})"
        return sub
    try:
        nb = _read_notebook(path, text)
    except Exception as e:  # noqa: BLE001 - nbformat/jupytext raise many types for malformed input
        # Only the exception's type: its message may quote the file (nbformat's NotJSONError does).
        kind = "not valid JSON" if type(e).__name__ in ("NotJSONError", "JSONDecodeError") else "not a valid notebook"
        sub.problem = f"{kind} ({size}, {type(e).__name__})"
        sub.chapter = _raw_metadata_chapter(text, tasks)
        return sub
    sub.data = data
    sub.problem = _kernel_problem(nb.metadata)
    if sub.problem:
        sub.chapter = _metadata_chapter(nb.metadata, tasks)
        return sub
    sub.answers = written_answers(nb)
    sub.cells = [c.source for c in nb.cells
                 if c.cell_type == "code" and "check" not in (c.metadata.get("tags") or [])]
    sub.chapter, sub.problem = detect_chapter(nb, path, tasks)
    return sub


def load(path, tasks):
    """Parse ``path`` into a `Submission`; ``problem`` says why it is invalid (never raises for bad files).

    An invalid file still gets the chapter its name suggests, so that its row shows what it was worth.
    """
    sub = _load(Path(path), tasks)
    if sub.problem and sub.chapter is None:
        sub.chapter = _filename_chapter(sub.path, {t.chapter for t in tasks.values()})
    return sub


def _is_myst_notebook(path):
    """In a folder, a ``.md`` counts only with jupytext front matter: a README is not a submission."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return True  # cannot tell: let it have a row that says why it cannot be read
    return head.lstrip().startswith("---") and ("jupytext:" in head or "kernelspec:" in head)


def _walk(folder, found):
    """Add the notebooks under ``folder``, never following a link: a link is added as it is, to be refused."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        found.add(folder)  # an unreadable folder gets a row that says so
        return
    for entry in entries:
        path = folder / entry.name
        if entry.is_symlink():
            found.add(path)  # whatever it points to: not read, but not skipped silently either
        elif entry.is_dir(follow_symlinks=False):
            if entry.name != ".ipynb_checkpoints":
                _walk(path, found)
        elif path.suffix in SUFFIXES:
            regular = entry.is_file(follow_symlinks=False)
            if path.suffix == ".ipynb" or not regular or _is_myst_notebook(path):
                found.add(path)


def find(paths):
    """Every notebook under ``paths``, sorted, without duplicates.

    Files count as given; folders are searched recursively for ``.ipynb`` and
    for ``.md`` files with jupytext front matter. Symbolic links are never
    followed: a link (or a path with a link on the way) is returned as it is,
    and `load` gives it an invalid row.
    """
    found = set()
    for p in map(Path, paths):
        if not os.path.lexists(p):
            raise FileNotFoundError(f"no such file or folder: {p}")
        if symlink_on_the_way(p) is None and p.is_dir():
            _walk(p, found)
        else:
            found.add(p)
    return sorted(found, key=lambda q: str(q))
