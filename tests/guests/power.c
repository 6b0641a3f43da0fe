/*
 * petrel test guest: `action=power-button` and `action=count`.
 *
 * Included by core.c (its functions are static there), so it needs no entry in the
 * build's source list.
 *
 * power-button: routes the Generic Event Device's GSI (from the DSDT, else 23) through the
 * IOAPIC to vector POWER_VECTOR on the boot CPU, edge, active-high, unmasked; enables the
 * local APIC and, with interrupts kept disabled, polls the local APIC IRR for the vector:
 * an edge on the GSI (what petrel's `vm.power-button` raises) shows up there. The IDT has
 * only the 32 exception gates, so the interrupt is never taken; the entry is masked and an
 * EOI written before the caller powers off.
 *
 * count: `COUNT <n>` lines forever, a fixed busy-wait between them (about ten lines a
 * second where ring 0 is emulated): a progress counter for pause/resume tests.
 */
#include "guest.h"

#define POWER_VECTOR 0x40
#define POWER_DEFAULT_GSI 23
#define IOAPIC_DEFAULT_BASE 0xfec00000ULL
#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN 0x10
#define IOAPIC_REG_VER 0x01
#define IOAPIC_REDTBL 0x10
#define REDTBL_MASKED (1u << 16)
#define LAPIC_REG_ID 0x20
#define LAPIC_REG_EOI 0xb0
#define LAPIC_REG_SVR 0xf0
#define LAPIC_REG_IRR 0x200
#define LAPIC_SVR_ENABLE 0x100
#define LAPIC_SPURIOUS_VECTOR 0xff
/* Spins between two IRR polls (a poll is an MMIO exit; no need to make millions). */
#define POWER_POLL_SPINS 2000u
/* Spins between two COUNT lines: ~60 ms at the ~0.5M spins/s of emulated ring 0 (plus
 * ~20 ms of serial output); 3-4 lines/s still when the host is loaded. */
#define COUNT_SPINS 30000u
/* `countspins=N` on the command line: spins between two COUNT lines (the snapshot benchmark
 * counts fast, so that the first line after a restore comes soon after the guest runs). */
static u32 count_spins = COUNT_SPINS;

static void ioapic_write(u64 base, u32 reg, u32 v)
{
	*(volatile u32 *)(base + IOAPIC_REGSEL) = reg;
	*(volatile u32 *)(base + IOAPIC_WIN) = v;
}

static u32 ioapic_read(u64 base, u32 reg)
{
	*(volatile u32 *)(base + IOAPIC_REGSEL) = reg;
	return rd32(base + IOAPIC_WIN);
}

static void spin(u32 n)
{
	for (volatile u32 i = 0; i < n; i++)
		;
}

/* Waits for an edge on the GED's GSI; returns when it was seen (0) or cannot be set up (-1). */
static int power_button_wait(const struct acpi_info *a)
{
	u64 ioapic = a->ioapic ? a->ioapic : IOAPIC_DEFAULT_BASE;
	u64 lapic = a->lapic;
	u32 gsi = a->have_ged && a->ged_gsi ? a->ged_gsi : POWER_DEFAULT_GSI;
	u32 irr = LAPIC_REG_IRR + 0x10 * (POWER_VECTOR / 32);
	u32 bit = 1u << (POWER_VECTOR % 32);

	__asm__ volatile("cli" ::: "memory");
	u32 pins = ((ioapic_read(ioapic, IOAPIC_REG_VER) >> 16) & 0xff) + 1;
	if (gsi >= pins) {
		printk("POWER: error gsi=%u but the IOAPIC has %u pins\n", gsi, pins);
		return -1;
	}
	u32 bsp = rd32(lapic + LAPIC_REG_ID) >> 24;
	u32 svr = rd32(lapic + LAPIC_REG_SVR);
	*(volatile u32 *)(lapic + LAPIC_REG_SVR) = svr | LAPIC_SVR_ENABLE | LAPIC_SPURIOUS_VECTOR;
	/* Destination first, then the low half (fixed, physical, active-high, edge, unmasked). */
	ioapic_write(ioapic, IOAPIC_REDTBL + 2 * gsi + 1, bsp << 24);
	ioapic_write(ioapic, IOAPIC_REDTBL + 2 * gsi, POWER_VECTOR);
	printk("POWER: gsi=%u vector=0x%x apic=%u\n", gsi, POWER_VECTOR, bsp);
	printk("PETREL-GUEST: waiting for power button\n");
	while (!(rd32(lapic + irr) & bit))
		spin(POWER_POLL_SPINS);
	printk("PETREL-GUEST: power button pressed\n");
	ioapic_write(ioapic, IOAPIC_REDTBL + 2 * gsi, POWER_VECTOR | REDTBL_MASKED);
	*(volatile u32 *)(lapic + LAPIC_REG_EOI) = 0;
	return 0;
}

/* action=dirty: sweeps the 32 MiB from 16 MiB forever, writing the sweep number into the first
 * word of every 4 KiB page after checking it holds the previous one; `COUNT <sweep>` after each
 * sweep, `DIRTY-ERROR page=<p> want=<w> got=<g>` (then a halt loop) on a mismatch: a guest that
 * dirties memory fast, and sees a page a migration lost. */
static void dirty_forever(void)
{
	volatile u64 *base = (volatile u64 *)(16ull << 20);
	const u64 pages = (32ull << 20) / 4096;
	for (u64 sweep = 1;; sweep++) {
		for (u64 p = 0; p < pages; p++) {
			volatile u64 *w = base + p * 512;
			u64 got = *w;
			if (got != sweep - 1) {
				printk("DIRTY-ERROR page=%lu want=%lu got=%lu\n", p, sweep - 1, got);
				for (;;)
					spin(COUNT_SPINS);
			}
			*w = sweep;
		}
		printk("COUNT %lu\n", sweep);
	}
}

/* `COUNT <n>` forever. */
static void count_forever(void)
{
	for (u64 n = 0;; n++) {
		printk("COUNT %lu\n", n);
		spin(count_spins);
	}
}

/*
 * `COUNT <n>` lines, as count_forever, while polling the i8042 keyboard port (status bit 0 at
 * 0x64, data at 0x60) until the Del key's make code arrives: 0xe0 0x71 in scancode set 2, not
 * preceded by the 0xf0 break prefix. Prints `KEYS: <hex bytes>` when it does.
 */
static void count_until_ctrl_alt_del(void)
{
	u8 keys[16];
	u32 nkeys = 0;
	int ext = 0, brk = 0;

	printk("PETREL-GUEST: waiting for ctrl-alt-del\n");
	for (u64 n = 0;; n++) {
		printk("COUNT %lu\n", n);
		for (u32 i = 0; i < COUNT_SPINS / 100; i++) {
			spin(100);
			if (!(inb(0x64) & 1))
				continue;
			u8 b = inb(0x60);
			if (nkeys < sizeof(keys))
				keys[nkeys++] = b;
			if (b == 0xe0) {
				ext = 1;
			} else if (b == 0xf0) {
				brk = 1;
			} else {
				int del = ext && !brk && b == 0x71;
				ext = brk = 0;
				if (del) {
					char line[16 * 5 + 1];
					u32 at = 0;
					static const char hex[] = "0123456789abcdef";
					for (u32 k = 0; k < nkeys; k++) {
						line[at++] = ' ';
						line[at++] = hex[keys[k] >> 4];
						line[at++] = hex[keys[k] & 15];
					}
					line[at] = 0;
					printk("KEYS:%s\n", line);
					return;
				}
			}
		}
	}
}
