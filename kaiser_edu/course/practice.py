"""Practice problems on x86-64 paging, endless and seeded, in the spirit of OSTEP's homework
simulators (``paging-multilevel-translate.py``: print a problem; ``-c`` prints the answer).

Three kinds of problem, each a small machine built with the package's real engine
(:class:`~kaiser_edu.hw.physmem.PhysMem`, :class:`~kaiser_edu.hw.pgtable.PageTables`) and
solved by the reference walk (:func:`~kaiser_edu.hw.walk.walk`), so answers are computed,
never written by hand:

- ``translate``: CR3 and a dump of physical memory: which physical address does a virtual
  address reach, or does it fault?
- ``fault``: the same plus control registers (CR0.WP, CR4.SMEP/SMAP, EFER.NXE), the CPL,
  RFLAGS.AC and the kind of access: does it fault, with which #PF error code, or #GP?
- ``walk``: list the entry address read at each level and what its value means.

Problems cover 4 KiB, 2 MiB and 1 GiB pages, 4- and 5-level paging, U/S, R/W and XD,
entries not present at any level, reserved bits, and non-canonical addresses. A seed gives
the same problem on every machine and Python version: all randomness comes from one
``random.Random`` seeded with a string (hashed with SHA-512 by Python, stable since 3.2).

>>> p = make_problem("translate", 2, difficulty="easy")
>>> print(p.text().splitlines()[0])
Practice problem: translate, seed 2 (4-level paging, easy)
>>> print(p.answer().splitlines()[-1])
Answer: 0x00007f9104b09d29 -> physical 0x0002ed695d29 (4 KiB page); the access is allowed.
"""

from __future__ import annotations

import contextlib
import random
import textwrap
from dataclasses import dataclass, field

from kaiser_edu.errors import KaiserEduError, MappingError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import canonicalize, is_canonical, table_index, va_bits
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.hw.physmem import FrameAllocator, PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.hw.walk import WalkResult, reserved_bits, walk

KINDS = ("translate", "fault", "walk")
DIFFICULTIES = ("easy", "medium", "hard")
LEVELS = (4, 5)

MAXPHYADDR = 46  # physical-address bits of a typical desktop CPU (CPUID 80000008H)
RAM_BYTES = 16 << 30  # the simulated machine's RAM: frames are placed in [16 MiB, 16 GiB)
_FIRST_PA = 16 << 20

TABLE_NAMES = {5: "PML5", 4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}
ACCESS_WORDS = {"read": "data read", "write": "data write", "fetch": "instruction fetch"}

# Register bits shown by name (Linux uapi processor-flags.h, msr-index.h), highest first.
CR0_NAMES = ((31, "PG"), (18, "AM"), (16, "WP"), (5, "NE"), (4, "ET"), (1, "MP"), (0, "PE"))
CR4_NAMES = (
    (21, "SMAP"), (20, "SMEP"), (18, "OSXSAVE"), (17, "PCIDE"), (16, "FSGSBASE"), (12, "LA57"),
    (10, "OSXMMEXCPT"), (9, "OSFXSR"), (7, "PGE"), (6, "MCE"), (5, "PAE"), (4, "PSE"),
)
EFER_NAMES = ((11, "NXE"), (10, "LMA"), (8, "LME"), (0, "SCE"))
_LINUX_CR0 = 0x80040033  # PG AM NE ET MP PE: what Linux runs with, minus WP (chosen per problem)
_LINUX_CR4 = (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 9) | (1 << 10) | (1 << 18)
_EFER_SCE = 1 << 0  # SYSCALL enable, always on under Linux

# Where pages are placed (Linux x86-64 layout, Documentation/arch/x86/x86_64/mm.rst):
# name -> (start, end) per paging depth. The direct map maps physical address pa at
# PAGE_OFFSET + pa, and problems keep that rule.
_USER_REGIONS = {
    "text/heap": (0x0000_0000_0040_0000, 0x0000_0000_4000_0000),
    "PIE heap": (0x0000_5500_0000_0000, 0x0000_5700_0000_0000),
    "mmap/stack": (0x0000_7F00_0000_0000, 0x0000_7FFF_FFFF_F000),
}
_USER_HIGH = (0x0000_8000_0000_0000, 0x00FF_FFFF_FFFF_F000)  # 5-level only (mmap hint)
_DIRECT_MAP = {4: 0xFFFF_8880_0000_0000, 5: 0xFF11_0000_0000_0000}
_VMALLOC = {4: 0xFFFF_C900_0000_0000, 5: 0xFFA0_0000_0000_0000}
_KERNEL_TEXT = (0xFFFF_FFFF_8000_0000, 0xFFFF_FFFF_C000_0000)


