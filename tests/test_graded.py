"""Graded mode (``kaiser-edu check --graded``): what a student could do to get the points
without the work (issue 11), each tried on a real notebook and each worth 0 points with a
note that names it; and the graded run on every lab's solution and untouched exercise.

Each attack was reproduced on ``kaiser-edu check`` (the in-notebook checks, which stay
forgeable by design: instant feedback while working). The graded run is what counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kaiser_edu.course import checks as ck
from kaiser_edu.course import graded
from kaiser_edu.course import metadata as md

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((REPO / "solutions").glob("lab[0-9][0-9]_*.ipynb"))


def _exercise(stem: str) -> Path:
    return next((REPO / "exercises").glob(f"{stem}_*.ipynb"))


def _submission(tmp_path: Path, lab: str, answers: dict[str, str] | None = None,
                append: list[str] = (), drop: tuple[str, ...] = (),
                edit: dict[str, str] | None = None) -> Path:
    """The untouched exercise of ``lab`` with answer cells replaced (by grade id), cells
    appended, check cells deleted or edited: what a student hands in."""
    nb = nbformat.read(str(_exercise(lab)), as_version=4)
    for cell in nb.cells:
        grade_id = md.nbgrader(cell).get("grade_id")
        if answers and grade_id in answers:
            cell.source = answers[grade_id]
        if edit and grade_id in edit:
            cell.source = edit[grade_id]
    nb.cells = [c for c in nb.cells if md.nbgrader(c).get("grade_id") not in drop]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in append]
    path = tmp_path / _exercise(lab).name
    nbformat.write(nb, str(path))
    return path


def _grade(path: Path, budget: float = 60):
    lab = graded.load_lab(graded.solution_for(path.name, REPO / "solutions"))
    return graded.grade(path, lab, budget=budget)


def _notes(report) -> str:
    return "\n".join(report.notes + [r.feedback for r in report.rows])


def _assert_zero(report, *named: str) -> None:
    assert report.score == 0, [(r.exercise, r.status, r.points) for r in report.rows]
    text = _notes(report)
    for word in named:
        assert word in text, f"{word!r} not named in:\n{text}"


# --- the labs as their authors declare them ---------------------------------------------------


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_graded_solution_earns_every_declared_point(solution):
    lab = graded.load_lab(solution)
    report = graded.grade(solution, lab)
    assert [r.status for r in report.rows] == [ck.PASSED] * len(lab.exercises), \
        "\n".join(r.feedback for r in report.rows)
    assert report.score == report.max_score == lab.max_score
    assert report.notes == [] and report.graded


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_graded_untouched_exercise_earns_nothing(solution):
    exercise = REPO / "exercises" / solution.name
    report = _grade(exercise)
    assert {r.status for r in report.rows} == {ck.NOT_ATTEMPTED}
    assert report.score == 0 and report.max_score == graded.load_lab(solution).max_score


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_points_are_declared_once_and_agree_with_the_checks(solution):
    """The points of a graded run are the solution's nbgrader points; each lab's Check
    objects say the same (one declaration, checked)."""
    lab = graded.load_lab(solution)
    for exercise in lab.exercises:
        assert exercise.check.exercise == exercise.grade_id
        assert exercise.check.points == exercise.points


# --- 1. replacing the check machinery ---------------------------------------------------------


def test_attack_reassign_check_call(tmp_path):
    forged = ("import kaiser_edu.course.checks as c\n"
              "c.Check.__call__ = lambda self, fn, **kw: c.CheckResult(\n"
              "    self.exercise, self.title, 'passed', self.points, self.points, 'ok')\n"
              "def split_address(va, levels=4):\n    raise NotImplementedError()\n")
    report = _grade(_submission(tmp_path, "lab01", {"lab01-split-answer": forged}))
    _assert_zero(report, "may not import kaiser_edu.course", "imports kaiser_edu")


def test_attack_rebind_check_names(tmp_path):
    forged = ("def check_split(fn):\n    return 'PASSED'\n"
              "check_canonical = check_classify = check_canonicalize = check_split\n"
              "def split_address(va, levels=4):\n    raise NotImplementedError()\n")
    report = _grade(_submission(tmp_path, "lab01", {"lab01-split-answer": forged}))
    _assert_zero(report, "define check_canonical, check_canonicalize, check_classify, "
                         "check_split")


def test_attack_rerun_checks_on_the_engine_at_the_end(tmp_path):
    tail = ("from kaiser_edu.hw import address\n"
            "check_split(address.split)\ncheck_canonical(address.is_canonical)\n")
    report = _grade(_submission(tmp_path, "lab01", append=[tail]))
    _assert_zero(report, "was added to the lab", "imports kaiser_edu", "calls check_split")


# --- 2. forging the report ----------------------------------------------------------------------


FORGE = """
import json, os
line = json.dumps({"exercise": "lab01-split", "status": "passed", "points": 1000,
                   "max_points": 1000, "title": "x", "feedback": ""})
