"""The one cycle-cost table of the package: what each micro-event costs on each CPU model.

Both the side-channel lab (:mod:`kaiser_edu.attacks`: timed reloads, prefetch timing) and the
performance lab (:mod:`kaiser_edu.perf`: the cost of a syscall under each isolation mode) read
their costs from here, so a student who changes a number sees both labs move together.

Every parameter names its source in :data:`SOURCES`, or says "assumed". Few of these numbers
are published by the vendors; those marked "assumed" are round figures of the right order for
a desktop or server core of the CPU model's generation, chosen so that the *ratios* the
lessons teach (a TLB hit is nearly free, a walk costs tens of cycles, a DRAM miss hundreds, a
CR3 write about a hundred) hold. The performance lab fits :attr:`Timing.entry_work` (and only
a few other free parameters) to Hansen's measured lseek rates and reports the fit.

A preset exists for each model in :data:`kaiser_edu.kernel.cpu.CPU_MODELS`; :func:`timing`
looks it up by the same name. Derive a variant with :func:`dataclasses.replace`.

Noise: a timed measurement in the side-channel lab is its cycle cost plus a normal core
(``noise_sigma``) plus, with probability ``tail_prob``, a long tail of ``tail_cycles``
(an interrupt or a context switch landing inside the measured window). The noise is drawn
by the caller from a seeded generator; this module holds only the parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.kernel.cpu import CPU_MODELS, CpuModel

PTI_RST = "Documentation/x86/pti.rst (Linux 4.15+), 'Overhead' section"
HANSEN_V2 = "Hansen, KAISER v2 cover letter, linux-mm, 2017-11-08"
ASSUMED = "assumed"


@dataclass(frozen=True)
class Timing:
    """Cycle costs (core clock cycles) of the micro-events the simulator counts."""

    clock_ghz: float  # core clock the cycles are converted at (bytes/s, calls/s)
    # -- address translation --
    l1_tlb_hit: float  # a first-level dTLB hit (added to the load)
    l2_tlb_hit: float  # an L1 TLB miss that hits the second-level (STLB)
    walk_level: float  # one paging-structure read during a walk (entry in the data cache)
    # -- data cache --
    cache_hit: float  # load-to-use latency of an L1d hit
    cache_miss: float  # a load that goes to DRAM
    timer_overhead: float  # rdtscp + mfence around a timed reload (Flush+Reload)
    clflush: float  # one clflush
    # -- CR3, flushes --
    cr3_write: float  # MOV to CR3, without counting the TLB refills it causes
    tlb_flush: float  # the invalidation work of a flushing CR3 write or full flush
    invpcid: float  # one INVPCID (single address or single context)
    invlpg: float  # one INVLPG
    # -- kernel entry and exit --
    syscall_sysret: float  # the SYSCALL and SYSRET instructions of one round trip
    entry_work: float  # the kernel's own work in a trivial syscall (lseek), free parameter
    fault_delivery: float  # a #PF delivered to user space as a signal and handler return
    # -- noise on timed measurements --
    noise_sigma: float  # standard deviation of the normal core
    tail_prob: float  # probability of an interrupt inside one timed window
    tail_cycles: float  # what such an interrupt adds
    # -- side-channel lab (kaiser_edu.attacks) --
    prefetch: float = 10.0  # a software prefetch's own cost, besides its translation
    tsx_abort: float = 200.0  # an RTM transaction aborted by a fault (no signal delivered)

    def cycles_to_seconds(self, cycles: float) -> float:
        """Seconds that ``cycles`` take at this model's clock."""
        return cycles / (self.clock_ghz * 1e9)

    @property
    def reload_hit(self) -> float:
        """A timed reload of a cached line, as rdtscp sees it (noise-free)."""
        return self.timer_overhead + self.cache_hit

    @property
    def reload_miss(self) -> float:
        """A timed reload of a flushed line, as rdtscp sees it (noise-free)."""
        return self.timer_overhead + self.cache_miss

    def table(self) -> list[tuple[str, float, str]]:
        """(parameter, value, source) rows, in declaration order: for lessons and ``--json``."""
        return [(f.name, getattr(self, f.name), SOURCES[f.name]) for f in fields(self)]

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


