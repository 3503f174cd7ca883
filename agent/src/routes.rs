//! Route templates: what a service declares about its paths (`/patients/{patient}/notes`),
//! so that policies, metrics and flow records name a *template* and never a raw path, and
//! the one path parameter that identifies a patient can be pseudonymised.
//!
//! Matching is segment by segment: a literal segment matches itself, `{name}` matches any
//! one non-empty segment. The first declared route that matches wins, so declare specific
//! routes before general ones. Pure: no I/O.

use serde::{Deserialize, Serialize};

/// The template recorded for a path no declared route matches.
pub const UNMATCHED: &str = "unmatched";
const MAX_TEMPLATE_LEN: usize = 256;

/// One declared route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `/patients/{patient}/notes`.
    pub template: String,
    /// The parameter that names the data subject (patient), if any.
    #[serde(default)]
    pub subject: Option<String>,
    /// Protected health information: no access without an audit record (fail-closed).
    #[serde(default)]
    pub phi: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "route template {0:?} must start with `/` and be at most {MAX_TEMPLATE_LEN} characters"
    )]
    Shape(String),
    #[error(
        "route template {template:?} has a malformed segment {segment:?}: use literals or `{{name}}`"
    )]
    Segment { template: String, segment: String },
    #[error(
        "route {template:?} names subject parameter {subject:?}, which is not one of its parameters"
    )]
    UnknownSubject { template: String, subject: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    template: String,
    segments: Vec<Segment>,
    subject: Option<usize>,
    phi: bool,
}

/// The declared routes of one workload, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// What a path matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    /// The template, or [`UNMATCHED`].
    pub template: &'a str,
    /// The raw subject (patient id) from the path. Never leaves the agent: only its
    /// pseudonym does.
    pub subject: Option<&'a str>,
    pub phi: bool,
}

impl RouteTable {
    pub fn new(configs: &[RouteConfig]) -> Result<Self, RouteError> {
        let routes = configs.iter().map(compile).collect::<Result<_, _>>()?;
        Ok(Self { routes })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The first route matching `path` (no query string).
    pub fn lookup<'a>(&'a self, path: &'a str) -> RouteMatch<'a> {
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        for r in &self.routes {
            if r.segments.len() + 1 != parts.len() || !parts[0].is_empty() {
                continue;
            }
            let hit = r.segments.iter().zip(&parts[1..]).all(|(s, p)| match s {
                Segment::Literal(l) => l == p,
                Segment::Param(_) => !p.is_empty(),
            });
            if hit {
                return RouteMatch {
                    template: &r.template,
                    subject: r.subject.map(|i| parts[i + 1]),
                    phi: r.phi,
                };
            }
        }
        RouteMatch {
            template: UNMATCHED,
            subject: None,
            phi: false,
        }
    }
}

fn compile(c: &RouteConfig) -> Result<Route, RouteError> {
    let t = c.template.trim();
    if !t.starts_with('/') || t.len() > MAX_TEMPLATE_LEN {
        return Err(RouteError::Shape(c.template.clone()));
    }
    let mut segments = Vec::new();
    for seg in t.trim_end_matches('/').split('/').skip(1) {
        let bad = || RouteError::Segment {
            template: c.template.clone(),
            segment: seg.to_owned(),
        };
        let s = match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name)
                if !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                Segment::Param(name.to_owned())
            }
            Some(_) => return Err(bad()),
            None if seg.is_empty() || seg.contains(['{', '}']) => return Err(bad()),
            None => Segment::Literal(seg.to_owned()),
        };
        segments.push(s);
    }
    let subject = match &c.subject {
        None => None,
        Some(name) => Some(
            segments
                .iter()
                .position(|s| matches!(s, Segment::Param(p) if p == name))
                .ok_or_else(|| RouteError::UnknownSubject {
                    template: c.template.clone(),
                    subject: name.clone(),
                })?,
        ),
    };
    Ok(Route {
        template: t.to_owned(),
        segments,
        subject,
        phi: c.phi,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(t: &str, subject: Option<&str>, phi: bool) -> RouteConfig {
        RouteConfig {
            template: t.into(),
            subject: subject.map(Into::into),
            phi,
        }
    }

    #[test]
    fn templates_match_segment_by_segment_first_wins() {
        let table = RouteTable::new(&[
            route("/patients/{patient}/notes", Some("patient"), true),
            route("/patients/{patient}/billing", Some("patient"), true),
            route("/patients/{id}/{kind}", None, false),
            route("/health", None, false),
        ])
        .unwrap();
        let m = table.lookup("/patients/p-1001/notes");
        assert_eq!(m.template, "/patients/{patient}/notes");
        assert_eq!(m.subject, Some("p-1001"));
        assert!(m.phi);
        assert_eq!(
            table.lookup("/patients/p-1/billing/").template,
            "/patients/{patient}/billing"
        );
        let general = table.lookup("/patients/p-1/labs");
        assert_eq!(
            (general.template, general.subject),
            ("/patients/{id}/{kind}", None)
        );
        assert_eq!(table.lookup("/health").template, "/health");
        for raw in [
            "/patients//notes",
            "/patients/p-1",
            "/other",
            "relative/path",
            "/patients/p/notes/x",
        ] {
            let m = table.lookup(raw);
            assert_eq!(
                (m.template, m.subject, m.phi),
                (UNMATCHED, None, false),
                "{raw}"
            );
        }
    }

    #[test]
    fn malformed_templates_are_refused_with_the_reason() {
        for (cfg, want) in [
            (route("patients", None, false), "must start with `/`"),
            (
                route("/patients/{}/notes", None, false),
                "malformed segment \"{}\"",
            ),
            (route("/patients/{p-x}", None, false), "malformed segment"),
            (route("/a//b", None, false), "malformed segment \"\""),
            (
                route("/patients/{patient}", Some("id"), false),
                "not one of its parameters",
            ),
        ] {
            let err = RouteTable::new(&[cfg]).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
