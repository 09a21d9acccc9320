"""Lesson 02: the page walk, one level at a time.

The MMU translates a linear address by reading one 8-byte entry per level, starting from the
table CR3 points to (Intel SDM Vol. 3A 4.5): entry address = table | index << 3. Each entry
either points to the next table, maps a page (a PTE, or a PDE/PDPTE with PS=1: 2 MiB /
1 GiB), or is not present (P=0: #PF). On the way the rights combine (SDM 4.6.1): the page
is a *user* page only if U/S=1 in every entry, *writable* only if R/W=1 in every entry, and
*not executable* if XD=1 in any entry (with EFER.NXE=1). Then the access is judged against
the CPL, CR0.WP, CR4.SMEP/SMAP and RFLAGS.AC; a refusal is a #PF whose error code says
P (present: a protection fault), W (write), U (CPL 3), RSVD and I (fetch) (SDM 4.7).

The model is :func:`walk_view`, which runs the reference walk of
:mod:`kaiser_edu.hw.walk` (without touching A/D bits, so stepping never changes the
machine) and explains each step and the outcome; :func:`demo_machine` builds page tables
in which every rule above can be seen; :class:`WalkStepper` is the widget.

>>> m = demo_machine()
>>> view = walk_view(m, m.va("user read-only"), "write", cpl=3)
>>> [row.sdm_name for row in view.rows], hex(view.result.error_code)
(['PML4E', 'PDPTE', 'PDE', 'PTE'], '0x7')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ipywidgets as widgets
import numpy as np

from kaiser_edu.display.tables import words_html
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import is_canonical, table_index, va_bits
from kaiser_edu.hw.bits import error_code_bits  # noqa: F401 (the lessons import it from here)
from kaiser_edu.hw.pgtable import PageTables
from kaiser_edu.hw.physmem import FrameAllocator, PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.hw.walk import WalkResult, reserved_bits, walk
from kaiser_edu.widgets import _view
from kaiser_edu.widgets.address_explorer import parse_address
from kaiser_edu.widgets.linux_map import PAGE_OFFSET, START_KERNEL_MAP, VMALLOC_START

DEMO_MAXPHYADDR = 46  # so that bits 51:46 are reserved and a RSVD fault can be shown


# --- the demo machine ---------------------------------------------------------------------
@dataclass(frozen=True)
class DemoAddress:
    """An address of the demo machine worth walking, and what it shows."""

    label: str
    va: int
    lesson: str  # what to try with it


@dataclass
class DemoMachine:
    """Physical memory, a frame allocator and one 4-level page-table tree, plus the
    interesting addresses (``addresses``, in the order the dropdown lists them)."""

    mem: PhysMem
    alloc: FrameAllocator
    pt: PageTables
    seed: int
    addresses: list[DemoAddress] = field(default_factory=list)

    def va(self, label: str) -> int:
        """The address with this label."""
        for a in self.addresses:
            if a.label == label:
                return a.va
        raise KaiserEduError(
            f"no demo address labelled {label!r}; known: {[a.label for a in self.addresses]}")

    def regs(self, *, wp: bool = True, smep: bool = False, smap: bool = False,
             nxe: bool = True) -> Registers:
        """Registers of a 64-bit CPU whose CR3 points at this machine's tables."""
        return Registers.long_mode(cr3=self.pt.cr3(), wp=wp, smep=smep, smap=smap, nxe=nxe,
                                   maxphyaddr=self.mem.maxphyaddr)

    def walk(self, va: int, kind: str = "read", cpl: int = 3, ac: bool = False,
             **regs: bool) -> WalkResult:
        """The reference walk, leaving A/D bits alone (``regs``: wp, smep, smap, nxe)."""
        return walk(self.mem, self.regs(**regs), va, kind, cpl, ac, set_ad=False)


