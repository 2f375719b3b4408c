//! How sessions, jobs and status look on a terminal.

use super::table::{bytes, fields, render};
use crate::record::EventKind;
use crate::{
    approval::{model::Status as ApprovalStatus, store::ApprovalView},
    control::{RecordingStatus, Status},
    record::{EventRecord, SessionRecord, SessionSummary},
    visible,
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
                s.path.map_or_else(|| "-".into(), |p| p.to_string()),
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
            "PATH",
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
        ("path", m.path.map_or_else(|| "-".into(), |p| p.to_string())),
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
            p.cmdline.as_ref().map_or_else(
                || "-".into(),
                |c| {
                    let args = c.join(" ");
                    if p.cmdline_cut {
                        format!("{args} … (cut: only the first 4 KiB are kept)")
                    } else {
                        args
                    }
                },
            ),
        ));
        pairs.push((
            "process",
            if p.verified {
                "verified from /proc".into()
            } else {
                "as captured at connect (the process exited, its pid was reused, or it began running another program)".into()
            },
        ));
        if let Some(c) = &p.container {
            pairs.push(("container", container_line(c)));
        }
        if !p.ancestry.is_empty() {
            pairs.push(("ran by", ancestry_line(p)));
        }
    }
    let mut out = fields(&pairs);
    let (statements, others): (Vec<&EventRecord>, Vec<&EventRecord>) = s
        .events
        .iter()
        .partition(|e| matches!(e.event_kind(), Some(EventKind::Sql | EventKind::SqlResult)));
    let (requests, others): (Vec<&EventRecord>, Vec<&EventRecord>) =
        others.into_iter().partition(|e| {
            matches!(
                e.event_kind(),
                Some(EventKind::HttpRequest | EventKind::HttpResponse)
            )
        });
    if !others.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = others
            .iter()
            .map(|e| vec![e.at.clone(), e.kind.clone(), e.detail.to_string()])
            .collect();
        out.push_str(&render(&["AT", "EVENT", "DETAIL"], &rows));
    }
    if !statements.is_empty() {
        out.push_str("\nstatements\n");
        out.push_str(&statement_log(&statements));
    }
    if !requests.is_empty() {
        out.push_str("\nrequests\n");
        out.push_str(&request_log(&requests));
    }
    if let Some(after) = s.more_after {
        out.push_str(&format!(
            "\n(more events: gateway sessions show {} --after {after})\n",
            s.summary.id
        ));
    }
    out
}

fn container_line(c: &crate::record::ContainerInfo) -> String {
    let id = c.id.get(..12).unwrap_or(&c.id);
    match (&c.name, &c.image, c.verified) {
        (Some(name), Some(image), true) => format!("{id} {name} (image {image})"),
        _ => format!("{id} (not confirmed by the container engine)"),
    }
}

/// The chain from the job's first process to the one that connected: `node (agent) → bash -c … →
/// psql`.
pub fn ancestry_line(p: &crate::record::ProcessInfo) -> String {
    let step = |comm: &str, exe: Option<&str>, cmdline: Option<&Vec<String>>| {
        let program = exe
            .and_then(|e| e.rsplit('/').next())
            .unwrap_or(comm)
            .to_string();
        let shown = match cmdline {
            Some(args) if args.len() > 1 => {
                let rest = one_line(&args[1..].join(" "), 60);
                format!("{program} {rest}")
            }
            _ => program.clone(),
        };
        if program == comm || comm.is_empty() {
            shown
        } else {
            format!("{shown} ({comm})")
        }
    };
    let mut chain: Vec<String> = p
        .ancestry
        .iter()
        .map(|a| {
            format!(
                "[{}] {}",
                a.pid,
                step(&a.comm, a.exe.as_deref(), a.cmdline.as_ref())
            )
        })
        .collect();
    chain.push(format!(
        "[{}] {}",
        p.pid,
        step(&p.comm, p.exe.as_deref(), p.cmdline.as_ref())
    ));
    chain.join(" → ")
}

