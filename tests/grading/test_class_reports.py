"""A small class graded end to end: student ids from a Canvas roster, per-chapter CSVs, written answers and
manual points, library use, feedback pages in a real browser, shards merged, and the GitHub Classroom steps.
"""
import base64
import csv
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from normlab.check import TASKS
from normlab.cli import main

REPO = Path(__file__).resolve().parents[2]
CANVAS_EXPORT = Path(__file__).with_name("data") / "canvas_export.csv"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
INJECTED = "<script>document.title='pwned'</script><img src=http://example.com/x.png>"


def solution(chapter):
    return jupytext.read(REPO / "solutions" / f"{chapter:02d}.md")


def set_answer(nb, text):
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "<!-- BEGIN SOLUTION -->" in cell.source:
            cell.source = text
            cell.metadata["tags"] = ["answer"]


def replace_function(nb, name, body):
    """Swap the body of the student's function ``name`` (a solution block) for ``body``."""
    for cell in nb.cells:
        if cell.cell_type == "code" and f"def {name}(" in cell.source:
            start, end = cell.source.index("### BEGIN SOLUTION"), cell.source.index("### END SOLUTION")
            cell.source = cell.source[:start] + "### BEGIN SOLUTION\n" + body + "\n    " + cell.source[end:]
            return
    raise AssertionError(f"no cell defines {name}")


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    """Four submissions, named by the Canvas export's login ids: right, wrong + library use, ch3, invalid."""
    subs = tmp_path_factory.mktemp("class") / "subs"
    subs.mkdir()
    ada = solution(2)
    set_answer(ada, "gamma and beta restore the scale.\n" + INJECTED)
    jupytext.write(ada, subs / "alovelace_02.ipynb", fmt="ipynb")
    alan = solution(2)
    replace_function(alan, "batch_norm_forward", "    return nl.batch_norm_forward(x, gamma, beta, eps=eps)[0]")
    replace_function(alan, "batch_norm_conv", "    return x")
    jupytext.write(alan, subs / "aturing_02.ipynb", fmt="ipynb")
    jupytext.write(solution(3), subs / "ghopper_03.ipynb", fmt="ipynb")
    broken = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "ir", "language": "R", "display_name": "R"},
                                                "normlab": {"chapter": 5}})
    nbformat.write(broken, subs / "b2c9e1f0a7d3_05.ipynb")
    return subs


def table(path):
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


def run_grade(args):
    code = main(args)
    assert code == 0, code
    return code


