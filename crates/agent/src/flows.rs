//! Flow records of this host: the flows that start at its endpoints (or
//! come from outside the fabric), from the kernel's connection tracking
//! (the event of a new connection, and a dump of the table every
//! [`DUMP_EVERY`] or less often, with accounting). A connection of one of Tessera's
//! zones becomes a record when it is confirmed (forwarded), follows its
//! packets and bytes each way, and ends when TCP closes or its entry goes;
//! records new or changed are reported to the controller every
//! [`REPORT_EVERY`], short flows alike made one
//! ([`tessera_model::flow::aggregate`]; in a flood of new flows, they wait
//! for the next dump, [`FLOOD_NEW`]). Flows that
//! arrive from another host's endpoint are that host's to record, so a flow
//! is recorded once.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_api::ControllerClient;
use tessera_dataplane::ct_events::{CtEvent, CtEventKind};
use tessera_dataplane::linux::CtMessage;
use tessera_dataplane::nfnetlink::NetfilterSocket;
use tessera_dataplane::DesiredHost;
use tessera_model::watch::Snapshot;
use tessera_model::{FlowRecord, FlowReport, FlowVerdict, TcpFlag, Vni};
use uuid::Uuid;

use crate::agent::Agent;
use crate::drops::Drops;
use crate::verdicts::Attribution;

/// How often new and changed records are reported.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);
/// The time a report may spend finding the rules that allowed its flows.
pub const ATTRIBUTION_BUDGET: Duration = Duration::from_millis(20);
/// How often, at most, the table is dumped.
pub const DUMP_EVERY: Duration = Duration::from_secs(1);
/// The pause after a dump of the table is at least this many times what
/// the dump (and its records) took.
pub const DUMP_BUSY_FACTOR: u32 = 20;
/// The most running flows followed at once; more are not recorded (and counted).
pub const MAX_ACTIVE: usize = 262_144;
/// The most records waiting to be reported (the oldest go first when the
/// controller is away).
pub const MAX_PENDING: usize = 100_000;
/// More new flows than this between two reports are a flood: they are
/// reported once the next dump of the table says whether they ended, so that
/// short ones alike are one record (and a flood does not cost a record per
/// connection).
pub const FLOOD_NEW: usize = 100;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Who an address is: (endpoint name, network fq name, network id, host).
type Who = (String, String, Uuid, String);

/// What the records are made from: the networks of each zone, and the
/// fabric's endpoints by address.
#[derive(Default)]
struct Context {
    zones: HashMap<u16, Vec<Uuid>>,
    endpoints: HashMap<IpAddr, Vec<Who>>,
    revision: u64,
    desired: Option<Arc<DesiredHost>>,
}

impl Context {
    fn refresh(&mut self, snap: &Snapshot, desired: &Option<Arc<DesiredHost>>) {
        let same_desired = match (&self.desired, desired) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if snap.revision == self.revision && same_desired {
            return;
        }
        self.revision = snap.revision;
        self.desired = desired.clone();
        let by_vni: HashMap<Vni, Uuid> = snap.networks.iter().map(|n| (n.vni, n.id)).collect();
        self.zones.clear();
        if let Some(d) = desired {
            for n in &d.networks {
                self.zones.entry(n.zone).or_default().extend(by_vni.get(&n.vni));
            }
            for p in &d.pair_zones {
                self.zones.entry(p.zone).or_default().extend([by_vni.get(&p.a), by_vni.get(&p.b)].into_iter().flatten());
            }
        }
        let names: HashMap<Uuid, String> = snap.networks.iter().map(|n| (n.id, n.fq_name.to_string())).collect();
        self.endpoints.clear();
        for e in snap.endpoints.iter() {
            let net = names.get(&e.network).cloned().unwrap_or_default();
            for ip in &e.ips {
                self.endpoints.entry(ip.addr()).or_default().push((e.name.clone(), net.clone(), e.network, e.host.clone()));
            }
        }
    }

    /// Who `ip` is among the networks of `zone`.
    fn who(&self, ip: IpAddr, zone: &[Uuid]) -> Option<&Who> {
        let all = self.endpoints.get(&ip)?;
        all.iter().find(|w| zone.contains(&w.2)).or_else(|| all.first())
    }
}

