//! Client → server: every message is framed and checked; statements (each one of a simple Query,
//! every Parse) are classified and put to policy; what is allowed is recorded write-ahead and
//! forwarded as the client sent it; what is refused is replaced by a message that fails without
//! side effects, so that the server itself takes the transaction (and extended-protocol error
//! recovery) exactly where a real error would.
//!
//! Prepared statements and portals are followed as the server has them (see `state`): a Bind or
//! Execute names exactly the statement the server will run, or is refused when the gateway cannot
//! account for it. Statements that need approval are asked about at each execution, with the
//! parameters it runs with.

use std::sync::Arc;

use bytes::BytesMut;
use pgwire::messages::extendedquery::{Bind, Close, Describe, Execute, Parse};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::{
    Context, copy,
    frame::{Frame, FrameReader, ReadError},
    journal,
    state::{self, Described, Exec, Lookup, Made, Pending, Portal, Refusal, Stmt},
    wire::{self, GatewayError},
};
use crate::{
    approval::{ApprovalOutcome, ApprovalRequest, Submission, peer_closed},
    policy::Decision,
    sql::{CopyDirection, CopyEndpoint, SqlObject, SqlStatement, StatementKind, Statements},
};

/// Sent upstream in place of a refused statement: fails in the parser, touches nothing, and puts
/// the server in exactly the error state a real failing statement would.
pub(super) const REFUSED_SQL: &str = "gateway refused this statement";
/// A portal name no client may use: a Describe of it fails without side effects, which is what the
/// gateway sends in place of a refused Bind, Describe or Execute.
pub(super) const REFUSED_PORTAL: &str = "\u{1}gateway refused";

/// Most parameters recorded per Bind.
const MAX_PARAMS_RECORDED: usize = 64;
/// Output is written once this much is queued, even mid-batch.
const FLUSH_AT: usize = 64 * 1024;

#[derive(Debug)]
pub(super) enum End {
    /// The client sent Terminate.
    Terminated,
    /// The client closed its side.
    Closed,
    /// The client broke the protocol: tell it, record it, close.
    Violation(GatewayError),
    /// A statement could not be recorded: nothing more is forwarded.
    RecordFailed(String),
    ClientIo(String),
    UpstreamIo(String),
}

pub(super) struct Frontend<'a> {
    ctx: &'a Context<'a>,
    shared: &'a state::Shared,
    seq: u64,
    /// Number of the message being handled (map changes are undone by it).
    msg: u64,
    out: BytesMut,
    pub bytes_up: u64,
}

/// The policy outcome for one piece of SQL text.
struct Verdict {
    decision: Option<Decision>,
    refusal: Option<Refusal>,
}

impl Verdict {
    fn refused(refusal: Refusal, decision: Decision) -> Verdict {
        Verdict {
            decision: Some(decision),
            refusal: Some(refusal),
        }
    }
}

/// When approval is asked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Approval {
    /// Before the statements run (a simple Query): but a PREPARE runs nothing, so its approval
    /// waits for each EXECUTE.
    Now,
    /// At each execution (Parse).
    AtExecution,
    /// Now: this is the execution of something prepared earlier.
    Executing,
}

fn refusal_for(decision: &Decision, detail: Option<String>) -> Refusal {
    let (rule, reason) = match decision {
        Decision::Deny { rule, reason } => (rule.clone(), reason.clone()),
        other => (other.rule().map(str::to_string), String::new()),
    };
    let message = match &rule {
        Some(r) if !reason.contains(&format!("{r:?}")) => {
            format!("gateway: denied by rule {r:?}: {reason}")
        }
        _ => format!("gateway: {reason}"),
    };
    Refusal {
        rule,
        code: wire::INSUFFICIENT_PRIVILEGE,
        message,
        detail,
    }
}

/// A refusal for what the gateway cannot account for (SQLSTATE 0A000).
fn unaccountable(message: String) -> Refusal {
    Refusal {
        rule: None,
        code: wire::FEATURE_NOT_SUPPORTED,
        message,
        detail: None,
    }
}

