/*
 * petrel test guest: `action=mmds` — reads the metadata service over the first virtio-net
 * device, as a guest's HTTP client would: ARP for 169.254.169.254, a TCP handshake to port 80,
 * `GET /latest/meta-data/ami-id` (V1, no token), the answer read to its Content-Length.
 *
 * The guest is 10.0.2.15, source port 40000; no offloads (full IPv4 and TCP checksums), one
 * connection, no retransmission (the host answers at once or the test fails). Output:
 * `MMDS: arp <mac>`, `MMDS: connected`, `MMDS: status <code>`, `MMDS: body <text>`; failures
 * print `VIRTIO: error mmds …`.
 */
#include "virtio.h"

#define NET_F_MAC (1u << 5)
#define HDR 12
#define NBUF 8
#define BUF 2048
#define ETH 14
#define IP 20
#define TCP 20
#define ET_ARP 0x0806
#define ET_IP 0x0800
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define GUEST_PORT 40000
#define ISN 0x1000u

static const u8 guest_ip[4] = {10, 0, 2, 15};
static const u8 mmds_ip[4] = {169, 254, 169, 254};
static const char request[] = "GET /latest/meta-data/ami-id HTTP/1.1\r\n"
			      "Host: 169.254.169.254\r\n\r\n";

static struct {
	struct vring rx, tx;
	u8 rxbuf[NBUF][BUF];
	u8 txbuf[BUF];
	char answer[BUF];
} m __attribute__((aligned(16)));

static struct vqueue rxq, txq;
static u8 mac[6], peer[6];
static u32 answer_len;

static void put16(u8 *p, u32 v)
{
	p[0] = (u8)(v >> 8);
	p[1] = (u8)v;
}

static void put32(u8 *p, u32 v)
{
	put16(p, v >> 16);
	put16(p + 2, v & 0xffff);
}

/* Whether the `n` bytes at a and b differ (there is no memcmp here). */
static int differ(const void *a, const void *b, u32 n)
{
	const u8 *x = a, *y = b;
	for (u32 i = 0; i < n; i++)
		if (x[i] != y[i])
			return 1;
	return 0;
}

static u32 get16(const u8 *p) { return ((u32)p[0] << 8) | p[1]; }
static u32 get32(const u8 *p) { return (get16(p) << 16) | get16(p + 2); }

/* The Internet checksum of `len` bytes, starting from `sum`. */
static u32 csum_add(u32 sum, const u8 *p, u32 len)
{
	for (u32 i = 0; i + 1 < len; i += 2)
		sum += get16(p + i);
	if (len & 1)
		sum += (u32)p[len - 1] << 8;
	return sum;
}