/// The SQL statement log: each statement with its decision, then its outcome and sample rows.
fn statement_log(events: &[&EventRecord]) -> String {
    use std::fmt::Write as _;
    // Statements, parameters, rows and messages are the job's and the server's text: shown visibly.
    let str_of = |v: &serde_json::Value| {
        visible::line(&match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "NULL".to_string(),
            other => other.to_string(),
        })
    };
    let mut out = String::new();
    for e in events {
        let d = &e.detail;
        let seq = d["seq"].as_u64().unwrap_or_default();
        if e.event_kind() == Some(EventKind::Sql) {
            let rule = d["rule"].as_str().filter(|r| !r.is_empty());
            let decision = match rule {
                Some(r) => format!("{} ({r})", str_of(&d["decision"])),
                None => str_of(&d["decision"]),
            };
            let sql = one_line(&str_of(&d["sql"]), usize::MAX);
            let _ = writeln!(out, "#{seq:<4} {}  {decision:<24} {sql}", short_time(&e.at));
            if let Some(params) = d["params"].as_array().filter(|p| !p.is_empty()) {
                let p: Vec<String> = params.iter().map(str_of).collect();
                let _ = writeln!(out, "      params: {}", p.join(", "));
            }
            if let Some(reason) = d["reason"].as_str() {
                let _ = writeln!(out, "      reason: {}", visible::line(reason));
            }
            continue;
        }
        let rows = d["rows"].as_u64().unwrap_or_default();
        let mut parts = Vec::new();
        if let Some(tags) = d["tags"].as_array() {
            let t: Vec<String> = tags.iter().map(str_of).filter(|t| !t.is_empty()).collect();
            if !t.is_empty() {
                parts.push(t.join("; "));
            }
        }
        parts.push(format!("{rows} row{}", if rows == 1 { "" } else { "s" }));
        parts.push(format!(
            "{} ms",
            d["duration_ms"].as_f64().unwrap_or_default()
        ));
        if let Some(m) = d["masked_values"].as_u64() {
            parts.push(format!("{m} value{} masked", if m == 1 { "" } else { "s" }));
        }
        if let Some(r) = d["refused"].as_str() {
            parts.push(format!("refused: {}", visible::line(r)));
        } else if let Some(err) = d["error"].as_object() {
            parts.push(format!(
                "error {}: {}",
                err.get("code").map(str_of).unwrap_or_default(),
                err.get("message").map(str_of).unwrap_or_default()
            ));
        }
        if let Some(skipped) = d["skipped"].as_str() {
            parts.push(visible::line(skipped));
        }
        let _ = writeln!(out, "#{seq:<4} -> {}", parts.join(" · "));
        if let Some(sample) = d["sample"].as_array() {
            if let Some(cols) = d["columns"].as_array() {
                let c: Vec<String> = cols.iter().map(str_of).collect();
                let _ = writeln!(out, "      | {}", c.join(" | "));
            }
            for row in sample {
                let r: Vec<String> = row
                    .as_array()
                    .map(|r| r.iter().map(str_of).collect())
                    .unwrap_or_default();
                let _ = writeln!(out, "      | {}", r.join(" | "));
            }
            if rows > sample.len() as u64 {
                let _ = writeln!(out, "      | … {} more", rows - sample.len() as u64);
            }
        }
        if let Some(note) = d["sample_note"].as_str() {
            let _ = writeln!(out, "      ({})", visible::line(note));
        }
    }
    out
}

