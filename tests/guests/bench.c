/*
 * petrel test guest: device-throughput benchmarks whose request loop runs in ring 3.
 *
 * `action=bench-blk [rw=read|write] [bs=<bytes>] [n=<requests>] [qd=<1..16>]`:
 * sequential virtio-blk requests of bs bytes (a multiple of 512, at most 64 KiB),
 * wrapping at the end of the disk, with qd requests in flight (FLUSH is negotiated,
 * so the device may cache writes; no flush is sent);
 * `action=bench-rng [bs=<bytes>] [n=<requests>]`: virtio-rng requests of bs bytes
 * (default 64); `action=bench-net [n=<frames>]`: 1514-byte broadcast frames of
 * ethertype 0x88b5 on the TX queue, keeping it full; `action=bench-vsock [bs=<bytes>]
 * [n=<packets>]`: RW packets of bs payload bytes (default 4096, at most 32768) on a stream
 * connection to host CID 2 port 5001 (virtio_vsock.c connects in ring 0), within the host's
 * credit (ring 3 waits for its CREDIT_UPDATEs when out of it), then SHUTDOWN.
 *
 * Set-up (probing, negotiation, queues) runs in ring 0; the request loop runs in
 * ring 3 (ring3.c), where it is native even when guest ring 0 is emulated (PVM).
 * It touches only the rings and buffers (a 2 MiB area above the image) and the
 * QueueNotify register; it polls the used ring (no interrupts, none acknowledged)
 * and notifies unless the device set VIRTQ_USED_F_NO_NOTIFY. Output:
 * `BENCH: begin` just before entering ring 3, `BENCH: end n=<completed> bytes=<B>
 * cycles=<TSC ticks in the loop>` just after (the host times the two lines), or
 * `BENCH: error <what>`.
 */
#include "virtio.h"

#ifndef VIRTIO_DEV_NET
#define VIRTIO_DEV_NET 1
#endif
#define MIB (1ULL << 20)
#define AREA_SIZE (2 * MIB)
/* Offsets in the area. */
#define OFF_DESC 0x0000ULL
#define OFF_AVAIL 0x1000ULL
#define OFF_USED 0x2000ULL
#define OFF_RX 0x3000ULL /* net: the RX queue's three parts, 0x1000 each */
#define OFF_HDR 0x6000ULL /* blk: one 16-byte header per slot */
#define OFF_STATUS 0x7000ULL /* blk: one status byte per slot */
#define OFF_DATA 0x10000ULL
#define SLOT_DATA 0x10000ULL /* 64 KiB of data per slot */
#define USTACK_TOP 0x1c0000ULL
#define KSTACK_TOP 0x200000ULL

#define BQ_MAX 256 /* largest queue used (a 4 KiB descriptor table) */
#define BLK_MAX_QD 16
#define BLK_MAX_BS SLOT_DATA
#define NET_FRAME 1514
#define NET_HDR_LEN 12
#define NET_SLOT 2048 /* bytes zeroed for the header and frame */
#define BLK_F_RO (1u << 5)
#define BLK_F_FLUSH (1u << 9)
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define USED_F_NO_NOTIFY 1
/* Polls without a completion before the ring-3 loop gives up (seconds to minutes). Not
 * rdtsc: PVM traps it, which made every idle poll cost microseconds. */
#define STALL_SPINS (1ULL << 28)

#define ERR_STALL 1
#define ERR_STATUS 2
#define ERR_ID 3
#define ERR_RESET 4
#define VSOCK_MAX_BS 32768

extern char _end[];

/* A split queue in the area, driven from ring 3. */
struct bq {
	volatile struct vq_desc *desc;
	volatile u16 *avail; /* flags, idx, ring[num] */
	volatile u16 *used;  /* flags, idx, then {u32 id, len}[num] */
	volatile u32 *notify;
	u32 index, num;
	u16 avail_idx, published, last_used;
};

/* Everything the ring-3 loop reads and writes (in .bss, mapped for ring 3). */
struct job {
	struct bq q;
	int which;
	u32 qd, per_req; /* requests in flight; descriptors per request */
	u64 n, span, sectors_per_req;
	volatile u64 *sector; /* blk: header sector field of slot s at sector[2 * s + 1] */
	volatile u8 *status;  /* blk: status byte per slot */
	u64 done, cycles;
	u32 err, err_val;
	struct vsock_conn vc; /* vsock: the connection */
	u64 bs;		      /* vsock: payload bytes per packet */
};

