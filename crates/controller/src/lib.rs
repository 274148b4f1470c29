//! Tessera's controller: the REST API (`/v1`) and the source of truth.
//!
//! [`service::Controller`] holds the operations over a [`tessera_store::Store`];
//! [`api`] is the thin HTTP edge; [`serve`] runs it on a listener.
#![forbid(unsafe_code)]

pub mod api;
pub mod error;
pub mod keys;
pub mod service;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

pub use error::{Error, ErrorBody};
pub use service::Controller;

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    controller: Arc<Controller>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, api::router(controller)).with_graceful_shutdown(shutdown).await
}
