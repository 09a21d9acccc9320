"""Lab 05, the Flush+Reload receiver of Meltdown: the checks of ``solutions/lab05_flush_reload.ipynb``.

Meltdown (Lipp et al., USENIX Security 2018) moves a kernel byte into the cache through a
transient access ``probe[byte * 4096]``; the attacker reads it back by timing a reload of
each of the 256 probe lines (Flush+Reload, Yarom and Falkner, USENIX Security 2014). The
student writes the receiving half, the part that turns cycle counts into a byte:

==============================  ======================================  =====================
check                           student answer                          compared with
==============================  ======================================  =====================
:data:`check_threshold`         ``calibrate_threshold(hit_times,        a threshold that
                                miss_times)``                           classifies fresh
                                                                        reloads correctly
:data:`check_receiver`          ``probe_hits(times, threshold)``        :func:`engine_hits`
:data:`check_decoder`           ``decode_byte(rounds, threshold)``      the byte the rounds
                                                                        were made from
:data:`check_machine`           the same ``decode_byte`` on rounds      the byte the machine's
                                made by the simulated machine           transient load
                                                                        forwards, else 0
==============================  ======================================  =====================

The timings are drawn from the course's one cycle-cost table
(:mod:`kaiser_edu.kernel.timing`): a timed reload of a cached line costs
``Timing.reload_hit``, of a flushed one ``Timing.reload_miss``, plus a normal noise core
(``noise_sigma``) and, rarely (``tail_prob``), an interrupt inside the timed window that adds
thousands of cycles (``tail_cycles``, an exponential tail here). Every number in that table
that is not from a primary source says "assumed" there; the *shape* of the problem is the
real one: two well separated clusters and a long tail.

Why a threshold is not "the slowest hit": one interrupt during calibration makes the slowest
cached reload slower than every flushed one. IAIK's proof of concept (libkdump.c,
``detect_flush_reload_threshold()``) sets the threshold from *averages* instead,
``(flush_reload_time + 2 * reload_time) / 3``, a third of the way from the cached average to
the flushed one.

Why zero is special: a transient load that loses the race against the fault (or whose data
is not forwarded) leaves ``al = 0``, so the dependent access touches ``probe[0]`` whatever the
secret is. A lit line 0 is therefore no evidence of a zero byte. libkdump ignores line 0
(``if (i >= 1) return i``) and retries, and reads a byte as 0 only when no other line ever
lit (``libkdump_read()``: ``max_i`` stays 0). The check's rounds reproduce that: in many
rounds only line 0 lights, and a decoder that counts line 0 like any other line reads 0 for
most bytes. A line that lit in a single round is no evidence either (an unrelated access can
bring one line in): the decoder accepts a nonzero line only if it lit in two rounds or more.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kaiser_edu.attacks.meltdown import kernel_view, observe
from kaiser_edu.course.checks import AnswerKit, Case, Check, as_int, hex_or_repr
from kaiser_edu.kernel.cpu import CPU_MODELS
from kaiser_edu.kernel.timing import Timing, timing
from kaiser_edu.widgets.meltdown import (
    LINES,
    PROBE_STRIDE,
    TARGETS,
    decode,
    lit_lines,
    machine,
    probe_hits,
    reload_times,
    show_bytes,
)

__all__ = [
    "LINES", "PROBE_STRIDE", "check_decoder", "check_machine", "check_receiver",
    "check_threshold", "describe_times", "leak_with", "machine", "reload_times", "show_bytes",
    "transient_rounds",
]

MIN_ACCURACY = 0.995  # a threshold must classify this share of fresh reloads correctly
HELD_OUT = 5000  # fresh reloads of each kind the threshold is tested on


# --- seeded timings from the cycle-cost table ----------------------------------------------


def transient_rounds(t: Timing, byte: int, rounds: int, rng: np.random.Generator, *,
                     lost: float = 0.5, spurious: float = 0.02,
                     empty: float = 0.05) -> np.ndarray:
    """Reload times of the 256 probe lines after each of ``rounds`` transient attempts to
    read ``byte`` (rows: attempts, columns: line = byte value), with a share ``lost`` of
    attempts that lost the race, ``empty`` ones (no line) and stray lines
    (:func:`kaiser_edu.widgets.meltdown.lit_lines`). The attempts are those of libkdump's
    ``meltdown_fast``, without the ``jz`` loop: a lost race transmits its 0 and lights line 0."""
    cached = lit_lines(byte, rounds, rng, lost=lost, empty=empty, spurious=spurious,
                       zero_line=True)
    return reload_times(t, cached, rng)


def describe_times(times: Any, what: str = "reloads") -> str:
    """How a timing array appears in feedback: its shape and a few statistics, not 1000
    numbers."""
    try:
        a = np.asarray(times, dtype=float)
    except (TypeError, ValueError):
        return hex_or_repr(times)
    if a.ndim == 2:
        return f"<{a.shape[0]} rounds x {a.shape[1]} probe lines>"
    if a.ndim != 1 or not a.size:
        return hex_or_repr(times)
    return (f"<{a.size} {what}: median {np.median(a):.0f}, min {a.min():.0f}, "
            f"max {a.max():.0f} cycles>")


# --- exercise 1: the threshold --------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdRange:
    """The thresholds that classify at least :data:`MIN_ACCURACY` of a held-out set of
    fresh reloads correctly (a reload is a hit when its time is *below* the threshold)."""

    lo: float
    hi: float
    hits: np.ndarray
    misses: np.ndarray

    def accuracy(self, threshold: float) -> float:
        """Share of the held-out reloads that ``time < threshold`` classifies right."""
        right = np.count_nonzero(self.hits < threshold) + np.count_nonzero(
            self.misses >= threshold)
        return right / (self.hits.size + self.misses.size)

    def __repr__(self) -> str:
        return (f"a threshold from {self.lo:g} to {self.hi:g} cycles (it classifies at least "
                f"{MIN_ACCURACY:.1%} of {self.hits.size + self.misses.size} fresh reloads "
                "correctly)")

    __str__ = __repr__


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def threshold_range(t: Timing, rng: np.random.Generator) -> ThresholdRange:
    """The acceptable thresholds for this CPU model's timings, on fresh seeded reloads."""
    hits = reload_times(t, np.ones(HELD_OUT, bool), rng)
    misses = reload_times(t, np.zeros(HELD_OUT, bool), rng)
    grid = np.arange(1.0, float(np.median(misses)) * 2, 0.5)
    right = (np.searchsorted(np.sort(hits), grid, side="left")
             + misses.size - np.searchsorted(np.sort(misses), grid, side="left"))
    good = grid[right / (hits.size + misses.size) >= MIN_ACCURACY]
    if not good.size:  # a timing table whose clusters overlap cannot be thresholded
        raise ValueError(f"no threshold separates hits from misses for {t}")
    return ThresholdRange(float(good.min()), float(good.max()), hits, misses)


