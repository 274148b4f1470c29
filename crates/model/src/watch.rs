//! The wire types agents use to mirror the controller's state: a snapshot at
//! a revision, then a stream of changes after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Endpoint, FloatingIp, FqName, Host, Network, Policy, RuleChunk, Rules, Service};

/// Everything agents mirror, consistent at `revision`.
///
/// Policies travel as a header ([`PolicyHeader`]: name and chunk order) and
/// chunks of rules ([`PolicyRules`]), each its own object, so that a
/// one-rule change sends one chunk. A snapshot assembles them into
/// `policies`; a chunk that arrives before the header that lists it (a
/// policy's rules replaced whole: new chunks first, then the header), or a
/// header whose chunks have not all arrived, waits until the policy is
/// complete, so a half-applied change is never seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub revision: u64,
    /// The fabric the intent belongs to: set when the controller's store was
    /// made (`tessera controller --init`). An agent that knew another cluster
    /// holds its data plane instead of applying this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub cluster: Option<Uuid>,
    /// The store the revisions belong to: absent for the store made with
    /// `--init`, a new ID each time `tessera store migrate` fills a store.
    /// A client that resumes a watch from a saved revision sends the epoch
    /// it saved with it (`GET /v1/watch?after=R&epoch=E`): revisions of
    /// another store are refused with 410, and the client takes a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub epoch: Option<Uuid>,
    pub networks: Vec<Network>,
    /// Shared between copies (a mirror hands out a copy at every change,
    /// and a fabric's endpoints are most of a snapshot): changed in place
    /// by `Arc::make_mut`, which copies them only while a copy shares them.
    #[schema(value_type = Vec<Endpoint>)]
    pub endpoints: std::sync::Arc<Vec<Endpoint>>,
    pub hosts: Vec<Host>,
    #[serde(with = "chunked")]
    #[schema(value_type = Vec<ChunkedPolicy>)]
    pub policies: Vec<Policy>,
    #[serde(default)]
    pub floating_ips: Vec<FloatingIp>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// Policy parts received but not yet assembled.
    #[serde(skip)]
    #[schema(ignore)]
    pub pending: Pending,
    /// The networks whose endpoints a mirror asked for (it holds those and
    /// its host's own); `None`: every network's. Set by the mirror, not sent.
    #[serde(skip)]
    #[schema(ignore)]
    pub scope: Option<std::collections::BTreeSet<Uuid>>,
}

/// Chunks not (yet) in an assembled policy, and headers waiting for chunks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pending {
    chunks: BTreeMap<(Uuid, u64), Arc<RuleChunk>>,
    headers: BTreeMap<Uuid, PolicyHeader>,
}

/// What the store holds of a policy under its own key: its name and its
/// chunks of rules, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyHeader {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub fq_name: FqName,
    pub chunks: Vec<ChunkRef>,
}

/// A chunk of a policy's rules as its header lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkRef {
    pub id: u64,
    pub len: usize,
}

/// A chunk of a policy's rules, stored and sent on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyRules {
    #[schema(value_type = String, format = Uuid)]
    pub policy: Uuid,
    pub id: u64,
    pub rules: Vec<crate::Rule>,
}

/// A policy in a snapshot: the header's fields with the chunks inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkedPolicy {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub fq_name: FqName,
    pub chunks: Vec<RuleChunk>,
}

impl PolicyHeader {
    /// The header of `p` as chunked now.
    pub fn of(p: &Policy) -> Self {
        PolicyHeader {
            id: p.id,
            fq_name: p.fq_name.clone(),
            chunks: p.rules.chunks().iter().map(|c| ChunkRef { id: c.id, len: c.rules.len() }).collect(),
        }
    }
}

impl ChunkedPolicy {
    fn of(p: &Policy) -> Self {
        ChunkedPolicy { id: p.id, fq_name: p.fq_name.clone(), chunks: p.rules.chunks().iter().map(|c| (**c).clone()).collect() }
    }
}

