"""Meltdown end to end, from an unprivileged process of a booted :class:`Kernel`.

Lipp et al., "Meltdown: Reading Kernel Memory from User Space", USENIX Security 2018
(CVE-2017-5754), and its PoC IAIK/meltdown (libkdump.c). For every byte the attacker:

1. flushes the 256 lines of a 256 x 4096-byte probe array (``clflush``);
2. loads the target byte from user mode. The load faults; on an affected CPU the value is
   forwarded to the next instruction, which touches ``probe[value * 4096]`` (transiently);
3. survives the fault: a SIGSEGV handler, or an aborted TSX transaction where the CPU model
   has RTM (``CpuModel.rtm``; the PoC prefers TSX);
4. reloads the 256 lines, timing each (Flush+Reload): the cached one names the byte.

Whether step 2 forwards anything is decided by the MMU under the attacker's CR3
(:mod:`kaiser_edu.attacks.transient`): only a *protection* fault forwards, so the attack
works with isolation off and reads nothing under KAISER/PTI, where the walk stops at a
not-present PGD entry. The decoding and timing run in numba
(:func:`kaiser_edu.attacks.flush_reload.meltdown_rounds`).

Targets: the kernel image's secret (:func:`secret_address`), any kernel virtual address, and
another process's memory through the direct map (:func:`direct_map_address`), the paper's
physical-memory reader: ``page_offset_base + pa`` reaches every frame of RAM.

>>> from kaiser_edu.kernel.machine import Kernel
>>> k = Kernel(isolation="off", cpu="skylake", seed=3)
>>> r = leak(k, k.spawn("attacker"), secret_address(k), 17, seed=1)
>>> r.data
b'The KAISER secret'
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kaiser_edu.attacks import flush_reload as fr
from kaiser_edu.attacks.transient import (
    ARCHITECTURAL,
    P_FORWARD_CACHED,
    P_FORWARD_UNCACHED,
    REASONS,
    TransientLoads,
    read_bytes,
    transient_loads,
)
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import is_canonical
from kaiser_edu.hw.walk import WalkResult, walk
from kaiser_edu.kernel.timing import Timing, timing

MAX_LEAK_BYTES = 1 << 20  # a sane bound for one call (1 MiB)
MAX_RETRIES = 100_000


@dataclass
class LeakResult:
    """What one :func:`leak` recovered and what it cost.

    ``data`` has one byte per address; ``confidence[i]`` is the share of byte i's reads
    (``measurements``) that returned ``data[i]`` (0 where nothing was observed: the byte then
    reads 0, which a real 0 cannot be told apart from). ``attempts[i]`` counts its transient
    loads. ``cycles`` is simulated time at the
    CPU model's clock, ``host_seconds`` the wall-clock time this computer took. ``truth`` is what the
    kernel reads through its own mapping (None where the kernel has no mapping for part of
    the range)."""

    address: int
    data: bytes
    confidence: np.ndarray
    attempts: np.ndarray
    cycles: float
    seconds: float
    bytes_per_second: float
    host_seconds: float
    truth: bytes | None
    cpu: str
    isolation: str
    threshold: float
    loads: TransientLoads = field(repr=False)

    @property
    def length(self) -> int:
        return len(self.data)

    @property
    def recovered(self) -> np.ndarray:
        """Bytes with at least one observation (confidence > 0)."""
        return self.confidence > 0

    @property
    def accuracy(self) -> float | None:
        """Share of bytes equal to ``truth`` (None without a ground truth)."""
        if self.truth is None:
            return None
        got = np.frombuffer(self.data, np.uint8)
        want = np.frombuffer(self.truth, np.uint8)
        return float((got == want).mean()) if len(got) else 1.0

    @property
    def error_rate(self) -> float | None:
        """Share of *recovered* bytes that are wrong (None without truth or recovery)."""
        if self.truth is None or not self.recovered.any():
            return None
        got = np.frombuffer(self.data, np.uint8)[self.recovered]
        want = np.frombuffer(self.truth, np.uint8)[self.recovered]
        return float((got != want).mean())

    @property
    def why(self) -> str:
        """Why bytes were or were not forwarded, from the MMU's outcome per byte."""
        return self.loads.summary()

    def as_dict(self) -> dict:
        """A JSON-able summary (the CLI's ``--json``)."""
        return {
            "address": f"{self.address:#x}", "length": self.length,
            "data_hex": self.data.hex(), "data_text": _printable(self.data),
            "recovered": int(self.recovered.sum()),
            "mean_confidence": float(self.confidence.mean()) if self.length else 0.0,
            "accuracy": self.accuracy, "error_rate": self.error_rate,
            "truth_hex": None if self.truth is None else self.truth.hex(),
            "cycles": self.cycles, "simulated_seconds": self.seconds,
            "bytes_per_second": self.bytes_per_second, "host_seconds": self.host_seconds,
            "cpu": self.cpu, "isolation": self.isolation, "threshold": self.threshold,
            "why": self.why,
        }


