//! Which container a process runs in (for session records), and removing what a job created
//! through the gateway when the job ends.
//!
//! The container id comes from the process's cgroup below its job (`…/<job>/<64 hex>` with the
//! cgroupfs driver, `docker-<id>.scope`, `libpod-<id>.scope`, `cri-containerd-<id>.scope`). A job
//! may make cgroups of such names itself, so the id is only `verified` (and the name and image
//! the engine's) when the engine says a container of that id has the job's cgroup as its parent.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{Container, Engine};
use crate::record::ContainerInfo;

/// How long an answer of the engine about a container is reused.
const CACHE_FOR: Duration = Duration::from_secs(30);
/// How long a session record waits for the engine's answer.
const ASK_FOR: Duration = Duration::from_millis(500);
const CACHE_ENTRIES: usize = 4096;

pub struct Containers {
    /// `None`: no engine configured (ids only, unverified).
    engine: Option<Engine>,
    known: Mutex<HashMap<String, (Instant, Option<Container>)>>,
}

impl Containers {
    pub fn new(engine: Option<Engine>) -> Containers {
        Containers {
            engine,
            known: Mutex::default(),
        }
    }

    /// The container a process in cgroup `cgroup` runs in, if the path below its job's cgroup
    /// `job_cgroup` (both relative to the hierarchy's root) names one.
    pub async fn describe(&self, cgroup: &str, job_cgroup: &str) -> Option<ContainerInfo> {
        let (parent, id) = container_of(cgroup, job_cgroup)?;
        let mut info = ContainerInfo {
            id: id.clone(),
            name: None,
            image: None,
            verified: false,
        };
        if let Some(c) = self.lookup(&id).await
            && same_cgroup(&c.cgroup_parent, &parent)
        {
            info.name = Some(c.name);
            info.image = Some(c.image);
            info.verified = true;
        }
        Some(info)
    }

    async fn lookup(&self, id: &str) -> Option<Container> {
        let engine = self.engine.as_ref()?;
        if let Some((at, c)) = self.lock().get(id)
            && at.elapsed() < CACHE_FOR
        {
            return c.clone();
        }
        let found = tokio::time::timeout(ASK_FOR, engine.container(id))
            .await
            .ok()?
            .ok()?
            .filter(|c| c.id == id);
        let mut known = self.lock();
        if known.len() >= CACHE_ENTRIES {
            known.clear();
        }
        known.insert(id.to_string(), (Instant::now(), found.clone()));
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<Container>)>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the containers, networks and volumes labelled as job `job`'s (what it created
    /// through the gateway): nothing of a job outlives it, and nothing restarts under a cgroup
    /// that no program covers any more.
    pub async fn remove_job(&self, job: &str) {
        let Some(engine) = &self.engine else { return };
        for kind in ["containers", "networks", "volumes"] {
            let ids = match engine.labelled(kind, job).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(job, kind, error = %e, "cannot list what the job created in Docker");
                    continue;
                }
            };
            for id in ids {
                if let Err(e) = engine.remove(kind, &id).await {
                    tracing::warn!(job, kind, id, error = %e, "cannot remove what the job created in Docker");
                } else {
                    tracing::info!(job, kind, id, "removed with the job");
                }
            }
        }
    }
}

/// The cgroup parent (the path above the container's cgroup) and container id a cgroup path
/// below `job_cgroup` names.
fn container_of(cgroup: &str, job_cgroup: &str) -> Option<(String, String)> {
    let job = job_cgroup.trim_end_matches('/');
    let below = cgroup.strip_prefix(job)?.strip_prefix('/')?;
    let mut parent = job.to_string();
    for part in below.split('/') {
        if let Some(id) = container_id(part) {
            return Some((parent, id.to_string()));
        }
        parent.push('/');
        parent.push_str(part);
    }
    None
}

