"""``kaiser-edu check NOTEBOOK.ipynb`` end to end: real kernels, real lab notebooks.

Each notebook is checked once (module-scoped fixtures, a few seconds each) through
``python -m kaiser_edu``, as a student would run it; bad input is tested in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from kaiser_edu.cli import main
from kaiser_edu.course import checks as ck
from kaiser_edu.course import metadata as md

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solutions" / "lab01_addresses.ipynb"
EXERCISE = REPO / "exercises" / "lab01_addresses.ipynb"
IDS = ["lab01-split", "lab01-canonical", "lab01-classify", "lab01-canonicalize"]


def kaiser_edu(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kaiser_edu", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def student_notebook(answers: dict[str, str], extra: list | None = None) -> nbformat.NotebookNode:
    """The exercise with some answer cells (by cell id) filled in, and extra cells appended
    after the set-up cell."""
    nb = nbformat.read(str(EXERCISE), as_version=4)
    for cell in nb.cells:
        if cell.id in answers:
            cell.source = answers[cell.id]
    nb.cells[2:2] = extra or []
    return nb


def solution_source(cell_id: str) -> str:
    nb = nbformat.read(str(SOLUTION), as_version=4)
    return next(c.source for c in nb.cells if c.id == cell_id)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("check-cli")


@pytest.fixture(scope="module")
def solution_json(workdir):
    return kaiser_edu("check", "--json", str(SOLUTION), cwd=workdir)


@pytest.fixture(scope="module")
def exercise_run(workdir):
    return kaiser_edu("check", str(EXERCISE), cwd=workdir)


@pytest.fixture(scope="module")
def student_run(workdir):
    """One of each: solved, wrong, crashing, untouched."""
    nb = student_notebook({
        "split-answer": solution_source("split-answer"),
        "canonical-answer": "def is_canonical(va, levels=4):\n    return va >> 47 == 0",
        "classify-answer": "def classify(va, levels=4):\n    half = 0\n    return va // half",
    })
    path = workdir / "student.ipynb"
    nbformat.write(nb, str(path))
    before = path.read_bytes()
    result = kaiser_edu("check", path.name, cwd=workdir)
    assert path.read_bytes() == before, "check must not change the student's file"
    return result


@pytest.fixture(scope="module")
def crash_run(workdir):
    """Everything solved, but a scratch cell raises and an answer cell was deleted."""
    answers = {cid: solution_source(cid) for cid in
               ("split-answer", "canonical-answer", "canonicalize-answer")}
    answers["classify-answer"] = "# deleted by mistake"
    nb = student_notebook(answers, extra=[new_code_cell("print('scratch')\nundefined_name")])
    path = workdir / "crash.ipynb"
    nbformat.write(nb, str(path))
    return kaiser_edu("check", str(path), cwd=workdir)


# --- the lab notebooks -------------------------------------------------------------------


def test_solution_passes_everything(solution_json):
    assert solution_json.returncode == 0, solution_json.stdout + solution_json.stderr
    report = json.loads(solution_json.stdout)
    assert [e["exercise"] for e in report["exercises"]] == IDS
    assert all(e["status"] == ck.PASSED for e in report["exercises"])
    assert (report["score"], report["max_score"], report["ok"]) == (8, 8, True)
    assert report["cell_errors"] == []
    assert report["written_answers"] == ["lab01-shadow-answer (2 points)"]
    assert solution_json.stderr == ""


def test_points_come_from_the_checks_and_match_the_notebook(solution_json):
    nb = nbformat.read(str(SOLUTION), as_version=4)
    cell_points = {md.nbgrader(c)["grade_id"]: md.points(c) for c in nb.cells if md.is_check(c)}
    report = json.loads(solution_json.stdout)
    assert {e["exercise"]: e["max_points"] for e in report["exercises"]} == cell_points


def test_untouched_exercise_is_not_attempted(exercise_run):
    out = exercise_run.stdout
    assert exercise_run.returncode == 1
    assert out.count("NOT ATTEMPTED YET") == 4
    assert "split_address still raises NotImplementedError" in out
    assert out.rstrip().endswith("score: 0/8 points")
    assert "Written answers, graded by your lecturer: lab01-shadow-answer (2 points - not " \
           "answered yet)" in out


def test_student_notebook_gets_a_row_per_exercise_with_feedback(student_run):
    out = student_run.stdout
    assert student_run.returncode == 1
    rows = [line.split()[0] for line in out.splitlines() if "lab01-" in line
            and line.startswith("  ") and not line.startswith("   ")]
    assert rows == ["PASSED", "FAILED", "ERROR", "NOT"]
    # the wrong answer: case, expected, got, hint
    assert "is_canonical(0xffff800000000000, levels=4)  (bottom of the 4-level kernel half)" in out
    assert "expected: True" in out and "got:      False" in out
    assert "Hint: Canonical addresses come in two halves" in out
    # the crash: type, message and the student's line, no traceback
    assert "Your code raised ZeroDivisionError: integer division or modulo by zero" in out
    assert "in classify(), line 3 of its cell:" in out and "return va // half" in out
    assert "Traceback" not in out + student_run.stderr
    assert "score: 2/8 points" in out


def test_crashing_cells_are_reported_and_the_rest_still_runs(crash_run):
    out = crash_run.stdout
    assert crash_run.returncode == 1
    assert "Errors outside the checks (the notebook must run top to bottom):" in out
    assert "cell 3 (\"print('scratch')\") raised NameError: name 'undefined_name' is not " \
           "defined" in out
    assert out.count("PASSED") == 3
    assert "ERROR              lab01-classify" in out
    assert "The check cell produced no result: it raised NameError: name 'classify' is not " \
           "defined (run the cell that defines it first" in out
    assert "score: 6/8 points" in out


# --- timeouts and notebooks without checks (small synthetic notebooks) -----------------------


def synthetic(path: Path, *sources: str, check_points: int | None = None) -> Path:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    if check_points is not None:
        nb.cells[-1].metadata["nbgrader"] = md.check_metadata("t-check", check_points)
    nbformat.write(nb, str(path))
    return path


def test_endless_loop_is_interrupted_and_later_cells_still_run(workdir):
    path = synthetic(
        workdir / "loop.ipynb",
        "def f(x):\n    while True:\n        pass",
        "from kaiser_edu.course.checks import Case, Check\n"
        "check = Check('t-loop', 'Loop', 'f', lambda rng: [Case((1,), 1)])\ncheck(f)",
        "check(lambda x: x)",
        check_points=1,
    )
    result = kaiser_edu("check", "--timeout", "3", path.name, cwd=workdir)
    assert result.returncode == 1
    assert "KeyboardInterrupt: while running f(1) (stopped after --timeout 3 s)" \
        in result.stdout  # the input the check had given the looping function
    assert "PASSED             t-loop" in result.stdout  # the cell after the loop ran


def test_a_dead_kernel_names_the_cell_and_the_exercise(workdir):
    path = synthetic(
        workdir / "dies.ipynb",
        "def f(x):\n    import os\n    os._exit(1)",
        "from kaiser_edu.course.checks import Case, Check\n"
        "check = Check('t-check', 'Dies', 'f', lambda rng: [Case((1,), 1)])\ncheck(f)",
        check_points=1,
    )
    result = kaiser_edu("check", path.name, cwd=workdir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the kernel died (the Python process running the notebook stopped) while running " \
           "cell 2 ('from kaiser_edu.course.checks import Cas', the check of t-check)" \
           in result.stdout


def test_a_dead_kernel_s_last_words_are_in_the_note_and_not_on_stderr(workdir):
    """The kernel's own stderr goes to a file: what it wrote before dying is quoted in the
    note; nothing of it reaches the terminal (ipykernel's shutdown noise would)."""
    path = synthetic(
        workdir / "dies_loudly.ipynb",
        "import os\nos.write(2, b'segfault in libfoo\\n')\nos._exit(1)",
        check_points=1,
    )
    result = kaiser_edu("check", path.name, cwd=workdir)
    assert result.returncode == 1 and "segfault in libfoo" not in result.stderr
    assert "its last words on stderr: segfault in libfoo" in result.stdout


def test_notebook_without_checks_is_not_a_pass(workdir):
    result = kaiser_edu("check", str(synthetic(workdir / "plain.ipynb", "x = 1")), cwd=workdir)
    assert result.returncode == 1
    assert "No exercise checks ran in this notebook" in result.stdout


# --- bad input: exit 2, one clear line, no traceback (in-process, no kernel) ----------------


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("", "not a file"),  # a directory
        ("# not json\n", "not a Jupyter notebook"),
        ('{"cells": 5}', "not a Jupyter notebook"),
        ('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"x": 1}]}',
         "not a Jupyter notebook"),
    ],
    ids=["missing", "directory", "not-json", "not-a-notebook", "bad-cell"],
)
def test_bad_input_exits_2(tmp_path, capsys, content, message):
    path = tmp_path / "lab.ipynb"
    if content == "":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    assert main(["check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {path}: {message}")
    assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""


def test_bad_timeout_exits_2(capsys):
    assert main(["check", "--timeout", "0", str(SOLUTION)]) == 2
    assert "--timeout must be a positive number" in capsys.readouterr().err


# --- kaiser-edu check labNN: the student's lab by number (issue 13, item 4) ------------------


def test_lab_number_finds_the_exercise_from_the_course_folder_and_from_exercises(tmp_path):
    from kaiser_edu.course.check_notebook import find_notebook

    for name in ("lab01", "01", "1", "LAB01"):
        assert find_notebook(name, cwd=REPO) == EXERCISE
    assert find_notebook("lab01", cwd=REPO / "exercises") == EXERCISE
    (tmp_path / "lab01_addresses.ipynb").write_text("{}")  # a student's own copy wins
    assert find_notebook("lab01", cwd=tmp_path) == tmp_path / "lab01_addresses.ipynb"


def test_lab_number_that_does_not_exist_says_where_it_looked(capsys):
    assert main(["check", "lab42"]) == 2
    err = capsys.readouterr().err
    assert "lab42: no lab42_*.ipynb in" in err and "exercises" in err
    assert len(err.strip().splitlines()) == 1


def test_the_command_the_labs_print_works_from_the_repository_root():
    """The labs say `kaiser-edu check labNN`; `make lab` starts in the repository root."""
    for solution in sorted((REPO / "solutions").glob("lab*.ipynb")):
        intro = nbformat.read(str(solution), as_version=4).cells[0].source
        number = solution.name[3:5]
        assert f"`kaiser-edu check lab{number}`" in intro, solution.name
    run = kaiser_edu("check", "--graded", "--json", "lab01", cwd=REPO)
    assert run.returncode == 1, run.stderr  # the untouched exercise: nothing passed yet
    report = json.loads(run.stdout)
    assert report["notebook"].endswith("exercises/lab01_addresses.ipynb")
    assert [r["status"] for r in report["exercises"]] == [ck.NOT_ATTEMPTED] * 4


def test_lab_number_looks_in_nbgraders_assignment_folder(tmp_path):
    from kaiser_edu.course.check_notebook import find_notebook

    (tmp_path / "lab01").mkdir()
    (tmp_path / "lab01" / "lab01_addresses.ipynb").write_text("{}")
    assert find_notebook("lab01", cwd=tmp_path) == tmp_path / "lab01" / "lab01_addresses.ipynb"
