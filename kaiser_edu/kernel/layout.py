"""The Linux x86-64 virtual memory map (4-level paging), with KASLR drawn from a seed.

Addresses follow Documentation/arch/x86/x86_64/mm.rst. The user half is the lower canonical
half; the kernel owns PGD entries 256-511. Three regions move under KASLR
(arch/x86/mm/kaslr.c): the direct map (``page_offset_base``), vmalloc and vmemmap, each
shifted by a random multiple of 1 GiB (PUD_SIZE); the kernel image moves by a random multiple
of 2 MiB inside its 1 GiB window above ``__START_KERNEL_map``
(arch/x86/boot/compressed/kaslr.c). The espfix and vsyscall *slots* are fixed, and so is
the 512 GiB slot reserved for the cpu_entry_area: that is why PTI can clone those PGD
entries once, at boot. Inside its slot the cpu_entry_area moved with Linux 6.2: commit
97e3d26b5e5f "x86/mm: Randomize per-cpu entry area" (CVE-2023-0597) puts each CPU's area at
a random, distinct slot of CPU_ENTRY_AREA_SIZE (init_cea_offsets() in
arch/x86/mm/cpu_entry_area.c; only the read-only IDT page stays at CPU_ENTRY_AREA_BASE);
since a3f547addcaa "x86/mm: Do not shuffle CPU entry areas without KASLR" only when KASLR is
on. ``KernelLayout.boot(..., randomize_cea=True)`` draws that offset (``cea_offset``). The
LDT remap slot is fixed too, but it is not cloned at boot: each process's LDT is mapped
there, and the slot's PGD entry copied into its user PGD, when the process installs its
first LDT (map_ldt_struct_to_user(), kernel/ldt.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kaiser_edu.errors import KaiserEduError
from kaiser_edu.hw import bits as b

TASK_SIZE_MAX = 0x0000_7FFF_FFFF_F000  # top of user space (one guard page below 2**47)
KERNEL_PGD_BOUNDARY = 256  # PGD indices 256..511 map the kernel half
LDT_BASE_ADDR = 0xFFFF_8800_0000_0000  # LDT remap for PTI (0.5 TB, one PGD slot)
PAGE_OFFSET_BASE = 0xFFFF_8880_0000_0000  # direct map of all physical memory (64 TB)
VMALLOC_BASE = 0xFFFF_C900_0000_0000
VMEMMAP_BASE = 0xFFFF_EA00_0000_0000
CPU_ENTRY_AREA_BASE = 0xFFFF_FE00_0000_0000  # per-CPU entry data, a whole PGD slot
ESPFIX_BASE_ADDR = 0xFFFF_FF00_0000_0000  # %esp fixup stacks
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000  # __START_KERNEL_map: the kernel image, 1 GiB
KERNEL_IMAGE_SIZE = 1 << 30
MODULES_VADDR = 0xFFFF_FFFF_C000_0000
VSYSCALL_ADDR = 0xFFFF_FFFF_FF60_0000
LOAD_PHYSICAL_ADDR = 0x100_0000  # 16 MiB: where the kernel is loaded without KASLR
# CPU_ENTRY_AREA_PER_CPU: the per-CPU areas start one page above the read-only IDT.
CPU_ENTRY_AREA_PER_CPU = CPU_ENTRY_AREA_BASE + b.PAGE_SIZE
# sizeof(struct cpu_entry_area) depends on the configuration (debug-store buffers, the
# #VC stacks...); the model's area is the 8 pages it maps (Kernel.cea_pages()).
CPU_ENTRY_AREA_SIZE = 8 * b.PAGE_SIZE
CPU_ENTRY_AREA_MAP_SIZE = 1 << 39  # P4D_SIZE on x86-64 since 97e3d26b5e5f

# Span the KASLR'd regions share (kaslr.c: from __PAGE_OFFSET_BASE up to the end of the
# vmemmap region), and each region's size.
_KASLR_START = PAGE_OFFSET_BASE
_KASLR_END = 0xFFFF_FC00_0000_0000
_REGION_TB = {"direct map": 64, "vmalloc": 32, "vmemmap": 1}


@dataclass(frozen=True)
class KernelLayout:
    """Where the kernel's regions are in one boot. ``KernelLayout.boot(seed)`` randomises."""

    page_offset: int = PAGE_OFFSET_BASE
    vmalloc_base: int = VMALLOC_BASE
    vmemmap_base: int = VMEMMAP_BASE
    text_offset: int = LOAD_PHYSICAL_ADDR  # offset of _text above __START_KERNEL_map
    kaslr: bool = False
    seed: int | None = None
    cea_offset: int = 0  # CPU 0's cpu_entry_area slot (_cea_offset), in CPU_ENTRY_AREA_SIZE

    @classmethod
    def boot(cls, seed: int | None = None, kaslr: bool = True,
             randomize_cea: bool = False) -> KernelLayout:
        """The layout of one boot: fixed without KASLR, else drawn from ``seed``
        (the same seed gives the same layout, as a lesson needs). ``randomize_cea`` draws
        CPU 0's cpu_entry_area slot as init_cea_offsets() does (Linux 6.2+), from its own
        stream of the seed so that the other regions do not move with it."""
        cea_offset = 0
        if randomize_cea:
            max_cea = (CPU_ENTRY_AREA_MAP_SIZE - b.PAGE_SIZE) // CPU_ENTRY_AREA_SIZE
            cea_rng = random.Random(None if seed is None else f"cpu_entry_area/{seed}")
            cea_offset = cea_rng.randrange(max_cea)  # prandom_u32_max(max_cea)
        if not kaslr:
            return cls(seed=seed, cea_offset=cea_offset)
        rng = random.Random(seed)
        # kernel_randomize_memory(): regions in order, each pushed up by a random number of
        # PUDs taken from the entropy that remains (the slack left after all the regions).
        slack = (_KASLR_END - _KASLR_START) - sum(tb << 40 for tb in _REGION_TB.values())
        bases = []
        vaddr = _KASLR_START
        for i, size_tb in enumerate(_REGION_TB.values()):
            share = slack // (len(_REGION_TB) - i)
            shift = rng.randrange(0, share + 1) & ~(b.PUD_SIZE - 1)
            vaddr += shift
            slack -= shift
            bases.append(vaddr)
            vaddr += size_tb << 40
        # The image: a 2 MiB-aligned slot between 16 MiB and the end of its 1 GiB window.
        slots = (KERNEL_IMAGE_SIZE - LOAD_PHYSICAL_ADDR - (64 << 20)) // b.PMD_SIZE
        text_offset = LOAD_PHYSICAL_ADDR + rng.randrange(slots) * b.PMD_SIZE
        return cls(*bases, text_offset=text_offset, kaslr=True, seed=seed,
                   cea_offset=cea_offset)

    def cpu_entry_area(self, cpu: int = 0) -> int:
        """get_cpu_entry_area(cpu): the start of a CPU's area (the simulator runs CPU 0;
        other CPUs are shown only for a fixed layout, where CPU n is n areas up)."""
        if cpu != 0 and self.cea_offset:
            raise KaiserEduError(f"cpu_entry_area({cpu}): only CPU 0's slot is drawn in a "
                                 "randomised layout; ask for cpu=0")
        return CPU_ENTRY_AREA_PER_CPU + (self.cea_offset + cpu) * CPU_ENTRY_AREA_SIZE

    @property
    def kernel_text(self) -> int:
        """Virtual address of _text, the start of the kernel image."""
        return START_KERNEL_MAP + self.text_offset

    def direct_map(self, pa: int) -> int:
        """__va(): the direct-map address of a physical address."""
        return self.page_offset + pa

    def regions(self) -> list[tuple[str, int, int]]:
        """(name, start, end) of the regions a lesson draws, lowest first."""
        return [
            ("user space", 0, TASK_SIZE_MAX),
            ("LDT remap (PTI)", LDT_BASE_ADDR, LDT_BASE_ADDR + (1 << 39)),
            ("direct map of all physical memory", self.page_offset, self.page_offset + (64 << 40)),
            ("vmalloc/ioremap", self.vmalloc_base, self.vmalloc_base + (32 << 40)),
            ("vmemmap (struct page array)", self.vmemmap_base, self.vmemmap_base + (1 << 40)),
            ("cpu_entry_area", CPU_ENTRY_AREA_BASE, CPU_ENTRY_AREA_BASE + (1 << 39)),
            ("%esp fixup stacks (espfix)", ESPFIX_BASE_ADDR, ESPFIX_BASE_ADDR + (1 << 39)),
            ("kernel text, data, bss", START_KERNEL_MAP, START_KERNEL_MAP + KERNEL_IMAGE_SIZE),
            ("modules", MODULES_VADDR, MODULES_VADDR + (1 << 30) - (16 << 20)),
            ("vsyscall (legacy)", VSYSCALL_ADDR, VSYSCALL_ADDR + b.PAGE_SIZE),
        ]

    def region_of(self, va: int) -> str:
        """Name of the region containing ``va`` ('unused hole' if none)."""
        for name, start, end in self.regions():
            if start <= va < end:
                return name
        return "unused hole"
