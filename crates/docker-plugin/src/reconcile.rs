//! Reconciliation of this host's dockerd with Tessera (pure): Docker's view
//! and Tessera's view in, a list of actions out.
//!
//! Tessera is the source of truth for networks: a Tessera network made
//! through Docker belongs in every host's dockerd, and a Docker network of
//! the tessera driver whose Tessera network is gone is removed. Docker is the
//! source of truth for what is attached: a Tessera endpoint this host's
//! plugin made for a Docker endpoint that no longer exists is deleted, and a
//! reservation this host's plugin made that no Docker endpoint holds is
//! released. Work in flight is left alone: networks being created, endpoints
//! joined moments ago, reservations younger than the grace period.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tessera_model::{Endpoint, Network, ProjectName, Reservation, Uuid};

use crate::names::ReservationToken;
use crate::protocol::EngineNetworkCreate;
use crate::spec::{self, DockerSubnet, KEY_PROJECT, OPT_NETWORK};

/// A Docker network of the tessera driver, as this host's dockerd shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerNetwork {
    pub id: String,
    pub name: String,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub subnets: Vec<DockerSubnet>,
    /// The Docker endpoints of running containers, with their addresses.
    pub endpoints: BTreeMap<String, Vec<IpAddr>>,
}

/// What Tessera holds that concerns this host.
#[derive(Debug, Clone, Default)]
pub struct TesseraView {
    pub networks: Vec<Network>,
    /// Endpoints of this host (the steps look only at those made for Docker).
    pub endpoints: Vec<Endpoint>,
    /// Reservations of the networks of this host's dockerd.
    pub reservations: Vec<Reservation>,
}

/// What the plugin is doing right now, which the steps must not undo.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    /// Docker networks whose Tessera network is being created.
    pub docker_networks: BTreeSet<String>,
    /// Tessera networks this host's dockerd is creating or has just bound.
    pub tessera_networks: BTreeSet<Uuid>,
    /// Names of Docker networks a `docker network create` on this host is
    /// making (seen by the authz hook, not yet in Docker's list).
    pub docker_names: BTreeSet<String>,
    /// Docker endpoints joined (or joining) moments ago.
    pub endpoints: BTreeSet<String>,
}

/// How far to go.
#[derive(Debug, Clone)]
pub struct SyncInput<'a> {
    pub host: &'a str,
    pub now_ms: u64,
    /// Reservations younger than this are in flight.
    pub grace_ms: u64,
    /// Also delete orphan endpoints and release orphan reservations (at
    /// start, and when Docker's view is known to be complete).
    pub cleanup: bool,
}

/// One step towards agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStep {
    /// The Docker network stands for this Tessera network.
    Bind { docker_id: String, network: Uuid },
    /// `docker network create` for a Tessera network this dockerd lacks.
    CreateDockerNetwork { network: Uuid, request: EngineNetworkCreate },
    /// `docker network rm` of a network whose Tessera network is gone.
    DeleteDockerNetwork { docker_id: String, name: String },
    /// A Tessera endpoint whose Docker endpoint is gone.
    DeleteEndpoint { id: Uuid, name: String },
    /// A reservation of this host that no Docker endpoint holds.
    ReleaseReservation { network: Uuid, address: IpAddr, owner: String },
}

/// The Tessera network a Docker network stands for: the one its
/// `tessera.network` option names, else the network made through Docker with
/// its name in its project.
pub fn tessera_network_of<'a>(d: &DockerNetwork, networks: &'a [Network]) -> Option<&'a Network> {
    if let Some(r) = d.options.get(OPT_NETWORK) {
        return networks.iter().find(|n| n.id.to_string() == *r || n.fq_name.to_string() == *r || n.name() == r);
    }
    let project: ProjectName = d
        .options
        .get(KEY_PROJECT)
        .or_else(|| d.labels.get(KEY_PROJECT))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(ProjectName::default_project);
    networks.iter().find(|n| spec::is_docker_network(n) && spec::docker_name(n) == d.name && *n.fq_name.project() == project)
}

