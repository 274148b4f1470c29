//! The HTTP edge on the plugin socket: one route per protocol call. Handlers
//! decode, call [`Plugin`], and map its errors to the wire once: `Err` for
//! the network driver, `Error` for the IPAM driver, a refusal for authz.
//!
//! Every handler reads the whole body, even one it ignores: a connection
//! whose request body is left unread is closed after the answer, and
//! dockerd, which keeps connections to plugins open, would then find it
//! broken and wait a second before retrying.
//!
//! A body that cannot be decoded is answered with HTTP 400 (and `Err`, which
//! Docker's plugin client reads whatever the status); an operation that fails
//! is answered with HTTP 200 and the error field, as the protocol asks.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Serialize;
use tracing::Instrument;

use crate::driver::{DriverError, Plugin};
use crate::protocol::*;

type P = State<Arc<Plugin>>;

fn reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], bytes).into_response()
}

fn ok<T: Serialize>(body: &T) -> Response {
    reply(StatusCode::OK, body)
}

/// The message Docker shows for a failed call.
fn message(e: &DriverError) -> String {
    format!("{PLUGIN_NAME}: {e}")
}

/// A network driver answer: the body, or `{"Err": ...}`.
fn net<T: Serialize>(call: &str, r: Result<T, DriverError>) -> Response {
    match r {
        Ok(body) => ok(&body),
        Err(e) => {
            tracing::warn!(call, error = %e, "network driver call failed");
            ok(&NetworkErrorResponse { err: message(&e) })
        }
    }
}

/// An IPAM driver answer: the body, or `{"Error": ...}`.
fn ipam<T: Serialize>(call: &str, r: Result<T, DriverError>) -> Response {
    match r {
        Ok(body) => ok(&body),
        Err(e) => {
            tracing::warn!(call, error = %e, "IPAM driver call failed");
            ok(&IpamErrorResponse { error: message(&e) })
        }
    }
}

/// Decodes a body or answers 400 naming the field.
macro_rules! body {
    ($bytes:expr, $ty:ty) => {
        match decode::<$ty>(&$bytes) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable plugin request");
                let msg = format!("{PLUGIN_NAME}: bad request: {e}");
                return reply(StatusCode::BAD_REQUEST, &serde_json::json!({ "Err": msg, "Error": msg }));
            }
        }
    };
}

#[derive(Serialize)]
struct Empty {}

pub fn router(plugin: Arc<Plugin>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.AllocateNetwork", post(empty))
        .route("/NetworkDriver.FreeNetwork", post(empty))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(endpoint_info))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(leave))
        .route("/NetworkDriver.DiscoverNew", post(discover))
        .route("/NetworkDriver.DiscoverDelete", post(discover))
        .route("/NetworkDriver.ProgramExternalConnectivity", post(program_external))
        .route("/NetworkDriver.RevokeExternalConnectivity", post(revoke_external))
        .route("/IpamDriver.GetCapabilities", post(ipam_capabilities))
        .route("/IpamDriver.GetDefaultAddressSpaces", post(address_spaces))
        .route("/IpamDriver.RequestPool", post(request_pool))
        .route("/IpamDriver.ReleasePool", post(release_pool))
        .route("/IpamDriver.RequestAddress", post(request_address))
        .route("/IpamDriver.ReleaseAddress", post(release_address))
        .route("/AuthZPlugin.AuthZReq", post(authz_request))
        .route("/AuthZPlugin.AuthZRes", post(authz_response))
        .fallback(unknown)
        .with_state(plugin)
}

async fn unknown(uri: axum::http::Uri) -> Response {
    tracing::warn!(path = %uri.path(), "unknown plugin call");
    reply(StatusCode::NOT_FOUND, &NetworkErrorResponse { err: format!("{PLUGIN_NAME}: unknown call {}", uri.path()) })
}

async fn activate(_body: Bytes) -> Response {
    ok(&ActivateResponse::tessera())
}

async fn capabilities(_body: Bytes) -> Response {
    ok(&CapabilitiesResponse { scope: "local".into(), connectivity_scope: "local".into() })
}

async fn empty(_body: Bytes) -> Response {
    ok(&Empty {})
}