/// The HTTP request log: each request with its decision, status and duration.
fn request_log(events: &[&EventRecord]) -> String {
    let responses: std::collections::HashMap<u64, &serde_json::Value> = events
        .iter()
        .filter(|e| e.event_kind() == Some(EventKind::HttpResponse))
        .filter_map(|e| Some((e.detail["request"].as_u64()?, &e.detail)))
        .collect();
    let mut rows = Vec::new();
    for e in events
        .iter()
        .filter(|e| e.event_kind() == Some(EventKind::HttpRequest))
    {
        let d = &e.detail;
        let number = d["request"].as_u64().unwrap_or_default();
        let text = |v: &serde_json::Value| visible::line(v.as_str().unwrap_or("-"));
        let url = format!(
            "{}://{}{}",
            d["scheme"].as_str().unwrap_or("https"),
            text(&d["host"]),
            one_line(&text(&d["target"]), 120)
        );
        let decision = match d["rule"].as_str() {
            Some(r) => format!("{} ({})", text(&d["decision"]), visible::line(r)),
            None => text(&d["decision"]),
        };
        let (status, duration, note) = match responses.get(&number) {
            Some(r) => {
                let mut note = Vec::new();
                if let Some(m) = r["masked"].as_u64() {
                    note.push(format!("{m} masked"));
                }
                if let Some(reason) = r["refused"].as_str() {
                    note.push(format!("refused: {}", visible::line(reason)));
                }
                if let Some(end) = r["end"].as_str().filter(|e| *e != "complete") {
                    note.push(end.to_string());
                }
                (
                    r["status"].as_u64().map_or("-".into(), |s| s.to_string()),
                    &r["duration_ms"],
                    note.join(", "),
                )
            }
            None if d["decision"] == "deny" => ("403".into(), &d["duration_ms"], String::new()),
            None => ("-".into(), &d["duration_ms"], String::new()),
        };
        rows.push(vec![
            format!("#{number}"),
            short_time(&e.at),
            text(&d["method"]),
            url,
            decision,
            status,
            duration
                .as_f64()
                .map_or("-".into(), |ms| format!("{ms:.1} ms")),
            note,
        ]);
    }
    render(
        &[
            "#", "AT", "METHOD", "URL", "DECISION", "STATUS", "DURATION", "NOTE",
        ],
        &rows,
    )
}

/// What a job may open sockets in, from the daemon's guard state.
fn socket_families(guard: &str) -> String {
    match guard {
        "active" => "inet (TCP, UDP), unix, netlink".to_string(),
        "" => "unknown (older daemon)".to_string(),
        other => format!("not restricted beyond inet: {other}"),
    }
}

fn recording(r: &RecordingStatus) -> String {
    let free = r
        .free_bytes
        .map(|b| format!(", {} free", bytes(b)))
        .unwrap_or_default();
    if let Some(f) = &r.health.journal_failing {
        return format!(
            "FAILING since {}: {} (new sessions, statements and commands are refused){free}",
            f.since, f.error
        );
    }
    if let Some(f) = &r.health.apply_failing {
        return format!(
            "journal ok; folding into SQLite fails since {}: {} ({} records wait in the journal){free}",
            f.since, f.error, r.health.unapplied
        );
    }
    format!("ok{free}")
}

fn netns_status(c: &crate::control::ContainersStatus) -> String {
    let listening = format!("listening in {}", c.netns_listeners);
    match &c.netns_error {
        Some(e) => format!("{listening}; last failure: {e}"),
        None => listening,
    }
}

