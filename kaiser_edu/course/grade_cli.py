"""``kaiser-edu grade SUBMISSIONS --lab NN``: grade a class, one graded run per student.

Each submission is graded exactly as ``kaiser-edu check --graded`` grades one notebook
(:mod:`kaiser_edu.course.graded`): the answers run in a sandbox, the checks here. This
command finds the submissions, runs them ``--jobs`` at a time (worker processes that load
the lab once), and writes:

- ``--csv FILE``: the gradebook, with the columns of ``nbgrader export`` first
  (``assignment, duedate, timestamp, student_id, last_name, first_name, email, raw_score,
  late_submission_penalty, score, max_score``), then ``autograded_score``,
  ``autograded_max``, ``written_max`` and ``status``. ``raw_score`` and ``score`` are the
  autograded points (written answers are for a person: nbgrader's formgrader, or the
  feedback file lists them); ``max_score`` is the lab's total, written answers included,
  as nbgrader counts it;
- ``--feedback DIR``: one Markdown file per student (``DIR/<student>.md``): every exercise
  with its feedback, the notes, and what a person still grades.

Where the submissions are found (``SUBMISSIONS``):

- nbgrader's layout, ``submitted/<student>/<assignment>/<lab>.ipynb`` (pass the
  ``submitted`` folder; ``timestamp.txt`` next to the notebook is read if present);
- a folder per student, ``<student>/<lab>.ipynb`` (any name ``labNN_*.ipynb``);
- flat, ``<student>.ipynb``, one notebook per student.

One broken submission never stops the others: a notebook that cannot be read, or a
grading that fails, is a row with ``status`` saying why and 0 points. Each submission's
code may run for at most ``--timeout`` seconds per exercise and ``--time-limit`` seconds in
all.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NBGRADER_COLUMNS = ("assignment", "duedate", "timestamp", "student_id", "last_name",
                    "first_name", "email", "raw_score", "late_submission_penalty", "score",
                    "max_score")
EXTRA_COLUMNS = ("autograded_score", "autograded_max", "written_max", "status")


@dataclass(frozen=True)
class Submission:
    student: str
    notebook: Path
    timestamp: str = ""


def find_submissions(folder: Path, lab_name: str) -> list[Submission]:
    """Every student's notebook of lab ``lab_name`` (``lab01_addresses``) under ``folder``,
    in nbgrader's layout, a folder per student, or flat; sorted by student."""
    number = lab_name.split("_", 1)[0]
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix == ".ipynb":
            found.append(Submission(entry.stem, entry))
        elif entry.is_dir():
            candidates = sorted(entry.glob(f"{lab_name}.ipynb")) + \
                sorted(entry.glob(f"*/{lab_name}.ipynb")) + \
                sorted(entry.glob(f"{number}_*.ipynb")) + sorted(entry.glob(f"*/{number}_*.ipynb"))
            if candidates:
                notebook = candidates[0]
                stamp = notebook.parent / "timestamp.txt"
                found.append(Submission(entry.name, notebook,
                                        stamp.read_text().strip() if stamp.is_file() else ""))
            else:
                found.append(Submission(entry.name, entry / f"{lab_name}.ipynb"))
    return found


# --- one submission, in a worker -----------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(solution: str, budget: float, limit: float) -> None:
    """Load the lab once per worker (the import of the engine is the slow part)."""
    from kaiser_edu.course import graded

    _WORKER["lab"] = graded.load_lab(solution)
    _WORKER["budget"], _WORKER["limit"] = budget, limit


def grade_one(submission: Submission) -> dict[str, Any]:
    """The graded report of one submission as JSON data, whatever the notebook is."""
    from kaiser_edu.course import graded
    from kaiser_edu.errors import KaiserEduError

    start = time.process_time()
    base = {"student": submission.student, "notebook": str(submission.notebook),
            "timestamp": submission.timestamp}
    try:
        report = graded.grade(submission.notebook, _WORKER["lab"], budget=_WORKER["budget"],
                              limit=_WORKER["limit"])
    except KaiserEduError as e:  # not a notebook, unreadable: a row, not a stop
        return {**base, "status": f"could not be graded: {e}", "report": None,
                "seconds": time.process_time() - start}
    except Exception as e:  # a grader bug must not stop the class either; say so
        return {**base, "status": f"grader error: {type(e).__name__}: {e}", "report": None,
                "seconds": time.process_time() - start}
    status = "ok" if report.ok else "graded"
    return {**base, "status": status, "report": report.to_json(),
            "seconds": time.process_time() - start}


# --- writing ------------------------------------------------------------------------------


def gradebook_rows(results: list[dict[str, Any]], lab_name: str, autograded_max: int,
                   written_max: int) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        score = r["report"]["score"] if r["report"] else 0
        rows.append({
            "assignment": lab_name, "duedate": "", "timestamp": r["timestamp"],
            "student_id": r["student"], "last_name": "", "first_name": "", "email": "",
            "raw_score": float(score), "late_submission_penalty": 0.0, "score": float(score),
            "max_score": float(autograded_max + written_max), "autograded_score": score,
            "autograded_max": autograded_max, "written_max": written_max,
            "status": r["status"],
        })
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*NBGRADER_COLUMNS, *EXTRA_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)


