//! `GET /v1/status`: this controller as an operator sees it — its store
//! (which, the revision, whether it takes writes), the controllers sharing
//! the store, and the hosts watching it with how far behind each is.
//! Administrators only. Handlers only translate; the figures come from
//! [`crate::service`] and [`crate::watch_hub`].

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use uuid::Uuid;

use crate::error::ErrorBody;
use crate::http::{ApiResult, Ctl};
use crate::service::{Controller, Peer};
use crate::watch_hub::WatcherStatus;

/// The routes of this module.
pub fn routes() -> Router<Arc<Controller>> {
    Router::new().route("/v1/status", get(status))
}

/// This controller's status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ControllerStatus {
    /// This controller's identity among the controllers of its store.
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub version: String,
    pub store: StoreStatus,
    /// The watch hub: how far it has read the store's log, what it holds.
    pub watch: WatchStatus,
    /// The controllers registered in the store (this one included).
    pub controllers: Vec<Peer>,
}

/// The store this controller serves.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StoreStatus {
    /// `redb PATH` or `etcd ENDPOINTS`.
    pub name: String,
    /// Its current revision (absent when it cannot be read).
    pub revision: Option<u64>,
    /// Whether it takes writes; when not, `reason` says why.
    pub ready: bool,
    pub reason: Option<String>,
}

/// The watch streams this controller serves.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WatchStatus {
    /// The revision up to which the hub has read the store's log.
    pub revision: u64,
    /// Recent events held encoded, and their bytes.
    pub ring_events: usize,
    pub ring_bytes: usize,
    /// The open watches, the furthest behind first.
    pub watchers: Vec<WatcherStatus>,
}

#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = ControllerStatus), (status = 403, body = ErrorBody)))]
pub async fn status(State(ctl): Ctl) -> ApiResult<Json<ControllerStatus>> {
    let ready = ctl.check_storage().await.err().map(|e| e.to_string());
    let revision = ctl.store().revision().await;
    let reason = ready.or_else(|| revision.as_ref().err().map(|e| e.to_string()));
    let store = StoreStatus { name: ctl.store_name().to_string(), revision: revision.ok(), ready: reason.is_none(), reason };
    let hub = ctl.watch_hub();
    let (ring_events, ring_bytes) = hub.held();
    let watch = WatchStatus { revision: hub.cursor(), ring_events, ring_bytes, watchers: hub.watchers() };
    // The store may be away: the rest of the status still says so.
    let controllers = ctl.peers().await.unwrap_or_default();
    Ok(Json(ControllerStatus { id: ctl.id(), version: env!("CARGO_PKG_VERSION").to_string(), store, watch, controllers }))
}
