//! The agent's `/metrics` over HTTP (`--metrics-listen`): the metrics of
//! [`crate::metrics`] with what is read from the agent when scraped.

use std::sync::Arc;

use crate::agent::Agent;

/// The metrics text of `agent`, read now.
async fn text(agent: &Agent) -> String {
    let vifs = agent.dp.interfaces().await.unwrap_or_default();
    let dhcp = agent.dhcp.by_client.lock().unwrap_or_else(|p| p.into_inner()).values().fold([0u64; 4], |mut t, c| {
        t[0] += c.requests;
        t[1] += c.acks;
        t[2] += c.naks;
        t[3] += c.ignored;
        t
    });
    let mirror = agent.mirror.borrow().clone();
    let endpoints = agent.snapshot.borrow().as_ref().map_or(0, |s| s.endpoints.len());
    agent.metrics.text(&vifs, dhcp, &mirror, endpoints)
}

/// Serves `/metrics` on `listener` until the agent stops.
pub async fn serve(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|axum::extract::State(a): axum::extract::State<Arc<Agent>>| async move {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text(&a).await)
        }),
    );
    if let Err(e) = axum::serve(listener, app.with_state(agent)).await {
        tracing::error!(error = %e, "the metrics listener stopped");
    }
}
