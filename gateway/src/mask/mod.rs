//! Masking: value detectors that find sensitive substrings (keys, tokens, card numbers) in text.
//!
//! The detectors are shared by every protocol handler; column rules come with the PostgreSQL
//! handler.

mod detectors;

pub use detectors::{Detector, redact};
