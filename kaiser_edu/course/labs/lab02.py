"""Lab 02, the page walk: the checks of ``solutions/lab02_page_walk.ipynb``.

The student writes a 4-level x86-64 page walk in four steps; each check compares the
student's function with the reference walk :func:`kaiser_edu.hw.walk.walk` (the lessons'
executable specification) on a hand-made machine first, then on seeded random page tables:

======================  ==================================================  ==================
check                   student function                                    compared with
======================  ==================================================  ==================
:data:`check_decode`    ``decode_entry(entry, level) -> dict``              the entry bits
:data:`check_walk`      ``walk_entries(read_qword, cr3, va) -> [(pa, e)]``  ``walk().steps``
:data:`check_allowed`   ``allowed(entries, access, cpl, *, wp, smep, smap,  ``walk().outcome``
                        ac) -> bool``
:data:`check_translate` ``translate(read_qword, cr3, va, access, cpl, *,    ``walk()``
                        wp, smep, smap, nxe, ac)``
======================  ==================================================  ==================

``translate`` returns ``("ok", pa, page_size)``, ``("PF", error_code)`` or ``("GP",)``.

The machines (:class:`LabMachine`) are built with :class:`~kaiser_edu.hw.PageTables` on a
:class:`~kaiser_edu.hw.PhysMem` with MAXPHYADDR = 52 (bits 51:12 of an entry are address):
4 KiB, 2 MiB and 1 GiB pages, user and kernel halves, CR3 with PCID bits, upper-level
entries with R/W=0, U/S=0 or XD=1, not-present entries at every level (some with leftover
software bits, like Linux's swap entries), ignored bits 11:9 and 62:52 set at random,
PAT bits (bit 7 in a PTE, bit 12 in a huge page), and, for the last exercise, reserved
bits: PS in a PML4E, bits 20:13 / 29:13 of a huge page, XD while EFER.NXE=0.

The student's walk reads memory through :class:`PhysicalMemory` (``read_qword(pa)``), which
refuses a misaligned or too-large address with a message that says why. When an answer is
wrong the feedback shows the call (registers included), the entries on that address's path,
expected and got, and a hint about this very case, e.g. "U/S must be 1 at every level for a
user-mode access: the PDE at 0x1e2a3008 has U/S=0".
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kaiser_edu.course.checks import (
    AnswerKit,
    Case,
    Check,
    CheckResult,
    as_int,
    hex_or_repr,
)
from kaiser_edu.errors import MappingError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import canonicalize, is_canonical, table_index
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.hw.physmem import PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.hw.walk import WalkResult, WalkStep, reserved_bits, walk

MAXPHYADDR = 52
ADDR_MASK = b.phys_addr_mask(MAXPHYADDR)  # 0x000ffffffffff000: bits 51:12
NAMES = {4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
ACCESSES = ("read", "write", "fetch")
FLAG_KEYS = ("present", "writable", "user", "nx", "leaf")
DECODE_KEYS = (*FLAG_KEYS, "address")

# The #PF error code bits, in the order a hint discusses them.
PF_BITS = (
    (b.X86_PF_PROT, "P"), (b.X86_PF_WRITE, "W"), (b.X86_PF_USER, "U"),
    (b.X86_PF_RSVD, "RSVD"), (b.X86_PF_INSTR, "I"), (b.X86_PF_PK, "PK"),
)


# --- what the student's walk reads ----------------------------------------------------------


class PhysicalMemory:
    """Physical memory as the student's walk sees it: ``read_qword(pa)`` returns the 8-byte
    value at physical address ``pa`` (0 where nothing was ever written, as in a zeroed page
    table). It refuses what the CPU could never read, saying why."""

    def __init__(self, mem: PhysMem):
        self.mem = mem
        self.reads: list[int] = []

    def __call__(self, pa: Any) -> int:
        value = as_int(pa)
        if value is None:
            raise TypeError(f"read_qword needs an integer physical address, got {pa!r} "
                            f"(a {type(pa).__name__})")
        if not 0 <= value < 1 << MAXPHYADDR:
            raise ValueError(
                f"read_qword({value:#x}): a physical address has at most {MAXPHYADDR} bits "
                "(0 to 0xfffffffffffff); did you keep bits 63:52 of an entry (XD, ignored "
                "bits) in a table address? Mask the entry with 0x000ffffffffff000.")
        if value & 7:
            raise ValueError(
                f"read_qword({value:#x}): not 8-byte aligned. An entry's address is "
                "table + index * 8, and a table address has bits 11:0 clear: mask CR3 and "
                "entries with 0x000ffffffffff000 (their low 12 bits are the PCID or flags)")
        self.reads.append(value)
        return self.mem.read_qword(value)

    def __repr__(self) -> str:
        return "read_qword"


# --- the machines ------------------------------------------------------------------------------


class _ScatteredFrames:
    """Hands out page-table frames at random distinct places below 1 TiB (PageTables only
    needs ``alloc()``), so table addresses are as unpredictable as on a real machine."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[int] = set()

    def alloc(self) -> int:
        while True:
            pfn = self.rng.randrange(1 << 8, 1 << 28)
            if pfn not in self.used:
                self.used.add(pfn)
                return pfn << b.PAGE_SHIFT


@dataclass
class LabMachine:
    """Page tables in simulated physical memory, the CR3 that points at them, and the
    addresses worth translating (``addresses``: (va, what it shows))."""

    mem: PhysMem
    pt: PageTables
    cr3: int
    addresses: list[tuple[int, str]] = field(default_factory=list)

    def read_qword(self) -> PhysicalMemory:
        """A fresh reader for a student's function (it records what was read)."""
        return PhysicalMemory(self.mem)

    def find(self, prefix: str) -> tuple[int, str]:
        """(va, note) of the address whose note starts with ``prefix``."""
        for va, note in self.addresses:
            if note.startswith(prefix):
                return va, note
        raise KeyError(f"no address of this machine is described as {prefix!r}...")

    def va(self, prefix: str) -> int:
        """The address whose note starts with ``prefix``."""
        return self.find(prefix)[0]

    def regs(self, *, wp: bool = True, smep: bool = False, smap: bool = False,
             nxe: bool = True) -> Registers:
        return Registers.long_mode(cr3=self.cr3, wp=wp, smep=smep, smap=smap, nxe=nxe,
                                   pcide=bool(self.cr3 & 0xFFF), maxphyaddr=MAXPHYADDR)

    def walk(self, va: int, access: str = "read", cpl: int = 0, *, wp: bool = True,
             smep: bool = False, smap: bool = False, nxe: bool = True,
             ac: bool = False) -> WalkResult:
        """The reference walk (A/D bits untouched: the tables never change)."""
        regs = self.regs(wp=wp, smep=smep, smap=smap, nxe=nxe)
        return walk(self.mem, regs, va, access, cpl, ac, set_ad=False)

    def path_text(self, va: int, nxe: bool = True) -> str:
        """The entries a walk for ``va`` reads, one per line, decoded."""
        result = self.walk(va, nxe=nxe)
        return "\n".join(path_lines(result.steps, va, self.cr3, nxe)) or \
            f"{va:#x} is not canonical: no entry is read"

    def __str__(self) -> str:
        lines = [f"CR3 = {self.cr3:#x} (the PML4 is at {self.cr3 & ADDR_MASK:#x})",
                 "addresses:"]
        lines += [f"  {va:#018x}  {note}" for va, note in self.addresses]
        return "\n".join(lines)


