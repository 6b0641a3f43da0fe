/*
 * petrel test guest: PCI segment 0 and the virtio-pci (modern) transport.
 *
 * pci_probe() enumerates bus 0 through the legacy ports (0xCF8/0xCFC) and through ECAM
 * (bus 0 at PCI_ECAM, petrel's MCFG address) and checks both show the same functions
 * (`PCI: 00:<dev>.0 <vendor>:<device> class=<class>`, `PCI: cf8 and ecam agree n=<n>`).
 * For each virtio function it sizes BAR 0 by writing all ones to both halves
 * (`PCI: 00:<dev>.0 bar0 size=0x<n> 64-bit=<0|1>`), moves it to a new place in the 32-bit
 * window (the VMM first placed it above 4 GiB, beyond the guest's identity map), enables
 * memory decoding and bus mastering, walks the capability list for the virtio structures
 * and MSI-X, and fills a `struct vdev` whose registers virtio.h's vr()/vw() translate, so
 * the same blk/rng/net/vsock drivers run on either transport.
 *
 * MSI-X: every vector is pointed at the boot CPU's local APIC, vector PCI_MSI_VECTOR + i,
 * unmasked, and MSI-X is enabled; queue q uses vector q + 1, configuration changes vector 0.
 * Interrupts stay disabled: pci_msix_report() looks for queue 0's vector in the local
 * APIC's IRR after a driver ran (`PCI: msix 00:<dev>.0 vector=0x<v> delivered|missing`).
 */
#include "virtio.h"

#define PCI_ECAM 0xe0000000ULL
#define PCI_BAR_BASE 0xc0000000ULL /* petrel's 32-bit window starts here */
#define PCI_BAR_STRIDE 0x100000ULL
#define PCI_MSI_VECTOR 0x50
#define LAPIC 0xfee00000ULL
#define LAPIC_SVR 0xf0
#define LAPIC_IRR 0x200

#define VENDOR_VIRTIO 0x1af4
#define CAP_VENDOR 0x09
#define CAP_MSIX 0x11
#define CFG_COMMON 1
#define CFG_NOTIFY 2
#define CFG_ISR 3
#define CFG_DEVICE 4

/* Common configuration offsets (virtio 1.x 4.1.4.3). */
#define C_DFSELECT 0x00
#define C_DF 0x04
#define C_GFSELECT 0x08
#define C_GF 0x0c
#define C_MSIX_CONFIG 0x10
#define C_STATUS 0x14
#define C_CFGGEN 0x15
#define C_Q_SELECT 0x16
#define C_Q_SIZE 0x18
#define C_Q_MSIX 0x1a
#define C_Q_ENABLE 0x1c
#define C_Q_NOFF 0x1e

/* `v` as exactly `digits` hex digits (printk has no field widths); `buf` holds 17 bytes. */
static const char *hx(char *buf, u64 v, int digits)
{
	for (int i = digits - 1; i >= 0; i--, v >>= 4)
		buf[i] = "0123456789abcdef"[v & 0xf];
	buf[digits] = 0;
	return buf;
}

static u32 cf8_read(u32 dev, u32 reg)
{
	u32 v;
	u32 a = 0x80000000u | dev << 11 | (reg & 0xfc);
	__asm__ volatile("outl %0, %1" ::"a"(a), "Nd"((u16)0xcf8));
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"((u16)0xcfc));
	return v;
}

static u64 ecam(u32 dev, u32 reg) { return PCI_ECAM + ((u64)dev << 15) + reg; }
static u32 cfg32(u32 dev, u32 reg) { return rd32(ecam(dev, reg)); }
static u8 cfg8(u32 dev, u32 reg) { return rd8(ecam(dev, reg)); }
static void cfg_w32(u32 dev, u32 reg, u32 v) { *(volatile u32 *)ecam(dev, reg) = v; }
static void cfg_w16(u32 dev, u32 reg, u16 v) { *(volatile u16 *)ecam(dev, reg) = v; }

static void w8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static void w16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static void w32(u64 a, u32 v) { *(volatile u32 *)a = v; }

u32 pci_vr(const struct vdev *d, u32 reg)
{
	u64 c = d->common;
	switch (reg) {
	case VM_MAGIC:
		return 0x74726976;
	case VM_VERSION:
		return 2;
	case VM_DEVICE_ID:
		return d->id;
	case VM_DEV_FEATURES:
		return rd32(c + C_DF);
	case VM_QUEUE_NUM_MAX:
	case VM_QUEUE_NUM:
		return rd16(c + C_Q_SIZE);
	case VM_QUEUE_READY:
		return rd16(c + C_Q_ENABLE);
	case VM_INT_STATUS:
		return rd8(d->isr); /* reading clears it */
	case VM_STATUS:
		return rd8(c + C_STATUS);
	case VM_CONFIG_GEN:
		return rd8(c + C_CFGGEN);
	default:
		if (reg >= VM_CONFIG)
			return rd32(d->devcfg + (reg - VM_CONFIG));
		return 0;
	}
}

