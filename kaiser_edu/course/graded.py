"""Graded mode: ``kaiser-edu check --graded NOTEBOOK``, a result the student's code cannot fake.

``kaiser-edu check`` (without ``--graded``) runs the student's notebook and its checks in
one kernel: quick feedback while working, but the student's code could reach the checks,
the expected answers and the report file. A graded run keeps all of that in the grader's
own process (this module) and lets the student's code only compute:

1. **What the lab declares** comes from the authored lab, never from the submission
   (:func:`load_lab`): ``solutions/labNN_*.ipynb`` says which exercises exist, their
   points (nbgrader metadata of each check cell), the check each one runs and the
   function it checks (the check cell's source, ``check_split(split_address)``);
   ``kaiser_edu.course.labs.labNN`` holds the checks and the lab's :class:`AnswerKit`.
2. **The student's answer cells** (matched to the solution's by nbgrader grade id, else by
   cell id) run in a *sandbox*: a fresh ``python -I`` running
   :mod:`kaiser_edu.course.sandbox`, one per exercise, where no ``kaiser_edu`` module can
   be imported (an import guard says so) and no report file exists.
3. **The grader's checks call the student's functions** through proxies
   (:class:`RemoteFunction`): the inputs go over as plain values, the answers come back as
   plain values (ints, bools, strings, tuples, lists, dicts; the lab's record types), and
   the check compares them with its own reference, here. An answer that is any other
   object comes back as a :class:`NotPlain` that equals nothing. Objects a check hands to
   the student's code (``read_qword``, ``pti``) stay here too: the sandbox gets a stand-in
   that forwards the uses the lab declares (``read_qword(pa)``, ``pti.alloc_table()``) and
   nothing else.
4. **Every declared exercise gets a row**: a deleted check cell is ``missing`` (0 points),
   an edited one is noted and ignored (the lab's check runs), a missing answer function is
   an error row. Each exercise has a time budget (``--timeout``): an endless loop is
   stopped and the row names the call that was running; a sandbox that dies (``os._exit``,
   a crash) is named with the exercise and the call.

What it does not guarantee: the sandbox is a separate process, not a security boundary.
Code that deliberately dismantles the import guard, or copies the engine's source into an
answer, is not stopped by this module (the first is detected when it loads a
``kaiser_edu`` module; the second is plagiarism, for a person to judge). Run class grading
in a container or on a JupyterHub, as nbgrader's autograder does.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaiser_edu.course import checks as ck
from kaiser_edu.course import metadata as md
from kaiser_edu.course.answer_process import (
    MISSING,
    AnswerProcess,
    AnswerStopped,
    LabProtocolError,
)

CHECK_CALL = re.compile(r"^\s*(\w+)\((\w+)\)\s*$")
LAB_NAME = re.compile(r"^(lab\d\d)_\w+$")
DEFAULT_BUDGET = 60.0  # seconds the student's code may run for one exercise
#: What an answer cell may mention only to try to fake a result (each becomes a note).
SUSPECT = (
    ("kaiser_edu", "imports kaiser_edu (the engine and the checks)"),
    ("get_ipython", "uses get_ipython() (there is no IPython in a graded run)"),
    (ck.REPORT_ENV, f"uses ${ck.REPORT_ENV} (a graded run has no report file)"),
)


# --- the lab, as declared by its author -------------------------------------------------------


@dataclass(frozen=True)
class Exercise:
    """One autograded exercise of a lab: its check cell in the solution and its check."""

    grade_id: str
    points: int
    check: ck.Check
    function: str  # the name the student's answer defines
    source: str  # the check cell's source in the solution
    cell_id: str


@dataclass(frozen=True)
class AnswerCell:
    grade_id: str
    cell_id: str


@dataclass(frozen=True)
class Lab:
    """Everything a graded run needs to know about a lab, all from the author's side."""

    name: str  # "lab01_addresses"
    solution: Path
    exercises: tuple[Exercise, ...]
    answers: tuple[AnswerCell, ...]
    kit: ck.AnswerKit
    check_names: frozenset[str]
    cell_ids: frozenset[str] = frozenset()  # every cell id of the solution

    @property
    def max_score(self) -> int:
        return sum(e.points for e in self.exercises)


