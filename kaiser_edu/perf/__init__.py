"""The performance lab and the simulator's own benchmark.

- :mod:`~kaiser_edu.perf.cost`: cycles = counted events x the timing table
- :mod:`~kaiser_edu.perf.workloads`: syscall loop, context switches, working sets, sweeps
- :mod:`~kaiser_edu.perf.trace`: valgrind lackey traces, streamed and replayed
- :mod:`~kaiser_edu.perf.calibrate`: the fit on Hansen's lseek1 and the published figures
- :mod:`~kaiser_edu.perf.plots`: the figures; :mod:`~kaiser_edu.perf.cli`: ``kaiser-edu perf``
- :mod:`~kaiser_edu.perf.bench`: ``kaiser-edu bench``
"""
