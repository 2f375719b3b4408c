//! The control API: newline-delimited JSON over a Unix socket (mode 0600), one request and one
//! response per connection. Callers are checked before their request is read: root only (or the
//! approvers' group, for approvals), and never a process inside an agent job (by a pidfd of the
//! process that connected, not by its possibly reused pid).

pub mod client;
mod handlers;
mod peer;
pub mod server;

pub use handlers::Context;

use serde::{Deserialize, Serialize};

use crate::{
    approval::store::ApprovalView,
    identity::IssuerStatus,
    record::{JobRecord, SessionRecord, SessionSummary},
};

/// Largest request or response line accepted.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// Events per `ShowSession` answer at most (and by default): keeps an answer well under the
/// client's 64 MiB limit, whatever a session recorded (result samples are capped per event).
pub const MAX_EVENTS_PER_PAGE: u32 = 2000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// `gateway run`: a new job cgroup owned by the daemon.
    CreateJob {
        token: Option<String>,
    },
    /// `gateway attach`: bind an existing cgroup.
    Attach {
        cgroup: String,
        token: Option<String>,
    },
    /// `gateway detach`, and the end of `gateway run` (`remove` kills and removes the cgroup).
    EndJob {
        job_id: Option<String>,
        cgroup: Option<String>,
    },
    ListSessions {
        limit: u32,
    },
    /// A session and one page of its events (those after event id `after`, at most `limit`,
    /// which the daemon caps at [`MAX_EVENTS_PER_PAGE`]).
    ShowSession {
        id: i64,
        #[serde(default)]
        after: i64,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Pending approval requests and the most recent decided ones.
    ListApprovals {
        recent: u32,
    },
    /// One approval request, pending or decided, in full.
    ShowApproval {
        id: String,
    },
    /// Approve (optionally for a duration) or deny an approval request.
    DecideApproval {
        id: String,
        approve: bool,
        for_seconds: Option<u64>,
        reason: Option<String>,
    },
}

impl Request {
    /// Requests members of `[approvals] cli_unix_group` may make; everything else is root's.
    pub fn is_approval(&self) -> bool {
        matches!(
            self,
            Request::ListApprovals { .. }
                | Request::ShowApproval { .. }
                | Request::DecideApproval { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Error { message: String },
    Status(Box<Status>),
    Job(JobRecord),
    Ended { job_id: String },
    Sessions { sessions: Vec<SessionSummary> },
    Session(Box<SessionRecord>),
    Approvals { approvals: Vec<ApprovalView> },
    Approval(Box<ApprovalView>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub mode: String,
    pub listen: Vec<String>,
    pub control_socket: String,
    pub state_dir: String,
    pub bpf_pin_dir: String,
    /// "active", or "unavailable: why" (packet/XDP/vsock sockets then not refused).
    #[serde(default)]
    pub socket_family_guard: String,
    pub cgroup_root: String,
    pub started_at: String,
    pub active_sessions: usize,
    pub targets: Vec<TargetStatus>,
    pub jobs: Vec<JobRecord>,
    #[serde(default)]
    pub issuers: Vec<IssuerStatus>,
    #[serde(default)]
    pub recording: RecordingStatus,
    #[serde(default)]
    pub containers: ContainersStatus,
}

/// Jobs in containers and Docker through the gateway.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainersStatus {
    /// Job network namespaces the daemon listens in now.
    pub netns_listeners: usize,
    /// Why the last job namespace could not be listened in, if one could not.
    #[serde(default)]
    pub netns_error: Option<String>,
    /// `[docker]`, when the gateway serves the Docker API.
    #[serde(default)]
    pub docker: Option<DockerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerStatus {
    /// The engine's socket (what jobs must not reach directly).
    pub engine: String,
    /// The gateway's socket.
    pub listen: String,
    /// How jobs' Docker clients reach the gateway instead of the engine, per kind of job.
    pub interception: Vec<String>,
}

/// Whether sessions can be recorded (a gateway that cannot record refuses them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordingStatus {
    /// Free space on the file system of the state directory, when it can be read.
    pub free_bytes: Option<u64>,
    #[serde(flatten)]
    pub health: crate::record::Health,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetStatus {
    pub name: String,
    pub protocol: String,
    pub address: String,
}
