/*
 * petrel test guest: the polling virtio-mmio (version 2) transport shared by the
 * virtio actions (virtio.c: probing, negotiation, queue set-up, blk and rng;
 * virtio_net.c; virtio_vsock.c).
 *
 * Queues are split virtqueues of at most VQ_SIZE entries in .bss (physical =
 * virtual in the identity map). Nothing uses interrupts: drivers poll the used
 * index with a bounded spin and acknowledge InterruptStatus.
 */
#ifndef PETREL_VIRTIO_H
#define PETREL_VIRTIO_H

#include "guest.h"

#define VQ_SIZE 8
/* Polls of a used index before giving up on the device (~0.1-1M/s where ring 0 is
 * emulated, far more on hardware: only for what the device answers by itself). */
#define VIRTIO_SPIN_LIMIT 5000000u
/* TSC ticks to wait for something the host's side must do (a frame, a reply): 2^35 is
 * 8.6 s at 4 GHz, 17 s at 2 GHz. Spin counts cannot bound this: their rate differs a
 * thousandfold between emulated ring 0 and hardware. */
#define VIRTIO_HOST_WAIT_TICKS (1ULL << 35)

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

#define VQ_F_NEXT 1
#define VQ_F_WRITE 2

struct vq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

/* The three areas of one split queue of VQ_SIZE entries (512 bytes). */
struct vring {
	struct vq_desc desc[VQ_SIZE]; /* 16-byte aligned */
	u16 avail_flags, avail_idx, avail_ring[VQ_SIZE], used_event;
	u8 pad0[256 - 16 * VQ_SIZE - 6 - 2 * VQ_SIZE];
	u16 used_flags, used_idx; /* 4-byte aligned (offset 256) */
	struct {
		u32 id, len;
	} used_ring[VQ_SIZE];
	u16 avail_event;
	u8 pad1[512 - 256 - 4 - 8 * VQ_SIZE - 2];
} __attribute__((aligned(16)));

#define VIRTIO_PCI_MAX_QUEUES 8

/* One `virtio_mmio.device=` window, or one virtio-pci function (pci.c). */
struct vdev {
	u64 base; /* the mmio window, or BAR 0 */
	u32 irq;
	u32 id; /* virtio device id, 0 when the window is unusable */
	u32 features_lo;
	/* virtio-pci only: where the structures are, the selected queue, notify offsets. */
	u32 pci, slot, qsel, notify_mult, msix_vectors, driven;
	u64 common, notify, isr, devcfg;
	u16 qoff[VIRTIO_PCI_MAX_QUEUES];
};

/* pci.c: virtio-mmio registers translated to the virtio-pci structures. */
u32 pci_vr(const struct vdev *d, u32 reg);
void pci_vw(struct vdev *d, u32 reg, u32 v);
/* Enumerates bus 0, sets up each virtio function into out[..max]; returns how many. */
u32 pci_probe(struct vdev *out, u32 max);
/* After a driver ran: whether queue 0's MSI-X vector reached the local APIC. */
void pci_msix_report(struct vdev *devs, u32 n);
/* virtio.c: maps the 2 MiB page holding `a`, uncached. */
void virtio_map_mmio(u64 a);

/* The driver's view of one configured queue. */
struct vqueue {
	struct vdev *d;
	struct vring *r;
	u16 index;
	u16 num; /* negotiated size (<= VQ_SIZE) */
	u16 last_used;
};

static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline u32 vr(const struct vdev *d, u32 reg)
{
	return d->pci ? pci_vr(d, reg) : rd32(d->base + reg);
}
static inline void vw(const struct vdev *d, u32 reg, u32 v)
{
	if (d->pci)
		pci_vw((struct vdev *)d, reg, v);
	else
		*(volatile u32 *)(d->base + reg) = v;
}
/* The TSC (PVM traps rdtsc: read it every few hundred polls, not on each). */
static inline u64 tsc_read(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return lo | ((u64)hi << 32);
}
static inline u8 vcfg8(const struct vdev *d, u32 off)
{
	return rd8(d->pci ? d->devcfg + off : d->base + VM_CONFIG + off);
}

/* virtio.c */
/* The first usable window whose device id is `id`, or 0. */
struct vdev *virtio_find(u32 id);
void dev_reset(struct vdev *d);
/* Reset, ACKNOWLEDGE, DRIVER, VERSION_1 + `want` of the low feature word, FEATURES_OK.
 * Returns 0, or -1 after printing `VIRTIO: error …`. */
int dev_negotiate(struct vdev *d, u32 want, const char *what);
/* Sets up queue `index` on ring `r` (zeroed) and enables it (after dev_negotiate). */
int vq_setup(struct vdev *d, struct vqueue *q, u32 index, struct vring *r, const char *what);
/* Sets DRIVER_OK; -1 (error printed) when the device refuses it. */
int dev_driver_ok(struct vdev *d, const char *what);
/* Fills descriptor i of q (chained to `next` when next >= 0). */
void vq_desc(struct vqueue *q, u16 i, const void *addr, u32 len, int device_writes, int next);
/* Makes the chain at `head` available and notifies the device. */
void vq_post(struct vqueue *q, u16 head);
/* Takes the next used element if there is one (returns 1), without waiting. */
int vq_used(struct vqueue *q, u32 *id, u32 *len);
/* Waits at most `spins` polls for the next used element; -1 (error printed) on a timeout. */
int vq_wait(struct vqueue *q, u32 *id, u32 *len, u32 spins, const char *what);
/* Like vq_wait, for at most VIRTIO_HOST_WAIT_TICKS of the TSC. */
int vq_wait_host(struct vqueue *q, u32 *id, u32 *len, const char *what);

/* virtio_net.c, virtio_vsock.c: the actions. */
void virtio_net(const char *cmdline);
void virtio_vsock(void);
/* `action=mmds`: an HTTP GET to the MMDS over the first virtio-net device (virtio_mmds.c). */
void virtio_mmds(void);
/* `action=vsock-listen`: accepts the host's connection to port 1024 (virtio_vsock.c). */
void virtio_vsock_listen(void);

/* virtio_vsock.c: the connection that bench.c (`bench-vsock`) drives. */
struct vsock_hdr {
	u64 src_cid, dst_cid;
	u32 src_port, dst_port, len;
	u16 type, op;
	u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));
#define VSOCK_OP_RST 3
#define VSOCK_OP_SHUTDOWN 4
#define VSOCK_OP_RW 5
#define VSOCK_OP_CREDIT_UPDATE 6
struct vsock_conn {
	struct vqueue *rx, *tx;
	u8 *rxbuf; /* nrx buffers of rxbuf_size bytes, buffer i in descriptor i */
	u32 rxbuf_size, nrx;
	struct vsock_hdr hdr; /* an RW header of the connection (len 0) */
	u32 peer_buf_alloc, peer_fwd_cnt; /* the host's credit from its RESPONSE */
};
/* Sets up `d` (queues, RX buffers) and connects to the host as virtio_vsock() does;
 * 0, or -1 (error printed). */
int vsock_open(struct vdev *d, struct vsock_conn *c);
/* SHUTDOWN (both), then waits for the host's RST (`VIRTIO: vsock closed`); 0 or -1. */
int vsock_close(void);

#endif