def demo_machine(seed: int = 0) -> DemoMachine:
    """A small deterministic machine in which every paging rule of lesson 02 can be seen.

    The layout follows Linux (Documentation/arch/x86/x86_64/mm.rst); ``seed`` only chooses
    which physical frames the 4 KiB and 2 MiB pages get, so that different students get
    different physical addresses for the same exercise. Mapped:

    ========================  ====================  =========================================
    address                   page                  shows
    ========================  ====================  =========================================
    0x400000                  user code, r-x        fetch at CPL 3; SMEP at CPL 0
    0x600000                  user data, rw-, NX    NX on fetch; SMAP and RFLAGS.AC at CPL 0
    0x601000                  user read-only, NX    W=0: CPL 3 write faults; CR0.WP at CPL 0
    0x602000                  user data with a      RSVD fault (bit 50 >= MAXPHYADDR = 46)
                              reserved bit
    0x800000                  PTE rw, PDE R/W=0     W is ANDed across levels
    0xa00000                  PTE user, PDE U/S=0   U is ANDed across levels
    0x7f0000200000            user 2 MiB page       PS=1 in the PDE: 3-step walk
    0x7f0000600000            (PDE not present)     #PF at the PD level
    0x555500000000            (PML4E not present)   #PF at the first level
    0x800000000000            non-canonical         #GP, no table read
    0xffff888000000000        direct map, 1 GiB     PS=1 in the PDPTE; supervisor-only
    0xffffc90000001000        vmalloc, 4 KiB        supervisor-only (U/S=0) data
    0xffffffff81000000        kernel text, 2 MiB    global, r-x: CPL 0 fetch works
    0xffffffff82000000        kernel rodata         supervisor read-only: CR0.WP
    0xffffffffff600000        vsyscall page         a *user* page in the kernel half
    ========================  ====================  =========================================

    >>> m = demo_machine(seed=1)
    >>> m.walk(m.va("kernel text (2 MiB page)"), "fetch", cpl=0).page_size == 2 << 20
    True
    """
    rng = np.random.default_rng(seed)
    mem = PhysMem(maxphyaddr=DEMO_MAXPHYADDR)
    alloc = FrameAllocator(mem, ram_bytes=4 << 30)
    pt = PageTables(mem, alloc)
    # Data frames between 512 MiB and 768 MiB (page tables come from 1 MiB up), distinct.
    frames = [0x2000_0000 + int(f) * b.PAGE_SIZE
              for f in rng.choice(0x1_0000, size=9, replace=False)]
    huge_user = 0x3000_0000 + int(rng.integers(0, 64)) * b.PMD_SIZE

    addrs: list[DemoAddress] = []

    def add(label: str, va: int, lesson: str) -> None:
        addrs.append(DemoAddress(label, va, lesson))

    pt.map(0x40_0000, frames[0], flags=b.PAGE_USER_EXEC)
    add("user code (r-x)", 0x40_0000,
        "fetch at CPL 3 works; at CPL 0 it works only while SMEP is off; a write faults")
    pt.map(0x60_0000, frames[1], flags=b.PAGE_SHARED)
    add("user data (rw-, NX)", 0x60_0000,
        "fetch faults (XD=1, NXE=1); CPL 0 read faults with SMAP on unless AC=1")
    pt.map(0x60_1000, frames[2], flags=b.PAGE_READONLY)
    add("user read-only", 0x60_1000,
        "CPL 3 write: #PF 0x7; CPL 0 write: allowed only while CR0.WP=0")
    pt.map(0x60_2000, frames[3], flags=b.PAGE_SHARED)
    leaf = pt.leaf(0x60_2000)
    assert leaf is not None
    mem.write_qword(leaf.pa, leaf.value | 1 << 50)  # bit 50 >= MAXPHYADDR: reserved
    add("user data, reserved bit 50 set", 0x60_2000,
        "any access: #PF with RSVD=1 (bit 50 is above MAXPHYADDR=46)")
    pt.map(0x80_0000, frames[4], flags=b.PAGE_SHARED,
           table_flags=b.PAGE_PRESENT | b.PAGE_USER | b.PAGE_ACCESSED)
    add("user rw page under a read-only PDE", 0x80_0000,
        "the PTE says R/W=1 but the PDE says 0: a CPL 3 write faults (W is ANDed)")
    pt.map(0xA0_0000, frames[5], flags=b.PAGE_SHARED,
           table_flags=b.PAGE_PRESENT | b.PAGE_RW | b.PAGE_ACCESSED)
    pde = next(e for e in pt.entries(0xA0_0000) if e.level == 2)
    mem.write_qword(pde.pa, pde.value & ~b.PAGE_USER)  # map() set U on the way: undo it
    add("user PTE under a supervisor PDE", 0xA0_0000,
        "the PTE says U/S=1 but the PDE says 0: CPL 3 cannot touch it (U is ANDed)")
    pt.map(0x7F00_0020_0000, huge_user, size=b.PMD_SIZE, flags=b.PAGE_SHARED)
    add("user 2 MiB page", 0x7F00_0020_1234, "PS=1 in the PDE: the walk ends after 3 reads")
    add("not present at the PD level", 0x7F00_0060_0000,
        "the PML4E and PDPTE exist, the PDE has P=0: #PF, not-present")
    add("not present at the PML4 level", 0x5555_0000_0000,
        "nothing mapped in this 512 GiB slot: #PF after a single read")
    add("non-canonical", 0x8000_0000_0000, "#GP(0): bits 63:47 are not all equal")
    pt.map(PAGE_OFFSET, 0, size=b.PUD_SIZE, flags=b.PAGE_KERNEL)
    add("direct map (1 GiB page)", PAGE_OFFSET + 0x1000,
        "PS=1 in the PDPTE: 2 reads; CPL 3 read: #PF 0x5 (supervisor page)")
    pt.map(VMALLOC_START + 0x1000, frames[6], flags=b.PAGE_KERNEL)
    add("vmalloc (supervisor-only)", VMALLOC_START + 0x1000,
        "CPL 0 read/write works; CPL 3 anything: #PF with P=1")
    pt.map(START_KERNEL_MAP + 0x100_0000, 0x100_0000, size=b.PMD_SIZE, flags=b.PAGE_KERNEL_RX)
    add("kernel text (2 MiB page)", START_KERNEL_MAP + 0x100_0000,
        "CPL 0 fetch works (no XD); a CPL 0 write faults unless CR0.WP=0")
    pt.map(START_KERNEL_MAP + 0x200_0000, frames[7], flags=b.PAGE_KERNEL_RO)
    add("kernel rodata (read-only)", START_KERNEL_MAP + 0x200_0000,
        "CPL 0 write: #PF 0x3 with CR0.WP=1, allowed with WP=0")
    pt.map(0xFFFF_FFFF_FF60_0000, frames[8],
           flags=b.PAGE_PRESENT | b.PAGE_USER | b.PAGE_ACCESSED)
    add("vsyscall (user page, kernel half)", 0xFFFF_FFFF_FF60_0000,
        "U/S=1 at every level: CPL 3 may read and fetch, even in the kernel half")
    return DemoMachine(mem, alloc, pt, seed, addrs)


