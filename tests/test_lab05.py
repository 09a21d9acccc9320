"""Lab 05 (the Flush+Reload receiver): typical wrong answers and their feedback, the cases
cover what they claim, and the machine's rounds follow the attack model. The rules every lab
must satisfy are in test_labs.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from lab_helpers import assert_feedback

from kaiser_edu.course import checks as ck
from kaiser_edu.course import exercises as ex
from kaiser_edu.course.labs import lab05

REPO = Path(__file__).resolve().parents[1]
SOLVED = ex.answer_namespace(REPO / "solutions" / "lab05_flush_reload.ipynb")
probe_hits = SOLVED["probe_hits"]
decode_byte = SOLVED["decode_byte"]


def test_slowest_hit_as_threshold_fails_on_an_interrupt():
    result = lab05.check_threshold(lambda hits, misses: float(np.max(hits)))
    assert_feedback(result, ck.FAILED, ["an interrupt landed in its timed window",
                                        "use averages or medians"])


def test_a_threshold_below_the_hits_is_too_low():
    result = lab05.check_threshold(lambda hits, misses: float(np.min(hits)))
    assert_feedback(result, ck.FAILED, ["Too low"])


def test_medians_midpoint_passes_too():
    """Any threshold that separates fresh reloads is accepted, not only libkdump's."""
    result = lab05.check_threshold(lambda h, m: (np.median(h) + np.median(m)) / 2)
    assert result.status == ck.PASSED, result.text()


def test_receiver_with_less_or_equal_is_caught():
    result = lab05.check_receiver(
        lambda times, thr: [int(v) for v in np.flatnonzero(np.asarray(times) <= thr)])
    assert_feedback(result, ck.FAILED, ["exactly the threshold is not a hit"])


def test_receiver_returning_slow_lines():
    result = lab05.check_receiver(
        lambda times, thr: [int(v) for v in np.flatnonzero(np.asarray(times) >= thr)])
    assert_feedback(result, ck.FAILED, ["You returned the slow lines"])


def test_decoder_counting_line_zero_gets_the_zero_bias_hint():
    def naive(rounds, threshold):
        return int(np.argmax(np.count_nonzero(np.asarray(rounds) < threshold, axis=0)))

    assert_feedback(lab05.check_decoder(naive), ck.FAILED, ["the zero bias"])


def test_decoder_trusting_one_stray_line_is_caught():
    def one_vote(rounds, threshold):
        votes = np.count_nonzero(np.asarray(rounds) < threshold, axis=0)
        votes[0] = 0
        return int(np.argmax(votes)) if votes.max() else 0

    assert_feedback(lab05.check_decoder(one_vote), ck.FAILED, ["lit in one round only"])


def test_decoder_cases_trap_the_zero_bias():
    cases = lab05.decoder_cases(random.Random(lab05.check_decoder.seed))
    biased = 0
    for case in cases:
        rounds, threshold = case.args
        votes = np.count_nonzero(rounds < threshold, axis=0)
        assert lab05.engine_decode(rounds, threshold) == case.expected
        biased += case.expected != 0 and votes[0] > votes[case.expected]
    assert biased >= 5
    assert any(c.expected == 0 for c in cases) and any(c.expected == 0xFF for c in cases)


def test_machine_cases_follow_the_attack_model():
    cases = lab05.machine_cases(random.Random(lab05.check_machine.seed))
    by_machine = {}
    for case in cases:
        by_machine.setdefault(case.note.split(":")[0], []).append(case.expected)
    assert bytes(by_machine["off, skylake"]).startswith(b"The KAISER secret")
    assert bytes(by_machine["off, haswell"]).startswith(b"Victim's password")
    assert set(by_machine["pti, skylake"]) == {0}  # nothing forwarded under PTI
    assert set(by_machine["off, zen2"]) == {0}  # not affected
    assert lab05.check_machine(decode_byte).status == ck.PASSED


def test_leak_with_the_students_functions():
    data, truth = lab05.leak_with("off", "skylake", "secret", lambda h, m: 150.0, decode_byte)
    assert data == truth
    data, truth = lab05.leak_with("pti", "skylake", "secret", lambda h, m: 150.0, decode_byte)
    assert data == bytes(len(truth))
