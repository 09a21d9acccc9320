"""Lab 09 (a KASLR break from a timing oracle): the expected answers agree with the attack
model's own break, typical wrong breaks get specific feedback, and the oracle refuses bad
input. The rules every lab must satisfy are in test_labs.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from lab_helpers import assert_feedback

from kaiser_edu.attacks.kaslr import break_kaslr
from kaiser_edu.course import checks as ck
from kaiser_edu.course import exercises as ex
from kaiser_edu.course.labs import lab09
from kaiser_edu.errors import KaiserEduError

REPO = Path(__file__).resolve().parents[1]
SOLVED = ex.answer_namespace(REPO / "solutions" / "lab09_kaslr_break.ipynb")
find_text_base = SOLVED["find_text_base"]


def guessing_break(oracle, candidates, offset):
    """The solution where it finds something, else the fastest slot: a guess."""
    found = find_text_base(oracle, candidates, offset)
    if found is not None:
        return found
    vas = candidates + np.uint64(offset)
    times = np.array([oracle.probe(vas) for _ in range(8)])
    return int(candidates[np.argmin(np.median(times[1:], axis=0))])


@pytest.mark.parametrize(("isolation", "method"), [
    ("off", "prefetch"), ("kaiser", "prefetch"), ("pti", "prefetch"),
    ("off", "entrybleed"), ("kaiser", "entrybleed"), ("pti", "entrybleed")])
def test_expected_base_is_what_the_attack_model_finds(isolation, method):
    """The page-table rule of expected_base() and the model's timed break agree."""
    k, task, _oracle = lab09.oracle_machine(isolation, method, "skylake", seed=5)
    candidates, offset = lab09.candidates_for(method)
    expected = lab09.expected_base(k, candidates, offset)
    assert expected in (None, k.layout.kernel_text)
    assert break_kaslr(k, task, method=method, seed=5).text_base == expected


def test_cases_have_both_answers():
    cases = lab09.kaslr_cases(random.Random(lab09.check_kaslr_break.seed))
    bases = [c.expected.base for c in cases]
    assert bases.count(None) >= 4 and sum(b is not None for b in bases) >= 16
    assert {c.note.split(",")[0] for c in cases} == {"off", "kaiser", "pti"}


def test_the_solution_passes_and_a_guessing_break_fails():
    assert lab09.check_kaslr_break(find_text_base).status == ck.PASSED
    result = lab09.check_kaslr_break(guessing_break)
    assert_feedback(result, ck.FAILED, ["Nothing is there to find", "return None"])


def test_never_finding_anything_fails_with_its_own_hint():
    result = lab09.check_kaslr_break(lambda oracle, candidates, offset: None)
    assert_feedback(result, ck.FAILED, ["got: None", "but you returned None"])


def test_returning_the_probed_address_is_explained():
    def probed(oracle, candidates, offset):
        base = find_text_base(oracle, candidates, offset)
        return None if base is None else base + offset

    result = lab09.check_kaslr_break(probed)
    assert result.status == ck.FAILED
    assert "return the slot itself" in " ".join(result.feedback.split()) or \
        "not one of the candidate slots" in result.feedback


def test_oracle_refuses_bad_input():
    _k, _task, oracle = lab09.oracle_machine("off", "prefetch", "skylake", seed=1)
    with pytest.raises(KaiserEduError, match="non-empty 1-D"):
        oracle.probe([])
    with pytest.raises(KaiserEduError, match="method must be one of"):
        lab09.TimingOracle(_k, _task, "double-fault")
