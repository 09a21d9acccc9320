"""The per-process LDT remap (arch/x86/kernel/ldt.c) and the vsyscall page
(arch/x86/entry/vsyscall/vsyscall_64.c, pti.c: pti_setup_vsyscall()), one test per behaviour.
"""

from __future__ import annotations

import pytest
from kernel_helpers import ADDR, MODES, PAGE, boot, isolation_violations, running

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import table_index
from kaiser_edu.kernel import audit
from kaiser_edu.kernel import layout as L
from kaiser_edu.kernel.ldt import LDT_ENTRIES, ldt_base, ldt_slot_va

DESC = 0x00CF_9200_0000_FFFF  # a flat 4 GiB data segment
LDT_PGD_INDEX = table_index(L.LDT_BASE_ADDR, 4)


def pgd_entry(k, pgd_pa: int, index: int) -> int:
    return k.mem.read_qword(pgd_pa | index << 3)


# --- the LDT ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_descriptor_written_with_modify_ldt_is_what_a_segment_load_reads(mode):
    """write_ldt() then a selector load with TI=1: the CPU reads the descriptor back (an
    implicit supervisor access from user mode, on whatever CR3 user code runs)."""
    k, t = running(mode)
    k.modify_ldt(t, 3, DESC)
    assert k.load_ldt_descriptor(t, 3) == DESC
    assert k.load_ldt_descriptor(t, 0) == 0  # a new LDT is zero-filled


def test_pti_maps_the_ldt_read_only_non_global_in_slot_0():
    """map_ldt_struct(): __PAGE_KERNEL_RO & ~_PAGE_GLOBAL at LDT_BASE_ADDR, slot 0 first."""
    k, t = running("pti")
    k.modify_ldt(t, 0, DESC)
    assert ldt_base(k, t.mm) == ldt_slot_va(0) == L.LDT_BASE_ADDR
    pte = t.mm.tables.leaf(L.LDT_BASE_ADDR).value
    assert pte & b.PAGE_PRESENT and not pte & (b.PAGE_RW | b.PAGE_GLOBAL | b.PAGE_USER)
    assert pte & b.PAGE_NX
    assert pte & ADDR == t.mm.ldt.pa


def test_pti_copies_the_ldt_pgd_entry_into_the_user_pgd_once():
    """map_ldt_struct_to_user(): set_pgd(kernel_to_user_pgdp(pgd), *pgd) the first time, so
    both PGDs share the slot's lower tables; the user copy is what SYSRET'd code runs on."""
    k, t = running("pti")
    assert pgd_entry(k, t.mm.user_pgd, LDT_PGD_INDEX) == 0
    k.modify_ldt(t, 0, DESC)
    kernel_entry = pgd_entry(k, t.mm.pgd, LDT_PGD_INDEX)
    assert kernel_entry & b.PAGE_PRESENT
    assert pgd_entry(k, t.mm.user_pgd, LDT_PGD_INDEX) == kernel_entry
    assert k.cr3 & (1 << 12), "the descriptor was read on the user CR3"


def test_pti_a_new_ldt_goes_to_the_other_slot_and_the_old_one_is_unmapped():
    """write_ldt(): map_ldt_struct(mm, new_ldt, old_ldt ? !old_ldt->slot : 0), install_ldt(),
    then unmap_ldt_struct(old) clears its PTEs and flushes them."""
    k, t = running("pti")
    k.modify_ldt(t, 0, DESC)
    assert k.load_ldt_descriptor(t, 0) == DESC  # slot 0's translation is now in the TLB
    k.modify_ldt(t, 1, DESC + 1)
    assert t.mm.ldt.slot == 1 and ldt_base(k, t.mm) == ldt_slot_va(1)
    assert t.mm.tables.leaf(ldt_slot_va(0)) is None
    assert [k.load_ldt_descriptor(t, i) for i in (0, 1)] == [DESC, DESC + 1]
    k.modify_ldt(t, 2, 7)
    assert t.mm.ldt.slot == 0 and t.mm.tables.leaf(ldt_slot_va(1)) is None
    usable = [e for e in k.mmu.tlb_entries()
              if ldt_slot_va(1) <= e["va"] < ldt_slot_va(2) and not e["global"]]
    assert not usable, f"slot 1 still cached after unmap_ldt_struct(): {usable}"


