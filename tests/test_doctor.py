"""``kaiser-edu doctor`` (kaiser_edu/course/doctor.py): the readers on sample /sys and
/proc/cpuinfo files of real machine types, missing files, the numba check and the command.

The cpuinfo samples are trimmed copies of real ones (one flags line per CPU; the kernel
prints the same flags for every CPU). Note ``invpcid_single``: a different flag (Linux's
synthetic "INVPCID type 1 usable"), which must not be read as ``invpcid``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kaiser_edu import __version__
from kaiser_edu.cli import main
from kaiser_edu.course import doctor
from kaiser_edu.course.doctor import (
    ERROR,
    INFO,
    OK,
    UNAVAILABLE,
    WARN,
    Finding,
    cpu_flag_findings,
    environment_report,
    format_report,
    meltdown_finding,
    read_cpu_flags,
)

INTEL_SKYLAKE_PTI = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 142
model name\t: Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma \
cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm abm \
invpcid_single pti ssbd ibrs ibpb stibp fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx \
smap clflushopt xsaveopt xsavec xgetbv1 xsaves md_clear flush_l1d
bugs\t\t: cpu_meltdown spectre_v1 spectre_v2 spec_store_bypass l1tf mds swapgs

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge pcid pti smep smap invpcid
"""

# Sandy Bridge: PCID but no INVPCID (that came with Haswell).
INTEL_SANDY_BRIDGE_PTI = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i5-2500 CPU @ 3.30GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat syscall nx \
rdtscp lm constant_tsc pni pclmulqdq ssse3 cx16 pcid sse4_1 sse4_2 popcnt aes xsave avx \
pti ssbd ibrs ibpb stibp xsaveopt md_clear flush_l1d
"""

# Core 2: neither PCID nor INVPCID.
INTEL_CORE2_PTI = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM)2 Duo CPU     E8400  @ 3.00GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx lm constant_tsc pni ssse3 cx16 sse4_1 \
xsave lahf_lm pti
"""

AMD_ZEN3 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl \
pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand \
hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch fsgsbase bmi1 \
avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 \
xsaves clzero xsaveerptr rdpru arat npt nrip_save umip vaes vpclmulqdq rdpid fsrm
bugs\t\t: sysret_ss_attrs spectre_v1 spectre_v2 spec_store_bypass srso
"""

ARM64 = """\
processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid
CPU implementer\t: 0x41
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def by_name(findings: list[Finding]) -> dict[str, Finding]:
    return {f.name: f for f in findings}


# --- Meltdown status --------------------------------------------------------------------
@pytest.mark.parametrize("content, status, words", [
    ("Mitigation: PTI\n", INFO, "page-table isolation"),
    ("Not affected\n", INFO, "pays nothing for KPTI"),
    ("Vulnerable\n", WARN, "could read kernel memory"),
])
def test_meltdown_states_are_explained(tmp_path, content, status, words):
    f = meltdown_finding(write(tmp_path, "meltdown", content))
    assert (f.status, f.value) == (status, content.strip())
    assert words in f.explanation


def test_meltdown_unknown_status_is_shown_as_is(tmp_path):
    f = meltdown_finding(write(tmp_path, "meltdown", "Unknown (XEN PV detected, hypervisor "
                                                     "mitigation required)\n"))
    assert f.status == INFO and f.value.startswith("Unknown (XEN PV")
    assert "Documentation/admin-guide/hw-vuln" in f.explanation


def test_meltdown_missing_file(tmp_path):
    f = meltdown_finding(tmp_path / "no-such-file")
    assert (f.status, f.value) == (INFO, UNAVAILABLE)


# --- CPU flags --------------------------------------------------------------------------
def test_flags_are_read_from_the_first_cpu_only(tmp_path):
    flags = read_cpu_flags(write(tmp_path, "cpuinfo", INTEL_SKYLAKE_PTI))
    assert {"pti", "pcid", "invpcid", "invpcid_single", "md_clear"} <= flags
    assert "cpu_meltdown" not in flags  # that is on the bugs line


@pytest.mark.parametrize("sample, pti, pcid, invpcid, cost", [
    (INTEL_SKYLAKE_PTI, "yes", "yes", "yes", "low"),
    (INTEL_SANDY_BRIDGE_PTI, "yes", "yes", "no", "low"),
    (INTEL_CORE2_PTI, "yes", "no", "no", "high"),
    (AMD_ZEN3, "no", "yes", "yes", "none"),
])
def test_flags_explained(tmp_path, sample, pti, pcid, invpcid, cost):
    found = by_name(cpu_flag_findings(write(tmp_path, "cpuinfo", sample)))
    assert [found[f"host: {n}"].value for n in ("pti", "pcid", "invpcid")] == [pti, pcid, invpcid]
    assert found["host: KPTI cost"].value == cost
    assert all(f.explanation for f in found.values())
    if pcid == "no":
        assert "flushes the TLB" in found["host: pcid"].explanation