static struct job job;

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return lo | ((u64)hi << 32);
}

static inline void cbarrier(void) { __asm__ volatile("" ::: "memory"); }

/* Zeroes `qwords` 8-byte words with one `rep stosq` (one emulated instruction, not a loop). */
static void zero64(u64 addr, u64 qwords)
{
	__asm__ volatile("rep stosq" : "+D"(addr), "+c"(qwords) : "a"(0ULL) : "memory");
}

/* ---- ring 3 ---- */

/* Re-arms slot s for request number k and makes it available (not yet published). */
static void post(struct job *j, u32 s, u64 k)
{
	if (j->which == BENCH_BLK) {
		j->sector[2 * s + 1] = (k % j->span) * j->sectors_per_req;
		j->status[s] = 0xff;
	}
	struct bq *q = &j->q;
	q->avail[2 + q->avail_idx % q->num] = (u16)(s * j->per_req);
	q->avail_idx++;
}

/* Publishes the new avail index and notifies unless the device asked not to be. */
static void kick(struct bq *q)
{
	if (q->published == q->avail_idx)
		return;
	cbarrier(); /* ring entries before the index (x86 keeps stores in order) */
	q->avail[1] = q->avail_idx;
	q->published = q->avail_idx;
	__asm__ volatile("mfence" ::: "memory"); /* index before reading used flags */
	if (!(q->used[0] & USED_F_NO_NOTIFY))
		*q->notify = q->index;
}

/* The request loop (ring 3): keeps qd requests in flight until n completed. */
static u64 bench_loop(void *arg)
{
	struct job *j = arg;
	struct bq *q = &j->q;
	u64 sub = 0, done = 0;
	u64 t0 = rdtsc();
	for (u32 s = 0; s < j->qd && sub < j->n; s++)
		post(j, s, sub++);
	kick(q);
	u64 idle = 0;
	while (done < j->n) {
		u16 used = q->used[1];
		if (used == q->last_used) {
			if (++idle > STALL_SPINS) {
				j->err = ERR_STALL;
				break;
			}
			__asm__ volatile("pause");
			continue;
		}
		cbarrier(); /* the index before the elements (x86 keeps loads in order) */
		while (q->last_used != used) {
			volatile u32 *e = (volatile u32 *)(q->used + 2) + 2 * (q->last_used % q->num);
			u32 id = e[0];
			q->last_used++;
			u32 s = id / j->per_req;
			if (s >= j->qd || id % j->per_req) {
				j->err = ERR_ID;
				j->err_val = id;
				goto out;
			}
			if (j->which == BENCH_BLK && j->status[s] != 0) {
				j->err = ERR_STATUS;
				j->err_val = j->status[s];
				goto out;
			}
			done++;
			if (sub < j->n)
				post(j, s, sub++);
		}
		idle = 0;
		kick(q);
	}
out:
	j->cycles = rdtsc() - t0;
	j->done = done;
	return done;
}

/* Makes descriptor `id` available on a vsock queue (not yet published). */
static void vs_post(struct vqueue *q, u16 id)
{
	volatile struct vring *r = q->r;
	u16 idx = r->avail_idx;
	r->avail_ring[idx % q->num] = id;
	cbarrier();
	r->avail_idx = (u16)(idx + 1);
}

static void vs_notify(struct vqueue *q)
{
	__asm__ volatile("mfence" ::: "memory"); /* the index before reading used flags */
	if (!(((volatile struct vring *)q->r)->used_flags & USED_F_NO_NOTIFY))
		*(volatile u32 *)(q->d->base + VM_QUEUE_NOTIFY) = q->index;
}

/* The vsock loop (ring 3): n RW packets of bs bytes, one TX descriptor per packet, at most
 * the host's free credit (buf_alloc - (sent - fwd_cnt)) in flight; RX packets (credit
 * updates) are taken and their buffers re-posted. */
