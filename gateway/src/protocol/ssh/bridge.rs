//! One job channel bridged to one upstream channel: two pumps and the flow control between them.
//!
//! Job → host: the handler queues messages in order (`Down`) and never waits on the host's window;
//! `pump_down` applies them. Host → job: `pump_up` waits on the upstream channel and writes to the
//! job, waiting on the job's window, which stops it reading the upstream channel, which stops
//! russh reading the upstream socket: bounded.
//!
//! russh re-opens a receive window when data *arrives*, not when it is consumed, so the job could
//! outrun a slow host without bound. `Inflight` counts what was accepted from the job and not yet
//! handed to the host; above `HIGH_WATER` the handler shrinks the job's window to a trickle
//! (`adjust_window`), above `HARD_CAP` it stops reading the job's socket. Blocking the job's
//! socket alone deadlocks a full-duplex transfer (each side waits for a WINDOW_ADJUST queued
//! behind data the other side is not reading), which is why the window is the first brake.

use crate::record::EventKind;
use parking_lot::Mutex;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Pty, Sig, client, server};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::{
    Ctx,
    recorder::ChannelRecorder,
    sftp::{self, Completed, Framer},
};

pub(super) const HIGH_WATER: usize = 4 << 20;
pub(super) const HARD_CAP: usize = 64 << 20;

/// Bytes accepted from the job and not yet handed to the host (whole connection).
#[derive(Default)]
pub struct Inflight {
    pub bytes: AtomicUsize,
    pub drained: Notify,
}

impl Inflight {
    fn done(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.drained.notify_waiters();
    }

    /// Job data that will not reach the host after all (refused, or its channel went away).
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.done(n);
        }
    }

    pub fn queued(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Called after queueing job data: paces a throttled job, blocks it above the hard cap.
    pub async fn wait(&self) {
        let notified = self.drained.notified();
        let q = self.queued();
        if q > HIGH_WATER && q <= HARD_CAP {
            // The job is on a trickle window; one packet per drain or per 20 ms keeps it from
            // spinning while the session loop still reads WINDOW_ADJUSTs.
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
            return;
        }
        loop {
            let notified = self.drained.notified();
            if self.queued() <= HARD_CAP {
                return;
            }
            notified.await;
        }
    }
}

/// Byte counts of the whole connection, for the session record.
#[derive(Default)]
pub struct Counters {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

/// Job → host messages of one channel, in the order the job sent them.
pub enum Down {
    Data(Bytes),
    Ext(u32, Bytes),
    Eof,
    Close,
    Pty {
        term: String,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        modes: Vec<(Pty, u32)>,
    },
    Env(String, String),
    Shell,
    Exec(Vec<u8>),
    Subsystem(String),
    WindowChange(u32, u32, u32, u32),
    Signal(Sig),
    /// An exec held for approval: `Some(command)` runs it (no reply wanted: the job was answered
    /// already), `None` closes the channel. Everything queued after it waits.
    Approval(oneshot::Receiver<Option<Vec<u8>>>),
}

/// What `pump_up` needs to know about the channel beyond its two halves.
pub(super) struct UpSide {
    pub ctx: Arc<Ctx>,
    pub down_id: russh::ChannelId,
    pub down: server::Handle,
    pub replies: mpsc::Sender<bool>,
    pub rec: Arc<ChannelRecorder>,
    /// Set when the channel became an sftp channel (before any sftp response can arrive).
    pub sftp: Arc<Mutex<Option<sftp::Tracker>>>,
    /// Whole packets the gateway answers in place of the host (refused sftp requests).
    pub inject: mpsc::UnboundedReceiver<Bytes>,
    pub up_closed: watch::Sender<bool>,
}

/// The gateway's ends of a job channel registered with the job-side handler (which keeps the
/// sending ends), until `start` connects them to an upstream channel.
pub struct Parts {
    pub number: u32,
    pub rx: mpsc::UnboundedReceiver<Down>,
    pub inflight: Arc<Inflight>,
    pub replies: mpsc::Sender<bool>,
    pub rec: Arc<ChannelRecorder>,
    pub sftp: Arc<Mutex<Option<sftp::Tracker>>>,
    pub inject: mpsc::UnboundedReceiver<Bytes>,
}

/// Starts the two pumps of a job channel and its upstream channel.
pub(super) fn start(
    ctx: Arc<Ctx>,
    parts: Parts,
    down: russh::Channel<server::Msg>,
    down_handle: server::Handle,
    up: russh::Channel<client::Msg>,
) {
    let down_id = down.id();
    let (up_rx, up_tx) = up.split();
    // Every message russh queues on the job channel also reaches the handler callbacks, the path
    // used here (data, EOF, close and requests in one order); the read half is dropped.
    let (down_rx, down_tx) = down.split();
    drop(down_rx);
    let (closed_tx, closed_rx) = watch::channel(false);
    tokio::spawn(pump_down(parts.rx, up_tx, parts.inflight, closed_rx));
    tokio::spawn(pump_up(
        up_rx,
        down_tx,
        UpSide {
            ctx,
            down_id,
            down: down_handle,
            replies: parts.replies,
            rec: parts.rec,
            sftp: parts.sftp,
            inject: parts.inject,
            up_closed: closed_tx,
        },
    ));
}

/// Job → host pump: the only place that waits on the host's window.
pub(super) async fn pump_down(
    mut rx: mpsc::UnboundedReceiver<Down>,
    up: ChannelWriteHalf<client::Msg>,
    inflight: Arc<Inflight>,
    mut up_closed: watch::Receiver<bool>,
) {
    let mut failed = false;
    while let Some(m) = rx.recv().await {
        let r = match m {
            Down::Data(b) | Down::Ext(_, b) if failed => {
                inflight.done(b.len());
                Ok(())
            }
            Down::Data(b) => {
                let n = b.len();
                // If the host closes the channel, its window never opens again: also wake on close.
                let r = tokio::select! {
                    r = up.data_bytes(b) => r,
                    _ = up_closed.wait_for(|c| *c) => Err(russh::Error::SendError),
                };
                inflight.done(n);
                r
            }
            Down::Ext(code, b) => {
                let n = b.len();
                let r = tokio::select! {
                    r = up.extended_data_bytes(code, b) => r,
                    _ = up_closed.wait_for(|c| *c) => Err(russh::Error::SendError),
                };
                inflight.done(n);
                r
            }
            Down::Close => {
                let _ = up.close().await;
                break;
            }
            _ if failed => Ok(()),
            Down::Eof => up.eof().await,
            Down::Pty {
                term,
                cols,
                rows,
                pix_width,
                pix_height,
                modes,
            } => {
                up.request_pty(true, &term, cols, rows, pix_width, pix_height, &modes)
                    .await
            }
            Down::Env(k, v) => up.set_env(true, k, v).await,
            Down::Shell => up.request_shell(true).await,
            Down::Exec(c) => up.exec(true, c).await,
            Down::Subsystem(n) => up.request_subsystem(true, n).await,
            Down::WindowChange(c, r, pw, ph) => up.window_change(c, r, pw, ph).await,
            Down::Signal(s) => up.signal(s).await,
            Down::Approval(decision) => match decision.await {
                Ok(Some(command)) => up.exec(false, command).await,
                _ => {
                    let _ = up.close().await;
                    break;
                }
            },
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "upstream channel write failed");
            failed = true; // keep draining so the in-flight count stays right
        }
    }
    rx.close();
    while let Ok(m) = rx.try_recv() {
        if let Down::Data(b) | Down::Ext(_, b) = m {
            inflight.done(b.len());
        }
    }
}