impl Snapshot {
    /// The snapshot's JSON (as `serde_json` writes it) in pieces of about
    /// `piece` bytes, each made when it is asked for: a large snapshot is
    /// sent without its whole JSON in memory.
    pub fn json_pieces(self: Arc<Self>, piece: usize) -> impl Iterator<Item = Vec<u8>> + Send {
        self.json_pieces_where(piece, |_| true)
    }

    /// [`Self::json_pieces`] of the snapshot with only the endpoints `keep`
    /// admits (a host's scoped snapshot), without copying the rest.
    pub fn json_pieces_where(
        self: Arc<Self>,
        piece: usize,
        keep: impl Fn(&Endpoint) -> bool + Send + 'static,
    ) -> impl Iterator<Item = Vec<u8>> + Send {
        let mut head = format!("{{\"revision\":{}", self.revision);
        if let Some(c) = self.cluster {
            head.push_str(&format!(",\"cluster\":\"{c}\""));
        }
        if let Some(e) = self.epoch {
            head.push_str(&format!(",\"epoch\":\"{e}\""));
        }
        let sections = ["networks", "endpoints", "hosts", "policies", "floating_ips", "services"];
        let len = |s: &Snapshot, i: usize| match i {
            0 => s.networks.len(),
            1 => s.endpoints.len(),
            2 => s.hosts.len(),
            3 => s.policies.len(),
            4 => s.floating_ips.len(),
            _ => s.services.len(),
        };
        // (section, index in it); `None` once done.
        let mut at = Some((0usize, 0usize));
        let mut pending = head.into_bytes();
        // Whether the open section has an element yet (for the commas).
        let mut written_in_section = false;
        std::iter::from_fn(move || {
            let (mut sec, mut i) = at?;
            while pending.len() < piece {
                if sec == sections.len() {
                    pending.push(b'}');
                    at = None;
                    return Some(std::mem::take(&mut pending));
                }
                if i == 0 {
                    pending.extend_from_slice(format!(",\"{}\":[", sections[sec]).as_bytes());
                    written_in_section = false;
                }
                if i < len(&self, sec) {
                    if sec == 1 && !keep(&self.endpoints[i]) {
                        i += 1;
                        continue;
                    }
                    if written_in_section {
                        pending.push(b',');
                    }
                    written_in_section = true;
                    let written = match sec {
                        0 => serde_json::to_writer(&mut pending, &self.networks[i]),
                        1 => serde_json::to_writer(&mut pending, &self.endpoints[i]),
                        2 => serde_json::to_writer(&mut pending, &self.hosts[i]),
                        3 => serde_json::to_writer(&mut pending, &ChunkedPolicy::of(&self.policies[i])),
                        4 => serde_json::to_writer(&mut pending, &self.floating_ips[i]),
                        _ => serde_json::to_writer(&mut pending, &self.services[i]),
                    };
                    written.expect("model objects serialize");
                    i += 1;
                } else {
                    pending.push(b']');
                    sec += 1;
                    i = 0;
                }
            }
            at = Some((sec, i));
            Some(std::mem::take(&mut pending))
        })
    }
}

mod chunked {
    use super::*;

    pub fn serialize<S: serde::Serializer>(policies: &[Policy], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(policies.iter().map(ChunkedPolicy::of))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Policy>, D::Error> {
        let list = Vec::<ChunkedPolicy>::deserialize(d)?;
        Ok(list
            .into_iter()
            .map(|c| Policy { id: c.id, fq_name: c.fq_name, rules: Rules::from_chunks(c.chunks.into_iter().map(Arc::new)) })
            .collect())
    }
}

/// One line of `GET /v1/watch` (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WatchEvent {
    /// An object was created or changed.
    Put { revision: u64, object: Box<Object> },
    /// An object was deleted.
    Delete { revision: u64, object: ObjectRef },
    /// Nothing changed up to `revision`; sent periodically so that a watcher
    /// can tell a quiet stream from a dead one and resume from `revision`.
    Progress { revision: u64 },
    /// The watch cannot go on (for example the revision was compacted); the
    /// watcher must fetch a new snapshot and watch from its revision.
    Error { code: String, message: String },
}

