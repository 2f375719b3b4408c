//! Masking of HTTP response bodies as they stream: a building block for the HTTP layer, pure (no
//! I/O, no HTTP types), fed with the body's bytes in whatever chunks they arrive.
//!
//! [`BodyMasker::new`] picks the masking from the response's `Content-Type` and
//! `Content-Encoding` and the target's [`BodyRules`] (the union of its `[[masking]]` rules'
//! `json_fields` and `detectors`); [`BodyMasker::push`] and [`BodyMasker::finish`] return the
//! masked body, always unencoded (identity), with [`BodyMasker::header_changes`] saying what the
//! response headers must lose.
//!
//! # What is guaranteed
//!
//! - **Chunking does not matter**: the output is the same however the input is split, to the
//!   byte (tests split every input at every offset).
//! - **JSON** (`application/json`, `*+json`, NDJSON): members named by `json_fields` have their
//!   value replaced whole by `"[masked]"`, whatever its type; keys are compared unescaped
//!   (`"\u0073sn"` is `ssn`) and case-insensitively; duplicate keys are each masked. Detectors
//!   read every string (keys too) unescaped, so `alice\u0040example.com` is found; a match is
//!   replaced by `[masked:<detector>]` inside the string, and a number in which a detector finds
//!   something (as written, or as the integer an exponent form denotes) becomes the string
//!   `"[masked:<detector>]"`. Everything else passes byte for byte, whitespace included.
//! - **JSON is parsed strictly** (RFC 8259: UTF-8 only, no lone surrogates, no control characters
//!   in strings, no trailing commas); the first invalid byte is an error, and nothing from that
//!   push on is returned. Limits are errors too: nesting deeper than `max_depth`, a key or number
//!   longer than `max_token_bytes`.
//! - **Text** (`text/*`, XML, JavaScript, YAML, …, or no `Content-Type`), **forms**
//!   (`application/x-www-form-urlencoded`, read percent-decoded) and **event streams**
//!   (`text/event-stream`, per event; JSON data through the JSON masker) go through the
//!   detectors; a body of such a type that starts with `{` or `[` is masked as JSON when
//!   `json_fields` apply (a JSON body is not let through by mislabelling it). Text with NUL bytes
//!   (UTF-16/32) is refused.
//! - **Detector matches are found across chunk boundaries exactly as in one piece** (see
//!   `window`): text is scanned in pieces that end only where no match can cross. Text that
//!   offers no such place for `max_token_bytes` (a word or PEM block that long) is refused, not
//!   cut; whether a body is refused depends on its bytes, not on its chunks.
//! - **Memory is bounded per body**, independent of its size: the container stack (`max_depth`
//!   frames), one key and one number (`max_token_bytes` each), one event (`max_event_bytes`), the
//!   detector window (a few KiB for ordinary text; at most about 21 × `max_token_bytes`, 1.3 MiB
//!   at the default, for a string escaped character by character with no place to cut), and the
//!   decoder's state (at most 16 MiB for br, 8 MiB for zstd, about 80 KiB for gzip/deflate). A
//!   string under a masked field is read and dropped, never held. Output per push is
//!   proportional to the push (at most ~10×: a one-digit value becomes `"[masked]"`).
//! - **Decompression bombs** stop at `max_decoded_bytes`, and when the decoded size exceeds
//!   `max_ratio` × the encoded size (per push and per body, beyond 1 MiB of grace).
//!
//! # What is not
//!
//! - Detectors see the bytes of text bodies as they are: HTML character references (`&#64;`),
//!   JavaScript string escapes in `text/html`, quoted-printable and base64 are not decoded; nor
//!   are strings inside JSON-in-a-string. JSONP (`callback({...})`) is text to the masking:
//!   `json_fields` do not apply to it.
//! - `json_fields` apply to JSON only (not to form fields or event names).
//! - A body that is refused mid-stream has already sent its masked beginning: the HTTP layer must
//!   end the response abnormally (reset the stream / close without the last chunk), so that the
//!   client sees a truncated body, not a complete one.
//! - The HTTP layer's part: it must not forward `Range`/`If-Range` when masking applies (a byte
//!   range of a masked body is not a range of the original; 206 responses are unmaskable), must
//!   treat [`Unmaskable`] as a refusal (binary types, unknown codings, charsets the detectors
//!   cannot read, multipart), and must apply [`HeaderChanges`].

