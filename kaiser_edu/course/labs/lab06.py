"""Lab 06, the shadow PGD: the checks of ``solutions/lab06_shadow_pgd.ipynb``.

The student writes the two pieces of arch/x86/mm/pti.c that fill the user (shadow) page
tables, and each check plugs them into a booted :class:`~kaiser_edu.kernel.Kernel` in Linux
PTI mode in place of the kernel's own code, runs processes on it, and compares everything
with the same run on the kernel's own code:

==============================  ===========================================================
check                           student answer, and where it is plugged in
==============================  ===========================================================
:data:`check_set_user_pgtbl`    ``pti_set_user_pgtbl(pgdp, pgd, mem, nx_supported)``: every
                                top-level write of the kernel (native_set_p4d() calls it),
                                from boot on; then the entries a kernel rarely writes
:data:`check_clone_pgtable`     ``pti_clone_pgtable(pti, start, end, level)``: the boot-time
                                clones of pti_init() (entry text, kernel text), the
                                cpu_entry_area as 32-bit PTI clones it, and KAISER-style
                                clones of kernel stacks and of part of a 2 MiB page
==============================  ===========================================================

What a wrong answer does is shown the way it would show on a real machine: *what broke*
(a system call that triple-faulted, a process killed on its first instruction, a user page
missing from the shadow), *what leaked* (kernel memory that has a translation in the user
PGD, from :func:`kaiser_edu.kernel.audit.check_isolation`), and then the root cause: the
first PGD write that differs from Linux's (:class:`PgdCall`), or how the cloned shadow
differs from Linux's (:func:`shadow_differences`), with a hint that reads the difference.

The student's pti_set_user_pgtbl gets ``mem``, a :class:`PgdPairMemory`: it reads physical
memory and writes only inside the 8 KiB PGD pair of the entry (a write elsewhere is
refused with an explanation instead of corrupting the simulated machine). Its return value
is stored in the kernel copy, as native_set_p4d() does with ``WRITE_ONCE(*p4dp,
pti_set_user_pgtbl(p4dp, p4d))``. The student's pti_clone_pgtable gets ``pti``, a
:class:`ShadowTables`: init_mm's PGD pair, physical memory and a page-table allocator.

The expected answers come from the kernel: :meth:`LinuxPTI.set_pgd
<kaiser_edu.kernel.isolation.LinuxPTI.set_pgd>` for each PGD write, the kernel's boot-time
clones, and :func:`reference_clone_pgtable`, pti_clone_pgtable() written on the kernel's
own page-table walker and shadow allocator.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from kaiser_edu.course.checks import (
    ERROR,
    FAILED,
    NOT_ATTEMPTED,
    PASSED,
    AnswerKit,
    Case,
    Check,
    CheckResult,
    as_int,
    clean,
    describe_exception,
    raiser,
    where,
    wrap,
)
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import U64_MASK as U64
from kaiser_edu.hw.address import table_index
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.kernel import audit
from kaiser_edu.kernel import layout as L
from kaiser_edu.kernel.entry import MachineReset
from kaiser_edu.kernel.isolation import LinuxPTI, kernel_to_user_pgdp, pgdp_maps_userspace
from kaiser_edu.kernel.machine import USER_TEXT, Kernel, TaskKilled

__all__ = [
    "ADDR_MASK", "KERNPG_TABLE", "PAGE_GLOBAL", "PAGE_NX", "PAGE_PRESENT", "PAGE_PSE",
    "PAGE_USER", "PMD_SIZE", "PUD_SIZE", "PAGE_SIZE", "PTI_CLONE_PMD", "PTI_CLONE_PTE",
    "PgdPairMemory", "ShadowTables", "check_clone_pgtable", "check_set_user_pgtbl",
    "kernel_to_user_pgdp", "pgdp_maps_userspace", "round_up", "show_pgd_pair", "table_index",
]

# The names the student's code uses, as Linux spells them (arch/x86/include/asm/pgtable*.h).
PAGE_PRESENT, PAGE_USER, PAGE_NX = b.PAGE_PRESENT, b.PAGE_USER, b.PAGE_NX
PAGE_PSE, PAGE_GLOBAL, KERNPG_TABLE = b.PAGE_PSE, b.PAGE_GLOBAL, b.KERNPG_TABLE
PAGE_SIZE, PMD_SIZE, PUD_SIZE = b.PAGE_SIZE, b.PMD_SIZE, b.PUD_SIZE
ADDR_MASK = b.phys_addr_mask(52)  # PTE_PFN_MASK: bits 51:12, the next table or the frame
PTI_CLONE_PMD, PTI_CLONE_PTE = 0, 1  # enum pti_clone_level
LEVEL_NAMES = {PTI_CLONE_PMD: "PTI_CLONE_PMD", PTI_CLONE_PTE: "PTI_CLONE_PTE"}
PAIR = 2 * b.PAGE_SIZE


def round_up(x: int, size: int) -> int:
    """The smallest multiple of ``size`` (a power of two) that is >= ``x``.

    >>> hex(round_up(0xffffffff81000001, 0x200000))
    '0xffffffff81200000'
    """
    return (x + size - 1) & ~(size - 1)


def _slot(pgdp: int) -> int:
    return (pgdp & (b.PAGE_SIZE - 1)) >> 3


def show_pgd_pair(k: Kernel, mm: Any, indices: Sequence[int]) -> str:
    """The entries ``indices`` of ``mm``'s two PGD copies side by side (for the notebook)."""
    lines = [f"{'PGD slot':<10}{'kernel copy':<22}{'user copy':<22}"]
    for i in indices:
        kv = k.mem.read_qword(mm.pgd + 8 * i)
        uv = k.mem.read_qword(mm.user_pgd + 8 * i)
        lines.append(f"{i:<10}{kv:#018x}    {uv:#018x}    "
                     f"{'(user half)' if i < audit.PGD_USER_ENTRIES else '(kernel half)'}")
    return "\n".join(lines)


# --- what the student's functions get --------------------------------------------------------


class RefusedWrite(KaiserEduError):
    """The student's code wrote where it must not (outside the PGD pair, or a bad value)."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


class _DictMem:
    """Physical memory as a dict of qwords (for PGD writes computed on the side)."""

    def __init__(self, values: dict[int, int] | None = None):
        self.values = dict(values or {})

    def read_qword(self, pa: int) -> int:
        return self.values.get(pa, 0)

    def write_qword(self, pa: int, value: int) -> None:
        self.values[pa] = value


def _qword(pa: Any, value: Any = 0) -> tuple[int, int]:
    """Validate a physical address and a value written by the student's code."""
    addr, val = as_int(pa), as_int(value)
    if addr is None or val is None:
        raise RefusedWrite(f"write_qword({clean(repr(pa))}, {clean(repr(value))}): both must "
                           "be ints", "pass the physical address and the entry as ints.")
    if addr < 0 or addr & 7:
        raise RefusedWrite(f"write_qword({addr:#x}, ...): not an 8-byte aligned address",
                           "an entry's address is its table's address + 8 * index.")
    if not 0 <= val <= U64:
        raise RefusedWrite(f"write_qword({addr:#x}, {val:#x}): the value does not fit in 64 "
                           "bits", "entries are 64-bit: keep values in 0 .. 2**64 - 1 (use "
                           "& ~bit to clear a bit, never a negative number).")
    return addr, val