def _map(pt: PageTables, va: int, pa: int, size: int, flags: int,
         table_flags: int | None = None) -> None:
    pt.map(va, pa, size=size, flags=flags, table_flags=table_flags)


def _entry(pt: PageTables, va: int, level: int):
    return next(e for e in pt.entries(va) if e.level == level)


def _edit(pt: PageTables, va: int, level: int, set_bits: int = 0, clear_bits: int = 0,
          value: int | None = None) -> None:
    """Change one entry on ``va``'s path in memory, raw (exotic tables for the lab)."""
    e = _entry(pt, va, level)
    pt.mem.write_qword(e.pa, value if value is not None else (e.value | set_bits) & ~clear_bits)


def example_machine() -> LabMachine:
    """The lab's hand-made machine: every rule of the walk can be seen at one address.

    Its addresses (``example_machine().addresses``) come first in every check."""
    rng = random.Random("kaiser-edu lab02 example")
    mem = PhysMem(maxphyaddr=MAXPHYADDR, initial_frames=32)
    pt = PageTables(mem, _ScatteredFrames(rng))
    m = LabMachine(mem, pt, pt.cr3())
    add = m.addresses.append

    def frame(size: int = b.PAGE_SIZE) -> int:
        return rng.randrange(1 << 20, 1 << 38) & ~(size - 1)

    _map(pt, 0x40_0000, frame(), b.PAGE_SIZE, b.PAGE_USER_EXEC)
    add((0x40_0000, "user code (r-x, 4 KiB)"))
    _map(pt, 0x60_1000, frame(), b.PAGE_SIZE, b.PAGE_SHARED | b.PAGE_DIRTY)
    add((0x60_1a38, "user data (rw-, NX, 4 KiB)"))
    _map(pt, 0x60_2000, frame(), b.PAGE_SIZE, b.PAGE_READONLY)
    add((0x60_2010, "user read-only data (r--, NX)"))
    add((0x40_3000, "not present in the PT (PTE = 0)"))
    _map(pt, 0x60_4000, frame(), b.PAGE_SIZE, b.PAGE_SHARED)
    _edit(pt, 0x60_4000, 1, value=0x0000_0012_3456_0E02)  # P=0, software bits left over
    add((0x60_4ff8, "swapped out (P=0, other bits set)"))
    _map(pt, 0x60_5000, frame(), b.PAGE_SIZE, b.PAGE_SHARED | b.PAGE_PAT)
    add((0x60_5040, "PTE with PAT (bit 7) set: still a 4 KiB page"))
    _map(pt, 0x60_6000, frame(), b.PAGE_SIZE, b.PAGE_SHARED | 0x5 << 59 | 1 << 52 | 1 << 10)
    add((0x60_6123, "PTE with ignored bits 62:52 and 10 set"))
    _map(pt, 0x60_7000, 0x000F_FFFF_FFFF_F000 & ~0x7FF_FFFF, b.PAGE_SIZE, b.PAGE_SHARED)
    add((0x60_7abc, "frame with physical-address bit 51 set"))
    _map(pt, 0x80_0000, frame(), b.PAGE_SIZE, b.PAGE_SHARED,
         table_flags=b.PAGE_PRESENT | b.PAGE_USER | b.PAGE_ACCESSED)
    add((0x80_0010, "user rw page under a read-only PDE (R/W=0 at level 2)"))
    _map(pt, 0x7F00_0020_0000, frame(b.PMD_SIZE), b.PMD_SIZE, b.PAGE_SHARED)
    add((0x7F00_0021_2345, "user 2 MiB page (PS=1 in the PDE)"))
    add((0x7F00_0060_0000, "not present in the PD (PDE = 0)"))
    add((0x7F00_4000_0000, "not present in the PDPT (PDPTE = 0)"))
    add((0x5555_0000_0000, "not present in the PML4 (PML4E = 0)"))
    _map(pt, 0x7F00_0080_0000, frame(b.PMD_SIZE), b.PMD_SIZE,
         b.PAGE_SHARED | b.PAGE_PAT_LARGE)
    add((0x7F00_0080_1000, "2 MiB page with PAT (bit 12) set"))
    _map(pt, 0x7F00_00A0_0000, frame(b.PMD_SIZE), b.PMD_SIZE, b.PAGE_SHARED)
    _edit(pt, 0x7F00_00A0_0000, 2, set_bits=1 << 13)
    add((0x7F00_00A0_0040, "2 MiB page with reserved bit 13 set"))
    _map(pt, 0x80_0000_0000, frame(), b.PAGE_SIZE, b.PAGE_SHARED | b.PAGE_DIRTY)
    _edit(pt, 0x80_0000_0000, 4, clear_bits=b.PAGE_USER)
    add((0x80_0000_0008, "user PTE under a supervisor PML4E (U/S=0 at level 4)"))
    _map(pt, 0x100_0000_0000, frame(), b.PAGE_SIZE, b.PAGE_USER_EXEC)
    _edit(pt, 0x100_0000_0000, 3, set_bits=b.PAGE_NX)
    add((0x100_0000_0100, "user code under a PDPTE with XD=1"))
    _map(pt, 0x180_0000_0000, frame(), b.PAGE_SIZE, b.PAGE_KERNEL)
    _edit(pt, 0x180_0000_0000, 4, set_bits=b.PAGE_PSE)
    add((0x180_0000_0000, "PML4E with PS=1 (reserved: no 512 GiB pages)"))
    add((0x0000_8000_0000_0000, "non-canonical (bit 47 set, bits 63:48 clear)"))
    add((0xDEAD_BEEF_0000_0000, "non-canonical (random high bits)"))
    _map(pt, 0xFFFF_8880_0000_0000, 0, b.PUD_SIZE, b.PAGE_KERNEL)
    add((0xFFFF_8880_1234_5678, "kernel direct map (1 GiB page, supervisor)"))
    _map(pt, 0xFFFF_FFFF_8100_0000, 0x100_0000, b.PMD_SIZE, b.PAGE_KERNEL_RX)
    add((0xFFFF_FFFF_8100_0040, "kernel text (2 MiB page, r-x, supervisor)"))
    _map(pt, 0xFFFF_FFFF_8200_0000, frame(), b.PAGE_SIZE, b.PAGE_KERNEL_RO)
    add((0xFFFF_FFFF_8200_0100, "kernel read-only data (supervisor, R/W=0)"))
    _map(pt, 0xFFFF_FFFF_FF60_0000, frame(), b.PAGE_SIZE,
         b.PAGE_PRESENT | b.PAGE_USER | b.PAGE_ACCESSED)
    add((0xFFFF_FFFF_FF60_0400, "vsyscall (a user page in the kernel half)"))
    return m


def _leaf_flags(rng: random.Random, user: bool, size: int) -> int:
    flags = b.PAGE_PRESENT
    if rng.random() < 0.6:
        flags |= b.PAGE_RW
    if rng.random() < (0.9 if user else 0.12):
        flags |= b.PAGE_USER
    if rng.random() < 0.5:
        flags |= b.PAGE_NX
    for bit, p in ((b.PAGE_ACCESSED, 0.7), (b.PAGE_DIRTY, 0.4), (b.PAGE_GLOBAL, 0.25),
                   (b.PAGE_PWT, 0.08), (b.PAGE_PCD, 0.08)):
        if rng.random() < p:
            flags |= bit
    if rng.random() < 0.15:
        flags |= b.PAGE_PAT if size == b.PAGE_SIZE else b.PAGE_PAT_LARGE
    if rng.random() < 0.3:
        flags |= rng.getrandbits(3) << 9
    if rng.random() < 0.3:
        flags |= rng.getrandbits(11) << 52
    return flags


