"""Grade reports: a CSV row and a JSON entry per submission, a summary table, and a progress bar."""
import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import normlab


SUMMARY_COLUMNS = ["student_id", "name", "path", "chapter", "status", "score", "max_score", "manual", "total",
                   "max_total", "isolation", "library_use", "detail"]
CANVAS_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
CANVAS_POINTS_ROW = "    Points Possible"  # as Canvas writes it, indented
DEFAULT_ASSIGNMENT = "normlab chapter {chapter}"


def task_columns(grades):
    """Task names in the order they appear, across every chapter present in ``grades``."""
    names = []
    for g in grades:
        names += [t.name for t in g.tasks if t.name not in names]
    return names


def fmt(x):
    """A score as a spreadsheet shows it: rounded to 2 decimals, no trailing zeros (5.333333 -> 5.33)."""
    if x is None:
        return ""
    text = f"{round(x, 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def isolation_summary(entries):
    """One line for the CSV: how the filesystem was confined, the network, the uid, and what did not hold.

    The JSON keeps every entry (`Grade.isolation`).
    """
    if not entries:
        return ""
    held = [e for e in entries if not e.startswith("not enforced")]
    if any(e.startswith("filesystem by allowlist") for e in held):
        parts = ["filesystem allowlist"]
    elif any(e.startswith("mount namespace") for e in held):
        parts = ["filesystem blocklist"]
    else:
        parts = ["filesystem: audit hook only"]
    parts.append("no network" if any(e.startswith("network namespace") for e in held) else "network: audit hook only")
    if any(e.startswith("private uid") for e in held):
        parts.append("private uid")
    parts += [e for e in held if e.startswith("RLIMIT_AS")]
    missing = len(entries) - len(held)
    if missing:
        parts.append(f"{missing} not enforced (see the JSON)")
    return "; ".join(parts)


def library_summary(uses):
    return "; ".join(f"{u['task']}: {', '.join(u['calls'])}" for u in uses)


def chapter_csv_path(out, chapter):
    """The per-chapter CSV beside ``out``: grades.csv -> grades-ch03.csv."""
    out = Path(out)
    return out.with_name(f"{out.stem}-ch{chapter:02d}{out.suffix or '.csv'}")


