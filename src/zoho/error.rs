//! The client's error type and its classification into the error classes of
//! DESIGN.md §4.
//!
//! This module owns one decision: given what Zoho answered (or failed to
//! answer), which class is it and may the caller retry. It never retries or
//! sleeps itself; `client.rs` acts on [`RetryAdvice`], and the sync workers act
//! on [`ErrorClass`] once the client has given up.

use std::time::Duration;

use serde_json::Value;

/// Everything the Zoho client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ZohoError {
    /// HTTP 429 `TOO_MANY_REQUESTS`: credits or concurrency exhausted. Zoho
    /// sends no `Retry-After`, so `retry_after` is only set when a proxy did.
    #[error("Zoho rate limit reached ({code}); credits remaining: {credits_remaining:?}")]
    RateLimited {
        code: String,
        retry_after: Option<Duration>,
        credits_remaining: Option<u64>,
    },
    /// HTTP 401 `INVALID_TOKEN` / `AUTHENTICATION_FAILURE`: the access token
    /// expired or was revoked; a refresh normally cures it.
    #[error("Zoho rejected the access token ({code}): {message}")]
    AuthExpired { code: String, message: String },
    /// The token endpoint refused the refresh token or client credentials;
    /// the connection must be paused until a human reconnects it.
    #[error("Zoho refused the OAuth credentials: {error}")]
    AuthFailed { error: String },
    /// No reply in time: the request may or may not have been applied.
    #[error("Zoho did not answer within {after:?}; the outcome is unknown")]
    Timeout { after: Duration },
    /// The connection failed before or while talking to Zoho.
    #[error("could not reach Zoho: {message}")]
    Network { message: String },
    /// HTTP 5xx.
    #[error("Zoho server error (HTTP {status}, {code}): {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    /// The request or a record in it was refused for its content
    /// (`INVALID_DATA`, `MANDATORY_NOT_FOUND`, `DUPLICATE_DATA`, limits...).
    #[error("Zoho refused the data ({code}): {message}")]
    Validation {
        code: String,
        message: String,
        details: Value,
    },
    /// The module, record, job or channel does not exist.
    #[error("not found in Zoho ({code}): {message}")]
    NotFound { code: String, message: String },
    /// `RECORD_LOCKED`: a Zoho business lock (approval, manual lock).
    #[error("the Zoho record is locked: {message}")]
    RecordLocked { message: String },
    /// HTTP 412 `ALREADY_MODIFIED`: `If-Unmodified-Since` found a newer record.
    #[error("the Zoho record changed after the given time ({message})")]
    AlreadyModified { message: String, details: Value },
    /// Anything else that will fail the same way again (permissions, scopes,
    /// unknown modules, malformed replies, misuse of the client).
    #[error("Zoho request failed permanently ({code}): {message}")]
    Permanent { code: String, message: String },
    /// The token store could not load or save tokens.
    #[error("token store failed: {0}")]
    TokenStore(String),
}

/// The classes of DESIGN.md §4, which decide what the sync does with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttle; not an attempt.
    RateLimited,
    /// Refresh the token; pause the connection if the refresh fails.
    AuthExpired,
    /// Outcome unknown; retry idempotently.
    Timeout,
    /// Back off, then dead-letter.
    ServerError,
    /// Manual review.
    Validation,
    /// Deleted wins unless local edits are unsynced.
    NotFound,
    /// Long backoff, then review.
    RecordLocked,
    /// A newer Zoho version exists: run the conflict engine.
    Conflict,
    /// Give up.
    Permanent,
}

/// What the client may do about an error before handing it to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAdvice {
    /// Retrying cannot help.
    No,
    /// Refresh the access token once, then repeat at once.
    RefreshToken,
    /// Wait (the hint, or the client's backoff) and repeat; throttling is not
    /// counted as an attempt but is bounded by the client's throttle budget.
    Throttle { after: Option<Duration> },
    /// Transient: repeat with exponential backoff and jitter.
    Backoff,
    /// The request may have been applied: repeat only if it is idempotent.
    IfIdempotent,
    /// Do not repeat now; the caller should retry much later, then review.
    Later,
}