def _random_va(rng: random.Random, user: bool, size: int) -> int:
    slot = rng.choice((0, 1, 127, 255) if user else (256, 273, 402, 511))
    pdpt = rng.choice((0, 1, 2, 510, 511))
    pd = rng.choice((0, 1, 2, 3, rng.randrange(512)))
    pte = rng.randrange(512)
    va = slot << 39 | pdpt << 30 | pd << 21 | pte << 12
    return canonicalize(va & ~(size - 1))


def random_machine(rng: random.Random, *, reserved: bool = False) -> LabMachine:
    """A random 4-level machine drawn from ``rng`` (see the module docstring); with
    ``reserved``, some entries also set reserved bits."""
    mem = PhysMem(maxphyaddr=MAXPHYADDR, initial_frames=16)
    pt = PageTables(mem, _ScatteredFrames(rng))
    mapped: list[tuple[int, int, str]] = []
    for _ in range(rng.randint(4, 7)):
        user = rng.random() < 0.65
        size = rng.choices(b.PAGE_SIZES, weights=(55, 30, 15))[0]
        va = _random_va(rng, user, size)
        pa = rng.getrandbits(MAXPHYADDR - 1) & ~(size - 1)
        try:
            _map(pt, va, pa, size, _leaf_flags(rng, user, size))
        except MappingError:  # already mapped, or a huge page over a table: draw again
            continue
        mapped.append((va, size, f"{'user' if user else 'kernel'}-half {b.size_name(size)} page"))

    # Upper levels: R/W=0, U/S=0, XD=1 here and there, A toggled, ignored bits set.
    seen: set[int] = set()
    for va, _size, _ in mapped:
        for e in list(pt.entries(va)):
            if not e.present or e.is_leaf or e.pa in seen:
                continue
            seen.add(e.pa)
            value = e.value
            for bit, p in ((b.PAGE_RW, 0.15), (b.PAGE_USER, 0.12)):
                if rng.random() < p:
                    value &= ~bit
            if rng.random() < 0.15:
                value |= b.PAGE_NX
            if rng.random() < 0.3:
                value ^= b.PAGE_ACCESSED
            if rng.random() < 0.3:
                value |= rng.choice((b.PAGE_GLOBAL, b.PAGE_DIRTY, 0)) | rng.getrandbits(3) << 9
            if rng.random() < 0.3:
                value |= rng.getrandbits(11) << 52
            mem.write_qword(e.pa, value)
    # Some leaves become not present, keeping other bits (a swap or PROT_NONE entry).
    for va, _size, _ in mapped:
        if rng.random() < 0.15:
            leaf = pt.leaf(va)
            if leaf is not None:
                mem.write_qword(leaf.pa, (leaf.value & ~b.PAGE_PRESENT) | rng.getrandbits(8) << 2)
    if reserved and mapped:
        if rng.random() < 0.25:
            va = rng.choice(mapped)[0]
            _edit(pt, va, 4, set_bits=b.PAGE_PSE)
        huge = [(va, size) for va, size, _ in mapped if size > b.PAGE_SIZE and pt.leaf(va)]
        if huge and rng.random() < 0.5:
            va, size = rng.choice(huge)
            level = 2 if size == b.PMD_SIZE else 3
            _edit(pt, va, level, set_bits=1 << rng.randrange(13, 21 if level == 2 else 30))

    pcid = rng.choice((0, 0, rng.randrange(1, 4096)))
    m = LabMachine(mem, pt, pt.cr3(pcid))
    for va, size, note in mapped:
        m.addresses.append((va + rng.randrange(size), f"inside a {note}"))
        if rng.random() < 0.5:
            m.addresses.append((va + size - 1, f"last byte of a {note}"))
    for _ in range(3):
        if not mapped:
            break
        va = rng.choice(mapped)[0]
        level = rng.randint(1, 4)
        shift = b.level_shift(level)
        other = (va & ~(0x1FF << shift)) | rng.randrange(512) << shift
        m.addresses.append((canonicalize(other) | rng.randrange(b.PAGE_SIZE),
                            f"near a mapped page (another {NAMES[level][:-1]} index)"))
    if rng.random() < 0.5:
        while True:
            va = rng.getrandbits(64)
            if not is_canonical(va):
                break
        m.addresses.append((va, "non-canonical"))
    rng.shuffle(m.addresses)
    return m


def _machines(rng: random.Random, count: int, reserved: bool) -> list[LabMachine]:
    return [random_machine(rng, reserved=reserved) for _ in range(count)]


# --- describing cases -----------------------------------------------------------------------


def entry_words(value: int, level: int, nxe: bool = True) -> str:
    """describe_entry(), plus a warning when a reserved bit is set."""
    text = b.describe_entry(value, level, MAXPHYADDR)
    if value & b.PAGE_PRESENT:
        leaf = level == 1 or (level <= 3 and bool(value & b.PAGE_PSE))
        regs = Registers.long_mode(nxe=nxe, maxphyaddr=MAXPHYADDR)
        rsvd = value & reserved_bits(level, leaf, regs)
        if rsvd:
            text += f"  <- reserved bit(s) {rsvd:#x} set!"
    return text


def path_lines(steps: Sequence[WalkStep], va: int, cr3: int, nxe: bool = True) -> list[str]:
    """One line per entry read: ``PDE  [  1] @ 0x...: 0x... P RW US ...``."""
    return [f"{NAMES[s.level]:5} [{table_index(va, s.level):3}] @ {s.entry_pa:#x} = "
            f"{s.entry:#018x}  {entry_words(s.entry, s.level, nxe)}" for s in steps]


@dataclass(frozen=True)
class PathCase(Case):
    """A case that also knows the entries on its address's path (for feedback)."""

    steps: tuple[WalkStep, ...] = ()
    va: int | None = None
    cr3: int | None = None
    nxe: bool = True

    def context(self) -> list[str]:
        if self.va is None:
            return []
        if not self.steps:
            return [f"no entry is read for {self.va:#x}: it is not canonical"]
        head = f"the entries on the path of {self.va:#x}"
        if self.cr3 is not None:
            head += f" (CR3 = {self.cr3:#x})"
        return [head + ":"] + ["  " + line for line in
                               path_lines(self.steps, self.va, self.cr3 or 0, self.nxe)]


@dataclass(frozen=True, repr=False)
class PathCheck(Check):
    """A :class:`Check` whose feedback on a wrong or crashing case also lists the entries
    on the path of that case's address (:meth:`PathCase.context`)."""

    def _with_context(self, result: CheckResult, case: Case, after: int) -> CheckResult:
        context = case.context() if isinstance(case, PathCase) else []
        if not context:
            return result
        lines = result.feedback.split("\n")
        lines[after:after] = ["  " + line for line in context]
        return replace(result, feedback="\n".join(lines))

    def _wrong(self, case: Case, got: Any, wrong: int, total: int) -> CheckResult:
        return self._with_context(super()._wrong(case, got, wrong, total), case, 1)

    def _error(self, case: Case, exc: BaseException, number: int, total: int) -> CheckResult:
        result = super()._error(case, exc, number, total)
        at = next((i + 1 for i, line in enumerate(result.feedback.split("\n"))
                   if line.startswith("while running")), 1)
        return self._with_context(result, case, at)