/// The flows this host follows: running ones by their key, ended ones
/// whose conntrack entry lingers (TCP's TIME_WAIT), so a dump does not make
/// them again (with the id of their record), and those a dump found before
/// their event (events are read in batches), so their event does not make
/// them again.
#[derive(Default)]
struct Recorder {
    ctx: Context,
    active: HashMap<u64, FlowRecord>,
    ended: HashMap<u64, u64>,
    found: HashSet<u64>,
    /// When this agent began to follow events (ms since the epoch).
    since_ms: u64,
    /// The records a dump made of connections older than [`Self::since_ms`]:
    /// an agent before this one may have reported them, so each keeps a
    /// record of its own, never made one with short flows alike (its end
    /// completes the record the controller holds).
    inherited: Vec<u64>,
}

/// The TCP flags a connection's state implies.
fn state_flags(ev: &CtEvent) -> Vec<TcpFlag> {
    ev.tcp_state.map(|s| TcpFlag::from_bits(tessera_dataplane::ct_events::tcp_state_flags(s))).unwrap_or_default()
}

/// A connection's key: its conntrack id, zone and five-tuple (stable for its
/// life, and across restarts of the agent, so its records are one).
fn key_of(ev: &CtEvent) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (ev.id, ev.zone, ev.tuple).hash(&mut h);
    h.finish() & 0x7fff_ffff_ffff_ffff
}

/// The record id of a connection with the key of one before it (whose
/// record had `previous`): one of its own.
fn next_id(key: u64, previous: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, previous).hash(&mut h);
    h.finish() & 0x7fff_ffff_ffff_ffff
}

impl Recorder {
    /// A record for a connection of this host's, when it is one.
    fn make(&self, me: &str, ev: &CtEvent, start_ms: u64) -> Option<FlowRecord> {
        let zone = self.ctx.zones.get(&ev.zone)?;
        let t = ev.tuple;
        let src = self.ctx.who(t.src, zone).cloned();
        // A flow from another host's endpoint is recorded there.
        if src.as_ref().is_some_and(|w| w.3 != me) {
            return None;
        }
        let dst = self.ctx.who(t.dst, zone).cloned();
        Some(FlowRecord {
            host: me.to_string(),
            id: key_of(ev),
            protocol: t.protocol,
            src: t.src,
            sport: t.sport,
            dst: t.dst,
            dport: t.dport,
            src_network: src.as_ref().map(|w| w.1.clone()),
            dst_network: dst.as_ref().map(|w| w.1.clone()),
            src_endpoint: src.map(|w| w.0),
            dst_endpoint: dst.map(|w| w.0),
            verdict: FlowVerdict::Forwarded,
            start_ms,
            end_ms: None,
            packets: ev.orig.0,
            bytes: ev.orig.1,
            reply_packets: ev.reply.0,
            reply_bytes: ev.reply.1,
            connections: 1,
            rule: None,
            reason: None,
            tcp_flags: state_flags(ev),
        })
    }

    fn end(&mut self, key: u64, ev: Option<&CtEvent>) -> Option<FlowRecord> {
        let mut r = self.active.remove(&key)?;
        if let Some(ev) = ev {
            (r.packets, r.bytes, r.reply_packets, r.reply_bytes) = (ev.orig.0, ev.orig.1, ev.reply.0, ev.reply.1);
            TcpFlag::union(&mut r.tcp_flags, &state_flags(ev));
        }
        r.end_ms = Some(now_ms());
        self.ended.insert(key, r.id);
        Some(r)
    }