void pci_vw(struct vdev *d, u32 reg, u32 v)
{
	u64 c = d->common;
	switch (reg) {
	case VM_DEV_FEATURES_SEL:
		w32(c + C_DFSELECT, v);
		break;
	case VM_DRV_FEATURES_SEL:
		w32(c + C_GFSELECT, v);
		break;
	case VM_DRV_FEATURES:
		w32(c + C_GF, v);
		break;
	case VM_QUEUE_SEL:
		d->qsel = v;
		w16(c + C_Q_SELECT, (u16)v);
		break;
	case VM_QUEUE_NUM:
		w16(c + C_Q_SIZE, (u16)v);
		break;
	case VM_QUEUE_READY:
		if (v == 1) {
			w16(c + C_Q_MSIX, (u16)(d->qsel + 1));
			if (d->qsel < VIRTIO_PCI_MAX_QUEUES)
				d->qoff[d->qsel] = rd16(c + C_Q_NOFF);
		}
		w16(c + C_Q_ENABLE, (u16)v);
		break;
	case VM_QUEUE_NOTIFY:
		/* 2 bytes, as Linux's iowrite16: the VMM's ioeventfd matches exactly that. */
		if (v < VIRTIO_PCI_MAX_QUEUES)
			w16(d->notify + (u64)d->qoff[v] * d->notify_mult, (u16)v);
		break;
	case VM_STATUS:
		w8(c + C_STATUS, (u8)v);
		if (v & 4)
			d->driven = 1;
		if (v == 0)
			w16(c + C_MSIX_CONFIG, 0);
		break;
	case VM_QUEUE_DESC:
	case VM_QUEUE_DESC + 4:
		w32(c + 0x20 + (reg - VM_QUEUE_DESC), v);
		break;
	case VM_QUEUE_DRIVER:
	case VM_QUEUE_DRIVER + 4:
		w32(c + 0x28 + (reg - VM_QUEUE_DRIVER), v);
		break;
	case VM_QUEUE_DEVICE:
	case VM_QUEUE_DEVICE + 4:
		w32(c + 0x30 + (reg - VM_QUEUE_DEVICE), v);
		break;
	default:
		if (reg >= VM_CONFIG)
			w32(d->devcfg + (reg - VM_CONFIG), v);
		break; /* InterruptACK: the ISR read already cleared it */
	}
}

