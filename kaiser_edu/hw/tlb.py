"""The TLB and the MMU in plain Python: the executable specification of translation caching.

:mod:`kaiser_edu.hw.walk` says what one page walk does; this module says what the hardware
does *around* the walk: which translations it remembers, when it may use them instead of
walking, and which instructions make it forget. It is written to be read (and imitated in
the labs); the numba kernel of :mod:`kaiser_edu.hw.mmu` implements the same rules for speed
and the property tests (tests/test_properties.py) check the two against each other op by op.

The rules, with their Intel SDM Vol. 3A section:

1. What a TLB entry holds [4.10.2.2]: the page number at the entry's page size (4 KiB,
   2 MiB or 1 GiB), the page frame, the rights *combined over all levels of the walk*
   (R/W and U/S ANDed, XD ORed), the leaf's dirty flag and protection key, and the PCID
   that was current when it was made.
2. When an entry may be used [4.10.2.3, 4.10.2.4]: its page contains the address and its
   PCID is the current one, or it is *global* (leaf G=1 while CR4.PGE=1), which matches
   every PCID. Only successful walks make entries: a fault caches nothing.
3. Two levels [4.10.2]: a small L1 is probed first, then a larger L2. A walk fills both;
   an L2 hit is copied into L1. Each level is set-associative: the set is
   ``page number mod sets`` and a fill takes the first empty way, else the least recently
   used one (a hit refreshes the way it hit: an L1 hit the L1 way only, an L2 hit the L2
   way, then the copy into L1 is new).
4. A hit is checked against the *cached* rights and the current CPL, CR0.WP,
   CR4.SMEP/SMAP, RFLAGS.AC and PKRU: the rights are cached, the decision is not
   [4.6, 4.10.2.2]. A hit that fails the check is a #PF (rule 6) without reading the
   tables; it is not counted as a hit, and an L2 entry that faults is not copied to L1.
5. A permitted write through an entry cached with D=0 cannot just set D in the TLB: D
   lives in memory [4.8]. The CPU drops the page's entries and walks again (a "dirty
   assist"), which sets D, or faults if the tables no longer allow the write.
6. A #PF invalidates the faulting page's entries for the current PCID and the global ones
   [4.10.4.1], so a fixed-up mapping is seen when the instruction is retried.
7. Invalidation [4.10.4.1]: INVLPG drops one page (current PCID and globals, every page
   size; a non-canonical operand is a no-op). INVPCID type 0 drops one page of one PCID
   (not globals), type 1 one PCID's non-global entries, type 2 everything, type 3 every
   non-global entry. MOV to CR3 drops every non-global entry with CR4.PCIDE=0, and with
   PCIDE=1 the new PCID's non-global entries unless bit 63 ("NOFLUSH") is set. MOV to CR4
   drops everything when it changes PGE or clears PCIDE, and the current PCID's non-global
   entries when it sets SMEP. (The SDM says "all TLB entries ... for the current PCID",
   which would include global entries made under it; like the numba kernel, this model
   does not remember which PCID a global entry was made under, and keeps them all.)
   A CPU may always drop more than required: here a #PF also drops the page's global
   entries, as INVLPG does.
8. Faults of the management instructions [SDM Vol. 2]: MOV to CR3 with reserved bits (62:
   MAXPHYADDR, or bit 63 while PCIDE=0), INVPCID naming a PCID other than 0 while PCIDE=0
   (types 0 and 1) or a non-canonical address (type 0), MOV to CR4 changing LA57, clearing
   PAE or setting PCIDE while CR3[11:0] != 0, MOV to CR0 clearing PG or PE: all #GP, and
   nothing changes.

Mechanism versus behaviour: the numba kernel never scans the TLB to flush it. It stamps
each entry with the time it was filled and each flush with the time it happened, and an
entry counts only if it is younger than every flush that covers it, so a flush costs O(1).
Here every flush simply walks the ways and empties the ones it covers (a way holds an entry
or ``None``). The two are the same machine seen from outside, which is what the tests check.
Likewise the kernel's shortcuts for L1 hits (a same-page fast path that skips the LRU update
of a way that is already its set's most recently used, and a page-to-way memo) must find
the very way the set search below finds, and change no eviction: they have no counterpart
here, and the tests hold them to that.

>>> from kaiser_edu.hw import FrameAllocator, PageTables, PhysMem, Registers, TraceBuilder
>>> mem = PhysMem(); pt = PageTables(mem, FrameAllocator(mem))
>>> pt.map(0x400000, 0x5000)
>>> mmu = ReferenceMMU(mem, Registers.long_mode(cr3=pt.cr3()))
>>> r = mmu.run(TraceBuilder().read(0x400010).read(0x400020).build())
>>> [WHERE_NAMES[w] for w in r.where], hex(int(r.pa[1]))
(['walk', 'L1'], '0x5020')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import canonicalize, is_canonical
from kaiser_edu.hw.mmu import COUNTER_NAMES, OPS, WHERE_NAMES, TLBConfig, Trace, TraceResult
from kaiser_edu.hw.physmem import PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.hw.walk import WalkResult, access_rights_fault, walk

__all__ = ["TLB", "TLBEntry", "ReferenceMMU", "WHERE_NAMES"]

WALK, L1, L2 = 0, 1, 2  # where an access was translated (TraceResult.where)
SIZE_CODES = (0, 1, 2)  # 4 KiB, 2 MiB, 1 GiB: page shift = 12 + 9 * code
DEFAULT_TLB = TLBConfig()  # the MMU's default geometry


def page_shift(size_code: int) -> int:
    return b.PAGE_SHIFT + 9 * size_code


@dataclass
class TLBEntry:
    """One cached translation [SDM 4.10.2.2]."""

    vpn: int  # linear page number at this entry's size: va >> page_shift(size_code)
    size_code: int  # 0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB
    pcid: int  # PCID current when the entry was made (ignored when is_global)
    is_global: bool  # leaf G=1 with CR4.PGE=1: matches every PCID
    frame: int  # physical address of the page
    user: bool  # U/S=1 at every level
    writable: bool  # R/W=1 at every level
    nx: bool  # XD=1 at some level (with EFER.NXE=1)
    dirty: bool  # D in the leaf entry
    pkey: int  # protection key of the leaf (bits 62:59)
    last_use: int = 0  # op clock of the last fill or hit: the LRU age

    def matches(self, vpn: int, size_code: int, pcid: int) -> bool:
        """Translates this page for this PCID [SDM 4.10.2.4: global entries match any]?"""
        return (
            self.vpn == vpn
            and self.size_code == size_code
            and (self.is_global or self.pcid == pcid)
        )


Way = TLBEntry | None  # a way holds a valid entry or nothing


class TLB:
    """One set-associative TLB level with true LRU replacement.

    ``sets[s]`` is a list of ``ways`` slots; an entry for page number ``vpn`` can only live
    in set ``vpn % n_sets``. Invalidating an entry empties its way (``None``).
    """

    def __init__(self, entries: int, ways: int):
        self.n_sets = entries // ways
        self.ways = ways
        self.sets: list[list[Way]] = [[None] * ways for _ in range(self.n_sets)]

    def _set(self, vpn: int) -> list[Way]:
        return self.sets[vpn % self.n_sets]

    def entries(self) -> list[TLBEntry]:
        """Every valid entry, set by set, way by way."""
        return [e for ways in self.sets for e in ways if e is not None]

    def lookup(self, va: int, pcid: int, now: int | None = None) -> TLBEntry | None:
        """The entry translating ``va`` for ``pcid``. A hit at time ``now`` makes the entry
        the most recently used (without ``now``, just look).

        Page sizes are tried from 4 KiB up, ways in order: when the tables changed a page's
        size, two entries may cover one address, and the first found wins [SDM 4.10.2.3].
        """
        for size_code in SIZE_CODES:
            vpn = va >> page_shift(size_code)
            for entry in self._set(vpn):
                if entry is not None and entry.matches(vpn, size_code, pcid):
                    if now is not None:
                        entry.last_use = now
                    return entry
        return None

    def fill(self, entry: TLBEntry, now: int) -> None:
        """Put ``entry`` in its set: into the first empty way, else over the least recently
        used one."""
        ways = self._set(entry.vpn)
        empty = [w for w, e in enumerate(ways) if e is None]
        victim = empty[0] if empty else min(range(self.ways), key=lambda w: ways[w].last_use)
        entry.last_use = now
        ways[victim] = entry

    def _drop(self, covered: Callable[[TLBEntry], bool]) -> None:
        for ways in self.sets:
            for w, entry in enumerate(ways):
                if entry is not None and covered(entry):
                    ways[w] = None

    def invalidate_page(self, va: int, pcid: int, *, non_global: bool = True,
                        global_: bool = True) -> None:
        """Drop every entry (any page size) whose page contains ``va``: the non-global ones
        of ``pcid`` and/or the global ones."""
        for size_code in SIZE_CODES:
            vpn = va >> page_shift(size_code)
            ways = self._set(vpn)
            for w, entry in enumerate(ways):
                if entry is None or entry.vpn != vpn or entry.size_code != size_code:
                    continue
                if (global_ and entry.is_global) or (
                    non_global and not entry.is_global and entry.pcid == pcid
                ):
                    ways[w] = None

    def flush_pcid(self, pcid: int) -> None:
        """Drop the non-global entries of one PCID."""
        self._drop(lambda e: not e.is_global and e.pcid == pcid)

    def flush_nonglobal(self) -> None:
        """Drop every non-global entry, of every PCID."""
        self._drop(lambda e: not e.is_global)

    def flush_all(self) -> None:
        """Drop everything, global entries included."""
        self._drop(lambda e: True)


@dataclass
class _Op:
    """The result of one op, as the per-op arrays of a TraceResult hold it."""

    outcome: int = b.OUTCOME_OK
    error_code: int = 0
    pa: int = 0
    size_code: int = 0  # only meaningful when an access succeeded
    where: int = WALK


class ReferenceMMU:
    """Registers, two TLB levels and a page walker, executing a :class:`Trace` op by op.

    The same interface as :class:`~kaiser_edu.hw.mmu.MMU` where it matters: :meth:`run`
    returns a :class:`~kaiser_edu.hw.mmu.TraceResult` with the same per-op arrays and the
    same counters (``walk_reads`` = entries the walks read, ``ad_writes`` = A/D updates the
    walks made, ``l1_hits``/``l2_hits`` = accesses completed from that TLB level; ``where``
    also names the level for a hit that faulted), :attr:`regs`, :attr:`counters` and
    :meth:`tlb_entries`. ``tlb=None`` means no TLB: every access walks.
    """

    def __init__(self, mem: PhysMem, regs: Registers, tlb: TLBConfig | None = DEFAULT_TLB):
        regs.validate()
        self.mem = mem
        self.tlb_config = tlb
        self.cr0, self.cr3, self.cr4 = regs.cr0, regs.cr3, regs.cr4
        self.efer, self.pkru, self.maxphyaddr = regs.efer, regs.pkru, regs.maxphyaddr
        self.tlbs: list[TLB] = [] if tlb is None else [
            TLB(tlb.l1_entries, tlb.l1_ways), TLB(tlb.l2_entries, tlb.l2_ways)
        ]
        self.clock = 0  # counts ops: the time of fills and hits, for LRU
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)

    # --- state -----------------------------------------------------------------------------
    @property
    def regs(self) -> Registers:
        return Registers(cr0=self.cr0, cr3=self.cr3, cr4=self.cr4, efer=self.efer,
                         pkru=self.pkru, maxphyaddr=self.maxphyaddr)

    @property
    def pcide(self) -> bool:
        return bool(self.cr4 & b.X86_CR4_PCIDE)

    @property
    def pcid(self) -> int:
        """The current PCID: CR3[11:0] with CR4.PCIDE=1, else 0 [SDM 4.10.1]."""
        return self.cr3 & b.X86_CR3_PCID_MASK if self.pcide else 0

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def reset_counters(self) -> None:
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)

    def tlb_entries(self) -> list[dict]:
        """The valid entries, L1 then L2, in the format of ``MMU.tlb_entries()``."""
        out = []
        for name, tlb in zip(WHERE_NAMES[1:], self.tlbs):
            for e in tlb.entries():
                shift = page_shift(e.size_code)
                out.append({
                    "level": name,
                    "va": canonicalize(e.vpn << shift, self.regs.levels),
                    "page_size": 1 << shift,
                    "pcid": None if e.is_global else e.pcid,
                    "global": e.is_global,
                    "pa": e.frame,
                    "user": e.user,
                    "writable": e.writable,
                    "nx": e.nx,
                    "dirty": e.dirty,
                    "pkey": e.pkey,
                    "last_use": e.last_use,
                })
        return out

    # --- running ---------------------------------------------------------------------------
    def run(self, trace: Trace, record: bool = True, stop_on_fault: bool = False) -> TraceResult:
        """Execute ``trace`` like ``MMU.run``."""
        before = self.counters
        results: list[_Op] = []
        for op, addr, arg in zip(trace.op.tolist(), trace.addr.tolist(), trace.arg.tolist()):
            self.clock += 1
            self._count("ops")
            result = self._access(op, addr, arg) if op <= OPS["fetch"] else self._manage(
                op, addr, arg)
            if result.outcome == b.OUTCOME_GP:
                self._count("general_protection")
            results.append(result)
            if stop_on_fault and result.outcome != b.OUTCOME_OK:
                break
        delta = {name: self._counters[name] - before[name] for name in COUNTER_NAMES}
        if not record:
            return TraceResult(trace, len(results), None, None, None, None, None, delta)
        columns = (("outcome", np.uint8), ("error_code", np.uint16), ("pa", np.uint64),
                   ("size_code", np.uint8), ("where", np.uint8))
        arrays = [np.array([getattr(r, f) for r in results], dtype=t) for f, t in columns]
        return TraceResult(trace, len(results), *arrays, counters=delta)

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] += n

    # --- memory accesses -------------------------------------------------------------------
    def _access(self, op: int, va: int, arg: int) -> _Op:
        kind, cpl, ac = b.ACCESS_NAMES[op], arg & 3, bool(arg & 4)
        self._count("accesses")
        regs = self.regs
        if not is_canonical(va, regs.levels):
            return _Op(outcome=b.OUTCOME_GP)  # #GP before the TLB is even looked at
        entry, where = self._lookup(va)
        result: _Op | None = None
        if entry is not None:
            result = self._check_hit(regs, entry, where, va, kind, cpl, ac)
            if result.outcome == b.OUTCOME_OK and kind == "write" and not entry.dirty:
                # Rule 5: the dirty assist. Forget the page, then walk to set D in memory.
                self._count("dirty_assists")
                self._invalidate_page(va, self.pcid)
                entry = result = None
            elif result.outcome == b.OUTCOME_OK:
                self._count("l1_hits" if where == L1 else "l2_hits")
                if where == L2:
                    self.tlbs[0].fill(replace(entry), self.clock)  # an L2 hit fills L1
        if result is None:
            result = self._walk_and_fill(regs, va, kind, cpl, ac)
        if result.outcome == b.OUTCOME_PF:
            self._count("page_faults")
            self._invalidate_page(va, self.pcid)  # rule 6
        return result

    def _lookup(self, va: int) -> tuple[TLBEntry | None, int]:
        """Probe L1, then L2 (rules 2 and 3)."""
        for where, tlb in enumerate(self.tlbs, start=L1):
            entry = tlb.lookup(va, self.pcid, self.clock)
            if entry is not None:
                return entry, where
        return None, WALK

    def _check_hit(self, regs: Registers, entry: TLBEntry, where: int, va: int, kind: str,
                   cpl: int, ac: bool) -> _Op:
        """Rule 4: the cached rights, checked against today's registers. The tables are not
        read: if software widened the rights in memory without invalidating, this is a
        "spurious" #PF [SDM 4.10.4.3], and the fault drops the stale entry."""
        access = b.ACCESS_KINDS[kind]
        denied, pk = access_rights_fault(access, cpl, ac, entry.user, entry.writable,
                                         entry.nx, entry.pkey, regs)
        if denied:
            error = pf_error_code(regs, kind, cpl) | b.X86_PF_PROT | (b.X86_PF_PK if pk else 0)
            return _Op(outcome=b.OUTCOME_PF, error_code=error, where=where)
        offset = va & ((1 << page_shift(entry.size_code)) - 1)
        return _Op(pa=entry.frame | offset, size_code=entry.size_code, where=where)

    def _walk_and_fill(self, regs: Registers, va: int, kind: str, cpl: int, ac: bool) -> _Op:
        """A TLB miss: the reference walk, and on success a new entry in L1 and L2."""
        self._count("walks")
        w = walk(self.mem, regs, va, kind, cpl, ac)
        self._count("walk_reads", len(w.steps))
        self._count("ad_writes", len(w.ad_updates))
        if w.outcome == b.OUTCOME_PF:
            return _Op(outcome=b.OUTCOME_PF, error_code=w.error_code)
        entry = entry_from_walk(w, regs, self.pcid)
        for tlb in self.tlbs:
            tlb.fill(replace(entry), self.clock)
        return _Op(pa=w.pa, size_code=entry.size_code)

    def _invalidate_page(self, va: int, pcid: int, global_: bool = True) -> None:
        for tlb in self.tlbs:
            tlb.invalidate_page(va, pcid, global_=global_)

    # --- instructions that manage translation (rules 7 and 8) -------------------------------
    def _manage(self, op: int, value: int, arg: int) -> _Op:
        gp = _Op(outcome=b.OUTCOME_GP)
        ok = _Op()
        if op == OPS["mov_cr3"]:
            noflush = bool(value & b.X86_CR3_PCID_NOFLUSH)
            new = value & ~b.X86_CR3_PCID_NOFLUSH
            reserved = ((1 << 63) - 1) & ~((1 << self.maxphyaddr) - 1)
            if new & reserved or (noflush and not self.pcide):
                return gp
            self._count("cr3_writes")
            self.cr3 = new
            if not self.pcide:
                self._flush("flush_nonglobal")
            elif not noflush:
                self._flush("flush_pcid", self.pcid)
            return ok
        if op == OPS["invlpg"]:
            self._count("invlpg")
            if is_canonical(value, self.regs.levels):  # non-canonical: a no-op
                self._invalidate_page(value, self.pcid)
            return ok
        if op == OPS["invpcid"]:
            self._count("invpcid")
            kind, pcid = arg >> 12 & 3, arg & b.X86_CR3_PCID_MASK
            if kind <= 1 and not self.pcide and pcid != 0:
                return gp
            if kind == 0:  # one page of one PCID, globals kept
                if not is_canonical(value, self.regs.levels):
                    return gp
                self._invalidate_page(value, pcid, global_=False)
            elif kind == 1:  # one PCID, globals kept
                self._flush("flush_pcid", pcid)
            elif kind == 2:  # everything
                self._flush("flush_all")
            else:  # every PCID, globals kept
                self._flush("flush_nonglobal")
            return ok
        if op == OPS["mov_cr4"]:
            changed = self.cr4 ^ value
            sets_pcide = value & b.X86_CR4_PCIDE and not self.pcide
            if (changed & b.X86_CR4_LA57 or not value & b.X86_CR4_PAE
                    or (sets_pcide and self.cr3 & b.X86_CR3_PCID_MASK)):
                return gp
            if changed & b.X86_CR4_PGE or (self.pcide and not value & b.X86_CR4_PCIDE):
                self._flush("flush_all")
            elif changed & b.X86_CR4_SMEP and value & b.X86_CR4_SMEP:
                self._flush("flush_pcid", self.pcid)
            self.cr4 = value
            return ok
        if op == OPS["wrpkru"]:
            self.pkru = value & 0xFFFF_FFFF
            return ok
        if op == OPS["mov_cr0"]:
            if not value & b.X86_CR0_PG or not value & b.X86_CR0_PE:
                return gp  # leaving paging (or protected mode) is not simulated
            self.cr0 = value
            return ok
        return gp

    def _flush(self, how: str, *args: int) -> None:
        self._count("flushes")
        for tlb in self.tlbs:
            getattr(tlb, how)(*args)


