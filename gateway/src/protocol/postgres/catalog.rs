//! What the gateway asks the server's catalog at the start of each session: which columns the
//! masking rules cover (so that a rule on `users.email` also covers `SELECT email AS e FROM users`:
//! result columns carry their table OID and column number), every column of those tables in order
//! (COPY without a column list), and the session's search path (how unqualified names resolve).
//!
//! The job may own objects in schemas on the search path (an operator `~~` of its own, say), so
//! every function, operator and type in these queries is schema-qualified with `pg_catalog`.

use crate::mask::{CatalogColumn, ColumnPattern, Coverage, CoveredTable};

/// A glob as a LIKE pattern with `\` as escape character (patterns are validated to hold no quotes
/// or backslashes, so they embed safely in a literal; standard_conforming_strings is pinned on).
fn like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 2);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' => {
                out.push('\\');
                out.push(c);
            }
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out
}

/// The catalog query for `patterns`; `None` when there are none. One row per column of every
/// table or view with a covered column: oid, schema, table, column number, name, type, generated,
/// covered.
pub(super) fn query(patterns: &[ColumnPattern]) -> Option<String> {
    if patterns.is_empty() {
        return None;
    }
    let like =
        |column: &str, value: &str| format!("{column} OPERATOR(pg_catalog.~~) '{}'", like(value));
    let conditions: Vec<String> = patterns
        .iter()
        .map(|p| {
            let mut c = vec![like("a.attname", &p.column)];
            if let Some(t) = &p.table {
                c.push(like("c.relname", t));
            }
            if let Some(s) = &p.schema {
                c.push(like("n.nspname", s));
            }
            format!("({})", c.join(" AND "))
        })
        .collect();
    let covered = conditions.join(" OR ");
    Some(format!(
        "SELECT c.oid::pg_catalog.int8, n.nspname::pg_catalog.text, c.relname::pg_catalog.text, \
         a.attnum::pg_catalog.int4, a.attname::pg_catalog.text, a.atttypid::pg_catalog.int8, \
         (a.attgenerated OPERATOR(pg_catalog.<>) '')::pg_catalog.text, ({covered})::pg_catalog.text \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
         AND c.relkind OPERATOR(pg_catalog.=) ANY ('{{r,v,m,p,f}}'::pg_catalog.\"char\"[]) \
         AND c.oid IN (SELECT a.attrelid FROM pg_catalog.pg_attribute a \
           JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
           WHERE a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped AND ({covered})) \
         ORDER BY 1, 4"
    ))
}

/// The schemas unqualified names resolve in, in order (temporary and system schemas included).
pub(super) const SEARCH_PATH: &str =
    "SELECT s::pg_catalog.text FROM pg_catalog.unnest(pg_catalog.current_schemas(true)) AS s";

fn text(v: Option<&Option<bytes::Bytes>>) -> Option<String> {
    let v = v?.as_ref()?;
    std::str::from_utf8(v).ok().map(str::to_string)
}

/// Parses the rows of [`query`].
pub(super) fn coverage(rows: &[Vec<Option<bytes::Bytes>>]) -> Coverage {
    let mut tables: Vec<CoveredTable> = Vec::new();
    for r in rows {
        let parsed = (|| {
            let oid = text(r.first())?.parse::<u32>().ok()?;
            let schema = text(r.get(1))?;
            let name = text(r.get(2))?;
            let column = CatalogColumn {
                attnum: text(r.get(3))?.parse().ok()?,
                name: text(r.get(4))?,
                type_oid: text(r.get(5))?.parse().ok()?,
                generated: text(r.get(6))? == "true",
                covered: text(r.get(7))? == "true",
            };
            Some((oid, schema, name, column))
        })();
        let Some((oid, schema, name, column)) = parsed else {
            continue;
        };
        match tables.last_mut() {
            Some(t) if t.oid == oid => t.columns.push(column),
            _ => tables.push(CoveredTable {
                oid,
                schema,
                name,
                columns: vec![column],
            }),
        }
    }
    Coverage::new(tables)
}

/// Parses the rows of [`SEARCH_PATH`].
pub(super) fn search_path(rows: &[Vec<Option<bytes::Bytes>>]) -> Vec<String> {
    rows.iter().filter_map(|r| text(r.first())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_escaped_like_patterns_with_qualified_operators() {
        assert_eq!(like("*email*"), "%email%");
        assert_eq!(like("card_no?"), "card\\_no_");
        let q = query(&[ColumnPattern::parse("public.users.ssn").unwrap()]).unwrap();
        assert!(q.contains("a.attname OPERATOR(pg_catalog.~~) 'ssn' AND c.relname OPERATOR(pg_catalog.~~) 'users' AND n.nspname OPERATOR(pg_catalog.~~) 'public'"), "{q}");
        assert!(!q.contains(" LIKE "), "{q}");
        assert_eq!(query(&[]), None);
    }

    #[test]
    fn rows_group_into_tables() {
        let b = |s: &str| Some(bytes::Bytes::copy_from_slice(s.as_bytes()));
        let rows = vec![
            vec![
                b("10"),
                b("public"),
                b("users"),
                b("1"),
                b("id"),
                b("23"),
                b("false"),
                b("false"),
            ],
            vec![
                b("10"),
                b("public"),
                b("users"),
                b("2"),
                b("ssn"),
                b("25"),
                b("false"),
                b("true"),
            ],
        ];
        let c = coverage(&rows);
        assert_eq!(c.tables.len(), 1);
        assert_eq!(c.tables[0].columns.len(), 2);
        assert!(c.contains(10, 2));
        assert!(!c.contains(10, 1));
    }
}
