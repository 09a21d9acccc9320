"""Lesson 10: from KAISER (2017) to Linux PTI and the versions after it, side by side.

The lesson tells a history: the Graz KAISER patch (Gruss et al., May 2017, against
4.10-rc6), Dave Hansen's KAISER series on linux-mm (October-November 2017), its rework into
``x86/mm/pti`` for Linux 4.15, and what changed in PTI since (kernel/versions.py names the
commit of each change). Each step is a *design* the simulator can boot:
:data:`DESIGNS` maps a short name to the isolation mode (kernel/isolation.py: ``off``,
``Kaiser2017(variant="graz"|"hansen")``, ``LinuxPTI``) and the Linux version
(``Kernel(linux=...)``).

:func:`compare` boots one design and measures it, on the simulator only, with the course's
own tools, nothing re-implemented:

* **reach**: the kernel ranges that have a translation in the page tables user code runs on
  (:func:`kaiser_edu.widgets.shadow_pgd.user_reachable_kernel`, i.e. the audit's
  :func:`~kaiser_edu.kernel.audit.kernel_visible_ranges`): what a Meltdown load could read;
* **fork**: what ``Kernel.fork()`` of a small process allocates (frames counted by the frame
  allocator, the PGD's size) and how much kernel memory it adds to the user page tables
  (the Graz patch maps every new kernel stack there with ``kaiser_add_mapping()``);
* **syscall**: one system call in a loop of Gregg's microbenchmark in miniature
  (:class:`kaiser_edu.perf.workloads.Machine` run on this design's kernel), priced by the
  cost model (:class:`kaiser_edu.perf.cost.CostReport`), against the same program with
  isolation off;
* **attacks**: Meltdown on the kernel image's secret and on the IDT gate (which gives
  ``_text`` away) (:func:`kaiser_edu.attacks.meltdown.leak`,
  :func:`~kaiser_edu.attacks.meltdown.idt_text_base`), and the prefetch and EntryBleed KASLR
  breaks (:func:`kaiser_edu.attacks.kaslr.break_kaslr`).

Every design boots on the same CPU model (``cpu``, default Skylake: Meltdown-affected, with
PCIDs). A CPU that enumerates RDCL_NO is modelled elsewhere (``Kernel(cpu="icelake")``:
``pti=auto`` leaves PTI off and its loads forward nothing; the lesson shows it). Not
modelled (the lesson says so): Intel's LASS, 5-level paging, more than one CPU, and the
real benchmark numbers of 2017-18 (the cost model is calibrated, lesson 08, but it is a
model).

:func:`comparison_table` puts several designs in one table, :func:`history_figure` draws
reach and syscall cost across the history, and :class:`HistoryExplorer` is the widget: pick
two designs, see them side by side.

>>> c = compare("pti-6.1", calls=8)
>>> c.meltdown_secret, c.kaslr["prefetch"]
('nothing', 'text found')
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import ipywidgets as widgets

from kaiser_edu.display.figures import Figure
from kaiser_edu.display.tables import TextTable
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.widgets import _view


@dataclass(frozen=True)
class Design:
    """One step of the history: how to boot it and what to call it."""

    name: str
    label: str
    isolation: str  # "off" | "kaiser" | "pti"
    variant: str | None  # Kaiser2017 variant, or None
    linux: str  # kernel/versions.py
    when: str  # the date (KAISER, 4.15) or what the version changed


DESIGNS: dict[str, Design] = {d.name: d for d in (
    Design("off", "no isolation (nopti)", "off", None, "6.1", "-"),
    Design("kaiser-graz", "KAISER, Graz patch", "kaiser", "graz", "4.15", "May 2017"),
    Design("kaiser-hansen", "KAISER, Hansen's series", "kaiser", "hansen", "4.15",
           "Oct-Nov 2017"),
    Design("pti-4.15", "PTI 4.15", "pti", None, "4.15", "Jan 2018"),
    Design("pti-4.20", "PTI 4.20", "pti", None, "4.20", "no SYSCALL trampoline"),
    Design("pti-6.1", "PTI 6.1", "pti", None, "6.1", "course default"),
    Design("pti-6.2", "PTI 6.2", "pti", None, "6.2", "CEA randomised"),
    Design("pti-6.9", "PTI 6.9", "pti", None, "6.9", "NMI CR3 write skipped"),
    Design("pti-mainline", "PTI mainline", "pti", None, "mainline", "attack vectors"),
)}
# The KAISER designs boot the oldest Linux the simulator models (4.15): the 2017 patches
# were against 4.10-rc6 (Graz) and 4.14-rc (Hansen), whose PTI-relevant code did not exist.

WS_KIB = 64  # the syscall loop's working set (KiB of 4 KiB pages)
WORK_CYCLES = 2000  # user work between two system calls (about 1.3 M calls/s at 2.7 GHz)


def design(name: str) -> Design:
    if name not in DESIGNS:
        raise KaiserEduError(f"unknown design {name!r}; known: {', '.join(DESIGNS)}")
    return DESIGNS[name]


def boot(name: str, seed: int = 0, cpu: str = "skylake"):
    """A booted kernel of design ``name`` (KASLR from ``seed``) and a running process."""
    from kaiser_edu.kernel.isolation import make_isolation
    from kaiser_edu.kernel.machine import Kernel

    d = design(name)
    options = {"variant": d.variant} if d.variant else {}
    kernel = Kernel(isolation=make_isolation(d.isolation, **options), cpu=cpu, seed=seed,
                    linux=d.linux)
    task = kernel.spawn("attacker")
    kernel.switch_to(task)
    return kernel, task


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` measured for one design (see the module docstring)."""

    design: Design
    reach_kib: int  # kernel memory translated in the user page tables
    reach_ranges: tuple[str, ...]  # their names (the allowed range, or the region)
    fork_frames: int  # frames a fork of the process allocated
    pgd_bytes: int  # its PGD allocation: 8 KiB with a PGD pair, 4 KiB without
    fork_reach_kib: int  # kernel memory the fork added to the user page tables
    syscall_cycles: float  # cycles per call of the syscall loop
    off_cycles: float  # the same loop with isolation off
    cr3_writes: float  # per call
    walks: float  # page walks per call (TLB refills)
    meltdown_secret: str  # what Meltdown got from the image's secret
    meltdown_idt: str  # what Meltdown got from the IDT gate
    kaslr: dict[str, str]  # per break: "text found", "nothing", "WRONG"
    entry: str  # where SYSCALL parks the user stack pointer before the CR3 switch
    cea: str  # each CPU's cpu_entry_area: "fixed" or "randomised" (KASLR on)
    nmi_restore: str  # RESTORE_CR3 after an NMI that interrupted the kernel
    pti_on_mitigations_off: str  # "pti=on mitigations=off": is PTI on?

    @property
    def overhead(self) -> float:
        return self.syscall_cycles / self.off_cycles - 1.0


