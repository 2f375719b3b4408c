//! Streaming JSON masking: bytes in, masked bytes out, in any chunks.
//!
//! A byte-level lexer (RFC 8259, strict) with its state carried across chunks: a chunk may end
//! anywhere, inside a key, an escape, a UTF-8 sequence or a number. Event parsers (actson, struson)
//! would hold every string whole and do not say where in the input a token was, which is what
//! byte-for-byte passthrough of everything unmasked needs; so the lexer is written here, small and
//! fuzzed.
//!
//! Memory: the container stack (at most `max_depth` frames), one key (at most `max_token`
//! bytes, held whole: it decides what happens to its value), one number (at most `max_token`) and
//! the detector window of the string being read (see `window`). A string under a masked field is
//! read and dropped, never held. Output per push is proportional to the push.

use std::sync::Arc;

use super::{
    BodyError,
    fields::{FieldMatcher, Next, PathState},
    window::{Encoding, Window},
};
use crate::mask::{Detector, spans};

/// What a masked value becomes.
pub(super) const MASKED: &[u8] = b"\"[masked]\"";
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// String bytes that end a plain run: quote, backslash, control characters and non-ASCII.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b < 0x20 || b >= 0x80 || b == b'"' as usize || b == b'\\' as usize;
        b += 1;
    }
    t
};

struct Frame {
    object: bool,
    /// Elements of an array seen so far.
    index: u64,
    /// Paths that go on inside this container.
    paths: Vec<PathState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Inside a masked value: validated, not written.
    Skip,
    /// A key inside a masked value.
    SkipKey,
    /// Written as it comes (no detectors).
    Pass,
    /// Through the detector window.
    Detect,
    /// An object key: held whole.
    Key,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Hex {
        n: u8,
        v: u16,
    },
    /// After a high surrogate: `\` of the low one.
    LowBackslash {
        high: u16,
    },
    LowU {
        high: u16,
    },
    LowHex {
        high: u16,
        n: u8,
        v: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before anything: a byte order mark may come (this many bytes of it seen).
    Bom(u8),
    /// Between top-level values (a body may hold several: NDJSON).
    Top,
    /// After `:` or `,` in an array: a value.
    Value,
    /// After `[`: a value or `]`.
    ArrayFirst,
    /// After `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    Colon,
    /// After a value in a container: `,` or its end.
    After,
    Str(Mode),
    Num(Num),
    Lit {
        word: &'static [u8],
        at: u8,
    },
}

pub(super) struct JsonMasker {
    fields: Arc<FieldMatcher>,
    detectors: Arc<[Detector]>,
    detect: bool,
    max_token: usize,
    max_depth: usize,
    state: State,
    stack: Vec<Frame>,
    /// What the value after the current key gets.
    pending: Option<Next>,
    /// Inside a masked value that started at this stack depth.
    skip: Option<usize>,
    esc: Esc,
    esc_raw: [u8; 12],
    esc_len: u8,
    /// Continuation bytes still expected in a UTF-8 sequence, and the range of the next one.
    utf8_need: u8,
    utf8_lo: u8,
    utf8_hi: u8,
    /// The string value being read through the detectors.
    text: Window,
    /// The key being read.
    key: Window,
    /// The number being read, when detectors run over numbers.
    number: Vec<u8>,
    number_mode: Mode,
    /// Bytes consumed before the current push.
    offset: u64,
    masked: u64,
    error: Option<BodyError>,
}

fn invalid(at: u64, reason: &'static str) -> BodyError {
    BodyError::Json { at, reason }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl JsonMasker {
    pub(super) fn new(
        fields: Arc<FieldMatcher>,
        detectors: Arc<[Detector]>,
        max_token: usize,
        max_depth: usize,
    ) -> JsonMasker {
        JsonMasker {
            fields,
            detectors: detectors.clone(),
            detect: !detectors.is_empty(),
            max_token,
            max_depth,
            state: State::Bom(0),
            stack: Vec::new(),
            pending: None,
            skip: None,
            esc: Esc::None,
            esc_raw: [0; 12],
            esc_len: 0,
            utf8_need: 0,
            utf8_lo: 0,
            utf8_hi: 0,
            text: Window::new(detectors.clone(), Encoding::Plain, max_token, true),
            key: Window::new(detectors, Encoding::Plain, max_token, false),
            number: Vec::new(),
            number_mode: Mode::Pass,
            offset: 0,
            masked: 0,
            error: None,
        }
    }

    /// Starts over for a new document (an event-stream event), keeping the allocations.
    pub(super) fn reset(&mut self) {
        self.state = State::Bom(0);
        self.stack.clear();
        self.pending = None;
        self.skip = None;
        self.esc = Esc::None;
        self.esc_len = 0;
        self.utf8_need = 0;
        self.text.clear();
        self.key.clear();
        self.number.clear();
        self.offset = 0;
        self.masked = 0;
        self.error = None;
    }

    pub(super) fn masked(&self) -> u64 {
        self.masked
    }

    pub(super) fn buffered(&self) -> usize {
        self.text.buffered()
            + self.key.buffered()
            + self.number.capacity()
            + self.stack.capacity() * std::mem::size_of::<Frame>()
            + self
                .stack
                .iter()
                .map(|f| f.paths.capacity() * std::mem::size_of::<PathState>())
                .sum::<usize>()
    }

    pub(super) fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let result = self.run(input, out);
        self.offset += input.len() as u64;
        result.map_err(|e| self.fail(e))
    }

    pub(super) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let at = self.offset;
        let result = match self.state {
            State::Bom(0) | State::Top => Ok(()),
            State::Num(n) if n.complete() && self.stack.is_empty() => {
                self.end_number(out);
                self.value_done();
                Ok(())
            }
            _ => Err(invalid(at, "the body ends inside a value")),
        };
        result.map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: BodyError) -> BodyError {
        self.text.clear();
        self.key.clear();
        self.number.clear();
        self.error = Some(e.clone());
        e
    }

