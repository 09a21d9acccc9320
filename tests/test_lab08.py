"""Lab 08 specifics: wrong answers get the hint that names what is wrong, the cases are real
runs of the simulated kernel with perturbed prices."""

from __future__ import annotations

import random

from kaiser_edu.course import checks as ck
from kaiser_edu.course.labs import lab08 as L
from kaiser_edu.kernel.timing import timing


def right_cycles(c, t):
    return (c["user_cycles"] + c["l1_hits"] * t.l1_tlb_hit + c["l2_hits"] * t.l2_tlb_hit
            + c["walks"] * t.l2_tlb_hit + c["walk_reads"] * t.walk_level
            + c["cr3_writes"] * t.cr3_write + c["flushes"] * t.tlb_flush
            + c["invlpg"] * t.invlpg + c["invpcid"] * t.invpcid
            + c["kernel_entries"] * (t.syscall_sysret + t.entry_work)
            + c["page_faults"] * t.fault_delivery)


def test_cases_are_real_runs_with_perturbed_prices():
    cases = L.cycles_cases(random.Random(80))
    tables = {c.args[1] for c in cases}
    assert len(tables) >= 5  # the prices change from case to case
    assert any(c.args[0]["flushes"] > 0 for c in cases)
    assert any(c.args[0]["walks"] > 0 and c.args[0]["flushes"] == 0 for c in cases)
    assert all(set(c.args[0]) == set(L.RECORD_KEYS) for c in cases)


def test_a_missing_category_is_named():
    def no_walks(c, t):
        return right_cycles(c, t) - c["walks"] * t.l2_tlb_hit - c["walk_reads"] * t.walk_level

    r = L.check_cycles(no_walks)
    assert r.status == ck.FAILED and "'tlb_walks'" in r.feedback and "expected" in r.feedback


def test_hard_coded_prices_are_caught():
    sky = timing("skylake")
    r = L.check_cycles(lambda c, t: right_cycles(c, sky))
    assert r.status == ck.FAILED and "perturbed table" in r.feedback
    assert "use the prices of the table" in r.feedback


def test_crashing_and_unfinished_answers_never_raise():
    assert L.check_cycles(lambda c, t: c["nope"]).status == ck.ERROR
    assert L.check_cycles(lambda c, t: None).status == ck.FAILED
    assert L.check_max_rate("not a function").status == ck.ERROR


def test_break_even_rate_hints_name_the_case():
    r = L.check_max_rate(lambda e, o, b, c: c * 1e9 * b / e)
    assert r.status == ck.FAILED and "whole call as user work" in r.feedback
    assert "pti-nopcid with a 16 KiB working set" in r.feedback
    r = L.check_max_rate(lambda e, o, b, c: c / (e / b - o))
    assert r.status == ck.FAILED and "1e9" in r.feedback


def test_the_answer_really_is_the_break_even_on_the_simulator():
    """Plugging the engine's rate back into the simulated workload gives an overhead close
    to the budget (the extra cost per call was measured at 50k/s, so near 50k/s)."""
    from kaiser_edu.perf import workloads as W

    extra, off_syscall = L.measure_extra("pti", 1024)
    rate = L.max_rate(extra, off_syscall, 0.01, 4.0)
    r = W.syscall("pti", work_cycles=W.work_for_rate(rate), working_set_kib=1024, calls=32)
    assert abs(r.overhead - 0.01) < 0.001
