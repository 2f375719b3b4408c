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

/// How an approver reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A local Unix user on the control socket (the CLI).
    Unix,
    /// A person signed in to the web page with OIDC.
    Oidc,
}

/// The person an account belongs to, from `[[approvers.people]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub name: String,
    /// Channels the person's accounts are listed for: an unlisted account on one of these is
    /// someone else.
    pub channels: Vec<Channel>,
    /// Every name the person is known by (accounts, CI user names), for self-approval.
    pub names: Vec<String>,
}

/// Someone deciding: a local Unix user on the control socket, or a person signed in to the web page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    /// Stable and unique per account: `unix:<user>` or `oidc:<issuer>#<sub>`.
    pub principal: String,
    /// For people: the user name, or the verified email, else the subject.
    pub display: String,
    pub channel: Channel,
    /// OIDC issuer and subject (web approvers), compared with the requester's identity.
    pub issuer: Option<String>,
    pub subject: Option<String>,
    /// Verified email only.
    pub email: Option<String>,
    /// Approver groups (`[[approvers]]` names) this person belongs to. `*` = every group (root).
    pub groups: Vec<String>,
    /// The person this account is listed as, if any.
    pub person: Option<Person>,
}

impl Approver {
    fn in_any(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| g == "*" || groups.contains(g))
    }

    /// Whether this approver may see requests of these approver groups.
    pub fn may_see(&self, groups: &[String]) -> bool {
        self.in_any(groups)
    }

    /// Names this approver is known by: its own accounts and its person's.
    fn names(&self) -> Vec<String> {
        let own = match self.channel {
            Channel::Unix => vec![self.display.clone()],
            Channel::Oidc => self.subject.iter().chain(&self.email).cloned().collect(),
        };
        let person = self.person.iter().flat_map(|p| p.names.iter().cloned());
        own.into_iter().chain(person).collect()
    }

    fn voter(&self) -> Voter<'_> {
        Voter {
            principal: &self.principal,
            channel: self.channel,
            person: self
                .person
                .as_ref()
                .map(|p| (p.name.as_str(), p.channels.as_slice())),
        }
    }
}

/// Who asked (the job's identity), as far as self-approval is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub issuer: Option<String>,
    pub subject: String,
    pub email: Option<String>,
    /// Values of the token's `person_claims` (who started the CI job). Not stored: requests do not
    /// outlive the daemon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub started_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub approver: String,
    pub display: String,
    pub at: String,
    pub approve: bool,
    pub reason: Option<String>,
    /// The standing approval this vote asked for (seconds).
    #[serde(default)]
    pub for_seconds: Option<u64>,
    /// The `[[approvers.people]]` entry the voter's account belongs to.
    #[serde(default)]
    pub person: Option<String>,
    /// Channels that person's accounts are listed for (decisions only; not stored).
    #[serde(skip)]
    pub person_channels: Vec<Channel>,
}

impl Vote {
    fn voter(&self) -> Voter<'_> {
        Voter {
            principal: &self.approver,
            channel: if self.approver.starts_with("unix:") {
                Channel::Unix
            } else {
                Channel::Oidc
            },
            person: self
                .person
                .as_deref()
                .map(|p| (p, self.person_channels.as_slice())),
        }
    }
}

/// A voter as far as "is this another person" is concerned.
struct Voter<'a> {
    principal: &'a str,
    channel: Channel,
    person: Option<(&'a str, &'a [Channel])>,
}

#[derive(Debug, PartialEq, Eq)]
enum Sameness {
    Same,
    Different,
    /// Accounts on two channels that no `[[approvers.people]]` entry tells apart.
    Unknown,
}

/// Whether two voters are one person. Two accounts of one channel are two people unless one
/// person lists both; accounts of two channels are two people only when a person entry says so
/// (one of them is listed as a person whose accounts on the other's channel are all listed).
fn sameness(a: &Voter<'_>, b: &Voter<'_>) -> Sameness {
    match (a.person, b.person) {
        (Some((x, _)), Some((y, _))) => {
            return if x == y {
                Sameness::Same
            } else {
                Sameness::Different
            };
        }
        _ if a.principal == b.principal => return Sameness::Same,
        _ => {}
    }
    if a.channel == b.channel {
        return Sameness::Different;
    }
    let covers = |v: &Voter<'_>, channel| v.person.is_some_and(|(_, c)| c.contains(&channel));
    if covers(a, b.channel) || covers(b, a.channel) {
        Sameness::Different
    } else {
        Sameness::Unknown
    }
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
    /// When approved and every approving vote asked for one: seconds of the standing grant.
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
    #[error(
        "{approver} may be the same person as {other}, who approved through the other channel \
         (CLI or page); a quorum counts people: list each person's accounts in one \
         [[approvers.people]] entry"
    )]
    MaybeSamePerson { approver: String, other: String },
    #[error("the reason is longer than {MAX_REASON} bytes")]
    ReasonTooLong,
    #[error("a standing approval must last between 1 second and 24 hours")]
    BadDuration,
    #[error(
        "no standing approval for an unauthenticated job: every unauthenticated job shares that \
         identity; approve once"
    )]
    GrantForUnauthenticated,
}

fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether `approver` is the person the request was made for: the job's own identity (same
/// subject at the same issuer, or the same email), or the person who started the CI job (a
/// `person_claims` value naming one of the approver's accounts or its person's).
fn is_requester(req: &Requester, approver: &Approver) -> bool {
    let same_subject = approver.subject.as_deref() == Some(req.subject.as_str())
        && approver.issuer.is_some()
        && approver.issuer == req.issuer;
    let same_email = req
        .email
        .as_deref()
        .zip(approver.email.as_deref())
        .is_some_and(|(a, b)| same_name(a, b));
    let names = approver.names();
    let started_it = req
        .started_by
        .iter()
        .any(|who| names.iter().any(|n| same_name(n, who)));
    same_subject || same_email || started_it
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
    let vote = |approve, reason, for_seconds| Vote {
        approver: approver.principal.clone(),
        display: approver.display.clone(),
        at: at.to_string(),
        approve,
        reason,
        for_seconds,
        person: approver.person.as_ref().map(|p| p.name.clone()),
        person_channels: approver
            .person
            .as_ref()
            .map(|p| p.channels.clone())
            .unwrap_or_default(),
    };
    match verdict {
        Verdict::Deny { reason } => {
            if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
                return Err(DecisionError::ReasonTooLong);
            }
            request.votes.push(vote(false, reason, None));
            // One denial is enough: a quorum protects against approving, not against refusing.
            request.status = Status::Denied;
        }
        Verdict::Approve { for_seconds } => {
            if for_seconds.is_some_and(|s| s == 0 || s > 24 * 3600) {
                return Err(DecisionError::BadDuration);
            }
            if for_seconds.is_some() && request.requester.issuer.is_none() {
                return Err(DecisionError::GrantForUnauthenticated);
            }
            let me = approver.voter();
            for earlier in request.votes.iter().filter(|v| v.approve) {
                match sameness(&earlier.voter(), &me) {
                    Sameness::Different => {}
                    Sameness::Same => {
                        return Err(DecisionError::AlreadyVoted {
                            approver: approver
                                .person
                                .as_ref()
                                .map_or_else(|| approver.display.clone(), |p| p.name.clone()),
                            needed: request.quorum.saturating_sub(approvals),
                        });
                    }
                    Sameness::Unknown => {
                        return Err(DecisionError::MaybeSamePerson {
                            approver: approver.display.clone(),
                            other: earlier.display.clone(),
                        });
                    }
                }
            }
            request.votes.push(vote(true, None, for_seconds));
            if approvals + 1 >= request.quorum.max(1) {
                request.status = Status::Approved;
                request.grant_seconds = grant_of(&request.votes);
            }
        }
    }
    Ok(request.status)
}

