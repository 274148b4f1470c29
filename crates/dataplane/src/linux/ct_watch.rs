//! The conntrack events of the calling task's network namespace, as a
//! stream: a socket subscribed to `NFNLGRP_CONNTRACK_NEW` (ends are seen
//! in dumps of the table, so a connection costs one event), read on the
//! current runtime and decoded by
//! [`crate::ct_events`]. Accounting (`net.netfilter.nf_conntrack_acct`) is
//! turned on so that a connection's end carries its packets and bytes.

use netlink_sys::{protocols::NETLINK_NETFILTER, AsyncSocket, AsyncSocketExt, TokioSocket};
use tokio::sync::mpsc;

use crate::ct_events::{parse, CtEvent, GROUP_NEW};

const ENOBUFS: i32 = 105;

/// What the stream carries: events, and how many were lost to a full socket
/// buffer (a burst faster than they are read).
#[derive(Debug, Clone)]
pub enum CtMessage {
    Events(Vec<CtEvent>),
    Lost,
}

/// Subscribes to the namespace's conntrack events; they arrive on the
/// receiver until it is dropped.
pub fn conntrack_events() -> std::io::Result<mpsc::Receiver<CtMessage>> {
    std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1")?;
    std::fs::write("/proc/sys/net/netfilter/nf_conntrack_timestamp", "1")?;
    let mut socket = TokioSocket::new(NETLINK_NETFILTER)?;
    socket.socket_mut().bind_auto()?;
    socket.socket_ref().add_membership(GROUP_NEW)?;
    socket.socket_mut().set_rx_buf_sz(8 << 20)?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(256 << 10);
        loop {
            buf.clear();
            let message = match socket.recv(&mut buf).await {
                Ok(()) => CtMessage::Events(parse(&buf)),
                Err(e) if e.raw_os_error() == Some(ENOBUFS) => CtMessage::Lost,
                Err(e) => {
                    tracing::warn!(error = %e, "reading conntrack events failed; no more flow records");
                    return;
                }
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
