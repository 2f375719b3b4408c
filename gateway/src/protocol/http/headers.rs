//! Header handling between the two connections: hop-by-hop headers end at the gateway (each side
//! gets its own framing), the job's copy of the credential header never reaches the upstream, and
//! what the recording keeps of headers never includes a secret.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::mask::body::BodyRules;
use serde_json::{Map, Value};

/// Headers about one connection (RFC 9110 §7.6.1), and the proxy ones the job has no business
/// sending to the upstream.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

const HOP_BY_HOP_NAMES: &[&str] = &["keep-alive", "proxy-connection"];

/// Removes hop-by-hop headers, and every header the `Connection` header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    for name in HOP_BY_HOP_NAMES {
        headers.remove(*name);
    }
}

/// The comma-separated tokens of every `name` header, trimmed (`Sec-WebSocket-Protocol`).
pub(super) fn tokens(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    let mut out = Vec::new();
    for value in headers.get_all(name) {
        let text = String::from_utf8_lossy(value.as_bytes());
        out.extend(
            text.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        );
    }
    out
}

/// Whether the client said it reads trailers (`TE: trailers`, the one TE value HTTP/2 allows,
/// which gRPC requires end to end).
pub(super) fn wants_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.split(';').next().unwrap_or("").trim() == "trailers")
        })
    })
}

/// Headers whose values the recording never keeps.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
];

/// Headers for the recording and approvers: names in lower case, secret values replaced by
/// their length, the others masked by `masking` (request headers are recorded as the job sent
/// them, so they are masked here; response headers arrive masked already).
pub(super) fn recorded(
    headers: &HeaderMap,
    also_secret: Option<&HeaderName>,
    masking: Option<&BodyRules>,
) -> Value {
    let mut out = Map::new();
    for (name, value) in headers {
        let secret = SECRET_HEADERS.contains(&name.as_str()) || Some(name) == also_secret;
        let shown = if secret {
            Value::String(format!("[redacted: {} bytes]", value.len()))
        } else {
            let text = String::from_utf8_lossy(value.as_bytes());
            Value::String(match masking {
                Some(rules) => rules.mask_str(&text).into_owned(),
                None => text.into_owned(),
            })
        };
        match out.get_mut(name.as_str()) {
            Some(Value::Array(list)) => list.push(shown),
            Some(first) => {
                let first = first.take();
                out.insert(name.as_str().into(), Value::Array(vec![first, shown]));
            }
            None => {
                out.insert(name.as_str().into(), shown);
            }
        }
    }
    Value::Object(out)
}

/// Masks response header values as the target's masking says; returns the matches replaced.
pub(super) fn mask(headers: &mut HeaderMap, rules: &BodyRules) -> u64 {
    let mut masked = 0;
    for (name, value) in headers.iter_mut() {
        if let Some((bytes, n)) = rules.mask_header(name.as_str(), value.as_bytes())
            && let Ok(v) = HeaderValue::from_bytes(&bytes)
        {
            *value = v;
            masked += n as u64;
        }
    }
    masked
}

/// Replaces any secret in response header values (a server echoing the credential).
pub(super) fn redact_echoes(headers: &mut HeaderMap, secrets: &[Vec<u8>]) -> u64 {
    let mut redacted = 0;
    for value in headers.values_mut() {
        let mut bytes = value.as_bytes().to_vec();
        let mut changed = false;
        for secret in secrets {
            while let Some(at) = memchr::memmem::find(&bytes, secret) {
                bytes[at..at + secret.len()].fill(b'*');
                changed = true;
                redacted += 1;
            }
        }
        if changed && let Ok(v) = HeaderValue::from_bytes(&bytes) {
            *value = v;
        }
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret-route".parse().unwrap());
        h.insert("x-secret-route", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn the_recording_keeps_no_secret_header_value() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        h.insert("x-token", "abc".parse().unwrap());
        h.append("accept", "a".parse().unwrap());
        h.append("accept", "b".parse().unwrap());
        let name = HeaderName::from_static("x-token");
        let v = recorded(&h, Some(&name), None);
        assert_eq!(v["authorization"], "[redacted: 10 bytes]");
        assert_eq!(v["x-token"], "[redacted: 3 bytes]");
        assert_eq!(v["accept"], serde_json::json!(["a", "b"]));
    }

    #[test]
    fn masking_reads_header_values_but_not_framing() {
        let rules = BodyRules::new(
            vec!["r".into()],
            Vec::new(),
            vec![crate::mask::Detector::UsSsn],
        );
        let mut h = HeaderMap::new();
        h.insert("x-account-ssn", "123-45-6789".parse().unwrap());
        h.append("x-account-ssn", "none".parse().unwrap());
        h.insert("content-type", "text/plain; x=123-45-6789".parse().unwrap());
        assert_eq!(mask(&mut h, &rules), 1);
        let values: Vec<_> = h.get_all("x-account-ssn").iter().collect();
        assert_eq!(values, ["[masked:us_ssn]", "none"]);
        assert_eq!(h["content-type"], "text/plain; x=123-45-6789");
    }

    #[test]
    fn recorded_request_headers_are_masked_as_typed_and_percent_encoded() {
        let rules = BodyRules::new(
            vec!["r".into()],
            Vec::new(),
            vec![crate::mask::Detector::Email, crate::mask::Detector::UsSsn],
        );
        let mut h = HeaderMap::new();
        h.insert("x-debug", "alice@example.com".parse().unwrap());
        h.insert(
            "referer",
            "https://a.test/?ssn=123%2D45%2D6789".parse().unwrap(),
        );
        h.insert("authorization", "Bearer alice@example.com".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        let v = recorded(&h, None, Some(&rules));
        assert_eq!(v["x-debug"], "[masked:email]");
        assert_eq!(v["referer"], "https://a.test/?ssn=%5Bmasked%3Aus_ssn%5D");
        assert_eq!(v["authorization"], "[redacted: 24 bytes]");
        assert_eq!(v["accept"], "*/*");
    }

    #[test]
    fn tokens_are_read_across_headers_and_commas() {
        let mut h = HeaderMap::new();
        h.append(
            "sec-websocket-protocol",
            "chat.v1, chat.v2".parse().unwrap(),
        );
        h.append("sec-websocket-protocol", " ,x".parse().unwrap());
        let name = header::SEC_WEBSOCKET_PROTOCOL;
        assert_eq!(tokens(&h, &name), ["chat.v1", "chat.v2", "x"]);
        assert!(tokens(&HeaderMap::new(), &name).is_empty());
    }

    #[test]
    fn echoed_secrets_leave_response_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-echo", "got Bearer abcdefgh1234".parse().unwrap());
        assert_eq!(redact_echoes(&mut h, &[b"abcdefgh1234".to_vec()]), 1);
        assert_eq!(h["x-echo"], "got Bearer ************");
    }
}
