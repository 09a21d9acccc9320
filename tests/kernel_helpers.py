"""Shared tools for the simulated-kernel tests (tests/test_kernel_*.py).

- :data:`MODES` and :func:`boot`: the isolation modes the tests run in (off; KAISER as in the
  Graz patch, without PCIDs; Linux PTI with and without PCIDs);
- :func:`running`: a booted machine with one task already running in user mode;
- :func:`recorded_ops`: every operation the simulated CPU executes while a block runs (the
  entry code's fetches, stack accesses and CR3 writes, in order);
- :func:`isolation_violations`, :func:`stale_tlb_entries`: the invariants the property tests
  check after every step;
- :class:`Driver`, :class:`ProcModel` and :func:`op_lists`: random sequences of process and
  memory operations, run against a reference model of Linux's user-visible semantics.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

from hypothesis import strategies as st

from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import OP_NAMES
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.kernel import audit
from kaiser_edu.kernel.layout import TASK_SIZE_MAX
from kaiser_edu.kernel.machine import (
    USER_STACK_SIZE,
    USER_STACK_TOP,
    USER_TEXT,
    Kernel,
    TaskKilled,
)
from kaiser_edu.kernel.mm import PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE

PAGE = b.PAGE_SIZE
NOFLUSH = b.X86_CR3_PCID_NOFLUSH
ADDR = b.phys_addr_mask(52)

# name -> Kernel keyword arguments. KAISER runs without PCIDs, as the 2017 Graz patch did (the
# Kernel's default for it); PTI on a Skylake uses PCID and INVPCID unless told not to.
MODES: dict[str, dict] = {
    "off": {"isolation": "off"},
    "kaiser": {"isolation": "kaiser"},
    "pti": {"isolation": "pti"},
    "pti-nopcid": {"isolation": "pti", "pcid": False},
}

# The program every spawn/execve maps (Kernel.exec_mm()).
DATA = USER_TEXT + 0x20_0000
START_BRK = DATA + 0x10_0000
EXEC_LAYOUT = (
    (USER_TEXT, 16, PROT_READ | PROT_WRITE | PROT_EXEC),
    (DATA, 16, PROT_READ | PROT_WRITE),
    (USER_STACK_TOP - USER_STACK_SIZE, USER_STACK_SIZE // PAGE, PROT_READ | PROT_WRITE),
)


def boot(mode: str = "pti", **kw) -> Kernel:
    """A machine booted in one of :data:`MODES` (keyword arguments override)."""
    return Kernel(**{"seed": 0, **MODES[mode], **kw})


def running(mode: str = "pti", **kw):
    """(kernel, task): a task scheduled and back in user mode, its first text page faulted
    in (so later transitions do not page-fault on the first user instruction)."""
    k = boot(mode, **kw)
    task = k.spawn("test")
    assert k.switch_to(task).ok
    return k, task


def new_events(k: Kernel, since: int) -> list:
    return list(k.events)[since:]


def events_of(k: Kernel, since: int, kind: str) -> list:
    return [e for e in new_events(k, since) if e.kind == kind]


@contextlib.contextmanager
def recorded_ops(k: Kernel):
    """Record every op the MMU executes inside the block as (name, addr, arg): the entry
    code's instruction fetches, its stack accesses and its MOV to CR3 (addr = the value
    written, bit 63 = NOFLUSH). Ops after a fault that stopped a trace are not included."""
    ops: list[tuple[str, int, int]] = []
    real = k.mmu.run

    def run(trace, *args, **kwargs):
        result = real(trace, *args, **kwargs)
        for i in range(result.n_done):
            ops.append((OP_NAMES[int(trace.op[i])], int(trace.addr[i]), int(trace.arg[i])))
        return result

    k.mmu.run = run
    try:
        yield ops
    finally:
        del k.mmu.run


def cr3_writes(ops) -> list[int]:
    return [addr for name, addr, _ in ops if name == "mov_cr3"]


def index_of_fetch(ops, va: int) -> int:
    return next(i for i, (name, addr, _) in enumerate(ops) if name == "fetch" and addr == va)


def user_tables(k: Kernel, mm) -> PageTables:
    """The user (shadow) PGD of ``mm`` as a tree that can be read like the kernel's."""
    return PageTables(k.mem, k.alloc, pgd_pa=mm.user_pgd)


