/*
 * petrel test guest: `action=virtio-vsock` on the polling virtio-mmio transport (virtio.h).
 *
 * Negotiates VERSION_1 (+ STREAM when offered), sets up RX (0), TX (1) and EVENT (2),
 * reads guest_cid from the configuration space, then opens one stream connection from
 * port GUEST_PORT to the host (CID 2) port HOST_PORT: REQUEST, wait for RESPONSE, one
 * RW with "hello from petrel guest\n", RW data until a newline, SHUTDOWN (both), wait
 * for the host's RST. Output: `VIRTIO: vsock cid=<n>`, `VIRTIO: vsock connected`,
 * `VIRTIO: vsock reply <line>`, `VIRTIO: vsock closed`; failures print
 * `VIRTIO: error vsock …`. Packets are a 44-byte header and the payload in one buffer.
 *
 * `action=vsock-listen` turns it around, as a Kata agent does: after the same set-up it
 * prints `VIRTIO: vsock listening port=1024`, waits for the host's REQUEST to port 1024
 * (what a hybrid-vsock `CONNECT 1024` makes), answers RESPONSE (`VIRTIO: vsock accepted
 * port=<host port>`), then the same exchange: hello, a reply line, SHUTDOWN, RST.
 */
#include "virtio.h"

#define VSOCK_F_STREAM 1u
#define VSOCK_HDR 44
#define HOST_CID 2
#define HOST_PORT 5001
#define GUEST_PORT 50123
#define LISTEN_PORT 1024
#define TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUTDOWN_BOTH 3
#define RX_BUFS 4
#define RX_BUF 512
#define EV_BUFS 2
#define EV_BUF 8 /* struct virtio_vsock_event is 4 bytes */
#define TX_DATA 128
/* Our receive buffer (what the host may send before we report fwd_cnt). */
#define REPLY_MAX 256

_Static_assert(sizeof(struct vsock_hdr) == VSOCK_HDR, "virtio_vsock_hdr is 44 bytes");

static const char hello[] = "hello from petrel guest\n";

/* Rings and buffers (~4.5 KiB of .bss). */
static struct {
	struct vring rx, tx, ev;
	u8 rxbuf[RX_BUFS][RX_BUF];
	u8 evbuf[EV_BUFS][EV_BUF];
	struct {
		struct vsock_hdr h;
		u8 data[TX_DATA];
	} __attribute__((packed)) pkt;
} vs __attribute__((aligned(16)));

static struct vqueue rxq, txq, evq;
static u64 guest_cid;
static u32 nrx;
/* Payload bytes received and consumed on the connection (we consume at once). */
static u32 fwd_cnt;
/* The host's credit from its RESPONSE. */
static u32 peer_buf_alloc, peer_fwd_cnt;
/* The connection's ports; while `listening`, a REQUEST to conn_guest_port from any host
 * port is ours and sets conn_host_port. */
static u32 conn_host_port = HOST_PORT, conn_guest_port = GUEST_PORT;
static int listening;

/* Sends one packet of the connection; `len` payload bytes from `data`. 0 once used. */
static int vsock_send(u16 op, u32 flags, const void *data, u32 len)
{
	struct vsock_hdr *h = &vs.pkt.h;
	memset(h, 0, sizeof(*h));
	h->src_cid = guest_cid;
	h->dst_cid = HOST_CID;
	h->src_port = conn_guest_port;
	h->dst_port = conn_host_port;
	h->len = len;
	h->type = TYPE_STREAM;
	h->op = op;
	h->flags = flags;
	h->buf_alloc = REPLY_MAX;
	h->fwd_cnt = fwd_cnt;
	if (len)
		memcpy(vs.pkt.data, data, len);
	vq_desc(&txq, 0, &vs.pkt, VSOCK_HDR + len, 0, -1);
	vq_post(&txq, 0);
	u32 id, used;
	if (vq_wait(&txq, &id, &used, VIRTIO_SPIN_LIMIT, "vsock tx"))
		return -1;
	if (id != 0) {
		printk("VIRTIO: error vsock tx used id %u\n", id);
		return -1;
	}
	return 0;
}

/* Waits (VIRTIO_HOST_WAIT_TICKS at most per packet) for the next RX packet of our
 * connection: its header in *h and its payload (at most `max` bytes) in `data`; the
 * buffer is re-posted. Packets of other connections are dropped. 0, or -1 (error
 * printed). */
