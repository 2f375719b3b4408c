//! The approvals page: people sign in with OIDC (authorization code + PKCE), see pending requests
//! with their full context, approve or deny, and watch updates arrive live (server-sent events).
//!
//! Protections: the session cookie is HttpOnly and SameSite=Strict; every state-changing request
//! must carry the session's CSRF token in `X-CSRF-Token` and, when the browser sends one, an
//! `Origin` equal to the page's own; no CORS is ever granted. The eBPF programs refuse connects from
//! jobs to this listener in every mode. Only members of an approver group get a session (anyone
//! the issuer knows can authenticate), and they see only the requests of their groups. What any client can grow is bounded:
//! sign-ins in progress and sessions (the oldest make room), live-update streams (per session and
//! in all). Job-controlled text reaches the page with its hidden characters made visible.

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{self, Html, IntoResponse, Redirect, Response, sse},
    routing::{get, post},
};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::{
    Approvals,
    model::{Approver, Verdict},
    store::ApprovalView,
};
use crate::{
    config::WebConfig,
    identity::{Verifier, fetch::Fetcher},
    random, visible,
};

const SESSION_COOKIE: &str = "gw_session";
const LOGIN_COOKIE: &str = "gw_login";
const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
const LOGIN_LIFETIME: Duration = Duration::from_secs(600);
/// Sign-ins in progress (anyone can start one); beyond this the oldest is forgotten.
const MAX_LOGINS: usize = 1024;
/// Signed-in sessions; beyond this the oldest is signed out.
const MAX_SESSIONS: usize = 1024;
/// Live-update streams of one session (browser tabs), and of the page in all.
const MAX_STREAMS_PER_SESSION: usize = 4;
const MAX_STREAMS: usize = 32;
/// How often an idle stream is written to (a closed one is noticed, and its place freed, then).
const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("approvals page: cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("approvals page: {0}")]
    Setup(String),
}

struct Login {
    state: String,
    nonce: String,
    verifier: String,
    since: Instant,
}

struct Session {
    approver: Approver,
    csrf: String,
    since: Instant,
}

struct Endpoints {
    authorization: String,
    token: String,
}

struct Web {
    approvals: Approvals,
    config: WebConfig,
    client_secret: Option<String>,
    fetcher: Fetcher,
    verifier: Verifier,
    endpoints: tokio::sync::OnceCell<Endpoints>,
    logins: Mutex<HashMap<String, Login>>,
    sessions: Mutex<HashMap<String, Session>>,
    streams: Arc<Mutex<Streams>>,
    secure_cookies: bool,
}

/// Open live-update streams, in all and per session.
#[derive(Default)]
struct Streams {
    total: usize,
    per_session: HashMap<String, usize>,
}

/// A place among the open streams, given back when the stream ends.
struct StreamPlace {
    streams: Arc<Mutex<Streams>>,
    session: String,
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        let mut s = self.streams.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_session.get_mut(&self.session) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_session.remove(&self.session);
            }
        }
    }
}

/// Inserts into a map that holds at most `max` entries: the oldest (`since`) make room.
fn insert_bounded<V>(
    map: &mut HashMap<String, V>,
    key: String,
    value: V,
    max: usize,
    since: impl Fn(&V) -> Instant,
) {
    while map.len() >= max.max(1) {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| since(v))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
    map.insert(key, value);
}

fn no_randomness(e: random::RandomError) -> Response {
    tracing::error!(error = %e, "approvals page: no randomness for a sign-in");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("sign-in is unavailable: {e}"),
    )
        .into_response()
}

/// A request as the page shows it: every string with its hidden characters made visible; the
/// operation keeps its line breaks.
fn for_people(view: &ApprovalView) -> serde_json::Value {
    let mut v = serde_json::to_value(view).unwrap_or_default();
    visible::json(&mut v);
    v["operation"] = visible::text(&view.operation).into();
    v
}

