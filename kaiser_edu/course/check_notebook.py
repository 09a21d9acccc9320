"""``kaiser-edu check NOTEBOOK.ipynb``: run a student's notebook and report every exercise.

The notebook is executed top to bottom in a fresh kernel, on an in-memory copy (the
student's file is never changed), with the kernel's working directory next to it. A cell
that raises does not stop the run (the error is noted and the next cell runs), and a cell
that runs longer than ``--timeout`` seconds is interrupted, so one broken cell still gives
a report for everything else.

How results get here: the kernel's environment has ``KAISER_EDU_CHECK_REPORT`` set to a
temporary file, and every check appends its result there as a JSON line
(:mod:`kaiser_edu.course.checks`). After each cell the new lines are read and attributed to
that cell. The table then has, in notebook order:

- one row per exercise whose check ran (if a check ran twice, its last result counts);
- one ``error`` row per nbgrader check cell that produced no result (it raised before the
  check could run, e.g. a ``NameError`` because the answer cell was deleted);
- notes for errors in other cells and for written answers, which a person grades.

Exit status: 0 if every exercise passed and no cell raised; 1 if anything failed, was not
attempted or raised (or the notebook has no checks at all); 2 if the notebook could not be
checked (missing file, not a notebook, no kernel could start).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kaiser_edu.course import metadata as md
from kaiser_edu.course.checks import ERROR, LABELS, NBGRADER_ENV, PASSED, REPORT_ENV, clean
from kaiser_edu.errors import KaiserEduError


class CheckInputError(KaiserEduError):
    """The notebook cannot be checked (exit status 2)."""


@dataclass
class Row:
    """One exercise in the report."""

    exercise: str
    title: str
    status: str
    points: int
    max_points: int
    feedback: str
    cell: int  # 1-based number of the cell that produced it


@dataclass
class Report:
    """Everything ``kaiser-edu check`` prints (``--json`` prints :meth:`to_json`)."""

    notebook: str
    rows: list[Row] = field(default_factory=list)
    cell_errors: list[str] = field(default_factory=list)
    written_answers: list[str] = field(default_factory=list)

    @property
    def score(self) -> int:
        return sum(r.points for r in self.rows)

    @property
    def max_score(self) -> int:
        return sum(r.max_points for r in self.rows)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.status == PASSED for r in self.rows) \
            and not self.cell_errors

    def to_json(self) -> dict[str, Any]:
        return {
            "notebook": self.notebook,
            "exercises": [asdict(r) for r in self.rows],
            "cell_errors": self.cell_errors,
            "written_answers": self.written_answers,
            "score": self.score,
            "max_score": self.max_score,
            "ok": self.ok,
        }


# --- running the notebook ----------------------------------------------------------------


def load(path: str | Path) -> Any:
    """Read the notebook, or raise CheckInputError saying why it cannot be checked."""
    import nbformat

    p = Path(path)
    if not p.exists():
        raise CheckInputError(f"{path}: no such file")
    if not p.is_file():
        raise CheckInputError(f"{path}: not a file")
    try:
        nb = nbformat.read(str(p), as_version=4)
        nbformat.validate(nb)
    except OSError as e:
        raise CheckInputError(f"{path}: cannot be read ({e.strerror})") from None
    except Exception as e:  # not JSON, not nbformat 4, schema errors: all "not a notebook"
        first = str(e).strip().split("\n", 1)[0][:200]
        raise CheckInputError(f"{path}: not a Jupyter notebook ({first})") from None
    return nb


def _cell_error(cell: Any) -> tuple[str, str] | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return out.get("ename", "Error"), clean(str(out.get("evalue", "")))
    return None


# What to do about the usual reasons a check cell fails before its check runs.
_ADVICE = {
    "NameError": " (run the cell that defines it first; did you rename or delete it?)",
    "KeyboardInterrupt": " (an endless loop in your code?)",
    "SyntaxError": " (a check cell is locked: undo your edit to it)",
}


def _first_line(cell: Any) -> str:
    return cell.source.strip().split("\n", 1)[0][:40]


def run_checks(path: str | Path, timeout: float = 300) -> Report:
    """Execute a copy of the notebook at ``path`` and collect its check results."""
    from nbclient.exceptions import DeadKernelError

    from kaiser_edu.course.execute import execute

    nb = load(path)
    results: dict[int, list[dict[str, Any]]] = {}
    notes: list[str] = []
    fd, report_file = tempfile.mkstemp(prefix="kaiser-edu-check-", suffix=".jsonl")
    os.close(fd)
    consumed = 0
    running = 0  # index of the cell being executed

    def collect(cell_index: int) -> None:
        nonlocal consumed
        with open(report_file, encoding="utf-8") as f:
            f.seek(consumed)
            for line in f.read().splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # torn: the kernel died
                    results.setdefault(cell_index, []).append(json.loads(line))
            consumed = f.tell()

    def on_cell_execute(cell_index: int = 0, **_: Any) -> None:
        nonlocal running
        running = cell_index

    def on_cell_executed(cell_index: int = 0, **_: Any) -> None:
        collect(cell_index)

    env = {k: v for k, v in os.environ.items() if k != NBGRADER_ENV}  # checks must not raise
    env[REPORT_ENV] = report_file
    try:
        execute(nb, Path(path).resolve().parent, timeout=timeout, env=env, allow_errors=True,
                on_cell_execute=on_cell_execute, on_cell_executed=on_cell_executed)
    except DeadKernelError:
        notes.append("the kernel died (the Python process running the notebook stopped); "
                     "cells after that point did not run")
    except Exception as e:  # no kernel could start, or nbclient itself failed
        raise CheckInputError(f"{path}: could not run the notebook: "
                              f"{type(e).__name__}: {clean(str(e))}") from None
    finally:
        collect(running)  # what a cell wrote before the kernel died
        os.unlink(report_file)
    report = _report(str(path), nb, results, timeout)
    report.cell_errors.extend(notes)
    return report


def _report(name: str, nb: Any, results: dict[int, list[dict[str, Any]]],
            timeout: float) -> Report:
    report = Report(notebook=name)
    rows: dict[str, Row] = {}
    for index, cell in enumerate(nb.cells):
        number = index + 1
        error = _cell_error(cell) if cell.cell_type == "code" else None
        error_text = ""
        if error:
            error_text = f"{error[0]}: {error[1]}" if error[1] else error[0]
            if error[0] == "KeyboardInterrupt":
                error_text += f" (stopped after --timeout {timeout:g} s)"
        for res in results.get(index, []):
            exercise = str(res.get("exercise", f"cell{number}"))
            rows.pop(exercise, None)  # the last result counts, shown where it ran
            rows[exercise] = Row(
                exercise=exercise, title=str(res.get("title", exercise)),
                status=str(res.get("status", ERROR)), points=int(res.get("points", 0)),
                max_points=int(res.get("max_points", md.points(cell))),
                feedback=str(res.get("feedback", "")), cell=number,
            )
        if md.is_check(cell) and index not in results:
            grade_id = md.nbgrader(cell).get("grade_id", f"cell{number}")
            why = (f"it raised {error_text}{_ADVICE.get(error[0], '')}" if error
                   else "it did not run" if cell.get("execution_count") is None
                   else "it ran, but no check reported a result")
            rows[grade_id] = Row(
                exercise=grade_id, title=f"check cell {number}", status=ERROR, points=0,
                max_points=md.points(cell),
                feedback=f"The check cell produced no result: {why}.", cell=number,
            )
        elif error:
            report.cell_errors.append(f"cell {number} ({_first_line(cell)!r}) raised {error_text}")
        if md.is_written_answer(cell):
            todo = " - not answered yet" if md.ANSWER_STUB in cell.source else ""
            report.written_answers.append(
                f"{md.nbgrader(cell).get('grade_id', f'cell{number}')} "
                f"({md.points(cell)} points{todo})"
            )
    report.rows = list(rows.values())
    return report


# --- printing ----------------------------------------------------------------------------


def format_report(report: Report) -> str:
    """The human-readable table."""
    lines = [f"kaiser-edu check {report.notebook}", ""]
    if not report.rows:
        lines.append("No exercise checks ran in this notebook (is it an exercise notebook?).")
    width = max((len(r.exercise) for r in report.rows), default=0)
    for r in report.rows:
        label = LABELS.get(r.status, r.status.upper())
        lines.append(f"  {label:<18} {r.exercise:<{width}}  {r.points}/{r.max_points}"
                     f"  {r.title}")
        if r.status != PASSED:
            lines.extend("      " + line for line in r.feedback.splitlines())
    if report.cell_errors:
        lines += ["", "Errors outside the checks (the notebook must run top to bottom):"]
        lines += [f"  {e}" for e in report.cell_errors]
    if report.written_answers:
        lines += ["", "Written answers, graded by your lecturer: "
                  + ", ".join(report.written_answers)]
    lines += ["", f"score: {report.score}/{report.max_score} points"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", metavar="NOTEBOOK.ipynb", help="the notebook to check")
    parser.add_argument("--timeout", type=float, default=300, metavar="S",
                        help="seconds a cell may run before it is interrupted (default 300)")
    parser.add_argument("--json", action="store_true",
                        help="print the report as one JSON object instead of a table")
    parser.epilog = ("Runs a copy of the notebook in a fresh kernel (your file is not "
                     "changed). Exit status: 0 all passed, 1 something to fix, 2 could not "
                     "check.")


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print("error: --timeout must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        report = run_checks(args.notebook, timeout=args.timeout)
    except CheckInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(format_report(report))
    return 0 if report.ok else 1
