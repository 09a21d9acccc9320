"""The page walk, in plain Python: the executable specification of x86-64 translation.

This is the code the lessons show. It follows the Intel SDM Vol. 3A chapter 4 step by step
and is deliberately short; the numba engine (:mod:`kaiser_edu.hw.mmu_kernels`) implements the same
rules for speed and is tested against this file access by access.

Rules (SDM section in brackets):

1. A non-canonical address raises #GP, before any table is read [3.3.7.1].
2. From CR3, each level reads one 8-byte entry: ``table | index << 3`` [4.5].
3. P=0 anywhere: #PF, not-present. A set reserved bit (bits 51:MAXPHYADDR; PS in a
   PML4E/PML5E; bits 20:13 of a 2 MiB or 29:13 of a 1 GiB leaf; XD when EFER.NXE=0):
   #PF with P=1 and RSVD=1 [4.5, 4.7].
4. PS=1 in a PDPTE or PDE ends the walk early: a 1 GiB or 2 MiB page.
5. Rights combine across levels: user only if U/S=1 at every level, writable only if R/W=1
   at every level, not executable if XD=1 at any level [4.6.1].
6. Then the access is checked against CPL, CR0.WP, CR4.SMEP/SMAP with RFLAGS.AC, and for
   user-mode addresses the protection key in PKRU [4.6].
7. A/D [4.8]: the CPU sets A in each entry it uses. This model sets A in every table entry
   that led to the leaf, even when the access then faults (the SDM allows it), and sets A
   in the leaf, and D for a write, only when the access is allowed (leaf behaviour on a
   fault is model-specific; we choose the deterministic "no").

The #PF error code has P (protection, not absence), W (write), U (CPL 3), RSVD, I (fetch,
reported if SMEP=1 or NXE=1) and PK; CR2 receives the faulting address [4.7].
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import is_canonical, table_index
from kaiser_edu.hw.physmem import PhysMem
from kaiser_edu.hw.regs import Registers


@dataclass(frozen=True)
class WalkStep:
    """One entry read by the walk."""

    level: int  # 5 = PML5E, 4 = PML4E, 3 = PDPTE, 2 = PDE, 1 = PTE
    entry_pa: int
    entry: int  # the value read (before any A/D update)

    def __str__(self) -> str:
        name = b.LEVEL_SDM_NAMES[self.level]
        return f"{name:6} @ {self.entry_pa:#x}: {self.entry:#018x}  {b.describe_entry(self.entry, self.level)}"


@dataclass
class WalkResult:
    """What one access did: every step, and a translation or a fault."""

    va: int
    kind: str
    cpl: int
    outcome: int  # OUTCOME_OK, OUTCOME_PF or OUTCOME_GP
    steps: list[WalkStep] = field(default_factory=list)
    pa: int | None = None
    page_size: int | None = None
    error_code: int | None = None  # #PF only
    ad_updates: list[tuple[int, int, int]] = field(default_factory=list)  # (pa, old, new)

    @property
    def ok(self) -> bool:
        return self.outcome == b.OUTCOME_OK

    @property
    def cr2(self) -> int | None:
        """CR2 after the access: the faulting linear address on #PF."""
        return self.va if self.outcome == b.OUTCOME_PF else None

    def summary(self) -> str:
        if self.outcome == b.OUTCOME_GP:
            return f"#GP: {self.va:#x} is not canonical"
        if self.outcome == b.OUTCOME_PF:
            return f"#PF error code {self.error_code:#x}: {b.describe_error_code(self.error_code)}; CR2={self.va:#x}"
        return f"{self.va:#x} -> {self.pa:#x} ({b.size_name(self.page_size)} page)"

    def __str__(self) -> str:
        head = f"{self.kind} of {self.va:#x} at CPL {self.cpl}"
        return "\n".join([head, *(f"  {step}" for step in self.steps), f"  => {self.summary()}"])


def reserved_bits(level: int, leaf: bool, regs: Registers) -> int:
    """Bits that must be 0 in a present entry of ``level`` (SDM Tables 4-14..4-19)."""
    mask = b.reserved_mask(regs.maxphyaddr)
    if not regs.nxe:
        mask |= b.PAGE_NX
    if level >= 4:
        mask |= b.PAGE_PSE  # no 512 GiB pages
    elif leaf:
        mask |= ((1 << b.level_shift(level)) - 1) & ~((1 << 13) - 1)  # bits 29:13 or 20:13
    return mask


