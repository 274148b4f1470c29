//! Reservations: addresses of a network held for an owner token before any
//! endpoint exists (an endpoint made from the reservation adopts them, and
//! gives them back when it is deleted). They live in the IPAM allocations
//! as `reservation:<owner>`.

use std::net::IpAddr;

use ipnet::IpNet;
use tessera_model::reservation::{check_owner, reservation_owner, RESERVATION_OWNER_PREFIX};
use tessera_model::{FieldError, Network, Reservation, ReservationCreate};
use tessera_store::Compare;

use super::controller::{Controller, Created};
use super::txn::{del, put_str, Guard, GuardedTxn, Outcome, MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::keys;

// ---------------------------------------------------------------- validation

/// A [`ReservationCreate`] checked against its network (its `owner` is
/// checked before the network is looked up).
struct CheckedReserve {
    /// The address asked for, if any.
    chosen: Option<IpAddr>,
    /// The allocation owner to take `chosen` over from, if any.
    take_over: Option<String>,
    /// The index of the subnet to reserve in, in `net.subnets`.
    index: usize,
}

fn validate_reserve(req: &ReservationCreate, net: &Network) -> Result<CheckedReserve> {
    let chosen: Option<IpAddr> = match req.address.as_deref().map(str::trim) {
        Some(a) if !a.is_empty() => Some(
            a.split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|_| FieldError::new("address", format!("{a:?} is not an IP address")))?,
        ),
        _ => None,
    };
    let take_over = match &req.from {
        Some(from) => {
            check_owner("from", from)?;
            if chosen.is_none() {
                return Err(FieldError::new("address", "taking a reservation over needs its address").into());
            }
            Some(reservation_owner(from))
        }
        None => None,
    };
    let wanted_subnet: Option<IpNet> = match req.subnet.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Some(tessera_model::network::parse_cidr("subnet", s)?),
        _ => None,
    };
    let index = match (chosen, wanted_subnet) {
        (Some(a), _) => {
            let (i, s) = net
                .subnet_of(a)
                .ok_or_else(|| FieldError::new("address", format!("{a} is in no subnet of network {}", net.fq_name)))?;
            if let Some(w) = wanted_subnet.filter(|w| *w != s.cidr) {
                return Err(FieldError::new("address", format!("{a} is not in subnet {w}")).into());
            }
            let plan = s.layout().map_err(|e| FieldError::new("address", e.to_string()))?;
            plan.is_allocatable(a).map_err(|e| FieldError::new("address", e.to_string()))?;
            i
        }
        (None, Some(w)) => net
            .subnets
            .iter()
            .position(|s| s.cidr == w)
            .ok_or_else(|| FieldError::new("subnet", format!("{w} is not a subnet of network {}", net.fq_name)))?,
        (None, None) => return Err(FieldError::new("subnet", "name a subnet or an address to reserve").into()),
    };
    Ok(CheckedReserve { chosen, take_over, index })
}

/// The address of a release request, after checking it and its optional owner.
fn validate_release(address: &str, owner: Option<&str>) -> Result<IpAddr> {
    let addr: IpAddr =
        address.trim().parse().map_err(|_| FieldError::new("address", format!("{address:?} is not an IP address")))?;
    if let Some(o) = owner {
        check_owner("owner", o)?;
    }
    Ok(addr)
}

// ---------------------------------------------------------------- operations

