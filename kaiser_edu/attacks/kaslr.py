"""Breaking KASLR from user mode with timing: the side channels KAISER was built to close.

KASLR (arch/x86/boot/compressed/kaslr.c, arch/x86/mm/kaslr.c) hides where the kernel image
(``_text``, a 2 MiB slot in a 1 GiB window) and the direct map (``page_offset_base``, a
1 GiB step) are. Every method below probes each candidate slot, many times, and times how
far the *address translation* gets. The times come from the MMU as it is (TLB hit in L1 or
L2, or a walk that reads N entries before it ends) priced by :mod:`kaiser_edu.kernel.timing`
with seeded noise; nothing here looks at ``kernel.layout`` except to report the truth.

``prefetch``  Gruss, Maurice, Fogh, Lipp, Mangard, "Prefetch Side-Channel Attacks: Bypassing
    SMAP and Kernel ASLR", CCS 2016:
    a PREFETCH never faults and does no privilege check, but it translates its address, and
    a translation that completes is cached in the TLB. Modelled as an MMU read at CPL 0 with
    RFLAGS.AC=1 (no U/S check, no SMAP) whose fault, if any, is dropped. A mapped slot is a
    TLB hit from its second probe on; an unmapped slot walks to its not-present entry every
    time.
``double-fault``  Hund, Willems, Holz, "Practical Timing Side Channel Attacks Against Kernel
    Space ASLR", IEEE S&P 2013: access each candidate from user mode twice and time the
    second fault. Model choice: the SDM lets the TLB cache any *valid* translation ("there
    can be a TLB entry for a page number only if the P flag is 1 and the reserved bits are 0
    in each of the paging-structure entries used to translate that page number", SDM Vol.
    3A, "Details of TLB Use", 4.10.1.3 in edition 253668-032US; later editions renumber it),
    and a protection fault has one (SDM 4.7: "there is a valid translation for the linear
    address, but its access rights do not permit the access"). The same section allows
    caching "translations required for prefetches", the basis of the prefetch model.
    The simulator's MMU drops the page's entries when it delivers a #PF (hw/tlb.py rule 6),
    so the retention Hund et al. measured is modelled explicitly: after the first fault,
    the same rights-free translation a prefetch makes fills the TLB *iff the walk finds a
    valid translation*. The second fault is then a TLB hit (fast) or a fresh walk (slow).
    Where the CPU model has RTM the fault aborts a transaction instead of being delivered
    (the TSX variant of this probe: Jang, Lee, Kim, "Breaking Kernel Address Space Layout
    Randomization with Intel TSX", CCS 2016), which only changes the constant cost.
``entrybleed``  Liu, Ravichandran, Yan, "EntryBleed: A Universal KASLR Bypass against KPTI
    on Linux", HASP 2023 (CVE-2022-4543): under PTI the entry text stays mapped (and global)
    in the user page tables. Each round makes a syscall, which runs entry_SYSCALL_64 on the
    user CR3 and leaves its translation in the TLB, then prefetches ``entry_SYSCALL_64``'s
    address for every candidate slot. Before the syscall the attacker evicts the TLB by
    reading one qword of each of ``EVICTION_PAGES`` pages of its own, so what hits in a
    round is what the syscall put there, not what the previous round's probes did: this
    reads TLB *state*, and so also beats FLARE's dummy mappings
    (:mod:`kaiser_edu.attacks.flare`), which only make every slot *mapped*.

Deciding: the attacker calibrates on its own address space, a TLB hit (a page it just used)
and the shortest walk (an address in an empty PGD slot, one entry read), both probed the way
the method probes; the threshold is their midpoint, raised to halfway between the hit and
the median candidate when most candidates walk deeper than one level (so an L2 TLB hit still
counts as a hit where unmapped slots walk three levels). A candidate is mapped if the median of
its probes (after the first, priming round) is below it, confirmed by a second pass of
``VERIFY_ROUNDS`` probes of all suspects together. The guess is the lowest confirmed slot (the image and the direct
map each start at their lowest mapped slot), and None when nothing is confirmed, or when
more slots look mapped than the region can hold (more than ``MAX_IMAGE_SLOTS`` for the
text, the 64 MiB KASLR reserves for the image; more than half the candidates for the direct
map), counting both the slots below the threshold and those whose probes got faster once
probed (their translation was cached: mapped, even if now only an L2 TLB hit): every slot
looks mapped, as under FLARE. An honest "not found", not a wrong guess.

What the model gives (tests/test_attacks_kaslr.py checks it over several seeds):

============  =====================  ======================  ==========================
method        isolation off          KAISER (2017)           PTI (as merged)
============  =====================  ======================  ==========================
prefetch      text and direct map    nothing                 text (not the direct map)
double-fault  text and direct map    nothing                 text (not the direct map)
entrybleed    text                   text                    text
============  =====================  ======================  ==========================

KAISER's shadow maps the entry text with 4 KiB pages at ``_text + 0x1000``, so no slot
base translates and the first two find nothing; probing entry_SYSCALL_64 itself does. PTI
clones the entry text's whole 2 MiB PMD, which is ``_text``'s own slot, so every method
that probes it finds the base; the direct map is in neither user PGD. With FLARE
(:func:`kaiser_edu.attacks.flare.apply_flare`) every slot translates: prefetch and
double-fault report nothing, EntryBleed still finds the text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from kaiser_edu.attacks.meltdown import fault_cost
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import Trace
from kaiser_edu.hw.walk import walk
from kaiser_edu.kernel import layout as L
from kaiser_edu.kernel.image import ENTRY_SYMBOLS, ENTRY_TEXT_OFFSET
from kaiser_edu.kernel.mm import PROT_READ, vm_page_prot
from kaiser_edu.kernel.timing import Timing, timing

METHODS = ("prefetch", "double-fault", "entrybleed")
VERIFY_ROUNDS = 256
MAX_IMAGE_SLOTS = (64 << 20) // b.PMD_SIZE  # the room kernel/layout.py leaves for the image
EVICTION_PAGES = 2048  # more 4 KiB pages than both TLB levels hold (64 + 1536 entries)
EVICTION_BASE = 0x6000_0000_0000  # where the attacker maps them (an empty PGD slot)
CALIBRATION_ROUNDS = 256
EMPTY_USER_SLOT = 0x5000_0000_0000  # PGD index 160: nothing maps there in the simulation
MAX_ROUNDS = 1024
# entry_SYSCALL_64 - _text: where EntryBleed probes in each candidate slot.
ENTRY_SYSCALL_OFFSET = ENTRY_TEXT_OFFSET + ENTRY_SYMBOLS["entry_SYSCALL_64"]


def text_candidates() -> np.ndarray:
    """Every ``_text`` KASLR may choose: 2 MiB slots from LOAD_PHYSICAL_ADDR up to the end of
    the 1 GiB kernel-image window, less room for the image (as kernel/layout.py draws them)."""
    slots = (L.KERNEL_IMAGE_SIZE - L.LOAD_PHYSICAL_ADDR - (64 << 20)) // b.PMD_SIZE
    return (np.uint64(L.START_KERNEL_MAP + L.LOAD_PHYSICAL_ADDR)
            + np.arange(slots, dtype=np.uint64) * np.uint64(b.PMD_SIZE))


def direct_map_candidates() -> np.ndarray:
    """Every ``page_offset_base`` KASLR may choose: 1 GiB steps from __PAGE_OFFSET_BASE up
    to the first region's share of the randomisation slack (arch/x86/mm/kaslr.c)."""
    slack = (L._KASLR_END - L._KASLR_START) - sum(tb << 40 for tb in L._REGION_TB.values())
    steps = slack // len(L._REGION_TB) // b.PUD_SIZE + 1
    return (np.uint64(L._KASLR_START)
            + np.arange(steps, dtype=np.uint64) * np.uint64(b.PUD_SIZE))