SOURCES: dict[str, str] = {
    "clock_ghz": "the model's base clock from the vendor's specification sheet",
    "l1_tlb_hit": ASSUMED + " (a dTLB hit is overlapped with the cache access)",
    "l2_tlb_hit": ASSUMED + " (order of 10 cycles on Intel cores since Nehalem)",
    "walk_level": ASSUMED + " (a paging-structure entry found in L1d/L2)",
    "cache_hit": ASSUMED + " (L1d load-to-use of 4-5 cycles on these cores)",
    "cache_miss": ASSUMED + " (DRAM latency of the order of 60-100 ns)",
    "timer_overhead": ASSUMED + " (rdtscp with mfence, as in IAIK/meltdown libkdump.c)",
    "clflush": ASSUMED,
    "cr3_write": "fitted by kaiser_edu.perf.calibrate to " + HANSEN_V2 + " lseek1 rates, with "
                 + PTI_RST + " ('on the order of a hundred cycles') as its prior",
    "tlb_flush": ASSUMED + " (the refills it causes are counted separately, as walks)",
    "invpcid": ASSUMED,
    "invlpg": ASSUMED,
    "syscall_sysret": ASSUMED,
    "entry_work": "fitted by kaiser_edu.perf.calibrate to " + HANSEN_V2 + " lseek1 rates",
    "fault_delivery": ASSUMED + " (signal delivery and sigreturn: a few thousand cycles)",
    "noise_sigma": ASSUMED,
    "tail_prob": ASSUMED,
    "tail_cycles": ASSUMED,
    "prefetch": ASSUMED + " (Gruss et al., CCS 2016: a prefetch's time is dominated by its "
                "translation, which is what the side channel measures)",
    "tsx_abort": ASSUMED + " (Meltdown, Lipp et al. 2018, suppress the fault with TSX to "
                 "avoid the signal; the abort costs far less than a delivered fault)",
}

# The Skylake numbers are the base; other generations differ where it matters to a lesson.
_SKYLAKE = Timing(
    clock_ghz=4.0,  # i7-6700K, the Meltdown paper's test machine
    l1_tlb_hit=1.0, l2_tlb_hit=9.0, walk_level=12.0,
    cache_hit=4.0, cache_miss=250.0, timer_overhead=40.0, clflush=20.0,
    cr3_write=300.0, tlb_flush=50.0, invpcid=100.0, invlpg=120.0,
    syscall_sysret=70.0, entry_work=680.0, fault_delivery=2500.0,
    noise_sigma=8.0, tail_prob=0.002, tail_cycles=4000.0,
)

TIMINGS: dict[str, Timing] = {
    "skylake": _SKYLAKE,
    "haswell": Timing(**{**asdict(_SKYLAKE), "clock_ghz": 2.5, "l2_tlb_hit": 8.0,
                         "cache_miss": 220.0}),
    "westmere": Timing(**{**asdict(_SKYLAKE), "clock_ghz": 2.93, "l2_tlb_hit": 7.0,
                          "walk_level": 15.0, "cache_miss": 200.0, "invpcid": 0.0}),
    "core2": Timing(**{**asdict(_SKYLAKE), "clock_ghz": 3.0, "l2_tlb_hit": 0.0,
                       "walk_level": 18.0, "cache_miss": 200.0, "cr3_write": 130.0,
                       "invpcid": 0.0}),
    "icelake": Timing(**{**asdict(_SKYLAKE), "clock_ghz": 2.3, "cache_hit": 5.0,
                         "cache_miss": 230.0}),
    "zen2": Timing(**{**asdict(_SKYLAKE), "clock_ghz": 2.25, "l2_tlb_hit": 7.0,
                      "cache_miss": 280.0}),
}
"""One preset per CPU model of :data:`~kaiser_edu.kernel.cpu.CPU_MODELS`. ``invpcid`` is 0
where the model has no INVPCID instruction (the cost never applies there); ``l2_tlb_hit`` is
0 on Core 2, whose simulated TLB is treated as one level for costing (assumed)."""


def timing(cpu: str | CpuModel) -> Timing:
    """The cycle-cost preset of a CPU model, by name (``"skylake"``) or :class:`CpuModel`."""
    if isinstance(cpu, CpuModel):
        names = [n for n, m in CPU_MODELS.items() if m == cpu]
        if not names:
            raise KaiserEduError(f"no timing preset for CPU model {cpu.name!r}; "
                                 f"presets exist for: {', '.join(TIMINGS)}")
        cpu = names[0]
    if cpu not in TIMINGS:
        raise KaiserEduError(f"unknown CPU model {cpu!r}; known: {', '.join(TIMINGS)}")
    return TIMINGS[cpu]