fn pkce_challenge(verifier: &str) -> String {
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Binds the page's listener (errors surface at start) and returns the server to run.
pub async fn bind(
    config: WebConfig,
    approvals: Approvals,
) -> Result<(tokio::net::TcpListener, Router), WebError> {
    let client_secret = match &config.client_secret_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| WebError::Setup(format!("client_secret_file {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let issuer =
        crate::config::login_issuer(&config.issuer, &config.client_id, config.ca_file.clone());
    let fetcher =
        Fetcher::new(issuer.ca_file.as_deref(), issuer.fetch_timeout).map_err(WebError::Setup)?;
    let verifier =
        Verifier::new(std::slice::from_ref(&issuer)).map_err(|e| WebError::Setup(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| WebError::Listen {
            addr: config.listen,
            source,
        })?;
    let web = Arc::new(Web {
        secure_cookies: config.public_url.starts_with("https://"),
        approvals,
        config,
        client_secret,
        fetcher,
        verifier,
        endpoints: tokio::sync::OnceCell::new(),
        logins: Mutex::default(),
        sessions: Mutex::default(),
        streams: Arc::default(),
    });
    let router = Router::new()
        .route("/", get(page))
        .route("/login", get(login))
        .route("/callback", get(callback))
        .route("/logout", post(logout))
        .route("/api/approvals", get(list))
        .route("/api/events", get(events))
        .route("/api/approvals/{id}/approve", post(approve))
        .route("/api/approvals/{id}/deny", post(deny))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(web);
    Ok((listener, router))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "approvals page stopped");
    }
}

impl Web {
    fn session(&self, headers: &HeaderMap) -> Option<(Approver, String)> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| s.since.elapsed() < SESSION_LIFETIME);
        sessions
            .get(&id)
            .map(|s| (s.approver.clone(), s.csrf.clone()))
    }

    fn cookie_header(&self, name: &str, value: &str, same_site: &str, max_age: u64) -> String {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        format!("{name}={value}; Path=/; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}")
    }

    async fn endpoints(&self) -> Result<&Endpoints, String> {
        self.endpoints
            .get_or_try_init(|| async {
                #[derive(Deserialize)]
                struct Doc {
                    issuer: String,
                    authorization_endpoint: String,
                    token_endpoint: String,
                }
                let url = format!("{}/.well-known/openid-configuration", self.config.issuer);
                let doc: Doc = self
                    .fetcher
                    .get_json(&url, "discovery document")
                    .await
                    .map_err(|e| e.to_string())?;
                if doc.issuer.trim_end_matches('/') != self.config.issuer {
                    return Err(format!("discovery document names issuer {:?}", doc.issuer));
                }
                Ok(Endpoints {
                    authorization: doc.authorization_endpoint,
                    token: doc.token_endpoint,
                })
            })
            .await
    }

    /// A state-changing request: signed in, the session's CSRF token, and no foreign Origin.
    fn authorize_change(&self, headers: &HeaderMap) -> Result<Approver, Box<Response>> {
        let refuse = |status: StatusCode, m: &str| {
            Box::new((status, Json(json!({ "error": m }))).into_response())
        };
        let forbidden = |m: &str| refuse(StatusCode::FORBIDDEN, m);
        let Some((approver, csrf)) = self.session(headers) else {
            return Err(refuse(StatusCode::UNAUTHORIZED, "sign in first"));
        };
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
            && origin != origin_of(&self.config.public_url)
        {
            tracing::warn!(%origin, "approvals page: cross-origin request refused");
            return Err(forbidden("cross-origin request refused"));
        }
        let token = headers
            .get("x-csrf-token")
            .and_then(|t| t.to_str().ok())
            .unwrap_or("");
        if token.is_empty() || !constant_time_eq(token.as_bytes(), csrf.as_bytes()) {
            tracing::warn!(approver = %approver.display, "approvals page: missing or wrong CSRF token");
            return Err(forbidden("missing or wrong CSRF token"));
        }
        Ok(approver)
    }
}

fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..]
        .find('/')
        .map_or(url, |i| &url[..after_scheme + i])
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let (user, csrf) = match web.session(&headers) {
        Some((a, csrf)) => (Some(a), csrf),
        None => (None, String::new()),
    };
    let who = user
        .as_ref()
        .map_or_else(String::new, |a| html_escape(&a.display));
    let groups = user
        .as_ref()
        .map_or_else(String::new, |a| html_escape(&a.groups.join(", ")));
    let body = PAGE
        .replace(
            "{{SIGNED_IN}}",
            if user.is_some() { "true" } else { "false" },
        )
        .replace("{{WHO}}", &who)
        .replace("{{GROUPS}}", &groups)
        .replace("{{CSRF}}", &csrf);
    let mut response = Html(body).into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, "no-store".parse().expect("header"));
    h.insert("x-frame-options", "DENY".parse().expect("header"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"
            .parse()
            .expect("header"),
    );
    response
}

async fn login(State(web): State<Arc<Web>>) -> Response {
    let endpoints = match web.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("the sign-in provider is unavailable: {e}"),
            )
                .into_response();
        }
    };
    let tokens = (|| {
        Ok((
            random::token()?,
            random::token()?,
            random::token()?,
            random::token()?,
        ))
    })();
    let (id, state, nonce, verifier) = match tokens {
        Ok(t) => t,
        Err(e) => return no_randomness(e),
    };
    let redirect_uri = format!("{}/callback", web.config.public_url);
    let url = format!(
        "{}?response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}&nonce={nonce}&code_challenge={}&code_challenge_method=S256",
        endpoints.authorization,
        urlencode(&web.config.client_id),
        urlencode(&redirect_uri),
        urlencode("openid email profile"),
        pkce_challenge(&verifier),
    );
    {
        let mut logins = web.logins.lock();
        logins.retain(|_, l| l.since.elapsed() < LOGIN_LIFETIME);
        let login = Login {
            state,
            nonce,
            verifier,
            since: Instant::now(),
        };
        insert_bounded(&mut logins, id.clone(), login, MAX_LOGINS, |l| l.since);
    }
    // Lax: the issuer sends the browser back with a top-level GET, which Strict would strip.
    let set = web.cookie_header(LOGIN_COOKIE, &id, "Lax", LOGIN_LIFETIME.as_secs());
    ([(header::SET_COOKIE, set)], Redirect::to(&url)).into_response()
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn callback(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    let fail = |status: StatusCode, m: String| {
        tracing::warn!("approvals page sign-in failed: {m}");
        (status, format!("sign-in failed: {m}")).into_response()
    };
    if let Some(e) = q.error {
        return fail(StatusCode::UNAUTHORIZED, format!("the provider said {e}"));
    }
    let login = cookie(&headers, LOGIN_COOKIE).and_then(|id| web.logins.lock().remove(&id));
    let Some(login) = login.filter(|l| l.since.elapsed() < LOGIN_LIFETIME) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "no sign-in in progress (start again)".into(),
        );
    };
    if q.state.as_deref() != Some(login.state.as_str()) {
        return fail(StatusCode::BAD_REQUEST, "state mismatch".into());
    }
    let Some(code) = q.code else {
        return fail(StatusCode::BAD_REQUEST, "no code".into());
    };
    let endpoints = match web.endpoints().await {
        Ok(e) => e,
        Err(e) => return fail(StatusCode::BAD_GATEWAY, e),
    };
    #[derive(Deserialize)]
    struct Tokens {
        id_token: String,
    }
    let redirect_uri = format!("{}/callback", web.config.public_url);
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_verifier", login.verifier.as_str()),
    ];
    let auth = match &web.client_secret {
        Some(secret) => Some((web.config.client_id.as_str(), secret.as_str())),
        None => {
            form.push(("client_id", web.config.client_id.as_str()));
            None
        }
    };
    let tokens: Tokens = match web
        .fetcher
        .post_form_json(&endpoints.token, &form, auth, "token response")
        .await
    {
        Ok(t) => t,
        Err(e) => return fail(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    let verified = match web.verifier.verify(&tokens.id_token).await {
        Ok(v) => v,
        Err(e) => return fail(StatusCode::UNAUTHORIZED, e.to_string()),
    };
    if verified.identity.claim_values("nonce").first() != Some(&login.nonce) {
        return fail(StatusCode::UNAUTHORIZED, "nonce mismatch".into());
    }
    let approver = web.approvals.oidc_approver(&verified.identity);
    // No session for someone who may see nothing: the provider's other accounts cannot fill the
    // session table and push approvers out.
    if approver.groups.is_empty() {
        return fail(
            StatusCode::FORBIDDEN,
            format!(
                "{} is in no approver group; the approvals page is for approvers only",
                approver.display
            ),
        );
    }
    tracing::info!(approver = %approver.display, groups = ?approver.groups, "signed in to the approvals page");
    let (id, csrf) = match random::token().and_then(|id| Ok((id, random::token()?))) {
        Ok(t) => t,
        Err(e) => return no_randomness(e),
    };
    {
        let mut sessions = web.sessions.lock();
        sessions.retain(|_, s| s.since.elapsed() < SESSION_LIFETIME);
        let session = Session {
            approver,
            csrf,
            since: Instant::now(),
        };
        insert_bounded(&mut sessions, id.clone(), session, MAX_SESSIONS, |s| {
            s.since
        });
    }
    let set = web.cookie_header(SESSION_COOKIE, &id, "Strict", SESSION_LIFETIME.as_secs());
    let clear = web.cookie_header(LOGIN_COOKIE, "", "Lax", 0);
    // A same-site page load after a cross-site redirect: serve a tiny page that navigates, so that
    // the Strict session cookie is sent on the next request.
    let html = "<!doctype html><meta http-equiv=\"refresh\" content=\"0; url=/\"><a href=\"/\">continue</a>";
    // AppendHeaders: a plain header array would keep only the last Set-Cookie.
    (
        response::AppendHeaders([(header::SET_COOKIE, set), (header::SET_COOKIE, clear)]),
        Html(html),
    )
        .into_response()
}

async fn logout(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if web.authorize_change(&headers).is_ok()
        && let Some(id) = cookie(&headers, SESSION_COOKIE)
    {
        web.sessions.lock().remove(&id);
    }
    let clear = web.cookie_header(SESSION_COOKIE, "", "Strict", 0);
    ([(header::SET_COOKIE, clear)], Redirect::to("/")).into_response()
}

/// The signed-in approver, or the answer for someone who may not see requests.
fn approver_only(web: &Web, headers: &HeaderMap) -> Result<Approver, Box<Response>> {
    let refuse = |status: StatusCode, m: &str| {
        Box::new((status, Json(json!({ "error": m }))).into_response())
    };
    let Some((approver, _)) = web.session(headers) else {
        return Err(refuse(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    if approver.groups.is_empty() {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "you are not in any approver group; requests are shown to approvers only",
        ));
    }
    Ok(approver)
}

async fn list(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let approver = match approver_only(&web, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match web.approvals.list_for(&approver, 20).await {
        Ok(list) => Json(list.iter().map(for_people).collect::<Vec<_>>()).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

/// A place for one more live-update stream of `session`, or why not.
fn stream_place(
    streams: &Arc<Mutex<Streams>>,
    session: &str,
) -> Result<StreamPlace, (StatusCode, &'static str)> {
    {
        let mut s = streams.lock();
        if s.per_session.get(session).copied().unwrap_or(0) >= MAX_STREAMS_PER_SESSION {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                "too many live-update streams for this session; close another tab",
            ));
        }
        if s.total >= MAX_STREAMS {
            tracing::warn!(
                max = MAX_STREAMS,
                "approvals page: live-update streams full"
            );
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "too many live-update streams; reload later",
            ));
        }
        s.total += 1;
        *s.per_session.entry(session.to_string()).or_default() += 1;
    }
    Ok(StreamPlace {
        streams: streams.clone(),
        session: session.to_string(),
    })
}

async fn events(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Err(r) = approver_only(&web, &headers) {
        return *r;
    }
    let session = cookie(&headers, SESSION_COOKIE).unwrap_or_default();
    let place = match stream_place(&web.streams, &session) {
        Ok(p) => p,
        Err(refused) => return refused.into_response(),
    };
    let rx = web.approvals.subscribe();
    // The place lives as long as the stream: dropped when the client goes away.
    let stream = futures_util::stream::unfold((rx, place), |(mut rx, place)| async move {
        let event = match rx.recv().await {
            Ok(view) => sse::Event::default()
                .event("update")
                .data(json!({ "id": view.id, "status": view.status }).to_string()),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                sse::Event::default().event("update").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(event), (rx, place)))
    });
    sse::Sse::new(stream)
        .keep_alive(sse::KeepAlive::new().interval(STREAM_KEEP_ALIVE))
        .into_response()
}

