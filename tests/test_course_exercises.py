"""Exercises generated from solutions: marker handling, nbgrader metadata, the sync proof,
the build command, and lab 01's checks against the lab's own notebooks.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from kaiser_edu.cli import main
from kaiser_edu.course import checks as ck
from kaiser_edu.course import exercises as ex
from kaiser_edu.course import metadata as md
from kaiser_edu.course.labs import lab01

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS, EXERCISES = REPO / "solutions", REPO / "exercises"
LAB01 = "lab01_addresses.ipynb"


def notebook(*cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for number, cell in enumerate(nb.cells):
        cell.id = f"c{number}"  # fixed ids: nbformat would draw random ones
    return nb


ANSWER = '''def f(x):
    """Twice x."""
    ### BEGIN SOLUTION
    y = 2 * x
    return y
    ### END SOLUTION'''


# --- one cell ------------------------------------------------------------------------------


def test_code_region_replaced_at_its_indentation():
    source, regions = ex.strip_solutions(ANSWER, "code")
    assert regions == 1
    assert source == ('def f(x):\n    """Twice x."""\n    # YOUR CODE HERE\n'
                      "    raise NotImplementedError()")


def test_several_regions_and_deeper_indentation():
    code = ("class A:\n    def g(self):\n        ### BEGIN SOLUTION\n        return 1\n"
            "        ### END SOLUTION\n\nx = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION\n")
    source, regions = ex.strip_solutions(code, "code")
    assert regions == 2
    assert source.split("\n") == [
        "class A:", "    def g(self):", "        # YOUR CODE HERE",
        "        raise NotImplementedError()", "", "x = 1", "# YOUR CODE HERE",
        "raise NotImplementedError()", "",
    ]


def test_markdown_region_becomes_your_answer_here():
    text = "Question?\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION\n\nMore."
    assert ex.strip_solutions(text, "markdown") == ("Question?\n\nYOUR ANSWER HERE\n\nMore.", 1)


@pytest.mark.parametrize(
    "source, message",
    [
        ("### BEGIN SOLUTION\nx = 1", "line 1: '### BEGIN SOLUTION' is never closed"),
        ("x = 1\n### END SOLUTION", "line 2: '### END SOLUTION' without a '### BEGIN SOLUTION'"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION",
         "line 2: '### BEGIN SOLUTION' inside the region opened on line 1"),
        ("## BEGIN SOLUTION\nx = 1\n### END SOLUTION",
         "line 1: '## BEGIN SOLUTION' looks like a solution marker"),
        ("### begin solution\nx = 1", "looks like a solution marker"),
    ],
    ids=["unclosed", "end-without-begin", "nested", "two-hashes", "lower-case"],
)
def test_unbalanced_or_misspelt_markers_are_refused(source, message):
    nb = notebook(new_markdown_cell("intro"), new_code_cell(source))
    with pytest.raises(ex.ExerciseBuildError) as info:
        ex.build_exercise(nb, name="lab99_demo.ipynb")
    assert str(info.value).startswith("lab99_demo.ipynb, cell 2 (")
    assert message in str(info.value)


# --- one notebook ------------------------------------------------------------------------


def solution_notebook() -> nbformat.NotebookNode:
    check = new_code_cell("check(f)", execution_count=3,
                          outputs=[new_output("execute_result", {"text/plain": "[PASSED]"},
                                              execution_count=3)])
    check.metadata["nbgrader"] = md.check_metadata("lab99-f", 2)
    written = new_markdown_cell("### BEGIN SOLUTION\nBecause.\n### END SOLUTION")
    return notebook(
        new_markdown_cell("# Lab 99"),
        new_code_cell("print(1)", execution_count=1,
                      outputs=[new_output("stream", name="stdout", text="1\n")]),
        new_code_cell(ANSWER, execution_count=2),
        check,
        written,
    )


def test_build_exercise_replaces_answers_and_keeps_the_rest():
    solution = solution_notebook()
    before = copy.deepcopy(solution)
    nb = ex.build_exercise(solution, name="lab99_demo.ipynb")
    assert solution == before  # the solution is not touched
    assert [c.source for c in nb.cells] == [
        "# Lab 99", "print(1)",
        'def f(x):\n    """Twice x."""\n    # YOUR CODE HERE\n    raise NotImplementedError()',
        "check(f)", "YOUR ANSWER HERE",
    ]
    assert [c.id for c in nb.cells] == [c.id for c in solution.cells]


def test_build_exercise_clears_every_output():
    nb = ex.build_exercise(solution_notebook(), name="lab99_demo.ipynb")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def _authored(meta: dict) -> dict:
    """nbgrader metadata without what the release adds (checksum, cell type)."""
    return {k: v for k, v in meta.items() if k not in ("checksum", "cell_type")}


def test_answer_cells_get_nbgrader_metadata_with_derived_ids():
    nb = ex.build_exercise(solution_notebook(), name="lab99_demo.ipynb")
    assert _authored(nb.cells[2].metadata["nbgrader"]) == {
        "grade": False, "grade_id": "lab99_demo-cell03", "locked": False,
        "schema_version": 3, "solution": True,
    }
    assert _authored(nb.cells[4].metadata["nbgrader"]) == \
        md.written_answer_metadata("lab99_demo-cell05")
    assert _authored(nb.cells[3].metadata["nbgrader"]) == md.check_metadata("lab99-f", 2)
    assert "nbgrader" not in nb.cells[1].metadata  # a plain cell stays plain


def test_released_cells_carry_checksums_and_locks_as_nbgrader_release_does():
    nb = ex.build_exercise(solution_notebook(), name="lab99_demo.ipynb")
    answer, check, written = nb.cells[2], nb.cells[3], nb.cells[4]
    for cell in (answer, check, written):
        meta = cell.metadata["nbgrader"]
        assert meta["checksum"] == md.checksum(cell)
        assert meta["cell_type"] == cell.cell_type
    assert (check.metadata["editable"], check.metadata["deletable"]) == (False, False)
    assert answer.metadata["deletable"] is False and "editable" not in answer.metadata
    assert written.metadata["deletable"] is False
    assert "deletable" not in nb.cells[1].metadata
    check.source += "  # edited"
    assert md.checksum(check) != check.metadata["nbgrader"]["checksum"]


def test_existing_answer_metadata_is_kept():
    solution = solution_notebook()
    solution.cells[2].metadata["nbgrader"] = md.answer_metadata("my-answer")
    nb = ex.build_exercise(solution, name="x.ipynb")
    assert nb.cells[2].metadata["nbgrader"]["grade_id"] == "my-answer"


def test_solution_cell_without_markers_is_replaced_whole():
    cell = new_code_cell("secret = 42")
    cell.metadata["nbgrader"] = md.answer_metadata("whole")
    nb = ex.build_exercise(notebook(cell), name="x.ipynb")
    assert nb.cells[0].source == "# YOUR CODE HERE\nraise NotImplementedError()"


def test_regions_in_a_cell_marked_not_a_solution_are_refused():
    cell = new_code_cell(ANSWER)
    cell.metadata["nbgrader"] = md.check_metadata("oops", 1)
    with pytest.raises(ex.ExerciseBuildError, match=r"x.ipynb, cell 1 .*not a solution cell"):
        ex.build_exercise(notebook(cell), name="x.ipynb")


def test_duplicate_grade_ids_are_refused():
    a, b = new_code_cell("check(f)"), new_code_cell("check(g)")
    a.metadata["nbgrader"] = md.check_metadata("same", 1)
    b.metadata["nbgrader"] = md.check_metadata("same", 1)
    with pytest.raises(ex.ExerciseBuildError, match="cell 2: grade_id 'same' is already used"):
        ex.build_exercise(notebook(a, b), name="x.ipynb")


# --- sync ----------------------------------------------------------------------------------


def test_compare_reports_source_and_metadata_changes():
    generated = ex.build_exercise(solution_notebook(), name="x.ipynb")
    assert ex.compare_exercise(generated, copy.deepcopy(generated)) == ""
    committed = copy.deepcopy(generated)
    committed.cells[1].source = "print(2)"
    committed.cells[3].metadata["nbgrader"]["points"] = 5
    committed.cells[0].outputs = []  # markdown: ignored; outputs are never compared
    diff = ex.compare_exercise(generated, committed, name="x.ipynb")
    assert "--- committed x.ipynb" in diff and "+++ generated x.ipynb" in diff
    assert "-print(2)" in diff and "+print(1)" in diff
    assert '"points": 5' in diff and '"points": 2' in diff


def test_check_sync_finds_missing_stale_orphan_and_unexecuted(tmp_path):
    sol, exe = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    ex.write_notebook(solution_notebook(), sol / "a.ipynb")
    ex.write_notebook(solution_notebook(), sol / "b.ipynb")
    ex.build_all(sol, exe, execute=False)
    stale = ex.read_notebook(exe / "b.ipynb")
    stale.cells[0].source = "# Lab 98"
    ex.write_notebook(stale, exe / "b.ipynb")
    ex.write_notebook(solution_notebook(), exe / "orphan.ipynb")
    (sol / "c.ipynb").write_text((sol / "a.ipynb").read_text())
    problems = ex.check_sync(sol, exe)
    text = "\n".join(problems)
    assert f"{exe / 'a.ipynb'} is not executed" in text  # built with execute=False
    assert f"{exe / 'b.ipynb'} differs from what {sol / 'b.ipynb'} generates" in text
    assert "-# Lab 98" in text and "+# Lab 99" in text
    assert f"{exe / 'c.ipynb'} is missing" in text
    assert f"{exe / 'orphan.ipynb'} has no solution notebook" in text


def test_committed_exercises_are_generated_from_the_solutions(tmp_path):
    """Regenerate every exercise (without executing) and compare sources and metadata."""
    written = ex.build_all(SOLUTIONS, tmp_path, execute=False)
    assert [p.name for p in written] == [p.name for p in ex.solution_notebooks(SOLUTIONS)]
    assert LAB01 in [p.name for p in written]
    for path in written:
        diff = ex.compare_exercise(ex.read_notebook(path),
                                   ex.read_notebook(EXERCISES / path.name), name=path.name)
        assert diff == "", f"exercises/{path.name} is out of date; run " \
                           f"`kaiser-edu build-exercises`:\n{diff}"
    assert ex.check_sync(SOLUTIONS, EXERCISES) == []


@pytest.mark.parametrize("folder", [SOLUTIONS, EXERCISES], ids=["solutions", "exercises"])
def test_committed_lab_notebooks_are_executed_and_clean(folder):
    for path in sorted(folder.glob("*.ipynb")):
        nb = ex.read_notebook(path)
        assert ex.unexecuted_cells(nb) == [], f"{path} has cells that were never run"
        counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
        assert counts == list(range(1, len(counts) + 1)), f"{path}: not run top to bottom"
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                assert out.output_type != "error", f"{path}: a cell raised"
                assert out.get("name") != "stderr", f"{path}: stderr output"
        assert md.problems(nb.cells) == []


def test_committed_check_outputs_say_passed_and_not_attempted():
    def check_outputs(path):
        nb = ex.read_notebook(path)
        return [out.data["text/plain"] for c in nb.cells if md.is_check(c) for out in c.outputs]

    solved = check_outputs(SOLUTIONS / LAB01)
    fresh = check_outputs(EXERCISES / LAB01)
    assert len(solved) == len(fresh) == len(lab01.CHECKS)
    assert all(text.startswith("[PASSED]") for text in solved)
    assert all(text.startswith("[NOT ATTEMPTED YET]") for text in fresh)


# --- executing generated exercises (starts kernels: a few seconds) -------------------------


def test_build_all_executes_in_the_exercises_dir_without_reporting(tmp_path, monkeypatch):
    monkeypatch.setenv(ck.REPORT_ENV, str(tmp_path / "must-not-appear.jsonl"))
    monkeypatch.setenv(ck.NBGRADER_ENV, "autograde")  # the stub's check must not raise
    sol, exe = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    check = new_code_cell(
        "from kaiser_edu.course.checks import Case, Check\n"
        "Check('t-f', 'Exercise: f', 'f', lambda rng: [Case((1,), 2)])(f)"
    )
    check.metadata["nbgrader"] = md.check_metadata("t-f", 1)
    ex.write_notebook(notebook(
        new_code_cell("import os\nprint(os.path.basename(os.getcwd()), "
                      "os.environ.get('KAISER_EDU_CHECK_REPORT'))"),
        new_code_cell(ANSWER),
        check,
    ), sol / "lab99.ipynb")
    [path] = ex.build_all(sol, exe)
    nb = ex.read_notebook(path)
    assert [c.execution_count for c in nb.cells] == [1, 2, 3]
    assert nb.cells[0].outputs[0].text == "exercises None\n"
    assert nb.cells[2].outputs[0].data["text/plain"].startswith("[NOT ATTEMPTED YET]")
    assert "execution" not in nb.cells[0].metadata  # no timings: regenerating is stable
    assert not (tmp_path / "must-not-appear.jsonl").exists()
    assert ex.check_sync(sol, exe) == []


def test_an_exercise_that_does_not_run_is_refused_and_not_written(tmp_path):
    sol, exe = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    top_level = "### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION"  # raises when stubbed
    ex.write_notebook(notebook(new_code_cell(top_level)), sol / "lab99.ipynb")
    with pytest.raises(ex.ExerciseBuildError, match="lab99.ipynb: the generated exercise "
                                                    "does not run cleanly: NotImplementedError"):
        ex.build_all(sol, exe)
    assert not (exe / "lab99.ipynb").exists()


# --- kaiser-edu build-exercises ------------------------------------------------------------


def test_cli_check_in_sync(capsys):
    assert main(["build-exercises", "--check", "--solutions", str(SOLUTIONS),
                 "--exercises", str(EXERCISES)]) == 0
    assert "is in sync" in capsys.readouterr().out


def test_cli_writes_then_check_finds_a_stale_exercise(tmp_path, capsys):
    sol, exe = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    ex.write_notebook(solution_notebook(), sol / "lab99.ipynb")
    args = ["build-exercises", "--solutions", str(sol), "--exercises", str(exe)]
    assert main([*args, "--no-execute"]) == 0
    assert "(not executed)" in capsys.readouterr().out
    edited = ex.read_notebook(sol / "lab99.ipynb")
    edited.cells[1].source = "print('edited')"
    ex.write_notebook(edited, sol / "lab99.ipynb")
    assert main([*args, "--check"]) == 1
    out = capsys.readouterr().out
    assert "+print('edited')" in out and "run `kaiser-edu build-exercises`" in out


@pytest.mark.parametrize("broken", [False, True], ids=["no-solutions-dir", "unbalanced"])
def test_cli_bad_input_exits_2(tmp_path, capsys, broken):
    sol = tmp_path / "solutions"
    if broken:
        sol.mkdir()
        ex.write_notebook(notebook(new_code_cell("### BEGIN SOLUTION\nx = 1")),
                          sol / "lab99.ipynb")
    code = main(["build-exercises", "--solutions", str(sol), "--exercises",
                 str(tmp_path / "exercises"), "--no-execute"])
    err = capsys.readouterr().err
    assert code == 2
    assert ("lab99.ipynb, cell 1" in err) if broken else ("no solutions directory" in err)
    assert "Traceback" not in err


# --- lab 01's checks against the lab's own notebooks ----------------------------------------


def answers_of(path: Path) -> dict:
    """The functions the answer cells define."""
    return ex.answer_namespace(path, setup=False)


STUDENT_FUNCTION = {c.exercise: c.function for c in lab01.CHECKS}


@pytest.mark.parametrize("check", lab01.CHECKS, ids=lambda c: c.exercise)
def test_lab01_check_passes_on_the_solution(check):
    result = check(answers_of(SOLUTIONS / LAB01)[check.function])
    assert result.status == ck.PASSED, result.feedback
    assert result.cases > 50


@pytest.mark.parametrize("check", lab01.CHECKS, ids=lambda c: c.exercise)
def test_lab01_check_does_not_pass_on_the_untouched_exercise(check):
    result = check(answers_of(EXERCISES / LAB01)[check.function])
    assert result.status == ck.NOT_ATTEMPTED and result.points == 0


def test_lab01_check_cells_match_their_checks():
    by_name = {f"check_{c.exercise.removeprefix('lab01-')}": c for c in lab01.CHECKS}
    cells = [c for c in ex.read_notebook(SOLUTIONS / LAB01).cells if md.is_check(c)]
    assert len(cells) == len(lab01.CHECKS)
    for cell in cells:
        check = by_name[cell.source.split("(", 1)[0]]
        assert md.nbgrader(cell)["grade_id"] == check.exercise
        assert md.points(cell) == check.points
        assert cell.source == f"check_{check.exercise.removeprefix('lab01-')}({check.function})"


# Wrong and crashing answers, each with the feedback it must get.

MASK, U64 = 0x1FF, (1 << 64) - 1


def split_no_mask(va, levels=4):
    names = ["PML5", "PML4", "PDPT", "PD", "PT"][5 - levels:]
    fields = {n: va >> (12 + 9 * (levels - 1 - i)) for i, n in enumerate(names)}
    return {**fields, "offset": va & 0xFFF}


def split_4_level_only(va, levels=4):
    return {"PML4": va >> 39 & MASK, "PDPT": va >> 30 & MASK, "PD": va >> 21 & MASK,
            "PT": va >> 12 & MASK, "offset": va & 0xFFF}


def split_bad_pd(va, levels=4):
    return {**lab01.hw.split(va, levels), "PD": va >> 20 & MASK}


def split_bad_offset(va, levels=4):
    return {**lab01.hw.split(va, levels), "offset": va & MASK}


def split_tuple(va, levels=4):
    return tuple(lab01.hw.split(va, levels).values())


def split_crash(va, levels=4):
    fields = {}
    return fields["PML4"]


def canonical_lower_only(va, levels=4):
    return va >> (12 + 9 * levels - 1) == 0


def canonical_48_bits(va, levels=4):
    return va >> 47 in (0, 0x1FFFF)


def canonical_text(va, levels=4):
    return "yes" if lab01.hw.is_canonical(va, levels) else "no"


def classify_capitalised(va, levels=4):
    return lab01.classify(va, levels).capitalize()


def classify_no_hole(va, levels=4):
    return "kernel" if va >> (12 + 9 * levels - 1) & 1 else "user"


def classify_swapped(va, levels=4):
    return {"user": "kernel", "kernel": "user"}.get(lab01.classify(va, levels), "non-canonical")


def canonicalize_negative(va, levels=4):
    n = 12 + 9 * levels
    va &= (1 << n) - 1
    return va - (1 << n) if va >> (n - 1) else va


def canonicalize_too_wide(va, levels=4):
    n = 12 + 9 * levels
    va &= (1 << n) - 1
    return va | (U64 << n) if va >> (n - 1) else va


def canonicalize_keeps_high_bits(va, levels=4):
    n = 12 + 9 * levels
    return va | (U64 ^ ((1 << n) - 1)) if va >> (n - 1) & 1 else va


def canonicalize_crash(va, levels=4):
    return va + None


WRONG = [
    (lab01.check_split, split_no_mask, ck.FAILED,
     ["An index is 9 bits (0 to 511), PDPT was 130048: mask it",
      "Bits 38:30 index the page-directory-pointer table (PDPT): shift right by 30 and mask "
      "with 0x1ff"]),
    (lab01.check_split, split_4_level_only, ck.FAILED,
     ["levels=5", "With 5-level paging the keys are 'PML5', 'PML4'", "bits 56:48"]),
    (lab01.check_split, split_bad_pd, ck.FAILED,
     ["Bits 29:21 index the page directory (PD): shift right by 21"]),
    (lab01.check_split, split_bad_offset, ck.FAILED,
     ["The page offset is the low 12 bits (11:0): va & 0xfff"]),
    (lab01.check_split, split_tuple, ck.FAILED, ["Return a dict with the keys", "not a tuple"]),
    (lab01.check_split, split_crash, ck.ERROR,
     ["Your code raised KeyError: 'PML4'", "in split_crash(), line", "return fields[\"PML4\"]",
      "while running split_address(0x0, levels=4)  (address 0)"]),
    (lab01.check_canonical, canonical_lower_only, ck.FAILED,
     ["is_canonical(0xffff800000000000, levels=4)  (bottom of the 4-level kernel half)",
      "expected: True", "got:      False", "has them all 1"]),
    (lab01.check_canonical, canonical_48_bits, ck.FAILED,
     ["is_canonical(0x800000000000, levels=5)", "the sign bit is bit 56"]),
    (lab01.check_canonical, canonical_text, ck.FAILED, ["Return True or False"]),
    (lab01.check_classify, classify_capitalised, ck.FAILED,
     ["got:      'User'", "'user', 'kernel' or 'non-canonical' (exactly these)"]),
    (lab01.check_classify, classify_no_hole, ck.FAILED,
     ["classify(0x800000000000, levels=4)", "expected: 'non-canonical'",
      "in the hole between the halves"]),
    (lab01.check_classify, classify_swapped, ck.FAILED,
     ["expected: 'user'", "got:      'kernel'", "the lower half, where Linux puts user space"]),
    (lab01.check_canonicalize, canonicalize_negative, ck.FAILED,
     ["expected: 0xffff800000000000", "got:      -0x800000000000", "Your result is negative"]),
    (lab01.check_canonicalize, canonicalize_too_wide, ck.FAILED, ["more than 64 bits"]),
    (lab01.check_canonicalize, canonicalize_keeps_high_bits, ck.FAILED,
     ["so bits 63:48 must all become 0: va & 0xffffffffffff"]),
    (lab01.check_canonicalize, canonicalize_crash, ck.ERROR,
     ["TypeError: unsupported operand", "return va + None"]),
]


@pytest.mark.parametrize("check, fn, status, fragments", WRONG, ids=[w[1].__name__ for w in WRONG])
def test_lab01_wrong_answers_get_specific_feedback(check, fn, status, fragments):
    result = check(fn)
    assert result.status == status and result.points == 0
    text = " ".join(result.feedback.split())  # undo the line wrapping of hints
    for fragment in fragments:
        assert " ".join(fragment.split()) in text, result.feedback


def test_lab01_results_are_json_serialisable():
    for check in lab01.CHECKS:
        json.dumps(check(split_crash).to_json())