def _where(step: WalkStep) -> str:
    return f"the {NAMES[step.level]} at {step.entry_pa:#x}"


def _culprits(steps: Sequence[WalkStep], bit: int, want_set: bool) -> list[WalkStep]:
    return [s for s in steps if bool(s.entry & bit) == want_set]


def _list(steps: Sequence[WalkStep]) -> str:
    return " and ".join(_where(s) for s in steps)


def _ec_text(code: int) -> str:
    names = [name for bit, name in PF_BITS if code & bit]
    return ("|".join(names) if names else "no bits set") + f": {b.describe_error_code(code)}"


# --- why the reference walk decided what it did --------------------------------------------


def rights(steps: Sequence[WalkStep], nxe: bool = True) -> tuple[bool, bool, bool]:
    """(user, writable, nx) of a complete path: U and W ANDed, XD ORed (SDM 4.6.1)."""
    user = all(s.entry & b.PAGE_USER for s in steps)
    writable = all(s.entry & b.PAGE_RW for s in steps)
    nx = nxe and any(s.entry & b.PAGE_NX for s in steps)
    return user, writable, nx


def rights_reason(steps: Sequence[WalkStep], access: str, cpl: int, *, wp: bool, smep: bool,
                  smap: bool, ac: bool, nxe: bool = True) -> tuple[bool, str]:
    """Allowed or not by the combined rights (SDM 4.6), and the rule that decides, naming the
    entries responsible. ``steps`` is a complete path: all present, ending with a leaf."""
    user, writable, nx = rights(steps, nxe)
    not_user = _culprits(steps, b.PAGE_USER, False)
    read_only = _culprits(steps, b.PAGE_RW, False)
    xd = _culprits(steps, b.PAGE_NX, True) if nxe else []
    if access == "fetch":
        if nx:
            return False, (f"XD=1 in {_list(xd)} and EFER.NXE=1: one XD anywhere on the path "
                           "forbids instruction fetches (XD is ORed across the levels), even "
                           "if the PTE itself says XD=0")
        if cpl == 3 and not user:
            return False, (f"U/S must be 1 at every level for a user-mode access: "
                           f"{_list(not_user)} has U/S=0, so this is a supervisor-mode page "
                           "(U/S is ANDed across the levels)")
        if cpl == 3:
            return True, ("a user-mode fetch from a user page (U/S=1 at every level) with "
                          "XD=0 at every level is allowed")
        if user and smep:
            return False, ("CR4.SMEP=1: supervisor mode may not fetch instructions from a "
                           "user-mode page (U/S=1 at every level)")
        if user:
            return True, ("CR4.SMEP=0: supervisor mode may execute a user page (and XD=0 at "
                          "every level)")
        return True, ("supervisor mode may fetch from a supervisor page whose path has XD=0 "
                      "at every level")
    write = access == "write"
    if cpl == 3:
        if not user:
            return False, (f"U/S must be 1 at every level for a user-mode access: "
                           f"{_list(not_user)} has U/S=0, so this is a supervisor-mode page "
                           "(U/S is ANDed across the levels)")
        if write and not writable:
            return False, (f"a user-mode write needs R/W=1 at every level: {_list(read_only)} "
                           "has R/W=0 (R/W is ANDed across the levels)")
        if write:
            return True, "U/S=1 and R/W=1 at every level: a user-mode write is allowed"
        why = "; a read needs no R/W=1" if read_only else ""
        return True, "U/S=1 at every level: a user-mode read is allowed" + why
    if user and smap and not ac:
        return False, ("CR4.SMAP=1 and RFLAGS.AC=0: supervisor-mode data accesses to a "
                       "user-mode page (U/S=1 at every level) are forbidden (the kernel sets "
                       "AC with STAC around its deliberate user accesses)")
    smap_note = ""
    if user:
        smap_note = ("; RFLAGS.AC=1 lifts SMAP for this data access" if smap
                     else "; CR4.SMAP=0, so the kernel may touch user pages")
    if write and not writable and wp:
        return False, (f"CR0.WP=1: supervisor-mode writes honour R/W=0 too, and "
                       f"{_list(read_only)} has R/W=0")
    if write and not writable:
        return True, (f"CR0.WP=0: supervisor-mode writes ignore R/W, so R/W=0 in "
                      f"{_list(read_only)} does not stop this write" + smap_note)
    if not user:
        return True, ("supervisor mode may read and write a supervisor-mode page (U/S=0 only "
                      "stops CPL 3)" + ("" if not write else "; R/W=1 at every level"))
    return True, "supervisor-mode data access to a user page is allowed" + smap_note


def outcome_of(result: WalkResult) -> tuple:
    """The reference walk's answer in the lab's form."""
    if result.outcome == b.OUTCOME_GP:
        return ("GP",)
    if result.outcome == b.OUTCOME_PF:
        return ("PF", result.error_code)
    return ("ok", result.pa, result.page_size)


def fault_reason(case: PathCase) -> str:
    """Why the reference walk gave its answer for a translate case (one sentence)."""
    va = case.args[2]
    access, kw = case.args[3], case.kwargs
    if not case.steps:
        return (f"{va:#x} is not canonical (bits 63:47 are not all equal): #GP(0) before any "
                "table is read, never a #PF")
    last = case.steps[-1]
    if not last.entry & b.PAGE_PRESENT:
        return (f"{_where(last)} has P=0: #PF with P=0 in the error code (not present); the "
                "CPU ignores every other bit of a not-present entry")
    rsvd = _reserved_step(case.steps, kw["nxe"])
    if rsvd is not None:
        step, bits = rsvd
        return f"{_where(step)} sets a reserved bit: {_reserved_words(step, bits)}"
    _, why = rights_reason(case.steps, access, kw["cpl"], wp=kw["wp"], smep=kw["smep"],
                            smap=kw["smap"], ac=kw["ac"], nxe=kw["nxe"])
    return why


def _reserved_step(steps: Sequence[WalkStep], nxe: bool) -> tuple[WalkStep, int] | None:
    regs = Registers.long_mode(nxe=nxe, maxphyaddr=MAXPHYADDR)
    for s in steps:
        if not s.entry & b.PAGE_PRESENT:
            return None
        leaf = s.level == 1 or (s.level <= 3 and bool(s.entry & b.PAGE_PSE))
        bits = s.entry & reserved_bits(s.level, leaf, regs)
        if bits:
            return s, bits
    return None


def _reserved_words(step: WalkStep, bits: int) -> str:
    if bits & b.PAGE_NX:
        return ("XD (bit 63) is reserved while EFER.NXE=0 (nxe=False): #PF with P=1 and "
                "RSVD=1")
    if step.level == 4 and bits & b.PAGE_PSE:
        return "PS (bit 7) is reserved in a PML4E (there are no 512 GiB pages): P=1, RSVD=1"
    span = "20:13" if step.level == 2 else "29:13"
    return (f"bits {span} of a {'2 MiB' if step.level == 2 else '1 GiB'} page entry are "
            f"reserved (here {bits:#x}): #PF with P=1 and RSVD=1")


# --- exercise 1: decode an entry -----------------------------------------------------------------


