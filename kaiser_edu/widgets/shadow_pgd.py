"""Lesson 06: KAISER's shadow PGD, the kernel PGD and the user PGD side by side.

With KAISER (the 2017 series) and Linux PTI (arch/x86/mm/pti.c) every process owns two
top-level page tables in one order-1, 8 KiB-aligned allocation: the *kernel* PGD in the
lower 4 KiB, which maps everything, and the *user* ("shadow") PGD in the upper 4 KiB, which
user code runs on. Flipping bit 12 of a pointer or of CR3 moves between them
(``kernel_to_user_pgdp()``; ``PTI_USER_PGTABLE_MASK`` in arch/x86/entry/calling.h).

Only top-level entries are ever copied. ``__pti_set_user_pgtbl()`` writes each user-half
PGD entry into both copies (the kernel's with NX added), so the two trees meet one level
down: they share every PDPT (Linux: PUD), PD and PT of user memory - "one PTE to lock, one
set of accessed bits, dirty bits" (Documentation/arch/x86/pti.rst). In the kernel half the
user PGD holds only what the entry code needs: under PTI whole PGD slots cloned at boot
(``pti_clone_user_shared()`` for the cpu_entry_area, ``pti_setup_espfix64()``), the entry
text's PMDs (``pti_clone_entry_text()``) and each CPU's TSS page; under KAISER 2017 4 KiB
pages added one range at a time with ``kaiser_add_mapping()``, including every new task's
kernel stack.

The models are pure functions of a booted :class:`~kaiser_edu.kernel.Kernel`:

* :func:`pgd_pair_view`: the present entries of both PGDs, slot by slot, and whether the
  two copies point to the same next-level table;
* :func:`user_reachable_kernel`: the kernel ranges that have a translation in the page
  tables user code runs on (what Meltdown could read), straight from
  :func:`kaiser_edu.kernel.audit.kernel_visible_ranges` and the mode's allowed ranges;
* :func:`walk_both`: one address walked from both PGDs, level by level.

:class:`ShadowPgdExplorer` is the widget (switch the isolation mode, pick a PGD slot) and
:func:`shadow_pgd_figure` the figure.

>>> kernel, task = demo_machine("pti")
>>> view = pgd_pair_view(kernel, task)
>>> view.user_pgd - view.kernel_pgd, view.slot(0).sharing
(4096, 'same table')
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from kaiser_edu.display.tables import TextTable, words_html
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import canonicalize, table_index
from kaiser_edu.hw.pgtable import Entry, PageTables
from kaiser_edu.kernel import audit
from kaiser_edu.kernel.machine import USER_STACK_TOP, Kernel, Task
from kaiser_edu.widgets import _view
from kaiser_edu.widgets.figures import Figure

# The isolation modes, as the widget names them (kaiser_edu.kernel.isolation).
MODES = {"off": "off", "kaiser": "KAISER 2017", "pti": "Linux PTI"}
DEMO_BUFFER = 0x5000_0000_0000  # the demo process's mmap()ed buffer: a PGD slot of its own
PGD_SLOT_SIZE = 1 << b.level_shift(4)  # 512 GiB per PGD entry (PGDIR_SHIFT = 39)
KERNEL_PGD_BOUNDARY = audit.PGD_USER_ENTRIES  # slots 256..511 map the kernel half

# How the two copies of one PGD slot relate, with the colour that marks it everywhere.
SHARING = {
    "same table": ("both copies point to the same next-level table: one subtree",
                   _view.OKABE_ITO["bluish_green"]),
    "different tables": ("each copy points to a table of its own", _view.OKABE_ITO["reddish_purple"]),
    "kernel copy only": ("present only in the kernel PGD", _view.OKABE_ITO["orange"]),
    "user copy only": ("present only in the user PGD", _view.OKABE_ITO["sky_blue"]),
    "one PGD": ("no isolation: user code runs on the kernel's own PGD", _view.OKABE_ITO["grey"]),
}


# --- booting the demo -----------------------------------------------------------------------
def check_mode(mode: object) -> str:
    """``mode`` if it names an isolation mode, else a :class:`KaiserEduError`."""
    if not isinstance(mode, str) or mode not in MODES:
        raise KaiserEduError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def demo_machine(mode: str = "pti", seed: int = 0) -> tuple[Kernel, Task]:
    """A kernel booted with ``isolation=mode`` and one process that has run: its text page
    faulted in, and a one-page buffer at :data:`DEMO_BUFFER` mmap()ed and written, so the
    user half has entries in three PGD slots (text 0, buffer 160, stack 255)."""
    mode = check_mode(mode)
    kernel = Kernel(isolation=mode, seed=seed)
    task = kernel.spawn("demo")
    outcome = kernel.switch_to(task)
    if not outcome.ok:  # pragma: no cover - a boot bug, not bad input
        raise KaiserEduError(f"the demo process did not start under {mode}: {outcome.detail}")
    kernel.user_store(task, USER_STACK_TOP - 8, 0)  # the first push onto the stack
    kernel.mmap(task, b.PAGE_SIZE, addr=DEMO_BUFFER, name="[buffer]")
    kernel.user_store(task, DEMO_BUFFER, 0x6B616973_6572)  # "kaiser"
    return kernel, task


def _task_of(kernel: Kernel, task: Task | None) -> Task:
    if not isinstance(kernel, Kernel):
        raise KaiserEduError(f"expected a booted kaiser_edu.kernel.Kernel, got {kernel!r}")
    task = kernel.current if task is None else task
    if task is None:
        raise KaiserEduError("no task given and none is running: pass one (kernel.spawn())")
    if kernel.tasks.get(getattr(task, "pid", None)) is not task:
        raise KaiserEduError(f"{task!r} is not a task of this kernel")
    return task


def _user_pgd(task: Task) -> int:
    """The PGD user code runs on: the upper half of the pair, or the only PGD."""
    return task.mm.user_pgd if task.mm.pgd_pair else task.mm.pgd


# --- the PGD pair ---------------------------------------------------------------------------
def _next_table(entry: int) -> int | None:
    return entry & b.phys_addr_mask(52) if entry & b.PAGE_PRESENT else None


def _flags(entry: int, level: int = 4) -> str:
    """The flags of an entry (a PGD entry by default), without the frame number."""
    return b.describe_entry(entry, level).split(" pfn=")[0]


@dataclass(frozen=True)
class PgdSlot:
    """One top-level slot (512 GiB of virtual addresses) in both PGDs.

    ``kernel_entry``/``user_entry`` are the entry values (0 if not present); the
    ``*_ranges`` are the mapped ranges (:class:`~kaiser_edu.kernel.audit.MappedRange`)
    reached through the slot from each PGD, and ``regions`` the Linux regions it covers."""

    index: int
    regions: tuple[str, ...]
    kernel_entry: int
    user_entry: int
    kernel_ranges: tuple[audit.MappedRange, ...]
    user_ranges: tuple[audit.MappedRange, ...]
    pair: bool = True

    @property
    def va(self) -> int:
        """First (canonical) address of the slot."""
        return canonicalize(self.index * PGD_SLOT_SIZE)

    @property
    def half(self) -> str:
        return "user" if self.index < KERNEL_PGD_BOUNDARY else "kernel"

    @property
    def kernel_table(self) -> int | None:
        """Physical address of the next-level table (PDPT) of the kernel copy."""
        return _next_table(self.kernel_entry)

    @property
    def user_table(self) -> int | None:
        return _next_table(self.user_entry)

    @property
    def sharing(self) -> str:
        """A key of :data:`SHARING`."""
        if not self.pair:
            return "one PGD"
        if self.kernel_table is not None and self.user_table is not None:
            return "same table" if self.kernel_table == self.user_table else "different tables"
        return "kernel copy only" if self.kernel_table is not None else "user copy only"

    @property
    def nx_only_in_kernel_copy(self) -> bool:
        """NX added to the kernel copy and not in the user copy (__pti_set_user_pgtbl())."""
        return bool(self.pair and self.kernel_entry & b.PAGE_NX
                    and not self.user_entry & b.PAGE_NX)

    @property
    def kernel_bytes(self) -> int:
        """Bytes mapped through this slot of the kernel PGD."""
        return _bytes_in(self.kernel_ranges, self.va)

    @property
    def user_bytes(self) -> int:
        return _bytes_in(self.user_ranges, self.va)

    @property
    def empty_shadow(self) -> bool:
        """Present in the user copy only, with nothing mapped below: KAISER's kaiser_init()
        pre-populates every kernel-half entry of the shadow PGD this way, so a later
        kaiser_add_mapping() reaches every process through the shared lower tables."""
        return self.sharing == "user copy only" and self.user_bytes == 0

    def describe(self) -> str:
        """One line: slot, region, both entries, how they relate."""
        k = f"{self.kernel_entry:#018x} {_flags(self.kernel_entry)}" if self.kernel_entry \
            else "not present"
        if not self.pair:
            return f"PGD[{self.index:3}] {', '.join(self.regions):<34} {k}"
        u = f"{self.user_entry:#018x} {_flags(self.user_entry)}" if self.user_entry \
            else "not present"
        return (f"PGD[{self.index:3}] {', '.join(self.regions):<34} kernel: {k:<40} "
                f"user: {u:<40} {self.sharing}")


def _bytes_in(ranges: tuple[audit.MappedRange, ...], start: int) -> int:
    end = start + PGD_SLOT_SIZE
    return sum(max(0, min(r.end, end) - max(r.start, start)) for r in ranges)


@dataclass(frozen=True)
class PgdPairView:
    """Both PGDs of one process: addresses, CR3 values and the present slots."""

    mode: str
    pair: bool
    kernel_pgd: int
    user_pgd: int
    kernel_cr3: int
    user_cr3: int
    slots: tuple[PgdSlot, ...]

    def slot(self, index: int) -> PgdSlot:
        """The slot ``index`` (present in at least one copy)."""
        for s in self.slots:
            if s.index == index:
                return s
        present = ", ".join(str(s.index) for s in self.slots if not s.empty_shadow)
        raise KaiserEduError(f"PGD slot {index!r} is present in neither copy; present: "
                             f"{present}")

    def shown_slots(self) -> list[PgdSlot]:
        """The slots worth a row: all but KAISER's empty pre-populated shadow entries."""
        return [s for s in self.slots if not s.empty_shadow]

    @property
    def empty_shadow_slots(self) -> int:
        return sum(s.empty_shadow for s in self.slots)

    def header(self) -> str:
        if not self.pair:
            return (f"{MODES[self.mode]}: one PGD at {self.kernel_pgd:#x}; CR3 = "
                    f"{self.kernel_cr3:#x} in kernel and in user mode")
        return (f"{MODES[self.mode]}: kernel PGD {self.kernel_pgd:#x}, user PGD "
                f"{self.user_pgd:#x} (bit 12 set); kernel CR3 {self.kernel_cr3:#x}, user CR3 "
                f"{self.user_cr3:#x} (differ in {self.kernel_cr3 ^ self.user_cr3:#x})")

    def text(self) -> str:
        lines = [self.header()] + [s.describe() for s in self.shown_slots()]
        if self.empty_shadow_slots:
            lines.append(f"(+ {self.empty_shadow_slots} kernel-half shadow entries pre-populated "
                         "by kaiser_init(), with nothing mapped below them)")
        return "\n".join(lines)