def _forge(*args):
    with open(os.environ["KAISER_EDU_CHECK_REPORT"], "a") as f:
        f.write(line + "\\n")
get_ipython().events.register("post_run_cell", _forge)
def split_address(va, levels=4):
    raise NotImplementedError()
"""


def test_attack_forge_report_lines_graded(tmp_path):
    report = _grade(_submission(tmp_path, "lab01", {"lab01-split-answer": FORGE}))
    _assert_zero(report, "uses get_ipython()", "KAISER_EDU_CHECK_REPORT")
    assert report.max_score == 8


def test_forged_lines_are_capped_in_check_mode_too(tmp_path):
    """``kaiser-edu check`` (not graded) no longer sums forged points: 1000-point lines
    became 2000/10; now a line is worth at most what its check cell declares."""
    from kaiser_edu.course.check_notebook import run_checks

    report = run_checks(_submission(tmp_path, "lab01", {"lab01-split-answer": FORGE}))
    assert report.score <= report.max_score == 8
    assert report.score == 0
    assert any("claims 1000 points" in n for n in report.notes), report.notes


# --- 3. an answer equal to everything -----------------------------------------------------------


ALWAYS_EQUAL = """
class Yes:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__
def split_address(va, levels=4):
    return Yes()
"""
OTHERS = {f"lab01-{name}-answer": f"def {function}(va, levels=4):\n    return Yes()\n"
          for name, function in [("canonical", "is_canonical"), ("classify", "classify"),
                                 ("canonicalize", "canonicalize")]}


def test_attack_always_equal_object(tmp_path):
    answers = {"lab01-split-answer": ALWAYS_EQUAL, **OTHERS}
    report = _grade(_submission(tmp_path, "lab01", answers))
    _assert_zero(report, "not plain values (Yes)", "not a plain value")
    assert {r.status for r in report.rows} == {ck.FAILED}


def test_always_equal_object_fools_the_in_notebook_check():
    """Why graded mode exists: in the student's own process the same object passes."""
    from kaiser_edu.course.labs import lab01

    namespace: dict = {}
    exec(ALWAYS_EQUAL, namespace)
    assert lab01.check_split(namespace["split_address"]).passed


# --- 4. calling the package's own implementation ------------------------------------------------


@pytest.mark.parametrize(("lab", "answer_id", "source", "named"), [
    ("lab01", "lab01-split-answer",
     "from kaiser_edu.hw import address\nsplit_address = address.split\n",
     "may not import kaiser_edu.hw"),
    ("lab01", "lab01-split-answer",
     "def split_address(va, levels=4):\n    from kaiser_edu.hw.address import split\n"
     "    return split(va, levels)\n", "may not import kaiser_edu.hw.address"),
    ("lab03", "lab03-small-tlb-answer",
     "from kaiser_edu.course.labs.lab03 import ModelTLB as SmallTLB\n",
     "may not import kaiser_edu.course.labs.lab03"),
    ("lab06", "lab06-clone-pgtable-answer",
     "from kaiser_edu.course.labs.lab06 import reference_clone_pgtable\n"
     "def pti_clone_pgtable(pti, start, end, level):\n"
     "    reference_clone_pgtable(pti._kernel, start, end, level)\n",
     "may not import kaiser_edu.course.labs.lab06"),
    ("lab07", "lab07-build-cr3-answer",
     "from kaiser_edu.kernel.tlbstate import CpuTlbState\n"
     "def build_cr3(pgd, asid, pcid):\n    return CpuTlbState(pcid=pcid).build_cr3(pgd, asid)\n",
     "may not import kaiser_edu.kernel.tlbstate"),
])
def test_attack_use_the_engine(tmp_path, lab, answer_id, source, named):
    report = _grade(_submission(tmp_path, lab, {answer_id: source}))
    _assert_zero(report, named, "imports kaiser_edu")


def test_attack_reach_the_machine_through_read_qword(tmp_path):
    """lab02's read_qword had ``.mem``, the simulated memory, and through it the engine."""
    source = ("def walk_entries(read_qword, cr3, va):\n"
              "    mem = read_qword.mem\n    return mem.walk(cr3, va)\n")
    report = _grade(_submission(tmp_path, "lab02", {"lab02-walk-answer": source}))
    _assert_zero(report, "(read_qword) has no attribute 'mem' in a graded run")