def _printable(data: bytes) -> str:
    return "".join(chr(c) if 32 <= c < 127 else "." for c in data)


def secret_address(kernel) -> int:
    """Where the kernel image keeps the lab's secret (in .data, mapped supervisor-only)."""
    return kernel.image.secret


def direct_map_address(kernel, victim, va: int, page_offset: int | None = None) -> int:
    """The direct-map alias of ``victim``'s user address ``va``: ``page_offset_base + pa``.

    ``pa`` comes from the victim's page tables; the attacker learns it in the paper through
    /proc/pid/pagemap or by scanning, and ``page_offset_base`` from a KASLR break (pass
    ``page_offset=break_kaslr(...).direct_map_base``). Without it, the boot's true base."""
    pa = kernel.translate_user(victim, va)
    if pa is None:
        raise KaiserEduError(f"{va:#x} is not mapped in pid {victim.pid} (touch it first)")
    base = kernel.layout.page_offset if page_offset is None else page_offset
    return base + pa


def kernel_view(kernel, task, address: int, length: int) -> bytes | None:
    """The bytes a supervisor read returns through the kernel's own mapping (the kernel PGD;
    for user addresses, ``task``'s tables), or None if part of the range is unmapped."""
    vas = np.arange(address, address + length, dtype=np.uint64)
    pa = np.zeros(length, np.uint64)
    pages: dict[int, int | None] = {}
    for i, va in enumerate(vas.tolist()):
        page = va & ~(b.PAGE_SIZE - 1)
        if page not in pages:
            tables = kernel.kernel_tables if va >= 1 << 63 else task.mm.tables
            pages[page] = tables.translate(page) if is_canonical(page, 4) else None
        if pages[page] is None:
            return None
        pa[i] = pages[page] | (va & (b.PAGE_SIZE - 1))
    return read_bytes(kernel.mem, pa, np.ones(length, bool)).tobytes()


def check_request(address: int, length: int, retries: int) -> None:
    """Refuse what no attack could mean: raise KaiserEduError naming what is allowed."""
    if not isinstance(address, int) or not 0 <= address < 1 << 64:
        raise KaiserEduError(f"address must be a 64-bit integer, got {address!r}")
    if not is_canonical(address, 4):
        raise KaiserEduError(f"{address:#x} is not canonical (bits 63:47 must all equal bit 47)")
    if not isinstance(length, int) or not 0 < length <= MAX_LEAK_BYTES:
        raise KaiserEduError(f"length must be 1..{MAX_LEAK_BYTES} bytes, got {length!r}")
    end = address + length - 1
    if end >= 1 << 64 or not is_canonical(end, 4) or (address < 1 << 47) != (end < 1 << 47):
        raise KaiserEduError(f"[{address:#x}, +{length}) leaves its canonical half")
    if not isinstance(retries, int) or not 1 <= retries <= MAX_RETRIES:
        raise KaiserEduError(f"retries must be 1..{MAX_RETRIES}, got {retries!r}")