    fn run(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        let mut i = 0;
        while i < input.len() {
            let at = self.offset + i as u64;
            match self.state {
                State::Str(mode) => {
                    i = self.string(mode, input, i, out)?;
                    continue;
                }
                State::Num(n) => {
                    let b = input[i];
                    let next = match (n, b) {
                        (Num::Minus, b'0') => Some(Num::Zero),
                        (Num::Minus, b'1'..=b'9') => Some(Num::Int),
                        (Num::Minus, _) => return Err(invalid(at, "a digit must follow `-`")),
                        (Num::Zero, b'0'..=b'9') => {
                            return Err(invalid(at, "a number has a leading zero"));
                        }
                        (Num::Int, b'0'..=b'9') => Some(Num::Int),
                        (Num::Zero | Num::Int, b'.') => Some(Num::Dot),
                        (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::E),
                        (Num::Dot | Num::Frac, b'0'..=b'9') => Some(Num::Frac),
                        (Num::Dot, _) => return Err(invalid(at, "a digit must follow `.`")),
                        (Num::E, b'+' | b'-') => Some(Num::ESign),
                        (Num::E | Num::ESign | Num::Exp, b'0'..=b'9') => Some(Num::Exp),
                        (Num::E | Num::ESign, _) => {
                            return Err(invalid(at, "an exponent needs digits"));
                        }
                        _ => None,
                    };
                    match next {
                        Some(n) => {
                            self.number_byte(b, out, at)?;
                            self.state = State::Num(n);
                            i += 1;
                        }
                        // The byte after the number is read in the state after it.
                        None => {
                            self.end_number(out);
                            self.value_done();
                        }
                    }
                    continue;
                }
                State::Lit { word, at: n } => {
                    if input[i] != word[n as usize] {
                        return Err(invalid(at, "unknown literal (true, false or null)"));
                    }
                    self.emit_byte(input[i], out);
                    i += 1;
                    if n as usize + 1 == word.len() {
                        self.value_done();
                    } else {
                        self.state = State::Lit { word, at: n + 1 };
                    }
                    continue;
                }
                State::Bom(n) => {
                    let b = input[i];
                    if b == BOM[n as usize] {
                        i += 1;
                        if n as usize + 1 == BOM.len() {
                            out.extend_from_slice(BOM);
                            self.state = State::Top;
                        } else {
                            self.state = State::Bom(n + 1);
                        }
                        continue;
                    }
                    if n > 0 {
                        return Err(invalid(at, "an incomplete byte order mark"));
                    }
                    self.state = State::Top;
                    continue;
                }
                _ => {}
            }
            // Structural positions: whitespace runs are copied in bulk.
            let b = input[i];
            if is_ws(b) {
                let end = input[i..]
                    .iter()
                    .position(|&c| !is_ws(c))
                    .map_or(input.len(), |p| i + p);
                if self.skip.is_none() {
                    out.extend_from_slice(&input[i..end]);
                }
                i = end;
                continue;
            }
            self.structural(b, at, out)?;
            i += 1;
        }
        // A long string value is emitted in pieces as it streams.
        if self.state == State::Str(Mode::Detect) {
            self.text.drain(out, &mut self.masked)?;
        }
        Ok(())
    }

