"""Building x86-64 paging structures: map, unmap and protect 4 KiB, 2 MiB and 1 GiB pages.

This is what the kernel's page-table code does (arch/x86/mm, mm/memory.c), without the
policy: the caller says which flags the leaf gets. Missing tables on the way down are
allocated zeroed and linked with Linux's table protections (``_PAGE_TABLE`` for user
mappings, ``_KERNPG_TABLE`` for kernel ones), so upper levels stay permissive and the leaf
decides, as in Linux.

Every request is checked before anything is written: a misaligned address, a range already
mapped, a huge page over an existing table (or the reverse) is refused with a
:class:`~kaiser_edu.errors.MappingError` and the tables are left as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kaiser_edu.errors import KaiserEduError, MappingError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import canonicalize, check_va, is_user_half, table_index
from kaiser_edu.hw.physmem import FrameAllocator, PhysMem

_LEAF_LEVEL = {b.PAGE_SIZE: 1, b.PMD_SIZE: 2, b.PUD_SIZE: 3}


@dataclass(frozen=True)
class Entry:
    """One paging-structure entry as found by a software lookup."""

    level: int  # 1 = PTE ... 5 = PML5E
    pa: int  # physical address of the entry itself
    value: int

    @property
    def present(self) -> bool:
        return bool(self.value & b.PAGE_PRESENT)

    @property
    def is_leaf(self) -> bool:
        """A PTE, or a PDE/PDPTE with PS=1. PS in a PML4E/PML5E is reserved, not a leaf."""
        return self.present and (
            self.level == 1 or (self.level <= 3 and bool(self.value & b.PAGE_PSE))
        )

    def __str__(self) -> str:
        name = b.LEVEL_SDM_NAMES[self.level]
        return f"{name} @ {self.pa:#x} = {self.value:#018x}  {b.describe_entry(self.value, self.level)}"


class PageTables:
    """One tree of paging structures, rooted at a top-level table (the pgd).

    >>> from kaiser_edu.hw import PhysMem, FrameAllocator, bits
    >>> mem = PhysMem(); alloc = FrameAllocator(mem)
    >>> pt = PageTables(mem, alloc)
    >>> pt.map(0x400000, 0x1234000, flags=bits.PAGE_USER_EXEC)
    >>> print(pt.leaf(0x400000))
    PTE @ 0x103000 = 0x0000000001234025  P US A pfn=0x1234
    """

    def __init__(
        self,
        mem: PhysMem,
        alloc: FrameAllocator,
        *,
        levels: int = 4,
        pgd_pa: int | None = None,
    ):
        if levels not in (4, 5):
            raise MappingError(f"levels must be 4 or 5, got {levels!r}")
        self.mem = mem
        self.alloc = alloc
        self.levels = levels
        self.pgd_pa = alloc.alloc() if pgd_pa is None else pgd_pa
        self._addr_mask = b.phys_addr_mask(mem.maxphyaddr)

    def cr3(self, pcid: int = 0) -> int:
        """The CR3 value that makes this tree current (PCID in bits 11:0)."""
        if not 0 <= pcid <= b.X86_CR3_PCID_MASK:
            raise MappingError(f"pcid must be in 0..4095, got {pcid!r}")
        return self.pgd_pa | pcid

    # --- reading ---------------------------------------------------------------------------
    def entries(self, va: int) -> Iterator[Entry]:
        """The entries a walk for ``va`` reads, top level first, ignoring permissions; stops
        after a leaf or a not-present entry."""
        table = self.pgd_pa
        for level in range(self.levels, 0, -1):
            pa = table | (table_index(va, level) << 3)
            entry = Entry(level, pa, self.mem.read_qword(pa))
            yield entry
            if not entry.present or entry.is_leaf:
                return
            table = entry.value & self._addr_mask

    def leaf(self, va: int) -> Entry | None:
        """The present leaf entry mapping ``va``, or None."""
        last = list(self.entries(va))[-1]
        return last if last.is_leaf else None

    def translate(self, va: int) -> int | None:
        """Physical address for ``va`` by the tables alone (no permission checks)."""
        entry = self.leaf(va)
        if entry is None:
            return None
        size = 1 << b.level_shift(entry.level)
        return (entry.value & self._addr_mask & ~(size - 1)) | (va & (size - 1))

    # --- changing --------------------------------------------------------------------------
    def map(
        self,
        va: int,
        pa: int,
        size: int = b.PAGE_SIZE,
        flags: int = b.PAGE_SHARED,
        table_flags: int | None = None,
    ) -> None:
        """Map one page of ``size`` bytes at ``va`` to ``pa`` with leaf ``flags``.

        P is always set (and PS for 2 MiB / 1 GiB pages). ``table_flags`` is what new
        intermediate entries get; by default Linux's _PAGE_TABLE for a user page and
        _KERNPG_TABLE otherwise.
        """
        leaf_level = self._check_page(va, pa, size, flags)
        table = self._table_for(va, leaf_level, flags, table_flags, dry_run=True)
        if table is not None:
            self._check_leaf_slot(table | (table_index(va, leaf_level) << 3), leaf_level, va)
        table = self._table_for(va, leaf_level, flags, table_flags)
        value = pa | flags | b.PAGE_PRESENT | (b.PAGE_PSE if leaf_level > 1 else 0)
        self.set_entry(leaf_level, table | (table_index(va, leaf_level) << 3), value)

    def map_range(
        self,
        va: int,
        pa: int,
        n_pages: int,
        flags: int = b.PAGE_SHARED,
        table_flags: int | None = None,
    ) -> None:
        """Map ``n_pages`` consecutive 4 KiB pages from ``va`` to consecutive frames from
        ``pa``, writing each page table's entries in one vector operation (fast enough for
        a million pages)."""
        if n_pages < 1:
            raise MappingError(f"n_pages must be at least 1, got {n_pages!r}")
        self._check_page(va, pa, b.PAGE_SIZE, flags)
        last = (n_pages - 1) * b.PAGE_SIZE
        self._check_page(va + last, pa + last, b.PAGE_SIZE, flags)
        if is_user_half(va, self.levels) != is_user_half(va + last, self.levels):
            raise MappingError(f"{n_pages} pages from {va:#x} would cross the non-canonical hole")
        chunks = list(self._pt_chunks(va, n_pages))
        for chunk_va, first, count in chunks:  # check everything before writing anything
            table = self._table_for(chunk_va, 1, flags, table_flags, dry_run=True)
            if table is not None:
                if self.mem.slot(table >> b.PAGE_SHIFT) is not None:
                    existing = self.mem.frame_array(table >> b.PAGE_SHIFT)[first : first + count]
                    busy = np.flatnonzero(existing & np.uint64(b.PAGE_PRESENT))
                    if busy.size:
                        bad = chunk_va + int(busy[0]) * b.PAGE_SIZE
                        raise MappingError(f"cannot map 4 KiB page at {bad:#x}: already mapped")
        done = 0
        for chunk_va, first, count in chunks:
            table = self._table_for(chunk_va, 1, flags, table_flags)
            frames = pa + (done + np.arange(count, dtype=np.uint64)) * np.uint64(b.PAGE_SIZE)
            view = self.mem.frame_array(table >> b.PAGE_SHIFT)
            view[first : first + count] = frames | np.uint64(flags | b.PAGE_PRESENT)
            done += count

    def unmap(self, va: int) -> int:
        """Clear the leaf entry mapping ``va`` (which must be the start of its page) and
        return its old value. Tables are kept, as Linux keeps them until free_pgtables()."""
        entry = self.leaf(va)
        if entry is None:
            raise MappingError(f"cannot unmap {va:#x}: it is not mapped")
        size = 1 << b.level_shift(entry.level)
        if va & (size - 1):
            raise MappingError(
                f"cannot unmap {va:#x}: it is inside a {b.size_name(size)} page starting at "
                f"{va & ~(size - 1):#x}; unmap the whole page from its start"
            )
        self.set_entry(entry.level, entry.pa, 0)
        return entry.value

    def protect(self, va: int, set_bits: int = 0, clear_bits: int = 0) -> int:
        """Change the flag bits of the leaf mapping ``va``; returns the new entry value.

        Like mprotect() without the TLB flush: a cached translation keeps the old rights
        until INVLPG or a CR3 write invalidates it.
        """
        entry = self.leaf(va)
        if entry is None:
            raise MappingError(f"cannot protect {va:#x}: it is not mapped")
        frame_bits = self._addr_mask
        if entry.level > 1:  # bit 7 is PS there (bit 12 is PAT); in a PTE bit 7 is PAT
            frame_bits = (frame_bits & ~b.PAGE_PAT_LARGE) | b.PAGE_PSE
        if (set_bits | clear_bits) & frame_bits:
            raise MappingError(
                f"protect() changes flag bits only; {(set_bits | clear_bits) & frame_bits:#x} "
                "touches the frame address or PS"
            )
        value = (entry.value | set_bits) & ~clear_bits
        self.set_entry(entry.level, entry.pa, value)
        return value

    def set_entry(self, level: int, entry_pa: int, value: int) -> None:
        """Write one paging-structure entry. Every write of a table entry made by this class
        goes through here, so a kernel can hook its top level (Linux's native_set_p4d(),
        where pti_set_user_pgtbl() mirrors user entries into the shadow PGD)."""
        self.mem.write_qword(entry_pa, value)

    def iter_leaves(self, start: int = 0, end: int = 1 << 47,
                    leaf_mask: int = b.PAGE_PRESENT) -> Iterator[tuple[int, Entry]]:
        """Every leaf whose page starts in [start, end), as (va, Entry), in address order.
        ``start``/``end`` are lower-half offsets or canonical addresses. A PTE is reported
        if it has any bit of ``leaf_mask`` (an OS may keep a frame in a not-present PTE,
        e.g. Linux's PROT_NONE pages)."""
        yield from self._leaves(self.pgd_pa, self.levels, 0, start, end, leaf_mask)

    def _leaves(self, table: int, level: int, base: int, start: int, end: int,
                leaf_mask: int):
        span = 1 << b.level_shift(level)
        frame = self.mem.slot(table >> b.PAGE_SHIFT)
        if frame is None:
            return
        values = self.mem.frame_array(table >> b.PAGE_SHIFT).copy()
        mask = leaf_mask if level == 1 else b.PAGE_PRESENT
        for index in np.flatnonzero(values & np.uint64(mask)):
            va = base + int(index) * span
            if level == self.levels and index >= 256:
                va = canonicalize(va, self.levels)
            if va + span <= start or va >= end:
                continue
            entry = Entry(level, table | (int(index) << 3), int(values[index]))
            if entry.is_leaf or level == 1:
                if va >= start:
                    yield va, entry
            elif level > 1 and not (level >= 4 and entry.value & b.PAGE_PSE):
                yield from self._leaves(entry.value & self._addr_mask, level - 1, va, start,
                                        end, leaf_mask)

    # --- helpers ---------------------------------------------------------------------------
    def _check_page(self, va: int, pa: int, size: int, flags: int) -> int:
        if size not in _LEAF_LEVEL:
            raise MappingError(f"page size must be 4096, 2097152 or 1073741824, got {size!r}")
        try:
            check_va(va, self.levels)
        except KaiserEduError as exc:
            raise MappingError(str(exc)) from None
        if va & (size - 1):
            raise MappingError(f"virtual address {va:#x} is not aligned to {b.size_name(size)}")
        if not isinstance(pa, int) or pa < 0 or pa & (size - 1) or pa + size > 1 << self.mem.maxphyaddr:
            raise MappingError(
                f"physical address {pa!r} must be {b.size_name(size)}-aligned and below "
                f"2**{self.mem.maxphyaddr} (MAXPHYADDR)"
            )
        leaf_level = _LEAF_LEVEL[size]
        allowed_in_frame = b.PAGE_PAT_LARGE if leaf_level > 1 else 0
        forbidden = (self._addr_mask & ~allowed_in_frame) | b.reserved_mask(self.mem.maxphyaddr)
        if leaf_level > 1:
            forbidden |= b.PAGE_PSE  # set automatically
        if not isinstance(flags, int) or flags < 0 or flags >> 64 or flags & forbidden:
            raise MappingError(
                f"flags {flags!r} overlap the frame address or reserved bits ({forbidden:#x}); "
                "flags may use bits 0-11 (bit 7 is PAT in a PTE), 52-63, and bit 12 (PAT) "
                "in a huge-page entry"
            )
        return leaf_level

    def _table_for(
        self, va: int, leaf_level: int, flags: int, table_flags: int | None, dry_run: bool = False
    ) -> int | None:
        """Physical address of the table holding ``va``'s entry at ``leaf_level``, creating
        missing tables unless ``dry_run`` (then None means 'would be created')."""
        user = bool(flags & b.PAGE_USER)
        if table_flags is None:
            table_flags = b.PAGE_TABLE if user else b.KERNPG_TABLE
        table = self.pgd_pa
        for level in range(self.levels, leaf_level, -1):
            pa = table | (table_index(va, level) << 3)
            entry = self.mem.read_qword(pa)
            if not entry & b.PAGE_PRESENT:
                if dry_run:
                    return None
                new_table = self.alloc.alloc()
                self.set_entry(level, pa, new_table | table_flags)
                table = new_table
                continue
            if level < 4 and entry & b.PAGE_PSE:
                size = 1 << b.level_shift(level)
                raise MappingError(
                    f"cannot map at {va:#x}: the {b.size_name(size)} page at "
                    f"{va & ~(size - 1):#x} already covers it"
                )
            if user and not entry & b.PAGE_USER and not dry_run:
                # Upper levels must allow user access for a user leaf (U is ANDed).
                self.set_entry(level, pa, entry | b.PAGE_USER)
            table = entry & self._addr_mask
        return table

    def _check_leaf_slot(self, pa: int, level: int, va: int) -> None:
        entry = self.mem.read_qword(pa)
        if not entry & b.PAGE_PRESENT:
            return
        if level > 1 and not entry & b.PAGE_PSE:
            raise MappingError(
                f"cannot map a {b.size_name(1 << b.level_shift(level))} page at {va:#x}: "
                "smaller pages are already mapped there through a lower-level table"
            )
        raise MappingError(
            f"cannot map at {va:#x}: already mapped ({b.describe_entry(entry, level)}); "
            "unmap it first"
        )

    @staticmethod
    def _pt_chunks(va: int, n_pages: int) -> Iterator[tuple[int, int, int]]:
        """Split a run of 4 KiB pages at page-table boundaries: (va, first index, count)."""
        while n_pages:
            first = table_index(va, 1)
            count = min(n_pages, b.PTRS_PER_TABLE - first)
            yield va, first, count
            va += count * b.PAGE_SIZE
            n_pages -= count
