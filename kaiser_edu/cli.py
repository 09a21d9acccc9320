"""The ``kaiser-edu`` command: one entry point, one module per subcommand.

Each subcommand lives with the code it drives and provides two functions:
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status). ``main`` imports only
the module of the subcommand named on the command line (``kaiser-edu --help`` and
``--version`` import none), so a subcommand whose module pulls in numba does not slow the
others; the modules still keep heavy imports (numba, notebooks) inside ``run``, so that
``kaiser-edu COMMAND --help`` is quick too.

Output cut short by the reader (``kaiser-edu practice ... | head``) ends the command
quietly, as with other Unix tools, instead of with a BrokenPipeError traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
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
    "perf": ("kaiser_edu.perf.cli", "what isolation costs: syscalls, switches, traces, sweeps"),
    "grade": ("kaiser_edu.course.grade_cli", "grade a class's lab notebooks: gradebook CSV, feedback"),
    "attack": ("kaiser_edu.attacks.cli", "run Meltdown or a KASLR break on the simulated machine"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``kaiser-edu`` parser. Every subcommand is listed, but only ``only``'s module is
    imported to add its options (``""``: none; ``None``: every module, for tools that want
    them all)."""
    from kaiser_edu import __version__

    parser = argparse.ArgumentParser(
        prog="kaiser-edu",
        description="An interactive course on x86-64 paging and kernel page-table isolation.",
    )
    parser.add_argument("--version", action="version", version=f"kaiser-edu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if only is None or only == name:
            importlib.import_module(module).add_arguments(p)
    return parser


def _command_named(argv: list[str]) -> str | None:
    """The subcommand in ``argv``: its first word not starting with '-' (the top-level
    options, --help and --version, take no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_named(argv) or "")  # "": no module at all
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        status = importlib.import_module(args._module).run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`). Point stdout at /dev/null so that Python's own
        # flush at exit does not report the same error, and exit as a process killed by
        # SIGPIPE would (128 + 13), like other tools in a pipeline.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return status


if __name__ == "__main__":
    sys.exit(main())
