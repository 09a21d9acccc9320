"""Lab 07, CR3 arithmetic under PTI: the checks of ``solutions/lab07_entry_cr3.ipynb``.

Every kernel entry and exit under page-table isolation rewrites CR3 with a few bit
operations (arch/x86/entry/calling.h, arch/x86/mm/tlb.c). The student writes them in
Python and each answer is compared with the simulated kernel's own
(:class:`kaiser_edu.kernel.tlbstate.CpuTlbState`) on seeded random machine states, with and
without X86_FEATURE_PCID:

==============================  =====================================  ======================
check                           student answer                         compared with
==============================  =====================================  ======================
:data:`check_build_cr3`         ``build_cr3(pgd, asid, pcid)``         ``build_cr3()``
:data:`check_kernel_cr3`        ``switch_to_kernel_cr3(cr3, pcid)``    ``switch_to_kernel_cr3``
:data:`check_user_cr3`          ``switch_to_user_cr3(cr3, pcid,        ``switch_to_user_cr3``,
                                user_pcid_flush_mask)``                then a running kernel
==============================  =====================================  ======================

The CR3 value the code computes is the value *written* by MOV to CR3, so bit 63 (NOFLUSH,
X86_CR3_PCID_NOFLUSH) is part of the answer; a CR3 value *read* never has it. When an
answer is wrong the feedback lists every bit that differs and what that bit means
(:func:`explain_bits`), and a hint names the typical mistake the wrong value shows.

The last part of :data:`check_user_cr3` plugs the student's function into a booted
:class:`~kaiser_edu.kernel.Kernel` (PTI with PCIDs, more processes than the six dynamic
ASIDs, an munmap above the 33-page flush ceiling) and compares every CR3 write of the
workload with the same workload on the kernel's own code.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from kaiser_edu.course.checks import (
    ERROR,
    FAILED,
    NOT_ATTEMPTED,
    PASSED,
    AnswerKit,
    Case,
    Check,
    CheckResult,
    as_int,
    clean,
    describe_exception,
    hex_or_repr,
    where,
    wrap,
)
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import U64_MASK as U64
from kaiser_edu.hw.mmu import OP_NAMES
from kaiser_edu.kernel.events import decode_cr3
from kaiser_edu.kernel.machine import Kernel
from kaiser_edu.kernel.tlbstate import (
    CR3_NOFLUSH,
    PTI_USER_PCID_MASK,
    PTI_USER_PGTABLE_MASK,
    TLB_NR_DYN_ASIDS,
    CpuTlbState,
    kern_pcid,
    user_pcid,
)

__all__ = [
    "CR3_NOFLUSH", "PTI_USER_PCID_MASK", "PTI_USER_PGTABLE_MASK", "TLB_NR_DYN_ASIDS",
    "check_build_cr3", "check_kernel_cr3", "check_user_cr3", "describe_cr3", "explain_bits",
    "kern_pcid", "user_pcid",
]

PCID_FIELD = 0x7FF  # bits 10:0: the kernel PCID (ASID + 1); bit 11 is the user PCID bit
PGD_FIELD = b.phys_addr_mask(52) & ~PTI_USER_PGTABLE_MASK  # bits 51:13: the 8 KiB PGD pair


# --- reading CR3 values -------------------------------------------------------------------

#: The fields of a CR3 value under PTI, high to low: (name, mask, what it means).
CR3_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("bit 63 (NOFLUSH)", CR3_NOFLUSH,
     "with CR4.PCIDE=1, set = the MOV keeps the new PCID's TLB entries, clear = it flushes "
     "them (X86_CR3_PCID_NOFLUSH)"),
    ("bits 62:52", ((1 << 63) - 1) & ~((1 << 52) - 1), "reserved: must be 0"),
    ("bits 51:13 (PGD pair)", PGD_FIELD,
     "physical address of the 8 KiB PGD pair: never changed by an entry or exit"),
    ("bit 12 (PTI_USER_PGTABLE_BIT)", PTI_USER_PGTABLE_MASK,
     "0 = the kernel PGD (lower 4 KiB of the pair), 1 = the user PGD (upper 4 KiB)"),
    ("bit 11 (user PCID bit)", PTI_USER_PCID_MASK,
     "X86_CR3_PTI_PCID_USER_BIT: user PCID = kernel PCID | 0x800 (PCID only)"),
    ("bits 10:0 (PCID)", PCID_FIELD,
     "the kernel PCID of the address space, kern_pcid(asid) = asid + 1 (0 without PCID)"),
)


def describe_cr3(cr3: int, pcid: bool = True) -> str:
    """One line saying what a CR3 value selects. The PCID is given in decimal, as the
    lessons and the event log print it, and in hex, as the bit fields show it.

    >>> describe_cr3(0x4002000 | 0x1000 | 0x800 | 3 | 1 << 63)
    'PGD pair 0x4002000, user PGD, PCID 2051 (0x803, user PCID of ASID 2), NOFLUSH'
    >>> describe_cr3(0x4002000, pcid=False)
    'PGD pair 0x4002000, kernel PGD, no PCID'
    """
    d = decode_cr3(cr3, pcid)
    text = f"PGD pair {cr3 & PGD_FIELD:#x}, {d['half']} PGD"
    if pcid:
        p = d["pcid"]
        owner = "user PCID" if d["user_pcid"] else "kernel PCID"
        text += (f", PCID {p} ({p:#x}, {owner} of ASID {d['asid']})" if d["asid"] is not None
                 else f", PCID {p} ({p:#x})")
    else:
        text += ", no PCID"
    return text + (", NOFLUSH" if d["noflush"] else "")


def explain_bits(expected: int, got: int) -> list[str]:
    """One line per CR3 field in which ``got`` differs from ``expected``, saying what each
    value would mean. Fields are shown high to low, as :data:`CR3_FIELDS` lists them.

    >>> explain_bits(1 << 63 | 0x1000, 0x1000)[0].split(":")[0]
    'bit 63 (NOFLUSH)       expected 1, got 0'
    """
    lines = []
    for name, mask, meaning in CR3_FIELDS:
        e, g = expected & mask, got & mask
        if e == g:
            continue
        if mask & (mask - 1):  # a multi-bit field: show the values
            shift = (mask & -mask).bit_length() - 1
            values = f"expected {e >> shift:#x}, got {g >> shift:#x}" if shift < 13 else \
                f"expected {e:#x}, got {g:#x}"
        else:
            values = f"expected {int(bool(e))}, got {int(bool(g))}"
        lines.append(f"{name:<22} {values}: {meaning}")
    return lines


def _fmt_pair(value: Any) -> str:
    """``(cr3, mask)`` as the feedback shows it: the CR3 in hex, the mask in binary."""
    if isinstance(value, tuple) and len(value) == 2:
        cr3, mask = (as_int(v) for v in value)
        if cr3 is not None and mask is not None:
            return f"(cr3={cr3:#x}, user_pcid_flush_mask={mask:#b})"
    return clean(repr(value))


def _int64(value: Any) -> int | None:
    """``value`` as an int that fits in 64 unsigned bits, else None."""
    n = as_int(value)
    return n if n is not None and 0 <= n <= U64 else None


def _pair(value: Any) -> tuple[int, int] | None:
    if not isinstance(value, tuple | list) or len(value) != 2:
        return None
    cr3, mask = _int64(value[0]), _int64(value[1])
    return None if cr3 is None or mask is None else (cr3, mask)


# --- the engine ---------------------------------------------------------------------------


def _tlbstate(pcid: bool, mask: int = 0) -> CpuTlbState:
    """This CPU's struct tlb_state under PTI (X86_FEATURE_PTI), with or without PCID."""
    return CpuTlbState(pcid=pcid, pti=True, invpcid=False, user_pcid_flush_mask=mask)


