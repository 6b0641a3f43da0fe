//! The commands of petreld (`petrelctl [--socket PATH] …`): parsing their words into a
//! [`Command`]. [`run`] sends them and [`render`] prints the answers for people.

pub mod network;
pub mod render;
pub mod run;
pub mod storage;
mod template_versions;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use api::petreld::{HypervisorRequest, RestartPolicy};

use super::{CtlError, Result};

pub use run::execute;

/// A VM action: `POST /v1/vms/{id}/<word>`, answered with the VM.
#[derive(Debug, PartialEq, Eq)]
pub struct VmAction {
    /// The command word and route suffix.
    pub word: &'static str,
    /// One line of help.
    pub help: &'static str,
}

/// Every VM action.
pub const VM_ACTIONS: &[VmAction] = &[
    VmAction {
        word: "start",
        help: "start a stopped VM",
    },
    VmAction {
        word: "stop",
        help: "power button, then force after --timeout S (petreld's default)",
    },
    VmAction {
        word: "kill",
        help: "stop at once",
    },
    VmAction {
        word: "pause",
        help: "pause every vCPU",
    },
    VmAction {
        word: "resume",
        help: "resume a paused VM",
    },
    VmAction {
        word: "reboot",
        help: "restart the guest",
    },
];

/// `vm create`: where the request comes from and what the flags change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CreateSpec {
    /// A JSON VmConfig or a full create request (`-`: standard input).
    pub file: Option<PathBuf>,
    /// `--name`.
    pub name: Option<String>,
    /// `--template`.
    pub template: Option<String>,
    /// `--set key.path=value` (value: JSON, else a string).
    pub sets: Vec<(String, String)>,
    /// `--label k=v`.
    pub labels: Vec<(String, String)>,
    /// `--restart`.
    pub restart: Option<RestartPolicy>,
    /// `--hypervisor`.
    pub hypervisor: Option<HypervisorRequest>,
    /// `--no-start`: only record the VM.
    pub no_start: bool,
    /// `--net network=N[,ip=A,mac=M,vlan=V,id=I]` or `bridge=B[,…]`: interfaces petreld
    /// makes taps for.
    pub nets: Vec<String>,
    /// `--template-version N`.
    pub template_version: Option<u32>,
    /// `--description TEXT`.
    pub description: Option<String>,
    /// `--tag T` (repeatable).
    pub tags: Vec<String>,
}

/// `vm list`: filters, order, page.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListSpec {
    /// `--state`.
    pub state: Option<String>,
    /// `--label k=v` (every one must match).
    pub labels: Vec<String>,
    /// `--name`.
    pub name: Option<String>,
    /// `--hypervisor`.
    pub hypervisor: Option<String>,
    /// `--tag T` (every one must be on the VM).
    pub tags: Vec<String>,
    /// `--template T`.
    pub template: Option<String>,
    /// `--description TEXT` (contained in the VM's).
    pub description: Option<String>,
    /// `--sort name|created|-name|-created`.
    pub sort: Option<String>,
    /// `--limit N`: page size.
    pub limit: Option<usize>,
    /// `--all`: follow continuation tokens.
    pub all: bool,
}

/// A parsed petreld command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// `vm create`.
    VmCreate(Box<CreateSpec>),
    /// `vm list`.
    VmList(ListSpec),
    /// `vm get ID|NAME`.
    VmGet(String),
    /// `vm start|stop|kill|pause|resume|reboot ID|NAME`; `timeout` only for stop.
    VmAction {
        /// Which.
        action: &'static VmAction,
        /// ID or name.
        vm: String,
        /// `stop --timeout S`.
        timeout: Option<u64>,
    },
    /// `vm delete ID|NAME`.
    VmDelete(String),
    /// `vm console ID|NAME [--tail N]`.
    VmConsole {
        /// ID or name.
        vm: String,
        /// Last N bytes.
        tail: Option<u64>,
    },
    /// `template create FILE [--name N]`.
    TemplateCreate {
        /// A template (`name`, `config`, `description`) or a bare VmConfig.
        file: PathBuf,
        /// The name (required with a bare VmConfig).
        name: Option<String>,
    },
    /// `template list`.
    TemplateList,
    /// `template get NAME`.
    TemplateGet(String),
    /// `template delete NAME`.
    TemplateDelete(String),
    /// `vm snapshot ID|NAME [--name N]`.
    VmSnapshot {
        /// ID or name.
        vm: String,
        /// The snapshot's name (petreld picks one otherwise).
        name: Option<String>,
    },
    /// `vm restore ID|NAME SNAPSHOT` (also `vm revert`).
    VmRestore {
        /// ID or name.
        vm: String,
        /// The snapshot.
        snapshot: String,
    },
    /// `vm migrate ID|NAME --to SOCKET`.
    VmMigrate {
        /// ID or name.
        vm: String,
        /// The destination petreld's socket.
        to: PathBuf,
    },
    /// `snapshot list ID|NAME`.
    SnapshotList(String),
    /// `snapshot get ID|NAME SNAPSHOT`.
    SnapshotGet {
        /// ID or name of the VM.
        vm: String,
        /// The snapshot.
        name: String,
    },
    /// `snapshot delete ID|NAME SNAPSHOT`.
    SnapshotDelete {
        /// ID or name of the VM.
        vm: String,
        /// The snapshot.
        name: String,
    },
    /// `host`.
    Host,
    /// `gates`.
    Gates,
    /// `network …`.
    Network(network::NetworkCommand),
    /// `template versions|version|add-version …`.
    TemplateVersions(template_versions::VersionCommand),
    /// `pool …` and `volume …`.
    Storage(storage::StorageCommand),
}

