"""Which Linux: each versioned PTI behaviour pinned to its version (kernel/versions.py), the
Graz and Hansen KAISER variants, and one test per finding of issue 15 (a statement the
simulator or its docstrings made that did not match the source)."""

from __future__ import annotations

import re

import pytest
from kernel_helpers import cr3_writes, isolation_violations, recorded_ops, running

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import TraceBuilder
from kaiser_edu.kernel import audit, cpu, isolation, layout, tlbstate
from kaiser_edu.kernel import layout as L
from kaiser_edu.kernel.cpu import cpu_model, pti_decision, x86_bug_cpu_meltdown
from kaiser_edu.kernel.isolation import Kaiser2017
from kaiser_edu.kernel.machine import Kernel
from kaiser_edu.kernel.tlbstate import CpuTlbState
from kaiser_edu.kernel.versions import COMMITS, DEFAULT_LINUX, LINUX_VERSIONS, linux_version

PAGE = b.PAGE_SIZE
VERSIONS = ("4.15", "4.20", "6.1", "6.2", "6.9", "mainline")


# --- the version choice ----------------------------------------------------------------------
def test_the_versions_the_course_needs_exist_and_the_default_is_named():
    assert set(VERSIONS) <= set(LINUX_VERSIONS)
    assert DEFAULT_LINUX == "6.1"
    assert Kernel(seed=0).linux is linux_version("6.1")


@pytest.mark.parametrize("bad", ["5.0", "", None, 6.1, "Mainline"])
def test_an_unknown_version_is_refused_naming_the_known_ones(bad):
    with pytest.raises(KaiserEduError, match="known: 4.15, 4.20, 6.1"):
        Kernel(linux=bad)


def test_every_versioned_behaviour_names_a_commit():
    """Each change has a 12-digit hash, a title and the release it first appeared in."""
    for key, (sha, title, release) in COMMITS.items():
        assert re.fullmatch(r"[0-9a-f]{12}", sha), key
        assert title and re.fullmatch(r"\d\.\d+", release), key


# --- finding 1: the pti=/nopti/mitigations= decision -----------------------------------------
# cmdline -> the versions in which PTI ends up on, on a Meltdown-affected Skylake.
ON_AFFECTED = {
    "": set(VERSIONS),
    "nopti": set(),
    "pti=off": set(),
    "nopti pti=on": set(VERSIONS),  # the later word, and pti= first until 6.6
    # Up to 6.6 the pti= check came first, so pti= beats nopti whatever the order; since
    # e2efc8e7d36a the later early_param wins.
    "pti=on nopti": {"4.15", "4.20", "6.1", "6.2"},
    # mitigations= exists from 5.2 (d68be4c4d312): 4.15 and 4.20 ignore it.
    "mitigations=off": {"4.15", "4.20"},
    # 6.7 (e2efc8e7d36a): mitigations=off forces PTI off even after pti=on; mainline
    # (02c7d5b8e0d1) only turns off pti=auto.
    "pti=on mitigations=off": {"4.15", "4.20", "6.1", "6.2", "mainline"},
    "pti=auto mitigations=off": {"4.15", "4.20", "6.1", "6.2"},
}


@pytest.mark.parametrize("cmdline", ON_AFFECTED)
@pytest.mark.parametrize("version", VERSIONS)
def test_pti_decision_per_version(version, cmdline):
    on, _ = pti_decision(cmdline, cpu_model("skylake"), version)
    assert on is (version in ON_AFFECTED[cmdline])
    k = Kernel(cmdline=cmdline, linux=version, cpu="skylake")
    assert k.isolation.name == ("pti" if on else "off")


@pytest.mark.parametrize("version", VERSIONS)
def test_pti_on_forced_on_an_unaffected_cpu_prints_force_enabled(version):
    on, message = pti_decision("pti=on", cpu_model("zen2"), version)
    assert on
    assert message.splitlines() == [cpu.PTI_PREFIX + "force enabled on command line.",
                                    cpu.PTI_PREFIX + "enabled"]


def test_pti_auto_with_mitigations_off_differs_between_6_1_and_mainline():
    """The issue's example: pti=auto mitigations=off on a Meltdown CPU."""
    skylake = cpu_model("skylake")
    assert pti_decision("pti=auto mitigations=off", skylake, "6.1")[0] is True
    assert pti_decision("pti=auto mitigations=off", skylake, "mainline") == (
        False, cpu.PTI_PREFIX + "disabled on command line.")


