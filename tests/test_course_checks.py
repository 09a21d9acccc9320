"""kaiser_edu.course.checks: every outcome of a check, its display, and the report protocol.

The checks here are small synthetic ones (``double(x)``); lab 01's own checks are tested
against the lab's notebooks in test_course_exercises.py.
"""

from __future__ import annotations

import json
import linecache
import random

import pytest

from kaiser_edu.course import checks as ck
from kaiser_edu.course import metadata as md
from kaiser_edu.course.checks import Case, Check
from kaiser_edu.hw import address


def _cases(rng):
    return [Case((x,), 2 * x, note="zero" if x == 0 else "") for x in (0, 1, 7, rng.randrange(100))]


DOUBLE = Check(
    exercise="t-double",
    title="Exercise 0: double it",
    function="double",
    cases=_cases,
    points=3,
    hint=lambda case, got: f"Multiply {case.args[0]} by two",
    seed=5,
)


# --- the four outcomes -------------------------------------------------------------------


def test_passed_earns_all_points():
    result = DOUBLE(lambda x: x + x)
    assert result.status == ck.PASSED and result.passed and bool(result)
    assert (result.points, result.max_points) == (3, 3)
    assert (result.cases, result.passed_cases) == (4, 4)
    assert repr(result).startswith("[PASSED] Exercise 0: double it (t-double): 3/3 points")
    assert "All 4 cases correct" in result.feedback


def test_stub_is_not_attempted():
    def double(x):
        # YOUR CODE HERE
        raise NotImplementedError()

    result = DOUBLE(double)
    assert result.status == ck.NOT_ATTEMPTED and not result
    assert result.points == 0
    assert "double still raises NotImplementedError" in result.feedback
    assert "Replace `raise NotImplementedError()`" in result.feedback
    assert repr(result).startswith("[NOT ATTEMPTED YET]")


def test_partly_written_function_is_not_finished():
    def double(x):
        if x < 5:
            return 2 * x
        raise NotImplementedError("big numbers later")

    result = DOUBLE(double)
    assert result.status == ck.NOT_ATTEMPTED
    assert "2 of 4 cases passed" in result.feedback and "double(7)" in result.feedback


def test_wrong_answer_shows_case_expected_got_and_hint():
    result = DOUBLE(lambda x: x * x)  # right for 0 only
    assert result.status == ck.FAILED and result.points == 0
    assert result.feedback.splitlines()[:4] == [
        "double(1)",
        "  expected: 2",
        "  got:      1",
        "Hint: Multiply 1 by two",
    ]
    assert result.feedback.endswith("3 of 4 cases wrong; this is the first.")


def test_first_wrong_case_is_the_one_shown():
    result = DOUBLE(lambda x: 2 * x if x != 0 else 1)
    assert result.feedback.splitlines()[0] == "double(0)  (zero)"
    assert result.feedback.splitlines()[-1] == "1 of 4 cases wrong; this is the first."
    assert result.passed_cases == 3


def test_missing_return_gets_its_own_hint():
    def double(x):
        2 * x  # noqa: B018 - the mistake under test

    result = DOUBLE(double)
    assert "double returned None: did you forget `return`?" in result.feedback


def test_exception_reported_with_the_students_line():
    def double(x):
        table = {}
        return table[x]

    result = DOUBLE(double)
    assert result.status == ck.ERROR and result.points == 0
    text = result.feedback
    assert text.startswith("Your code raised KeyError: 0")
    assert "in double(), line" in text and "of test_course_checks.py:" in text
    assert "return table[x]" in text
    assert "while running double(0)  (zero)" in text
    assert "Traceback" not in text and "kaiser_edu/course" not in text


def test_exception_inside_the_package_points_at_the_students_call():
    def double(x):
        address.check_va(-1, 4)  # refused by the package: the student's line is the culprit
        return 2 * x

    result = DOUBLE(double)
    assert result.status == ck.ERROR
    assert "KaiserEduError: virtual address must be an integer" in result.feedback
    assert "address.check_va(-1, 4)" in result.feedback
    assert "hw/address.py" not in result.feedback


