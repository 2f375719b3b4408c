//! The approval state machine: who may decide, when, and what a decision does. Pure: no I/O, no
//! clocks of its own (the caller says what time it is and whether the deadline has passed, measured on
//! a monotonic clock so that a jump of the wall clock neither expires nor extends a request).

use serde::{Deserialize, Serialize};

/// Longest reason an approver may give (it is shown to the job and stored).
pub const MAX_REASON: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    /// The client went away (or the gateway restarted) before a decision.
    Abandoned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Status {
        match s {
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            "abandoned" => Status::Abandoned,
            _ => Status::Pending,
        }
    }
}

/// Someone deciding: a local Unix user on the control socket, or a person signed in to the web page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    /// Stable and unique: `unix:<user>` or `oidc:<issuer>#<sub>`.
    pub principal: String,
    /// For people: the user name, or the email/subject.
    pub display: String,
    /// OIDC issuer and subject (web approvers), compared with the requester's identity.
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub email: Option<String>,
    /// Approver groups (`[[approvers]]` names) this person belongs to. `*` = every group (root).
    pub groups: Vec<String>,
}

impl Approver {
    fn in_any(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| g == "*" || groups.contains(g))
    }
}

/// Who asked (the job's identity), as far as self-approval is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub issuer: Option<String>,
    pub subject: String,
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub approver: String,
    pub display: String,
    pub at: String,
    pub approve: bool,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub requester: Requester,
    /// Approver groups of the rule.
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub status: Status,
    pub votes: Vec<Vote>,
    /// When approved for a duration: seconds of the standing grant.
    pub grant_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approve { for_seconds: Option<u64> },
    Deny { reason: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("approval request {0} does not exist")]
    NotFound(String),
    #[error("approval request {id} is already {}", .status.as_str())]
    AlreadyDecided { id: String, status: Status },
    #[error("approval request {0} has expired")]
    Expired(String),
    #[error("{approver} may not approve their own request")]
    SelfApproval { approver: String },
    #[error("{approver} is not an approver for this request (approver groups: {groups})")]
    NotAnApprover { approver: String, groups: String },
    #[error(
        "{approver} has already approved this request; it needs {needed} more distinct approver(s)"
    )]
    AlreadyVoted { approver: String, needed: u32 },
    #[error("the reason is longer than {MAX_REASON} bytes")]
    ReasonTooLong,
    #[error("a standing approval must last between 1 second and 24 hours")]
    BadDuration,
}

/// Whether `approver` is the person the request was made for.
fn is_requester(req: &Requester, approver: &Approver) -> bool {
    let same_subject = approver.subject.as_deref() == Some(req.subject.as_str())
        && approver.issuer.is_some()
        && approver.issuer == req.issuer;
    let same_email = req.email.is_some() && approver.email.is_some() && req.email == approver.email;
    same_subject || same_email
}

