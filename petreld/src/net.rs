//! The tap devices petreld creates for a VM's network interfaces, so that petrel needs no
//! network privileges: one tap per interface (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, named
//! after the VM id), optionally enslaved to an existing bridge, brought up, and handed to
//! petrel with `vm.add-net` and SCM_RIGHTS before `vm.boot`.
//!
//! The taps are not persistent: petreld closes its descriptor once petrel has its copy, so a
//! tap lives exactly as long as the petrel using it. Nothing leaks when a start fails, and a
//! VM's taps disappear when it stops or is deleted (they are made again on the next start,
//! with the same names and guest MACs).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// `SIOCBRADDIF` (linux/sockios.h): adds an interface (by index) to a bridge.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Interfaces one VM may ask petreld for.
pub const MAX_INTERFACES: usize = 8;

/// One interface asked for in `POST /v1/vms` (`net`), or a `config.net` entry without `tap`
/// and `fds`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRequest {
    /// Device id in the guest config (default `net<index>`).
    #[serde(default)]
    pub id: Option<String>,
    /// Guest MAC; a stable one derived from the VM id and the index when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// An existing bridge the tap is attached to.
    #[serde(default)]
    pub bridge: Option<String>,
    /// A petreld network (`/v1/networks`) the interface joins (instead of `bridge`).
    #[serde(default)]
    pub network: Option<String>,
    /// A fixed IPv4 address on that network, given by its DHCP server.
    #[serde(default)]
    pub ip: Option<String>,
    /// A VLAN (1-4094) the tap is an untagged member of, on a bridge with VLAN filtering
    /// (`bridge` or a bridged network).
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Bandwidth and packet limits (QoS), enforced by petrel's rate limiter.
    #[serde(default)]
    pub rate_limiter: Option<api::RateLimiterConfig>,
}

/// An interface petreld manages for a VM (stored with it, shown by `GET /v1/vms/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedNet {
    /// Device id.
    pub id: String,
    /// Host tap name.
    pub tap: String,
    /// Guest MAC.
    pub mac: String,
    /// Bridge the tap is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The petreld network it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Its fixed address on that network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Its VLAN on the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Its rate limits, passed to petrel with the tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<api::RateLimiterConfig>,
}

/// The tap name of interface `index` of VM `vm_id`: `pt` + 10 id digits + the index (at most
/// 14 bytes, under `IFNAMSIZ`).
pub fn tap_name(vm_id: &str, index: usize) -> String {
    let short: String = vm_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    format!("pt{short}{index}")
}

/// A stable, locally administered unicast MAC for interface `index` of VM `vm_id`.
pub fn stable_mac(vm_id: &str, index: usize) -> String {
    // FNV-1a over "id/index".
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{vm_id}/{index}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

/// Whether `name` is an existing bridge on the host.
pub fn bridge_exists(name: &str) -> bool {
    valid_ifname(name)
        && Path::new("/sys/class/net")
            .join(name)
            .join("bridge")
            .is_dir()
}

/// Whether bridge `name` filters by VLAN.
pub fn vlan_filtering(name: &str) -> bool {
    valid_ifname(name)
        && std::fs::read_to_string(
            Path::new("/sys/class/net")
                .join(name)
                .join("bridge/vlan_filtering"),
        )
        .is_ok_and(|v| v.trim() == "1")
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
}

/// The interfaces of VM `vm_id`: names, MACs and bridges checked. Errors name the field
/// (`net[1].bridge: …`) and are the caller's mistakes (4xx).
pub fn plan(vm_id: &str, requests: &[NetRequest]) -> Result<Vec<ManagedNet>, String> {
    if requests.len() > MAX_INTERFACES {
        return Err(format!(
            "net: {} interfaces, at most {MAX_INTERFACES}",
            requests.len()
        ));
    }
    let mut out: Vec<ManagedNet> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let id = r.id.clone().unwrap_or_else(|| format!("net{i}"));
        if id.is_empty() || id.len() > 63 || id.chars().any(char::is_control) {
            return Err(format!("net[{i}].id: {id:?} must be 1-63 characters"));
        }
        if out.iter().any(|n| n.id == id) {
            return Err(format!("net[{i}].id: {id:?} is used twice"));
        }
        let mac = match &r.mac {
            Some(m) => {
                api::parse_mac(m).map_err(|e| format!("net[{i}].mac: {e}"))?;
                m.to_ascii_lowercase()
            }
            None => stable_mac(vm_id, i),
        };
        if r.bridge.is_some() && r.network.is_some() {
            return Err(format!("net[{i}]: give bridge or network, not both"));
        }
        let ip = match (&r.ip, &r.network) {
            (None, _) => None,
            (Some(_), None) => return Err(format!("net[{i}].ip: a fixed address needs a network")),
            (Some(text), Some(_)) => Some(
                text.parse::<std::net::Ipv4Addr>()
                    .map_err(|_| format!("net[{i}].ip: {text:?} is not an IPv4 address"))?,
            ),
        };
        if let Some(v) = r.vlan {
            if !(1..=4094).contains(&v) {
                return Err(format!("net[{i}].vlan: {v} is not 1 to 4094"));
            }
            if r.bridge.is_none() && r.network.is_none() {
                return Err(format!("net[{i}].vlan: a VLAN needs a bridge or a network"));
            }
        }
        if let Some(limits) = r.rate_limiter {
            for (name, bucket) in [("bandwidth", limits.bandwidth), ("ops", limits.ops)] {
                if bucket.is_some_and(|b| b.size == 0 || b.refill_time == 0) {
                    return Err(format!(
                        "net[{i}].rate_limiter.{name}: size and refill_time must be non-zero"
                    ));
                }
            }
        }
        if let Some(b) = &r.bridge {
            if !bridge_exists(b) {
                return Err(format!("net[{i}].bridge: no bridge {b:?} on this host"));
            }
            if r.vlan.is_some() && !vlan_filtering(b) {
                return Err(format!(
                    "net[{i}].bridge: bridge {b:?} has VLAN filtering off (turn it on: ip link \
                     set dev {b} type bridge vlan_filtering 1)"
                ));
            }
        }
        out.push(ManagedNet {
            id,
            tap: tap_name(vm_id, i),
            mac,
            bridge: r.bridge.clone(),
            network: r.network.clone(),
            ip,
            vlan: r.vlan,
            rate_limiter: r.rate_limiter,
        });
    }
    Ok(out)
}

