"""Lab 02 (the page walk): its checks against the lab's own notebooks.

The reference answers are not copied here: they are the answer cells of
solutions/lab02_page_walk.ipynb, run together with the notebook's set-up cell, so the test
and the notebook cannot drift apart. Typical mistakes are made by wrapping or patching those
functions (a namespace with a broken ``decode_entry`` gives a ``walk_entries`` that ignores
PS, as a student's would). The rules every lab shares are in test_labs.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kaiser_edu.course import checks as ck
from kaiser_edu.course import exercises as ex
from kaiser_edu.course.labs import lab02
from kaiser_edu.hw import bits as b

REPO = Path(__file__).resolve().parents[1]
LAB02 = "lab02_page_walk.ipynb"
SOLUTION = REPO / "solutions" / LAB02
EXERCISE = REPO / "exercises" / LAB02
IDS = ["lab02-decode", "lab02-walk", "lab02-allowed", "lab02-translate"]

PAGE_USER, PAGE_RW, PAGE_PSE, PAGE_NX = b.PAGE_USER, b.PAGE_RW, b.PAGE_PSE, b.PAGE_NX
PF_PROT, PF_WRITE, PF_USER, PF_RSVD, PF_INSTR = (b.X86_PF_PROT, b.X86_PF_WRITE, b.X86_PF_USER,
                                                 b.X86_PF_RSVD, b.X86_PF_INSTR)


def answers_of(path: Path) -> dict:
    return ex.answer_namespace(path)


@pytest.fixture(scope="module")
def solution() -> dict:
    return answers_of(SOLUTION)


def run(check, fn) -> ck.CheckResult:
    result = check(fn)
    assert result.max_points == check.points
    return result


def failed(check, fn, *needles: str) -> ck.CheckResult:
    """Run the check; it must fail (no points) with every needle in its feedback."""
    result = run(check, fn)
    assert result.status == ck.FAILED, result.text()
    assert result.points == 0
    text = " ".join(result.feedback.split())  # hints are wrapped: compare words
    for needle in needles:
        assert " ".join(needle.split()) in text, f"{needle!r} not in:\n{result.feedback}"
    assert "expected:" in result.feedback and "got:" in result.feedback
    return result


# --- the notebooks -------------------------------------------------------------------------


def test_checks_are_deterministic():
    for check in lab02.CHECKS:
        first = [(c.args[1:], c.kwargs, c.expected) for c in check.cases(random.Random(7))]
        again = [(c.args[1:], c.kwargs, c.expected) for c in check.cases(random.Random(7))]
        assert first == again


# --- the cases cover what the lab teaches ----------------------------------------------------


def translate_cases() -> list[lab02.PathCase]:
    return list(lab02.check_translate.cases(random.Random(lab02.check_translate.seed)))


def test_translate_cases_cover_every_kind_of_outcome():
    cases = translate_cases()
    outcomes = [c.expected for c in cases]
    sizes = {o[2] for o in outcomes if o[0] == "ok"}
    assert sizes == {b.PAGE_SIZE, b.PMD_SIZE, b.PUD_SIZE}
    assert sum(o == ("GP",) for o in outcomes) >= 5
    codes = [o[1] for o in outcomes if o[0] == "PF"]
    for bit in (PF_PROT, PF_WRITE, PF_USER, PF_RSVD, PF_INSTR):
        assert sum(bool(code & bit) for code in codes) >= 10, hex(bit)
    not_present_levels = {c.steps[-1].level for c in cases
                          if c.expected[0] == "PF" and not c.expected[1] & PF_PROT}
    assert not_present_levels == {1, 2, 3, 4}
    assert any(c.cr3 & 0xFFF for c in cases), "CR3 with PCID bits"
    assert sum(c.expected[0] == "ok" for c in cases) >= 60


def test_random_tables_restrict_rights_at_upper_levels():
    cases = list(lab02.check_allowed.cases(random.Random(lab02.check_allowed.seed)))
    uppers = [s.entry for c in cases for s in c.steps[:-1]]
    assert any(not e & PAGE_USER for e in uppers)
    assert any(not e & PAGE_RW for e in uppers)
    assert any(e & PAGE_NX for e in uppers)
    assert sum(c.expected for c in cases) >= 100 and sum(not c.expected for c in cases) >= 100


def test_hint_reasons_agree_with_the_engine():
    """The hints explain decisions with lab02.rights_reason: it must decide as walk() does."""
    for case in lab02.check_allowed.cases(random.Random(3)):
        kw = case.kwargs
        decided, _ = lab02.rights_reason(case.steps, case.args[1], kw["cpl"], wp=kw["wp"],
                                         smep=kw["smep"], smap=kw["smap"], ac=kw["ac"])
        assert decided == case.expected


@pytest.mark.parametrize("check", lab02.CHECKS, ids=lambda c: c.exercise)
def test_hints_never_crash_on_odd_answers(check):
    odd = [None, True, False, 0, "ok", [], {}, ("PF",), ("ok", 1.5, 4096), ("PF", 0),
           ("ok", 0, 4096), [(0, 0)], {"present": True}, {k: 0 for k in lab02.DECODE_KEYS}]
    for case in list(check.cases(random.Random(check.seed)))[:150]:
        for got in odd:
            assert isinstance(check.hint(case, got), str)


def test_physical_memory_refuses_what_a_cpu_cannot_read():
    read = lab02.example_machine().read_qword()
    with pytest.raises(TypeError, match="needs an integer physical address"):
        read(4096.0)
    with pytest.raises(ValueError, match="at most 52 bits.*0x000ffffffffff000"):
        read(1 << 63)
    with pytest.raises(ValueError, match="not 8-byte aligned.*PCID or flags"):
        read(0x1004)
    assert repr(read) == "read_qword" and read(0) == 0 and read.reads == [0]


# --- typical mistakes get specific feedback ---------------------------------------------------


def patched(**overrides) -> dict:
    """A fresh copy of the solution's functions with some names replaced: the other
    functions then call the replacements, as a student's own helpers would be called."""
    namespace = answers_of(SOLUTION)
    namespace.update(overrides)
    return namespace


