//! The one client of the controller's REST API, used by the CLI, the agent
//! and the Docker plugin: timeouts, retries of unreachable attempts, and
//! refusals decoded into the [`ErrorBody`] the controller sends.
//!
//! Typed calls cover what the agent and the plugins ask; the CLI, which
//! speaks to every route, uses the path-level calls ([`ControllerClient::get`],
//! [`ControllerClient::post`], ...) with the same decoding.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
use crate::targets::{BadTargets, Failure, Target, Tried};

/// Why a call to the controller did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No controller could be reached (or each connection broke, or each
    /// answered 503): every one tried, and why it failed.
    #[error("{} unreachable: {tried}", if tried.0.len() > 1 { "every controller" } else { "controller" })]
    Unreachable { tried: Tried },
    /// A call that is not idempotent may have reached a controller that then
    /// failed (a timeout, a broken connection, a 503); it is not replayed on
    /// another, which could apply it twice.
    #[error(
        "controller {controller} failed after the call may have reached it ({reason}); \
         not replayed on another controller because the call is not idempotent: check whether it took effect{}",
        if tried.0.is_empty() { String::new() } else { format!(" (tried before: {tried})") }
    )]
    NotReplayed { controller: String, reason: String, tried: Tried },
    /// The controller refused; the body names the field and the reason.
    #[error("{}", .body.error.message)]
    Refused { status: u16, body: ErrorBody },
    /// The controller answered something that is not what the API promises.
    #[error("controller answered {status} with an unreadable body: {body}")]
    BadResponse { status: u16, body: String },
    /// The client's own credentials cannot be used.
    #[error("credentials: {what}: {reason}")]
    Credentials { what: String, reason: String },
    /// The list of controllers cannot be used.
    #[error(transparent)]
    BadUrl(#[from] BadTargets),
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

    fn unreachable(controller: String, reason: String) -> Self {
        ClientError::Unreachable { tried: Tried(vec![Failure { controller, reason }]) }
    }
}

/// Connection attempts give up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A request (not a watch) gives up after this long, unless told otherwise.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The first pause between attempts; it doubles up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(100);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// One controller and the HTTP client that reaches it.
struct Node {
    target: Target,
    label: String,
    http: reqwest::Client,
}

/// How one attempt on one controller failed.
enum Failed {
    /// The call did not reach the controller (no connection): any call may
    /// go to the next one.
    NotReached(String),
    /// The call may have reached it (timeout, broken connection, 503):
    /// only an idempotent call goes to the next one.
    MaybeReached(String, Option<(u16, ErrorBody)>),
    /// The controller answered: that is the answer.
    Answered(ClientError),
}

/// A reading of a controller's clock ([`ControllerClient::clock`]).
#[derive(Debug, Clone, Copy)]
pub struct ClockReading {
    pub before: std::time::SystemTime,
    pub after: std::time::SystemTime,
    /// The answer's `Date`; `None` when it had none.
    pub date: Option<std::time::SystemTime>,
}

impl ClockReading {
    /// How far the controller's clock is ahead (positive) or behind
    /// (negative) of this host's, in seconds, beyond what the reading can
    /// tell apart (`Date` is in whole seconds): 0 when they may agree.
    pub fn skew_secs(&self) -> Option<f64> {
        let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let (earliest, latest) = (secs(self.date?), secs(self.date?) + 1.0);
        let (before, after) = (secs(self.before), secs(self.after));
        Some(if earliest > after {
            earliest - after
        } else if latest < before {
            latest - before
        } else {
            0.0
        })
    }
}

/// A client of the fabric's controllers (one, or several sharing a store).
/// Cheap to clone; clones share which controller they stick to.
///
/// A call goes to the controller that answered last; on a connection error,
/// a timeout or a 503 it moves to the next in the list and sticks there.
/// GET, PUT and DELETE are idempotent and are retried on the next
/// controller whatever happened; POST and PATCH go on to the next one only
/// when the connection was never made, unless the caller marked its calls
/// idempotent ([`Self::with_attempts`]).
#[derive(Clone)]
pub struct ControllerClient {
    nodes: Arc<Vec<Node>>,
    current: Arc<AtomicUsize>,
    attempts: u32,
    idempotent: bool,
    timeout: Option<Duration>,
    /// The host whose own endpoints a scoped snapshot or watch includes,
    /// named for credentials that are not the host's (an administrator's).
    scope_host: Option<String>,
}

