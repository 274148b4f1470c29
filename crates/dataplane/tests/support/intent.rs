//! The intent of a test fabric (networks, policies, endpoints placed on
//! hosts) and the desired state of each host, computed the way the agent
//! does (`tessera-agent`'s `desired` module): local networks, networks they
//! import, leaked routes, pair zones, compiled programs of the pairs whose
//! flows start here and fingerprints of the others. Also helpers that
//! run TCP servers and clients inside container namespaces.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tessera_dataplane::{
    DesiredHost, DesiredNetwork, DesiredSubnet, LocalEndpoint, PairPolicy, PairWatch, PairZone, RemoteEndpoint,
};
use tessera_model::{MacAddr, Network, Policy, ProjectName, RouteTarget, Rule, Subnet, Vni};
use tessera_policy::Compiler;
use uuid::Uuid;

use super::Host;

/// A network with one IPv4 and one IPv6 subnet, gateways at `.1` / `::1`.
pub fn network(id: u128, name: &str, vni: u32, v4: &str, v6: &str) -> Network {
    let subnet = |c: &str| {
        let cidr: ipnet::IpNet = c.parse().unwrap();
        let gw = match cidr.network() {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
        };
        Subnet { cidr, gateway: Some(gw), pools: vec![], dns_servers: vec![] }
    };
    Network {
        domain: None,
        snat: None,
        id: Uuid::from_u128(id),
        fq_name: format!("default-domain:admin:{name}").parse().unwrap(),
        vni: Vni::new(vni).unwrap(),
        subnets: vec![subnet(v4), subnet(v6)],
        import_targets: vec![],
        export_targets: vec![],
        shared: false,
        shared_with: vec![],
        external: false,
        policies: vec![],
        labels: Default::default(),
    }
}

/// A policy of one-line rules.
pub fn policy(id: u128, name: &str, rules: &[&str]) -> Policy {
    Policy {
        id: Uuid::from_u128(id),
        fq_name: format!("default-domain:admin:{name}").parse().unwrap(),
        rules: rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::parse(&format!("rules[{i}]"), r, &ProjectName::default_project()).unwrap())
            .collect(),
    }
}

pub fn route_targets(list: &[&str]) -> Vec<RouteTarget> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// An endpoint placed on a host.
#[derive(Clone)]
pub struct Placed {
    pub network: Uuid,
    pub host: String,
    pub ep: LocalEndpoint,
}

/// An endpoint with a MAC derived from `n`, in the container namespace `ns`.
pub fn placed(n: u8, network: &Network, host: &Host, ns: &str, ips: &[&str]) -> Placed {
    Placed {
        network: network.id,
        host: host.ns.clone(),
        ep: LocalEndpoint {
            own_table: false,
            service: false,
            dhcp: false,
            id: Uuid::from_u128((u128::from(n) << 120) | (u128::from(n) << 96) | 0x4000_8000_0000_0000_0000),
            mac: MacAddr([0x02, 0, 0, 0, 0x10, n]),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            netns: PathBuf::from(format!("/run/netns/{ns}")),
            ifname: "eth0".into(),
        },
    }
}

/// Everything the fabric should do.
#[derive(Clone, Default)]
pub struct Intent {
    pub networks: Vec<Network>,
    pub policies: Vec<Policy>,
    pub endpoints: Vec<Placed>,
    /// Compiled rule lists per host, kept between calls like an agent keeps
    /// them.
    pub cache: std::cell::RefCell<std::collections::HashMap<String, tessera_policy::ListCache>>,
}

impl Intent {
    pub fn network_mut(&mut self, name: &str) -> &mut Network {
        self.networks.iter_mut().find(|n| n.name() == name).unwrap()
    }

    /// Attaches the policies (by id) to the network, in this order.
    pub fn attach(&mut self, network: &str, policies: &[u128]) {
        self.network_mut(network).policies = policies.iter().map(|p| Uuid::from_u128(*p)).collect();
    }