def test_invpcid_single_alone_is_not_invpcid(tmp_path):
    path = write(tmp_path, "cpuinfo", "flags\t\t: fpu pcid invpcid_single pti\n")
    assert by_name(cpu_flag_findings(path))["host: invpcid"].value == "no"


@pytest.mark.parametrize("content", [None, ARM64, ""])
def test_cpuinfo_missing_or_not_x86(tmp_path, content):
    path = tmp_path / "cpuinfo" if content is None else write(tmp_path, "cpuinfo", content)
    (f,) = cpu_flag_findings(path)
    assert (f.status, f.value) == (INFO, UNAVAILABLE)


# --- the whole report -------------------------------------------------------------------
def test_report_for_a_vulnerable_intel_with_pti(tmp_path):
    findings = environment_report(write(tmp_path, "meltdown", "Mitigation: PTI\n"),
                                  write(tmp_path, "cpuinfo", INTEL_SKYLAKE_PTI), run_jit=False)
    found = by_name(findings)
    assert found["kaiser_edu"].value == __version__
    for name in ("Python", "numpy", "numba", "ipywidgets", "jupyterlab"):
        assert found[name].status == OK
    assert found["host: Meltdown"].value == "Mitigation: PTI"
    assert "numba JIT" not in found and not doctor.broken(findings)
    text = format_report(findings)
    assert "Ready: everything the course needs works." in text
    assert all(f.name in text for f in findings)
    assert max(len(line) for line in text.splitlines()) <= 100


def test_report_where_nothing_is_readable(tmp_path):
    findings = environment_report(tmp_path / "a", tmp_path / "b", run_jit=False)
    host = [f for f in findings if f.name.startswith("host")]
    assert [f.value for f in host] == [UNAVAILABLE, UNAVAILABLE]


def test_numba_jit_works_and_is_timed():
    from numba.core import config

    f = doctor.jit_finding()
    if config.DISABLE_JIT:  # NUMBA_DISABLE_JIT=1: runs, but is reported as a warning
        assert f.status == WARN and f.value.startswith("disabled")
        return
    assert f.status == OK, f
    assert f.value.startswith("MMU kernel ready in ") and f.value.endswith(" s")
    # The kernel is compiled now, so a second check says so.
    assert doctor.jit_finding().explanation == "already compiled in this Python process"


def test_numba_cache_is_where_numba_itself_put_it(tmp_path):
    """The location comes from the MMU kernel's own cache object: in a fresh process with
    NUMBA_CACHE_DIR, a folder under it; without, next to the sources."""
    import os
    import subprocess
    import sys

    code = ("from kaiser_edu.course import doctor; f = doctor.numba_cache_finding(); "
            "print(f.status, f.value, sep='|'); print(f.explanation)")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.splitlines()
    status, value = out[0].split("|")
    assert status == OK and Path(value).parent == tmp_path / "cache", out
    assert out[1].startswith("set by NUMBA_CACHE_DIR")
    env.pop("NUMBA_CACHE_DIR")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.splitlines()
    assert out[0].split("|")[1].endswith("__pycache__") or "UserWide" in out[1]


def test_a_read_only_package_folder_gives_the_user_cache(tmp_path):
    """As on a hub where site-packages is read-only (simulated: numba's in-tree locator
    cannot write, as it would find; root ignores file modes), numba falls back to the
    per-user cache folder, and the doctor names that folder and says why."""
    import subprocess
    import sys

    code = ("import numba.core.caching as c\n"
            "def read_only(self):\n    raise PermissionError('read-only file system')\n"
            "c.InTreeCacheLocator.ensure_cache_path = read_only\n"
            "from kaiser_edu.course import doctor\n"
            "f = doctor.numba_cache_finding()\nprint(f.value)\nprint(f.explanation)")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path)
    value, explanation = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
        timeout=120).stdout.splitlines()[:2]
    # HOME is tmp_path, and the report shows the home folder as ~ (doctor.shown_path).
    assert value.startswith("~/.cache/numba/"), value
    assert "read-only" in explanation and "per user" in explanation


@pytest.mark.parametrize(("locator", "words"), [
    ("UserWideCacheLocator", "read-only"),
    ("InTreeCacheLocator", "next to the package's sources"),
    ("UserProvidedCacheLocator", "NUMBA_CACHE_DIR"),
    ("SomeFutureLocator", "chosen by numba (SomeFutureLocator)"),
])
def test_numba_cache_explains_why_there(tmp_path, locator, words):
    f = doctor.numba_cache_finding((str(tmp_path / "c"), locator))
    assert (f.status, f.value) == (OK, str(tmp_path / "c")) and words in f.explanation


def test_numba_cache_unknown_location_is_said(tmp_path):
    assert doctor.numba_cache_finding(None).value == "unknown"


