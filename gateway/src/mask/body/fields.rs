//! `json_fields`: the members of a JSON body whose values are replaced whole.
//!
//! An entry is a key glob (`ssn`, `*token*`: every object member whose key matches, at any depth)
//! or a path from the top-level value (`users[*].ssn`, `$.data.items[0].card`, `[*].email`), whose
//! key steps are globs too. Keys are compared after JSON unescaping and case-insensitively, so
//! `"\u0053SN"` is the key `ssn`.

use std::{borrow::Cow, fmt};

use globset::{GlobMatcher, GlobSet, GlobSetBuilder};

/// One `json_fields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonField {
    /// Any object member whose key matches this glob (lower case), at any depth.
    Key(String),
    /// A path from the top-level value.
    Path(Vec<Step>),
}

/// One step of a [`JsonField::Path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object member whose key matches this glob (lower case).
    Key(String),
    /// `[*]`: any element of an array.
    AnyIndex,
    /// `[N]`: element N (from 0) of an array.
    Index(u64),
}

impl JsonField {
    pub fn parse(text: &str) -> Result<JsonField, String> {
        if text.is_empty() {
            return Err(
                "is empty: expected a key glob (ssn, *token*) or a path (users[*].ssn)".into(),
            );
        }
        if let Some(c) = text
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'))
        {
            return Err(format!(
                "{text:?}: {c:?} cannot be written in a field pattern (`?` or `*` match it)"
            ));
        }
        let is_path = text.starts_with('$') || text.contains(['.', '[', ']']);
        if !is_path {
            return key_glob(text).map(JsonField::Key);
        }
        let rest = match text.strip_prefix('$') {
            None => text,
            Some("") => {
                return Err(format!(
                    "{text:?} names the whole body; name the members to mask (`$.a`, `[*].b`)"
                ));
            }
            Some(r) if r.starts_with('[') => r,
            Some(r) => r.strip_prefix('.').ok_or_else(|| {
                format!("{text:?}: `$` is followed by `.` or `[` (as in `$.users[*].ssn`)")
            })?,
        };
        parse_path(text, rest).map(JsonField::Path)
    }
}

fn key_glob(name: &str) -> Result<String, String> {
    let lower = name.to_lowercase();
    // Everything but `*` and `?` is escaped for globset, so this cannot fail; a pattern that did
    // would silently match nothing, so it is refused instead.
    crate::glob::glob(&lower)
        .map(|_| lower.clone())
        .ok_or_else(|| format!("{name:?} is not a valid glob"))
}

fn parse_path(text: &str, rest: &str) -> Result<Vec<Step>, String> {
    let b = rest.as_bytes();
    let mut steps = Vec::new();
    let mut i = 0;
    let mut first = true;
    loop {
        let start = i;
        while i < b.len() && !matches!(b[i], b'.' | b'[' | b']') {
            i += 1;
        }
        if i > start {
            steps.push(Step::Key(key_glob(&rest[start..i])?));
        } else if !(first && b.get(i) == Some(&b'[')) {
            return Err(format!("{text:?} has an empty step"));
        }
        while b.get(i) == Some(&b'[') {
            let close = rest[i..]
                .find(']')
                .map(|c| i + c)
                .ok_or_else(|| format!("{text:?}: `[` without `]`"))?;
            let inner = &rest[i + 1..close];
            steps.push(match inner {
                "*" => Step::AnyIndex,
                n if !n.is_empty() && n.bytes().all(|d| d.is_ascii_digit()) => Step::Index(
                    n.parse()
                        .map_err(|_| format!("{text:?}: index {n} is too large"))?,
                ),
                _ => {
                    return Err(format!(
                        "{text:?}: [{inner}] is not an array step (`[*]` or `[N]`)"
                    ));
                }
            });
            i = close + 1;
        }
        match b.get(i) {
            None => return Ok(steps),
            Some(b'.') if i + 1 < b.len() => {
                i += 1;
                first = false;
            }
            Some(b'.') => return Err(format!("{text:?} has an empty step")),
            Some(_) => {
                return Err(format!(
                    "{text:?}: unexpected {:?} (steps are separated by `.`)",
                    rest[i..].chars().next().unwrap_or_default()
                ));
            }
        }
    }
}

