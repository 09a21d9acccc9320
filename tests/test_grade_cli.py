"""``kaiser-edu grade``: a class of lab 01 submissions, broken ones included."""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kaiser_edu.course import grade_bench, grade_cli
from kaiser_edu.course import metadata as md

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solutions" / "lab01_addresses.ipynb"
EXERCISE = REPO / "exercises" / "lab01_addresses.ipynb"


def _write(path: Path, nb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def _with(answers: dict[str, str] | None = None, drop: tuple[str, ...] = ()):
    nb = nbformat.read(str(EXERCISE), as_version=4)
    for cell in nb.cells:
        if answers and md.nbgrader(cell).get("grade_id") in answers:
            cell.source = answers[md.nbgrader(cell)["grade_id"]]
    nb.cells = [c for c in nb.cells if md.nbgrader(c).get("grade_id") not in drop]
    return nb


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """A class in nbgrader's layout: solved, untouched, endless loop, kernel killer, deleted
    cells, not a notebook, and no notebook at all; graded with --jobs 2."""
    root = tmp_path_factory.mktemp("class")
    sub = root / "submitted"
    lab = "lab01_addresses"
    _write(sub / "ada" / lab / f"{lab}.ipynb", nbformat.read(str(SOLUTION), as_version=4))
    (sub / "ada" / lab / "timestamp.txt").write_text("2026-12-01 10:00:00 UTC")
    _write(sub / "bob" / lab / f"{lab}.ipynb", _with())
    _write(sub / "cy" / lab / f"{lab}.ipynb", _with(
        {"lab01-split-answer": "def split_address(va, levels=4):\n    while True:\n"
                               "        pass\n"}))
    _write(sub / "dee" / lab / f"{lab}.ipynb", _with(
        {"lab01-canonical-answer": "import os\nos._exit(1)\n"}))
    _write(sub / "eve" / lab / f"{lab}.ipynb", _with(drop=("lab01-split", "lab01-classify")))
    (sub / "fay" / lab).mkdir(parents=True)
    (sub / "fay" / lab / f"{lab}.ipynb").write_text("{ not json")
    (sub / "gus").mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "kaiser_edu", "grade", str(sub), "--lab", "01", "--jobs", "2",
         "--timeout", "3", "--csv", str(root / "grades.csv"), "--feedback",
         str(root / "feedback")], capture_output=True, text=True, timeout=600)
    with open(root / "grades.csv", newline="") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    return run, rows, root / "feedback"


def test_every_submission_gets_a_row_and_the_run_succeeds(graded_class):
    run, rows, _ = graded_class
    assert run.returncode == 0, run.stderr
    assert sorted(rows) == ["ada", "bob", "cy", "dee", "eve", "fay", "gus"]
    assert "7 submissions of lab01_addresses graded, 2 could not be graded" in run.stdout


def test_gradebook_has_nbgrader_columns_and_scores(graded_class):
    _, rows, _ = graded_class
    assert list(rows["ada"])[:11] == list(grade_cli.NBGRADER_COLUMNS)
    scores = {s: (float(r["score"]), r["status"]) for s, r in rows.items()}
    assert scores["ada"] == (8.0, "ok")
    assert rows["ada"]["timestamp"] == "2026-12-01 10:00:00 UTC"
    assert rows["ada"]["max_score"] == "10.0"  # 8 autograded + the written answer's 2
    assert scores["bob"] == (0.0, "graded")
    assert scores["cy"] == (0.0, "graded") and scores["dee"] == (0.0, "graded")
    assert scores["eve"] == (0.0, "graded")
    assert scores["fay"][0] == 0.0 and "not a Jupyter notebook" in scores["fay"][1]
    assert scores["gus"][0] == 0.0 and "no such file" in scores["gus"][1]


def test_feedback_names_loops_dead_kernels_and_deleted_cells(graded_class):
    _, _, feedback = graded_class
    assert sorted(p.name for p in feedback.iterdir()) == [
        f"{s}.md" for s in ("ada", "bob", "cy", "dee", "eve", "fay", "gus")]
    assert "8/8" in (feedback / "ada.md").read_text()
    cy = (feedback / "cy.md").read_text()
    assert "stopped while running split_address(0x0, levels=4)" in cy
    dee = (feedback / "dee.md").read_text()
    assert "exit status 1" in dee and "running your answer cells" in dee
    eve = (feedback / "eve.md").read_text()
    assert eve.count("MISSING") == 2 and "lab01-split" in eve and "lab01-classify" in eve
    assert "could not be graded" in (feedback / "fay.md").read_text()


def test_flat_layout_and_bad_arguments(tmp_path, capsys):
    _write(tmp_path / "flat" / "zoe.ipynb", nbformat.read(str(SOLUTION), as_version=4))
    assert grade_cli.main_args([str(tmp_path / "flat"), "--lab", "1", "--no-progress",
                                "--csv", str(tmp_path / "g.csv")]) == 0
    assert "zoe" in capsys.readouterr().out
    assert grade_cli.main_args([str(tmp_path / "nope"), "--lab", "1"]) == 2
    assert grade_cli.main_args([str(tmp_path / "flat"), "--lab", "42"]) == 2
    assert grade_cli.main_args([str(tmp_path / "flat"), "--lab", "1", "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and "no lab 42" in err and "--jobs" in err


def test_generated_class_mixes_solved_untouched_and_wrong(tmp_path):
    paths = grade_bench.generate_class(SOLUTION, EXERCISE, tmp_path, 12, seed=3)
    assert len(paths) == 12 and all(p.is_file() for p in paths)
    assert grade_bench.mutate("x = 12\n# 7\n", random.Random(0)) in ("x = 11\n# 7\n",
                                                                    "x = 13\n# 7\n")