    /// What an event makes or completes, into `out`. A new connection with
    /// the key of one followed or ended is another one: the kernel gives the
    /// next connection of a five-tuple the memory, hence the id, of the TCP
    /// entry it replaces. The one replaced ends, and the new one's record
    /// gets an id of its own ([`next_id`]; a restarted agent that finds it
    /// running gives it its key).
    fn event(&mut self, me: &str, ev: &CtEvent, out: &mut Vec<FlowRecord>) {
        let key = key_of(ev);
        match ev.kind {
            // A dump found it first.
            CtEventKind::New if self.found.remove(&key) => {}
            CtEventKind::New if self.active.len() < MAX_ACTIVE || self.active.contains_key(&key) => {
                out.extend(self.end(key, None));
                let previous = self.ended.remove(&key);
                if let Some(mut r) = self.make(me, ev, now_ms()) {
                    if let Some(previous) = previous {
                        r.id = next_id(key, previous);
                    }
                    self.active.insert(key, r.clone());
                    out.push(r);
                }
            }
            CtEventKind::New => {}
            CtEventKind::Destroy => {
                self.ended.remove(&key);
                out.extend(self.end(key, Some(ev)));
            }
        }
    }

    /// The records a dump of the table changes: counters of running flows,
    /// flows that ended (TCP closed, or gone from the table), and flows
    /// running that were not known (the agent started after them).
    fn table(&mut self, me: &str, entries: &[CtEvent]) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        let mut seen = HashSet::with_capacity(entries.len());
        for ev in entries {
            let key = key_of(ev);
            seen.insert(key);
            if self.ended.contains_key(&key) {
                continue;
            }
            let closed = ev.tcp_state.is_some_and(tessera_dataplane::ct_events::tcp_closed);
            let room = self.active.len() < MAX_ACTIVE;
            match self.active.get_mut(&key) {
                Some(r) => {
                    let now = (ev.orig.0, ev.orig.1, ev.reply.0, ev.reply.1);
                    TcpFlag::union(&mut r.tcp_flags, &state_flags(ev));
                    if (r.packets, r.bytes, r.reply_packets, r.reply_bytes) != now {
                        (r.packets, r.bytes, r.reply_packets, r.reply_bytes) = now;
                        if !closed {
                            out.push(r.clone());
                        }
                    }
                    if closed {
                        out.extend(self.end(key, None));
                    }
                }
                None if room => {
                    let start = ev.start_ns.map_or_else(now_ms, |ns| ns / 1_000_000);
                    if let Some(r) = self.make(me, ev, start) {
                        if ev.start_ns.is_none() || start < self.since_ms {
                            self.inherited.push(r.id);
                        }
                        self.active.insert(key, r.clone());
                        self.found.insert(key);
                        if closed {
                            out.extend(self.end(key, None));
                        } else {
                            out.push(r);
                        }
                    }
                }
                None => {}
            }
        }
        let gone: Vec<u64> = self.active.keys().filter(|k| !seen.contains(k)).copied().collect();
        for key in gone {
            out.extend(self.end(key, None));
        }
        self.ended.retain(|k, _| seen.contains(k));
        self.found.retain(|k| seen.contains(k));
        out
    }
}

