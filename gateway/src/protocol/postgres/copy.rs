//! Masking of `COPY … TO STDOUT` data: one CopyData message per row, text or CSV, split into
//! fields exactly as PostgreSQL writes them (text: backslash escapes, so an escaped delimiter is
//! data; CSV: the statement's QUOTE and ESCAPE characters). Column rules need the column order:
//! the statement's column list, or the table's columns from the catalog. The plan is checked
//! against the server's CopyOutResponse before any row passes.

use crate::{
    mask::{Coverage, Masker, replacement},
    sql::{CopyFormat, CopySpec},
};

#[derive(Debug, Clone)]
pub(super) struct CopyPlan {
    format: CopyFormat,
    delimiter: u8,
    quote: u8,
    escape: u8,
    /// The first row holds column names.
    header: bool,
    /// Per column: the replacement text of a covered column, `None` to keep it.
    replace: Vec<Option<&'static [u8]>>,
    rows_seen: u64,
}

/// What to do about a COPY out when masking applies: a plan, or the reason it cannot be masked (the
/// gateway then refuses the statement).
pub(super) fn plan(coverage: &Coverage, spec: &CopySpec) -> Result<CopyPlan, String> {
    if spec.format == CopyFormat::Binary {
        return Err("binary COPY output cannot be masked; use text or CSV format".into());
    }
    if let Some(e) = &spec.encoding {
        return Err(format!(
            "COPY with ENCODING {e:?} cannot be masked (the gateway splits rows in the session's encoding); leave ENCODING out"
        ));
    }
    if !spec.unknown_options.is_empty() {
        return Err(format!(
            "COPY option(s) {} are unknown to the gateway, so it cannot mask the output",
            spec.unknown_options.join(", ")
        ));
    }
    let (Some(delimiter), Some(quote), Some(escape)) = (spec.delimiter, spec.quote, spec.escape)
    else {
        return Err("COPY delimiter, quote and escape must be single bytes".into());
    };
    if !delimiter.is_ascii() || !quote.is_ascii() || !escape.is_ascii() {
        return Err("COPY delimiter, quote and escape must be ASCII".into());
    }
    let mut replace = Vec::new();
    if !coverage.is_empty() {
        let Some(table) = &spec.table else {
            // The walker refuses queries that touch covered columns; any other query's output
            // has no covered column.
            return Ok(CopyPlan::new(spec, delimiter, quote, escape, Vec::new()));
        };
        if let Some(t) = coverage.table(table) {
            let names: Vec<&str> = if spec.columns.is_empty() {
                t.columns
                    .iter()
                    .filter(|c| !c.generated)
                    .map(|c| c.name.as_str())
                    .collect()
            } else {
                spec.columns.iter().map(String::as_str).collect()
            };
            for name in names {
                let column = t.columns.iter().find(|c| c.name == name);
                replace.push(
                    column
                        .filter(|c| c.covered)
                        .map(|c| replacement(c.type_oid, false).unwrap_or(b"[masked]")),
                );
            }
        }
    }
    Ok(CopyPlan::new(spec, delimiter, quote, escape, replace))
}

impl CopyPlan {
    fn new(
        spec: &CopySpec,
        delimiter: u8,
        quote: u8,
        escape: u8,
        replace: Vec<Option<&'static [u8]>>,
    ) -> Self {
        CopyPlan {
            format: spec.format,
            delimiter,
            quote,
            escape,
            header: spec.header,
            replace,
            rows_seen: 0,
        }
    }

    /// Detectors over the whole row, no column replaced.
    pub(super) fn detectors_only() -> Self {
        CopyPlan {
            format: CopyFormat::Text,
            delimiter: b'\t',
            quote: b'"',
            escape: b'"',
            header: false,
            replace: Vec::new(),
            rows_seen: 0,
        }
    }

    /// Checks the plan against the server's CopyOutResponse (overall format, column count).
    pub(super) fn matches(&self, binary: bool, columns: usize) -> Result<(), String> {
        if binary {
            return Err("the server sends binary COPY data, which cannot be masked".into());
        }
        if !self.replace.is_empty() && self.replace.len() != columns {
            return Err(format!(
                "the server sends {columns} COPY columns, the gateway expected {}",
                self.replace.len()
            ));
        }
        Ok(())
    }

    /// Field ranges of one row, as PostgreSQL writes them.
    fn fields(&self, line: &[u8]) -> Vec<(usize, usize)> {
        let mut end = line.len();
        if line.ends_with(b"\n") {
            end -= 1;
            if line[..end].ends_with(b"\r") {
                end -= 1;
            }
        }
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        let mut quoted = false;
        while i < end {
            let b = line[i];
            if self.format == CopyFormat::Csv {
                if quoted {
                    if b == self.escape
                        && i + 1 < end
                        && (line[i + 1] == self.quote || line[i + 1] == self.escape)
                        && self.escape != self.quote
                    {
                        i += 2;
                        continue;
                    }
                    if b == self.quote {
                        // A doubled quote inside quotes is a quote character.
                        if self.escape == self.quote
                            && line.get(i + 1) == Some(&self.quote)
                            && i + 1 < end
                        {
                            i += 2;
                            continue;
                        }
                        quoted = false;
                    }
                } else if b == self.quote {
                    quoted = true;
                } else if b == self.delimiter {
                    out.push((start, i));
                    start = i + 1;
                }
            } else if b == b'\\' {
                // Text format: the next byte is escaped (an escaped delimiter is data).
                i += 2;
                continue;
            } else if b == self.delimiter {
                out.push((start, i));
                start = i + 1;
            }
            i += 1;
        }
        out.push((start, end.max(start)));
        out
    }