pub fn status(s: &Status) -> String {
    let mut out = fields(&[
        ("gateway", format!("{} (pid {})", s.version, s.pid)),
        ("mode", s.mode.clone()),
        ("listen", s.listen.join(", ")),
        ("control socket", s.control_socket.clone()),
        ("state", s.state_dir.clone()),
        ("bpf pins", s.bpf_pin_dir.clone()),
        ("socket families", socket_families(&s.socket_family_guard)),
        ("cgroup v2", s.cgroup_root.clone()),
        ("started", s.started_at.clone()),
        ("active sessions", s.active_sessions.to_string()),
        ("recording", recording(&s.recording)),
        ("job namespaces", netns_status(&s.containers)),
        (
            "docker",
            s.containers.docker.as_ref().map_or_else(
                || "not served ([docker] is not configured)".to_string(),
                |d| format!("{} for the engine at {}", d.listen, d.engine),
            ),
        ),
    ]);
    if let Some(d) = &s.containers.docker {
        for line in &d.interception {
            out.push_str(&format!("  {line}\n"));
        }
    }
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

/// One line of at most `max` characters: hidden characters made visible (`\n` included), runs
/// of spaces and tabs as one space; a cut says how much is missing.
fn one_line(s: &str, max: usize) -> String {
    let shown = visible::line(&s.replace('\t', " "));
    let mut flat = String::with_capacity(shown.len());
    for word in shown.split(' ').filter(|w| !w.is_empty()) {
        if !flat.is_empty() {
            flat.push(' ');
        }
        flat.push_str(word);
    }
    let n = flat.chars().count();
    if n > max {
        let kept: String = flat.chars().take(max).collect();
        format!("{kept}… (+{} chars)", n - max)
    } else {
        flat
    }
}

/// 600 → "10m", 86400 → "24h", 90 → "1m30s".
pub fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (v, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// What one vote said: "approved by root for 24h", "denied by bob: reason".
fn vote_line(v: &crate::approval::model::Vote) -> String {
    let who = &v.display;
    let said = if v.approve {
        match v.for_seconds {
            Some(s) => format!("approved by {who} for {}", duration(s)),
            None => format!("approved by {who} once"),
        }
    } else {
        match &v.reason {
            Some(r) => format!("denied by {who}: {r}"),
            None => format!("denied by {who}"),
        }
    };
    match &v.person {
        Some(p) if p != who => format!("{said} [person {p}]"),
        _ => said,
    }
}

/// What a standing approval of this request would let through without asking.
fn grant_scope(a: &ApprovalView) -> String {
    format!(
        "rule {}, identity {}{}, target {}",
        a.rule,
        a.requester.subject,
        a.requester
            .issuer
            .as_deref()
            .map(|i| format!(" ({i})"))
            .unwrap_or_default(),
        a.target
    )
}

pub fn approvals(list: &[ApprovalView]) -> String {
    if list.is_empty() {
        return "no approval requests\n".to_string();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let approvals = a.votes.iter().filter(|v| v.approve).count();
            let process = &a.detail["process"];
            let pid = process["pid"].as_u64().map_or_else(
                || "-".into(),
                |p| {
                    if process["verified"].as_bool() == Some(true) {
                        p.to_string()
                    } else {
                        format!("{p} (unverified)")
                    }
                },
            );
            let params = a.detail["parameters"].as_array().map_or(0, Vec::len);
            let mut op = one_line(&a.operation, 60);
            if params > 0 {
                op.push_str(&format!(
                    " [{params} parameter{}]",
                    if params == 1 { "" } else { "s" }
                ));
            }
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
                op,
            ]
        })
        .collect();
    let mut out = render(
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
    );
    out.push_str("\nread a request in full before deciding: gateway approvals show ID\n");
    out
}