def access_rights_fault(
    access: int, cpl: int, ac: bool, user_page: bool, writable: bool, nx: bool, pkey: int,
    regs: Registers,
) -> tuple[bool, bool]:
    """Does the access violate the combined rights? Returns (denied, pk_flag) [SDM 4.6]."""
    user_access = cpl == 3
    write = access == b.ACCESS_WRITE
    if access == b.ACCESS_FETCH:
        if nx:
            denied = True
        elif user_access:
            denied = not user_page
        else:
            denied = user_page and regs.smep
        return denied, False  # protection keys never apply to instruction fetches
    # Protection keys: data accesses to user-mode addresses, PKRU bits AD=2k, WD=2k+1.
    pk = False
    if regs.pke and user_page:
        ad = regs.pkru >> (2 * pkey) & 1
        wd = regs.pkru >> (2 * pkey + 1) & 1
        pk = bool(ad or (wd and write and (user_access or regs.wp)))
    if user_access:
        denied = not user_page or (write and not writable)
    else:
        smap_blocks = user_page and regs.smap and not ac
        denied = smap_blocks or (write and regs.wp and not writable)
    return denied or pk, pk


def walk(
    mem: PhysMem,
    regs: Registers,
    va: int,
    kind: str = "read",
    cpl: int = 3,
    ac: bool = False,
    set_ad: bool = True,
) -> WalkResult:
    """Translate ``va`` for a ``kind`` access ("read", "write", "fetch") at ``cpl`` (0-3)
    with RFLAGS.AC = ``ac``, reading the tables in ``mem`` from ``regs.cr3``.

    With ``set_ad`` the A and D bits are written back to memory, as the CPU does.
    """
    access = _check_access(va, kind, cpl)
    levels = regs.levels
    result = WalkResult(va=va, kind=kind, cpl=cpl, outcome=b.OUTCOME_GP)
    if not is_canonical(va, levels):
        return result

    error_code = (b.X86_PF_WRITE if access == b.ACCESS_WRITE else 0) | (
        b.X86_PF_USER if cpl == 3 else 0
    )
    if access == b.ACCESS_FETCH and (regs.smep or regs.nxe):
        error_code |= b.X86_PF_INSTR

    addr_mask = b.phys_addr_mask(regs.maxphyaddr)
    table = regs.pgd_pa
    user_page, writable, nx = True, True, False
    for level in range(levels, 0, -1):
        entry_pa = table | (table_index(va, level) << 3)
        entry = mem.read_qword(entry_pa)
        result.steps.append(WalkStep(level, entry_pa, entry))
        if not entry & b.PAGE_PRESENT:
            return _fault(mem, result, error_code, set_ad)
        leaf = level == 1 or (level <= 3 and bool(entry & b.PAGE_PSE))
        if entry & reserved_bits(level, leaf, regs):
            return _fault(mem, result, error_code | b.X86_PF_PROT | b.X86_PF_RSVD, set_ad)
        user_page &= bool(entry & b.PAGE_USER)
        writable &= bool(entry & b.PAGE_RW)
        nx |= regs.nxe and bool(entry & b.PAGE_NX)
        if leaf:
            break
        table = entry & addr_mask

    pkey = (entry & b.PKEY_MASK) >> b.PKEY_SHIFT
    denied, pk = access_rights_fault(access, cpl, ac, user_page, writable, nx, pkey, regs)
    if denied:
        error_code |= b.X86_PF_PROT | (b.X86_PF_PK if pk else 0)
        return _fault(mem, result, error_code, set_ad)

    size = 1 << b.level_shift(level)
    result.outcome = b.OUTCOME_OK
    result.page_size = size
    result.pa = (entry & addr_mask & ~(size - 1)) | (va & (size - 1))
    if set_ad:
        _set_accessed(mem, result, result.steps[:-1])
        leaf_bits = b.PAGE_ACCESSED | (b.PAGE_DIRTY if access == b.ACCESS_WRITE else 0)
        _set_bits(mem, result, result.steps[-1], leaf_bits)
    return result


def _fault(mem: PhysMem, result: WalkResult, error_code: int, set_ad: bool) -> WalkResult:
    """A #PF: the table entries that led to the failing level still get their A bit."""
    result.outcome = b.OUTCOME_PF
    result.error_code = error_code
    if set_ad:
        _set_accessed(mem, result, result.steps[:-1])
    return result


def _set_accessed(mem: PhysMem, result: WalkResult, steps: list[WalkStep]) -> None:
    for step in steps:
        _set_bits(mem, result, step, b.PAGE_ACCESSED)


def _set_bits(mem: PhysMem, result: WalkResult, step: WalkStep, bits: int) -> None:
    old = mem.read_qword(step.entry_pa)
    if old | bits != old:
        mem.write_qword(step.entry_pa, old | bits)
        result.ad_updates.append((step.entry_pa, old, old | bits))


def _check_access(va: int, kind: str, cpl: int) -> int:
    if kind not in b.ACCESS_KINDS:
        raise KaiserEduError(f"access kind must be one of read, write, fetch; got {kind!r}")
    if cpl not in (0, 1, 2, 3):
        raise KaiserEduError(f"cpl must be 0, 1, 2 or 3; got {cpl!r}")
    if not isinstance(va, int) or not 0 <= va < 1 << 64:
        raise KaiserEduError(f"va must be an integer in [0, 2**64), got {va!r}")
    return b.ACCESS_KINDS[kind]
