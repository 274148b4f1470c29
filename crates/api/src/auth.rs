//! Who calls the controller, and how a client proves it.
//!
//! Agents and plugins present a client certificate of the fabric's CA whose
//! common name says who they are ([`host_common_name`]; administrators
//! [`admin_common_name`]); people and automation send a bearer token
//! (`Authorization: Bearer tsr_…`) made by `tessera token create`. A client
//! is given its [`Credentials`] (`--ca`, `--cert`, `--key`, `--token`, or
//! `TESSERA_CA`, `TESSERA_CERT`, `TESSERA_KEY`, `TESSERA_TOKEN`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The common name of an administrator's client certificate.
pub fn admin_common_name() -> String {
    "tessera-admin".into()
}

/// The common name of host `name`'s client certificate.
pub fn host_common_name(name: &str) -> String {
    format!("tessera-host:{name}")
}

/// What a certificate's common name says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertIdentity {
    Admin,
    Host(String),
}

impl CertIdentity {
    /// Reads a common name written by `tessera pki`; `None` for any other.
    pub fn from_common_name(cn: &str) -> Option<CertIdentity> {
        if cn == admin_common_name() {
            return Some(CertIdentity::Admin);
        }
        let host = cn.strip_prefix("tessera-host:")?;
        tessera_model::names::check_component(host).ok()?;
        Some(CertIdentity::Host(host.to_string()))
    }
}

/// What a token lets its bearer do, in its project (or, for `admin` with
/// no project, in the whole fabric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads the project's objects.
    Reader,
    /// Reads and changes the project's networks, policies and endpoints.
    Member,
    /// A member who also manages the project; without a project, the fabric.
    Admin,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// A name for people (who or what uses the token).
    pub name: String,
    /// The project (`domain:project`); none for a fabric administrator.
    #[serde(default)]
    pub project: Option<String>,
    pub role: Role,
}

/// A token as the controller keeps it (its secret is not kept: only a hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Token {
    /// The first characters of the hash of the secret: names the token.
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub role: Role,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// The answer to `POST /v1/tokens`: the token and, this once, its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub token: Token,
    /// Send as `Authorization: Bearer SECRET`; shown once, never stored.
    pub secret: String,
}

/// How a client proves who it is to the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The fabric's CA, to verify the controller (`https://` only).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// A bearer token.
    pub token: Option<String>,
}

impl Credentials {
    /// The credentials of a `tessera pki` directory's file pair `name`
    /// (`admin`, `hosts/h1`) with its CA.
    pub fn from_pki(dir: &Path, name: &str) -> Credentials {
        Credentials {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join(format!("{name}.pem"))),
            key: Some(dir.join(format!("{name}-key.pem"))),
            token: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_say_who_holds_a_certificate() {
        assert_eq!(CertIdentity::from_common_name(&admin_common_name()), Some(CertIdentity::Admin));
        assert_eq!(CertIdentity::from_common_name(&host_common_name("h1")), Some(CertIdentity::Host("h1".into())));
        assert_eq!(CertIdentity::from_common_name("tessera-host:"), None);
        assert_eq!(CertIdentity::from_common_name("tessera-host:a/b"), None);
        assert_eq!(CertIdentity::from_common_name("www.example.com"), None);
    }
}