def test_allowed_with_us_ored_instead_of_anded(solution):
    def allowed(entries, access, cpl, **kw):
        if any(e & PAGE_USER for e in entries):
            entries = [e | PAGE_USER for e in entries]
        return solution["allowed"](entries, access, cpl, **kw)

    result = failed(lab02.check_allowed, allowed,
                    "U/S must be 1 at every level for a user-mode access: the PML4E at 0x",
                    "has U/S=0", "(U/S is ANDed across the levels)")
    assert "the entries on the path of" in result.feedback  # the tables are shown
    assert "expected: False" in result.feedback and "got:      True" in result.feedback


def test_allowed_ignoring_wp(solution):
    def allowed(entries, access, cpl, *, wp=True, **kw):
        return solution["allowed"](entries, access, cpl, wp=False, **kw)

    failed(lab02.check_allowed, allowed, "CR0.WP=1: supervisor-mode writes honour R/W=0",
           "has R/W=0")


def test_allowed_with_xd_from_the_leaf_only(solution):
    def allowed(entries, access, cpl, **kw):
        entries = [e & ~PAGE_NX for e in entries[:-1]] + [entries[-1]]
        return solution["allowed"](entries, access, cpl, **kw)

    failed(lab02.check_allowed, allowed, "XD=1 in the PDPTE at 0x", "XD is ORed")


@pytest.mark.parametrize("flag, needle", [("smep", "CR4.SMEP=1"), ("smap", "CR4.SMAP=1")])
def test_allowed_ignoring_smep_or_smap(solution, flag, needle):
    def allowed(entries, access, cpl, **kw):
        return solution["allowed"](entries, access, cpl, **{**kw, flag: False})

    failed(lab02.check_allowed, allowed, needle)


def test_decode_forgetting_ps(solution):
    def decode_entry(entry, level):
        return solution["decode_entry"](entry & ~PAGE_PSE, level)

    failed(lab02.check_decode, decode_entry, "PS (bit 7) is 1 in this PDE",
           "maps a 2 MiB page itself")


