//! The transaction plumbing every resource module shares: store
//! transactions whose compares carry a named [`Guard`], the [`Outcome`]
//! that reports which guard refused a write, the retry budget, and the
//! encoding of values and ops.
//!
//! A [`GuardedTxn`] pushes each compare together with the guard it stands
//! for, so when the store reports the compares that did not hold (by their
//! index in the transaction) the refusal comes back as the guard itself,
//! never as a position to decode.

use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_store::{Compare, KeyValue, Op, Store, StoreError, Txn};
use uuid::Uuid;

use crate::error::{Error, Result};

/// How many times an operation re-reads and retries after losing a race.
pub(super) const MAX_ATTEMPTS: usize = 64;

/// The invariant one compare of a write guards, named after what has
/// happened when it does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Guard {
    /// The object's name (or its name index) is already taken.
    NameTaken,
    /// The VNI index already holds the VNI.
    VniTaken,
    /// The MAC index already holds the MAC.
    MacTaken,
    /// The address is allocated (or no longer held by the reservation the
    /// write adopts it from).
    AddressTaken(IpAddr),
    /// The holder of an allocated address is not the one read.
    HolderChanged(IpAddr),
    /// The project the object belongs to does not exist.
    ProjectMissing,
    /// The network the object belongs to does not exist.
    NetworkMissing,
    /// The host the object is on is not registered.
    HostMissing,
    /// A policy the object attaches does not exist.
    PolicyMissing(Uuid),
    /// The project still holds networks.
    ProjectHasNetworks,
    /// The project still holds policies.
    ProjectHasPolicies,
    /// The network still holds endpoints.
    NetworkHasEndpoints,
    /// The network changed since it was read.
    NetworkChanged,
    /// The endpoint changed since it was read.
    EndpointChanged,
    /// The policy's header changed since it was read.
    PolicyChanged,
    /// A chunk of the policy's rules changed since it was read.
    ChunkChanged,
    /// The key of a new chunk of rules is already taken.
    ChunkTaken,
    /// Another host registered the underlay address.
    UnderlayTaken,
    /// The host's registration changed since it was read.
    HostChanged,
    /// The host port is published for another endpoint.
    PortTaken(u16),
    /// The floating IP changed since it was read.
    FloatingIpChanged,
    /// The external network still holds floating IPs.
    NetworkHasFloatingIps,
    /// Networks are still source-NATed through the external network.
    NetworkHasSnatUsers,
    /// Services still name the network.
    NetworkHasServices,
    /// Services are still made from the template.
    TemplateHasServices,
    /// The service template does not exist.
    TemplateMissing,
    /// The service still has instances.
    ServiceHasInstances,
    /// The service does not exist.
    ServiceMissing,
}

/// What a [`GuardedTxn`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Every guard held; the ops were applied.
    Committed,
    /// Nothing was applied: the first guard, in the order they were added,
    /// that did not hold.
    Refused(Guard),
}

impl Outcome {
    pub(super) fn is_committed(&self) -> bool {
        matches!(self, Outcome::Committed)
    }
}

/// A store transaction whose compares each carry their [`Guard`]. It has
/// no failure branch: a refused write changes nothing.
#[derive(Debug, Default)]
pub(super) struct GuardedTxn {
    txn: Txn,
    /// In step with `txn.compares`: `guards[i]` is what `compares[i]` guards.
    guards: Vec<Guard>,
}

impl GuardedTxn {
    /// A write with no guards: it always commits.
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Adds `compare`, which must hold for the write to apply; when it does
    /// not, the write is refused with `guard`.
    pub(super) fn guard(mut self, guard: Guard, compare: Compare) -> Self {
        self.txn = self.txn.when(compare);
        self.guards.push(guard);
        self
    }

    /// Adds an op, applied when every guard holds.
    pub(super) fn then(mut self, op: Op) -> Self {
        self.txn = self.txn.then(op);
        self
    }

    /// Adds ops, in order, applied when every guard holds.
    pub(super) fn then_all(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.txn = self.txn.then_all(ops);
        self
    }

    /// Evaluates the write atomically on `store`.
    ///
    /// The store reports the compares that did not hold by their index; a
    /// refusal that names none breaks the store's contract and is an error.
    pub(super) async fn commit(self, store: &dyn Store) -> Result<Outcome> {
        let GuardedTxn { txn, guards } = self;
        let r = store.txn(txn).await?;
        if r.succeeded {
            return Ok(Outcome::Committed);
        }
        match r.failed.first().and_then(|&i| guards.into_iter().nth(i)) {
            Some(guard) => Ok(Outcome::Refused(guard)),
            None => Err(StoreError::backend("report which compare failed", "a refused transaction named no compare").into()),
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("model types always serialise")
}

pub(super) fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt { key: kv.key.clone(), reason: e.to_string() })
}

pub(super) fn put<T: Serialize>(key: String, v: &T) -> Op {
    Op::Put { key, value: encode(v) }
}

pub(super) fn put_str(key: String, v: &str) -> Op {
    Op::Put { key, value: v.as_bytes().to_vec() }
}

pub(super) fn del(key: String) -> Op {
    Op::Delete { key }
}

/// The UUID an index key holds.
pub(super) fn uuid_of(kv: &KeyValue) -> Result<Uuid> {
    std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Corrupt { key: kv.key.clone(), reason: "not a UUID".into() })
}
