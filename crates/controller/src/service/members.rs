//! Several controllers on one store: each registers itself and keeps its
//! registration alive, one of them is elected leader and does the work that
//! must run once (ending expired leases, removing dead controllers'
//! registrations), and leases hold across controllers. The decisions are
//! in `peers`; this module does the reads and writes.
//!
//! Writes are few, as every write wakes every watcher: a controller
//! rewrites its registration every [`HEARTBEAT_EVERY`] and when the set of
//! hosts it holds leases for changes (not at each renewal); the leader
//! renews its key every [`LEADER_RENEW_EVERY`].

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tessera_store::{Compare, Op, Txn};
use uuid::Uuid;

use super::controller::Controller;
use super::leases::LEASE_TIME;
use super::peers::{
    held_leases, leader_step, ControllerRecord, LeaderRecord, LeaderStep, Members, HEARTBEAT_EVERY, LEADER_MARGIN,
    LEADER_RENEW_EVERY, LEADER_TTL, REGISTRATION_TTL,
};
use super::txn::decode;
use crate::error::Result;
use crate::keys;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always serialise")
}

/// A registration as read, with whether its controller is alive.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Peer {
    #[serde(flatten)]
    pub record: ControllerRecord,
    /// Its registration was rewritten within [`REGISTRATION_TTL`] (as this
    /// controller saw it).
    pub alive: bool,
    /// It holds the leader key.
    pub leader: bool,
}

impl Controller {
    /// This controller's identity among the controllers of the store (new
    /// at each start).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Where other controllers and operators reach this one
    /// (`--advertise-url`), recorded in its registration.
    pub fn with_advertise_url(mut self, url: Option<String>) -> Self {
        self.advertise_url = url;
        self
    }

