//! GitLab Runner's docker executor through the gateway's socket (`[docker.gitlab]`).
//!
//! The runner (a host user outside every job) creates each job's containers itself, labelled
//! with the job (`com.gitlab.gitlab-runner.job.id`, `….project.id`) and, for the build and
//! helper containers, with every job variable in `Env`, the job's ID token among them. The
//! gateway passes the runner's requests on, except container creates: a labelled container
//! gets the job's own cgroup as its parent (`<cgroup_parent>/gitlab-job-<id>`, created and
//! attached unbound by the gateway), and a token in its `Env` binds that cgroup once it is
//! verified and names this very job and project. A token of another job, a second copy of the
//! variable, or a create without the job's labels is refused (and recorded). A job's cgroup
//! ends when the engine has no container of the job left.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::UnixStream;

use super::{
    Services, error,
    proxy::{cut, respond_with},
};
use crate::docker_engine::{self as engine, Body};
use crate::{
    config::GitlabSettings,
    dockerapi::{self, OperationKind},
    identity::{Identity, Verified},
    jobs::Job,
    lifecycle::JobControl,
    record::{EventKind, ProcessInfo, SessionEnd},
};

pub const JOB_ID_LABEL: &str = "com.gitlab.gitlab-runner.job.id";
pub const PROJECT_ID_LABEL: &str = "com.gitlab.gitlab-runner.project.id";
const TYPE_LABEL: &str = "com.gitlab.gitlab-runner.type";
/// A job's cgroup below `cgroup_parent`: this and the job id.
const CGROUP_PREFIX: &str = "gitlab-job-";
/// A create body the gateway reads, at most (every job variable is in it).
const MAX_CREATE: usize = 8 << 20;
/// How often the jobs whose containers are gone are looked for.
const CLEANUP_EVERY: Duration = Duration::from_secs(2);

/// What serving the runner uses.
pub struct Gitlab {
    pub settings: GitlabSettings,
    pub lifecycle: Arc<JobControl>,
    /// Held from a create's job lookup until the engine answered it, and by the cleanup: a job
    /// is never ended between making its cgroup and its container being there.
    pub lock: tokio::sync::Mutex<()>,
}

impl Gitlab {
    pub fn new(settings: GitlabSettings, lifecycle: Arc<JobControl>) -> Gitlab {
        Gitlab {
            settings,
            lifecycle,
            lock: Default::default(),
        }
    }

    /// The job's cgroup, relative to the hierarchy's root (no leading `/`).
    fn job_cgroup(&self, job_id: &str) -> String {
        format!("{}/{CGROUP_PREFIX}{job_id}", self.settings.cgroup_parent)
    }

    fn is_runner(&self, uid: u32) -> bool {
        self.settings.runner_uids.contains(&uid)
    }
}

/// Whether a caller outside every job is the runner.
pub(super) fn is_runner(services: &Services, uid: u32) -> bool {
    services.gitlab.as_ref().is_some_and(|g| g.is_runner(uid))
}

/// Serves a connection of the runner, recorded as a session of no job.
pub(super) async fn serve_runner(
    stream: UnixStream,
    services: Arc<Services>,
    process: Option<ProcessInfo>,
    started_at: String,
) {
    let session = services.socket_session(
        None,
        process,
        Some("GitLab runner ([docker.gitlab] runner_users)".into()),
        started_at,
    );
    let session = match services.store.insert_session(session).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot record a Docker session; refusing it");
            return super::refuse_all(stream, "the gateway cannot record sessions".into()).await;
        }
    };
    let s = services.clone();
    let service = service_fn(move |req| {
        let s = s.clone();
        async move { Ok::<_, Infallible>(request(req, &s, session).await) }
    });
    let serving = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        r = serving => if let Err(e) = r {
            tracing::debug!(error = %e, session, "runner's Docker connection ended");
        },
        () = services.shutdown.cancelled() => {}
    }
    services.store.end_session(session, SessionEnd::default());
}

