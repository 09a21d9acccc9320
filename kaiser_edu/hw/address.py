"""Linear (virtual) addresses: canonical form and the split into table indices.

With 4-level paging a linear address has 48 meaningful bits; bits 63:47 must all equal bit
47 ("canonical"), which leaves two halves: 0 .. 0x00007fffffffffff (user space under Linux)
and 0xffff800000000000 .. 0xffffffffffffffff (the kernel). With 5-level paging (CR4.LA57)
the boundary moves to bit 56. A non-canonical access raises #GP, not #PF
(SDM 3A 3.3.7.1; sandpile.org can_addr).
"""

from __future__ import annotations

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b

U64_MASK = (1 << 64) - 1


def va_bits(levels: int) -> int:
    """Meaningful linear-address bits: 48 with 4 levels, 57 with 5."""
    return 12 + 9 * levels


def is_canonical(va: int, levels: int = 4) -> bool:
    """True if bits 63:(N-1) are all equal, N = 48 or 57 (SDM 3.3.7.1)."""
    top = va >> (va_bits(levels) - 1)
    return top == 0 or top == U64_MASK >> (va_bits(levels) - 1)


def is_user_half(va: int, levels: int = 4) -> bool:
    """A canonical address in the lower half, where Linux puts user space."""
    return va >> (va_bits(levels) - 1) == 0


def canonicalize(va: int, levels: int = 4) -> int:
    """Sign-extend bit N-1 into bits 63:N (what hardware requires of every address)."""
    n = va_bits(levels)
    va &= (1 << n) - 1
    return va | (U64_MASK & ~((1 << n) - 1)) if va >> (n - 1) else va


def table_index(va: int, level: int) -> int:
    """The 9-bit index of ``va`` in the table of ``level`` (1 = PT ... 5 = PML5)."""
    return (va >> b.level_shift(level)) & 0x1FF


def split(va: int, levels: int = 4) -> dict[str, int]:
    """The fields of a linear address, top level first, keyed by the SDM table names.

    >>> split(0x00007F0000001234)
    {'PML4': 254, 'PDPT': 0, 'PD': 0, 'PT': 1, 'offset': 564}
    """
    names = {5: "PML5", 4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}
    fields = {names[lvl]: table_index(va, lvl) for lvl in range(levels, 0, -1)}
    fields["offset"] = va & (b.PAGE_SIZE - 1)
    return fields


def check_va(va: int, levels: int, what: str = "virtual address") -> None:
    """Raise a clear error unless ``va`` is a canonical 64-bit address."""
    if not isinstance(va, int) or not 0 <= va <= U64_MASK:
        raise KaiserEduError(f"{what} must be an integer in [0, 2**64), got {va!r}")
    if not is_canonical(va, levels):
        n = va_bits(levels)
        raise KaiserEduError(
            f"{what} {va:#x} is not canonical for {levels}-level paging: bits 63:{n - 1} must "
            f"all equal bit {n - 1} (allowed: 0 to {(1 << (n - 1)) - 1:#x} and "
            f"{canonicalize(1 << (n - 1), levels):#x} to {U64_MASK:#x})"
        )
