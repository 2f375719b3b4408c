//! Records of jobs, sessions and session events, and the queries over them.

use std::borrow::Cow;

use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;

use super::event::EventKind;
use super::{
    Store, StoreError,
    journal::{EventRow, Record},
};
use crate::identity::Identity;

pub use crate::time::now;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// A connection the gateway accepted and served (or refused by policy).
    Proxied,
    /// A connection to the listener with no intercept record: someone connected to it directly.
    Anomaly,
    /// Something the kernel programs refused or let through without the gateway in the path.
    Kernel,
    /// How many records of one job (or of no job) a budget kept out of the store in a second.
    Suppressed,
}

impl SessionKind {
    fn as_str(self) -> &'static str {
        match self {
            SessionKind::Proxied => "proxied",
            SessionKind::Anomaly => "anomaly",
            SessionKind::Kernel => "kernel",
            SessionKind::Suppressed => "suppressed",
        }
    }

    fn parse(s: &str) -> SessionKind {
        match s {
            "anomaly" => SessionKind::Anomaly,
            "kernel" => SessionKind::Kernel,
            "suppressed" => SessionKind::Suppressed,
            _ => SessionKind::Proxied,
        }
    }
}

/// How a connection travelled: through the gateway (`proxy`) or straight to the destination,
/// decided and recorded by the kernel programs (`kernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionPath {
    Proxy,
    Kernel,
}

impl SessionPath {
    fn as_str(self) -> &'static str {
        match self {
            SessionPath::Proxy => "proxy",
            SessionPath::Kernel => "kernel",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<SessionPath> {
        match s {
            "proxy" => Some(SessionPath::Proxy),
            "kernel" => Some(SessionPath::Kernel),
            _ => None,
        }
    }
}

impl std::fmt::Display for SessionPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is behind an allowed connection: what every protocol handler is told about a session it
/// serves (and decides operations on).
#[derive(Debug, Clone)]
pub struct Origin {
    pub process: Option<ProcessInfo>,
    pub job_id: Option<String>,
    pub identity: Identity,
    pub cgroup_id: u64,
    pub dst: std::net::SocketAddr,
}

/// The process behind a connection: what eBPF captured at connect, enriched from /proc when the
/// process was still alive and provably the same (`verified`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
    /// The command line was longer than the gateway keeps (4 KiB): `cmdline` is its beginning.
    #[serde(default)]
    pub cmdline_cut: bool,
    /// /proc data belongs to the connecting process (start time checked against the connect).
    pub verified: bool,
    pub cgroup_id: u64,
    /// The container the process runs in, when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerInfo>,
    /// The processes above it inside its job (or its container), the job's first process first,
    /// as /proc showed them when the connection was accepted (only for a verified process).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
}

impl ProcessInfo {
    /// Its command lines as they are recorded and shown to approvers: masked with `masking`
    /// ([`BodyRules::every_detector`]: a command line may hold what any target's masking hides,
    /// whichever target, if any, this connection reaches).
    ///
    /// [`BodyRules::every_detector`]: crate::mask::body::BodyRules::every_detector
    pub fn masked(mut self, masking: Option<&crate::mask::body::BodyRules>) -> ProcessInfo {
        if let Some(rules) = masking {
            self.mask_command_lines(|arg| rules.mask_str(arg));
        }
        self
    }

    /// Replaces each argument of its command line and its ancestors' with `mask`'s text where
    /// that differs (detectors find what a job typed on a command line as they find it in traffic).
    pub fn mask_command_lines(&mut self, mask: impl for<'a> Fn(&'a str) -> Cow<'a, str>) {
        let cmdlines = std::iter::once(&mut self.cmdline)
            .chain(self.ancestry.iter_mut().map(|a| &mut a.cmdline));
        for arg in cmdlines.flatten().flatten() {
            if let Cow::Owned(masked) = mask(arg) {
                *arg = masked;
            }
        }
    }
}

/// A container a process runs in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// From the process's cgroup (a name the job could also give a cgroup of its own).
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    /// The container engine confirmed that a container of this id runs in this cgroup of the
    /// job (name and image are the engine's).
    pub verified: bool,
}

