//! A complete walk over one statement's parse tree, collecting what policy and masking need: the
//! relations it names (with their role: read or written, and CTE references left out by
//! PostgreSQL's own scoping rules), the functions it calls, the settings it changes, every column
//! reference with where its value goes, and the statements nested in it.
//!
//! The walk is driven by the tree's `serde::Serialize` implementation (pg_query derives it for
//! every node type), so no node type can be skipped by omission: every field of every node is
//! visited. The serializer below keeps a stack of the structs, fields and list positions it is
//! in, which is all the context the facts need.

use std::collections::HashMap;

use serde::{Serialize, ser};

/// Where a referenced column's value goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ColumnFlow {
    /// A plain column in the output of the statement's outermost query: the server describes it
    /// with its table and column number, so result masking sees it.
    Output,
    /// Only compared, filtered, grouped or ordered on (WHERE, ON, GROUP BY, ORDER BY, …): the
    /// value itself is never returned.
    Predicate,
    /// Anything else: computed, aggregated, cast, returned from a subquery or RETURNING, written
    /// into another table, or used where the server cannot say which column a value came from.
    Other,
}

/// One column reference (`ssn`, `u.ssn`, `u.*`, `*`, or a bare table name: a whole row).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnUse {
    /// The qualifying names (`u` of `u.ssn`), empty when unqualified.
    pub qualifier: Vec<String>,
    /// The column name; `*` for a star.
    pub name: String,
    pub flow: ColumnFlow,
}

impl ColumnUse {
    pub fn is_star(&self) -> bool {
        self.name == "*"
    }
}

/// A relation named in the statement (CTE references excluded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelationRef {
    pub schema: Option<String>,
    pub name: String,
    pub alias: Option<String>,
    pub written: bool,
}

