//! The write-ahead journal: an append-only file of framed records, the durability point of every
//! record the store is given.
//!
//! A record counts as stored once one `write()` of its frame to the file (opened `O_APPEND`) has
//! returned: the bytes are in the kernel's page cache, so a `kill -9` or a crash of the daemon
//! loses nothing, exactly like SQLite's WAL with `synchronous=NORMAL` (neither fsyncs per record).
//! A power loss or kernel crash may lose the last records written before it. The records are
//! folded into SQLite in batches later; the journal is only read back at startup.
//!
//! Frame: `len: u32 LE` (payload bytes), `crc32: u32 LE` (of the sequence number's bytes and the
//! payload), `seq: u64 LE`, then the payload (a JSON [`Record`]). A frame cut short by a crash in
//! the middle of a write fails its length or checksum; reading stops there with a warning.

use std::{
    borrow::Cow,
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::sessions::NewSession;

const HEADER: usize = 16;
/// Largest payload accepted when reading back (a record is far smaller; more means garbage).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("journal: cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("journal {0}: an earlier write failed and could not be undone; refusing to append")]
    Broken(String),
    #[error(
        "a record of {0} bytes is larger than the journal reads back ({MAX_PAYLOAD} bytes); not recorded"
    )]
    TooLarge(usize),
}

/// One thing the store was asked to keep, as it is written to the journal and later to SQLite.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Record {
    Session {
        id: i64,
        session: Box<NewSession>,
    },
    End {
        id: i64,
        at: String,
        bytes_up: u64,
        bytes_down: u64,
    },
    Events {
        session_id: i64,
        events: Vec<EventRow>,
    },
}

/// An event as stored: its detail already rendered as JSON (once, on the caller's thread), and
/// carried as that JSON into the journal record and SQLite (neither escaped nor parsed again).
#[derive(Debug, Serialize, Deserialize)]
#[serde(try_from = "EventRowRead")]
pub(crate) struct EventRow {
    pub kind: Cow<'static, str>,
    pub at: String,
    #[serde(rename = "json")]
    pub detail: Box<RawValue>,
    /// For `sql` and `sql_result` events of a statement log: the statement's sequence number in
    /// its session (the store keeps a statement and its outcome in one row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<u64>,
}

/// An [`EventRow`] as read back: journals of earlier builds carry the detail as a JSON string
/// (`detail`) rather than as JSON (`json`).
#[derive(Deserialize)]
struct EventRowRead {
    kind: Cow<'static, str>,
    at: String,
    #[serde(default, deserialize_with = "present")]
    json: Option<Box<RawValue>>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    statement: Option<u64>,
}

/// A `json` field that is there, whatever it holds (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl TryFrom<EventRowRead> for EventRow {
    type Error = String;

    fn try_from(r: EventRowRead) -> Result<EventRow, String> {
        let detail = match (r.json, r.detail) {
            (Some(json), _) => json,
            (None, Some(text)) => RawValue::from_string(text).map_err(|e| e.to_string())?,
            (None, None) => return Err("an event without its detail".into()),
        };
        Ok(EventRow {
            kind: r.kind,
            at: r.at,
            detail,
            statement: r.statement,
        })
    }
}

/// A record framed for the journal, its sequence number still to be filled in.
pub(super) struct Encoded(Vec<u8>);

impl Encoded {
    /// Encodes a record; one that replay would refuse as too large is refused here instead, so
    /// that nothing is stored that cannot be read back.
    pub(super) fn new(record: &Record) -> Result<Encoded, JournalError> {
        let mut buf = Vec::with_capacity(256);
        buf.resize(HEADER, 0);
        serde_json::to_writer(&mut buf, record)?;
        if buf.len() - HEADER > MAX_PAYLOAD {
            return Err(JournalError::TooLarge(buf.len() - HEADER));
        }
        Ok(Encoded(buf))
    }

    #[cfg(test)]
    pub(super) fn into_payload_for_test(self) -> Vec<u8> {
        self.0[HEADER..].to_vec()
    }

