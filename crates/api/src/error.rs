//! The error body every Tessera API answers a refusal with, the controller's
//! and the agent's alike: `{"error": {"code", "message", "field"?, "details"?}}`.

use serde::{Deserialize, Serialize};
use tessera_model::ErrorCode;

/// `{"error": {"code": "...", "message": "...", "field": "...", "details": ...}}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message naming the field and the reason.
    pub message: String,
    /// The request field at fault, as a path such as `subnets[0].cidr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    /// A body with no details.
    pub fn new(code: ErrorCode, message: impl Into<String>, field: Option<&str>) -> Self {
        ErrorBody { error: ErrorDetail { code, message: message.into(), field: field.map(str::to_string), details: None } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_round_trips_and_omits_what_it_lacks() {
        let body = ErrorBody::new(ErrorCode::InvalidArgument, "subnets[0].cidr: not a CIDR", Some("subnets[0].cidr"));
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(
            text,
            r#"{"error":{"code":"invalid_argument","message":"subnets[0].cidr: not a CIDR","field":"subnets[0].cidr"}}"#
        );
        assert_eq!(serde_json::from_str::<ErrorBody>(&text).unwrap(), body);
    }
}
