/*
 * petrel test guest: shared declarations of the freestanding C core.
 *
 * The guest runs in 64-bit long mode with an identity map of the first 4 GiB
 * (2 MiB pages) built by the entry stubs (pvh.S, or core.c for bzImage).
 */
#ifndef PETREL_GUEST_H
#define PETREL_GUEST_H

#include <stdarg.h>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define BOOT_PVH 0
#define BOOT_BZIMAGE 1

/* Must match MAX_APS / AP_STACK_SIZE in the linker scripts. */
#define MAX_CPUS 256

#define FOUR_GIB 0x100000000ULL

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt" ::: "memory");
}

static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }
static inline u16 rd16(u64 a) { return *(volatile u16 *)a; }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline u64 rd64(u64 a) { return *(volatile u64 *)a; }

/* What the ACPI walk learned; filled by acpi_walk(). */
struct acpi_info {
	int have_fadt;
	u32 hw_reduced;
	u8 sleep_ctl_space; /* GAS address space: 0 memory, 1 I/O */
	u64 sleep_ctl;
	u64 sleep_sts;
	u32 pm1a_cnt;
	int s5; /* SLP_TYP of \_S5, or -1 when not found */
	int have_ged; /* the DSDT has an ACPI0013 Generic Event Device */
	u32 ged_gsi;  /* its interrupt (first Extended Interrupt of its _CRS) */
	u64 lapic;
	u64 ioapic;
	u32 ncpus;
	u32 apic_ids[MAX_CPUS];
};

/* core.c */
void printk(const char *fmt, ...);
void *memset(void *d, int c, unsigned long n);
void *memcpy(void *d, const void *s, unsigned long n);
int memmap_get(u32 i, u64 *addr, u64 *size, u32 *type);

/* virtio.c: device ids of the virtio actions. */
#define VIRTIO_DEV_NET 1
#define VIRTIO_DEV_BLK 2
#define VIRTIO_DEV_RNG 4
#define VIRTIO_DEV_VSOCK 19
/* virtio_action()'s `which` for `action=vsock-listen` (not a device id). */
#define VIRTIO_ACT_VSOCK_LISTEN 0x100
#define VIRTIO_ACT_BLK_SWAP 0x101
/* virtio_action()'s `which` for `action=count-blk`: COUNT lines, each count first written to
 * sector 2 of the first writable disk ("PCNT" then the count, u64 little endian). */
#define VIRTIO_ACT_COUNT_BLK 0x102
/* virtio_action()'s `which` for `action=mmds` (virtio_mmds.c). */
#define VIRTIO_ACT_MMDS 0x103
/* `action=blk-log`: entries written to the first writable disk, flushed in fours. */
#define VIRTIO_ACT_BLK_LOG 0x104
/* Runs `action=virtio-blk|virtio-rng|virtio-net|virtio-vsock` (which = VIRTIO_DEV_*) on the
 * devices named by `virtio_mmio.device=` tokens of `cmdline`; always returns. */
void virtio_action(int which, const char *cmdline);
/* Parses the `virtio_mmio.device=` tokens of `cmdline` and probes the windows (prints the
 * `VIRTIO: windows=` / `window=` lines); afterwards virtio_find() (virtio.h) finds devices. */
void virtio_probe(const char *cmdline);

/* ring3.c, ring3.S: 64-bit ring 3 (user segments 0x23/0x2b, exit through `int $0x80`). */
void ring3_init(u64 kstack_top);
int ring3_map_user(u64 start, u64 len);
/* Runs fn(arg) in ring 3 on the stack ending at `ustack_top` (16-byte aligned) and returns
 * its result; everything fn touches must be ring3_map_user()'d. */
u64 ring3_call(u64 (*fn)(void *), void *arg, u64 ustack_top);

/* bench.c: `action=bench-blk|bench-rng|bench-net|bench-vsock` (which = BENCH_*); always returns. */
#define BENCH_BLK 1
#define BENCH_RNG 2
#define BENCH_NET 3
#define BENCH_VSOCK 4
void bench_action(int which, const char *cmdline);

/* acpi.c */
void acpi_walk(u64 rsdp, struct acpi_info *info);

/* smp.c */
void smp_start(const struct acpi_info *info);
void idt_load(void);

#endif
