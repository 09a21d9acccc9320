"""The pip path, end to end, as a student on a JupyterHub takes it (`make pip-path`).

1. Build the sdist, then the wheel from the sdist (`python -m build`), and check that the
   wheel carries every course file of the checkout (kaiser_edu/materials/).
2. Make a fresh venv outside the checkout and install the wheel into it, non-editable,
   with nothing from this checkout on the path.
3. `kaiser-edu lab --dir COURSE --prepare-only`: the course is copied out of the package.
4. Start `kaiser-edu lab --dir COURSE --no-browser` and wait until JupyterLab serves the
   tour, then open it in headless Chromium (when Chromium and Playwright are there, as
   for `make browser`) until its cells show and its kernel is ready: the time from the
   start of `pip install` to here is the student's wait.
5. nbval on one lesson and one lab of the copy, and `kaiser-edu check` on the copied
   exercise (nothing attempted: exit 1, and says so) and solution (all passed: exit 0).
6. Binder's steps in that venv: binder/postBuild as repo2docker runs it (install from the
   checkout, compile the numba kernels into the image's cache), then a session started
   through binder/start, whose first MMU call must load the kernels from that cache.

Prints each step's wall-clock time and the CPU time of the processes it ran, the wheel's
size and contents. Run by this checkout's .venv Python (which has `build`); the fresh venv
is made with PYTHON (default: python3). KEEP=1 keeps the temporary folder.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "kaiser_edu" / "course"))
import materials  # noqa: E402  (stdlib only; the same list of course files as the build)

LESSON = "notebooks/01_virtual_addresses.ipynb"
LAB = "exercises/lab01_addresses.ipynb"
SOLUTION = "solutions/lab01_addresses.ipynb"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Step:
    """Times a step: wall clock and the CPU time of the child processes it waited for."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> Step:
        print(f"== pip path: {self.name}", flush=True)
        self.wall, self.cpu = time.monotonic(), children_cpu()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            print(f"   {self.name}: {time.monotonic() - self.wall:.1f} s wall, "
                  f"{children_cpu() - self.cpu:.1f} s CPU", flush=True)