# --- the Jupyter server's widgets ---------------------------------------------------------
def _fake_proc(root: Path, processes: dict[int, tuple[int, list[str]]]) -> Path:
    """A /proc with the given pid -> (ppid, command line) (only stat and cmdline)."""
    for pid, (ppid, cmdline) in processes.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} (some name) S {ppid} 1 1 0 -1\n")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
    return root


def _fake_python(path: Path, prints: str) -> str:
    path.write_text(f"#!/bin/sh\necho '{prints}'\n")
    path.chmod(0o755)
    return str(path)


def test_server_found_among_the_ancestors_with_widgets(tmp_path):
    python = _fake_python(tmp_path / "python3.11", "3.0.17")
    proc = _fake_proc(tmp_path / "proc", {
        40: (30, ["/bin/bash"]), 30: (20, [python, "/env/bin/jupyter-lab", "--port=8888"]),
        20: (1, ["/sbin/init"])})
    server = doctor.find_jupyter_server(pid=40, proc=proc, environ={})
    assert server == (30, [python, "/env/bin/jupyter-lab", "--port=8888"])
    f = doctor.server_widgets_finding(server, proc=proc)
    assert (f.status, f.value) == (OK, "jupyterlab_widgets 3.0.17") and python in f.explanation


def test_kernel_finds_its_server_by_jpy_parent_pid_and_it_lacks_widgets(tmp_path):
    python = _fake_python(tmp_path / "python3", "")
    proc = _fake_proc(tmp_path / "proc", {
        7: (1, [python, "-m", "jupyterhub-singleuser"]), 50: (1, ["/usr/bin/python3"])})
    server = doctor.find_jupyter_server(pid=50, proc=proc, environ={"JPY_PARENT_PID": "7"})
    assert server is not None and server[0] == 7
    f = doctor.server_widgets_finding(server, proc=proc)
    assert f.status == WARN and "missing" in f.value and "IntSlider" in f.explanation


def test_server_whose_python_cannot_be_run_cannot_tell(tmp_path):
    proc = _fake_proc(tmp_path / "proc", {9: (1, ["/nonexistent/python3", "-m", "jupyter_server"])})
    f = doctor.server_widgets_finding((9, ["/nonexistent/python3", "-m", "jupyter_server"]),
                                      proc=proc)
    assert f.status == INFO and f.value.startswith("cannot tell")


def test_no_server_says_it_cannot_tell(tmp_path):
    proc = _fake_proc(tmp_path / "proc", {5: (1, ["/bin/bash"])})
    assert doctor.find_jupyter_server(pid=5, proc=proc, environ={}) is None
    f = doctor.server_widgets_finding(None)
    assert f.status == INFO and f.value.startswith("cannot tell")
    assert "jupyterlab_widgets" in f.explanation


def test_a_real_server_process_is_found_through_proc(tmp_path):
    """A real parent process started as `jupyter-lab` (a script run through its shebang,
    as pip installs it) runs the check in a child: it finds that parent and asks this very
    Python, which has jupyterlab_widgets."""
    import subprocess
    import sys

    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this system")
    script = tmp_path / "jupyter-lab"
    script.write_text(
        f"#!{sys.executable}\nimport subprocess, sys\n"
        "code = 'from kaiser_edu.course import doctor; f = doctor.server_widgets_finding(); "
        "print(f.status, f.value, sep=chr(124))'\n"
        "sys.exit(subprocess.call([sys.executable, '-c', code]))\n")
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "JPY_PARENT_PID"}
    out = subprocess.run([str(script)], capture_output=True, text=True, check=True,
                         timeout=120, env=env).stdout.strip()
    assert out == f"{OK}|jupyterlab_widgets {doctor._version('jupyterlab_widgets')}", out


def test_missing_optional_package_is_a_warning(monkeypatch):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda d: None if d == "jupyterlab" else real(d))
    found = by_name(doctor.software_findings())
    assert (found["jupyterlab"].status, found["jupyterlab"].value) == (WARN, "not installed")


# --- the command ------------------------------------------------------------------------
def test_cli_doctor_runs(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("kaiser_edu", "numba JIT", "numba cache", "host: Meltdown"):
        assert name in out
    assert "Ready: everything the course needs works." in out


def test_cli_doctor_fails_when_numba_is_broken(monkeypatch, capsys):
    from kaiser_edu.hw.mmu import MMU

    def broken(*args, **kwargs):
        raise RuntimeError("LLVM ERROR: simulated")

    monkeypatch.setattr(MMU, "access", broken)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"[{ERROR:5}] numba JIT" in out and "LLVM ERROR: simulated" in out
    assert "Not ready: numba JIT" in out


def test_building_the_parser_stays_light():
    """cli.build_parser() imports every subcommand module: doctor's must not pull in numba."""
    import subprocess
    import sys

    code = ("import sys, kaiser_edu.course.doctor; "
            "print('numba' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.split() == ["False", "False"]