def test_the_default_decision_is_the_6_1_one():
    for cmdline in ON_AFFECTED:
        assert pti_decision(cmdline, cpu_model("skylake")) == pti_decision(
            cmdline, cpu_model("skylake"), "6.1")


# --- finding 2: Graz KAISER vs Hansen's series -----------------------------------------------
def _user_pgd_pairs(k, task):
    k.user_store(task, 0x600000, 1)  # the data VMA: a present user PGD entry
    for index in range(256):
        user = k.mem.read_qword(task.mm.user_pgd + 8 * index)
        if user & b.PAGE_PRESENT:
            yield k.mem.read_qword(task.mm.pgd + 8 * index), user


def test_graz_clears_the_user_bit_in_the_kernel_copy_hansen_sets_nx():
    """Graz: ``pgdp->pgd = pgd.pgd & ~_PAGE_USER``; Hansen (and PTI): ``pgd.pgd | _PAGE_NX``."""
    ignore = b.PAGE_ACCESSED | b.PAGE_DIRTY
    k, task = running("kaiser", isolation=Kaiser2017(variant="graz"))
    pairs = list(_user_pgd_pairs(k, task))
    assert pairs
    for kern, user in pairs:
        assert user & b.PAGE_USER and not user & b.PAGE_NX
        assert kern & ~ignore == user & ~b.PAGE_USER & ~ignore
    k, task = running("kaiser", isolation=Kaiser2017(variant="hansen"))
    for kern, user in _user_pgd_pairs(k, task):
        assert kern & ~ignore == (user | b.PAGE_NX) & ~ignore


@pytest.mark.parametrize("variant", ["graz", "hansen"])
def test_the_audit_accepts_each_variant_and_rejects_the_other_marking(variant):
    k, task = running("kaiser", isolation=Kaiser2017(variant=variant))
    assert isolation_violations(k, task.mm) == []
    other = "nx" if variant == "graz" else "no-user"
    wrong = audit.check_isolation(k.mem, task.mm.pgd, task.mm.user_pgd,
                                  k.isolation.shadow_allowed(), kernel_copy=other)
    expected = "user_half_diverges" if variant == "graz" else "kernel_copy_lacks_nx"
    assert expected in {v.invariant for v in wrong}


def test_graz_remove_mapping_does_not_flush_hansen_does():
    """Graz's kaiser_remove_mapping() is unmap_pud_range() alone: a TLB entry made through
    the shadow outlives the mapping. Hansen's flushes."""
    for variant, survives in (("graz", True), ("hansen", False)):
        k, task = running("kaiser", isolation=Kaiser2017(variant=variant), pcid=False)
        page = k.image.secret
        k.isolation.kaiser_add_mapping(page, PAGE, b.PAGE_KERNEL_RO, "test page")
        assert k.run_ops(TraceBuilder().read(page, cpl=0))[0].ok  # on the user CR3
        k.isolation.kaiser_remove_mapping(page, PAGE)
        assert audit.translate(k.mem, task.mm.user_pgd, page) is None
        still = any(e["va"] == page for e in k.mmu.tlb_entries())
        assert still is survives, variant
        assert k.run_ops(TraceBuilder().read(page, cpl=0))[0].ok is survives


def test_graz_maps_kernel_stacks_hansen_enters_on_a_trampoline_stack():
    k, task = running("kaiser", isolation=Kaiser2017(variant="graz"))
    assert any(name == f"kernel stack of pid {task.pid}" for *_r, name in k.isolation.mapped)
    assert audit.translate(k.mem, task.mm.user_pgd, task.stack_base) is not None
    k, task = running("kaiser", isolation=Kaiser2017(variant="hansen"))
    assert not any("kernel stack" in name for *_r, name in k.isolation.mapped)
    assert audit.translate(k.mem, task.mm.user_pgd, task.stack_base) is None
    assert k.syscall(task).ok  # the entry stack in the cpu_entry_area suffices


