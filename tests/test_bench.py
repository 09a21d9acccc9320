"""``kaiser-edu bench``: a smoke run at a tiny scale, and the PASS/MISS logic.

No timing is asserted: CI machines are shared and slow; the benchmark's targets are read
by people from a full-scale run.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest

from kaiser_edu import cli
from kaiser_edu.perf import bench

REQUIRED = (
    "hit_ns", "random_ns", "reference_hit_ns", "reference_random_ns", "floor_ns",
    "warm_start_s", "peak_rss_mib_1e6_pages",
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_registered_as_subcommand():
    assert cli.SUBCOMMANDS["bench"][0] == "kaiser_edu.perf.bench"


def test_smoke_json(capsys):
    """The whole benchmark at 1% size, one repetition: every key, sane values."""
    assert bench.run(parse("--json", "--scale", "0.01", "--reps", "1")) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    for key in REQUIRED:
        value = out[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    # Every measurement printed its progress line (to stderr, since stdout is the JSON).
    assert captured.err.count("] ") >= len(bench.MEASUREMENTS)
    # What the traces exercised: (a) almost all L1 hits, (b) mostly misses of L1.
    assert out["hit_l1_hit_rate"] > 0.99
    assert out["random_l1_hit_rate"] < 0.5
    assert out["hit_accesses"] == bench.Bench(scale=0.01).size(bench.HIT_ACCESSES)
    numbers = {k: v for k, v in out.items() if isinstance(v, float)}
    assert all(math.isfinite(v) and v >= 0 for v in numbers.values()), numbers
    assert {t["target"] for t in out["targets"]} == {t.label for t in bench.TARGETS}
    assert all(lo <= hi for lo, hi in out["spread"].values())


def fake_measurements(values: dict[str, float]) -> list[bench.Measurement]:
    def fake(b: bench.Bench) -> str:
        for key, value in values.items():
            b.record(key, value)
        return "fake"

    return [fake]


GOOD = {
    "hit_ns": 5.0, "floor_ns": 2.5, "random_ns": 30.0, "reference_hit_ns": 600.0,
    "reference_random_ns": 10000.0, "warm_start_s": 0.5, "peak_rss_mib_1e6_pages": 300.0,
    "syscall_off_per_s": 12e6, "syscall_pti_pcid_per_s": 11e6, "syscall_pti_nopcid_per_s": 2e6,
    "perf_sweep_s": 2.0, "perf_syscall_ns": 100.0, "syscall_pti_pcid_ns": 90.0,
}
GOOD.update({"attack_leak_4k_s": 0.5, "attack_leak_4k_accuracy": 1.0, "attack_kaslr_s": 0.4})


def test_targets_pass_and_miss():
    assert all(ok for _, _, ok in bench.evaluate(GOOD))
    slow = dict(GOOD, hit_ns=7.0)  # misses <= 6 ns, and 2.8x floor; still 86x reference
    missed = {t.label for t, _, ok in bench.evaluate(slow) if not ok}
    assert missed == {"hit_ns <= 6", "hit_ns / floor_ns <= 2.5", "reference_hit_ns / hit_ns >= 100"}
    rows = bench.evaluate(slow)
    value = {t.label: v for t, v, _ in rows}
    assert value["hit_ns / floor_ns <= 2.5"] == pytest.approx(2.8)


def test_unmeasured_target_is_a_miss():
    partial = {k: v for k, v in GOOD.items() if k != "floor_ns"}
    rows = bench.evaluate(partial)
    row = next(r for r in rows if r[0].per == "floor_ns")
    assert math.isnan(row[1]) and not row[2]
    assert "not run" in bench.format_table(rows)


def test_table_and_exit_status(monkeypatch, capsys):
    monkeypatch.setattr(bench, "MEASUREMENTS", fake_measurements(GOOD))
    assert bench.run(parse("--check")) == 0
    table = capsys.readouterr().out
    assert table.count("PASS") == len(bench.TARGETS) and "MISS" not in table

    monkeypatch.setattr(bench, "MEASUREMENTS", fake_measurements(dict(GOOD, random_ns=50.0)))
    assert bench.run(parse()) == 0  # a miss is reported, not an error...
    table = capsys.readouterr().out
    assert "MISS" in next(line for line in table.splitlines() if "random_ns <= 40" in line)
    assert bench.run(parse("--check")) == 1  # ...unless --check
    capsys.readouterr()
    assert bench.run(parse("--check", "--json")) == 1
    out = json.loads(capsys.readouterr().out)
    assert [t["pass"] for t in out["targets"]].count(False) == 1


def test_bad_arguments():
    assert bench.run(parse("--scale", "0")) == 2
    assert bench.run(parse("--reps", "0")) == 2
