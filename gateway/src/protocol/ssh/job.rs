//! The job side: russh's server handler. Every request the job makes is turned into a typed
//! operation, policy decides, and the request is forwarded, refused, or held for approval.
//!
//! russh keeps one "wants reply" flag per channel, so a request's answer must be sent before the
//! handler returns: allowed requests are forwarded with a reply asked for, and the handler waits
//! for the host's answer (one round trip per request at channel start).

use crate::record::EventKind;
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use russh::{
    Channel, ChannelId, ChannelOpenFailure, Pty, Sig,
    server::{self, Auth, ChannelOpenHandle, Msg, Session},
};
use serde_json::json;
use tokio::{net::TcpStream, sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    Ctx, SshError,
    bridge::{self, Down, HIGH_WATER, Inflight},
    forward,
    hold::{Held, Hold},
    keys,
    recorder::ChannelRecorder,
    sftp, sftp_gate,
    shell::LineEditor,
    shell_gate,
    upstream::{self, UpstreamHandle},
};
use crate::shell::{self as argv, CommandLine};
use crate::{
    config::SshOperationKind,
    glob,
    policy::{Decision, SshOperation},
};

/// What the session runner shares with the handler.
#[derive(Default)]
pub(super) struct Shared {
    pub authenticated: AtomicBool,
    pub upstream: tokio::sync::Mutex<Option<Arc<UpstreamHandle>>>,
}

enum UpstreamState {
    /// Not started: the upstream user comes from the job's login.
    Idle(Option<TcpStream>),
    Connecting(JoinHandle<Result<UpstreamHandle, SshError>>),
    Ready(Arc<UpstreamHandle>),
    Failed(String),
}

enum Mode {
    /// No shell, exec or subsystem yet.
    Fresh,
    /// Bytes go on to the channel's queue: to the host (exec, other subsystems, forwarded
    /// connections) or to the gate that decides what a shell or sftp channel sends.
    Pass,
    /// Refused or failed: the job's further input is dropped.
    Refused,
}

struct Chan {
    number: u32,
    tx: mpsc::UnboundedSender<Down>,
    replies: mpsc::Receiver<bool>,
    rec: Arc<ChannelRecorder>,
    mode: Mode,
    sftp: Arc<Mutex<Option<sftp::Tracker>>>,
    inject: mpsc::UnboundedSender<Bytes>,
    /// Cancelled when the job closes the channel or leaves: a pending approval is abandoned.
    gone: CancellationToken,
}

impl Chan {
    /// What a held operation on this channel needs (exec, sftp and shell gates alike).
    fn hold(&self, ctx: &Arc<Ctx>, handle: server::Handle, channel: ChannelId) -> Hold {
        Hold {
            ctx: ctx.clone(),
            handle,
            channel,
            number: self.number,
            gone: self.gone.clone(),
        }
    }
}

pub(super) struct JobSide {
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    upstream: UpstreamState,
    chans: HashMap<ChannelId, Chan>,
    next_number: u32,
    inflight: Arc<Inflight>,
    throttled: bool,
}

fn connect_task(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    user: String,
) -> JoinHandle<Result<UpstreamHandle, SshError>> {
    tokio::spawn(async move {
        let secret = keys::upstream_secret(&ctx.target)?;
        upstream::connect(ctx, stream, &user, &secret).await
    })
}

impl JobSide {
    pub(super) fn new(ctx: Arc<Ctx>, upstream: TcpStream) -> (Self, Arc<Shared>) {
        // With a configured user the upstream handshake overlaps with the job's.
        let upstream = match ctx.target.credentials.user.clone() {
            Some(user) => UpstreamState::Connecting(connect_task(ctx.clone(), upstream, user)),
            None => UpstreamState::Idle(Some(upstream)),
        };
        let shared = Arc::new(Shared::default());
        (
            JobSide {
                ctx,
                shared: shared.clone(),
                upstream,
                chans: HashMap::new(),
                next_number: 0,
                inflight: Arc::new(Inflight::default()),
                throttled: false,
            },
            shared,
        )
    }

    fn event(&self, kind: EventKind, detail: serde_json::Value) {
        self.ctx.store.note_event(self.ctx.session_id, kind, detail);
    }

