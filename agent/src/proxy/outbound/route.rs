//! The outbound routing decision, pure: where a connection or request goes, or why it
//! goes nowhere.

use std::net::SocketAddr;

use crate::discovery::{Discovery, HostPort, ServiceEntry};
use crate::identity::DenyList;
use crate::metrics::Outcome;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// A mesh service: mTLS to its agent, which must present `service.spiffe_id`.
    Mesh(&'a ServiceEntry),
    /// Not a mesh service, and passthrough is on: plain TCP/HTTP to this address.
    Direct(HostPort),
    /// Refused, with the metric outcome and a one-line reason for the app.
    Refuse(Outcome, String),
}

/// Decides the route from the original destination (transparent mode) and the request's
/// authority (explicit mode, or HTTP in transparent mode).
pub(crate) fn route<'a>(
    discovery: &'a Discovery,
    deny: &DenyList,
    passthrough_unknown: bool,
    original_dst: Option<SocketAddr>,
    authority: Option<&HostPort>,
) -> Route<'a> {
    if let Some(service) = discovery.resolve(original_dst, authority) {
        if deny.contains(&service.spiffe_id) {
            return Route::Refuse(
                Outcome::DestinationQuarantined,
                format!(
                    "destination {} ({}) is quarantined",
                    service.name, service.spiffe_id
                ),
            );
        }
        return Route::Mesh(service);
    }
    // The connection's real destination beats what the request says about itself.
    let target = original_dst
        .map(HostPort::from)
        .or_else(|| authority.cloned());
    match target {
        Some(t) if passthrough_unknown => Route::Direct(t),
        Some(t) => Route::Refuse(
            Outcome::UnknownDestination,
            format!(
                "{t} is not a mesh service known to this agent; add it to [[outbound.services]] or set outbound.passthrough_unknown"
            ),
        ),
        None => Route::Refuse(
            Outcome::BadRequest,
            "no destination: send an absolute-form proxy request (GET http://host:port/path) or CONNECT host:port"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use wardmesh_identity::SpiffeId;

    use super::*;

    const NOTES: &str = "spiffe://wardmesh.local/ns/clinic/sa/notes-api";

    fn discovery() -> Discovery {
        Discovery::new(vec![ServiceEntry {
            name: "notes.clinic".into(),
            address: "127.0.0.1:18080".into(),
            agent: Some("127.0.0.1:17143".into()),
            spiffe_id: SpiffeId::parse(NOTES).unwrap(),
        }])
        .unwrap()
    }

    fn deny(ids: &[&str]) -> DenyList {
        DenyList {
            revision: Some(1),
            ids: ids
                .iter()
                .map(|s| SpiffeId::parse(s).unwrap())
                .collect::<HashSet<_>>(),
        }
    }

    #[test]
    fn route_table() {
        let d = discovery();
        let hp = |s: &str| HostPort::parse(s, Some(80)).unwrap();
        let dst = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let none = deny(&[]);
        let notes_denied = deny(&[NOTES]);

        let mesh = route(&d, &none, false, None, Some(&hp("notes.clinic")));
        assert!(matches!(mesh, Route::Mesh(s) if s.name == "notes.clinic"));
        let transparent = route(&d, &none, false, dst("127.0.0.1:18080"), None);
        assert!(matches!(transparent, Route::Mesh(_)));

        let q = route(&d, &notes_denied, true, None, Some(&hp("notes.clinic")));
        assert!(
            matches!(&q, Route::Refuse(Outcome::DestinationQuarantined, r) if r.contains(NOTES)),
            "{q:?}"
        );

        let unknown = route(&d, &none, false, None, Some(&hp("example.com")));
        assert!(
            matches!(&unknown, Route::Refuse(Outcome::UnknownDestination, r) if r.contains("example.com:80")),
            "{unknown:?}"
        );
        assert_eq!(
            route(&d, &none, true, None, Some(&hp("example.com"))),
            Route::Direct(hp("example.com:80"))
        );
        // Passthrough goes where the connection was going, whatever its Host says.
        assert_eq!(
            route(
                &d,
                &none,
                true,
                dst("10.1.1.1:5432"),
                Some(&hp("example.com"))
            ),
            Route::Direct(hp("10.1.1.1:5432"))
        );
        assert!(matches!(
            route(&d, &none, true, None, None),
            Route::Refuse(Outcome::BadRequest, _)
        ));
    }
}
