//! The HTTP edge: routes, request decoding and the mapping of errors to the
//! wire. Handlers only translate; decisions live in [`crate::service`].

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use tessera_api::auth::{Token, TokenCreate, TokenCreated};
use tessera_model::watch::{Snapshot, WatchEvent};
use tessera_model::{
    Endpoint, EndpointCreate, EndpointNetns, EndpointPorts, EndpointStatusUpdate, FieldError, FloatingIp, FloatingIpAssociate,
    FloatingIpCreate, Host, HostCounters, HostRegister, Network, NetworkCreate, NetworkUpdate, Policy, PolicyCounters,
    PolicyCreate, PolicyUpdate, PolicyView, Reservation, ReservationCreate, RuleChange, RuleInsert, RuleSpec,
};
use utoipa::OpenApi;

use crate::auth::{forbidden, listing_scope, require_host, require_own_project, Principal};
pub use crate::error::ApiError;
use crate::error::{Error, ErrorBody};
pub use crate::http::MAX_BODY_BYTES;
use crate::http::{created, ApiResult, Body, Ctl};
use crate::service::{Controller, EndpointFilter, NetworkIpam, Project, ProjectCreate};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ProjectFilter {
    /// Only networks of this project (`domain:project`).
    pub project: Option<String>,
}

pub fn router(ctl: Arc<Controller>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/projects", get(list_projects).post(create_project))
        .route("/v1/projects/{name}", get(get_project).delete(delete_project))
        .route("/v1/networks", get(list_networks).post(create_network))
        .route("/v1/networks/{id}", get(get_network).patch(update_network).delete(delete_network))
        .route("/v1/networks/{id}/ipam", get(network_ipam))
        .route("/v1/networks/{id}/reservations", get(list_reservations).post(reserve_address))
        .route("/v1/networks/{id}/reservations/{address}", axum::routing::delete(release_reservation))
        .route("/v1/endpoints", get(list_endpoints).post(create_endpoint))
        .route("/v1/endpoints/{id}", get(get_endpoint).delete(delete_endpoint))
        .route("/v1/endpoints/{id}/status", put(set_endpoint_status))
        .route("/v1/endpoints/{id}/ports", put(set_endpoint_ports))
        .route("/v1/endpoints/{id}/netns", put(set_endpoint_netns))
        .route("/v1/hosts", get(list_hosts))
        .route("/v1/hosts/{name}", get(get_host).put(register_host).delete(delete_host))
        .route("/v1/hosts/{name}/counters", put(report_counters))
        .route("/v1/hosts/{name}/lease", put(renew_lease))
        .route("/v1/floating-ips", get(list_floating_ips).post(create_floating_ip))
        .route("/v1/floating-ips/{id}", get(get_floating_ip).delete(delete_floating_ip))
        .route("/v1/floating-ips/{id}/association", put(associate_floating_ip).delete(disassociate_floating_ip))
        .route("/v1/policies", get(list_policies).post(create_policy))
        .route("/v1/policies/{id}", get(get_policy).patch(update_policy).delete(delete_policy))
        .route("/v1/policies/{id}/counters", get(policy_counters))
        .route("/v1/policies/{id}/rules", axum::routing::post(insert_rule))
        .route("/v1/policies/{id}/rules/{index}", put(set_rule).delete(delete_rule))
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/watch", get(watch))
        .route("/v1/controllers", get(list_controllers))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", axum::routing::delete(delete_token))
        .merge(crate::api_services::routes())
        .merge(crate::api_flows::routes())
        .merge(crate::api_status::routes())
        .merge(crate::ui::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(ctl.clone(), crate::auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(ctl.clone(), record))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(tessera_api::version::layer))
        .with_state(ctl)
}

/// Makes a bearer token; its secret is in the answer, this once.
#[utoipa::path(post, path = "/v1/tokens", request_body = TokenCreate,
    responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_token(State(ctl): Ctl, Body(req): Body<TokenCreate>) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(ctl.create_token(req).await?)).into_response())
}