    /// Write-ahead: resolves once the event is durable. A gateway that cannot record refuses.
    async fn durable(&self, kind: EventKind, detail: serde_json::Value) -> bool {
        match self
            .ctx
            .store
            .append_event(self.ctx.session_id, kind, detail)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(session = self.ctx.session_id, error = %e, "cannot record; refusing");
                false
            }
        }
    }

    async fn ensure_upstream(
        &mut self,
        job_user: Option<&str>,
    ) -> Result<Arc<UpstreamHandle>, String> {
        let state = std::mem::replace(&mut self.upstream, UpstreamState::Failed(String::new()));
        let joined = match state {
            UpstreamState::Ready(h) => {
                self.upstream = UpstreamState::Ready(h.clone());
                return Ok(h);
            }
            UpstreamState::Failed(e) => {
                self.upstream = UpstreamState::Failed(e.clone());
                return Err(e);
            }
            UpstreamState::Connecting(task) => task.await,
            UpstreamState::Idle(stream) => match (stream, job_user) {
                (Some(stream), Some(user)) => {
                    connect_task(self.ctx.clone(), stream, user.to_string()).await
                }
                _ => Ok(Err(SshError::NoUser)),
            },
        };
        let result = joined.unwrap_or_else(|e| {
            Err(SshError::Upstream(russh::Error::IO(std::io::Error::other(
                e.to_string(),
            ))))
        });
        match result {
            Ok(handle) => {
                let handle = Arc::new(handle);
                *self.shared.upstream.lock().await = Some(handle.clone());
                self.ctx.resolver.set_upstream(handle.clone()).await;
                self.event(
                    EventKind::UpstreamAuthenticated,
                    json!({
                        "user": self.ctx.target.credentials.user.as_deref().or(job_user),
                        "host_key": "pinned key verified",
                    }),
                );
                self.upstream = UpstreamState::Ready(handle.clone());
                Ok(handle)
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(session = self.ctx.session_id, error = %message, "ssh upstream failed");
                self.event(EventKind::UpstreamError, json!({ "error": message }));
                self.upstream = UpstreamState::Failed(message.clone());
                Err(message)
            }
        }
    }

    async fn authorize(&mut self, user: &str, method: &str) -> Auth {
        match self.ensure_upstream(Some(user)).await {
            Ok(_) => {
                self.shared.authenticated.store(true, Ordering::Release);
                self.event(
                    EventKind::SshLogin,
                    json!({ "requested_user": user, "method": method }),
                );
                Auth::Accept
            }
            Err(_) => Auth::reject(),
        }
    }

    /// Command lines are decided as typed and recorded masked (a token on a `curl` line).
    fn masked(&self, text: &str) -> String {
        match crate::mask::redact(text.as_bytes(), &self.ctx.detectors) {
            Some((masked, _)) => String::from_utf8_lossy(&masked).into_owned(),
            None => text.to_string(),
        }
    }

    fn decide(&self, op: &SshOperation<'_>) -> Decision {
        self.ctx
            .policy
            .decide_ssh(&self.ctx.identity, &self.ctx.target.name, op)
    }

    /// Waits for the host's answer to the request just forwarded and gives it to the job.
    async fn relay_reply(&mut self, channel: ChannelId, session: &mut Session) -> bool {
        let ok = match self.chans.get_mut(&channel) {
            Some(c) => matches!(
                tokio::time::timeout(Duration::from_secs(60), c.replies.recv()).await,
                Ok(Some(true))
            ),
            None => false,
        };
        let _ = if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        };
        ok
    }

    /// Answers a refused shell/exec/subsystem like a command that failed: the reason on stderr,
    /// exit status 1, and the channel closed (the upstream channel is closed unused).
    fn refuse_channel(&mut self, channel: ChannelId, message: &str, session: &mut Session) {
        let _ = session.channel_success(channel);
        let _ = session.extended_data(channel, 1, Bytes::from(format!("gateway: {message}\r\n")));
        let _ = session.exit_status_request(channel, 1);
        let _ = session.eof(channel);
        let _ = session.close(channel);
        if let Some(c) = self.chans.get_mut(&channel) {
            c.mode = Mode::Refused;
            let _ = c.tx.send(Down::Close);
        }
    }

    fn queue(&self, channel: ChannelId, data: &[u8]) {
        self.queue_bytes(channel, Bytes::copy_from_slice(data));
    }

    fn queue_bytes(&self, channel: ChannelId, data: Bytes) {
        if let Some(c) = self.chans.get(&channel) {
            let n = data.len();
            self.inflight.bytes.fetch_add(n, Ordering::AcqRel);
            if c.tx.send(Down::Data(data)).is_err() {
                self.inflight.bytes.fetch_sub(n, Ordering::AcqRel);
            }
        }
    }

    fn send(&self, channel: ChannelId, m: Down) {
        if let Some(c) = self.chans.get(&channel) {
            let _ = c.tx.send(m);
        }
    }

    /// Registers a job channel: the handler keeps the sending ends, the rest goes to the pumps.
    fn register(&mut self, down_id: ChannelId, mode: Mode) -> bridge::Parts {
        let (reply_tx, reply_rx) = mpsc::channel(8);
        let (tx, rx) = mpsc::unbounded_channel();
        let (inject_tx, inject_rx) = mpsc::unbounded_channel();
        let number = self.next_number;
        self.next_number += 1;
        let rec = Arc::new(ChannelRecorder::new(&self.ctx, number));
        let tracker = Arc::new(Mutex::new(None));
        self.chans.insert(
            down_id,
            Chan {
                number,
                tx,
                replies: reply_rx,
                rec: rec.clone(),
                mode,
                sftp: tracker.clone(),
                inject: inject_tx,
                gone: CancellationToken::new(),
            },
        );
        bridge::Parts {
            number,
            rx,
            inflight: self.inflight.clone(),
            replies: reply_tx,
            rec,
            sftp: tracker,
            inject: inject_rx,
        }
    }

    /// Opens the upstream side of a channel and starts its pumps.
    fn bridge(
        &mut self,
        down: Channel<Msg>,
        up: russh::Channel<russh::client::Msg>,
        session: &Session,
        mode: Mode,
    ) -> u32 {
        let parts = self.register(down.id(), mode);
        let number = parts.number;
        bridge::start(self.ctx.clone(), parts, down, session.handle(), up);
        number
    }

    /// Lines are decided in the gate that from now on stands between the channel and the host
    /// (it may hold one for approval without holding up the session).
    fn gate_shell(&mut self, channel: ChannelId, session: &Session) {
        let Some(c) = self.chans.get_mut(&channel) else {
            return;
        };
        let gate = shell_gate::Gate {
            hold: c.hold(&self.ctx, session.handle(), channel),
            up: c.tx.clone(),
            inflight: self.inflight.clone(),
            input: if c.rec.has_pty() {
                shell_gate::Input::Terminal(LineEditor::default())
            } else {
                shell_gate::Input::Script(Vec::new())
            },
        };
        c.tx = shell_gate::start(gate);
    }

    /// Every sftp request on the channel is decided on its own, in the gate that from now on
    /// stands between the channel and the host; the tracker tells the response pump to read sftp
    /// framing.
    fn gate_sftp(&mut self, channel: ChannelId, session: &Session) {
        let Some(c) = self.chans.get_mut(&channel) else {
            return;
        };
        *c.sftp.lock() = Some(Default::default());
        let gate = sftp_gate::Gate {
            hold: c.hold(&self.ctx, session.handle(), channel),
            tracker: c.sftp.clone(),
            inject: c.inject.clone(),
            up: c.tx.clone(),
            inflight: self.inflight.clone(),
        };
        c.tx = sftp_gate::start(gate);
    }

    /// The file operations of a legacy scp command, decided like sftp's: each path as the host
    /// resolves it where path rules apply. `None` when all are allowed.
    async fn check_scp(&self, scp: &LegacyScp) -> Option<Decision> {
        let ctx = &self.ctx;
        let ruled = ctx
            .policy
            .ssh_path_rules(&ctx.identity, &ctx.target.name, scp.kind);
        let refuse = |reason: String| Some(Decision::Deny { rule: None, reason });
        // The host's scp picks the names of the files it writes or reads inside a directory: the
        // gateway would not see them.
        if ruled && (scp.recursive || scp.into_directory) {
            return refuse("legacy scp of directories (-r, -d) cannot be checked file by file where path rules apply; use sftp (scp's default since OpenSSH 9)".into());
        }
        for path in &scp.paths {
            let forms = if !ruled {
                vec![path.clone()]
            } else if path.len() > sftp::MAX_PATH {
                return refuse("a path longer than 4096 bytes".into());
            } else {
                match ctx.resolver.resolve(path).await {
                    Ok(Some(r)) if r.directory && scp.kind == SshOperationKind::SftpWrite => {
                        return refuse(format!(
                            "legacy scp into a directory ({path:?}) cannot be checked file by file where path rules apply; name the file, or use sftp (scp's default since OpenSSH 9)"
                        ));
                    }
                    Ok(Some(r)) => r.forms(),
                    Ok(None) => return refuse(format!("{path:?}: no such directory on the host")),
                    Err(e) => return refuse(format!("cannot resolve {path:?}: {e}")),
                }
            };
            for form in forms {
                let d = self.decide(&SshOperation::Sftp {
                    kind: scp.kind,
                    path: &form,
                });
                if !matches!(d, Decision::Allow { .. }) {
                    return Some(d);
                }
            }
        }
        None
    }

    async fn exec(&mut self, channel: ChannelId, command: String, session: &mut Session) {
        let Some(number) = self.chans.get(&channel).map(|c| c.number) else {
            let _ = session.channel_failure(channel);
            return;
        };
        let line = CommandLine::parse(&command);
        let mut decision = self.decide(&SshOperation::Exec { line: &line });
        // Legacy scp (`scp -O`) runs `scp -t|-f PATH` on the host: it is also the file operation
        // it stands for, so sftp path rules hold for it too.
        if let Decision::Allow { .. } = decision {
            for scp in legacy_scp(&line) {
                if let Some(refusal) = self.check_scp(&scp).await {
                    decision = refusal;
                    break;
                }
            }
        }
        let sftp_server = runs_sftp_server(&line);
        let detail = json!({
            "channel": number,
            "command": self.masked(&command),
            "decision": decision.label(),
            "rule": decision.rule(),
            "reason": decision.reason(),
        });
        match decision {
            Decision::Allow { .. } => {
                if !self.durable(EventKind::SshExec, detail).await {
                    return self.refuse_channel(
                        channel,
                        "the gateway cannot record; refused",
                        session,
                    );
                }
                if let Some(c) = self.chans.get_mut(&channel) {
                    c.rec.begin(&self.ctx, "exec", Some(&command));
                    c.mode = Mode::Pass;
                }
                if sftp_server {
                    self.gate_sftp(channel, session);
                } else if reads_commands_from_stdin(&line) {
                    // `ssh host sh < script`: the lines are a shell's, decided like a shell's.
                    self.gate_shell(channel, session);
                }
                self.send(channel, Down::Exec(command.into_bytes()));
                self.relay_reply(channel, session).await;
            }
            Decision::Deny { reason, .. } => {
                self.event(EventKind::SshExec, detail);
                self.refuse_channel(channel, &format!("refused by policy: {reason}"), session);
            }
            Decision::RequireApproval { rule } => {
                self.event(EventKind::SshExec, detail);
                // The channel is accepted at once; the job reads on stderr which request it waits
                // for. Everything it sends meanwhile waits behind the decision (`Down::Approval`).
                let _ = session.channel_success(channel);
                let (decided_tx, decided_rx) = tokio::sync::oneshot::channel();
                if sftp_server {
                    self.gate_sftp(channel, session);
                } else if reads_commands_from_stdin(&line) {
                    self.gate_shell(channel, session);
                }
                let Some(c) = self.chans.get_mut(&channel) else {
                    return;
                };
                c.rec.begin(&self.ctx, "exec", Some(&command));
                c.mode = Mode::Pass;
                let _ = c.tx.send(Down::Approval(decided_rx));
                let hold = c.hold(&self.ctx, session.handle(), channel);
                tokio::spawn(async move {
                    let detail = json!({ "command": command, "channel": number });
                    match hold.ask(&rule, "ssh_exec", &command, detail).await {
                        Held::Approved => {
                            let _ = decided_tx.send(Some(command.into_bytes()));
                        }
                        Held::Refused { .. } => {
                            let _ = decided_tx.send(None);
                            let _ = hold.handle.exit_status_request(channel, 1).await;
                            let _ = hold.handle.eof(channel).await;
                            let _ = hold.handle.close(channel).await;
                        }
                        // Nobody to answer; dropping `decided_tx` closes the upstream channel.
                        Held::Gone => {}
                    }
                });
            }
        }
    }
}

