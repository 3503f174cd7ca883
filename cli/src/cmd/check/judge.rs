//! The verdicts of `wardctl check`, from what was gathered. Pure: no I/O, time passed in.

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardmesh_proto::operator::CaStatus;

use super::CheckResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

/// The webhook configuration as kubectl showed it, or why it could not.
#[derive(Debug, Clone)]
pub enum WebhookProbe {
    Found(Value),
    Error(String),
    Skipped(String),
}

/// Everything `check` looked at.
#[derive(Debug, Clone)]
pub struct Gathered {
    pub control_plane: String,
    pub ca: Result<CaStatus, String>,
    /// `/v1/agents` rows, as JSON so newer fields (policy revision) are read when present.
    pub agents: Result<Vec<Value>, String>,
    pub webhook: WebhookProbe,
}

/// Agents not seen for longer than this are reported as stale.
const STALE_AFTER: time::Duration = time::Duration::minutes(5);

fn line(check: &'static str, status: Status, detail: impl Into<String>) -> CheckResult {
    CheckResult {
        check,
        status,
        detail: detail.into(),
    }
}

pub fn judge(g: &Gathered, now: OffsetDateTime, warn_days: u32) -> Vec<CheckResult> {
    let mut out = Vec::new();
    match &g.ca {
        Ok(ca) => {
            out.push(line(
                "control plane reachable",
                Status::Pass,
                format!(
                    "{} answered (trust domain {})",
                    g.control_plane, ca.trust_domain
                ),
            ));
            out.push(ca_validity(ca, now, warn_days));
        }
        Err(e) => {
            out.push(line("control plane reachable", Status::Fail, e.clone()));
            out.push(line("CA valid", Status::Skip, "control plane unreachable"));
        }
    }
    out.push(webhook(&g.webhook, g.ca.as_ref().ok()));
    match (&g.agents, &g.ca) {
        (Ok(agents), Ok(ca)) => out.extend(agents_lines(agents, ca, now)),
        (Err(e), _) => out.push(line("agents reporting", Status::Fail, e.clone())),
        (_, Err(_)) => out.push(line(
            "agents reporting",
            Status::Skip,
            "control plane unreachable",
        )),
    }
    out
}

fn ca_validity(ca: &CaStatus, now: OffsetDateTime, warn_days: u32) -> CheckResult {
    let warn_at = now + time::Duration::days(i64::from(warn_days));
    let mut soonest: Option<(OffsetDateTime, String)> = None;
    for a in &ca.authorities {
        for (what, at) in [
            ("root", &a.root_not_after),
            ("intermediate", &a.intermediate_not_after),
        ] {
            let Ok(t) = OffsetDateTime::parse(at, &Rfc3339) else {
                return line(
                    "CA valid",
                    Status::Fail,
                    format!("authority {} has an unreadable {what} expiry {at:?}", a.id),
                );
            };
            if soonest.as_ref().is_none_or(|(s, _)| t < *s) {
                soonest = Some((t, format!("{what} of authority {}", a.id)));
            }
        }
    }
    match soonest {
        None => line(
            "CA valid",
            Status::Fail,
            "the control plane reports no authority",
        ),
        Some((t, what)) if t <= now => line(
            "CA valid",
            Status::Fail,
            format!("{what} expired at {at}", at = fmt(t)),
        ),
        Some((t, what)) if t <= warn_at => line(
            "CA valid",
            Status::Warn,
            format!(
                "{what} expires at {} (within {warn_days} days); rotate with `wardctl ca rotate`",
                fmt(t)
            ),
        ),
        Some((t, what)) => line(
            "CA valid",
            Status::Pass,
            format!("first expiry: {what} at {}", fmt(t)),
        ),
    }
}