#[utoipa::path(get, path = "/v1/tokens", responses((status = 200, body = Vec<Token>), (status = 403, body = ErrorBody)))]
async fn list_tokens(State(ctl): Ctl) -> ApiResult<Json<Vec<Token>>> {
    Ok(Json(ctl.list_tokens().await?))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", params(("id" = String, Path)), responses((status = 204, description = "revoked or absent")))]
async fn delete_token(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<StatusCode> {
    ctl.delete_token(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(Error::not_found("path", uri.path()))
}

/// Prometheus metrics (text format 0.0.4): API requests and latency by
/// route, the store's revision, watchers, objects by kind. Administrators
/// only.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "metrics", content_type = "text/plain"), (status = 403, body = ErrorBody)))]
async fn metrics(State(ctl): Ctl) -> ApiResult<Response> {
    let text = ctl.metrics_text().await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// Records every request's route, method, status and latency.
async fn record(State(ctl): Ctl, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let m = &ctl.metrics;
    m.latency.with_label_values(&[&route, &method]).observe(started.elapsed().as_secs_f64());
    m.requests.with_label_values(&[&route, &method, resp.status().as_str()]).inc();
    resp
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers, and takes writes (after a failed write,
/// a probe write decides).
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, body = ErrorBody)))]
async fn readyz(State(ctl): Ctl) -> Response {
    if let Err(e) = ctl.check_storage().await {
        let mut body = e.body();
        body.error.code = tessera_model::ErrorCode::Unavailable;
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    match ctl.store().revision().await {
        Ok(rev) => (StatusCode::OK, format!("ready revision={rev}\n")).into_response(),
        Err(e) => {
            let err = Error::Store(e);
            let mut body = err.body();
            // An unreachable store cluster keeps its own code and reason.
            if body.error.code != tessera_model::ErrorCode::StoreUnavailable {
                body.error.code = tessera_model::ErrorCode::Unavailable;
            }
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[utoipa::path(get, path = "/v1/projects", responses((status = 200, body = Vec<Project>)))]
async fn list_projects(State(ctl): Ctl) -> ApiResult<Json<Vec<Project>>> {
    Ok(Json(ctl.list_projects().await?))
}

#[utoipa::path(post, path = "/v1/projects", request_body = ProjectCreate,
    responses((status = 201, body = Project), (status = 200, description = "already existed", body = Project), (status = 400, body = ErrorBody)))]
async fn create_project(State(ctl): Ctl, Body(req): Body<ProjectCreate>) -> ApiResult<Response> {
    Ok(created(ctl.create_project(req).await?))
}

#[utoipa::path(get, path = "/v1/projects/{name}", params(("name" = String, Path, description = "domain:project")),
    responses((status = 200, body = Project), (status = 404, body = ErrorBody)))]
async fn get_project(State(ctl): Ctl, Path(name): Path<String>) -> ApiResult<Json<Project>> {
    Ok(Json(ctl.get_project(&name).await?))
}

#[utoipa::path(delete, path = "/v1/projects/{name}", params(("name" = String, Path, description = "domain:project")),
    responses((status = 204, description = "deleted or absent"), (status = 409, body = ErrorBody)))]
