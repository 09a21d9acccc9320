"""The Linux mechanisms the simulated kernel (kaiser_edu/kernel) reproduces, one test each.

Every docstring names the Linux behaviour it checks (file and function); the facts are
collected in shared/reference/pti-facts.md sections 2-3.
"""

from __future__ import annotations

import pytest
from kernel_helpers import (
    DATA,
    MODES,
    NOFLUSH,
    PAGE,
    START_BRK,
    boot,
    cr3_writes,
    events_of,
    index_of_fetch,
    isolation_violations,
    recorded_ops,
    running,
    user_tables,
)

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import TraceBuilder
from kaiser_edu.kernel import audit
from kaiser_edu.kernel import layout as L
from kaiser_edu.kernel.cpu import CPU_MODELS, PTI_PREFIX, cpu_model, pti_decision
from kaiser_edu.kernel.events import decode_cr3
from kaiser_edu.kernel.isolation import Kaiser2017, LinuxPTI
from kaiser_edu.kernel.machine import USER_TEXT, Kernel, TaskKilled
from kaiser_edu.kernel.mm import PROT_NONE, PROT_READ, PROT_WRITE
from kaiser_edu.kernel.tlbstate import TLB_NR_DYN_ASIDS

USER_PGD_BIT = 1 << 12  # PTI_USER_PGTABLE_MASK
USER_PCID_BIT = 1 << 11  # X86_CR3_PTI_PCID_USER_BIT
RW = PROT_READ | PROT_WRITE


def translates(k: Kernel, pgd: int, va: int) -> bool:
    return audit.translate(k.mem, pgd, va) is not None


def kernel_ranges(k: Kernel, pgd: int) -> list[audit.MappedRange]:
    return list(audit.mapped_ranges(k.mem, pgd, half="kernel"))


def range_of(ranges, va: int) -> audit.MappedRange:
    return next(r for r in ranges if r.contains(va))


def counters_during(k: Kernel, fn) -> dict[str, int]:
    before = k.mmu.counters
    fn()
    return {name: value - before[name] for name, value in k.mmu.counters.items()}


# --- pti= and the CPU models (arch/x86/mm/pti.c) -----------------------------------------
# (cmdline, on a Meltdown-affected CPU, on an unaffected one): (PTI on?, what Linux prints).
# pti_check_boottime_disable() prints through pti_print_if_insecure() (affected CPUs only)
# and pti_print_if_secure() (unaffected only); pti_init() prints "enabled".
FORCED = ("force enabled on command line.", "enabled")
PTI_TABLE = {
    "": ((True, ("enabled",)), (False, ())),
    "pti=auto": ((True, ("enabled",)), (False, ())),
    "pti=on": ((True, ("enabled",)), (True, FORCED)),
    "pti=off": ((False, ("disabled on command line.",)), (False, ())),
    "nopti": ((False, ("disabled on command line.",)), (False, ())),
    "quiet mitigations=off": ((False, ("disabled on command line.",)), (False, ())),
    # Linux 6.1, the default: any pti= beats nopti and mitigations=off, in either order
    # (tests/test_kernel_versions.py pins the other versions).
    "mitigations=off pti=on": ((True, ("enabled",)), (True, FORCED)),
    "pti=auto mitigations=off": ((True, ("enabled",)), (False, ())),
    "pti=on nopti": ((True, ("enabled",)), (True, FORCED)),
    "nopti pti=on": ((True, ("enabled",)), (True, FORCED)),
}


@pytest.mark.parametrize("cmdline", PTI_TABLE)
@pytest.mark.parametrize("cpu", CPU_MODELS)
def test_pti_boot_decision_and_message(cpu, cmdline):
    """pti.c pti_check_boottime_disable(): pti=on forces PTI on, pti=off and nopti force it
    off, pti=auto (the default) enables it only with X86_BUG_CPU_MELTDOWN (Intel before Ice
    Lake's RDCL_NO; never AMD); in Linux 6.1 (the default) mitigations=off and nopti force
    it off unless pti= was given. The
    messages are exactly Linux's log lines, with the pr_fmt prefix; none where Linux prints
    nothing."""
    affected = CPU_MODELS[cpu].meltdown
    want_on, want_lines = PTI_TABLE[cmdline][0 if affected else 1]
    on, message = pti_decision(cmdline, cpu_model(cpu))
    assert on is want_on
    assert message == "\n".join(PTI_PREFIX + line for line in want_lines)
    k = Kernel(cpu=cpu, cmdline=cmdline)
    assert k.isolation.name == ("pti" if want_on else "off")
    assert k.pti_message == message


def test_pti_rejects_unknown_values():
    """pti.c pti_parse_cmdline(): any value other than on, off, auto is -EINVAL."""
    with pytest.raises(KaiserEduError, match="EINVAL"):
        Kernel(cmdline="pti=maybe")


def test_explicit_isolation_overrides_the_cmdline():
    """The lessons pick a mode directly; the cmdline decision is still reported."""
    k = Kernel(isolation="kaiser", cpu="zen2", cmdline="pti=off")
    assert k.isolation.name == "kaiser"
    assert k.pti_message == pti_decision("pti=off", cpu_model("zen2"))[1]


@pytest.mark.parametrize(("cpu", "pcid", "invpcid"), [
    ("skylake", True, True), ("westmere", True, False), ("core2", False, False)])
def test_pti_uses_pcid_and_invpcid_when_the_cpu_has_them(cpu, pcid, invpcid):
    """arch/x86/kernel/cpu/common.c setup_pcid() sets CR4.PCIDE when X86_FEATURE_PCID is
    present; tlb.c uses INVPCID for the user PCID only if the CPU has it."""
    k = Kernel(isolation="pti", cpu=cpu)
    assert (k.tlbstate.pcid, k.tlbstate.invpcid) == (pcid, invpcid)
    assert bool(k.mmu.regs.cr4 & b.X86_CR4_PCIDE) is pcid


def test_pcid_cannot_be_forced_on_a_cpu_without_it():
    """CR4.PCIDE can only be set if CPUID reports PCID (SDM 4.10.1)."""
    with pytest.raises(KaiserEduError, match="no PCID"):
        Kernel(isolation="pti", cpu="core2", pcid=True)


def test_kaiser_runs_without_pcid_by_default():
    """KAISER as first posted (IAIK patch, Hansen's v1) switched CR3 without PCIDs: every
    switch flushes the TLB."""
    assert Kernel(isolation="kaiser", cpu="skylake").tlbstate.pcid is False