impl fmt::Display for JsonField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonField::Key(g) => f.write_str(g),
            JsonField::Path(steps) => {
                f.write_str("$")?;
                for s in steps {
                    match s {
                        Step::Key(g) => write!(f, ".{g}")?,
                        Step::AnyIndex => f.write_str("[*]")?,
                        Step::Index(n) => write!(f, "[{n}]")?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// How far one path has matched: (path, steps matched).
pub(super) type PathState = (u32, u32);

/// What the value of a member or element gets.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Replaced whole.
    Mask,
    /// Kept; paths that go on inside it (if it is a container).
    Keep(Vec<PathState>),
}

enum CompiledStep {
    Key(GlobMatcher),
    AnyIndex,
    Index(u64),
}

/// `json_fields` compiled once per body masker.
pub(super) struct FieldMatcher {
    anywhere: GlobSet,
    paths: Vec<Vec<CompiledStep>>,
}

impl FieldMatcher {
    pub(super) fn new(fields: &[JsonField]) -> FieldMatcher {
        let mut anywhere = GlobSetBuilder::new();
        let mut paths = Vec::new();
        let compile = |g: &str| crate::glob::glob(g).map(|g| g.compile_matcher());
        for f in fields {
            match f {
                JsonField::Key(g) => {
                    if let Some(glob) = crate::glob::glob(g) {
                        anywhere.add(glob);
                    }
                }
                JsonField::Path(steps) => paths.push(
                    steps
                        .iter()
                        .filter_map(|s| match s {
                            Step::Key(g) => compile(g).map(CompiledStep::Key),
                            Step::AnyIndex => Some(CompiledStep::AnyIndex),
                            Step::Index(n) => Some(CompiledStep::Index(*n)),
                        })
                        .collect(),
                ),
            }
        }
        FieldMatcher {
            anywhere: anywhere.build().unwrap_or_else(|_| GlobSet::empty()),
            paths,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.anywhere.is_empty() && self.paths.is_empty()
    }

    /// The paths active at a top-level value.
    pub(super) fn root(&self) -> Vec<PathState> {
        (0..self.paths.len() as u32)
            .filter(|&p| !self.paths[p as usize].is_empty())
            .map(|p| (p, 0))
            .collect()
    }

    /// The member `key` (unescaped) of an object reached with `states`.
    pub(super) fn member(&self, states: &[PathState], key: &str) -> Next {
        if self.is_empty() {
            return Next::Keep(Vec::new());
        }
        let key: Cow<str> = if key.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80) {
            Cow::Owned(key.to_lowercase())
        } else {
            Cow::Borrowed(key)
        };
        if self.anywhere.is_match(key.as_ref()) {
            return Next::Mask;
        }
        self.advance(states, |step| match step {
            CompiledStep::Key(g) => g.is_match(key.as_ref()),
            _ => false,
        })
    }

    /// Element `index` of an array reached with `states`.
    pub(super) fn element(&self, states: &[PathState], index: u64) -> Next {
        self.advance(states, |step| match step {
            CompiledStep::AnyIndex => true,
            CompiledStep::Index(n) => *n == index,
            CompiledStep::Key(_) => false,
        })
    }

    fn advance(&self, states: &[PathState], matches: impl Fn(&CompiledStep) -> bool) -> Next {
        let mut next = Vec::new();
        for &(p, s) in states {
            let path = &self.paths[p as usize];
            if matches(&path[s as usize]) {
                if s as usize + 1 == path.len() {
                    return Next::Mask;
                }
                next.push((p, s + 1));
            }
        }
        Next::Keep(next)
    }
}
