//! Docker networks: `CreateNetwork` (made or adopted at the controller, bound
//! once Docker names it through the authz hook), `DeleteNetwork`, and what
//! the authz hook records of `docker network create`.

use super::*;

impl Plugin {
    // ------------------------------------------------------------ networks

    /// Creates the Tessera network, or finds the one another host made.
    pub(super) async fn create_or_adopt(
        &self,
        create: &tessera_model::NetworkCreate,
        subnets: &[DockerSubnet],
    ) -> Result<Network> {
        match self.ctl.create_network(create).await {
            Ok((n, _)) => Ok(n),
            Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => {
                let existing = self.ctl.find_network(&reference_of(create)).await?.ok_or(e)?;
                if !spec::is_docker_network(&existing) {
                    return Err(DriverError::Invalid(format!(
                        "Tessera network {} exists and was not made through Docker; use -o {}={} to use it",
                        existing.fq_name,
                        spec::OPT_NETWORK,
                        existing.fq_name
                    )));
                }
                spec::subnets_match(&existing, subnets).map_err(DriverError::Invalid)?;
                tracing::info!(network = %existing.fq_name, "the network exists already (made through another host's Docker)");
                Ok(existing)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `NetworkDriver.CreateNetwork`.
    pub async fn create_network(self: &Arc<Self>, req: CreateNetworkRequest) -> Result<()> {
        let nid = req.network_id.clone();
        let driver_options = req.driver_options();
        let opts = spec::driver_options(&driver_options)?;
        let subnets = subnets_of(&req, &self.state().pools);
        let pools: BTreeSet<IpNet> = subnets.iter().map(|s| s.pool).collect();
        let seen = self.take_pending_create(&pools, &driver_options);

        if let Some(reference) = &opts.network {
            let net = self.ctl.find_network(reference).await?.ok_or_else(|| {
                DriverError::NotFound(format!("option {}: there is no Tessera network {reference}", spec::OPT_NETWORK))
            })?;
            spec::subnets_match(&net, &subnets).map_err(DriverError::Invalid)?;
            tracing::info!(docker_network = %nid, network = %net.fq_name, "Docker network mapped onto a Tessera network");
            self.bind(&nid, net, &subnets);
            return Ok(());
        }
        if let Some(p) = seen {
            let spec = DockerNetworkSpec { name: p.name, labels: p.labels, options: driver_options, subnets: subnets.clone() };
            let create = spec::network_create(&spec)?;
            // In flight until bound: the synchronisation must not make it in Docker meanwhile.
            self.state().creating.insert(nid.clone(), spec.name.clone());
            let made = self.create_or_adopt(&create, &subnets).await;
            if let Ok(net) = &made {
                tracing::info!(docker_network = %nid, network = %net.fq_name, vni = %net.vni, "network created");
                self.bind(&nid, net.clone(), &subnets);
            }
            self.state().creating.remove(&nid);
            made?;
            self.kick.notify_one();
            return Ok(());
        }
        // Without the authz hook Docker tells neither the name nor the labels
        // now: check what can be checked, and finish once Docker shows the network.
        let probe = DockerNetworkSpec { name: "pending".into(), labels: BTreeMap::new(), options: driver_options, subnets };
        spec::network_create(&probe)?;
        self.mark(&nid, Bind::Pending);
        for s in &probe.subnets {
            self.state().pools.bind(s.pool, s.ip_range, &nid, None);
        }
        let me = self.clone();
        tokio::spawn(async move { me.finish_create(nid).await });
        Ok(())
    }

    /// Makes the Tessera network of a Docker network once Docker shows its
    /// name and labels (the path without the authz hook).
    pub(super) async fn finish_create(self: Arc<Self>, nid: String) {
        let deadline = Instant::now() + BIND_TIMEOUT;
        let mut delay = Duration::from_millis(10);
        let d = loop {
            if !self.state().networks.contains_key(&nid) {
                return; // Docker rolled the creation back
            }
            match self.docker.network(&nid).await {
                Ok(Some(d)) => break d,
                Ok(None) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
                Ok(None) => return self.mark(&nid, Bind::Failed(format!("Docker never showed network {nid}"))),
                Err(e) => return self.mark(&nid, Bind::Failed(e.to_string())),
            }
        };
        let spec = DockerNetworkSpec { name: d.name.clone(), labels: d.labels, options: d.options, subnets: d.subnets.clone() };
        let result = match spec::network_create(&spec) {
            Ok(create) => self.create_or_adopt(&create, &d.subnets).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(net) => {
                tracing::info!(docker_network = %d.name, network = %net.fq_name, vni = %net.vni, "network created");
                self.bind(&nid, net, &d.subnets);
                self.kick.notify_one();
            }
            Err(e) => {
                let reason = format!("Docker network {} cannot be used: {e}; remove it and create it again", d.name);
                tracing::error!(docker_network = %d.name, error = %e, "network not created in Tessera");
                self.mark(&nid, Bind::Failed(reason));
            }
        }
    }

    /// `NetworkDriver.DeleteNetwork`: deletes the Tessera network (fabric
    /// wide) when it was made through Docker; a network mapped with
    /// `-o tessera.network` is only unmapped. A network with endpoints on any
    /// host is kept in Tessera (the authz hook refuses such a removal before
    /// Docker makes it; without the hook, the synchronisation brings the
    /// Docker network back).
    pub async fn delete_network(&self, docker_id: &str) -> Result<()> {
        let net = match self.network_of(docker_id).await {
            Ok(n) => Some(n),
            Err(DriverError::NotFound(_)) | Err(DriverError::Invalid(_)) => None,
            Err(e) => return Err(e),
        };
        // Docker removes its network whatever the driver answers (only its
        // own checks can refuse); the authz hook is where Tessera can refuse.
        self.forget_network(docker_id);
        self.kick.notify_one();
        if let Some(net) = net.filter(spec::is_docker_network) {
            if let Err(e) = self.ctl.delete_network(net.id).await {
                if e.code() == Some(ErrorCode::InUse) {
                    return Err(DriverError::Invalid(format!(
                        "network {} is in use elsewhere in the fabric and stays in Tessera: {e}",
                        net.fq_name
                    )));
                }
                return Err(e.into());
            }
            tracing::info!(network = %net.fq_name, "network deleted");
        }
        Ok(())
    }
}
