//! Result masking: column rules (whole values replaced) and value detectors (sensitive substrings
//! replaced), applied to result rows without changing their shape: the row keeps its column count,
//! each column keeps its type and format, so that drivers keep working.
//!
//! Pure data transformation: the protocol handler tells which columns a result has (and which of
//! them the catalog says are covered by a rule); this module says what to do with each value.

pub mod body;
mod coverage;
mod detectors;
mod values;

use std::sync::Arc;

pub use body::JsonField;
pub use coverage::{CatalogColumn, Coverage, CoveredTable};
pub use detectors::{Detector, redact, spans};
pub use values::{is_textual, replacement};

use crate::glob;

/// `[[masking]]`: what to mask in results of the matching targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskingRule {
    pub name: String,
    /// Globs over target names.
    pub targets: Vec<String>,
    /// Columns whose values are replaced whole (postgres results).
    pub columns: Vec<ColumnPattern>,
    /// Members of JSON bodies whose values are replaced whole (HTTP responses, [`body`]).
    pub json_fields: Vec<JsonField>,
    /// Value detectors run over text values of every column, and over HTTP bodies.
    pub detectors: Vec<Detector>,
}

/// `column`, `table.column` or `schema.table.column`, each part a glob (`*email*`, `users.ssn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPattern {
    pub schema: Option<String>,
    pub table: Option<String>,
    pub column: String,
}

impl ColumnPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |c: char| c == '\'' || c == '\\' || c == '"' || c.is_whitespace();
        if text.is_empty() || text.chars().any(bad) {
            return Err(format!(
                "{text:?}: expected column, table.column or schema.table.column (globs allowed; no quotes, backslashes or spaces)"
            ));
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("{text:?} has an empty part"));
        }
        let own = |s: &str| s.to_string();
        match parts.as_slice() {
            [c] => Ok(ColumnPattern {
                schema: None,
                table: None,
                column: own(c),
            }),
            [t, c] => Ok(ColumnPattern {
                schema: None,
                table: Some(own(t)),
                column: own(c),
            }),
            [s, t, c] => Ok(ColumnPattern {
                schema: Some(own(s)),
                table: Some(own(t)),
                column: own(c),
            }),
            _ => Err(format!("{text:?} has more than three parts")),
        }
    }

    /// Does a column of `schema.table` named `column` fall under the pattern?
    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        self.schema
            .as_deref()
            .is_none_or(|s| glob::matches(s, schema))
            && self
                .table
                .as_deref()
                .is_none_or(|t| glob::matches(t, table))
            && glob::matches(&self.column, column)
    }

    /// Bare-name patterns also apply to result columns by their output name (computed columns,
    /// aliases of columns the catalog cannot attribute).
    pub fn matches_output_name(&self, name: &str) -> bool {
        self.table.is_none() && glob::matches(&self.column, name)
    }
}

impl std::fmt::Display for ColumnPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = &self.schema {
            write!(f, "{s}.")?;
        }
        if let Some(t) = &self.table {
            write!(f, "{t}.")?;
        }
        f.write_str(&self.column)
    }
}

/// The masking that applies to one target: the union of its `[[masking]]` rules.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    pub rules: Vec<String>,
    pub columns: Vec<ColumnPattern>,
    pub detectors: Vec<Detector>,
}

impl Masker {
    /// `None` when no rule applies to `target`.
    pub fn for_target(rules: &[MaskingRule], target: &str) -> Option<Arc<Masker>> {
        let mut m = Masker::default();
        // A rule of only `json_fields` masks nothing in results: it must not make masking apply
        // (and refuse what it cannot mask) on a postgres target that its globs also name.
        for r in rules.iter().filter(|r| {
            (!r.columns.is_empty() || !r.detectors.is_empty())
                && r.targets.iter().any(|g| glob::matches(g, target))
        }) {
            m.rules.push(r.name.clone());
            m.columns.extend(r.columns.iter().cloned());
            m.detectors.extend(r.detectors.iter().copied());
        }
        m.detectors.sort();
        m.detectors.dedup();
        (!m.rules.is_empty()).then(|| Arc::new(m))
    }

