//! `reconcile` against the fake data plane: observe, plan, apply, report;
//! a kept `Reconciler` plans changes against what it knows the kernel holds.

use std::path::PathBuf;

use tessera_dataplane::fake::Call;
use tessera_dataplane::observed::RuleSelector;
use tessera_dataplane::{
    reconcile, DataplaneError, DesiredHost, DesiredNetwork, DesiredSubnet, FakeDataplane, KernelOp, LocalEndpoint, Look,
    Reconciler, RemoteEndpoint,
};
use tessera_model::Vni;

const ENOMEM: i32 = 12;
const EBUSY: i32 = 16;

fn desired() -> DesiredHost {
    DesiredHost {
        published: vec![],
        steering: vec![],
        uplinks: vec![],
        underlay_ip: "10.99.0.1".parse().unwrap(),
        underlay_ifname: "eth0".into(),
        underlay_mtu: 1500,
        peers: vec![],
        networks: vec![DesiredNetwork {
            domain: None,
            egress: None,
            vni: Vni::new(7).unwrap(),
            zone: 7,
            subnets: vec![DesiredSubnet {
                dns: vec![],
                cidr: "10.7.0.0/24".parse().unwrap(),
                gateway: Some("10.7.0.1".parse().unwrap()),
            }],
            local: vec![LocalEndpoint {
                own_table: false,
                service: false,
                dhcp: false,
                id: "0000beef-0000-4000-8000-000000000001".parse().unwrap(),
                mac: "02:00:00:00:be:ef".parse().unwrap(),
                ips: vec!["10.7.0.2/24".parse().unwrap()],
                netns: PathBuf::from("/run/netns/c"),
                ifname: "eth0".into(),
            }],
            remote: vec![RemoteEndpoint { ip: "10.7.0.3".parse().unwrap(), host_underlay: "10.99.0.2".parse().unwrap() }],
            imports: vec![],
        }],
        pair_zones: vec![],
        policies: vec![],
        watches: vec![],
    }
}

#[tokio::test]
async fn second_reconcile_of_a_converged_host_does_nothing() {
    let fake = FakeDataplane::new();
    let first = reconcile(&fake, &desired()).await.unwrap();
    assert!(first.is_ok() && !first.is_noop(), "{:?}", first.failures);
    let second = reconcile(&fake, &desired()).await.unwrap();
    assert!(second.is_noop());
    assert_eq!(fake.calls().last(), Some(&Call::Observe), "no apply when there is nothing to do");
}

#[tokio::test]
async fn a_failed_action_is_reported_and_the_rest_still_applied() {
    let fake = FakeDataplane::new();
    fake.fail_action_once(
        |a| matches!(a, KernelOp::RuleInstall(r) if r.selector == RuleSelector::IifVerified("tx7".into())),
        EBUSY,
    );
    let report = reconcile(&fake, &desired()).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(report.applied.iter().any(|a| matches!(a, KernelOp::ContainerIfaceConfigure { .. })), "later actions still ran");
    assert_eq!(report.failures[0].error.errno(), Some(EBUSY));
}

#[tokio::test]
async fn the_next_reconcile_retries_only_what_failed() {
    let fake = FakeDataplane::new();
    fake.fail_action_once(|a| matches!(a, KernelOp::FdbInstall(_)), ENOMEM);
    let report = reconcile(&fake, &desired()).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    let retry = reconcile(&fake, &desired()).await.unwrap();
    assert!(retry.is_ok());
    let retried: Vec<String> = retry.applied.iter().map(|a| a.to_string()).collect();
    assert_eq!(retried, vec!["bridge fdb replace 0e:00:0a:63:00:02 dev tx7 dst 10.99.0.2 self permanent"]);
}

#[tokio::test]
async fn an_observe_failure_is_an_error_and_nothing_is_applied() {
    let fake = FakeDataplane::new();
    fake.fail_observe_once(ENOMEM);
    let err = reconcile(&fake, &desired()).await.unwrap_err();
    assert!(matches!(err, DataplaneError::Kernel { .. }));
    assert_eq!(fake.calls(), vec![Call::Observe]);
}

