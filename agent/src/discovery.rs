//! Service discovery for the outbound proxy: which mesh service a destination is, where
//! its agent listens, and which SPIFFE ID that agent must present.
//!
//! Today the entries are static (`[[outbound.services]]` in the config file). Lookups
//! are pure ([`Discovery::resolve`]) so routing is table-tested without sockets.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use wardmesh_identity::SpiffeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "service {name:?}: address {address:?} must be host:port or ip:port (e.g. notes.clinic:80)"
    )]
    BadAddress { name: String, address: String },
    #[error("service {name:?}: agent {agent:?} must be host:port or ip:port")]
    BadAgent { name: String, agent: String },
    #[error("service name must be 1-253 characters of [A-Za-z0-9.-] (got {0:?})")]
    BadName(String),
    #[error("services {first:?} and {second:?} both claim {key}")]
    Duplicate {
        first: String,
        second: String,
        key: String,
    },
}

/// One mesh service the local app may call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// A name the app may use in the Host header or proxy URL (any port), e.g.
    /// `notes.clinic`.
    pub name: String,
    /// What the app dials: `host:port` or `ip:port`.
    pub address: String,
    /// Where the service's inbound agent listens (`host:port`). Defaults to `address`,
    /// which is right in transparent mode: the server pod's iptables redirect that
    /// address to its agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The SPIFFE ID the service's agent must present.
    pub spiffe_id: SpiffeId,
}

impl ServiceEntry {
    /// Where to open the mesh connection.
    pub fn agent_address(&self) -> &str {
        self.agent.as_deref().unwrap_or(&self.address)
    }
}

