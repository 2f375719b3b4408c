//! Masking of `COPY … TO STDOUT` data: one CopyData message per row, text or CSV. Column rules
//! need the column list (the statement names it); detectors run over the whole row.

use crate::{
    mask::{ColumnPattern, Masker},
    sql::{CopyFormat, CopySpec, SqlStatement},
};

#[derive(Debug, Clone)]
pub struct CopyPlan {
    csv: bool,
    delimiter: u8,
    /// Positions of columns replaced whole.
    replace: Vec<usize>,
}

/// What to do about a COPY out of `statement` under `masker`: a plan, or the reason it cannot be
/// masked (the gateway then refuses the statement).
pub fn plan(
    masker: &Masker,
    statement: &SqlStatement,
    spec: &CopySpec,
) -> Result<CopyPlan, String> {
    if spec.format == CopyFormat::Binary {
        return Err("binary COPY output cannot be masked; use text or CSV format".into());
    }
    let mut replace = Vec::new();
    if !masker.columns.is_empty() {
        let table = statement.tables_read.first().cloned();
        let (Some(table), false) = (table, spec.columns.is_empty()) else {
            return Err(
                "COPY of a query or of all columns cannot be checked against the column masking rules; name the columns: COPY table (col, …) TO STDOUT".into(),
            );
        };
        let (schema, table) = match table.rsplit_once('.') {
            Some((s, t)) => (s.to_string(), t.to_string()),
            None => ("public".to_string(), table),
        };
        for (i, c) in spec.columns.iter().enumerate() {
            if masker
                .columns
                .iter()
                .any(|p: &ColumnPattern| p.matches(&schema, &table, c))
            {
                replace.push(i);
            }
        }
    }
    Ok(CopyPlan {
        csv: spec.format == CopyFormat::Csv,
        delimiter: u8::try_from(spec.delimiter).unwrap_or(b'\t'),
        replace,
    })
}

/// Splits one row into field ranges, honouring CSV quotes.
fn fields(line: &[u8], delimiter: u8, csv: bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, &b) in line.iter().enumerate() {
        if csv && b == b'"' {
            quoted = !quoted;
        } else if b == delimiter && !quoted {
            out.push((start, i));
            start = i + 1;
        }
    }
    let mut end = line.len();
    if line.ends_with(b"\n") {
        end -= 1;
        if line[..end].ends_with(b"\r") {
            end -= 1;
        }
    }
    out.push((start, end.max(start)));
    out
}

impl CopyPlan {
    /// Detectors over the whole row, no column replaced.
    pub fn detectors_only() -> Self {
        CopyPlan {
            csv: false,
            delimiter: b'\t',
            replace: Vec::new(),
        }
    }

    /// Masks one CopyData payload; `None` when unchanged.
    pub fn apply(&self, masker: &Masker, data: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut count = 0;
        let mut row: Option<Vec<u8>> = None;
        if !self.replace.is_empty() {
            let f = fields(data, self.delimiter, self.csv);
            let mut out = Vec::with_capacity(data.len());
            let mut at = 0;
            for (i, (s, e)) in f.iter().enumerate() {
                out.extend_from_slice(&data[at..*s]);
                let value = &data[*s..*e];
                let null = if self.csv {
                    value.is_empty()
                } else {
                    value == b"\\N"
                };
                if self.replace.contains(&i) && !null {
                    out.extend_from_slice(b"[masked]");
                    count += 1;
                } else {
                    out.extend_from_slice(value);
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
    use crate::{mask::Detector, sql::classify};

    fn masker(columns: &[&str]) -> Masker {
        Masker {
            rules: vec!["t".into()],
            columns: columns
                .iter()
                .map(|c| ColumnPattern::parse(c).unwrap())
                .collect(),
            detectors: vec![Detector::Email],
        }
    }

    #[test]
    fn text_and_csv_rows() {
        let s = &classify("COPY users (id, ssn, note) TO STDOUT")[0];
        let m = masker(&["users.ssn"]);
        let p = plan(&m, s, s.copy.as_ref().unwrap()).unwrap();
        let (out, n) = p.apply(&m, b"1\t123-45-6789\tmail x@y.org\n").unwrap();
        assert_eq!(out, b"1\t[masked]\tmail [masked:email]\n");
        assert_eq!(n, 2);
        assert!(p.apply(&m, b"2\t\\N\thello\n").is_none());

        let s = &classify("COPY users (note, ssn) TO STDOUT WITH (FORMAT csv)")[0];
        let p = plan(&m, s, s.copy.as_ref().unwrap()).unwrap();
        let (out, _) = p.apply(&m, b"\"a,b\",123\n").unwrap();
        assert_eq!(out, b"\"a,b\",[masked]\n");
    }

    #[test]
    fn unmaskable_copies_are_refused() {
        let m = masker(&["*ssn*"]);
        for sql in [
            "COPY users TO STDOUT",
            "COPY (SELECT * FROM users) TO STDOUT",
            "COPY users (id) TO STDOUT WITH (FORMAT binary)",
        ] {
            let s = &classify(sql)[0];
            assert!(plan(&m, s, s.copy.as_ref().unwrap()).is_err(), "{sql}");
        }
        // Detectors alone work on any text COPY.
        let m = Masker {
            columns: vec![],
            ..masker(&[])
        };
        let s = &classify("COPY users TO STDOUT")[0];
        assert!(plan(&m, s, s.copy.as_ref().unwrap()).is_ok());
    }
}
