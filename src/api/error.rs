//! The one error type of the `/v1` HTTP routes: a stable code catalogue,
//! the fitting status, and the body `{"error": {"code", "message", ...}}`.
//! Details (a conflict's current record, a lock's holder) sit beside code
//! and message. 5xx bodies stay generic; the cause is logged where it arose.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::records::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No API key or bearer token, or one that does not verify.
    #[error("an API key (X-API-Key) or a bearer token is required")]
    Unauthorized,
    /// `PATCH` without `If-Match`.
    #[error("If-Match with the record version you edited is required")]
    PreconditionRequired,
    #[error("the body must be a JSON object")]
    BadBody,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::PreconditionRequired => "precondition_required",
            ApiError::BadBody => "invalid_input",
            ApiError::Service(e) => e.code(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            ApiError::BadBody => StatusCode::BAD_REQUEST,
            ApiError::Service(e) => match e {
                ServiceError::InvalidInput(_) => StatusCode::BAD_REQUEST,
                ServiceError::UnknownEntity(_) | ServiceError::NotFound => StatusCode::NOT_FOUND,
                ServiceError::AlreadyExists
                | ServiceError::VersionConflict { .. }
                | ServiceError::ConflictClosed
                | ServiceError::LockLost { .. } => StatusCode::CONFLICT,
                ServiceError::LockHeld { .. } => StatusCode::LOCKED,
                ServiceError::Forbidden => StatusCode::FORBIDDEN,
                ServiceError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                ServiceError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match &self {
            ApiError::Service(e) => e.body(),
            other => json!({"code": other.code(), "message": other.to_string()}),
        };
        (self.status(), Json(json!({ "error": body }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_error_has_a_fitting_status() {
        assert_eq!(
            ApiError::from(ServiceError::NotFound).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::from(ServiceError::Forbidden).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ApiError::from(ServiceError::Unavailable).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(ApiError::Unauthorized.code(), "unauthorized");
    }
}