def _names(reach) -> tuple[str, ...]:
    seen: list[str] = []
    for r in reach.ranges:
        name = r.allowed or r.region or "other"
        name = "kernel stack" if name.startswith("kernel stack") else name
        if name not in seen:
            seen.append(name)
    return tuple(seen)


def _fork_cost(kernel, task) -> tuple[int, int, int]:
    """Frames a fork allocates, the child's PGD size, and the kernel KiB it adds to the
    parent's user page tables (which share the kernel half with every process)."""
    from kaiser_edu.widgets.shadow_pgd import user_reachable_kernel

    before = user_reachable_kernel(kernel, task).total_bytes
    frames = kernel.alloc.frames_allocated
    child = kernel.fork(task)
    frames = kernel.alloc.frames_allocated - frames
    after = user_reachable_kernel(kernel, task).total_bytes
    pgd = 8192 if kernel.isolation.pgd_pair else 4096
    kernel.exit(child)
    return frames, pgd, (after - before) // 1024


class _DesignMachine:
    """:class:`kaiser_edu.perf.workloads.Machine` on a kernel of one design (Machine itself
    boots only the perf modes off/kaiser/pti/pti-nopcid, by name)."""

    def __new__(cls, name: str, cpu: str, seed: int = 0):
        from kaiser_edu.hw import bits as b
        from kaiser_edu.perf import workloads as W

        m = W.Machine.__new__(W.Machine)
        m.mode, m.cpu, m.huge = name, cpu, False
        m.kernel, m.task = boot(name, seed, cpu)
        m.task.comm = "perf"
        m.page_size = b.PAGE_SIZE
        m.max_ws_bytes = WS_KIB * 1024
        m._map_working_set()
        m.kernel.syscall(m.task)  # faults the user text in, performs pending flushes
        m._sys = m.kernel.entry.syscall_trace(m.task)
        return m


