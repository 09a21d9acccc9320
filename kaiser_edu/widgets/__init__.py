"""Interactive widgets and figures of the lessons.

Every widget is split in two: a pure *model* function that turns simulator state into the
data a view draws (testable without a browser), and a thin ipywidgets view that only wires
controls to it. Each view is an ``ipywidgets.VBox`` whose controls are attributes (``.address``,
``.step_button``, ``.output``, ...), so tests and lessons drive it by setting ``.value`` and
calling ``.click()``.

- :mod:`~kaiser_edu.widgets.address_explorer` (lesson 01): the fields of a virtual address
- :mod:`~kaiser_edu.widgets.walk_stepper` (lesson 02): a page walk one level at a time
- :mod:`~kaiser_edu.widgets.tlb_lab` (lesson 03): TLB size, working set, CR3 switches, PCID
- :mod:`~kaiser_edu.widgets.privilege` (lesson 04): CPL, U/S, SMEP, SMAP and RFLAGS.AC on the
  simulated kernel
- :mod:`~kaiser_edu.widgets.meltdown` (lesson 05): one Meltdown attempt step by step, and the
  attack run for an isolation mode, CPU model and target (over :mod:`kaiser_edu.attacks`)
- :mod:`~kaiser_edu.widgets.shadow_pgd` (lesson 06): the kernel and user PGD side by side,
  what user mode can reach
- :mod:`~kaiser_edu.widgets.transition_stepper` (lesson 07): a kernel entry and exit, one MMU
  operation at a time
- :mod:`~kaiser_edu.widgets.cost` (lesson 08): what PTI costs for a syscall rate, a working
  set, PCID and huge pages, on the simulated kernel
- :mod:`~kaiser_edu.widgets.kaslr` (lesson 09): a KASLR break and the time of every candidate
  slot
- :mod:`~kaiser_edu.widgets.history` (lesson 10): KAISER 2017 and PTI across Linux versions,
  compared on reach, fork and syscall cost, Meltdown and the KASLR breaks
- :mod:`~kaiser_edu.widgets.figures`: the lessons' matplotlib figures
- :mod:`~kaiser_edu.widgets.linux_map`: the Linux x86-64 virtual memory map (mm.rst)
- :mod:`~kaiser_edu.widgets.practice`: practice problems (lesson 02)
- :mod:`~kaiser_edu.widgets.quizzes`: the self-check quiz that ends every lesson, and its questions
- :mod:`~kaiser_edu.widgets.warmup`: ``warm_up()``, the first cell of every lesson (the numba
  compile, announced and timed)

Names are imported lazily (PEP 562), so ``import kaiser_edu.widgets.linux_map`` does not pay
for ipywidgets, matplotlib or numba.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AddressExplorer": "address_explorer",
    "explore_address": "address_explorer",
    "parse_address": "address_explorer",
    "WalkStepper": "walk_stepper",
    "demo_machine": "walk_stepper",
    "walk_view": "walk_stepper",
    "TLBLab": "tlb_lab",
    "TLBParams": "tlb_lab",
    "StaleTLBWidget": "tlb_lab",
    "stale_tlb_demo": "tlb_lab",
    "tlb_experiment": "tlb_lab",
    "address_bits_figure": "figures",
    "flush_vs_pcid": "figures",
    "miss_rate_vs_working_set": "figures",
    "page_table_tree": "figures",
    "region_of": "linux_map",
    "PracticeWidget": "practice",
    "PrivilegeLab": "privilege",
    "privilege_check": "privilege",
    "privilege_machine": "privilege",
    "privilege_targets": "privilege",
    "ShadowPgdExplorer": "shadow_pgd",
    "pgd_pair_view": "shadow_pgd",
    "shadow_pgd_figure": "shadow_pgd",
    "user_reachable_kernel": "shadow_pgd",
    "walk_both": "shadow_pgd",
    "quiz": "quizzes",
    "TransitionStepper": "transition_stepper",
    "MeltdownLab": "meltdown",
    "TransientStepper": "meltdown",
    "transient_load": "meltdown",
    "KaslrLab": "kaslr",
    "run_break": "kaslr",
    "transition_steps": "transition_stepper",
    "Quiz": "quizzes",
    "CostExplorer": "cost",
    "cost_point": "cost",
    "Question": "quizzes",
    "Option": "quizzes",
    "warm_up": "warmup",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
