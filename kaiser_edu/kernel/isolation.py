"""The three ways the simulated kernel can treat its own mappings while user code runs.

* :class:`NoIsolation`: one PGD per process mapping everything; only U/S=0 keeps user code
  out of the kernel, which Meltdown ignores.
* :class:`Kaiser2017`: KAISER as in 2017, in one of two variants that differ where the code
  differed. ``variant="graz"``: the patch of Gruss et al. (IAIK/KAISER, May 2017, against
  4.10-rc6): the kernel copy of a user PGD entry loses ``_PAGE_USER``
  (``pgdp->pgd = pgd.pgd & ~_PAGE_USER``), ``_PAGE_GLOBAL`` is defined as 0 (no global pages
  at all), every new thread's kernel stack is mapped into the shadow, no PCIDs, and
  ``kaiser_remove_mapping()`` only unmaps (``unmap_pud_range()``, no TLB flush).
  ``variant="hansen"``: Dave Hansen's series (v1 posted 31 Oct 2017): NX on the kernel copy
  instead of clearing U, pages mapped in both tables may be global, PCIDs when the CPU has
  them, ``kaiser_remove_mapping()`` followed by a TLB flush, _KERNPG_TABLE (no U) in the
  shadow's kernel half, and entry on a trampoline stack instead of the process stack, so no
  stack mappings (v2 cover letter, 8 Nov 2017: "Use trampoline stack instead of process
  stack at entry so no longer need to map process stack"; core patch of 10 Nov 2017: "Use
  new entry trampoline instead of mapping process stacks."). Kernel ranges go
  into the shadow one by one with ``kaiser_add_mapping()`` in both.
* :class:`LinuxPTI`: page table isolation as merged (arch/x86/mm/pti.c): the same pair,
  ``pti_set_user_pgtbl()``, and a fixed set of clones made once at boot (the cpu_entry_area
  and espfix P4D slots, the entry text at PMD granularity, the vsyscall page in
  ``vsyscall=emulate`` mode, and from Linux 4.20 on, bf904d2762ee, each CPU's TSS page for
  the SYSCALL entry's ``sp2`` scratch slot; 4.15 entered SYSCALL through a per-CPU
  trampoline in the cpu_entry_area instead); kernel mappings non-global except what both
  tables share; kernel and user PCIDs. Each process's LDT is remapped into its own PGD pair
  when it installs one (kernel/ldt.py). Which Linux: ``Kernel(linux=...)``
  (kernel/versions.py).

Each mode answers the same questions for :class:`~kaiser_edu.kernel.machine.Kernel`: how to
write a top-level entry (``set_pgd``), what to clone at boot, whether kernel mappings may be
global, and which kernel ranges the shadow may legitimately contain (for the audit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import table_index
from kaiser_edu.kernel import layout as L
from kaiser_edu.kernel.vsyscall import set_vsyscall_pgtable_user_bits

if TYPE_CHECKING:
    from kaiser_edu.kernel.machine import Kernel, Task


def pgdp_maps_userspace(pgdp: int) -> bool:
    """Does this PGD entry (by its address) belong to the user half (indices 0-255)?"""
    return (pgdp & (b.PAGE_SIZE - 1)) < b.PAGE_SIZE // 2


def kernel_to_user_pgdp(pgdp: int) -> int:
    return pgdp | b.PAGE_SIZE


class Isolation:
    """Interface (and the no-isolation behaviour)."""

    name = "off"
    pgd_pair = False  # order-1 PGD with the user copy in the upper 4 KiB
    kernel_copy_marking = "nx"  # how the kernel copy of a user PGD entry differs (audit)
    # Does the CPU push a user-mode interrupt frame on the task's kernel stack (TSS.sp0), and
    # the exit read it back after the switch to the user CR3? Only under the Graz patch;
    # Hansen's series and PTI enter and leave on the per-CPU entry (trampoline) stack.
    entry_on_task_stack = False

    def __init__(self) -> None:
        self.kernel: Kernel | None = None

    def kernel_global(self) -> bool:
        """May ordinary kernel mappings (image, direct map) carry _PAGE_GLOBAL?"""
        return True

    def shared_global(self) -> bool:
        """May the pages mapped in both tables (the cpu_entry_area...) carry _PAGE_GLOBAL?"""
        return True

    def default_pcid(self, cpu_has_pcid: bool) -> bool:
        """Does the kernel use PCIDs (CR4.PCIDE) on a CPU that has them?"""
        return cpu_has_pcid

    def missed_cr3_switch_fault(self) -> str:
        """What stops user code that runs on the kernel CR3 (for the kill message)."""
        return "NX fault"

    def set_pgd(self, pgdp: int, value: int) -> None:
        """native_set_p4d(): write a top-level entry."""
        self.kernel.mem.write_qword(pgdp, value)

    def boot(self) -> None:
        """Populate init_mm's user page tables (nothing without isolation)."""

    def shadow_allowed(self) -> list[tuple[int, int, str]]:
        """Kernel ranges the user PGD may map (audit); [] without a user PGD."""
        return []

    def on_new_task(self, task: Task) -> None:
        """A task was created (KAISER maps its kernel stack into the shadow)."""

    def on_exit_task(self, task: Task) -> None:
        """A task is gone."""


