//! The controller's typed errors, and [`ApiError`], which maps them to the
//! wire once.

use tessera_model::{ErrorCode, FieldError};
use tessera_store::StoreError;

/// The JSON error body, shared with every client (`tessera_api`).
pub use tessera_api::{ErrorBody, ErrorDetail};

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String, field: Option<String> },
    #[error("{what}")]
    AlreadyExists { what: String, field: Option<String> },
    #[error("{kind} {name} is in use by {}", users.join(", "))]
    InUse { kind: &'static str, name: String, users: Vec<String> },
    #[error("{0}")]
    Exhausted(String),
    #[error("concurrent changes kept conflicting with {0}; retry")]
    Conflict(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("stored {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the request body is larger than {limit} bytes, the most the API reads")]
    TooLarge { limit: usize },
    #[error("the store is empty and holds no cluster: start the controller with --init to make a new fabric, or give it the data directory of the existing one")]
    Uninitialized,
    /// The request names no caller the controller knows.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not make the request; says who and why.
    #[error("{0}")]
    Forbidden(String),
    /// A watch from a revision whose events are discarded.
    #[error("the events after revision {requested} are discarded (the log starts after {compacted}); take a snapshot (the current revision is {revision}) and watch from its revision")]
    Compacted { requested: u64, compacted: u64, revision: u64 },
    /// A watch from a revision of another store (the fabric was migrated).
    #[error("revision {requested} of store epoch {epoch} is not this store's (the fabric was migrated to it): take a snapshot (the current revision is {revision}) and watch from its revision")]
    Replaced { requested: u64, epoch: uuid::Uuid, revision: u64 },
}

impl Error {
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound { kind, name: name.into(), field: None }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Invalid(_) => ErrorCode::InvalidArgument,
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            Error::InUse { .. } => ErrorCode::InUse,
            Error::Exhausted(_) => ErrorCode::Exhausted,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::Store(StoreError::NoSpace { .. }) => ErrorCode::InsufficientStorage,
            Error::Store(StoreError::Unavailable { .. }) => ErrorCode::StoreUnavailable,
            Error::Store(_) | Error::Corrupt { .. } => ErrorCode::Internal,
            Error::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::Uninitialized => ErrorCode::Unavailable,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::Forbidden(_) => ErrorCode::PermissionDenied,
            Error::Compacted { .. } | Error::Replaced { .. } => ErrorCode::Compacted,
        }
    }

    /// The JSON error body every endpoint of the API returns.
    pub fn body(&self) -> ErrorBody {
        let (field, details) = match self {
            Error::Invalid(e) => (Some(e.field.clone()), None),
            Error::TooLarge { .. } => (Some("body".to_string()), None),
            Error::NotFound { field, .. } | Error::AlreadyExists { field, .. } => (field.clone(), None),
            Error::InUse { users, .. } => (None, Some(serde_json::json!({ "used_by": users }))),
            Error::Compacted { revision, .. } | Error::Replaced { revision, .. } => {
                (Some("after".to_string()), Some(serde_json::json!({ "revision": revision })))
            }
            _ => (None, None),
        };
        ErrorBody { error: ErrorDetail { code: self.code(), message: self.to_string(), field, details } }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error on its way to the wire: the status of its code and its body.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let code = self.0.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %self.0, "request failed");
        }
        let status =
            axum::http::StatusCode::from_u16(code.http_status()).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.0.body())).into_response()
    }
}
