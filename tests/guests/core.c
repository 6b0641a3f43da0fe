/*
 * petrel test guest: C core shared by the PVH and bzImage entry stubs.
 *
 * Prints what it finds (command line, memory map, ACPI tables, CPUs) on COM1
 * and then performs the action named by `action=` on the command line.
 */
#include "guest.h"
#include "power.c" /* action=power-button, action=count (static functions) */

#define COM1 0x3f8
#define CMDLINE_MAX 4096
#define PVH_MAGIC 0x336ec578
#define ECHO_MAX 200
#define MODULES_MAX 16

/* Page tables (linker script, .pagetables). */
extern u64 pml4[512], pdpt[512], pd[2048];

static int boot_kind;
static u64 boot_info;
static volatile u32 print_lock;

enum action {
	ACT_POWEROFF,
	ACT_RESET,
	ACT_RESET_ONCE,
	ACT_HALT,
	ACT_CALIBRATE,
	ACT_QUICK,
	ACT_QUICK_RESET,
	ACT_ECHO,
	ACT_TRIPLE_FAULT,
	ACT_VIRTIO_BLK,
	ACT_VIRTIO_RNG,
	ACT_VIRTIO_NET,
	ACT_VIRTIO_VSOCK,
	ACT_VSOCK_LISTEN,
	ACT_BLK_SWAP,
	ACT_MMDS,
	ACT_BENCH_BLK,
	ACT_BENCH_RNG,
	ACT_BENCH_NET,
	ACT_BENCH_VSOCK,
	ACT_POWER_BUTTON,
	ACT_COUNT,
	ACT_COUNT_BLK,
	ACT_BLK_LOG,
	ACT_DIRTY,
	ACT_CTRL_ALT_DEL,
	ACT_CPUID,
	ACT_UNKNOWN
};

/* Set by action=quick: only the start line is printed. */
static int quiet;

