"""Lesson 05's model functions and widgets (kaiser_edu.widgets.meltdown): the transient load's
verdict comes from the walk on the attacker's CR3, the window's steps, the per-line
Flush+Reload rounds, and the views driven as a student would."""

from __future__ import annotations

import numpy as np
import pytest

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.kernel.timing import timing
from kaiser_edu.widgets import meltdown as M


@pytest.fixture(scope="module")
def machines():
    return {iso: M.machine(iso, "skylake", seed=4) for iso in ("off", "kaiser", "pti")}


def test_secret_forwards_only_without_isolation(machines):
    off = machines["off"]
    load = M.transient_load(off.kernel, off.attacker, off.target("secret")[0])
    assert load.forwarded and load.value == ord("T") and load.error_code == 0x5
    assert load.walk_end == "PMD"  # the image's 2 MiB page
    for iso in ("kaiser", "pti"):
        m = machines[iso]
        load = M.transient_load(m.kernel, m.attacker, m.target("secret")[0])
        assert not load.forwarded and load.value is None and load.error_code == 0x4


def test_direct_map_walk_stops_at_the_pgd_under_pti(machines):
    m = machines["pti"]
    load = M.transient_load(m.kernel, m.attacker, m.target("victim")[0])
    assert not load.forwarded and load.walk_end == "PGD"
    assert "not-present PGD" in load.reason


def test_cpu_entry_area_stays_readable_under_pti(machines):
    m = machines["pti"]
    load = M.transient_load(m.kernel, m.attacker, m.target("cea")[0])
    assert load.forwarded and load.error_code == 0x5


def test_unaffected_cpu_forwards_nothing():
    m = M.machine("off", "zen2")
    load = M.transient_load(m.kernel, m.attacker, m.target("secret")[0])
    assert not load.forwarded and load.error_code == 0x5
    assert "not affected" in load.reason


def test_stepper_leaves_a_line_only_when_forwarded():
    s = M.TransientStepper()
    assert len(s._steps) == 6
    s.step.value = 0
    assert s.cached_line() is None  # before the dependent access
    s.step.value = s.step.max
    assert s.cached_line() == ord("T") and "line 0x54" in s.text
    s.isolation.value = "pti"
    s.step.value = s.step.max
    assert s.cached_line() is None and "none" in s.text


def test_lit_lines_and_decode():
    rng = np.random.default_rng(0)
    t = timing("skylake")
    lit = M.lit_lines(0x41, 50, rng, lost=0.5, zero_line=True)
    assert set(np.flatnonzero(lit.any(axis=0))) <= {0, 0x41}
    rounds = M.reload_times(t, lit, rng)
    assert M.decode(rounds, 150)[0] == 0x41
    nothing = M.reload_times(t, M.lit_lines(None, 20, rng), rng)
    assert M.decode(nothing, 150) == (0, 0.0)
    assert M.probe_hits(rounds[np.flatnonzero(lit[:, 0x41])[0]], 150) == [0x41]


def test_meltdown_lab_view():
    w = M.MeltdownLab()
    assert "The KAISER secret" in w.text and "100%" in w.text
    w.isolation.value = "pti"
    assert "0 of 54" in w.text and "not-present" in w.text
    w.cpu.value = "zen2"
    w.isolation.value = "off"
    assert "not affected" in w.text
    assert repr(w) == "MeltdownLab(isolation='off', cpu='zen2', target='secret')"


def test_bad_input():
    with pytest.raises(KaiserEduError, match="unknown isolation mode"):
        M.machine("none")
    with pytest.raises(KaiserEduError, match="unknown target"):
        M.machine("off").target("stack")


def test_run_again_takes_the_next_seed():
    w = M.MeltdownLab()
    first = w.result["address"]
    w.run_button.click()
    assert w.seed == 1 and "(seed 1)" in w.text
    assert w.result["address"] != first  # another boot: KASLR moved the secret
    assert "100%" in w.text


def test_idt_gate_stays_readable_under_pti(machines):
    from kaiser_edu.attacks.meltdown import leak

    m = machines["pti"]
    address, size = m.target("cea")
    r = leak(m.kernel, m.attacker, address, size, seed=1)
    assert r.data == r.truth and r.recovered.sum() == sum(b != 0 for b in r.truth) > 4
