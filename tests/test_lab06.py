"""Lab 06 (the shadow PGD): its checks against the lab's own notebooks, typical wrong
answers and what the kernel run says about them (what broke, what leaked, the first PGD
write that differs from Linux's), the reference clone against the kernel's own, and
what test_labs.py does not already check for every lab.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lab_helpers import assert_feedback

from kaiser_edu.course import checks as ck
from kaiser_edu.course import exercises as ex
from kaiser_edu.course.labs import lab06
from kaiser_edu.course.labs.lab06 import (
    ADDR_MASK,
    KERNPG_TABLE,
    PAGE_GLOBAL,
    PAGE_NX,
    PAGE_PRESENT,
    PAGE_PSE,
    PAGE_USER,
    PTI_CLONE_PMD,
    kernel_to_user_pgdp,
    pgdp_maps_userspace,
    table_index,
)
from kaiser_edu.hw.address import table_index as hw_table_index
from kaiser_edu.kernel import Kernel, audit

REPO = Path(__file__).resolve().parents[1]
SOLUTION = REPO / "solutions" / "lab06_shadow_pgd.ipynb"
EXERCISE = REPO / "exercises" / "lab06_shadow_pgd.ipynb"

SOLVED = ex.answer_namespace(SOLUTION)
pti_set_user_pgtbl = SOLVED["pti_set_user_pgtbl"]
pti_clone_pgtable = SOLVED["pti_clone_pgtable"]


# --- the checks (the notebook-wide rules are in test_labs.py) ------------------------------


def test_clone_check_names_the_unfinished_walker():
    stubbed = ex.answer_namespace(EXERCISE)
    namespace = {**SOLVED, "pti_user_pagetable_walk": stubbed["pti_user_pagetable_walk"]}
    clone = _rebind(pti_clone_pgtable, namespace)
    result = lab06.check_clone_pgtable(clone)
    assert result.status == ck.NOT_ATTEMPTED
    assert "pti_user_pagetable_walk still raises NotImplementedError" in result.feedback


def _rebind(fn, namespace):
    """``fn`` with its globals replaced (to swap the helper it calls)."""
    return type(fn)(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)


# --- the engine side ----------------------------------------------------------------------


def test_reference_clone_is_the_kernels_own_at_pmd_level():
    """reference_clone_pgtable() at PMD level leaves the same tables as LinuxPTI's boot
    clone of the entry text (on a kernel whose boot did not clone it)."""
    ref = Kernel(isolation=lab06.LabPTI(clone=lambda *a: None), seed=6)
    own = Kernel(isolation="pti", seed=6)
    lab06.reference_clone_pgtable(ref, *ref.image.entry_text, PTI_CLONE_PMD)
    for k in (ref, own):
        k.shown = audit.mapped_ranges(k.mem, k.init_mm.user_pgd, 4, "kernel")
    assert ref.shown == own.shown


def test_clone_scenarios_exercise_what_they_claim():
    k = Kernel(isolation="pti", seed=6)
    start, end = lab06._stacks(k)
    first = {e.level: e for e in k.kernel_tables.entries(start)}
    assert not first[3].present  # the stacks range starts with a PUD hole
    start, end = lab06._image_part(k)
    assert not list(k.kernel_tables.entries(start))[-1].present  # PMD holes first
    leaf = list(k.kernel_tables.entries(end - 1))[-1]
    assert leaf.level == 2 and leaf.is_leaf  # then 2 MiB pages, at PTE level


def test_edge_cases_are_what_a_kernel_rarely_writes():
    cases = lab06.edge_cases(__import__("random").Random(lab06.check_set_user_pgtbl.seed))
    assert any(pgd == 0 for _, pgd, *_ in cases)
    assert any(not nx for _, _, nx, *_ in cases)
    assert any(pgdp_maps_userspace(p) and pgd & PAGE_PRESENT and not pgd & PAGE_USER
               for p, pgd, *_ in cases)
    assert any(not pgdp_maps_userspace(p) and pgd & PAGE_USER for p, pgd, *_ in cases)


def test_pgd_pair_memory_refuses_writes_outside_the_pair():
    mem = lab06.PgdPairMemory(lab06._DictMem(), 0x40107F8)
    mem.write_qword(kernel_to_user_pgdp(0x40107F8), 1)
    with pytest.raises(lab06.RefusedWrite, match="outside the PGD pair"):
        mem.write_qword(0x4012000, 1)
    with pytest.raises(lab06.RefusedWrite, match="64 bits"):
        mem.write_qword(0x4011000, -1)


# --- typical mistakes get specific feedback --------------------------------------------------


def set_without_nx(pgdp, pgd, mem, nx_supported):
    if pgdp_maps_userspace(pgdp):
        mem.write_qword(kernel_to_user_pgdp(pgdp), pgd)
    return pgd


def set_mirroring_everything(pgdp, pgd, mem, nx_supported):
    mem.write_qword(kernel_to_user_pgdp(pgdp), pgd)
    if pgd & (PAGE_USER | PAGE_PRESENT) == PAGE_USER | PAGE_PRESENT and nx_supported:
        pgd |= PAGE_NX
    return pgd


def set_without_mirror(pgdp, pgd, mem, nx_supported):
    return pgd | PAGE_NX if pgdp_maps_userspace(pgdp) and pgd & PAGE_USER else pgd


def set_skipping_cleared(pgdp, pgd, mem, nx_supported):
    """Mirrors only present entries: clearing a user-half slot leaves the user copy stale."""
    if pgdp_maps_userspace(pgdp) and pgd & PAGE_PRESENT:
        mem.write_qword(kernel_to_user_pgdp(pgdp), pgd)
        if pgd & PAGE_USER and nx_supported:
            pgd |= PAGE_NX
    return pgd


def set_nx_in_both(pgdp, pgd, mem, nx_supported):
    if pgdp_maps_userspace(pgdp):
        pgd |= PAGE_NX
        mem.write_qword(kernel_to_user_pgdp(pgdp), pgd)
    return pgd


def set_nx_always(pgdp, pgd, mem, nx_supported):
    if not pgdp_maps_userspace(pgdp):
        return pgd
    mem.write_qword(kernel_to_user_pgdp(pgdp), pgd)
    return pgd | PAGE_NX


def set_ignoring_nx_support(pgdp, pgd, mem, nx_supported):
    return pti_set_user_pgtbl(pgdp, pgd, mem, True)


def set_at_the_wrong_address(pgdp, pgd, mem, nx_supported):
    if pgdp_maps_userspace(pgdp):
        mem.write_qword(pgdp + 4096 * 8, pgd)
    return pgd


def set_without_return(pgdp, pgd, mem, nx_supported):
    pti_set_user_pgtbl(pgdp, pgd, mem, nx_supported)


def set_crash(pgdp, pgd, mem, nx_supported):
    return pgd + mem


def _clone_variant(**mistake):
    """The solution's pti_clone_pgtable with one mistake."""
    def walk(pti, addr, level):
        table = pti.user_pgd
        for lvl in range(4, level, -1):
            entry_pa = table + 8 * table_index(addr, lvl)
            entry = pti.mem.read_qword(entry_pa)
            if not entry & PAGE_PRESENT or mistake.get("always_alloc"):
                entry = pti.alloc_table() | KERNPG_TABLE
                pti.mem.write_qword(entry_pa, entry)
            table = entry & ADDR_MASK
        return table + 8 * table_index(addr, level)

    def clone(pti, start, end, level):
        addr = start
        while addr < end:
            pgd = pti.mem.read_qword(pti.kernel_pgd + 8 * hw_table_index(addr, 4))
            pud = pti.mem.read_qword((pgd & ADDR_MASK) + 8 * table_index(addr, 3))
            if not pud & PAGE_PRESENT:
                if mistake.get("stop_at_hole"):
                    return
                addr = lab06.round_up(addr + 1, lab06.PUD_SIZE)
                continue
            pmd_pa = (pud & ADDR_MASK) + 8 * table_index(addr, 2)
            pmd = pti.mem.read_qword(pmd_pa)
            if not pmd & PAGE_PRESENT:
                addr = lab06.round_up(addr + 1, lab06.PMD_SIZE)
                continue
            big = pmd & PAGE_PSE and not mistake.get("descend_huge")
            if big or level == PTI_CLONE_PMD or mistake.get("always_pmd"):
                if not mistake.get("no_global"):
                    pmd |= PAGE_GLOBAL
                    if not mistake.get("global_in_copy_only"):
                        pti.mem.write_qword(pmd_pa, pmd)
                pti.mem.write_qword(walk(pti, addr, 2), pmd)
                addr = lab06.round_up(addr + 1, lab06.PMD_SIZE)
                continue
            pte_pa = (pmd & ADDR_MASK) + 8 * table_index(addr, 1)
            pte = pti.mem.read_qword(pte_pa)
            if pte & PAGE_PRESENT:
                pte |= PAGE_GLOBAL
                pti.mem.write_qword(pte_pa, pte)
                pti.mem.write_qword(walk(pti, addr, 1), pte)
            addr += lab06.PAGE_SIZE

    return clone


