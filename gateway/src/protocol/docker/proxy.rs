//! One Docker API request: classified, resolved against the engine (what it names must be the
//! job's), decided, recorded, and forwarded as the gateway rewrote it.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::{
    HeaderMap, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Conn, error, paths};
use crate::{
    docker_engine::{Body, Container, containers::under_job, full},
    dockerapi::{
        self, BodyKind, ContainerSpec, ExecSpec, JOB_LABEL, Mount, MountKind, NetworkSpec,
        OperationKind, Privilege, Route, UpdateSpec, VolumeSpec,
    },
    policy::{Decision, DockerOperation},
    record::EventKind,
};

/// JSON bodies the gateway reads, at most (a container configuration is a few KiB).
const MAX_JSON: usize = 1 << 20;
/// Answers the gateway reads before passing them on (a create's id, a container list), at most.
const MAX_ANSWER: usize = 8 << 20;

pub(super) async fn handle(
    req: Request<Incoming>,
    conn: Arc<Conn>,
) -> Result<Response<Body>, Infallible> {
    Ok(match respond(req, &conn).await {
        Ok(r) => r,
        Err(refusal) => error(refusal.status, &refusal.message),
    })
}

/// An answer in the engine's error format.
struct Refusal {
    status: StatusCode,
    message: String,
}

fn refusal(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// What is recorded of a request (`docker_request`).
#[derive(Serialize, Default)]
struct Detail {
    method: String,
    /// As sent (cut at 1 KiB).
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    operation: Option<OperationKind>,
    /// The container it is about (full id, once resolved).
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mounts: Vec<Mount>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    privileges: Vec<String>,
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Detail {
    /// Records a refusal (nothing is forwarded, so nothing waits for it) and answers it (the
    /// job reads its own text unmasked).
    fn refuse(&mut self, conn: &Conn, r: Refusal) -> Refusal {
        self.decision = "deny";
        self.reason = Some(conn.services.shown(&r.message));
        conn.services
            .store
            .note_event(conn.session, EventKind::DockerRequest, self.recorded(conn));
        tracing::info!(session = conn.session, job = %conn.job.id, path = %self.path, reason = self.reason.as_deref().unwrap_or_default(), "Docker request refused");
        r
    }

    /// As it is recorded: what the job sent (path, command, image, mounts, and the reasons
    /// that quote them) masked.
    fn recorded(&self, conn: &Conn) -> Value {
        conn.services
            .recorded(serde_json::to_value(self).unwrap_or_default())
    }
}

/// The query string, read as the engine reads it (a key given twice is refused: the engine and
/// the gateway could read different ones).
#[derive(Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Result<Query, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(format!("query parameter {k:?} is given twice"));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Query(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = value.to_string(),
            None => self.0.push((key.into(), value.into())),
        }
    }

    /// `path` with the query, re-encoded.
    fn on(&self, path: String) -> String {
        if self.0.is_empty() {
            return path;
        }
        let q = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&self.0)
            .finish();
        format!("{path}?{q}")
    }
}

/// What goes to the engine.
enum Outgoing {
    Empty,
    Json(Vec<u8>),
    /// Passed on unread (a tar archive), with its content type.
    Stream(Incoming, Option<HeaderValue>),
}

/// What happens to the engine's answer.
enum After {
    Stream,
    /// A container was created: its id is recorded.
    Created,
    /// A container list: only the job's containers are shown.
    OwnContainers,
    /// The connection may be taken over (attach, exec start).
    Upgrade(OnUpgrade),
}

struct Plan {
    kind: OperationKind,
    image: Option<String>,
    privileges: Vec<Privilege>,
    /// Path and query to forward.
    path: String,
    body: Outgoing,
    after: After,
    /// Named volumes a container asks for that do not exist yet: created (as the job's) first.
    volumes: Vec<VolumeSpec>,
    /// Registry credentials, for pulls and pushes only.
    registry_auth: Option<HeaderValue>,
}