def run(command: list[str], *, expect: int = 0, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, text=True, capture_output=True, **kwargs)
    if result.returncode != expect:
        sys.exit(f"FAILED (exit {result.returncode}, expected {expect}): "
                 f"{' '.join(command)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="kaiser-edu-pip-path."))
    try:
        return pip_path(work)
    finally:
        if os.environ.get("KEEP"):
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def pip_path(work: Path) -> int:
    start = time.monotonic()
    pip_cache = run([sys.executable, "-m", "pip", "cache", "dir"]).stdout.strip()
    # The student's world: no checkout on any path, a HOME of their own, no numba cache
    # chosen for them (numba picks its default, as it would on a hub).
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR", "VIRTUAL_ENV", "JPY_PARENT_PID")}
    env.update(HOME=str(work / "home"), PIP_CACHE_DIR=pip_cache,
               PIP_DISABLE_PIP_VERSION_CHECK="1", JUPYTER_CONFIG_DIR=str(work / "jcfg"),
               JUPYTER_RUNTIME_DIR=str(work / "jrun"),
               JUPYTERLAB_SETTINGS_DIR=str(work / "jsettings"),
               JUPYTERLAB_WORKSPACES_DIR=str(work / "jws"))
    (work / "home").mkdir()

    with Step("build the sdist, and the wheel from it"):
        run([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(REPO)])
        (wheel,) = (work / "dist").glob("kaiser_edu-*.whl")
        (sdist,) = (work / "dist").glob("kaiser_edu-*.tar.gz")
    check_wheel(wheel, sdist)

    venv, course = work / "venv", work / "course"
    bin_ = venv / "bin"
    with Step("fresh venv and pip install of the wheel (non-editable)"):
        run([os.environ.get("PYTHON", "python3"), "-m", "venv", str(venv)], cwd=work, env=env)
        install_start = time.monotonic()
        run([str(bin_ / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
            cwd=work, env=env)
    where = run([str(bin_ / "python"), "-c", "import kaiser_edu; print(kaiser_edu.__file__)"],
                cwd=work, env=env).stdout.strip()
    assert where.startswith(str(venv)) and "site-packages" in where, where
    print(f"   kaiser_edu imported from {where}")

    with Step("kaiser-edu lab --dir COURSE --prepare-only"):
        out = run([str(bin_ / "kaiser-edu"), "lab", "--dir", str(course), "--prepare-only"],
                  cwd=work, env=env).stdout
        expected = materials.course_files(REPO)
        assert f"Copied the course ({len(expected)} files) into {course}" in out, out
        assert materials.course_files(course) == expected
        print(f"   {out.splitlines()[0]}")
    with Step("kaiser-edu lab --no-browser: JupyterLab serves the tour, Chromium opens it"):
        served, opened = serve_the_tour(bin_, course, work, env)
    print(f"   from the start of `pip install` to the tour served by JupyterLab: "
          f"{served - install_start:.1f} s wall")
    if opened is not None:
        print(f"   ... to the tour open in Chromium with its kernel ready: "
              f"{opened - install_start:.1f} s wall")

    with Step("kaiser-edu --version, --help in the fresh venv"):
        version = run([str(bin_ / "kaiser-edu"), "--version"], cwd=work, env=env).stdout
        run([str(bin_ / "kaiser-edu"), "--help"], cwd=work, env=env)
        print(f"   {version.strip()}")

    with Step("kaiser-edu doctor in the fresh venv: the first numba compile, and its cache"):
        report = run([str(bin_ / "kaiser-edu"), "doctor"], cwd=work, env=env).stdout
        for line in report.splitlines():
            if line.startswith("[") and ("numba JIT" in line or "numba cache" in line):
                print(f"   {line}")
        assert "Ready: everything the course needs works." in report, report

    with Step("install pytest and nbval into the fresh venv (CI only, not the student's)"):
        run([str(bin_ / "python"), "-m", "pip", "install", "--quiet", "pytest", "nbval"],
            cwd=work, env=env)
    with Step(f"nbval on {LESSON} and {LAB} of the copy"):
        result = run([str(bin_ / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                      "--rootdir", str(course), "--nbval", "--nbval-current-env",
                      "--nbval-sanitize-with", str(REPO / "tests" / "nbval_sanitize.cfg"),
                      "--nbval-cell-timeout=300", LESSON, LAB], cwd=course, env=env)
        print(f"   {result.stdout.strip().splitlines()[-1]}")
    with Step(f"kaiser-edu check on the copied {LAB} (exit 1) and {SOLUTION} (exit 0)"):
        exercise = run([str(bin_ / "kaiser-edu"), "check", LAB], cwd=course, env=env, expect=1)
        assert "not attempted" in exercise.stdout.lower(), exercise.stdout[-2000:]
        solution = run([str(bin_ / "kaiser-edu"), "check", SOLUTION], cwd=course, env=env)
        print(f"   exercise: {exercise.stdout.strip().splitlines()[-1]}")
        print(f"   solution: {solution.stdout.strip().splitlines()[-1]}")

    # Last, as it reinstalls kaiser_edu in the venv from the checkout, as Binder does.
    with Step("Binder: binder/postBuild in the venv, then a session through binder/start"):
        binder_env = dict(env, PATH=f"{bin_}:{env['PATH']}", NB_PYTHON_PREFIX=str(venv))
        run(["bash", str(REPO / "binder" / "postBuild")], cwd=REPO, env=binder_env)
        session = run([str(REPO / "binder" / "start"), "kaiser-edu", "doctor"], cwd=work,
                      env=binder_env).stdout
        assert "loaded from numba's cache" in session, session
        for line in session.splitlines():
            if line.startswith("[") and ("numba JIT" in line or "numba cache" in line):
                print(f"   {line}")

    print(f"== pip path: all passed in {time.monotonic() - start:.0f} s "
          f"({children_cpu():.0f} s CPU in child processes)")
    return 0


def check_wheel(wheel: Path, sdist: Path) -> None:
    """The wheel holds every course file of the checkout, byte for byte."""
    prefix = "kaiser_edu/materials/"
    with zipfile.ZipFile(wheel) as zf:
        infos = zf.infolist()
        shipped = {i.filename[len(prefix):]: zf.read(i) for i in infos
                   if i.filename.startswith(prefix)}
    expected = materials.course_files(REPO)
    missing, extra = set(expected) - set(shipped), set(shipped) - set(expected)
    assert not missing and not extra, f"wheel: missing {sorted(missing)}, extra {sorted(extra)}"
    for rel in expected:
        assert shipped[rel] == (REPO / rel).read_bytes(), f"wheel's {rel} differs"
    by_folder: dict[str, list[int]] = {}
    for info in infos:
        parts = info.filename.split("/")
        key = "/".join(parts[:3]) if info.filename.startswith(prefix) else parts[0]
        entry = by_folder.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += info.file_size
    print(f"   wheel {wheel.name}: {wheel.stat().st_size / 1e6:.2f} MB compressed, "
          f"{sum(i.file_size for i in infos) / 1e6:.2f} MB unpacked, {len(infos)} files; "
          f"sdist {sdist.stat().st_size / 1e6:.2f} MB")
    for key, (count, size) in sorted(by_folder.items()):
        print(f"     {key:40} {count:3} files {size / 1e3:8.0f} kB")


def serve_the_tour(bin_: Path, course: Path, work: Path,
                   env: dict[str, str]) -> tuple[float, float | None]:
    """Start `kaiser-edu lab` on a free port. Returns when (monotonic) the server first
    served the tour and JupyterLab's page for it, and when the tour was open in headless
    Chromium (its cells shown, its kernel started, connected and idle), or None without
    Chromium and Playwright (the browser test, `make browser`, says why)."""
    port, token = free_port(), "kaiser-edu-pip-path"
    server = subprocess.Popen(
        [str(bin_ / "kaiser-edu"), "lab", "--dir", str(course), "--no-browser",
         "--port", str(port), "--", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    base, tour = f"http://127.0.0.1:{port}", "notebooks/00_tour.ipynb"
    page = f"{base}/lab/tree/{tour}?reset&token={token}"
    try:
        served = wait_for(server, lambda: serves(f"{base}/api/contents/{tour}?content=0&"
                                                 f"token={token}", page), "serve the tour")
        return served, open_in_chromium(server, page, f"{base}/api/sessions?token={token}",
                                        tour)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_for(server: subprocess.Popen, ready, what: str, seconds: float = 120) -> float:
    """Poll ``ready()`` until true; the monotonic time it first was."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if ready():
                return time.monotonic()
        except OSError:
            pass
        if server.poll() is not None:
            sys.exit(f"FAILED: kaiser-edu lab exited: {server.stderr.read()[-4000:]}")
        if time.monotonic() > deadline:
            sys.exit(f"FAILED: JupyterLab did not {what} within {seconds:.0f} s")
        time.sleep(0.2)


def serves(contents_url: str, page_url: str) -> bool:
    with urllib.request.urlopen(contents_url, timeout=2) as reply:
        if json.load(reply)["type"] != "notebook":
            return False
    with urllib.request.urlopen(page_url, timeout=5) as reply:
        return reply.status == 200 and b"JupyterLab" in reply.read()


def open_in_chromium(server: subprocess.Popen, page_url: str, sessions_url: str,
                     tour: str) -> float | None:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from playwright.sync_api import sync_playwright
        from test_browser import CHROMIUM, CHROMIUM_ARGS
    except ImportError as exc:
        print(f"   (no browser measurement: {exc})")
        return None
    if not os.access(CHROMIUM, os.X_OK):
        print(f"   (no browser measurement: {CHROMIUM} is missing)")
        return None

    def kernel_ready() -> bool:
        with urllib.request.urlopen(sessions_url, timeout=2) as reply:
            sessions = json.load(reply)
        return any(s["path"] == tour and s["kernel"]["execution_state"] == "idle"
                   and s["kernel"]["connections"] >= 1 for s in sessions)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                    headless=True)
        try:
            tab = browser.new_page()
            tab.goto(page_url)
            tab.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=120_000)
            return wait_for(server, kernel_ready, "start the tour's kernel")
        finally:
            browser.close()


if __name__ == "__main__":
    sys.exit(main())
