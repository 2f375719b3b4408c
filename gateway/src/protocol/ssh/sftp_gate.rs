//! The job → host side of an sftp channel: a task between the handler and `bridge::pump_down`
//! that takes the job's requests one at a time, in order, and has policy decide each.
//!
//! A request that needs approval holds the channel's request stream until people decide: SFTP
//! servers execute requests in the order received, so nothing the job sends after it may overtake
//! it (a WRITE or CLOSE behind a held OPEN). Other channels and sessions go on. Replies the gateway
//! makes itself (refusals) reach the job through `inject`; SFTP clients match replies by id.
//!
//! Every message the handler queues for the channel comes through here (data, EOF, close, …), so
//! none of them passes a held request either. Job data was counted in `Inflight` when the handler
//! queued it: a packet forwarded is released by `pump_down`, one dropped here is released here.

use crate::record::EventKind;
use parking_lot::Mutex;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    Ctx,
    bridge::{Down, Inflight},
    hold::{Held, Hold},
    sftp::{self, Framer, OpenFile, Pending, Request, Tracker},
};
use crate::{
    config::SshOperationKind,
    policy::{Decision, SshOperation},
};

pub(super) struct Gate {
    pub hold: Hold,
    pub tracker: Arc<Mutex<Option<Tracker>>>,
    /// Whole reply packets for the job, written by the channel's `pump_up`.
    pub inject: mpsc::UnboundedSender<Bytes>,
    /// The channel's queue to `pump_down`.
    pub up: mpsc::UnboundedSender<Down>,
    pub inflight: Arc<Inflight>,
}

/// Starts the gate; the handler queues the channel's messages on the sender returned.
pub(super) fn start(gate: Gate) -> mpsc::UnboundedSender<Down> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(gate.run(rx));
    tx
}

/// What one request asks, as policy and the log see it.
struct Checked {
    op: String,
    checks: Vec<(SshOperationKind, String)>,
    logged: bool,
}

impl Gate {
    fn ctx(&self) -> &Ctx {
        &self.hold.ctx
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<Down>) {
        let mut framer = Framer::default();
        let mut broken = false;
        while let Some(m) = rx.recv().await {
            let Down::Data(chunk) = m else {
                self.forward(m);
                continue;
            };
            if broken {
                self.inflight.release(chunk.len());
                continue;
            }
            framer.push(&chunk);
            if !self.drain(&mut framer, &mut broken).await {
                // The job left while a request was held: nothing more goes to the host.
                self.forward(Down::Close);
                break;
            }
        }
        rx.close();
        while let Ok(m) = rx.try_recv() {
            if let Down::Data(b) | Down::Ext(_, b) = m {
                self.inflight.release(b.len());
            }
        }
        self.inflight.release(framer.buffered());
    }

    /// Handles every whole request buffered in `framer`. False when the job left while one was
    /// held.
    async fn drain(&self, framer: &mut Framer, broken: &mut bool) -> bool {
        while let Some(packet) = framer.next_packet() {
            match packet {
                Ok(p) => {
                    if !self.request(p).await {
                        return false;
                    }
                }
                Err(e) => {
                    tracing::warn!(session = self.ctx().session_id, error = %e, "malformed sftp stream from the job; closing the channel");
                    *broken = true;
                    self.inflight.release(framer.clear());
                    self.forward(Down::Close);
                    let _ = self.hold.handle.close(self.hold.channel).await;
                    return true;
                }
            }
        }
        true
    }

    /// Passes a message on to `pump_down`; job data it can no longer take is released.
    fn forward(&self, m: Down) {
        if let Err(mpsc::error::SendError(Down::Data(b) | Down::Ext(_, b))) = self.up.send(m) {
            self.inflight.release(b.len());
        }
    }

    /// Answers request `id` in place of the host and drops the request.
    fn refuse(&self, id: u32, code: u32, message: &str, packet: &Bytes) {
        let _ = self.inject.send(sftp::status(id, code, message));
        self.inflight.release(packet.len());
    }

