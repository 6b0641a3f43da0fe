//! The command line: `petrel-jailer --id ID --exec-file PATH --uid N --gid N [options] --
//! PETREL ARGS`, checked before anything is created.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Where the jails go unless `--chroot-base-dir` says otherwise.
pub const DEFAULT_BASE: &str = "/srv/petrel-jailer";
/// `RLIMIT_NOFILE` unless `--resource-limit no-file=N` says otherwise.
pub const DEFAULT_NOFILE: u64 = 2048;
/// Longest id (it names a directory, a cgroup and the jail's host name).
pub const MAX_ID_LEN: usize = 64;

pub const USAGE: &str = "usage: petrel-jailer --id ID --exec-file PATH --uid UID --gid GID
         [--chroot-base-dir DIR | --chroot-dir DIR] [--bind SRC[=DEST]]...
         [--bind-ro SRC[=DEST]]...
         [--netns PATH | --new-netns] [--tun] [--daemonize]
         [--cgroup FILE=VALUE]... [--cgroup-version 1|2]
         [--resource-limit no-file=N|fsize=N|core=N]... [--allow-root]
         [-- PETREL ARGS...]
The jail is <chroot-base-dir>/<exec file name>/<id>/root (the process's `/`), or DIR itself
with --chroot-dir (then no pid file is written: the caller knows the pid); paths in the petrel
arguments are paths inside it.";

/// A file or directory of the host made visible in the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub src: PathBuf,
    /// Path inside the jail (absolute, no `..`).
    pub dest: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
}

/// How the network namespace is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNs {
    /// The jailer's own.
    Host,
    /// Join this one (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
    Join(PathBuf),
    /// A new, empty one.
    New,
}

/// Everything the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub id: String,
    pub exec_file: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub base: PathBuf,
    /// `--chroot-dir`: the jail's root itself (no per-id layout, no pid file).
    pub chroot_dir: Option<PathBuf>,
    pub binds: Vec<Bind>,
    pub netns: NetNs,
    pub tun: bool,
    pub daemonize: bool,
    /// `(file, value)` pairs, e.g. `("pids.max", "64")`.
    pub cgroups: Vec<(String, String)>,
    /// 1 or 2; `None`: detected.
    pub cgroup_version: Option<u8>,
    pub nofile: u64,
    pub fsize: Option<u64>,
    pub core: u64,
    pub petrel_args: Vec<OsString>,
}

impl Args {
    /// `<base>/<exec file name>/<id>`: the jail's directory (pid file, `root/`).
    pub fn jail_dir(&self) -> PathBuf {
        let name = self
            .exec_file
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("petrel"));
        self.base.join(name).join(&self.id)
    }

    /// The jail's root on the host.
    pub fn root(&self) -> PathBuf {
        match &self.chroot_dir {
            Some(d) => d.clone(),
            None => self.jail_dir().join("root"),
        }
    }

    /// Where petrel's host pid is written (`None` with `--chroot-dir`).
    pub fn pid_file(&self) -> Option<PathBuf> {
        self.chroot_dir
            .is_none()
            .then(|| self.jail_dir().join("petrel.pid"))
    }

    /// The path the executable has inside the jail.
    pub fn exec_in_jail(&self) -> PathBuf {
        let name = self.exec_file.file_name().unwrap_or_default();
        Path::new("/").join(name)
    }
}

/// An id names a directory and a cgroup: letters, digits, `-` and `_`, 1 to 64 of them.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!(
            "--id must have 1 to {MAX_ID_LEN} characters (got {})",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "--id {id:?}: {c:?} is not allowed (letters, digits, '-' and '_' only)"
        ));
    }
    Ok(())
}

/// A path inside the jail: absolute, no `..`, not `/` itself.
fn check_dest(dest: &Path) -> Result<(), String> {
    if !dest.is_absolute() {
        return Err(format!("{}: a jail path must be absolute", dest.display()));
    }
    if dest.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{}: a jail path may not contain '..'",
            dest.display()
        ));
    }
    if dest.components().all(|c| c == Component::RootDir) {
        return Err("cannot bind over the jail's '/'".into());
    }
    Ok(())
}

fn parse_bind(spec: &str, readonly: bool) -> Result<Bind, String> {
    let (src, dest) = match spec.split_once('=') {
        Some((s, d)) => (PathBuf::from(s), PathBuf::from(d)),
        None => (PathBuf::from(spec), PathBuf::from(spec)),
    };
    if !src.exists() {
        return Err(format!("--bind {spec}: {} does not exist", src.display()));
    }
    check_dest(&dest).map_err(|e| format!("--bind {spec}: {e}"))?;
    Ok(Bind {
        src,
        dest,
        readonly,
    })
}

