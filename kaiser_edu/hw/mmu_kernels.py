"""numba kernels of the MMU: page walk, two-level PCID-tagged TLB, and the trace loop.

The same rules as :mod:`kaiser_edu.hw.walk` (read that first: it is the specification),
written for speed. Conventions, all of them forced by numba's typing (recipes.md):

* addresses, entries, stamps and register values are ``uint64`` throughout; constants are
  ``np.uint64`` module globals, frozen into the compiled code;
* every helper that takes arrays is ``inline="always"``, so the per-access path is a single
  function body with no reference-counted calls;
* nothing here allocates: state lives in arrays owned by :class:`kaiser_edu.hw.mmu.MMU`.

TLB model (SDM 4.10.2-4.10.4). Two set-associative levels, L1 then L2, each a table of
``sets * ways`` rows of 4 qwords::

    row[0] tag    = vpn << 16 | pcid << 4 | global << 3 | size   (size 0/1/2 = 4K/2M/1G;
                    global entries keep pcid 0: they match any PCID)
    row[1] stamp  = the op clock when the entry was filled (0 = invalidated)
    row[2] data   = page frame address | rights: U, W, NX, D in bits 0-3, pkey in bits 4-7
    row[3] lru    = the op clock of the last use

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

# Register file layout.
R_CR0, R_CR3, R_CR4, R_EFER, R_PKRU, R_MAXPHY = 0, 1, 2, 3, 4, 5
# TLB bookkeeping layout (uint64): the op clock, the last full flush, the last
# all-non-global flush, and per level a bit mask of the page sizes that may be cached.
T_CLOCK, T_LAST_ALL, T_LAST_NG, T_SIZES_L1, T_SIZES_L2 = 0, 1, 2, 3, 4
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
def _read_entry(pool, ht, ht_bits, pa):
    """The qword at physical address ``pa`` and its pool index (-1 if never written)."""
    pfn = pa >> U12
    key = pfn + U1
    mask = (U1 << ht_bits) - U1
    i = frame_hash(pfn, ht_bits)
    while True:
        k = ht[np.int64(i) * 2]
        if k == key:
            idx = np.int64(ht[np.int64(i) * 2 + 1]) * 512 + np.int64((pa & PAGE_MASK_LOW) >> U3)
            return pool[idx], idx
        if k == U0:
            return U0, np.int64(-1)
        i = (i + U1) & mask


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
def _walk(pool, ht, ht_bits, va, access, user_access, ac, cr0, cr3, cr4, efer, pkru, maxphy,
          set_ad, counters):
    """Walk the tables for one access. Returns (outcome, error_code, pa, size_code, data):
    ``data`` is the TLB data word (frame | rights) for a successful translation."""
    levels = 5 if (cr4 & CR4_LA57) != U0 else 4
    nxe = (efer & EFER_NXE) != U0
    addr_mask = ((U1 << maxphy) - U1) & ~PAGE_MASK_LOW
    rsvd = ADDR52 & ~((U1 << maxphy) - U1)
    if not nxe:
        rsvd |= NX
    err = 0
    if access == OP_WRITE:
        err |= PF_WRITE
    if user_access:
        err |= PF_USER
    if access == OP_FETCH and ((cr4 & CR4_SMEP) != U0 or nxe):
        err |= PF_INSTR
    table = cr3 & addr_mask
    user_page = True
    writable = True
    nx = False
    entry = U0
    pkey = U0
    idx = np.int64(-1)
    level = levels
    # Pool indices of the table entries that led here (their A bits get set).
    i5 = np.int64(-1)
    i4 = np.int64(-1)
    i3 = np.int64(-1)
    i2 = np.int64(-1)
    fault = -1
    while level >= 1:
        shift = u64(12 + 9 * (level - 1))
        entry_pa = table | (((va >> shift) & U511) << U3)
        entry, idx = _read_entry(pool, ht, ht_bits, entry_pa)
        counters[C_WALK_READS] += 1
        if (entry & P) == U0:
            fault = err
            break
        leaf = level == 1 or (level <= 3 and (entry & PS) != U0)
        bad = rsvd
        if level >= 4:
            bad |= PS
        elif leaf and level > 1:
            bad |= ((U1 << shift) - U1) & ~((U1 << U13) - U1)
        if (entry & bad) != U0:
            fault = err | PF_PROT | PF_RSVD
            break
        user_page = user_page and (entry & US) != U0
        writable = writable and (entry & RW) != U0
        nx = nx or (nxe and (entry & NX) != U0)
        if leaf:
            break
        if level == 5:
            i5 = idx
        elif level == 4:
            i4 = idx
        elif level == 3:
            i3 = idx
        else:
            i2 = idx
        table = entry & addr_mask
        level -= 1

    if fault < 0:
        pkey = (entry >> PKEY_SHIFT) & u64(0xF)
        denied, pk = _rights_fault(access, user_access, ac, user_page, writable, nx, pkey,
                                   cr0, cr4, pkru)
        if denied:
            fault = err | PF_PROT
            if pk:
                fault |= PF_PK
    if set_ad:
        # A in every table entry that led to the leaf (or to the failing level).
        for ti in (i5, i4, i3, i2):
            if ti >= 0 and (pool[ti] & ACC) == U0:
                pool[ti] |= ACC
                counters[C_AD_WRITES] += 1
    if fault >= 0:
        return OUT_PF, fault, U0, 0, U0
    size_code = level - 1
    size_mask = (U1 << u64(12 + 9 * size_code)) - U1
    base = entry & addr_mask & ~size_mask
    if set_ad:
        new = entry | ACC
        if access == OP_WRITE:
            new |= DIRTY
        if new != entry:
            pool[idx] = new
            counters[C_AD_WRITES] += 1
            entry = new
    data = base | (pkey << u64(4))
    if user_page:
        data |= u64(1)
    if writable:
        data |= u64(2)
    if nx:
        data |= u64(4)
    if (entry & DIRTY) != U0:
        data |= u64(8)
    if (entry & GLOBAL) != U0 and (cr4 & CR4_PGE) != U0:
        data |= u64(1 << 8)  # marks a global translation (moved into the tag on insert)
    return OUT_OK, 0, base | (va & size_mask), size_code, data


@njit(inline="always")
def _entry_valid(tlb, r, last_all, last_ng, pcid_flush):
    tag = tlb[r, 0]
    stamp = tlb[r, 1]
    if stamp == U0 or stamp <= last_all:
        return False
    if (tag >> U3) & U1:
        return True
    return stamp > last_ng and stamp > pcid_flush[np.int64((tag >> u64(4)) & PCID_MASK)]


@njit(inline="always")
def _tlb_probe(tlb, base, nsets, nways, size_bits, va, pcid, thr_ng, thr_g):
    """Row of a usable entry translating ``va`` for ``pcid`` (or a global one), or -1."""
    for s in range(3):
        if (size_bits >> u64(s)) & U1 == U0:
            continue
        vpn = va >> u64(12 + 9 * s)
        key_ng = (vpn << u64(16)) | (pcid << u64(4)) | u64(s)
        key_g = (vpn << u64(16)) | u64(8) | u64(s)
        row = base + np.int64(vpn & u64(nsets - 1)) * nways
        for w in range(nways):
            tag = tlb[row + w, 0]
            if tag == key_ng:
                if tlb[row + w, 1] > thr_ng:
                    return row + w
            elif tag == key_g:
                if tlb[row + w, 1] > thr_g:
                    return row + w
    return np.int64(-1)


@njit(inline="always")
def _tlb_fill(tlb, base, nsets, nways, tag, stamp, data, clock, last_all, last_ng, pcid_flush):
    """Place an entry: over a stale copy of the same tag, else a free way, else the LRU."""
    vpn = tag >> u64(16)
    row = base + np.int64(vpn & u64(nsets - 1)) * nways
    victim = np.int64(-1)
    for w in range(nways):
        if tlb[row + w, 0] == tag:
            victim = row + w
            break
    if victim < 0:
        oldest = clock + U1
        for w in range(nways):
            r = row + w
            if not _entry_valid(tlb, r, last_all, last_ng, pcid_flush):
                victim = r
                break
            if tlb[r, 3] < oldest:
                oldest = tlb[r, 3]
                victim = r
    tlb[victim, 0] = tag
    tlb[victim, 1] = stamp
    tlb[victim, 2] = data
    tlb[victim, 3] = clock


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
            tag = tlb[row + w, 0]
            if (with_pcid and tag == key_ng) or (with_global and tag == key_g):
                if tlb[row + w, 1] != U0:
                    tlb[row + w, 1] = U0
                    n += 1
    return n


@njit(cache=True)
def run_trace(ops, addrs, args, pool, ht, ht_bits, regs, tlb, geom, tstate, pcid_flush,
              counters, out_outcome, out_error, out_pa, out_size, out_tlb, record,
              stop_on_fault):
    """Execute a trace of ops against the MMU state; returns how many ops ran.

    ops[i]   : OP_* code; addrs[i]: the address or the value written (CR3, CR4, PKRU...);
    args[i]  : for accesses CPL in bits 1:0 and RFLAGS.AC in bit 2; for INVPCID the PCID
               in bits 11:0 and the type in bits 13:12.
    With ``record`` the per-op results go to the out_* arrays (outcome, #PF error code,
    physical address, page size code, and where it was translated: 0 walk, 1 L1, 2 L2).
    """
    n = ops.shape[0]
    cr0 = regs[R_CR0]
    cr3 = regs[R_CR3]
    cr4 = regs[R_CR4]
    efer = regs[R_EFER]
    pkru = regs[R_PKRU]
    maxphy = regs[R_MAXPHY]
    tlb_on = geom[0] != 0
    l1_sets = geom[1]
    l1_ways = geom[2]
    l2_sets = geom[3]
    l2_ways = geom[4]
    l2_base = l1_sets * l1_ways
    clock = tstate[T_CLOCK]
    last_all = tstate[T_LAST_ALL]
    last_ng = tstate[T_LAST_NG]
    sizes1 = tstate[T_SIZES_L1]
    sizes2 = tstate[T_SIZES_L2]
    pcide = (cr4 & CR4_PCIDE) != U0
    pcid = cr3 & PCID_MASK if pcide else U0
    thr_g = last_all
    thr_ng = max(last_all, max(last_ng, pcid_flush[np.int64(pcid)]))
    done = n
    for i in range(n):
        clock += U1
        op = ops[i]
        va = addrs[i]
        arg = args[i]
        counters[C_OPS] += 1
        outcome = OUT_OK
        err = 0
        pa = U0
        size_code = 0
        where = 0
        if op <= OP_FETCH:
            counters[C_ACCESSES] += 1
            user_access = (arg & 3) == 3
            ac = (arg & 4) != 0
            vabits = u64(56) if (cr4 & CR4_LA57) != U0 else u64(47)
            top = va >> vabits
            if top != U0 and top != (~U0 >> vabits):
                outcome = OUT_GP
            else:
                hit = np.int64(-1)
                if tlb_on:
                    hit = _tlb_probe(tlb, 0, l1_sets, l1_ways, sizes1, va, pcid, thr_ng, thr_g)
                    where = 1
                    if hit < 0:
                        hit2 = _tlb_probe(tlb, l2_base, l2_sets, l2_ways, sizes2, va, pcid,
                                          thr_ng, thr_g)
                        if hit2 >= 0:
                            where = 2
                            tag = tlb[hit2, 0]
                            tlb[hit2, 3] = clock
                            _tlb_fill(tlb, 0, l1_sets, l1_ways, tag, tlb[hit2, 1],
                                      tlb[hit2, 2], clock, last_all, last_ng, pcid_flush)
                            sizes1 |= U1 << (tag & U3)
                            hit = hit2
                    if hit >= 0 and op == OP_WRITE and (tlb[hit, 2] & u64(8)) == U0:
                        # A write through an entry cached with D=0: the CPU must walk to
                        # set D in memory (SDM 4.8), re-checking the tables.
                        counters[C_DIRTY_ASSISTS] += 1
                        hit = np.int64(-1)
                if hit >= 0:
                    if where == 1:
                        counters[C_L1_HITS] += 1
                    else:
                        counters[C_L2_HITS] += 1
                    data = tlb[hit, 2]
                    tlb[hit, 3] = clock
                    size_code = np.int64(tlb[hit, 0] & U3)
                    size_mask = (U1 << u64(12 + 9 * size_code)) - U1
                    denied, pk = _rights_fault(op, user_access, ac, (data & U1) != U0,
                                               (data & U2) != U0, (data & u64(4)) != U0,
                                               (data >> u64(4)) & u64(0xF), cr0, cr4, pkru)
                    if denied:
                        outcome = OUT_PF
                        err = PF_PROT
                        if op == OP_WRITE:
                            err |= PF_WRITE
                        if user_access:
                            err |= PF_USER
                        if op == OP_FETCH and ((cr4 & CR4_SMEP) != U0
                                               or (efer & EFER_NXE) != U0):
                            err |= PF_INSTR
                        if pk:
                            err |= PF_PK
                    else:
                        pa = (data & ~size_mask) | (va & size_mask)
                else:
                    where = 0
                    counters[C_WALKS] += 1
                    outcome, err, pa, size_code, data = _walk(
                        pool, ht, ht_bits, va, op, user_access, ac, cr0, cr3, cr4, efer,
                        pkru, maxphy, True, counters)
                    if outcome == OUT_OK and tlb_on:
                        glob = (data >> u64(8)) & U1
                        tag = (va >> u64(12 + 9 * size_code)) << u64(16)
                        tag |= (u64(8) if glob else pcid << u64(4)) | u64(size_code)
                        data &= ~u64(1 << 8)
                        _tlb_fill(tlb, 0, l1_sets, l1_ways, tag, clock, data, clock,
                                  last_all, last_ng, pcid_flush)
                        _tlb_fill(tlb, l2_base, l2_sets, l2_ways, tag, clock, data, clock,
                                  last_all, last_ng, pcid_flush)
                        sizes1 |= U1 << u64(size_code)
                        sizes2 |= U1 << u64(size_code)
                if outcome == OUT_PF:
                    counters[C_PF] += 1
                    if tlb_on:  # a #PF drops the faulting page's entries (SDM 4.10.4.1)
                        _tlb_invalidate_page(tlb, 0, l1_sets, l1_ways, sizes1, va, pcid,
                                             True, True)
                        _tlb_invalidate_page(tlb, l2_base, l2_sets, l2_ways, sizes2, va,
                                             pcid, True, True)
        elif op == OP_MOV_CR3:
            new_pcide_val = va & ~NOFLUSH
            maxmask = ~((U1 << maxphy) - U1) & ~NOFLUSH
            if (new_pcide_val & maxmask) != U0 or (not pcide and (va & NOFLUSH) != U0):
                outcome = OUT_GP  # reserved CR3 bits (SDM Table 4-12/4-13)
            else:
                counters[C_CR3_WRITES] += 1
                cr3 = new_pcide_val
                if pcide:
                    pcid = cr3 & PCID_MASK
                    if (va & NOFLUSH) == U0:
                        pcid_flush[np.int64(pcid)] = clock
                        counters[C_FLUSHES] += 1
                else:
                    last_ng = clock  # PCIDE=0: every non-global entry goes
                    counters[C_FLUSHES] += 1
        elif op == OP_INVLPG:
            counters[C_INVLPG] += 1
            vabits = u64(56) if (cr4 & CR4_LA57) != U0 else u64(47)
            top = va >> vabits
            if tlb_on and (top == U0 or top == (~U0 >> vabits)):  # non-canonical: a NOP
                _tlb_invalidate_page(tlb, 0, l1_sets, l1_ways, sizes1, va, pcid, True, True)
                _tlb_invalidate_page(tlb, l2_base, l2_sets, l2_ways, sizes2, va, pcid, True,
                                     True)
        elif op == OP_INVPCID:
            counters[C_INVPCID] += 1
            kind = (arg >> 12) & 3
            target = u64(arg & 0xFFF)
            vabits = u64(56) if (cr4 & CR4_LA57) != U0 else u64(47)
            top = va >> vabits
            if kind <= 1 and not pcide and target != U0:
                outcome = OUT_GP  # PCIDE=0: only PCID 0 may be named (SDM INVPCID)
            elif kind == 0 and top != U0 and top != (~U0 >> vabits):
                outcome = OUT_GP
            elif kind == 0:
                if tlb_on:
                    _tlb_invalidate_page(tlb, 0, l1_sets, l1_ways, sizes1, va, target, False,
                                         True)
                    _tlb_invalidate_page(tlb, l2_base, l2_sets, l2_ways, sizes2, va, target,
                                         False, True)
            elif kind == 1:
                pcid_flush[np.int64(target)] = clock
                counters[C_FLUSHES] += 1
            elif kind == 2:
                last_all = clock
                sizes1 = U0
                sizes2 = U0
                counters[C_FLUSHES] += 1
            else:
                last_ng = clock
                counters[C_FLUSHES] += 1
        elif op == OP_MOV_CR4:
            changed = cr4 ^ va
            if ((changed & CR4_LA57) != U0 or (va & CR4_PAE) == U0
                    or ((va & CR4_PCIDE) != U0 and not pcide and (cr3 & PCID_MASK) != U0)):
                outcome = OUT_GP  # LA57 only changes outside 64-bit mode; PAE keeps us in it
            else:
                if (changed & CR4_PGE) != U0 or (pcide and (va & CR4_PCIDE) == U0):
                    last_all = clock  # everything, global entries included (SDM 4.10.4.1)
                    sizes1 = U0
                    sizes2 = U0
                    counters[C_FLUSHES] += 1
                elif (changed & CR4_SMEP) != U0 and (va & CR4_SMEP) != U0:
                    pcid_flush[np.int64(pcid)] = clock
                    counters[C_FLUSHES] += 1
                cr4 = va
                pcide = (cr4 & CR4_PCIDE) != U0
                pcid = cr3 & PCID_MASK if pcide else U0
        elif op == OP_WRPKRU:
            pkru = va & u64(0xFFFFFFFF)
        elif op == OP_MOV_CR0:
            if (va & CR0_PG) == U0 or (va & CR0_PE) == U0:
                outcome = OUT_GP  # leaving paging is not simulated
            else:
                cr0 = va
        else:
            outcome = OUT_GP  # unknown op: refused by mmu.py before we get here
        thr_g = last_all
        thr_ng = max(last_all, max(last_ng, pcid_flush[np.int64(pcid)]))
        if outcome == OUT_GP:
            counters[C_GP] += 1
        if record:
            out_outcome[i] = outcome
            out_error[i] = err
            out_pa[i] = pa
            out_size[i] = size_code
            out_tlb[i] = where
        if stop_on_fault and outcome != OUT_OK:
            done = i + 1
            break
    regs[R_CR0] = cr0
    regs[R_CR3] = cr3
    regs[R_CR4] = cr4
    regs[R_PKRU] = pkru
    tstate[T_CLOCK] = clock
    tstate[T_LAST_ALL] = last_all
    tstate[T_LAST_NG] = last_ng
    tstate[T_SIZES_L1] = sizes1
    tstate[T_SIZES_L2] = sizes2
    return done
