//! What one connection may hold of the controller: the number of
//! connections is bounded ([`ConnLimits::max_connections`]: past it, new
//! connections wait in the kernel's accept backlog until one closes, and the
//! connections already open are served as before), and a connection on
//! which nothing is read or written for [`ConnLimits::idle_timeout`] is
//! closed (a watch is never idle: it sends progress every few seconds).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// How many connections, and how long an idle one lives.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits { max_connections: 10_000, idle_timeout: Duration::from_secs(60) }
    }
}

/// The connection slots of a listener.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl Slots {
    pub(crate) fn new(limits: ConnLimits) -> Self {
        Slots { permits: Arc::new(Semaphore::new(limits.max_connections.max(1))), idle: limits.idle_timeout }
    }

    /// Waits for a free slot, then accepts the next connection into it.
    pub(crate) async fn accept(&self, tcp: &TcpListener) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            // The semaphore is never closed.
            return std::future::pending().await;
        };
        loop {
            match tcp.accept().await {
                Ok((stream, peer)) => return (stream, peer, permit),
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: try again shortly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// `io` holding `permit`, closed when idle.
    pub(crate) fn guard<S>(&self, io: S, permit: OwnedSemaphorePermit) -> Guarded<S> {
        Guarded { inner: io, _permit: permit, idle: self.idle, deadline: Box::pin(tokio::time::sleep(self.idle)) }
    }
}

/// A connection that holds one slot for as long as it lives and reads as
/// closed once nothing crossed it for the idle timeout.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Guarded<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn active(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle"))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        r
    }

    /// Gathers the buffers into one write (one TLS record rather than one
    /// per buffer). Saying it writes vectored makes hyper queue a response's
    /// chunks (at most 16) instead of flattening them into a buffer of up to
    /// 400 KB: what a client that stopped reading pins in memory stays small.
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        const GATHER: usize = 64 << 10;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let r = if bufs.len() <= 1 || total > GATHER {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            Pin::new(&mut self.inner).poll_write(cx, first)
        } else {
            let mut gathered = Vec::with_capacity(total);
            for b in bufs {
                gathered.extend_from_slice(b);
            }
            Pin::new(&mut self.inner).poll_write(cx, &gathered)
        };
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A plain TCP listener with [`ConnLimits`] (an `--insecure-loopback`
/// controller).
pub struct PlainListener {
    tcp: TcpListener,
    slots: Slots,
}

impl PlainListener {
    pub fn new(tcp: TcpListener, limits: ConnLimits) -> Self {
        PlainListener { tcp, slots: Slots::new(limits) }
    }
}

impl axum::serve::Listener for PlainListener {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, peer, permit) = self.slots.accept(&self.tcp).await;
        (self.slots.guard(stream, permit), peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