/// An object carried by a watch event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Object {
    Network(Network),
    Endpoint(Endpoint),
    Host(Host),
    /// A policy's name and the order of its chunks.
    Policy(PolicyHeader),
    /// A chunk of a policy's rules.
    PolicyRules(PolicyRules),
    FloatingIp(FloatingIp),
    Service(Service),
}

impl Object {
    /// The `"type"` of each kind, as a watch line spells it.
    pub const KINDS: [&'static str; 7] = ["network", "endpoint", "host", "policy", "policy_rules", "floating_ip", "service"];
}

impl WatchEvent {
    /// One line of a watch. A part older than the controller may meet an
    /// object of a kind it does not know (`"type"` of a put): that event
    /// reads as progress to its revision, so the watch goes on without it
    /// (deletes of such objects already read as deletes of nothing).
    pub fn decode_line(line: &[u8]) -> serde_json::Result<WatchEvent> {
        let strict = serde_json::from_slice(line);
        let Err(e) = strict else { return strict };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else { return Err(e) };
        let unknown_put = value["kind"] == "put" && value["object"]["type"].as_str().is_some_and(|t| !Object::KINDS.contains(&t));
        match value["revision"].as_u64() {
            Some(revision) if unknown_put => Ok(WatchEvent::Progress { revision }),
            _ => Err(e),
        }
    }
}

/// The identity of a deleted object: its type and its key (UUID, host name,
/// or `POLICY/CHUNK` for a chunk of rules, `policy_rules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

impl Snapshot {
    /// Applies one event; events below the snapshot's revision are ignored.
    /// The events of one transaction share its revision, so an event at the
    /// snapshot's revision is applied (the watch after a snapshot sends
    /// nothing at or below it, and applying a put or delete again changes
    /// nothing).
    pub fn apply(&mut self, ev: &WatchEvent) {
        match ev {
            WatchEvent::Put { revision, object } if *revision >= self.revision => {
                self.revision = *revision;
                match object.as_ref() {
                    Object::Network(n) => upsert(&mut self.networks, n.clone(), |x| x.id == n.id),
                    Object::Endpoint(e) => upsert(std::sync::Arc::make_mut(&mut self.endpoints), e.clone(), |x| x.id == e.id),
                    Object::Host(h) => upsert(&mut self.hosts, h.clone(), |x| x.name == h.name),
                    Object::Policy(h) => self.put_header(h.clone()),
                    Object::PolicyRules(c) => self.put_chunk(c),
                    Object::FloatingIp(f) => upsert(&mut self.floating_ips, f.clone(), |x| x.id == f.id),
                    Object::Service(v) => upsert(&mut self.services, v.clone(), |x| x.id == v.id),
                }
            }
            WatchEvent::Delete { revision, object } if *revision >= self.revision => {
                self.revision = *revision;
                let id = object.id.as_str();
                match object.kind.as_str() {
                    "network" => self.networks.retain(|x| x.id.to_string() != id),
                    "endpoint" => std::sync::Arc::make_mut(&mut self.endpoints).retain(|x| x.id.to_string() != id),
                    "host" => self.hosts.retain(|x| x.name != id),
                    "floating_ip" => self.floating_ips.retain(|x| x.id.to_string() != id),
                    "service" => self.services.retain(|x| x.id.to_string() != id),
                    "policy" => {
                        self.policies.retain(|x| x.id.to_string() != id);
                        self.pending.headers.retain(|p, _| p.to_string() != id);
                        self.pending.chunks.retain(|(p, _), _| p.to_string() != id);
                    }
                    "policy_rules" => {
                        if let Some((p, c)) = parse_chunk_ref(id) {
                            self.pending.chunks.remove(&(p, c));
                        }
                    }
                    _ => {}
                }
            }
            WatchEvent::Progress { revision } if *revision > self.revision => self.revision = *revision,
            _ => {}
        }
    }
}

impl Snapshot {
    /// Whether chunks or headers wait for their policy to be complete.
    pub fn has_pending(&self) -> bool {
        !self.pending.chunks.is_empty() || !self.pending.headers.is_empty()
    }

