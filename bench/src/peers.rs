//! The VMMs under test (petrel and its peers) and the command line each needs to boot the
//! same guest with the same vCPUs and memory, its serial console on stdout, and to exit when
//! the guest powers off in the way that VMM supports.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Which VMM a binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmKind {
    /// `petrel` (this project).
    Petrel,
    /// `qemu-system-x86_64 -M microvm`.
    Qemu,
    /// Firecracker, configured with `--no-api --config-file`.
    Firecracker,
    /// Cloud Hypervisor.
    CloudHypervisor,
}

/// How the guest ends its life so that the VMM process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// ACPI S5 through the FADT sleep control register (or PM1a control).
    AcpiPoweroff,
    /// CPU reset through the i8042 controller (port 0x64 ← 0xfe); the VMM exits on reset.
    I8042Reset,
}

impl Shutdown {
    /// The test guest's `action=` value.
    pub fn guest_action(self) -> &'static str {
        match self {
            Shutdown::AcpiPoweroff => "quick",
            Shutdown::I8042Reset => "quick-reset",
        }
    }

    /// The line the test guest prints just before it shuts down this way.
    pub fn guest_marker(self) -> &'static str {
        match self {
            Shutdown::AcpiPoweroff => "PETREL-GUEST: poweroff",
            Shutdown::I8042Reset => "PETREL-GUEST: reset",
        }
    }
}

impl VmmKind {
    /// Short name used in reports and file names.
    pub fn name(self) -> &'static str {
        match self {
            VmmKind::Petrel => "petrel",
            VmmKind::Qemu => "qemu",
            VmmKind::Firecracker => "firecracker",
            VmmKind::CloudHypervisor => "cloud-hypervisor",
        }
    }

    /// How a guest makes this VMM exit. Firecracker has no ACPI sleep register but exits on
    /// an i8042 reset; the others power off through ACPI.
    pub fn shutdown(self) -> Shutdown {
        match self {
            VmmKind::Firecracker => Shutdown::I8042Reset,
            _ => Shutdown::AcpiPoweroff,
        }
    }
}

/// What to boot: the same for every VMM of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestSpec {
    /// Kernel image (the PVH ELF test guest).
    pub kernel: PathBuf,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Guest command line.
    pub cmdline: String,
}

/// One VMM binary under test.
#[derive(Debug, Clone, PartialEq)]
pub struct Vmm {
    /// Which VMM it is.
    pub kind: VmmKind,
    /// Path of its binary.
    pub path: PathBuf,
    /// QEMU `-cpu` model (used by [`VmmKind::Qemu`] only).
    pub qemu_cpu: String,
}

/// Default QEMU CPU model. `host` alone makes QEMU 7.2 abort on hosts whose KVM refuses
/// MSR_IA32_ARCH_CAPABILITIES (PVM does); dropping that one feature is harmless elsewhere.
pub const DEFAULT_QEMU_CPU: &str = "host,-arch-capabilities";

impl Vmm {
    /// A VMM of `kind` at `path`.
    pub fn new(kind: VmmKind, path: PathBuf) -> Vmm {
        Vmm {
            kind,
            path,
            qemu_cpu: DEFAULT_QEMU_CPU.to_string(),
        }
    }

    /// Short name (see [`VmmKind::name`]).
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Arguments that boot `guest` with its serial console on stdout. May write a
    /// configuration file (Firecracker) and create log files in `scratch`.
    pub fn args(&self, guest: &GuestSpec, scratch: &Path) -> io::Result<Vec<OsString>> {
        let mem = format!("{}M", guest.memory_mib);
        let cpus = guest.cpus.to_string();
        let kernel = guest.kernel.as_os_str();
        let cmdline = guest.cmdline.as_str();
        let mut a: Vec<OsString> = Vec::new();
        match self.kind {
            VmmKind::Petrel => {
                push(&mut a, &["--kernel"]);
                a.push(kernel.to_owned());
                push(
                    &mut a,
                    &["--cpus", &cpus, "--memory", &mem, "--cmdline", cmdline],
                );
                push(&mut a, &["--serial", "stdout"]);
            }
            VmmKind::Qemu => {
                push(&mut a, &["-M", "microvm,acpi=on", "-enable-kvm"]);
                push(&mut a, &["-cpu", &self.qemu_cpu, "-smp", &cpus, "-m", &mem]);
                push(&mut a, &["-nodefaults", "-no-user-config", "-nographic"]);
                push(&mut a, &["-serial", "stdio", "-no-reboot", "-kernel"]);
                a.push(kernel.to_owned());
                push(&mut a, &["-append", cmdline]);
            }
            VmmKind::Firecracker => {
                fs::create_dir_all(scratch)?;
                let config = scratch.join("firecracker-config.json");
                fs::write(&config, firecracker_config(guest)?)?;
                // Firecracker logs to stdout unless given a log file, which would mix its
                // log with the serial console; the file must exist beforehand.
                let log = scratch.join("firecracker.log");
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?;
                push(&mut a, &["--no-api", "--config-file"]);
                a.push(config.into_os_string());
                push(&mut a, &["--log-path"]);
                a.push(log.into_os_string());
                push(&mut a, &["--level", "Warning"]);
            }
            VmmKind::CloudHypervisor => {
                push(&mut a, &["--kernel"]);
                a.push(kernel.to_owned());
                let cpus = format!("boot={cpus}");
                let mem = format!("size={mem}");
                push(&mut a, &["--cmdline", cmdline, "--cpus", &cpus]);
                push(
                    &mut a,
                    &["--memory", &mem, "--serial", "tty", "--console", "off"],
                );
            }
        }
        Ok(a)
    }