async fn delete_project(State(ctl): Ctl, Path(name): Path<String>) -> ApiResult<StatusCode> {
    ctl.delete_project(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/networks", params(ProjectFilter), responses((status = 200, body = Vec<Network>)))]
async fn list_networks(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Query(f): Query<ProjectFilter>,
) -> ApiResult<Json<Vec<Network>>> {
    let mut nets = ctl.list_networks(f.project.as_deref()).await?;
    if let Some(p) = listing_scope(&who) {
        nets.retain(|n| n.usable_by(p));
    }
    Ok(Json(nets))
}

#[utoipa::path(post, path = "/v1/networks", request_body = NetworkCreate,
    responses((status = 201, body = Network), (status = 200, description = "an identical network existed", body = Network),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_network(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Body(req): Body<NetworkCreate>,
) -> ApiResult<Response> {
    require_own_project(&who, req.project.as_deref(), &req.name)?;
    Ok(created(ctl.create_network(req).await?))
}

#[utoipa::path(get, path = "/v1/networks/{id}", params(("id" = String, Path, description = "UUID, name or domain:project:name")),
    responses((status = 200, body = Network), (status = 404, body = ErrorBody)))]
async fn get_network(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<Network>> {
    Ok(Json(ctl.get_network(&id).await?))
}

#[utoipa::path(patch, path = "/v1/networks/{id}", params(("id" = String, Path, description = "UUID, name or domain:project:name")),
    request_body = NetworkUpdate, responses((status = 200, body = Network), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_network(State(ctl): Ctl, Path(id): Path<String>, Body(req): Body<NetworkUpdate>) -> ApiResult<Json<Network>> {
    Ok(Json(ctl.update_network(&id, req).await?))
}

#[utoipa::path(delete, path = "/v1/networks/{id}", params(("id" = String, Path, description = "UUID, name or domain:project:name")),
    responses((status = 204, description = "deleted or absent"), (status = 409, description = "endpoints remain", body = ErrorBody)))]
async fn delete_network(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<StatusCode> {
    ctl.delete_network(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/networks/{id}/ipam", params(("id" = String, Path, description = "UUID, name or domain:project:name")),
    responses((status = 200, body = NetworkIpam), (status = 404, body = ErrorBody)))]
async fn network_ipam(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<NetworkIpam>> {
    Ok(Json(ctl.network_ipam(&id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReleaseParams {
    /// Release only if this owner holds the reservation.
    pub owner: Option<String>,
}

/// Reserves an address for an owner before any endpoint exists (Docker's IPAM).
#[utoipa::path(post, path = "/v1/networks/{id}/reservations", params(("id" = String, Path, description = "UUID, name or domain:project:name")),
    request_body = ReservationCreate,
    responses((status = 201, body = Reservation), (status = 200, description = "the owner already held it", body = Reservation),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "taken or exhausted", body = ErrorBody)))]
async fn reserve_address(State(ctl): Ctl, Path(id): Path<String>, Body(req): Body<ReservationCreate>) -> ApiResult<Response> {
    Ok(created(ctl.reserve_address(&id, req).await?))
}

#[utoipa::path(get, path = "/v1/networks/{id}/reservations", params(("id" = String, Path, description = "UUID, name or domain:project:name")),
    responses((status = 200, body = Vec<Reservation>), (status = 404, body = ErrorBody)))]
async fn list_reservations(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<Vec<Reservation>>> {
    Ok(Json(ctl.list_reservations(&id).await?))
}

/// Releases a reserved address; releasing a free address is Ok.
#[utoipa::path(delete, path = "/v1/networks/{id}/reservations/{address}",
    params(("id" = String, Path, description = "UUID, name or domain:project:name"), ("address" = String, Path), ReleaseParams),
    responses((status = 204, description = "released or absent"), (status = 409, description = "held by an endpoint or another owner", body = ErrorBody)))]
async fn release_reservation(
    State(ctl): Ctl,
    Path((id, address)): Path<(String, String)>,
    Query(p): Query<ReleaseParams>,
) -> ApiResult<StatusCode> {
    ctl.release_reservation(&id, &address, p.owner.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/endpoints", params(EndpointFilter), responses((status = 200, body = Vec<Endpoint>)))]
async fn list_endpoints(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Query(f): Query<EndpointFilter>,
) -> ApiResult<Json<Vec<Endpoint>>> {
    let mut eps = ctl.list_endpoints(&f).await?;
    if let Some(p) = listing_scope(&who) {
        let mine: std::collections::BTreeSet<uuid::Uuid> =
            ctl.list_networks(None).await?.into_iter().filter(|n| n.fq_name.project() == p).map(|n| n.id).collect();
        eps.retain(|e| mine.contains(&e.network));
    }
    Ok(Json(eps))
}

#[utoipa::path(post, path = "/v1/endpoints", request_body = EndpointCreate,
    responses((status = 201, body = Endpoint), (status = 200, description = "the same endpoint existed", body = Endpoint),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_endpoint(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Body(req): Body<EndpointCreate>,
) -> ApiResult<Response> {
    require_host(&who, &req.host, "create an endpoint")?;
    // Only a project's caller is checked (and pays for reading the network).
    if let Some(p) = listing_scope(&who) {
        if let Ok(net) = ctl.get_network(&req.network).await {
            if !net.usable_by(p) {
                let why = format!(
                    "attach to network {}: it is project {}'s and not shared with {p}",
                    net.fq_name,
                    net.fq_name.project()
                );
                return Err(forbidden(&who, &why).into());
            }
        }
    }
    Ok(created(ctl.create_endpoint(req).await?))
}

#[utoipa::path(get, path = "/v1/endpoints/{id}", params(("id" = String, Path)), responses((status = 200, body = Endpoint), (status = 404, body = ErrorBody)))]
async fn get_endpoint(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<Endpoint>> {
    Ok(Json(ctl.get_endpoint(&id).await?))
}

#[utoipa::path(delete, path = "/v1/endpoints/{id}", params(("id" = String, Path)), responses((status = 204, description = "deleted or absent")))]
async fn delete_endpoint(State(ctl): Ctl, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    endpoint_of_host(&ctl, &who, &id, "delete an endpoint").await?;
    ctl.delete_endpoint(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses a host acting on endpoint `id` of another host; a missing
/// endpoint is the handler's to answer.
async fn endpoint_of_host(ctl: &Controller, who: &Principal, id: &str, what: &str) -> Result<(), Error> {
    if !matches!(who, Principal::Host(_)) {
        return Ok(());
    }
    match ctl.get_endpoint(id).await {
        Ok(ep) => require_host(who, &ep.host, what),
        Err(_) => Ok(()),
    }
}

#[utoipa::path(put, path = "/v1/endpoints/{id}/status", params(("id" = String, Path)), request_body = EndpointStatusUpdate,
    responses((status = 200, body = Endpoint), (status = 404, body = ErrorBody)))]
async fn set_endpoint_status(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(req): Body<EndpointStatusUpdate>,
) -> ApiResult<Json<Endpoint>> {
    endpoint_of_host(&ctl, &who, &id, "report the status of an endpoint").await?;
    Ok(Json(ctl.set_endpoint_status(&id, req).await?))
}

/// Moves an endpoint to the namespace its container has now (a restarted
/// container); its host's agent sends it.
#[utoipa::path(put, path = "/v1/endpoints/{id}/netns", params(("id" = String, Path)), request_body = EndpointNetns,
    responses((status = 200, body = Endpoint), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_endpoint_netns(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(req): Body<EndpointNetns>,
) -> ApiResult<Json<Endpoint>> {
    endpoint_of_host(&ctl, &who, &id, "move an endpoint").await?;
    Ok(Json(ctl.set_endpoint_netns(&id, req).await?))
}

#[utoipa::path(get, path = "/v1/hosts", responses((status = 200, body = Vec<Host>)))]
async fn list_hosts(State(ctl): Ctl) -> ApiResult<Json<Vec<Host>>> {
    Ok(Json(ctl.list_hosts().await?))
}

#[utoipa::path(get, path = "/v1/hosts/{name}", params(("name" = String, Path)), responses((status = 200, body = Host), (status = 404, body = ErrorBody)))]
async fn get_host(State(ctl): Ctl, Path(name): Path<String>) -> ApiResult<Json<Host>> {
    Ok(Json(ctl.get_host(&name).await?))
}

#[utoipa::path(put, path = "/v1/hosts/{name}", params(("name" = String, Path)), request_body = HostRegister,
    responses((status = 200, body = Host), (status = 400, body = ErrorBody)))]
async fn register_host(State(ctl): Ctl, Path(name): Path<String>, Body(req): Body<HostRegister>) -> ApiResult<Json<Host>> {
    Ok(Json(ctl.register_host(&name, req).await?))
}

#[utoipa::path(delete, path = "/v1/hosts/{name}", params(("name" = String, Path)),
    responses((status = 204, description = "deleted or absent"), (status = 409, body = ErrorBody)))]
async fn delete_host(State(ctl): Ctl, Path(name): Path<String>) -> ApiResult<StatusCode> {
    ctl.delete_host(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/policies", responses((status = 200, body = Vec<Policy>)))]
async fn list_policies(State(ctl): Ctl, Extension(who): Extension<Principal>) -> ApiResult<Json<Vec<Policy>>> {
    let mut policies = ctl.list_policies().await?;
    if let Some(p) = listing_scope(&who) {
        policies.retain(|x| x.fq_name.project() == p);
    }
    Ok(Json(policies))
}

/// Creates a policy. Rules an earlier rule shadows are stored and listed in `warnings`.
#[utoipa::path(post, path = "/v1/policies", request_body = PolicyCreate,
    responses((status = 201, body = PolicyView), (status = 200, description = "an identical policy existed", body = PolicyView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_policy(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Body(req): Body<PolicyCreate>,
) -> ApiResult<Response> {
    require_own_project(&who, req.project.as_deref(), &req.name)?;
    Ok(created(ctl.create_policy(req).await?))
}

/// A policy, the warnings about its rules, and the hit counters of its rules.
#[utoipa::path(get, path = "/v1/policies/{id}", params(("id" = String, Path)), responses((status = 200, body = PolicyView), (status = 404, body = ErrorBody)))]
async fn get_policy(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<PolicyView>> {
    Ok(Json(ctl.show_policy(&id).await?))
}

/// Replaces a policy's rules. Rules an earlier rule shadows are stored and listed in `warnings`.
#[utoipa::path(patch, path = "/v1/policies/{id}", params(("id" = String, Path)), request_body = PolicyUpdate,
    responses((status = 200, body = PolicyView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_policy(State(ctl): Ctl, Path(id): Path<String>, Body(req): Body<PolicyUpdate>) -> ApiResult<Json<PolicyView>> {
    Ok(Json(ctl.update_policy(&id, req).await?))
}

/// The rule index of a path, or a field error naming `index`.
fn rule_index(index: &str) -> Result<usize, Error> {
    index.parse().map_err(|_| FieldError::new("index", format!("{index:?} is not a rule index (0, 1, ...)")).into())
}

/// Replaces one rule of a policy: only that rule travels, is stored and
/// reaches the agents. Warnings that involve the rule are in `warnings`.
#[utoipa::path(put, path = "/v1/policies/{id}/rules/{index}", params(("id" = String, Path), ("index" = usize, Path)),
    request_body = RuleSpec,
    responses((status = 200, body = RuleChange), (status = 400, body = ErrorBody), (status = 404, description = "no such policy, rule or network", body = ErrorBody)))]
async fn set_rule(
    State(ctl): Ctl,
    Path((id, index)): Path<(String, String)>,
    Body(rule): Body<RuleSpec>,
) -> ApiResult<Json<RuleChange>> {
    Ok(Json(ctl.set_rule(&id, rule_index(&index)?, rule).await?))
}

/// Inserts one rule into a policy, at `at` (the end without it).
#[utoipa::path(post, path = "/v1/policies/{id}/rules", params(("id" = String, Path)), request_body = RuleInsert,
    responses((status = 200, body = RuleChange), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn insert_rule(State(ctl): Ctl, Path(id): Path<String>, Body(req): Body<RuleInsert>) -> ApiResult<Json<RuleChange>> {
    Ok(Json(ctl.insert_rule(&id, req).await?))
}

/// Deletes one rule of a policy; the later rules move up one.
#[utoipa::path(delete, path = "/v1/policies/{id}/rules/{index}", params(("id" = String, Path), ("index" = usize, Path)),
    responses((status = 200, body = RuleChange), (status = 404, description = "no such policy or rule", body = ErrorBody)))]
async fn delete_rule(State(ctl): Ctl, Path((id, index)): Path<(String, String)>) -> ApiResult<Json<RuleChange>> {
    Ok(Json(ctl.delete_rule(&id, rule_index(&index)?).await?))
}

/// Hit counters of a policy's rules (new flows each rule decided), summed
/// over hosts and per host. Kept in memory from the agents' last reports:
/// they restart from zero with the controller.
#[utoipa::path(get, path = "/v1/policies/{id}/counters", params(("id" = String, Path)),
    responses((status = 200, body = PolicyCounters), (status = 404, body = ErrorBody)))]
async fn policy_counters(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<PolicyCounters>> {
    Ok(Json(ctl.policy_counters(&id).await?))
}

/// An agent's report of the hit counters of the rules its host enforces; it
/// replaces the host's previous report.
#[utoipa::path(put, path = "/v1/hosts/{name}/counters", params(("name" = String, Path)), request_body = HostCounters,
    responses((status = 204, description = "stored"), (status = 400, body = ErrorBody), (status = 404, description = "the host is not registered", body = ErrorBody)))]
async fn report_counters(State(ctl): Ctl, Path(name): Path<String>, Body(req): Body<HostCounters>) -> ApiResult<StatusCode> {
    ctl.report_counters(&name, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets the ports of the endpoint's host published for it (replacing the
/// list); a host sets them for its own endpoints only.
#[utoipa::path(put, path = "/v1/endpoints/{id}/ports", params(("id" = String, Path)), request_body = EndpointPorts,
    responses((status = 200, body = Endpoint), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "a host port is another endpoint's", body = ErrorBody)))]
async fn set_endpoint_ports(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Body(req): Body<EndpointPorts>,
) -> ApiResult<Json<Endpoint>> {
    let ep = ctl.get_endpoint(&id).await?;
    require_host(&who, &ep.host, "publish ports")?;
    Ok(Json(ctl.set_endpoint_ports(&id, req).await?))
}

/// Renews the host's lease: a gateway's agent does, every half second; a
/// lease not renewed for 1.5 s ends, and the host's external networks move
/// to the other gateways.
#[utoipa::path(put, path = "/v1/hosts/{name}/lease", params(("name" = String, Path)),
    responses((status = 204, description = "renewed"), (status = 404, description = "the host is not registered", body = ErrorBody)))]
