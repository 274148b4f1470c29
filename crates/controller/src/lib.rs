//! Tessera's controller: the REST API (`/v1`) and the source of truth.
//!
//! [`service::Controller`] holds the operations over a [`tessera_store::Store`];
//! [`api`] is the thin HTTP edge ([`ui`] a read-only page over it);
//! [`serve`] runs it on a listener.
#![forbid(unsafe_code)]

pub mod api;
pub mod api_flows;
pub mod api_services;
pub mod api_status;
pub mod auth;
pub mod conn;
pub mod error;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod service;
pub mod tls;
pub mod ui;
pub mod watch;
pub mod watch_hub;

use std::future::Future;
use std::sync::Arc;

pub use error::{Error, ErrorBody};
pub use service::Controller;

/// How long a stopping controller lets requests finish.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves the API on `listener` until `shutdown` resolves: over TLS, where
/// callers present a client certificate or a bearer token, or, with `tls`
/// `None`, in plain HTTP, where every caller acts as an administrator (only
/// for a controller on loopback: `--insecure-loopback`).
/// Connections are bounded and closed when idle ([`conn::ConnLimits`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: conn::ConnLimits,
    controller: Arc<Controller>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let duties = tokio::spawn(run_duties(controller.clone()));
    let app = api::router(controller.clone()).into_make_service_with_connect_info::<tls::Peer>();
    // Told to stop, the controller accepts nothing new and lets requests
    // finish for SHUTDOWN_GRACE; watches never finish by themselves, so it
    // then ends them (their agents continue on another controller).
    let (stopping, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stopping.send(true);
    });
    let mut graceful = stop.clone();
    let signal = async move {
        let _ = graceful.wait_for(|s| *s).await;
    };
    let serving = async {
        match tls {
            Some(config) => {
                axum::serve(tls::TlsListener::new(listener, config, limits)?, app).with_graceful_shutdown(signal).await
            }
            None => axum::serve(conn::PlainListener::new(listener, limits), app).with_graceful_shutdown(signal).await,
        }
    };
    let grace_over = async {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let served = tokio::select! {
        served = serving => served,
        () = grace_over => {
            tracing::info!(grace = ?SHUTDOWN_GRACE, "connections still open (watches) ended");
            Ok(())
        }
    };
    duties.abort();
    if let Err(e) = controller.resign().await {
        tracing::warn!(error = %e, "cannot leave the controllers of the store; its registration expires");
    }
    served
}

/// Keeps this controller registered, takes part in the election, and, as
/// leader, ends the leases of gateways whose agents stopped renewing them
/// ([`Controller::run_duties`]).
async fn run_duties(controller: Arc<Controller>) {
    let mut tick = tokio::time::interval(service::REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match controller.run_duties().await {
            Ok(()) if failing => {
                tracing::info!("controller duties run again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot run the controller's duties (registration, election, leases)");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