def _slot_regions(kernel: Kernel, index: int) -> tuple[str, ...]:
    start = canonicalize(index * PGD_SLOT_SIZE)
    names = [name for name, s, e in kernel.layout.regions()
             if s < start + PGD_SLOT_SIZE and e > start]
    return tuple(names) or ("unused",)


def _by_slot(ranges: list[audit.MappedRange]) -> dict[int, list[audit.MappedRange]]:
    """Each range under every PGD slot it overlaps."""
    out: dict[int, list[audit.MappedRange]] = {}
    for r in ranges:
        for index in range(table_index(r.start, 4), table_index(r.end - 1, 4) + 1):
            out.setdefault(index, []).append(r)
    return out


def pgd_pair_view(kernel: Kernel, task: Task | None = None) -> PgdPairView:
    """The two PGDs of ``task`` (default: the running task) as data: every slot present in
    either copy, its entry in each, the ranges mapped below it from each, and whether the
    copies share the next-level table. Without isolation the "pair" is one PGD seen
    twice. Reads memory only; changes nothing."""
    task = _task_of(kernel, task)
    mm, mem = task.mm, kernel.mem
    kpgd, upgd = mm.pgd, _user_pgd(task)
    k_ranges = _by_slot(audit.mapped_ranges(mem, kpgd, half="all"))
    u_ranges = k_ranges if upgd == kpgd else _by_slot(audit.mapped_ranges(mem, upgd, half="all"))
    slots = []
    for index in range(512):
        k_entry = mem.read_qword(kpgd + index * 8)
        u_entry = mem.read_qword(upgd + index * 8)
        if not (k_entry | u_entry) & b.PAGE_PRESENT:
            continue
        slots.append(PgdSlot(index, _slot_regions(kernel, index), k_entry, u_entry,
                             tuple(k_ranges.get(index, ())), tuple(u_ranges.get(index, ())),
                             pair=mm.pgd_pair))
    return PgdPairView(kernel.isolation.name, mm.pgd_pair, kpgd, upgd, kernel.kernel_cr3(mm),
                       kernel.user_cr3_of(mm), tuple(slots))


