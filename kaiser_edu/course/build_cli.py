"""``kaiser-edu build-exercises``: write exercises/ from solutions/ (or check they agree).

Run it from the repository root after editing a solution notebook::

    kaiser-edu build-exercises            # regenerate and execute every exercise
    kaiser-edu build-exercises --check    # only verify; exit 1 with a diff if out of date

The generated notebooks are committed with their outputs; never edit them by hand (the
test suite regenerates them and fails if they differ). See
:mod:`kaiser_edu.course.exercises` for what the generation does.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solutions", default="solutions", metavar="DIR",
                        help="the authored lab notebooks (default: solutions)")
    parser.add_argument("--exercises", default="exercises", metavar="DIR",
                        help="where the student versions go (default: exercises)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing: exit 1 and show a diff if exercises/ is out of date")
    parser.add_argument("--no-execute", action="store_true",
                        help="write the exercises without running them (not for committing)")
    parser.add_argument("--timeout", type=float, default=600, metavar="S",
                        help="seconds each cell may run while executing (default 600)")


def run(args: argparse.Namespace) -> int:
    # Imported here: `kaiser-edu --help` builds every subcommand's parser and stays quick.
    from kaiser_edu.course.exercises import ExerciseBuildError, build_all, check_sync

    try:
        if args.check:
            problems = check_sync(args.solutions, args.exercises)
            if problems:
                print("\n\n".join(problems))
                print(f"\n{args.exercises} is out of date: run `kaiser-edu build-exercises`.")
                return 1
            print(f"{args.exercises} is in sync with {args.solutions}.")
            return 0
        written = build_all(args.solutions, args.exercises, execute=not args.no_execute,
                            timeout=args.timeout)
    except ExerciseBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}" + ("" if not args.no_execute else " (not executed)"))
    if not written:
        print(f"no notebooks in {args.solutions}")
    return 0
