//! Server → client: answers are matched to the client requests they answer (the server answers in
//! order), result rows are masked as they stream (one row in memory at a time), refusals get the
//! gateway's own error in place of the server's parse error, and each execution's outcome is
//! recorded when it completes.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use pgwire::messages::{
    copy::CopyOutResponse,
    data::RowDescription,
    response::{ErrorResponse, NoticeResponse, NotificationResponse},
    startup::ParameterStatus,
};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::{
    Context,
    copy::{self, CopyPlan},
    frame::{Frame, FrameReader, ReadError},
    journal,
    state::{self, Described, Exec, Pending, result_columns},
    wire::{self, GatewayError},
};
use crate::{
    mask::{Plan, ResultColumn, row_values},
    sql::{CopyDirection, CopyEndpoint},
};

const FLUSH_AT: usize = 64 * 1024;

#[derive(Debug)]
pub(super) enum End {
    /// The server closed the connection.
    Closed,
    UpstreamIo(String),
    ClientIo(String),
    /// The server sent something the gateway cannot pass on safely.
    Violation(GatewayError),
}

pub(super) struct Backend<'a> {
    notices: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    ctx: &'a Context<'a>,
    shared: &'a state::Shared,
    out: BytesMut,
    /// Masking of the result set being streamed, and the execution it belongs to.
    plan: Option<Plan>,
    plan_seq: Option<u64>,
    /// Binary flags of the current result's columns (for recording samples).
    binary: Vec<bool>,
    copy: Option<CopyPlan>,
    pub bytes_down: u64,
}

enum Forward {
    /// Pass the server's message on as it is.
    Same,
    /// Pass this instead.
    Replace(bytes::Bytes),
    /// The client never asked for this answer (gateway-injected Describe).
    Drop,
}

impl<'a> Backend<'a> {
    pub(super) fn new(
        ctx: &'a Context<'a>,
        shared: &'a state::Shared,
        notices: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    ) -> Self {
        Backend {
            notices,
            ctx,
            shared,
            out: BytesMut::new(),
            plan: None,
            plan_seq: None,
            binary: Vec::new(),
            copy: None,
            bytes_down: 0,
        }
    }

