"""The gradebook without kernels: rosters, manual points, the CSV and Canvas formats, library use, shards.

Every bad roster or manual CSV must stop `normlab grade` before grading, name the file and row, and leave
no report behind.
"""
import csv
import io
import json
from pathlib import Path

import jupytext
import pytest

from normlab.check import TASKS
from normlab.cli import main
from normlab.grading import gradebook, report
from normlab.grading.grader import Grade, TaskGrade, select_shard
from normlab.grading.library_use import IMPLEMENTATIONS, library_calls

REPO = Path(__file__).resolve().parents[2]
CANVAS_EXPORT = Path(__file__).with_name("data") / "canvas_export.csv"


def rows(text):
    return list(csv.reader(io.StringIO(text)))


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, expected", [
    ("alice_02.ipynb", "alice"), ("ch3-bob.md", "bob"), ("carol.smith_ex4.ipynb", "carol_smith"),
    ("dave/02.ipynb", "dave"), ("erin_07_v2.ipynb", "erin_v2")])
def test_student_id_from_the_file_name(name, expected):
    assert gradebook.id_from_path(name) == expected


def test_roster_matches_files_by_name_or_pattern(tmp_path):
    roster = write(tmp_path / "r.csv", "file,student_id,name\nalice_*.ipynb,s1,Alice A\nsubs/bob/*,s2,Bob B\n")
    students = gradebook.load_roster(roster)
    owners = gradebook.match_students([Path("subs/alice_02.ipynb"), Path("subs/bob/03.ipynb")], students)
    assert [(o.student_id, o.name) for o in owners.values()] == [("s1", "Alice A"), ("s2", "Bob B")]
    with pytest.raises(gradebook.GradebookError, match=r"subs/zoe_02.ipynb: unknown student"):
        gradebook.match_students([Path("subs/zoe_02.ipynb")], students, "r.csv")


@pytest.mark.parametrize("text, message", [
    ("file,student_id\nalice_*,s1\nbob_*,s1\n", r"line 3: duplicate student id 's1' \(first on line 2\)"),
    ("file,student_id\nalice_*,\n", r"line 2: the file pattern and the student id must both be given"),
    ("name,id_number\nx,y\n", r"line 1: missing column\(s\) \['file', 'student_id'\]"),
    ("", "empty, expected a header row"),
])
def test_bad_rosters_name_the_row(tmp_path, text, message):
    with pytest.raises(gradebook.GradebookError, match=message):
        gradebook.load_roster(write(tmp_path / "r.csv", text))


def test_two_rows_claiming_one_file_is_an_error(tmp_path):
    students = gradebook.load_roster(write(tmp_path / "r.csv", "file,student_id\nalice*,s1\n*_02.ipynb,s2\n"))
    with pytest.raises(gradebook.GradebookError, match=r"claimed by more than one row.*line 2 \(s1\), line 3 \(s2\)"):
        gradebook.match_students([Path("alice_02.ipynb")], students)


def test_canvas_export_is_read_as_a_roster():
    students = gradebook.load_roster(CANVAS_EXPORT)  # BOM, quoted names, the Points Possible row
    assert [s.student_id for s in students] == ["4101", "4102", "4103", "4199"]
    assert students[0].canvas["Student"] == "Lovelace, Ada" and students[0].canvas["SIS Login ID"] == "alovelace"
    owners = gradebook.match_students([Path("alovelace_02.ipynb"), Path("S4102_03.ipynb")], students)
    assert [o.student_id for o in owners.values()] == ["4101", "4102"]


def manual_file(tmp_path, body):
    return write(tmp_path / "m.csv", "student_id,chapter,question,points,max_points\n" + body)