def decode(entry: int, level: int) -> dict[str, Any]:
    """The engine's reading of an entry, in the lab's form (only ``present`` if P=0)."""
    present = bool(entry & b.PAGE_PRESENT)
    if not present:
        return {"present": False}
    leaf = level == 1 or (level in (2, 3) and bool(entry & b.PAGE_PSE))
    size = 1 << b.level_shift(level) if leaf else b.PAGE_SIZE
    return {
        "present": True,
        "writable": bool(entry & b.PAGE_RW),
        "user": bool(entry & b.PAGE_USER),
        "nx": bool(entry & b.PAGE_NX),
        "leaf": leaf,
        "address": entry & ADDR_MASK & ~(size - 1),
    }


_CRAFTED_ENTRIES: tuple[tuple[int, int, str], ...] = (
    (0x0000_0000_1234_5067, 4, "a PML4E pointing to a PDPT (Linux's _PAGE_TABLE)"),
    (0x0000_0000_0ABC_D063, 3, "a kernel PDPTE pointing to a PD (_KERNPG_TABLE)"),
    (0x8000_0000_2BCD_E067, 1, "a user data PTE (P RW US A D NX)"),
    (0x0000_0000_0000_0000, 1, "an empty PTE"),
    (0x0000_0012_3456_0E02, 1, "a not-present PTE with software bits (a swap entry)"),
    (0x0000_0000_8000_00E3, 2, "a 2 MiB PDE (PS=1)"),
    (0x8000_0000_4000_01E3, 3, "a 1 GiB PDPTE (PS=1)"),
    (0x0000_0000_0123_40A7, 1, "a PTE with bit 7 set: PAT in a PTE, not PS"),
    (0x0000_0001_0020_10E7, 2, "a 2 MiB PDE with PAT (bit 12) set"),
    (0x0000_0000_0000_0080, 2, "a not-present PDE with PS set"),
    (0x0000_0000_0ABC_D0E3, 4, "a PML4E with bit 7 set (PS is reserved there, not a leaf)"),
    (0x2A80_0000_0777_7027, 1, "a PTE with ignored bits 62:52 set (a protection key)"),
    (0x000F_FFFF_FFFF_F067, 3, "a PDPTE whose table has physical-address bits up to 51"),
    (0x000F_FFFF_C000_0087, 3, "a 1 GiB page at the top of the physical address space"),
    (0x8000_0000_0345_6063, 2, "a PDE pointing to a page table, XD=1"),
)


def _decode_cases(rng: random.Random) -> list[Case]:
    cases = [Case((value,), decode(value, level), {"level": level}, note=note)
             for value, level, note in _CRAFTED_ENTRIES]
    seen = set()
    for m in [example_machine(), *_machines(rng, 10, reserved=False)]:
        for va, _ in m.addresses:
            for step in m.walk(va).steps:
                if (step.entry, step.level) in seen:
                    continue
                seen.add((step.entry, step.level))
                note = f"a {NAMES[step.level]} from a walk"
                cases.append(Case((step.entry,), decode(step.entry, step.level),
                                  {"level": step.level}, note=note))
    return cases


def _decode_same(expected: dict, got: Any) -> bool:
    if not isinstance(got, Mapping):
        return False
    for key, want in expected.items():
        if key not in got:
            return False
        if key == "address":
            if as_int(got[key]) != want:
                return False
        elif bool(got[key]) != want:
            return False
    return True


def _decode_show(value: Any) -> str:
    if not isinstance(value, Mapping):
        return repr(value)
    parts = []
    for key, v in value.items():
        parts.append(f"{key!r}: {hex_or_repr(v) if key == 'address' else repr(v)}")
    return "{" + ", ".join(parts) + "}"


def _decode_hint(case: Case, got: Any) -> str:
    (entry,), level = case.args, case.kwargs["level"]
    want: dict = case.expected
    name = NAMES[level]
    keys = ", ".join(repr(k) for k in DECODE_KEYS)
    if not isinstance(got, Mapping):
        return f"Return a dict with the keys {keys}, not a {type(got).__name__}."
    missing = [k for k in want if k not in got]
    if missing:
        return f"Your dict has no {', '.join(map(repr, missing))}: the keys are {keys}."
    if bool(got["present"]) != want["present"]:
        return (f"P is bit 0: {entry:#x} & 1 = {entry & 1}. An entry with P=0 maps nothing, "
                "whatever its other bits say.")
    if not want["present"]:
        return "P=0: only 'present' is checked for a not-present entry."
    for key, bit, bit_name in (("writable", b.PAGE_RW, "R/W is bit 1"),
                               ("user", b.PAGE_USER, "U/S is bit 2"),
                               ("nx", b.PAGE_NX, "XD (NX) is bit 63")):
        if bool(got[key]) != want[key]:
            return f"{bit_name}: {entry:#x} & {bit:#x} is {'not ' if not entry & bit else ''}0."
    if bool(got["leaf"]) != want["leaf"]:
        ps = bool(entry & b.PAGE_PSE)
        if level == 1:
            return ("A PTE (level 1) always maps a 4 KiB page: it is a leaf. Bit 7 of a PTE "
                    "is PAT (a memory type), not PS.")
        if level == 4:
            return ("A PML4E is never a leaf: there are no 512 GiB pages, and PS (bit 7) is "
                    "reserved there.")
        size = "2 MiB" if level == 2 else "1 GiB"
        if ps:
            return (f"PS (bit 7) is 1 in this {name}: it maps a {size} page itself, so it is "
                    "a leaf and the walk ends here.")
        return f"PS (bit 7) is 0 in this {name}: it points to the next table, it is not a leaf."
    got_addr = as_int(got["address"])
    if got_addr is None:
        return "'address' must be an int (the physical address of the next table or frame)."
    want_addr = want["address"]
    if got_addr >> 52:
        return ("Bits 63:52 are not address bits (XD, ignored bits, the protection key): "
                "mask the entry with 0x000ffffffffff000 (bits 51:12).")
    if got_addr & 0xFFF:
        return ("Bits 11:0 of an entry are flags, not address: an address in an entry is "
                "4 KiB-aligned. Mask the entry with 0x000ffffffffff000 (bits 51:12).")
    if want["leaf"] and level > 1:
        low = b.level_shift(level)
        if got_addr == entry & ADDR_MASK and entry & b.PAGE_PAT_LARGE:
            return (f"In a {'2 MiB' if level == 2 else '1 GiB'} page entry bit 12 is PAT, not "
                    f"address: the frame is 2**{low}-aligned, so it is bits 51:{low}: "
                    f"entry & 0x000ffffffffff000 & ~{(1 << low) - 1:#x}.")
        return (f"A {'2 MiB' if level == 2 else '1 GiB'} page starts at a 2**{low} boundary: "
                f"the frame address is bits 51:{low} of the entry "
                f"(entry & 0x000ffffffffff000 & ~{(1 << low) - 1:#x}).")
    if got_addr == want_addr & 0xFFFF_FFFF_F000 or got_addr == want_addr & 0xFF_FFFF_F000:
        return ("The address field is bits 51:12: physical addresses can have up to 52 bits "
                "(MAXPHYADDR), more than 40 or 48.")
    return f"The address is bits 51:12 of the entry: entry & 0x000ffffffffff000 = {want_addr:#x}."


check_decode = Check(
    exercise="lab02-decode",
    title="Exercise 1: decode a paging-structure entry",
    function="decode_entry",
    cases=_decode_cases,
    points=2,
    hint=_decode_hint,
    seed=1,
    same=_decode_same,
    format_arg=hex_or_repr,
    format_value=_decode_show,
)