def isolation_violations(k: Kernel, mm, check_global: bool = True) -> list:
    """audit.check_isolation() of ``mm``'s PGD pair against the mode's allowed ranges."""
    return audit.check_isolation(k.mem, mm.pgd, mm.user_pgd, k.isolation.shadow_allowed(),
                                 check_global=check_global,
                                 kernel_copy=k.isolation.kernel_copy_marking)


def stale_tlb_entries(k: Kernel) -> list[dict]:
    """TLB entries for user addresses, usable under the current CR3, that the loaded mm's
    page tables no longer back: gone, pointing elsewhere, or with more rights than the PTE
    now gives (fewer rights are fine: an upgrade is fixed up by a spurious fault)."""
    current = k.cr3 & 0xFFF if k.tlbstate.pcid else 0
    bad = []
    for e in k.mmu.tlb_entries():
        if e["global"] or e["va"] >= 1 << 47 or e["pcid"] != current:
            continue
        leaf = k.loaded_mm.tables.leaf(e["va"])
        pte = leaf.value if leaf is not None else 0
        if (
            leaf is None
            or leaf.level != 1
            or pte & ADDR != e["pa"]
            or (e["writable"] and not pte & b.PAGE_RW)
            or (e["user"] and not pte & b.PAGE_USER)
            or (not e["nx"] and pte & b.PAGE_NX)
        ):
            bad.append({**e, "pte": pte})
    return bad


# --- random operation sequences ------------------------------------------------------------
# Every combination of PROT_READ, PROT_WRITE and PROT_EXEC, PROT_NONE first.
PROTS = (PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE, PROT_READ | PROT_EXEC,
         PROT_READ | PROT_WRITE | PROT_EXEC, PROT_WRITE, PROT_EXEC, PROT_WRITE | PROT_EXEC)
ANY_ACCESS = PROT_READ | PROT_WRITE | PROT_EXEC
MAX_TASKS = 9  # more than the 6 ASIDs, so context switches recycle them


