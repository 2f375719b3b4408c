//! JSON as dockerd reads it, so that what the gateway checks is what the daemon applies. Go's
//! `encoding/json` matches object keys to struct fields case-insensitively (with Unicode folding:
//! the Kelvin sign `K` matches `k`, the long `ſ` matches `s`), and the last of duplicate keys
//! wins. So: duplicate keys are refused at every level; keys of objects read as structs must be
//! ASCII and match a known field ignoring ASCII case (two spellings of one field are duplicates);
//! a key the gateway does not know is refused; and the body forwarded is re-serialized from what
//! was checked, with each field under its canonical name.

use serde_json::{Map, Value};

use super::ApiError;

/// Parses a request body: JSON without duplicate keys (an empty body is `null`).
pub fn parse(body: &[u8]) -> Result<Value, ApiError> {
    crate::strict_json::parse(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| ApiError::Body(e.to_string()))
}

/// An object read as a Go struct: fields taken by their canonical name (ignoring ASCII case),
/// and whatever is left at the end refused.
pub struct Fields {
    /// What the object is (for errors): `HostConfig`, `Mounts[2]`, ….
    what: String,
    entries: Vec<(String, Value)>,
}

impl Fields {
    /// `null` reads as an empty object (Go leaves the struct at its zero value).
    pub fn of(value: Value, what: impl Into<String>) -> Result<Fields, ApiError> {
        let what = what.into();
        let map = match value {
            Value::Null => Map::new(),
            Value::Object(m) => m,
            other => {
                return Err(ApiError::Body(format!(
                    "{what} must be an object, not {}",
                    kind(&other)
                )));
            }
        };
        let mut entries: Vec<(String, Value)> = Vec::with_capacity(map.len());
        for (key, value) in map {
            if !key.is_ascii() {
                return Err(ApiError::Body(format!(
                    "{what}: field name {key:?} is not ASCII (the daemon would match it to a field by Unicode case folding)"
                )));
            }
            if let Some((other, _)) = entries.iter().find(|(k, _)| k.eq_ignore_ascii_case(&key)) {
                return Err(ApiError::Body(format!(
                    "{what}: {other:?} and {key:?} are the same field to the daemon"
                )));
            }
            entries.push((key, value));
        }
        Ok(Fields { what, entries })
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// The value of field `name` (any ASCII case), taken out; `None` when absent.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        let at = self
            .entries
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(name))?;
        Some(self.entries.remove(at).1)
    }

    /// Moves field `name`, unchanged, into `out` under its canonical name.
    pub fn pass(&mut self, name: &'static str, out: &mut Map<String, Value>) {
        if let Some(v) = self.take(name) {
            out.insert(name.to_string(), v);
        }
    }

    /// Moves every field of `names` unchanged.
    pub fn pass_all(&mut self, names: &[&'static str], out: &mut Map<String, Value>) {
        for name in names {
            self.pass(name, out);
        }
    }

    /// Refuses the fields nobody took.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.entries.first() {
            None => Ok(()),
            Some((key, _)) => Err(ApiError::Body(format!(
                "{}: unknown field {key:?}; the gateway refuses what it cannot account for",
                self.what
            ))),
        }
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string field (`null` and absent: empty).
pub fn string(v: Option<&Value>, what: &str) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ApiError::Body(format!(
            "{what} must be a string, not {}",
            kind(other)
        ))),
    }
}

/// A boolean field (`null` and absent: false).
pub fn boolean(v: Option<&Value>, what: &str) -> Result<bool, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::Body(format!(
            "{what} must be a boolean, not {}",
            kind(other)
        ))),
    }
}

/// A list of strings (`null` and absent: empty).
pub fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::Body(format!(
                    "{what}[{i}] must be a string, not {}",
                    kind(other)
                ))),
            })
            .collect(),
        Some(other) => Err(ApiError::Body(format!(
            "{what} must be a list of strings, not {}",
            kind(other)
        ))),
    }
}

/// A Go `strslice` (`Cmd`, `Entrypoint`): a string or a list of strings.
pub fn command(v: Option<&Value>, what: &str) -> Result<Vec<String>, ApiError> {
    match v {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        other => strings(other, what),
    }
}

/// Whether a list or object field holds anything (`null`, absent, `[]` and `{}` do not).
pub fn non_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

/// A map of string to string (`Labels`, `DriverOpts`, …): keys are data, not field names.
pub fn string_map(v: Option<&Value>, what: &str) -> Result<Map<String, Value>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if !v.is_string() {
                    return Err(ApiError::Body(format!(
                        "{what}[{k:?}] must be a string, not {}",
                        kind(v)
                    )));
                }
            }
            Ok(m.clone())
        }
        Some(other) => Err(ApiError::Body(format!(
            "{what} must be an object, not {}",
            kind(other)
        ))),
    }
}
