"""The *limit*: the least work any exact simulator must do for the benchmark's traces.

``kaiser-edu bench`` compares the MMU engine (:mod:`kaiser_edu.hw.mmu_kernels`) with this
kernel on the same traces in the same run. It computes the same thing for those traces and
nothing else:

* an access to the page of the access just before it reuses that translation: it is an
  L1 hit on the way just used, already its set's most recently used, so not even the LRU
  order changes; a run of such accesses is found by one scan of the addresses (any exact
  simulator may do this; the engine does too);
* the same TLB geometry and replacement as the engine's default
  (:class:`~kaiser_edu.hw.mmu.TLBConfig`: 64-entry 4-way L1, 1536-entry 12-way L2, both
  filled on a walk, L1 refilled from L2 on an L2 hit, least recently used way replaced,
  an empty way first);
* a 4-level walk over *dense* page-table memory: the tables reachable from CR3 copied
  into one array, frame after frame, with the table pointers in the copy (CR3 and the
  non-leaf entries) relocated to the copy's frame numbers, so a table read is one load,
  without the engine's sparse frame lookup. Leaf entries keep their frames, so the
  physical addresses are the machine's;
* the accessed (A) bit set in every entry used (SDM 4.8), as the engine does;
* no PCIDs, global pages, large pages, permission checks, faults or flushes: the traces are
  user reads of present, user, writable 4 KiB pages on a fresh TLB, where all of that
  decides nothing. A trace that needs any of it (a non-present entry, a large page, a
  table outside the copied frames) stops the kernel, which returns -1: a limit that
  computed something else would not be a limit.

The benchmark asserts that the physical addresses, the TLB level of every access and the
counters (L1 hits, L2 hits, walks, table reads, A-bit writes) equal the engine's on both
traces (:func:`check_exact`), before it times anything.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kaiser_edu.errors import KaiserEduError

u64 = np.uint64
_P = u64(1)
_ACC = u64(1 << 5)
_PS = u64(1 << 7)
_ADDR = u64(((1 << 52) - 1) & ~0xFFF)

# Counters returned by limit_run, in this order (names as MMU.counters).
LIMIT_COUNTERS = ("l1_hits", "l2_hits", "walks", "walk_reads", "ad_writes")


@njit(cache=True)
def limit_run(va, dense, cr3, clock, l1_sets, l1_ways, l2_sets, l2_ways, tags, lru,
              counters, record, out_pa, out_where):
    """Translate every address of ``va`` (user reads); returns 0, or -1 if the trace needs
    more than this kernel models. Like the engine with ``record=False``, it stores the
    physical addresses only when recording; the counters, the TLB and the A bits are its
    results otherwise.

    ``tags``/``lru``: the TLB, L1 ways then L2 ways, ``vpn + 1`` (0 = empty) and the time
    of last use (``clock`` + the access's number; the frame in the second half of ``lru``). ``counters``: see :data:`LIMIT_COUNTERS`. With ``record`` the physical
    address and the TLB level (0 walk, 1 L1, 2 L2) of each access go to ``out_pa`` and
    ``out_where``.
    """
    n_frames = u64(dense.shape[0] // 512)
    l1_mask = u64(l1_sets - 1)
    l2_mask = u64(l2_sets - 1)
    l2_base = u64(l1_sets * l1_ways)
    uw1 = u64(l1_ways)
    uw2 = u64(l2_ways)
    l1_hits = 0
    l2_hits = 0
    walks = 0
    reads = 0
    ad = 0
    n = va.shape[0]
    last_vpn = ~u64(0)
    last_frame = u64(0)
    i = 0
    while i < n:
        now = clock + u64(i + 1)
        v = va[i]
        vpn = v >> u64(12)
        key = vpn + u64(1)
        if vpn == last_vpn:  # the page just used: its L1 way, already the set's MRU
            end = i + 1  # ... and so are the following accesses to it
            while end < n and (va[end] >> u64(12)) == vpn:
                end += 1
            l1_hits += end - i
            if record:
                for k in range(i, end):
                    out_pa[k] = last_frame | (va[k] & u64(0xFFF))
                    out_where[k] = 1
            i = end
            continue
        where = 0
        frame = u64(0)
        row1 = (vpn & l1_mask) * uw1
        hit = -1
        for r in range(row1, row1 + uw1):
            if tags[r] == key:
                hit = np.int64(r)
                break
        if hit >= 0:
            where = 1
            l1_hits += 1
            lru[hit] = now
            frame = lru[hit + tags.shape[0]]  # the frame, stored after the lru row
        else:
            row2 = l2_base + (vpn & l2_mask) * uw2
            for r in range(row2, row2 + uw2):
                if tags[r] == key:
                    hit = np.int64(r)
                    break
            if hit >= 0:
                where = 2
                l2_hits += 1
                lru[hit] = now
                frame = lru[hit + tags.shape[0]]
            else:
                walks += 1
                table = cr3 & _ADDR
                for level in range(4):
                    pfn = table >> u64(12)
                    if pfn >= n_frames:
                        return -1
                    idx = pfn * u64(512) + ((v >> u64(39 - 9 * level)) & u64(511))
                    entry = dense[idx]
                    reads += 1
                    if (entry & _P) == u64(0) or (level > 0 and (entry & _PS) != u64(0)):
                        return -1
                    if (entry & _ACC) == u64(0):
                        dense[idx] = entry | _ACC
                        ad += 1
                    table = entry & _ADDR
                frame = table
            # fill: L1 always (a walk or an L2 hit), L2 after a walk
            for lvl in range(2 if where == 0 else 1):
                row = row1 if lvl == 0 else l2_base + (vpn & l2_mask) * uw2
                ways = uw1 if lvl == 0 else uw2
                victim = row
                oldest = lru[row]
                for r in range(row + u64(1), row + ways):
                    if lru[r] < oldest:  # empty ways have lru 0: the first of them wins
                        oldest = lru[r]
                        victim = r
                tags[victim] = key
                lru[victim] = now
                lru[victim + tags.shape[0]] = frame
        last_vpn = vpn
        last_frame = frame
        if record:
            out_pa[i] = frame | (v & u64(0xFFF))
            out_where[i] = where
        i += 1
    counters[0] += l1_hits
    counters[1] += l2_hits
    counters[2] += walks
    counters[3] += reads
    counters[4] += ad
    return 0


class Limit:
    """The limit kernel's state for one machine: the dense copy of its page tables and the
    TLB geometry (a fresh, empty TLB per :meth:`run`)."""

    def __init__(self, mem, cr3: int, l1_sets: int = 16, l1_ways: int = 4,
                 l2_sets: int = 128, l2_ways: int = 12):
        """Copy the 4-level tables reachable from ``cr3`` in ``mem`` (a
        :class:`~kaiser_edu.hw.physmem.PhysMem`), relocating table pointers (module doc)."""
        addr = int(_ADDR)
        order: dict[int, int] = {}  # machine table pfn -> frame in the copy
        tables: list[tuple[int, int]] = []  # (machine pfn, level), in copy order
        todo = [(cr3 & addr) >> 12]
        for level in (4, 3, 2, 1):
            below = []
            for pfn in todo:
                if pfn in order:
                    continue
                order[pfn] = len(tables)
                tables.append((pfn, level))
                if level > 1 and mem.slot(pfn) is not None:
                    entries = mem.frame_array(pfn)
                    present = entries[(entries & _P) != 0]
                    pointers = present if level == 4 else present[(present & _PS) == 0]
                    below.extend(int(p) >> 12 for p in np.unique(pointers & _ADDR))
            todo = below
        self.dense = np.zeros(len(tables) * 512, dtype=np.uint64)
        for i, (pfn, level) in enumerate(tables):
            if mem.slot(pfn) is None:
                continue  # a table never written reads as zeros: not present
            frame = mem.frame_array(pfn).copy()
            if level > 1:
                pointer = (frame & _P) != 0
                if level < 4:
                    pointer &= (frame & _PS) == 0
                targets = (frame[pointer] & _ADDR) >> u64(12)
                moved = np.array([order[int(t)] for t in targets], dtype=np.uint64)
                frame[pointer] = (frame[pointer] & ~_ADDR) | (moved << u64(12))
            self.dense[i * 512:(i + 1) * 512] = frame
        self.cr3 = order[(cr3 & addr) >> 12] << 12
        self.geometry = (l1_sets, l1_ways, l2_sets, l2_ways)
        self._tlb: tuple[np.ndarray, np.ndarray] | None = None
        self._clock = 0  # accesses run on the current TLB (the LRU clock)

    def run(self, va: np.ndarray, record: bool = False,
            fresh: bool = True) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """Translate ``va`` on a fresh TLB (or, with ``fresh=False``, on the TLB the last
        run left, for a trace fed in batches): (counters, physical addresses, TLB levels);
        the arrays are empty unless ``record``."""
        l1_sets, l1_ways, l2_sets, l2_ways = self.geometry
        entries = l1_sets * l1_ways + l2_sets * l2_ways
        if fresh or self._tlb is None:
            self._tlb = (np.zeros(entries, dtype=np.uint64),
                         np.zeros(2 * entries, dtype=np.uint64))  # last use, then the frame
            self._clock = 0
        tags, lru = self._tlb
        counters = np.zeros(len(LIMIT_COUNTERS), dtype=np.int64)
        n = len(va) if record else 1
        out_pa = np.zeros(n, dtype=np.uint64)
        out_where = np.zeros(n, dtype=np.uint8)
        status = limit_run(np.ascontiguousarray(va, dtype=np.uint64), self.dense,
                           u64(self.cr3), u64(self._clock), l1_sets, l1_ways, l2_sets,
                           l2_ways, tags, lru, counters, record, out_pa, out_where)
        self._clock += len(va)
        if status < 0:
            raise KaiserEduError(
                "the limit kernel met a non-present entry or a large page: it models only "
                "user reads of mapped 4 KiB pages")
        return dict(zip(LIMIT_COUNTERS, (int(c) for c in counters))), out_pa, out_where


def check_exact(mmu_factory, limit: Limit, va: np.ndarray) -> dict[str, int]:
    """Run ``va`` through a fresh engine (``mmu_factory()``, on memory in the same state as
    the limit's copy) and through the limit, and raise unless every physical address, TLB
    level and counter agree. Returns the counters."""
    from kaiser_edu.hw import Trace

    result = mmu_factory().run(Trace.accesses(va, "read", cpl=3))
    counters, pa, where = limit.run(va, record=True)
    engine = {key: result.counters[key] for key in LIMIT_COUNTERS}
    problems = []
    if result.n_done != len(va) or (result.outcome != 0).any():
        problems.append("the engine did not translate every access")
    if engine != counters:
        problems.append(f"counters: engine {engine}, limit {counters}")
    for name, a, b in (("physical address", result.pa, pa), ("TLB level", result.where, where)):
        bad = np.flatnonzero(a.astype(np.uint64) != b.astype(np.uint64))
        if bad.size:
            i = int(bad[0])
            problems.append(f"{bad.size} accesses differ in {name}, first #{i} "
                            f"(va {int(va[i]):#x}): engine {int(a[i]):#x}, limit {int(b[i]):#x}")
    if problems:
        raise KaiserEduError("the limit kernel is not exact: " + "; ".join(problems))
    return counters
