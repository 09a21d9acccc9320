"""The event log: every kernel<->user transition the simulated kernel performs.

Under PTI each entry to the kernel (syscall, interrupt, exception, NMI) switches CR3 from
the user PGD to the kernel PGD and each exit switches back (SWITCH_TO_KERNEL_CR3 /
SWITCH_TO_USER_CR3 in arch/x86/entry/calling.h). The two PGDs are an 8 KiB-aligned pair, so
the switch flips bit 12 of CR3; with PCID it also flips bit 11, moving between the kernel
PCID (ASID+1) and the user PCID (ASID+1+2048), and sets bit 63 (NOFLUSH) unless a flush of the
user PCID was deferred to this exit (arch/x86/mm/tlb.c, invalidate_user_asid();
Documentation/arch/x86/pti.rst). Each step is recorded as an :class:`Event`, which the lessons
print (:meth:`EventLog.table`) and draw (:func:`kaiser_edu.kernel.timeline.timeline_figure`).

>>> log = EventLog()
>>> e = log.append("syscall_entry", cpl_before=3, cpl_after=0,
...                cr3_before=0x8000000000101801, cr3_after=0x8000000000100001,
...                noflush=True, detail="getppid")
>>> e.seq, e.pcid_before, e.pcid_after, e.pgd_half_after
(0, 2049, 1, 'kernel')
>>> decode_cr3(0x8000000000101801)["half"]
'user'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from kaiser_edu.display.tables import TextTable
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw.bits import X86_CR3_PCID_MASK, X86_CR3_PCID_NOFLUSH
from kaiser_edu.kernel.tlbstate import (
    PTI_USER_PCID_MASK,
    PTI_USER_PGTABLE_BIT,
    PTI_USER_PGTABLE_MASK,
    X86_CR3_PTI_PCID_USER_BIT,
)

# CR3 layout with CR4.PCIDE=1 and PTI (calling.h; later asm/processor-flags.h, tlbflush.h).
CR3_PCID_MASK = X86_CR3_PCID_MASK  # bits 11:0: the PCID
CR3_ADDR_MASK = 0x7FFF_FFFF_FFFF_F000  # bits 62:12: physical address of the PGD
PTI_USER_PCID_BIT = X86_CR3_PTI_PCID_USER_BIT  # uPCID = kPCID | 2048
X86_CR3_PCID_NOFLUSH_BIT = 63

# The kinds the simulated kernel records. Others are accepted (lowercase identifiers), so a
# new transition needs no change here; these are the ones the timeline knows how to draw.
EVENT_KINDS: tuple[str, ...] = (
    "syscall_entry", "syscall_exit",
    "interrupt_entry", "interrupt_exit",
    "exception_entry", "exception_exit",
    "nmi_entry", "nmi_exit",
    "context_switch", "page_fault", "tlb_flush",
    "double_fault", "triple_fault",
)
FAULT_KINDS = frozenset({"page_fault", "double_fault", "triple_fault"})
_KIND_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_U64 = 1 << 64


def decode_cr3(cr3: int, pcide: bool = True) -> dict[str, Any]:
    """Split a CR3 value into the fields the PTI entry code works with.

    Keys: ``cr3``; ``pgd_pa`` (bits 62:12, the PGD the CPU walks); ``pair_pa`` (the 8 KiB
    pair it belongs to, bit 12 cleared); ``half`` ("kernel" if bit 12 is clear, "user" if
    set); ``pcid`` (bits 11:0, None without CR4.PCIDE); ``user_pcid`` (bit 11); ``asid``
    (Linux's dynamic ASID, kPCID - 1, or None for PCID 0 / no PCID); ``noflush`` (bit 63: a
    MOV to CR3 with it keeps the new PCID's TLB entries); ``text`` (one line).

    >>> d = decode_cr3(0x8000000000001801 | 0x7fe000)
    >>> hex(d["pgd_pa"]), hex(d["pair_pa"]), d["half"], d["pcid"], d["asid"], d["noflush"]
    ('0x7ff000', '0x7fe000', 'user', 2049, 0, True)
    >>> decode_cr3(0x7fe003)["text"]
    'kernel PGD of pair 0x7fe000, PCID 3 (kernel PCID of ASID 2)'
    """
    if not isinstance(cr3, int) or isinstance(cr3, bool) or not 0 <= cr3 < _U64:
        raise KaiserEduError(f"cr3 must be an integer in [0, 2**64), got {cr3!r}")
    pgd_pa = cr3 & CR3_ADDR_MASK
    half = "user" if cr3 & PTI_USER_PGTABLE_MASK else "kernel"
    noflush = bool(cr3 >> X86_CR3_PCID_NOFLUSH_BIT)
    pcid = cr3 & CR3_PCID_MASK if pcide else None
    user_pcid = bool(pcid is not None and pcid & PTI_USER_PCID_MASK)
    kpcid = None if pcid is None else pcid & ~PTI_USER_PCID_MASK
    asid = kpcid - 1 if kpcid else None
    text = f"{half} PGD of pair {pgd_pa & ~PTI_USER_PGTABLE_MASK:#x}"
    if pcid is not None:
        text += f", PCID {pcid}"
        if asid is not None:
            text += f" ({'user' if user_pcid else 'kernel'} PCID of ASID {asid})"
    if noflush:
        text += ", NOFLUSH"
    return {
        "cr3": cr3,
        "pgd_pa": pgd_pa,
        "pair_pa": pgd_pa & ~PTI_USER_PGTABLE_MASK,
        "half": half,
        "pcid": pcid,
        "user_pcid": user_pcid,
        "asid": asid,
        "noflush": noflush,
        "text": text,
    }


@dataclass(frozen=True)
class Event:
    """One step of the simulated kernel.

    ``seq`` numbers the events of a log from 0. ``cpl_before``/``cpl_after`` are the privilege
    levels around the step (3 = user mode, 0 = kernel mode); ``cr3_*`` the whole CR3 values;
    ``pcid_*`` the PCIDs (None without CR4.PCIDE; filled from CR3 bits 11:0 by
    :meth:`EventLog.append` if not given); ``noflush`` whether the step's MOV to CR3 had bit 63
    set (None if CR3 was not written); ``flushed`` what the TLB lost ("none", "pcid 2049",
    "all non-global", "all", "page 0x..."); ``tlb_misses`` the misses during the step;
    ``fault`` a fault raised ("#PF", "#DF", ... with details), else None; ``detail`` free text;
    ``pgd_pair`` whether the machine has KAISER/PTI's PGD pair (without one, CR3 bit 12 is
    just an address bit of the one PGD, which is the kernel's).
    """

    seq: int
    kind: str
    cpl_before: int
    cpl_after: int
    cr3_before: int
    cr3_after: int
    pcid_before: int | None = None
    pcid_after: int | None = None
    noflush: bool | None = None
    flushed: str = "none"
    tlb_misses: int = 0
    fault: str | None = None
    detail: str = ""
    pgd_pair: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.seq, int) or self.seq < 0:
            raise KaiserEduError(f"seq must be an integer >= 0, got {self.seq!r}")
        if not isinstance(self.kind, str) or not _KIND_RE.match(self.kind):
            raise KaiserEduError(
                f"kind must be a lowercase identifier such as {', '.join(EVENT_KINDS[:4])}, "
                f"...; got {self.kind!r}"
            )
        for name in ("cpl_before", "cpl_after"):
            value = getattr(self, name)
            if value not in (0, 1, 2, 3) or isinstance(value, bool):
                raise KaiserEduError(f"{name} must be 0, 1, 2 or 3; got {value!r}")
        for name in ("cr3_before", "cr3_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _U64:
                raise KaiserEduError(f"{name} must be an integer in [0, 2**64), got {value!r}")
        for name in ("pcid_before", "pcid_after"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= 0xFFF):
                raise KaiserEduError(f"{name} must be None or a PCID in 0..4095, got {value!r}")
        if self.noflush not in (None, True, False):
            raise KaiserEduError(f"noflush must be True, False or None, got {self.noflush!r}")
        if not isinstance(self.flushed, str) or not self.flushed:
            raise KaiserEduError(
                f"flushed must be a non-empty string ('none', 'pcid N', 'all non-global', ...), "
                f"got {self.flushed!r}"
            )
        if not isinstance(self.tlb_misses, int) or self.tlb_misses < 0:
            raise KaiserEduError(f"tlb_misses must be an integer >= 0, got {self.tlb_misses!r}")
        if self.fault is not None and not isinstance(self.fault, str):
            raise KaiserEduError(f"fault must be a string or None, got {self.fault!r}")
        if not isinstance(self.detail, str):
            raise KaiserEduError(f"detail must be a string, got {self.detail!r}")
        if self.pgd_pair not in (True, False):
            raise KaiserEduError(f"pgd_pair must be True or False, got {self.pgd_pair!r}")

    # --- derived views -----------------------------------------------------------------------
    @property
    def mode_before(self) -> str:
        return "user" if self.cpl_before == 3 else "kernel"

    @property
    def mode_after(self) -> str:
        return "user" if self.cpl_after == 3 else "kernel"

    @property
    def pgd_half_before(self) -> str:
        """'kernel' or 'user': which half of the PGD pair CR3 selected before the step
        (always 'kernel' without a pair: the one PGD maps everything)."""
        return pgd_half(self.cr3_before, self.pgd_pair)

    @property
    def pgd_half_after(self) -> str:
        return pgd_half(self.cr3_after, self.pgd_pair)

    @property
    def cr3_changed(self) -> bool:
        return self.cr3_before != self.cr3_after

    @property
    def did_flush(self) -> bool:
        """True if the step flushed anything from the TLB."""
        return self.flushed.strip().lower() not in ("none", "")

    @property
    def is_fault(self) -> bool:
        """A fault was raised, or the event is itself a fault (page/double/triple fault)."""
        return self.fault is not None or self.kind in FAULT_KINDS

    @property
    def mismatched(self) -> bool:
        """User mode on the kernel PGD after the step: a missed SWITCH_TO_USER_CR3 (the
        kernel copy's NX makes the next user instruction fetch fault)."""
        return self.pgd_pair and self.cpl_after == 3 and self.pgd_half_after == "kernel"

    def summary(self) -> str:
        """One line: ``#3 syscall_exit  CPL 0->3  CR3 kernel->user PGD, PCID 1->2049 ...``."""
        parts = [f"#{self.seq} {self.kind}", f"CPL {self.cpl_before}->{self.cpl_after}"]
        if self.cr3_changed:
            parts.append(f"CR3 {self.pgd_half_before}->{self.pgd_half_after} PGD")
        if self.pcid_before is not None or self.pcid_after is not None:
            parts.append(f"PCID {_opt(self.pcid_before)}->{_opt(self.pcid_after)}")
        if self.noflush is not None:
            parts.append("NOFLUSH" if self.noflush else "flushing write")
        if self.did_flush:
            parts.append(f"flushed {self.flushed}")
        if self.tlb_misses:
            parts.append(f"{self.tlb_misses} TLB misses")
        if self.fault:
            parts.append(f"FAULT {self.fault}")
        if self.detail:
            parts.append(self.detail)
        return "  ".join(parts)

    def to_record(self) -> dict[str, Any]:
        """The fields as a dict (for pandas, JSON or a widget)."""
        return asdict(self)


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Event))


