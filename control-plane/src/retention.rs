//! Retention: a background task that deletes flows older than the flow retention and
//! prunes the audit log older than the audit retention (by default it keeps the audit log
//! forever), once per interval.
//!
//! The audit log is only ever cut at a signed checkpoint, through [`AuditLog::prune_to`]:
//! the checkpoint becomes the log's anchor, so `wardctl audit verify` still checks every
//! entry that is left. The cut is the newest checkpoint signed before the cutoff; every
//! entry it covers was appended before it was signed, so nothing younger than the
//! retention goes. No checkpoint is signed here: the checkpoint task signs the head every
//! `--audit-checkpoint-seconds`, so the cut lags the cutoff by at most that interval, and
//! a checkpoint signed now would itself be too young to cut at.
//!
//! Decide, then do: [`plan`] works out what a pass prunes from the time, the settings and
//! the checkpoints, without I/O; [`Retention::run_once`] reads, prunes, audits each
//! pruning (`flows.pruned` here, `audit.pruned` by `prune_to`), logs counts and updates
//! the metrics. Replicas sharing a PostgreSQL store may all run it: deleting flows twice
//! finds nothing, and pruning at the anchor again changes (and audits) nothing.

use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardmesh_store::{Checkpoint, Store, StoreError};

use crate::audit::{AuditLog, AuditRecord};
use crate::config::RetentionConfig;
use crate::identity::Clock;

/// The actor of the audit entries retention writes.
pub const ACTOR: &str = "retention";

/// Audit entry kinds written by retention.
pub mod kinds {
    /// Flows older than the flow retention were deleted.
    pub const FLOWS_PRUNED: &str = "flows.pruned";
    /// The audit log was pruned up to a checkpoint (written by `AuditLog::prune_to`).
    pub const AUDIT_PRUNED: &str = crate::audit::kinds::AUDIT_PRUNED;
}

/// Checkpoints read per page, and pages per pass: a first pass over years of log reads a
/// bounded number (and so cuts at most that far); the next passes continue from there.
const CHECKPOINT_PAGE: u32 = 1000;
const MAX_CHECKPOINT_PAGES: usize = 10;

/// What one pass prunes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Delete the flows recorded before this instant.
    pub flows_before: Option<OffsetDateTime>,
    /// Prune the audit log up to this checkpoint.
    pub audit_to: Option<AuditCut>,
}

/// A checkpoint to prune the audit log to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCut {
    pub checkpoint_id: i64,
    pub seq: i64,
}

/// `now - keep`: data older than this goes. `None` to keep forever (`keep` is `None`), or
/// when `keep` reaches back before any representable time.
pub fn cutoff(now: OffsetDateTime, keep: Option<Duration>) -> Option<OffsetDateTime> {
    now.checked_sub(time::Duration::try_from(keep?).ok()?)
}

/// What to prune at `now`: flows before the flow cutoff; the audit log up to the checkpoint
/// with the highest seq among `checkpoints` that were signed strictly before the audit
/// cutoff and lie past the current anchor (`anchor_seq`, 0 if never pruned).
pub fn plan(
    now: OffsetDateTime,
    config: &RetentionConfig,
    anchor_seq: i64,
    checkpoints: &[Checkpoint],
) -> Plan {
    let audit_to = cutoff(now, config.audit_retention).and_then(|cut| {
        checkpoints
            .iter()
            .filter(|c| c.at < cut && c.seq > anchor_seq)
            .max_by_key(|c| (c.seq, c.id))
            .map(|c| AuditCut {
                checkpoint_id: c.id,
                seq: c.seq,
            })
    });
    Plan {
        flows_before: cutoff(now, config.flow_retention),
        audit_to,
    }
}

/// What a pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    pub flows_removed: u64,
    pub audit_entries_removed: u64,
    /// The anchor's seq after an audit pruning.
    pub audit_anchor_seq: Option<i64>,
}

