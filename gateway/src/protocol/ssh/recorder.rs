//! What one channel leaves in the session record.
//!
//! * exec without a terminal: the command (logged write-ahead by the handler), then at the end
//!   its exit status or signal and stdout/stderr, each capped (`max_output`) and masked;
//! * a terminal (shell, or exec with `-t`): the output as a timed stream in an asciicast v2 file
//!   under `<state_dir>/recordings/`, capped (`max_recording`), masked chunk by chunk (a secret
//!   split across two writes of the host can escape a detector), with resizes; the job's keys
//!   are not recorded there (passwords typed at prompts), the submitted lines are events;
//! * sftp: file operations and per-file byte counts are events (see `bridge`).

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use serde_json::json;

use super::Ctx;
use crate::mask::{Detector, redact};

pub struct ChannelRecorder {
    number: u32,
    max_output: usize,
    max_recording: u64,
    detectors: Arc<[Detector]>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Capture {
    kept: Vec<u8>,
    total: u64,
}

impl Capture {
    fn push(&mut self, data: &[u8], cap: usize) {
        self.total += data.len() as u64;
        let room = cap.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
    }
}

struct Cast {
    file: PathBuf,
    w: BufWriter<File>,
    bytes: u64,
    truncated: bool,
    last_flush: Instant,
    /// An incomplete UTF-8 sequence at the end of the last chunk.
    tail: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    kind: Option<&'static str>,
    command: Option<String>,
    pty: Option<(String, u32, u32)>,
    start: Option<Instant>,
    cast: Option<Cast>,
    stdout: Capture,
    stderr: Capture,
    exit_status: Option<u32>,
    exit_signal: Option<String>,
    finished: bool,
}

impl ChannelRecorder {
    pub fn new(ctx: &Ctx, number: u32) -> Self {
        ChannelRecorder {
            number,
            max_output: ctx.target.ssh.max_output,
            max_recording: ctx.target.ssh.max_recording,
            detectors: ctx.detectors.clone(),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pty(&self, term: &str, cols: u32, rows: u32) {
        self.lock().pty = Some((term.to_string(), cols, rows));
    }

    pub fn has_pty(&self) -> bool {
        self.lock().pty.is_some()
    }

    /// The channel became a shell, an exec or a subsystem. A terminal gets a cast file.
    pub fn begin(&self, ctx: &Ctx, kind: &'static str, command: Option<&str>) {
        let mut g = self.lock();
        if g.kind.is_some() {
            return;
        }
        g.kind = Some(kind);
        g.command = command.map(str::to_string);
        g.start = Some(Instant::now());
        let Some((term, cols, rows)) = g.pty.clone() else {
            return;
        };
        let file = ctx
            .recordings
            .join(format!("{}-{}.cast", ctx.session_id, self.number));
        let opened = std::fs::create_dir_all(&ctx.recordings).and_then(|()| File::create(&file));
        let mut w = match opened {
            Ok(f) => BufWriter::with_capacity(64 * 1024, f),
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "cannot create the terminal recording");
                ctx.store.note_event(
                    ctx.session_id,
                    "error",
                    json!({ "message": format!("cannot record the terminal of channel {}: {e}", self.number) }),
                );
                return;
            }
        };
        let mut header = json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": chrono::Utc::now().timestamp(),
            "env": { "TERM": term },
            "title": format!("session {} channel {} on {}", ctx.session_id, self.number, ctx.target.name),
        });
        if let Some(c) = command {
            header["command"] = json!(c);
        }
        let _ = writeln!(w, "{header}");
        ctx.store.note_event(
            ctx.session_id,
            "ssh_recording",
            json!({ "channel": self.number, "kind": kind, "file": file.display().to_string(), "format": "asciicast-v2" }),
        );
        g.cast = Some(Cast {
            file,
            w,
            bytes: 0,
            truncated: false,
            last_flush: Instant::now(),
            tail: Vec::new(),
        });
    }

    /// Output of the host: `stream` 1 is stdout, 2 stderr.
    pub fn output(&self, stream: u8, data: &[u8]) {
        let mut g = self.lock();
        let g = &mut *g;
        let elapsed = g.start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        if let Some(cast) = g.cast.as_mut() {
            cast.write_output(elapsed, data, self.max_recording, &self.detectors);
            return;
        }
        let cap = self.max_output;
        match stream {
            1 => g.stdout.push(data, cap),
            _ => g.stderr.push(data, cap),
        }
    }

    pub fn resize(&self, cols: u32, rows: u32) {
        let mut g = self.lock();
        let elapsed = g.start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        if let Some(cast) = g.cast.as_mut() {
            let _ = writeln!(
                cast.w,
                "{}",
                json!([round(elapsed), "r", format!("{cols}x{rows}")])
            );
        }
    }

    pub fn exit_status(&self, code: u32) {
        self.lock().exit_status = Some(code);
    }

    pub fn exit_signal(&self, name: &str) {
        self.lock().exit_signal = Some(name.to_string());
    }

    /// Writes the channel's closing event (once).
    pub fn finish(&self, ctx: &Ctx) {
        let mut g = self.lock();
        if g.finished {
            return;
        }
        g.finished = true;
        let Some(kind) = g.kind else { return };
        let duration = g.start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let mut detail = json!({
            "channel": self.number,
            "kind": kind,
            "exit_status": g.exit_status,
            "exit_signal": g.exit_signal,
            "duration_s": round(duration),
        });
        if let Some(c) = &g.command {
            detail["command"] = json!(c);
        }
        if let Some(mut cast) = g.cast.take() {
            let _ = cast.w.flush();
            detail["recording"] = json!(cast.file.display().to_string());
            detail["output_bytes"] = json!(cast.bytes);
            detail["recording_truncated"] = json!(cast.truncated);
        } else if kind == "exec" {
            let (out, out_masked) = masked_text(&g.stdout.kept, &self.detectors);
            let (err, err_masked) = masked_text(&g.stderr.kept, &self.detectors);
            detail["stdout"] = json!(out);
            detail["stderr"] = json!(err);
            detail["stdout_bytes"] = json!(g.stdout.total);
            detail["stderr_bytes"] = json!(g.stderr.total);
            detail["truncated"] = json!(
                g.stdout.total > g.stdout.kept.len() as u64
                    || g.stderr.total > g.stderr.kept.len() as u64
            );
            detail["masked"] = json!(out_masked + err_masked);
        }
        ctx.store
            .note_event(ctx.session_id, "ssh_channel_end", detail);
    }
}