impl Controller {
    /// Reserves an address of a network for `owner`: the chosen one, or the
    /// lowest free one of a subnet. Retry-safe: when the owner already holds
    /// the chosen address (or, without a chosen one, any address of the
    /// subnet), that reservation is returned with `created: false`.
    pub async fn reserve_address(&self, reference: &str, req: ReservationCreate) -> Result<Created<Reservation>> {
        check_owner("owner", &req.owner)?;
        let (net, _) = self.find_network(reference).await?;
        let CheckedReserve { chosen, take_over, index } = validate_reserve(&req, &net)?;
        let subnet = net.subnets[index].clone();
        let owner = reservation_owner(&req.owner);
        let reservation = |address| Reservation { network: net.id, subnet: subnet.cidr, address, owner: req.owner.clone() };

        let lock = self.ipam_lock(net.id);
        let _guard = lock.lock().await;
        for _ in 0..MAX_ATTEMPTS {
            let prefix = keys::allocations_of(net.id, index);
            let address = match chosen {
                Some(a) => {
                    if let Some(kv) = self.store.get(&keys::allocation(net.id, index, a)).await? {
                        if kv.value == owner.as_bytes() {
                            return Ok(Created { object: reservation(a), created: false });
                        }
                        if take_over.as_ref().is_some_and(|from| kv.value == from.as_bytes()) {
                            let key = keys::allocation(net.id, index, a);
                            let txn = GuardedTxn::new()
                                .guard(Guard::HolderChanged(a), Compare::ValueEquals(key.clone(), kv.value))
                                .then(put_str(key, &owner));
                            if self.commit(txn).await?.is_committed() {
                                return Ok(Created { object: reservation(a), created: true });
                            }
                            // Guard::HolderChanged: read the holder again.
                            continue;
                        }
                        return Err(Error::AlreadyExists {
                            what: format!("address {a} is already in use in network {}", net.fq_name),
                            field: Some("address".into()),
                        });
                    }
                    a
                }
                None => {
                    let held = self.store.range(&prefix).await?.kvs.into_iter().find(|kv| kv.value == owner.as_bytes());
                    if let Some(a) = held.and_then(|kv| tessera_ipam::parse_sort_key(&kv.key[prefix.len()..])) {
                        return Ok(Created { object: reservation(a), created: false });
                    }
                    self.allocate_in(net.id, &[(index, &subnet)]).await?.1
                }
            };
            let key = keys::allocation(net.id, index, address);
            let txn = GuardedTxn::new()
                .guard(Guard::NetworkMissing, Compare::Exists(keys::network(net.id)))
                .guard(Guard::AddressTaken(address), Compare::Absent(key.clone()))
                .then(put_str(key, &owner));
            match self.commit(txn).await? {
                Outcome::Committed => {
                    tracing::info!(network = %net.fq_name, address = %address, owner = %req.owner, "address reserved");
                    return Ok(Created { object: reservation(address), created: true });
                }
                Outcome::Refused(Guard::NetworkMissing) => {
                    return Err(Error::NotFound { kind: "network", name: reference.into(), field: None })
                }
                // Guard::AddressTaken: taken since it was read; read again.
                Outcome::Refused(_) => continue,
            }
        }
        Err(Error::Conflict(format!("reservation in network {}", net.fq_name)))
    }

    /// The reserved (not yet adopted) addresses of a network.
    pub async fn list_reservations(&self, reference: &str) -> Result<Vec<Reservation>> {
        let (net, _) = self.find_network(reference).await?;
        let mut out = Vec::new();
        for (i, s) in net.subnets.iter().enumerate() {
            let prefix = keys::allocations_of(net.id, i);
            for kv in self.store.range(&prefix).await?.kvs {
                let Some(owner) = std::str::from_utf8(&kv.value).ok().and_then(|v| v.strip_prefix(RESERVATION_OWNER_PREFIX))
                else {
                    continue;
                };
                if let Some(address) = tessera_ipam::parse_sort_key(&kv.key[prefix.len()..]) {
                    out.push(Reservation { network: net.id, subnet: s.cidr, address, owner: owner.to_string() });
                }
            }
        }
        Ok(out)
    }

    /// Releases a reserved address, only if `owner` (when given) holds it.
    /// Releasing an address that is free, or a network that is gone, is Ok;
    /// an address an endpoint holds (or another owner reserved) is `in_use`.
    pub async fn release_reservation(&self, reference: &str, address: &str, owner: Option<&str>) -> Result<()> {
        let addr = validate_release(address, owner)?;
        let net = match self.find_network(reference).await {
            Ok((n, _)) => n,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some((index, _)) = net.subnet_of(addr) else { return Ok(()) };
        let key = keys::allocation(net.id, index, addr);
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else { return Ok(()) };
            let holder = String::from_utf8_lossy(&kv.value).into_owned();
            let releasable = match owner {
                Some(o) => holder == reservation_owner(o),
                None => holder.starts_with(RESERVATION_OWNER_PREFIX),
            };
            if !releasable {
                return Err(Error::InUse { kind: "address", name: addr.to_string(), users: vec![holder] });
            }
            let txn = GuardedTxn::new()
                .guard(Guard::HolderChanged(addr), Compare::ValueEquals(key.clone(), kv.value))
                .then(del(key.clone()));
            // Refused (Guard::HolderChanged): read the holder again.
            if self.commit(txn).await?.is_committed() {
                tracing::info!(network = %net.fq_name, address = %addr, owner = %holder, "reservation released");
                return Ok(());
            }
        }
        Err(Error::Conflict(format!("reservation of {addr}")))
    }
}
