"""Paired A/B timing of two versions of the MMU kernel (a developer's tool, not shipped).

Separate processes on a shared 2-core machine differ by about 10% in speed, which hides
the 5-10% a change to ``run_trace`` makes. Here both versions run in the same process,
alternating A B, then B A, on the same machines and traces. Each workload prints the
median and the range of the per-round ratio B/A::

    cp kaiser_edu/hw/mmu_kernels.py /tmp/a.py      # the version to compare against
    # ... edit kaiser_edu/hw/mmu_kernels.py ...
    cp kaiser_edu/hw/mmu_kernels.py /tmp/b.py
    NUMBA_CACHE_DIR=$PWD/.numba_cache python tools/kernel_ab.py /tmp/a.py /tmp/b.py

Both files must keep the call convention of :meth:`kaiser_edu.hw.mmu.MMU.run`. Give them
different names: numba's cache is kept per file. The workloads are the bench's own
(:mod:`kaiser_edu.perf.bench`): its simulated system calls (isolation off, PTI with PCIDs,
PTI without) and its hit and random traces on its machine, counted and recorded.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

from kaiser_edu.hw import Trace
from kaiser_edu.hw import mmu as mmu_module
from kaiser_edu.perf.bench import SYSCALL_MODES, Bench, syscall_ready


def load(path: str):
    """Import a kernel file as a module of its own name (numba caches per file)."""
    name = Path(path).stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def syscalls(mode: str, n: int = 500_000):
    """ns per simulated round trip through ``syscall_batch``, booted as the bench does."""
    n //= 4 if mode == "pti_nopcid" else 1

    def run() -> float:
        kernel, task = syscall_ready(mode)
        start = time.process_time()
        kernel.entry.syscall_batch(task, n)
        return (time.process_time() - start) / n * 1e9
    return run


def traces(bench: Bench) -> dict:
    """The bench's hit and random traces on its machine, counted and recorded."""
    def timed(va, record: bool):
        trace = Trace.accesses(va, "read", cpl=3)

        def run() -> float:
            mmu = bench.new_mmu()
            start = time.process_time()
            mmu.run(trace, record=record)
            return (time.process_time() - start) / len(trace) * 1e9
        return run
    return {"random": timed(bench.random_va, False), "hit": timed(bench.hit_va, False),
            "random_rec": timed(bench.random_va, True), "hit_rec": timed(bench.hit_va, True)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("a", help="the kernel file to compare against")
    parser.add_argument("b", help="the changed kernel file")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--only", help="comma-separated workloads (default: all)")
    args = parser.parse_args(argv)
    if Path(args.a).stem == Path(args.b).stem:
        parser.error("give the two files different names (numba caches per file)")
    variants = [load(args.a), load(args.b)]
    workloads = {mode: syscalls(mode) for mode in SYSCALL_MODES} | traces(Bench())
    if args.only:
        unknown = set(args.only.split(",")) - set(workloads)
        if unknown:
            parser.error(f"unknown workloads {sorted(unknown)}; known: {sorted(workloads)}")
        workloads = {k: v for k, v in workloads.items() if k in args.only.split(",")}
    for variant in variants:  # compile or load both, outside the timing
        mmu_module.k = variant
        for run in workloads.values():
            run()
    times = {name: ([], []) for name in workloads}
    for rnd in range(args.rounds):
        for name, run in workloads.items():
            for j in ((0, 1) if rnd % 2 == 0 else (1, 0)):
                mmu_module.k = variants[j]
                times[name][j].append(run())
    for name, (a, b) in times.items():
        ratio = [y / x for x, y in zip(a, b, strict=True)]
        print(f"{name:10s} A {statistics.median(a):8.2f} ns  B {statistics.median(b):8.2f} ns  "
              f"B/A median {statistics.median(ratio):.3f} (range {min(ratio):.3f}-"
              f"{max(ratio):.3f})")


if __name__ == "__main__":
    main()
