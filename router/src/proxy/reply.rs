//! The router's own answers — refusals and failures it gives instead of a cell's answer — in
//! the cell's wire format: the status of the error code, the `x-cellstack-error` header, a JSON
//! [`ErrorBody`], and `Retry-After: 1` where retrying shortly can help.

use axum::{
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use cellstack_api::wire::{ErrorBody, ErrorCode, header_name as names};

pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    let body = ErrorBody::new(code, message);
    let mut res = (
        StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_GATEWAY),
        axum::Json(&body),
    )
        .into_response();
    res.headers_mut()
        .insert(names::ERROR, HeaderValue::from_static(code.as_str()));
    if matches!(
        code,
        ErrorCode::Overloaded | ErrorCode::RateLimited | ErrorCode::Unavailable
    ) {
        res.headers_mut()
            .insert(names::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

/// A 401 for a request without a valid token (`--tenant-from jwt`): `unauthorized` with the
/// reason, and the `WWW-Authenticate` challenge of RFC 6750.
pub fn unauthorized(e: &crate::jwt::TokenError) -> Response {
    let mut res = error(ErrorCode::Unauthorized, e.to_string());
    res.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        crate::jwt::www_authenticate(e),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_carries_its_code_and_retry_after_only_where_retrying_helps() {
        let res = error(ErrorCode::Overloaded, "busy");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[names::ERROR], "overloaded");
        assert_eq!(res.headers()[names::RETRY_AFTER], "1");
        let res = error(ErrorCode::UnknownTenant, "who");
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert!(res.headers().get(names::RETRY_AFTER).is_none());
    }
}
