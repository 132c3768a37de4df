"""The ``normlab`` command. Subcommand ``grade``: grade a class's exercise notebooks.

    normlab grade PATH... [--out grades.csv] [--json grades.json] [--roster R.csv] [--manual M.csv]
                  [--format normlab|canvas|classroom] [--feedback DIR] [--shard K/N] [--timeout S] [--jobs N] ...
    normlab grade merge REPORT.json... [the same report options]

Exit code 0 when every submission got a grade (even a zero); 1 when the
grader itself failed on some submission (status ``grader_error``); 2 for bad
arguments, a bad roster or manual CSV, or when no notebook was found (nothing
is written then); 3 when what grading needs is not installed (the ``grade``
extra).
"""
import argparse
import importlib.util
import sys

GRADE_MODULES = ("nbformat", "nbclient", "jupyter_client", "ipykernel", "jupytext")  # the `grade` extra


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def _shard(text):
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N, e.g. 2/8, got {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"K/N needs 1 <= K <= N, got {text!r}")
    return index, count


def _report_options(g):
    g.add_argument("--out", default="grades.csv",
                   help="summary CSV, one row per submission; each chapter also gets OUT-chNN.csv with its task "
                        "columns (default: %(default)s). With --format canvas or classroom, OUT is that file")
    g.add_argument("--json", default="grades.json", dest="json_path",
                   help="JSON report with every check's message and the written answers (default: %(default)s)")
    g.add_argument("--roster", help="CSV of file (name or glob pattern), student_id, name; or a gradebook "
                                    "exported from Canvas. Without it, the student id comes from the file name")
    g.add_argument("--manual", help="CSV of student_id, chapter, question, points[, max_points]: the "
                                    "instructor's points for written answers, added to the totals")
    g.add_argument("--format", choices=("normlab", "canvas", "classroom"), default="normlab",
                   help="what OUT holds: normlab's summary, a Canvas gradebook import (needs a Canvas "
                        "--roster) or GitHub Classroom's autograding result (default: %(default)s)")
    g.add_argument("--assignment", default="normlab chapter {chapter}",
                   help="Canvas column name of each chapter; an exported column of that name (with its id) "
                        "is reused (default: %(default)r)")
    g.add_argument("--feedback", metavar="DIR", help="write one self-contained HTML page per submission here")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no table")


def build_parser():
    parser = argparse.ArgumentParser(prog="normlab", description="normlab course tools")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade exercise notebooks, each in its own sandboxed kernel",
                       description="Grade exercise submissions (.ipynb, or MyST .md with jupytext front matter; "
                                   "folders are searched recursively). Each runs in its own kernel with time and "
                                   "memory limits and no network; results are judged in this process. "
                                   "'normlab grade merge REPORT.json...' combines the reports of --shard runs.")
    g.add_argument("paths", nargs="+", metavar="PATH", help="notebooks or folders of notebooks")
    _report_options(g)
    g.add_argument("--shard", type=_shard, metavar="K/N",
                   help="grade only the K-th of N shares of the sorted files (1 <= K <= N); merge the reports "
                        "with 'normlab grade merge'")
    g.add_argument("--timeout", type=_positive(float), default=30.0,
                   help="seconds allowed per cell and per call of a student function (default: %(default)s)")
    g.add_argument("--submission-timeout", type=_positive(float), default=None,
                   help="seconds allowed per submission in all (default: max(120, 10 x --timeout))")
    g.add_argument("--jobs", type=_positive(int), default=1, help="submissions graded in parallel (default: 1)")
    g.add_argument("--memory-mb", type=_positive(int), default=2048,
                   help="address-space limit of each kernel, MiB (RLIMIT_AS; default: %(default)s)")
    g.add_argument("--keep-temp", action="store_true", help="keep the job folders, for debugging the grader")
    return parser


def build_merge_parser():
    parser = argparse.ArgumentParser(prog="normlab grade merge",
                                     description="Combine the JSON reports of 'normlab grade --shard K/N' runs "
                                                 "into the reports one run over the whole class would write.")
    parser.add_argument("reports", nargs="+", metavar="REPORT.json")
    _report_options(parser)
    return parser


def missing_grade_modules():
    return [m for m in GRADE_MODULES if importlib.util.find_spec(m) is None]


def _error(message, code=2):
    print(f"normlab grade: error: {message}", file=sys.stderr)
    return code