def engine_build_cr3(pgd: int, asid: int, pcid: bool) -> int:
    return _tlbstate(pcid).build_cr3(pgd, asid)


def engine_kernel_cr3(cr3: int, pcid: bool) -> int:
    return _tlbstate(pcid).switch_to_kernel_cr3(cr3)


def engine_user_cr3(cr3: int, pcid: bool, mask: int) -> tuple[int, int]:
    ts = _tlbstate(pcid, mask)
    out = ts.switch_to_user_cr3(cr3)
    return out, ts.user_pcid_flush_mask


# --- random machine states ----------------------------------------------------------------


def _pgd_pair(rng: random.Random) -> int:
    """An 8 KiB-aligned PGD pair somewhere in 2 GiB of RAM above 64 MiB."""
    return rng.randrange(64 << 20, 2 << 30, 8192)


def _user_cr3_read(pgd: int, asid: int, pcid: bool) -> int:
    """CR3 as read while user code runs: user PGD (bit 12), user PCID (with PCID)."""
    return pgd | PTI_USER_PGTABLE_MASK | (user_pcid(asid) if pcid else 0)


def _flush_mask(rng: random.Random, asid: int, pending: bool) -> int:
    """A user_pcid_flush_mask with or without this ASID's bit, other ASIDs' bits random."""
    others = [kern_pcid(a) for a in range(TLB_NR_DYN_ASIDS) if a != asid]
    mask = sum(1 << p for p in others if rng.random() < 0.4)
    return mask | (1 << kern_pcid(asid) if pending else 0)


