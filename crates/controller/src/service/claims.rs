//! Addresses being allocated in this process. Requests that create
//! endpoints in one network at once pick different addresses without
//! waiting for each other: each claims the address it picked until its
//! transaction is decided. The store's compares still decide (and guard
//! against other controllers); claims only keep concurrent requests from
//! colliding. (A request that read the allocations just before another's
//! commit may still pick that address once its claim is gone: its compare
//! fails and it picks again.)

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use uuid::Uuid;

/// Per network, the claimed addresses.
#[derive(Default)]
pub(super) struct AddressClaims(Mutex<HashMap<Uuid, BTreeSet<IpAddr>>>);

impl AddressClaims {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, BTreeSet<IpAddr>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Picks an address with `pick`, given the addresses claimed in
    /// `network`, and claims it into `held`, atomically.
    pub(super) fn claim<E>(
        &self,
        network: Uuid,
        held: &mut Claimed<'_>,
        pick: impl FnOnce(&BTreeSet<IpAddr>) -> Result<IpAddr, E>,
    ) -> Result<IpAddr, E> {
        let mut all = self.lock();
        let mine = all.entry(network).or_default();
        let a = pick(mine)?;
        mine.insert(a);
        held.addrs.push(a);
        Ok(a)
    }

    fn release(&self, network: Uuid, addrs: &[IpAddr]) {
        let mut all = self.lock();
        let Some(mine) = all.get_mut(&network) else { return };
        for a in addrs {
            mine.remove(a);
        }
        if mine.is_empty() {
            all.remove(&network);
        }
    }
}

/// The addresses one request claimed; released when dropped.
pub(super) struct Claimed<'a> {
    claims: &'a AddressClaims,
    network: Uuid,
    addrs: Vec<IpAddr>,
}

impl<'a> Claimed<'a> {
    pub(super) fn new(claims: &'a AddressClaims, network: Uuid) -> Self {
        Claimed { claims, network, addrs: Vec::new() }
    }

    /// Gives back what was claimed so far (a new attempt picks again).
    pub(super) fn release(&mut self) {
        self.claims.release(self.network, &self.addrs);
        self.addrs.clear();
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lowest_free(claimed: &BTreeSet<IpAddr>) -> Result<IpAddr, ()> {
        (2..255).map(|i| IpAddr::from([10, 0, 0, i])).find(|a| !claimed.contains(a)).ok_or(())
    }

    #[test]
    fn concurrent_requests_pick_different_addresses_and_a_settled_one_gives_its_back() {
        let claims = AddressClaims::default();
        let net = Uuid::new_v4();
        let mut a = Claimed::new(&claims, net);
        let mut b = Claimed::new(&claims, net);
        assert_eq!(claims.claim(net, &mut a, lowest_free), Ok(IpAddr::from([10, 0, 0, 2])));
        assert_eq!(claims.claim(net, &mut b, lowest_free), Ok(IpAddr::from([10, 0, 0, 3])));
        drop(a);
        let mut c = Claimed::new(&claims, net);
        assert_eq!(claims.claim(net, &mut c, lowest_free), Ok(IpAddr::from([10, 0, 0, 2])));
        b.release();
        let mut d = Claimed::new(&claims, net);
        assert_eq!(claims.claim(net, &mut d, lowest_free), Ok(IpAddr::from([10, 0, 0, 3])));
        drop((c, d));
        assert!(claims.lock().is_empty(), "nothing stays claimed");
    }

    #[test]
    fn other_networks_do_not_share_claims() {
        let claims = AddressClaims::default();
        let (n1, n2) = (Uuid::new_v4(), Uuid::new_v4());
        let mut a = Claimed::new(&claims, n1);
        let mut b = Claimed::new(&claims, n2);
        assert_eq!(claims.claim(n1, &mut a, lowest_free), claims.claim(n2, &mut b, lowest_free));
    }
}