# --- what user mode can reach ---------------------------------------------------------------
@dataclass(frozen=True)
class ReachableRange:
    """A kernel range with a translation in the user-mode page tables. ``allowed`` names
    the range of the mode's shadow_allowed() it falls in (None: none does); ``region`` is
    the Linux region (Documentation/arch/x86/x86_64/mm.rst)."""

    range: audit.MappedRange
    allowed: str | None
    region: str

    def describe(self) -> str:
        why = f"[{self.allowed}]" if self.allowed else "[not cloned on purpose]"
        return f"{self.range.describe()}  {self.region}  {why}"


@dataclass(frozen=True)
class ReachableKernel:
    """Everything of the kernel half that user code has a translation for."""

    mode: str
    user_pgd: int
    ranges: tuple[ReachableRange, ...]

    @property
    def total_bytes(self) -> int:
        return sum(r.range.size for r in self.ranges)

    @property
    def outside_allowed(self) -> int:
        """How many ranges no allowed range covers (all of them without isolation)."""
        return sum(r.allowed is None for r in self.ranges)

    def summary(self) -> str:
        """'user mode can reach N kernel ranges, X KiB', and what that means."""
        n, kib = len(self.ranges), self.total_bytes // 1024
        head = f"user mode can reach {n} kernel range{'s' if n != 1 else ''}, {kib:,} KiB"
        if self.mode == "off":
            return (f"{head}: everything the kernel maps (no isolation; only U/S=0 keeps user "
                    "code out, and Meltdown ignores U/S)")
        if self.outside_allowed:
            return f"{head}, {self.outside_allowed} of them NOT cloned on purpose"
        return f"{head}, all of them mapped into the user PGD on purpose"

    def text(self) -> str:
        return "\n".join([self.summary()] + ["  " + r.describe() for r in self.ranges])


