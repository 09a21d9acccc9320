"""nbgrader cell metadata: what marks a cell as an answer, a check, or neither.

The course does not need nbgrader, but it writes the same metadata (schema version 3), so a
lecturer can run ``nbgrader generate_assignment`` / ``autograde`` on our notebooks. The
metadata lives in ``cell.metadata["nbgrader"]``:

=====================  ========  =====  ======  ======  ==============================
cell                   solution  grade  locked  points  what nbgrader does with it
=====================  ========  =====  ======  ======  ==============================
autograded answer      true      false  false   --      student edits the code
autograded check       false     true   true    N       runs it; no error = N points
manually graded answer true      true   false   N       a person grades the text
read-only              false     false  true    --      student may not edit it
=====================  ========  =====  ======  ======  ==============================

nbgrader's own validator (``nbgrader/nbformat/v3.py``) insists that a markdown cell is
either both solution and grade or neither, that every grade cell has points, and that
grade ids are unique; :func:`problems` applies the same rules, so a notebook that passes
here also passes there.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

SCHEMA_VERSION = 3

#: What nbgrader puts in place of a solution region: in code, then in markdown.
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
ANSWER_STUB = "YOUR ANSWER HERE"

GRADE_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def answer_metadata(grade_id: str) -> dict[str, Any]:
    """An autograded answer cell (code): the student writes here.

    >>> answer_metadata("lab01-split-answer")["solution"]
    True
    """
    return {
        "grade": False,
        "grade_id": grade_id,
        "locked": False,
        "schema_version": SCHEMA_VERSION,
        "solution": True,
    }


def written_answer_metadata(grade_id: str, points: int = 1) -> dict[str, Any]:
    """A manually graded answer (markdown): nbgrader requires solution *and* grade."""
    return {
        "grade": True,
        "grade_id": grade_id,
        "locked": False,
        "points": points,
        "schema_version": SCHEMA_VERSION,
        "solution": True,
    }


def check_metadata(grade_id: str, points: int) -> dict[str, Any]:
    """An autograded check cell: locked, worth ``points`` when it runs without error."""
    return {
        "grade": True,
        "grade_id": grade_id,
        "locked": True,
        "points": points,
        "schema_version": SCHEMA_VERSION,
        "solution": False,
    }


def readonly_metadata(grade_id: str) -> dict[str, Any]:
    """A cell the student should not edit (instructions, set-up code)."""
    return {
        "grade": False,
        "grade_id": grade_id,
        "locked": True,
        "schema_version": SCHEMA_VERSION,
        "solution": False,
    }


def nbgrader(cell: Any) -> dict[str, Any]:
    """The cell's nbgrader metadata, or ``{}`` if it has none."""
    return dict(cell.get("metadata", {}).get("nbgrader", {}))


def is_answer(cell: Any) -> bool:
    """True for a cell the student is meant to write in (nbgrader ``solution``)."""
    return bool(nbgrader(cell).get("solution", False))


def is_check(cell: Any) -> bool:
    """True for an autograded check: a graded *code* cell."""
    return cell.get("cell_type") == "code" and bool(nbgrader(cell).get("grade", False))


def is_written_answer(cell: Any) -> bool:
    """True for a manually graded markdown answer."""
    meta = nbgrader(cell)
    return cell.get("cell_type") == "markdown" and bool(meta.get("grade") and meta.get("solution"))


def points(cell: Any) -> int:
    """Points of a graded cell (0 for any other cell)."""
    meta = nbgrader(cell)
    return int(meta.get("points", 0)) if meta.get("grade") else 0


def derived_grade_id(notebook_name: str, cell_number: int) -> str:
    """The grade id given to an answer cell that has none: ``<notebook>-cell<NN>``.

    ``cell_number`` counts from 1, as the error messages do. Characters nbgrader would not
    accept in an id become ``_``, so any file name gives a valid id.

    >>> derived_grade_id("lab01_addresses", 7)
    'lab01_addresses-cell07'
    >>> derived_grade_id("my lab (v2)", 12)
    'my_lab__v2_-cell12'
    """
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", notebook_name) or "notebook"
    return f"{stem}-cell{cell_number:02d}"


def problems(cells: list[Any]) -> list[str]:
    """What nbgrader's validator would refuse in these cells (empty list: all fine).

    Each message starts with the 1-based cell number.
    """
    found: list[str] = []
    seen: dict[str, int] = {}
    for number, cell in enumerate(cells, start=1):
        meta = nbgrader(cell)
        if not meta:
            continue
        grade, solution = bool(meta.get("grade")), bool(meta.get("solution"))
        locked = bool(meta.get("locked"))
        if not (grade or solution or locked):
            continue
        grade_id = meta.get("grade_id", "")
        if not isinstance(grade_id, str) or not GRADE_ID_RE.match(grade_id):
            found.append(
                f"cell {number}: grade_id {grade_id!r} must be letters, digits, '_' or '-'"
            )
        elif grade_id in seen:
            found.append(f"cell {number}: grade_id {grade_id!r} is already used by cell "
                         f"{seen[grade_id]}")
        else:
            seen[grade_id] = number
        if grade and not isinstance(meta.get("points"), int | float):
            found.append(f"cell {number}: a graded cell needs 'points' (a number)")
        if cell.get("cell_type") == "markdown" and grade != solution and not meta.get("task"):
            found.append(f"cell {number}: a markdown answer must be both 'solution' and "
                         "'grade' (a manually graded answer)")
    return found


def is_locked(cell: Any) -> bool:
    """nbgrader's ``is_locked``: a solution cell never is, a grade cell always is, any other
    cell if its metadata says ``locked``."""
    meta = nbgrader(cell)
    if meta.get("solution"):
        return False
    return bool(meta.get("grade") or meta.get("locked"))


def checksum(cell: Any) -> str:
    """The checksum ``nbgrader generate_assignment`` stores in a cell (nbgrader 0.9,
    ``nbgrader.utils.compute_checksum``): md5 of the source, the cell type, whether it is
    a grade, solution and locked cell, its grade id and, for a grade cell, its points as a
    float. nbgrader's autograder compares it to spot edited cells (tests/test_nbgrader.py
    checks that both compute the same)."""
    meta = nbgrader(cell)
    m = hashlib.md5()
    for part in (cell["source"], cell["cell_type"], str(bool(meta.get("grade"))),
                 str(bool(meta.get("solution"))), str(is_locked(cell)), meta["grade_id"]):
        m.update(part.encode("utf-8"))
    if meta.get("grade"):
        m.update(str(float(meta["points"])).encode("utf-8"))
    return m.hexdigest()


def release(cell: Any) -> None:
    """Give ``cell`` what ``nbgrader generate_assignment`` gives a released cell, so that
    JupyterLab enforces it and nbgrader's autograder can check it: its checksum and cell
    type in the nbgrader metadata, and ``editable``/``deletable`` as nbgrader's LockCells
    sets them (a check or read-only cell can be neither edited nor deleted; an answer
    cell cannot be deleted)."""
    meta = nbgrader(cell)
    solution, grade = bool(meta.get("solution")), bool(meta.get("grade"))
    if not (solution or grade or is_locked(cell)):
        return
    if solution:
        cell.metadata["deletable"] = False
    else:  # a check cell or a read-only cell
        cell.metadata["deletable"] = False
        cell.metadata["editable"] = False
    cell.metadata["nbgrader"] = {**meta, "checksum": checksum(cell),
                                 "cell_type": cell["cell_type"]}