    /// Adds a policy from its header and its chunks (as the controller
    /// reads them); chunks the header does not list are ignored, and a
    /// header whose chunks are missing waits like one from a watch.
    pub fn add_policy(&mut self, header: PolicyHeader, chunks: Vec<PolicyRules>) {
        for c in chunks {
            self.pending.chunks.insert((c.policy, c.id), Arc::new(RuleChunk::new(c.id, c.rules)));
        }
        self.put_header(header);
        self.pending.chunks.retain(|(p, _), _| self.pending.headers.contains_key(p));
    }

    fn put_header(&mut self, h: PolicyHeader) {
        let current = self.policies.iter().find(|p| p.id == h.id);
        let mut chunks = Vec::with_capacity(h.chunks.len());
        for r in &h.chunks {
            let found = self
                .pending
                .chunks
                .get(&(h.id, r.id))
                .or_else(|| current.and_then(|p| p.rules.chunks().iter().find(|c| c.id == r.id)))
                .filter(|c| c.rules.len() == r.len);
            match found {
                Some(c) => chunks.push(c.clone()),
                None => {
                    self.pending.headers.insert(h.id, h);
                    return;
                }
            }
        }
        self.pending.headers.remove(&h.id);
        for r in &h.chunks {
            self.pending.chunks.remove(&(h.id, r.id));
        }
        let policy = Policy { id: h.id, fq_name: h.fq_name, rules: Rules::from_chunks(chunks) };
        upsert(&mut self.policies, policy, |x| x.id == h.id);
    }