    /// The desired state of `me` among `hosts`.
    pub fn desired(&self, hosts: &[&Host], me: &Host) -> DesiredHost {
        let compiler = Compiler::new(&self.networks, &self.policies);
        let topo = compiler.topology();
        let local: Vec<Uuid> = self
            .networks
            .iter()
            .map(|n| n.id)
            .filter(|id| self.endpoints.iter().any(|p| p.network == *id && p.host == me.ns))
            .collect();
        let mut present: Vec<Uuid> = local.clone();
        for l in &local {
            present.extend(topo.imports(*l));
        }
        let mut networks: Vec<DesiredNetwork> = Vec::new();
        for (i, net) in self.networks.iter().enumerate() {
            if !present.contains(&net.id) {
                continue;
            }
            let mut remote = Vec::new();
            for p in self.endpoints.iter().filter(|p| p.network == net.id && p.host != me.ns) {
                let host = hosts.iter().find(|h| h.ns == p.host).unwrap();
                remote.extend(p.ep.ips.iter().map(|ip| RemoteEndpoint { ip: ip.addr(), host_underlay: host.underlay_ip }));
            }
            let mut imports: Vec<Vni> =
                topo.imports(net.id).filter(|i| present.contains(i)).map(|i| compiler.network(i).unwrap().vni).collect();
            imports.sort();
            networks.push(DesiredNetwork {
                domain: None,
                egress: None,
                vni: net.vni,
                zone: (i + 1) as u16,
                subnets: net.subnets.iter().map(|s| DesiredSubnet { dns: vec![], cidr: s.cidr, gateway: s.gateway }).collect(),
                local: self.endpoints.iter().filter(|p| p.network == net.id && p.host == me.ns).map(|p| p.ep.clone()).collect(),
                remote,
                imports,
            });
        }
        networks.sort_by_key(|n| n.vni);
        let mut pair_zones = Vec::new();
        for a in &networks {
            for b in &a.imports {
                let other = networks.iter().find(|n| n.vni == *b).unwrap();
                if a.vni < *b && other.imports.contains(&a.vni) {
                    pair_zones.push(PairZone { a: a.vni, b: *b, zone: 1000 + pair_zones.len() as u16 });
                }
            }
        }
        let id_of = |v: Vni| self.networks.iter().find(|n| n.vni == v).unwrap().id;
        // As the agent does: a host judges the pairs whose flows start or
        // end at its endpoints and watches the others.
        let with_endpoints: Vec<Vni> = networks.iter().filter(|n| !n.local.is_empty()).map(|n| n.vni).collect();
        let (mut policies, mut watches) = (Vec::new(), Vec::new());
        for n in &networks {
            for d in std::iter::once(n.vni).chain(n.imports.iter().copied()) {
                if n.local.is_empty() && !with_endpoints.contains(&d) {
                    if d != n.vni {
                        let fingerprint = compiler.fingerprint(id_of(n.vni), id_of(d)).unwrap();
                        watches.push(PairWatch { src: n.vni, dst: d, fingerprint });
                    }
                    continue;
                }
                let mut caches = self.cache.borrow_mut();
                let cache = caches.entry(me.ns.clone()).or_default();
                let program = compiler.program_cached(id_of(n.vni), id_of(d), cache).unwrap();
                if !program.is_pass_all() {
                    policies.push(PairPolicy { src: n.vni, dst: d, lists: program.lists });
                }
            }
        }
        if let Some(cache) = self.cache.borrow_mut().get_mut(&me.ns) {
            cache.retain_used();
        }
        DesiredHost {
            published: vec![],
            steering: vec![],
            uplinks: vec![],
            underlay_ip: me.underlay_ip,
            underlay_ifname: "eth0".into(),
            underlay_mtu: 1500,
            peers: vec![],
            networks,
            pair_zones,
            policies,
            watches,
        }
    }
}

/// Runs `f` on a thread that entered the network namespace `ns` (the
/// calling thread never changes namespace).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// TCP servers inside a namespace that accept connections and close them
/// at once (the server closes first, so the client keeps no TIME_WAIT), one
/// blocking thread per port, until dropped.
pub struct TcpServers {
    ns: String,
    ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TcpServers {
    /// Listens on `[::]:PORT` (IPv4 and IPv6) for each port, inside `ns`.
    pub fn start(ns: &str, ports: &[u16]) -> TcpServers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for port in ports {
            let (tx, rx) = std::sync::mpsc::channel();
            let path = format!("/run/netns/{ns}");
            let flag = stop.clone();
            let port = *port;
            threads.push(std::thread::spawn(move || {
                let file = File::open(&path).unwrap();
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let l = TcpListener::bind(SocketAddr::from(([0u16; 8], port))).unwrap();
                tx.send(()).unwrap();
                while let Ok((s, _)) = l.accept() {
                    drop(s);
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }));
            rx.recv_timeout(Duration::from_secs(5)).expect("TCP server did not start");
        }
        TcpServers { ns: ns.to_string(), ports: ports.to_vec(), stop, threads }
    }
}

impl Drop for TcpServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for port in &self.ports {
            // Wakes the accepting thread up.
            let addr: SocketAddr = format!("[::1]:{port}").parse().unwrap();
            let _ = in_netns(&self.ns, move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map(drop));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` to `addr` within `timeout`.
pub fn tcp_connect(ns: &str, addr: &str, timeout: Duration) -> io::Result<()> {
    let addr: SocketAddr = addr.parse().unwrap();
    in_netns(ns, move || TcpStream::connect_timeout(&addr, timeout).map(drop))
}