    /// Plans the masking of a result with these columns. `covered` says which (table oid, column
    /// number) pairs the catalog matched against the column rules.
    pub fn plan(&self, columns: &[ResultColumn], covered: &Coverage) -> Plan {
        let actions = columns
            .iter()
            .map(|c| {
                let by_rule = (c.table_oid != 0 && covered.contains(c.table_oid, c.column))
                    || self.columns.iter().any(|p| p.matches_output_name(&c.name));
                if by_rule {
                    Action::Replace
                } else if !self.detectors.is_empty() && is_textual(c.type_oid, c.binary) {
                    Action::Detect
                } else {
                    Action::Keep
                }
            })
            .collect();
        Plan {
            actions,
            columns: columns.to_vec(),
            detectors: self.detectors.clone(),
        }
    }

    /// Masks free text (a COPY line, a recorded parameter) with the detectors only.
    pub fn redact_text(&self, text: &[u8]) -> Option<(Vec<u8>, usize)> {
        if self.detectors.is_empty() {
            return None;
        }
        redact(text, &self.detectors)
    }

    /// [`Masker::redact_text`] for text that stays text; the input when nothing matched.
    pub fn redact_str<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        match self.redact_text(text.as_bytes()) {
            Some((masked, _)) => {
                std::borrow::Cow::Owned(String::from_utf8_lossy(&masked).into_owned())
            }
            None => std::borrow::Cow::Borrowed(text),
        }
    }
}

/// A result column as the wire describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultColumn {
    pub name: String,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub binary: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Keep,
    /// Run the detectors over the (textual) value.
    Detect,
    /// Replace the whole value with a neutral value of its type (or NULL).
    Replace,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub columns: Vec<ResultColumn>,
    detectors: Vec<Detector>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaskError {
    #[error("malformed DataRow: {0}")]
    Malformed(&'static str),
    #[error("DataRow has {got} columns, the result has {expected}")]
    ColumnCount { got: usize, expected: usize },
}

/// Splits a DataRow body (after the type byte and length) into its values.
pub fn row_values(body: &[u8]) -> Result<Vec<Option<&[u8]>>, MaskError> {
    if body.len() < 2 {
        return Err(MaskError::Malformed("no column count"));
    }
    let n = i16::from_be_bytes([body[0], body[1]]);
    if n < 0 {
        return Err(MaskError::Malformed("negative column count"));
    }
    let mut at = 2;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len_bytes = body
            .get(at..at + 4)
            .ok_or(MaskError::Malformed("truncated length"))?;
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let v = body
            .get(at..at + len as usize)
            .ok_or(MaskError::Malformed("truncated value"))?;
        out.push(Some(v));
        at += len as usize;
    }
    if at != body.len() {
        return Err(MaskError::Malformed("trailing bytes"));
    }
    Ok(out)
}

impl Plan {
    /// Nothing to do for any column: rows can be forwarded untouched.
    pub fn is_noop(&self) -> bool {
        self.actions.iter().all(|a| *a == Action::Keep)
    }

    /// Masks one DataRow body. Returns the new body and the number of values changed, or `None`
    /// when the row is unchanged.
    pub fn apply(&self, body: &[u8]) -> Result<Option<(Vec<u8>, usize)>, MaskError> {
        let values = row_values(body)?;
        if values.len() != self.actions.len() {
            return Err(MaskError::ColumnCount {
                got: values.len(),
                expected: self.actions.len(),
            });
        }
        let mut changed: Vec<Option<Option<Vec<u8>>>> = vec![None; values.len()];
        let mut count = 0;
        for (i, (v, action)) in values.iter().zip(&self.actions).enumerate() {
            let Some(v) = v else { continue };
            let col = &self.columns[i];
            match action {
                Action::Keep => {}
                Action::Replace => {
                    changed[i] = Some(replacement(col.type_oid, col.binary).map(<[u8]>::to_vec));
                    count += 1;
                }
                Action::Detect => {
                    // Binary jsonb carries a version byte before its text.
                    let skip = usize::from(col.binary && col.type_oid == values::JSONB);
                    if v.len() < skip {
                        continue;
                    }
                    if let Some((masked, n)) = redact(&v[skip..], &self.detectors) {
                        let mut out = v[..skip].to_vec();
                        out.extend_from_slice(&masked);
                        changed[i] = Some(Some(out));
                        count += n;
                    }
                }
            }
        }
        if count == 0 {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(body.len());
        out.extend_from_slice(&body[..2]);
        for (v, c) in values.iter().zip(changed) {
            let v: Option<&[u8]> = match &c {
                Some(new) => new.as_deref(),
                None => *v,
            };
            match v {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        Ok(Some((out, count)))
    }
}

#[cfg(test)]
mod tests;
