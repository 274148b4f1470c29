//! Docker's IPAM driver: pools (one per subnet, `tessera/<cidr>`) and
//! addresses (controller reservations, parked for a while when released so
//! a restarted container gets its address back).

use super::*;

impl Plugin {
    // ---------------------------------------------------------------- IPAM

    /// `IpamDriver.RequestPool`.
    pub fn request_pool(&self, pool: Option<IpNet>, sub_pool: Option<IpNet>, v6: bool) -> Result<(PoolId, IpNet)> {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let pool = pool.ok_or_else(|| {
            DriverError::Invalid(format!("the {PLUGIN_NAME} IPAM driver needs an {family} --subnet (it never picks one)"))
        })?;
        let id = self.state().pools.request(pool, sub_pool, v6).map_err(DriverError::Invalid)?;
        Ok((id, pool))
    }

    /// `IpamDriver.ReleasePool`.
    pub fn release_pool(&self, id: &str) -> Result<()> {
        if let Ok(id) = id.parse::<PoolId>() {
            let mut st = self.state();
            if st.pools.get(id.0).is_some_and(|e| e.network.is_none()) {
                st.pools.release(id);
            }
        }
        Ok(())
    }

    /// The Docker network using a pool, found again through Docker after a restart.
    pub(super) async fn network_of_pool(&self, pool: IpNet) -> Result<String> {
        if let Some(n) = self.state().pools.network_of(pool) {
            return Ok(n.to_string());
        }
        let docker = self.docker.tessera_networks(&self.cfg.driver).await?;
        let networks = self.ctl.networks().await?;
        self.bind_all(&docker, &networks).await;
        self.state()
            .pools
            .network_of(pool)
            .map(str::to_string)
            .ok_or_else(|| DriverError::NotFound(format!("no Docker network of this host uses pool {pool}")))
    }

    pub(super) fn new_token(&self) -> String {
        ReservationToken { host: self.cfg.host.clone(), created_ms: now_ms(), nonce: rand::random() }.encode()
    }

    /// `IpamDriver.RequestAddress`: the gateway (computed; Tessera's IPAM
    /// never hands it out) or an endpoint's address, reserved at the
    /// controller: the chosen one, else the one this host released last in
    /// the subnet (so that `docker restart` keeps a container's address),
    /// else the lowest free one.
    pub async fn request_address(&self, pool_id: &str, address: Option<IpAddr>, gateway: bool) -> Result<IpNet> {
        let id: PoolId = pool_id.parse().map_err(DriverError::Invalid)?;
        if gateway {
            return pool::gateway(id.0, address).map_err(DriverError::Invalid);
        }
        let nid = self.network_of_pool(id.0).await?;
        let net = self.network_of(&nid).await?;
        if address.is_none() {
            while let Some(p) = self.unpark(id.0, net.id) {
                let token = self.new_token();
                let take = ReservationCreate {
                    owner: token.clone(),
                    subnet: None,
                    address: Some(p.address.to_string()),
                    from: Some(p.token.clone()),
                };
                match self.ctl.reserve(net.id, &take).await {
                    Ok(r) => {
                        self.state().reserved.insert((net.id, r.address), token);
                        return Ok(r.address_with_prefix());
                    }
                    Err(e) => tracing::debug!(address = %p.address, error = %e, "a held address is gone"),
                }
            }
        }
        let token = self.new_token();
        // A chosen address this host holds (its container is restarting) is taken over.
        let from = address.and_then(|a| self.unpark_address(id.0, net.id, a)).map(|p| p.token);
        let req = ReservationCreate {
            owner: token.clone(),
            subnet: Some(id.0.to_string()),
            address: address.map(|a| a.to_string()),
            from,
        };
        let r = self.ctl.reserve(net.id, &req).await?;
        self.state().reserved.insert((net.id, r.address), token);
        Ok(r.address_with_prefix())
    }

