//! Approval requests, votes and grants in the session store.

use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde::{Deserialize, Serialize};

use super::model::{Requester, Status, Vote};
use crate::record::{Store, StoreError, now};

/// An approval request as the CLI, the web page and webhooks show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalView {
    pub id: String,
    pub session_id: Option<i64>,
    pub created_at: String,
    pub deadline: String,
    pub status: Status,
    pub target: String,
    pub rule: String,
    pub kind: String,
    pub operation: String,
    /// Everything else the approver should see: process, job, destination, parameters.
    pub detail: serde_json::Value,
    pub requester: Requester,
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub votes: Vec<Vote>,
    pub decided_at: Option<String>,
    pub reason: Option<String>,
    pub grant_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub approval_id: String,
    pub rule: String,
    pub target: String,
    pub issuer: Option<String>,
    pub subject: String,
    pub expires_at: String,
    pub approved_by: String,
}

fn view_from_row(r: &Row<'_>) -> rusqlite::Result<ApprovalView> {
    let detail: String = r.get("detail")?;
    let approvers: String = r.get("approvers")?;
    let status: String = r.get("status")?;
    Ok(ApprovalView {
        id: r.get("id")?,
        session_id: r.get("session_id")?,
        created_at: r.get("created_at")?,
        deadline: r.get("deadline")?,
        status: Status::parse(&status),
        target: r.get("target")?,
        rule: r.get("rule")?,
        kind: r.get("kind")?,
        operation: r.get("operation")?,
        detail: serde_json::from_str(&detail).unwrap_or_default(),
        requester: Requester {
            issuer: r.get("requester_issuer")?,
            subject: r.get("requester_subject")?,
            email: r.get("requester_email")?,
            started_by: Vec::new(),
        },
        approvers: serde_json::from_str(&approvers).unwrap_or_default(),
        quorum: r.get("quorum")?,
        votes: Vec::new(),
        decided_at: r.get("decided_at")?,
        reason: r.get("reason")?,
        grant_seconds: r.get::<_, Option<i64>>("grant_seconds")?.map(|s| s as u64),
    })
}

fn votes_of(c: &Connection, id: &str) -> Result<Vec<Vote>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT approver, display, at, approve, reason, for_seconds, person FROM approval_votes WHERE approval_id = ?1 ORDER BY id",
    )?;
    let votes = st
        .query_map([id], |r| {
            Ok(Vote {
                approver: r.get(0)?,
                display: r.get(1)?,
                at: r.get(2)?,
                approve: r.get(3)?,
                reason: r.get(4)?,
                for_seconds: r.get::<_, Option<i64>>(5)?.map(|s| s as u64),
                person: r.get(6)?,
                person_channels: Vec::new(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(votes)
}

fn load(c: &Connection, id: &str) -> Result<Option<ApprovalView>, StoreError> {
    let view = c
        .query_row("SELECT * FROM approvals WHERE id = ?1", [id], view_from_row)
        .optional()?;
    match view {
        None => Ok(None),
        Some(mut v) => {
            v.votes = votes_of(c, id)?;
            Ok(Some(v))
        }
    }
}

impl Store {
    pub async fn insert_approval(&self, v: ApprovalView) -> Result<(), StoreError> {
        self.call(move |c| {
            c.prepare_cached(
                "INSERT INTO approvals (id, session_id, created_at, deadline, status, target, rule, kind,
                    operation, detail, requester_issuer, requester_subject, requester_email, approvers, quorum)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?
            .execute(params![
                v.id,
                v.session_id,
                v.created_at,
                v.deadline,
                v.status.as_str(),
                v.target,
                v.rule,
                v.kind,
                v.operation,
                v.detail.to_string(),
                v.requester.issuer,
                v.requester.subject,
                v.requester.email,
                serde_json::to_string(&v.approvers)?,
                v.quorum,
            ])?;
            Ok(())
        })
        .await
    }

    /// Stores a vote and the request's resulting state (and the grant it creates) in one transaction.
    pub async fn record_vote(
        &self,
        id: String,
        vote: Vote,
        status: Status,
        grant_seconds: Option<u64>,
        grant: Option<GrantRecord>,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO approval_votes (approval_id, approver, display, at, approve, reason, for_seconds, person)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![id, vote.approver, vote.display, vote.at, vote.approve, vote.reason,
                    vote.for_seconds.map(|s| s as i64), vote.person],
            )?;
            if status != Status::Pending {
                c.execute(
                    "UPDATE approvals SET status = ?2, decided_at = ?3, reason = ?4, grant_seconds = ?5 WHERE id = ?1",
                    params![id, status.as_str(), vote.at, vote.reason, grant_seconds.map(|s| s as i64)],
                )?;
            }
            if let Some(g) = grant {
                c.execute(
                    "INSERT INTO grants (approval_id, rule, target, issuer, subject, created_at, expires_at, approved_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![g.approval_id, g.rule, g.target, g.issuer, g.subject, vote.at, g.expires_at, g.approved_by],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Ends a pending request without a vote (expired, abandoned). No-op when it is decided already.
    pub async fn close_approval(
        &self,
        id: String,
        status: Status,
        reason: String,
    ) -> Result<bool, StoreError> {
        self.call(move |c| {
            let n = c.execute(
                "UPDATE approvals SET status = ?2, decided_at = ?3, reason = ?4 WHERE id = ?1 AND status = 'pending'",
                params![id, status.as_str(), now(), reason],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// After a restart no client is waiting any more: every pending request is abandoned.
    pub async fn abandon_pending_approvals(&self) -> Result<Vec<String>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare("SELECT id FROM approvals WHERE status = 'pending'")?;
            let ids = st.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            c.execute(
                "UPDATE approvals SET status = 'abandoned', decided_at = ?1,
                    reason = 'the gateway restarted; the waiting client is gone' WHERE status = 'pending'",
                [now()],
            )?;
            Ok(ids)
        })
        .await
    }

    pub async fn approval(&self, id: String) -> Result<Option<ApprovalView>, StoreError> {
        self.call(move |c| load(c, &id)).await
    }

    /// Pending requests (oldest first), then up to `recent` decided ones (newest first).
    pub async fn list_approvals(&self, recent: u32) -> Result<Vec<ApprovalView>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare_cached(
                "SELECT * FROM (SELECT * FROM approvals WHERE status = 'pending' ORDER BY created_at)
                 UNION ALL
                 SELECT * FROM (SELECT * FROM approvals WHERE status != 'pending' ORDER BY decided_at DESC LIMIT ?1)",
            )?;
            let mut views = st.query_map([recent], view_from_row)?.collect::<Result<Vec<_>, _>>()?;
            for v in &mut views {
                v.votes = votes_of(c, &v.id)?;
            }
            Ok(views)
        })
        .await
    }

    pub async fn active_grants(&self) -> Result<Vec<GrantRecord>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT approval_id, rule, target, issuer, subject, expires_at, approved_by FROM grants WHERE expires_at > ?1",
            )?;
            let grants = st
                .query_map([now()], |r| {
                    Ok(GrantRecord {
                        approval_id: r.get(0)?,
                        rule: r.get(1)?,
                        target: r.get(2)?,
                        issuer: r.get(3)?,
                        subject: r.get(4)?,
                        expires_at: r.get(5)?,
                        approved_by: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(grants)
        })
        .await
    }
}
