//! Several controllers on one store, the pure part: what a controller
//! records about itself (`/tessera/controllers/<id>`), the leader key
//! (`/tessera/leader`), how long a key has been seen unchanged, and the
//! election's decision.
//!
//! The store has no time-to-live, so liveness is judged as etcd's and
//! Kubernetes' lease holders are: a record is alive while its
//! `mod_revision` keeps changing. Each controller measures, on its own
//! monotonic clock, how long it has seen a key at one revision; clocks of
//! different machines are never compared.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How often a controller rewrites its registration when nothing changed.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A registration not rewritten for this long is of a dead controller.
pub const REGISTRATION_TTL: Duration = Duration::from_secs(6);
/// A leader key not renewed for this long may be taken by another.
pub const LEADER_TTL: Duration = Duration::from_secs(3);
/// How often the leader renews its key, and others look at it.
pub const LEADER_RENEW_EVERY: Duration = Duration::from_secs(1);
/// The leader stops acting as leader this long before its key could be
/// taken (measured from when it sent the write that renewed it).
pub const LEADER_MARGIN: Duration = Duration::from_millis(500);

/// A controller's registration, `/tessera/controllers/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ControllerRecord {
    pub id: Uuid,
    /// Where other controllers and operators reach it (`--advertise-url`).
    pub url: Option<String>,
    pub version: String,
    /// When it started and last wrote this record (Unix milliseconds, its
    /// own clock: for people; liveness is judged by revisions).
    pub started_ms: u64,
    pub heartbeat_ms: u64,
    /// The hosts whose leases it saw renewed within the lease time: the
    /// leader ends none of these.
    pub leases: BTreeSet<String>,
}

/// The leader key, `/tessera/leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub holder: Uuid,
    /// When the holder took it (Unix milliseconds, its own clock).
    pub since_ms: u64,
}

/// What a controller knows of its peers and of the election.
#[derive(Debug, Default)]
pub struct Members {
    pub ages: Ages,
    /// The mod revision of this controller's registration as last written.
    pub my_revision: u64,
    /// The hosts the last written registration names.
    pub published: Option<BTreeSet<String>>,
    pub last_heartbeat: Option<Instant>,
    pub last_election: Option<Instant>,
    /// Until when this controller acts as leader.
    pub leader_until: Option<Instant>,
    /// When it took the leader key (Unix milliseconds, its own clock).
    pub since_ms: u64,
}

/// How long each key has been seen at its current revision.
#[derive(Debug, Default)]
pub struct Ages {
    seen: HashMap<String, (u64, Instant)>,
}

impl Ages {
    /// Records that `key` is at `revision` at `now`; returns how long it
    /// has been seen at that revision (zero when first seen or changed).
    pub fn observe(&mut self, key: &str, revision: u64, now: Instant) -> Duration {
        match self.seen.get(key) {
            Some((r, since)) if *r == revision => now.saturating_duration_since(*since),
            _ => {
                self.seen.insert(key.to_string(), (revision, now));
                Duration::ZERO
            }
        }
    }

    /// Forgets the keys `keep` refuses (gone from the store).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.seen.retain(|k, _| keep(k));
    }
}

/// What a controller does about the leader key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderStep {
    /// It holds the key: renew it (compare on this mod revision).
    Renew(u64),
    /// The key is absent (0) or its holder stopped renewing it: take it
    /// (compare on this mod revision).
    Take(u64),
    /// Another holds it and renews it.
    Follow,
}

/// The election's decision for controller `me`, given the leader key
/// (`holder` and its mod revision, `None` when absent) and how long this
/// controller has seen it unchanged.
pub fn leader_step(me: Uuid, key: Option<(Uuid, u64)>, unchanged_for: Duration) -> LeaderStep {
    match key {
        None => LeaderStep::Take(0),
        Some((holder, rev)) if holder == me => LeaderStep::Renew(rev),
        Some((_, rev)) if unchanged_for >= LEADER_TTL => LeaderStep::Take(rev),
        Some(_) => LeaderStep::Follow,
    }
}

/// The hosts renewed within `lease_time` of `now`, by their last renewal.
pub fn held_leases(renewed: &HashMap<String, Instant>, now: Instant, lease_time: Duration) -> BTreeSet<String> {
    renewed.iter().filter(|(_, at)| now.saturating_duration_since(**at) <= lease_time).map(|(h, _)| h.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_ages_while_its_revision_stays_and_is_young_again_when_it_changes() {
        let t0 = Instant::now();
        let mut a = Ages::default();
        assert_eq!(a.observe("k", 5, t0), Duration::ZERO);
        assert_eq!(a.observe("k", 5, t0 + Duration::from_secs(2)), Duration::from_secs(2));
        assert_eq!(a.observe("k", 6, t0 + Duration::from_secs(3)), Duration::ZERO);
        assert_eq!(a.observe("k", 6, t0 + Duration::from_secs(4)), Duration::from_secs(1));
        a.retain(|k| k != "k");
        assert_eq!(a.observe("k", 6, t0 + Duration::from_secs(5)), Duration::ZERO);
    }

    #[test]
    fn an_absent_leader_key_is_taken() {
        assert_eq!(leader_step(Uuid::from_u128(1), None, Duration::ZERO), LeaderStep::Take(0));
    }

    #[test]
    fn the_holder_renews_at_the_revision_it_saw() {
        let me = Uuid::from_u128(1);
        assert_eq!(leader_step(me, Some((me, 7)), Duration::from_secs(60)), LeaderStep::Renew(7));
    }

    #[test]
    fn another_holder_is_followed_until_its_key_stays_unchanged_for_the_ttl() {
        let (me, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(leader_step(me, Some((other, 7)), LEADER_TTL - Duration::from_millis(1)), LeaderStep::Follow);
        assert_eq!(leader_step(me, Some((other, 7)), LEADER_TTL), LeaderStep::Take(7));
    }

    #[test]
    fn a_leader_stops_acting_before_another_may_take_its_key() {
        assert!(LEADER_MARGIN < LEADER_TTL && LEADER_RENEW_EVERY + LEADER_MARGIN < LEADER_TTL);
    }

    #[test]
    fn held_leases_are_those_renewed_within_the_lease_time() {
        let now = Instant::now() + Duration::from_secs(10);
        let renewed = HashMap::from([
            ("fresh".to_string(), now - Duration::from_millis(100)),
            ("stale".to_string(), now - Duration::from_secs(2)),
        ]);
        assert_eq!(held_leases(&renewed, now, Duration::from_millis(1500)), BTreeSet::from(["fresh".to_string()]));
    }
}