/// What is recorded of one of the runner's requests.
fn detail(method: &str, path: &str) -> Map<String, Value> {
    let mut d = Map::new();
    d.insert("method".into(), json!(method));
    d.insert("path".into(), json!(cut(path, 1024)));
    d
}

async fn request(req: Request<Incoming>, services: &Services, session: i64) -> Response<Body> {
    let (method, sent) = super::method_and_target(&req);
    let sent = services.shown(&sent);
    let mut d = detail(&method, &sent);
    let create = match dockerapi::route(&method, req.uri().path()) {
        Ok(route) => route.kind == OperationKind::ContainerCreate,
        // A path the gateway does not know is passed on, unless the engine could take it for a
        // create (its mux is case-sensitive, but the runner is refused rather than guessed).
        Err(_) => might_be_create(req.uri().path()),
    };
    let answer = if create {
        d.insert("operation".into(), json!(OperationKind::ContainerCreate));
        create_container(req, services, session, &mut d).await
    } else {
        pass(req, services).await
    };
    let answer = answer.unwrap_or_else(|(status, why)| {
        d.insert("decision".into(), json!("deny"));
        d.insert("reason".into(), json!(why));
        tracing::info!(session, path = %sent, reason = %services.shown(&why), "GitLab runner's Docker request refused");
        error(status, &why)
    });
    let status = json!(answer.status().as_u16());
    if d.get("decision") == Some(&json!("allow")) {
        // A create, recorded before it was forwarded: its answer.
        services.store.note_event(
            session,
            EventKind::DockerResult,
            json!({ "status": status, "gitlab_job": d.get("gitlab_job") }),
        );
    } else {
        d.entry("decision").or_insert(json!("allow"));
        d.insert("status".into(), status);
        services.store.note_event(
            session,
            EventKind::DockerRequest,
            services.recorded(Value::Object(d)),
        );
    }
    answer
}

type Refused = (StatusCode, String);

/// Whether a path the gateway's router refused ends in `containers/create` once decoded.
fn might_be_create(path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    let parts: Vec<&str> = decoded.split('/').filter(|p| !p.is_empty()).collect();
    parts.ends_with(&["containers", "create"])
}

/// Passes a request of the runner on as it is (an attach or exec start is spliced through).
async fn pass(mut req: Request<Incoming>, services: &Services) -> Result<Response<Body>, Refused> {
    let upgrade = req
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut builder = Request::builder()
        .method(parts.method)
        .uri(path)
        .header(header::HOST, "docker");
    for (k, v) in &parts.headers {
        if !hop_by_hop(k.as_str()) && *k != header::HOST {
            builder = builder.header(k, v);
        }
    }
    if let Some(value) = parts
        .headers
        .get(header::UPGRADE)
        .filter(|_| upgrade.is_some())
    {
        builder = builder
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, value);
    }
    let req = builder
        .body(body.boxed())
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    send(req, upgrade, services).await
}

/// Sends to the engine; splices an upgraded connection.
async fn send(
    req: Request<Body>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    services: &Services,
) -> Result<Response<Body>, Refused> {
    let mut resp = services
        .engine
        .send(req)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    let status = resp.status();
    match upgrade {
        Some(client) if status == StatusCode::SWITCHING_PROTOCOLS => {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client, upstream) {
                    Ok((c, u)) => {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                            tracing::debug!(error = %e, "runner's Docker stream ended");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "runner's Docker upgrade failed"),
                }
            });
            let mut out = Response::builder().status(status);
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            out.body(engine::full(Bytes::new()))
                .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
        }
        _ => {
            let (parts, body) = resp.into_parts();
            Ok(respond_with(parts.status, &parts.headers, body.boxed()))
        }
    }
}

fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "te" | "trailer"
    )
}

/// What a create body says that the gateway acts on.
#[derive(Debug, PartialEq, Eq)]
pub struct RunnerCreate {
    pub job_id: String,
    pub project_id: String,
    /// `build`, `predefined` (helper), `service`, `wait`, `cache` …
    pub kind: String,
    /// The value of the token variable, if `Env` has it (once).
    pub token: Option<String>,
}

