"""The simulated kernel image: where its text, entry text, data, per-CPU areas and a secret live.

A real vmlinux is laid out by arch/x86/kernel/vmlinux.lds.S; the parts that matter for page
table isolation are reproduced with realistic relative positions:

* ``.entry.text`` (``__entry_text_start`` .. ``__entry_text_end``), the assembly that runs
  between the CPU's switch to ring 0 and the CR3 switch (arch/x86/entry/entry_64.S). PTI
  clones it into the user page tables at PMD granularity (pti_clone_entry_text), so the whole
  2 MiB around it becomes visible from user mode;
* the rest of ``.text`` (do_syscall_64, exc_page_fault, the scheduler...), which is not;
* ``.data..percpu`` with each CPU's ``cpu_tss_rw`` (the TSS whose ``sp2`` slot the SYSCALL
  entry uses as scratch before it can switch CR3: its page is mapped into the user tables),
  the GDT, the entry (trampoline) stack and the IST exception stacks, which the
  cpu_entry_area aliases;
* ``.data`` with a secret, the target of the Meltdown lab.

The image is loaded at physical 16 MiB (LOAD_PHYSICAL_ADDR) and mapped with 2 MiB pages at
``__START_KERNEL_map`` + the KASLR text offset, like Linux's kernel mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

from kaiser_edu.hw import bits as b
from kaiser_edu.kernel.layout import LOAD_PHYSICAL_ADDR, KernelLayout

TEXT_SIZE = 2 * b.PMD_SIZE  # entry text in the first PMD, everything else in the second
RODATA_SIZE = b.PMD_SIZE
DATA_SIZE = b.PMD_SIZE
IMAGE_SIZE = TEXT_SIZE + RODATA_SIZE + DATA_SIZE
ENTRY_TEXT_OFFSET = 0x1000  # __entry_text_start - _text
ENTRY_TEXT_SIZE = 0x4000

# Offsets of entry points inside .entry.text (entry_64.S) and in the rest of .text.
ENTRY_SYMBOLS = {
    "entry_SYSCALL_64": 0x000,
    "syscall_return_via_sysret": 0x300,
    "asm_common_interrupt": 0x600,
    "asm_exc_page_fault": 0x900,
    "asm_exc_double_fault": 0xC00,
    "asm_exc_nmi": 0xF00,
    "swapgs_restore_regs_and_return_to_usermode": 0x1200,
    # Linux 4.15 only (removed by bf904d2762ee): its page is aliased into the cpu_entry_area.
    "entry_SYSCALL_64_trampoline": 0x3000,
}
TEXT_SYMBOLS = {  # in the second PMD of .text
    "do_syscall_64": 0x1000,
    "exc_page_fault": 0x3000,
    "common_interrupt": 0x5000,
    "exc_nmi": 0x7000,
    "__switch_to": 0x9000,
}
# Per-CPU area (one CPU's copy) inside .data: page offsets.
PERCPU_OFFSET = 0x10000
PERCPU_PAGES = {"cpu_tss_rw": 0, "gdt_page": 1, "entry_stack_storage": 2,
                "exception_stacks_df": 3, "exception_stacks_nmi": 4, "percpu_hot": 5}
SECRET_OFFSET = 0x80000  # a page of .data holding the lab's secret
SECRET_TEXT = b"The KAISER secret: kernel memory is not for user eyes!"


@dataclass(frozen=True)
class KernelImage:
    """Addresses of the image's sections and symbols for one boot (``layout``)."""

    layout: KernelLayout
    phys_base: int = LOAD_PHYSICAL_ADDR

    @property
    def text(self) -> int:
        return self.layout.kernel_text

    @property
    def entry_text(self) -> tuple[int, int]:
        start = self.text + ENTRY_TEXT_OFFSET
        return start, start + ENTRY_TEXT_SIZE

    @property
    def rodata(self) -> int:
        return self.text + TEXT_SIZE

    @property
    def data(self) -> int:
        return self.rodata + RODATA_SIZE

    @property
    def end(self) -> int:
        return self.text + IMAGE_SIZE

    def symbol(self, name: str) -> int:
        """Virtual address of an entry-text or text symbol."""
        if name in ENTRY_SYMBOLS:
            return self.entry_text[0] + ENTRY_SYMBOLS[name]
        return self.text + b.PMD_SIZE + TEXT_SYMBOLS[name]

    def percpu(self, name: str) -> int:
        """Virtual address (in the image) of CPU 0's per-CPU page ``name``."""
        return self.data + PERCPU_OFFSET + PERCPU_PAGES[name] * b.PAGE_SIZE

    @property
    def secret(self) -> int:
        return self.data + SECRET_OFFSET

    def pa(self, va: int) -> int:
        """__pa_symbol(): physical address of an image address."""
        if not self.text <= va < self.end:
            raise ValueError(f"{va:#x} is not in the kernel image")
        return self.phys_base + (va - self.text)

    def sections(self) -> list[tuple[str, int, int, int]]:
        """(name, start, size, leaf flags before PTI's global filtering)."""
        return [
            (".text (incl. .entry.text)", self.text, TEXT_SIZE, b.PAGE_KERNEL_RX),
            (".rodata", self.rodata, RODATA_SIZE, b.PAGE_KERNEL_RO),
            (".data, .data..percpu, .bss", self.data, DATA_SIZE, b.PAGE_KERNEL),
        ]
