//! What the job's client reads when the gateway answers instead of the upstream: an RFC 9457
//! problem document, so tools and agents can tell a gateway refusal from the server's own error.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use serde_json::json;

use super::Body;

/// Who answered, for the `x-gateway` header the job can test.
pub(super) const GATEWAY_HEADER: &str = "x-gateway";

/// A problem response. `extra` members (rule, approval id…) are added to the document.
pub(super) fn response(
    status: StatusCode,
    title: &str,
    detail: &str,
    extra: serde_json::Value,
) -> Response<Body> {
    let mut doc = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            doc.insert(k.clone(), v.clone());
        }
    }
    let body = Full::new(Bytes::from(doc.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(GATEWAY_HEADER, HeaderValue::from_static("refused"));
    response
}

/// Whether a request is a gRPC call (`application/grpc`, `application/grpc+proto`…).
pub(super) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            let t = t.trim().to_ascii_lowercase();
            t == "application/grpc" || t.starts_with("application/grpc+")
        })
}

/// The gRPC status of a refusal, by its HTTP status.
fn grpc_code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 | 413 | 415 | 417 => 3, // INVALID_ARGUMENT
        401 => 16,                  // UNAUTHENTICATED
        403 | 405 | 421 => 7,       // PERMISSION_DENIED
        408 => 4,                   // DEADLINE_EXCEEDED
        429 => 8,                   // RESOURCE_EXHAUSTED
        502..=504 => 14,            // UNAVAILABLE
        _ => 13,                    // INTERNAL
    }
}

/// A gateway refusal to a gRPC call, as a gRPC client reads it: HTTP 200 with the status in a
/// trailers-only response (`grpc-status`, and `grpc-message` with the problem's title, detail and
/// rule). Responses of the upstream pass unchanged.
pub(super) async fn as_grpc_status(response: Response<Body>) -> Response<Body> {
    if response
        .headers()
        .get(GATEWAY_HEADER)
        .map(HeaderValue::as_bytes)
        != Some(b"refused")
    {
        return response;
    }
    let status = response.status();
    let doc: serde_json::Value = match response.into_body().collect().await {
        Ok(body) => serde_json::from_slice(&body.to_bytes()).unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    let text = |key: &str| doc[key].as_str().unwrap_or_default().to_string();
    let mut message = format!("{}: {}", text("title"), text("detail"));
    if let Some(rule) = doc["rule"].as_str() {
        message.push_str(&format!(" (rule {rule:?})"));
    }
    // grpc-message is percent-encoded UTF-8 (gRPC over HTTP/2).
    let encoded = percent_encoding::utf8_percent_encode(&message, GRPC_MESSAGE_ESCAPES).to_string();
    let mut out = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    let headers = out.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(grpc_code(status)));
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", v);
    }
    headers.insert(GATEWAY_HEADER, HeaderValue::from_static("refused"));
    out
}

/// What grpc-message escapes: everything outside printable ASCII, and `%`.
const GRPC_MESSAGE_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refusal_to_a_grpc_call_is_a_grpc_status_naming_the_rule() {
        let refusal = response(
            StatusCode::FORBIDDEN,
            "Denied by gateway policy",
            "no secrets, 100%",
            json!({ "rule": "no-secrets" }),
        );
        let grpc = as_grpc_status(refusal).await;
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "7");
        assert_eq!(
            grpc.headers()["grpc-message"],
            "Denied by gateway policy: no secrets, 100%25 (rule \"no-secrets\")"
        );
        assert_eq!(grpc.headers()[header::CONTENT_TYPE], "application/grpc");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/grpc+proto".parse().unwrap(),
        );
        assert!(is_grpc(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "application/grpc-web".parse().unwrap(),
        );
        assert!(!is_grpc(&headers));
    }
}
