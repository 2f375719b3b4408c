//! Server → client: answers are matched to the client requests they answer (the server answers in
//! order), result rows are masked as they stream (one row in memory at a time), refusals get the
//! gateway's own error in place of the server's parse error, and each execution's outcome is
//! recorded when it completes.

use std::{sync::Arc, time::Duration};

use bytes::{BufMut as _, BytesMut};
use pgwire::messages::data::RowDescription;
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
pub enum End {
    /// The server closed the connection.
    Closed,
    UpstreamIo(String),
    ClientIo(String),
    /// The server sent something the gateway cannot pass on safely.
    Violation(GatewayError),
}

pub struct Backend<'a> {
    notices: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    ctx: &'a Context<'a>,
    tracker: &'a state::Shared,
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
    pub fn new(
        ctx: &'a Context<'a>,
        tracker: &'a state::Shared,
        notices: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    ) -> Self {
        Backend {
            notices,
            ctx,
            tracker,
            out: BytesMut::new(),
            plan: None,
            plan_seq: None,
            binary: Vec::new(),
            copy: None,
            bytes_down: 0,
        }
    }

    pub async fn run<R, W>(&mut self, mut reader: FrameReader<R>, mut client: W) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // Stores the outcomes of finished statements when no next statement took them along
        // within RESULT_DELAY; armed at most once per delay, not per statement.
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
                    .reset(tokio::time::Instant::now() + journal::RESULT_DELAY);
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
            b'n' => Ok(self.describe_done(None)),
            b't' => Ok(state::with(self.tracker, |t| match t.pending.front() {
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
            b'E' => Ok(self.error(frame)),
            b'Z' => {
                self.ready(frame.body().first().copied().unwrap_or(b'I'));
                Ok(Forward::Same)
            }
            b'1' => Ok(self.pop_if(|p| matches!(p, Pending::Parse { .. }))),
            b'2' => Ok(self.pop_if(|p| matches!(p, Pending::Bind))),
            b'3' => Ok(self.pop_if(|p| matches!(p, Pending::Close))),
            b'H' => {
                self.copy_out();
                Ok(Forward::Same)
            }
            b'd' => Ok(self.copy_data(frame)),
            b'c' => {
                self.copy = None;
                Ok(Forward::Same)
            }
            // Notices, notifications, parameter changes, copy-in responses and anything else pass.
            _ => Ok(Forward::Same),
        }
    }

    fn pop_if(&self, f: impl Fn(&Pending) -> bool) -> Forward {
        state::with(self.tracker, |t| {
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
        exec.sample_columns = columns.iter().map(|c| c.name.clone()).collect();
        self.binary = columns.iter().map(|c| c.binary).collect();
        self.plan = self
            .ctx
            .masker
            .as_ref()
            .map(|m| m.plan(&columns, &self.ctx.covered))
            .filter(|p| !p.is_noop());
    }

    fn row_description(&mut self, frame: &Frame) -> Result<Forward, End> {
        let rd: RowDescription = wire::decode_frame("RowDescription", frame).map_err(|e| {
            End::Violation(GatewayError::fatal(
                wire::PROTOCOL_VIOLATION,
                format!("gateway: {e}"),
            ))
        })?;
        let fields = Arc::new(rd.fields);
        let mut take_plan = None;
        let fwd = state::with(self.tracker, |t| match t.pending.front_mut() {
            Some(Pending::Describe { .. }) => {
                let Some(Pending::Describe { target, swallow }) = t.pending.pop_front() else {
                    unreachable!()
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
            let tracker = self.tracker;
            let mut guard = tracker.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(Pending::Query(exec)) = guard.pending.front_mut() {
                self.set_plan(Some(columns), exec);
            }
        }
        Ok(fwd)
    }

    fn describe_done(&mut self, _columns: Option<()>) -> Forward {
        state::with(self.tracker, |t| match t.pending.front() {
            Some(Pending::Describe { .. }) => {
                let Some(Pending::Describe { target, swallow }) = t.pending.pop_front() else {
                    unreachable!()
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
        let tracker = self.tracker;
        let mut guard = tracker.lock().unwrap_or_else(|p| p.into_inner());
        let exec = match guard.pending.front_mut() {
            Some(Pending::Query(e)) | Some(Pending::Execute(e)) => e,
            _ => return Ok(Forward::Same),
        };
        exec.rows += 1;
        if self.plan_seq != Some(exec.seq) {
            // First row of an Execute: its portal's columns.
            let columns = exec.portal.as_ref().and_then(|p| p.result_columns());
            if columns.is_none() && self.ctx.masker.is_some() {
                return Err(End::Violation(GatewayError::fatal(
                    wire::PROTOCOL_VIOLATION,
                    "gateway: result rows without a known row description; refusing to pass them unmasked",
                )));
            }
            self.set_plan(columns, exec);
        }
        let body = &frame.body();
        let masked = match &self.plan {
            None => None,
            Some(plan) => plan.apply(body).map_err(|e| {
                End::Violation(GatewayError::fatal(
                    wire::PROTOCOL_VIOLATION,
                    format!("gateway: cannot mask a result row: {e}"),
                ))
            })?,
        };
        let fwd = match &masked {
            None => Forward::Same,
            Some((new_body, n)) => {
                exec.masked += *n as u64;
                let mut b = BytesMut::with_capacity(new_body.len() + 5);
                b.put_u8(b'D');
                b.put_i32((new_body.len() + 4) as i32);
                b.put_slice(new_body);
                Forward::Replace(b.freeze())
            }
        };
        if self.ctx.journal.wants_sample(exec) {
            let shown = masked.as_ref().map_or(&body[..], |(b, _)| &b[..]);
            if let Ok(values) = row_values(shown) {
                let row: Vec<Value> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| journal::value(*v, self.binary.get(i).copied().unwrap_or(false)))
                    .collect();
                self.ctx.journal.keep_sample(exec, row);
            }
        }
        Ok(fwd)
    }

    /// CommandComplete, EmptyQueryResponse or PortalSuspended.
    fn complete(&mut self, tag: String, suspended: bool) {
        self.plan = None;
        self.plan_seq = None;
        self.copy = None;
        state::with(self.tracker, |t| match t.pending.front_mut() {
            Some(Pending::Query(exec)) => exec.tags.push(tag),
            Some(Pending::Execute(exec)) => {
                if !tag.is_empty() {
                    exec.tags.push(tag);
                }
                exec.suspended = suspended;
                self.ctx.journal.result(exec, false);
                t.pending.pop_front();
            }
            _ => {}
        });
    }

    fn error(&mut self, frame: &Frame) -> Forward {
        let (code, message) = wire::error_fields(frame);
        self.plan = None;
        self.plan_seq = None;
        self.copy = None;
        state::with(self.tracker, |t| {
            let replace = |r: &state::Refusal| {
                let mut e = GatewayError::error(wire::INSUFFICIENT_PRIVILEGE, r.message.clone());
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
                        Forward::Same
                    }
                },
                Some(p) if p.is_extended() => {
                    let p = t.pending.pop_front().expect("front exists");
                    t.skipping = true;
                    match p {
                        Pending::Parse {
                            refusal: Some(r), ..
                        } => replace(&r),
                        Pending::Execute(mut exec) => {
                            exec.error = Some((code, message));
                            self.ctx.journal.result(&exec, false);
                            Forward::Same
                        }
                        _ => Forward::Same,
                    }
                }
                // An error at Sync (a failing commit), or one of the server's own (shutdown).
                _ => Forward::Same,
            }
        })
    }

    /// ReadyForQuery ends a simple Query, or a pipeline at its Sync (with everything the server
    /// skipped after an error).
    fn ready(&mut self, status: u8) {
        state::with(self.tracker, |t| {
            while let Some(p) = t.pending.pop_front() {
                match p {
                    Pending::Sync => break,
                    Pending::Query(exec) if !t.skipping => {
                        self.ctx.journal.result(&exec, false);
                        break;
                    }
                    Pending::Query(exec) | Pending::Execute(exec) => {
                        self.ctx.journal.result(&exec, true);
                    }
                    _ => {}
                }
            }
            t.skipping = false;
            t.status = status;
        });
    }

    fn copy_out(&mut self) {
        let Some(masker) = self.ctx.masker.clone() else {
            return;
        };
        state::with(self.tracker, |t| {
            let exec = match t.pending.front() {
                Some(Pending::Query(e)) | Some(Pending::Execute(e)) => e,
                _ => return,
            };
            // The statement of a multi-statement query that is running: one per completed tag.
            let index = exec.tags.len();
            let copying = exec
                .statements
                .get(index)
                .filter(|s| s.copy.is_some())
                .or_else(|| exec.statements.iter().find(|s| s.copy.is_some()));
            let plan = copying.and_then(|s| {
                let spec = s.copy.as_ref()?;
                (spec.direction == CopyDirection::To && spec.endpoint == CopyEndpoint::Client)
                    .then(|| copy::plan(&masker, s, spec).ok())
                    .flatten()
            });
            // Unplanned output (the frontend refuses what it cannot mask): detectors at least.
            self.copy = Some(plan.unwrap_or_else(CopyPlan::detectors_only));
        });
    }

    fn copy_data(&mut self, frame: &Frame) -> Forward {
        let (Some(plan), Some(masker)) = (&self.copy, &self.ctx.masker) else {
            return Forward::Same;
        };
        let result = plan.apply(masker, frame.body());
        state::with(self.tracker, |t| {
            if let Some(Pending::Query(e)) | Some(Pending::Execute(e)) = t.pending.front_mut() {
                e.rows += 1;
                if let Some((_, n)) = &result {
                    e.masked += *n as u64;
                }
            }
        });
        match result {
            None => Forward::Same,
            Some((data, _)) => {
                let mut b = BytesMut::with_capacity(data.len() + 5);
                b.put_u8(b'd');
                b.put_i32((data.len() + 4) as i32);
                b.put_slice(&data);
                Forward::Replace(b.freeze())
            }
        }
    }
}
