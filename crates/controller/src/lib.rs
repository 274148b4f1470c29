//! Tessera's controller: the REST API (`/v1`) and the source of truth.
//!
//! [`service::Controller`] holds the operations over a [`tessera_store::Store`];
//! [`api`] is the thin HTTP edge; [`serve`] runs it on a listener.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod error;
pub mod keys;
pub mod service;
pub mod tls;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

pub use error::{Error, ErrorBody};
pub use service::Controller;

/// Serves the API on `listener` until `shutdown` resolves: over TLS, where
/// callers present a client certificate or a bearer token, or, with `tls`
/// `None`, in plain HTTP, where every caller acts as an administrator (only
/// for a controller on loopback: `--insecure-loopback`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    controller: Arc<Controller>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::router(controller).into_make_service_with_connect_info::<tls::Peer>();
    match tls {
        Some(config) => axum::serve(tls::TlsListener::new(listener, config)?, app).with_graceful_shutdown(shutdown).await,
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
    }
}
