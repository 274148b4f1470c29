//! Validation errors and the stable, machine-readable error codes of the API.

use serde::{Deserialize, Serialize};

/// A request field that failed validation, and why.
///
/// `field` is a path into the request body as a user wrote it, for example
/// `subnets[1].gateway` or `rules[0].dst_ports`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason: reason.into() }
    }

    /// Prefixes the field path, so nested validators can report full paths:
    /// `FieldError::new("cidr", ..).within("subnets[0]")` names `subnets[0].cidr`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// Stable error codes of the API's JSON error body (`error.code`).
///
/// Scripts match on these; their spelling never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field is invalid (HTTP 400).
    InvalidArgument,
    /// The named object does not exist (HTTP 404).
    NotFound,
    /// An object with that name, VNI, address or MAC already exists (HTTP 409).
    AlreadyExists,
    /// The object is in use and cannot be changed or deleted (HTTP 409).
    InUse,
    /// An address pool has no free address left (HTTP 409).
    Exhausted,
    /// A concurrent change won; retrying is safe (HTTP 409).
    Conflict,
    /// The server failed; the request may be retried (HTTP 500).
    Internal,
    /// The server cannot serve now, for example its store is not open (HTTP 503).
    Unavailable,
    /// The store's cluster cannot serve now: no quorum, every endpoint down,
    /// or no answer in time (HTTP 503); the message says which and the
    /// request may be retried. Nothing is known to be written.
    StoreUnavailable,
    /// The agent: an attachment is not whole (CNI CHECK; HTTP 409).
    CheckFailed,
    /// The agent: the data plane did not program the change in time (HTTP 504).
    Timeout,
    /// The request body is larger than the API reads (HTTP 413).
    PayloadTooLarge,
    /// The disk holding the store is full; nothing was written (HTTP 507).
    InsufficientStorage,
    /// The request names no caller the controller knows (HTTP 401).
    Unauthenticated,
    /// The caller may not make this request (HTTP 403); the message says why.
    PermissionDenied,
    /// A watch from a revision whose events are discarded (HTTP 410): take a
    /// new snapshot (`details.revision` is the current revision).
    Compacted,
    /// The caller's version is outside the server's window (HTTP 400): the
    /// message names both.
    VersionSkew,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::InUse => "in_use",
            ErrorCode::Exhausted => "exhausted",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::CheckFailed => "check_failed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InsufficientStorage => "insufficient_storage",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Compacted => "compacted",
            ErrorCode::VersionSkew => "version_skew",
        }
    }

    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument | ErrorCode::VersionSkew => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::InUse | ErrorCode::Exhausted | ErrorCode::Conflict | ErrorCode::CheckFailed => {
                409
            }
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable | ErrorCode::StoreUnavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::InsufficientStorage => 507,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::Compacted => 410,
        }
    }
}
