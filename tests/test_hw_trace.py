"""Trace.accesses() with one kind of access: its promise to the MMU and how it is kept."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser_edu.hw import MMU, FrameAllocator, PageTables, PhysMem, Registers, Trace, bits

BASE = 0x7F00_0000_0000


def machine(pages: int = 64):
    mem = PhysMem()
    alloc = FrameAllocator(mem)
    tables = PageTables(mem, alloc)
    tables.map_range(BASE, alloc.alloc_contig(pages), pages, flags=bits.PAGE_SHARED)
    return mem, Registers.long_mode(cr3=tables.cr3())


def test_one_kind_only_when_kind_cpl_and_ac_are_scalars():
    va = np.array([BASE, BASE + 8], dtype=np.uint64)
    assert Trace.accesses(va, "write", cpl=3).one_kind
    assert not Trace.accesses(va, np.array([0, 1], dtype=np.uint8)).one_kind
    assert not Trace.accesses(va, "read", cpl=np.array([3, 0])).one_kind
    assert not Trace.accesses(va, "read", ac=np.array([False, True])).one_kind
    assert not Trace(np.zeros(2, np.uint8), va, np.full(2, 3, np.uint16)).one_kind


def test_a_one_kind_trace_cannot_be_changed_in_place():
    trace = Trace.accesses(np.array([BASE], dtype=np.uint64), "read", cpl=3)
    with pytest.raises(ValueError, match="read-only"):
        trace.op[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        trace.arg[0] = 0


def test_read_only_columns_are_copied_for_the_kernel():
    op = np.zeros(1, np.uint8)
    op.flags.writeable = False
    trace = Trace(op, np.array([BASE], dtype=np.uint64), np.full(1, 3, np.uint16))
    assert all(c.flags.writeable and c.flags.c_contiguous for c in trace.kernel_columns)


@pytest.mark.property
@settings(max_examples=60, deadline=None)
@given(pages=st.lists(st.integers(0, 63), min_size=1, max_size=400),
       kind=st.sampled_from(["read", "write", "fetch"]), cpl=st.sampled_from([0, 3]),
       repeat=st.integers(1, 3))
def test_one_kind_runs_give_what_the_same_ops_written_out_give(pages, kind, cpl, repeat):
    """The same accesses as a one-kind trace and as a general one: same results, counters."""
    (mem_a, regs), (mem_b, _) = machine(), machine()  # A/D bits land in each one's memory
    va = np.uint64(BASE) + np.repeat(np.array(pages, dtype=np.uint64), 3) * np.uint64(4096)
    fast = Trace.accesses(va, kind, cpl=cpl)
    plain = Trace(np.array(fast.op), np.array(fast.addr), np.array(fast.arg))
    assert fast.one_kind and not plain.one_kind
    a, b = MMU(mem_a, regs), MMU(mem_b, regs)
    if repeat == 1:
        ra, rb = a.run(fast), b.run(plain)
        for field in ("outcome", "error_code", "pa", "size_code", "where"):
            assert np.array_equal(getattr(ra, field), getattr(rb, field)), field
    else:
        ra, rb = a.run(fast, record=False, repeat=repeat), b.run(plain, record=False,
                                                                    repeat=repeat)
    assert ra.counters == rb.counters