def solutions_dir(explicit: str | Path | None = None) -> Path:
    """``explicit``, else ``solutions/`` of this installation's course (the checkout, or the
    copy inside an installed wheel: :func:`~kaiser_edu.course.materials.course_source`)."""
    from kaiser_edu.course.materials import course_source

    if explicit is not None:
        folder = Path(explicit)
    else:
        root = course_source()
        if root is None:
            raise LabProtocolError("no course found next to this installation of kaiser_edu "
                                   "(graded runs read the authored labs; pass --solutions DIR)")
        folder = root / "solutions"
    if not folder.is_dir():
        raise LabProtocolError(f"no solutions folder at {folder} (graded runs read the "
                               "authored labs; pass --solutions DIR)")
    return folder


def solution_for(lab: str, folder: str | Path | None = None) -> Path:
    """The solution notebook of ``lab`` ("01", "lab01", "lab01_addresses" or a file name)."""
    base = solutions_dir(folder)
    stem = Path(lab).stem
    match = re.match(r"^(?:lab)?(\d{1,2})(?:_|$)", stem)
    if not match:
        raise LabProtocolError(f"{lab!r} does not name a lab (labNN or labNN_topic)")
    found = sorted(base.glob(f"lab{int(match[1]):02d}_*.ipynb"))
    if not found:
        have = ", ".join(p.stem for p in sorted(base.glob("lab*.ipynb"))) or "none"
        raise LabProtocolError(f"no lab {int(match[1]):02d} in {base} (labs: {have})")
    return found[0]


_LABS: dict[Path, Lab] = {}


def load_lab(solution: str | Path) -> Lab:
    """Read a lab's declaration from its solution notebook and check module (cached)."""
    import nbformat

    path = Path(solution).resolve()
    if path in _LABS:
        return _LABS[path]
    stem = LAB_NAME.match(path.stem)
    if not stem:
        raise LabProtocolError(f"{path.name}: a lab notebook is named labNN_topic.ipynb")
    module = importlib.import_module(f"kaiser_edu.course.labs.{stem[1]}")
    nb = nbformat.read(str(path), as_version=4)
    exercises, answers = [], []
    for number, cell in enumerate(nb.cells, start=1):
        meta = md.nbgrader(cell)
        if md.is_check(cell):
            call = CHECK_CALL.match(cell.source)
            check = getattr(module, call[1], None) if call else None
            if not isinstance(check, ck.Check):
                raise LabProtocolError(
                    f"{path.name}, cell {number}: a check cell must be exactly "
                    f"`check_name(function)` with check_name a Check of {module.__name__}")
            exercises.append(Exercise(meta["grade_id"], md.points(cell), check, call[2],
                                      cell.source, cell.get("id", "")))
        elif cell.cell_type == "code" and md.is_answer(cell):
            answers.append(AnswerCell(meta["grade_id"], cell.get("id", "")))
    if not exercises:
        raise LabProtocolError(f"{path.name}: no check cells (nbgrader grade cells)")
    names = frozenset(k for k, v in vars(module).items() if isinstance(v, ck.Check))
    lab = Lab(path.stem, path, tuple(exercises), tuple(answers),
              getattr(module, "ANSWER_KIT", ck.AnswerKit()), names,
              frozenset(c.get("id", "") for c in nb.cells))
    _LABS[path] = lab
    return lab


# --- grading ------------------------------------------------------------------------------


@dataclass
class Graded:
    """The outcome of a graded run, before it becomes a :class:`check_notebook.Report`."""

    rows: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cells_noted: bool = False  # the answer cells' errors are noted once, by the first sandbox


def _find(cells: list[Any], grade_id: str, cell_id: str) -> tuple[int, Any] | None:
    for number, cell in enumerate(cells, start=1):
        if md.nbgrader(cell).get("grade_id") == grade_id:
            return number, cell
    for number, cell in enumerate(cells, start=1):
        if cell_id and cell.get("id") == cell_id:
            return number, cell
    return None