/// Reads the labels and the token of a create body, as dockerd reads them (field names match
/// ignoring ASCII case; a field given twice that way, or a non-ASCII name, is refused).
pub fn read_create(body: &Value, token_variable: &str) -> Result<RunnerCreate, String> {
    let top = body
        .as_object()
        .ok_or("the container configuration must be an object")?;
    let labels = match field(top, "Labels", "the container configuration")? {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("Labels must be an object".into()),
    };
    let label = |key: &str| -> Result<String, String> {
        match labels.get(key) {
            Some(Value::String(v)) if is_gitlab_id(v) => Ok(v.clone()),
            Some(v) => Err(format!("label {key} is {v}, not a GitLab id")),
            None => Err(format!(
                "a container of the GitLab runner must carry the label {key} (the job it belongs to)"
            )),
        }
    };
    let job_id = label(JOB_ID_LABEL)?;
    let project_id = label(PROJECT_ID_LABEL)?;
    let kind = labels
        .get(TYPE_LABEL)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let prefix = format!("{token_variable}=");
    let mut tokens = Vec::new();
    match field(top, "Env", "the container configuration")? {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for entry in list {
                let Value::String(entry) = entry else {
                    return Err("Env must be a list of strings".into());
                };
                if let Some(token) = entry.strip_prefix(&prefix) {
                    tokens.push(token.to_string());
                }
            }
        }
        Some(_) => return Err("Env must be a list of strings".into()),
    }
    if tokens.len() > 1 {
        return Err(format!(
            "{token_variable} is given {} times in the container's Env: which one the container sees is not what the gateway would bind",
            tokens.len()
        ));
    }
    Ok(RunnerCreate {
        job_id,
        project_id,
        kind,
        token: tokens.pop(),
    })
}

/// Sets `HostConfig.CgroupParent` (under whatever spelling of the names the body used).
pub fn set_cgroup_parent(body: &mut Value, parent: &str) -> Result<(), String> {
    let top = body
        .as_object_mut()
        .ok_or("the container configuration must be an object")?;
    let key = field_name(top, "HostConfig", "the container configuration")?
        .unwrap_or_else(|| "HostConfig".into());
    let host = top.entry(key).or_insert_with(|| json!({}));
    if host.is_null() {
        *host = json!({});
    }
    let host = host.as_object_mut().ok_or("HostConfig must be an object")?;
    let key =
        field_name(host, "CgroupParent", "HostConfig")?.unwrap_or_else(|| "CgroupParent".into());
    host.insert(key, Value::String(parent.into()));
    Ok(())
}

fn field<'a>(
    map: &'a Map<String, Value>,
    name: &str,
    what: &str,
) -> Result<Option<&'a Value>, String> {
    Ok(field_name(map, name, what)?.and_then(|k| map.get(&k)))
}

/// The key of `map` that is field `name` to dockerd, if any.
fn field_name(map: &Map<String, Value>, name: &str, what: &str) -> Result<Option<String>, String> {
    let mut found: Option<&String> = None;
    for key in map.keys() {
        if !key.is_ascii() {
            return Err(format!(
                "{what}: field name {key:?} is not ASCII (the daemon would match it to a field by Unicode case folding)"
            ));
        }
        if key.eq_ignore_ascii_case(name) {
            if let Some(other) = found {
                return Err(format!(
                    "{what}: {other:?} and {key:?} are the same field to the daemon"
                ));
            }
            found = Some(key);
        }
    }
    Ok(found.cloned())
}

/// GitLab's ids are positive 64-bit integers, in decimal.
fn is_gitlab_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0')
}

