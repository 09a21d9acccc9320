"""kaiser_edu.hw.physmem: sparse physical memory (frames exist once written) and the frame
allocator (order-0 and aligned order-n allocations, like Linux's buddy allocator)."""

import random

import numpy as np
import pytest
from hw_helpers import ht_lookup

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import MMU, TraceBuilder
from kaiser_edu.hw.physmem import QWORDS_PER_FRAME, FrameAllocator, PhysMem
from kaiser_edu.hw.regs import Registers

FRAME = 4096
U64 = (1 << 64) - 1


# --- PhysMem: sparse, zero by default -----------------------------------------------------
def test_untouched_memory_reads_zero_and_creates_no_frame():
    mem = PhysMem()
    before = mem.host_bytes
    assert mem.read_qword(0) == 0
    assert mem.read_qword(0x7FF0_0000_0FF8) == 0
    assert mem.frames_in_use == 0
    assert mem.slot(0) is None
    assert mem.host_bytes == before
    assert mem.nonzero_qwords() == {}


def test_write_far_away_costs_one_frame():
    mem = PhysMem()
    before = mem.host_bytes
    mem.write_qword(0x7FF0_0000_0000, 0xDEAD_BEEF)
    mem.write_qword(0x7FF0_0000_0FF8, U64)
    assert mem.read_qword(0x7FF0_0000_0000) == 0xDEAD_BEEF
    assert mem.read_qword(0x7FF0_0000_0FF8) == U64
    assert mem.read_qword(0x7FF0_0000_0008) == 0  # rest of the frame is zero
    assert mem.read_qword(0x7FF0_0000_1000) == 0  # the next frame does not exist
    assert mem.frames_in_use == 1
    assert mem.host_bytes == before  # the initial pool had room: nothing new on the host
    assert mem.host_bytes < 1 << 20
    assert mem.nonzero_qwords() == {0x7FF0_0000_0000: 0xDEAD_BEEF, 0x7FF0_0000_0FF8: U64}


def test_64_gib_of_allocations_cost_only_the_frames_written():
    mem = PhysMem()
    alloc = FrameAllocator(mem, ram_bytes=64 << 30)
    before = mem.host_bytes
    huge = [alloc.alloc_contig(1 << 18, align=1 << 30) for _ in range(62)]  # 62 GiB
    small = [alloc.alloc() for _ in range(1000)]
    assert len(set(huge)) == 62 and len(set(small)) == 1000
    assert mem.frames_in_use == 0 and mem.host_bytes == before
    # touching a few of them (the last GiB, some small frames) costs only those frames
    for pa in (huge[-1], huge[-1] + (1 << 30) - 8, small[0], small[-1]):
        mem.write_qword(pa, 1)
    assert mem.frames_in_use == 4
    assert mem.host_bytes < 1 << 20


def test_qword_alignment_refused():
    mem = PhysMem()
    for pa in (1, 4, 0x1004, 0x1FFF):
        with pytest.raises(KaiserEduError, match=rf"physical address {pa:#x} is not 8-byte aligned"):
            mem.read_qword(pa)
        with pytest.raises(KaiserEduError, match="not 8-byte aligned"):
            mem.write_qword(pa, 1)
    assert mem.frames_in_use == 0


def test_physical_range_refused_names_maxphyaddr():
    mem = PhysMem(maxphyaddr=40)
    with pytest.raises(KaiserEduError, match=r"0x10000000000 is outside the 40-bit physical address space \(MAXPHYADDR=40"):
        mem.write_qword(1 << 40, 1)
    with pytest.raises(KaiserEduError, match="outside the 40-bit"):
        mem.read_qword(1 << 40)
    with pytest.raises(KaiserEduError, match="outside the 52-bit"):
        PhysMem().read_qword(1 << 52)
    with pytest.raises(KaiserEduError, match="outside"):
        PhysMem().read_qword(-8)
    mem.write_qword((1 << 40) - 8, 5)  # the last qword is fine
    assert mem.read_qword((1 << 40) - 8) == 5
    with pytest.raises(KaiserEduError, match=r"frame address 0x10000000000 is outside"):
        mem.ensure_frame(1 << 28)


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_write_value_must_fit_64_bits(value):
    mem = PhysMem()
    with pytest.raises(KaiserEduError, match=rf"value {value} does not fit in 64 bits"):
        mem.write_qword(0x1000, value)
    assert mem.frames_in_use == 0  # refused before creating the frame


