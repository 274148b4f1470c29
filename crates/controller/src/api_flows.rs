//! The HTTP edge of flow records: agents report them, administrators query
//! them. Handlers only translate; decisions live in [`crate::service`].

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use tessera_model::{FlowRecord, FlowReport};

use crate::auth::{require_host, Principal};
use crate::error::ErrorBody;
use crate::http::{ApiResult, Body, Ctl};
use crate::service::{Controller, FlowFilter};

/// The routes of this module.
pub fn routes() -> Router<Arc<Controller>> {
    Router::new().route("/v1/flows", get(list_flows)).route("/v1/hosts/{name}/flows", post(report_flows))
}

/// Flow records, newest first, filtered.
#[utoipa::path(get, path = "/v1/flows", params(FlowFilter), responses((status = 200, body = Vec<FlowRecord>), (status = 400, body = ErrorBody)))]
pub async fn list_flows(State(ctl): Ctl, Query(f): Query<FlowFilter>) -> ApiResult<Json<Vec<FlowRecord>>> {
    Ok(Json(ctl.flows(&f)?))
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
