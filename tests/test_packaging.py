"""Packaging and metadata: the environment files agree with pyproject.toml, the licence and
citation metadata exist and agree, the course files are found by walking the folders, the
build ships them, Binder's files are runtime-only, and the command line stays light and
quiet in a pipe.

The pip path itself (build the wheel, install it in a fresh venv outside the checkout,
copy the course out, run a lesson and a lab from the copy) is `make pip-path`
(.ci/pip-path): too slow for a unit test.
"""

from __future__ import annotations

import ast
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from kaiser_edu import __version__
from kaiser_edu.course import materials

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]

# PyPI name -> conda-forge name, where they differ.
CONDA_NAMES = {"matplotlib": "matplotlib-base", "playwright": "playwright-python",
               "build": "python-build"}
# The test tools that have no place in a student's Binder image.
TEST_ONLY = {"pytest", "nbval", "hypothesis", "playwright", "ruff", "pytest-timeout", "build",
             "pyyaml"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _split(requirement: str) -> tuple[str, str]:
    """'numpy>=1.26,<2.6' -> ('numpy', '>=1.26,<2.6'), the name normalised."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", requirement)
    assert match, f"cannot read requirement {requirement!r}"
    return _normalise(match.group(1)), match.group(2).replace(" ", "")


def _as_conda(requirements: list[str]) -> dict[str, str]:
    out = {}
    for requirement in requirements:
        name, spec = _split(requirement)
        out[_normalise(CONDA_NAMES.get(name, name))] = spec
    return out


def _conda_deps(path: Path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert env["channels"][0] == "conda-forge", f"{path}: conda-forge first"
    deps = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            name, spec = _split(dep.replace("=", "==", 1) if re.match(r"^python=\d", dep)
                                else dep)
            deps[name] = spec
    for tool in ("python", "pip"):
        deps.pop(tool, None)
    return deps


RUNTIME = _as_conda(PROJECT["dependencies"])
TEST_EXTRA = _as_conda(PROJECT["optional-dependencies"]["test"])


# --- environment files ------------------------------------------------------------------
def test_environment_yml_lists_every_runtime_and_test_dependency_of_pyproject():
    """The conda environment for working on the course: pyproject's dependencies and its
    "test" extra, with the same version ranges, and nothing else."""
    deps = _conda_deps(REPO / "environment.yml")
    expected = {**RUNTIME, **TEST_EXTRA}
    assert deps == expected, (
        f"environment.yml and pyproject.toml disagree: only in environment.yml "
        f"{sorted(set(deps) - set(expected))}, only in pyproject.toml "
        f"{sorted(set(expected) - set(deps))}, different ranges "
        f"{sorted(n for n in set(deps) & set(expected) if deps[n] != expected[n])}")


def test_binder_environment_is_runtime_only_and_complete():
    """Binder's image gets exactly the runtime dependencies: no test tools, no Playwright."""
    deps = _conda_deps(REPO / "binder" / "environment.yml")
    assert deps == RUNTIME, (
        f"binder/environment.yml and pyproject's dependencies disagree: extra "
        f"{sorted(set(deps) - set(RUNTIME))}, missing {sorted(set(RUNTIME) - set(deps))}")
    assert not {_normalise(CONDA_NAMES.get(t, t)) for t in TEST_ONLY} & set(deps)


def test_matplotlib_comes_as_matplotlib_base_on_conda_forge():
    for path in (REPO / "environment.yml", REPO / "binder" / "environment.yml"):
        deps = _conda_deps(path)
        assert "matplotlib-base" in deps and "matplotlib" not in deps, path


def _imports(tree: ast.AST, top_level: bool) -> set[str]:
    """Top-level module names imported in ``tree``: at module level (``top_level``, also
    inside a module-level try/if), or anywhere inside a function or class."""
    found = set()
    nodes = ast.walk(tree)
    if top_level:
        nodes = [n for stmt in tree.body if not isinstance(
                 stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                 for n in ast.walk(stmt)]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_direct_imports_of_the_package_are_declared():
    """Every third-party module kaiser_edu imports comes from a declared distribution, so a
    non-editable install in a clean environment has it: modules imported at module level
    from pyproject's dependencies; modules imported lazily, inside a function, from the
    dependencies or an extra (an optional feature). The import name -> distribution map is
    the installed packages' own (importlib.metadata.packages_distributions)."""
    from importlib.metadata import packages_distributions

    providers = packages_distributions()
    required = {_split(r)[0] for r in PROJECT["dependencies"]}
    optional = {_split(r)[0] for extra in PROJECT["optional-dependencies"].values()
                for r in extra}
    stdlib = set(sys.stdlib_module_names) | {"kaiser_edu", "__future__"}
    problems = []
    for path in sorted((REPO / "kaiser_edu").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = _imports(tree, top_level=True) - stdlib
        lazy = _imports(tree, top_level=False) - stdlib - top
        for modules, allowed, where in ((top, required, "dependencies"),
                                        (lazy, required | optional, "dependencies or extras")):
            for module in sorted(modules):
                dists = {_normalise(d) for d in providers.get(module, [])}
                if not dists & allowed:
                    problems.append(f"{path.relative_to(REPO)} imports {module} "
                                    f"(from {sorted(dists) or 'nothing installed'}), "
                                    f"not in pyproject's {where}")
    assert not problems, "\n".join(problems)


# --- licence and metadata ---------------------------------------------------------------
def test_licence_code_mit_and_lesson_text_cc_by():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert PROJECT["license"] == "MIT AND CC-BY-4.0"
    assert "LICENSE" in PROJECT["license-files"]
    assert "MIT License" in text and "Permission is hereby granted, free of charge" in text
    assert "CC-BY-4.0" in text and "creativecommons.org/licenses/by/4.0/legalcode" in text
    assert "Markdown (narrative) cells" in text  # says which part is which


def test_citation_changelog_and_version_agree():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0"
    assert str(citation["version"]) == __version__
    assert citation["repository-code"] == PROJECT["urls"]["Source"]
    assert set(citation["license"]) == {"MIT", "CC-BY-4.0"}
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{__version__}]" in changelog


def test_readme_binder_badge_and_nbgitpuller_link_use_the_project_urls():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    binder = PROJECT["urls"]["Binder"]
    assert binder.endswith("?urlpath=lab/tree/notebooks/00_tour.ipynb")
    assert f"]({binder})" in readme, "README's Binder badge must open the tour in JupyterLab"
    assert (REPO / "notebooks" / "00_tour.ipynb").is_file()
    repo = PROJECT["urls"]["Source"]
    assert "hub/user-redirect/git-pull?repo=" + repo.replace(":", "%3A").replace("/", "%2F") \
        in readme, "README must document the nbgitpuller link for this repository"
    assert f"git+{repo}" in readme  # pip from the repository, until a release is on PyPI


def test_version_option(capsys):
    from kaiser_edu.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"kaiser-edu {__version__}"


# --- the course files ---------------------------------------------------------------------
def test_course_files_are_every_file_of_the_course_folders():
    """Found by walking the folders: a notebook added by anyone ships without a list to
    update. Compared with an independent glob of the checkout."""
    files = materials.course_files(REPO)
    for folder in ("notebooks", "exercises", "solutions"):
        on_disk = {p.relative_to(REPO).as_posix() for p in (REPO / folder).glob("*.ipynb")}
        assert on_disk and on_disk <= set(files), folder
    assert "examples/scenarios/user_page_4k.json" in files
    assert all(f.split("/")[0] in materials.COURSE_FOLDERS for f in files)


def test_course_files_skip_editor_and_jupyter_leftovers(tmp_path):
    (tmp_path / "notebooks" / ".ipynb_checkpoints").mkdir(parents=True)
    (tmp_path / "notebooks" / "00_tour.ipynb").write_text("{}")
    (tmp_path / "notebooks" / "05_new_lesson.ipynb").write_text("{}")
    (tmp_path / "notebooks" / ".ipynb_checkpoints" / "00_tour-checkpoint.ipynb").write_text("{}")
    (tmp_path / "examples" / "__pycache__").mkdir(parents=True)
    (tmp_path / "examples" / "__pycache__" / "x.pyc").write_bytes(b"")
    (tmp_path / "examples" / "s.json").write_text("{}")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("")
    assert materials.course_files(tmp_path) == [
        "examples/s.json", "notebooks/00_tour.ipynb", "notebooks/05_new_lesson.ipynb"]


def test_manifest_in_puts_every_course_folder_in_the_sdist():
    manifest = (REPO / "MANIFEST.in").read_text(encoding="utf-8").split()
    for folder in materials.COURSE_FOLDERS:
        assert f"graft {folder}" in " ".join(manifest), folder


def test_the_wheel_ships_exactly_the_course_files(tmp_path):
    """A wheel built from this checkout (pip wheel: setup.py's build step, for real) holds
    every course file under kaiser_edu/materials/, byte for byte, and nothing else there."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "--wheel-dir", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = tmp_path.glob("kaiser_edu-*.whl")
    prefix = "kaiser_edu/materials/"
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n[len(prefix):]: zf.read(n) for n in zf.namelist() if n.startswith(prefix)}
        names = zf.namelist()
    assert sorted(shipped) == materials.course_files(REPO)
    for rel, data in shipped.items():
        assert data == (REPO / rel).read_bytes(), rel
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names[-8:]
    assert not any(n.startswith(("tests/", "notebooks/")) for n in names)


# --- Binder -------------------------------------------------------------------------------
def test_binder_scripts_are_executable_and_share_the_numba_settings():
    for name in ("postBuild", "start"):
        path = REPO / "binder" / name
        assert path.stat().st_mode & stat.S_IXUSR, f"binder/{name} must be executable"
        assert "numba-env.sh" in path.read_text(encoding="utf-8")
    post = (REPO / "binder" / "postBuild").read_text(encoding="utf-8")
    assert "set -euo pipefail" in post and "kaiser-edu doctor" in post
    assert "loaded from numba's cache" in post  # the build fails if the cache is not used
    env = (REPO / "binder" / "numba-env.sh").read_text(encoding="utf-8")
    assert "NUMBA_CACHE_DIR" in env and "NUMBA_CPU_NAME" in env


def test_binder_numba_env_puts_the_cache_in_the_image(tmp_path):
    out = subprocess.run(
        ["bash", "-c", f"source {REPO / 'binder' / 'numba-env.sh'}; "
                       "echo $NUMBA_CACHE_DIR $NUMBA_CPU_NAME"],
        env={"PATH": os.environ["PATH"], "NB_PYTHON_PREFIX": str(tmp_path), "HOME": "/nohome"},
        capture_output=True, text=True, check=True).stdout.split()
    assert out == [f"{tmp_path}/share/kaiser-edu/numba-cache", "generic"]


# --- the command line -----------------------------------------------------------------------
def _python(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_help_and_version_do_not_import_numba():
    """`kaiser-edu --help` must answer at once on a hub: no numba, numpy or notebooks."""
    code = ("import sys\nfrom kaiser_edu.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('numba', 'numpy', 'matplotlib', 'nbclient', 'ipywidgets')"
            " if m in sys.modules]\nprint('HEAVY', heavy, file=sys.stderr)")
    for argv in (["--help"], ["--version"], ["lab", "--help"], ["practice", "--help"]):
        result = _python(code, *argv)
        assert "HEAVY []" in result.stderr, (argv, result.stderr)
    assert "COMMAND" in _python(code, "--help").stdout


def test_practice_into_a_closed_pipe_ends_quietly():
    """`kaiser-edu practice ... | head -1`: the reader goes away; no BrokenPipeError
    traceback, and the exit status of a process stopped by SIGPIPE (141)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaiser_edu", "practice", "translate", "--seed", "1",
         "--count", "400", "--answer"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # like head after its first line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert first.startswith(b"Practice problem")
    assert stderr == "", stderr