def test_pool_growth_keeps_contents():
    mem = PhysMem(initial_frames=1)
    start = mem.pool.size
    for i in range(100):
        mem.write_qword((i * 7 + 3) << 12 | (i % 512) << 3, 0x1000 + i)
    assert mem.pool.size > start and mem.frames_in_use == 100
    for i in range(100):
        assert mem.read_qword((i * 7 + 3) << 12 | (i % 512) << 3) == 0x1000 + i


def test_pool_growth_from_an_empty_pool():
    # initial_frames=0 must either be refused clearly or work (it must not crash on write)
    try:
        mem = PhysMem(initial_frames=0)
    except KaiserEduError:
        return
    mem.write_qword(0x1000, 5)
    mem.write_qword(0x2000, 6)
    assert (mem.read_qword(0x1000), mem.read_qword(0x2000)) == (5, 6)


def test_frame_array_is_a_view_and_zero_frame_clears():
    mem = PhysMem()
    view = mem.frame_array(0x10)
    view[3] = 0x1234
    assert mem.read_qword(0x10018) == 0x1234
    assert view.shape == (QWORDS_PER_FRAME,) and view.dtype == np.uint64
    mem.zero_frame(0x10)
    assert mem.read_qword(0x10018) == 0
    assert mem.frames_in_use == 1  # the slot is kept
    mem.zero_frame(0x99)  # never written: nothing to do, nothing created
    assert mem.frames_in_use == 1


def _pfn_sets(seed=1):
    rng = random.Random(seed)
    scattered = rng.sample(range(1, 1 << 40), 700)
    strided = [k * 512 for k in range(1, 601)]  # 2 MiB strides: one hash bucket family
    strided += [k << 18 for k in range(1, 200)]  # 1 GiB strides
    return list(dict.fromkeys(scattered + strided))


def test_hash_rehash_keeps_lookups():
    mem = PhysMem(initial_frames=4)
    pfns = _pfn_sets()
    assert len(pfns) > 1000
    bits0 = mem.ht_bits
    for i, pfn in enumerate(pfns):
        mem.write_qword(pfn << 12 | (i % 512) << 3, i + 1)
    assert mem.ht_bits > bits0  # the table was rehashed (several times)
    assert mem.frames_in_use == len(pfns)
    for i, pfn in enumerate(pfns):
        assert mem.read_qword(pfn << 12 | (i % 512) << 3) == i + 1
        # and the numpy hash table the numba walk uses finds every frame's slot
        assert ht_lookup(mem, pfn) == mem.slot(pfn)
    assert ht_lookup(mem, 0) is None
    # load factor stays at or below one half (open addressing needs empty slots)
    assert 2 * mem.frames_in_use <= 1 << mem.ht_bits


def test_numba_walk_finds_every_frame_after_rehash():
    """The compiled walk reads table frames only through mem.ht: point CR3 at each of
    >1000 scattered/strided frames holding a PML4 and translate through it."""
    mem = PhysMem(initial_frames=4)
    pdpt, pd, ptab = 0x1000, 0x2000, 0x3000
    mem.write_qword(pdpt, pd | b.PAGE_TABLE)
    mem.write_qword(pd, ptab | b.PAGE_TABLE)
    mem.write_qword(ptab, 0x777000 | b.PAGE_SHARED)
    pfns = [p for p in _pfn_sets(seed=2) if p > 0x777]
    for pfn in pfns:
        mem.write_qword(pfn << 12, pdpt | b.PAGE_TABLE)  # PML4[0]
    mmu = MMU(mem, Registers.long_mode(cr3=pfns[0] << 12), tlb=None)
    tb = TraceBuilder()
    for pfn in pfns:
        tb.mov_cr3(pfn << 12).read(0x123)
    res = mmu.run(tb.build())
    assert len(res) == 2 * len(pfns)
    assert (res.outcome == b.OUTCOME_OK).all()
    reads = res.pa[1::2]
    assert (reads == 0x777123).all()


