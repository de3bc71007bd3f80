//! The HTTP contract between clients, the router and cells: header names, the answers a cell
//! gives that the router acts on, and the JSON error body. Nothing else in the workspace spells a
//! header name or decides what a status code means.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Header names. HTTP header names are case-insensitive; these are the lowercase forms.
pub mod header {
    /// The tenant a request belongs to (set by clients or derived by the router).
    pub const TENANT: &str = "x-cellstack-tenant";
    /// The tenant's epoch as the router knows it; a cell refuses an older one.
    /// Also set by a cell on a stale-epoch answer, carrying the current epoch.
    pub const EPOCH: &str = "x-cellstack-epoch";
    /// Priority class of a request: `high`, `normal` (default) or `low`.
    pub const PRIORITY: &str = "x-cellstack-priority";
    /// Request id, propagated end to end; the router generates one when absent.
    pub const REQUEST_ID: &str = "x-request-id";
    /// On a `moved` answer: the cell that now owns the tenant.
    pub const MOVED_TO: &str = "x-cellstack-moved-to";
    /// On every answer from a cell: the cell that produced it.
    pub const CELL: &str = "x-cellstack-cell";
    /// On every error answer from cellstack: the [`super::ErrorCode`], so a proxy can classify
    /// an answer without parsing the body.
    pub const ERROR: &str = "x-cellstack-error";
    /// Standard `Retry-After`, in seconds.
    pub const RETRY_AFTER: &str = "retry-after";
    /// IETF `RateLimit-*` fields (draft-ietf-httpapi-ratelimit-headers).
    pub const RATELIMIT_LIMIT: &str = "ratelimit-limit";
    pub const RATELIMIT_REMAINING: &str = "ratelimit-remaining";
    pub const RATELIMIT_RESET: &str = "ratelimit-reset";
}

/// The same names as [`http::HeaderName`]s, made at compile time (an invalid name would not
/// compile). A `HeaderMap` lookup by `&str` parses and validates the name on every call; a hot
/// path (the router's) looks its headers up with these.
pub mod header_name {
    use http::HeaderName;

    use super::header;

    pub const TENANT: HeaderName = HeaderName::from_static(header::TENANT);
    pub const EPOCH: HeaderName = HeaderName::from_static(header::EPOCH);
    pub const PRIORITY: HeaderName = HeaderName::from_static(header::PRIORITY);
    pub const REQUEST_ID: HeaderName = HeaderName::from_static(header::REQUEST_ID);
    pub const MOVED_TO: HeaderName = HeaderName::from_static(header::MOVED_TO);
    pub const CELL: HeaderName = HeaderName::from_static(header::CELL);
    pub const ERROR: HeaderName = HeaderName::from_static(header::ERROR);
    pub const RETRY_AFTER: HeaderName = HeaderName::from_static(header::RETRY_AFTER);
    pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static(header::RATELIMIT_LIMIT);
    pub const RATELIMIT_REMAINING: HeaderName =
        HeaderName::from_static(header::RATELIMIT_REMAINING);
    pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static(header::RATELIMIT_RESET);
}

