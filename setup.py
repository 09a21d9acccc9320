"""Build step that ships the course inside the package.

The lessons, labs, solutions and examples live once, in the repository's top-level
folders (notebooks/, exercises/, solutions/, examples/). Building a wheel copies them into
``kaiser_edu/materials/`` of the build tree, so ``pip install kaiser-edu`` carries the
whole course and ``kaiser-edu lab`` can copy it into a student's working folder. Which
files are the course is decided by ``kaiser_edu/course/materials.py`` (loaded by path:
kaiser_edu's dependencies need not be installed while building), by walking the folders,
so a new notebook ships without anyone listing it. An editable install (``make venv``)
copies nothing: the package finds the course in the checkout.

Everything else (metadata, dependencies) is in pyproject.toml; the sdist takes the
folders through MANIFEST.in.
"""

import importlib.util
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _materials():
    spec = importlib.util.spec_from_file_location(
        "_kaiser_edu_materials", HERE / "kaiser_edu" / "course" / "materials.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class build_py_with_course(build_py):
    """build_py, then the course folders copied into kaiser_edu/materials/."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        materials = _materials()
        files = materials.course_files(HERE)
        if not materials.is_course(HERE):
            raise SystemExit(f"setup.py: no course found in {HERE} (notebooks/ has no "
                             "lesson): the wheel would ship without it")
        target = Path(self.build_lib) / "kaiser_edu" / "materials"
        if target.exists():
            shutil.rmtree(target)  # a stale build tree must not ship deleted lessons
        for rel in files:
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / rel, out)
        print(f"setup.py: {len(files)} course files copied into {target}")


setup(cmdclass={"build_py": build_py_with_course})
