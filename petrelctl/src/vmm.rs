//! The commands of the per-VM API (`petrel --api-socket`, Cloud Hypervisor's `/api/v1/…`
//! routes): parsing their words and running them.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use api::request::{Endpoint, Verb};
use api::{parse_size, ConfigError, DiskConfig, NetConfig, VmConfig, VsockConfig};
use petrel_http::Method;

use super::output;
use super::transport::Api;
use super::{CtlError, Outcome, Result};

/// A command that is one `PUT /api/v1/<route>` without a body.
#[derive(Debug, PartialEq, Eq)]
pub struct Action {
    /// The command word.
    pub word: &'static str,
    /// The API endpoint (`vm.boot`).
    pub endpoint: Endpoint,
    /// What is printed on success.
    pub done: &'static str,
    /// One line of help.
    pub help: &'static str,
}

/// Every body-less `PUT` command.
pub const ACTIONS: &[Action] = &[
    Action {
        word: "boot",
        endpoint: Endpoint::VmBoot,
        done: "VM booted",
        help: "boot the created VM",
    },
    Action {
        word: "pause",
        endpoint: Endpoint::VmPause,
        done: "VM paused",
        help: "pause every vCPU",
    },
    Action {
        word: "resume",
        endpoint: Endpoint::VmResume,
        done: "VM resumed",
        help: "resume a paused VM",
    },
    Action {
        word: "reboot",
        endpoint: Endpoint::VmReboot,
        done: "VM rebooted",
        help: "restart the guest with the same config",
    },
    Action {
        word: "power-button",
        endpoint: Endpoint::VmPowerButton,
        done: "power button pressed",
        help: "ACPI power button: ask the guest to shut down",
    },
    Action {
        word: "shutdown",
        endpoint: Endpoint::VmShutdown,
        done: "VM shut down",
        help: "stop the VM at once (force)",
    },
    Action {
        word: "delete",
        endpoint: Endpoint::VmDelete,
        done: "VM deleted",
        help: "delete the VM (the VMM keeps running)",
    },
    Action {
        word: "shutdown-vmm",
        endpoint: Endpoint::VmmShutdown,
        done: "VMM shutting down",
        help: "end the petrel process",
    },
];

/// A parsed command of the per-VM API.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// `ping`: `GET vmm.ping`.
    Ping,
    /// `info`: `GET vm.info`.
    Info,
    /// `counters`: `GET vm.counters`.
    Counters,
    /// `create FILE` (`-`: standard input): `PUT vm.create` with the validated VmConfig.
    Create(PathBuf),
    /// A body-less `PUT`.
    Action(&'static Action),
    /// `resize SIZE`: `PUT vm.resize {"desired_balloon": bytes}`.
    Resize(u64),
    /// `add-disk path=…[,readonly=on,…]`: `PUT vm.add-disk`.
    AddDisk(DiskConfig),
    /// `add-net tap=NAME[,mac=…]` or `fd=N` (N is sent with SCM_RIGHTS): `PUT vm.add-net`.
    AddNet(NetConfig),
    /// `add-vsock cid=C,socket=PATH`: `PUT vm.add-vsock`.
    AddVsock(VsockConfig),
    /// `remove-device ID`: `PUT vm.remove-device {"id": ID}`.
    RemoveDevice(String),
}

/// Usage and help of the commands that are not [`ACTIONS`].
const OTHERS: &[(&str, &str)] = &[
    ("ping", "version, pid, features and hypervisor of the VMM"),
    ("info", "the VM's state and configuration"),
    ("counters", "per-device counters"),
    (
        "create FILE",
        "create the VM from a JSON VmConfig (- reads standard input)",
    ),
    ("resize SIZE", "set the balloon target (e.g. 256M)"),
    ("add-disk SPEC", "add a disk: path=P[,readonly=on][,id=ID]…"),
    (
        "add-net SPEC",
        "add a network interface: tap=NAME[,mac=M] or fd=N",
    ),
    ("add-vsock SPEC", "add the vsock device: cid=C,socket=PATH"),
    ("remove-device ID", "remove a device added before boot"),
];

/// The command list of `--help`.
pub fn command_help() -> String {
    let mut rows: Vec<(String, &str)> = OTHERS[..4]
        .iter()
        .map(|(u, h)| (u.to_string(), *h))
        .collect();
    rows.extend(ACTIONS.iter().map(|a| (a.word.to_string(), a.help)));
    rows.extend(OTHERS[4..].iter().map(|(u, h)| (u.to_string(), *h)));
    let width = rows.iter().map(|(u, _)| u.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(usage, help)| format!("  {usage:width$}  {help}\n"))
        .collect()
}

