/*
 * petrel test guest: the switch into 64-bit ring 3 and back (see ring3.c).
 *
 * ring3_call(fn, arg, ustack_top) saves the callee-saved registers and %rsp, and
 * iretq's to ring3_tramp in ring 3 (CS 0x2b, SS 0x23, IF off). The trampoline
 * calls fn(arg) and leaves ring 3 with `ud2` at ring3_exit_insn: the #UD gate
 * (ring3_ud_gate) sees that address in the exception frame, drops the frame,
 * restores the saved stack and registers and returns fn's result (%rax) to the
 * caller of ring3_call. Any other #UD goes to the ordinary exception stub.
 *
 * Why #UD: under PVM, exceptions from guest ring 3 reach the guest's IDT in ring
 * 0, but `int $0x80` arrives as #UD anyway and `syscall` jumps to LSTAR without
 * leaving ring 3.
 */
#define USER_DS 0x23
#define USER_CS 0x2b
#define VEC_UD 6

	.section .text
	.code64
	.globl ring3_call, ring3_ud_gate

/* u64 ring3_call(u64 (*fn)(void *), void *arg, u64 ustack_top) */
ring3_call:
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rsp, ring3_saved_rsp(%rip)
	pushq $USER_DS
	pushq %rdx			/* user %rsp (16-byte aligned) */
	pushq $0x2			/* RFLAGS: IF off, IOPL 0 */
	pushq $USER_CS
	lea ring3_tramp(%rip), %rax
	push %rax
	iretq

/* Ring 3: %rdi = fn, %rsi = arg. */
ring3_tramp:
	mov %rdi, %rax
	mov %rsi, %rdi
	call *%rax
ring3_exit_insn:
	ud2
1:	pause
	jmp 1b

/* Ring 0, #UD on the TSS's RSP0 stack: (%rsp) = faulting RIP; %rax = fn's result. */
ring3_ud_gate:
	push %rcx
	lea ring3_exit_insn(%rip), %rcx
	cmp %rcx, 8(%rsp)
	pop %rcx
	jne 2f
	mov ring3_saved_rsp(%rip), %rsp
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	ret
2:	jmp *(exc_stub_table + 8 * VEC_UD)(%rip)

	.section .data
	.balign 8
ring3_saved_rsp:
	.quad 0

	.section .note.GNU-stack, "", @progbits