def clone_crash(pti, start, end, level):
    return pti.mem.read_qword(pti.kernel_pgd) + pti


def clone_writing_a_negative(pti, start, end, level):
    pti.mem.write_qword(pti.user_pgd, -1)


WRONG = [
    (lab06.check_set_user_pgtbl, set_without_nx, ck.FAILED,
     ["Scenario 1 of 4", "(b) kernel_copy_lacks_nx: PGD[0]",
      "The first PGD write that differs from Linux's (step: switch A)",
      "pti_set_user_pgtbl(pgdp=0x", "PGD slot 0, user half; present, _PAGE_USER",
      "Linux: returns 0x8000", "The kernel copy lacks NX"]),
    (lab06.check_set_user_pgtbl, set_mirroring_everything, ck.FAILED,
     ["What broke:", "boot", "yours: kernel BUG", "kernel half; present, no _PAGE_USER",
      "You mirrored a kernel-half entry into the user copy"]),
    (lab06.check_set_user_pgtbl, set_without_mirror, ck.FAILED,
     ["What broke:", "step 2: switch A", "the user (shadow) PGD lacks it",
      "(unchanged)", "The user copy was not written"]),
    (lab06.check_set_user_pgtbl, set_skipping_cleared, ck.FAILED,
     ["not present (clearing the entry)", "a *stale* mapping",
      "clearing must reach both copies"]),
    (lab06.check_set_user_pgtbl, set_nx_in_both, ck.FAILED,
     ["What broke:", "killed: the same fault at 0x400000 repeats",
      "You put NX in the user copy"]),
    (lab06.check_set_user_pgtbl, set_nx_always, ck.FAILED,
     ["The kernel scenarios all passed", "clearing a user-half slot", "pgd=0x0",
      "Do not add NX here: this entry is not present"]),
    (lab06.check_set_user_pgtbl, set_ignoring_nx_support, ck.FAILED,
     ["nx_supported=False", "this CPU has no NX"]),
    (lab06.check_set_user_pgtbl, set_at_the_wrong_address, ck.FAILED,
     ["outside the PGD pair", "kernel_to_user_pgdp(pgdp) = pgdp | 4096"]),
    (lab06.check_set_user_pgtbl, set_without_return, ck.FAILED,
     ["returned None", "did you forget `return`?"]),
    (lab06.check_set_user_pgtbl, set_crash, ck.ERROR,
     ["Your code raised TypeError", "in set_crash(), line", "return pgd + mem",
      "while running pti_set_user_pgtbl(pgdp=", "during boot"]),
    (lab06.check_set_user_pgtbl, pti_set_user_pgtbl(0x800, 0, None, True), ck.ERROR,
     ["needs your function pti_set_user_pgtbl itself"]),
    (lab06.check_clone_pgtable, _clone_variant(always_alloc=True), ck.FAILED,
     ["Scenario 1 of 5", "pti_clone_pgtable(pti, 0x", "PTI_CLONE_PMD", "What broke:",
      "step 3: syscall A", "missing:", "you replaced an existing user-side table"]),
    (lab06.check_clone_pgtable, _clone_variant(no_global=True), ck.FAILED,
     ["differs:", "yours kernel RO X,", "The clone is not global"]),
    (lab06.check_clone_pgtable, _clone_variant(global_in_copy_only=True), ck.FAILED,
     ["How init_mm's kernel tables differ from Linux's",
      "Set _PAGE_GLOBAL in the kernel's own entry too"]),
    (lab06.check_clone_pgtable, _clone_variant(always_pmd=True), ck.FAILED,
     ["KAISER-style: every kernel stack, PTE level", "extra:",
      "copy the present PTEs one by one"]),
    (lab06.check_clone_pgtable, _clone_variant(stop_at_hole=True), ck.FAILED,
     ["missing:", "A hole (a PUD or PMD or PTE that is not present) is skipped"]),
    (lab06.check_clone_pgtable, _clone_variant(descend_huge=True), ck.FAILED,
     ["PTE level over holes and 2 MiB pages", "clone that PMD whole, even at PTI_CLONE_PTE"]),
    (lab06.check_clone_pgtable, clone_crash, ck.ERROR,
     ["Your code raised TypeError", "in clone_crash(), line",
      "while running pti_clone_pgtable(pti, 0x", "PTI_CLONE_PMD)"]),
    (lab06.check_clone_pgtable, clone_writing_a_negative, ck.FAILED,
     ["does not fit in 64 bits", "never a negative number"]),
]


