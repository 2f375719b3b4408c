//! The statement log of a session: a `sql` event stored durably before a statement is forwarded
//! (write-ahead), and a `sql_result` event when its answer is complete (rows, duration, outcome and
//! a capped sample of the masked result).

use crate::record::EventKind;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Serialize, Serializer};
use serde_json::Value;

use super::state::Exec;
use crate::{
    policy::Decision,
    record::{HeldEvents, RenderedEvent, Store, StoreError},
    sql::SqlStatement,
};

/// Longest SQL text stored per statement; longer texts are cut (and say so).
const MAX_SQL: usize = 16 * 1024;
/// Longest SQL text shown to approvers and sent to webhooks; longer texts are cut (and say so).
pub(super) const MAX_APPROVAL_TEXT: usize = 16 * 1024;
/// Longest single value in a parameter list or a result sample.
pub(super) const MAX_VALUE: usize = 256;

/// One statement as recorded before it is forwarded.
pub struct Entry<'s> {
    pub seq: u64,
    /// `simple` or `extended`.
    pub protocol: &'static str,
    pub sql: &'s str,
    /// Bound parameters (extended protocol).
    pub params: Option<&'s [Value]>,
    pub statements: &'s [SqlStatement],
    /// `None`: nothing to decide (an empty query).
    pub decision: Option<&'s Decision>,
    pub note: Option<&'s str>,
}

pub struct Journal<'a> {
    pub store: &'a Store,
    pub session_id: i64,
    pub sample_rows: usize,
    /// Bytes of samples still allowed in this session.
    sample_budget: AtomicUsize,
    /// Outcomes not stored yet: they go with the next statement's write-ahead record (one
    /// write per statement), or on [`Journal::flush`] when the session idles or ends.
    results: HeldEvents,
}

/// The `sql` event, serialized straight from borrowed parts.
#[derive(Serialize)]
struct SqlEvent<'s> {
    seq: u64,
    protocol: &'static str,
    sql: Capped<'s>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'s [Value]>,
    statements: &'s [SqlStatement],
    decision: &'s str,
    rule: Option<&'s str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'s str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'s str>,
}

/// The `sql_result` event, serialized straight from the execution's fields.
#[derive(Serialize)]
struct ResultEvent<'s> {
    seq: u64,
    duration_ms: f64,
    rows: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'s [String],
    #[serde(skip_serializing_if = "is_zero")]
    masked_values: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    suspended: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ResultError<'s>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'s str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    columns: Option<&'s [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sample: Option<&'s [Vec<Value>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_note: Option<&'static str>,
}

#[derive(Serialize)]
struct ResultError<'s> {
    code: &'s str,
    message: &'s str,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Text recorded up to a length (see [`cap`]).
struct Capped<'s>(&'s str, usize);

impl Serialize for Capped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.len() <= self.1 {
            return s.serialize_str(self.0);
        }
        cap(self.0, self.1).serialize(s)
    }
}

pub(super) fn cap(text: &str, max: usize) -> Value {
    Value::String(cap_text(text, max))
}

/// `text` up to `max` bytes (on a character boundary), saying how long it was when cut.
pub(super) fn cap_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// A value as recorded: text (lossy), capped.
pub(super) fn value(bytes: Option<&[u8]>, binary: bool) -> Value {
    match bytes {
        None => Value::Null,
        Some(b) if binary => {
            let hex = crate::hex::lower(&b[..b.len().min(MAX_VALUE / 2)]);
            Value::String(format!(
                "\\x{hex}{}",
                if b.len() > MAX_VALUE / 2 { "…" } else { "" }
            ))
        }
        Some(b) => cap(&String::from_utf8_lossy(b), MAX_VALUE),
    }
}

/// Bytes of `v` as JSON, counted without building the text.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

impl<'a> Journal<'a> {
    pub fn new(store: &'a Store, session_id: i64, sample_rows: usize, sample_bytes: usize) -> Self {
        Journal {
            store,
            session_id,
            sample_rows,
            sample_budget: AtomicUsize::new(sample_bytes),
            results: HeldEvents::new(store.clone(), session_id),
        }
    }

    /// Records a statement about to be forwarded (or refused); resolves once durable.
    pub async fn statement(&self, e: Entry<'_>) -> Result<(), StoreError> {
        let detail = SqlEvent {
            seq: e.seq,
            protocol: e.protocol,
            sql: Capped(e.sql, MAX_SQL),
            params: e.params,
            statements: e.statements,
            decision: e.decision.map_or("allow", Decision::label),
            rule: e
                .decision
                .and_then(Decision::rule)
                .filter(|r| !r.is_empty()),
            reason: e.decision.and_then(Decision::reason),
            note: e.note,
        };
        self.results.append(vec![
            RenderedEvent::new(EventKind::Sql, &detail)?.of_statement(e.seq),
        ])
    }

    /// Whether outcomes wait to be stored.
    pub fn has_pending_results(&self) -> bool {
        !self.results.is_empty()
    }

    /// Stores the outcomes recorded so far (not waited for).
    pub fn flush(&self) {
        self.results.flush();
    }

    /// Whether another sample row may be kept.
    pub fn wants_sample(&self, exec: &Exec) -> bool {
        exec.sample.len() < self.sample_rows && self.sample_budget.load(Ordering::Relaxed) > 0
    }

    pub fn keep_sample(&self, exec: &mut Exec, row: Vec<Value>) {
        let size: usize = row.iter().map(json_len).sum();
        let budget = self.sample_budget.load(Ordering::Relaxed);
        if size > budget {
            self.sample_budget.store(0, Ordering::Relaxed);
            exec.sample_dropped = true;
            return;
        }
        self.sample_budget.store(budget - size, Ordering::Relaxed);
        exec.sample.push(row);
    }

    /// Records the outcome of an execution (stored with the next statement or flush: the answer
    /// already went out).
    pub fn result(&self, exec: &Exec, skipped: bool) {
        let has_sample = !exec.sample.is_empty();
        let detail = ResultEvent {
            seq: exec.seq,
            duration_ms: (exec.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            rows: exec.rows,
            tags: &exec.tags,
            masked_values: exec.masked,
            suspended: exec.suspended,
            skipped: skipped.then_some("not executed: an earlier message of the pipeline failed"),
            error: exec
                .error
                .as_ref()
                .map(|(code, message)| ResultError { code, message }),
            refused: exec.refusal.as_ref().map(|r| r.message.as_str()),
            columns: has_sample.then_some(&exec.sample_columns[..]),
            sample: has_sample.then_some(&exec.sample[..]),
            sample_note: exec
                .sample_dropped
                .then_some("result samples left out: the session's sample cap is reached"),
        };
        // Serializing borrowed fields of plain types cannot fail.
        if let Ok(event) = RenderedEvent::new(EventKind::SqlResult, &detail) {
            self.results.hold(event.of_statement(exec.seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{MAX_VALUE, value};

    #[test]
    fn binary_values_are_recorded_as_capped_hex() {
        assert_eq!(value(None, true), json!(null));
        assert_eq!(value(Some(&[0x00, 0xab, 0xff]), true), json!("\\x00abff"));
        let long = vec![0x5a; MAX_VALUE];
        let recorded = value(Some(&long), true);
        let text = recorded.as_str().unwrap();
        assert_eq!(text, format!("\\x{}…", "5a".repeat(MAX_VALUE / 2)));
    }
}