/// Applies a decision. On error nothing changes. `expired`: the deadline has passed (monotonic).
pub fn decide(
    request: &mut Request,
    approver: &Approver,
    verdict: Verdict,
    at: &str,
    expired: bool,
) -> Result<Status, DecisionError> {
    if request.status != Status::Pending {
        return Err(DecisionError::AlreadyDecided {
            id: request.id.clone(),
            status: request.status,
        });
    }
    if expired {
        return Err(DecisionError::Expired(request.id.clone()));
    }
    if is_requester(&request.requester, approver) {
        return Err(DecisionError::SelfApproval {
            approver: approver.display.clone(),
        });
    }
    if !approver.in_any(&request.approvers) {
        return Err(DecisionError::NotAnApprover {
            approver: approver.display.clone(),
            groups: request.approvers.join(", "),
        });
    }
    let approvals = request.votes.iter().filter(|v| v.approve).count() as u32;
    match verdict {
        Verdict::Deny { reason } => {
            if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
                return Err(DecisionError::ReasonTooLong);
            }
            request.votes.push(Vote {
                approver: approver.principal.clone(),
                display: approver.display.clone(),
                at: at.to_string(),
                approve: false,
                reason,
            });
            // One denial is enough: a quorum protects against approving, not against refusing.
            request.status = Status::Denied;
        }
        Verdict::Approve { for_seconds } => {
            if for_seconds.is_some_and(|s| s == 0 || s > 24 * 3600) {
                return Err(DecisionError::BadDuration);
            }
            if request
                .votes
                .iter()
                .any(|v| v.approver == approver.principal)
            {
                return Err(DecisionError::AlreadyVoted {
                    approver: approver.display.clone(),
                    needed: request.quorum.saturating_sub(approvals),
                });
            }
            request.votes.push(Vote {
                approver: approver.principal.clone(),
                display: approver.display.clone(),
                at: at.to_string(),
                approve: true,
                reason: None,
            });
            if for_seconds.is_some() {
                request.grant_seconds = for_seconds;
            }
            if approvals + 1 >= request.quorum.max(1) {
                request.status = Status::Approved;
            }
        }
    }
    Ok(request.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(quorum: u32) -> Request {
        Request {
            id: "apr-1".into(),
            requester: Requester {
                issuer: Some("https://issuer".into()),
                subject: "ci-job".into(),
                email: None,
            },
            approvers: vec!["dba".into()],
            quorum,
            status: Status::Pending,
            votes: Vec::new(),
            grant_seconds: None,
        }
    }

    fn person(name: &str, groups: &[&str]) -> Approver {
        Approver {
            principal: format!("oidc:https://issuer#{name}"),
            display: name.into(),
            issuer: Some("https://issuer".into()),
            subject: Some(name.into()),
            email: Some(format!("{name}@example.test")),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    const APPROVE: Verdict = Verdict::Approve { for_seconds: None };

    #[test]
    fn one_approval_decides_with_quorum_one() {
        let mut r = request(1);
        assert_eq!(
            decide(&mut r, &person("alice", &["dba"]), APPROVE, "t", false),
            Ok(Status::Approved)
        );
        assert_eq!(r.votes.len(), 1);
        let again = decide(&mut r, &person("bob", &["dba"]), APPROVE, "t", false);
        assert_eq!(
            again,
            Err(DecisionError::AlreadyDecided {
                id: "apr-1".into(),
                status: Status::Approved
            })
        );
    }

    #[test]
    fn quorum_needs_distinct_approvers() {
        let mut r = request(2);
        let alice = person("alice", &["dba"]);
        assert_eq!(
            decide(&mut r, &alice, APPROVE, "t", false),
            Ok(Status::Pending)
        );
        let twice = decide(&mut r, &alice, APPROVE, "t", false);
        assert!(
            matches!(twice, Err(DecisionError::AlreadyVoted { needed: 1, .. })),
            "{twice:?}"
        );
        assert_eq!(r.votes.len(), 1, "a refused vote changes nothing");
        assert_eq!(
            decide(&mut r, &person("bob", &["dba"]), APPROVE, "t", false),
            Ok(Status::Approved)
        );
    }

    #[test]
    fn the_requester_cannot_approve_even_as_an_approver() {
        let mut r = request(1);
        let me = person("ci-job", &["dba"]);
        assert!(matches!(
            decide(&mut r, &me, APPROVE, "t", false),
            Err(DecisionError::SelfApproval { .. })
        ));
        // Same email under another subject is the same person too.
        r.requester.email = Some("carol@example.test".into());
        let carol = person("carol", &["dba"]);
        assert!(matches!(
            decide(&mut r, &carol, APPROVE, "t", false),
            Err(DecisionError::SelfApproval { .. })
        ));
        // Same subject at another issuer is someone else.
        let mut other = person("ci-job", &["dba"]);
        other.issuer = Some("https://elsewhere".into());
        other.email = None;
        assert_eq!(
            decide(&mut r, &other, APPROVE, "t", false),
            Ok(Status::Approved)
        );
    }

    #[test]
    fn only_members_of_the_rules_approver_groups_decide() {
        let mut r = request(1);
        let dev = person("dave", &["devs"]);
        assert!(matches!(
            decide(&mut r, &dev, APPROVE, "t", false),
            Err(DecisionError::NotAnApprover { .. })
        ));
        let deny = Verdict::Deny { reason: None };
        assert!(matches!(
            decide(&mut r, &dev, deny, "t", false),
            Err(DecisionError::NotAnApprover { .. })
        ));
        let root = Approver {
            groups: vec!["*".into()],
            ..person("root", &[])
        };
        assert_eq!(
            decide(&mut r, &root, APPROVE, "t", false),
            Ok(Status::Approved)
        );
    }

    #[test]
    fn a_denial_decides_and_bad_input_changes_nothing() {
        let mut r = request(2);
        let alice = person("alice", &["dba"]);
        let long = Verdict::Deny {
            reason: Some("x".repeat(MAX_REASON + 1)),
        };
        assert_eq!(
            decide(&mut r, &alice, long, "t", false),
            Err(DecisionError::ReasonTooLong)
        );
        let forever = Verdict::Approve {
            for_seconds: Some(10 * 24 * 3600),
        };
        assert_eq!(
            decide(&mut r, &alice, forever, "t", false),
            Err(DecisionError::BadDuration)
        );
        assert_eq!(
            decide(&mut r, &alice, APPROVE, "t", true),
            Err(DecisionError::Expired("apr-1".into()))
        );
        assert!(r.votes.is_empty() && r.status == Status::Pending);
        let deny = Verdict::Deny {
            reason: Some("not during the freeze".into()),
        };
        assert_eq!(decide(&mut r, &alice, deny, "t", false), Ok(Status::Denied));
        assert_eq!(r.votes[0].reason.as_deref(), Some("not during the freeze"));
    }

    #[test]
    fn approving_for_a_duration_records_the_grant() {
        let mut r = request(1);
        let v = Verdict::Approve {
            for_seconds: Some(600),
        };
        assert_eq!(
            decide(&mut r, &person("alice", &["dba"]), v, "t", false),
            Ok(Status::Approved)
        );
        assert_eq!(r.grant_seconds, Some(600));
    }
}