def pf_error_code(regs: Registers, kind: str, cpl: int) -> int:
    """The W, U and I/D bits of a #PF error code [SDM 4.7]; the caller adds P, RSVD, PK."""
    code = b.X86_PF_WRITE if kind == "write" else 0
    if cpl == 3:
        code |= b.X86_PF_USER
    if kind == "fetch" and (regs.smep or regs.nxe):
        code |= b.X86_PF_INSTR
    return code


def entry_from_walk(w: WalkResult, regs: Registers, pcid: int) -> TLBEntry:
    """The TLB entry a successful walk makes [SDM 4.10.2.2]: rights combined over every
    entry read, D as the leaf has it after the walk, G only with CR4.PGE=1."""
    leaf = w.steps[-1].entry
    size_code = {b.PAGE_SIZE: 0, b.PMD_SIZE: 1, b.PUD_SIZE: 2}[w.page_size]
    return TLBEntry(
        vpn=w.va >> page_shift(size_code),
        size_code=size_code,
        pcid=pcid,
        is_global=bool(leaf & b.PAGE_GLOBAL) and regs.pge,
        frame=w.pa & ~(w.page_size - 1),
        user=all(s.entry & b.PAGE_USER for s in w.steps),
        writable=all(s.entry & b.PAGE_RW for s in w.steps),
        nx=regs.nxe and any(s.entry & b.PAGE_NX for s in w.steps),
        dirty=bool(leaf & b.PAGE_DIRTY) or w.kind == "write",
        pkey=(leaf & b.PKEY_MASK) >> b.PKEY_SHIFT,
    )