    fn decide(&self, kind: SshOperationKind, path: &str) -> Decision {
        let ctx = self.ctx();
        ctx.policy.decide_ssh(
            &ctx.identity,
            &ctx.target.name,
            &SshOperation::Sftp { kind, path },
        )
    }

    fn event(&self, detail: serde_json::Value) {
        let ctx = self.ctx();
        ctx.store
            .note_event(ctx.session_id, EventKind::SshSftp, detail);
    }

    /// Decides one request and forwards it, refuses it, or holds it for approval. False when the
    /// job left while it was held.
    async fn request(&self, packet: Bytes) -> bool {
        let number = self.hold.number;
        let request = match sftp::parse_request(&packet) {
            Ok(r) => r,
            Err(e) => {
                // Not understood, not forwarded: the host never sees what policy could not read.
                // The client is answered (it would otherwise wait for ever) when it sent an id.
                tracing::debug!(error = %e, "malformed sftp request");
                self.event(json!({
                    "channel": number, "decision": "deny",
                    "reason": format!("malformed sftp request: {e}"),
                }));
                match packet.get(5..9).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                    Some(id) => self.refuse(
                        u32::from_be_bytes(id),
                        sftp::FX_BAD_MESSAGE,
                        &format!("gateway: malformed sftp request: {e}"),
                        &packet,
                    ),
                    None => self.inflight.release(packet.len()),
                }
                return true;
            }
        };
        let id = request.id().unwrap_or(0);
        if let Request::Unsupported { op, .. } = &request {
            self.event(
                json!({ "channel": number, "op": op, "decision": "deny", "reason": "unsupported sftp extension" }),
            );
            self.refuse(
                id,
                sftp::FX_OP_UNSUPPORTED,
                "gateway: this sftp operation is not supported",
                &packet,
            );
            return true;
        }
        let Checked { op, checks, logged } = self.checks(&request);
        let ruled = |kind| {
            let ctx = self.ctx();
            ctx.policy
                .ssh_path_rules(&ctx.identity, &ctx.target.name, kind)
        };
        // A link gives a file a second name: a hard link one no check can trace back. Where path
        // rules apply, links are not made.
        if matches!(op.as_str(), "symlink" | "hardlink") && checks.iter().any(|(k, _)| ruled(*k)) {
            let reason = "links cannot be made where path rules apply";
            self.event(json!({
                "channel": number, "op": op, "paths": checks.iter().map(|c| &c.1).collect::<Vec<_>>(),
                "decision": "deny", "reason": reason,
            }));
            self.refuse(
                id,
                sftp::FX_PERMISSION_DENIED,
                &format!("gateway: {reason}"),
                &packet,
            );
            return true;
        }
        // Where path rules apply, a path is decided as the host resolves it (`resolve`): every
        // name it leads to is asked about.
        let mut resolved: Vec<(SshOperationKind, &str, Vec<String>)> = Vec::new();
        for (kind, path) in &checks {
            if !ruled(*kind) || matches!(request, Request::OnHandle { .. }) {
                resolved.push((*kind, path.as_str(), vec![path.clone()]));
                continue;
            }
            let (code, reason) = match self.ctx().resolver.resolve(path).await {
                Ok(Some(r)) => {
                    resolved.push((*kind, path.as_str(), r.forms()));
                    continue;
                }
                Ok(None) => (
                    sftp::FX_NO_SUCH_FILE,
                    format!("{path:?}: no such directory on the host"),
                ),
                Err(e) => (sftp::FX_FAILURE, format!("cannot resolve {path:?}: {e}")),
            };
            self.event(json!({
                "channel": number, "op": op, "kind": kind.as_str(), "path": path,
                "decision": "deny", "reason": reason,
            }));
            self.refuse(id, code, &format!("gateway: {reason}"), &packet);
            return true;
        }
        let decisions: Vec<(Decision, SshOperationKind, &str, &str)> = resolved
            .iter()
            .flat_map(|(kind, path, forms)| {
                forms
                    .iter()
                    .map(move |form| (self.decide(*kind, form), *kind, *path, form.as_str()))
            })
            .collect();
        // Any denial refuses the request; otherwise every rule that wants approval is asked.
        if let Some((Decision::Deny { rule, reason }, kind, path, form)) = decisions
            .iter()
            .find(|(d, ..)| matches!(d, Decision::Deny { .. }))
        {
            self.event(json!({
                "channel": number, "op": op, "kind": kind.as_str(), "path": path,
                "resolved": form, "decision": "deny", "rule": rule, "reason": reason,
            }));
            self.refuse(
                id,
                sftp::FX_PERMISSION_DENIED,
                &format!("gateway: {reason}"),
                &packet,
            );
            return true;
        }
        let mut rules: Vec<&str> = Vec::new();
        for (d, ..) in &decisions {
            if let Decision::RequireApproval { rule } = d
                && !rules.contains(&rule.as_str())
            {
                rules.push(rule);
            }
        }
        let paths: Vec<&str> = checks.iter().map(|(_, p)| p.as_str()).collect();
        let kinds: Vec<&str> = checks.iter().map(|(k, _)| k.as_str()).collect();
        // What the paths lead to, where that is not what the job wrote.
        let elsewhere: Vec<&str> = resolved
            .iter()
            .flat_map(|(_, path, forms)| forms.iter().filter(move |f| f != path))
            .map(String::as_str)
            .collect();
        if !rules.is_empty() {
            let operation = describe(&request, &op, &resolved);
            self.event(json!({
                "channel": number, "op": op, "kinds": kinds, "paths": paths, "resolved": elsewhere,
                "decision": "require_approval", "rule": rules[0], "operation": operation,
            }));
            for rule in rules {
                let detail = json!({ "channel": number, "op": op, "kinds": kinds, "paths": paths, "resolved": elsewhere });
                match self.hold.ask(rule, "sftp", &operation, detail).await {
                    Held::Approved => {}
                    Held::Refused { reason } => {
                        self.refuse(
                            id,
                            sftp::FX_PERMISSION_DENIED,
                            &format!("gateway: denied: {reason}"),
                            &packet,
                        );
                        return true;
                    }
                    Held::Gone => {
                        self.inflight.release(packet.len());
                        return false;
                    }
                }
            }
        } else if logged {
            let detail = json!({ "channel": number, "op": op, "kinds": kinds, "paths": paths, "resolved": elsewhere, "decision": "allow" });
            let ctx = self.ctx();
            if ctx
                .store
                .append_event(ctx.session_id, EventKind::SshSftp, detail)
                .await
                .is_err()
            {
                tracing::error!(session = ctx.session_id, "cannot record; refusing");
                self.refuse(
                    id,
                    sftp::FX_PERMISSION_DENIED,
                    "gateway: cannot record",
                    &packet,
                );
                return true;
            }
        }
        // Handles are known by where they lead.
        let target = resolved.first().and_then(|(_, _, f)| f.first().cloned());
        self.track(request, target);
        self.forward(Down::Data(packet));
        true
    }

    /// The checks a request needs, and how it is logged.
    fn checks(&self, request: &Request) -> Checked {
        let handle_path = |h: &[u8]| {
            self.tracker
                .lock()
                .as_ref()
                .and_then(|t| t.path_of(h).map(str::to_string))
                .unwrap_or_else(|| "<unknown handle>".into())
        };
        match request {
            Request::Open {
                path, read, write, ..
            } => {
                let mut checks = Vec::new();
                if *read || !*write {
                    checks.push((SshOperationKind::SftpRead, path.clone()));
                }
                if *write {
                    checks.push((SshOperationKind::SftpWrite, path.clone()));
                }
                Checked {
                    op: "open".into(),
                    checks,
                    logged: true,
                }
            }
            Request::Paths {
                op, checks, logged, ..
            } => Checked {
                op: (*op).into(),
                checks: checks.clone(),
                logged: *logged,
            },
            Request::OnHandle {
                op, kind, handle, ..
            } => Checked {
                op: (*op).into(),
                checks: vec![(*kind, handle_path(handle))],
                logged: *kind == SshOperationKind::SftpWrite,
            },
            Request::Init
            | Request::Close { .. }
            | Request::Read { .. }
            | Request::Write { .. }
            | Request::Unsupported { .. } => Checked {
                op: String::new(),
                checks: Vec::new(),
                logged: false,
            },
        }
    }

    /// Remembers what the host's reply to a forwarded request will mean (handles, sizes).
    fn track(&self, request: Request, target: Option<String>) {
        let mut t = self.tracker.lock();
        let t = t.get_or_insert_with(Default::default);
        match request {
            Request::Open {
                id, path, write, ..
            } => t.expect(
                id,
                Pending::Open(OpenFile {
                    path: target.unwrap_or(path),
                    mode: if write { "write" } else { "read" },
                    ..Default::default()
                }),
            ),
            Request::Paths {
                id,
                op: "opendir",
                checks,
                ..
            } => t.expect(
                id,
                Pending::Open(OpenFile {
                    path: target
                        .or_else(|| checks.into_iter().next().map(|c| c.1))
                        .unwrap_or_default(),
                    mode: "list",
                    ..Default::default()
                }),
            ),
            Request::Read { id, handle } => t.expect(id, Pending::Read(handle)),
            Request::Close { id, handle } => t.expect(id, Pending::Close(handle)),
            Request::Write { handle, len, .. } => t.wrote(&handle, len),
            _ => {}
        }
    }
}