def test_exception_after_a_wrong_answer_counts_as_wrong():
    def double(x):
        if x == 0:
            return 5
        raise ValueError("boom")

    result = DOUBLE(double)
    assert result.status == ck.FAILED
    assert "4 of 4 cases wrong" in result.feedback


def test_system_exit_is_caught_keyboard_interrupt_is_not():
    def leaves(x):
        raise SystemExit(3)

    assert DOUBLE(leaves).status == ck.ERROR

    def interrupted(x):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        DOUBLE(interrupted)


def test_not_a_function():
    result = DOUBLE(14)
    assert result.status == ck.ERROR
    assert "needs your function double itself, got 14 (a int)" in result.feedback
    assert "without calling it: double, not double(...)" in result.feedback


def test_a_broken_check_blames_itself_not_the_student():
    def cases(rng):
        raise RuntimeError("no cases today")

    broken = Check("t-broken", "Broken", "f", cases)
    result = broken(lambda x: x)
    assert result.status == ck.ERROR
    assert "The check itself failed (RuntimeError: no cases today)" in result.feedback
    assert "not in your code" in result.feedback


def test_a_check_without_cases_never_passes():
    empty = Check("t-empty", "Empty", "f", lambda rng: [])
    result = empty(lambda x: x)
    assert result.status == ck.ERROR and "has no cases" in result.feedback


def test_a_comparison_that_raises_means_wrong():
    def same(expected, got):
        raise TypeError("incomparable")

    check = Check("t-same", "Same", "double", _cases, same=same)
    assert check(lambda x: 2 * x).status == ck.FAILED


def test_a_hint_that_crashes_falls_back():
    check = Check("t-hint", "Hint", "double", _cases, hint=lambda case, got: 1 / 0)
    result = check(lambda x: x)
    assert result.status == ck.FAILED
    assert "Hint: Compare your function with the explanation" in result.feedback


def test_incomparable_answer_is_wrong_not_a_crash():
    class Weird:
        def __eq__(self, other):
            raise TypeError("cannot compare")

        def __repr__(self):
            raise RuntimeError("cannot show")

    result = DOUBLE(lambda x: Weird())
    assert result.status == ck.FAILED
    assert "got:      <a Weird that cannot be shown>" in result.feedback


def test_same_seed_same_cases_and_result():
    assert DOUBLE(lambda x: x, seed=1) == DOUBLE(lambda x: x, seed=1)
    assert _cases(random.Random(1)) == _cases(random.Random(1))
    assert _cases(random.Random(1))[:3] == _cases(random.Random(2))[:3]  # fixed edge cases


@pytest.mark.parametrize("mode", ["autograde", "validate"])
def test_under_nbgrader_a_check_that_does_not_pass_raises(monkeypatch, mode):
    """nbgrader awards a check cell's points iff the cell raises nothing."""
    monkeypatch.setenv(ck.NBGRADER_ENV, mode)
    assert DOUBLE(lambda x: 2 * x).passed  # passing: no exception, full points
    with pytest.raises(ck.CheckFailed) as info:
        DOUBLE(lambda x: x)
    assert isinstance(info.value, AssertionError)
    assert str(info.value).startswith("[FAILED] Exercise 0: double it (t-double): 0/3")
    assert "Hint: Multiply" in str(info.value)

    def stub(x):
        raise NotImplementedError()

    with pytest.raises(ck.CheckFailed, match="NOT ATTEMPTED YET"):
        DOUBLE(stub)


# --- deterministic display (nbval compares text/plain and text/html) ------------------------


def test_addresses_are_removed_from_messages():
    def double(x):
        return object()

    result = DOUBLE(double)
    assert " at 0x" not in result.feedback
    assert "got:      <object object>" in result.feedback
    assert ck.clean("x" * 1000).endswith("...") and len(ck.clean("x" * 1000)) == 300


def test_same_result_every_run():
    first = DOUBLE(lambda x: x * 3)
    again = DOUBLE(lambda x: x * 3)
    assert repr(first) == repr(again) and first._repr_html_() == again._repr_html_()


@pytest.mark.parametrize(
    "fn, colour",
    [(lambda x: 2 * x, "#1b7a34"), (lambda x: x, "#b3261e"), (lambda x: 1 / 0, "#b3261e")],
)
def test_html_banner_colour(fn, colour):
    html = DOUBLE(fn)._repr_html_()
    assert f"border-left:6px solid {colour}" in html
    assert "Exercise 0: double it &middot; " in html


