"""Student notebooks generated from the solution notebooks (the single authored source).

A lab is written once, with its answers, in ``solutions/``. Each answer sits between
nbgrader's markers::

    def split_address(va, levels=4):
        ### BEGIN SOLUTION
        ...the answer...
        ### END SOLUTION

:func:`build_exercise` turns it into the student's version, as ``nbgrader
generate_assignment`` would: a code region becomes ``# YOUR CODE HERE`` and
``raise NotImplementedError()`` at the region's indentation, a markdown region becomes
``YOUR ANSWER HERE``, and a solution cell without markers is replaced whole. Outputs are
removed from every code cell (the solution's outputs would show passed checks and could
give answers away); :func:`build_all` then executes each exercise afresh, so it is
committed executed like every notebook, its checks showing "not attempted yet".

Cells keep their nbgrader metadata. An answer cell without any gets it
(:func:`kaiser_edu.course.metadata.answer_metadata`, grade id ``<notebook>-cellNN``);
check cells must carry theirs in the solution (only the author knows their points). Then
each cell gets what nbgrader's release gives it (:func:`kaiser_edu.course.metadata.release`):
checksums, and check and read-only cells ``editable: false, deletable: false``, which
JupyterLab enforces.

:func:`compare_exercise` and :func:`check_sync` prove that the committed exercises are
what the solutions generate: cell types, sources and nbgrader metadata are compared here;
outputs are nbval's business.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from kaiser_edu.course import metadata as md
from kaiser_edu.course.checks import NBGRADER_ENV, REPORT_ENV
from kaiser_edu.errors import KaiserEduError

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
CODE_STUB, ANSWER_STUB = md.CODE_STUB, md.ANSWER_STUB

# Anything that looks like a marker but is not exactly one (a typo would leak the answer).
_MARKER_LIKE = re.compile(r"^\s*#+\s*(BEGIN|END)\s+SOLUTION\b", re.IGNORECASE)


class ExerciseBuildError(KaiserEduError):
    """A solution notebook cannot be turned into an exercise (names notebook and cell)."""


# --- one cell, one notebook --------------------------------------------------------------


def strip_solutions(source: str, cell_type: str, where: str = "cell") -> tuple[str, int]:
    """Replace each solution region of ``source``; return the new source and the region count.

    >>> code = "def f(x):\\n    ### BEGIN SOLUTION\\n    return 2 * x\\n    ### END SOLUTION"
    >>> print(strip_solutions(code, "code")[0])
    def f(x):
        # YOUR CODE HERE
        raise NotImplementedError()
    """
    out: list[str] = []
    inside_since = 0  # line number of the open BEGIN, 0 when outside a region
    regions = 0
    for number, line in enumerate(source.split("\n"), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside_since:
                raise ExerciseBuildError(
                    f"{where}, line {number}: {BEGIN!r} inside the region opened on line "
                    f"{inside_since} (regions cannot nest; close it with {END!r} first)"
                )
            inside_since, regions = number, regions + 1
            indent = line[: len(line) - len(line.lstrip())]
            if cell_type == "code":
                out += [indent + stub for stub in CODE_STUB]
            else:
                out.append(ANSWER_STUB)
        elif marker == END:
            if not inside_since:
                raise ExerciseBuildError(
                    f"{where}, line {number}: {END!r} without a {BEGIN!r} before it"
                )
            inside_since = 0
        elif _MARKER_LIKE.match(line):
            raise ExerciseBuildError(
                f"{where}, line {number}: {marker!r} looks like a solution marker but is not "
                f"exactly {BEGIN!r} or {END!r}"
            )
        elif not inside_since:
            out.append(line)
    if inside_since:
        raise ExerciseBuildError(
            f"{where}, line {inside_since}: {BEGIN!r} is never closed by {END!r}"
        )
    return "\n".join(out), regions


def _cell_label(name: str, number: int, cell: NotebookNode) -> str:
    first = cell.source.strip().split("\n", 1)[0][:40]
    return f"{name}, cell {number} ({first!r})" if first else f"{name}, cell {number}"


def build_exercise(solution_nb: NotebookNode, name: str = "notebook") -> NotebookNode:
    """The student version of ``solution_nb`` (a new notebook; the argument is unchanged).

    ``name`` is the notebook's file name: it appears in error messages and its stem in the
    grade ids given to answer cells without metadata. Refuses (ExerciseBuildError) on
    unbalanced or misspelt markers, on regions in a cell whose nbgrader metadata says it is
    not a solution, and on metadata nbgrader would reject (duplicate grade ids, ...).
    """
    nb = copy.deepcopy(solution_nb)
    stem = Path(name).stem
    for number, cell in enumerate(nb.cells, start=1):
        if cell.cell_type not in ("code", "markdown"):
            continue
        label = _cell_label(name, number, cell)
        source, regions = strip_solutions(cell.source, cell.cell_type, label)
        meta = cell.metadata.get("nbgrader")
        if regions and meta is not None and not meta.get("solution"):
            raise ExerciseBuildError(
                f"{label}: has solution regions, but its nbgrader metadata says it is not a "
                "solution cell (set \"solution\": true, or remove the markers)"
            )
        if meta is not None and meta.get("solution") and not regions:
            # nbgrader's rule: a solution cell without markers is all solution.
            source = "\n".join(CODE_STUB) if cell.cell_type == "code" else ANSWER_STUB
        if regions and meta is None:
            grade_id = md.derived_grade_id(stem, number)
            cell.metadata["nbgrader"] = (
                md.answer_metadata(grade_id) if cell.cell_type == "code"
                else md.written_answer_metadata(grade_id)
            )
        cell.source = source
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
        md.release(cell)
    found = md.problems(nb.cells)
    if found:
        raise ExerciseBuildError(f"{name}: nbgrader metadata problems:\n  " + "\n  ".join(found))
    return nb


# --- whole directories -------------------------------------------------------------------


def solution_notebooks(solutions_dir: str | Path) -> list[Path]:
    """The ``*.ipynb`` files of ``solutions_dir``, sorted by name."""
    folder = Path(solutions_dir)
    if not folder.is_dir():
        raise ExerciseBuildError(f"no solutions directory {str(folder)!r}")
    return sorted(p for p in folder.glob("*.ipynb") if p.is_file())


def read_notebook(path: str | Path) -> NotebookNode:
    """Read a notebook as nbformat 4, with a clear error for anything else."""
    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as e:  # missing, not JSON, not nbformat 4, schema errors
        first = str(e).strip().split("\n", 1)[0][:200]
        raise ExerciseBuildError(f"{path}: not a readable notebook ({first})") from None


def write_notebook(nb: NotebookNode, path: str | Path) -> None:
    """Write ``nb`` as Jupyter does (1-space indented JSON, final newline)."""
    nbformat.validate(nb)
    Path(path).write_text(nbformat.writes(nb) + "\n", encoding="utf-8")


def execute_exercise(nb: NotebookNode, exercises_dir: str | Path, name: str,
                     timeout: float = 600) -> NotebookNode:
    """Run a generated exercise top to bottom; it must run without an error.

    The kernel starts in ``exercises_dir``; its environment has neither
    ``$KAISER_EDU_CHECK_REPORT`` (it must not report to a ``kaiser-edu check``) nor
    ``$NBGRADER_EXECUTION`` (unfinished checks must not raise).
    """
    from nbclient.exceptions import CellExecutionError

    from kaiser_edu.course.execute import execute

    env = {k: v for k, v in os.environ.items() if k not in (REPORT_ENV, NBGRADER_ENV)}
    try:
        return execute(nb, exercises_dir, timeout=timeout, env=env)
    except CellExecutionError as e:
        raise ExerciseBuildError(
            f"{name}: the generated exercise does not run cleanly: {e.ename}: {e.evalue}\n"
            "(put each answer inside a function, so the stub raises only when the check "
            "calls it)"
        ) from None


def build_all(solutions_dir: str | Path, exercises_dir: str | Path, execute: bool = True,
              timeout: float = 600) -> list[Path]:
    """Write ``exercises_dir/<name>.ipynb`` for every solution notebook; return the paths.

    With ``execute`` (the default) each exercise is executed before it is written, so a
    notebook that does not run is never written.
    """
    sources = solution_notebooks(solutions_dir)
    out_dir = Path(exercises_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        nb = build_exercise(read_notebook(source), name=source.name)
        if execute:
            nb = execute_exercise(nb, out_dir, source.name, timeout=timeout)
        target = out_dir / source.name
        write_notebook(nb, target)
        written.append(target)
    return written


# --- are the committed exercises what the solutions generate? -----------------------------


def answer_namespace(path: str | Path, setup: bool = True) -> dict:
    """Run a lab notebook's answer cells (and its cell with id "setup", if ``setup``) in a
    fresh namespace and return what they define: the student's (or the solution's)
    functions, for tests and for lecturers checking a submission outside Jupyter."""
    namespace: dict = {}
    for cell in read_notebook(path).cells:
        if cell.cell_type == "code" and (md.is_answer(cell) or (setup and cell.id == "setup")):
            exec(compile(cell.source, f"{Path(path).name}:{cell.id}", "exec"), namespace)
    return namespace


def render(nb: NotebookNode) -> list[str]:
    """The parts of a notebook that sync compares, as lines for a diff."""
    lines = []
    for number, cell in enumerate(nb.cells, start=1):
        grader = json.dumps(md.nbgrader(cell), sort_keys=True)
        locks = {k: cell.metadata[k] for k in ("editable", "deletable") if k in cell.metadata}
        lines.append(f"=== cell {number} [{cell.cell_type}] nbgrader={grader}"
                     + (f" {json.dumps(locks, sort_keys=True)}" if locks else ""))
        lines.extend(cell.source.split("\n"))
    return lines


def compare_exercise(generated: NotebookNode, committed: NotebookNode,
                     name: str = "notebook") -> str:
    """A unified diff from ``committed`` to ``generated`` ("" when they agree).

    Compares cell types, sources and nbgrader metadata; not outputs (nbval compares those
    when it runs the committed notebook).
    """
    diff = difflib.unified_diff(
        render(committed), render(generated),
        fromfile=f"committed {name}", tofile=f"generated {name}", lineterm="",
    )
    return "\n".join(diff)


def unexecuted_cells(nb: NotebookNode) -> list[int]:
    """1-based numbers of code cells with source but no execution count (never run)."""
    return [
        number for number, cell in enumerate(nb.cells, start=1)
        if cell.cell_type == "code" and cell.source.strip() and cell.execution_count is None
    ]


def check_sync(solutions_dir: str | Path, exercises_dir: str | Path) -> list[str]:
    """Everything that is out of date in ``exercises_dir``, as readable messages ([] = in sync).

    Each solution must have an exercise with the generated sources and metadata, executed
    (every code cell has an execution count); an exercise without a solution is reported.
    """
    problems = []
    ex_dir = Path(exercises_dir)
    sources = solution_notebooks(solutions_dir)
    for source in sources:
        target = ex_dir / source.name
        if not target.is_file():
            problems.append(f"{target} is missing")
            continue
        try:
            generated = build_exercise(read_notebook(source), name=source.name)
            committed = read_notebook(target)
        except ExerciseBuildError as e:
            problems.append(str(e))
            continue
        diff = compare_exercise(generated, committed, name=source.name)
        if diff:
            problems.append(f"{target} differs from what {source} generates:\n{diff}")
        never_run = unexecuted_cells(committed)
        if never_run:
            problems.append(f"{target} is not executed (code cells without an execution "
                            f"count: {', '.join(map(str, never_run))})")
    names = {s.name for s in sources}
    for orphan in sorted(ex_dir.glob("*.ipynb")) if ex_dir.is_dir() else []:
        if orphan.name not in names:
            problems.append(f"{orphan} has no solution notebook in {solutions_dir}")
    return problems