# --- the model: one walk, explained ---------------------------------------------------------
@dataclass(frozen=True)
class StepRow:
    """One entry the walk read, and the rights accumulated so far."""

    level: int
    sdm_name: str  # PML4E, PDPTE, ...
    linux_name: str  # pgd, pud, ...
    index: int
    entry_pa: int
    value: int
    flags: str  # describe_entry()
    user: bool  # U/S ANDed over the levels so far
    writable: bool  # R/W ANDed
    nx: bool  # XD ORed (only counts with EFER.NXE=1)
    note: str

    def text(self) -> str:
        rights = f"U={int(self.user)} W={int(self.writable)} NX={int(self.nx)}"
        return (f"{self.sdm_name:6} [{self.index:3}] @ {self.entry_pa:#x} = {self.value:#018x}"
                f"  {self.flags}  | so far {rights} | {self.note}")


@dataclass(frozen=True)
class WalkView:
    """What the stepper shows: a header, one row per level, the outcome and why."""

    va: int
    kind: str
    cpl: int
    ac: bool
    regs: Registers
    result: WalkResult
    rows: tuple[StepRow, ...]
    outcome: str  # one line
    reason: str  # which rule decided

    @property
    def stages(self) -> int:
        """Clicks of "Step" to see everything: one per row, one for the outcome."""
        return len(self.rows) + 1

    def header(self) -> str:
        r = self.regs
        flags = (f"CR0.WP={int(r.wp)} CR4.SMEP={int(r.smep)} CR4.SMAP={int(r.smap)} "
                 f"EFER.NXE={int(r.nxe)} RFLAGS.AC={int(self.ac)}")
        if not is_canonical(self.va, r.levels):
            idx = "not canonical"
        else:
            idx = " ".join(f"{b.LEVEL_SDM_NAMES[lvl][:-1]}={table_index(self.va, lvl)}"
                           for lvl in range(r.levels, 0, -1))
            idx += f" offset={self.va & 0xFFF:#x}"
        return (f"{self.kind} of {self.va:#x} at CPL {self.cpl} ({idx}); CR3={r.cr3:#x}; "
                f"{flags}")

    def text(self, revealed: int | None = None) -> str:
        """Plain text of the first ``revealed`` stages (all by default)."""
        revealed = self.stages if revealed is None else revealed
        lines = [self.header()]
        lines += [f"  {row.text()}" for row in self.rows[:revealed]]
        if revealed >= self.stages:
            lines.append(f"  => {self.outcome}")
            lines.append(f"     {self.reason}")
        elif not self.rows[:revealed]:
            lines.append("  (press Step to read the first entry)")
        return "\n".join(lines)

    def html(self, revealed: int | None = None) -> str:
        """HTML of the first ``revealed`` stages (all by default)."""
        revealed = self.stages if revealed is None else revealed
        head = f"<div><b>{words_html(self.header())}</b></div>"
        th = "".join(f"<th style='padding:2px 6px;text-align:left;white-space:nowrap'>{h}</th>"
                     for h in ("level", "index", "entry address", "value", "flags", "U", "W",
                               "NX", "what it means"))
        nowrap = "padding:2px 6px;text-align:left;white-space:nowrap"
        words = "padding:2px 6px;text-align:left;white-space:normal;overflow-wrap:normal"
        body = []
        for row in self.rows[:revealed]:
            color = _view.LEVEL_COLORS[row.level]
            cells = (
                (nowrap, f"{_view.swatch(color)} {row.sdm_name} ({row.linux_name})"),
                (nowrap, str(row.index)), (nowrap, f"<code>{row.entry_pa:#x}</code>"),
                (nowrap, f"<code>{row.value:#018x}</code>"), (words, words_html(row.flags)),
                (nowrap, _bit(row.user)), (nowrap, _bit(row.writable)), (nowrap, _bit(row.nx)),
                (words, words_html(row.note)),
            )
            body.append("<tr>" + "".join(f"<td style='{style}'>{c}</td>" for style, c in cells)
                        + "</tr>")
        table = (f"<table style='border-collapse:collapse;font-size:90%'><tr>{th}</tr>"
                 f"{''.join(body)}</table>") if body or self.rows else ""
        if revealed >= self.stages:
            ok = self.result.ok
            color = _view.OK_COLOR if ok else _view.FAULT_COLOR
            mark = "&#10004; translated" if ok else "&#10008; fault"
            tail = (f"<div style='border-left:6px solid {color};padding:4px 8px;margin-top:4px'>"
                    f"<b>{mark}:</b> {words_html(self.outcome)}<br>{words_html(self.reason)}"
                    "</div>")
        else:
            left = self.stages - revealed
            tail = (f"<div style='color:#444'>({left} more step{'s' if left > 1 else ''}: "
                    "press Step)</div>")
        return f"<div>{head}{table}{tail}</div>"

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())


