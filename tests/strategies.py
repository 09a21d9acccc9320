"""Hypothesis strategies for random machines: page tables, registers and traces.

A :class:`Machine` is a *description* (the physical memory as {address: qword}, the roots,
the registers), so one drawn machine can be built any number of times into identical
:class:`PhysMem` copies, one per engine under test. The tables are written with raw qwords,
not through :class:`PageTables`, so that they contain what a buggy or hostile kernel could
write: every flag bit at every level, PS in a PML4E/PML5E, reserved physical-address bits
above a random MAXPHYADDR, bits 20:13 (29:13) of a 2 MiB (1 GiB) leaf, XD with EFER.NXE=0,
protection keys, global leaves, subtrees shared between roots and links that loop back to an
ancestor table (a "recursive" mapping).

Rare events are drawn as "percent" draws that shrink towards the common case, so a
falsifying example shrinks to a plain, present, permissive entry unless the oddity matters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import canonicalize, va_bits
from kaiser_edu.hw.mmu import OPS, Trace
from kaiser_edu.hw.physmem import PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.hw.walk import walk

PCIDS = (0, 1, 2, 0xFFF)  # a few PCIDs, so that ops often name the same one
LEAF_SIZES = {1: b.PAGE_SIZE, 2: b.PMD_SIZE, 3: b.PUD_SIZE}


def chance(draw, percent: int) -> bool:
    """True with about ``percent``% probability; shrinks to False."""
    return draw(st.integers(0, 99)) >= 100 - percent


@dataclass(frozen=True)
class Page:
    """Where the builder wrote a leaf: a good target for accesses."""

    va: int
    size: int

    def __repr__(self) -> str:
        return f"Page({self.va:#x}, {b.size_name(self.size)!r})"

    def _repr_pretty_(self, p, cycle) -> None:  # how hypothesis prints examples
        p.text(repr(self))


@dataclass
class Machine:
    """Physical memory, page-table roots and registers of one random machine."""

    levels: int
    maxphyaddr: int
    qwords: dict[int, int]
    roots: tuple[int, ...]
    tables: tuple[int, ...]
    pages: tuple[Page, ...]
    regs: Registers = field(repr=False)
    good: tuple[Page, ...] = ()  # the pages a supervisor read translates at the start
    asids: tuple[int, ...] = ()  # a PCID for each root, if the machine's OS keeps to one

    def build(self) -> PhysMem:
        """A fresh physical memory holding this machine's tables."""
        mem = PhysMem(self.maxphyaddr)
        for pa, value in self.qwords.items():
            mem.write_qword(pa, value)
        return mem

    def __repr__(self) -> str:
        q = ", ".join(f"{pa:#x}: {v:#018x}" for pa, v in sorted(self.qwords.items()))
        r = self.regs
        return (
            f"Machine(levels={self.levels}, maxphyaddr={self.maxphyaddr}, "
            f"roots={[hex(x) for x in self.roots]}, pages={list(self.pages)}, "
            f"regs=Registers(cr0={r.cr0:#x}, cr3={r.cr3:#x}, cr4={r.cr4:#x}, "
            f"efer={r.efer:#x}, pkru={r.pkru:#x}, maxphyaddr={r.maxphyaddr}), "
            f"qwords={{{q}}})"
        )

    def _repr_pretty_(self, p, cycle) -> None:  # how hypothesis prints examples
        p.text(repr(self))


def clone_mem(mem: PhysMem) -> PhysMem:
    """An identical copy of ``mem``, by replaying its non-zero qwords."""
    copy = PhysMem(mem.maxphyaddr)
    for pa, value in mem.nonzero_qwords().items():
        copy.write_qword(pa, value)
    return copy


# --- page-table entries ------------------------------------------------------------------
@dataclass(frozen=True)
class Oddness:
    """How often a machine's entries deny or break things, in percent per entry: some
    machines are tidy (most accesses succeed and the TLB fills), some are hostile."""

    absent: int  # P=0
    deny: int  # R/W=0, U/S=0, XD=1 (each)
    broken: int  # a reserved bit set: above MAXPHYADDR, PS in a PML4E, 20:13 of a 2M leaf


