//! The HTTP edge of flow records: agents report them, administrators query
//! them all and a project's tokens those with a side in the project's
//! networks. Handlers only translate; decisions live in [`crate::service`].

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use tessera_model::{FlowRecord, FlowReport};

use crate::auth::{listing_scope, require_host, Principal};
use crate::error::ErrorBody;
use crate::http::{ApiResult, Body, Ctl};
use crate::service::{visible, Controller, FlowFilter, TopEntry, TopParams};

/// The routes of this module.
pub fn routes() -> Router<Arc<Controller>> {
    Router::new()
        .route("/v1/flows", get(list_flows))
        .route("/v1/flows/follow", get(follow_flows))
        .route("/v1/flows/top", get(top_flows))
        .route("/v1/hosts/{name}/flows", post(report_flows))
}

/// Records as the hosts report them (a flow when it starts, while it runs
/// and when it ends), filtered, one JSON record per line, until the client
/// goes; an empty line every 5 s when quiet keeps the connection alive. A
/// client that reads too slowly misses records.
#[utoipa::path(get, path = "/v1/flows/follow", params(FlowFilter),
    responses((status = 200, body = FlowRecord, content_type = "application/x-ndjson"), (status = 403, body = ErrorBody)))]
pub async fn follow_flows(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Query(f): Query<FlowFilter>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let rx = ctl.follow_flows();
    let scope = listing_scope(&who).cloned();
    let lines = futures::stream::unfold((rx, f, scope), |(mut rx, f, scope)| async move {
        loop {
            let Ok(next) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await else {
                return Some((Ok(axum::body::Bytes::from_static(b"\n")), (rx, f, scope)));
            };
            match next {
                Ok(r) if f.matches(&r) && visible(&r, scope.as_ref()) => {
                    let mut line = serde_json::to_vec(&r).unwrap_or_default();
                    line.push(b'\n');
                    return Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line)), (rx, f, scope)));
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(lines)).into_response())
}

/// Flows grouped by pair, endpoint, port or pair of networks, by bytes both
/// ways, most first.
#[utoipa::path(get, path = "/v1/flows/top", params(TopParams), responses((status = 200, body = Vec<TopEntry>), (status = 403, body = ErrorBody)))]
pub async fn top_flows(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Query(p): Query<TopParams>,
) -> ApiResult<Json<Vec<TopEntry>>> {
    Ok(Json(ctl.top_flows(&p, listing_scope(&who))?))
}

/// Flow records, newest first, filtered.
#[utoipa::path(get, path = "/v1/flows", params(FlowFilter),
    responses((status = 200, body = Vec<FlowRecord>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_flows(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Query(f): Query<FlowFilter>,
) -> ApiResult<Json<Vec<FlowRecord>>> {
    Ok(Json(ctl.flows(&f, listing_scope(&who))?))
}

/// A host's agent reports the flows that started at its endpoints.
#[utoipa::path(post, path = "/v1/hosts/{name}/flows", params(("name" = String, Path)), request_body = FlowReport,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn report_flows(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Body(report): Body<FlowReport>,
) -> ApiResult<StatusCode> {
    require_host(&who, &name, "report the flows")?;
    ctl.report_flows(&name, report)?;
    Ok(StatusCode::NO_CONTENT)
}