impl ZohoError {
    /// The DESIGN.md §4 class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::RateLimited { .. } => ErrorClass::RateLimited,
            Self::AuthExpired { .. } | Self::AuthFailed { .. } => ErrorClass::AuthExpired,
            Self::Timeout { .. } | Self::Network { .. } => ErrorClass::Timeout,
            Self::Server { .. } | Self::TokenStore(_) => ErrorClass::ServerError,
            Self::Validation { .. } => ErrorClass::Validation,
            Self::NotFound { .. } => ErrorClass::NotFound,
            Self::RecordLocked { .. } => ErrorClass::RecordLocked,
            Self::AlreadyModified { .. } => ErrorClass::Conflict,
            Self::Permanent { .. } => ErrorClass::Permanent,
        }
    }

    /// Whether and how the request that produced this error may be repeated.
    pub fn retry_advice(&self) -> RetryAdvice {
        match self {
            Self::RateLimited { retry_after, .. } => RetryAdvice::Throttle {
                after: *retry_after,
            },
            Self::AuthExpired { .. } => RetryAdvice::RefreshToken,
            Self::Timeout { .. } | Self::Network { .. } => RetryAdvice::IfIdempotent,
            Self::Server { .. } | Self::TokenStore(_) => RetryAdvice::Backoff,
            Self::RecordLocked { .. } => RetryAdvice::Later,
            Self::AuthFailed { .. }
            | Self::Validation { .. }
            | Self::NotFound { .. }
            | Self::AlreadyModified { .. }
            | Self::Permanent { .. } => RetryAdvice::No,
        }
    }

    /// Classifies a whole-request Zoho error body (`{"code","details","message","status"}`).
    pub fn from_reply(status: u16, code: &str, message: &str, details: Value) -> Self {
        let code_s = code.to_owned();
        let message_s = message.to_owned();
        match (status, code) {
            (429, _) | (_, "TOO_MANY_REQUESTS") => Self::RateLimited {
                code: code_s,
                retry_after: None,
                credits_remaining: None,
            },
            (_, "INVALID_TOKEN" | "AUTHENTICATION_FAILURE" | "INVALID_OAUTHTOKEN") => {
                Self::AuthExpired {
                    code: code_s,
                    message: message_s,
                }
            }
            (_, "RECORD_LOCKED") => Self::RecordLocked { message: message_s },
            (412, _) | (_, "ALREADY_MODIFIED") => Self::AlreadyModified {
                message: message_s,
                details,
            },
            (500..=599, _) => Self::Server {
                status,
                code: code_s,
                message: message_s,
            },
            (404, _) | (_, "RESOURCE_NOT_FOUND" | "NOT_SUBSCRIBED") => Self::NotFound {
                code: code_s,
                message: message_s,
            },
            (_, "INVALID_DATA") if is_invalid_id(message, &details) => Self::NotFound {
                code: code_s,
                message: message_s,
            },
            (
                400 | 202 | 207,
                "INVALID_DATA"
                | "MANDATORY_NOT_FOUND"
                | "DUPLICATE_DATA"
                | "MULTIPLE_OR_MULTI_ERRORS"
                | "DEPENDENT_FIELD_MISSING"
                | "DEPENDENT_MISMATCH"
                | "LIMIT_EXCEEDED"
                | "EXPECTED_FIELD_MISSING"
                | "REQUIRED_PARAM_MISSING"
                | "EXPECTED_PARAM_MISSING"
                | "INVALID_QUERY"
                | "SYNTAX_ERROR"
                | "PATTERN_NOT_MATCHED"
                | "NOT_APPROVED"
                | "RECORD_IN_BLUEPRINT"
                | "CANNOT_PROCESS"
                | "LIMIT_REACHED"
                | "DISCRETE_PAGINATION_LIMIT_EXCEEDED"
                | "PAGINATION_LIMIT_EXCEEDED"
                | "AMBIGUITY_DURING_PROCESSING"
                | "NOT_ALLOWED"
                | "ALREADY_SCHEDULED",
            ) => Self::Validation {
                code: code_s,
                message: message_s,
                details,
            },
            _ => Self::Permanent {
                code: code_s,
                message: message_s,
            },
        }
    }
}

/// Zoho reports an unknown record id as `INVALID_DATA` with the id in the
/// details; the sync must treat that as "deleted", not as bad data.
fn is_invalid_id(message: &str, details: &Value) -> bool {
    let only_id = details
        .as_object()
        .is_some_and(|d| d.len() == 1 && d.contains_key("id"));
    only_id && (message.contains("id given") || message.contains("not deleted"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn too_many_requests_is_throttled_not_an_attempt() {
        let err = ZohoError::from_reply(429, "TOO_MANY_REQUESTS", "limit", json!({}));
        assert_eq!(err.class(), ErrorClass::RateLimited);
        assert_eq!(err.retry_advice(), RetryAdvice::Throttle { after: None });
    }

    #[test]
    fn invalid_token_asks_for_a_refresh() {
        let err = ZohoError::from_reply(401, "INVALID_TOKEN", "invalid oauth token", json!({}));
        assert_eq!(err.retry_advice(), RetryAdvice::RefreshToken);
        assert_eq!(err.class(), ErrorClass::AuthExpired);
    }

    #[test]
    fn server_errors_back_off_and_validation_errors_do_not_retry() {
        let server = ZohoError::from_reply(500, "INTERNAL_ERROR", "boom", json!({}));
        assert_eq!(server.retry_advice(), RetryAdvice::Backoff);
        let bad = ZohoError::from_reply(400, "MANDATORY_NOT_FOUND", "required", json!({}));
        assert_eq!(bad.class(), ErrorClass::Validation);
        assert_eq!(bad.retry_advice(), RetryAdvice::No);
    }

    #[test]
    fn record_locked_is_not_retried_by_the_client() {
        let err = ZohoError::from_reply(400, "RECORD_LOCKED", "locked", json!({}));
        assert_eq!(err.class(), ErrorClass::RecordLocked);
        assert_eq!(err.retry_advice(), RetryAdvice::Later);
    }

    #[test]
    fn an_invalid_record_id_counts_as_not_found() {
        let err = ZohoError::from_reply(
            400,
            "INVALID_DATA",
            "the id given seems to be invalid",
            json!({"id": "1"}),
        );
        assert_eq!(err.class(), ErrorClass::NotFound);
    }

    #[test]
    fn already_modified_is_a_conflict() {
        let err = ZohoError::from_reply(412, "ALREADY_MODIFIED", "stale", json!({}));
        assert_eq!(err.class(), ErrorClass::Conflict);
    }

    #[test]
    fn timeouts_are_retried_only_when_idempotent() {
        let err = ZohoError::Timeout {
            after: Duration::from_secs(1),
        };
        assert_eq!(err.retry_advice(), RetryAdvice::IfIdempotent);
    }
}