def test_attack_reach_the_kernel_through_pti(tmp_path):
    source = ("def pti_user_pagetable_walk(pti, addr, level):\n    raise NotImplementedError()\n"
              "def pti_clone_pgtable(pti, start, end, level):\n"
              "    kernel = pti._kernel\n")
    report = _grade(_submission(tmp_path, "lab06", {"lab06-clone-pgtable-answer": source}))
    _assert_zero(report, "has no attribute '_kernel' in a graded run")


# --- 5. editing or deleting a check cell --------------------------------------------------------


def test_attack_edit_a_check_cell(tmp_path):
    edited = "check_split(__import__('kaiser_edu.hw.address').hw.address.split)"
    report = _grade(_submission(tmp_path, "lab01", edit={"lab01-split": edited}))
    _assert_zero(report, "check cell lab01-split (cell 7) was edited")


def test_attack_delete_a_check_cell(tmp_path):
    report = _grade(_submission(tmp_path, "lab01", drop=("lab01-split",)))
    row = next(r for r in report.rows if r.exercise == "lab01-split")
    assert (row.status, row.points, row.max_points) == (ck.MISSING, 0, 2)
    assert report.max_score == 8 and "is missing from the notebook" in row.feedback
    assert not report.ok


def test_deleted_check_cell_is_missing_in_check_mode_too(tmp_path):
    """The report said "ok" with 6/6 on a lab worth 8; now the exercise is a missing row."""
    from kaiser_edu.course.check_notebook import run_checks

    solved = nbformat.read(str(REPO / "solutions" / _exercise("lab01").name), as_version=4)
    solved.cells = [c for c in solved.cells if md.nbgrader(c).get("grade_id") != "lab01-split"]
    path = tmp_path / _exercise("lab01").name
    nbformat.write(solved, str(path))
    report = run_checks(path)
    assert (report.score, report.max_score, report.ok) == (6, 8, False)
    assert [r.status for r in report.rows if r.exercise == "lab01-split"] == [ck.MISSING]