impl<'a> Frontend<'a> {
    pub(super) fn new(ctx: &'a Context<'a>, shared: &'a state::Shared) -> Self {
        Frontend {
            ctx,
            shared,
            seq: 0,
            msg: 0,
            out: BytesMut::new(),
            bytes_up: 0,
        }
    }

    pub(super) async fn run<R, W>(&mut self, mut reader: FrameReader<R>, mut upstream: W) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            loop {
                let frame = match reader.buffered() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        return End::Violation(GatewayError::fatal(
                            wire::PROTOCOL_VIOLATION,
                            format!("gateway: invalid message from the client: {e}"),
                        ));
                    }
                };
                let terminate = frame.tag == b'X';
                self.msg += 1;
                if let Err(end) = self.handle(frame, &mut upstream).await {
                    // Whatever was accepted before the failure still goes out.
                    let _ = self.flush(&mut upstream).await;
                    return end;
                }
                if terminate {
                    let _ = self.flush(&mut upstream).await;
                    return End::Terminated;
                }
                if self.out.len() >= FLUSH_AT
                    && let Err(e) = self.flush(&mut upstream).await
                {
                    return e;
                }
            }
            if let Err(e) = self.flush(&mut upstream).await {
                return e;
            }
            reader.shrink();
            // Outcomes ride along with the next statement's write-ahead; when the client stays quiet
            // the backend stores them after a moment.
            match reader.fill().await {
                Ok(true) => {}
                Ok(false) => return End::Closed,
                Err(ReadError::Io(e)) => return End::ClientIo(e.to_string()),
                Err(ReadError::Frame(e)) => {
                    return End::Violation(GatewayError::fatal(
                        wire::PROTOCOL_VIOLATION,
                        format!("gateway: invalid message from the client: {e}"),
                    ));
                }
            }
        }
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, upstream: &mut W) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = async {
            upstream.write_all(&self.out).await?;
            upstream.flush().await
        }
        .await;
        self.bytes_up += self.out.len() as u64;
        self.out.clear();
        if self.out.capacity() > 4 * FLUSH_AT {
            self.out = BytesMut::new();
        }
        r.map_err(|e| End::UpstreamIo(e.to_string()))
    }

    fn push(&self, p: Pending) {
        self.shared.with(|t| t.pending.push_back(p));
    }

    /// Looks a name up in the server's maps, waiting (with what is queued sent) while its state
    /// depends on a batch the server has not answered.
    async fn settle<T, W: AsyncWrite + Unpin>(
        &mut self,
        upstream: &mut W,
        lookup: impl Fn(&state::Tracker) -> Lookup<T>,
    ) -> Result<Option<Arc<T>>, End> {
        loop {
            match self.shared.with(|t| lookup(t)) {
                Lookup::Found(v) => return Ok(Some(v)),
                Lookup::Absent => return Ok(None),
                Lookup::WaitFor(batch) => {
                    self.flush(upstream).await?;
                    self.shared.answered(batch).await;
                }
            }
        }
    }

    /// Waits until changing a name can be predicted (see `Tracker::statement_change_waits`).
    async fn settle_change<W: AsyncWrite + Unpin>(
        &mut self,
        upstream: &mut W,
        waits: impl Fn(&state::Tracker) -> Option<u64>,
    ) -> Result<(), End> {
        while let Some(batch) = self.shared.with(|t| waits(t)) {
            self.flush(upstream).await?;
            self.shared.answered(batch).await;
        }
        Ok(())
    }

    async fn handle<W: AsyncWrite + Unpin>(
        &mut self,
        frame: Frame,
        upstream: &mut W,
    ) -> Result<(), End> {
        match frame.tag {
            b'Q' => self.query(frame, upstream).await,
            b'P' => self.parse(frame, upstream).await,
            b'B' => self.bind(frame, upstream).await,
            b'D' => self.describe(frame, upstream).await,
            b'E' => self.execute(frame, upstream).await,
            b'C' => self.close(frame, upstream).await,
            b'S' => {
                self.shared.with(|t| {
                    t.pending.push_back(Pending::Sync);
                    t.end_batch();
                });
                self.out.extend_from_slice(&frame.bytes);
                Ok(())
            }
            // Flush, CopyData, CopyDone, CopyFail, Terminate: nothing to decide.
            b'H' | b'd' | b'c' | b'f' | b'X' => {
                self.out.extend_from_slice(&frame.bytes);
                Ok(())
            }
            // FunctionCall runs a function by OID, past any statement policy.
            b'F' => {
                let refusal = Refusal {
                    rule: None,
                    code: wire::FEATURE_NOT_SUPPORTED,
                    message: "gateway: the FunctionCall protocol message is not allowed (it bypasses statement policy); call the function in SQL".into(),
                    detail: None,
                };
                self.refuse_as_query("<FunctionCall message>", Arc::new(Vec::new()), refusal)
                    .await
            }
            b'p' => Err(End::Violation(GatewayError::fatal(
                wire::PROTOCOL_VIOLATION,
                "gateway: unexpected authentication message after startup",
            ))),
            other => Err(End::Violation(GatewayError::fatal(
                wire::PROTOCOL_VIOLATION,
                format!(
                    "gateway: unknown message type {:?} (0x{other:02x}) from the client",
                    char::from(other)
                ),
            ))),
        }
    }

    fn decode_error(e: wire::DecodeError) -> End {
        End::Violation(GatewayError::fatal(
            wire::PROTOCOL_VIOLATION,
            format!("gateway: {e}"),
        ))
    }

    /// Puts every statement of `statements` to policy and masking, and then asks for approval
    /// (now, or leaves it to each execution): people are only asked about what could run.
    async fn judge(&self, sql: &str, statements: &[SqlStatement], approval: Approval) -> Verdict {
        let ctx = self.ctx;
        let mut decision = None;
        let mut ask: Vec<(String, usize)> = Vec::new();
        let count = statements.len();
        let which = |i: usize, s: &SqlStatement| {
            (count > 1).then(|| {
                format!(
                    "statement {} of {count} ({}); nothing in this query was executed",
                    i + 1,
                    s.kind
                )
            })
        };
        for (i, s) in statements.iter().enumerate() {
            let d = ctx.policy.decide_statement(
                ctx.identity,
                &ctx.target.name,
                s,
                &ctx.session.statement_context(),
            );
            if let Decision::Deny { .. } = &d {
                return Verdict::refused(refusal_for(&d, which(i, s)), d);
            }
            // Results must be maskable before anything runs.
            if let Some(why) = self.unmaskable(s) {
                let rule = ctx.masker.as_ref().and_then(|m| m.rules.first().cloned());
                let reason = format!("masking rules apply to target {:?}: {why}", ctx.target.name);
                let d = Decision::Deny {
                    rule: rule.clone(),
                    reason: reason.clone(),
                };
                return Verdict::refused(
                    Refusal {
                        rule,
                        code: wire::INSUFFICIENT_PRIVILEGE,
                        message: format!("gateway: {reason}"),
                        detail: which(i, s),
                    },
                    d,
                );
            }
            if let Decision::RequireApproval { rule } = &d {
                let later = approval == Approval::AtExecution
                    || (approval == Approval::Now && s.kind == StatementKind::Prepare);
                if !later {
                    ask.push((rule.clone(), i));
                }
            }
            decision = Some(d);
        }
        for (rule, i) in ask {
            let s = &statements[i];
            let request = self.approval_request(&rule, sql, json!({ "statement": s, "of": count }));
            if let ApprovalOutcome::Denied { reason } = self.await_approval(&request).await {
                let d = Decision::Deny {
                    rule: Some(rule.clone()),
                    reason: reason.clone(),
                };
                let mut r = refusal_for(&d, which(i, s));
                r.message = format!("gateway: {reason}");
                return Verdict::refused(r, d);
            }
        }
        Verdict {
            decision,
            refusal: None,
        }
    }

    /// Why the results of `s` could not be masked, if masking applies.
    fn unmaskable(&self, s: &SqlStatement) -> Option<String> {
        let ctx = self.ctx;
        ctx.masker.as_ref()?;
        if let Err(why) = ctx.coverage.check(s) {
            return Some(why);
        }
        let spec = s.copy.as_ref()?;
        if spec.direction != CopyDirection::To || spec.endpoint != CopyEndpoint::Client {
            return None;
        }
        copy::plan(&ctx.coverage, spec).err()
    }

    fn approval_request(
        &self,
        rule: &str,
        sql: &str,
        detail: serde_json::Value,
    ) -> ApprovalRequest {
        let ctx = self.ctx;
        ApprovalRequest {
            session_id: ctx.session_id,
            target: ctx.target.name.clone(),
            rule: rule.to_string(),
            identity: ctx.identity.clone(),
            operation: ctx
                .redact(&journal::cap_text(sql, journal::MAX_APPROVAL_TEXT))
                .into_owned(),
            kind: "sql".to_string(),
            detail,
            process: ctx.process.cloned(),
            job_id: ctx.job_id.map(str::to_string),
        }
    }

    /// Submits a held statement and waits for people to decide. The client is told at once (a
    /// NoticeResponse naming the request and how to decide it); a client that leaves meanwhile
    /// abandons the request.
    async fn await_approval(&self, request: &ApprovalRequest) -> ApprovalOutcome {
        let ticket = match self.ctx.approvals.submit(request).await {
            Submission::Decided(outcome) => return outcome,
            Submission::Waiting(ticket) => ticket,
        };
        let _ = self.ctx.notices.send(wire::notice(
            format!(
                "gateway: this statement needs approval (rule {:?}); request {} is waiting, up to {}s",
                request.rule,
                ticket.id,
                ticket.timeout.as_secs()
            ),
            Some(ticket.how.clone()),
        ));
        let watch = self
            .ctx
            .client_watch
            .as_ref()
            .and_then(|fd| fd.try_clone().ok())
            .map(std::net::TcpStream::from)
            .and_then(|s| tokio::net::TcpStream::from_std(s).ok());
        let Some(watch) = watch else {
            return ticket.wait().await;
        };
        let id = ticket.id.clone();
        tokio::select! {
            outcome = ticket.wait() => outcome,
            () = peer_closed(&watch) => ApprovalOutcome::Denied {
                reason: format!("the client went away while approval request {id} was pending"),
            },
        }
    }

    async fn record(&self, entry: journal::Entry<'_>) -> Result<(), End> {
        self.ctx
            .journal
            .statement(entry)
            .await
            .map_err(|e| End::RecordFailed(e.to_string()))
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    async fn query<W: AsyncWrite + Unpin>(
        &mut self,
        frame: Frame,
        upstream: &mut W,
    ) -> Result<(), End> {
        // Read in place (as pgwire would: the text up to the first NUL), without copying it.
        let raw = wire::cstr(frame.body())
            .map(|(sql, _)| sql)
            .ok_or_else(|| {
                Self::decode_error(wire::DecodeError {
                    what: "Query",
                    reason: "missing terminator".into(),
                })
            })?;
        let ctx = self.ctx;
        let classified = ctx
            .classifier
            .classify(raw, ctx.session.encoding, ctx.session.limits)
            .await;
        let sql = classified.text.clone();
        let statements = classified.statements;
        let verdict = match self.sql_objects(&statements, upstream).await? {
            Err(refused) => refused,
            Ok(prepared) => {
                let v = self.judge(&sql, &statements, Approval::Now).await;
                if v.refusal.is_some() {
                    v
                } else {
                    self.judge_prepared(&sql, &prepared).await.unwrap_or(v)
                }
            }
        };
        let seq = self.next_seq();
        self.record(journal::Entry {
            seq,
            protocol: "simple",
            sql: &ctx.redact(&sql),
            params: None,
            statements: &statements,
            decision: verdict.decision.as_ref(),
            note: None,
        })
        .await?;
        let mut exec = Exec::new(seq, statements.clone());
        exec.reads_covered = self.reads_covered(&statements);
        match verdict.refusal {
            Some(r) => {
                exec.refusal = Some(r);
                self.out.extend_from_slice(&wire::query(REFUSED_SQL));
            }
            None => {
                exec.made = self.made_by(&sql, &statements, verdict.decision.as_ref());
                self.out.extend_from_slice(&frame.bytes);
                self.shared.with(|t| t.query_objects(&statements));
            }
        }
        self.shared.with(|t| {
            t.pending.push_back(Pending::Query(Box::new(exec)));
            t.end_batch();
        });
        Ok(())
    }

    /// The prepared statements and cursors that `statements` name, settled; for EXECUTEs, what they
    /// run. A refusal when one is unknown.
    async fn sql_objects<W: AsyncWrite + Unpin>(
        &mut self,
        statements: &Statements,
        upstream: &mut W,
    ) -> Result<Result<Vec<Arc<Stmt>>, Verdict>, End> {
        let mut prepared = Vec::new();
        for s in statements.iter() {
            match self.sql_object(s, upstream).await? {
                Ok(Some(stmt)) => prepared.push(stmt),
                Ok(None) => {}
                Err(refusal) => {
                    let decision = Decision::Deny {
                        rule: None,
                        reason: refusal.message.clone(),
                    };
                    return Ok(Err(Verdict::refused(refusal, decision)));
                }
            }
        }
        Ok(Ok(prepared))
    }

    /// An EXECUTE runs what was prepared: judged (and approved) as that statement, now. `None`
    /// when all of it may run.
    async fn judge_prepared(&self, sql: &str, prepared: &[Arc<Stmt>]) -> Option<Verdict> {
        for stmt in prepared {
            let v = self.judge(sql, &stmt.statements, Approval::Executing).await;
            if v.refusal.is_some() {
                return Some(v);
            }
        }
        None
    }

    /// For a statement that names a prepared statement or cursor: waits until its state is
    /// settled, and returns the prepared statement an EXECUTE runs, or why the gateway refuses.
    async fn sql_object<W: AsyncWrite + Unpin>(
        &mut self,
        s: &SqlStatement,
        upstream: &mut W,
    ) -> Result<Result<Option<Arc<Stmt>>, Refusal>, End> {
        let Some(object) = &s.object else {
            return Ok(Ok(None));
        };
        match object {
            SqlObject::Execute { name } => {
                let name = name.clone();
                match self.settle(upstream, |t| t.statement(&name)).await? {
                    Some(stmt) => Ok(Ok(Some(stmt))),
                    None => Ok(Err(unaccountable(format!(
                        "gateway: prepared statement {name:?} is unknown to the gateway (it was not prepared through it); prepare it in this session first"
                    )))),
                }
            }
            SqlObject::Prepare { name } | SqlObject::Deallocate { name: Some(name) } => {
                let name = name.clone();
                self.settle_change(upstream, |t| t.statement_change_waits(&name))
                    .await?;
                Ok(Ok(None))
            }
            SqlObject::Declare { name, .. } | SqlObject::Close { name: Some(name) } => {
                if name == REFUSED_PORTAL {
                    return Ok(Err(unaccountable(
                        "gateway: that cursor name is reserved".into(),
                    )));
                }
                let name = name.clone();
                self.settle_change(upstream, |t| t.portal_change_waits(&name))
                    .await?;
                Ok(Ok(None))
            }
            SqlObject::Fetch { name, .. } => {
                let name = name.clone();
                match self.settle(upstream, |t| t.portal(&name)).await? {
                    Some(_) => Ok(Ok(None)),
                    None => Ok(Err(unaccountable(format!(
                        "gateway: cursor {name:?} is unknown to the gateway (it was not declared through it in this transaction)"
                    )))),
                }
            }
            SqlObject::Deallocate { name: None }
            | SqlObject::Close { name: None }
            | SqlObject::DiscardAll => Ok(Ok(None)),
        }
    }

    /// The prepared statements and cursors a simple Query's statements create, for the backend to
    /// enter into the maps when the server confirms each.
    fn made_by(
        &self,
        sql: &Arc<str>,
        statements: &Statements,
        decision: Option<&Decision>,
    ) -> Vec<Option<Made>> {
        statements
            .iter()
            .map(|s| match &s.object {
                Some(SqlObject::Prepare { .. }) => Some(Made::Statement(Arc::new(Stmt::new(
                    sql.clone(),
                    Arc::new(vec![s.clone()]),
                    decision.cloned(),
                    true,
                )))),
                Some(SqlObject::Declare { hold, .. }) => {
                    let stmt = Arc::new(Stmt::new(
                        sql.clone(),
                        Arc::new(vec![s.clone()]),
                        decision.cloned(),
                        true,
                    ));
                    let mut portal = Portal::new(stmt, Vec::new(), Vec::new());
                    portal.holdable = *hold;
                    Some(Made::Portal(Arc::new(portal)))
                }
                _ => None,
            })
            .collect()
    }

    fn reads_covered(&self, statements: &[SqlStatement]) -> bool {
        let ctx = self.ctx;
        ctx.masker.is_some() && statements.iter().any(|s| ctx.coverage.reads_covered(s))
    }

    /// A message refused outright: the server answers an erroring Query in its place (error, then
    /// ReadyForQuery with the right transaction status).
    async fn refuse_as_query(
        &mut self,
        what: &str,
        statements: Statements,
        refusal: Refusal,
    ) -> Result<(), End> {
        let seq = self.next_seq();
        let decision = Decision::Deny {
            rule: refusal.rule.clone(),
            reason: refusal.message.clone(),
        };
        self.record(journal::Entry {
            seq,
            protocol: "simple",
            sql: what,
            params: None,
            statements: &statements,
            decision: Some(&decision),
            note: None,
        })
        .await?;
        let mut exec = Exec::new(seq, statements);
        exec.refusal = Some(refusal);
        self.out.extend_from_slice(&wire::query(REFUSED_SQL));
        self.shared.with(|t| {
            t.pending.push_back(Pending::Query(Box::new(exec)));
            t.end_batch();
        });
        Ok(())
    }

    /// An extended-protocol message refused: recorded, and replaced by one that fails without
    /// side effects, so the server skips to the next Sync as for a real error.
    async fn refuse_extended(
        &mut self,
        what: &str,
        params: Option<&[serde_json::Value]>,
        statements: &Statements,
        refusal: Refusal,
    ) -> Result<(), End> {
        let seq = self.next_seq();
        let decision = Decision::Deny {
            rule: refusal.rule.clone(),
            reason: refusal.message.clone(),
        };
        self.record(journal::Entry {
            seq,
            protocol: "extended",
            sql: &self.ctx.redact(what),
            params,
            statements,
            decision: Some(&decision),
            note: Some("refused"),
        })
        .await?;
        self.out
            .extend_from_slice(&wire::describe_portal(Some(REFUSED_PORTAL.to_string())));
        self.push(Pending::Refused(refusal));
        Ok(())
    }

    async fn parse<W: AsyncWrite + Unpin>(
        &mut self,
        frame: Frame,
        upstream: &mut W,
    ) -> Result<(), End> {
        let p: Parse = wire::decode_frame("Parse", &frame).map_err(Self::decode_error)?;
        let raw_sql = wire::cstr(frame.body())
            .and_then(|(_, rest)| wire::cstr(rest))
            .map_or(&[][..], |(sql, _)| sql);
        let name = p.name.clone().unwrap_or_default();
        self.settle_change(upstream, |t| t.statement_change_waits(&name))
            .await?;
        let ctx = self.ctx;
        let classified = ctx
            .classifier
            .classify(raw_sql, ctx.session.encoding, ctx.session.limits)
            .await;
        let (sql, statements) = (classified.text, classified.statements);
        let verdict = self.judge(&sql, &statements, Approval::AtExecution).await;
        let msg = self.msg;
        match verdict.refusal {
            Some(refusal) => {
                // Refusals are recorded here; allowed statements when they are executed.
                let seq = self.next_seq();
                self.record(journal::Entry {
                    seq,
                    protocol: "extended",
                    sql: &ctx.redact(&sql),
                    params: None,
                    statements: &statements,
                    decision: verdict.decision.as_ref(),
                    note: Some("refused at Parse"),
                })
                .await?;
                self.out
                    .extend_from_slice(&wire::parse(p.name.clone(), REFUSED_SQL));
                self.shared.with(|t| {
                    t.parse(&name, None, msg);
                    t.pending.push_back(Pending::Parse {
                        refusal: Some(refusal),
                        msg,
                    });
                });
            }
            None => {
                self.out.extend_from_slice(&frame.bytes);
                let stmt = Arc::new(Stmt::new(sql, statements, verdict.decision, false));
                self.shared.with(|t| {
                    t.parse(&name, Some(stmt), msg);
                    t.pending.push_back(Pending::Parse { refusal: None, msg });
                });
            }
        }
        Ok(())
    }

    async fn bind<W: AsyncWrite + Unpin>(
        &mut self,
        frame: Frame,
        upstream: &mut W,
    ) -> Result<(), End> {
        let b: Bind = wire::decode_frame("Bind", &frame).map_err(Self::decode_error)?;
        let statement = b.statement_name.clone().unwrap_or_default();
        let portal_name = b.portal_name.clone().unwrap_or_default();
        let formats = &b.parameter_format_codes;
        let params: Vec<serde_json::Value> = b
            .parameters
            .iter()
            .take(MAX_PARAMS_RECORDED)
            .enumerate()
            .map(|(i, v)| {
                let binary = match formats.as_slice() {
                    [] => false,
                    [one] => *one == 1,
                    many => many.get(i) == Some(&1),
                };
                self.ctx.redact_value(journal::value(v.as_deref(), binary))
            })
            .collect();
        let Some(stmt) = self.settle(upstream, |t| t.statement(&statement)).await? else {
            let refusal = unaccountable(format!(
                "gateway: prepared statement {statement:?} is unknown to the gateway (never prepared through it, or refused)"
            ));
            return self
                .refuse_extended(
                    &format!("<Bind of unknown statement {statement:?}>"),
                    Some(&params),
                    &Arc::new(Vec::new()),
                    refusal,
                )
                .await;
        };
        if portal_name == REFUSED_PORTAL {
            let refusal = unaccountable("gateway: that portal name is reserved".into());
            return self
                .refuse_extended(
                    &stmt.sql.clone(),
                    Some(&params),
                    &stmt.statements.clone(),
                    refusal,
                )
                .await;
        }
        self.settle_change(upstream, |t| t.portal_change_waits(&portal_name))
            .await?;
        let portal = Arc::new(Portal::new(
            stmt,
            b.result_column_format_codes.clone(),
            params,
        ));
        let msg = self.msg;
        self.shared.with(|t| {
            t.bind(&portal_name, portal, msg);
            t.pending.push_back(Pending::Bind { msg });
        });
        self.out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    async fn describe<W: AsyncWrite + Unpin>(
        &mut self,
        frame: Frame,
        upstream: &mut W,
    ) -> Result<(), End> {
        let d: Describe = wire::decode_frame("Describe", &frame).map_err(Self::decode_error)?;
        let name = d.name.unwrap_or_default();
        let target = if d.target_type == b'S' {
            self.settle(upstream, |t| t.statement(&name))
                .await?
                .map(|s| {
                    s.mark_described();
                    Described::Statement(s)
                })
        } else {
            self.settle(upstream, |t| t.portal(&name)).await?.map(|p| {
                p.mark_described();
                Described::Portal(p)
            })
        };
        let Some(target) = target else {
            let what = if d.target_type == b'S' {
                "prepared statement"
            } else {
                "portal"
            };
            let refusal = unaccountable(format!(
                "gateway: {what} {name:?} is unknown to the gateway"
            ));
            return self
                .refuse_extended(
                    &format!("<Describe of unknown {what} {name:?}>"),
                    None,
                    &Arc::new(Vec::new()),
                    refusal,
                )
                .await;
        };
        self.push(Pending::Describe {
            target,
            swallow: false,
        });
        self.out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    async fn execute<W: AsyncWrite + Unpin>(
        &mut self,
        frame: Frame,
        upstream: &mut W,
    ) -> Result<(), End> {
        let e: Execute = wire::decode_frame("Execute", &frame).map_err(Self::decode_error)?;
        let name = e.name.clone().unwrap_or_default();
        let Some(portal) = self.settle(upstream, |t| t.portal(&name)).await? else {
            let refusal = unaccountable(format!(
                "gateway: portal {name:?} is unknown to the gateway (not bound or declared through it, or already closed)"
            ));
            return self
                .refuse_extended(
                    &format!("<Execute of unknown portal {name:?}>"),
                    None,
                    &Arc::new(Vec::new()),
                    refusal,
                )
                .await;
        };
        let stmt = portal.stmt.clone();
        // A prepared `EXECUTE x`, `FETCH c`, `DECLARE …`: the objects it names, as for a Query.
        let prepared = match self.sql_objects(&stmt.statements, upstream).await? {
            Ok(p) => p,
            Err(refused) => {
                let refusal = refused.refusal.expect("a refused verdict");
                return self
                    .refuse_extended(
                        &stmt.sql.clone(),
                        Some(&portal.params),
                        &stmt.statements.clone(),
                        refusal,
                    )
                    .await;
            }
        };
        if let Some(refused) = self.judge_prepared(&stmt.sql, &prepared).await {
            let refusal = refused.refusal.expect("a refused verdict");
            return self
                .refuse_extended(
                    &stmt.sql.clone(),
                    Some(&portal.params),
                    &stmt.statements.clone(),
                    refusal,
                )
                .await;
        }
        // Approval covers this execution, with these parameters.
        let mut decision = stmt.decision.clone();
        if let Some(Decision::RequireApproval { rule }) = &decision {
            self.flush(upstream).await?;
            let request = self.approval_request(
                rule,
                &stmt.sql,
                json!({
                    "parameters": portal.params,
                    "scope": "this execution, with these parameters",
                    "statements": &*stmt.statements,
                }),
            );
            match self.await_approval(&request).await {
                ApprovalOutcome::Approved { .. } => {}
                ApprovalOutcome::Denied { reason } => {
                    let refusal = Refusal {
                        rule: Some(rule.clone()),
                        code: wire::INSUFFICIENT_PRIVILEGE,
                        message: format!("gateway: {reason}"),
                        detail: None,
                    };
                    return self
                        .refuse_extended(
                            &stmt.sql.clone(),
                            Some(&portal.params),
                            &stmt.statements.clone(),
                            refusal,
                        )
                        .await;
                }
            }
            decision = Some(Decision::RequireApproval { rule: rule.clone() });
        }
        // Masking needs the result's columns as the server describes this very portal.
        if self.ctx.masker.is_some() && !portal.is_described() {
            portal.mark_described();
            self.out
                .extend_from_slice(&wire::describe_portal(e.name.clone()));
            self.push(Pending::Describe {
                target: Described::Portal(portal.clone()),
                swallow: true,
            });
        }
        let seq = self.next_seq();
        self.record(journal::Entry {
            seq,
            protocol: "extended",
            sql: &self.ctx.redact(&stmt.sql),
            params: Some(&portal.params),
            statements: &stmt.statements,
            decision: decision.as_ref(),
            note: stmt.sql_level.then_some("SQL cursor or prepared statement"),
        })
        .await?;
        let mut exec = Exec::new(seq, stmt.statements.clone());
        exec.reads_covered = self.reads_covered(&stmt.statements);
        exec.made = self.made_by(&stmt.sql, &stmt.statements, decision.as_ref());
        exec.portal = Some(portal);
        self.shared.with(|t| {
            t.query_objects(&stmt.statements);
            t.pending.push_back(Pending::Execute(Box::new(exec)));
        });
        self.out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    async fn close<W: AsyncWrite + Unpin>(
        &mut self,
        frame: Frame,
        upstream: &mut W,
    ) -> Result<(), End> {
        let c: Close = wire::decode_frame("Close", &frame).map_err(Self::decode_error)?;
        let name = c.name.unwrap_or_default();
        let statement = c.target_type == b'S';
        if statement {
            self.settle_change(upstream, |t| t.statement_change_waits(&name))
                .await?;
        } else {
            self.settle_change(upstream, |t| t.portal_change_waits(&name))
                .await?;
        }
        let msg = self.msg;
        self.shared.with(|t| {
            t.close(statement, &name, msg);
            t.pending.push_back(Pending::Close);
        });
        self.out.extend_from_slice(&frame.bytes);
        Ok(())
    }
}