@pytest.mark.parametrize("body, message", [
    ("zoe,2,answer1,1,2\n", r"line 2: unknown student 'zoe'"),
    ("alice,2,answer1,two,2\n", r"line 2: points must be a number, got 'two'"),
    ("alice,2,answer1,-1,2\n", r"line 2: points must be a finite number >= 0"),
    ("alice,2,answer1,nan,2\n", r"line 2: points must be a finite number >= 0"),
    ("alice,2.5,answer1,1,2\n", r"line 2: chapter must be an integer"),
    ("alice,12,answer1,1,2\n", r"line 2: unknown chapter 12"),
    ("alice,2,answer1,3,2\n", r"line 2: points 3 exceed max_points 2"),
    ("alice,2,,1,2\n", r"line 2: the question is empty"),
    ("alice,2,answer1,1,2\nbob,2,answer1,1,2\nalice,2,answer1,2,2\n", r"line 4: duplicate entry .*first on line 2"),
])
def test_bad_manual_points_name_the_row(tmp_path, body, message):
    chapters = {t.chapter for t in TASKS.values()}
    with pytest.raises(gradebook.GradebookError, match=message):
        gradebook.load_manual(manual_file(tmp_path, body), {"alice", "bob"}, chapters)


def graded(path, chapter, student, task_scores, status="ok"):
    """A Grade as the grader returns it, with the given (name, points, passed, total) tasks."""
    tasks = [TaskGrade(n, p, score=p * k / t, passed=k, total=t, messages=[] if k == t else ["c: hint"])
             for n, p, k, t in task_scores]
    g = Grade(path, status=status, chapter=chapter, score=round(sum(t.score for t in tasks), 6),
              max_score=sum(t.points for t in tasks), tasks=tasks, student_id=student)
    g.total, g.max_total = g.score, g.max_score
    return g


def test_manual_points_add_to_totals_and_maxima(tmp_path):
    grades = [graded("a_02.ipynb", 2, "alice", [("batch_norm_forward", 3.0, 2, 3), ("batch_norm_conv", 2.0, 1, 1)]),
              graded("b_02.ipynb", 2, "bob", [("batch_norm_forward", 3.0, 3, 3), ("batch_norm_conv", 2.0, 1, 1)])]
    manual = gradebook.load_manual(manual_file(tmp_path, "alice,2,answer1,1.5,2\n"), {"alice", "bob"}, {2})
    gradebook.check_manual(manual, [(g.student_id, g.chapter, g.path) for g in grades])
    gradebook.apply(grades, None, manual)
    assert (grades[0].total, grades[0].max_total) == (5.5, 7.0)
    assert (grades[1].total, grades[1].max_total) == (5.0, 7.0)  # no points yet for bob, same maximum
    table = rows(report.chapter_csv(grades, 2))
    header = table[0]
    assert header[header.index("score"):header.index("max_total") + 1] == [
        "score", "max_score", "manual: answer1", "total", "max_total"]
    assert table[1][header.index("manual: answer1")] == "1.5" and table[2][header.index("manual: answer1")] == ""
    assert table[1][header.index("total")] == "5.5"


def test_manual_points_for_a_missing_submission_are_refused(tmp_path):
    manual = gradebook.load_manual(manual_file(tmp_path, "alice,3,answer1,1,2\n"), {"alice"}, {2, 3})
    with pytest.raises(gradebook.GradebookError, match=r"m.csv: line 2: student 'alice' has no submission of chapter 3"):
        gradebook.check_manual(manual, [("alice", 2, "a_02.ipynb")])


@pytest.mark.parametrize("value, text", [(5.333333, "5.33"), (6.0, "6"), (0.005, "0.01"), (2.5, "2.5"),
                                         (None, ""), (-0.001, "0")])
def test_scores_print_with_two_decimals(value, text):
    assert report.fmt(value) == text


def test_each_chapter_has_its_own_task_columns():
    grades = [graded("a_02.ipynb", 2, "alice", [("batch_norm_forward", 3.0, 1, 3), ("batch_norm_conv", 2.0, 1, 1)]),
              graded("a_05.ipynb", 5, "alice", [("cumulative_mean", 1.0, 1, 1)])]
    two, five = rows(report.chapter_csv(grades, 2)), rows(report.chapter_csv(grades, 5))
    assert "batch_norm_forward" in two[0] and "cumulative_mean" not in two[0]
    assert "cumulative_mean" in five[0] and "batch_norm_conv" not in five[0] and len(five) == 2
    assert two[1][two[0].index("batch_norm_forward")] == "1"
    summary = rows(report.summary_csv(grades))
    assert summary[0] == report.SUMMARY_COLUMNS and summary[1][summary[0].index("score")] == "3"
    assert summary[1][summary[0].index("isolation")] == ""