/// The standing approval approving votes agree on: only when every one asked for one, and then
/// the shortest.
pub fn grant_of(votes: &[Vote]) -> Option<u64> {
    let approving: Vec<&Vote> = votes.iter().filter(|v| v.approve).collect();
    if approving.is_empty() {
        return None;
    }
    approving
        .iter()
        .map(|v| v.for_seconds)
        .collect::<Option<Vec<u64>>>()?
        .into_iter()
        .min()
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
                started_by: Vec::new(),
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
            channel: Channel::Oidc,
            issuer: Some("https://issuer".into()),
            subject: Some(name.into()),
            email: Some(format!("{name}@example.test")),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            person: None,
        }
    }

    fn unix(name: &str, groups: &[&str]) -> Approver {
        Approver {
            principal: format!("unix:{name}"),
            display: name.into(),
            channel: Channel::Unix,
            issuer: None,
            subject: None,
            email: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            person: None,
        }
    }

    fn as_person(mut a: Approver, name: &str, channels: &[Channel]) -> Approver {
        a.person = Some(Person {
            name: name.into(),
            channels: channels.to_vec(),
            names: vec![name.into()],
        });
        a
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

    #[test]
    fn a_quorum_counts_people_across_channels() {
        use Channel::{Oidc, Unix};
        let both = [Unix, Oidc];
        // One person's CLI and page accounts: the second vote is theirs again.
        let mut r = request(2);
        let carol_cli = as_person(unix("nobody", &["dba"]), "carol", &both);
        let carol_web = as_person(person("carol", &["dba"]), "carol", &both);
        assert_eq!(
            decide(&mut r, &carol_cli, APPROVE, "t", false),
            Ok(Status::Pending)
        );
        assert!(matches!(
            decide(&mut r, &carol_web, APPROVE, "t", false),
            Err(DecisionError::AlreadyVoted { .. })
        ));
        // Someone else on the page is another person: carol's page accounts are all listed.
        assert_eq!(
            decide(&mut r, &person("bob", &["dba"]), APPROVE, "t", false),
            Ok(Status::Approved)
        );
        // Unlisted accounts on two channels could be one person: not counted twice.
        let mut r = request(2);
        assert_eq!(
            decide(&mut r, &unix("ops", &["dba"]), APPROVE, "t", false),
            Ok(Status::Pending)
        );
        let e = decide(&mut r, &person("bob", &["dba"]), APPROVE, "t", false);
        assert!(
            matches!(e, Err(DecisionError::MaybeSamePerson { .. })),
            "{e:?}"
        );
        assert_eq!(r.votes.len(), 1);
        // A person listed only with a Unix account says nothing about page accounts.
        let ops = as_person(unix("ops", &["dba"]), "ops", &[Unix]);
        let mut r = request(2);
        assert_eq!(
            decide(&mut r, &ops, APPROVE, "t", false),
            Ok(Status::Pending)
        );
        assert!(decide(&mut r, &person("bob", &["dba"]), APPROVE, "t", false).is_err());
        // Two Unix users are two people; a denial needs no distinctness.
        assert_eq!(
            decide(&mut r, &unix("dba2", &["dba"]), APPROVE, "t", false),
            Ok(Status::Approved)
        );
        let mut r = request(2);
        decide(&mut r, &unix("ops", &["dba"]), APPROVE, "t", false).unwrap();
        let deny = Verdict::Deny { reason: None };
        assert_eq!(
            decide(&mut r, &person("bob", &["dba"]), deny, "t", false),
            Ok(Status::Denied)
        );
    }

    #[test]
    fn a_grant_needs_every_approving_vote_and_lasts_the_shortest() {
        let day = Verdict::Approve {
            for_seconds: Some(86400),
        };
        let ten = Verdict::Approve {
            for_seconds: Some(600),
        };
        let mut r = request(2);
        decide(&mut r, &unix("root", &["*"]), day.clone(), "t", false).unwrap();
        assert_eq!(
            decide(&mut r, &unix("ops", &["dba"]), APPROVE, "t", false),
            Ok(Status::Approved)
        );
        assert_eq!(r.grant_seconds, None, "the second approver chose once");
        assert_eq!(r.votes[0].for_seconds, Some(86400));
        let mut r = request(2);
        decide(&mut r, &unix("root", &["*"]), day, "t", false).unwrap();
        decide(&mut r, &unix("ops", &["dba"]), ten.clone(), "t", false).unwrap();
        assert_eq!(r.grant_seconds, Some(600));
        // Never for the identity every unauthenticated job shares.
        let mut r = request(1);
        r.requester.issuer = None;
        r.requester.subject = "unauthenticated".into();
        assert_eq!(
            decide(&mut r, &unix("root", &["*"]), ten, "t", false),
            Err(DecisionError::GrantForUnauthenticated)
        );
        assert!(r.votes.is_empty());
    }

    #[test]
    fn the_person_who_started_the_job_cannot_approve_it() {
        let mut r = request(1);
        r.requester.started_by = vec!["Carol".into()];
        // By the name of their page account ...
        assert!(matches!(
            decide(&mut r, &person("carol", &["dba"]), APPROVE, "t", false),
            Err(DecisionError::SelfApproval { .. })
        ));
        // ... or any account of their person, e.g. their Unix user.
        let cli = as_person(unix("nobody", &["dba"]), "carol", &[Channel::Unix]);
        assert!(matches!(
            decide(&mut r, &cli, APPROVE, "t", false),
            Err(DecisionError::SelfApproval { .. })
        ));
        assert_eq!(
            decide(&mut r, &unix("ops", &["dba"]), APPROVE, "t", false),
            Ok(Status::Approved)
        );
    }
}
