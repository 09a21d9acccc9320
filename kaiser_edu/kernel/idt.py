"""The interrupt descriptor table's gates: what the cpu_entry_area's read-only IDT page holds.

Linux fills ``idt_table`` at boot (arch/x86/kernel/idt.c: ``INTG(X86_TRAP_PF,
asm_exc_page_fault)``, ``ISTG(X86_TRAP_DF, asm_exc_double_fault, IST_INDEX_DF)``,
``ISTG(X86_TRAP_NMI, asm_exc_nmi, IST_INDEX_NMI)``, and the external interrupts' stubs) and
maps it read-only at CPU_ENTRY_AREA_RO_IDT, the first page of the cpu_entry_area, which PTI
clones into every user page table: the CPU reads the gate of an interrupt while CR3 still
selects the user tables. Each 16-byte gate (``struct gate_struct``, asm/desc_defs.h) holds
the handler's address, split in three: bits 15:0, 31:16 and 63:32, with the code segment
(__KERNEL_CS = 0x10), the IST index and the type (0xE: interrupt gate, present, DPL 0).

So under PTI the IDT is readable with Meltdown from user mode. It holds no secret, but every
gate is an address in the entry text: the kernel's randomised base, for anyone who knows the
handler's offset in the image (the distribution's System.map). That is the minimal set of
data Hansen's KAISER cover letter says "can still reveal the kernel's ASLR base address".
"""

from __future__ import annotations

KERNEL_CS = 0x10  # GDT_ENTRY_KERNEL_CS * 8 (arch/x86/include/asm/segment.h)
GATE_INTERRUPT = 0xE
GATE_SIZE = 16
# vector: (handler, IST slot as the gate stores it: IST_INDEX_* + 1, 0 for none)
GATES = {
    0x02: ("asm_exc_nmi", 2),  # IST_INDEX_NMI = 1
    0x08: ("asm_exc_double_fault", 1),  # IST_INDEX_DF = 0
    0x0E: ("asm_exc_page_fault", 0),
    0x20: ("asm_common_interrupt", 0),  # the first external vector's stub
}


def gate(handler: int, ist: int = 0, dpl: int = 0) -> tuple[int, int]:
    """The two qwords of an interrupt gate to ``handler`` (pack_gate() in asm/desc.h)."""
    attr = ist | GATE_INTERRUPT << 8 | dpl << 13 | 1 << 15  # P=1
    low = (handler & 0xFFFF) | KERNEL_CS << 16 | attr << 32 | (handler >> 16 & 0xFFFF) << 48
    return low, handler >> 32


def gate_handler(low: int, high: int) -> int:
    """The handler address a gate's two qwords name (what an attacker who read them gets)."""
    return (low & 0xFFFF) | (low >> 48 & 0xFFFF) << 16 | (high & 0xFFFF_FFFF) << 32


def write_idt(kernel) -> None:
    """idt_setup_traps() and friends: write the gates into the IDT's frame, found through
    the kernel's own mapping of the cpu_entry_area's IDT page."""
    pa = kernel.kernel_tables.translate(kernel.cea("IDT (read-only)"))
    for vector, (name, ist) in GATES.items():
        low, high = gate(kernel.image.symbol(name), ist)
        kernel.mem.write_qword(pa + vector * GATE_SIZE, low)
        kernel.mem.write_qword(pa + vector * GATE_SIZE + 8, high)


def handlers(kernel) -> dict[int, int]:
    """vector -> handler address, as the IDT in memory says (for tests and lessons)."""
    pa = kernel.kernel_tables.translate(kernel.cea("IDT (read-only)"))
    return {v: gate_handler(kernel.mem.read_qword(pa + v * GATE_SIZE),
                            kernel.mem.read_qword(pa + v * GATE_SIZE + 8)) for v in GATES}