def _bit(flag: bool) -> str:
    return "<b>1</b>" if flag else "0"


def walk_view(
    machine: DemoMachine,
    va: int,
    kind: str = "read",
    cpl: int = 3,
    ac: bool = False,
    *,
    wp: bool = True,
    smep: bool = False,
    smap: bool = False,
    nxe: bool = True,
) -> WalkView:
    """Walk ``va`` in ``machine`` for a ``kind`` access at ``cpl`` and explain every step.

    The walk is :func:`kaiser_edu.hw.walk.walk` with ``set_ad=False``: the lesson can step
    through the same walk again and again and the tables do not change.
    """
    regs = machine.regs(wp=wp, smep=smep, smap=smap, nxe=nxe)
    result = walk(machine.mem, regs, va, kind, cpl, ac, set_ad=False)
    rows = []
    user, writable, nx = True, True, False
    addr_mask = b.phys_addr_mask(regs.maxphyaddr)
    for step in result.steps:
        lvl, value = step.level, step.entry
        name = b.LEVEL_SDM_NAMES[lvl]
        present = bool(value & b.PAGE_PRESENT)
        leaf = present and (lvl == 1 or (lvl <= 3 and bool(value & b.PAGE_PSE)))
        rsvd = value & reserved_bits(lvl, leaf, regs) if present else 0
        if present and not rsvd:
            user &= bool(value & b.PAGE_USER)
            writable &= bool(value & b.PAGE_RW)
            nx |= regs.nxe and bool(value & b.PAGE_NX)
        if not present:
            note = "P=0: nothing mapped here; the walk stops (#PF, not present)"
        elif rsvd:
            note = (f"reserved bit(s) {rsvd:#x} set: the walk stops (#PF with RSVD=1)"
                    + ("; XD is reserved while EFER.NXE=0" if rsvd & b.PAGE_NX else ""))
        elif leaf and lvl > 1:
            size = 1 << b.level_shift(lvl)
            base = value & addr_mask & ~(size - 1)
            note = f"PS=1: maps a {b.size_name(size)} page at {base:#x}; the walk ends"
        elif leaf:
            note = f"maps the 4 KiB frame {value & addr_mask:#x}"
        else:
            next_name = b.LEVEL_SDM_NAMES[lvl - 1][:-1]
            note = f"points to the {next_name} table at {value & addr_mask:#x}"
        rows.append(StepRow(lvl, name, b.linux_level_name(lvl, regs.levels),
                            table_index(va, lvl), step.entry_pa, value,
                            b.describe_entry(value, lvl, regs.maxphyaddr), user, writable, nx,
                            note))
    outcome, reason = _explain(result, regs, ac, tuple(rows))
    return WalkView(va, kind, cpl, ac, regs, result, tuple(rows), outcome, reason)


