//! The gateway daemon and CLI: transparent interception of agent jobs' connections (eBPF), process
//! attribution, policy, and recording.
//!
//! The layers, who may call whom and where a new protocol goes: `docs/architecture.md`.

pub mod address;
pub mod approval;
pub mod budget;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod docker_engine;
pub mod dockerapi;
pub mod ebpf;
pub mod glob;
pub mod hex;
pub mod identity;
pub mod intercept;
pub mod jobs;
pub mod lifecycle;
pub mod mask;
pub mod policy;
pub mod procfs;
pub mod protocol;
pub mod random;
pub mod record;
pub mod shell;
pub mod sql;
pub mod strict_json;
pub mod targets;
pub mod time;
pub mod tls_ca;
pub mod visible;