ODDNESS = st.sampled_from([Oddness(1, 5, 0), Oddness(4, 15, 2), Oddness(10, 30, 8)])


def entry_value(draw, *, level: int, leaf: bool, target: int, maxphyaddr: int,
                odd: Oddness) -> int:
    """A paging-structure entry pointing at ``target`` (a table, or the page of a leaf)."""
    v = target
    if not chance(draw, odd.absent):
        v |= b.PAGE_PRESENT
    if not chance(draw, odd.deny):
        v |= b.PAGE_RW
    if not chance(draw, odd.deny):
        v |= b.PAGE_USER
    for bit in (b.PAGE_PWT, b.PAGE_PCD, b.PAGE_ACCESSED, b.PAGE_DIRTY):
        if draw(st.booleans()):
            v |= bit
    if chance(draw, odd.deny):
        v |= b.PAGE_NX
    if leaf:
        if level > 1:
            v |= b.PAGE_PSE
        if chance(draw, 30):
            v |= b.PAGE_GLOBAL
        if chance(draw, 20):
            v |= b.PAGE_PAT if level == 1 else b.PAGE_PAT_LARGE
        if chance(draw, 30):
            v |= draw(st.integers(1, 15)) << b.PKEY_SHIFT
        if level > 1 and chance(draw, odd.broken):  # bits 20:13 (2 MiB) or 29:13 (1 GiB)
            v |= 1 << draw(st.integers(13, b.level_shift(level) - 1))
    else:
        if level >= 4 and chance(draw, odd.broken):
            v |= b.PAGE_PSE  # reserved: there are no 512 GiB pages
        if chance(draw, 10):  # G and the key bits are ignored in table entries
            v |= b.PAGE_GLOBAL | draw(st.integers(0, 15)) << b.PKEY_SHIFT
    if chance(draw, 15):  # software-available bits 11:9 and 58:52
        v |= draw(st.integers(0, 7)) << 9 | draw(st.integers(0, 127)) << 52
    if maxphyaddr < b.MAX_PHYADDR_BITS and chance(draw, odd.broken):
        v |= 1 << draw(st.integers(maxphyaddr, b.MAX_PHYADDR_BITS - 1))  # reserved
    return v


INDEX = st.one_of(st.sampled_from([0, 1, 511, 256, 255]), st.integers(0, 511))