@functools.lru_cache(maxsize=8)
def _syscall_report(name: str, cpu: str, calls: int):
    from kaiser_edu.kernel.timing import timing
    from kaiser_edu.perf.cost import CostReport

    counts = _DesignMachine(name, cpu).run_syscalls(WORK_CYCLES, WS_KIB, calls)
    return CostReport(name, cpu, counts, timing(cpu))


def _entry(kernel) -> str:
    """Where the SYSCALL entry puts the user RSP before it can switch CR3 (see
    kernel/isolation.py and kernel/versions.py)."""
    iso = kernel.isolation
    if not iso.pgd_pair:
        return "no CR3 switch"
    if iso.name == "kaiser":
        return "task stack (mapped)" if iso.entry_on_task_stack else "trampoline stack"
    if kernel.linux.syscall_entry == "trampoline":
        return "CEA trampoline"
    return "RSP in tss.sp2"


def _versioned(kernel) -> tuple[str, str, str]:
    """The cpu_entry_area placement, the NMI's RESTORE_CR3 and the command-line decision,
    as the booted kernel's Linux version has them (PTI rows only: "-" otherwise)."""
    from kaiser_edu.kernel.cpu import pti_decision

    cea = "randomised" if kernel.layout.cea_offset or kernel.linux.cea_randomized else "fixed"
    if kernel.isolation.name != "pti":
        return cea, "-", "-"
    restore = ("skips CR3 write" if kernel.linux.paranoid_restore_skips_kernel_cr3
               else "writes CR3")
    on, _ = pti_decision("pti=on mitigations=off", kernel.cpu, kernel.linux)
    return cea, restore, "PTI on" if on else "PTI off"


def _kaslr_verdict(r) -> str:
    if r.text_base is None:
        return "nothing"
    return "text found" if r.text_correct else "WRONG"


