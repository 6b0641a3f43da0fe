/*
 * petrel test guest: a small polling virtio-mmio (version 2) driver.
 *
 * Finds devices from `virtio_mmio.device=<size>@<addr>:<irq>[:<id>]` command-line
 * tokens and implements the transport declared in virtio.h: negotiation of
 * VIRTIO_F_VERSION_1, split virtqueues of up to 8 entries in .bss (physical =
 * virtual in the identity map), posting chains and polling the used index with a
 * bounded spin. No interrupts: the InterruptStatus bits are acknowledged after each
 * completion.
 *
 * Actions here: virtio-blk (capacity/ro of every disk; write, read-back, flush and
 * get-id on the first writable disk; a rejected write on the first read-only disk)
 * and virtio-rng (a 32-byte read), both on queue 0 with one chain at a time;
 * virtio-net and virtio-vsock live in virtio_net.c and virtio_vsock.c. Every failure
 * prints `VIRTIO: error <what>` and returns, so the guest still powers off.
 */
#include "virtio.h"

/* Page tables (linker script, .pagetables). */
extern u64 pml4[512], pdpt[512], pd[2048];

#define VIRTIO_MAX_DEVS 16
#define SECTOR 512
#define BLK_ID_LEN 20
#define RNG_LEN 32

#define VIRTIO_MAGIC 0x74726976 /* "virt" */
#define ST_ACKNOWLEDGE 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define ST_NEEDS_RESET 64
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

/* Queue 0 and the request buffers of the blk/rng device in use (1.5 KiB of .bss). */
struct vq_page {
	struct vring r;
	struct {
		u32 type, reserved;
		u64 sector;
	} hdr;
	u8 status;
	u8 pad2[512 - 16 - 1];
	u8 data[SECTOR];
} __attribute__((aligned(16)));

static struct vq_page vq;
/* Queue 0 of the blk/rng device in use. */
static struct vqueue blkq;

static struct vdev vdevs[VIRTIO_MAX_DEVS];
static u32 nvdevs;

struct vdev *virtio_find(u32 id)
{
	for (u32 i = 0; i < nvdevs; i++)
		if (vdevs[i].id == id)
			return &vdevs[i];
	return 0;
}

static const char blk_prefix[] = "PETREL-BLK-";

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
void virtio_map_mmio(u64 a)
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

void dev_reset(struct vdev *d)
{
	vw(d, VM_STATUS, 0);
	for (u32 i = 0; i < 1000 && vr(d, VM_STATUS) != 0; i++)
		cpu_relax();
}

int dev_negotiate(struct vdev *d, u32 want, const char *what)
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

/* Writes a 64-bit guest-physical address to a low/high register pair. */
static void vw_addr(struct vdev *d, u32 reg, const void *p)
{
	vw(d, reg, (u32)(u64)p);
	vw(d, reg + 4, (u32)((u64)p >> 32));
}

int vq_setup(struct vdev *d, struct vqueue *q, u32 index, struct vring *r, const char *what)
{
	vw(d, VM_QUEUE_SEL, index);
	u32 max = vr(d, VM_QUEUE_NUM_MAX);
	if (max == 0 || vr(d, VM_QUEUE_READY) != 0) {
		printk("VIRTIO: error %s at 0x%lx queue %u unavailable (max=%u)\n", what, d->base,
		       index, max);
		vw(d, VM_STATUS, ST_FAILED);
		return -1;
	}
	u32 n = VQ_SIZE;
	while (n > max)
		n >>= 1; /* a power of two no larger than the device's maximum */
	memset(r, 0, sizeof(*r));
	q->d = d;
	q->r = r;
	q->index = (u16)index;
	q->num = (u16)n;
	q->last_used = 0;
	vw(d, VM_QUEUE_NUM, n);
	vw_addr(d, VM_QUEUE_DESC, r->desc);
	vw_addr(d, VM_QUEUE_DRIVER, &r->avail_flags);
	vw_addr(d, VM_QUEUE_DEVICE, &r->used_flags);
	vw(d, VM_QUEUE_READY, 1);
	if (vr(d, VM_QUEUE_READY) != 1) {
		printk("VIRTIO: error %s at 0x%lx queue %u not ready\n", what, d->base, index);
		vw(d, VM_STATUS, ST_FAILED);
		return -1;
	}
	return 0;
}

