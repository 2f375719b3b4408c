//! Kernel-path sessions: connections to `path = "kernel"` targets, which the connect programs
//! decide (the job's grants, compiled from the rules when it was bound; its limits; a daemon
//! reading) and let go straight to the destination. The programs record each one through the
//! ring buffer, at connect (or refuse the connect when the record cannot be queued) and at close
//! with its byte counts; this module stores them as sessions, enriched like proxied ones
//! (process from /proc with the exec check, job, identity, rule), with `path: kernel`.
//!
//! What this guarantees, and what it does not: the session is in the ring buffer before the
//! connect returns, and in the store once the daemon has read it — not before the first byte
//! goes out (there is no gateway in the path to hold it back). A `tcp` target has no operations
//! to record write-ahead: who connected where, when, and how many bytes, is all there is.

use std::{collections::HashMap, sync::Arc, time::Duration};

use gateway_common::{ConnInfo, Event};
use serde_json::json;

use super::{Services, process};
use crate::{
    ebpf::boot_ns,
    identity::Identity,
    jobs::Job,
    policy::Decision,
    record::{EventKind, NewSession, Records, SessionEnd, SessionKind, SessionPath},
};

/// The kernel-path sessions open now, by socket cookie (read by one task: no lock).
#[derive(Default)]
pub struct OpenSessions {
    by_cookie: HashMap<u64, i64>,
}

/// The kernel-path records of one read of the ring buffer, stored with one journal write: a
/// job's connects come as fast as the kernel makes them, and a write per record would fall
/// behind until its unread records hit `server.max_pending_connections_per_job`.
#[derive(Default)]
pub struct Batch {
    records: Records,
    /// Sessions opened by this batch (forgotten again if it cannot be stored).
    opened: Vec<u64>,
    /// The job slot of each record read, counted read once the batch is stored.
    read: Vec<u32>,
}

/// Most records stored with one write.
pub const BATCH: usize = 64;

impl Batch {
    /// Notes a record of the job in `slot` as read (counted once the batch is stored).
    pub fn read_from(&mut self, slot: u32) {
        self.read.push(slot);
    }

    /// Records read into this batch.
    pub fn len(&self) -> usize {
        self.read.len()
    }

    pub fn is_empty(&self) -> bool {
        self.read.is_empty()
    }
}

impl OpenSessions {
    /// The sessions a previous daemon left open: their connections went on without it, and
    /// their ends are in the ring buffer for this one.
    pub async fn load(services: &Services) -> OpenSessions {
        match services.store.open_kernel_sessions().await {
            Ok(open) => OpenSessions {
                by_cookie: open.into_iter().collect(),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot read the open kernel-path sessions; their ends will not be recorded");
                OpenSessions::default()
            }
        }
    }

    /// The cookies of `events`' kernel-path connections that are stored already (a daemon that
    /// stored them and died before it could say so).
    pub async fn already_stored(
        &self,
        events: &[Event],
        services: &Services,
    ) -> std::collections::HashSet<u64> {
        let cookies = events
            .iter()
            .filter(|e| e.kind == gateway_common::EVENT_KERNEL_CONNECT)
            .map(|e| e.cookie)
            .collect();
        match services.store.kernel_sessions_with_cookies(cookies).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(error = %e, "cannot tell which kernel-path connections a previous daemon stored; some may be recorded twice");
                Default::default()
            }
        }
    }

    /// Stores the batch (one journal write), then counts its records read: a job that ends
    /// waits for its records to be stored.
    pub fn store(&mut self, batch: Batch, services: &Services) {
        if let Err(e) = services.store.log_records(batch.records) {
            tracing::error!(error = %e, records = batch.read.len(), "cannot record kernel-path connections");
            for cookie in &batch.opened {
                self.by_cookie.remove(cookie);
            }
        }
        for slot in batch.read {
            services.recorder.job_states.count_read(slot);
        }
    }

    /// Records a connection the kernel let through (stored with `batch`).
    pub async fn connected(&mut self, event: &Event, services: &Services, batch: &mut Batch) {
        let info = conn_info(event);
        let dst = super::destination(&info);
        let (job, identity) = job_of(event, services);
        let target = services.target_configs.get(event.detail as usize);
        let process = super::describe_process(&info, job.as_deref(), services).await;
        // The grants were compiled from these rules: this names the rule that allowed it.
        let (rule, reason) = match target
            .map(|t| services.policy.decide_connection(&identity, &t.name))
        {
            Some(Decision::Allow { rule }) => (Some(rule), None),
            other => {
                tracing::warn!(cookie = event.cookie, %dst, "the kernel let a connection through that the rules no longer allow");
                (
                    None,
                    Some(format!(
                        "let through by the kernel's grant; the rules now say: {}",
                        other
                            .as_ref()
                            .map_or("no such target", |d| d.reason().unwrap_or("-"))
                    )),
                )
            }
        };
        tracing::debug!(pid = event.pid, %dst, cookie = event.cookie, "kernel-path connection");
        let session = NewSession {
            kind: SessionKind::Kernel,
            job_id: job.map(|j| j.id.clone()),
            target: target.map(|t| t.name.clone()),
            protocol: Some("tcp".into()),
            destination: dst.to_string(),
            process: Some(process),
            identity,
            decision: "allow".into(),
            rule,
            reason,
            started_at: wall_time(event.boot_ns),
            ended_at: None,
            path: Some(SessionPath::Kernel),
            cookie: Some(event.cookie),
        };
        let id = batch.records.session(&services.store, session);
        self.by_cookie.insert(event.cookie, id);
        batch.opened.push(event.cookie);
    }

    /// Records the end of a connection, with the bytes the kernel counted (stored with `batch`).
    pub fn closed(&mut self, event: &Event, batch: &mut Batch) {
        let Some(id) = self.by_cookie.remove(&event.cookie) else {
            tracing::debug!(
                cookie = event.cookie,
                "end of a kernel-path connection that was not recorded open"
            );
            return;
        };
        batch.records.close(
            id,
            vec![(
                EventKind::Closed,
                json!({ "path": "kernel", "bytes_up": event.bytes_up, "bytes_down": event.bytes_down }),
            )],
            SessionEnd {
                bytes_up: event.bytes_up,
                bytes_down: event.bytes_down,
            },
        );
    }
}