async fn respond(mut req: Request<Incoming>, conn: &Conn) -> Result<Response<Body>, Refusal> {
    let (method, sent) = super::method_and_target(&req);
    let mut d = Detail {
        method: method.clone(),
        path: cut(&conn.services.shown(&sent), 1024),
        ..Detail::default()
    };
    if let Some(why) = conn.job.binding_expired() {
        return Err(d.refuse(conn, refusal(StatusCode::FORBIDDEN, why)));
    }
    let route = match dockerapi::route(&method, req.uri().path()) {
        Ok(r) => r,
        Err(e) => return Err(d.refuse(conn, refusal(StatusCode::FORBIDDEN, e.to_string()))),
    };
    d.operation = Some(route.kind);
    let query = Query::parse(req.uri().query())
        .map_err(|e| d.refuse(conn, refusal(StatusCode::BAD_REQUEST, e)))?;
    if req.headers().contains_key(header::CONTENT_ENCODING) {
        return Err(d.refuse(
            conn,
            refusal(
                StatusCode::BAD_REQUEST,
                "encoded request bodies are not accepted",
            ),
        ));
    }
    let upgrade = route.upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let plan = plan(route, query, body, &parts.headers, upgrade, conn, &mut d).await?;

    d.image = plan.image.clone();
    d.privileges = plan.privileges.iter().map(ToString::to_string).collect();
    let op = DockerOperation {
        kind: plan.kind,
        image: plan.image.as_deref(),
        privileges: &plan.privileges,
    };
    let decision = conn.services.policy.decide_docker(&conn.job.identity, &op);
    d.rule = decision.rule().map(str::to_string);
    if let Decision::Deny { reason, .. } = &decision {
        return Err(d.refuse(conn, refusal(StatusCode::FORBIDDEN, reason.clone())));
    }
    d.decision = "allow";
    // Write-ahead: nothing reaches the engine before it is recorded.
    if let Err(e) = conn
        .services
        .store
        .append_event(conn.session, EventKind::DockerRequest, d.recorded(conn))
        .await
    {
        tracing::error!(error = %e, "cannot record a Docker request; refusing it");
        return Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway cannot record the request",
        ));
    }
    forward(method, plan, conn).await
}