# --- KASLR (arch/x86/mm/kaslr.c, arch/x86/boot/compressed/kaslr.c) -----------------------
def test_kaslr_same_seed_same_layout_different_seeds_differ():
    """kernel_randomize_memory() draws the region offsets from boot entropy; here the seed
    is the entropy, so a lesson can reproduce a layout, and other seeds move it."""
    assert L.KernelLayout.boot(7) == L.KernelLayout.boot(7)
    assert boot("pti", seed=7).image.secret == boot("off", seed=7).image.secret
    layouts = {L.KernelLayout.boot(seed) for seed in range(20)}
    assert len(layouts) == 20
    assert len({lay.page_offset for lay in layouts}) == 20
    assert len({lay.text_offset for lay in layouts}) > 15


@pytest.mark.parametrize("seed", range(0, 200, 7))
def test_kaslr_regions_aligned_disjoint_and_inside_their_windows(seed):
    """kernel_randomize_memory(): direct map, vmalloc and vmemmap, in that order, each moved
    by a multiple of PUD_SIZE (1 GiB) inside [__PAGE_OFFSET_BASE, end of vmemmap window),
    never overlapping; the image moves by a multiple of 2 MiB (CONFIG_PHYSICAL_ALIGN) above
    16 MiB and stays inside its 1 GiB window below the modules area."""
    lay = L.KernelLayout.boot(seed)
    regions = [(lay.page_offset, 64 << 40), (lay.vmalloc_base, 32 << 40),
               (lay.vmemmap_base, 1 << 40)]
    for start, _ in regions:
        assert start % b.PUD_SIZE == 0
    for (s1, n1), (s2, _) in zip(regions, regions[1:]):
        assert s1 + n1 <= s2
    assert regions[0][0] >= L.PAGE_OFFSET_BASE
    assert regions[-1][0] + regions[-1][1] <= 0xFFFF_FC00_0000_0000 <= L.CPU_ENTRY_AREA_BASE
    assert lay.text_offset % b.PMD_SIZE == 0 and lay.text_offset >= L.LOAD_PHYSICAL_ADDR
    image = Kernel(seed=seed).image
    assert image.text == lay.kernel_text
    assert L.START_KERNEL_MAP <= image.text and image.end <= L.MODULES_VADDR


def test_kaslr_off_gives_the_documented_layout():
    """Documentation/arch/x86/x86_64/mm.rst (4-level): direct map at ffff888000000000,
    vmalloc at ffffc90000000000, vmemmap at ffffea0000000000, _text at ffffffff81000000
    (__START_KERNEL_map + LOAD_PHYSICAL_ADDR 16 MiB), cpu_entry_area at fffffe0000000000."""
    lay = L.KernelLayout.boot(3, kaslr=False)
    assert lay.page_offset == 0xFFFF_8880_0000_0000
    assert lay.vmalloc_base == 0xFFFF_C900_0000_0000
    assert lay.vmemmap_base == 0xFFFF_EA00_0000_0000
    assert lay.kernel_text == 0xFFFF_FFFF_8100_0000
    other = L.KernelLayout.boot(4, kaslr=False)  # the seed no longer matters
    assert (other.page_offset, other.vmalloc_base, other.vmemmap_base, other.text_offset) == (
        lay.page_offset, lay.vmalloc_base, lay.vmemmap_base, lay.text_offset)
    k = Kernel(kaslr=False)
    assert k.kernel_tables.translate(0xFFFF_8880_0000_0000 + 0x1234) == 0x1234
    assert k.kernel_tables.translate(0xFFFF_FFFF_8100_0000) == L.LOAD_PHYSICAL_ADDR


def test_booted_tables_follow_the_randomised_layout():
    """The direct map (__va(pa) = page_offset_base + pa) and the image mapping
    (__START_KERNEL_map + text offset -> physical 16 MiB) move with the layout."""
    k = Kernel(seed=11)
    assert k.kernel_tables.translate(k.layout.page_offset + 0x5000) == 0x5000
    assert k.kernel_tables.translate(k.image.secret) == k.image.pa(k.image.secret)
    assert k.kernel_tables.translate(L.PAGE_OFFSET_BASE) is None


# --- the 8 KiB PGD pair (arch/x86/include/asm/pgalloc.h, PGD_ALLOCATION_ORDER) ----------
@pytest.mark.parametrize("mode", ["kaiser", "pti"])
def test_isolation_allocates_an_8k_aligned_pgd_pair(mode):
    """With PTI (and KAISER before it) every PGD is an order-1 allocation: 8 KiB, 8 KiB
    aligned, kernel PGD first and user PGD at +4096, so switching is flipping CR3 bit 12."""
    k, task = running(mode)
    child = k.fork(task)
    for mm in (k.init_mm, task.mm, child.mm):
        assert mm.pgd % 8192 == 0
        assert mm.user_pgd == mm.pgd + 4096
    assert k.cr3 & ~0xFFF == task.mm.pgd | USER_PGD_BIT


def test_no_isolation_keeps_an_order_0_pgd():
    """Without PTI the PGD is one page (PGD_ALLOCATION_ORDER 0): pti.rst counts "+4 KiB per
    process" as PTI's memory cost."""
    frames = {}
    for mode in ("off", "pti"):
        k = boot(mode)
        k.spawn("warm-up")
        before = k.alloc.frames_allocated
        task = k.spawn("second")
        frames[mode] = k.alloc.frames_allocated - before
        if mode == "off":
            assert task.mm.user_pgd is None
    assert frames["pti"] == frames["off"] + 1


# --- pti_set_user_pgtbl() (arch/x86/mm/pti.c, __pti_set_user_pgtbl) ---------------------
@pytest.mark.parametrize("mode", ["kaiser", "pti"])
def test_user_pgd_entries_identical_except_nx_on_the_kernel_copy(mode):
    """__pti_set_user_pgtbl(): a user-half PGD entry goes unmodified into the user copy;
    the kernel copy gets _PAGE_NX because it has _PAGE_USER|_PAGE_PRESENT (so does
    Hansen's KAISER; the Graz variant, tests/test_kernel_versions.py, clears U instead)."""
    extra = {"isolation": Kaiser2017(variant="hansen")} if mode == "kaiser" else {}
    k, task = running(mode, **extra)
    k.user_store(task, DATA, 1)
    k.user_store(task, k.mmap(task, PAGE), 2)
    present = 0
    for index in range(256):
        kern = k.mem.read_qword(task.mm.pgd + 8 * index)
        user = k.mem.read_qword(task.mm.user_pgd + 8 * index)
        if not user & b.PAGE_PRESENT:
            assert kern == user == 0, f"PGD[{index}]"
            continue
        present += 1
        ignore = b.PAGE_ACCESSED | b.PAGE_DIRTY  # set by the CPU in the copy it walked
        assert kern & ~ignore == (user | b.PAGE_NX) & ~ignore, f"PGD[{index}]"
        assert user & b.PAGE_USER and not user & b.PAGE_NX
    assert present >= 2  # 0x400000.. and the mmap area near the top of user space


