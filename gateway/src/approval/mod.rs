//! Just-in-time approvals: held commands, approvers, decisions, grants.

mod hook;
pub mod model;

pub use hook::{ApprovalOutcome, ApprovalRequest, Approvals};
