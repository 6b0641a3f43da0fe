//! Parses what the test guest prints on its serial console into one [`GuestBoot`] per boot,
//! and checks its memory map.

/// One entry of the memory map the guest received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRange {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type (1 = RAM).
    pub kind: u32,
}

impl MemRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

/// A boot module (`MODULE: addr=0x… size=<decimal>`): a PVH module list entry or the
/// bzImage ramdisk, i.e. the initramfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Module {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// The `FADT:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fadt {
    /// HW_REDUCED_ACPI flag.
    pub hw_reduced: bool,
    /// Address of the sleep control register (0 if none).
    pub sleep_ctl: u64,
    /// Address of the sleep status register (0 if none).
    pub sleep_sts: u64,
}

/// Everything one boot of the guest reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuestBoot {
    /// `pvh` or `bzimage`.
    pub boot: String,
    /// The command line, exactly as printed.
    pub cmdline: Option<String>,
    /// Memory map entries in the order received.
    pub memmap: Vec<MemRange>,
    /// `MEMMAP-RAM:` total.
    pub ram_total: Option<u64>,
    /// `MODULE:` lines (the initramfs), in order.
    pub modules: Vec<Module>,
    /// RSDP revision when the RSDP was found and valid.
    pub rsdp_rev: Option<u32>,
    /// Signatures of the tables reported `ok` (RSDP, XSDT and each listed table).
    pub acpi_ok: Vec<String>,
    /// Lines reporting a bad table.
    pub acpi_bad: Vec<String>,
    /// The `FADT:` line.
    pub fadt: Option<Fadt>,
    /// `MADT: cpus=`.
    pub madt_cpus: Option<u32>,
    /// `MADT: ioapic=`.
    pub ioapic: Option<u64>,
    /// `DSDT: s5=`: `Some(None)` for `none`.
    pub s5: Option<Option<u32>>,
    /// APIC ids from the `CPU <id> up` lines.
    pub cpu_up: Vec<u32>,
    /// `CPUS: up=<n> of <m>`.
    pub cpus: Option<(u32, u32)>,
    /// `CPUS: timeout` was printed.
    pub cpus_timeout: bool,
    /// `EXITS: done n=` value.
    pub exits: Option<u64>,
    /// What followed `ECHO: ` on each echo line (`ready`, then the line read from COM1).
    pub echo: Vec<String>,
    /// The `PETREL-GUEST: <what>` line naming the final action (poweroff, reset, ...).
    pub action: Option<String>,
    /// A `PETREL-GUEST: exception ...` line.
    pub exception: Option<String>,
    /// Lines this parser did not recognise.
    pub other: Vec<String>,
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

impl GuestBoot {
    /// Parses one line into this boot; returns false if it was not recognised.
    fn parse_line(&mut self, line: &str) -> bool {
        if let Some(c) = line.strip_prefix("CMDLINE: ") {
            self.cmdline = Some(c.to_string());
        } else if line == "CMDLINE:" {
            self.cmdline = Some(String::new());
        } else if let Some(rest) = line.strip_prefix("MEMMAP: ") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            let parsed = match w.as_slice() {
                [a, s, t] => (|| {
                    Some(MemRange {
                        start: hex(a)?,
                        size: hex(s)?,
                        kind: t.strip_prefix("type=")?.parse().ok()?,
                    })
                })(),
                _ => None,
            };
            match parsed {
                Some(r) => self.memmap.push(r),
                None => return false,
            }
        } else if let Some(n) = line.strip_prefix("MEMMAP-RAM: ") {
            self.ram_total = n.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("MODULE: ") {
            let module = (|| {
                Some(Module {
                    addr: hex(field(rest, "addr=")?)?,
                    size: field(rest, "size=")?.parse().ok()?,
                })
            })();
            match module {
                Some(m) => self.modules.push(m),
                None => return false,
            }
        } else if let Some(rest) = line.strip_prefix("ACPI: ") {
            let mut w = rest.split_whitespace();
            let sig = w.next().unwrap_or_default().to_string();
            match w.next() {
                Some("ok") => {
                    if sig == "RSDP" {
                        self.rsdp_rev = field(rest, "rev=").and_then(|v| v.parse().ok());
                    }
                    self.acpi_ok.push(sig);
                }
                _ => self.acpi_bad.push(line.to_string()),
            }
        } else if let Some(rest) = line.strip_prefix("FADT: ") {
            self.fadt = (|| {
                Some(Fadt {
                    hw_reduced: field(rest, "hw_reduced=")? == "1",
                    sleep_ctl: hex(field(rest, "sleep_ctl=")?)?,
                    sleep_sts: hex(field(rest, "sleep_sts=")?)?,
                })
            })();
        } else if let Some(rest) = line.strip_prefix("MADT: ") {
            self.madt_cpus = field(rest, "cpus=").and_then(|v| v.parse().ok());
            self.ioapic = field(rest, "ioapic=").and_then(hex);
        } else if let Some(v) = line.strip_prefix("DSDT: s5=") {
            self.s5 = Some(v.trim().parse().ok());
        } else if let Some(id) = line
            .strip_prefix("CPU ")
            .and_then(|r| r.strip_suffix(" up"))
        {
            match id.parse() {
                Ok(id) => self.cpu_up.push(id),
                Err(_) => return false,
            }
        } else if line == "CPUS: timeout" {
            self.cpus_timeout = true;
        } else if let Some(rest) = line.strip_prefix("CPUS: up=") {
            let mut it = rest.split(" of ");
            let up = it.next().and_then(|v| v.trim().parse().ok());
            let of = it.next().and_then(|v| v.trim().parse().ok());
            self.cpus = up.zip(of);
        } else if let Some(n) = line.strip_prefix("EXITS: done n=") {
            self.exits = n.trim().parse().ok();
        } else if let Some(e) = line.strip_prefix("ECHO: ") {
            self.echo.push(e.to_string());
        } else if let Some(e) = line.strip_prefix("PETREL-GUEST: exception") {
            self.exception = Some(e.trim().to_string());
        } else if let Some(a) = line.strip_prefix("PETREL-GUEST: ") {
            self.action = Some(a.to_string());
        } else {
            return false;
        }
        true
    }