/// Retention metrics; the label of `passes` is the closed set `ok`, `error`.
#[derive(Debug, Clone)]
pub struct RetentionMetrics {
    pub flows_removed: IntCounter,
    pub audit_entries_removed: IntCounter,
    pub passes: IntCounterVec,
    /// Unix time of the last pass that finished without error (0: none yet).
    pub last_success: IntGauge,
}

impl RetentionMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let flows_removed = IntCounter::new(
            "wardmesh_cp_retention_flows_deleted_total",
            "Flows deleted because they were older than the flow retention",
        )?;
        let audit_entries_removed = IntCounter::new(
            "wardmesh_cp_retention_audit_entries_pruned_total",
            "Audit entries pruned (up to a signed checkpoint) by the audit retention",
        )?;
        let passes = IntCounterVec::new(
            Opts::new(
                "wardmesh_cp_retention_passes_total",
                "Retention passes by outcome (ok or error)",
            ),
            &["outcome"],
        )?;
        let last_success = IntGauge::new(
            "wardmesh_cp_retention_last_success_timestamp_seconds",
            "Unix time of the last retention pass that finished without error",
        )?;
        registry.register(Box::new(flows_removed.clone()))?;
        registry.register(Box::new(audit_entries_removed.clone()))?;
        registry.register(Box::new(passes.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        Ok(Self {
            flows_removed,
            audit_entries_removed,
            passes,
            last_success,
        })
    }
}

/// The retention task's state: a cheap clone of the store and audit handles.
#[derive(Clone)]
pub struct Retention {
    store: Store,
    audit: AuditLog,
    config: RetentionConfig,
    clock: Clock,
    metrics: RetentionMetrics,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Retention {
    pub fn new(
        store: Store,
        audit: AuditLog,
        config: RetentionConfig,
        clock: Clock,
        metrics: RetentionMetrics,
    ) -> Self {
        Self {
            store,
            audit,
            config,
            clock,
            metrics,
        }
    }

    /// Runs a pass every `retention_interval`, the first one interval after start (a
    /// control plane that just started has more urgent work). Runs until aborted.
    pub async fn run(self) {
        let every = self
            .config
            .retention_interval
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.run_once().await {
                tracing::warn!(error = %e, "retention pass failed; retrying next interval");
            }
        }
    }

    /// One pass: decides with [`plan`], then prunes flows, then the audit log.
    pub async fn run_once(&self) -> Result<Outcome, StoreError> {
        let result = self.prune().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.passes.with_label_values(&[outcome]).inc();
        if result.is_ok() {
            self.metrics
                .last_success
                .set((self.clock)().unix_timestamp());
        }
        result
    }

    async fn prune(&self) -> Result<Outcome, StoreError> {
        let now = (self.clock)();
        let anchor_seq = self
            .store
            .audit_anchor()
            .await?
            .map_or(0, |a| a.checkpoint.seq);
        let checkpoints = match cutoff(now, self.config.audit_retention) {
            Some(cut) => self.checkpoints_until(cut).await?,
            None => Vec::new(),
        };
        let plan = plan(now, &self.config, anchor_seq, &checkpoints);
        let mut out = Outcome::default();
        if let Some(before) = plan.flows_before {
            out.flows_removed = self.store.prune_flows(before).await?;
            self.metrics.flows_removed.inc_by(out.flows_removed);
            if out.flows_removed > 0 {
                self.audit
                    .append(
                        AuditRecord::new(kinds::FLOWS_PRUNED, ACTOR, "flows").detail(
                            serde_json::json!({
                                "before": before.format(&Rfc3339).unwrap_or_default(),
                                "flows_removed": out.flows_removed,
                                "retention_secs": self.config.flow_retention.map(|d| d.as_secs()),
                            }),
                        ),
                    )
                    .await?;
            }
        }
        if let Some(cut) = plan.audit_to {
            let pruned = self.audit.prune_to(cut.checkpoint_id, ACTOR).await?;
            out.audit_entries_removed = pruned.entries_removed;
            out.audit_anchor_seq = Some(pruned.anchor.checkpoint.seq);
            self.metrics
                .audit_entries_removed
                .inc_by(pruned.entries_removed);
        }
        if out.flows_removed > 0 || out.audit_entries_removed > 0 {
            tracing::info!(
                flows_removed = out.flows_removed,
                audit_entries_removed = out.audit_entries_removed,
                "retention pass pruned old data"
            );
        } else {
            tracing::debug!("retention pass: nothing to prune");
        }
        Ok(out)
    }