int dev_driver_ok(struct vdev *d, const char *what)
{
	vw(d, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	u32 st = vr(d, VM_STATUS);
	if (!(st & ST_DRIVER_OK) || (st & (ST_FAILED | ST_NEEDS_RESET))) {
		printk("VIRTIO: error %s at 0x%lx failed DRIVER_OK (status 0x%x)\n", what, d->base, st);
		return -1;
	}
	return 0;
}

void vq_desc(struct vqueue *q, u16 i, const void *addr, u32 len, int device_writes, int next)
{
	struct vq_desc *e = &q->r->desc[i % q->num];
	e->addr = (u64)addr;
	e->len = len;
	e->flags = (u16)((device_writes ? VQ_F_WRITE : 0) | (next >= 0 ? VQ_F_NEXT : 0));
	e->next = (u16)(next >= 0 ? next : 0);
}

void vq_post(struct vqueue *q, u16 head)
{
	struct vring *r = q->r;
	u16 idx = *(volatile u16 *)&r->avail_idx;
	r->avail_ring[idx % q->num] = head;
	barrier();
	*(volatile u16 *)&r->avail_idx = (u16)(idx + 1);
	barrier();
	vw(q->d, VM_QUEUE_NOTIFY, q->index);
}

int vq_used(struct vqueue *q, u32 *id, u32 *len)
{
	struct vring *r = q->r;
	if (*(volatile u16 *)&r->used_idx == q->last_used)
		return 0;
	barrier();
	u32 slot = q->last_used % q->num;
	*id = r->used_ring[slot].id;
	*len = r->used_ring[slot].len;
	q->last_used++;
	vw(q->d, VM_INT_ACK, vr(q->d, VM_INT_STATUS));
	return 1;
}

int vq_wait(struct vqueue *q, u32 *id, u32 *len, u32 spins, const char *what)
{
	for (u32 i = 0; i < spins; i++) {
		if (vq_used(q, id, len))
			return 0;
		cpu_relax();
	}
	printk("VIRTIO: error %s timeout (queue %u used idx %u, status 0x%x)\n", what,
	       (u32)q->index, (u32)*(volatile u16 *)&q->r->used_idx, vr(q->d, VM_STATUS));
	return -1;
}

int vq_wait_host(struct vqueue *q, u32 *id, u32 *len, const char *what)
{
	u64 start = tsc_read();
	for (u32 i = 1;; i++) {
		if (vq_used(q, id, len))
			return 0;
		if (i % 256 == 0 && tsc_read() - start > VIRTIO_HOST_WAIT_TICKS)
			break;
		cpu_relax();
	}
	printk("VIRTIO: error %s timeout (queue %u used idx %u, status 0x%x)\n", what,
	       (u32)q->index, (u32)*(volatile u16 *)&q->r->used_idx, vr(q->d, VM_STATUS));
	return -1;
}

/* Negotiates, sets up queue 0 on `vq` and sets DRIVER_OK. */
static int dev_start(struct vdev *d, u32 want, const char *what)
{
	if (dev_negotiate(d, want, what) || vq_setup(d, &blkq, 0, &vq.r, what))
		return -1;
	return dev_driver_ok(d, what);
}

/* Fills descriptor i of queue 0 (chained to i+1 unless last). */
static void desc_set(u32 i, const void *addr, u32 len, int device_writes, int last)
{
	vq_desc(&blkq, (u16)i, addr, len, device_writes, last ? -1 : (int)i + 1);
}

/* Publishes the chain starting at descriptor 0 of queue 0 and polls for its completion.
 * Returns the used length, or -1 (error printed) on a timeout. */
static i64 submit(const char *what)
{
	u32 id, len;
	vq_post(&blkq, 0);
	if (vq_wait(&blkq, &id, &len, VIRTIO_SPIN_LIMIT, what))
		return -1;
	if (id != 0) {
		printk("VIRTIO: error %s used id %u\n", what, id);
		return -1;
	}
	return len;
}

/* ---- virtio-blk ---- */

/* One request: header, optional data (device-written for IN/GET_ID), status.
 * Returns the status byte, or -1 on a transport error. */
static int blk_request(u32 type, u64 sector, u32 len, const char *what)
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
	if (submit(what) < 0)
		return -1;
	return *(volatile u8 *)&vq.status;
}

static u8 pattern_byte(u32 i) { return i < sizeof(blk_prefix) - 1 ? (u8)blk_prefix[i] : (u8)(0x5a ^ i); }