def test_graz_interrupt_frames_land_on_the_mapped_task_stack_hansen_on_the_entry_stack():
    """Graz: TSS.sp0 is the task's kernel stack, pushed to on the user CR3, and the exit
    reads the frame back after SWITCH_USER_CR3: the stack mapping is what makes it work.
    Hansen (v2+) and PTI use the per-CPU entry (trampoline) stack in the cpu_entry_area."""
    for variant in ("graz", "hansen"):
        k, task = running("kaiser", isolation=Kaiser2017(variant=variant))
        with recorded_ops(k) as ops:
            assert k.interrupt(task).ok
        writes = [addr for name, addr, _ in ops if name == "write"]
        if variant == "graz":
            assert writes[0] == task.stack_top - 8
            assert ("read", task.stack_top - 0x10) in [(n, a) for n, a, _ in ops]
        else:
            assert writes[0] == k.cea("entry stack") + 0xFF8


def test_graz_without_its_stack_mappings_cannot_even_return_to_user_mode():
    """The first exit reads its frame from the task stack on the user CR3: unmapped there."""
    k = Kernel(isolation=Kaiser2017(variant="graz", map_kernel_stacks=False), seed=0)
    task = k.spawn("test")
    assert not k.switch_to(task).ok and k.entry.halted
    assert f"{task.stack_top - 0x10:#x}" in k.entry.halted


def test_graz_has_no_pcids_and_no_global_pages_hansen_has_both():
    graz = Kernel(isolation=Kaiser2017(variant="graz"), cpu="skylake", seed=0)
    hansen = Kernel(isolation=Kaiser2017(variant="hansen"), cpu="skylake", seed=0)
    assert graz.tlbstate.pcid is False and hansen.tlbstate.pcid is True
    idt = L.CPU_ENTRY_AREA_BASE
    assert not graz.kernel_tables.leaf(idt).value & b.PAGE_GLOBAL
    assert hansen.kernel_tables.leaf(idt).value & b.PAGE_GLOBAL


def test_graz_builds_the_shadow_kernel_half_with_page_table_hansen_with_kernpg_table():
    """Hansen's core patch: "Use _KERNPG_TABLE, not _PAGE_TABLE when creating mappings for
    the kernel in the shadow (user) page tables." The leaf PTEs have no U bit in either, so
    user mode still cannot reach the pages (the audit tests above)."""
    low = b.PAGE_ACCESSED | b.PAGE_DIRTY
    for variant, flags in (("graz", b.PAGE_TABLE), ("hansen", b.KERNPG_TABLE)):
        k = Kernel(isolation=Kaiser2017(variant=variant), seed=0)
        entries = [k.mem.read_qword(k.init_mm.user_pgd + 8 * i) for i in range(256, 512)]
        assert all(e & b.PAGE_PRESENT for e in entries)  # kaiser_init() pre-populates all
        assert {e & 0xFFF & ~low for e in entries} == {flags & ~low}, variant


def test_a_missed_cr3_switch_is_a_user_bit_fault_under_graz():
    k, task = running("kaiser", isolation=Kaiser2017(variant="graz"))
    k.entry.skip_switch_to_user_cr3 = True
    assert k.syscall(task).status == "killed"
    assert "U/S fault" in task.exit_reason and "0x15" in task.exit_reason


def test_an_unknown_kaiser_variant_is_refused():
    with pytest.raises(KaiserEduError, match="graz or hansen"):
        Kaiser2017(variant="iaik")


# --- finding 3: the SYSCALL entry trampoline (4.15) vs the TSS clone (4.20) -------------------
def _syscall_ops(version):
    k, task = running("pti", linux=version)
    with recorded_ops(k) as ops:
        assert k.syscall(task).ok
    return k, task, ops


def test_4_15_enters_syscall_through_the_cpu_entry_area_trampoline():
    k, task, ops = _syscall_ops("4.15")
    assert ops[0] == ("fetch", k.cea("entry trampoline"), ops[0][2])
    assert ops[1][:2] == ("write", k.cea("entry stack") + 0xFF8)  # RSP_SCRATCH
    tss = k.image.percpu("cpu_tss_rw")
    assert audit.translate(k.mem, task.mm.user_pgd, tss) is None  # no TSS clone
    assert isolation_violations(k, task.mm) == []


@pytest.mark.parametrize("version", ["4.20", "6.1", "mainline"])
def test_from_4_20_syscall_spills_rsp_into_the_cloned_tss(version):
    k, task, ops = _syscall_ops(version)
    assert ops[0][:2] == ("fetch", k.image.symbol("entry_SYSCALL_64"))
    tss = k.image.percpu("cpu_tss_rw")
    assert ops[1][:2] == ("write", tss + 0x14)  # tss.sp2, still on the user CR3
    assert audit.translate(k.mem, task.mm.user_pgd, tss) is not None
    assert "entry trampoline" not in [name for name, *_ in k.cea_pages()]