    /// Total bytes of RAM (type 1) in the memory map.
    pub fn ram_in_map(&self) -> u64 {
        self.memmap
            .iter()
            .filter(|r| r.kind == 1)
            .map(|r| r.size)
            .sum()
    }

    /// Checks the memory map is sane: RAM starts at 0, no two entries overlap, no entry is
    /// empty, and the `MEMMAP-RAM` total matches the entries.
    pub fn check_memmap(&self) -> Result<(), String> {
        let mut sorted = self.memmap.clone();
        sorted.sort_by_key(|r| r.start);
        if !sorted.first().is_some_and(|r| r.start == 0 && r.kind == 1) {
            return Err(format!("RAM does not start at 0: {sorted:x?}"));
        }
        for r in &sorted {
            if r.size == 0 {
                return Err(format!("empty entry {r:x?}"));
            }
        }
        for w in sorted.windows(2) {
            if w[0].end() > w[1].start {
                return Err(format!("entries overlap: {:x?} and {:x?}", w[0], w[1]));
            }
        }
        if self.ram_total != Some(self.ram_in_map()) {
            return Err(format!(
                "MEMMAP-RAM {:?} != sum of RAM entries {}",
                self.ram_total,
                self.ram_in_map()
            ));
        }
        Ok(())
    }

    /// True when one RAM entry holds all of `[start, end)`.
    pub fn ram_contains(&self, start: u64, end: u64) -> bool {
        self.memmap
            .iter()
            .any(|r| r.kind == 1 && r.start <= start && end <= r.end())
    }

    /// True when some RAM entry overlaps `[start, end)`.
    pub fn ram_overlaps(&self, start: u64, end: u64) -> bool {
        self.memmap
            .iter()
            .any(|r| r.kind == 1 && r.start < end && start < r.end())
    }
}

/// Splits the serial output into boots (each begins with `PETREL-GUEST: start boot=`).
/// Lines before the first start line are ignored.
pub fn parse_boots(serial: &str) -> Vec<GuestBoot> {
    let mut boots: Vec<GuestBoot> = Vec::new();
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(kind) = line.strip_prefix("PETREL-GUEST: start boot=") {
            boots.push(GuestBoot {
                boot: kind.trim().to_string(),
                ..GuestBoot::default()
            });
        } else if let Some(b) = boots.last_mut() {
            if !b.parse_line(line) {
                b.other.push(line.to_string());
            }
        }
    }
    boots
}

