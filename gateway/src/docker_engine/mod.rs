//! The gateway's client of the Docker engine (dockerd's socket): HTTP/1.1 over a Unix socket,
//! one connection per request (connects are cheap, and an upgraded connection is used up), and
//! what the daemon asks of it outside the Docker API proxy: which container a session's process
//! runs in, and removing a job's containers when it ends ([`containers`]). Kept out of
//! `protocol` because the job lifecycle and the intercept listener use it too.

pub mod containers;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

/// Bodies the proxy sends and returns.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A body of bytes at hand.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// JSON answers the gateway reads from the engine, at most.
const MAX_ANSWER: usize = 8 << 20;
/// The engine's answers to the gateway's own questions (inspect, info), at most.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine at {socket}: {source}")]
    Connect {
        socket: String,
        source: std::io::Error,
    },
    #[error("Docker engine: {0}")]
    Http(#[from] hyper::Error),
    #[error("Docker engine: {0}")]
    Answer(String),
    #[error("the Docker engine did not answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
}

/// What the gateway needs to know of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub image: String,
    pub cgroup_parent: String,
    pub labels: BTreeMap<String, String>,
    /// Host paths bound read-write into it (as the engine resolved them).
    pub rw_binds: Vec<String>,
}

/// What the gateway needs to know of a network or volume: its id (volumes: name) and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The engine's settings that matter to the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineInfo {
    pub cgroup_driver: String,
    pub root_dir: String,
    pub version: String,
}

impl Engine {
    pub fn new(socket: PathBuf) -> Engine {
        Engine { socket }
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Sends one request on a connection of its own; the connection serves an upgrade if the
    /// engine switches protocols.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, EngineError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| EngineError::Connect {
                    socket: self.socket.display().to_string(),
                    source,
                })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "Docker engine connection ended");
            }
        });
        Ok(sender.send_request(req).await?)
    }

    /// A question of the gateway's own (not the job's): status and JSON answer.
    /// A GET of something the engine may not know: `None` for 404, an error for other failures.
    async fn look_up(&self, path: &str) -> Result<Option<Value>, EngineError> {
        let (status, v) = self.ask("GET", path, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(EngineError::Answer(message(status, &v)));
        }
        Ok(Some(v))
    }

    async fn ask(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Value), EngineError> {
        let work = async {
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header("Host", "docker");
            if body.is_some() {
                req = req.header("Content-Type", "application/json");
            }
            let req = req
                .body(full(body.unwrap_or_default()))
                .map_err(|e| EngineError::Answer(e.to_string()))?;
            let resp = self.send(req).await?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| EngineError::Answer(e.to_string()))?
                .to_bytes();
            let value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|e| EngineError::Answer(e.to_string()))?
            };
            Ok((status, value))
        };
        tokio::time::timeout(ASK_TIMEOUT, work)
            .await
            .map_err(|_| EngineError::Timeout(ASK_TIMEOUT))?
    }

    /// A container by id, id prefix or name; `None` when the engine knows none.
    pub async fn container(&self, reference: &str) -> Result<Option<Container>, EngineError> {
        let Some(v) = self
            .look_up(&format!("/containers/{}/json", segment(reference)))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Container {
            id: text(&v["Id"]),
            name: text(&v["Name"]).trim_start_matches('/').to_string(),
            image: text(&v["Config"]["Image"]),
            cgroup_parent: text(&v["HostConfig"]["CgroupParent"]),
            labels: labels(&v["Config"]["Labels"]),
            rw_binds: v["Mounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["Type"] == "bind" && m["RW"] == true)
                .map(|m| text(&m["Source"]))
                .collect(),
        }))
    }

    /// The container an exec belongs to.
    pub async fn exec_container(&self, exec: &str) -> Result<Option<String>, EngineError> {
        let Some(v) = self
            .look_up(&format!("/exec/{}/json", segment(exec)))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(text(&v["ContainerID"])).filter(|c| !c.is_empty()))
    }

    pub async fn network(&self, reference: &str) -> Result<Option<Labelled>, EngineError> {
        let Some(v) = self
            .look_up(&format!("/networks/{}", segment(reference)))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Labelled {
            id: text(&v["Id"]),
            name: text(&v["Name"]),
            labels: labels(&v["Labels"]),
        }))
    }

    pub async fn volume(&self, name: &str) -> Result<Option<Labelled>, EngineError> {
        let Some(v) = self.look_up(&format!("/volumes/{}", segment(name))).await? else {
            return Ok(None);
        };
        Ok(Some(Labelled {
            id: text(&v["Name"]),
            name: text(&v["Name"]),
            labels: labels(&v["Labels"]),
        }))
    }

    pub async fn create_volume(&self, body: Vec<u8>) -> Result<(), EngineError> {
        let (status, v) = self.ask("POST", "/volumes/create", Some(body)).await?;
        if !status.is_success() {
            return Err(EngineError::Answer(message(status, &v)));
        }
        Ok(())
    }

    pub async fn info(&self) -> Result<EngineInfo, EngineError> {
        let (status, v) = self.ask("GET", "/info", None).await?;
        if !status.is_success() {
            return Err(EngineError::Answer(message(status, &v)));
        }
        Ok(EngineInfo {
            cgroup_driver: text(&v["CgroupDriver"]),
            root_dir: text(&v["DockerRootDir"]),
            version: text(&v["ServerVersion"]),
        })
    }

    /// Ids of the containers (`kind` "containers"), networks or volumes labelled as the job's.
    pub async fn labelled(&self, kind: &str, job: &str) -> Result<Vec<String>, EngineError> {
        self.with_label(kind, crate::dockerapi::JOB_LABEL, job)
            .await
    }

    /// Ids (volumes: names) of the containers (running or not), networks or volumes whose label
    /// `key` is `value`.
    pub async fn with_label(
        &self,
        kind: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<String>, EngineError> {
        let filters = serde_json::json!({ "label": [format!("{key}={value}")] });
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("filters", &filters.to_string())
            .append_pair("all", "1")
            .finish();
        let path = match kind {
            "containers" => format!("/containers/json?{query}"),
            "networks" => format!("/networks?{query}"),
            _ => format!("/volumes?{query}"),
        };
        let (status, v) = self.ask("GET", &path, None).await?;
        if !status.is_success() {
            return Err(EngineError::Answer(message(status, &v)));
        }
        let list = if kind == "volumes" {
            v["Volumes"].as_array().cloned().unwrap_or_default()
        } else {
            v.as_array().cloned().unwrap_or_default()
        };
        let key = if kind == "volumes" { "Name" } else { "Id" };
        Ok(list
            .iter()
            .map(|o| text(&o[key]))
            .filter(|i| !i.is_empty())
            .collect())
    }

    /// Removes a container (with its anonymous volumes), network or volume; gone already is fine.
    pub async fn remove(&self, kind: &str, id: &str) -> Result<(), EngineError> {
        let path = match kind {
            "containers" => format!("/containers/{}?force=1&v=1", segment(id)),
            "networks" => format!("/networks/{}", segment(id)),
            _ => format!("/volumes/{}?force=1", segment(id)),
        };
        let (status, v) = self.ask("DELETE", &path, None).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(EngineError::Answer(message(status, &v)))
        }
    }
}

fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn message(status: StatusCode, v: &Value) -> String {
    format!(
        "{status}: {}",
        v["message"].as_str().unwrap_or("(no message)")
    )
}