impl Command {
    /// The time one request may take: `default`, but long enough for a graceful stop.
    pub fn request_timeout(&self, default: Duration) -> Duration {
        match self {
            Command::VmAction {
                timeout: Some(s), ..
            } => default.max(Duration::from_secs(s.saturating_add(15))),
            // Memory is written or moved: minutes for a large VM.
            Command::VmSnapshot { .. } | Command::VmRestore { .. } | Command::VmMigrate { .. } => {
                default.max(Duration::from_secs(600))
            }
            _ => default,
        }
    }
}

/// Usage and help lines.
const HELP: &[(&str, &str)] = &[
    (
        "vm create FILE|--name N [--template T]",
        "create (and start) a VM from a VmConfig or create request",
    ),
    (
        "  [--set k.path=V]… [--label k=v]…",
        "override template fields (V: JSON or text); labels",
    ),
    (
        "  [--restart never|on-failure|always]",
        "restart policy; [--hypervisor auto|kvm|mshv] [--no-start]",
    ),
    (
        "  [--net network=N[,ip=A,mac=M,vlan=V]]…",
        "interfaces on petreld networks (or bridge=B)",
    ),
    (
        "  [--template-version V] [--description D]",
        "a template's version (default latest); free text",
    ),
    ("  [--tag T]…", "tags"),
    (
        "vm list [--state S] [--label k=v]…",
        "list VMs; [--name N] [--hypervisor H] [--sort [-]name|created]",
    ),
    (
        "  [--tag T]… [--template T] [--description D]",
        "VMs with every tag, from template T, description containing D",
    ),
    (
        "  [--limit N] [--all]",
        "page size; --all follows continuation tokens",
    ),
    ("vm get ID|NAME", "one VM"),
    ("vm start|kill|pause|resume|reboot ID|NAME", "VM actions"),
    (
        "vm stop [--timeout S] ID|NAME",
        "power button, forced after S seconds",
    ),
    ("vm delete ID|NAME", "stop the VM and forget it"),
    (
        "vm snapshot ID|NAME [--name N]",
        "snapshot a running or paused VM (it runs on)",
    ),
    (
        "vm restore ID|NAME SNAPSHOT",
        "bring the VM back to a snapshot (also: vm revert)",
    ),
    (
        "vm migrate ID|NAME --to SOCKET",
        "move the VM live to the petreld at SOCKET",
    ),
    (
        "snapshot list|get|delete ID|NAME [SNAPSHOT]",
        "a VM's snapshots",
    ),
    (
        "vm console ID|NAME [--tail BYTES]",
        "the serial log (last BYTES)",
    ),
    (
        "template create FILE [--name N]",
        "a template (or a VmConfig named N)",
    ),
    (
        "template list|get NAME|delete NAME",
        "templates (get: the latest version)",
    ),
    (
        "template add-version NAME FILE|--from-vm VM",
        "a new version from a VmConfig or a VM's; [--description D]",
    ),
    (
        "template versions NAME | version NAME V",
        "a template's versions",
    ),
    (
        "network create NAME --type nat|isolated",
        "a network: --subnet CIDR [--gateway IP] [--dhcp-range A-B]",
    ),
    (
        "network create NAME --type bridged",
        "an existing host bridge: --bridge BR",
    ),
    (
        "network list|show NAME|delete NAME",
        "networks (show: VMs, dnsmasq, leases)",
    ),
    ("host", "hypervisors, CPUs, memory, admission"),
    ("gates", "feature gates"),
];

