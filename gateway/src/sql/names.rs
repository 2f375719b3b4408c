//! Identifiers as PostgreSQL resolves them: unquoted names fold to lower case, quoted ones keep
//! their case.

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

pub fn ident(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

/// `schema.table` (or `table`) as written, each part normalised.
pub fn object(name: &ObjectName) -> String {
    let mut out = String::new();
    for part in &name.0 {
        if !out.is_empty() {
            out.push('.');
        }
        match part {
            ObjectNamePart::Identifier(i) => out.push_str(&ident(i)),
            other => out.push_str(&other.to_string().to_lowercase()),
        }
    }
    out
}
