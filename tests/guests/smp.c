/*
 * petrel test guest: IDT and application-processor start-up.
 *
 * The boot CPU copies the real-mode trampoline (common.S) to a free RAM page
 * below 1 MiB, then sends INIT, SIPI, SIPI to every other CPU the MADT lists.
 * Each AP goes to long mode, takes a stack and prints `CPU <apic id> up`.
 */
#include "guest.h"

#define LAPIC_ID 0x20
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_BUSY (1u << 12)
#define AP_WAIT_SPINS 10000000u

/* common.S */
extern const char ap_tramp_start[], ap_tramp_end[], tramp_gdt[], tramp_gdtr_base[];
extern const char tramp_farptr[], tramp_pm32[];
extern const u64 exc_stub_table[32];

struct idt_entry {
	u16 off_lo, sel;
	u8 ist, type;
	u16 off_mid;
	u32 off_hi, zero;
} __attribute__((packed));

static struct idt_entry idt[32] __attribute__((aligned(16)));
static volatile u32 idt_ready;
static volatile u32 aps_up;
static u64 lapic_base = 0xfee00000;

/* Fills the IDT once (boot CPU) and loads it on the calling CPU. */
void idt_load(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) desc = {sizeof(idt) - 1, (u64)idt};

	if (!idt_ready) {
		for (int i = 0; i < 32; i++) {
			u64 h = exc_stub_table[i];
			idt[i].off_lo = (u16)h;
			idt[i].sel = 0x18;
			idt[i].ist = 0;
			idt[i].type = 0x8e;
			idt[i].off_mid = (u16)(h >> 16);
			idt[i].off_hi = (u32)(h >> 32);
			idt[i].zero = 0;
		}
		idt_ready = 1;
	}
	__asm__ volatile("lidt %0" ::"m"(desc));
}

static u32 lapic_read(u32 reg) { return rd32(lapic_base + reg); }
static void lapic_write(u32 reg, u32 v) { *(volatile u32 *)(lapic_base + reg) = v; }

/* C entry of an AP (from ap_entry64 in common.S, on its own stack). */
void ap_main(void)
{
	idt_load();
	printk("CPU %u up\n", lapic_read(LAPIC_ID) >> 24);
	__atomic_add_fetch(&aps_up, 1, __ATOMIC_SEQ_CST);
}

static void send_ipi(u32 apic_id, u32 icr)
{
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr);
	for (u32 i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++)
		cpu_relax();
}

/* Highest free 4 KiB page of RAM in [0x1000, 0x9f000), or 0. */
static u64 pick_trampoline_page(void)
{
	u64 addr, size, best = 0;
	u32 type;
	for (u32 i = 0; memmap_get(i, &addr, &size, &type); i++) {
		if (type != 1)
			continue;
		u64 end = addr + size;
		if (end > 0x9f000)
			end = 0x9f000;
		end &= ~0xfffULL;
		u64 start = (addr + 0xfff) & ~0xfffULL;
		if (start < 0x1000)
			start = 0x1000;
		if (end >= start + 0x1000 && end - 0x1000 > best)
			best = end - 0x1000;
	}
	return best;
}

static void patch32(u64 page, const char *field, u64 value)
{
	*(volatile u32 *)(page + (u64)(field - ap_tramp_start)) = (u32)value;
}

void smp_start(const struct acpi_info *info)
{
	lapic_base = info->lapic;
	u32 bsp = lapic_read(LAPIC_ID) >> 24;
	u32 started = 0;

	printk("CPU %u up\n", bsp);
	u64 page = info->ncpus > 1 ? pick_trampoline_page() : 0;
	if (info->ncpus > 1 && !page)
		printk("CPUS: no free page below 1 MiB for the AP trampoline\n");
	if (page) {
		memcpy((void *)page, ap_tramp_start, (unsigned long)(ap_tramp_end - ap_tramp_start));
		patch32(page, tramp_gdtr_base, page + (u64)(tramp_gdt - ap_tramp_start));
		patch32(page, tramp_farptr, page + (u64)(tramp_pm32 - ap_tramp_start));
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x1ff);
		u32 n = info->ncpus < MAX_CPUS ? info->ncpus : MAX_CPUS;
		for (u32 i = 0; i < n; i++) {
			u32 id = info->apic_ids[i];
			if (id == bsp)
				continue;
			if (id > 254) {
				printk("CPUS: apic id %u needs x2APIC, not started\n", id);
				continue;
			}
			send_ipi(id, 0x4500);                          /* INIT, assert */
			send_ipi(id, 0x4600 | (u32)(page >> 12));      /* SIPI */
			send_ipi(id, 0x4600 | (u32)(page >> 12));      /* SIPI again */
			started++;
		}
	}
	u32 spins = 0;
	while (__atomic_load_n(&aps_up, __ATOMIC_ACQUIRE) < started && spins < AP_WAIT_SPINS) {
		cpu_relax();
		spins++;
	}
	u32 up = __atomic_load_n(&aps_up, __ATOMIC_ACQUIRE);
	if (up < started)
		printk("CPUS: timeout\n");
	printk("CPUS: up=%u of %u\n", up + 1, info->ncpus);
}