def test_decode_treating_bit_7_as_ps_at_every_level(solution):
    def decode_entry(entry, level):
        return {**solution["decode_entry"](entry, level), "leaf": bool(entry & PAGE_PSE)}

    failed(lab02.check_decode, decode_entry, "A PTE (level 1) always maps a 4 KiB page")


def test_decode_without_masking_bits_63_52(solution):
    def decode_entry(entry, level):
        return {**solution["decode_entry"](entry, level), "address": entry & ~0xFFF}

    failed(lab02.check_decode, decode_entry, "Bits 63:52 are not address bits",
           "0x000ffffffffff000")


def test_decode_keeping_pat_in_a_huge_page_address(solution):
    def decode_entry(entry, level):
        decoded = solution["decode_entry"](entry, level)
        if decoded["leaf"] and level > 1:
            decoded["address"] = entry & 0x000F_FFFF_FFFF_F000
        return decoded

    failed(lab02.check_decode, decode_entry, "bit 12 is PAT, not address")


def test_walk_forgetting_ps(solution):
    def decode_entry(entry, level):
        return solution["decode_entry"](entry & ~PAGE_PSE, level)

    ns = patched(decode_entry=decode_entry)
    failed(lab02.check_walk, ns["walk_entries"], "PS (bit 7) is 1 in the PDE at 0x",
           "the walk ends there")


def test_walk_going_on_after_a_not_present_entry(solution):
    def decode_entry(entry, level):
        return {**solution["decode_entry"](entry, level), "present": True}

    ns = patched(decode_entry=decode_entry)
    failed(lab02.check_walk, ns["walk_entries"], "has P=0: the walk stops there")


def test_walk_without_masking_the_pcid(solution):
    ns = patched(ADDR_MASK=(1 << 64) - 1)  # keeps CR3's PCID (and the entries' flags)
    result = run(lab02.check_walk, ns["walk_entries"])
    assert result.status in (ck.FAILED, ck.ERROR) and result.points == 0
    assert "0x000ffffffffff000" in result.feedback and "PCID" in result.feedback


def test_walk_crashing_is_an_error_with_the_students_line():
    def walk_entries(read_qword, cr3, va):
        return [read_qword(cr3 + 3)]

    result = run(lab02.check_walk, walk_entries)
    assert result.status == ck.ERROR and result.points == 0
    assert "Your code raised ValueError" in result.feedback
    assert "return [read_qword(cr3 + 3)]" in result.feedback
    assert "while running walk_entries(read_qword, 0x" in result.feedback
    assert "the entries on the path of 0x400000" in result.feedback


def test_translate_reporting_i_for_every_fetch(solution):
    def translate(read_qword, cr3, va, access, cpl, **kw):
        outcome = solution["translate"](read_qword, cr3, va, access, cpl, **kw)
        if outcome[0] == "PF" and access == "fetch":
            return ("PF", outcome[1] | PF_INSTR)
        return outcome

    failed(lab02.check_translate, translate, "I (bit 4) should be 0",
           "only when CR4.SMEP=1 or EFER.NXE=1")


def test_translate_taking_u_from_the_page(solution):
    def translate(read_qword, cr3, va, access, cpl, **kw):
        outcome = solution["translate"](read_qword, cr3, va, access, cpl, **kw)
        path = solution["walk_entries"](read_qword, cr3, va)
        if outcome[0] == "PF" and not all(e & PAGE_USER for _, e in path):
            return ("PF", outcome[1] & ~PF_USER)
        return outcome

    failed(lab02.check_translate, translate, "U (bit 2) should be 1",
           "whatever the page's U/S says")


def test_translate_taking_w_from_the_page(solution):
    def translate(read_qword, cr3, va, access, cpl, **kw):
        outcome = solution["translate"](read_qword, cr3, va, access, cpl, **kw)
        if outcome[0] == "PF" and outcome[1] & PF_PROT and not outcome[1] & PF_RSVD:
            return ("PF", outcome[1] | PF_WRITE)  # "the page is read-only"
        return outcome

    failed(lab02.check_translate, translate, "W (bit 1) should be 0",
           "W describes the access, not the page")