/// The operation as an approver reads it: `sftp write /etc/app.conf`, `sftp rename /a /b`, and
/// where a path leads when that is elsewhere: `sftp write /tmp/l/x (= /etc/x)`.
fn describe(
    request: &Request,
    op: &str,
    checks: &[(SshOperationKind, &str, Vec<String>)],
) -> String {
    let verb = match request {
        Request::Open { write: true, .. } => "write",
        Request::Open { .. } => "read",
        _ => op,
    };
    // A path that would read as two words, or hides control characters, is quoted.
    let shown = |path: &str| {
        if path.is_empty() || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            format!("{path:?}")
        } else {
            path.to_string()
        }
    };
    let mut text = format!("sftp {verb}");
    let mut seen: Vec<&str> = Vec::new();
    for (_, path, forms) in checks {
        if seen.contains(path) {
            continue;
        }
        seen.push(path);
        text.push(' ');
        text.push_str(&shown(path));
        let elsewhere: Vec<String> = forms
            .iter()
            .filter(|f| f != path)
            .map(|f| shown(f))
            .collect();
        if !elsewhere.is_empty() {
            text.push_str(&format!(" (= {})", elsewhere.join(", ")));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(write: bool, path: &str) -> Request {
        Request::Open {
            id: 1,
            path: path.into(),
            read: !write,
            write,
        }
    }

    #[test]
    fn operations_read_as_an_approver_expects() {
        use SshOperationKind::*;
        let same = |kind, path: &'static str| (kind, path, vec![path.to_string()]);
        let w = vec![same(SftpWrite, "/etc/app.conf")];
        assert_eq!(
            describe(&open(true, "/etc/app.conf"), "open", &w),
            "sftp write /etc/app.conf"
        );
        let rw = vec![same(SftpRead, "/a b"), same(SftpWrite, "/a b")];
        assert_eq!(
            describe(&open(true, "/a b"), "open", &rw),
            "sftp write \"/a b\""
        );
        let rename = Request::Paths {
            id: 2,
            op: "rename",
            checks: vec![(SftpDelete, "/a".into()), (SftpWrite, "/b".into())],
            logged: true,
        };
        let checks = vec![same(SftpDelete, "/a"), same(SftpWrite, "/b")];
        assert_eq!(describe(&rename, "rename", &checks), "sftp rename /a /b");
        let linked = vec![(
            SftpWrite,
            "/tmp/l/x",
            vec!["/etc/x".to_string(), "/tmp/l/x".to_string()],
        )];
        assert_eq!(
            describe(&open(true, "/tmp/l/x"), "open", &linked),
            "sftp write /tmp/l/x (= /etc/x)"
        );
    }
}