    fn members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this controller holds the leader key now (it stops acting as
    /// leader [`LEADER_MARGIN`] before another may take the key).
    pub fn is_leader(&self) -> bool {
        self.members().leader_until.is_some_and(|t| Instant::now() < t)
    }

    /// Renews the lease of `host` (which must be registered), recording it
    /// as alive if it was not. The renewal itself is kept in memory; the
    /// store is written only when this controller starts holding the lease
    /// (its registration then names the host, before the host is marked
    /// alive, so the leader never ends a lease renewed here).
    pub async fn renew_lease(&self, host: &str) -> Result<()> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).insert(host.to_string(), Instant::now());
        let published = self.members().published.as_ref().is_some_and(|p| p.contains(host));
        if !published {
            self.publish_registration().await?;
        }
        self.set_alive(host, true).await
    }

    /// One round of what every controller does, run every
    /// [`super::REAP_EVERY`]: rewrite its registration when due or when the
    /// hosts it holds changed, take part in the election, and, as leader,
    /// remove dead controllers' registrations and end expired leases.
    pub async fn run_duties(&self) -> Result<()> {
        let now = Instant::now();
        let held = held_leases(&self.leases.lock().unwrap_or_else(|p| p.into_inner()), now, LEASE_TIME);
        let (heartbeat_due, election_due) = {
            let m = self.members();
            (
                m.published.as_ref() != Some(&held) || m.last_heartbeat.is_none_or(|t| now - t >= HEARTBEAT_EVERY),
                m.last_election.is_none_or(|t| now - t >= LEADER_RENEW_EVERY),
            )
        };
        if heartbeat_due {
            self.publish_registration().await?;
        }
        if election_due {
            self.elect().await?;
        }
        if self.is_leader() {
            let peers = self.peers().await?;
            self.expire_peers(&peers).await?;
            let elsewhere: BTreeSet<String> = peers
                .iter()
                .filter(|p| p.alive && p.record.id != self.id)
                .flat_map(|p| p.record.leases.iter().cloned())
                .collect();
            self.reap_leases(&elsewhere).await?;
        }
        Ok(())
    }

    /// Writes this controller's registration with the hosts it holds now.
    /// Serialised, so renewals arriving together share one write.
    pub(super) async fn publish_registration(&self) -> Result<()> {
        let _one = self.registrar.lock().await;
        let now = Instant::now();
        let held = held_leases(&self.leases.lock().unwrap_or_else(|p| p.into_inner()), now, LEASE_TIME);
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).retain(|h, _| held.contains(h));
        let record = ControllerRecord {
            id: self.id,
            url: self.advertise_url.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms: self.started_ms,
            heartbeat_ms: unix_ms(),
            leases: held.clone(),
        };
        let key = keys::controller(self.id);
        for _ in 0..2 {
            let rev = self.members().my_revision;
            let txn = Txn::new()
                .when(Compare::ModRevision(key.clone(), rev))
                .then(Op::Put { key: key.clone(), value: encode(&record) });
            let r = self.store.txn(txn).await?;
            if r.succeeded {
                let mut m = self.members();
                m.my_revision = r.revision;
                m.published = Some(held);
                m.last_heartbeat = Some(now);
                return Ok(());
            }
            // Removed by a leader that thought this controller dead (it was
            // paused), or written before a restart of the store: take the
            // revision there is and write again.
            let current = self.store.get(&key).await?.map_or(0, |kv| kv.mod_revision);
            self.members().my_revision = current;
        }
        Err(crate::error::Error::Conflict(format!("registration of controller {}", self.id)))
    }

    /// One step of the election (see [`leader_step`]).
    async fn elect(&self) -> Result<()> {
        let now = Instant::now();
        let kv = self.store.get(keys::LEADER).await?;
        let key = match &kv {
            Some(kv) => Some((decode::<LeaderRecord>(kv)?.holder, kv.mod_revision)),
            None => None,
        };
        let (step, was) = {
            let mut m = self.members();
            m.last_election = Some(now);
            let age = m.ages.observe(keys::LEADER, key.map_or(0, |k| k.1), now);
            (leader_step(self.id, key, age), m.leader_until.is_some_and(|t| now < t))
        };
        let rev = match step {
            LeaderStep::Follow => {
                if was {
                    tracing::warn!(controller = %self.id, "another controller leads now");
                }
                self.members().leader_until = None;
                return Ok(());
            }
            LeaderStep::Renew(rev) | LeaderStep::Take(rev) => rev,
        };
        let since_ms = if was { self.members().since_ms } else { unix_ms() };
        let sent = Instant::now();
        let txn = Txn::new()
            .when(Compare::ModRevision(keys::LEADER.into(), rev))
            .then(Op::Put { key: keys::LEADER.into(), value: encode(&LeaderRecord { holder: self.id, since_ms }) });
        let r = self.store.txn(txn).await?;
        let mut m = self.members();
        if r.succeeded {
            m.leader_until = Some(sent + LEADER_TTL - LEADER_MARGIN);
            m.since_ms = since_ms;
            if !was {
                tracing::info!(controller = %self.id, "this controller leads: it ends expired leases and removes dead controllers");
            }
        } else {
            m.leader_until = None;
            if was {
                tracing::warn!(controller = %self.id, "lost the leader key to another controller");
            }
        }
        Ok(())
    }

    /// Leaves the controllers of the store, for a controller that stops:
    /// removes its registration and, when it leads, the leader key, so
    /// another leads at its next election step instead of after
    /// [`LEADER_TTL`]. Each only if unchanged since this controller wrote it.
    pub async fn resign(&self) -> Result<()> {
        let was = self.is_leader();
        let rev = self.members().my_revision;
        self.members().leader_until = None;
        let key = keys::controller(self.id);
        self.store.txn(Txn::new().when(Compare::ModRevision(key.clone(), rev)).then(Op::Delete { key })).await?;
        if was {
            if let Some(kv) = self.store.get(keys::LEADER).await? {
                if decode::<LeaderRecord>(&kv)?.holder == self.id {
                    let del = Op::Delete { key: keys::LEADER.into() };
                    self.store.txn(Txn::new().when(Compare::ModRevision(keys::LEADER.into(), kv.mod_revision)).then(del)).await?;
                    tracing::info!(controller = %self.id, "stopped leading");
                }
            }
        }
        Ok(())
    }

    /// Every registered controller, with whether it is alive as this
    /// controller sees it and which leads.
    pub async fn peers(&self) -> Result<Vec<Peer>> {
        let now = Instant::now();
        let regs = self.store.range(keys::CONTROLLERS).await?.kvs;
        let leader = match self.store.get(keys::LEADER).await? {
            Some(kv) => Some(decode::<LeaderRecord>(&kv)?.holder),
            None => None,
        };
        let mut m = self.members();
        let mut out = Vec::new();
        for kv in &regs {
            let record: ControllerRecord = decode(kv)?;
            let age = m.ages.observe(&kv.key, kv.mod_revision, now);
            let alive = record.id == self.id || age < REGISTRATION_TTL;
            out.push((kv.mod_revision, Peer { leader: leader == Some(record.id), record, alive }));
        }
        let live: BTreeSet<String> = regs.iter().map(|kv| kv.key.clone()).chain([keys::LEADER.to_string()]).collect();
        m.ages.retain(|k| live.contains(k));
        Ok(out.into_iter().map(|(_, p)| p).collect())
    }

    /// Removes the registrations of dead controllers (each only if still
    /// unchanged since it was judged dead).
    async fn expire_peers(&self, peers: &[Peer]) -> Result<()> {
        for p in peers.iter().filter(|p| !p.alive) {
            let key = keys::controller(p.record.id);
            let Some(kv) = self.store.get(&key).await? else { continue };
            let dead = self.members().ages.observe(&key, kv.mod_revision, Instant::now()) >= REGISTRATION_TTL;
            if dead {
                let txn = Txn::new().when(Compare::ModRevision(key.clone(), kv.mod_revision)).then(Op::Delete { key });
                if self.store.txn(txn).await?.succeeded {
                    tracing::info!(controller = %p.record.id, url = ?p.record.url, "controller registration expired; removed");
                }
            }
        }
        Ok(())
    }
}