static u32 csum_fold(u32 sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

static int send_frame(u32 len)
{
	if (len < 60)
		len = 60;
	vq_desc(&txq, 0, m.txbuf, HDR + len, 0, -1);
	vq_post(&txq, 0);
	u32 id, used;
	return vq_wait(&txq, &id, &used, VIRTIO_SPIN_LIMIT, "mmds tx");
}

/* The Ethernet header of txbuf, to `dst`, of `type`; returns where the payload starts. */
static u8 *eth_header(const u8 *dst, u32 type)
{
	memset(m.txbuf, 0, sizeof(m.txbuf));
	u8 *e = m.txbuf + HDR;
	memcpy(e, dst, 6);
	memcpy(e + 6, mac, 6);
	put16(e + 12, type);
	return e + ETH;
}

static int send_arp(void)
{
	static const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	u8 *a = eth_header(bcast, ET_ARP);
	put16(a, 1);	  /* Ethernet */
	put16(a + 2, ET_IP);
	a[4] = 6;
	a[5] = 4;
	put16(a + 6, 1); /* request */
	memcpy(a + 8, mac, 6);
	memcpy(a + 14, guest_ip, 4);
	memcpy(a + 24, mmds_ip, 4);
	return send_frame(ETH + 28);
}

static int send_tcp(u32 flags, u32 seq, u32 ack, const char *data, u32 len)
{
	u8 *ip = eth_header(peer, ET_IP);
	u8 *t = ip + IP;
	ip[0] = 0x45;
	put16(ip + 2, IP + TCP + len);
	put16(ip + 4, 1);
	ip[8] = 64;
	ip[9] = 6;
	memcpy(ip + 12, guest_ip, 4);
	memcpy(ip + 16, mmds_ip, 4);
	put16(ip + 10, csum_fold(csum_add(0, ip, IP)));
	put16(t, GUEST_PORT);
	put16(t + 2, 80);
	put32(t + 4, seq);
	put32(t + 8, ack);
	t[12] = (TCP / 4) << 4;
	t[13] = (u8)flags;
	put16(t + 14, 4096);
	memcpy(t + TCP, data, len);
	/* Pseudo header: source, destination, protocol, TCP length. */
	u32 sum = csum_add(0, ip + 12, 8) + 6 + TCP + len;
	put16(t + 16, csum_fold(csum_add(sum, t, TCP + len)));
	return send_frame(ETH + IP + TCP + len);
}

/* Waits for the next frame that `want` accepts (others are re-posted); returns its Ethernet
 * frame and length, or 0 at the time limit. */
static const u8 *receive(int (*want)(const u8 *, u32), u32 *frame_len, u32 *slot)
{
	u64 start = tsc_read();
	for (u32 spin = 1;; spin++) {
		u32 id, len;
		if (!vq_used(&rxq, &id, &len)) {
			if (spin % 256 == 0 && tsc_read() - start > VIRTIO_HOST_WAIT_TICKS)
				return 0;
			cpu_relax();
			continue;
		}
		if (id >= NBUF || len > BUF || len < HDR + ETH) {
			if (id < NBUF)
				vq_post(&rxq, (u16)id);
			continue;
		}
		const u8 *e = m.rxbuf[id] + HDR;
		if (want(e, len - HDR)) {
			*frame_len = len - HDR;
			*slot = id;
			return e;
		}
		vq_post(&rxq, (u16)id);
	}
}

static int is_arp_reply(const u8 *e, u32 len)
{
	return len >= ETH + 28 && get16(e + 12) == ET_ARP && get16(e + ETH + 6) == 2 &&
	       !differ(e + ETH + 14, mmds_ip, 4);
}

static int is_tcp_from_mmds(const u8 *e, u32 len)
{
	if (len < ETH + IP + TCP || get16(e + 12) != ET_IP || e[ETH + 9] != 6)
		return 0;
	const u8 *t = e + ETH + (e[ETH] & 15) * 4;
	return !differ(e + ETH + 12, mmds_ip, 4) && get16(t) == 80 &&
	       get16(t + 2) == GUEST_PORT;
}

static void format_mac(const u8 *a, char *out)
{
	static const char hex[] = "0123456789abcdef";
	for (u32 i = 0; i < 6; i++) {
		out[3 * i] = hex[a[i] >> 4];
		out[3 * i + 1] = hex[a[i] & 15];
		out[3 * i + 2] = i < 5 ? ':' : 0;
	}
}

/* Whether `answer` holds a whole response (head and Content-Length body). */
static int whole(u32 *body_at, u32 *body_len)
{
	for (u32 i = 0; i + 3 < answer_len; i++) {
		if (differ(m.answer + i, "\r\n\r\n", 4))
			continue;
		u32 n = 0;
		for (u32 j = 0; j + 16 < i; j++) {
			if (differ(m.answer + j, "Content-Length: ", 16))
				continue;
			for (u32 k = j + 16; k < i && m.answer[k] >= '0' && m.answer[k] <= '9'; k++)
				n = n * 10 + (u32)(m.answer[k] - '0');
		}
		*body_at = i + 4;
		*body_len = n;
		return answer_len >= i + 4 + n;
	}
	return 0;
}

static void mmds_client(void)
{
	char text[18];
	u32 len, slot;
	if (send_arp())
		return;
	const u8 *e = receive(is_arp_reply, &len, &slot);
	if (!e) {
		printk("VIRTIO: error mmds no ARP reply\n");
		return;
	}
	memcpy(peer, e + ETH + 8, 6);
	vq_post(&rxq, (u16)slot);
	format_mac(peer, text);
	printk("MMDS: arp %s\n", text);

	if (send_tcp(TCP_SYN, ISN, 0, 0, 0))
		return;
	e = receive(is_tcp_from_mmds, &len, &slot);
	const u8 *t = e ? e + ETH + (e[ETH] & 15) * 4 : 0;
	if (!e || (t[13] & (TCP_SYN | TCP_ACK)) != (TCP_SYN | TCP_ACK) ||
	    get32(t + 8) != ISN + 1) {
		printk("VIRTIO: error mmds no SYN-ACK\n");
		return;
	}
	u32 next = get32(t + 4) + 1;
	vq_post(&rxq, (u16)slot);
	printk("MMDS: connected\n");

	u32 n = sizeof(request) - 1;
	if (send_tcp(TCP_ACK | TCP_PSH, ISN + 1, next, request, n))
		return;
	u32 body_at = 0, body_len = 0;
	while (!whole(&body_at, &body_len)) {
		e = receive(is_tcp_from_mmds, &len, &slot);
		if (!e) {
			printk("VIRTIO: error mmds answer cut short (%u bytes)\n", answer_len);
			return;
		}
		t = e + ETH + (e[ETH] & 15) * 4;
		u32 total = get16(e + ETH + 2);
		u32 off = (u32)(t - e) - ETH + (t[12] >> 4) * 4;
		u32 data = total > off ? total - off : 0;
		if (get32(t + 4) == next && data && answer_len + data < sizeof(m.answer)) {
			memcpy(m.answer + answer_len, e + ETH + off, data);
			answer_len += data;
			next += data;
			send_tcp(TCP_ACK, ISN + 1 + n, next, 0, 0);
		}
		vq_post(&rxq, (u16)slot);
	}
	/* "HTTP/1.1 200 OK": the code is at 9. */
	m.answer[12] = 0;
	printk("MMDS: status %s\n", m.answer + 9);
	m.answer[body_at + body_len] = 0;
	printk("MMDS: body %s\n", m.answer + body_at);
	send_tcp(TCP_FIN | TCP_ACK, ISN + 1 + n, next, 0, 0);
}

void virtio_mmds(void)
{
	struct vdev *d = virtio_find(VIRTIO_DEV_NET);
	if (!d) {
		printk("VIRTIO: error no virtio-net device\n");
		return;
	}
	if (dev_negotiate(d, NET_F_MAC, "mmds"))
		return;
	if (vq_setup(d, &rxq, 0, &m.rx, "mmds") || vq_setup(d, &txq, 1, &m.tx, "mmds") ||
	    dev_driver_ok(d, "mmds")) {
		dev_reset(d);
		return;
	}
	for (u32 i = 0; i < 6; i++)
		mac[i] = vcfg8(d, i);
	u32 nbufs = rxq.num < NBUF ? rxq.num : NBUF;
	for (u32 i = 0; i < nbufs; i++) {
		vq_desc(&rxq, (u16)i, m.rxbuf[i], BUF, 1, -1);
		vq_post(&rxq, (u16)i);
	}
	mmds_client();
	dev_reset(d);
}
