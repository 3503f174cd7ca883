//! Consent records and break-glass grants: operator writes and listings.
//!
//! A consent is stored under the subject's pseudonym, never the raw patient id, and
//! the audit entry names only the pseudonym. A break-glass grant is time-boxed (at most
//! [`MAX_GRANT_TTL`]), carries its reason, and stays listed — with its audited uses —
//! until reviewed; a review never extends or revives a grant.

use rand::RngCore;
use time::Duration;
use wardmesh_proto::policy::{
    BreakGlassEntry, BreakGlassGrant, BreakGlassRequest, BreakGlassReview, BreakGlassReviewRequest,
    ConsentInfo, ConsentRecord, ConsentRequest,
};
use wardmesh_store::{AuditQuery, ObjectWrite};

use super::{PolicyService, audit_kinds, json, kinds, parse};
use crate::error::ApiFailure;
use crate::operator::Operator;

/// Longest break-glass grant.
pub const MAX_GRANT_TTL: Duration = Duration::hours(24);
const MAX_TEXT: usize = 512;
/// The audit kind flow ingest writes for each request decided under a grant.
pub const BREAKGLASS_USE: &str = "breakglass.use";

/// HL7 PurposeOfUse codes the API accepts (v3 PurposeOfUse value set, common subset).
pub const PURPOSES: &[&str] = &[
    "TREAT", "ETREAT", "HPAYMT", "HOPERAT", "HRESCH", "PUBHLTH", "HMARKT", "HDIRECT", "PATRQT",
    "FAMRQT", "PWATRNY", "SUPNWK", "COVERAGE", "HLEGAL", "CLINTRCH", "DISASTER",
];

impl PolicyService {
    pub async fn set_consent(
        &self,
        op: &Operator,
        req: ConsentRequest,
    ) -> Result<ConsentInfo, ApiFailure> {
        let subject = req.subject.trim();
        if subject.is_empty() || subject.len() > MAX_TEXT {
            return Err(ApiFailure::bad_request(
                "invalid_subject",
                format!("subject must be 1-{MAX_TEXT} characters"),
            ));
        }
        if !PURPOSES.contains(&req.purpose.as_str()) {
            return Err(ApiFailure::bad_request(
                "invalid_purpose",
                format!(
                    "purpose {:?} is not an HL7 PurposeOfUse code this mesh knows ({})",
                    req.purpose,
                    PURPOSES.join(", ")
                ),
            ));
        }
        let pseudonym = self.context.pseudonym(subject);
        let mut record: ConsentRecord =
            match self.store.get_object(kinds::CONSENT, &pseudonym).await? {
                Some(o) => parse(&o.value)?,
                None => ConsentRecord::default(),
            };
        // Part 2 protection, once set, is only lifted explicitly (by a later `--part2`
        // flag being absent it stays): a missed flag must never expose a Part 2 record.
        record.part2 |= req.part2;
        record.purposes.insert(req.purpose.clone(), req.allow);
        let write = ObjectWrite::Put {
            kind: kinds::CONSENT.into(),
            name: pseudonym.clone(),
            value: json(&record)?,
            blob: None,
        };
        let detail = serde_json::json!({
            "subject_pseudonym": pseudonym, "purpose": req.purpose, "allow": req.allow,
            "part2": record.part2,
        });
        self.commit(
            op,
            vec![write],
            audit_kinds::CONSENT_SET,
            &pseudonym,
            detail,
        )
        .await?;
        Ok(ConsentInfo {
            subject_pseudonym: pseudonym,
            record,
            updated_by: op.name.clone(),
            updated_at: (self.clock)(),
        })
    }

    /// Every consent record, or the one of `subject` (looked up by its pseudonym).
    pub async fn list_consents(
        &self,
        subject: Option<&str>,
    ) -> Result<Vec<ConsentInfo>, ApiFailure> {
        let objects = match subject {
            Some(s) => {
                let p = self.context.pseudonym(s.trim());
                self.store
                    .get_object(kinds::CONSENT, &p)
                    .await?
                    .into_iter()
                    .collect()
            }
            None => self.store.list_objects(kinds::CONSENT).await?,
        };
        objects
            .into_iter()
            .map(|o| {
                Ok(ConsentInfo {
                    record: parse(&o.value)?,
                    subject_pseudonym: o.name,
                    updated_by: o.updated_by,
                    updated_at: o.updated_at,
                })
            })
            .collect()
    }