def leak(kernel, attacker_task, address: int, length: int, *, retries: int = 50,
         seed: int = 0, warm: bool = True, measurements: int = fr.MEASUREMENTS,
         costs: Timing | None = None) -> LeakResult:
    """Read ``length`` bytes at ``address`` from ``attacker_task``'s user mode with Meltdown.

    The attacker is scheduled (if it is not the running task), so the MMU walks its user
    page tables: the kernel PGD without isolation, the shadow PGD under KAISER/PTI.
    A byte is ``measurements`` reads, the most frequent non-zero result winning; a read is
    up to ``retries`` attempts (a transient load, the fault, and a Flush+Reload scan of the
    probe lines that stops at the first hit), as in IAIK/meltdown's libkdump_read().
    ``warm``: the target is kept in the cache (the paper's syscall that touches the kernel
    secret, or a victim that keeps using its data); its cost, one syscall per attempt, is
    counted. Without it each attempt rarely wins the race (P_FORWARD_UNCACHED).
    ``costs``: a cycle-cost table to use instead of the CPU model's preset (e.g. one with
    more noise, made with :func:`dataclasses.replace`)."""
    if not isinstance(measurements, int) or measurements < 1:
        raise KaiserEduError(f"measurements must be a positive integer, got {measurements!r}")
    start = time.perf_counter()
    run = _prepare(kernel, attacker_task, address, length, retries, seed, warm, costs)
    data, confidence, attempts, cycles = fr.meltdown_rounds(
        *run.kernel_args, retries, measurements, np.int64(seed))
    cycles += _translation_cycles(run.loads, run.timing)
    sim_seconds = run.timing.cycles_to_seconds(cycles)
    return LeakResult(
        address=address, data=data.tobytes(), confidence=confidence, attempts=attempts,
        cycles=float(cycles), seconds=sim_seconds,
        bytes_per_second=length / sim_seconds if sim_seconds else 0.0,
        host_seconds=time.perf_counter() - start,
        truth=kernel_view(kernel, attacker_task, address, length),
        cpu=_cpu_name(kernel), isolation=kernel.isolation.name, threshold=run.threshold,
        loads=run.loads,
    )


@dataclass
class _Run:
    """What every Meltdown variant sets up: the model's costs, the MMU's verdict per byte,
    and the receiver's calibrated threshold."""

    timing: Timing
    loads: TransientLoads
    threshold: float
    params: np.ndarray
    cached: np.ndarray

    @property
    def kernel_args(self) -> tuple:
        return (self.loads.forwarded.astype(np.uint8), self.loads.value, self.cached,
                self.params)


def _prepare(kernel, attacker_task, address: int, length: int, retries: int, seed: int,
             warm: bool, costs: Timing | None) -> _Run:
    """Check the request, schedule the attacker (so its user CR3 is the active one), ask the
    MMU about every byte, and calibrate the receiver."""
    check_request(address, length, retries)
    if not attacker_task.alive:
        raise KaiserEduError(f"pid {attacker_task.pid} has exited: {attacker_task.exit_reason}")
    if kernel.current is not attacker_task:
        outcome = kernel.switch_to(attacker_task)
        if not outcome.ok:
            raise KaiserEduError(f"could not run pid {attacker_task.pid}: {outcome.detail}")
    t = timing(kernel.cpu) if costs is None else costs
    loads = transient_loads(kernel, np.arange(address, address + length, dtype=np.uint64))
    _hits, _misses, threshold = fr.calibrate(t, 1000, seed)
    params = fr.params_array(t, threshold, P_FORWARD_CACHED, P_FORWARD_UNCACHED,
                             fault_cost(kernel, t), warm_cost(kernel, t) if warm else 0.0)
    return _Run(t, loads, threshold, params, np.full(length, warm, np.uint8))


@dataclass
class Observation:
    """Raw Flush+Reload measurements, for a receiver and decoder written by a student:
    ``times[i, a, v]`` is the timed reload of probe line ``v`` in attempt ``a`` for byte
    ``i``. ``calibration`` holds timed reloads of a cached and of a flushed line."""

    address: int
    times: np.ndarray  # float32 (length, retries, 256)
    hits: np.ndarray  # calibration: reloads of a cached line
    misses: np.ndarray  # calibration: reloads of a flushed line
    truth: bytes | None
    loads: TransientLoads = field(repr=False)