def test_isolation_column_says_what_held():
    held = ["network namespace (no interfaces)", "filesystem by allowlist: a new root ...", "private uid 1000123",
            "RLIMIT_AS 2048 MiB", "audit hook"]
    assert report.isolation_summary(held) == "filesystem allowlist; no network; private uid; RLIMIT_AS 2048 MiB"
    weak = ["RLIMIT_AS 2048 MiB", "audit hook", "not enforced: no namespaces: PermissionError"]
    assert report.isolation_summary(weak) == ("filesystem: audit hook only; network: audit hook only; "
                                              "RLIMIT_AS 2048 MiB; 1 not enforced (see the JSON)")


def test_canvas_import_keeps_the_export_header_and_identity_columns():
    students = gradebook.load_roster(CANVAS_EXPORT)
    header = gradebook.read_header(CANVAS_EXPORT)
    grades = [graded("alovelace_02.ipynb", 2, "4101", [("batch_norm_forward", 3.0, 2, 3), ("batch_norm_conv", 2.0, 1, 1)]),
              graded("alovelace_03.ipynb", 3, "4101", [("grad_check", 2.0, 1, 3)]),
              graded("aturing_02.ipynb", 2, "4102", [("batch_norm_forward", 3.0, 3, 3), ("batch_norm_conv", 2.0, 0, 1)]),
              graded("aturing_02_late.ipynb", 2, "4102", [("batch_norm_forward", 3.0, 3, 3), ("batch_norm_conv", 2.0, 1, 1)])]
    table = rows(report.canvas_csv(grades, students, header))
    assert table[0][:5] == header[:5] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
    assert table[0][5:] == ["normlab chapter 2 (90211)", "normlab chapter 3 (90212)"]  # the export's own columns
    assert table[1] == ["    Points Possible", "", "", "", "", "5", "2"]
    assert table[2] == ["Lovelace, Ada", "4101", "S4101", "alovelace", "Section 01", "4", "0.67"]
    assert table[3][5:] == ["5", ""]  # the better of two submissions; no chapter 3 submission: left empty
    assert [r[0] for r in table[2:]] == ["Lovelace, Ada", "Turing, Alan", "Hopper, Grace", "Student, Test"]
    fresh = rows(report.canvas_csv(grades, students, header[:5], assignment="Lab {chapter:02d}"))
    assert fresh[0][5:] == ["Lab 02", "Lab 03"]


def test_classroom_result_adds_up_to_the_total():
    grades = [graded("02.ipynb", 2, "me", [("batch_norm_forward", 3.0, 2, 3), ("batch_norm_conv", 2.0, 1, 1)])]
    result = json.loads(report.classroom_json(grades))
    assert result["version"] == 1 and result["status"] == "fail" and result["max_score"] == 5
    assert sum(t["score"] for t in result["tests"]) == pytest.approx(4.0)
    assert [t["status"] for t in result["tests"]] == ["fail", "pass"]


def student_cells(chapter):
    nb = jupytext.read(REPO / "solutions" / f"{chapter:02d}.md")
    return [c.source for c in nb.cells if c.cell_type == "code" and "check" not in c.metadata.get("tags", [])]


def test_every_task_declares_its_library_implementations():
    assert set(IMPLEMENTATIONS) == set(TASKS)


@pytest.mark.parametrize("chapter", range(1, 10))
def test_reference_solutions_use_no_library_implementation(chapter):
    tasks = [t for t in TASKS.values() if t.chapter == chapter]
    assert library_calls(student_cells(chapter), tasks) == []


def test_library_use_follows_imports_and_helpers():
    cells = ["import torch.nn.functional as F\nfrom normlab import batch_norm_backward as bb\nimport normlab as nl",
             "%timeit 1\ndef helper(x):\n    return F.batch_norm(x, None, None, training=True)",
             "def batch_norm_forward(x, gamma, beta, eps=1e-5):\n    return helper(x)",
             "def batch_norm_backward_staged(dout, cache):\n    return bb(dout, cache)",
             "def batch_norm_backward_compact(dout, cache):\n    y = nl.functional.batch_norm_backward(dout)\n"
             "    y.sum().backward()",
             "def batch_norm_conv(x, gamma, beta):\n    return x.mean(axis=(0, 2, 3))",
             "this cell ( does not parse"]
    tasks = [t for t in TASKS.values() if t.chapter in (2, 3)]
    assert library_calls(cells, tasks) == [
        {"task": "batch_norm_forward", "calls": ["torch.nn.functional.batch_norm"]},
        {"task": "batch_norm_backward_staged", "calls": ["normlab.batch_norm_backward"]},
        {"task": "batch_norm_backward_compact", "calls": ["?.backward", "normlab.functional.batch_norm_backward"]}]


