"""Simulated physical memory whose frames exist only once written, and a frame allocator.

A machine with 64 GiB of simulated RAM must not cost 64 GiB of host memory, so frames live
in a compact *pool*: one flat ``uint64`` array holding 512 qwords per frame, in the order the
frames were first written. Two indexes map a page-frame number (pfn) to its pool slot, both
numpy arrays so that the numba kernels can read them:

* the *direct array* ``direct[pfn] = slot + 1`` (0: never written) for pfns below
  :data:`DIRECT_PFNS` (256 GiB of physical address space), which is where the
  :class:`FrameAllocator` hands frames out. A page walk finds a table's slot with one load
  instead of a hash probe (which cost a second cache miss per walk on large machines);
* a small open-addressing hash table for every frame, which the kernels use for pfns
  beyond the direct array (a test may write anywhere in the 52-bit physical space).

A frame that was never written reads as zeros, which is also what a freshly zeroed page table
looks like: a walk that reaches it sees "not present", exactly as on hardware.

Host memory stays what is used, and is never held twice. Both the pool and the direct
array are ``np.zeros`` arrays, which the host allocates lazily (calloc of fresh, untouched
pages): a page of them costs memory only once written. The direct array grows by
allocating a larger one and writing only the known slots into it (the zero pages in
between are never touched). The pool grows by doubling while small; once it passes
:data:`RESERVE_FROM_FRAMES` frames it moves, once, into a *reservation* of
:data:`RESERVE_FRAMES` frames of address space, so that a big machine's page tables are not
copied again at every doubling (which briefly held two copies: a 10-million-page machine
peaked at 412 MiB). Only the frames in use are copied, and only written frames become
resident. If the host refuses the reservation (little RAM and strict overcommit), the pool
keeps doubling.
"""

from __future__ import annotations

import numpy as np

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu_kernels import frame_hash

# The kernels' own hash, run as plain Python here (no compile on the Python side).
_frame_hash = getattr(frame_hash, "py_func", frame_hash)

QWORDS_PER_FRAME = 512
_EMPTY = 0  # keys are stored as pfn + 1, so 0 marks an empty hash slot
DIRECT_PFNS = 1 << 26  # pfns with a direct-array entry: the first 256 GiB of physical space
DIRECT_MIN = 1 << 12  # the direct array's smallest size (16 KiB)
RESERVE_FROM_FRAMES = 4096  # a pool growing past 16 MiB moves into the reservation
RESERVE_FRAMES = 1 << 21  # the reservation: 8 GiB of address space, resident only as written


