"""Lesson 04: who may touch what - CPL, the U/S bit, SMEP, SMAP and RFLAGS.AC.

Without page-table isolation a process runs on one PGD that maps its own memory *and* the
whole kernel (Documentation/arch/x86/x86_64/mm.rst: the upper canonical half). The only
thing that keeps user code out of the kernel's half is the paging access-rights check of
Intel SDM Vol. 3A 4.6:

* an address is a *user-mode address* only if U/S=1 in every paging-structure entry that
  translates it, otherwise a *supervisor-mode address* (4.6.1);
* an access at CPL 3 to a supervisor-mode address faults: #PF with P=1 (the translation
  exists: a protection violation) and U=1, error code 0x5 for a read, 0x7 for a write,
  0x15 for a fetch;
* the other direction is the kernel's own safety net: with CR4.SMEP (bit 20) CPL 0 may not
  fetch instructions from a user page; with CR4.SMAP (bit 21) CPL 0 may not read or write a
  user page unless RFLAGS.AC=1, which the kernel sets with STAC and clears with CLAC
  around the user accesses of copy_from_user()/copy_to_user()
  (arch/x86/include/asm/smap.h).

The model is :func:`privilege_check`: it walks the running task's page tables in the
simulated kernel (:class:`~kaiser_edu.kernel.machine.Kernel`) with the reference walk of
:mod:`kaiser_edu.hw.walk` (``set_ad=False``, so checking never changes the machine) for a
chosen CPL, target, access kind, CR4.SMEP, CR4.SMAP and RFLAGS.AC, and says which rule
decided. :func:`privilege_targets` lists the interesting addresses of a booted kernel,
:func:`privilege_machine` boots one with isolation off, and :class:`PrivilegeLab` is the
widget.

>>> k = privilege_machine(seed=0)
>>> r = privilege_check(k, cpl=3, target="kernel secret (.data)", access="read")
>>> hex(r.error_code), r.rule, r.translation_exists
('0x5', 'U/S', True)
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import ipywidgets as widgets

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.physmem import PhysMem
from kaiser_edu.hw.regs import Registers
from kaiser_edu.kernel import audit
from kaiser_edu.kernel import layout as L
from kaiser_edu.widgets import _view
from kaiser_edu.widgets.walk_stepper import WalkView, error_code_bits, walk_view

if TYPE_CHECKING:
    from kaiser_edu.kernel.machine import Kernel, Task

ACCESS_KINDS = ("read", "write", "fetch")
# What decides an access, in the order the SDM applies the checks (4.6, 4.7).
RULES = {
    "allowed": "every check passed",
    "non-canonical": "#GP before any table is read",
    "not present": "P=0 in an entry: nothing is mapped",
    "reserved bit": "a reserved bit is set in an entry",
    "NX": "XD=1 at some level forbids instruction fetches",
    "U/S": "CPL 3 may not touch a supervisor-mode address",
    "SMEP": "CR4.SMEP: CPL 0 may not fetch from a user page",
    "SMAP": "CR4.SMAP with RFLAGS.AC=0: CPL 0 may not read or write a user page",
    "R/W": "R/W=0 at some level forbids the write",
}


# --- the machine and its targets -----------------------------------------------------------
def privilege_machine(seed: int = 0) -> Kernel:
    """A booted simulated kernel with isolation off and one running process, ``demo``,
    whose code page (0x400000) and first data page (0x600000) are present.

    Booting is setup_arch() in miniature (see :mod:`kaiser_edu.kernel.machine`): KASLR
    offsets come from ``seed``, and CR4.SMEP and CR4.SMAP are on, as Linux sets them on
    every CPU that has them (setup_smep()/setup_smap() in arch/x86/kernel/cpu/common.c).
    """
    from kaiser_edu.kernel.machine import USER_TEXT, Kernel

    kernel = Kernel(isolation="off", seed=seed)
    task = kernel.spawn("demo")
    kernel.switch_to(task)  # faults the first code page in
    kernel.user_store(task, USER_TEXT + 0x20_0000, 42)  # and the first data page
    return kernel


@dataclass(frozen=True)
class Target:
    """An address of the simulated machine to try an access on."""

    name: str
    va: int
    region: str  # the region of the layout (KernelLayout.region_of)
    what: str  # what lives there, in one line

    def label(self) -> str:
        return f"{self.name}  {self.va:#x}"


def _running_task(kernel: Kernel) -> Task:
    task = kernel.current
    if task is None or not task.alive:
        raise KaiserEduError("no process is running on this kernel: spawn one and switch_to() "
                             "it first (privilege_machine() does both)")
    return task


def privilege_targets(kernel: Kernel) -> list[Target]:
    """The addresses the lesson tries, from the booted ``kernel`` (KASLR included): the
    running task's data and code pages, kernel text, the secret in the image's .data and
    the same bytes through the direct map, the cpu_entry_area, and the vsyscall page if
    this kernel maps it."""
    task = _running_task(kernel)
    data = next((v.start for v in task.mm.vmas if v.name == "[data]"), None)
    image, layout = kernel.image, kernel.layout
    secret = image.secret
    out = []
    if data is not None:
        out.append(("user data page", data, "the process's .data: user RW, NX"))
    out += [
        ("user code page", task.user_rip,
         "the process's text (this simulated exec maps it rwx): user, executable"),
        ("kernel text (do_syscall_64)", image.symbol("do_syscall_64"),
         "the kernel image's .text: supervisor, read-only, executable, global"),
        ("kernel secret (.data)", secret,
         "a secret in the kernel image's .data: supervisor RW, NX"),
        ("secret via the direct map", layout.direct_map(image.pa(secret)),
         "the same physical bytes through the direct map of all RAM (1 GiB pages)"),
        ("cpu_entry_area (entry stack)", kernel.cea("entry stack"),
         "the per-CPU entry stack, at a fixed address: supervisor RW, NX"),
    ]
    if audit.translate(kernel.mem, kernel.mmu.regs.pgd_pa, L.VSYSCALL_ADDR) is not None:
        out.append(("vsyscall page", L.VSYSCALL_ADDR,
                    "the legacy vsyscall page, at a fixed address in the kernel half"))
    return [Target(name, va, layout.region_of(va), what) for name, va, what in out]


def _target(kernel: Kernel, target: str | int | Target) -> Target:
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        targets = privilege_targets(kernel)
        for t in targets:
            if t.name == target:
                return t
        raise KaiserEduError(f"unknown target {target!r}; known: {[t.name for t in targets]} "
                             "(or pass an address as an int)")
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < 1 << 64:
        return Target(f"{target:#x}", target, kernel.layout.region_of(target), "an address")
    raise KaiserEduError(f"target must be a target name, a Target or an address in "
                         f"[0, 2**64); got {target!r}")


@dataclass(frozen=True)
class _KernelTables:
    """The kernel's memory and current registers in the shape :func:`walk_view` reads
    (``mem`` and ``regs(wp=, smep=, smap=, nxe=)``)."""

    mem: PhysMem
    current: Registers

    def regs(self, *, wp: bool, smep: bool, smap: bool, nxe: bool) -> Registers:
        r = self.current
        cr4 = r.cr4 & ~(b.X86_CR4_SMEP | b.X86_CR4_SMAP)
        cr4 |= (b.X86_CR4_SMEP if smep else 0) | (b.X86_CR4_SMAP if smap else 0)
        cr0 = (r.cr0 | b.X86_CR0_WP) if wp else (r.cr0 & ~b.X86_CR0_WP)
        efer = (r.efer | b.EFER_NXE) if nxe else (r.efer & ~b.EFER_NXE)
        return replace(r, cr0=cr0, cr4=cr4, efer=efer)


# --- the model -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PrivilegeCheck:
    """One access judged by the page walk: the settings, the walk and the rule that decided.

    ``walk`` is the explained walk of :func:`kaiser_edu.widgets.walk_stepper.walk_view`:
    ``walk.rows`` has one row per entry read (with the U/S bit and the rights ANDed so far),
    ``walk.result`` the reference walk's result, ``walk.reason`` the sentence that says
    why. ``rule`` is a key of :data:`RULES`.
    """

    target: Target
    cpl: int
    access: str
    smep: bool
    smap: bool
    ac: bool
    cr3: int
    walk: WalkView
    rule: str

    @property
    def allowed(self) -> bool:
        return self.walk.result.ok

    @property
    def error_code(self) -> int | None:
        """The #PF error code, None if the access is allowed (or #GP)."""
        return self.walk.result.error_code

    @property
    def pa(self) -> int | None:
        return self.walk.result.pa

    @property
    def translation_exists(self) -> bool:
        """The walk reached a present leaf: the CPU knows the physical address, even if the
        access is then refused. This is what Meltdown needs (lesson 05)."""
        if self.allowed:
            return True
        code = self.error_code
        return code is not None and bool(code & b.X86_PF_PROT) and not code & b.X86_PF_RSVD

    @property
    def reason(self) -> str:
        """Why, in one sentence (the walk's explanation without a leading "allowed: ")."""
        return self.walk.reason.removeprefix("allowed: ")

    def us_bits(self) -> list[tuple[str, int]]:
        """(level name, U/S bit of that entry) for every entry the walk read."""
        return [(r.sdm_name, int(bool(r.value & b.PAGE_USER))) for r in self.walk.rows]

    def settings(self) -> str:
        mode = "user" if self.cpl == 3 else "kernel"
        return (f"CPL {self.cpl} ({mode}) {self.access} of {self.target.name} "
                f"{self.target.va:#x}; CR3={self.cr3:#x}; CR4.SMEP={int(self.smep)} "
                f"CR4.SMAP={int(self.smap)} RFLAGS.AC={int(self.ac)}")

    def verdict(self) -> str:
        """One line: allowed (and where to), or the fault with its error code decoded."""
        r = self.walk.result
        if r.ok:
            return f"allowed: {self.target.va:#x} -> physical {r.pa:#x}"
        if r.outcome == b.OUTCOME_GP:
            return f"#GP(0): {self.target.va:#x} is not canonical"
        return (f"#PF error code {r.error_code:#x} ({error_code_bits(r.error_code)}): "
                f"{b.describe_error_code(r.error_code)}")

    def note(self) -> str:
        """What the result means for the course's story (empty if nothing to add)."""
        if self.rule == "U/S" and self.translation_exists:
            return ("The translation exists: the walk reached the leaf and the CPU knows the "
                    "physical address; only the U/S check refuses. Meltdown (lesson 05) reads "
                    "such memory anyway on vulnerable CPUs.")
        if self.rule == "allowed" and self.cpl < 3 and self.walk.rows[-1].user:
            return ("The kernel touches user memory directly, under the same CR3: this is how "
                    "copy_from_user()/copy_to_user() work.")
        return ""

    def text(self) -> str:
        lines = [self.settings(), f"  region: {self.target.region} ({self.target.what})"]
        us = "  ".join(f"{name} U/S={bit}" for name, bit in self.us_bits())
        lines.append(f"  walk: {us or '(no table read)'}")
        lines.append(f"  => {self.verdict()}")
        # Long sentences wrap at 96 columns, so a notebook never breaks them inside a word.
        lines.append(textwrap.fill(f"rule: {self.rule} - {self.reason}", 96,
                                   initial_indent=" " * 5, subsequent_indent=" " * 11, break_on_hyphens=False))
        note = self.note()
        if note:
            lines.append(textwrap.fill(note, 96, initial_indent=" " * 5,
                                       subsequent_indent=" " * 5, break_on_hyphens=False))
        return "\n".join(lines)

    def html(self) -> str:
        e = _view.esc
        cells = "".join(
            f"<td style='padding:2px 8px;text-align:left'>{_view.swatch(_view.LEVEL_COLORS[r.level])}"
            f" {r.sdm_name} ({r.linux_name})<br><code>{r.value:#018x}</code><br>"
            f"U/S=<b>{int(bool(r.value & b.PAGE_USER))}</b> R/W={int(bool(r.value & b.PAGE_RW))}"
            f" XD={int(bool(r.value & b.PAGE_NX))}</td>"
            for r in self.walk.rows)
        walk = (f"<table style='border-collapse:collapse;font-size:90%'><tr>{cells}</tr>"
                "</table>") if cells else "<div>(no table read)</div>"
        color = _view.OK_COLOR if self.allowed else _view.FAULT_COLOR
        mark = "&#10004;" if self.allowed else "&#10008;"
        note = self.note()
        note = f"<br><i>{e(note)}</i>" if note else ""
        return (f"<div><b>{e(self.settings())}</b><br>"
                f"<span style='color:#444'>region: {e(self.target.region)} - "
                f"{e(self.target.what)}</span>{walk}"
                f"<div style='border-left:6px solid {color};padding:4px 8px;margin-top:4px'>"
                f"<b>{mark} {e(self.verdict())}</b><br>rule <b>{e(self.rule)}</b>: "
                f"{e(self.reason)}{note}</div></div>")

    def __str__(self) -> str:
        return self.text()