def feedback_markdown(result: dict[str, Any], lab_name: str) -> str:
    """One student's feedback: every exercise, its points and what to fix."""
    from kaiser_edu.course.checks import LABELS

    lines = [f"# {lab_name}: feedback for {result['student']}", ""]
    report = result["report"]
    if report is None:
        return "\n".join(lines + [f"Your notebook could not be graded: {result['status']}.",
                                  ""])
    lines += [f"**Autograded score: {report['score']}/{report['max_score']} points.**", ""]
    for row in report["exercises"]:
        label = LABELS.get(row["status"], row["status"])
        lines += [f"## {row['title']} ({row['exercise']}): {label}, "
                  f"{row['points']}/{row['max_points']}", ""]
        if row["feedback"]:
            lines += ["```", row["feedback"], "```", ""]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    if report["written_answers"]:
        lines += ["## Graded by your lecturer", ""]
        lines += [f"- {w}" for w in report["written_answers"]] + [""]
    return "\n".join(lines)


def _safe_name(student: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in student) or "student"


# --- the command --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submissions", type=Path, metavar="SUBMISSIONS_DIR",
                        help="nbgrader's submitted/ folder, a folder per student, or a "
                             "folder of <student>.ipynb")
    parser.add_argument("--lab", required=True, metavar="NN", help="the lab (01, lab01 ...)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="submissions graded at once (default 1)")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="write the gradebook here")
    parser.add_argument("--feedback", type=Path, metavar="DIR",
                        help="write one Markdown feedback file per student here")
    parser.add_argument("--timeout", type=float, default=60, metavar="S",
                        help="seconds a submission's code may run per exercise (default 60)")
    parser.add_argument("--time-limit", type=float, default=300, metavar="S",
                        help="seconds a submission's code may run in all (default 300)")
    parser.add_argument("--solutions", metavar="DIR", default=None,
                        help="the authored labs (default: the course's solutions/)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _error(message: str) -> int:
    print(f"kaiser-edu grade: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kaiser_edu.course import graded
    from kaiser_edu.course import metadata as md
    from kaiser_edu.course.exercises import read_notebook

    if args.jobs < 1:
        return _error("--jobs must be at least 1")
    if args.timeout <= 0 or args.time_limit <= 0:
        return _error("--timeout and --time-limit must be positive numbers of seconds")
    if not args.submissions.is_dir():
        return _error(f"{args.submissions}: not a folder of submissions")
    try:
        solution = graded.solution_for(args.lab, args.solutions)
        lab = graded.load_lab(solution)
    except graded.LabProtocolError as e:
        return _error(str(e))
    submissions = find_submissions(args.submissions, lab.name)
    if not submissions:
        return _error(f"{args.submissions}: no submissions of {lab.name} found")
    written_max = sum(md.points(c) for c in read_notebook(solution).cells
                      if md.is_written_answer(c))
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(submissions), unit="notebook", disable=args.no_progress,
               desc=f"grading {lab.name}", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_init_worker,
                             initargs=(str(solution), args.timeout, args.time_limit)) as pool:
        futures = {pool.submit(grade_one, s): s for s in submissions}
        for future in as_completed(futures):
            s = futures[future]
            try:
                results.append(future.result())
            except Exception as e:  # a worker that died: this submission only
                results.append({"student": s.student, "notebook": str(s.notebook),
                                "timestamp": s.timestamp, "report": None, "seconds": 0.0,
                                "status": f"grader error: {type(e).__name__}: {e}"})
            bar.update()
    bar.close()
    results.sort(key=lambda r: r["student"])
    rows = gradebook_rows(results, lab.name, lab.max_score, written_max)
    if args.csv:
        write_csv(args.csv, rows)
    if args.feedback:
        args.feedback.mkdir(parents=True, exist_ok=True)
        for r in results:
            (args.feedback / f"{_safe_name(r['student'])}.md").write_text(
                feedback_markdown(r, lab.name), encoding="utf-8")
    for row in rows:
        print(f"{row['student_id']:<24} {row['autograded_score']:>3}/{row['autograded_max']}"
              f"  {row['status']}")
    failed = sum(r["report"] is None for r in results)
    print(f"{len(results)} submissions of {lab.name} graded"
          + (f", {failed} could not be graded" if failed else ""))
    return 0


def main_args(argv: list[str], quiet: bool = False) -> int:
    """``kaiser-edu grade`` with these arguments, from Python (``quiet``: no table)."""
    import contextlib
    import io

    parser = argparse.ArgumentParser(prog="kaiser-edu grade")
    add_arguments(parser)
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        return run(args)
