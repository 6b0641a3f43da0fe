/*
 * petrel test guest: ACPI walk.
 *
 * Finds the RSDP (from the boot protocol, else by scanning 0xE0000..0xFFFFF),
 * verifies every checksum, and extracts what the guest needs: the FADT sleep
 * registers, the MADT CPUs and IOAPIC, and the _S5 sleep type and the Generic
 * Event Device (power button) from the DSDT.
 */
#include "guest.h"

#define MAX_TABLE_LEN (16u << 20)

static int sig_is(u64 a, const char *sig)
{
	for (u32 i = 0; i < 4; i++)
		if (rd8(a + i) != (u8)sig[i])
			return 0;
	return 1;
}

static u8 sum_bytes(u64 a, u32 len)
{
	u8 s = 0;
	for (u32 i = 0; i < len; i++)
		s = (u8)(s + rd8(a + i));
	return s;
}

static void sig_str(u64 a, char out[5])
{
	for (u32 i = 0; i < 4; i++) {
		u8 c = rd8(a + i);
		out[i] = (char)(c >= 0x20 && c < 0x7f ? c : '?');
	}
	out[4] = 0;
}

/* Validates and reports one SDT; returns its length, or 0 when it must not be used. */
static u32 check_table(u64 a)
{
	char sig[5];
	if (a == 0 || a + 36 > FOUR_GIB) {
		printk("ACPI: table at 0x%lx BAD address\n", a);
		return 0;
	}
	sig_str(a, sig);
	u32 len = rd32(a + 4);
	if (len < 36 || len > MAX_TABLE_LEN || a + len > FOUR_GIB) {
		printk("ACPI: %s BAD length %u\n", sig, len);
		return 0;
	}
	if (sum_bytes(a, len) != 0) {
		printk("ACPI: %s BAD checksum\n", sig);
		return 0;
	}
	printk("ACPI: %s ok len=%u\n", sig, len);
	return len;
}

static u64 find_rsdp(u64 hint)
{
	if (hint && hint < FOUR_GIB - 36)
		return hint;
	for (u64 a = 0xe0000; a < 0x100000; a += 16)
		if (sig_is(a, "RSD ") && sig_is(a + 4, "PTR "))
			return a;
	return 0;
}

static void parse_fadt(u64 a, u32 len, struct acpi_info *info, u64 *dsdt)
{
	info->have_fadt = 1;
	if (len >= 44)
		*dsdt = rd32(a + 40);
	if (len >= 68)
		info->pm1a_cnt = rd32(a + 64);
	if (len >= 116)
		info->hw_reduced = (rd32(a + 112) >> 20) & 1;
	if (len >= 148 && rd64(a + 140))
		*dsdt = rd64(a + 140);
	if (len >= 256) {
		info->sleep_ctl_space = rd8(a + 244);
		info->sleep_ctl = rd64(a + 248);
	}
	if (len >= 268)
		info->sleep_sts = rd64(a + 260);
}

static void parse_madt(u64 a, u32 len, struct acpi_info *info)
{
	info->lapic = rd32(a + 36);
	for (u32 off = 44; off + 2 <= len;) {
		u64 e = a + off;
		u8 type = rd8(e), elen = rd8(e + 1);
		if (elen < 2 || off + elen > len)
			break;
		if (type == 0 && elen >= 8 && (rd32(e + 4) & 1)) {
			if (info->ncpus < MAX_CPUS)
				info->apic_ids[info->ncpus] = rd8(e + 3);
			info->ncpus++;
		} else if (type == 9 && elen >= 16 && (rd32(e + 8) & 1)) {
			if (info->ncpus < MAX_CPUS)
				info->apic_ids[info->ncpus] = rd32(e + 4);
			info->ncpus++;
		} else if (type == 1 && elen >= 12 && info->ioapic == 0) {
			info->ioapic = rd32(e + 4);
		} else if (type == 5 && elen >= 12) {
			info->lapic = rd64(e + 4);
		}
		off += elen;
	}
}

/* Looks for Name(_S5, Package(){ SLP_TYPa, ... }) in the AML of the DSDT. */
static int find_s5(u64 a, u32 len)
{
	for (u32 i = 36; i + 8 < len; i++) {
		if (!sig_is(a + i, "_S5_") || rd8(a + i + 4) != 0x12)
			continue;
		u32 j = i + 5;
		j += 1 + (rd8(a + j) >> 6); /* PkgLength */
		j += 1;                     /* NumElements */
		if (j + 3 > len)
			return -1;
		switch (rd8(a + j)) {
		case 0x00:
			return 0;
		case 0x01:
			return 1;
		case 0x0a:
			return rd8(a + j + 1);
		case 0x0b:
			return rd16(a + j + 1);
		case 0xff:
			return 0xff;
		default:
			continue;
		}
	}
	return -1;
}