/// Parses the command words.
pub fn parse(words: &[OsString]) -> Result<Command> {
    let Some((first, rest)) = words.split_first() else {
        return Err(CtlError::usage("missing command"));
    };
    let word = first
        .to_str()
        .ok_or_else(|| CtlError::usage(format!("unknown command {first:?}")))?;
    let arg = |what: &str| -> Result<&OsString> {
        match rest {
            [one] => Ok(one),
            [] => Err(CtlError::usage(format!("{word}: missing {what}"))),
            _ => Err(CtlError::usage(format!("{word}: expected only {what}"))),
        }
    };
    let text = |what: &str| -> Result<&str> {
        let a = arg(what)?;
        a.to_str()
            .ok_or_else(|| CtlError::usage(format!("{word}: {a:?} is not valid UTF-8")))
    };
    let spec = |e: ConfigError| CtlError::usage(format!("{word}: {e}"));
    let command = match word {
        "ping" => Command::Ping,
        "info" => Command::Info,
        "counters" => Command::Counters,
        "create" => Command::Create(PathBuf::from(arg("FILE")?)),
        "resize" => Command::Resize(
            parse_size(text("SIZE")?).map_err(|e| CtlError::usage(format!("resize: {e}")))?,
        ),
        "add-disk" => {
            let disk = DiskConfig::parse(text("SPEC")?).map_err(spec)?;
            disk.validate("disk").map_err(spec)?;
            Command::AddDisk(disk)
        }
        "add-net" => {
            let net = NetConfig::parse(text("SPEC")?).map_err(spec)?;
            net.validate("net").map_err(spec)?;
            Command::AddNet(net)
        }
        "add-vsock" => {
            let vsock = VsockConfig::parse(text("SPEC")?).map_err(spec)?;
            vsock.validate().map_err(spec)?;
            Command::AddVsock(vsock)
        }
        "remove-device" => Command::RemoveDevice(text("ID")?.to_string()),
        _ => match ACTIONS.iter().find(|a| a.word == word) {
            Some(action) => Command::Action(action),
            None => return Err(CtlError::usage(format!("unknown command '{word}'"))),
        },
    };
    let takes_argument = matches!(
        command,
        Command::Create(_)
            | Command::Resize(_)
            | Command::AddDisk(_)
            | Command::AddNet(_)
            | Command::AddVsock(_)
            | Command::RemoveDevice(_)
    );
    if !takes_argument && !rest.is_empty() {
        return Err(CtlError::usage(format!("{word}: takes no arguments")));
    }
    Ok(command)
}

/// The HTTP method of `endpoint`'s route.
fn method(endpoint: Endpoint) -> Method {
    match endpoint.verb() {
        Verb::Get => Method::Get,
        Verb::Put => Method::Put,
    }
}

/// `GET endpoint`; the server must answer with JSON.
fn get(api: &Api, endpoint: Endpoint) -> Result<Value> {
    let name = endpoint.name();
    api.call(name, method(endpoint), endpoint.path(), None, &[])?
        .json(name)?
        .ok_or_else(|| CtlError::failed(format!("{name}: empty response")))
}

/// `PUT endpoint` with an optional JSON body; the server's JSON answer, if any.
fn put(
    api: &Api,
    endpoint: Endpoint,
    body: Option<&Value>,
    fds: &[BorrowedFd<'_>],
) -> Result<Option<Value>> {
    let body = body.map(Value::to_string);
    let name = endpoint.name();
    api.call(
        name,
        method(endpoint),
        endpoint.path(),
        body.as_deref().map(str::as_bytes),
        fds,
    )?
    .json(name)
}

/// Serializes a config for a request body.
fn to_value(v: &impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| CtlError::failed(format!("serialize request: {e}")))
}

/// Runs `command` against `api`.
pub fn execute(api: &Api, command: &Command) -> Result<Outcome> {
    let (json, text) = match command {
        Command::Ping => {
            let v = get(api, Endpoint::VmmPing)?;
            let text = output::ping(&v);
            (Some(v), text)
        }
        Command::Info => {
            let v = get(api, Endpoint::VmInfo)?;
            let text = output::info(&v);
            (Some(v), text)
        }
        Command::Counters => {
            let v = get(api, Endpoint::VmCounters)?;
            let text = output::counters(&v);
            (Some(v), text)
        }
        Command::Create(file) => {
            let config = to_value(&load_config(file)?)?;
            (
                put(api, Endpoint::VmCreate, Some(&config), &[])?,
                "VM created\n".to_string(),
            )
        }
        Command::Action(action) => (
            put(api, action.endpoint, None, &[])?,
            format!("{}\n", action.done),
        ),
        Command::Resize(bytes) => {
            let body = json!({ "desired_balloon": bytes });
            let reply = put(api, Endpoint::VmResize, Some(&body), &[])?;
            (
                reply,
                format!("balloon target: {}\n", output::bytes(*bytes)),
            )
        }
        Command::AddDisk(disk) => added(
            put(api, Endpoint::VmAddDisk, Some(&to_value(disk)?), &[])?,
            "disk",
            disk.id.as_deref(),
        ),
        Command::AddNet(net) => {
            let fds = borrow_fds(net.fds.as_deref().unwrap_or_default())?;
            added(
                put(api, Endpoint::VmAddNet, Some(&to_value(net)?), &fds)?,
                "network interface",
                net.id.as_deref(),
            )
        }
        Command::AddVsock(vsock) => added(
            put(api, Endpoint::VmAddVsock, Some(&to_value(vsock)?), &[])?,
            "vsock device",
            vsock.id.as_deref(),
        ),
        Command::RemoveDevice(id) => {
            let reply = put(
                api,
                Endpoint::VmRemoveDevice,
                Some(&json!({ "id": id })),
                &[],
            )?;
            (reply, format!("device {id} removed\n"))
        }
    };
    Ok(Outcome { json, text })
}