def user_reachable_kernel(kernel: Kernel, task: Task | None = None) -> ReachableKernel:
    """The kernel ranges that translate in the page tables ``task``'s user code runs on
    (its user PGD, or its only PGD without isolation), each named by the mode's allowed
    range (``kernel.isolation.shadow_allowed()``) and by its region. This is
    :func:`kaiser_edu.kernel.audit.kernel_visible_ranges`, unchanged: a Meltdown load can
    read every byte listed, a plain load none (U/S=0)."""
    task = _task_of(kernel, task)
    upgd = _user_pgd(task)
    visible = audit.kernel_visible_ranges(kernel.mem, upgd, kernel.isolation.shadow_allowed())
    ranges = tuple(ReachableRange(r, name, kernel.layout.region_of(r.start))
                   for r, name in visible)
    return ReachableKernel(kernel.isolation.name, upgd, ranges)


# --- one address through both PGDs ----------------------------------------------------------
@dataclass(frozen=True)
class WalkLevel:
    """One level of a walk from each PGD: the entries read (None: the walk had stopped)."""

    level: int
    kernel: Entry | None
    user: Entry | None

    @property
    def same_entry(self) -> bool:
        """Both walks read the very same entry (same physical address)."""
        return self.kernel is not None and self.user is not None \
            and self.kernel.pa == self.user.pa

    def describe(self) -> str:
        def one(e: Entry | None) -> str:
            if e is None:
                return "-"
            return f"@ {e.pa:#x} = {e.value:#018x} {_flags(e.value, e.level)}"

        name = b.LEVEL_SDM_NAMES[self.level]
        note = "same entry" if self.same_entry else "two entries"
        return f"{name:5} kernel {one(self.kernel):<48} user {one(self.user):<48} {note}"


def walk_both_table(levels: list[WalkLevel]) -> TextTable:
    """:func:`walk_both`'s levels as a table: one row per level, the kernel PGD's entry and
    the user PGD's, and whether they are the same entry (text: :meth:`WalkLevel.describe`)."""
    def cells(e: Entry | None) -> list[str]:
        if e is None:
            return ["-", "-", ""]
        return [f"{e.pa:#x}", f"{e.value:#018x}", _flags(e.value, e.level)]

    rows = [[b.LEVEL_SDM_NAMES[lv.level], *cells(lv.kernel), *cells(lv.user),
             "same entry" if lv.same_entry else "two entries"] for lv in levels]
    columns = ("level", "kernel: entry at", "value", "flags", "user: entry at", "value ",
               "flags ", "")
    return TextTable("\n".join(lv.describe() for lv in levels), columns, rows)