    /// The most recently held address of a pool that is still within its hold.
    pub(super) fn unpark(&self, pool: IpNet, network: Uuid) -> Option<Parked> {
        let hold = self.cfg.address_hold;
        let mut st = self.state();
        let stack = st.parked.get_mut(&pool)?;
        let i = stack.iter().rposition(|p| p.network == network && p.at.elapsed() < hold)?;
        Some(stack.remove(i))
    }

    /// A held address, taken out of the hold (whatever its age: it is still reserved).
    pub(super) fn unpark_address(&self, pool: IpNet, network: Uuid, address: IpAddr) -> Option<Parked> {
        let mut st = self.state();
        let stack = st.parked.get_mut(&pool)?;
        let i = stack.iter().position(|p| p.network == network && p.address == address)?;
        Some(stack.remove(i))
    }

    /// When the next held address is due for release.
    pub(crate) fn next_release_in(&self) -> Option<Duration> {
        let hold = self.cfg.address_hold;
        self.state().parked.values().flatten().map(|p| hold.saturating_sub(p.at.elapsed())).min()
    }

    /// Releases held addresses whose hold is over. Best effort: what fails
    /// stays for the next round (or for the reconciliation of orphans).
    pub(crate) async fn release_expired(&self) {
        let hold = self.cfg.address_hold;
        let expired: Vec<Parked> = {
            let mut st = self.state();
            let mut out = Vec::new();
            for stack in st.parked.values_mut() {
                let (old, keep): (Vec<Parked>, Vec<Parked>) = stack.drain(..).partition(|p| p.at.elapsed() >= hold);
                *stack = keep;
                out.extend(old);
            }
            st.parked.retain(|_, v| !v.is_empty());
            out
        };
        for p in expired {
            if let Err(e) = self.ctl.release(p.network, p.address, Some(&p.token)).await {
                if e.code() != Some(ErrorCode::InUse) {
                    tracing::warn!(address = %p.address, error = %e, "cannot release a held address");
                }
            }
        }
    }

    /// `IpamDriver.ReleaseAddress`: the address is held for this host's next
    /// container in the subnet for [`Config::address_hold`], then released;
    /// the gateway and addresses of networks that are gone need nothing.
    pub async fn release_address(&self, pool_id: &str, address: IpAddr) -> Result<()> {
        let Ok(id) = pool_id.parse::<PoolId>() else { return Ok(()) };
        let nid = match self.network_of_pool(id.0).await {
            Ok(n) => n,
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let net = match self.network_of(&nid).await {
            Ok(n) => n,
            Err(DriverError::NotFound(_)) | Err(DriverError::Invalid(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if net.subnets.iter().any(|s| s.gateway == Some(address)) {
            return Ok(());
        }
        let held = self.state().reserved.remove(&(net.id, address));
        if !self.cfg.address_hold.is_zero() {
            let current = match held {
                Some(t) => Some(t),
                None => self.token_of(net.id, address).await?,
            };
            if let Some(from) = current {
                let token = self.new_token();
                let park = ReservationCreate {
                    owner: token.clone(),
                    subnet: None,
                    address: Some(address.to_string()),
                    from: Some(from),
                };
                if self.ctl.reserve(net.id, &park).await.is_ok() {
                    let parked = Parked { network: net.id, address, token, at: Instant::now() };
                    self.state().parked.entry(id.0).or_default().push(parked);
                    self.kick.notify_one(); // to release it when its hold is over
                    return Ok(());
                }
            }
        }
        match self.ctl.release(net.id, address, None).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(ErrorCode::InUse) => {
                // An endpoint still holds it (its Leave failed); the reconciliation deletes it.
                tracing::warn!(network = %net.fq_name, %address, error = %e, "address still held by an endpoint");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The owner token of a reserved address: remembered, else asked for.
    pub(super) async fn token_of(&self, network: Uuid, address: IpAddr) -> Result<Option<String>> {
        if let Some(t) = self.state().reserved.get(&(network, address)) {
            return Ok(Some(t.clone()));
        }
        Ok(self.ctl.reservations(network).await?.into_iter().find(|r| r.address == address).map(|r| r.owner))
    }
}