def build_cr3_cases(rng: random.Random) -> list[Case]:
    cases = []
    for pcid in (True, False):
        for asid in range(TLB_NR_DYN_ASIDS) if pcid else (0,):
            pgd = _pgd_pair(rng)
            note = f"ASID {asid}, PCID on" if pcid else "no PCID: the ASID is always 0"
            cases.append(Case((pgd, asid, pcid), engine_build_cr3(pgd, asid, pcid), note=note))
    for _ in range(40):
        pcid = rng.random() < 0.7
        asid = rng.randrange(TLB_NR_DYN_ASIDS) if pcid else 0
        pgd = _pgd_pair(rng)
        cases.append(Case((pgd, asid, pcid), engine_build_cr3(pgd, asid, pcid),
                          note="random state"))
    return cases


def kernel_cr3_cases(rng: random.Random) -> list[Case]:
    cases = []
    for i in range(60):
        pcid = i % 3 != 2
        asid = rng.randrange(TLB_NR_DYN_ASIDS) if pcid else 0
        cr3 = _user_cr3_read(_pgd_pair(rng), asid, pcid)
        note = (f"entry from user mode, ASID {asid}, PCID on" if pcid
                else "entry from user mode, no PCID")
        cases.append(Case((cr3, pcid), engine_kernel_cr3(cr3, pcid), note=note))
    return cases


def user_cr3_cases(rng: random.Random) -> list[Case]:
    """No pending flush first (the common exit), then a pending one, then no PCID, then a
    random mix."""
    cases = []
    plan = [(True, False)] * 8 + [(True, True)] * 8 + [(False, False)] * 6
    plan += [(rng.random() < 0.75, rng.random() < 0.5) for _ in range(60)]
    for pcid, pending in plan:
        asid = rng.randrange(TLB_NR_DYN_ASIDS) if pcid else 0
        cr3 = engine_build_cr3(_pgd_pair(rng), asid, pcid)  # CR3 as read in the kernel
        mask = _flush_mask(rng, asid, pending) if pcid else 0
        if not pcid:
            note = "exit to user mode, no PCID"
        elif pending:
            note = f"exit, ASID {asid}: a user-PCID flush is pending (bit {kern_pcid(asid)})"
        else:
            note = f"exit, ASID {asid}: no flush pending for it"
        cases.append(Case((cr3, pcid, mask), engine_user_cr3(cr3, pcid, mask), note=note))
    return cases


# --- hints --------------------------------------------------------------------------------


def _build_cr3_hint(case: Case, got: Any) -> str:
    pgd, asid, pcid = case.args
    value = _int64(got)
    if value is None:
        return "Return the CR3 value as an int."
    if value & CR3_NOFLUSH:
        return ("build_cr3() never sets bit 63: build_cr3_noflush() adds CR3_NOFLUSH when "
                "switch_mm wants to keep the PCID's entries.")
    if value & (PTI_USER_PGTABLE_MASK | PTI_USER_PCID_MASK):
        return ("build_cr3() makes the *kernel* CR3 (kernel PGD, kernel PCID); bits 12 and 11 "
                "are set only by the exit to user space.")
    if pcid and value == pgd | asid:
        return ("The PCID is kern_pcid(asid) = asid + 1, not the ASID: PCID 0 is left to code "
                "that knows nothing of PCIDs (arch/x86/mm/tlb.c), so ASID 0 runs with PCID 1.")
    if not pcid and value != pgd:
        return ("Without X86_FEATURE_PCID, CR3 bits 11:0 are not a PCID (CR4.PCIDE=0): "
                "build_cr3() returns just __pa(pgd).")
    if pcid and value == pgd:
        return "With PCID, build_cr3() adds kern_pcid(asid) = asid + 1 in bits 11:0."
    return "build_cr3(pgd, asid) = __pa(pgd) | kern_pcid(asid) with PCID, __pa(pgd) without."


