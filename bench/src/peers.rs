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

/// The test guest's short action, the same for every VMM: the start line, a silent ACPI
/// walk, [`POWEROFF_MARKER`], then ACPI S5 through the FADT sleep register; where the FADT has
/// none (Firecracker) the guest resets through the i8042 controller instead, on which
/// Firecracker exits.
pub const QUICK_ACTION: &str = "quick";

/// The line the test guest prints just before it powers off (by ACPI S5 or the i8042
/// fallback).
pub const POWEROFF_MARKER: &str = "PETREL-GUEST: poweroff";

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
    /// Name in reports: the kind's, or another for a second binary of the same kind.
    label: String,
    /// Extra arguments for petrel (`--transport pci` for the `petrel-pci` variant).
    pub extra: Vec<String>,
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
            label: kind.name().to_string(),
            extra: Vec::new(),
        }
    }

    /// The same VMM with `extra` arguments after its own (petrel only).
    pub fn with_extra(mut self, extra: &[&str]) -> Vmm {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The same VMM named `label` in reports (a second build of petrel, say).
    pub fn labelled(mut self, label: &str) -> Vmm {
        self.label = label.to_string();
        self
    }

    /// Short name: [`VmmKind::name`] unless [`Vmm::labelled`].
    pub fn name(&self) -> &str {
        &self.label
    }

    /// Arguments that boot `guest` with its serial console on stdout. May write a
    /// configuration file (Firecracker, at [`Vmm::config_file`]) and create log files in
    /// `scratch`.
    pub fn args(&self, guest: &GuestSpec, scratch: &Path) -> io::Result<Vec<OsString>> {
        self.args_with(guest, scratch, &FirecrackerDevices::new())
    }

    /// Where [`Vmm::args`] writes this VMM's configuration file, if it uses one.
    pub fn config_file(&self, scratch: &Path) -> Option<PathBuf> {
        (self.kind == VmmKind::Firecracker).then(|| scratch.join("firecracker-config.json"))
    }

    /// [`Vmm::args`] with Firecracker devices (`drives`, `entropy`, `network-interfaces`:
    /// Firecracker takes devices in its configuration file, the others on the command line).
    pub fn args_with(
        &self,
        guest: &GuestSpec,
        scratch: &Path,
        fc_devices: &FirecrackerDevices,
    ) -> io::Result<Vec<OsString>> {
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
                a.extend(self.extra.iter().map(OsString::from));
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
                fs::write(&config, firecracker_config(guest, fc_devices)?)?;
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
        self.command_with(guest, scratch, &FirecrackerDevices::new())
    }

    /// [`Vmm::command`] with Firecracker devices (see [`Vmm::args_with`]).
    pub fn command_with(
        &self,
        guest: &GuestSpec,
        scratch: &Path,
        fc_devices: &FirecrackerDevices,
    ) -> io::Result<Command> {
        let mut cmd = Command::new(&self.path);
        cmd.args(self.args_with(guest, scratch, fc_devices)?)
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// The command line as text, for the report.
    pub fn command_line(&self, guest: &GuestSpec, scratch: &Path) -> io::Result<Vec<String>> {
        self.command_line_with(guest, scratch, &FirecrackerDevices::new())
    }

    /// [`Vmm::command_line`] with Firecracker devices.
    pub fn command_line_with(
        &self,
        guest: &GuestSpec,
        scratch: &Path,
        fc_devices: &FirecrackerDevices,
    ) -> io::Result<Vec<String>> {
        let mut line = vec![self.path.to_string_lossy().into_owned()];
        line.extend(
            self.args_with(guest, scratch, fc_devices)?
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

/// Device sections of a Firecracker configuration (`drives`, `entropy`,
/// `network-interfaces`), by key.
pub type FirecrackerDevices = serde_json::Map<String, serde_json::Value>;

/// Firecracker's `--config-file` JSON for `guest`: boot source, machine config, and
/// `fc_devices`. `drives` is required by Firecracker (an empty list when there is no disk):
/// without it every boot fails with "missing field `drives`".
pub fn firecracker_config(
    guest: &GuestSpec,
    fc_devices: &FirecrackerDevices,
) -> io::Result<String> {
    let mut config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest.kernel,
            "boot_args": guest.cmdline,
        },
        "drives": [],
        "machine-config": {
            "vcpu_count": guest.cpus,
            "mem_size_mib": guest.memory_mib,
        },
    });
    if let Some(map) = config.as_object_mut() {
        for (k, v) in fc_devices {
            map.insert(k.clone(), v.clone());
        }
    }
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
        assert_eq!(
            cfg["drives"],
            serde_json::json!([]),
            "Firecracker requires `drives`"
        );
        assert_eq!(cfg["boot-source"]["kernel_image_path"], "/g.elf");
        assert!(dir.join("firecracker.log").is_file());
        fs::remove_dir_all(&dir).unwrap();
    }
}
