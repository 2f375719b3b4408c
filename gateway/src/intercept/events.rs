//! What the kernel programs refused (enforce) or let through (audit) without the gateway in the
//! path, recorded as `kernel` sessions.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use gateway_common::{AF_INET, EVENT_BIND, EVENT_CONNECT, EVENT_SOCKET, EVENT_UDP, Event};
use tokio::io::unix::AsyncFd;

use super::{address, process};
use crate::{
    daemon::Gateway,
    identity::Identity,
    record::{NewSession, ProcessInfo, SessionKind, now},
};

/// At most this many kernel events are recorded per second; the rest are counted and summarised,
/// so a job cannot flood the store with refused datagrams.
const EVENTS_PER_SECOND: u32 = 200;

pub async fn read_loop(ring: RingBuf<MapData>, gw: Arc<Gateway>) {
    // SAFETY: the ring buffer owns its map descriptor and keeps it open, unchanged, for as long as
    // the AsyncFd owns the ring buffer.
    let mut ring = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the kernel event ring buffer; kernel events are not recorded");
            return;
        }
    };
    let mut window = Instant::now();
    let (mut recorded, mut suppressed) = (0u32, 0u64);
    loop {
        let mut guard = tokio::select! {
            g = ring.readable_mut() => match g {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "kernel event ring buffer failed");
                    return;
                }
            },
            () = gw.shutdown.cancelled() => return,
        };
        let mut batch = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            if item.len() >= std::mem::size_of::<Event>() {
                // SAFETY: the programs write whole `Event`s (plain `repr(C)` data, any bit pattern
                // valid); read_unaligned copes with the ring's 8-byte alignment guarantee.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
            }
        }
        guard.clear_ready();
        for event in batch {
            if window.elapsed() >= Duration::from_secs(1) {
                if suppressed > 0 {
                    tracing::warn!(
                        suppressed,
                        "kernel events over {EVENTS_PER_SECOND}/s were not recorded"
                    );
                }
                window = Instant::now();
                recorded = 0;
                suppressed = 0;
            }
            if recorded >= EVENTS_PER_SECOND {
                suppressed += 1;
                continue;
            }
            recorded += 1;
            record(&event, &gw);
        }
    }
}

/// Forwards the programs' aya-log records to the daemon's log (only with `server.ebpf_debug_log`).
pub async fn log_loop(logger: aya_log::EbpfLogger<&'static dyn log::Log>, gw: Arc<Gateway>) {
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
            () = gw.shutdown.cancelled() => return,
        }
    }
}

fn record(event: &Event, gw: &Gateway) {
    let job = gw.jobs.for_cgroup(event.cgroup_id);
    let identity = job
        .as_ref()
        .map_or_else(Identity::unauthenticated, |j| j.identity.clone());
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
        _ => (
            "unknown",
            dst.to_string(),
            format!("unknown kernel event {}", event.kind),
        ),
    };
    let decision = if event.denied != 0 { "deny" } else { "audit" };
    let at = now();
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
    };
    tracing::info!(pid = p.pid, comm = %p.comm, protocol, %destination, decision, "{reason}");
    let session = NewSession {
        kind: SessionKind::Kernel,
        job_id: job.map(|j| j.id.clone()),
        target: None,
        protocol: Some(protocol.to_string()),
        destination,
        process: Some(p),
        identity,
        decision: decision.to_string(),
        rule: None,
        reason: Some(reason),
        started_at: at.clone(),
        ended_at: Some(at),
    };
    gw.store.record_session(session);
}