async fn renew_lease(State(ctl): Ctl, Path(name): Path<String>) -> ApiResult<StatusCode> {
    ctl.renew_lease(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/floating-ips", responses((status = 200, body = Vec<FloatingIp>)))]
async fn list_floating_ips(State(ctl): Ctl, Extension(who): Extension<Principal>) -> ApiResult<Json<Vec<FloatingIp>>> {
    let mut all = ctl.list_floating_ips().await?;
    if let Some(p) = listing_scope(&who) {
        all.retain(|f| &f.project == p);
    }
    Ok(Json(all))
}

/// Allocates a floating IP of an external network.
#[utoipa::path(post, path = "/v1/floating-ips", request_body = FloatingIpCreate,
    responses((status = 201, body = FloatingIp), (status = 200, description = "the project already held the address", body = FloatingIp),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_floating_ip(
    State(ctl): Ctl,
    Extension(who): Extension<Principal>,
    Body(req): Body<FloatingIpCreate>,
) -> ApiResult<Response> {
    let mut req = req;
    if let (None, Some(p)) = (&req.project, listing_scope(&who)) {
        req.project = Some(p.to_string());
    }
    require_own_project(&who, req.project.as_deref(), "a floating IP")?;
    Ok(created(ctl.create_floating_ip(req).await?))
}

#[utoipa::path(get, path = "/v1/floating-ips/{id}", params(("id" = String, Path, description = "UUID or address")),
    responses((status = 200, body = FloatingIp), (status = 404, body = ErrorBody)))]
async fn get_floating_ip(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(ctl.get_floating_ip(&id).await?))
}

