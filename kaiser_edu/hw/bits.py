"""Architectural names and numbers: paging-entry bits, control registers, #PF error codes.

Every constant here is a plain Python ``int`` carrying the name Linux gives it (without the
leading underscore Linux uses for ``_PAGE_*``), so ``PAGE_NX`` is Linux's ``_PAGE_NX`` from
arch/x86/include/asm/pgtable_types.h and ``X86_PF_WRITE`` is the enum in
arch/x86/include/asm/trap_pf.h. Bit positions follow the Intel SDM Vol. 3A, Tables 4-14 to
4-19 (paging entries), section 4.7 (page-fault error code) and section 2.5 (control
registers).

The decoders at the bottom turn raw numbers back into words, for lessons and error messages:
``describe_entry(0x8000000000001067)`` gives ``'P RW US A D NX pfn=0x1'``.
"""

from __future__ import annotations

# --- Paging-structure entry bits (SDM Tables 4-14..4-19; Linux pgtable_types.h) -----------
PAGE_PRESENT = 1 << 0  # P: the entry maps something; if 0 the CPU ignores all other bits
PAGE_RW = 1 << 1  # R/W: writes allowed (AND across levels)
PAGE_USER = 1 << 2  # U/S: user-mode accesses allowed (AND across levels)
PAGE_PWT = 1 << 3  # page-level write-through
PAGE_PCD = 1 << 4  # page-level cache disable
PAGE_ACCESSED = 1 << 5  # A: set by the CPU whenever it uses the entry
PAGE_DIRTY = 1 << 6  # D: set by the CPU on a write, leaf entries only
PAGE_PSE = 1 << 7  # PS in a PDPTE/PDE: this entry maps a 1 GiB / 2 MiB page
PAGE_PAT = 1 << 7  # the same bit in a 4 KiB PTE selects the PAT memory type
PAGE_GLOBAL = 1 << 8  # G: TLB entry survives CR3 writes (leaf only, needs CR4.PGE)
PAGE_SOFTW1 = 1 << 9  # bits 11:9 are ignored by the CPU, free for the OS
PAGE_PAT_LARGE = 1 << 12  # PAT for 2 MiB / 1 GiB leaves (bit 7 is PS there)
PAGE_NX = 1 << 63  # XD: no instruction fetch (OR across levels); reserved if EFER.NXE=0

PKEY_SHIFT = 59  # protection key: bits 62:59 of a leaf entry (CR4.PKE=1)
PKEY_MASK = 0xF << PKEY_SHIFT

# Linux's composite protections (pgtable_types.h). Linux keeps the upper levels permissive
# and restricts access at the leaf: table entries carry RW (and U for user tables).
PAGE_TABLE = PAGE_PRESENT | PAGE_RW | PAGE_USER | PAGE_ACCESSED | PAGE_DIRTY  # _PAGE_TABLE
KERNPG_TABLE = PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED | PAGE_DIRTY  # _KERNPG_TABLE
PAGE_KERNEL = PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED | PAGE_DIRTY | PAGE_NX | PAGE_GLOBAL
PAGE_KERNEL_RO = PAGE_PRESENT | PAGE_ACCESSED | PAGE_DIRTY | PAGE_NX | PAGE_GLOBAL
PAGE_KERNEL_EXEC = PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED | PAGE_DIRTY | PAGE_GLOBAL
PAGE_KERNEL_RX = PAGE_PRESENT | PAGE_ACCESSED | PAGE_DIRTY | PAGE_GLOBAL
PAGE_SHARED = PAGE_PRESENT | PAGE_RW | PAGE_USER | PAGE_ACCESSED | PAGE_NX  # user RW data
PAGE_READONLY = PAGE_PRESENT | PAGE_USER | PAGE_ACCESSED | PAGE_NX  # user RO data
PAGE_USER_EXEC = PAGE_PRESENT | PAGE_USER | PAGE_ACCESSED  # user text (r-x)