mod decode;
mod fields;
mod json;
mod sse;
mod text;
mod window;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;

use self::{
    decode::Decoder,
    fields::FieldMatcher,
    json::JsonMasker,
    sse::SseMasker,
    text::{FormMasker, TextMasker},
};
pub use fields::{JsonField, Step};

use super::{Detector, MaskingRule};
use crate::glob;

/// Why a body could not be masked. The HTTP layer ends the response abnormally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid JSON at byte {at}: {reason}")]
    Json { at: u64, reason: &'static str },
    #[error("JSON nested deeper than {max} levels (at byte {at})")]
    TooDeep { at: u64, max: usize },
    #[error("a JSON key or number longer than {max} bytes (at byte {at})")]
    TokenTooLong { at: u64, max: usize },
    #[error(
        "more than {max} bytes of text with no place to scan it in parts (a word, token or PEM block that long)"
    )]
    Unscannable { max: usize },
    #[error("an event-stream event longer than {max} bytes")]
    EventTooLarge { max: usize },
    #[error("a text body with NUL bytes (UTF-16 or UTF-32?): the detectors cannot read it")]
    NotText,
    #[error("invalid {encoding} content: {message}")]
    Decode {
        encoding: &'static str,
        message: String,
    },
    #[error("data after the end of the {encoding} stream")]
    TrailingData { encoding: &'static str },
    #[error("the decoded body exceeds {max} bytes")]
    DecodedTooLarge { max: u64 },
    #[error(
        "the decoded body grows more than {ratio} times its encoded size (a decompression bomb?)"
    )]
    Ratio { ratio: u64 },
}

impl BodyError {
    /// A limit rather than a syntax error: the content may be valid, but too costly to mask.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            BodyError::TooDeep { .. }
                | BodyError::TokenTooLong { .. }
                | BodyError::Unscannable { .. }
                | BodyError::EventTooLarge { .. }
                | BodyError::DecodedTooLarge { .. }
                | BodyError::Ratio { .. }
        )
    }
}

/// Bounds on what one body may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Longest JSON key or number, and the detector window: the longest stretch of text with no
    /// place to scan it in parts.
    pub max_token_bytes: usize,
    /// Deepest JSON nesting (objects and arrays).
    pub max_depth: usize,
    /// Longest event of an event stream.
    pub max_event_bytes: usize,
    /// Largest decoded size of an encoded body.
    pub max_decoded_bytes: u64,
    /// Largest ratio of decoded to encoded size (beyond 1 MiB of grace).
    pub max_ratio: u64,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            max_token_bytes: 64 * 1024,
            max_depth: 128,
            max_event_bytes: 1024 * 1024,
            max_decoded_bytes: 1024 * 1024 * 1024,
            max_ratio: 200,
        }
    }
}

/// The body masking that applies to one target: the union of its `[[masking]]` rules'
/// `json_fields` and `detectors`, compiled once.
pub struct BodyRules {
    pub rules: Vec<String>,
    pub json_fields: Vec<JsonField>,
    pub detectors: Vec<Detector>,
    matcher: Arc<FieldMatcher>,
    detector_set: Arc<[Detector]>,
}

impl std::fmt::Debug for BodyRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyRules")
            .field("rules", &self.rules)
            .field("json_fields", &self.json_fields)
            .field("detectors", &self.detectors)
            .finish()
    }
}

