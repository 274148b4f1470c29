//! The one client of the controller's REST API, used by the CLI, the agent
//! and the Docker plugin: timeouts, retries of unreachable attempts, and
//! refusals decoded into the [`ErrorBody`] the controller sends.
//!
//! Typed calls cover what the agent and the plugins ask; the CLI, which
//! speaks to every route, uses the path-level calls ([`ControllerClient::get`],
//! [`ControllerClient::post`], ...) with the same decoding.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_model::watch::{Snapshot, WatchEvent};
use tessera_model::{
    Endpoint, EndpointCreate, EndpointStatusUpdate, ErrorCode, GatewayRegister, Host, HostCounters, HostRegister, Network,
    NetworkCreate, Reservation, ReservationCreate, Uuid,
};

use crate::auth::Credentials;
use crate::error::ErrorBody;

/// Why a call to the controller did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller could not be reached (or the connection broke).
    #[error("controller at {url} is unreachable: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// The controller refused; the body names the field and the reason.
    #[error("{}", .body.error.message)]
    Refused { status: u16, body: ErrorBody },
    /// The controller answered something that is not what the API promises.
    #[error("controller answered {status} with an unreadable body: {body}")]
    BadResponse { status: u16, body: String },
    /// The client's own credentials cannot be used.
    #[error("credentials: {what}: {reason}")]
    Credentials { what: String, reason: String },
}

impl ClientError {
    /// The stable error code of a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { body, .. } => Some(body.error.code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::NotFound)
    }
}

/// Connection attempts give up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A request (not a watch) gives up after this long, unless told otherwise.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The first pause between attempts; it doubles up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(100);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// A client of one controller. Cheap to clone.
#[derive(Clone)]
pub struct ControllerClient {
    base: String,
    http: reqwest::Client,
    attempts: u32,
    timeout: Option<Duration>,
}

impl ControllerClient {
    /// A client of the controller at `base` (`http://host:port`): one
    /// attempt per call, connections give up after 3 s, requests after 15 s.
    pub fn new(base: &str) -> Self {
        Self::with_credentials(base, &Credentials::default()).expect("no credential files to read")
    }

    /// A client of the controller at `base` that proves who it is with
    /// `creds`: the CA verifies an `https://` controller, the certificate
    /// and key are presented (mutual TLS), the token is sent as a bearer
    /// token. Fails when a file cannot be read or is not PEM.
    pub fn with_credentials(base: &str, creds: &Credentials) -> Result<Self, ClientError> {
        let bad = |what: &Path, reason: String| ClientError::Credentials { what: what.display().to_string(), reason };
        let read = |p: &Path| std::fs::read(p).map_err(|e| bad(p, e.to_string()));
        let mut b = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).use_rustls_tls().tls_built_in_root_certs(false);
        if let Some(ca) = &creds.ca {
            let pem = read(ca)?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(ca, e.to_string()))? {
                b = b.add_root_certificate(cert);
            }
        }
        match (&creds.cert, &creds.key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                b = b.identity(reqwest::Identity::from_pem(&pem).map_err(|e| bad(cert, e.to_string()))?);
            }
            (None, None) => {}
            (Some(p), None) | (None, Some(p)) => return Err(bad(p, "a client certificate and its key go together".into())),
        }
        if let Some(token) = &creds.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Credentials { what: "token".into(), reason: "not a printable string".into() })?;
            value.set_sensitive(true);
            b = b.default_headers(reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]));
        }
        let http = b.build().map_err(|e| ClientError::Credentials { what: "TLS".into(), reason: e.to_string() })?;
        Ok(ControllerClient { base: base.trim_end_matches('/').to_string(), http, attempts: 1, timeout: Some(REQUEST_TIMEOUT) })
    }

    /// Makes up to `attempts` attempts of a call while the controller cannot
    /// be reached (pausing 0.1 s, doubling up to 2 s). Only for callers whose
    /// every request is idempotent, as the agent's are (endpoints are named).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Lets requests take as long as the controller needs (a person at the
    /// CLI can interrupt; a 50,000-rule update may take longer than 15 s).
    pub fn without_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends one call, retrying while the controller is unreachable; returns
    /// the decoded answer and whether it was `201 Created`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(T, bool), ClientError> {
        let mut pause = FIRST_RETRY_PAUSE;
        let mut attempt = 1;
        loop {
            match self.call_once(method.clone(), path, body).await {
                Err(ClientError::Unreachable { .. }) if attempt < self.attempts => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn call_once<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(T, bool), ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = self.timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|source| self.unreachable(source))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|source| self.unreachable(source))?;
        if (200..300).contains(&status) {
            let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
            let value = serde_json::from_slice(bytes)
                .map_err(|_| ClientError::BadResponse { status, body: String::from_utf8_lossy(bytes).into_owned() })?;
            return Ok((value, status == 201));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Refused { status, body }),
            Err(_) => Err(ClientError::BadResponse { status, body: String::from_utf8_lossy(&bytes).into_owned() }),
        }
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), source }
    }

    /// `GET path` (`/v1/...`), decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Ok(self.call(Method::GET, path, None::<&()>).await?.0)
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &(impl Serialize + ?Sized)) -> Result<T, ClientError> {
        Ok(self.call(Method::POST, path, Some(body)).await?.0)
    }

    pub async fn patch<T: DeserializeOwned>(&self, path: &str, body: &(impl Serialize + ?Sized)) -> Result<T, ClientError> {
        Ok(self.call(Method::PATCH, path, Some(body)).await?.0)
    }

    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &(impl Serialize + ?Sized)) -> Result<T, ClientError> {
        Ok(self.call(Method::PUT, path, Some(body)).await?.0)
    }

    /// DELETE whose answer has a body.
    pub async fn delete_for<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Ok(self.call(Method::DELETE, path, None::<&()>).await?.0)
    }

    /// DELETE; deleting what is gone succeeds (the controller answers 204).
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.delete_for::<serde_json::Value>(path).await.map(|_| ())
    }
}