    /// Masks one CopyData payload; `None` when unchanged.
    pub(super) fn apply(&mut self, masker: &Masker, data: &[u8]) -> Option<(Vec<u8>, usize)> {
        self.rows_seen += 1;
        if self.header && self.rows_seen == 1 {
            return None;
        }
        let mut count = 0;
        let mut row: Option<Vec<u8>> = None;
        if self.replace.iter().any(Option::is_some) {
            let f = self.fields(data);
            let mut out = Vec::with_capacity(data.len());
            let mut at = 0;
            for (i, (s, e)) in f.iter().enumerate() {
                out.extend_from_slice(&data[at..*s]);
                let value = &data[*s..*e];
                let null = match self.format {
                    CopyFormat::Csv => value.is_empty(),
                    _ => value == b"\\N",
                };
                match self.replace.get(i).copied().flatten() {
                    Some(r) if !null => {
                        out.extend_from_slice(r);
                        count += 1;
                    }
                    _ => out.extend_from_slice(value),
                }
                at = *e;
            }
            out.extend_from_slice(&data[at..]);
            row = Some(out);
        }
        let current = row.as_deref().unwrap_or(data);
        if let Some((masked, n)) = masker.redact_text(current) {
            return Some((masked, count + n));
        }
        row.filter(|_| count > 0).map(|r| (r, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        mask::{CatalogColumn, ColumnPattern, CoveredTable, Detector},
        sql::classify,
    };

    fn masker() -> Masker {
        Masker {
            rules: vec!["t".into()],
            columns: vec![ColumnPattern::parse("users.ssn").unwrap()],
            detectors: vec![Detector::Email],
        }
    }

    fn coverage() -> Coverage {
        let col = |attnum, name: &str, type_oid, covered| CatalogColumn {
            attnum,
            name: name.into(),
            type_oid,
            generated: false,
            covered,
        };
        Coverage::new(vec![CoveredTable {
            oid: 10,
            schema: "public".into(),
            name: "users".into(),
            columns: vec![
                col(1, "id", 23, false),
                col(2, "ssn", 25, true),
                col(3, "note", 25, false),
            ],
        }])
    }

    fn plan_for(sql: &str) -> Result<CopyPlan, String> {
        let s = &classify(sql)[0];
        plan(&coverage(), s.copy.as_ref().unwrap())
    }

    #[test]
    fn text_and_csv_rows() {
        let m = masker();
        let mut p = plan_for("COPY users (id, ssn, note) TO STDOUT").unwrap();
        let (out, n) = p.apply(&m, b"1\t123-45-6789\tmail x@y.org\n").unwrap();
        assert_eq!(out, b"1\t[masked]\tmail [masked:email]\n");
        assert_eq!(n, 2);
        assert!(p.apply(&m, b"2\t\\N\thello\n").is_none());

        let mut p = plan_for("COPY users (note, ssn) TO STDOUT WITH (FORMAT csv)").unwrap();
        let (out, _) = p.apply(&m, b"\"a,b\",123\n").unwrap();
        assert_eq!(out, b"\"a,b\",[masked]\n");
    }

    #[test]
    fn all_columns_come_from_the_catalog() {
        let m = masker();
        let mut p = plan_for("COPY users TO STDOUT").unwrap();
        assert!(p.matches(false, 3).is_ok());
        assert!(p.matches(false, 2).is_err());
        let (out, _) = p.apply(&m, b"1\t123-45-6789\tn\n").unwrap();
        assert_eq!(out, b"1\t[masked]\tn\n");
    }

    #[test]
    fn escaped_delimiters_and_quotes_do_not_shift_columns() {
        let m = masker();
        // Text format with a space delimiter: `a\ b` is one field holding a space.
        let mut p = plan_for("COPY users (note, ssn) TO STDOUT (DELIMITER ' ')").unwrap();
        let (out, _) = p.apply(&m, b"a\\ b 123-45-6789\n").unwrap();
        assert_eq!(out, b"a\\ b [masked]\n");
        // CSV with its own quote and escape characters.
        let mut p =
            plan_for("COPY users (note, ssn) TO STDOUT (FORMAT csv, QUOTE '''', ESCAPE '\\')")
                .unwrap();
        let (out, _) = p.apply(&m, b"'it\\'s, x',123-45-6789\n").unwrap();
        assert_eq!(out, b"'it\\'s, x',[masked]\n");
        // A header line is left alone.
        let mut p = plan_for("COPY users (note, ssn) TO STDOUT (FORMAT csv, HEADER)").unwrap();
        assert!(p.apply(&m, b"note,ssn\n").is_none());
        assert!(p.apply(&m, b"n,123-45-6789\n").is_some());
    }

    #[test]
    fn unmaskable_copies_are_refused() {
        for sql in [
            "COPY users (id) TO STDOUT WITH (FORMAT binary)",
            "COPY users TO STDOUT (ENCODING 'SJIS')",
        ] {
            assert!(plan_for(sql).is_err(), "{sql}");
        }
    }
}
