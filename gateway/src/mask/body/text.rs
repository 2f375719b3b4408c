//! Detector-only masking of text bodies (`text/*`, XML, JavaScript, …) and of
//! `application/x-www-form-urlencoded` bodies, streaming through the detector window.

use std::sync::Arc;

use super::{
    BodyError,
    window::{Encoding, Window},
};
use crate::mask::Detector;

/// Text as it is: the detectors read the bytes.
pub(super) struct TextMasker {
    window: Window,
    max: usize,
    masked: u64,
}

impl TextMasker {
    pub(super) fn new(detectors: Arc<[Detector]>, max: usize) -> TextMasker {
        TextMasker {
            window: Window::new(detectors, Encoding::Plain, max, true),
            max,
            masked: 0,
        }
    }

    pub(super) fn masked(&self) -> u64 {
        self.masked
    }

    pub(super) fn buffered(&self) -> usize {
        self.window.buffered()
    }

    pub(super) fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        // UTF-16 and UTF-32 put NUL bytes around ASCII: the detectors would read past every match.
        if memchr::memchr(0, input).is_some() {
            self.window.clear();
            return Err(BodyError::NotText);
        }
        for piece in input.chunks(self.max.max(1)) {
            self.window.extend(piece);
            self.window.drain(out, &mut self.masked)?;
        }
        Ok(())
    }

    pub(super) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        self.window.finish(out, &mut self.masked);
        Ok(())
    }
}

/// A form body: the detectors read names and values percent-decoded (`+` as a space), as the
/// receiving application does; matches are replaced in the raw form, by percent-encoded text.
pub(super) struct FormMasker {
    window: Window,
    max: usize,
    masked: u64,
    /// `%` seen (1), and one hex digit after it (2).
    percent: u8,
    hex1: u8,
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

impl FormMasker {
    pub(super) fn new(detectors: Arc<[Detector]>, max: usize) -> FormMasker {
        FormMasker {
            window: Window::new(detectors, Encoding::Form, max, true),
            max,
            masked: 0,
            percent: 0,
            hex1: 0,
        }
    }

    pub(super) fn masked(&self) -> u64 {
        self.masked
    }

    pub(super) fn buffered(&self) -> usize {
        self.window.buffered()
    }

    pub(super) fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.percent {
                0 => {
                    let run = input[i..]
                        .iter()
                        .position(|&c| c == b'%' || c == b'+')
                        .unwrap_or(input.len() - i);
                    if run > 0 {
                        // Bounded steps: the window drains (or refuses) between them.
                        let run = run.min(4096);
                        self.window.extend(&input[i..i + run]);
                        i += run;
                        self.window.drain(out, &mut self.masked)?;
                        continue;
                    }
                    if b == b'+' {
                        self.window.push_unit(b" ", b"+");
                    } else {
                        self.percent = 1;
                    }
                    i += 1;
                    if self.window.len() > self.max {
                        self.window.drain(out, &mut self.masked)?;
                    }
                }
                1 => match hex_value(b) {
                    Some(_) => {
                        self.percent = 2;
                        self.hex1 = b;
                        i += 1;
                    }
                    // Not an escape: the `%` stays literal, and this byte is read afresh.
                    None => {
                        self.window.extend(b"%");
                        self.percent = 0;
                    }
                },
                _ => {
                    self.percent = 0;
                    match (hex_value(self.hex1), hex_value(b)) {
                        (Some(h), Some(l)) => {
                            self.window.push_unit(&[h << 4 | l], &[b'%', self.hex1, b]);
                            i += 1;
                            if self.window.len() > self.max {
                                self.window.drain(out, &mut self.masked)?;
                            }
                        }
                        _ => self.window.extend(&[b'%', self.hex1]),
                    }
                }
            }
        }
        self.window.drain(out, &mut self.masked)
    }

    pub(super) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        match self.percent {
            1 => self.window.extend(b"%"),
            2 => self.window.extend(&[b'%', self.hex1]),
            _ => {}
        }
        self.percent = 0;
        self.window.finish(out, &mut self.masked);
        Ok(())
    }
}
