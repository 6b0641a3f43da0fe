/*
 * petrel test guest: Linux boot protocol (bzImage) image.
 *
 * .setup is the 1 KiB real-mode part (setup_sects = 1) carrying the setup
 * header at 0x1f1; the protected-mode part follows in the file and is loaded
 * at 1 MiB (code32_start). Only the 64-bit entry is supported: offset 0x200
 * of the loaded part, long mode, identity map, %rsi = boot_params.
 */
#include "common.h"

	.section .setup, "a"
	.code16
setup_start:
	.org 0x1f1
	.byte 1				/* setup_sects */
	.word 0				/* root_flags */
	.long __syssize			/* syssize (16-byte units) */
	.word 0				/* ram_size */
	.word 0xffff			/* vid_mode */
	.word 0				/* root_dev */
	.word 0xaa55			/* boot_flag */
	.org 0x200
	.byte 0xeb, rm_entry - 1f	/* jump */
1:	.ascii "HdrS"			/* header */
	.word 0x020c			/* version 2.12 */
	.long 0				/* realmode_swtch */
	.word 0x1000			/* start_sys_seg */
	.word 0				/* kernel_version */
	.byte 0				/* type_of_loader */
	.byte 0x01			/* loadflags: LOADED_HIGH */
	.word 0				/* setup_move_size */
	.long 0x100000			/* code32_start */
	.long 0				/* ramdisk_image */
	.long 0				/* ramdisk_size */
	.long 0				/* bootsect_kludge */
	.word 0				/* heap_end_ptr */
	.byte 0				/* ext_loader_ver */
	.byte 0				/* ext_loader_type */
	.long 0				/* cmd_line_ptr */
	.long 0x7fffffff		/* initrd_addr_max */
	.long 0x200000			/* kernel_alignment */
	.byte 0				/* relocatable_kernel */
	.byte 21			/* min_alignment */
	.word 0x0001			/* xloadflags: XLF_KERNEL_64 */
	.long 4095			/* cmdline_size */
	.long 0				/* hardware_subarch */
	.quad 0				/* hardware_subarch_data */
	.long 0				/* payload_offset */
	.long 0				/* payload_length */
	.quad 0				/* setup_data */
	.quad 0x100000			/* pref_address */
	.long __init_size		/* init_size */
	.long 0				/* handover_offset */
	.org 0x268
/* Real-mode entry (a BIOS loader): unsupported, say so on COM1 and halt. */
rm_entry:
	cli
	mov %cs, %ax			/* a BIOS loader jumps to (setup segment + 0x20):0 */
	sub $0x20, %ax
	mov %ax, %ds
	mov $(rm_msg - setup_start), %si
	mov $0x3f8, %dx
2:	lodsb
	test %al, %al
	jz 3f
	out %al, %dx
	jmp 2b
3:	hlt
	jmp 3b
rm_msg:
	.asciz "PETREL-GUEST: real-mode entry not supported\n"
	.org 0x400

	.section .text.entry, "ax"
	.code32
/* 32-bit entry (offset 0): not supported. */
bz_start32:
	cli
	hlt
	jmp bz_start32

	.org 0x200
	.code64
	.globl bz_start64
bz_start64:
	cli
	cld
	mov %rsi, %rbp
	lea boot_stack_top(%rip), %rsp
	lea __bss_start(%rip), %rdi
	lea __bss_end(%rip), %rcx
	sub %rdi, %rcx
	xor %eax, %eax
	rep stosb
	/* Our own GDT: the APs and the IDT use its selectors. */
	lgdt gdt_desc(%rip)
	mov $0x10, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %eax, %fs
	mov %eax, %gs
	pushq $0x18
	lea 1f(%rip), %rax
	pushq %rax
	lretq
1:	mov $1, %edi			/* BOOT_BZIMAGE */
	mov %rbp, %rsi			/* boot_params */
	call guest_main
2:	cli
	hlt
	jmp 2b

	.section .note.GNU-stack, "", @progbits
