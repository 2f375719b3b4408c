//! Cgroups a test creates and removes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::*;

/// A cgroup the test creates itself (to `gateway attach` it, like a CI runner would).
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Result<TestCgroup> {
        let path = cgroup2_root()?.join(format!("gwe-{name}-{}", unique_id()));
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(TestCgroup { path })
    }

    /// Runs e2e-probe inside this cgroup.
    pub fn probe(&self, args: &[&str]) -> Result<Value> {
        let out = Command::new(probe_bin())
            .arg("--cgroup")
            .arg(&self.path)
            .args(args)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).with_context(|| format!("probe {args:?}: {stdout}"))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
    }
}

/// Kills what is left in a cgroup subtree and removes it, deepest first.
pub fn remove_cgroup_tree(path: &Path) {
    if !path.exists() {
        return;
    }
    let _ = fs::write(path.join("cgroup.kill"), "1");
    wait_until(Duration::from_secs(5), || {
        fs::read_to_string(path.join("cgroup.events")).map_or(true, |e| e.contains("populated 0"))
    });
    fn remove(p: &Path) {
        if let Ok(entries) = fs::read_dir(p) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(p);
    }
    remove(path);
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 mount")
}
