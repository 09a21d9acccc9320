"""The legacy vsyscall page (arch/x86/entry/vsyscall/vsyscall_64.c).

Old glibc called ``gettimeofday()`` by jumping to a fixed address, 0xffffffffff600000, in
the *kernel* half: the one page of the kernel half that user mode may touch. Linux keeps
the ABI in one of three ``vsyscall=`` modes:

- ``xonly`` (the default since Linux 5.3, CONFIG_LEGACY_VSYSCALL_XONLY): nothing is mapped;
  a call faults and the #PF handler emulates it (emulate_vsyscall()); reading the page
  faults like any unmapped address;
- ``emulate``: the page is mapped user-readable, read-only and NX (PAGE_KERNEL_VVAR) in the
  fixmap, and map_vsyscall() sets _PAGE_USER on every upper-level entry above it
  (set_vsyscall_pgtable_user_bits()), because U must be set at every level (SDM 4.6.1);
  a call still faults (NX) and is emulated;
- ``none``: nothing is mapped and a call is a SIGSEGV.

Under PTI, pti_setup_vsyscall() copies the PTE into the user tables and sets the user bits
there too, so the page stays readable from user mode: the one deliberate exception to
"nothing in the user PGD's kernel half is user-accessible" (kernel/audit.py, invariant d).
The simulator maps the page in ``emulate`` mode; it does not emulate the calls (a fetch from
the page is a fault that kills the task, in every mode).
"""

from __future__ import annotations

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b
from kaiser_edu.hw.address import table_index
from kaiser_edu.kernel.layout import VSYSCALL_ADDR

VSYSCALL_MODES = ("xonly", "emulate", "none")
# __PAGE_KERNEL_VVAR: present, user, accessed, NX, global; read-only.
PAGE_KERNEL_VVAR = (b.PAGE_PRESENT | b.PAGE_USER | b.PAGE_ACCESSED | b.PAGE_NX
                    | b.PAGE_GLOBAL)
# The three entry points: gettimeofday, time, getcpu, each "mov $nr, %rax; syscall; ret".
_VSYSCALL_CODE = {0x000: 0xC3050F00000060C0C748, 0x400: 0xC3050F000000C9C0C748,
                  0x800: 0xC3050F00000135C0C748}


def check_vsyscall_mode(mode: str) -> str:
    if mode not in VSYSCALL_MODES:
        raise KaiserEduError(f"vsyscall must be one of {', '.join(VSYSCALL_MODES)}; got {mode!r}")
    return mode


def is_vsyscall_vaddr(va: int) -> bool:
    return va & ~(b.PAGE_SIZE - 1) == VSYSCALL_ADDR


def set_vsyscall_pgtable_user_bits(mem, pgd_pa: int, levels: int = 4) -> None:
    """Set _PAGE_USER on the PGD, PUD and PMD entries above the vsyscall page in the tables
    rooted at ``pgd_pa`` (every one must be present)."""
    table = pgd_pa
    for level in range(levels, 1, -1):
        entry_pa = table | table_index(VSYSCALL_ADDR, level) << 3
        entry = mem.read_qword(entry_pa)
        if not entry & b.PAGE_PRESENT:
            raise KaiserEduError(f"no level-{level} entry above the vsyscall page")
        mem.write_qword(entry_pa, entry | b.PAGE_USER)
        table = entry & b.phys_addr_mask(52)


def map_vsyscall(k) -> None:
    """map_vsyscall(): in ``emulate`` mode, the page (the entry points' code) in the fixmap
    of init_mm, user-readable, and the user bits on the path to it."""
    if k.vsyscall != "emulate":
        return
    pa = k.alloc.alloc()
    for offset, code in _VSYSCALL_CODE.items():
        k.mem.write_qword(pa + offset, code & (1 << 64) - 1)
        k.mem.write_qword(pa + offset + 8, code >> 64)
    k.kernel_tables.map(VSYSCALL_ADDR, pa, b.PAGE_SIZE, k._kernel_flags(PAGE_KERNEL_VVAR))
    set_vsyscall_pgtable_user_bits(k.mem, k.init_mm.pgd)