def engine_threshold(hit_times: Any, miss_times: Any) -> float:
    """libkdump's ``detect_flush_reload_threshold()``: (average miss + 2 * average hit) / 3,
    as :func:`kaiser_edu.attacks.flush_reload.calibrate` computes it."""
    return (float(np.mean(miss_times)) + 2 * float(np.mean(hit_times))) / 3


def threshold_cases(rng: random.Random) -> list[Case]:
    cases = []
    models = list(CPU_MODELS)
    plan = [(m, 1000, False) for m in models] + [(m, 1000, True) for m in models[:3]]
    plan += [(rng.choice(models), rng.choice((50, 200, 5000)), rng.random() < 0.5)
             for _ in range(6)]
    for model, n, interrupted in plan:
        gen = np.random.default_rng(rng.randrange(2**32))
        t = timing(model)
        hits = reload_times(t, np.ones(n, bool), gen)
        misses = reload_times(t, np.zeros(n, bool), gen)
        note = f"{model}, {n} samples of each"
        if interrupted:  # an interrupt landed in one cached reload: thousands of cycles
            hits[gen.integers(n)] += int(t.tail_cycles)
            note += "; an interrupt hit one cached reload"
        cases.append(Case((hits, misses), threshold_range(t, gen), note=note))
    return cases


def _same_threshold(expected: ThresholdRange, got: Any) -> bool:
    value = _as_float(got)
    return value is not None and expected.accuracy(value) >= MIN_ACCURACY


def _threshold_hint(case: Case, got: Any) -> str:
    hits, misses = case.args
    expected: ThresholdRange = case.expected
    value = _as_float(got)
    if value is None:
        return "Return the threshold as a number (cycles), e.g. a float."
    if value >= expected.hi:
        if value >= float(np.max(hits)) - 0.5 and np.max(hits) > np.median(misses):
            return ("Your threshold is at the slowest cached reload, and one of those took "
                    f"{int(np.max(hits))} cycles: an interrupt landed in its timed window. "
                    "Extremes are at the mercy of such outliers; use averages or medians "
                    "(libkdump: (average miss + 2 * average hit) / 3).")
        share = np.count_nonzero(expected.misses < value) / expected.misses.size
        return (f"Too high: {share:.1%} of flushed (uncached) reloads are faster than "
                f"{value:g} cycles, so they would count as cache hits. A threshold belongs "
                "between the two clusters.")
    share = np.count_nonzero(expected.hits >= value) / expected.hits.size
    return (f"Too low: {share:.1%} of cached reloads take {value:g} cycles or more, so they "
            "would count as misses. A threshold belongs between the two clusters, above "
            "the typical cached time plus its noise.")