# --- exercise 2: the walk without permissions ------------------------------------------------


def _walk_case(m: LabMachine, va: int, note: str) -> PathCase | None:
    result = m.walk(va)
    if result.ok or result.outcome == b.OUTCOME_GP or not result.error_code & b.X86_PF_RSVD:
        steps = tuple(result.steps)
        expected = [(s.entry_pa, s.entry) for s in steps]
        return PathCase((m.read_qword(), m.cr3, va), expected, note=note, steps=steps, va=va,
                        cr3=m.cr3)
    return None  # a reserved bit stops the reference walk: not part of this exercise


def _walk_cases(rng: random.Random) -> list[Case]:
    cases = []
    for m in [example_machine(), *_machines(rng, 12, reserved=False)]:
        for va, note in m.addresses:
            case = _walk_case(m, va, note)
            if case is not None:
                cases.append(case)
    return cases


def _walk_same(expected: list, got: Any) -> bool:
    if not isinstance(got, list | tuple) or len(got) != len(expected):
        return False
    for (want_pa, want_value), item in zip(expected, got):
        if not isinstance(item, list | tuple) or len(item) != 2:
            return False
        if (as_int(item[0]), as_int(item[1])) != (want_pa, want_value):
            return False
    return True


def _walk_show(value: Any) -> str:
    if not isinstance(value, list | tuple):
        return repr(value)
    return "[" + ", ".join(hex_or_repr(item) if isinstance(item, list | tuple) else repr(item)
                           for item in value) + "]"


def _index_text(level: int) -> str:
    low = b.level_shift(level)
    return (f"the {NAMES[level][:-1]} index is bits {low + 8}:{low} of va, "
            f"(va >> {low}) & 0x1ff, and the entry is at table + index * 8")


def _walk_hint(case: Case, got: Any) -> str:
    read, cr3, va = case.args
    want: list = case.expected
    steps: tuple[WalkStep, ...] = case.steps  # type: ignore[attr-defined]
    if not want:
        return (f"{va:#x} is not canonical (bits 63:47 are not all equal): the CPU raises #GP "
                "before reading any table, so return [].")
    if not isinstance(got, list | tuple):
        return ("Return a list of (entry address, entry value) pairs, one per entry read, "
                f"not a {type(got).__name__}.")
    if not got:
        return (f"{va:#x} is canonical, so the walk reads at least the PML4E: start at the "
                "table CR3 points to.")
    for i, item in enumerate(got):
        if not isinstance(item, list | tuple) or len(item) != 2:
            return ("Each item is a pair (entry address, entry value), e.g. "
                    f"({want[0][0]:#x}, {want[0][1]:#x}).")
        if i >= len(want):
            last = steps[-1]
            if not last.entry & b.PAGE_PRESENT:
                return (f"{_where(last)} has P=0: the walk stops there (a #PF), it does not "
                        "read a next level.")
            return (f"PS (bit 7) is 1 in {_where(last)}: it maps a "
                    f"{b.size_name(1 << b.level_shift(last.level))} page and the walk ends "
                    "there. Only a PDPTE or PDE can have PS=1; bit 7 of a PTE is PAT.")
        got_pa, got_value = as_int(item[0]), as_int(item[1])
        want_pa, want_value = want[i]
        level = steps[i].level
        if got_pa == want_value and got_value == want_pa:
            return "Each pair is (entry address, entry value), in that order."
        if got_pa != want_pa:
            if got_pa is None:
                return "The entry address must be an int."
            if i == 0:
                index = table_index(va, 4)
                if cr3 & 0xFFF and got_pa in (cr3 + index * 8, cr3 | index << 3):
                    return (f"CR3 = {cr3:#x}: bits 11:0 hold the PCID, not address bits. The "
                            "PML4 is at cr3 & 0x000ffffffffff000.")
                return ("Start at the PML4 that CR3 points to (cr3 & 0x000ffffffffff000); "
                        + _index_text(4) + ".")
            prev = steps[i - 1]
            if got_pa & ~0xFFF == prev.entry & ~0xFFF and prev.entry >> 52:
                return (f"The next table's address is bits 51:12 of {_where(prev)}: bits "
                        "63:52 (XD, ignored bits) are not address. Mask with "
                        "0x000ffffffffff000.")
            if got_pa & ~0xFFF != prev.entry & ADDR_MASK:
                return (f"{_where(prev)} points to the next table at "
                        f"{prev.entry & ADDR_MASK:#x} (bits 51:12 of the entry).")
            return _index_text(level)[0].upper() + _index_text(level)[1:] + "."
        if got_value != want_value:
            return f"The value is what read_qword({want_pa:#x}) returns."
    last = steps[len(got) - 1]
    if not last.entry & b.PAGE_PRESENT:
        return f"{_where(last)} has P=0: the walk must stop there, after reading it."
    if last.level in (2, 3) and not last.entry & b.PAGE_PSE:
        return (f"{_where(last)} has PS=0: it points to the next table, so the walk goes on "
                "(only PS=1 in a PDPTE or PDE ends it early).")
    return (f"{_where(last)} is present and not a leaf: continue to the next level until a "
            "PTE, a PS=1 entry or a not-present entry.")


check_walk = PathCheck(
    exercise="lab02-walk",
    title="Exercise 2: walk the tables",
    function="walk_entries",
    cases=_walk_cases,
    points=2,
    hint=_walk_hint,
    seed=2,
    same=_walk_same,
    format_arg=hex_or_repr,
    format_value=_walk_show,
)


# --- exercise 3: permissions ------------------------------------------------------------------


#: The example machine's permission cases, in the order a student meets the rules.
_ALLOWED_EDGES: tuple[tuple[str, str, int, dict[str, bool]], ...] = (
    ("user data", "read", 3, {}),
    ("user data", "write", 3, {}),
    ("user code", "fetch", 3, {}),
    ("user read-only", "write", 3, {}),
    ("kernel direct map", "read", 3, {}),
    ("user rw page under a read-only PDE", "read", 3, {}),
    ("user rw page under a read-only PDE", "write", 3, {}),
    ("user PTE under a supervisor PML4E", "read", 3, {}),
    ("user data", "fetch", 3, {}),
    ("user code under a PDPTE with XD=1", "fetch", 3, {}),
    ("kernel direct map", "write", 0, {}),
    ("kernel text", "fetch", 0, {}),
    ("kernel read-only data", "write", 0, {"wp": True}),
    ("kernel read-only data", "write", 0, {"wp": False}),
    ("user read-only", "write", 0, {"wp": True}),
    ("user read-only", "write", 0, {"wp": False}),
    ("user code", "fetch", 0, {"smep": True}),
    ("user code", "fetch", 0, {"smep": False}),
    ("user data", "read", 0, {"smap": True}),
    ("user data", "read", 0, {"smap": True, "ac": True}),
    ("user code", "read", 0, {"smap": True, "smep": True, "ac": True}),
    ("user PTE under a supervisor PML4E", "write", 0, {"smap": True}),
    ("vsyscall", "fetch", 3, {}),
    ("vsyscall", "write", 3, {}),
    ("kernel text", "fetch", 3, {}),
)

_FLAGS = {"wp": True, "smep": False, "smap": False, "ac": False}


