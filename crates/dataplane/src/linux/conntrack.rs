//! Conntrack zone flushes of an apply: by the kernel where it can filter a
//! flush by zone (handed over to the [`Flusher`], a thread of their own, or
//! through the data plane's netfilter socket when that thread is gone), by
//! the `conntrack` program elsewhere and for zone 0 (see [`crate::conntrack`]).

use std::time::Instant;

use super::common::{Netfilter, NetfilterFailure};
use crate::conntrack::{flush_address_with_program, flush_zone_in_kernel, flush_zone_with_program, kernel_flushes_by_zone};
use crate::error::DataplaneError;
use crate::nfnetlink::NetfilterSocket;
use crate::op::KernelOp;

/// How this data plane flushes conntrack zones.
pub(super) struct Conntrack {
    /// Whether conntrack zones are flushed by the kernel (see
    /// [`crate::conntrack`]).
    in_kernel: bool,
    /// Where conntrack zones are flushed by the kernel: a thread of their
    /// own (see [`Flusher`]); `None` where the `conntrack` program does it.
    flusher: Option<Flusher>,
}

impl Conntrack {
    /// Reads whether the kernel flushes by zone, and if it does, starts the
    /// [`Flusher`] (from the data plane's thread, in its namespace).
    pub(super) fn start() -> Self {
        Conntrack { in_kernel: kernel_flushes_by_zone(), flusher: kernel_flushes_by_zone().then(Flusher::start).flatten() }
    }

    /// Carries out a `ConntrackZoneFlush` (`conntrack -D -w ZONE`).
    pub(super) async fn apply(&self, netfilter: &Netfilter, action: &KernelOp) -> Result<(), DataplaneError> {
        let op = action.op();
        match action {
            KernelOp::ConntrackZoneFlush { zone } if self.in_kernel && *zone != 0 => {
                if self.flusher.as_ref().is_some_and(|f| f.hand_over(*zone)) {
                    return Ok(());
                }
                netfilter.with(|s| flush_zone_in_kernel(s, *zone)).map_err(|e| match e {
                    NetfilterFailure::Open(source) => {
                        DataplaneError::Kernel { op, object: "netfilter netlink socket".into(), source }
                    }
                    NetfilterFailure::Request(e) => e,
                })
            }
            KernelOp::ConntrackZoneFlush { zone } => flush_zone_with_program(*zone).await,
            // The `conntrack` program walks the whole table (slow on a busy
            // gateway): it runs beside the data plane's next work, not in
            // its way; a failure is logged.
            KernelOp::ConntrackAddressFlush { zone, address, fixed } => {
                let (zone, address, fixed) = (*zone, *address, *fixed);
                tokio::spawn(async move {
                    if let Err(e) = flush_address_with_program(zone, address, fixed).await {
                        tracing::warn!(zone, %address, error = %e, "cannot end the flows of a floating IP that moved");
                    }
                });
                Ok(())
            }
            other => unreachable!("{} is not a conntrack action", other.op()),
        }
    }
}

/// Conntrack zone flushes by the kernel, carried out in the order they are
/// handed over by a thread of their own, in the data plane's namespace (it
/// is started from the data plane's thread, whose namespace it inherits).
///
/// A flush walks the kernel's whole conntrack table (5–25 ms, more on a
/// busy host) and comes after the transaction that made the new rules
/// effective; handed over, it no longer holds up the next change. A flush
/// that fails is logged: the flows it should have ended then end by
/// themselves, as on a kernel that cannot flush.
struct Flusher {
    zones: std::sync::mpsc::Sender<u16>,
}

impl Flusher {
    fn start() -> Option<Flusher> {
        let (zones, rx) = std::sync::mpsc::channel::<u16>();
        let spawned = std::thread::Builder::new().name("tessera-ct-flush".into()).spawn(move || {
            let mut socket: Option<NetfilterSocket> = None;
            while let Ok(zone) = rx.recv() {
                let started = Instant::now();
                let result = match socket.as_mut() {
                    Some(s) => Ok(s),
                    None => NetfilterSocket::open().map(|s| socket.insert(s)),
                }
                .map_err(|source| DataplaneError::Kernel {
                    op: "ConntrackZoneFlush",
                    object: "netfilter netlink socket".into(),
                    source,
                })
                .and_then(|s| flush_zone_in_kernel(s, zone));
                match result {
                    Ok(()) => tracing::debug!(zone, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "conntrack zone flushed"),
                    Err(e) => {
                        tracing::warn!(zone, error = %e, "conntrack zone flush failed");
                        socket = None;
                    }
                }
            }
        });
        spawned.ok().map(|_| Flusher { zones })
    }

    /// Queues the flush of `zone`; `false` when the thread is gone.
    fn hand_over(&self, zone: u16) -> bool {
        self.zones.send(zone).is_ok()
    }
}
