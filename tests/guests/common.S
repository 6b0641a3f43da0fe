/*
 * petrel test guest: code shared by both images.
 *
 * - the GDT (0x08 code32, 0x10 data, 0x18 code64),
 * - ENTER_LONG_MODE: 32-bit protected mode -> long mode with our page tables,
 * - the AP real-mode trampoline (copied below 1 MiB and patched by smp.c),
 * - ap_entry32/ap_entry64: AP path from the trampoline into ap_main(),
 * - exception stubs for vectors 0..31 (report and halt, never triple-fault).
 */
#include "common.h"

	.section .data
	.balign 16
	.globl gdt, gdt_desc
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff	/* 0x08: 32-bit code */
	.quad 0x00cf92000000ffff	/* 0x10: data */
	.quad 0x00af9a000000ffff	/* 0x18: 64-bit code */
gdt_end:
	.balign 8
gdt_desc:
	.word gdt_end - gdt - 1
	.quad gdt

	.balign 4
ap_stack_counter:
	.long 0

/* ---- AP trampoline: runs at <page>:0 in real mode after a SIPI ---- */
	.balign 16
	.globl ap_tramp_start, ap_tramp_end, tramp_gdt, tramp_gdtr_base, tramp_farptr, tramp_pm32
	.code16
ap_tramp_start:
	cli
	cld
	mov %cs, %ax
	mov %ax, %ds
	lgdtl (tramp_gdtr - ap_tramp_start)
	mov %cr0, %eax
	and $0x9fffffff, %eax		/* caches on (INIT sets CD/NW) */
	or $1, %eax
	mov %eax, %cr0
	ljmpl *(tramp_farptr - ap_tramp_start)
	.code32
tramp_pm32:
	mov $0x10, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %eax, %fs
	mov %eax, %gs
	mov $ap_entry32, %eax
	jmp *%eax
	.balign 8
tramp_gdt:
	.quad 0
	.quad 0x00cf9a000000ffff
	.quad 0x00cf92000000ffff
tramp_gdt_end:
tramp_gdtr:
	.word tramp_gdt_end - tramp_gdt - 1
tramp_gdtr_base:
	.long 0				/* patched: page + (tramp_gdt - ap_tramp_start) */
tramp_farptr:
	.long 0				/* patched: page + (tramp_pm32 - ap_tramp_start) */
	.word 0x08
ap_tramp_end:

/* ---- AP: protected mode -> long mode -> C ---- */
	.section .text
	.code32
ap_entry32:
	ENTER_LONG_MODE ap_entry64

	.code64
ap_entry64:
	mov $0x10, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %eax, %fs
	mov %eax, %gs
	mov $1, %eax
	lock xaddl %eax, ap_stack_counter(%rip)
	cmp $MAX_APS, %eax
	jae 2f
	inc %eax
	imul $AP_STACK_SIZE, %eax, %eax
	lea ap_stacks(%rip), %rsp
	add %rax, %rsp
	call ap_main
2:	cli
	hlt
	jmp 2b

/* ---- exceptions ---- */
	.macro EXC vec
exc_\vec:
	.if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
	.else
	pushq $0
	.endif
	pushq $\vec
	jmp exc_common
	.endm

	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	EXC \v
	.endr

exc_common:
	mov %rsp, %rdi
	and $-16, %rsp
	call exception_handler
1:	cli
	hlt
	jmp 1b

	.section .rodata
	.balign 8
	.globl exc_stub_table
exc_stub_table:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad exc_\v
	.endr

	.section .note.GNU-stack, "", @progbits

/* ---- page tables and stacks: not loaded, not zeroed by the stubs ---- */
	.section .pagetables, "aw", @nobits
	.balign 4096
	.globl pml4, pdpt, pd
pml4:	.skip 4096
pdpt:	.skip 4096
pd:	.skip 4 * 4096

	.section .stacks, "aw", @nobits
	.balign 4096
	.globl boot_stack_top, ap_stacks
	.skip BOOT_STACK_SIZE
boot_stack_top:
ap_stacks:
	.skip MAX_APS * AP_STACK_SIZE
