//! The seam protocol handlers call when a rule says `require_approval`: they describe the operation
//! and wait for an outcome; they never decide.
//!
//! Until the approvals service is wired in (pending requests, notification, decisions by a human
//! who is not the job), every request is answered "denied: approvals are not configured", so a
//! `require_approval` rule fails closed with a clear message instead of silently allowing.

use serde::Serialize;

use crate::identity::Identity;

/// What a handler asks a human to approve.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalRequest {
    pub session_id: i64,
    pub target: String,
    pub rule: String,
    pub identity: Identity,
    /// What would run, as the operator should see it (a statement, a command, a request line).
    pub operation: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ApprovalOutcome {
    Approved { by: String },
    Denied { reason: String },
}

/// The approvals service as handlers see it.
#[derive(Debug, Default)]
pub struct Approvals {}

impl Approvals {
    pub fn new() -> Self {
        Approvals {}
    }

    /// Waits for a decision on `request`.
    pub async fn request(&self, request: &ApprovalRequest) -> ApprovalOutcome {
        tracing::info!(
            session = request.session_id,
            rule = %request.rule,
            target = %request.target,
            "approval required but approvals are not configured; denied"
        );
        ApprovalOutcome::Denied {
            reason: format!(
                "rule {:?} requires approval, but approvals are not configured on this gateway",
                request.rule
            ),
        }
    }
}
