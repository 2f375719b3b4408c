//! Per-job budgets of records. A job decides how many refusals it causes; the gateway decides how
//! many rows they cost: per job, kind and second at most `server.records_per_second_per_job` are
//! recorded one by one, the rest are counted and recorded as one `suppressed` session per job and
//! second ("N more … not recorded one by one"), so that a reviewer still sees that they happened,
//! for which job, and how many.
//!
//! Kernel events are budgeted in the kernel (the ring buffer is shared by all jobs); the programs
//! count what they did not report (`JobState::suppressed`) and the summaries read those counts.
//! Refused connections and direct connections to the listener are budgeted here.

use crate::record::EventKind;
use parking_lot::Mutex;
use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use gateway_common::{
    EVENT_BIND, EVENT_CONNECT, EVENT_KERNEL_DENIED, EVENT_KINDS, EVENT_LIMIT, EVENT_LISTENER,
    EVENT_NETNS, EVENT_SOCKET, EVENT_UDP,
};
use serde_json::json;

use crate::{
    ebpf::{JobStates, Suppressed},
    identity::Identity,
    jobs::{Job, Jobs},
    record::{NewSession, SessionKind, Store, now},
};

/// What recording the budgets needs: the budgets, the programs' counters, the store, the jobs.
pub struct Recorder {
    pub budgets: Budgets,
    pub job_states: std::sync::Arc<JobStates>,
    pub store: Store,
    pub jobs: std::sync::Arc<Jobs>,
    /// `server.records_per_second_per_job`, for the summaries' wording.
    pub per_second: u32,
}

/// What the gateway (not the kernel) records one by one within a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Connections the gateway refused (policy, limits, expired bindings).
    DeniedConnections,
    /// Connections to the listener that no redirect produced (from outside any job: the kernel
    /// refuses them inside jobs).
    DirectConnections,
    /// DNS queries the forwarder answered or dropped (DNS follow).
    DnsQueries,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::DeniedConnections => "denied_connections",
            Source::DirectConnections => "direct_connections",
            Source::DnsQueries => "dns_queries",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Source::DeniedConnections => "denied connections",
            Source::DirectConnections => "direct connections to the gateway listener",
            Source::DnsQueries => "DNS queries",
        }
    }
}

#[derive(Default)]
struct Window {
    recorded: u32,
    suppressed: u64,
    identity: Option<Identity>,
}

struct State {
    /// Start of the current second.
    since: String,
    /// By job id (`None`: no job) and source.
    windows: HashMap<(Option<String>, Source), Window>,
    /// The kernel's counts of each slot already summarised, and the job they belong to.
    kernel_seen: HashMap<u32, (Option<String>, Suppressed)>,
}

pub struct Budgets {
    per_second: u32,
    state: Mutex<State>,
}

impl Budgets {
    pub fn new(per_second: u32) -> Budgets {
        Budgets {
            per_second,
            state: Mutex::new(State {
                since: now(),
                windows: HashMap::new(),
                kernel_seen: HashMap::new(),
            }),
        }
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Whether to record one more of `source` for `job` this second; if not, it is counted for
    /// the job's summary.
    pub fn admit(&self, job: Option<&Job>, source: Source) -> bool {
        let mut state = self.state();
        let w = state
            .windows
            .entry((job.map(|j| j.id.clone()), source))
            .or_default();
        if w.recorded < self.per_second {
            w.recorded += 1;
            return true;
        }
        if w.identity.is_none() {
            w.identity = job.map(|j| j.identity.clone());
        }
        w.suppressed += 1;
        false
    }

    /// Takes the kernel's current counts of `slot` as already summarised (a job whose counts
    /// start from there: a fresh slot, or an adopted job whose predecessor summarised them).
    pub fn baseline(&self, slot: u32, job: Option<&str>, counts: Suppressed) {
        self.state()
            .kernel_seen
            .insert(slot, (job.map(str::to_string), counts));
    }

    /// What `job` (in `slot`) was not recorded for since the last summary, taking it.
    fn kernel_delta(&self, slot: u32, job: Option<&str>, current: Suppressed) -> Suppressed {
        let mut state = self.state();
        let earlier = match state.kernel_seen.get(&slot) {
            Some((seen_job, counts)) if seen_job.as_deref() == job => *counts,
            // Not seen for this job: its slot was zeroed when it was handed out.
            _ => Suppressed::default(),
        };
        state
            .kernel_seen
            .insert(slot, (job.map(str::to_string), current));
        current.since(&earlier)
    }
}

/// One job's summary of a second.
#[derive(Default)]
struct Summary {
    identity: Option<Identity>,
    gateway: BTreeMap<Source, u64>,
    kernel: Suppressed,
}

impl Summary {
    fn total(&self) -> u64 {
        self.kernel.total() + self.gateway.values().sum::<u64>()
    }
}

/// Every second: the summaries of the second that ended.
pub async fn summary_loop(
    recorder: std::sync::Arc<Recorder>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => record_summaries(&recorder).await,
            () = shutdown.cancelled() => return,
        }
    }
}

