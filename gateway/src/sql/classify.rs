//! Statement text → [`SqlStatement`]s, with PostgreSQL's own parser (libpg_query): the gateway
//! splits, lexes and parses exactly as the server does, including every syntax the walker never
//! heard of.

use pg_query::{NodeEnum, ParserOptions, protobuf};

use super::{
    CopyDirection, CopyEndpoint, CopyFormat, CopySpec, SqlObject, SqlStatement, StatementKind,
    walk::{self, Facts},
};

/// Classifies every statement of `sql` as the server would lex it with
/// `standard_conforming_strings` on (`scs_off` for the other reading). Text that does not parse
/// yields one `Unparsed` statement.
pub(super) fn classify_with(sql: &str, scs_off: bool) -> Vec<SqlStatement> {
    let options = if scs_off {
        ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS
    } else {
        ParserOptions::DEFAULT
    };
    let parsed = match pg_query::parse(sql, options) {
        Ok(p) => p,
        Err(e) => return vec![SqlStatement::unparsed(parse_error(&e))],
    };
    parsed
        .protobuf
        .stmts
        .iter()
        .filter_map(|raw| raw.stmt.as_deref())
        .map(statement)
        .collect()
}

/// Classifies `sql` (the reading of the pinned session settings).
pub fn classify(sql: &str) -> Vec<SqlStatement> {
    classify_with(sql, false)
}

fn parse_error(e: &pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) => m.clone(),
        pg_query::Error::Decode(d) if d.to_string().contains("recursion limit") => {
            "the statement nests expressions more deeply than the gateway classifies; split it up or pass values as parameters".into()
        }
        pg_query::Error::Conversion(_) => "the statement text contains a NUL byte".into(),
        other => other.to_string(),
    }
}

fn statement(node: &protobuf::Node) -> SqlStatement {
    let Some(top) = node.node.as_ref() else {
        return SqlStatement::unparsed("empty statement node");
    };
    let facts = match walk::walk(node) {
        Ok(f) => f,
        Err(e) => return SqlStatement::unparsed(e.to_string()),
    };
    let mut out = SqlStatement::new(kind_of(top, facts.root));
    fill_from_facts(&mut out, facts);
    match top {
        NodeEnum::SelectStmt(s) => {
            out.bounded = Some(select_bounded(s));
            if s.into_clause.is_some() {
                out.nested_kinds.push(StatementKind::Create);
            }
        }
        NodeEnum::CopyStmt(c) => out.copy = Some(copy_spec(c)),
        NodeEnum::DropStmt(d) => {
            for o in &d.objects {
                if let Some(name) = dotted(o) {
                    out.tables_written.push(name);
                }
            }
        }
        _ => {}
    }
    out.object = object_of(top);
    out.nested_kinds = dedup(std::mem::take(&mut out.nested_kinds));
    out.tables_written = dedup(std::mem::take(&mut out.tables_written));
    out
}

fn fill_from_facts(out: &mut SqlStatement, facts: Facts) {
    out.nested_kinds = facts.nested.iter().map(|n| kind_of_name(n)).collect();
    let mut read = Vec::new();
    for r in &facts.relations {
        if r.written {
            out.tables_written.push(r.qualified());
        } else {
            read.push(r.qualified());
        }
    }
    // A written table that the statement also reads (`UPDATE t … FROM t`) counts as read too;
    // one only written does not.
    out.tables_read = dedup(read);
    out.functions = dedup(facts.functions);
    if facts.filtered_writes + facts.unfiltered_writes > 0 {
        out.has_where = Some(facts.unfiltered_writes == 0);
    }
    let mut settings = facts.settings;
    settings.sort();
    settings.dedup();
    out.settings = settings;
    out.relations = facts.relations;
    out.columns = facts.columns;
}

fn dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