static u64 vsock_loop(void *arg)
{
	struct job *j = arg;
	struct vsock_conn *c = &j->vc;
	struct vqueue *tx = c->tx, *rx = c->rx;
	volatile struct vring *tr = tx->r, *rr = rx->r;
	u32 buf_alloc = c->peer_buf_alloc, fwd = c->peer_fwd_cnt, sent = 0;
	u64 sub = 0, done = 0, idle = 0;
	u32 free_slots = tx->num, next_slot = 0;
	u64 t0 = rdtsc();
	while (done < j->n) {
		int progress = 0;
		/* Credit from the host. */
		u16 used = rr->used_idx;
		if (used != rx->last_used) {
			cbarrier();
			while (rx->last_used != used) {
				u32 id = rr->used_ring[rx->last_used % rx->num].id;
				rx->last_used++;
				if (id >= c->nrx) {
					j->err = ERR_ID;
					j->err_val = id;
					goto out;
				}
				volatile struct vsock_hdr *h =
					(volatile struct vsock_hdr *)(c->rxbuf + id * c->rxbuf_size);
				if (h->op == VSOCK_OP_RST || h->op == VSOCK_OP_SHUTDOWN) {
					j->err = ERR_RESET;
					j->err_val = h->op;
					goto out;
				}
				buf_alloc = h->buf_alloc;
				fwd = h->fwd_cnt;
				vs_post(rx, (u16)id);
			}
			vs_notify(rx);
			progress = 1;
		}
		/* Completed packets. */
		used = tr->used_idx;
		if (used != tx->last_used) {
			cbarrier();
			u16 k = (u16)(used - tx->last_used);
			tx->last_used = used;
			done += k;
			free_slots += k;
			progress = 1;
		}
		/* New packets, within the credit. */
		u16 posted = 0;
		while (sub < j->n && free_slots && buf_alloc - (sent - fwd) >= j->bs) {
			vs_post(tx, (u16)next_slot);
			next_slot = (next_slot + 1) % tx->num;
			free_slots--;
			sent += (u32)j->bs;
			sub++;
			posted++;
		}
		if (posted) {
			vs_notify(tx);
			progress = 1;
		}
		if (progress) {
			idle = 0;
		} else if (++idle > STALL_SPINS) {
			j->err = ERR_STALL;
			break;
		} else {
			__asm__ volatile("pause");
		}
	}
out:
	j->cycles = rdtsc() - t0;
	j->done = done;
	return done;
}

/* ---- ring 0: set-up ---- */

static u64 opt(const char *c, const char *key, u64 def)
{
	for (u32 n = 0; c[n] && n < 4096; n++) {
		if (n && c[n - 1] != ' ')
			continue;
		u32 k = 0;
		while (key[k] && c[n + k] == key[k])
			k++;
		if (key[k])
			continue;
		u64 v = 0;
		const char *p = c + n + k;
		if (*p < '0' || *p > '9')
			return def;
		while (*p >= '0' && *p <= '9')
			v = v * 10 + (u64)(*p++ - '0');
		return v;
	}
	return def;
}

static int opt_is(const char *c, const char *token)
{
	for (u32 n = 0; c[n] && n < 4096; n++) {
		if (n && c[n - 1] != ' ')
			continue;
		u32 k = 0;
		while (token[k] && c[n + k] == token[k])
			k++;
		if (!token[k] && (c[n + k] == ' ' || c[n + k] == 0))
			return 1;
	}
	return 0;
}

/* The 2 MiB area after the image, if RAM holds it. */
static u64 pick_area(void)
{
	u64 area = ((u64)_end + AREA_SIZE - 1) & ~(AREA_SIZE - 1);
	u64 addr, size;
	u32 type;
	for (u32 i = 0; memmap_get(i, &addr, &size, &type); i++)
		if (type == 1 && addr <= area && addr + size >= area + AREA_SIZE)
			return area;
	return 0;
}

/* Sets up queue `index` of `num` (at most the device's maximum) entries at `base`. */
static int bq_setup(struct vdev *d, struct bq *q, u32 index, u64 base, u32 num)
{
	vw(d, VM_QUEUE_SEL, index);
	u32 max = vr(d, VM_QUEUE_NUM_MAX);
	if (max == 0 || vr(d, VM_QUEUE_READY) != 0) {
		printk("BENCH: error queue %u unavailable (max=%u)\n", index, max);
		return -1;
	}
	while (num > max)
		num >>= 1;
	zero64(base, 0x3000 / 8);
	q->desc = (volatile struct vq_desc *)(base + OFF_DESC);
	q->avail = (volatile u16 *)(base + OFF_AVAIL);
	q->used = (volatile u16 *)(base + OFF_USED);
	q->notify = (volatile u32 *)(d->base + VM_QUEUE_NOTIFY);
	q->index = index;
	q->num = num;
	q->avail_idx = q->published = q->last_used = 0;
	vw(d, VM_QUEUE_NUM, num);
	vw(d, VM_QUEUE_DESC, (u32)(base + OFF_DESC));
	vw(d, VM_QUEUE_DESC + 4, 0);
	vw(d, VM_QUEUE_DRIVER, (u32)(base + OFF_AVAIL));
	vw(d, VM_QUEUE_DRIVER + 4, 0);
	vw(d, VM_QUEUE_DEVICE, (u32)(base + OFF_USED));
	vw(d, VM_QUEUE_DEVICE + 4, 0);
	vw(d, VM_QUEUE_READY, 1);
	if (vr(d, VM_QUEUE_READY) != 1) {
		printk("BENCH: error queue %u not ready\n", index);
		return -1;
	}
	return 0;
}

