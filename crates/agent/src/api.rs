//! The agent's local API on a unix socket, used by the CLI and by the Docker
//! and CNI plugins. Handlers translate; the work is in [`crate::Agent`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tessera_model::{Endpoint, Network};

use crate::inventory::{CheckRequest, CheckResponse, GcRequest};
use crate::Agent;

/// `POST /v1/attach`: put a network namespace into a network.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// Network name (bare or fully qualified) or UUID.
    pub network: String,
    /// Path of the namespace: `/proc/PID/ns/net` or `/run/netns/NAME`.
    pub netns: String,
    /// Static addresses, at most one per family.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Interface name inside the namespace; `eth0` when absent.
    #[serde(default)]
    pub ifname: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    /// Endpoint name; derived from the container or namespace and the
    /// interface when absent, so that a retried attach is idempotent.
    #[serde(default)]
    pub name: Option<String>,
    /// A chosen MAC for the interface; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The Docker endpoint this attach serves (the Docker plugin's Join).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_endpoint_id: Option<String>,
    /// The address reservation whose addresses (given in `ips`) the endpoint
    /// adopts, and returns to when it is detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
}

/// `POST /v1/detach`: take a namespace out of one network or of all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachRequest {
    #[serde(default)]
    pub netns: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    /// Only this network; all of the namespace's networks when absent.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ifname: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetachResponse {
    pub detached: Vec<Endpoint>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub host: String,
    pub underlay_ip: std::net::IpAddr,
    pub controller: String,
    pub controller_connected: bool,
    pub revision: u64,
    pub networks: usize,
    pub local_endpoints: usize,
    pub reconciles: u64,
    pub last_error: Option<String>,
}

/// An error on its way to the wire, in the controller's error body shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>, field: Option<&str>) -> Self {
        let mut error = serde_json::json!({ "code": code, "message": message.into() });
        if let Some(f) = field {
            error["field"] = f.into();
        }
        ApiError { status, body: serde_json::json!({ "error": error }) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/attach", post(attach))
        .route("/v1/detach", post(detach))
        .route("/v1/check", post(check))
        .route("/v1/gc", post(gc))
        .route("/v1/networks/{reference}", get(network))
        .route("/v1/vifs", get(vifs))
        .route("/v1/status", get(status))
        .with_state(agent)
}

async fn attach(State(agent): State<Arc<Agent>>, body: axum::body::Bytes) -> Result<Json<Endpoint>, ApiError> {
    let req: AttachRequest = decode(&body)?;
    Ok(Json(agent.attach(req).await?))
}

async fn detach(State(agent): State<Arc<Agent>>, body: axum::body::Bytes) -> Result<Json<DetachResponse>, ApiError> {
    let req: DetachRequest = decode(&body)?;
    Ok(Json(DetachResponse { detached: agent.detach(req).await? }))
}

async fn check(State(agent): State<Arc<Agent>>, body: axum::body::Bytes) -> Result<Json<CheckResponse>, ApiError> {
    let req: CheckRequest = decode(&body)?;
    Ok(Json(agent.check(req).await?))
}

async fn gc(State(agent): State<Arc<Agent>>, body: axum::body::Bytes) -> Result<Json<DetachResponse>, ApiError> {
    let req: GcRequest = decode(&body)?;
    Ok(Json(DetachResponse { detached: agent.gc(req).await? }))
}

async fn network(State(agent): State<Arc<Agent>>, Path(reference): Path<String>) -> Result<Json<Network>, ApiError> {
    Ok(Json(agent.network(&reference).await?))
}

async fn vifs(State(agent): State<Arc<Agent>>) -> Result<Response, ApiError> {
    let vifs = agent.vifs().await?;
    Ok(Json(vifs).into_response())
}

async fn status(State(agent): State<Arc<Agent>>) -> Json<AgentStatus> {
    Json(agent.status())
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string(), Some("body")))
}
