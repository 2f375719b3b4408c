//! The job → host side of an interactive shell: a task between the handler and
//! `bridge::pump_down` that rebuilds the lines the job submits and has policy decide each before
//! the host sees it run.
//!
//! With a terminal, keystrokes pass as they are typed and the Enter key is what waits: allowed, it
//! is passed on; denied, Ctrl-C goes in its place (the shell drops the line); needing approval, the
//! terminal shows the request id and everything typed after Enter waits behind the decision, except
//! Ctrl-C, which withdraws the request. Without a terminal each stdin line is held whole until it
//! is decided, and a line needing approval waits like an exec. Every message the handler queues for
//! the channel comes through here, so nothing (EOF, close) overtakes a held line.
//!
//! Job data was counted in `Inflight` when the handler queued it; this task releases each chunk
//! once it has dealt with it and counts again what it forwards (`pump_down` releases that).

use crate::record::EventKind;
use std::{collections::VecDeque, sync::Arc};

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use super::{
    Ctx,
    bridge::{Down, Inflight},
    hold::{Held, Hold},
    shell::{Key, LineEditor},
};
use crate::policy::{Decision, SshOperation};
use crate::shell::CommandLine;

/// Longest line of a shell without a terminal that is held back for a decision.
const MAX_SCRIPT_LINE: usize = 64 * 1024;

const CTRL_C: u8 = 0x03;

pub(super) enum Input {
    /// A terminal: keystrokes, edited into lines.
    Terminal(LineEditor),
    /// Commands on stdin: the incomplete last line.
    Script(Vec<u8>),
}

pub(super) struct Gate {
    pub hold: Hold,
    /// The channel's queue to `pump_down`.
    pub up: mpsc::UnboundedSender<Down>,
    pub inflight: Arc<Inflight>,
    pub input: Input,
}

/// Starts the gate; the handler queues the channel's messages on the sender returned.
pub(super) fn start(gate: Gate) -> mpsc::UnboundedSender<Down> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        Running {
            gate,
            rx,
            later: VecDeque::new(),
            closed: false,
        }
        .run(),
    );
    tx
}

/// What policy said about a submitted line, once recorded.
enum Verdict {
    Pass,
    /// Not sent; what the job is told.
    Blocked(String),
    Approval(String),
}

struct Running {
    gate: Gate,
    rx: mpsc::UnboundedReceiver<Down>,
    /// Messages that arrived while a line was held, in order.
    later: VecDeque<Down>,
    /// The job closed the channel, or broke the rules of the input: the rest is dropped.
    closed: bool,
}

impl Running {
    fn ctx(&self) -> &Ctx {
        &self.gate.hold.ctx
    }

    async fn next(&mut self) -> Option<Down> {
        match self.later.pop_front() {
            Some(m) => Some(m),
            None => self.rx.recv().await,
        }
    }

    async fn run(mut self) {
        while let Some(m) = self.next().await {
            match m {
                Down::Data(chunk) if self.closed => self.gate.inflight.release(chunk.len()),
                Down::Data(chunk) => {
                    let ok = match self.gate.input {
                        Input::Terminal(_) => self.keys(&chunk).await,
                        Input::Script(_) => self.script(&chunk, false).await,
                    };
                    self.gate.inflight.release(chunk.len());
                    if !ok {
                        self.forward(Down::Close);
                        break;
                    }
                }
                Down::Eof => {
                    // A script's last line may lack its newline: it is decided like the others.
                    if matches!(&self.gate.input, Input::Script(held) if !held.is_empty())
                        && !self.closed
                        && !self.script(&[], true).await
                    {
                        self.forward(Down::Close);
                        break;
                    }
                    self.forward(Down::Eof);
                }
                other => self.forward(other),
            }
        }
        self.rx.close();
        let rest: Vec<Down> = self.later.drain(..).collect();
        for m in rest
            .into_iter()
            .chain(std::iter::from_fn(|| self.rx.try_recv().ok()))
        {
            if let Down::Data(b) | Down::Ext(_, b) = m {
                self.gate.inflight.release(b.len());
            }
        }
    }

    /// Passes a message on to `pump_down`; job data it can no longer take is released.
    fn forward(&self, m: Down) {
        if let Err(mpsc::error::SendError(Down::Data(b) | Down::Ext(_, b))) = self.gate.up.send(m) {
            self.gate.inflight.release(b.len());
        }
    }

    /// Forwards bytes of job data (counted again: `pump_down` releases them).
    fn send(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.gate
            .inflight
            .bytes
            .fetch_add(data.len(), std::sync::atomic::Ordering::AcqRel);
        self.forward(Down::Data(data));
    }

    /// Keystrokes of a terminal. False when the job left while a line was held.
    async fn keys(&mut self, chunk: &Bytes) -> bool {
        let Input::Terminal(editor) = &mut self.gate.input else {
            return true;
        };
        for key in editor.feed(chunk) {
            match key {
                Key::Input(a, b) => self.send(chunk.slice(a..b)),
                Key::Submit { at, line, edited } => {
                    let enter = chunk.slice(at..=at);
                    let pass = match self.verdict(&line, edited).await {
                        Verdict::Pass => true,
                        Verdict::Blocked(reason) => {
                            self.terminal_note(&reason).await;
                            false
                        }
                        Verdict::Approval(rule) => {
                            let _ = self
                                .gate
                                .hold
                                .handle
                                .extended_data(self.gate.hold.channel, 1, Bytes::from("\r\n"))
                                .await;
                            match self.wait_withdrawable(&rule, line.trim()).await {
                                Held::Approved => true,
                                Held::Refused { .. } => false,
                                Held::Gone => return false,
                            }
                        }
                    };
                    // Ctrl-C in place of Enter: the shell drops the line it holds.
                    self.send(if pass {
                        enter
                    } else {
                        Bytes::from_static(&[CTRL_C])
                    });
                }
            }
        }
        true
    }