# --- FrameAllocator --------------------------------------------------------------------------
def test_alloc_hands_out_distinct_aligned_frames_from_first_pa():
    alloc = FrameAllocator(PhysMem())
    pas = [alloc.alloc() for _ in range(50)]
    assert len(set(pas)) == 50
    assert all(pa % FRAME == 0 and pa >= 1 << 20 for pa in pas)
    assert min(pas) == 1 << 20


def test_frames_allocated_counts_allocations():
    alloc = FrameAllocator(PhysMem())
    assert alloc.frames_allocated == 0
    a = alloc.alloc()
    alloc.alloc()
    assert alloc.frames_allocated == 2
    alloc.free(a)
    assert alloc.frames_allocated == 1


@pytest.mark.parametrize("align", [2 << 20, 1 << 30])
def test_alloc_contig_alignment_for_huge_pages(align):
    alloc = FrameAllocator(PhysMem(), ram_bytes=8 << 30)
    alloc.alloc()  # misalign the cursor
    n = align // FRAME
    pa = alloc.alloc_contig(n, align=align)
    assert pa % align == 0
    pa2 = alloc.alloc_contig(n, align=align)
    assert pa2 % align == 0 and pa2 >= pa + align
    # the alignment padding is handed out later, never overlapping the huge pages
    for _ in range(300):
        f = alloc.alloc()
        assert not (pa <= f < pa + align or pa2 <= f < pa2 + align)


def test_free_and_reuse_zeroes():
    mem = PhysMem()
    alloc = FrameAllocator(mem)
    pa = alloc.alloc()
    mem.write_qword(pa + 0x10, 0xFFFF)
    alloc.free(pa)
    assert mem.read_qword(pa + 0x10) == 0
    again = alloc.alloc()
    assert again == pa  # freed frames are reused first
    assert mem.read_qword(pa + 0x10) == 0


def test_free_refusals():
    alloc = FrameAllocator(PhysMem())
    pa = alloc.alloc()
    with pytest.raises(KaiserEduError, match=r"cannot free 0x100800: not an allocated 4 KiB frame"):
        alloc.free(pa + 0x800)
    with pytest.raises(KaiserEduError, match="not an allocated"):
        alloc.free(pa + 0x100000)  # never handed out
    alloc.free(pa)
    with pytest.raises(KaiserEduError, match="not an allocated"):
        alloc.free(pa)  # double free


def test_free_below_first_pa_refused():
    # frames below first_pa (1 MiB by default) are never handed out, so cannot be freed
    alloc = FrameAllocator(PhysMem())
    with pytest.raises(KaiserEduError, match="not an allocated"):
        alloc.free(0x5000)


def test_out_of_ram():
    alloc = FrameAllocator(PhysMem(), ram_bytes=2 << 20)  # frames 1 MiB .. 2 MiB
    pas = [alloc.alloc() for _ in range(256)]
    assert max(pas) == (2 << 20) - FRAME
    with pytest.raises(KaiserEduError, match=r"out of simulated RAM: 1 frame\(s\) requested, 2 MiB configured"):
        alloc.alloc()
    alloc.free(pas[7])
    assert alloc.alloc() == pas[7]  # still usable after the refusal


def test_out_of_ram_huge_page_refused_without_change():
    alloc = FrameAllocator(PhysMem(), ram_bytes=3 << 20)
    with pytest.raises(KaiserEduError, match=r"out of simulated RAM: 512 frame\(s\)"):
        alloc.alloc_contig(512, align=2 << 20)  # 2 MiB..4 MiB does not fit in 3 MiB
    assert alloc.alloc() == 1 << 20  # the cursor did not move


@pytest.mark.parametrize("n, align", [(0, 4096), (-1, 4096), (1, 3000), (1, 2048), (1, 6 << 20)])
def test_alloc_contig_bad_arguments(n, align):
    alloc = FrameAllocator(PhysMem())
    with pytest.raises(KaiserEduError, match=r"need n_frames >= 1 and a power-of-two align >= 4 KiB"):
        alloc.alloc_contig(n, align)