def test_translate_ignoring_wp(solution):
    def translate(read_qword, cr3, va, access, cpl, *, wp=True, **kw):
        return solution["translate"](read_qword, cr3, va, access, cpl, wp=False, **kw)

    failed(lab02.check_translate, translate, "expected: ('PF', 0x3)",
           "CR0.WP=1: supervisor-mode writes honour R/W=0 too")


def test_translate_without_reserved_bits(solution):
    def translate(read_qword, cr3, va, access, cpl, *, nxe=True, **kw):
        outcome = solution["translate"](read_qword, cr3, va, access, cpl, nxe=True, **kw)
        if outcome[0] == "PF" and access == "fetch" and not nxe and not kw.get("smep"):
            return ("PF", outcome[1] & ~PF_INSTR)
        return outcome

    failed(lab02.check_translate, translate, "XD (bit 63) is reserved while EFER.NXE=0")


def test_translate_checking_rights_and_presence_before_reserved_bits(solution):
    """Issue 11: this got a hint about P; the mistake is the order of the checks."""
    def translate(read_qword, cr3, va, access, cpl, *, wp=True, smep=False, smap=False,
                  nxe=True, ac=False):
        path = solution["walk_entries"](read_qword, cr3, va)
        outcome = solution["translate"](read_qword, cr3, va, access, cpl, wp=wp, smep=smep,
                                        smap=smap, nxe=nxe, ac=ac)
        if outcome[0] != "PF" or not outcome[1] & PF_RSVD:
            return outcome
        code = outcome[1] & ~(PF_RSVD | PF_PROT)
        if any(not entry & b.PAGE_PRESENT for _, entry in path):
            return ("PF", code)  # a later entry's P=0 found before the reserved bit
        return ("PF", code | PF_PROT)  # the rights checked before the reserved bits

    failed(lab02.check_translate, translate, "That fault comes first",
           "check the entries in that order", "sets a reserved bit")


def test_translate_forgetting_ps(solution):
    def decode_entry(entry, level):
        return solution["decode_entry"](entry & ~PAGE_PSE, level)

    ns = patched(decode_entry=decode_entry)
    result = run(lab02.check_translate, ns["translate"])
    assert result.status in (ck.FAILED, ck.ERROR) and result.points == 0
    assert "translate(read_qword, 0x" in result.feedback
    assert "the entries on the path of 0x7f0000212345" in result.feedback  # the 2 MiB page
    if result.status == ck.FAILED:
        assert "PS (bit 7) is 1 in the PDE at 0x" in result.feedback


def test_translate_with_a_4_kib_offset_in_a_huge_page(solution):
    def translate(read_qword, cr3, va, access, cpl, **kw):
        outcome = solution["translate"](read_qword, cr3, va, access, cpl, **kw)
        if outcome[0] == "ok" and outcome[2] > 4096:
            return ("ok", outcome[1] & ~(outcome[2] - 1) | va & 0xFFF, outcome[2])
        return outcome

    failed(lab02.check_translate, translate, "keeps the low 21 bits of va as the offset")


def test_translate_page_faulting_a_non_canonical_address(solution):
    def translate(read_qword, cr3, va, access, cpl, **kw):
        outcome = solution["translate"](read_qword, cr3, va, access, cpl, **kw)
        return ("PF", PF_USER) if outcome == ("GP",) else outcome

    failed(lab02.check_translate, translate, "#GP(0) before any table is read",
           "no entry is read for 0x800000000000: it is not canonical")


def test_translate_forgetting_return(solution):
    def translate(read_qword, cr3, va, access, cpl, **kw):
        solution["translate"](read_qword, cr3, va, access, cpl, **kw)

    failed(lab02.check_translate, translate, "did you forget `return`?")


def test_translate_accepts_lists_and_numpy_integers(solution):
    import numpy as np

    def translate(*args, **kw):
        outcome = solution["translate"](*args, **kw)
        return [outcome[0], *(np.uint64(v) for v in outcome[1:])]

    assert run(lab02.check_translate, translate).status == ck.PASSED


def test_allowed_accepts_numpy_bools(solution):
    import numpy as np

    def allowed(*args, **kw):
        return np.bool_(solution["allowed"](*args, **kw))

    assert run(lab02.check_allowed, allowed).status == ck.PASSED
