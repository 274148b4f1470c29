use std::time::Instant;
use tessera_model::{Network, Policy, ProjectName, Rule, Subnet, Vni};
use uuid::Uuid;
fn net(n: u128, name: &str, cidrs: &[&str]) -> Network {
    Network {
        id: Uuid::from_u128(n),
        fq_name: format!("default-domain:admin:{name}").parse().unwrap(),
        vni: Vni::new(n as u32).unwrap(),
        subnets: cidrs
            .iter()
            .map(|c| Subnet { cidr: c.parse().unwrap(), gateway: None, pools: vec![], dns_servers: vec![] })
            .collect(),
        import_targets: vec![],
        export_targets: vec![],
        shared: false,
        external: false,
        policies: vec![],
        labels: Default::default(),
    }
}
#[test]
fn timing() {
    let rules: Vec<Rule> = (1..50_000u32)
        .map(|i| Rule::parse("r", &format!("deny tcp any any > any {}", i + 10_000), &ProjectName::default_project()).unwrap())
        .collect();
    let (r, g) =
        (net(1, "red", &["192.168.10.0/24", "2001:db8:10::/64"]), net(2, "green", &["192.168.20.0/24", "2001:db8:20::/64"]));
    for _ in 0..3 {
        let t = Instant::now();
        let boxes: Vec<_> = rules.iter().flat_map(|x| tessera_policy::rules::rule_boxes(x, &r, &g)).collect();
        let tb = t.elapsed();
        let t = Instant::now();
        let l = tessera_policy::layer::assign_layers(&boxes);
        let tl = t.elapsed();
        let p = Policy { id: Uuid::from_u128(9), fq_name: "default-domain:admin:p".parse().unwrap(), rules: rules.clone() };
        let t = Instant::now();
        let list = tessera_policy::compile_list(&[&p], &r, &g, tessera_policy::Verdict::Deny);
        eprintln!("boxes {:?} layers {:?} list {:?} ({} {})", tb, tl, t.elapsed(), l.len(), list.entries.len());
    }
}
