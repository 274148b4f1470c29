//! Changes to Tessera's nftables tables made behind the data plane's back,
//! seen as they happen: a task of the data plane's thread reads the
//! namespace's nftables notifications (`NFNLGRP_NFTABLES`), and when one
//! takes away part of Tessera's tables ([`crate::nft_events`]) it marks the
//! carried nftables state stale (the next observation lists the tables
//! again) and tells the owner of the data plane, whose next reconcile then
//! restores them. A lost notification (the socket's buffer overran during a
//! big transaction) counts as a deletion.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use netlink_sys::{protocols::NETLINK_NETFILTER, AsyncSocket, AsyncSocketExt, TokioSocket};
use tokio::sync::watch;

use crate::nft_events::tessera_deletion;

/// `NFNLGRP_NFTABLES`.
const NFNLGRP_NFTABLES: u32 = 7;
const ENOBUFS: i32 = 105;

/// Opens the notification socket in the calling thread's namespace and
/// reads it on the current (the data plane's) runtime for as long as that
/// runs: each deletion sets `stale` and bumps `seen`.
pub(super) fn watch_tables(stale: Arc<AtomicBool>, seen: watch::Sender<u64>) -> std::io::Result<()> {
    let mut socket = TokioSocket::new(NETLINK_NETFILTER)?;
    socket.socket_mut().bind_auto()?;
    socket.socket_ref().add_membership(NFNLGRP_NFTABLES)?;
    // Our own big transactions notify element by element: room for many.
    socket.socket_mut().set_rx_buf_sz(4 << 20)?;
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(256 << 10);
        loop {
            buf.clear();
            let what = match socket.recv(&mut buf).await {
                Ok(()) => tessera_deletion(&buf),
                Err(e) if e.raw_os_error() == Some(ENOBUFS) => Some("nftables notifications were lost".to_string()),
                Err(e) => {
                    tracing::warn!(error = %e, "reading nftables notifications failed; changes behind Tessera's back wait for the periodic resync");
                    return;
                }
            };
            if let Some(what) = what {
                stale.store(true, Ordering::SeqCst);
                tracing::debug!(change = %what, "Tessera's nftables tables changed; listing them again");
                seen.send_modify(|n| *n += 1);
            }
        }
    });
    Ok(())
}