    fn structural(&mut self, b: u8, at: u64, out: &mut Vec<u8>) -> Result<(), BodyError> {
        match (self.state, b) {
            (State::Top | State::Value | State::ArrayFirst, _)
                if !(self.state == State::ArrayFirst && b == b']') =>
            {
                self.value(b, at, out)
            }
            (State::ObjectFirst | State::Key, b'"') => {
                let mode = if self.skip.is_some() {
                    Mode::SkipKey
                } else {
                    Mode::Key
                };
                self.emit_byte(b, out);
                self.state = State::Str(mode);
                Ok(())
            }
            (State::ObjectFirst, b'}') | (State::ArrayFirst, b']') => self.close(b, out),
            (State::After, b'}' | b']') => {
                let object = self.stack.last().is_some_and(|f| f.object);
                if object != (b == b'}') {
                    return Err(invalid(at, "a container closed with the other bracket"));
                }
                self.close(b, out)
            }
            (State::After, b',') => {
                self.emit_byte(b, out);
                let object = self.stack.last().is_some_and(|f| f.object);
                self.state = if object { State::Key } else { State::Value };
                Ok(())
            }
            (State::Colon, b':') => {
                self.emit_byte(b, out);
                self.state = State::Value;
                Ok(())
            }
            (State::Key, _) => Err(invalid(at, "expected a key (after `,` in an object)")),
            (State::ObjectFirst, _) => Err(invalid(at, "expected a key or `}`")),
            (State::Colon, _) => Err(invalid(at, "expected `:` after a key")),
            (State::After, _) => Err(invalid(at, "expected `,` or the end of the container")),
            _ => Err(invalid(at, "unexpected byte")),
        }
    }

    /// The first byte of a value.
    fn value(&mut self, b: u8, at: u64, out: &mut Vec<u8>) -> Result<(), BodyError> {
        let starts = matches!(
            b,
            b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
        );
        if !starts {
            return Err(invalid(at, "expected a value"));
        }
        let paths = match self.decide() {
            Next::Mask => {
                out.extend_from_slice(MASKED);
                self.masked += 1;
                self.skip = Some(self.stack.len());
                Vec::new()
            }
            Next::Keep(paths) => paths,
        };
        let skipping = self.skip.is_some();
        match b {
            b'{' | b'[' => {
                if self.stack.len() >= self.max_depth {
                    return Err(BodyError::TooDeep {
                        at,
                        max: self.max_depth,
                    });
                }
                self.emit_byte(b, out);
                self.stack.push(Frame {
                    object: b == b'{',
                    index: 0,
                    paths,
                });
                self.state = if b == b'{' {
                    State::ObjectFirst
                } else {
                    State::ArrayFirst
                };
            }
            b'"' => {
                self.emit_byte(b, out);
                self.state = State::Str(if skipping {
                    Mode::Skip
                } else if self.detect {
                    Mode::Detect
                } else {
                    Mode::Pass
                });
            }
            b't' | b'f' | b'n' => {
                self.emit_byte(b, out);
                let word: &'static [u8] = match b {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.state = State::Lit { word, at: 1 };
            }
            _ => {
                self.number_mode = if skipping {
                    Mode::Skip
                } else if self.detect {
                    Mode::Detect
                } else {
                    Mode::Pass
                };
                self.number_byte(b, out, at)?;
                self.state = State::Num(if b == b'-' {
                    Num::Minus
                } else if b == b'0' {
                    Num::Zero
                } else {
                    Num::Int
                });
            }
        }
        Ok(())
    }

