"""What every lab must satisfy, for each ``solutions/labNN_*.ipynb`` with its check module
``kaiser_edu.course.labs.labNN``: every check passes on the solution and says "not attempted"
on the untouched exercise; each check cell calls its check by name with nbgrader metadata
matching it; the committed outputs say so; the points add up to what the lab announces;
``kaiser-edu check`` grades both notebooks.

Lab-specific behaviour (wrong answers and their hints, the engine side) is in test_labNN.py.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kaiser_edu.course import checks as ck
from kaiser_edu.course import exercises as ex
from kaiser_edu.course import metadata as md

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((REPO / "solutions").glob("lab[0-9][0-9]_*.ipynb"))
POINTS = re.compile(r"\*\*Points:\*\* (\d+) checked automatically, (\d+) for the written answer")


def _lab(solution: Path):
    return importlib.import_module(f"kaiser_edu.course.labs.{solution.stem.split('_')[0]}")


def _exercise(solution: Path) -> Path:
    return REPO / "exercises" / solution.name


CASES = [(s, check) for s in SOLUTIONS for check in _lab(s).CHECKS]


def _id(case) -> str:
    return case.exercise if isinstance(case, ck.Check) else case.stem


@pytest.fixture(scope="module")
def namespaces() -> dict[Path, dict]:
    """The answers defined by each notebook (solution and exercise), run once."""
    return {}


def _answers(namespaces: dict, path: Path) -> dict:
    if path not in namespaces:
        namespaces[path] = ex.answer_namespace(path)
    return namespaces[path]


def test_every_lab_has_its_checks():
    assert SOLUTIONS, "no lab notebooks found in solutions/"
    for solution in SOLUTIONS:
        assert _lab(solution).CHECKS, f"{solution.name}: its check module has no CHECKS"
        assert _exercise(solution).is_file(), f"{solution.name} has no generated exercise"


@pytest.mark.parametrize(("solution", "check"), CASES, ids=_id)
def test_check_passes_on_the_solution(namespaces, solution, check):
    result = check(_answers(namespaces, solution)[check.function])
    assert result.status == ck.PASSED, result.feedback
    assert result.points == check.points and result.cases > 0


@pytest.mark.parametrize(("solution", "check"), CASES, ids=_id)
def test_check_says_not_attempted_on_the_untouched_exercise(namespaces, solution, check):
    result = check(_answers(namespaces, _exercise(solution))[check.function])
    assert result.status == ck.NOT_ATTEMPTED and result.points == 0, result.feedback
    assert "NotImplementedError" in result.feedback


@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
def test_check_cells_call_their_checks(solution):
    """Each check cell is ``<the check's name in the lab module>(<the student's function>)``
    and carries the check's grade id and points (what nbgrader and kaiser-edu check read)."""
    lab = _lab(solution)
    name_of = {id(value): name for name, value in vars(lab).items()
               if isinstance(value, ck.Check)}
    cells = [c for c in ex.read_notebook(solution).cells if md.is_check(c)]
    assert len(cells) == len(lab.CHECKS)
    for cell, check in zip(cells, lab.CHECKS, strict=True):
        assert md.nbgrader(cell)["grade_id"] == check.exercise
        assert md.points(cell) == check.points
        assert cell.source == f"{name_of[id(check)]}({check.function})"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
def test_committed_check_outputs_say_passed_and_not_attempted(solution):
    def outputs(path: Path) -> list[str]:
        nb = ex.read_notebook(path)
        return [o.data["text/plain"] for c in nb.cells if md.is_check(c) for o in c.outputs]

    solved, fresh = outputs(solution), outputs(_exercise(solution))
    assert len(solved) == len(fresh) == len(_lab(solution).CHECKS)
    assert all(text.startswith("[PASSED]") for text in solved)
    assert all(text.startswith("[NOT ATTEMPTED YET]") for text in fresh)


@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
def test_points_add_up_to_the_stated_total(solution):
    cells = ex.read_notebook(solution).cells
    stated = POINTS.search(cells[0].source)
    assert stated, f"{solution.name}: the first cell must state '**Points:** N checked " \
                   "automatically, M for the written answer'"
    auto = sum(md.points(c) for c in cells if md.is_check(c))
    written = sum(md.points(c) for c in cells if md.is_written_answer(c))
    assert (auto, written) == (int(stated[1]), int(stated[2]))


@pytest.mark.parametrize("solution", SOLUTIONS, ids=_id)
@pytest.mark.parametrize("which", ["solution", "exercise"])
def test_kaiser_edu_check(tmp_path, solution, which):
    """``kaiser-edu check`` runs the notebook (without changing it) and reports every
    exercise: all passed with full marks on the solution, exit status 1 and all "not
    attempted" on the untouched exercise."""
    path = solution if which == "solution" else _exercise(solution)
    before = path.read_bytes()
    run = subprocess.run([sys.executable, "-m", "kaiser_edu", "check", "--json", str(path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == (0 if which == "solution" else 1), run.stdout + run.stderr
    report = json.loads(run.stdout)
    lab = _lab(solution)
    assert [r["exercise"] for r in report["exercises"]] == [c.exercise for c in lab.CHECKS]
    want = ck.PASSED if which == "solution" else ck.NOT_ATTEMPTED
    assert {r["status"] for r in report["exercises"]} == {want}
    full = sum(c.points for c in lab.CHECKS)
    assert report["score"] == (full if which == "solution" else 0)
    assert report["max_score"] == full and report["cell_errors"] == []
    written = [c for c in ex.read_notebook(solution).cells if md.is_written_answer(c)]
    unanswered = "" if which == "solution" else " - not answered yet"
    assert report["written_answers"] == [
        f"{md.nbgrader(c)['grade_id']} ({md.points(c)} points{unanswered})" for c in written]
    assert path.read_bytes() == before