impl ControllerClient {
    /// A client of the controllers at `base` (`http://host:port`, or
    /// several separated by commas): one attempt per call, connections give
    /// up after 3 s, requests after 15 s.
    pub fn new(base: &str) -> Self {
        Self::with_credentials(base, &Credentials::default()).unwrap_or_else(|_| {
            // A list that does not parse fails at each call, as one bad URL always did.
            let target = Target { base: base.trim_end_matches('/').to_string(), pin: None };
            Self::of_nodes(vec![Node { label: target.label(), target, http: reqwest::Client::new() }])
        })
    }

    /// A client of the controllers at `base` (one URL, several separated by
    /// commas, or a name that resolves to several addresses: see
    /// [`crate::targets::parse`]) that proves who it is with `creds`: the CA
    /// verifies an `https://` controller, the certificate and key are
    /// presented (mutual TLS), the token is sent as a bearer token. Fails
    /// when a file cannot be read or is not PEM, or a URL is not one.
    pub fn with_credentials(base: &str, creds: &Credentials) -> Result<Self, ClientError> {
        Self::with_targets(crate::targets::parse(base)?, creds)
    }

    /// A client of the controllers `targets`, tried in order (for a caller
    /// that found them itself; [`Self::with_credentials`] parses a list).
    /// A target pinned to an address is reached there, and TLS verifies
    /// the URL's name.
    pub fn with_targets(targets: Vec<Target>, creds: &Credentials) -> Result<Self, ClientError> {
        if targets.is_empty() {
            return Err(BadTargets { url: String::new(), reason: "no controller URL given".into() }.into());
        }
        let mut nodes = Vec::new();
        for target in targets {
            // One HTTP client per controller (a builder cannot be copied).
            let mut b = http_builder(creds)?;
            if let Some((name, addr)) = &target.pin {
                b = b.resolve(name, *addr);
            }
            let http = b.build().map_err(|e| ClientError::Credentials { what: "TLS".into(), reason: e.to_string() })?;
            nodes.push(Node { label: target.label(), target, http });
        }
        Ok(Self::of_nodes(nodes))
    }

    fn of_nodes(nodes: Vec<Node>) -> Self {
        ControllerClient {
            nodes: Arc::new(nodes),
            current: Default::default(),
            attempts: 1,
            idempotent: false,
            timeout: Some(REQUEST_TIMEOUT),
            scope_host: None,
        }
    }

    /// Names `host` in scoped snapshots and watches (`host=`): with a
    /// host's credentials the controller takes that host anyway (and
    /// refuses another), with an administrator's it includes that host's
    /// own endpoints.
    pub fn with_scope_host(mut self, host: &str) -> Self {
        self.scope_host = Some(host.to_string());
        self
    }

    /// The query of a scoped snapshot or watch, with the host when named.
    fn scope_query(&self, scope: &crate::scope::Scope) -> Option<String> {
        let q = scope.query()?;
        Some(match &self.scope_host {
            Some(h) => format!("{q}&host={h}"),
            None => q,
        })
    }

