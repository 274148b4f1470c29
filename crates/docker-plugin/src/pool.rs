//! The IPAM side that needs no controller (pure): pool identifiers, the
//! gateway Docker asks for before the network exists, and this host's
//! registry of pools in use.
//!
//! Docker asks for a network's pools and gateways *before* it calls
//! `CreateNetwork`, and names only the pool afterwards (`RequestAddress`
//! carries a `PoolID`, not a network). So a pool ID is the subnet itself,
//! `tessera/<cidr>`, and one dockerd may use a subnet in one network only:
//! the registry refuses a pool that overlaps one in use, as Docker's own
//! IPAM does. (Tessera networks may overlap each other; two such networks
//! just cannot both be in one host's dockerd.)

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use tessera_ipam::SubnetLayout;

/// `tessera/<cidr>`: a pool of this plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolId(pub IpNet);

const POOL_PREFIX: &str = "tessera/";

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{POOL_PREFIX}{}", self.0)
    }
}

impl FromStr for PoolId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let cidr = s.strip_prefix(POOL_PREFIX).ok_or_else(|| format!("{s:?} is not a pool of the tessera IPAM driver"))?;
        let net: IpNet = cidr.parse().map_err(|_| format!("{s:?} is not a pool of the tessera IPAM driver"))?;
        Ok(PoolId(net))
    }
}

/// The gateway of a pool (with the pool's prefix length): the requested one,
/// else the subnet's first usable address, as Tessera's IPAM would choose.
pub fn gateway(pool: IpNet, requested: Option<IpAddr>) -> Result<IpNet, String> {
    let gw = match requested {
        Some(g) => g,
        None => default_gateway(pool).ok_or_else(|| format!("subnet {pool} is too small to hold a gateway"))?,
    };
    SubnetLayout::new(pool, Some(gw), Vec::new()).map_err(|e| format!("--gateway {gw}: {e}"))?;
    Ok(IpNet::new(gw, pool.prefix_len()).expect("prefix of a valid subnet"))
}

/// The first usable address of a subnet, Tessera's default gateway.
pub fn default_gateway(cidr: IpNet) -> Option<IpAddr> {
    tessera_ipam::default_gateway(cidr)
}

/// One pool in use on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEntry {
    /// `--ip-range`.
    pub ip_range: Option<IpNet>,
    /// The Docker network (ID) using the pool, once `CreateNetwork` named it.
    pub network: Option<String>,
    /// Its name, for messages, once known.
    pub name: Option<String>,
}

/// The pools this host's dockerd uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolRegistry {
    pools: BTreeMap<IpNet, PoolEntry>,
}

impl PoolRegistry {
    /// Takes a pool for a network being created. Requesting a pool already
    /// held by no network (Docker retrying) is Ok; one that overlaps a pool
    /// of a network is refused.
    pub fn request(&mut self, pool: IpNet, ip_range: Option<IpNet>, v6: bool) -> Result<PoolId, String> {
        if pool.trunc() != pool {
            return Err(format!("--subnet {pool} has host bits set; did you mean {}?", pool.trunc()));
        }
        if pool.addr().is_ipv6() != v6 {
            return Err(format!("--subnet {pool} is not an {} subnet", if v6 { "IPv6" } else { "IPv4" }));
        }
        if let Some(r) = ip_range {
            if !(pool.contains(&r.network()) && pool.contains(&r.broadcast())) {
                return Err(format!("--ip-range {r} is not inside --subnet {pool}"));
            }
        }
        if let Some((other, entry)) =
            self.pools.iter().find(|(o, _)| **o != pool && (o.contains(&pool.network()) || pool.contains(&o.network())))
        {
            let user =
                entry.name.as_deref().or(entry.network.as_deref()).map(|n| format!(" of Docker network {n}")).unwrap_or_default();
            return Err(format!("--subnet {pool} overlaps {other}{user} on this host"));
        }
        if let Some(entry) = self.pools.get(&pool) {
            if let Some(n) = entry.name.as_ref().or(entry.network.as_ref()) {
                return Err(format!("--subnet {pool} is already used by Docker network {n} on this host"));
            }
        }
        self.pools.insert(pool, PoolEntry { ip_range, network: None, name: None });
        Ok(PoolId(pool))
    }

