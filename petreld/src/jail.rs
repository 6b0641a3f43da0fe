//! A VM's petrel started through `petrel-jailer` (config `jailer`): the VM directory becomes
//! the jail's root (its API socket, logs and serial log stay where petreld reads them), the
//! VM's files are bind-mounted in at fixed jail paths, and the config petrel is given names
//! those paths. petreld keeps the jailer's pid: it waits for petrel, forwards SIGTERM, and
//! petrel dies with it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use api::{SerialMode, VmConfig};

use super::launcher::VmDir;

/// A host file and where the jailed petrel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub host: PathBuf,
    /// Path in the jail.
    pub jail: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
}

/// How a jailed petrel is started.
#[derive(Debug, Clone)]
pub struct Jail {
    /// The `petrel-jailer` binary.
    pub jailer: PathBuf,
    /// The VM's files.
    pub binds: Vec<Bind>,
}

/// `path` as seen from a jail whose root is `dir`, if it lies in `dir`.
fn inside(path: &Path, dir: &VmDir) -> Option<PathBuf> {
    path.strip_prefix(&dir.root)
        .ok()
        .map(|rel| Path::new("/").join(rel))
}

/// `config` (as petrel is given it outside a jail) with jail paths, and the binds that make
/// them exist. Files inside the VM directory keep their place (it is the jail's root);
/// a serial or vsock path outside it cannot be served from a jail.
pub fn plan(config: &VmConfig, dir: &VmDir) -> Result<(VmConfig, Vec<Bind>), String> {
    let mut c = config.clone();
    let mut binds = Vec::new();
    let mut bind = |host: &Path, jail: String, readonly: bool| -> PathBuf {
        if let Some(p) = inside(host, dir) {
            return p;
        }
        let jail = PathBuf::from(jail);
        binds.push(Bind {
            host: host.to_path_buf(),
            jail: jail.clone(),
            readonly,
        });
        jail
    };
    c.payload.kernel = bind(&config.payload.kernel, "/vm/kernel".into(), true);
    if let Some(i) = &config.payload.initramfs {
        c.payload.initramfs = Some(bind(i, "/vm/initramfs".into(), true));
    }
    if let Some(disks) = c.disks.as_mut() {
        for (n, d) in disks.iter_mut().enumerate() {
            d.path = bind(&d.path.clone(), format!("/vm/disk{n}"), d.readonly);
        }
    }
    if let Some(rng) = c.rng.as_mut() {
        // The jail has its own /dev/urandom.
        if rng.src != Path::new("/dev/urandom") {
            rng.src = bind(&rng.src.clone(), "/vm/rng".into(), true);
        }
    }
    if c.serial.mode == SerialMode::File {
        if let Some(f) = &c.serial.file {
            c.serial.file = Some(inside(f, dir).ok_or_else(|| {
                format!(
                    "serial file {}: a jailed petrel writes only inside its VM directory",
                    f.display()
                )
            })?);
        }
    }
    if let Some(v) = c.vsock.as_mut() {
        v.socket = inside(&v.socket, dir).ok_or_else(|| {
            format!(
                "vsock socket {}: a jailed petrel makes sockets only inside its VM directory",
                v.socket.display()
            )
        })?;
    }
    Ok((c, binds))
}

/// The jailer's command line for VM `id` (petrel's own arguments follow `--`).
pub fn jailer_args(
    jail: &Jail,
    petrel: &Path,
    dir: &VmDir,
    id: &str,
    uid_gid: Option<(u32, u32)>,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "--id".into(),
        id.into(),
        "--exec-file".into(),
        petrel.into(),
    ];
    let (uid, gid) = uid_gid.unwrap_or((0, 0));
    a.extend(["--uid".into(), uid.to_string().into()]);
    a.extend(["--gid".into(), gid.to_string().into()]);
    if uid == 0 || gid == 0 {
        // No run_as: namespaces and the private root still apply.
        a.push("--allow-root".into());
    }
    a.extend(["--chroot-dir".into(), dir.root.clone().into_os_string()]);
    for b in &jail.binds {
        let flag = if b.readonly { "--bind-ro" } else { "--bind" };
        let mut spec = b.host.clone().into_os_string();
        spec.push("=");
        spec.push(&b.jail);
        a.extend([flag.into(), spec]);
    }
    a.push("--".into());
    a
}

/// Where petrel's files are for a jailed petrel (paths in the jail's root, the VM directory).
pub fn petrel_paths(dir: &VmDir) -> (PathBuf, PathBuf) {
    let socket = inside(&dir.socket(), dir).unwrap_or_else(|| PathBuf::from("/api.sock"));
    let log = inside(&dir.petrel_log(), dir).unwrap_or_else(|| PathBuf::from("/petrel.log"));
    (socket, log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_outside_the_vm_directory_are_bound_in() {
        let dir = VmDir {
            root: PathBuf::from("/var/lib/petreld/vms/abc"),
        };
        let mut cfg = VmConfig::new("/img/vmlinux".into());
        cfg.disks = Some(
            serde_json::from_value(serde_json::json!([
                {"path": "/img/root.img", "readonly": true},
                {"path": "/var/lib/petreld/vms/abc/scratch.img"},
            ]))
            .unwrap(),
        );
        cfg.serial.mode = SerialMode::File;
        cfg.serial.file = Some(dir.serial_log());
        let (c, binds) = plan(&cfg, &dir).unwrap();
        assert_eq!(c.payload.kernel, Path::new("/vm/kernel"));
        let disks = c.disks.unwrap();
        assert_eq!(disks[0].path, Path::new("/vm/disk0"));
        assert_eq!(
            disks[1].path,
            Path::new("/scratch.img"),
            "inside the VM directory"
        );
        assert_eq!(c.serial.file.as_deref(), Some(Path::new("/serial.log")));
        assert_eq!(
            binds,
            vec![
                Bind {
                    host: "/img/vmlinux".into(),
                    jail: "/vm/kernel".into(),
                    readonly: true
                },
                Bind {
                    host: "/img/root.img".into(),
                    jail: "/vm/disk0".into(),
                    readonly: true
                },
            ]
        );
        cfg.serial.file = Some("/tmp/serial.log".into());
        assert!(plan(&cfg, &dir).unwrap_err().contains("serial file"));
    }
}