@pytest.mark.parametrize("mode", ["kaiser", "pti"])
def test_lower_levels_shared_one_pte_one_set_of_dirty_bits(mode):
    """pti.rst: only the PGD is duplicated, so user memory has "one PTE to lock, one set of
    accessed bits, dirty bits": a user-mode write (walked through the user PGD) sets A/D in
    the PTE the kernel PGD reaches too."""
    k, task = running(mode)
    k.user_store(task, DATA + 8, 5)
    assert k.cr3 & USER_PGD_BIT  # the store ran on the user PGD
    via_kernel = task.mm.tables.leaf(DATA)
    via_user = user_tables(k, task.mm).leaf(DATA)
    assert via_kernel == via_user
    assert via_kernel.value & b.PAGE_DIRTY and via_kernel.value & b.PAGE_ACCESSED


@pytest.mark.parametrize("mode", ["kaiser", "pti"])
def test_kernel_half_entries_are_not_propagated(mode):
    """__pti_set_user_pgtbl(): "Changes to the high (kernel) portion of the kernelmode page
    tables are not automatically propagated to the usermode tables." A new kernel mapping
    in an empty top-level slot reaches the kernel PGD only."""
    k, task = running(mode)
    va = k.layout.vmemmap_base
    index = (va >> 39) & 511
    assert k.mem.read_qword(task.mm.pgd + 8 * index) == 0
    task.mm.tables.map(va, k.alloc.alloc(), PAGE, b.PAGE_KERNEL & ~b.PAGE_GLOBAL)
    assert k.mem.read_qword(task.mm.pgd + 8 * index) & b.PAGE_PRESENT
    user_entry = k.mem.read_qword(task.mm.user_pgd + 8 * index)
    assert not translates(k, task.mm.user_pgd, va)
    assert user_entry == k.mem.read_qword(k.init_mm.user_pgd + 8 * index)
    assert isolation_violations(k, task.mm) == []


# --- what user mode can see (pti.c pti_clone_user_shared, pti_clone_entry_text, ...) -----
def test_pti_user_pgd_maps_exactly_the_entry_path():
    """pti_init(): the user tables get the cpu_entry_area P4D (pti_clone_user_shared()),
    each CPU's TSS page (the SYSCALL entry spills RSP into tss.sp2 before its CR3 switch),
    the espfix P4D (pti_setup_espfix64()) and the entry text at PMD granularity
    (pti_clone_entry_text(), PTI_CLONE_PMD): nothing else of the kernel."""
    k, task = running("pti")
    k.user_store(task, k.mmap(task, 3 * PAGE), 1)
    assert isolation_violations(k, task.mm) == []
    seen = kernel_ranges(k, task.mm.user_pgd)
    entry_start, entry_end = k.image.entry_text
    pmd = entry_start & ~(b.PMD_SIZE - 1)
    tss = k.image.percpu("cpu_tss_rw")
    named = {}
    for r in seen:
        if L.CPU_ENTRY_AREA_BASE <= r.start < L.CPU_ENTRY_AREA_BASE + (1 << 39):
            named.setdefault("cpu_entry_area", []).append(r)
        elif r.start == pmd:
            named["entry text PMD"] = r
        elif r.start == tss:
            named["TSS"] = r
        elif r.start == L.ESPFIX_BASE_ADDR:
            named["espfix"] = r
        else:
            raise AssertionError(f"user mode sees {r} ({k.layout.region_of(r.start)})")
    assert set(named) == {"cpu_entry_area", "entry text PMD", "TSS", "espfix"}
    cea = {va for _, va, _, _ in k.cea_pages()}
    assert {va for r in named["cpu_entry_area"] for va in range(r.start, r.end, PAGE)} == cea
    assert named["entry text PMD"].size == b.PMD_SIZE and entry_end <= pmd + b.PMD_SIZE
    assert named["TSS"].size == PAGE and named["espfix"].size == PAGE
    assert not any(r.user for r in seen)


def test_pti_kernel_text_global_clones_text_and_rodata_but_no_data():
    """pti.c pti_clone_kernel_text() (when pti_kernel_image_global_ok()): kernel text and
    rodata go into the user tables, global; "do not clone the areas past rodata, they might
    contain secrets"."""
    k = Kernel(isolation=LinuxPTI(kernel_text_global=True), seed=0)
    task = k.spawn("t")
    assert k.switch_to(task).ok
    assert isolation_violations(k, task.mm) == []
    user = kernel_ranges(k, task.mm.user_pgd)
    for va in (k.image.symbol("do_syscall_64"), k.image.rodata):
        assert range_of(user, va).global_
    assert not translates(k, task.mm.user_pgd, k.image.secret)
    assert k.entry.syscall_batch(task, 10)["walks"] <= 1  # global text: no TLB misses


@pytest.mark.parametrize("mode", ["kaiser", "pti"])
def test_meltdown_targets_have_no_translation_in_the_user_pgd(mode):
    """The point of KAISER/PTI (pti.rst; Meltdown needs only a present translation): the
    secret in .data and its direct-map alias translate in the kernel PGD, not in the user
    PGD that is loaded while user code runs."""
    k, task = running(mode)
    alias = k.layout.direct_map(k.image.pa(k.image.secret))
    for va in (k.image.secret, alias, k.image.symbol("do_syscall_64")):
        assert translates(k, task.mm.pgd, va)
        assert not translates(k, task.mm.user_pgd, va)
    assert audit.translate(k.mem, task.mm.pgd, alias) == k.image.pa(k.image.secret)


def test_without_isolation_the_secret_is_mapped_supervisor_only_where_user_code_runs():
    """Without PTI user code runs on the one PGD that maps the whole kernel; only U/S=0
    protects the secret, which a Meltdown-affected CPU ignores during transient execution."""
    k, task = running("off")
    assert k.cr3 & ~0xFFF == task.mm.pgd
    ranges = kernel_ranges(k, task.mm.pgd)
    for va in (k.image.secret, k.layout.direct_map(k.image.pa(k.image.secret))):
        r = range_of(ranges, va)
        assert not r.user