# --- Sizes and geometry (SDM 4.5; Linux pgtable_64_types.h) ------------------------------
PAGE_SHIFT = 12
PMD_SHIFT = 21
PUD_SHIFT = 30
P4D_SHIFT = 39
PAGE_SIZE = 1 << PAGE_SHIFT  # 4 KiB
PMD_SIZE = 1 << PMD_SHIFT  # 2 MiB
PUD_SIZE = 1 << PUD_SHIFT  # 1 GiB
PAGE_SIZES = (PAGE_SIZE, PMD_SIZE, PUD_SIZE)
PTRS_PER_TABLE = 512  # 9 index bits per level, 8-byte entries, one 4 KiB table
MAX_PHYADDR_BITS = 52  # the architectural limit on MAXPHYADDR

# Paging levels are numbered the SDM way, counting up from the page table:
# 1 = PT (pte), 2 = PD (pmd), 3 = PDPT (pud), 4 = PML4 (p4d; the pgd with 4 levels),
# 5 = PML5 (the pgd with 5-level paging). Index bits of level L: 12 + 9*(L-1) and up.
LEVEL_SDM_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}


def level_shift(level: int) -> int:
    """Lowest virtual-address bit indexed by ``level`` (12 for PT ... 48 for PML5)."""
    return PAGE_SHIFT + 9 * (level - 1)


def linux_level_name(level: int, levels: int) -> str:
    """Linux's name for a level: with 4 levels the p4d is folded into the pgd."""
    names = {1: "pte", 2: "pmd", 3: "pud", 4: "p4d", 5: "pgd"}
    return "pgd" if level == levels else names[level]


# --- Control registers (Linux uapi/asm/processor-flags.h; SDM 2.5) ------------------------
X86_CR0_PE = 1 << 0
X86_CR0_WP = 1 << 16  # supervisor writes honour R/W
X86_CR0_PG = 1 << 31

X86_CR3_PWT = 1 << 3
X86_CR3_PCD = 1 << 4
X86_CR3_PCID_MASK = 0xFFF  # CR3[11:0] with CR4.PCIDE=1
X86_CR3_PCID_NOFLUSH = 1 << 63  # MOV to CR3 with bit 63 set: keep the new PCID's entries

X86_CR4_PSE = 1 << 4
X86_CR4_PAE = 1 << 5
X86_CR4_PGE = 1 << 7  # global pages
X86_CR4_LA57 = 1 << 12  # 5-level paging
X86_CR4_PCIDE = 1 << 17
X86_CR4_SMEP = 1 << 20
X86_CR4_SMAP = 1 << 21
X86_CR4_PKE = 1 << 22

EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

X86_EFLAGS_AC = 1 << 18  # RFLAGS.AC: lets CPL<3 touch user pages under SMAP (STAC/CLAC)

# --- Page-fault error code (SDM 4.7; Linux trap_pf.h) -------------------------------------
X86_PF_PROT = 1 << 0  # 0: not-present page, 1: protection violation
X86_PF_WRITE = 1 << 1  # the access was a write
X86_PF_USER = 1 << 2  # the access was a user-mode (CPL 3) access
X86_PF_RSVD = 1 << 3  # a reserved bit was set in a paging-structure entry
X86_PF_INSTR = 1 << 4  # instruction fetch (reported if SMEP=1 or EFER.NXE=1)
X86_PF_PK = 1 << 5  # protection-key violation

# --- Access kinds and outcomes shared by both walk implementations ------------------------
ACCESS_READ = 0
ACCESS_WRITE = 1
ACCESS_FETCH = 2
ACCESS_KINDS = {"read": ACCESS_READ, "write": ACCESS_WRITE, "fetch": ACCESS_FETCH}
ACCESS_NAMES = {v: k for k, v in ACCESS_KINDS.items()}

OUTCOME_OK = 0
OUTCOME_PF = 1  # page fault, vector 14
OUTCOME_GP = 2  # general protection, vector 13 (non-canonical address, bad register value)


def phys_addr_mask(maxphyaddr: int) -> int:
    """Bits (MAXPHYADDR-1):12, where entries and CR3 keep a 4 KiB-aligned physical address."""
    return ((1 << maxphyaddr) - 1) & ~(PAGE_SIZE - 1)


