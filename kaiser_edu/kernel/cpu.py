"""CPU models and the boot-time PTI decision (arch/x86/mm/pti.c, pti_check_boottime_disable).

What matters for isolation is a short list of CPUID facts: is the CPU affected by Meltdown
(Linux's X86_BUG_CPU_MELTDOWN, see :func:`x86_bug_cpu_meltdown`), does it have PCID (tags
TLB entries with an address-space id) and INVPCID (flushes one PCID from anywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.kernel.versions import DEFAULT_LINUX, LinuxVersion, linux_version


@dataclass(frozen=True)
class CpuModel:
    name: str
    vendor: str
    meltdown: bool  # X86_BUG_CPU_MELTDOWN
    pcid: bool  # CPUID.01H:ECX.PCID[17]
    invpcid: bool  # CPUID.(07H,0):EBX.INVPCID[10]
    # CPUID.(07H,0):EBX.RTM[11]: TSX, which the Meltdown PoC uses to suppress the fault
    # (IAIK/meltdown libkdump.c); set only for the models the side-channel lab runs with TSX.
    rtm: bool = False


CPU_MODELS: dict[str, CpuModel] = {
    "skylake": CpuModel("Intel Core i7-6700K (Skylake)", "GenuineIntel", True, True, True,
                        rtm=True),
    "haswell": CpuModel("Intel Xeon E5-2680 v3 (Haswell)", "GenuineIntel", True, True, True),
    "westmere": CpuModel("Intel Xeon X5670 (Westmere)", "GenuineIntel", True, True, False),
    "core2": CpuModel("Intel Core 2 Duo E8400", "GenuineIntel", True, False, False),
    "icelake": CpuModel("Intel Xeon 8380 (Ice Lake, RDCL_NO)", "GenuineIntel", False, True, True),
    "zen2": CpuModel("AMD EPYC 7742 (Zen 2)", "AuthenticAMD", False, True, True),
}

PTI_PREFIX = "Kernel/User page tables isolation: "  # pr_fmt in pti.c

# cpu_vuln_whitelist (arch/x86/kernel/cpu/common.c): CPUs that do not speculate at all
# (NO_SPECULATION: no X86_BUG_* is set) and vendors marked NO_MELTDOWN.
_NO_SPECULATION_FAMILIES = {4: None, 5: {"GenuineIntel", "CentaurHauls", "Geode by NSC",
                                         "Vortex86 SoC"}, 6: {"Vortex86 SoC"}}
_NO_SPECULATION_ATOMS = {"ATOM_SALTWELL", "ATOM_SALTWELL_TABLET", "ATOM_SALTWELL_MID",
                         "ATOM_BONNELL", "ATOM_BONNELL_MID"}
_NO_MELTDOWN_VENDORS = {"AuthenticAMD", "HygonGenuine"}


def x86_bug_cpu_meltdown(vendor: str, family: int, intel_model: str = "",
                         rdcl_no: bool = False) -> bool:
    """Does Linux set X86_BUG_CPU_MELTDOWN (cpu_set_bug_bits(), arch/x86/kernel/cpu/common.c)?

    Not only AMD and CPUs reporting RDCL_NO (IA32_ARCH_CAPABILITIES bit 0) are exempt:
    cpu_vuln_whitelist also marks every family-4 CPU, family-5 Intel, Centaur, NSC and
    Vortex, family-6 Vortex and the in-order Atoms (Saltwell, Bonnell: ``intel_model`` as in
    ``INTEL_FAM6_*``) NO_SPECULATION, and Hygon NO_MELTDOWN. Returns True if affected."""
    if family in _NO_SPECULATION_FAMILIES:
        vendors = _NO_SPECULATION_FAMILIES[family]
        if vendors is None or vendor in vendors:
            return False
    if vendor == "GenuineIntel" and family == 6 and intel_model in _NO_SPECULATION_ATOMS:
        return False
    return vendor not in _NO_MELTDOWN_VENDORS and not rdcl_no


def cpu_model(name: str | CpuModel) -> CpuModel:
    if isinstance(name, CpuModel):
        return name
    if name not in CPU_MODELS:
        raise KaiserEduError(f"unknown CPU model {name!r}; known: {', '.join(CPU_MODELS)}")
    return CPU_MODELS[name]


def _cmdline_words(cmdline: str) -> tuple[list[str], bool]:
    """The pti=/nopti words of a command line in order, and whether mitigations=off is
    there. An invalid pti= value is an error in every version (Linux 6.7+ rejects it with
    -EINVAL, "Malformed early option"; 4.15-6.6 silently ignored it, which the simulator
    does not copy)."""
    words, mitigations_off = [], False
    for word in cmdline.split():
        if word == "nopti":
            words.append("off")
        elif word == "mitigations=off":
            mitigations_off = True
        elif word.startswith("pti="):
            mode = word[4:]
            if mode not in ("on", "off", "auto"):
                raise KaiserEduError(f"pti= must be on, off or auto (got {mode!r}: -EINVAL)")
            words.append("pti=" + mode)
    return words, mitigations_off


def _pti_mode(cmdline: str, rule: str) -> str:
    """pti_mode after the command line: "on", "off" or "auto", by one version's rule
    (kernel/versions.py explains each, with its commit)."""
    words, mitigations_off = _cmdline_words(cmdline)
    explicit = [w[4:] for w in words if w.startswith("pti=")]
    if rule in ("4.15", "5.2"):
        # cmdline_find_option("pti") is consulted first: any pti= wins (the last one when
        # repeated, an assumption: not confirmed against arch/x86/lib/cmdline.c here).
        if explicit:
            return explicit[-1]
        if "off" in words or (rule == "5.2" and mitigations_off):
            return "off"  # nopti, or (5.2+) cpu_mitigations_off()
        return "auto"
    # 6.7+: each early_param() handler overwrites pti_mode, so the later word wins.
    mode = "auto"
    for word in words:
        mode = word[4:] if word.startswith("pti=") else "off"
    if mitigations_off and (rule == "6.7" or mode == "auto"):
        # 6.7: cpu_mitigations_off() forces it off whatever pti= said; mainline: only
        # pti=auto is turned off (!cpu_attack_vector_mitigated(CPU_MITIGATE_USER_KERNEL)).
        mode = "off"
    return mode


def pti_decision(cmdline: str, cpu: CpuModel,
                 linux: str | LinuxVersion = DEFAULT_LINUX) -> tuple[bool, str]:
    """Whether the kernel turns PTI on, and what it prints, for a boot command line.

    Mirrors pti_check_boottime_disable() (arch/x86/mm/pti.c) of the Linux version
    ``linux`` (kernel/versions.py): ``pti=on`` forces PTI on, ``pti=off`` and ``nopti``
    force it off, ``pti=auto`` (the default) enables it only on a Meltdown-affected CPU.
    How they combine, and what ``mitigations=off`` does, changed twice:

    * up to 6.6 any ``pti=`` beats ``nopti`` and (from 5.2, d68be4c4d312)
      ``mitigations=off``, whatever the order;
    * from e2efc8e7d36a (6.7) the later of ``pti=``/``nopti`` wins and ``mitigations=off``
      forces PTI off even with ``pti=on``;
    * from 02c7d5b8e0d1 (mainline) ``mitigations=off`` turns off only ``pti=auto``.

    The message is what the kernel log shows, one line per pr_info(), "" when Linux prints
    nothing: pti_print_if_insecure() prints only on an affected CPU, pti_print_if_secure()
    only on an unaffected one, and pti_init() prints "enabled".
    """
    mode = _pti_mode(cmdline, linux_version(linux).pti_cmdline)
    lines = []
    if mode == "on":
        if not cpu.meltdown:
            lines.append("force enabled on command line.")
        on = True
    elif mode == "off":
        if cpu.meltdown:
            lines.append("disabled on command line.")
        on = False
    else:
        on = cpu.meltdown
    if on:
        lines.append("enabled")  # pti_init()
    return on, "\n".join(PTI_PREFIX + line for line in lines)
