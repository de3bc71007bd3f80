//! Phase 5's messages: the request a lane gets and the answer the client gets back.
//!
//! - the client's headers become the upstream set once per request ([`upstream_headers`]):
//!   hop-by-hop headers dropped, the tenant and request-id headers set; each try then adds its
//!   epoch ([`build_request`]);
//! - a lane's answer is streamed back with its hop-by-hop headers dropped ([`client_response`]);
//! - a cell's refusal that the router waits on is read whole first ([`read_refusal`]), so the
//!   lane's HTTP/1.1 connection is kept.

use std::time::Instant;

use axum::{
    body::Body,
    http::{HeaderMap, HeaderName, HeaderValue, Method, Uri},
    response::Response,
};
use cellstack_api::wire::header_name as names;

/// A cell's refusal is a small JSON body; one up to this size is read whole so its HTTP/1.1
/// connection is kept (dropping an unread body closes the connection).
const REFUSAL_BODY_LIMIT: usize = 4096;

/// Headers that describe one hop, not the request.
const HOP_BY_HOP: [HeaderName; 8] = [
    axum::http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    axum::http::header::TRANSFER_ENCODING,
    axum::http::header::TE,
    axum::http::header::TRAILER,
    axum::http::header::UPGRADE,
    axum::http::header::HOST,
];

/// The headers sent to lanes, built once per request from the client's: hop-by-hop ones
/// removed, the tenant and request-id headers set. The epoch is set per try.
pub fn upstream_headers(
    mut headers: HeaderMap,
    tenant: &str,
    request_id: HeaderValue,
) -> HeaderMap {
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    // A tenant read from the header is already there, once, as it was sent.
    let mut sent = headers.get_all(names::TENANT).iter();
    let as_sent = sent
        .next()
        .is_some_and(|v| v.as_bytes() == tenant.as_bytes())
        && sent.next().is_none();
    if !as_sent && let Ok(v) = HeaderValue::from_str(tenant) {
        headers.insert(names::TENANT, v);
    }
    headers.insert(names::REQUEST_ID, request_id);
    headers
}

/// A request id: 16 hex digits of `random`, formatted without a heap string.
pub fn new_request_id(random: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((random >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Builds one try's request to a lane: the client's method, the prepared headers with this
/// try's epoch, and the body. The URI is origin-form; [`crate::upstream::Upstreams`] adds
/// `Host`/`:authority`.
pub fn build_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    epoch: Option<u64>,
    body: Body,
) -> axum::http::Request<Body> {
    let mut req = axum::http::Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    let h = req.headers_mut();
    *h = headers.clone();
    match epoch {
        Some(e) => {
            h.insert(names::EPOCH, HeaderValue::from(e));
        }
        None => {
            h.remove(names::EPOCH);
        }
    }
    req
}

/// A lane's answer as the client gets it: streamed, without its hop-by-hop headers.
pub fn client_response(mut res: axum::http::Response<Body>) -> Response {
    for h in &HOP_BY_HOP {
        res.headers_mut().remove(h);
    }
    res
}

/// Reads a small cell answer whole, until `until` at the latest, so its connection goes back to
/// the lane, and gives the same answer back. A body that fails, is too large or late is left out
/// (the status and headers carry the refusal).
pub async fn read_refusal(
    res: axum::http::Response<Body>,
    until: Instant,
) -> axum::http::Response<Body> {
    let (mut parts, body) = res.into_parts();
    let read = tokio::time::timeout_at(
        tokio::time::Instant::from_std(until),
        axum::body::to_bytes(body, REFUSAL_BODY_LIMIT),
    )
    .await;
    match read {
        Ok(Ok(bytes)) => axum::http::Response::from_parts(parts, Body::from(bytes)),
        _ => {
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            axum::http::Response::from_parts(parts, Body::empty())
        }
    }
}

#[cfg(test)]
mod tests {
    use cellstack_api::wire::header;

    use super::*;

    #[test]
    fn request_ids_are_16_hex_digits() {
        assert_eq!(new_request_id(0x0123_4567_89ab_cdef), "0123456789abcdef");
        assert_eq!(new_request_id(0), "0000000000000000");
        assert_eq!(new_request_id(u64::MAX), "ffffffffffffffff");
    }

    #[test]
    fn upstream_headers_drop_hop_by_hop_and_name_tenant_and_request() {
        let mut client = HeaderMap::new();
        client.insert("connection", HeaderValue::from_static("keep-alive"));
        client.insert("host", HeaderValue::from_static("router.example"));
        client.insert("x-other", HeaderValue::from_static("kept"));
        client.insert(header::EPOCH, HeaderValue::from_static("7"));
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        client.insert("traceparent", HeaderValue::from_static(traceparent));
        let h = upstream_headers(client, "acme", HeaderValue::from_static("rid"));
        assert!(h.get("connection").is_none() && h.get("host").is_none());
        assert_eq!(h["x-other"], "kept");
        // Trace context is not a trust decision: it passes (with traces on, each try replaces
        // it with its own span's, see `telemetry::propagate`).
        assert_eq!(h["traceparent"], traceparent);
        assert_eq!(h[header::TENANT], "acme");
        assert_eq!(h[header::REQUEST_ID], "rid");
        let uri = Uri::from_static("/v1/whoami?x=1");
        let req = build_request(&Method::PUT, &uri, &h, Some(3), Body::empty());
        assert_eq!(req.headers()[header::EPOCH], "3");
        assert_eq!(req.uri(), "/v1/whoami?x=1");
        assert_eq!(req.method(), Method::PUT);
        let req = build_request(&Method::GET, &uri, &h, None, Body::empty());
        assert!(req.headers().get(header::EPOCH).is_none());
    }
}