/* Sizes and moves BAR 0, finds the structures, sets up MSI-X; 0 or -1 (error printed). */
static int setup_function(u32 dev, struct vdev *d, u32 index)
{
	/* Decoding off while the BAR is sized and moved (as Linux does). */
	cfg_w16(dev, 0x04, 0);
	u32 lo = cfg32(dev, 0x10), hi = cfg32(dev, 0x14);
	int is64 = (lo & 6) == 4;
	cfg_w32(dev, 0x10, 0xffffffffu);
	if (is64)
		cfg_w32(dev, 0x14, 0xffffffffu);
	u64 mask = (cfg32(dev, 0x10) & ~0xfULL) | (is64 ? (u64)cfg32(dev, 0x14) << 32 : 0xffffffff00000000ULL);
	u64 size = ~mask + 1;
	char sb[17];
	printk("PCI: 00:%s.0 bar0 size=0x%lx 64-bit=%d first=0x%lx\n", hx(sb, dev, 2), size, is64,
	       (lo & ~0xfULL) | (is64 ? (u64)hi << 32 : 0));
	u64 bar = PCI_BAR_BASE + (u64)(index + 1) * PCI_BAR_STRIDE;
	if (size == 0 || size > PCI_BAR_STRIDE) {
		printk("VIRTIO: error pci 00:%s.0 bar0 size 0x%lx\n", hx(sb, dev, 2), size);
		return -1;
	}
	cfg_w32(dev, 0x10, (u32)bar);
	if (is64)
		cfg_w32(dev, 0x14, 0);
	u64 back = (cfg32(dev, 0x10) & ~0xfULL) | (is64 ? (u64)cfg32(dev, 0x14) << 32 : 0);
	if (back != bar) {
		printk("VIRTIO: error pci 00:%s.0 bar0 reads 0x%lx after moving it to 0x%lx\n", hx(sb, dev, 2),
		       back, bar);
		return -1;
	}
	cfg_w16(dev, 0x04, 0x6); /* memory decoding, bus master */
	virtio_map_mmio(bar);
	d->base = bar;
	d->pci = 1;
	d->slot = dev;
	u32 have = 0, msix_cap = 0;
	for (u32 at = cfg8(dev, 0x34), n = 0; at && n < 48; at = cfg8(dev, at + 1), n++) {
		u8 id = cfg8(dev, at);
		if (id == CAP_MSIX) {
			msix_cap = at;
			continue;
		}
		if (id != CAP_VENDOR || cfg8(dev, at + 4) != 0)
			continue; /* only structures in BAR 0 */
		u64 where = bar + cfg32(dev, at + 8);
		switch (cfg8(dev, at + 3)) {
		case CFG_COMMON:
			d->common = where;
			break;
		case CFG_NOTIFY:
			d->notify = where;
			d->notify_mult = cfg32(dev, at + 16);
			break;
		case CFG_ISR:
			d->isr = where;
			break;
		case CFG_DEVICE:
			d->devcfg = where;
			break;
		default:
			continue;
		}
		have |= 1u << cfg8(dev, at + 3);
	}
	if (have != 0x1e || !msix_cap) {
		printk("VIRTIO: error pci 00:%s.0 capabilities 0x%x msix=%u\n", hx(sb, dev, 2), have, msix_cap);
		return -1;
	}
	u32 table = cfg32(dev, msix_cap + 4);
	u32 nvec = (rd16(ecam(dev, msix_cap + 2)) & 0x7ff) + 1;
	if ((table & 7) != 0) {
		printk("VIRTIO: error pci 00:%s.0 msix table in BAR %u\n", hx(sb, dev, 2), table & 7);
		return -1;
	}
	u64 t = bar + (table & ~7u);
	for (u32 v = 0; v < nvec; v++) {
		w32(t + 16 * v, (u32)LAPIC); /* destination: APIC id 0, the boot CPU */
		w32(t + 16 * v + 4, 0);
		w32(t + 16 * v + 8, PCI_MSI_VECTOR + v); /* fixed, edge */
		w32(t + 16 * v + 12, 0);                 /* unmasked */
	}
	cfg_w16(dev, msix_cap + 2, 0x8000); /* enable */
	d->msix_vectors = nvec;
	printk("PCI: 00:%s.0 virtio device=%u bar0=0x%lx msix vectors=%u\n", hx(sb, dev, 2), d->id, bar,
	       nvec);
	return 0;
}

u32 pci_probe(struct vdev *out, u32 max)
{
	u32 n = 0, found = 0, agree = 1;
	char a[17], b[17], c[17], e[17];
	if ((cf8_read(0, 0) & 0xffff) == 0xffff)
		return 0; /* no PCI */
	virtio_map_mmio(PCI_ECAM);
	for (u32 dev = 0; dev < 32; dev++) {
		u32 id = cf8_read(dev, 0), id2 = cfg32(dev, 0);
		u32 cls = cf8_read(dev, 8) >> 8, cls2 = cfg32(dev, 8) >> 8;
		if (id != id2 || cls != cls2) {
			printk("PCI: 00:%s.0 cf8 0x%x class=%x, ecam 0x%x class=%x\n", hx(a, dev, 2), id, cls,
			       id2, cls2);
			agree = 0;
		}
		if ((id & 0xffff) == 0xffff)
			continue;
		found++;
		printk("PCI: 00:%s.0 %s:%s class=%s\n", hx(a, dev, 2), hx(b, id & 0xffff, 4),
		       hx(c, id >> 16, 4), hx(e, cls, 6));
		u32 device = id >> 16;
		if ((id & 0xffff) != VENDOR_VIRTIO || device < 0x1040 || n >= max)
			continue;
		struct vdev *d = &out[n];
		memset(d, 0, sizeof(*d));
		d->id = device - 0x1040;
		if (setup_function(dev, d, n) == 0)
			n++;
	}
	if (agree)
		printk("PCI: cf8 and ecam agree n=%u\n", found);
	if (n) {
		/* The local APIC must be software-enabled to accept the MSIs. */
		virtio_map_mmio(LAPIC);
		w32(LAPIC + LAPIC_SVR, rd32(LAPIC + LAPIC_SVR) | 0x1ff);
	}
	return n;
}

void pci_msix_report(struct vdev *devs, u32 n)
{
	for (u32 i = 0; i < n; i++) {
		struct vdev *d = &devs[i];
		if (!d->pci || !d->driven)
			continue;
		u32 vector = PCI_MSI_VECTOR + 1; /* queue 0 */
		u32 irr = rd32(LAPIC + LAPIC_IRR + 0x10 * (vector / 32));
		char sb[17];
		printk("PCI: msix 00:%s.0 vector=0x%x %s\n", hx(sb, d->slot, 2), vector,
		       irr & (1u << (vector % 32)) ? "delivered" : "missing");
	}
}
