"""``kaiser-edu lab``: open the course in JupyterLab, from a checkout or a pip install.

Students work in the lesson and lab notebooks and save into them, so the course is opened
in a *working folder*, never inside site-packages. Which one:

- ``--dir PATH`` if given;
- else, in a checkout (the editable install ``make lab`` sets up), the checkout itself:
  nothing is copied, the repository is the course;
- else the current directory if it holds the course (``notebooks/``);
- else ``~/kaiser-edu-course``.

Installed from a wheel (``pip install kaiser-edu``, as a JupyterHub does), the first run
copies the course shipped in the package into that folder and says so; later runs open
it as it is. ``--update`` brings in new lessons and labs and the newer versions of files
the student has not edited, and lists the edited ones it left alone
(:mod:`kaiser_edu.course.materials` keeps the hashes that tell them apart). A folder that
holds a course not copied by this command (another checkout) is opened as it is.

Then it starts JupyterLab with *this* Python (``python -m jupyterlab``), so the notebooks'
kernel is the one that has kaiser_edu, with the working folder as its root, and opens
lesson 00, or the lesson or lab asked for::

    kaiser-edu lab                    # the tour
    kaiser-edu lab --lesson 6         # notebooks/06_kaiser_shadow_pgd.ipynb
    kaiser-edu lab --lab 7            # exercises/lab07_entry_cr3.ipynb
    kaiser-edu lab --no-browser --port 9999
    kaiser-edu lab --update           # newer course files, edited ones kept
    kaiser-edu lab --dir DIR --prepare-only   # copy the course, start nothing
    kaiser-edu lab -- --ServerApp.ip=0.0.0.0  # anything after -- goes to jupyter lab

``--dry-run`` prints what it would copy and the command instead of doing either. Running
as root (containers, lab machines) adds ``--allow-root``, which JupyterLab otherwise
demands.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from kaiser_edu.course import materials
from kaiser_edu.errors import KaiserEduError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None,
                        help="the working folder of the course (default: the checkout this "
                             "package runs from; installed with pip: the current directory "
                             f"if it holds the course, else {materials.DEFAULT_WORKDIR}, "
                             "where the course is copied on first use)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--lesson", type=int, metavar="N",
                       help="open lesson N (notebooks/NN_*.ipynb) instead of the tour")
    which.add_argument("--lab", type=int, metavar="N",
                       help="open lab N, the student version (exercises/labNN_*.ipynb)")
    parser.add_argument("--update", action="store_true",
                        help="copy new course files and newer versions of the ones you have "
                             "not edited into the working folder (edited ones are kept, "
                             "and listed)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="prepare the working folder (copy or --update), then stop "
                             "without starting JupyterLab")
    parser.add_argument("--no-browser", action="store_true",
                        help="start the server without opening a browser (jupyter lab's "
                             "--no-browser)")
    parser.add_argument("--port", type=int, metavar="P",
                        help="the server's port (jupyter lab's --port)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be copied and the jupyter command, do neither")
    parser.add_argument("jupyter_args", nargs=argparse.REMAINDER,
                        help="after --: options for jupyter lab (e.g. --ServerApp.ip=0.0.0.0)")


def working_folder(explicit: Path | None, source: Path | None) -> Path:
    """Where the student works (see the module docstring for the order)."""
    if explicit is not None:
        return explicit.expanduser().resolve()
    if source is not None and source == materials.CHECKOUT_DIR:
        return source
    if materials.is_course(Path.cwd()):
        return Path.cwd().resolve()
    return materials.DEFAULT_WORKDIR.expanduser().resolve()


def _pick(folder: Path, prefix: str, what: str) -> Path:
    matches = sorted(folder.glob(f"{prefix}_*.ipynb"))
    if matches:
        return matches[0]
    have = sorted(p.name.split("_")[0] for p in folder.glob("*.ipynb"))
    raise KaiserEduError(
        f"no {what} {prefix} in {folder}; available: {', '.join(have) or 'none'}")


def notebook_to_open(root: Path, lesson: int | None, lab: int | None) -> Path | None:
    """The notebook to open first, relative to ``root``: the lesson or lab asked for, else
    lesson 00 if present."""
    if lesson is not None:
        return _pick(root / "notebooks", f"{lesson:02d}", "lesson").relative_to(root)
    if lab is not None:
        return _pick(root / "exercises", f"lab{lab:02d}", "lab").relative_to(root)
    tours = sorted((root / "notebooks").glob("00_*.ipynb"))
    return tours[0].relative_to(root) if tours else None


def lab_command(root: Path, notebook: Path | None, extra: list[str]) -> list[str]:
    """``python -m jupyterlab`` on this interpreter, rooted at the course."""
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    command += extra
    if notebook is not None:
        command.append(notebook.as_posix())
    return command


class NoCourse(KaiserEduError):
    """No course to open, or a request this folder cannot honour: one line for the user."""


def prepare_folder(workdir: Path, source: Path | None, *, update: bool,
                   dry_run: bool) -> tuple[Path, str]:
    """Make ``workdir`` ready; returns the folder whose files name the notebooks (the
    source, in a dry run that copied nothing) and a message for the user ('' if nothing
    to say)."""
    from kaiser_edu import __version__

    if source is not None and workdir == source:
        if update:
            raise NoCourse(f"{workdir} is the course's own source (a checkout): there is "
                           "nothing to update it from; use git pull")
        return workdir, ""
    if materials.is_course(workdir) and materials.read_manifest(workdir) is None:
        if update:
            raise NoCourse(f"{workdir} holds a course that kaiser-edu lab did not copy (no "
                           f"{materials.MANIFEST}), so it cannot tell your edits from old "
                           "files; update it the way you got it (git pull), or use --dir "
                           "with a new folder")
        return workdir, ""
    if source is None:
        raise NoCourse(
            f"no course found: {workdir} has no notebooks/, this kaiser_edu (from "
            f"{materials.CHECKOUT_DIR}) is not a checkout, and the package carries no course "
            f"files ({materials.PACKAGED_DIR} is missing). Install it from a wheel or sdist "
            "(pip install kaiser-edu), or pass --dir PATH_TO_A_CHECKOUT.")
    done = materials.prepare(source, workdir, update=update, dry_run=dry_run,
                             version=__version__)
    if dry_run:
        return (workdir if materials.is_course(workdir) else source), (
            f"dry run: would prepare {workdir}: {len(done.copied)} file(s) to copy, "
            f"{len(done.updated)} to update, {len(done.kept_edited)} edited to keep")
    return workdir, done.summary()


def run(args: argparse.Namespace) -> int:
    source = materials.course_source()
    workdir = working_folder(args.dir, source)
    try:
        listing, message = prepare_folder(workdir, source, update=args.update,
                                          dry_run=args.dry_run)
        notebook = notebook_to_open(listing, args.lesson, args.lab)
    except KaiserEduError as exc:
        print(f"kaiser-edu lab: {exc}", file=sys.stderr)
        return 2
    if message:  # a dry run keeps stdout for the command alone
        print(message, file=sys.stderr if args.dry_run else sys.stdout, flush=True)
    if args.prepare_only:
        if not args.dry_run:
            print(f"The course is ready in {workdir}. Open it with: kaiser-edu lab --dir "
                  f"{shlex.quote(str(workdir))}")
        return 0
    extra = (["--no-browser"] if args.no_browser else []) + (
        [f"--port={args.port}"] if args.port is not None else [])
    passed = list(args.jupyter_args)
    command = lab_command(workdir, notebook, extra + (passed[1:] if passed[:1] == ["--"]
                                                      else passed))
    if args.dry_run:
        print(shlex.join(command))
        return 0
    if os.name == "posix":  # become JupyterLab: Ctrl-C and kill reach the server itself
        os.chdir(workdir)
        os.execv(command[0], command)
    return subprocess.call(command, cwd=workdir)
