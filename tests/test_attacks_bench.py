"""The attack measurements of ``kaiser-edu bench`` record their figures (no timing asserted:
CI machines are shared; the targets are read from a full run)."""

from __future__ import annotations

import math

from kaiser_edu.perf import bench


def test_attack_measurements_record_their_keys():
    b = bench.Bench(reps=1)
    assert "Meltdown, 4 KiB" in bench.attack_meltdown_4k(b)
    assert "correct" in bench.attack_kaslr(b) and "WRONG" not in bench.attack_kaslr(b)
    for key in ("attack_leak_4k_s", "attack_leak_4k_mmu_s", "attack_leak_4k_accuracy",
                "attack_leak_4k_sim_bytes_per_s", "attack_kaslr_s",
                "attack_kaslr_double_fault_s", "attack_kaslr_entrybleed_s"):
        assert math.isfinite(b.results[key]) and b.results[key] > 0, key
    assert b.results["attack_leak_4k_accuracy"] >= 0.99
    labels = {t.label for t in bench.TARGETS}
    assert {"attack_leak_4k_s <= 2", "attack_kaslr_s <= 1"} <= labels
