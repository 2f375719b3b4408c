//! Job lifecycle: binding a job to an identity, creating or adopting its cgroup, attaching and
//! detaching the programs, ending it (and its processes, for jobs the gateway owns), taking jobs
//! back after a restart, and reaping jobs that are gone.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::{
    budget::{self, Recorder},
    cgroup::{self, CgroupError},
    ebpf::{Connections, Dataplane, KernelGrant, boot_ns},
    identity::{Identity, Verifier},
    jobs::{Job, Jobs},
    policy::{Decision, Policy},
    record::{JobRecord, Store, StoreError, now},
};

/// How long ending a job waits for its kernel-path connections to close (see
/// [`JobControl::settle_kernel_path`]).
const KERNEL_PATH_SETTLE: Duration = Duration::from_secs(1);

/// What a job's kernel-path grants are compiled from: the rules, and the `path = "kernel"`
/// targets (index in the configuration, name).
pub struct GrantRules {
    pub policy: Arc<Policy>,
    pub kernel_targets: Vec<(u32, String)>,
}

impl GrantRules {
    /// The kernel-path targets `identity` may connect to, as the gateway would decide each
    /// connection, until the binding runs out. Only `allow` grants: a rule that wants approval
    /// refuses whole connections, as on the proxy path.
    pub fn compile(
        &self,
        identity: &Identity,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Vec<KernelGrant> {
        let expires_boot_ns = match expires_at {
            None => u64::MAX,
            Some(at) => {
                let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                boot_ns().saturating_add(left.as_nanos().min(u128::from(u64::MAX)) as u64)
            }
        };
        self.kernel_targets
            .iter()
            .filter(|(_, name)| {
                matches!(
                    self.policy.decide_connection(identity, name),
                    Decision::Allow { .. }
                )
            })
            .map(|(index, _)| KernelGrant {
                target_index: *index,
                expires_boot_ns,
            })
            .collect()
    }
}

/// What the job lifecycle uses.
pub struct JobControl {
    pub cgroup_root: PathBuf,
    /// cgroup of the daemon itself: never attached to (its upstream connects would loop).
    pub own_cgroup: PathBuf,
    /// `server.job_cgroup_parent`: where `gateway run` jobs are created.
    pub job_cgroup_parent: String,
    pub verifier: Arc<Verifier>,
    pub dataplane: Arc<tokio::sync::Mutex<Dataplane>>,
    pub store: Store,
    pub jobs: Arc<Jobs>,
    pub connections: Arc<Connections>,
    pub recorder: Arc<Recorder>,
    pub grants: GrantRules,
    /// What jobs created in Docker through the gateway (removed with them).
    pub containers: Arc<crate::docker_engine::containers::Containers>,
    /// `[docker.gitlab] cgroup_parent`, resolved: the GitLab jobs' cgroups below it end when
    /// their containers are gone (the Docker API proxy ends them), not when they are empty.
    pub gitlab_parent: Option<PathBuf>,
}

/// What a job is bound to.
struct Binding {
    identity: Identity,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn new_job_id() -> Result<String, String> {
    crate::random::id::<6>("job").map_err(|e| format!("cannot make a job id: {e}"))
}

impl JobControl {
    /// No token: `unauthenticated`, unbounded. A token: verified, bound until the issuer's
    /// `max_binding_lifetime` from now (the token's own short `exp` only matters at this moment).
    async fn binding(&self, token: Option<String>) -> Result<Binding, String> {
        let Some(token) = token else {
            return Ok(Binding {
                identity: Identity::unauthenticated(),
                expires_at: None,
            });
        };
        match self.verifier.verify(&token).await {
            Ok(v) => Ok(Binding {
                identity: v.identity,
                expires_at: Some(
                    chrono::Utc::now()
                        + chrono::Duration::from_std(v.max_binding)
                            .unwrap_or(chrono::Duration::MAX),
                ),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "job not bound");
                Err(e.to_string())
            }
        }
    }