/// A connect to a kernel-path target the job holds no grant for: the reason the rules (or the
/// binding) give, as the gateway would have refused it.
pub fn denied(event: &Event, services: &Services) -> NewSession {
    let info = conn_info(event);
    let dst = super::destination(&info);
    let (job, identity) = job_of(event, services);
    let target = services.target_configs.get(event.detail as usize);
    let decision = match (target, job.as_ref().and_then(|j| j.binding_expired())) {
        (_, Some(reason)) => Decision::Deny { rule: None, reason },
        (Some(t), None) => match services.policy.decide_connection(&identity, &t.name) {
            Decision::RequireApproval { rule } => Decision::Deny {
                rule: Some(rule),
                reason: "approval of whole connections is not supported; approve statements or commands instead".into(),
            },
            // Granted when bound, refused now: the job ended, or its grant was taken back.
            Decision::Allow { rule } => Decision::Deny {
                rule: Some(rule),
                reason: "the job holds no grant for this target (it is not attached, or was bound again)".into(),
            },
            d => d,
        },
        (None, None) => Decision::Deny {
            rule: None,
            reason: format!("{dst} is no longer a target"),
        },
    };
    NewSession {
        kind: SessionKind::Kernel,
        job_id: job.map(|j| j.id.clone()),
        target: target.map(|t| t.name.clone()),
        protocol: Some("tcp".into()),
        destination: dst.to_string(),
        process: Some(process::captured(&info)),
        identity,
        decision: "deny".into(),
        rule: decision.rule().map(str::to_string),
        reason: decision.reason().map(str::to_string),
        started_at: wall_time(event.boot_ns),
        ended_at: Some(wall_time(event.boot_ns)),
        path: Some(SessionPath::Kernel),
        cookie: None,
    }
}

/// The job a kernel event belongs to (by the slot the program saw, else by its cgroup) and the
/// identity it is bound to (unauthenticated without a job).
pub fn job_of(event: &Event, services: &Services) -> (Option<Arc<Job>>, Identity) {
    let job = services
        .jobs
        .of_kernel_record(event.job_slot, event.cgroup_id);
    let identity = job
        .as_ref()
        .map_or_else(Identity::unauthenticated, |j| j.identity.clone());
    (job, identity)
}

/// What the connect program captured, as the process describer takes it.
fn conn_info(event: &Event) -> ConnInfo {
    ConnInfo {
        dst_addr: event.addr,
        dst_port: event.port,
        family: event.family,
        listener_family: 0,
        _pad: 0,
        pid: event.pid,
        tid: event.tid,
        uid: event.uid,
        gid: event.gid,
        cgroup_id: event.cgroup_id,
        cookie: event.cookie,
        boot_ns: event.boot_ns,
        comm: event.comm,
        job_slot: event.job_slot,
        _pad2: 0,
        netns_cookie: event.netns_cookie,
    }
}

/// The wall-clock time of a CLOCK_BOOTTIME instant of the programs (events may be read long
/// after they happened: after a restart of the daemon).
pub fn wall_time(event_boot_ns: u64) -> String {
    let ago = Duration::from_nanos(boot_ns().saturating_sub(event_boot_ns));
    let at = chrono::Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default();
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