def test_allocator_constructor_refusals():
    with pytest.raises(KaiserEduError, match="ram_bytes must be a multiple of 4 KiB above 0x100000"):
        FrameAllocator(PhysMem(), ram_bytes=(4 << 20) + 5)
    with pytest.raises(KaiserEduError, match="ram_bytes must be a multiple"):
        FrameAllocator(PhysMem(), ram_bytes=1 << 20)
    with pytest.raises(KaiserEduError, match="exceeds the 36-bit physical space"):
        FrameAllocator(PhysMem(maxphyaddr=36), ram_bytes=128 << 30)


# --- the direct pfn -> slot array and the pool's reservation -------------------------------
def test_direct_array_names_every_near_frame_and_only_those():
    """direct[pfn] = slot + 1 for every written frame below DIRECT_PFNS (what the compiled
    walk reads first), 0 for the others; frames beyond it are found through the hash."""
    from kaiser_edu.hw.physmem import DIRECT_PFNS

    mem = PhysMem()
    near = [0x100, 0x101, 0x5000, 0x12345]
    far = [DIRECT_PFNS, DIRECT_PFNS + 7, 1 << 39]
    for i, pfn in enumerate(near + far):
        mem.write_qword(pfn << 12 | 8, i + 1)
    for pfn in near:
        assert int(mem.direct[pfn]) == mem.slot(pfn) + 1
    assert mem.direct.size <= DIRECT_PFNS
    assert int(mem.direct[:0x100].sum()) == 0 and int(mem.direct[0x102:0x5000].sum()) == 0
    for pfn in far:
        assert pfn >= mem.direct.size and ht_lookup(mem, pfn) == mem.slot(pfn)
    # and the MMU translates through tables in near and far frames alike
    for table in (0x5000, DIRECT_PFNS + 7):
        m = PhysMem()
        pdpt, pd, pt = (table + 1) << 12, (table + 2) << 12, (table + 3) << 12
        m.write_qword(table << 12, pdpt | b.PAGE_TABLE)
        m.write_qword(pdpt, pd | b.PAGE_TABLE)
        m.write_qword(pd, pt | b.PAGE_TABLE)
        m.write_qword(pt, 0x777000 | b.PAGE_SHARED)
        mmu = MMU(m, Registers.long_mode(cr3=table << 12))
        assert mmu.access(0x123, "read").pa == 0x777123


def test_big_pool_moves_once_into_the_reservation_and_stays_small_on_the_host():
    """Past RESERVE_FROM_FRAMES frames the pool moves (once) into its reservation: the
    contents survive, growth copies nothing more, host_bytes counts the frames in use
    (not the reserved address space), and a deep copy holds only those frames."""
    import copy

    from kaiser_edu.hw.physmem import RESERVE_FRAMES, RESERVE_FROM_FRAMES

    mem = PhysMem(initial_frames=16)
    n = RESERVE_FROM_FRAMES + 100
    for i in range(n):
        mem.write_qword((0x1000 + i) << 12 | (i % 512) << 3, i + 1)
    assert mem.frames_in_use == n
    if mem.pool.size == RESERVE_FRAMES * QWORDS_PER_FRAME:  # the host lent the space
        pool = mem.pool
        mem.write_qword(0x9_0000 << 12, 5)
        assert mem.pool is pool  # no copy on the next frame
        assert mem.host_bytes < (n + 1) * 4096 + (4 << 20)
    for i in range(0, n, 97):
        assert mem.read_qword((0x1000 + i) << 12 | (i % 512) << 3) == i + 1
    clone = copy.deepcopy(mem)
    assert clone.pool.size == mem.frames_in_use * QWORDS_PER_FRAME
    assert clone.nonzero_qwords() == mem.nonzero_qwords()
    clone.write_qword(0x1000 << 12, 99)  # the clone grows on its own
    assert mem.read_qword(0x1000 << 12) == 1
