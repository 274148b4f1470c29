mod support;
use std::time::Instant;
use support::intent::{network, placed, policy, route_targets, Intent};
use support::Fabric;
use tessera_dataplane::{plan, Dataplane, LinuxDataplane};

fn rules(n: usize, last: &str) -> Vec<String> {
    let mut r: Vec<String> = (0..n - 1).map(|i| format!("deny tcp any any > any {}", 10_000 + i)).collect();
    r.push(format!("{last} tcp any any > any 5001"));
    r
}

#[tokio::test]
async fn privileged_tmp_debug() {
    let mut f = Fabric::new();
    let h1 = f.host("h1");
    let h2 = f.host("h2");
    let (r1, g1) = (f.netns("r1"), f.netns("g1"));
    let mut red = network(1, "red", 100, "192.168.10.0/24", "2001:db8:10::/64");
    let mut green = network(2, "green", 200, "192.168.20.0/24", "2001:db8:20::/64");
    for n in [&mut red, &mut green] {
        n.import_targets = route_targets(&["64512:1"]);
        n.export_targets = route_targets(&["64512:1"]);
    }
    let endpoints = vec![placed(1, &red, &h1, &r1, &["192.168.10.2/24"]), placed(3, &green, &h2, &g1, &["192.168.20.2/24"])];
    let mut intent = Intent { networks: vec![red, green], policies: vec![], endpoints };
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let set = |intent: &mut Intent, last: &str| {
        let l = rules(n, last);
        let r: Vec<&str> = l.iter().map(String::as_str).collect();
        intent.policies = vec![policy(0x50, "big", &r)];
    };
    set(&mut intent, "pass");
    intent.attach("green", &[0x50]);
    let dp = LinuxDataplane::in_netns(h1.netns_path()).await.unwrap();
    let hosts = [&h1, &h2];
    let t = Instant::now();
    let d = intent.desired(&hosts, &h1);
    eprintln!("desired {:?}", t.elapsed());
    let t = Instant::now();
    let obs = dp.observe().await.unwrap();
    let actions = plan(&d, &obs);
    eprintln!("plan {:?}", t.elapsed());
    let rep = dp.apply(&actions).await.unwrap();
    assert!(rep.is_ok(), "{:#?}", rep.failures);
    eprintln!("first reconcile {:?}", t.elapsed());
    for last in ["deny", "pass", "deny", "pass"] {
        set(&mut intent, last);
        let t = Instant::now();
        let d = intent.desired(&hosts, &h1);
        eprintln!("desired {:?}", t.elapsed());
        let t = Instant::now();
        let obs = dp.observe().await.unwrap();
        eprintln!("observe {:?}", t.elapsed());
        let t = Instant::now();
        let actions = plan(&d, &obs);
        eprintln!("plan {:?} ({} actions)", t.elapsed(), actions.len());
        let t = Instant::now();
        let rep = dp.apply(&actions).await.unwrap();
        assert!(rep.is_ok(), "{:#?}", rep.failures);
        eprintln!("apply {:?}", t.elapsed());
    }
    drop(dp);
    let dp = LinuxDataplane::in_netns(h1.netns_path()).await.unwrap();
    let t = Instant::now();
    let d = intent.desired(&hosts, &h1);
    let obs = dp.observe().await.unwrap();
    let actions = plan(&d, &obs);
    eprintln!("after restart: {} actions in {:?}", actions.len(), t.elapsed());
}