@st.composite
def machines(draw, max_pages: int = 8, max_roots: int = 3) -> Machine:
    """A random machine: 1-3 page-table trees with up to ``max_pages`` leaves (and
    sometimes a recursive slot), and registers with a random mix of WP, SMEP, SMAP, NXE, PKE/PKRU, PGE and PCIDE."""
    levels = draw(st.sampled_from([4, 5]))
    maxphy = draw(st.integers(36, 52))
    odd = draw(ODDNESS)
    addr_mask = b.phys_addr_mask(maxphy)
    qwords: dict[int, int] = {}
    tables: list[int] = []

    def new_table() -> int:
        tables.append((len(tables) + 1) << b.PAGE_SHIFT)
        return tables[-1]

    roots = [new_table() for _ in range(draw(st.integers(1, max_roots)))]
    pages = []
    for _ in range(draw(st.integers(1, max_pages))):
        table = draw(st.sampled_from(roots)) if chance(draw, 35) else roots[0]  # CR3's
        leaf_level = draw(st.sampled_from([1, 2, 3]))
        index: dict[int, int] = {}
        for lvl in range(levels, leaf_level - 1, -1):  # often the index of the level above,
            repeat = lvl + 1 in index and chance(draw, 30)  # to meet looping links
            index[lvl] = index[lvl + 1] if repeat else draw(INDEX)
        va = canonicalize(sum(i << b.level_shift(lvl) for lvl, i in index.items()), levels)
        for level in range(levels, leaf_level, -1):
            slot = table | index[level] << 3
            cur = qwords.get(slot, 0)
            is_link = cur & b.PAGE_PRESENT and not (level <= 3 and cur & b.PAGE_PSE)
            if is_link and (cur & addr_mask) in tables and not chance(draw, 10):
                table = cur & addr_mask  # follow the existing link
                continue
            link = draw(st.integers(0, 19))  # a new table, or (rarely) an existing one:
            if link == 19:
                target = table  # this very table (a "recursive" self-map)
            elif link >= 16:
                target = draw(st.sampled_from(tables))  # a shared subtree, or a loop
            else:
                target = new_table()
            qwords[slot] = entry_value(draw, level=level, leaf=False, target=target,
                                       maxphyaddr=maxphy, odd=odd)
            table = target
        size = LEAF_SIZES[leaf_level]
        frame = draw(st.integers(0, (1 << maxphy) - 1)) & ~(size - 1)
        qwords[table | index[leaf_level] << 3] = entry_value(
            draw, level=leaf_level, leaf=True, target=frame, maxphyaddr=maxphy, odd=odd)
        pages.append(Page(va, size))
    if chance(draw, 25):
        # A recursive slot, as Windows and some hobby kernels use: roots[0][k] points at
        # roots[0] itself, so that the tables appear as pages. The address with index k at
        # every level maps the top table as a 4 KiB page through the very same qword.
        k = draw(INDEX)
        qwords[roots[0] | k << 3] = entry_value(draw, level=levels, leaf=False,
                                                target=roots[0], maxphyaddr=maxphy, odd=odd)
        for depth in range(1, levels):  # k repeated `depth` times from the top, then others
            index = [k] * depth + [draw(INDEX) for _ in range(levels - depth)]
            va = sum(i << b.level_shift(levels - n) for n, i in enumerate(index))
            pages.append(Page(canonicalize(va, levels), b.PAGE_SIZE))
        va = sum(k << b.level_shift(lvl) for lvl in range(1, levels + 1))
        pages.append(Page(canonicalize(va, levels), b.PAGE_SIZE))
    pcide = chance(draw, 50)
    regs = Registers.long_mode(
        cr3=roots[0] | (draw(st.sampled_from(PCIDS)) if pcide else 0),
        levels=levels,
        wp=not chance(draw, 20),
        smep=draw(st.booleans()),
        smap=draw(st.booleans()),
        nxe=not chance(draw, odd.broken + 5),  # XD bits are reserved with NXE=0
        pke=chance(draw, 40),
        pge=not chance(draw, 30),
        pcide=pcide,
        pkru=draw(st.one_of(st.just(0), st.integers(0, 2**32 - 1))),
        maxphyaddr=maxphy,
    )
    m = Machine(levels, maxphy, {k: v for k, v in qwords.items() if v}, tuple(roots),
                tuple(tables), tuple(pages), regs)
    mem = m.build()  # which pages work? (to aim most accesses at them, not to judge them)
    m.good = tuple(p for p in pages if walk(mem, regs, p.va, "read", 0, True, False).ok)
    return m


