//! The agent's refusals on their way to the wire, in the error body the
//! controller uses ([`tessera_api::ErrorBody`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tessera_api::{ClientError, ErrorBody};
use tessera_model::ErrorCode;

/// A refusal of the agent's local API: the status and the body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    /// A refusal with `code`'s HTTP status.
    pub fn new(code: ErrorCode, message: impl Into<String>, field: Option<&str>) -> Self {
        let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, body: ErrorBody::new(code, message, field) }
    }
}

impl From<tessera_model::FieldError> for ApiError {
    fn from(e: tessera_model::FieldError) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, e.to_string(), Some(&e.field))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// The controller's refusal passes through as it is (its status and body);
/// a controller that cannot be reached or answers nonsense is `unavailable`.
pub(crate) fn controller_error(e: ClientError) -> ApiError {
    match e {
        ClientError::Refused { status, body } => {
            ApiError { status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), body }
        }
        other => ApiError::new(ErrorCode::Unavailable, other.to_string(), None),
    }
}