@pytest.mark.parametrize("check, answer, status, fragments", WRONG,
                         ids=[f"{c.exercise}-{getattr(a, '__name__', 'value')}-{n}"
                              for n, (c, a, *_) in enumerate(WRONG)])
def test_wrong_answers_get_specific_feedback(check, answer, status, fragments):
    assert_feedback(check(answer), status, fragments)


def test_a_missed_cr3_switch_is_caught_by_nx_only_with_linuxs_code():
    sc = lab06.SET_SCENARIOS[-1]
    _, linux = lab06.run(sc)
    _, without_nx = lab06.run(sc, set_user_pgtbl=set_without_nx)
    assert "NX fault on the first user instruction" in linux[-1]
    assert without_nx[-1] == "ok"  # user code ran on the kernel CR3


def test_results_are_deterministic_and_json_serialisable():
    for check, answer in ((lab06.check_set_user_pgtbl, set_without_nx),
                          (lab06.check_clone_pgtable, _clone_variant(always_pmd=True))):
        first, second = check(answer), check(answer)
        assert first.text() == second.text()
        json.dumps(first.to_json())


def test_nbgrader_grading_raises_on_a_wrong_answer(monkeypatch):
    monkeypatch.setenv(ck.NBGRADER_ENV, "autograde")
    with pytest.raises(ck.CheckFailed):
        lab06.check_set_user_pgtbl(set_without_nx)
    assert lab06.check_clone_pgtable(pti_clone_pgtable).passed
