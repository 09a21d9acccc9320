"""numba kernels of the MMU: page walk, two-level PCID-tagged TLB, and the trace loop.

The same rules as :mod:`kaiser_edu.hw.walk` (read that first: it is the specification),
written for speed. Conventions, all of them forced by numba's typing (recipes.md):

* addresses, entries, stamps and register values are ``uint64`` throughout; constants are
  ``np.uint64`` module globals, frozen into the compiled code;
* the per-access hot path (TLB probe, TLB fill, page walk) is written out in one function
  body: numba leaves NRT reference-count calls (atomic, ~20 cycles each) around inlined
  helpers that take arrays when they contain loops with early exits, which tripled the cost
  of a TLB miss. Helpers that take arrays serve only cold paths (faults, INVLPG, INVPCID);
  the two TLB levels share one loop instead of two copies of the code;
* the common access runs through a short specialised path in front of the general code
  (run_trace's docstring, 7): measured against the minimal exact kernel of
  :mod:`kaiser_edu.perf.limit` (``kaiser-edu bench``), every instruction on the path of a
  TLB miss counts, because fewer of them let the CPU overlap one access's cache miss on the
  leaf entry with the next access's work. The general code stays the definition; the short
  path gives up, before changing anything, whenever it is not sure;
* array subscripts in the hot loop are unsigned: numba adds a negative-index fix-up to every
  signed subscript it cannot prove non-negative (about 10% of the instructions of a TLB miss);
* nothing here allocates: state lives in arrays owned by :class:`kaiser_edu.hw.mmu.MMU`.

TLB model (SDM 4.10.2-4.10.4). Two set-associative levels, L1 then L2, stored together in
one ``(4, l1_entries + l2_entries)`` array, a row per field so that a set's tags are
contiguous (entry ``r`` of set ``s`` of a level is column ``base + s * ways + way``)::

    tlb[0, r] tag    = vpn << 16 | pcid << 4 | global << 3 | size  (size 0/1/2 = 4K/2M/1G;
                       global entries keep pcid 0: they match any PCID)
    tlb[1, r] stamp  = the op clock when the entry was filled (0 = invalidated)
    tlb[2, r] data   = page frame address | rights: U, W, NX, D in bits 0-3, pkey in 4-7
    tlb[3, r] lru    = the op clock of the last use

Flushes cost O(1): instead of scanning, a flush records the clock, and an entry counts only
if it was filled after every flush that covers it (all entries; all non-global; its PCID).
INVLPG and a #PF remove single entries (SDM 4.10.4.1: a page fault invalidates the TLB
entries for the faulting address).
"""

from __future__ import annotations

import numpy as np
from numba import njit

u64 = np.uint64
U0 = u64(0)
U1 = u64(1)
U2 = u64(2)
U3 = u64(3)
U7 = u64(7)
U9 = u64(9)
U12 = u64(12)
U13 = u64(13)
U18 = u64(18)
U27 = u64(27)
U511 = u64(511)
U512 = u64(512)
PAGE_MASK_LOW = u64(0xFFF)
PCID_MASK = u64(0xFFF)

P = u64(1 << 0)
RW = u64(1 << 1)
US = u64(1 << 2)
ACC = u64(1 << 5)
DIRTY = u64(1 << 6)
PS = u64(1 << 7)
GLOBAL = u64(1 << 8)
NX = u64(1 << 63)
NOFLUSH = u64(1 << 63)
ADDR52 = u64((1 << 52) - 1)
PKEY_SHIFT = u64(59)

CR0_PE = u64(1 << 0)
CR0_WP = u64(1 << 16)
CR0_PG = u64(1 << 31)
CR4_PAE = u64(1 << 5)
CR4_PGE = u64(1 << 7)
CR4_LA57 = u64(1 << 12)
CR4_PCIDE = u64(1 << 17)
CR4_SMEP = u64(1 << 20)
CR4_SMAP = u64(1 << 21)
CR4_PKE = u64(1 << 22)
EFER_NXE = u64(1 << 11)

PF_PROT = 1
PF_WRITE = 2
PF_USER = 4
PF_RSVD = 8
PF_INSTR = 16
PF_PK = 32

# Trace op codes (also in mmu.py's OPS table).
OP_READ = 0
OP_WRITE = 1
OP_FETCH = 2
OP_MOV_CR3 = 3
OP_INVLPG = 4
OP_INVPCID = 5
OP_MOV_CR4 = 6
OP_WRPKRU = 7
OP_MOV_CR0 = 8

OUT_OK = 0
OUT_PF = 1
OUT_GP = 2

MEMO_SLOTS = 256  # run_trace's page -> L1-way memo (a power of two)
RECENT_SLOTS = 512  # run_trace's recent-fill filter, per kind (non-global, global; a power of two)

# Register file layout.
R_CR0, R_CR3, R_CR4, R_EFER, R_PKRU, R_MAXPHY = 0, 1, 2, 3, 4, 5
# TLB bookkeeping layout (uint64): the op clock, the last full flush, the last
# all-non-global flush, per level a bit mask of the page sizes that may be cached, and the
# clock of the latest flush or invalidation of any kind.
T_CLOCK, T_LAST_ALL, T_LAST_NG, T_SIZES_L1, T_SIZES_L2, T_LAST_ANY = 0, 1, 2, 3, 4, 5
# Counters (int64).
C_OPS = 0
C_ACCESSES = 1
C_L1_HITS = 2
C_L2_HITS = 3
C_WALKS = 4
C_WALK_READS = 5
C_PF = 6
C_GP = 7
C_AD_WRITES = 8
C_CR3_WRITES = 9
C_FLUSHES = 10
C_INVLPG = 11
C_INVPCID = 12
C_DIRTY_ASSISTS = 13
N_COUNTERS = 14


@njit(inline="always")
def frame_hash(pfn, bits):
    """Hash-table home slot of a page-frame number: an xor-fold (no multiply, so it never
    overflows, also under NUMBA_DISABLE_JIT where numpy would warn)."""
    h = pfn ^ (pfn >> U9) ^ (pfn >> U18) ^ (pfn >> U27)
    return h & ((U1 << bits) - U1)