async fn create_network(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, CreateNetworkRequest);
    let span = tracing::info_span!("CreateNetwork", docker_network = %req.network_id);
    net("CreateNetwork", p.create_network(req).instrument(span).await.map(|()| Empty {}))
}

async fn delete_network(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, NetworkRequest);
    net("DeleteNetwork", p.delete_network(&req.network_id).await.map(|()| Empty {}))
}

async fn create_endpoint(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, CreateEndpointRequest);
    let t = std::time::Instant::now();
    let r = p.create_endpoint(req).await;
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "CreateEndpoint answered");
    net("CreateEndpoint", r)
}

async fn delete_endpoint(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, EndpointRequest);
    net("DeleteEndpoint", p.delete_endpoint(&req.network_id, &req.endpoint_id).await.map(|()| Empty {}))
}

async fn endpoint_info(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, EndpointRequest);
    net("EndpointOperInfo", p.endpoint_info(&req.network_id, &req.endpoint_id).await)
}

async fn join(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, JoinRequest);
    let span = tracing::info_span!("Join", docker_network = %req.network_id, endpoint = %req.endpoint_id);
    let t = std::time::Instant::now();
    tracing::debug!("Join asked");
    let r = p.join(req).instrument(span).await;
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "Join answered");
    net("Join", r)
}

async fn leave(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, EndpointRequest);
    let span = tracing::info_span!("Leave", docker_network = %req.network_id, endpoint = %req.endpoint_id);
    net("Leave", p.leave(&req.network_id, &req.endpoint_id).instrument(span).await.map(|()| Empty {}))
}

async fn discover(bytes: Bytes) -> Response {
    let _req = body!(bytes, DiscoveryNotification);
    ok(&Empty {})
}

async fn program_external(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, ProgramExternalConnectivityRequest);
    let span = tracing::info_span!("ProgramExternalConnectivity", endpoint = %req.endpoint_id);
    net("ProgramExternalConnectivity", p.program_external(req).instrument(span).await.map(|()| Empty {}))
}

async fn revoke_external(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, EndpointRequest);
    net("RevokeExternalConnectivity", p.revoke_external(&req.network_id, &req.endpoint_id).await.map(|()| Empty {}))
}

async fn ipam_capabilities(_body: Bytes) -> Response {
    ok(&IpamCapabilitiesResponse { requires_mac_address: false, requires_request_replay: false })
}

async fn address_spaces(_body: Bytes) -> Response {
    ok(&AddressSpacesResponse {
        local_default_address_space: format!("{PLUGIN_NAME}-local"),
        global_default_address_space: format!("{PLUGIN_NAME}-global"),
    })
}

async fn request_pool(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, RequestPoolRequest);
    let r = p.request_pool(req.pool, req.sub_pool, req.v6).map(|(id, pool)| RequestPoolResponse {
        pool_id: id.to_string(),
        pool,
        data: Default::default(),
    });
    ipam("RequestPool", r)
}

async fn release_pool(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, ReleasePoolRequest);
    ipam("ReleasePool", p.release_pool(&req.pool_id).map(|()| Empty {}))
}

async fn request_address(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, RequestAddressRequest);
    let t = std::time::Instant::now();
    let r = p
        .request_address(&req.pool_id, req.address, req.is_gateway())
        .await
        .map(|address| RequestAddressResponse { address, data: Default::default() });
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "RequestAddress answered");
    ipam("RequestAddress", r)
}

async fn release_address(State(p): P, bytes: Bytes) -> Response {
    let req = body!(bytes, ReleaseAddressRequest);
    ipam("ReleaseAddress", p.release_address(&req.pool_id, req.address).await.map(|()| Empty {}))
}

async fn authz_request(State(p): P, bytes: Bytes) -> Response {
    match decode::<AuthzRequest>(&bytes) {
        Ok(req) => ok(&p.authorize(&req).await),
        // Never stand in dockerd's way over a request the hook cannot read.
        Err(e) => {
            tracing::warn!(error = %e, "undecodable authz request; allowed");
            ok(&AuthzResponse::allow())
        }
    }
}

async fn authz_response(_body: Bytes) -> Response {
    ok(&AuthzResponse::allow())
}