impl BodyRules {
    pub fn new(
        rules: Vec<String>,
        json_fields: Vec<JsonField>,
        mut detectors: Vec<Detector>,
    ) -> Self {
        detectors.sort();
        detectors.dedup();
        BodyRules {
            matcher: Arc::new(FieldMatcher::new(&json_fields)),
            detector_set: detectors.clone().into(),
            rules,
            json_fields,
            detectors,
        }
    }

    /// The masking of each of `targets` that has any, compiled once (the daemon's configuration
    /// does not change while it runs).
    pub fn per_target<'t>(
        rules: &[MaskingRule],
        targets: impl IntoIterator<Item = &'t str>,
    ) -> std::collections::HashMap<String, Arc<BodyRules>> {
        targets
            .into_iter()
            .filter_map(|t| Some((t.to_string(), Self::for_target(rules, t)?)))
            .collect()
    }

    /// `None` when no rule masks anything in `target`'s bodies.
    pub fn for_target(rules: &[MaskingRule], target: &str) -> Option<Arc<BodyRules>> {
        let mut names = Vec::new();
        let mut fields = Vec::new();
        let mut detectors = Vec::new();
        for r in rules.iter().filter(|r| {
            (!r.json_fields.is_empty() || !r.detectors.is_empty())
                && r.targets.iter().any(|g| glob::matches(g, target))
        }) {
            names.push(r.name.clone());
            fields.extend(r.json_fields.iter().cloned());
            detectors.extend(r.detectors.iter().copied());
        }
        (!names.is_empty()).then(|| Arc::new(BodyRules::new(names, fields, detectors)))
    }

    /// The detectors of every `[[masking]]` rule, whatever its targets: for text a job typed that
    /// is recorded apart from one target's traffic. A command line may hold what any target's
    /// masking hides, and a shell's is recorded with every connection its children make (to a
    /// target no rule names, refused before a target is known, on the Docker socket). `None`
    /// when no rule has detectors (`columns` and `json_fields` name values in traffic only).
    pub fn every_detector(rules: &[MaskingRule]) -> Option<Arc<BodyRules>> {
        let with: Vec<&MaskingRule> = rules.iter().filter(|r| !r.detectors.is_empty()).collect();
        (!with.is_empty()).then(|| {
            Arc::new(BodyRules::new(
                with.iter().map(|r| r.name.clone()).collect(),
                Vec::new(),
                with.iter()
                    .flat_map(|r| r.detectors.iter().copied())
                    .collect(),
            ))
        })
    }
}

/// Response headers the detectors leave alone: the client needs them as sent to read the
/// response (its framing, type, coding and byte ranges) and none carries data of its own. Every
/// other header value, `Location` and custom ones included, goes through the detectors.
pub const UNMASKED_HEADERS: &[&str] = &[
    "content-length",
    "content-type",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "connection",
    "upgrade",
    "trailer",
    "date",
    "sec-websocket-accept",
];

