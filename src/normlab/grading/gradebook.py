"""Who each submission belongs to, the instructor's manual points, and the CSV files a course imports.

Everything here is checked before a single kernel starts: a roster or manual
CSV with a problem raises `GradebookError` naming the file and row, and the
command then writes nothing.

* Student ids come from ``--roster`` (columns ``file``, ``student_id``, ``name``;
  ``file`` is a file name or a glob pattern, matched against the file name, or
  against the whole path when it contains a ``/``), from a roster exported from
  Canvas (``Student, ID, SIS User ID, SIS Login ID, Section, ...``; the student
  id taken from the file name must equal one of ``SIS Login ID``, ``SIS User ID``
  or ``ID``), or, without a roster, from the file name (`id_from_path`).
* ``--manual`` (``student_id, chapter, question, points`` and an optional
  ``max_points``) adds the instructor's points for written answers to the totals.
"""
import csv
import fnmatch
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

CANVAS_ID_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
# rows of a Canvas export that are not students
CANVAS_META_ROWS = ("Points Possible", "Manual Posting")
_CHAPTER_TOKEN = re.compile(r"^(?:ch|chapter|ex|exercise)?0?[0-9]$|^[0-9][0-9]$", re.I)


class GradebookError(ValueError):
    """A roster, manual CSV or gradebook that cannot be used as it is; the message names the row."""


@dataclass
class Student:
    student_id: str
    name: str = ""
    pattern: str = ""  # our roster: the file name or glob pattern of the student's submissions
    canvas: dict = None  # a Canvas roster: the five identity columns, copied verbatim into the import file
    row: int = 0  # line number in the roster, for error messages


def id_from_path(path):
    """The student id a file name gives: ``alice_02.ipynb`` -> ``alice``; ``alice/02.ipynb`` -> ``alice``.

    The chapter token (``02``, ``ch2``, ``ex3``) is dropped; when nothing is left, the folder's name is used.
    """
    path = Path(path)
    tokens = [t for t in re.split(r"[_\-. ]+", path.stem) if t and not _CHAPTER_TOKEN.match(t)]
    return "_".join(tokens) or path.parent.name or path.stem


