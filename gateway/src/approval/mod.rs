//! Just-in-time approvals: held commands, approvers, decisions, grants.

pub mod model;