def walk_both(kernel: Kernel, task: Task | None, va: int) -> list[WalkLevel]:
    """Walk ``va`` from ``task``'s kernel PGD and from its user PGD (a software lookup: no
    permission checks, no A/D updates), and pair the entries read level by level."""
    task = _task_of(kernel, task)
    if not isinstance(va, int) or isinstance(va, bool) or not 0 <= va < 1 << 64:
        raise KaiserEduError(f"va must be a 64-bit address (int), got {va!r}")

    def walk(pgd: int) -> dict[int, Entry]:
        tables = PageTables(kernel.mem, kernel.alloc, pgd_pa=pgd)
        return {e.level: e for e in tables.entries(va)}

    k, u = walk(task.mm.pgd), walk(_user_pgd(task))
    return [WalkLevel(level, k.get(level), u.get(level)) for level in (4, 3, 2, 1)
            if level in k or level in u]


# --- the widget -------------------------------------------------------------------------------
def _cell(entry: int) -> str:
    if not entry & b.PAGE_PRESENT:
        return "<i>not present</i>"
    nx = " <b>NX</b>" if entry & b.PAGE_NX else ""
    flags = _view.esc(_flags(entry).replace(" NX", ""))
    return f"<code>{entry:#018x}</code><br><small>{flags}{nx}</small>"


def _sharing_cell(slot: PgdSlot) -> str:
    text, color = SHARING[slot.sharing]
    extra = ""
    if slot.nx_only_in_kernel_copy:
        extra = "<br><small>NX only in the kernel copy</small>"
    table = slot.kernel_table if slot.kernel_table is not None else slot.user_table
    where = f"<br><small>PDPT {table:#x}</small>" if slot.sharing in ("same table", "one PGD") \
        else ""
    return (f"<span title='{_view.esc(text)}'>{_view.swatch(color)} {slot.sharing}</span>"
            f"{where}{extra}")


_TD = "<td style='text-align:left;padding:2px 8px'>"
_TH = "<th style='text-align:left;padding:2px 8px'>"


def _row(cells: list[str], tag: str = _TD) -> str:
    close = "</td>" if tag is _TD else "</th>"
    return "<tr>" + "".join(f"{tag}{c}{close}" for c in cells) + "</tr>"


def pair_html(view: PgdPairView) -> str:
    """The PGD pair as an HTML table (one row per shown slot)."""
    columns = ["slot", "region(s)", "kernel PGD entry"]
    columns += ["user PGD entry"] if view.pair else []
    head = _row(columns + ["next level"], _TH)
    rows = []
    for s in view.shown_slots():
        cells = [str(s.index), f"<small>{words_html(', '.join(s.regions))}</small>",
                 _cell(s.kernel_entry)]
        cells += [_cell(s.user_entry)] if view.pair else []
        rows.append(_row(cells + [_sharing_cell(s)]))
    note = ""
    if view.empty_shadow_slots:
        note = (f"<div><small>+ {view.empty_shadow_slots} kernel-half entries of the shadow PGD "
                "pre-populated by kaiser_init(), with nothing mapped below them (not listed)"
                "</small></div>")
    return (f"<div><b>{_view.esc(view.header())}</b></div>"
            f"<table style='border-collapse:collapse;font-size:90%'>{head}{''.join(rows)}</table>"
            f"{note}")


def reachable_html(reach: ReachableKernel) -> str:
    rows = []
    for r in reach.ranges:
        color = _view.OK_COLOR if r.allowed else _view.FAULT_COLOR
        why = words_html(r.allowed) if r.allowed else "<b>not cloned on purpose</b>"
        rows.append(_row([f"<code style='white-space:nowrap'>{r.range.start:#018x}-"
                          f"{r.range.end:#018x}</code>",
                          f"{r.range.size // 1024:,}&nbsp;KiB", _view.esc(r.range.rights()),
                          words_html(r.region), f"{_view.swatch(color)} {why}"]))
    head = _row(["range", "size", "rights", "region", "mapped as"], _TH)
    table = (f"<table style='border-collapse:collapse;font-size:90%'>{head}{''.join(rows)}"
             "</table>") if rows else "<div>(nothing)</div>"
    return ("<div style='margin-top:6px'><b>Kernel memory with a translation while user code "
            "runs</b> (a Meltdown load can read it; a plain load faults on U/S=0):</div>"
            f"{table}")