fn container_id(part: &str) -> Option<&str> {
    let id = ["docker-", "libpod-", "cri-containerd-", "crio-"]
        .iter()
        .find_map(|p| part.strip_prefix(p)?.strip_suffix(".scope"))
        .unwrap_or(part);
    (id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(id)
}

/// Cgroup paths as the engine stores a cgroup parent and as /proc shows them. With the systemd
/// cgroup driver the engine stores a slice name, which is mapped to its path first.
pub fn same_cgroup(a: &str, b: &str) -> bool {
    let a = slice_path(a).unwrap_or_else(|| a.to_string());
    a.trim_matches('/') == b.trim_matches('/')
}

/// The cgroup path (from the hierarchy's root) of a systemd slice name, as systemd lays slices
/// out: each `-` opens a level (`a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`; an escaped
/// dash, `\x2d`, does not). `None` for what is not a valid slice name (a path, a name with an
/// empty level); `-.slice` is the root.
pub fn slice_path(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".slice")?;
    if name.contains('/') {
        return None;
    }
    if stem == "-" {
        return Some("/".into());
    }
    if stem.is_empty() || stem.split('-').any(str::is_empty) {
        return None;
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Some(path)
}

/// Whether a container with cgroup parent `parent` runs under the job's cgroup.
pub fn under_job(parent: &str, job_cgroup: &str) -> bool {
    let (p, j) = (parent.trim_matches('/'), job_cgroup.trim_matches('/'));
    !j.is_empty() && (p == j || p.strip_prefix(j).is_some_and(|rest| rest.starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_read_below_the_job_only() {
        let id = "a".repeat(64);
        assert_eq!(
            container_of(&format!("/jobs/job-1/{id}"), "/jobs/job-1"),
            Some(("/jobs/job-1".into(), id.clone()))
        );
        assert_eq!(
            container_of(&format!("/jobs/job-1/sub/docker-{id}.scope"), "/jobs/job-1"),
            Some(("/jobs/job-1/sub".into(), id.clone()))
        );
        // Not below the job, a prefix of another job's name, or no id.
        assert_eq!(container_of(&format!("/other/{id}"), "/jobs/job-1"), None);
        assert_eq!(
            container_of(&format!("/jobs/job-10/{id}"), "/jobs/job-1"),
            None
        );
        assert_eq!(container_of("/jobs/job-1/x", "/jobs/job-1"), None);
        assert_eq!(
            container_of(&format!("/jobs/job-1/{}", "A".repeat(64)), "/jobs/job-1"),
            None
        );
    }

    #[test]
    fn systemd_slice_names_map_to_their_cgroup_paths() {
        assert_eq!(
            slice_path("gateway-jobs-gitlab.slice").as_deref(),
            Some("/gateway.slice/gateway-jobs.slice/gateway-jobs-gitlab.slice")
        );
        assert_eq!(slice_path("system.slice").as_deref(), Some("/system.slice"));
        assert_eq!(slice_path("-.slice").as_deref(), Some("/"));
        assert_eq!(
            slice_path("ci-a\\x2db.slice").as_deref(),
            Some("/ci.slice/ci-a\\x2db.slice")
        );
        for bad in [
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            ".slice",
            "a.scope",
            "/a/b.slice",
            "a",
        ] {
            assert_eq!(slice_path(bad), None, "{bad}");
        }
        assert!(same_cgroup(
            "gateway-jobs-gitlab.slice",
            "/gateway.slice/gateway-jobs.slice/gateway-jobs-gitlab.slice"
        ));
        assert!(same_cgroup("/jobs/job-1/", "/jobs/job-1"));
        assert!(!same_cgroup("gateway-jobs.slice", "/gateway-jobs.slice"));
    }

    #[test]
    fn cgroup_parents_under_the_job() {
        assert!(under_job("/jobs/job-1", "/jobs/job-1"));
        assert!(under_job("jobs/job-1/", "/jobs/job-1"));
        assert!(under_job("/jobs/job-1/x", "/jobs/job-1"));
        assert!(!under_job("/jobs/job-10", "/jobs/job-1"));
        assert!(!under_job("/", "/jobs/job-1"));
        assert!(!under_job("", "/jobs/job-1"));
        assert!(!under_job("/jobs", "/jobs/job-1"));
    }
}