def _read_csv(path, what):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # Excel and Canvas write a BOM
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise GradebookError(f"{what} {path}: cannot be read: {e}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise GradebookError(f"{what} {path}: empty, expected a header row")
    return [c.strip() for c in rows[0]], rows[1:]


def _columns(header, rows, path, what, required, optional=(), aliases=None):
    """Rows as dicts keyed by our column names, with their line numbers; checks the header."""
    aliases = aliases or {}
    index = {}
    for i, name in enumerate(header):
        key = aliases.get(name.lower().replace(" ", "_"), name.lower().replace(" ", "_"))
        if key in (*required, *optional):
            index.setdefault(key, i)
    missing = [c for c in required if c not in index]
    if missing:
        raise GradebookError(f"{what} {path}: line 1: missing column(s) {missing}; the header is {header}")
    out = []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        out.append((line, {k: (row[i].strip() if i < len(row) else "") for k, i in index.items()}))
    return out


def is_canvas_export(path):
    header, _ = _read_csv(path, "roster")
    return header[:5] == CANVAS_ID_COLUMNS


def load_roster(path):
    """The students of ``path`` (our roster or a Canvas export), in file order. Raises `GradebookError`."""
    header, rows = _read_csv(path, "roster")
    students, seen = [], {}
    if header[:5] == CANVAS_ID_COLUMNS:
        for line, row in enumerate(rows, start=2):
            if not any(c.strip() for c in row) or row[0].strip() in CANVAS_META_ROWS:
                continue
            fields = dict(zip(CANVAS_ID_COLUMNS, [*row[:5], "", "", "", "", ""][:5]))
            if not fields["ID"].strip():
                raise GradebookError(f"roster {path}: line {line}: student {fields['Student']!r} has no ID")
            students.append(Student(fields["ID"].strip(), fields["Student"], canvas=fields, row=line))
    else:
        entries = _columns(header, rows, path, "roster", ("file", "student_id"), ("name",),
                           aliases={"pattern": "file", "id": "student_id", "student": "student_id"})
        for line, row in entries:
            if not row["file"] or not row["student_id"]:
                raise GradebookError(f"roster {path}: line {line}: the file pattern and the student id "
                                     f"must both be given, got {row['file']!r} and {row['student_id']!r}")
            students.append(Student(row["student_id"], row.get("name", ""), pattern=row["file"], row=line))
    for s in students:
        if s.student_id in seen:
            raise GradebookError(f"roster {path}: line {s.row}: duplicate student id {s.student_id!r} "
                                 f"(first on line {seen[s.student_id]})")
        seen[s.student_id] = s.row
    if not students:
        raise GradebookError(f"roster {path}: no students")
    return students


def _canvas_keys(student):
    c = student.canvas
    return [c["SIS Login ID"].strip(), c["SIS User ID"].strip(), c["ID"].strip()]


def match_students(files, roster, roster_path="roster"):
    """``{file: Student}`` for every file; raises `GradebookError` for a file no row (or two rows) claims."""
    owners = {}
    for f in files:
        f = Path(f)
        if roster is None:
            sid = id_from_path(f)
            owners[f] = Student(sid, "")
            continue
        if roster[0].canvas is not None:
            sid = id_from_path(f)
            found = [s for s in roster if sid in _canvas_keys(s)]
            hint = "SIS Login ID, SIS User ID or ID"
        else:
            found = [s for s in roster if fnmatch.fnmatchcase(f.as_posix() if "/" in s.pattern else f.name,
                                                              s.pattern if "/" not in s.pattern
                                                              or os.path.isabs(s.pattern) else "*" + s.pattern)]
            sid, hint = f.name, "file pattern"
        if not found:
            raise GradebookError(f"{f}: unknown student: no row of {roster_path} has {sid!r} as its {hint}")
        if len(found) > 1:
            rows = ", ".join(f"line {s.row} ({s.student_id})" for s in found)
            raise GradebookError(f"{f}: claimed by more than one row of {roster_path}: {rows}")
        owners[f] = found[0]
    return owners


@dataclass
class ManualPoints:
    student_id: str
    chapter: int
    question: str
    points: float
    max_points: float | None = None
    where: str = ""  # "FILE: line N", for error messages


def _number(text, what, where, integer=False):
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise GradebookError(f"{where}: {what} must be {'an integer' if integer else 'a number'}, "
                             f"got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise GradebookError(f"{where}: {what} must be a finite number >= 0, got {text!r}")
    return value


def load_manual(path, student_ids, chapters):
    """The instructor's points, checked against the known students and chapters. Raises `GradebookError`."""
    header, rows = _read_csv(path, "manual points")
    entries = _columns(header, rows, path, "manual points", ("student_id", "chapter", "question", "points"),
                       ("max_points",), aliases={"id": "student_id", "student": "student_id"})
    seen, out = {}, []
    for line, row in entries:
        where = f"manual points {path}: line {line}"
        if row["student_id"] not in student_ids:
            raise GradebookError(f"{where}: unknown student {row['student_id']!r} (no submission has this id)")
        chapter = _number(row["chapter"], "chapter", where, integer=True)
        if chapter not in chapters:
            raise GradebookError(f"{where}: unknown chapter {chapter} (known: {sorted(chapters)})")
        if not row["question"]:
            raise GradebookError(f"{where}: the question is empty")
        points = _number(row["points"], "points", where)
        most = _number(row["max_points"], "max_points", where) if row.get("max_points") else None
        if most is not None and points > most:
            raise GradebookError(f"{where}: points {points:g} exceed max_points {most:g}")
        key = (row["student_id"], chapter, row["question"])
        if key in seen:
            raise GradebookError(f"{where}: duplicate entry for student {key[0]!r}, chapter {chapter}, "
                                 f"question {key[2]!r} (first on line {seen[key]})")
        seen[key] = line
        out.append(ManualPoints(row["student_id"], chapter, row["question"], points, most, f"{path}: line {line}"))
    return out


def write_atomically(outputs):
    """Write ``{path: text}`` so that either every file is replaced or none is (each via a temp file)."""
    temps = []
    try:
        for path, text in outputs.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def manual_maxima(manual):
    """``{chapter: max points}``: per question, the largest max_points any row gives, summed per chapter."""
    per_question = {}
    for m in manual:
        if m.max_points is not None:
            key = (m.chapter, m.question)
            per_question[key] = max(per_question.get(key, 0.0), m.max_points)
    maxima = {}
    for (chapter, _), most in per_question.items():
        maxima[chapter] = maxima.get(chapter, 0.0) + most
    return maxima


def check_manual(manual, chapters):
    """Raise `GradebookError` for a manual row whose student has not exactly one submission of its chapter.

    ``chapters``: ``[(student_id, chapter, path)]`` of the submissions (graded, or parsed before grading).
    """
    by_key = {}
    for student_id, chapter, path in chapters:
        by_key.setdefault((student_id, chapter), []).append(str(path))
    for m in manual:
        found = by_key.get((m.student_id, m.chapter), [])
        if len(found) != 1:
            what = "no submission" if not found else f"{len(found)} submissions ({', '.join(found)})"
            raise GradebookError(f"manual points {m.where}: student {m.student_id!r} has {what} of chapter "
                                 f"{m.chapter}, so the points for {m.question!r} have nowhere to go")


def apply(grades, owners=None, manual=()):
    """Set each grade's student, and add the manual points to its total. ``owners``: ``{path: Student}``.

    Check ``manual`` first with `check_manual`; a row that matches no grade here is not added anywhere.
    """
    owners = {str(k): v for k, v in (owners or {}).items()}
    for g in grades:
        if g.path in owners:
            g.student_id, g.name = owners[g.path].student_id, owners[g.path].name
    maxima = manual_maxima(manual)
    for g in grades:
        g.manual = [{"question": m.question, "points": m.points, "max_points": m.max_points}
                    for m in manual if (m.student_id, m.chapter) == (g.student_id, g.chapter)]
        g.total = round(g.score + sum(m["points"] for m in g.manual), 6)
        g.max_total = None if g.max_score is None else g.max_score + maxima.get(g.chapter, 0.0)


def read_header(path):
    """The header row of a CSV (a Canvas export's assignment columns, for `report.canvas_csv`)."""
    return _read_csv(path, "roster")[0]