def slot_text(slot: PgdSlot, max_ranges: int = 6) -> str:
    """Both entries of one slot decoded, and what each copy maps through it."""
    lines = [f"PGD[{slot.index}] covers {slot.va:#x}-{slot.va + PGD_SLOT_SIZE - 1:#x} "
             f"({', '.join(slot.regions)}): {slot.sharing}"]
    copies = [("kernel copy", slot.kernel_entry, slot.kernel_ranges)]
    if slot.pair:
        copies.append(("user copy", slot.user_entry, slot.user_ranges))
    for name, entry, ranges in copies:
        lines.append(f"  {name}: {entry:#018x}  {b.describe_entry(entry, 4)}")
        for r in ranges[:max_ranges]:
            lines.append(f"      maps {r.describe()}")
        if len(ranges) > max_ranges:
            lines.append(f"      ... {len(ranges) - max_ranges} more")
        if entry & b.PAGE_PRESENT and not ranges:
            lines.append("      maps nothing (an empty table)")
    if slot.nx_only_in_kernel_copy:
        lines.append("  NX is set in the kernel copy only (__pti_set_user_pgtbl()): user code "
                     "that ever runs on the kernel CR3 faults on its first instruction.")
    return "\n".join(lines)


class ShadowPgdExplorer(_view.OutputView, widgets.VBox):
    """Switch the isolation mode and compare the two PGDs of a process.

    Controls (attributes): ``mode`` (Dropdown: off, KAISER 2017, Linux PTI) and
    ``slot`` (Dropdown: "all slots" or one present PGD slot, whose two entries and mapped
    ranges are then decoded below the table); ``output`` shows the PGD pair, the kernel
    ranges user mode can reach and their one-line summary. Each mode's machine
    (:func:`demo_machine`) is booted once and kept in ``machines``, so switching back and
    forth is instant. ``pair`` and ``reach`` hold the models of what is shown.
    """

    ALL = -1  # the slot dropdown's "all slots" value

    def __init__(self, mode: str = "pti", seed: int = 0) -> None:
        self.seed = seed
        self.machines: dict[str, tuple[Kernel, Task]] = {}
        self.pair: PgdPairView | None = None
        self.reach: ReachableKernel | None = None
        self._rebuilding = False
        self.mode = widgets.Dropdown(
            options=[(label, key) for key, label in MODES.items()], value=check_mode(mode),
            description="isolation")
        self.slot = widgets.Dropdown(options=[("all slots", self.ALL)], value=self.ALL,
                                     description="PGD slot")
        self.output = widgets.Output()
        super().__init__([widgets.HBox([self.mode, self.slot]), self.output])
        self.mode.observe(lambda _c: self._safely(self.refresh), names="value")
        self.slot.observe(lambda _c: None if self._rebuilding else self._safely(self.render),
                          names="value")
        self.refresh()

    def machine(self, mode: str) -> tuple[Kernel, Task]:
        """The (kernel, task) of ``mode``, booted on first use."""
        mode = check_mode(mode)
        if mode not in self.machines:
            self.machines[mode] = demo_machine(mode, self.seed)
        return self.machines[mode]

    def set_mode(self, mode: str) -> None:
        """Switch to ``mode`` ("off", "kaiser" or "pti"), as clicking its button does."""
        self.mode.value = check_mode(mode)

    def refresh(self) -> None:
        """Recompute the models for the current mode and redraw."""
        kernel, task = self.machine(self.mode.value)
        self.pair = pgd_pair_view(kernel, task)
        self.reach = user_reachable_kernel(kernel, task)
        options = [("all slots", self.ALL)] + [
            (f"{s.index}: {s.regions[0]}", s.index) for s in self.pair.shown_slots()]
        keep = self.slot.value if self.slot.value in dict(options).values() else self.ALL
        self._rebuilding = True  # new options reset the value: no render until it is back
        try:
            self.slot.options = options
            self.slot.value = keep
        finally:
            self._rebuilding = False
        self.render()

    def render(self) -> None:
        assert self.pair is not None and self.reach is not None
        html = [f"<div style='font-size:110%;margin:4px 0'><b>{MODES[self.pair.mode]}:</b> "
                f"{_view.esc(self.reach.summary())}</div>", pair_html(self.pair)]
        text = [self.reach.summary(), self.pair.text()]
        if self.slot.value != self.ALL:
            detail = slot_text(self.pair.slot(self.slot.value))
            html.append(f"<pre style='font-size:85%'>{_view.esc(detail)}</pre>")
            text.append(detail)
        html.append(reachable_html(self.reach))
        text.append(self.reach.text())
        _view.show(self.output, "".join(html), "\n".join(text))

    def _safely(self, action: Callable[[], None]) -> None:
        """Run a callback; show a refusal in the view instead of raising into the browser."""
        try:
            action()
        except KaiserEduError as exc:
            _view.show_error(self.output, exc, f"error: {exc}")

    def __repr__(self) -> str:
        slot = None if self.slot.value == self.ALL else self.slot.value
        return f"ShadowPgdExplorer(mode={self.mode.value!r}, slot={slot})"