class _StudentMemory:
    """Physical memory as the student's code sees it: ``read_qword(pa)`` anywhere, with the
    address validated (:func:`_qword`); subclasses decide where ``write_qword`` may write."""

    def __init__(self, backing: Any):
        self._backing = backing

    def read_qword(self, pa: int) -> int:
        addr, _ = _qword(pa)
        return self._backing.read_qword(addr)


class PgdPairMemory(_StudentMemory):
    """The ``mem`` the student's pti_set_user_pgtbl() gets: reads anywhere, writes only in
    the 8 KiB PGD pair of the entry being set. Records every write."""

    def __init__(self, backing: Any, pgdp: int):
        super().__init__(backing)
        self.pgdp = pgdp
        self.pair = pgdp & ~(PAIR - 1)
        self.writes: list[tuple[int, int]] = []

    def write_qword(self, pa: int, value: int) -> None:
        addr, val = _qword(pa, value)
        if not self.pair <= addr < self.pair + PAIR:
            raise RefusedWrite(
                f"your function wrote {val:#x} to {addr:#x}, outside the PGD pair "
                f"[{self.pair:#x}, {self.pair + PAIR:#x}) of the entry at pgdp={self.pgdp:#x}",
                f"the user copy of the entry at pgdp is kernel_to_user_pgdp(pgdp) = pgdp | "
                f"4096 = {kernel_to_user_pgdp(self.pgdp):#x} (bit 12 of the address, not of "
                "the index).")
        self.writes.append((addr, val))
        self._backing.write_qword(addr, val)

    def __repr__(self) -> str:
        return f"<physical memory, writable in the PGD pair at {self.pair:#x}>"


class PhysicalMemory(_StudentMemory):
    """The ``pti.mem`` of :class:`ShadowTables`: read_qword / write_qword, validated."""

    def __init__(self, kernel: Kernel):
        super().__init__(kernel.mem)
        self._limit = kernel.ram_bytes

    def write_qword(self, pa: int, value: int) -> None:
        addr, val = _qword(pa, value)
        if addr >= self._limit:
            raise RefusedWrite(f"write_qword({addr:#x}, ...): beyond the machine's RAM "
                               f"({self._limit >> 20} MiB)",
                               "mask an entry with ADDR_MASK to get the table it points to.")
        self._backing.write_qword(addr, val)

    def __repr__(self) -> str:
        return "<physical memory>"


class ShadowTables:
    """The ``pti`` the student's pti_clone_pgtable() gets: init_mm's PGD pair.

    - ``kernel_pgd``: physical address of the kernel PGD (``pgd_offset_k()`` indexes it);
    - ``user_pgd``: physical address of its user copy, ``kernel_to_user_pgdp(kernel_pgd)``;
    - ``mem``: ``read_qword(pa)`` / ``write_qword(pa, value)`` on physical memory;
    - ``alloc_table()``: a zeroed 4 KiB page for a new table (``__get_free_page(GFP_ZERO)``);
    - ``pge``: X86_FEATURE_PGE, so clones get _PAGE_GLOBAL.
    """

    def __init__(self, kernel: Kernel):
        self._kernel = kernel
        self.mem = PhysicalMemory(kernel)
        self.kernel_pgd = kernel.init_mm.pgd
        self.user_pgd = kernel_to_user_pgdp(kernel.init_mm.pgd)
        self.pge = True

    def alloc_table(self) -> int:
        return self._kernel.alloc.alloc()

    def __repr__(self) -> str:
        return f"<init_mm: kernel PGD {self.kernel_pgd:#x}, user PGD {self.user_pgd:#x}>"


# --- exercise 1: one PGD write -------------------------------------------------------------


def engine_set_user_pgtbl(pgdp: int, pgd: int, nx_supported: bool, old_kernel: int = 0,
                          old_user: int = 0) -> tuple[int, int]:
    """(kernel copy, user copy) of the entry at ``pgdp`` after the kernel's own set_pgd()
    (LinuxPTI.set_pgd: __pti_set_user_pgtbl() plus the store of its result)."""
    user = kernel_to_user_pgdp(pgdp)
    mem = _DictMem({pgdp: old_kernel, user: old_user})
    pti = LinuxPTI()
    pti.kernel = SimpleNamespace(mem=mem, nx_supported=nx_supported)  # type: ignore[assignment]
    pti.set_pgd(pgdp, pgd)
    return mem.values[pgdp], mem.values[user]


class StudentError(Exception):
    """The student's code raised ``error`` while the kernel was doing ``during``."""

    def __init__(self, error: BaseException, during: str, call: str):
        super().__init__(str(error))
        self.error, self.during, self.call = error, during, call


class BadAnswer(Exception):
    """The student's code answered something unusable (``message``, with a ``hint``)."""

    def __init__(self, message: str, hint: str, during: str):
        super().__init__(message)
        self.message, self.hint, self.during = message, hint, during


def _call_student(fn: Callable[..., Any], args: tuple, call: str, during: str) -> Any:
    """``fn(*args)``, the student's code: a refused write becomes :class:`BadAnswer`, any
    other exception :class:`StudentError` (``call`` and ``during`` say where, for
    the feedback)."""
    try:
        return fn(*args)
    except RefusedWrite as e:
        raise BadAnswer(f"{call}: {e.message}", e.hint, during) from e
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as e:
        raise StudentError(e, during, call) from e


def _set_call_text(pgdp: int, pgd: int, nx: bool) -> str:
    return f"pti_set_user_pgtbl(pgdp={pgdp:#x}, pgd={pgd:#x}, mem, nx_supported={nx})"


