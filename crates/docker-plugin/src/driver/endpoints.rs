//! Endpoints: `CreateEndpoint`, `Join` (the agent builds the interface in a
//! staging namespace and hands it over), `Leave`, `DeleteEndpoint`.

use super::*;

impl Plugin {
    // ----------------------------------------------------------- endpoints

    /// `NetworkDriver.CreateEndpoint`: gathers the endpoint's reserved
    /// addresses under one owner and picks its MAC.
    pub async fn create_endpoint(&self, req: CreateEndpointRequest) -> Result<CreateEndpointResponse> {
        let net = self.network_of(&req.network_id).await?;
        let iface = req.interface.clone().unwrap_or_default();
        let ips: Vec<IpNet> = [iface.address, iface.address_ipv6].into_iter().flatten().collect();
        let mut token: Option<String> = None;
        for ip in &ips {
            let Some(t) = self.token_of(net.id, ip.addr()).await? else { continue };
            match &token {
                None => token = Some(t),
                Some(first) if *first != t => {
                    let take = ReservationCreate {
                        owner: first.clone(),
                        subnet: None,
                        address: Some(ip.addr().to_string()),
                        from: Some(t),
                    };
                    self.ctl.reserve(net.id, &take).await?;
                    self.state().reserved.insert((net.id, ip.addr()), first.clone());
                }
                Some(_) => {}
            }
        }
        let mac = iface.mac_address.unwrap_or_else(|| endpoint_mac(&req.endpoint_id));
        self.state().endpoints.insert(
            req.endpoint_id.clone(),
            EndpointState {
                ips,
                mac,
                token,
                sandbox: None,
                staging: None,
                ifname: None,
                phase: Phase::Created,
                since: Instant::now(),
            },
        );
        let interface = iface.mac_address.is_none().then_some(EndpointInterface { mac_address: Some(mac), ..Default::default() });
        Ok(CreateEndpointResponse { interface })
    }

