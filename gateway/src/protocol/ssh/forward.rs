//! Remote port forwarding (`ssh -R`, `tcpip-forward`): the host listens on the job's behalf.
//!
//! The job asks for an address and port on the host. Policy decides on that listening address
//! (`listen_address`: what the job asked, with OpenSSH's spellings of "loopback" and "every
//! interface" made explicit); an allowed request is recorded, relayed to the host, and the port
//! the host bound is passed back. When something connects to that port on the host, the host
//! opens a `forwarded-tcpip` channel to the gateway: the gateway checks it against the forwards it
//! relayed for this job (a host cannot push connections the job never asked for), records it, and
//! opens the same channel to the job. The job's ssh then connects to its own `host:hostport`, which
//! never crosses the wire: that is an ordinary connect() of the job, decided by the kernel layer
//! like any other (a target, `allow_direct`, or refused in enforce mode).
//!
//! The job-side handler sees a confirmed channel before any data on it (russh calls
//! `channel_open_confirmation` in order), registers it there like every other channel (same flow
//! control), and files the gateway's ends here; the task that opened the channel picks them up
//! and starts the pumps.

use crate::record::EventKind;
use parking_lot::Mutex;
use std::{collections::HashMap, sync::Arc, time::Duration};

use russh::{
    Channel, ChannelId, ChannelOpenFailure,
    client::{self, ChannelOpenHandle},
    server,
};
use serde_json::json;
use tokio::sync::Notify;

use super::{Ctx, bridge};

/// What policy is asked about for a `tcpip-forward` request's address. OpenSSH sends `localhost`
/// when `-R` names no bind address (asked as 127.0.0.1), and an empty string for `*` / every
/// interface (asked as 0.0.0.0, so only a rule destination containing 0.0.0.0 allows it).
pub(super) fn listen_address(address: &str) -> &str {
    match address {
        "" | "*" => "0.0.0.0",
        a if a.eq_ignore_ascii_case("localhost") => "127.0.0.1",
        a => a,
    }
}

/// A forward the host accepted for the job.
#[derive(Debug, Clone)]
pub struct Listening {
    /// The address as the job sent it (the host echoes it in each forwarded connection).
    pub address: String,
    /// The port the job asked for (0: the host picks).
    pub port: u32,
    /// The port the host bound.
    pub bound: u32,
    pub rule: Option<String>,
}

impl Listening {
    fn label(&self) -> String {
        format!("{}:{}", self.address, self.bound)
    }
}

#[derive(Default)]
struct Inner {
    listening: Vec<Listening>,
    /// The job's session, for opening forwarded-tcpip channels to it; dropped when it ends.
    job: Option<server::Handle>,
    /// Job channels confirmed and registered, waiting for their opener.
    parts: HashMap<ChannelId, (bridge::Parts, server::Handle)>,
}

/// The remote forwards of one SSH session.
#[derive(Default)]
pub struct RemoteForwards {
    inner: Mutex<Inner>,
    filed: Notify,
}

impl RemoteForwards {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    pub fn add(&self, job: server::Handle, l: Listening) {
        let mut g = self.lock();
        g.job = Some(job);
        g.listening.push(l);
    }

    /// Forgets a cancelled forward; false if the job held no such forward.
    pub fn remove(&self, address: &str, port: u32) -> bool {
        let mut g = self.lock();
        let before = g.listening.len();
        g.listening
            .retain(|l| !(l.address == address && (l.port == port || l.bound == port)));
        g.listening.len() != before
    }

    /// The forward a connection the host announces belongs to, and the job's session.
    fn find(&self, address: &str, port: u32) -> Option<(Listening, server::Handle)> {
        let g = self.lock();
        let l = g
            .listening
            .iter()
            .find(|l| l.address == address && l.bound == port)?;
        Some((l.clone(), g.job.clone()?))
    }

    /// Called by the job-side handler when the job confirms a channel the gateway opened.
    pub fn file(&self, id: ChannelId, parts: bridge::Parts, handle: server::Handle) {
        self.lock().parts.insert(id, (parts, handle));
        self.filed.notify_waiters();
    }

    async fn take(&self, id: ChannelId) -> Option<(bridge::Parts, server::Handle)> {
        let wait = async {
            loop {
                let filed = self.filed.notified();
                if let Some(p) = self.lock().parts.remove(&id) {
                    return p;
                }
                filed.await;
            }
        };
        // The handler files the channel right after russh wakes the opener: this is short.
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .ok()
    }

    /// The session is over: no more connections go to the job.
    pub fn clear(&self) {
        let mut g = self.lock();
        g.job = None;
        g.listening.clear();
        g.parts.clear();
    }
}

/// The host opened a `forwarded-tcpip` channel: relay it to the job if it belongs to a forward
/// the job holds.
pub(super) async fn incoming(
    ctx: Arc<Ctx>,
    up: Channel<client::Msg>,
    reply: ChannelOpenHandle,
    connected: (&str, u32),
    originator: (&str, u32),
) {
    let from = format!("{}:{}", originator.0, originator.1);
    let Some((listening, job)) = ctx.forwards.find(connected.0, connected.1) else {
        tracing::warn!(
            session = ctx.session_id,
            address = connected.0,
            port = connected.1,
            "the host opened a forwarded connection the job did not ask for"
        );
        ctx.store.note_event(
            ctx.session_id,
            EventKind::SshForwardConnection,
            json!({
                "listen": format!("{}:{}", connected.0, connected.1),
                "originator": from,
                "decision": "deny",
                "reason": "no remote forward of this job listens there",
            }),
        );
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        return;
    };
    let (address, port) = (connected.0.to_string(), connected.1);
    let originator = (originator.0.to_string(), originator.1);
    tokio::spawn(async move {
        // Write-ahead: the connection is on record before a byte of it reaches the job.
        let recorded = ctx
            .store
            .append_event(
                ctx.session_id,
                EventKind::SshForwardConnection,
                json!({ "listen": listening.label(), "originator": from, "decision": "allow", "rule": listening.rule }),
            )
            .await
            .is_ok();
        if !recorded {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
        // No timeout of our own: the job's ssh answers once its local connect() is decided, and
        // a channel it confirmed after we stopped waiting would be registered with nobody to
        // pump it. The wait ends with the job's session at the latest.
        let opened = job
            .channel_open_forwarded_tcpip(address, port, originator.0, originator.1)
            .await;
        let down = match opened {
            Ok(down) => down,
            Err(e) => {
                ctx.store.note_event(
                    ctx.session_id,
                    EventKind::SshForwardConnection,
                    json!({ "listen": listening.label(), "originator": from, "error": format!("the job did not take the connection: {e}") }),
                );
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            }
        };
        reply.accept().await;
        let Some((parts, handle)) = ctx.forwards.take(down.id()).await else {
            tracing::warn!(
                session = ctx.session_id,
                "a forwarded channel was not registered; closing it"
            );
            let _ = down.close().await;
            let _ = up.close().await;
            return;
        };
        let what = format!("{} from {from}", listening.label());
        parts.rec.begin(&ctx, "remote_forward", Some(&what));
        bridge::start(ctx, parts, down, handle, up);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_asked_explicitly() {
        assert_eq!(listen_address("localhost"), "127.0.0.1");
        assert_eq!(listen_address("LocalHost"), "127.0.0.1");
        assert_eq!(listen_address(""), "0.0.0.0");
        assert_eq!(listen_address("*"), "0.0.0.0");
        assert_eq!(listen_address("10.0.0.7"), "10.0.0.7");
        assert_eq!(listen_address("::1"), "::1");
    }
}