/// Records and reports until the agent stops.
pub async fn run(agent: Arc<Agent>, client: ControllerClient) {
    let mut events = match tessera_dataplane::linux::conntrack_events() {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read conntrack events: no flow records on this host");
            return;
        }
    };
    let socket = match tokio::task::spawn_blocking(NetfilterSocket::open).await {
        Ok(Ok(s)) => Arc::new(std::sync::Mutex::new(s)),
        other => {
            tracing::warn!(error = ?other.map(|r| r.err()), "cannot dump conntrack: no flow records on this host");
            return;
        }
    };
    let mut refused = match tessera_dataplane::linux::refused_packets().await {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the log of refused packets: no records of refused flows on this host");
            None
        }
    };
    let mut drops = Drops::default();
    let mut attribution = Attribution::default();
    let client = client.with_attempts(1);
    let me = agent.me.name.clone();
    let reconciled = agent.counters.reconciled_states();
    let mut rec = Recorder { since_ms: now_ms(), ..Recorder::default() };
    let mut pending: Vec<FlowRecord> = Vec::new();
    // Records of new flows since the last report, and in a flood the new
    // flows that wait for the next dump.
    let mut fresh: Vec<FlowRecord> = Vec::new();
    let mut held: HashSet<u64> = HashSet::new();
    // Flows reported while running: they keep their own record.
    let mut reported: HashSet<u64> = HashSet::new();
    let mut next_dump = std::time::Instant::now();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = events.recv() => {
                let Some(m) = m else { return };
                let CtMessage::Events(evs, _) = m else {
                    agent.metrics.flows_lost.inc();
                    continue;
                };
                let snap = agent.snapshot.borrow().clone();
                let Some(snap) = snap else { continue };
                let desired = reconciled.borrow().clone();
                rec.ctx.refresh(&snap, &desired);
                for ev in &evs {
                    rec.event(&me, ev, &mut fresh);
                }
            }
            Some(packets) = async { refused.as_mut()?.recv().await } => {
                let snap = agent.snapshot.borrow().clone();
                let Some(snap) = snap else { continue };
                let desired = reconciled.borrow().clone();
                for p in &packets {
                    if let Some(r) = drops.record(&me, p, &snap, desired.as_deref()) {
                        // A refused flow's first packet makes its record.
                        if r.packets == 1 {
                            agent.metrics.flows_recorded.inc();
                        }
                        pending.push(r);
                    }
                }
            }
            _ = tick.tick() => {
                let carried = pending.len();
                // Before the dump's records, which may end them.
                if fresh.len() > FLOOD_NEW {
                    for r in fresh.drain(..) {
                        if r.end_ms.is_some() {
                            pending.push(r);
                        } else {
                            held.insert(r.id);
                        }
                    }
                } else {
                    pending.append(&mut fresh);
                }
                let snap = agent.snapshot.borrow().clone();
                if let Some(snap) = snap.filter(|_| next_dump <= std::time::Instant::now()) {
                    let started = std::time::Instant::now();
                    let desired = reconciled.borrow().clone();
                    rec.ctx.refresh(&snap, &desired);
                    let s = socket.clone();
                    // Below normal CPU priority: a table that short connections
                    // filled costs a few hundred milliseconds, which must not
                    // delay a change being applied.
                    let table = tessera_dataplane::linux::below_normal("tessera-flow-dump", move || {
                        let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                        tessera_dataplane::nfnetlink::conntrack_table(&mut s)
                    })
                    .await;
                    match table {
                        Ok(Ok(mut entries)) => {
                            if let Some(fp) = &agent.fastpath {
                                fp.add_counts(&mut entries);
                            }
                            let changed = rec.table(&me, &entries);
                            reported.extend(rec.inherited.drain(..));
                            // The flood's flows that ended were never reported: alike
                            // ones are made one now; those running are reported.
                            let (ended, changed): (Vec<_>, Vec<_>) =
                                changed.into_iter().partition(|r| r.end_ms.is_some() && held.contains(&r.id));
                            pending.extend(changed);
                            pending.extend(tessera_model::flow::aggregate(ended, |_| false));
                            if !held.is_empty() {
                                pending.extend(rec.active.values().filter(|r| held.contains(&r.id)).cloned());
                                held.clear();
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "cannot dump conntrack"),
                        Err(e) => tracing::debug!(error = %e, "the conntrack dump failed"),
                    }
                    // A big table (many short connections) is read less often:
                    // the dump takes at most a twentieth of a core.
                    next_dump = std::time::Instant::now() + DUMP_EVERY.max(started.elapsed() * DUMP_BUSY_FACTOR);
                }
                agent.metrics.flows_active.set(rec.active.len() as i64);
                agent.metrics.flows_recorded.inc_by((pending.len() - carried) as u64);
                if pending.len() > MAX_PENDING {
                    let over = pending.len() - MAX_PENDING;
                    pending.drain(..over);
                    agent.metrics.flows_lost.inc_by(over as u64);
                }
                if pending.is_empty() {
                    continue;
                }
                let batch: Vec<FlowRecord> = pending.drain(..pending.len().min(tessera_model::flow::MAX_REPORT_RECORDS)).collect();
                let mut batch = tessera_model::flow::aggregate(batch, |id| reported.contains(&id));
                let snap = agent.snapshot.borrow().clone();
                let desired = reconciled.borrow().clone();
                if let (Some(snap), Some(desired)) = (snap, desired) {
                    attribution.apply(&mut batch, &snap, &desired, ATTRIBUTION_BUDGET);
                }
                for r in &batch {
                    if r.end_ms.is_none() {
                        reported.insert(r.id);
                    } else {
                        reported.remove(&r.id);
                    }
                }
                let report = FlowReport { records: batch };
                if let Err(e) = client.report_flows(&me, &report).await {
                    tracing::debug!(error = %e, "cannot report flows; keeping them for the next report");
                    let mut back = report.records;
                    back.append(&mut pending);
                    pending = back;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_dataplane::ct_events::FiveTuple;

    fn connection(id: u32, tcp_state: Option<u8>) -> CtEvent {
        let tuple = FiveTuple {
            protocol: 6,
            src: "10.0.0.2".parse().unwrap(),
            dst: "10.0.0.3".parse().unwrap(),
            sport: 40_000 + id as u16,
            dport: 80,
        };
        CtEvent { kind: CtEventKind::New, id, zone: 5, tuple, orig: (1, 60), reply: (0, 0), start_ns: None, tcp_state, status: 0 }
    }

    fn made(rec: &mut Recorder, ev: &CtEvent) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        rec.event("h1", ev, &mut out);
        out
    }

    fn recorder() -> Recorder {
        let mut rec = Recorder::default();
        rec.ctx.zones.insert(5, vec![Uuid::nil()]);
        rec
    }

    #[test]
    fn connections_a_restarted_agent_finds_keep_their_own_records() {
        let mut rec = Recorder { since_ms: 10_000, ..recorder() };
        let older = |id, state| CtEvent { start_ns: Some(9_000_000_000), ..connection(id, state) };
        let newer = CtEvent { start_ns: Some(11_000_000_000), ..connection(3, Some(7)) };
        // Two alike connections that ended before the agent's first dump,
        // and one that began after the agent did.
        let ended = rec.table("h1", &[older(1, Some(7)), older(2, Some(7)), newer]);
        assert_eq!(ended.len(), 3);
        assert_eq!(rec.inherited, vec![ended[0].id, ended[1].id]);
        let kept = tessera_model::flow::aggregate(ended, |id| rec.inherited.contains(&id));
        assert_eq!(kept.len(), 3, "{kept:?}");
    }

    #[test]
    fn a_new_event_after_a_dump_ended_its_connection_makes_nothing() {
        let mut rec = recorder();
        let ended = rec.table("h1", &[connection(1, Some(7))]);
        assert_eq!(ended.len(), 1);
        assert!(ended[0].end_ms.is_some());
        assert!(made(&mut rec, &connection(1, None)).is_empty());
        assert!(rec.active.is_empty());
    }

    #[test]
    fn a_new_event_after_a_dump_found_its_connection_running_makes_nothing() {
        let mut rec = recorder();
        assert_eq!(rec.table("h1", &[connection(1, Some(3))]).len(), 1);
        assert!(made(&mut rec, &connection(1, None)).is_empty());
        assert_eq!(rec.active.len(), 1);
    }

    #[test]
    fn a_connection_with_the_key_of_one_that_ended_is_another_record() {
        let mut rec = recorder();
        let first = made(&mut rec, &connection(1, None)).remove(0);
        assert!(rec.table("h1", &[connection(1, Some(7))])[0].end_ms.is_some());
        let next = made(&mut rec, &connection(1, None));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].end_ms, None);
        assert_ne!(next[0].id, first.id);
        let ended = rec.table("h1", &[connection(1, Some(7))]);
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!((ended[0].id, ended[0].end_ms.is_some()), (next[0].id, true));
    }

    #[test]
    fn a_connection_with_the_key_of_one_followed_ends_it() {
        let mut rec = recorder();
        let first = made(&mut rec, &connection(1, None)).remove(0);
        let out = made(&mut rec, &connection(1, None));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!((out[0].id, out[0].end_ms.is_some()), (first.id, true));
        assert_eq!(out[1].end_ms, None);
        assert_ne!(out[1].id, first.id);
        assert_eq!(rec.active.len(), 1);
    }
}