@st.composite
def aliased_machines(draw) -> Machine:
    """Two or three address spaces that map the same one or two 2 MiB regions differently:
    as a 2 MiB page or as 4 KiB pages, to different frames, global or not, sometimes
    through a shared page table (as KPTI shares user tables). Entries are permissive, PCIDs
    mostly on: the point is to have several cached translations for one address, made
    under different PCIDs, and to switch between the address spaces with and without
    NOFLUSH, which is where caching bugs hide."""
    levels = draw(st.sampled_from([4, 5]))
    maxphy = draw(st.integers(36, 52))
    qwords: dict[int, int] = {}
    tables: list[int] = []

    def new_table() -> int:
        tables.append((len(tables) + 1) << b.PAGE_SHIFT)
        return tables[-1]

    def leaf_flags() -> int:
        flags = b.PAGE_PRESENT | b.PAGE_RW | b.PAGE_USER | b.PAGE_ACCESSED
        if draw(st.booleans()):
            flags |= b.PAGE_GLOBAL
        if draw(st.booleans()):
            flags |= b.PAGE_DIRTY
        return flags

    upper = [draw(INDEX) for _ in range(levels - 2)]  # PML5/PML4/PDPT indices
    regions = [draw(st.integers(0, 3))]
    if chance(draw, 30):
        regions.append(regions[0] ^ 1)
    roots = [new_table() for _ in range(3 if chance(draw, 30) else 2)]
    shared_pts: dict[int, int] = {}
    pages = []
    for region in regions:
        va = canonicalize(sum(i << b.level_shift(levels - n) for n, i in enumerate(upper))
                          | region << b.PMD_SHIFT, levels)
        pages += [Page(va + (k << b.PAGE_SHIFT), b.PAGE_SIZE) for k in range(2)]
    for root in roots:
        table = root
        for i in upper:  # a private path down to the page directory
            slot = table | i << 3
            if slot not in qwords:
                qwords[slot] = new_table() | b.PAGE_TABLE
            table = qwords[slot] & ~0xFFF
        for region in regions:
            slot = table | region << 3
            if draw(st.booleans()):  # a 2 MiB page
                frame = draw(st.integers(1, 255)) << b.PMD_SHIFT
                qwords[slot] = frame | leaf_flags() | b.PAGE_PSE
            elif region in shared_pts and draw(st.booleans()):
                qwords[slot] = shared_pts[region] | b.PAGE_TABLE  # a shared page table
            else:
                pt = shared_pts[region] = new_table()
                qwords[slot] = pt | b.PAGE_TABLE
                for k in range(2):
                    frame = draw(st.integers(1, 4095)) << b.PAGE_SHIFT
                    qwords[pt | k << 3] = frame | leaf_flags()
    pcide = not chance(draw, 20)
    asids = tuple(range(1, len(roots) + 1)) if pcide else ()
    regs = Registers.long_mode(cr3=roots[0] | (asids[0] if pcide else 0), levels=levels,
                               pge=not chance(draw, 20), pcide=pcide, maxphyaddr=maxphy)
    return Machine(levels, maxphy, qwords, tuple(roots), tuple(tables), tuple(pages), regs,
                   good=tuple(pages), asids=asids)


# --- addresses ---------------------------------------------------------------------------
@st.composite
def addresses(draw, m: Machine) -> int:
    """Mostly an address in one of the pages the builder mapped, preferably one that
    translates (anywhere in it, or at the
    start of one of its first 4 KiB pages, so that accesses into a huge page share 4 KiB
    pages too); sometimes a random canonical address, sometimes a non-canonical one."""
    n = va_bits(m.levels)
    where = draw(st.integers(0, 9))
    if where < 8:
        pages = m.good if m.good and where < 6 else m.pages
        page = pages[draw(st.integers(0, len(pages) - 1))]
        if page.size > b.PAGE_SIZE and draw(st.booleans()):
            return page.va + (draw(st.integers(0, 3)) << b.PAGE_SHIFT)
        return page.va + draw(st.integers(0, page.size - 1))
    if where == 8:
        return canonicalize(draw(st.integers(0, (1 << n) - 1)), m.levels)
    return draw(st.one_of(
        st.sampled_from([1 << (n - 1), (1 << 64) - (1 << (n - 1)) - 1]),
        st.integers(0, 2**64 - 1),
    ))


# --- traces ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One trace op, printed like the TraceBuilder call that makes it."""

    op: int
    addr: int
    arg: int = 0

    def __repr__(self) -> str:
        name = {v: k for k, v in OPS.items()}[self.op]
        if self.op <= OPS["fetch"]:
            ac = ", ac=True" if self.arg & 4 else ""
            return f"{name}({self.addr:#x}, cpl={self.arg & 3}{ac})"
        if self.op == OPS["invpcid"]:
            return f"invpcid({self.arg >> 12}, pcid={self.arg & 0xFFF:#x}, va={self.addr:#x})"
        return f"{name}({self.addr:#x})"

    def _repr_pretty_(self, p, cycle) -> None:  # how hypothesis prints examples
        p.text(repr(self))