def _format_samples(value: Any) -> str:
    return describe_times(value, "reloads")


check_threshold = Check(
    exercise="lab05-threshold",
    title="Exercise 1: calibrate the Flush+Reload threshold",
    function="calibrate_threshold",
    cases=threshold_cases,
    points=2,
    seed=50,
    hint=_threshold_hint,
    same=_same_threshold,
    format_arg=_format_samples,
    format_value=lambda v: repr(v) if isinstance(v, ThresholdRange) else hex_or_repr(v)
    if as_int(v) is None else str(v),
)


# --- exercise 2: one round of Flush+Reload ---------------------------------------------------


engine_hits = probe_hits  # libkdump's flush_reload(): end - start < threshold


def receiver_cases(rng: random.Random) -> list[Case]:
    cases = []
    plan = [("skylake", [0x41], "one line cached"), ("skylake", [], "no line cached"),
            ("haswell", [0], "only line 0: the zero bias"),
            ("skylake", [7, 200], "two lines cached"),
            ("zen2", [255], "the last line"), ("core2", [1, 2, 3], "neighbouring lines")]
    plan += [(rng.choice(list(CPU_MODELS)), sorted(rng.sample(range(LINES), rng.randrange(4))),
              "random") for _ in range(20)]
    for model, lines, note in plan:
        t = timing(model)
        gen = np.random.default_rng(rng.randrange(2**32))
        cached = np.zeros(LINES, bool)
        cached[lines] = True
        times = reload_times(t, cached, gen)
        threshold = round(engine_threshold(t.reload_hit, t.reload_miss))
        cases.append(Case((times, threshold), engine_hits(times, threshold),
                          note=f"{model}: {note}"))
    # A reload that took exactly the threshold is not a hit (libkdump: end - start < threshold).
    t = timing("skylake")
    times = reload_times(t, np.zeros(LINES, bool), np.random.default_rng(5))
    threshold = 120
    times[0x42] = threshold
    times[0x43] = threshold - 1
    cases.append(Case((times, threshold), engine_hits(times, threshold),
                      note="line 0x42 took exactly the threshold, 0x43 one cycle less"))
    return cases


def _hits_list(value: Any) -> list[int] | None:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        return None
    out = [as_int(v) for v in value]
    return None if any(v is None for v in out) else out


def _same_hits(expected: list[int], got: Any) -> bool:
    return _hits_list(got) == expected


def _receiver_hint(case: Case, got: Any) -> str:
    times, threshold = case.args
    hits = _hits_list(got)
    if hits is None:
        return "Return a list of ints: the probe lines (byte values) that were cached."
    expected = case.expected
    if sorted(hits) == expected:
        return "Those are the right lines, but list them in increasing order."
    if set(hits) == set(expected) | {v for v in range(LINES) if times[v] == threshold}:
        return ("A reload that took exactly the threshold is not a hit: compare with <, as "
                "libkdump's flush_reload() does (end - start < threshold).")
    if len(hits) == LINES - len(expected):
        return ("You returned the slow lines. A cached line reloads *fast*: keep the lines "
                "whose time is below the threshold.")
    if any(isinstance(v, float) for v in got):
        return "Return the line numbers as ints, not their times."
    if set(hits) == {int(v) for v in np.argsort(times)[:len(hits)]}:
        return ("Do not take a fixed number of fastest lines: a round may have no hit at all, "
                "or several. Compare each time with the threshold.")
    return "A line is a hit when its reload time is below the threshold; return those lines."


check_receiver = Check(
    exercise="lab05-receiver",
    title="Exercise 2: the Flush+Reload receiver",
    function="probe_hits",
    cases=receiver_cases,
    points=2,
    seed=51,
    hint=_receiver_hint,
    same=_same_hits,
    format_arg=lambda v: describe_times(v, "probe-line reloads") if isinstance(
        v, np.ndarray) else repr(v),
    format_value=hex_or_repr,
)


# --- exercise 3: the byte, over retries ---------------------------------------------------------