/// A destination's host and port, lower-cased; the key of address lookups.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port`, `ip:port` or `[v6]:port`. `default_port` applies when the
    /// port is missing (HTTP authorities); `None` makes the port mandatory.
    pub fn parse(s: &str, default_port: Option<u16>) -> Option<Self> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Some(Self::from(addr));
        }
        let port_of = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']')?;
            match after {
                "" => (h, default_port?),
                p => (h, port_of(p.strip_prefix(':')?)?),
            }
        } else if s.matches(':').count() > 1 {
            (s, default_port?) // a bare IPv6 address
        } else if let Some((h, p)) = s.rsplit_once(':') {
            (h, port_of(p)?)
        } else {
            (s, default_port?)
        };
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Some(Self::from(SocketAddr::new(ip, port)));
        }
        let ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
        ok.then(|| Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> Self {
        Self {
            host: a.ip().to_canonical().to_string(),
            port: a.port(),
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The static service index.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    entries: Vec<ServiceEntry>,
    by_address: HashMap<HostPort, usize>,
    by_name: HashMap<String, usize>,
}

impl Discovery {
    /// Validates and indexes `entries`: every address and agent parses, and no two
    /// entries share a name or an address.
    pub fn new(entries: Vec<ServiceEntry>) -> Result<Self, DiscoveryError> {
        let mut by_address = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let name_ok = !e.name.is_empty()
                && e.name.len() <= 253
                && e.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b));
            if !name_ok {
                return Err(DiscoveryError::BadName(e.name.clone()));
            }
            let addr =
                HostPort::parse(&e.address, None).ok_or_else(|| DiscoveryError::BadAddress {
                    name: e.name.clone(),
                    address: e.address.clone(),
                })?;
            if let Some(agent) = &e.agent
                && HostPort::parse(agent, None).is_none()
            {
                return Err(DiscoveryError::BadAgent {
                    name: e.name.clone(),
                    agent: agent.clone(),
                });
            }
            let dup = |j: usize, key: String| DiscoveryError::Duplicate {
                first: entries[j].name.clone(),
                second: e.name.clone(),
                key,
            };
            if let Some(j) = by_address.insert(addr.clone(), i) {
                return Err(dup(j, format!("address {addr}")));
            }
            if let Some(j) = by_name.insert(e.name.to_ascii_lowercase(), i) {
                return Err(dup(j, format!("name {}", e.name)));
            }
        }
        Ok(Self {
            entries,
            by_address,
            by_name,
        })
    }

    pub fn entries(&self) -> &[ServiceEntry] {
        &self.entries
    }

    /// The service a connection or request is for. Pure.
    ///
    /// 1. the original destination of a transparently redirected connection, by address;
    /// 2. the request's authority (absolute URI, CONNECT target or Host header), by
    ///    address, then by name with any port.
    pub fn resolve(
        &self,
        original_dst: Option<SocketAddr>,
        authority: Option<&HostPort>,
    ) -> Option<&ServiceEntry> {
        let by_dst = original_dst.and_then(|d| self.by_address.get(&HostPort::from(d)));
        let by_authority = || {
            let a = authority?;
            self.by_address.get(a).or_else(|| self.by_name.get(&a.host))
        };
        by_dst
            .copied()
            .or_else(|| by_authority().copied())
            .and_then(|i| self.entries.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTES: &str = "spiffe://wardmesh.local/ns/clinic/sa/notes-api";
    const BILLING: &str = "spiffe://wardmesh.local/ns/clinic/sa/billing";

    fn entry(name: &str, address: &str, agent: Option<&str>, id: &str) -> ServiceEntry {
        ServiceEntry {
            name: name.into(),
            address: address.into(),
            agent: agent.map(str::to_owned),
            spiffe_id: SpiffeId::parse(id).unwrap(),
        }
    }

    fn discovery() -> Discovery {
        Discovery::new(vec![
            entry(
                "notes.clinic",
                "127.0.0.1:18080",
                Some("127.0.0.1:17143"),
                NOTES,
            ),
            entry("billing.clinic", "billing.clinic.svc:80", None, BILLING),
        ])
        .unwrap()
    }

    fn hp(s: &str) -> HostPort {
        HostPort::parse(s, Some(80)).unwrap()
    }

    #[test]
    fn resolve_table() {
        let d = discovery();
        let dst = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let cases: &[(Option<SocketAddr>, Option<HostPort>, Option<&str>)] = &[
            // transparent: the original destination decides, whatever the Host says
            (
                dst("127.0.0.1:18080"),
                Some(hp("billing.clinic")),
                Some("notes.clinic"),
            ),
            // an unknown original destination falls back to the Host header
            (
                dst("10.0.0.9:80"),
                Some(hp("billing.clinic")),
                Some("billing.clinic"),
            ),
            // explicit proxy: absolute URI by address
            (None, Some(hp("127.0.0.1:18080")), Some("notes.clinic")),
            (None, Some(hp("billing.clinic.svc")), Some("billing.clinic")),
            // by name with any port, case-insensitive
            (None, Some(hp("NOTES.clinic:9999")), Some("notes.clinic")),
            // unknown
            (None, Some(hp("127.0.0.1:18081")), None),
            (None, Some(hp("example.com")), None),
            (dst("127.0.0.1:1"), None, None),
            (None, None, None),
        ];
        for (orig, auth, want) in cases {
            let got = d.resolve(*orig, auth.as_ref()).map(|e| e.name.as_str());
            assert_eq!(got, *want, "orig={orig:?} authority={auth:?}");
        }
    }

    #[test]
    fn agent_defaults_to_the_address() {
        let d = discovery();
        assert_eq!(d.entries()[0].agent_address(), "127.0.0.1:17143");
        assert_eq!(d.entries()[1].agent_address(), "billing.clinic.svc:80");
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            HostPort::parse("a.b:81", None).unwrap().to_string(),
            "a.b:81"
        );
        assert_eq!(
            HostPort::parse("A.B", Some(80)).unwrap().to_string(),
            "a.b:80"
        );
        assert_eq!(
            HostPort::parse("[::1]:8080", None).unwrap().to_string(),
            "[::1]:8080"
        );
        assert_eq!(
            HostPort::parse("[::1]", Some(80)).unwrap().to_string(),
            "[::1]:80"
        );
        assert_eq!(
            HostPort::from("[::ffff:10.0.0.1]:80".parse::<SocketAddr>().unwrap()).to_string(),
            "10.0.0.1:80"
        );
        for bad in ["a.b", "a.b:0", "a.b:x", ":80", "a b:80", "a/b:80"] {
            assert!(HostPort::parse(bad, None).is_none(), "{bad}");
        }
    }

    #[test]
    fn invalid_entries_are_refused_with_the_name() {
        let e = Discovery::new(vec![entry("n", "no-port", None, NOTES)]).unwrap_err();
        assert!(e.to_string().contains("\"n\""), "{e}");
        let e = Discovery::new(vec![entry("n", "a:1", Some("x"), NOTES)]).unwrap_err();
        assert!(matches!(e, DiscoveryError::BadAgent { .. }));
        let e = Discovery::new(vec![entry("bad name", "a:1", None, NOTES)]).unwrap_err();
        assert!(matches!(e, DiscoveryError::BadName(_)));
        let e = Discovery::new(vec![
            entry("a", "h:1", None, NOTES),
            entry("b", "H:1", None, BILLING),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("address h:1"), "{e}");
        let e = Discovery::new(vec![
            entry("a", "h:1", None, NOTES),
            entry("A", "h:2", None, BILLING),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
    }
}
