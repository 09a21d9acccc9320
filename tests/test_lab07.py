"""Lab 07 (CR3 arithmetic under PTI): its checks against the lab's own notebooks, typical
wrong answers and the bit-by-bit feedback they get, the kernel run of exercise 3, and
what test_labs.py does not already check for every lab.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from lab_helpers import assert_feedback

from kaiser_edu.course import checks as ck
from kaiser_edu.course import exercises as ex
from kaiser_edu.course.labs import lab07

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solutions" / "lab07_entry_cr3.ipynb"
EXERCISE = REPO / "exercises" / "lab07_entry_cr3.ipynb"
NOFLUSH = 1 << 63

SOLVED = ex.answer_namespace(SOLUTION)
build_cr3 = SOLVED["build_cr3"]
switch_to_kernel_cr3 = SOLVED["switch_to_kernel_cr3"]
switch_to_user_cr3 = SOLVED["switch_to_user_cr3"]


# --- the checks (the notebook-wide rules are in test_labs.py) ------------------------------


# --- the cases are the engine's, and cover what they claim --------------------------------


def test_cases_cover_pcid_flush_pending_and_no_pcid():
    cases = lab07.user_cr3_cases(random.Random(lab07.check_user_cr3.seed))
    kinds = {(pcid, bool(mask >> (cr3 & 0x7FF) & 1)) for cr3, pcid, mask in
             (c.args for c in cases)}
    assert kinds == {(True, True), (True, False), (False, False)}
    assert any(c.args[2] & ~(1 << (c.args[0] & 0x7FF)) for c in cases if c.args[1])
    kernel = lab07.kernel_cr3_cases(random.Random(lab07.check_kernel_cr3.seed))
    assert {c.args[1] for c in kernel} == {True, False}
    assert all(c.args[0] & 0x1000 for c in kernel)  # entered from user mode


def test_the_engine_is_calling_h_arithmetic():
    """CpuTlbState against the macros, written out once more, on every ASID and mask."""
    pgd = 0x1234_6000
    for asid, pending, others in itertools.product(range(6), (False, True), (0, 0b1010100)):
        mask = others & ~(1 << (asid + 1)) | (1 << (asid + 1) if pending else 0)
        kernel = pgd | (asid + 1)
        cr3, left = lab07.engine_user_cr3(kernel, True, mask)
        assert cr3 == kernel | 0x1800 | (0 if pending else NOFLUSH)
        assert left == mask & ~(1 << (asid + 1))
        assert lab07.engine_kernel_cr3(cr3 & ~NOFLUSH, True) == kernel | NOFLUSH
    assert lab07.engine_user_cr3(pgd, False, 0) == (pgd | 0x1000, 0)
    assert lab07.engine_kernel_cr3(pgd | 0x1000, False) == pgd


def test_describe_and_explain_bits():
    assert lab07.describe_cr3(0x4010000 | 0x1803 | NOFLUSH) == \
        "PGD pair 0x4010000, user PGD, PCID 2051 (0x803, user PCID of ASID 2), NOFLUSH"
    lines = lab07.explain_bits(0x4011803 | NOFLUSH, 0x4010003)
    assert [line.split(" ", 2)[:2] for line in lines] == [["bit", "63"], ["bit", "12"],
                                                          ["bit", "11"]]
    assert "expected 1, got 0" in lines[0]


# --- typical mistakes get specific feedback --------------------------------------------------


def user_cr3_ignoring_the_mask(cr3, pcid, mask):
    return (cr3 | 0x1800 | NOFLUSH, mask) if pcid else (cr3 | 0x1000, mask)


def user_cr3_keeping_the_bit(cr3, pcid, mask):
    return switch_to_user_cr3(cr3, pcid, mask)[0], mask


def user_cr3_clearing_the_whole_mask(cr3, pcid, mask):
    value, left = switch_to_user_cr3(cr3, pcid, mask)
    return value, 0 if left != mask else mask


def user_cr3_indexed_by_asid(cr3, pcid, mask):
    if not pcid:
        return cr3 | 0x1000, mask
    bit = 1 << ((cr3 & 0x7FF) - 1)
    if mask & bit:
        return cr3 | 0x1800, mask & ~bit
    return cr3 | 0x1800 | NOFLUSH, mask


def user_cr3_user_pcid_without_pcid(cr3, pcid, mask):
    return (cr3 | 0x1800, mask) if not pcid else switch_to_user_cr3(cr3, pcid, mask)


def user_cr3_forgets_bit_11(cr3, pcid, mask):
    value, left = switch_to_user_cr3(cr3, pcid, mask)
    return value & ~0x800, left


def user_cr3_int_only(cr3, pcid, mask):
    return switch_to_user_cr3(cr3, pcid, mask)[0]


def user_cr3_crash(cr3, pcid, mask):
    return cr3 | mask[0]


WRONG = [
    (lab07.check_build_cr3, lambda pgd, asid, pcid: pgd | asid if pcid else pgd, ck.FAILED,
     ["build_cr3(", "ASID 0, PCID on", "bits 10:0 (PCID)", "expected 0x1, got 0x0",
      "The PCID is kern_pcid(asid) = asid + 1"]),
    (lab07.check_build_cr3, lambda pgd, asid, pcid: pgd | asid + 1, ck.FAILED,
     ["no PCID", "Without X86_FEATURE_PCID, CR3 bits 11:0 are not a PCID"]),
    (lab07.check_build_cr3, lambda pgd, asid, pcid: pgd | (asid + 1 if pcid else 0) | NOFLUSH,
     ck.FAILED, ["build_cr3() never sets bit 63"]),
    (lab07.check_kernel_cr3, lambda cr3, pcid: cr3 & ~0x1800, ck.FAILED,
     ["bit 63 (NOFLUSH)", "expected 1, got 0", "sets NOFLUSH (ADJUST_KERNEL_CR3"]),
    (lab07.check_kernel_cr3, lambda cr3, pcid: cr3 & ~0x1800 | NOFLUSH, ck.FAILED,
     ["no PCID", "leaves SET_NOFLUSH_BIT out"]),
    (lab07.check_kernel_cr3, lambda cr3, pcid: cr3 & ~0x1000 | (NOFLUSH if pcid else 0),
     ck.FAILED, ["bit 11 (user PCID bit)", "the kernel would run on the user PCID"]),
    (lab07.check_kernel_cr3, lambda cr3, pcid: cr3 & ~0x800 | (NOFLUSH if pcid else 0),
     ck.FAILED, ["bit 12 (PTI_USER_PGTABLE_BIT)", "Bit 12 is still set"]),
    (lab07.check_kernel_cr3, lambda cr3, pcid: cr3 & ~0x1FFF | (NOFLUSH if pcid else 0),
     ck.FAILED, ["Keep bits 10:0"]),
    (lab07.check_user_cr3, user_cr3_ignoring_the_mask, ck.FAILED,
     ["a user-PCID flush is pending", "expected: (cr3=", "user_pcid_flush_mask=0b",
      "bit 63 (NOFLUSH)", "expected 0, got 1", "your function ignored it"]),
    (lab07.check_user_cr3, user_cr3_keeping_the_bit, ck.FAILED,
     ["Consume the pending flush: clear bit"]),
    (lab07.check_user_cr3, user_cr3_clearing_the_whole_mask, ck.FAILED,
     ["other ASIDs' user PCIDs"]),
    (lab07.check_user_cr3, user_cr3_indexed_by_asid, ck.FAILED,
     ["The mask is indexed by the kernel PCID"]),
    (lab07.check_user_cr3, user_cr3_user_pcid_without_pcid, ck.FAILED,
     ["exit to user mode, no PCID", "there is no user PCID"]),
    (lab07.check_user_cr3, user_cr3_forgets_bit_11, ck.FAILED,
     ["Bit 11 is clear: user code would run on the kernel PCID"]),
    (lab07.check_user_cr3, user_cr3_int_only, ck.FAILED, ["Return a tuple of two ints"]),
    (lab07.check_user_cr3, lambda cr3, pcid, mask: None, ck.FAILED,
     ["did you forget `return`?"]),
    (lab07.check_user_cr3, user_cr3_crash, ck.ERROR,
     ["Your code raised TypeError", "in user_cr3_crash(), line", "return cr3 | mask[0]",
      "while running switch_to_user_cr3(0x"]),
]


@pytest.mark.parametrize("check, answer, status, fragments", WRONG,
                         ids=[f"{c.exercise}-{n}" for n, (c, *_) in enumerate(WRONG)])
def test_wrong_answers_get_specific_feedback(check, answer, status, fragments):
    assert_feedback(check(answer), status, fragments)


def test_a_function_right_on_the_states_but_wrong_in_the_kernel_is_caught():
    calls = itertools.count()

    def tired(cr3, pcid, mask):  # right for the random states, then never flushes again
        if next(calls) < 90:
            return switch_to_user_cr3(cr3, pcid, mask)
        return user_cr3_ignoring_the_mask(cr3, pcid, mask)

    result = lab07.check_user_cr3(tired)
    assert result.status == ck.FAILED, result.text()
    for fragment in ("In a running PTI kernel (with PCID)", "expected 0x", "CR3 write",
                     "bit 63 (NOFLUSH)"):
        assert fragment in result.feedback, result.text()


def test_the_kernel_run_recycles_asids_and_flushes_at_exit():
    writes = [w for w in lab07.kernel_cr3_writes() if w[1] >= 0]
    user_exits = [v for _, v, _ in writes if v & 0x1000]
    assert any(not v & NOFLUSH for v in user_exits)  # a deferred flush happened
    assert any(v & NOFLUSH for v in user_exits)
    assert {v & 0x7FF for _, v, _ in writes} >= set(range(1, 7))  # all six ASIDs in use
    assert all(outcome in ("ok", "") for _, v, outcome in lab07.kernel_cr3_writes() if v < 0)


def test_crash_inside_the_kernel_is_reported_with_the_line():
    calls = itertools.count()

    def crash_late(cr3, pcid, mask):
        if next(calls) > 150:
            raise ValueError("late")
        return switch_to_user_cr3(cr3, pcid, mask)

    result = lab07.check_user_cr3(crash_late)
    assert result.status == ck.ERROR
    assert "ValueError: late" in result.feedback and "crash_late" in result.feedback


def test_results_are_deterministic_and_json_serialisable():
    for check, answer in ((lab07.check_user_cr3, user_cr3_keeping_the_bit),
                          (lab07.check_kernel_cr3, lambda cr3, pcid: cr3)):
        first, second = check(answer), check(answer)
        assert first.text() == second.text()
        json.dumps(first.to_json())


def test_nbgrader_grading_raises_on_a_wrong_answer(monkeypatch):
    monkeypatch.setenv(ck.NBGRADER_ENV, "autograde")
    with pytest.raises(ck.CheckFailed):
        lab07.check_user_cr3(user_cr3_keeping_the_bit)
    assert lab07.check_user_cr3(switch_to_user_cr3).passed