void *memset(void *d, int c, unsigned long n)
{
	u8 *p = d;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
	u8 *p = d;
	const u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

/* ---- serial output ---- */

static void serial_putc(char c)
{
	for (u32 i = 0; i < 100000; i++)
		if (inb(COM1 + 5) & 0x20)
			break;
	outb(COM1, (u8)c);
}

static void put_str(const char *s)
{
	for (u32 n = 0; *s && n < CMDLINE_MAX; n++)
		serial_putc(*s++);
}

static void put_num(u64 v, u32 base)
{
	char buf[24];
	int i = 0;
	do {
		u32 d = (u32)(v % base);
		buf[i++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	while (i)
		serial_putc(buf[--i]);
}

static void lock(void)
{
	while (__atomic_exchange_n(&print_lock, 1, __ATOMIC_ACQUIRE))
		while (print_lock)
			cpu_relax();
}

static void unlock(void) { __atomic_store_n(&print_lock, 0, __ATOMIC_RELEASE); }

static void vprint(const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			serial_putc(*fmt);
			continue;
		}
		int is_long = 0;
		fmt++;
		if (*fmt == 'l') {
			is_long = 1;
			fmt++;
		}
		switch (*fmt) {
		case 's':
			put_str(va_arg(ap, const char *));
			break;
		case 'c':
			serial_putc((char)va_arg(ap, int));
			break;
		case 'u':
			put_num(is_long ? va_arg(ap, u64) : va_arg(ap, u32), 10);
			break;
		case 'x':
			put_num(is_long ? va_arg(ap, u64) : va_arg(ap, u32), 16);
			break;
		case 'd': {
			i64 v = is_long ? va_arg(ap, i64) : va_arg(ap, int);
			if (v < 0) {
				serial_putc('-');
				v = -v;
			}
			put_num((u64)v, 10);
			break;
		}
		case 0:
			return;
		default:
			serial_putc(*fmt);
		}
	}
}

/* Forward: defined after printk. */
static void print_cpu_identity(void);

/* Prints one formatted message while holding the print lock (shared with the APs). */
void printk(const char *fmt, ...)
{
	va_list ap;
	if (quiet)
		return;
	va_start(ap, fmt);
	lock();
	vprint(fmt, ap);
	unlock();
	va_end(ap);
}

/* Called by the exception stubs (common.S); never returns. */
void exception_handler(const u64 *frame)
{
	u64 cr2;
	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	put_str("PETREL-GUEST: exception vec=");
	put_num(frame[0], 10);
	put_str(" err=0x");
	put_num(frame[1], 16);
	put_str(" rip=0x");
	put_num(frame[2], 16);
	put_str(" cr2=0x");
	put_num(cr2, 16);
	put_str("\n");
	halt_forever();
}

/* ---- boot information ---- */

static const char *get_cmdline(void)
{
	u64 p = 0;
	if (boot_kind == BOOT_PVH)
		p = rd64(boot_info + 24);
	else
		p = rd32(boot_info + 0x228) | ((u64)rd32(boot_info + 0xc8) << 32);
	if (p == 0 || p >= FOUR_GIB - CMDLINE_MAX)
		return "";
	return (const char *)p;
}

static u64 get_rsdp(void)
{
	if (boot_kind == BOOT_PVH)
		return rd64(boot_info + 32);
	return rd64(boot_info + 0x70);
}

/* Entry i of the boot memory map; returns 0 past the end. */
int memmap_get(u32 i, u64 *addr, u64 *size, u32 *type)
{
	u64 e;
	if (boot_kind == BOOT_PVH) {
		if (rd32(boot_info + 4) < 1 || i >= rd32(boot_info + 48) || i >= 128)
			return 0;
		e = rd64(boot_info + 40) + (u64)i * 24;
		if (e == 0 || e >= FOUR_GIB)
			return 0;
	} else {
		if (i >= rd8(boot_info + 0x1e8) || i >= 128)
			return 0;
		e = boot_info + 0x2d0 + (u64)i * 20;
	}
	*addr = rd64(e);
	*size = rd64(e + 8);
	*type = rd32(e + 16);
	return 1;
}

static void print_memmap(void)
{
	u64 addr, size, ram = 0;
	u32 type, i;
	for (i = 0; memmap_get(i, &addr, &size, &type); i++) {
		printk("MEMMAP: 0x%lx 0x%lx type=%u\n", addr, size, type);
		if (type == 1)
			ram += size;
	}
	printk("MEMMAP-RAM: %lu\n", ram);
}

/* `MODULE: addr= size=` for each PVH module, or the bzImage ramdisk (nothing when none). */
static void print_modules(void)
{
	if (boot_kind == BOOT_PVH) {
		u32 n = rd32(boot_info + 12);
		u64 list = rd64(boot_info + 16);
		if (list == 0 || list >= FOUR_GIB)
			return;
		for (u32 i = 0; i < n && i < MODULES_MAX; i++) {
			u64 e = list + (u64)i * 32; /* hvm_modlist_entry: paddr, size, cmdline, reserved */
			printk("MODULE: addr=0x%lx size=%lu\n", rd64(e), rd64(e + 8));
		}
	} else {
		/* Setup header ramdisk_image / ramdisk_size, high halves in ext_ramdisk_*. */
		u64 addr = rd32(boot_info + 0x218) | ((u64)rd32(boot_info + 0xc0) << 32);
		u64 size = rd32(boot_info + 0x21c) | ((u64)rd32(boot_info + 0xc4) << 32);
		if (size)
			printk("MODULE: addr=0x%lx size=%lu\n", addr, size);
	}
}

/* ---- command line ---- */

struct options {
	enum action action;
	int have_exits;
	u64 exits;
	u16 exit_port;
	const char *action_name;
	u32 action_len;
};

static int starts_with(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	return 1;
}

static int token_is(const char *tok, u32 len, const char *word)
{
	u32 i = 0;
	for (; i < len && word[i]; i++)
		if (tok[i] != word[i])
			return 0;
	return i == len && word[i] == 0;
}

static u64 parse_dec(const char *s, u32 len)
{
	u64 v = 0;
	for (u32 i = 0; i < len && s[i] >= '0' && s[i] <= '9'; i++)
		v = v * 10 + (u64)(s[i] - '0');
	return v;
}

static void parse_cmdline(const char *c, struct options *o)
{
	o->action = ACT_POWEROFF;
	o->have_exits = 0;
	o->exits = 0;
	o->exit_port = 0x80;
	o->action_name = "poweroff";
	o->action_len = 8;
	for (u32 n = 0; *c && n < CMDLINE_MAX; n++) {
		if (*c == ' ') {
			c++;
			continue;
		}
		u32 len = 0;
		while (c[len] && c[len] != ' ' && n + len < CMDLINE_MAX)
			len++;
		if (starts_with(c, "exits=")) {
			o->have_exits = 1;
			o->exits = parse_dec(c + 6, len - 6);
		} else if (starts_with(c, "countspins=")) {
			count_spins = (u32)parse_dec(c + 11, len - 11);
		} else if (starts_with(c, "exitport=")) {
			o->exit_port = (u16)parse_dec(c + 9, len - 9);
		} else if (starts_with(c, "action=")) {
			const char *v = c + 7;
			u32 vl = len - 7;
			o->action_name = v;
			o->action_len = vl;
			if (token_is(v, vl, "poweroff"))
				o->action = ACT_POWEROFF;
			else if (token_is(v, vl, "reset"))
				o->action = ACT_RESET;
			else if (token_is(v, vl, "reset-once"))
				o->action = ACT_RESET_ONCE;
			else if (token_is(v, vl, "halt"))
				o->action = ACT_HALT;
			else if (token_is(v, vl, "calibrate"))
				o->action = ACT_CALIBRATE;
			else if (token_is(v, vl, "quick"))
				o->action = ACT_QUICK;
			else if (token_is(v, vl, "quick-reset"))
				o->action = ACT_QUICK_RESET;
			else if (token_is(v, vl, "echo"))
				o->action = ACT_ECHO;
			else if (token_is(v, vl, "triple-fault"))
				o->action = ACT_TRIPLE_FAULT;
			else if (token_is(v, vl, "virtio-blk"))
				o->action = ACT_VIRTIO_BLK;
			else if (token_is(v, vl, "virtio-rng"))
				o->action = ACT_VIRTIO_RNG;
			else if (token_is(v, vl, "virtio-net"))
				o->action = ACT_VIRTIO_NET;
			else if (token_is(v, vl, "virtio-vsock"))
				o->action = ACT_VIRTIO_VSOCK;
			else if (token_is(v, vl, "vsock-listen"))
				o->action = ACT_VSOCK_LISTEN;
			else if (token_is(v, vl, "virtio-blk-swap"))
				o->action = ACT_BLK_SWAP;
			else if (token_is(v, vl, "mmds"))
				o->action = ACT_MMDS;
			else if (token_is(v, vl, "cpuid"))
				o->action = ACT_CPUID;
			else if (token_is(v, vl, "bench-blk"))
				o->action = ACT_BENCH_BLK;
			else if (token_is(v, vl, "bench-rng"))
				o->action = ACT_BENCH_RNG;
			else if (token_is(v, vl, "bench-net"))
				o->action = ACT_BENCH_NET;
			else if (token_is(v, vl, "bench-vsock"))
				o->action = ACT_BENCH_VSOCK;
			else if (token_is(v, vl, "power-button"))
				o->action = ACT_POWER_BUTTON;
			else if (token_is(v, vl, "count"))
				o->action = ACT_COUNT;
			else if (token_is(v, vl, "count-blk"))
				o->action = ACT_COUNT_BLK;
			else if (token_is(v, vl, "blk-log"))
				o->action = ACT_BLK_LOG;
			else if (token_is(v, vl, "dirty"))
				o->action = ACT_DIRTY;
			else if (token_is(v, vl, "ctrl-alt-del"))
				o->action = ACT_CTRL_ALT_DEL;
			else if (starts_with(v, "exits=")) {
				o->action = ACT_POWEROFF;
				o->have_exits = 1;
				o->exits = parse_dec(v + 6, vl - 6);
			} else
				o->action = ACT_UNKNOWN;
		}
		c += len;
		n += len;
	}
}

/* ---- actions ---- */

static void reset(void)
{
	outb(0x64, 0xfe);
	halt_forever();
}

/*
 * ACPI S5 through the FADT sleep control register (or PM1a control). Without either
 * (Firecracker has no ACPI sleep register), an i8042 reset instead, which such VMMs treat as
 * the end of the VM; the `PETREL-GUEST: poweroff` line the caller printed still holds.
 */
static void power_off(const struct acpi_info *a)
{
	u32 typ = a->s5 >= 0 ? (u32)a->s5 : 0;
	if (a->sleep_ctl) {
		u8 v = (u8)(((typ & 7) << 2) | 0x20);
		if (a->sleep_ctl_space == 1)
			outb((u16)a->sleep_ctl, v);
		else if (a->sleep_ctl < FOUR_GIB)
			*(volatile u8 *)a->sleep_ctl = v;
	} else if (a->pm1a_cnt) {
		outw((u16)a->pm1a_cnt, (u16)(((typ & 7) << 10) | (1 << 13)));
	} else {
		reset();
	}
	halt_forever();
}

static u8 cmos_read(u8 idx)
{
	outb(0x70, idx);
	return inb(0x71);
}

static void cmos_write(u8 idx, u8 v)
{
	outb(0x70, idx);
	outb(0x71, v);
}

/* Reads one line from COM1 by polling LSR.DR (no interrupts); drops '\r', stops at '\n'. */
static u32 serial_read_line(char *buf, u32 max)
{
	u32 n = 0;
	while (n < max) {
		while (!(inb(COM1 + 5) & 0x01))
			cpu_relax();
		char c = (char)inb(COM1);
		if (c == '\n')
			break;
		if (c != '\r')
			buf[n++] = c;
	}
	buf[n] = 0;
	return n;
}

/* An IDT with limit 0: ud2's #UD, then #GP and #DF find no gate, so the CPU shuts down. */
static void triple_fault(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) desc = {0, 0};
	__asm__ volatile("lidt %0; ud2" ::"m"(desc) : "memory");
	halt_forever();
}