    pub(super) fn sandbox_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut s = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
        s.entry(key.to_string()).or_default().clone()
    }

    /// Where the agent builds the interface of a Docker endpoint.
    pub(crate) fn staging_path(&self, eid: &str) -> PathBuf {
        let short: String = eid.chars().take(12).collect();
        self.cfg.staging_dir.join(short)
    }

    /// The interface name the endpoint will likely get in the container:
    /// the lowest `ethN` that neither the container (if it runs already) nor
    /// another of its endpoints holds. (Docker picks the name; this one names
    /// the interface until then.)
    pub(super) async fn predicted_ifname(&self, sandbox: &str, eid: &str) -> Result<String> {
        let mut taken = if netns::is_netns(Path::new(sandbox)) {
            netns::link_names(Path::new(sandbox)).await.map_err(|e| DriverError::Invalid(e.to_string()))?
        } else {
            Vec::new()
        };
        let st = self.state();
        taken.extend(
            st.endpoints
                .iter()
                .filter(|(id, e)| id.as_str() != eid && e.sandbox.as_deref() == Some(sandbox))
                .filter_map(|(_, e)| e.ifname.clone()),
        );
        Ok(next_ifname(taken.iter().map(String::as_str)))
    }

    /// An agent's refusal or absence, as Docker shows it.
    pub(super) fn agent_error(&self, e: AgentError) -> DriverError {
        DriverError::Agent { socket: self.cfg.agent_socket.display().to_string(), message: e.to_string() }
    }

    /// `NetworkDriver.Join`: the agent builds the endpoint's interface in a
    /// staging namespace (MAC, addresses, MTU, the host side in the network's
    /// bridge); the plugin moves its container end into the host namespace
    /// under a temporary name, which the answer names for Docker to move into
    /// the container (Docker calls `Join` before the container's namespace
    /// exists) with the network's gateways for its default routes.
    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse> {
        let eid = req.endpoint_id.clone();
        let ep = self.state().endpoints.get(&eid).cloned().ok_or_else(|| {
            DriverError::NotFound(format!("endpoint {eid} was not created through this plugin (was it restarted?); retry"))
        })?;
        let net = self.network_of(&req.network_id).await?;
        let lock = self.sandbox_lock(&req.sandbox_key);
        let _guard = lock.lock().await;
        let ifname = match &ep.ifname {
            Some(i) => i.clone(),
            None => self.predicted_ifname(&req.sandbox_key, &eid).await?,
        };
        let staging = self.staging_path(&eid);
        if let Some(e) = self.state().endpoints.get_mut(&eid) {
            e.sandbox = Some(req.sandbox_key.clone());
            e.staging = Some(staging.clone());
            e.ifname = Some(ifname.clone());
            e.phase = Phase::Joining;
        }
        let result = self.build_interface(&net, &eid, &ep, &staging, &ifname).await;
        if let Some(e) = self.state().endpoints.get_mut(&eid) {
            e.phase = if result.is_ok() { Phase::Joined } else { Phase::Failed };
            e.since = Instant::now();
        }
        let src_name = result?;
        let gateway = |v4: bool| net.subnets.iter().filter(|s| s.cidr.addr().is_ipv4() == v4).find_map(|s| s.gateway);
        let has = |v4: bool| ep.ips.iter().any(|ip| ip.addr().is_ipv4() == v4);
        tracing::info!(network = %net.fq_name, endpoint = %eid, ifname = %ifname, ips = ?ep.ips, "joined");
        Ok(JoinResponse {
            interface_name: Some(InterfaceName { src_name, dst_prefix: IFNAME_PREFIX.into() }),
            gateway: gateway(true).filter(|_| has(true)),
            gateway_ipv6: gateway(false).filter(|_| has(false)),
            static_routes: Vec::new(),
            disable_gateway_service: true,
        })
    }

    /// The agent attaches the staging namespace and hands the container end
    /// over to the host namespace. Returns the interface's name there.
    pub(super) async fn build_interface(
        &self,
        net: &Network,
        eid: &str,
        ep: &EndpointState,
        staging: &Path,
        ifname: &str,
    ) -> Result<String> {
        let t = Instant::now();
        netns::create(staging).await.map_err(|e| DriverError::Invalid(e.to_string()))?;
        let staged = t.elapsed();
        let src_name = format!("{SRC_PREFIX}{}", eid.chars().take(8).collect::<String>());
        let attach = AttachRequest {
            network: net.id.to_string(),
            netns: staging.display().to_string(),
            ips: ep.ips.iter().map(|ip| ip.addr().to_string()).collect(),
            ifname: Some(ifname.to_string()),
            container_id: None,
            name: Some(eid.to_string()),
            mac: Some(ep.mac.to_string()),
            docker_endpoint_id: Some(eid.to_string()),
            reservation: ep.token.clone(),
            handover: Some(src_name.clone()),
            ports: Vec::new(),
            dhcp: spec::dhcp(net),
            own_table: false,
            service: None,
        };
        self.agent.attach(&attach).await.map_err(|e| self.agent_error(e))?;
        let attached = t.elapsed();
        tracing::debug!(
            staging_ms = staged.as_millis() as u64,
            attach_ms = (attached - staged).as_millis() as u64,
            "interface built"
        );
        Ok(src_name)
    }

    /// The Tessera endpoint of a Docker endpoint, if any.
    pub(super) async fn tessera_endpoint(&self, network: Uuid, eid: &str) -> Result<Option<Endpoint>> {
        Ok(self.ctl.endpoints(Some(network), Some(&self.cfg.host)).await?.into_iter().find(|e| e.name == eid))
    }

    /// `NetworkDriver.Leave`: the agent removes the interface; the addresses
    /// go back to the reservation until `ReleaseAddress`.
    pub async fn leave(&self, network_id: &str, eid: &str) -> Result<()> {
        let net = match self.network_of(network_id).await {
            Ok(n) => n,
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let known = self.state().endpoints.get(eid).cloned();
        let (netns, ifname) = match known.as_ref().and_then(|e| Some((e.staging.clone()?, e.ifname.clone()?))) {
            Some((s, i)) => (s.display().to_string(), i),
            None => match self.tessera_endpoint(net.id, eid).await? {
                Some(e) => (e.owner.netns.unwrap_or_default(), e.owner.ifname.unwrap_or_default()),
                None => {
                    let _ = netns::delete(&self.staging_path(eid));
                    return Ok(());
                }
            },
        };
        let detach = DetachRequest {
            netns: Some(netns.clone()),
            container_id: None,
            network: Some(net.id.to_string()),
            ifname: Some(ifname),
        };
        self.agent.detach(&detach).await.map_err(|e| self.agent_error(e))?;
        if let Err(e) = netns::delete(Path::new(&netns)) {
            tracing::warn!(error = %e, "cannot remove the staging namespace");
        }
        if let Some(e) = self.state().endpoints.get_mut(eid) {
            e.phase = Phase::Left;
        }
        tracing::info!(network = %net.fq_name, endpoint = %eid, "left");
        Ok(())
    }

    /// `NetworkDriver.DeleteEndpoint`: forgets the endpoint; a Tessera
    /// endpoint left behind by a failed `Join` is deleted.
    pub async fn delete_endpoint(&self, network_id: &str, eid: &str) -> Result<()> {
        let known = self.state().endpoints.remove(eid);
        if let Some(sandbox) = known.as_ref().and_then(|e| e.sandbox.clone()) {
            let mut s = self.sandboxes.lock().unwrap_or_else(|p| p.into_inner());
            if s.get(&sandbox).is_some_and(|l| Arc::strong_count(l) == 1) {
                s.remove(&sandbox);
            }
        }
        if known.as_ref().is_some_and(|e| matches!(e.phase, Phase::Created | Phase::Left)) {
            return Ok(());
        }
        let net = match self.network_of(network_id).await {
            Ok(n) => n,
            Err(DriverError::NotFound(_)) | Err(DriverError::Invalid(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(e) = self.tessera_endpoint(net.id, eid).await? {
            self.ctl.delete_endpoint(e.id).await?;
            tracing::info!(network = %net.fq_name, endpoint = %eid, "endpoint deleted");
        }
        if let Err(e) = netns::delete(&self.staging_path(eid)) {
            tracing::warn!(error = %e, "cannot remove the staging namespace");
        }
        Ok(())
    }
}
