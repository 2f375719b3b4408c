//! One request, from the job to the upstream and back: read it (`request`), ask policy, hold it
//! for approval, record it before anything is forwarded, forward it with the target's credential,
//! and send the response back masked (`[[masking]]` rules of the target), with the credential's
//! echoes removed and its end recorded.

use std::{
    borrow::Cow,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Body, Counters, Services, Session,
    body::{self, Filters, ResponseBody},
    credential::{self, Injected},
    echo::EchoFilter,
    headers, problem,
    request::{self, HostRules, Reading, Refusal, WebSocket},
    rpc::{self, Calls},
    upstream::Upstream,
    websocket,
};
use crate::{
    approval::{ApprovalOutcome, ApprovalRequest, Approvals, Submission},
    config::HttpSettings,
    identity::Identity,
    mask::body::{ACCEPT_ENCODING, BodyLimits, BodyMasker, BodyRules, Unmaskable},
    policy::{Decision, HttpRequest, Policy},
    record::{EventKind, ProcessInfo, Store},
};

/// WebSockets one HTTP/2 connection may have open at once: each holds a connection of the
/// gateway's own to the upstream for as long as it lasts (an HTTP/1.1 connection carries one).
const MAX_WEBSOCKETS: usize = 16;

/// How long a request body may take to deliver the sample the gateway records before forwarding.
const SAMPLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A request's number in its session, and when it was received: as recorded (RFC 3339, ms) and
/// for measuring its duration.
struct Received {
    number: u64,
    at: String,
    instant: Instant,
}

/// Milliseconds since `from`, with microseconds.
fn millis_since(from: Instant) -> f64 {
    from.elapsed().as_micros() as f64 / 1000.0
}

/// What a session's requests need, owned: HTTP/2 streams are served on tasks of their own.
pub(super) struct Exchange {
    store: Store,
    policy: Arc<Policy>,
    approvals: Approvals,
    session_id: i64,
    target: String,
    settings: HttpSettings,
    identity: Identity,
    process: Option<ProcessInfo>,
    job_id: Option<String>,
    sni: Option<String>,
    port: u16,
    upstream: Upstream,
    credential: Option<Injected>,
    /// The body masking of the target's `[[masking]]` rules; `None` when none applies.
    masking: Option<Arc<BodyRules>>,
    counters: Counters,
    /// WebSocket relays of the session, which outlive the request that started them.
    pub(super) relays: TaskTracker,
    /// Room for WebSockets over HTTP/2 (`MAX_WEBSOCKETS`); a relay holds its permit.
    websockets: Arc<Semaphore>,
    shutdown: CancellationToken,
}

pub(super) struct Setup<'a> {
    pub services: &'a Services,
    pub session: &'a Session<'a>,
    pub sni: Option<String>,
    pub upstream: Upstream,
    pub counters: Counters,
}

impl Exchange {
    pub(super) fn new(setup: Setup<'_>) -> Result<Exchange, String> {
        let s = setup.session;
        let account = Policy::upstream_account(&s.target.credentials, s.identity);
        let credential =
            credential::load(&s.target.credentials, &account).map_err(|e| e.to_string())?;
        Ok(Exchange {
            store: setup.services.store.clone(),
            policy: Arc::clone(&setup.services.policy),
            approvals: setup.services.approvals.clone(),
            session_id: s.id,
            target: s.target.name.clone(),
            settings: s.target.http.clone(),
            identity: s.identity.clone(),
            process: s.process.cloned(),
            job_id: s.job_id.map(str::to_string),
            sni: setup.sni,
            port: s.dst.port(),
            upstream: setup.upstream,
            credential,
            masking: setup.services.body_rules.get(&s.target.name).cloned(),
            counters: setup.counters,
            relays: TaskTracker::new(),
            websockets: Arc::new(Semaphore::new(MAX_WEBSOCKETS)),
            shutdown: setup.services.shutdown.clone(),
        })
    }

