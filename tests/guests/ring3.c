/*
 * petrel test guest: running code in 64-bit ring 3.
 *
 * Where guest ring 0 is emulated (PVM), ring-3 code runs natively, so a
 * benchmark's inner loop (bench.c) runs there. ring3_init() loads a GDT with
 * the boot selectors plus a user data/code pair (0x20, 0x28) and a TSS (0x30)
 * whose RSP0 is the ring-0 stack for exceptions from ring 3, and an IDT of the
 * 32 exception gates whose #UD gate is ring3_ud_gate (ring 3 returns with `ud2`,
 * see ring3.S).
 * ring3_map_user() sets the U/S bit on the paging entries (PML4, PDPT, and the
 * 1 GiB or 2 MiB leaves) that cover a range. ring3_call() (ring3.S) runs a
 * function in ring 3 and returns its result.
 */
#include "guest.h"

#define SEL_TSS 0x30
#define GDT_ENTRIES 8 /* null, code32, data, code64, user data, user code64, TSS (2) */
#define IDT_ENTRIES 32
#define VEC_UD 6
#define PTE_P 1ULL
#define PTE_US 4ULL
#define PTE_PS 0x80ULL
#define CR4_SMEP (1ULL << 20)
#define CR4_SMAP (1ULL << 21)

/* common.S, ring3.S */
extern u64 gdt[4];
extern u64 pml4[512], pdpt[512], pd[2048];
extern const char ring3_ud_gate[];

struct tss64 {
	u32 reserved0;
	u64 rsp[3];
	u64 reserved1;
	u64 ist[7];
	u64 reserved2;
	u16 reserved3;
	u16 iomap_base;
} __attribute__((packed));

struct gate {
	u16 off_lo, sel;
	u8 ist, type;
	u16 off_mid;
	u32 off_hi, zero;
} __attribute__((packed));

struct dtr {
	u16 limit;
	u64 base;
} __attribute__((packed));

static u64 r3_gdt[GDT_ENTRIES] __attribute__((aligned(16)));
static struct tss64 r3_tss __attribute__((aligned(16)));
static struct gate r3_idt[IDT_ENTRIES] __attribute__((aligned(16)));

/* Loads the ring-3 GDT, TSS (RSP0 = kstack_top) and IDT; clears CR4.SMEP/SMAP so that
 * ring 0 keeps running on pages that ring3_map_user() opened to ring 3. */
void ring3_init(u64 kstack_top)
{
	for (u32 i = 0; i < 4; i++)
		r3_gdt[i] = gdt[i];
	r3_gdt[4] = 0x00cff2000000ffffULL; /* 0x20: data, DPL 3 */
	r3_gdt[5] = 0x00affa000000ffffULL; /* 0x28: 64-bit code, DPL 3 */
	u64 base = (u64)&r3_tss;
	u64 limit = sizeof(r3_tss) - 1;
	r3_gdt[6] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ULL << 40) |
		    (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
	r3_gdt[7] = base >> 32;
	memset(&r3_tss, 0, sizeof(r3_tss));
	r3_tss.rsp[0] = kstack_top;
	r3_tss.iomap_base = sizeof(r3_tss); /* no I/O bitmap: ring 3 has no port access */

	/* The exception gates of the boot IDT (smp.c), with #UD replaced. */
	struct dtr cur;
	__asm__ volatile("sidt %0" : "=m"(cur));
	memset(r3_idt, 0, sizeof(r3_idt));
	u32 copy = (u32)(cur.limit + 1) / sizeof(struct gate);
	if (copy > IDT_ENTRIES)
		copy = IDT_ENTRIES;
	memcpy(r3_idt, (const void *)cur.base, copy * sizeof(struct gate));
	u64 h = (u64)ring3_ud_gate;
	r3_idt[VEC_UD].off_lo = (u16)h;
	r3_idt[VEC_UD].sel = 0x18;
	r3_idt[VEC_UD].type = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
	r3_idt[VEC_UD].off_mid = (u16)(h >> 16);
	r3_idt[VEC_UD].off_hi = (u32)(h >> 32);

	struct dtr g = {sizeof(r3_gdt) - 1, (u64)r3_gdt};
	struct dtr i = {sizeof(r3_idt) - 1, (u64)r3_idt};
	__asm__ volatile("lgdt %0; lidt %1; ltr %w2" ::"m"(g), "m"(i), "r"(SEL_TSS) : "memory");

	u64 cr4;
	__asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
	if (cr4 & (CR4_SMEP | CR4_SMAP))
		__asm__ volatile("mov %0, %%cr4" ::"r"(cr4 & ~(CR4_SMEP | CR4_SMAP)) : "memory");
}

/* Sets U/S on every paging entry that maps [start, start + len) (below 4 GiB, identity map
 * of pvh.S / core.c), then flushes the TLB. Returns -1 when part of it is not mapped. */
int ring3_map_user(u64 start, u64 len)
{
	if (len == 0 || start >= FOUR_GIB || len > FOUR_GIB - start)
		return -1;
	if (!(pml4[0] & PTE_P))
		return -1;
	pml4[0] |= PTE_US;
	u64 end = start + len;
	for (u64 a = start & ~((1ULL << 21) - 1); a < end; a += 1ULL << 21) {
		u64 *pdpte = &pdpt[a >> 30];
		if (!(*pdpte & PTE_P))
			return -1;
		*pdpte |= PTE_US;
		if (*pdpte & PTE_PS)
			continue; /* 1 GiB page */
		u64 *pde = &pd[a >> 21];
		if (!(*pde & PTE_P))
			return -1;
		*pde |= PTE_US;
	}
	u64 cr3;
	__asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3)::"memory");
	return 0;
}
