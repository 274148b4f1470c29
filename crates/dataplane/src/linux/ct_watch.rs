//! The conntrack events of the calling thread's network namespace, as a
//! stream: a socket subscribed to `NFNLGRP_CONNTRACK_NEW` (ends are seen
//! in dumps of the table, so a connection costs one event), decoded by
//! [`crate::ct_events`]. Accounting (`net.netfilter.nf_conntrack_acct`) is
//! turned on so that a connection's end carries its packets and bytes.
//!
//! The socket is read in batches, by a thread of its own, at most once every
//! [`BATCH_EVERY`]: the kernel delivers an event in the packet path of the
//! connection, and waking a reader there costs more than making the event
//! (a reader woken for each event took a fifth of the new connections per
//! second of a two-core host, the flows benchmark's first figure). Between
//! batches nobody waits on the socket and the events queue in its buffer
//! ([`RECEIVE_BUFFER`]); when events are sparse, the reader waits on the
//! socket and the first one wakes it.

use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use tokio::sync::mpsc;

use crate::ct_events::{parse, CtEvent, GROUP_NEW};

const ENOBUFS: i32 = 105;

/// The pause after a batch: events wait at most this long in the socket.
pub const BATCH_EVERY: Duration = Duration::from_millis(50);
/// The socket's receive buffer: events of a batch wait there (a new
/// connection's event takes about a kilobyte, so some 8,000 connections,
/// over 100,000 a second for [`BATCH_EVERY`]).
pub const RECEIVE_BUFFER: usize = 8 << 20;
/// How long the reader waits on a quiet socket before it looks whether the
/// stream is still wanted.
const QUIET_CHECK: Duration = Duration::from_secs(1);

/// What the stream carries: events, with the time the reading of the
/// batch before them ended (each happened after it), and how many were lost
/// to a full socket buffer (a burst faster than they are read).
#[derive(Debug, Clone)]
pub enum CtMessage {
    Events(Vec<CtEvent>, std::time::Instant),
    Lost,
}

/// Subscribes to the namespace's conntrack events of new connections; they
/// arrive on the receiver, a batch at a time, until it is dropped.
pub fn conntrack_events() -> std::io::Result<mpsc::Receiver<CtMessage>> {
    conntrack_events_of(&[GROUP_NEW])
}

/// Subscribes to the namespace's conntrack events of `groups`
/// (`ct_events::GROUP_*`), as [`conntrack_events`].
pub fn conntrack_events_of(groups: &[u32]) -> std::io::Result<mpsc::Receiver<CtMessage>> {
    use nix::sys::socket::{setsockopt, sockopt};
    std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1")?;
    std::fs::write("/proc/sys/net/netfilter/nf_conntrack_timestamp", "1")?;
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    for group in groups {
        socket.add_membership(*group)?;
    }
    // Beyond `net.core.rmem_max` (the agent has CAP_NET_ADMIN); the capped
    // size otherwise.
    if setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        socket.set_rx_buf_sz(RECEIVE_BUFFER)?;
    }
    let quiet = nix::sys::time::TimeVal::new(QUIET_CHECK.as_secs() as i64, 0);
    setsockopt(&socket, sockopt::ReceiveTimeout, &quiet).map_err(std::io::Error::from)?;
    let (tx, rx) = mpsc::channel(64);
    std::thread::Builder::new().name("ct-events".into()).spawn(move || read_batches(&socket, &tx))?;
    Ok(rx)
}

/// Reads `socket` until `tx` is closed or the socket fails: waits for an
/// event, takes every event queued behind it, sends them as one batch, and
/// pauses [`BATCH_EVERY`].
fn read_batches(socket: &Socket, tx: &mpsc::Sender<CtMessage>) {
    let mut buf: Vec<u8> = vec![0; 64 << 10];
    let mut since = std::time::Instant::now();
    loop {
        let mut events = Vec::new();
        let mut lost = false;
        let mut flags = 0;
        loop {
            match socket.recv(&mut &mut buf[..], flags) {
                Ok(n) => events.extend(parse(&buf[..n])),
                Err(e) if e.raw_os_error() == Some(ENOBUFS) => lost = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading conntrack events failed; no more flow records");
                    return;
                }
            }
            // The first read waits; the rest take what is queued.
            flags = libc::MSG_DONTWAIT;
        }
        let read = std::time::Instant::now();
        if lost && tx.blocking_send(CtMessage::Lost).is_err() {
            return;
        }
        if !events.is_empty() && tx.blocking_send(CtMessage::Events(events, since)).is_err() {
            return;
        }
        since = read;
        if tx.is_closed() {
            return;
        }
        if flags != 0 {
            std::thread::sleep(BATCH_EVERY);
        }
    }
}