@pytest.mark.parametrize(("mode", "error_code"), [("off", 0x5), ("pti", 0x4), ("kaiser", 0x4)])
def test_user_read_of_the_secret_faults_present_only_without_isolation(mode, error_code):
    """The #PF error code tells what the walk found (SDM 4.7): without isolation a user read
    of the secret is a protection violation on a present page (P=1: the translation is
    there); under KAISER/PTI the page is simply not present in the user PGD (P=0)."""
    k, task = running(mode)
    result = k.run_ops(TraceBuilder().read(k.image.secret, cpl=3))
    assert result[0].error_code == error_code
    with pytest.raises(TaskKilled):
        k.user_load(task, k.image.secret)


# --- KAISER's kaiser_add_mapping() (arch/x86/mm/kaiser.c, 2017) --------------------------
def test_kaiser_add_mapping_refuses_user_addresses():
    """kaiser_add_mapping() maps kernel ranges only ("attempt to walk user address")."""
    k = boot("kaiser")
    with pytest.raises(KaiserEduError):
        k.isolation.kaiser_add_mapping(USER_TEXT, PAGE, b.PAGE_KERNEL)


def test_kaiser_add_mapping_allows_the_same_pte_but_not_a_change():
    """kaiser.c: "we allow the same PTE value to be set, but not changed"."""
    k = boot("kaiser")
    tss = k.image.percpu("cpu_tss_rw")
    k.isolation.kaiser_add_mapping(tss, PAGE, b.PAGE_KERNEL)  # as kaiser_init() did
    with pytest.raises(KaiserEduError, match="would change"):
        k.isolation.kaiser_add_mapping(tss, PAGE, b.PAGE_KERNEL_RO)


def test_kaiser_remove_mapping_clears_the_shadow_and_flushes_global_entries():
    """Hansen's kaiser_remove_mapping(): clear the shadow PTEs, then a global TLB flush on
    this CPU, so even a global TLB entry made through the shadow is gone (the Graz patch
    did not flush: tests/test_kernel_versions.py)."""
    k, task = running("kaiser", isolation=Kaiser2017(variant="hansen"), pcid=False)
    page = k.image.secret
    k.isolation.kaiser_add_mapping(page, PAGE, b.PAGE_KERNEL_RO, "test page")
    assert k.cr3 & USER_PGD_BIT
    assert k.run_ops(TraceBuilder().read(page, cpl=0))[0].ok  # through the shadow
    assert any(e["va"] == page and e["global"] for e in k.mmu.tlb_entries())
    k.isolation.kaiser_remove_mapping(page, PAGE)
    assert not translates(k, task.mm.user_pgd, page)
    assert not any(e["va"] == page for e in k.mmu.tlb_entries())
    assert not k.run_ops(TraceBuilder().read(page, cpl=0))[0].ok


def test_kaiser_maps_kernel_stacks_of_new_tasks_until_they_exit():
    """IAIK KAISER: dup_task_struct() maps each new thread's kernel stack into the shadow
    (kaiser_add_mapping), free_thread_stack() removes it; every process's shadow shares the
    pre-populated kernel half (kaiser_init()), so all of them see it."""
    k, task = running("kaiser")
    child = k.fork(task)
    for t in (task, child):
        for va in range(t.stack_base, t.stack_top, PAGE):
            assert audit.translate(k.mem, task.mm.user_pgd, va) == k.kernel_tables.translate(va)
    assert isolation_violations(k, task.mm) == []
    k.exit(child)
    assert not any(translates(k, task.mm.user_pgd, va)
                   for va in range(child.stack_base, child.stack_top, PAGE))
    assert translates(k, task.mm.user_pgd, task.stack_base)
    assert isolation_violations(k, task.mm) == []


def test_kaiser_shadow_maps_only_what_was_added():
    """kaiser_init() maps the entry path (cpu_entry_area pages, the TSS page, the entry
    text); with kernel stacks mapped too, that is all the shadow contains."""
    k, task = running("kaiser")
    assert isolation_violations(k, task.mm) == []
    mapped = {name for _, _, name in k.isolation.shadow_allowed()}
    assert {"entry text", "percpu TSS", f"kernel stack of pid {task.pid}"} <= mapped
    for r in kernel_ranges(k, task.mm.user_pgd):
        assert not r.user


# --- _PAGE_GLOBAL (pti.c pti_set_kernel_image_nonglobal, init.c __default_kernel_pte_mask)
def test_without_isolation_kernel_mappings_are_global():
    """head_64.S and PAGE_KERNEL set _PAGE_GLOBAL: kernel TLB entries survive CR3 writes."""
    k, task = running("off")
    ranges = kernel_ranges(k, task.mm.pgd)
    for va in (k.image.text, k.image.secret, k.layout.page_offset):
        assert range_of(ranges, va).global_


@pytest.mark.parametrize("mode", ["pti", "kaiser"])
def test_under_isolation_only_shared_mappings_are_global(mode):
    """PTI clears _PAGE_GLOBAL on the image and keeps it off every other kernel mapping
    (a global TLB entry would stay usable on the user CR3); what both tables map anyway,
    the cpu_entry_area and the entry-text PMD, is global "in both copies"
    (pti_clone_pgtable()). Hansen's KAISER also made shared pages global; the Graz patch
    had no global pages at all (tests/test_kernel_versions.py)."""
    extra = {"isolation": Kaiser2017(variant="hansen"), "pcid": False} if mode == "kaiser" else {}
    k, task = running(mode, **extra)
    assert isolation_violations(k, task.mm, check_global=True) == []
    kernel, user = kernel_ranges(k, task.mm.pgd), kernel_ranges(k, task.mm.user_pgd)
    for va in (k.image.secret, k.image.symbol("do_syscall_64"), k.layout.page_offset):
        assert not range_of(kernel, va).global_
    for va in (L.CPU_ENTRY_AREA_BASE, k.cea("entry stack")):
        assert range_of(kernel, va).global_ and range_of(user, va).global_
    if mode == "pti":
        entry = k.image.symbol("entry_SYSCALL_64")
        assert range_of(kernel, entry).global_ and range_of(user, entry).global_