# --- the figure ---------------------------------------------------------------------------------
# Inches, sized for 9 pt text (display.MIN_FONT_PT) in a 9.5 in figure, which a laptop's
# JupyterLab shows unscaled: a PGD entry "[160] 0x8000000004021067" is 1.8 in of monospace,
# a region name wraps at 26 characters inside a 2.05 in table box.
_ROW_H, _CELL_W, _MID_W, _BOX_W, _FONT = 0.84, 2.1, 4.3, 2.05, 9.0


def _rows(view: PgdPairView) -> list[PgdSlot | tuple[int, int]]:
    """The figure's rows: shown slots, and (first, last) for each run of KAISER's empty
    pre-populated shadow entries."""
    rows: list[PgdSlot | tuple[int, int]] = []
    for s in view.slots:
        if not s.empty_shadow:
            rows.append(s)
        elif rows and isinstance(rows[-1], tuple) and rows[-1][1] == s.index - 1:
            rows[-1] = (rows[-1][0], s.index)
        else:
            rows.append((s.index, s.index))
    return rows


def _entry_box(ax, x: float, y: float, entry: int, index: int, gid: str) -> None:
    present = bool(entry & b.PAGE_PRESENT)
    ax.add_patch(FancyBboxPatch((x, y - 0.22), _CELL_W, 0.44, boxstyle="round,pad=0.02",
                                facecolor="white" if present else "#F2F2F2",
                                edgecolor="#333333", linewidth=0.7, gid=gid))
    if not present:
        ax.text(x + 0.08, y, f"[{index:3}] not present", fontsize=_FONT, family="monospace",
                va="center", style="italic", color="#555555")
        return
    ax.text(x + 0.08, y + 0.1, f"[{index:3}] {entry:#018x}", fontsize=_FONT,
            family="monospace", va="center")
    flags = _flags(entry)
    ax.text(x + 0.08, y - 0.11, flags, fontsize=_FONT, family="monospace", va="center",
            color=_view.FAULT_COLOR if entry & b.PAGE_NX else "#222222",
            fontweight="bold" if entry & b.PAGE_NX else "normal")


def _table_box(ax, x: float, y: float, table: int, slot: PgdSlot, color: str,
               mapped: int) -> None:
    ax.add_patch(FancyBboxPatch((x, y - 0.36), _BOX_W, 0.72, boxstyle="round,pad=0.02",
                                facecolor=color, edgecolor="#333333", linewidth=0.7,
                                alpha=0.85, gid="table"))
    region = "\n".join(textwrap.wrap(slot.regions[0], 26)[:2])
    ax.text(x + 0.06, y + 0.24, f"PDPT @ {table:#x}", fontsize=_FONT, family="monospace",
            va="center", fontweight="bold")
    ax.text(x + 0.06, y + 0.14, region, fontsize=_FONT, va="top", linespacing=1.2)
    ax.text(x + 0.06, y - 0.26, f"maps {mapped // 1024:,} KiB" if mapped else "maps nothing",
            fontsize=_FONT, va="center")


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], color: str) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=8, color=color,
                                 linewidth=1.0, shrinkA=1, shrinkB=1, gid="arrow"))