/// `a.b.c` of a List of String nodes (DROP's object names).
fn dotted(node: &protobuf::Node) -> Option<String> {
    let NodeEnum::List(list) = node.node.as_ref()? else {
        return None;
    };
    let parts: Option<Vec<&str>> = list
        .items
        .iter()
        .map(|i| match i.node.as_ref()? {
            NodeEnum::String(s) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    Some(parts?.join("."))
}

/// The statement's kind from its node type (`root`, as the walker saw it).
fn kind_of(node: &NodeEnum, root: &str) -> StatementKind {
    match node {
        NodeEnum::GrantStmt(g) if !g.is_grant => StatementKind::Revoke,
        NodeEnum::GrantRoleStmt(g) if !g.is_grant => StatementKind::Revoke,
        _ => kind_of_name(root),
    }
}

fn kind_of_name(name: &str) -> StatementKind {
    use StatementKind as K;
    match name {
        "SelectStmt" => K::Select,
        "InsertStmt" => K::Insert,
        "UpdateStmt" => K::Update,
        "DeleteStmt" => K::Delete,
        "MergeStmt" => K::Merge,
        "CopyStmt" => K::Copy,
        "TruncateStmt" => K::Truncate,
        "GrantStmt" | "GrantRoleStmt" | "AlterDefaultPrivilegesStmt" => K::Grant,
        "TransactionStmt" => K::Transaction,
        "VariableSetStmt" | "DiscardStmt" => K::Set,
        "VariableShowStmt" => K::Show,
        "ExplainStmt" => K::Explain,
        "CallStmt" => K::Call,
        "PrepareStmt" => K::Prepare,
        "ExecuteStmt" => K::Execute,
        "DeallocateStmt" => K::Deallocate,
        "DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt" => K::Cursor,
        "ListenStmt" | "UnlistenStmt" | "NotifyStmt" => K::Notify,
        "LockStmt" => K::Lock,
        "VacuumStmt" => K::Maintenance,
        "CommentStmt" => K::Comment,
        "DoStmt" => K::Do,
        "ViewStmt" | "IndexStmt" | "DefineStmt" | "RuleStmt" | "CompositeTypeStmt"
        | "CreateTableAsStmt" | "CreatedbStmt" => K::Create,
        "RenameStmt" | "ReassignOwnedStmt" => K::Alter,
        "DropdbStmt" | "DropOwnedStmt" => K::Drop,
        n if n.starts_with("Create") => K::Create,
        n if n.starts_with("Alter") => K::Alter,
        n if n.starts_with("Drop") => K::Drop,
        _ => K::Other,
    }
}

/// Prepared statements and cursors the statement creates, runs or removes.
fn object_of(node: &NodeEnum) -> Option<SqlObject> {
    Some(match node {
        NodeEnum::PrepareStmt(p) => SqlObject::Prepare {
            name: p.name.clone(),
        },
        NodeEnum::ExecuteStmt(e) => SqlObject::Execute {
            name: e.name.clone(),
        },
        NodeEnum::DeallocateStmt(d) => SqlObject::Deallocate {
            name: (!d.isall).then(|| d.name.clone()),
        },
        NodeEnum::DeclareCursorStmt(d) => SqlObject::Declare {
            name: d.portalname.clone(),
            // CURSOR_OPT_HOLD: the cursor outlives its transaction.
            hold: d.options & 0x0020 != 0,
        },
        NodeEnum::FetchStmt(f) => SqlObject::Fetch {
            name: f.portalname.clone(),
            moves: f.ismove,
        },
        NodeEnum::ClosePortalStmt(c) => SqlObject::Close {
            name: (!c.portalname.is_empty()).then(|| c.portalname.clone()),
        },
        NodeEnum::DiscardStmt(d) if d.target == protobuf::DiscardMode::DiscardAll as i32 => {
            SqlObject::DiscardAll
        }
        _ => return None,
    })
}

fn is_const(node: Option<&protobuf::Node>) -> bool {
    match node.and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::AConst(c)) => !c.isnull,
        Some(NodeEnum::ParamRef(_)) => true,
        Some(NodeEnum::TypeCast(t)) => is_const(t.arg.as_deref()),
        _ => false,
    }
}

fn is_column(node: Option<&protobuf::Node>) -> bool {
    matches!(
        node.and_then(|n| n.node.as_ref()),
        Some(NodeEnum::ColumnRef(_))
    )
}

fn operator_is(names: &[protobuf::Node], op: &str) -> bool {
    matches!(
        names.last().and_then(|n| n.node.as_ref()),
        Some(NodeEnum::String(s)) if s.sval == op
    )
}

/// `col = constant`, `col IN (constants)`, anywhere in a chain of ANDs.
fn key_predicate(node: Option<&protobuf::Node>) -> bool {
    match node.and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::BoolExpr(b)) if b.boolop == protobuf::BoolExprType::AndExpr as i32 => {
            b.args.iter().any(|a| key_predicate(Some(a)))
        }
        Some(NodeEnum::AExpr(e)) => {
            let (l, r) = (e.lexpr.as_deref(), e.rexpr.as_deref());
            if e.kind == protobuf::AExprKind::AexprOp as i32 && operator_is(&e.name, "=") {
                (is_column(l) && is_const(r)) || (is_const(l) && is_column(r))
            } else if e.kind == protobuf::AExprKind::AexprIn as i32 && operator_is(&e.name, "=") {
                let list = match r.and_then(|n| n.node.as_ref()) {
                    Some(NodeEnum::List(l)) => &l.items,
                    _ => return false,
                };
                is_column(l) && list.iter().all(|i| is_const(Some(i)))
            } else {
                false
            }
        }
        _ => false,
    }
}

