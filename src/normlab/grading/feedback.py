"""One self-contained HTML page per submission, for the student: scores, each failed check's hint, the answers.

Everything is inline (no script, no external style or font), and every piece of
text from a submission is escaped, so a page opens from disk, offline, and
an answer cannot inject markup.
"""
import html
import re
from pathlib import Path

from .report import fmt

STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35rem 0.5rem; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; white-space: nowrap; }
tr.full td.num { color: #176117; }
tr.partial td.num { color: #9a3b00; }
.total { font-size: 1.2rem; font-weight: 600; }
ul.hints { margin: 0.2rem 0 0; padding-left: 1.2rem; color: #5a3000; }
.problem { background: #fff3e0; border-left: 4px solid #e08a00; padding: 0.5rem 0.8rem; }
pre.answer { white-space: pre-wrap; background: #f6f6f6; padding: 0.6rem 0.8rem; border-radius: 4px; }
.blank { color: #a00; font-style: italic; }
"""


def _e(text):
    return html.escape(str(text), quote=True)


def page(grade):
    """The feedback page of one `Grade`, as HTML text."""
    who = grade.name or grade.student_id or Path(grade.path).stem
    chapter = "" if grade.chapter is None else f"chapter {grade.chapter}"
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>normlab feedback: {_e(who)}, {_e(chapter or 'submission')}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>Feedback: {_e(chapter or Path(grade.path).name)}</h1>",
             f"<p class=\"meta\">{_e(who)} · {_e(Path(grade.path).name)}</p>",
             f"<p class=\"total\">Score: {fmt(grade.total)} / {fmt(grade.max_total) or '?'}</p>"]
    if grade.status != "ok":
        parts.append(f"<p class=\"problem\">Status <b>{_e(grade.status)}</b>: {_e(grade.detail)}</p>")
    if grade.tasks:
        parts.append("<table><tr><th>task</th><th class=\"num\">points</th><th class=\"num\">checks passed</th>"
                     "<th>what failed</th></tr>")
        for t in grade.tasks:
            full = t.total and t.passed == t.total
            hints = "".join(f"<li>{_e(m)}</li>" for m in t.messages)
            parts.append(f"<tr class=\"{'full' if full else 'partial'}\"><td>{_e(t.name)}</td>"
                         f"<td class=\"num\">{fmt(t.score)} / {fmt(t.points)}</td>"
                         f"<td class=\"num\">{t.passed} / {t.total}</td>"
                         f"<td>{f'<ul class=hints>{hints}</ul>' if hints else ''}</td></tr>")
        parts.append("</table>")
    if grade.manual:
        parts.append("<h2>Graded by hand</h2><table><tr><th>question</th><th class=\"num\">points</th></tr>")
        for m in grade.manual:
            most = "" if m["max_points"] is None else f" / {fmt(m['max_points'])}"
            parts.append(f"<tr><td>{_e(m['question'])}</td><td class=\"num\">{fmt(m['points'])}{most}</td></tr>")
        parts.append("</table>")
    if grade.answers:
        parts.append("<h2>Your written answers</h2>")
        for a in grade.answers:
            body = "<p class=\"blank\">(not answered)</p>" if a.get("blank") else \
                f"<pre class=\"answer\">{_e(a['text'])}</pre>"
            parts.append(f"<h3>{_e(a['question'])}</h3>{body}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _safe(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "submission"


def pages(grades, folder):
    """``{path: html}``: one page per grade in ``folder``, named ``STUDENT_FILE.html`` (unique)."""
    out, used = {}, set()
    for g in grades:
        stem = _safe(f"{g.student_id}_{Path(g.path).stem}" if g.student_id else Path(g.path).stem)
        name, n = f"{stem}.html", 2
        while name in used:
            name, n = f"{stem}-{n}.html", n + 1
        used.add(name)
        out[Path(folder) / name] = page(g)
    return out