impl BodyRules {
    /// Masks one response header value with the detectors (`json_fields` name JSON members, not
    /// headers): the masked value and the number of matches, `None` when nothing matched or the
    /// header is one of [`UNMASKED_HEADERS`].
    pub fn mask_header(&self, name: &str, value: &[u8]) -> Option<(Vec<u8>, usize)> {
        if UNMASKED_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            return None;
        }
        self.mask_text(value)
    }

    /// Masks a short text that may be percent-encoded (a URL, a query, a header value) with the
    /// detectors: read as it is, then percent-decoded with `+` as a space, as a server reading a
    /// query or a form does, so that `123%2D45%2D6789` is found too (and replaced by
    /// percent-encoded text). The masked text and the number of matches; `None` when nothing
    /// matched. Text with more than `max_token_bytes` and no place to scan it in parts is
    /// replaced whole by a note, never shown unread.
    pub fn mask_text(&self, text: &[u8]) -> Option<(Vec<u8>, usize)> {
        if self.detectors.is_empty() {
            return None;
        }
        let (plain, mut matches) = match crate::mask::redact(text, &self.detectors) {
            Some((masked, n)) => (masked, n),
            None => (text.to_vec(), 0),
        };
        if !plain.iter().any(|&b| b == b'%' || b == b'+') {
            return (matches > 0).then_some((plain, matches));
        }
        let mut form = FormMasker::new(
            self.detector_set.clone(),
            BodyLimits::default().max_token_bytes,
        );
        let mut out = Vec::with_capacity(plain.len());
        match form
            .push(&plain, &mut out)
            .and_then(|()| form.finish(&mut out))
        {
            Ok(()) => matches += usize::try_from(form.masked()).unwrap_or(usize::MAX),
            Err(e) => return Some((format!("[not shown: {e}]").into_bytes(), 1)),
        }
        (matches > 0).then_some((out, matches))
    }

    /// [`BodyRules::mask_text`] for text that stays text; the input when nothing matched.
    pub fn mask_str<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        match self.mask_text(text.as_bytes()) {
            Some((masked, _)) => {
                std::borrow::Cow::Owned(String::from_utf8_lossy(&masked).into_owned())
            }
            None => std::borrow::Cow::Borrowed(text),
        }
    }

    /// [`BodyRules::mask_str`] over every string in a JSON value (a record's detail; its keys are
    /// the gateway's own).
    pub fn mask_json_strings(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => {
                if let std::borrow::Cow::Owned(masked) = self.mask_str(s) {
                    *s = masked;
                }
            }
            serde_json::Value::Array(items) => {
                items.iter_mut().for_each(|v| self.mask_json_strings(v));
            }
            serde_json::Value::Object(members) => {
                members.values_mut().for_each(|v| self.mask_json_strings(v));
            }
            _ => {}
        }
    }

    /// Masks one whole message (a WebSocket text message) as a body of no declared type: JSON
    /// (by `json_fields` and the detectors) when it starts like JSON and `json_fields` apply,
    /// else text (the detectors). The masked message and the number of values masked; `None`
    /// when nothing in it matched; an error when it cannot be masked (invalid JSON, a limit).
    pub fn mask_message(
        self: &Arc<Self>,
        message: &[u8],
    ) -> Result<Option<(Vec<u8>, u64)>, BodyError> {
        let Ok(Some(mut masker)) = BodyMasker::new(self, None, None, &BodyLimits::default()) else {
            return Ok(None);
        };
        let mut out = masker.push(message)?.to_vec();
        out.extend_from_slice(&masker.finish()?);
        let masked = masker.masked();
        Ok((masked > 0).then_some((out, masked)))
    }

    /// What a recording (or an approver) may see of the first bytes of a request body: masked
    /// exactly as a response of this type and coding would be for the job, so that a recording
    /// never holds what the masking hides. `complete` says the sample is the whole body (else
    /// its unfinished end is left out). A body the masking cannot read is not shown at all.
    pub fn mask_sample(
        self: &Arc<Self>,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        sample: &[u8],
        complete: bool,
    ) -> Vec<u8> {
        if sample.is_empty() {
            return Vec::new();
        }
        let not_shown = |why: &dyn std::fmt::Display| format!("[not recorded: {why}]").into_bytes();
        let mut masker =
            match BodyMasker::new(self, content_type, content_encoding, &BodyLimits::default()) {
                Ok(Some(m)) => m,
                Ok(None) => return sample.to_vec(),
                Err(Unmaskable(why)) => return not_shown(&why),
            };
        let mut out = match masker.push(sample) {
            Ok(b) => b.to_vec(),
            Err(e) => return not_shown(&e),
        };
        if complete {
            match masker.finish() {
                Ok(rest) => out.extend_from_slice(&rest),
                Err(e) => return not_shown(&e),
            }
        }
        out
    }
}

