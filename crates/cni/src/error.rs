//! CNI errors: the spec's well-known codes and the JSON a plugin prints on
//! standard output when it fails.

use serde::{Deserialize, Serialize};

/// The spec's error codes (0-99 are reserved for it; 100+ are free for
/// plugins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    /// The container is unknown or does not exist.
    UnknownContainer = 3,
    /// A required environment variable is missing or invalid.
    InvalidEnvironment = 4,
    Io = 5,
    /// The network configuration is not valid JSON (or not the expected shape).
    Decode = 6,
    InvalidConfig = 7,
    /// A transient failure; the runtime may retry later.
    TryAgainLater = 11,
    /// The plugin cannot service ADD (STATUS).
    NotAvailable = 50,
    /// The plugin cannot service ADD and running containers may be impaired (STATUS).
    NotAvailableImpaired = 51,
    /// Tessera's own: the agent refused the request (its message says why).
    Refused = 100,
}

/// An error as the spec prints it: `{"cniVersion", "code", "msg", "details"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError { code: code as u32, msg: msg.into(), details: details.into() }
    }

    /// The error document, tagged with the request's `cniVersion` (or the
    /// newest when the request's could not be read).
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut doc = serde_json::json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            doc["details"] = self.details.clone().into();
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_document_has_the_spec_fields() {
        let e = CniError::new(Code::TryAgainLater, "agent unreachable", "connect /run/tessera/agent.sock: refused");
        let doc = e.to_json("1.1.0");
        assert_eq!(doc["cniVersion"], "1.1.0");
        assert_eq!(doc["code"], 11);
        assert_eq!(doc["msg"], "agent unreachable");
        assert_eq!(doc["details"], "connect /run/tessera/agent.sock: refused");
        let back: CniError = serde_json::from_value(doc).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn empty_details_are_left_out() {
        let doc = CniError::new(Code::InvalidConfig, "bad", "").to_json("1.0.0");
        assert!(doc.get("details").is_none());
    }
}
