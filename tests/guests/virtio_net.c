/*
 * petrel test guest: `action=virtio-net` on the polling virtio-mmio transport (virtio.h).
 *
 * Negotiates VERSION_1 + MAC (no offloads, no mergeable buffers: every packet is a
 * 12-byte virtio_net_hdr_v1 and one frame in one buffer), posts NET_RX_BUFS 2 KiB
 * buffers on RX (queue 0), sends one broadcast frame of ethertype 0x88b5 on TX
 * (queue 1), then polls RX for a frame of that ethertype, skipping (and re-posting the
 * buffers of) any other frame. Output: `VIRTIO: net mac=<mac>`, `VIRTIO: net tx ok`,
 * `VIRTIO: net rx <payload text>`; failures print `VIRTIO: error net …`.
 *
 * With `net-peer` on the command line it talks to another guest instead: it sends its
 * frame again every NET_PEER_GAP ticks while polling RX, until a frame of that ethertype
 * comes from another MAC (`VIRTIO: net peer <mac> <payload text>`), then sends
 * NET_PEER_AFTER more (so that a peer that started later hears it too); after
 * VIRTIO_HOST_WAIT_TICKS without one: `VIRTIO: error net peer timeout`.
 */
#include "virtio.h"

#define NET_F_MAC (1u << 5)
#define NET_HDR_LEN 12
#define NET_RX_BUFS 4
#define NET_BUF 2048
#define ETH_ALEN 6
#define ETH_HLEN 14
#define ETH_ZLEN 60 /* shortest frame without FCS: shorter ones are zero-padded */
#define ETHERTYPE_PETREL 0x88b5 /* IEEE local experimental ethertype 1 */
#define NET_TEXT_MAX 100

static const char tx_payload[] = "PETREL-NET-TX 1";

#define NET_PEER_GAP (1ULL << 27)
#define NET_PEER_AFTER 24

/* Rings and buffers (10.5 KiB of .bss). */
static struct {
	struct vring rx, tx;
	u8 rxbuf[NET_RX_BUFS][NET_BUF];
	u8 txbuf[NET_BUF];
} net __attribute__((aligned(16)));

static struct vqueue rxq, txq;

static char hex_digit(u32 v) { return (char)(v < 10 ? '0' + v : 'a' + v - 10); }

/* `aa:bb:cc:dd:ee:ff` into out[18]. */
static void format_mac(const u8 *mac, char *out)
{
	for (u32 i = 0; i < ETH_ALEN; i++) {
		out[3 * i] = hex_digit(mac[i] >> 4);
		out[3 * i + 1] = hex_digit(mac[i] & 15);
		out[3 * i + 2] = i + 1 < ETH_ALEN ? ':' : 0;
	}
}

/* The MAC from the configuration space, read byte by byte under the generation counter. */
static void read_mac(struct vdev *d, u8 *mac)
{
	for (u32 tries = 0; tries < 8; tries++) {
		u32 gen = vr(d, VM_CONFIG_GEN);
		for (u32 i = 0; i < ETH_ALEN; i++)
			mac[i] = vcfg8(d, i);
		if (vr(d, VM_CONFIG_GEN) == gen)
			return;
	}
}

/* Builds the broadcast frame in txbuf and sends it; 0 once the device has used it. */
static int net_send(const u8 *mac)
{
	u8 *p = net.txbuf;
	u32 frame = ETH_HLEN + sizeof(tx_payload) - 1;
	if (frame < ETH_ZLEN)
		frame = ETH_ZLEN;
	memset(p, 0, NET_HDR_LEN + frame);
	u8 *eth = p + NET_HDR_LEN;
	memset(eth, 0xff, ETH_ALEN);
	memcpy(eth + ETH_ALEN, mac, ETH_ALEN);
	eth[12] = ETHERTYPE_PETREL >> 8;
	eth[13] = ETHERTYPE_PETREL & 0xff;
	memcpy(eth + ETH_HLEN, tx_payload, sizeof(tx_payload) - 1);
	vq_desc(&txq, 0, p, NET_HDR_LEN + frame, 0, -1);
	vq_post(&txq, 0);
	u32 id, len;
	if (vq_wait(&txq, &id, &len, VIRTIO_SPIN_LIMIT, "net tx"))
		return -1;
	if (id != 0) {
		printk("VIRTIO: error net tx used id %u\n", id);
		return -1;
	}
	return 0;
}

/* Polls RX (VIRTIO_HOST_WAIT_TICKS at most) for a frame of ETHERTYPE_PETREL and prints
 * its payload as text. */