def _rule(view: WalkView) -> str:
    """Which rule of SDM 4.6 decided (the same order as the walk applies them)."""
    r = view.result
    if r.ok:
        return "allowed"
    if r.outcome == b.OUTCOME_GP:
        return "non-canonical"
    if not r.error_code & b.X86_PF_PROT:
        return "not present"
    if r.error_code & b.X86_PF_RSVD:
        return "reserved bit"
    last = view.rows[-1]
    if r.kind == "fetch" and last.nx:
        return "NX"
    if r.cpl == 3 and not last.user:
        return "U/S"
    if r.kind == "fetch":  # CPL < 3 fetching from a user page
        return "SMEP"
    if r.cpl < 3 and last.user and view.regs.smap and not view.ac:
        return "SMAP"
    return "R/W"


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise KaiserEduError(f"{name} must be True or False, got {value!r}")
    return value


def privilege_check(
    kernel: Kernel,
    cpl: int = 3,
    target: str | int | Target = "kernel secret (.data)",
    access: str = "read",
    smep: bool = True,
    smap: bool = True,
    ac: bool = False,
) -> PrivilegeCheck:
    """Would an access at ``cpl`` to ``target`` be allowed on ``kernel``'s current CR3?

    ``target`` is a name from :func:`privilege_targets` (or a :class:`Target`, or an address);
    ``access`` is read, write or fetch; ``smep`` and ``smap`` set CR4.SMEP/CR4.SMAP for
    this check only, ``ac`` is RFLAGS.AC (STAC sets it, CLAC clears it). CR0.WP and
    EFER.NXE are the kernel's own (both on). The walk is the reference walk without A/D
    updates: the kernel's memory, TLB and registers are left as they were.
    """
    if cpl not in (0, 1, 2, 3) or isinstance(cpl, bool):
        raise KaiserEduError(f"cpl must be 0 (kernel) or 3 (user) (1 and 2 also exist); "
                             f"got {cpl!r}")
    if access not in ACCESS_KINDS:
        raise KaiserEduError(f"access must be one of {', '.join(ACCESS_KINDS)}; got {access!r}")
    smep, smap, ac = (_check_bool(n, v) for n, v in (("smep", smep), ("smap", smap), ("ac", ac)))
    t = _target(kernel, target)
    regs = kernel.mmu.regs
    view = walk_view(_KernelTables(kernel.mem, regs), t.va, access, cpl, ac, wp=regs.wp,
                     smep=smep, smap=smap, nxe=regs.nxe)
    return PrivilegeCheck(t, cpl, access, smep, smap, ac, regs.cr3, view, _rule(view))


