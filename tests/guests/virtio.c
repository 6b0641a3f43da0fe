/*
 * petrel test guest: a small polling virtio-mmio (version 2) driver.
 *
 * Finds devices from `virtio_mmio.device=<size>@<addr>:<irq>[:<id>]` command-line
 * tokens, negotiates VIRTIO_F_VERSION_1, sets up queue 0 as an 8-entry split
 * virtqueue in .bss (physical = virtual in the identity map), submits one chain
 * at a time and polls the used index with a bounded spin. No interrupts: the
 * InterruptStatus bits are acknowledged after each completion.
 *
 * Actions: virtio-blk (capacity/ro of every disk; write, read-back, flush and
 * get-id on the first writable disk; a rejected write on the first read-only
 * disk) and virtio-rng (a 32-byte read). Every failure prints
 * `VIRTIO: error <what>` and returns, so the guest still powers off.
 */
#include "guest.h"

/* Page tables (linker script, .pagetables). */
extern u64 pml4[512], pdpt[512], pd[2048];

#define VIRTIO_MAX_DEVS 16
#define VQ_SIZE 8
/* Polls of the used index before giving up (~0.5-1M/s where ring 0 is emulated). */
#define VIRTIO_SPIN_LIMIT 5000000u
#define SECTOR 512
#define BLK_ID_LEN 20
#define RNG_LEN 32

/* virtio-mmio registers (version 2). */
#define VM_MAGIC 0x000
#define VM_VERSION 0x004
#define VM_DEVICE_ID 0x008
#define VM_DEV_FEATURES 0x010
#define VM_DEV_FEATURES_SEL 0x014
#define VM_DRV_FEATURES 0x020
#define VM_DRV_FEATURES_SEL 0x024
#define VM_QUEUE_SEL 0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM 0x038
#define VM_QUEUE_READY 0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INT_STATUS 0x060
#define VM_INT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QUEUE_DESC 0x080
#define VM_QUEUE_DRIVER 0x090
#define VM_QUEUE_DEVICE 0x0a0
#define VM_CONFIG_GEN 0x0fc
#define VM_CONFIG 0x100

#define VIRTIO_MAGIC 0x74726976 /* "virt" */
#define ST_ACKNOWLEDGE 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define ST_FAILED 128

#define DEV_BLK VIRTIO_DEV_BLK
#define DEV_RNG VIRTIO_DEV_RNG

#define F_VERSION_1_HI 1u /* feature bit 32: bit 0 of the high word */
#define BLK_F_RO (1u << 5)
#define BLK_F_FLUSH (1u << 9)

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8

#define VQ_F_NEXT 1
#define VQ_F_WRITE 2

struct vq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

/* Queue 0 and the request buffers of the one device in use (1.5 KiB of .bss). */
struct vq_page {
	struct vq_desc desc[VQ_SIZE]; /* 16-byte aligned */
	u16 avail_flags, avail_idx, avail_ring[VQ_SIZE], used_event;
	u8 pad0[256 - 16 * VQ_SIZE - 6 - 2 * VQ_SIZE];
	u16 used_flags, used_idx; /* 4-byte aligned (offset 256) */
	struct {
		u32 id, len;
	} used_ring[VQ_SIZE];
	u16 avail_event;
	u8 pad1[512 - 256 - 4 - 8 * VQ_SIZE - 2];
	struct {
		u32 type, reserved;
		u64 sector;
	} hdr;
	u8 status;
	u8 pad2[512 - 16 - 1];
	u8 data[SECTOR];
} __attribute__((aligned(16)));

static struct vq_page vq;

/* One `virtio_mmio.device=` token. */
struct vdev {
	u64 base;
	u32 irq;
	u32 id;
	u16 last_used;
	u32 features_lo;
};

static struct vdev vdevs[VIRTIO_MAX_DEVS];
static u32 nvdevs;

static const char blk_prefix[] = "PETREL-BLK-";