def _allowed_case(m: LabMachine, va: int, access: str, cpl: int, flags: dict[str, bool],
                  note: str) -> PathCase | None:
    result = m.walk(va, access, cpl, nxe=True, **flags)
    if result.outcome == b.OUTCOME_GP:
        return None
    last = result.steps[-1].entry
    if not last & b.PAGE_PRESENT or (result.error_code or 0) & b.X86_PF_RSVD:
        return None  # only complete paths without reserved bits
    entries = tuple(s.entry for s in result.steps)
    return PathCase((entries, access), result.ok, {"cpl": cpl, **flags}, note=note,
                    steps=tuple(result.steps), va=va, cr3=m.cr3)


def _random_flags(rng: random.Random) -> dict[str, bool]:
    return {"wp": rng.random() < 0.75, "smep": rng.random() < 0.5,
            "smap": rng.random() < 0.5, "ac": rng.random() < 0.3}


def _random_access(rng: random.Random, va: int) -> tuple[str, int]:
    """An access and a CPL, mostly the ones that happen: user code on user addresses."""
    access = rng.choices(ACCESSES, weights=(45, 35, 20))[0]
    user_half = va >> 63 == 0
    cpl = 3 if (rng.random() < 0.8) == user_half else 0
    return access, cpl


def _allowed_cases(rng: random.Random) -> list[Case]:
    example = example_machine()
    cases = []
    for label, access, cpl, flags in _ALLOWED_EDGES:
        va, note = example.find(label)
        case = _allowed_case(example, va, access, cpl, {**_FLAGS, **flags}, note)
        assert case is not None, label
        cases.append(case)
    for m in _machines(rng, 14, reserved=False):
        for va, note in m.addresses:
            for _ in range(3):
                access, cpl = _random_access(rng, va)
                case = _allowed_case(m, va, access, cpl, _random_flags(rng), note)
                if case is not None:
                    cases.append(case)
    return cases


def _is_boolish(value: Any) -> bool:
    """True/False, an int, or a numpy bool or integer (a numpy bool is not an int)."""
    if isinstance(value, bool | int):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and dtype.kind in "biu"


def _bool_same(expected: bool, got: Any) -> bool:
    return _is_boolish(got) and bool(got) == expected


def _allowed_hint(case: Case, got: Any) -> str:
    entries, access = case.args
    kw = case.kwargs
    if not _is_boolish(got):
        return f"Return True or False, not a {type(got).__name__}."
    steps: tuple[WalkStep, ...] = case.steps  # type: ignore[attr-defined]
    _, why = rights_reason(steps, access, kw["cpl"], wp=kw["wp"], smep=kw["smep"],
                           smap=kw["smap"], ac=kw["ac"])
    head = "This access is allowed: " if case.expected else "This access is refused: "
    return head + why + "."


check_allowed = PathCheck(
    exercise="lab02-allowed",
    title="Exercise 3: may this access use this page?",
    function="allowed",
    cases=_allowed_cases,
    points=3,
    hint=_allowed_hint,
    seed=3,
    same=_bool_same,
    format_arg=hex_or_repr,
)


# --- exercise 4: translate, with the #PF error code -------------------------------------------

_REGS = {"cpl": 3, "wp": True, "smep": False, "smap": False, "nxe": True, "ac": False}

#: The example machine's translate cases, in teaching order: (label, access, registers).
_TRANSLATE_EDGES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("user data", "read", {}),
    ("user data", "write", {}),
    ("user code", "fetch", {}),
    ("user 2 MiB page", "read", {}),
    ("kernel direct map", "read", {"cpl": 0}),
    ("kernel text", "fetch", {"cpl": 0}),
    ("not present in the PT", "read", {}),
    ("not present in the PD", "write", {}),
    ("not present in the PDPT", "read", {"cpl": 0}),
    ("not present in the PML4", "fetch", {}),
    ("swapped out", "write", {}),
    ("non-canonical (bit 47", "read", {}),
    ("non-canonical (random", "write", {"cpl": 0}),
    ("user read-only", "write", {}),
    ("kernel direct map", "read", {}),
    ("user rw page under a read-only PDE", "write", {}),
    ("user PTE under a supervisor PML4E", "read", {}),
    ("user data", "fetch", {}),
    ("user code under a PDPTE with XD=1", "fetch", {}),
    ("kernel read-only data", "write", {"cpl": 0}),
    ("kernel read-only data", "write", {"cpl": 0, "wp": False}),
    ("user code", "fetch", {"cpl": 0, "smep": True}),
    ("user code", "fetch", {"cpl": 0}),
    ("user data", "write", {"cpl": 0, "smap": True}),
    ("user data", "write", {"cpl": 0, "smap": True, "ac": True}),
    ("user code", "fetch", {"nxe": False}),
    ("not present in the PT", "fetch", {"nxe": False}),
    ("not present in the PT", "fetch", {"nxe": False, "smep": True}),
    ("kernel text", "fetch", {"cpl": 3, "nxe": False}),
    ("user data", "read", {"nxe": False}),
    ("PML4E with PS=1", "read", {"cpl": 0}),
    ("2 MiB page with reserved bit 13", "write", {}),
    ("2 MiB page with PAT", "read", {}),
    ("PTE with PAT (bit 7)", "write", {}),
    ("PTE with ignored bits", "read", {}),
    ("frame with physical-address bit 51", "read", {}),
    ("vsyscall", "fetch", {}),
)


def _translate_case(m: LabMachine, va: int, access: str, regs: dict[str, Any],
                    note: str) -> PathCase:
    result = m.walk(va, access, **regs)
    return PathCase((m.read_qword(), m.cr3, va, access), outcome_of(result), dict(regs),
                    note=note, steps=tuple(result.steps), va=va, cr3=m.cr3, nxe=regs["nxe"])


def _translate_cases(rng: random.Random) -> list[Case]:
    example = example_machine()
    cases = []
    for label, access, regs in _TRANSLATE_EDGES:
        va, note = example.find(label)
        cases.append(_translate_case(example, va, access, {**_REGS, **regs}, note))
    for m in _machines(rng, 14, reserved=True):
        for va, note in m.addresses:
            for _ in range(2):
                access, cpl = _random_access(rng, va)
                regs = {"cpl": cpl, **_random_flags(rng), "nxe": rng.random() < 0.85}
                regs = {key: regs[key] for key in _REGS}
                cases.append(_translate_case(m, va, access, regs, note))
    return cases


def _outcome_norm(value: Any) -> tuple | None:
    """A student's answer as a tuple of str and ints, or None if it has the wrong shape."""
    if not isinstance(value, tuple | list) or not value or not isinstance(value[0], str):
        return None
    rest = tuple(as_int(v) for v in value[1:])
    if any(v is None for v in rest):
        return None
    return (value[0], *rest)


def _translate_same(expected: tuple, got: Any) -> bool:
    return _outcome_norm(got) == expected


def _translate_show(value: Any) -> str:
    norm = _outcome_norm(value)
    if norm is None:
        return repr(value)
    if norm[0] == "PF" and len(norm) == 2:
        return f"('PF', {norm[1]:#x})   {_ec_text(norm[1])}"
    if norm[0] == "ok" and len(norm) == 3:
        size = {b.PAGE_SIZE: "4 KiB", b.PMD_SIZE: "2 MiB", b.PUD_SIZE: "1 GiB"}.get(norm[2])
        return f"('ok', {norm[1]:#x}, {norm[2]})" + (f"   a {size} page" if size else "")
    return repr(tuple(hex(v) if isinstance(v, int) else v for v in norm))