#[derive(Deserialize, Default)]
struct Decision {
    /// Approve for this many seconds (a standing grant).
    for_seconds: Option<u64>,
    reason: Option<String>,
}

async fn approve(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<Decision>>,
) -> Response {
    let for_seconds = body.and_then(|b| b.0.for_seconds);
    decide(&web, &headers, &id, Verdict::Approve { for_seconds }).await
}

async fn deny(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<Decision>>,
) -> Response {
    let reason = body
        .and_then(|b| b.0.reason)
        .filter(|r| !r.trim().is_empty());
    decide(&web, &headers, &id, Verdict::Deny { reason }).await
}

async fn decide(web: &Web, headers: &HeaderMap, id: &str, verdict: Verdict) -> Response {
    let approver = match web.authorize_change(headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match web.approvals.decide(id, &approver, verdict).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const PAGE: &str = include_str!("page.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_cookies_and_encoding() {
        assert_eq!(
            origin_of("https://gw.example:8443/path"),
            "https://gw.example:8443"
        );
        assert_eq!(
            origin_of("http://127.0.0.1:15080"),
            "http://127.0.0.1:15080"
        );
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; gw_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
        assert_eq!(
            html_escape("<b>\"x\"</b>"),
            "&lt;b&gt;&quot;x&quot;&lt;/b&gt;"
        );
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"a", b"ab")
        );
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn bounded_maps_forget_the_oldest() {
        let start = Instant::now();
        let mut map = HashMap::new();
        for i in 0..10u64 {
            let at = start + Duration::from_secs(i);
            insert_bounded(&mut map, i.to_string(), at, 4, |t| *t);
            assert!(map.len() <= 4);
        }
        let mut kept: Vec<_> = map.keys().cloned().collect();
        kept.sort();
        assert_eq!(kept, ["6", "7", "8", "9"]);
    }

    #[test]
    fn stream_places_are_bounded_and_given_back() {
        let streams: Arc<Mutex<Streams>> = Arc::default();
        let take = |session: &str| stream_place(&streams, session).ok();
        let held: Vec<_> = (0..MAX_STREAMS_PER_SESSION)
            .map(|_| take("a").unwrap())
            .collect();
        assert!(take("a").is_none());
        let others: Vec<_> = (0..MAX_STREAMS)
            .map_while(|i| take(&format!("s{}", i / MAX_STREAMS_PER_SESSION)))
            .collect();
        assert_eq!(others.len(), MAX_STREAMS - MAX_STREAMS_PER_SESSION);
        assert!(take("late").is_none());
        drop((held, others));
        assert_eq!(streams.lock().total, 0);
        assert!(streams.lock().per_session.is_empty());
    }
}
