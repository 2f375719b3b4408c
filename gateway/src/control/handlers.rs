//! Answers to the control API's requests, from the parts of the daemon they concern.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Request, Response, Status};
use crate::{approval::Approvals, lifecycle::JobControl, record::Store};

/// What the control API uses.
pub struct Context {
    pub store: Store,
    pub approvals: Approvals,
    pub lifecycle: Arc<JobControl>,
    /// The daemon's status, assembled by whoever owns its parts.
    pub status: Box<dyn Fn() -> Status + Send + Sync>,
    /// `[approvals] cli_unix_group`: members may use the approval commands.
    pub cli_unix_group: Option<String>,
    pub shutdown: CancellationToken,
}

impl Context {
    /// Answers one request of an authorized caller.
    pub async fn handle(&self, request: Request, uid: u32) -> Response {
        let result = match request {
            Request::Status => Ok(Response::Status(Box::new((self.status)()))),
            Request::CreateJob { token } => {
                self.lifecycle.create_job(token).await.map(Response::Job)
            }
            Request::Attach { cgroup, token } => self
                .lifecycle
                .attach(&cgroup, token)
                .await
                .map(Response::Job),
            Request::EndJob { job_id, cgroup } => self
                .lifecycle
                .end_job_request(job_id, cgroup)
                .await
                .map(|job_id| Response::Ended { job_id }),
            Request::ListSessions { limit } => self
                .store
                .list_sessions(limit)
                .await
                .map(|sessions| Response::Sessions { sessions })
                .map_err(|e| e.to_string()),
            Request::ListApprovals { recent } => self
                .approvals
                .list(recent)
                .await
                .map(|approvals| Response::Approvals { approvals })
                .map_err(|e| e.to_string()),
            Request::ShowApproval { id } => self
                .approvals
                .show(&id)
                .await
                .map(|v| Response::Approval(Box::new(v)))
                .map_err(|e| e.to_string()),
            Request::DecideApproval {
                id,
                approve,
                for_seconds,
                reason,
            } => {
                let approver = self.approvals.unix_approver(uid);
                let verdict = if approve {
                    crate::approval::model::Verdict::Approve { for_seconds }
                } else {
                    crate::approval::model::Verdict::Deny { reason }
                };
                self.approvals
                    .decide(&id, &approver, verdict)
                    .await
                    .map(|v| Response::Approval(Box::new(v)))
                    .map_err(|e| e.to_string())
            }
            Request::ShowSession { id, after, limit } => self
                .store
                .session_page(
                    id,
                    after,
                    limit
                        .unwrap_or(super::MAX_EVENTS_PER_PAGE)
                        .min(super::MAX_EVENTS_PER_PAGE),
                )
                .await
                .map(|s| Response::Session(Box::new(s)))
                .map_err(|e| e.to_string()),
        };
        result.unwrap_or_else(|message| Response::Error { message })
    }
}