    /// What the value starting now gets: by its key, its index or (top level) the root.
    fn decide(&mut self) -> Next {
        if self.skip.is_some() {
            self.pending = None;
            return Next::Keep(Vec::new());
        }
        match self.stack.last_mut() {
            None => Next::Keep(self.fields.root()),
            Some(f) if f.object => self.pending.take().unwrap_or(Next::Keep(Vec::new())),
            Some(f) => {
                let next = self.fields.element(&f.paths, f.index);
                f.index += 1;
                next
            }
        }
    }

    fn close(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), BodyError> {
        self.emit_byte(b, out);
        self.stack.pop();
        self.value_done();
        Ok(())
    }

    fn value_done(&mut self) {
        if self.skip == Some(self.stack.len()) {
            self.skip = None;
        }
        self.state = if self.stack.is_empty() {
            State::Top
        } else {
            State::After
        };
    }

    fn emit_byte(&self, b: u8, out: &mut Vec<u8>) {
        if self.skip.is_none() {
            out.push(b);
        }
    }

    fn number_byte(&mut self, b: u8, out: &mut Vec<u8>, at: u64) -> Result<(), BodyError> {
        match self.number_mode {
            Mode::Skip | Mode::SkipKey | Mode::Key => {}
            Mode::Pass => out.push(b),
            Mode::Detect => {
                if self.number.len() >= self.max_token {
                    return Err(BodyError::TokenTooLong {
                        at,
                        max: self.max_token,
                    });
                }
                self.number.push(b);
            }
        }
        Ok(())
    }

    /// A number read through the detectors is replaced whole (by a string) when they find
    /// something in it, as written or as the integer it denotes (`4.111111111111111e15`).
    fn end_number(&mut self, out: &mut Vec<u8>) {
        if self.number_mode != Mode::Detect {
            return;
        }
        let detectors = &self.detectors;
        let mut hit = spans(&self.number, detectors).first().map(|(_, d)| *d);
        if hit.is_none()
            && let Some(integer) = canonical_integer(&self.number)
            && integer != self.number
        {
            hit = spans(&integer, detectors).first().map(|(_, d)| *d);
        }
        match hit {
            Some(d) => {
                out.push(b'"');
                out.extend_from_slice(d.replacement().as_bytes());
                out.push(b'"');
                self.masked += 1;
            }
            None => out.extend_from_slice(&self.number),
        }
        self.number.clear();
    }

