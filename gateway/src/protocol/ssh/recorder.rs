//! What one channel leaves in the session record.
//!
//! * exec without a terminal: the command (logged write-ahead by the handler), then at the end
//!   its exit status or signal and stdout/stderr, each capped (`max_output`) and masked;
//! * a terminal (shell, or exec with `-t`): the output as a timed stream in an asciicast v2 file
//!   under `<state_dir>/recordings/`, capped (`max_recording`), masked, with resizes; the job's
//!   keys are not recorded there (passwords typed at prompts), the submitted lines are events.
//!   Output is written once `CARRY` bytes follow it (or at the end), so that a secret the host
//!   wrote in two pieces, two SSH packets, is masked whole;
//! * sftp: file operations and per-file byte counts are events (see `bridge`).

use crate::record::EventKind;
use parking_lot::Mutex;
use std::{
    fs::File,
    io::{BufWriter, Write as _},
    ops::Range,
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use serde_json::json;

use super::Ctx;
use crate::mask::{Detector, redact};

/// Terminal output held back until this much follows it: longer than any secret the detectors
/// find (JWTs, keys, card numbers), so a match split across packets is seen whole.
const CARRY: usize = 16 * 1024;
/// A match still open at the end (a private key block without its END line) may hold back more,
/// up to this; past it the oldest output is written, masked as far as it was seen.
const MAX_CARRY: usize = 256 * 1024;

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
    /// An incomplete UTF-8 sequence at the end of what was written last.
    tail: Vec<u8>,
    /// Output not written yet, and the events it came in (with resizes between), in order.
    held: Vec<u8>,
    events: Vec<(f64, Held)>,
    /// Length of `held` at which it is looked at again (not at every packet: bounded work).
    next_scan: usize,
}

