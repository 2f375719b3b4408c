//! Just-in-time approvals: a rule whose action is `require_approval` holds the command; the protocol
//! handler submits it here and waits; people decide (CLI, web page); webhooks tell them.

pub mod model;
pub mod notify;
pub mod service;
pub mod store;
pub mod web;

pub use service::{ApprovalOutcome, ApprovalRequest, Approvals, Submission, Ticket, peer_closed};
