//! The wire types agents use to mirror the controller's state: a snapshot at
//! a revision, then a stream of changes after it.

use serde::{Deserialize, Serialize};

use crate::{Endpoint, Host, Network, Policy};

/// Everything agents mirror, consistent at `revision`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub revision: u64,
    pub networks: Vec<Network>,
    pub endpoints: Vec<Endpoint>,
    pub hosts: Vec<Host>,
    pub policies: Vec<Policy>,
}

/// One line of `GET /v1/watch` (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WatchEvent {
    /// An object was created or changed.
    Put { revision: u64, object: Object },
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
    Policy(Policy),
}

/// The identity of a deleted object: its type and its key (UUID or host name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

impl Snapshot {
    /// Applies one event; events at or below the snapshot's revision are ignored.
    pub fn apply(&mut self, ev: &WatchEvent) {
        match ev {
            WatchEvent::Put { revision, object } if *revision > self.revision => {
                self.revision = *revision;
                match object {
                    Object::Network(n) => upsert(&mut self.networks, n.clone(), |x| x.id == n.id),
                    Object::Endpoint(e) => upsert(&mut self.endpoints, e.clone(), |x| x.id == e.id),
                    Object::Host(h) => upsert(&mut self.hosts, h.clone(), |x| x.name == h.name),
                    Object::Policy(p) => upsert(&mut self.policies, p.clone(), |x| x.id == p.id),
                }
            }
            WatchEvent::Delete { revision, object } if *revision > self.revision => {
                self.revision = *revision;
                let id = object.id.as_str();
                match object.kind.as_str() {
                    "network" => self.networks.retain(|x| x.id.to_string() != id),
                    "endpoint" => self.endpoints.retain(|x| x.id.to_string() != id),
                    "host" => self.hosts.retain(|x| x.name != id),
                    "policy" => self.policies.retain(|x| x.id.to_string() != id),
                    _ => {}
                }
            }
            WatchEvent::Progress { revision } if *revision > self.revision => self.revision = *revision,
            _ => {}
        }
    }
}

fn upsert<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool) {
    match list.iter_mut().find(|x| same(x)) {
        Some(slot) => *slot = item,
        None => list.push(item),
    }
}