static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }
static u32 vr(const struct vdev *d, u32 reg) { return rd32(d->base + reg); }
static void vw(const struct vdev *d, u32 reg, u32 v) { *(volatile u32 *)(d->base + reg) = v; }

/* ---- command line ---- */

static int v_prefix(const char *s, const char *p)
{
	while (*p)
		if (*s++ != *p++)
			return 0;
	return 1;
}

/* Parses a decimal or 0x-hex number at *s, advancing it; returns 0 when there is none. */
static int v_number(const char **s, u64 *out)
{
	const char *p = *s;
	u64 v = 0;
	int any = 0;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		p += 2;
		for (;; p++, any = 1) {
			u32 d;
			if (*p >= '0' && *p <= '9')
				d = (u32)(*p - '0');
			else if (*p >= 'a' && *p <= 'f')
				d = (u32)(*p - 'a' + 10);
			else if (*p >= 'A' && *p <= 'F')
				d = (u32)(*p - 'A' + 10);
			else
				break;
			v = v * 16 + d;
		}
	} else {
		for (; *p >= '0' && *p <= '9'; p++, any = 1)
			v = v * 10 + (u64)(*p - '0');
	}
	*s = p;
	*out = v;
	return any;
}

/* `virtio_mmio.device=<size>[K|M]@<addr>:<irq>[:<id>]` (Linux's syntax). */
static void parse_token(const char *t)
{
	u64 size, addr, irq;
	if (!v_number(&t, &size))
		goto bad;
	if (*t == 'K' || *t == 'k') {
		size <<= 10;
		t++;
	} else if (*t == 'M' || *t == 'm') {
		size <<= 20;
		t++;
	}
	if (*t++ != '@' || !v_number(&t, &addr) || *t++ != ':' || !v_number(&t, &irq))
		goto bad;
	if (size < VM_CONFIG || addr == 0 || addr & 3 || addr + size > FOUR_GIB) {
		printk("VIRTIO: error window 0x%lx size 0x%lx not usable\n", addr, size);
		return;
	}
	for (u32 i = 0; i < nvdevs; i++)
		if (vdevs[i].base == addr)
			return; /* listed twice (QEMU's microvm adds its own tokens) */
	if (nvdevs >= VIRTIO_MAX_DEVS) {
		printk("VIRTIO: error more than %u devices\n", VIRTIO_MAX_DEVS);
		return;
	}
	vdevs[nvdevs].base = addr;
	vdevs[nvdevs].irq = (u32)irq;
	nvdevs++;
	return;
bad:
	printk("VIRTIO: error bad virtio_mmio.device token\n");
}

static void find_tokens(const char *c)
{
	for (u32 n = 0; c[n] && n < 4096; n++)
		if ((n == 0 || c[n - 1] == ' ') && v_prefix(c + n, "virtio_mmio.device="))
			parse_token(c + n + 19);
}

/* Maps the 2 MiB page holding `a` (uncached) unless the entry stub already did. */
static void map_mmio(u64 a)
{
	u64 *pdpte = &pdpt[a >> 30];
	if ((*pdpte & 1) && (*pdpte & 0x80))
		return; /* 1 GiB page */
	u64 *pde = &pd[a >> 21];
	if (*pde & 1)
		return;
	*pde = (a & ~0x1fffffULL) | 0x9b; /* P, RW, PWT, PCD, PS */
	__asm__ volatile("invlpg (%0)" ::"r"(a) : "memory");
}

/* ---- transport ---- */

static void dev_reset(struct vdev *d)
{
	vw(d, VM_STATUS, 0);
	for (u32 i = 0; i < 1000 && vr(d, VM_STATUS) != 0; i++)
		cpu_relax();
}

/* Reset, ACKNOWLEDGE, DRIVER, features (VERSION_1 + `want` of the low word), FEATURES_OK.
 * Returns 0 on success; prints the error otherwise. */