@dataclass
class Scan:
    """One region's scan: per candidate slot, its median probe time; what was decided."""

    candidates: np.ndarray  # uint64 slot addresses (text: candidate _text values)
    times: np.ndarray  # float64 median cycles per candidate (first round excluded)
    first: np.ndarray  # float64 cycles of each candidate's first probe (the cold TLB)
    mapped: np.ndarray  # bool, confirmed by the verification pass
    guess: int | None
    truth: int
    threshold: float  # cycles: below it, a probe counts as a TLB hit


@dataclass
class KaslrResult:
    """What :func:`break_kaslr` found. ``text_base`` and ``direct_map_base`` are None where
    the method found nothing (or does not look: EntryBleed finds only the text)."""

    method: str
    text_base: int | None
    direct_map_base: int | None
    text: Scan
    direct_map: Scan | None
    threshold: float  # the text scan's (Scan.threshold)
    hit_reference: float
    walk_reference: float
    probes: int
    cycles: float
    seconds: float
    host_seconds: float
    cpu: str
    isolation: str

    @property
    def candidates(self) -> np.ndarray:
        """The candidate ``_text`` slots (for the figures)."""
        return self.text.candidates

    @property
    def times(self) -> np.ndarray:
        """Median probe cycles per candidate text slot (for the figures)."""
        return self.text.times

    @property
    def text_correct(self) -> bool:
        return self.text_base == self.text.truth

    @property
    def direct_map_correct(self) -> bool | None:
        if self.direct_map is None:
            return None
        return self.direct_map_base == self.direct_map.truth

    def as_dict(self) -> dict:
        def h(x):
            return None if x is None else f"{x:#x}"
        out = {
            "method": self.method, "cpu": self.cpu, "isolation": self.isolation,
            "text_base": h(self.text_base), "true_text_base": h(self.text.truth),
            "text_correct": self.text_correct,
            "direct_map_base": h(self.direct_map_base),
            "true_direct_map_base": h(self.direct_map.truth) if self.direct_map else None,
            "direct_map_correct": self.direct_map_correct,
            "text_slots_confirmed": [h(int(c)) for c in self.text.candidates[self.text.mapped]],
            "threshold": self.threshold, "hit_reference": self.hit_reference,
            "walk_reference": self.walk_reference, "probes": self.probes,
            "cycles": self.cycles, "simulated_seconds": self.seconds,
            "host_seconds": self.host_seconds,
        }
        return out