# --- PCIDs and CR3 (arch/x86/mm/tlb.c, arch/x86/entry/calling.h) -------------------------
def test_cr3_at_every_transition_under_pti_with_pcid():
    """calling.h SWITCH_TO_KERNEL_CR3 clears bits 12 and 11 (kernel PGD, kernel PCID) and
    sets NOFLUSH; SWITCH_TO_USER_CR3 sets them back with NOFLUSH (no flush pending).
    tlb.c: kern_pcid(asid) = asid + 1, user_pcid(asid) = kern_pcid(asid) | 1 << 11."""
    k, task = running("pti")
    asid = k.tlbstate.loaded_mm_asid
    kernel = task.mm.pgd | (asid + 1)
    user = kernel | USER_PGD_BIT | USER_PCID_BIT
    assert k.cr3 == user
    since = len(k.events)
    k.syscall(task)
    k.interrupt(task)
    k.user_store(task, DATA, 1)  # a demand fault: exception entry and exit
    kinds = [e.kind for e in k.events[since:]]
    assert kinds == ["syscall_entry", "syscall_exit", "interrupt_entry", "interrupt_exit",
                     "page_fault", "exception_exit"]
    for e in k.events[since:]:
        into_kernel = e.kind.endswith("entry") or e.kind == "page_fault"
        assert (e.cr3_before, e.cr3_after) == ((user, kernel) if into_kernel else (kernel, user))
        assert e.pcid_after == (asid + 1 if into_kernel else (asid + 1) | 2048)
        assert e.noflush in (True, None) and e.flushed == "none"
    assert decode_cr3(user)["asid"] == asid


@pytest.mark.parametrize("mode", ["kaiser", "pti-nopcid"])
def test_cr3_without_pcid_flips_bit_12_and_flushes(mode):
    """Without PCIDs the switch only flips bit 12 (PTI_USER_PGTABLE_MASK) and every MOV to
    CR3 flushes all non-global TLB entries (pti.rst: "every syscall/interrupt/exception
    flushes the TLB")."""
    k, task = running(mode)
    assert k.cr3 == task.mm.pgd | USER_PGD_BIT
    since = len(k.events)
    k.syscall(task)
    entry, exit_ = k.events[since:]
    assert (entry.cr3_before, entry.cr3_after) == (task.mm.pgd | USER_PGD_BIT, task.mm.pgd)
    assert (exit_.cr3_before, exit_.cr3_after) == (task.mm.pgd, task.mm.pgd | USER_PGD_BIT)
    assert entry.flushed == exit_.flushed == "all non-global"
    counters = k.entry.syscall_batch(task, 50)
    assert counters["cr3_writes"] == counters["flushes"] == 100


def test_pcid_keeps_the_tlb_across_syscalls():
    """With PCIDs the entry/exit CR3 writes carry NOFLUSH: nothing is flushed and the
    steady state of a syscall loop misses the TLB nowhere (the point of PCID under PTI)."""
    k, task = running("pti")
    k.syscall(task)
    counters = k.entry.syscall_batch(task, 50)
    assert counters["cr3_writes"] == 100
    assert counters["flushes"] == 0 and counters["walks"] == 0


def test_without_isolation_entries_do_not_touch_cr3():
    """The CR3 macros are ALTERNATIVE-patched out when X86_FEATURE_PTI is off."""
    k, task = running("off")
    assert k.entry.syscall_batch(task, 20)["cr3_writes"] == 0


def test_choose_new_asid_round_robin_over_six_slots():
    """tlb.c choose_new_asid(): an mm still in cpu_tlbstate.ctxs keeps its ASID and its TLB
    entries (no flush); any other takes the next of TLB_NR_DYN_ASIDS = 6 slots round robin
    and flushes (load_new_mm_cr3() without NOFLUSH). next_asid starts at 1 (slot 0 holds
    init_mm at boot)."""
    k = boot("pti")
    tasks = [k.spawn(f"t{i}") for i in range(8)]
    asids = []
    for task in tasks:
        since = len(k.events)
        assert k.switch_to(task).ok
        (switch,) = events_of(k, since, "context_switch")
        asid = k.tlbstate.loaded_mm_asid
        asids.append(asid)
        assert switch.cr3_after == task.mm.pgd | (asid + 1)
        assert switch.noflush is False and switch.flushed == f"pcid {asid + 1}"
    assert TLB_NR_DYN_ASIDS == 6
    assert asids == [1, 2, 3, 4, 5, 0, 1, 2]
    # tasks[5..7] hold slots 0-2, tasks[2..4] slots 3-5: coming back is free...
    since = len(k.events)
    k.switch_to(tasks[6])
    (switch,) = events_of(k, since, "context_switch")
    assert k.tlbstate.loaded_mm_asid == 1
    assert switch.noflush is True and switch.flushed == "none"
    # ...but tasks[0] lost its slot: it takes the next one and flushes.
    since = len(k.events)
    k.switch_to(tasks[0])
    (switch,) = events_of(k, since, "context_switch")
    assert k.tlbstate.loaded_mm_asid == 3
    assert switch.noflush is False


def test_need_flush_when_the_mm_changed_while_it_was_not_loaded():
    """choose_new_asid(): `*need_flush = this_cpu_read(cpu_tlbstate.ctxs[asid].tlb_gen) <
    next_tlb_gen`: another CPU changed the mm (munmap) while this CPU ran something else,
    so the cached slot is reused but flushed."""
    k = boot("pti")
    a, other = k.spawn("a"), k.spawn("b")
    k.switch_to(a)
    va = k.mmap(a, PAGE)
    k.user_store(a, va, 7)
    k.switch_to(other)
    asid = next(i for i, c in enumerate(k.tlbstate.ctxs) if c.ctx_id == a.mm.ctx_id)
    k.munmap(a, va, PAGE)  # a is not loaded here: only its tlb_gen moves
    since = len(k.events)
    k.switch_to(a)
    (switch,) = events_of(k, since, "context_switch")
    assert k.tlbstate.loaded_mm_asid == asid
    assert switch.noflush is False
    (exit_,) = events_of(k, since, "context_switch_exit")
    assert exit_.noflush is False  # the user PCID is flushed too (deferred to the exit)
    with pytest.raises(TaskKilled):
        k.user_load(a, va)


def test_unchanged_mm_keeps_its_tlb_across_a_context_switch():
    """choose_new_asid(): same ctx_id and tlb_gen -> need_flush = false: NOFLUSH, and the
    pages the task touched before are still in its PCIDs' TLB entries."""
    k = boot("pti")
    a, other = k.spawn("a"), k.spawn("b")
    k.switch_to(a)
    k.user_store(a, DATA, 1)
    k.switch_to(other)
    since = len(k.events)
    k.switch_to(a)
    assert all(e.noflush for e in k.events[since:] if e.cr3_before != e.cr3_after)
    user_pcid = k.cr3 & 0xFFF
    assert any(e["va"] == DATA and e["pcid"] == user_pcid for e in k.mmu.tlb_entries())


