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
