"""``kaiser-edu doctor``: is this machine ready for the course, and what does its own CPU
say about Meltdown and KPTI?

:func:`environment_report` returns a list of :class:`Finding` (lesson 00 shows the same
list); :func:`format_report` turns it into the text the command prints. Three groups:

1. the software: kaiser_edu, Python, numpy, numba, ipywidgets, JupyterLab;
2. numba at work: a tiny machine (one page mapped, one access) run through the MMU kernel,
   timing the first call - the compile, or the load from numba's on-disk cache - and where
   that cache really lives (numba's own choice: NUMBA_CACHE_DIR, next to the sources, or
   the user's cache when the package's folder is read-only, as on a hub); then whether
   the *Jupyter server's* environment has jupyterlab_widgets, which draws the widgets
   (the kernel's having ipywidgets is not enough), or that it cannot tell;
3. the host: Linux's verdict on Meltdown (/sys/devices/system/cpu/vulnerabilities/meltdown)
   and the ``pti``, ``pcid`` and ``invpcid`` flags of /proc/cpuinfo, explained.

Every file is optional: a machine that is not Linux (or a container that hides /sys) gets
"unavailable on this system (not Linux?)", never an exception. The readers take the paths
as parameters, so tests feed them sample files.

Only a broken numba (or numpy) is an error: the simulator cannot run without it, and the
command then exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MELTDOWN_PATH = Path("/sys/devices/system/cpu/vulnerabilities/meltdown")
CPUINFO_PATH = Path("/proc/cpuinfo")
UNAVAILABLE = "unavailable on this system (not Linux?)"

OK, INFO, WARN, ERROR = "ok", "info", "warn", "error"


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, its status, the value found and what it
    means for a student."""

    name: str
    status: str  # ok, info, warn or error (error: the course cannot run)
    value: str
    explanation: str = ""


# --- software -----------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def shown_path(path: str | Path) -> str:
    """A path as the report shows it: relative to the course checkout when it is inside it
    (``.venv/bin/python``), else with ``~`` for the home directory. Lesson 00 prints the
    report, so its committed output must not carry the paths of the machine that ran it."""
    path = Path(path)
    for base, prefix in ((Path(__file__).resolve().parents[2], ""), (Path.home(), "~/")):
        try:
            return prefix + str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)


def software_findings() -> list[Finding]:
    """Versions of the package, Python and the libraries the course needs."""
    from kaiser_edu import __version__

    py = platform.python_version()
    findings = [
        Finding("kaiser_edu", OK, __version__),
        Finding("Python", OK if sys.version_info >= (3, 11) else ERROR, f"{py} ({shown_path(sys.executable)})",
                "" if sys.version_info >= (3, 11) else "the course needs Python 3.11 or newer"),
    ]
    needs = (
        ("numpy", ERROR, "the simulator keeps memory, TLB and traces in numpy arrays"),
        ("numba", ERROR, "the fast MMU is compiled by numba"),
        ("ipywidgets", WARN, "the lessons' interactive widgets need it (the CLI does not)"),
        ("jupyterlab", WARN, "the notebooks open in JupyterLab (`make lab`)"),
    )
    for dist, severity, why in needs:
        version = _version(dist)
        if version is None:
            findings.append(Finding(dist, severity, "not installed", why))
        else:
            findings.append(Finding(dist, OK, version))
    return findings


# --- the Jupyter server's environment -------------------------------------------------------
# Widgets are drawn by the *server's* JupyterLab, from the jupyterlab_widgets extension in the
# server's environment; the kernel (where ipywidgets runs) may be another environment. On a
# JupyterHub the two often differ, and a server without the extension shows every widget as
# text such as "IntSlider(value=0)": the most common "widgets do not work" on a hub.
PROC = Path("/proc")
WIDGETS_DIST = "jupyterlab_widgets"
_VERSION_OF = ("import importlib.metadata as m\n"
               "try: print(m.version({dist!r}))\n"
               "except m.PackageNotFoundError: print('')")


def _proc_parent(pid: int, proc: Path) -> int | None:
    stat = read_text(proc / str(pid) / "stat")
    if not stat:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def _cmdline(pid: int, proc: Path) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def find_jupyter_server(pid: int | None = None, proc: Path = PROC,
                        environ: dict[str, str] | None = None) -> tuple[int, list[str]] | None:
    """The Jupyter server this process runs under: (pid, command line), or None.

    A kernel knows its server's pid (jupyter_client's launcher sets JPY_PARENT_PID); a
    terminal opened in JupyterLab has the server among its ancestors. So: that pid first,
    then the chain of parents, taking the first whose command line names Jupyter.
    """
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    candidates = []
    if environ.get("JPY_PARENT_PID", "").isdigit():
        candidates.append(int(environ["JPY_PARENT_PID"]))
    seen, current = set(), _proc_parent(pid, proc)
    while current and current not in seen and len(seen) < 64:
        seen.add(current)
        candidates.append(current)
        current = _proc_parent(current, proc)
    for candidate in candidates:
        command = _cmdline(candidate, proc)
        if any("jupyter" in part.lower() for part in command[:3]):
            return candidate, command
    return None


