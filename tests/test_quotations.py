"""Quotations in the lessons are verbatim or not quotations (kaiser_edu/course/quotations.py).

Every double-quoted passage of two or more words in the Markdown of lessons 04, 06, 07 and 10
must be a registered quotation (or part of one), and a registered quotation whose source
has an excerpt in the course's reference material must appear there verbatim. The reference
material lives outside the repository (``../shared/reference`` next to the checkout in CI,
or ``$KAISER_EDU_REFERENCE``); without it that part is skipped, not passed.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from kaiser_edu.course.quotations import (
    LESSONS,
    QUOTATIONS,
    normalize,
    quoted_passages,
    registered,
)

ROOT = Path(__file__).resolve().parents[1]


def _reference_dir() -> Path | None:
    candidates = [os.environ.get("KAISER_EDU_REFERENCE"),
                  ROOT.parent / "shared" / "reference", ROOT.parent.parent / "shared" / "reference",
                  ROOT.parent / "shared", Path("/work/shared/reference")]
    for c in candidates:
        if c and (Path(c) / "pti-facts.md").is_file():
            return Path(c)
    return None


def _lesson(number: str) -> Path:
    (path,) = (ROOT / "notebooks").glob(f"{number}_*.ipynb")
    return path


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_quoted_passage_of_the_lesson_is_registered(lesson):
    nb = nbformat.read(_lesson(lesson), as_version=4)
    unregistered = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for passage in quoted_passages(cell.source):
            if registered(passage, lesson) is None:
                unregistered.append((cell.get("id"), normalize(passage)))
    assert unregistered == [], (
        "quoted but not in kaiser_edu/course/quotations.py (quote it verbatim and register "
        "it with its source, or drop the quotation marks)")


def test_every_registered_quotation_is_used_by_a_lesson():
    """A quotation no lesson prints any more is dropped from the table, not left to rot."""
    text = {n: normalize("\n".join(c.source for c in nbformat.read(_lesson(n), 4).cells
                                   if c.cell_type == "markdown")) for n in LESSONS}
    unused = [q.text for q in QUOTATIONS if not any(normalize(q.text) in text[n] or any(
        normalize(p) in normalize(q.text) for p in quoted_passages(text[n])) for n in q.lessons)]
    assert unused == []


@pytest.mark.parametrize("quote", [q for q in QUOTATIONS if q.excerpt_in],
                         ids=lambda q: q.text[:40])
def test_a_quotation_with_an_excerpt_in_the_reference_appears_there_verbatim(quote):
    ref = _reference_dir()
    if ref is None:
        pytest.skip("the course's reference material (../shared/reference) is not here")
    assert normalize(quote.text) in normalize((ref / quote.excerpt_in).read_text())


def test_the_passage_finder_pairs_quotes_in_order():
    md = 'a "one" b "two words" c `"not" "this"` d \u201cthree more words\u201d'
    assert quoted_passages(md) == ["two words", "three more words"]
    assert registered("guard hole, also reserved", "04") is not None
    assert registered("guard hole, reserved for hypervisor", "04") is None  # not verbatim
