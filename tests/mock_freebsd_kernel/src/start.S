/*
 * MockFreeBSDKernel entry and trap stubs (fbsd-hil test stand-in; NOT FreeBSD).
 *
 * GRUB's kfreebsd 64-bit hand-over (grub-core/loader/i386/bsd.c): long mode on GRUB's page tables,
 * interrupts off, rsp -> [u32 entry][u32 modulep][u32 kernend], like FreeBSD's loader does for
 * locore.S btext (4(%rsp) = modulep, 8(%rsp) = kernend).
 */
	.file	"start.S"
	.section .text.entry, "ax"
	.globl	btext
btext:
	cli
	cld
	movl	4(%rsp), %r12d		/* modulep (physical) */
	movl	8(%rsp), %r13d		/* kernend (physical) */
	leaq	__bss_start(%rip), %rdi
	leaq	_end(%rip), %rcx
	subq	%rdi, %rcx
	xorl	%eax, %eax
	rep stosb
	leaq	boot_stack_top(%rip), %rsp
	movq	%r12, %rdi
	movq	%r13, %rsi
	call	mock_init
1:	hlt
	jmp	1b

	.text
/* load_gdt_and_segments(gdtr *): our own GDT (code 0x20, data 0x28 as FreeBSD's GCODE/GDATA) */
	.globl	load_gdt_and_segments
load_gdt_and_segments:
	lgdt	(%rdi)
	pushq	$0x20
	leaq	2f(%rip), %rax
	pushq	%rax
	lretq
2:	movl	$0x28, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	xorl	%eax, %eax
	movw	%ax, %fs
	movw	%ax, %gs
	ret

/* switch_stack(top, fn): continue in fn on a new stack (never returns) */
	.globl	switch_stack
switch_stack:
	movq	%rdi, %rsp
	xorl	%ebp, %ebp
	call	*%rsi
3:	hlt
	jmp	3b

/*
 * Where the saved contexts (td_pcb) of the stand-in's sleeping kernel threads point, so ddb's
 * `show threads` and a debugger name their top frame as on FreeBSD: sched_switch (a thread that
 * switched out) and fork_trampoline (a thread that never ran). No thread ever resumes here.
 */
	.globl	sched_switch
	.type	sched_switch, @function
sched_switch:
	.rept	16
	nop
	.endr
	ud2
	.rept	32
	nop
	.endr
	ud2
	.size	sched_switch, . - sched_switch
	.globl	fork_trampoline
	.type	fork_trampoline, @function
fork_trampoline:
	ud2
	.size	fork_trampoline, . - fork_trampoline

/* The idle loop: what an NMI interrupts (like FreeBSD's cpu_idle -> hlt). */
	.globl	mock_idle
mock_idle:
	pushq	%rbp		/* a frame, so `show threads`/`bt` print "/frame 0x..." as for acpi_cpu_c1 */
	movq	%rsp, %rbp
4:	sti
	hlt
	jmp	4b

/*
 * Trap stubs: build a struct trapframe exactly as FreeBSD amd64 lays it out (sys/amd64/include/frame.h):
 * rdi rsi rdx rcx r8 r9 rax rbx rbp r10 r11 r12 r13 r14 r15 @0..112, trapno(u32)@120 fs@124 gs@126
 * addr@128 flags(u32)@136 es@140 ds@142 err@144 rip@152 cs@160 rflags@168 rsp@176 ss@184 (192 bytes).
 * The stub pushes err (0 if the CPU did not) and the vector (into the flags/es/ds slot); mock_trap()
 * moves the vector to trapno.
 */
	.macro	TRAP_NOERR n
	.globl	trap_stub_\n
trap_stub_\n:
	pushq	$0
	pushq	$\n
	jmp	trap_common
	.endm
	.macro	TRAP_ERR n
	.globl	trap_stub_\n
trap_stub_\n:
	pushq	$\n
	jmp	trap_common
	.endm

	TRAP_NOERR 0
	TRAP_NOERR 1
	TRAP_NOERR 2
	TRAP_NOERR 3
	TRAP_NOERR 4
	TRAP_NOERR 5
	TRAP_NOERR 6
	TRAP_NOERR 7
	TRAP_ERR 8
	TRAP_NOERR 9
	TRAP_ERR 10
	TRAP_ERR 11
	TRAP_ERR 12
	TRAP_ERR 13
	TRAP_ERR 14
	TRAP_NOERR 15
	TRAP_NOERR 16
	TRAP_ERR 17
	TRAP_NOERR 18
	TRAP_NOERR 19
	TRAP_NOERR 20
	TRAP_ERR 21
	TRAP_NOERR 22
	TRAP_NOERR 23
	TRAP_NOERR 24
	TRAP_NOERR 25
	TRAP_NOERR 26
	TRAP_NOERR 27
	TRAP_NOERR 28
	TRAP_ERR 29
	TRAP_ERR 30
	TRAP_NOERR 31
	TRAP_NOERR 32
	TRAP_NOERR 36

trap_common:
	subq	$16, %rsp
	pushq	%r15
	pushq	%r14
	pushq	%r13
	pushq	%r12
	pushq	%r11
	pushq	%r10
	pushq	%rbp
	pushq	%rbx
	pushq	%rax
	pushq	%r9
	pushq	%r8
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	movw	%fs, 124(%rsp)
	movw	%gs, 126(%rsp)
	movq	%rsp, %rdi
	cld
	call	mock_trap
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%r8
	popq	%r9
	popq	%rax
	popq	%rbx
	popq	%rbp
	popq	%r10
	popq	%r11
	popq	%r12
	popq	%r13
	popq	%r14
	popq	%r15
	addq	$32, %rsp
	iretq

	.section .rodata
	.globl	trap_stubs
	.balign	8
trap_stubs:
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,36
	.quad	trap_stub_\n
	.endr
/* The ELF ABI tag note FreeBSD kernels carry: name "FreeBSD", type 1 (NT_FREEBSD_ABI_TAG), desc =
 * __FreeBSD_version (sys/sys/elf_common.h); tools identify a FreeBSD kernel and its version by it. */
#include "mock_release.h"
	.section .note.tag, "a", @note
	.balign	4
	.long	8			/* namesz: "FreeBSD" + NUL */
	.long	4			/* descsz */
	.long	1			/* NT_FREEBSD_ABI_TAG */
	.asciz	"FreeBSD"
	.balign	4
	.long	MOCK_OSRELDATE
	.section .note.GNU-stack, "", @progbits
