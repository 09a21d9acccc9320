"""``kaiser-edu perf``: what isolation costs, measured on the simulated machine.

    kaiser-edu perf syscall --mode pti-nopcid --work-cycles 2000 --working-set-kib 64
    kaiser-edu perf context-switch --mode pti --processes 7
    kaiser-edu perf working-set --mode pti-nopcid --rate 50000
    kaiser-edu perf trace kaiser_edu/perf/traces/wordfreq.lackey.gz --mode pti
    kaiser-edu perf sweep            (Gregg's figure: rates x working sets x modes)
    kaiser-edu perf calibrate        (the fit on Hansen's lseek1 and the comparison table)

Every subcommand takes ``--cpu``, ``--json`` (one JSON object on stdout), ``--csv FILE``
and ``--plot FILE.png``. Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from kaiser_edu.errors import KaiserEduError

MODE_NAMES = ("off", "kaiser", "pti", "pti-nopcid")
CPU_NAMES = ("skylake", "haswell", "westmere", "core2", "icelake", "zen2")


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="workload", metavar="WORKLOAD", required=True)

    def common(p: argparse.ArgumentParser, mode: bool = True) -> None:
        if mode:
            p.add_argument("--mode", choices=MODE_NAMES, default="pti",
                           help="isolation mode (default pti; overhead is against off)")
        p.add_argument("--cpu", choices=CPU_NAMES, default="skylake",
                       help="CPU model: its features and its cycle-cost preset")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.add_argument("--csv", metavar="FILE", help="also write the figures as CSV")
        p.add_argument("--plot", metavar="FILE.png", help="also draw the figure")

    p = sub.add_parser("syscall", help="a loop of system calls with user work in between")
    common(p)
    p.add_argument("--work-cycles", type=float, default=2000,
                   help="user work between two calls, in cycles (default 2000)")
    p.add_argument("--working-set-kib", type=float, default=64,
                   help="memory the user work touches, KiB (default 64)")
    p.add_argument("--calls", type=int, default=200, help="calls simulated (default 200)")
    p.add_argument("--huge", action="store_true", help="map the working set with 2 MiB pages")
    p.add_argument("--touch-cycles", type=float, default=200,
                   help="user cycles per touched page (default 200, assumed)")

    p = sub.add_parser("context-switch", help="ping-pong between N processes")
    common(p)
    p.add_argument("--processes", type=int, default=2, help="processes (default 2)")
    p.add_argument("--rounds", type=int, default=20, help="rounds of switches (default 20)")
    p.add_argument("--work-cycles", type=float, default=20_000,
                   help="user work per time slice, cycles (default 20000)")
    p.add_argument("--working-set-kib", type=float, default=64,
                   help="each process's working set, KiB (default 64)")

    p = sub.add_parser("working-set", help="overhead against working set, 4 KiB vs 2 MiB")
    common(p)
    p.add_argument("--rate", type=float, default=5e4,
                   help="system calls per second (default 50000)")
    p.add_argument("--working-sets", type=_floats, default=None,
                   help="comma-separated KiB (default 16,...,65536)")

    p = sub.add_parser("trace", help="replay a valgrind lackey trace (.gz accepted)")
    common(p)
    p.add_argument("file", help="the trace (valgrind --tool=lackey --trace-mem=yes)")
    p.add_argument("--syscall-every", type=int, default=None,
                   help="also inject a system call every N accesses")
    p.add_argument("--no-marks", action="store_true",
                   help="ignore the trace's SYSCALL[...] / #syscall marks")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N accesses")

    p = sub.add_parser("sweep", help="Gregg's figure: rates x working sets x modes")
    common(p, mode=False)
    p.add_argument("--modes", default="kaiser,pti,pti-nopcid",
                   help="comma-separated modes (off is always the baseline)")
    p.add_argument("--rates", type=_floats, default=None, help="comma-separated calls/s")
    p.add_argument("--working-sets", type=_floats, default=None, help="comma-separated KiB")
    p.add_argument("--huge", action="store_true", help="2 MiB pages for the working set")
    p.add_argument("--calls", type=int, default=64, help="calls per point (default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("calibrate", help="fit on Hansen's lseek1; compare with published")
    common(p, mode=False)


def _report_rows(report) -> list[dict]:
    d = report.as_dict()
    row = {k: d[k] for k in ("mode", "cpu", "cycles_per_call", "calls_per_s", "overhead")}
    row.update({f"cycles_{k}": v for k, v in d["breakdown_cycles_per_call"].items()})
    row.update({f"count_{k}": v for k, v in d["counters"]["mmu"].items()})
    row["kernel_entries"] = d["counters"]["kernel_entries"]
    row["calls"] = d["counters"]["calls"]
    return [row]


def _text_report(report, what: str) -> str:
    def num(v: float) -> str:  # per-instruction figures of a trace are small
        return f"{v:,.1f}" if abs(v) >= 10 or v == 0 else f"{v:.4f}"

    lines = [f"{what}: {report.mode} on {report.cpu}",
             f"  cycles per call  {num(report.cycles_per_call)}",
             f"  calls per second {report.calls_per_s:,.0f}"]
    if report.overhead is not None:
        lines.append(f"  overhead         {report.overhead:+.2%} "
                     f"(off: {num(report.baseline_cycles_per_call)} cycles per call)")
    lines.append("  where the cycles go (per call):")
    lines += [f"    {k:<15} {num(v):>12}" for k, v in report.breakdown.items() if v]
    m = report.counts.mmu
    n = report.counts.calls
    lines.append(f"  counters per call: TLB L1 hits {num(m['l1_hits'] / n)}, L2 hits "
                 f"{num(m['l2_hits'] / n)}, walks {num(m['walks'] / n)}, CR3 writes "
                 f"{num(m['cr3_writes'] / n)}, flushes {num(m['flushes'] / n)}")
    lines.append(f"  totals: {n:,} calls, {m['walks']:,} walks, {m['cr3_writes']:,} CR3 "
                 f"writes, {m['flushes']:,} flushes, {report.counts.kernel_entries:,} "
                 "kernel entries")
    return "\n".join(lines)


def _write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _save(ax, path: str) -> None:
    import matplotlib.pyplot as plt

    if ax.figure.get_layout_engine() is None:  # plots' own figures lay themselves out
        ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)  # the figure came from pyplot: do not leave it registered there


def _check_outputs(args) -> None:
    for name in ("csv", "plot"):
        path = getattr(args, name, None)
        if path and not Path(path).resolve().parent.is_dir():
            raise KaiserEduError(f"--{name} {path}: the folder does not exist")
    if args.plot and not args.plot.endswith(".png"):
        raise KaiserEduError(f"--plot must name a .png file, got {args.plot!r}")


def run(args: argparse.Namespace) -> int:
    try:
        _check_outputs(args)
        out, rows, draw, text = _dispatch(args)
    except KaiserEduError as e:
        print(f"kaiser-edu perf: error: {e}", file=sys.stderr)
        return 2
    if args.csv:
        _write_csv(args.csv, rows)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        _save(draw(), args.plot)
    print(json.dumps(out, indent=1, default=float) if args.json else text)
    return 0


def _dispatch(args):
    """(JSON object, CSV rows, figure drawer, text) for the chosen workload."""
    from kaiser_edu.perf import plots
    from kaiser_edu.perf import workloads as W

    wl = args.workload
    if wl == "syscall":
        r = W.syscall(args.mode, args.cpu, args.work_cycles, args.working_set_kib, args.calls,
                      args.huge, args.touch_cycles)
        return (r.as_dict(), _report_rows(r), lambda: plots.breakdown_bars({args.mode: r}),
                _text_report(r, "syscall loop"))
    if wl == "context-switch":
        r = W.context_switch(args.mode, args.cpu, args.processes, args.rounds,
                             args.work_cycles, args.working_set_kib)
        return (r.as_dict(), _report_rows(r), lambda: plots.breakdown_bars({args.mode: r}),
                _text_report(r, f"context switches between {args.processes} processes"))
    if wl == "trace":
        from kaiser_edu.perf.trace import replay_report

        r, stats = replay_report(args.file, args.mode, args.cpu, args.syscall_every,
                                 not args.no_marks, args.limit, progress=True)
        out = r.as_dict() | {"trace": stats.__dict__, "file": args.file,
                             "call": "one traced instruction"}
        text = (_text_report(r, f"trace {args.file}") + f"\n  trace: {stats.accesses:,} "
                f"accesses, {stats.instructions:,} instructions, {stats.pages:,} pages, "
                f"{stats.syscalls:,} system calls (a call = one instruction)")
        return out, _report_rows(r), lambda: plots.breakdown_bars({args.mode: r}), text
    if wl == "working-set":
        sets = args.working_sets or W.GREGG_WORKING_SETS_KIB
        res = W.working_set(args.mode, args.cpu, args.rate, sets, progress=True)
        rows = [row | {"pages": name} for name, s in res.items() for row in s.as_rows()]
        text = "\n".join([f"working set at {args.rate:,.0f} calls/s, {args.mode} on {args.cpu}",
                          f"  {'KiB':>8}  {'4 KiB pages':>12}  {'2 MiB pages':>12}"]
                         + [f"  {ws:>8g}  {res['4k'].overhead[0, 0, i]:>12.2%}  "
                            f"{res['2m'].overhead[0, 0, i]:>12.2%}" for i, ws in enumerate(sets)])
        return {"rows": rows}, rows, lambda: plots.working_set_curves(res), text
    if wl == "sweep":
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        for m in modes:
            W.check_mode(m)
        s = W.sweep(args.rates or W.GREGG_RATES, args.working_sets or W.GREGG_WORKING_SETS_KIB,
                    modes, args.cpu, args.huge, args.calls, progress=not args.no_progress)
        rows = s.as_rows()
        text = _sweep_text(s)
        return {"rows": rows}, rows, lambda: plots.sweep_curves(s), text
    if wl == "calibrate":
        from kaiser_edu.perf import calibrate as C

        f = C.fit(args.cpu)
        comp = C.comparison(args.cpu, f)
        out = {"params": f.params, "fit": f.table(), "prior_residual": f.prior_residual,
               "comparison": [c.as_dict() for c in comp]}
        return out, f.table(), lambda: plots.fit_bars(f), _calibration_text(f, comp)
    raise KaiserEduError(f"unknown workload {wl!r}")


def _sweep_text(s) -> str:
    lines = []
    for m, mode in enumerate(s.modes):
        lines.append(f"overhead of {mode} on {s.cpu} (rows: calls/s; columns: working set KiB)")
        lines.append(f"{'':>10}" + "".join(f"{w:>9g}" for w in s.working_sets_kib))
        for r, rate in enumerate(s.rates):
            lines.append(f"{rate:>10,.0f}" + "".join(f"{100 * v:>8.2f}%"
                                                     for v in s.overhead[m, r]))
    return "\n".join(lines)


def _calibration_text(f, comp) -> str:
    lines = ["fit on Hansen's lseek1 (entry_work, cr3_write free; pti.rst prior on cr3_write):",
             f"  entry_work = {f.params['entry_work']:.0f} cycles, "
             f"cr3_write = {f.params['cr3_write']:.0f} cycles "
             f"(prior residual {f.prior_residual:+.2f} sigma)",
             f"  {'mode':<12} {'measured/s':>12} {'model/s':>12} {'residual':>9}"]
    lines += [f"  {r['mode']:<12} {r['measured_per_s']:>12,.0f} {r['model_per_s']:>12,.0f} "
              f"{r['residual']:>+9.1%}" for r in f.table()]
    lines.append("comparison with published figures (no refitting):")
    for c in comp:
        lines += [f"  [{'agrees' if c.agrees else 'MISSES'}] {c.claim} ({c.source})",
                  f"      published: {c.published}", f"      model:     {c.model}",
                  f"      note:      {c.note}"]
    return "\n".join(lines)
