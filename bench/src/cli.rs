//! Command-line options of `petrel-bench`.

use std::path::PathBuf;
use std::time::Duration;

/// Usage text.
pub const USAGE: &str = "\
usage: petrel-bench [--runs N | --quick] [--warmup N] [--petrel PATH]
                    [--petrel-baseline PATH] [--qemu PATH]
                    [--qemu-cpu MODEL] [--firecracker PATH] [--cloud-hypervisor PATH]
                    [--guest PATH] [--timeout SECS] [--out DIR] [--workloads LIST]

  --runs N                 recorded runs per VMM (default 20), interleaved A B C A B C ...
  --quick                  3 runs, no warm-up (CI smoke mode)
  --warmup N               unrecorded warm-up rounds (default 1; 0 with --quick)
  --petrel PATH            petrel binary (default: <workspace>/target/release/petrel)
  --petrel-baseline PATH   also run this petrel build as `petrel-baseline` (e.g. one built
                           from main), for before/after ratios in the same run
  --petrel-pci             also run petrel with its devices on virtio-pci (`petrel-pci`:
                           --transport pci --rng) and the same device on virtio-mmio
                           (`petrel-mmio`: --rng), in guest-life and memory only
  --qemu PATH              also run QEMU (qemu-system-x86_64, -M microvm)
  --qemu-cpu MODEL         QEMU -cpu model (default host,-arch-capabilities)
  --firecracker PATH       also run Firecracker (a release with PVH boot support)
  --cloud-hypervisor PATH  also run Cloud Hypervisor
  --guest PATH             PVH test guest (default: built from tests/guests)
  --timeout SECS           per-run timeout (default 60)
  --out DIR                results directory (default: <workspace>/results/<UTC timestamp>)
  --workloads LIST         comma-separated workloads to run (default: all but linux-boot
                           with --quick): guest-life, memory, exit-cost, api-ready,
                           fc-start, create-rate, create-rate-petreld (petrel only, needs petreld),
                           blk, blk-qcow2 (needs qemu-img), rng, net (needs CAP_NET_ADMIN),
                           vsock (petrel only), snapshot,
                           linux-boot (needs native guest ring 0 and the guest kit)
";

/// Every workload's name, in run order (`--workloads` accepts these).
pub const WORKLOADS: &[&str] = &[
    "guest-life",
    "memory",
    "exit-cost",
    "api-ready",
    "fc-start",
    "create-rate",
    "blk",
    "blk-qcow2",
    "rng",
    "vsock",
    "snapshot",
    "create-rate-petreld",
    "linux-boot",
    "net",
];

/// Parsed options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Recorded runs per VMM.
    pub runs: usize,
    /// Warm-up rounds.
    pub warmup: usize,
    /// `--quick` was given.
    pub quick: bool,
    /// petrel binary, when given.
    pub petrel: Option<PathBuf>,
    /// A second petrel build to compare with.
    pub petrel_baseline: Option<PathBuf>,
    /// QEMU binary.
    pub qemu: Option<PathBuf>,
    /// QEMU CPU model, when given.
    pub qemu_cpu: Option<String>,
    /// Firecracker binary.
    pub firecracker: Option<PathBuf>,
    /// Cloud Hypervisor binary.
    pub cloud_hypervisor: Option<PathBuf>,
    /// Test guest, when given.
    pub guest: Option<PathBuf>,
    /// Per-run timeout.
    pub timeout: Duration,
    /// Results directory, when given.
    pub out: Option<PathBuf>,
    /// `--petrel-pci`: also petrel on virtio-pci (and its virtio-mmio control).
    pub petrel_pci: bool,
    /// `--workloads`: only these (all when `None`).
    pub workloads: Option<Vec<String>>,
    /// `--help` was given.
    pub help: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 20,
            warmup: 1,
            quick: false,
            petrel: None,
            petrel_baseline: None,
            qemu: None,
            qemu_cpu: None,
            firecracker: None,
            cloud_hypervisor: None,
            guest: None,
            timeout: Duration::from_secs(60),
            out: None,
            petrel_pci: false,
            workloads: None,
            help: false,
        }
    }
}