class Prober:
    """Times probes of one method on one kernel: MMU batches in, cycles out.

    Public for the labs (lab 09's timing oracle): ``Prober(kernel, task, method, costs,
    rng)``, then :meth:`depth` (entries a walk of each address reads) and :meth:`run`
    (``rounds`` x len(vas) probe times); ``probes`` and ``cycles`` count what was spent.
    For ``"entrybleed"`` each round evicts the TLB and makes a syscall first."""

    def __init__(self, kernel, task, method: str, t: Timing, rng: np.random.Generator):
        self.k, self.task, self.method, self.t, self.rng = kernel, task, method, t, rng
        self.base = t.timer_overhead + (fault_cost(kernel, t) if method == "double-fault"
                                        else t.prefetch)
        self.probes = 0
        self.cycles = 0.0
        self.eviction: Trace | None = None
        if method == "entrybleed":
            va = _eviction_pages(kernel, task)
            self.eviction = Trace.accesses(va, "read", cpl=3)

    def _ops(self, vas: np.ndarray) -> tuple[Trace, np.ndarray]:
        """The trace for one probe of each address, and which op of it is timed."""
        n = len(vas)
        if self.method != "double-fault":
            return Trace.accesses(vas, "read", cpl=0, ac=True), np.arange(n)
        # fault (user read), the retention of a valid translation, the timed second fault
        va3 = np.repeat(vas, 3)
        cpl = np.tile(np.array([3, 0, 3]), n)
        ac = np.tile(np.array([False, True, False]), n)
        return Trace.accesses(va3, "read", cpl=cpl, ac=ac), np.arange(n) * 3 + 2

    def depth(self, vas: np.ndarray) -> np.ndarray:
        """Entries a walk of each address reads under the current CR3 (the walk ends at the
        leaf or at the first not-present entry): the cost of a TLB miss."""
        regs = self.k.mmu.regs
        return np.array([len(walk(self.k.mem, regs, int(v), "read", cpl=0, ac=True,
                                  set_ad=False).steps) for v in vas.tolist()], np.int64)

    def run(self, vas: np.ndarray, rounds: int, depth: np.ndarray) -> np.ndarray:
        """``rounds`` x len(vas) probe times (cycles), round by round through the MMU."""
        times = np.empty((rounds, len(vas)))
        t = self.t
        for r in range(rounds):
            if self.eviction is not None:
                self.k.mmu.run(self.eviction, record=False)
                self.cycles += len(self.eviction) * (t.cache_hit + t.walk_level)
                outcome = self.k.syscall(self.task)
                if not outcome.ok:
                    raise KaiserEduError(f"the attacker's syscall failed: {outcome.detail}")
                self.cycles += t.syscall_sysret + t.entry_work
            trace, timed = self._ops(vas)
            where = self.k.mmu.run(trace).where[timed]
            times[r] = self._price(where, depth)
        self.probes += rounds * len(vas)
        self.cycles += float(times.sum())
        return times

    def _price(self, where: np.ndarray, depth: np.ndarray) -> np.ndarray:
        t = self.t
        cost = np.where(where == 1, t.l1_tlb_hit,
                        np.where(where == 2, t.l2_tlb_hit, depth * t.walk_level))
        noise = self.rng.normal(0.0, t.noise_sigma, len(where))
        tails = (self.rng.random(len(where)) < t.tail_prob) * t.tail_cycles
        return self.base + cost + noise + tails