    /// Makes up to `attempts` rounds of a call over the controllers while
    /// none can be reached (pausing 0.1 s, doubling up to 2 s), and marks
    /// every call idempotent (retried on the next controller even when it
    /// may have reached one). Only for callers whose every request is
    /// idempotent, as the agent's are (endpoints are named).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self.idempotent |= attempts > 1;
        self
    }

    /// Marks every call of this client idempotent (a retried POST makes
    /// nothing twice: named creates), so each may go on to the next
    /// controller whatever happened to it on the last.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Lets requests take as long as the controller needs (a person at the
    /// CLI can interrupt; a 50,000-rule update may take longer than 15 s).
    pub fn without_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// The controller calls go to now (the one that answered last).
    pub fn url(&self) -> &str {
        &self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()].label
    }

    /// Every controller of the list, as errors name them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.label.clone()).collect()
    }

    /// Moves from controller `from` (an index of [`Self::urls`]) to the
    /// next, unless another call already moved: for a caller whose stream
    /// from `from` broke.
    pub fn move_on(&self, from: usize) {
        let n = self.nodes.len();
        let _ = self.current.compare_exchange(from % n, (from + 1) % n, Ordering::AcqRel, Ordering::Relaxed);
    }

    fn stick(&self, i: usize) {
        self.current.store(i, Ordering::Relaxed);
    }

    /// Sends one call, moving over the controllers as the type says; returns
    /// the decoded answer and whether it was `201 Created`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(T, bool), ClientError> {
        let idempotent = self.idempotent || !matches!(method, Method::POST | Method::PATCH);
        self.over_nodes(idempotent, |node| self.call_once(node, method.clone(), path, body)).await
    }

    /// Runs `attempt` on the controllers in turn, from the current one,
    /// until one answers; [`Self::with_attempts`] rounds.
    async fn over_nodes<'a, T, F, Fut>(&'a self, idempotent: bool, attempt: F) -> Result<T, ClientError>
    where
        F: Fn(&'a Node) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failed>>,
    {
        let n = self.nodes.len();
        let mut tried = Vec::new();
        let mut pause = FIRST_RETRY_PAUSE;
        for round in 1..=self.attempts {
            let start = self.current.load(Ordering::Relaxed);
            for k in 0..n {
                let i = (start + k) % n;
                let node = &self.nodes[i];
                let failed = match attempt(node).await {
                    Ok(v) => {
                        self.stick(i);
                        return Ok(v);
                    }
                    Err(Failed::Answered(e)) => {
                        self.stick(i);
                        return Err(e);
                    }
                    Err(f) => f,
                };
                self.move_on(i);
                match failed {
                    Failed::NotReached(reason) => tried.push(Failure { controller: node.label.clone(), reason }),
                    Failed::MaybeReached(_, Some((status, body))) if n == 1 => {
                        // One controller: its refusal is the answer, as always.
                        return Err(ClientError::Refused { status, body });
                    }
                    Failed::MaybeReached(reason, _) if !idempotent => {
                        return Err(ClientError::NotReplayed { controller: node.label.clone(), reason, tried: Tried(tried) });
                    }
                    Failed::MaybeReached(reason, _) => tried.push(Failure { controller: node.label.clone(), reason }),
                    Failed::Answered(_) => unreachable!("handled above"),
                }
                if k + 1 < n {
                    tracing::debug!(from = %node.label, to = %self.nodes[(i + 1) % n].label, "controller failed; trying the next");
                }
            }
            if round < self.attempts {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        }
        Err(ClientError::Unreachable { tried: Tried(tried) })
    }

    async fn call_once<T: DeserializeOwned>(
        &self,
        node: &Node,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(T, bool), Failed> {
        let mut req = node.http.request(method, format!("{}{path}", node.target.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = self.timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(failed)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| Failed::MaybeReached(describe(&e), None))?;
        if (200..300).contains(&status) {
            let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
            let value = serde_json::from_slice(bytes).map_err(|_| {
                Failed::Answered(ClientError::BadResponse { status, body: String::from_utf8_lossy(bytes).into_owned() })
            })?;
            return Ok((value, status == 201));
        }
        Err(refusal(status, &bytes))
    }

    /// The controller's clock: the `Date` of its answer to `GET /readyz`
    /// (whole seconds), with this host's time just before the call and
    /// just after the answer.
    pub async fn clock(&self) -> Result<ClockReading, ClientError> {
        self.over_nodes(true, |node| async move {
            let before = std::time::SystemTime::now();
            let resp = node.http.get(format!("{}/readyz", node.target.base)).send().await.map_err(failed)?;
            let after = std::time::SystemTime::now();
            let date = resp
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|d| httpdate::parse_http_date(d).ok());
            Ok(ClockReading { before, after, date })
        })
        .await
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
    /// controllers hold for `host` (sent to each, see [`Self::report_to_each`]).
    pub async fn report_counters(&self, host: &str, report: &HostCounters) -> Result<(), ClientError> {
        self.report_to_each(Method::PUT, &format!("/v1/hosts/{}/counters", seg(host)), report).await
    }

    /// `POST /v1/hosts/{name}/flows`: flow records of `host` (sent to each
    /// controller, see [`Self::report_to_each`]).
    pub async fn report_flows<T: Serialize + ?Sized>(&self, host: &str, report: &T) -> Result<(), ClientError> {
        self.report_to_each(Method::POST, &format!("/v1/hosts/{}/flows", seg(host)), report).await
    }

    /// Sends a report of observations (which a controller keeps in memory,
    /// not in the store) to every controller of the list at once, so that a
    /// read on any of them shows it. Ok when one took it (one that missed
    /// it catches up with a later report of counters, not of flow records
    /// already sent); a refusal is the answer; every failure is listed when
    /// none took it.
    pub async fn report_to_each<T: Serialize + ?Sized>(&self, method: Method, path: &str, body: &T) -> Result<(), ClientError> {
        if self.nodes.len() == 1 {
            return self.call::<serde_json::Value>(method, path, Some(body)).await.map(|_| ());
        }
        let sends = self.nodes.iter().map(|node| self.call_once::<serde_json::Value>(node, method.clone(), path, Some(body)));
        let results = futures::future::join_all(sends).await;
        let (mut took, mut tried) = (false, Vec::new());
        for (node, r) in self.nodes.iter().zip(results) {
            match r {
                Ok(_) => took = true,
                Err(Failed::Answered(e)) => return Err(e),
                Err(Failed::NotReached(reason) | Failed::MaybeReached(reason, _)) => {
                    tried.push(Failure { controller: node.label.clone(), reason })
                }
            }
        }
        if took {
            Ok(())
        } else {
            Err(ClientError::Unreachable { tried: Tried(tried) })
        }
    }

    /// `GET /v1/snapshot`: every mirrored object at one revision.
    pub async fn snapshot(&self) -> Result<Snapshot, ClientError> {
        self.get("/v1/snapshot").await
    }

    /// `GET /v1/snapshot?networks=...`: the snapshot with the endpoints of
    /// `scope` only (and the calling host's own).
    pub async fn snapshot_of(&self, scope: &crate::scope::Scope) -> Result<Snapshot, ClientError> {
        match self.scope_query(scope) {
            Some(q) => self.get(&format!("/v1/snapshot?{q}")).await,
            None => self.snapshot().await,
        }
    }

    /// `GET /v1/watch?after=REV`: the changes after `after`, one event per
    /// NDJSON line, for as long as the controller keeps the stream open
    /// (no request timeout; the controller sends progress when quiet).
    pub async fn watch(&self, after: u64) -> Result<impl Stream<Item = Result<WatchEvent, ClientError>>, ClientError> {
        Ok(self.ndjson_on(&format!("/v1/watch?after={after}"), REQUEST_TIMEOUT).await?.1)
    }

    /// [`Self::watch`] for a mirror that follows several controllers, of the
    /// endpoints of `scope` (that of the snapshot `of`): on the
    /// first that answers, with its index in [`Self::urls`]; the controller
    /// refuses when its store is not of the snapshot's `cluster` (409) or
    /// `epoch` (410), and sends progress after `progress` of quiet, so a
    /// dead stream is noticed soon.
    pub async fn watch_from(
        &self,
        after: u64,
        of: &Snapshot,
        scope: &crate::scope::Scope,
        progress: Duration,
    ) -> Result<(usize, impl Stream<Item = Result<WatchEvent, ClientError>>), ClientError> {
        let mut path = format!("/v1/watch?after={after}&progress_ms={}", progress.as_millis());
        if let Some(q) = self.scope_query(scope) {
            path += &format!("&{q}");
        }
        if let Some(c) = of.cluster {
            path += &format!("&cluster={c}");
        }
        if let Some(e) = of.epoch {
            path += &format!("&epoch={e}");
        }
        // A controller that does not answer within a few progress intervals
        // is as dead as a silent stream.
        self.ndjson_with(&path, progress * 4, WatchEvent::decode_line).await
    }

    /// `GET PATH` answered with one JSON value per line (NDJSON), for as
    /// long as the controller keeps the stream open.
    pub async fn ndjson<T: DeserializeOwned + 'static>(
        &self,
        path: &str,
    ) -> Result<impl Stream<Item = Result<T, ClientError>>, ClientError> {
        Ok(self.ndjson_on(path, REQUEST_TIMEOUT).await?.1)
    }

    /// [`Self::ndjson`], opened on the first controller that answers (its
    /// status and headers) within `open_timeout`, with that controller's
    /// index in [`Self::urls`] (to [`Self::move_on`] from when the stream
    /// breaks).
    pub async fn ndjson_on<T: DeserializeOwned + 'static>(
        &self,
        path: &str,
        open_timeout: Duration,
    ) -> Result<(usize, impl Stream<Item = Result<T, ClientError>>), ClientError> {
        self.ndjson_with(path, open_timeout, |line| serde_json::from_slice(line)).await
    }

    /// [`Self::ndjson_on`] with each line decoded by `decode`.
    async fn ndjson_with<T: 'static>(
        &self,
        path: &str,
        open_timeout: Duration,
        decode: fn(&[u8]) -> serde_json::Result<T>,
    ) -> Result<(usize, impl Stream<Item = Result<T, ClientError>>), ClientError> {
        let (i, resp) = self
            .over_nodes(true, |node| async move {
                let i = self.nodes.iter().position(|n| std::ptr::eq(n, node)).unwrap_or(0);
                let send = node.http.get(format!("{}{path}", node.target.base)).send();
                let resp = tokio::time::timeout(open_timeout, send)
                    .await
                    .map_err(|_| Failed::MaybeReached(format!("no answer within {open_timeout:?}"), None))?
                    .map_err(failed)?;
                let status = resp.status().as_u16();
                if !resp.status().is_success() {
                    let bytes = resp.bytes().await.unwrap_or_default();
                    return Err(refusal(status, &bytes));
                }
                Ok((i, resp))
            })
            .await?;
        let status = resp.status().as_u16();
        let label = self.nodes[i].label.clone();
        let mut buf: Vec<u8> = Vec::new();
        Ok((
            i,
            resp.bytes_stream().flat_map(move |chunk| {
                let mut out: Vec<Result<T, ClientError>> = Vec::new();
                match chunk {
                    Err(e) => out.push(Err(ClientError::unreachable(label.clone(), describe(&e)))),
                    Ok(bytes) => {
                        buf.extend_from_slice(&bytes);
                        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=pos).collect();
                            let line = &line[..line.len() - 1];
                            // Empty lines keep a quiet stream alive.
                            if line.iter().all(u8::is_ascii_whitespace) {
                                continue;
                            }
                            out.push(decode(line).map_err(|_| ClientError::BadResponse {
                                status,
                                body: String::from_utf8_lossy(line).into_owned(),
                            }));
                        }
                    }
                }
                futures::stream::iter(out)
            }),
        ))
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