    pub async fn create_job(&self, token: Option<String>) -> Result<JobRecord, String> {
        let binding = self.binding(token).await?;
        let id = new_job_id()?;
        let parent = self.job_cgroup_parent.clone();
        let path = cgroup::create(&self.cgroup_root, &parent, &id).map_err(|e| e.to_string())?;
        match self.register(id, path.clone(), true, binding).await {
            Ok(job) => Ok(job),
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    /// A GitLab job's cgroup `<root>/<parent>/<name>`, created and attached unbound (its token
    /// binds it later, see [`JobControl::bind`]). A cgroup of that name that is no job's is
    /// stale (a gateway stopped before it removed it): removed first if empty, else refused.
    pub async fn create_gitlab_job(&self, parent: &str, name: &str) -> Result<Arc<Job>, String> {
        let parent_path = self.cgroup_root.join(parent);
        if let Some(job) = self
            .jobs
            .list()
            .into_iter()
            .find(|j| parent_path.starts_with(&j.cgroup_path))
        {
            return Err(format!(
                "{} is inside job {} (attached): docker.gitlab.cgroup_parent must not be attached, the gateway attaches each GitLab job's cgroup itself",
                parent_path.display(),
                job.id
            ));
        }
        let stale = parent_path.join(name);
        if stale.exists() {
            std::fs::remove_dir(&stale).map_err(|e| {
                format!(
                    "cgroup {} exists and is no job's; cannot remove it: {e}",
                    stale.display()
                )
            })?;
            tracing::warn!(cgroup = %stale.display(), "removed a stale GitLab job cgroup");
        }
        let path = cgroup::create(&self.cgroup_root, parent, name).map_err(|e| e.to_string())?;
        let unbound = Binding {
            identity: Identity::unauthenticated(),
            expires_at: None,
        };
        match self
            .register(new_job_id()?, path.clone(), true, unbound)
            .await
        {
            Ok(record) => self
                .jobs
                .by_id(&record.id)
                .ok_or_else(|| format!("job {} ended as it was made", record.id)),
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    /// Binds a job that runs unbound to `identity` (verified by the caller) until `expires_at`:
    /// its kernel-path grants, its record, and what its next connections are decided as.
    pub async fn bind(
        &self,
        job: &Job,
        identity: Identity,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Arc<Job>, String> {
        let grants = self.grants.compile(&identity, expires_at);
        let mut dataplane = self.dataplane.lock().await;
        dataplane
            .set_grants(job.cgroup_id, &grants)
            .map_err(|e| e.to_string())?;
        let bound = Job {
            id: job.id.clone(),
            cgroup_path: job.cgroup_path.clone(),
            cgroup_id: job.cgroup_id,
            slot: job.slot,
            owned: job.owned,
            identity,
            binding_expires_at: expires_at,
            created_at: job.created_at.clone(),
            open_connections: Default::default(),
        };
        self.store
            .bind_job(bound.record())
            .await
            .map_err(|e| e.to_string())?;
        let bound = self.jobs.insert(bound);
        drop(dataplane);
        tracing::info!(job = %bound.id, identity = %bound.identity.subject, "job bound");
        Ok(bound)
    }

    pub async fn attach(&self, given: &str, token: Option<String>) -> Result<JobRecord, String> {
        let binding = self.binding(token).await?;
        let path = cgroup::resolve(&self.cgroup_root, given).map_err(|e| e.to_string())?;
        if self.own_cgroup.starts_with(&path) {
            return Err(format!(
                "refusing to attach to {}: the gateway itself runs in that cgroup or below it",
                path.display()
            ));
        }
        if let Some(job) = self.jobs.by_path(&path) {
            return Err(format!(
                "cgroup {} is already attached as {}",
                path.display(),
                job.id
            ));
        }
        if let Some(job) = self
            .jobs
            .list()
            .into_iter()
            .find(|j| path.starts_with(&j.cgroup_path))
        {
            return Err(format!(
                "cgroup {} is inside job {} already",
                path.display(),
                job.id
            ));
        }
        self.register(new_job_id()?, path, false, binding).await
    }

    /// Attaches the programs, records the job, and only then makes it known.
    async fn register(
        &self,
        id: String,
        path: PathBuf,
        owned: bool,
        binding: Binding,
    ) -> Result<JobRecord, String> {
        let cgroup_id = cgroup::cgroup_id(&path).map_err(|e| e.to_string())?;
        let grants = self.grants.compile(&binding.identity, binding.expires_at);
        let mut dataplane = self.dataplane.lock().await;
        let slot = dataplane
            .attach(&path, cgroup_id, &grants)
            .map_err(|e| e.to_string())?;
        let job = Job {
            id,
            cgroup_path: path,
            cgroup_id,
            slot,
            owned,
            identity: binding.identity,
            binding_expires_at: binding.expires_at,
            created_at: now(),
            open_connections: Default::default(),
        };
        let record = job.record();
        if let Err(e) = self.store.insert_job(record.clone()).await {
            let _ = dataplane.detach(cgroup_id);
            self.connections.purge(|s| s != slot);
            dataplane.release_slot(slot);
            return Err(e.to_string());
        }
        // Known before the slot is free for another job.
        self.jobs.insert(job);
        drop(dataplane);
        tracing::info!(
            job = %record.id,
            cgroup = %record.cgroup_path,
            owned,
            issuer = record.identity.issuer.as_deref().unwrap_or("-"),
            identity = %record.identity.subject,
            bound_until = record.binding_expires_at.as_deref().unwrap_or("-"),
            "job attached"
        );
        Ok(record)
    }

    pub async fn end_job_request(
        &self,
        job_id: Option<String>,
        given: Option<String>,
    ) -> Result<String, String> {
        let job = match (job_id, given) {
            (Some(id), _) => match self.jobs.by_id(&id) {
                Some(job) => job,
                // Ending is idempotent: the reaper may have ended an owned job whose processes
                // are all gone before `gateway run` asked.
                None if self.store.job_ended(id.clone()).await.unwrap_or(false) => {
                    return Ok(id);
                }
                None => return Err(format!("no active job {id}")),
            },
            (None, Some(given)) => {
                let path = cgroup::resolve(&self.cgroup_root, &given).map_err(|e| e.to_string())?;
                self.jobs
                    .by_path(&path)
                    .ok_or_else(|| format!("cgroup {} is not attached", path.display()))?
            }
            (None, None) => return Err("name a job id or a cgroup".into()),
        };
        self.end_job(&job).await?;
        Ok(job.id.clone())
    }

    /// Detaches the programs; for owned jobs kills what is left and removes the cgroup. Sessions stay.
    pub async fn end_job(&self, job: &Job) -> Result<(), String> {
        self.settle_kernel_path(job).await;
        {
            let mut dataplane = self.dataplane.lock().await;
            dataplane.detach(job.cgroup_id).map_err(|e| e.to_string())?;
            // Nothing removes the job's waiting records any more; what it went over its budgets
            // by is recorded before its slot can go to another job.
            self.connections.purge(|s| s != job.slot);
            budget::record_job_summary(&self.recorder, job).await;
        }
        if job.owned {
            let path = job.cgroup_path.clone();
            tokio::task::spawn_blocking(move || {
                cgroup::kill_and_remove(&path, Duration::from_secs(5))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        }
        match self
            .store
            .close_orphaned_kernel_sessions(job.id.clone())
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(job = %job.id, sessions = n, "job ended with kernel-path connections open; closed without byte counts")
            }
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "cannot close the job's open kernel-path sessions")
            }
        }
        // Its processes are gone: the containers, networks and volumes it made go too (nothing
        // of it may run on, or restart, outside the job).
        self.containers.remove_job(&job.id).await;
        if job.owned {
            let path = job.cgroup_path.clone();
            let removed =
                tokio::task::spawn_blocking(move || cgroup::remove_v1_copies(&path)).await;
            if let Ok(Err(e)) = removed {
                tracing::warn!(job = %job.id, error = %e, "cannot remove the job's cgroups on the v1 hierarchies");
            }
        }
        self.store
            .end_job(job.id.clone())
            .await
            .map_err(|e| e.to_string())?;
        // Only whoever ended it frees its slot (the reaper and a request may race).
        if self.jobs.remove(job.cgroup_id).is_some() {
            self.dataplane.lock().await.release_slot(job.slot);
        }
        tracing::info!(job = %job.id, "job ended");
        Ok(())
    }

    /// Gives the job's kernel-path connections a moment to finish closing and their records to
    /// be read before the programs that record their close are detached (its process has
    /// usually just exited: the FIN exchange is under way). Bounded: a connection kept open
    /// ends with the job, without byte counts.
    async fn settle_kernel_path(&self, job: &Job) {
        let states = &self.recorder.job_states;
        let settled = || states.kernel_open(job.slot) == 0 && states.kernel_unread(job.slot) == 0;
        let deadline = tokio::time::Instant::now() + KERNEL_PATH_SETTLE;
        while !settled() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// After a restart: take back the jobs of the store whose cgroups still exist, make sure their
    /// programs are attached, and drop pinned links that belong to no job.
    pub async fn adopt_jobs(&self) -> Result<(), StoreError> {
        let interrupted = self.store.close_interrupted_sessions().await?;
        if interrupted > 0 {
            tracing::warn!(interrupted, "closed sessions a previous gateway left open");
        }
        let records = self.store.active_jobs().await?;
        self.recorder
            .budgets
            .baseline(0, None, self.recorder.job_states.suppressed(0));
        let mut dataplane = self.dataplane.lock().await;
        for r in records {
            let path = PathBuf::from(&r.cgroup_path);
            let alive = cgroup::cgroup_id(&path).is_ok_and(|id| id == r.cgroup_id);
            if !alive {
                let _ = dataplane.detach(r.cgroup_id);
                self.store.end_job(r.id.clone()).await?;
                tracing::info!(job = %r.id, "job's cgroup is gone; ended");
                continue;
            }
            let binding_expires_at = r
                .binding_expires_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc));
            let grants = self.grants.compile(&r.identity, binding_expires_at);
            let slot = match dataplane.attach(&path, r.cgroup_id, &grants) {
                Ok(slot) => slot,
                Err(e) => {
                    tracing::error!(job = %r.id, error = %e, "cannot re-attach adopted job");
                    0
                }
            };
            // What its counters hold was summarised by the daemon before (or is zero).
            if slot != 0 {
                self.recorder.budgets.baseline(
                    slot,
                    Some(&r.id),
                    self.recorder.job_states.suppressed(slot),
                );
            }
            self.jobs.insert(Job {
                id: r.id.clone(),
                cgroup_path: path,
                cgroup_id: r.cgroup_id,
                slot,
                owned: r.owned,
                identity: r.identity,
                binding_expires_at,
                created_at: r.created_at,
                open_connections: Default::default(),
            });
            tracing::info!(job = %r.id, "adopted job");
        }
        for cgroup_id in dataplane.attached() {
            if self.jobs.for_cgroup_exact(cgroup_id).is_none() {
                tracing::info!(cgroup_id, "removing pinned links of no known job");
                let _ = dataplane.detach(cgroup_id);
            }
        }
        // Records of jobs that ended while no daemon ran.
        let live: Vec<u32> = self.jobs.list().iter().map(|j| j.slot).collect();
        let purged = self.connections.purge(|s| live.contains(&s));
        if purged > 0 {
            tracing::info!(
                purged,
                "removed waiting connect records of jobs that are gone"
            );
        }
        Ok(())
    }
}

/// Ends jobs whose cgroup disappeared, and owned jobs whose processes are all gone.
pub async fn reap_loop(jobs: Arc<JobControl>, shutdown: CancellationToken) {
    // An owned job is only reaped empty after this long (its first process may not have moved in yet).
    const EMPTY_GRACE: Duration = Duration::from_secs(30);
    let mut seen_populated: std::collections::HashSet<String> = Default::default();
    let started = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = shutdown.cancelled() => return,
        }
        for job in jobs.jobs.list() {
            let populated = match cgroup::populated(&job.cgroup_path) {
                Ok(p) => p,
                Err(CgroupError::Missing { .. }) => {
                    if let Err(e) = jobs.end_job(&job).await {
                        tracing::warn!(job = %job.id, error = %e, "ending vanished job");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot read job cgroup");
                    continue;
                }
            };
            if populated {
                seen_populated.insert(job.id.clone());
                continue;
            }
            let old_enough = job_age(&job) > EMPTY_GRACE && started.elapsed() > EMPTY_GRACE;
            // A GitLab job's cgroup is empty between its containers (one per stage).
            let gitlab = jobs
                .gitlab_parent
                .as_ref()
                .is_some_and(|p| job.cgroup_path.starts_with(p));
            if job.owned && !gitlab && (seen_populated.contains(&job.id) || old_enough) {
                seen_populated.remove(&job.id);
                if let Err(e) = jobs.end_job(&job).await {
                    tracing::warn!(job = %job.id, error = %e, "reaping finished job");
                }
            }
        }
    }
}

fn job_age(job: &Job) -> Duration {
    chrono::DateTime::parse_from_rfc3339(&job.created_at)
        .ok()
        .and_then(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .to_std()
                .ok()
        })
        .unwrap_or_default()
}