_Prober = Prober  # the name lab 09 was first written against


def _references(prober: Prober, task, rounds: int) -> tuple[float, float]:
    """The attacker's calibration on its own address space: a TLB-hit probe and a probe that
    walks one entry (an empty PGD slot), each the median over ``rounds``."""
    k = prober.k
    if prober.method == "double-fault":
        # A fault that hits the TLB: write to a read-only page just read (TLB filled).
        ro = _readonly_page(k, task)
        trace = Trace.concat([Trace.accesses(np.array([ro, ro], np.uint64),
                                             np.array([0, 1], np.uint8), cpl=3)] * rounds)
        res = k.mmu.run(trace)
        hit = prober._price(res.where[1::2], np.zeros(rounds, np.int64))
    else:
        own = np.full(rounds + 1, task.user_rip, np.uint64)
        res = k.mmu.run(Trace.accesses(own, "read", cpl=0, ac=True))
        hit = prober._price(res.where[1:], np.zeros(rounds, np.int64))
    empty = np.full(rounds, EMPTY_USER_SLOT, np.uint64)
    trace = Trace.accesses(empty, "read", cpl=3 if prober.method == "double-fault" else 0,
                           ac=prober.method != "double-fault")
    res = k.mmu.run(trace)
    miss = prober._price(res.where, prober.depth(empty[:1]).repeat(rounds))
    prober.cycles += float(hit.sum() + miss.sum())
    return float(np.median(hit)), float(np.median(miss))


def _eviction_pages(kernel, task) -> np.ndarray:
    """One qword in each of EVICTION_PAGES read-only pages of the attacker, populated at once
    (mmap with MAP_POPULATE: what the first touch of each would do, done for all)."""
    vma = next((v for v in task.mm.vmas if v.name == "[tlb-eviction]"), None)
    if vma is None:
        size = EVICTION_PAGES * b.PAGE_SIZE
        va = kernel.mmap(task, size, PROT_READ, addr=EVICTION_BASE, name="[tlb-eviction]")
        frames = kernel.alloc.alloc_contig(EVICTION_PAGES)
        task.mm.tables.map_range(va, frames, EVICTION_PAGES, vm_page_prot(PROT_READ))
    return EVICTION_BASE + np.arange(EVICTION_PAGES, dtype=np.uint64) * np.uint64(b.PAGE_SIZE)