@dataclass(frozen=True)
class PgdCall:
    """One top-level write: what Linux leaves in both copies, and what the student did."""

    pgdp: int
    pgd: int
    nx_supported: bool
    old_user: int
    expected: tuple[int, int]  # (kernel copy, user copy)
    got: tuple[int, int]
    during: str = ""

    @property
    def wrong(self) -> bool:
        return self.expected != self.got

    def what(self) -> str:
        """What kind of entry this is, in words."""
        half = "user half" if pgdp_maps_userspace(self.pgdp) else "kernel half"
        if not self.pgd & PAGE_PRESENT:
            kind = "not present" + (" (clearing the entry)" if self.pgd == 0 else "")
        elif self.pgd & PAGE_USER:
            kind = "present, _PAGE_USER"
        else:
            kind = "present, no _PAGE_USER"
        nx = "" if self.nx_supported else ", CPU without NX"
        return f"PGD slot {_slot(self.pgdp)}, {half}; {kind}{nx}"

    def report(self) -> list[str]:
        user = kernel_to_user_pgdp(self.pgdp)
        (ek, eu), (gk, gu) = self.expected, self.got

        def copies(k: int, u: int) -> str:
            kept = " (unchanged)" if u == self.old_user else ""
            return f"returns {k:#x} for the kernel copy; user copy at {user:#x} = {u:#x}{kept}"

        return [f"  {_set_call_text(self.pgdp, self.pgd, self.nx_supported)}",
                f"    ({self.what()})",
                f"    Linux: {copies(ek, eu)}",
                f"    yours: {copies(gk, gu)}"]

    def hint(self) -> str:
        (ek, eu), (gk, gu) = self.expected, self.got
        user_half = pgdp_maps_userspace(self.pgdp)
        nx_rule = ("_PAGE_NX is added only when the entry has both _PAGE_USER and "
                   "_PAGE_PRESENT and the CPU supports NX")
        if not user_half:
            if gu != eu:
                return ("You mirrored a kernel-half entry into the user copy. "
                        "pgdp_maps_userspace(pgdp) is False for slots 256-511: Linux returns "
                        "such an entry unchanged and writes nothing to the user PGD, which "
                        "must map (almost) nothing of the kernel. Mirror only user-half "
                        "entries.")
            return "A kernel-half entry is returned unchanged: no NX, no other change."
        if gu == self.old_user and eu != self.old_user:
            if not self.pgd & PAGE_PRESENT:
                return (f"The user copy was not updated when the entry became not present: it "
                        f"still holds the old entry {self.old_user:#x}, a *stale* mapping. "
                        "The kernel unmapped this slot, but user code running on the user "
                        "CR3 still reaches the old tables (and the memory they map, maybe "
                        "already reused). Write pgd to kernel_to_user_pgdp(pgdp) for every "
                        "user-half entry, present or not: clearing must reach both copies.")
            return ("The user copy was not written: the user PGD would miss this entry, so "
                    "user code running on the user CR3 could not reach this memory. Write the "
                    "unmodified pgd to kernel_to_user_pgdp(pgdp).")
        if gu != eu:
            if gu == eu | PAGE_NX:
                return ("You put NX in the user copy: there the entry must be the unmodified "
                        "pgd, or every instruction fetch of user code in this 512 GiB slot "
                        "faults. NX goes only on the value you *return* (the kernel copy).")
            return "The user copy must hold pgd exactly as it was passed in."
        if gk == ek & ~PAGE_NX:
            return ("The kernel copy lacks NX. If the kernel ever returned to user mode "
                    "without switching CR3 back, user code would run with the kernel's page "
                    "tables, which map all of kernel memory; with NX on the kernel copy its "
                    f"first instruction faults instead. {nx_rule}.")
        if gk == ek | PAGE_NX:
            if not self.pgd & PAGE_PRESENT:
                why = "this entry is not present (the PGD slot is being cleared)"
            elif not self.pgd & PAGE_USER:
                why = ("this entry has no _PAGE_USER (say an executable EFI runtime mapping "
                       "the kernel may run code from)")
            else:
                why = ("this CPU has no NX: bit 63 is then a reserved bit, and every walk "
                       "through the entry would fault with RSVD")
            return f"Do not add NX here: {why}. {nx_rule}."
        return f"Return pgd, with _PAGE_NX added when the rule says so: {nx_rule}."


def call_set_user_pgtbl(fn: Callable[..., Any], backing: Any, pgdp: int, pgd: int,
                        nx_supported: bool, during: str = "") -> PgdCall:
    """Run the student's function like native_set_p4d() does, on ``backing`` memory, and
    compare with :func:`engine_set_user_pgtbl`."""
    user = kernel_to_user_pgdp(pgdp)
    old_kernel, old_user = backing.read_qword(pgdp), backing.read_qword(user)
    expected = engine_set_user_pgtbl(pgdp, pgd, nx_supported, old_kernel, old_user)
    mem = PgdPairMemory(backing, pgdp)
    call = _set_call_text(pgdp, pgd, nx_supported)
    got = _call_student(fn, (pgdp, pgd, mem, nx_supported), call, during)
    value = as_int(got)
    if value is None or not 0 <= value <= U64:
        hint = ("did you forget `return`? Return the value for the kernel copy." if got is None
                else "return the value for the kernel copy: an int of 64 bits.")
        raise BadAnswer(f"{call} returned {clean(repr(got))}", hint, during)
    stray = [(a, v) for a, v in mem.writes if a not in (pgdp, user)]
    if stray:
        a, v = stray[0]
        raise BadAnswer(
            f"{call} wrote {v:#x} to {a:#x}, another slot of the PGD pair (slot "
            f"{_slot(a)} of the {'user' if a & b.PAGE_SIZE else 'kernel'} copy)",
            f"the user copy of this entry is at kernel_to_user_pgdp(pgdp) = {user:#x}: the same "
            "slot, 4096 bytes higher.", during)
    backing.write_qword(pgdp, value)  # WRITE_ONCE(*p4dp, pti_set_user_pgtbl(p4dp, p4d))
    return PgdCall(pgdp, pgd, nx_supported, old_user, expected,
                   (value, backing.read_qword(user)), during)


# --- the kernel with the student's code plugged in -----------------------------------------


class LabPTI(LinuxPTI):
    """Linux PTI whose set_pgd and/or clones run the student's functions.

    ``set_user_pgtbl``: every top-level write goes through it (else the kernel's own);
    ``clone``: called for the boot-time PMD clones (entry text, kernel text) as
    ``clone(ShadowTables(k), start, end, PTI_CLONE_PMD)``; with ``cea_pmd`` the
    cpu_entry_area is cloned by ``clone`` at PMD level (as 32-bit PTI does) instead of by
    copying its P4D. ``during`` says what the kernel is doing, for messages.
    """

    def __init__(self, set_user_pgtbl: Callable[..., Any] | None = None,
                 clone: Callable[..., Any] | None = None, cea_pmd: bool = False,
                 **options: Any):
        super().__init__(**options)
        self.set_user_pgtbl = set_user_pgtbl
        self.clone = clone
        self.cea_pmd = cea_pmd
        self.during = "boot: building the kernel's page tables (init_mm)"
        self.calls: list[PgdCall] = []

    def set_pgd(self, pgdp: int, value: int) -> None:
        if self.set_user_pgtbl is None:
            return super().set_pgd(pgdp, value)
        k = self.kernel
        self.calls.append(call_set_user_pgtbl(self.set_user_pgtbl, k.mem, pgdp, value,
                                              k.nx_supported, self.during))

    def first_wrong_call(self) -> PgdCall | None:
        return next((c for c in self.calls if c.wrong), None)

    def boot(self) -> None:
        self.during = "boot: pti_init() cloning into init_mm's user tables"
        super().boot()

    def _clone_pmds(self, start: int, end: int) -> None:
        if self.clone is None:
            return super()._clone_pmds(start, end)
        run_clone(self.clone, self.kernel, start, end, PTI_CLONE_PMD, self.during)

    def _clone_pgd_slot(self, va: int) -> None:
        if va == L.CPU_ENTRY_AREA_BASE and self.cea_pmd:
            start, end = _cea_range(self.kernel)
            clone = self.clone or _reference_as_student
            run_clone(clone, self.kernel, start, end, PTI_CLONE_PMD, self.during)
            return
        super()._clone_pgd_slot(va)


def _cea_range(k: Kernel) -> tuple[int, int]:
    pages = k.cea_pages()
    return pages[0][1], pages[-1][1] + pages[-1][2]


def _clone_text(start: int, end: int, level: int) -> str:
    return f"pti_clone_pgtable(pti, {start:#x}, {end:#x}, {LEVEL_NAMES[level]})"