/// The content codings this module decodes, for an `Accept-Encoding` sent upstream (or send
/// `identity` and decode nothing).
pub const ACCEPT_ENCODING: &str = "gzip, deflate, br, zstd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// A `Content-Encoding` value: at most one coding besides `identity`.
    pub fn parse(header: Option<&str>) -> Result<Coding, Unmaskable> {
        let codings: Vec<String> = header
            .unwrap_or("")
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty() && c != "identity")
            .collect();
        match codings.as_slice() {
            [] => Ok(Coding::Identity),
            [c] => match c.as_str() {
                "gzip" | "x-gzip" => Ok(Coding::Gzip),
                "deflate" => Ok(Coding::Deflate),
                "br" => Ok(Coding::Brotli),
                "zstd" => Ok(Coding::Zstd),
                other => Err(Unmaskable(format!(
                    "content coding {other:?} cannot be decoded (gzip, deflate, br and zstd can)"
                ))),
            },
            _ => Err(Unmaskable(format!(
                "several content codings ({}) are not decoded",
                codings.join(", ")
            ))),
        }
    }
}

/// How a body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    EventStream,
    Form,
    /// Text, read as JSON if it starts like JSON and `json_fields` apply.
    Text,
}

impl BodyKind {
    /// By `Content-Type` (absent: text).
    pub fn classify(content_type: Option<&str>) -> Result<BodyKind, Unmaskable> {
        let Some(ct) = content_type else {
            return Ok(BodyKind::Text);
        };
        let mime: mime::Mime = ct
            .parse()
            .map_err(|_| Unmaskable(format!("unreadable Content-Type {ct:?}")))?;
        let (ty, sub) = (mime.type_().as_str(), mime.subtype().as_str());
        let suffix = mime.suffix().map(|s| s.as_str());
        let charset = mime
            .get_param(mime::CHARSET)
            .map(|c| c.as_str().to_ascii_lowercase());
        let kind = match (ty, sub, suffix) {
            (_, "json-seq", _) => {
                return Err(Unmaskable("application/json-seq is not read".into()));
            }
            ("application", "json" | "x-ndjson" | "ndjson" | "jsonl" | "x-jsonlines", _)
            | ("text", "json", _)
            | (_, _, Some("json")) => BodyKind::Json,
            ("text", "event-stream", _) => BodyKind::EventStream,
            ("application", "x-www-form-urlencoded", _) => BodyKind::Form,
            ("text", _, _)
            | (
                "application",
                "xml" | "javascript" | "ecmascript" | "x-javascript" | "yaml" | "x-yaml" | "toml"
                | "sql" | "graphql" | "csv" | "x-sh",
                _,
            )
            | (_, _, Some("xml")) => BodyKind::Text,
            _ => {
                return Err(Unmaskable(format!(
                    "{ty}/{sub} is not a type the masking can read"
                )));
            }
        };
        let readable = match (&kind, charset.as_deref()) {
            (_, None) | (BodyKind::EventStream, _) => true,
            (BodyKind::Json, Some(c)) => matches!(c, "utf-8" | "utf8" | "us-ascii"),
            (_, Some(c)) => ascii_compatible(c),
        };
        if !readable {
            return Err(Unmaskable(format!(
                "charset {:?} is not one the detectors can read",
                charset.unwrap_or_default()
            )));
        }
        Ok(kind)
    }
}

/// Charsets in which ASCII text is ASCII bytes (what the detectors read).
fn ascii_compatible(charset: &str) -> bool {
    matches!(charset, "utf-8" | "utf8" | "us-ascii" | "ascii" | "latin1")
        || charset.starts_with("iso-8859-")
        || charset.starts_with("windows-125")
        || charset.starts_with("cp125")
}

/// The response cannot be masked (its type, coding or charset); the HTTP layer refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the response body cannot be masked: {0}")]
pub struct Unmaskable(pub String);

/// What the response headers must lose when the body is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderChanges {
    /// Headers describing the upstream bytes, not the masked body: remove them. Without
    /// `Content-Length` the body goes chunked (HTTP/1.1) or ends with the stream (HTTP/2).
    pub remove: Vec<&'static str>,
    /// A strong `ETag` names the upstream bytes: make it weak (`W/"…"`).
    pub weaken_etag: bool,
}