    pub(super) async fn run<R, W>(&mut self, mut reader: FrameReader<R>, mut client: W) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // Stores the outcomes of finished statements when no next statement took them along
        // within HOLD_FOR; armed at most once per delay, not per statement.
        let mut store_results = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut armed = false;
        loop {
            loop {
                let frame = match reader.buffered() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        return End::Violation(GatewayError::fatal(
                            wire::PROTOCOL_VIOLATION,
                            format!("gateway: invalid message from the server: {e}"),
                        ));
                    }
                };
                match self.handle(&frame) {
                    Ok(Forward::Same) => self.out.extend_from_slice(&frame.bytes),
                    Ok(Forward::Replace(b)) => self.out.extend_from_slice(&b),
                    Ok(Forward::Drop) => {}
                    Err(e) => {
                        let _ = self.flush(&mut client).await;
                        return e;
                    }
                }
                if self.out.len() >= FLUSH_AT
                    && let Err(e) = self.flush(&mut client).await
                {
                    return e;
                }
            }
            if let Err(e) = self.flush(&mut client).await {
                return e;
            }
            reader.shrink();
            if !armed && self.ctx.journal.has_pending_results() {
                store_results
                    .as_mut()
                    .reset(tokio::time::Instant::now() + crate::record::HOLD_FOR);
                armed = true;
            }
            // Idle: wait for the server, or for a notice of the gateway's own to pass on.
            let filled = loop {
                tokio::select! {
                    filled = reader.fill() => break filled,
                    Some(notice) = self.notices.recv() => {
                        self.out.extend_from_slice(&notice);
                        if let Err(e) = self.flush(&mut client).await {
                            return e;
                        }
                    }
                    () = &mut store_results, if armed => {
                        armed = false;
                        self.ctx.journal.flush();
                    }
                }
            };
            match filled {
                Ok(true) => {}
                Ok(false) => return End::Closed,
                Err(ReadError::Io(e)) => return End::UpstreamIo(e.to_string()),
                Err(ReadError::Frame(e)) => return End::UpstreamIo(e.to_string()),
            }
        }
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, client: &mut W) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = client.write_all(&self.out).await;
        self.bytes_down += self.out.len() as u64;
        self.out.clear();
        if self.out.capacity() > 4 * FLUSH_AT {
            self.out = BytesMut::new();
        }
        r.map_err(|e| End::ClientIo(e.to_string()))
    }

    fn handle(&mut self, frame: &Frame) -> Result<Forward, End> {
        match frame.tag {
            b'D' => self.data_row(frame),
            b'T' => self.row_description(frame),
            b'n' => Ok(self.describe_done()),
            b't' => Ok(self.shared.with(|t| match t.pending.front() {
                Some(Pending::Describe { swallow: true, .. }) => Forward::Drop,
                _ => Forward::Same,
            })),
            b'C' | b'I' => {
                let tag = if frame.tag == b'C' {
                    wire::cstr(frame.body()).map_or_else(String::new, |(t, _)| {
                        String::from_utf8_lossy(t).into_owned()
                    })
                } else {
                    "EMPTY".to_string()
                };
                self.complete(tag, false);
                Ok(Forward::Same)
            }
            b's' => {
                self.complete(String::new(), true);
                Ok(Forward::Same)
            }
            b'E' => self.error(frame),
            b'N' => self.notice(frame),
            b'A' => self.notification(frame),
            b'S' => self.parameter_status(frame),
            b'Z' => {
                self.ready(frame.body().first().copied().unwrap_or(b'I'));
                Ok(Forward::Same)
            }
            b'1' => Ok(self.pop_if(|p| matches!(p, Pending::Parse { .. }))),
            b'2' => Ok(self.pop_if(|p| matches!(p, Pending::Bind { .. }))),
            b'3' => Ok(self.pop_if(|p| matches!(p, Pending::Close))),
            b'H' => {
                self.copy_out(frame)?;
                Ok(Forward::Same)
            }
            b'd' => Ok(self.copy_data(frame)),
            b'c' => {
                self.copy = None;
                Ok(Forward::Same)
            }
            // Copy-in responses and anything else pass.
            _ => Ok(Forward::Same),
        }
    }

    fn violation(message: String) -> End {
        End::Violation(GatewayError::fatal(wire::PROTOCOL_VIOLATION, message))
    }

    fn pop_if(&self, f: impl Fn(&Pending) -> bool) -> Forward {
        self.shared.with(|t| {
            if t.pending.front().is_some_and(f) {
                t.pending.pop_front();
            }
        });
        Forward::Same
    }

    fn set_plan(&mut self, columns: Option<Vec<ResultColumn>>, exec: &mut Exec) {
        self.plan_seq = Some(exec.seq);
        self.copy = None;
        let Some(columns) = columns else {
            self.plan = None;
            self.binary.clear();
            return;
        };
        self.binary.clear();
        self.binary.extend(columns.iter().map(|c| c.binary));
        self.plan = self
            .ctx
            .masker
            .as_ref()
            .map(|m| m.plan(&columns, &self.ctx.coverage))
            .filter(|p| !p.is_noop());
        // The names move into the recording (not cloned).
        exec.sample_columns = columns.into_iter().map(|c| c.name).collect();
    }

    fn row_description(&mut self, frame: &Frame) -> Result<Forward, End> {
        let rd: RowDescription = wire::decode_frame("RowDescription", frame)
            .map_err(|e| Self::violation(format!("gateway: {e}")))?;
        let fields = Arc::new(rd.fields);
        let mut take_plan = None;
        let fwd = self.shared.with(|t| match t.pending.front_mut() {
            Some(Pending::Describe { .. }) => {
                let Some(Pending::Describe { target, swallow }) = t.pending.pop_front() else {
                    return Forward::Same;
                };
                match target {
                    Described::Statement(s) => s.set_columns(fields.clone()),
                    Described::Portal(p) => p.set_columns(fields.clone()),
                }
                if swallow {
                    Forward::Drop
                } else {
                    Forward::Same
                }
            }
            Some(Pending::Query(_)) => {
                take_plan = Some(result_columns(&fields, None));
                Forward::Same
            }
            _ => Forward::Same,
        });
        if let Some(columns) = take_plan {
            let shared = self.shared;
            shared.with(|t| {
                if let Some(Pending::Query(exec)) = t.pending.front_mut() {
                    self.set_plan(Some(columns), exec);
                }
            });
        }
        Ok(fwd)
    }

    /// NoData: the described statement or portal returns no rows.
    fn describe_done(&mut self) -> Forward {
        self.shared.with(|t| match t.pending.front() {
            Some(Pending::Describe { .. }) => {
                let Some(Pending::Describe { target, swallow }) = t.pending.pop_front() else {
                    return Forward::Same;
                };
                let none = Arc::new(Vec::new());
                match target {
                    Described::Statement(s) => s.set_columns(none),
                    Described::Portal(p) => p.set_columns(none),
                }
                if swallow {
                    Forward::Drop
                } else {
                    Forward::Same
                }
            }
            _ => Forward::Same,
        })
    }

    fn data_row(&mut self, frame: &Frame) -> Result<Forward, End> {
        let shared = self.shared;
        shared.with(|t| {
            let exec = match t.pending.front_mut() {
                Some(Pending::Query(e)) | Some(Pending::Execute(e)) => e,
                _ => return Ok(Forward::Same),
            };
            exec.rows += 1;
            if self.plan_seq != Some(exec.seq) {
                // First row of an Execute: its portal's columns.
                let columns = exec.portal.as_ref().and_then(|p| p.result_columns());
                if columns.is_none() && self.ctx.masker.is_some() {
                    return Err(Self::violation(
                        "gateway: result rows without a known row description; refusing to pass them unmasked".into(),
                    ));
                }
                self.set_plan(columns, exec);
            }
            let body = &frame.body();
            let masked = match &self.plan {
                None => None,
                Some(plan) => plan.apply(body).map_err(|e| {
                    Self::violation(format!("gateway: cannot mask a result row: {e}"))
                })?,
            };
            let fwd = match &masked {
                None => Forward::Same,
                Some((new_body, n)) => {
                    exec.masked += *n as u64;
                    Forward::Replace(wire::message(b'D', new_body))
                }
            };
            if self.ctx.journal.wants_sample(exec) {
                let shown = masked.as_ref().map_or(&body[..], |(b, _)| &b[..]);
                if let Ok(values) = row_values(shown) {
                    let row: Vec<Value> = values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            journal::value(*v, self.binary.get(i).copied().unwrap_or(false))
                        })
                        .collect();
                    self.ctx.journal.keep_sample(exec, row);
                }
            }
            Ok(fwd)
        })
    }

    /// CommandComplete, EmptyQueryResponse or PortalSuspended. A completed PREPARE, DEALLOCATE,
    /// DECLARE, CLOSE or DISCARD changes the server's maps: now the gateway's too.
    fn complete(&mut self, tag: String, suspended: bool) {
        self.plan = None;
        self.plan_seq = None;
        self.copy = None;
        let journal = &self.ctx.journal;
        self.shared.with(|t| {
            let (exec, is_execute) = match t.pending.front_mut() {
                Some(Pending::Query(exec)) => (exec, false),
                Some(Pending::Execute(exec)) => (exec, true),
                _ => return,
            };
            let index = if is_execute { 0 } else { exec.tags.len() };
            let confirmed = (!suspended && exec.refusal.is_none())
                .then(|| {
                    let object = exec.statements.get(index)?.object.clone()?;
                    let made = exec.made.get_mut(index).and_then(Option::take);
                    Some((object, made))
                })
                .flatten();
            if !tag.is_empty() || !is_execute {
                exec.tags.push(tag);
            }
            exec.suspended = suspended;
            if is_execute {
                journal.result(exec, false);
                t.pending.pop_front();
            }
            if let Some((object, made)) = confirmed {
                t.confirm_sql(&object, made);
            }
        });
    }

    /// The text fields of an ErrorResponse or NoticeResponse, masked: detectors over the texts
    /// that can quote data, or (when the statement reads masked columns) those texts withheld.
    fn mask_fields(&self, fields: &mut Vec<(u8, String)>, withhold: bool) -> bool {
        let Some(masker) = &self.ctx.masker else {
            return false;
        };
        let mut changed = false;
        if withhold {
            let code = fields
                .iter()
                .find(|(k, _)| *k == b'C')
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            fields.retain(|(k, _)| !matches!(k, b'D' | b'H' | b'W' | b'q' | b'p'));
            for (k, v) in fields.iter_mut() {
                if *k == b'M' {
                    *v = format!(
                        "gateway: message withheld (SQLSTATE {code}): the statement reads masked columns, and the server's text could quote their values"
                    );
                }
            }
            return true;
        }
        for (k, v) in fields.iter_mut() {
            if matches!(k, b'M' | b'D' | b'H' | b'W' | b'q')
                && let std::borrow::Cow::Owned(masked) = masker.redact_str(v)
            {
                *v = masked;
                changed = true;
            }
        }
        changed
    }

    /// Whether the execution being answered reads masked columns.
    fn answering_covered(t: &state::Tracker) -> bool {
        matches!(t.pending.front(), Some(Pending::Query(e)) | Some(Pending::Execute(e)) if e.reads_covered)
    }

    fn error(&mut self, frame: &Frame) -> Result<Forward, End> {
        self.plan = None;
        self.plan_seq = None;
        self.copy = None;
        let mut e: ErrorResponse = wire::decode_frame("ErrorResponse", frame)
            .map_err(|e| Self::violation(format!("gateway: {e}")))?;
        let withhold = self.shared.with(|t| Self::answering_covered(t));
        let masked = self.mask_fields(&mut e.fields, withhold);
        let field = |k: u8| {
            e.fields
                .iter()
                .find(|(c, _)| *c == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (code, message) = (field(b'C'), field(b'M'));
        let own = if masked {
            Forward::Replace(wire::encode_error(&e))
        } else {
            Forward::Same
        };
        let journal = &self.ctx.journal;
        Ok(self.shared.with(|t| {
            let replace = |r: &state::Refusal| {
                let mut e = GatewayError::error(r.code, r.message.clone());
                if let Some(d) = &r.detail {
                    e = e.with_detail(d.clone());
                }
                Forward::Replace(e.encode())
            };
            match t.pending.front_mut() {
                Some(Pending::Query(exec)) => match &exec.refusal {
                    Some(r) => replace(r),
                    None => {
                        exec.error = Some((code, message));
                        own
                    }
                },
                Some(p) if p.is_extended() => {
                    let Some(p) = t.pending.pop_front() else {
                        return own;
                    };
                    t.failed(&p);
                    t.skipping = true;
                    match p {
                        Pending::Parse {
                            refusal: Some(r), ..
                        }
                        | Pending::Refused(r) => replace(&r),
                        Pending::Execute(mut exec) => {
                            exec.error = Some((code, message));
                            journal.result(&exec, false);
                            own
                        }
                        _ => own,
                    }
                }
                // An error at Sync (a failing commit), or one of the server's own (shutdown).
                _ => own,
            }
        }))
    }

    fn notice(&mut self, frame: &Frame) -> Result<Forward, End> {
        if self.ctx.masker.is_none() {
            return Ok(Forward::Same);
        }
        let mut n: NoticeResponse = wire::decode_frame("NoticeResponse", frame)
            .map_err(|e| Self::violation(format!("gateway: {e}")))?;
        let withhold = self.shared.with(|t| Self::answering_covered(t));
        Ok(if self.mask_fields(&mut n.fields, withhold) {
            Forward::Replace(wire::encode_notice(&n))
        } else {
            Forward::Same
        })
    }

    /// LISTEN/NOTIFY payloads can carry data (`pg_notify(channel, value)`): detectors run over them.
    fn notification(&mut self, frame: &Frame) -> Result<Forward, End> {
        let Some(masker) = &self.ctx.masker else {
            return Ok(Forward::Same);
        };
        let mut n: NotificationResponse = wire::decode_frame("NotificationResponse", frame)
            .map_err(|e| Self::violation(format!("gateway: {e}")))?;
        let payload = masker.redact_str(&n.payload).into_owned();
        let channel = masker.redact_str(&n.channel).into_owned();
        if payload == n.payload && channel == n.channel {
            return Ok(Forward::Same);
        }
        n.payload = payload;
        n.channel = channel;
        Ok(Forward::Replace(wire::encode(&n)))
    }

    /// ParameterStatus: the settings that decide how the server reads SQL must stay what the
    /// gateway pinned, and the session's user what it logged in as; anything else reported (an
    /// `application_name` set from data) goes through the detectors.
    fn parameter_status(&mut self, frame: &Frame) -> Result<Forward, End> {
        let mut p: ParameterStatus = wire::decode_frame("ParameterStatus", frame)
            .map_err(|e| Self::violation(format!("gateway: {e}")))?;
        if let Err(why) = self.ctx.session.check_report(&p.name, &p.value) {
            tracing::warn!(session = self.ctx.session_id, setting = %p.name, value = %p.value, "server reports a changed session setting; closing");
            return Err(End::Violation(GatewayError::fatal(
                wire::FEATURE_NOT_SUPPORTED,
                format!("gateway: {why}; closing the session"),
            )));
        }
        let Some(masker) = &self.ctx.masker else {
            return Ok(Forward::Same);
        };
        let value = masker.redact_str(&p.value).into_owned();
        if value == p.value {
            return Ok(Forward::Same);
        }
        p.value = value;
        Ok(Forward::Replace(wire::encode(&p)))
    }

    /// ReadyForQuery ends a simple Query, or a pipeline at its Sync (with everything the server
    /// skipped after an error).
    fn ready(&mut self, status: u8) {
        let journal = &self.ctx.journal;
        self.shared.with(|t| {
            while let Some(p) = t.pending.pop_front() {
                match p {
                    Pending::Sync => break,
                    Pending::Query(exec) if !t.skipping => {
                        journal.result(&exec, false);
                        break;
                    }
                    Pending::Query(exec) | Pending::Execute(exec) => {
                        journal.result(&exec, true);
                    }
                    other => t.failed(&other),
                }
            }
            t.skipping = false;
            t.answered(status);
        });
    }

    /// CopyOutResponse: plans the masking of the rows that follow, from the statement being run
    /// and the server's own description of the data (format, column count); data the plan does
    /// not fit is never passed on.
    fn copy_out(&mut self, frame: &Frame) -> Result<(), End> {
        if self.ctx.masker.is_none() {
            return Ok(());
        }
        let response: CopyOutResponse = wire::decode_frame("CopyOutResponse", frame)
            .map_err(|e| Self::violation(format!("gateway: {e}")))?;
        let coverage = &self.ctx.coverage;
        let plan = self.shared.with(|t| {
            let exec = match t.pending.front() {
                Some(Pending::Query(e)) | Some(Pending::Execute(e)) => e,
                _ => return Ok(CopyPlan::detectors_only()),
            };
            // The statement of a multi-statement query that is running: one per completed tag.
            let index = if matches!(t.pending.front(), Some(Pending::Execute(_))) {
                0
            } else {
                exec.tags.len()
            };
            match exec.statements.get(index).and_then(|s| s.copy.as_ref()) {
                Some(spec)
                    if spec.direction == CopyDirection::To
                        && spec.endpoint == CopyEndpoint::Client =>
                {
                    copy::plan(coverage, spec)
                }
                _ if coverage.is_empty() => Ok(CopyPlan::detectors_only()),
                _ => Err("COPY output the gateway did not plan for".to_string()),
            }
        });
        let plan = plan.and_then(|p| {
            p.matches(response.format != 0, response.columns.max(0) as usize)
                .map(|()| p)
        });
        match plan {
            Ok(p) => {
                self.copy = Some(p);
                Ok(())
            }
            Err(why) => Err(End::Violation(GatewayError::fatal(
                wire::FEATURE_NOT_SUPPORTED,
                format!("gateway: cannot mask this COPY output: {why}; closing the session"),
            ))),
        }
    }

    fn copy_data(&mut self, frame: &Frame) -> Forward {
        let (Some(plan), Some(masker)) = (&mut self.copy, &self.ctx.masker) else {
            return Forward::Same;
        };
        let result = plan.apply(masker, frame.body());
        self.shared.with(|t| {
            if let Some(Pending::Query(e)) | Some(Pending::Execute(e)) = t.pending.front_mut() {
                e.rows += 1;
                if let Some((_, n)) = &result {
                    e.masked += *n as u64;
                }
            }
        });
        match result {
            None => Forward::Same,
            Some((data, _)) => Forward::Replace(wire::message(b'd', &data)),
        }
    }
}