def run_clone(fn: Callable[..., Any], k: Kernel, start: int, end: int, level: int,
              during: str) -> None:
    """Call a student's (or the reference) pti_clone_pgtable on ``k``'s init_mm."""
    _call_student(fn, (ShadowTables(k), start, end, level), _clone_text(start, end, level),
                  during)


def reference_clone_pgtable(k: Kernel, start: int, end: int, level: int) -> None:
    """pti_clone_pgtable() (arch/x86/mm/pti.c) on kaiser_edu's kernel, built on the
    kernel's own walker (:meth:`PageTables.entries`) and shadow allocator
    (``_user_table``, pti_user_pagetable_walk_*()): clone the populated PMDs (or PTEs) of
    [start, end) into init_mm's user tables, marking each clone global in both copies;
    skip holes; a 2 MiB PMD is cloned whole even at PTE level."""
    iso = k.isolation
    addr = start
    while start <= addr < end:
        walk = {e.level: e for e in k.kernel_tables.entries(addr)}
        if not walk[4].present:
            raise KaiserEduError(f"pti_clone_pgtable: no PGD entry for {addr:#x}")
        pud = walk[3]
        if not pud.present:
            addr = round_up(addr + 1, PUD_SIZE)
            continue
        if pud.is_leaf:
            raise KaiserEduError(f"pti_clone_pgtable: {addr:#x} is in a 1 GiB page")
        pmd = walk[2]
        if not pmd.present:
            addr = round_up(addr + 1, PMD_SIZE)
            continue
        if pmd.is_leaf or level == PTI_CLONE_PMD:
            value = pmd.value | PAGE_GLOBAL
            k.mem.write_qword(pmd.pa, value)
            k.mem.write_qword(iso._user_table(addr, 2) | table_index(addr, 2) << 3, value)
            addr = round_up(addr + 1, PMD_SIZE)
            continue
        pte = walk[1]
        if pte.present:
            value = pte.value | PAGE_GLOBAL
            k.mem.write_qword(pte.pa, value)
            k.mem.write_qword(iso._user_table(addr, 1) | table_index(addr, 1) << 3, value)
        addr = round_up(addr + 1, PAGE_SIZE)


def _reference_as_student(pti: ShadowTables, start: int, end: int, level: int) -> None:
    reference_clone_pgtable(pti._kernel, start, end, level)


# --- scenarios ------------------------------------------------------------------------------

# Steps are tuples: ("spawn", name), ("switch", name), ("store", name, va, value),
# ("load", name, va), ("syscall", name), ("interrupt", name), ("nmi", name, from_kernel),
# ("fork", parent, child), ("mmap", name, addr, pages), ("munmap", name, addr, pages),
# ("missed_switch", name), ("execve", name), ("clone", target, level), ("kernel_view", name, va)
HEAP = USER_TEXT + 0x20_0000
FAR = 0x1000_0000_0000  # a user address in PGD slot 32: a new top-level entry


@dataclass(frozen=True)
class Scenario:
    """A machine (PTI, with or without PCID, LinuxPTI ``options``) and what runs on it."""

    name: str
    steps: tuple[tuple, ...]
    pcid: bool = True
    options: dict = field(default_factory=dict)
    cea_pmd: bool = False

    def describe(self) -> str:
        return f"{self.name} (PTI {'with' if self.pcid else 'without'} PCID)"


def step_text(step: tuple) -> str:
    kind, *args = step
    if kind in ("store", "load", "kernel_view"):
        verb = {"store": f"stores {args[-1]:#x} at", "load": "loads from",
                "kernel_view": "reads, through the kernel PGD (as copy_from_user() does),"
                }[kind]
        return f"{args[0]} {verb} {args[1]:#x}"
    if kind == "fork":
        return f"{args[0]} forks {args[1]}"
    if kind in ("mmap", "munmap"):
        return f"{args[0]} {kind}s {args[2]} pages at {args[1]:#x}"
    if kind == "nmi":
        return f"NMI {'during a syscall of' if args[1] else 'in user mode of'} {args[0]}"
    if kind == "missed_switch":
        return (f"a syscall of {args[0]} whose exit forgets SWITCH_TO_USER_CR3 (the bug PTI's "
                "NX is there to catch)")
    if kind == "clone":
        return f"clone {CLONE_TARGETS[args[0]][0]} at {LEVEL_NAMES[args[1]]} level"
    return f"{kind} {args[0]}" if args else kind


def _stacks(k: Kernel) -> tuple[int, int]:
    """From 1 GiB below the vmalloc area (a PUD hole, unless vmalloc starts its PGD slot)
    to 1 GiB into it: the kernel stacks, with PMD and PTE holes."""
    start = k.layout.vmalloc_base
    if table_index(start, 3):
        start -= PUD_SIZE
    return start, k.layout.vmalloc_base + PUD_SIZE


def _image_part(k: Kernel) -> tuple[int, int]:
    """From 4 MiB below _text (PMD holes) to 64 KiB into .rodata (2 MiB pages)."""
    return k.image.text - 2 * PMD_SIZE, k.image.rodata + 16 * PAGE_SIZE


#: Ranges the clone steps use: name -> (description, range of a booted kernel).
CLONE_TARGETS: dict[str, tuple[str, Callable[[Kernel], tuple[int, int]]]] = {
    "stacks": ("every kernel stack (as KAISER mapped them), from 1 GiB below the vmalloc "
               "area", _stacks),
    "image": ("the kernel image from 4 MiB below _text to 64 KiB into .rodata (2 MiB "
              "pages)", _image_part),
}