/// The HTTP client every controller of the list shares the settings of.
fn http_builder(creds: &Credentials) -> Result<reqwest::ClientBuilder, ClientError> {
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
    let mut headers = reqwest::header::HeaderMap::from_iter([(
        reqwest::header::HeaderName::from_static(crate::version::HEADER),
        reqwest::header::HeaderValue::from_static(crate::version::VERSION),
    )]);
    if let Some(token) = &creds.token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ClientError::Credentials { what: "token".into(), reason: "not a printable string".into() })?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(b.default_headers(headers))
}

/// A request that got no answer: not sent when no connection was made.
fn failed(e: reqwest::Error) -> Failed {
    if e.is_connect() {
        Failed::NotReached(describe(&e))
    } else {
        Failed::MaybeReached(describe(&e), None)
    }
}

/// A reqwest error by its root cause (reqwest's own message repeats the
/// URL, which the error names already): "connect: Connection refused (os
/// error 111)", "connect: invalid peer certificate: ...", "timed out".
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(c) = root.source() {
        root = c;
    }
    let text = if std::ptr::addr_eq(root, e as &dyn std::error::Error) { e.to_string() } else { root.to_string() };
    if e.is_connect() {
        format!("connect: {text}")
    } else {
        text
    }
}

/// An answer other than 2xx: a 503 sends the call on to the next
/// controller; any other is the answer.
fn refusal(status: u16, bytes: &[u8]) -> Failed {
    let decoded = serde_json::from_slice::<ErrorBody>(bytes);
    if status == 503 {
        let reason = match &decoded {
            Ok(b) => format!("answered 503 {}: {}", b.error.code.as_str(), b.error.message),
            Err(_) => format!("answered 503: {}", String::from_utf8_lossy(bytes)),
        };
        return Failed::MaybeReached(reason, decoded.ok().map(|b| (status, b)));
    }
    Failed::Answered(match decoded {
        Ok(body) => ClientError::Refused { status, body },
        Err(_) => ClientError::BadResponse { status, body: String::from_utf8_lossy(bytes).into_owned() },
    })
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