/// One request in full: the whole operation and its parameters, who asked from which process
/// (marked when it could not be verified), every vote and what a decision would grant.
pub fn approval(a: &ApprovalView) -> String {
    let p = &a.detail["process"];
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let mut pairs = vec![
        ("request", a.id.clone()),
        (
            "status",
            match a.status {
                ApprovalStatus::Pending => format!("pending until {}", a.deadline),
                other => format!(
                    "{} at {}{}",
                    other.as_str(),
                    a.decided_at.as_deref().unwrap_or("-"),
                    a.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
            },
        ),
        ("kind", a.kind.clone()),
        ("target", a.target.clone()),
        (
            "rule",
            format!(
                "{} (approvers: {}; quorum {})",
                a.rule,
                a.approvers.join(", "),
                a.quorum
            ),
        ),
        (
            "identity",
            format!(
                "{}{}{}",
                a.requester.subject,
                a.requester
                    .issuer
                    .as_deref()
                    .map(|i| format!(" (issuer {i})"))
                    .unwrap_or_else(
                        || " (unauthenticated: shared by every job without a token)".into()
                    ),
                a.requester
                    .email
                    .as_deref()
                    .map(|e| format!(", email {e}"))
                    .unwrap_or_default()
            ),
        ),
    ];
    if let Some(by) = a.detail["started_by"].as_array() {
        pairs.push((
            "started by",
            by.iter().map(s).collect::<Vec<_>>().join(", "),
        ));
    }
    pairs.push(("job", s(&a.detail["job_id"])));
    pairs.push((
        "session",
        a.session_id.map_or_else(|| "-".into(), |i| i.to_string()),
    ));
    if p.is_object() {
        pairs.push((
            "process",
            format!(
                "{} (pid {}, uid {}) — {}",
                s(&p["comm"]),
                s(&p["pid"]),
                s(&p["uid"]),
                if p["verified"].as_bool() == Some(true) {
                    "verified: read from /proc while the process ran"
                } else {
                    "UNVERIFIED: as captured at connect (the process exited, its pid was reused, or it began running another program)"
                }
            ),
        ));
        pairs.push(("exe", s(&p["exe"])));
        let cmdline = p["cmdline"]
            .as_array()
            .map(|args| {
                args.iter()
                    .map(|a| {
                        let a = s(a);
                        if a.is_empty() || a.contains([' ', '\'', '"']) {
                            format!("{a:?}")
                        } else {
                            a
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "-".into());
        pairs.push(("cmdline", cmdline));
    }
    if let Some(d) = a.detail["destination"].as_str() {
        pairs.push(("destination", d.to_string()));
    }
    pairs.push(("requested", a.created_at.clone()));
    let votes: Vec<String> = a.votes.iter().map(vote_line).collect();
    pairs.push((
        "votes",
        if votes.is_empty() {
            "none yet".into()
        } else {
            votes.join("; ")
        },
    ));
    pairs.push((
        "standing",
        match (a.status, a.grant_seconds) {
            (ApprovalStatus::Approved, Some(g)) => format!(
                "granted for {}: {} pass without asking",
                duration(g),
                grant_scope(a)
            ),
            (ApprovalStatus::Pending, _) if a.requester.issuer.is_none() => {
                "none possible (unauthenticated)".into()
            }
            (ApprovalStatus::Pending, _) => format!(
                "only if every approving vote asks for one (approve --for), for the shortest; scope: {}",
                grant_scope(a)
            ),
            _ => "none".into(),
        },
    ));
    let mut out = fields(&pairs);
    if let Some(params) = a.detail["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("\nparameters\n");
        for (i, v) in params.iter().enumerate() {
            out.push_str(&format!(
                "  ${}  {}\n",
                i + 1,
                visible::line(&v.to_string())
            ));
        }
    }
    out.push_str("\noperation (hidden characters shown as \\x.. and \\u{..})\n");
    for line in visible::text(&a.operation).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub fn approval_decided(a: &ApprovalView) -> String {
    let approvals = a.votes.iter().filter(|v| v.approve).count();
    let head = match a.status {
        ApprovalStatus::Pending => {
            let asked = a
                .votes
                .last()
                .and_then(|v| v.for_seconds)
                .map(|s| {
                    format!(
                        "; a standing approval ({}) needs every approving vote to ask for one",
                        duration(s)
                    )
                })
                .unwrap_or_default();
            format!(
                "{}: approval recorded ({approvals} of {} needed{asked})",
                a.id, a.quorum
            )
        }
        ApprovalStatus::Approved => match a.grant_seconds {
            Some(s) => format!(
                "{}: approved for {} ({s}s): {} pass without asking until it ends",
                a.id,
                duration(s),
                grant_scope(a)
            ),
            None => format!("{}: approved once", a.id),
        },
        other => format!("{}: {}", a.id, other.as_str()),
    };
    format!(
        "{}\n  {}",
        visible::line(&head),
        one_line(&a.operation, 200)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_shows_what_it_cuts_and_hides_nothing() {
        assert_eq!(one_line("a  \t b\nc", 80), "a b\\nc");
        assert_eq!(one_line("x\u{85}y\u{2028}z", 80), "x\\u{85}y\\u{2028}z");
        assert_eq!(
            one_line(&"a".repeat(70), 60),
            format!("{}… (+10 chars)", "a".repeat(60))
        );
        assert_eq!(duration(600), "10m");
        assert_eq!(duration(86400), "24h");
        assert_eq!(duration(90), "1m30s");
    }
}