/// The masker of one body, by kind, behind the decoder.
enum Inner {
    Json(JsonMasker),
    EventStream(SseMasker),
    Form(FormMasker),
    Text(TextMasker),
    /// Text that may turn out to be JSON: decided at its first byte that is not whitespace.
    Sniff {
        held: Vec<u8>,
        rules: Arc<BodyRules>,
        limits: BodyLimits,
    },
    /// Nothing in this body can match.
    Pass,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Inner {
    fn new(kind: BodyKind, rules: &Arc<BodyRules>, limits: &BodyLimits) -> Option<Inner> {
        let fields = !rules.matcher.is_empty();
        let detectors = !rules.detector_set.is_empty();
        let json = || {
            JsonMasker::new(
                rules.matcher.clone(),
                rules.detector_set.clone(),
                limits.max_token_bytes,
                limits.max_depth,
            )
        };
        match kind {
            BodyKind::Json if fields || detectors => Some(Inner::Json(json())),
            BodyKind::EventStream if fields || detectors => {
                Some(Inner::EventStream(SseMasker::new(
                    rules.matcher.clone(),
                    rules.detector_set.clone(),
                    limits.max_token_bytes,
                    limits.max_depth,
                    limits.max_event_bytes,
                )))
            }
            BodyKind::Form if detectors => Some(Inner::Form(FormMasker::new(
                rules.detector_set.clone(),
                limits.max_token_bytes,
            ))),
            BodyKind::Text if fields => Some(Inner::Sniff {
                held: Vec::new(),
                rules: rules.clone(),
                limits: *limits,
            }),
            BodyKind::Text if detectors => Some(Inner::Text(TextMasker::new(
                rules.detector_set.clone(),
                limits.max_token_bytes,
            ))),
            _ => None,
        }
    }

    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        match self {
            Inner::Json(m) => m.push(input, out),
            Inner::EventStream(m) => m.push(input, out),
            Inner::Form(m) => m.push(input, out),
            Inner::Text(m) => m.push(input, out),
            Inner::Pass => {
                out.extend_from_slice(input);
                Ok(())
            }
            Inner::Sniff { held, limits, .. } => {
                held.extend_from_slice(input);
                let Some(json) = starts_like_json(held) else {
                    if held.len() <= limits.max_token_bytes {
                        return Ok(());
                    }
                    return self.decide(false, out);
                };
                self.decide(json, out)
            }
        }
    }

    /// Replaces a sniffing masker by the one the body's start calls for, and feeds it: JSON, or
    /// text, which only the detectors read.
    fn decide(&mut self, json: bool, out: &mut Vec<u8>) -> Result<(), BodyError> {
        let Inner::Sniff {
            held,
            rules,
            limits,
        } = self
        else {
            return Ok(());
        };
        let held = std::mem::take(held);
        let next = if json {
            Inner::new(BodyKind::Json, rules, limits)
        } else if !rules.detector_set.is_empty() {
            Some(Inner::Text(TextMasker::new(
                rules.detector_set.clone(),
                limits.max_token_bytes,
            )))
        } else {
            None
        };
        *self = next.unwrap_or(Inner::Pass);
        self.push(&held, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        if matches!(self, Inner::Sniff { .. }) {
            self.decide(false, out)?;
        }
        match self {
            Inner::Json(m) => m.finish(out),
            Inner::EventStream(m) => m.finish(out),
            Inner::Form(m) => m.finish(out),
            Inner::Text(m) => m.finish(out),
            Inner::Pass | Inner::Sniff { .. } => Ok(()),
        }
    }

    fn masked(&self) -> u64 {
        match self {
            Inner::Json(m) => m.masked(),
            Inner::EventStream(m) => m.masked(),
            Inner::Form(m) => m.masked(),
            Inner::Text(m) => m.masked(),
            Inner::Pass | Inner::Sniff { .. } => 0,
        }
    }

    fn buffered(&self) -> usize {
        match self {
            Inner::Json(m) => m.buffered(),
            Inner::EventStream(m) => m.buffered(),
            Inner::Form(m) => m.buffered(),
            Inner::Text(m) => m.buffered(),
            Inner::Sniff { held, .. } => held.capacity(),
            Inner::Pass => 0,
        }
    }
}

/// Whether held text starts like JSON (`{` or `[` after a byte order mark and whitespace);
/// `None` while only those have come.
fn starts_like_json(held: &[u8]) -> Option<bool> {
    let rest = if held.len() < BOM.len() && BOM.starts_with(held) {
        return None;
    } else {
        held.strip_prefix(BOM).unwrap_or(held)
    };
    let first = rest
        .iter()
        .find(|&&b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    Some(matches!(first, b'{' | b'['))
}

/// Masks one response body. Feed it every byte of the body with [`push`](Self::push), then call
/// [`finish`](Self::finish); send what each returns. After an error, every call returns it again.
pub struct BodyMasker {
    kind: BodyKind,
    coding: Coding,
    decoder: Decoder,
    error: Option<BodyError>,
    finished: bool,
}

impl std::fmt::Debug for BodyMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyMasker")
            .field("kind", &self.kind)
            .field("coding", &self.coding)
            .field("error", &self.error)
            .finish()
    }
}

