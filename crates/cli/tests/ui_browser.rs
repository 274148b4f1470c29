//! The controller's web page `/ui` in a real headless browser (Debian's
//! `chromium`, driven over WebDriver through `chromedriver`, see
//! `browser`): it reads the API with a project's token from the address's
//! fragment, lists the project's networks and endpoints, and shows a flow a
//! host reports while the page is open within seconds.

mod browser;
mod support;

use std::time::{Duration, Instant};

use browser::{Chromedriver, PAGE_WAIT};
use fantoccini::Locator;
use serde_json::json;
use support::{Api, Caller, ControllerProcess};

/// How long a reported flow may take to appear in the page's live table.
const LIVE_WAIT: Duration = Duration::from_secs(5);

/// A project `blue` with a network, an endpoint on host h1 and a
/// reader's token; returns the token.
fn blue_project(c: &ControllerProcess) -> String {
    let admin = Api::new(c);
    assert_eq!(admin.post("/v1/projects", json!({"name": "default-domain:blue"})).0, 201);
    let (s, b) = admin.post("/v1/networks", json!({"name": "default-domain:blue:web", "subnets": [{"cidr": "10.5.0.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    // Another project's network, which blue's page must not list.
    let (s, b) = admin.post("/v1/networks", json!({"name": "hidden", "subnets": [{"cidr": "10.6.0.0/24"}]}));
    assert_eq!(s, 201, "{b}");
    assert_eq!(admin.put("/v1/hosts/h1", json!({"underlay_ip": "10.99.0.1"})).0, 200);
    let (s, b) = admin.post(
        "/v1/endpoints",
        json!({"network": "default-domain:blue:web", "name": "site", "host": "h1", "owner": {"netns": "/run/netns/site"}}),
    );
    assert_eq!(s, 201, "{b}");
    let (s, t) = admin.post("/v1/tokens", json!({"name": "viewer", "project": "default-domain:blue", "role": "reader"}));
    assert_eq!(s, 201, "{t}");
    t["secret"].as_str().unwrap().to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

#[test]
fn the_page_lists_the_projects_networks_and_shows_a_new_flow_live() {
    let c = ControllerProcess::start();
    let secret = blue_project(&c);
    let driver = Chromedriver::start();
    let profile = tempfile::tempdir().unwrap();
    let rt = runtime();
    let browser = rt.block_on(driver.session(profile.path()));

    rt.block_on(async {
        browser::open(&browser, &format!("{}/ui#token={secret}", c.url)).await;
        let network = browser::wait_for(
            &browser,
            Locator::XPath("//table[@id='networks']//tr[@data-network='default-domain:blue:web']"),
            PAGE_WAIT,
            "the page lists blue's network",
        )
        .await;
        let text = network.text().await.unwrap();
        assert!(text.contains("10.5.0.0/24"), "subnets: {text}");
        browser::wait_for(
            &browser,
            Locator::XPath("//table[@data-host='h1']//td[text()='site']"),
            PAGE_WAIT,
            "the page lists the endpoint under its host",
        )
        .await;
        let networks = browser.find(Locator::Id("networks")).await.unwrap().text().await.unwrap();
        assert!(!networks.contains("hidden"), "another project's network is listed: {networks}");
        assert_eq!(
            browser.execute("return location.hash", vec![]).await.unwrap(),
            json!(""),
            "the token does not stay in the address"
        );
        browser::wait_for(&browser, Locator::Css("#live[data-state='live']"), PAGE_WAIT, "the page follows the flows").await;
    });

    let h1 = Api::as_caller(&c, &Caller::Host("h1".into()));
    let record = json!({"host": "h1", "id": 42, "protocol": 6, "src": "10.5.0.2", "sport": 40000, "dst": "10.5.0.3",
        "dport": 4242, "src_network": "default-domain:blue:web", "dst_network": "default-domain:blue:web",
        "src_endpoint": "site", "verdict": "forwarded", "start_ms": 1_700_000_000_000u64, "packets": 3, "bytes": 180,
        "reply_packets": 2, "reply_bytes": 120});
    let reported = Instant::now();
    let (s, b) = h1.post("/v1/hosts/h1/flows", json!({"records": [record]}));
    assert_eq!(s, 204, "{b}");

    rt.block_on(async {
        let row = browser::wait_for(
            &browser,
            Locator::Css("#flows tr[data-flow='h1/42']"),
            LIVE_WAIT,
            "the reported flow appears in the page",
        )
        .await;
        let shown = reported.elapsed();
        let text = row.text().await.unwrap();
        for needle in ["10.5.0.2:40000 (site)", "10.5.0.3:4242", "tcp", "forwarded", "180 / 120"] {
            assert!(text.contains(needle), "the row does not show {needle}: {text}");
        }
        eprintln!("the flow appeared in the page {shown:?} after its report");
        browser.close().await.unwrap();
    });
}

#[test]
fn the_page_says_when_the_token_is_refused() {
    let c = ControllerProcess::start();
    let driver = Chromedriver::start();
    let profile = tempfile::tempdir().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let browser = driver.session(profile.path()).await;
        browser::open(&browser, &format!("{}/ui#token=tsr_not-a-token", c.url)).await;
        let error =
            browser::wait_for(&browser, Locator::Css("#error[data-status='401']"), PAGE_WAIT, "the page shows the refusal").await;
        let text = error.text().await.unwrap();
        assert!(text.contains("Not authenticated (401 unauthenticated)"), "{text}");
        assert!(text.contains("the bearer token is not valid"), "{text}");
        browser.close().await.unwrap();
    });
}
