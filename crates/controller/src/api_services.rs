//! The HTTP edge of service chaining: service templates, services with
//! their instances, and the health agents report for service ports.
//! Handlers only translate; decisions live in [`crate::service`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use tessera_model::{Endpoint, HealthReport, Service, ServiceCreate, ServiceTemplate, ServiceTemplateCreate, ServiceView};

use crate::auth::{forbidden, listing_scope, require_host, require_own_project, Principal};
use crate::error::ErrorBody;
use crate::http::{created, ApiResult, Body, Ctl};
use crate::service::Controller;

/// The routes of this module.
pub fn routes() -> Router<Arc<Controller>> {
    Router::new()
        .route("/v1/service-templates", get(list_service_templates).post(create_service_template))
        .route("/v1/service-templates/{id}", get(get_service_template).delete(delete_service_template))
        .route("/v1/services", get(list_services).post(create_service))
        .route("/v1/services/{id}", get(get_service).delete(delete_service))
        .route("/v1/endpoints/{id}/health", put(report_health))
}

#[utoipa::path(get, path = "/v1/service-templates", responses((status = 200, body = Vec<ServiceTemplate>)))]
pub async fn list_service_templates(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<ServiceTemplate>>> {
    let mut all = ctl.list_service_templates().await?;
    if let Some(p) = listing_scope(&who) {
        all.retain(|t| t.fq_name.project() == p);
    }
    Ok(Json(all))
}

/// Makes a service template: its interfaces (left and right, optionally
/// mgmt) and mode (in-network).
#[utoipa::path(post, path = "/v1/service-templates", request_body = ServiceTemplateCreate,
    responses((status = 201, body = ServiceTemplate), (status = 200, description = "an identical template existed", body = ServiceTemplate),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_service_template(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Body(req): Body<ServiceTemplateCreate>,
) -> ApiResult<Response> {
    require_own_project(&who, req.project.as_deref(), &req.name)?;
    Ok(created(ctl.create_service_template(req).await?))
}

#[utoipa::path(get, path = "/v1/service-templates/{id}", params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, body = ServiceTemplate), (status = 404, body = ErrorBody)))]
pub async fn get_service_template(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<ServiceTemplate>> {
    Ok(Json(ctl.get_service_template(&id).await?))
}

/// Deletes a template no service is made from.
#[utoipa::path(delete, path = "/v1/service-templates/{id}", params(("id" = String, Path, description = "UUID or name")),
    responses((status = 204), (status = 409, description = "services are made from it", body = ErrorBody)))]
pub async fn delete_service_template(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<StatusCode> {
    ctl.delete_service_template(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every service with its instances, their hosts, health and traffic.
#[utoipa::path(get, path = "/v1/services", responses((status = 200, body = Vec<ServiceView>)))]
pub async fn list_services(State(ctl): Ctl, Extension(who): Extension<Principal>) -> ApiResult<Json<Vec<ServiceView>>> {
    let mut all = ctl.list_service_views().await?;
    if let Some(p) = listing_scope(&who) {
        all.retain(|s| s.service.fq_name.project() == p);
    }
    Ok(Json(all))
}

/// Makes a service between a left and a right network, from a template.
/// Its instances are attached on their hosts (`tessera service add
/// --docker|--netns`, through the host's agent), or, with `run`, started
/// by the hosts' agents in their Docker: only a fabric administrator may
/// have containers run on hosts.
#[utoipa::path(post, path = "/v1/services", request_body = ServiceCreate,
    responses((status = 201, body = Service), (status = 200, description = "an identical service existed", body = Service),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_service(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Body(req): Body<ServiceCreate>,
) -> ApiResult<Response> {
    require_own_project(&who, req.project.as_deref(), &req.name)?;
    if req.run.is_some() && who != Principal::Admin {
        return Err(forbidden(&who, "have containers run on hosts (run): only a fabric administrator may").into());
    }
    Ok(created(ctl.create_service(req).await?))
}

#[utoipa::path(get, path = "/v1/services/{id}", params(("id" = String, Path, description = "UUID or name")),
    responses((status = 200, body = ServiceView), (status = 404, body = ErrorBody)))]
pub async fn get_service(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<ServiceView>> {
    Ok(Json(ctl.show_service(&id).await?))
}

/// Deletes a service that has no instance and that no policy rule names.
#[utoipa::path(delete, path = "/v1/services/{id}", params(("id" = String, Path, description = "UUID or name")),
    responses((status = 204), (status = 409, description = "it has instances, or a rule applies it", body = ErrorBody)))]
pub async fn delete_service(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<StatusCode> {
    ctl.delete_service(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A service port's health and traffic, reported by its host's agent.
#[utoipa::path(put, path = "/v1/endpoints/{id}/health", params(("id" = String, Path)), request_body = HealthReport,
    responses((status = 200, body = Endpoint), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn report_health(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(req): Body<HealthReport>,
) -> ApiResult<Json<Endpoint>> {
    if let Ok(ep) = ctl.get_endpoint(&id).await {
        require_host(&who, &ep.host, "report the health of an endpoint")?;
    }
    Ok(Json(ctl.report_health(&id, req).await?))
}
