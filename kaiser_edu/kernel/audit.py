"""The isolation audit: what of the kernel can user mode see, and do the PTI invariants hold?

Meltdown needs only one thing from the page tables: a *translation*. A user-mode load of a
kernel address faults (U/S=0), but on a vulnerable CPU the value is forwarded to dependent
instructions before the fault is delivered, so every kernel page that has a translation in
the page tables loaded while user code runs is readable. Kernel page-table isolation
(KAISER in the 2017 series, PTI in mainline Linux: arch/x86/mm/pti.c,
Documentation/arch/x86/pti.rst) therefore gives each process a second, *user* PGD that maps
user space plus only what the entry code needs to switch CR3.

This module reads the page tables as data and answers two questions:

- :func:`mapped_ranges`: which virtual ranges does a tree translate, with the rights the
  hardware computes (U and R/W ANDed across the levels, XD ORed, G from the leaf)? Like
  Linux's page-table dump (arch/x86/mm/dump_pagetables.c) it walks table entries, not
  pages, so a 2 MiB or 1 GiB leaf is one step and a 1 GiB direct map of 4 KiB pages is 512
  vectorised page tables.
- :func:`check_isolation`: do the invariants PTI relies on hold for a PGD pair?

  (a) the user PGD maps no kernel address outside the ranges cloned on purpose
      (cpu_entry_area, entry text, espfix, the LDT slot, the per-CPU TSS, vsyscall:
      pti_clone_user_shared(), pti_clone_entry_text(), pti_setup_espfix64(),
      map_ldt_struct_to_user(), pti_setup_vsyscall());
  (b) every present user-half PGD entry with _PAGE_USER carries NX in the KERNEL copy and
      not in the user copy (__pti_set_user_pgtbl());
  (c) the user half is otherwise identical in both copies, so every lower level is shared:
      "one PTE to lock, one set of accessed bits, dirty bits" (pti.rst);
  (d) nothing in the user PGD's kernel half is user-accessible, except the vsyscall page.

  Optionally (``check_global=True``) also (e): no kernel mapping outside the cloned ranges is
  global, since a global TLB entry survives the switch to the user CR3 (pti.rst, "_PAGE_GLOBAL";
  pti_set_kernel_image_nonglobal()).

:func:`audit_report` prints both for a lesson. The audit assumes EFER.NXE=1 (as Linux sets
it on every CPU with NX): bit 63 is read as XD, not as a reserved bit. The accessed and
dirty bits of PGD entries are ignored when the two copies are compared: each copy is a
separate entry the CPU marks on its own walks, so they legitimately differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import canonicalize, table_index
from kaiser_edu.hw.physmem import QWORDS_PER_FRAME, PhysMem

HALVES = ("kernel", "user", "all")
PGD_USER_ENTRIES = 256  # KERNEL_PGD_BOUNDARY: PGD indices 0..255 map user space
MAX_TABLES = 1 << 20  # a walk that visits more tables than this is a loop in the tree

# Bits of a PGD entry that may differ between the two copies (invariant (c)): NX is what
# pti_set_user_pgtbl() adds to the kernel copy (checked by (b)); A and D are set by the CPU
# in whichever copy a walk used.
_PGD_COPY_IGNORED = b.PAGE_NX | b.PAGE_ACCESSED | b.PAGE_DIRTY

# Invariant ids, their letters and what they mean, in report order.
INVARIANTS: dict[str, tuple[str, str]] = {
    "kernel_mapped_in_user_pgd": ("a", "the user PGD maps only the allowed kernel ranges"),
    "kernel_copy_lacks_nx": ("b", "NX on the kernel copy of user PGD entries"),
    "user_copy_has_nx": ("b", "no NX added to the user copy of user PGD entries"),
    "user_half_diverges": ("c", "user half identical in both copies (lower levels shared)"),
    "user_accessible_kernel": ("d", "no user-accessible kernel pages in the user PGD"),
    "global_kernel_mapping": ("e", "no global kernel mappings outside the cloned ranges"),
    "reserved_entry": ("-", "no reserved bits set in the user PGD's tree"),
}

_U64 = np.uint64


# --- results ------------------------------------------------------------------------------
@dataclass(frozen=True)
class MappedRange:
    """A run of virtual addresses that translate with the same effective rights.

    ``start``/``end`` are canonical (``end`` exclusive; 2**64 for a range ending at the top).
    ``user``, ``writable`` and ``nx`` are what the hardware computes over the whole walk
    (SDM 4.6.1: U/S and R/W are ANDed across the levels, XD is ORed); ``global_`` is the G
    bit of the leaf entries (``global`` is a Python keyword). ``page_sizes`` lists the leaf
    sizes used, ``entries`` how many leaf entries the range spans. ``phys_start`` is where the
    first byte lands; ``phys_contiguous`` says whether the rest follows it in physical memory
    (user pages usually do not).
    """

    start: int
    end: int
    user: bool
    writable: bool
    nx: bool
    global_: bool
    page_sizes: tuple[int, ...]
    phys_start: int
    phys_contiguous: bool = True
    entries: int = 1

    @property
    def size(self) -> int:
        """Length of the range in bytes."""
        return self.end - self.start

    @property
    def page_size(self) -> int | None:
        """The leaf size if the range uses one size only, else None."""
        return self.page_sizes[0] if len(self.page_sizes) == 1 else None

    def rights(self) -> str:
        """'user RW X', 'kernel RO NX G', ...: who may access, write, execute; global."""
        words = ["user" if self.user else "kernel", "RW" if self.writable else "RO"]
        words.append("NX" if self.nx else "X")
        if self.global_:
            words.append("G")
        return " ".join(words)

    def contains(self, va: int) -> bool:
        return self.start <= va < self.end

    def describe(self) -> str:
        """One line, e.g. ``0xfffffe0000000000-0xfffffe0000200000  2 MiB  kernel RO NX G
        -> phys 0x2000000``."""
        sizes = "+".join(b.size_name(s) for s in self.page_sizes)
        if self.entries > 1 and len(self.page_sizes) == 1:
            sizes += f" x{self.entries}"
        phys = f"-> phys {self.phys_start:#x}"
        if not self.phys_contiguous:
            phys += " (scattered)"
        return f"{self.start:#018x}-{self.end:#018x}  {sizes:<12}  {self.rights():<16}{phys}"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class Anomaly:
    """A present entry the walk cannot use: a reserved bit is set (SDM 4.5, Tables
    4-14..4-19), so any access through it raises #PF with the RSVD bit in the error code.
    The addresses below it do not translate and are not reported as mapped."""

    level: int  # 5 = PML5E ... 1 = PTE
    va: int  # canonical start of the region the entry covers
    entry_pa: int
    value: int
    reason: str

    def describe(self) -> str:
        name = b.LEVEL_SDM_NAMES[self.level]
        return f"{name} @ {self.entry_pa:#x} = {self.value:#018x} for {self.va:#018x}: {self.reason}"

    def __str__(self) -> str:
        return self.describe()


class RangeList(list[MappedRange]):
    """The list :func:`mapped_ranges` returns, with the :class:`Anomaly` entries it found in
    ``.anomalies``."""

    def __init__(self, ranges: Iterable[MappedRange] = (), anomalies: Iterable[Anomaly] = ()):
        super().__init__(ranges)
        self.anomalies: list[Anomaly] = list(anomalies)

    def describe(self) -> str:
        lines = [r.describe() for r in self] + [f"anomaly: {a}" for a in self.anomalies]
        return "\n".join(lines) if lines else "(nothing mapped)"


@dataclass(frozen=True)
class Violation:
    """One broken isolation invariant.

    ``invariant`` is a key of :data:`INVARIANTS`; ``pgd_index`` the top-level slot involved;
    ``start``/``end`` the virtual range (canonical, ``end`` exclusive); ``kernel_entry`` and
    ``user_entry`` the values of that slot's PGD entry in the kernel and in the user copy;
    ``explanation`` one sentence for a student.
    """

    invariant: str
    pgd_index: int | None
    start: int | None
    end: int | None
    kernel_entry: int | None
    user_entry: int | None
    explanation: str

    @property
    def letter(self) -> str:
        """(a)...(e) as listed in the module docstring; '-' for a reserved-bit anomaly."""
        return INVARIANTS[self.invariant][0]

    def describe(self) -> str:
        where = f"PGD[{self.pgd_index}]" if self.pgd_index is not None else "PGD[?]"
        if self.start is not None and self.end is not None:
            where += f" {self.start:#018x}-{self.end:#018x}"
        vals = []
        if self.kernel_entry is not None:
            vals.append(f"kernel copy {self.kernel_entry:#018x}")
        if self.user_entry is not None:
            vals.append(f"user copy {self.user_entry:#018x}")
        head = f"({self.letter}) {self.invariant}: {where}"
        if vals:
            head += " [" + ", ".join(vals) + "]"
        return f"{head}\n    {self.explanation}"

    def __str__(self) -> str:
        return self.describe()


# --- reading tables -----------------------------------------------------------------------
def _check_table_pa(mem: PhysMem, pa: int, what: str) -> None:
    if not isinstance(pa, int) or isinstance(pa, bool):
        raise KaiserEduError(f"{what} must be an int physical address, got {pa!r}")
    if pa < 0 or pa & (b.PAGE_SIZE - 1) or pa >= 1 << mem.maxphyaddr:
        raise KaiserEduError(
            f"{what} {pa:#x} must be a 4 KiB-aligned physical address below "
            f"2**{mem.maxphyaddr} (MAXPHYADDR)"
        )


def _check_levels(levels: int) -> None:
    if levels not in (4, 5):
        raise KaiserEduError(f"levels must be 4 or 5 (5 = LA57), got {levels!r}")


def _table(mem: PhysMem, table_pa: int) -> np.ndarray | None:
    """The 512 entries of the table at ``table_pa`` as a read-only view, or None if the frame
    was never written (all zero). Never creates a frame: auditing must not change memory."""
    slot = mem.slot(table_pa >> b.PAGE_SHIFT)
    if slot is None:
        return None
    view = mem.pool[slot * QWORDS_PER_FRAME : (slot + 1) * QWORDS_PER_FRAME]
    view = view.view()
    view.flags.writeable = False
    return view


def _pgd_entries(mem: PhysMem, pgd_pa: int) -> list[int]:
    table = _table(mem, pgd_pa)
    return [0] * b.PTRS_PER_TABLE if table is None else [int(v) for v in table]


class _Walker:
    """Depth-first walk of one tree collecting leaf runs (vectorised per table)."""

    def __init__(self, mem: PhysMem, levels: int, max_tables: int):
        self.mem = mem
        self.levels = levels
        self.max_tables = max_tables
        self.tables = 0
        self.path: list[int] = []  # the tables above the current one (loop detection)
        self.addr_mask = b.phys_addr_mask(mem.maxphyaddr)
        self.reserved = b.reserved_mask(mem.maxphyaddr)
        # (start, end, key, size, phys_start, contiguous, entries); key = U | W<<1 | NX<<2 | G<<3
        self.runs: list[tuple[int, int, int, int, int, bool, int]] = []
        self.anomalies: list[Anomaly] = []

    def walk(self, table_pa: int, level: int, base: int, key_in: int, lo: int, hi: int) -> None:
        """Visit entries lo..hi-1 of the table at ``table_pa`` (of ``level``), which maps
        linear (not yet canonical) addresses from ``base``. ``key_in`` carries the rights
        combined so far: U and W bits cleared by an upper level stay cleared, NX stays set."""
        self.tables += 1
        if self.tables > self.max_tables:
            raise KaiserEduError(
                f"the tree has more than {self.max_tables} tables (max_tables): a table entry "
                "probably points back up the tree (a loop); the audit refuses to walk it"
            )
        if table_pa in self.path:
            raise KaiserEduError(
                f"the table at {table_pa:#x} is reached again below itself (a loop, or a "
                "recursive self-map, which Linux never builds); the audit refuses to walk it"
            )
        self.path.append(table_pa)
        try:
            self._walk_table(table_pa, level, base, key_in, lo, hi)
        finally:
            self.path.pop()

    def _walk_table(self, table_pa: int, level: int, base: int, key_in: int, lo: int,
                    hi: int) -> None:
        table = _table(self.mem, table_pa)
        if table is None:
            return
        idx = np.flatnonzero(table[lo:hi] & _U64(b.PAGE_PRESENT)) + lo
        if idx.size == 0:
            return
        vals = table[idx]
        shift = b.level_shift(level)
        ps = (vals & _U64(b.PAGE_PSE)) != 0
        reserved = (vals & _U64(self.reserved)) != 0
        if level == 1:
            leaf = np.ones(idx.size, dtype=bool)
        elif level <= 3:
            leaf = ps
            huge_rsvd = ((1 << shift) - 1) & ~((1 << 13) - 1)  # bits 20:13 / 29:13 of a leaf
            reserved |= ps & ((vals & _U64(huge_rsvd)) != 0)
        else:
            leaf = np.zeros(idx.size, dtype=bool)
            reserved |= ps  # no 512 GiB pages: PS is reserved in a PML4E/PML5E
        for i in np.flatnonzero(reserved):
            self._anomaly(level, base, int(idx[i]), table_pa, int(vals[i]), bool(ps[i]))
        good = ~reserved
        leaf_sel = good & leaf
        if leaf_sel.any():
            self._leaf_runs(idx[leaf_sel], vals[leaf_sel], level, base, key_in)
        for i in np.flatnonzero(good & ~leaf):
            value = int(vals[i])
            key = key_in
            if not value & b.PAGE_USER:
                key &= ~1
            if not value & b.PAGE_RW:
                key &= ~2
            if value & b.PAGE_NX:
                key |= 4
            child_base = base + (int(idx[i]) << shift)
            self.walk(value & self.addr_mask, level - 1, child_base, key, 0, b.PTRS_PER_TABLE)

    def _leaf_runs(
        self, idx: np.ndarray, vals: np.ndarray, level: int, base: int, key_in: int
    ) -> None:
        """Turn the leaf entries of one table into runs of equal rights (numpy over the
        table), breaking where an index is skipped or the rights change."""
        shift = b.level_shift(level)
        size = 1 << shift
        user = ((vals & _U64(b.PAGE_USER)) != 0) & bool(key_in & 1)
        rw = ((vals & _U64(b.PAGE_RW)) != 0) & bool(key_in & 2)
        nx = ((vals & _U64(b.PAGE_NX)) != 0) | bool(key_in & 4)
        glob = (vals & _U64(b.PAGE_GLOBAL)) != 0
        key = (user.astype(np.int8) | rw.astype(np.int8) << 1 | nx.astype(np.int8) << 2
               | glob.astype(np.int8) << 3)
        phys = vals & _U64(self.addr_mask & ~(size - 1))  # drops PAT (bit 12) of a huge leaf
        n = idx.size
        brk = np.ones(n, dtype=bool)
        brk[1:] = (np.diff(idx) != 1) | (key[1:] != key[:-1])
        phys_brk = np.zeros(n, dtype=np.int64)
        phys_brk[1:] = phys[1:] != phys[:-1] + _U64(size)
        starts = np.flatnonzero(brk)
        phys_brk[starts] = 0
        scattered = np.add.reduceat(phys_brk, starts)
        ends = np.append(starts[1:], n)
        for s, e, sc in zip(starts.tolist(), ends.tolist(), scattered.tolist()):
            linear = base + (int(idx[s]) << shift)
            start = canonicalize(linear, self.levels)
            count = e - s
            self.runs.append(
                (start, start + count * size, int(key[s]), size, int(phys[s]), sc == 0, count)
            )

    def _anomaly(self, level: int, base: int, index: int, table_pa: int, value: int,
                 ps: bool) -> None:
        va = canonicalize(base + (index << b.level_shift(level)), self.levels)
        name = b.LEVEL_SDM_NAMES[level]
        if level >= 4 and ps:
            reason = (f"PS is set in a {name}: reserved (there are no 512 GiB pages), so every "
                      "walk through it faults with RSVD=1")
        else:
            reason = ("a reserved bit is set (bits 51:MAXPHYADDR, or bits 20:13 / 29:13 of a huge "
                      "leaf), so every walk through it faults with RSVD=1")
        self.anomalies.append(Anomaly(level, va, table_pa | (index << 3), value, reason))

    def merged(self) -> list[MappedRange]:
        """Sort the runs by address and merge neighbours with the same rights."""
        out: list[MappedRange] = []
        for start, end, key, size, phys, contiguous, count in sorted(self.runs):
            r = MappedRange(start, end, bool(key & 1), bool(key & 2), bool(key & 4),
                            bool(key & 8), (size,), phys, contiguous, count)
            if out and out[-1].end == start and _key(out[-1]) == key:
                prev = out[-1]
                out[-1] = replace(
                    prev,
                    end=end,
                    page_sizes=tuple(sorted(set(prev.page_sizes) | {size})),
                    phys_contiguous=(prev.phys_contiguous and contiguous
                                     and phys == prev.phys_start + prev.size),
                    entries=prev.entries + count,
                )
            else:
                out.append(r)
        return out


def _key(r: MappedRange) -> int:
    return int(r.user) | int(r.writable) << 1 | int(r.nx) << 2 | int(r.global_) << 3


def mapped_ranges(
    mem: PhysMem, pgd_pa: int, levels: int = 4, half: str = "kernel", *,
    max_tables: int = MAX_TABLES,
) -> RangeList:
    """Every virtual range the tree rooted at ``pgd_pa`` translates, merged.

    ``half`` picks the top-level entries walked: "user" (0-255), "kernel" (256-511) or
    "all". Neighbouring ranges are merged when they have the same effective rights (U, W,
    NX, G), whatever their page size or physical placement (see
    :attr:`MappedRange.phys_contiguous`). Present entries with a reserved bit set (including
    PS in a PML4E) are not mappings: they are listed in ``.anomalies`` of the result.

    The walk reads table entries, never individual pages, and never writes memory.

    >>> from kaiser_edu.hw import FrameAllocator, PageTables, PhysMem, bits
    >>> mem = PhysMem(); alloc = FrameAllocator(mem)
    >>> pt = PageTables(mem, alloc)
    >>> pt.map_range(0xffff888000000000, 0, 16, flags=bits.PAGE_KERNEL)
    >>> pt.map(0xffff888000010000, 0x10000, flags=bits.PAGE_KERNEL_RO)
    >>> for r in mapped_ranges(mem, pt.pgd_pa):
    ...     print(r)
    0xffff888000000000-0xffff888000010000  4 KiB x16     kernel RW NX G  -> phys 0x0
    0xffff888000010000-0xffff888000011000  4 KiB         kernel RO NX G  -> phys 0x10000
    """
    _check_levels(levels)
    _check_table_pa(mem, pgd_pa, "pgd_pa")
    if half not in HALVES:
        raise KaiserEduError(f"half must be one of {', '.join(HALVES)}; got {half!r}")
    lo, hi = {"user": (0, 256), "kernel": (256, 512), "all": (0, 512)}[half]
    walker = _Walker(mem, levels, max_tables)
    walker.walk(pgd_pa, levels, 0, 0b011, lo, hi)  # start: U and W allowed, NX clear, G n/a
    return RangeList(walker.merged(), walker.anomalies)


def translate(mem: PhysMem, pgd_pa: int, va: int, levels: int = 4) -> int | None:
    """Physical address of ``va`` by the tables alone (no rights, no A/D), or None."""
    addr_mask = b.phys_addr_mask(mem.maxphyaddr)
    table = pgd_pa
    for level in range(levels, 0, -1):
        entry = mem.read_qword(table | (table_index(va, level) << 3))
        if not entry & b.PAGE_PRESENT:
            return None
        if level == 1 or (level <= 3 and entry & b.PAGE_PSE):
            size = 1 << b.level_shift(level)
            return (entry & addr_mask & ~(size - 1)) | (va & (size - 1))
        if level >= 4 and entry & b.PAGE_PSE:
            return None
        table = entry & addr_mask
    return None


# --- allowed ranges -----------------------------------------------------------------------
def normalize_allowed(
    allowed: Iterable[Sequence[int | str]] | None,
) -> list[tuple[int, int, str]]:
    """Check and sort the allowed ranges. Each is ``(start, end, name)`` with ``end``
    exclusive; ``(name, start, end)`` as in :meth:`KernelLayout.regions` is accepted too."""
    out: list[tuple[int, int, str]] = []
    for item in allowed or ():
        if len(item) != 3:
            raise KaiserEduError(f"an allowed range is (start, end, name); got {item!r}")
        if isinstance(item[0], str):
            name, start, end = item
        else:
            start, end, name = item
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(name, str)):
            raise KaiserEduError(f"an allowed range is (start: int, end: int, name: str); "
                                 f"got {item!r}")
        if not 0 <= start < end <= 1 << 64:
            raise KaiserEduError(
                f"allowed range {name!r} needs 0 <= start < end <= 2**64 (end exclusive); got "
                f"{start:#x}-{end:#x}"
            )
        out.append((start, end, name))
    return sorted(out)


def split_by_allowed(
    start: int, end: int, allowed: list[tuple[int, int, str]]
) -> list[tuple[int, int, str | None]]:
    """Cut [start, end) at the allowed ranges' edges: pieces with the name of the allowed
    range that covers them, or None for pieces no allowed range covers."""
    pieces: list[tuple[int, int, str | None]] = []
    pos = start
    for a_start, a_end, name in allowed:
        if a_end <= pos or a_start >= end:
            continue
        if a_start > pos:
            pieces.append((pos, a_start, None))
            pos = a_start
        stop = min(end, a_end)
        if stop > pos:
            pieces.append((pos, stop, name))
            pos = stop
        if pos >= end:
            break
    if pos < end:
        pieces.append((pos, end, None))
    return pieces


def _is_vsyscall(name: str | None) -> bool:
    return name is not None and "vsyscall" in name.lower()


def kernel_visible_ranges(
    mem: PhysMem, user_pgd_pa: int, allowed: Iterable[Sequence[int | str]] | None = None,
    levels: int = 4,
) -> list[tuple[MappedRange, str | None]]:
    """What of the kernel half has a translation in the user PGD: every mapped range, cut at
    the allowed ranges' edges, with the allowed range's name or None (not allowed).

    This is the data a lesson draws: everything here is reachable by Meltdown while user code
    runs on this PGD (and the ``user`` ones even by plain loads)."""
    allowed_n = normalize_allowed(allowed)
    out: list[tuple[MappedRange, str | None]] = []
    for r in mapped_ranges(mem, user_pgd_pa, levels, "kernel"):
        for s, e, name in split_by_allowed(r.start, r.end, allowed_n):
            out.append((_piece(mem, user_pgd_pa, levels, r, s, e), name))
    return out


def _piece(mem: PhysMem, pgd_pa: int, levels: int, r: MappedRange, s: int, e: int) -> MappedRange:
    if s == r.start and e == r.end:
        return r
    if r.phys_contiguous:
        phys = r.phys_start + (s - r.start)
    else:
        phys = translate(mem, pgd_pa, s, levels)
        phys = r.phys_start if phys is None else phys
    small = min(r.page_sizes)
    return replace(r, start=s, end=e, phys_start=phys, entries=max(1, (e - s) // small))


# --- the invariants -----------------------------------------------------------------------
def _flag_names(bits_: int) -> str:
    names = [(b.PAGE_PRESENT, "P"), (b.PAGE_RW, "RW"), (b.PAGE_USER, "US"), (b.PAGE_PWT, "PWT"),
             (b.PAGE_PCD, "PCD"), (b.PAGE_PSE, "PS"), (b.PAGE_GLOBAL, "G")]
    found = [n for bit, n in names if bits_ & bit]
    rest = bits_ & ~sum(bit for bit, _ in names)
    if rest:
        found.append(f"{rest:#x}")
    return " ".join(found)


def _check_pgd_pair(k_pgd: list[int], u_pgd: list[int], levels: int,
                    kernel_copy: str = "nx") -> list[Violation]:
    """Invariants (b) and (c): the user half of the two PGD copies, entry by entry.
    ``kernel_copy`` says how the kernel copy of a user entry is marked: "nx" (PTI,
    Hansen's KAISER: _PAGE_NX added) or "no-user" (the Graz KAISER patch: _PAGE_USER
    cleared)."""
    if kernel_copy not in ("nx", "no-user"):
        raise KaiserEduError(f"kernel_copy must be 'nx' or 'no-user', got {kernel_copy!r}")
    graz = kernel_copy == "no-user"
    ignored = _PGD_COPY_IGNORED | (b.PAGE_USER if graz else 0)
    out: list[Violation] = []
    slot = 1 << b.level_shift(levels)
    addr_mask = b.phys_addr_mask(b.MAX_PHYADDR_BITS)
    for i in range(PGD_USER_ENTRIES):
        k, u = k_pgd[i], u_pgd[i]
        k_p, u_p = bool(k & b.PAGE_PRESENT), bool(u & b.PAGE_PRESENT)
        if not (k_p or u_p):
            continue
        start, end = i * slot, (i + 1) * slot

        def v(inv: str, text: str, k: int = k, u: int = u, s: int = start, e: int = end,
              i: int = i) -> Violation:
            return Violation(inv, i, s, e, k, u, text)

        if graz:
            if k_p and k & b.PAGE_USER:
                out.append(v("kernel_copy_lacks_nx",
                             "kernel copy of a user PGD entry keeps _PAGE_USER: the Graz "
                             "KAISER patch clears it there (pgd.pgd & ~_PAGE_USER), so that "
                             "user code running on the kernel's tables faults at once."))
        elif k_p and k & b.PAGE_USER and not k & b.PAGE_NX:
            out.append(v("kernel_copy_lacks_nx",
                         "kernel copy of a user PGD entry lacks NX: a missed switch back to the "
                         "user CR3 would run user code with the kernel's tables, which map all "
                         "of kernel memory (pti_set_user_pgtbl() sets _PAGE_NX here so the "
                         "first user instruction faults instead)."))
        if u_p and u & b.PAGE_USER and u & b.PAGE_NX:
            out.append(v("user_copy_has_nx",
                         "user copy of a user PGD entry carries NX: pti_set_user_pgtbl() stores "
                         "the unmodified value there, and with NX every user instruction fetch "
                         "in this 512 GiB slot would fault."))
        if k_p and not u_p:
            out.append(v("user_half_diverges",
                         "entry present only in the kernel copy: user memory mapped in this "
                         "slot disappears whenever user code runs on the user CR3 (the write "
                         "bypassed pti_set_user_pgtbl())."))
        elif u_p and not k_p:
            out.append(v("user_half_diverges",
                         "entry present only in the user copy: user code can reach memory that "
                         "the kernel's own page tables no longer map (a stale or forged shadow "
                         "entry)."))
        elif (k ^ u) & addr_mask:
            out.append(v("user_half_diverges",
                         f"the copies point to different next-level tables ({k & addr_mask:#x} "
                         f"vs {u & addr_mask:#x}): lower levels are no longer shared, so there "
                         "are two PTEs to update and two sets of accessed/dirty bits, and a "
                         "change made through one copy is invisible through the other."))
        elif (k ^ u) & ~ignored:
            diff = _flag_names((k ^ u) & ~ignored & ~addr_mask)
            only = "US" if graz else "NX"
            out.append(v("user_half_diverges",
                         f"the copies differ in flag bits {diff} (only {only} may differ): the same "
                         "user address gets different rights depending on which CR3 is "
                         "loaded."))
    return out


def check_isolation(
    mem: PhysMem,
    kernel_pgd_pa: int,
    user_pgd_pa: int,
    allowed: Iterable[Sequence[int | str]] | None,
    levels: int = 4,
    *,
    check_global: bool = False,
    kernel_copy: str = "nx",
) -> list[Violation]:
    """Check the PTI invariants (a)-(d) (and (e) with ``check_global``) for one PGD pair.

    ``kernel_copy`` is how the kernel copy of a user PGD entry is expected to differ from
    the user copy: "nx" (Linux PTI, Hansen's KAISER) or "no-user" (the Graz KAISER patch,
    ``Isolation.kernel_copy_marking``).

    ``allowed`` lists the kernel ranges the user PGD may map, as ``(start, end, name)``
    (end exclusive), e.g. ``(0xfffffe0000000000, 0xffffff0000000000, "cpu_entry_area")``.
    A range whose name contains "vsyscall" may also be user-accessible (invariant (d):
    pti_setup_vsyscall() sets _PAGE_USER on the path to the legacy vsyscall page).

    Returns the violations, empty when isolation is intact. Entries of the user tree with a
    reserved bit set are reported too (invariant id ``reserved_entry``).

    The PGDs need not be an 8 KiB pair: the 2017 KAISER series kept the shadow in the same
    order-1 block, but the check only compares the two tables.
    """
    _check_levels(levels)
    _check_table_pa(mem, kernel_pgd_pa, "kernel_pgd_pa")
    _check_table_pa(mem, user_pgd_pa, "user_pgd_pa")
    allowed_n = normalize_allowed(allowed)
    k_pgd = _pgd_entries(mem, kernel_pgd_pa)
    u_pgd = _pgd_entries(mem, user_pgd_pa)
    violations = _check_pgd_pair(k_pgd, u_pgd, levels, kernel_copy)

    def slot_v(inv: str, s: int, e: int, text: str) -> Violation:
        i = table_index(s, levels)
        return Violation(inv, i, s, e, k_pgd[i], u_pgd[i], text)

    user_tree = mapped_ranges(mem, user_pgd_pa, levels, "kernel")
    for r in user_tree:
        for s, e, name in split_by_allowed(r.start, r.end, allowed_n):
            if name is None:
                violations.append(slot_v(
                    "kernel_mapped_in_user_pgd", s, e,
                    f"the user (shadow) PGD translates kernel memory outside every allowed "
                    f"range ({r.rights()}): while user code runs it has a translation, so a "
                    "Meltdown load can read it."))
            if r.user and not _is_vsyscall(name):
                violations.append(slot_v(
                    "user_accessible_kernel", s, e,
                    "kernel-half memory is user-accessible (U=1 at every level) in the user "
                    "PGD: user code can read it with a plain load, no side channel needed."))
    for a in user_tree.anomalies:
        violations.append(slot_v(
            "reserved_entry", a.va, a.va + (1 << b.level_shift(a.level)),
            f"{b.LEVEL_SDM_NAMES[a.level]} @ {a.entry_pa:#x} = {a.value:#x} in the user PGD's "
            f"tree: {a.reason}."))
    if check_global:
        for r in mapped_ranges(mem, kernel_pgd_pa, levels, "kernel"):
            if not r.global_:
                continue
            for s, e, name in split_by_allowed(r.start, r.end, allowed_n):
                if name is None:
                    violations.append(slot_v(
                        "global_kernel_mapping", s, e,
                        "kernel mapping is global (G=1) but not cloned into the user PGD: its "
                        "TLB entries survive the switch to the user CR3, so it stays "
                        "translatable from user mode (PTI clears _PAGE_GLOBAL on such "
                        "mappings)."))
    order = list(INVARIANTS)
    violations.sort(key=lambda v: (order.index(v.invariant), v.start if v.start is not None
                                   else -1))
    return violations


# --- the report ---------------------------------------------------------------------------
def _human(nbytes: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            value = nbytes / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{nbytes} B"


def audit_report(
    mem: PhysMem,
    kernel_pgd_pa: int,
    user_pgd_pa: int,
    allowed: Iterable[Sequence[int | str]] | None,
    levels: int = 4,
    *,
    check_global: bool = False,
    max_user_lines: int = 12,
    kernel_copy: str = "nx",
) -> str:
    """A readable summary for a lesson: the kernel ranges visible from user mode (named by
    the allowed range they fall in), the user half, and every invariant with its verdict."""
    allowed_n = normalize_allowed(allowed)
    violations = check_isolation(mem, kernel_pgd_pa, user_pgd_pa, allowed_n, levels,
                                 check_global=check_global, kernel_copy=kernel_copy)
    lines = [f"Isolation audit: kernel PGD {kernel_pgd_pa:#x}, user PGD {user_pgd_pa:#x} "
             f"({levels}-level paging)", ""]
    visible = kernel_visible_ranges(mem, user_pgd_pa, allowed_n, levels)
    lines.append("Kernel memory with a translation in the user PGD (what Meltdown could reach "
                 "while user code runs):")
    if not visible:
        lines.append("  (none)")
    outside = 0
    for r, name in visible:
        label = f"[{name}]" if name is not None else "[NOT ALLOWED]"
        outside += name is None
        lines.append(f"  {r.describe()}  {label}")
    total = sum(r.size for r, _ in visible)
    if visible:
        lines.append(f"  total {_human(total)} in {len(visible)} range(s), {outside} outside the "
                     "allowed ranges")
    lines.append("")
    user = mapped_ranges(mem, user_pgd_pa, levels, "user")
    lines.append(f"User half of the user PGD (shared with the kernel copy when (c) holds): "
                 f"{len(user)} range(s), {_human(sum(r.size for r in user))}")
    for r in user[:max_user_lines]:
        lines.append(f"  {r.describe()}")
    if len(user) > max_user_lines:
        lines.append(f"  ... {len(user) - max_user_lines} more")
    lines.append("")
    lines.append("Invariants:")
    shown = [inv for inv in INVARIANTS if inv != "global_kernel_mapping" or check_global]
    for inv in shown:
        letter, text = INVARIANTS[inv]
        n = sum(v.invariant == inv for v in violations)
        verdict = "ok" if n == 0 else f"{n} violation(s)"
        lines.append(f"  ({letter}) {text:<58} {verdict}")
    if violations:
        lines.append("")
        lines.append("Violations:")
        for v in violations:
            lines.append("  " + v.describe().replace("\n", "\n  "))
    else:
        lines.append("")
        lines.append("Isolation holds: user mode sees only the allowed kernel ranges.")
    return "\n".join(lines)


__all__ = [
    "INVARIANTS", "Anomaly", "MappedRange", "RangeList", "Violation", "audit_report",
    "check_isolation", "kernel_visible_ranges", "mapped_ranges", "normalize_allowed",
    "split_by_allowed", "translate",
]