class Machine:
    """A booted kernel running a :class:`Scenario`, step by step."""

    def __init__(self, sc: Scenario, set_user_pgtbl: Callable | None = None,
                 clone: Callable | None = None):
        self.clone = clone
        self.pti = LabPTI(set_user_pgtbl, clone, cea_pmd=sc.cea_pmd, **sc.options)
        self.tasks: dict[str, Any] = {}
        self.clones: list[tuple[int, int, int]] = []
        self.booted = "ok"
        try:
            self.k = Kernel(isolation=self.pti, seed=6, pcid=sc.pcid)
        except KaiserEduError as e:  # the student's code broke the boot
            self.k = None  # type: ignore[assignment]
            self.booted = f"kernel BUG: {clean(str(e))}"

    def step(self, step: tuple) -> str:
        """Run one step; return what user space (or the machine) saw."""
        self.pti.during = f"step: {step_text(step)}"
        try:
            return self._step(*step)
        except TaskKilled as e:
            return f"killed: {e}"
        except MachineReset as e:
            return f"machine halted: {e}"
        except (StudentError, BadAnswer):
            raise
        except KaiserEduError as e:
            return f"kernel BUG: {clean(str(e))}"

    def _step(self, kind: str, *args: Any) -> str:
        k, t = self.k, self.tasks
        if kind == "spawn":
            t[args[0]] = k.spawn(args[0])
            return "ok"
        if kind == "fork":
            t[args[1]] = k.fork(t[args[0]])
            return "ok"
        if kind == "clone":
            start, end = CLONE_TARGETS[args[0]][1](k)
            run_clone(self.clone or _reference_as_student, k, start, end, args[1],
                      self.pti.during)
            self.clones.append((start, end, args[1]))
            return "ok"
        task = t[args[0]]
        if not task.alive:
            return f"(dead: {task.exit_reason})"
        if kind in ("store", "load") and k.current is not task:
            out = k.switch_to(task)
            if not out.ok:
                return f"switch_to: {out.status} {out.detail}"
        if kind == "switch":
            out = k.switch_to(task)
        elif kind in ("syscall", "interrupt"):
            out = getattr(k, kind)(task)
        elif kind == "nmi":
            out = k.nmi(task, from_kernel=args[1])
        elif kind == "missed_switch":
            k.entry.skip_switch_to_user_cr3 = True
            try:
                out = k.syscall(task)
            finally:
                k.entry.skip_switch_to_user_cr3 = False
        elif kind == "store":
            k.user_store(task, args[1], args[2])
            return "ok"
        elif kind == "load":
            return f"{k.user_load(task, args[1]):#x}"
        elif kind == "kernel_view":
            pa = audit.translate(k.mem, task.mm.pgd, args[1])
            return "not mapped" if pa is None else f"{k.mem.read_qword(pa):#x}"
        elif kind == "mmap":
            return f"{k.mmap(task, args[2] * PAGE_SIZE, addr=args[1]):#x}"
        elif kind == "munmap":
            k.munmap(task, args[1], args[2] * PAGE_SIZE)
            return "ok"
        elif kind == "execve":
            k.execve(task, "exec")
            return "ok"
        else:
            raise KaiserEduError(f"unknown step {kind!r}")
        if out.detail and not out.detail.startswith(out.status):
            return f"{out.status}: {out.detail}"
        return out.detail or out.status

    def violations(self) -> list[audit.Violation]:
        """The isolation audit of every live process's PGD pair (with the cloned ranges
        allowed)."""
        if self.k is None:
            return []
        allowed = self.k.isolation.shadow_allowed() + [
            (s, e, "cloned by the scenario") for s, e, _ in self.clones]
        found = []
        for task in self.tasks.values():
            if task.alive:
                found += audit.check_isolation(self.k.mem, task.mm.pgd, task.mm.user_pgd,
                                               allowed)
        return found


def run(sc: Scenario, set_user_pgtbl: Callable | None = None,
        clone: Callable | None = None) -> tuple[Machine, list[str]]:
    """Boot and run ``sc``; (machine, what the boot and then each step saw). The student's
    errors raise :class:`StudentError` / :class:`BadAnswer`."""
    m = Machine(sc, set_user_pgtbl, clone)
    if m.k is None:
        return m, [m.booted]
    return m, [m.booted] + [m.step(s) for s in sc.steps]


def _first_difference(sc: Scenario, expected: Sequence[str], got: Sequence[str]) -> list[str]:
    for i, (want, have) in enumerate(zip(expected, got)):
        if want != have:
            what = f"step {i}: {step_text(sc.steps[i - 1])}" if i else "boot"
            lines = [f"  {what}", f"    Linux's PTI: {want}", f"    yours:       {have}"]
            lines += [wrap(f"    ({text})") for pattern, text in _KNOWN_BREAKAGE.items()
                      if pattern in have]
            return lines
    return []


#: What a failure the simulated kernel reports means for the shadow tables.
_KNOWN_BREAKAGE = {
    "already mapped": "user code faulted on a page that the kernel's own page tables map: "
                      "the user (shadow) PGD lacks it",
    "triple fault": "the entry code faulted on the user CR3: something it needs is missing "
                    "from the user tables, and the #PF and #DF handlers are too",
    "NX fault on the first user instruction": "Linux's NX on the kernel copy caught the "
                                              "missed CR3 switch",
}


# --- the set_user_pgtbl check ------------------------------------------------------------

SET_SCENARIOS = (
    Scenario("one process: boot, demand paging, syscalls, an interrupt and NMIs", (
        ("spawn", "A"), ("switch", "A"), ("store", "A", HEAP, 0x42),
        ("store", "A", 0x7FFF_FFFF_E000, 0x5EC), ("syscall", "A"), ("interrupt", "A"),
        ("nmi", "A", False), ("nmi", "A", True), ("load", "A", HEAP),
        ("kernel_view", "A", HEAP))),
    Scenario("fork, context switches, and a mapping in a new top-level slot", (
        ("spawn", "A"), ("switch", "A"), ("store", "A", HEAP, 0xA),
        ("fork", "A", "B"), ("switch", "B"), ("load", "B", HEAP), ("store", "B", HEAP, 0xB),
        ("mmap", "B", FAR, 4), ("store", "B", FAR + 8, 0xF00D), ("switch", "A"),
        ("load", "A", HEAP), ("switch", "B"), ("load", "B", FAR + 8),
        ("kernel_view", "B", FAR + 8), ("syscall", "B"), ("munmap", "B", FAR, 4),
        ("mmap", "B", FAR, 2), ("load", "B", FAR + 8), ("execve", "B"), ("switch", "B"),
        ("syscall", "B"))),
    Scenario("without PCID: more processes", (
        ("spawn", "A"), ("switch", "A"), ("store", "A", HEAP, 1), ("spawn", "C"),
        ("switch", "C"), ("store", "C", FAR, 3), ("fork", "C", "D"), ("switch", "D"),
        ("load", "D", FAR), ("syscall", "D"), ("switch", "A"), ("load", "A", HEAP)),
        pcid=False),
    Scenario("a missed switch back to the user CR3", (
        ("spawn", "A"), ("switch", "A"), ("syscall", "A"), ("missed_switch", "A"))),
)


def edge_cases(rng: random.Random) -> list[tuple[int, int, bool, int, int, str]]:
    """PGD writes a booted kernel rarely makes: (pgdp, pgd, nx_supported, old kernel copy,
    old user copy, note)."""
    pair = rng.randrange(64 << 20, 1 << 30, PAIR)
    table = rng.randrange(64 << 20, 1 << 30, PAGE_SIZE)
    present_user = table | b.PAGE_TABLE
    old = (table + PAGE_SIZE) | b.PAGE_TABLE
    cases = [
        (pair + 8 * 3, 0, True, old | PAGE_NX, old, "clearing a user-half slot"),
        (pair + 8 * 9, table | b.PAGE_RW | PAGE_USER, True, 0, 0,
         "not present, other bits set"),
        (pair + 8 * 17, table | KERNPG_TABLE, True, 0, 0,
         "user half, present without _PAGE_USER (like an EFI runtime mapping)"),
        (pair + 8 * 40, present_user, False, 0, 0, "a CPU without NX"),
        (pair + 8 * 255, present_user, True, 0, 0, "the last user-half slot"),
        (pair + 8 * 256, table | KERNPG_TABLE, True, 0, 0, "the first kernel-half slot"),
        (pair + 8 * 300, present_user, True, 0, 0,
         "kernel half with _PAGE_USER set: still not mirrored"),
        (pair + 8 * 77, present_user | PAGE_NX, True, 0, 0, "already NX"),
    ]
    for _ in range(12):
        slot = rng.randrange(512)
        value = rng.randrange(64 << 20, 1 << 30, PAGE_SIZE) | rng.choice(
            [b.PAGE_TABLE, KERNPG_TABLE, 0, b.PAGE_TABLE | PAGE_NX])
        cases.append((pair + 8 * slot, value, rng.random() < 0.8, 0, 0, "random"))
    return cases


