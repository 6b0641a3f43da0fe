//! Run-time choice of hypervisor backend and the host capability report.
//!
//! The rule: `auto` picks MSHV only where `/dev/mshv` exists, the MSHV backend is built in and
//! the `mshv` feature gate is on; otherwise KVM. An explicit request for a backend that is
//! missing, not built in or not permitted is an error naming the device and the cause.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::{Error, Hypervisor, Result};

/// Device node of KVM.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// Device node of Microsoft Hypervisor.
pub const MSHV_DEVICE: &str = "/dev/mshv";
/// Whether this build contains the MSHV backend (the `mshv` cargo feature).
pub const MSHV_BUILT_IN: bool = cfg!(feature = "mshv");

/// A hypervisor backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Linux KVM.
    Kvm,
    /// Microsoft Hypervisor through /dev/mshv.
    Mshv,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Kvm => "kvm",
            Kind::Mshv => "mshv",
        })
    }
}

/// What the user asked for (`--hypervisor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Request {
    /// MSHV where present and permitted, else KVM.
    #[default]
    Auto,
    /// KVM only.
    Kvm,
    /// MSHV only.
    Mshv,
}

impl FromStr for Request {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Request::Auto),
            "kvm" => Ok(Request::Kvm),
            "mshv" => Ok(Request::Mshv),
            other => Err(format!(
                "unknown hypervisor '{other}' (expected auto, kvm or mshv)"
            )),
        }
    }
}

/// The backend chosen and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The backend.
    pub kind: Kind,
    /// A sentence saying why it was chosen.
    pub reason: String,
}

/// The state of one hypervisor device node on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Present and openable read-write.
    Available,
    /// The node does not exist.
    Missing,
    /// Present but cannot be opened (the OS error).
    Inaccessible(String),
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceStatus::Available => f.write_str("available"),
            DeviceStatus::Missing => f.write_str("missing"),
            DeviceStatus::Inaccessible(e) => write!(f, "not accessible ({e})"),
        }
    }
}

/// What this host and build offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// /dev/kvm.
    pub kvm: DeviceStatus,
    /// /dev/mshv.
    pub mshv: DeviceStatus,
    /// Whether the MSHV backend is compiled in.
    pub mshv_built_in: bool,
}

fn device_status(path: &str) -> DeviceStatus {
    if !Path::new(path).exists() {
        return DeviceStatus::Missing;
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => DeviceStatus::Available,
        Err(e) => DeviceStatus::Inaccessible(e.to_string()),
    }
}

/// Probes the host's hypervisor devices.
pub fn capabilities() -> Capabilities {
    Capabilities {
        kvm: device_status(KVM_DEVICE),
        mshv: device_status(MSHV_DEVICE),
        mshv_built_in: MSHV_BUILT_IN,
    }
}

/// Decides which backend a request resolves to on a host with `caps`, without opening it.
pub fn decide(req: Request, caps: &Capabilities, mshv_gate: bool) -> Result<Selection> {
    let mshv_problem = match (&caps.mshv, caps.mshv_built_in, mshv_gate) {
        (DeviceStatus::Missing, ..) => Some(format!("{MSHV_DEVICE} does not exist")),
        (DeviceStatus::Inaccessible(e), ..) => Some(format!("{MSHV_DEVICE} cannot be opened: {e}")),
        (DeviceStatus::Available, false, _) => Some(format!(
            "{MSHV_DEVICE} exists but this petrel was built without the MSHV backend"
        )),
        (DeviceStatus::Available, true, false) => Some(format!(
            "{MSHV_DEVICE} exists but the mshv feature gate is off (--feature-gates mshv)"
        )),
        (DeviceStatus::Available, true, true) => None,
    };
    let kvm_problem = match &caps.kvm {
        DeviceStatus::Available => None,
        DeviceStatus::Missing => Some(format!("{KVM_DEVICE} does not exist")),
        DeviceStatus::Inaccessible(e) => Some(format!("{KVM_DEVICE} cannot be opened: {e}")),
    };
    match req {
        Request::Mshv => match mshv_problem {
            None => Ok(Selection {
                kind: Kind::Mshv,
                reason: "requested with --hypervisor mshv".into(),
            }),
            Some(p) => Err(Error::Unavailable(format!("hypervisor mshv: {p}"))),
        },
        Request::Kvm => match kvm_problem {
            None => Ok(Selection {
                kind: Kind::Kvm,
                reason: "requested with --hypervisor kvm".into(),
            }),
            Some(p) => Err(Error::Unavailable(format!("hypervisor kvm: {p}"))),
        },
        Request::Auto => match (mshv_problem, kvm_problem) {
            (None, _) => Ok(Selection {
                kind: Kind::Mshv,
                reason: format!("auto: {MSHV_DEVICE} present and the mshv gate is on"),
            }),
            (Some(m), None) => Ok(Selection {
                kind: Kind::Kvm,
                reason: format!("auto: {m}; using {KVM_DEVICE}"),
            }),
            (Some(m), Some(k)) => Err(Error::Unavailable(format!(
                "no usable hypervisor: {k}; {m}"
            ))),
        },
    }
}

