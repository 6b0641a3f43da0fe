/*
 * petrel test guest: PVH entry.
 *
 * Entered in 32-bit protected mode, flat segments, paging off, with %ebx =
 * physical address of struct hvm_start_info. Prints the start line, zeroes
 * .bss, builds an identity map of the first 4 GiB (2 MiB pages), enters long
 * mode and calls guest_main(BOOT_PVH, start_info).
 */
#include "common.h"

/* XEN_ELFNOTE_PHYS32_ENTRY: name "Xen", type 18, 32-bit physical entry point. */
	.section .note.Xen, "a", @note
	.balign 4
	.long 4
	.long 4
	.long 18
	.asciz "Xen"
	.balign 4
	.long pvh_start32
	.balign 4

	.section .rodata
start_msg:
	.asciz "PETREL-GUEST: start boot=pvh\n"

	.section .text.entry, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	mov %ebx, %ebp
	lgdt gdt_desc
	ljmp $0x08, $1f
1:	mov $0x10, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %eax, %fs
	mov %eax, %gs

	/* Start line first: the host times the first serial byte. */
	mov $start_msg, %esi
2:	lodsb
	test %al, %al
	jz 5f
	mov %al, %bl
	mov $0x3fd, %dx
	mov $100000, %ecx
3:	in %dx, %al
	test $0x20, %al
	jnz 4f
	dec %ecx
	jnz 3b
4:	mov $0x3f8, %dx
	mov %bl, %al
	out %al, %dx
	jmp 2b
5:
	/* Zero .bss (memory is not cleared on an in-VMM reboot). */
	mov $__bss_start, %edi
	mov $__bss_end, %ecx
	sub %edi, %ecx
	xor %eax, %eax
	rep stosb

	/* PML4 and PDPT: zero, then one PML4 entry and four PDPT entries. */
	mov $pml4, %edi
	mov $2048, %ecx
	rep stosl
	movl $(pdpt + 3), pml4
	mov $pdpt, %edi
	mov $(pd + 3), %eax
	mov $4, %ecx
6:	mov %eax, (%edi)
	add $4096, %eax
	add $8, %edi
	dec %ecx
	jnz 6b
	/* Four page directories: 2048 entries of 2 MiB, present + writable + PS. */
	mov $pd, %edi
	mov $0x83, %eax
	xor %edx, %edx
	mov $2048, %ecx
7:	mov %eax, (%edi)
	mov %edx, 4(%edi)
	add $0x200000, %eax
	adc $0, %edx
	add $8, %edi
	dec %ecx
	jnz 7b

	ENTER_LONG_MODE pvh_entry64

	.code64
pvh_entry64:
	mov $0x10, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %eax, %fs
	mov %eax, %gs
	lea boot_stack_top(%rip), %rsp
	xor %edi, %edi			/* BOOT_PVH */
	mov %ebp, %esi			/* hvm_start_info */
	call guest_main
8:	cli
	hlt
	jmp 8b

	.section .note.GNU-stack, "", @progbits
