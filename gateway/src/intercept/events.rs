//! What the kernel programs refused (enforce) or let through (audit) without the gateway in the
//! path, recorded as `kernel` sessions. The programs budget them per job and kind (see
//! `budget`): what reaches the ring buffer is recorded. Kernel-path connections come through the
//! same ring buffer (`kernel_path`), unbudgeted: the kernel refuses what it cannot queue.
//!
//! The reader keeps the kernel path open: it moves the `LIVENESS` deadline on while it reads, so
//! a daemon that stops, is killed, or whose reader is stuck leaves the kernel path refusing
//! connects within its lease (`server.kernel_path_lease`).

use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use gateway_common::{
    AF_INET, EVENT_BIND, EVENT_CONNECT, EVENT_KERNEL_CLOSE, EVENT_KERNEL_CONNECT,
    EVENT_KERNEL_DENIED, EVENT_LIMIT, EVENT_LISTENER, EVENT_NETNS, EVENT_SOCKET, EVENT_UDP, Event,
    LIMIT_NO_DAEMON, LIMIT_NO_RECORD, LIMIT_OPEN, LIMIT_PENDING, LIMIT_RING_FULL, LIMIT_TOTAL,
    LIMIT_UNREAD, MAX_PENDING,
};
use tokio::io::unix::AsyncFd;

use super::Services;
use super::spool::{Spool, event_from};
use super::{address, kernel_path, process};
use crate::ebpf::Liveness;
use crate::record::{NewSession, ProcessInfo, SessionKind, SessionPath, now};

/// Events read but not stored yet. A storing task that falls this far behind stops the reader,
/// and with it the kernel path's lease: connects are refused rather than left unrecorded.
const UNSTORED_EVENTS: usize = 4096;

/// What the reader uses besides the ring buffer.
pub struct Reader {
    pub liveness: Liveness,
    pub lease: Duration,
    /// Where each record is kept from the moment it is taken out of the ring buffer until it is
    /// stored.
    pub spool: Arc<Spool>,
    /// What a previous daemon took out of the ring buffer but may not have stored, oldest first.
    pub unstored: Vec<Event>,
}

/// Reads the ring buffer until shutdown, and keeps the kernel path open while it does: the
/// deadline moves `lease` ahead several times per lease. Storing (process and container
/// lookups, the store's writes) runs in a task of its own, so a slow lookup does not hold the
/// lease back; only a storing task stuck for a whole queue of events does.
pub async fn read_loop(ring: RingBuf<MapData>, reader: Reader, services: Arc<Services>) {
    let Reader {
        mut liveness,
        lease,
        spool,
        unstored: left_by_previous,
    } = reader;
    // SAFETY: the ring buffer owns its map descriptor and keeps it open, unchanged, for as long as
    // the AsyncFd owns the ring buffer.
    let mut ring = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the kernel event ring buffer; kernel events are not recorded");
            return;
        }
    };
    // The previous daemon kept each record before taking it out of the ring; killed in between,
    // it left that record both as the spool's last and as the ring's first. Read once.
    let mut in_both = left_by_previous.last().copied();
    let (unstored, to_store) = tokio::sync::mpsc::channel(UNSTORED_EVENTS);
    let storing = tokio::spawn(store_loop(
        to_store,
        left_by_previous,
        spool.clone(),
        services.clone(),
    ));
    let mut refresh = tokio::time::interval((lease / 4).min(Duration::from_millis(250)));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'reading: loop {
        let mut guard = tokio::select! {
            g = ring.readable_mut() => match g {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "kernel event ring buffer failed");
                    break;
                }
            },
            _ = refresh.tick() => {
                if let Err(e) = liveness.refresh(lease) {
                    tracing::error!(error = %e, "cannot keep the kernel path open");
                }
                continue;
            }
            () = services.shutdown.cancelled() => break,
        };
        let mut batch = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            if let Some(event) = event_from(&item) {
                if in_both.take().is_some_and(|kept| kept == event) {
                    continue;
                }
                if event.kind != EVENT_NETNS {
                    // Kept before the item goes (which frees its room in the ring buffer).
                    spool.keep(&item);
                }
                batch.push(event);
            }
        }
        guard.clear_ready();
        for event in batch {
            if event.kind == EVENT_NETNS {
                // Not a refusal and not stored: a connect waits for a listener in its namespace.
                services.netns.request(event.pid, event.netns_cookie);
            } else if unstored.send(event).await.is_err() {
                tracing::error!(
                    "the kernel event storing task ended; kernel events are not recorded"
                );
                break 'reading;
            }
        }
    }
    // No reader from here on: the kernel path closes now rather than when the lease runs out
    // (what it let through until then waits in the ring buffer for the next daemon).
    if let Err(e) = liveness.stop() {
        tracing::error!(error = %e, "cannot close the kernel path");
    }
    // What was read is stored before the daemon goes.
    drop(unstored);
    if let Err(e) = storing.await {
        tracing::error!(error = %e, "the kernel event storing task failed");
    }
}