    /// The checkpoints a cut is chosen from: ascending by id up to the first page holding
    /// one signed at or after `cutoff` (ids and signing times ascend together, give or take
    /// clock skew between replicas, which at worst defers a cut to the next pass), and at
    /// most [`MAX_CHECKPOINT_PAGES`] pages.
    async fn checkpoints_until(
        &self,
        cutoff: OffsetDateTime,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let mut out: Vec<Checkpoint> = Vec::new();
        for _ in 0..MAX_CHECKPOINT_PAGES {
            let after = out.last().map_or(0, |c| c.id);
            let page = self.store.list_checkpoints(after, CHECKPOINT_PAGE).await?;
            let done = page.len() < CHECKPOINT_PAGE as usize || page.iter().any(|c| c.at >= cutoff);
            out.extend(page);
            if done {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use wardmesh_proto::flow::{FlowDirection, FlowKind, FlowRecord, Verdict, new_record_id};
    use wardmesh_store::AuditQuery;

    use super::*;
    use crate::audit::{AuditSigner, AuditVerifier, VerifyReport};

    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap()
    }

    fn days_ago(days: i64) -> OffsetDateTime {
        now() - time::Duration::days(days)
    }

    fn config(flows: Option<u64>, audit: Option<u64>) -> RetentionConfig {
        RetentionConfig {
            flow_retention: flows.map(|d| DAY * d as u32),
            audit_retention: audit.map(|d| DAY * d as u32),
            retention_interval: Duration::from_secs(3600),
        }
    }

    fn checkpoint(id: i64, seq: i64, at: OffsetDateTime) -> Checkpoint {
        Checkpoint {
            id,
            seq,
            head_hash: format!("{seq:064x}"),
            at,
            key_id: "k".to_owned(),
            signature: String::new(),
        }
    }

    #[test]
    fn the_plan_cuts_flows_at_the_retention_and_audit_at_the_newest_older_checkpoint() {
        let cps = [
            checkpoint(1, 10, days_ago(400)),
            checkpoint(2, 20, days_ago(366)),
            checkpoint(3, 30, days_ago(365)), // exactly at the cutoff: too young
            checkpoint(4, 40, days_ago(100)),
        ];
        let p = plan(now(), &config(Some(30), Some(365)), 0, &cps);
        assert_eq!(p.flows_before, Some(days_ago(30)));
        assert_eq!(
            p.audit_to,
            Some(AuditCut {
                checkpoint_id: 2,
                seq: 20
            })
        );
        // Any order; the highest seq wins.
        let mut shuffled = cps.clone();
        shuffled.reverse();
        assert_eq!(
            plan(now(), &config(None, Some(365)), 0, &shuffled),
            p_audit_only(2, 20)
        );
        // Nothing past the anchor: nothing to do (pruning again would change nothing).
        assert_eq!(
            plan(now(), &config(None, Some(365)), 20, &cps),
            Plan::default()
        );
        assert_eq!(
            plan(now(), &config(None, Some(365)), 15, &cps),
            p_audit_only(2, 20)
        );
        // No checkpoint old enough, or none at all.
        assert_eq!(
            plan(now(), &config(None, Some(500)), 0, &cps),
            Plan::default()
        );
        assert_eq!(plan(now(), &config(None, Some(1)), 0, &[]), Plan::default());
    }

    fn p_audit_only(checkpoint_id: i64, seq: i64) -> Plan {
        Plan {
            flows_before: None,
            audit_to: Some(AuditCut { checkpoint_id, seq }),
        }
    }

    #[test]
    fn keeping_forever_prunes_nothing() {
        let cps = [checkpoint(1, 10, days_ago(4000))];
        assert_eq!(plan(now(), &config(None, None), 0, &cps), Plan::default());
        // The defaults: thirty days of flows, the audit log forever.
        let p = plan(now(), &RetentionConfig::default(), 0, &cps);
        assert_eq!((p.flows_before, p.audit_to), (Some(days_ago(30)), None));
        // A retention reaching back before representable time keeps everything.
        assert_eq!(cutoff(now(), Some(Duration::from_secs(u64::MAX))), None);
    }

    /// A clock the test moves.
    fn clock(at: OffsetDateTime) -> (Clock, Arc<Mutex<OffsetDateTime>>) {
        let now = Arc::new(Mutex::new(at));
        let read = now.clone();
        (Arc::new(move || *read.lock().unwrap()), now)
    }

    fn flow(n: u128, at: OffsetDateTime) -> FlowRecord {
        FlowRecord {
            id: new_record_id(n + 1),
            at,
            request_id: Some(format!("req-{n}")),
            kind: FlowKind::Http,
            direction: FlowDirection::Inbound,
            source: Some("spiffe://wardmesh.local/ns/clinic/sa/frontend".into()),
            destination: "spiffe://wardmesh.local/ns/records/sa/notes".into(),
            method: Some("GET".into()),
            route: Some("/patients/{patient}/notes".into()),
            status: Some(200),
            verdict: Verdict::Allowed,
            policy_revision: Some("rev-1".into()),
            rule: Some("treating_clinician".into()),
            latency_us: 900,
            bytes_in: 10,
            bytes_out: 20,
            user: Some("dr-alice".into()),
            purpose: Some("TREAT".into()),
            break_glass: false,
            subject_pseudonym: None,
        }
    }

    /// What `wardctl audit verify` does, reading the store directly.
    async fn verify(store: &Store, signer: &AuditSigner) -> VerifyReport {
        let anchor = store.audit_anchor().await.unwrap().map(|a| a.checkpoint);
        let after = anchor.as_ref().map_or(0, |a| a.seq);
        let checkpoints = store.list_checkpoints(0, 1000).await.unwrap();
        let mut v = AuditVerifier::new(*signer.public(), anchor, checkpoints);
        let q = AuditQuery {
            after,
            limit: 1000,
            ..AuditQuery::default()
        };
        for e in store.audit_entries(&q).await.unwrap() {
            if !v.push(&e) {
                break;
            }
        }
        v.finish()
    }

    async fn entries(store: &Store) -> Vec<wardmesh_store::AuditEntry> {
        let q = AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        };
        store.audit_entries(&q).await.unwrap()
    }

    #[tokio::test]
    async fn a_pass_deletes_old_flows_keeps_recent_ones_and_the_log_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("wardmesh.db").display());
        let store = Store::open(&url).await.unwrap();
        let signer = Arc::new(AuditSigner::generate().unwrap());
        let (clock, set_now) = clock(days_ago(800));
        let audit = AuditLog::new(store.clone(), signer.clone(), clock.clone());

