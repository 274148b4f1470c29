//! The agent's client of the controller: snapshot, watch, endpoints, host registration.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tessera_model::watch::{Snapshot, WatchEvent};
use tessera_model::{Endpoint, EndpointCreate, EndpointStatus, Host, HostRegister};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("controller {url} is unreachable: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// The controller refused the request; `body` is its JSON error body.
    #[error("controller refused ({status}): {message}")]
    Refused { status: u16, message: String, body: serde_json::Value },
    #[error("controller sent an unreadable answer: {0}")]
    Decode(String),
}

/// Attempts of one request while the controller is unreachable (about 6 s in all).
const SEND_ATTEMPTS: u32 = 6;

#[derive(Clone)]
pub struct ControllerClient {
    base: String,
    http: reqwest::Client,
}

impl ControllerClient {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(3)).build().expect("HTTP client");
        ControllerClient { base: base.trim_end_matches('/').to_string(), http }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends a request, retrying while the controller cannot be reached
    /// (every request the agent makes is idempotent: endpoints are named).
    async fn send<T: serde::de::DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, ControllerError> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let Some(this) = req.try_clone() else { return self.send_once(req).await };
            match self.send_once(this).await {
                Err(ControllerError::Unreachable { .. }) if attempt < SEND_ATTEMPTS => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn send_once<T: serde::de::DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, ControllerError> {
        let resp = req.timeout(Duration::from_secs(15)).send().await.map_err(|source| self.unreachable(source))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| self.unreachable(source))?;
        if status.is_success() {
            let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
            return serde_json::from_slice(bytes).map_err(|e| ControllerError::Decode(e.to_string()));
        }
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        let message =
            body["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(ControllerError::Refused { status: status.as_u16(), message, body })
    }

    fn unreachable(&self, source: reqwest::Error) -> ControllerError {
        ControllerError::Unreachable { url: self.base.clone(), source }
    }

    pub async fn register_host(&self, name: &str, underlay_ip: std::net::IpAddr) -> Result<Host, ControllerError> {
        let body = HostRegister { underlay_ip: underlay_ip.to_string() };
        self.send(self.http.put(format!("{}/v1/hosts/{name}", self.base)).json(&body)).await
    }

    pub async fn snapshot(&self) -> Result<Snapshot, ControllerError> {
        self.send(self.http.get(format!("{}/v1/snapshot", self.base))).await
    }

    /// The watch stream after `after`, one event per NDJSON line.
    pub async fn watch(&self, after: u64) -> Result<impl Stream<Item = Result<WatchEvent, ControllerError>>, ControllerError> {
        let resp =
            self.http.get(format!("{}/v1/watch?after={after}", self.base)).send().await.map_err(|s| self.unreachable(s))?;
        if !resp.status().is_success() {
            return Err(ControllerError::Refused {
                status: resp.status().as_u16(),
                message: "watch refused".into(),
                body: serde_json::Value::Null,
            });
        }
        let base = self.base.clone();
        let mut buf: Vec<u8> = Vec::new();
        Ok(resp.bytes_stream().flat_map(move |chunk| {
            let mut out: Vec<Result<WatchEvent, ControllerError>> = Vec::new();
            match chunk {
                Err(source) => out.push(Err(ControllerError::Unreachable { url: base.clone(), source })),
                Ok(bytes) => {
                    buf.extend_from_slice(&bytes);
                    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        out.push(
                            serde_json::from_slice(&line[..line.len() - 1]).map_err(|e| ControllerError::Decode(e.to_string())),
                        );
                    }
                }
            }
            futures::stream::iter(out)
        }))
    }

    pub async fn create_endpoint(&self, req: &EndpointCreate) -> Result<Endpoint, ControllerError> {
        self.send(self.http.post(format!("{}/v1/endpoints", self.base)).json(req)).await
    }

    pub async fn delete_endpoint(&self, id: uuid::Uuid) -> Result<(), ControllerError> {
        self.send::<serde_json::Value>(self.http.delete(format!("{}/v1/endpoints/{id}", self.base))).await.map(|_| ())
    }

    pub async fn set_endpoint_status(&self, id: uuid::Uuid, status: EndpointStatus) -> Result<Endpoint, ControllerError> {
        let body = serde_json::json!({ "status": status });
        self.send(self.http.put(format!("{}/v1/endpoints/{id}/status", self.base)).json(&body)).await
    }
}

impl ControllerClient {
    /// Endpoints whose data plane is on `host`.
    pub async fn list_endpoints(&self, host: &str) -> Result<Vec<Endpoint>, ControllerError> {
        self.send(self.http.get(format!("{}/v1/endpoints?host={host}", self.base))).await
    }

    pub async fn get_network(&self, reference: &str) -> Result<tessera_model::Network, ControllerError> {
        self.send(self.http.get(format!("{}/v1/networks/{reference}", self.base))).await
    }

    /// Replaces the hit counters the controller holds for `host`.
    pub async fn report_counters(&self, host: &str, report: &tessera_model::HostCounters) -> Result<(), ControllerError> {
        self.send::<serde_json::Value>(self.http.put(format!("{}/v1/hosts/{host}/counters", self.base)).json(report))
            .await
            .map(|_| ())
    }
}