/// The command list of `--help`.
pub fn command_help() -> String {
    let all = || HELP.iter().chain(storage::HELP);
    let width = all().map(|(u, _)| u.len()).max().unwrap_or(0);
    all()
        .map(|(usage, help)| format!("  {usage:width$}  {help}\n"))
        .collect()
}

/// A command's words split into positionals and options.
struct Words {
    cmd: String,
    positional: Vec<String>,
    options: Vec<(&'static str, String)>,
    switches: Vec<&'static str>,
}

impl Words {
    /// Splits `words` by the options `valued` (take a value) and `switches` (do not).
    fn split(
        cmd: String,
        words: &[OsString],
        valued: &[&'static str],
        switches: &[&'static str],
    ) -> Result<Words> {
        let mut w = Words {
            cmd,
            positional: Vec::new(),
            options: Vec::new(),
            switches: Vec::new(),
        };
        let mut it = words.iter();
        let mut options_done = false;
        while let Some(word) = it.next() {
            let text = word.to_str().ok_or_else(|| {
                CtlError::usage(format!("{}: {word:?} is not valid UTF-8", w.cmd))
            })?;
            if options_done || !text.starts_with('-') || text == "-" {
                w.positional.push(text.to_string());
                continue;
            }
            if text == "--" {
                options_done = true;
                continue;
            }
            let (name, inline) = match text.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (text, None),
            };
            if let Some(&known) = valued.iter().find(|v| **v == name) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .and_then(|v| v.to_str())
                        .map(str::to_string)
                        .ok_or_else(|| {
                            CtlError::usage(format!("{}: {name} needs a value", w.cmd))
                        })?,
                };
                w.options.push((known, value));
            } else if let Some(&known) = switches.iter().find(|s| **s == name) {
                if inline.is_some() {
                    return Err(CtlError::usage(format!("{}: {name} takes no value", w.cmd)));
                }
                w.switches.push(known);
            } else {
                return Err(CtlError::usage(format!(
                    "{}: unknown option '{text}'",
                    w.cmd
                )));
            }
        }
        Ok(w)
    }

    /// The last value of option `name`.
    fn get(&self, name: &str) -> Option<String> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    /// Every value of option `name`, in order.
    fn all(&self, name: &str) -> Vec<String> {
        self.options
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn has(&self, switch: &str) -> bool {
        self.switches.contains(&switch)
    }

    /// Option `name` parsed with `FromStr`.
    fn parsed<T: std::str::FromStr>(&self, name: &str, what: &str) -> Result<Option<T>> {
        self.get(name)
            .map(|v| {
                v.parse::<T>().map_err(|_| {
                    CtlError::usage(format!("{}: {name} {v:?}: expected {what}", self.cmd))
                })
            })
            .transpose()
    }

    /// The single positional argument `what`.
    fn one(&self, what: &str) -> Result<String> {
        match self.positional.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(CtlError::usage(format!("{}: missing {what}", self.cmd))),
            _ => Err(CtlError::usage(format!(
                "{}: expected only {what}",
                self.cmd
            ))),
        }
    }

    /// At most one positional argument.
    fn two(&self, what: &str) -> Result<(String, String)> {
        match self.positional.as_slice() {
            [a, b] => Ok((a.clone(), b.clone())),
            _ => Err(CtlError::usage(format!("{}: expected {what}", self.cmd))),
        }
    }

    fn optional(&self, what: &str) -> Result<Option<String>> {
        match self.positional.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            _ => Err(CtlError::usage(format!(
                "{}: expected at most one {what}",
                self.cmd
            ))),
        }
    }

    fn none(&self) -> Result<()> {
        match self.positional.first() {
            None => Ok(()),
            Some(extra) => Err(CtlError::usage(format!(
                "{}: unexpected argument '{extra}'",
                self.cmd
            ))),
        }
    }
}

/// `k=v` (both sides non-empty on the key) or a usage error.
fn key_value(cmd: &str, option: &str, text: &str) -> Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(CtlError::usage(format!(
            "{cmd}: {option} {text:?}: expected key=value"
        ))),
    }
}

