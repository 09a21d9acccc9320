"""Which Linux the simulated kernel is: the PTI behaviours that changed, and the commit of each.

Linux PTI was merged for 4.15 (January 2018) and has changed since in ways the course
teaches. Mixing them under one name would teach a kernel that never existed, so every
behaviour that changed is a field of :class:`LinuxVersion`, and ``Kernel(linux=...)`` picks
one version (a mainline release as tagged: stable branches may carry backports, e.g. the
randomised cpu_entry_area was backported to 5.10/5.15/6.1 stable trees for CVE-2023-0597).

The behaviours and the commits that changed them (hashes as in torvalds/linux):

``pti_cmdline`` - how ``pti=``, ``nopti`` and ``mitigations=off`` decide (arch/x86/mm/pti.c,
    pti_check_boottime_disable()):

    * ``"4.15"``: ``cmdline_find_option(boot_command_line, "pti", ...)`` is checked first, so
      any valid ``pti=`` wins over ``nopti`` whatever the order; ``mitigations=`` does not
      exist yet.
    * ``"5.2"``: "x86/speculation: Support 'mitigations=' cmdline option" (Josh Poimboeuf,
      pulled as core-speculation-for-linus for 5.2 and backported to the 4.9, 4.14, 4.19 and
      5.1 stable trees in May 2019; the hash d68be4c4d312 is not confirmed here) adds
      ``|| cpu_mitigations_off()`` next to ``nopti``, still after the ``pti=`` check:
      ``pti=`` beats both.
    * ``"6.7"``: e2efc8e7d36a "x86/pti: Fix kernel warnings for pti= and nopti cmdline
      options" (tip x86/bugs, 23 Sep 2023; first release 6.7 as far as checked) turns both
      into early_param() handlers that overwrite one ``pti_mode``: the later word wins, and
      ``mitigations=off`` forces PTI off even after ``pti=on``. (The sentence "pti= takes
      priority over nopti and mitigations=off" is a comment of that patch's v1, posted 11 Aug
      2023, whose code kept ``pti=`` winning; the version merged dropped both.)
    * ``"attack-vector"``: 02c7d5b8e0d1 "x86/pti: Add attack vector controls for PTI"
      (tip x86/bugs, July 2025; the 6.17 merge window as far as checked) turns off only
      ``pti=auto``, when ``!cpu_attack_vector_mitigated(CPU_MITIGATE_USER_KERNEL)``;
      ``mitigations=off`` turns every attack vector off (kernel/cpu.c: not re-read here),
      so ``pti=auto mitigations=off`` is off while ``pti=on mitigations=off`` is on again.

``syscall_entry`` - where SYSCALL lands under PTI:

    * ``"trampoline"`` (4.15): MSR_LSTAR points at a per-CPU copy of
      ``entry_SYSCALL_64_trampoline`` in the cpu_entry_area (arch/x86/kernel/cpu/common.c
      syscall_init()), which stashes the user RSP on the entry stack, switches CR3 and jumps
      to the kernel text.
    * ``"tss"``: bf904d2762ee "x86/pti/64: Remove the SYSCALL64 entry trampoline" (4.20, per
      the issue; the release was not confirmed here) enters at ``entry_SYSCALL_64`` itself,
      spills the user RSP into ``tss.sp2``, and so pti_clone_user_shared() maps every CPU's
      TSS page (``cpu_tss_rw``) into the user tables.

``cea_randomized`` / ``cea_random_without_kaslr`` - where each CPU's cpu_entry_area is:

    * fixed (``CPU_ENTRY_AREA_PER_CPU + cpu * CPU_ENTRY_AREA_SIZE``) up to 6.1;
    * 97e3d26b5e5f "x86/mm: Randomize per-cpu entry area" (6.2, CVE-2023-0597): each CPU's
      area at a random, distinct slot of the 512 GiB P4D (init_cea_offsets()), even when
      booted with ``nokaslr``;
    * a3f547addcaa "x86/mm: Do not shuffle CPU entry areas without KASLR" (tip x86/urgent,
      March 2023; 6.3 as far as checked): the shuffle only when KASLR is on.

``paranoid_restore_skips_kernel_cr3`` - RESTORE_CR3 after a paranoid entry (NMI, #MC, #DB,
    #DF) that interrupted the kernel:

    * 21e944591102 "x86/mm: Optimize RESTORE_CR3" (the December 2017 PTI series; that it
      was in 4.15 is not confirmed here): the saved
      kernel CR3 is written back, with NOFLUSH ("KERNEL pages can always resume with NOFLUSH
      as we do explicit flushes");
    * bb998361999e "x86/entry: Avoid redundant CR3 write on paranoid returns" (pulled for
      v6.9-rc1, "x86/entry for v6.9-rc1"): PARANOID_RESTORE_CR3 skips the write when the
      saved CR3 is a kernel one.

Not versioned (the same in every version here): the 8 KiB PGD pair, __pti_set_user_pgtbl()
with NX on the kernel copy, the PCID scheme of arch/x86/mm/tlb.c, the LDT remap.
"""