/// Why cellstack refused or could not complete a request. Serialized in snake_case in the
/// [`header::ERROR`] header and the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The tenant id is missing or malformed.
    InvalidTenant,
    /// The router takes the tenant from a verified token, and the request's token is missing
    /// or not valid (bad signature, expired, wrong audience or issuer, no tenant claim).
    Unauthorized,
    /// No cell (or routing-table entry) knows the tenant.
    UnknownTenant,
    /// The request carried an older epoch than the cell's; the answer carries the current one.
    StaleEpoch,
    /// The tenant's writes are paused while it moves; retry after `Retry-After`.
    Fenced,
    /// The tenant lives in another cell now; [`header::MOVED_TO`] names it.
    Moved,
    /// The tenant is over its rate limit.
    RateLimited,
    /// The cell is overloaded and dropped this request, lowest priority first.
    Shed,
    /// The request itself is malformed (body, path, headers).
    BadRequest,
    /// The addressed item does not exist.
    NotFound,
    /// The body is larger than the service accepts.
    PayloadTooLarge,
    /// A dependency (the cell's datastore, an upstream) is unavailable.
    Unavailable,
    /// The router has no healthy upstream or its in-flight bound is reached.
    Overloaded,
    /// The upstream did not answer within the deadline.
    Timeout,
    /// The client did not send the whole request (its body) in time; nothing was done.
    RequestTimeout,
    /// The service failed while handling the request; it may or may not have taken effect.
    Internal,
    /// The cell's datastore did not confirm that enough replicas hold the write within the
    /// acknowledgement timeout (`WAIT`), or refused it for lack of replicas (`NOREPLICAS`): the
    /// write is not acknowledged. It may still have been applied on the primary (and may or may
    /// not survive a failover); retry after `Retry-After`.
    NotDurable,
    /// A conditional write (`If-Match` / `If-None-Match: *` of the tenant state API) found the
    /// item changed (or present) since it was read; nothing was written. Read it again.
    PreconditionFailed,
    /// The cell's service (behind the cell runtime) answered with something that is not valid
    /// HTTP or closed the connection mid-answer; it may or may not have taken effect.
    BadGateway,
    /// The cell's datastore lost the tenant's data (it came back without it): nothing is served
    /// for the tenant until the data is restored or the loss accepted; the TenantAssignment's
    /// `DataLost` condition says what was lost. Nothing was applied; retrying will not help
    /// until an operator acts. Also the answer for a tenant the cell has no record of while its
    /// datastore lacks the operator's confirmation (`admin::DATASTORE_PATH`): it may have come
    /// back empty, and the operator's next look says which (then with `Retry-After`).
    DataUnavailable,
}

impl ErrorCode {
    /// The HTTP status a cell or the router answers with for this code.
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidTenant | Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::UnknownTenant | Self::NotFound => 404,
            Self::RequestTimeout => 408,
            Self::StaleEpoch => 409,
            Self::PreconditionFailed => 412,
            Self::PayloadTooLarge => 413,
            Self::Moved => 421,
            Self::RateLimited => 429,
            Self::Fenced
            | Self::Shed
            | Self::Unavailable
            | Self::Overloaded
            | Self::NotDurable
            | Self::DataUnavailable => 503,
            Self::Timeout => 504,
            Self::Internal => 500,
            Self::BadGateway => 502,
        }
    }

    /// True when the answer guarantees the request had no effect, so even a non-idempotent
    /// request may be retried (elsewhere or later).
    pub const fn nothing_applied(self) -> bool {
        match self {
            Self::InvalidTenant
            | Self::Unauthorized
            | Self::UnknownTenant
            | Self::StaleEpoch
            | Self::Fenced
            | Self::Moved
            | Self::RateLimited
            | Self::Shed
            | Self::BadRequest
            | Self::PayloadTooLarge
            | Self::RequestTimeout
            | Self::Overloaded
            | Self::PreconditionFailed
            | Self::DataUnavailable => true,
            // A timeout or a dependency failure may have happened after the write landed; a
            // write without enough replica acknowledgements was applied on the primary.
            Self::NotFound
            | Self::Unavailable
            | Self::Timeout
            | Self::Internal
            | Self::BadGateway
            | Self::NotDurable => false,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidTenant => "invalid_tenant",
            Self::Unauthorized => "unauthorized",
            Self::UnknownTenant => "unknown_tenant",
            Self::StaleEpoch => "stale_epoch",
            Self::Fenced => "fenced",
            Self::Moved => "moved",
            Self::RateLimited => "rate_limited",
            Self::Shed => "shed",
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unavailable => "unavailable",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::RequestTimeout => "request_timeout",
            Self::Internal => "internal",
            Self::NotDurable => "not_durable",
            Self::DataUnavailable => "data_unavailable",
            Self::PreconditionFailed => "precondition_failed",
            Self::BadGateway => "bad_gateway",
        }
    }

    pub const ALL: [Self; 20] = [
        Self::InvalidTenant,
        Self::Unauthorized,
        Self::UnknownTenant,
        Self::StaleEpoch,
        Self::Fenced,
        Self::Moved,
        Self::RateLimited,
        Self::Shed,
        Self::BadRequest,
        Self::NotFound,
        Self::PayloadTooLarge,
        Self::Unavailable,
        Self::Overloaded,
        Self::Timeout,
        Self::RequestTimeout,
        Self::Internal,
        Self::NotDurable,
        Self::DataUnavailable,
        Self::PreconditionFailed,
        Self::BadGateway,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A header or body value that is not an [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cellstack error code {0:?}")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownErrorCode(s.to_owned()))
    }
}