static void net_receive(u32 nbufs)
{
	u32 skipped = 0;
	u64 start = tsc_read();
	for (u32 spin = 1;; spin++) {
		u32 id, len;
		if (!vq_used(&rxq, &id, &len)) {
			if (spin % 256 == 0 && tsc_read() - start > VIRTIO_HOST_WAIT_TICKS)
				break;
			cpu_relax();
			continue;
		}
		if (id >= nbufs || len > NET_BUF) {
			printk("VIRTIO: error net rx used id %u len %u\n", id, len);
			return;
		}
		const u8 *eth = net.rxbuf[id] + NET_HDR_LEN;
		if (len >= NET_HDR_LEN + ETH_HLEN &&
		    (((u32)eth[12] << 8) | eth[13]) == ETHERTYPE_PETREL) {
			char text[NET_TEXT_MAX + 1];
			u32 n = 0, avail = len - NET_HDR_LEN - ETH_HLEN;
			for (; n < avail && n < NET_TEXT_MAX; n++) {
				u8 c = eth[ETH_HLEN + n];
				if (c < 0x20 || c >= 0x7f)
					break;
				text[n] = (char)c;
			}
			text[n] = 0;
			printk("VIRTIO: net rx %s\n", text);
			return;
		}
		/* Some other frame (len 0: a buffer the device gave back unused): re-post it. */
		skipped++;
		vq_post(&rxq, (u16)id);
	}
	printk("VIRTIO: error net rx timeout (%u other frames)\n", skipped);
}

static int bytes_equal(const void *a, const void *b, u32 n)
{
	const u8 *x = a, *y = b;
	for (u32 i = 0; i < n; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

/* Whether `word` is one of the space-separated words of `s`. */
static int has_word(const char *s, const char *word)
{
	u32 wl = 0;
	while (word[wl])
		wl++;
	while (s && *s) {
		while (*s == ' ')
			s++;
		u32 len = 0;
		while (s[len] && s[len] != ' ')
			len++;
		if (len == wl && bytes_equal(s, word, wl))
			return 1;
		s += len;
	}
	return 0;
}

/* net-peer: see the top of the file. */
static void net_peer(const u8 *mac, u32 nbufs)
{
	u64 start = tsc_read(), last_send = 0;
	int heard = 0;
	u32 after = 0;
	for (u32 spin = 1;; spin++) {
		u64 now = tsc_read();
		if (now - last_send > NET_PEER_GAP) {
			if (net_send(mac))
				return;
			last_send = now;
			if (heard && ++after >= NET_PEER_AFTER)
				return;
		}
		if (!heard && now - start > VIRTIO_HOST_WAIT_TICKS) {
			printk("VIRTIO: error net peer timeout\n");
			return;
		}
		u32 id, len;
		if (!vq_used(&rxq, &id, &len)) {
			cpu_relax();
			continue;
		}
		if (id >= nbufs || len > NET_BUF) {
			printk("VIRTIO: error net rx used id %u len %u\n", id, len);
			return;
		}
		const u8 *eth = net.rxbuf[id] + NET_HDR_LEN;
		if (!heard && len >= NET_HDR_LEN + ETH_HLEN &&
		    (((u32)eth[12] << 8) | eth[13]) == ETHERTYPE_PETREL &&
		    !bytes_equal(eth + ETH_ALEN, mac, ETH_ALEN)) {
			char from[18], text[NET_TEXT_MAX + 1];
			u32 n = 0, avail = len - NET_HDR_LEN - ETH_HLEN;
			for (; n < avail && n < NET_TEXT_MAX; n++) {
				u8 c = eth[ETH_HLEN + n];
				if (c < 0x20 || c >= 0x7f)
					break;
				text[n] = (char)c;
			}
			text[n] = 0;
			format_mac(eth + ETH_ALEN, from);
			printk("VIRTIO: net peer %s %s\n", from, text);
			heard = 1;
		}
		vq_post(&rxq, (u16)id);
	}
}

void virtio_net(const char *cmdline)
{
	struct vdev *d = virtio_find(VIRTIO_DEV_NET);
	if (!d) {
		printk("VIRTIO: error no virtio-net device\n");
		return;
	}
	if (dev_negotiate(d, NET_F_MAC, "net"))
		return;
	if (!(d->features_lo & NET_F_MAC)) {
		printk("VIRTIO: error net device offers no MAC\n");
		dev_reset(d);
		return;
	}
	if (vq_setup(d, &rxq, 0, &net.rx, "net") || vq_setup(d, &txq, 1, &net.tx, "net") ||
	    dev_driver_ok(d, "net")) {
		dev_reset(d);
		return;
	}
	u8 mac[ETH_ALEN];
	char text[18];
	read_mac(d, mac);
	format_mac(mac, text);
	printk("VIRTIO: net mac=%s\n", text);

	u32 nbufs = rxq.num < NET_RX_BUFS ? rxq.num : NET_RX_BUFS;
	for (u32 i = 0; i < nbufs; i++) {
		vq_desc(&rxq, (u16)i, net.rxbuf[i], NET_BUF, 1, -1);
		vq_post(&rxq, (u16)i);
	}
	if (has_word(cmdline, "net-peer")) {
		net_peer(mac, nbufs);
	} else if (net_send(mac) == 0) {
		printk("VIRTIO: net tx ok\n");
		net_receive(nbufs);
	}
	dev_reset(d);
}