def _gradebook_inputs(args, paths_and_chapters):
    """Roster owners and manual points, checked: ``(owners, manual, roster, roster_columns)``.

    ``paths_and_chapters``: ``[(path, chapter, student_id, name)]``, the last two as a merged report
    recorded them (else None). Raises GradebookError.
    """
    from normlab.check import TASKS
    from normlab.grading import gradebook

    roster = columns = None
    paths = [p for p, *_ in paths_and_chapters]
    if args.roster:
        roster = gradebook.load_roster(args.roster)
        columns = gradebook.read_header(args.roster)
    if args.format == "canvas" and (roster is None or roster[0].canvas is None):
        raise gradebook.GradebookError("--format canvas needs --roster: the gradebook CSV exported from Canvas "
                                       "(Student, ID, SIS User ID, SIS Login ID, Section, ...)")
    if roster is None:  # ids as the shards recorded them (merge), else from the file names
        owners = {p: gradebook.Student(sid or gradebook.id_from_path(p), name or "")
                  for p, _, sid, name in paths_and_chapters}
    else:
        owners = gradebook.match_students(paths, roster, args.roster)
    owners = {str(p): s for p, s in owners.items()}
    manual = []
    if args.manual:
        ids = {s.student_id for s in owners.values()}
        manual = gradebook.load_manual(args.manual, ids, {t.chapter for t in TASKS.values()})
        gradebook.check_manual(manual, [(owners[str(p)].student_id, ch, p) for p, ch, *_ in paths_and_chapters])
    return owners, manual, roster, columns or ()


def _finish(args, grades, owners, manual, roster, columns, settings, shard=None):
    from normlab.grading import gradebook, report

    gradebook.apply(grades, owners, manual)
    files = report.outputs(grades, args.out, args.json_path, settings, shard=shard, format=args.format,
                           roster=roster, roster_columns=columns, assignment=args.assignment,
                           feedback_dir=args.feedback)
    try:
        gradebook.write_atomically(files)
    except OSError as e:
        return _error(f"cannot write the reports (none was written): {e}")
    if not args.quiet:
        print(report.table(grades))
        print(f"wrote {len(files)} files: {', '.join(str(p) for p in list(files)[:4])}"
              + (", ..." if len(files) > 4 else ""))
    return 1 if any(g.status == "grader_error" for g in grades) else 0


def grade_command(args):
    missing = missing_grade_modules()
    if missing:
        return _error(f"{', '.join(missing)} not installed: install the grading extra, "
                      f"pip install 'normlab[grade]'", code=3)
    from normlab.check import TASKS
    from normlab.grading import Grader, gradebook, report, submission
    from normlab.grading.grader import select_shard

    if args.shard and (args.manual or args.format != "normlab"):
        return _error("--manual and --format canvas/classroom apply to the whole class: give them to "
                      "'normlab grade merge' over the shards' reports")
    try:
        found = submission.find(args.paths)
        if not found:
            raise ValueError(f"no notebooks (.ipynb, or .md with jupytext front matter) found in {args.paths}")
        files = select_shard(found, *args.shard) if args.shard else found
        # chapters are read (parsed, not run) before grading only to check the manual points against them
        chapters = [(f, submission.load(f, TASKS).chapter if args.manual else None, None, None) for f in files]
        owners, manual, roster, columns = _gradebook_inputs(args, chapters)
        grader = Grader(timeout=args.timeout, submission_timeout=args.submission_timeout, memory_mb=args.memory_mb,
                        jobs=args.jobs, keep_temp=args.keep_temp,
                        progress=None if args.quiet else report.ProgressBar())
    except (ValueError, FileNotFoundError) as e:  # GradebookError is a ValueError
        return _error(e)
    grades = grader.grade(args.paths, files=files) if files else []
    settings = {"timeout": grader.timeout, "submission_timeout": grader.submission_timeout,
                "memory_mb": grader.memory_mb, "jobs": grader.jobs}
    shard = {"index": args.shard[0], "count": args.shard[1], "files": len(found)} if args.shard else None
    return _finish(args, grades, owners, manual, roster, columns, settings, shard)


def merge_command(args):
    from normlab.grading import report

    try:
        grades, settings = report.read_reports(args.reports)
        owners, manual, roster, columns = _gradebook_inputs(
            args, [(g.path, g.chapter, g.student_id, g.name) for g in grades])
    except (ValueError, FileNotFoundError) as e:
        return _error(e)
    return _finish(args, grades, owners, manual, roster, columns, settings)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["grade", "merge"]:
        return merge_command(build_merge_parser().parse_args(argv[2:]))
    args = build_parser().parse_args(argv)
    if args.command == "grade":
        return grade_command(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
