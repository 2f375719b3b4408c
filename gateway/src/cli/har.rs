//! `gateway sessions export ID --format har`: the requests of an HTTP session as HAR 1.2, for
//! browser developer tools and HAR viewers. Built from the recording only: headers as recorded
//! (credential headers and cookies as their length), bodies as their recorded size and type
//! (response bodies were recorded masked; HAR carries no body text here).

use std::{collections::BTreeMap, io::Write};

use serde_json::{Value, json};

use crate::record::{EventKind, SessionRecord};

#[derive(Debug, thiserror::Error)]
pub enum HarError {
    #[error("session {0} is not an HTTP session: it has no requests to export as HAR")]
    NotHttp(i64),
    #[error("writing: {0}")]
    Write(std::io::Error),
}

/// Recorded headers (`name: value` or `name: [values]`) as HAR's list of pairs.
fn header_list(recorded: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(map) = recorded.as_object() {
        for (name, value) in map {
            let values = match value {
                Value::Array(list) => list.clone(),
                other => vec![other.clone()],
            };
            for v in values {
                out.push(json!({ "name": name, "value": v.as_str().unwrap_or_default() }));
            }
        }
    }
    out
}

fn header<'a>(recorded: &'a Value, name: &str) -> Option<&'a str> {
    match &recorded[name] {
        Value::String(s) => Some(s),
        Value::Array(list) => list.first().and_then(Value::as_str),
        _ => None,
    }
}

/// `HTTP/1.1` as recorded (`HTTP/2.0` for HTTP/2), as HAR writes it.
fn http_version(recorded: &Value) -> String {
    match recorded.as_str() {
        Some("HTTP/2.0") => "HTTP/2".into(),
        Some(v) => v.to_string(),
        None => "HTTP/1.1".into(),
    }
}

fn status_text(status: u64) -> &'static str {
    u16::try_from(status)
        .ok()
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// The HAR document of a session.
pub fn har(session: &SessionRecord) -> Result<Value, HarError> {
    let mut requests = Vec::new();
    let mut responses: BTreeMap<u64, &Value> = BTreeMap::new();
    for e in &session.events {
        match e.event_kind() {
            Some(EventKind::HttpRequest) => requests.push(e),
            Some(EventKind::HttpResponse) => {
                if let Some(n) = e.detail["request"].as_u64() {
                    responses.insert(n, &e.detail);
                }
            }
            _ => {}
        }
    }
    if requests.is_empty() && session.summary.protocol.as_deref() != Some("http") {
        return Err(HarError::NotHttp(session.summary.id));
    }
    let entries: Vec<Value> = requests
        .iter()
        .map(|e| {
            let d = &e.detail;
            let number = d["request"].as_u64().unwrap_or_default();
            let version = http_version(&d["version"]);
            let scheme = d["scheme"].as_str().unwrap_or("https");
            let url = format!(
                "{scheme}://{}{}",
                d["authority"]
                    .as_str()
                    .or(d["host"].as_str())
                    .unwrap_or_default(),
                d["target"].as_str().unwrap_or_default()
            );
            let query: Vec<Value> = d["query"]
                .as_array()
                .map(|q| {
                    q.iter()
                        .map(|p| json!({ "name": p[0].as_str().unwrap_or_default(), "value": p[1].as_str().unwrap_or_default() }))
                        .collect()
                })
                .unwrap_or_default();
            let started = d["started_at"].as_str().unwrap_or(&e.at).to_string();
            let request = json!({
                "method": d["method"],
                "url": url,
                "httpVersion": version,
                "cookies": [],
                "headers": header_list(&d["headers"]),
                "queryString": query,
                "headersSize": -1,
                "bodySize": d["body_bytes"].as_i64().unwrap_or(-1),
            });
            let (response, time) = match responses.get(&number) {
                Some(r) => {
                    let status = r["status"].as_u64().unwrap_or_default();
                    let mime = header(&r["headers"], "content-type").unwrap_or("");
                    let bytes = r["bytes"].as_i64().unwrap_or(-1);
                    let response = json!({
                        "status": status,
                        "statusText": status_text(status),
                        "httpVersion": version,
                        "cookies": [],
                        "headers": header_list(&r["headers"]),
                        "content": { "size": bytes.max(0), "mimeType": mime },
                        "redirectURL": header(&r["headers"], "location").unwrap_or(""),
                        "headersSize": -1,
                        "bodySize": bytes,
                    });
                    (response, r["duration_ms"].as_f64().unwrap_or(0.0))
                }
                None => {
                    // Answered by the gateway itself: a denial (403) or a refusal.
                    let status: u64 = if d["decision"] == "deny" { 403 } else { 0 };
                    let response = json!({
                        "status": status,
                        "statusText": status_text(status),
                        "httpVersion": version,
                        "cookies": [],
                        "headers": [],
                        "content": { "size": 0, "mimeType": "application/problem+json" },
                        "redirectURL": "",
                        "headersSize": -1,
                        "bodySize": -1,
                        "comment": format!("answered by the gateway: {}", d["decision"].as_str().unwrap_or("")),
                    });
                    (response, d["duration_ms"].as_f64().unwrap_or(0.0))
                }
            };
            json!({
                "startedDateTime": started,
                "time": time,
                "request": request,
                "response": response,
                "cache": {},
                "timings": { "send": 0, "wait": time, "receive": 0 },
                "comment": format!("request {number}, {}", d["decision"].as_str().unwrap_or("")),
            })
        })
        .collect();
    Ok(json!({
        "log": {
            "version": "1.2",
            "creator": { "name": "gateway", "version": env!("CARGO_PKG_VERSION") },
            "comment": format!("session {}", session.summary.id),
            "entries": entries,
        }
    }))
}

pub fn export_har(session: &SessionRecord, out: &mut impl Write) -> Result<(), HarError> {
    let doc = har(session)?;
    serde_json::to_writer_pretty(&mut *out, &doc)
        .map_err(|e| HarError::Write(std::io::Error::other(e)))?;
    writeln!(out).map_err(HarError::Write)?;
    out.flush().map_err(HarError::Write)
}