static void desc(struct bq *q, u32 i, u64 addr, u32 len, int device_writes, int next)
{
	q->desc[i].addr = addr;
	q->desc[i].len = len;
	q->desc[i].flags = (u16)((device_writes ? VQ_F_WRITE : 0) | (next ? VQ_F_NEXT : 0));
	q->desc[i].next = (u16)(next ? i + 1 : 0);
}

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

/* Device-specific set-up of `job` on `d`; returns the bytes one request moves, 0 on error. */
static u64 setup_blk(struct vdev *d, const char *c, u64 area)
{
	int write = opt_is(c, "rw=write");
	u64 bs = opt(c, "bs=", 4096), qd = opt(c, "qd=", 1);
	if (bs == 0 || bs % 512 || bs > BLK_MAX_BS || qd == 0 || qd > BLK_MAX_QD) {
		printk("BENCH: error bad bs=%lu or qd=%lu\n", bs, qd);
		return 0;
	}
	/* FLUSH, as Linux does: without it the device may write through (QEMU then
	 * fdatasyncs every write). */
	if (dev_negotiate(d, BLK_F_FLUSH, "blk") || bq_setup(d, &job.q, 0, area, 64))
		return 0;
	u64 cap = blk_capacity(d);
	if (d->features_lo & BLK_F_RO && write) {
		printk("BENCH: error disk is read-only\n");
		return 0;
	}
	job.qd = (u32)qd;
	job.per_req = 3;
	if (job.qd * 3 > job.q.num) {
		printk("BENCH: error qd=%u needs %u descriptors, queue has %u\n", job.qd, job.qd * 3,
		       job.q.num);
		return 0;
	}
	job.sectors_per_req = bs / 512;
	job.span = cap / job.sectors_per_req;
	if (job.span == 0) {
		printk("BENCH: error disk of %lu sectors is smaller than bs\n", cap);
		return 0;
	}
	job.sector = (volatile u64 *)(area + OFF_HDR);
	job.status = (volatile u8 *)(area + OFF_STATUS);
	for (u32 s = 0; s < job.qd; s++) {
		job.sector[2 * s] = write ? BLK_T_OUT : BLK_T_IN; /* type, reserved */
		u64 data = area + OFF_DATA + s * SLOT_DATA;
		desc(&job.q, 3 * s, area + OFF_HDR + 16 * s, 16, 0, 1);
		desc(&job.q, 3 * s + 1, data, (u32)bs, !write, 1);
		desc(&job.q, 3 * s + 2, area + OFF_STATUS + s, 1, 1, 0);
	}
	printk("BENCH: blk capacity=%lu rw=%s bs=%lu qd=%u queue=%u\n", cap,
	       write ? "write" : "read", bs, job.qd, job.q.num);
	return bs;
}

static u64 setup_rng(struct vdev *d, const char *c, u64 area)
{
	u64 bs = opt(c, "bs=", 64);
	if (bs == 0 || bs > SLOT_DATA) {
		printk("BENCH: error bad bs=%lu\n", bs);
		return 0;
	}
	if (dev_negotiate(d, 0, "rng") || bq_setup(d, &job.q, 0, area, 8))
		return 0;
	job.qd = 1;
	job.per_req = 1;
	desc(&job.q, 0, area + OFF_DATA, (u32)bs, 1, 0);
	printk("BENCH: rng bs=%lu\n", bs);
	return bs;
}