def test_pti_the_ldt_is_per_process_and_fork_copies_it():
    """The slot is in each mm's own tables (not cloned from init_mm); ldt_dup_context() gives
    the child a copy mapped in its slot 0, on tables of its own."""
    k, t = running("pti")
    other = k.spawn("other")
    k.modify_ldt(t, 4, DESC)
    assert pgd_entry(k, other.mm.pgd, LDT_PGD_INDEX) == 0
    assert pgd_entry(k, k.init_mm.pgd, LDT_PGD_INDEX) == 0
    child = k.fork(t)
    assert child.mm.ldt.pa != t.mm.ldt.pa and child.mm.ldt.slot == 0
    assert pgd_entry(k, child.mm.pgd, LDT_PGD_INDEX) != pgd_entry(k, t.mm.pgd, LDT_PGD_INDEX)
    assert k.switch_to(child).ok
    assert k.load_ldt_descriptor(child, 4) == DESC


def test_pti_without_the_user_copy_a_segment_load_faults():
    """Why map_ldt_struct_to_user() exists: with the slot missing from the user PGD the
    CPU's descriptor read faults under the user CR3."""
    k, t = running("pti")
    k.modify_ldt(t, 0, DESC)
    k.mem.write_qword(t.mm.user_pgd | LDT_PGD_INDEX << 3, 0)
    k.flush_tlb_all()
    assert k.load_ldt_descriptor(t, 0) is None
    assert "not mapped in the tables user mode runs on" in t.exit_reason


def test_without_pti_the_ldt_is_reached_through_the_direct_map():
    """map_ldt_struct() returns early without X86_FEATURE_PTI: LDTR points at the LDT's own
    (direct-map) address and no slot is mapped."""
    k, t = running("off")
    k.modify_ldt(t, 0, DESC)
    assert t.mm.ldt.slot == -1
    assert ldt_base(k, t.mm) == k.layout.direct_map(t.mm.ldt.pa)
    assert pgd_entry(k, t.mm.pgd, LDT_PGD_INDEX) == 0


def test_kaiser_maps_each_ldt_with_kaiser_add_mapping_and_removes_it():
    """KAISER (Hansen's series, "map dynamically-allocated LDTs"): kaiser_add_mapping() of
    the LDT where it was allocated; kaiser_remove_mapping() when it is freed."""
    k, t = running("kaiser")
    k.modify_ldt(t, 0, DESC)
    first = k.layout.direct_map(t.mm.ldt.pa)
    assert (first, first + PAGE, "LDT") in k.isolation.shadow_allowed()
    assert audit.translate(k.mem, t.mm.user_pgd, first) == t.mm.ldt.pa
    k.modify_ldt(t, 1, DESC)
    assert (first, first + PAGE, "LDT") not in k.isolation.shadow_allowed()
    assert audit.translate(k.mem, t.mm.user_pgd, first) is None
    assert k.load_ldt_descriptor(t, 0) == DESC


@pytest.mark.parametrize("mode", MODES)
def test_execve_drops_the_ldt(mode):
    """A new program starts without an LDT: loading an LDT selector is a #GP (SIGSEGV)."""
    k, t = running(mode)
    k.modify_ldt(t, 2, DESC)
    k.execve(t, "fresh")
    assert t.mm.ldt is None
    if k.isolation.name == "pti":
        assert pgd_entry(k, t.mm.pgd, LDT_PGD_INDEX) == 0
        assert pgd_entry(k, t.mm.user_pgd, LDT_PGD_INDEX) == 0
    assert k.load_ldt_descriptor(t, 2) is None and "#GP" in t.exit_reason