static void do_action(const struct options *o, const struct acpi_info *a)
{
	if (o->have_exits) {
		for (u64 i = 0; i < o->exits; i++)
			outb(o->exit_port, (u8)i);
		printk("EXITS: done n=%lu\n", o->exits);
	}
	switch (o->action) {
	case ACT_RESET:
		printk("PETREL-GUEST: reset\n");
		reset();
		break;
	case ACT_RESET_ONCE:
		if (cmos_read(0x34) != 0xa5) {
			cmos_write(0x34, 0xa5);
			printk("PETREL-GUEST: reset (first boot)\n");
			reset();
		}
		cmos_write(0x34, 0);
		printk("PETREL-GUEST: poweroff (second boot)\n");
		power_off(a);
		break;
	case ACT_CTRL_ALT_DEL:
		count_until_ctrl_alt_del();
		printk("PETREL-GUEST: ctrl-alt-del\n");
		printk("PETREL-GUEST: reset\n");
		reset();
		break;
	case ACT_HALT:
		printk("PETREL-GUEST: halt\n");
		halt_forever();
		break;
	case ACT_CALIBRATE: {
		volatile u32 counter;
		printk("CALIBRATE: begin\n");
		for (counter = 0; counter < 1000000; counter++)
			;
		printk("CALIBRATE: end\n");
		printk("PETREL-GUEST: poweroff\n");
		power_off(a);
		break;
	}
	case ACT_ECHO: {
		char line[ECHO_MAX + 1];
		printk("ECHO: ready\n");
		serial_read_line(line, ECHO_MAX);
		printk("ECHO: %s\n", line);
		printk("PETREL-GUEST: poweroff\n");
		power_off(a);
		break;
	}
	case ACT_TRIPLE_FAULT:
		printk("PETREL-GUEST: triple-fault\n");
		triple_fault();
		break;
	case ACT_VIRTIO_BLK:
	case ACT_VIRTIO_RNG:
	case ACT_VIRTIO_NET:
	case ACT_VIRTIO_VSOCK:
	case ACT_VSOCK_LISTEN:
	case ACT_BLK_SWAP:
	case ACT_MMDS:
		virtio_action(o->action == ACT_VIRTIO_BLK     ? VIRTIO_DEV_BLK
			      : o->action == ACT_VIRTIO_NET   ? VIRTIO_DEV_NET
			      : o->action == ACT_VIRTIO_VSOCK ? VIRTIO_DEV_VSOCK
			      : o->action == ACT_VSOCK_LISTEN ? VIRTIO_ACT_VSOCK_LISTEN
			      : o->action == ACT_BLK_SWAP     ? VIRTIO_ACT_BLK_SWAP
			      : o->action == ACT_MMDS         ? VIRTIO_ACT_MMDS
							      : VIRTIO_DEV_RNG,
			      get_cmdline());
		printk("PETREL-GUEST: poweroff\n");
		power_off(a);
		break;
	case ACT_BENCH_BLK:
	case ACT_BENCH_RNG:
	case ACT_BENCH_NET:
	case ACT_BENCH_VSOCK:
		bench_action(o->action == ACT_BENCH_BLK     ? BENCH_BLK
			     : o->action == ACT_BENCH_RNG   ? BENCH_RNG
			     : o->action == ACT_BENCH_VSOCK ? BENCH_VSOCK
							    : BENCH_NET,
			     get_cmdline());
		printk("PETREL-GUEST: poweroff\n");
		power_off(a);
		break;
	case ACT_POWER_BUTTON:
		power_button_wait(a);
		printk("PETREL-GUEST: poweroff\n");
		power_off(a);
		break;
	case ACT_COUNT:
		count_forever();
		break;
	case ACT_CPUID:
		print_cpu_identity();
		printk("PETREL-GUEST: poweroff\n");
		power_off(a);
		break;
	case ACT_DIRTY:
		dirty_forever();
		break;
	case ACT_COUNT_BLK:
		virtio_action(VIRTIO_ACT_COUNT_BLK, get_cmdline());
		break;
	case ACT_BLK_LOG:
		virtio_action(VIRTIO_ACT_BLK_LOG, get_cmdline());
		printk("PETREL-GUEST: poweroff\n");
		power_off(a);
		break;
	case ACT_QUICK:
	case ACT_QUICK_RESET:
		break;
	case ACT_UNKNOWN:
		lock();
		put_str("PETREL-GUEST: unknown action ");
		for (u32 i = 0; i < o->action_len; i++)
			serial_putc(o->action_name[i]);
		put_str("\n");
		unlock();
		/* fall through */
	case ACT_POWEROFF:
		printk("PETREL-GUEST: poweroff\n");
		power_off(a);
		break;
	}
	halt_forever();
}