def to_trace(rows: list[Row]) -> Trace:
    return Trace(
        np.array([r.op for r in rows], dtype=np.uint8),
        np.array([r.addr for r in rows], dtype=np.uint64),
        np.array([r.arg for r in rows], dtype=np.uint16),
    )


@st.composite
def accesses(draw, m: Machine, recent: tuple[Row, ...] = ()) -> Row:
    """A read, write or fetch at CPL 3 or 0 (rarely 1 or 2), with RFLAGS.AC random. Often
    (40%) it goes to the 4 KiB page of one of the ``recent`` accesses, as real programs do,
    half of those times as the same kind of access: that is what makes TLB hits, L2 hits
    after L1 evictions and dirty assists."""
    if recent and chance(draw, 40):
        near = draw(st.sampled_from(recent))
        va = near.addr ^ draw(st.integers(0, b.PAGE_SIZE - 1))
        if draw(st.booleans()):
            return Row(near.op, va, near.arg)
    else:
        va = draw(addresses(m))
    op = draw(st.sampled_from([OPS["read"], OPS["write"], OPS["fetch"]]))
    cpl = draw(st.sampled_from([3, 0, 3, 0, 1, 2]))
    ac = draw(st.booleans())
    return Row(op, va, cpl | ac << 2)


@st.composite
def management_ops(draw, m: Machine, recent: tuple[Row, ...] = ()) -> Row:
    """MOV to CR3 among the roots and a few PCIDs (with and without NOFLUSH, rarely with
    reserved bits), INVLPG, INVPCID types 0-3, MOV to CR4 toggling PGE/SMEP/SMAP/PCIDE/PKE
    (rarely LA57 or PAE, which #GP), WRPKRU, MOV to CR0 toggling WP (rarely clearing PG).
    CR4 and CR0 values are the initial ones with a bit or two flipped. INVLPG and INVPCID
    often name the page of a ``recent`` access, which is likely to be cached."""
    kind = draw(st.sampled_from(
        ["mov_cr3", "mov_cr3", "invlpg", "invpcid", "invpcid", "mov_cr4", "wrpkru",
         "mov_cr0"]))
    if kind == "mov_cr3":
        if m.asids and not chance(draw, 20):  # switch to an address space and its PCID
            j = draw(st.integers(0, len(m.roots) - 1))
            value = m.roots[j] | m.asids[j]
            noflush = not chance(draw, 30)
        else:
            value = draw(st.sampled_from(m.roots)) | draw(st.sampled_from(PCIDS))
            noflush = draw(st.booleans())
        if noflush:
            value |= b.X86_CR3_PCID_NOFLUSH
        if chance(draw, 5):
            value |= 1 << draw(st.integers(m.maxphyaddr, 62))
        return Row(OPS["mov_cr3"], value)
    if kind in ("invlpg", "invpcid"):
        if recent and draw(st.booleans()):
            va = draw(st.sampled_from(recent)).addr ^ draw(st.integers(0, b.PAGE_SIZE - 1))
        else:
            va = draw(addresses(m))
        if kind == "invlpg":
            return Row(OPS["invlpg"], va)
        typ = draw(st.integers(0, 3))
        return Row(OPS["invpcid"], va, draw(st.sampled_from(PCIDS)) | typ << 12)
    if kind == "mov_cr4":
        toggles = [b.X86_CR4_PGE, b.X86_CR4_SMEP, b.X86_CR4_PCIDE, b.X86_CR4_SMAP,
                   b.X86_CR4_PKE]
        value = m.regs.cr4
        for bit in draw(st.lists(st.sampled_from(toggles), min_size=1, max_size=2)):
            value ^= bit
        if chance(draw, 5):
            value ^= draw(st.sampled_from([b.X86_CR4_LA57, b.X86_CR4_PAE]))
        return Row(OPS["mov_cr4"], value)
    if kind == "wrpkru":
        return Row(OPS["wrpkru"], draw(st.one_of(st.just(0), st.integers(0, 2**32 - 1))))
    value = m.regs.cr0 ^ (b.X86_CR0_WP if not chance(draw, 10) else 0)
    if chance(draw, 5):
        value &= ~b.X86_CR0_PG
    return Row(OPS["mov_cr0"], value)


