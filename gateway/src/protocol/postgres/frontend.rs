//! Client → server: every message is framed and checked; statements (each one of a simple Query,
//! every Parse) are classified and put to policy; what is allowed is recorded write-ahead and
//! forwarded as the client sent it; what is refused is replaced by a statement that fails at parse
//! time, so that the server itself takes the transaction (and extended-protocol error recovery)
//! exactly where a real error would.

use std::{collections::HashMap, sync::Arc};

use bytes::BytesMut;
use pgwire::messages::extendedquery::{Bind, Close, Describe, Execute, Parse};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::{
    Context, copy,
    frame::{Frame, FrameReader, ReadError},
    journal,
    state::{self, Described, Exec, Pending, Portal, Refusal, Stmt},
    wire::{self, GatewayError},
};
use crate::{
    approval::{ApprovalOutcome, ApprovalRequest, Submission, peer_closed},
    policy::Decision,
    sql::{CopyDirection, CopyEndpoint, SqlStatement, Statements},
};

/// Sent upstream in place of a refused statement: fails in the parser, touches nothing, and puts
/// the server in exactly the error state a real failing statement would.
pub const REFUSED_SQL: &str = "gateway refused this statement";

/// Most parameters recorded per Bind.
const MAX_PARAMS_RECORDED: usize = 64;
/// Output is written once this much is queued, even mid-batch.
const FLUSH_AT: usize = 64 * 1024;

#[derive(Debug)]
pub enum End {
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

pub struct Frontend<'a> {
    ctx: &'a Context<'a>,
    tracker: &'a state::Shared,
    statements: HashMap<String, Arc<Stmt>>,
    portals: HashMap<String, Arc<Portal>>,
    seq: u64,
    out: BytesMut,
    pub bytes_up: u64,
}

/// The policy outcome for one piece of SQL text.
struct Verdict {
    decision: Option<Decision>,
    refusal: Option<Refusal>,
}

impl<'a> Frontend<'a> {
    pub fn new(ctx: &'a Context<'a>, tracker: &'a state::Shared) -> Self {
        Frontend {
            ctx,
            tracker,
            statements: HashMap::new(),
            portals: HashMap::new(),
            seq: 0,
            out: BytesMut::new(),
            bytes_up: 0,
        }
    }

