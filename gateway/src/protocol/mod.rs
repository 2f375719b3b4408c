//! Protocol handlers: each turns bytes into typed operations and back. They ask policy; they never
//! decide.

pub mod docker;
pub mod http;
pub mod postgres;
mod source_ports;
pub mod spares;
pub mod ssh;
pub mod tcp;
pub mod upstream_tls;