    /// Waits for the decision on a terminal line; the job's Ctrl-C withdraws the request (the
    /// ticket is dropped: abandoned). What the job sends meanwhile waits in `later`, except
    /// terminal resizes, which cannot run anything.
    async fn wait_withdrawable(&mut self, rule: &str, line: &str) -> Held {
        let detail = json!({ "channel": self.gate.hold.number, "line": line });
        let mut ask = Box::pin(self.gate.hold.ask(rule, "ssh_shell_line", line, detail));
        let mut open = true;
        loop {
            tokio::select! {
                held = &mut ask => return held,
                m = self.rx.recv(), if open => match m {
                    Some(m @ Down::WindowChange(..)) => {
                        let _ = self.gate.up.send(m);
                    }
                    Some(m) => {
                        let withdrawn = matches!(&m, Down::Data(b) if b.contains(&CTRL_C));
                        self.later.push_back(m);
                        if withdrawn {
                            break;
                        }
                    }
                    None => open = false,
                },
            }
        }
        // Dropping the ticket marks the request abandoned.
        drop(ask);
        let reason = "withdrawn with Ctrl-C".to_string();
        self.ctx().store.note_event(
            self.ctx().session_id,
            EventKind::SshApproval,
            json!({ "channel": self.gate.hold.number, "kind": "ssh_shell_line", "command": line, "rule": rule, "outcome": { "outcome": "withdrawn" } }),
        );
        self.gate.hold.say(&reason).await;
        Held::Refused { reason }
    }

    /// Lines of a shell without a terminal; `last` decides what is left without a newline.
    async fn script(&mut self, chunk: &[u8], last: bool) -> bool {
        let Input::Script(held) = &mut self.gate.input else {
            return true;
        };
        held.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(end) = held.iter().position(|&b| b == b'\n') {
            lines.push(held.drain(..=end).collect::<Vec<u8>>());
        }
        if last && !held.is_empty() {
            lines.push(std::mem::take(held));
        }
        if held.len() > MAX_SCRIPT_LINE {
            self.closed = true;
            held.clear();
            self.gate
                .hold
                .say("input line too long to check; closed")
                .await;
            self.forward(Down::Close);
            let _ = self.gate.hold.handle.close(self.gate.hold.channel).await;
            return true;
        }
        for raw in lines {
            let line = String::from_utf8_lossy(&raw).trim_end().to_string();
            let pass = match self.verdict(&line, false).await {
                Verdict::Pass => true,
                Verdict::Blocked(reason) => {
                    self.gate.hold.say(&reason).await;
                    false
                }
                Verdict::Approval(rule) => {
                    let detail = json!({ "channel": self.gate.hold.number, "line": line.trim() });
                    match self
                        .gate
                        .hold
                        .ask(&rule, "ssh_shell_line", line.trim(), detail)
                        .await
                    {
                        Held::Approved => true,
                        Held::Refused { .. } => false,
                        Held::Gone => return false,
                    }
                }
            };
            if pass {
                self.send(Bytes::from(raw));
            }
        }
        true
    }

    /// Decides one submitted line and records it (write-ahead when it goes through).
    async fn verdict(&self, line: &str, edited: bool) -> Verdict {
        let command = line.trim();
        if command.is_empty() {
            return Verdict::Pass;
        }
        let ctx = self.ctx();
        let parsed = CommandLine::parse(command);
        let decision = ctx.policy.decide_ssh(
            &ctx.identity,
            &ctx.target.name,
            &SshOperation::Shell {
                line: Some(&parsed),
            },
        );
        let detail = json!({
            "channel": self.gate.hold.number,
            "line": masked(ctx, command),
            "edited": edited,
            "decision": decision.label(),
            "rule": decision.rule(),
            "reason": decision.reason(),
        });
        match decision {
            Decision::Allow { .. } => {
                match ctx
                    .store
                    .append_event(ctx.session_id, EventKind::SshShellLine, detail)
                    .await
                {
                    Ok(()) => Verdict::Pass,
                    Err(e) => {
                        tracing::error!(session = ctx.session_id, error = %e, "cannot record; refusing");
                        Verdict::Blocked("not sent: the gateway cannot record it".into())
                    }
                }
            }
            Decision::Deny { reason, .. } => {
                ctx.store
                    .note_event(ctx.session_id, EventKind::SshShellLine, detail);
                Verdict::Blocked(format!("blocked by policy: {reason}"))
            }
            Decision::RequireApproval { rule } => {
                ctx.store
                    .note_event(ctx.session_id, EventKind::SshShellLine, detail);
                Verdict::Approval(rule)
            }
        }
    }

    /// A line on the job's terminal, below what it typed.
    async fn terminal_note(&self, text: &str) {
        let _ = self
            .gate
            .hold
            .handle
            .data(
                self.gate.hold.channel,
                Bytes::from(format!("\r\ngateway: {text}\r\n")),
            )
            .await;
    }
}

/// Lines are decided as typed and recorded masked (a token on a `curl` line).
fn masked(ctx: &Ctx, text: &str) -> String {
    match crate::mask::redact(text.as_bytes(), &ctx.detectors) {
        Some((masked, _)) => String::from_utf8_lossy(&masked).into_owned(),
        None => text.to_string(),
    }
}
