//! The plugin's client of the controller's REST API: networks, endpoints and
//! address reservations.

use std::net::IpAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tessera_model::{Endpoint, Network, NetworkCreate, Reservation, ReservationCreate, Uuid};

/// Why a controller request failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("the Tessera controller at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// The controller refused; `message` names the field and the reason.
    #[error("{message}")]
    Refused { status: u16, code: String, message: String },
    #[error("the Tessera controller sent an unreadable answer: {0}")]
    Decode(String),
}

impl CtlError {
    pub fn code(&self) -> Option<&str> {
        match self {
            CtlError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some("not_found")
    }
}

#[derive(Clone)]
pub struct Ctl {
    base: String,
    http: reqwest::Client,
}

/// Escapes one path segment.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Ctl {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .build()
            .expect("HTTP client");
        Ctl { base: base.trim_end_matches('/').to_string(), http }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends a request; returns the decoded body and whether the status was 201.
    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<(T, bool), CtlError> {
        let unreachable = |e: reqwest::Error| CtlError::Unreachable { url: self.base.clone(), reason: e.to_string() };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
            let v = serde_json::from_slice(bytes).map_err(|e| CtlError::Decode(e.to_string()))?;
            return Ok((v, status.as_u16() == 201));
        }
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("controller answered {status}: {}", String::from_utf8_lossy(&bytes)));
        let code = body["error"]["code"].as_str().unwrap_or("internal").to_string();
        Err(CtlError::Refused { status: status.as_u16(), code, message })
    }

    pub async fn network(&self, reference: &str) -> Result<Option<Network>, CtlError> {
        match self.send(self.http.get(format!("{}/v1/networks/{}", self.base, seg(reference)))).await {
            Ok((n, _)) => Ok(Some(n)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn networks(&self) -> Result<Vec<Network>, CtlError> {
        Ok(self.send(self.http.get(format!("{}/v1/networks", self.base))).await?.0)
    }

    /// Creates a network; `created` is false when an identical one existed.
    pub async fn create_network(&self, req: &NetworkCreate) -> Result<(Network, bool), CtlError> {
        self.send(self.http.post(format!("{}/v1/networks", self.base)).json(req)).await
    }

    /// Deletes a network; deleting a missing one is Ok.
    pub async fn delete_network(&self, id: Uuid) -> Result<(), CtlError> {
        self.send::<serde_json::Value>(self.http.delete(format!("{}/v1/networks/{id}", self.base))).await.map(|_| ())
    }

    pub async fn endpoints(&self, network: Option<Uuid>, host: Option<&str>) -> Result<Vec<Endpoint>, CtlError> {
        let mut q = Vec::new();
        if let Some(n) = network {
            q.push(format!("network={n}"));
        }
        if let Some(h) = host {
            q.push(format!("host={}", seg(h)));
        }
        Ok(self.send(self.http.get(format!("{}/v1/endpoints?{}", self.base, q.join("&")))).await?.0)
    }

    /// Deletes an endpoint; deleting a missing one is Ok.
    pub async fn delete_endpoint(&self, id: Uuid) -> Result<(), CtlError> {
        self.send::<serde_json::Value>(self.http.delete(format!("{}/v1/endpoints/{id}", self.base))).await.map(|_| ())
    }

    pub async fn reserve(&self, network: Uuid, req: &ReservationCreate) -> Result<Reservation, CtlError> {
        Ok(self.send(self.http.post(format!("{}/v1/networks/{network}/reservations", self.base)).json(req)).await?.0)
    }

    pub async fn reservations(&self, network: Uuid) -> Result<Vec<Reservation>, CtlError> {
        Ok(self.send(self.http.get(format!("{}/v1/networks/{network}/reservations", self.base))).await?.0)
    }

    /// Releases a reserved address (only `owner`'s, when given); releasing a
    /// free address, or one of a network that is gone, is Ok.
    pub async fn release(&self, network: Uuid, address: IpAddr, owner: Option<&str>) -> Result<(), CtlError> {
        let mut url = format!("{}/v1/networks/{network}/reservations/{}", self.base, seg(&address.to_string()));
        if let Some(o) = owner {
            url += &format!("?owner={}", seg(o));
        }
        self.send::<serde_json::Value>(self.http.delete(url)).await.map(|_| ())
    }
}