def _readonly_page(kernel, task) -> int:
    """A read-only page of the attacker, present in its tables (made on first use)."""
    vma = next((v for v in task.mm.vmas if v.name == "[kaslr-ro]"), None)
    va = vma.start if vma else kernel.mmap(task, b.PAGE_SIZE, PROT_READ, name="[kaslr-ro]")
    if kernel.user_access(task, va, "read") is None:
        raise KaiserEduError(f"pid {task.pid} could not read its own page {va:#x}")
    return va


def _scan(prober: Prober, slots: np.ndarray, offset: int, rounds: int, hit: float,
          walk1: float, truth: int, max_mapped: int) -> Scan:
    vas = slots + np.uint64(offset)
    depth = prober.depth(vas)
    times = prober.run(vas, rounds, depth)
    med = np.median(times[1:], axis=0)
    threshold = max((hit + walk1) / 2, (hit + float(np.median(med))) / 2)
    mapped = med < threshold
    # Candidates whose probes got faster once probed (by two walk levels or more): their
    # translation was cached, so they are mapped whatever TLB level they now hit.
    filled = times[0] - med > 2 * (walk1 - hit)
    ambiguous = mapped.sum() > max_mapped or filled.sum() > max_mapped
    suspects = np.flatnonzero(mapped)
    if len(suspects) and not ambiguous:  # confirm: a long second look, all suspects at once
        again = prober.run(vas[suspects], VERIFY_ROUNDS, depth[suspects])
        mapped[suspects] = np.median(again[1:], axis=0) < threshold
    guess = int(slots[np.flatnonzero(mapped)[0]]) if mapped.any() and not ambiguous else None
    return Scan(slots, med, times[0], mapped, guess, truth, threshold)


def break_kaslr(kernel, attacker_task, *, method: str = "prefetch", seed: int = 0,
                rounds: int = 16, costs: Timing | None = None) -> KaslrResult:
    """Find the kernel text base (and, for prefetch and double-fault, the direct map base)
    from ``attacker_task``'s user mode, by ``method`` (one of :data:`METHODS`). Each of the
    ``rounds`` rounds probes every candidate slot once, in one MMU batch. ``costs``: a
    cycle-cost table instead of the CPU model's preset (e.g. with more noise)."""
    if method not in METHODS:
        raise KaiserEduError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if not isinstance(rounds, int) or not 2 <= rounds <= MAX_ROUNDS:
        raise KaiserEduError(f"rounds must be an integer in 2..{MAX_ROUNDS}, got {rounds!r}")
    if not attacker_task.alive:
        raise KaiserEduError(f"pid {attacker_task.pid} has exited: {attacker_task.exit_reason}")
    start = time.perf_counter()
    if kernel.current is not attacker_task:
        outcome = kernel.switch_to(attacker_task)
        if not outcome.ok:
            raise KaiserEduError(f"could not run pid {attacker_task.pid}: {outcome.detail}")
    t = timing(kernel.cpu) if costs is None else costs
    prober = Prober(kernel, attacker_task, method, t, np.random.default_rng(seed))
    hit, miss = _references(prober, attacker_task, CALIBRATION_ROUNDS)
    offset = ENTRY_SYSCALL_OFFSET if method == "entrybleed" else 0
    text = _scan(prober, text_candidates(), offset, rounds, hit, miss,
                 kernel.layout.kernel_text, MAX_IMAGE_SLOTS)
    dmap = None
    if method != "entrybleed":
        slots = direct_map_candidates()
        dmap = _scan(prober, slots, 0, rounds, hit, miss, kernel.layout.page_offset,
                     len(slots) // 2)
    from kaiser_edu.attacks.meltdown import _cpu_name

    return KaslrResult(
        method=method, text_base=text.guess, direct_map_base=dmap.guess if dmap else None,
        text=text, direct_map=dmap, threshold=text.threshold, hit_reference=hit,
        walk_reference=miss, probes=prober.probes, cycles=prober.cycles,
        seconds=t.cycles_to_seconds(prober.cycles), host_seconds=time.perf_counter() - start,
        cpu=_cpu_name(kernel), isolation=kernel.isolation.name,
    )