static int vsock_recv(struct vsock_hdr *h, u8 *data, u32 max, const char *what)
{
	for (;;) {
		u32 id, len;
		if (vq_wait_host(&rxq, &id, &len, what))
			return -1;
		if (id >= nrx || len > RX_BUF) {
			printk("VIRTIO: error vsock rx used id %u len %u\n", id, len);
			return -1;
		}
		int ours = 0;
		if (len >= VSOCK_HDR) {
			memcpy(h, vs.rxbuf[id], VSOCK_HDR);
			ours = h->src_cid == HOST_CID && h->dst_cid == guest_cid &&
			       h->dst_port == conn_guest_port &&
			       (h->src_port == conn_host_port ||
				(listening && h->op == OP_REQUEST));
			u32 n = h->len;
			if (n > len - VSOCK_HDR)
				n = len - VSOCK_HDR;
			if (n > max)
				n = max;
			h->len = n;
			if (ours && n)
				memcpy(data, vs.rxbuf[id] + VSOCK_HDR, n);
		}
		vq_post(&rxq, (u16)id);
		if (ours)
			return 0;
		printk("VIRTIO: vsock ignored a packet (len %u)\n", len);
	}
}

/* Waits for RESPONSE after our REQUEST; 0 when connected. */
static int vsock_connect(void)
{
	struct vsock_hdr h;
	u8 scratch[RX_BUF];
	if (vsock_send(OP_REQUEST, 0, 0, 0))
		return -1;
	for (;;) {
		if (vsock_recv(&h, scratch, sizeof(scratch), "vsock response"))
			return -1;
		if (h.op == OP_RESPONSE) {
			peer_buf_alloc = h.buf_alloc;
			peer_fwd_cnt = h.fwd_cnt;
			printk("VIRTIO: vsock connected buf_alloc=%u\n", h.buf_alloc);
			return 0;
		}
		if (h.op == OP_RST) {
			printk("VIRTIO: error vsock connect to port %u refused (RST)\n", HOST_PORT);
			return -1;
		}
		if (h.op != OP_CREDIT_UPDATE) {
			printk("VIRTIO: error vsock unexpected op %u while connecting\n", (u32)h.op);
			return -1;
		}
	}
}

/* Receives RW data until a newline into reply (NUL-terminated, newline dropped). */
static int vsock_read_line(char *reply)
{
	struct vsock_hdr h;
	u8 buf[RX_BUF];
	u32 got = 0;
	for (;;) {
		if (vsock_recv(&h, buf, sizeof(buf), "vsock reply"))
			return -1;
		if (h.op == OP_RW) {
			fwd_cnt += h.len;
			for (u32 i = 0; i < h.len; i++) {
				if (buf[i] == '\n') {
					reply[got] = 0;
					return 0;
				}
				if (got < REPLY_MAX - 1)
					reply[got++] = (char)(buf[i] >= 0x20 && buf[i] < 0x7f ? buf[i] : '?');
			}
		} else if (h.op == OP_CREDIT_REQUEST) {
			if (vsock_send(OP_CREDIT_UPDATE, 0, 0, 0))
				return -1;
		} else if (h.op == OP_SHUTDOWN || h.op == OP_RST) {
			reply[got] = 0;
			printk("VIRTIO: error vsock closed by the host (op %u) after %u bytes: %s\n",
			       (u32)h.op, got, reply);
			return -1;
		} else if (h.op != OP_CREDIT_UPDATE) {
			printk("VIRTIO: error vsock unexpected op %u\n", (u32)h.op);
			return -1;
		}
	}
}

int vsock_close(void)
{
	struct vsock_hdr h;
	u8 buf[RX_BUF];
	if (vsock_send(OP_SHUTDOWN, SHUTDOWN_BOTH, 0, 0))
		return -1;
	/* The host answers a full shutdown with RST; it may still send SHUTDOWN before it. */
	for (u32 n = 0; n < 8; n++) {
		if (vsock_recv(&h, buf, sizeof(buf), "vsock rst"))
			return -1;
		if (h.op == OP_RST) {
			printk("VIRTIO: vsock closed\n");
			return 0;
		}
	}
	printk("VIRTIO: error vsock no RST after SHUTDOWN\n");
	return -1;
}

/* The connection's exchange after vsock_open(); returns with the connection closed or
 * abandoned. */