def _error_code_hint(case: PathCase, want: int, got: int) -> str:
    access, kw = case.args[3], case.kwargs
    diff = want ^ got
    for bit, name in PF_BITS:
        if not diff & bit:
            continue
        should = f"{name} (bit {bit.bit_length() - 1}) should be {int(bool(want & bit))}"
        if bit == b.X86_PF_PROT:
            if want & bit:
                return (f"{should}: every entry on the path is present, so this is a "
                        "protection fault (or a reserved-bit fault), not a not-present one.")
            return f"{should}: {fault_reason(case)}."
        if bit == b.X86_PF_WRITE:
            return (f"{should}: W describes the access, not the page: it is 1 exactly when "
                    f"the access is a write (here a {access}).")
        if bit == b.X86_PF_USER:
            return (f"{should}: U describes the access, not the page: it is 1 exactly when "
                    f"CPL is 3 (here cpl={kw['cpl']}), whatever the page's U/S says.")
        if bit == b.X86_PF_RSVD:
            if want & bit:
                return f"{should}: {fault_reason(case)}."
            return (f"{should}: no entry on the path sets a reserved bit (with nxe="
                    f"{kw['nxe']}, PS in a PML4E, bits 20:13 / 29:13 of a huge page, XD when "
                    "NXE=0).")
        if bit == b.X86_PF_INSTR:
            if access != "fetch":
                return f"{should}: I is only ever set for instruction fetches."
            return (f"{should}: I is reported for a fetch only when CR4.SMEP=1 or "
                    f"EFER.NXE=1 (here smep={kw['smep']}, nxe={kw['nxe']}).")
        return f"{should}: protection keys are off (CR4.PKE=0), PK is never set in this lab."
    return fault_reason(case) + "."


def _check_order_hint(case: PathCase, got: int) -> str:
    """A reserved-bit fault answered as another fault: usually the checks ran in the wrong
    order (rights, or the next entry's P, before this entry's reserved bits)."""
    kind = "a protection fault" if got & b.X86_PF_PROT else "a not-present fault"
    return (f"{fault_reason(case)}. That fault comes first: the CPU checks each entry for P "
            "and for reserved bits as the walk reads it, in walk order, and the access "
            f"rights only once the whole path is valid (SDM 4.7). You answered {kind}, which "
            "a later check finds: check the entries in that order (or your translate does "
            "not know this reserved bit).")


def _translate_hint(case: Case, got: Any) -> str:
    assert isinstance(case, PathCase)
    want: tuple = case.expected
    norm = _outcome_norm(got)
    shapes = "Return ('ok', pa, page_size), ('PF', error_code) or ('GP',)"
    if norm is None or (norm[0], len(norm)) not in (("ok", 3), ("PF", 2), ("GP", 1)):
        return f"{shapes}, with ints for pa, page_size and error_code."
    if want[0] == "GP":
        return fault_reason(case) + "."
    if norm[0] == "GP":
        return (f"{case.args[2]:#x} is canonical (bits 63:47 all equal): only a non-canonical "
                "address raises #GP; this one is translated (or page-faults).")
    leaf = case.steps[-1]
    huge_leaf = leaf.level in (2, 3) and leaf.entry & b.PAGE_PRESENT and leaf.entry & b.PAGE_PSE
    if huge_leaf and norm[0] == "PF" and not norm[1] & b.X86_PF_PROT:
        return (f"PS (bit 7) is 1 in {_where(leaf)}: it maps a "
                f"{b.size_name(1 << b.level_shift(leaf.level))} page and the walk ends there; "
                "a not-present fault here suggests your walk went on to a next level.")
    if want[0] == "PF" and norm[0] == "PF":
        if want[1] & b.X86_PF_RSVD and not norm[1] & b.X86_PF_RSVD:
            return _check_order_hint(case, norm[1])
        return _error_code_hint(case, want[1], norm[1])
    if want[0] == "PF":
        return "This access faults: " + fault_reason(case) + "."
    # expected a translation
    if norm[0] == "PF":
        if norm[1] & b.X86_PF_RSVD:
            why = "no entry on the path sets a reserved bit"
        elif not norm[1] & b.X86_PF_PROT:
            why = "every entry on the path is present"
        else:
            why = fault_reason(case)
        return f"This access is allowed: {why}."
    _, pa, size = want
    _, got_pa, got_size = norm
    if got_size != size:
        return (f"The leaf is {_where(leaf)}: "
                + (f"PS=1, so it maps a {b.size_name(size)} page." if leaf.level > 1
                   else "a PTE, so the page is 4 KiB."))
    va = case.args[2]
    frame = pa & ~(size - 1)
    if got_pa == (frame | (va & 0xFFF)) and size > b.PAGE_SIZE:
        return (f"A {b.size_name(size)} page keeps the low {size.bit_length() - 1} bits of va "
                f"as the offset: pa = frame | (va & {size - 1:#x}).")
    if got_pa & ~(size - 1) == (leaf.entry & ~(size - 1) & ((1 << 64) - 1)) and leaf.entry >> 52:
        return ("Bits 63:52 of the leaf are not address (XD, ignored bits, protection key): "
                "the frame is entry & 0x000ffffffffff000.")
    if size > b.PAGE_SIZE and got_pa & ~(size - 1) != frame and leaf.entry & b.PAGE_PAT_LARGE:
        return (f"Bit 12 of a {b.size_name(size)} page entry is PAT, not address: the frame "
                f"is entry & 0x000ffffffffff000 & ~{size - 1:#x}.")
    return (f"pa = frame | offset: the frame is {frame:#x} (from {_where(leaf)}), the offset "
            f"va & {size - 1:#x} = {va & (size - 1):#x}.")


check_translate = PathCheck(
    exercise="lab02-translate",
    title="Exercise 4: translate, or fault with the right error code",
    function="translate",
    cases=_translate_cases,
    points=3,
    hint=_translate_hint,
    seed=4,
    same=_translate_same,
    format_arg=hex_or_repr,
    format_value=_translate_show,
)

CHECKS = (check_decode, check_walk, check_allowed, check_translate)

#: What the answers may use in a graded run (kaiser_edu.course.graded): the constants of the
#: setup cell, and ``read_qword`` called with an address (nothing else of the memory).
ANSWER_KIT = AnswerKit(
    constants={
        "PAGE_PRESENT": b.PAGE_PRESENT, "PAGE_RW": b.PAGE_RW, "PAGE_USER": b.PAGE_USER,
        "PAGE_PSE": b.PAGE_PSE, "PAGE_PAT_LARGE": b.PAGE_PAT_LARGE, "PAGE_NX": b.PAGE_NX,
        "ADDR_MASK": ADDR_MASK, "X86_PF_PROT": b.X86_PF_PROT, "X86_PF_WRITE": b.X86_PF_WRITE,
        "X86_PF_USER": b.X86_PF_USER, "X86_PF_RSVD": b.X86_PF_RSVD,
        "X86_PF_INSTR": b.X86_PF_INSTR,
    },
    objects={PhysicalMemory: ("__call__",)},
)

__all__ = [
    "CHECKS", "LabMachine", "PathCase", "PathCheck", "PhysicalMemory", "check_allowed",
    "check_decode", "check_translate", "check_walk", "decode", "example_machine",
    "outcome_of", "random_machine", "rights", "rights_reason",
]
