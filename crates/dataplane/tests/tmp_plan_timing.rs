use std::time::Instant;
use tessera_dataplane::policy::policy_objects;
use tessera_dataplane::{plan, reconcile, DesiredHost, DesiredNetwork, DesiredSubnet, FakeDataplane, PairPolicy};
use tessera_model::{Network, Policy, ProjectName, Rule, Subnet, Vni};
use tessera_policy::Compiler;
use uuid::Uuid;

fn net(n: u128, name: &str, cidrs: &[&str], pol: &[u128]) -> Network {
    Network {
        id: Uuid::from_u128(n),
        fq_name: format!("default-domain:admin:{name}").parse().unwrap(),
        vni: Vni::new(n as u32 * 100).unwrap(),
        subnets: cidrs
            .iter()
            .map(|c| Subnet { cidr: c.parse().unwrap(), gateway: None, pools: vec![], dns_servers: vec![] })
            .collect(),
        import_targets: vec!["1:1".parse().unwrap()],
        export_targets: vec!["1:1".parse().unwrap()],
        shared: false,
        external: false,
        policies: pol.iter().map(|p| Uuid::from_u128(*p)).collect(),
        labels: Default::default(),
    }
}

fn desired(last: &str) -> DesiredHost {
    let mut rules: Vec<Rule> = (0..49_999u32)
        .map(|i| Rule::parse("r", &format!("deny tcp any any > any {}", i + 10_000), &ProjectName::default_project()).unwrap())
        .collect();
    rules.push(Rule::parse("r", &format!("{last} tcp any any > any 5001"), &ProjectName::default_project()).unwrap());
    let p = Policy { id: Uuid::from_u128(9), fq_name: "default-domain:admin:p".parse().unwrap(), rules };
    let nets = vec![
        net(1, "red", &["192.168.10.0/24", "2001:db8:10::/64"], &[]),
        net(2, "green", &["192.168.20.0/24", "2001:db8:20::/64"], &[9]),
    ];
    let pols = vec![p];
    let c = Compiler::new(&nets, &pols);
    let mk = |v: u32, cidr: &str, imp: u32| DesiredNetwork {
        vni: Vni::new(v).unwrap(),
        zone: v as u16,
        subnets: vec![DesiredSubnet { cidr: cidr.parse().unwrap(), gateway: None }],
        local: vec![],
        remote: vec![],
        imports: vec![Vni::new(imp).unwrap()],
    };
    let mut policies = vec![];
    for (s, d, sv, dv) in [(1u128, 2u128, 100u32, 200u32), (2, 1, 200, 100)] {
        let prog = c.program(Uuid::from_u128(s), Uuid::from_u128(d)).unwrap();
        policies.push(PairPolicy { src: Vni::new(sv).unwrap(), dst: Vni::new(dv).unwrap(), lists: prog.lists });
    }
    DesiredHost {
        underlay_ip: "10.99.0.1".parse().unwrap(),
        underlay_ifname: "eth0".into(),
        underlay_mtu: 1500,
        networks: vec![mk(100, "192.168.10.0/24", 200), mk(200, "192.168.20.0/24", 100)],
        pair_zones: vec![],
        policies,
    }
}

#[test]
fn tmp_plan_timing() {
    let d1 = desired("pass");
    let fake = FakeDataplane::new();
    let r = futures::executor::block_on(reconcile(&fake, &d1)).unwrap();
    assert!(r.is_ok());
    let k = fake.kernel();
    let d2 = desired("deny");
    for _ in 0..3 {
        let t = Instant::now();
        let o = policy_objects(&d2);
        let t1 = t.elapsed();
        let t = Instant::now();
        let a = plan(&d2, &k);
        eprintln!("policy_objects {:?} ({} maps) plan {:?} ({} actions)", t1, o.maps.len(), t.elapsed(), a.len());
    }
}
