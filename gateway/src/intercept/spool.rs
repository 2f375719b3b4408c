//! Kernel records between the ring buffer and the store. Taking a record out of the ring buffer
//! frees its room there, and storing it (the process looked up, the journal written) comes
//! later: a daemon killed in between would take the record with it, and a connection that went
//! through would go unrecorded. So the reader copies each record here before it takes the next
//! one (a write to the page cache outlives the process, as the ring buffer's memory does), the
//! storing task marks what it has stored, and the next daemon stores the rest before anything
//! new.
//!
//! The file: a header (magic and map layout version, then the offset up to which records are
//! stored), then whole [`Event`]s as the kernel wrote them. It is emptied whenever everything in
//! it is stored, so it holds at most what the storing task is behind by.
//!
//! A daemon killed after it kept a record and before it took it out of the ring leaves that
//! record in both: the next daemon skips the ring's first record when it is the spool's last.
//! What the storing task stored but had not marked yet when the daemon died (at most one batch)
//! is stored again: kernel-path sessions are known by their socket cookie and kept once; a
//! refusal among them may be recorded twice. Duplicates rather than losses.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use gateway_common::{ABI_VERSION, Event};
use parking_lot::Mutex;

/// `b"gwkrec"`, then the map layout version: a spool of another layout is not read as this one.
const MAGIC: [u8; 8] = {
    let v = ABI_VERSION.to_le_bytes();
    [b'g', b'w', b'k', b'r', b'e', b'c', v[0], v[1]]
};
const HEADER: u64 = 16;
const RECORD: u64 = std::mem::size_of::<Event>() as u64;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("kernel record spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

pub struct Spool {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// End of the records written.
    written: u64,
    /// End of the records stored.
    stored: u64,
    /// A write failed, and it was logged: the next failure is not.
    failing: bool,
}

/// Reads a record as the kernel wrote it (None when it is too short to be one).
pub fn event_from(bytes: &[u8]) -> Option<Event> {
    (bytes.len() >= RECORD as usize).then(|| {
        // SAFETY: `Event` is plain `repr(C)` data for which any bit pattern is valid, and the
        // slice holds at least one; read_unaligned copes with any alignment.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) }
    })
}

impl Spool {
    /// Opens the spool in `state_dir` and returns what a previous daemon read but did not mark
    /// stored, oldest first.
    pub fn open(state_dir: &Path) -> Result<(Spool, Vec<Event>), SpoolError> {
        let path = state_dir.join("kernel-records.spool");
        let failed = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        let unstored = unstored_records(&file, &path).map_err(failed)?;
        // What was unstored stays where it is until the storing task marks it: a daemon killed
        // while storing it leaves it for the next one.
        let len = file.metadata().map_err(failed)?.len();
        let (written, stored) = if unstored.is_empty() {
            file.set_len(HEADER).map_err(failed)?;
            write_header(&file, HEADER).map_err(failed)?;
            (HEADER, HEADER)
        } else {
            let written = len - (len - HEADER) % RECORD;
            (written, written - unstored.len() as u64 * RECORD)
        };
        let spool = Spool {
            path,
            state: Mutex::new(State {
                file,
                written,
                stored,
                failing: false,
            }),
        };
        Ok((spool, unstored))
    }

    /// Keeps a copy of a record the reader is about to take out of the ring buffer.
    pub fn keep(&self, record: &[u8]) {
        let record = &record[..RECORD as usize];
        let mut state = self.state.lock();
        let at = state.written;
        let written = state.file.write_all_at(record, at);
        match written {
            Ok(()) => {
                state.written += RECORD;
                state.failing = false;
            }
            Err(e) => {
                // The record is still stored; only a daemon killed before that would lose it.
                if !std::mem::replace(&mut state.failing, true) {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot keep kernel records until they are stored; a daemon killed now may lose the ones it read");
                }
            }
        }
    }

    /// Marks the oldest `count` records kept as stored.
    pub fn stored(&self, count: usize) {
        let mut state = self.state.lock();
        state.stored = (state.stored + count as u64 * RECORD).min(state.written);
        let result = if state.stored == state.written {
            // All stored: start again at the header, so the file stays small.
            state.written = HEADER;
            state.stored = HEADER;
            state
                .file
                .set_len(HEADER)
                .and_then(|()| write_header(&state.file, HEADER))
        } else {
            write_header(&state.file, state.stored)
        };
        if let Err(e) = result {
            tracing::error!(path = %self.path.display(), error = %e, "cannot mark kernel records stored; a restarted daemon may store them again");
        }
    }
}

fn write_header(file: &File, stored: u64) -> io::Result<()> {
    let mut header = [0u8; HEADER as usize];
    header[..8].copy_from_slice(&MAGIC);
    header[8..].copy_from_slice(&stored.to_le_bytes());
    file.write_all_at(&header, 0)
}

/// The records after the stored mark. A file of another layout (or no header) is set aside,
/// with an error in the log, rather than read wrongly.
fn unstored_records(file: &File, path: &Path) -> io::Result<Vec<Event>> {
    let len = file.metadata()?.len();
    if len <= HEADER {
        return Ok(Vec::new());
    }
    let mut header = [0u8; HEADER as usize];
    file.read_exact_at(&mut header, 0)?;
    let stored = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
    if header[..8] != MAGIC || stored < HEADER || !(stored - HEADER).is_multiple_of(RECORD) {
        let aside = path.with_extension(format!("spool.unreadable-{}", std::process::id()));
        std::fs::copy(path, &aside)?;
        tracing::error!(path = %aside.display(), "kernel records of another map layout (or a damaged file) were left unstored by a previous daemon; kept aside, not recorded");
        return Ok(Vec::new());
    }
    // A record cut short (the machine, not the daemon, went down while writing it) is dropped.
    let end = len - (len - HEADER) % RECORD;
    if stored >= end {
        return Ok(Vec::new());
    }
    let mut bytes = vec![0u8; (end - stored) as usize];
    file.read_exact_at(&mut bytes, stored)?;
    Ok(bytes
        .chunks_exact(RECORD as usize)
        .filter_map(event_from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose only non-zero field is its cookie.
    fn record(cookie: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; RECORD as usize];
        let at = std::mem::offset_of!(Event, cookie);
        bytes[at..at + 8].copy_from_slice(&cookie.to_ne_bytes());
        bytes
    }

    /// A directory of the test's own, removed when it ends.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("gw-spool-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cookies(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.cookie).collect()
    }

    #[test]
    fn what_was_kept_but_not_marked_stored_is_handed_to_the_next_daemon_in_order() {
        let dir = Dir::new("handed");
        let (spool, unstored) = Spool::open(dir.path()).expect("open");
        assert!(unstored.is_empty());
        for cookie in 1..=5 {
            spool.keep(&record(cookie));
        }
        spool.stored(2);
        drop(spool); // killed: nothing else happens
        let (spool, unstored) = Spool::open(dir.path()).expect("reopen");
        assert_eq!(cookies(&unstored), [3, 4, 5]);
        // Killed again before storing them: they are still there, with what came after.
        spool.keep(&record(6));
        drop(spool);
        let (spool, unstored) = Spool::open(dir.path()).expect("reopen");
        assert_eq!(cookies(&unstored), [3, 4, 5, 6]);
        spool.stored(4);
        drop(spool);
        let (_, unstored) = Spool::open(dir.path()).expect("reopen");
        assert!(unstored.is_empty());
    }

    #[test]
    fn the_file_is_emptied_once_everything_in_it_is_stored() {
        let dir = Dir::new("emptied");
        let (spool, _) = Spool::open(dir.path()).expect("open");
        for cookie in 1..=100 {
            spool.keep(&record(cookie));
        }
        spool.stored(60);
        let path = dir.path().join("kernel-records.spool");
        assert_eq!(
            std::fs::metadata(&path).expect("file").len(),
            HEADER + 100 * RECORD
        );
        spool.stored(40);
        assert_eq!(std::fs::metadata(&path).expect("file").len(), HEADER);
        spool.keep(&record(101));
        drop(spool);
        let (_, unstored) = Spool::open(dir.path()).expect("reopen");
        assert_eq!(cookies(&unstored), [101]);
    }

    #[test]
    fn a_damaged_or_foreign_spool_is_set_aside_not_misread() {
        let dir = Dir::new("damaged");
        let path = dir.path().join("kernel-records.spool");
        let mut foreign = b"gwkrec\x05\x00".to_vec(); // an older map layout
        foreign.extend_from_slice(&HEADER.to_le_bytes());
        foreign.extend_from_slice(&record(7));
        std::fs::write(&path, &foreign).expect("write");
        let (_, unstored) = Spool::open(dir.path()).expect("open");
        assert!(unstored.is_empty());
        let aside = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("unreadable"))
            .count();
        assert_eq!(aside, 1, "the unreadable spool is kept aside");
        // A record cut short at the end is dropped, the whole ones kept.
        std::fs::remove_file(&path).expect("remove");
        let (spool, _) = Spool::open(dir.path()).expect("open");
        spool.keep(&record(8));
        drop(spool);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(&record(9)[..40]);
        std::fs::write(&path, &bytes).expect("write");
        let (_, unstored) = Spool::open(dir.path()).expect("open");
        assert_eq!(cookies(&unstored), [8]);
    }
}