    pub async fn grant_break_glass(
        &self,
        op: &Operator,
        req: BreakGlassRequest,
    ) -> Result<BreakGlassGrant, ApiFailure> {
        let user = req.user.trim();
        let reason = req.reason.trim();
        if user.is_empty() || user.len() > MAX_TEXT {
            return Err(ApiFailure::bad_request(
                "invalid_user",
                format!("user must be the end user's `sub`, 1-{MAX_TEXT} characters"),
            ));
        }
        if reason.len() < 10 || reason.len() > MAX_TEXT {
            return Err(ApiFailure::bad_request(
                "invalid_reason",
                format!(
                    "a break-glass grant needs a reason of 10-{MAX_TEXT} characters that a \
                     reviewer can check later"
                ),
            ));
        }
        let ttl = i64::try_from(req.ttl_seconds)
            .ok()
            .map(Duration::seconds)
            .filter(|t| t.is_positive() && *t <= MAX_GRANT_TTL)
            .ok_or_else(|| {
                ApiFailure::bad_request(
                    "invalid_ttl",
                    format!(
                        "ttl must be between 1 s and {} h",
                        MAX_GRANT_TTL.whole_hours()
                    ),
                )
            })?;
        let now = (self.clock)();
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let grant = BreakGlassGrant {
            grant_id: format!("bg-{}", hex::encode(id)),
            user: user.to_owned(),
            reason: reason.to_owned(),
            granted_by: op.name.clone(),
            granted_at: now,
            expires_at: now + ttl,
            review: None,
        };
        let write = ObjectWrite::Create {
            kind: kinds::GRANT.into(),
            name: grant.grant_id.clone(),
            value: json(&grant)?,
            blob: None,
        };
        let detail = serde_json::json!({
            "user": grant.user, "reason": grant.reason, "ttl_seconds": req.ttl_seconds,
            "expires_at": grant.expires_at.unix_timestamp(),
        });
        self.commit(
            op,
            vec![write],
            audit_kinds::BREAKGLASS_GRANT,
            &grant.grant_id,
            detail,
        )
        .await?;
        tracing::warn!(grant_id = %grant.grant_id, operator = %op.name, ttl_seconds = req.ttl_seconds, "break-glass grant created");
        Ok(grant)
    }

    /// Every grant, newest first, with its audited uses; `pending` keeps only those not
    /// yet reviewed.
    pub async fn list_break_glass(
        &self,
        pending: bool,
    ) -> Result<Vec<BreakGlassEntry>, ApiFailure> {
        let now = (self.clock)();
        let uses = self.count_uses().await?;
        let mut out = Vec::new();
        for o in self.store.list_objects(kinds::GRANT).await? {
            let grant: BreakGlassGrant = parse(&o.value)?;
            if pending && grant.review.is_some() {
                continue;
            }
            out.push(BreakGlassEntry {
                uses: uses.get(&grant.grant_id).copied().unwrap_or(0),
                active: grant.expires_at > now,
                grant,
            });
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.grant.granted_at));
        Ok(out)
    }

    pub async fn review_break_glass(
        &self,
        op: &Operator,
        grant_id: &str,
        req: BreakGlassReviewRequest,
    ) -> Result<BreakGlassGrant, ApiFailure> {
        let note = req.note.trim();
        if note.is_empty() || note.len() > MAX_TEXT {
            return Err(ApiFailure::bad_request(
                "invalid_note",
                format!("a review needs a note of 1-{MAX_TEXT} characters"),
            ));
        }
        let Some(o) = self.store.get_object(kinds::GRANT, grant_id).await? else {
            return Err(ApiFailure::not_found(
                "unknown_grant",
                format!("no break-glass grant {grant_id:?}; `wardctl breakglass list` shows them"),
            ));
        };
        let mut grant: BreakGlassGrant = parse(&o.value)?;
        if grant.review.is_some() {
            return Err(ApiFailure::new(
                http::StatusCode::CONFLICT,
                "already_reviewed",
                format!("grant {grant_id} was already reviewed"),
            ));
        }
        grant.review = Some(BreakGlassReview {
            reviewed_by: op.name.clone(),
            reviewed_at: (self.clock)(),
            note: note.to_owned(),
        });
        let write = ObjectWrite::Put {
            kind: kinds::GRANT.into(),
            name: grant.grant_id.clone(),
            value: json(&grant)?,
            blob: None,
        };
        let detail = serde_json::json!({ "note": note });
        self.commit(
            op,
            vec![write],
            audit_kinds::BREAKGLASS_REVIEW,
            grant_id,
            detail,
        )
        .await?;
        Ok(grant)
    }

    /// `breakglass.use` audit entries per grant id (`detail.grant_id`).
    async fn count_uses(&self) -> Result<std::collections::HashMap<String, u64>, ApiFailure> {
        let mut counts = std::collections::HashMap::new();
        let mut after = 0;
        loop {
            let page = self
                .store
                .audit_entries(&AuditQuery {
                    after,
                    limit: 1000,
                    kind: Some(BREAKGLASS_USE.to_owned()),
                    ..AuditQuery::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                if let Some(id) = e.detail.get("grant_id").and_then(|v| v.as_str()) {
                    *counts.entry(id.to_owned()).or_insert(0) += 1;
                }
            }
        }
        Ok(counts)
    }
}
