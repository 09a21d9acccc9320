"""The course's files (lessons, labs, solutions, examples): which they are, where the
installed package keeps them, and a student's working copy of them.

One source of truth. The course lives in the repository's top-level folders
(:data:`COURSE_FOLDERS`); nothing is committed twice. Building a wheel copies them into the
package as ``kaiser_edu/materials/`` (``setup.py`` calls :func:`course_files` on the
source tree, so the build and this module agree on what the course is, and a notebook
added to one of the folders ships without anyone listing it). So there are two places a
course can come from (:func:`course_source`):

- a checkout (the editable install of ``make lab``): the repository itself;
- an installed wheel (``pip install kaiser-edu``): ``kaiser_edu/materials/``.

A student never works inside site-packages (read-only on a hub, and wiped by an upgrade).
:func:`prepare` copies the course into a working folder once and records, in
:data:`MANIFEST`, the SHA-256 of every file as copied. That record is what lets
:func:`prepare` with ``update=True`` tell a notebook the student has edited (its hash no
longer matches what was copied) from one nobody touched, which it may replace with the
newer version. Edited files are never overwritten: they are listed instead.

This module imports only the standard library: ``setup.py`` loads it by path while
building, before kaiser_edu's dependencies exist.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

try:  # the package's error type; setup.py loads this file alone, without the package
    from kaiser_edu.errors import KaiserEduError
except ImportError:  # pragma: no cover - only while building
    KaiserEduError = ValueError

# The repository's course folders, as the README's layout names them.
COURSE_FOLDERS = ("notebooks", "exercises", "solutions", "examples")
# What the folders may hold that is not course material (editor and Jupyter leftovers).
IGNORED_PARTS = frozenset({".ipynb_checkpoints", "__pycache__", ".DS_Store"})
IGNORED_SUFFIXES = (".pyc", ".nbi", ".nbc")
# Where a wheel puts the course inside the package (setup.py writes it there).
PACKAGED_DIR = Path(__file__).resolve().parents[1] / "materials"
# The repository root when the package is imported from a checkout.
CHECKOUT_DIR = Path(__file__).resolve().parents[2]
# In a working copy: what was copied, with hashes (see the module docstring).
MANIFEST = ".kaiser-edu-course.json"
DEFAULT_WORKDIR = Path("~/kaiser-edu-course")


def course_files(root: Path) -> list[str]:
    """Every course file under ``root`` (a checkout or a packaged copy), as sorted POSIX
    paths relative to it: everything in :data:`COURSE_FOLDERS`, by walking the folders
    (no list to keep up to date), less editor and Jupyter leftovers."""
    found = []
    for folder in COURSE_FOLDERS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            rel = path.relative_to(root)
            if (path.is_file() and not IGNORED_PARTS.intersection(rel.parts)
                    and not path.name.endswith(IGNORED_SUFFIXES)):
                found.append(rel.as_posix())
    return sorted(found)


def is_course(root: Path) -> bool:
    """Does ``root`` hold a course (a ``notebooks/`` folder with a lesson in it)?"""
    return any((root / "notebooks").glob("*.ipynb"))


def course_source() -> Path | None:
    """Where this installation's course comes from: the checkout the package is imported
    from (editable install), else the copy inside an installed wheel; None if neither."""
    for root in (CHECKOUT_DIR, PACKAGED_DIR):
        if is_course(root):
            return root
    return None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Preparation:
    """What :func:`prepare` did (or, with ``dry_run``, would do) to a working folder."""

    workdir: Path
    copied: list[str] = field(default_factory=list)    # new to the folder
    updated: list[str] = field(default_factory=list)   # untouched, replaced by a newer one
    kept_edited: list[str] = field(default_factory=list)  # edited: left alone
    outdated: list[str] = field(default_factory=list)  # new or changed, without update=True
    first_time: bool = False

    def summary(self) -> str:
        """What happened, for the terminal: one line per kind of change, files named."""
        lines = []
        if self.first_time:
            lines.append(f"Copied the course ({len(self.copied)} files) into {self.workdir}. "
                         "Your work is saved there; `kaiser-edu lab` opens it again, and "
                         "never overwrites what you changed.")
        elif self.copied:
            lines.append(f"New in the course, copied into {self.workdir}: "
                         + ", ".join(self.copied))
        if self.updated:
            lines.append("Updated (you had not changed them): " + ", ".join(self.updated))
        if self.kept_edited:
            lines.append("Left alone because you edited them (a newer version exists; to "
                         "get it, rename yours and run `kaiser-edu lab --update` again): "
                         + ", ".join(self.kept_edited))
        if self.outdated:
            lines.append(f"{len(self.outdated)} course file(s) new or changed since your copy: "
                         "`kaiser-edu lab --update` brings them in (your edits are kept).")
        if not lines:
            lines.append(f"The course in {self.workdir} is up to date.")
        return "\n".join(lines)


def read_manifest(workdir: Path) -> dict[str, str] | None:
    """The hashes recorded when files were copied into ``workdir``; None if it has no
    manifest (not a folder made by :func:`prepare`)."""
    record = _read_record(workdir)
    return None if record is None else record[0]


def _read_record(workdir: Path) -> tuple[dict[str, str], bool] | None:
    """(hashes, complete) from the manifest; None if there is none. ``complete`` is False
    while a first copy is under way, so that an interrupted one is finished next time."""
    path = workdir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise TypeError("not a mapping of paths to hashes")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KaiserEduError(
            f"{path} is damaged ({exc}): it should be the JSON record kaiser-edu lab wrote. "
            "Delete it to open the folder as it is (your files stay; --update then refuses, "
            "as it can no longer tell your edits)") from None
    return dict(files), data.get("complete", True) is True


def _write_manifest(workdir: Path, files: dict[str, str], version: str,
                    complete: bool = True) -> None:
    data = {"about": "Written by `kaiser-edu lab`: the SHA-256 of each course file as it was "
                     "copied here, so that --update can tell your edits from untouched files.",
            "kaiser_edu": version, "complete": complete, "files": dict(sorted(files.items()))}
    (workdir / MANIFEST).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def prepare(source: Path, workdir: Path, *, update: bool = False, dry_run: bool = False,
            version: str = "") -> Preparation:
    """Make ``workdir`` a working copy of the course in ``source``.

    - A folder without the course gets every file, and a manifest of their hashes.
    - Later calls change nothing; they report the course files that are new or changed in
      ``source`` since the copy (``outdated``).
    - ``update=True`` copies the new files and replaces each changed file the student has
      not edited (its hash still the one recorded); an edited file is kept and listed in
      ``kept_edited`` (to get the new version, the student renames theirs and updates
      again; a deleted file counts as missing and comes back). A file the manifest does
      not know (the student made it) counts as edited.

    ``dry_run`` computes the same report and writes nothing. The files are copied with
    their contents only: a read-only site-packages must not make the student's copy
    read-only.
    """
    workdir = workdir.expanduser().resolve()
    recorded, complete = _read_record(workdir) or ({}, False)
    report = Preparation(workdir, first_time=not complete)
    plan: list[str] = []
    for rel in course_files(source):
        theirs, ours = workdir / rel, source / rel
        if not theirs.exists():
            if report.first_time or update:
                report.copied.append(rel)
                plan.append(rel)
            else:
                report.outdated.append(rel)  # new in the course: --update brings it
            continue
        new_hash, have_hash, copied_hash = sha256(ours), sha256(theirs), recorded.get(rel)
        if have_hash == new_hash:
            recorded.setdefault(rel, new_hash)
        elif copied_hash == new_hash:
            pass  # the student's edit of a file the course has not changed: theirs
        elif not update:
            report.outdated.append(rel)
        elif copied_hash == have_hash:
            report.updated.append(rel)  # untouched since copied, and the course moved on
            plan.append(rel)
        else:
            report.kept_edited.append(rel)
    if dry_run or not (plan or report.first_time):
        return report
    workdir.mkdir(parents=True, exist_ok=True)
    if report.first_time:  # an interrupted first copy is resumed, not taken for a course
        _write_manifest(workdir, recorded, version, complete=False)
    for rel in plan:
        target = workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)
        recorded[rel] = sha256(target)
    _write_manifest(workdir, recorded, version)
    return report
