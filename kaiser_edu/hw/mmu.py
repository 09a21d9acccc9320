"""The MMU a program talks to: a TLB in front of the page walk, driven by traces.

A :class:`Trace` is a batch of operations as numpy arrays: memory accesses (read, write,
fetch, each with its CPL and RFLAGS.AC) and the instructions that manage translation (MOV to
CR3, CR4 and CR0, INVLPG, INVPCID, WRPKRU). :meth:`MMU.run` pushes the whole batch through
the numba kernel in one call and returns per-op results and counters; :meth:`MMU.access` and
friends are the single-step API for lessons, built on the same kernel.

>>> from kaiser_edu.hw import PhysMem, FrameAllocator, PageTables, Registers, bits
>>> mem = PhysMem(); alloc = FrameAllocator(mem); pt = PageTables(mem, alloc)
>>> pt.map(0x400000, 0x5000, flags=bits.PAGE_SHARED)
>>> mmu = MMU(mem, Registers.long_mode(cr3=pt.cr3()))
>>> r = mmu.access(0x400123, "write", cpl=3); (hex(r.pa), r.tlb)
('0x5123', 'walk')
>>> mmu.access(0x400456, "read").tlb
'L1'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw import mmu_kernels as k
from kaiser_edu.hw.address import canonicalize
from kaiser_edu.hw.physmem import PhysMem
from kaiser_edu.hw.regs import Registers

OPS = {
    "read": k.OP_READ,
    "write": k.OP_WRITE,
    "fetch": k.OP_FETCH,
    "mov_cr3": k.OP_MOV_CR3,
    "invlpg": k.OP_INVLPG,
    "invpcid": k.OP_INVPCID,
    "mov_cr4": k.OP_MOV_CR4,
    "wrpkru": k.OP_WRPKRU,
    "mov_cr0": k.OP_MOV_CR0,
}
OP_NAMES = {v: name for name, v in OPS.items()}
COUNTER_NAMES = (
    "ops", "accesses", "l1_hits", "l2_hits", "walks", "walk_reads", "page_faults",
    "general_protection", "ad_writes", "cr3_writes", "flushes", "invlpg", "invpcid",
    "dirty_assists",
)
assert len(COUNTER_NAMES) == k.N_COUNTERS
WHERE_NAMES = ("walk", "L1", "L2")
INVPCID_TYPES = {
    0: "individual address",
    1: "single context",
    2: "all contexts, including globals",
    3: "all contexts, except globals",
}


@dataclass(frozen=True)
class TLBConfig:
    """Geometry of the two TLB levels. Defaults: a 64-entry 4-way L1 and a 1536-entry 12-way
    L2, the Skylake-era DTLB and STLB sizes."""

    l1_entries: int = 64
    l1_ways: int = 4
    l2_entries: int = 1536
    l2_ways: int = 12

    def __post_init__(self) -> None:
        for level in ("l1", "l2"):
            entries, ways = getattr(self, f"{level}_entries"), getattr(self, f"{level}_ways")
            if not (isinstance(entries, int) and isinstance(ways, int) and entries > 0 and ways > 0):
                raise KaiserEduError(f"{level}_entries and {level}_ways must be positive integers")
            sets, rest = divmod(entries, ways)
            if rest or sets & (sets - 1):
                raise KaiserEduError(
                    f"{level}: {entries} entries / {ways} ways must give a power-of-two number "
                    f"of sets (e.g. 64/4 = 16, 1536/12 = 128)"
                )

    @property
    def l1_sets(self) -> int:
        return self.l1_entries // self.l1_ways

    @property
    def l2_sets(self) -> int:
        return self.l2_entries // self.l2_ways


def _read_only(column: np.ndarray) -> np.ndarray:
    view = column.view()
    view.flags.writeable = False
    return view


class Trace:
    """A batch of operations: ``op`` (uint8 codes of :data:`OPS`), ``addr`` (uint64 address
    or value) and ``arg`` (uint16: CPL | AC<<2 for accesses; PCID | type<<12 for INVPCID)."""

    def __init__(self, op: np.ndarray, addr: np.ndarray, arg: np.ndarray):
        # C-contiguous and writable, as the kernel is compiled for (numba types a read-only
        # array as another type): a read-only column is copied.
        self.op = np.require(op, dtype=np.uint8, requirements=("C", "W"))
        self.addr = np.require(addr, dtype=np.uint64, requirements=("C", "W"))
        self.arg = np.require(arg, dtype=np.uint16, requirements=("C", "W"))
        if not self.op.ndim == self.addr.ndim == self.arg.ndim == 1:
            raise KaiserEduError("trace columns must be one-dimensional arrays")
        if not len(self.op) == len(self.addr) == len(self.arg):
            raise KaiserEduError(
                f"trace columns differ in length: op {len(self.op)}, addr {len(self.addr)}, "
                f"arg {len(self.arg)}"
            )
        if len(self.op) and self.op.max() > max(OP_NAMES):
            raise KaiserEduError(f"unknown op code {int(self.op.max())}; known: {OP_NAMES}")
        self.one_kind = False  # every op the same access (set by accesses() only)
        self.kernel_columns = (self.op, self.addr, self.arg)  # what MMU.run passes

    def __len__(self) -> int:
        return len(self.op)

    @classmethod
    def accesses(cls, va, kind: str | np.ndarray = "read", cpl=3, ac=False) -> Trace:
        """Memory accesses only: ``va`` an array of addresses; ``kind`` one of read, write,
        fetch (or an array of ACCESS_* codes); ``cpl`` and ``ac`` scalars or arrays."""
        va = np.asarray(va, dtype=np.uint64)
        if isinstance(kind, str):
            op = np.full(va.shape, _access_code(kind), dtype=np.uint8)
        else:
            op = np.asarray(kind, dtype=np.uint8)
            if op.size and op.max() > b.ACCESS_FETCH:
                raise KaiserEduError("access kind codes must be 0 (read), 1 (write) or 2 (fetch)")
        cpl = np.asarray(cpl)
        if cpl.size and (cpl.min() < 0 or cpl.max() > 3):
            raise KaiserEduError("cpl must be 0, 1, 2 or 3")
        arg = (cpl.astype(np.uint16) | (np.asarray(ac, dtype=np.uint16) << 2)) * np.ones(
            va.shape, dtype=np.uint16
        )
        trace = cls(op, va, arg)
        if isinstance(kind, str) and cpl.ndim == 0 and np.ndim(ac) == 0:
            # One kind of access throughout: the MMU's same-page runs need not read the op
            # and arg columns (a third of their memory traffic; run_trace's docstring). The
            # columns were made here, and the public ones are read-only views, so the
            # promise cannot go stale; the kernel gets the writable arrays behind them.
            trace.one_kind = True
            trace.op, trace.arg = _read_only(trace.op), _read_only(trace.arg)
        return trace

    @classmethod
    def concat(cls, traces: list[Trace]) -> Trace:
        return cls(
            np.concatenate([t.op for t in traces]),
            np.concatenate([t.addr for t in traces]),
            np.concatenate([t.arg for t in traces]),
        )


class TraceBuilder:
    """Write a short trace op by op (for lessons and tests); ``build()`` gives the Trace."""

    def __init__(self) -> None:
        self._rows: list[tuple[int, int, int]] = []

    def _add(self, op: int, addr: int, arg: int = 0) -> TraceBuilder:
        if not 0 <= addr < 1 << 64:
            raise KaiserEduError(f"address/value {addr!r} does not fit in 64 bits")
        self._rows.append((op, addr, arg))
        return self

    def access(self, va: int, kind: str = "read", cpl: int = 3, ac: bool = False) -> TraceBuilder:
        if cpl not in (0, 1, 2, 3):
            raise KaiserEduError(f"cpl must be 0, 1, 2 or 3; got {cpl!r}")
        return self._add(_access_code(kind), va, cpl | (int(bool(ac)) << 2))

    def read(self, va: int, cpl: int = 3, ac: bool = False) -> TraceBuilder:
        return self.access(va, "read", cpl, ac)

    def write(self, va: int, cpl: int = 3, ac: bool = False) -> TraceBuilder:
        return self.access(va, "write", cpl, ac)

    def fetch(self, va: int, cpl: int = 3) -> TraceBuilder:
        return self.access(va, "fetch", cpl)

    def mov_cr3(self, value: int, noflush: bool = False) -> TraceBuilder:
        return self._add(k.OP_MOV_CR3, value | (b.X86_CR3_PCID_NOFLUSH if noflush else 0))

    def mov_cr4(self, value: int) -> TraceBuilder:
        return self._add(k.OP_MOV_CR4, value)

    def mov_cr0(self, value: int) -> TraceBuilder:
        return self._add(k.OP_MOV_CR0, value)

    def invlpg(self, va: int) -> TraceBuilder:
        return self._add(k.OP_INVLPG, va)

    def invpcid(self, kind: int, pcid: int = 0, va: int = 0) -> TraceBuilder:
        if kind not in INVPCID_TYPES:
            raise KaiserEduError(f"INVPCID type must be 0-3 ({INVPCID_TYPES}); got {kind!r}")
        if not 0 <= pcid <= 0xFFF:
            raise KaiserEduError(f"pcid must be in 0..4095; got {pcid!r}")
        return self._add(k.OP_INVPCID, va, pcid | kind << 12)

    def wrpkru(self, value: int) -> TraceBuilder:
        if not 0 <= value < 1 << 32:
            raise KaiserEduError(f"PKRU is 32 bits; got {value!r}")
        return self._add(k.OP_WRPKRU, value)

    def build(self) -> Trace:
        if not self._rows:
            return Trace(np.zeros(0), np.zeros(0), np.zeros(0))
        op, addr, arg = zip(*self._rows)
        return Trace(np.array(op), np.array(addr, dtype=np.uint64), np.array(arg))


@dataclass(frozen=True)
class AccessResult:
    """One op's result, decoded."""

    op: str
    addr: int
    outcome: int
    error_code: int
    pa: int | None
    page_size: int | None
    tlb: str  # "walk", "L1" or "L2" for accesses

    @property
    def ok(self) -> bool:
        return self.outcome == b.OUTCOME_OK

    def __str__(self) -> str:
        if self.outcome == b.OUTCOME_GP:
            return f"{self.op} {self.addr:#x}: #GP"
        if self.outcome == b.OUTCOME_PF:
            return (f"{self.op} {self.addr:#x}: #PF error code {self.error_code:#x} "
                    f"({b.describe_error_code(self.error_code)})")
        if self.pa is None:
            return f"{self.op} {self.addr:#x}: done"
        return f"{self.op} {self.addr:#x} -> {self.pa:#x} ({b.size_name(self.page_size)}, {self.tlb})"