/// A zeroed `ifreq` named `name`.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq holds only integers, byte arrays, plain C structs and a raw pointer, for
    // all of which the all-zero bit pattern is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(sock) })
}

fn context(what: String) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Creates the tap of `net` (needs CAP_NET_ADMIN), attaches it to its bridge and brings it
/// up. The tap goes away when the returned descriptor and every copy of it are closed.
pub fn create_tap(net: &ManagedNet) -> Result<OwnedFd, String> {
    if !valid_ifname(&net.tap) {
        return Err(format!("tap name {:?} is not valid", net.tap));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(context("open /dev/net/tun".into()))?;
    let fd = OwnedFd::from(file);
    let mut ifr = ifreq(&net.tap);
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads (and may update the name of) the ifreq, valid for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        let e = io::Error::last_os_error();
        return Err(format!("create tap {}: {e}", net.tap));
    }
    let sock = inet_socket().map_err(context("socket".into()))?;
    if let Some(bridge) = &net.bridge {
        let cname = std::ffi::CString::new(net.tap.as_str()).map_err(|e| e.to_string())?;
        // SAFETY: `cname` is NUL-terminated.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            let e = io::Error::last_os_error();
            return Err(format!("tap {}: index: {e}", net.tap));
        }
        let mut br = ifreq(bridge);
        br.ifr_ifru.ifru_ifindex = index as libc::c_int;
        // SAFETY: SIOCBRADDIF reads the ifreq (bridge name, port index), valid for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF, &br) } < 0 {
            let e = io::Error::last_os_error();
            return Err(format!("attach tap {} to bridge {bridge}: {e}", net.tap));
        }
    }
    let mut flags = ifreq(&net.tap);
    // SAFETY: SIOCGIFFLAGS fills the ifreq, valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut flags) } < 0 {
        let e = io::Error::last_os_error();
        return Err(format!("tap {}: get flags: {e}", net.tap));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let current = unsafe { flags.ifr_ifru.ifru_flags };
    flags.ifr_ifru.ifru_flags = current | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq, valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &flags) } < 0 {
        let e = io::Error::last_os_error();
        return Err(format!("bring tap {} up: {e}", net.tap));
    }
    Ok(fd)
}

/// Whether interface `name` exists on the host.
pub fn link_exists(name: &str) -> bool {
    valid_ifname(name) && Path::new("/sys/class/net").join(name).exists()
}

/// Removes a leftover tap `name` that was made persistent by someone else (best effort; a
/// tap petreld made goes away with its petrel).
pub fn remove_leftover(name: &str) {
    if !link_exists(name) {
        return;
    }
    let Ok(file) = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
    else {
        return;
    };
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads the ifreq, valid for the call; TUNSETPERSIST takes an integer.
    unsafe {
        if libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) == 0 {
            libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, 0 as libc::c_ulong);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_are_stable() {
        let n = tap_name("0123456789abcdef", 7);
        assert_eq!(n, "pt01234567897");
        assert!(n.len() < libc::IFNAMSIZ);
        let m = stable_mac("0123456789abcdef", 0);
        assert_eq!(m, stable_mac("0123456789abcdef", 0));
        assert_ne!(m, stable_mac("0123456789abcdef", 1));
        assert!(m.starts_with("02:"));
        assert!(api::parse_mac(&m).is_ok());
    }

    #[test]
    fn plan_checks_fields() {
        let id = "0123456789abcdef";
        let p = plan(id, &[NetRequest::default()]).unwrap();
        assert_eq!(p[0].id, "net0");
        let bad_mac = NetRequest {
            mac: Some("zz".into()),
            ..Default::default()
        };
        assert!(plan(id, &[bad_mac]).unwrap_err().contains("net[0].mac"));
        let bad_bridge = NetRequest {
            bridge: Some("no-such-br0".into()),
            ..Default::default()
        };
        assert!(plan(id, &[bad_bridge]).unwrap_err().contains("bridge"));
        let twice = vec![NetRequest::default(); 2]
            .into_iter()
            .map(|mut r| {
                r.id = Some("a".into());
                r
            })
            .collect::<Vec<_>>();
        assert!(plan(id, &twice).unwrap_err().contains("twice"));
    }
}
