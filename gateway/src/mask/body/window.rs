//! Detector scanning of text that streams, in bounded memory, with the same result as scanning
//! the whole text at once.
//!
//! The window holds the text as a reader of it sees it (`decoded`: JSON escapes and form
//! percent-escapes resolved) next to the bytes it came from (`raw`), and emits it in pieces. A
//! piece ends only where no detector match can cross: after a byte that no bounded detector
//! includes in a match nor reads as part of a word (`,`, `;`, `/`, `=`, `"`, newline, … see
//! [`is_hard`]), after a space that follows a lower-case letter or eight more spaces (spaces are
//! in matches only between digits, upper-case IBAN groups or at most eight phone separators), or
//! between two non-ASCII characters. Every detector but `private_key` decides a match from the bytes between two such
//! places (and the places themselves), so scanning the pieces finds exactly the matches a scan of
//! the whole text finds. A PEM block can contain those bytes: from a `-----BEGIN ` until its block
//! is complete, no piece ends inside it.
//!
//! Text with no such place for longer than the window (a word, token or PEM block of more than
//! `max` bytes) is refused ([`BodyError::Unscannable`]) rather than scanned in a way that could
//! miss a match. Whether text is refused depends on the text only, not on its chunking: every gap
//! between two places is checked as the places are found.

use std::sync::Arc;

use memchr::memmem;

use super::BodyError;
use crate::mask::{Detector, spans};

const BEGIN: &[u8] = b"-----BEGIN ";
const END: &[u8] = b"-----END ";
const DASHES: &[u8] = b"-----";
/// The private-key detector accepts labels up to this long.
const MAX_LABEL: usize = 40;

/// How replacements are written into the raw text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    /// Text and JSON string contents: the replacement as it is (no quotes or backslashes in it).
    Plain,
    /// `application/x-www-form-urlencoded`: percent-encoded.
    Form,
}

impl Encoding {
    fn write(self, d: Detector, out: &mut Vec<u8>) {
        match self {
            Encoding::Plain => out.extend_from_slice(d.replacement().as_bytes()),
            Encoding::Form => {
                for &b in d.replacement().as_bytes() {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        out.push(b);
                    } else {
                        out.extend_from_slice(format!("%{b:02X}").as_bytes());
                    }
                }
            }
        }
    }
}

/// A stretch of decoded text whose raw form differs (an escape): positions in the window. An
/// escape is at most 12 raw bytes (a surrogate pair) for at most 4 decoded ones.
#[derive(Debug, Clone, Copy)]
struct Unit {
    dec: u32,
    raw: u32,
    dec_len: u8,
    raw_len: u8,
}

/// Where the scan for PEM blocks stands (positions in `decoded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// Looking for `-----BEGIN ` from `from`.
    Seek { from: usize },
    /// A `-----BEGIN ` at `at`; looking for the `-----` that ends its label.
    Header { at: usize, from: usize },
    /// A private key's block from `at`; looking for `-----END `.
    Body { at: usize, from: usize },
    /// Looking for the `-----` that ends the `-----END ` line.
    Tail { at: usize, from: usize },
}

impl Block {
    fn open_at(self) -> Option<usize> {
        match self {
            Block::Seek { .. } => None,
            Block::Header { at, .. } | Block::Body { at, .. } | Block::Tail { at, .. } => Some(at),
        }
    }

    fn shift(self, by: usize) -> Block {
        let s = |v: usize| v.saturating_sub(by);
        match self {
            Block::Seek { from } => Block::Seek { from: s(from) },
            Block::Header { at, from } => Block::Header {
                at: s(at),
                from: s(from),
            },
            Block::Body { at, from } => Block::Body {
                at: s(at),
                from: s(from),
            },
            Block::Tail { at, from } => Block::Tail {
                at: s(at),
                from: s(from),
            },
        }
    }
}

/// A byte after which a piece may end: ASCII that no bounded detector puts in a match (letters,
/// digits and `._%+-@ ()` are what they use) and that none reads as part of a word.
pub(super) fn is_hard(b: u8) -> bool {
    b.is_ascii() && !(b.is_ascii_alphanumeric() || b"._%+-@ ()".contains(&b))
}

fn is_continuation(b: u8) -> bool {
    (0x80..0xC0).contains(&b)
}

/// Bytes without which a detector cannot match: every match of it contains one.
fn anchors(detectors: &[Detector]) -> [bool; 256] {
    let mut t = [false; 256];
    for d in detectors {
        let bytes: &[u8] = match d {
            Detector::Email => b"@",
            Detector::CreditCard | Detector::UsSsn | Detector::Phone | Detector::Iban => {
                b"0123456789"
            }
            // AKIA, ASIA, AGPA, AIDA.
            Detector::AwsAccessKey => b"A",
            // Every token starts with `eyJ`.
            Detector::Jwt => b"J",
            Detector::PrivateKey => b"-",
        };
        for &b in bytes {
            t[usize::from(b)] = true;
        }
    }
    t
}