class PhysMem:
    """Sparse physical memory addressed by byte, read and written in aligned qwords.

    >>> mem = PhysMem()
    >>> mem.write_qword(0x7ff0_0000_1000, 0x2007)
    >>> hex(mem.read_qword(0x7ff0_0000_1000)), mem.read_qword(0x5000), mem.frames_in_use
    ('0x2007', 0, 1)
    """

    def __init__(self, maxphyaddr: int = b.MAX_PHYADDR_BITS, initial_frames: int = 64):
        if not 32 <= maxphyaddr <= b.MAX_PHYADDR_BITS:
            raise KaiserEduError(f"maxphyaddr must be between 32 and 52, got {maxphyaddr!r}")
        if initial_frames < 1:
            raise KaiserEduError(f"initial_frames must be at least 1, got {initial_frames!r}")
        self.maxphyaddr = maxphyaddr
        self.pool = np.zeros(initial_frames * QWORDS_PER_FRAME, dtype=np.uint64)
        self.frames_in_use = 0
        self.ht_bits = 8
        self.ht = np.zeros(2 << self.ht_bits, dtype=np.uint64)  # (pfn+1, slot) pairs
        self._slot_of: dict[int, int] = {}  # the same map, for the Python side
        self.direct = np.zeros(0, dtype=np.uint32)  # pfn -> slot + 1 (see the module doc)
        self._reserved = False  # the pool is the big reservation

    def __deepcopy__(self, memo: dict) -> PhysMem:
        """A copy holding the frames in use (not the reservation's untouched address space)."""
        new = PhysMem.__new__(PhysMem)
        memo[id(self)] = new
        new.__dict__.update(self.__dict__)
        used = self.frames_in_use * QWORDS_PER_FRAME
        new.pool = np.zeros(max(used, QWORDS_PER_FRAME), dtype=np.uint64)
        new.pool[:used] = self.pool[:used]
        new.ht = self.ht.copy()
        new.direct = self.direct.copy()
        new._slot_of = dict(self._slot_of)
        new._reserved = False
        return new

    def written_frames(self) -> list[int]:
        """The pfns of every frame ever written, ascending."""
        return sorted(self._slot_of)

    # --- addressing ------------------------------------------------------------------------
    def _check_pa(self, pa: int, what: str = "physical address") -> None:
        if not 0 <= pa < 1 << self.maxphyaddr:
            raise KaiserEduError(
                f"{what} {pa:#x} is outside the {self.maxphyaddr}-bit physical address "
                f"space (MAXPHYADDR={self.maxphyaddr}: 0 to {(1 << self.maxphyaddr) - 1:#x})"
            )

    def _check_qword(self, pa: int) -> None:
        self._check_pa(pa)
        if pa & 7:
            raise KaiserEduError(f"physical address {pa:#x} is not 8-byte aligned")

    def slot(self, pfn: int) -> int | None:
        """Pool slot of frame ``pfn``, or None if it was never written."""
        return self._slot_of.get(pfn)

    def ensure_frame(self, pfn: int) -> int:
        """The pool slot of ``pfn``, creating a zeroed frame if it has none yet."""
        slot = self._slot_of.get(pfn)
        if slot is not None:
            return slot
        self._check_pa(pfn << b.PAGE_SHIFT, "frame address")
        slot = self.frames_in_use
        if (slot + 1) * QWORDS_PER_FRAME > self.pool.size:
            self._grow_pool(slot + 1)
        self.frames_in_use += 1
        self._slot_of[pfn] = slot
        if 2 * len(self._slot_of) > (1 << self.ht_bits):
            self._rehash()
        else:
            self._ht_insert(pfn, slot)
        if pfn < DIRECT_PFNS:
            if pfn >= self.direct.size:
                self._grow_direct(pfn)
            self.direct[pfn] = slot + 1
        return slot

    def _grow_pool(self, frames: int) -> None:
        """Room for ``frames`` frames: double, or move into the reservation (module doc);
        only the frames in use are copied."""
        capacity = self.pool.size // QWORDS_PER_FRAME
        new_capacity = max(2 * capacity, frames)
        grown = None
        if new_capacity >= RESERVE_FROM_FRAMES and new_capacity <= RESERVE_FRAMES:
            try:
                grown = np.zeros(RESERVE_FRAMES * QWORDS_PER_FRAME, dtype=np.uint64)
                self._reserved = True
            except MemoryError:  # the host will not lend the address space: keep doubling
                grown = None
        if grown is None:
            grown = np.zeros(new_capacity * QWORDS_PER_FRAME, dtype=np.uint64)
            self._reserved = False
        used = self.frames_in_use * QWORDS_PER_FRAME
        grown[:used] = self.pool[:used]
        self.pool = grown

    def _grow_direct(self, pfn: int) -> None:
        """A direct array covering ``pfn``: a fresh lazily-zeroed array in which only the
        written frames' entries are set (its other pages are never touched)."""
        size = max(DIRECT_MIN, 2 * self.direct.size)
        while size <= pfn:
            size *= 2
        grown = np.zeros(min(size, DIRECT_PFNS), dtype=np.uint32)
        for known, slot in self._slot_of.items():
            if known < grown.size:
                grown[known] = slot + 1
        self.direct = grown

    def _ht_insert(self, pfn: int, slot: int) -> None:
        mask = (1 << self.ht_bits) - 1
        i = int(_frame_hash(np.uint64(pfn), np.uint64(self.ht_bits)))
        while self.ht[2 * i] != _EMPTY:
            i = (i + 1) & mask
        self.ht[2 * i] = pfn + 1
        self.ht[2 * i + 1] = slot

    def _rehash(self) -> None:
        self.ht_bits += 1
        self.ht = np.zeros(2 << self.ht_bits, dtype=np.uint64)
        for pfn, slot in self._slot_of.items():
            self._ht_insert(pfn, slot)

    # --- qword access ----------------------------------------------------------------------
    def read_qword(self, pa: int) -> int:
        """The 64-bit value at ``pa`` (0 for memory never written)."""
        self._check_qword(pa)
        slot = self._slot_of.get(pa >> b.PAGE_SHIFT)
        if slot is None:
            return 0
        return int(self.pool[slot * QWORDS_PER_FRAME + ((pa & 0xFFF) >> 3)])

    def write_qword(self, pa: int, value: int) -> None:
        """Store a 64-bit value at ``pa``."""
        self._check_qword(pa)
        if not 0 <= value < 1 << 64:
            raise KaiserEduError(f"value {value!r} does not fit in 64 bits")
        slot = self.ensure_frame(pa >> b.PAGE_SHIFT)
        self.pool[slot * QWORDS_PER_FRAME + ((pa & 0xFFF) >> 3)] = np.uint64(value)

    def frame_array(self, pfn: int) -> np.ndarray:
        """A writable view of frame ``pfn``'s 512 qwords (created if needed).

        The view is valid until the next frame is created: growing the pool moves it.
        """
        slot = self.ensure_frame(pfn)
        return self.pool[slot * QWORDS_PER_FRAME : (slot + 1) * QWORDS_PER_FRAME]

    def zero_frame(self, pfn: int) -> None:
        """Clear a frame (keeps its slot: frames are never returned to the host)."""
        slot = self._slot_of.get(pfn)
        if slot is not None:
            self.pool[slot * QWORDS_PER_FRAME : (slot + 1) * QWORDS_PER_FRAME] = 0

    def nonzero_qwords(self) -> dict[int, int]:
        """Every qword that holds a non-zero value, as {physical address: value}."""
        out = {}
        for pfn, slot in sorted(self._slot_of.items()):
            frame = self.pool[slot * QWORDS_PER_FRAME : (slot + 1) * QWORDS_PER_FRAME]
            for i in np.flatnonzero(frame):
                out[(pfn << b.PAGE_SHIFT) | (int(i) << 3)] = int(frame[i])
        return out

    @property
    def host_bytes(self) -> int:
        """Host memory held by the pool, the hash table and the direct array (for the
        reservation and the direct array: the pages that can have been written)."""
        pool = (self.frames_in_use * QWORDS_PER_FRAME * 8 if self._reserved
                else self.pool.nbytes)
        direct_pages = {pfn >> 10 for pfn in self._slot_of if pfn < self.direct.size}
        direct = min(self.direct.nbytes, len(direct_pages) * 4096)
        return pool + self.ht.nbytes + direct