def test_deferred_user_pcid_flush_without_invpcid():
    """tlb.c native_flush_tlb_one_user(): without INVPCID the user PCID cannot be flushed
    from the kernel, so invalidate_user_asid() sets the kPCID bit in user_pcid_flush_mask;
    the next SWITCH_TO_USER_CR3 sees it, clears it and writes CR3 without NOFLUSH."""
    k, task = running("pti", cpu="westmere")
    kpcid = k.tlbstate.loaded_mm_asid + 1
    va = k.mmap(task, PAGE)
    k.user_store(task, va, 1)
    k.munmap(task, va, PAGE)
    assert k.tlbstate.user_pcid_flush_mask == 1 << kpcid
    since = len(k.events)
    k.syscall(task)
    entry, exit_ = k.events[since:]
    assert entry.noflush is True  # the kernel PCID is kept up to date explicitly
    assert exit_.noflush is False and exit_.flushed == f"pcid {kpcid | 2048}"
    assert k.tlbstate.user_pcid_flush_mask == 0
    since = len(k.events)
    k.syscall(task)
    assert [e.noflush for e in k.events[since:]] == [True, True]


def test_full_flush_defers_the_user_pcid_flush_to_the_exit():
    """flush_tlb_mm_range() above tlb_single_page_flush_ceiling (33 pages) calls
    flush_tlb_local(): invalidate_user_asid() + a CR3 rewrite; the user half is flushed at
    the next exit to user space."""
    k, task = running("pti")
    kpcid = k.tlbstate.loaded_mm_asid + 1
    va = k.mmap(task, 40 * PAGE)
    k.munmap(task, va, 40 * PAGE)
    assert k.tlbstate.user_pcid_flush_mask == 1 << kpcid
    since = len(k.events)
    k.interrupt(task)
    assert events_of(k, since, "interrupt_exit")[0].noflush is False
    assert k.tlbstate.user_pcid_flush_mask == 0


@pytest.mark.parametrize(("mode", "cpu"), [("pti", "skylake"), ("pti", "westmere"),
                                           ("off", "skylake"), ("kaiser", "skylake")])
@pytest.mark.parametrize("pages", [1, 33, 34])
def test_munmap_and_mprotect_flush_page_by_page_up_to_33_pages(mode, cpu, pages):
    """flush_tlb_mm_range(): up to tlb_single_page_flush_ceiling = 33 pages one INVLPG per
    page (under PTI with INVPCID also one INVPCID for the user PCID,
    native_flush_tlb_one_user()); above it one full flush. No stale entry survives."""
    k, task = running(mode, cpu=cpu)
    va = k.mmap(task, pages * PAGE)
    for i in range(pages):
        k.user_store(task, va + i * PAGE, i + 1)
    assert sum(1 for e in k.mmu.tlb_entries() if va <= e["va"] < va + pages * PAGE) > 0
    for change in ("mprotect", "munmap"):
        if change == "mprotect":
            delta = counters_during(k, lambda: k.mprotect(task, va, pages * PAGE, PROT_READ))
        else:
            delta = counters_during(k, lambda: k.munmap(task, va, pages * PAGE))
        if pages <= 33:
            assert delta["invlpg"] == pages and delta["cr3_writes"] == 0
            with_invpcid = mode == "pti" and cpu == "skylake"
            assert delta["invpcid"] == (pages if with_invpcid else 0)
        else:
            assert delta["invlpg"] == 0 and delta["cr3_writes"] == 1 and delta["flushes"] == 1
        stale = [e for e in k.mmu.tlb_entries()
                 if va <= e["va"] < va + pages * PAGE and e["pcid"] == (k.cr3 & 0xFFF)
                 and (change == "munmap" or e["writable"])]
        assert stale == []


def test_kaiser_with_pcid_never_shows_one_process_another_ones_memory():
    """Whatever the PCID scheme, a recycled ASID must start clean (tlb.c load_new_mm_cr3()
    flushes the kernel PCID and invalidate_user_asid() the user one). With KAISER on PCIDs
    the user half runs on PCID kPCID|0x800 too, so it must be flushed as well."""
    k = Kernel(isolation="kaiser", pcid=True, seed=0)
    tasks = [k.spawn(f"t{i}") for i in range(8)]
    for i, task in enumerate(tasks):
        k.switch_to(task)
        k.user_store(task, DATA, 100 + i)
    for i, task in enumerate(tasks):
        k.switch_to(task)
        assert k.user_load(task, DATA) == 100 + i, f"task {i} sees another task's data"


# --- NMIs (entry_64.S nmi; calling.h SAVE_AND_SWITCH_TO_KERNEL_CR3 / RESTORE_CR3) --------
def test_nmi_from_kernel_keeps_the_kernel_cr3():
    """Paranoid entry: SAVE_AND_SWITCH_TO_KERNEL_CR3 sees bit 12 clear (the NMI hit kernel
    code on the kernel CR3) and does not switch; RESTORE_CR3 writes back the saved kernel
    CR3 (with NOFLUSH: "KERNEL pages can always resume with NOFLUSH")."""
    k, task = running("pti")
    kernel_cr3 = task.mm.pgd | (k.tlbstate.loaded_mm_asid + 1)
    with recorded_ops(k) as ops:
        assert k.nmi(task, from_kernel=True).ok
    nmi = index_of_fetch(ops, k.image.symbol("asm_exc_nmi"))
    handler = index_of_fetch(ops, k.image.symbol("exc_nmi"))
    assert cr3_writes(ops[nmi:handler]) == []
    restore = cr3_writes(ops[handler:])[0]
    assert restore == kernel_cr3 | NOFLUSH
    assert k.cr3 & USER_PGD_BIT  # and the syscall it interrupted returns to user space


def test_nmi_from_user_takes_the_normal_entry_and_exit():
    """entry_64.S asm_exc_nmi, "NMI from user mode": SWITCH_TO_KERNEL_CR3, the frame copied
    to the thread stack, exc_nmi, then `jmp swapgs_restore_regs_and_return_to_usermode`,
    whose SWITCH_TO_USER_CR3 puts the user CR3 back (no paranoid RESTORE_CR3)."""
    k, task = running("pti")
    user_cr3 = k.cr3
    with recorded_ops(k) as ops:
        assert k.nmi(task).ok
    nmi = index_of_fetch(ops, k.image.symbol("asm_exc_nmi"))
    handler = index_of_fetch(ops, k.image.symbol("exc_nmi"))
    out = index_of_fetch(ops, k.image.symbol("swapgs_restore_regs_and_return_to_usermode"))
    assert nmi < handler < out
    assert cr3_writes(ops[nmi:handler]) == [(user_cr3 & ~0x1800) | NOFLUSH]
    assert cr3_writes(ops[handler:out]) == []
    assert cr3_writes(ops[out:]) == [user_cr3 | NOFLUSH]
    assert k.cr3 == user_cr3