@st.composite
def traces(draw, m: Machine, min_ops: int = 1, max_ops: int = 60,
           manage_percent: int = 25) -> list[Row]:
    """Random traces of about ``min_ops`` to ``max_ops`` ops: accesses mixed with
    ``manage_percent``% of management ops. A management op is often followed by an access
    like a recent one, so that what it did to cached translations shows (a context switch
    that comes back to the same data; an INVLPG and a retry)."""
    rows: list[Row] = []
    for _ in range(draw(st.integers(min_ops, max_ops))):
        recent = tuple(r for r in rows[-6:] if r.op <= OPS["fetch"])
        if not chance(draw, manage_percent):
            rows.append(draw(accesses(m, recent)))
            continue
        rows.append(draw(management_ops(m, recent)))
        if recent and draw(st.booleans()):
            again = draw(st.sampled_from(recent))
            rows.append(Row(again.op, again.addr ^ draw(st.integers(0, 0xFFF)), again.arg))
    return rows


@st.composite
def switching_traces(draw, m: Machine, max_ops: int = 40) -> list[Row]:
    """Context switches and little else: accesses to the machine's pages (user reads and
    writes) between MOV to CR3 among its address spaces (each with its PCID, mostly with
    NOFLUSH), and now and then an INVLPG, an INVPCID or some other management op."""
    rows: list[Row] = []
    for _ in range(draw(st.integers(1, max_ops))):
        what = draw(st.integers(0, 9))
        if what < 5:
            page = m.pages[draw(st.integers(0, len(m.pages) - 1))]
            op = draw(st.sampled_from([OPS["read"], OPS["write"]]))
            rows.append(Row(op, page.va + draw(st.integers(0, 7)) * 8, 3))
        elif what < 9:
            j = draw(st.integers(0, len(m.roots) - 1))
            asid = m.asids[j] if m.asids else 0
            noflush = bool(m.asids) and not chance(draw, 30)
            rows.append(Row(OPS["mov_cr3"], m.roots[j] | asid
                            | (b.X86_CR3_PCID_NOFLUSH if noflush else 0)))
        else:
            recent = tuple(r for r in rows[-6:] if r.op <= OPS["fetch"])
            rows.append(draw(management_ops(m, recent)))
    return rows


@dataclass(frozen=True)
class Change:
    """Software edits a paging-structure entry: ``qword at pa ^= mask``."""

    pa: int
    mask: int

    def __repr__(self) -> str:
        return f"Change({self.pa:#x}, {self.mask:#x})"

    def _repr_pretty_(self, p, cycle) -> None:  # how hypothesis prints examples
        p.text(repr(self))

    def apply(self, mem: PhysMem) -> None:
        mem.write_qword(self.pa, mem.read_qword(self.pa) ^ self.mask)


@st.composite
def changes(draw, m: Machine, max_changes: int = 3) -> list[Change]:
    """Edits of entries of the machine's tables: flip P, R/W, U/S, A, D, PS, G or XD,
    move the frame, or replace the whole entry."""
    if not m.qwords:
        return []
    out = []
    for _ in range(draw(st.integers(0, max_changes))):
        pa = draw(st.sampled_from(sorted(m.qwords)))
        how = draw(st.sampled_from(["frame", "P", "RW", "US", "A", "D", "PS", "G", "NX",
                                    "any"]))
        if how == "frame":
            mask = 1 << draw(st.integers(b.PAGE_SHIFT, m.maxphyaddr - 1))
        elif how == "any":
            mask = draw(st.integers(0, 2**64 - 1))
        else:
            mask = {"P": b.PAGE_PRESENT, "RW": b.PAGE_RW, "US": b.PAGE_USER,
                    "A": b.PAGE_ACCESSED, "D": b.PAGE_DIRTY, "PS": b.PAGE_PSE,
                    "G": b.PAGE_GLOBAL, "NX": b.PAGE_NX}[how]
        out.append(Change(pa, mask))
    return out
