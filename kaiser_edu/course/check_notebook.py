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

The notebook's code can read and write the report file, so this report can be forged: it
is feedback for the student. What counts is ``--graded`` (:mod:`kaiser_edu.course.graded`),
which reads nothing the notebook wrote. Still, nothing the notebook does crashes this
command: a deleted report file or a line that is not a result is a note, and a line is
worth at most the points its check cell declares. For a lab of this course, every exercise
the lab declares has a row (a deleted check cell is ``missing``).

``NOTEBOOK`` may be a lab number (``kaiser-edu check lab02``): :func:`find_notebook`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kaiser_edu.course import metadata as md
from kaiser_edu.course.checks import (
    ERROR,
    LABELS,
    MISSING,
    NBGRADER_ENV,
    PASSED,
    REPORT_ENV,
    clean,
)
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
    notes: list[str] = field(default_factory=list)  # what the checker noticed (not an error)
    graded: bool = False  # made by a graded run (kaiser_edu.course.graded)

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
            "notes": self.notes,
            "graded": self.graded,
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


def _last_words(log: Any, lines: int = 3) -> str:
    """The last lines a dead kernel wrote to its stderr, for the note ("" if none)."""
    try:
        log.seek(0)
        text = log.read()[-4000:].decode("utf-8", "replace")
    except OSError:
        return ""
    tail = [clean(line)[:120] for line in text.splitlines() if line.strip()][-lines:]
    return f"; its last words on stderr: {' / '.join(tail)}" if tail else ""


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
        """Read the lines the cell added; the notebook's code may have deleted, truncated
        or scribbled on the file (it can: the path is in its environment), so every
        surprise is a note, never an exception."""
        nonlocal consumed
        try:
            with open(report_file, "rb") as f:
                f.seek(consumed)
                data = f.read()
                consumed = f.tell()
        except OSError as e:
            _note(f"the check report file could not be read after cell {cell_index + 1} "
                  f"({e.strerror or type(e).__name__}): did the notebook's code delete it? "
                  "Results of checks that ran before are lost")
            return
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:  # torn: the kernel died while writing
                continue
            if not isinstance(result, dict):
                _note(f"cell {cell_index + 1}: a line of the check report is not a check "
                      f"result ({clean(line)[:60]!r}): ignored")
                continue
            results.setdefault(cell_index, []).append(result)

    def _note(text: str) -> None:
        if text not in notes:
            notes.append(text)

    def on_cell_execute(cell_index: int = 0, **_: Any) -> None:
        nonlocal running
        running = cell_index

    def on_cell_executed(cell_index: int = 0, **_: Any) -> None:
        collect(cell_index)

    env = {k: v for k, v in os.environ.items() if k != NBGRADER_ENV}  # checks must not raise
    env[REPORT_ENV] = report_file
    # The kernel's own stderr goes to a file: shown only if the kernel dies (its last
    # words), so ipykernel's shutdown noise never reaches the student's terminal.
    with tempfile.TemporaryFile() as kernel_log:
        try:
            execute(nb, Path(path).resolve().parent, timeout=timeout, env=env, allow_errors=True,
                    kernel_stderr=kernel_log, on_cell_execute=on_cell_execute,
                    on_cell_executed=on_cell_executed)
        except DeadKernelError:
            cell = nb.cells[running]
            what = (f", the check of {md.nbgrader(cell).get('grade_id')}" if md.is_check(cell)
                    else "")
            notes.append(f"the kernel died (the Python process running the notebook stopped) "
                         f"while running cell {running + 1} ({_first_line(cell)!r}{what}); cells "
                         f"after it did not run{_last_words(kernel_log)}")
        except Exception as e:  # no kernel could start, or nbclient itself failed
            raise CheckInputError(f"{path}: could not run the notebook: "
                                  f"{type(e).__name__}: {clean(str(e))}") from None
        finally:
            collect(running)  # what a cell wrote before the kernel died
            with contextlib.suppress(OSError):
                os.unlink(report_file)
    report = _report(str(path), nb, results, timeout)
    report.cell_errors.extend(n for n in notes if n.startswith("the kernel died"))
    report.notes.extend(n for n in notes if not n.startswith("the kernel died"))
    _add_missing_exercises(report, path)
    return report


def _add_missing_exercises(report: Report, path: str | Path) -> None:
    """Rows for the exercises the lab declares but the notebook did not report (a deleted
    check cell): ``missing``, 0 points. Only for a lab whose solution is at hand."""
    from kaiser_edu.course import graded

    try:
        lab = graded.load_lab(graded.solution_for(Path(path).name))
    except KaiserEduError:
        return  # not a lab of this course, or no solutions/: nothing declared to compare
    known = {e.grade_id: e.points for e in lab.exercises}
    for row in [r for r in report.rows if r.exercise not in known and not r.exercise.startswith(
            "cell")]:
        report.notes.append(f"a result for {row.exercise}, which this lab does not have: "
                            "ignored")
        report.rows.remove(row)
    for row in report.rows:
        if row.exercise in known and row.max_points != known[row.exercise]:
            report.notes.append(f"{row.exercise} is worth {known[row.exercise]} points in the "
                                f"lab, not {row.max_points}: counted as {known[row.exercise]}")
            row.max_points = known[row.exercise]
            row.points = min(row.points, row.max_points)
    have = {r.exercise for r in report.rows}
    for exercise in lab.exercises:
        if exercise.grade_id not in have:
            report.rows.append(Row(
                exercise=exercise.grade_id, title=exercise.check.title, status=MISSING,
                points=0, max_points=exercise.points, cell=0,
                feedback=f"No result for this exercise: its check cell ({exercise.source}) is "
                         "missing from the notebook. Restore it (it is in the lab as handed "
                         "out)."))