@functools.lru_cache(maxsize=32)
def compare(name: str, seed: int = 0, cpu: str = "skylake", calls: int = 48) -> Comparison:
    """Boot design ``name`` and measure it (see the module docstring). Deterministic for a
    given ``seed``; cached, since a widget asks for the same designs again."""
    from kaiser_edu.attacks import meltdown as M
    from kaiser_edu.attacks.kaslr import break_kaslr
    from kaiser_edu.widgets.shadow_pgd import user_reachable_kernel

    d = design(name)
    if not isinstance(calls, int) or calls < 8:
        raise KaiserEduError(f"calls must be an integer >= 8, got {calls!r}")
    kernel, task = boot(name, seed, cpu)
    reach = user_reachable_kernel(kernel, task)
    fork_frames, pgd, fork_reach = _fork_cost(kernel, task)
    secret = M.leak(kernel, task, M.secret_address(kernel), 16, seed=seed)
    got = secret.recovered.sum()
    secret_text = "nothing" if not got else f"{int(got)}/16 bytes, {secret.accuracy:.0%} right"
    text_base, _ = M.idt_text_base(kernel, task, seed=seed)
    idt = ("nothing" if text_base is None else
           "_text" if text_base == kernel.layout.kernel_text else "a wrong _text")
    kaslr = {m: _kaslr_verdict(break_kaslr(kernel, task, method=m, seed=seed))
             for m in ("prefetch", "entrybleed")}
    on = _syscall_report(name, cpu, calls)
    off = _syscall_report("off", cpu, calls)
    per = on.counts.mmu
    cea, restore, cmdline = _versioned(kernel)
    return Comparison(
        design=d, reach_kib=reach.total_bytes // 1024, reach_ranges=_names(reach),
        fork_frames=fork_frames, pgd_bytes=pgd, fork_reach_kib=fork_reach,
        syscall_cycles=on.cycles_per_call, off_cycles=off.cycles_per_call,
        cr3_writes=per["cr3_writes"] / on.counts.calls, walks=per["walks"] / on.counts.calls,
        meltdown_secret=secret_text, meltdown_idt=idt, kaslr=kaslr, entry=_entry(kernel),
        cea=cea, nmi_restore=restore, pti_on_mitigations_off=cmdline)


ROWS = (
    ("when / what is new", lambda c: c.design.when),
    ("Linux model", lambda c: c.design.linux),
    ("user mode reaches", lambda c: f"{c.reach_kib:,} KiB of kernel"),
    ("fork: frames, PGD", lambda c: f"{c.fork_frames} frames, {c.pgd_bytes // 1024} KiB PGD"),
    ("fork: kernel added", lambda c: f"{c.fork_reach_kib} KiB to user tables"),
    ("syscall cycles", lambda c: f"{c.syscall_cycles:,.0f} ({c.overhead:+.0%} vs off)"),
    ("CR3 writes, walks", lambda c: f"{c.cr3_writes:.0f} per call, {c.walks:.1f} walks"),
    ("Meltdown: secret", lambda c: c.meltdown_secret),
    ("Meltdown: IDT gate", lambda c: c.meltdown_idt),
    ("KASLR: prefetch", lambda c: c.kaslr["prefetch"]),
    ("KASLR: EntryBleed", lambda c: c.kaslr["entrybleed"]),
    ("SYSCALL entry", lambda c: c.entry),
    ("cpu_entry_area", lambda c: c.cea),
    ("NMI in kernel, exit", lambda c: c.nmi_restore),
    ("pti=on mitigations=off", lambda c: c.pti_on_mitigations_off),
)


ROW_NAMES = tuple(label for label, _ in ROWS)
MEASURE_ROWS = ROW_NAMES[2:12]  # what the student compares: reach, fork, syscall, attacks
VERSION_ROWS = ("when / what is new", "SYSCALL entry", "cpu_entry_area", "NMI in kernel, exit",
                "pti=on mitigations=off", "Meltdown: IDT gate")


def comparison_table(comparisons: Sequence[Comparison],
                     rows: Sequence[str] | None = None) -> TextTable:
    """One column per design, one row per measure (:data:`ROWS`, or the ones named in
    ``rows``, in that order)."""
    if not comparisons:
        raise KaiserEduError("comparison_table needs at least one comparison")
    wanted = ROW_NAMES if rows is None else tuple(rows)
    unknown = [r for r in wanted if r not in ROW_NAMES]
    if unknown:
        raise KaiserEduError(f"unknown rows {unknown}; known: {', '.join(ROW_NAMES)}")
    measures = dict(ROWS)
    columns = ["measure"] + [c.design.label for c in comparisons]
    rows = [[label] + [measures[label](c) for c in comparisons] for label in wanted]
    widths = [max(len(columns[i]), *(len(r[i]) for r in rows)) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in [columns, *rows]]
    return TextTable("\n".join(lines), columns, rows)


