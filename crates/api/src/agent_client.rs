//! The one client of the agent's local API, over its unix socket: used by
//! the CLI (`attach`, `detach`, `vif list`), the CNI plugin and the Docker
//! plugin. Refusals keep the HTTP status and the [`ErrorBody`], so each
//! caller maps them to its own wire (CNI codes, libnetwork's `Err`) once.

use std::path::{Path, PathBuf};

use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_model::{Endpoint, ErrorCode, Network};

use crate::agent::{AgentStatus, AttachRequest, CheckRequest, CheckResponse, DetachRequest, DetachResponse, GcRequest, VifEntry};
use crate::controller::seg;
use crate::error::ErrorBody;
use crate::uds::{self, UdsError};

/// Why a call to the agent did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Nothing answers on the socket. (The cause is part of the message,
    /// not a source, so an error chain does not repeat it.)
    #[error("the Tessera agent is unreachable at {}: {cause}; is it running? (tessera agent --socket {0})", .socket.display())]
    Unreachable { socket: PathBuf, cause: UdsError },
    /// The agent refused; the body names the field and the reason.
    #[error("{}", .body.error.message)]
    Refused { status: u16, body: ErrorBody },
    /// The agent answered something that is not what its API promises.
    #[error("the agent's answer to {path} ({status}) is not understood: {reason}")]
    BadResponse { path: String, status: u16, reason: String },
}

impl AgentError {
    /// The HTTP status of the answer; 503 when the agent could not be reached.
    pub fn status(&self) -> u16 {
        match self {
            AgentError::Unreachable { .. } => 503,
            AgentError::Refused { status, .. } | AgentError::BadResponse { status, .. } => *status,
        }
    }

    /// The stable error code of a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            AgentError::Refused { body, .. } => Some(body.error.code),
            _ => None,
        }
    }
}

/// Attempts of one call while the agent cannot be reached (about 0.7 s in all).
const ATTEMPTS: u32 = 4;

/// A client of the agent listening on one socket. Each call is one
/// connection; the agent answers attach and detach once the data plane has
/// done them (up to its own deadline).
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        AgentClient { socket: socket.into() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one call. Every call of the local API is idempotent (attach by
    /// endpoint name, detach of what is gone succeeds), so a connection that
    /// cannot be made, or is closed before the answer (an agent restarting),
    /// is tried again, [`ATTEMPTS`] times in all.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, AgentError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request types serialize"));
        let mut pause = std::time::Duration::from_millis(100);
        let mut attempt = 1;
        let (status, bytes) = loop {
            match uds::request(&self.socket, method.clone(), path, body.clone()).await {
                Ok(answer) => break answer,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(socket = %self.socket.display(), error = %e, attempt, "agent call failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(cause) => return Err(AgentError::Unreachable { socket: self.socket.clone(), cause }),
            }
        };
        let status = status.as_u16();
        let bad = |reason: String| AgentError::BadResponse { path: path.to_string(), status, reason };
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(AgentError::Refused { status, body }),
            Err(_) => Err(bad(String::from_utf8_lossy(&bytes).into_owned())),
        }
    }

    /// `POST /v1/attach`: answers once the data plane has programmed the
    /// endpoint; idempotent by endpoint name.
    pub async fn attach(&self, req: &AttachRequest) -> Result<Endpoint, AgentError> {
        self.call(Method::POST, "/v1/attach", Some(req)).await
    }

    /// `POST /v1/detach`: answers once the interfaces are gone; what is gone
    /// already is not an error.
    pub async fn detach(&self, req: &DetachRequest) -> Result<DetachResponse, AgentError> {
        self.call(Method::POST, "/v1/detach", Some(req)).await
    }

    /// `POST /v1/check`: whether an attachment is whole (CNI CHECK).
    pub async fn check(&self, req: &CheckRequest) -> Result<CheckResponse, AgentError> {
        self.call(Method::POST, "/v1/check", Some(req)).await
    }

    /// `POST /v1/gc`: detaches a runtime's attachments it no longer knows.
    pub async fn gc(&self, req: &GcRequest) -> Result<DetachResponse, AgentError> {
        self.call(Method::POST, "/v1/gc", Some(req)).await
    }

    /// `GET /v1/networks/{ref}`: from the agent's mirror, else its controller.
    pub async fn network(&self, reference: &str) -> Result<Network, AgentError> {
        self.call(Method::GET, &format!("/v1/networks/{}", seg(reference)), None::<&()>).await
    }

    /// `GET /v1/vifs`: the host's interface table.
    pub async fn vifs(&self) -> Result<Vec<VifEntry>, AgentError> {
        self.call(Method::GET, "/v1/vifs", None::<&()>).await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<AgentStatus, AgentError> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }
}