/// What legacy scp (`scp -O`) does on the host: `scp [-flags] -t|-f [--] PATH…`, the file
/// operation it stands for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LegacyScp {
    /// `-t` (to the host) is a write, `-f` (from it) a read.
    pub kind: SshOperationKind,
    pub paths: Vec<String>,
    /// `-r`: whole directory trees.
    pub recursive: bool,
    /// `-d`: the target must be a directory.
    pub into_directory: bool,
}

/// The legacy scp commands a line runs (none when it is opaque: command rules decide those).
pub(super) fn legacy_scp(line: &CommandLine) -> Vec<LegacyScp> {
    let Ok(commands) = line.commands() else {
        return Vec::new();
    };
    commands
        .iter()
        .filter_map(|argv| scp_command(argv))
        .collect()
}

fn scp_command(argv: &[String]) -> Option<LegacyScp> {
    if argv::program(&argv[0]) != "scp" {
        return None;
    }
    let (mut kind, mut recursive, mut into_directory) = (None, false, false);
    let mut words = argv[1..].iter();
    let mut paths = Vec::new();
    while let Some(w) = words.next() {
        if w == "--" {
            paths.extend(words.by_ref().cloned());
            break;
        }
        let Some(flags) = w.strip_prefix('-').filter(|f| !f.is_empty()) else {
            paths.push(w.clone());
            paths.extend(words.by_ref().cloned());
            break;
        };
        for (i, f) in flags.char_indices() {
            match f {
                't' => kind = Some(SshOperationKind::SftpWrite),
                'f' => kind = Some(SshOperationKind::SftpRead),
                'r' => recursive = true,
                'd' => into_directory = true,
                // Options with a value: the rest of the word, or the next one.
                'D' | 'F' | 'J' | 'M' | 'P' | 'S' | 'c' | 'i' | 'l' | 'o' | 'X' => {
                    if i + 1 == flags.len() {
                        words.next();
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    Some(LegacyScp {
        kind: kind?,
        paths,
        recursive,
        into_directory,
    })
}

/// Is the line a shell that reads its commands from stdin (`sh`, `bash -s`, `bash -l`)?
fn reads_commands_from_stdin(line: &CommandLine) -> bool {
    let Some(argv) = line.plain() else {
        return false;
    };
    if !matches!(
        argv::program(&argv[0]),
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" | "posh" | "yash"
    ) {
        return false;
    }
    let mut stdin = false; // -s: read commands from stdin even with operands
    let mut words = argv[1..].iter();
    while let Some(w) = words.next() {
        match w.as_str() {
            "-o" | "+o" | "-O" | "+O" | "--rcfile" | "--init-file" => {
                words.next();
            }
            "--" => return stdin || words.next().is_none(),
            w if w.starts_with("--") => {}
            w if (w.starts_with('-') || w.starts_with('+')) && w.len() > 1 => {
                if w.starts_with('-') && w.contains('c') {
                    return false;
                }
                stdin |= w.starts_with('-') && w.contains('s');
            }
            _ => return stdin,
        }
    }
    true
}

/// Does the line run an sftp server (`sftp -s /usr/lib/openssh/sftp-server` sends that as an
/// exec)? Such a channel speaks sftp and is gated like the subsystem.
fn runs_sftp_server(line: &CommandLine) -> bool {
    line.commands().is_ok_and(|c| {
        c.iter()
            .any(|argv| argv::program(&argv[0]) == "sftp-server")
    })
}

impl Drop for JobSide {
    fn drop(&mut self) {
        for c in self.chans.values() {
            c.gone.cancel();
        }
    }
}

impl server::Handler for JobSide {
    type Error = SshError;

    /// russh calls this right after queueing a WINDOW_ADJUST to the job; the value returned is the
    /// window it grants next. A trickle while too much job data waits for the host.
    fn adjust_window(&mut self, _channel: ChannelId, _current: u32) -> u32 {
        if self.inflight.queued() > HIGH_WATER {
            self.throttled = true;
            2
        } else {
            if self.throttled {
                self.throttled = false;
            }
            super::JOB_WINDOW
        }
    }

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        // When the upstream login started early, its failure is worth telling the job.
        if matches!(self.upstream, UpstreamState::Connecting(_))
            && let Err(e) = self.ensure_upstream(None).await
        {
            return Ok(Some(format!(
                "gateway: cannot open the session on the host: {e}\r\n"
            )));
        }
        Ok(None)
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.authorize(user, "none").await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.authorize(user, "publickey").await)
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.authorize(user, "password").await)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.authorize(user, "keyboard-interactive").await)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let up = match self.ensure_upstream(None).await {
            Ok(up) => up,
            Err(_) => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        match up.channel_open_session().await {
            Ok(upch) => {
                self.bridge(channel, upch, session, Mode::Fresh);
                reply.accept().await;
            }
            Err(e) => {
                self.event(
                    EventKind::UpstreamError,
                    json!({ "error": format!("session channel: {e}") }),
                );
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let port16 = u16::try_from(port).unwrap_or(0);
        let decision = self.decide(&SshOperation::Forward { host, port: port16 });
        self.event(
            EventKind::SshForward,
            json!({ "destination": format!("{host}:{port}"), "decision": decision.label(), "rule": decision.rule(), "reason": decision.reason() }),
        );
        if !matches!(decision, Decision::Allow { .. }) {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let up = match self.ensure_upstream(None).await {
            Ok(up) => up,
            Err(_) => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        match up
            .channel_open_direct_tcpip(host, port, originator, originator_port)
            .await
        {
            Ok(upch) => {
                let number = self.bridge(channel, upch, session, Mode::Pass);
                if let Some(c) = self.chans.values().find(|c| c.number == number) {
                    c.rec
                        .begin(&self.ctx, "forward", Some(&format!("{host}:{port}")));
                }
                reply.accept().await;
            }
            Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
        }
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.event(
            EventKind::SshForward,
            json!({ "destination": path, "decision": "deny", "reason": "unix socket forwarding is not supported" }),
        );
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator: &str,
        _port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let requested = *port;
        let asked_as = forward::listen_address(address);
        let decision = match u16::try_from(requested) {
            Ok(p) => self.decide(&SshOperation::RemoteForward {
                address: asked_as,
                port: p,
            }),
            Err(_) => Decision::Deny {
                rule: None,
                reason: format!("port {requested} is not a TCP port"),
            },
        };
        let detail = json!({
            "direction": "remote",
            "listen": format!("{address}:{requested}"),
            "asked_as": format!("{asked_as}:{requested}"),
            "decision": decision.label(),
            "rule": decision.rule(),
            "reason": decision.reason(),
        });
        let Decision::Allow { rule } = decision else {
            // Approvals apply to exec commands; a forward needing one is refused like a denied one.
            self.event(EventKind::SshForward, detail);
            return Ok(false);
        };
        let Ok(up) = self.ensure_upstream(None).await else {
            self.event(EventKind::SshForward, detail);
            return Ok(false);
        };
        // Write-ahead: the host listens for the job only once that is on record.
        if !self.durable(EventKind::SshForward, detail).await {
            return Ok(false);
        }
        match up.tcpip_forward(address, requested).await {
            Ok(bound) => {
                let bound = if requested == 0 { bound } else { requested };
                *port = bound;
                self.event(
                    EventKind::SshForwardListening,
                    json!({ "listen": format!("{address}:{bound}") }),
                );
                self.ctx.forwards.add(
                    session.handle(),
                    forward::Listening {
                        address: address.to_string(),
                        port: requested,
                        bound,
                        rule: Some(rule),
                    },
                );
                Ok(true)
            }
            Err(e) => {
                self.event(
                    EventKind::UpstreamError,
                    json!({ "error": format!("remote forward {address}:{requested}: {e}") }),
                );
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Only a forward this job holds is cancelled on the host.
        if !self.ctx.forwards.remove(address, port) {
            return Ok(false);
        }
        self.event(
            EventKind::SshForwardCancel,
            json!({ "listen": format!("{address}:{port}") }),
        );
        let Ok(up) = self.ensure_upstream(None).await else {
            return Ok(false);
        };
        Ok(up.cancel_tcpip_forward(address, port).await.is_ok())
    }

    /// The job accepted a channel the gateway opened: only forwarded connections are. It is
    /// registered here, before any of its data can arrive, and handed to the task that opened it.
    async fn channel_open_confirmation(
        &mut self,
        id: ChannelId,
        _max_packet_size: u32,
        _window_size: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.chans.contains_key(&id) {
            let parts = self.register(id, Mode::Pass);
            self.ctx.forwards.file(id, parts, session.handle());
        }
        Ok(())
    }

    async fn streamlocal_forward(
        &mut self,
        path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.event(
            EventKind::SshForward,
            json!({ "listen": path, "decision": "deny", "reason": "unix socket forwarding is not supported" }),
        );
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // The job's agent would let the host act with the job's keys elsewhere.
        let number = self.chans.get(&channel).map(|c| c.number);
        self.event(
            EventKind::SshAgentForwarding,
            json!({ "channel": number, "decision": "deny" }),
        );
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = session.channel_failure(channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.chans.get(&channel) {
            Some(c) if matches!(c.mode, Mode::Fresh) => {
                c.rec.pty(term, cols, rows);
                let _ = c.tx.send(Down::Pty {
                    term: term.to_string(),
                    cols,
                    rows,
                    pix_width,
                    pix_height,
                    modes: modes.to_vec(),
                });
                self.relay_reply(channel, session).await;
            }
            _ => {
                let _ = session.channel_failure(channel);
            }
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = self
            .ctx
            .target
            .ssh
            .env
            .iter()
            .any(|g| glob::matches(g, name));
        if !allowed {
            self.event(
                EventKind::SshEnv,
                json!({ "name": name, "decision": "deny" }),
            );
            let _ = session.channel_failure(channel);
            return Ok(());
        }
        self.send(channel, Down::Env(name.to_string(), value.to_string()));
        self.relay_reply(channel, session).await;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let decision = self.decide(&SshOperation::Shell { line: None });
        let Some(c) = self.chans.get(&channel) else {
            let _ = session.channel_failure(channel);
            return Ok(());
        };
        let (number, terminal) = (c.number, c.rec.has_pty());
        let detail = json!({ "channel": number, "terminal": terminal, "decision": decision.label(), "rule": decision.rule(), "reason": decision.reason() });
        if let Decision::Allow { .. } = decision {
            if !self.durable(EventKind::SshShell, detail).await {
                self.refuse_channel(channel, "the gateway cannot record; refused", session);
                return Ok(());
            }
            if let Some(c) = self.chans.get_mut(&channel) {
                c.rec.begin(&self.ctx, "shell", None);
                c.mode = Mode::Pass;
            }
            self.gate_shell(channel, session);
            self.send(channel, Down::Shell);
            self.relay_reply(channel, session).await;
        } else {
            self.event(EventKind::SshShell, detail);
            let reason = match decision {
                Decision::Deny { reason, .. } => reason,
                _ => "an interactive shell cannot wait for approval; run the command as `ssh host 'COMMAND'`".into(),
            };
            self.refuse_channel(channel, &format!("refused by policy: {reason}"), session);
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Rules and records read commands as text; the host would take other bytes differently.
        match String::from_utf8(data.to_vec()) {
            Ok(command) if !command.contains('\0') => self.exec(channel, command, session).await,
            _ => {
                let number = self.chans.get(&channel).map(|c| c.number);
                self.event(
                    EventKind::SshExec,
                    json!({ "channel": number, "command": String::from_utf8_lossy(data), "decision": "deny", "reason": "not UTF-8 text without NUL bytes" }),
                );
                self.refuse_channel(
                    channel,
                    "refused: the command is not UTF-8 text without NUL bytes",
                    session,
                );
            }
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(number) = self.chans.get(&channel).map(|c| c.number) else {
            let _ = session.channel_failure(channel);
            return Ok(());
        };
        if name != "sftp" {
            let decision = self.decide(&SshOperation::Subsystem { name });
            self.event(
                EventKind::SshSubsystem,
                json!({ "channel": number, "name": name, "decision": decision.label(), "rule": decision.rule() }),
            );
            if !matches!(decision, Decision::Allow { .. }) {
                let _ = session.channel_failure(channel);
                return Ok(());
            }
        }
        if let Some(c) = self.chans.get_mut(&channel) {
            c.rec.begin(&self.ctx, "subsystem", Some(name));
            c.mode = Mode::Pass;
        }
        if name == "sftp" {
            self.gate_sftp(channel, session);
        }
        self.send(channel, Down::Subsystem(name.to_string()));
        self.relay_reply(channel, session).await;
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(c) = self.chans.get(&channel) {
            c.rec.resize(cols, rows);
            let _ =
                c.tx.send(Down::WindowChange(cols, rows, pix_width, pix_height));
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Down::Signal(signal));
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.ctx
            .counters
            .up
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        match self.chans.get(&channel).map(|c| &c.mode) {
            None | Some(Mode::Refused) => return Ok(()),
            Some(Mode::Fresh | Mode::Pass) => self.queue(channel, data),
        }
        self.inflight.wait().await;
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        code: u32,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(c) = self.chans.get(&channel)
            && !matches!(c.mode, Mode::Refused)
        {
            self.inflight.bytes.fetch_add(data.len(), Ordering::AcqRel);
            let _ = c.tx.send(Down::Ext(code, Bytes::copy_from_slice(data)));
        }
        self.inflight.wait().await;
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Down::Eof);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only called when the job closes first; the pumps finish the channel's record.
        if let Some(c) = self.chans.remove(&channel) {
            c.gone.cancel();
            let _ = c.tx.send(Down::Close);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_scp_is_a_file_operation() {
        let scp = |line: &str| legacy_scp(&CommandLine::parse(line));
        let one = |kind, path: &str, recursive, into_directory| LegacyScp {
            kind,
            paths: vec![path.to_string()],
            recursive,
            into_directory,
        };
        use SshOperationKind::{SftpRead, SftpWrite};
        assert_eq!(
            scp("scp -t /etc/x"),
            [one(SftpWrite, "/etc/x", false, false)]
        );
        assert_eq!(
            scp("scp -v -r -d -t -- '/srv/my dir'"),
            [one(SftpWrite, "/srv/my dir", true, true)]
        );
        assert_eq!(
            scp("/usr/bin/scp -pf /var/log/syslog"),
            [one(SftpRead, "/var/log/syslog", false, false)]
        );
        assert_eq!(scp("scp -l 10 -f a"), [one(SftpRead, "a", false, false)]);
        assert_eq!(
            scp("true; scp -t '/etc/x'"),
            [one(SftpWrite, "/etc/x", false, false)]
        );
        assert_eq!(scp("scpx -t /a"), []);
        assert_eq!(scp("echo scp -t /a"), []);
        assert!(runs_sftp_server(&CommandLine::parse(
            "/usr/lib/openssh/sftp-server"
        )));
        assert!(runs_sftp_server(&CommandLine::parse(
            "exec env X=1 /tmp/../usr/lib/sftp-server -l DEBUG3"
        )));
        assert!(!runs_sftp_server(&CommandLine::parse("sftp host")));
        let stdin = |l: &str| reads_commands_from_stdin(&CommandLine::parse(l));
        assert!(
            stdin("sh") && stdin("bash -l") && stdin("bash -s -- a b") && stdin("/bin/dash -e")
        );
        assert!(!stdin("bash -c 'x'") && !stdin("bash script.sh") && !stdin("sh; x"));
    }
}
