//! Records of refused packets: what Tessera's rules log
//! ([`tessera_dataplane::nflog`]) made into flow records with a verdict
//! (denied, rejected, spoofed), the rule or the reason, and the endpoints
//! and networks of both sides. The packets of one refused flow (a
//! connection's retried SYNs, a stream of forged packets) are one record,
//! its packets and bytes counted while they come. Both the kernel (a rate
//! limit per logging rule) and this module (at most [`MAX_RECENT`] flows
//! followed) bound what a flood of refused packets costs.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tessera_dataplane::linux::RefusedPacket;
use tessera_dataplane::nflog::DropKind;
use tessera_dataplane::DesiredHost;
use tessera_model::names::host_veth_name;
use tessera_model::watch::Snapshot;
use tessera_model::{Endpoint, FlowRecord, FlowVerdict, TcpFlag, Vni};
use tessera_policy::flow::Flow;
use tessera_policy::Verdict;

use crate::verdicts::{decide, destination, Names};

/// How long a refused flow is followed after its last packet (its next
/// packets count in its record).
pub const FOLLOW_FOR: Duration = Duration::from_secs(30);
/// The most refused flows followed at once.
pub const MAX_RECENT: usize = 10_000;

/// The refused flows of this host, followed for [`FOLLOW_FOR`].
#[derive(Default)]
pub struct Drops {
    /// Each flow's record and when its last packet came.
    recent: HashMap<u64, (FlowRecord, Instant)>,
    /// Packets' flows in the order they came.
    order: VecDeque<(u64, Instant)>,
    names: Names,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The endpoint of `snap` with address `ip` in network `vni` (any network
/// when `None`).
fn endpoint_at(snap: &Snapshot, ip: IpAddr, vni: Option<Vni>) -> Option<&Endpoint> {
    let in_network = |e: &Endpoint| vni.is_none_or(|v| snap.networks.iter().any(|n| n.id == e.network && n.vni == v));
    snap.endpoints.iter().find(|e| e.ips.iter().any(|a| a.addr() == ip) && in_network(e))
}

fn vni_of(snap: &Snapshot, e: &Endpoint) -> Option<Vni> {
    snap.networks.iter().find(|n| n.id == e.network).map(|n| n.vni)
}

impl Drops {
    /// The record a refused packet makes or updates; `None` when it cannot
    /// be told (a rule of another version, a port that is no endpoint's).
    pub fn record(&mut self, me: &str, p: &RefusedPacket, snap: &Snapshot, desired: Option<&DesiredHost>) -> Option<FlowRecord> {
        self.expire();
        let r = &p.packet;
        let verdict = match r.kind {
            DropKind::Deny(_) | DropKind::Isolation => FlowVerdict::Denied,
            DropKind::Reject(_) => FlowVerdict::Rejected,
            DropKind::Spoof => FlowVerdict::Spoofed,
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ("refused", r.kind, r.protocol, r.src, r.sport, r.dst, r.dport, &p.indev).hash(&mut h);
        let id = h.finish() & 0x7fff_ffff_ffff_ffff;
        let (now, at) = (now_ms(), Instant::now());
        if let Some((rec, last)) = self.recent.get_mut(&id) {
            *last = at;
            rec.packets += 1;
            rec.bytes += u64::from(r.bytes);
            rec.end_ms = Some(now);
            TcpFlag::union(&mut rec.tcp_flags, &TcpFlag::from_bits(r.tcp_flags));
            self.order.push_back((id, at));
            return Some(rec.clone());
        }
        if self.recent.len() >= MAX_RECENT {
            return None;
        }
        self.names.refresh(snap);
        // The destination's network where the drop says it, for a
        // destination whose endpoint this host does not mirror (one of a
        // network it is not connected to).
        let (src, dst, rule, reason, dst_net) = match r.kind {
            DropKind::Spoof => {
                let port = p.port.as_deref()?;
                let sender = snap.endpoints.iter().find(|e| e.host == me && host_veth_name(e.id) == port)?;
                let mac = r.src_mac.map(|m| format!(" (MAC {})", tessera_model::MacAddr(m))).unwrap_or_default();
                let reason = format!("the source {}{mac} is not endpoint {}'s (port {port})", r.src, sender.name);
                let dst = endpoint_at(snap, r.dst, vni_of(snap, sender));
                (Some(sender), dst, None, reason, None)
            }
            DropKind::Isolation => {
                let s = Vni::new(p.indev.as_deref()?.strip_prefix("tb")?.parse().ok()?).ok()?;
                let src = endpoint_at(snap, r.src, Some(s));
                let dst = snap.networks.iter().find(|n| n.subnets.iter().any(|x| x.cidr.contains(&r.dst)));
                let reason = match dst {
                    Some(d) => format!("no policy joins {} and {}: they are isolated", self.names.network(s), d.fq_name),
                    None => format!("{} has no route to {}", self.names.network(s), r.dst),
                };
                let dst_net = dst.map(|d| d.fq_name.to_string());
                let dst = dst.and_then(|d| endpoint_at(snap, r.dst, Some(d.vni)));
                (src, dst, None, reason, dst_net)
            }
            DropKind::Deny(s) | DropKind::Reject(s) => {
                let s = Vni::new(s).ok()?;
                let d = desired.and_then(|h| destination(h, s, r.dst));
                let flow = Flow { src: r.src, dst: r.dst, proto: r.protocol, sport: r.sport, dport: r.dport };
                let decision = desired.zip(d).and_then(|(h, d)| decide(h, s, d, &flow));
                let rule = decision.and_then(|x| x.rule).map(|x| self.names.rule(&x));
                let done = if verdict == FlowVerdict::Rejected { "rejected" } else { "denied" };
                let between = match d {
                    Some(d) => format!("from {} to {}", self.names.network(s), self.names.network(d)),
                    None => format!("from {}", self.names.network(s)),
                };
                let reason = match (&rule, decision) {
                    (Some(rule), _) => format!("{done} by {rule}"),
                    (None, Some(x)) if x.verdict != Verdict::Pass => {
                        format!("no rule of the policies {between} matched: {done} by their default")
                    }
                    _ => format!("{done} by the policies {between}"),
                };
                let dst_net = d.map(|d| self.names.network(d));
                (endpoint_at(snap, r.src, Some(s)), endpoint_at(snap, r.dst, d), rule, reason, dst_net)
            }
        };
        let network = |e: &Endpoint| snap.networks.iter().find(|n| n.id == e.network).map(|n| n.fq_name.to_string());
        let rec = FlowRecord {
            host: me.to_string(),
            id,
            protocol: r.protocol,
            src: r.src,
            sport: r.sport,
            dst: r.dst,
            dport: r.dport,
            src_network: src.and_then(network),
            dst_network: dst.and_then(network).or(dst_net),
            src_endpoint: src.map(|e| e.name.clone()),
            dst_endpoint: dst.map(|e| e.name.clone()),
            verdict,
            start_ms: now,
            end_ms: Some(now),
            packets: 1,
            bytes: u64::from(r.bytes),
            reply_packets: 0,
            reply_bytes: 0,
            connections: 1,
            rule,
            reason: Some(reason),
            tcp_flags: TcpFlag::from_bits(r.tcp_flags),
        };
        self.recent.insert(id, (rec.clone(), at));
        self.order.push_back((id, at));
        Some(rec)
    }

    /// Forgets the flows whose last packet is older than [`FOLLOW_FOR`].
    fn expire(&mut self) {
        while let Some(&(id, at)) = self.order.front() {
            if at.elapsed() < FOLLOW_FOR {
                break;
            }
            self.order.pop_front();
            if self.recent.get(&id).is_some_and(|(_, last)| *last == at) {
                self.recent.remove(&id);
            }
        }
    }
}