# --- the problem --------------------------------------------------------------------------
@dataclass(frozen=True)
class Access:
    """One memory access: what the CPU is asked to do."""

    va: int
    kind: str  # "read", "write" or "fetch"
    cpl: int
    ac: bool = False  # RFLAGS.AC (lets CPL 0-2 touch user pages under SMAP)

    def __str__(self) -> str:
        mode = "user mode" if self.cpl == 3 else "supervisor mode"
        return (f"{ACCESS_WORDS[self.kind]}, CPL {self.cpl} ({mode}), "
                f"RFLAGS.AC = {int(self.ac)}, virtual address {self.va:#018x}")


@dataclass(frozen=True)
class Problem:
    """A generated problem: the machine as the student sees it and the walk's verdict."""

    kind: str
    seed: int
    levels: int
    difficulty: str
    regs: Registers
    access: Access
    memory: dict[int, int]  # every non-zero qword of physical memory, by address
    result: WalkResult = field(compare=False)  # the reference walk on that memory

    def text(self) -> str:
        """The problem statement: CPU state, memory dump, access and question."""
        return render_text(self)

    def answer(self) -> str:
        """The worked answer: every step of the walk, then the verdict."""
        return render_answer(self)


def make_problem(
    kind: str, seed: int, *, levels: int = 4, difficulty: str = "medium"
) -> Problem:
    """Generate problem number ``seed`` of ``kind`` ("translate", "fault", "walk") for
    ``levels``-level paging at ``difficulty`` ("easy", "medium", "hard")."""
    _check_options(kind, seed, levels, difficulty)
    rng = random.Random(f"kaiser-edu practice/{kind}/{levels}/{difficulty}/{seed}")
    plan = _plan_fault(rng, difficulty) if kind == "fault" else _plan_translate(rng, difficulty)
    mem = PhysMem(MAXPHYADDR)
    pt = PageTables(mem, _ScatteredFrames(mem, rng), levels=levels)
    page_va = _map_target(pt, rng, plan)
    _map_distractors(pt, rng, page_va, plan, {"easy": 2, "medium": 3, "hard": 5}[difficulty])
    va = page_va + rng.randrange(plan.size)
    va = _apply_twist(pt, rng, plan, va)
    regs = _registers(pt, rng, plan)
    _drop_unreachable(mem, regs.pgd_pa, levels)
    memory = mem.nonzero_qwords()
    access = Access(va, plan.access, plan.cpl, plan.ac)
    result = walk(mem, regs, va, access.kind, access.cpl, access.ac)
    return Problem(kind, seed, levels, difficulty, regs, access, memory, result)


def _check_options(kind: object, seed: object, levels: object, difficulty: object) -> None:
    if kind not in KINDS:
        raise KaiserEduError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 64:
        raise KaiserEduError(f"seed must be an integer from 0 to 2**64-1; got {seed!r}")
    if levels not in LEVELS or isinstance(levels, bool):
        raise KaiserEduError(f"levels must be 4 or 5 (5 = CR4.LA57); got {levels!r}")
    if difficulty not in DIFFICULTIES:
        raise KaiserEduError(
            f"difficulty must be one of {', '.join(DIFFICULTIES)}; got {difficulty!r}"
        )


# --- planning: what this problem is about ---------------------------------------------------
@dataclass
class _Plan:
    """The ingredients drawn for one problem (the answer is still whatever the walk says)."""

    difficulty: str
    user: bool  # target in the lower (user) half
    size: int  # page size of the target mapping
    rw: bool
    nx: bool
    access: str
    cpl: int
    ac: bool = False
    twist: str = "none"  # none, not_present, non_canonical, reserved, upper_rights
    wp: bool = True
    smep: bool = True
    smap: bool = True
    nxe: bool = True
    pcide: bool = False


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _page_size(rng: random.Random, difficulty: str) -> int:
    weights = {"easy": (75, 25, 0), "medium": (50, 30, 20), "hard": (40, 30, 30)}[difficulty]
    return rng.choices(b.PAGE_SIZES, weights=weights)[0]