impl BodyMasker {
    /// The masker for a response with these headers, `None` when nothing in `rules` can apply to
    /// it (forward it as it is), [`Unmaskable`] when rules apply but the body cannot be read. An
    /// encoded body is decoded even when no rule reads its type: what the HTTP layer sends on is
    /// always unencoded, so that its own filters (the credential's echoes) read the plain bytes.
    pub fn new(
        rules: &Arc<BodyRules>,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        limits: &BodyLimits,
    ) -> Result<Option<BodyMasker>, Unmaskable> {
        let kind = BodyKind::classify(content_type)?;
        let coding = Coding::parse(content_encoding)?;
        let inner = match Inner::new(kind, rules, limits) {
            Some(inner) => inner,
            None if coding != Coding::Identity => Inner::Pass,
            None => return Ok(None),
        };
        let decoder = Decoder::new(coding, inner, limits.max_decoded_bytes, limits.max_ratio)
            .map_err(|e| Unmaskable(e.to_string()))?;
        Ok(Some(BodyMasker {
            kind,
            coding,
            decoder,
            error: None,
            finished: false,
        }))
    }

    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    /// Masks the next bytes of the body (as received, encoded); returns what can be sent now.
    pub fn push(&mut self, input: &[u8]) -> Result<Bytes, BodyError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.finished {
            debug_assert!(false, "push after finish");
            return Ok(Bytes::new());
        }
        match self.decoder.push(input) {
            Ok(out) => Ok(Bytes::from(out)),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The body ended: checks that it is complete and returns the rest of the output.
    pub fn finish(&mut self) -> Result<Bytes, BodyError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if std::mem::replace(&mut self.finished, true) {
            return Ok(Bytes::new());
        }
        match self.decoder.finish() {
            Ok(out) => Ok(Bytes::from(out)),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn fail(&mut self, e: BodyError) -> BodyError {
        self.decoder.sink_mut().out = Vec::new();
        self.error = Some(e.clone());
        e
    }

    /// Values masked so far (whole values and detector matches).
    pub fn masked(&self) -> u64 {
        self.decoder.sink().inner.masked()
    }

    /// Bytes the masker holds between pushes (the decoder's fixed state aside).
    pub fn buffered(&self) -> usize {
        self.decoder.sink().inner.buffered()
    }

    /// What the response headers must lose: the body is re-encoded as identity and its length
    /// is not known in advance.
    pub fn header_changes(&self) -> HeaderChanges {
        let mut remove = vec![
            "content-length",
            "content-md5",
            "content-digest",
            "repr-digest",
            "digest",
            "accept-ranges",
        ];
        if self.coding != Coding::Identity {
            remove.push("content-encoding");
        }
        HeaderChanges {
            remove,
            weaken_etag: true,
        }
    }
}