def server_python(pid: int, command: list[str], proc: Path = PROC) -> str | None:
    """The interpreter running the server: its command line's first word when that is a
    Python (a ``jupyter-lab`` script started through its shebang has the environment's own
    python there, which /proc/PID/exe, resolving a venv's symlink, would lose), else
    /proc/PID/exe."""
    first = command[0] if command else ""
    if os.path.isabs(first) and "python" in os.path.basename(first) and os.path.exists(first):
        return first
    try:
        return os.readlink(proc / str(pid) / "exe")
    except OSError:
        return None


def widgets_version_of(python: str) -> str | None:
    """jupyterlab_widgets' version in ``python``'s environment ('' if not installed), or
    None if that interpreter cannot be run from here."""
    if python == sys.executable:
        return _version(WIDGETS_DIST) or ""
    import subprocess

    try:
        out = subprocess.run([python, "-c", _VERSION_OF.format(dist=WIDGETS_DIST)],
                             capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def server_widgets_finding(server: tuple[int, list[str]] | None | bool = True,
                           proc: Path = PROC) -> Finding:
    """Does the environment of the Jupyter server showing the lessons have
    jupyterlab_widgets? ``server``: :func:`find_jupyter_server`'s answer (``True``: look)."""
    name = "server widgets"
    if server is True:
        server = find_jupyter_server(proc=proc)
    if server is None:
        here = _version(WIDGETS_DIST)
        return Finding(name, INFO, "cannot tell: not running under a Jupyter server",
                       "`kaiser-edu lab` starts JupyterLab on this Python, whose environment "
                       + (f"has {WIDGETS_DIST} {here}, so widgets will work there. "
                          if here else f"LACKS {WIDGETS_DIST}: widgets would show as text. ")
                       + "On a JupyterHub, run this check from a notebook or a terminal inside "
                         "JupyterLab to test the hub's own server.")
    pid, command = server
    python = server_python(pid, command, proc)
    version = widgets_version_of(python) if python else None
    if version is None:
        return Finding(name, INFO, f"cannot tell (server pid {pid})",
                       f"the server's Python ({shown_path(python) if python else 'unknown'}) cannot be run from here "
                       "to ask; if widgets show as text such as IntSlider(...), the server's "
                       f"environment needs {WIDGETS_DIST} (pip install ipywidgets there)")
    if not version:
        return Finding(name, WARN, f"{WIDGETS_DIST} missing in the server's environment",
                       f"the Jupyter server (pid {pid}, {shown_path(python)}) cannot draw widgets: they "
                       f"show as text such as IntSlider(...). Install {WIDGETS_DIST} (it comes "
                       "with ipywidgets) in the server's environment - on a hub, ask its "
                       "admin - and reload the page.")
    return Finding(name, OK, f"{WIDGETS_DIST} {version}",
                   f"in the environment of the Jupyter server (pid {pid}, {shown_path(python)}): "
                   "widgets are drawn")


# --- numba --------------------------------------------------------------------------------
# How numba chose where to cache (its locator classes, numba/core/caching.py), for a student.
CACHE_LOCATORS = {
    "UserProvidedCacheLocator": "set by NUMBA_CACHE_DIR",
    "InTreeCacheLocator": "next to the package's sources (__pycache__)",
    "UserWideCacheLocator": (
        "your own cache folder: the package's folder is read-only (a system-wide or "
        "hub-wide install), so numba keeps compiled kernels per user"),
    "InTreeCacheLocatorFsAgnostic": "next to the package's sources (__pycache__)",
    "IPythonCacheLocator": "IPython's cache folder",
    "ZipCacheLocator": "the user cache (the package is imported from a zip file)",
}


def numba_cache_location() -> tuple[str, str] | None:
    """Where numba caches the MMU kernel in *this* process, as numba itself decided it (the
    kernel's cache object): (folder, locator class name); None if that cannot be read.

    numba picks the first of its locators that works: NUMBA_CACHE_DIR if set, else
    ``__pycache__`` next to the source if writable, else the per-user cache folder (what a
    read-only site-packages on a hub gets). Reading the choice from the kernel's own cache
    object reports that real folder instead of guessing from the configuration.
    """
    from kaiser_edu.hw import mmu_kernels

    cache = getattr(mmu_kernels.run_trace, "_cache", None)
    path = getattr(cache, "_cache_path", None)
    locator = getattr(getattr(cache, "_impl", None), "locator", None)
    if not path or locator is None:
        return None
    return str(path), type(locator).__name__


def numba_cache_finding(location: tuple[str, str] | None | bool = True) -> Finding:
    """Where numba keeps compiled kernels, why there, and whether it can write there.
    ``location`` is :func:`numba_cache_location`'s answer (``True``: ask it now)."""
    if location is True:
        try:
            location = numba_cache_location()
        except Exception as exc:  # numba missing or broken: reported by the JIT check
            return Finding("numba cache", WARN, "unknown", f"numba could not be imported: {exc}")
    if location is None:
        return Finding("numba cache", INFO, "unknown",
                       "this numba does not say where it caches; set NUMBA_CACHE_DIR to choose")
    where, locator = location
    why = CACHE_LOCATORS.get(locator, f"chosen by numba ({locator})")
    path = Path(where)
    probe = next((p for p in (path, *path.parents) if p.exists()), path)
    if os.access(probe, os.W_OK):
        return Finding("numba cache", OK, shown_path(path),
                       f"{why}; compiled kernels are saved here and loaded on the next start")
    return Finding("numba cache", WARN, f"{shown_path(path)} (not writable)",
                   f"{why}; numba cannot save compiled kernels there, so every start compiles "
                   "them again: set NUMBA_CACHE_DIR to a folder you can write")


def jit_finding() -> Finding:
    """Run one access on a tiny machine through the numba MMU kernel, timing the first call
    (a compile, or a load from the on-disk cache; :func:`kaiser_edu.hw.jit.load_mmu_kernel`).
    Required: status error if it fails."""
    try:
        from kaiser_edu.hw import jit

        start = time.perf_counter()
        status = jit.load_mmu_kernel()
        seconds = time.perf_counter() - start
    except Exception as exc:
        return Finding("numba JIT", ERROR, f"FAILED: {type(exc).__name__}: {exc}",
                       "the simulator's MMU kernel does not run; reinstall with `make venv`")
    if not status.ok:
        return Finding("numba JIT", ERROR, "FAILED: wrong translation",
                       f"the compiled MMU kernel gave a {status.problem}")
    if status.how == jit.NO_JIT:
        return Finding("numba JIT", WARN, f"disabled (NUMBA_DISABLE_JIT=1), {seconds:.3f} s",
                       "the kernels run as plain Python: correct, but far too slow for the labs")
    return Finding("numba JIT", OK, f"MMU kernel ready in {seconds:.2f} s", status.explanation)


# --- the host: Meltdown and KPTI ------------------------------------------------------------
MELTDOWN_MEANINGS = {
    "Mitigation: PTI": (
        "This CPU can be tricked into reading kernel memory from user code (Meltdown), so "
        "Linux runs with page-table isolation: user code runs on a shadow page table that "
        "maps almost none of the kernel - the very mechanism this course simulates."),
    "Not affected": (
        "This CPU never lets a user-mode load see kernel data, even speculatively, so Linux "
        "keeps the kernel mapped in every process and pays nothing for KPTI."),
    "Vulnerable": (
        "This CPU is affected and the mitigation is off (booted with pti=off or nopti, or a "
        "kernel without KPTI): a user program could read kernel memory with Meltdown."),
}


def read_text(path: Path | str) -> str | None:
    """A file's text, or None if it is missing or unreadable (not Linux, a sandbox, ...)."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def meltdown_finding(path: Path | str = MELTDOWN_PATH) -> Finding:
    """Linux's own verdict on this CPU and Meltdown (kernel 4.15+ sysfs file)."""
    text = read_text(path)
    if text is None:
        return Finding("host: Meltdown", INFO, UNAVAILABLE,
                       f"{path} could not be read; the course runs the same without it")
    status = text.strip()
    for prefix, meaning in MELTDOWN_MEANINGS.items():
        if status.startswith(prefix):
            return Finding("host: Meltdown", WARN if prefix == "Vulnerable" else INFO,
                           status, meaning)
    return Finding("host: Meltdown", INFO, status or "(empty)",
                   "Linux reports a status this course does not know; see the kernel's "
                   "Documentation/admin-guide/hw-vuln/ for what it means.")


def read_cpu_flags(path: Path | str = CPUINFO_PATH) -> set[str] | None:
    """The feature flags of the first CPU in /proc/cpuinfo (the ``flags`` line, x86 only);
    None if the file is missing or has no flags line (not Linux, not x86)."""
    text = read_text(path)
    if text is None:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return None


CPU_FLAG_MEANINGS = {
    "pti": (
        "Linux enabled page-table isolation: every system call, interrupt and exception "
        "switches CR3 to the kernel page tables and back (about a hundred cycles each way).",
        "page-table isolation is off: the CPU is not affected, or it was turned off at boot.",
    ),
    "pcid": (
        "process-context identifiers: TLB entries are tagged with the address space, so the "
        "CR3 switches of KPTI keep the TLB instead of flushing it. Dave Hansen's KAISER "
        "patches (2017) measured an lseek() loop at -42% with PCID, -58% without.",
        "no PCIDs: under KPTI every CR3 switch flushes the TLB, and user code refills it "
        "after each system call - KPTI's most expensive case.",
    ),
    "invpcid": (
        "INVPCID flushes one address (or all) of a chosen PCID: Linux uses it to drop a "
        "stale user-space translation without switching CR3.",
        "no INVPCID: to drop one stale user translation Linux flushes the whole user PCID at "
        "the next return to user space, and a kernel-address flush costs a TLB-flushing CR3 "
        "write on the next use of every PCID.",
    ),
}


def cpu_flag_findings(path: Path | str = CPUINFO_PATH) -> list[Finding]:
    """One finding per flag that matters for KPTI's cost, and a one-line summary."""
    flags = read_cpu_flags(path)
    if flags is None:
        return [Finding("host: CPU flags", INFO, UNAVAILABLE,
                        f"{path} has no x86 'flags' line or could not be read")]
    findings = []
    for flag, (present, absent) in CPU_FLAG_MEANINGS.items():
        have = flag in flags
        findings.append(Finding(f"host: {flag}", INFO, "yes" if have else "no",
                                present if have else absent))
    findings.append(Finding("host: KPTI cost", INFO, *kpti_cost(flags)))
    return findings


def kpti_cost(flags: set[str]) -> tuple[str, str]:
    """What this host pays for KPTI, from its flags: (short value, explanation)."""
    if "pti" not in flags:
        return "none", "no isolation, so no CR3 switches on kernel entry and exit."
    if "pcid" in flags:
        return ("low", "two CR3 writes per kernel entry, without TLB flushes thanks to PCIDs; "
                "typical workloads lose a few percent (Hansen: about 5%).")
    return ("high", "two CR3 writes per kernel entry, each flushing the TLB: syscall-heavy "
            "programs can lose half their speed (an lseek() loop: -58%, Hansen 2017).")


# --- the report -----------------------------------------------------------------------------
def environment_report(
    meltdown_path: Path | str = MELTDOWN_PATH,
    cpuinfo_path: Path | str = CPUINFO_PATH,
    run_jit: bool = True,
) -> list[Finding]:
    """Everything ``kaiser-edu doctor`` and lesson 00 show, in order. ``run_jit=False``
    skips the numba check (which may compile for tens of seconds on a cold cache)."""
    findings = software_findings()
    if run_jit:
        findings.append(jit_finding())
    findings.append(numba_cache_finding())
    findings.append(server_widgets_finding())
    findings.append(meltdown_finding(meltdown_path))
    findings.extend(cpu_flag_findings(cpuinfo_path))
    return findings


def broken(findings: list[Finding]) -> list[Finding]:
    """The findings that stop the course from running."""
    return [f for f in findings if f.status == ERROR]


def format_report(findings: list[Finding], width: int = 92) -> str:
    """The report as aligned text: ``[status] name  value`` and the explanation under it."""
    import textwrap

    name_width = max(len(f.name) for f in findings)
    lines = []
    for f in findings:
        lines.append(f"[{f.status:5}] {f.name:{name_width}}  {f.value}")
        if f.explanation:
            indent = " " * (9 + name_width)
            lines += textwrap.wrap(f.explanation, width, initial_indent=indent,
                                   subsequent_indent=indent)
    bad = broken(findings)
    lines.append("")
    lines.append("Not ready: " + ", ".join(f.name for f in bad) if bad else
                 "Ready: everything the course needs works.")
    return "\n".join(lines)


# --- the command ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Exit status 0 if the course can run, 1 if something required (numpy, "
                     "numba) is broken. The first run may take a while: numba compiles the MMU.")


def run(args: argparse.Namespace) -> int:
    print("kaiser-edu doctor: checking this machine (the first numba compile may take a "
          "while)...", flush=True)
    findings = environment_report()
    print(format_report(findings))
    return 1 if broken(findings) else 0