#[utoipa::path(delete, path = "/v1/floating-ips/{id}", params(("id" = String, Path, description = "UUID or address")),
    responses((status = 204, description = "released or absent")))]
async fn delete_floating_ip(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<StatusCode> {
    ctl.delete_floating_ip(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AssociateParams {
    /// Move the floating IP when it is associated with another endpoint or
    /// address (refused otherwise).
    #[serde(default, rename = "move")]
    pub moving: bool,
}

/// Associates a floating IP with an endpoint's address.
#[utoipa::path(put, path = "/v1/floating-ips/{id}/association", params(("id" = String, Path, description = "UUID or address"), AssociateParams),
    request_body = FloatingIpAssociate,
    responses((status = 200, body = FloatingIp), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn associate_floating_ip(
    State(ctl): Ctl,
    Path(id): Path<String>,
    Query(p): Query<AssociateParams>,
    Body(req): Body<FloatingIpAssociate>,
) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(ctl.associate_floating_ip(&id, req, p.moving).await?))
}

#[utoipa::path(delete, path = "/v1/floating-ips/{id}/association", params(("id" = String, Path, description = "UUID or address")),
    responses((status = 200, body = FloatingIp), (status = 404, body = ErrorBody)))]
async fn disassociate_floating_ip(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(ctl.disassociate_floating_ip(&id).await?))
}