fn webhook(p: &WebhookProbe, ca: Option<&CaStatus>) -> CheckResult {
    const NAME: &str = "injector webhook configured";
    let v = match p {
        WebhookProbe::Skipped(why) => return line(NAME, Status::Skip, why.clone()),
        WebhookProbe::Error(e) => {
            return line(
                NAME,
                Status::Fail,
                format!("{e}; apply `wardctl install` output"),
            );
        }
        WebhookProbe::Found(v) => v,
    };
    let Some(w) = v["webhooks"].as_array().and_then(|w| w.first()) else {
        return line(NAME, Status::Fail, "wardmesh-injector has no webhook entry");
    };
    let svc = &w["clientConfig"]["service"];
    if svc["name"] != "wardmesh-control-plane" || svc["namespace"] != "wardmesh-system" {
        return line(
            NAME,
            Status::Fail,
            format!("it points at {svc}, not wardmesh-system/wardmesh-control-plane"),
        );
    }
    if w["clientConfig"]["caBundle"]
        .as_str()
        .unwrap_or("")
        .is_empty()
    {
        return line(
            NAME,
            Status::Fail,
            "caBundle is empty; re-apply `wardctl install` output",
        );
    }
    let policy = w["failurePolicy"].as_str().unwrap_or("Fail");
    let td = ca.map(|c| c.trust_domain.as_str()).unwrap_or("?");
    line(
        NAME,
        Status::Pass,
        format!("failurePolicy {policy}, caBundle set (trust domain {td})"),
    )
}

fn agents_lines(agents: &[Value], ca: &CaStatus, now: OffsetDateTime) -> Vec<CheckResult> {
    let mut out = Vec::new();
    if agents.is_empty() {
        out.push(line(
            "agents reporting",
            Status::Warn,
            "no agent has reported yet",
        ));
        return out;
    }
    let time_of = |a: &Value, k: &str| {
        a[k].as_str()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
    };
    let id = |a: &Value| a["spiffe_id"].as_str().unwrap_or("?").to_owned();
    let stale: Vec<String> = agents
        .iter()
        .filter(|a| time_of(a, "last_seen").is_none_or(|t| now - t > STALE_AFTER))
        .map(id)
        .collect();
    let expired: Vec<String> = agents
        .iter()
        .filter(|a| time_of(a, "cert_not_after").is_none_or(|t| t <= now))
        .map(id)
        .collect();
    out.push(match (expired.is_empty(), stale.is_empty()) {
        (false, _) => line(
            "agents reporting",
            Status::Fail,
            format!("expired certificates: {}", expired.join(", ")),
        ),
        (true, false) => line(
            "agents reporting",
            Status::Warn,
            format!(
                "{} of {} not seen for 5 min: {}",
                stale.len(),
                agents.len(),
                stale.join(", ")
            ),
        ),
        (true, true) => line(
            "agents reporting",
            Status::Pass,
            format!("{} agents, all seen within 5 min", agents.len()),
        ),
    });
    let behind: Vec<String> = agents
        .iter()
        .filter(|a| a["bundle_revision"].as_i64() != i64::try_from(ca.revision).ok())
        .map(id)
        .collect();
    out.push(if behind.is_empty() {
        line(
            "trust bundle converged",
            Status::Pass,
            format!("every agent has revision {}", ca.revision),
        )
    } else {
        line(
            "trust bundle converged",
            Status::Fail,
            format!("not at revision {}: {}", ca.revision, behind.join(", ")),
        )
    });
    let mut revs: Vec<&str> = agents
        .iter()
        .filter_map(|a| a["policy_revision"].as_str())
        .collect();
    revs.sort_unstable();
    revs.dedup();
    out.push(match revs.len() {
        0 => line(
            "policy revision converged",
            Status::Skip,
            "agents report no policy revision",
        ),
        1 => line(
            "policy revision converged",
            Status::Pass,
            format!("every agent runs {}", revs[0]),
        ),
        _ => line(
            "policy revision converged",
            Status::Fail,
            format!("agents run different revisions: {}", revs.join(", ")),
        ),
    });
    out
}