@contextlib.contextmanager
def _quiet_checks() -> Iterator[None]:
    """No report file and no nbgrader mode while the grader's checks run here."""
    saved = {k: os.environ.pop(k) for k in (ck.REPORT_ENV, ck.NBGRADER_ENV) if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _stopped_text(e: AnswerStopped, exercise: Exercise, budget: float) -> str:
    if e.kind == "timeout":
        return (f"Your code ran longer than the {budget:g} s this exercise may take and was "
                f"stopped while running {e.call}. An endless loop? Check the loop's exit "
                "condition for that input.")
    if e.kind == "died":
        return (f"The Python process running your answers stopped ({e.detail}) while running "
                f"{e.call}, in exercise {exercise.grade_id}: your code ended it (os._exit, "
                "sys.exit in a thread, a crash, or too much memory).")
    return f"Your code broke the graded run's channel ({e.detail}) while running {e.call}."


def grade_exercise(lab: Lab, exercise: Exercise, cells: list[tuple[str, str]],
                   budget: float, graded: Graded) -> tuple[Any, float]:
    """One exercise in a fresh sandbox: its row (a :class:`check_notebook.Row`) and the
    seconds the student's code used of ``budget``."""
    proc = AnswerProcess(lab.kit, budget)
    try:
        return _grade_in(proc, lab, exercise, cells, graded), budget - proc.budget
    finally:
        proc.close()


def _grade_in(proc: AnswerProcess, lab: Lab, exercise: Exercise, cells: list[tuple[str, str]],
              graded: Graded) -> Any:
    from kaiser_edu.course.check_notebook import Row

    def row(status: str, feedback: str, points: int = 0) -> Row:
        return Row(exercise=exercise.grade_id, title=exercise.check.title, status=status,
                   points=points, max_points=exercise.points, feedback=feedback, cell=0)

    budget = proc.budget
    try:
        try:
            ready = proc.setup(cells)
        except AnswerStopped as e:
            return row(ck.ERROR, _stopped_text(e, exercise, budget))
        if not graded.cells_noted:
            graded.cells_noted = True
            for label, name, message, line in ready.get("cell_errors", []):
                at = f", line {line}" if line else ""
                graded.notes.append(f"answer cell {label} raised {name}{at}: {message}")
            defined = set(ready.get("defined", []))
            forged = sorted(defined & lab.check_names)
            if forged:
                graded.notes.append(
                    f"your answers define {', '.join(forged)}, the name of a check: a graded "
                    "run uses the lab's own checks, so this changes nothing")
        function = proc.lookup(exercise.function)
        if function is MISSING:
            return row(ck.ERROR, f"Your notebook does not define {exercise.function}: its "
                                 "answer cell is missing, raised an error (see the notes), or "
                                 "the function was renamed.")
        with _quiet_checks():
            result = exercise.check(function)
        loaded = proc.request({"op": "status"}, "the end of the check").get("loaded", [])
        if loaded:
            graded.notes.append(f"{exercise.grade_id}: your code loaded {', '.join(loaded)} "
                                "despite the import guard: 0 points")
            return row(ck.ERROR, "Your code loaded kaiser_edu modules, which a graded run "
                                 f"forbids ({', '.join(loaded)}): 0 points.")
        feedback = result.feedback
        if proc.not_plain:
            kinds = ", ".join(sorted(set(proc.not_plain)))
            graded.notes.append(f"{exercise.grade_id}: your code returned objects that are "
                                f"not plain values ({kinds}); they count as wrong answers")
        points = exercise.points if result.status == ck.PASSED else 0
        return row(result.status, feedback, points)
    except AnswerStopped as e:
        return row(ck.ERROR, _stopped_text(e, exercise, budget))
    except LabProtocolError:
        raise
    except Exception as e:  # a malformed answer from the sandbox: this exercise only
        return row(ck.ERROR, f"The graded run could not use what came back from your code "
                             f"({type(e).__name__}: {ck.clean(str(e))}). Did your code write "
                             "to the grader's channel? If not, this is a bug in kaiser_edu: "
                             "please tell your lecturer.")


def answer_cells(lab: Lab, nb: Any, graded: Graded) -> list[tuple[str, str]]:
    """The student's answer cells, in the solution's order, as (label, source); notes for
    missing cells and for what an answer mentions only to fake a result."""
    cells = []
    for answer in lab.answers:
        found = _find(nb.cells, answer.grade_id, answer.cell_id)
        if found is None:
            graded.notes.append(f"answer cell {answer.grade_id} is missing (deleted?)")
            continue
        number, cell = found
        if cell.cell_type != "code":
            graded.notes.append(f"answer cell {answer.grade_id} (cell {number}) is not a code "
                                "cell any more")
            continue
        for word, what in SUSPECT:
            if word in cell.source:
                graded.notes.append(f"answer cell {answer.grade_id} {what}: not allowed in a "
                                    "graded run")
        cells.append((answer.grade_id, cell.source))
    return cells


def added_cells(lab: Lab, nb: Any) -> list[str]:
    """Notes for code cells the solution does not have (by id): a graded run ignores them,
    and says so, naming what they try if it looks like faking a result."""
    authored = lab.cell_ids
    notes = []
    for number, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "code" or cell.get("id") in authored or not cell.source.strip():
            continue
        if md.is_answer(cell) or md.is_check(cell):
            continue  # an answer or check cell found by its grade id
        tries = [what for word, what in SUSPECT if word in cell.source]
        tries += [f"calls {name}" for name in sorted(lab.check_names) if name in cell.source]
        first = cell.source.strip().split("\n", 1)[0][:40]
        notes.append(f"cell {number} ({first!r}) was added to the lab; a graded run runs only "
                     "the answer cells" + (f" (it {'; '.join(tries)})" if tries else ""))
    return notes


def grade(path: str | Path, lab: Lab | None = None, budget: float = DEFAULT_BUDGET,
          solutions: str | Path | None = None, limit: float | None = None) -> Any:
    """Grade the notebook at ``path``; a :class:`check_notebook.Report` with ``graded``.

    ``budget``: seconds the student's code may run per exercise; ``limit``: for the whole
    notebook (default: no limit beyond the per-exercise budgets). An exercise that starts
    with less left gets what is left, and none when nothing is: a "time limit" row.
    """
    from kaiser_edu.course.check_notebook import Report, Row, load

    nb = load(path)
    if lab is None:
        lab = load_lab(solution_for(Path(path).name, solutions))
    graded = Graded()
    cells = answer_cells(lab, nb, graded)
    graded.notes.extend(added_cells(lab, nb))
    limit_total = limit or 0.0
    for exercise in lab.exercises:
        found = _find(nb.cells, exercise.grade_id, exercise.cell_id)
        if found is None:
            graded.rows.append(Row(
                exercise=exercise.grade_id, title=exercise.check.title, status=ck.MISSING,
                points=0, max_points=exercise.points, cell=0,
                feedback=f"The check cell of this exercise ({exercise.source}) is missing from "
                         "the notebook: 0 points. Restore it (it is in the lab as handed "
                         "out)."))
            continue
        if found[1].source.strip() != exercise.source.strip():
            graded.notes.append(
                f"check cell {exercise.grade_id} (cell {found[0]}) was edited: a graded run "
                f"ignores the edit and runs the lab's own check, {exercise.source}")
        left = budget if limit is None else min(budget, limit)
        if left <= 0:
            graded.rows.append(Row(
                exercise=exercise.grade_id, title=exercise.check.title, status=ck.ERROR,
                points=0, max_points=exercise.points, cell=found[0],
                feedback=f"Not graded: the submission's time limit ({limit_total:g} s) was "
                         "used up by the exercises before it."))
            continue
        row, used = grade_exercise(lab, exercise, cells, left, graded)
        if limit is not None:
            limit -= used
        row.cell = found[0]
        graded.rows.append(row)
    return Report(notebook=str(path), rows=graded.rows, notes=graded.notes, graded=True)

