//! A minimal HTTP/1 exchange over a unix socket, for the agent's local API and
//! for the Docker Engine API (`/var/run/docker.sock`).

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum UdsError {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("HTTP exchange over {path} failed: {source}")]
    Http { path: String, source: hyper::Error },
    #[error("bad request to {path}: {reason}")]
    Request { path: String, reason: String },
}

/// Sends one request to `socket` and returns the status and the whole body.
pub async fn request(socket: &Path, method: Method, uri: &str, body: Option<Vec<u8>>) -> Result<(StatusCode, Bytes), UdsError> {
    let path = socket.display().to_string();
    let stream =
        tokio::net::UnixStream::connect(socket).await.map_err(|source| UdsError::Connect { path: path.clone(), source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| UdsError::Http { path: path.clone(), source })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost")
        .header(crate::version::HEADER, crate::version::VERSION);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| UdsError::Request { path: path.clone(), reason: e.to_string() })?;
    let resp = sender.send_request(req).await.map_err(|source| UdsError::Http { path: path.clone(), source })?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|source| UdsError::Http { path, source })?.to_bytes();
    Ok((status, bytes))
}