fn round(t: f64) -> f64 {
    (t * 1_000_000.0).round() / 1_000_000.0
}

/// Text of captured output with the detectors' matches replaced; and how many were.
fn masked_text(data: &[u8], detectors: &[Detector]) -> (String, usize) {
    match redact(data, detectors) {
        Some((masked, n)) => (String::from_utf8_lossy(&masked).into_owned(), n),
        None => (String::from_utf8_lossy(data).into_owned(), 0),
    }
}

impl Cast {
    fn write_output(&mut self, elapsed: f64, data: &[u8], cap: u64, detectors: &[Detector]) {
        if self.truncated {
            self.bytes += data.len() as u64;
            return;
        }
        self.bytes += data.len() as u64;
        self.tail.extend_from_slice(data);
        let valid = match std::str::from_utf8(&self.tail) {
            Ok(_) => self.tail.len(),
            // Keep an incomplete trailing sequence for the next chunk; replace real errors.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.tail.len(),
        };
        let chunk: Vec<u8> = self.tail.drain(..valid).collect();
        if chunk.is_empty() {
            return;
        }
        let (text, _) = masked_text(&chunk, detectors);
        let _ = writeln!(self.w, "{}", json!([round(elapsed), "o", text]));
        if self.bytes > cap {
            self.truncated = true;
            let _ = writeln!(
                self.w,
                "{}",
                json!([
                    round(elapsed),
                    "o",
                    "\r\n[gateway: recording truncated here]\r\n"
                ])
            );
        }
        if self.last_flush.elapsed().as_millis() > 250 {
            let _ = self.w.flush();
            self.last_flush = Instant::now();
        }
    }
}