static u64 setup_net(struct vdev *d, u64 area)
{
	struct bq rx;
	if (dev_negotiate(d, 0, "net") || bq_setup(d, &rx, 0, area + OFF_RX, 8) ||
	    bq_setup(d, &job.q, 1, area, BQ_MAX))
		return 0;
	job.qd = job.q.num;
	job.per_req = 1;
	/* One frame that every descriptor sends (the device only reads it). */
	u8 *f = (u8 *)(area + OFF_DATA);
	zero64((u64)f, NET_SLOT / 8);
	u8 *eth = f + NET_HDR_LEN;
	memset(eth, 0xff, 6); /* broadcast */
	eth[6] = 0x02;        /* locally administered source 02:00:00:00:00:01 */
	eth[11] = 0x01;
	eth[12] = 0x88; /* ethertype 0x88b5 */
	eth[13] = 0xb5;
	memcpy(eth + 14, "PETREL-BENCH", 12);
	for (u32 s = 0; s < job.qd; s++)
		desc(&job.q, s, (u64)f, NET_HDR_LEN + NET_FRAME, 0, 0);
	printk("BENCH: net frame=%u queue=%u\n", NET_FRAME, job.q.num);
	return NET_FRAME;
}

/* Connects (virtio_vsock.c) and points the TX descriptors at one packet per slot. */
static u64 setup_vsock(struct vdev *d, const char *c, u64 area)
{
	u64 bs = opt(c, "bs=", 4096);
	if (bs == 0 || bs > VSOCK_MAX_BS) {
		printk("BENCH: error bad bs=%lu\n", bs);
		return 0;
	}
	if (vsock_open(d, &job.vc))
		return 0;
	struct vqueue *tx = job.vc.tx;
	for (u32 s = 0; s < tx->num; s++) {
		u64 pkt = area + OFF_DATA + s * SLOT_DATA;
		struct vsock_hdr *h = (struct vsock_hdr *)pkt;
		*h = job.vc.hdr;
		h->len = (u32)bs;
		zero64(pkt + sizeof(*h), (bs + 7) / 8);
		tx->r->desc[s].addr = pkt;
		tx->r->desc[s].len = (u32)(sizeof(*h) + bs);
		tx->r->desc[s].flags = 0;
		tx->r->desc[s].next = 0;
	}
	job.bs = bs;
	printk("BENCH: vsock bs=%lu queue=%u credit=%u\n", bs, tx->num, job.vc.peer_buf_alloc);
	return bs;
}

void bench_action(int which, const char *cmdline)
{
	static const u32 ids[] = {0, VIRTIO_DEV_BLK, VIRTIO_DEV_RNG, VIRTIO_DEV_NET,
				  VIRTIO_DEV_VSOCK};
	static const char *const names[] = {"", "blk", "rng", "net", "vsock"};
	virtio_probe(cmdline);
	struct vdev *d = virtio_find(ids[which]);
	if (!d) {
		printk("BENCH: error no virtio-%s device\n", names[which]);
		return;
	}
	u64 area = pick_area();
	if (!area) {
		printk("BENCH: error no 2 MiB of RAM after the image at 0x%lx\n", (u64)_end);
		return;
	}
	memset(&job, 0, sizeof(job));
	job.which = which;
	job.n = opt(cmdline, "n=", 1000);
	int vsock = which == BENCH_VSOCK;
	u64 bytes_per_req = which == BENCH_BLK   ? setup_blk(d, cmdline, area)
			    : which == BENCH_RNG ? setup_rng(d, cmdline, area)
			    : vsock		 ? setup_vsock(d, cmdline, area)
						 : setup_net(d, area);
	/* vsock_open() set DRIVER_OK itself. */
	if (!bytes_per_req || (!vsock && dev_driver_ok(d, names[which]))) {
		dev_reset(d);
		return;
	}
	ring3_init(area + KSTACK_TOP);
	if (ring3_map_user(0x100000, (u64)_end - 0x100000) || ring3_map_user(area, AREA_SIZE) ||
	    ring3_map_user(d->base & ~0xfffULL, 0x1000)) {
		printk("BENCH: error cannot map the loop's memory for ring 3\n");
		dev_reset(d);
		return;
	}
	printk("BENCH: begin\n");
	u64 done = ring3_call(vsock ? vsock_loop : bench_loop, &job, area + USTACK_TOP);
	printk("BENCH: end n=%lu bytes=%lu cycles=%lu\n", done, done * bytes_per_req, job.cycles);
	if (job.err == ERR_STALL)
		printk("BENCH: error no completion for 2^28 polls after %lu\n", done);
	else if (job.err == ERR_STATUS)
		printk("BENCH: error request status %u after %lu\n", job.err_val, done);
	else if (job.err == ERR_ID)
		printk("BENCH: error used id %u after %lu\n", job.err_val, done);
	else if (job.err == ERR_RESET)
		printk("BENCH: error vsock op %u from the host after %lu\n", job.err_val, done);
	else if (vsock)
		vsock_close();
	dev_reset(d);
}