class EventLog:
    """An append-only list of :class:`Event`, numbered from 0 in order of arrival.

    Iterate it, index it, ``len()`` it; :meth:`filter` by kind; :meth:`to_records` for a
    table library; :meth:`table` for a lesson printout; :meth:`clear` to start over (the
    numbering restarts at 0).
    """

    def __init__(self, events: Iterable[Event] = ()):
        self._events: list[Event] = []
        for event in events:
            self.append(event)

    def append(self, kind: str | Event, /, *, pcide: bool = True, **fields_: Any) -> Event:
        """Record one event and return it.

        Either pass an :class:`Event` (it is renumbered to the next ``seq``) or a kind and the
        fields as keywords (``cpl_before``, ``cpl_after``, ``cr3_before``, ``cr3_after`` are
        required). Missing PCIDs are read from CR3 bits 11:0 when ``pcide`` is True.
        """
        seq = len(self._events)
        if isinstance(kind, Event):
            if fields_:
                raise KaiserEduError("append(event) takes no other fields; use replace() first")
            event = replace(kind, seq=seq)
        else:
            if "seq" in fields_:
                raise KaiserEduError("seq is assigned by the log; do not pass it")
            unknown = set(fields_) - set(FIELDS)
            if unknown:
                raise KaiserEduError(
                    f"unknown event field(s) {', '.join(sorted(unknown))}; allowed: "
                    f"{', '.join(FIELDS[1:])}"
                )
            missing = [f for f in ("cpl_before", "cpl_after", "cr3_before", "cr3_after")
                       if f not in fields_]
            if missing:
                raise KaiserEduError(f"event {kind!r} needs {', '.join(missing)}")
            if pcide:
                for when in ("before", "after"):
                    cr3 = fields_[f"cr3_{when}"]
                    if fields_.get(f"pcid_{when}") is None and isinstance(cr3, int):
                        fields_[f"pcid_{when}"] = cr3 & CR3_PCID_MASK
            event = Event(seq=seq, kind=kind, **fields_)
        self._events.append(event)
        return event

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def __getitem__(self, i: int) -> Event:
        return self._events[i]

    def __bool__(self) -> bool:
        return bool(self._events)

    @property
    def last(self) -> Event | None:
        return self._events[-1] if self._events else None

    def filter(self, kind: str | Iterable[str] | None = None, *, faults: bool = False,
               flushes: bool = False) -> list[Event]:
        """Events of the given kind(s); with ``faults``/``flushes`` only those that faulted
        or flushed the TLB."""
        kinds = {kind} if isinstance(kind, str) else None if kind is None else set(kind)
        return [
            e for e in self._events
            if (kinds is None or e.kind in kinds)
            and (not faults or e.is_fault)
            and (not flushes or e.did_flush)
        ]

    def counts(self) -> dict[str, int]:
        """How many events of each kind, in order of first appearance."""
        out: dict[str, int] = {}
        for e in self._events:
            out[e.kind] = out.get(e.kind, 0) + 1
        return out

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per event (``pandas.DataFrame(log.to_records())`` gives a table)."""
        return [e.to_record() for e in self._events]

    def clear(self) -> None:
        """Forget every event; the next one is numbered 0 again."""
        self._events.clear()

    def table(self, last: int | None = None) -> TextTable:
        """A fixed-width text table (the last ``last`` events if given); in a notebook it
        shows as an HTML table whose values never wrap (:class:`TextTable`).

        CR3 columns show the PGD half (K = kernel, U = user) and the PCID; 'nf' marks a MOV
        to CR3 with NOFLUSH (bit 63), 'FL' one without it.
        """
        events = self._events if last is None else self._events[-last:]
        # wide enough for the longest kind the kernel logs ("context_switch_exit") and for
        # any longer one a caller logs
        kind_w = max([len("context_switch_exit"), *(len(e.kind) for e in events)])
        header = (f"{'seq':>4}  {'kind':<{kind_w}} {'CPL':<5} {'CR3 before':<10} "
                  f"{'CR3 after':<10} {'wr':<3} {'flushed':<15} {'miss':>4}  fault / detail")
        lines = [header, "-" * len(header)]
        rows = []
        for e in events:
            wr = "" if e.noflush is None else ("nf" if e.noflush else "FL")
            note = " ".join(x for x in (f"FAULT {e.fault}" if e.fault else "", e.detail) if x)
            before = cr3_cell(e.pgd_half_before, e.pcid_before)
            after = cr3_cell(e.pgd_half_after, e.pcid_after)
            lines.append(
                f"{e.seq:>4}  {e.kind:<{kind_w}} {e.cpl_before}->{e.cpl_after}  "
                f"{before:<10} {after:<10} {wr:<3} {e.flushed:<15} "
                f"{e.tlb_misses:>4}  {note}".rstrip()
            )
            rows.append([e.seq, e.kind, f"{e.cpl_before}->{e.cpl_after}", before, after, wr,
                         e.flushed, e.tlb_misses, note])
        if not events:
            lines.append("(no events)")
        return TextTable("\n".join(lines), TABLE_COLUMNS, rows, wrap=("fault / detail",),
                         notes=TABLE_NOTES if events else ("(no events)",))

    def __repr__(self) -> str:
        return f"EventLog({len(self._events)} events)"


TABLE_COLUMNS = ("seq", "kind", "CPL", "CR3 before", "CR3 after", "wr", "flushed", "miss",
                 "fault / detail")
#: What the event table's abbreviations mean (shown under its HTML form).
TABLE_NOTES = (
    "CR3: K = kernel PGD, U = user PGD, then the PCID (K/2: kernel PGD, PCID 2).",
    "wr: the CR3 write of this transition: nf = NOFLUSH (bit 63 set, the PCID's TLB entries "
    "are kept), FL = a flushing write, empty = CR3 not written.",
    "flushed: whose TLB entries were dropped; miss: TLB misses (page walks) on the way.",
)


def pgd_half(cr3: int, pgd_pair: bool = True) -> str:
    """'user' if CR3 selects the user PGD of a pair (bit 12), else 'kernel'."""
    return "user" if pgd_pair and cr3 & PTI_USER_PGTABLE_MASK else "kernel"


def cr3_cell(half: str, pcid: int | None) -> str:
    """``K/1``, ``U/2049``: the PGD half's initial and the PCID (table and timeline)."""
    letter = half[0].upper()
    return letter if pcid is None else f"{letter}/{pcid}"


__all__ = [
    "CR3_ADDR_MASK", "CR3_PCID_MASK", "EVENT_KINDS", "FAULT_KINDS", "FIELDS",
    "PTI_USER_PCID_BIT", "PTI_USER_PCID_MASK", "PTI_USER_PGTABLE_BIT", "PTI_USER_PGTABLE_MASK",
    "X86_CR3_PCID_NOFLUSH", "X86_CR3_PCID_NOFLUSH_BIT", "Event", "EventLog", "cr3_cell",
    "decode_cr3", "pgd_half",
]