/// Records what every job (and no job) went over its budgets by since the last summaries, and
/// starts a new second.
pub async fn record_summaries(recorder: &Recorder) {
    let (since, windows) = {
        let mut state = recorder.budgets.state();
        let since = std::mem::replace(&mut state.since, now());
        (since, std::mem::take(&mut state.windows))
    };
    let mut summaries: BTreeMap<Option<String>, Summary> = BTreeMap::new();
    for ((job, source), w) in windows {
        if w.suppressed > 0 {
            let s = summaries.entry(job).or_default();
            s.gateway.insert(source, w.suppressed);
            s.identity = s.identity.take().or(w.identity);
        }
    }
    let jobs = recorder.jobs.list();
    let slots = jobs.iter().map(|j| (j.slot, Some(j))).chain([(0, None)]);
    for (slot, job) in slots {
        if slot == 0 && job.is_some() {
            continue; // a job adopted without its programs: nothing of its own to read
        }
        let id = job.map(|j| j.id.as_str());
        let delta = recorder
            .budgets
            .kernel_delta(slot, id, recorder.job_states.suppressed(slot));
        if delta.total() > 0 {
            let s = summaries.entry(id.map(str::to_string)).or_default();
            s.kernel = delta;
            if let Some(j) = job {
                s.identity = Some(j.identity.clone());
            }
        }
    }
    for (job, summary) in summaries {
        record(recorder, job, summary, &since).await;
    }
}

/// At the end of a job: what it went over its budgets by since the last summaries.
pub async fn record_job_summary(recorder: &Recorder, job: &Job) {
    let (since, windows) = {
        let mut state = recorder.budgets.state();
        let mine: Vec<(Option<String>, Source)> = state
            .windows
            .keys()
            .filter(|(j, _)| j.as_deref() == Some(job.id.as_str()))
            .cloned()
            .collect();
        let windows: Vec<(Source, Window)> = mine
            .into_iter()
            .filter_map(|k| state.windows.remove(&k).map(|w| (k.1, w)))
            .collect();
        (state.since.clone(), windows)
    };
    let mut summary = Summary {
        identity: Some(job.identity.clone()),
        ..Default::default()
    };
    for (source, w) in windows {
        if w.suppressed > 0 {
            summary.gateway.insert(source, w.suppressed);
        }
    }
    if job.slot != 0 {
        // The slot's entry stays (the loop may still see the job until it is removed): a job
        // given the slot later starts from zero.
        summary.kernel = recorder.budgets.kernel_delta(
            job.slot,
            Some(&job.id),
            recorder.job_states.suppressed(job.slot),
        );
    }
    if summary.total() > 0 {
        record(recorder, Some(job.id.clone()), summary, &since).await;
    }
}

fn kind_name(kind: usize) -> (&'static str, &'static str) {
    match kind as u32 {
        EVENT_CONNECT => ("connect", "TCP connects to non-targets"),
        EVENT_UDP => ("udp", "UDP datagrams"),
        EVENT_SOCKET => ("socket", "sockets of a forbidden type"),
        EVENT_BIND => ("bind", "binds of the listener port"),
        EVENT_LISTENER => ("listener", "connects straight at the gateway listener"),
        EVENT_LIMIT => ("limit", "connects over a limit"),
        EVENT_NETNS => (
            "netns",
            "connects in a network namespace the gateway had no listener in yet",
        ),
        EVENT_KERNEL_DENIED => ("kernel_path", "kernel-path connects without a grant"),
        _ => ("unknown", "unknown kernel events"),
    }
}