def _explain(result: WalkResult, regs: Registers, ac: bool,
             rows: tuple[StepRow, ...]) -> tuple[str, str]:
    """One line of outcome and the rule that decided it (SDM 4.6, 4.7)."""
    if result.outcome == b.OUTCOME_GP:
        n = va_bits(regs.levels) - 1
        return (f"#GP(0): {result.va:#x} is not canonical",
                f"bits 63:{n + 1} must all equal bit {n} (SDM 3.3.7.1); the CPU raises #GP "
                "before reading any table, so there is no #PF and CR2 is unchanged")
    if result.ok:
        size = b.size_name(result.page_size)
        outcome = (f"physical address {result.pa:#x} ({size} page: frame "
                   f"{result.pa & ~(result.page_size - 1):#x} + offset "
                   f"{result.va & (result.page_size - 1):#x})")
        return outcome, _allowed_because(result, regs, ac, rows[-1])
    code = result.error_code
    outcome = (f"#PF, error code {code:#x} ({error_code_bits(code)}): "
               f"{b.describe_error_code(code)}; CR2={result.va:#x}")
    return outcome, _denied_because(result, regs, ac, rows)


def _culprits(rows: tuple[StepRow, ...], bit: int, want_set: bool) -> str:
    names = [r.sdm_name for r in rows if bool(r.value & bit) == want_set]
    return ", ".join(names) if names else "none"