def _violation_lines(violations: Sequence[audit.Violation], limit: int = 3) -> list[str]:
    """The first violations of each invariant, one line each, then its explanation once."""
    lines = []
    for invariant in dict.fromkeys(v.invariant for v in violations):
        same = [v for v in violations if v.invariant == invariant]
        for v in same[:limit]:
            lines.append(wrap("  " + v.describe().split("\n")[0]))
        if len(same) > limit:
            lines.append(f"  ... and {len(same) - limit} more")
        lines.append(wrap(f"    {same[0].explanation}"))
    return lines


def _leaks(violations: Sequence[audit.Violation]) -> list[audit.Violation]:
    return [v for v in violations if v.invariant == "kernel_mapped_in_user_pgd"]


@dataclass(frozen=True, repr=False)
class SetUserPgtblCheck(Check):
    """Runs a kernel whose every top-level write goes through the student's function, on
    :data:`SET_SCENARIOS`, then the :func:`edge_cases` one by one."""

    def _run(self, fn: Any, seed: int) -> CheckResult:
        if not callable(fn):
            return self._result(ERROR, f"This check needs your function {self.function} "
                                "itself: pass it without calling it.")
        total = len(SET_SCENARIOS) + 1
        for number, sc in enumerate(SET_SCENARIOS):
            _, expected = run(sc)
            try:
                m, got = run(sc, set_user_pgtbl=fn)
            except (StudentError, BadAnswer) as e:
                return self._student_failure(e, sc, number, total)
            problem = self._compare(m, sc, expected, got)
            if problem:
                return self._result(FAILED, f"Scenario {number + 1} of {total - 1}: "
                                    f"{sc.describe()}\n{problem}", cases=total,
                                    passed_cases=number)
        edge = self._edges(fn, seed, total)
        if edge is not None:
            return edge
        return self._result(PASSED, f"All {total - 1} kernel scenarios ran as with Linux's "
                            "pti_set_user_pgtbl(), the isolation audit clean at the end of each, "
                            "and the rarer PGD writes all agree.",
                            cases=total, passed_cases=total)

    def _compare(self, m: Machine, sc: Scenario, expected: list[str], got: list[str]) -> str:
        lines = []
        diff = _first_difference(sc, expected, got)
        if diff:
            lines += ["What broke:"] + diff
        violations = m.violations()
        leaks = _leaks(violations)
        if leaks:
            lines.append("What leaked (kernel memory with a translation in a user PGD, "
                         "readable by Meltdown):")
            lines += _violation_lines(leaks)
        others = [v for v in violations if v not in leaks]
        if others:
            lines.append("Broken isolation invariants (kaiser_edu.kernel.audit):")
            lines += _violation_lines(others)
        wrong = m.pti.first_wrong_call()
        if not lines and wrong is None:
            return ""
        if wrong is None:  # cannot happen if set_pgd is the only student code; say so
            lines.append("(every PGD write agreed with Linux's, yet the run differs)")
            return "\n".join(lines)
        if not lines:
            lines.append("Nothing visibly broke, but a PGD write differs from Linux's.")
        lines.append(f"The first PGD write that differs from Linux's ({wrong.during}):")
        lines += wrong.report()
        lines.append(wrap(f"Hint: {wrong.hint()}"))
        return "\n".join(lines)

    def _edges(self, fn: Any, seed: int, total: int) -> CheckResult | None:
        for pgdp, pgd, nx, old_k, old_u, note in edge_cases(random.Random(seed)):
            mem = _DictMem({pgdp: old_k, kernel_to_user_pgdp(pgdp): old_u})
            try:
                call = call_set_user_pgtbl(fn, mem, pgdp, pgd, nx, note)
            except (StudentError, BadAnswer) as e:
                return self._student_failure(e, None, total - 1, total)
            if call.wrong:
                lines = [f"The kernel scenarios all passed; then the PGD writes a kernel "
                         f"rarely makes ({note}):"] + call.report()
                lines.append(wrap(f"Hint: {call.hint()}"))
                return self._result(FAILED, "\n".join(lines), cases=total,
                                    passed_cases=total - 1)
        return None

    def _student_failure(self, e: Exception, sc: Scenario | None, number: int,
                         total: int) -> CheckResult:
        where_ = (f"scenario {number + 1} of {total - 1} ({sc.describe()})" if sc is not None
                  else "the rarer PGD writes")
        if isinstance(e, BadAnswer):
            text = (f"In {where_}, during {e.during}:\n  {e.message}\n"
                    + wrap(f"Hint: {e.hint}"))
            return self._result(FAILED, text, cases=total, passed_cases=number)
        assert isinstance(e, StudentError)
        return _student_error(self, e, where_, number, total)


def _student_error(check: Check, e: StudentError, where_: str, number: int,
                   total: int) -> CheckResult:
    if isinstance(e.error, NotImplementedError):
        name = _raiser(e.error)
        if number == 0:
            text = (f"{name} still raises NotImplementedError.\nReplace `raise "
                    "NotImplementedError()` with your code, run that cell, then this check.")
        else:
            text = f"{name} is not finished: it raised NotImplementedError in {where_}."
        return check._result(NOT_ATTEMPTED, text, cases=total, passed_cases=number)
    lines = [f"Your code raised {describe_exception(e.error)}"]
    lines += ["  " + line for line in where(e.error).splitlines()]
    lines.append(f"while running {e.call}")
    lines.append(f"in {where_}, during {e.during}.")
    lines.append("Hint: the line above is where Python stopped. Fix it, run your cell "
                 "again, then this check.")
    return check._result(ERROR, "\n".join(lines), cases=total, passed_cases=number)


def _raiser(exc: BaseException) -> str:
    """The name of the function that raised ``exc`` (the student's stub)."""
    return raiser(exc).rsplit(".", 1)[-1] or "your function"


check_set_user_pgtbl = SetUserPgtblCheck(
    exercise="lab06-set-user-pgtbl",
    title="Exercise 1: pti_set_user_pgtbl",
    function="pti_set_user_pgtbl",
    cases=lambda rng: [Case((), None)],
    points=5,
    seed=60,
)


# --- the clone check ---------------------------------------------------------------------

CLONE_RUN = (("spawn", "A"), ("switch", "A"), ("syscall", "A"), ("interrupt", "A"),
             ("nmi", "A", False), ("nmi", "A", True), ("fork", "A", "B"), ("switch", "B"),
             ("syscall", "B"))

CLONE_SCENARIOS = (
    Scenario("boot: the entry text, PMD level (pti_clone_entry_text())", CLONE_RUN),
    Scenario("boot with pti=auto and no PCID: kernel text and rodata too "
             "(pti_clone_kernel_text())", CLONE_RUN, pcid=False,
             options={"kernel_text_global": True}),
    Scenario("boot: the cpu_entry_area cloned at PMD level (as 32-bit PTI does)", CLONE_RUN,
             cea_pmd=True),
    Scenario("KAISER-style: every kernel stack, PTE level", (
        ("spawn", "A"), ("spawn", "B"), ("spawn", "C"), ("clone", "stacks", PTI_CLONE_PTE),
        ("spawn", "D"), ("switch", "D"), ("syscall", "D"), ("switch", "A"),
        ("syscall", "A"))),
    Scenario("PTE level over holes and 2 MiB pages", (
        ("spawn", "A"), ("clone", "image", PTI_CLONE_PTE), ("switch", "A"),
        ("syscall", "A"))),
)


