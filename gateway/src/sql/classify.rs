//! The walk over sqlparser's AST that fills a [`SqlStatement`].

use std::ops::ControlFlow;

use sqlparser::{
    ast::{
        BinaryOperator, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Expr, FromTable,
        FunctionArguments, InTarget, LimitClause, ObjectName, Query, Select, SelectItem, SetExpr,
        Statement, TableFactor, TableObject, Visit, Visitor, visit_expressions,
    },
    dialect::PostgreSqlDialect,
    parser::Parser,
};

use super::{
    CopyDirection, CopyEndpoint, CopyFormat, CopySpec, SqlStatement, StatementKind,
    names::{ident, object},
};

/// Nesting deeper than this is refused as unparseable rather than risking the stack.
const RECURSION_LIMIT: usize = 64;

/// Classifies every statement of `sql`. Text that does not parse yields one `Unparsed` statement.
pub fn classify(sql: &str) -> Vec<SqlStatement> {
    let dialect = PostgreSqlDialect {};
    let parsed = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements());
    match parsed {
        Ok(statements) => statements.iter().map(statement).collect(),
        Err(e) => vec![SqlStatement::unparsed(e.to_string())],
    }
}

fn statement(stmt: &Statement) -> SqlStatement {
    let mut walk = Walk::default();
    let _ = stmt.visit(&mut walk);

    let mut out = SqlStatement::new(kind_of(stmt));
    out.nested_kinds = dedup(walk.nested);
    let mut read = walk.relations;
    read.retain(|r| !walk.ctes.contains(r));
    // A write target is visited as a relation too; it counts as read only if it appears again.
    for w in &walk.writes {
        if let Some(i) = read.iter().position(|r| r == w) {
            read.remove(i);
        }
    }
    out.tables_read = dedup(read);
    out.tables_written = dedup(walk.writes);
    out.functions = dedup(walk.functions);
    if walk.filtered_writes + walk.unfiltered_writes > 0 {
        out.has_where = Some(walk.unfiltered_writes == 0);
    }
    if let Statement::Query(q) = stmt {
        out.bounded = Some(query_bounded(q));
    }
    if let Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = stmt
    {
        out.copy = Some(copy_spec(source, *to, target, options, legacy_options));
    }
    out
}

fn dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

#[derive(Default)]
struct Walk {
    statements_seen: usize,
    nested: Vec<StatementKind>,
    relations: Vec<String>,
    /// Names of CTEs: references to them are not tables.
    ctes: Vec<String>,
    writes: Vec<String>,
    functions: Vec<String>,
    /// Table-function names about to be visited as relations.
    not_relations: Vec<String>,
    filtered_writes: usize,
    unfiltered_writes: usize,
}

impl Walk {
    fn filtered(&mut self, selection: Option<&Expr>) {
        if selection.is_some_and(refers_to_column) {
            self.filtered_writes += 1;
        } else {
            self.unfiltered_writes += 1;
        }
    }
}

