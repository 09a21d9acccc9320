"""How long ``kaiser-edu grade`` takes for a class: generated submissions, timed.

``python -m kaiser_edu.course.grade_bench --lab 01 -n 200 --jobs 2`` writes ``-n``
submissions of a lab in nbgrader's layout (``submitted/<student>/<lab>/<lab>.ipynb``) to a
temporary folder and grades them with ``kaiser-edu grade``, then prints the wall time and
the CPU time of the whole run (this process, the workers and every sandbox:
``resource.getrusage`` of the children). The submissions mix, seeded:

- copies of the solution (full marks);
- copies of the untouched exercise (0 points);
- the exercise with each answer cell, at random, solved, left as the stub, or a *mutant*
  of the solution: one integer literal changed by one (a realistic off-by-one, usually a
  wrong answer and sometimes an exception).

The target of issue 11 is 200 submissions of one lab in at most 10 minutes on 2 cores
with warm caches (numba's, and the lab imported once per worker).
"""

from __future__ import annotations

import argparse
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from kaiser_edu.course import metadata as md

_INT = re.compile(r"(?<![\w.])(\d+)(?![\w.])")


def mutate(source: str, rng: random.Random) -> str:
    """``source`` with one integer literal (outside comments, roughly) changed by one."""
    spots = [m for m in _INT.finditer(source)
             if "#" not in source[source.rfind("\n", 0, m.start()) + 1:m.start()]]
    if not spots:
        return source + "\n    return None\n"
    m = rng.choice(spots)
    value = int(m[1]) + rng.choice((-1, 1))
    return source[:m.start()] + str(max(value, 0)) + source[m.end():]


def generate_class(solution: Path, exercise: Path, folder: Path, n: int,
                   seed: int = 0) -> list[Path]:
    """Write ``n`` submissions to ``folder`` in nbgrader's layout; return their paths."""
    rng = random.Random(seed)
    solved = nbformat.read(str(solution), as_version=4)
    answers = {md.nbgrader(c).get("grade_id"): c.source for c in solved.cells
               if c.cell_type == "code" and md.is_answer(c)}
    paths = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.25:
            nb = nbformat.read(str(solution), as_version=4)
        else:
            nb = nbformat.read(str(exercise), as_version=4)
            if kind >= 0.45:  # a student who worked: each answer solved, stubbed or wrong
                for cell in nb.cells:
                    grade_id = md.nbgrader(cell).get("grade_id")
                    if grade_id in answers:
                        pick = rng.random()
                        if pick < 0.5:
                            cell.source = answers[grade_id]
                        elif pick < 0.8:
                            cell.source = mutate(answers[grade_id], rng)
        path = folder / f"student{i:03d}" / solution.stem / solution.name
        path.parent.mkdir(parents=True)
        nbformat.write(nb, str(path))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    from kaiser_edu.course import grade_cli, graded

    parser = argparse.ArgumentParser(prog="python -m kaiser_edu.course.grade_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", default="01")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    solution = graded.solution_for(args.lab)
    exercise = solution.parents[1] / "exercises" / solution.name
    with tempfile.TemporaryDirectory(prefix="kaiser-edu-grade-bench-") as tmp:
        folder = Path(tmp) / "submitted"
        generate_class(solution, exercise, folder, args.n, args.seed)
        start, cpu = time.perf_counter(), time.process_time()
        status = grade_cli.main_args([str(folder), "--lab", args.lab, "--jobs", str(args.jobs),
                                      "--csv", str(Path(tmp) / "grades.csv"),
                                      "--no-progress"], quiet=True)
        wall = time.perf_counter() - start
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        total_cpu = time.process_time() - cpu + children.ru_utime + children.ru_stime
    print(f"{args.n} submissions of {solution.stem}, --jobs {args.jobs}: {wall:.1f} s wall, "
          f"{total_cpu:.1f} s CPU in all ({total_cpu / args.n:.2f} s CPU per submission)")
    return status


if __name__ == "__main__":
    sys.exit(main())