#[utoipa::path(delete, path = "/v1/policies/{id}", params(("id" = String, Path)),
    responses((status = 204, description = "deleted or absent"), (status = 409, description = "attached to networks", body = ErrorBody)))]
async fn delete_policy(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<StatusCode> {
    ctl.delete_policy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct WatchParams {
    /// Stream changes after this revision (from a snapshot or a previous event).
    pub after: u64,
    /// Send a progress event after this many milliseconds of quiet (100 to
    /// 5,000; 5,000 by default): a watcher that wants to notice a dead
    /// controller sooner asks for more often.
    pub progress_ms: Option<u64>,
    /// The cluster the watcher's revision belongs to (`Snapshot.cluster`):
    /// a watch of a store of another cluster is refused with 409
    /// `conflict` (take a snapshot), as a revision means nothing there.
    #[param(value_type = Option<String>, format = Uuid)]
    pub cluster: Option<uuid::Uuid>,
    /// The snapshot's `epoch` that `after` belongs to, when resuming from a
    /// saved revision: another store's (a migrated fabric) is refused with
    /// 410. Without it the revision is taken as this store's.
    #[param(value_type = Option<String>, format = Uuid)]
    pub epoch: Option<uuid::Uuid>,
    /// Only the endpoints of these networks (comma-separated IDs, at most
    /// 1,024) and the calling host's own; every other object is sent
    /// whole. Absent: every endpoint. A host asks for the networks it
    /// programs and takes a new snapshot when it needs more.
    pub networks: Option<String>,
    /// With `networks`: the host whose own endpoints come too. A host's
    /// credentials stand for their host (another is refused); an
    /// administrator's name one (a plugin run with them).
    pub host: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SnapshotParams {
    /// As `networks` of `GET /v1/watch`.
    pub networks: Option<String>,
    /// As `host` of `GET /v1/watch`.
    pub host: Option<String>,
}

/// The scope a request asks for, with the calling host's own endpoints
/// (or, for an administrator, those of the host it names).
fn scope_of(networks: Option<&str>, host: Option<&str>, who: &Principal) -> ApiResult<crate::watch::Scope> {
    let host = match (who, host) {
        (Principal::Host(me), Some(other)) if other != me => {
            return Err(crate::error::Error::from(tessera_model::FieldError::new(
                "host",
                format!("host {me}'s credentials receive its own endpoints, not host {other}'s"),
            ))
            .into())
        }
        (Principal::Host(me), _) => Some(me.as_str()),
        (_, named) => named,
    };
    Ok(crate::watch::Scope::parse(networks, host)?)
}

/// Every object agents mirror, consistent at one revision (with
/// `networks`: only those networks' endpoints and the calling host's own).
///
/// Read once per revision and shared by the hosts that ask for it at that
/// revision; the whole snapshot is also encoded once.
#[utoipa::path(get, path = "/v1/snapshot", params(SnapshotParams), responses((status = 200, body = Snapshot),
    (status = 400, description = "a bad network ID in networks", body = ErrorBody)))]