def _csv_text(header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def summary_csv(grades):
    """One row per submission, every chapter: who, what it scored with and without manual points, how it ran."""
    rows = [[g.student_id, g.name, g.path, "" if g.chapter is None else g.chapter, g.status, fmt(g.score),
             fmt(g.max_score), fmt(sum(m["points"] for m in g.manual)) if g.manual else "", fmt(g.total),
             fmt(g.max_total), isolation_summary(g.isolation), library_summary(g.library_use), g.detail]
            for g in grades]
    return _csv_text(SUMMARY_COLUMNS, rows)


def chapter_csv(grades, chapter):
    """The submissions of one chapter, with that chapter's task columns and every failed check's hint."""
    grades = [g for g in grades if g.chapter == chapter]
    tasks = task_columns(grades)
    questions = []
    for g in grades:
        questions += [m["question"] for m in g.manual if m["question"] not in questions]
    header = ["student_id", "name", "path", "status", *tasks, "score", "max_score",
              *[f"manual: {q}" for q in questions], "total", "max_total", "library_use", "detail", "messages"]
    rows = []
    for g in grades:
        by_task = {t.name: t for t in g.tasks}
        by_question = {m["question"]: m["points"] for m in g.manual}
        messages = " | ".join(f"{t.name}: {m}" for t in g.tasks for m in t.messages)
        rows.append([g.student_id, g.name, g.path, g.status,
                     *[fmt(by_task[n].score) if n in by_task else "" for n in tasks],
                     fmt(g.score), fmt(g.max_score), *[fmt(by_question.get(q)) for q in questions],
                     fmt(g.total), fmt(g.max_total), library_summary(g.library_use), g.detail, messages])
    return _csv_text(header, rows)


def canvas_csv(grades, roster, columns=(), assignment=DEFAULT_ASSIGNMENT):
    """The Canvas gradebook import: the roster's five identity columns, then one column per chapter.

    ``roster`` is a Canvas export read by `gradebook.load_roster`; ``columns`` is its header, so that a
    chapter's column reuses the export's name for that assignment (``normlab chapter 3 (12345)``), which
    Canvas matches by its id. A student with no submission of a chapter gets an empty cell, which Canvas
    leaves as it was; of two submissions of one chapter the better total counts.
    """
    chapters = sorted({g.chapter for g in grades if g.chapter is not None})
    existing = {re.sub(r"\s*\(\d+\)$", "", c).strip().lower(): c for c in columns[len(CANVAS_COLUMNS):]}
    names = []
    for chapter in chapters:
        name = assignment.format(chapter=chapter)
        names.append(existing.get(name.lower(), name))
    best, most = {}, {}
    for g in grades:
        if g.chapter is None:
            continue
        key = (g.student_id, g.chapter)
        if key not in best or g.total > best[key].total:
            best[key] = g
        if g.max_total is not None:
            most[g.chapter] = g.max_total
    rows = [[CANVAS_POINTS_ROW, "", "", "", "", *[fmt(most.get(c)) for c in chapters]]]
    for student in roster:
        identity = [student.canvas[c] for c in CANVAS_COLUMNS]
        rows.append([*identity, *[fmt(best[student.student_id, c].total) if (student.student_id, c) in best
                                  else "" for c in chapters]])
    return _csv_text([*CANVAS_COLUMNS, *names], rows)


def classroom_json(grades):
    """The result GitHub Classroom's autograding reporter reads (base64 of this, as a step's ``result``).

    One test per task of every submission; the reporter adds up the tests' ``score`` against ``max_score``.
    """
    tests, most = [], 0.0
    for g in grades:
        most += g.max_total or 0.0
        for t in g.tasks:
            tests.append({"name": f"chapter {g.chapter} {t.name}" if g.chapter is not None else t.name,
                          "status": "pass" if t.total and t.passed == t.total else "fail",
                          "score": round(t.score, 2), "message": "; ".join(t.messages)[:2000],
                          "filename": os.path.basename(g.path)})
        for m in g.manual:
            tests.append({"name": f"chapter {g.chapter} {m['question']} (graded by hand)", "status": "pass",
                          "score": round(m["points"], 2), "message": "", "filename": os.path.basename(g.path)})
        if g.status != "ok" and not g.tasks:
            tests.append({"name": os.path.basename(g.path), "status": "error", "score": 0,
                          "message": g.detail, "filename": os.path.basename(g.path)})
    status = "pass" if tests and all(t["status"] == "pass" for t in tests) else (
        "error" if any(g.status in ("invalid", "grader_error") for g in grades) else "fail")
    return json.dumps({"version": 1, "status": status, "max_score": round(most, 2), "tests": tests}, indent=1) + "\n"


def json_text(grades, settings, shard=None):
    data = {"normlab": normlab.__version__, "settings": settings, "shard": shard,
            "submissions": [g.to_dict() for g in grades]}
    return json.dumps(data, indent=1) + "\n"


def outputs(grades, out, json_path, settings, *, shard=None, format="normlab", roster=None, roster_columns=(),
            assignment=DEFAULT_ASSIGNMENT, feedback_dir=None):
    """Every report file as ``{path: text}``, so that the caller writes all of them or none.

    ``format``: ``normlab`` (``out`` is the summary CSV), ``canvas`` (``out`` is the Canvas import) or
    ``classroom`` (``out`` is GitHub Classroom's result JSON). The per-chapter CSVs and the JSON are
    written in every format.
    """
    files = {}
    if format == "canvas":
        files[Path(out)] = canvas_csv(grades, roster, roster_columns, assignment)
    elif format == "classroom":
        files[Path(out)] = classroom_json(grades)
    else:
        files[Path(out)] = summary_csv(grades)
    csv_out = Path(out) if format == "normlab" else Path(out).with_suffix(".csv")
    for chapter in sorted({g.chapter for g in grades if g.chapter is not None}):
        files[chapter_csv_path(csv_out, chapter)] = chapter_csv(grades, chapter)
    files[Path(json_path)] = json_text(grades, settings, shard)
    if feedback_dir is not None:
        from .feedback import pages

        files.update(pages(grades, feedback_dir))
    return files


def read_reports(paths):
    """The grades and settings of one run, from the JSON reports of its shards (``normlab grade merge``).

    Raises ValueError naming the file when a report is not one, when shards are missing or repeated, when
    they were graded with different settings, or when two reports hold the same submission.
    """
    from .grader import Grade

    reports = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("submissions"), list):
                raise ValueError("no 'submissions' list")
            grades = [Grade.from_dict(s) for s in data["submissions"]]
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{path}: not a normlab grade report: {type(e).__name__}: {e}") from None
        reports.append((path, data, grades))
    shards = [(path, data.get("shard")) for path, data, _ in reports]
    if any(s is not None for _, s in shards):
        unsharded = [str(p) for p, s in shards if s is None]
        if unsharded:
            raise ValueError(f"{unsharded[0]}: not a shard report, but other reports are shards")
        counts = {s["count"] for _, s in shards}
        if len(counts) != 1:
            raise ValueError(f"the reports come from different splits: shard counts {sorted(counts)}")
        count = counts.pop()
        seen = {}
        for path, s in shards:
            if s["index"] in seen:
                raise ValueError(f"{path}: shard {s['index']}/{count} is also in {seen[s['index']]}")
            seen[s["index"]] = path
        missing = sorted(set(range(1, count + 1)) - set(seen))
        if missing:
            raise ValueError(f"shard(s) {', '.join(f'{k}/{count}' for k in missing)} missing: "
                             f"give the report of every shard")
        totals = {s["files"] for _, s in shards}
        got = sum(len(g) for _, _, g in reports)
        if len(totals) != 1 or got != min(totals):
            raise ValueError(f"the shards hold {got} submissions, but were cut from {sorted(totals)} files: "
                             f"were they graded from the same class folder?")
    settings = reports[0][1].get("settings", {})
    for path, data, _ in reports[1:]:
        other = data.get("settings", {})
        differ = sorted(k for k in set(settings) | set(other) if k != "jobs" and settings.get(k) != other.get(k))
        if differ:
            raise ValueError(f"{path}: graded with other settings than {reports[0][0]}: {differ}")
    grades, owner = [], {}
    for path, _, part in reports:
        for g in part:
            if g.path in owner:
                raise ValueError(f"{path}: submission {g.path} is also in {owner[g.path]}")
            owner[g.path] = path
            grades.append(g)
    return sorted(grades, key=lambda g: g.path), settings