def reserved_mask(maxphyaddr: int) -> int:
    """Bits 51:MAXPHYADDR, reserved in every paging-structure entry (SDM 4.5)."""
    return ((1 << MAX_PHYADDR_BITS) - 1) & ~((1 << maxphyaddr) - 1)


_ENTRY_FLAG_NAMES = (
    (PAGE_PRESENT, "P"),
    (PAGE_RW, "RW"),
    (PAGE_USER, "US"),
    (PAGE_PWT, "PWT"),
    (PAGE_PCD, "PCD"),
    (PAGE_ACCESSED, "A"),
    (PAGE_DIRTY, "D"),
)


def describe_entry(value: int, level: int = 1, maxphyaddr: int = MAX_PHYADDR_BITS) -> str:
    """Name the set bits of a paging-structure entry, the way a lesson prints it.

    ``level`` (1 = PTE ... 5 = PML5E) decides what bit 7 means (PAT in a PTE, PS above)
    and where a huge page's frame starts.

    >>> describe_entry(0x8000000000001067)
    'P RW US A D NX pfn=0x1'
    >>> describe_entry(0x80000e3, level=2)
    'P RW A D PS pfn=0x8000 (2 MiB page)'
    """
    value = int(value)
    if not value & PAGE_PRESENT:
        return "not present" if value == 0 else f"not present (software bits {value:#x})"
    words = [name for bit, name in _ENTRY_FLAG_NAMES if value & bit]
    leaf_huge = level in (2, 3) and value & PAGE_PSE
    if value & PAGE_PSE:
        words.append("PAT" if level == 1 else "PS")
    if value & PAGE_GLOBAL:
        words.append("G")
    if leaf_huge and value & PAGE_PAT_LARGE:
        words.append("PAT")
    pkey = (value & PKEY_MASK) >> PKEY_SHIFT
    if pkey:
        words.append(f"PKEY={pkey}")
    if value & PAGE_NX:
        words.append("NX")
    addr = value & phys_addr_mask(maxphyaddr)
    if leaf_huge:
        addr &= ~((1 << level_shift(level)) - 1)
    words.append(f"pfn={addr >> PAGE_SHIFT:#x}")
    if leaf_huge:
        words.append("(1 GiB page)" if level == 3 else "(2 MiB page)")
    return " ".join(words)


def describe_error_code(error_code: int) -> str:
    """Explain a #PF error code in words, like Linux's show_fault_oops() (fault.c).

    >>> describe_error_code(0x7)
    'user-mode write to a present page (protection violation)'
    >>> describe_error_code(0x10)
    'supervisor-mode instruction fetch from a not-present page'
    """
    who = "user-mode" if error_code & X86_PF_USER else "supervisor-mode"
    if error_code & X86_PF_INSTR:
        what = "instruction fetch from"
    elif error_code & X86_PF_WRITE:
        what = "write to"
    else:
        what = "read from"
    if not error_code & X86_PF_PROT:
        return f"{who} {what} a not-present page"
    if error_code & X86_PF_RSVD:
        why = "reserved bit set in a paging-structure entry"
    elif error_code & X86_PF_PK:
        why = "protection-key violation"
    else:
        why = "protection violation"
    return f"{who} {what} a present page ({why})"


def error_code_bits(error_code: int) -> str:
    """The #PF error code bit by bit (SDM 4.7): ``'P=1 W=1 U=1 RSVD=0 I=0 PK=0'``."""
    names = (("P", X86_PF_PROT), ("W", X86_PF_WRITE), ("U", X86_PF_USER),
             ("RSVD", X86_PF_RSVD), ("I", X86_PF_INSTR), ("PK", X86_PF_PK))
    return " ".join(f"{n}={int(bool(error_code & bit))}" for n, bit in names)


def size_name(page_size: int) -> str:
    """'4 KiB', '2 MiB' or '1 GiB'."""
    return {PAGE_SIZE: "4 KiB", PMD_SIZE: "2 MiB", PUD_SIZE: "1 GiB"}[page_size]
