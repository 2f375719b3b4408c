//! Timestamps as the gateway records and shows them.

/// Now, as RFC 3339 UTC with milliseconds: sortable as text, readable as it is.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