def observe(kernel, attacker_task, address: int, length: int, *, retries: int = 10,
            seed: int = 0, warm: bool = True, costs: Timing | None = None) -> Observation:
    """Run ``retries`` Meltdown attempts per byte and keep every timed reload (no early
    stop, no decoding): the input of lab 05's receiver. length x retries is at most 65536
    (64 MiB of float32 times)."""
    if isinstance(length, int) and isinstance(retries, int) and length * retries > 1 << 16:
        raise KaiserEduError(f"observe() keeps 256 times per attempt: length x retries must "
                             f"be at most 65536, got {length} x {retries}")
    run = _prepare(kernel, attacker_task, address, length, retries, seed, warm, costs)
    times = fr.observe_rounds(*run.kernel_args, retries, np.int64(seed))
    hits, misses, _ = fr.calibrate(run.timing, 1000, seed + 1)
    return Observation(address, times, hits, misses,
                       kernel_view(kernel, attacker_task, address, length), run.loads)


@dataclass
class Story:
    """One Meltdown attempt on one byte, step by step (lesson 05's transient-window stepper):
    the walk the load makes, what it forwards, the probe line it touches, the fault, the
    roll-back, and the 256 reload times that show the line that stayed cached."""

    address: int
    walk: WalkResult  # the user-mode load's walk under the active CR3
    reason: str
    value: int | None  # the forwarded value (None: nothing forwarded)
    line: int | None  # the probe line the dependent access touched
    fault: str
    reload_times: np.ndarray  # 256 timed reloads after the fault
    threshold: float
    decoded: int | None  # the line that reloaded fast (None: none did)

    def steps(self) -> list[tuple[str, str]]:
        """(title, explanation) for each step, in program order."""
        va = f"{self.address:#x}"
        load = f"mov al, byte [{va}] at CPL 3: {self.walk.summary()}"
        if self.value is None:
            forward = f"nothing is forwarded ({self.reason})"
            dep = "the dependent access never runs: no probe line is touched"
        else:
            forward = f"the value {self.value:#04x} reaches the next instructions ({self.reason})"
            dep = (f"probe[{self.value:#04x} * 4096] is loaded: line {self.line} enters the cache"
                   if self.line is not None else
                   "the value lost the race (a 0 was read; the PoC retries a 0 rather than "
                   "transmit it): no probe line is touched")
        rollback = ("the load retires with its fault: the register and every transient result "
                    "are discarded, architecturally nothing happened")
        if self.decoded is None:
            stays = "no probe line reloads fast: this attempt saw nothing"
        else:
            stays = (f"probe line {self.decoded} reloads in {self.reload_times[self.decoded]:.0f}"
                     f" cycles (threshold {self.threshold:.0f}): the byte is {self.decoded:#04x}")
        return [("the load", load), ("the forwarding", forward), ("the dependent access", dep),
                ("the fault", self.fault), ("the roll-back", rollback),
                ("the cache line that stays", stays)]


def story(kernel, attacker_task, address: int, *, seed: int = 0, warm: bool = True) -> Story:
    """One attempt at one byte, recorded for stepping through (see :class:`Story`)."""
    obs = observe(kernel, attacker_task, address, 1, retries=1, seed=seed, warm=warm)
    _h, _m, threshold = fr.calibrate(timing(kernel.cpu), 1000, seed)
    loads = obs.loads
    times = obs.times[0, 0].astype(np.float64)
    fast = np.flatnonzero(times < threshold)
    forwarded = bool(loads.forwarded[0])
    value = int(loads.value[0]) if forwarded else None
    line = int(fast[0]) if forwarded and len(fast) and fast[0] == value else None
    fault = ("the #PF aborts the TSX transaction (xbegin ... xend): execution resumes at "
             "the abort path, no signal is delivered" if kernel.cpu.rtm else
             "the #PF is delivered as SIGSEGV; the handler longjmps back to the receiver")
    if loads.reason[0] == ARCHITECTURAL:
        fault = "no fault: the address is user-accessible, the load simply completes"
    return Story(address, walk(kernel.mem, kernel.mmu.regs, address, "read", cpl=3,
                               set_ad=False),
                 REASONS[loads.reason[0]], value, line, fault, times, threshold,
                 int(fast[0]) if len(fast) else None)


def fault_cost(kernel, t: Timing) -> float:
    """Surviving the fault: an RTM abort where the CPU has TSX, else a SIGSEGV delivered to
    a handler that longjmps back (the PoC's two ways)."""
    return t.tsx_abort if kernel.cpu.rtm else t.fault_delivery