NoIsolation = Isolation


class _ShadowPgd(Isolation):
    """What KAISER and PTI share: the PGD pair and the mirroring of user entries."""

    pgd_pair = True
    # Non-leaf entries of the kernel half of the shadow: _KERNPG_TABLE (no U bit); the Graz
    # KAISER patch used _PAGE_TABLE there (Kaiser2017 overrides it for that variant).
    shadow_table_flags = b.KERNPG_TABLE

    def kernel_global(self) -> bool:
        return False

    def set_pgd(self, pgdp: int, value: int) -> None:
        """__pti_set_user_pgtbl(): a user-half entry goes to both copies, the user copy
        unmodified; the kernel copy gets NX when it maps user memory, so returning to user
        mode on the kernel CR3 faults on the first instruction instead of running with every
        kernel mapping present. Kernel-half entries are not propagated."""
        mem = self.kernel.mem
        if not pgdp_maps_userspace(pgdp):
            mem.write_qword(pgdp, value)
            return
        mem.write_qword(kernel_to_user_pgdp(pgdp), value)
        if (value & (b.PAGE_USER | b.PAGE_PRESENT)) == (b.PAGE_USER | b.PAGE_PRESENT) and (
            self.kernel.nx_supported
        ):
            value |= b.PAGE_NX
        mem.write_qword(pgdp, value)

    # Helpers that edit init_mm's user (shadow) tables, like pti_user_pagetable_walk_*().
    def _user_table(self, va: int, level: int) -> int:
        """Physical address of the shadow table holding ``va``'s entry at ``level``,
        allocating missing tables (``shadow_table_flags``: _KERNPG_TABLE, no U bit in the
        kernel half, except in the Graz patch)."""
        k = self.kernel
        if va < 1 << 47:
            raise KaiserEduError(f"attempt to walk user address {va:#x} in the shadow tables")
        table = kernel_to_user_pgdp(k.init_mm.pgd)
        for lvl in range(4, level, -1):
            entry_pa = table | (table_index(va, lvl) << 3)
            entry = k.mem.read_qword(entry_pa)
            if not entry & b.PAGE_PRESENT:
                new = k.alloc.alloc()
                k.mem.write_qword(entry_pa, new | self.shadow_table_flags)
                entry = new | self.shadow_table_flags
            elif lvl <= 3 and entry & b.PAGE_PSE:
                raise KaiserEduError(f"shadow walk of {va:#x} met a large page at level {lvl}")
            table = entry & b.phys_addr_mask(52)
        return table

    def _clone_pgd_slot(self, va: int) -> None:
        """pti_clone_p4d(): copy the kernel's top-level entry for ``va`` into the shadow, so
        the whole subtree (512 GiB) is shared by both tables."""
        k = self.kernel
        index = table_index(va, 4)
        k.mem.write_qword(kernel_to_user_pgdp(k.init_mm.pgd) | index << 3,
                          k.mem.read_qword(k.init_mm.pgd | index << 3))

    def _map_user_pte(self, va: int, pa: int, flags: int) -> None:
        """Install one 4 KiB PTE in the shadow (pti_clone_user_shared()'s TSS page)."""
        table = self._user_table(va, 1)
        self.kernel.mem.write_qword(table | table_index(va, 1) << 3, pa | flags)

    def _setup_vsyscall(self) -> None:
        """pti_setup_vsyscall(): copy the vsyscall PTE into the shadow and set the user bits
        on the shadow's path to it, so legacy user code can still read the page."""
        k = self.kernel
        if k.vsyscall != "emulate":
            return
        pte = k.kernel_tables.leaf(L.VSYSCALL_ADDR).value
        self._map_user_pte(L.VSYSCALL_ADDR, pte & b.phys_addr_mask(52),
                           pte & ~b.phys_addr_mask(52))
        set_vsyscall_pgtable_user_bits(k.mem, kernel_to_user_pgdp(k.init_mm.pgd))

    def _vsyscall_allowed(self) -> list[tuple[int, int, str]]:
        if self.kernel.vsyscall != "emulate":
            return []
        return [(L.VSYSCALL_ADDR, L.VSYSCALL_ADDR + b.PAGE_SIZE, "vsyscall")]


