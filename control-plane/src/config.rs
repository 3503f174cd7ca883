//! Control-plane configuration: what `main` parses and `/config_dump`-style output shows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Kubernetes service-account token attestation settings.
#[derive(Debug, Clone, Serialize)]
pub struct K8sAttestation {
    /// The API server's service-account issuer (`iss` claim).
    pub issuer: String,
    /// The issuer's JWKS document (`/openid/v1/jwks`), saved to a file.
    pub jwks_file: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneConfig {
    pub listen: SocketAddr,
    pub ca_dir: PathBuf,
    /// File with the CA sealing key; `WARDMESH_CA_SEAL_KEY` takes precedence.
    pub seal_key_file: PathBuf,
    /// `sqlite:<file>` or `postgres://…` (shown redacted).
    #[serde(serialize_with = "redacted_url")]
    pub store_url: String,
    /// Where the bootstrap operator token is written on first start.
    pub state_dir: PathBuf,
    #[serde(with = "secs")]
    pub leaf_ttl: Duration,
    #[serde(with = "secs")]
    pub ca_poll_interval: Duration,
    /// How often a signed checkpoint is written over the audit chain head (when it moved).
    #[serde(with = "secs")]
    pub audit_checkpoint_interval: Duration,
    /// Host names and IPs in the serving certificate besides the SPIFFE ID.
    pub server_names: Vec<String>,
    pub k8s: Option<K8sAttestation>,
    /// SA-token attestation through the API server's TokenReview (instead of `k8s`).
    pub token_review: Option<crate::tokenreview::TokenReviewConfig>,
    /// The sidecar injector webhook (its own TLS listener); off unless configured.
    pub injector: Option<crate::injector::InjectorConfig>,
    /// Public keys a pushed policy bundle's signature must verify with (none: pushes
    /// are refused).
    pub policy_keys: Vec<PolicyKey>,
    /// How long flows and audit entries are kept (`crate::retention`).
    pub retention: RetentionConfig,
}

/// Retention settings; `None` keeps that data forever. Shown in seconds (`null`: forever).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionConfig {
    /// Flows recorded longer ago than this are deleted.
    #[serde(with = "opt_secs")]
    pub flow_retention: Option<Duration>,
    /// Audit entries older than this are pruned, up to a signed checkpoint.
    #[serde(with = "opt_secs")]
    pub audit_retention: Option<Duration>,
    /// Time between retention passes (the first runs one interval after start).
    #[serde(with = "secs")]
    pub retention_interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            flow_retention: Some(DAY * 30),
            audit_retention: None,
            retention_interval: Duration::from_secs(3600),
        }
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);
/// Six years, counted generously (with two leap days): what HIPAA asks of audit records.
pub const HIPAA_AUDIT_RETENTION: Duration = Duration::from_secs(2192 * 24 * 3600);

/// The retention flags; `main` flattens them into its arguments and calls
/// [`RetentionArgs::into_config`].
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Delete flows older than this: a number with a unit s, m, h or d (e.g. 30d, 72h),
    /// or `none` to keep them forever. At least 1h.
    #[arg(long, value_name = "AGE", default_value = "30d")]
    pub flow_retention: String,
    /// Prune audit entries older than this (same form as --flow-retention, at least 1d),
    /// up to the newest signed checkpoint before the cutoff, so `wardctl audit verify`
    /// still passes. Default `none`: keep the audit log forever. HIPAA expects six years
    /// of audit documentation (45 CFR 164.316(b)(2)): use 2192d or more.
    #[arg(long, value_name = "AGE", default_value = "none")]
    pub audit_retention: String,
    /// Time between retention passes (same form, 1m to 1d).
    #[arg(long, value_name = "INTERVAL", default_value = "1h")]
    pub retention_interval: String,
}

impl RetentionArgs {
    /// Validates the flags; every refusal names the flag and the accepted form.
    pub fn into_config(self) -> Result<RetentionConfig, String> {
        let at_least = |flag: &str, v: Option<Duration>, min: Duration, min_text: &str| match v {
            Some(d) if d < min => Err(format!("--{flag} must be at least {min_text} or none")),
            other => Ok(other),
        };
        let flow_retention = at_least(
            "flow-retention",
            parse_age("flow-retention", &self.flow_retention)?,
            Duration::from_secs(3600),
            "1h",
        )?;
        let audit_retention = at_least(
            "audit-retention",
            parse_age("audit-retention", &self.audit_retention)?,
            DAY,
            "1d",
        )?;
        let retention_interval = match parse_age("retention-interval", &self.retention_interval)? {
            Some(d) if (Duration::from_secs(60)..=DAY).contains(&d) => d,
            _ => return Err("--retention-interval must be between 1m and 1d, e.g. 1h".to_owned()),
        };
        Ok(RetentionConfig {
            flow_retention,
            audit_retention,
            retention_interval,
        })
    }
}

