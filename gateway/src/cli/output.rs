//! How sessions, jobs and status look on a terminal.

use super::table::{bytes, fields, render};
use crate::{
    approval::{model::Status as ApprovalStatus, store::ApprovalView},
    control::Status,
    record::{SessionRecord, SessionSummary},
};

fn short_time(rfc3339: &str) -> String {
    // 2026-11-25T23:59:01.123Z → 2026-11-25 23:59:01
    rfc3339
        .get(..19)
        .map_or_else(|| rfc3339.to_string(), |t| t.replace('T', " "))
}

fn or_dash(v: Option<&str>) -> String {
    v.map_or_else(|| "-".to_string(), str::to_string)
}

pub fn sessions(list: &[SessionSummary]) -> String {
    if list.is_empty() {
        return "no sessions recorded yet\n".to_string();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                short_time(&s.started_at),
                or_dash(s.target.as_deref()),
                s.destination.clone(),
                s.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                or_dash(s.comm.as_deref()),
                s.identity.clone(),
                s.decision.clone(),
                bytes(s.bytes_up),
                bytes(s.bytes_down),
                s.ended_at
                    .as_deref()
                    .map_or_else(|| "open".to_string(), short_time),
            ]
        })
        .collect();
    render(
        &[
            "ID",
            "STARTED",
            "TARGET",
            "DESTINATION",
            "PID",
            "COMM",
            "IDENTITY",
            "DECISION",
            "UP",
            "DOWN",
            "ENDED",
        ],
        &rows,
    )
}

pub fn session(s: &SessionRecord) -> String {
    let m = &s.summary;
    let mut pairs = vec![
        ("session", m.id.to_string()),
        ("kind", format!("{:?}", m.kind).to_lowercase()),
        ("job", or_dash(m.job_id.as_deref())),
        ("target", or_dash(m.target.as_deref())),
        ("protocol", or_dash(m.protocol.as_deref())),
        ("destination", m.destination.clone()),
        ("identity", m.identity.clone()),
        ("issuer", or_dash(m.issuer.as_deref())),
        (
            "claims",
            match &s.claims {
                serde_json::Value::Object(c) if !c.is_empty() => s.claims.to_string(),
                _ => "-".to_string(),
            },
        ),
        ("decision", m.decision.clone()),
        ("rule", or_dash(m.rule.as_deref())),
        ("reason", or_dash(s.reason.as_deref())),
        ("started", m.started_at.clone()),
        ("ended", or_dash(m.ended_at.as_deref())),
        ("bytes up", bytes(m.bytes_up)),
        ("bytes down", bytes(m.bytes_down)),
    ];
    if let Some(p) = &s.process {
        pairs.push(("pid", format!("{} (tid {})", p.pid, p.tid)));
        pairs.push(("uid/gid", format!("{}/{}", p.uid, p.gid)));
        pairs.push(("comm", p.comm.clone()));
        pairs.push(("exe", or_dash(p.exe.as_deref())));
        pairs.push((
            "cmdline",
            p.cmdline
                .as_ref()
                .map_or_else(|| "-".into(), |c| c.join(" ")),
        ));
        pairs.push((
            "process",
            if p.verified {
                "verified from /proc".into()
            } else {
                "as captured at connect (process gone or pid reused)".into()
            },
        ));
    }
    let mut out = fields(&pairs);
    if !s.events.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .events
            .iter()
            .map(|e| vec![e.at.clone(), e.kind.clone(), e.detail.to_string()])
            .collect();
        out.push_str(&render(&["AT", "EVENT", "DETAIL"], &rows));
    }
    out
}

