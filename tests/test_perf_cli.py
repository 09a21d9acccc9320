"""``kaiser-edu perf``: every workload from the command line, JSON, CSV, plots, errors."""

from __future__ import annotations

import csv
import json

import pytest

from kaiser_edu import cli
from kaiser_edu.kernel.timing import TIMINGS
from kaiser_edu.perf import cli as perf_cli
from kaiser_edu.perf import workloads as W
from kaiser_edu.perf.trace import replay  # noqa: F401  (importable)

TRACE = "kaiser_edu/perf/traces/wordfreq.lackey.gz"


def run(capsys, *argv):
    code = cli.main(["perf", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_registered_and_choices_match_the_package():
    assert cli.SUBCOMMANDS["perf"][0] == "kaiser_edu.perf.cli"
    assert set(perf_cli.MODE_NAMES) == set(W.MODES)
    assert set(perf_cli.CPU_NAMES) == set(TIMINGS)


def test_syscall_json_has_the_figures_and_the_counters(capsys):
    code, out, _ = run(capsys, "syscall", "--mode", "pti-nopcid", "--work-cycles", "0",
                       "--working-set-kib", "4", "--calls", "50", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["cycles_per_call"] > 0 and d["calls_per_s"] > 0 and d["overhead"] > 0.5
    assert d["counters"]["mmu"]["cr3_writes"] == 2 * d["counters"]["calls"]
    assert d["calls_per_s"] == pytest.approx(4.0e9 / d["cycles_per_call"])


def test_syscall_text_csv_and_plot(capsys, tmp_path):
    png, table = tmp_path / "s.png", tmp_path / "s.csv"
    code, out, _ = run(capsys, "syscall", "--calls", "20", "--csv", str(table),
                       "--plot", str(png))
    assert code == 0 and "overhead" in out and "cycles per call" in out
    assert png.stat().st_size > 1000
    with open(table) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["mode"] == "pti" and float(rows[0]["cycles_per_call"]) > 0


def test_context_switch_working_set_and_sweep(capsys, tmp_path):
    code, out, _ = run(capsys, "context-switch", "--processes", "7", "--rounds", "3", "--json")
    assert code == 0 and json.loads(out)["counters"]["mmu"]["flushes"] > 0
    code, out, _ = run(capsys, "working-set", "--mode", "pti-nopcid", "--working-sets",
                       "64,1024", "--json")
    assert code == 0 and {r["pages"] for r in json.loads(out)["rows"]} == {"4k", "2m"}
    code, out, err = run(capsys, "sweep", "--rates", "1e4,1e5", "--working-sets", "16,256",
                         "--modes", "pti-nopcid", "--calls", "8", "--plot",
                         str(tmp_path / "g.png"))
    assert code == 0 and "overhead of pti-nopcid" in out
    assert (tmp_path / "g.png").is_file()


def test_trace_and_calibrate(capsys):
    code, out, _ = run(capsys, "trace", TRACE, "--mode", "pti", "--limit", "100000", "--json")
    d = json.loads(out)
    assert code == 0 and d["trace"]["accesses"] == 100_000 and d["overhead"] > 0
    code, out, _ = run(capsys, "calibrate")
    assert code == 0 and "entry_work" in out and "residual" in out and "published" in out


@pytest.mark.parametrize("argv, message", [
    (["syscall", "--working-set-kib", "0"], "working set"),
    (["trace", "/no/such/trace.gz"], "does not exist"),
    (["syscall", "--plot", "/no/such/dir/x.png"], "folder does not exist"),
    (["syscall", "--plot", "x.svg"], ".png"),
    (["context-switch", "--processes", "0"], "processes"),
    (["sweep", "--modes", "pti,warp"], "unknown mode 'warp'"),
])
def test_bad_input_is_one_line_and_status_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1 and out == ""


def test_a_malformed_trace_names_its_line(capsys, tmp_path):
    bad = tmp_path / "bad.lackey"
    bad.write_text("I  04001e50,3\n L nothex,8\n")
    code, _, err = run(capsys, "trace", str(bad))
    assert code == 2 and ":2:" in err and "nothex" in err
