//! Every way the server could read a statement text, and the refusal of texts whose readings
//! disagree.
//!
//! The gateway pins the settings that change how the server lexes SQL (`standard_conforming_strings`
//! on, a client encoding without ASCII bytes inside multibyte characters) and refuses attempts to
//! change them. Server-side code the gateway cannot see (a function calling `set_config`) could
//! still change them, and the server only reports that at the end of the statement, after a
//! pipelining client may have sent the next one. So a text is classified under every reading such a
//! change could give it; when any reading that parses means something else (other statements,
//! kinds, tables, functions, settings or column uses), the text is refused. Readings that do not
//! parse are harmless: the server would reject the text too.

use super::{
    SqlStatement, StatementKind,
    classify::{classify, classify_with},
    encoding::{FOREIGN_READINGS, foreign_reading},
    walk::ColumnFlow,
};

/// Classifies `text` (the decoded form of `raw`, as the session's settings read it) and checks the
/// other readings. Texts over `max_tokens` tokens are refused before parsing (parse trees cost
/// hundreds of bytes per token).
pub fn classify_all_readings(text: &str, raw: &[u8], max_tokens: usize) -> Vec<SqlStatement> {
    if text.len() > max_tokens {
        match pg_query::scan_tokens(text) {
            Ok(tokens) if tokens.len() > max_tokens => {
                return vec![SqlStatement::unparsed(format!(
                    "the statement has {} tokens; the gateway classifies at most {max_tokens} ([targets.postgres] max_statement_tokens)",
                    tokens.len()
                ))];
            }
            Ok(_) => {}
            Err(e) => return vec![SqlStatement::unparsed(e.to_string())],
        }
    }
    let main = classify(text);
    if main.iter().any(|s| s.kind == StatementKind::Unparsed) {
        return main;
    }
    let backslash = text.contains('\\');
    let mut readings: Vec<(String, Vec<SqlStatement>)> = Vec::new();
    if backslash {
        readings.push((
            "standard_conforming_strings were off".into(),
            classify_with(text, true),
        ));
    }
    if !raw.is_ascii() {
        for (name, len) in FOREIGN_READINGS {
            let Some(foreign) = foreign_reading(raw, *len) else {
                continue;
            };
            readings.push((format!("client encoding were {name}"), classify(&foreign)));
            if foreign.contains('\\') {
                readings.push((
                    format!("client encoding were {name} and standard_conforming_strings off"),
                    classify_with(&foreign, true),
                ));
            }
        }
    }
    let shape = skeleton(&main);
    for (what, other) in readings {
        let parses = !other.iter().any(|s| s.kind == StatementKind::Unparsed);
        if parses && skeleton(&other) != shape {
            return vec![SqlStatement::unparsed(format!(
                "the text would mean something else to the server if its {what} (backslashes or multibyte characters next to quotes); the gateway refuses text it cannot read unambiguously: use E'…' strings for backslash escapes, or parameters"
            ))];
        }
    }
    main
}

/// What policy and masking see of a statement, with non-ASCII characters left out of names (the
/// readings differ in how they decode those, which changes nothing the gateway decides on).
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    kind: StatementKind,
    nested: Vec<StatementKind>,
    tables_read: Vec<String>,
    tables_written: Vec<String>,
    functions: Vec<String>,
    settings: Vec<Option<String>>,
    columns: Vec<(String, ColumnFlow)>,
    copy: Option<String>,
    object: Option<String>,
}

fn ascii(s: &str) -> String {
    s.chars().filter(char::is_ascii).collect()
}

fn skeleton(statements: &[SqlStatement]) -> Vec<Shape> {
    statements
        .iter()
        .map(|s| {
            let names = |v: &[String]| v.iter().map(|n| ascii(n)).collect::<Vec<_>>();
            let mut columns: Vec<(String, ColumnFlow)> =
                s.columns.iter().map(|c| (ascii(&c.name), c.flow)).collect();
            columns.sort();
            Shape {
                kind: s.kind,
                nested: s.nested_kinds.clone(),
                tables_read: names(&s.tables_read),
                tables_written: names(&s.tables_written),
                functions: names(&s.functions),
                settings: s
                    .settings
                    .iter()
                    .map(|c| c.name.as_deref().map(ascii))
                    .collect(),
                columns,
                copy: s.copy.as_ref().map(|c| {
                    format!(
                        "{:?} {:?} {:?} {:?}",
                        c.direction, c.endpoint, c.format, c.delimiter
                    )
                }),
                object: s.object.as_ref().map(|o| ascii(&format!("{o:?}"))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(v: &[SqlStatement]) -> Vec<StatementKind> {
        v.iter().map(|s| s.kind).collect()
    }

    #[test]
    fn a_backslash_that_ends_a_string_only_with_standard_strings_off_is_refused() {
        let sql = r"SELECT 'a\', '; DELETE FROM users WHERE id=1; --'";
        // The pinned reading: one SELECT of two strings.
        assert_eq!(kinds(&classify(sql)), [StatementKind::Select]);
        // With standard_conforming_strings off: a SELECT and a DELETE.
        assert_eq!(
            kinds(&classify_with(sql, true)),
            [StatementKind::Select, StatementKind::Delete]
        );
        let v = classify_all_readings(sql, sql.as_bytes(), 100_000);
        assert_eq!(kinds(&v), [StatementKind::Unparsed]);
        assert!(
            v[0].error
                .as_deref()
                .unwrap()
                .contains("standard_conforming_strings")
        );
    }

    #[test]
    fn backslashes_that_read_the_same_either_way_are_fine() {
        for sql in [
            r"SELECT * FROM t WHERE name ~ '\d+'",
            r"SELECT E'it\'s', 'C:\temp'",
            r"SELECT $$a\$$",
        ] {
            let v = classify_all_readings(sql, sql.as_bytes(), 100_000);
            assert_eq!(kinds(&v), [StatementKind::Select], "{sql}: {v:?}");
        }
    }

    #[test]
    fn a_multibyte_character_that_swallows_a_backslash_is_refused() {
        let sql = "SELECT E'中\\'; DELETE FROM users; --'";
        assert_eq!(kinds(&classify(sql)), [StatementKind::Select]);
        let v = classify_all_readings(sql, sql.as_bytes(), 100_000);
        assert_eq!(kinds(&v), [StatementKind::Unparsed], "{v:?}");
        assert!(v[0].error.as_deref().unwrap().contains("client encoding"));
        // Plain non-ASCII data is fine.
        let sql = "SELECT 'Müller', 'café' FROM users WHERE city = 'Zürich'";
        assert_eq!(
            kinds(&classify_all_readings(sql, sql.as_bytes(), 100_000)),
            [StatementKind::Select]
        );
    }

    #[test]
    fn texts_with_too_many_tokens_are_refused_before_parsing() {
        let sql = format!("SELECT 1{}", ",1".repeat(2000));
        let v = classify_all_readings(&sql, sql.as_bytes(), 1000);
        assert_eq!(kinds(&v), [StatementKind::Unparsed]);
        assert!(
            v[0].error
                .as_deref()
                .unwrap()
                .contains("max_statement_tokens")
        );
        assert_eq!(
            kinds(&classify_all_readings(&sql, sql.as_bytes(), 10_000)),
            [StatementKind::Select]
        );
    }
}