@pytest.fixture(scope="module")
def one_run(class_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    manual = out / "manual.csv"
    manual.write_text("student_id,chapter,question,points,max_points\n4101,2,answer1,1.5,2\n4102,2,answer1,0.5,2\n")
    run_grade(["grade", str(class_folder), "--roster", str(CANVAS_EXPORT), "--manual", str(manual),
               "--out", str(out / "grades.csv"), "--json", str(out / "grades.json"),
               "--feedback", str(out / "feedback"), "--jobs", "2", "-q"])
    return out


def test_rows_carry_student_ids_scores_and_the_isolation(one_run):
    rows = {r["student_id"]: r for r in table(one_run / "grades.csv")}
    assert set(rows) == {"4101", "4102", "4103", "4199"}
    ada, alan, grace, broken = rows["4101"], rows["4102"], rows["4103"], rows["4199"]
    assert (ada["name"], ada["status"], ada["score"], ada["manual"], ada["total"], ada["max_total"]) == (
        "Lovelace, Ada", "ok", "5", "1.5", "6.5", "7")
    assert float(alan["score"]) < 5 and alan["total"] == f"{float(alan['score']) + 0.5:g}"
    assert re.fullmatch(r"\d+(\.\d{1,2})?", alan["score"])  # two decimals at most
    assert grace["chapter"] == "3" and grace["total"] == grace["max_total"] == "7"
    assert broken["status"] == "invalid" and broken["chapter"] == "5"  # from the notebook's metadata
    assert broken["max_score"] == f"{sum(t.points for t in TASKS.values() if t.chapter == 5):g}"
    assert ada["isolation"].startswith("filesystem") and "network" in ada["isolation"]
    assert alan["library_use"] == "batch_norm_forward: normlab.batch_norm_forward" and ada["library_use"] == ""


def test_each_chapter_gets_its_own_csv(one_run):
    two, three = table(one_run / "grades-ch02.csv"), table(one_run / "grades-ch03.csv")
    assert [r["student_id"] for r in two] == ["4101", "4102"] and [r["student_id"] for r in three] == ["4103"]
    assert "batch_norm_forward" in two[0] and "grad_check" not in two[0] and "grad_check" in three[0]
    assert two[0]["manual: answer1"] == "1.5" and two[1]["batch_norm_conv"] == "0"
    assert "batch_norm_conv:" in two[1]["messages"]
    assert (one_run / "grades-ch05.csv").exists()


def test_written_answers_and_manual_points_are_in_the_json(one_run):
    subs = {Path(s["path"]).name: s for s in json.loads((one_run / "grades.json").read_text())["submissions"]}
    ada = subs["alovelace_02.ipynb"]
    assert [a["question"] for a in ada["answers"]] == ["answer1"] and INJECTED in ada["answers"][0]["text"]
    assert ada["manual"] == [{"question": "answer1", "points": 1.5, "max_points": 2.0}]
    assert subs["ghopper_03.ipynb"]["answers"][0]["blank"] is False


def test_feedback_page_in_a_browser(one_run):
    pages = sorted((one_run / "feedback").glob("*.html"))
    assert [p.name for p in pages] == ["4101_alovelace_02.html", "4102_aturing_02.html", "4103_ghopper_03.html",
                                       "4199_b2c9e1f0a7d3_05.html"]
    spec = importlib.util.spec_from_file_location("book_browser", REPO / "tests" / "book" / "test_browser.py")
    browser = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(browser)  # the book test's chromium set-up: offline, every other host NOTFOUND
    browser.require_browser()
    CHROMIUM, CHROMEDRIVER, CHROMIUM_FLAGS = browser.CHROMIUM, browser.CHROMEDRIVER, browser.CHROMIUM_FLAGS
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={one_run / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get("about:blank")
        driver.get_log("performance")  # the browser's own start-up requests (chrome://)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for page, name in ((pages[0], "feedback-right.png"), (pages[1], "feedback-wrong.png")):
            driver.get(page.as_uri())
            driver.save_screenshot(str(SCREENSHOTS / name))
            text = driver.find_element("tag name", "body").text
            urls = [json.loads(e["message"])["message"]["params"]["request"]["url"]
                    for e in driver.get_log("performance")
                    if json.loads(e["message"])["message"]["method"] == "Network.requestWillBeSent"]
            urls = [u for u in urls if u.split(":")[0] not in browser.LOCAL_SCHEMES]
            assert urls == [page.as_uri()], urls  # self-contained: nothing else is fetched
            assert driver.execute_script("return document.scripts.length + document.images.length") == 0
            assert "normlab feedback" in driver.title and "pwned" not in driver.title
            width = driver.execute_script("return document.documentElement.scrollWidth")
            assert width <= driver.execute_script("return window.innerWidth")
            if page == pages[0]:
                assert "Score: 6.5 / 7" in text and INJECTED in text  # the answer shown as text, not markup
                assert "answer1" in text and "1.5 / 2" in text
            else:
                assert "batch_norm_conv" in text and "0 / 2" in text
                hint = json.loads((one_run / "grades.json").read_text())["submissions"][1]["tasks"][1]["messages"][0]
                assert hint in text
    finally:
        driver.quit()


def test_shards_merge_into_the_same_reports(class_folder, one_run, tmp_path):
    reports = []
    for k in (1, 2, 3):
        out = tmp_path / f"shard{k}"
        run_grade(["grade", str(class_folder), "--shard", f"{k}/3", "--roster", str(CANVAS_EXPORT),
                   "--out", str(out / "grades.csv"), "--json", str(out / "grades.json"), "-q"])
        reports.append(str(out / "grades.json"))
    assert sum(len(json.loads(Path(r).read_text())["submissions"]) for r in reports) == 4
    merged = tmp_path / "merged"
    run_grade(["grade", "merge", *reports[::-1], "--manual", str(one_run / "manual.csv"),
               "--out", str(merged / "grades.csv"), "--json", str(merged / "grades.json"),
               "--feedback", str(merged / "feedback"), "-q"])
    for name in ("grades.csv", "grades-ch02.csv", "grades-ch03.csv", "grades-ch05.csv"):
        assert (merged / name).read_text() == (one_run / name).read_text(), name
    for page in (one_run / "feedback").glob("*.html"):
        assert (merged / "feedback" / page.name).read_text() == page.read_text()

    def comparable(path):  # timings and the kernels' private uids differ from run to run
        data = json.loads(Path(path).read_text())
        for s in data["submissions"]:
            s.pop("seconds")
            s["isolation"] = [re.sub(r"private uid \d+", "private uid", e) for e in s["isolation"]]
        data["settings"].pop("jobs")
        return data
    assert comparable(merged / "grades.json") == comparable(one_run / "grades.json")
    canvas = tmp_path / "canvas.csv"
    run_grade(["grade", "merge", *reports, "--manual", str(one_run / "manual.csv"), "--roster", str(CANVAS_EXPORT),
               "--format", "canvas", "--out", str(canvas), "--json", str(tmp_path / "c.json"), "-q"])
    rows = list(csv.reader(io.StringIO(canvas.read_text())))
    assert rows[0][5:] == ["normlab chapter 2 (90211)", "normlab chapter 3 (90212)", "normlab chapter 5"]
    assert rows[2][:6] == ["Lovelace, Ada", "4101", "S4101", "alovelace", "Section 01", "6.5"]


def workflow_steps():
    text = (REPO / "docs" / "github-classroom.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    workflow = yaml.safe_load(block)
    return next(iter(workflow["jobs"].values()))["steps"]


def test_github_classroom_workflow_steps_report_the_points(tmp_path):
    """The documented steps, run here: each `run:` but the install (the fresh-venv test covers that)."""
    repo = tmp_path / "student-repo"
    repo.mkdir()
    nb = solution(2)
    replace_function(nb, "batch_norm_conv", "    return x")
    jupytext.write(nb, repo / "02.ipynb", fmt="ipynb")
    output = tmp_path / "github_output"
    output.write_text("")
    env = {**os.environ, "GITHUB_OUTPUT": str(output),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    steps = workflow_steps()
    ran = 0
    for step in steps:
        if "run" in step and not step["run"].lstrip().startswith("pip install"):
            subprocess.run(["bash", "-e", "-c", step["run"]], cwd=repo, env=env, check=True, timeout=600)
            ran += 1
    assert ran == 1
    reporter = next(s for s in steps if s.get("uses", "").startswith("classroom-resources/autograding-grading-reporter"))
    runner = reporter["with"]["runners"]
    grade_step = next(s for s in steps if s.get("id") == runner)
    assert reporter["env"][f"{runner.upper()}_RESULTS"] == f"${{{{ steps.{grade_step['id']}.outputs.result }}}}"
    encoded = dict(line.split("=", 1) for line in output.read_text().splitlines())["result"]
    result = json.loads(base64.b64decode(encoded).decode())  # as the reporter decodes it
    graded = json.loads((repo / "grades.json").read_text())["submissions"][0]
    assert result["max_score"] == graded["max_total"] == 5
    assert sum(t["score"] for t in result["tests"]) == pytest.approx(graded["total"]) == 3
    assert result["status"] == "fail" and {t["status"] for t in result["tests"]} == {"pass", "fail"}
    assert shutil.which("bash")