/// Checks that a verified token is this job's: the configured issuer, `job_id` and
/// `project_id` the container's labels.
pub fn token_is_the_jobs(
    identity: &Identity,
    issuer: &str,
    job_id: &str,
    project_id: &str,
) -> Result<(), String> {
    if identity.issuer.as_deref() != Some(issuer) {
        return Err(format!(
            "the ID token is from {}, not from the runner's GitLab {issuer}",
            identity.issuer.as_deref().unwrap_or("-")
        ));
    }
    for (claim, want) in [("job_id", job_id), ("project_id", project_id)] {
        let got = identity.claim_values(claim);
        if got != [want] {
            return Err(format!(
                "the ID token's {claim} is {got:?}, but the container is job {job_id}'s (project {project_id}): a token binds only its own job"
            ));
        }
    }
    Ok(())
}

async fn create_container(
    req: Request<Incoming>,
    services: &Services,
    session: i64,
    d: &mut Map<String, Value>,
) -> Result<Response<Body>, Refused> {
    let gitlab = services
        .gitlab
        .as_ref()
        .ok_or((StatusCode::FORBIDDEN, "no [docker.gitlab]".to_string()))?;
    let bad = |e: String| (StatusCode::BAD_REQUEST, e);
    let forbidden = |e: String| (StatusCode::FORBIDDEN, e);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if req.headers().contains_key(header::CONTENT_ENCODING) {
        return Err(bad("encoded request bodies are not accepted".into()));
    }
    let bytes = Limited::new(req.into_body(), MAX_CREATE)
        .collect()
        .await
        .map_err(|e| {
            bad(format!(
                "request body over {MAX_CREATE} bytes, or unreadable: {e}"
            ))
        })?
        .to_bytes();
    let mut body = dockerapi::json::parse(&bytes).map_err(|e| bad(e.to_string()))?;
    let create = read_create(&body, &gitlab.settings.token_variable).map_err(forbidden)?;
    d.insert("gitlab_job".into(), json!(create.job_id));
    d.insert("gitlab_project".into(), json!(create.project_id));
    d.insert("container_type".into(), json!(create.kind));
    if let Some(image) = body.get("Image").and_then(Value::as_str) {
        d.insert("image".into(), json!(image));
    }
    let state = services
        .engine_state()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    if state.info.cgroup_driver != "cgroupfs" {
        return Err(forbidden(format!(
            "the engine uses the {:?} cgroup driver; the gateway places each GitLab job's containers under the job's cgroup, which needs the cgroupfs driver",
            state.info.cgroup_driver
        )));
    }
    let verified =
        match &create.token {
            None => None,
            Some(token) => {
                let v: Verified =
                    gitlab.lifecycle.verifier.verify(token).await.map_err(|e| {
                        forbidden(format!("{}: {e}", gitlab.settings.token_variable))
                    })?;
                token_is_the_jobs(
                    &v.identity,
                    &gitlab.settings.issuer,
                    &create.job_id,
                    &create.project_id,
                )
                .map_err(forbidden)?;
                Some(v)
            }
        };
    let _held = gitlab.lock.lock().await;
    let relative = gitlab.job_cgroup(&create.job_id);
    let path_of_job = services.cgroup_root.join(&relative);
    let mut job = match services.jobs.by_path(&path_of_job) {
        Some(job) => job,
        None => gitlab
            .lifecycle
            .create_gitlab_job(
                &gitlab.settings.cgroup_parent,
                &format!("{CGROUP_PREFIX}{}", create.job_id),
            )
            .await
            .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e))?,
    };
    if let Some(v) = verified
        && !job.identity.is_authenticated()
    {
        let expires = chrono::Utc::now()
            + chrono::Duration::from_std(v.max_binding).unwrap_or(chrono::Duration::MAX);
        job = gitlab
            .lifecycle
            .bind(&job, v.identity, Some(expires))
            .await
            .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e))?;
    }
    check_bound_to_the_job(&job, &create)?;
    d.insert("job".into(), json!(job.id));
    d.insert("identity".into(), json!(job.identity.subject));
    d.insert("cgroup_parent".into(), json!(format!("/{relative}")));
    set_cgroup_parent(&mut body, &format!("/{relative}")).map_err(forbidden)?;
    // Write-ahead: the create is on record before the engine sees it.
    d.insert("decision".into(), json!("allow"));
    if let Err(e) = services
        .store
        .append_event(
            session,
            EventKind::DockerRequest,
            services.recorded(Value::Object(d.clone())),
        )
        .await
    {
        d.remove("decision");
        tracing::error!(error = %e, "cannot record a Docker request; refusing it");
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway cannot record the request".into(),
        ));
    }
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header(header::HOST, "docker")
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(engine::full(serde_json::to_vec(&body).unwrap_or_default()))
        .map_err(|e| bad(e.to_string()))?;
    tracing::info!(
        gitlab_job = %create.job_id,
        job = %job.id,
        kind = %create.kind,
        identity = %job.identity.subject,
        "GitLab runner's container placed in the job's cgroup"
    );
    send(req, None, services).await
}

