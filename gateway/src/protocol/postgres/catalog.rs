//! Which real columns the masking rules cover, asked of the server's catalog once per session, so
//! that a rule on `users.email` also covers `SELECT email AS e FROM users` (result columns carry
//! their table OID and column number).

use std::collections::HashSet;

use crate::mask::ColumnPattern;

/// A glob as a LIKE pattern with `!` as escape character (patterns are validated to hold no quotes
/// or backslashes, so they embed safely in a literal).
fn like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 2);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '!' => {
                out.push('!');
                out.push(c);
            }
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out
}

/// The catalog query for `patterns`; `None` when there are none.
pub fn query(patterns: &[ColumnPattern]) -> Option<String> {
    if patterns.is_empty() {
        return None;
    }
    let conditions: Vec<String> = patterns
        .iter()
        .map(|p| {
            let mut c = format!("a.attname LIKE '{}' ESCAPE '!'", like(&p.column));
            if let Some(t) = &p.table {
                c.push_str(&format!(" AND c.relname LIKE '{}' ESCAPE '!'", like(t)));
            }
            if let Some(s) = &p.schema {
                c.push_str(&format!(" AND n.nspname LIKE '{}' ESCAPE '!'", like(s)));
            }
            format!("({c})")
        })
        .collect();
    Some(format!(
        "SELECT c.oid::int8, a.attnum::int4 FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','v','m','p','f') \
         AND ({})",
        conditions.join(" OR ")
    ))
}

/// Parses the rows of [`query`].
pub fn covered(rows: &[Vec<Option<bytes::Bytes>>]) -> HashSet<(u32, i16)> {
    rows.iter()
        .filter_map(|r| {
            let oid = std::str::from_utf8(r.first()?.as_ref()?)
                .ok()?
                .parse::<u32>()
                .ok()?;
            let att = std::str::from_utf8(r.get(1)?.as_ref()?)
                .ok()?
                .parse::<i16>()
                .ok()?;
            Some((oid, att))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_escaped_like_patterns() {
        assert_eq!(like("*email*"), "%email%");
        assert_eq!(like("card_no?"), "card!_no_");
        let q = query(&[ColumnPattern::parse("public.users.ssn").unwrap()]).unwrap();
        assert!(q.contains("a.attname LIKE 'ssn' ESCAPE '!' AND c.relname LIKE 'users' ESCAPE '!' AND n.nspname LIKE 'public' ESCAPE '!'"), "{q}");
        assert_eq!(query(&[]), None);
    }
}