def _kernel_cr3_hint(case: Case, got: Any) -> str:
    cr3, pcid = case.args
    value = _int64(got)
    if value is None:
        return "Return the value written to CR3, an int (bit 63 included)."
    expected = case.expected
    if pcid and value == expected & ~CR3_NOFLUSH:
        return ("With PCID, SWITCH_TO_KERNEL_CR3 sets NOFLUSH (ADJUST_KERNEL_CR3: "
                "SET_NOFLUSH_BIT): the kernel PCID's entries are kept up to date by explicit "
                "flushes, so an entry never needs to flush them. Without it every system call "
                "would empty the kernel's TLB entries.")
    if not pcid and value == expected | CR3_NOFLUSH:
        return ("Without X86_FEATURE_PCID the ALTERNATIVE leaves SET_NOFLUSH_BIT out: with "
                "CR4.PCIDE=0 bit 63 is not a NOFLUSH bit, and every CR3 write flushes anyway.")
    if value & PTI_USER_PGTABLE_MASK:
        return ("Bit 12 is still set, so CR3 still points at the user PGD, which maps almost "
                "nothing of the kernel: clear PTI_USER_PGTABLE_MASK (1 << 12).")
    if pcid and value & PTI_USER_PCID_MASK:
        return ("Bit 11 is still set: the kernel would run on the user PCID. Clear "
                "PTI_USER_PCID_MASK (1 << 11) too: ADJUST_KERNEL_CR3 does "
                "andq $~PTI_USER_PGTABLE_AND_PCID_MASK.")
    if pcid and not value & PCID_FIELD and expected & PCID_FIELD:
        return ("Keep bits 10:0: they are the kernel PCID of this address space (ASID + 1). "
                "Only bits 12 and 11 are cleared.")
    return ("SWITCH_TO_KERNEL_CR3: cr3 & ~(PTI_USER_PGTABLE_MASK | PTI_USER_PCID_MASK), "
            "plus NOFLUSH (bit 63) when PCID is on.")


def _wrong_index_user_cr3(cr3: int, mask: int) -> tuple[int, int]:
    """switch_to_user_cr3 with the mask indexed by the ASID instead of the kernel PCID."""
    asid = (cr3 & PCID_FIELD) - 1
    bit = 1 << max(asid, 0)
    noflush = not mask & bit
    new_mask = mask & ~bit
    out = cr3 | PTI_USER_PCID_MASK | PTI_USER_PGTABLE_MASK | (CR3_NOFLUSH if noflush else 0)
    return out, new_mask


