"""Throughput of `normlab grade`: 20 submissions with --jobs 1 and --jobs 2, in seconds per submission.

    python bench/grading_throughput.py [--n 20] [--jobs 1 2] [--no-compare]

The submissions are the reference solutions of every chapter (as .ipynb),
cycled, every third one with a wrong answer, so that both the passing and the
failing paths of the checkers run. Not a test: it prints timings.

What the sandbox costs, two ways: each kernel's sandbox records how long its
lock-down took (namespaces, the new root, rlimits; ``setup_ms``), summarised
below the table; and the last row grades the same batch at the largest
--jobs with namespaces switched off (audit hook and rlimits only, no new
root, no private uid), so the difference to the row above it is the whole
cost per submission. The load average is printed too: on a shared machine
the timings mean little without it.
"""
import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import jupytext

from normlab.grading import Grader

REPO = Path(__file__).resolve().parents[1]


def make_submissions(folder, n):
    solutions = sorted((REPO / "solutions").glob("*.md"))
    for i in range(n):
        nb = jupytext.read(solutions[i % len(solutions)])
        if i % 3 == 2:  # a wrong answer: every task function returns its first argument
            for cell in nb.cells:
                if cell.cell_type == "code" and "### BEGIN SOLUTION" in cell.source:
                    head = cell.source.split("### BEGIN SOLUTION")[0]
                    indent = head.splitlines()[-1] if head.splitlines() else "    "
                    cell.source = head + "### BEGIN SOLUTION\n" + indent + "return locals()[next(iter(locals()))]\n"
        jupytext.write(nb, folder / f"student{i:02d}_{solutions[i % len(solutions)].stem}.ipynb", fmt="ipynb")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--no-compare", action="store_true", help="skip the row with namespaces off")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tempfile.tempdir = tmp  # the grader's job folders too, so that kept ones go with this folder
        folder = Path(tmp) / "subs"
        folder.mkdir()
        make_submissions(folder, args.n)
        print(f"{args.n} submissions, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
        print(f"{'jobs':>4}  {'sandbox':<8}  {'total s':>8}  {'s / submission':>14}  {'mean score':>10}  statuses")
        runs = [(jobs, True) for jobs in args.jobs] + ([] if args.no_compare else [(max(args.jobs), False)])
        setup_ms = []
        for jobs, namespaces in runs:
            keep = namespaces and jobs == max(args.jobs)  # keep the job folders to read the sandbox reports
            start = time.perf_counter()
            grades = Grader(timeout=args.timeout, jobs=jobs, namespaces=namespaces, keep_temp=keep).grade([folder])
            total = time.perf_counter() - start
            if keep:
                for report in Path(tmp).glob("normlab-grade-*/*/sandbox.json"):
                    setup_ms.append(json.loads(report.read_text())["setup_ms"])
            counts = {}
            for g in grades:
                counts[g.status] = counts.get(g.status, 0) + 1
            mean = sum(g.score / g.max_score for g in grades if g.max_score) / len(grades)
            label = "on" if namespaces else "off"
            print(f"{jobs:>4}  {label:<8}  {total:>8.1f}  {total / len(grades):>14.2f}  {mean:>10.0%}  {counts}")
        if setup_ms:
            print(f"sandbox lock-down per kernel start: median {statistics.median(setup_ms):.0f} ms, "
                  f"max {max(setup_ms):.0f} ms over {len(setup_ms)} starts")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
