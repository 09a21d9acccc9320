"""Simulated physical memory whose frames exist only once written, and a frame allocator.

A machine with 64 GiB of simulated RAM must not cost 64 GiB of host memory, so frames live
in a compact *pool*: one flat ``uint64`` array holding 512 qwords per frame, in the order the
frames were first written. A small open-addressing hash table (also a numpy array, so the
numba kernels can read it) maps a page-frame number to its slot in the pool. A frame that was
never written reads as zeros, which is also what a freshly zeroed page table looks like: a
walk that reaches it sees "not present", exactly as on hardware.

The pool's memory is what is used: 4 KiB per touched frame plus 16 bytes per hash slot.
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
            grown = np.zeros(self.pool.size * 2, dtype=np.uint64)
            grown[: self.pool.size] = self.pool
            self.pool = grown
        self.frames_in_use += 1
        self._slot_of[pfn] = slot
        if 2 * len(self._slot_of) > (1 << self.ht_bits):
            self._rehash()
        else:
            self._ht_insert(pfn, slot)
        return slot

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
        """Host memory held by the pool and the hash table."""
        return self.pool.nbytes + self.ht.nbytes


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