/// The JSON body of every error answer from a cell or the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: ErrorCode,
    /// What went wrong and what to do, for a person.
    pub message: String,
    /// On `stale_epoch`: the tenant's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u64>,
    /// On `moved`: the cell that owns the tenant now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
    /// On `fenced`, `rate_limited`, `shed`, `overloaded`: seconds to wait before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

impl ErrorBody {
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            current_epoch: None,
            moved_to: None,
            retry_after_seconds: None,
        }
    }
}

/// Priority class of a request. Load shedding drops `Low` first and `High` last. A tenant's class
/// comes from its policy (`RateLimitPolicy.spec.requestPriority`, `normal` without one); a
/// request's [`header::PRIORITY`] may only lower it (see [`Priority::requested`]).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    /// The class a request runs at: the one it asked for when that is not above the tenant's
    /// class, else the tenant's. A client can give up priority, never claim more.
    pub fn requested(class: Self, asked: Option<Self>) -> Self {
        asked.map_or(class, |asked| asked.min(class))
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// A priority header value that is not `low`, `normal` or `high`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {header} header {0:?}: expected one of low, normal, high", header = header::PRIORITY)]
pub struct InvalidPriority(pub String);

impl FromStr for Priority {
    type Err = InvalidPriority;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "low" => Ok(Self::Low),
            "normal" => Ok(Self::Normal),
            "high" => Ok(Self::High),
            other => Err(InvalidPriority(other.to_owned())),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses an epoch header value: a decimal `u64`.
pub fn parse_epoch(value: &str) -> Result<u64, InvalidEpoch> {
    value
        .trim()
        .parse()
        .map_err(|_| InvalidEpoch(value.to_owned()))
}

/// An epoch header value that is not a non-negative integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {header} header {0:?}: expected a non-negative integer", header = header::EPOCH)]
pub struct InvalidEpoch(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_through_their_wire_names() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn refusals_the_router_retries_are_the_ones_that_applied_nothing() {
        assert!(ErrorCode::Fenced.nothing_applied());
        assert!(ErrorCode::Moved.nothing_applied());
        assert!(ErrorCode::StaleEpoch.nothing_applied());
        assert!(!ErrorCode::Timeout.nothing_applied());
        assert!(!ErrorCode::Unavailable.nothing_applied());
    }

    #[test]
    fn statuses_match_the_design() {
        assert_eq!(ErrorCode::StaleEpoch.status(), 409);
        assert_eq!(ErrorCode::Fenced.status(), 503);
        assert_eq!(ErrorCode::RateLimited.status(), 429);
        assert_eq!(ErrorCode::Shed.status(), 503);
        assert_eq!(ErrorCode::InvalidTenant.status(), 400);
        assert_eq!(ErrorCode::UnknownTenant.status(), 404);
    }

    #[test]
    fn header_names_are_lowercase_and_distinct() {
        let all = [
            header::TENANT,
            header::EPOCH,
            header::PRIORITY,
            header::REQUEST_ID,
            header::MOVED_TO,
            header::CELL,
            header::ERROR,
            header::RETRY_AFTER,
            header::RATELIMIT_LIMIT,
            header::RATELIMIT_REMAINING,
            header::RATELIMIT_RESET,
        ];
        let unique: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        assert!(
            all.iter()
                .all(|h| h.chars().all(|c| !c.is_ascii_uppercase()))
        );
    }

    #[test]
    fn priority_parses_known_classes_and_refuses_others() {
        assert_eq!("high".parse(), Ok(Priority::High));
        assert_eq!(" low ".parse(), Ok(Priority::Low));
        assert!(Priority::Low < Priority::Normal && Priority::Normal < Priority::High);
        let err = "urgent".parse::<Priority>().unwrap_err().to_string();
        assert!(err.contains("expected one of low, normal, high"), "{err}");
    }

    #[test]
    fn error_body_omits_empty_fields() {
        let body = ErrorBody::new(ErrorCode::Shed, "cell overloaded");
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":"shed","message":"cell overloaded"}"#
        );
        assert_eq!(parse_epoch("42"), Ok(42));
        assert!(parse_epoch("-1").is_err());
    }
}
