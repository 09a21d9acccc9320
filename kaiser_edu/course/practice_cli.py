"""``kaiser-edu practice KIND``: seeded practice problems on the command line.

As with OSTEP's homework simulators, run it once to get a problem, work it out on paper,
then run it again with ``--answer`` (the same seed gives the same problem) to see the
worked answer under it::

    kaiser-edu practice translate --seed 7
    kaiser-edu practice translate --seed 7 --answer

Without ``--seed`` a seed is picked at random and printed in the problem's first line.
Bad options are refused by argparse with a usage message and exit status 2.
"""

from __future__ import annotations

import argparse
import secrets
import sys

from kaiser_edu.errors import KaiserEduError

# Kept in step with kaiser_edu.course.practice (not imported here, so that building the
# command-line parser does not import the simulator).
KINDS = ("translate", "fault", "walk")
DIFFICULTIES = ("easy", "medium", "hard")
MAX_COUNT = 1000
_RULE = "=" * 78


def _seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to 2**64-1 (decimal or 0x hex), got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_COUNT}, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS,
                        help="translate: virtual to physical address; fault: does it fault, "
                             "with which error code; walk: the entry read at each level")
    parser.add_argument("--seed", type=_seed, default=None, metavar="N",
                        help="problem number (default: a random one, printed with the problem)")
    parser.add_argument("--answer", action="store_true",
                        help="also print the worked answer (like OSTEP's -c)")
    parser.add_argument("--count", type=_count, default=1, metavar="K",
                        help=f"print K problems, seeds N, N+1, ... (1 to {MAX_COUNT}; default 1)")
    parser.add_argument("--levels", type=int, choices=(4, 5), default=4,
                        help="4-level paging, or 5-level (CR4.LA57) (default 4)")
    parser.add_argument("--difficulty", choices=DIFFICULTIES, default="medium",
                        help="easy: pages mostly present, rights simple; hard: raw register "
                             "values, reserved bits, PCIDs, rights cut at upper levels "
                             "(default medium)")
    parser.epilog = ("Work a problem out, then rerun the same command with --answer. "
                     "Example: kaiser-edu practice fault --seed 3 --difficulty hard")


def run(args: argparse.Namespace) -> int:
    from kaiser_edu.course.practice import make_problem

    first = secrets.randbelow(1_000_000) if args.seed is None else args.seed
    blocks = []
    try:
        for seed in range(first, min(first + args.count, 1 << 64)):
            problem = make_problem(args.kind, seed, levels=args.levels,
                                   difficulty=args.difficulty)
            block = problem.text()
            if args.answer:
                block += "\n\n" + problem.answer()
            else:
                block += "\n\n" + _rerun_hint(args, seed)
            blocks.append(block)
    except KaiserEduError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\n{_RULE}\n\n".join(blocks))
    return 0


def _rerun_hint(args: argparse.Namespace, seed: int) -> str:
    options = "".join(
        f" --{name} {value}"
        for name, value, default in (("levels", args.levels, 4),
                                     ("difficulty", args.difficulty, "medium"))
        if value != default
    )
    return f"(The answer: kaiser-edu practice {args.kind} --seed {seed}{options} --answer)"