        // Flows: 40 days old, 31 days old, 29 days old, today.
        let old = [flow(1, days_ago(40)), flow(2, days_ago(31))];
        let recent = [flow(3, days_ago(29)), flow(4, now())];
        store.ingest_flows(&old).await.unwrap();
        store.ingest_flows(&recent).await.unwrap();

        // Audit: entries and a checkpoint 800 days ago, 500 days ago, 10 days ago.
        let mut cuts = Vec::new();
        for (days, n) in [(800, 3), (500, 4), (10, 2)] {
            *set_now.lock().unwrap() = days_ago(days);
            for i in 0..n {
                audit
                    .append(
                        AuditRecord::new("identity.issued", "test", "spiffe://td/ns/a/sa/b")
                            .detail(serde_json::json!({ "n": i })),
                    )
                    .await
                    .unwrap();
            }
            cuts.push(audit.checkpoint_if_moved().await.unwrap().unwrap());
        }
        assert_eq!(cuts.iter().map(|c| c.seq).collect::<Vec<_>>(), [3, 7, 9]);
        *set_now.lock().unwrap() = now();

        let registry = Registry::new();
        let metrics = RetentionMetrics::new(&registry).unwrap();
        let retention = Retention::new(
            store.clone(),
            audit.clone(),
            config(Some(30), Some(365)),
            clock,
            metrics.clone(),
        );
        let out = retention.run_once().await.unwrap();
        assert_eq!(
            out,
            Outcome {
                flows_removed: 2,
                audit_entries_removed: 7,
                audit_anchor_seq: Some(7),
            }
        );