@dataclass(frozen=True)
class Piece:
    """A piece of a shadow's kernel half: [start, end) with rights, or None if unmapped."""

    start: int
    end: int
    rights: str | None
    pa: int | None

    def text(self) -> str:
        size = _size(self.end - self.start)
        what = f"{self.rights}, phys {self.pa:#x}" if self.rights else "not mapped"
        return f"{self.start:#018x}-{self.end:#018x} ({size}, {what})"


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:#x} bytes"


def _pieces(mem: Any, pgd: int) -> list[audit.MappedRange]:
    return list(audit.mapped_ranges(mem, pgd, 4, "kernel"))


def compare_trees(ref: tuple[Any, int], got: tuple[Any, int],
                  phys: bool = True) -> list[tuple[Piece, Piece]]:
    """Where two trees' kernel halves differ: pairs (Linux's piece, yours), cut at every
    range boundary of both; rights are compared, and with ``phys`` the frames too."""
    a, b_ = _pieces(*ref), _pieces(*got)
    cuts = sorted({x for r in a + b_ for x in (r.start, r.end)})

    def at(ranges: list[audit.MappedRange], mem: Any, pgd: int, s: int, e: int) -> Piece:
        for r in ranges:
            if r.start <= s < r.end:
                return Piece(s, e, r.rights(), audit.translate(mem, pgd, s))
        return Piece(s, e, None, None)

    out = []
    for s, e in zip(cuts, cuts[1:]):
        pa, pb = at(a, *ref, s, e), at(b_, *got, s, e)
        if pa.rights != pb.rights or (phys and pa.pa != pb.pa):
            if out and out[-1][0].end == s and _same_kind(out[-1], (pa, pb)):
                prev_a, prev_b = out.pop()
                pa = Piece(prev_a.start, e, prev_a.rights, prev_a.pa)
                pb = Piece(prev_b.start, e, prev_b.rights, prev_b.pa)
            out.append((pa, pb))
    return out


def _same_kind(x: tuple[Piece, Piece], y: tuple[Piece, Piece]) -> bool:
    return (x[0].rights, x[1].rights) == (y[0].rights, y[1].rights)


def shadow_differences(ref: Machine, got: Machine) -> tuple[list, list]:
    """(differences of init_mm's user PGD, differences of its kernel PGD), kernel half."""
    rk, gk = ref.k, got.k
    if gk is None:
        return [], []
    user = compare_trees((rk.mem, rk.init_mm.user_pgd), (gk.mem, gk.init_mm.user_pgd))
    # Frames the kernel allocates after the clone depend on how many tables the clone
    # took: only the rights of the kernel's own mappings are compared.
    kern = compare_trees((rk.mem, rk.init_mm.pgd), (gk.mem, gk.init_mm.pgd), phys=False)
    return user, kern


def _sharing_problem(m: Machine, start: int, end: int, level: int) -> str | None:
    """A cloned entry that is not the kernel's own entry (so the copies share nothing)."""
    k = m.k
    user = PageTables(k.mem, k.alloc, pgd_pa=k.init_mm.user_pgd)
    va = start & ~(PMD_SIZE - 1)
    while va < end:
        kwalk = {e.level: e for e in k.kernel_tables.entries(va)}
        pmd = kwalk.get(2)
        if kwalk.get(3) is None or not kwalk[3].present or pmd is None or not pmd.present:
            va += PMD_SIZE
            continue
        if pmd.is_leaf or level == PTI_CLONE_PMD:
            uwalk = {e.level: e for e in user.entries(va)}
            mine = uwalk.get(2)
            if mine is None or mine.value & ~PAGE_GLOBAL != pmd.value & ~PAGE_GLOBAL:
                shown = f"{mine.value:#x}" if mine is not None else "missing"
                return (f"the user copy's PMD entry for {va:#x} is {shown}, the kernel's is "
                        f"{pmd.value:#x}")
        else:
            for i in range(512):
                page = va + i * PAGE_SIZE
                if not start <= page < end:
                    continue
                pte = k.mem.read_qword((pmd.value & ADDR_MASK) | i << 3)
                if not pte & PAGE_PRESENT:
                    continue
                mine = list(user.entries(page))[-1]
                if not mine.present:  # coverage is compared with Linux's elsewhere
                    continue
                if mine.level != 1 or mine.value & ~PAGE_GLOBAL != pte & ~PAGE_GLOBAL:
                    return (f"the user copy's entry for {page:#x} is {mine.value:#x} (level "
                            f"{mine.level}), the kernel's PTE is {pte:#x}")
        va += PMD_SIZE
    return None


def _clone_hint(got: Machine, user_diff: list, kern_diff: list, sharing: str | None,
                clones: list[tuple[int, int, int]]) -> str:
    extra = [(a, b_) for a, b_ in user_diff if a.rights is None and b_.rights]
    missing = [(a, b_) for a, b_ in user_diff if a.rights and b_.rights is None]
    changed = [(a, b_) for a, b_ in user_diff if a.rights and b_.rights]

    def inside(p: Piece) -> bool:
        return any(s <= p.start < e or (p.start <= s < p.end) for s, e, _ in clones)

    if extra:
        p = extra[0][1]
        if any(lvl == PTI_CLONE_PTE for *_, lvl in clones) and \
                p.start & ~(PMD_SIZE - 1) == (p.end - 1) & ~(PMD_SIZE - 1):
            return ("Your shadow maps more than the range: at PTI_CLONE_PTE level copy the "
                    "present PTEs one by one (4 KiB each); copy the whole PMD only when the "
                    "kernel's PMD is itself a 2 MiB page (pmd_leaf). A PMD copied whole "
                    "brings its neighbours into the user tables, readable by Meltdown.")
        return ("Your shadow maps kernel memory outside [start, end): clone only the PMDs "
                "(or PTEs) that cover the range, and stop at end.")
    if missing:
        p = missing[0][0]
        if not inside(p):
            return ("A mapping that was in the user tables before your clone is gone: you "
                    "replaced an existing user-side table. Allocate a new table only when "
                    "the entry is not present (pgd_none/pud_none/pmd_none); otherwise "
                    "follow the table it points to.")
        kwalk = list(got.k.kernel_tables.entries(p.start))[-1]
        if kwalk.is_leaf and kwalk.level == 2:
            return ("A 2 MiB page of the range is missing from the shadow: when the kernel's "
                    "PMD is a leaf (_PAGE_PSE), clone that PMD whole, even at PTI_CLONE_PTE "
                    "level: there is no page table below it to walk (its address is the "
                    "2 MiB frame itself).")
        return ("Part of the range is missing from the shadow. A hole (a PUD or PMD or PTE "
                "that is not present) is skipped: round addr up to the next PUD/PMD/page "
                "boundary and continue, do not return. A 2 MiB PMD (pmd_leaf) is cloned "
                "whole, even at PTE level.")
    if changed:
        a, b_ = changed[0]
        if (a.rights or "").replace(" G", "") == (b_.rights or "").replace(" G", ""):
            return ("The clone is not global: set _PAGE_GLOBAL (when pti.pge) on the kernel's "
                    "entry and copy that: 'It is effectively global, so set it as global in "
                    "both copies' (pti.c). A global entry survives the CR3 switches, so the "
                    "entry code's own pages stay in the TLB.")
        return ("Copy the kernel's entry unchanged (apart from _PAGE_GLOBAL): the shadow must "
                "give the same frame with the same rights.")
    if kern_diff:
        a, b_ = kern_diff[0]
        if a.rights and b_.rights and a.rights.replace(" G", "") == b_.rights.replace(" G", ""):
            return ("Set _PAGE_GLOBAL in the kernel's own entry too, not only in the copy: "
                    "both copies must agree ('set it as global in both copies').")
        return ("Your clone changed the kernel's own page tables: only _PAGE_GLOBAL may be "
                "added to the kernel's entries; everything else is written in the user copy "
                "(pti.user_pgd).")
    if sharing:
        return ("Copy the kernel's entry itself into the user table (at PTI_CLONE_PMD level "
                "the PMD entry, so both copies share the kernel's page table: 'the kernelmode "
                "and usermode tables will share the last-level page tables').")
    return "Compare your walk with pti_clone_pgtable() in arch/x86/mm/pti.c, step by step."