class Kaiser2017(_ShadowPgd):
    """KAISER as in 2017: a shadow PGD filled with ``kaiser_add_mapping()``; ``variant``
    "graz" (the IAIK patch, the default) or "hansen" (Dave Hansen's series), see the module
    docstring. ``map_kernel_stacks`` defaults to what the variant did."""

    name = "kaiser"
    VARIANTS = ("graz", "hansen")

    def __init__(self, variant: str = "graz", map_kernel_stacks: bool | None = None,
                 map_entry_text: bool = True) -> None:
        super().__init__()
        if variant not in self.VARIANTS:
            raise KaiserEduError(f"KAISER variant must be graz or hansen, got {variant!r}")
        self.variant = variant
        self.kernel_copy_marking = "nx" if variant == "hansen" else "no-user"
        # Graz: _kaiser_init() and _kaiser_copy() build the shadow's kernel half with
        # _PAGE_TABLE (U set in the non-leaf entries; the leaf PTEs keep U clear); Hansen's
        # core patch: "Use _KERNPG_TABLE, not _PAGE_TABLE when creating mappings for the
        # kernel in the shadow (user) page tables."
        self.shadow_table_flags = b.KERNPG_TABLE if variant == "hansen" else b.PAGE_TABLE
        self.entry_on_task_stack = variant == "graz"
        if map_kernel_stacks is None:
            map_kernel_stacks = variant == "graz"
        self.map_kernel_stacks = map_kernel_stacks
        self.map_entry_text = map_entry_text  # False: the "forgot the entry text" bug
        self.mapped: list[tuple[int, int, str]] = []

    def shared_global(self) -> bool:
        """Graz: ``#define _PAGE_GLOBAL (_AT(pteval_t, 0))`` under CONFIG_KAISER."""
        return self.variant == "hansen"

    def default_pcid(self, cpu_has_pcid: bool) -> bool:
        """The Graz patch's CR3 switch is a plain ``andq``/``orq $0x1000``: no PCIDs."""
        return cpu_has_pcid and self.variant == "hansen"

    def missed_cr3_switch_fault(self) -> str:
        return "NX fault" if self.variant == "hansen" else "U/S fault"

    def set_pgd(self, pgdp: int, value: int) -> None:
        """native_set_pgd(): Hansen's series as PTI (NX on the kernel copy); the Graz patch
        copies a user-half entry into the shadow and writes the kernel copy without
        ``_PAGE_USER``, so user code running on the kernel CR3 faults on its first access:
        every user page is a supervisor page there."""
        if self.variant == "hansen":
            super().set_pgd(pgdp, value)
            return
        mem = self.kernel.mem
        if pgdp_maps_userspace(pgdp):
            mem.write_qword(kernel_to_user_pgdp(pgdp), value)
        mem.write_qword(pgdp, value & ~b.PAGE_USER)

    def boot(self) -> None:
        """kaiser_init(): pre-populate every kernel-half shadow PGD entry (so mappings added
        later reach every process through the shared lower tables), then map the entry
        path: the cpu_entry_area pages, the TSS page the SYSCALL entry writes before its CR3
        switch, and the entry text."""
        k = self.kernel
        shadow = kernel_to_user_pgdp(k.init_mm.pgd)
        for index in range(L.KERNEL_PGD_BOUNDARY, 512):
            new = k.alloc.alloc()
            k.mem.write_qword(shadow | index << 3, new | self.shadow_table_flags)
        glob = b.PAGE_GLOBAL if self.shared_global() else 0
        for name, va, size, flags in k.cea_pages():
            self.kaiser_add_mapping(va, size, (flags & ~b.PAGE_GLOBAL) | glob, name)
        tss = k.image.percpu("cpu_tss_rw")
        self.kaiser_add_mapping(tss, b.PAGE_SIZE, b.PAGE_KERNEL, "percpu TSS")
        if self.map_entry_text:
            start, end = k.image.entry_text
            self.kaiser_add_mapping(start, end - start, b.PAGE_KERNEL_RX, "entry text")
        self._setup_vsyscall()  # kaiser_add_user_map_early() of the 4.4/4.9 backports

    def kaiser_add_mapping(self, addr: int, size: int, flags: int, name: str = "") -> None:
        """Map kernel range [addr, addr+size) into the shadow with 4 KiB PTEs pointing at the
        same frames as the kernel tables. The same PTE may be set twice, not changed."""
        k = self.kernel
        if addr < 1 << 63 or addr & 0xFFF or size <= 0 or size & 0xFFF:
            raise KaiserEduError(
                f"kaiser_add_mapping({addr:#x}, {size:#x}): needs a page-aligned kernel range"
            )
        for va in range(addr, addr + size, b.PAGE_SIZE):
            pa = k.kernel_tables.translate(va)
            if pa is None:
                raise KaiserEduError(f"kaiser_add_mapping: {va:#x} is not mapped in the kernel")
            table = self._user_table(va, 1)
            pte_pa = table | table_index(va, 1) << 3
            old, new = k.mem.read_qword(pte_pa), pa | flags
            if old and old != new:
                raise KaiserEduError(f"kaiser_add_mapping: PTE for {va:#x} would change")
            k.mem.write_qword(pte_pa, new)
        self.mapped.append((addr, addr + size, name or "kaiser_add_mapping"))

    def kaiser_remove_mapping(self, start: int, size: int) -> None:
        """Clear the shadow PTEs of the range. Hansen's version then flushes this CPU's TLB,
        globals included; the Graz patch only unmaps (unmap_pud_range()), so a TLB entry
        for the range can outlive the mapping until the next CR3 write flushes it (no
        PCIDs, no global pages there: every CR3 write does)."""
        k = self.kernel
        for va in range(start, start + size, b.PAGE_SIZE):
            table = self._user_table(va, 1)
            k.mem.write_qword(table | table_index(va, 1) << 3, 0)
        self.mapped = [m for m in self.mapped if not (m[0] == start and m[1] == start + size)]
        if self.variant == "hansen":
            k.flush_tlb_all()

    def shadow_allowed(self) -> list[tuple[int, int, str]]:
        return list(self.mapped) + self._vsyscall_allowed()

    def on_new_task(self, task: Task) -> None:
        if self.map_kernel_stacks:
            self.kaiser_add_mapping(task.stack_base, task.stack_size, b.PAGE_KERNEL,
                                    f"kernel stack of pid {task.pid}")

    def on_exit_task(self, task: Task) -> None:
        if self.map_kernel_stacks:
            self.kaiser_remove_mapping(task.stack_base, task.stack_size)


