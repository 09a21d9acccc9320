"""The first cell of every lesson: get the simulator ready, and say so.

The first simulation in a fresh Python process needs numba's compiled MMU kernel. On a
computer that has never run the course, numba compiles it (about ten seconds on an idle
2-core laptop, more on a busy one); afterwards it loads it from its on-disk cache in about a
second. Without a word, a student who pressed "Run All" sees only "Busy" meanwhile.
:func:`warm_up` says *before* the wait what is happening and how long it can take, and
*after* it how long it took and why (compiled now, loaded from the cache, or already in this
process).

The numbers in the message are measured, not guessed: the CPU time of the first call in a
fresh process with an empty ``NUMBA_CACHE_DIR`` on this course's reference machine (2 cores;
see :data:`FIRST_COMPILE_SECONDS`), and of a start with a full cache.

Its output is the same text on every machine except the measured time and the way the
kernel became ready; nbval's sanitize file (``tests/nbval_sanitize.cfg``, section "the
lessons' warm-up line") replaces that one line, so the lessons' first cells stay comparable.
"""

from __future__ import annotations

import sys
import time

from kaiser_edu.errors import KaiserEduError

#: The first run on a computer (empty numba cache), in seconds: importing the simulator and
#: compiling both variants of its kernel (recording, counting: mmu_kernels.run_trace) took
#: 26.5 s of CPU time (26.9 s wall) in a fresh Python process with an empty
#: ``NUMBA_CACHE_DIR`` on the course's 2-core reference machine (a virtualised Xeon), so a
#: 2-core laptop waits about 25 s, more while other programs keep it busy. Rerun:
#: ``rm -rf /tmp/nc && NUMBA_CACHE_DIR=/tmp/nc python -c "from kaiser_edu.widgets import
#: warm_up; warm_up()"``.
FIRST_COMPILE_SECONDS = 25
#: A later start loads the kernel from numba's cache: 0.5 s on the same machine.
CACHED_SECONDS = 1

READY = "Simulator ready after"


def warm_up_text() -> str:
    """What the student reads before the wait (the same on every machine)."""
    return (
        "Preparing the simulator: numba compiles its MMU kernel (the page walk and the TLB)\n"
        f"to machine code. The first time on a computer this takes about "
        f"{FIRST_COMPILE_SECONDS} s on a\n"
        "2-core laptop (longer while other programs keep it busy); after that numba loads\n"
        f"it from its cache in about {CACHED_SECONDS} s."
    )


#: Why it took as long as it did, in a few words (the line must fit a laptop's notebook).
WHY = {"compiled": "compiled now, saved in numba's cache for next time",
       "cache": "loaded from numba's cache", "warm": "already compiled in this kernel",
       "nojit": "numba's JIT is off (NUMBA_DISABLE_JIT=1): slow"}


def ready_text(seconds: float, how: str) -> str:
    """What the student reads after the wait: how long it took, and why (``how`` is a
    :class:`~kaiser_edu.hw.jit.KernelStatus` ``how``)."""
    return f"{READY} {seconds:.1f} s ({WHY[how]})."


def warm_up() -> None:
    """Compile or load the simulator's numba kernel, telling the student before and after.

    Call it at the top of a lesson's first code cell::

        from kaiser_edu.widgets import warm_up
        warm_up()

    The time measured includes importing the simulator (numba, numpy): that is part of what
    the student waits for. Raises :class:`~kaiser_edu.errors.KaiserEduError` if the compiled
    kernel gives a wrong answer (a broken installation: ``kaiser-edu doctor`` says more).
    """
    print(warm_up_text(), flush=True)
    start = time.perf_counter()
    from kaiser_edu.hw import jit

    status = jit.load_mmu_kernel()
    seconds = time.perf_counter() - start
    if not status.ok:
        raise KaiserEduError(f"the simulator's MMU kernel is broken: {status.problem}; "
                             "run `kaiser-edu doctor` and reinstall with `make venv`")
    print(ready_text(seconds, status.how), flush=True)
    sys.stdout.flush()