# --- 6. crashing the checker ------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "note"), [
    ("import os\nos.unlink(os.environ['KAISER_EDU_CHECK_REPORT'])",
     "could not be read after cell"),
    ("import os\nopen(os.environ['KAISER_EDU_CHECK_REPORT'], 'a').write('[1, 2]\\n')",
     "is not a check result"),
])
def test_attack_crash_the_checker(tmp_path, cell, note):
    """Both crashed ``kaiser-edu check`` with a traceback (exit 1); now they are notes."""
    path = _submission(tmp_path, "lab01", append=[cell])
    run = subprocess.run([sys.executable, "-m", "kaiser_edu", "check", "--json", str(path)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    report = json.loads(run.stdout)
    assert any(note in n for n in report["notes"]), report["notes"]
    assert report["max_score"] == 8


# --- a checker that never crashes on student input -----------------------------------------------


def test_endless_loop_is_stopped_and_names_its_input(tmp_path):
    source = "def split_address(va, levels=4):\n    while True:\n        pass\n"
    report = _grade(_submission(tmp_path, "lab01", {"lab01-split-answer": source}), budget=2)
    row = report.rows[0]
    assert row.status == ck.ERROR and row.points == 0
    assert "stopped while running split_address(0x0, levels=4)" in row.feedback
    assert [r.status for r in report.rows[1:]] == [ck.NOT_ATTEMPTED] * 3  # the rest ran


def test_a_dead_sandbox_names_the_exercise_and_the_call(tmp_path):
    source = "def is_canonical(va, levels=4):\n    import os\n    os._exit(3)\n"
    report = _grade(_submission(tmp_path, "lab01", {"lab01-canonical-answer": source}))
    row = report.rows[1]
    assert row.status == ck.ERROR
    assert "(exit status 3) while running is_canonical(0x0, levels=4), in exercise " \
           "lab01-canonical" in row.feedback
    assert report.rows[2].status == ck.NOT_ATTEMPTED


def test_a_cell_that_kills_its_process_is_named(tmp_path):
    source = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    report = _grade(_submission(tmp_path, "lab01", {"lab01-split-answer": source}))
    assert all("killed by signal SIGKILL" in r.feedback and "running your answer cells"
               in r.feedback for r in report.rows)


def test_printing_does_not_disturb_the_grader(tmp_path):
    source = ("import sys, os\nprint('{\"value\": 1}')\nos.write(1, b'garbage\\n')\n"
              "sys.__stdout__.write('more')\n"
              "def split_address(va, levels=4):\n    print('hello')\n"
              "    return {}\n")
    report = _grade(_submission(tmp_path, "lab01", {"lab01-split-answer": source}))
    assert report.rows[0].status == ck.FAILED


def test_graded_cli_json_has_the_check_shape(tmp_path):
    path = _submission(tmp_path, "lab01")
    run = subprocess.run([sys.executable, "-m", "kaiser_edu", "check", "--graded", "--json",
                          "lab01"], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert report["notebook"] == str(path.relative_to(tmp_path)) or \
        report["notebook"].endswith(path.name)
    assert {"exercises", "cell_errors", "written_answers", "score", "max_score", "ok",
            "notes", "graded"} <= set(report)
    assert report["graded"] is True and report["max_score"] == 8


def test_graded_cli_could_not_check_exits_2(tmp_path):
    bad = tmp_path / "lab99_nothing.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), str(bad))
    run = subprocess.run([sys.executable, "-m", "kaiser_edu", "check", "--graded", str(bad)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "no lab 99" in run.stderr, run.stderr


def test_a_memory_bomb_is_a_memory_error_not_a_dead_machine(tmp_path):
    source = "def split_address(va, levels=4):\n    return bytearray(3 << 30)\n"
    report = _grade(_submission(tmp_path, "lab01", {"lab01-split-answer": source}))
    row = report.rows[0]
    assert row.status == ck.ERROR and "MemoryError" in row.feedback


def test_a_forged_reply_on_the_grader_channel_costs_only_that_exercise(tmp_path):
    source = ("import os\n"
              "def split_address(va, levels=4):\n"
              "    for fd in range(3, 10):\n"
              "        try:\n"
              "            os.write(fd, b'{\"raise\": 5}\\n')\n"
              "        except OSError:\n"
              "            pass\n"
              "    return {}\n")
    report = _grade(_submission(tmp_path, "lab01", {"lab01-split-answer": source}))
    assert report.rows[0].points == 0 and report.rows[0].status in (ck.ERROR, ck.FAILED)
    assert [r.status for r in report.rows[1:]] == [ck.NOT_ATTEMPTED] * 3


def test_a_cell_that_loops_at_top_level_is_stopped(tmp_path):
    looping = {"lab01-split-answer": "while True:\n    pass\n"}
    report = _grade(_submission(tmp_path, "lab01", looping), budget=2)
    assert all("stopped while running your answer cells" in r.feedback for r in report.rows)
    assert report.score == 0


def test_a_syntax_error_is_a_note_with_its_line(tmp_path):
    source = "def split_address(va, levels=4):\n    return {\n"
    report = _grade(_submission(tmp_path, "lab01", {"lab01-split-answer": source}))
    assert any(n.startswith("answer cell lab01-split-answer raised SyntaxError, line ")
               for n in report.notes), report.notes
    assert report.rows[0].status == ck.ERROR and "does not define split_address" in \
        report.rows[0].feedback


def test_answers_see_no_report_file_and_an_empty_working_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(ck.REPORT_ENV, str(tmp_path / "report.jsonl"))
    source = ("import os, sys\n"
              "def split_address(va, levels=4):\n"
              "    return {'env': sorted(os.environ), 'cwd': os.listdir('.'),\n"
              "            'path': [p for p in sys.path if 'course' in p]}\n")
    report = _grade(_submission(tmp_path, "lab01", {"lab01-split-answer": source}))
    feedback = report.rows[0].feedback
    assert "'cwd': []" in feedback and "'path': []" in feedback, feedback
    assert ck.REPORT_ENV not in feedback


def test_the_submission_time_limit_is_shared_by_its_exercises(tmp_path):
    looping = {"lab01-split-answer": "def split_address(va, levels=4):\n    while True:\n"
                                     "        pass\n"}
    path = _submission(tmp_path, "lab01", looping)
    report = graded.grade(path, graded.load_lab(graded.solution_for(path.name, REPO /
                                                                    "solutions")),
                          budget=60, limit=1.5)
    assert "stopped while running split_address(0x0, levels=4)" in report.rows[0].feedback
    assert all("the submission's time limit (1.5 s) was used up" in r.feedback
               for r in report.rows[1:])


def test_notes_of_the_answer_cells_survive_a_deleted_first_check_cell(tmp_path):
    path = _submission(tmp_path, "lab01", {"lab01-canonical-answer": "1 / 0\n"},
                       drop=("lab01-split",))
    report = _grade(path)
    assert report.rows[0].status == ck.MISSING
    assert any("lab01-canonical-answer raised ZeroDivisionError" in n for n in report.notes)