class FrameAllocator:
    """Hands out 4 KiB frames of a simulated RAM of ``ram_bytes``, like the buddy allocator's
    order-0 (and aligned order-n) allocations. Freed frames are zeroed and reused first.

    Allocation costs nothing in host memory until the frame is written.
    """

    def __init__(self, mem: PhysMem, ram_bytes: int = 64 << 30, first_pa: int = 1 << 20):
        if ram_bytes <= first_pa or ram_bytes & (b.PAGE_SIZE - 1):
            raise KaiserEduError(
                f"ram_bytes must be a multiple of 4 KiB above {first_pa:#x}, got {ram_bytes!r}"
            )
        if ram_bytes > 1 << mem.maxphyaddr:
            raise KaiserEduError(
                f"ram_bytes {ram_bytes:#x} exceeds the {mem.maxphyaddr}-bit physical space"
            )
        self.mem = mem
        self.ram_bytes = ram_bytes
        self._first_pfn = first_pa >> b.PAGE_SHIFT
        self._next_pfn = self._first_pfn
        self._free: list[int] = []
        self._free_set: set[int] = set()

    @property
    def frames_allocated(self) -> int:
        """Frames handed out and not freed."""
        return self._next_pfn - self._first_pfn - len(self._free)

    def alloc(self) -> int:
        """Physical address of a zeroed 4 KiB frame."""
        if self._free:
            pfn = self._free.pop()
            self._free_set.discard(pfn)
            return pfn << b.PAGE_SHIFT
        return self.alloc_contig(1)

    def alloc_contig(self, n_frames: int, align: int = b.PAGE_SIZE) -> int:
        """Physical address of ``n_frames`` contiguous zeroed frames aligned to ``align``
        (2 MiB or 1 GiB for a huge page)."""
        if n_frames < 1 or align & (align - 1) or align < b.PAGE_SIZE:
            raise KaiserEduError(
                f"need n_frames >= 1 and a power-of-two align >= 4 KiB, got {n_frames}, {align}"
            )
        align_frames = align >> b.PAGE_SHIFT
        pfn = -(-self._next_pfn // align_frames) * align_frames
        end = pfn + n_frames
        if end << b.PAGE_SHIFT > self.ram_bytes:
            raise KaiserEduError(
                f"out of simulated RAM: {n_frames} frame(s) requested, "
                f"{self.ram_bytes >> 20} MiB configured (ram_bytes)"
            )
        padding = range(self._next_pfn, pfn)  # alignment padding stays usable
        self._free.extend(padding)
        self._free_set.update(padding)
        self._next_pfn = end
        return pfn << b.PAGE_SHIFT

    def free(self, pa: int) -> None:
        """Return a 4 KiB frame; its contents are cleared so the next user sees zeros."""
        pfn = pa >> b.PAGE_SHIFT
        if (pa & (b.PAGE_SIZE - 1) or not self._first_pfn <= pfn < self._next_pfn
                or pfn in self._free_set):
            raise KaiserEduError(f"cannot free {pa:#x}: not an allocated 4 KiB frame")
        self.mem.zero_frame(pfn)
        self._free.append(pfn)
        self._free_set.add(pfn)
