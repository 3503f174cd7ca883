//! The Rego policy as an [`Authorizer`]: the input document goes to the bundle's
//! `wardmesh/authz/decision` entrypoint (opa-wasm on wasmtime, a pool of instances), and
//! its `{allow, rule, reason, obligations}` comes back as the proxy's [`Decision`].
//! Any failure inside the policy is already a deny (`policy_error`) by the engine.

use wardmesh_policy::PolicyEngine;
use wardmesh_proto::policy::PolicyMode;

use super::{Authorizer, AuthzInput, Decision};

pub struct WasmAuthorizer {
    engine: PolicyEngine,
    mode: PolicyMode,
}

impl std::fmt::Debug for WasmAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmAuthorizer")
            .field("revision", &self.engine.revision())
            .field("mode", &self.mode)
            .finish()
    }
}

impl WasmAuthorizer {
    pub fn new(engine: PolicyEngine, mode: PolicyMode) -> Self {
        Self { engine, mode }
    }

    pub fn revision(&self) -> &str {
        self.engine.revision()
    }

    pub fn mode(&self) -> PolicyMode {
        self.mode
    }
}

impl Authorizer for WasmAuthorizer {
    fn decide(&self, input: &AuthzInput) -> Decision {
        let d = match serde_json::to_value(input) {
            Ok(doc) => self.engine.evaluate(&doc),
            // The input is our own struct; this cannot fail, but if it did, deny.
            Err(e) => wardmesh_policy::Decision::policy_error(
                format!("cannot encode the policy input: {e}"),
                self.engine.revision(),
            ),
        };
        Decision {
            allow: d.allow,
            rule: d.rule,
            reason: d.reason,
            policy_revision: d.policy_revision,
            obligations: d.obligations,
            dry_run: self.mode == PolicyMode::DryRun,
        }
    }
}
