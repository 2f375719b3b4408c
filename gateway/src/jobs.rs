//! The jobs the daemon knows: cgroups with the programs attached, and who each one is.

use parking_lot::RwLock;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::{cgroup, identity::Identity, record::JobRecord};

#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub cgroup_path: PathBuf,
    pub cgroup_id: u64,
    /// Slot of the job's counters in the kernel (`JOB_STATES`), linked to its cgroup.
    pub slot: u32,
    /// Created by `gateway run`: the daemon removes the cgroup when the job is over.
    pub owned: bool,
    pub identity: Identity,
    /// After this the job's connections are refused (`None`: no limit, unauthenticated jobs).
    pub binding_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: String,
    /// Connections of the job the gateway is serving now (see [`ConnectionSlot`]).
    pub open_connections: AtomicUsize,
}

/// One of a job's open connections, counted while it lives.
pub struct ConnectionSlot(Arc<Job>);

impl ConnectionSlot {
    /// A slot, or how many connections the job has open already when that is `max` or more.
    pub fn take(job: &Arc<Job>, max: usize) -> Result<ConnectionSlot, usize> {
        let open = job.open_connections.fetch_add(1, Ordering::Relaxed);
        let slot = ConnectionSlot(job.clone());
        if open >= max {
            return Err(open);
        }
        Ok(slot)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Job {
    pub fn record(&self) -> JobRecord {
        JobRecord {
            id: self.id.clone(),
            cgroup_path: self.cgroup_path.display().to_string(),
            cgroup_id: self.cgroup_id,
            owned: self.owned,
            identity: self.identity.clone(),
            binding_expires_at: self
                .binding_expires_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            created_at: self.created_at.clone(),
            ended_at: None,
        }
    }

    /// Why the job's identity may no longer be used, once its binding has run out.
    pub fn binding_expired(&self) -> Option<String> {
        let at = self.binding_expires_at?;
        (chrono::Utc::now() >= at).then(|| {
            format!(
                "identity binding of job {} ({}) expired at {}; bind the job again with a fresh token",
                self.id,
                self.identity.subject,
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
    }
}

#[derive(Default)]
pub struct Jobs {
    by_cgroup: RwLock<HashMap<u64, Arc<Job>>>,
    /// Descendant cgroup id → the job it belongs to (jobs may create child cgroups).
    descendants: RwLock<HashMap<u64, u64>>,
}

impl Jobs {
    pub fn insert(&self, job: Job) -> Arc<Job> {
        let job = Arc::new(job);
        self.by_cgroup.write().insert(job.cgroup_id, job.clone());
        job
    }

    pub fn remove(&self, cgroup_id: u64) -> Option<Arc<Job>> {
        self.descendants.write().retain(|_, j| *j != cgroup_id);
        self.by_cgroup.write().remove(&cgroup_id)
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<Job>> {
        self.list().into_iter().find(|j| j.id == id)
    }

    pub fn by_slot(&self, slot: u32) -> Option<Arc<Job>> {
        if slot == 0 {
            return None;
        }
        self.by_cgroup
            .read()
            .values()
            .find(|j| j.slot == slot)
            .cloned()
    }

    /// The job of something the kernel programs saw: by the slot they read, else by its cgroup.
    pub fn of_kernel_record(&self, slot: u32, cgroup_id: u64) -> Option<Arc<Job>> {
        self.by_slot(slot).or_else(|| self.for_cgroup(cgroup_id))
    }

    pub fn by_path(&self, path: &Path) -> Option<Arc<Job>> {
        self.list().into_iter().find(|j| j.cgroup_path == path)
    }

    pub fn list(&self) -> Vec<Arc<Job>> {
        let mut jobs: Vec<_> = self.by_cgroup.read().values().cloned().collect();
        jobs.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        jobs
    }

    pub fn for_cgroup_exact(&self, id: u64) -> Option<Arc<Job>> {
        self.by_cgroup.read().get(&id).cloned()
    }

    /// The job a connection from cgroup `id` belongs to: the job's own cgroup or a descendant.
    pub fn for_cgroup(&self, id: u64) -> Option<Arc<Job>> {
        let by_cgroup = self.by_cgroup.read();
        if let Some(job) = by_cgroup.get(&id) {
            return Some(job.clone());
        }
        if let Some(job_cgroup) = self.descendants.read().get(&id) {
            return by_cgroup.get(job_cgroup).cloned();
        }
        let job = by_cgroup
            .values()
            .find(|j| cgroup::find_by_id(&j.cgroup_path, id).is_some())?
            .clone();
        drop(by_cgroup);
        self.descendants.write().insert(id, job.cgroup_id);
        Some(job)
    }

    /// Whether a process's cgroup (as in /proc/PID/cgroup, relative to `root`) is inside a job.
    pub fn contains_cgroup(&self, root: &Path, relative: &str) -> bool {
        let path = root.join(relative.trim_start_matches('/'));
        self.list().iter().any(|j| path.starts_with(&j.cgroup_path))
    }
}
