"""Lab 09, a KASLR break from a timing oracle: the checks of ``solutions/lab09_kaslr_break.ipynb``.

The student writes ``find_text_base(oracle, candidates, offset)``: given a
:class:`TimingOracle` that times one probe of each address it is handed, find the kernel's
``_text`` among the candidate 2 MiB slots, or return None. The oracle is the attack model's
own prober (:mod:`kaiser_edu.attacks.kaslr`): each probe goes through the simulated MMU under
the attacker's CR3 and is priced from what the translation did (a TLB hit, or a walk that
reads N entries) with the course's cycle-cost table and seeded noise.

==========================  ========================================================
check                       what it runs
==========================  ========================================================
:data:`check_kaslr_break`   the student's break on fresh machines: 4 boots x {no
                            isolation, KAISER, PTI} x {prefetch, EntryBleed}, on
                            three CPU models
==========================  ========================================================

What is expected comes from the page tables, not from a flag: :func:`expected_base` walks the
probe address of every candidate slot (the readable walk of :mod:`kaiser_edu.hw.walk`, with a
prefetch's rights: no U/S check) on the CR3 the attacker runs on. If some slot's probe
address has a translation there, the break can see it, and the answer is the lowest such
slot (the image spans several consecutive slots); the check makes sure that this is the true
``_text``. If no slot has one (KAISER with the prefetch break: the image is absent from the
shadow tables), every slot walks to a not-present entry alike, and the only right answer is
None: "not found", not the slot that happened to be fastest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from kaiser_edu.attacks import kaslr as attack
from kaiser_edu.course.checks import AnswerKit, Case, Check, as_int, hex_or_repr
from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw.walk import walk
from kaiser_edu.kernel.machine import Kernel, Task
from kaiser_edu.kernel.timing import timing

__all__ = ["METHODS", "TimingOracle", "candidates_for", "check_kaslr_break", "expected_base",
           "oracle_machine"]

METHODS = ("prefetch", "entrybleed")  # the breaks a student's code drives (both prefetch)
ISOLATIONS = ("off", "kaiser", "pti")
CPUS = ("skylake", "haswell", "zen2")
MAX_PROBES = 2_000_000  # a runaway loop is stopped, not waited for


class OracleExhausted(KaiserEduError):
    """The student's code asked for more probes than any break needs."""


class TimingOracle:
    """Times probes as one break does, on one machine, from the attacker's user mode.

    :meth:`probe` takes an array of addresses and returns one time (cycles) per address, in
    one round: for ``"prefetch"`` a prefetch of each; for ``"entrybleed"`` a system call
    first (which leaves the entry text's translation in the TLB), then a prefetch of each.
    ``own_address`` is a page of the attacker's own (probing it twice gives a TLB hit);
    ``unmapped_address`` lies in an empty PGD slot of its address space (a walk that reads
    one entry). Both are for calibrating a threshold.
    """

    def __init__(self, kernel: Kernel, task: Task, method: str, seed: int = 0):
        if method not in METHODS:
            raise KaiserEduError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if kernel.current is not task:
            kernel.switch_to(task)
        self.method = method
        self.own_address = int(task.user_rip)
        self.unmapped_address = attack.EMPTY_USER_SLOT
        self._prober = attack.Prober(kernel, task, method, timing(kernel.cpu),
                                      np.random.default_rng(seed))
        self._depth: dict[int, int] = {}
        self.label = ""

    @property
    def probes(self) -> int:
        """How many probes were timed so far."""
        return self._prober.probes

    def probe(self, addresses: Any) -> np.ndarray:
        """One round: the time (cycles) of one probe of each address, in order."""
        vas = np.atleast_1d(np.asarray(addresses, dtype=np.uint64))
        if vas.ndim != 1 or not vas.size:
            raise KaiserEduError("probe() takes a non-empty 1-D list or array of addresses")
        if self._prober.probes + vas.size > MAX_PROBES:
            raise OracleExhausted(f"more than {MAX_PROBES:,} probes: a break needs far fewer "
                                  "(is a loop running forever?)")
        missing = [int(v) for v in vas.tolist() if int(v) not in self._depth]
        if missing:
            depths = self._prober.depth(np.array(missing, np.uint64))
            self._depth.update(zip(missing, depths.tolist()))
        depth = np.array([self._depth[int(v)] for v in vas.tolist()], np.int64)
        return self._prober.run(vas, 1, depth)[0]

    def __repr__(self) -> str:
        return f"<timing oracle: {self.label or self.method}>"


def candidates_for(method: str) -> tuple[np.ndarray, int]:
    """(candidate ``_text`` slots, the offset inside each slot that ``method`` probes):
    the slot itself for prefetch, ``entry_SYSCALL_64``'s offset for EntryBleed."""
    offset = attack.ENTRY_SYSCALL_OFFSET if method == "entrybleed" else 0
    return attack.text_candidates(), offset


def oracle_machine(isolation: str, method: str, cpu: str = "skylake",
                   seed: int = 0) -> tuple[Kernel, Task, TimingOracle]:
    """Boot a machine (KASLR from ``seed``), start an attacker, and give its oracle."""
    k = Kernel(isolation=isolation, cpu=cpu, seed=seed)
    task = k.spawn("attacker")
    k.switch_to(task)
    oracle = TimingOracle(k, task, method, seed)
    oracle.label = f"{method} on a machine with isolation={isolation!r}, {cpu}, boot seed {seed}"
    return k, task, oracle