def _plan_translate(rng: random.Random, difficulty: str) -> _Plan:
    """translate / walk: the structure of the tables decides; the access is a read, by
    the CPL that owns the address (except a Meltdown-style user read of a kernel page)."""
    user = rng.random() < 0.65
    twist = _pick(rng, {
        "easy": {"none": 70, "not_present": 30},
        "medium": {"none": 55, "not_present": 30, "non_canonical": 10, "meltdown": 5},
        "hard": {"none": 40, "not_present": 25, "non_canonical": 10, "reserved": 15,
                 "meltdown": 10},
    }[difficulty])
    if twist == "meltdown":  # a user-mode read of a kernel address, as Meltdown does
        user, twist = False, "none"
        cpl = 3
    else:
        cpl = 3 if user else 0
    plan = _Plan(difficulty, user, _page_size(rng, difficulty), rw=rng.random() < 0.7,
                 nx=rng.random() < 0.6, access="read", cpl=cpl, twist=twist)
    plan.pcide = difficulty == "hard" or (difficulty == "medium" and rng.random() < 0.5)
    return plan


def _plan_fault(rng: random.Random, difficulty: str) -> _Plan:
    """fault: the rights in the entries and the registers decide."""
    user = rng.random() < 0.6
    if difficulty == "easy":
        cpl = 3 if user or rng.random() < 0.5 else 0
    else:
        cpl = rng.choice((3, 3, 0)) if user else rng.choice((0, 0, 3))
    plan = _Plan(difficulty, user, _page_size(rng, difficulty), rw=rng.random() < 0.5,
                 nx=rng.random() < 0.5, access=rng.choice(("read", "write", "fetch")), cpl=cpl)
    if difficulty == "easy":
        plan.smep = plan.smap = False
        return plan
    plan.wp = rng.random() < 0.7
    plan.smep = rng.random() < 0.5
    plan.smap = rng.random() < 0.5
    plan.ac = cpl < 3 and plan.smap and rng.random() < 0.5
    plan.twist = _pick(rng, {
        "medium": {"none": 85, "not_present": 10, "non_canonical": 5},
        "hard": {"none": 50, "not_present": 10, "non_canonical": 5, "reserved": 15,
                 "upper_rights": 20},
    }[difficulty])
    plan.pcide = difficulty == "hard"
    return plan


# --- building the machine ---------------------------------------------------------------
class _ScatteredFrames(FrameAllocator):
    """A frame allocator that places page tables at seeded random frames of RAM, so every
    problem has its own addresses (the real one hands frames out in order)."""

    def __init__(self, mem: PhysMem, rng: random.Random):
        super().__init__(mem, RAM_BYTES, _FIRST_PA)
        self._rng = rng
        self._taken: set[int] = set()

    def alloc(self) -> int:
        while True:
            pfn = self._rng.randrange(_FIRST_PA >> b.PAGE_SHIFT, RAM_BYTES >> b.PAGE_SHIFT)
            if pfn not in self._taken:
                self._taken.add(pfn)
                return pfn << b.PAGE_SHIFT


def _regions(user: bool, size: int, levels: int) -> list[tuple[int, int, bool]]:
    """(start, end, is_direct_map) ranges where a page of ``size`` may go."""
    if user:
        spans = list(_USER_REGIONS.values())
        if size == b.PUD_SIZE:
            spans = [_USER_REGIONS["mmap/stack"]]
        if levels == 5:
            spans.append(_USER_HIGH)
        return [(lo, hi, False) for lo, hi in spans]
    direct = (_DIRECT_MAP[levels], _DIRECT_MAP[levels] + RAM_BYTES, True)
    if size == b.PUD_SIZE:
        return [direct]
    if size == b.PMD_SIZE:
        return [direct, (*_KERNEL_TEXT, False)]
    vmalloc = (_VMALLOC[levels], _VMALLOC[levels] + (1 << 40), False)
    return [direct, vmalloc, (*_KERNEL_TEXT, False)]


