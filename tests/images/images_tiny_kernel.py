"""Build, at test time, a tiny freestanding x86-64 ELF that GRUB's ``kfreebsd`` accepts.

What kfreebsd needs (grub-core/loader/i386/bsd.c, bsdXX.c): an ELF64 file (class 64 -> the
64-bit handover, rip = e_entry including the high half), PT_LOAD segments whose p_paddr (masked
to 28 bits) is the physical load address, and a SHT_SYMTAB section (it copies the symbol table
for the kernel's linker and fails with "no symbol table" otherwise). Like a real FreeBSD amd64
kernel it is linked at 0xffffffff80200000 with physical address 0x200000 and marked with
OS/ABI FreeBSD; GRUB's page tables map every 1 GiB window onto low memory, so the high entry
point is reachable. The kernel prints one line on COM1 (port 0x3f8) showing where it runs, then
writes to QEMU's isa-debug-exit port so the test ends at once (exit status 0x31*2+1 = 99).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

MARKER = "FBSD-HIL-TINY-KERNEL: 64-bit entry reached at "
DEBUG_EXIT_PORT = 0xF4
DEBUG_EXIT_STATUS = (0x31 << 1) | 1

_SOURCE = r"""
static inline void outb(unsigned short port, unsigned char value)
{
    __asm__ volatile ("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline unsigned char inb(unsigned short port)
{
    unsigned char value;
    __asm__ volatile ("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static void com1_putc(char c)
{
    while ((inb(0x3f8 + 5) & 0x20) == 0)   /* transmitter holding register empty */
        ;
    outb(0x3f8, (unsigned char)c);
}

static void com1_puts(const char *s)
{
    while (*s)
        com1_putc(*s++);
}

static void com1_hex(unsigned long v)
{
    static const char digits[] = "0123456789abcdef";
    com1_puts("0x");
    for (int shift = 60; shift >= 0; shift -= 4)
        com1_putc(digits[(v >> shift) & 0xf]);
}

__attribute__((noreturn, section(".text.entry"))) void btext(void)
{
    unsigned long rip;
    __asm__ volatile ("lea 0(%%rip), %0" : "=r"(rip));
    com1_puts("\r\n@MARKER@");
    com1_hex(rip);
    com1_puts("\r\n");
    outb(@PORT@, 0x31);            /* QEMU isa-debug-exit: status (0x31 << 1) | 1 */
    for (;;)
        __asm__ volatile ("cli; hlt");
}
"""

_LINKER_SCRIPT = """
ENTRY(btext)
SECTIONS
{
    . = 0xffffffff80200000;
    .text : AT(0x200000) { *(.text.entry) *(.text .text.*) }
    .rodata : { *(.rodata .rodata.*) }
    .data : { *(.data .data.*) *(.bss .bss.*) *(COMMON) }
    /DISCARD/ : { *(.note*) *(.eh_frame*) *(.comment) }
}
"""

ELFOSABI_FREEBSD = 9


def build_tiny_kernel(workdir: Path) -> Path:
    """Compile and link the tiny kernel into ``workdir``; return the ELF path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not found (Debian package gcc)")
    source = workdir / "tiny.c"
    script = workdir / "tiny.ld"
    elf = workdir / "tiny-kernel"
    source.write_text(_SOURCE.replace("@MARKER@", MARKER).replace("@PORT@", hex(DEBUG_EXIT_PORT)))
    script.write_text(_LINKER_SCRIPT)
    cmd = [
        gcc, "-ffreestanding", "-nostdlib", "-static", "-no-pie", "-fno-pic", "-mcmodel=kernel",
        "-mno-red-zone", "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-O2",
        "-Wl,--build-id=none", "-Wl,-T," + str(script), "-o", str(elf), str(source),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    data = bytearray(elf.read_bytes())
    data[7] = ELFOSABI_FREEBSD  # e_ident[EI_OSABI]
    elf.write_bytes(bytes(data))
    return elf


def build_tiny_module(workdir: Path) -> Path:
    """A relocatable ELF64 object named like a kernel module, for ``kfreebsd_module_elf``
    (amd64 FreeBSD modules are relocatable objects; GRUB loads their sections after the kernel)."""
    source = workdir / "fbsdhil_test.c"
    module = workdir / "fbsdhil_test.ko"
    source.write_text("int fbsdhil_test_module_marker = 0x46424844;\nint fbsdhil_test(void) { return 42; }\n")
    cmd = ["gcc", "-ffreestanding", "-nostdlib", "-fno-pic", "-mcmodel=kernel", "-O2", "-c", "-o",
           str(module), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return module