def _user_cr3_hint(case: Case, got: Any) -> str:
    cr3, pcid, mask = case.args
    answer = _pair(got)
    if answer is None:
        return ("Return a tuple of two ints: (the value written to CR3, the new "
                "user_pcid_flush_mask), e.g. return new_cr3, mask.")
    value, new_mask = answer
    expected, expected_mask = case.expected
    kpcid = cr3 & PCID_FIELD
    pending = pcid and bool(mask >> kpcid & 1)
    ignored = (cr3 | PTI_USER_PCID_MASK | PTI_USER_PGTABLE_MASK | CR3_NOFLUSH, mask)
    if pending and (value, new_mask) == ignored:
        return (f"A flush of this user PCID is pending (bit {kpcid} of the mask is set) and "
                "your function ignored it: write CR3 *without* NOFLUSH, so the MOV flushes the "
                "user PCID's stale entries, and clear the bit (btr). This is the deferred "
                "flush that invalidate_user_asid() asked for.")
    wrong_index = _wrong_index_user_cr3(cr3, mask)
    if pcid and (value, new_mask) == wrong_index and wrong_index != ignored:
        return (f"The mask is indexed by the kernel PCID, cr3 & 0x7FF = {kpcid} (ASID + 1), "
                f"not by the ASID: test bit {kpcid} of user_pcid_flush_mask.")
    if value & ~CR3_NOFLUSH == expected & ~CR3_NOFLUSH and new_mask == expected_mask:
        if pending:
            return (f"A flush of this user PCID is pending (bit {kpcid} of the mask is set): "
                    "write CR3 *without* NOFLUSH, so the MOV flushes the user PCID's stale "
                    "entries. This is the deferred flush of invalidate_user_asid().")
        if pcid:
            return ("No flush is pending for this user PCID: set NOFLUSH (bit 63), or every "
                    "return to user space flushes the user's TLB entries, as if there were no "
                    "PCIDs at all.")
        return ("Without X86_FEATURE_PCID the ALTERNATIVE jumps straight to .Lwrcr3: no "
                "NOFLUSH (CR4.PCIDE=0), only bit 12 is set.")
    if new_mask != expected_mask:
        if pending and new_mask == mask:
            return (f"Consume the pending flush: clear bit {kpcid} of the mask (btr), so that "
                    "the next exit uses NOFLUSH again. Otherwise every exit keeps flushing.")
        if pending and new_mask == 0 and mask & ~(1 << kpcid):
            return (f"Clear only bit {kpcid}: the other bits are pending flushes of other "
                    "ASIDs' user PCIDs, which must happen when *those* address spaces return "
                    "to user space.")
        if not pending:
            return ("Without a pending flush for this ASID the mask must come back unchanged.")
        return f"Clear exactly bit {kpcid} (the kernel PCID) of the mask, nothing else."
    if not value & PTI_USER_PGTABLE_MASK:
        return ("Bit 12 is clear: user code would run on the kernel PGD (its user entries are "
                "NX there, so it would die on its first instruction). Set "
                "PTI_USER_PGTABLE_MASK (1 << 12).")
    if pcid and not value & PTI_USER_PCID_MASK:
        return ("Bit 11 is clear: user code would run on the kernel PCID, mixing the user "
                "tables' translations with the kernel's. Set PTI_USER_PCID_MASK (1 << 11).")
    if not pcid and value & PTI_USER_PCID_MASK:
        return ("Without X86_FEATURE_PCID there is no user PCID: the ALTERNATIVE jumps over "
                "the PCID part, so bit 11 stays clear; only bit 12 is set.")
    return ("SWITCH_TO_USER_CR3: bit 12 always; with PCID also bit 11, and NOFLUSH unless the "
            "mask has this ASID's bit (then clear that bit and flush).")


# --- the checks ---------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Cr3Check(Check):
    """A Check whose wrong-answer report also lists the CR3 bits that differ.

    ``pick(value)`` extracts the CR3 from an answer (the first item of a tuple)."""

    pick: Callable[[Any], int | None] = _int64

    def _wrong(self, case: Case, got: Any, wrong: int, total: int) -> CheckResult:
        result = super()._wrong(case, got, wrong, total)
        value = self.pick(got)
        expected = self.pick(case.expected)
        if value is None or expected is None or value == expected:
            return result
        lines = result.feedback.split("\n")
        bits = ["Bits that differ:"] + [f"  {line}" for line in explain_bits(expected, value)]
        at = next(i for i, line in enumerate(lines) if line.startswith("Hint:"))
        feedback = "\n".join(lines[:at] + [wrap(x) for x in bits] + lines[at:])
        return self._result(FAILED, feedback, cases=result.cases,
                            passed_cases=result.passed_cases)


def _same_int(expected: Any, got: Any) -> bool:
    return _int64(got) == expected


def _same_pair(expected: Any, got: Any) -> bool:
    return _pair(got) == expected


check_build_cr3 = Cr3Check(
    exercise="lab07-build-cr3",
    title="Exercise 1: build_cr3",
    function="build_cr3",
    cases=build_cr3_cases,
    points=2,
    seed=70,
    hint=_build_cr3_hint,
    same=_same_int,
    format_arg=hex_or_repr,
    format_value=hex_or_repr,
)

check_kernel_cr3 = Cr3Check(
    exercise="lab07-kernel-cr3",
    title="Exercise 2: SWITCH_TO_KERNEL_CR3",
    function="switch_to_kernel_cr3",
    cases=kernel_cr3_cases,
    points=3,
    seed=71,
    hint=_kernel_cr3_hint,
    same=_same_int,
    format_arg=hex_or_repr,
    format_value=hex_or_repr,
)


# --- exercise 3 also runs in a kernel ---------------------------------------------------------