    /// Reads string bytes from `input[i..]`; returns where it stopped.
    fn string(
        &mut self,
        mode: Mode,
        input: &[u8],
        mut i: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, BodyError> {
        while i < input.len() {
            let at = self.offset + i as u64;
            if self.esc == Esc::None && self.utf8_need == 0 {
                // The run up to the next quote, backslash or byte that needs a closer look.
                let rest = &input[i..];
                let mut end = rest
                    .iter()
                    .position(|&c| SPECIAL[c as usize])
                    .unwrap_or(rest.len());
                if mode == Mode::Detect || mode == Mode::Key {
                    // Bounded growth: at most the window's size per step.
                    end = end.min(self.max_token + 1);
                }
                if end > 0 {
                    self.content(mode, &rest[..end], out, at)?;
                    i += end;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            if self.utf8_need > 0 {
                if !(self.utf8_lo..=self.utf8_hi).contains(&b) {
                    return Err(invalid(at, "invalid UTF-8 in a string"));
                }
                self.utf8_need -= 1;
                self.utf8_lo = 0x80;
                self.utf8_hi = 0xBF;
                self.content(mode, &[b], out, at)?;
                continue;
            }
            match self.esc {
                Esc::None => match b {
                    b'"' => {
                        self.end_string(mode, out);
                        return Ok(i);
                    }
                    b'\\' => {
                        self.esc = Esc::Backslash;
                        self.esc_raw[0] = b;
                        self.esc_len = 1;
                    }
                    0x00..=0x1F => {
                        return Err(invalid(at, "a control character in a string"));
                    }
                    0x80..=0xFF => {
                        let (need, lo, hi) = match b {
                            0xC2..=0xDF => (1, 0x80, 0xBF),
                            0xE0 => (2, 0xA0, 0xBF),
                            0xED => (2, 0x80, 0x9F),
                            0xE1..=0xEF => (2, 0x80, 0xBF),
                            0xF0 => (3, 0x90, 0xBF),
                            0xF1..=0xF3 => (3, 0x80, 0xBF),
                            0xF4 => (3, 0x80, 0x8F),
                            _ => return Err(invalid(at, "invalid UTF-8 in a string")),
                        };
                        self.utf8_need = need;
                        self.utf8_lo = lo;
                        self.utf8_hi = hi;
                        self.content(mode, &[b], out, at)?;
                    }
                    _ => self.content(mode, &[b], out, at)?,
                },
                Esc::Backslash => {
                    let decoded = match b {
                        b'"' | b'\\' | b'/' => b,
                        b'b' => 0x08,
                        b'f' => 0x0C,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            self.esc_byte(b);
                            self.esc = Esc::Hex { n: 0, v: 0 };
                            continue;
                        }
                        _ => return Err(invalid(at, "an invalid escape in a string")),
                    };
                    self.esc_byte(b);
                    self.escaped(mode, &[decoded], out, at)?;
                }
                Esc::Hex { n, v } => {
                    let v = hex(b, v).ok_or_else(|| invalid(at, "an invalid \\u escape"))?;
                    self.esc_byte(b);
                    if n < 3 {
                        self.esc = Esc::Hex { n: n + 1, v };
                    } else if (0xD800..0xDC00).contains(&v) {
                        self.esc = Esc::LowBackslash { high: v };
                    } else if (0xDC00..0xE000).contains(&v) {
                        return Err(invalid(at, "a lone low surrogate"));
                    } else {
                        self.escaped_char(mode, u32::from(v), out, at)?;
                    }
                }
                Esc::LowBackslash { high } => {
                    if b != b'\\' {
                        return Err(invalid(at, "a lone high surrogate"));
                    }
                    self.esc_byte(b);
                    self.esc = Esc::LowU { high };
                }
                Esc::LowU { high } => {
                    if b != b'u' {
                        return Err(invalid(at, "a lone high surrogate"));
                    }
                    self.esc_byte(b);
                    self.esc = Esc::LowHex { high, n: 0, v: 0 };
                }
                Esc::LowHex { high, n, v } => {
                    let v = hex(b, v).ok_or_else(|| invalid(at, "an invalid \\u escape"))?;
                    self.esc_byte(b);
                    if n < 3 {
                        self.esc = Esc::LowHex { high, n: n + 1, v };
                    } else if (0xDC00..0xE000).contains(&v) {
                        let c =
                            0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(v) - 0xDC00);
                        self.escaped_char(mode, c, out, at)?;
                    } else {
                        return Err(invalid(at, "a lone high surrogate"));
                    }
                }
            }
        }
        Ok(i)
    }

    fn esc_byte(&mut self, b: u8) {
        self.esc_raw[self.esc_len as usize] = b;
        self.esc_len += 1;
    }

    fn escaped_char(
        &mut self,
        mode: Mode,
        c: u32,
        out: &mut Vec<u8>,
        at: u64,
    ) -> Result<(), BodyError> {
        let c = char::from_u32(c).ok_or_else(|| invalid(at, "an invalid \\u escape"))?;
        let mut buf = [0u8; 4];
        let n = c.encode_utf8(&mut buf).len();
        self.escaped(mode, &buf[..n], out, at)
    }

    /// A complete escape (its raw bytes in `esc_raw`) meaning `decoded`.
    fn escaped(
        &mut self,
        mode: Mode,
        decoded: &[u8],
        out: &mut Vec<u8>,
        at: u64,
    ) -> Result<(), BodyError> {
        let raw = &self.esc_raw[..self.esc_len as usize];
        match mode {
            Mode::Skip | Mode::SkipKey => {}
            Mode::Pass => out.extend_from_slice(raw),
            Mode::Detect => self.text.push_unit(decoded, raw),
            Mode::Key => {
                self.key.push_unit(decoded, raw);
                self.check_key(at)?;
            }
        }
        self.esc = Esc::None;
        self.esc_len = 0;
        if mode == Mode::Detect && self.text.len() > self.max_token {
            self.text.drain(out, &mut self.masked)?;
        }
        Ok(())
    }

    /// Unescaped string bytes.
    fn content(
        &mut self,
        mode: Mode,
        bytes: &[u8],
        out: &mut Vec<u8>,
        at: u64,
    ) -> Result<(), BodyError> {
        match mode {
            Mode::Skip | Mode::SkipKey => {}
            Mode::Pass => out.extend_from_slice(bytes),
            Mode::Detect => {
                self.text.extend(bytes);
                if self.text.len() > self.max_token {
                    self.text.drain(out, &mut self.masked)?;
                }
            }
            Mode::Key => {
                self.key.extend(bytes);
                self.check_key(at)?;
            }
        }
        Ok(())
    }

    fn check_key(&self, at: u64) -> Result<(), BodyError> {
        if self.key.len() > self.max_token {
            return Err(BodyError::TokenTooLong {
                at,
                max: self.max_token,
            });
        }
        Ok(())
    }

    fn end_string(&mut self, mode: Mode, out: &mut Vec<u8>) {
        match mode {
            Mode::Skip => self.value_done(),
            Mode::SkipKey => self.state = State::Colon,
            Mode::Pass => {
                out.push(b'"');
                self.value_done();
            }
            Mode::Detect => {
                self.text.finish(out, &mut self.masked);
                out.push(b'"');
                self.value_done();
            }
            Mode::Key => {
                let paths = self.stack.last().map_or(&[][..], |f| &f.paths[..]);
                // Validated UTF-8: escapes decode to chars, raw bytes were checked.
                let key = std::str::from_utf8(self.key.decoded()).unwrap_or_default();
                self.pending = Some(self.fields.member(paths, key));
                self.key.finish(out, &mut self.masked);
                out.push(b'"');
                self.state = State::Colon;
            }
        }
    }
}

fn hex(b: u8, v: u16) -> Option<u16> {
    let d = (b as char).to_digit(16)? as u16;
    Some(v << 4 | d)
}

/// The integer a JSON number denotes, written plainly (`-4.2e1` → `-42`), when it is one of at
/// most 40 digits.
fn canonical_integer(number: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(number).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(p) => (&text[..p], text[p + 1..].parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
    let exponent = exponent.checked_sub(frac.len() as i64)?;
    if exponent >= 0 {
        if digits.len() as i64 + exponent > 40 {
            return None;
        }
        digits.extend(std::iter::repeat_n(b'0', exponent as usize));
    } else {
        let drop = usize::try_from(-exponent).ok()?;
        if drop > digits.len() || digits[digits.len() - drop..].iter().any(|&d| d != b'0') {
            return None;
        }
        digits.truncate(digits.len() - drop);
    }
    let start = digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len());
    let mut out = Vec::with_capacity(digits.len() + 1);
    if negative && start < digits.len() {
        out.push(b'-');
    }
    if start == digits.len() {
        out.push(b'0');
    } else {
        out.extend_from_slice(&digits[start..]);
    }
    (out.len() <= 41).then_some(out)
}