/// Hosts, the mirror and endpoints: what an agent asks.
impl ControllerClient {
    /// `PUT /v1/hosts/{name}`: registers (or refreshes) a host.
    pub async fn register_host(
        &self,
        name: &str,
        underlay_ip: IpAddr,
        gateways: &[GatewayRegister],
    ) -> Result<Host, ClientError> {
        let body = HostRegister { underlay_ip: underlay_ip.to_string(), gateways: gateways.to_vec() };
        self.put(&format!("/v1/hosts/{}", seg(name)), &body).await
    }

    /// `PUT /v1/endpoints/{id}/ports`: sets the ports published for an endpoint.
    pub async fn set_endpoint_ports(&self, id: Uuid, ports: &[tessera_model::PublishedPort]) -> Result<Endpoint, ClientError> {
        self.put(&format!("/v1/endpoints/{id}/ports"), &tessera_model::EndpointPorts { ports: ports.to_vec() }).await
    }

    /// `PUT /v1/hosts/{name}/lease`: renews the host's lease (a gateway's
    /// agent, every half second).
    pub async fn renew_lease(&self, name: &str) -> Result<(), ClientError> {
        self.put::<serde_json::Value>(&format!("/v1/hosts/{}/lease", seg(name)), &()).await.map(|_| ())
    }

    /// `PUT /v1/hosts/{name}/counters`: replaces the hit counters the
    /// controller holds for `host`.
    pub async fn report_counters(&self, host: &str, report: &HostCounters) -> Result<(), ClientError> {
        self.put::<serde_json::Value>(&format!("/v1/hosts/{}/counters", seg(host)), report).await.map(|_| ())
    }

    /// `GET /v1/snapshot`: every mirrored object at one revision.
    pub async fn snapshot(&self) -> Result<Snapshot, ClientError> {
        self.get("/v1/snapshot").await
    }

    /// `GET /v1/watch?after=REV`: the changes after `after`, one event per
    /// NDJSON line, for as long as the controller keeps the stream open
    /// (no request timeout; the controller sends progress when quiet).
    pub async fn watch(&self, after: u64) -> Result<impl Stream<Item = Result<WatchEvent, ClientError>>, ClientError> {
        self.ndjson(&format!("/v1/watch?after={after}")).await
    }

