//! The approvals service: protocol handlers submit what a `require_approval` rule held, people decide
//! (CLI, web page), the waiting handler gets the outcome. Requests, votes and grants are durable;
//! waiting uses a monotonic clock.

use crate::record::EventKind;
use parking_lot::Mutex;
use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::json;
use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};

use super::{
    model::{self, Approver, Channel, DecisionError, Person, Requester, Status, Verdict},
    notify::Notifier,
    store::{ApprovalView, GrantRecord},
};
use crate::{
    config::{self, Approvals as ApprovalsConfig, ApproverGroup, Rule},
    identity::Identity,
    random::{self, RandomError},
    record::{ProcessInfo, Store, StoreError, now},
};

/// What a handler asks people to approve.
#[derive(Debug, Clone)]
pub struct ApprovalRequest {
    pub session_id: i64,
    pub target: String,
    pub rule: String,
    pub identity: Identity,
    /// What would run, as the approver should read it (statement, command line, request line).
    pub operation: String,
    /// `sql`, `ssh_exec`, `sftp`, …
    pub kind: String,
    /// Parameters and anything else worth showing (JSON object).
    pub detail: serde_json::Value,
    pub process: Option<ProcessInfo>,
    pub job_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ApprovalOutcome {
    Approved { by: String },
    Denied { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error(transparent)]
    Decision(#[from] DecisionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a person may not see a request.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error("approval request {0} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request that is waiting for people. Dropping it before the outcome marks it abandoned.
pub struct Ticket {
    pub id: String,
    pub deadline: String,
    pub timeout: Duration,
    /// One line telling the job's user how the request gets decided.
    pub how: String,
    rx: watch::Receiver<Status>,
    service: Arc<Inner>,
    done: bool,
}

pub enum Submission {
    /// Decided at once (a standing grant, or approvals unavailable).
    Decided(ApprovalOutcome),
    Waiting(Ticket),
}

struct Live {
    request: model::Request,
    view: ApprovalView,
    deadline: Instant,
    tx: watch::Sender<Status>,
}

struct Grant {
    rule: String,
    target: String,
    issuer: Option<String>,
    subject: String,
    until: Instant,
    approved_by: String,
    approval_id: String,
}

struct RuleApproval {
    approvers: Vec<String>,
    quorum: u32,
    timeout: Duration,
}

struct Inner {
    store: Store,
    groups: Vec<ApproverGroup>,
    /// Every `[[approvers.people]]` entry once (the same person may be in several groups).
    people: Vec<config::Person>,
    person_claims: Vec<String>,
    rules: HashMap<String, RuleApproval>,
    web_url: Option<String>,
    live: tokio::sync::Mutex<HashMap<String, Live>>,
    grants: Mutex<Vec<Grant>>,
    updates: broadcast::Sender<ApprovalView>,
    notifier: Notifier,
}

/// Handle to the service; cheap to clone.
#[derive(Clone)]
pub struct Approvals {
    inner: Arc<Inner>,
}

fn new_id() -> Result<String, RandomError> {
    random::id::<5>("apr")
}

/// The model's view of a configured person.
fn person_of(p: &config::Person) -> Person {
    let mut channels = Vec::new();
    if !p.unix_users.is_empty() {
        channels.push(Channel::Unix);
    }
    if !p.subjects.is_empty() || !p.emails.is_empty() {
        channels.push(Channel::Oidc);
    }
    Person {
        name: p.name.clone(),
        channels,
        names: [&p.unix_users, &p.subjects, &p.emails, &p.ci_users]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
    }
}

fn wall_in(d: Duration) -> String {
    (chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or_default())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Approvals {
    /// Starts the service: requests a previous daemon left pending are abandoned (their clients are
    /// gone), standing grants are loaded.
    pub async fn start(
        config: &ApprovalsConfig,
        groups: &[ApproverGroup],
        rules: &[Rule],
        store: Store,
    ) -> Result<Approvals, StoreError> {
        let abandoned = store.abandon_pending_approvals().await?;
        if !abandoned.is_empty() {
            tracing::warn!(
                count = abandoned.len(),
                "approval requests left pending by a previous gateway were abandoned"
            );
        }
        let grants = store
            .active_grants()
            .await?
            .into_iter()
            .filter_map(|g| {
                let left = chrono::DateTime::parse_from_rfc3339(&g.expires_at)
                    .ok()?
                    .with_timezone(&chrono::Utc)
                    - chrono::Utc::now();
                Some(Grant {
                    until: Instant::now() + left.to_std().ok()?,
                    rule: g.rule,
                    target: g.target,
                    issuer: g.issuer,
                    subject: g.subject,
                    approved_by: g.approved_by,
                    approval_id: g.approval_id,
                })
            })
            .collect();
        let rules = rules
            .iter()
            .filter(|r| !r.approvers.is_empty())
            .map(|r| {
                (
                    r.name.clone(),
                    RuleApproval {
                        approvers: r.approvers.clone(),
                        quorum: r.quorum,
                        timeout: r.approval_timeout.unwrap_or(config.default_timeout),
                    },
                )
            })
            .collect();
        let (updates, _) = broadcast::channel(256);
        let mut people: Vec<config::Person> = Vec::new();
        for p in groups.iter().flat_map(|g| &g.people) {
            if !people.iter().any(|q| q.name == p.name) {
                people.push(p.clone());
            }
        }
        Ok(Approvals {
            inner: Arc::new(Inner {
                people,
                person_claims: config.person_claims.clone(),
                notifier: Notifier::new(
                    config.webhooks.clone(),
                    config.webhook_timeout,
                    store.clone(),
                ),
                store,
                groups: groups.to_vec(),
                rules,
                web_url: config.web.as_ref().map(|w| w.public_url.clone()),
                live: Default::default(),
                grants: Mutex::new(grants),
                updates,
            }),
        })
    }

    /// Live updates (created, voted, decided) for the web page.
    pub fn subscribe(&self) -> broadcast::Receiver<ApprovalView> {
        self.inner.updates.subscribe()
    }

    pub fn groups(&self) -> &[ApproverGroup] {
        &self.inner.groups
    }

    /// Submits and waits. Handlers that can tell the client what is going on use [`Self::submit`].
    pub async fn request(&self, request: &ApprovalRequest) -> ApprovalOutcome {
        match self.submit(request).await {
            Submission::Decided(o) => o,
            Submission::Waiting(t) => t.wait().await,
        }
    }

    pub async fn submit(&self, request: &ApprovalRequest) -> Submission {
        let inner = &self.inner;
        if let Some(outcome) = self.standing_grant(request) {
            return Submission::Decided(outcome);
        }
        let Some(rule) = inner.rules.get(&request.rule) else {
            return Submission::Decided(ApprovalOutcome::Denied {
                reason: format!(
                    "rule {:?} requires approval but names no approvers",
                    request.rule
                ),
            });
        };
        let id = match new_id() {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "cannot make an approval request id; denied");
                return Submission::Decided(ApprovalOutcome::Denied {
                    reason: format!("the approval request could not be made: {e}"),
                });
            }
        };
        let email = request.identity.claim_values("email").into_iter().next();
        let started_by: Vec<String> = inner
            .person_claims
            .iter()
            .flat_map(|c| request.identity.claim_values(c))
            .collect();
        let requester = Requester {
            issuer: request.identity.issuer.clone(),
            subject: request.identity.subject.clone(),
            email,
            started_by: started_by.clone(),
        };
        let mut detail = request.detail.clone();
        if let Some(obj) = detail.as_object_mut() {
            obj.insert("process".into(), json!(request.process));
            obj.insert("job_id".into(), json!(request.job_id));
            if !started_by.is_empty() {
                obj.insert("started_by".into(), json!(started_by));
            }
        }
        let view = ApprovalView {
            id: id.clone(),
            session_id: Some(request.session_id),
            created_at: now(),
            deadline: wall_in(rule.timeout),
            status: Status::Pending,
            target: request.target.clone(),
            rule: request.rule.clone(),
            kind: request.kind.clone(),
            operation: request.operation.clone(),
            detail,
            requester: requester.clone(),
            approvers: rule.approvers.clone(),
            quorum: rule.quorum,
            votes: Vec::new(),
            decided_at: None,
            reason: None,
            grant_seconds: None,
        };
        // Durable before anyone is told about it.
        if let Err(e) = inner.store.insert_approval(view.clone()).await {
            tracing::error!(error = %e, "cannot record approval request; denied");
            return Submission::Decided(ApprovalOutcome::Denied {
                reason: "the approval request could not be recorded".into(),
            });
        }
        inner.store.note_event(
            request.session_id,
            EventKind::ApprovalRequested,
            json!({ "approval": id, "rule": request.rule, "approvers": rule.approvers, "quorum": rule.quorum, "deadline": view.deadline, "operation": request.operation }),
        );
        let (tx, rx) = watch::channel(Status::Pending);
        let model = model::Request {
            id: id.clone(),
            requester,
            approvers: rule.approvers.clone(),
            quorum: rule.quorum,
            status: Status::Pending,
            votes: Vec::new(),
            grant_seconds: None,
        };
        inner.live.lock().await.insert(
            id.clone(),
            Live {
                request: model,
                view: view.clone(),
                deadline: Instant::now() + rule.timeout,
                tx,
            },
        );
        let _ = inner.updates.send(view.clone());
        inner.notifier.created(&view, inner.web_url.as_deref());
        let mut how = format!("approve with `gateway approvals approve {id}`");
        if let Some(url) = &inner.web_url {
            how.push_str(&format!(" or at {url}/"));
        }
        tracing::info!(approval = %id, session = request.session_id, rule = %request.rule, "approval requested");
        Submission::Waiting(Ticket {
            id,
            deadline: view.deadline,
            timeout: rule.timeout,
            how,
            rx,
            service: inner.clone(),
            done: false,
        })
    }

    fn standing_grant(&self, request: &ApprovalRequest) -> Option<ApprovalOutcome> {
        let mut grants = self.inner.grants.lock();
        let now = Instant::now();
        grants.retain(|g| g.until > now);
        let g = grants.iter().find(|g| {
            g.rule == request.rule
                && g.target == request.target
                && g.subject == request.identity.subject
                && g.issuer == request.identity.issuer
        })?;
        self.inner.store.note_event(
            request.session_id,
            EventKind::ApprovalGrantUsed,
            json!({ "approval": g.approval_id, "approved_by": g.approved_by, "rule": g.rule, "operation": request.operation }),
        );
        Some(ApprovalOutcome::Approved {
            by: format!("{} (standing approval {})", g.approved_by, g.approval_id),
        })
    }

    /// A person's decision. Errors change nothing.
    pub async fn decide(
        &self,
        id: &str,
        approver: &Approver,
        verdict: Verdict,
    ) -> Result<ApprovalView, ApprovalError> {
        let inner = &self.inner;
        let mut live = inner.live.lock().await;
        let Some(entry) = live.get_mut(id) else {
            drop(live);
            return Err(match inner.store.approval(id.to_string()).await? {
                Some(v) => DecisionError::AlreadyDecided {
                    id: id.to_string(),
                    status: v.status,
                },
                None => DecisionError::NotFound(id.to_string()),
            }
            .into());
        };
        let at = now();
        let mut next = entry.request.clone();
        let expired = Instant::now() >= entry.deadline;
        let status = model::decide(&mut next, approver, verdict, &at, expired)?;
        let vote = next
            .votes
            .last()
            .cloned()
            .expect("a successful decision adds a vote");
        let grant = (status == Status::Approved)
            .then_some(next.grant_seconds)
            .flatten()
            .map(|secs| GrantRecord {
                approval_id: id.to_string(),
                rule: entry.view.rule.clone(),
                target: entry.view.target.clone(),
                issuer: entry.view.requester.issuer.clone(),
                subject: entry.view.requester.subject.clone(),
                expires_at: wall_in(Duration::from_secs(secs)),
                approved_by: approvers_of(&next),
            });
        inner
            .store
            .record_vote(
                id.to_string(),
                vote.clone(),
                status,
                next.grant_seconds,
                grant.clone(),
            )
            .await?;
        if let Some(session) = entry.view.session_id {
            inner.store.note_event(session, EventKind::ApprovalVote, json!({ "approval": id, "approver": vote.display, "principal": vote.approver, "approve": vote.approve, "reason": vote.reason, "at": at }));
        }
        if let Some(g) = &grant {
            let secs = next.grant_seconds.unwrap_or_default();
            inner.grants.lock().push(Grant {
                rule: g.rule.clone(),
                target: g.target.clone(),
                issuer: g.issuer.clone(),
                subject: g.subject.clone(),
                until: Instant::now() + Duration::from_secs(secs),
                approved_by: g.approved_by.clone(),
                approval_id: g.approval_id.clone(),
            });
        }
        entry.request = next;
        entry.view.votes = entry.request.votes.clone();
        entry.view.status = status;
        entry.view.grant_seconds = entry.request.grant_seconds;
        if status != Status::Pending {
            entry.view.decided_at = Some(at);
            entry.view.reason = vote.reason.clone();
        }
        let view = entry.view.clone();
        let _ = entry.tx.send(status);
        if status != Status::Pending {
            live.remove(id);
            inner.notifier.decided(&view, inner.web_url.as_deref());
        }
        drop(live);
        let _ = inner.updates.send(view.clone());
        tracing::info!(approval = %id, approver = %approver.display, status = status.as_str(), "approval vote");
        Ok(view)
    }

    pub async fn list(&self, recent: u32) -> Result<Vec<ApprovalView>, StoreError> {
        self.inner.store.list_approvals(recent).await
    }

    /// The requests `approver` may decide (an approver of none sees none).
    pub async fn list_for(
        &self,
        approver: &Approver,
        recent: u32,
    ) -> Result<Vec<ApprovalView>, StoreError> {
        let mut list = self.list(recent).await?;
        list.retain(|v| approver.may_see(&v.approvers));
        Ok(list)
    }

    /// One request, pending or decided.
    pub async fn show(&self, id: &str) -> Result<ApprovalView, ShowError> {
        if let Some(live) = self.inner.live.lock().await.get(id) {
            return Ok(live.view.clone());
        }
        self.inner
            .store
            .approval(id.to_string())
            .await?
            .ok_or_else(|| ShowError::NotFound(id.to_string()))
    }

    fn person_where(&self, listed: impl Fn(&config::Person) -> bool) -> Option<Person> {
        self.inner.people.iter().find(|p| listed(p)).map(person_of)
    }

    /// The approver a verified ID token of the page's issuer describes. Emails count only when the
    /// issuer says they are verified; subjects and emails are matched each with their own list.
    pub fn oidc_approver(&self, identity: &Identity) -> Approver {
        let verified = identity
            .claim_values("email_verified")
            .first()
            .is_some_and(|v| v == "true");
        let email = identity
            .claim_values("email")
            .into_iter()
            .next()
            .filter(|_| verified);
        let same_email = |e: &String| email.as_ref().is_some_and(|m| m.eq_ignore_ascii_case(e));
        let person = self.person_where(|p| {
            p.subjects.contains(&identity.subject) || p.emails.iter().any(same_email)
        });
        let oidc_groups = identity.claim_values("groups");
        let groups = self
            .inner
            .groups
            .iter()
            .filter(|g| {
                g.subjects.contains(&identity.subject)
                    || g.emails.iter().any(same_email)
                    || g.oidc_groups.iter().any(|og| oidc_groups.contains(og))
                    || person
                        .as_ref()
                        .is_some_and(|p| g.people.iter().any(|q| q.name == p.name))
            })
            .map(|g| g.name.clone())
            .collect();
        Approver {
            principal: format!(
                "oidc:{}#{}",
                identity.issuer.clone().unwrap_or_default(),
                identity.subject
            ),
            display: email.clone().unwrap_or_else(|| identity.subject.clone()),
            channel: Channel::Oidc,
            issuer: identity.issuer.clone(),
            subject: Some(identity.subject.clone()),
            email,
            groups,
            person,
        }
    }

    /// The approver groups a local Unix user belongs to (root: all of them).
    pub fn unix_approver(&self, uid: u32) -> Approver {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let name = user
            .as_ref()
            .map_or_else(|| format!("uid {uid}"), |u| u.name.clone());
        let person = self.person_where(|p| p.unix_users.contains(&name));
        let mut groups: Vec<String> = Vec::new();
        if uid == 0 {
            groups.push("*".into());
        } else if let Some(u) = &user {
            let unix_groups: Vec<String> = std::ffi::CString::new(u.name.clone())
                .ok()
                .and_then(|c| nix::unistd::getgrouplist(&c, u.gid).ok())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|gid| {
                    nix::unistd::Group::from_gid(gid)
                        .ok()
                        .flatten()
                        .map(|g| g.name)
                })
                .collect();
            for g in &self.inner.groups {
                if g.unix_users.contains(&u.name)
                    || g.unix_groups.iter().any(|ug| unix_groups.contains(ug))
                    || person
                        .as_ref()
                        .is_some_and(|p| g.people.iter().any(|q| q.name == p.name))
                {
                    groups.push(g.name.clone());
                }
            }
        }
        Approver {
            principal: format!("unix:{name}"),
            display: name,
            channel: Channel::Unix,
            issuer: None,
            subject: None,
            email: None,
            groups,
            person,
        }
    }
}

fn approvers_of(r: &model::Request) -> String {
    r.votes
        .iter()
        .filter(|v| v.approve)
        .map(|v| v.display.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Ticket {
    /// Waits for the decision or the deadline.
    pub async fn wait(mut self) -> ApprovalOutcome {
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut status = loop {
            let current = *self.rx.borrow_and_update();
            if current != Status::Pending {
                break current;
            }
            tokio::select! {
                changed = self.rx.changed() => if changed.is_err() { break Status::Abandoned },
                () = &mut deadline => break Status::Expired,
            }
        };
        self.done = true;
        let inner = self.service.clone();
        let id = self.id.clone();
        if status == Status::Expired || status == Status::Abandoned {
            let reason = format!("no decision within {}s", self.timeout.as_secs());
            if !close(&inner, &id, Status::Expired, reason).await {
                // A decision landed at the deadline: it stands.
                status = *self.rx.borrow();
            }
        }
        let view = inner.store.approval(id.clone()).await.ok().flatten();
        match status {
            Status::Approved => ApprovalOutcome::Approved {
                by: view
                    .as_ref()
                    .map(|v| {
                        v.votes
                            .iter()
                            .filter(|v| v.approve)
                            .map(|v| v.display.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
            },
            Status::Denied => {
                let who = view
                    .as_ref()
                    .and_then(|v| v.votes.iter().find(|v| !v.approve))
                    .map(|v| v.display.clone())
                    .unwrap_or_default();
                let why = view
                    .and_then(|v| v.reason)
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                ApprovalOutcome::Denied {
                    reason: format!("approval request {id} was denied by {who}{why}"),
                }
            }
            _ => ApprovalOutcome::Denied {
                reason: format!(
                    "approval request {id} expired: nobody decided within {}s",
                    self.timeout.as_secs()
                ),
            },
        }
    }
}

/// Ends a live request without a vote and tells everyone. False when it was decided already.
async fn close(inner: &Arc<Inner>, id: &str, status: Status, reason: String) -> bool {
    let entry = inner.live.lock().await.remove(id);
    let Some(mut entry) = entry else { return false };
    match inner
        .store
        .close_approval(id.to_string(), status, reason.clone())
        .await
    {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => tracing::error!(error = %e, approval = %id, "cannot close approval request"),
    }
    entry.view.status = status;
    entry.view.decided_at = Some(now());
    entry.view.reason = Some(reason.clone());
    if let Some(session) = entry.view.session_id {
        inner.store.note_event(
            session,
            EventKind::ApprovalClosed,
            json!({ "approval": id, "status": status.as_str(), "reason": reason }),
        );
    }
    let _ = entry.tx.send(status);
    let _ = inner.updates.send(entry.view.clone());
    inner
        .notifier
        .decided(&entry.view, inner.web_url.as_deref());
    tracing::info!(approval = %id, status = status.as_str(), "approval request closed");
    true
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The handler stopped waiting: its client went away.
        let inner = self.service.clone();
        let id = self.id.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                close(
                    &inner,
                    &id,
                    Status::Abandoned,
                    "the client went away before a decision".into(),
                )
                .await
            });
        }
    }
}

/// Resolves once the peer of `stream` has closed its end (for handlers that wait on a ticket).
pub async fn peer_closed(stream: &tokio::net::TcpStream) {
    loop {
        match stream.ready(tokio::io::Interest::READABLE).await {
            Ok(r) if r.is_read_closed() => return,
            Ok(_) => {
                // Data is waiting (pipelined requests): look again later instead of spinning.
                let mut probe = [0u8; 1];
                if let Ok(0) = stream.peek(&mut probe).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => return,
        }
    }
}
