"""The ``kaiser-edu`` command: one entry point, one module per subcommand.

Each subcommand lives with the code it drives and provides two functions:
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status). Building the parser
imports every subcommand module, so those modules keep heavy imports (numba, notebooks)
inside ``run`` and ``kaiser-edu --help`` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "lab": ("kaiser_edu.course.lab_cli", "open the course (or one lesson or lab) in JupyterLab"),
    "walk": ("kaiser_edu.hw.scenario", "translate the accesses of a JSON scenario file"),
    "bench": ("kaiser_edu.perf.bench", "measure the simulator's speed against baselines"),
    "practice": ("kaiser_edu.course.practice_cli", "seeded paging problems with worked answers"),
    "doctor": ("kaiser_edu.course.doctor", "check this machine: versions, numba, Meltdown/KPTI"),
    "check": ("kaiser_edu.course.check_notebook", "run a lab notebook and report every exercise"),
    "build-exercises": ("kaiser_edu.course.build_cli", "write exercises/ from solutions/"),
    "attack": ("kaiser_edu.attacks.cli", "run Meltdown or a KASLR break on the simulated machine"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaiser-edu",
        description="An interactive course on x86-64 paging and kernel page-table isolation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    return importlib.import_module(args._module).run(args)


if __name__ == "__main__":
    sys.exit(main())