impl Visitor for Walk {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        self.statements_seen += 1;
        if self.statements_seen > 1 {
            self.nested.push(kind_of(stmt));
        }
        match stmt {
            Statement::Insert(i) => {
                if let TableObject::TableName(name) = &i.table {
                    self.writes.push(object(name));
                }
            }
            Statement::Update(u) => {
                if let TableFactor::Table { name, .. } = &u.table.relation {
                    self.writes.push(object(name));
                }
                self.filtered(u.selection.as_ref());
            }
            Statement::Delete(d) => {
                let from = match &d.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                for t in from {
                    if let TableFactor::Table { name, .. } = &t.relation {
                        self.writes.push(object(name));
                    }
                }
                self.writes.extend(d.tables.iter().map(object));
                self.filtered(d.selection.as_ref());
            }
            Statement::Merge(m) => {
                if let TableFactor::Table { name, .. } = &m.table {
                    self.writes.push(object(name));
                }
            }
            Statement::Truncate(t) => {
                self.writes
                    .extend(t.table_names.iter().map(|t| object(&t.name)));
            }
            Statement::Drop { names, .. } => self.writes.extend(names.iter().map(object)),
            Statement::CreateTable(c) => self.writes.push(object(&c.name)),
            Statement::CreateView(v) => self.writes.push(object(&v.name)),
            Statement::CreateIndex(c) => self.writes.push(object(&c.table_name)),
            Statement::AlterTable(a) => self.writes.push(object(&a.name)),
            // COPY's table is not visited as a relation.
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                to,
                ..
            } => {
                if *to {
                    self.relations.push(object(table_name));
                } else {
                    self.writes.push(object(table_name));
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            self.ctes
                .extend(with.cte_tables.iter().map(|c| ident(&c.alias.name)));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        // SELECT … INTO new_table creates a table.
        if let Some(into) = &s.into {
            for t in &into.targets {
                match t {
                    Expr::Identifier(i) => self.writes.push(ident(i)),
                    Expr::CompoundIdentifier(parts) => self
                        .writes
                        .push(parts.iter().map(ident).collect::<Vec<_>>().join(".")),
                    _ => {}
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            // `FROM dblink(…)`, `FROM pg_ls_dir(…)`: a function, not a table.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => {
                let n = object(name);
                self.not_relations.push(n.clone());
                self.functions.push(n);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        let n = object(name);
        if let Some(i) = self.not_relations.iter().position(|f| *f == n) {
            self.not_relations.remove(i);
        } else {
            self.relations.push(n);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            self.functions.push(object(&f.name));
        }
        ControlFlow::Continue(())
    }
}

fn kind_of(stmt: &Statement) -> StatementKind {
    use StatementKind as K;
    match stmt {
        Statement::Query(_) => K::Select,
        Statement::Insert(_) => K::Insert,
        Statement::Update(_) => K::Update,
        Statement::Delete(_) => K::Delete,
        Statement::Merge(_) => K::Merge,
        Statement::Copy { .. } => K::Copy,
        Statement::Truncate(_) => K::Truncate,
        Statement::Grant(_) | Statement::GrantRole(_) => K::Grant,
        Statement::Revoke(_) | Statement::RevokeRole(_) => K::Revoke,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => K::Transaction,
        Statement::Set(_) | Statement::Reset(_) | Statement::Discard { .. } => K::Set,
        Statement::Explain { .. } | Statement::ExplainTable { .. } => K::Explain,
        Statement::Call(_) => K::Call,
        Statement::Prepare { .. } => K::Prepare,
        Statement::Execute { .. } => K::Execute,
        Statement::Deallocate { .. } => K::Deallocate,
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => K::Cursor,
        Statement::Lock(_) | Statement::LockTables { .. } => K::Lock,
        Statement::Vacuum(_) | Statement::Analyze(_) => K::Maintenance,
        Statement::Comment { .. } => K::Comment,
        // The many CREATE/ALTER/DROP/SHOW variants: go by the leading keyword.
        other => {
            let text = other.to_string();
            let first = text
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            match first.as_str() {
                "CREATE" => K::Create,
                "ALTER" => K::Alter,
                "DROP" => K::Drop,
                "SHOW" => K::Show,
                "SET" | "RESET" => K::Set,
                "LISTEN" | "UNLISTEN" | "NOTIFY" => K::Notify,
                "GRANT" => K::Grant,
                "REVOKE" => K::Revoke,
                _ => K::Other,
            }
        }
    }
}

/// Does the expression mention a column at all? (`WHERE true`, `WHERE 1 = 1` do not.)
fn refers_to_column(e: &Expr) -> bool {
    visit_expressions(e, |e| match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

fn query_bounded(q: &Query) -> bool {
    let limited = match &q.limit_clause {
        Some(LimitClause::LimitOffset {
            limit: Some(limit), ..
        }) => !matches!(limit, Expr::Value(v) if v.to_string().eq_ignore_ascii_case("null")),
        Some(LimitClause::OffsetCommaLimit { .. }) => true,
        _ => false,
    };
    limited || q.fetch.is_some() || set_bounded(&q.body)
}

fn set_bounded(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(s) => select_bounded(s),
        SetExpr::Query(q) => query_bounded(q),
        SetExpr::Values(_) => true,
        SetExpr::SetOperation { left, right, .. } => set_bounded(left) && set_bounded(right),
        _ => false,
    }
}

fn select_bounded(s: &Select) -> bool {
    if s.from.is_empty() {
        return true;
    }
    if s.selection.as_ref().is_some_and(key_predicate) {
        return true;
    }
    let no_group = match &s.group_by {
        sqlparser::ast::GroupByExpr::Expressions(e, _) => e.is_empty(),
        sqlparser::ast::GroupByExpr::All(_) => false,
    };
    no_group && !s.projection.is_empty() && s.projection.iter().all(lone_aggregate)
}

/// `col = constant`, `col IN (constants)`, anywhere in a chain of ANDs.
fn key_predicate(e: &Expr) -> bool {
    let is_col = |e: &Expr| matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_));
    let is_const = |e: &Expr| match e {
        Expr::Value(_) => true,
        Expr::Cast { expr, .. } => matches!(**expr, Expr::Value(_)),
        _ => false,
    };
    match e {
        Expr::Nested(inner) => key_predicate(inner),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => key_predicate(left) || key_predicate(right),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => (is_col(left) && is_const(right)) || (is_const(left) && is_col(right)),
        Expr::In {
            expr,
            target: InTarget::List(list),
            negated: false,
            ..
        } => is_col(expr) && list.iter().all(is_const),
        _ => false,
    }
}

/// `count(*)`, `max(x)` and friends: one row, small. (`array_agg` and `string_agg` return one row
/// too, but as large as the table: not bounded.)
fn lone_aggregate(item: &SelectItem) -> bool {
    let e = match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return false,
    };
    match e {
        Expr::Function(f) => {
            let name = object(&f.name);
            let name = name.rsplit('.').next().unwrap_or_default();
            matches!(
                name,
                "count" | "sum" | "min" | "max" | "avg" | "bool_and" | "bool_or" | "every"
            ) && !matches!(f.args, FunctionArguments::None)
        }
        _ => false,
    }
}

fn copy_spec(
    source: &CopySource,
    to: bool,
    target: &CopyTarget,
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
) -> CopySpec {
    let mut format = CopyFormat::Text;
    let mut delimiter = None;
    for o in options {
        match o {
            CopyOption::Format(f) => {
                format = match f.value.to_ascii_lowercase().as_str() {
                    "csv" => CopyFormat::Csv,
                    "binary" => CopyFormat::Binary,
                    _ => CopyFormat::Text,
                }
            }
            CopyOption::Delimiter(d) => delimiter = Some(*d),
            _ => {}
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => format = CopyFormat::Binary,
            CopyLegacyOption::Csv(_) => format = CopyFormat::Csv,
            CopyLegacyOption::Delimiter(d) => delimiter = Some(*d),
            _ => {}
        }
    }
    CopySpec {
        direction: if to {
            CopyDirection::To
        } else {
            CopyDirection::From
        },
        endpoint: match target {
            CopyTarget::Stdin | CopyTarget::Stdout => CopyEndpoint::Client,
            CopyTarget::File { .. } => CopyEndpoint::File,
            CopyTarget::Program { .. } => CopyEndpoint::Program,
        },
        format,
        delimiter: delimiter.unwrap_or(if format == CopyFormat::Csv { ',' } else { '\t' }),
        columns: match source {
            CopySource::Table { columns, .. } => columns.iter().map(ident).collect(),
            CopySource::Query(_) => Vec::new(),
        },
    }
}
