"""The committed notebooks are fit for nbval, and the lessons have what a lesson must have.

nbval (``make notebooks``) runs every notebook of notebooks/, solutions/ and exercises/ and
compares each cell's new output with the committed one - but a code cell committed without
an execution count is only run, not compared, so a notebook committed unexecuted passes
while checking nothing. These tests, which need no kernel, make sure that cannot happen:

- every notebook: every code cell with source has an execution count (committed executed,
  top to bottom from a fresh kernel: the counts are 1, 2, 3, ...), no error output is
  stored, and the kernelspec is ``python3`` (the kernel nbval and JupyterLab start);
- every lesson (``notebooks/*.ipynb``): a title, learning objectives and the expected time
  at the top, at least one widget, one figure and the self-check quiz;
- exercises/ is what solutions/ generates (:func:`kaiser_edu.course.exercises.check_sync`).

The tests are parametrized over the notebooks that exist: an empty folder has no cases.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from kaiser_edu.course.exercises import check_sync, unexecuted_cells

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("notebooks", "solutions", "exercises")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _notebooks(folder: str, pattern: str = "**/*.ipynb") -> list[Path]:
    root = REPO / folder
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(pattern)
                  if p.is_file() and ".ipynb_checkpoints" not in p.parts)


ALL = [p for folder in FOLDERS for p in _notebooks(folder)]
LESSONS = _notebooks("notebooks", "*.ipynb")


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def _code_cells(nb):
    return [(n, c) for n, c in enumerate(nb.cells, start=1) if c.cell_type == "code"]


def _outputs(nb):
    for n, cell in _code_cells(nb):
        for output in cell.get("outputs", []):
            yield n, cell, output


# --- every notebook ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_committed_executed(path: Path) -> None:
    """nbval compares only cells that have an execution count: all of them must have one,
    in order, as a run from a fresh kernel, top to bottom, leaves them."""
    nb = _read(path)
    never_run = unexecuted_cells(nb)
    assert not never_run, (
        f"{_id(path)}: code cells {never_run} have no execution count, so nbval would run "
        "them without comparing anything. Commit the notebook executed from a fresh kernel "
        "(Kernel > Restart Kernel and Run All Cells, then save).")
    counts = [c.execution_count for _, c in _code_cells(nb)
              if c.source.strip() and c.execution_count is not None]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{_id(path)}: execution counts {counts} are not 1, 2, 3, ...: the notebook was not "
        "run once from a fresh kernel, top to bottom (Restart Kernel and Run All Cells)")


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_no_error_output(path: Path) -> None:
    nb = _read(path)
    errors = [f"cell {n}: {o.get('ename')}: {o.get('evalue')}"
              for n, _, o in _outputs(nb) if o.output_type == "error"]
    assert not errors, f"{_id(path)} was committed with error outputs: {errors}"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_kernelspec_python3(path: Path) -> None:
    spec = _read(path).metadata.get("kernelspec", {})
    assert spec.get("name") == "python3", (
        f"{_id(path)}: kernelspec {spec.get('name')!r}, expected 'python3' (the kernel that "
        "nbval and JupyterLab start: this environment's Python)")


# --- every lesson --------------------------------------------------------------------------

OBJECTIVES = re.compile(r"objective|learning goal|you will (learn|be able)"
                        r"|after this lesson,? you|by the end of this lesson", re.IGNORECASE)
EXPECTED_TIME = re.compile(r"expected time|time needed|\d+\s*(min|minutes|hours?|h)\b",
                           re.IGNORECASE)
QUIZ_SOURCE = re.compile(r"kaiser_edu\.widgets\.quiz|from\s+kaiser_edu\.widgets\s+import[^\n]*"
                         r"\bQuiz\b|kaiser_edu\.widgets\.Quiz\b")


def _opening(nb, cells: int = 3) -> str:
    """The text of the first few markdown cells: where a lesson says what it is about."""
    return "\n".join([c.source for c in nb.cells if c.cell_type == "markdown"][:cells])


@pytest.mark.parametrize("path", LESSONS, ids=_id)
def test_lesson_opening(path: Path) -> None:
    nb = _read(path)
    first = nb.cells[0] if nb.cells else None
    assert first is not None and first.cell_type == "markdown" \
        and first.source.lstrip().startswith("# "), (
        f"{_id(path)}: a lesson starts with a markdown cell whose first line is its title "
        "('# 01 · ...')")
    opening = _opening(nb)
    assert OBJECTIVES.search(opening), (
        f"{_id(path)}: the first markdown cells must state the learning objectives "
        "(e.g. a 'Learning objectives' list)")
    assert EXPECTED_TIME.search(opening), (
        f"{_id(path)}: the first markdown cells must state the expected time "
        "(e.g. 'Expected time: 30 minutes')")


@pytest.mark.parametrize("path", LESSONS, ids=_id)
def test_lesson_has_widget_figure_and_quiz(path: Path) -> None:
    nb = _read(path)
    outputs = [o for _, _, o in _outputs(nb)]
    data = [o.get("data", {}) for o in outputs]
    assert any(WIDGET_MIME in d for d in data), (
        f"{_id(path)}: no widget in the committed outputs (an output with "
        f"{WIDGET_MIME}); every lesson has at least one interactive widget")
    assert any("image/png" in d for d in data), (
        f"{_id(path)}: no figure in the committed outputs (an image/png output); every "
        "lesson has at least one figure")
    quiz_shown = any("Quiz(" in d.get("text/plain", "") for d in data)
    quiz_used = any(QUIZ_SOURCE.search(c.source) for _, c in _code_cells(nb))
    assert quiz_shown or quiz_used, (
        f"{_id(path)}: no self-check quiz (kaiser_edu.widgets.quizzes.Quiz, shown as 'Quiz(...)')")


# --- exercises/ from solutions/ ------------------------------------------------------------


@pytest.mark.skipif(not _notebooks("solutions", "*.ipynb")
                    and not _notebooks("exercises", "*.ipynb"),
                    reason="no lab notebooks in solutions/ or exercises/")
def test_exercises_in_sync_with_solutions() -> None:
    problems = check_sync(REPO / "solutions", REPO / "exercises")
    assert not problems, (
        "exercises/ is not what solutions/ generates; rebuild it with "
        "`kaiser-edu build-exercises` and commit the result:\n" + "\n".join(problems))
