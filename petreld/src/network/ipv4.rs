//! IPv4 subnets of petreld's networks: parsing `a.b.c.d/len` strictly, overlap, the gateway
//! and DHCP range a subnet gets by default, and membership checks for reservations.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Shortest prefix a network may have (a /8 is already 16 M addresses).
pub const MIN_PREFIX: u8 = 8;
/// Longest prefix: a /29 leaves 6 hosts (the gateway and 5 guests).
pub const MAX_PREFIX: u8 = 29;

/// An IPv4 subnet: its network address (host bits zero) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Subnet {
    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The dotted netmask.
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether the two subnets share an address.
    pub fn overlaps(self, other: Subnet) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The broadcast address.
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// The `n`-th address (0 is the network address).
    pub fn nth(self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(n))
    }

    /// Whether `ip` may be given to a host: inside, not the network or broadcast address.
    pub fn is_host(self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.addr && ip != self.broadcast()
    }

    /// The default gateway: the first host address.
    pub fn default_gateway(self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The default DHCP range: every host address after the gateway.
    pub fn default_range(self) -> (Ipv4Addr, Ipv4Addr) {
        (
            self.nth(2),
            Ipv4Addr::from(u32::from(self.broadcast()).wrapping_sub(1)),
        )
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    /// `a.b.c.d/len` with len in [`MIN_PREFIX`]..=[`MAX_PREFIX`] and no host bits set.
    fn from_str(s: &str) -> Result<Subnet, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (expected a.b.c.d/len)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IPv4 address"))?;
        let prefix: u8 = Some(p)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .filter(|p: &u8| *p <= 32)
            .ok_or_else(|| format!("{s:?}: prefix {p:?} is not 0 to 32"))?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(format!(
                "{s:?}: prefix /{prefix} is outside /{MIN_PREFIX} to /{MAX_PREFIX}"
            ));
        }
        let net = Subnet { addr, prefix };
        let base = Ipv4Addr::from(u32::from(addr) & net.mask());
        if base != addr {
            return Err(format!(
                "{s:?} has host bits set (the subnet is {base}/{prefix})"
            ));
        }
        if addr.is_loopback() || addr.is_multicast() || addr.is_broadcast() || addr.is_unspecified()
        {
            return Err(format!("{s:?} is not a unicast range"));
        }
        Ok(net)
    }
}

impl Serialize for Subnet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Subnet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_overlap() {
        let a: Subnet = "10.1.0.0/16".parse().unwrap();
        let b: Subnet = "10.1.2.0/24".parse().unwrap();
        let c: Subnet = "10.2.0.0/24".parse().unwrap();
        assert!(a.overlaps(b) && b.overlaps(a));
        assert!(!a.overlaps(c));
        assert_eq!(b.default_gateway(), Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(
            b.default_range(),
            (Ipv4Addr::new(10, 1, 2, 2), Ipv4Addr::new(10, 1, 2, 254))
        );
        assert_eq!(b.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(b.is_host(Ipv4Addr::new(10, 1, 2, 9)));
        assert!(!b.is_host(Ipv4Addr::new(10, 1, 2, 255)));
        assert!(!b.is_host(Ipv4Addr::new(10, 1, 3, 9)));
        for bad in [
            "10.0.0.1/24",
            "10.0.0.0/33",
            "10.0.0.0",
            "300.0.0.0/8",
            "10.0.0.0/+8",
            "10.0.0.0/30",
            "127.0.0.0/8",
            "x/8",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        assert!("10.0.0.1/24"
            .parse::<Subnet>()
            .unwrap_err()
            .contains("10.0.0.0/24"));
    }
}