def test_a_selector_beyond_the_ldt_is_a_general_protection_fault():
    k, t = running("pti")
    k.modify_ldt(t, 1, DESC)
    assert k.load_ldt_descriptor(t, 2) is None
    assert "#GP" in t.exit_reason


@pytest.mark.parametrize("mode", [m for m in MODES if m != "off"])
def test_isolation_invariants_hold_with_ldts(mode):
    """The LDT slot is one of the kernel ranges the user PGD may map (pti.c / audit (a))."""
    k, t = running(mode)
    k.modify_ldt(t, 0, DESC)
    child = k.fork(t)
    k.modify_ldt(t, 600, DESC)  # two pages
    for task in (t, child):
        assert not isolation_violations(k, task.mm)
    if mode.startswith("pti"):
        names = {name for _r, name in audit.kernel_visible_ranges(
            k.mem, t.mm.user_pgd, k.isolation.shadow_allowed())}
        assert "LDT" in names


@pytest.mark.parametrize("entry, desc, match", [
    (LDT_ENTRIES, DESC, "entry_number must be in 0..8191"),
    (-1, DESC, "entry_number"),
    (0, 1 << 64, "64-bit integer"),
    (0, "0x1", "64-bit integer"),
])
def test_modify_ldt_rejects_bad_input(entry, desc, match):
    k, t = running("pti")
    with pytest.raises(KaiserEduError, match=match):
        k.modify_ldt(t, entry, desc)
    assert t.mm.ldt is None


# --- vsyscall -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_vsyscall_xonly_is_the_default_and_maps_nothing(mode):
    """CONFIG_LEGACY_VSYSCALL_XONLY (default since 5.3): no PTE backs the page."""
    k, t = running(mode)
    assert k.vsyscall == "xonly"
    assert k.kernel_tables.translate(L.VSYSCALL_ADDR) is None
    assert k.user_access(t, L.VSYSCALL_ADDR, "read") is None


@pytest.mark.parametrize("mode", MODES)
def test_vsyscall_emulate_maps_a_user_readable_nx_page(mode):
    """map_vsyscall(): PAGE_KERNEL_VVAR (user, read-only, NX) and _PAGE_USER on every level
    above it; pti_setup_vsyscall() does the same in the user tables. Reads work, writes and
    calls fault (a call would be emulated by Linux; the simulator kills the task)."""
    k, t = running(mode, vsyscall="emulate")
    pte = k.kernel_tables.leaf(L.VSYSCALL_ADDR).value
    assert pte & b.PAGE_USER and pte & b.PAGE_NX and not pte & b.PAGE_RW
    pa = k.user_access(t, L.VSYSCALL_ADDR, "read")
    assert pa == pte & ADDR
    assert k.mem.read_qword(pa) == 0x0F00_0000_60C0_C748  # mov $0x60, %rax; syscall
    assert k.user_access(t, L.VSYSCALL_ADDR, "write") is None
    k, t = running(mode, vsyscall="emulate")
    assert k.user_access(t, L.VSYSCALL_ADDR + 0x400, "fetch") is None


@pytest.mark.parametrize("mode", [m for m in MODES if m != "off"])
def test_vsyscall_is_the_one_user_page_the_user_pgd_has_in_the_kernel_half(mode):
    """Audit invariant (d): nothing in the user PGD's kernel half is user-accessible except
    the vsyscall page."""
    k, t = running(mode, vsyscall="emulate")
    assert not isolation_violations(k, t.mm)
    user = [r for r, _ in audit.kernel_visible_ranges(k.mem, t.mm.user_pgd) if r.user]
    assert [(r.start, r.end) for r in user] == [(L.VSYSCALL_ADDR, L.VSYSCALL_ADDR + PAGE)]


def test_vsyscall_mode_is_checked():
    with pytest.raises(KaiserEduError, match="vsyscall must be one of xonly, emulate, none"):
        boot("pti", vsyscall="native")
