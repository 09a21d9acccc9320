"""One kernel<->user transition, operation by operation (lesson 07's transition stepper).

The entry code of :mod:`kaiser_edu.kernel.entry` runs each transition as a short program of
MMU operations, every one labelled with the part of the entry code it belongs to ("entry",
"SWITCH_TO_KERNEL_CR3", "kernel", "exit", "SWITCH_TO_USER_CR3", "RESTORE_CR3", ...). This
module runs a transition *exactly as the kernel runs it*, with one difference: each
operation goes through the MMU on its own (:meth:`~kaiser_edu.hw.mmu.MMU.run` with a
one-operation trace, the single-step use of the same numba kernel), and after each one the
recorder writes down a :class:`Step`: the label, the operation and what its address is, the
TLB hit or miss, the CR3 after it (PGD half = bit 12, PCID = bits 11:0, and for a MOV to CR3
the NOFLUSH bit 63 of the value written), what the TLB lost, and the entry-log event the
operation is part of. The kernel logs the same events it logs when it runs the whole path
in one batch: stepping changes nothing but the granularity.

Two entry points:

* :func:`record` steps any transition of a booted :class:`~kaiser_edu.kernel.machine.Kernel`
  (``record(k, lambda: k.syscall(task))``);
* :func:`walkthrough` builds a machine in one of :data:`MODES`, warms it up, optionally
  breaks it in one of the ways of :data:`BREAKAGES`, and records one of :data:`KINDS`.

Sources: arch/x86/entry/entry_64.S (entry_SYSCALL_64, the interrupt and NMI entries),
arch/x86/entry/calling.h (SWITCH_TO_KERNEL_CR3; SWITCH_TO_USER_CR3, which the SYSRET exit
invokes through its wrapper SWITCH_TO_USER_CR3_STACK and the IRET exit directly;
SAVE_AND_SWITCH_TO_KERNEL_CR3, RESTORE_CR3), arch/x86/mm/tlb.c (invalidate_user_asid(),
flush_tlb_mm_range()), arch/x86/mm/pti.c, Documentation/arch/x86/pti.rst.

>>> w = walkthrough("syscall", "pti")
>>> [s.label for s in w.steps if s.op == "mov_cr3"]
['SWITCH_TO_KERNEL_CR3', 'SWITCH_TO_USER_CR3']
>>> w.outcome, [e.kind for e in w.events]
('ok', ['syscall_entry', 'syscall_exit'])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from kaiser_edu.display.tables import TextTable
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import COUNTER_NAMES, OP_NAMES, Trace, TraceResult
from kaiser_edu.kernel import image as img
from kaiser_edu.kernel.entry import MachineReset, Outcome
from kaiser_edu.kernel.events import Event, cr3_cell, decode_cr3, pgd_half
from kaiser_edu.kernel.isolation import Kaiser2017, LinuxPTI
from kaiser_edu.kernel.machine import Kernel, Task
from kaiser_edu.kernel.tlbstate import PTI_USER_PGTABLE_MASK

# The machines the stepper offers: name -> (what it is, Kernel keyword arguments).
MODES: dict[str, tuple[str, dict]] = {
    "pti": ("Linux PTI with PCIDs (Skylake)", {"isolation": "pti"}),
    "pti-nopcid": ("Linux PTI without PCIDs (nopcid)", {"isolation": "pti", "pcid": False}),
    "kaiser": ("KAISER 2017 (as the Graz patch: no PCIDs)", {"isolation": "kaiser"}),
    "off": ("no isolation (pti=off)", {"isolation": "off"}),
}
# The transitions: name -> one line of what happens.
KINDS: dict[str, str] = {
    "syscall": "SYSCALL from user mode and SYSRET back (entry_SYSCALL_64)",
    "interrupt from user": "a device interrupt while user code runs (asm_common_interrupt)",
    "interrupt from kernel": "a device interrupt while the task is inside a system call",
    "NMI from user": ("an NMI while user code runs (asm_exc_nmi: then like any user entry, "
                      "SWITCH_TO_KERNEL_CR3 ... SWITCH_TO_USER_CR3)"),
    "NMI from kernel": ("an NMI while the task is inside a system call (paranoid CR3 "
                        "handling: SAVE_AND_SWITCH_TO_KERNEL_CR3 / RESTORE_CR3)"),
    "munmap, then read": ("munmap() of a 64-page buffer whose first page the task wrote, "
                          "inside a system call; then the task reads that page again"),
}
# The bugs the kernel can be made to have (the lessons' "break it yourself").
BREAKAGES: dict[str, str] = {
    "none": "the kernel as it should be",
    "entry text not in the user tables": ("boot without pti_clone_entry_text() (KAISER: "
                                          "without kaiser_add_mapping() of the entry text)"),
    "forget SWITCH_TO_USER_CR3": "return to user mode still on the kernel CR3",
    "skip the TLB flush": "munmap() without flush_tlb_mm_range()",
}
MUNMAP_PAGES = 64  # more than tlb_single_page_flush_ceiling (33): flush_tlb_local()
# The label of TLB maintenance the entry code did not announce: the kernel's own flushes
# after a page-table change (flush_tlb_mm_range() in machine.py).
FLUSH_LABEL = "TLB flush"
_TLB_OPS = frozenset({"mov_cr3", "invlpg", "invpcid", "mov_cr4"})


@dataclass(frozen=True)
class Step:
    """One MMU operation of a transition, with the machine state right after it.

    ``n`` counts from 1. ``label`` is the entry code's name for the part the operation
    belongs to; ``op`` is read, write, fetch, mov_cr3, invlpg or invpcid; ``addr`` the
    address accessed or, for mov_cr3, the value written (bit 63 = NOFLUSH); ``what`` says
    what the address is. ``tlb`` is "L1" or "L2" for a TLB hit, "walk" for a miss, "" for
    an operation that is not an access. ``cr3_before``/``cr3_after`` are the CR3 register
    (which never holds bit 63). ``flushes`` is how many TLB flushes the MMU counted,
    ``tlb_before``/``tlb_after`` the usable TLB entries before and after, by tag
    ("global", "PCID 1", ...). ``event`` is the seq of the event-log entry the operation
    belongs to (None for one the kernel does not log, such as a successful user access).
    ``note`` explains the step in the entry code's terms.
    """

    n: int
    label: str
    op: str
    addr: int
    cpl: int | None
    what: str
    fault: str | None
    error_code: int
    pa: int | None
    tlb: str
    cr3_before: int
    cr3_after: int
    noflush: bool | None
    flushes: int
    tlb_before: tuple[tuple[str, int], ...]
    tlb_after: tuple[tuple[str, int], ...]
    event: int | None = None
    note: str = ""
    replay: bool = False  # the #PF handler re-checking the access that just faulted

    @property
    def ok(self) -> bool:
        return self.fault is None

    @property
    def hit(self) -> bool:
        return self.tlb in ("L1", "L2")

    @property
    def miss(self) -> bool:
        return self.tlb == "walk"

    @property
    def tlb_lost(self) -> int:
        """Usable TLB entries that disappeared at this step (a flush)."""
        return max(0, sum(n for _, n in self.tlb_before) - sum(n for _, n in self.tlb_after))

    def cr3(self, pcide: bool = True) -> dict:
        """:func:`~kaiser_edu.kernel.events.decode_cr3` of the CR3 after the step."""
        return decode_cr3(self.cr3_after, pcide)

    def summary(self) -> str:
        """One line: ``#3 SWITCH_TO_KERNEL_CR3  mov_cr3 CR3 <- ..., NOFLUSH (TLB lost 0)``.

        For a MOV to CR3 ``what`` already ends in ", NOFLUSH" when bit 63 is set
        (:func:`~kaiser_edu.kernel.events.decode_cr3`); a write without it is marked
        "flushing write"."""
        n, label, op, what, result, cr3 = self.cells()
        return f"{n:<4} {label:<21} {op:<7} {what:<44} {result}  CR3 {cr3}"

    def cells(self) -> tuple[str, str, str, str, str, str]:
        """The step as table cells: number, label, op, what, result, CR3 half (K or U)."""
        if self.op == "mov_cr3":
            flag = "" if self.noflush else "flushing write "
            result = f"{flag}(TLB lost {self.tlb_lost})"
        elif self.tlb:
            result = "TLB hit (" + self.tlb + ")" if self.hit else "TLB miss (page walk)"
        else:
            result = "done"
        if self.fault:
            result = "the same fault: SIGSEGV, task killed" if self.replay else \
                f"FAULT {self.fault}"
        return (f"#{self.n}", self.label, self.op, self.what, result,
                cr3_cell(pgd_half(self.cr3_after), None))


#: The columns of :meth:`Walkthrough.table` (CR3: the PGD in use after the step, K or U).
STEP_COLUMNS = ("#", "step", "op", "what", "result", "CR3")


@dataclass
class Walkthrough:
    """A recorded transition: its steps, the events the kernel logged meanwhile, the result
    (``outcome``: "ok", "killed", "oops" or "triple fault", and ``detail``), the CR3 the
    CPU started on, and notes on the set-up."""

    kernel: Kernel
    steps: list[Step]
    events: list[Event]
    outcome: str
    detail: str
    cr3_start: int
    kind: str = ""
    mode: str = ""
    breakage: str = "none"
    notes: list[str] = field(default_factory=list)

    @property
    def pcide(self) -> bool:
        return self.kernel.tlbstate.pcid

    @property
    def misses(self) -> int:
        return sum(s.miss for s in self.steps)

    @property
    def cr3_writes(self) -> list[Step]:
        return [s for s in self.steps if s.op == "mov_cr3"]

    def steps_of(self, event: Event) -> list[Step]:
        """The steps that make up one logged event."""
        return [s for s in self.steps if s.event == event.seq]

    def table(self, first: int = 0, last: int | None = None) -> TextTable:
        """Steps ``first`` to ``last`` (all by default), one line each, then the outcome; in
        a notebook an HTML table whose values never wrap
        (:class:`~kaiser_edu.display.tables.TextTable`)."""
        steps = self.steps[first:last]
        outcome = f"=> {self.detail or self.outcome}"
        return TextTable("\n".join([*(s.summary() for s in steps), outcome]), STEP_COLUMNS,
                         [s.cells() for s in steps], wrap=("what", "result"), notes=(outcome,))


# --- single-stepping ------------------------------------------------------------------------
class _Recorder:
    """Runs every MMU trace one operation at a time and writes a :class:`Step` for each.

    Installed for the duration of :func:`stepping`: as ``kernel.mmu.run`` (an instance
    attribute in front of the method) and as ``kernel.entry.on_path`` (which names the
    operations of each path before it runs)."""

    def __init__(self, kernel: Kernel, task: Task | None):
        self.k = kernel
        self.task = task
        self.real_run = kernel.mmu.run
        self.pending: list[str] = []
        self.raw: list[dict] = []
        self.calls: list[tuple[int, int]] = []  # (first raw index, len(events) at start)

    def on_path(self, labels: list[str]) -> None:
        self.pending = list(labels)

    def run(self, trace: Trace, record: bool = True, stop_on_fault: bool = False,
            repeat: int = 1) -> TraceResult:
        if not record or repeat != 1:  # batch use (benchmarks): not a transition to step
            return self.real_run(trace, record=record, stop_on_fault=stop_on_fault,
                                 repeat=repeat)
        self.calls.append((len(self.raw), len(self.k.events)))
        cols: list[list] = [[], [], [], [], []]
        counters = dict.fromkeys(COUNTER_NAMES, 0)
        census = tlb_census(self.k)
        for i in range(len(trace)):
            if self.pending:
                label = self.pending.pop(0)
            else:
                label = FLUSH_LABEL if OP_NAMES[int(trace.op[i])] in _TLB_OPS else "kernel"
            cr3_before = self.k.cr3
            one = Trace(trace.op[i:i + 1], trace.addr[i:i + 1], trace.arg[i:i + 1])
            r = self.real_run(one, record=True, stop_on_fault=stop_on_fault)
            for name, value in r.counters.items():
                counters[name] += value
            for col, arr in zip(cols, (r.outcome, r.error_code, r.pa, r.size_code, r.where)):
                col.append(arr[0])
            after = tlb_census(self.k)
            self.raw.append({"label": label, "result": r[0], "arg": int(trace.arg[i]),
                             "cr3_before": cr3_before, "cr3_after": self.k.cr3,
                             "flushes": r.counters["flushes"], "tlb_before": census,
                             "tlb_after": after})
            census = after
            if stop_on_fault and not r[0].ok:
                break
        dtypes = (np.uint8, np.uint16, np.uint64, np.uint8, np.uint8)
        outs = [np.array(col, dtype=dt) for col, dt in zip(cols, dtypes)]
        return TraceResult(trace, len(outs[0]), *outs, counters=counters)

    def steps(self) -> list[Step]:
        """The raw records as :class:`Step` objects, each tied to its event."""
        owner: list[int | None] = [None] * len(self.raw)
        bounds = [*self.calls, (len(self.raw), len(self.k.events))]
        for (first, ev0), (nxt, ev1) in zip(bounds, bounds[1:]):
            if ev1 > ev0:  # the kernel logged this run (the first event after it)
                for j in range(first, nxt):
                    owner[j] = self.k.events[ev0].seq
        out: list[Step] = []
        for j, raw in enumerate(self.raw):
            res = raw["result"]
            label = raw["label"]
            is_access = res.op in ("read", "write", "fetch")
            noflush = bool(res.addr & b.X86_CR3_PCID_NOFLUSH) if res.op == "mov_cr3" else None
            step = Step(
                n=j + 1, label=label, op=res.op, addr=res.addr,
                cpl=raw["arg"] & 3 if is_access else None,
                what=describe(self.k, res.op, res.addr, self.task),
                fault=None if res.ok else str(res), error_code=res.error_code, pa=res.pa,
                tlb=res.tlb if res.ok else ("walk" if is_access else ""),
                cr3_before=raw["cr3_before"], cr3_after=raw["cr3_after"], noflush=noflush,
                flushes=raw["flushes"], tlb_before=raw["tlb_before"],
                tlb_after=raw["tlb_after"], event=owner[j],
            )
            if out and out[-1].fault is not None and out[-1].fault == step.fault:
                # The simulated #PF handler replays the faulting access to decide what to do
                # (Linux's do_user_addr_fault() decides from the error code and CR2): shown
                # as the handler's verdict, not as the same fault a second time.
                out.append(replace(step, label=REPLAY_LABEL, replay=True, note=_KILLED_NOTE))
                continue
            out.append(_with_note(step, self.k))
        return out


@contextlib.contextmanager
def stepping(kernel: Kernel, task: Task | None = None) -> Iterator[_Recorder]:
    """Inside the block every MMU operation of ``kernel`` is single-stepped and recorded;
    ``recorder.steps()`` gives them. ``task`` helps name user addresses."""
    if "run" in vars(kernel.mmu) or kernel.entry.on_path is not None:
        raise KaiserEduError("this kernel is already being stepped (nested stepping())")
    rec = _Recorder(kernel, task)
    kernel.mmu.run = rec.run
    kernel.entry.on_path = rec.on_path
    try:
        yield rec
    finally:
        del kernel.mmu.run
        kernel.entry.on_path = None


def record(kernel: Kernel, transition: Callable[[], object], task: Task | None = None,
           **info) -> Walkthrough:
    """Run ``transition`` (e.g. ``lambda: k.syscall(task)``) single-stepped and return the
    :class:`Walkthrough`. A triple fault (:class:`~kaiser_edu.kernel.entry.MachineReset`)
    ends the record with outcome "triple fault"; ``info`` fills kind/mode/breakage/notes."""
    start = len(kernel.events)
    cr3_start = kernel.cr3
    with stepping(kernel, task) as rec:
        try:
            result = transition()
            outcome, detail = _outcome(result, task)
        except MachineReset as exc:
            outcome, detail = "triple fault", str(exc)
        steps = rec.steps()
    return Walkthrough(kernel, steps, list(kernel.events)[start:], outcome, detail, cr3_start,
                       **info)


def _outcome(result: object, task: Task | None) -> tuple[str, str]:
    if isinstance(result, Outcome):
        return result.status, result.detail
    if task is not None and not task.alive:
        return "killed", task.exit_reason
    return "ok", ""


# --- the prepared scenarios -----------------------------------------------------------------
@dataclass
class Scenario:
    """A machine ready for one transition: ``run()`` performs it (normally, unrecorded:
    :func:`record` steps it), ``notes`` say what was set up and why."""

    kernel: Kernel
    task: Task
    run: Callable[[], object]
    kind: str
    mode: str
    breakage: str
    notes: list[str]


def walkthrough(kind: str = "syscall", mode: str = "pti", seed: int = 0,
                breakage: str = "none") -> Walkthrough:
    """Record one transition of ``kind`` on a machine prepared by :func:`prepare`."""
    sc = prepare(kind, mode, seed, breakage)
    return record(sc.kernel, sc.run, sc.task, kind=sc.kind, mode=sc.mode,
                  breakage=sc.breakage, notes=sc.notes)


def prepare(kind: str = "syscall", mode: str = "pti", seed: int = 0,
            breakage: str = "none") -> Scenario:
    """Boot a machine in ``mode``, start a task, warm up, apply ``breakage``: ready for
    one transition of ``kind`` (see :data:`KINDS`, :data:`MODES`, :data:`BREAKAGES`).

    The warm-up runs the same transition once (without the bug), so the record shows the
    steady state: which accesses the TLB still serves after the CR3 switches. ``seed``
    is the boot's KASLR seed. A bug that cannot happen in a mode (no user page tables
    without isolation; no flush to skip in a transition that requests none) leaves the
    machine working, and the notes say why.
    """
    check_choice(kind, KINDS, "kind")
    check_choice(mode, MODES, "mode")
    check_choice(breakage, BREAKAGES, "breakage")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise KaiserEduError(f"seed must be an integer >= 0, got {seed!r}")
    notes: list[str] = []
    kw = dict(MODES[mode][1])
    no_entry_text = breakage == "entry text not in the user tables"
    if no_entry_text:
        if kw["isolation"] == "pti":
            kw["isolation"] = LinuxPTI(clone_entry_text=False)
        elif kw["isolation"] == "kaiser":
            kw["isolation"] = Kaiser2017(map_entry_text=False)
        else:
            notes.append("Without isolation there are no user page tables: the one PGD maps "
                         "the entry text, so there is nothing to forget.")
    k = Kernel(seed=seed, **kw)
    task = k.spawn("demo")
    region = 0
    if no_entry_text and k.isolation.pgd_pair:  # (before switch_to: see below)
        # The first kernel entry would be the demand fault of the program's first
        # instruction: have its page there already, so the stepped transition is the first.
        k.handle_user_fault(task, task.user_rip, "fetch", 0)
        notes.append("The program's first page was mapped in advance, so the recorded "
                     "transition is the first kernel entry this machine makes.")
    broken_entry = no_entry_text and k.isolation.pgd_pair
    k.switch_to(task)
    if kind == "munmap, then read":
        region = k.mmap(task, MUNMAP_PAGES * b.PAGE_SIZE, name="[buffer]")
        if broken_entry:  # a user store would enter the kernel (demand fault) and die
            k.handle_user_fault(task, region, "write", 0)
        else:
            k.user_store(task, region, 0x1D)
    run = _transition(k, task, kind, region)
    if not broken_entry:
        run(warm_up=True)
    if breakage == "forget SWITCH_TO_USER_CR3":
        k.entry.skip_switch_to_user_cr3 = True
        if not k.isolation.pgd_pair:
            notes.append("Without isolation the CR3 macros are patched out (ALTERNATIVE): "
                         "there is no switch to forget.")
    if breakage == "skip the TLB flush":
        k.skip_tlb_flush = True
        if kind != "munmap, then read":
            notes.append("This transition changes no page table, so it requests no TLB "
                         "flush: there is nothing to skip (try 'munmap, then read').")
    return Scenario(k, task, run, kind, mode, breakage, notes)


def _transition(k: Kernel, task: Task, kind: str,
                region: int) -> Callable[..., object]:
    """The transition as a callable (``warm_up=True``: the harmless version)."""
    entry = k.entry

    def run(warm_up: bool = False) -> object:
        if kind == "syscall":
            return entry.syscall(task)
        if kind.startswith("interrupt"):
            return entry.interrupt(task, from_kernel=kind.endswith("kernel"))
        if kind.startswith("NMI"):
            return entry.nmi(task, from_kernel=kind.endswith("kernel"))
        if warm_up:
            return entry.syscall(task)
        out = entry.syscall_with(
            task, lambda: k.munmap(task, region, MUNMAP_PAGES * b.PAGE_SIZE))
        if not out.ok:
            return out
        entry.user_access(task, region, "read")
        return Outcome("killed", task.exit_reason) if not task.alive else Outcome("ok")

    return run


def check_choice(value: str, allowed: dict, what: str) -> None:
    """A :class:`KaiserEduError` unless ``value`` is a key of ``allowed`` (:data:`KINDS`,
    :data:`MODES` or :data:`BREAKAGES`); ``what`` names the choice in the message."""
    if value not in allowed:
        raise KaiserEduError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")


# --- describing addresses and TLB contents --------------------------------------------------
def tlb_census(kernel: Kernel) -> tuple[tuple[str, int], ...]:
    """The usable TLB entries by tag: ("global", n) then ("PCID p", n) in PCID order
    (without CR4.PCIDE every non-global entry is PCID 0)."""
    counts: dict[str, int] = {}
    for e in kernel.mmu.tlb_entries():
        key = "global" if e["global"] else f"PCID {e['pcid']}"
        counts[key] = counts.get(key, 0) + 1
    pcids = sorted((k for k in counts if k != "global"), key=lambda k: int(k.split()[1]))
    keys = (["global"] if "global" in counts else []) + pcids
    return tuple((k, counts[k]) for k in keys)


def describe(kernel: Kernel, op: str, addr: int, task: Task | None = None) -> str:
    """What an operation's address is, in the kernel's names."""
    if op == "mov_cr3":
        return "CR3 <- " + decode_cr3(addr, kernel.tlbstate.pcid)["text"]
    if op == "invlpg":
        return f"INVLPG page {addr:#x}"
    if op == "invpcid":
        return f"INVPCID address {addr:#x}"
    if op not in ("read", "write", "fetch"):
        return f"{op} {addr:#x}"
    return f"{_name_of(kernel, addr, task)} {addr:#x}"


def _name_of(k: Kernel, va: int, task: Task | None) -> str:
    image = k.image
    for name in img.ENTRY_SYMBOLS:
        if va == image.symbol(name):
            return f"{name} (entry text)"
    for name in img.TEXT_SYMBOLS:
        if va == image.symbol(name):
            return f"{name} (kernel text)"
    tss = image.percpu("cpu_tss_rw")
    if va == tss + 0x14:
        return "cpu_tss_rw.sp2 (TSS scratch)"
    for name, start, size, _flags in k.cea_pages():
        if start <= va < start + size:
            return f"cpu_entry_area: {name}"
    for name in img.PERCPU_PAGES:
        start = image.percpu(name)
        if start <= va < start + b.PAGE_SIZE:
            return f"per-CPU {name}"
    for t in k.tasks.values():
        if t.stack_base <= va < t.stack_top:
            return f"kernel stack of pid {t.pid}"
    if task is not None and va < 1 << 47:
        vma = task.mm.find_vma(va)
        return f"user {vma.name}" if vma is not None else "user (unmapped)"
    return "kernel"


# --- explaining each step ---------------------------------------------------------------------
REPLAY_LABEL = "#PF handler"
_KILLED_NOTE = ("The kernel handles the fault above like any user fault (do_user_addr_fault() in "
                "arch/x86/mm/fault.c): the access is checked again, nothing can fix it, so "
                "the task is killed with SIGSEGV.")


def _with_note(step: Step, k: Kernel) -> Step:
    return replace(step, note=explain(step, k.tlbstate.pcid, k.isolation.pgd_pair))


def explain(step: Step, pcide: bool, isolated: bool) -> str:
    """Why the entry code makes this operation, and what it did (calling.h, entry_64.S)."""
    if step.fault:
        return _explain_fault(step)
    if step.op == "mov_cr3":
        return _explain_cr3(step, pcide)
    if step.label == FLUSH_LABEL:
        return ("flush_tlb_mm_range(): one INVLPG per page up to 33 pages, or INVPCID for "
                "the user PCID (arch/x86/mm/tlb.c)")
    where = "the user CR3" if step.cr3_before & PTI_USER_PGTABLE_MASK else "the kernel CR3"
    if not isolated:
        where = "the only CR3 (no isolation)"
    hit = (f"TLB hit ({step.tlb})" if step.hit else "TLB miss: the MMU walked the page "
           "tables") if step.tlb else ""
    base = _LABEL_NOTES.get(step.label, "")
    special = _special(step)
    text = special or base
    return f"{text} On {where}; {hit}." if hit else f"{text} On {where}."


def _special(step: Step) -> str:
    symbol = step.what.split(" (")[0]
    if step.label == "user" and "unmapped" in step.what:
        return (f"Stale TLB entry: this page was unmapped and its frame freed, but nothing "
                f"flushed its translation, so the TLB still hands out frame "
                f"{(step.pa or 0) & ~0xFFF:#x}. The page tables are never consulted.")
    if step.label == "user" and step.op == "fetch":
        return "The first user instruction after SYSRET/IRET: CPL 3 again."
    if step.label == "entry" and "kernel stack" in step.what:
        return ("Push pt_regs on the task's kernel stack (vmalloc'ed, mapped only in the "
                "kernel PGD: this is why the CR3 switch comes first).")
    if step.label == "entry" and "percpu_hot" in step.what:
        return ("Read the task's kernel stack pointer (pcpu_hot.top_of_stack) from per-CPU "
                "data, mapped only in the kernel PGD.")
    if step.label == "kernel" and step.op == "fetch":
        return (f"{symbol}: the C handler, ordinary kernel text, which the user page tables "
                "do not map.")
    if step.label == "exit" and step.op == "read":
        return "Pop the user registers saved in pt_regs on the task stack."
    if step.label == "exit" and step.op == "fetch":
        return f"{symbol}: the exit code is entry text, mapped in both PGDs."
    if "entry_SYSCALL_64" in step.what:
        return ("entry_SYSCALL_64: the first instruction after SYSCALL still runs on the CR3 "
                "user mode had, so the entry text must be in the user page tables "
                "(pti_clone_entry_text()).")
    if "sp2" in step.what:
        return ("movq %rsp, PER_CPU_VAR(cpu_tss_rw + TSS_sp2): the user RSP is parked in the "
                "TSS, whose page PTI maps into the user tables, before CR3 can be switched.")
    if "entry stack" in step.what and step.label == "exit":
        return ("Move to the entry (trampoline) stack in the cpu_entry_area, mapped in both "
                "PGDs, so the code still has a stack after SWITCH_TO_USER_CR3.")
    if "asm_exc_nmi" in step.what:
        if step.cr3_before & PTI_USER_PGTABLE_MASK:
            return ("asm_exc_nmi from user mode: on to the thread stack and, like any user "
                    "entry, SWITCH_TO_KERNEL_CR3; it leaves the normal way, through "
                    "SWITCH_TO_USER_CR3.")
        return ("asm_exc_nmi: from user mode it is handled like any user entry; from kernel "
                "mode, where it may have hit anything, even the entry code before its CR3 "
                "switch, the paranoid SAVE_AND_SWITCH_TO_KERNEL_CR3 looks at CR3 bit 12 and "
                "writes nothing when it is clear, as here.")
    if "IDT" in step.what and step.label == "hw":
        return ("The CPU reads the IDT gate; the IDT is in the cpu_entry_area (read-only "
                "alias), mapped in the user tables too.")
    if step.label == "hw":
        return ("The CPU pushes the interrupt frame on the stack the TSS names: the "
                "cpu_entry_area entry stack (sp0) or an IST stack.")
    return ""


def _explain_cr3(step: Step, pcide: bool) -> str:
    cr3 = decode_cr3(step.cr3_after, pcide)
    pcid = f", PCID {cr3['pcid']}" if pcide else ""
    if step.noflush:
        flush = "NOFLUSH (bit 63) set: the TLB keeps its entries."
    elif pcide:
        flush = f"no NOFLUSH: the non-global entries of PCID {cr3['pcid']} are flushed."
    else:
        flush = "without PCIDs every CR3 write flushes all non-global TLB entries."
    lost = f" The TLB lost {step.tlb_lost} entries." if step.tlb_lost else ""
    if step.label == "SWITCH_TO_KERNEL_CR3":
        how = ("SWITCH_TO_KERNEL_CR3 (calling.h): clear bit 12 (kernel half of the 8 KiB PGD "
               "pair)" + (" and bit 11 (kernel PCID), set bit 63" if pcide else ""))
    elif step.label == "SWITCH_TO_USER_CR3":
        # calling.h: SWITCH_TO_USER_CR3 is the logic; the SYSRET exit invokes it through
        # SWITCH_TO_USER_CR3_STACK scratch_reg=%rdi (which saves %rax for the second scratch
        # register), the IRET exit (swapgs_restore_regs_and_return_to_usermode) directly.
        if pcide and not step.noflush:
            how = ("SWITCH_TO_USER_CR3 (calling.h): this ASID's bit in user_pcid_flush_mask "
                   "was set (a flush deferred by invalidate_user_asid()): clear it and write "
                   "CR3 without NOFLUSH; set bits 12 and 11")
        elif pcide:
            how = ("SWITCH_TO_USER_CR3 (calling.h): no flush pending for this user PCID: set "
                   "bits 12 (user PGD), 11 (user PCID) and 63 (NOFLUSH)")
        else:
            how = ("SWITCH_TO_USER_CR3 (calling.h): set bit 12 (user half of the PGD "
                   "pair)")
    elif step.label == "RESTORE_CR3":
        how = ("RESTORE_CR3 (paranoid exit, as in Linux 4.15): write back the CR3 saved by "
               "SAVE_AND_SWITCH_TO_KERNEL_CR3")
        if pcide and step.noflush:
            how += " with NOFLUSH"
        if not step.cr3_after & PTI_USER_PGTABLE_MASK:
            how += (" (newer kernels' PARANOID_RESTORE_CR3 skips this write: CR3 did not "
                    "change)")
    elif step.label == "switch_mm":
        how = "switch_mm_irqs_off() -> load_new_mm_cr3(): the next address space"
    elif step.label == FLUSH_LABEL:
        how = ("flush_tlb_mm_range() of more than 33 pages -> flush_tlb_local(): "
               "invalidate_user_asid() sets this ASID's bit in user_pcid_flush_mask (the user "
               "PCID is flushed at the exit) and CR3 is rewritten")
    else:
        how = "MOV to CR3"
    return f"{how} -> {cr3['half']} PGD{pcid}; {flush}{lost}"


def _explain_fault(step: Step) -> str:
    code = step.error_code
    if step.label == "user" and step.op == "fetch" and code & b.X86_PF_PROT:
        return ("The first user instruction faults on the NX bit that pti_set_user_pgtbl() "
                "put on the kernel copy of every user PGD entry: user code is running on the "
                f"kernel CR3 (error code {code:#x}: present, user, instruction fetch).")
    if step.label == "user":
        return (f"A user-mode #PF (error code {code:#x}: {b.describe_error_code(code)}): the "
                "CPU enters the kernel through the page-fault entry.")
    if step.label == "entry" and "entry text" in step.what:
        return (f"The user page tables do not map the entry text (it was not cloned): the "
                f"first instruction of the entry code faults, #PF error code {code:#x} "
                f"({b.describe_error_code(code)}). The CPU tries to deliver the #PF.")
    if "asm_exc_double_fault" in step.what:
        return ("The #DF handler is entry text too: a fault while delivering a double fault "
                "shuts the CPU down (triple fault, the machine resets).")
    if "asm_exc_page_fault" in step.what:
        return ("The #PF handler is entry text as well, not mapped by this CR3 either: a fault "
                "while delivering a fault is a double fault (#DF).")
    return (f"#PF in kernel mode (error code {code:#x}: {b.describe_error_code(code)}): this "
            "CR3 does not map the address. The CPU tries to deliver the #PF.")


_LABEL_NOTES = {
    "entry": "Entry code (arch/x86/entry/entry_64.S).",
    "kernel": "Ordinary kernel code and data (the handler), mapped only in the kernel PGD.",
    "exit": "The way out: pop the saved registers and jump to the exit stub in the entry text.",
    "user": "User code runs again (CPL 3).",
    "irq": ("The interrupt arrives in kernel mode: the CPU reads the IDT and pushes its frame "
            "on the current kernel stack. Already on the kernel CR3: no switch."),
    "idt": "Delivering the fault: the CPU reads the IDT gate in the cpu_entry_area.",
    "ist": "#DF uses its own IST stack in the cpu_entry_area.",
    "handler": "The CPU fetches the exception handler's first instruction.",
    "switch_to": "__switch_to(): the scheduler switches tasks.",
}