def _report(name: str, nb: Any, results: dict[int, list[dict[str, Any]]],
            timeout: float) -> Report:
    report = Report(notebook=name)
    declared = {md.nbgrader(c).get("grade_id"): md.points(c) for c in nb.cells if md.is_check(c)}
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
            rows[exercise] = _row(res, exercise, declared.get(exercise, 0), number, report)
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


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def _row(res: dict[str, Any], exercise: str, declared: int, number: int, report: Report) -> Row:
    """A report line as a row, worth at most the points the notebook's check cell for that
    exercise declares (nbgrader metadata): a line that claims more, or points without a
    pass, or an exercise no check cell declares, is noted and worth 0. (The lines can be
    forged by the notebook's code; a graded run does not read them at all.)"""
    status = str(res.get("status", ERROR))
    points = _int(res.get("points", 0))
    if points and (status != PASSED or points > declared):
        report.notes.append(f"cell {number}: a result for {exercise} claims {points} points, "
                            f"but the exercise is worth {declared}: ignored (0 points)")
        points = 0
    return Row(exercise=exercise, title=str(res.get("title", exercise)), status=status,
               points=points, max_points=declared, feedback=str(res.get("feedback", "")),
               cell=number)


# --- printing ----------------------------------------------------------------------------


def format_report(report: Report) -> str:
    """The human-readable table."""
    mode = " --graded" if report.graded else ""
    lines = [f"kaiser-edu check{mode} {report.notebook}", ""]
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
    if report.notes:
        lines += ["", "Notes:"]
        lines += [f"  {n}" for n in report.notes]
    if report.written_answers:
        lines += ["", "Written answers, graded by your lecturer: "
                  + ", ".join(report.written_answers)]
    lines += ["", f"score: {report.score}/{report.max_score} points"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", metavar="NOTEBOOK",
                        help="the notebook to check: a path, or a lab by number (lab02, 02) "
                             "looked up as labNN_*.ipynb here, in exercises/ below here, "
                             "then in the course's exercises/")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="seconds a cell may run before it is interrupted (default 300); "
                             "with --graded, seconds the student's code may run per exercise "
                             f"(default {DEFAULT_GRADED_TIMEOUT:g})")
    parser.add_argument("--json", action="store_true",
                        help="print the report as one JSON object instead of a table")
    parser.add_argument("--graded", action="store_true",
                        help="grade it: the checks and expected answers stay in this process, "
                             "the answers run in a sandbox that cannot import kaiser_edu "
                             "(see README, For lecturers)")
    parser.add_argument("--solutions", metavar="DIR", default=None,
                        help="with --graded: the authored labs (default: the course's "
                             "solutions/)")
    parser.epilog = ("Runs a copy of the notebook (your file is not changed). Exit status: 0 "
                     "all passed, 1 something to fix, 2 could not check.")


DEFAULT_GRADED_TIMEOUT = 60.0
_LAB_NUMBER = re.compile(r"^(?:lab)?(\d{1,2})$", re.IGNORECASE)


def find_notebook(name: str, cwd: Path | None = None) -> Path:
    """The notebook ``name`` means: a path as given; but for ``lab02`` or ``2`` (not an
    existing file) the student's ``lab02_*.ipynb`` in the folder ``lab02/`` (nbgrader's
    layout), in the current folder, in ``exercises/`` under it, or in the course
    checkout's ``exercises/``. Raises CheckInputError saying where it looked."""
    here = cwd or Path.cwd()
    path = here / name
    number = _LAB_NUMBER.match(name)
    if not number or path.is_file():
        return Path(name)
    from kaiser_edu.course.materials import course_source

    pattern = f"lab{int(number[1]):02d}_*.ipynb"
    folders = [path] if path.is_dir() else []  # nbgrader's assignment folder, lab01/
    folders += [here, here / "exercises"]
    if (source := course_source()) is not None:
        folders.append(source / "exercises")
    for folder in folders:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    looked = ", ".join(str(f) for f in dict.fromkeys(folders))
    raise CheckInputError(f"{name}: no {pattern} in {looked}")


def run(args: argparse.Namespace) -> int:
    if args.timeout is not None and args.timeout <= 0:
        print("error: --timeout must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        path = find_notebook(args.notebook)
        if args.graded:
            from kaiser_edu.course import graded

            timeout = args.timeout or DEFAULT_GRADED_TIMEOUT
            try:
                lab = graded.load_lab(graded.solution_for(path.name, args.solutions))
            except graded.LabProtocolError as e:
                raise CheckInputError(f"{path}: cannot be graded: {e}") from None
            report = graded.grade(path, lab, budget=timeout)
        else:
            report = run_checks(path, timeout=args.timeout or 300)
    except CheckInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(format_report(report))
    return 0 if report.ok else 1