    /// Records that `network` (a Docker network ID; `name`, when known) uses
    /// `pool` (at `CreateNetwork`, or when the plugin learns Docker's networks
    /// at start).
    pub fn bind(&mut self, pool: IpNet, ip_range: Option<IpNet>, network: &str, name: Option<&str>) {
        let entry = self.pools.entry(pool).or_insert(PoolEntry { ip_range, network: None, name: None });
        entry.network = Some(network.to_string());
        if name.is_some() {
            entry.name = name.map(str::to_string);
        }
        if entry.ip_range.is_none() {
            entry.ip_range = ip_range;
        }
    }

    /// Gives a pool back. Releasing what is not held is Ok.
    pub fn release(&mut self, id: PoolId) {
        self.pools.remove(&id.0);
    }

    pub fn get(&self, pool: IpNet) -> Option<&PoolEntry> {
        self.pools.get(&pool)
    }

    /// The Docker network using a pool.
    pub fn network_of(&self, pool: IpNet) -> Option<&str> {
        self.pools.get(&pool).and_then(|e| e.network.as_deref())
    }

    /// Forgets every pool of a Docker network.
    pub fn unbind_network(&mut self, network: &str) {
        self.pools.retain(|_, e| e.network.as_deref() != Some(network));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn pool_ids_round_trip_for_both_families() {
        for cidr in ["192.168.4.0/24", "2002:1::/64"] {
            let id = PoolId(net(cidr));
            assert_eq!(id.to_string().parse::<PoolId>().unwrap(), id);
        }
        assert!("default/10.0.0.0/8".parse::<PoolId>().is_err());
        assert!("tessera/banana".parse::<PoolId>().is_err());
    }

    #[test]
    fn gateway_is_the_requested_one_or_the_first_usable_address() {
        assert_eq!(gateway(net("192.168.4.0/24"), None).unwrap().to_string(), "192.168.4.1/24");
        assert_eq!(gateway(net("2002:1::/64"), None).unwrap().to_string(), "2002:1::1/64");
        let chosen = gateway(net("192.168.4.0/24"), Some("192.168.4.254".parse().unwrap())).unwrap();
        assert_eq!(chosen.to_string(), "192.168.4.254/24");
        assert!(gateway(net("192.168.4.0/24"), Some("10.0.0.1".parse().unwrap())).unwrap_err().contains("outside"));
        assert!(gateway(net("192.168.4.0/24"), Some("192.168.4.255".parse().unwrap())).is_err());
    }

    #[test]
    fn overlapping_pools_on_one_host_are_refused() {
        let mut r = PoolRegistry::default();
        r.request(net("10.0.0.0/16"), None, false).unwrap();
        r.bind(net("10.0.0.0/16"), None, "0123abcd", Some("net-a"));
        let e = r.request(net("10.0.5.0/24"), None, false).unwrap_err();
        assert!(e.contains("overlaps 10.0.0.0/16 of Docker network net-a"), "{e}");
        let e = r.request(net("10.0.0.0/16"), None, false).unwrap_err();
        assert!(e.contains("already used by Docker network net-a"), "{e}");
        r.request(net("10.1.0.0/16"), None, false).unwrap();
    }

    #[test]
    fn a_pool_not_yet_bound_may_be_requested_again() {
        let mut r = PoolRegistry::default();
        let a = r.request(net("10.0.0.0/24"), None, false).unwrap();
        assert_eq!(r.request(net("10.0.0.0/24"), None, false).unwrap(), a);
        r.release(a);
        assert!(r.get(net("10.0.0.0/24")).is_none());
    }

    #[test]
    fn malformed_pools_are_refused() {
        let mut r = PoolRegistry::default();
        assert!(r.request(net("10.0.0.5/24"), None, false).unwrap_err().contains("host bits"));
        assert!(r.request(net("2002:1::/64"), None, false).unwrap_err().contains("not an IPv4"));
        assert!(r.request(net("10.0.0.0/24"), Some(net("10.0.1.0/25")), false).unwrap_err().contains("--ip-range"));
    }

    #[test]
    fn unbinding_a_network_frees_its_pools() {
        let mut r = PoolRegistry::default();
        r.bind(net("10.0.0.0/24"), None, "n1", None);
        r.bind(net("fd00::/64"), None, "n1", None);
        assert_eq!(r.network_of(net("fd00::/64")), Some("n1"));
        r.unbind_network("n1");
        assert!(r.request(net("10.0.0.0/24"), None, false).is_ok());
    }
}
