//! Which tables and columns column masking covers (read from the server's catalog at the start of
//! each session), and whether a statement only lets covered values reach the client where result
//! masking sees them.
//!
//! Result masking works on what the server says about each result column: its table and column
//! number. The server says that only for a plain column selected at the top level of a query. A
//! covered column used any other way (in an expression, a cast, an aggregate, a subquery's output,
//! RETURNING, a whole-row reference, a `*` inside a subquery, or written into another table)
//! would come back unattributed, so such statements are refused. Columns used only to filter, join,
//! group or order are allowed: their values do not come back (what they reveal by inference is
//! out of scope; deny the table for secrecy).

use std::collections::HashSet;

use crate::sql::{ColumnFlow, RelationRef, SqlStatement};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub attnum: i16,
    pub name: String,
    pub type_oid: u32,
    /// A generated column (not part of `COPY table TO` without a column list).
    pub generated: bool,
    /// A column rule covers it.
    pub covered: bool,
}

/// A table (or view) with at least one covered column, with all its columns in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoveredTable {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<CatalogColumn>,
}

impl CoveredTable {
    fn covered_names(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .filter(|c| c.covered)
            .map(|c| c.name.as_str())
    }

    fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.name == name)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Coverage {
    pub tables: Vec<CoveredTable>,
    covered: HashSet<(u32, i16)>,
}

impl Coverage {
    pub fn new(tables: Vec<CoveredTable>) -> Coverage {
        let covered = tables
            .iter()
            .flat_map(|t| {
                t.columns
                    .iter()
                    .filter(|c| c.covered)
                    .map(move |c| (t.oid, c.attnum))
            })
            .collect();
        Coverage { tables, covered }
    }

    /// Whether a result column (table oid, column number) is covered.
    pub fn contains(&self, table_oid: u32, column: i16) -> bool {
        self.covered.contains(&(table_oid, column))
    }

    pub fn len(&self) -> usize {
        self.covered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.covered.is_empty()
    }