def test_shards_partition_the_class():
    files = [Path(f"s{i:02d}_{1 + i % 9:02d}.ipynb") for i in range(23)]
    shards = [select_shard(list(reversed(files)), k, 4) for k in range(1, 5)]
    assert sorted(f for s in shards for f in s) == sorted(files)
    assert [len(s) for s in shards] == [6, 6, 6, 5]
    assert shards[1] == select_shard(files, 2, 4)  # the same share whatever order the files were found in
    with pytest.raises(ValueError, match="between 1 and 4"):
        select_shard(files, 5, 4)


def shard_report(path, index, count, files, grades):
    path.write_text(report.json_text(grades, {"timeout": 30.0}, {"index": index, "count": count, "files": files}))
    return path


def test_merge_refuses_incomplete_or_overlapping_shards(tmp_path):
    a = graded("a_02.ipynb", 2, "a", [("batch_norm_forward", 3.0, 3, 3)])
    b = graded("b_02.ipynb", 2, "b", [("batch_norm_forward", 3.0, 1, 3)])
    one, two = shard_report(tmp_path / "1.json", 1, 2, 2, [a]), shard_report(tmp_path / "2.json", 2, 2, 2, [b])
    grades, settings = report.read_reports([two, one])
    assert [g.path for g in grades] == ["a_02.ipynb", "b_02.ipynb"] and settings == {"timeout": 30.0}
    assert grades[0].tasks[0] == a.tasks[0]
    with pytest.raises(ValueError, match="shard\\(s\\) 2/2 missing"):
        report.read_reports([one])
    with pytest.raises(ValueError, match="shard 1/2 is also in"):
        report.read_reports([one, shard_report(tmp_path / "1b.json", 1, 2, 2, [b]), two])
    with pytest.raises(ValueError, match="hold 3 submissions, but were cut from \\[2\\] files"):
        report.read_reports([one, shard_report(tmp_path / "2b.json", 2, 2, 2, [b, a])])
    with pytest.raises(ValueError, match="not a normlab grade report"):
        report.read_reports([write(tmp_path / "x.json", "[1, 2]")])


def grade_args(tmp_path, *extra):
    sub = tmp_path / "subs"
    sub.mkdir(exist_ok=True)
    nb = jupytext.read(REPO / "solutions" / "02.md")
    jupytext.write(nb, sub / "alice_02.ipynb", fmt="ipynb")
    return ["grade", str(sub), "--out", str(tmp_path / "out" / "g.csv"), "--json", str(tmp_path / "out" / "g.json"),
            "--feedback", str(tmp_path / "out" / "feedback"), "-q", *extra]


@pytest.mark.parametrize("files, message", [
    ({"r.csv": "file,student_id\nbob_*,s2\n"}, "unknown student"),
    ({"r.csv": "file,student_id\nalice_*,s1\nalice_0*,s1\n"}, "line 3: duplicate student id"),
    ({"m.csv": "student_id,chapter,question,points\nalice,2,answer1,x\n"}, "line 2: points must be a number"),
    ({"m.csv": "student_id,chapter,question,points\nalice,4,answer1,1\n"}, "has no submission of chapter 4"),
    ({"m.csv": "student_id,chapter,question,points\nzoe,2,answer1,1\n"}, "unknown student 'zoe'"),
    ({}, "--format canvas needs --roster"),
])
def test_bad_input_stops_before_grading_and_writes_nothing(tmp_path, capsys, files, message):
    extra = []
    for name, text in files.items():
        write(tmp_path / name, text)
        extra += ["--roster" if name == "r.csv" else "--manual", str(tmp_path / name)]
    if not files:
        extra = ["--format", "canvas"]
    assert main(grade_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_shards_cannot_take_class_wide_outputs(tmp_path, capsys):
    assert main(grade_args(tmp_path, "--shard", "1/2", "--format", "classroom")) == 2
    assert "normlab grade merge" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(grade_args(tmp_path, "--shard", "3/2"))