impl Options {
    /// Whether the workload `name` is to run.
    pub fn wants(&self, name: &str) -> bool {
        self.workloads
            .as_ref()
            .is_none_or(|l| l.iter().any(|w| w == name))
    }
}

fn number(flag: &str, v: &str) -> Result<usize, String> {
    v.parse()
        .map_err(|_| format!("{flag}: expected a whole number, got {v:?}"))
}

/// Parses the arguments (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
    let mut o = Options::default();
    let (mut runs, mut warmup) = (None, None);
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        if flag == "--petrel-pci" {
            o.petrel_pci = true;
            continue;
        }
        if flag == "--quick" {
            o.quick = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            o.help = true;
            continue;
        }
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (flag, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--runs" => runs = Some(number(&flag, &value()?)?),
            "--warmup" => warmup = Some(number(&flag, &value()?)?),
            "--petrel" => o.petrel = Some(value()?.into()),
            "--petrel-baseline" => o.petrel_baseline = Some(value()?.into()),
            "--qemu" => o.qemu = Some(value()?.into()),
            "--qemu-cpu" => o.qemu_cpu = Some(value()?),
            "--firecracker" => o.firecracker = Some(value()?.into()),
            "--cloud-hypervisor" => o.cloud_hypervisor = Some(value()?.into()),
            "--guest" => o.guest = Some(value()?.into()),
            "--out" => o.out = Some(value()?.into()),
            "--workloads" => {
                let list: Vec<String> = value()?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if list.is_empty() {
                    return Err("--workloads: expected a comma-separated list".into());
                }
                if let Some(bad) = list.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
                    return Err(format!(
                        "--workloads: unknown workload {bad:?} (known: {})",
                        WORKLOADS.join(", ")
                    ));
                }
                o.workloads = Some(list);
            }
            "--timeout" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--timeout: expected seconds, got {v:?}"))?;
                o.timeout = Duration::from_secs_f64(secs);
            }
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    o.runs = runs.unwrap_or(if o.quick { 3 } else { 20 });
    o.warmup = warmup.unwrap_or(if o.quick { 0 } else { 1 });
    if o.runs == 0 {
        return Err("--runs: must be at least 1".into());
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_and_quick() {
        let o = p(&[]).unwrap();
        assert_eq!((o.runs, o.warmup, o.quick), (20, 1, false));
        let q = p(&["--quick"]).unwrap();
        assert_eq!((q.runs, q.warmup, q.quick), (3, 0, true));
        let q = p(&["--quick", "--runs", "5"]).unwrap();
        assert_eq!(q.runs, 5);
    }

    #[test]
    fn paths_and_inline_values() {
        let o = p(&["--qemu=/usr/bin/qemu", "--petrel", "/p", "--timeout", "2.5"]).unwrap();
        assert_eq!(o.qemu, Some(PathBuf::from("/usr/bin/qemu")));
        assert_eq!(o.petrel, Some(PathBuf::from("/p")));
        assert_eq!(o.timeout, Duration::from_millis(2500));
        let o = p(&["--petrel-baseline", "/old"]).unwrap();
        assert_eq!(o.petrel_baseline, Some(PathBuf::from("/old")));
    }

    #[test]
    fn workload_selection() {
        let o = p(&[]).unwrap();
        assert!(o.wants("memory") && o.wants("net"));
        let o = p(&["--workloads", "memory, exit-cost"]).unwrap();
        assert!(o.wants("memory") && o.wants("exit-cost") && !o.wants("blk"));
        assert!(p(&["--workloads", ","]).is_err());
        let e = p(&["--workloads", "memory,bogus"]).unwrap_err();
        assert!(e.contains("\"bogus\"") && e.contains("linux-boot"), "{e}");
    }

    #[test]
    fn help_lists_every_workload() {
        for w in WORKLOADS {
            assert!(USAGE.contains(w), "--help does not list {w}");
        }
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(p(&["--runs"]).unwrap_err().contains("--runs needs a value"));
        assert!(p(&["--runs", "x"]).unwrap_err().contains("--runs"));
        assert!(p(&["--runs", "0"]).is_err());
        assert!(p(&["--timeout", "-1"]).unwrap_err().contains("--timeout"));
        assert!(p(&["--bogus"]).unwrap_err().contains("--bogus"));
    }
}