/// A job's cgroup bound before is bound to this job (its identity's `job_id`): never to
/// another's, whatever a later container brings.
fn check_bound_to_the_job(job: &Job, create: &RunnerCreate) -> Result<(), Refused> {
    if job.identity.is_authenticated()
        && job.identity.claim_values("job_id") != [create.job_id.as_str()]
    {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "the cgroup of GitLab job {} is bound to another job's identity",
                create.job_id
            ),
        ));
    }
    Ok(())
}

/// Ends the GitLab jobs whose containers are all gone (the runner removes them when the job is
/// over), removing their cgroups; at start, also removes empty cgroups of no job below the
/// parent (left by a gateway that stopped).
pub async fn cleanup_loop(services: Arc<Services>) {
    let Some(gitlab) = services.gitlab.clone() else {
        return;
    };
    let parent = services.cgroup_root.join(&gitlab.settings.cgroup_parent);
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for e in entries.flatten() {
            let path = e.path();
            let ours = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(CGROUP_PREFIX));
            if ours && services.jobs.by_path(&path).is_none() {
                match std::fs::remove_dir(&path) {
                    Ok(()) => {
                        tracing::info!(cgroup = %path.display(), "removed a stale GitLab job cgroup")
                    }
                    Err(e) => {
                        tracing::warn!(cgroup = %path.display(), error = %e, "a GitLab job cgroup of no job cannot be removed")
                    }
                }
            }
        }
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(CLEANUP_EVERY) => {}
            () = services.shutdown.cancelled() => return,
        }
        for job in services.jobs.list() {
            let Some(gitlab_job) = job
                .cgroup_path
                .strip_prefix(&parent)
                .ok()
                .and_then(|rest| rest.to_str())
                .and_then(|name| name.strip_prefix(CGROUP_PREFIX))
                .filter(|id| is_gitlab_id(id))
                .map(str::to_string)
            else {
                continue;
            };
            let _held = gitlab.lock.lock().await;
            match services
                .engine
                .with_label("containers", JOB_ID_LABEL, &gitlab_job)
                .await
            {
                Ok(ids) if ids.is_empty() => {
                    tracing::info!(job = %job.id, gitlab_job = %gitlab_job, "GitLab job's containers are gone; ending it");
                    if let Err(e) = gitlab.lifecycle.end_job(&job).await {
                        tracing::warn!(job = %job.id, error = %e, "ending a GitLab job");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list a GitLab job's containers");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(labels: Value, env: Value) -> Value {
        json!({ "Image": "alpine", "Labels": labels, "Env": env, "HostConfig": { "CgroupParent": "/runner" } })
    }

    fn labels(job: &str, project: &str) -> Value {
        json!({ JOB_ID_LABEL: job, PROJECT_ID_LABEL: project, TYPE_LABEL: "build" })
    }

    #[test]
    fn paths_the_engine_could_take_for_a_create_are_caught() {
        for p in [
            "/containers/create",
            "/v1.43//containers/create/",
            "/%63ontainers/Create",
        ] {
            assert!(might_be_create(p), "{p}");
        }
        for p in [
            "/containers/abc/wait",
            "/images/create",
            "/containers/create-x/json",
        ] {
            assert!(!might_be_create(p), "{p}");
        }
    }

    #[test]
    fn a_create_is_read_for_the_job_project_and_token() {
        let b = body(
            labels("42", "7"),
            json!(["A=1", "GATEWAY_ID_TOKEN=t.o.k", "B=2"]),
        );
        let c = read_create(&b, "GATEWAY_ID_TOKEN").expect("read");
        assert_eq!(
            c,
            RunnerCreate {
                job_id: "42".into(),
                project_id: "7".into(),
                kind: "build".into(),
                token: Some("t.o.k".into()),
            }
        );
        let b = body(labels("42", "7"), Value::Null);
        assert_eq!(
            read_create(&b, "GATEWAY_ID_TOKEN").expect("read").token,
            None
        );
    }

    #[test]
    fn creates_the_gateway_cannot_read_as_dockerd_does_are_refused() {
        let cases = [
            (body(json!({}), json!([])), "must carry the label"),
            (
                body(json!({ JOB_ID_LABEL: "42" }), json!([])),
                PROJECT_ID_LABEL,
            ),
            (body(labels("../1", "7"), json!([])), "not a GitLab id"),
            (body(labels("042", "7"), json!([])), "not a GitLab id"),
            (body(labels("4", "-7"), json!([])), "not a GitLab id"),
            (
                body(
                    labels("42", "7"),
                    json!(["GATEWAY_ID_TOKEN=a", "GATEWAY_ID_TOKEN=b"]),
                ),
                "given 2 times",
            ),
            (
                body(labels("42", "7"), json!("GATEWAY_ID_TOKEN=a")),
                "list of strings",
            ),
            (
                json!({ "Labels": labels("42", "7"), "labels": {} }),
                "same field to the daemon",
            ),
            (
                json!({ "Labels": labels("42", "7"), "Env": [], "\u{212a}ey": 1 }),
                "not ASCII",
            ),
        ];
        for (b, why) in cases {
            let e = read_create(&b, "GATEWAY_ID_TOKEN").expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn the_cgroup_parent_is_set_under_the_spelling_the_body_used() {
        let mut b = json!({ "hostconfig": { "cgroupparent": "/elsewhere", "Memory": 1 } });
        set_cgroup_parent(&mut b, "/g/gitlab-job-42").expect("set");
        assert_eq!(
            b,
            json!({ "hostconfig": { "cgroupparent": "/g/gitlab-job-42", "Memory": 1 } })
        );
        let mut b = json!({ "Image": "x" });
        set_cgroup_parent(&mut b, "/g/gitlab-job-42").expect("set");
        assert_eq!(b["HostConfig"]["CgroupParent"], "/g/gitlab-job-42");
        let mut b = json!({ "HostConfig": { "CgroupParent": "/a", "cgroupParent": "/b" } });
        assert!(set_cgroup_parent(&mut b, "/x").is_err());
    }

    #[test]
    fn a_token_binds_only_its_own_job_of_the_runners_gitlab() {
        let identity = |iss: &str, job: Value, project: Value| Identity {
            issuer: Some(iss.into()),
            subject: "project_path:acme/app:ref_type:branch:ref:main".into(),
            claims: [
                ("job_id".to_string(), job),
                ("project_id".to_string(), project),
            ]
            .into_iter()
            .collect(),
        };
        let gl = "https://gitlab.example.com";
        assert!(token_is_the_jobs(&identity(gl, json!("42"), json!("7")), gl, "42", "7").is_ok());
        assert!(token_is_the_jobs(&identity(gl, json!(42), json!(7)), gl, "42", "7").is_ok());
        for (id, why) in [
            (identity(gl, json!("43"), json!("7")), "job_id"),
            (identity(gl, json!("42"), json!("8")), "project_id"),
            (identity(gl, json!(["42", "43"]), json!("7")), "job_id"),
            (identity(gl, Value::Null, json!("7")), "job_id"),
            (
                identity("https://evil.example", json!("42"), json!("7")),
                "not from",
            ),
        ] {
            let e = token_is_the_jobs(&id, gl, "42", "7").expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