def _denied_because(result: WalkResult, regs: Registers, ac: bool,
                    rows: tuple[StepRow, ...]) -> str:
    last = rows[-1]
    if not last.value & b.PAGE_PRESENT:
        return f"the {last.sdm_name} has P=0 (SDM 4.7: error code bit P=0 means not present)"
    if result.error_code & b.X86_PF_RSVD:
        return f"the {last.sdm_name} sets a reserved bit (SDM 4.5 tables; error code RSVD=1)"
    user_access = result.cpl == 3
    if result.kind == "fetch":
        if last.nx:
            return (f"XD=1 in {_culprits(rows, b.PAGE_NX, True)} and EFER.NXE=1: instruction "
                    "fetches are forbidden if any level says XD (NX is ORed)")
        if user_access:
            return (f"U/S=0 in {_culprits(rows, b.PAGE_USER, False)}: a supervisor page; "
                    "CPL 3 may not fetch from it (U is ANDed over the levels)")
        return ("SMEP (CR4 bit 20) is on: CPL 0 may not execute code from a user page - "
                "this stops a kernel bug from jumping to attacker-controlled user memory")
    if user_access and not last.user:
        return (f"U/S=0 in {_culprits(rows, b.PAGE_USER, False)}: a supervisor page; CPL 3 "
                "may not read or write it at all (U is ANDed over the levels)")
    if user_access:
        return (f"R/W=0 in {_culprits(rows, b.PAGE_RW, False)}: the page is read-only for "
                "CPL 3 (W is ANDed over the levels)")
    if last.user and regs.smap and not ac:
        return ("SMAP (CR4 bit 21) is on and RFLAGS.AC=0: CPL 0 may not touch user data "
                "(the kernel brackets its user accesses with STAC/CLAC, which set and clear AC)")
    return (f"R/W=0 in {_culprits(rows, b.PAGE_RW, False)} and CR0.WP=1: the supervisor "
            "honours read-only pages too")


def _allowed_because(result: WalkResult, regs: Registers, ac: bool, last: StepRow) -> str:
    who = "CPL 3" if result.cpl == 3 else f"CPL {result.cpl}"
    page = "a user page (U/S=1 at every level)" if last.user else "a supervisor page"
    notes = [f"{who} {result.kind} of {page}"]
    if result.kind == "write":
        if last.writable:
            notes.append("R/W=1 at every level")
        else:
            notes.append("read-only, but CR0.WP=0 lets the supervisor write anyway")
    if result.kind == "fetch":
        notes.append("no level sets XD" if regs.nxe else "EFER.NXE=0: XD is not in force")
        if result.cpl < 3 and last.user:
            notes.append("SMEP is off")
    elif result.cpl < 3 and last.user:
        notes.append("SMAP is on but RFLAGS.AC=1 (STAC)" if regs.smap else "SMAP is off")
    return "allowed: " + "; ".join(notes)