static void blk_write_read(void)
{
	for (u32 i = 0; i < SECTOR; i++)
		vq.data[i] = pattern_byte(i);
	int st = blk_request(BLK_T_OUT, 1, SECTOR, "blk write");
	if (st != 0) {
		if (st > 0)
			printk("VIRTIO: error blk write status=%d\n", st);
		return;
	}
	memset(vq.data, 0xee, SECTOR);
	st = blk_request(BLK_T_IN, 1, SECTOR, "blk read");
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

static void blk_id(void)
{
	char id[BLK_ID_LEN + 1];
	memset(vq.data, 0, BLK_ID_LEN);
	int st = blk_request(BLK_T_GET_ID, 0, BLK_ID_LEN, "blk get-id");
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
			blk_write_read();
			int st = blk_request(BLK_T_FLUSH, 0, 0, "blk flush");
			if (st >= 0)
				printk("VIRTIO: blk flush status=%d\n", st);
			blk_id();
		}
		dev_reset(d);
	}
	if (readonly >= 0) {
		struct vdev *d = &vdevs[readonly];
		if (dev_start(d, BLK_F_RO, "blk") == 0) {
			for (u32 i = 0; i < SECTOR; i++)
				vq.data[i] = pattern_byte(i);
			int st = blk_request(BLK_T_OUT, 1, SECTOR, "blk ro-write");
			if (st >= 0)
				printk("VIRTIO: blk ro-write status=%d\n", st);
		}
		dev_reset(d);
	}
}

/*
 * virtio-blk-swap: the first disk's capacity, the driver bound (DRIVER_OK), then waits for a
 * configuration change (ConfigGeneration moves or InterruptStatus bit 1 is set: the host
 * replaced the backing file), reads
 * the capacity again and writes and reads back sector 1 of the new file.
 */
static u64 blk_capacity(struct vdev *d)
{
	u32 lo = 0, hi = 0;
	for (u32 tries = 0; tries < 8; tries++) {
		u32 gen = vr(d, VM_CONFIG_GEN);
		lo = vr(d, VM_CONFIG);
		hi = vr(d, VM_CONFIG + 4);
		if (vr(d, VM_CONFIG_GEN) == gen)
			break;
	}
	return lo | ((u64)hi << 32);
}

