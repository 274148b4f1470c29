//! An in-memory allocator for one subnet, keyed by owner.
//!
//! [`Allocator`] combines a [`SubnetLayout`] with the map of allocated
//! addresses. It follows the crate's lowest-free policy: a dynamic allocation
//! always gets the lowest allocatable address that is free, so a released
//! address is the first to be reused.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::addr::addr_to_u128;
use crate::error::IpamError;
use crate::layout::{Subnet, SubnetLayout};

/// Allocates addresses of one subnet to owners (e.g. container endpoints).
///
/// Invariants: an address is held by at most one owner, and every held
/// address is allocatable in the layout (inside the subnet, inside a pool, not
/// reserved). An owner may hold several addresses (through static requests).
#[derive(Debug, Clone)]
pub struct Allocator<O> {
    layout: SubnetLayout,
    by_addr: BTreeMap<IpAddr, O>,
    by_owner: BTreeMap<O, BTreeSet<IpAddr>>,
    /// Every allocatable value below this one is allocated, so the search for
    /// a free address may start here. Lowered on release.
    search_from: u128,
}

impl<O: Ord + Clone> Allocator<O> {
    /// An allocator for `layout` with nothing allocated.
    pub fn new(layout: SubnetLayout) -> Self {
        Allocator { layout, by_addr: BTreeMap::new(), by_owner: BTreeMap::new(), search_from: 0 }
    }

    /// The layout this allocator hands addresses out from.
    pub fn layout(&self) -> &SubnetLayout {
        &self.layout
    }

    /// Gives `owner` an address: the lowest allocatable address that is free.
    ///
    /// Idempotent: if `owner` already holds an address in this subnet, that
    /// same address (its lowest, if it holds several) is returned and nothing
    /// changes, so a retried request never gets a second address.
    /// [`IpamError::Exhausted`] when no address is left.
    ///
    /// Consecutive allocations cost amortised O(1) plus O(pools); an
    /// allocation after a release scans forward from the released address.
    pub fn allocate(&mut self, owner: O) -> Result<IpAddr, IpamError> {
        if let Some(&held) = self.by_owner.get(&owner).and_then(|held| held.first()) {
            return Ok(held);
        }
        let subnet = Subnet::of(self.layout.cidr);
        let from = subnet.addr(self.search_from);
        let allocated = self
            .by_addr
            .range(from..)
            .map(|(&addr, _)| addr)
            .filter(|addr| addr.is_ipv6() == self.layout.is_ipv6())
            .map(addr_to_u128);
        let free = self.layout.lowest_free_from(&subnet, self.search_from, allocated).ok_or_else(|| self.layout.exhausted())?;
        // Everything allocatable up to and including `free` is now taken.
        self.search_from = free.saturating_add(1);
        let addr = subnet.addr(free);
        self.insert(owner, addr);
        Ok(addr)
    }

    /// Gives `owner` the specific address `addr`.
    ///
    /// `Ok(addr)` if `addr` is allocatable and free, or already held by
    /// `owner` (idempotent). [`IpamError::InUse`] if another owner holds it;
    /// otherwise the error of [`SubnetLayout::is_allocatable`]
    /// (`FamilyMismatch`, `OutsideSubnet`, `Reserved`, `OutsidePools`).
    /// The address is added to those `owner` already holds.
    pub fn allocate_static(&mut self, owner: O, addr: IpAddr) -> Result<IpAddr, IpamError> {
        self.layout.is_allocatable(addr)?;
        match self.by_addr.get(&addr) {
            Some(holder) if *holder == owner => Ok(addr),
            Some(_) => Err(IpamError::InUse { addr }),
            None => {
                self.insert(owner, addr);
                Ok(addr)
            }
        }
    }

    /// Releases every address held by `owner` and returns them, ascending.
    /// Releasing an owner that holds nothing is fine and returns nothing.
    pub fn release(&mut self, owner: &O) -> Vec<IpAddr> {
        let released: Vec<IpAddr> = self.by_owner.remove(owner).map(|held| held.into_iter().collect()).unwrap_or_default();
        for addr in &released {
            self.by_addr.remove(addr);
            self.search_from = self.search_from.min(addr_to_u128(*addr));
        }
        released
    }

    /// The owner holding `addr`, if any.
    pub fn owner_of(&self, addr: IpAddr) -> Option<&O> {
        self.by_addr.get(&addr)
    }

    /// The addresses held by `owner`, ascending.
    pub fn addresses_of(&self, owner: &O) -> impl Iterator<Item = IpAddr> + '_ {
        self.by_owner.get(owner).into_iter().flatten().copied()
    }

    /// Every allocated address with its owner, in ascending address order.
    pub fn allocated(&self) -> impl Iterator<Item = (IpAddr, &O)> {
        self.by_addr.iter().map(|(&addr, owner)| (addr, owner))
    }

    /// Number of allocated addresses.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// Records `addr` as held by `owner`; `addr` must be free.
    fn insert(&mut self, owner: O, addr: IpAddr) {
        self.by_owner.entry(owner.clone()).or_default().insert(addr);
        self.by_addr.insert(addr, owner);
    }
}