pub use crate::procfs::Ancestor;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewSession {
    pub kind: SessionKind,
    pub job_id: Option<String>,
    pub target: Option<String>,
    pub protocol: Option<String>,
    pub destination: String,
    pub process: Option<ProcessInfo>,
    pub identity: Identity,
    pub decision: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub started_at: String,
    /// Set for sessions that are over when recorded (refusals, anomalies, kernel events).
    pub ended_at: Option<String>,
    /// Connections to targets: how they travelled (`None`: not a connection to a target).
    #[serde(default)]
    pub path: Option<SessionPath>,
    /// Kernel path: the socket cookie its close is recorded under.
    #[serde(default)]
    pub cookie: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct SessionEnd {
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// One line of `gateway sessions list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub id: i64,
    pub kind: SessionKind,
    pub job_id: Option<String>,
    pub target: Option<String>,
    pub protocol: Option<String>,
    pub destination: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Subject of the job's verified token, or `unauthenticated`.
    pub identity: String,
    /// Issuer of that token (`None` for `unauthenticated`).
    #[serde(default)]
    pub issuer: Option<String>,
    pub decision: String,
    pub rule: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// `proxy` or `kernel` for connections to targets.
    #[serde(default)]
    pub path: Option<SessionPath>,
}

/// Everything about one session: `gateway sessions show ID`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    #[serde(flatten)]
    pub summary: SessionSummary,
    pub reason: Option<String>,
    pub claims: serde_json::Value,
    pub process: Option<ProcessInfo>,
    pub events: Vec<EventRecord>,
    /// Set when `events` is one page of a longer log: the id the next page starts after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more_after: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: i64,
    pub at: String,
    /// As stored: a kind this build does not know (a newer build's) is kept as its name.
    pub kind: String,
    pub detail: serde_json::Value,
}

impl EventRecord {
    /// The event's kind, when this build knows it.
    pub fn event_kind(&self) -> Option<EventKind> {
        EventKind::parse(&self.kind)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub cgroup_path: String,
    pub cgroup_id: u64,
    pub owned: bool,
    pub identity: Identity,
    /// When the identity binding runs out (RFC 3339); `None` for unauthenticated jobs.
    #[serde(default)]
    pub binding_expires_at: Option<String>,
    pub created_at: String,
    pub ended_at: Option<String>,
}

// --- jobs -----------------------------------------------------------------------------------------------

pub(crate) fn insert_job(conn: &Connection, job: &JobRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO jobs (id, cgroup_path, cgroup_id, owned, issuer, subject, claims, created_at,
                           binding_expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        job.id,
        job.cgroup_path,
        job.cgroup_id as i64,
        job.owned,
        job.identity.issuer,
        job.identity.subject,
        serde_json::to_string(&job.identity.claims)?,
        job.created_at,
        job.binding_expires_at,
    ])?;
    Ok(())
}

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let claims: String = r.get("claims")?;
    Ok(JobRecord {
        id: r.get("id")?,
        cgroup_path: r.get("cgroup_path")?,
        cgroup_id: r.get::<_, i64>("cgroup_id")? as u64,
        owned: r.get("owned")?,
        identity: Identity {
            issuer: r.get("issuer")?,
            subject: r.get("subject")?,
            claims: serde_json::from_str(&claims).unwrap_or_default(),
        },
        binding_expires_at: r.get("binding_expires_at")?,
        created_at: r.get("created_at")?,
        ended_at: r.get("ended_at")?,
    })
}

impl Store {
    pub async fn insert_job(&self, job: JobRecord) -> Result<(), StoreError> {
        self.call(move |c| insert_job(c, &job)).await
    }