    fn put_chunk(&mut self, c: &PolicyRules) {
        let chunk = Arc::new(RuleChunk::new(c.id, c.rules.clone()));
        // In place only when the length is the same (a rule replaced): a
        // chunk that grew or shrank comes with a new header, which decides.
        let same = |x: &Arc<RuleChunk>| x.id == c.id && x.rules.len() == c.rules.len();
        match self.policies.iter_mut().find(|p| p.id == c.policy && p.rules.chunks().iter().any(same)) {
            Some(p) => {
                let chunks = p.rules.chunks().iter().map(|x| if x.id == c.id { chunk.clone() } else { x.clone() });
                p.rules = Rules::from_chunks(chunks.collect::<Vec<_>>());
            }
            None => {
                self.pending.chunks.insert((c.policy, c.id), chunk);
            }
        }
        if let Some(h) = self.pending.headers.get(&c.policy).cloned() {
            self.put_header(h);
        }
    }
}

/// `POLICY/CHUNK` of a `policy_rules` reference.
pub fn chunk_ref(policy: Uuid, chunk: u64) -> String {
    format!("{policy}/{chunk:016x}")
}

fn parse_chunk_ref(s: &str) -> Option<(Uuid, u64)> {
    let (p, c) = s.split_once('/')?;
    Some((p.parse().ok()?, u64::from_str_radix(c, 16).ok()?))
}

fn upsert<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool) {
    match list.iter_mut().find(|x| same(x)) {
        Some(slot) => *slot = item,
        None => list.push(item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_of_a_kind_this_build_does_not_know_reads_as_progress() {
        let line = br#"{"kind":"put","revision":42,"object":{"type":"load_balancer","value":{"id":"x"}}}"#;
        assert_eq!(WatchEvent::decode_line(line).unwrap(), WatchEvent::Progress { revision: 42 });
        // A known kind that does not decode is still an error.
        let bad = br#"{"kind":"put","revision":42,"object":{"type":"network","value":{"id":"x"}}}"#;
        assert!(WatchEvent::decode_line(bad).is_err());
        // Every kind this build writes is one it knows.
        for kind in Object::KINDS {
            let line = format!(r#"{{"kind":"delete","revision":1,"object":{{"type":"{kind}","id":"x"}}}}"#);
            assert!(WatchEvent::decode_line(line.as_bytes()).is_ok());
        }
    }
    use crate::{ProjectName, Rule};

    fn rule(port: u16) -> Rule {
        Rule::parse("r", &format!("deny tcp any any > any {port}"), &ProjectName::default_project()).unwrap()
    }

    fn chunk(policy: Uuid, id: u64, ports: std::ops::Range<u16>) -> PolicyRules {
        PolicyRules { policy, id, rules: ports.map(rule).collect() }
    }

    fn header(policy: Uuid, chunks: &[(u64, usize)]) -> PolicyHeader {
        PolicyHeader {
            id: policy,
            fq_name: FqName::resolve("p", &ProjectName::default_project()).unwrap(),
            chunks: chunks.iter().map(|(id, len)| ChunkRef { id: *id, len: *len }).collect(),
        }
    }

    fn put(rev: u64, object: Object) -> WatchEvent {
        WatchEvent::Put { revision: rev, object: Box::new(object) }
    }

    fn ports(s: &Snapshot) -> Vec<u16> {
        s.policies[0].rules.iter().map(|r| r.dst_ports[0].start).collect()
    }

    #[test]
    fn a_snapshot_in_pieces_is_the_json_of_the_snapshot() {
        let id = Uuid::from_u128(7);
        let mut s = Snapshot::default();
        s.apply(&put(1, Object::PolicyRules(chunk(id, 0, 0..3))));
        s.apply(&put(2, Object::Policy(header(id, &[(0, 3)]))));
        s.hosts = (0..5)
            .map(|i| Host {
                name: format!("h{i}"),
                underlay_ip: format!("10.0.0.{i}").parse().unwrap(),
                last_seen: i,
                gateways: vec![],
                alive: false,
            })
            .collect();
        s.revision = 42;
        s.cluster = Some(Uuid::from_u128(9));
        s.epoch = Some(Uuid::from_u128(10));
        let whole: serde_json::Value = serde_json::to_value(&s).unwrap();
        for piece in [1, 100, 1 << 20] {
            let pieces: Vec<Vec<u8>> = Arc::new(s.clone()).json_pieces(piece).collect();
            if piece == 1 {
                assert!(pieces.len() > 5, "small pieces: {}", pieces.len());
            }
            let joined: Vec<u8> = pieces.concat();
            let parsed: serde_json::Value =
                serde_json::from_slice(&joined).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&joined)));
            assert_eq!(parsed, whole, "pieces of {piece} bytes");
            let back: Snapshot = serde_json::from_slice(&joined).unwrap();
            assert_eq!(back.hosts, s.hosts);
            assert_eq!(ports(&back), vec![0, 1, 2]);
        }
        let empty: Vec<u8> = Arc::new(Snapshot::default()).json_pieces(64).collect::<Vec<_>>().concat();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&empty).unwrap(),
            serde_json::to_value(Snapshot::default()).unwrap()
        );
    }

    #[test]
    fn a_scoped_snapshot_in_pieces_holds_only_the_endpoints_kept() {
        let ep = |n: u128, network: u128| crate::Endpoint {
            id: Uuid::from_u128(n),
            name: format!("e{n}"),
            network: Uuid::from_u128(network),
            host: "h1".into(),
            mac: crate::MacAddr::local_from([0, 0, 0, 0, 0, n as u8]),
            ips: vec![format!("10.0.0.{n}/24").parse().unwrap()],
            owner: Default::default(),
            status: crate::EndpointStatus::Pending,
            status_message: None,
            ports: vec![],
            health: None,
        };
        let s = Snapshot {
            revision: 3,
            endpoints: std::sync::Arc::new((1..=6).map(|n| ep(n, n % 2)).collect()),
            ..Default::default()
        };
        for piece in [1, 64, 1 << 20] {
            for wanted in [0u128, 1] {
                let joined = Arc::new(s.clone())
                    .json_pieces_where(piece, move |e| e.network == Uuid::from_u128(wanted))
                    .collect::<Vec<_>>()
                    .concat();
                let back: Snapshot = serde_json::from_slice(&joined).unwrap_or_else(|e| panic!("{e}: {joined:?}"));
                let ids: Vec<u128> = back.endpoints.iter().map(|e| e.id.as_u128()).collect();
                let expected: Vec<u128> = (1..=6).filter(|n| n % 2 == wanted).collect();
                assert_eq!(ids, expected, "pieces of {piece} bytes");
                assert_eq!(back.revision, 3);
            }
            let none = Arc::new(s.clone()).json_pieces_where(piece, |_| false).collect::<Vec<_>>().concat();
            assert!(serde_json::from_slice::<Snapshot>(&none).unwrap().endpoints.is_empty());
        }
    }

    #[test]
    fn a_policy_is_assembled_when_its_header_and_chunks_are_all_there() {
        let id = Uuid::from_u128(7);
        let mut s = Snapshot::default();
        s.apply(&put(1, Object::PolicyRules(chunk(id, 0, 0..3))));
        assert!(s.policies.is_empty() && s.has_pending());
        // The header lists a chunk not yet received: it waits.
        s.apply(&put(2, Object::Policy(header(id, &[(0, 3), (1, 2)]))));
        assert!(s.policies.is_empty());
        s.apply(&put(3, Object::PolicyRules(chunk(id, 1, 10..12))));
        assert_eq!(ports(&s), vec![0, 1, 2, 10, 11]);
        assert!(!s.has_pending());

        // A rule replaced: one chunk of the same length, applied at once.
        let mut c = chunk(id, 1, 10..12);
        c.rules[1] = rule(99);
        s.apply(&put(4, Object::PolicyRules(c)));
        assert_eq!(ports(&s), vec![0, 1, 2, 10, 99]);

        // The rules replaced whole: a new chunk, then the header, then the
        // old chunks deleted; until the header, the old rules stand.
        s.apply(&put(5, Object::PolicyRules(chunk(id, 2, 20..21))));
        assert_eq!(ports(&s), vec![0, 1, 2, 10, 99]);
        // The header in the same transaction (the same revision).
        s.apply(&put(5, Object::Policy(header(id, &[(2, 1)]))));
        assert_eq!(s.revision, 5);
        assert_eq!(ports(&s), vec![20]);
        // Older events are ignored.
        s.apply(&put(4, Object::Policy(header(id, &[(0, 3)]))));
        assert_eq!(ports(&s), vec![20]);

        let mut s = Snapshot::default();
        s.add_policy(header(id, &[(0, 3)]), vec![chunk(id, 0, 0..3)]);
        s.apply(&put(1, Object::PolicyRules(chunk(id, 2, 20..21))));
        s.apply(&put(2, Object::Policy(header(id, &[(2, 1)]))));
        for old in ["0", "1"] {
            let r = ObjectRef { kind: "policy_rules".into(), id: format!("{id}/{:0>16}", old) };
            s.apply(&WatchEvent::Delete { revision: 3, object: r });
        }
        assert_eq!(ports(&s), vec![20]);
        assert!(!s.has_pending());

        // A grown chunk waits for the header that says so.
        s.apply(&put(4, Object::PolicyRules(chunk(id, 2, 20..22))));
        assert_eq!(ports(&s), vec![20]);
        s.apply(&put(5, Object::Policy(header(id, &[(2, 2)]))));
        assert_eq!(ports(&s), vec![20, 21]);

        // Serialised and read back (the agent's saved snapshot), chunks keep their ids.
        let back: Snapshot = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back.policies, s.policies);
        assert_eq!(back.policies[0].rules.chunks()[0].id, 2);
        s.apply(&WatchEvent::Delete { revision: 6, object: ObjectRef { kind: "policy".into(), id: id.to_string() } });
        assert!(s.policies.is_empty() && !s.has_pending());
    }
}