/// `<what> added` plus the id (and PCI address) the server reported, if any; else the id
/// the request gave (before boot the server answers 204, as Cloud Hypervisor does).
fn added(reply: Option<Value>, what: &str, asked: Option<&str>) -> (Option<Value>, String) {
    let mut text = format!("{what} added");
    if let Some(id) = reply.as_ref().and_then(|v| v.get("id")) {
        text.push_str(&format!(": {}", output::scalar(id)));
    } else if let Some(id) = asked {
        text.push_str(&format!(": {id}"));
    }
    if let Some(bdf) = reply.as_ref().and_then(|v| v.get("bdf")) {
        text.push_str(&format!(" at {}", output::scalar(bdf)));
    }
    text.push('\n');
    (reply, text)
}

/// This process's descriptors `fds`, to send with SCM_RIGHTS; each must be open.
fn borrow_fds(fds: &[RawFd]) -> Result<Vec<BorrowedFd<'static>>> {
    fds.iter()
        .map(|&fd| {
            // SAFETY: F_GETFD only reads the descriptor flags of `fd`.
            if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(CtlError::failed(format!("add-net: fd {fd} is not open")));
            }
            // SAFETY: `fd` is open (checked above) and petrelctl never closes descriptors it
            // did not open, so it stays open for the rest of the process.
            Ok(unsafe { BorrowedFd::borrow_raw(fd) })
        })
        .collect()
}

/// Reads `file` (`-`: standard input) as a VmConfig and checks it as petrel would before
/// anything is sent. Errors name the file and the field.
pub fn load_config(file: &Path) -> Result<VmConfig> {
    let name = file.display();
    let mut text = String::new();
    let read = if file == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text).map(|_| ()))
    };
    read.map_err(|e| CtlError::failed(format!("cannot read {name}: {e}")))?;
    let config =
        VmConfig::from_json(&text).map_err(|e| CtlError::failed(format!("{name}: {e}")))?;
    validate_config(&config).map_err(|e| CtlError::failed(format!("{name}: {e}")))?;
    Ok(config)
}

/// [`VmConfig::validate`] and every device's own checks, naming the field.
pub fn validate_config(config: &VmConfig) -> std::result::Result<(), ConfigError> {
    config.validate()?;
    for (i, disk) in config.disks.iter().flatten().enumerate() {
        disk.validate(&format!("disks[{i}]"))?;
    }
    for (i, net) in config.net.iter().flatten().enumerate() {
        net.validate(&format!("net[{i}]"))?;
    }
    if let Some(rng) = &config.rng {
        rng.validate()?;
    }
    if let Some(vsock) = &config.vsock {
        vsock.validate()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(parse(&words(&["ping"])).unwrap(), Command::Ping);
        assert_eq!(
            parse(&words(&["resize", "256M"])).unwrap(),
            Command::Resize(256 << 20)
        );
        assert_eq!(
            parse(&words(&["power-button"])).unwrap(),
            Command::Action(&ACTIONS[4])
        );
        assert_eq!(
            parse(&words(&["remove-device", "_disk1"])).unwrap(),
            Command::RemoveDevice("_disk1".into())
        );
        for bad in [
            &["frobnicate"][..],
            &["boot", "now"],
            &["create"],
            &["create", "a", "b"],
            &["resize", "lots"],
            &["add-disk", "readonly=on"],
            &["add-vsock", "cid=2,socket=/s"],
        ] {
            let e = parse(&words(bad)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn help_lists_every_command() {
        let help = command_help();
        for a in ACTIONS {
            assert!(help.contains(a.word), "{}", a.word);
        }
        for (usage, _) in OTHERS {
            assert!(help.contains(usage), "{usage}");
        }
    }
}