    /// `GET PATH` answered with one JSON value per line (NDJSON), for as
    /// long as the controller keeps the stream open.
    pub async fn ndjson<T: DeserializeOwned + 'static>(
        &self,
        path: &str,
    ) -> Result<impl Stream<Item = Result<T, ClientError>>, ClientError> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await.map_err(|source| self.unreachable(source))?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Refused { status, body },
                Err(_) => ClientError::BadResponse { status, body: String::from_utf8_lossy(&bytes).into_owned() },
            });
        }
        let base = self.base.clone();
        let mut buf: Vec<u8> = Vec::new();
        Ok(resp.bytes_stream().flat_map(move |chunk| {
            let mut out: Vec<Result<T, ClientError>> = Vec::new();
            match chunk {
                Err(source) => out.push(Err(ClientError::Unreachable { url: base.clone(), source })),
                Ok(bytes) => {
                    buf.extend_from_slice(&bytes);
                    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let line = &line[..line.len() - 1];
                        // Empty lines keep a quiet stream alive.
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        out.push(
                            serde_json::from_slice(line).map_err(|_| ClientError::BadResponse {
                                status,
                                body: String::from_utf8_lossy(line).into_owned(),
                            }),
                        );
                    }
                }
            }
            futures::stream::iter(out)
        }))
    }

    /// `POST /v1/endpoints`; a create identical to an existing endpoint of
    /// the same name returns it.
    pub async fn create_endpoint(&self, req: &EndpointCreate) -> Result<Endpoint, ClientError> {
        self.post("/v1/endpoints", req).await
    }

    /// `DELETE /v1/endpoints/{id}`; deleting a missing one is Ok.
    pub async fn delete_endpoint(&self, id: Uuid) -> Result<(), ClientError> {
        self.delete(&format!("/v1/endpoints/{id}")).await
    }

    /// `PUT /v1/endpoints/{id}/status`.
    pub async fn set_endpoint_status(&self, id: Uuid, update: &EndpointStatusUpdate) -> Result<Endpoint, ClientError> {
        self.put(&format!("/v1/endpoints/{id}/status"), update).await
    }

    /// `GET /v1/endpoints?network=&host=`: endpoints of a network, of a host, or both.
    pub async fn endpoints(&self, network: Option<Uuid>, host: Option<&str>) -> Result<Vec<Endpoint>, ClientError> {
        let mut q = Vec::new();
        if let Some(n) = network {
            q.push(format!("network={n}"));
        }
        if let Some(h) = host {
            q.push(format!("host={}", seg(h)));
        }
        self.get(&format!("/v1/endpoints?{}", q.join("&"))).await
    }
}

/// Networks and address reservations: what the Docker plugin asks.
impl ControllerClient {
    /// `GET /v1/networks/{ref}` (a UUID, a fully qualified name or a name in
    /// the default project).
    pub async fn network(&self, reference: &str) -> Result<Network, ClientError> {
        self.get(&format!("/v1/networks/{}", seg(reference))).await
    }

    /// [`Self::network`], with a network that does not exist as `None`.
    pub async fn find_network(&self, reference: &str) -> Result<Option<Network>, ClientError> {
        match self.network(reference).await {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn networks(&self) -> Result<Vec<Network>, ClientError> {
        self.get("/v1/networks").await
    }

    /// `POST /v1/networks`; `created` is false when an identical one existed.
    pub async fn create_network(&self, req: &NetworkCreate) -> Result<(Network, bool), ClientError> {
        self.call(Method::POST, "/v1/networks", Some(req)).await
    }

    /// Deletes a network; deleting a missing one is Ok.
    pub async fn delete_network(&self, id: Uuid) -> Result<(), ClientError> {
        self.delete(&format!("/v1/networks/{id}")).await
    }

    /// `POST /v1/networks/{id}/reservations`.
    pub async fn reserve(&self, network: Uuid, req: &ReservationCreate) -> Result<Reservation, ClientError> {
        self.post(&format!("/v1/networks/{network}/reservations"), req).await
    }

    pub async fn reservations(&self, network: Uuid) -> Result<Vec<Reservation>, ClientError> {
        self.get(&format!("/v1/networks/{network}/reservations")).await
    }

    /// Releases a reserved address (only `owner`'s, when given); releasing a
    /// free address, or one of a network that is gone, is Ok.
    pub async fn release(&self, network: Uuid, address: IpAddr, owner: Option<&str>) -> Result<(), ClientError> {
        let mut path = format!("/v1/networks/{network}/reservations/{}", seg(&address.to_string()));
        if let Some(o) = owner {
            path += &format!("?owner={}", seg(o));
        }
        self.delete(&path).await
    }
}

/// Escapes one path segment or query value (names may hold `:`, which is
/// fine, but never `/`, `?` or `&`).
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_segment_escapes_what_would_change_the_path() {
        assert_eq!(seg("default-domain:admin:red"), "default-domain:admin:red");
        assert_eq!(seg("a/b c?d&é"), "a%2Fb%20c%3Fd%26%C3%A9");
    }
}