# --- finding 4: the cpu_entry_area is randomised from 6.2 ------------------------------------
@pytest.mark.parametrize("version", ["4.15", "4.20", "6.1"])
def test_up_to_6_1_cpu_0s_area_is_one_page_above_the_base(version):
    for seed in range(5):
        k = Kernel(seed=seed, linux=version)
        assert k.layout.cpu_entry_area(0) == L.CPU_ENTRY_AREA_BASE + PAGE
        assert k.cea("GDT") == L.CPU_ENTRY_AREA_BASE + PAGE


@pytest.mark.parametrize("version", ["6.2", "6.9", "mainline"])
def test_from_6_2_cpu_0s_area_is_at_a_random_slot_of_the_p4d(version):
    """97e3d26b5e5f init_cea_offsets(): a random slot below
    (CPU_ENTRY_AREA_MAP_SIZE - PAGE_SIZE) / CPU_ENTRY_AREA_SIZE; the read-only IDT stays at
    CPU_ENTRY_AREA_BASE; the same seed gives the same slot."""
    starts = set()
    for seed in range(8):
        k = Kernel(seed=seed, linux=version)
        start = k.layout.cpu_entry_area(0)
        starts.add(start)
        assert L.CPU_ENTRY_AREA_PER_CPU <= start
        assert start + L.CPU_ENTRY_AREA_SIZE <= L.CPU_ENTRY_AREA_BASE + (1 << 39)
        assert (start - L.CPU_ENTRY_AREA_PER_CPU) % L.CPU_ENTRY_AREA_SIZE == 0
        assert k.cea("IDT (read-only)") == L.CPU_ENTRY_AREA_BASE
        assert Kernel(seed=seed, linux=version).layout.cpu_entry_area(0) == start
    assert len(starts) >= 7  # 2**16 slots: 8 seeds collide with negligible probability


def test_the_other_regions_do_not_move_with_the_cpu_entry_area():
    fixed, shuffled = Kernel(seed=3, linux="6.1").layout, Kernel(seed=3, linux="6.2").layout
    assert (fixed.page_offset, fixed.vmalloc_base, fixed.kernel_text) == (
        shuffled.page_offset, shuffled.vmalloc_base, shuffled.kernel_text)


def test_6_2_shuffles_even_without_kaslr_later_versions_do_not():
    """a3f547addcaa "x86/mm: Do not shuffle CPU entry areas without KASLR"."""
    fixed_start = L.CPU_ENTRY_AREA_BASE + PAGE
    assert any(Kernel(seed=s, kaslr=False, linux="6.2").layout.cpu_entry_area(0)
               != fixed_start for s in range(4))
    for version in ("6.9", "mainline"):
        for seed in range(4):
            assert Kernel(seed=seed, kaslr=False, linux=version).layout.cpu_entry_area(0) \
                == fixed_start


@pytest.mark.parametrize("mode", ["pti", "kaiser"])
def test_transitions_work_with_a_randomised_cpu_entry_area(mode):
    k, task = running(mode, linux="mainline", seed=5)
    assert k.layout.cpu_entry_area(0) != L.CPU_ENTRY_AREA_BASE + PAGE
    assert k.syscall(task).ok and k.interrupt(task).ok and k.nmi(task, from_kernel=True).ok
    assert isolation_violations(k, task.mm) == []


def test_layout_refuses_other_cpus_in_a_randomised_layout():
    lay = layout.KernelLayout.boot(1, randomize_cea=True)
    with pytest.raises(KaiserEduError, match="cpu=0"):
        lay.cpu_entry_area(1)
    assert layout.KernelLayout.boot(1).cpu_entry_area(2) == (
        L.CPU_ENTRY_AREA_PER_CPU + 2 * L.CPU_ENTRY_AREA_SIZE)


# --- RESTORE_CR3: written back up to 6.8, skipped from 6.9 -----------------------------------
@pytest.mark.parametrize(("version", "writes"), [("4.15", True), ("6.1", True), ("6.2", True),
                                                 ("6.9", False), ("mainline", False)])