pub(super) struct Window {
    detectors: Arc<[Detector]>,
    anchors: [bool; 256],
    encoding: Encoding,
    /// Whether the text may be emitted in pieces (JSON keys are held whole).
    pieces: bool,
    max: usize,
    raw: Vec<u8>,
    decoded: Vec<u8>,
    units: Vec<Unit>,
    /// Decoded bytes examined for places to end a piece.
    scanned: usize,
    /// The last such place found, 0 if none.
    cut: usize,
    /// Spaces just before `scanned`.
    spaces: usize,
    block: Block,
}

impl Window {
    pub(super) fn new(
        detectors: Arc<[Detector]>,
        encoding: Encoding,
        max: usize,
        pieces: bool,
    ) -> Window {
        Window {
            anchors: anchors(&detectors),
            detectors,
            encoding,
            pieces,
            max,
            raw: Vec::new(),
            decoded: Vec::new(),
            units: Vec::new(),
            scanned: 0,
            cut: 0,
            spaces: 0,
            block: Block::Seek { from: 0 },
        }
    }

    /// Decoded bytes held.
    pub(super) fn len(&self) -> usize {
        self.decoded.len()
    }

    /// The text held, as its reader sees it.
    pub(super) fn decoded(&self) -> &[u8] {
        &self.decoded
    }

    /// Bytes this window holds (for the memory bound).
    pub(super) fn buffered(&self) -> usize {
        self.raw.capacity()
            + self.decoded.capacity()
            + self.units.capacity() * std::mem::size_of::<Unit>()
    }

    /// Text whose raw form is what its reader sees.
    pub(super) fn extend(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        self.decoded.extend_from_slice(bytes);
    }

    /// One escape: `decoded` is what `raw` means.
    pub(super) fn push_unit(&mut self, decoded: &[u8], raw: &[u8]) {
        self.units.push(Unit {
            dec: self.decoded.len() as u32,
            raw: self.raw.len() as u32,
            dec_len: decoded.len() as u8,
            raw_len: raw.len() as u8,
        });
        self.raw.extend_from_slice(raw);
        self.decoded.extend_from_slice(decoded);
    }

    /// Emits what can be emitted now (up to the last place a piece may end). Errors when more
    /// than `max` bytes go by without a place to end a piece.
    pub(super) fn drain(&mut self, out: &mut Vec<u8>, masked: &mut u64) -> Result<(), BodyError> {
        debug_assert!(self.pieces);
        let within = self.scan();
        // Inside a header not yet known to be a key's, places are looked for once it is known:
        // only the text before it counts yet (at most a label's length more is held).
        let known = match self.block {
            Block::Header { at, .. } => at,
            _ => self.decoded.len(),
        };
        if !within || known - self.cut > self.max {
            return Err(BodyError::Unscannable { max: self.max });
        }
        if self.cut > 0 {
            self.emit(self.cut, out, masked);
        }
        Ok(())
    }

