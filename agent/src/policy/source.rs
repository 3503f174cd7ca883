//! Where the policy context and bundles come from: the control plane's agent endpoints
//! over mTLS with the agent's SVID.

use std::future::Future;
use std::time::Duration;

use wardmesh_proto::paths;
use wardmesh_proto::policy::{AgentPolicyContext, PolicyContextRequest};

use crate::config::SYNC_GRACE;
use crate::identity::{ControlPlaneClient, SourceError, WorkloadState};

pub trait PolicySource: Send + Sync + 'static {
    /// Long poll: answers at once when `req.generation` is stale.
    fn context(
        &self,
        current: &WorkloadState,
        req: &PolicyContextRequest,
    ) -> impl Future<Output = Result<AgentPolicyContext, SourceError>> + Send;

    fn bundle(
        &self,
        current: &WorkloadState,
        revision: &str,
    ) -> impl Future<Output = Result<Vec<u8>, SourceError>> + Send;
}

const BUNDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl PolicySource for ControlPlaneClient {
    async fn context(
        &self,
        current: &WorkloadState,
        req: &PolicyContextRequest,
    ) -> Result<AgentPolicyContext, SourceError> {
        let client = self.client_for(current)?;
        let timeout = Duration::from_secs(u64::from(req.wait_seconds)) + SYNC_GRACE;
        self.post(&client, paths::AGENT_POLICY_CONTEXT, req, timeout)
            .await
    }

    async fn bundle(
        &self,
        current: &WorkloadState,
        revision: &str,
    ) -> Result<Vec<u8>, SourceError> {
        let client = self.client_for(current)?;
        self.get_bytes(
            &client,
            paths::AGENT_POLICY_BUNDLE,
            &[("revision", revision)],
            BUNDLE_TIMEOUT,
        )
        .await
    }
}