@pytest.mark.parametrize("mode", MODES)
def test_every_transition_returns_to_user_mode(mode):
    """Syscalls, interrupts and NMIs, from user mode and while in the kernel, all end on
    the task's user CR3 with the task alive."""
    k, task = running(mode)
    user_cr3 = k.cr3
    for out in (k.syscall(task), k.interrupt(task), k.interrupt(task, from_kernel=True),
                k.nmi(task), k.nmi(task, from_kernel=True)):
        assert out.ok, out.detail
        assert k.cr3 == user_cr3


# --- processes and memory (kernel/fork.c, fs/exec.c, mm/mmap.c, mm/mprotect.c, fault.c) --
@pytest.mark.parametrize("mode", MODES)
def test_fork_copies_user_memory_into_separate_frames(mode):
    """dup_mm(): the child starts with the parent's contents; afterwards each process's
    writes stay its own (the simulator copies eagerly where Linux copies on write)."""
    k, parent = running(mode)
    heap = START_BRK
    k.brk(parent, heap + 2 * PAGE)
    area = k.mmap(parent, 2 * PAGE)
    for i, va in enumerate((DATA, heap + PAGE, area + 8)):
        k.user_store(parent, va, 0x1000 + i)
    child = k.fork(parent)
    k.switch_to(child)
    for i, va in enumerate((DATA, heap + PAGE, area + 8)):
        assert k.user_load(child, va) == 0x1000 + i
        assert k.translate_user(child, va) != k.translate_user(parent, va)
    k.user_store(child, DATA, 0xC41D)
    k.switch_to(parent)
    assert k.user_load(parent, DATA) == 0x1000
    k.user_store(parent, area + 8, 0xDAD)
    k.switch_to(child)
    assert k.user_load(child, area + 8) == 0x1002
    assert k.user_load(child, DATA) == 0xC41D


@pytest.mark.parametrize("mode", MODES)
def test_execve_drops_the_old_pages(mode):
    """exec_mmap() replaces the address space: the old pages are freed, the new program's
    data starts zeroed, and the old program's mmap areas are gone (SIGSEGV)."""
    k, task = running(mode)
    area = k.mmap(task, PAGE)
    k.user_store(task, DATA, 42)
    k.user_store(task, area, 43)
    frames = k.alloc.frames_allocated
    k.execve(task, "new")
    assert list(task.mm.tables.iter_leaves(0, L.TASK_SIZE_MAX)) == []
    assert k.alloc.frames_allocated <= frames - 3  # text, data and the area freed
    assert k.user_load(task, DATA) == 0
    with pytest.raises(TaskKilled):
        k.user_load(task, area)


@pytest.mark.parametrize("mode", MODES)
def test_mmap_gives_demand_zero_pages_top_down(mode):
    """arch_get_unmapped_area_topdown(): areas go below mmap_base, never overlapping;
    do_anonymous_page() gives a zeroed page on first touch."""
    k, task = running(mode)
    a = k.mmap(task, 3 * PAGE)
    b_ = k.mmap(task, PAGE)
    assert b_ + PAGE <= a and a + 3 * PAGE <= task.mm.mmap_base
    assert k.translate_user(task, a) is None
    assert k.user_load(task, a + 2 * PAGE) == 0
    k.user_store(task, b_, 9)
    assert k.user_load(task, b_) == 9 and k.user_load(task, a) == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", ["null", "unmapped", "prot_none", "mprotect_none", "kernel"])
def test_sigsegv_on_an_access_without_a_vma_that_allows_it(mode, where):
    """do_user_addr_fault(): no VMA (NULL, a munmap'ed range, a kernel address) or a VMA
    that allows no access (PROT_NONE, also for a page just used and cached in the TLB) ->
    bad_area -> SIGSEGV."""
    k, task = running(mode)
    va = {"null": 0, "kernel": k.image.secret}.get(where)
    if where in ("unmapped", "mprotect_none"):
        va = k.mmap(task, 2 * PAGE)
        k.user_store(task, va + PAGE, 1)
        if where == "unmapped":
            k.munmap(task, va, 2 * PAGE)
        else:
            k.mprotect(task, va, 2 * PAGE, PROT_NONE)
        va += PAGE
    elif where == "prot_none":
        va = k.mmap(task, PAGE, PROT_NONE)
    with pytest.raises(TaskKilled, match="SIGSEGV"):
        k.user_load(task, va)
    assert not task.alive


@pytest.mark.parametrize("mode", MODES)
def test_write_to_a_read_only_page_is_sigsegv(mode):
    """mprotect(PROT_READ) then a write: #PF with error code P|W|U = 0x7, access_error()
    -> SIGSEGV; reads keep working."""
    k, task = running(mode)
    va = k.mmap(task, PAGE)
    k.user_store(task, va, 5)
    k.mprotect(task, va, PAGE, PROT_READ)
    assert k.user_load(task, va) == 5
    since = len(k.events)
    with pytest.raises(TaskKilled, match="SIGSEGV, write"):
        k.user_store(task, va, 6)
    (fault,) = events_of(k, since, "page_fault")
    assert fault.detail.endswith("error 0x7")


@pytest.mark.parametrize("mode", MODES)
def test_mprotect_upgrade_allows_writes_again(mode):
    """mprotect(PROT_READ|PROT_WRITE) after PROT_READ: the PTE gets R/W back, the data is
    still there."""
    k, task = running(mode)
    va = k.mmap(task, 2 * PAGE)
    k.user_store(task, va, 5)
    k.mprotect(task, va, 2 * PAGE, PROT_READ)
    k.mprotect(task, va, 2 * PAGE, RW)
    k.user_store(task, va + 8, 6)
    assert (k.user_load(task, va), k.user_load(task, va + 8)) == (5, 6)


