//! Leases: how the fabric knows which gateway hosts are alive. The agent of
//! a gateway renews its host's lease every half second; a lease not renewed
//! for [`LEASE_TIME`] ends. Each controller keeps the renewal times in
//! memory and writes only the changes (a host's `alive` turning on or off)
//! to the store, so every agent sees them through its watch and moves the
//! networks of a gateway that went away to the others. With several
//! controllers, a host may renew on any: each names the hosts it holds in
//! its registration, and the leader ends only leases no live controller
//! holds (see `members`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tessera_model::Host;
use tessera_store::Compare;

use super::controller::Controller;
use super::txn::{put, Guard, GuardedTxn, MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::keys;

/// How long a lease lasts without renewal.
pub const LEASE_TIME: Duration = Duration::from_millis(1500);

/// How often expired leases are looked for.
pub const REAP_EVERY: Duration = Duration::from_millis(200);

impl Controller {
    /// Records `host` as alive or not; a no-op when it already is.
    pub(super) async fn set_alive(&self, host: &str, alive: bool) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let (mut h, rev) = self.get_json::<Host>(&keys::host(host)).await?.ok_or_else(|| Error::not_found("host", host))?;
            if h.alive == alive {
                return Ok(());
            }
            h.alive = alive;
            let txn = GuardedTxn::new()
                .guard(Guard::HostChanged, Compare::ModRevision(keys::host(host), rev))
                .then(put(keys::host(host), &h));
            if self.commit(txn).await?.is_committed() {
                tracing::info!(host, alive, "host lease {}", if alive { "taken" } else { "ended" });
                return Ok(());
            }
        }
        Err(Error::Conflict(format!("host {host}")))
    }

    /// Ends the leases renewed neither here within [`LEASE_TIME`] nor at
    /// another live controller (`held_elsewhere`: the hosts their
    /// registrations name). A lease recorded before this controller started
    /// gets one lease time from the start. Only the leader calls it (see
    /// `members`).
    pub async fn reap_leases(&self, held_elsewhere: &BTreeSet<String>) -> Result<()> {
        let now = Instant::now();
        let hosts: Vec<Host> = self.list_json(keys::HOSTS).await?;
        for h in hosts.into_iter().filter(|h| h.alive && !held_elsewhere.contains(&h.name)) {
            let last = self.leases.lock().unwrap_or_else(|p| p.into_inner()).get(&h.name).copied().unwrap_or(self.started);
            if now.duration_since(last) > LEASE_TIME {
                self.leases.lock().unwrap_or_else(|p| p.into_inner()).remove(&h.name);
                self.set_alive(&h.name, false).await?;
            }
        }
        Ok(())
    }
}