    /// Binds an active job that was unbound (its cgroup made before its token arrived).
    pub async fn bind_job(&self, job: JobRecord) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "UPDATE jobs SET issuer = ?2, subject = ?3, claims = ?4, binding_expires_at = ?5
                 WHERE id = ?1 AND ended_at IS NULL",
                params![
                    job.id,
                    job.identity.issuer,
                    job.identity.subject,
                    serde_json::to_string(&job.identity.claims)?,
                    job.binding_expires_at,
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn end_job(&self, id: String) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "UPDATE jobs SET ended_at = ?2 WHERE id = ?1 AND ended_at IS NULL",
                params![id, now()],
            )?;
            Ok(())
        })
        .await
    }

    /// Whether job `id` existed and has ended.
    pub async fn job_ended(&self, id: String) -> Result<bool, StoreError> {
        self.call(move |c| {
            let ended: Option<bool> = c
                .query_row(
                    "SELECT ended_at IS NOT NULL FROM jobs WHERE id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(ended == Some(true))
        })
        .await
    }

    /// Sessions a previous daemon left open (it crashed or was killed) are closed, with an event
    /// saying so; returns how many.
    pub async fn close_interrupted_sessions(&self) -> Result<usize, StoreError> {
        self.call(|c| {
            let at = now();
            c.execute(
                "INSERT INTO events (session_id, at, kind, detail)
                 SELECT id, ?1, 'interrupted', '{\"reason\":\"the gateway stopped before the session ended\"}'
                 FROM sessions WHERE ended_at IS NULL AND path IS NOT 'kernel'",
                [&at],
            )?;
            // Kernel-path connections do not go through the gateway: they go on, and the kernel
            // records their end for the next daemon.
            Ok(c.execute(
                "UPDATE sessions SET ended_at = ?1 WHERE ended_at IS NULL AND path IS NOT 'kernel'",
                [&at],
            )?)
        })
        .await
    }

    /// The kernel-path sessions of a job that ended with them still open: the kernel no longer
    /// reports their close. Closed now, with an event saying their byte counts are unknown;
    /// returns how many.
    pub async fn close_orphaned_kernel_sessions(
        &self,
        job_id: String,
    ) -> Result<usize, StoreError> {
        self.call(move |c| {
            let at = now();
            c.execute(
                "INSERT INTO events (session_id, at, kind, detail)
                 SELECT id, ?1, 'closed', '{\"path\":\"kernel\",\"reason\":\"the job ended with the connection open; its end and byte counts are not known\"}'
                 FROM sessions WHERE job_id = ?2 AND path = 'kernel' AND ended_at IS NULL",
                params![at, job_id],
            )?;
            Ok(c.execute(
                "UPDATE sessions SET ended_at = ?1
                 WHERE job_id = ?2 AND path = 'kernel' AND ended_at IS NULL",
                params![at, job_id],
            )?)
        })
        .await
    }

    /// Kernel-path sessions still open, by the cookie their close is recorded under.
    pub async fn open_kernel_sessions(&self) -> Result<Vec<(u64, i64)>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT cookie, id FROM sessions
                 WHERE path = 'kernel' AND ended_at IS NULL AND cookie IS NOT NULL",
            )?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Which of `cookies` name a kernel-path session on record, open or ended.
    pub async fn kernel_sessions_with_cookies(
        &self,
        cookies: Vec<u64>,
    ) -> Result<std::collections::HashSet<u64>, StoreError> {
        if cookies.is_empty() {
            return Ok(Default::default());
        }
        self.call(move |c| {
            // One pass over the table (cookies of ended sessions have no index).
            let marks = vec!["?"; cookies.len()].join(",");
            let mut st = c.prepare(&format!(
                "SELECT DISTINCT cookie FROM sessions WHERE path = 'kernel' AND cookie IN ({marks})"
            ))?;
            let stored = st
                .query_map(
                    rusqlite::params_from_iter(cookies.iter().map(|&c| c as i64)),
                    |r| Ok(r.get::<_, i64>(0)? as u64),
                )?
                .collect::<Result<_, _>>()?;
            Ok(stored)
        })
        .await
    }

    pub async fn active_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.call(|c| {
            let mut st =
                c.prepare("SELECT * FROM jobs WHERE ended_at IS NULL ORDER BY created_at")?;
            let rows = st
                .query_map([], job_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    // --- sessions -------------------------------------------------------------------------------------

    /// Records a session; resolves (with its id) once it is durable (written to the journal).
    pub async fn insert_session(&self, s: NewSession) -> Result<i64, StoreError> {
        let id = self.allocate_session_id();
        self.log(Record::Session {
            id,
            session: Box::new(s),
        })?;
        Ok(id)
    }

    /// [`Store::insert_session`] with its first events, in one journal write.
    pub async fn insert_session_with(
        &self,
        s: NewSession,
        events: Vec<(EventKind, serde_json::Value)>,
    ) -> Result<i64, StoreError> {
        if events.is_empty() {
            return self.insert_session(s).await;
        }
        let id = self.allocate_session_id();
        self.log_all(vec![
            Record::Session {
                id,
                session: Box::new(s),
            },
            events_record(id, rendered(events)),
        ])?;
        Ok(id)
    }

    /// Records a session without waiting (events that are over when they are recorded).
    pub fn record_session(&self, s: NewSession) {
        let id = self.allocate_session_id();
        self.log_or_warn(
            "record session",
            Record::Session {
                id,
                session: Box::new(s),
            },
        );
    }

    /// Stores `records` with one journal write; resolves once they are durable. A failure
    /// stores none of them.
    pub fn log_records(&self, records: Records) -> Result<(), StoreError> {
        if records.0.is_empty() {
            return Ok(());
        }
        self.log_all(records.0)
    }

    pub fn end_session(&self, id: i64, end: SessionEnd) {
        self.log_or_warn("end session", end_record(id, end));
    }

    /// Records a session's last events and its end with one journal write (not waited for).
    pub fn close_session(
        &self,
        id: i64,
        events: Vec<(EventKind, serde_json::Value)>,
        end: SessionEnd,
    ) {
        self.log_all_or_warn(
            "end session",
            vec![events_record(id, rendered(events)), end_record(id, end)],
        );
    }

    /// Appends an event; resolves once it is durable (write-ahead of whatever it describes).
    pub async fn append_event(
        &self,
        session_id: i64,
        kind: EventKind,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.append_events(session_id, vec![(kind, detail)]).await
    }

    /// Appends several events of one session in order, with one journal write; resolves once
    /// durable. (A handler that records outcomes lazily sends them along with its next
    /// write-ahead event, so that each operation costs one write.)
    pub async fn append_events(
        &self,
        session_id: i64,
        events: Vec<(EventKind, serde_json::Value)>,
    ) -> Result<(), StoreError> {
        self.append_rendered(session_id, rendered(events))
    }

    /// [`Store::append_events`] with details already rendered as JSON (hot paths serialize them
    /// straight from their parts, without a `Value` tree).
    pub fn append_rendered(
        &self,
        session_id: i64,
        events: Vec<RenderedEvent>,
    ) -> Result<(), StoreError> {
        self.log(events_record(session_id, events))
    }

    /// Like [`Store::append_events`], without waiting.
    pub fn note_events(&self, session_id: i64, events: Vec<(EventKind, serde_json::Value)>) {
        self.note_rendered(session_id, rendered(events));
    }

    /// Like [`Store::append_rendered`], without waiting.
    pub fn note_rendered(&self, session_id: i64, events: Vec<RenderedEvent>) {
        self.log_or_warn("session events", events_record(session_id, events));
    }

    /// Appends an event without waiting for it.
    pub fn note_event(&self, session_id: i64, kind: EventKind, detail: serde_json::Value) {
        self.note_events(session_id, vec![(kind, detail)]);
    }

    pub async fn list_sessions(&self, limit: u32) -> Result<Vec<SessionSummary>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT * FROM (SELECT * FROM sessions ORDER BY id DESC LIMIT ?1) ORDER BY id",
            )?;
            let rows = st
                .query_map([limit], summary_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// One session with every event.
    pub async fn session(&self, id: i64) -> Result<SessionRecord, StoreError> {
        self.session_page(id, 0, u32::MAX).await
    }

    /// One session with at most `limit` of its events, those after event id `after`;
    /// `more_after` says where the next page starts when there are more.
    pub async fn session_page(
        &self,
        id: i64,
        after: i64,
        limit: u32,
    ) -> Result<SessionRecord, StoreError> {
        self.call(move |c| {
            let record = c
                .query_row("SELECT * FROM sessions WHERE id = ?1", [id], |r| {
                    let claims: String = r.get("claims")?;
                    let cmdline: Option<String> = r.get("cmdline")?;
                    let pid: Option<u32> = r.get("pid")?;
                    let process = match pid {
                        None => None,
                        Some(pid) => Some(ProcessInfo {
                            pid,
                            tid: r.get::<_, Option<u32>>("tid")?.unwrap_or_default(),
                            uid: r.get::<_, Option<u32>>("uid")?.unwrap_or_default(),
                            gid: r.get::<_, Option<u32>>("gid")?.unwrap_or_default(),
                            comm: r.get::<_, Option<String>>("comm")?.unwrap_or_default(),
                            exe: r.get("exe")?,
                            cmdline: cmdline.and_then(|c| serde_json::from_str(&c).ok()),
                            cmdline_cut: r.get("cmdline_cut")?,
                            verified: r.get("process_verified")?,
                            cgroup_id: r.get::<_, Option<i64>>("cgroup_id")?.unwrap_or_default()
                                as u64,
                            container: r
                                .get::<_, Option<String>>("container")?
                                .and_then(|c| serde_json::from_str(&c).ok()),
                            ancestry: r
                                .get::<_, Option<String>>("ancestry")?
                                .and_then(|a| serde_json::from_str(&a).ok())
                                .unwrap_or_default(),
                        }),
                    };
                    Ok(SessionRecord {
                        summary: summary_from_row(r)?,
                        reason: r.get("reason")?,
                        claims: serde_json::from_str(&claims).unwrap_or_default(),
                        process,
                        events: Vec::new(),
                        more_after: None,
                    })
                })
                .optional()?;
            let mut record = record.ok_or_else(|| StoreError::NotFound(format!("session {id}")))?;
            let mut st = c.prepare_cached(
                "SELECT id, at, kind, detail, result_at, result, statement FROM events
                 WHERE session_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            // More rows than events asked for: whether another page follows (a row may hold two
            // events, or none past `after`).
            let fetch = i64::from(limit).saturating_add(2);
            let rows = st
                .query_map(params![id, after, fetch], |r| {
                    let id: i64 = r.get(0)?;
                    let event = |id: i64, at: String, kind: String, detail: String| EventRecord {
                        id,
                        at,
                        kind,
                        detail: serde_json::from_str(&detail).unwrap_or_default(),
                    };
                    let kind: String = r.get(2)?;
                    // A numbered statement's row: the statement under the free id before the
                    // row's, its outcome (once known) under the row's own, as the `sql_result`
                    // event it was recorded as.
                    let numbered =
                        kind == EventKind::Sql.as_str() && r.get::<_, Option<i64>>(6)?.is_some();
                    let first_id = if numbered { id - 1 } else { id };
                    let first = event(first_id, r.get(1)?, kind, r.get(3)?);
                    let outcome = match (r.get::<_, Option<String>>(4)?, r.get(5)?) {
                        (Some(at), Some(detail)) => {
                            Some(event(id, at, EventKind::SqlResult.as_str().into(), detail))
                        }
                        _ => None,
                    };
                    Ok((first, outcome))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            // At most `limit` events with ids past `after` (a page may end between a statement
            // and its outcome: the next one starts after the statement's id).
            let mut more = false;
            'rows: for (first, outcome) in rows {
                for event in std::iter::once(first).chain(outcome) {
                    if event.id <= after {
                        continue;
                    }
                    if record.events.len() == limit as usize {
                        more = true;
                        break 'rows;
                    }
                    record.events.push(event);
                }
            }
            if more {
                record.more_after = record.events.last().map(|e| e.id);
            }
            Ok(record)
        })
        .await
    }
}

/// Session records gathered to be stored together ([`Store::log_records`]): a reader of many
/// short records pays one journal write per batch rather than one per record.
#[derive(Default)]
pub struct Records(Vec<Record>);

impl Records {
    /// Adds a session; returns the id it is stored under.
    pub fn session(&mut self, store: &Store, s: NewSession) -> i64 {
        let id = store.allocate_session_id();
        self.0.push(Record::Session {
            id,
            session: Box::new(s),
        });
        id
    }

    /// Adds a session's last events and its end.
    pub fn close(&mut self, id: i64, events: Vec<(EventKind, serde_json::Value)>, end: SessionEnd) {
        self.0.push(events_record(id, rendered(events)));
        self.0.push(end_record(id, end));
    }
}

/// An event ready to be stored: its detail serialized once, as JSON.
#[derive(Debug)]
pub struct RenderedEvent {
    kind: EventKind,
    detail: Box<RawValue>,
    statement: Option<u64>,
}

impl RenderedEvent {
    pub fn new<T: Serialize + ?Sized>(
        kind: EventKind,
        detail: &T,
    ) -> Result<RenderedEvent, serde_json::Error> {
        Ok(RenderedEvent {
            kind,
            detail: serde_json::value::to_raw_value(detail)?,
            statement: None,
        })
    }

    /// An event whose detail is a JSON value (which always serializes).
    pub fn of_value(kind: EventKind, detail: &serde_json::Value) -> RenderedEvent {
        RenderedEvent {
            kind,
            detail: serde_json::value::to_raw_value(detail)
                .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON")),
            statement: None,
        }
    }

    /// A statement log's `sql` or `sql_result` event, of statement `seq` of its session: the
    /// store keeps the statement and its outcome in one row.
    pub fn of_statement(mut self, seq: u64) -> RenderedEvent {
        self.statement = Some(seq);
        self
    }
}

fn rendered(events: Vec<(EventKind, serde_json::Value)>) -> Vec<RenderedEvent> {
    events
        .into_iter()
        .map(|(kind, detail)| RenderedEvent::of_value(kind, &detail))
        .collect()
}

fn end_record(id: i64, end: SessionEnd) -> Record {
    Record::End {
        id,
        at: now(),
        bytes_up: end.bytes_up,
        bytes_down: end.bytes_down,
    }
}

fn events_record(session_id: i64, events: Vec<RenderedEvent>) -> Record {
    let at = now();
    let events = events
        .into_iter()
        .map(|e| EventRow {
            kind: e.kind.as_str().into(),
            at: at.clone(),
            detail: e.detail,
            statement: e.statement,
        })
        .collect();
    Record::Events { session_id, events }
}

/// The first id to hand out: past every session stored (AUTOINCREMENT never reuses ids).
pub(crate) fn next_session_id(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT max(coalesce((SELECT max(id) FROM sessions), 0),
                    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'sessions'), 0)) + 1",
        [],
        |r| r.get(0),
    )?)
}