def expected_base(kernel: Kernel, candidates: np.ndarray, offset: int) -> int | None:
    """The lowest candidate whose probe address has a translation on the current CR3, with
    a prefetch's rights (CPL 0, RFLAGS.AC: no U/S or SMAP check), or None."""
    regs = kernel.mmu.regs
    for slot in candidates.tolist():
        if walk(kernel.mem, regs, int(slot) + offset, "read", cpl=0, ac=True,
                set_ad=False).ok:
            return int(slot)
    return None


@dataclass(frozen=True)
class Expected:
    """What the check expects for one machine, and why (for the feedback)."""

    base: int | None
    truth: int
    why: str

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expected) and self.base == other.base

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "None (not found)" if self.base is None else hex(self.base)


def kaslr_cases(rng: random.Random) -> list[Case]:
    cases = []
    for boot in range(4):
        for isolation in ISOLATIONS:
            for method in METHODS:
                cpu = CPUS[(boot + ISOLATIONS.index(isolation)) % len(CPUS)]
                k, _task, oracle = oracle_machine(isolation, method, cpu,
                                                  seed=rng.randrange(100_000))
                candidates, offset = candidates_for(method)
                base = expected_base(k, candidates, offset)
                truth = k.layout.kernel_text
                if base is not None and base != truth:  # the model would mislead: a bug
                    raise ValueError(f"slot {base:#x} is mapped below _text {truth:#x}")
                why = ("the probe address in the true slot has a translation in the "
                       "attacker's page tables" if base is not None else
                       "no candidate's probe address has a translation in the attacker's page "
                       "tables")
                cases.append(Case((oracle, candidates, offset), Expected(base, truth, why),
                                  note=f"{isolation}, {method}, {cpu}: {why}"))
    return cases


class _NoneAnswer:
    """Stands for a None answer in the feedback: None is a valid answer here ("not
    found"), so the generic "did you forget `return`?" hint must not replace ours."""

    def __repr__(self) -> str:
        return "None"


NONE_ANSWER = _NoneAnswer()


class KaslrCheck(Check):
    """A :class:`Check` for which returning None is an answer, not a forgotten return."""

    def _wrong(self, case: Case, got: Any, wrong: int, total: int):
        return super()._wrong(case, NONE_ANSWER if got is None else got, wrong, total)


def _answer(got: Any) -> tuple[bool, int | None]:
    """(a valid answer, the base): None or an int."""
    if got is None or got is NONE_ANSWER:
        return True, None
    value = as_int(got)
    return value is not None, value


def _same(expected: Expected, got: Any) -> bool:
    ok, value = _answer(got)
    return ok and value == expected.base


def _hint(case: Case, got: Any) -> str:
    oracle, candidates, offset = case.args
    expected: Expected = case.expected
    ok, value = _answer(got)
    if not ok:
        return "Return the base as an int (one of the candidates), or None if nothing is found."
    if expected.base is None:
        return ("Nothing is there to find: no slot's probe address has a translation in the "
                "attacker's page tables (under KAISER the image is absent from the shadow "
                "tables), so no slot can be a TLB hit, and the slot you returned was only "
                "fastest by noise. Calibrate a threshold on your own address space "
                "(oracle.own_address, oracle.unmapped_address), confirm each suspect with more "
                "probes, and return None when none stays below it. (Lesson 09 shows slower "
                "outliers under KAISER; this exercise's break looks for mapped slots only.)")
    if value is None:
        return (f"The base was findable here ({expected.why}), but you returned None. Is "
                "your threshold between a TLB hit and a walk? Skip the first round (it "
                "primes the TLB), and take medians, not single probes.")
    slots = {int(c) for c in candidates.tolist()}
    if value == expected.base + offset:
        return ("You returned the probed address; return the slot itself, the candidate "
                "(the probe address minus the offset).")
    if value not in slots:
        return f"{value:#x} is not one of the candidate slots: return a candidate."
    if value > expected.base and value - expected.base < 8 * (2 << 20):
        return ("That slot is mapped too, but the image spans several consecutive 2 MiB "
                "slots: _text is the lowest mapped one.")
    return ("That slot was fast by noise. Use the median of many rounds per slot (without the "
            "first, which primes the TLB) and confirm each suspect with a second series of "
            "probes before you trust it.")


def _format_arg(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return (f"<{len(value)} candidate slots {int(value[0]):#x}..{int(value[-1]):#x}, "
                "2 MiB apart>")
    return hex_or_repr(value) if as_int(value) is not None else repr(value)


check_kaslr_break = KaslrCheck(
    exercise="lab09-break",
    title="Exercise 1: break KASLR from a timing oracle, or report failure",
    function="find_text_base",
    cases=kaslr_cases,
    points=5,
    seed=90,
    hint=_hint,
    same=_same,
    format_arg=_format_arg,
    format_value=lambda v: repr(v) if isinstance(v, Expected | _NoneAnswer) or v is None
    else hex_or_repr(v),
)

CHECKS = (check_kaslr_break,)

# Graded runs: the answer gets numpy and the oracle's probe and its two reference addresses;
# the machine behind the oracle stays in the grader.
ANSWER_KIT = AnswerKit(
    modules={"np": "numpy"},
    objects={TimingOracle: ("probe", "probes", "own_address", "unmapped_address")},
)
