//! `text/event-stream`: masked event by event.
//!
//! An event (its lines up to the blank line that ends it) is held until it is complete, at most
//! `max_event` bytes: a client acts on an event only once it is complete, so holding it delays
//! nothing a client sees. The `data:` lines of an event form its data (joined by newlines, as a
//! client joins them); data that is JSON goes through the JSON masker, other data through the
//! detectors. Data that is not JSON but has `{` or `"` in it cannot be told apart from a broken
//! JSON document whose fields are masked: it is replaced whole. Other lines (`event:`, `id:`,
//! comments) go through the detectors. An event that needs no change is forwarded byte for byte;
//! one that changes gets its data written back as `data: ` lines.

use std::sync::Arc;

use super::{BodyError, fields::FieldMatcher, json::JsonMasker};
use crate::mask::{Detector, redact};

const BOM: &[u8] = b"\xEF\xBB\xBF";

pub(super) struct SseMasker {
    json: JsonMasker,
    detectors: Arc<[Detector]>,
    max_event: usize,
    event: Vec<u8>,
    /// Bytes of the current line seen (only zero or not matters).
    line_len: usize,
    /// The last byte was a CR ending a line: an LF now completes that line ending.
    after_cr: bool,
    /// An event ended on a CR: an LF now belongs to it and is passed on.
    lf_passes: bool,
    first: bool,
    masked: u64,
}

/// One line of an event: its text and its line ending.
struct Line<'a> {
    text: &'a [u8],
    ending: &'a [u8],
}

fn lines(event: &[u8]) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < event.len() {
        let end = event[i..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map_or(event.len(), |p| i + p);
        let ending_len = match event.get(end) {
            Some(b'\r') if event.get(end + 1) == Some(&b'\n') => 2,
            Some(_) => 1,
            None => 0,
        };
        out.push(Line {
            text: &event[i..end],
            ending: &event[end..end + ending_len],
        });
        i = end + ending_len;
    }
    out
}

/// The value of a `data` line, if it is one.
fn data_value(line: &[u8]) -> Option<&[u8]> {
    if line == b"data" {
        return Some(b"");
    }
    let v = line.strip_prefix(b"data:")?;
    Some(v.strip_prefix(b" ").unwrap_or(v))
}

impl SseMasker {
    pub(super) fn new(
        fields: Arc<FieldMatcher>,
        detectors: Arc<[Detector]>,
        max_token: usize,
        max_depth: usize,
        max_event: usize,
    ) -> SseMasker {
        SseMasker {
            json: JsonMasker::new(fields, detectors.clone(), max_token, max_depth),
            detectors,
            max_event,
            event: Vec::new(),
            line_len: 0,
            after_cr: false,
            lf_passes: false,
            first: true,
            masked: 0,
        }
    }

    pub(super) fn masked(&self) -> u64 {
        self.masked
    }

    pub(super) fn buffered(&self) -> usize {
        self.event.capacity() + self.json.buffered()
    }

    pub(super) fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        for &b in input {
            if std::mem::take(&mut self.lf_passes) && b == b'\n' {
                out.push(b);
                continue;
            }
            if self.event.len() >= self.max_event {
                self.event.clear();
                return Err(BodyError::EventTooLarge {
                    max: self.max_event,
                });
            }
            self.event.push(b);
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    if self.line_len == 0 {
                        self.lf_passes = self.after_cr;
                        self.after_cr = false;
                        self.dispatch(out)?;
                    }
                    self.line_len = 0;
                }
                // A byte order mark opening the stream is not part of its first line.
                _ if self.first
                    && self.event.len() <= BOM.len()
                    && BOM.starts_with(&self.event) => {}
                _ => self.line_len += 1,
            }
        }
        Ok(())
    }

    /// An incomplete last event is masked like a complete one (a client drops it, but the bytes
    /// still reach it).
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        if !self.event.is_empty() {
            self.dispatch(out)?;
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        let event = std::mem::take(&mut self.event);
        let result = self.mask_event(&event, out);
        // The allocation is kept for the next event unless an unusually large one grew it.
        self.event = event;
        self.event.clear();
        if self.event.capacity() > 64 * 1024 {
            self.event = Vec::new();
        }
        result
    }

    fn mask_event(&mut self, event: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        let mut body = event;
        if std::mem::take(&mut self.first) && body.starts_with(BOM) {
            out.extend_from_slice(BOM);
            body = &body[BOM.len()..];
        }
        let lines = lines(body);
        let mut changed = 0u64;
        // The data, and what it becomes if it changes.
        let values: Vec<&[u8]> = lines.iter().filter_map(|l| data_value(l.text)).collect();
        let new_data = if values.is_empty() {
            None
        } else {
            let data = values.join(&b'\n');
            self.mask_data(&data, &mut changed)?
        };
        let other: Vec<Option<Vec<u8>>> = lines
            .iter()
            .map(|l| {
                if data_value(l.text).is_some() || l.text.is_empty() {
                    return None;
                }
                self.redact(l.text, &mut changed)
            })
            .collect();
        if changed == 0 {
            out.extend_from_slice(body);
            return Ok(());
        }
        self.masked += changed;
        let mut data_written = false;
        for (line, masked) in lines.iter().zip(other) {
            match (data_value(line.text), &new_data) {
                (Some(_), Some(data)) => {
                    // The masked data replaces the first data line; the others are in it.
                    if !std::mem::replace(&mut data_written, true) {
                        for part in data.split(|&b| b == b'\n') {
                            out.extend_from_slice(b"data: ");
                            out.extend_from_slice(part);
                            out.push(b'\n');
                        }
                    }
                }
                _ => {
                    out.extend_from_slice(masked.as_deref().unwrap_or(line.text));
                    out.extend_from_slice(line.ending);
                }
            }
        }
        Ok(())
    }

    /// The data of an event masked, or `None` when nothing in it changes.
    fn mask_data(&mut self, data: &[u8], changed: &mut u64) -> Result<Option<Vec<u8>>, BodyError> {
        self.json.reset();
        let mut out = Vec::with_capacity(data.len());
        let parsed = self
            .json
            .push(data, &mut out)
            .and_then(|()| self.json.finish(&mut out));
        match parsed {
            Ok(()) if self.json.masked() == 0 => Ok(None),
            Ok(()) => {
                *changed += self.json.masked();
                Ok(Some(out))
            }
            // Too deep, too long: the same document would be refused as a body.
            Err(e) if e.is_limit() => Err(e),
            Err(_) if data.contains(&b'{') || data.contains(&b'"') => {
                *changed += 1;
                Ok(Some(b"[masked]".to_vec()))
            }
            Err(_) => Ok(self.redact(data, changed)),
        }
    }

    fn redact(&self, text: &[u8], changed: &mut u64) -> Option<Vec<u8>> {
        let (out, n) = redact(text, &self.detectors)?;
        *changed += n as u64;
        Some(out)
    }
}