    /// The full command (binary and [`Vmm::args`]), stdin from /dev/null.
    pub fn command(&self, guest: &GuestSpec, scratch: &Path) -> io::Result<Command> {
        let mut cmd = Command::new(&self.path);
        cmd.args(self.args(guest, scratch)?).stdin(Stdio::null());
        Ok(cmd)
    }

    /// The command line as text, for the report.
    pub fn command_line(&self, guest: &GuestSpec, scratch: &Path) -> io::Result<Vec<String>> {
        let mut line = vec![self.path.to_string_lossy().into_owned()];
        line.extend(
            self.args(guest, scratch)?
                .iter()
                .map(|s| s.to_string_lossy().into_owned()),
        );
        Ok(line)
    }

    /// First line of `<binary> --version`, when it answers.
    pub fn version(&self) -> Option<String> {
        let out = Command::new(&self.path)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .next()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
    }
}

fn push(args: &mut Vec<OsString>, items: &[&str]) {
    args.extend(items.iter().map(OsString::from));
}

/// Firecracker's `--config-file` JSON for `guest` (boot source and machine config only).
pub fn firecracker_config(guest: &GuestSpec) -> io::Result<String> {
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest.kernel,
            "boot_args": guest.cmdline,
        },
        "machine-config": {
            "vcpu_count": guest.cpus,
            "mem_size_mib": guest.memory_mib,
        },
    });
    serde_json::to_string_pretty(&config).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> GuestSpec {
        GuestSpec {
            kernel: PathBuf::from("/g.elf"),
            cpus: 1,
            memory_mib: 128,
            cmdline: "action=quick".into(),
        }
    }

    fn line(kind: VmmKind, scratch: &Path) -> String {
        Vmm::new(kind, PathBuf::from("/bin/x"))
            .command_line(&guest(), scratch)
            .unwrap()
            .join(" ")
    }

    #[test]
    fn petrel_and_qemu_lines() {
        let s = Path::new("/nonexistent");
        assert_eq!(
            line(VmmKind::Petrel, s),
            "/bin/x --kernel /g.elf --cpus 1 --memory 128M --cmdline action=quick --serial stdout"
        );
        let q = line(VmmKind::Qemu, s);
        assert!(q.contains("-M microvm,acpi=on -enable-kvm -cpu host,-arch-capabilities"));
        assert!(q.ends_with("-smp 1 -m 128M -nodefaults -no-user-config -nographic -serial stdio -no-reboot -kernel /g.elf -append action=quick"), "{q}");
        let c = line(VmmKind::CloudHypervisor, s);
        assert!(c.contains("--cpus boot=1 --memory size=128M --serial tty --console off"));
    }

    #[test]
    fn firecracker_writes_its_config() {
        let dir = std::env::temp_dir().join(format!("petrel-bench-fc-{}", std::process::id()));
        let l = line(VmmKind::Firecracker, &dir);
        assert!(l.starts_with("/bin/x --no-api --config-file "), "{l}");
        let cfg: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("firecracker-config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["machine-config"]["mem_size_mib"], 128);
        assert_eq!(cfg["boot-source"]["kernel_image_path"], "/g.elf");
        assert!(dir.join("firecracker.log").is_file());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shutdown_per_vmm() {
        assert_eq!(
            VmmKind::Firecracker.shutdown().guest_action(),
            "quick-reset"
        );
        assert_eq!(VmmKind::Qemu.shutdown().guest_action(), "quick");
        assert_eq!(Shutdown::I8042Reset.guest_marker(), "PETREL-GUEST: reset");
    }
}
