"""``kaiser-edu lab``: open the course in JupyterLab.

The lessons and labs are folders of the course checkout (``notebooks/``, ``exercises/``,
``solutions/``), not package data: students work in them and save into them. So the command
first finds the course: ``--dir``, else the checkout this package is imported from (the
editable install ``make lab`` sets up), else the current directory. Then it starts
JupyterLab with *this* Python (``python -m jupyterlab``), so the notebooks' kernel is the one
that has kaiser_edu, with the whole course as its root, and opens lesson 00, or the lesson
or lab asked for::

    kaiser-edu lab                    # the tour
    kaiser-edu lab --lesson 6         # notebooks/06_kaiser_shadow_pgd.ipynb
    kaiser-edu lab --lab 7            # exercises/lab07_entry_cr3.ipynb
    kaiser-edu lab -- --port=9999 --no-browser   # anything after -- goes to jupyter lab

``--dry-run`` prints the command instead of running it. Running as root (containers, lab
machines) adds ``--allow-root``, which JupyterLab otherwise demands.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

PACKAGE_CHECKOUT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None,
                        help="the course checkout (default: the one this package runs "
                             "from, else the current directory)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--lesson", type=int, metavar="N",
                       help="open lesson N (notebooks/NN_*.ipynb) instead of the tour")
    which.add_argument("--lab", type=int, metavar="N",
                       help="open lab N, the student version (exercises/labNN_*.ipynb)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the jupyter command instead of running it")
    parser.add_argument("jupyter_args", nargs=argparse.REMAINDER,
                        help="after --: options for jupyter lab (e.g. --port=9999)")


def course_root(explicit: Path | None) -> Path:
    """The folder holding notebooks/: ``explicit`` if given, else the package's checkout,
    else the current directory. Raises ValueError saying where it looked."""
    candidates = [explicit] if explicit is not None else [PACKAGE_CHECKOUT, Path.cwd()]
    for root in candidates:
        if (root / "notebooks").is_dir():
            return root.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise ValueError(
        f"no course found (a folder with notebooks/) in {looked}. Run this inside the "
        "kaiser_edu checkout, or pass --dir PATH_TO_THE_CHECKOUT."
    )


def _pick(folder: Path, prefix: str, what: str) -> Path:
    matches = sorted(folder.glob(f"{prefix}_*.ipynb"))
    if matches:
        return matches[0]
    have = sorted(p.name.split("_")[0] for p in folder.glob("*.ipynb"))
    raise ValueError(f"no {what} {prefix} in {folder}; available: {', '.join(have) or 'none'}")


def notebook_to_open(root: Path, lesson: int | None, lab: int | None) -> Path | None:
    """The notebook to open first: the lesson or lab asked for, else lesson 00 if present."""
    if lesson is not None:
        return _pick(root / "notebooks", f"{lesson:02d}", "lesson")
    if lab is not None:
        return _pick(root / "exercises", f"lab{lab:02d}", "lab")
    tours = sorted((root / "notebooks").glob("00_*.ipynb"))
    return tours[0] if tours else None


def lab_command(root: Path, notebook: Path | None, extra: list[str]) -> list[str]:
    """``python -m jupyterlab`` on this interpreter, rooted at the course."""
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    command += extra[1:] if extra[:1] == ["--"] else extra
    if notebook is not None:
        command.append(str(notebook.relative_to(root)))
    return command


def run(args: argparse.Namespace) -> int:
    try:
        root = course_root(args.dir)
        notebook = notebook_to_open(root, args.lesson, args.lab)
    except ValueError as exc:
        print(f"kaiser-edu lab: {exc}", file=sys.stderr)
        return 2
    command = lab_command(root, notebook, list(args.jupyter_args))
    if args.dry_run:
        print(shlex.join(command))
        return 0
    if os.name == "posix":  # become JupyterLab: Ctrl-C and kill reach the server itself
        os.chdir(root)
        os.execv(command[0], command)
    return subprocess.call(command, cwd=root)