/* Looks for a Generic Event Device (_HID "ACPI0013") in the AML of the DSDT and the GSI of
 * the first Extended Interrupt descriptor (0x89, length 6, count >= 1) after it: its _CRS. */
static void find_ged(u64 a, u32 len, struct acpi_info *info)
{
	static const char hid[] = "ACPI0013";
	for (u32 i = 36; i + 8 <= len; i++) {
		u32 k = 0;
		while (k < 8 && rd8(a + i + k) == (u8)hid[k])
			k++;
		if (k < 8)
			continue;
		info->have_ged = 1;
		for (u32 j = i + 8; j + 9 <= len && j < i + 8 + 64; j++)
			if (rd8(a + j) == 0x89 && rd16(a + j + 1) == 6 && rd8(a + j + 4) >= 1) {
				info->ged_gsi = rd32(a + j + 5);
				return;
			}
		return;
	}
}

void acpi_walk(u64 hint, struct acpi_info *info)
{
	u64 fadt = 0, madt = 0, dsdt = 0, sdt, rsdp = find_rsdp(hint);
	u32 fadt_len = 0, madt_len = 0, entry_size;

	info->s5 = -1;
	if (!rsdp) {
		printk("ACPI: RSDP none\n");
		goto summary;
	}
	if (!sig_is(rsdp, "RSD ") || !sig_is(rsdp + 4, "PTR ")) {
		printk("ACPI: RSDP BAD signature at 0x%lx\n", rsdp);
		goto summary;
	}
	u32 rev = rd8(rsdp + 15);
	u64 xsdt = rev >= 2 ? rd64(rsdp + 24) : 0;
	if (sum_bytes(rsdp, 20) != 0 || (rev >= 2 && sum_bytes(rsdp, 36) != 0)) {
		printk("ACPI: RSDP BAD checksum\n");
		goto summary;
	}
	printk("ACPI: RSDP ok rev=%u xsdt=0x%lx\n", rev, xsdt);

	if (xsdt) {
		sdt = xsdt;
		entry_size = 8;
	} else {
		sdt = rd32(rsdp + 16);
		entry_size = 4;
	}
	u32 sdt_len = 0;
	if (sdt && sdt + 36 <= FOUR_GIB) {
		u32 len = rd32(sdt + 4);
		if (len >= 36 && len <= MAX_TABLE_LEN && sdt + len <= FOUR_GIB && sum_bytes(sdt, len) == 0)
			sdt_len = len;
	}
	const char *name = entry_size == 8 ? "XSDT" : "RSDT";
	if (!sdt_len) {
		printk("ACPI: %s BAD\n", name);
		goto summary;
	}
	u32 n = (sdt_len - 36) / entry_size;
	printk("ACPI: %s ok entries=%u\n", name, n);
	for (u32 i = 0; i < n; i++) {
		u64 ea = sdt + 36 + (u64)i * entry_size;
		u64 t = entry_size == 8 ? rd64(ea) : rd32(ea);
		u32 len = check_table(t);
		if (!len)
			continue;
		if (sig_is(t, "FACP") && !fadt) {
			fadt = t;
			fadt_len = len;
		} else if (sig_is(t, "APIC") && !madt) {
			madt = t;
			madt_len = len;
		}
	}
	if (fadt)
		parse_fadt(fadt, fadt_len, info, &dsdt);
	if (madt)
		parse_madt(madt, madt_len, info);
	if (dsdt) {
		u32 len = check_table(dsdt);
		if (len) {
			info->s5 = find_s5(dsdt, len);
			find_ged(dsdt, len, info);
		}
	}

summary:
	if (info->have_fadt)
		printk("FADT: hw_reduced=%u sleep_ctl=0x%lx sleep_sts=0x%lx\n", info->hw_reduced,
		       info->sleep_ctl, info->sleep_sts);
	else
		printk("FADT: none\n");
	if (info->lapic == 0)
		info->lapic = 0xfee00000;
	printk("MADT: cpus=%u ioapic=0x%lx\n", info->ncpus, info->ioapic);
	if (info->s5 >= 0)
		printk("DSDT: s5=%d\n", info->s5);
	else
		printk("DSDT: s5=none\n");
	if (info->have_ged)
		printk("DSDT: ged=1 gsi=%u\n", info->ged_gsi);
	else
		printk("DSDT: ged=0\n");
}
