//! The policy context as the request path reads it: consent records by subject
//! pseudonym, break-glass grants by user, and the pseudonym key. Lookups are pure.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use wardmesh_proto::flow::subject_pseudonym;
use wardmesh_proto::policy::{AgentPolicyContext, BreakGlassGrant, ConsentRecord};
use zeroize::Zeroizing;

#[derive(Default)]
pub struct ContextSnapshot {
    pub generation: String,
    consents: BTreeMap<String, ConsentRecord>,
    grants: Vec<BreakGlassGrant>,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ContextSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextSnapshot")
            .field("generation", &self.generation)
            .field("consents", &self.consents.len())
            .field("grants", &self.grants.len())
            .finish_non_exhaustive()
    }
}

impl ContextSnapshot {
    pub fn from_wire(ctx: AgentPolicyContext) -> Self {
        Self {
            generation: ctx.generation,
            consents: ctx.consents,
            grants: ctx.break_glass,
            key: Zeroizing::new(hex::decode(&ctx.pseudonym_key_hex).unwrap_or_default()),
        }
    }

    /// Whether a pseudonym key arrived (without one, subjects cannot be pseudonymised).
    pub fn has_key(&self) -> bool {
        !self.key.is_empty()
    }

    /// The keyed pseudonym of a data subject (what leaves the agent instead of the id).
    pub fn pseudonym(&self, subject: &str) -> String {
        subject_pseudonym(&self.key, subject)
    }

    /// The subject's consent record as the policy input carries it.
    pub fn consent(&self, pseudonym: &str) -> Option<serde_json::Value> {
        self.consents
            .get(pseudonym)
            .and_then(|r| serde_json::to_value(r).ok())
    }

    /// The grant `user` holds at `now` (the newest if several), as the policy input
    /// carries it: `{grant_id, reason, expires_at}`.
    pub fn break_glass(
        &self,
        user: &str,
        now: OffsetDateTime,
    ) -> Option<(String, serde_json::Value)> {
        let g = self
            .grants
            .iter()
            .filter(|g| {
                g.user == user
                    && g.granted_at <= now + time::Duration::seconds(60)
                    && g.expires_at > now
            })
            .max_by_key(|g| g.expires_at)?;
        let value = serde_json::json!({
            "grant_id": g.grant_id,
            "reason": g.reason,
            "expires_at": crate::identity::rfc3339(g.expires_at),
        });
        Some((g.grant_id.clone(), value))
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn grant(id: &str, user: &str, expires: OffsetDateTime) -> BreakGlassGrant {
        BreakGlassGrant {
            grant_id: id.into(),
            user: user.into(),
            reason: "patient unconscious in the ER".into(),
            granted_by: "sec".into(),
            granted_at: datetime!(2026-01-01 00:00 UTC),
            expires_at: expires,
            review: None,
        }
    }

    #[test]
    fn grants_apply_to_their_user_only_while_valid() {
        let now = datetime!(2026-01-01 00:30 UTC);
        let snap = ContextSnapshot::from_wire(AgentPolicyContext {
            generation: "g1".into(),
            break_glass: vec![
                grant("bg-old", "dr-ada", datetime!(2026-01-01 00:10 UTC)),
                grant("bg-live", "dr-ada", datetime!(2026-01-01 01:00 UTC)),
            ],
            pseudonym_key_hex: "00".repeat(32),
            ..AgentPolicyContext::default()
        });
        let (id, v) = snap.break_glass("dr-ada", now).unwrap();
        assert_eq!(id, "bg-live");
        assert_eq!(v["expires_at"], "2026-01-01T01:00:00Z");
        assert!(snap.break_glass("dr-bob", now).is_none());
        assert!(
            snap.break_glass("dr-ada", datetime!(2026-01-01 01:00 UTC))
                .is_none()
        );
    }

    #[test]
    fn consent_is_found_by_pseudonym_never_by_raw_id() {
        let mut consents = BTreeMap::new();
        let key = [7u8; 32];
        let p = subject_pseudonym(&key, "p-2001");
        consents.insert(
            p.clone(),
            ConsentRecord {
                part2: true,
                purposes: [("TREAT".to_owned(), true)].into(),
            },
        );
        let snap = ContextSnapshot::from_wire(AgentPolicyContext {
            consents,
            pseudonym_key_hex: hex::encode(key),
            ..AgentPolicyContext::default()
        });
        assert_eq!(snap.pseudonym("p-2001"), p);
        assert_eq!(snap.consent(&p).unwrap()["part2"], true);
        assert!(snap.consent("p-2001").is_none());
    }
}