# --- the view ------------------------------------------------------------------------------
class PrivilegeLab(_view.OutputView, widgets.VBox):
    """Try accesses on the simulated machine: CPL, target, kind, CR4.SMEP/SMAP, RFLAGS.AC.

    Controls (attributes): ``cpl`` (ToggleButtons: CPL 3 user / CPL 0 kernel), ``target``
    (Dropdown of :func:`privilege_targets`), ``access`` (ToggleButtons read/write/fetch),
    ``smep``, ``smap``, ``ac`` (ToggleButton each) and ``output``. ``check`` is the current
    :class:`PrivilegeCheck` (None after an error, shown in the view); ``html``/``text`` read
    back what the view shows.
    """

    def __init__(self, kernel: Kernel | None = None, seed: int = 0) -> None:
        self.kernel = kernel if kernel is not None else privilege_machine(seed)
        self.targets = privilege_targets(self.kernel)
        self.check: PrivilegeCheck | None = None
        regs = self.kernel.mmu.regs
        wide = widgets.Layout(width="auto")
        self.cpl = widgets.ToggleButtons(options=[("CPL 3 (user)", 3), ("CPL 0 (kernel)", 0)],
                                         value=3, description="mode")
        self.target = widgets.Dropdown(options=[(t.label(), t.name) for t in self.targets],
                                       value="kernel secret (.data)", description="target",
                                       layout=widgets.Layout(width="36em"))
        self.access = widgets.ToggleButtons(options=list(ACCESS_KINDS), value="read",
                                            description="access")
        self.smep = widgets.ToggleButton(value=regs.smep, description="CR4.SMEP", layout=wide,
                                         tooltip="CPL 0 may not execute from user pages")
        self.smap = widgets.ToggleButton(value=regs.smap, description="CR4.SMAP", layout=wide,
                                         tooltip="CPL 0 may not touch user data unless AC=1")
        self.ac = widgets.ToggleButton(value=False, description="RFLAGS.AC (stac)", layout=wide,
                                       tooltip="STAC sets AC, CLAC clears it")
        self.output = widgets.Output()
        super().__init__([
            widgets.HBox([self.cpl, self.access]),
            self.target,
            widgets.HBox([widgets.Label("registers:"), self.smep, self.smap, self.ac]),
            self.output,
        ])
        for control in (self.cpl, self.target, self.access, self.smep, self.smap, self.ac):
            control.observe(lambda _c: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        """Recompute the check from the controls and show it (errors are shown, not raised:
        a callback must never raise into the front end)."""
        try:
            self.check = privilege_check(
                self.kernel, self.cpl.value, self.target.value, self.access.value,
                smep=self.smep.value, smap=self.smap.value, ac=self.ac.value)
        except KaiserEduError as exc:
            self.check = None
            _view.show_error(self.output, exc)
            return
        _view.show(self.output, self.check.html(), self.check.text())

    def __repr__(self) -> str:
        return (f"PrivilegeLab(cpl={self.cpl.value}, target={self.target.value!r}, "
                f"access={self.access.value}, smep={self.smep.value}, smap={self.smap.value}, "
                f"ac={self.ac.value})")