/* Identity map of the first 4 GiB with 2 MiB pages (the PVH stub does the same in asm). */
static void build_page_tables(void)
{
	for (u32 i = 0; i < 512; i++) {
		pml4[i] = 0;
		pdpt[i] = 0;
	}
	pml4[0] = (u64)pdpt | 3;
	for (u32 i = 0; i < 4; i++)
		pdpt[i] = (u64)&pd[i * 512] | 3;
	for (u64 i = 0; i < 2048; i++)
		pd[i] = (i << 21) | 0x83;
	__asm__ volatile("mov %0, %%cr3" ::"r"((u64)pml4) : "memory");
}

static struct acpi_info acpi;

/* Entered from the stubs on the boot CPU with a stack; `info` is hvm_start_info or boot_params. */
void guest_main(u32 kind, u64 info)
{
	struct options opts;

	boot_kind = (int)kind;
	boot_info = info;
	if (kind == BOOT_BZIMAGE) {
		/* The PVH stub prints its start line itself, before building page tables. */
		printk("PETREL-GUEST: start boot=bzimage\n");
		build_page_tables();
	}
	idt_load();
	if (kind == BOOT_PVH && rd32(info) != PVH_MAGIC) {
		printk("PETREL-GUEST: bad hvm_start_info magic 0x%x\n", rd32(info));
		halt_forever();
	}

	const char *cmdline = get_cmdline();
	parse_cmdline(cmdline, &opts);
	if (opts.action == ACT_QUICK_RESET) {
		/* Benchmark guest for VMMs without ACPI poweroff: start line, reset line, reset. */
		printk("PETREL-GUEST: reset\n");
		reset();
	}
	if (opts.action == ACT_QUICK) {
		/* Benchmark guest: the start line, a quiet ACPI walk, the poweroff line. */
		quiet = 1;
		acpi_walk(get_rsdp(), &acpi);
		quiet = 0;
		printk("PETREL-GUEST: poweroff\n");
		power_off(&acpi);
	}
	printk("CMDLINE: %s\n", cmdline);
	print_memmap();
	print_modules();
	acpi_walk(get_rsdp(), &acpi);
	smp_start(&acpi);
	do_action(&opts, &acpi);
}

/* `action=cpuid`: CPUID leaf 1 and the PAT MSR (0x277) as the vCPU sees them. */
static void print_cpu_identity(void)
{
	u32 a, b, c, d;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
	printk("CPUID 0x1 eax=0x%x ebx=0x%x ecx=0x%x edx=0x%x\n", a, b, c, d);
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x277u));
	printk("MSR 0x277=0x%lx\n", ((u64)hi << 32) | lo);
}