def _random_pa(rng: random.Random, size: int) -> int:
    return rng.randrange(_FIRST_PA // size if size < _FIRST_PA else 1, RAM_BYTES // size) * size


def _place(rng: random.Random, user: bool, size: int, levels: int) -> tuple[int, int]:
    """A (virtual, physical) pair for a page of ``size``, aligned, in a Linux-like place."""
    start, end, direct = rng.choice(_regions(user, size, levels))
    first = -(-start // size) * size
    va = first + rng.randrange((end - first) // size) * size
    pa = va - start if direct else _random_pa(rng, size)
    return va, pa


def _leaf_flags(rng: random.Random, user: bool, rw: bool, nx: bool) -> int:
    flags = b.PAGE_PRESENT
    flags |= b.PAGE_USER if user else (b.PAGE_GLOBAL if rng.random() < 0.7 else 0)
    flags |= b.PAGE_RW if rw else 0
    flags |= b.PAGE_NX if nx else 0
    if rng.random() < 0.8:
        flags |= b.PAGE_ACCESSED
        if rw and rng.random() < 0.6:
            flags |= b.PAGE_DIRTY
    return flags


def _map_target(pt: PageTables, rng: random.Random, plan: _Plan) -> int:
    va, pa = _place(rng, plan.user, plan.size, pt.levels)
    pt.map(va, pa, plan.size, _leaf_flags(rng, plan.user, plan.rw, plan.nx))
    return va


def _map_distractors(
    pt: PageTables, rng: random.Random, page_va: int, plan: _Plan, count: int
) -> None:
    """Map ``count`` other pages that share some of the target's tables (a different index
    at one level), so the dump holds entries next to the ones that matter. The first one
    differs at the top level: a process never has just one top-level entry."""
    top = pt.levels
    leaf_level = {b.PAGE_SIZE: 1, b.PMD_SIZE: 2, b.PUD_SIZE: 3}[plan.size]
    for i in range(count):
        level = top if i == 0 else rng.randint(leaf_level, top)
        index = table_index(page_va, level)
        half = range(0, 256) if plan.user else range(256, 512)
        choices = half if level == top else range(512)  # the top level: stay in the half
        new = rng.choice([i for i in (index - 1, index + 1) if i in choices]
                         if rng.random() < 0.4 else list(choices))
        if new == index:
            continue
        shift = b.level_shift(level)
        va = (page_va & ~(0x1FF << shift)) | (new << shift)
        size = plan.size if level == leaf_level else rng.choice(b.PAGE_SIZES[: level])
        va = canonicalize((va & ~((1 << shift) - 1)) | (rng.randrange(1 << shift) & -size),
                          pt.levels)
        direct = _DIRECT_MAP[pt.levels]
        pa = va - direct if direct <= va < direct + RAM_BYTES else _random_pa(rng, size)
        flags = _leaf_flags(rng, plan.user, rng.random() < 0.6, rng.random() < 0.6)
        with contextlib.suppress(MappingError):  # overlaps a mapping: one distractor fewer
            pt.map(va, pa, size, flags)


def _apply_twist(pt: PageTables, rng: random.Random, plan: _Plan, va: int) -> int:
    """Break the target the way the plan says; returns the address to access."""
    mem = pt.mem
    path = list(pt.entries(va))
    if plan.twist == "non_canonical":
        return va ^ (1 << rng.randrange(va_bits(pt.levels) - 1, 64))
    if plan.twist == "not_present":
        entry = rng.choice(path)
        # P=0 makes the CPU ignore the other bits: Linux keeps swap or PROT_NONE data there.
        keep = plan.difficulty != "easy" and rng.random() < 0.4
        mem.write_qword(entry.pa, entry.value & ~b.PAGE_PRESENT if keep else 0)
    elif plan.twist == "reserved":
        choice = rng.choice(("maxphyaddr", "nxe", "ps", "huge") if plan.size > b.PAGE_SIZE
                            else ("maxphyaddr", "nxe", "ps"))
        if choice == "nxe":  # XD is reserved while EFER.NXE=0
            plan.nxe = False
            entry = path[-1]
            mem.write_qword(entry.pa, entry.value | b.PAGE_NX)
        elif choice == "ps":  # PS is reserved in a PML4E / PML5E: no 512 GiB pages
            entry = path[rng.randrange(pt.levels - 3)]
            mem.write_qword(entry.pa, entry.value | b.PAGE_PSE)
        elif choice == "huge":  # bits 20:13 / 29:13 of a huge-page entry must be 0
            entry = path[-1]
            high = b.level_shift(entry.level) - 1
            mem.write_qword(entry.pa, entry.value | 1 << rng.randint(13, high))
        else:  # a physical-address bit the CPU does not have
            entry = rng.choice(path)
            mem.write_qword(entry.pa, entry.value | 1 << rng.randint(MAXPHYADDR, 51))
    elif plan.twist == "upper_rights":  # Linux never does this; the hardware allows it
        entry = rng.choice(path[:-1])
        change = rng.choice(("clear_us", "clear_rw", "set_nx")
                            if entry.value & b.PAGE_USER else ("clear_rw", "set_nx"))
        value = {"clear_us": entry.value & ~b.PAGE_USER, "clear_rw": entry.value & ~b.PAGE_RW,
                 "set_nx": entry.value | b.PAGE_NX}[change]
        mem.write_qword(entry.pa, value)
    return va


def _registers(pt: PageTables, rng: random.Random, plan: _Plan) -> Registers:
    """Linux-like register values with the plan's WP, SMEP, SMAP, NXE, PCIDE and LA57."""
    cr0 = _LINUX_CR0 | int(plan.wp) << 16
    cr4 = (_LINUX_CR4 | int(plan.smap) << 21 | int(plan.smep) << 20 | int(plan.pcide) << 17
           | int(pt.levels == 5) << 12)
    efer = b.EFER_LME | b.EFER_LMA | _EFER_SCE | (b.EFER_NXE if plan.nxe else 0)
    pcid = 0
    if plan.pcide:  # Linux: kernel PCID = ASID + 1 (1..6); under PTI user PCID = that | 0x800
        pcid = rng.randint(1, 6) | (0x800 if plan.cpl == 3 and rng.random() < 0.5 else 0)
    regs = Registers(cr0=cr0, cr3=pt.cr3(pcid), cr4=cr4, efer=efer, maxphyaddr=MAXPHYADDR)
    regs.validate()
    return regs


def _drop_unreachable(mem: PhysMem, pgd_pa: int, levels: int) -> None:
    """Zero every frame no present entry points to any more (subtrees cut off by a twist),
    so that the dump is exactly the memory: every qword not listed really reads as 0."""
    addr_mask = b.phys_addr_mask(mem.maxphyaddr)
    reachable, todo = set(), [(pgd_pa, levels)]
    while todo:
        table, level = todo.pop()
        reachable.add(table >> b.PAGE_SHIFT)
        if level == 1:
            continue
        for index in range(512):
            value = mem.read_qword(table | index << 3)
            if value & b.PAGE_PRESENT and not (level <= 3 and value & b.PAGE_PSE):
                todo.append((value & addr_mask, level - 1))
    for pfn in {pa >> b.PAGE_SHIFT for pa in mem.nonzero_qwords()} - reachable:
        mem.zero_frame(pfn)


# --- the problem as text --------------------------------------------------------------------
QUESTIONS = {
    "translate": (
        "Question: which physical address does this access reach? Or does it fault: #PF\n"
        "(with which error code) or #GP?"
    ),
    "fault": (
        "Question: is the access allowed? If not, which exception does it raise: #GP, or\n"
        "#PF with which error code?"
    ),
    "walk": (
        "Question: walk the page tables. For each level the walk reaches, give the index (which\n"
        "bits of the address?), the physical address of the entry read, and what the entry's\n"
        "value means (next table, page frame, not present, reserved bit). How does it end?"
    ),
}


def names_of(value: int, names: tuple[tuple[int, str], ...]) -> str:
    """The named bits set in a register value: ``names_of(0x80010001, CR0_NAMES)`` is
    ``'PG WP PE'``."""
    return " ".join(name for bit, name in names if value >> bit & 1)


def render_text(p: Problem) -> str:
    """The problem statement (what :meth:`Problem.text` returns)."""
    regs = p.regs

    def reg(name: str, value: int, names: tuple[tuple[int, str], ...]) -> str:
        shown = "" if p.kind == "fault" and p.difficulty == "hard" else names_of(value, names)
        return f"  {name:4} = {value:#018x}   {shown}".rstrip()

    lines = [
        f"Practice problem: {p.kind}, seed {p.seed} ({p.levels}-level paging, {p.difficulty})",
        "",
        f"CPU: x86-64 in 64-bit mode, {p.levels}-level paging, MAXPHYADDR = {regs.maxphyaddr}",
        reg("CR0", regs.cr0, CR0_NAMES),
        f"  CR3  = {regs.cr3:#018x}",
        reg("CR4", regs.cr4, CR4_NAMES),
        reg("EFER", regs.efer, EFER_NAMES),
        "",
        "Physical memory: the page-table pages, one 8-byte entry per line",
        "(address: value); every qword not listed reads as 0.",
    ]
    lines += [f"  {pa:#014x}: {value:#018x}" for pa, value in sorted(p.memory.items())]
    lines += ["", f"Access: {p.access}", "", QUESTIONS[p.kind]]
    return "\n".join(lines)


# --- the worked answer ----------------------------------------------------------------------
def render_answer(p: Problem) -> str:
    """The worked answer (what :meth:`Problem.answer` returns)."""
    regs, acc, result = p.regs, p.access, p.result
    lines = [f"Worked answer: {p.kind}, seed {p.seed}", ""]
    if p.kind == "fault":
        lines += [*_register_lines(regs, acc), ""]
    lines += _canonical_lines(acc.va, p.levels)
    if result.outcome == b.OUTCOME_GP:
        return "\n".join([*lines, "", f"Answer: #GP(0): {acc.va:#018x} is not canonical. No "
                          "table is read, no #PF, CR2 is not written."])
    lines += ["", *_walk_lines(regs, acc.va, result)]
    code = result.error_code or 0
    if result.outcome == b.OUTCOME_OK or (code & b.X86_PF_PROT and not code & b.X86_PF_RSVD):
        lines += ["", *_rights_lines(regs, acc, result)]  # the walk reached a valid leaf
    lines.append("")
    if result.outcome == b.OUTCOME_OK:
        size, offset = result.page_size, acc.va & (result.page_size - 1)
        lines += [
            f"Offset in the {b.size_name(size)} page: va & {size - 1:#x} = {offset:#x}",
            f"Physical address = {result.pa - offset:#x} + {offset:#x} = {result.pa:#x}",
            f"Answer: {acc.va:#018x} -> physical {result.pa:#014x} ({b.size_name(size)} page);"
            " the access is allowed.",
        ]
    else:
        lines += _error_code_lines(acc, code)
        lines.append(f"Answer: #PF, error code {code:#x}, CR2 = {acc.va:#018x}")
    return "\n".join(lines[:-1] + _ad_lines(result) + lines[-1:])


def _register_lines(regs: Registers, acc: Access) -> list[str]:
    lines = [
        "The registers that matter:",
        f"  CR0.WP    (bit 16) = {int(regs.wp)}   supervisor writes "
        + ("honour R/W=0" if regs.wp else "ignore R/W=0"),
        f"  CR4.SMEP  (bit 20) = {int(regs.smep)}   the kernel "
        + ("may not" if regs.smep else "may") + " execute user-mode pages",
        f"  CR4.SMAP  (bit 21) = {int(regs.smap)}   "
        + ("kernel data accesses to user-mode pages fault unless RFLAGS.AC=1" if regs.smap
           else "the kernel may read and write user-mode pages"),
        f"  EFER.NXE  (bit 11) = {int(regs.nxe)}   the XD bit (63) is "
        + ("in use" if regs.nxe else "reserved: an entry with XD=1 is a RSVD fault"),
        f"  CR4.PCIDE (bit 17) = {int(regs.pcide)}   "
        + (f"CR3 bits 11:0 are the PCID ({regs.pcid:#x}), not part of the table address"
           if regs.pcide else "CR3 bits 11:0 are not a PCID"),
    ]
    if acc.cpl < 3:
        lines.append(f"  RFLAGS.AC = {int(acc.ac)}")
    return lines


def _canonical_lines(va: int, levels: int) -> list[str]:
    n = va_bits(levels)
    top = va >> (n - 1)
    width = 64 - (n - 1)
    head = (f"Canonical? {levels}-level paging uses {n} address bits, so bits 63:{n - 1} must all "
            f"equal bit {n - 1}.")
    if is_canonical(va, levels):
        return [head, f"  bits 63:{n - 1} of {va:#018x} = {top:#x}: all "
                f"{'ones' if top else 'zeros'}, canonical."]
    return [head, f"  bits 63:{n - 1} of {va:#018x} = {top:#x}, neither {0:#x} nor "
            f"{(1 << width) - 1:#x}: NOT canonical."]


def _walk_lines(regs: Registers, va: int, result: WalkResult) -> list[str]:
    addr_mask = b.phys_addr_mask(regs.maxphyaddr)
    top = TABLE_NAMES[regs.levels]
    lines = [f"CR3 = {regs.cr3:#x}: the {top} table is at CR3 & {addr_mask:#x} = "
             f"{regs.pgd_pa:#x}"]
    if regs.pcide:
        lines.append(f"  (CR4.PCIDE=1: CR3 bits 11:0 = {regs.pcid:#x} are the PCID, not part of "
                     "the address)")
    lines.append("")
    table = regs.pgd_pa
    for step in result.steps:
        level, entry = step.level, step.entry
        name, shift, index = b.LEVEL_SDM_NAMES[level], b.level_shift(level), table_index(va, level)
        lines += [
            f"{name:6} index   = bits {shift + 8}:{shift} = (va >> {shift}) & 0x1ff = {index:#x} "
            f"({index})",
            f"       address = {table:#x} + {index} * 8 = {step.entry_pa:#x}",
            f"       value   = {entry:#018x}: {b.describe_entry(entry, level, regs.maxphyaddr)}",
        ]
        leaf = level == 1 or (level <= 3 and bool(entry & b.PAGE_PSE))
        if not entry & b.PAGE_PRESENT:
            lines.append("       P=0: not present (the CPU ignores the other bits): #PF")
            break
        bad = entry & reserved_bits(level, leaf, regs)
        if bad:
            lines += [f"       reserved bits set: {bad:#x}", *(
                f"       - {why}" for why in _reserved_reasons(bad, level, leaf, regs))]
            lines.append("       a reserved bit: #PF with P=1 and RSVD=1")
            break
        if leaf:
            size = 1 << shift
            frame_mask = addr_mask & ~(size - 1)
            lines.append(f"       leaf: a {b.size_name(size)} page at value & {frame_mask:#x} = "
                         f"{entry & frame_mask:#x}")
        else:
            table = entry & addr_mask
            lines.append(f"       next: the {TABLE_NAMES[level - 1]} table at value & "
                         f"{addr_mask:#x} = {table:#x}")
        lines.append("")
    if lines[-1] == "":
        lines.pop()
    return lines


def _reserved_reasons(bad: int, level: int, leaf: bool, regs: Registers) -> list[str]:
    reasons = []
    above = bad & b.reserved_mask(regs.maxphyaddr)
    if above:
        bits = ", ".join(str(i) for i in range(51, -1, -1) if above >> i & 1)
        reasons.append(f"bit {bits}: physical-address bits 51:{regs.maxphyaddr} must be 0 "
                       f"(MAXPHYADDR = {regs.maxphyaddr})")
    if bad & b.PAGE_NX and not regs.nxe:
        reasons.append("bit 63 (XD) is reserved while EFER.NXE=0")
    if level >= 4 and bad & b.PAGE_PSE:
        reasons.append(f"bit 7 (PS) is reserved in a {b.LEVEL_SDM_NAMES[level]}: "
                       "there are no 512 GiB pages")
    huge = bad & ((1 << b.level_shift(level)) - 1) & ~((1 << 13) - 1)
    if leaf and level > 1 and huge:
        bits = ", ".join(str(i) for i in range(29, 12, -1) if huge >> i & 1)
        reasons.append(f"bit {bits}: bits {b.level_shift(level) - 1}:13 of a "
                       f"{b.size_name(1 << b.level_shift(level))} page entry must be 0")
    return reasons


def rights_check(acc: Access, user: bool, writable: bool, nx: bool,
                 regs: Registers) -> tuple[bool, list[str]]:
    """(denied, the rules that decide, in words) for the combined rights of a page
    [SDM 4.6.1]: every rule the access breaks, or why it is allowed. Protection keys are
    not used in practice problems.

    >>> regs = Registers.long_mode(smap=True)
    >>> rights_check(Access(0x1000, "read", cpl=0), True, True, False, regs)
    (True, ['CR4.SMAP=1 and RFLAGS.AC=0: the kernel may not read or write user-mode pages'])
    """
    sup, write = acc.cpl < 3, acc.kind == "write"
    what = "write to" if write else "read of"
    page = "user-mode" if user else "supervisor-mode"
    broken, notes = [], []
    if acc.kind == "fetch":
        if nx:
            broken.append("an instruction fetch from a page with XD=1 (EFER.NXE=1)")
        if not sup and not user:
            broken.append("CPL 3 may not fetch from a supervisor-mode page")
        if sup and user:
            if regs.smep:
                broken.append("CR4.SMEP=1: the kernel may not execute user-mode pages")
            else:
                notes.append("CR4.SMEP=0, so the kernel may execute a user-mode page "
                             "(the hole SMEP closes)")
        allowed = f"{'supervisor' if sup else 'CPL 3'} fetch from a {page} page with XD=0"
    elif not sup:
        if not user:
            broken.append("CPL 3 may not access a supervisor-mode page (U/S=0 at some level)")
        if write and not writable:
            broken.append("CPL 3 write to a read-only page (R/W=0 at some level)")
        allowed = f"CPL 3 {what} a {'writable ' if write else ''}user-mode page"
    else:
        if user and regs.smap and not acc.ac:
            broken.append("CR4.SMAP=1 and RFLAGS.AC=0: the kernel may not read or write "
                          "user-mode pages")
        elif user:
            notes.append("SMAP lets it through because RFLAGS.AC=1 (STAC)" if regs.smap
                         else "CR4.SMAP=0, so the kernel may use user-mode pages")
        if write and not writable:
            if regs.wp:
                broken.append("CR0.WP=1: supervisor writes honour R/W=0")
            else:
                notes.append("CR0.WP=0, so the kernel may write to read-only pages")
        allowed = f"supervisor {what} a {page} page"
    if broken:
        if not sup and not user and acc.kind == "read":
            broken.append("(Meltdown: a vulnerable CPU still hands the data to the following "
                          "instructions speculatively, before the fault is raised)")
        return True, broken
    return False, [allowed, *notes]


def _rights_lines(regs: Registers, acc: Access, result: WalkResult) -> list[str]:
    steps = result.steps
    us = [int(bool(s.entry & b.PAGE_USER)) for s in steps]
    rw = [int(bool(s.entry & b.PAGE_RW)) for s in steps]
    xd = [int(bool(s.entry & b.PAGE_NX)) for s in steps]
    user, writable, nx = all(us), all(rw), regs.nxe and any(xd)
    denied, reasons = rights_check(acc, user, writable, nx, regs)  # tested against the walk
    xd_line = (f"  XD  = {' | '.join(map(str, xd))} = {int(any(xd))}"
               + (" -> not executable" if nx else " -> executable"))
    if not regs.nxe:
        xd_line = "  XD  is not in use (EFER.NXE=0): everything is executable"
    return [
        f"Rights, combined over the {len(steps)} entries (U/S and R/W: AND; XD: OR):",
        f"  U/S = {' & '.join(map(str, us))} = {int(user)} -> "
        + ("user-mode page" if user else "supervisor-mode page"),
        f"  R/W = {' & '.join(map(str, rw))} = {int(writable)} -> "
        + ("writable" if writable else "read-only"),
        xd_line,
        f"Check: {ACCESS_WORDS[acc.kind]} at CPL {acc.cpl} -> "
        + ("denied" if denied else "allowed"),
        *(line for reason in reasons
          for line in textwrap.wrap(reason, 90, initial_indent="  - ", subsequent_indent="    ")),
    ]


def _error_code_lines(acc: Access, code: int) -> list[str]:
    fetch = acc.kind == "fetch"
    if fetch and not code & b.X86_PF_INSTR:
        id_text = "an instruction fetch, but I/D is reported only if NXE=1 or SMEP=1"
    else:
        id_text = "an instruction fetch" if fetch else "not an instruction fetch"
    rows = [
        ("P", b.X86_PF_PROT, "a protection violation (the entries were present)",
         "a not-present entry"),
        ("W/R", b.X86_PF_WRITE, "the access was a write", "the access was not a write"),
        ("U/S", b.X86_PF_USER, "the access came from CPL 3", "the access came from CPL 0-2"),
        ("RSVD", b.X86_PF_RSVD, "a reserved bit was set", "no reserved bit was set"),
        ("I/D", b.X86_PF_INSTR, id_text, id_text),
        ("PK", b.X86_PF_PK, "a protection-key violation", "no protection key involved"),
    ]
    lines = ["Error code, bit by bit:"]
    for i, (name, bit, yes, no) in enumerate(rows):
        lines.append(f"  bit {i} {name:4} = {int(bool(code & bit))}  {yes if code & bit else no}")
    lines.append(f"  = {code:#x}: {b.describe_error_code(code)}")
    return lines


def _ad_lines(result: WalkResult) -> list[str]:
    if not result.ad_updates:
        return []
    level_of = {s.entry_pa: s.level for s in result.steps}
    lines = ["Accessed/dirty bits the CPU writes back:"]
    for pa, old, new in result.ad_updates:
        flags = " and ".join(n for bit, n in ((b.PAGE_ACCESSED, "A"), (b.PAGE_DIRTY, "D"))
                             if (old ^ new) & bit)
        lines.append(f"  {b.LEVEL_SDM_NAMES[level_of[pa]]:6} @ {pa:#x}: {old:#018x} -> "
                     f"{new:#018x} (sets {flags})")
    return lines
