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


CPU_MODELS: dict[str, CpuModel] = {
    "skylake": CpuModel("Intel Core i7-6700K (Skylake)", "GenuineIntel", True, True, True),
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

    Mirrors pti_check_boottime_disable(): ``pti=on`` forces it on, ``pti=off`` and ``nopti``
    force it off, ``pti=auto`` (the default) enables it only on a Meltdown-affected CPU.
    """
    mode = "auto"
    for word in cmdline.split():
        if word in ("nopti", "mitigations=off"):  # cpu_mitigations_off() forces it off too
            mode = "off"
        elif word.startswith("pti="):
            mode = word[4:]
            if mode not in ("on", "off", "auto"):
                raise KaiserEduError(f"pti= must be on, off or auto (got {mode!r}: -EINVAL)")
    if mode == "off":
        msg = "disabled on command line." if cpu.meltdown else "disabled."
        return False, PTI_PREFIX + msg
    if mode == "on":
        msg = "enabled" if cpu.meltdown else "force enabled on command line."
        return True, PTI_PREFIX + msg
    if not cpu.meltdown:
        return False, PTI_PREFIX + "not enabled: CPU not affected by Meltdown"
    return True, PTI_PREFIX + "enabled"