fn fmt(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;
    use wardmesh_proto::operator::AuthorityStatus;

    use super::*;

    fn ca(int_not_after: &str) -> CaStatus {
        CaStatus {
            trust_domain: "clinic.example".into(),
            revision: 3,
            active: "a1".into(),
            authorities: vec![AuthorityStatus {
                id: "a1".into(),
                active: true,
                root_subject: "r".into(),
                root_fingerprint: "f".into(),
                root_not_after: "2035-01-01T00:00:00Z".into(),
                intermediate_subject: "i".into(),
                intermediate_fingerprint: "f".into(),
                intermediate_not_after: int_not_after.into(),
            }],
        }
    }

    fn agent(id: &str, seen: &str, rev: i64) -> Value {
        json!({"spiffe_id": id, "instance_id": "x", "last_seen": seen, "cert_not_after": "2026-01-01T01:00:00Z", "cert_authority_id": "a1", "bundle_revision": rev})
    }

    fn webhook_ok() -> WebhookProbe {
        WebhookProbe::Found(
            json!({"webhooks": [{"failurePolicy": "Fail", "clientConfig": {"caBundle": "LS0t", "service": {"name": "wardmesh-control-plane", "namespace": "wardmesh-system"}}}]}),
        )
    }

    #[test]
    fn healthy_installation_passes_every_line() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let g = Gathered {
            control_plane: "https://cp:7443".into(),
            ca: Ok(ca("2027-01-01T00:00:00Z")),
            agents: Ok(vec![agent(
                "spiffe://clinic.example/ns/a/sa/b",
                "2025-12-31T23:59:00Z",
                3,
            )]),
            webhook: webhook_ok(),
        };
        let r = judge(&g, now, 30);
        let statuses: Vec<(&str, Status)> = r.iter().map(|l| (l.check, l.status)).collect();
        assert_eq!(
            statuses,
            [
                ("control plane reachable", Status::Pass),
                ("CA valid", Status::Pass),
                ("injector webhook configured", Status::Pass),
                ("agents reporting", Status::Pass),
                ("trust bundle converged", Status::Pass),
                ("policy revision converged", Status::Skip),
            ]
        );
    }

    #[test]
    fn problems_are_named() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let g = Gathered {
            control_plane: "https://cp:7443".into(),
            ca: Ok(ca("2026-01-10T00:00:00Z")),
            agents: Ok(vec![
                agent(
                    "spiffe://clinic.example/ns/a/sa/old",
                    "2025-12-31T00:00:00Z",
                    2,
                ),
                agent(
                    "spiffe://clinic.example/ns/a/sa/new",
                    "2025-12-31T23:59:00Z",
                    3,
                ),
            ]),
            webhook: WebhookProbe::Found(
                json!({"webhooks": [{"clientConfig": {"caBundle": "", "service": {"name": "wardmesh-control-plane", "namespace": "wardmesh-system"}}}]}),
            ),
        };
        let r = judge(&g, now, 30);
        assert_eq!(r[1].status, Status::Warn, "{r:?}");
        assert!(
            r[1].detail.contains("intermediate of authority a1"),
            "{r:?}"
        );
        assert_eq!(r[2].status, Status::Fail);
        assert!(r[2].detail.contains("caBundle is empty"));
        assert_eq!(r[3].status, Status::Warn);
        assert!(r[3].detail.contains("sa/old"));
        assert_eq!(r[4].status, Status::Fail);
        assert!(r[4].detail.contains("sa/old") && !r[4].detail.contains("sa/new"));

        let down = Gathered {
            control_plane: "https://cp:7443".into(),
            ca: Err("cannot reach the control plane".into()),
            agents: Err("cannot reach the control plane".into()),
            webhook: WebhookProbe::Skipped("--no-kubernetes".into()),
        };
        let r = judge(&down, now, 30);
        assert_eq!(r[0].status, Status::Fail);
        assert!(r.iter().all(|l| l.status != Status::Pass));
    }
}