enum Held {
    /// The next this many bytes of `held`.
    Output(usize),
    Resize(String),
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

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
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
        // Recorded masked, like the exec event (a token on a `curl` line).
        let command = command.map(|c| masked_text(c.as_bytes(), &self.detectors).0);
        g.command = command.clone();
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
                    EventKind::Error,
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
        if let Some(c) = &command {
            header["command"] = json!(c);
        }
        let _ = writeln!(w, "{header}");
        ctx.store.note_event(
            ctx.session_id,
            EventKind::SshRecording,
            json!({ "channel": self.number, "kind": kind, "file": file.display().to_string(), "format": "asciicast-v2" }),
        );
        g.cast = Some(Cast {
            file,
            w,
            bytes: 0,
            truncated: false,
            last_flush: Instant::now(),
            tail: Vec::new(),
            held: Vec::new(),
            events: Vec::new(),
            next_scan: 2 * CARRY,
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
            cast.resize(elapsed, format!("{cols}x{rows}"));
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
            cast.release(true, &self.detectors);
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
            .note_event(ctx.session_id, EventKind::SshChannelEnd, detail);
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
        self.bytes += data.len() as u64;
        if self.truncated || data.is_empty() {
            return;
        }
        self.held.extend_from_slice(data);
        match self.events.last_mut() {
            Some((at, Held::Output(n))) if *at == elapsed => *n += data.len(),
            _ => self.events.push((elapsed, Held::Output(data.len()))),
        }
        if self.bytes > cap {
            self.release(true, detectors);
            self.truncated = true;
            let note = "\r\n[gateway: recording truncated here]\r\n";
            let _ = writeln!(self.w, "{}", json!([round(elapsed), "o", note]));
        } else if self.held.len() >= self.next_scan {
            self.release(false, detectors);
        }
        if self.last_flush.elapsed().as_millis() > 250 {
            let _ = self.w.flush();
            self.last_flush = Instant::now();
        }
    }

    fn resize(&mut self, elapsed: f64, size: String) {
        if self.events.is_empty() {
            let _ = writeln!(self.w, "{}", json!([round(elapsed), "r", size]));
        } else {
            self.events.push((elapsed, Held::Resize(size)));
        }
    }

    /// Writes held output, masked: all of it at the end (`all`), else what has `CARRY` bytes
    /// after it and is not part of a match that runs on past that point.
    fn release(&mut self, all: bool, detectors: &[Detector]) {
        let spans = matches(&self.held, detectors);
        let len = self.held.len();
        let mut cut = if all { len } else { len.saturating_sub(CARRY) };
        if !all {
            if let Some(open) = spans.iter().find(|(r, _)| r.start < cut && r.end > cut) {
                cut = open.0.start;
            }
            if len - cut > MAX_CARRY {
                cut = len - CARRY;
            }
            // Never inside a UTF-8 sequence: the next write starts with a whole character.
            while cut > 0 && cut < len && self.held[cut] & 0xc0 == 0x80 {
                cut -= 1;
            }
        }
        let mut at = 0;
        let mut last = 0.0;
        let mut rest = Vec::new();
        for (time, event) in std::mem::take(&mut self.events) {
            match event {
                Held::Resize(size) if at <= cut => {
                    let _ = writeln!(self.w, "{}", json!([round(time), "r", size]));
                }
                Held::Output(n) if at < cut => {
                    let end = (at + n).min(cut);
                    let masked = mask_range(&self.held, at..end, &spans);
                    self.write_text(time, masked);
                    last = time;
                    if at + n > cut {
                        rest.push((time, Held::Output(at + n - cut)));
                    }
                    at += n;
                }
                other => {
                    if let Held::Output(n) = other {
                        at += n;
                    }
                    rest.push((time, other));
                }
            }
        }
        self.events = rest;
        self.held.drain(..cut);
        if all {
            let tail = std::mem::take(&mut self.tail);
            if !tail.is_empty() {
                let _ = writeln!(
                    self.w,
                    "{}",
                    json!([round(last), "o", String::from_utf8_lossy(&tail)])
                );
            }
        }
        self.next_scan = self.held.len() + CARRY;
    }

    /// One output event; an incomplete UTF-8 sequence at its end waits for the next.
    fn write_text(&mut self, time: f64, bytes: Vec<u8>) {
        self.tail.extend_from_slice(&bytes);
        let valid = match std::str::from_utf8(&self.tail) {
            Ok(_) => self.tail.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.tail.len(),
        };
        let chunk: Vec<u8> = self.tail.drain(..valid).collect();
        if !chunk.is_empty() {
            let text = String::from_utf8_lossy(&chunk);
            let _ = writeln!(self.w, "{}", json!([round(time), "o", text]));
        }
    }
}

/// The detectors' matches in `text`, overlapping ones merged (the first found names the span).
fn matches(text: &[u8], detectors: &[Detector]) -> Vec<(Range<usize>, Detector)> {
    let mut spans: Vec<(Range<usize>, Detector)> = detectors
        .iter()
        .flat_map(|&d| d.find(text).into_iter().map(move |r| (r, d)))
        .collect();
    spans.sort_by_key(|(r, _)| (r.start, std::cmp::Reverse(r.end)));
    let mut merged: Vec<(Range<usize>, Detector)> = Vec::new();
    for (r, d) in spans {
        match merged.last_mut() {
            Some((last, _)) if r.start < last.end => last.end = last.end.max(r.end),
            _ => merged.push((r, d)),
        }
    }
    merged
}

/// Bytes `range` of `text` with the matches in it replaced: a replacement where its match starts,
/// nothing for the rest of the match.
fn mask_range(text: &[u8], range: Range<usize>, spans: &[(Range<usize>, Detector)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(range.len());
    let mut i = range.start;
    for (r, d) in spans {
        if r.end <= i || r.start >= range.end {
            continue;
        }
        if r.start >= i {
            out.extend_from_slice(&text[i..r.start]);
            out.extend_from_slice(d.replacement().as_bytes());
        }
        i = r.end.min(range.end);
    }
    if i < range.end {
        out.extend_from_slice(&text[i..range.end]);
    }
    out
}

#[cfg(test)]
mod tests;