/// Stores the events the reader hands over, in the order the kernel wrote them: the kernel-path
/// records of what is waiting (up to `kernel_path::BATCH`) with one journal write, counted read
/// once stored (a job that ends waits for that), then marked stored in the spool. What a
/// previous daemon left unstored comes first.
async fn store_loop(
    mut to_store: tokio::sync::mpsc::Receiver<Event>,
    left_by_previous: Vec<Event>,
    spool: Arc<Spool>,
    services: Arc<Services>,
) {
    let mut open = kernel_path::OpenSessions::load(&services).await;
    if !left_by_previous.is_empty() {
        tracing::info!(
            records = left_by_previous.len(),
            "storing the kernel records a previous daemon read but had not stored"
        );
        // The previous daemon may have stored its last batch without marking it.
        let maybe_stored = &left_by_previous[..left_by_previous.len().min(kernel_path::BATCH)];
        let stored = open.already_stored(maybe_stored, &services).await;
        for batch in left_by_previous.chunks(kernel_path::BATCH) {
            store_batch(batch, &mut open, &stored, &services).await;
            spool.stored(batch.len());
        }
    }
    let none_stored = HashSet::new();
    let mut events = Vec::with_capacity(kernel_path::BATCH);
    while to_store.recv_many(&mut events, kernel_path::BATCH).await > 0 {
        store_batch(&events, &mut open, &none_stored, &services).await;
        spool.stored(events.len());
        events.clear();
    }
}

/// Stores `events`, leaving out kernel-path connections whose cookie is in `stored` (sessions a
/// previous daemon stored already).
async fn store_batch(
    events: &[Event],
    open: &mut kernel_path::OpenSessions,
    stored: &HashSet<u64>,
    services: &Services,
) {
    let mut kernel_records = kernel_path::Batch::default();
    for event in events {
        match event.kind {
            EVENT_KERNEL_CONNECT if stored.contains(&event.cookie) => {}
            EVENT_KERNEL_CONNECT => {
                open.connected(event, services, &mut kernel_records).await;
                kernel_records.read_from(event.job_slot);
            }
            EVENT_KERNEL_CLOSE => {
                open.closed(event, &mut kernel_records);
                kernel_records.read_from(event.job_slot);
            }
            _ => record(event, services),
        }
    }
    open.store(kernel_records, services);
}

/// Why a connect to a target was refused for lack of room.
fn limit_reason(detail: u32, services: &Services) -> String {
    match detail {
        LIMIT_PENDING => format!(
            "the job has {} connects waiting for the gateway already (server.max_pending_connections_per_job)",
            services.max_pending_connections_per_job
        ),
        LIMIT_TOTAL => {
            format!("all jobs together have {MAX_PENDING} connects waiting for the gateway")
        }
        LIMIT_NO_RECORD => "no record of the connect could be kept (the cgroup is linked to no job, or the socket had no memory for it)".into(),
        LIMIT_NO_DAEMON => "no gateway daemon was reading the kernel's records (kernel path)".into(),
        LIMIT_UNREAD => format!(
            "the job has {} kernel-path records the gateway has not read yet (server.max_pending_connections_per_job)",
            services.max_pending_connections_per_job
        ),
        LIMIT_OPEN => format!(
            "the job already has {} kernel-path connections open (server.max_connections_per_job)",
            services.max_connections_per_job
        ),
        LIMIT_RING_FULL => "the kernel's record buffer was full: the connection could not be recorded (kernel path)".into(),
        other => format!("refused for lack of room ({other})"),
    }
}