/// Host → job pump for one channel.
pub(super) async fn pump_up(
    mut up_rx: ChannelReadHalf,
    down_tx: ChannelWriteHalf<server::Msg>,
    mut side: UpSide,
) {
    let mut framer: Option<Framer> = None;
    let mut seen_close = false;
    loop {
        let msg = tokio::select! {
            biased;
            Some(packet) = side.inject.recv() => {
                // Only whole packets are ever written in sftp mode, so this lands on a boundary.
                if down_tx.data_bytes(packet).await.is_err() {
                    break;
                }
                continue;
            }
            msg = up_rx.wait() => msg,
        };
        let Some(msg) = msg else { break };
        match msg {
            ChannelMsg::Data { data } => {
                side.ctx
                    .counters
                    .down
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                let is_sftp = side.sftp.lock().is_some();
                if is_sftp {
                    let f = framer.get_or_insert_with(Framer::default);
                    f.push(&data);
                    if !forward_sftp_responses(f, &down_tx, &side).await {
                        break;
                    }
                    continue;
                }
                side.rec.output(1, &data);
                if down_tx.data_bytes(data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::ExtendedData { data, ext } => {
                side.ctx
                    .counters
                    .down
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                side.rec.output(2, &data);
                if down_tx.extended_data_bytes(ext, data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::Eof => {
                let _ = down_tx.eof().await;
            }
            ChannelMsg::ExitStatus { exit_status } => {
                side.rec.exit_status(exit_status);
                let _ = down_tx.exit_status(exit_status).await;
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                side.rec.exit_signal(&format!("{signal_name:?}"));
                let _ = side
                    .down
                    .exit_signal_request(
                        side.down_id,
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    )
                    .await;
            }
            ChannelMsg::XonXoff { client_can_do } => {
                let _ = side
                    .down
                    .xon_xoff_request(side.down_id, client_can_do)
                    .await;
            }
            ChannelMsg::Success => {
                let _ = side.replies.send(true).await;
            }
            ChannelMsg::Failure => {
                let _ = side.replies.send(false).await;
            }
            ChannelMsg::Close => {
                seen_close = true;
                let _ = down_tx.close().await;
                break;
            }
            _ => {}
        }
    }
    if !seen_close {
        // The upstream connection died under the channel, or the job went away.
        let _ = down_tx
            .extended_data_bytes(
                1,
                Bytes::from_static(b"gateway: connection to the host lost\r\n"),
            )
            .await;
        let _ = down_tx.close().await;
    }
    let _ = side.up_closed.send(true);
    side.rec.finish(&side.ctx);
}

/// Writes every whole sftp response buffered in `f` to the job, following handles and sizes.
async fn forward_sftp_responses(
    f: &mut Framer,
    down_tx: &ChannelWriteHalf<server::Msg>,
    side: &UpSide,
) -> bool {
    while let Some(packet) = f.next_packet() {
        let packet = match packet {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(session = side.ctx.session_id, error = %e, "host sent a malformed sftp stream; closing the channel");
                return false;
            }
        };
        if let Ok(r) = sftp::parse_response(&packet) {
            let done = side.sftp.lock().as_mut().map(|t| t.response(&r));
            if let Some(Completed::Closed {
                path,
                mode,
                bytes_read,
                bytes_written,
            }) = done
            {
                side.ctx.store.note_event(
                    side.ctx.session_id,
                    EventKind::SshSftpFile,
                    serde_json::json!({
                        "channel": side.rec.number(),
                        "path": path,
                        "mode": mode,
                        "bytes_read": bytes_read,
                        "bytes_written": bytes_written,
                    }),
                );
            }
        }
        if down_tx.data_bytes(packet).await.is_err() {
            return false;
        }
    }
    true
}
