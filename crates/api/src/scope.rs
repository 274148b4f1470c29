//! What of the fabric a mirror asks its controller for.
//!
//! A host programs only the networks it holds endpoints of (and those they
//! import, and its service chains' networks): it asks for those networks'
//! endpoints and its own, and gets every other object (networks, hosts,
//! policies, floating IPs, services) whole, from which it computes what it
//! needs. A scope too large for one request ([`MAX_NETWORKS`]) asks for
//! everything.

use std::collections::BTreeSet;

use uuid::Uuid;

/// The most networks a scope names (the controller's limit); a host that
/// needs more receives every endpoint.
pub const MAX_NETWORKS: usize = 1024;

/// Which endpoints a mirror receives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every endpoint of the fabric (a gateway host, a plugin, a tool).
    #[default]
    Everything,
    /// The endpoints of these networks and the host's own.
    Networks(BTreeSet<Uuid>),
}

impl Scope {
    /// The scope of `networks`: [`Scope::Everything`] when they are more
    /// than [`MAX_NETWORKS`].
    pub fn of(networks: BTreeSet<Uuid>) -> Scope {
        if networks.len() > MAX_NETWORKS {
            Scope::Everything
        } else {
            Scope::Networks(networks)
        }
    }

    /// Only the host's own endpoints.
    pub fn own() -> Scope {
        Scope::Networks(BTreeSet::new())
    }

    /// Whether a mirror of this scope holds everything `other` needs.
    pub fn covers(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::Everything, _) => true,
            (Scope::Networks(_), Scope::Everything) => false,
            (Scope::Networks(mine), Scope::Networks(theirs)) => theirs.is_subset(mine),
        }
    }

    /// The query parameter that asks for it (`networks=ID,ID`), if any.
    pub fn query(&self) -> Option<String> {
        match self {
            Scope::Everything => None,
            Scope::Networks(ids) => Some(format!("networks={}", ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(","))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(ids: &[u128]) -> Scope {
        Scope::Networks(ids.iter().map(|i| Uuid::from_u128(*i)).collect())
    }

    #[test]
    fn a_scope_covers_its_subsets_and_everything_covers_all() {
        assert!(nets(&[1, 2]).covers(&nets(&[1])));
        assert!(nets(&[1]).covers(&Scope::own()));
        assert!(!nets(&[1]).covers(&nets(&[1, 2])));
        assert!(!nets(&[1]).covers(&Scope::Everything));
        assert!(Scope::Everything.covers(&nets(&[1])));
    }

    #[test]
    fn too_many_networks_ask_for_everything() {
        let many: BTreeSet<Uuid> = (0..=MAX_NETWORKS as u128).map(Uuid::from_u128).collect();
        assert_eq!(Scope::of(many), Scope::Everything);
        assert_eq!(Scope::own().query().as_deref(), Some("networks="));
        assert_eq!(Scope::Everything.query(), None);
        assert_eq!(nets(&[1]).query().unwrap(), format!("networks={}", Uuid::from_u128(1)));
    }
}