static int dev_negotiate(struct vdev *d, u32 want, const char *what)
{
	dev_reset(d);
	vw(d, VM_STATUS, ST_ACKNOWLEDGE);
	vw(d, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);
	vw(d, VM_DEV_FEATURES_SEL, 1);
	u32 hi = vr(d, VM_DEV_FEATURES);
	vw(d, VM_DEV_FEATURES_SEL, 0);
	u32 lo = vr(d, VM_DEV_FEATURES);
	d->features_lo = lo;
	if (!(hi & F_VERSION_1_HI)) {
		printk("VIRTIO: error %s at 0x%lx lacks VERSION_1 (features 0x%x%x)\n", what, d->base,
		       hi, lo);
		vw(d, VM_STATUS, ST_FAILED);
		return -1;
	}
	vw(d, VM_DRV_FEATURES_SEL, 1);
	vw(d, VM_DRV_FEATURES, F_VERSION_1_HI);
	vw(d, VM_DRV_FEATURES_SEL, 0);
	vw(d, VM_DRV_FEATURES, lo & want);
	vw(d, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
	if (!(vr(d, VM_STATUS) & ST_FEATURES_OK)) {
		printk("VIRTIO: error %s at 0x%lx refused FEATURES_OK\n", what, d->base);
		vw(d, VM_STATUS, ST_FAILED);
		return -1;
	}
	return 0;
}

/* Negotiates, sets up queue 0 on `vq` and sets DRIVER_OK. */
static int dev_start(struct vdev *d, u32 want, const char *what)
{
	if (dev_negotiate(d, want, what))
		return -1;
	vw(d, VM_QUEUE_SEL, 0);
	u32 max = vr(d, VM_QUEUE_NUM_MAX);
	if (max == 0 || vr(d, VM_QUEUE_READY) != 0) {
		printk("VIRTIO: error %s at 0x%lx queue 0 unavailable (max=%u)\n", what, d->base, max);
		vw(d, VM_STATUS, ST_FAILED);
		return -1;
	}
	memset(&vq, 0, sizeof(vq));
	u32 n = max < VQ_SIZE ? max : VQ_SIZE;
	vw(d, VM_QUEUE_NUM, n);
	vw(d, VM_QUEUE_DESC, (u32)(u64)vq.desc);
	vw(d, VM_QUEUE_DESC + 4, (u32)((u64)vq.desc >> 32));
	vw(d, VM_QUEUE_DRIVER, (u32)(u64)&vq.avail_flags);
	vw(d, VM_QUEUE_DRIVER + 4, (u32)((u64)&vq.avail_flags >> 32));
	vw(d, VM_QUEUE_DEVICE, (u32)(u64)&vq.used_flags);
	vw(d, VM_QUEUE_DEVICE + 4, (u32)((u64)&vq.used_flags >> 32));
	vw(d, VM_QUEUE_READY, 1);
	d->last_used = 0;
	vw(d, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	if (vr(d, VM_STATUS) & ST_FAILED) {
		printk("VIRTIO: error %s at 0x%lx failed DRIVER_OK\n", what, d->base);
		return -1;
	}
	return 0;
}

/* Fills descriptor i (chained to i+1 unless last). */
static void desc_set(u32 i, const void *addr, u32 len, int device_writes, int last)
{
	vq.desc[i].addr = (u64)addr;
	vq.desc[i].len = len;
	vq.desc[i].flags = (u16)((device_writes ? VQ_F_WRITE : 0) | (last ? 0 : VQ_F_NEXT));
	vq.desc[i].next = (u16)(last ? 0 : i + 1);
}

/* Publishes the chain starting at descriptor 0, notifies queue 0 and polls for its
 * completion. Returns the used length, or -1 (error printed) on a timeout. */
static i64 submit(struct vdev *d, const char *what)
{
	u16 idx = vq.avail_idx;
	vq.avail_ring[idx % VQ_SIZE] = 0;
	barrier();
	*(volatile u16 *)&vq.avail_idx = (u16)(idx + 1);
	barrier();
	vw(d, VM_QUEUE_NOTIFY, 0);
	u16 want = (u16)(d->last_used + 1);
	for (u32 i = 0; i < VIRTIO_SPIN_LIMIT; i++) {
		if (*(volatile u16 *)&vq.used_idx == want) {
			barrier();
			u32 slot = d->last_used % VQ_SIZE;
			d->last_used = want;
			vw(d, VM_INT_ACK, vr(d, VM_INT_STATUS));
			if (vq.used_ring[slot].id != 0) {
				printk("VIRTIO: error %s used id %u\n", what, vq.used_ring[slot].id);
				return -1;
			}
			return vq.used_ring[slot].len;
		}
		cpu_relax();
	}
	printk("VIRTIO: error %s timeout (used idx %u, status 0x%x)\n", what,
	       (u32)*(volatile u16 *)&vq.used_idx, vr(d, VM_STATUS));
	return -1;
}

/* ---- virtio-blk ---- */

/* One request: header, optional data (device-written for IN/GET_ID), status.
 * Returns the status byte, or -1 on a transport error. */
static int blk_request(struct vdev *d, u32 type, u64 sector, u32 len, const char *what)
{
	vq.hdr.type = type;
	vq.hdr.reserved = 0;
	vq.hdr.sector = sector;
	vq.status = 0xff;
	u32 n = 0;
	desc_set(n++, &vq.hdr, sizeof(vq.hdr), 0, 0);
	if (len)
		desc_set(n++, vq.data, len, type != BLK_T_OUT, 0);
	desc_set(n, &vq.status, 1, 1, 1);
	if (submit(d, what) < 0)
		return -1;
	return *(volatile u8 *)&vq.status;
}

static u8 pattern_byte(u32 i) { return i < sizeof(blk_prefix) - 1 ? (u8)blk_prefix[i] : (u8)(0x5a ^ i); }

static void blk_write_read(struct vdev *d)
{
	for (u32 i = 0; i < SECTOR; i++)
		vq.data[i] = pattern_byte(i);
	int st = blk_request(d, BLK_T_OUT, 1, SECTOR, "blk write");
	if (st != 0) {
		if (st > 0)
			printk("VIRTIO: error blk write status=%d\n", st);
		return;
	}
	memset(vq.data, 0xee, SECTOR);
	st = blk_request(d, BLK_T_IN, 1, SECTOR, "blk read");
	if (st != 0) {
		if (st > 0)
			printk("VIRTIO: error blk read status=%d\n", st);
		return;
	}
	for (u32 i = 0; i < SECTOR; i++)
		if (vq.data[i] != pattern_byte(i)) {
			printk("VIRTIO: error blk read-back mismatch at %u: 0x%x\n", i, (u32)vq.data[i]);
			return;
		}
	printk("VIRTIO: blk write-read ok\n");
}

static void blk_id(struct vdev *d)
{
	char id[BLK_ID_LEN + 1];
	memset(vq.data, 0, BLK_ID_LEN);
	int st = blk_request(d, BLK_T_GET_ID, 0, BLK_ID_LEN, "blk get-id");
	if (st < 0)
		return;
	if (st != 0) {
		printk("VIRTIO: blk id-status=%d\n", st);
		return;
	}
	u32 i = 0;
	for (; i < BLK_ID_LEN && vq.data[i]; i++)
		id[i] = (char)(vq.data[i] >= 0x21 && vq.data[i] < 0x7f ? vq.data[i] : '?');
	id[i] = 0;
	printk("VIRTIO: blk id=%s\n", id);
}

/* Writes capacity (sectors, from config) and whether the device offers F_RO. */
static int blk_probe(struct vdev *d, u64 *capacity, int *ro)
{
	if (dev_negotiate(d, BLK_F_RO | BLK_F_FLUSH, "blk"))
		return -1;
	u32 lo = 0, hi = 0;
	for (u32 tries = 0; tries < 8; tries++) {
		u32 gen = vr(d, VM_CONFIG_GEN);
		lo = vr(d, VM_CONFIG);
		hi = vr(d, VM_CONFIG + 4);
		if (vr(d, VM_CONFIG_GEN) == gen)
			break;
	}
	*capacity = lo | ((u64)hi << 32);
	*ro = (d->features_lo & BLK_F_RO) ? 1 : 0;
	dev_reset(d);
	return 0;
}

static void virtio_blk(void)
{
	int writable = -1, readonly = -1, disks = 0;
	for (u32 i = 0; i < nvdevs; i++) {
		u64 cap;
		int ro;
		if (vdevs[i].id != DEV_BLK || blk_probe(&vdevs[i], &cap, &ro))
			continue;
		printk("VIRTIO: blk dev=%d capacity=%lu ro=%d\n", disks, cap, ro);
		disks++;
		if (ro && readonly < 0)
			readonly = (int)i;
		if (!ro && writable < 0)
			writable = (int)i;
	}
	if (disks == 0) {
		printk("VIRTIO: error no virtio-blk device\n");
		return;
	}
	if (writable >= 0) {
		struct vdev *d = &vdevs[writable];
		if (dev_start(d, BLK_F_FLUSH, "blk") == 0) {
			blk_write_read(d);
			int st = blk_request(d, BLK_T_FLUSH, 0, 0, "blk flush");
			if (st >= 0)
				printk("VIRTIO: blk flush status=%d\n", st);
			blk_id(d);
		}
		dev_reset(d);
	}
	if (readonly >= 0) {
		struct vdev *d = &vdevs[readonly];
		if (dev_start(d, BLK_F_RO, "blk") == 0) {
			for (u32 i = 0; i < SECTOR; i++)
				vq.data[i] = pattern_byte(i);
			int st = blk_request(d, BLK_T_OUT, 1, SECTOR, "blk ro-write");
			if (st >= 0)
				printk("VIRTIO: blk ro-write status=%d\n", st);
		}
		dev_reset(d);
	}
}

/* ---- virtio-rng ---- */

static void virtio_rng(void)
{
	struct vdev *d = 0;
	for (u32 i = 0; i < nvdevs && !d; i++)
		if (vdevs[i].id == DEV_RNG)
			d = &vdevs[i];
	if (!d) {
		printk("VIRTIO: error no virtio-rng device\n");
		return;
	}
	if (dev_start(d, 0, "rng"))
		return;
	memset(vq.data, 0, RNG_LEN);
	u32 got = 0;
	for (u32 tries = 0; got < RNG_LEN && tries < 8; tries++) {
		desc_set(0, vq.data + got, RNG_LEN - got, 1, 1);
		i64 n = submit(d, "rng read");
		if (n < 0)
			break;
		if ((u64)n > RNG_LEN - got) {
			printk("VIRTIO: error rng used len %lu > %u\n", (u64)n, RNG_LEN - got);
			break;
		}
		got += (u32)n;
	}
	u32 nonzero = 0;
	for (u32 i = 0; i < got; i++)
		nonzero += vq.data[i] != 0;
	printk("VIRTIO: rng bytes=%u nonzero=%u\n", got, nonzero);
	dev_reset(d);
}

/* ---- entry ---- */

void virtio_action(int which, const char *cmdline)
{
	nvdevs = 0;
	find_tokens(cmdline);
	printk("VIRTIO: windows=%u\n", nvdevs);
	for (u32 i = 0; i < nvdevs; i++) {
		struct vdev *d = &vdevs[i];
		map_mmio(d->base);
		u32 magic = vr(d, VM_MAGIC), version = vr(d, VM_VERSION);
		d->id = vr(d, VM_DEVICE_ID);
		if (magic != VIRTIO_MAGIC) {
			printk("VIRTIO: error bad magic 0x%x at 0x%lx\n", magic, d->base);
			d->id = 0;
			continue;
		}
		if (version != 2) {
			printk("VIRTIO: error version %u at 0x%lx (want 2)\n", version, d->base);
			d->id = 0;
			continue;
		}
		printk("VIRTIO: window=%u addr=0x%lx irq=%u device=%u\n", i, d->base, d->irq, d->id);
	}
	if (which == DEV_BLK)
		virtio_blk();
	else
		virtio_rng();
	printk("VIRTIO: done\n");
}