    /// Emits everything held: the text ended.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>, masked: &mut u64) {
        let len = self.decoded.len();
        self.emit(len, out, masked);
        self.scanned = 0;
        self.cut = 0;
        self.spaces = 0;
        self.block = Block::Seek { from: 0 };
        // A long text leaves no large buffers behind for the next one.
        if self.raw.capacity() > 4 * self.max {
            self.raw = Vec::new();
            self.decoded = Vec::new();
            self.units = Vec::new();
        }
    }

    /// Forgets the text held (the caller refuses the body).
    pub(super) fn clear(&mut self) {
        self.raw.clear();
        self.decoded.clear();
        self.units.clear();
        self.scanned = 0;
        self.cut = 0;
        self.spaces = 0;
        self.block = Block::Seek { from: 0 };
    }

    /// Finds new places where a piece may end, and follows PEM blocks; false when two places
    /// are more than `max` bytes apart.
    fn scan(&mut self) -> bool {
        let mut within = true;
        loop {
            let closed = self.follow_blocks();
            let limit = match closed {
                Some((at, _)) => at,
                None => self.block.open_at().unwrap_or(self.decoded.len()),
            };
            within &= self.find_places(limit);
            match closed {
                // No piece ends inside the block: places are looked for after it.
                Some((_, end)) => {
                    self.scanned = self.scanned.max(end);
                    self.spaces = 0;
                }
                None => return within,
            }
        }
    }

    /// Looks for places up to `limit`.
    fn find_places(&mut self, limit: usize) -> bool {
        let len = self.decoded.len();
        let d = &self.decoded;
        let mut within = true;
        for p in self.scanned + 1..=limit {
            let before = d[p - 1];
            let place = is_hard(before)
                || (before == b' '
                    && ((p >= 2 && d[p - 2].is_ascii_lowercase()) || self.spaces >= 8))
                || (before >= 0x80 && p < len && !is_continuation(d[p]));
            self.spaces = if before == b' ' { self.spaces + 1 } else { 0 };
            if place {
                within &= p - self.cut <= self.max;
                self.cut = p;
            }
        }
        // The place after a last non-ASCII byte is decided when the next byte is known.
        self.scanned = if limit == len && len > 0 && d[len - 1] >= 0x80 {
            len - 1
        } else {
            limit.max(self.scanned)
        };
        within
    }

    /// Advances the PEM block scan over the text held, the way the private-key detector reads it,
    /// up to the end of the next key block: its span when one closes.
    fn follow_blocks(&mut self) -> Option<(usize, usize)> {
        let d = &self.decoded;
        let len = d.len();
        let find = |needle: &[u8], from: usize| {
            memmem::find(&d[from.min(len)..], needle).map(|i| from + i)
        };
        loop {
            self.block = match self.block {
                Block::Seek { from } => match find(BEGIN, from) {
                    Some(at) => Block::Header {
                        at,
                        from: at + BEGIN.len(),
                    },
                    None => {
                        self.block = Block::Seek {
                            from: from.max(len.saturating_sub(BEGIN.len() - 1)),
                        };
                        return None;
                    }
                },
                Block::Header { at, from } => match find(DASHES, from) {
                    Some(h) => {
                        let label = &d[at + BEGIN.len()..h];
                        if label.len() <= MAX_LABEL && label.ends_with(b"PRIVATE KEY") {
                            Block::Body {
                                at,
                                from: h + DASHES.len(),
                            }
                        } else {
                            Block::Seek {
                                from: at + BEGIN.len(),
                            }
                        }
                    }
                    None => {
                        let earliest = from.max(len.saturating_sub(DASHES.len() - 1));
                        if earliest - (at + BEGIN.len()) > MAX_LABEL {
                            // Whatever ends this label, it is too long for a key's.
                            Block::Seek {
                                from: at + BEGIN.len(),
                            }
                        } else {
                            self.block = Block::Header { at, from: earliest };
                            return None;
                        }
                    }
                },
                Block::Body { at, from } => match find(END, from) {
                    Some(e) => Block::Tail {
                        at,
                        from: e + END.len(),
                    },
                    None => {
                        self.block = Block::Body {
                            at,
                            from: from.max(len.saturating_sub(END.len() - 1)),
                        };
                        return None;
                    }
                },
                Block::Tail { at, from } => match find(DASHES, from) {
                    Some(t) => {
                        let end = t + DASHES.len();
                        self.block = Block::Seek { from: end };
                        return Some((at, end));
                    }
                    None => {
                        self.block = Block::Tail {
                            at,
                            from: from.max(len.saturating_sub(DASHES.len() - 1)),
                        };
                        return None;
                    }
                },
            };
        }
    }

    /// Raw position of decoded position `d`; inside an escape, its start (`up` false) or end.
    fn raw_at(&self, d: usize, up: bool) -> usize {
        let d32 = d as u32;
        let i = self
            .units
            .partition_point(|u| u.dec + u32::from(u.dec_len) <= d32);
        if let Some(u) = self.units.get(i)
            && u.dec < d32
        {
            return (u.raw + if up { u32::from(u.raw_len) } else { 0 }) as usize;
        }
        match i.checked_sub(1).map(|j| self.units[j]) {
            None => d,
            Some(u) => {
                (u.raw + u32::from(u.raw_len) + (d32 - u.dec - u32::from(u.dec_len))) as usize
            }
        }
    }

    /// Scans decoded `[..p]`, writes its raw form with matches replaced, and drops it.
    fn emit(&mut self, p: usize, out: &mut Vec<u8>, masked: &mut u64) {
        let mut raw_at = 0;
        let piece = &self.decoded[..p];
        if piece.iter().any(|&b| self.anchors[usize::from(b)]) {
            for (r, d) in spans(piece, &self.detectors) {
                let start = self.raw_at(r.start, false);
                out.extend_from_slice(&self.raw[raw_at..start]);
                self.encoding.write(d, out);
                raw_at = self.raw_at(r.end, true);
                *masked += 1;
            }
        }
        let raw_p = self.raw_at(p, true);
        out.extend_from_slice(&self.raw[raw_at..raw_p]);
        self.raw.drain(..raw_p);
        self.decoded.drain(..p);
        let gone = self.units.partition_point(|u| (u.dec as usize) < p);
        self.units.drain(..gone);
        for u in &mut self.units {
            u.dec -= p as u32;
            u.raw -= raw_p as u32;
        }
        self.scanned = self.scanned.saturating_sub(p);
        self.cut = self.cut.saturating_sub(p);
        self.block = self.block.shift(p);
    }
}