class LinuxPTI(_ShadowPgd):
    """Page table isolation as merged (arch/x86/mm/pti.c)."""

    name = "pti"

    def __init__(self, clone_entry_text: bool = True, kernel_text_global: bool = False) -> None:
        super().__init__()
        self.clone_entry_text = clone_entry_text  # False: the "forgot the entry text" bug
        self.kernel_text_global = kernel_text_global  # pti_kernel_image_global_ok()

    def boot(self) -> None:
        """pti_init() + pti_finalize(): clone the shared pieces into init_mm's user tables
        (every later PGD copies its kernel half from there: clone_pgd_range())."""
        k = self.kernel
        self._clone_pgd_slot(L.CPU_ENTRY_AREA_BASE)  # pti_clone_user_shared()
        if k.linux.syscall_entry == "tss":  # since bf904d2762ee (4.20): tss.sp2 scratch
            tss = k.image.percpu("cpu_tss_rw")
            self._map_user_pte(tss, k.image.pa(tss), b.PAGE_KERNEL & ~b.PAGE_GLOBAL)
        self._clone_pgd_slot(L.ESPFIX_BASE_ADDR)  # pti_setup_espfix64()
        if self.clone_entry_text:
            start, end = k.image.entry_text
            self._clone_pmds(start, end)  # pti_clone_entry_text(): PTI_CLONE_PMD
        if self.kernel_text_global:
            self._clone_pmds(k.image.text, k.image.data)  # pti_clone_kernel_text()
        self._setup_vsyscall()

    def _clone_pmds(self, start: int, end: int) -> None:
        """pti_clone_pgtable(start, end, PTI_CLONE_PMD): copy each kernel PMD entry covering
        the range into the shadow, marking it global in both copies ("It is effectively
        global, so set it as global in both copies")."""
        k = self.kernel
        va = start & ~(b.PMD_SIZE - 1)
        while va < end:
            pmd = next(e for e in k.kernel_tables.entries(va) if e.level == 2)
            value = pmd.value | (b.PAGE_GLOBAL if pmd.value & b.PAGE_PSE else 0)
            k.mem.write_qword(pmd.pa, value)
            k.mem.write_qword(self._user_table(va, 2) | table_index(va, 2) << 3, value)
            va += b.PMD_SIZE

    def shadow_allowed(self) -> list[tuple[int, int, str]]:
        k = self.kernel
        tss = k.image.percpu("cpu_tss_rw")
        allowed = [
            (L.CPU_ENTRY_AREA_BASE, L.CPU_ENTRY_AREA_BASE + (1 << 39), "cpu_entry_area"),
            (L.ESPFIX_BASE_ADDR, L.ESPFIX_BASE_ADDR + (1 << 39), "espfix"),
            (L.LDT_BASE_ADDR, L.LDT_BASE_ADDR + (1 << 39), "LDT"),
        ]
        if k.linux.syscall_entry == "tss":
            allowed.insert(2, (tss, tss + b.PAGE_SIZE, "percpu TSS"))
        start, end = k.image.entry_text
        pmd_start = start & ~(b.PMD_SIZE - 1)
        allowed.append((pmd_start, -(-end // b.PMD_SIZE) * b.PMD_SIZE, "entry text (PMD)"))
        if self.kernel_text_global:
            allowed.append((k.image.text, k.image.data, "kernel text + rodata"))
        return allowed + self._vsyscall_allowed()


def make_isolation(name: str, **options) -> Isolation:
    """'off', 'kaiser' or 'pti', with the mode's options (see each class)."""
    modes = {"off": Isolation, "kaiser": Kaiser2017, "pti": LinuxPTI}
    if name not in modes:
        raise KaiserEduError(f"isolation must be one of off, kaiser, pti; got {name!r}")
    return modes[name](**options)