# --- the view ------------------------------------------------------------------------------
class WalkStepper(_view.OutputView, widgets.VBox):
    """Choose an address and an access, then press Step to see the walk level by level.

    Controls (attributes): ``preset`` (Dropdown of the demo machine's addresses),
    ``address`` (Text, hexadecimal), ``kind`` (ToggleButtons read/write/fetch), ``cpl``
    (ToggleButtons 0/3), ``ac``, ``wp``, ``smep``, ``smap``, ``nxe`` (ToggleButton each),
    ``step_button``, ``reset_button`` and ``output`` (Output).

    State: ``machine`` (the :class:`DemoMachine`), ``view`` (the current :class:`WalkView`,
    None while the typed address is invalid), ``revealed`` (stages shown so far); ``html``
    and ``text`` are what ``output`` shows. Changing any control starts the walk again.
    """

    def __init__(self, machine: DemoMachine | None = None, seed: int = 0,
                 va: int | None = None) -> None:
        self.machine = machine if machine is not None else demo_machine(seed)
        self.view: WalkView | None = None
        self.revealed = 0
        self.error = ""
        options = [(f"{a.label}  {a.va:#x}", a.va) for a in self.machine.addresses]
        start = va if va is not None else self.machine.addresses[0].va
        wide = widgets.Layout(width="auto")
        self.preset = widgets.Dropdown(options=options, value=None, description="address",
                                       layout=widgets.Layout(width="34em"))
        self.address = widgets.Text(value=f"{start:#x}", description="or type",
                                    continuous_update=False, layout=widgets.Layout(width="22em"))
        self.kind = widgets.ToggleButtons(options=["read", "write", "fetch"], value="read",
                                          description="access")
        self.cpl = widgets.ToggleButtons(options=[("CPL 0 (kernel)", 0), ("CPL 3 (user)", 3)],
                                         value=3, description="mode")
        self.ac = widgets.ToggleButton(value=False, description="RFLAGS.AC", layout=wide,
                                       tooltip="AC=1 (after STAC) lets CPL 0 touch user data "
                                               "under SMAP")
        self.wp = widgets.ToggleButton(value=True, description="CR0.WP", layout=wide,
                                       tooltip="supervisor writes honour read-only pages")
        self.smep = widgets.ToggleButton(value=False, description="CR4.SMEP", layout=wide,
                                         tooltip="CPL 0 may not execute user pages")
        self.smap = widgets.ToggleButton(value=False, description="CR4.SMAP", layout=wide,
                                         tooltip="CPL 0 may not access user data unless AC=1")
        self.nxe = widgets.ToggleButton(value=True, description="EFER.NXE", layout=wide,
                                        tooltip="XD (bit 63) forbids fetches; with NXE=0 it "
                                                "is a reserved bit")
        self.step_button = widgets.Button(description="Step", button_style="primary",
                                          icon="step-forward")
        self.reset_button = widgets.Button(description="Reset", icon="undo")
        self.output = widgets.Output()
        self.lesson = widgets.HTML()
        super().__init__([
            widgets.HBox([self.preset, self.address]),
            widgets.HBox([self.kind, self.cpl]),
            widgets.HBox([widgets.Label("registers:"), self.wp, self.smep, self.smap,
                          self.nxe, self.ac]),
            self.lesson,
            widgets.HBox([self.step_button, self.reset_button]),
            self.output,
        ])
        self.preset.observe(self._on_preset, names="value")
        self.address.observe(lambda _c: self._rebuild(), names="value")
        for control in (self.kind, self.cpl, self.ac, self.wp, self.smep, self.smap, self.nxe):
            control.observe(lambda _c: self._rebuild(), names="value")
        self.step_button.on_click(lambda _b: self.step())
        self.reset_button.on_click(lambda _b: self.reset())
        self._rebuild()

    # --- actions ---------------------------------------------------------------------------
    def step(self) -> None:
        """Reveal one more level (or the outcome)."""
        if self.view is not None and self.revealed < self.view.stages:
            self.revealed += 1
        self._render()

    def reset(self) -> None:
        """Hide the walk again (same address and settings)."""
        self.revealed = 0
        self._render()

    @property
    def finished(self) -> bool:
        return self.view is not None and self.revealed >= self.view.stages

    # --- wiring ----------------------------------------------------------------------------
    def _on_preset(self, change: dict) -> None:
        if change["new"] is not None:
            self.address.value = f"{change['new']:#x}"

    def _rebuild(self) -> None:
        self.revealed = 0
        try:
            va = parse_address(self.address.value)
        except KaiserEduError as exc:
            self.view, self.error = None, str(exc)
            self._render()
            return
        self.error = ""
        preset = next((a for a in self.machine.addresses if a.va == va), None)
        if self.preset.value != (preset.va if preset else None):
            self.preset.value = preset.va if preset else None
        self.lesson.value = (f"<i>try: {_view.esc(preset.lesson)}</i>" if preset else "")
        self.view = walk_view(
            self.machine, va, self.kind.value, self.cpl.value, self.ac.value,
            wp=self.wp.value, smep=self.smep.value, smap=self.smap.value, nxe=self.nxe.value,
        )
        self._render()

    def _render(self) -> None:
        if self.view is None:
            _view.show_error(self.output, self.error)
            return
        _view.show(self.output, self.view.html(self.revealed), self.view.text(self.revealed))

    def __repr__(self) -> str:
        where = f"{self.view.va:#x}" if self.view else repr(self.address.value)
        return (f"WalkStepper(address={where}, kind={self.kind.value}, cpl={self.cpl.value}, "
                f"step={self.revealed})")
