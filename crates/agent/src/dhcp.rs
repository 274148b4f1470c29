//! The agent's DHCPv4 server: one UDP socket on port 67 per network bridge
//! of this host (bound to the bridge, so a network's clients are answered
//! only from its own leases and never across networks), answering from the
//! desired state the kernel was last reconciled to ([`crate::dhcp_answer`]).
//! Replies are broadcast on the bridge (its ports are isolated from each
//! other, not from the bridge). A client's messages beyond a few per
//! second are ignored and counted, so a flood costs the agent little.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::Message;
use dhcproto::{Decodable, Encodable};
use tessera_dataplane::DesiredHost;
use tessera_model::vif::DhcpCounts;
use tessera_model::MacAddr;
use tokio::sync::watch;

use crate::dhcp_answer::{answer, leases, Answer, NetworkLeases};

/// How many messages of one client are answered per second.
const PER_CLIENT_PER_SECOND: u32 = 50;

/// What the server did, per client MAC (for the interface table), and
/// messages it could not even read.
#[derive(Debug, Default)]
pub struct DhcpCounters {
    pub by_client: std::sync::Mutex<HashMap<MacAddr, DhcpCounts>>,
    pub unreadable: AtomicU64,
}

impl DhcpCounters {
    fn count(&self, mac: MacAddr, f: impl FnOnce(&mut DhcpCounts)) {
        let mut all = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a flood of made-up MACs does not grow it for ever.
        if all.len() >= 65_536 && !all.contains_key(&mac) {
            all.clear();
        }
        f(all.entry(mac).or_default());
    }

    /// The counts of the client `mac`.
    pub fn of(&self, mac: MacAddr) -> Option<DhcpCounts> {
        self.by_client.lock().unwrap_or_else(|p| p.into_inner()).get(&mac).copied()
    }
}

/// The servers of the bridges: the tasks serving each, and the table they
/// answer from.
struct Servers<T>(HashMap<String, (Vec<tokio::task::JoinHandle<()>>, watch::Sender<T>)>);

impl<T> Default for Servers<T> {
    fn default() -> Self {
        Servers(HashMap::new())
    }
}

impl<T: PartialEq + Clone> Servers<T> {
    /// Stops the servers of the bridges not `wanted`.
    fn retain(&mut self, wanted: impl Fn(&str) -> bool) {
        self.0.retain(|bridge, (tasks, _)| {
            let keep = wanted(bridge);
            if !keep {
                tasks.iter().for_each(|t| t.abort());
            }
            keep
        });
    }

    /// Hands `value` to the server of `bridge`; `false` when it has none.
    fn update(&self, bridge: &str, value: &T) -> bool {
        let Some((_, tx)) = self.0.get(bridge) else { return false };
        tx.send_if_modified(|l| {
            let changed = l != value;
            *l = value.clone();
            changed
        });
        true
    }
}

