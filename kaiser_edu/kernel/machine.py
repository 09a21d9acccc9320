"""A simulated x86-64 Linux kernel on one CPU, built on the hardware model.

>>> k = Kernel(isolation="pti", cpu="skylake", seed=1)
>>> task = k.spawn("demo")
>>> k.switch_to(task).status
'ok'
>>> k.user_store(task, 0x400000 + 0x10, 42)  # demand paging through the #PF path
>>> k.user_load(task, 0x400010)
42

``linux=`` picks the Linux version whose PTI behaviour the kernel has ("4.15", "4.20",
"6.1" (the default), "6.2", "6.9", "mainline"; kernel/versions.py names the commit of each
change): the pti=/nopti/mitigations= decision, the SYSCALL entry trampoline (4.15) or the
TSS clone (4.20+), a fixed or a randomised cpu_entry_area (6.2+), and whether RESTORE_CR3
writes a kernel CR3 back after an NMI (up to 6.8).

Boot (setup_arch() in miniature): the direct map of all RAM with 1 GiB pages, the kernel
image with 2 MiB pages, the cpu_entry_area with 4 KiB pages, the espfix page, then the
isolation mode's clones into init_mm's user tables. Every later PGD copies its kernel half
from init_mm (pgd_ctor()/clone_pgd_range()), both halves of the pair when there is one.

Kernel writes to page tables go straight to physical memory (the real kernel writes them
through the direct map); user accesses and the entry code's own fetches and stack accesses
go through the simulated MMU, under whatever CR3 is current.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import table_index
from kaiser_edu.hw.mmu import MMU, TLBConfig, TraceBuilder, TraceResult
from kaiser_edu.hw.physmem import FrameAllocator, PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.kernel import layout as L
from kaiser_edu.kernel.cpu import CpuModel, cpu_model, pti_decision
from kaiser_edu.kernel.entry import KERNEL_WORK, EntryCode, Outcome
from kaiser_edu.kernel.events import Event, EventLog
from kaiser_edu.kernel.idt import write_idt
from kaiser_edu.kernel.image import SECRET_TEXT, KernelImage
from kaiser_edu.kernel.isolation import Isolation, make_isolation
from kaiser_edu.kernel.ldt import free_ldt_pgtables, ldt_base, ldt_dup_context, write_ldt
from kaiser_edu.kernel.mm import (
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    KernelPageTables,
    MmStruct,
    Vma,
    vm_page_prot,
)
from kaiser_edu.kernel.tlbstate import TLB_SINGLE_PAGE_FLUSH_CEILING, CpuTlbState, user_pcid
from kaiser_edu.kernel.versions import DEFAULT_LINUX, LinuxVersion, linux_version
from kaiser_edu.kernel.vsyscall import check_vsyscall_mode, map_vsyscall

DEFAULT_TLB = TLBConfig()
ENOMEM = 12  # include/uapi/asm-generic/errno-base.h
_PAGE_PROTNONE = b.PAGE_GLOBAL  # Linux reuses G for PROT_NONE pages (P=0)
_USER_PTE_MASK = b.PAGE_PRESENT | _PAGE_PROTNONE  # PTEs that own a user frame
THREAD_SIZE = 4 * b.PAGE_SIZE  # 16 KiB kernel stacks (THREAD_SIZE_ORDER 2 with KASAN off)
USER_TEXT = 0x40_0000
USER_STACK_TOP = 0x7FFF_FFFF_F000
USER_STACK_SIZE = 32 * b.PAGE_SIZE


class TaskKilled(KaiserEduError):
    """The simulated kernel killed a task (SIGSEGV); the message says why."""


@dataclass
class Task:
    """A process with one thread: its address space and its kernel stack."""

    pid: int
    comm: str
    mm: MmStruct
    stack_base: int
    stack_size: int = THREAD_SIZE
    user_rip: int = USER_TEXT
    alive: bool = True
    exit_reason: str = ""

    @property
    def stack_top(self) -> int:
        return self.stack_base + self.stack_size


class Kernel:
    """One booted machine: memory, MMU, kernel page tables, tasks, and an isolation mode."""

    def __init__(
        self,
        isolation: str | Isolation | None = None,
        cpu: str | CpuModel = "skylake",
        cmdline: str = "",
        seed: int | None = 0,
        kaslr: bool = True,
        ram_bytes: int = 2 << 30,
        pcid: bool | None = None,
        tlb: TLBConfig | None = DEFAULT_TLB,
        vsyscall: str = "xonly",
        linux: str | LinuxVersion = DEFAULT_LINUX,
    ):
        self.linux = linux_version(linux)
        self.cpu = cpu_model(cpu)
        self.vsyscall = check_vsyscall_mode(vsyscall)
        pti_on, self.pti_message = pti_decision(cmdline, self.cpu, self.linux)
        if isolation is None:
            isolation = "pti" if pti_on else "off"
        self.isolation = make_isolation(isolation) if isinstance(isolation, str) else isolation
        self.isolation.kernel = self
        # init_cea_offsets() (6.2+); since a3f547addcaa only with KASLR.
        randomize_cea = self.linux.cea_randomized and (
            kaslr or self.linux.cea_random_without_kaslr)
        self.layout = L.KernelLayout.boot(seed, kaslr, randomize_cea=randomize_cea)
        self.image = KernelImage(self.layout)
        self.mem = PhysMem()
        self.alloc = FrameAllocator(self.mem, ram_bytes=ram_bytes, first_pa=64 << 20)
        self.ram_bytes = ram_bytes
        self.nx_supported = True
        if pcid is None:  # the Graz KAISER patch ran without PCIDs (Hansen's series had them)
            pcid = self.isolation.default_pcid(self.cpu.pcid)
        if pcid and not self.cpu.pcid:
            raise KaiserEduError(f"{self.cpu.name} has no PCID")
        # With a PGD pair and PCIDs, user space runs on its own PCID, whose flushes are
        # deferred to the exit (KAISER with PCIDs, as in Hansen's series, and PTI).
        self.tlbstate = CpuTlbState(pcid=pcid, pti=self.isolation.pgd_pair,
                                    invpcid=self.cpu.invpcid)
        self.events = EventLog()
        self.skip_tlb_flush = False  # "forget a flush" for the lessons' break-it exercises
        self.tasks: dict[int, Task] = {}
        self.current: Task | None = None
        self._next_pid = 1

        self.init_mm = self._pgd_alloc()
        self.kernel_tables = self.init_mm.tables
        self._map_direct_map()
        self._map_image()
        self._map_cpu_entry_area()
        self._map_espfix()
        map_vsyscall(self)
        self._preallocate_vmalloc_pages()
        self.isolation.boot()
        regs = Registers.long_mode(
            cr3=self.tlbstate.build_cr3(self.init_mm.pgd, 0), pge=True, pcide=pcid,
            smep=True, smap=True, nxe=self.nx_supported,
        )
        self.mmu = MMU(self.mem, regs, tlb)
        self.tlbstate.ctxs[0].ctx_id = self.init_mm.ctx_id
        self.loaded_mm = self.init_mm
        self.entry = EntryCode(self)
        write_idt(self)  # the gates the cpu_entry_area's IDT page shows (kernel/idt.py)

    # --- boot -------------------------------------------------------------------------------
    def _kernel_flags(self, flags: int) -> int:
        """__default_kernel_pte_mask: no _PAGE_GLOBAL under isolation ("the kernel is
        mostly non-global"), except where a mapping is deliberately shared."""
        return flags if self.isolation.kernel_global() else flags & ~b.PAGE_GLOBAL

    def _pgd_alloc(self) -> MmStruct:
        """pgd_alloc(): an order-1 (8 KiB, 8 KiB-aligned) PGD with isolation, else order-0;
        the kernel half of both copies is copied from init_mm (clone_pgd_range())."""
        pair = self.isolation.pgd_pair
        pgd = self.alloc.alloc_contig(2, align=8192) if pair else self.alloc.alloc()
        tables = KernelPageTables(self.mem, self.alloc, pgd, self.isolation.set_pgd)
        mm = MmStruct(pgd=pgd, pgd_pair=pair, tables=tables)
        if getattr(self, "init_mm", None) is not None:
            for copy in (0, b.PAGE_SIZE) if pair else (0,):
                for index in range(L.KERNEL_PGD_BOUNDARY, 512):
                    value = self.mem.read_qword(self.init_mm.pgd + copy + index * 8)
                    if value:
                        self.mem.write_qword(pgd + copy + index * 8, value)
        return mm

    def _map_direct_map(self) -> None:
        flags = self._kernel_flags(b.PAGE_KERNEL)
        for pa in range(0, self.ram_bytes, b.PUD_SIZE):
            self.kernel_tables.map(self.layout.direct_map(pa), pa, b.PUD_SIZE, flags)

    def _map_image(self) -> None:
        for _name, start, size, flags in self.image.sections():
            for off in range(0, size, b.PMD_SIZE):
                self.kernel_tables.map(start + off, self.image.pa(start + off), b.PMD_SIZE,
                                       self._kernel_flags(flags))
        secret = np.frombuffer(SECRET_TEXT.ljust(64, b"\0"), dtype=np.uint64)
        for i, qword in enumerate(secret):
            self.mem.write_qword(self.image.pa(self.image.secret) + 8 * i, int(qword))

    def cea_pages(self) -> list[tuple[str, int, int, int]]:
        """CPU 0's cpu_entry_area (cpu_entry_area.h): (name, va, size, flags). The
        read-only IDT is at CPU_ENTRY_AREA_BASE; CPU 0's own pages start at
        ``layout.cpu_entry_area(0)``, one page up, or at a random slot of the 512 GiB region
        from Linux 6.2 (97e3d26b5e5f). Each page aliases per-CPU storage in the image; all
        are global (cea_set_pte()), except under the Graz KAISER patch, which had no global
        pages. Linux 4.15's area also held the SYSCALL entry trampoline (removed by
        bf904d2762ee in 4.20); the model puts it in the area's last page."""
        area = self.layout.cpu_entry_area(0)
        pages = [
            ("IDT (read-only)", L.CPU_ENTRY_AREA_BASE, b.PAGE_SIZE, b.PAGE_KERNEL_RO),
            ("GDT", area, b.PAGE_SIZE, b.PAGE_KERNEL_RO),
            ("entry stack", area + 1 * b.PAGE_SIZE, b.PAGE_SIZE, b.PAGE_KERNEL),
            ("TSS (read-only)", area + 2 * b.PAGE_SIZE, b.PAGE_SIZE, b.PAGE_KERNEL_RO),
            ("#DF stack", area + 4 * b.PAGE_SIZE, b.PAGE_SIZE, b.PAGE_KERNEL),
            ("NMI stack", area + 6 * b.PAGE_SIZE, b.PAGE_SIZE, b.PAGE_KERNEL),
        ]
        if self._syscall_trampoline():
            pages.append(("entry trampoline", area + 7 * b.PAGE_SIZE, b.PAGE_SIZE,
                          b.PAGE_KERNEL_RX))
        return pages

    def _syscall_trampoline(self) -> bool:
        """Does SYSCALL enter through the cpu_entry_area trampoline (Linux 4.15 with PTI:
        syscall_init() points MSR_LSTAR at it only if X86_FEATURE_PTI)?"""
        return self.linux.syscall_entry == "trampoline" and self.isolation.name == "pti"

    def _cea_backing(self, name: str) -> int:
        storage = {"IDT (read-only)": "percpu_hot", "GDT": "gdt_page",
                   "entry stack": "entry_stack_storage", "TSS (read-only)": "cpu_tss_rw",
                   "#DF stack": "exception_stacks_df", "NMI stack": "exception_stacks_nmi"}
        if name == "entry trampoline":  # _entry_trampoline's page of the kernel text
            return self.image.pa(self.image.symbol("entry_SYSCALL_64_trampoline"))
        return self.image.pa(self.image.percpu(storage[name]))

    def cea(self, name: str) -> int:
        """Virtual address of a cpu_entry_area page by name."""
        return next(va for n, va, _, _ in self.cea_pages() if n == name)

    def _map_cpu_entry_area(self) -> None:
        glob = b.PAGE_GLOBAL if self.isolation.shared_global() else 0
        for name, va, size, flags in self.cea_pages():
            self.kernel_tables.map(va, self._cea_backing(name), size,
                                   (flags & ~b.PAGE_GLOBAL) | glob)

    def _map_espfix(self) -> None:
        self.kernel_tables.map(L.ESPFIX_BASE_ADDR, self.alloc.alloc(), b.PAGE_SIZE,
                               self._kernel_flags(b.PAGE_KERNEL_RO))

    def _preallocate_vmalloc_pages(self) -> None:
        """preallocate_vmalloc_pages() (arch/x86/mm/init_64.c): give the vmalloc area's PGD
        slot its next-level table at boot, so every PGD copied later shares it and kernel
        stacks vmalloc'ed afterwards are visible in every address space."""
        pgdp = self.init_mm.pgd | table_index(self.layout.vmalloc_base, 4) << 3
        if not self.mem.read_qword(pgdp) & b.PAGE_PRESENT:
            self.kernel_tables.set_entry(4, pgdp, self.alloc.alloc() | b.KERNPG_TABLE)

    # --- CR3 ------------------------------------------------------------------------------------
    @property
    def cr3(self) -> int:
        return int(self.mmu._regs[1])

    def kernel_cr3(self, mm: MmStruct) -> int:
        return self.tlbstate.build_cr3(mm.pgd, self.tlbstate.loaded_mm_asid)

    def user_cr3_of(self, mm: MmStruct) -> int:
        """The CR3 user code runs on (without consuming a pending flush)."""
        if not mm.pgd_pair:
            return self.kernel_cr3(mm)
        cr3 = self.kernel_cr3(mm) | b.PAGE_SIZE
        return cr3 | (1 << 11) if self.tlbstate.pcid else cr3

    def run_ops(self, builder: TraceBuilder) -> TraceResult:
        """Execute MMU operations, stopping at the first fault."""
        return self.mmu.run(builder.build(), stop_on_fault=True)

    def log(self, kind: str, cr3_before: int, cpl_before: int, cpl_after: int,
            result: TraceResult | None = None, **fields) -> Event:
        """Record a transition in the event log, with the TLB misses and flushes the MMU
        counted while it ran."""
        flushed = "none"
        if result is not None and result.counters["flushes"]:
            flushed = f"pcid {self.cr3 & 0xFFF}" if self.tlbstate.pcid else "all non-global"
        return self.events.append(
            kind, pcide=self.tlbstate.pcid, cpl_before=cpl_before, cpl_after=cpl_after,
            cr3_before=cr3_before, cr3_after=self.cr3, flushed=flushed,
            pgd_pair=self.isolation.pgd_pair,
            tlb_misses=result.counters["walks"] if result is not None else 0, **fields,
        )

    # --- tasks ------------------------------------------------------------------------------------
    def spawn(self, comm: str = "init") -> Task:
        """A new process running a fresh program (kernel_clone() + execve() in one)."""
        task = self._new_task(comm, self._pgd_alloc())
        self.exec_mm(task.mm)
        return task

    def _new_task(self, comm: str, mm: MmStruct) -> Task:
        pid = self._next_pid
        self._next_pid += 1
        # VMAP_STACK: the kernel stack is vmalloc'ed, with a guard page below it.
        stack_base = self.layout.vmalloc_base + pid * (THREAD_SIZE + b.PAGE_SIZE * 4)
        for off in range(0, THREAD_SIZE, b.PAGE_SIZE):
            self.kernel_tables.map(stack_base + off, self.alloc.alloc(), b.PAGE_SIZE,
                                   self._kernel_flags(b.PAGE_KERNEL))
        task = Task(pid=pid, comm=comm, mm=mm, stack_base=stack_base)
        self.tasks[pid] = task
        self.isolation.on_new_task(task)
        return task

    def exec_mm(self, mm: MmStruct) -> None:
        """The VMAs of a freshly exec'ed program: text, data+heap (brk), stack."""
        mm.add_vma(Vma(USER_TEXT, USER_TEXT + 16 * b.PAGE_SIZE, PROT_READ | PROT_WRITE
                       | PROT_EXEC, "[text]"))
        data = USER_TEXT + 0x20_0000
        mm.add_vma(Vma(data, data + 16 * b.PAGE_SIZE, PROT_READ | PROT_WRITE, "[data]"))
        mm.start_brk = mm.brk = data + 0x10_0000
        mm.add_vma(Vma(USER_STACK_TOP - USER_STACK_SIZE, USER_STACK_TOP,
                       PROT_READ | PROT_WRITE, "[stack]"))

    def fork(self, parent: Task) -> Task:
        """dup_mm(): a new PGD, the same VMAs, and a private copy of every present user page
        (eagerly: no copy-on-write), mapped with the same flags."""
        child_mm = self._pgd_alloc()
        for vma in parent.mm.vmas:
            child_mm.add_vma(Vma(vma.start, vma.end, vma.prot, vma.name))
        child_mm.start_brk, child_mm.brk = parent.mm.start_brk, parent.mm.brk
        pages = parent.mm.tables.iter_leaves(0, L.TASK_SIZE_MAX, _USER_PTE_MASK)
        for va, entry in list(pages):
            new_pa = self.alloc.alloc()
            old_pa = entry.value & b.phys_addr_mask(52)
            self.mem.frame_array(new_pa >> 12)[:] = self.mem.frame_array(old_pa >> 12)
            flags = entry.value & ~b.phys_addr_mask(52) & ~(b.PAGE_ACCESSED | b.PAGE_DIRTY)
            if flags & b.PAGE_PRESENT:
                child_mm.tables.map(va, new_pa, b.PAGE_SIZE, flags)
            else:  # a PROT_NONE page: make the tables, then store the not-present PTE
                child_mm.tables.map(va, new_pa, b.PAGE_SIZE, b.PAGE_USER)
                child_mm.tables.set_entry(1, child_mm.tables.leaf(va).pa, new_pa | flags)
        ldt_dup_context(self, parent.mm, child_mm)
        child = self._new_task(parent.comm, child_mm)
        child.user_rip = parent.user_rip
        return child

    def execve(self, task: Task, comm: str) -> None:
        """Replace the address space with a fresh program's (the old one is dropped)."""
        self._drop_user_pages(task.mm, 0, L.TASK_SIZE_MAX)
        free_ldt_pgtables(self, task.mm)
        task.mm.vmas.clear()
        self.exec_mm(task.mm)
        task.comm, task.user_rip = comm, USER_TEXT
        self.flush_tlb_mm_range(task.mm, 0, L.TASK_SIZE_MAX)

    def exit(self, task: Task, reason: str = "exit") -> None:
        task.alive, task.exit_reason = False, reason
        self.isolation.on_exit_task(task)

    # --- memory system calls ---------------------------------------------------------------------
    def mmap(self, task: Task, length: int, prot: int = PROT_READ | PROT_WRITE,
             addr: int | None = None, name: str = "[anon]") -> int:
        """A new anonymous mapping; pages arrive on first touch (demand paging)."""
        length = -(-length // b.PAGE_SIZE) * b.PAGE_SIZE
        if length <= 0:
            raise KaiserEduError(f"mmap: length must be positive, got {length}")
        start = task.mm.get_unmapped_area(length) if addr is None else addr
        task.mm.add_vma(Vma(start, start + length, prot, name))
        return start

    def munmap(self, task: Task, addr: int, length: int) -> None:
        """Remove [addr, addr+length) from the VMAs, free its pages, flush the TLB."""
        end = addr + -(-length // b.PAGE_SIZE) * b.PAGE_SIZE
        self._split_vmas(task.mm, addr, end, None)
        self._drop_user_pages(task.mm, addr, end)
        self.flush_tlb_mm_range(task.mm, addr, end)

    def mprotect(self, task: Task, addr: int, length: int, prot: int) -> int:
        """sys_mprotect(): change the permissions of [addr, addr+length), VMA by VMA and the
        PTEs of pages that exist; 0, or -ENOMEM where the range is not all mapped. As in
        mm/mprotect.c the change stops at the first hole: the mapped part before it keeps
        the new permissions (nothing changes if ``addr`` itself is unmapped). PROT_NONE keeps
        each page behind a not-present PTE marked _PAGE_PROTNONE (the G bit, meaningless while
        P=0), so its data returns with the permissions."""
        end = addr + -(-length // b.PAGE_SIZE) * b.PAGE_SIZE
        if addr & 0xFFF or end <= addr:
            raise KaiserEduError(f"range [{addr:#x}, {end:#x}) must be page-aligned, non-empty")
        mapped_to = addr  # the end of the mapped run that starts at addr
        for vma in task.mm.vmas:  # sorted by start
            if vma.end <= mapped_to or vma.start >= end:
                continue
            if vma.start > mapped_to:
                break
            mapped_to = min(vma.end, end)
        if mapped_to > addr:
            self._protect(task.mm, addr, mapped_to, prot)
        return 0 if mapped_to == end else -ENOMEM

    def _protect(self, mm: MmStruct, start: int, end: int, prot: int) -> None:
        self._split_vmas(mm, start, end, prot)
        keep_bits = b.phys_addr_mask(52) | b.PAGE_ACCESSED | b.PAGE_DIRTY
        flags = vm_page_prot(prot) if prot else _PAGE_PROTNONE
        # Pages never touched have no PTE: the fault handler will use the new rights.
        for _va, pte in list(mm.tables.iter_leaves(start, end, _USER_PTE_MASK)):
            self.mem.write_qword(pte.pa, (pte.value & keep_bits) | flags)
        self.flush_tlb_mm_range(mm, start, end)

    def brk(self, task: Task, new_brk: int) -> int:
        """sys_brk(): move the end of the heap; returns the new break, or the old one if the
        request is refused (below start_brk, or growing into another mapping)."""
        mm = task.mm
        old = mm.brk
        new_brk = -(-new_brk // b.PAGE_SIZE) * b.PAGE_SIZE
        if new_brk < mm.start_brk:
            return old
        if new_brk < old:
            self.munmap(task, new_brk, old - new_brk)
        elif new_brk > old:
            if any(v.start < new_brk and old < v.end for v in mm.vmas):
                return old
            # do_brk_flags() (mm/mmap.c): extend the VMA that ends at the break only if it
            # can merge (can_vma_merge_after(): the same flags, so not one that mprotect()
            # changed), else add a new one.
            heap = next((v for v in mm.vmas if v.name == "[heap]" and v.end == old
                         and v.prot == PROT_READ | PROT_WRITE), None)
            if heap is not None:
                heap.end = new_brk
            else:
                mm.add_vma(Vma(old, new_brk, PROT_READ | PROT_WRITE, "[heap]"))
        mm.brk = new_brk
        return new_brk

    def modify_ldt(self, task: Task, entry_number: int, desc: int) -> None:
        """modify_ldt(0x11, ...): set one descriptor of the process's LDT (kernel/ldt.py:
        under PTI the new LDT is remapped into the process's own PGD pair)."""
        write_ldt(self, task.mm, entry_number, desc)

    def load_ldt_descriptor(self, task: Task, index: int) -> int | None:
        """User code loads an LDT selector (``mov %ax, %ds`` with TI=1): the CPU reads the
        descriptor, an *implicit supervisor-mode access* made in user mode (SDM 4.6.1) under
        the current CR3, which is why PTI must map the LDT in the user tables. Returns the
        descriptor, or None if the task was killed (#GP beyond the LDT's limit: SIGSEGV)."""
        if task is not self.current or not task.alive:
            raise KaiserEduError(f"pid {task.pid} is not the running task")
        base = ldt_base(self, task.mm)
        if base is None or not 0 <= index < task.mm.ldt.nr_entries:
            self.exit(task, f"killed: #GP loading LDT selector {index} (beyond the LDT)")
            return None
        va = base + 8 * index
        result = self.run_ops(TraceBuilder().read(va, cpl=0))
        if not result[0].ok:
            self.exit(task, f"killed: {result[0]} reading its LDT descriptor at {va:#x}: "
                            "the LDT is not mapped in the tables user mode runs on")
            return None
        return self.mem.read_qword(result[0].pa)

    def _split_vmas(self, mm: MmStruct, start: int, end: int, prot: int | None) -> None:
        """Cut [start, end) out of the VMAs; re-add it with ``prot`` unless None."""
        if start & 0xFFF or end <= start:
            raise KaiserEduError(f"range [{start:#x}, {end:#x}) must be page-aligned, non-empty")
        pieces = []
        for vma in mm.vmas:
            if vma.end <= start or vma.start >= end:
                pieces.append(vma)
                continue
            if vma.start < start:
                pieces.append(Vma(vma.start, start, vma.prot, vma.name))
            if prot is not None:
                pieces.append(Vma(max(vma.start, start), min(vma.end, end), prot, vma.name))
            if vma.end > end:
                pieces.append(Vma(end, vma.end, vma.prot, vma.name))
        mm.vmas = sorted(pieces, key=lambda v: v.start)

    def _drop_user_pages(self, mm: MmStruct, start: int, end: int) -> None:
        for _va, entry in list(mm.tables.iter_leaves(start, end, _USER_PTE_MASK)):
            self.mem.write_qword(entry.pa, 0)
            self.alloc.free(entry.value & b.phys_addr_mask(52))

    # --- the page-fault handler (arch/x86/mm/fault.c, mm/memory.c) -------------------------------
    def handle_user_fault(self, task: Task, va: int, access: str, error_code: int) -> bool:
        """do_user_addr_fault(): a not-present fault inside a VMA that allows the access gets
        a fresh zeroed page (do_anonymous_page()); anything else is a bad access (SIGSEGV).
        Returns True if the access can be retried."""
        vma = task.mm.find_vma(va)
        if vma is None or not vma.allows(access):
            return False
        if error_code & b.X86_PF_PROT:
            # Present but refused: possibly a stale TLB entry after a PTE upgrade (spurious
            # fault, SDM 4.10.4.3): retry if the PTE now allows it, as Linux's
            # spurious_kernel_fault() logic does for the kernel and the retry does for users.
            leaf = task.mm.tables.leaf(va)
            return leaf is not None and _pte_allows(leaf.value, access)
        page = va & ~(b.PAGE_SIZE - 1)
        task.mm.tables.map(page, self.alloc.alloc(), b.PAGE_SIZE, vm_page_prot(vma.prot))
        return True

    # --- TLB maintenance (arch/x86/mm/tlb.c) ------------------------------------------------------
    def flush_tlb_mm_range(self, mm: MmStruct, start: int, end: int) -> None:
        """After changing ``mm``'s PTEs: bump its TLB generation; if it is loaded, flush the
        range (page by page up to 33 pages, else everything) in both PCIDs."""
        mm.tlb_gen += 1
        if self.skip_tlb_flush or mm is not self.loaded_mm:
            return
        ts = self.tlbstate
        pages = (end - start) // b.PAGE_SIZE
        ops = TraceBuilder()
        if pages <= TLB_SINGLE_PAGE_FLUSH_CEILING:
            for va in range(start, end, b.PAGE_SIZE):
                self._flush_tlb_one_user(ops, va)
        else:  # flush_tlb_local(): the kernel PCID now, the user PCID at the next exit
            ts.invalidate_user_asid(ts.loaded_mm_asid)
            ops.mov_cr3(self.cr3 & ~b.X86_CR3_PCID_NOFLUSH)
        self.run_ops(ops)
        ts.ctxs[ts.loaded_mm_asid].tlb_gen = mm.tlb_gen

    def _flush_tlb_one_user(self, ops: TraceBuilder, va: int) -> None:
        """native_flush_tlb_one_user(): INVLPG for the current PCID; under PTI also the
        user PCID, with INVPCID if the CPU has it, else by a deferred full user flush."""
        ops.invlpg(va)
        ts = self.tlbstate
        if not (ts.pti and ts.pcid):
            return
        if ts.invpcid:
            ops.invpcid(0, user_pcid(ts.loaded_mm_asid), va)
        else:
            ts.invalidate_user_asid(ts.loaded_mm_asid)

    def flush_tlb_all(self) -> None:
        """__flush_tlb_all(): everything, global entries included (INVPCID type 2, or a
        CR4.PGE toggle)."""
        ops = TraceBuilder()
        if self.tlbstate.invpcid and self.tlbstate.pcid:
            ops.invpcid(2)
        else:
            cr4 = int(self.mmu._regs[2])
            ops.mov_cr4(cr4 ^ b.X86_CR4_PGE).mov_cr4(cr4)
        self.run_ops(ops)

    # --- running tasks (the transitions live in entry.py) ---------------------------------------
    def switch_to(self, task: Task) -> Outcome:
        """Schedule ``task``: context switch, then return to its user code."""
        return self.entry.switch_to(task)

    def syscall(self, task: Task, work: int = KERNEL_WORK) -> Outcome:
        return self.entry.syscall(task, work)

    def interrupt(self, task: Task, from_kernel: bool = False) -> Outcome:
        return self.entry.interrupt(task, from_kernel)

    def nmi(self, task: Task, from_kernel: bool = False) -> Outcome:
        return self.entry.nmi(task, from_kernel)

    def user_access(self, task: Task, va: int, kind: str = "read") -> int | None:
        """A user-mode access by the running task (faults handled); physical address or
        None if the task was killed."""
        return self.entry.user_access(task, va, kind)

    def user_load(self, task: Task, va: int) -> int:
        """The qword user code reads at ``va`` (8-byte aligned)."""
        pa = self._user_pa(task, va, "read")
        return self.mem.read_qword(pa)

    def user_store(self, task: Task, va: int, value: int) -> None:
        """User code writes a qword at ``va``."""
        pa = self._user_pa(task, va, "write")
        self.mem.write_qword(pa, value)

    def _user_pa(self, task: Task, va: int, kind: str) -> int:
        if va & 7:
            raise KaiserEduError(f"user_load/user_store need an 8-byte aligned address: {va:#x}")
        pa = self.user_access(task, va, kind)
        if pa is None:
            raise TaskKilled(f"pid {task.pid} {task.exit_reason}")
        return pa

    # --- convenience for lessons and tests ---------------------------------------------------------
    def translate_user(self, task: Task, va: int) -> int | None:
        """Where ``va`` points in ``task``'s tables (software lookup, no TLB)."""
        return task.mm.tables.translate(va)


def _pte_allows(value: int, access: str) -> bool:
    if not value & b.PAGE_PRESENT or not value & b.PAGE_USER:
        return False
    if access == "write":
        return bool(value & b.PAGE_RW)
    if access == "fetch":
        return not value & b.PAGE_NX
    return True