def table(grades, width=120):
    """The summary table printed after grading: one line per submission, then a status count.

    Paths are shown relative to the folder all submissions share.
    """
    paths = [g.path for g in grades]
    common = os.path.commonpath([os.path.dirname(p) for p in paths]) if len(paths) > 1 else os.path.dirname(paths[0])
    names = [os.path.relpath(p, common) if common else p for p in paths]
    name_w = min(max([len(n) for n in names] + [10]), 48)
    head = f"{'submission':<{name_w}}  ch  {'status':<12}  {'score':>11}  detail"
    lines = [f"in {common}:" if common else "", head, "-" * min(width, len(head) + 40)]
    for g, path in zip(grades, names):
        path = path if len(path) <= name_w else "..." + path[-(name_w - 3):]
        score = f"{fmt(g.total)}/{fmt(g.max_total) or '?'}"
        room = max(width - name_w - 34, 20)
        detail = g.detail if len(g.detail) <= room else g.detail[: room - 3] + "..."
        lines.append(f"{path:<{name_w}}  {'' if g.chapter is None else g.chapter:>2}  {g.status:<12}  {score:>11}  {detail}")
    counts = {}
    for g in grades:
        counts[g.status] = counts.get(g.status, 0) + 1
    lines.append(f"{len(grades)} submissions: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


class ProgressBar:
    """A one-line text bar on stderr; on a non-terminal, one line per finished submission instead."""

    def __init__(self, stream=None, width=30):
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, done, total, grade):
        filled = int(self.width * done / total)
        bar = "#" * filled + "." * (self.width - filled)
        name = grade.path[-40:]
        if self.tty:
            self.stream.write(f"\rgrading [{bar}] {done}/{total} {name:<40}")
            if done == total:
                self.stream.write("\n")
        else:
            self.stream.write(f"grading [{bar}] {done}/{total} {grade.status:<12} {name}\n")
        self.stream.flush()