async fn snapshot(State(ctl): Ctl, Extension(who): Extension<Principal>, Query(p): Query<SnapshotParams>) -> ApiResult<Response> {
    if p.networks.is_some() {
        let scope = scope_of(p.networks.as_deref(), p.host.as_deref(), &who)?;
        let pieces = ctl.watch_hub().scoped_snapshot(scope).await?;
        let body = axum::body::Body::from_stream(futures::stream::iter(pieces.map(Ok::<_, std::convert::Infallible>)));
        return Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let shared = ctl.watch_hub().snapshot_pieces().await?;
    let pieces = futures::stream::iter((0..shared.len()).map(move |i| Ok::<_, std::convert::Infallible>(shared[i].clone())));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(pieces)).into_response())
}

/// Changes after a revision, as newline-delimited JSON `WatchEvent`s, with
/// periodic progress events. A revision whose events are discarded is
/// refused with 410 `compacted` and the current revision (take a snapshot);
/// one beyond the current revision (another store's) with 400. A watcher
/// that falls behind the log later gets an `error` event and the stream
/// ends. Each event is encoded once and shared by every watcher
/// (`watch_hub`).
#[utoipa::path(get, path = "/v1/watch", params(WatchParams), responses(
    (status = 200, body = WatchEvent, content_type = "application/x-ndjson"),
    (status = 400, description = "after is beyond the current revision", body = ErrorBody),
    (status = 409, description = "the store is of another cluster than `cluster`", body = ErrorBody),
    (status = 410, description = "the events after this revision are discarded", body = ErrorBody)))]