impl RelationRef {
    /// `schema.name` or `name`, as written (PostgreSQL folds unquoted names to lower case).
    pub fn qualified(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// A setting the statement changes (`SET`, `RESET`, `set_config()`, `ALTER ROLE … SET`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct SettingChange {
    /// Lower-cased setting name; `None` when it is not a literal (`set_config(x, …)`).
    pub name: Option<String>,
    /// The new value when it is a literal; `None` for RESET, DEFAULT or a computed value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// RESET / SET … TO DEFAULT: back to the session's start value.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}

#[derive(Debug, Default)]
pub(super) struct Facts {
    /// The node type of the walked statement (`SelectStmt`, `DoStmt`, …).
    pub root: &'static str,
    /// Struct names of statements nested in the walked one (`DeleteStmt` in a CTE, …), excluding
    /// plain queries.
    pub nested: Vec<&'static str>,
    pub relations: Vec<RelationRef>,
    pub functions: Vec<String>,
    pub columns: Vec<ColumnUse>,
    pub settings: Vec<SettingChange>,
    /// UPDATE/DELETE parts whose WHERE refers to a column (or a cursor position), and those
    /// without.
    pub filtered_writes: usize,
    pub unfiltered_writes: usize,
}

/// Walks `node` (one statement) and returns its facts.
pub(super) fn walk<T: Serialize>(node: &T) -> Result<Facts, WalkError> {
    let mut w = Walker::default();
    node.serialize(&mut w)?;
    Ok(w.finish())
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WalkError(String);

impl ser::Error for WalkError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

/// Deeper trees than this are refused (the decoder already limits them far below).
const MAX_DEPTH: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Struct,
    Seq,
    /// A node variant (`NodeEnum::RangeVar`), wrapping its struct.
    Variant,
}

#[derive(Debug)]
struct Frame {
    kind: Kind,
    name: &'static str,
    /// Current field of a struct.
    field: &'static str,
    /// Current element of a list.
    index: usize,
    /// For query statements: their scope id (CTE resolution).
    scope: Option<usize>,
    /// SelectStmt with an INTO clause; UPDATE/DELETE whose WHERE mentions a column.
    flag: bool,
}

impl Frame {
    fn new(kind: Kind, name: &'static str) -> Frame {
        Frame {
            kind,
            name,
            field: "",
            index: 0,
            scope: None,
            flag: false,
        }
    }
}

/// A WITH list of one query: names in order and whether it is recursive.
#[derive(Debug, Default)]
struct Scope {
    ctes: Vec<String>,
    recursive: bool,
}

/// A relation seen during the walk, resolved against CTE scopes at the end.
#[derive(Debug)]
struct PendingRelation {
    rel: RelationRef,
    /// Enclosing query scopes, innermost last, each with the CTE index the relation sits in
    /// (inside that CTE's own query), if any.
    scopes: Vec<(usize, Option<usize>)>,
    /// A COPY's table: written when the COPY is `FROM` (known once the COPY node is done).
    copy: Option<usize>,
}

#[derive(Debug, Default)]
struct Builder {
    range_var: Option<RelationRef>,
    column: Option<(Vec<String>, bool, ColumnFlow)>,
    /// Function calls being read (they nest): name parts, and the first argument if a literal.
    calls: Vec<(Vec<String>, Option<String>)>,
    set_stmt: Vec<SettingChange>,
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    facts: Facts,
    scopes: Vec<Scope>,
    relations: Vec<PendingRelation>,
    /// COPY statements by frame counter: whether they are `FROM`.
    copies: HashMap<usize, bool>,
    next_id: usize,
    b: Builder,
}

/// Query statements: they own a WITH list and a scope for CTE names.
fn is_query(name: &str) -> bool {
    matches!(
        name,
        "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"
    )
}

/// Fields of a query whose expressions only filter, join, group or order: values used there are
/// not returned.
fn is_predicate(struct_name: &str, field: &str) -> bool {
    match struct_name {
        "SelectStmt" => matches!(
            field,
            "where_clause"
                | "having_clause"
                | "group_clause"
                | "sort_clause"
                | "distinct_clause"
                | "window_clause"
                | "limit_offset"
                | "limit_count"
                | "locking_clause"
        ),
        "UpdateStmt" | "DeleteStmt" => field == "where_clause",
        "JoinExpr" => field == "quals",
        "MergeStmt" => field == "join_condition",
        "WindowDef" => matches!(field, "partition_clause" | "order_clause"),
        "FuncCall" => matches!(field, "agg_order" | "agg_filter"),
        _ => false,
    }
}

/// Functions whose result says nothing of their arguments' values (a count, a type name).
const REVEALS_NO_VALUE: &[&str] = &["count", "pg_typeof"];

/// Statements whose query's rows reach the client as they are (a cursor's FETCH, an EXECUTE of a
/// prepared statement).
fn passes_rows_through(struct_name: &str) -> bool {
    matches!(struct_name, "DeclareCursorStmt" | "PrepareStmt")
}

impl Walker {
    fn push(&mut self, kind: Kind, name: &'static str) -> Result<(), WalkError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(WalkError("the statement nests too deeply".into()));
        }
        let mut frame = Frame::new(kind, name);
        if kind == Kind::Struct {
            self.on_struct_start(name, &mut frame);
        }
        self.stack.push(frame);
        Ok(())
    }

    /// The nearest struct frame below the top (skipping list and variant wrappers and the
    /// generic `Node` wrapper), with its index.
    fn parent_struct(&self, below: usize) -> Option<(usize, &Frame)> {
        self.stack[..below]
            .iter()
            .enumerate()
            .rev()
            .find(|(_, f)| f.kind == Kind::Struct && f.name != "Node")
    }

    fn on_struct_start(&mut self, name: &'static str, frame: &mut Frame) {
        let inside_statement = self
            .stack
            .iter()
            .any(|f| f.kind == Kind::Struct && f.name.ends_with("Stmt"));
        if inside_statement && name.ends_with("Stmt") && name != "SelectStmt" {
            self.facts.nested.push(name);
        }
        if is_query(name) {
            frame.scope = Some(self.scopes.len());
            self.scopes.push(Scope::default());
        }
        match name {
            "RangeVar" => {
                self.b.range_var = Some(RelationRef {
                    schema: None,
                    name: String::new(),
                    alias: None,
                    written: false,
                });
            }
            "ColumnRef" => {
                let flow = self.column_flow();
                self.b.column = Some((Vec::new(), false, flow));
                // A column in the WHERE of an UPDATE or DELETE: that part is filtered.
                self.mark_filtered();
            }
            "CurrentOfExpr" => self.mark_filtered(),
            // `*` and `t.*` (an empty struct in the tree).
            "AStar" => self.on_star(),
            "FuncCall" => self.b.calls.push((Vec::new(), None)),
            "VariableSetStmt" => self.b.set_stmt.push(SettingChange {
                name: None,
                value: None,
                reset: false,
            }),
            "CopyStmt" => {
                self.next_id += 1;
                frame.scope = Some(self.next_id);
            }
            _ => {}
        }
    }

    fn on_struct_end(&mut self, frame: Frame) {
        match frame.name {
            "RangeVar" => {
                if let Some(mut rel) = self.b.range_var.take() {
                    let (written, copy) = self.relation_role();
                    rel.written = written;
                    let scopes = self.scope_chain();
                    self.relations.push(PendingRelation { rel, scopes, copy });
                }
            }
            "ColumnRef" => {
                if let Some((mut parts, star, flow)) = self.b.column.take() {
                    let name = if star {
                        "*".to_string()
                    } else {
                        parts.pop().unwrap_or_default()
                    };
                    self.facts.columns.push(ColumnUse {
                        qualifier: parts,
                        name,
                        flow,
                    });
                }
            }
            "FuncCall" => {
                if let Some((parts, first)) = self.b.calls.pop() {
                    let name = parts.join(".");
                    if parts.last().is_some_and(|n| n == "set_config") {
                        self.facts.settings.push(SettingChange {
                            name: first.map(|n| n.to_ascii_lowercase()),
                            value: None,
                            reset: false,
                        });
                    }
                    self.facts.functions.push(name);
                }
            }
            "VariableSetStmt" => {
                if let Some(s) = self.b.set_stmt.pop() {
                    self.facts.settings.push(s);
                }
            }
            "UpdateStmt" | "DeleteStmt" => {
                if frame.flag {
                    self.facts.filtered_writes += 1;
                } else {
                    self.facts.unfiltered_writes += 1;
                }
            }
            _ => {}
        }
    }

    fn mark_filtered(&mut self) {
        for f in self.stack.iter_mut().rev() {
            if f.kind == Kind::Struct
                && matches!(f.name, "UpdateStmt" | "DeleteStmt")
                && f.field == "where_clause"
            {
                f.flag = true;
            }
        }
    }

    /// Whether the RangeVar just read (its frame already popped) is a relation the statement
    /// writes (and, for a COPY's table, which COPY decides it).
    fn relation_role(&self) -> (bool, Option<usize>) {
        let Some((_, parent)) = self.parent_struct(self.stack.len()) else {
            return (false, None);
        };
        match (parent.name, parent.field) {
            ("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt", "relation")
            | ("TruncateStmt", "relations")
            | ("IntoClause", "rel") => (true, None),
            ("CopyStmt", "relation") => (false, parent.scope),
            // Queries read; so do statements that only look (LOCK, EXPLAIN, VACUUM/ANALYZE).
            (
                "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"
                | "JoinExpr" | "LockStmt" | "ExplainStmt" | "VacuumRelation" | "CopyStmt",
                _,
            ) => (false, None),
            // Any other statement naming a table changes it (CREATE, ALTER, GRANT, COMMENT, …).
            (name, _) => (name.ends_with("Stmt"), None),
        }
    }

    /// The query scopes enclosing the top of the stack, with the CTE index the top sits in.
    fn scope_chain(&self) -> Vec<(usize, Option<usize>)> {
        let mut chain = Vec::new();
        for (i, f) in self.stack.iter().enumerate() {
            let Some(scope) = f.scope.filter(|_| is_query(f.name)) else {
                continue;
            };
            // Inside this query's WITH list: `with_clause` → WithClause.ctes → [i].
            let cte = (f.field == "with_clause")
                .then(|| {
                    self.stack[i + 1..]
                        .iter()
                        .skip_while(|g| !(g.kind == Kind::Struct && g.name == "WithClause"))
                        .nth(1)
                        .filter(|g| g.kind == Kind::Seq)
                        .map(|g| g.index)
                })
                .flatten();
            chain.push((scope, cte));
        }
        chain
    }

    /// Where the value of the column reference being started goes (see [`ColumnFlow`]).
    fn column_flow(&self) -> ColumnFlow {
        // The ColumnRef frame is not pushed yet: the stack ends at its parent.
        let mut bare = true;
        let mut i = self.stack.len();
        while i > 0 {
            i -= 1;
            let f = &self.stack[i];
            if f.kind != Kind::Struct || f.name == "Node" {
                continue;
            }
            if is_predicate(f.name, f.field) {
                return ColumnFlow::Predicate;
            }
            match (f.name, f.field) {
                ("ResTarget", "val") => {}
                ("FuncCall", "args") if f.flag => return ColumnFlow::Predicate,
                ("SelectStmt", "target_list") => {
                    if f.flag {
                        // SELECT … INTO: the values go into a new table.
                        return ColumnFlow::Other;
                    }
                    if bare && self.select_is_outermost(i) {
                        return ColumnFlow::Output;
                    }
                    bare = false;
                }
                // Rows or values written somewhere, or returned without column origins.
                ("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" | "CopyStmt", _)
                | ("ReturningClause", _) => return ColumnFlow::Other,
                // EXPLAIN shows plans, not values (EXPLAIN ANALYZE discards the rows).
                ("ExplainStmt", _) => return ColumnFlow::Predicate,
                (name, _) if passes_rows_through(name) => {}
                (name, _) if name.ends_with("Stmt") && name != "SelectStmt" => {
                    return ColumnFlow::Other;
                }
                _ => bare = false,
            }
        }
        ColumnFlow::Other
    }

    /// Whether the SelectStmt at `at` is the statement's outermost query (possibly under a
    /// DECLARE or PREPARE), not a subquery, CTE, or an arm of a set operation.
    fn select_is_outermost(&self, at: usize) -> bool {
        self.stack[..at]
            .iter()
            .all(|f| f.kind != Kind::Struct || f.name == "Node" || passes_rows_through(f.name))
    }

    fn on_str(&mut self, v: &str) {
        let Some(top) = self.stack.last() else { return };
        if top.kind != Kind::Struct {
            return;
        }
        let top_name = top.name;
        let field = top.field;
        let top_i = self.stack.len() - 1;
        match (top_name, field) {
            ("RangeVar", "schemaname") if !v.is_empty() => {
                if let Some(r) = &mut self.b.range_var {
                    r.schema = Some(v.to_string());
                }
            }
            ("RangeVar", "relname") => {
                if let Some(r) = &mut self.b.range_var {
                    r.name = v.to_string();
                }
            }
            ("Alias", "aliasname") => {
                if self
                    .parent_struct(top_i)
                    .is_some_and(|(_, p)| p.name == "RangeVar")
                    && let Some(r) = &mut self.b.range_var
                {
                    r.alias = Some(v.to_string());
                }
            }
            ("CommonTableExpr", "ctename") => {
                if let Some(scope) = self.owning_scope(top_i) {
                    self.scopes[scope].ctes.push(v.to_string());
                }
            }
            ("VariableSetStmt", "name") => {
                if let Some(s) = self.b.set_stmt.last_mut() {
                    s.name = Some(v.to_ascii_lowercase());
                }
            }
            ("String", "sval") => self.on_string_node(v, top_i),
            _ => {}
        }
    }

    /// A `String` node's value: part of a column reference, a function name, or a literal.
    fn on_string_node(&mut self, v: &str, top_i: usize) {
        let Some((pi, parent)) = self.parent_struct(top_i) else {
            return;
        };
        match (parent.name, parent.field) {
            ("ColumnRef", "fields") => {
                if let Some((parts, _, _)) = &mut self.b.column {
                    parts.push(v.to_string());
                }
            }
            ("FuncCall", "funcname") => {
                if let Some((parts, _)) = self.b.calls.last_mut() {
                    parts.push(v.to_string());
                }
            }
            // A string constant: the first argument of a function call, or a SET value.
            ("AConst", "val") => {
                let Some((_, holder)) = self.parent_struct(pi) else {
                    return;
                };
                match (holder.name, holder.field) {
                    ("FuncCall", "args") if self.list_index(pi) == Some(0) => {
                        if let Some((_, first)) = self.b.calls.last_mut() {
                            *first = Some(v.to_string());
                        }
                    }
                    ("VariableSetStmt", "args") if self.list_index(pi) == Some(0) => {
                        if let Some(s) = self.b.set_stmt.last_mut() {
                            s.value = Some(v.to_string());
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The position, in the nearest enclosing list, of the struct at `at`.
    fn list_index(&self, at: usize) -> Option<usize> {
        self.stack[..at]
            .iter()
            .rev()
            .find(|f| f.kind == Kind::Seq)
            .map(|f| f.index)
    }

    /// The query whose WITH list holds the CommonTableExpr at `at`.
    fn owning_scope(&self, at: usize) -> Option<usize> {
        self.stack[..at]
            .iter()
            .rev()
            .find(|f| is_query(f.name) && f.kind == Kind::Struct)
            .and_then(|f| f.scope)
    }

    fn on_bool(&mut self, v: bool) {
        let Some(top) = self.stack.last() else { return };
        if top.kind == Kind::Struct && top.name == "WithClause" && top.field == "recursive" {
            let at = self.stack.len() - 1;
            if let Some(scope) = self.owning_scope(at) {
                self.scopes[scope].recursive = v;
            }
        }
        if top.kind == Kind::Struct
            && top.name == "CopyStmt"
            && top.field == "is_from"
            && let Some(id) = top.scope
        {
            self.copies.insert(id, v);
        }
    }

    fn on_i32(&mut self, v: i32) {
        let Some(top) = self.stack.last() else { return };
        if top.kind == Kind::Struct && top.name == "VariableSetStmt" && top.field == "kind" {
            // VAR_SET_DEFAULT, VAR_RESET, VAR_RESET_ALL: back to the start value.
            if let Some(s) = self.b.set_stmt.last_mut() {
                s.reset = matches!(v, 2 | 5 | 6);
            }
        }
    }

    /// `Some(…)` of an optional field: notes a SELECT's INTO clause.
    fn on_some(&mut self) {
        if let Some(top) = self.stack.last_mut()
            && top.kind == Kind::Struct
            && top.name == "SelectStmt"
            && top.field == "into_clause"
        {
            top.flag = true;
        }
    }

    fn on_star(&mut self) {
        if let Some((_, star, _)) = &mut self.b.column {
            *star = true;
        }
    }

    fn finish(mut self) -> Facts {
        let relations = std::mem::take(&mut self.relations);
        for p in relations {
            let mut rel = p.rel;
            if let Some(copy) = p.copy {
                rel.written = self.copies.get(&copy).copied().unwrap_or(false);
            }
            if rel.schema.is_none() && self.is_cte_reference(&rel.name, &p.scopes) {
                continue;
            }
            self.facts.relations.push(rel);
        }
        self.facts
    }

    /// PostgreSQL's scoping: an unqualified name refers to the nearest enclosing query's CTE of
    /// that name that is visible where it is used (in a non-recursive WITH, a CTE's own query only
    /// sees the CTEs before it).
    fn is_cte_reference(&self, name: &str, chain: &[(usize, Option<usize>)]) -> bool {
        chain.iter().rev().any(|(scope, inside)| {
            let s = &self.scopes[*scope];
            let visible = match inside {
                Some(i) if !s.recursive => &s.ctes[..(*i).min(s.ctes.len())],
                _ => &s.ctes[..],
            };
            visible.iter().any(|c| c == name)
        })
    }
}

impl ser::Serializer for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, v: bool) -> Result<(), WalkError> {
        self.on_bool(v);
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), WalkError> {
        self.on_i32(v);
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), WalkError> {
        self.on_str(v);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), WalkError> {
        self.on_some();
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<(), WalkError> {
        if name == "AStar" {
            self.on_star();
        }
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), WalkError> {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        if self.facts.root.is_empty() {
            self.facts.root = variant;
        }
        self.push(Kind::Variant, variant)?;
        value.serialize(&mut *self)?;
        self.stack.pop();
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, WalkError> {
        self.push(Kind::Seq, "")?;
        Ok(self)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self, WalkError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Self, WalkError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        len: usize,
    ) -> Result<Self, WalkError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, WalkError> {
        self.push(Kind::Seq, "")?;
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, WalkError> {
        self.push(Kind::Struct, name)?;
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self, WalkError> {
        self.push(Kind::Struct, variant)?;
        Ok(self)
    }
}

impl Walker {
    fn end_frame(&mut self) {
        if let Some(frame) = self.stack.pop()
            && frame.kind == Kind::Struct
        {
            self.on_struct_end(frame);
        }
    }

    fn element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        value.serialize(&mut *self)?;
        if let Some(top) = self.stack.last_mut() {
            top.index += 1;
        }
        Ok(())
    }

    fn field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        let harmless = key == "args"
            && self
                .b
                .calls
                .last()
                .and_then(|(parts, _)| parts.last())
                .is_some_and(|name| REVEALS_NO_VALUE.contains(&name.as_str()));
        if let Some(top) = self.stack.last_mut() {
            top.field = key;
            if top.kind == Kind::Struct && top.name == "FuncCall" {
                top.flag = harmless;
            }
        }
        value.serialize(&mut *self)
    }
}

impl ser::SerializeSeq for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        self.element(value)
    }
    fn end(self) -> Result<(), WalkError> {
        self.end_frame();
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        self.element(value)
    }
    fn end(self) -> Result<(), WalkError> {
        self.end_frame();
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        self.element(value)
    }
    fn end(self) -> Result<(), WalkError> {
        self.end_frame();
        Ok(())
    }
}

impl ser::SerializeTupleVariant for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        self.element(value)
    }
    fn end(self) -> Result<(), WalkError> {
        self.end_frame();
        Ok(())
    }
}

impl ser::SerializeMap for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), WalkError> {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), WalkError> {
        self.element(value)
    }
    fn end(self) -> Result<(), WalkError> {
        self.end_frame();
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), WalkError> {
        self.end_frame();
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Walker {
    type Ok = ();
    type Error = WalkError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), WalkError> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), WalkError> {
        self.end_frame();
        Ok(())
    }
}