@njit(inline="always")
def _rights_fault(access, user_access, ac, user_page, writable, nx, pkey, cr0, cr4, pkru):
    """(denied, pk) exactly as walk.access_rights_fault()."""
    if access == OP_FETCH:
        if nx:
            return True, False
        if user_access:
            return not user_page, False
        return user_page and (cr4 & CR4_SMEP) != U0, False
    write = access == OP_WRITE
    wp = (cr0 & CR0_WP) != U0
    pk = False
    if (cr4 & CR4_PKE) != U0 and user_page:
        ad = (pkru >> (pkey * U2)) & U1
        wd = (pkru >> (pkey * U2 + U1)) & U1
        pk = ad != U0 or (wd != U0 and write and (user_access or wp))
    if user_access:
        denied = (not user_page) or (write and not writable)
    else:
        smap_blocks = user_page and (cr4 & CR4_SMAP) != U0 and not ac
        denied = smap_blocks or (write and wp and not writable)
    return denied or pk, pk



@njit(inline="always")
def _tlb_invalidate_page(tlb, base, nsets, nways, size_bits, va, pcid, with_global, with_pcid):
    """Drop the entries translating ``va``: those of ``pcid`` and/or the global ones."""
    n = 0
    for s in range(3):
        if (size_bits >> u64(s)) & U1 == U0:
            continue
        vpn = va >> u64(12 + 9 * s)
        key_ng = (vpn << u64(16)) | (pcid << u64(4)) | u64(s)
        key_g = (vpn << u64(16)) | u64(8) | u64(s)
        row = base + np.int64(vpn & u64(nsets - 1)) * nways
        for w in range(nways):
            tag = tlb[0, row + w]
            if (with_pcid and tag == key_ng) or (with_global and tag == key_g):
                if tlb[1, row + w] != U0:
                    tlb[1, row + w] = U0
                    n += 1
    return n


@njit(inline="always")
def _pf_error_code(op, user_access, cr4, efer):
    """W, U and I/D bits of a #PF error code; P, RSVD and PK are added by the caller."""
    err = 0
    if op == OP_WRITE:
        err |= PF_WRITE
    if user_access:
        err |= PF_USER
    if op == OP_FETCH and ((cr4 & CR4_SMEP) != U0 or (efer & EFER_NXE) != U0):
        err |= PF_INSTR
    return err


@njit(inline="always")
def _canonical(va, vabits, top_ones):
    """Bits 63:vabits all equal (vabits 47, or 56 with LA57, which cannot change in 64-bit
    mode: the caller computes it once)."""
    top = va >> vabits
    return top == U0 or top == top_ones  # noqa: SIM109 (two compares, no tuple, in numba)


@njit(inline="always")
def _tlb_data(base, pkey, user_page, writable, nx, leaf):
    """A TLB entry's data word (see the module doc): the page frame and the rights the
    walk combined over the levels, the leaf's D bit and protection key."""
    data = base | (pkey << u64(4))
    if user_page:
        data |= u64(1)
    if writable:
        data |= u64(2)
    if nx:
        data |= u64(4)
    if (leaf & DIRTY) != U0:
        data |= u64(8)
    return data


@njit(inline="always")
def _memo_slot(vpn4, pcid):
    """The page -> way memo's slot for a 4 KiB page under a PCID: folded, so pages 1 MiB or
    1 GiB apart (entry text, handlers) and one page's kernel and user PCIDs (PTI: | 0x800)
    use different slots."""
    return (vpn4 ^ (vpn4 >> u64(8)) ^ (vpn4 >> u64(18)) ^ (pcid >> u64(4))) & u64(MEMO_SLOTS - 1)


@njit(inline="always")
def _recent_slot(vpn, size_code):
    """The recent-fill filter's slot of a page of one size (run_trace's docstring, 10); add
    RECENT_SLOTS for a global entry's."""
    return (vpn ^ (vpn >> u64(9)) ^ (vpn >> u64(18)) ^ (size_code << u64(7))) & u64(RECENT_SLOTS - 1)


@njit(inline="always")
def _recent_index(vpn, size_code, tag):
    """The recent-fill filter's element for an entry filled with ``tag``, a page of one size:
    its slot, in the global half if the tag's global bit is set."""
    return _recent_slot(vpn, size_code) + (u64(RECENT_SLOTS) if (tag & u64(8)) != U0 else U0)