pub fn status(s: &Status) -> String {
    let mut out = fields(&[
        ("gateway", format!("{} (pid {})", s.version, s.pid)),
        ("mode", s.mode.clone()),
        ("listen", s.listen.join(", ")),
        ("control socket", s.control_socket.clone()),
        ("state", s.state_dir.clone()),
        ("bpf pins", s.bpf_pin_dir.clone()),
        ("cgroup v2", s.cgroup_root.clone()),
        ("started", s.started_at.clone()),
        ("active sessions", s.active_sessions.to_string()),
    ]);
    out.push('\n');
    if s.targets.is_empty() {
        out.push_str("no targets configured: every intercepted connection is refused\n");
    } else {
        let rows: Vec<Vec<String>> = s
            .targets
            .iter()
            .map(|t| vec![t.name.clone(), t.protocol.clone(), t.address.clone()])
            .collect();
        out.push_str(&render(&["TARGET", "PROTOCOL", "ADDRESS"], &rows));
    }
    out.push('\n');
    if s.jobs.is_empty() {
        out.push_str("no jobs attached\n");
    } else {
        let rows: Vec<Vec<String>> = s
            .jobs
            .iter()
            .map(|j| {
                vec![
                    j.id.clone(),
                    j.identity.subject.clone(),
                    or_dash(j.identity.issuer.as_deref()),
                    if j.owned {
                        "run".into()
                    } else {
                        "attach".into()
                    },
                    j.cgroup_path.clone(),
                    short_time(&j.created_at),
                    j.binding_expires_at
                        .as_deref()
                        .map_or_else(|| "-".to_string(), short_time),
                ]
            })
            .collect();
        out.push_str(&render(
            &[
                "JOB",
                "IDENTITY",
                "ISSUER",
                "HOW",
                "CGROUP",
                "SINCE",
                "BOUND UNTIL",
            ],
            &rows,
        ));
    }
    if !s.issuers.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .issuers
            .iter()
            .map(|i| {
                vec![
                    i.url.clone(),
                    i.audiences.join(","),
                    i.keys.to_string(),
                    i.keys_fetched_at
                        .as_deref()
                        .map_or_else(|| "-".to_string(), short_time),
                    if i.fetching {
                        "fetching keys".to_string()
                    } else {
                        or_dash(i.last_error.as_deref())
                    },
                ]
            })
            .collect();
        out.push_str(&render(
            &["ISSUER", "AUDIENCES", "KEYS", "FETCHED", "LAST ERROR"],
            &rows,
        ));
    }
    out
}

fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

pub fn approvals(list: &[ApprovalView]) -> String {
    if list.is_empty() {
        return "no approval requests\n".to_string();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let approvals = a.votes.iter().filter(|v| v.approve).count();
            let pid = a.detail["process"]["pid"]
                .as_u64()
                .map_or_else(|| "-".into(), |p| p.to_string());
            vec![
                a.id.clone(),
                a.status.as_str().to_string(),
                if a.status == ApprovalStatus::Pending {
                    format!("until {}", short_time(&a.deadline))
                } else {
                    short_time(a.decided_at.as_deref().unwrap_or(&a.created_at))
                },
                a.target.clone(),
                a.requester.subject.clone(),
                pid,
                format!("{approvals}/{}", a.quorum),
                one_line(&a.operation, 60),
            ]
        })
        .collect();
    render(
        &[
            "ID",
            "STATUS",
            "WHEN",
            "TARGET",
            "IDENTITY",
            "PID",
            "VOTES",
            "OPERATION",
        ],
        &rows,
    )
}

pub fn approval_decided(a: &ApprovalView) -> String {
    let approvals = a.votes.iter().filter(|v| v.approve).count();
    match a.status {
        ApprovalStatus::Pending => format!(
            "{}: approval recorded ({approvals} of {} needed)",
            a.id, a.quorum
        ),
        ApprovalStatus::Approved => match a.grant_seconds {
            Some(s) => format!(
                "{}: approved; the same rule, identity and target pass without asking for {s}s",
                a.id
            ),
            None => format!("{}: approved", a.id),
        },
        other => format!("{}: {}", a.id, other.as_str()),
    }
}