async fn record(recorder: &Recorder, job: Option<String>, summary: Summary, since: &str) {
    let total = summary.total();
    let mut counts = Vec::new();
    let mut parts = Vec::new();
    for kind in 0..EVENT_KINDS {
        for (outcome, n) in summary.kernel.by_kind[kind].iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let (what, text) = kind_name(kind);
            let decision = if outcome == 1 { "deny" } else { "audit" };
            let verb = if outcome == 1 {
                "refused"
            } else {
                "let through"
            };
            counts.push(json!({ "what": what, "decision": decision, "count": n }));
            parts.push(format!("{n} {text} ({verb})"));
        }
    }
    if summary.kernel.lost > 0 {
        let n = summary.kernel.lost;
        counts.push(json!({ "what": "lost", "count": n }));
        parts.push(format!("{n} kernel events lost (the ring buffer was full)"));
    }
    for (source, n) in &summary.gateway {
        counts.push(json!({ "what": source.label(), "decision": "deny", "count": n }));
        parts.push(format!("{n} {}", source.describe()));
    }
    let per_second = recorder.per_second;
    let whose = if job.is_some() {
        "this job"
    } else {
        "processes outside any job"
    };
    let reason = format!(
        "{total} more not recorded one by one (over {per_second} a second of each kind for {whose}, server.records_per_second_per_job): {}",
        parts.join(", ")
    );
    tracing::warn!(job = job.as_deref().unwrap_or("-"), total, "{reason}");
    let session = NewSession {
        kind: SessionKind::Suppressed,
        job_id: job,
        target: None,
        protocol: None,
        destination: "-".into(),
        process: None,
        identity: summary.identity.unwrap_or_else(Identity::unauthenticated),
        decision: "suppressed".into(),
        rule: None,
        reason: Some(reason),
        started_at: since.to_string(),
        ended_at: Some(now()),
        path: None,
        cookie: None,
    };
    let detail = json!({ "total": total, "budget_per_second": per_second, "counts": counts });
    if let Err(e) = recorder
        .store
        .insert_session_with(session, vec![(EventKind::Suppressed, detail)])
        .await
    {
        tracing::error!(error = %e, "cannot record a summary of suppressed records");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_admits_its_share_per_job_and_counts_the_rest() {
        let b = Budgets::new(2);
        let job = |id: &str| Job {
            id: id.into(),
            cgroup_path: "/x".into(),
            cgroup_id: 1,
            slot: 1,
            owned: false,
            identity: Identity::unauthenticated(),
            binding_expires_at: None,
            created_at: String::new(),
            open_connections: Default::default(),
        };
        let (a, other) = (job("a"), job("b"));
        let admitted: Vec<bool> = (0..5)
            .map(|_| b.admit(Some(&a), Source::DeniedConnections))
            .collect();
        assert_eq!(admitted, [true, true, false, false, false]);
        // Another job, and another source of the same job, have budgets of their own.
        assert!(b.admit(Some(&other), Source::DeniedConnections));
        assert!(b.admit(Some(&a), Source::DirectConnections));
        let state = b.state();
        let w = &state.windows[&(Some("a".to_string()), Source::DeniedConnections)];
        assert_eq!((w.recorded, w.suppressed), (2, 3));
    }

    #[test]
    fn kernel_counts_are_summarised_once_and_per_job() {
        let b = Budgets::new(1);
        let mut counts = Suppressed::default();
        counts.by_kind[EVENT_UDP as usize][1] = 10;
        // A fresh slot: everything counted so far is new.
        assert_eq!(b.kernel_delta(3, Some("a"), counts).total(), 10);
        counts.by_kind[EVENT_UDP as usize][1] = 15;
        assert_eq!(b.kernel_delta(3, Some("a"), counts).total(), 5);
        assert_eq!(b.kernel_delta(3, Some("a"), counts).total(), 0);
        // The slot handed to another job (zeroed in between).
        let fresh = Suppressed {
            lost: 2,
            ..Default::default()
        };
        assert_eq!(b.kernel_delta(3, Some("b"), fresh).total(), 2);
        // An adopted job: what its predecessor summarised is not counted again.
        b.baseline(4, Some("c"), counts);
        assert_eq!(b.kernel_delta(4, Some("c"), counts).total(), 0);
    }
}
