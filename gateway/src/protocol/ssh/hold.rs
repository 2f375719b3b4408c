//! Holding one operation of a job channel for approval: the request goes to the approvals
//! service, the job is told on the channel which request it waits for and how it gets decided, and
//! the outcome is on record before anything goes on. Protocol code asks; people decide.

use crate::record::EventKind;
use std::sync::Arc;

use bytes::Bytes;
use russh::{ChannelId, server};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::approval::{ApprovalOutcome, ApprovalRequest, Submission};

/// How a held operation ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Held {
    Approved,
    /// Denied, expired, or approved but not recorded: the operation must not happen.
    Refused {
        reason: String,
    },
    /// The job closed the channel or left while waiting; the request was abandoned.
    Gone,
}

/// What a held operation of one channel needs to ask and to talk to the job.
#[derive(Clone)]
pub(super) struct Hold {
    pub ctx: Arc<Ctx>,
    pub handle: server::Handle,
    pub channel: ChannelId,
    /// The channel's number in the session record.
    pub number: u32,
    /// Cancelled when the job closes the channel or leaves.
    pub gone: CancellationToken,
}

impl Hold {
    /// One line from the gateway on the channel's stderr (a terminal shows it too).
    pub(super) async fn say(&self, text: &str) {
        let _ = self
            .handle
            .extended_data(self.channel, 1, Bytes::from(format!("gateway: {text}\r\n")))
            .await;
    }

    /// Asks for approval of `operation` under `rule` and waits for the decision. A standing grant
    /// answers at once; otherwise the job reads the request id and how to decide it.
    pub(super) async fn ask(
        &self,
        rule: &str,
        kind: &str,
        operation: &str,
        detail: serde_json::Value,
    ) -> Held {
        let ctx = &self.ctx;
        let request = ApprovalRequest {
            session_id: ctx.session_id,
            target: ctx.target.name.clone(),
            rule: rule.to_string(),
            identity: ctx.identity.clone(),
            operation: operation.to_string(),
            kind: kind.to_string(),
            detail,
            process: ctx.process.clone(),
            job_id: ctx.job_id.clone(),
        };
        let outcome = match ctx.approvals.submit(&request).await {
            Submission::Decided(o) => o,
            Submission::Waiting(ticket) => {
                self.say(&format!(
                    "{operation:?} needs approval (rule {rule:?}): request {}; {}; waiting until {}…",
                    ticket.id, ticket.how, ticket.deadline
                ))
                .await;
                tokio::select! {
                    o = ticket.wait() => o,
                    // Dropping the ticket marks the request abandoned.
                    () = self.gone.cancelled() => return Held::Gone,
                }
            }
        };
        // Write-ahead: an approved operation goes on only once its approval is on record.
        let recorded = ctx
            .store
            .append_event(
                ctx.session_id,
                EventKind::SshApproval,
                json!({ "channel": self.number, "kind": kind, "command": operation, "rule": rule, "outcome": outcome }),
            )
            .await
            .is_ok();
        let held = match outcome {
            ApprovalOutcome::Approved { by } if recorded => {
                self.say(&format!("approved by {by}")).await;
                return Held::Approved;
            }
            ApprovalOutcome::Approved { .. } => Held::Refused {
                reason: "the gateway cannot record".into(),
            },
            ApprovalOutcome::Denied { reason } => Held::Refused { reason },
        };
        if let Held::Refused { reason } = &held {
            self.say(&format!("denied: {reason}")).await;
        }
        held
    }
}