async fn plan(
    route: Route,
    mut query: Query,
    body: Incoming,
    headers: &HeaderMap,
    upgrade: Option<OnUpgrade>,
    conn: &Conn,
    d: &mut Detail,
) -> Result<Plan, Refusal> {
    use OperationKind as K;
    let engine = &conn.services.engine;
    let (bytes, stream) = match route.body {
        BodyKind::Opaque => (Bytes::new(), Some(body)),
        BodyKind::None | BodyKind::Json => {
            let limit = if route.body == BodyKind::Json {
                MAX_JSON
            } else {
                0
            };
            let bytes = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| {
                    let why = if route.body == BodyKind::None {
                        format!("{} takes no request body", route.endpoint)
                    } else {
                        format!("request body over {MAX_JSON} bytes, or unreadable: {e}")
                    };
                    d.refuse(conn, refusal(StatusCode::BAD_REQUEST, why))
                })?
                .to_bytes();
            (bytes, None)
        }
    };
    let mut plan = Plan {
        kind: route.kind,
        image: None,
        privileges: Vec::new(),
        path: String::new(),
        body: Outgoing::Empty,
        after: After::Stream,
        volumes: Vec::new(),
        registry_auth: None,
    };
    let body_error = |d: &mut Detail, e: dockerapi::ApiError| {
        d.refuse(conn, refusal(StatusCode::BAD_REQUEST, e.to_string()))
    };
    // The object in the path, resolved to the full id the gateway checked.
    let mut object = route.object.clone();
    match route.kind {
        K::ContainerCreate => {
            let spec = ContainerSpec::parse(&bytes).map_err(|e| body_error(d, e))?;
            // What it asks for is on record even when the checks below refuse it.
            d.image = Some(spec.image.clone());
            d.command = spec.command.clone();
            d.mounts = spec.mounts.clone();
            d.privileges = spec.privileges.iter().map(ToString::to_string).collect();
            let spec = create(spec, conn, d, &mut plan).await?;
            plan.image = Some(spec.image.clone());
            d.command = spec.command.clone();
            d.mounts = spec.mounts.clone();
            plan.privileges = spec.privileges.clone();
            plan.body = Outgoing::Json(spec.body());
            plan.after = After::Created;
        }
        K::ContainerList => plan.after = After::OwnContainers,
        K::ContainerInspect
        | K::ContainerStart
        | K::ContainerStop
        | K::ContainerRemove
        | K::ContainerLogs
        | K::ContainerAttach
        | K::ContainerUpdate
        | K::ContainerCopy => {
            let c = own_container(object.as_deref().unwrap_or_default(), conn, d).await?;
            object = Some(c.id.clone());
            if route.endpoint == "containers/{id}/update" {
                let spec = UpdateSpec::parse(&bytes).map_err(|e| body_error(d, e))?;
                plan.privileges = spec.privileges.clone();
                plan.body = Outgoing::Json(spec.body());
            }
        }
        K::Exec => {
            if route.endpoint == "containers/{id}/exec" {
                let c = own_container(object.as_deref().unwrap_or_default(), conn, d).await?;
                object = Some(c.id.clone());
                let spec = ExecSpec::parse(&bytes).map_err(|e| body_error(d, e))?;
                d.command = spec.command.clone();
                plan.privileges = spec.privileges.clone();
                plan.body = Outgoing::Json(spec.body());
            } else {
                let exec = object.clone().unwrap_or_default();
                let container = match engine.exec_container(&exec).await {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        return Err(d.refuse(
                            conn,
                            refusal(
                                StatusCode::NOT_FOUND,
                                format!("No such exec instance: {exec}"),
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(d.refuse(conn, refusal(StatusCode::BAD_GATEWAY, e.to_string())));
                    }
                };
                own_container(&container, conn, d).await?;
                if route.endpoint == "exec/{id}/start" {
                    let (detached, body) =
                        dockerapi::create::exec_start(&bytes).map_err(|e| body_error(d, e))?;
                    plan.body = Outgoing::Json(body);
                    if detached {
                        plan.after = After::Stream;
                        return finish(plan, &route, object, query, conn, d);
                    }
                }
            }
        }
        K::ImagePull => {
            let image = match (query.get("fromImage"), query.get("fromSrc")) {
                (Some(i), _) => match query.get("tag").filter(|t| !t.is_empty()) {
                    Some(t) if t.starts_with("sha256:") => format!("{i}@{t}"),
                    Some(t) => format!("{i}:{t}"),
                    None => i.to_string(),
                },
                (None, Some(src)) => src.to_string(),
                (None, None) => {
                    return Err(d.refuse(
                        conn,
                        refusal(StatusCode::BAD_REQUEST, "fromImage or fromSrc is required"),
                    ));
                }
            };
            plan.image = Some(image);
            plan.registry_auth = headers.get("X-Registry-Auth").cloned();
        }
        K::ImagePush => {
            plan.image = object.clone();
            plan.registry_auth = headers.get("X-Registry-Auth").cloned();
        }
        K::ImageTag => {
            let repo = query.get("repo").unwrap_or_default();
            plan.image = Some(match query.get("tag").filter(|t| !t.is_empty()) {
                Some(t) => format!("{repo}:{t}"),
                None => repo.to_string(),
            });
        }
        K::ImageRemove => plan.image = object.clone(),
        K::Commit => {
            let given = query.get("container").unwrap_or_default().to_string();
            let c = own_container(&given, conn, d).await?;
            query.set("container", &c.id);
            let value = dockerapi::json::parse(&bytes).map_err(|e| body_error(d, e))?;
            plan.body = Outgoing::Json(serde_json::to_vec(&value).unwrap_or_default());
        }
        K::NetworkCreate => {
            let mut spec = NetworkSpec::parse(&bytes).map_err(|e| body_error(d, e))?;
            spec.set_job_label(&conn.job.id);
            plan.privileges = spec.privileges.clone();
            plan.body = Outgoing::Json(spec.body());
        }
        K::NetworkList | K::NetworkRemove if object.is_some() => {
            let n = own_network(object.as_deref().unwrap_or_default(), false, conn, d).await?;
            object = Some(n);
        }
        K::NetworkConnect => {
            let n = own_network(object.as_deref().unwrap_or_default(), true, conn, d).await?;
            object = Some(n);
            let connect = route.endpoint.ends_with("/connect");
            let (container, mut out) =
                dockerapi::create::network_member(&bytes, connect).map_err(|e| body_error(d, e))?;
            let c = own_container(&container, conn, d).await?;
            out.insert("Container".into(), Value::String(c.id));
            plan.body = Outgoing::Json(serde_json::to_vec(&out).unwrap_or_default());
        }
        K::VolumeCreate => {
            let mut spec = VolumeSpec::parse(&bytes).map_err(|e| body_error(d, e))?;
            spec.set_job_label(&conn.job.id);
            plan.privileges = spec.privileges.clone();
            plan.body = Outgoing::Json(spec.body());
        }
        K::VolumeList | K::VolumeRemove if object.is_some() => {
            own_volume(object.as_deref().unwrap_or_default(), conn, d).await?;
        }
        K::Info | K::ImageList | K::ImageLoad | K::NetworkList | K::VolumeList => {}
        K::NetworkRemove | K::VolumeRemove => {}
    }
    if route.body == BodyKind::Opaque {
        plan.body = Outgoing::Stream(
            stream.expect("opaque bodies are kept as streams"),
            headers.get(header::CONTENT_TYPE).cloned(),
        );
    }
    if let Some(u) = upgrade {
        plan.after = After::Upgrade(u);
    }
    finish(plan, &route, object, query, conn, d)
}

fn finish(
    mut plan: Plan,
    route: &Route,
    object: Option<String>,
    query: Query,
    _conn: &Conn,
    d: &mut Detail,
) -> Result<Plan, Refusal> {
    if matches!(
        route.kind,
        OperationKind::ContainerInspect
            | OperationKind::ContainerStart
            | OperationKind::ContainerStop
            | OperationKind::ContainerRemove
            | OperationKind::ContainerLogs
            | OperationKind::ContainerAttach
            | OperationKind::ContainerUpdate
            | OperationKind::ContainerCopy
    ) || route.endpoint == "containers/{id}/exec"
    {
        d.container = object.clone();
    }
    plan.path = query.on(dockerapi::forward_path(route, object.as_deref()));
    Ok(plan)
}

/// A container create, made the job's: its cgroup parent, its label, what it refers to
/// resolved (and the job's), bind sources resolved and checked.
async fn create(
    mut spec: ContainerSpec,
    conn: &Conn,
    d: &mut Detail,
    plan: &mut Plan,
) -> Result<ContainerSpec, Refusal> {
    let services = &conn.services;
    let state = services
        .engine_state()
        .await
        .map_err(|e| d.refuse(conn, refusal(StatusCode::BAD_GATEWAY, e.to_string())))?;
    if state.info.cgroup_driver != "cgroupfs" {
        return Err(d.refuse(
            conn,
            refusal(
                StatusCode::FORBIDDEN,
                format!(
                    "the engine uses the {:?} cgroup driver; the gateway places a job's containers under the job's cgroup, which needs the cgroupfs driver (dockerd --exec-opt native.cgroupdriver=cgroupfs)",
                    state.info.cgroup_driver
                ),
            ),
        ));
    }
    if !spec.cgroup_parent.is_empty() && !under_job(&spec.cgroup_parent, &conn.job_cgroup) {
        return Err(d.refuse(
            conn,
            refusal(
                StatusCode::FORBIDDEN,
                format!(
                    "cgroup parent {:?} is outside the job's cgroup {:?}: the container would leave the job",
                    spec.cgroup_parent, conn.job_cgroup
                ),
            ),
        ));
    }
    if spec.cgroup_parent.is_empty() {
        spec.set_cgroup_parent(&conn.job_cgroup);
    }
    spec.set_job_label(&conn.job.id);
    let containers: Vec<String> = spec.containers().iter().map(|c| c.to_string()).collect();
    for given in containers {
        let c = own_container(&given, conn, d).await?;
        spec.resolve_container(&given, &c.id);
    }
    let networks: Vec<String> = spec.networks().iter().map(|n| n.to_string()).collect();
    for given in networks {
        let id = own_network(&given, true, conn, d).await?;
        spec.resolve_network(&given, &id);
    }
    let protected = &state.protected;
    // The Docker socket becomes the gateway's: docker in the container stays the job's. No rule
    // is needed for that bind (it hands out nothing the job does not have).
    for i in 0..spec.mounts.len() {
        let mount = &spec.mounts[i];
        if mount.kind != MountKind::Bind {
            continue;
        }
        let source = mount.source.clone();
        if tokio::task::block_in_place(|| protected.is_docker_socket(&source)) {
            let listen = services.listen.display().to_string();
            spec.set_mount_source(i, &listen);
            if let Some(at) = spec
                .privileges
                .iter()
                .position(|p| *p == Privilege::Bind(source.clone()))
            {
                spec.privileges.remove(at);
            }
        }
    }
    let listen = services.listen.display().to_string();
    let binds = spec
        .mounts
        .iter()
        .any(|m| m.kind == MountKind::Bind && m.source != listen);
    let job_writable = if binds {
        job_writable(conn, d).await?
    } else {
        paths::JobWritable::new()
    };
    for i in 0..spec.mounts.len() {
        let mount = spec.mounts[i].clone();
        match mount.kind {
            MountKind::Bind if mount.source == listen => {}
            MountKind::Bind => {
                let source = mount.source.clone();
                let asker = conn.asker.clone();
                let checked =
                    tokio::task::block_in_place(|| protected.check(&source, &asker, &job_writable));
                let resolved = checked.map_err(|why| {
                    d.mounts = spec.mounts.clone();
                    d.refuse(conn, refusal(StatusCode::FORBIDDEN, why))
                })?;
                for p in spec.privileges.iter_mut() {
                    if *p == Privilege::Bind(source.clone()) {
                        *p = Privilege::Bind(resolved.clone());
                    }
                }
                spec.set_mount_source(i, &resolved);
            }
            MountKind::Volume => {
                let exists =
                    services.engine.volume(&mount.source).await.map_err(|e| {
                        d.refuse(conn, refusal(StatusCode::BAD_GATEWAY, e.to_string()))
                    })?;
                match exists {
                    Some(v) if v.labels.get(JOB_LABEL) == Some(&conn.job.id) => {}
                    Some(_) => {
                        return Err(d.refuse(
                            conn,
                            refusal(
                                StatusCode::FORBIDDEN,
                                format!(
                                    "volume {:?} is not one of this job's volumes",
                                    mount.source
                                ),
                            ),
                        ));
                    }
                    None => plan
                        .volumes
                        .push(VolumeSpec::named(&mount.source, &conn.job.id)),
                }
            }
            MountKind::Anonymous | MountKind::Tmpfs => {}
        }
    }
    Ok(spec)
}

/// What the job's containers (those it created through the gateway) may write on the host: the
/// sources of their read-write bind mounts.
async fn job_writable(conn: &Conn, d: &mut Detail) -> Result<paths::JobWritable, Refusal> {
    let engine = &conn.services.engine;
    let unreachable = |d: &mut Detail, e: super::EngineError| {
        d.refuse(conn, refusal(StatusCode::BAD_GATEWAY, e.to_string()))
    };
    let ids = match engine.labelled("containers", &conn.job.id).await {
        Ok(ids) => ids,
        Err(e) => return Err(unreachable(d, e)),
    };
    let mut sources = Vec::new();
    for id in ids {
        match engine.container(&id).await {
            Ok(Some(c)) => sources.extend(c.rw_binds),
            Ok(None) => {}
            Err(e) => return Err(unreachable(d, e)),
        }
    }
    let state = conn
        .services
        .engine_state()
        .await
        .map_err(|e| unreachable(d, e))?;
    Ok(tokio::task::block_in_place(|| {
        state.protected.objects_of(&sources)
    }))
}

/// The container `reference` names, if it is the job's (runs under the job's cgroup).
async fn own_container(reference: &str, conn: &Conn, d: &mut Detail) -> Result<Container, Refusal> {
    match conn.services.engine.container(reference).await {
        Err(e) => Err(d.refuse(conn, refusal(StatusCode::BAD_GATEWAY, e.to_string()))),
        Ok(None) => Err(d.refuse(
            conn,
            refusal(
                StatusCode::NOT_FOUND,
                format!("No such container: {reference}"),
            ),
        )),
        Ok(Some(c)) if under_job(&c.cgroup_parent, &conn.job_cgroup) => Ok(c),
        Ok(Some(_)) => Err(d.refuse(
            conn,
            refusal(
                StatusCode::FORBIDDEN,
                format!("container {reference} is not one of this job's containers"),
            ),
        )),
    }
}

/// The id of the network `reference` names, if it is the job's (or, with `predefined`, the
/// engine's default bridge or none network, which any container may join).
async fn own_network(
    reference: &str,
    predefined: bool,
    conn: &Conn,
    d: &mut Detail,
) -> Result<String, Refusal> {
    match conn.services.engine.network(reference).await {
        Err(e) => Err(d.refuse(conn, refusal(StatusCode::BAD_GATEWAY, e.to_string()))),
        Ok(None) => Err(d.refuse(
            conn,
            refusal(
                StatusCode::NOT_FOUND,
                format!("network {reference} not found"),
            ),
        )),
        Ok(Some(n)) if n.labels.get(JOB_LABEL) == Some(&conn.job.id) => Ok(n.id),
        Ok(Some(n)) if predefined && matches!(n.name.as_str(), "bridge" | "none") => Ok(n.id),
        Ok(Some(_)) => Err(d.refuse(
            conn,
            refusal(
                StatusCode::FORBIDDEN,
                format!("network {reference} is not one of this job's networks"),
            ),
        )),
    }
}

async fn own_volume(name: &str, conn: &Conn, d: &mut Detail) -> Result<(), Refusal> {
    match conn.services.engine.volume(name).await {
        Err(e) => Err(d.refuse(conn, refusal(StatusCode::BAD_GATEWAY, e.to_string()))),
        Ok(None) => Err(d.refuse(
            conn,
            refusal(StatusCode::NOT_FOUND, format!("get {name}: no such volume")),
        )),
        Ok(Some(v)) if v.labels.get(JOB_LABEL) == Some(&conn.job.id) => Ok(()),
        Ok(Some(_)) => Err(d.refuse(
            conn,
            refusal(
                StatusCode::FORBIDDEN,
                format!("volume {name} is not one of this job's volumes"),
            ),
        )),
    }
}

async fn forward(method: String, plan: Plan, conn: &Conn) -> Result<Response<Body>, Refusal> {
    let engine = &conn.services.engine;
    for v in &plan.volumes {
        engine.create_volume(v.body()).await.map_err(|e| {
            refusal(
                StatusCode::BAD_GATEWAY,
                format!("creating volume {}: {e}", v.name),
            )
        })?;
    }
    let mut builder = Request::builder()
        .method(method.as_str())
        .uri(&plan.path)
        .header(header::HOST, "docker");
    if let Some(auth) = &plan.registry_auth {
        builder = builder.header("X-Registry-Auth", auth);
    }
    if matches!(plan.after, After::Upgrade(_)) {
        builder = builder
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "tcp");
    }
    let body = match plan.body {
        Outgoing::Empty => full(Bytes::new()),
        Outgoing::Json(bytes) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            full(bytes)
        }
        Outgoing::Stream(incoming, content_type) => {
            if let Some(ct) = content_type {
                builder = builder.header(header::CONTENT_TYPE, ct);
            }
            incoming.boxed()
        }
    };
    let req = builder
        .body(body)
        .map_err(|e| refusal(StatusCode::BAD_REQUEST, e.to_string()))?;
    let mut resp = engine
        .send(req)
        .await
        .map_err(|e| refusal(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let status = resp.status();
    let mut result = json!({ "status": status.as_u16() });
    let answer = match plan.after {
        After::Upgrade(client) if status == StatusCode::SWITCHING_PROTOCOLS => {
            let upstream = hyper::upgrade::on(&mut resp);
            let session = conn.session;
            tokio::spawn(async move {
                match tokio::try_join!(client, upstream) {
                    Ok((c, u)) => {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                            tracing::debug!(session, error = %e, "Docker stream ended");
                        }
                    }
                    Err(e) => tracing::debug!(session, error = %e, "Docker upgrade failed"),
                }
            });
            let mut out = Response::builder().status(status);
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            out.body(full(Bytes::new()))
                .map_err(|e| refusal(StatusCode::BAD_GATEWAY, e.to_string()))?
        }
        After::Created | After::OwnContainers => {
            let (parts, body) = resp.into_parts();
            let bytes = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| refusal(StatusCode::BAD_GATEWAY, e.to_string()))?
                .to_bytes();
            let bytes = if matches!(plan.after, After::Created) {
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    result["container"] = v["Id"].clone();
                }
                bytes
            } else {
                own_containers(&bytes, &conn.job.id).unwrap_or(bytes)
            };
            respond_with(parts.status, &parts.headers, full(bytes))
        }
        After::Stream | After::Upgrade(_) => {
            let (parts, body) = resp.into_parts();
            respond_with(parts.status, &parts.headers, body.boxed())
        }
    };
    conn.services
        .store
        .note_event(conn.session, EventKind::DockerResult, result);
    Ok(answer)
}

/// The engine's answer with its own headers, less those of its connection.
pub(super) fn respond_with(status: StatusCode, headers: &HeaderMap, body: Body) -> Response<Body> {
    let mut out = Response::new(body);
    *out.status_mut() = status;
    for (k, v) in headers {
        if matches!(
            k.as_str(),
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "upgrade"
                | "content-length"
                | "te"
                | "trailer"
        ) {
            continue;
        }
        out.headers_mut().append(k, v.clone());
    }
    out
}

/// A container list with only the job's containers.
fn own_containers(bytes: &[u8], job: &str) -> Option<Bytes> {
    let Value::Array(list) = serde_json::from_slice::<Value>(bytes).ok()? else {
        return None;
    };
    let own: Vec<Value> = list
        .into_iter()
        .filter(|c| c["Labels"][JOB_LABEL].as_str() == Some(job))
        .collect();
    serde_json::to_vec(&own).ok().map(Bytes::from)
}

/// The first `max` bytes of `s` (at a character boundary), marked when cut.
pub(super) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