@pytest.mark.parametrize("mode", MODES)
def test_mprotect_prot_none_keeps_the_data(mode):
    """mm/mprotect.c change_pte_range(): PROT_NONE turns the PTE into a _PAGE_PROTNONE entry
    that keeps the page; mprotect() back to PROT_READ|PROT_WRITE finds the data intact."""
    k, task = running(mode)
    va = k.mmap(task, PAGE)
    k.user_store(task, va, 0x5EC12E7)
    k.mprotect(task, va, PAGE, PROT_NONE)
    k.mprotect(task, va, PAGE, RW)
    assert k.user_load(task, va) == 0x5EC12E7


def test_mprotect_stops_at_a_hole_with_enomem():
    """mm/mprotect.c do_mprotect_pkey(): the range is changed VMA by VMA from its start; a
    gap stops it with -ENOMEM, the part before the gap keeping the new permissions, and an
    unmapped start changes nothing."""
    k, task = running("pti")
    va = k.mmap(task, 4 * PAGE)
    k.munmap(task, va + 2 * PAGE, PAGE)  # [va, va+2P) mapped, hole, [va+3P, va+4P) mapped
    assert k.mprotect(task, va, 4 * PAGE, PROT_READ) == -12
    prots = {v.start: v.prot for v in task.mm.vmas if va <= v.start < va + 4 * PAGE}
    assert prots == {va: PROT_READ, va + 3 * PAGE: RW}
    assert k.mprotect(task, va + 2 * PAGE, 2 * PAGE, PROT_NONE) == -12
    assert task.mm.find_vma(va + 3 * PAGE).prot == RW
    assert k.mprotect(task, va, 2 * PAGE, RW) == 0


def test_prot_none_pages_are_copied_by_fork_and_freed_by_munmap():
    """copy_pte_range() copies PROT_NONE PTEs like any other (the page is still the
    process's), zap_pte_range() frees them; the parent's copy stays inaccessible."""
    k, parent = running("pti")
    va = k.mmap(parent, 2 * PAGE)
    k.user_store(parent, va, 11)
    k.user_store(parent, va + PAGE, 12)
    k.mprotect(parent, va, 2 * PAGE, PROT_NONE)
    child = k.fork(parent)
    k.switch_to(child)
    k.mprotect(child, va, 2 * PAGE, PROT_READ)
    assert (k.user_load(child, va), k.user_load(child, va + PAGE)) == (11, 12)
    before = k.alloc.frames_allocated
    k.munmap(child, va, 2 * PAGE)
    assert before - k.alloc.frames_allocated == 2
    k.switch_to(parent)
    with pytest.raises(TaskKilled):
        k.user_load(parent, va)


@pytest.mark.parametrize("mode", MODES)
def test_write_only_mapping_is_readable_on_x86(mode):
    """arch/x86/mm/fault.c access_error(): a read fault is refused only if the VMA is not
    accessible at all (vma_is_accessible(): VM_READ|VM_WRITE|VM_EXEC); x86 page tables
    cannot express write-only, so a PROT_WRITE mapping reads (zero at first)."""
    k, task = running(mode)
    va = k.mmap(task, PAGE, PROT_WRITE)
    assert k.user_load(task, va) == 0


@pytest.mark.parametrize("mode", MODES)
def test_partial_munmap_splits_the_area(mode):
    """do_vmi_munmap(): unmapping the middle of an area leaves two areas around a hole."""
    k, task = running(mode)
    va = k.mmap(task, 3 * PAGE)
    for i in range(3):
        k.user_store(task, va + i * PAGE, i + 1)
    k.munmap(task, va + PAGE, PAGE)
    assert k.user_load(task, va) == 1 and k.user_load(task, va + 2 * PAGE) == 3
    with pytest.raises(TaskKilled):
        k.user_load(task, va + PAGE)


@pytest.mark.parametrize("mode", MODES)
def test_brk_grows_and_shrinks_the_heap(mode):
    """sys_brk(): growing maps zeroed heap pages, shrinking unmaps them (do_vmi_munmap), a
    break below start_brk is refused (the old break is returned)."""
    k, task = running(mode)
    assert task.mm.start_brk == task.mm.brk == START_BRK
    assert k.brk(task, START_BRK - PAGE) == START_BRK
    assert k.brk(task, START_BRK + 3 * PAGE) == START_BRK + 3 * PAGE
    k.user_store(task, START_BRK + 2 * PAGE, 8)
    assert k.user_load(task, START_BRK) == 0
    assert k.brk(task, START_BRK + PAGE + 1) == START_BRK + 2 * PAGE  # page-rounded
    with pytest.raises(TaskKilled):
        k.user_load(task, START_BRK + 2 * PAGE)


@pytest.mark.parametrize("prot", [PROT_NONE, PROT_READ])
def test_brk_does_not_extend_a_heap_top_that_mprotect_changed(prot):
    """do_brk_flags() extends the VMA ending at the break only if can_vma_merge_after()
    (the same flags): after mprotect() made the top heap page read-only or PROT_NONE, the
    pages brk() adds are a new read-write VMA, not part of the changed one (hypothesis
    found the old kernel extending the PROT_NONE VMA, so the new page killed its writer)."""
    k, task = running("kaiser")
    k.brk(task, START_BRK + PAGE)
    k.mprotect(task, START_BRK, PAGE, prot)
    assert k.brk(task, START_BRK + 2 * PAGE) == START_BRK + 2 * PAGE
    k.user_store(task, START_BRK + PAGE, 7)
    assert k.user_load(task, START_BRK + PAGE) == 7
    with pytest.raises(TaskKilled):
        k.user_store(task, START_BRK, 1)


@pytest.mark.parametrize("split", ["mprotect the middle", "munmap the middle",
                                   "munmap the top"])
def test_brk_after_the_heap_was_split(split):
    """sys_brk() works on [start_brk, brk) whatever VMAs the heap became: after mprotect or
    munmap split it, growing maps [brk, new) and shrinking unmaps [new, brk)."""
    k, task = running("pti")
    k.brk(task, START_BRK + 4 * PAGE)
    if split == "mprotect the middle":
        k.mprotect(task, START_BRK + PAGE, PAGE, PROT_READ)
    elif split == "munmap the middle":
        k.munmap(task, START_BRK + PAGE, PAGE)
    else:
        k.munmap(task, START_BRK + 3 * PAGE, PAGE)
    assert k.brk(task, START_BRK + 6 * PAGE) == START_BRK + 6 * PAGE
    k.user_store(task, START_BRK + 5 * PAGE, 1)
    assert k.brk(task, START_BRK + PAGE) == START_BRK + PAGE
    assert k.user_load(task, START_BRK) == 0
    with pytest.raises(TaskKilled):
        k.user_load(task, START_BRK + 5 * PAGE)