@njit(cache=True)
def run_trace(ops, addrs, args, pool, ht, ht_bits, direct, regs, tlb, geom, tstate,
              pcid_flush, recent, counters, out_outcome, out_error, out_pa, out_size, out_tlb,
              stop_on_fault, repeat, one_kind):
    """Execute a trace of ops ``repeat`` times against the MMU state; returns how many
    ops ran (when recording, the out_* arrays describe the last repetition).

    ops[i]   : OP_* code; addrs[i]: the address or the value written (CR3, CR4, PKRU...);
    args[i]  : for accesses CPL in bits 1:0 and RFLAGS.AC in bit 2; for INVPCID the PCID
               in bits 11:0 and the type in bits 13:12.
    Recording: given arrays, the per-op results go to the out_* arrays (outcome, #PF error
    code, physical address, page size code, and where it was translated: 0 walk, 1 L1,
    2 L2); given None for all five, only the counters and the state change. numba compiles
    the two cases separately (None is its own type) and prunes the recording code from the
    counting one, which leaves the hot loop fewer values to keep in registers: per op about
    10% faster on system calls and on the hit trace (``kaiser-edu bench``), for a second
    compile the first time.
    ``pool``, ``ht`` and ``direct`` are :class:`~kaiser_edu.hw.physmem.PhysMem`'s frames,
    hash table and direct pfn -> slot array. ``one_kind`` says that every op of the trace
    is the same access (op and argument), as :meth:`~kaiser_edu.hw.mmu.Trace.accesses`
    knows of the traces it builds with one kind, CPL and AC (whose columns it makes
    read-only); 2 then need not read those columns.

    Every shortcut below gives the results, counters and state of the plain rules (the
    TLB probed L1 then L2, every size class, every entry's flush stamp checked; a walk
    filling both levels with the first unusable way or else the least recently used one),
    and the property tests hold it to :class:`~kaiser_edu.hw.tlb.ReferenceMMU`, which
    implements only the plain rules. Why each is exact:

    1. *Same page, again* (L1 hits). An access to the same 4 KiB page as the op just
       before it, when that op was an L1 hit, reuses its way: nothing can have changed in
       between, and the way is already its set's most recently used, so even the LRU update
       may be skipped (the order of last uses within the set is the same). If it is also
       the same kind of access (op, CPL, AC), the previous op's verdict and frame are reused
       without a rights check (a successful write left D set, so no dirty assist can be
       due).
    2. *Same-page runs*. The same access (op, CPL, AC) to the same page, op after op, is
       consumed by a tight inner loop doing what 1. does for each: the clock advances by
       one per op, the counters by one L1 hit and one access per op, and only the
       physical address (frame | offset) is computed. A ``one_kind`` trace has no other
       access to cut at, so the op and arg columns are not read. A page that stays the same keeps the
       address canonical, and such a hit cannot fault.
    3. *Page -> way memo* (L1 hits). A direct-mapped memo from 4 KiB page to the L1 way
       that last translated it lets an L1 hit skip the set search. Its key is the page
       *and the current PCID*. It is checked on use (the way must still hold a usable entry
       for this page and PCID: flushes, invalidations and evictions all fail that check),
       and it returns the way the search would as long as no second usable entry for the
       lookup can have appeared since. Two usable entries for one lookup are a global entry
       plus the current PCID's own, and nothing is filled for a page that already has a
       usable entry; so under one PCID a second entry appears only by a global fill, and
       every global fill voids the whole memo (rare: kernel pages under PGE, once per page
       between flushes). A memo made under another PCID is not used: there a global entry
       may have been found first while this PCID's own entry, then unusable, sits earlier
       in the set. CR3 writes and the other ops leave the memo alone.
    4. *4 KiB-only probe*. While neither level may hold a 2 MiB or 1 GiB entry (the
       per-level size masks: a size bit is set by every fill of that size and cleared only
       by a flush of everything, after which no older entry is usable), the probe looks up
       one tag per set, without the loop over size classes. Same ways, same order, same
       stamp checks: the same way is found.
    5. *LRU-only victim search*. The plain fill takes the first way holding nothing
       usable, else the least recently used way. While no flush or invalidation of any kind
       has happened in this MMU's life (``last_any == 0``), a way holds nothing usable only
       if it was never filled, and a never-filled way is exactly one whose last use is 0
       (every fill and every hit writes the clock, which is >= 1). So the first way with
       the smallest last use (strict ``<``) is the plain rule's victim, and the flush
       stamps need not be read.
    6. *Direct frame lookup*. A table read finds its frame's pool slot in ``direct`` (one
       load; 0 means the frame was never written, which reads as zeros) for pfns it
       covers, and in the hash table for the others. Both say the same (PhysMem writes
       both); the walk reads the same qwords either way. Per walk level the last table's
       pfn and slot are remembered for the call (frames never move and a call writes no
       new frame), so the upper levels, the same table walk after walk, skip even that.
    7. *The common access, specialised*. Every access first tries a short path that
       handles only the common cases: the same page as the op before (1), a memo hit (3)
       while the TLB may hold stale or large entries, or else, while neither is so
       (``fast_state``: nothing ever flushed or invalidated, only 4 KiB entries cached, 4
       paging levels), the probe of 4 and a read-only 4-level walk. The walk accepts only
       present entries with no reserved bit, no PS bit above the leaf, A already set (D too
       for a write) and an allowed access: then it writes no memory, and its reads, rights
       and A/D outcome are those of the general walk. In the probe, the loop over a level's
       ways also keeps that level's least recently used way (5): if the level misses, no
       way of it was touched since, so that is the victim its fill takes. Anything else -
       a fault, a dirty assist, a large page, a table beyond the direct array,
       a non-canonical address - makes it give up *before changing any state*, and the
       general code does the op from the start, exactly as if the short path did not exist.
    8. *A memo slot's last verdict*. A memo hit that was allowed records, in its slot, the
       stamp of the TLB entry and the access (op, CPL, AC); the next memo hit with the same
       stamp and access is allowed without the rights check. A stamp names one fill (the
       clock of the walk that made the entry; an L1 copy of an L2 entry keeps its stamp),
       so the same stamp means the same rights bits; and the control registers the check
       reads (CR0.WP, CR4.SMEP/SMAP/PKE, PKRU) can change only by ops that void the whole
       memo (they bump its generation), as a global fill does.
    9. *After a fill*, the general code leaves the state an L1 hit on the new entry would
       leave (1 for the next op, and the memo of 3): the entry is usable, the only one for
       its lookup (nothing is filled while one exists), and its set's most recently used
       way; the access just succeeded through it, with D set if it wrote.
    10. *Recent-fill filter*. ``recent`` (MMU state, kept across calls) holds, per hash
       slot of (page number at a size, size), the fill stamp of the latest walk that
       filled such an entry, non-global entries in the first half and global ones in the
       second. Every entry in the TLB has a stamp no later than its slot's (an L1 copy of an
       L2 entry keeps the older stamp; invalidations only make entries unusable). An entry
       is usable only if its stamp is above the flush threshold of its kind (``thr_ng``,
       ``thr_g``), so when for every size that may be cached both slots of ``va`` are at or
       below their thresholds, no way of either level can hit, and the general code skips
       the search of both levels. This is the TLB miss right after a flush: PTI without
       PCID flushes at every CR3 write, and the pages walked next had their entries
       filled before it (their slots hold those older stamps).
    """
    n = ops.shape[0]
    cr0 = regs[R_CR0]
    cr3 = regs[R_CR3]
    cr4 = regs[R_CR4]
    efer = regs[R_EFER]
    pkru = regs[R_PKRU]
    maxphy = regs[R_MAXPHY]
    nxe = (efer & EFER_NXE) != U0
    addr_mask = ((U1 << maxphy) - U1) & ~PAGE_MASK_LOW
    rsvd_all = ADDR52 & ~((U1 << maxphy) - U1)  # bits 51:MAXPHYADDR
    if not nxe:
        rsvd_all |= NX  # XD is reserved while EFER.NXE=0
    ht_mask = (U1 << ht_bits) - U1
    n_direct = u64(direct.shape[0])
    vabits = u64(56) if (cr4 & CR4_LA57) != U0 else u64(47)  # see _canonical()
    top_ones = ~U0 >> vabits
    top_level = 5 if (cr4 & CR4_LA57) != U0 else 4
    tlb_on = geom[0] != 0
    clock = tstate[T_CLOCK]
    last_all = tstate[T_LAST_ALL]
    last_ng = tstate[T_LAST_NG]
    last_any = tstate[T_LAST_ANY]
    # The TLB geometry and size masks as scalars (read once here, not per probe or fill).
    sizes_l1 = tstate[T_SIZES_L1]  # per TLB level: page sizes that may be cached
    sizes_l2 = tstate[T_SIZES_L2]
    l1_sets_mask = u64(geom[1] - 1)
    l1_ways = u64(geom[2])
    l2_base = u64(geom[1] * geom[2])  # L2's first column
    l2_sets_mask = u64(geom[3] - 1)
    l2_ways = u64(geom[4])
    pcide = (cr4 & CR4_PCIDE) != U0
    pcid = cr3 & PCID_MASK if pcide else U0
    thr_g = last_all
    thr_ng = max(last_all, max(last_ng, pcid_flush[pcid]))
    # Counters live in locals: an array element bumped per access is a memory
    # read-modify-write LLVM cannot keep in a register (it may alias the TLB arrays).
    n_accesses = 0
    n_l1_hits = 0
    n_l2_hits = 0
    n_walks = 0
    n_walk_reads = 0
    n_pf = 0
    n_gp = 0
    n_ad_writes = 0
    n_cr3_writes = 0
    n_flushes = 0
    n_invlpg = 0
    n_invpcid = 0
    n_dirty_assists = 0
    # Per walk level: the pfn of the table it read last and that frame's pool slot + 1
    # (0: never written). Frames never move in the pool and a frame once written stays, so
    # this holds no paging state; it saves the slot lookup, and because its hit is a
    # predicted branch, the next level's load need not wait for the entry that points to
    # its table. Reset per call: the pool may have grown or gained frames in between.
    memo_pfn = np.full(6, ~U0, dtype=np.uint64)
    memo_frame = np.zeros(6, dtype=np.uint64)
    # Memo: 4 KiB page -> the L1 way that translated it last (see the docstring).
    # One row per slot: the key (4 KiB page << 12 | PCID), the L1 way, the generation, and
    # the tag the way held (a way still holding it holds the same entry).
    # Columns 4 and 5: the stamp of the entry and the access (op | CPL, AC << 8) of the last
    # verdict given through this memo slot, which was "allowed" (8 in the docstring).
    memo = np.zeros((MEMO_SLOTS, 8), dtype=np.uint64)
    memo[:, 0] = ~U0
    gen = U1  # bumped by every global fill: memo entries of older generations are void
    prev_vpn = ~U0  # the page of the previous op, if it was an L1 hit (else ~0)
    prev_row = U0
    # ... and what that hit was: the op and its argument, and the frame base and offset mask
    prev_op = np.int64(-1)
    prev_arg = np.int64(-1)
    prev_base = U0
    prev_mask = U0
    prev_size = 0
    done = n * repeat
    stopped = False
    # 4 and 5 apply while this holds; only the general code can end it
    fast_state = last_any == U0 and (sizes_l1 | sizes_l2) <= U1 and top_level == 4
    for rep in range(repeat):
        i = 0
        while i < n:
            op = ops[i]
            if op <= OP_FETCH and tlb_on:
                # --- 7: the common accesses, specialised, op after op; the first op this
                # loop cannot finish goes to the general code below, which does it from the
                # start (see the docstring) ---
                while True:
                    va = addrs[i]
                    arg = args[i]
                    vpn4 = va >> U12
                    if vpn4 == prev_vpn and np.int64(op) == prev_op and np.int64(arg) == prev_arg:
                        # 1 and 2: the same access to the page just used, op after op: find
                        # the run of the same page, then cut it at the first other access
                        end = i + 1
                        while end < n and (addrs[end] >> U12) == vpn4:
                            end += 1
                        j = end  # (one_kind: every op of the trace is this access)
                        if not one_kind:
                            j = i + 1
                            while j < end and ops[j] == op and args[j] == arg:
                                j += 1
                        if out_pa is not None:
                            for k in range(i, j):
                                out_outcome[k] = OUT_OK
                                out_error[k] = 0
                                out_pa[k] = prev_base | (addrs[k] & prev_mask)
                                out_size[k] = prev_size
                                out_tlb[k] = 1
                        run = j - i
                        clock += u64(run)
                        n_accesses += run
                        n_l1_hits += run
                        i = j - 1
                    else:
                        now = clock + U1
                        data = U0
                        user_access = (arg & 3) == 3
                        ac = (arg & 4) != 0
                        key_ng = U0
                        key_g = U0
                        tag = U0
                        stamp = now
                        hit = ~U0
                        where = 0
                        victim1 = U0
                        victim2 = U0
                        key = U0  # set by a memo hit (3)
                        slot = U0
                        verdict = U0
                        known_ok = False
                        if vpn4 == prev_vpn:  # (the page of a translated address: canonical)
                            hit = prev_row
                            where = 1
                        elif not fast_state:  # 3: the memo (a page it knows is canonical)
                            key = (vpn4 << U12) | pcid
                            slot = _memo_slot(vpn4, pcid)
                            if memo[slot, 0] != key or memo[slot, 2] != gen:
                                break
                            r = memo[slot, 1]
                            tag = memo[slot, 3]
                            if tlb[0, r] != tag or tlb[1, r] <= (thr_g if (tag & u64(8)) != U0 else thr_ng):
                                break
                            hit = r
                            where = 1
                            verdict = u64(op) | (u64(arg) << u64(8))
                            known_ok = memo[slot, 4] == tlb[1, r] and memo[slot, 5] == verdict
                        elif not _canonical(va, vabits, top_ones):
                            break
                        else:  # 4: probe, L1 then L2; nothing was ever flushed: stamp != 0
                            key_ng = (vpn4 << u64(16)) | (pcid << u64(4))
                            key_g = (vpn4 << u64(16)) | u64(8)
                            for lvl in range(2):
                                row = ((vpn4 & l1_sets_mask) * l1_ways if lvl == 0
                                       else l2_base + (vpn4 & l2_sets_mask) * l2_ways)
                                victim = row  # 5: meanwhile, the way a fill of this level takes
                                oldest = now
                                for r in range(row, row + (l1_ways if lvl == 0 else l2_ways)):
                                    tag = tlb[0, r]
                                    if (tag == key_ng or tag == key_g) and tlb[1, r] != U0:  # noqa: SIM109
                                        hit = r
                                        break
                                    lru_r = tlb[3, r]
                                    older = lru_r < oldest
                                    victim = r if older else victim
                                    oldest = lru_r if older else oldest
                                if lvl == 0:
                                    victim1 = victim
                                else:
                                    victim2 = victim
                                if hit != ~U0:
                                    where = lvl + 1
                                    break
                        size_mask = PAGE_MASK_LOW
                        size_code = 0
                        if hit != ~U0:
                            data = tlb[2, hit]
                            if not known_ok:
                                denied, pk = _rights_fault(op, user_access, ac, (data & U1) != U0,
                                                           (data & U2) != U0, (data & u64(4)) != U0,
                                                           (data >> u64(4)) & u64(0xF), cr0, cr4, pkru)
                                if denied or (op == OP_WRITE and (data & u64(8)) == U0):
                                    break  # a #PF or a dirty assist: the general code's
                                if where == 1 and key != U0:  # 8: a memo hit's verdict, kept
                                    memo[slot, 4] = tlb[1, hit]
                                    memo[slot, 5] = verdict
                            if vpn4 == prev_vpn:  # the entry of the op before: its size
                                size_code = prev_size
                                size_mask = prev_mask
                            else:  # (tag: the entry's, from the memo or the probe)
                                size_code = np.int64(tag & U3)
                                size_mask = (U1 << u64(12 + 9 * size_code)) - U1
                                tlb[3, hit] = now
                            n_fill = 0
                            if where == 2:  # copied into L1, with the L2 entry's stamp
                                stamp = tlb[1, hit]
                                n_fill = 1
                        else:
                            # the walk, read-only: anything but present 4 KiB mappings with
                            # no reserved bit, A (and D for a write) already set and the
                            # access allowed goes to the general code, which redoes it
                            table = cr3 & addr_mask
                            and_bits = ~U0
                            or_bits = U0
                            entry = U0
                            idx = U0
                            level = 4
                            ok = True
                            while level > 0:
                                entry_pa = table | (((va >> u64(3 + 9 * level)) & U511) << U3)
                                pfn = entry_pa >> U12
                                frame = memo_frame[level]
                                if pfn != memo_pfn[level]:
                                    if pfn >= n_direct:
                                        ok = False
                                        break
                                    frame = u64(direct[pfn])
                                    if level > 1:  # (leaf tables change too often to memoise)
                                        memo_pfn[level] = pfn
                                        memo_frame[level] = frame
                                if frame == U0:
                                    ok = False
                                    break
                                idx = (frame - U1) * U512 + ((entry_pa & PAGE_MASK_LOW) >> U3)
                                entry = pool[idx]
                                must = P | ACC
                                if level == 1 and op == OP_WRITE:
                                    must |= DIRTY
                                if (entry & must) != must or (entry & (rsvd_all | (PS if level > 1 else U0))) != U0:
                                    ok = False
                                    break
                                and_bits &= entry
                                or_bits |= entry
                                table = entry & addr_mask
                                level -= 1
                            if not ok:
                                break
                            pkey = (entry >> PKEY_SHIFT) & u64(0xF)
                            user_page = (and_bits & US) != U0
                            writable = (and_bits & RW) != U0
                            nx = nxe and (or_bits & NX) != U0
                            denied, pk = _rights_fault(op, user_access, ac, user_page, writable,
                                                       nx, pkey, cr0, cr4, pkru)
                            if denied:
                                break
                            data = _tlb_data(table, pkey, user_page, writable, nx, entry)
                            global_page = (entry & GLOBAL) != U0 and (cr4 & CR4_PGE) != U0
                            tag = key_g if global_page else key_ng
                            stamp = now
                            n_fill = 2
                            n_walks += 1
                            n_walk_reads += 4
                        # 5: fill the first least recently used way, found by the probe (which
                        # searched every way of the levels it missed; nothing was ever flushed)
                        for lvl in range(n_fill):
                            victim = victim1 if lvl == 0 else victim2
                            tlb[0, victim] = tag
                            tlb[1, victim] = stamp
                            tlb[2, victim] = data
                            tlb[3, victim] = now
                            if lvl == 0:
                                hit = victim
                        if where == 1:
                            n_l1_hits += 1
                        elif where == 2:
                            n_l2_hits += 1
                        if n_fill > 0:
                            sizes_l1 |= U1
                            if n_fill == 2:
                                sizes_l2 |= U1
                                recent[_recent_index(vpn4, U0, tag)] = now  # 10
                            if (tag & u64(8)) != U0:
                                gen += U1  # a global entry may now shadow a memoised one
                        prev_vpn = vpn4
                        prev_row = hit
                        prev_op = np.int64(op)
                        prev_arg = np.int64(arg)
                        prev_base = data & ~size_mask
                        prev_mask = size_mask
                        prev_size = size_code
                        clock = now
                        n_accesses += 1
                        if out_pa is not None:
                            out_outcome[i] = OUT_OK
                            out_error[i] = 0
                            out_pa[i] = prev_base | (va & prev_mask)
                            out_size[i] = prev_size
                            out_tlb[i] = where
                    i += 1
                    if i >= n:
                        break
                    op = ops[i]
                    if op > OP_FETCH:
                        break
                if i >= n:
                    break
            clock += U1
            same_page = prev_vpn  # only the op right after an L1 hit may reuse its way
            prev_vpn = ~U0
            va = addrs[i]
            arg = args[i]
            outcome = OUT_OK
            err = 0
            pa = U0
            size_code = 0
            where = 0
            if op <= OP_FETCH:
                n_accesses += 1
                user_access = (arg & 3) == 3
                ac = (arg & 4) != 0
                if not _canonical(va, vabits, top_ones):
                    outcome = OUT_GP
                else:
                    # --- TLB lookup: L1, then L2 (a usable tag for this PCID, or global) ---
                    hit = ~U0
                    same_kind = False
                    vpn4 = va >> U12
                    if tlb_on:
                        key = U0
                        slot = U0
                        if vpn4 == same_page:  # 1: nothing changed since, already MRU
                            hit = prev_row
                            where = 1
                            # the same kind of access (op, CPL, AC) as well: the same verdict
                            same_kind = np.int64(op) == prev_op and np.int64(arg) == prev_arg
                        else:  # 3: the memo
                            key = (vpn4 << U12) | pcid
                            slot = _memo_slot(vpn4, pcid)
                            if memo[slot, 0] == key and memo[slot, 2] == gen:
                                r = memo[slot, 1]
                                tag = memo[slot, 3]
                                if tlb[0, r] == tag and tlb[1, r] > (thr_g if (tag & u64(8)) != U0 else thr_ng):
                                    hit = r
                                    where = 1
                                    tlb[3, r] = clock
                        # 10: may any usable entry translate va? Else neither level is searched
                        cached = sizes_l1 | sizes_l2
                        maybe = False
                        if hit == ~U0:
                            for s in range(3):
                                if (cached >> u64(s)) & U1 != U0:
                                    h = _recent_slot(va >> u64(12 + 9 * s), u64(s))
                                    if recent[h] > thr_ng or recent[h + u64(RECENT_SLOTS)] > thr_g:
                                        maybe = True
                                        break
                        if maybe:
                            if cached <= U1:
                                # 4: only 4 KiB entries may be cached: one tag per set and level
                                key_ng = (vpn4 << u64(16)) | (pcid << u64(4))
                                key_g = (vpn4 << u64(16)) | u64(8)
                                for lvl in range(2):
                                    row = ((vpn4 & l1_sets_mask) * l1_ways if lvl == 0
                                           else l2_base + (vpn4 & l2_sets_mask) * l2_ways)
                                    for r in range(row, row + (l1_ways if lvl == 0 else l2_ways)):
                                        tag = tlb[0, r]
                                        if ((tag == key_ng and tlb[1, r] > thr_ng)
                                                or (tag == key_g and tlb[1, r] > thr_g)):
                                            hit = r
                                            where = lvl + 1
                                            break
                                    if hit != ~U0:
                                        break
                            else:
                                for lvl in range(2):
                                    lvl_sizes = sizes_l1 if lvl == 0 else sizes_l2
                                    lvl_base = U0 if lvl == 0 else l2_base
                                    lvl_mask = l1_sets_mask if lvl == 0 else l2_sets_mask
                                    lvl_ways = l1_ways if lvl == 0 else l2_ways
                                    for s in range(3):
                                        if (lvl_sizes >> u64(s)) & U1 == U0:
                                            continue
                                        vpn = va >> u64(12 + 9 * s)
                                        key_ng = (vpn << u64(16)) | (pcid << u64(4)) | u64(s)
                                        key_g = (vpn << u64(16)) | u64(8) | u64(s)
                                        row = lvl_base + (vpn & lvl_mask) * lvl_ways
                                        for r in range(row, row + lvl_ways):
                                            tag = tlb[0, r]
                                            if ((tag == key_ng and tlb[1, r] > thr_ng)
                                                    or (tag == key_g and tlb[1, r] > thr_g)):
                                                hit = r
                                                break
                                        if hit != ~U0:
                                            break
                                    if hit != ~U0:
                                        where = lvl + 1
                                        break
                            if hit != ~U0:
                                tlb[3, hit] = clock
                                if where == 1:
                                    memo[slot, 0] = key
                                    memo[slot, 1] = hit
                                    memo[slot, 2] = gen
                                    memo[slot, 3] = tlb[0, hit]
                                    memo[slot, 4] = U0  # no verdict yet (8)
                    n_fill = 0  # TLB levels to fill, from L1: none, L1 (after an L2 hit), or both
                    l1_victim = U0
                    size_mask = PAGE_MASK_LOW
                    tag = U0
                    stamp = clock
                    data = U0
                    if same_kind:
                        n_l1_hits += 1
                        size_code = prev_size
                        pa = prev_base | (va & prev_mask)
                        prev_vpn = vpn4
                    elif hit != ~U0:
                        # Rights come from the TLB entry, not from memory (SDM 4.10.2.2): a
                        # stale read-only entry gives a spurious #PF that drops it (4.10.4.3).
                        data = tlb[2, hit]
                        size_code = np.int64(tlb[0, hit] & U3)
                        size_mask = (U1 << u64(12 + 9 * size_code)) - U1
                        denied, pk = _rights_fault(op, user_access, ac, (data & U1) != U0,
                                                   (data & U2) != U0, (data & u64(4)) != U0,
                                                   (data >> u64(4)) & u64(0xF), cr0, cr4, pkru)
                        if denied:
                            outcome = OUT_PF
                            err = _pf_error_code(op, user_access, cr4, efer) | PF_PROT
                            if pk:
                                err |= PF_PK
                            size_code = 0
                        elif op == OP_WRITE and (data & u64(8)) == U0:
                            # A permitted write through an entry cached with D=0: the CPU walks
                            # to set D in memory (SDM 4.8); the clean entries are replaced.
                            n_dirty_assists += 1
                            hit = ~U0
                            _tlb_invalidate_page(tlb, 0, np.int64(l1_sets_mask) + 1, np.int64(l1_ways),
                                                 sizes_l1, va, pcid, True, True)
                            _tlb_invalidate_page(tlb, np.int64(l2_base), np.int64(l2_sets_mask) + 1,
                                                 np.int64(l2_ways), sizes_l2, va, pcid, True, True)
                            last_any = clock
                        else:
                            pa = (data & ~size_mask) | (va & size_mask)
                            if where == 1:
                                n_l1_hits += 1
                                prev_vpn = vpn4
                                prev_row = hit
                                prev_op = np.int64(op)
                                prev_arg = np.int64(arg)
                                prev_base = data & ~size_mask
                                prev_mask = size_mask
                                prev_size = size_code
                            else:
                                n_l2_hits += 1
                                n_fill = 1  # copy the L2 entry into L1
                                tag = tlb[0, hit]
                                stamp = tlb[1, hit]
                    if outcome == OUT_OK and hit == ~U0:
                        # --- the page walk (walk.py is the readable version of this) ---
                        where = 0
                        n_walks += 1
                        table = cr3 & addr_mask
                        user_page = True
                        writable = True
                        nx = False
                        entry = U0
                        idx = U0
                        level = top_level
                        fault = False
                        while True:
                            shift = u64(12 + 9 * (level - 1))
                            entry_pa = table | (((va >> shift) & U511) << U3)
                            # physical memory: the frame's pool slot (6: direct, else hashed)
                            pfn = entry_pa >> U12
                            frame = memo_frame[level]  # pool slot + 1; 0: never written
                            if pfn != memo_pfn[level]:
                                frame = U0
                                if pfn < n_direct:
                                    frame = u64(direct[pfn])
                                else:
                                    h = frame_hash(pfn, ht_bits)
                                    while True:
                                        hkey = ht[h * U2]
                                        if hkey == pfn + U1:
                                            frame = ht[h * U2 + U1] + U1
                                            break
                                        if hkey == U0:
                                            break
                                        h = (h + U1) & ht_mask
                                memo_pfn[level] = pfn
                                memo_frame[level] = frame
                            n_walk_reads += 1
                            if frame == U0:
                                entry = U0
                                fault = True  # not present: P=0 in the error code
                                break
                            idx = (frame - U1) * U512 + ((entry_pa & PAGE_MASK_LOW) >> U3)
                            entry = pool[idx]
                            if (entry & P) == U0:
                                fault = True
                                break
                            leaf = level == 1 or (level <= 3 and (entry & PS) != U0)
                            bad = rsvd_all
                            if level >= 4:
                                bad |= PS  # no 512 GiB pages
                            elif leaf and level > 1:
                                bad |= ((U1 << shift) - U1) & ~((U1 << U13) - U1)
                            if (entry & bad) != U0:
                                fault = True
                                err = PF_PROT | PF_RSVD
                                break
                            user_page = user_page and (entry & US) != U0
                            writable = writable and (entry & RW) != U0
                            nx = nx or (nxe and (entry & NX) != U0)
                            if leaf:
                                break
                            if (entry & ACC) == U0:  # a table entry used on the way: set A
                                pool[idx] = entry | ACC  # (kept even if a lower level faults)
                                n_ad_writes += 1
                            table = entry & addr_mask
                            level -= 1
                        pkey = (entry >> PKEY_SHIFT) & u64(0xF)
                        if not fault:
                            denied, pk = _rights_fault(op, user_access, ac, user_page, writable,
                                                       nx, pkey, cr0, cr4, pkru)
                            if denied:
                                fault = True
                                err = PF_PROT
                                if pk:
                                    err |= PF_PK
                        if fault:
                            outcome = OUT_PF
                            err |= _pf_error_code(op, user_access, cr4, efer)
                            size_code = 0  # (a dirty assist may have set it from the TLB)
                        else:
                            new = entry | ACC
                            if op == OP_WRITE:
                                new |= DIRTY
                            if new != entry:
                                pool[idx] = new
                                n_ad_writes += 1
                                entry = new
                            size_code = level - 1
                            size_mask = (U1 << u64(12 + 9 * size_code)) - U1
                            base = entry & addr_mask & ~size_mask
                            pa = base | (va & size_mask)
                            data = _tlb_data(base, pkey, user_page, writable, nx, entry)
                            tag = (va >> u64(12 + 9 * size_code)) << u64(16) | u64(size_code)
                            if (entry & GLOBAL) != U0 and (cr4 & CR4_PGE) != U0:
                                tag |= u64(8)  # global: matches any PCID, so no PCID in the tag
                            else:
                                tag |= pcid << u64(4)
                            n_fill = 2
                    # --- TLB fill: a free way (nothing usable in it), else the LRU way ---
                    if tlb_on:
                        for lvl in range(n_fill):
                            lvl_mask = l1_sets_mask if lvl == 0 else l2_sets_mask
                            lvl_ways = l1_ways if lvl == 0 else l2_ways
                            row = (U0 if lvl == 0 else l2_base) + ((tag >> u64(16)) & lvl_mask) * lvl_ways
                            victim = row
                            oldest = clock + U1
                            if last_any == U0:  # 5: the first least recently used way
                                for r in range(row, row + lvl_ways):
                                    lru_r = tlb[3, r]  # argmin written as selects: no branch
                                    older = lru_r < oldest  # to mispredict on random LRU ages
                                    victim = r if older else victim
                                    oldest = lru_r if older else oldest
                            else:
                                for r in range(row, row + lvl_ways):
                                    stamp_r = tlb[1, r]
                                    if stamp_r <= last_any:  # filled before some flush: check it
                                        tag_r = tlb[0, r]
                                        if (stamp_r == U0 or stamp_r <= last_all or (
                                                (tag_r & u64(8)) == U0 and (
                                                    stamp_r <= last_ng or stamp_r <= pcid_flush[(tag_r >> u64(4)) & PCID_MASK]))):
                                            victim = r
                                            break
                                    lru_r = tlb[3, r]
                                    older = lru_r < oldest
                                    victim = r if older else victim
                                    oldest = lru_r if older else oldest
                            tlb[0, victim] = tag
                            tlb[1, victim] = stamp
                            tlb[2, victim] = data
                            tlb[3, victim] = clock
                            if lvl == 0:
                                sizes_l1 |= U1 << (tag & U3)
                                l1_victim = victim
                            else:
                                sizes_l2 |= U1 << (tag & U3)
                        if n_fill == 2:  # 10: a walk's fill (an L1 copy keeps an older stamp)
                            recent[_recent_index(tag >> u64(16), tag & U3, tag)] = clock
                        if n_fill > 0 and (tag & u64(8)) != U0:
                            gen += U1  # a global entry may now shadow a memoised one
                        if n_fill > 0:  # 9: the new L1 entry, as an L1 hit on it would leave it
                            prev_vpn = vpn4
                            prev_row = l1_victim
                            prev_op = np.int64(op)
                            prev_arg = np.int64(arg)
                            prev_base = pa & ~size_mask
                            prev_mask = size_mask
                            prev_size = size_code
                            if key != U0:
                                memo[slot, 0] = key
                                memo[slot, 1] = l1_victim
                                memo[slot, 2] = gen
                                memo[slot, 3] = tag
                                memo[slot, 4] = U0
                    if outcome == OUT_PF:
                        n_pf += 1
                        if tlb_on:  # a #PF drops the faulting page's entries (SDM 4.10.4.1)
                            _tlb_invalidate_page(tlb, 0, np.int64(l1_sets_mask) + 1, np.int64(l1_ways),
                                                 sizes_l1, va, pcid, True, True)
                            _tlb_invalidate_page(tlb, np.int64(l2_base), np.int64(l2_sets_mask) + 1,
                                                 np.int64(l2_ways), sizes_l2, va, pcid, True, True)
                            last_any = clock
            else:
                if op == OP_MOV_CR3:
                    value = va & ~NOFLUSH
                    reserved = ~((U1 << maxphy) - U1) & ~NOFLUSH
                    if (value & reserved) != U0 or (not pcide and (va & NOFLUSH) != U0):
                        outcome = OUT_GP  # reserved CR3 bits (SDM Tables 4-12, 4-13)
                    else:
                        n_cr3_writes += 1
                        cr3 = value
                        if pcide:
                            pcid = cr3 & PCID_MASK
                            if (va & NOFLUSH) == U0:
                                pcid_flush[pcid] = clock
                                n_flushes += 1
                        else:
                            last_ng = clock  # PCIDE=0: every non-global entry goes
                            n_flushes += 1
                elif op == OP_INVLPG:
                    n_invlpg += 1
                    if tlb_on and _canonical(va, vabits, top_ones):  # non-canonical: a NOP
                        _tlb_invalidate_page(tlb, 0, np.int64(l1_sets_mask) + 1, np.int64(l1_ways),
                                             sizes_l1, va, pcid, True, True)
                        _tlb_invalidate_page(tlb, np.int64(l2_base), np.int64(l2_sets_mask) + 1,
                                             np.int64(l2_ways), sizes_l2, va, pcid, True, True)
                elif op == OP_INVPCID:
                    n_invpcid += 1
                    kind = (arg >> 12) & 3
                    target = u64(arg & 0xFFF)
                    if kind <= 1 and not pcide and target != U0:
                        outcome = OUT_GP  # PCIDE=0: only PCID 0 may be named (SDM INVPCID)
                    elif kind == 0 and not _canonical(va, vabits, top_ones):
                        outcome = OUT_GP
                    elif kind == 0:
                        if tlb_on:
                            _tlb_invalidate_page(tlb, 0, np.int64(l1_sets_mask) + 1, np.int64(l1_ways),
                                                 sizes_l1, va, target, False, True)
                            _tlb_invalidate_page(tlb, np.int64(l2_base), np.int64(l2_sets_mask) + 1,
                                                 np.int64(l2_ways), sizes_l2, va, target, False, True)
                    elif kind == 1:
                        pcid_flush[target] = clock
                        n_flushes += 1
                    elif kind == 2:
                        last_all = clock
                        sizes_l1 = U0
                        sizes_l2 = U0
                        n_flushes += 1
                    else:
                        last_ng = clock
                        n_flushes += 1
                elif op == OP_MOV_CR4:
                    changed = cr4 ^ va
                    if ((changed & CR4_LA57) != U0 or (va & CR4_PAE) == U0
                            or ((va & CR4_PCIDE) != U0 and not pcide
                                and (cr3 & PCID_MASK) != U0)):
                        outcome = OUT_GP  # LA57 changes only outside 64-bit mode; PAE keeps it
                    else:
                        if (changed & CR4_PGE) != U0 or (pcide and (va & CR4_PCIDE) == U0):
                            last_all = clock  # everything, globals included (SDM 4.10.4.1)
                            sizes_l1 = U0
                            sizes_l2 = U0
                            n_flushes += 1
                        elif (changed & CR4_SMEP) != U0 and (va & CR4_SMEP) != U0:
                            pcid_flush[pcid] = clock
                            n_flushes += 1
                        cr4 = va
                        pcide = (cr4 & CR4_PCIDE) != U0
                        pcid = cr3 & PCID_MASK if pcide else U0
                        gen += U1  # rights may differ now: memoised verdicts are void (8)
                elif op == OP_WRPKRU:
                    pkru = va & u64(0xFFFFFFFF)
                    gen += U1  # (8)
                elif op == OP_MOV_CR0:
                    if (va & CR0_PG) == U0 or (va & CR0_PE) == U0:
                        outcome = OUT_GP  # leaving paging is not simulated
                    else:
                        cr0 = va
                        gen += U1  # (8)
                else:
                    outcome = OUT_GP  # unknown op: refused by mmu.py before we get here
                thr_g = last_all
                thr_ng = max(last_all, max(last_ng, pcid_flush[pcid]))
                last_any = clock  # conservatively: this op may have flushed or invalidated
            if outcome == OUT_GP:
                n_gp += 1
            if out_pa is not None:
                out_outcome[i] = outcome
                out_error[i] = err
                out_pa[i] = pa
                out_size[i] = size_code
                out_tlb[i] = where
            if stop_on_fault and outcome != OUT_OK:
                done = rep * n + i + 1
                stopped = True
                break
            fast_state = last_any == U0 and (sizes_l1 | sizes_l2) <= U1 and top_level == 4
            i += 1
        if stopped:
            break
    regs[R_CR0] = cr0
    regs[R_CR3] = cr3
    regs[R_CR4] = cr4
    regs[R_PKRU] = pkru
    tstate[T_CLOCK] = clock
    tstate[T_LAST_ALL] = last_all
    tstate[T_LAST_NG] = last_ng
    tstate[T_SIZES_L1] = sizes_l1
    tstate[T_SIZES_L2] = sizes_l2
    tstate[T_LAST_ANY] = last_any
    counters[C_OPS] += done
    counters[C_ACCESSES] += n_accesses
    counters[C_L1_HITS] += n_l1_hits
    counters[C_L2_HITS] += n_l2_hits
    counters[C_WALKS] += n_walks
    counters[C_WALK_READS] += n_walk_reads
    counters[C_PF] += n_pf
    counters[C_GP] += n_gp
    counters[C_AD_WRITES] += n_ad_writes
    counters[C_CR3_WRITES] += n_cr3_writes
    counters[C_FLUSHES] += n_flushes
    counters[C_INVLPG] += n_invlpg
    counters[C_INVPCID] += n_invpcid
    counters[C_DIRTY_ASSISTS] += n_dirty_assists
    return done