@dataclass(frozen=True, repr=False)
class ClonePgtableCheck(Check):
    """Runs :data:`CLONE_SCENARIOS` with the student's clone, and with Linux's (the kernel's
    own boot clones, or :func:`reference_clone_pgtable`), and compares."""

    def _run(self, fn: Any, seed: int) -> CheckResult:
        if not callable(fn):
            return self._result(ERROR, f"This check needs your function {self.function} "
                                "itself: pass it without calling it.")
        total = len(CLONE_SCENARIOS)
        for number, sc in enumerate(CLONE_SCENARIOS):
            ref, expected = run(sc)
            try:
                m, got = run(sc, clone=fn)
            except StudentError as e:
                return _student_error(self, e, f"scenario {number + 1} of {total} "
                                      f"({sc.describe()})", number, total)
            except BadAnswer as e:
                text = (f"Scenario {number + 1} of {total}: {sc.describe()}, during "
                        f"{e.during}:\n  {e.message}\n" + wrap(f"Hint: {e.hint}"))
                return self._result(FAILED, text, cases=total, passed_cases=number)
            problem = self._compare(sc, ref, m, expected, got)
            if problem:
                return self._result(FAILED, f"Scenario {number + 1} of {total}: "
                                    f"{sc.describe()}\n{problem}", cases=total,
                                    passed_cases=number)
        return self._result(PASSED, f"All {total} scenarios: your shadow tables are Linux's, "
                            "entry for entry, and every process ran as it does with Linux's "
                            "pti_clone_pgtable().", cases=total, passed_cases=total)

    def _compare(self, sc: Scenario, ref: Machine, m: Machine, expected: list[str],
                 got: list[str]) -> str:
        clones = _clones_of(sc, m)
        user_diff, kern_diff = shadow_differences(ref, m)
        sharing = None
        if not user_diff and not kern_diff and m.k is not None:
            sharing = next((p for s, e, lvl in clones
                            if (p := _sharing_problem(m, s, e, lvl)) is not None), None)
        diff = _first_difference(sc, expected, got)
        if not (diff or user_diff or kern_diff or sharing):
            return ""
        lines = [f"  {_clone_text(s, e, lvl)}" for s, e, lvl in clones]
        if diff:
            lines += ["What broke:"] + diff
        if user_diff:
            lines.append("How init_mm's user (shadow) tables differ from Linux's, kernel half:")
            lines += _diff_lines(user_diff)
        if kern_diff:
            lines.append("How init_mm's kernel tables differ from Linux's:")
            lines += _diff_lines(kern_diff)
        if sharing:
            lines.append(f"The copies do not share the entry: {sharing}.")
        hint = _clone_hint(m, user_diff, kern_diff, sharing, clones)
        lines.append(wrap(f"Hint: {hint}"))
        return "\n".join(lines)


def _clones_of(sc: Scenario, m: Machine) -> list[tuple[int, int, int]]:
    """The clones the scenario made: at boot (entry text, kernel text, cpu_entry_area) and
    in its steps."""
    k = m.k
    if k is None:
        return []
    out = []
    if sc.cea_pmd:
        out.append((*_cea_range(k), PTI_CLONE_PMD))
    out.append((*k.image.entry_text, PTI_CLONE_PMD))
    if sc.options.get("kernel_text_global"):
        out.append((k.image.text, k.image.data, PTI_CLONE_PMD))
    return out + m.clones


def _diff_lines(diff: list[tuple[Piece, Piece]], limit: int = 4) -> list[str]:
    lines = []
    for a, b_ in diff[:limit]:
        if a.rights is None:
            lines.append(f"  extra:   {b_.text()}")
        elif b_.rights is None:
            lines.append(f"  missing: {a.text()}")
        else:
            lines.append(f"  differs: {a.start:#018x}-{a.end:#018x}: Linux {a.rights}, phys "
                         f"{a.pa:#x}; yours {b_.rights}, phys {b_.pa:#x}")
    if len(diff) > limit:
        lines.append(f"  ... and {len(diff) - limit} more")
    return lines


check_clone_pgtable = ClonePgtableCheck(
    exercise="lab06-clone-pgtable",
    title="Exercise 2: pti_clone_pgtable",
    function="pti_clone_pgtable",
    cases=lambda rng: [Case((), None)],
    points=5,
    seed=61,
)

CHECKS = (check_set_user_pgtbl, check_clone_pgtable)

#: What the answers may use in a graded run (kaiser_edu.course.graded): the setup cell's
#: constants and helpers, and of ``mem`` and ``pti`` only what Linux's code would use.
ANSWER_KIT = AnswerKit(
    constants={
        "ADDR_MASK": ADDR_MASK, "KERNPG_TABLE": KERNPG_TABLE, "PAGE_GLOBAL": PAGE_GLOBAL,
        "PAGE_NX": PAGE_NX, "PAGE_PRESENT": PAGE_PRESENT, "PAGE_PSE": PAGE_PSE,
        "PAGE_SIZE": PAGE_SIZE, "PAGE_USER": PAGE_USER, "PMD_SIZE": PMD_SIZE,
        "PUD_SIZE": PUD_SIZE, "PTI_CLONE_PMD": PTI_CLONE_PMD, "PTI_CLONE_PTE": PTI_CLONE_PTE,
    },
    functions=(kernel_to_user_pgdp, pgdp_maps_userspace, round_up, table_index),
    objects={
        PgdPairMemory: ("read_qword", "write_qword"),
        PhysicalMemory: ("read_qword", "write_qword"),
        ShadowTables: ("kernel_pgd", "user_pgd", "mem", "alloc_table", "pge"),
    },
)
