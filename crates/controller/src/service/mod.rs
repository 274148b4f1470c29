//! The controller's operations: validation, reference checks and atomic
//! writes of objects with their uniqueness indexes.
//!
//! Every write is one store transaction whose compares guard what must hold
//! (a name is free, a referenced object exists, nothing changed since it was
//! read), so concurrent requests and several controllers on one store never
//! break an invariant. Each compare carries a named guard (`txn::Guard`), and
//! a refused write reports the guard that did not hold. Where one fails
//! because another request won a race for a generated value (a VNI, a MAC,
//! an address), the operation picks again and retries.
//!
//! One module per resource, each with its request validation at the top and
//! its `impl Controller` block below: `projects`, `networks`, `endpoints`,
//! `hosts` (and their gateways' `leases`), `policies`, `reservations`, `seen_networks` and `allocations` (what address picks know of networks and their allocations), `floating_ips` (and SNAT), `services` (templates, services, their instances and the chains of rules), `cluster` (the store's identity), and `members` (several controllers on one store: registration, election, leases across controllers; its pure decisions in `peers`). They share `controller` (the
//! [`Controller`] value and its read, commit and allocation helpers) and
//! `txn` (guarded transactions, retries and encoding). This file only
//! declares the modules and re-exports their public types; none of them
//! refers to it.

mod allocations;
mod claims;
mod cluster;
mod controller;
mod endpoints;
mod floating_ips;
mod flow_store;
mod flows;
mod hosts;
mod leases;
mod members;
mod networks;
mod peers;
mod policies;
mod ports;
mod projects;
mod reservations;
mod seen_networks;
mod services;
mod tokens;
mod txn;

pub use controller::{Controller, Created};
pub use endpoints::EndpointFilter;
pub use flow_store::DEFAULT_FLOW_RECORDS;
pub use flows::{visible, FlowFilter, TopBy, TopEntry, TopParams};
pub use leases::{LEASE_TIME, REAP_EVERY};
pub use members::Peer;
pub use networks::{Allocation, NetworkIpam, SubnetUsage};
pub use peers::{ControllerRecord, HEARTBEAT_EVERY, LEADER_TTL, REGISTRATION_TTL};
pub use projects::{Project, ProjectCreate};