def shadow_pgd_figure(kernel: Kernel, task: Task | None = None, *,
                      title: str | None = None) -> Figure:
    """The kernel PGD (left) and the user PGD (right) of ``task`` as two columns of their
    present entries, with the next-level tables (PDPTs) in the middle: a table both copies
    point to is drawn once, in green, with an arrow from each side; a table only one copy
    reaches sits on that side (orange: kernel only, blue: user only, purple: each copy has
    its own). Entries with NX are printed in bold vermillion. KAISER's empty pre-populated
    shadow entries are folded into one row per run. Without isolation the right column is
    the same PGD again. Patches carry gids "kernel_entry", "user_entry", "table", "arrow".
    """
    view = pgd_pair_view(kernel, task)
    rows = _rows(view)
    width = 0.3 + 2 * _CELL_W + _MID_W + 0.5 + 0.2
    height = 1.25 + _ROW_H * len(rows) + 0.55
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    x_k = 0.3
    x_mid = x_k + _CELL_W + 0.25
    x_u = x_mid + _MID_W + 0.25
    ax.text(0.3, height - 0.25, title or f"{MODES[view.mode]}: the kernel PGD and the user PGD "
            "of one process", fontsize=10, fontweight="bold", va="center")
    ax.text(x_k, height - 0.6, f"kernel PGD @ {view.kernel_pgd:#x}\nCR3 {view.kernel_cr3:#x}",
            fontsize=_FONT, va="center", family="monospace")
    user_head = (f"user PGD @ {view.user_pgd:#x}\nCR3 {view.user_cr3:#x}" if view.pair else
                 "user mode: the same PGD\n(no isolation)")
    ax.text(x_u, height - 0.6, user_head, fontsize=_FONT, va="center", family="monospace")
    ax.text(x_mid + 0.2, height - 0.6, "next-level tables (PDPT = Linux PUD)", fontsize=_FONT,
            va="center", style="italic")
    y = height - 1.15
    for row in rows:
        y -= _ROW_H / 2
        if isinstance(row, tuple):
            first, last = row
            label = f"[{first}] 1 entry" if first == last else \
                f"[{first}-{last}] {last - first + 1} entries"
            ax.text(x_u + 0.08, y, f"{label}:\nempty tables pre-populated\nby kaiser_init()",
                    fontsize=_FONT, va="center", style="italic", color="#555555")
        else:
            _figure_row(ax, row, y, x_k, x_mid, x_u)
        y -= _ROW_H / 2
    _legend(ax, 0.3, 0.3)
    shared = sum(1 for r in rows if not isinstance(r, tuple) and r.sharing == "same table")
    fig.alt = (f"{MODES[view.mode]}: the kernel PGD at {view.kernel_pgd:#x} (left) and "
               + (f"the user PGD at {view.user_pgd:#x} (right)" if view.pair else
                  "the same PGD again for user mode (no isolation)")
               + f", {len(rows)} rows of PGD slots; {shared} slots point to the same "
               "next-level table from both copies. "
               + "; ".join(f"slot {r.index}: {r.regions[0]}, {r.sharing}" for r in rows
                           if not isinstance(r, tuple)) + ".")
    return fig


def _figure_row(ax, s: PgdSlot, y: float, x_k: float, x_mid: float, x_u: float) -> None:
    """One slot: its two entry boxes and the table(s) they point to."""
    _entry_box(ax, x_k, y, s.kernel_entry, s.index, "kernel_entry")
    user_entry = s.user_entry if s.pair else s.kernel_entry
    _entry_box(ax, x_u, y, user_entry, s.index, "user_entry")
    color = SHARING[s.sharing][1]
    k_end, u_start = (x_k + _CELL_W, y), (x_u, y)
    if s.sharing in ("same table", "one PGD"):
        x = x_mid + (_MID_W - _BOX_W) / 2
        _table_box(ax, x, y, s.kernel_table, s, color, s.kernel_bytes)
        _arrow(ax, k_end, (x, y), "#222222")
        _arrow(ax, u_start, (x + _BOX_W, y), "#222222")
        return
    if s.kernel_table is not None:
        _table_box(ax, x_mid, y, s.kernel_table, s, SHARING["kernel copy only"][1]
                   if s.user_table is None else color, s.kernel_bytes)
        _arrow(ax, k_end, (x_mid, y), "#222222")
    if s.user_table is not None:
        x = x_mid + _MID_W - _BOX_W
        _table_box(ax, x, y, s.user_table, s, SHARING["user copy only"][1]
                   if s.kernel_table is None else color, s.user_bytes)
        _arrow(ax, u_start, (x + _BOX_W, y), "#222222")


def _legend(ax, x: float, y: float) -> None:
    for key in ("same table", "different tables", "kernel copy only", "user copy only"):
        ax.add_patch(FancyBboxPatch((x, y - 0.07), 0.14, 0.14, boxstyle="square,pad=0",
                                    facecolor=SHARING[key][1], edgecolor="#333333",
                                    linewidth=0.6))
        ax.text(x + 0.2, y, key, fontsize=_FONT, va="center")
        x += 1.75
    ax.text(x, y, "NX in bold vermillion", fontsize=_FONT, va="center",
            color=_view.FAULT_COLOR, fontweight="bold")


__all__ = [
    "DEMO_BUFFER", "MODES", "SHARING", "PgdPairView", "PgdSlot", "ReachableKernel",
    "ReachableRange", "ShadowPgdExplorer", "WalkLevel", "check_mode", "demo_machine",
    "pgd_pair_view", "shadow_pgd_figure", "slot_text", "user_reachable_kernel", "walk_both",
    "walk_both_table",
]