/// `count(*)`, `max(x)` and friends: one row, small. (`array_agg` and `string_agg` return one row
/// too, but as large as the table: not bounded.)
fn lone_aggregate(target: &protobuf::Node) -> bool {
    let Some(NodeEnum::ResTarget(t)) = target.node.as_ref() else {
        return false;
    };
    let Some(NodeEnum::FuncCall(f)) = t.val.as_deref().and_then(|v| v.node.as_ref()) else {
        return false;
    };
    let name = match f.funcname.last().and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::String(s)) => s.sval.as_str(),
        _ => return false,
    };
    matches!(
        name,
        "count" | "sum" | "min" | "max" | "avg" | "bool_and" | "bool_or" | "every"
    ) && (f.agg_star || !f.args.is_empty())
        && f.over.is_none()
}

fn select_bounded(s: &protobuf::SelectStmt) -> bool {
    let limited = match s.limit_count.as_deref().and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::AConst(c)) => !c.isnull,
        Some(_) => true,
        None => false,
    };
    if limited {
        return true;
    }
    if let (Some(l), Some(r)) = (&s.larg, &s.rarg) {
        return select_bounded(l) && select_bounded(r);
    }
    if !s.values_lists.is_empty() || s.from_clause.is_empty() {
        return true;
    }
    if key_predicate(s.where_clause.as_deref()) {
        return true;
    }
    s.group_clause.is_empty()
        && !s.target_list.is_empty()
        && s.target_list.iter().all(lone_aggregate)
}

/// The string value of a DefElem's argument (`FORMAT csv`, `DELIMITER '|'`, `HEADER true`).
fn def_value(arg: Option<&protobuf::Node>) -> Option<String> {
    match arg.and_then(|n| n.node.as_ref())? {
        NodeEnum::String(s) => Some(s.sval.clone()),
        NodeEnum::Integer(i) => Some(i.ival.to_string()),
        NodeEnum::Boolean(b) => Some(b.boolval.to_string()),
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            protobuf::a_const::Val::Sval(s) => Some(s.sval.clone()),
            protobuf::a_const::Val::Ival(i) => Some(i.ival.to_string()),
            protobuf::a_const::Val::Boolval(b) => Some(b.boolval.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn single_byte(value: Option<String>) -> Option<u8> {
    let v = value?;
    (v.len() == 1).then(|| v.as_bytes()[0])
}

fn copy_spec(c: &protobuf::CopyStmt) -> CopySpec {
    let mut format = CopyFormat::Text;
    let mut delimiter = None;
    let mut quote = None;
    let mut escape = None;
    let mut header = false;
    let mut encoding = None;
    let mut unknown = Vec::new();
    for o in &c.options {
        let Some(NodeEnum::DefElem(d)) = o.node.as_ref() else {
            continue;
        };
        let value = def_value(d.arg.as_deref());
        match d.defname.as_str() {
            "format" => {
                format = match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    Some("csv") => CopyFormat::Csv,
                    Some("binary") => CopyFormat::Binary,
                    _ => CopyFormat::Text,
                }
            }
            "delimiter" => delimiter = Some(single_byte(value)),
            "quote" => quote = Some(single_byte(value)),
            "escape" => escape = Some(single_byte(value)),
            // `HEADER` alone has no argument; `HEADER false|off|0` turns it off.
            "header" => {
                header = !matches!(
                    value.as_deref().map(str::to_ascii_lowercase).as_deref(),
                    Some("false" | "off" | "0")
                )
            }
            "encoding" => encoding = value,
            "null" | "default" | "force_quote" | "force_not_null" | "force_null" | "freeze"
            | "on_error" | "log_verbosity" | "reject_limit" => {}
            other => unknown.push(other.to_string()),
        }
    }
    let default_delimiter = if format == CopyFormat::Csv {
        b','
    } else {
        b'\t'
    };
    let quote = quote.unwrap_or(Some(b'"'));
    CopySpec {
        direction: if c.is_from {
            CopyDirection::From
        } else {
            CopyDirection::To
        },
        endpoint: if c.is_program {
            CopyEndpoint::Program
        } else if c.filename.is_empty() {
            CopyEndpoint::Client
        } else {
            CopyEndpoint::File
        },
        format,
        // A multi-byte delimiter, quote or escape is an error on the server; `None` here makes
        // masking refuse rather than guess.
        delimiter: delimiter.unwrap_or(Some(default_delimiter)),
        quote,
        escape: escape.unwrap_or(quote),
        header,
        encoding,
        unknown_options: unknown,
        columns: c
            .attlist
            .iter()
            .filter_map(|n| match n.node.as_ref() {
                Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                _ => None,
            })
            .collect(),
        table: c.relation.as_ref().map(|r| {
            if r.schemaname.is_empty() {
                r.relname.clone()
            } else {
                format!("{}.{}", r.schemaname, r.relname)
            }
        }),
    }
}
