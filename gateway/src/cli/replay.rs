//! `gateway sessions replay|export`: terminal recordings played back with their timing, and
//! sessions written out as asciicast v2 (terminals) or JSON lines (everything else).

use crate::record::EventKind;
use std::{
    io::{BufRead as _, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};

use crate::record::SessionRecord;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "session {0} has no terminal recording (see `gateway sessions show {0}`, or export it as jsonl)"
    )]
    NoRecording(i64),
    #[error("session {session} has no terminal recording for channel {channel}")]
    NoChannel { session: i64, channel: u64 },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not an asciicast v2 line")]
    Format { path: String, line: usize },
    #[error("writing: {0}")]
    Write(std::io::Error),
}

/// The recording files of a session, by channel, in the order they were opened.
pub fn recordings(session: &SessionRecord) -> Vec<(u64, PathBuf)> {
    session
        .events
        .iter()
        .filter(|e| e.event_kind() == Some(EventKind::SshRecording))
        .filter_map(|e| {
            Some((
                e.detail["channel"].as_u64()?,
                PathBuf::from(e.detail["file"].as_str()?),
            ))
        })
        .collect()
}

fn pick(session: &SessionRecord, channel: Option<u64>) -> Result<PathBuf, ReplayError> {
    let all = recordings(session);
    let id = session.summary.id;
    match channel {
        None => all
            .into_iter()
            .next()
            .map(|(_, p)| p)
            .ok_or(ReplayError::NoRecording(id)),
        Some(c) => all
            .into_iter()
            .find(|(n, _)| *n == c)
            .map(|(_, p)| p)
            .ok_or(ReplayError::NoChannel {
                session: id,
                channel: c,
            }),
    }
}

fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>, ReplayError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|source| ReplayError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// Plays a terminal recording to `out`: output events at their recorded times divided by `speed`,
/// pauses longer than `max_idle` shortened to it.
pub fn replay(
    session: &SessionRecord,
    channel: Option<u64>,
    speed: f64,
    max_idle: Option<f64>,
    out: &mut impl Write,
) -> Result<(), ReplayError> {
    let path = pick(session, channel)?;
    let reader = open(&path)?;
    let speed = if speed > 0.0 { speed } else { 1.0 };
    let mut last = 0.0f64;
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| ReplayError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if i == 0 {
            continue; // header
        }
        let bad = || ReplayError::Format {
            path: path.display().to_string(),
            line: i + 1,
        };
        let event: Value = serde_json::from_str(&line).map_err(|_| bad())?;
        let (Some(t), Some(code)) = (event[0].as_f64(), event[1].as_str()) else {
            return Err(bad());
        };
        if code != "o" {
            continue;
        }
        let mut wait = (t - last).max(0.0);
        if let Some(m) = max_idle {
            wait = wait.min(m);
        }
        last = t;
        if wait > 0.0 {
            out.flush().map_err(ReplayError::Write)?;
            std::thread::sleep(Duration::from_secs_f64(wait / speed));
        }
        out.write_all(event[2].as_str().unwrap_or("").as_bytes())
            .map_err(ReplayError::Write)?;
    }
    out.flush().map_err(ReplayError::Write)
}

/// Copies the asciicast v2 recording of a terminal channel.
pub fn export_asciicast(
    session: &SessionRecord,
    channel: Option<u64>,
    out: &mut impl Write,
) -> Result<(), ReplayError> {
    let path = pick(session, channel)?;
    let mut reader = open(&path)?;
    std::io::copy(&mut reader, out).map_err(ReplayError::Write)?;
    out.flush().map_err(ReplayError::Write)
}

/// The session as JSON lines: one line for the session, then one per event.
pub fn export_jsonl(session: &SessionRecord, out: &mut impl Write) -> Result<(), ReplayError> {
    let mut head = serde_json::to_value(session).unwrap_or_default();
    if let Some(o) = head.as_object_mut() {
        o.remove("events");
    }
    let mut write = |v: &Value| writeln!(out, "{v}").map_err(ReplayError::Write);
    write(&json!({ "type": "session", "session": head }))?;
    for e in &session.events {
        write(
            &json!({ "type": "event", "id": e.id, "at": e.at, "kind": e.kind, "detail": e.detail }),
        )?;
    }
    out.flush().map_err(ReplayError::Write)
}
