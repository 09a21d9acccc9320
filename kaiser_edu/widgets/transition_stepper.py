"""Lesson 07: a kernel entry and exit under PTI, one MMU operation at a time.

Under page-table isolation every way into the kernel switches CR3 from the user half of the
8 KiB PGD pair to the kernel half, and every way out switches back (SWITCH_TO_KERNEL_CR3 and
SWITCH_TO_USER_CR3 in arch/x86/entry/calling.h). With PCIDs the two halves also have two
PCIDs, and the writes carry NOFLUSH (bit 63) unless a flush of the user PCID is pending
(user_pcid_flush_mask, set by invalidate_user_asid() in arch/x86/mm/tlb.c).

The model is :func:`transition_steps` (or :func:`~kaiser_edu.kernel.walkthrough.walkthrough`
for the whole record): it runs one transition of the simulated kernel single-stepped through
the MMU and returns one :class:`~kaiser_edu.kernel.walkthrough.Step` per operation.
:func:`render_text` and :func:`render_html` draw the record as it stands after a number of
steps; :class:`TransitionStepper` is the widget, which only indexes into the steps.

>>> steps = transition_steps("pti", "syscall")
>>> [(s.label, s.cr3(True)["half"], s.noflush) for s in steps if s.op == "mov_cr3"]
[('SWITCH_TO_KERNEL_CR3', 'kernel', True), ('SWITCH_TO_USER_CR3', 'user', True)]
"""

from __future__ import annotations

import ipywidgets as widgets

from kaiser_edu.display.tables import words_html
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.kernel.events import cr3_cell, decode_cr3, pgd_half
from kaiser_edu.kernel.timeline import KERNEL_PGD_COLOR, USER_PGD_COLOR
from kaiser_edu.kernel.walkthrough import (
    BREAKAGES,
    KINDS,
    MODES,
    Step,
    Walkthrough,
    check_choice,
    walkthrough,
)
from kaiser_edu.widgets import _view

HIT_COLOR = _view.OKABE_ITO["bluish_green"]
MISS_COLOR = _view.OKABE_ITO["orange"]
FLUSH_COLOR = _view.OKABE_ITO["reddish_purple"]


def transition_steps(mode: str = "pti", kind: str = "syscall", seed: int = 0,
                     breakage: str = "none") -> list[Step]:
    """Every MMU operation of one transition (see
    :func:`~kaiser_edu.kernel.walkthrough.walkthrough` for the arguments)."""
    return walkthrough(kind, mode, seed, breakage).steps


def _check_position(w: Walkthrough, position: int) -> None:
    if not isinstance(position, int) or isinstance(position, bool) \
            or not 0 <= position <= len(w.steps):
        raise KaiserEduError(
            f"position must be an integer from 0 (before the first step) to {len(w.steps)} "
            f"(after the last), got {position!r}")


def _tlb_text(census: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in census) or "empty"


def _step_result(step: Step) -> str:
    if step.fault and step.replay:
        return "the same fault: SIGSEGV, the task is killed"
    if step.fault:
        return f"FAULT: {step.fault}"
    if step.op == "mov_cr3":
        if step.noflush:
            return "NOFLUSH write: nothing flushed"
        return f"flushing write: the TLB lost {step.tlb_lost} entries"
    if step.hit:
        return f"TLB hit ({step.tlb})"
    if step.miss:
        return "TLB miss: page walk"
    if step.tlb_lost:
        return f"the TLB lost {step.tlb_lost} entries"
    return "done"


def _events_of(w: Walkthrough) -> dict[int, str]:
    return {e.seq: e.kind for e in w.events}


def _title(w: Walkthrough) -> str:
    text = f"{w.kind}: {KINDS[w.kind]}. Machine: {MODES[w.mode][0]}."
    if w.breakage != "none":
        text += f" Broken: {w.breakage} ({BREAKAGES[w.breakage]})."
    return text


def _outcome_text(w: Walkthrough) -> str:
    if w.outcome == "ok":
        return "ok: the task is back in user mode on CR3 " + _short_cr3(
            w.kernel.cr3, w.pcide)
    return w.detail or w.outcome


def _short_cr3(cr3: int, pcide: bool) -> str:
    """``K/1``, ``U/2049`` (``K``/``U`` without PCIDs), as the event table prints CR3."""
    d = decode_cr3(cr3, pcide)
    return cr3_cell(d["half"], d["pcid"])


