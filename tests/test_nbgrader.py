"""The nbgrader round trip, for real: ``generate_assignment`` on lab 01 as authored, an
untouched and a solved submission, ``autograde``, ``export``.

- the untouched submission scores 0, the solved one every autograded point;
- nbgrader prints no warning (a check's result used to be an ``execute_result`` whose text
  nbgrader tried to read as partial credit: "cannot be converted to a float");
- ``exercises/`` carries what nbgrader's release carries: the same checksums and the same
  ``editable``/``deletable`` locks, cell for cell.

About 30 s of CPU (two notebooks executed by nbgrader's autograder).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kaiser_edu.course import exercises as ex
from kaiser_edu.course import metadata as md

nbgrader_utils = pytest.importorskip("nbgrader.utils")

REPO = Path(__file__).resolve().parents[1]
LAB = "lab01_addresses"
ASSIGNMENT = "lab01"


def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    # nbgrader runs `alembic` (its database migrations) from PATH: this Python's scripts
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                  os.environ.get("PATH", "")])}
    env.pop("KAISER_EDU_CHECK_REPORT", None)
    run = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> dict:
    course = tmp_path_factory.mktemp("course")
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        "c.CourseDirectory.course_id = 'kaiser'\n"
        f"c.CourseDirectory.db_url = 'sqlite:///{course / 'gradebook.db'}'\n")
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    shutil.copy(REPO / "solutions" / f"{LAB}.ipynb", course / "source" / ASSIGNMENT)
    logs = [_nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")]
    released = course / "release" / ASSIGNMENT / f"{LAB}.ipynb"
    solution = nbformat.read(str(REPO / "solutions" / f"{LAB}.ipynb"), as_version=4)
    answers = {md.nbgrader(c)["grade_id"]: c.source for c in solution.cells if md.is_answer(c)}
    for student, solve in (("untouched", False), ("solved", True)):
        nb = nbformat.read(str(released), as_version=4)
        if solve:
            for cell in nb.cells:
                if md.is_answer(cell):
                    cell.source = answers[md.nbgrader(cell)["grade_id"]]
        folder = course / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(nb, str(folder / f"{LAB}.ipynb"))
    logs.append(_nbgrader(course, "autograde", ASSIGNMENT, "--create", "--force"))
    logs.append(_nbgrader(course, "export", "--to", str(course / "grades.csv")))
    with open(course / "grades.csv", newline="") as f:
        grades = {r["student_id"]: r for r in csv.DictReader(f)}
    return {"root": course, "released": released, "grades": grades,
            "log": "\n".join(r.stdout + r.stderr for r in logs)}


def test_untouched_scores_zero_and_solved_scores_every_autograded_point(course):
    grades = course["grades"]
    assert float(grades["untouched"]["raw_score"]) == 0.0
    assert float(grades["solved"]["raw_score"]) == 8.0  # the written answer is graded by hand
    assert float(grades["solved"]["max_score"]) == 10.0


def test_nbgrader_prints_no_warning(course):
    log = course["log"]
    assert "cannot be converted to a float" not in log
    assert "[WARNING]" not in log, log


def test_exercise_carries_what_the_release_carries(course):
    released = nbformat.read(str(course["released"]), as_version=4)
    ours = ex.read_notebook(REPO / "exercises" / f"{LAB}.ipynb")
    assert len(released.cells) == len(ours.cells)
    for theirs, mine in zip(released.cells, ours.cells, strict=True):
        assert theirs.source == mine.source
        assert md.nbgrader(theirs) == md.nbgrader(mine)
        for key in ("editable", "deletable"):
            assert theirs.metadata.get(key) == mine.metadata.get(key), (key, mine.source[:40])
    checks = [c for c in ours.cells if md.is_check(c)]
    assert checks and all(c.metadata["editable"] is False and c.metadata["deletable"] is False
                          for c in checks)


@pytest.mark.parametrize("path", sorted((REPO / "exercises").glob("lab*.ipynb")),
                         ids=lambda p: p.stem)
def test_checksums_are_nbgraders(path):
    for cell in ex.read_notebook(path).cells:
        meta = md.nbgrader(cell)
        if "checksum" in meta:
            assert meta["checksum"] == nbgrader_utils.compute_checksum(cell)