/// Serves DHCP on the bridges of the networks of each reconciled state,
/// until the agent stops.
pub async fn run(mut states: watch::Receiver<Option<Arc<DesiredHost>>>, counters: Arc<DhcpCounters>) {
    let mut servers: Servers<NetworkLeases> = Servers::default();
    loop {
        let state = states.borrow_and_update().clone();
        if let Some(desired) = state {
            let wanted = leases(&desired);
            servers.retain(|bridge| wanted.iter().any(|w| w.bridge == bridge));
            for w in wanted {
                if servers.update(&w.bridge, &w) {
                    continue;
                }
                match open(&w.bridge) {
                    Ok(socket) => {
                        let bridge = w.bridge.clone();
                        let (tx, rx) = watch::channel(w);
                        let task = tokio::spawn(serve(socket, rx, counters.clone()));
                        tracing::debug!(bridge, "DHCP server listening");
                        servers.0.insert(bridge, (vec![task], tx));
                    }
                    // The bridge may not exist yet: tried again below.
                    Err(e) => tracing::debug!(bridge = %w.bridge, error = %e, "cannot serve DHCP yet"),
                }
            }
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// A UDP socket on port 67 of `bridge` only.
fn open(bridge: &str) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(bridge.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 67)).into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

async fn serve(socket: tokio::net::UdpSocket, leases: watch::Receiver<NetworkLeases>, counters: Arc<DhcpCounters>) {
    let mut buf = vec![0u8; 1500];
    let mut recent: HashMap<MacAddr, (Instant, u32)> = HashMap::new();
    loop {
        let Ok((n, _)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(msg) = Message::from_bytes(&buf[..n]) else {
            counters.unreadable.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut mac = [0u8; 6];
        if msg.chaddr().len() >= 6 {
            mac.copy_from_slice(&msg.chaddr()[..6]);
        }
        counters.count(MacAddr(mac), |c| c.requests += 1);
        let now = Instant::now();
        let slot = recent.entry(MacAddr(mac)).or_insert((now, 0));
        if now.duration_since(slot.0) > Duration::from_secs(1) {
            *slot = (now, 0);
        }
        slot.1 += 1;
        if slot.1 > PER_CLIENT_PER_SECOND {
            counters.count(MacAddr(mac), |c| c.ignored += 1);
            continue;
        }
        if recent.len() > 4096 {
            recent.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(2));
        }
        let l = leases.borrow().clone();
        match answer(&msg, l.server, &l.leases) {
            Answer::Reply(reply) => match reply.to_vec() {
                Ok(bytes) => {
                    if let Err(e) = socket.send_to(&bytes, (Ipv4Addr::BROADCAST, 68)).await {
                        tracing::debug!(bridge = %l.bridge, error = %e, "cannot send a DHCP reply");
                    } else if reply.opts().msg_type() == Some(dhcproto::v4::MessageType::Nak) {
                        counters.count(MacAddr(mac), |c| c.naks += 1);
                    } else if reply.opts().msg_type() == Some(dhcproto::v4::MessageType::Ack) {
                        counters.count(MacAddr(mac), |c| c.acks += 1);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode a DHCP reply"),
            },
            Answer::Ignore(why) => {
                counters.count(MacAddr(mac), |c| c.ignored += 1);
                tracing::debug!(bridge = %l.bridge, client = %MacAddr(mac), why, "DHCP message ignored");
            }
        }
    }
}

/// How often a network's bridge advertises itself as router.
const RA_EVERY: Duration = Duration::from_secs(10);

/// Serves router advertisements and DHCPv6 on the bridges of the networks
/// of each reconciled state that have IPv6 subnets, until the agent stops.
/// `index_of` finds a bridge's interface index.
pub async fn run6(
    mut states: watch::Receiver<Option<Arc<DesiredHost>>>,
    dp: Arc<dyn tessera_dataplane::Dataplane>,
    counters: Arc<DhcpCounters>,
) {
    use crate::dhcp6_answer::{networks6, Network6};
    let mut servers: Servers<Network6> = Servers::default();
    loop {
        let state = states.borrow_and_update().clone();
        if let Some(desired) = state {
            let wanted = networks6(&desired);
            servers.retain(|bridge| wanted.iter().any(|w| w.bridge == bridge));
            let missing: Vec<_> = wanted.iter().filter(|w| !servers.0.contains_key(&w.bridge)).collect();
            let indexes: HashMap<String, u32> = if missing.is_empty() {
                HashMap::new()
            } else {
                dp.interfaces().await.map(|v| v.into_iter().map(|i| (i.name, i.index)).collect()).unwrap_or_default()
            };
            for w in wanted {
                if servers.update(&w.bridge, &w) {
                    continue;
                }
                let Some(index) = indexes.get(&w.bridge).copied() else { continue };
                match (open6(&w.bridge, index), open_icmp6(&w.bridge)) {
                    (Ok(dhcp), Ok(icmp)) => {
                        let bridge = w.bridge.clone();
                        let (tx, rx) = watch::channel(w);
                        let tasks = vec![
                            tokio::spawn(serve6(dhcp, rx.clone(), counters.clone())),
                            tokio::spawn(advertise(icmp, index, rx)),
                        ];
                        servers.0.insert(bridge, (tasks, tx));
                    }
                    (Err(e), _) | (_, Err(e)) => tracing::debug!(bridge = %w.bridge, error = %e, "cannot serve IPv6 yet"),
                }
            }
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// A UDP socket on port 547 of `bridge`, in the all-DHCP-agents group.
fn open6(bridge: &str, index: u32) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(bridge.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 547)).into())?;
    s.join_multicast_v6(&"ff02::1:2".parse().expect("literal"), index)?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// An ICMPv6 socket of `bridge` that sends with hop limit 255.
fn open_icmp6(bridge: &str) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.bind_device(Some(bridge.as_bytes()))?;
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_nonblocking(true)?;
    // A raw socket is driven here through the datagram API (send_to and
    // recv_from are the same calls).
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(std::os::fd::OwnedFd::from(s)))
}

async fn serve6(socket: tokio::net::UdpSocket, net: watch::Receiver<crate::dhcp6_answer::Network6>, counters: Arc<DhcpCounters>) {
    let mut buf = vec![0u8; 1500];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let SocketAddr::V6(from) = from else { continue };
        let Ok(msg) = dhcproto::v6::Message::from_bytes(&buf[..n]) else {
            counters.unreadable.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let net = net.borrow().clone();
        let mac = crate::dhcp6_answer::client_mac(&msg, *from.ip()).unwrap_or(MacAddr([0; 6]));
        counters.count(mac, |c| c.requests += 1);
        match crate::dhcp6_answer::answer6(&msg, *from.ip(), &net) {
            Ok(reply) => {
                if let Ok(bytes) = reply.to_vec() {
                    if socket
                        .send_to(&bytes, SocketAddr::V6(std::net::SocketAddrV6::new(*from.ip(), 546, 0, from.scope_id())))
                        .await
                        .is_ok()
                    {
                        counters.count(mac, |c| c.acks += 1);
                    }
                }
            }
            Err(why) => {
                counters.count(mac, |c| c.ignored += 1);
                tracing::debug!(bridge = %net.bridge, why, "DHCPv6 message ignored");
            }
        }
    }
}

/// Advertises the bridge as router every [`RA_EVERY`], and at once to a
/// router solicitation.
async fn advertise(socket: tokio::net::UdpSocket, index: u32, net: watch::Receiver<crate::dhcp6_answer::Network6>) {
    let all_nodes = SocketAddr::V6(std::net::SocketAddrV6::new("ff02::1".parse().expect("literal"), 0, 0, index));
    let mut buf = vec![0u8; 1500];
    loop {
        let ra = crate::dhcp6_answer::router_advertisement(&net.borrow());
        if let Err(e) = socket.send_to(&ra, all_nodes).await {
            tracing::debug!(error = %e, "cannot send a router advertisement");
        }
        // Until the next period, answer solicitations.
        let deadline = tokio::time::Instant::now() + RA_EVERY;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Ok((n, _))) if n > 0 && buf[0] == 133 => break,
                Ok(_) => {}
            }
        }
    }
}