def test_restore_cr3_after_an_nmi_in_the_kernel(version, writes):
    k, task = running("pti", linux=version)
    labels = []
    k.entry.on_path = labels.extend
    with recorded_ops(k) as ops:
        assert k.nmi(task, from_kernel=True).ok
    assert ("RESTORE_CR3" in labels) is writes
    kernel_cr3 = k.kernel_cr3(task.mm)
    restores = [v for v in cr3_writes(ops) if v & ~b.X86_CR3_PCID_NOFLUSH == kernel_cr3]
    # the syscall's SWITCH_TO_KERNEL_CR3, plus RESTORE_CR3's write-back (with NOFLUSH)
    assert len(restores) == (2 if writes else 1)
    assert all(v & b.X86_CR3_PCID_NOFLUSH for v in restores)


# --- finding 5: the LDT slot is copied per process, on its first LDT -------------------------
def test_the_ldt_slot_reaches_a_user_pgd_only_when_that_process_installs_an_ldt():
    k, task = running("pti")
    other = k.spawn("other")
    slot = task.mm.user_pgd + 8 * (L.LDT_BASE_ADDR >> 39 & 0x1FF)
    assert k.mem.read_qword(slot) == 0  # nothing cloned at boot
    assert k.mem.read_qword(k.init_mm.user_pgd + (slot & 0xFFF)) == 0
    k.modify_ldt(task, 0, 0x00CF_FA00_0000_FFFF)
    assert k.mem.read_qword(slot) & b.PAGE_PRESENT  # map_ldt_struct_to_user()
    assert k.mem.read_qword(other.mm.user_pgd + (slot & 0xFFF)) == 0


# --- finding 6: a cached ASID keeps its TLB entries only if they are current -----------------
def test_choose_new_asid_flushes_a_cached_address_space_whose_tlb_gen_is_behind():
    ts = CpuTlbState(pcid=True, pti=True, invpcid=True)
    ts.ctxs[3].ctx_id, ts.ctxs[3].tlb_gen = 42, 7
    assert ts.choose_new_asid(42, 7) == (3, False)
    assert ts.choose_new_asid(42, 8) == (3, True)
    assert "intact" not in tlbstate.__doc__ and "tlb_gen" in tlbstate.__doc__


# --- finding 7: X86_BUG_CPU_MELTDOWN follows cpu_vuln_whitelist, not just AMD/RDCL_NO ---------
@pytest.mark.parametrize(("vendor", "family", "model", "rdcl_no", "affected"), [
    ("GenuineIntel", 6, "SKYLAKE", False, True),
    ("GenuineIntel", 6, "ICELAKE_X", True, False),       # RDCL_NO
    ("GenuineIntel", 6, "ATOM_BONNELL", False, False),   # NO_SPECULATION
    ("GenuineIntel", 6, "ATOM_SALTWELL", False, False),
    ("GenuineIntel", 5, "", False, False),               # family 5: no speculation
    ("AuthenticAMD", 23, "", False, False),
    ("HygonGenuine", 24, "", False, False),
    ("Vortex86 SoC", 6, "", False, False),
    ("CentaurHauls", 6, "", False, True),
])
def test_x86_bug_cpu_meltdown_follows_the_whitelist(vendor, family, model, rdcl_no, affected):
    assert x86_bug_cpu_meltdown(vendor, family, model, rdcl_no) is affected


def test_the_cpu_module_no_longer_says_only_amd_or_rdcl_no():
    assert "unless the CPU is AMD or reports RDCL_NO" not in (cpu.__doc__ or "")


# --- docstrings that named the wrong version -------------------------------------------------
def test_docstrings_name_versions_not_a_mix():
    assert "as merged for Linux 4.15" not in isolation.__doc__
    assert "bf904d2762ee" in isolation.__doc__
    assert "97e3d26b5e5f" in layout.__doc__
    assert "as of Linux 6.6" not in (cpu.pti_decision.__doc__ or "")
    assert "e2efc8e7d36a" in cpu.pti_decision.__doc__


# --- finding 9 and the README ------------------------------------------------------------------
def test_the_readme_names_the_default_version_and_does_not_overclaim_the_sdm():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    design = readme[readme.index("## Design decisions"):]
    assert f"Which Linux: {DEFAULT_LINUX} by default" in design
    assert "since Linux 6.6 (pti= wins over mitigations=off)" not in readme
    assert "model's choice" in design[design.index("bit 63 while CR4.PCIDE=0"):][:600]
