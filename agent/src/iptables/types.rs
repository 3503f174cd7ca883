//! Port ranges and IPv4 CIDRs as the command line takes them and iptables prints them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0:?} is not a port: expected a number 1-65535 or a range like 9000-9100")]
    Port(String),
    #[error("port range {0:?} is backwards: write the lower port first")]
    Backwards(String),
    #[error("{0:?} is not an IPv4 address or CIDR: expected e.g. 10.0.0.0/8 or 10.1.2.3")]
    Cidr(String),
}

/// A TCP destination port or an inclusive range of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }
}

/// `7191` or `9000-9100` (also `9000:9100`, iptables' own spelling).
impl FromStr for PortRange {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(n) if n != 0 => Ok(n),
            _ => Err(ParseError::Port(s.to_owned())),
        };
        let (first, last) = match s.split_once(['-', ':']) {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if first > last {
            return Err(ParseError::Backwards(s.to_owned()));
        }
        Ok(Self { first, last })
    }
}

/// As iptables writes it: `7191` or `9000:9100`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An IPv4 network, normalised (host bits cleared) the way iptables prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

/// `10.0.0.0/8`, or a bare address meaning `/32`.
impl FromStr for Ipv4Cidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || ParseError::Cidr(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