def warm_cost(kernel, t: Timing) -> float:
    """One syscall that touches the target (the paper keeps the secret cached this way):
    SYSCALL/SYSRET, the kernel's work, and two CR3 writes under isolation."""
    return t.syscall_sysret + t.entry_work + (2 * t.cr3_write if kernel.isolation.pgd_pair else 0)


def _translation_cycles(loads: TransientLoads, t: Timing) -> float:
    """The target loads' own translation, once per byte: a TLB hit or a 4-level walk."""
    where = loads.tlb
    return float((where == 1).sum() * t.l1_tlb_hit + (where == 2).sum() * t.l2_tlb_hit
                 + (where == 0).sum() * 4 * t.walk_level)


def _cpu_name(kernel) -> str:
    from kaiser_edu.kernel.cpu import CPU_MODELS

    return next((n for n, m in CPU_MODELS.items() if m == kernel.cpu), kernel.cpu.name)


def idt_text_base(kernel, attacker_task, *, seed: int = 0,
                  vector: int = 14) -> tuple[int | None, LeakResult]:
    """What the cpu_entry_area reveals: Meltdown reads the ``vector`` gate (default #PF) of
    the IDT, which every user page table maps (kernel/idt.py), and the handler address it
    names, minus the handler's known offset in the image, is ``_text``. Returns (the text
    base or None if nothing was read, the leak)."""
    from kaiser_edu.kernel.idt import GATE_SIZE, GATES, gate_handler
    from kaiser_edu.kernel.image import ENTRY_SYMBOLS, ENTRY_TEXT_OFFSET

    if vector not in GATES:
        raise KaiserEduError(f"vector must be one of {sorted(GATES)}, got {vector!r}")
    address = kernel.cea("IDT (read-only)") + vector * GATE_SIZE
    r = leak(kernel, attacker_task, address, GATE_SIZE, seed=seed)
    if not r.recovered.any():
        return None, r
    low, high = (int.from_bytes(r.data[i:i + 8], "little") for i in (0, 8))
    offset = ENTRY_TEXT_OFFSET + ENTRY_SYMBOLS[GATES[vector][0]]
    return gate_handler(low, high) - offset, r


VICTIM_SECRET = b"Victim's password: correct horse battery staple"


def spawn_victim(kernel, message: bytes = VICTIM_SECRET) -> tuple[object, int]:
    """A victim process holding ``message`` at the start of its data segment (the page is
    faulted in and written through its own user mapping). Returns (task, va)."""
    victim = kernel.spawn("victim")
    va = victim_data_va()
    padded = message.ljust(-(-len(message) // 8) * 8, b"\0")
    if kernel.current is not victim:
        kernel.switch_to(victim)
    for off in range(0, len(padded), 8):
        kernel.user_store(victim, va + off, int.from_bytes(padded[off:off + 8], "little"))
    return victim, va


def victim_data_va() -> int:
    """Where :func:`spawn_victim` puts its message: the start of the [data] VMA."""
    from kaiser_edu.kernel.machine import USER_TEXT

    return USER_TEXT + 0x20_0000


def parse_target(kernel, spec: str) -> tuple[int, str]:
    """A CLI target: ``secret``, an ADDRESS (hex or decimal), or ``PID:VA`` (a process's
    user address, read through the direct map). Returns (address, description)."""
    if spec == "secret":
        return secret_address(kernel), "the kernel image's secret"
    if ":" in spec:
        parts = spec.split(":")
        if parts[0] == "pid":
            parts = parts[1:]
        try:
            pid, va = (int(x, 0) for x in parts)
        except ValueError:
            raise KaiserEduError(f"target {spec!r}: expected PID:VA, e.g. 2:0x600000") from None
        victim = kernel.tasks.get(pid)
        if victim is None:
            raise KaiserEduError(f"no process with pid {pid}; pids: {sorted(kernel.tasks)}")
        return direct_map_address(kernel, victim, va), f"pid {pid}'s {va:#x} via the direct map"
    try:
        address = int(spec, 0)
    except ValueError:
        raise KaiserEduError(
            f"target must be 'secret', an address (0x...), or PID:VA; got {spec!r}") from None
    return address, f"{address:#x} ({kernel.layout.region_of(address)})"