fn parse_u64(what: &str, v: &str) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("{what}: {v:?} is not a non-negative integer"))
}

fn parse_id_number(what: &str, v: &str) -> Result<u32, String> {
    v.parse()
        .map_err(|_| format!("{what}: {v:?} is not a number"))
}

/// Parses and checks the command line (without the program name).
pub fn parse(argv: &[OsString]) -> Result<Args, String> {
    let mut id = None;
    let mut exec_file = None;
    let mut uid = None;
    let mut gid = None;
    let mut base = PathBuf::from(DEFAULT_BASE);
    let mut chroot_dir = None;
    let mut binds = Vec::new();
    let mut netns = NetNs::Host;
    let mut tun = false;
    let mut daemonize = false;
    let mut cgroups = Vec::new();
    let mut cgroup_version = None;
    let mut nofile = DEFAULT_NOFILE;
    let mut fsize = None;
    let mut core = 0;
    let mut allow_root = false;
    let mut petrel_args = Vec::new();

    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let arg = arg
            .to_str()
            .ok_or_else(|| format!("{arg:?}: not UTF-8 (before '--')"))?;
        if arg == "--" {
            petrel_args.extend(it.by_ref().cloned());
            break;
        }
        let flag = |name: &str| arg == name;
        let mut value = || -> Result<String, String> {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value"))?
                .to_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{arg}: value is not UTF-8"))
        };
        match arg {
            _ if flag("--id") => id = Some(value()?),
            _ if flag("--exec-file") => exec_file = Some(PathBuf::from(value()?)),
            _ if flag("--uid") => uid = Some(parse_id_number("--uid", &value()?)?),
            _ if flag("--gid") => gid = Some(parse_id_number("--gid", &value()?)?),
            _ if flag("--chroot-base-dir") => base = PathBuf::from(value()?),
            _ if flag("--chroot-dir") => chroot_dir = Some(PathBuf::from(value()?)),
            _ if flag("--bind") => binds.push(parse_bind(&value()?, false)?),
            _ if flag("--bind-ro") => binds.push(parse_bind(&value()?, true)?),
            _ if flag("--netns") => {
                if netns == NetNs::New {
                    return Err("--netns and --new-netns exclude each other".into());
                }
                netns = NetNs::Join(PathBuf::from(value()?));
            }
            _ if flag("--new-netns") => {
                if matches!(netns, NetNs::Join(_)) {
                    return Err("--netns and --new-netns exclude each other".into());
                }
                netns = NetNs::New;
            }
            _ if flag("--tun") => tun = true,
            _ if flag("--daemonize") => daemonize = true,
            _ if flag("--allow-root") => allow_root = true,
            _ if flag("--cgroup") => {
                let v = value()?;
                let (file, val) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--cgroup {v}: expected FILE=VALUE"))?;
                if file.is_empty()
                    || !file.contains('.')
                    || file.contains('/')
                    || file.starts_with('.')
                {
                    return Err(format!(
                        "--cgroup {v}: {file:?} is not a cgroup file name (controller.key)"
                    ));
                }
                cgroups.push((file.to_string(), val.to_string()));
            }
            _ if flag("--cgroup-version") => {
                cgroup_version = match value()?.as_str() {
                    "1" => Some(1),
                    "2" => Some(2),
                    other => return Err(format!("--cgroup-version {other}: expected 1 or 2")),
                }
            }
            _ if flag("--resource-limit") => {
                let v = value()?;
                let (key, val) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--resource-limit {v}: expected NAME=N"))?;
                let n = parse_u64("--resource-limit", val)?;
                match key {
                    "no-file" => nofile = n,
                    "fsize" => fsize = Some(n),
                    "core" => core = n,
                    _ => {
                        return Err(format!(
                            "--resource-limit {v}: unknown limit {key:?} (no-file, fsize, core)"
                        ))
                    }
                }
            }
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }

    let id = id.ok_or_else(|| format!("missing --id\n{USAGE}"))?;
    check_id(&id)?;
    let exec_file = exec_file.ok_or_else(|| format!("missing --exec-file\n{USAGE}"))?;
    match std::fs::metadata(&exec_file) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(format!(
                "--exec-file {}: not a regular file",
                exec_file.display()
            ))
        }
        Err(e) => return Err(format!("--exec-file {}: {e}", exec_file.display())),
    }
    let uid = uid.ok_or_else(|| format!("missing --uid\n{USAGE}"))?;
    let gid = gid.ok_or_else(|| format!("missing --gid\n{USAGE}"))?;
    if (uid == 0 || gid == 0) && !allow_root {
        return Err(format!(
            "--uid {uid} --gid {gid}: refusing to run petrel as root in its jail (pass \
             --allow-root to force it)"
        ));
    }
    if !base.is_absolute() {
        return Err(format!(
            "--chroot-base-dir {}: must be absolute",
            base.display()
        ));
    }
    if let Some(d) = &chroot_dir {
        if !d.is_absolute()
            || d.components().any(|c| c == Component::ParentDir)
            || d == Path::new("/")
        {
            return Err(format!(
                "--chroot-dir {}: must be absolute, without '..', and not '/'",
                d.display()
            ));
        }
    }
    if nofile < 16 {
        return Err(format!(
            "--resource-limit no-file={nofile}: petrel needs at least 16"
        ));
    }
    Ok(Args {
        id,
        exec_file,
        uid,
        gid,
        base,
        chroot_dir,
        binds,
        netns,
        tun,
        daemonize,
        cgroups,
        cgroup_version,
        nofile,
        fsize,
        core,
        petrel_args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn base(extra: &[&str]) -> Vec<OsString> {
        let mut v = vec![
            "--id",
            "vm-1",
            "--exec-file",
            "/bin/sh",
            "--uid",
            "1000",
            "--gid",
            "1000",
        ];
        v.extend_from_slice(extra);
        args(&v)
    }

    #[test]
    fn good_line() {
        let a = parse(&base(&[
            "--bind-ro",
            "/etc/hostname=/k/vmlinux",
            "--cgroup",
            "pids.max=64",
            "--resource-limit",
            "fsize=1024",
            "--",
            "--api-socket",
            "/run/api.sock",
        ]))
        .unwrap();
        assert_eq!(a.id, "vm-1");
        assert_eq!(a.jail_dir(), Path::new("/srv/petrel-jailer/sh/vm-1"));
        assert_eq!(a.exec_in_jail(), Path::new("/sh"));
        assert_eq!(a.binds[0].dest, Path::new("/k/vmlinux"));
        assert!(a.binds[0].readonly);
        assert_eq!(a.cgroups, vec![("pids.max".into(), "64".into())]);
        assert_eq!(a.fsize, Some(1024));
        assert_eq!(a.nofile, DEFAULT_NOFILE);
        assert_eq!(a.petrel_args, args(&["--api-socket", "/run/api.sock"]));
    }

    #[test]
    fn bad_ids() {
        for id in ["", "a/b", "..", "../x", "a b", "x.y", &"a".repeat(65)] {
            let mut v = base(&[]);
            v[1] = OsString::from(id);
            let e = parse(&v).unwrap_err();
            assert!(e.contains("--id"), "{id:?}: {e}");
        }
    }

    #[test]
    fn root_refused_unless_forced() {
        let mut v = base(&[]);
        v[5] = "0".into();
        let e = parse(&v).unwrap_err();
        assert!(e.contains("refusing") && e.contains("--allow-root"), "{e}");
        v.push("--allow-root".into());
        assert_eq!(parse(&v).unwrap().uid, 0);
    }

    #[test]
    fn missing_or_bad_exec_file() {
        let mut v = base(&[]);
        v[3] = "/nonexistent/petrel".into();
        let e = parse(&v).unwrap_err();
        assert!(e.contains("/nonexistent/petrel"), "{e}");
        v[3] = "/etc".into();
        assert!(parse(&v).unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn bad_binds_and_limits() {
        for (extra, word) in [
            (&["--bind", "/etc/hostname=relative"][..], "absolute"),
            (&["--bind", "/etc/hostname=/a/../b"][..], ".."),
            (&["--bind", "/etc/hostname=/"][..], "'/'"),
            (&["--bind", "/nonexistent"][..], "does not exist"),
            (&["--resource-limit", "no-file=4"][..], "at least"),
            (&["--resource-limit", "stack=4"][..], "unknown limit"),
            (&["--cgroup", "../../x=1"][..], "cgroup file"),
            (&["--netns", "/x", "--new-netns"][..], "exclude"),
            (&["--bogus"][..], "unknown argument"),
        ] {
            let e = parse(&base(extra)).unwrap_err();
            assert!(e.contains(word), "{extra:?}: {e}");
        }
    }
}