class TraceResult:
    """Per-op arrays (when recorded) and the counters this run added."""

    def __init__(self, trace: Trace, n_done: int, outcome, error_code, pa, size_code, where,
                 counters: dict[str, int]):
        self.trace = trace
        self.n_done = n_done
        self.outcome = outcome
        self.error_code = error_code
        self.pa = pa
        self.size_code = size_code
        self.where = where
        self.counters = counters

    @property
    def page_size(self) -> np.ndarray:
        return np.left_shift(np.int64(1), 12 + 9 * self.size_code.astype(np.int64))

    def __len__(self) -> int:
        return self.n_done

    def __getitem__(self, i: int) -> AccessResult:
        if self.outcome is None:
            raise KaiserEduError("this trace ran with record=False: only counters were kept")
        if not -self.n_done <= i < self.n_done:
            raise IndexError(f"op {i} was not executed (ran {self.n_done} ops)")
        i %= self.n_done
        op = int(self.trace.op[i])
        is_access = op <= k.OP_FETCH
        ok = self.outcome[i] == b.OUTCOME_OK
        return AccessResult(
            op=OP_NAMES[op],
            addr=int(self.trace.addr[i]),
            outcome=int(self.outcome[i]),
            error_code=int(self.error_code[i]),
            pa=int(self.pa[i]) if is_access and ok else None,
            page_size=int(self.page_size[i]) if is_access and ok else None,
            tlb=WHERE_NAMES[int(self.where[i])] if is_access else "",
        )


