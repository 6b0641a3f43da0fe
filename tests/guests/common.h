/*
 * petrel test guest: assembler constants and macros shared by the entry stubs.
 */
#ifndef PETREL_GUEST_COMMON_H
#define PETREL_GUEST_COMMON_H

#define BOOT_STACK_SIZE 16384
#define MAX_APS 255
#define AP_STACK_SIZE 2048

#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define CR4_PAE 0x20
#define CR0_PG_PE 0x80000001

/*
 * From 32-bit protected mode (flat segments, paging off), with the page tables
 * at pml4 ready: load our GDT, enable PAE, EFER.LME and paging, and far-jump
 * to the 64-bit code at \target.
 */
.macro ENTER_LONG_MODE target
	lgdt gdt_desc
	mov $pml4, %eax
	mov %eax, %cr3
	mov %cr4, %eax
	or $CR4_PAE, %eax
	mov %eax, %cr4
	mov $MSR_EFER, %ecx
	rdmsr
	or $EFER_LME, %eax
	wrmsr
	mov %cr0, %eax
	or $CR0_PG_PE, %eax
	mov %eax, %cr0
	ljmp $0x18, $\target
.endm

#endif