        let left = store
            .query_flows(&wardmesh_store::FlowQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        let left: Vec<FlowRecord> = left.into_iter().map(|f| f.record).collect();
        assert_eq!(left, recent);

        // The log starts at the 500-day-old checkpoint and verifies from it.
        let report = verify(&store, &signer).await;
        assert!(report.ok, "{report:?}");
        assert_eq!((report.anchor_seq, report.first_seq), (Some(7), Some(8)));
        let kept = entries(&store).await;
        let kinds_and_actors: Vec<(&str, &str)> = kept
            .iter()
            .map(|e| (e.kind.as_str(), e.actor.as_str()))
            .collect();
        assert_eq!(
            kinds_and_actors,
            [
                ("identity.issued", "test"),
                ("identity.issued", "test"),
                (kinds::FLOWS_PRUNED, ACTOR),
                (kinds::AUDIT_PRUNED, ACTOR),
            ]
        );
        assert_eq!(kept[2].detail["flows_removed"], 2);
        assert_eq!(kept[2].detail["retention_secs"], 30 * 86_400);
        assert_eq!(kept[3].detail["entries_removed"], 7);

        assert_eq!(metrics.flows_removed.get(), 2);
        assert_eq!(metrics.audit_entries_removed.get(), 7);
        assert_eq!(metrics.passes.with_label_values(&["ok"]).get(), 1);
        assert_eq!(metrics.last_success.get(), now().unix_timestamp());

        // A second pass finds nothing and audits nothing.
        assert_eq!(retention.run_once().await.unwrap(), Outcome::default());
        assert_eq!(entries(&store).await.len(), kept.len());
        // New checkpoints still verify after the cut.
        audit.checkpoint_if_moved().await.unwrap().unwrap();
        assert!(verify(&store, &signer).await.ok);
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_runs_one_interval_after_start_and_then_every_interval() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let signer = Arc::new(AuditSigner::generate().unwrap());
        let (clock, set_now) = clock(now());
        let audit = AuditLog::new(store.clone(), signer, clock.clone());
        store.ingest_flows(&[flow(1, days_ago(31))]).await.unwrap();
        let metrics = RetentionMetrics::new(&Registry::new()).unwrap();
        let retention = Retention::new(
            store.clone(),
            audit,
            config(Some(30), None),
            clock,
            metrics.clone(),
        );
        let task = tokio::spawn(retention.run());
        let count = || async {
            store
                .query_flows(&wardmesh_store::FlowQuery {
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len()
        };
        tokio::time::sleep(Duration::from_secs(1800)).await;
        assert_eq!(count().await, 1, "not before the first interval");
        tokio::time::sleep(Duration::from_secs(1801)).await;
        assert_eq!(count().await, 0);
        assert_eq!(metrics.passes.with_label_values(&["ok"]).get(), 1);

        // A flow that ages past the retention goes at the next pass.
        store.ingest_flows(&[flow(2, days_ago(29))]).await.unwrap();
        *set_now.lock().unwrap() = now() + time::Duration::days(2);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(count().await, 0);
        assert_eq!(metrics.flows_removed.get(), 2);
        task.abort();
    }
}
