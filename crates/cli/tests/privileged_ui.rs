//! Privileged tier: the web page `/ui` shows real traffic live. A fabric
//! of two hosts (the test kit's cluster), a container on each in one
//! network; headless Chromium runs in the first host's namespace (where
//! the controller is), opens the page with a project's token, and the
//! ping between the containers appears in its flow table within seconds
//! of being sent. Needs root, chromium and chromium-driver; fails with the
//! reason when it cannot run.

mod browser;

use std::time::{Duration, Instant};

use browser::{Chromedriver, PAGE_WAIT};
use fantoccini::Locator;
use tessera_testkit::{addresses, CONTROLLER_PORT};

/// How long a flow may take from its first packet to the page.
const LIVE_WAIT: Duration = Duration::from_secs(5);

#[test]
fn privileged_the_page_shows_a_ping_between_two_hosts_live() {
    let (mut c, _run) = tessera_testkit::start_cluster("tui", &["h1", "h2"], env!("CARGO_BIN_EXE_tessera"));
    c.cli_ok(&["network", "add", "red", "--subnet", "10.97.0.0/24"]).unwrap();
    c.container("h1", "c1").unwrap();
    c.container("h2", "c2").unwrap();
    c.attach("c1", "red", &[]).unwrap();
    let server = addresses(&c.attach("c2", "red", &[]).unwrap())[0].clone();
    let token =
        c.cli_json(&["token", "create", "--name", "viewer", "--project", "default-domain:admin", "--role", "reader"]).unwrap();
    let secret = token["secret"].as_str().expect("a secret").to_string();

    let host = tessera_fabric::Netns::open(c.host_netns("h1").unwrap().name()).unwrap();
    let driver = Chromedriver::start_in(host);
    let profile = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let browser = rt.block_on(driver.session(profile.path()));
    let page = format!("https://{}:{CONTROLLER_PORT}/ui#token={secret}", c.underlay_ip("h1").unwrap());
    rt.block_on(async {
        browser::open(&browser, &page).await;
        browser::wait_for(
            &browser,
            Locator::XPath("//table[@id='networks']//tr[@data-network='default-domain:admin:red']"),
            PAGE_WAIT,
            "the page lists the network",
        )
        .await;
        browser::wait_for(&browser, Locator::Css("#live[data-state='live']"), PAGE_WAIT, "the page follows the flows").await;
    });

    let sent = Instant::now();
    assert!(c.ping("c1", &server, 3).unwrap() >= 2, "c1 reaches c2\n{}", c.logs_tail(20));
    let row = format!("//table[@id='flows']//tr[td[text()='icmp'] and td[starts-with(text(), '{server}')]]");
    rt.block_on(async {
        let found = browser::wait_for(&browser, Locator::XPath(&row), LIVE_WAIT, "the ping appears in the page").await;
        let text = found.text().await.unwrap();
        eprintln!("the ping appeared in the page {:?} after it started: {text}", sent.elapsed());
        assert!(text.contains("default-domain:admin:red") && text.contains("h1"), "{text}");
        browser.close().await.unwrap();
    });
}