    pub async fn run<R, W>(&mut self, mut reader: FrameReader<R>, mut upstream: W) -> End
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
                if let Err(end) = self.handle(frame).await {
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
        state::with(self.tracker, |t| t.pending.push_back(p));
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), End> {
        match frame.tag {
            b'Q' => self.query(frame).await,
            b'P' => self.parse(frame).await,
            b'B' => self.bind(frame),
            b'D' => self.describe(frame),
            b'E' => self.execute(frame).await,
            b'C' => self.close(frame),
            b'S' => {
                self.push(Pending::Sync);
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

    /// The text of a Query or Parse: pgwire's decoding, but SQL that is not UTF-8 is never guessed
    /// at (a lossy decode would classify different text than the server runs).
    fn sql_text(decoded: String, raw_sql: &[u8]) -> (String, bool) {
        let valid = std::str::from_utf8(raw_sql).is_ok();
        (decoded, valid)
    }

    fn classify(&self, sql: &str, valid_utf8: bool) -> Statements {
        if !valid_utf8 {
            return Arc::new(vec![SqlStatement::unparsed(
                "the statement is not valid UTF-8",
            )]);
        }
        self.ctx.classifier.classify(sql)
    }

    /// Puts every statement of `statements` to policy (and approval), then checks that results it
    /// sends can be masked.
    async fn judge(&self, sql: &str, statements: &[SqlStatement]) -> Verdict {
        let ctx = self.ctx;
        let mut decision = None;
        let count = statements.len();
        for (i, s) in statements.iter().enumerate() {
            let d = ctx
                .policy
                .decide_statement(ctx.identity, &ctx.target.name, s);
            let which = (count > 1).then(|| {
                format!(
                    "statement {} of {count} ({}); nothing in this query was executed",
                    i + 1,
                    s.kind
                )
            });
            match &d {
                Decision::Allow { .. } => decision = Some(d),
                Decision::Deny { rule, reason } => {
                    let message = match rule {
                        Some(r) if !reason.contains(&format!("{r:?}")) => {
                            format!("gateway: denied by rule {r:?}: {reason}")
                        }
                        _ => format!("gateway: {reason}"),
                    };
                    let refusal = Refusal {
                        rule: rule.clone(),
                        message,
                        detail: which,
                    };
                    return Verdict {
                        decision: Some(d),
                        refusal: Some(refusal),
                    };
                }
                Decision::RequireApproval { rule } => {
                    let request = ApprovalRequest {
                        session_id: ctx.session_id,
                        target: ctx.target.name.clone(),
                        rule: rule.clone(),
                        identity: ctx.identity.clone(),
                        operation: sql.to_string(),
                        kind: "sql".to_string(),
                        detail: serde_json::json!({
                            "statement": s,
                            "of": count,
                        }),
                        process: ctx.process.cloned(),
                        job_id: ctx.job_id.map(str::to_string),
                    };
                    match self.await_approval(&request).await {
                        ApprovalOutcome::Approved { .. } => decision = Some(d),
                        ApprovalOutcome::Denied { reason } => {
                            return Verdict {
                                refusal: Some(Refusal {
                                    rule: Some(rule.clone()),
                                    message: format!("gateway: {reason}"),
                                    detail: which,
                                }),
                                decision: Some(Decision::Deny {
                                    rule: Some(rule.clone()),
                                    reason,
                                }),
                            };
                        }
                    }
                }
            }
        }
        // A COPY to this connection must be maskable before it starts.
        if let Some(m) = &ctx.masker {
            for s in statements {
                let Some(spec) = &s.copy else { continue };
                if spec.direction != CopyDirection::To || spec.endpoint != CopyEndpoint::Client {
                    continue;
                }
                if let Err(why) = copy::plan(m, s, spec) {
                    let reason =
                        format!("masking rules apply to target {:?}: {why}", ctx.target.name);
                    return Verdict {
                        refusal: Some(Refusal {
                            rule: m.rules.first().cloned(),
                            message: format!("gateway: {reason}"),
                            detail: None,
                        }),
                        decision: Some(Decision::Deny {
                            rule: m.rules.first().cloned(),
                            reason,
                        }),
                    };
                }
            }
        }
        Verdict {
            decision,
            refusal: None,
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

    async fn query(&mut self, frame: Frame) -> Result<(), End> {
        // Read in place (as pgwire would: the text up to the first NUL), without copying the
        // message or the text.
        let raw = wire::cstr(frame.body())
            .map(|(sql, _)| sql)
            .ok_or_else(|| {
                Self::decode_error(wire::DecodeError {
                    what: "Query",
                    reason: "missing terminator".into(),
                })
            })?;
        let valid = std::str::from_utf8(raw).is_ok();
        let sql = String::from_utf8_lossy(raw);
        let statements = self.classify(&sql, valid);
        let verdict = self.judge(&sql, &statements).await;
        self.seq += 1;
        let seq = self.seq;
        self.record(journal::Entry {
            seq,
            protocol: "simple",
            sql: &sql,
            params: None,
            statements: &statements,
            decision: verdict.decision.as_ref(),
            note: None,
        })
        .await?;
        let mut exec = Exec::new(seq, statements);
        match verdict.refusal {
            Some(r) => {
                exec.refusal = Some(r);
                self.out.extend_from_slice(&wire::query(REFUSED_SQL));
            }
            None => self.out.extend_from_slice(&frame.bytes),
        }
        self.push(Pending::Query(Box::new(exec)));
        Ok(())
    }

    /// A message refused outright: the server answers an erroring Query in its place (error, then
    /// ReadyForQuery with the right transaction status).
    async fn refuse_as_query(
        &mut self,
        what: &str,
        statements: Statements,
        refusal: Refusal,
    ) -> Result<(), End> {
        self.seq += 1;
        let decision = Decision::Deny {
            rule: refusal.rule.clone(),
            reason: refusal.message.clone(),
        };
        self.record(journal::Entry {
            seq: self.seq,
            protocol: "simple",
            sql: what,
            params: None,
            statements: &statements,
            decision: Some(&decision),
            note: None,
        })
        .await?;
        let mut exec = Exec::new(self.seq, statements);
        exec.refusal = Some(refusal);
        self.out.extend_from_slice(&wire::query(REFUSED_SQL));
        self.push(Pending::Query(Box::new(exec)));
        Ok(())
    }

    async fn parse(&mut self, frame: Frame) -> Result<(), End> {
        let p: Parse = wire::decode_frame("Parse", &frame).map_err(Self::decode_error)?;
        let raw_sql = wire::cstr(frame.body())
            .and_then(|(_, rest)| wire::cstr(rest))
            .map_or(&[][..], |(sql, _)| sql);
        let (sql, valid) = Self::sql_text(p.query, raw_sql);
        let statements = self.classify(&sql, valid);
        let verdict = self.judge(&sql, &statements).await;
        let name = p.name.clone().unwrap_or_default();
        let rule = verdict
            .decision
            .as_ref()
            .and_then(|d| d.rule())
            .map(str::to_string);
        if verdict.refusal.is_some() {
            // Refusals are recorded here; allowed statements when they are executed.
            self.seq += 1;
            self.record(journal::Entry {
                seq: self.seq,
                protocol: "extended",
                sql: &sql,
                params: None,
                statements: &statements,
                decision: verdict.decision.as_ref(),
                note: Some("refused at Parse"),
            })
            .await?;
            self.out
                .extend_from_slice(&wire::parse(p.name.clone(), REFUSED_SQL));
        } else {
            self.out.extend_from_slice(&frame.bytes);
        }
        let stmt = Arc::new(Stmt::new(
            Arc::from(sql.as_str()),
            statements,
            verdict.refusal.clone(),
            rule,
        ));
        self.statements.insert(name, stmt);
        self.push(Pending::Parse {
            refusal: verdict.refusal,
        });
        Ok(())
    }

    fn statement(&self, name: &str) -> Arc<Stmt> {
        self.statements.get(name).cloned().unwrap_or_else(|| {
            // Unknown to the gateway: the server will refuse it too ("does not exist").
            Arc::new(Stmt::new(Arc::from(""), Arc::new(Vec::new()), None, None))
        })
    }

    fn portal(&self, name: &str) -> Arc<Portal> {
        self.portals.get(name).cloned().unwrap_or_else(|| {
            Arc::new(Portal {
                stmt: self.statement(""),
                result_formats: Vec::new(),
                params: Vec::new(),
                described: Default::default(),
                columns: Default::default(),
            })
        })
    }

    fn bind(&mut self, frame: Frame) -> Result<(), End> {
        let b: Bind = wire::decode_frame("Bind", &frame).map_err(Self::decode_error)?;
        let stmt = self.statement(b.statement_name.as_deref().unwrap_or(""));
        let formats = &b.parameter_format_codes;
        let params = b
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
                journal::value(v.as_deref(), binary)
            })
            .collect();
        let portal = Arc::new(Portal {
            stmt,
            result_formats: b.result_column_format_codes.clone(),
            params,
            described: Default::default(),
            columns: Default::default(),
        });
        self.portals
            .insert(b.portal_name.clone().unwrap_or_default(), portal);
        self.push(Pending::Bind);
        self.out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    fn describe(&mut self, frame: Frame) -> Result<(), End> {
        let d: Describe = wire::decode_frame("Describe", &frame).map_err(Self::decode_error)?;
        let name = d.name.unwrap_or_default();
        let target = if d.target_type == b'S' {
            let s = self.statement(&name);
            s.mark_described();
            Described::Statement(s)
        } else {
            let p = self.portal(&name);
            p.mark_described();
            Described::Portal(p)
        };
        self.push(Pending::Describe {
            target,
            swallow: false,
        });
        self.out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    async fn execute(&mut self, frame: Frame) -> Result<(), End> {
        let e: Execute = wire::decode_frame("Execute", &frame).map_err(Self::decode_error)?;
        let name = e.name.clone().unwrap_or_default();
        let portal = self.portal(&name);
        // Masking needs the result's columns; ask for them when the client did not.
        if self.ctx.masker.is_some() && !portal.is_described() {
            portal.mark_described();
            self.out
                .extend_from_slice(&wire::describe_portal(e.name.clone()));
            self.push(Pending::Describe {
                target: Described::Portal(portal.clone()),
                swallow: true,
            });
        }
        self.seq += 1;
        let stmt = &portal.stmt;
        let decision = stmt.rule.clone().map(|rule| Decision::Allow { rule });
        if stmt.refusal.is_none() {
            self.record(journal::Entry {
                seq: self.seq,
                protocol: "extended",
                sql: &stmt.sql,
                params: Some(&portal.params),
                statements: &stmt.statements,
                decision: decision.as_ref(),
                note: None,
            })
            .await?;
        }
        let mut exec = Exec::new(self.seq, stmt.statements.clone());
        exec.portal = Some(portal.clone());
        self.push(Pending::Execute(Box::new(exec)));
        self.out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    fn close(&mut self, frame: Frame) -> Result<(), End> {
        let c: Close = wire::decode_frame("Close", &frame).map_err(Self::decode_error)?;
        let name = c.name.unwrap_or_default();
        if c.target_type == b'S' {
            self.statements.remove(&name);
        } else {
            self.portals.remove(&name);
        }
        self.push(Pending::Close);
        self.out.extend_from_slice(&frame.bytes);
        Ok(())
    }
}
