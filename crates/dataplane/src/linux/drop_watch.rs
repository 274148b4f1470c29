//! The packets Tessera's rules refuse in the calling task's network
//! namespace, as a stream: a socket bound to the `nfnetlink_log` group of
//! Tessera's logging rules ([`crate::nflog::DROP_LOG_GROUP`]), read on the
//! current runtime and decoded by [`crate::nflog`], with the names of the
//! interfaces each packet came in by and would have left by.

use netlink_sys::{protocols::NETLINK_NETFILTER, AsyncSocket, AsyncSocketExt, TokioSocket};
use tokio::sync::mpsc;

use crate::nflog::{ack_error, bind_messages, parse, Refused, DROP_LOG_GROUP};

/// A refused packet, with its interfaces' names.
#[derive(Debug, Clone)]
pub struct RefusedPacket {
    pub packet: Refused,
    pub indev: Option<String>,
    /// The bridge port it came in by.
    pub port: Option<String>,
    pub outdev: Option<String>,
}

fn ifname(index: Option<u32>) -> Option<String> {
    nix::net::if_::if_indextoname(index?).ok()?.into_string().ok()
}

/// Binds to the namespace's log of refused packets; they arrive on the
/// receiver until it is dropped. Fails when another process holds the
/// group, or the kernel has no `nfnetlink_log`.
pub async fn refused_packets() -> std::io::Result<mpsc::Receiver<Vec<RefusedPacket>>> {
    let mut socket = TokioSocket::new(NETLINK_NETFILTER)?;
    socket.socket_mut().bind_auto()?;
    socket.socket_mut().set_rx_buf_sz(1 << 20)?;
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    for m in bind_messages(DROP_LOG_GROUP) {
        socket.send(&m).await?;
        buf.clear();
        socket.recv(&mut buf).await?;
        if let Some(errno) = ack_error(&buf) {
            return Err(std::io::Error::from_raw_os_error(-errno));
        }
    }
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            buf.clear();
            match socket.recv(&mut buf).await {
                Ok(()) => {}
                // A burst faster than it is read: the rest is rate limited anyway.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading refused packets failed; no more drop records");
                    return;
                }
            }
            let packets: Vec<RefusedPacket> = parse(&buf)
                .into_iter()
                .map(|packet| RefusedPacket {
                    indev: ifname(packet.indev),
                    port: ifname(packet.port),
                    outdev: ifname(packet.outdev),
                    packet,
                })
                .collect();
            if !packets.is_empty() && tx.send(packets).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