    /// Fills in `seq` and the checksum; the frame is then ready to write.
    fn seal(&mut self, seq: u64) -> &[u8] {
        let payload_len = (self.0.len() - HEADER) as u32;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq.to_le_bytes());
        crc.update(&self.0[HEADER..]);
        self.0[0..4].copy_from_slice(&payload_len.to_le_bytes());
        self.0[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        self.0[8..16].copy_from_slice(&seq.to_le_bytes());
        &self.0
    }
}

/// The journal file being appended to.
pub(super) struct Journal {
    file: File,
    path: PathBuf,
    /// Bytes in the file: where the next frame starts.
    len: u64,
    broken: bool,
}

/// The file records are appended to, and the one it was rotated into while that is being applied.
pub(super) fn paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (
        state_dir.join("gateway.journal"),
        state_dir.join("gateway.journal.1"),
    )
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Journal {
    /// Opens `path` for appending, emptied (its records have been applied at startup).
    pub(super) fn create(path: &Path) -> Result<Journal, JournalError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_error(path))?;
        file.set_len(0).map_err(io_error(path))?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            len: 0,
            broken: false,
        })
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Appends the frames of `records` (sequence numbers from `first_seq` on) with one `write()`;
    /// once this returns they survive a crash of the process. A failed write is cut off again so
    /// that no torn frame hides later records.
    pub(super) fn append(
        &mut self,
        first_seq: u64,
        records: &mut [Encoded],
    ) -> Result<(), JournalError> {
        if self.broken {
            return Err(JournalError::Broken(self.path.display().to_string()));
        }
        let joined;
        let bytes: &[u8] = match records {
            [one] => one.seal(first_seq),
            many => {
                let mut all = Vec::with_capacity(many.iter().map(|r| r.0.len()).sum());
                for (seq, r) in (first_seq..).zip(many.iter_mut()) {
                    all.extend_from_slice(r.seal(seq));
                }
                joined = all;
                &joined
            }
        };
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(source) => {
                if self.file.set_len(self.len).is_err() {
                    self.broken = true;
                }
                Err(JournalError::Io {
                    path: self.path.display().to_string(),
                    source,
                })
            }
        }
    }

    /// Empties the file (everything in it has been applied).
    pub(super) fn clear(&mut self) -> Result<(), JournalError> {
        self.file.set_len(0).map_err(io_error(&self.path))?;
        self.len = 0;
        self.broken = false;
        Ok(())
    }

    /// Moves the current file to `old` and continues in a fresh one at the same path.
    pub(super) fn rotate(&mut self, old: &Path) -> Result<(), JournalError> {
        std::fs::rename(&self.path, old).map_err(io_error(&self.path))?;
        *self = Journal::create(&self.path)?;
        Ok(())
    }
}

/// Reads every whole record of a journal file, in order. A missing file has none; a torn or
/// corrupt frame ends the file with a warning (only the last write before a crash can be torn).
pub(super) fn read(path: &Path) -> Result<Vec<(u64, Record)>, JournalError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(io_error(path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match frame_at(&bytes[at..]) {
            Ok((seq, record, used)) => {
                records.push((seq, record));
                at += used;
            }
            Err(why) => {
                tracing::warn!(
                    journal = %path.display(),
                    offset = at,
                    ignored_bytes = bytes.len() - at,
                    "session journal ends in an incomplete record ({why}); it is ignored"
                );
                break;
            }
        }
    }
    Ok(records)
}

fn frame_at(bytes: &[u8]) -> Result<(u64, Record, usize), &'static str> {
    if bytes.len() < HEADER {
        return Err("short header");
    }
    let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let len = word(0) as usize;
    if len > MAX_PAYLOAD || bytes.len() < HEADER + len {
        return Err("short payload");
    }
    let seq_bytes: [u8; 8] = bytes[8..16].try_into().expect("8 bytes");
    let payload = &bytes[HEADER..HEADER + len];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq_bytes);
    crc.update(payload);
    if crc.finalize() != word(4) {
        return Err("checksum mismatch");
    }
    let record = serde_json::from_slice(payload).map_err(|_| "undecodable payload")?;
    Ok((u64::from_le_bytes(seq_bytes), record, HEADER + len))
}