static void virtio_blk_swap(void)
{
	struct vdev *d = 0;
	for (u32 i = 0; i < nvdevs && !d; i++)
		if (vdevs[i].id == DEV_BLK)
			d = &vdevs[i];
	if (!d) {
		printk("VIRTIO: error no virtio-blk device\n");
		return;
	}
	if (dev_start(d, BLK_F_FLUSH, "blk"))
		return;
	u32 gen = vr(d, VM_CONFIG_GEN);
	printk("VIRTIO: blk swap-wait capacity=%lu\n", blk_capacity(d));
	u64 start = tsc_read();
	/* ConfigGeneration moves, or InterruptStatus has the configuration-change bit. */
	for (u32 i = 1; vr(d, VM_CONFIG_GEN) == gen && !(vr(d, VM_INT_STATUS) & 2); i++) {
		if (i % 256 == 0 && tsc_read() - start > VIRTIO_HOST_WAIT_TICKS) {
			printk("VIRTIO: error blk config change timeout\n");
			dev_reset(d);
			return;
		}
		cpu_relax();
	}
	vw(d, VM_INT_ACK, vr(d, VM_INT_STATUS));
	printk("VIRTIO: blk swapped capacity=%lu\n", blk_capacity(d));
	blk_write_read();
	dev_reset(d);
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
		i64 n = submit("rng read");
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

void virtio_probe(const char *cmdline)
{
	nvdevs = 0;
	find_tokens(cmdline);
	u32 mmio = nvdevs;
	nvdevs += pci_probe(vdevs + nvdevs, VIRTIO_MAX_DEVS - nvdevs);
	printk("VIRTIO: windows=%u\n", mmio);
	for (u32 i = 0; i < mmio; i++) {
		struct vdev *d = &vdevs[i];
		virtio_map_mmio(d->base);
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
}

/* action=count-blk: `COUNT <n>` forever, n written to the disk (and completed) first, so the
 * disk always holds the count last printed or the one about to be. */
static void count_blk(void)
{
	struct vdev *d = 0;
	for (u32 i = 0; i < nvdevs && !d; i++) {
		u64 cap;
		int ro;
		if (vdevs[i].id == DEV_BLK && blk_probe(&vdevs[i], &cap, &ro) == 0 && !ro)
			d = &vdevs[i];
	}
	if (!d || dev_start(d, 0, "blk")) {
		printk("VIRTIO: error no writable virtio-blk device\n");
		return;
	}
	for (u64 n = 0;; n++) {
		memset(vq.data, 0, SECTOR);
		vq.data[0] = 'P';
		vq.data[1] = 'C';
		vq.data[2] = 'N';
		vq.data[3] = 'T';
		for (u32 b = 0; b < 8; b++)
			vq.data[4 + b] = (u8)(n >> (8 * b));
		int st = blk_request(BLK_T_OUT, 2, SECTOR, "blk count");
		if (st != 0) {
			printk("VIRTIO: error blk count write status=%d\n", st);
			return;
		}
		printk("COUNT %lu\n", n);
		for (volatile u32 i = 0; i < 30000u; i++)
			;
	}
}

/* action=blk-log: on the first writable disk, prints the first 16 bytes of sector 0 in hex
 * (`VIRTIO: blk sector0=<hex>`), then writes entry n = 0, 1, ... to sector n * 128 (64 KiB
 * apart, each in a cluster of its own in a qcow2 image) as "PLOG" + n (u64 little endian)
 * + pattern_byte, flushes after every fourth and prints `FLUSHED <n>` (entries 0..=n are
 * durable); at the end of the disk `VIRTIO: blk log done entries=<n>`. */
static void blk_log(void)
{
	static const char hex[] = "0123456789abcdef";
	struct vdev *d = 0;
	u64 cap = 0;
	for (u32 i = 0; i < nvdevs && !d; i++) {
		int ro;
		if (vdevs[i].id == DEV_BLK && blk_probe(&vdevs[i], &cap, &ro) == 0 && !ro)
			d = &vdevs[i];
	}
	if (!d || dev_start(d, BLK_F_FLUSH, "blk") || !(d->features_lo & BLK_F_FLUSH)) {
		printk("VIRTIO: error no writable virtio-blk device with flush\n");
		return;
	}
	int st = blk_request(BLK_T_IN, 0, SECTOR, "blk read sector 0");
	if (st != 0) {
		printk("VIRTIO: error blk read sector 0 status=%d\n", st);
		return;
	}
	char text[33];
	for (u32 i = 0; i < 16; i++) {
		text[2 * i] = hex[vq.data[i] >> 4];
		text[2 * i + 1] = hex[vq.data[i] & 15];
	}
	text[32] = 0;
	printk("VIRTIO: blk sector0=%s\n", text);
	u64 n = 0;
	for (; (n + 1) * 128 <= cap; n++) {
		for (u32 i = 0; i < SECTOR; i++)
			vq.data[i] = (u8)(0x5a ^ i);
		vq.data[0] = 'P';
		vq.data[1] = 'L';
		vq.data[2] = 'O';
		vq.data[3] = 'G';
		for (u32 b = 0; b < 8; b++)
			vq.data[4 + b] = (u8)(n >> (8 * b));
		st = blk_request(BLK_T_OUT, n * 128, SECTOR, "blk log write");
		if (st != 0) {
			printk("VIRTIO: error blk log write %lu status=%d\n", n, st);
			return;
		}
		if (n % 4 == 3) {
			st = blk_request(BLK_T_FLUSH, 0, 0, "blk log flush");
			if (st != 0) {
				printk("VIRTIO: error blk log flush status=%d\n", st);
				return;
			}
			printk("FLUSHED %lu\n", n);
		}
	}
	printk("VIRTIO: blk log done entries=%lu\n", n);
}

void virtio_action(int which, const char *cmdline)
{
	virtio_probe(cmdline);
	if (which == DEV_BLK)
		virtio_blk();
	else if (which == VIRTIO_DEV_NET)
		virtio_net(cmdline);
	else if (which == VIRTIO_DEV_VSOCK)
		virtio_vsock();
	else if (which == VIRTIO_ACT_VSOCK_LISTEN)
		virtio_vsock_listen();
	else if (which == VIRTIO_ACT_COUNT_BLK)
		count_blk();
	else if (which == VIRTIO_ACT_BLK_SWAP)
		virtio_blk_swap();
	else if (which == VIRTIO_ACT_MMDS)
		virtio_mmds();
	else if (which == VIRTIO_ACT_BLK_LOG)
		blk_log();
	else
		virtio_rng();
	pci_msix_report(vdevs, nvdevs);
	printk("VIRTIO: done\n");
}
