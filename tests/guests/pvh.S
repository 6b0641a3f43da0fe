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
	/* With 1 GiB pages (CPUID 0x80000001 EDX bit 26) the four PDPT entries map 4 GiB by
	 * themselves: the 2048-entry loop below costs ~10 ms where ring 0 is emulated. */
	mov $0x80000000, %eax
	cpuid
	cmp $0x80000001, %eax
	jb 8f
	mov $0x80000001, %eax
	cpuid
	bt $26, %edx
	jnc 8f
	mov $pdpt, %edi
	mov $0x83, %eax
	mov $4, %ecx
9:	mov %eax, (%edi)
	add $0x40000000, %eax
	add $8, %edi
	dec %ecx
	jnz 9b
	jmp 10f
8:
	/* 2 MiB pages for low RAM (up to the highest RAM end below 4 GiB in the PVH memory
	 * map, at least 32 MiB) and for the top 32 MiB below 4 GiB (LAPIC, IOAPIC). Mapping
	 * all 4 GiB takes 2048 stores: ~12 ms where guest ring 0 is emulated. */
	mov $0x2000000, %ebx		/* low end: at least 32 MiB */
	mov 48(%ebp), %ecx		/* memmap_entries */
	mov 40(%ebp), %esi		/* memmap_paddr (below 4 GiB) */
	cmpl $1, 4(%ebp)		/* version 1 has the memory map */
	jb 12f
11:	test %ecx, %ecx
	jz 12f
	cmpl $0, 4(%esi)		/* entry starts at or above 4 GiB: skip */
	jne 13f
	mov (%esi), %eax
	add 8(%esi), %eax		/* end = addr + size (low dword) */
	jc 14f
	cmpl $0, 12(%esi)
	jne 14f
	cmp %ebx, %eax
	jbe 13f
	mov %eax, %ebx
	jmp 13f
14:	mov $0xc0000000, %ebx		/* reaches the 32-bit hole: map all low RAM */
13:	add $24, %esi
	dec %ecx
	jmp 11b
12:	add $0x1fffff, %ebx
	shr $21, %ebx			/* number of 2 MiB pages */
	cmp $1536, %ebx
	jbe 15f
	mov $1536, %ebx
15:	mov %ebx, %ecx
	mov $pd, %edi
	mov $0x83, %eax
7:	mov %eax, (%edi)
	add $0x200000, %eax
	add $8, %edi
	dec %ecx
	jnz 7b
	mov $(pd + 2032 * 8), %edi	/* 0xfe000000..0x100000000 */
	mov $0xfe000083, %eax
	mov $16, %ecx
16:	mov %eax, (%edi)
	add $0x200000, %eax
	add $8, %edi
	dec %ecx
	jnz 16b
10:
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