/// `<n><unit>` with unit `s`, `m`, `h` or `d`; `none` for "keep forever". No months or
/// years: their length varies, and a retention period must not come out a day short.
pub fn parse_age(flag: &str, text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let bad = || {
        format!(
            "--{flag} {text:?} must be a whole number with a unit s, m, h or d (e.g. 30d, \
             12h), or none"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => return Err(bad()),
    };
    // Beyond a few thousand years `now - age` stops being a date.
    let secs = n
        .checked_mul(unit_secs)
        .filter(|&s| s <= 10_000 * 366 * 24 * 3600)
        .ok_or_else(|| format!("--{flag} {text:?} is too long; use none to keep forever"))?;
    if secs == 0 {
        return Err(format!(
            "--{flag} must be longer than 0; use none to keep forever"
        ));
    }
    Ok(Some(Duration::from_secs(secs)))
}

/// A policy verification key: the `kid` bundles name and a SubjectPublicKeyInfo PEM file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyKey {
    pub key_id: String,
    pub file: PathBuf,
}

impl std::str::FromStr for PolicyKey {
    type Err = String;

    /// `<key-id>=<pem file>`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((id, file)) if !id.trim().is_empty() && !file.trim().is_empty() => Ok(Self {
                key_id: id.trim().to_owned(),
                file: PathBuf::from(file.trim()),
            }),
            _ => Err(format!(
                "policy key {s:?} must be <key-id>=<public key PEM file>, e.g. clinic-2025=/etc/wardmesh/policy.pub.pem"
            )),
        }
    }
}

impl ControlPlaneConfig {
    /// Defaults for a local, single-node control plane rooted at `home`.
    pub fn local(home: &std::path::Path, listen: SocketAddr) -> Self {
        Self {
            listen,
            ca_dir: home.join("ca"),
            seal_key_file: home.join("seal.key"),
            store_url: format!("sqlite:{}", home.join("wardmesh.db").display()),
            state_dir: home.to_owned(),
            leaf_ttl: Duration::from_secs(3600),
            ca_poll_interval: Duration::from_secs(2),
            audit_checkpoint_interval: Duration::from_secs(60),
            server_names: default_server_names(),
            k8s: None,
            token_review: None,
            injector: None,
            policy_keys: Vec::new(),
            retention: RetentionConfig::default(),
        }
    }
}

pub fn default_server_names() -> Vec<String> {
    vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "wardmesh-control-plane.wardmesh-system.svc".into(),
    ]
}

fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&wardmesh_store::redact_url(url))
}

mod opt_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flows: &str, audit: &str, interval: &str) -> RetentionArgs {
        RetentionArgs {
            flow_retention: flows.to_owned(),
            audit_retention: audit.to_owned(),
            retention_interval: interval.to_owned(),
        }
    }

    #[test]
    fn retention_flags_default_to_thirty_days_of_flows_and_all_audit() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            retention: RetentionArgs,
        }
        let cfg = Cli::parse_from(["cp"]).retention.into_config().unwrap();
        assert_eq!(cfg, RetentionConfig::default());
        assert_eq!(cfg.flow_retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(cfg.audit_retention, None);
        assert_eq!(cfg.retention_interval, Duration::from_secs(3600));
        let cfg = Cli::parse_from([
            "cp",
            "--flow-retention",
            "none",
            "--audit-retention",
            "2192d",
            "--retention-interval",
            "15m",
        ])
        .retention
        .into_config()
        .unwrap();
        assert_eq!(cfg.flow_retention, None);
        assert_eq!(cfg.audit_retention, Some(HIPAA_AUDIT_RETENTION));
        assert_eq!(cfg.retention_interval, Duration::from_secs(900));
    }

    #[test]
    fn retention_flags_are_refused_with_the_flag_and_form() {
        for (bad, says) in [
            (
                args("30", "none", "1h"),
                "--flow-retention \"30\" must be a whole number",
            ),
            (args("30 days", "none", "1h"), "unit s, m, h or d"),
            (args("1y", "none", "1h"), "unit s, m, h or d"),
            (args("-1d", "none", "1h"), "whole number"),
            (args("0d", "none", "1h"), "longer than 0"),
            (
                args("30m", "none", "1h"),
                "--flow-retention must be at least 1h",
            ),
            (
                args("30d", "12h", "1h"),
                "--audit-retention must be at least 1d",
            ),
            (args("30d", "99999999999999d", "1h"), "too long"),
            (
                args("30d", "none", "none"),
                "--retention-interval must be between 1m and 1d",
            ),
            (args("30d", "none", "10s"), "between 1m and 1d"),
        ] {
            let shown = format!("{bad:?}");
            let err = bad.into_config().unwrap_err();
            assert!(err.contains(says), "{shown}: {err}");
        }
    }

    #[test]
    fn the_config_dump_shows_retention_in_seconds_and_forever_as_null() {
        let cfg = ControlPlaneConfig::local(
            std::path::Path::new("/var/lib/wardmesh"),
            "127.0.0.1:7443".parse().unwrap(),
        );
        let dump = serde_json::to_value(&cfg).unwrap();
        assert_eq!(
            dump["retention"],
            serde_json::json!({
                "flow_retention": 2_592_000,
                "audit_retention": null,
                "retention_interval": 3600,
            })
        );
    }
}
