//! Every refusal the cell answers with: the status, headers and JSON body of the wire contract
//! in `cellstack_api::wire`.

use axum::{
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use cellstack_api::wire::{ErrorBody, ErrorCode, header};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub body: ErrorBody,
    pub extra: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            body: ErrorBody::new(code, message),
            extra: vec![],
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.body.retry_after_seconds = Some(seconds.min(u64::from(u32::MAX)) as u32);
        self
    }

    pub fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        self.extra.push((name, value.to_string()));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.body.error.status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ERROR,
            HeaderValue::from_static(self.body.error.as_str()),
        );
        if let Some(s) = self.body.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(e) = self.body.current_epoch {
            headers.insert(header::EPOCH, HeaderValue::from(e));
        }
        if let Some(to) = self
            .body
            .moved_to
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            headers.insert(header::MOVED_TO, to);
        }
        for (name, value) in &self.extra {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
        (status, headers, axum::Json(self.body)).into_response()
    }
}

/// Reads a request body whole, up to `max` bytes: `413` past it, `408` when the client does not
/// send it within the listener's body-read bound (`--body-read-timeout-ms`), `400` when it goes
/// away or sends a malformed body. `what` names the body in the messages.
pub async fn read_body(
    body: axum::body::Body,
    max: usize,
    what: &str,
) -> Result<axum::body::Bytes, ApiError> {
    use cellstack_runtime::listener::{BodyReadError, body_read_error};
    axum::body::to_bytes(body, max)
        .await
        .map_err(|e| match body_read_error(&e) {
            BodyReadError::TooLarge => ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("{what} is larger than {max} bytes"),
            ),
            BodyReadError::TimedOut => ApiError::new(
                ErrorCode::RequestTimeout,
                format!("{what} did not arrive in time; nothing was done"),
            ),
            BodyReadError::Failed => {
                ApiError::bad_request(format!("{what} could not be read: {e}"))
            }
        })
}