class MMU:
    """A CPU's translation hardware: registers, TLB and the physical memory it walks."""

    def __init__(self, mem: PhysMem, regs: Registers, tlb: TLBConfig | None = TLBConfig()):
        regs.validate()
        if regs.maxphyaddr != mem.maxphyaddr:
            raise KaiserEduError(
                f"registers say MAXPHYADDR={regs.maxphyaddr} but the memory has "
                f"{mem.maxphyaddr} bits"
            )
        self.mem = mem
        self.tlb_config = tlb
        self._regs = np.array(
            [regs.cr0, regs.cr3, regs.cr4, regs.efer, regs.pkru, regs.maxphyaddr],
            dtype=np.uint64,
        )
        cfg = tlb or TLBConfig(1, 1, 1, 1)
        self._geom = np.array(
            [tlb is not None, cfg.l1_sets, cfg.l1_ways, cfg.l2_sets, cfg.l2_ways], dtype=np.int64
        )
        self._tlb = np.zeros((4, cfg.l1_entries + cfg.l2_entries), dtype=np.uint64)
        self._tstate = np.zeros(6, dtype=np.uint64)
        self._pcid_flush = np.zeros(4096, dtype=np.uint64)
        self._recent = np.zeros(2 * k.RECENT_SLOTS, dtype=np.uint64)  # run_trace's filter (10)
        self._counters = np.zeros(k.N_COUNTERS, dtype=np.int64)

    # --- state -----------------------------------------------------------------------------
    @property
    def regs(self) -> Registers:
        cr0, cr3, cr4, efer, pkru, maxphy = (int(x) for x in self._regs)
        return Registers(cr0=cr0, cr3=cr3, cr4=cr4, efer=efer, pkru=pkru, maxphyaddr=maxphy)

    @property
    def counters(self) -> dict[str, int]:
        """Totals since this MMU was made (or since :meth:`reset_counters`)."""
        return dict(zip(COUNTER_NAMES, (int(c) for c in self._counters)))

    def reset_counters(self) -> None:
        self._counters[:] = 0

    # --- running ---------------------------------------------------------------------------
    def run(self, trace: Trace, record: bool = True, stop_on_fault: bool = False,
            repeat: int = 1) -> TraceResult:
        """Execute ``trace`` (``repeat`` times in a row, counters only, when repeat > 1).
        With ``stop_on_fault`` execution stops after the first op that faults (so a
        simulated kernel can handle the fault and resume)."""
        if not isinstance(repeat, int) or repeat < 1:
            raise KaiserEduError(f"repeat must be a positive integer, got {repeat!r}")
        if repeat > 1 and record:
            raise KaiserEduError("repeat > 1 keeps counters only: pass record=False")
        n = len(trace)
        if record:
            outs = (np.zeros(n, np.uint8), np.zeros(n, np.uint16), np.zeros(n, np.uint64),
                    np.zeros(n, np.uint8), np.zeros(n, np.uint8))
        else:  # counters only: run_trace's compiled variant without the recording code
            outs = (None, None, None, None, None)
        before = self._counters.copy()
        done = k.run_trace(
            *trace.kernel_columns, self.mem.pool, self.mem.ht,
            np.uint64(self.mem.ht_bits), self.mem.direct, self._regs, self._tlb, self._geom, self._tstate,
            self._pcid_flush, self._recent, self._counters, *outs, stop_on_fault, repeat,
            trace.one_kind,
        )
        delta = dict(zip(COUNTER_NAMES, (int(c) for c in self._counters - before)))
        if record:
            outs = tuple(o[:done] for o in outs)
            return TraceResult(trace, int(done), *outs, counters=delta)
        return TraceResult(trace, int(done), None, None, None, None, None, counters=delta)

    def _one(self, builder: TraceBuilder) -> AccessResult:
        return self.run(builder.build())[0]

    def access(self, va: int, kind: str = "read", cpl: int = 3, ac: bool = False) -> AccessResult:
        """One memory access through the TLB and, on a miss, the walk."""
        return self._one(TraceBuilder().access(va, kind, cpl, ac))

    def mov_cr3(self, value: int, noflush: bool = False) -> AccessResult:
        """MOV to CR3: switch page tables (and PCID); flush per SDM 4.10.4.1."""
        return self._one(TraceBuilder().mov_cr3(value, noflush))

    def mov_cr4(self, value: int) -> AccessResult:
        return self._one(TraceBuilder().mov_cr4(value))

    def mov_cr0(self, value: int) -> AccessResult:
        return self._one(TraceBuilder().mov_cr0(value))

    def invlpg(self, va: int) -> AccessResult:
        return self._one(TraceBuilder().invlpg(va))

    def invpcid(self, kind: int, pcid: int = 0, va: int = 0) -> AccessResult:
        return self._one(TraceBuilder().invpcid(kind, pcid, va))

    def wrpkru(self, value: int) -> AccessResult:
        return self._one(TraceBuilder().wrpkru(value))

    # --- looking inside --------------------------------------------------------------------
    def tlb_entries(self) -> list[dict]:
        """The TLB's usable entries, L1 then L2, decoded (for lessons and tests)."""
        if self.tlb_config is None:
            return []
        last_all, last_ng = int(self._tstate[k.T_LAST_ALL]), int(self._tstate[k.T_LAST_NG])
        out = []
        l1_rows = self.tlb_config.l1_entries
        for r, (tag, stamp, data, lru) in enumerate(self._tlb.T.tolist()):
            glob = bool(tag >> 3 & 1)
            pcid = tag >> 4 & 0xFFF
            if not stamp or stamp <= last_all:
                continue
            if not glob and (stamp <= last_ng or stamp <= int(self._pcid_flush[pcid])):
                continue
            size_code = tag & 3
            shift = 12 + 9 * size_code
            out.append({
                "level": "L1" if r < l1_rows else "L2",
                "va": canonicalize(tag >> 16 << shift, self.regs.levels),
                "page_size": 1 << shift,
                "pcid": None if glob else pcid,
                "global": glob,
                "pa": data & ~((1 << shift) - 1),
                "user": bool(data & 1),
                "writable": bool(data & 2),
                "nx": bool(data & 4),
                "dirty": bool(data & 8),
                "pkey": data >> 4 & 0xF,
                "last_use": lru,
            })
        return out


def _access_code(kind: str) -> int:
    if kind not in b.ACCESS_KINDS:
        raise KaiserEduError(f"access kind must be one of read, write, fetch; got {kind!r}")
    return b.ACCESS_KINDS[kind]
