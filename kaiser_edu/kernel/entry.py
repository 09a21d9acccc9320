"""Kernel entry and exit, executed through the simulated MMU (arch/x86/entry/entry_64.S).

Each path is a short program of memory operations in the order the real entry code makes
them, with the CR3 switches of arch/x86/entry/calling.h in between:

SYSCALL   ``entry_SYSCALL_64``: fetch the entry text and spill the user RSP into the TSS's
          ``sp2`` slot (both still on the user CR3: PTI maps exactly these), then
          SWITCH_TO_KERNEL_CR3, load the task stack, push pt_regs, run do_syscall_64, and on
          the way out switch to the entry (trampoline) stack, SWITCH_TO_USER_CR3, SYSRET,
          and fetch the first user instruction. That is Linux 4.20 and later
          (bf904d2762ee "x86/pti/64: Remove the SYSCALL64 entry trampoline"); Linux 4.15
          with PTI entered at ``entry_SYSCALL_64_trampoline``, a per-CPU alias in the
          cpu_entry_area, which stashed the user RSP at the top of the entry stack
          (RSP_SCRATCH) before its CR3 switch, so no TSS page had to be cloned.
interrupt from user: the CPU reads the IDT, pushes the frame on the entry stack named by
          TSS.sp0 (in the cpu_entry_area), fetches the entry stub; then as above. From
          kernel mode: no stack switch and no CR3 switch.
NMI       the CPU switches to the NMI's IST stack. From user mode the entry code then does
          what other user entries do (SWITCH_TO_KERNEL_CR3 ... SWITCH_TO_USER_CR3); from kernel
          mode it is paranoid: SAVE_AND_SWITCH_TO_KERNEL_CR3 switches only if the saved CR3 is
          a user one (bit 12); RESTORE_CR3 writes the saved kernel CR3 back (with NOFLUSH,
          21e944591102) up to Linux 6.8, PARANOID_RESTORE_CR3 skips that write from 6.9
          (bb998361999e).

Because every fetch and stack access is a real access under the current CR3, the classic
mistakes fail as they did on real kernels: entry text missing from the user tables faults on
the first entry instruction, the #PF cannot be delivered (its handler is entry text too), the
double fault neither, and the machine triple-faults; a missing switch back to the user CR3
makes the first user instruction fault on the NX bit of the kernel copy of the user PGD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import OPS, Trace, TraceBuilder
from kaiser_edu.kernel.tlbstate import PTI_USER_PGTABLE_MASK

KERNEL_WORK = 8  # kernel data accesses in a "typical" simple syscall (the benchmark's)


#: The detail of the events of an interrupt or NMI that arrives while the task is in a
#: system call: the path is the syscall entry, the handler at CPL 0, and the syscall's exit,
#: so without it its log rows would read like an interrupt from user mode.
DURING_SYSCALL = "arrived during a system call (CPL 0): syscall entry, handler, sysret"


class MachineReset(KaiserEduError):
    """The simulated CPU triple-faulted: the machine reset."""


@dataclass
class Outcome:
    """What a transition did: ``status`` is "ok", "killed" or "triple fault"."""

    status: str
    detail: str = ""
    events: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class _Path:
    """A program of MMU operations, each labelled with the step it belongs to."""

    ops: TraceBuilder = field(default_factory=TraceBuilder)
    labels: list[str] = field(default_factory=list)

    def add(self, label: str, method: str, *args, **kwargs) -> _Path:
        getattr(self.ops, method)(*args, **kwargs)
        self.labels.append(label)
        return self


class EntryCode:
    """The entry/exit paths of one :class:`~kaiser_edu.kernel.machine.Kernel`.

    ``skip_switch_to_user_cr3`` reproduces a missed CR3 switch on the way out.
    ``on_path``, if set, is called with the labels of each path (one label per MMU
    operation, in order) just before the path runs: the hook through which
    :mod:`kaiser_edu.kernel.walkthrough` names every operation it single-steps. It observes
    only; the paths are the same with or without it.
    """

    def __init__(self, kernel):
        self.k = kernel
        self.skip_switch_to_user_cr3 = False
        self.halted = ""
        self.on_path: Callable[[list[str]], None] | None = None

    def _announce(self, labels: list[str]) -> None:
        if self.on_path is not None:
            self.on_path(list(labels))

    # --- building blocks -------------------------------------------------------------------
    @property
    def isolated(self) -> bool:
        return self.k.isolation.pgd_pair

    def _switch_to_kernel_cr3(self, path: _Path, cr3: int) -> int:
        if self.isolated:
            cr3 = self.k.tlbstate.switch_to_kernel_cr3(cr3)
            path.add("SWITCH_TO_KERNEL_CR3", "mov_cr3", cr3 & ~b.X86_CR3_PCID_NOFLUSH,
                     noflush=bool(cr3 & b.X86_CR3_PCID_NOFLUSH))
        return cr3 & ~b.X86_CR3_PCID_NOFLUSH

    def _switch_to_user_cr3(self, path: _Path, cr3: int) -> int:
        if self.isolated and not self.skip_switch_to_user_cr3:
            cr3 = self.k.tlbstate.switch_to_user_cr3(cr3)
            path.add("SWITCH_TO_USER_CR3", "mov_cr3", cr3 & ~b.X86_CR3_PCID_NOFLUSH,
                     noflush=bool(cr3 & b.X86_CR3_PCID_NOFLUSH))
        return cr3 & ~b.X86_CR3_PCID_NOFLUSH

    def _kernel_work(self, path: _Path, task, handler: str, work: int) -> None:
        img = self.k.image
        path.add("kernel", "fetch", img.symbol(handler), cpl=0)
        hot = img.percpu("percpu_hot")
        # The handler's own stack frame first, then per-CPU data (current task, counters):
        # half of the accesses each, in runs, as compiled code touches them.
        for i in range(work - work // 2):
            path.add("kernel", "write", task.stack_top - 0x200 - 8 * i, cpl=0)
        for i in range(work // 2):
            path.add("kernel", "read", hot + 8 * (i % 64), cpl=0)

    def _push_pt_regs(self, path: _Path, task, label: str) -> None:
        path.add(label, "read", self.k.image.percpu("percpu_hot"), cpl=0)  # top_of_stack
        for slot in range(1, 5):
            path.add(label, "write", task.stack_top - 8 * slot, cpl=0)

    def _syscall_entry(self, path: _Path, cr3: int, task=None) -> int:
        """entry_SYSCALL_64 up to the kernel stack: fetch the entry text and spill the user
        RSP into TSS.sp2 (still on the user CR3), switch CR3, then (with ``task``) push
        pt_regs. Returns the CR3 now loaded."""
        k = self.k
        if k._syscall_trampoline():  # Linux 4.15: MSR_LSTAR -> the cpu_entry_area alias
            path.add("entry", "fetch", k.cea("entry trampoline"), cpl=0)
            path.add("entry", "write", k.cea("entry stack") + 0xFF8, cpl=0)  # RSP_SCRATCH
        else:
            path.add("entry", "fetch", k.image.symbol("entry_SYSCALL_64"), cpl=0)
            path.add("entry", "write", k.image.percpu("cpu_tss_rw") + 0x14, cpl=0)  # TSS.sp2
        cr3 = self._switch_to_kernel_cr3(path, cr3)
        if task is not None:
            self._push_pt_regs(path, task, "entry")
        return cr3

    def _hw_entry(self, path: _Path, vector: int, stack: str, stub: str, task=None) -> None:
        """What the CPU does for an interrupt or exception from user mode: read the IDT
        gate, push the frame on the stack the TSS names (the cpu_entry_area entry stack, or
        an IST stack), and fetch the entry stub. Under the Graz KAISER patch TSS.sp0 still
        named the task's own kernel stack (there was no entry stack yet), so the frame goes
        there, still on the user CR3: why that patch mapped every kernel stack."""
        k = self.k
        path.add("hw", "read", k.cea("IDT (read-only)") + vector * 16, cpl=0)
        if stack == "entry stack" and task is not None and k.isolation.entry_on_task_stack:
            path.add("hw", "write", task.stack_top - 8, cpl=0)
        else:
            path.add("hw", "write", k.cea(stack) + 0xFF8, cpl=0)
        path.add("entry", "fetch", k.image.symbol(stub), cpl=0)

    def _exit_to_user(self, path: _Path, task, stub: str, cr3: int,
                      run_user: bool = True) -> None:
        """Pop the registers, leave through the entry (trampoline) stack, switch CR3 back,
        and (with ``run_user``) fetch the first user instruction."""
        k = self.k
        path.add("exit", "read", task.stack_top - 8, cpl=0)  # pop the saved registers
        path.add("exit", "fetch", k.image.symbol(stub), cpl=0)
        if k.isolation.entry_on_task_stack:
            # Graz KAISER: SWITCH_USER_CR3, then "movq RSP(%rsp), %rsp" / the IRET frame are
            # read from the task's kernel stack, already on the user CR3.
            self._switch_to_user_cr3(path, cr3)
            path.add("exit", "read", task.stack_top - 0x10, cpl=0)
            if run_user:
                path.add("user", "fetch", task.user_rip, cpl=3)
            return
        path.add("exit", "write", k.cea("entry stack") + 0xF00, cpl=0)  # trampoline stack
        self._switch_to_user_cr3(path, cr3)
        if run_user:
            path.add("user", "fetch", task.user_rip, cpl=3)  # the first user instruction

    # --- running a path ----------------------------------------------------------------------
    def _run(self, kind: str, path: _Path, task, first_cpl: int = 3,
             detail: str = "") -> Outcome:
        """Execute a path as two logged steps, ``<kind>_entry`` up to the start of the way
        out and ``<kind>_exit`` from there, so the log shows every CR3 switch. A fault ends
        the path: in user code it is a user #PF, in kernel code the CPU tries to deliver it.
        ``detail`` goes into both events (e.g. that an interrupt hit during a syscall)."""
        if self.halted:
            raise MachineReset(f"the machine is halted: {self.halted}")
        k = self.k
        trace = path.ops.build()
        self._announce(path.labels)
        n = len(path.labels)
        split = next((i for i, lab in enumerate(path.labels) if lab in ("exit", "RESTORE_CR3")), n)
        names = (kind if kind == "context_switch" else f"{kind}_entry", f"{kind}_exit")
        steps = [(names[0], 0, split, first_cpl, 0), (names[1], split, n, 0, 3)]
        events = []
        for name, lo, hi, cpl_before, cpl_after in steps:
            if lo == hi:
                continue
            cr3_before = k.cr3
            part = Trace(trace.op[lo:hi], trace.addr[lo:hi], trace.arg[lo:hi])
            result = k.mmu.run(part, stop_on_fault=True)
            last = result[result.n_done - 1]
            if last.ok:
                events.append(k.log(name, cr3_before, cpl_before, cpl_after, result,
                                    noflush=_noflush(part), detail=detail))
                continue
            label = path.labels[lo + result.n_done - 1]
            k.log(name, cr3_before, cpl_before, 0, result, fault=str(last),
                  detail=f"fault in {label}")
            if label == "user":
                return self._user_fault_after_exit(task, last)
            return self._deliver_kernel_fault(last, label)
        return Outcome("ok", events=events)

    def _deliver_kernel_fault(self, fault, label: str) -> Outcome:
        """A #PF at CPL 0: the CPU reads the IDT and fetches asm_exc_page_fault; if that
        faults too it raises #DF on its IST stack and fetches asm_exc_double_fault; a fault
        while delivering #DF shuts the CPU down (triple fault)."""
        k = self.k
        for vector, handler, stack in (("#PF", "asm_exc_page_fault", None),
                                       ("#DF", "asm_exc_double_fault", "#DF stack")):
            path = _Path()
            path.add("idt", "read", k.cea("IDT (read-only)") + (14 if vector == "#PF" else 8) * 16,
                     cpl=0)
            if stack:
                path.add("ist", "write", k.cea(stack) + 0xF00, cpl=0)
            path.add("handler", "fetch", k.image.symbol(handler), cpl=0)
            cr3 = k.cr3
            self._announce(path.labels)
            result = k.run_ops(path.ops)
            if result[result.n_done - 1].ok:
                # The handler runs: a kernel-mode fault it cannot fix is an oops.
                k.log("oops", cr3, 0, 0, result, fault=str(fault),
                      detail=f"{vector} handler reached after a fault in {label}")
                self.halted = f"kernel oops: {fault} in {label}"
                return Outcome("oops", self.halted, [k.events[-1]])
            k.log("double_fault" if vector == "#PF" else "triple_fault", cr3, 0, 0, result,
                  fault=str(result[result.n_done - 1]),
                  detail=f"could not deliver {vector}: {handler} is not mapped by CR3 {cr3:#x}")
        self.halted = (f"triple fault: {fault} in {label}, and neither the #PF nor the #DF "
                       "handler is mapped in the current page tables; the CPU shut down")
        return Outcome("triple fault", self.halted, list(k.events)[-3:])

    def _user_fault_after_exit(self, task, fault) -> Outcome:
        """The first user instruction faulted: handle it like any user fault (demand
        paging, or the missed-CR3-switch kill in :meth:`user_access`)."""
        k = self.k
        try:
            out = self.user_access(task, task.user_rip, "fetch")
        except MachineReset:
            return Outcome("triple fault", self.halted, list(k.events)[-3:])
        return Outcome("ok") if out is not None else Outcome("killed", task.exit_reason)

    def _on_kernel_pgd(self) -> bool:
        """CR3 selects the kernel half of the PGD pair (only meaningful with isolation)."""
        return self.isolated and not self.k.cr3 & PTI_USER_PGTABLE_MASK

    # --- transitions ---------------------------------------------------------------------------
    def _syscall_path(self, task, work: int) -> _Path:
        k = self.k
        path = _Path()
        cr3 = self._syscall_entry(path, k.cr3, task)
        self._kernel_work(path, task, "do_syscall_64", work)
        self._exit_to_user(path, task, "syscall_return_via_sysret", cr3)
        return path

    def syscall(self, task, work: int = KERNEL_WORK) -> Outcome:
        """One system call round trip from user mode."""
        return self._run("syscall", self._syscall_path(task, work), task)

    def syscall_with(self, task, handler: Callable[[], object],
                     work: int = KERNEL_WORK) -> Outcome:
        """One system call whose body also runs ``handler`` (the function do_syscall_64
        dispatches to, e.g. ``lambda: kernel.munmap(task, va, n)``) in kernel mode, on the
        kernel CR3, after do_syscall_64's own accesses.

        The entry and the exit are the same operations as :meth:`syscall` and are logged
        as the same two events; only the exit path is built after ``handler`` ran. So a
        user-PCID flush the handler defers (flush_tlb_mm_range() -> invalidate_user_asid()
        in arch/x86/mm/tlb.c) is performed by this very exit, in SWITCH_TO_USER_CR3, as in
        Linux. ``handler`` must not raise.
        """
        path = _Path()
        cr3 = self._syscall_entry(path, self.k.cr3, task)
        self._kernel_work(path, task, "do_syscall_64", work)
        entered = self._run("syscall", path, task)
        if not entered.ok:
            return entered
        handler()
        path = _Path()
        self._exit_to_user(path, task, "syscall_return_via_sysret", cr3)
        left = self._run("syscall", path, task)
        return Outcome(left.status, left.detail, entered.events + left.events)

    def syscall_trace(self, task, work: int = KERNEL_WORK) -> Trace:
        """The MMU operations of one system call round trip from the current state, not run.

        For workloads that interleave user code with system calls in one MMU trace
        (:mod:`kaiser_edu.perf`): build it after a real :meth:`syscall` (which performs any
        pending user-PCID flush), and the trace is the steady-state round trip that
        :meth:`syscall_batch` repeats. Building it goes through SWITCH_TO_USER_CR3's
        bookkeeping, so a flush still pending would be consumed here and done by every copy.
        """
        return self._syscall_path(task, work).ops.build()

    def syscall_batch(self, task, n: int, work: int = KERNEL_WORK) -> dict[str, int]:
        """``n`` identical system calls as one MMU trace (for benchmarks and cost lessons).

        The first round trip is built from the live state (it may perform a pending user
        PCID flush); the steady-state one is then repeated inside the MMU kernel. Returns the MMU
        counters; any fault is an error (run one :meth:`syscall` first to fault pages in).
        """
        if n < 1:
            raise KaiserEduError(f"n must be at least 1, got {n}")
        k = self.k
        cr3_before = k.cr3
        first = k.mmu.run(self._syscall_path(task, work).ops.build(), record=False)
        steady = self._syscall_path(task, work).ops.build()
        result = k.mmu.run(steady, record=False, repeat=n - 1) if n > 1 else first
        for name, value in first.counters.items():
            if n > 1:
                result.counters[name] += value
        counters = result.counters
        if counters["page_faults"] or counters["general_protection"]:
            raise KaiserEduError(f"syscall_batch faulted ({counters}); warm up with syscall()")
        k.log("syscall_batch", cr3_before, 3, 3, result, detail=f"{n} system calls")
        return counters

    def interrupt(self, task, from_kernel: bool = False, work: int = KERNEL_WORK) -> Outcome:
        """A device interrupt: from user mode, or arriving while the task is in a syscall."""
        k = self.k
        path = _Path()
        cr3 = k.cr3
        if from_kernel:  # enter the kernel by a syscall first; the IRQ hits in the middle
            cr3 = self._syscall_entry(path, cr3, task)
            path.add("irq", "read", k.cea("IDT (read-only)") + 0x20 * 16, cpl=0)
            path.add("irq", "write", task.stack_top - 0x400, cpl=0)  # same stack
            path.add("irq", "fetch", k.image.symbol("asm_common_interrupt"), cpl=0)
            self._kernel_work(path, task, "common_interrupt", work)
            self._exit_to_user(path, task, "syscall_return_via_sysret", cr3)
            return self._run("interrupt", path, task, detail=DURING_SYSCALL)
        self._hw_entry(path, 0x20, "entry stack", "asm_common_interrupt", task)  # TSS.sp0
        cr3 = self._switch_to_kernel_cr3(path, cr3)
        self._push_pt_regs(path, task, "entry")
        self._kernel_work(path, task, "common_interrupt", work)
        self._exit_to_user(path, task, "swapgs_restore_regs_and_return_to_usermode", cr3)
        return self._run("interrupt", path, task)

    def nmi(self, task, from_kernel: bool = False, work: int = 4) -> Outcome:
        """An NMI (asm_exc_nmi in entry_64.S); ``from_kernel`` hits during a syscall.

        From user mode the NMI is handled like other user entries: SWITCH_TO_KERNEL_CR3, the
        frame copied to the thread stack, exc_nmi, and out through
        swapgs_restore_regs_and_return_to_usermode (SWITCH_TO_USER_CR3). From kernel mode it
        may have hit anywhere, even the entry code before its CR3 switch, so the paranoid
        SAVE_AND_SWITCH_TO_KERNEL_CR3 decides by CR3 bit 12 and RESTORE_CR3 writes the saved
        value back, with NOFLUSH for a kernel CR3 (21e944591102, in 4.15), up to Linux 6.8;
        from 6.9 (bb998361999e "x86/entry: Avoid redundant CR3 write on paranoid returns")
        PARANOID_RESTORE_CR3 skips the write when the saved CR3 is a kernel one."""
        k = self.k
        path = _Path()
        cr3 = k.cr3
        if not from_kernel:
            self._hw_entry(path, 2, "NMI stack", "asm_exc_nmi")  # IST: always switches stacks
            cr3 = self._switch_to_kernel_cr3(path, cr3)
            self._push_pt_regs(path, task, "entry")
            self._kernel_work(path, task, "exc_nmi", work)
            self._exit_to_user(path, task, "swapgs_restore_regs_and_return_to_usermode", cr3)
            return self._run("nmi", path, task)
        cr3 = self._syscall_entry(path, cr3)
        self._hw_entry(path, 2, "NMI stack", "asm_exc_nmi")
        # SAVE_AND_SWITCH_TO_KERNEL_CR3: the saved CR3 is the kernel one (bit 12 clear: the
        # syscall switched already), so nothing is written.
        saved = cr3
        self._kernel_work(path, task, "exc_nmi", work)
        if self.isolated and not k.linux.paranoid_restore_skips_kernel_cr3:
            # RESTORE_CR3: "KERNEL pages can always resume with NOFLUSH"
            path.add("RESTORE_CR3", "mov_cr3", saved, noflush=k.tlbstate.pcid)
        self._exit_to_user(path, task, "syscall_return_via_sysret", cr3)
        return self._run("nmi", path, task, detail=DURING_SYSCALL)

    def switch_to(self, task) -> Outcome:
        """schedule() from a timer interrupt: enter the kernel (if user code was running),
        switch_mm_irqs_off() to ``task``'s address space, return to its user code."""
        k = self.k
        prev = k.current
        if prev is not None and prev.alive and self.halted == "":
            path = _Path()
            self._hw_entry(path, 0x20, "entry stack", "asm_common_interrupt", prev)
            self._switch_to_kernel_cr3(path, k.cr3)
            self._push_pt_regs(path, prev, "entry")
            out = self._run("interrupt", path, prev)
            if out.status == "triple fault":
                return out
        path = _Path()
        ts = k.tlbstate
        if task.mm is not k.loaded_mm:
            asid, need_flush = ts.choose_new_asid(task.mm.ctx_id, task.mm.tlb_gen)
            if need_flush:  # load_new_mm_cr3()
                ts.ctxs[asid].ctx_id, ts.ctxs[asid].tlb_gen = task.mm.ctx_id, task.mm.tlb_gen
                ts.invalidate_user_asid(asid)
            ts.loaded_mm_asid = asid
            cr3 = ts.build_cr3(task.mm.pgd, asid)
            path.add("switch_mm", "mov_cr3", cr3, noflush=ts.pcid and not need_flush)
            k.loaded_mm = task.mm
        else:
            cr3 = k.kernel_cr3(task.mm)
        path.add("switch_to", "fetch", k.image.symbol("__switch_to"), cpl=0)
        path.add("switch_to", "write", task.stack_top - 8, cpl=0)
        k.current = task
        self._exit_to_user(path, task, "swapgs_restore_regs_and_return_to_usermode", cr3)
        return self._run("context_switch", path, task, first_cpl=0)

    # --- user code -----------------------------------------------------------------------------
    def user_access(self, task, va: int, kind: str = "read", retries: int = 3) -> int | None:
        """One user-mode access of the current task; a #PF goes through the exception
        entry, the fault handler (demand paging) and back. Returns the physical address,
        or None if the task was killed."""
        k = self.k
        if self.halted:
            raise MachineReset(f"the machine is halted: {self.halted}")
        if task is not k.current or not task.alive:
            raise KaiserEduError(f"pid {task.pid} is not the running task")
        for _ in range(retries):
            self._announce(["user"])
            result = k.run_ops(TraceBuilder().access(va, kind, cpl=3))
            if result[0].ok:
                return result[0].pa
            fault = result[0]
            if fault.outcome == b.OUTCOME_GP:
                k.exit(task, f"killed: #GP on non-canonical {va:#x}")
                return None
            if kind == "fetch" and fault.error_code & b.X86_PF_PROT and self._on_kernel_pgd():
                # pti_set_user_pgtbl() put NX on the kernel copy of every user PGD entry
                # (the Graz KAISER patch cleared _PAGE_USER there instead): user code
                # running on the kernel CR3 dies on its first instruction.
                why = k.isolation.missed_cr3_switch_fault()
                k.exit(task, f"killed: {why} on the first user instruction (error code "
                             f"{fault.error_code:#x}): user code ran on the kernel CR3")
                return None
            if not self._page_fault_from_user(task, va, kind, fault.error_code):
                if self.halted:
                    raise MachineReset(self.halted)
                return None
        k.exit(task, f"killed: the same fault at {va:#x} repeats ({fault})")
        return None

    def _page_fault_from_user(self, task, va: int, kind: str, error_code: int) -> bool:
        k = self.k
        path = _Path()
        cr3 = before = k.cr3
        self._hw_entry(path, 14, "entry stack", "asm_exc_page_fault", task)
        cr3 = self._switch_to_kernel_cr3(path, cr3)
        self._push_pt_regs(path, task, "entry")
        path.add("kernel", "fetch", k.image.symbol("exc_page_fault"), cpl=0)
        self._announce(path.labels)
        result = k.run_ops(path.ops)
        if not result[result.n_done - 1].ok:
            return self._deliver_kernel_fault(result[result.n_done - 1], "the #PF entry").ok
        k.log("page_fault", before, 3, 0, result, detail=f"{kind} {va:#x} error {error_code:#x}")
        if not k.handle_user_fault(task, va, kind, error_code):
            k.exit(task, f"killed: SIGSEGV, {kind} of {va:#x} "
                         f"({b.describe_error_code(error_code)})")
            return False
        path = _Path()
        self._exit_to_user(path, task, "swapgs_restore_regs_and_return_to_usermode", k.cr3,
                           run_user=False)
        cr3_before = k.cr3
        trace = path.ops.build()
        self._announce(path.labels)
        result = k.mmu.run(trace, stop_on_fault=True)
        k.log("exception_exit", cr3_before, 0, 3, result, noflush=_noflush(trace))
        return True


def _noflush(trace: Trace) -> bool | None:
    """The NOFLUSH bit of the last CR3 write of a trace (None if it wrote none)."""
    rows = np.flatnonzero(trace.op == OPS["mov_cr3"])
    if rows.size == 0:
        return None
    return bool(int(trace.addr[rows[-1]]) & b.X86_CR3_PCID_NOFLUSH)