class StudentError(Exception):
    """The student's function raised ``error`` (or answered ``answer``) inside the kernel."""

    def __init__(self, error: BaseException | None = None, answer: Any = None):
        super().__init__(str(error))
        self.error, self.answer = error, answer


class _PluggedTlbState(CpuTlbState):
    """cpu_tlbstate whose SWITCH_TO_USER_CR3 is the student's function."""

    student: Callable[..., Any]

    def switch_to_user_cr3(self, cr3: int) -> int:
        cr3 &= ~CR3_NOFLUSH  # the entry code reads CR3: bit 63 never reads back
        try:
            got = self.student(cr3, self.pcid, self.user_pcid_flush_mask)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as e:
            raise StudentError(e) from e
        answer = _pair(got)
        if answer is None:
            raise StudentError(answer=got)
        value, self.user_pcid_flush_mask = answer
        return value


def _plug(k: Kernel, student: Callable[..., Any]) -> None:
    state = _PluggedTlbState(**{f.name: getattr(k.tlbstate, f.name)
                                for f in fields(k.tlbstate)})
    state.student = student
    k.tlbstate = state


def _workload() -> list[tuple[str, Callable[[Kernel, list], Any]]]:
    """The workload both kernels run: (label, action) pairs; actions take (kernel, tasks)."""
    steps: list[tuple[str, Callable[[Kernel, list], Any]]] = []

    def spawn_and_run(n: int) -> Callable[[Kernel, list], Any]:
        def act(k: Kernel, tasks: list) -> Any:
            tasks.append(k.spawn(f"p{n}"))
            return k.switch_to(tasks[-1]).status
        return act

    for n in range(8):  # eight address spaces for six ASIDs: slots get recycled
        steps.append((f"spawn p{n} and switch to it", spawn_and_run(n)))
        steps.append((f"syscall in p{n}", lambda k, t: k.syscall(t[-1]).status))
    for n in (2, 7, 3, 7, 0, 5, 2):  # back to earlier ones: some still cached, some evicted
        steps.append((f"switch to p{n}", lambda k, t, n=n: k.switch_to(t[n]).status))
        steps.append((f"interrupt in p{n}", lambda k, t, n=n: k.interrupt(t[n]).status))
    steps.append(("p2 maps, touches and unmaps 40 pages (above the 33-page flush ceiling)",
                  _big_munmap))
    steps.append(("syscall in p2", lambda k, t: k.syscall(t[2]).status))
    steps.append(("NMI during a syscall of p2",
                  lambda k, t: k.nmi(t[2], from_kernel=True).status))
    steps.append(("NMI in user mode of p2", lambda k, t: k.nmi(t[2]).status))
    steps.append(("switch to p5", lambda k, t: k.switch_to(t[5]).status))
    return steps


def _big_munmap(k: Kernel, tasks: list) -> Any:
    task = tasks[2]
    start = k.mmap(task, 40 * b.PAGE_SIZE)
    for i in range(40):
        k.user_store(task, start + i * b.PAGE_SIZE, i + 1)
    k.munmap(task, start, 40 * b.PAGE_SIZE)
    return "ok"


def kernel_cr3_writes(student: Callable[..., Any] | None = None,
                      pcid: bool = True) -> list[tuple[str, int, str]]:
    """Run :func:`_workload` on a PTI kernel (with ``student`` as SWITCH_TO_USER_CR3 if
    given) and return every CR3 write: (step label, value written incl. NOFLUSH, outcome of
    the step)."""
    k = Kernel(isolation="pti", seed=7, pcid=pcid)
    if student is not None:
        _plug(k, student)
    writes: list[tuple[str, int, str]] = []
    real = k.mmu.run
    label = ["boot"]

    def run(trace, *args, **kwargs):
        result = real(trace, *args, **kwargs)
        for i in range(result.n_done):
            if OP_NAMES[int(trace.op[i])] == "mov_cr3":
                value = int(trace.addr[i]) | (CR3_NOFLUSH if int(trace.arg[i]) else 0)
                writes.append((label[0], value, ""))
        return result

    k.mmu.run = run
    tasks: list = []
    for text, act in _workload():
        label[0] = text
        outcome = act(k, tasks)
        writes.append((text, -1, str(outcome)))  # the step's outcome, as a marker
    return writes


