//! The agent's local API on a unix socket, used by the CLI and by the Docker
//! and CNI plugins. Handlers translate; the work is in [`crate::Agent`]; the
//! request and answer types are [`tessera_api::agent`]'s.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use tessera_api::agent::{AgentStatus, AttachRequest, CheckRequest, CheckResponse, DetachRequest, DetachResponse, GcRequest};
use tessera_api::version::CallerVersion;
use tessera_model::{Endpoint, ErrorCode, Network};

use crate::agent::Agent;
use crate::error::ApiError;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/attach", post(attach))
        .route("/v1/detach", post(detach))
        .route("/v1/check", post(check))
        .route("/v1/gc", post(gc))
        .route("/v1/networks/{reference}", get(network))
        .route("/v1/vifs", get(vifs))
        .route("/v1/status", get(status))
        .layer(axum::middleware::from_fn(tessera_api::version::layer))
        .with_state(agent)
}

async fn attach(
    State(agent): State<Arc<Agent>>,
    caller: Option<Extension<CallerVersion>>,
    body: axum::body::Bytes,
) -> Result<Json<Endpoint>, ApiError> {
    let req: AttachRequest = decode(&body, caller)?;
    Ok(Json(agent.attach(req).await?))
}

async fn detach(
    State(agent): State<Arc<Agent>>,
    caller: Option<Extension<CallerVersion>>,
    body: axum::body::Bytes,
) -> Result<Json<DetachResponse>, ApiError> {
    let req: DetachRequest = decode(&body, caller)?;
    Ok(Json(DetachResponse { detached: agent.detach(req).await? }))
}

async fn check(
    State(agent): State<Arc<Agent>>,
    caller: Option<Extension<CallerVersion>>,
    body: axum::body::Bytes,
) -> Result<Json<CheckResponse>, ApiError> {
    let req: CheckRequest = decode(&body, caller)?;
    Ok(Json(agent.check(req).await?))
}

async fn gc(
    State(agent): State<Arc<Agent>>,
    caller: Option<Extension<CallerVersion>>,
    body: axum::body::Bytes,
) -> Result<Json<DetachResponse>, ApiError> {
    let req: GcRequest = decode(&body, caller)?;
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

/// The request body as `T` (from a newer caller, without the fields `T`
/// does not know), or an error naming the field path at fault.
fn decode<T: serde::de::DeserializeOwned>(body: &[u8], caller: Option<Extension<CallerVersion>>) -> Result<T, ApiError> {
    tessera_api::version::decode(body, caller.map(|c| c.0)).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" { "body".to_string() } else { path };
        ApiError::new(ErrorCode::InvalidArgument, e.into_inner().to_string(), Some(&field))
    })
}