def engine_decode(rounds: Any, threshold: float) -> int:
    """libkdump's vote: the nonzero value whose line lit in the most rounds, or 0 if no
    nonzero line lit twice (:func:`kaiser_edu.widgets.meltdown.decode`)."""
    return decode(rounds, threshold)[0]


def decoder_cases(rng: random.Random) -> list[Case]:
    cases = []
    plan = [
        ("skylake", 0x54, 20, 0.0, 0.0, "every attempt won the race"),
        ("skylake", 0x68, 30, 0.7, 0.0, "70% of attempts lost the race: line 0 lit"),
        ("haswell", 0x65, 40, 0.6, 0.05, "lost races and stray lines"),
        ("skylake", 0x00, 20, 0.5, 0.0, "the byte is 0"),
        ("skylake", 0x00, 20, 0.5, 0.0, "the byte is 0, and one stray line lit once"),
        ("zen2", 0x00, 25, 0.5, 0.0, "the byte is 0, on another CPU's timings"),
        ("skylake", 0x01, 30, 0.8, 0.0, "byte 0x01, most attempts lost"),
        ("core2", 0xFF, 30, 0.5, 0.03, "byte 0xff"),
    ]
    plan += [(rng.choice(list(CPU_MODELS)), rng.choice([0] + list(range(1, LINES))),
              rng.choice((10, 30, 100)), rng.uniform(0.2, 0.85), rng.uniform(0, 0.08),
              "random") for _ in range(25)]
    for model, byte, n, lost, spurious, note in plan:
        t = timing(model)
        threshold = round(engine_threshold(t.reload_hit, t.reload_miss))
        for _attempt in range(50):  # redraw until the rounds carry the byte unambiguously
            gen = np.random.default_rng(rng.randrange(2**32))
            rounds = transient_rounds(t, byte, n, gen, lost=lost,
                                      spurious=spurious if byte else 0.0)
            if _unambiguous(rounds, threshold, byte):
                break
        else:  # pragma: no cover - the parameters above always give clear rounds
            raise ValueError(f"could not draw clear rounds for byte {byte:#x}")
        if "stray" in note and byte == 0:  # one unrelated access lit one line, once
            rounds[gen.integers(n), gen.integers(1, LINES)] = round(t.reload_hit)
        cases.append(Case((rounds, threshold), byte, note=f"{model}: {note}"))
    return cases


def _unambiguous(rounds: np.ndarray, threshold: float, byte: int) -> bool:
    """The rounds decode to ``byte`` with a clear margin, and a decoder that counts line 0
    would be wrong where the zero bias matters."""
    votes = np.count_nonzero(rounds < threshold, axis=0)
    nonzero = votes[1:]
    if byte == 0:
        return nonzero.max(initial=0) == 0  # a stray line is added afterwards, on purpose
    others = np.delete(nonzero, byte - 1)
    return votes[byte] >= 2 and votes[byte] > others.max(initial=0) + 1


def _same_byte(expected: int, got: Any) -> bool:
    return as_int(got) == expected


def _decoder_hint(case: Case, got: Any) -> str:
    rounds, threshold = case.args
    value = as_int(got)
    if value is None:
        return "Return the byte as an int from 0 to 255."
    if not 0 <= value < LINES:
        return f"{value} is not a byte value: the probe array has 256 lines, 0..255."
    votes = np.count_nonzero(np.asarray(rounds) < threshold, axis=0)
    byte = case.expected
    if value == 0 and byte != 0:
        return (f"Line 0 lit in {votes[0]} of {len(rounds)} rounds, line {byte:#x} in "
                f"{votes[byte]}. A transient load that loses the race leaves 0 in the "
                "register, so line 0 lights whatever the secret is (the zero bias): do not "
                "count it; read 0 only when no other line lit in 2 rounds or more.")
    if byte == 0 and votes[value] == 1:
        return (f"Line {value:#x} lit in one round only: an unrelated access can do that. "
                "Accept a nonzero line only if it lit in at least 2 rounds; otherwise the "
                "byte reads as 0.")
    if byte == 0:
        return (f"No round lit any line but 0, yet you returned {value:#x}. With nothing "
                "else to go on, the byte is read as 0 (libkdump returns 0 when no nonzero "
                "value was ever seen).")
    if votes[value] >= 1:
        return (f"Line {value:#x} lit in {votes[value]} rounds, line {byte:#x} in "
                f"{votes[byte]}. One round can light a stray line too: count, over all "
                "rounds, how often each line lit, and take the most frequent nonzero one.")
    return ("For each round find the lines below the threshold (your probe_hits), count per "
            "line over all rounds, ignore line 0, and return the most frequent line.")