@dataclass(frozen=True, repr=False)
class UserCr3Check(Cr3Check):
    """:class:`Cr3Check` on random states, then the same function inside a running kernel:
    every CR3 write of :func:`_workload` must be the kernel's own."""

    def _run(self, student_fn: Any, seed: int) -> CheckResult:
        result = super()._run(student_fn, seed)
        if result.status != PASSED:
            return result
        for pcid in (True, False):
            try:
                got = kernel_cr3_writes(student_fn, pcid)
            except StudentError as e:
                return self._kernel_error(e, result.cases)
            expected = kernel_cr3_writes(None, pcid)
            problem = self._compare_runs(expected, got, pcid)
            if problem:
                return self._result(FAILED, problem, cases=result.cases + 1,
                                    passed_cases=result.cases)
        return self._result(
            PASSED,
            f"All {result.cases} states correct, and in a running PTI kernel (with and "
            f"without PCID, {len(_workload())} steps each) every CR3 write was the kernel's "
            "own.",
            cases=result.cases + 1, passed_cases=result.cases + 1)

    def _kernel_error(self, e: StudentError, passed: int) -> CheckResult:
        if e.error is None:
            text = (f"Inside the kernel, {self.function} returned {clean(repr(e.answer))}, "
                    "not a tuple (cr3, user_pcid_flush_mask) of two ints.")
            return self._result(FAILED, text, cases=passed + 1, passed_cases=passed)
        if isinstance(e.error, NotImplementedError):
            return self._result(NOT_ATTEMPTED, f"{self.function} raised NotImplementedError "
                                "inside the kernel.", cases=passed + 1, passed_cases=passed)
        lines = [f"Your code raised {describe_exception(e.error)}"]
        lines += ["  " + line for line in where(e.error).splitlines()]
        lines.append("while the kernel returned to user space (the random states all passed).")
        return self._result(ERROR, "\n".join(lines), cases=passed + 1, passed_cases=passed)

    def _compare_runs(self, expected: Sequence[tuple[str, int, str]],
                      got: Sequence[tuple[str, int, str]], pcid: bool) -> str:
        for i, (want, have) in enumerate(zip(expected, got)):
            if want == have:
                continue
            step = want[0]
            lines = [f"In a running PTI kernel ({'with' if pcid else 'without'} PCID), "
                     f"step: {step}"]
            if want[1] >= 0 and have[1] >= 0:
                lines.append(f"  CR3 write {sum(w[1] >= 0 for w in expected[:i]) + 1}:")
                lines.append(f"    expected {want[1]:#x}  ({describe_cr3(want[1], pcid)})")
                lines.append(f"    got      {have[1]:#x}  ({describe_cr3(have[1], pcid)})")
                lines.append("Bits that differ:")
                lines += [wrap(f"  {x}") for x in explain_bits(want[1], have[1])]
                lines.append(wrap(
                    "Hint: your function agrees with the random states but not with this "
                    "exit; compare the flush mask your function returned with what "
                    "SWITCH_TO_USER_CR3 leaves in it (btr clears exactly one bit)."))
            else:
                lines.append(f"  expected: {want[2] or 'a CR3 write'}, got: "
                             f"{have[2] or 'a CR3 write'}")
            return "\n".join(lines)
        return "" if len(expected) == len(got) else "The kernel made a different number of " \
            "CR3 writes."


check_user_cr3 = UserCr3Check(
    exercise="lab07-user-cr3",
    title="Exercise 3: SWITCH_TO_USER_CR3 and the deferred flush",
    function="switch_to_user_cr3",
    cases=user_cr3_cases,
    points=4,
    seed=72,
    hint=_user_cr3_hint,
    same=_same_pair,
    format_arg=hex_or_repr,
    format_value=_fmt_pair,
    pick=lambda value: _pair(value)[0] if _pair(value) else _int64(value),
)

CHECKS = (check_build_cr3, check_kernel_cr3, check_user_cr3)

#: What the answers may use in a graded run (kaiser_edu.course.graded): the setup cell's
#: constants.
ANSWER_KIT = AnswerKit(constants={
    "CR3_NOFLUSH": CR3_NOFLUSH, "PTI_USER_PCID_MASK": PTI_USER_PCID_MASK,
    "PTI_USER_PGTABLE_MASK": PTI_USER_PGTABLE_MASK,
})