from __future__ import annotations

from dataclasses import dataclass

from kaiser_edu.errors import KaiserEduError


@dataclass(frozen=True)
class LinuxVersion:
    """The PTI-relevant behaviour of one mainline release (see the module docstring)."""

    name: str
    pti_cmdline: str  # "4.15" | "5.2" | "6.7" | "attack-vector"
    syscall_entry: str  # "trampoline" | "tss"
    cea_randomized: bool
    cea_random_without_kaslr: bool
    paranoid_restore_skips_kernel_cr3: bool


LINUX_VERSIONS: dict[str, LinuxVersion] = {
    v.name: v for v in (
        LinuxVersion("4.15", "4.15", "trampoline", False, False, False),
        LinuxVersion("4.20", "4.15", "tss", False, False, False),
        LinuxVersion("6.1", "5.2", "tss", False, False, False),
        LinuxVersion("6.2", "5.2", "tss", True, True, False),
        LinuxVersion("6.9", "6.7", "tss", True, False, True),
        LinuxVersion("mainline", "attack-vector", "tss", True, False, True),
    )
}

# The course's default: 6.1 (a long-term release) is the newest version whose behaviour is
# what the lessons show: SYSCALL through the TSS sp2 slot, a cpu_entry_area at a fixed
# address, RESTORE_CR3 writing the kernel CR3 back after an NMI.
DEFAULT_LINUX = "6.1"

# Each behaviour's commit, for the lessons and the tests to cite (hash, title, first release).
COMMITS: dict[str, tuple[str, str, str]] = {
    "mitigations=": ("d68be4c4d312", "x86/speculation: Support 'mitigations=' cmdline option",
                     "5.2"),
    "pti early_param": ("e2efc8e7d36a",
                        "x86/pti: Fix kernel warnings for pti= and nopti cmdline options", "6.7"),
    "pti attack vector": ("02c7d5b8e0d1", "x86/pti: Add attack vector controls for PTI",
                          "6.17"),
    "syscall tss": ("bf904d2762ee", "x86/pti/64: Remove the SYSCALL64 entry trampoline", "4.20"),
    "cea random": ("97e3d26b5e5f", "x86/mm: Randomize per-cpu entry area", "6.2"),
    "cea nokaslr": ("a3f547addcaa", "x86/mm: Do not shuffle CPU entry areas without KASLR",
                    "6.3"),
    "restore_cr3 noflush": ("21e944591102", "x86/mm: Optimize RESTORE_CR3", "4.15"),
    "restore_cr3 skip": ("bb998361999e",
                         "x86/entry: Avoid redundant CR3 write on paranoid returns", "6.9"),
}


def linux_version(name: str | LinuxVersion) -> LinuxVersion:
    """The :class:`LinuxVersion` called ``name`` ("4.15", "4.20", "6.1", "6.2", "6.9",
    "mainline")."""
    if isinstance(name, LinuxVersion):
        return name
    if not isinstance(name, str) or name not in LINUX_VERSIONS:
        raise KaiserEduError(
            f"unknown Linux version {name!r}; known: {', '.join(LINUX_VERSIONS)} "
            f"(default {DEFAULT_LINUX})")
    return LINUX_VERSIONS[name]