@dataclass
class ProcModel:
    """What a process may do under Linux, page by page: VMA protections, the last value
    stored at each address, and the program break."""

    pages: dict[int, int] = field(default_factory=dict)  # page va -> PROT_*
    mem: dict[int, int] = field(default_factory=dict)  # va -> last value stored
    brk: int = START_BRK
    ldt: dict[int, int] | None = None  # modify_ldt(): entry -> descriptor (None: no LDT)
    ldt_entries: int = 0

    @classmethod
    def fresh(cls) -> ProcModel:
        model = cls()
        for start, n, prot in EXEC_LAYOUT:
            model.map(start, n, prot)
        return model

    def map(self, start: int, n: int, prot: int) -> None:
        for i in range(n):
            self.pages[start + i * PAGE] = prot

    def unmap(self, start: int, end: int) -> None:
        for page in range(start, end, PAGE):
            self.pages.pop(page, None)
        for va in [va for va in self.mem if start <= va < end]:
            del self.mem[va]

    def allows(self, va: int, prot: int) -> bool:
        """Does the VMA at ``va`` give one of the rights in ``prot``? (Pass ANY_ACCESS for a
        read: x86 has no write-only or execute-only pages, so arch/x86/mm/fault.c
        access_error() lets any accessible VMA be read, vma_is_accessible().)"""
        return bool(self.pages.get(va & ~(PAGE - 1), PROT_NONE) & prot)

    def linux_brk(self, new: int) -> int:
        """sys_brk() (mm/mmap.c): below the start refused; shrinking unmaps [new, brk);
        growing maps [brk, new) unless it would hit another mapping (Linux also wants a
        page of gap below the next one; the driver's mmaps are never that close)."""
        new = -(-new // PAGE) * PAGE
        if new < START_BRK:
            return self.brk
        if new <= self.brk:
            self.unmap(new, self.brk)
        elif any(page in self.pages for page in range(self.brk, new, PAGE)):
            return self.brk
        else:
            self.map(self.brk, (new - self.brk) // PAGE, PROT_READ | PROT_WRITE)
        self.brk = new
        return new


@dataclass
class Proc:
    task: object
    model: ProcModel
    regions: list[tuple[int, int]]  # (start, pages) of every range ever mapped: probe these
    heap_pages: int = 16
    stored: list[int] = field(default_factory=list)  # addresses stored to: load them back


def _exec_regions() -> list[tuple[int, int]]:
    return [(start, n) for start, n, _ in EXEC_LAYOUT] + [(START_BRK, 16)]


class Driver:
    """Runs operations (tuples drawn by :func:`op_lists`) on one kernel and a reference model
    per process. ``observations`` records what user space saw (values loaded, kills, the
    addresses mmap returned...), which must not depend on the isolation mode. With
    ``check_reference`` every observation is also checked against Linux's semantics."""

    def __init__(self, k: Kernel, check_reference: bool = False):
        self.k = k
        self.check_reference = check_reference
        self.procs: list[Proc] = []
        self.observations: list[tuple] = []
        self.special = (0, USER_STACK_TOP, 1 << 47, k.image.secret)  # never valid
        self.spawn()
        self.spawn()

    # --- helpers -------------------------------------------------------------------------
    def expect(self, ok: bool, what: str) -> None:
        if self.check_reference and not ok:
            raise AssertionError(f"differs from Linux: {what}\nops so far: {self.observations}")

    def proc(self, i: int) -> Proc:
        """0..4: the running process (if alive), else process ``i`` modulo the live ones."""
        if not self.procs:
            self.spawn()
        if i < 5:
            running = [p for p in self.procs if p.task is self.k.current]
            if running:
                return running[0]
        return self.procs[i % len(self.procs)]

    def died(self, p: Proc) -> None:
        assert not p.task.alive, "the kernel reported a kill but the task is alive"
        self.procs.remove(p)

    def fetch_check(self, p: Proc, status: str, what: str) -> None:
        """Every return to user space fetches the instruction at the task's RIP."""
        self.observations.append((what, status))
        assert status in ("ok", "killed"), f"{what}: {status}"
        self.expect((status == "ok") == p.model.allows(USER_TEXT, PROT_EXEC),
                    f"{what} returned to user text at {USER_TEXT:#x}: {status}")
        if status == "killed":
            self.died(p)

    def schedule(self, p: Proc) -> bool:
        """Make ``p`` the running task (a context switch unless it already is)."""
        if self.k.current is p.task:
            return True
        self.fetch_check(p, self.k.switch_to(p.task).status, "switch_to")
        return p in self.procs

    def address(self, p: Proc, region: int, page: int, qword: int) -> int:
        """95..99: an address that is never valid; below 50: one stored to before (by the
        process, its parent or its previous program); else a page of a range it mapped."""
        if region >= 95:
            return self.special[region % len(self.special)]
        if region < 50 and p.stored:
            return p.stored[(2 * page + qword) % len(p.stored)]
        start, n = p.regions[region % len(p.regions)]
        return start + (page % n) * PAGE + 8 * qword

    def span(self, p: Proc, region: int, page: int, n: int) -> tuple[int, int]:
        """``n`` pages from a page :meth:`address` picks (within user space)."""
        addr = self.address(p, region % 95, page, 0) & ~(PAGE - 1)
        return addr, min(addr + n * PAGE, TASK_SIZE_MAX)

    # --- operations ----------------------------------------------------------------------
    def spawn(self) -> None:
        if len(self.procs) < MAX_TASKS:
            task = self.k.spawn(f"p{len(self.procs)}")
            self.procs.append(Proc(task, ProcModel.fresh(), _exec_regions()))
            self.observations.append(("spawn",))

    def run(self, op: tuple) -> None:
        getattr(self, "op_" + op[0])(*op[1:])

    def op_spawn(self) -> None:
        self.spawn()

    def op_fork(self, i: int) -> None:
        if len(self.procs) < MAX_TASKS:
            parent = self.proc(i)
            child = self.k.fork(parent.task)
            self.procs.append(Proc(child, copy.deepcopy(parent.model), list(parent.regions),
                                   parent.heap_pages, list(parent.stored)))
            self.observations.append(("fork",))

    def op_exec(self, i: int) -> None:
        p = self.proc(i)
        self.k.execve(p.task, "exec")
        p.model = ProcModel.fresh()
        p.regions += _exec_regions()
        self.observations.append(("exec",))

    def op_switch(self, i: int) -> None:
        p = self.proc(i)
        self.fetch_check(p, self.k.switch_to(p.task).status, "switch_to")

    def op_enter(self, i: int, kind: str, from_kernel: bool) -> None:
        """A syscall, an interrupt or an NMI of the running task."""
        p = self.proc(i)
        if not self.schedule(p):
            return
        if kind == "syscall":
            out = self.k.syscall(p.task)
        else:
            out = getattr(self.k, kind)(p.task, from_kernel=from_kernel)
        self.fetch_check(p, out.status, kind)

    def op_store(self, i: int, region: int, page: int, qword: int, value: int) -> None:
        p = self.proc(i)
        if not self.schedule(p):
            return
        va = self.address(p, region, page, qword)
        try:
            self.k.user_store(p.task, va, value)
        except TaskKilled:
            self.observations.append(("store", va, "killed"))
            self.expect(not p.model.allows(va, PROT_WRITE), f"store to {va:#x} killed the task")
            self.died(p)
            return
        self.observations.append(("store", va, "ok"))
        self.expect(p.model.allows(va, PROT_WRITE), f"store to {va:#x} succeeded")
        p.model.mem[va] = value
        if va not in p.stored:
            p.stored.append(va)

    def op_load(self, i: int, region: int, page: int, qword: int) -> None:
        p = self.proc(i)
        if not self.schedule(p):
            return
        va = self.address(p, region, page, qword)
        try:
            value = self.k.user_load(p.task, va)
        except TaskKilled:
            self.observations.append(("load", va, "killed"))
            self.expect(not p.model.allows(va, ANY_ACCESS), f"load from {va:#x} killed the task")
            self.died(p)
            return
        self.observations.append(("load", va, value))
        self.expect(p.model.allows(va, ANY_ACCESS), f"load from {va:#x} returned {value:#x}")
        want = p.model.mem.get(va, 0)
        self.expect(value == want, f"load from {va:#x} returned {value:#x}, stored {want:#x}")

    def op_mmap(self, i: int, n: int, prot: int) -> None:
        p = self.proc(i)
        start = self.k.mmap(p.task, n * PAGE, PROTS[prot])
        self.observations.append(("mmap", start))
        used = [start + j * PAGE for j in range(n) if start + j * PAGE in p.model.pages]
        self.expect(not used and start + n * PAGE <= TASK_SIZE_MAX,
                    f"mmap returned {start:#x}, which overlaps {used}")
        p.model.map(start, n, PROTS[prot])
        p.regions.append((start, n))

    def op_munmap(self, i: int, region: int, page: int, n: int) -> None:
        p = self.proc(i)
        start, end = self.span(p, region, page, n)
        self.k.munmap(p.task, start, end - start)
        self.observations.append(("munmap", start, end))
        p.model.unmap(start, end)

    def op_mprotect(self, i: int, region: int, page: int, n: int, prot: int) -> None:
        """mprotect() keeps the contents: a PROT_NONE page comes back with its data."""
        p = self.proc(i)
        start, end = self.span(p, region, page, n)
        got = self.k.mprotect(p.task, start, end - start, PROTS[prot])
        self.observations.append(("mprotect", start, end, prot, got))
        va = start  # mm/mprotect.c: VMA by VMA from start, stopping at the first hole
        while va < end and va in p.model.pages:
            p.model.pages[va] = PROTS[prot]
            va += PAGE
        want = 0 if va == end else -12
        self.expect(got == want, f"mprotect [{start:#x}, {end:#x}) returned {got}, Linux {want}")

    def op_ldt(self, i: int, entry: int, desc: int, load: int) -> None:
        """modify_ldt() of one descriptor, then a user-mode load of selector ``load``: the
        descriptor written last, 0 for an unwritten one inside the LDT, #GP beyond it."""
        p = self.proc(i)
        if not self.schedule(p):
            return
        self.k.modify_ldt(p.task, entry, desc)
        model = p.model
        model.ldt = {**(model.ldt or {}), entry: desc}
        model.ldt_entries = max(model.ldt_entries, entry + 1)
        got = self.k.load_ldt_descriptor(p.task, load)
        self.observations.append(("ldt", entry, load, got))
        want = model.ldt.get(load, 0) if load < model.ldt_entries else None
        self.expect(got == want, f"LDT selector {load} read {got}, Linux gives {want}")
        if got is None:
            self.died(p)

    def op_brk(self, i: int, delta: int) -> None:
        p = self.proc(i)
        got = self.k.brk(p.task, p.model.brk + delta * PAGE)
        want = p.model.linux_brk(p.model.brk + delta * PAGE)
        self.observations.append(("brk", got))
        self.expect(got == want, f"brk returned {got:#x}, Linux gives {want:#x}")
        heap = (max(got, want) - START_BRK) // PAGE
        if heap > p.heap_pages:  # probe the whole heap, even after it shrinks again
            p.heap_pages = heap
            p.regions.append((START_BRK, heap))


def op_lists(min_size: int = 15, max_size: int = 50):
    """Lists of operations for :class:`Driver`: small integers the driver resolves against
    the live processes and the ranges each has mapped, so every list is valid in every
    state and shrinks to simple cases."""
    proc = st.integers(0, 9)  # half of the draws: the running process
    region = st.integers(0, 99)  # 95..99: an address that is never valid
    page = st.integers(0, 7)  # few addresses, so loads meet earlier stores
    qword = st.integers(0, 1)
    pages = st.integers(1, 40)  # up to 40: above the 33-page single-flush ceiling
    prot = st.integers(0, len(PROTS) - 1)
    value = st.integers(1, (1 << 64) - 1)
    store = st.tuples(st.just("store"), proc, region, page, qword, value)
    load = st.tuples(st.just("load"), proc, region, page, qword)
    op = st.one_of(
        store, load, store, load, load, load,
        st.tuples(st.just("switch"), proc),
        st.tuples(st.just("enter"), proc, st.sampled_from(["syscall", "interrupt", "nmi"]),
                  st.booleans()),
        st.tuples(st.just("mmap"), proc, pages, prot),
        st.tuples(st.just("munmap"), proc, region, page, pages),
        st.tuples(st.just("mprotect"), proc, region, page, pages, prot),
        st.tuples(st.just("brk"), proc, st.integers(-8, 8)),
        st.tuples(st.just("ldt"), proc, st.sampled_from([0, 1, 5, 511, 512]), value,
                  st.sampled_from([0, 1, 5, 512, 600])),
        st.tuples(st.just("fork"), proc),
        st.tuples(st.just("exec"), proc),
        st.tuples(st.just("spawn")),
    )
    return st.lists(op, min_size=min_size, max_size=max_size)