    pub(super) async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        // A gRPC client reads a refusal only as a gRPC status.
        let grpc = problem::is_grpc(request.headers());
        let response = self.decide_and_forward(request).await;
        if grpc {
            problem::as_grpc_status(response).await
        } else {
            response
        }
    }

    async fn decide_and_forward(&self, request: Request<Incoming>) -> Response<Body> {
        let number = self.counters.requests.fetch_add(1, Ordering::Relaxed) + 1;
        // The recording's timings (and HAR's) count from here.
        let received = Received {
            number,
            at: crate::time::now(),
            instant: Instant::now(),
        };
        let rules = HostRules {
            hosts: &self.settings.hosts,
            sni: self.sni.as_deref(),
            port: self.port,
        };
        let protocol = request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .map(hyper::ext::Protocol::as_str);
        let reading = match request::read(
            request.method(),
            request.uri(),
            request.headers(),
            protocol,
            &rules,
        ) {
            Ok(r) => r,
            Err(refusal) => {
                return self.refuse(number, request.method(), request.uri(), refusal);
            }
        };
        // A WebSocket over HTTP/2 takes its room before anything else is done for it.
        let slot = if reading.websocket == Some(WebSocket::ExtendedConnect) {
            match Arc::clone(&self.websockets).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let refusal = Refusal {
                        status: StatusCode::TOO_MANY_REQUESTS,
                        title: "Too many WebSockets",
                        detail: format!(
                            "at most {MAX_WEBSOCKETS} WebSockets are open at once on one HTTP/2 connection"
                        ),
                    };
                    return self.refuse(number, request.method(), request.uri(), refusal);
                }
            }
        } else {
            None
        };
        let (parts, body) = request.into_parts();
        let mut op = HttpRequest {
            method: &reading.method,
            host: &reading.host,
            path: &reading.path,
            query: &reading.query,
            rpc: None,
        };
        // Rules about JSON-RPC messages need the whole body before policy can decide.
        let reads_rpc = self.policy.http_reads_rpc(&self.target, &op);
        let limit = if reads_rpc {
            rpc::MAX_BODY + 1
        } else {
            self.settings.body_sample
        };
        let mut sampled = match tokio::time::timeout(
            SAMPLE_TIMEOUT,
            body::sample(body, limit, Arc::clone(&self.counters.up)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return self.answer(
                    number,
                    StatusCode::BAD_REQUEST,
                    "Request body unreadable",
                    &format!("the request body could not be read: {e}"),
                    json!({}),
                );
            }
            Err(_) => {
                return self.answer(
                    number,
                    StatusCode::REQUEST_TIMEOUT,
                    "Request body too slow",
                    "the request body did not arrive in time",
                    json!({}),
                );
            }
        };
        let calls = if reads_rpc {
            match read_rpc(&parts, &sampled) {
                Ok(calls) => calls,
                Err(refusal) => return self.refuse(number, &parts.method, &parts.uri, refusal),
            }
        } else {
            None
        };
        let complete = sampled.complete && sampled.sample.len() <= self.settings.body_sample;
        sampled.sample.truncate(self.settings.body_sample);
        let shown = self.shown_sample(&parts.headers, &sampled.sample, complete);
        op.rpc = calls.as_ref().map(|c| c.messages.as_slice());
        let decision = self.policy.decide_http(&self.identity, &self.target, &op);
        let recorded = self.request_event(
            &received,
            &reading,
            &parts,
            &decision,
            &shown,
            calls.as_ref(),
        );
        match &decision {
            Decision::Deny { rule, reason } => {
                self.store
                    .note_event(self.session_id, EventKind::HttpRequest, recorded);
                tracing::info!(
                    session = self.session_id,
                    request = number,
                    rule = rule.as_deref().unwrap_or("-"),
                    "{} {} denied",
                    reading.method,
                    self.shown(&reading.path)
                );
                return self.answer(
                    number,
                    StatusCode::FORBIDDEN,
                    "Denied by gateway policy",
                    reason,
                    json!({ "rule": rule }),
                );
            }
            Decision::Allow { .. } => {}
            Decision::RequireApproval { rule } => {
                self.store
                    .note_event(self.session_id, EventKind::HttpRequest, recorded.clone());
                match self
                    .approve(rule, &reading, &parts, &shown, calls.as_ref())
                    .await
                {
                    Ok(by) => {
                        // Write-ahead: the approval is on record before the request leaves.
                        let approval =
                            json!({ "request": number, "rule": rule, "approved_by": by });
                        if self
                            .store
                            .append_event(self.session_id, EventKind::HttpApproval, approval)
                            .await
                            .is_err()
                        {
                            return self.unrecordable(number);
                        }
                        return self
                            .forward(number, &reading, parts, sampled.body, received, slot)
                            .await;
                    }
                    Err(reason) => {
                        let approval = json!({ "request": number, "rule": rule, "denied": reason });
                        self.store
                            .note_event(self.session_id, EventKind::HttpApproval, approval);
                        return self.answer(
                            number,
                            StatusCode::FORBIDDEN,
                            "Not approved",
                            &reason,
                            json!({ "rule": rule }),
                        );
                    }
                }
            }
        }
        // Write-ahead: nothing is forwarded that is not on record.
        if self
            .store
            .append_event(self.session_id, EventKind::HttpRequest, recorded)
            .await
            .is_err()
        {
            return self.unrecordable(number);
        }
        self.forward(number, &reading, parts, sampled.body, received, slot)
            .await
    }

    /// Asks people; `Ok(approver)` or `Err(why not)`.
    async fn approve(
        &self,
        rule: &str,
        reading: &Reading,
        parts: &http::request::Parts,
        sample: &Bytes,
        calls: Option<&Calls>,
    ) -> Result<String, String> {
        let mut operation = self
            .shown(&format!(
                "{} {}{}",
                reading.method, reading.host, reading.path_and_query
            ))
            .into_owned();
        // A tool call is shown as what it does: the tool and its arguments.
        for (message, arguments) in calls
            .iter()
            .flat_map(|c| c.messages.iter().zip(&c.arguments))
        {
            operation.push_str(&format!("\n{}", self.shown(&message.to_string())));
            if !arguments.is_null() {
                operation.push_str(&format!(" {}", self.shown_json(arguments.clone())));
            }
        }
        let request = ApprovalRequest {
            session_id: self.session_id,
            target: self.target.clone(),
            rule: rule.to_string(),
            identity: self.identity.clone(),
            operation: operation.clone(),
            kind: "http".into(),
            detail: json!({
                "method": reading.method,
                "host": self.shown(&reading.host),
                "path": self.shown(&reading.path),
                "query": self.shown_query(&reading.query),
                "headers": self.shown_headers(&parts.headers),
                "body_sample": String::from_utf8_lossy(sample),
                "rpc": calls.map(|c| self.shown_json(c.recorded())),
            }),
            process: self.shown_process(),
            job_id: self.job_id.clone(),
        };
        let outcome = match self.approvals.submit(&request).await {
            Submission::Decided(o) => o,
            Submission::Waiting(ticket) => {
                tracing::info!(session = self.session_id, approval = %ticket.id, "{operation} waits for approval: {}", ticket.how);
                // The job's client waits; if it goes away, hyper drops this future and with it
                // the ticket, which marks the request abandoned.
                ticket.wait().await
            }
        };
        match outcome {
            ApprovalOutcome::Approved { by } => Ok(by),
            ApprovalOutcome::Denied { reason } => Err(reason),
        }
    }

    /// What the recording and approvers see of a request body sample: masked as a response of
    /// the target would be for the job (the upstream still gets the body as the job sent it).
    fn shown_sample(&self, headers: &http::HeaderMap, sample: &Bytes, complete: bool) -> Bytes {
        let Some(rules) = &self.masking else {
            return sample.clone();
        };
        let text = |name: header::HeaderName| -> Result<Option<String>, ()> {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().map_err(|_| ()))
                .collect::<Result<_, _>>()?;
            Ok((!values.is_empty()).then(|| values.join(", ")))
        };
        let (Ok(content_type), Ok(coding)) =
            (text(header::CONTENT_TYPE), text(header::CONTENT_ENCODING))
        else {
            return Bytes::from_static(
                b"[not recorded: a Content-Type or Content-Encoding that is not text]",
            );
        };
        let mut shown =
            rules.mask_sample(content_type.as_deref(), coding.as_deref(), sample, complete);
        shown.truncate(self.settings.body_sample);
        shown.into()
    }

    /// What the recording and approvers see of JSON read from a request body (JSON-RPC calls,
    /// tool arguments): masked as a JSON response of the target would be, like the body sample
    /// it came from.
    fn shown_json(&self, value: serde_json::Value) -> serde_json::Value {
        let Some(rules) = &self.masking else {
            return value;
        };
        let Ok(text) = serde_json::to_vec(&value) else {
            return json!("[not recorded: not JSON]");
        };
        let masked = rules.mask_sample(Some("application/json"), None, &text, true);
        serde_json::from_slice(&masked).unwrap_or_else(|_| json!(String::from_utf8_lossy(&masked)))
    }

    /// What the recording, approvers, logs and the gateway's own answers show of text the job
    /// or the upstream wrote (a URL, a header, a reason quoting them): masked by the target's
    /// detectors, as typed and percent-decoded. The upstream still gets the request unchanged.
    fn shown<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match &self.masking {
            Some(rules) => rules.mask_str(text),
            None => Cow::Borrowed(text),
        }
    }

    /// The decoded query parameters, shown masked.
    fn shown_query(&self, query: &[(String, String)]) -> serde_json::Value {
        query
            .iter()
            .map(|(k, v)| json!([self.shown(k), self.shown(v)]))
            .collect()
    }

    /// The job's request headers as recorded: credentials as their length, the rest masked.
    fn shown_headers(&self, headers: &http::HeaderMap) -> serde_json::Value {
        headers::recorded(headers, self.credential_header(), self.masking.as_deref())
    }

    /// The process as approvers see it: its command lines (which may hold the URL) masked.
    fn shown_process(&self) -> Option<ProcessInfo> {
        let mut process = self.process.clone()?;
        process.mask_command_lines(|arg| self.shown(arg));
        Some(process)
    }

    fn credential_header(&self) -> Option<&http::HeaderName> {
        self.credential.as_ref().map(|c| &c.name)
    }

    fn request_event(
        &self,
        received: &Received,
        reading: &Reading,
        parts: &http::request::Parts,
        decision: &Decision,
        sample: &Bytes,
        calls: Option<&Calls>,
    ) -> serde_json::Value {
        let mut event = json!({
            "rpc": calls.map(|c| self.shown_json(c.recorded())),
            "request": received.number,
            "started_at": received.at,
            // From the request received to its decision.
            "duration_ms": millis_since(received.instant),
            "version": format!("{:?}", parts.version),
            "scheme": if self.settings.tls == crate::config::HttpTls::Terminate { "https" } else { "http" },
            "method": reading.method,
            "host": self.shown(&reading.host),
            "authority": self.shown(&reading.authority),
            "path": self.shown(&reading.path),
            "target": self.shown(&reading.path_and_query),
            "query": self.shown_query(&reading.query),
            "headers": self.shown_headers(&parts.headers),
            "body_sample": String::from_utf8_lossy(sample),
            "decision": decision.label(),
            "rule": decision.rule(),
            "reason": decision.reason().map(|r| self.shown(r)),
            "credential": self.credential.is_some(),
        });
        if reading.websocket == Some(WebSocket::ExtendedConnect) {
            // Sent as a CONNECT with :protocol, decided and forwarded as the GET above.
            event["extended_connect"] = json!(true);
        }
        event
    }

    /// Forwards an allowed request and streams the response back; `slot` is the room a
    /// WebSocket over HTTP/2 took.
    async fn forward(
        &self,
        number: u64,
        reading: &Reading,
        parts: http::request::Parts,
        body: Body,
        received: Received,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Response<Body> {
        let mut parts = parts;
        // The job's side of a WebSocket: hyper hands the connection (HTTP/1.1) or the stream
        // (HTTP/2) over after the 101 or 200.
        let client_upgrade = if reading.websocket.is_some() {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        let offered = headers::tokens(&parts.headers, &header::SEC_WEBSOCKET_PROTOCOL);
        // Over HTTP/1.1 the gateway answers the job's key itself (`request::read` let one through).
        let job_accept = (reading.websocket == Some(WebSocket::Upgrade))
            .then(|| parts.headers.get(header::SEC_WEBSOCKET_KEY))
            .flatten()
            .and_then(|k| HeaderValue::try_from(derive_accept_key(k.as_bytes())).ok());
        let mut headers = parts.headers;
        let trailers_wanted = headers::wants_trailers(&headers);
        headers::strip_hop_by_hop(&mut headers);
        if trailers_wanted {
            // gRPC servers require it; it says only that the client reads trailers.
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if reading.websocket.is_some() {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            // The relay reads and writes plain frames: no compression is negotiated.
            headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        }
        // The upstream answers a key of the gateway's own on either version (over HTTP/2 the job
        // sent none), so its 101 is checked whatever the job's client checks, and no answer to an
        // earlier or guessed key can open a WebSocket.
        let key = reading.websocket.is_some().then(generate_key);
        if let Some(key) = &key {
            if let Ok(v) = HeaderValue::from_str(key) {
                headers.insert(header::SEC_WEBSOCKET_KEY, v);
            }
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        headers.remove(header::HOST);
        if let Some(c) = &self.credential {
            headers.remove(&c.name);
            headers.insert(c.name.clone(), c.value.clone());
            // The echo filter reads the body as sent: ask for it unencoded.
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if self.masking.is_some() {
            // A byte range of the upstream's body could cut a value away from what identifies
            // it (its member name, the rest of a detector's match): the whole body is asked for
            // and masked. The masking decodes every coding it asks for (and the echo filter then
            // reads the decoded bytes), whatever codings the job would accept.
            headers.remove(header::RANGE);
            headers.remove(header::IF_RANGE);
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static(ACCEPT_ENCODING),
            );
        }
        let scheme = if self.upstream.is_tls() {
            "https"
        } else {
            "http"
        };
        let uri = match Uri::builder()
            .scheme(scheme)
            .authority(reading.authority.as_str())
            .path_and_query(reading.path_and_query.as_str())
            .build()
        {
            Ok(u) => u,
            Err(e) => {
                return self.answer(
                    number,
                    StatusCode::BAD_REQUEST,
                    "Request refused by the gateway",
                    &format!("the request target cannot be forwarded: {e}"),
                    json!({}),
                );
            }
        };
        let head = parts.method == http::Method::HEAD;
        let mut upstream_request = Request::new(body);
        *upstream_request.method_mut() = match reading.websocket {
            // The WebSocket's opening GET (RFC 6455), which the rules decided on.
            Some(WebSocket::ExtendedConnect) => http::Method::GET,
            _ => parts.method,
        };
        *upstream_request.uri_mut() = uri;
        *upstream_request.version_mut() = Version::HTTP_11;
        if let Ok(host) = HeaderValue::from_str(&reading.authority) {
            headers.insert(header::HOST, host);
        }
        *upstream_request.headers_mut() = headers;
        let sent = if reading.websocket.is_some() {
            self.upstream.send_upgrade(upstream_request).await
        } else {
            self.upstream.send(upstream_request).await
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(session = self.session_id, request = number, error = %e, "upstream failed");
                self.store.note_event(
                    self.session_id,
                    EventKind::UpstreamError,
                    json!({ "request": number, "error": self.shown(&e.to_string()) }),
                );
                return self.answer(
                    number,
                    StatusCode::BAD_GATEWAY,
                    "Upstream unavailable",
                    &e.to_string(),
                    json!({}),
                );
            }
        };
        if let Some(websocket) = reading.websocket
            && let Some(key) = key
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let handshake = Handshake {
                websocket,
                key,
                job_accept,
                offered,
                client_upgrade,
                slot,
            };
            return self.switch(number, response, handshake, received);
        }
        if reading.websocket == Some(WebSocket::ExtendedConnect) && response.status().is_success() {
            // A 2xx to the job's CONNECT would open a WebSocket the upstream never opened.
            let (parts, _) = response.into_parts();
            return self.refuse_upstream(
                number,
                &parts,
                "Upstream did not open the WebSocket",
                &format!(
                    "the upstream answered {} instead of opening the WebSocket",
                    parts.status
                ),
                &received,
            );
        }
        self.respond(number, head, response, received).await
    }

    /// The upstream accepted a WebSocket: once its answer to the gateway's key is checked, the
    /// job gets the 101 (HTTP/1.1, with the gateway's answer to the job's key) or the 200
    /// (HTTP/2), and both connections go to a relay of the session. The subprotocol the job is
    /// told is the one the upstream chose, one of those the job offered.
    fn switch(
        &self,
        number: u64,
        mut response: Response<Incoming>,
        handshake: Handshake,
        received: Received,
    ) -> Response<Body> {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        let secrets: &[Vec<u8>] = self.credential.as_ref().map_or(&[], |c| &c.secrets);
        let echoes = headers::redact_echoes(&mut parts.headers, secrets);
        let masked = self
            .masking
            .as_ref()
            .map(|rules| headers::mask(&mut parts.headers, rules));
        let refuse = |reason: &str| {
            self.refuse_upstream(number, &parts, "WebSocket not opened", reason, &received)
        };
        let Some(client_upgrade) = handshake.client_upgrade else {
            return refuse("the job's connection cannot be upgraded");
        };
        if parts.headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS) {
            return refuse(
                "the upstream negotiated a WebSocket extension the gateway did not offer",
            );
        }
        let upgrade = parts.headers.get(header::UPGRADE);
        if !upgrade.is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket")) {
            return refuse("the upstream switched to another protocol than websocket");
        }
        if !websocket::accept_answers(
            &handshake.key,
            parts.headers.get(header::SEC_WEBSOCKET_ACCEPT),
        ) {
            return refuse("the upstream's Sec-WebSocket-Accept does not answer the gateway's key");
        }
        let chosen = headers::tokens(&parts.headers, &header::SEC_WEBSOCKET_PROTOCOL);
        if chosen.len() > 1 {
            return refuse("the upstream chose more than one WebSocket subprotocol");
        }
        if !websocket::subprotocol_was_offered(&handshake.offered, &chosen) {
            return refuse("the upstream chose a WebSocket subprotocol the job did not offer");
        }
        let mut out = Response::new(body::empty());
        let headers = out.headers_mut();
        let status = match handshake.websocket {
            WebSocket::Upgrade => {
                let Some(accept) = handshake.job_accept else {
                    return refuse("the job's upgrade has no Sec-WebSocket-Key to answer");
                };
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
                StatusCode::SWITCHING_PROTOCOLS
            }
            // RFC 8441 §5: a 2xx opens the stream's WebSocket, no key is answered.
            WebSocket::ExtendedConnect => StatusCode::OK,
        };
        if let Some(v) = parts.headers.get(header::SEC_WEBSOCKET_PROTOCOL) {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v.clone());
        }
        *out.status_mut() = status;
        self.store.note_event(
            self.session_id,
            EventKind::HttpResponse,
            json!({
                "request": number,
                "status": status.as_u16(),
                "upstream_status": 101,
                "headers": headers::recorded(&parts.headers, None, None),
                "echoes_redacted": echoes,
                "masked": masked,
                "bytes": 0,
                "end": "upgraded",
                "started_at": received.at,
                "duration_ms": millis_since(received.instant),
            }),
        );
        let relay = websocket::Relay {
            store: self.store.clone(),
            session_id: self.session_id,
            request: number,
            sample_limit: self.settings.body_sample,
            counters: self.counters.clone(),
            shutdown: self.shutdown.clone(),
            masking: self.masking.clone(),
            _slot: handshake.slot,
        };
        self.relays
            .spawn(relay.run(client_upgrade, upstream_upgrade));
        out
    }

    /// The masker for a response, `None` when no masking reads it; [`Unmaskable`] when masking
    /// applies and the body cannot be masked.
    fn masker_for(
        &self,
        head: bool,
        transfer_coded: bool,
        parts: &http::response::Parts,
        body: &Incoming,
    ) -> Result<Option<BodyMasker>, Unmaskable> {
        let Some(rules) = &self.masking else {
            return Ok(None);
        };
        let status = parts.status;
        // Nothing to mask in a response without a body.
        if head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || http_body::Body::is_end_stream(body)
        {
            return Ok(None);
        }
        if transfer_coded {
            return Err(Unmaskable(
                "a transfer coding other than chunked is not decoded".into(),
            ));
        }
        if status == StatusCode::PARTIAL_CONTENT {
            return Err(Unmaskable(
                "a partial response (206) is a byte range of a body, which cannot be masked".into(),
            ));
        }
        let mut types = parts.headers.get_all(header::CONTENT_TYPE).iter();
        let content_type = match (types.next(), types.next()) {
            (None, _) => None,
            (Some(t), None) => Some(
                t.to_str()
                    .map_err(|_| Unmaskable("a Content-Type that is not text".into()))?,
            ),
            (Some(_), Some(_)) => {
                return Err(Unmaskable("more than one Content-Type".into()));
            }
        };
        // Several Content-Encoding headers are one list (RFC 9110 §5.3).
        let codings = parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(|v| {
                v.to_str()
                    .map_err(|_| Unmaskable("a Content-Encoding that is not text".into()))
            })
            .collect::<Result<Vec<_>, _>>()?
            .join(", ");
        let coding = (!codings.is_empty()).then_some(codings.as_str());
        BodyMasker::new(rules, content_type, coding, &BodyLimits::default())
    }

    async fn respond(
        &self,
        number: u64,
        head: bool,
        response: Response<Incoming>,
        received: Received,
    ) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        // hyper removes only `chunked`: any other transfer coding is still on the body's bytes.
        let transfer_coded = parts
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|c| !c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        headers::strip_hop_by_hop(&mut parts.headers);
        let secrets: &[Vec<u8>] = self.credential.as_ref().map_or(&[], |c| &c.secrets);
        let header_echoes = headers::redact_echoes(&mut parts.headers, secrets);
        // Headers are masked whatever becomes of the body (refused, empty, HEAD).
        let header_masked = self
            .masking
            .as_ref()
            .map(|rules| headers::mask(&mut parts.headers, rules));
        let status = parts.status;
        let masker = match self.masker_for(head, transfer_coded, &parts, &body) {
            Ok(m) => m,
            Err(unmaskable) => {
                return self.refuse_response(number, &parts, &unmaskable.to_string(), &received);
            }
        };
        if let Some(m) = &masker {
            let changes = m.header_changes();
            for name in &changes.remove {
                parts.headers.remove(*name);
            }
            if changes.weaken_etag
                && let Some(etag) = parts.headers.get(header::ETAG)
                && !etag.as_bytes().starts_with(b"W/")
                && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
            {
                parts.headers.insert(header::ETAG, weak);
            }
        }
        let masked = masker.is_some();
        let recorded_headers = headers::recorded(&parts.headers, None, None);
        let store = self.store.clone();
        let session_id = self.session_id;
        let (started_at, instant) = (received.at.clone(), received.instant);
        let on_end = Box::new(move |summary: body::Summary| {
            store.note_event(
                session_id,
                EventKind::HttpResponse,
                json!({
                    "request": number,
                    "status": status.as_u16(),
                    "headers": recorded_headers,
                    "end": summary.ending,
                    "bytes": summary.bytes,
                    "sha256": summary.sha256,
                    "echoes_redacted": summary.echoes_redacted + header_echoes,
                    "masked": match (summary.masked, header_masked) {
                        (None, None) => None,
                        (body, headers) => Some(body.unwrap_or(0) + headers.unwrap_or(0)),
                    },
                    "masking_error": summary.masking_error,
                    "body_sample": String::from_utf8_lossy(&summary.sample),
                    "started_at": started_at,
                    // From the request received to the response body's end.
                    "duration_ms": millis_since(instant),
                }),
            );
        });
        if masker.is_none() && http_body::Body::is_end_stream(&body) {
            // Nothing follows the headers (a gRPC trailers-only response among such): HTTP/2
            // ends the stream on the HEADERS frame, as the upstream did.
            on_end(body::Summary::empty());
            return Response::from_parts(parts, body::empty());
        }
        let mut body = ResponseBody::new(
            body,
            Filters {
                masker,
                echo: EchoFilter::new(secrets),
            },
            self.settings.body_sample,
            Arc::clone(&self.counters.down),
            on_end,
        );
        if masked {
            if let Err(e) = body.prefetch().await {
                return self.refuse_response(number, &parts, &e.to_string(), &received);
            }
            if let Some(len) = body.complete_length() {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        Response::from_parts(parts, body.boxed_unsync())
    }

    /// A response the masking cannot read: the job gets a refusal instead of its body, and the
    /// recording says why (the upstream's body is dropped unread).
    fn refuse_response(
        &self,
        number: u64,
        parts: &http::response::Parts,
        reason: &str,
        received: &Received,
    ) -> Response<Body> {
        self.refuse_upstream(number, parts, "Response cannot be masked", reason, received)
    }

    /// An upstream response the job does not get: a 502 instead, and the recording says why.
    fn refuse_upstream(
        &self,
        number: u64,
        parts: &http::response::Parts,
        title: &str,
        reason: &str,
        received: &Received,
    ) -> Response<Body> {
        tracing::info!(
            session = self.session_id,
            request = number,
            "response refused: {}",
            self.shown(reason)
        );
        self.store.note_event(
            self.session_id,
            EventKind::HttpResponse,
            json!({
                "request": number,
                "status": StatusCode::BAD_GATEWAY.as_u16(),
                "upstream_status": parts.status.as_u16(),
                "headers": headers::recorded(&parts.headers, None, None),
                "refused": self.shown(reason),
                "masking": self.masking.as_ref().map(|m| m.rules.clone()),
                "started_at": received.at,
                "duration_ms": millis_since(received.instant),
            }),
        );
        self.answer(number, StatusCode::BAD_GATEWAY, title, reason, json!({}))
    }

    /// A refusal before policy: recorded, answered with a problem document.
    fn refuse(
        &self,
        number: u64,
        method: &http::Method,
        uri: &Uri,
        refusal: Refusal,
    ) -> Response<Body> {
        tracing::info!(
            session = self.session_id,
            request = number,
            "refused: {}",
            self.shown(&refusal.detail)
        );
        self.store.note_event(
            self.session_id,
            EventKind::Refused,
            json!({
                "request": number,
                "method": method.as_str(),
                "target": self.shown(&uri.to_string()),
                "status": refusal.status.as_u16(),
                "reason": self.shown(&refusal.detail),
            }),
        );
        self.answer(
            number,
            refusal.status,
            refusal.title,
            &refusal.detail,
            json!({}),
        )
    }

    fn unrecordable(&self, number: u64) -> Response<Body> {
        self.answer(
            number,
            StatusCode::SERVICE_UNAVAILABLE,
            "Gateway cannot record",
            "the gateway cannot record this request, so it is not forwarded",
            json!({}),
        )
    }

    fn answer(
        &self,
        number: u64,
        status: StatusCode,
        title: &str,
        detail: &str,
        extra: serde_json::Value,
    ) -> Response<Body> {
        let mut extra = extra;
        if let Some(obj) = extra.as_object_mut() {
            obj.insert("target".into(), json!(self.target));
            obj.insert("session".into(), json!(self.session_id));
            obj.insert("request".into(), json!(number));
        }
        problem::response(status, title, &self.shown(detail), extra)
    }
}