check_decoder = Check(
    exercise="lab05-decoder",
    title="Exercise 3: decode a byte over retries, zero bias included",
    function="decode_byte",
    cases=decoder_cases,
    points=3,
    seed=52,
    hint=_decoder_hint,
    same=_same_byte,
    format_arg=lambda v: describe_times(v) if isinstance(v, np.ndarray) else repr(v),
    format_value=hex_or_repr,
)



# --- exercise 4: the decoder on the simulated machine -------------------------------------------

#: The machines of exercise 4: (isolation, CPU model, target, seed).
MACHINE_RUNS = (("off", "skylake", "secret", 1), ("off", "haswell", "victim", 2),
                ("pti", "skylake", "secret", 3), ("off", "zen2", "secret", 4))
RETRIES = 12  # attempts per byte in exercise 4


def machine_rounds(m, address: int, length: int, seed: int,
                   retries: int = RETRIES) -> tuple[list[np.ndarray], np.ndarray, list[int]]:
    """Rounds made by the simulated machine for ``length`` bytes at ``address``
    (:func:`kaiser_edu.attacks.meltdown.observe`): the attacker's transient loads are decided
    on the MMU under its CR3, each attempt forwards with the attack model's chance (a lost race
    transmits nothing, as with libkdump's ``jz`` loop), and every probe line's reload is
    timed. Returns (rounds per byte, the calibration's hit and miss samples stacked, what each
    load forwarded: the byte, or 0 for nothing)."""
    obs = observe(m.kernel, m.attacker, address, length, retries=retries, seed=seed)
    forwarded = [int(v) if f else 0 for f, v in zip(obs.loads.forwarded, obs.loads.value)]
    return list(obs.times), np.stack([obs.hits, obs.misses]), forwarded


def machine_cases(rng: random.Random) -> list[Case]:
    """Rounds of reload times made by the simulated machine itself (:func:`machine_rounds`).
    The expected answer is the byte the load forwards, and 0 where it forwards nothing
    (KAISER/PTI, a CPU that is not affected): there the only right decoding is "nothing",
    not a guess."""
    cases = []
    for isolation, cpu, target, seed in MACHINE_RUNS:
        m = machine(isolation, cpu, seed=seed)
        address, size = m.target(target)
        rounds, (hits, misses), forwarded = machine_rounds(m, address, size,
                                                           rng.randrange(2**31))
        threshold = round(engine_threshold(hits, misses))
        for i, (r, expected) in enumerate(zip(rounds, forwarded)):
            what = "forwarded" if expected else "nothing forwarded"
            cases.append(Case((r, threshold), expected,
                              note=f"{isolation}, {cpu}: byte {i} of {TARGETS[target]}, {what}"))
    return cases


def leak_with(isolation: str, cpu: str, target: str, calibrator: Callable[..., Any],
              decoder: Callable[..., Any], seed: int = 0) -> tuple[bytes, bytes | None]:
    """Meltdown on a fresh machine with the student's calibration and decoder: (the bytes
    decoded, the truth as the kernel reads it through its own mapping)."""
    m = machine(isolation, cpu, seed=seed)
    address, size = m.target(target)
    rounds, (hits, misses), _ = machine_rounds(m, address, size, seed)
    threshold = float(calibrator(hits, misses))
    data = bytes(int(decoder(r, threshold)) & 0xFF for r in rounds)
    return data, kernel_view(m.kernel, m.attacker, address, size)


def _machine_hint(case: Case, got: Any) -> str:
    if "nothing forwarded" in case.note:
        return ("On this machine the transient load forwards nothing (the walk on the "
                "attacker's CR3 finds no translation, or the CPU is not affected): every "
                "attempt lights line 0 at most, plus the odd stray line. The right answer is "
                "0, 'nothing read', never a guess: ignore line 0 and lines seen only once. "
                + _decoder_hint(case, got))
    return _decoder_hint(case, got)


check_machine = Check(
    exercise="lab05-machine",
    title="Exercise 4: your decoder against the simulated machine",
    function="decode_byte",
    cases=machine_cases,
    points=2,
    seed=53,
    hint=_machine_hint,
    same=_same_byte,
    format_arg=lambda v: describe_times(v) if isinstance(v, np.ndarray) else repr(v),
    format_value=hex_or_repr,
)

CHECKS = (check_threshold, check_receiver, check_decoder, check_machine)

# Graded runs: the answers get numpy (the setup cell's np) and timing arrays, nothing else.
ANSWER_KIT = AnswerKit(modules={"np": "numpy"})
