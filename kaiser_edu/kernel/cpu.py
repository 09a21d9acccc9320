"""CPU models and the boot-time PTI decision (arch/x86/mm/pti.c, pti_check_boottime_disable).

What matters for isolation is a short list of CPUID facts: is the CPU affected by Meltdown
(Linux's X86_BUG_CPU_MELTDOWN, set unless the CPU is AMD or reports RDCL_NO), does it have
PCID (tags TLB entries with an address-space id) and INVPCID (flushes one PCID from
anywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

from kaiser_edu.errors import KaiserEduError


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


def cpu_model(name: str | CpuModel) -> CpuModel:
    if isinstance(name, CpuModel):
        return name
    if name not in CPU_MODELS:
        raise KaiserEduError(f"unknown CPU model {name!r}; known: {', '.join(CPU_MODELS)}")
    return CPU_MODELS[name]


def pti_decision(cmdline: str, cpu: CpuModel) -> tuple[bool, str]:
    """Whether the kernel turns PTI on, and what it prints, for a boot command line.

    Mirrors pti_check_boottime_disable() as of Linux 6.6 (arch/x86/mm/pti.c): ``pti=on``
    forces PTI on, ``pti=off`` and ``nopti`` force it off, ``pti=auto`` (the default) enables
    it only on a Meltdown-affected CPU; ``mitigations=off`` turns it off unless ``pti=`` was
    given ("pti= takes priority over nopti and mitigations=off"); of ``pti=`` and ``nopti``
    the later word wins, as each early_param() handler overwrites pti_mode. The message is
    what the kernel log shows, one line per pr_info(), "" when Linux prints nothing:
    pti_print_if_insecure() prints only on an affected CPU, pti_print_if_secure() only on
    an unaffected one, and pti_init() prints "enabled".
    """
    mode, explicit, mitigations_off = "auto", False, False
    for word in cmdline.split():
        if word == "nopti":
            mode = "off"
        elif word == "mitigations=off":
            mitigations_off = True
        elif word.startswith("pti="):
            mode, explicit = word[4:], True
            if mode not in ("on", "off", "auto"):
                raise KaiserEduError(f"pti= must be on, off or auto (got {mode!r}: -EINVAL)")
    lines = []
    if mode == "on":
        if not cpu.meltdown:
            lines.append("force enabled on command line.")
        on = True
    elif mode == "off" or (mitigations_off and not explicit):
        if cpu.meltdown:
            lines.append("disabled on command line.")
        on = False
    else:
        on = cpu.meltdown
    if on:
        lines.append("enabled")  # pti_init()
    return on, "\n".join(PTI_PREFIX + line for line in lines)