#[tokio::test]
async fn an_invalid_desired_state_is_refused_before_touching_anything() {
    let fake = FakeDataplane::new();
    let mut bad = desired();
    bad.networks[0].local[0].ips = vec!["192.168.1.2/24".parse().unwrap()];
    let err = reconcile(&fake, &bad).await.unwrap_err();
    match err {
        DataplaneError::Invalid(e) => {
            assert_eq!(e.field, "networks[0].local[0].ips[0]");
            assert!(e.reason.contains("none of the network's subnets"), "{}", e.reason);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn removing_everything_leaves_no_tessera_object() {
    let fake = FakeDataplane::new();
    reconcile(&fake, &desired()).await.unwrap();
    let mut empty = desired();
    empty.networks.clear();
    let report = reconcile(&fake, &empty).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failures);
    let k = fake.kernel();
    assert!(k.links.is_empty() && k.routes.is_empty() && k.rules.is_empty(), "{k:#?}");
    assert!(k.neighbours.is_empty() && k.fdb.is_empty() && k.addresses.is_empty() && k.nft.elements.is_empty(), "{k:#?}");
}

#[tokio::test]
async fn steering_converges_and_goes_without_a_trace() {
    use tessera_dataplane::desired::{DesiredSteer, SteerTarget};
    let fake = FakeDataplane::new();
    let mut steered = desired();
    steered.networks[0].local[0].service = true;
    steered.steering = vec![DesiredSteer {
        vni: Vni::new(7).unwrap(),
        label: "fw left".into(),
        src: vec!["10.7.0.0/24".parse().unwrap()],
        dst: vec!["10.8.0.0/24".parse().unwrap()],
        protocol: None,
        src_ports: vec![],
        dst_ports: vec![],
        reverse: false,
        skip_ports: vec![],
        targets: ["10.7.0.2", "10.7.0.3"]
            .iter()
            .zip(["tb7", "tx7"])
            .map(|(a, dev)| SteerTarget { address: a.parse().unwrap(), dev: dev.into() })
            .collect(),
    }];
    let first = reconcile(&fake, &steered).await.unwrap();
    assert!(first.is_ok(), "{:?}", first.failures);
    assert!(reconcile(&fake, &steered).await.unwrap().is_noop());
    let k = fake.kernel();
    let steer_rules = k.rules.iter().filter(|r| matches!(r.selector, RuleSelector::Steer(_))).count();
    let steer_routes = k.routes.iter().filter(|r| tessera_dataplane::names::is_steer_table(r.table)).count();
    assert_eq!((steer_rules, steer_routes), (2, 2), "{k:#?}");

    let report = reconcile(&fake, &desired()).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failures);
    let k = fake.kernel();
    assert!(!k.rules.iter().any(|r| matches!(r.selector, RuleSelector::Steer(_))), "{:#?}", k.rules);
    assert!(!k.routes.iter().any(|r| tessera_dataplane::names::is_steer_table(r.table)), "{:#?}", k.routes);
    assert!(!k.nft.elements.iter().any(|e| matches!(e, tessera_dataplane::observed::NftElement::SvcMac { .. })));
    assert!(reconcile(&fake, &desired()).await.unwrap().is_noop());
}

/// `desired()` with one more remote endpoint.
fn desired_with_another_remote() -> DesiredHost {
    let mut d = desired();
    d.networks[0].remote.push(RemoteEndpoint { ip: "10.7.0.4".parse().unwrap(), host_underlay: "10.99.0.3".parse().unwrap() });
    d
}

fn observed(fake: &FakeDataplane) -> usize {
    fake.calls().iter().filter(|c| **c == Call::Observe).count()
}

#[tokio::test]
async fn a_kept_reconciler_plans_a_change_against_what_it_knows_the_kernel_holds() {
    let fake = FakeDataplane::new();
    let r = Reconciler::new(std::time::Duration::from_secs(60));
    assert!(r.reconcile(&fake, &desired(), Look::Known).await.unwrap().is_ok());
    assert_eq!(observed(&fake), 1, "knowing nothing, it observes");
    let change = r.reconcile(&fake, &desired_with_another_remote(), Look::Known).await.unwrap();
    assert!(change.is_ok() && !change.is_noop());
    assert_eq!(observed(&fake), 1, "a change of intent plans against what is known");
    assert_eq!(fake.calls().iter().filter(|c| **c == Call::ObserveNft).count(), 1, "the nftables state is read");
    // What it knew is what the kernel holds: observing plans nothing more.
    let full = r.reconcile(&fake, &desired_with_another_remote(), Look::Kernel).await.unwrap();
    assert!(full.is_noop(), "{:?}", full.applied);
    assert_eq!(observed(&fake), 2);
}

#[tokio::test]
async fn after_a_failed_action_or_once_too_old_the_reconciler_observes_again() {
    let fake = FakeDataplane::new();
    let r = Reconciler::new(std::time::Duration::from_secs(60));
    fake.fail_action_once(|a| matches!(a, KernelOp::FdbInstall(_)), ENOMEM);
    assert!(!r.reconcile(&fake, &desired(), Look::Known).await.unwrap().is_ok());
    let retried = r.reconcile(&fake, &desired(), Look::Known).await.unwrap();
    assert_eq!(observed(&fake), 2, "a failed action: what it knew is dropped");
    assert_eq!(retried.applied.len(), 1, "only what failed: {:?}", retried.applied);

    let never = Reconciler::new(std::time::Duration::ZERO);
    let fake = FakeDataplane::new();
    never.reconcile(&fake, &desired(), Look::Known).await.unwrap();
    never.reconcile(&fake, &desired_with_another_remote(), Look::Known).await.unwrap();
    assert_eq!(observed(&fake), 2, "knowledge older than the limit is not used");
}

#[tokio::test]
async fn a_change_behind_the_reconcilers_back_is_repaired_when_it_observes() {
    let fake = FakeDataplane::new();
    let r = Reconciler::new(std::time::Duration::from_secs(60));
    r.reconcile(&fake, &desired(), Look::Known).await.unwrap();
    let veth = fake.kernel().links.keys().find(|n| n.starts_with("tv")).cloned().expect("the endpoint's veth");
    // Deleted by hand.
    use tessera_dataplane::Dataplane;
    fake.apply(&[KernelOp::LinkDelete { name: veth.clone() }]).await.unwrap();
    let known = r.reconcile(&fake, &desired(), Look::Known).await.unwrap();
    assert!(known.is_noop(), "what is known still holds the veth");
    let observed = r.reconcile(&fake, &desired(), Look::Kernel).await.unwrap();
    assert!(
        observed.applied.iter().any(|a| matches!(a, KernelOp::VethAdd { name, .. } if *name == veth)),
        "{:?}",
        observed.applied
    );
}