/// The first boot in the serial output (a default, empty one if the guest never started).
pub fn parse_first_boot(serial: &str) -> GuestBoot {
    parse_boots(serial).into_iter().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
noise\n\
PETREL-GUEST: start boot=pvh\n\
CMDLINE: action=poweroff  x=1\n\
MEMMAP: 0x0 0x9fc00 type=1\n\
MEMMAP: 0x9fc00 0x400 type=2\n\
MEMMAP: 0x100000 0x7f00000 type=1\n\
MEMMAP-RAM: 133823488\n\
MODULE: addr=0x7ffc000 size=12345\n\
ACPI: RSDP ok rev=2 xsdt=0xe0030\n\
ACPI: XSDT ok entries=2\n\
ACPI: FACP ok len=276\n\
ACPI: APIC BAD checksum\n\
ACPI: DSDT ok len=100\n\
FADT: hw_reduced=1 sleep_ctl=0x3c0 sleep_sts=0x3c1\n\
MADT: cpus=2 ioapic=0xfec00000\n\
DSDT: s5=5\n\
CPU 0 up\n\
CPU 1 up\n\
CPUS: up=2 of 2\n\
ECHO: ready\n\
ECHO: hello  petrel\n\
PETREL-GUEST: poweroff\n\
PETREL-GUEST: start boot=bzimage\n\
CMDLINE:\n\
DSDT: s5=none\n";

    #[test]
    fn parses_a_full_boot() {
        let boots = parse_boots(SAMPLE);
        assert_eq!(boots.len(), 2);
        let b = &boots[0];
        assert_eq!(b.boot, "pvh");
        assert_eq!(b.cmdline.as_deref(), Some("action=poweroff  x=1"));
        assert_eq!(b.memmap.len(), 3);
        assert_eq!(b.ram_total, Some(0x9fc00 + 0x7f00000));
        assert_eq!(
            b.modules,
            [Module {
                addr: 0x7ffc000,
                size: 12345
            }]
        );
        assert!(b.ram_contains(0x7ffc000, b.modules[0].end()));
        assert!(!b.ram_contains(0x9f000, 0xa0000));
        assert_eq!(b.echo, ["ready", "hello  petrel"]);
        b.check_memmap().unwrap();
        assert_eq!(b.rsdp_rev, Some(2));
        assert_eq!(b.acpi_ok, ["RSDP", "XSDT", "FACP", "DSDT"]);
        assert_eq!(b.acpi_bad, ["ACPI: APIC BAD checksum"]);
        let fadt = b.fadt.unwrap();
        assert!(fadt.hw_reduced);
        assert_eq!((fadt.sleep_ctl, fadt.sleep_sts), (0x3c0, 0x3c1));
        assert_eq!(b.madt_cpus, Some(2));
        assert_eq!(b.ioapic, Some(0xfec0_0000));
        assert_eq!(b.s5, Some(Some(5)));
        assert_eq!(b.cpu_up, [0, 1]);
        assert_eq!(b.cpus, Some((2, 2)));
        assert_eq!(b.action.as_deref(), Some("poweroff"));
        assert!(b.other.is_empty(), "{:?}", b.other);
        assert!(b.ram_overlaps(0x9f000, 0xa0000));
        assert!(!b.ram_overlaps(0xa0000, 0x100000));

        assert_eq!(boots[1].boot, "bzimage");
        assert_eq!(boots[1].cmdline.as_deref(), Some(""));
        assert_eq!(boots[1].s5, Some(None));
        assert!(boots[1].modules.is_empty());
    }

    #[test]
    fn malformed_module_line_is_not_a_module() {
        let b = parse_first_boot("PETREL-GUEST: start boot=pvh\nMODULE: addr=12 size=x\n");
        assert!(b.modules.is_empty());
        assert_eq!(b.other, ["MODULE: addr=12 size=x"]);
    }

    #[test]
    fn memmap_check_catches_overlap_and_bad_total() {
        let mut b = GuestBoot {
            memmap: vec![
                MemRange {
                    start: 0,
                    size: 0x2000,
                    kind: 1,
                },
                MemRange {
                    start: 0x1000,
                    size: 0x1000,
                    kind: 2,
                },
            ],
            ram_total: Some(0x2000),
            ..GuestBoot::default()
        };
        assert!(b.check_memmap().unwrap_err().contains("overlap"));
        b.memmap[1].start = 0x2000;
        b.check_memmap().unwrap();
        b.ram_total = Some(1);
        assert!(b.check_memmap().is_err());
        b.memmap[0].start = 0x1000;
        assert!(b.check_memmap().unwrap_err().contains("start at 0"));
    }

    #[test]
    fn no_start_line_means_no_boot() {
        assert!(parse_boots("garbage\nCPU 1 up\n").is_empty());
        assert_eq!(parse_first_boot(""), GuestBoot::default());
    }
}