/// Computes the actions that bring this host's dockerd and Tessera into agreement.
pub fn steps(input: &SyncInput<'_>, docker: &[DockerNetwork], tessera: &TesseraView, in_flight: &InFlight) -> Vec<SyncStep> {
    let mut out = Vec::new();
    let mut bound: BTreeMap<Uuid, &DockerNetwork> = BTreeMap::new();
    for d in docker {
        match tessera_network_of(d, &tessera.networks) {
            Some(n) => {
                bound.insert(n.id, d);
                out.push(SyncStep::Bind { docker_id: d.id.clone(), network: n.id });
            }
            None if in_flight.docker_networks.contains(&d.id) => {}
            None => out.push(SyncStep::DeleteDockerNetwork { docker_id: d.id.clone(), name: d.name.clone() }),
        }
    }
    let names: BTreeSet<&str> = docker.iter().map(|d| d.name.as_str()).collect();
    for n in &tessera.networks {
        if !spec::is_docker_network(n) || bound.contains_key(&n.id) || in_flight.tessera_networks.contains(&n.id) {
            continue;
        }
        // A Docker network of that name that stands for something else blocks it; the
        // create would fail the same way, so say nothing here.
        if names.contains(spec::docker_name(n)) || in_flight.docker_names.contains(spec::docker_name(n)) {
            continue;
        }
        out.push(SyncStep::CreateDockerNetwork { network: n.id, request: spec::engine_create_for(n) });
    }
    if !input.cleanup {
        return out;
    }
    let attached: BTreeSet<&str> = docker.iter().flat_map(|d| d.endpoints.keys().map(String::as_str)).collect();
    for e in &tessera.endpoints {
        let Some(eid) = e.owner.docker_endpoint_id.as_deref() else { continue };
        if e.host != input.host || attached.contains(eid) || in_flight.endpoints.contains(eid) {
            continue;
        }
        out.push(SyncStep::DeleteEndpoint { id: e.id, name: e.name.clone() });
    }
    let held: BTreeSet<(Uuid, IpAddr)> =
        bound.iter().flat_map(|(net, d)| d.endpoints.values().flatten().map(move |a| (*net, *a))).collect();
    for r in &tessera.reservations {
        let Some(token) = ReservationToken::parse(&r.owner) else { continue };
        let young = input.now_ms.saturating_sub(token.created_ms) < input.grace_ms;
        if token.host != input.host || young || held.contains(&(r.network, r.address)) {
            continue;
        }
        out.push(SyncStep::ReleaseReservation { network: r.network, address: r.address, owner: r.owner.clone() });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::{EndpointStatus, MacAddr, Owner, Vni};

    fn tnet(id: u128, name: &str, docker: bool) -> Network {
        let req = spec::network_create(&spec::DockerNetworkSpec {
            name: name.into(),
            subnets: vec![DockerSubnet { pool: "10.0.0.0/24".parse().unwrap(), gateway: None, ip_range: None }],
            ..Default::default()
        })
        .unwrap();
        let mut labels = req.labels;
        if !docker {
            labels.clear();
        }
        Network {
            domain: None,
            snat: None,
            id: Uuid::from_u128(id),
            fq_name: format!("default-domain:admin:{name}").parse().unwrap(),
            vni: Vni::new(4096 + id as u32).unwrap(),
            subnets: tessera_model::network::validate_subnets(&req.subnets).unwrap(),
            import_targets: vec![],
            export_targets: vec![],
            shared: false,
            shared_with: vec![],
            external: false,
            policies: vec![],
            labels,
        }
    }

    fn dnet(id: &str, name: &str, endpoints: &[(&str, &str)]) -> DockerNetwork {
        DockerNetwork {
            id: id.into(),
            name: name.into(),
            endpoints: endpoints.iter().map(|(e, a)| (e.to_string(), vec![a.parse().unwrap()])).collect(),
            ..Default::default()
        }
    }

    fn tep(id: u128, network: u128, host: &str, docker_eid: Option<&str>) -> Endpoint {
        Endpoint {
            id: Uuid::from_u128(id),
            name: docker_eid.unwrap_or("x").into(),
            network: Uuid::from_u128(network),
            host: host.into(),
            mac: MacAddr::local_from([0, 0, 0, 0, 0, id as u8]),
            ips: vec![],
            owner: Owner { docker_endpoint_id: docker_eid.map(str::to_string), ..Default::default() },
            status: EndpointStatus::Active,
            status_message: None,
            ports: vec![],
            health: None,
        }
    }

    fn reservation(network: u128, addr: &str, owner: &str) -> Reservation {
        Reservation {
            network: Uuid::from_u128(network),
            subnet: "10.0.0.0/24".parse().unwrap(),
            address: addr.parse().unwrap(),
            owner: owner.into(),
        }
    }

    fn input(cleanup: bool) -> SyncInput<'static> {
        SyncInput { host: "h1", now_ms: 100_000, grace_ms: 30_000, cleanup }
    }

    #[test]
    fn a_tessera_network_made_through_docker_is_created_in_every_dockerd() {
        let t = TesseraView { networks: vec![tnet(1, "net4", true), tnet(2, "cli-made", false)], ..Default::default() };
        let actions = steps(&input(false), &[], &t, &InFlight::default());
        assert_eq!(actions.len(), 1, "{actions:?}");
        let SyncStep::CreateDockerNetwork { network, request } = &actions[0] else { panic!("{actions:?}") };
        assert_eq!((*network, request.name.as_str()), (Uuid::from_u128(1), "net4"));
        assert_eq!(request.options[OPT_NETWORK], Uuid::from_u128(1).to_string());
    }

    #[test]
    fn docker_networks_are_bound_by_name_or_by_the_mapping_option() {
        let t = TesseraView { networks: vec![tnet(1, "net4", true), tnet(2, "other", false)], ..Default::default() };
        let mut mapped = dnet("d2", "imported", &[]);
        mapped.options.insert(OPT_NETWORK.into(), "other".into());
        let actions = steps(&input(false), &[dnet("d1", "net4", &[]), mapped], &t, &InFlight::default());
        assert_eq!(
            actions,
            [
                SyncStep::Bind { docker_id: "d1".into(), network: Uuid::from_u128(1) },
                SyncStep::Bind { docker_id: "d2".into(), network: Uuid::from_u128(2) },
            ]
        );
    }

    #[test]
    fn a_tessera_network_whose_docker_create_is_in_flight_is_not_created_twice() {
        let t = TesseraView { networks: vec![tnet(1, "tiny", true)], ..Default::default() };
        let in_flight = InFlight { docker_names: BTreeSet::from(["tiny".to_string()]), ..Default::default() };
        assert!(steps(&input(false), &[], &t, &in_flight).is_empty());
    }

    #[test]
    fn a_docker_network_whose_tessera_network_is_gone_is_removed_unless_in_flight() {
        let t = TesseraView::default();
        let docker = [dnet("d1", "net4", &[]), dnet("d2", "new", &[])];
        let in_flight = InFlight { docker_networks: BTreeSet::from(["d2".to_string()]), ..Default::default() };
        assert_eq!(
            steps(&input(false), &docker, &t, &in_flight),
            [SyncStep::DeleteDockerNetwork { docker_id: "d1".into(), name: "net4".into() }]
        );
    }

    #[test]
    fn a_network_this_host_is_creating_is_not_created_again() {
        let t = TesseraView { networks: vec![tnet(1, "net4", true)], ..Default::default() };
        let in_flight = InFlight { tessera_networks: BTreeSet::from([Uuid::from_u128(1)]), ..Default::default() };
        assert!(steps(&input(false), &[], &t, &in_flight).is_empty());
    }

    #[test]
    fn orphan_endpoints_of_this_host_are_deleted_at_cleanup_only() {
        let t = TesseraView {
            networks: vec![tnet(1, "net4", true)],
            endpoints: vec![
                tep(10, 1, "h1", Some("e-live")),
                tep(11, 1, "h1", Some("e-gone")),
                tep(12, 1, "h1", Some("e-joining")),
                tep(13, 1, "h2", Some("e-other-host")),
                tep(14, 1, "h1", None),
            ],
            ..Default::default()
        };
        let docker = [dnet("d1", "net4", &[("e-live", "10.0.0.2")])];
        let in_flight = InFlight { endpoints: BTreeSet::from(["e-joining".to_string()]), ..Default::default() };
        let actions = steps(&input(true), &docker, &t, &in_flight);
        assert_eq!(actions[1..], [SyncStep::DeleteEndpoint { id: Uuid::from_u128(11), name: "e-gone".into() }]);
        assert_eq!(steps(&input(false), &docker, &t, &in_flight).len(), 1, "no cleanup: only the bind");
    }

    #[test]
    fn orphan_reservations_of_this_host_are_released_when_old_enough() {
        let token = |host: &str, ms: u64| ReservationToken { host: host.into(), created_ms: ms, nonce: 1 }.encode();
        let t = TesseraView {
            networks: vec![tnet(1, "net4", true)],
            reservations: vec![
                reservation(1, "10.0.0.2", &token("h1", 1_000)),  // held by a Docker endpoint
                reservation(1, "10.0.0.3", &token("h1", 1_000)),  // orphan
                reservation(1, "10.0.0.4", &token("h1", 90_000)), // young: in flight
                reservation(1, "10.0.0.5", &token("h2", 1_000)),  // another host's
                reservation(1, "10.0.0.6", "someone-else"),       // not the plugin's
            ],
            ..Default::default()
        };
        let docker = [dnet("d1", "net4", &[("e1", "10.0.0.2")])];
        let actions = steps(&input(true), &docker, &t, &InFlight::default());
        assert_eq!(
            actions[1..],
            [SyncStep::ReleaseReservation {
                network: Uuid::from_u128(1),
                address: "10.0.0.3".parse().unwrap(),
                owner: token("h1", 1_000)
            }]
        );
    }
}