def render_text(w: Walkthrough, position: int) -> str:
    """Plain text of the record after ``position`` steps (0: before the first)."""
    _check_position(w, position)
    lines = [_title(w)] + [f"note: {n}" for n in w.notes]
    lines.append(f"start: CPL 3, CR3 = {decode_cr3(w.cr3_start, w.pcide)['text']}")
    if position == 0:
        lines.append(f"(step 0 of {len(w.steps)}: press Step)")
    else:
        s = w.steps[position - 1]
        cr3 = decode_cr3(s.cr3_after, w.pcide)
        lines += [
            f"step {position} of {len(w.steps)}: {s.label}",
            f"  {s.op} {s.what}" + (f" at CPL {s.cpl}" if s.cpl is not None else ""),
            f"  result: {_step_result(s)}",
            f"  CR3 now: {cr3['half']} PGD (bit 12 = {int(cr3['half'] == 'user')})"
            + (f", PCID {cr3['pcid']}" if w.pcide else ", no PCIDs")
            + (f"; written with NOFLUSH = {int(bool(s.noflush))}" if s.op == "mov_cr3" else ""),
            f"  TLB now: {_tlb_text(s.tlb_after)}",
            f"  why: {s.note}",
            "steps so far:",
        ]
        events = _events_of(w)
        for t in w.steps[:position]:
            ev = events.get(t.event, "") if t.event is not None else ""
            lines.append(f"  #{t.n:<3} {t.label:<29} {t.op:<7} {_step_result(t):<40} "
                         f"CR3 {_short_cr3(t.cr3_after, w.pcide):<7} {ev}")
    if position == len(w.steps):
        lines.append(f"=> {_outcome_text(w)}")
    return "\n".join(lines)


def _box(label: str, value: str, color: str) -> str:
    return (f"<span style='display:inline-block;border:2px solid {color};border-radius:4px;"
            f"padding:1px 6px;margin-right:6px'><small>{_view.esc(label)}</small><br>"
            f"<b>{_view.esc(value)}</b></span>")


def _cr3_html(step: Step, pcide: bool) -> str:
    f = decode_cr3(step.cr3_after, pcide)
    color = USER_PGD_COLOR if f["half"] == "user" else KERNEL_PGD_COLOR
    half = f"{_view.swatch(color)} " + _box(
        "PGD half (bit 12)", f"{f['half']} PGD ({int(f['half'] == 'user')})", color)
    if pcide:
        who = "user" if f["user_pcid"] else "kernel"
        pcid = _box("PCID (bits 11:0)", f"{f['pcid']} ({who}, bit 11 = {int(f['user_pcid'])})",
                    "#666")
    else:
        pcid = _box("PCID", "none (CR4.PCIDE=0)", "#666")
    if step.op == "mov_cr3":
        nf = _box("NOFLUSH (bit 63 written)", "1: keep" if step.noflush else "0: flush",
                  HIT_COLOR if step.noflush else FLUSH_COLOR)
    else:
        nf = ""
    return half + pcid + nf


def _result_html(step: Step) -> str:
    if step.fault:
        color = _view.FAULT_COLOR
    elif step.op == "mov_cr3" and not step.noflush or step.tlb_lost:
        color = FLUSH_COLOR
    elif step.miss:
        color = MISS_COLOR
    else:
        color = HIT_COLOR
    return f"<b style='color:{color}'>{words_html(_step_result(step))}</b>"


def render_html(w: Walkthrough, position: int) -> str:
    """HTML of the record after ``position`` steps (0: before the first)."""
    _check_position(w, position)
    e = _view.esc
    parts = [f"<div><b>{e(_title(w))}</b></div>"]
    parts += [f"<div style='color:#444'><i>note: {e(n)}</i></div>" for n in w.notes]
    parts.append(f"<div>start: CPL 3, CR3 = <code>{e(decode_cr3(w.cr3_start, w.pcide)['text'])}"
                 "</code></div>")
    if position == 0:
        parts.append(f"<div style='color:#444'>(step 0 of {len(w.steps)}: press Step)</div>")
    else:
        s = w.steps[position - 1]
        cpl = f" at CPL {s.cpl}" if s.cpl is not None else ""
        parts.append(
            "<div style='border-left:6px solid #888;padding:4px 8px;margin:4px 0'>"
            f"<div>step <b>{position}</b> of {len(w.steps)}: "
            f"<b style='font-size:110%'>{e(s.label)}</b></div>"
            f"<div><code>{e(s.op)}</code> {e(s.what)}{e(cpl)} &rarr; {_result_html(s)}</div>"
            f"<div style='margin:4px 0'>CR3 now: {_cr3_html(s, w.pcide)}</div>"
            f"<div>TLB now: {e(_tlb_text(s.tlb_after))}</div>"
            f"<div><i>{e(s.note)}</i></div></div>")
        events = _events_of(w)
        th = "".join(f"<th style='padding:1px 6px;text-align:left'>{h}</th>" for h in (
            "#", "label", "op", "address", "result", "CR3 after", "logged as"))
        rows = []
        for t in w.steps[:position]:
            color = USER_PGD_COLOR if pgd_half(t.cr3_after) == "user" else KERNEL_PGD_COLOR
            style = "background:#eef" if t.n == position else ""
            cells = (str(t.n), words_html(t.label), e(t.op), words_html(t.what), _result_html(t),
                     f"<span style='color:{color}'>{e(_short_cr3(t.cr3_after, w.pcide))}</span>",
                     e(events.get(t.event, "") if t.event is not None else ""))
            rows.append(f"<tr style='{style}'>" + "".join(
                f"<td style='padding:1px 6px;text-align:left'>{c}</td>" for c in cells)
                + "</tr>")
        parts.append("<table style='border-collapse:collapse;font-size:85%'>"
                     f"<tr>{th}</tr>{''.join(rows)}</table>")
    if position == len(w.steps):
        ok = w.outcome == "ok"
        color = _view.OK_COLOR if ok else _view.FAULT_COLOR
        mark = "&#10004;" if ok else "&#10008;"
        parts.append(f"<div style='border-left:6px solid {color};padding:4px 8px;"
                     f"margin-top:4px'>{mark} <b>{e(_outcome_text(w))}</b></div>")
    return "<div>" + "".join(parts) + "</div>"