/// Parses the command words.
pub fn parse(words: &[OsString]) -> Result<Command> {
    let text = |w: &OsString| {
        w.to_str()
            .map(str::to_string)
            .ok_or_else(|| CtlError::usage(format!("unknown command {w:?}")))
    };
    let Some((first, rest)) = words.split_first() else {
        return Err(CtlError::usage("missing command"));
    };
    let group = text(first)?;
    match group.as_str() {
        "host" | "gates" => {
            Words::split(group.clone(), rest, &[], &[])?.none()?;
            return Ok(if group == "host" {
                Command::Host
            } else {
                Command::Gates
            });
        }
        "pool" | "volume" => return storage::parse(&group, rest).map(Command::Storage),
        "vm" | "template" | "network" | "snapshot" => {}
        _ if super::vmm::parse(words).is_ok() => {
            return Err(CtlError::usage(format!(
                "'{group}' is a per-VM API command: missing --api-socket PATH"
            )))
        }
        _ => return Err(CtlError::usage(format!("unknown command '{group}'"))),
    }
    let Some((second, rest)) = rest.split_first() else {
        return Err(CtlError::usage(format!("{group}: missing command")));
    };
    let verb = text(second)?;
    let cmd = format!("{group} {verb}");
    let split = |valued: &[&'static str], switches: &[&'static str]| {
        Words::split(cmd.clone(), rest, valued, switches)
    };
    if group == "network" {
        return network::parse(&verb, rest);
    }
    let command = match (group.as_str(), verb.as_str()) {
        ("vm", "create") => {
            let w = split(
                &[
                    "--name",
                    "--template",
                    "--set",
                    "--label",
                    "--restart",
                    "--hypervisor",
                    "--net",
                    "--template-version",
                    "--description",
                    "--tag",
                ],
                &["--no-start"],
            )?;
            let spec = CreateSpec {
                file: w.optional("FILE")?.map(PathBuf::from),
                name: w.get("--name"),
                template: w.get("--template"),
                sets: w
                    .all("--set")
                    .iter()
                    .map(|s| key_value(&cmd, "--set", s))
                    .collect::<Result<_>>()?,
                labels: w
                    .all("--label")
                    .iter()
                    .map(|s| key_value(&cmd, "--label", s))
                    .collect::<Result<_>>()?,
                restart: w.parsed("--restart", "never, on-failure or always")?,
                hypervisor: w.parsed("--hypervisor", "auto, kvm or mshv")?,
                no_start: w.has("--no-start"),
                nets: w.all("--net"),
                template_version: w.parsed("--template-version", "a version number")?,
                description: w.get("--description"),
                tags: w.all("--tag"),
            };
            for n in &spec.nets {
                network::net_spec(n)?;
            }
            if spec.file.is_none() && spec.template.is_none() {
                return Err(CtlError::usage(format!(
                    "{cmd}: give FILE (a VmConfig or create request) or --template T"
                )));
            }
            if spec.file.is_none() && spec.name.is_none() {
                return Err(CtlError::usage(format!("{cmd}: --name is required")));
            }
            Command::VmCreate(Box::new(spec))
        }
        ("vm", "list") => {
            let w = split(
                &[
                    "--state",
                    "--label",
                    "--name",
                    "--hypervisor",
                    "--sort",
                    "--limit",
                    "--tag",
                    "--template",
                    "--description",
                ],
                &["--all"],
            )?;
            w.none()?;
            let labels = w.all("--label");
            for l in &labels {
                key_value(&cmd, "--label", l)?;
            }
            let limit = w
                .parsed::<usize>("--limit", "a page size of 1 or more")?
                .filter(|n| *n > 0);
            if w.get("--limit").is_some() && limit.is_none() {
                return Err(CtlError::usage(format!("{cmd}: --limit must be 1 or more")));
            }
            Command::VmList(ListSpec {
                state: w.get("--state"),
                labels,
                name: w.get("--name"),
                hypervisor: w.get("--hypervisor"),
                tags: w.all("--tag"),
                template: w.get("--template"),
                description: w.get("--description"),
                sort: w.get("--sort"),
                limit,
                all: w.has("--all"),
            })
        }
        ("vm", "get") => Command::VmGet(split(&[], &[])?.one("ID|NAME")?),
        ("vm", "delete") => Command::VmDelete(split(&[], &[])?.one("ID|NAME")?),
        ("vm", "snapshot") => {
            let w = split(&["--name"], &[])?;
            Command::VmSnapshot {
                vm: w.one("ID|NAME")?,
                name: w.get("--name"),
            }
        }
        ("vm", "restore" | "revert") => {
            let (vm, snapshot) = split(&[], &[])?.two("ID|NAME SNAPSHOT")?;
            Command::VmRestore { vm, snapshot }
        }
        ("vm", "migrate") => {
            let w = split(&["--to"], &[])?;
            let to = w.get("--to").ok_or_else(|| {
                CtlError::usage(format!(
                    "{cmd}: --to SOCKET (the other petreld's) is required"
                ))
            })?;
            Command::VmMigrate {
                vm: w.one("ID|NAME")?,
                to: PathBuf::from(to),
            }
        }
        ("snapshot", "list") => Command::SnapshotList(split(&[], &[])?.one("ID|NAME")?),
        ("snapshot", "get") => {
            let (vm, name) = split(&[], &[])?.two("ID|NAME SNAPSHOT")?;
            Command::SnapshotGet { vm, name }
        }
        ("snapshot", "delete") => {
            let (vm, name) = split(&[], &[])?.two("ID|NAME SNAPSHOT")?;
            Command::SnapshotDelete { vm, name }
        }
        ("vm", "console") => {
            let w = split(&["--tail"], &[])?;
            Command::VmConsole {
                vm: w.one("ID|NAME")?,
                tail: w.parsed("--tail", "a number of bytes")?,
            }
        }
        ("vm", word) => {
            let Some(action) = VM_ACTIONS.iter().find(|a| a.word == word) else {
                return Err(CtlError::usage(format!("unknown command '{cmd}'")));
            };
            let valued: &[&'static str] = if word == "stop" { &["--timeout"] } else { &[] };
            let w = split(valued, &[])?;
            Command::VmAction {
                action,
                vm: w.one("ID|NAME")?,
                timeout: w.parsed("--timeout", "seconds (0 to 3600)")?,
            }
        }
        ("template", "create") => {
            let w = split(&["--name"], &[])?;
            Command::TemplateCreate {
                file: PathBuf::from(w.one("FILE")?),
                name: w.get("--name"),
            }
        }
        ("template", "list") => {
            split(&[], &[])?.none()?;
            Command::TemplateList
        }
        ("template", "get") => Command::TemplateGet(split(&[], &[])?.one("NAME")?),
        ("template", verb @ ("versions" | "version" | "add-version")) => {
            return template_versions::parse(verb, rest)
        }
        ("template", "delete") => Command::TemplateDelete(split(&[], &[])?.one("NAME")?),
        _ => return Err(CtlError::usage(format!("unknown command '{cmd}'"))),
    };
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_commands() {
        let c = parse(&words(&[
            "vm",
            "create",
            "--name=web",
            "--template",
            "small",
            "--set",
            "memory.size=134217728",
            "--label",
            "app=x",
            "--restart",
            "on-failure",
        ]))
        .unwrap();
        let Command::VmCreate(spec) = c else { panic!() };
        assert_eq!(spec.name.as_deref(), Some("web"));
        assert_eq!(spec.sets, [("memory.size".into(), "134217728".into())]);
        assert_eq!(spec.restart, Some(RestartPolicy::OnFailure));
        assert_eq!(
            parse(&words(&["vm", "stop", "--timeout", "3", "web"])).unwrap(),
            Command::VmAction {
                action: &VM_ACTIONS[1],
                vm: "web".into(),
                timeout: Some(3)
            }
        );
        let c = parse(&words(&[
            "vm",
            "list",
            "--all",
            "--label",
            "a=b",
            "--limit=2",
        ]))
        .unwrap();
        let Command::VmList(l) = c else { panic!() };
        assert!(l.all);
        assert_eq!(l.limit, Some(2));
        assert_eq!(
            parse(&words(&["vm", "migrate", "web", "--to", "/b.sock"])).unwrap(),
            Command::VmMigrate {
                vm: "web".into(),
                to: "/b.sock".into()
            }
        );
        assert_eq!(
            parse(&words(&["vm", "revert", "web", "s1"])).unwrap(),
            Command::VmRestore {
                vm: "web".into(),
                snapshot: "s1".into()
            }
        );
        assert_eq!(
            parse(&words(&["snapshot", "delete", "web", "s1"])).unwrap(),
            Command::SnapshotDelete {
                vm: "web".into(),
                name: "s1".into()
            }
        );
        assert_eq!(
            parse(&words(&["vm", "get", "--", "-odd"])).unwrap(),
            Command::VmGet("-odd".into())
        );
        for bad in [
            &["frob"][..],
            &["vm"],
            &["vm", "frob", "x"],
            &["vm", "get"],
            &["vm", "get", "a", "b"],
            &["vm", "kill", "--timeout", "3", "x"],
            &["vm", "create", "--name", "x"],
            &["vm", "create", "--template", "t"],
            &["vm", "create", "f", "--restart", "sometimes"],
            &["vm", "create", "f", "--label", "novalue"],
            &["vm", "list", "--limit", "0"],
            &["vm", "list", "extra"],
            &["vm", "console", "x", "--tail", "lots"],
            &["host", "x"],
            &["template", "list", "--bogus"],
            &["vm", "migrate", "x"],
            &["vm", "restore", "x"],
            &["snapshot", "delete", "x"],
            &["snapshot", "frob", "x"],
        ] {
            let e = parse(&words(bad)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