async fn watch(State(ctl): Ctl, Extension(who): Extension<Principal>, Query(p): Query<WatchParams>) -> ApiResult<Response> {
    let scope = scope_of(p.networks.as_deref(), p.host.as_deref(), &who)?;
    crate::watch::check_start(ctl.store().as_ref(), p.after, p.cluster, p.epoch).await?;
    let open = crate::metrics::WatcherGuard::new(&ctl.metrics.watchers);
    let every = crate::watch::progress_every(p.progress_ms);
    let lines = ctl.watch_hub().watch(p.after, every, who.to_string(), scope).map(move |line| {
        let _open = &open;
        Ok::<_, std::convert::Infallible>(line)
    });
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(lines)).into_response())
}

/// The controllers registered in the store (several may serve one store):
/// each one's URL, version, the hosts whose leases it holds, whether it is
/// alive (as the answering controller sees it) and which one leads.
/// Administrators only.
#[utoipa::path(get, path = "/v1/controllers", responses((status = 200, body = Vec<crate::service::Peer>), (status = 403, body = ErrorBody)))]
async fn list_controllers(State(ctl): Ctl) -> ApiResult<Json<Vec<crate::service::Peer>>> {
    Ok(Json(ctl.peers().await?))
}

/// The OpenAPI document, generated from the handlers and model types above.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera controller API",
        description = "Overlay networks for containers: networks, endpoints, hosts, policies, floating IPs and service chains."
    ),
    paths(
        healthz,
        readyz,
        metrics,
        list_projects,
        create_project,
        get_project,
        delete_project,
        list_networks,
        create_network,
        get_network,
        update_network,
        delete_network,
        network_ipam,
        reserve_address,
        list_reservations,
        release_reservation,
        list_endpoints,
        create_endpoint,
        get_endpoint,
        delete_endpoint,
        set_endpoint_status,
        set_endpoint_netns,
        list_hosts,
        get_host,
        register_host,
        delete_host,
        list_policies,
        create_policy,
        get_policy,
        update_policy,
        delete_policy,
        set_rule,
        insert_rule,
        delete_rule,
        policy_counters,
        report_counters,
        renew_lease,
        list_controllers,
        set_endpoint_ports,
        list_floating_ips,
        create_floating_ip,
        get_floating_ip,
        delete_floating_ip,
        associate_floating_ip,
        disassociate_floating_ip,
        create_token,
        list_tokens,
        delete_token,
        crate::api_services::list_service_templates,
        crate::api_services::create_service_template,
        crate::api_services::get_service_template,
        crate::api_services::delete_service_template,
        crate::api_services::list_services,
        crate::api_services::create_service,
        crate::api_services::get_service,
        crate::api_services::delete_service,
        crate::api_services::report_health,
        crate::api_flows::list_flows,
        crate::api_flows::follow_flows,
        crate::api_flows::top_flows,
        crate::api_flows::report_flows,
        crate::api_status::status
    ),
    components(schemas(ErrorBody, tessera_model::RuleSpec, tessera_model::Rule))
)]
pub struct ApiDoc;