/// Forwards the programs' aya-log records to the daemon's log (only with `server.ebpf_debug_log`).
pub async fn log_loop(logger: aya_log::EbpfLogger<&'static dyn log::Log>, services: Arc<Services>) {
    // SAFETY: the logger owns its ring buffer's descriptor and keeps it open, unchanged, for as
    // long as the AsyncFd owns the logger.
    let mut logger = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the eBPF log ring buffer");
            return;
        }
    };
    loop {
        tokio::select! {
            ready = logger.readable_mut() => match ready {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(_) => return,
            },
            () = services.shutdown.cancelled() => return,
        }
    }
}

fn record(event: &Event, services: &Services) {
    if event.kind == EVENT_KERNEL_DENIED {
        let session = kernel_path::denied(event, services);
        tracing::info!(pid = event.pid, destination = %session.destination, "{}", session.reason.as_deref().unwrap_or("refused"));
        services.store.record_session(session);
        return;
    }
    let (job, identity) = kernel_path::job_of(event, services);
    let dst = SocketAddr::new(address(&event.addr, event.family == AF_INET), event.port);
    let (protocol, destination, reason) = match event.kind {
        EVENT_CONNECT => ("tcp", dst.to_string(), format!("{dst} is not a target")),
        EVENT_UDP => (
            "udp",
            dst.to_string(),
            format!("UDP to {dst} (only DNS to the configured resolvers is allowed)"),
        ),
        EVENT_SOCKET => (
            "socket",
            "-".to_string(),
            format!(
                "socket type {} protocol {} (only TCP and UDP sockets are allowed)",
                event.sock_type, event.protocol
            ),
        ),
        EVENT_BIND => (
            "bind",
            dst.to_string(),
            format!("bind to the gateway listener port {}", event.port),
        ),
        EVENT_LISTENER => (
            "tcp",
            dst.to_string(),
            format!(
                "direct connection to the gateway listener {dst} (only redirected connects are served)"
            ),
        ),
        EVENT_LIMIT => ("tcp", dst.to_string(), limit_reason(event.detail, services)),
        _ => (
            "unknown",
            dst.to_string(),
            format!("unknown kernel event {}", event.kind),
        ),
    };
    let decision = if event.denied != 0 { "deny" } else { "audit" };
    // A kernel-path target's connect refused for a limit: named like the path's other records,
    // and dated by the kernel (it may be read long after: by the next daemon).
    let kernel_path = event.kind == EVENT_LIMIT
        && matches!(
            event.detail,
            LIMIT_NO_DAEMON | LIMIT_UNREAD | LIMIT_OPEN | LIMIT_RING_FULL
        );
    let (at, path, target) = if kernel_path {
        let targets = services.targets.read().clone();
        let target = targets
            .lookup(dst)
            .and_then(|i| services.target_configs.get(i))
            .map(|t| t.name.clone());
        (
            kernel_path::wall_time(event.boot_ns),
            Some(SessionPath::Kernel),
            target,
        )
    } else {
        (now(), None, None)
    };
    let p = ProcessInfo {
        pid: event.pid,
        tid: event.tid,
        uid: event.uid,
        gid: event.gid,
        comm: process::comm(&event.comm),
        exe: None,
        cmdline: None,
        cmdline_cut: false,
        verified: false,
        cgroup_id: event.cgroup_id,
        container: None,
        ancestry: Vec::new(),
    };
    tracing::info!(pid = p.pid, comm = %p.comm, protocol, %destination, decision, "{reason}");
    let session = NewSession {
        kind: SessionKind::Kernel,
        job_id: job.map(|j| j.id.clone()),
        target,
        protocol: Some(protocol.to_string()),
        destination,
        process: Some(p),
        identity,
        decision: decision.to_string(),
        rule: None,
        reason: Some(reason),
        started_at: at.clone(),
        ended_at: Some(at),
        path,
        cookie: None,
    };
    services.store.record_session(session);
}