    /// The covered tables a relation may name. An unqualified name could resolve to any of them
    /// (the search path can change behind the gateway's back): all are taken.
    fn resolve<'a>(&'a self, schema: Option<&str>, name: &str) -> Vec<&'a CoveredTable> {
        self.tables
            .iter()
            .filter(|t| t.name == name && schema.is_none_or(|s| s == t.schema))
            .collect()
    }

    /// The covered table a COPY names, if any (`schema.table` or `table`).
    pub fn table(&self, qualified: &str) -> Option<&CoveredTable> {
        let (schema, name) = match qualified.rsplit_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, qualified),
        };
        let mut found = self.resolve(schema, name);
        found.sort_by_key(|t| t.oid);
        found.first().copied()
    }

    fn named<'a>(
        &'a self,
        relations: &'a [RelationRef],
    ) -> Vec<(&'a RelationRef, &'a CoveredTable)> {
        relations
            .iter()
            .flat_map(|r| {
                self.resolve(r.schema.as_deref(), &r.name)
                    .into_iter()
                    .map(move |t| (r, t))
            })
            .collect()
    }

    /// Whether the statement names a covered table at all (its error and notice texts may then
    /// quote covered values).
    pub fn reads_covered(&self, s: &SqlStatement) -> bool {
        !self.is_empty() && !self.named(&s.relations).is_empty()
    }

    /// `Err(why)` when a covered value could reach the client where result masking cannot see it.
    pub fn check(&self, s: &SqlStatement) -> Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        let named = self.named(&s.relations);
        if named.is_empty() {
            return Ok(());
        }
        let label = |t: &CoveredTable| format!("{}.{}", t.schema, t.name);
        // Names that refer to a covered table's rows: its alias, or its name when unaliased.
        let row_names = |q: &str| -> Vec<&CoveredTable> {
            named
                .iter()
                .filter(|(r, _)| r.alias.as_deref().unwrap_or(&r.name) == q)
                .map(|(_, t)| *t)
                .collect()
        };
        for c in &s.columns {
            if c.flow != ColumnFlow::Other {
                // A star at the top level is expanded by the server into attributed columns; a
                // whole-row value in a predicate is never returned.
                if c.flow == ColumnFlow::Output
                    && !c.is_star()
                    && c.qualifier.is_empty()
                    && let Some(t) = row_names(&c.name)
                        .into_iter()
                        .find(|t| !t.has_column(&c.name))
                {
                    return Err(format!(
                        "{} is a whole-row reference to {}, which has masked columns; select its columns instead",
                        c.name,
                        label(t)
                    ));
                }
                continue;
            }
            let qualifier = c.qualifier.last().map(String::as_str);
            let tables: Vec<&CoveredTable> = match qualifier {
                Some(q) => row_names(q),
                None => named.iter().map(|(_, t)| *t).collect(),
            };
            if c.is_star() {
                if let Some(t) = tables.first() {
                    return Err(format!(
                        "a * over {} (which has masked columns) is used inside a subquery, an expression or a write; select the columns at the top level of the query",
                        label(t)
                    ));
                }
                continue;
            }
            // A bare name of a covered table: the whole row.
            if qualifier.is_none()
                && let Some(t) = row_names(&c.name)
                    .into_iter()
                    .find(|t| !t.has_column(&c.name))
            {
                return Err(format!(
                    "{} is a whole-row reference to {}, which has masked columns; select its columns instead",
                    c.name,
                    label(t)
                ));
            }
            if let Some(t) = tables
                .iter()
                .find(|t| t.covered_names().any(|n| n == c.name))
            {
                return Err(format!(
                    "column {}.{} is masked, and the gateway can only mask it when it is selected as a plain column at the top level of a query (not in an expression, function, cast, subquery, RETURNING, or a write into another table)",
                    label(t),
                    c.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::classify;

    fn coverage() -> Coverage {
        let col = |attnum, name: &str, covered| CatalogColumn {
            attnum,
            name: name.into(),
            type_oid: 25,
            generated: false,
            covered,
        };
        Coverage::new(vec![CoveredTable {
            oid: 16384,
            schema: "public".into(),
            name: "customers".into(),
            columns: vec![
                col(1, "id", false),
                col(2, "name", false),
                col(3, "ssn", true),
            ],
        }])
    }

    fn check(sql: &str) -> Result<(), String> {
        let s = classify(sql);
        assert_eq!(s.len(), 1, "{sql}");
        coverage().check(&s[0])
    }

    #[test]
    fn plain_top_level_columns_and_predicates_are_fine() {
        for sql in [
            "SELECT ssn FROM customers",
            "SELECT c.ssn, name FROM customers c WHERE ssn = '1' ORDER BY ssn",
            "SELECT * FROM customers",
            "SELECT c.* FROM customers c",
            "TABLE customers",
            "SELECT count(*) FROM customers GROUP BY ssn",
            "SELECT count(ssn), pg_typeof(ssn) FROM customers",
            "SELECT id FROM customers WHERE id IN (SELECT id FROM customers WHERE ssn LIKE '1%')",
            "SELECT upper(ssn) FROM other_table",
            "DECLARE c CURSOR FOR SELECT ssn FROM customers",
            "PREPARE p AS SELECT ssn FROM customers WHERE id = $1",
            "UPDATE customers SET name = 'x' WHERE ssn = '1'",
        ] {
            assert_eq!(check(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn every_other_way_out_is_refused() {
        for sql in [
            "SELECT ssn || '' FROM customers",
            "SELECT upper(c.ssn) FROM customers c",
            "SELECT ssn::int FROM customers",
            "SELECT string_agg(ssn, ',') FROM customers",
            "SELECT (SELECT ssn FROM customers LIMIT 1)",
            "SELECT * FROM (SELECT ssn FROM customers) s",
            "SELECT x FROM (SELECT * FROM customers) s(a, b, x)",
            "SELECT * FROM (TABLE customers) s",
            "WITH x AS (SELECT ssn FROM customers) SELECT ssn FROM x",
            "SELECT ssn FROM customers UNION ALL SELECT 'x'",
            "SELECT c FROM customers c",
            "SELECT row_to_json(c) FROM customers c",
            "SELECT customers FROM customers",
            "INSERT INTO other SELECT ssn FROM customers",
            "UPDATE customers SET name = ssn WHERE id = 1",
            "DELETE FROM customers WHERE id = 1 RETURNING ssn",
            "CREATE TABLE leak AS SELECT ssn FROM customers",
            "SELECT ssn INTO leak FROM customers",
            "CREATE VIEW v AS SELECT ssn FROM customers",
            "COPY (SELECT ssn FROM customers) TO STDOUT",
            "SELECT pg_notify('c', ssn) FROM customers",
            "SELECT set_config('application_name', ssn, false) FROM customers",
        ] {
            assert!(check(sql).is_err(), "{sql} should be refused");
        }
    }
}