static void vsock_talk(void)
{
	char reply[REPLY_MAX];
	if (vsock_send(OP_RW, 0, hello, sizeof(hello) - 1))
		return;
	if (vsock_read_line(reply))
		return;
	printk("VIRTIO: vsock reply %s\n", reply);
	vsock_close();
}

/* Negotiates, sets up the queues and RX buffers, reads the CID; 0, or -1 (printed). */
static int vsock_setup(struct vdev *d)
{
	if (dev_negotiate(d, VSOCK_F_STREAM, "vsock"))
		return -1;
	if (vq_setup(d, &rxq, 0, &vs.rx, "vsock") || vq_setup(d, &txq, 1, &vs.tx, "vsock") ||
	    vq_setup(d, &evq, 2, &vs.ev, "vsock") || dev_driver_ok(d, "vsock"))
		return -1;
	u32 lo = 0, hi = 0;
	for (u32 tries = 0; tries < 8; tries++) {
		u32 gen = vr(d, VM_CONFIG_GEN);
		lo = vr(d, VM_CONFIG);
		hi = vr(d, VM_CONFIG + 4);
		if (vr(d, VM_CONFIG_GEN) == gen)
			break;
	}
	guest_cid = lo | ((u64)hi << 32);
	printk("VIRTIO: vsock cid=%lu\n", guest_cid);

	nrx = rxq.num < RX_BUFS ? rxq.num : RX_BUFS;
	for (u32 i = 0; i < nrx; i++) {
		vq_desc(&rxq, (u16)i, vs.rxbuf[i], RX_BUF, 1, -1);
		vq_post(&rxq, (u16)i);
	}
	u32 nev = evq.num < EV_BUFS ? evq.num : EV_BUFS;
	for (u32 i = 0; i < nev; i++) {
		vq_desc(&evq, (u16)i, vs.evbuf[i], EV_BUF, 1, -1);
		vq_post(&evq, (u16)i);
	}
	fwd_cnt = 0;
	return 0;
}

int vsock_open(struct vdev *d, struct vsock_conn *c)
{
	conn_host_port = HOST_PORT;
	conn_guest_port = GUEST_PORT;
	if (vsock_setup(d) || vsock_connect())
		return -1;
	c->rx = &rxq;
	c->tx = &txq;
	c->rxbuf = &vs.rxbuf[0][0];
	c->rxbuf_size = RX_BUF;
	c->nrx = nrx;
	memset(&c->hdr, 0, sizeof(c->hdr));
	c->hdr.src_cid = guest_cid;
	c->hdr.dst_cid = HOST_CID;
	c->hdr.src_port = conn_guest_port;
	c->hdr.dst_port = conn_host_port;
	c->hdr.type = TYPE_STREAM;
	c->hdr.op = OP_RW;
	c->hdr.buf_alloc = REPLY_MAX;
	c->peer_buf_alloc = peer_buf_alloc;
	c->peer_fwd_cnt = peer_fwd_cnt;
	return 0;
}

void virtio_vsock(void)
{
	struct vdev *d = virtio_find(VIRTIO_DEV_VSOCK);
	if (!d) {
		printk("VIRTIO: error no virtio-vsock device\n");
		return;
	}
	struct vsock_conn c;
	if (!vsock_open(d, &c))
		vsock_talk();
	dev_reset(d);
}

void virtio_vsock_listen(void)
{
	struct vdev *d = virtio_find(VIRTIO_DEV_VSOCK);
	if (!d) {
		printk("VIRTIO: error no virtio-vsock device\n");
		return;
	}
	conn_guest_port = LISTEN_PORT;
	conn_host_port = 0;
	if (vsock_setup(d)) {
		dev_reset(d);
		return;
	}
	printk("VIRTIO: vsock listening port=%u\n", LISTEN_PORT);
	listening = 1;
	struct vsock_hdr h;
	u8 scratch[RX_BUF];
	for (;;) {
		if (vsock_recv(&h, scratch, sizeof(scratch), "vsock request")) {
			listening = 0;
			dev_reset(d);
			return;
		}
		if (h.op == OP_REQUEST)
			break;
	}
	listening = 0;
	conn_host_port = h.src_port;
	peer_buf_alloc = h.buf_alloc;
	peer_fwd_cnt = h.fwd_cnt;
	if (!vsock_send(OP_RESPONSE, 0, 0, 0)) {
		printk("VIRTIO: vsock accepted port=%u\n", conn_host_port);
		vsock_talk();
	}
	dev_reset(d);
}
