"""Lesson 03: the TLB, address-space switches and PCIDs.

A page walk costs four dependent memory reads, so the CPU caches finished translations in
the TLB (Intel SDM Vol. 3A 4.10): here a small L1 in front of a larger L2, both
set-associative, as in :class:`kaiser_edu.hw.TLBConfig`. Two things empty it:

* the program touches more pages than the TLB holds (its *working set* exceeds the TLB's
  *reach*): entries are evicted before they are used again;
* the kernel switches address spaces: a MOV to CR3 with CR4.PCIDE=0 drops every non-global
  entry (SDM 4.10.4.1). With PCIDE=1 each entry is tagged with the PCID (CR3 bits 11:0) that
  made it, and a MOV to CR3 with bit 63 set (NOFLUSH) switches to another PCID while keeping
  every entry: coming back finds the old translations still there.

KAISER / KPTI make every system call switch CR3 twice, which is why Linux turns PCIDs on
whenever the CPU has them (lessons 07-08).

The models are :func:`tlb_experiment` (runs the numba MMU on a seeded trace and returns
counters and rates) and :func:`stale_tlb_demo` (a TLB entry outliving the PTE it was made
from, until INVLPG); :class:`TLBLab` and :class:`StaleTLBWidget` are their views.

>>> r = tlb_experiment(TLBParams(working_set=16, accesses=2000))
>>> r["walks"], r["miss_rate"]
(0, 0.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import numpy as np

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.mmu import MMU, OPS, TLBConfig, Trace
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.hw.physmem import FrameAllocator, PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.widgets import _view

BASE_VA = 0x7F00_0000_0000  # where each address space's working set lives (user space)
MAX_WORKING_SET = 1 << 16  # pages per address space (256 MiB of simulated memory)
MAX_ACCESSES = 2_000_000  # keeps one run well under a second
PATTERNS = ("random", "loop")


def _ways(entries: int, preferred: tuple[int, ...]) -> int:
    """An associativity that divides ``entries`` into a power-of-two number of sets."""
    for ways in (*preferred, 16, 12, 8, 6, 4, 3, 2, 1):
        sets, rest = divmod(entries, ways)
        if not rest and sets and not sets & (sets - 1):
            return ways
    raise KaiserEduError(f"{entries} TLB entries cannot be split into a power-of-two number "
                         "of sets; use e.g. 16, 32, 64, 128, 256, 512, 1024 or 1536")


@dataclass(frozen=True)
class TLBParams:
    """One experiment.

    ``working_set`` pages are touched by each of ``n_spaces`` address spaces (processes with
    their own page tables, mapping the same virtual range to different frames);
    ``switch_every`` accesses the CPU writes CR3 to switch to the next space (0: one space,
    never switch; with ``n_spaces=1`` it reloads the same CR3, which still flushes without
    PCIDs); ``pcid`` turns on CR4.PCIDE, gives each space its own PCID and writes CR3
    with the NOFLUSH bit. ``pattern`` is ``"random"`` (uniform over the working set) or
    ``"loop"`` (page after page, round and round: the worst case for an LRU TLB).
    """

    l1_entries: int = 64
    l2_entries: int = 1536
    working_set: int = 256
    switch_every: int = 0
    pcid: bool = False
    accesses: int = 100_000
    pattern: str = "random"
    n_spaces: int = 2
    seed: int = 0
    l1_ways: int = 0  # 0: choose (4-way if possible)
    l2_ways: int = 0  # 0: choose (8- or 12-way if possible)

    def tlb_config(self) -> TLBConfig:
        """The TLB geometry: by default a 4-way L1 and an 8- or 12-way L2 (1536 entries =
        128 sets x 12 ways, the Skylake STLB)."""
        return TLBConfig(self.l1_entries, self.l1_ways or _ways(self.l1_entries, (4,)),
                         self.l2_entries, self.l2_ways or _ways(self.l2_entries, (8, 12)))

    def check(self) -> None:
        """Refuse impossible or too-slow experiments with a message saying what is allowed."""
        if not 1 <= self.working_set <= MAX_WORKING_SET:
            raise KaiserEduError(
                f"working_set must be 1..{MAX_WORKING_SET} pages, got {self.working_set!r}")
        if not 1 <= self.accesses <= MAX_ACCESSES:
            raise KaiserEduError(f"accesses must be 1..{MAX_ACCESSES}, got {self.accesses!r}")
        if self.switch_every < 0:
            raise KaiserEduError(
                f"switch_every must be >= 0 (0 = never switch), got {self.switch_every!r}")
        if not 1 <= self.n_spaces <= 64:
            raise KaiserEduError(f"n_spaces must be 1..64, got {self.n_spaces!r}")
        if self.pattern not in PATTERNS:
            raise KaiserEduError(f"pattern must be one of {PATTERNS}, got {self.pattern!r}")
        self.tlb_config()


def _params(params: TLBParams | Mapping[str, Any] | None, overrides: dict) -> TLBParams:
    if params is None:
        params = TLBParams()
    elif isinstance(params, Mapping):
        unknown = set(params) - {f.name for f in dataclasses.fields(TLBParams)}
        if unknown:
            raise KaiserEduError(f"unknown TLB experiment parameter(s) {sorted(unknown)}; "
                                 f"known: {[f.name for f in dataclasses.fields(TLBParams)]}")
        params = TLBParams(**params)
    params = dataclasses.replace(params, **overrides)
    params.check()
    return params


def _cr3_value(pt: PageTables, space: int, pcid: bool) -> int:
    """What the kernel writes to CR3 to run ``space``: the PGD, plus PCID and NOFLUSH."""
    if not pcid:
        return pt.cr3()
    return pt.cr3(space + 1) | b.X86_CR3_PCID_NOFLUSH


def _interleave(vas: np.ndarray, space: np.ndarray, cr3s: np.ndarray,
                switch_every: int) -> Trace:
    """The accesses with a MOV to CR3 in front of every block of ``switch_every``."""
    n = len(vas)
    if switch_every <= 0:
        return Trace.accesses(vas, "read", cpl=3)
    n_blocks = -(-n // switch_every)
    total = n + n_blocks
    op = np.full(total, OPS["read"], dtype=np.uint8)
    addr = np.zeros(total, dtype=np.uint64)
    arg = np.full(total, 3, dtype=np.uint16)  # CPL 3, AC 0
    i = np.arange(n)
    pos = i + i // switch_every + 1
    addr[pos] = vas
    starts = np.arange(n_blocks) * (switch_every + 1)
    op[starts] = OPS["mov_cr3"]
    addr[starts] = cr3s[space[np.arange(n_blocks) * switch_every]]
    arg[starts] = 0
    return Trace(op, addr, arg)


def tlb_experiment(params: TLBParams | Mapping[str, Any] | None = None,
                   **overrides: Any) -> dict[str, Any]:
    """Run one seeded experiment on the numba MMU and return its counters and rates.

    ``params`` is a :class:`TLBParams` or a dict of its fields; keyword arguments override
    single fields. Every address space first touches each of its pages once (a warm-up that
    is not counted), then ``accesses`` reads are measured. Returned keys:

    * ``accesses``, ``l1_hits``, ``l2_hits``, ``walks`` (TLB misses that walked the tables),
      ``cr3_writes``, ``flushes``: counters of the measured part;
    * ``l1_miss_rate`` = 1 - l1_hits / accesses; ``miss_rate`` = walks / accesses (missed
      both levels); ``walks_per_switch``;
    * ``tlb``: the geometry in words; ``reach_pages``: L2 entries (pages the TLB can cover);
    * ``params``: the parameters as a dict.

    The numbers depend only on the parameters (``seed`` included), never on timing.
    """
    p = _params(params, overrides)
    config = p.tlb_config()
    rng = np.random.default_rng(p.seed)
    n_spaces = p.n_spaces if p.switch_every > 0 else 1

    mem = PhysMem(initial_frames=64)
    alloc = FrameAllocator(mem, ram_bytes=64 << 30)
    pts = []
    for s in range(n_spaces):
        pt = PageTables(mem, alloc)
        frames = (1 << 32) + s * MAX_WORKING_SET * b.PAGE_SIZE  # data frames: never written
        pt.map_range(BASE_VA, frames, p.working_set, flags=b.PAGE_SHARED)
        pts.append(pt)
    cr3s = np.array([_cr3_value(pt, s, p.pcid) for s, pt in enumerate(pts)], dtype=np.uint64)
    regs = Registers.long_mode(cr3=pts[0].cr3(1 if p.pcid else 0), pcide=p.pcid)
    mmu = MMU(mem, regs, config)

    # Warm-up: each space touches each of its pages once (cold misses are not the lesson).
    pages = np.arange(p.working_set, dtype=np.uint64)
    warm_vas = np.uint64(BASE_VA) + pages * np.uint64(b.PAGE_SIZE)
    warm = []
    for s in range(n_spaces):
        if n_spaces > 1:
            warm.append(Trace(np.array([OPS["mov_cr3"]]), cr3s[s:s + 1], np.zeros(1)))
        warm.append(Trace.accesses(warm_vas, "read", cpl=3))
    mmu.run(Trace.concat(warm), record=False)

    if p.pattern == "random":
        page = rng.integers(0, p.working_set, p.accesses, dtype=np.uint64)
    else:
        page = np.arange(p.accesses, dtype=np.uint64) % np.uint64(p.working_set)
    offset = rng.integers(0, b.PAGE_SIZE // 8, p.accesses, dtype=np.uint64) * np.uint64(8)
    vas = np.uint64(BASE_VA) + page * np.uint64(b.PAGE_SIZE) + offset
    if p.switch_every > 0:
        space = (np.arange(p.accesses) // p.switch_every) % n_spaces
    else:
        space = np.zeros(p.accesses, dtype=np.int64)
    trace = _interleave(vas, space, cr3s, p.switch_every)
    c = mmu.run(trace, record=False).counters

    n = c["accesses"]
    return {
        "params": dataclasses.asdict(p),
        "tlb": (f"L1 {config.l1_entries} entries ({config.l1_ways}-way) + "
                f"L2 {config.l2_entries} entries ({config.l2_ways}-way)"),
        "reach_pages": config.l2_entries,
        "accesses": n,
        "l1_hits": c["l1_hits"],
        "l2_hits": c["l2_hits"],
        "walks": c["walks"],
        "cr3_writes": c["cr3_writes"],
        "flushes": c["flushes"],
        "page_faults": c["page_faults"],
        "l1_miss_rate": 1 - c["l1_hits"] / n,
        "miss_rate": c["walks"] / n,
        "walks_per_switch": c["walks"] / c["cr3_writes"] if c["cr3_writes"] else 0.0,
    }


def experiment_text(r: Mapping[str, Any]) -> str:
    """A result of :func:`tlb_experiment` as a few lines of text."""
    p = r["params"]
    pcid = f"PCID {'on' if p['pcid'] else 'off'}"
    if not p["switch_every"]:
        switch = "one address space, no CR3 writes"
    elif p["n_spaces"] == 1:
        switch = f"CR3 reloaded every {p['switch_every']} accesses (one address space), {pcid}"
    else:
        switch = (f"CR3 write every {p['switch_every']} accesses between {p['n_spaces']} "
                  f"address spaces, {pcid}")
    return "\n".join([
        f"{r['tlb']}; working set {p['working_set']} pages ({p['pattern']}); {switch}",
        f"  {r['accesses']} accesses: L1 hits {r['l1_hits']}, L2 hits {r['l2_hits']}, "
        f"page walks {r['walks']}; CR3 writes {r['cr3_writes']}",
        f"  L1 miss rate {r['l1_miss_rate']:.1%}; walks per access (L1+L2 miss) "
        f"{r['miss_rate']:.1%}",
    ])


def experiment_html(r: Mapping[str, Any]) -> str:
    """A result of :func:`tlb_experiment` as a small HTML table."""
    n = r["accesses"]
    rows = [
        ("L1 hits", r["l1_hits"], r["l1_hits"] / n),
        ("L2 hits", r["l2_hits"], r["l2_hits"] / n),
        ("page walks (missed both)", r["walks"], r["walks"] / n),
    ]
    body = "".join(f"<tr><td style='text-align:left'>{name}</td>"
                   f"<td style='text-align:right'>{count}</td>"
                   f"<td style='text-align:right'>{frac:.1%}</td></tr>"
                   for name, count, frac in rows)
    lines = experiment_text(r).splitlines()
    return (f"<div><div>{_view.esc(lines[0])}</div>"
            f"<table style='border-collapse:collapse'><tr><th></th><th>accesses</th>"
            f"<th>share</th></tr>{body}</table>"
            f"<div>CR3 writes: {r['cr3_writes']} &middot; L1 miss rate "
            f"<b>{r['l1_miss_rate']:.1%}</b> &middot; walks per access <b>{r['miss_rate']:.1%}</b>"
            f"</div></div>")


class TLBLab(_view.OutputView, widgets.VBox):
    """Change the TLB, the working set, the switch rate and PCID; see hits, misses and a bar
    chart of the last few runs.

    Controls (attributes): ``l1_entries`` and ``l2_entries`` (Dropdown), ``working_set``
    (SelectionSlider, pages per address space), ``switch_every`` (SelectionSlider, accesses
    between CR3 writes, "never" = 0), ``pcid`` (ToggleButton), ``run_button`` (Button) and
    ``output`` (Output: a table and the figure). Every control change runs the experiment
    again (one run of 100 000 accesses takes milliseconds once numba has compiled).

    State: ``params`` (the :class:`TLBParams` of the last run), ``result`` (its dict),
    ``history`` (the last ``keep`` results, drawn as bars); ``html`` and ``text`` are what
    ``output`` shows.
    """

    L1_OPTIONS = (16, 32, 64, 128)
    L2_OPTIONS = (64, 256, 512, 1024, 1536, 2048)
    WORKING_SETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 1536, 2048, 4096, 8192, 16384)
    SWITCH_OPTIONS = (("never", 0), ("10000", 10_000), ("1000", 1000), ("300", 300),
                      ("100", 100), ("30", 30), ("10", 10))

    def __init__(self, params: TLBParams | None = None, keep: int = 4) -> None:
        p = params or TLBParams()
        p.check()
        self.keep = keep
        self.history: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {}
        self.params = p
        self.l1_entries = widgets.Dropdown(options=_with(self.L1_OPTIONS, p.l1_entries),
                                           value=p.l1_entries, description="L1 entries")
        self.l2_entries = widgets.Dropdown(options=_with(self.L2_OPTIONS, p.l2_entries),
                                           value=p.l2_entries, description="L2 entries")
        self.working_set = widgets.SelectionSlider(
            options=_with(self.WORKING_SETS, p.working_set), value=p.working_set,
            description="working set", continuous_update=False,
            layout=widgets.Layout(width="36em"))
        switch = list(self.SWITCH_OPTIONS)
        if p.switch_every not in dict(switch).values():
            switch.append((str(p.switch_every), p.switch_every))
        self.switch_every = widgets.SelectionSlider(
            options=switch, value=p.switch_every, description="CR3 every",
            continuous_update=False, layout=widgets.Layout(width="36em"))
        self.pcid = widgets.ToggleButton(value=p.pcid, description="PCID (CR4.PCIDE)",
                                         tooltip="tag TLB entries with a PCID; switch CR3 "
                                                 "with the NOFLUSH bit")
        self.run_button = widgets.Button(description="Run again", icon="play")
        self.output = widgets.Output()
        super().__init__([
            widgets.HBox([self.l1_entries, self.l2_entries, self.pcid]),
            widgets.HBox([self.working_set, widgets.Label("pages")]),
            widgets.HBox([self.switch_every, widgets.Label("accesses")]),
            self.run_button, self.output,
        ])
        for control in (self.l1_entries, self.l2_entries, self.working_set, self.switch_every,
                        self.pcid):
            control.observe(lambda _c: self.run(), names="value")
        self.run_button.on_click(lambda _b: self.run())
        self.run()

    def run(self) -> dict[str, Any]:
        """Run the experiment the controls describe and show it."""
        self.params = dataclasses.replace(
            self.params, l1_entries=self.l1_entries.value, l2_entries=self.l2_entries.value,
            working_set=self.working_set.value, switch_every=self.switch_every.value,
            pcid=self.pcid.value)
        self.result = tlb_experiment(self.params)
        self.history = [*self.history, self.result][-self.keep:]
        from kaiser_edu.widgets.figures import tlb_runs_figure

        fig = tlb_runs_figure(self.history)
        _view.show(self.output, experiment_html(self.result), experiment_text(self.result),
                   figure=fig, alt=fig.alt)
        return self.result

    def __repr__(self) -> str:
        p = self.params
        return (f"TLBLab(l1={p.l1_entries}, l2={p.l2_entries}, working_set={p.working_set}, "
                f"switch_every={p.switch_every}, pcid={p.pcid})")


def _with(options: tuple[int, ...], value: int) -> list[int]:
    return sorted({*options, value})


# --- stale TLB entries ---------------------------------------------------------------------
@dataclass(frozen=True)
class StaleRead:
    """One read of the stale-TLB demonstration."""

    step: str  # what happened before this read
    va: int
    pa: int
    tlb: str  # "walk", "L1" or "L2": where the translation came from
    data: bytes  # the 8 bytes read
    pte: int  # the PTE in memory at the time of the read
    pte_frame: int  # the frame that PTE names

    @property
    def stale(self) -> bool:
        """The translation used is not what the page tables say now."""
        return self.pa & ~(b.PAGE_SIZE - 1) != self.pte_frame

    def __str__(self) -> str:
        note = " <- STALE: the PTE says otherwise" if self.stale else ""
        return (f"{self.step}: read {self.va:#x} -> {self.pa:#x} via {self.tlb}, "
                f"data {self.data.decode('ascii')!r}; PTE in memory names frame "
                f"{self.pte_frame:#x}{note}")


OLD_DATA = b"old page"
NEW_DATA = b"NEW PAGE"


def stale_tlb_demo(va: int = 0x40_0000) -> tuple[StaleRead, StaleRead, StaleRead]:
    """A TLB entry outliving its PTE, in three reads (SDM 4.10.4: software must invalidate).

    1. map ``va`` to frame A (which holds ``"old page"``) and read it: the walk fills the TLB;
    2. rewrite the PTE to point at frame B (``"NEW PAGE"``) and read again: the TLB still
       holds the old translation and the CPU uses it - the read returns the *old* data;
    3. INVLPG ``va`` and read once more: the TLB misses, the walk finds frame B.

    This is why every page-table change in Linux is followed by a TLB flush
    (flush_tlb_page(), flush_tlb_mm_range(), and shootdown IPIs to other CPUs).

    >>> first, stale, fresh = stale_tlb_demo()
    >>> first.data, stale.data, stale.stale, fresh.data
    (b'old page', b'old page', True, b'NEW PAGE')
    """
    mem = PhysMem()
    alloc = FrameAllocator(mem)
    pt = PageTables(mem, alloc)
    frame_a, frame_b = alloc.alloc(), alloc.alloc()
    mem.write_qword(frame_a, int.from_bytes(OLD_DATA, "little"))
    mem.write_qword(frame_b, int.from_bytes(NEW_DATA, "little"))
    pt.map(va, frame_a, flags=b.PAGE_SHARED)
    mmu = MMU(mem, Registers.long_mode(cr3=pt.cr3()))

    def read(step: str) -> StaleRead:
        r = mmu.access(va, "read", cpl=3)
        leaf = pt.leaf(va)
        assert r.pa is not None and leaf is not None
        data = mem.read_qword(r.pa & ~7).to_bytes(8, "little")
        frame = leaf.value & b.phys_addr_mask(mem.maxphyaddr)
        return StaleRead(step, va, r.pa, r.tlb, data, leaf.value, frame)

    first = read("1. after mapping frame A")
    leaf = pt.leaf(va)
    assert leaf is not None
    mem.write_qword(leaf.pa, (leaf.value & ~b.phys_addr_mask(mem.maxphyaddr)) | frame_b)
    stale = read("2. after pointing the PTE at frame B (no flush)")
    mmu.invlpg(va)
    fresh = read("3. after INVLPG")
    return first, stale, fresh


class StaleTLBWidget(_view.OutputView, widgets.VBox):
    """Step through :func:`stale_tlb_demo`: each click of ``step_button`` reveals one read;
    ``reset_button`` starts over. ``output`` shows the reads so far; ``reads`` holds all three.
    """

    def __init__(self, va: int = 0x40_0000) -> None:
        self.reads = stale_tlb_demo(va)
        self.revealed = 0
        self.step_button = widgets.Button(description="Next step", button_style="primary",
                                          icon="step-forward")
        self.reset_button = widgets.Button(description="Reset", icon="undo")
        self.output = widgets.Output()
        super().__init__([widgets.HBox([self.step_button, self.reset_button]), self.output])
        self.step_button.on_click(lambda _b: self.step())
        self.reset_button.on_click(lambda _b: self.reset())
        self._render()

    def step(self) -> None:
        self.revealed = min(self.revealed + 1, len(self.reads))
        self._render()

    def reset(self) -> None:
        self.revealed = 0
        self._render()

    def _render(self) -> None:
        shown = self.reads[:self.revealed]
        lines = [str(r) for r in shown] or ["(press Next step: map a page and read it)"]
        items = []
        for r in shown:
            color = _view.FAULT_COLOR if r.stale else _view.OK_COLOR
            mark = "&#9888; stale" if r.stale else "&#10004; current"
            items.append(
                f"<li style='border-left:6px solid {color};padding-left:6px;margin:2px'>"
                f"<b>{_view.esc(r.step)}</b>: <code>{r.va:#x}</code> &rarr; "
                f"<code>{r.pa:#x}</code> from the <b>{r.tlb}</b>"
                f"{' (TLB hit)' if r.tlb != 'walk' else ' (page walk)'}, data "
                f"<code>{_view.esc(r.data.decode('ascii'))}</code>; the PTE names frame "
                f"<code>{r.pte_frame:#x}</code> &mdash; {mark}</li>")
        html = f"<ul style='list-style:none;padding-left:0'>{''.join(items)}</ul>" if items \
            else f"<div>{_view.esc(lines[0])}</div>"
        _view.show(self.output, html, "\n".join(lines))

    def __repr__(self) -> str:
        return f"StaleTLBWidget(step={self.revealed}/{len(self.reads)})"