class TransitionStepper(_view.OutputView, widgets.VBox):
    """Choose a transition, a machine and (optionally) a bug, then step through it.

    Controls (attributes): ``kind`` (Dropdown of :data:`KINDS`), ``mode`` (Dropdown of
    :data:`MODES`), ``breakage`` (Dropdown of :data:`BREAKAGES`), ``position`` (IntSlider:
    how many steps are shown), ``step_button``, ``back_button``, ``reset_button``,
    ``end_button`` and ``output``. State: ``record`` (the current
    :class:`~kaiser_edu.kernel.walkthrough.Walkthrough`, None after an error) and ``error``.
    Changing a dropdown records the transition again and starts at step 0.
    """

    def __init__(self, kind: str = "syscall", mode: str = "pti", breakage: str = "none",
                 seed: int = 0) -> None:
        check_choice(kind, KINDS, "kind")
        check_choice(mode, MODES, "mode")
        check_choice(breakage, BREAKAGES, "breakage")
        self.seed = seed
        self.record: Walkthrough | None = None
        self.error = ""
        self.kind = widgets.Dropdown(options=list(KINDS), value=kind, description="transition",
                                     layout=widgets.Layout(width="22em"))
        self.mode = widgets.Dropdown(options=[(label, key) for key, (label, _) in MODES.items()],
                                     value=mode, description="machine",
                                     layout=widgets.Layout(width="26em"))
        self.breakage = widgets.Dropdown(options=list(BREAKAGES), value=breakage,
                                         description="break it",
                                         layout=widgets.Layout(width="26em"))
        self.position = widgets.IntSlider(value=0, min=0, max=1, description="step",
                                          continuous_update=False,
                                          layout=widgets.Layout(width="30em"))
        self.back_button = widgets.Button(description="Back", icon="step-backward")
        self.step_button = widgets.Button(description="Step", button_style="primary",
                                          icon="step-forward")
        self.end_button = widgets.Button(description="To the end", icon="fast-forward")
        self.reset_button = widgets.Button(description="Reset", icon="undo")
        self.output = widgets.Output()
        super().__init__([
            widgets.HBox([self.kind, self.mode]),
            self.breakage,
            widgets.HBox([self.back_button, self.step_button, self.end_button,
                          self.reset_button, self.position]),
            self.output,
        ])
        for control in (self.kind, self.mode, self.breakage):
            control.observe(lambda _c: self._rebuild(), names="value")
        self.position.observe(lambda _c: self._render(), names="value")
        self.step_button.on_click(lambda _b: self._move(+1))
        self.back_button.on_click(lambda _b: self._move(-1))
        self.end_button.on_click(lambda _b: self._move(len(self.steps)))
        self.reset_button.on_click(lambda _b: self._set_position(0))
        self._rebuild()

    @property
    def steps(self) -> list[Step]:
        return self.record.steps if self.record is not None else []

    @property
    def current(self) -> Step | None:
        """The step shown last (None at step 0)."""
        return self.steps[self.position.value - 1] if self.position.value else None

    def _move(self, delta: int) -> None:
        self._set_position(max(0, min(len(self.steps), self.position.value + delta)))

    def _set_position(self, value: int) -> None:
        if value == self.position.value:
            self._render()
        self.position.value = value

    def _rebuild(self) -> None:
        try:
            self.record = walkthrough(self.kind.value, self.mode.value, self.seed,
                                      self.breakage.value)
            self.error = ""
        except Exception as exc:  # never raise into the front end: show it
            self.record, self.error = None, f"{type(exc).__name__}: {exc}"
        n = len(self.steps)
        with self.position.hold_trait_notifications():
            self.position.max = max(n, 1)
            self.position.value = 0
        self._render()

    def _render(self) -> None:
        if self.record is None:
            _view.show_error(self.output, self.error)
            return
        position = min(self.position.value, len(self.steps))
        try:
            _view.show(self.output, render_html(self.record, position),
                       render_text(self.record, position))
        except Exception as exc:  # pragma: no cover - a bug: show it rather than raise
            _view.show_error(self.output, exc)

    def __repr__(self) -> str:
        return (f"TransitionStepper(kind={self.kind.value!r}, mode={self.mode.value!r}, "
                f"breakage={self.breakage.value!r}, step={self.position.value}/"
                f"{len(self.steps)})")