/// Chooses and opens a backend.
pub fn open(req: Request, mshv_gate: bool) -> Result<(Box<dyn Hypervisor>, Selection)> {
    let selection = decide(req, &capabilities(), mshv_gate)?;
    let hv: Box<dyn Hypervisor> = match selection.kind {
        Kind::Kvm => Box::new(crate::kvm::KvmHypervisor::new()?),
        #[cfg(feature = "mshv")]
        Kind::Mshv => Box::new(crate::mshv::MshvHypervisor::new()?),
        #[cfg(not(feature = "mshv"))]
        Kind::Mshv => {
            return Err(Error::Unavailable(
                "hypervisor mshv: the MSHV backend is not built in".into(),
            ))
        }
    };
    Ok((hv, selection))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(kvm: DeviceStatus, mshv: DeviceStatus, built: bool) -> Capabilities {
        Capabilities {
            kvm,
            mshv,
            mshv_built_in: built,
        }
    }

    #[test]
    fn auto_prefers_mshv_only_when_present_built_and_gated() {
        use DeviceStatus::*;
        let both = caps(Available, Available, true);
        assert_eq!(decide(Request::Auto, &both, true).unwrap().kind, Kind::Mshv);
        let s = decide(Request::Auto, &both, false).unwrap();
        assert_eq!(s.kind, Kind::Kvm);
        assert!(s.reason.contains("gate"), "{}", s.reason);
        let not_built = caps(Available, Available, false);
        let s = decide(Request::Auto, &not_built, true).unwrap();
        assert_eq!(s.kind, Kind::Kvm);
        assert!(s.reason.contains("built without"), "{}", s.reason);
        let no_mshv = caps(Available, Missing, true);
        let s = decide(Request::Auto, &no_mshv, true).unwrap();
        assert!(
            s.reason.contains("/dev/mshv does not exist"),
            "{}",
            s.reason
        );
    }

    #[test]
    fn the_mshv_feature_builds_the_backend_in() {
        assert_eq!(MSHV_BUILT_IN, cfg!(feature = "mshv"));
        assert_eq!(capabilities().mshv_built_in, MSHV_BUILT_IN);
    }

    #[test]
    fn explicit_requests_name_the_device_and_cause() {
        use DeviceStatus::*;
        let e = decide(Request::Mshv, &caps(Available, Missing, true), true).unwrap_err();
        assert!(e.to_string().contains("/dev/mshv does not exist"));
        let e = decide(Request::Mshv, &caps(Available, Available, true), false).unwrap_err();
        assert!(e.to_string().contains("gate"));
        let e = decide(Request::Kvm, &caps(Missing, Missing, true), false).unwrap_err();
        assert!(e.to_string().contains("/dev/kvm does not exist"));
        let e = decide(
            Request::Auto,
            &caps(Inaccessible("denied".into()), Missing, false),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/dev/kvm cannot be opened: denied"));
        assert!("xen".parse::<Request>().is_err());
    }
}
