//! The controller's TLS edge: a listener that completes TLS handshakes
//! beside the accept loop (a slow or silent client never holds up another),
//! asks for a client certificate of the fabric's CA without requiring one
//! (people use tokens), and tells each connection's handler who presented
//! which certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tessera_api::auth::CertIdentity;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::conn::{ConnLimits, Guarded, PlainListener, Slots};

/// A handshake not done within this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more wait for one to end.
const MAX_HANDSHAKES: usize = 256;
/// Bytes of TLS records a connection buffers for a client that does not
/// read (a watcher that fell asleep): bounds its memory.
const TLS_BUFFER: usize = 16 << 10;

/// The files of the controller's TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The controller's certificate (chain), PEM.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA whose client certificates are accepted.
    pub client_ca: PathBuf,
}

impl TlsFiles {
    /// The files `tessera pki init` wrote in `dir`.
    pub fn from_pki(dir: &Path) -> TlsFiles {
        TlsFiles { cert: dir.join("controller.pem"), key: dir.join("controller-key.pem"), client_ca: dir.join("ca.pem") }
    }
}

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {what}: {reason}")]
pub struct TlsError {
    pub what: String,
    pub reason: String,
}

fn tls_error(what: &Path, reason: impl ToString) -> TlsError {
    TlsError { what: what.display().to_string(), reason: reason.to_string() }
}

/// The server configuration of `files`: TLS 1.2 and 1.3, the controller's
/// certificate, client certificates of the CA verified when presented.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls_error(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(&files.cert, e))?;
    if certs.is_empty() {
        return Err(tls_error(&files.cert, "holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| tls_error(&files.key, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.client_ca).map_err(|e| tls_error(&files.client_ca, e))? {
        roots.add(ca.map_err(|e| tls_error(&files.client_ca, e))?).map_err(|e| tls_error(&files.client_ca, e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls_error(&files.client_ca, e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&files.cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls_error(&files.cert, e))?;
    Ok(Arc::new(config))
}

/// A TCP listener whose connections come out with their TLS handshake done,
/// within [`ConnLimits`].
pub struct TlsListener {
    done: tokio::sync::mpsc::Receiver<(Guarded<TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` and hands each connection to a handshake task.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>, limits: ConnLimits) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, done) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let conns = Slots::new(limits);
        tokio::spawn(async move {
            loop {
                let (stream, peer, conn) = conns.accept(&tcp).await;
                let Ok(slot) = handshakes.clone().acquire_owned().await else { return };
                let (acceptor, tx, conns) = (acceptor.clone(), tx.clone(), conns.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let accept = acceptor.accept_with(stream, |conn| conn.set_buffer_limit(Some(TLS_BUFFER)));
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((conns.guard(tls, conn), peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { done, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Guarded<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(c) => c,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// What the connection a request came on says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The identity in the client certificate, verified against the CA.
    pub cert: Option<CertIdentity>,
    /// A plain-HTTP connection of an `--insecure-loopback` controller.
    pub insecure: bool,
}

/// The common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, session) = stream.io().get_ref().get_ref();
        let cert = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| common_name(leaf))
            .and_then(|cn| CertIdentity::from_common_name(&cn));
        Peer { addr: *stream.remote_addr(), cert, insecure: false }
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        Peer { addr: *stream.remote_addr(), cert: None, insecure: true }
    }
}