/// What opening a WebSocket toward the job needs once the upstream switched protocols.
struct Handshake {
    websocket: WebSocket,
    /// The gateway's own `Sec-WebSocket-Key`, which the upstream's 101 must answer.
    key: String,
    /// HTTP/1.1: the `Sec-WebSocket-Accept` answering the job's own key, which the job gets.
    job_accept: Option<HeaderValue>,
    /// The subprotocols the job offered.
    offered: Vec<String>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    slot: Option<OwnedSemaphorePermit>,
}

/// The JSON-RPC messages of a POST body, for rules about them: the whole body, unencoded.
fn read_rpc(
    parts: &http::request::Parts,
    sampled: &body::Sampled,
) -> Result<Option<Calls>, Refusal> {
    if parts.headers.contains_key(header::CONTENT_ENCODING) {
        return Err(Refusal {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            title: "Request refused by the gateway",
            detail: "the target's rules are about JSON-RPC messages, which the gateway reads only in unencoded bodies".into(),
        });
    }
    if !sampled.complete {
        return Err(Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            title: "Request refused by the gateway",
            detail: format!(
                "the target's rules are about JSON-RPC messages, which the gateway reads in bodies of at most {} bytes",
                rpc::MAX_BODY
            ),
        });
    }
    rpc::read(&sampled.sample)
}