def test_html_is_escaped():
    result = DOUBLE(lambda x: "<b>")
    assert "&lt;b&gt;" in result._repr_html_() and "<b>" not in result._repr_html_()


def test_amber_banner_for_not_attempted():
    def stub(x):
        raise NotImplementedError()

    assert "#a35c00" in DOUBLE(stub)._repr_html_()


def test_where_names_a_notebook_cell_without_its_temporary_file():
    # ipykernel compiles each cell into /tmp/ipykernel_<pid>/<hash>.py: never shown.
    filename = "/tmp/ipykernel_4242/123456.py"
    source = "def double(x):\n    y = 0\n    return x / y\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)
    try:
        result = DOUBLE(namespace["double"])
    finally:
        linecache.cache.pop(filename, None)
    assert "in double(), line 3 of its cell:\n      return x / y" in result.feedback
    assert "ipykernel_4242" not in result.feedback


def test_check_repr_has_no_addresses():
    assert repr(DOUBLE) == "<Check t-double: Exercise 0: double it (3 points)>"


# --- the report protocol ------------------------------------------------------------------


def test_report_lines_appended_when_the_variable_is_set(tmp_path, monkeypatch):
    report = tmp_path / "report.jsonl"
    monkeypatch.setenv(ck.REPORT_ENV, str(report))
    DOUBLE(lambda x: 2 * x)
    DOUBLE(lambda x: x)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["passed", "failed"]
    assert lines[0] == {
        "version": 1, "exercise": "t-double", "title": "Exercise 0: double it",
        "status": "passed", "points": 3, "max_points": 3,
        "feedback": "All 4 cases correct: double agrees with kaiser_edu's model.",
        "cases": 4, "passed_cases": 4,
    }
    assert "Hint:" in lines[1]["feedback"]


def test_no_report_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    DOUBLE(lambda x: 2 * x)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_report_does_not_raise(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ck.REPORT_ENV, str(tmp_path / "no" / "such" / "dir" / "r.jsonl"))
    assert DOUBLE(lambda x: 2 * x).passed
    assert "could not write the check report" in capsys.readouterr().err


# --- nbgrader metadata helpers --------------------------------------------------------------


def test_metadata_kinds():
    answer = {"cell_type": "code", "metadata": {"nbgrader": md.answer_metadata("a")}}
    check = {"cell_type": "code", "metadata": {"nbgrader": md.check_metadata("c", 2)}}
    written = {"cell_type": "markdown",
               "metadata": {"nbgrader": md.written_answer_metadata("w", 3)}}
    plain = {"cell_type": "code", "metadata": {}}
    assert md.is_answer(answer) and not md.is_check(answer) and md.points(answer) == 0
    assert md.is_check(check) and not md.is_answer(check) and md.points(check) == 2
    assert check["metadata"]["nbgrader"]["locked"] is True
    assert md.is_written_answer(written) and md.points(written) == 3
    assert not (md.is_answer(plain) or md.is_check(plain)) and md.nbgrader(plain) == {}
    assert md.problems([answer, check, written, plain]) == []


def test_metadata_problems_as_nbgrader_would_refuse():
    cells = [
        {"cell_type": "code", "metadata": {"nbgrader": md.answer_metadata("x")}},
        {"cell_type": "code", "metadata": {"nbgrader": md.check_metadata("x", 1)}},
        {"cell_type": "code", "metadata": {"nbgrader": {**md.check_metadata("y", 1),
                                                        "points": None}}},
        {"cell_type": "markdown", "metadata": {"nbgrader": md.answer_metadata("z")}},
        {"cell_type": "code", "metadata": {"nbgrader": md.answer_metadata("bad id")}},
    ]
    found = md.problems(cells)
    assert "cell 2: grade_id 'x' is already used by cell 1" in found
    assert "cell 3: a graded cell needs 'points' (a number)" in found
    assert any(p.startswith("cell 4: a markdown answer must be both") for p in found)
    assert any(p.startswith("cell 5: grade_id 'bad id'") for p in found)