/// Writes one journal record into the tables (inside the caller's transaction); `folded` holds
/// the outcomes that go into statements' rows of this batch.
pub(crate) fn apply(
    conn: &Connection,
    record: &Record,
    folded: &Folded<'_>,
) -> Result<(), StoreError> {
    match record {
        Record::Session { id, session } => insert_session(conn, *id, session),
        Record::End {
            id,
            at,
            bytes_up,
            bytes_down,
        } => {
            conn.prepare_cached(
                "UPDATE sessions SET ended_at = ?2, bytes_up = ?3, bytes_down = ?4 WHERE id = ?1",
            )?
            .execute(params![id, at, *bytes_up as i64, *bytes_down as i64])?;
            Ok(())
        }
        Record::Events { session_id, events } => {
            for e in events {
                insert_event(conn, *session_id, e, folded)?;
            }
            Ok(())
        }
    }
}

/// The outcomes of statements whose `sql` event is in the same batch of records: each goes into
/// its statement's row when that row is inserted, and is not stored again on its own.
#[derive(Default)]
pub(crate) struct Folded<'r> {
    /// By (session, statement): the outcome's time and detail, once it is seen.
    outcomes: HashMap<(i64, u64), Option<(&'r str, &'r RawValue)>>,
}

impl<'r> Folded<'r> {
    /// Pairs the statements and outcomes of `records` (applied in this order, in one go).
    pub(crate) fn of(records: impl IntoIterator<Item = &'r Record>) -> Folded<'r> {
        let mut outcomes = HashMap::new();
        for record in records {
            let Record::Events { session_id, events } = record else {
                continue;
            };
            for e in events {
                let Some(seq) = e.statement else { continue };
                match EventKind::parse(&e.kind) {
                    Some(EventKind::Sql) => {
                        outcomes.entry((*session_id, seq)).or_insert(None);
                    }
                    Some(EventKind::SqlResult) => {
                        if let Some(slot @ None) = outcomes.get_mut(&(*session_id, seq)) {
                            *slot = Some((e.at.as_str(), &*e.detail));
                        }
                    }
                    _ => {}
                }
            }
        }
        Folded { outcomes }
    }

    fn outcome(&self, session_id: i64, seq: u64) -> Option<(&'r str, &'r RawValue)> {
        self.outcomes.get(&(session_id, seq)).copied().flatten()
    }
}

fn insert_event(
    conn: &Connection,
    session_id: i64,
    e: &EventRow,
    folded: &Folded<'_>,
) -> Result<(), StoreError> {
    let kind = EventKind::parse(&e.kind);
    let mut outcome = None;
    if let Some(seq) = e.statement {
        match kind {
            Some(EventKind::Sql) => outcome = folded.outcome(session_id, seq),
            Some(EventKind::SqlResult) => {
                if folded.outcome(session_id, seq).is_some() {
                    // Stored with its statement.
                    return Ok(());
                }
                // The statement's row was stored by an earlier transaction: the outcome joins it
                // there (or, when that row is not found, is kept as an event of its own).
                let joined = conn
                    .prepare_cached(
                        "UPDATE events SET result = ?3, result_at = ?4
                         WHERE id = (SELECT id FROM events
                                     WHERE session_id = ?1 AND statement = ?2 AND kind = 'sql'
                                     ORDER BY id DESC LIMIT 1)
                           AND result IS NULL",
                    )?
                    .execute(params![session_id, seq as i64, e.detail.get(), e.at])?;
                if joined == 1 {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    // A numbered statement's row leaves the id before it free: the statement is shown under
    // that id and its outcome under the row's own, so every shown event has an id of its own, in
    // order (pages go by row id and never split a row).
    let sql = if kind == Some(EventKind::Sql) && e.statement.is_some() {
        "INSERT INTO events (id, session_id, at, kind, detail, statement, result, result_at)
         VALUES ((SELECT coalesce(max(id), 0) + 2 FROM events), ?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    } else {
        "INSERT INTO events (session_id, at, kind, detail, statement, result, result_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    };
    conn.prepare_cached(sql)?.execute(params![
        session_id,
        e.at,
        e.kind.as_ref(),
        e.detail.get(),
        e.statement.map(|s| s as i64),
        outcome.map(|(_, detail)| detail.get()),
        outcome.map(|(at, _)| at),
    ])?;
    Ok(())
}

fn insert_session(conn: &Connection, id: i64, s: &NewSession) -> Result<(), StoreError> {
    let p = s.process.as_ref();
    conn.prepare_cached(
        "INSERT INTO sessions (id, kind, job_id, target, protocol, destination, pid, tid, uid, gid,
            comm, exe, cmdline, process_verified, cgroup_id, issuer, identity, claims, decision,
            rule, reason, started_at, ended_at, cmdline_cut, path, cookie, container, ancestry)
         VALUES (?23, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
            ?18, ?19, ?20, ?21, ?22, ?24, ?25, ?26, ?27, ?28)",
    )?
    .execute(params![
        s.kind.as_str(),
        s.job_id,
        s.target,
        s.protocol,
        s.destination,
        p.map(|p| p.pid),
        p.map(|p| p.tid),
        p.map(|p| p.uid),
        p.map(|p| p.gid),
        p.map(|p| p.comm.clone()),
        p.and_then(|p| p.exe.clone()),
        p.and_then(|p| p.cmdline.as_ref())
            .map(serde_json::to_string)
            .transpose()?,
        p.is_some_and(|p| p.verified),
        p.map(|p| p.cgroup_id as i64),
        s.identity.issuer,
        s.identity.subject,
        serde_json::to_string(&s.identity.claims)?,
        s.decision,
        s.rule,
        s.reason,
        s.started_at,
        s.ended_at,
        id,
        p.is_some_and(|p| p.cmdline_cut),
        s.path.map(SessionPath::as_str),
        s.cookie.map(|c| c as i64),
        p.and_then(|p| p.container.as_ref())
            .map(serde_json::to_string)
            .transpose()?,
        p.filter(|p| !p.ancestry.is_empty())
            .map(|p| serde_json::to_string(&p.ancestry))
            .transpose()?,
    ])?;
    Ok(())
}

fn summary_from_row(r: &Row<'_>) -> rusqlite::Result<SessionSummary> {
    let kind: String = r.get("kind")?;
    Ok(SessionSummary {
        id: r.get("id")?,
        kind: SessionKind::parse(&kind),
        job_id: r.get("job_id")?,
        target: r.get("target")?,
        protocol: r.get("protocol")?,
        destination: r.get("destination")?,
        pid: r.get("pid")?,
        comm: r.get("comm")?,
        identity: r.get("identity")?,
        issuer: r.get("issuer")?,
        decision: r.get("decision")?,
        rule: r.get("rule")?,
        started_at: r.get("started_at")?,
        ended_at: r.get("ended_at")?,
        bytes_up: r.get::<_, i64>("bytes_up")? as u64,
        bytes_down: r.get::<_, i64>("bytes_down")? as u64,
        path: r
            .get::<_, Option<String>>("path")?
            .as_deref()
            .and_then(SessionPath::parse),
    })
}