def reach_text(c: Comparison) -> str:
    """The kernel ranges user mode reaches under ``c``'s design, by name."""
    return textwrap.fill(f"{c.design.label}: user mode reaches {c.reach_kib:,} KiB of the "
                         "kernel: " + ", ".join(c.reach_ranges), width=100,
                         subsequent_indent="  ")


def history_figure(comparisons: Sequence[Comparison]) -> Figure:
    """Two panels over the designs in order: the kernel memory user mode reaches (log
    scale) and the cycles per system call (with isolation off as a dashed line)."""
    if not comparisons:
        raise KaiserEduError("history_figure needs at least one comparison")
    fig = Figure(figsize=(8.5, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    names = [c.design.name for c in comparisons]
    x = range(len(comparisons))
    left.bar(x, [max(c.reach_kib, 1) for c in comparisons], color="#4c72b0")
    left.set_yscale("log")
    left.set_ylabel("KiB of kernel (log scale)", fontsize=9)
    left.set_title("What user mode can reach", fontsize=10)
    right.bar(x, [c.syscall_cycles for c in comparisons], color="#dd8452")
    right.axhline(comparisons[0].off_cycles, color="black", ls="--", lw=1)
    right.set_ylabel("cycles per syscall loop call", fontsize=9)
    right.set_title("What a system call costs (model)", fontsize=10)
    for ax in (left, right):
        ax.set_xticks(list(x), names, rotation=40, ha="right", fontsize=9)
        ax.tick_params(axis="y", labelsize=9)
    fig.alt = ("Two bar charts over the designs " + ", ".join(names) + ". Left, kernel KiB "
               "user mode can reach: " + ", ".join(f"{c.design.name} {c.reach_kib:,}"
                                                  for c in comparisons)
               + ". Right, cycles per call of the syscall loop: "
               + ", ".join(f"{c.design.name} {c.syscall_cycles:,.0f}" for c in comparisons)
               + f"; dashed line: isolation off, {comparisons[0].off_cycles:,.0f}.")
    return fig


class HistoryExplorer(_view.OutputView, widgets.VBox):
    """Two Dropdowns (``left``, ``right``: a design each) and an ``output`` with the two
    designs' :func:`comparison_table` and reach. State: ``comparisons`` (the last pair, ()
    after an error) and ``error``."""

    def __init__(self, left: str = "kaiser-graz", right: str = "pti-6.1", seed: int = 0,
                 calls: int = 48) -> None:
        design(left), design(right)
        self.seed, self.calls = seed, calls
        self.comparisons: tuple[Comparison, ...] = ()
        self.error = ""
        options = [(d.label, d.name) for d in DESIGNS.values()]
        self.left = widgets.Dropdown(options=options, value=left, description="design A")
        self.right = widgets.Dropdown(options=options, value=right, description="design B")
        self.output = widgets.Output()
        super().__init__([widgets.HBox([self.left, self.right]), self.output])
        for control in (self.left, self.right):
            control.observe(lambda _c: self._update(), names="value")
        self._update()

    def _update(self) -> None:
        try:
            self.comparisons = tuple(compare(n, self.seed, calls=self.calls)
                                     for n in (self.left.value, self.right.value))
            self.error = ""
        except Exception as exc:  # never raise into the front end: show it
            self.comparisons, self.error = (), f"{type(exc).__name__}: {exc}"
            _view.show_error(self.output, self.error)
            return
        table = comparison_table(self.comparisons)
        reach = "\n".join(reach_text(c) for c in self.comparisons)
        html = table._repr_html_() + "<pre style='white-space:pre-wrap'>" + _view.esc(
            reach) + "</pre>"
        _view.show(self.output, html, f"{table}\n{reach}")

    def __repr__(self) -> str:
        return f"HistoryExplorer(left={self.left.value!r}, right={self.right.value!r})"
