//! The CLI with several controllers (`--controller URL1,URL2`): calls go on
//! to the next controller when one is down; a call that is not idempotent
//! is not replayed after it may have reached one; an error names every
//! controller tried and why it failed.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::{free_port, ControllerProcess};

/// Runs the CLI with `controllers` as `--controller` and the
/// administrator's credentials of `c`.
fn cli(c: &ControllerProcess, controllers: &str, args: &[&str]) -> (i32, String, String) {
    c.cli_via(controllers, args)
}

/// A controller that answers every request 503 `unavailable` (its store is
/// down) over plain HTTP; stops on drop.
struct Unavailable {
    url: String,
    stop: Arc<AtomicBool>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl Unavailable {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, n) = (stop.clone(), requests.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let mut buf = [0u8; 65536];
                        let _ = conn.read(&mut buf);
                        n.fetch_add(1, Ordering::Relaxed);
                        let body = r#"{"error":{"code":"unavailable","message":"the store is unavailable"}}"#;
                        let _ = write!(
                            conn,
                            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Unavailable { url, stop, requests }
    }
}

impl Drop for Unavailable {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn calls_go_on_to_the_live_controller_when_the_first_is_down() {
    let c = ControllerProcess::start();
    let list = format!("https://127.0.0.1:{},{}", free_port(), c.url);
    let (code, out, err) = cli(&c, &list, &["network", "add", "blue", "--subnet", "10.1.0.0/24"]);
    assert_eq!(code, 0, "a create that never reached the dead controller goes on: {err}");
    assert!(out.contains("blue"), "{out}");
    let (code, out, err) = cli(&c, &list, &["network", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("blue"), "{out}");
    let (code, _, err) = cli(&c, &list, &["network", "delete", "blue"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn idempotent_calls_go_on_past_a_controller_that_answers_503() {
    let c = ControllerProcess::start();
    let down = Unavailable::start();
    let list = format!("{},{}", down.url, c.url);
    let (code, out, err) = cli(&c, &list, &["network", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.to_lowercase().contains("name"), "{out}");
    assert_eq!(down.requests.load(Ordering::Relaxed), 1, "the first controller was tried");
}

#[test]
fn a_create_is_not_replayed_after_a_controller_answered_503() {
    let c = ControllerProcess::start();
    let down = Unavailable::start();
    let list = format!("{},{}", down.url, c.url);
    let (code, _, err) = cli(&c, &list, &["network", "add", "red", "--subnet", "10.2.0.0/24"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&down.url) && err.contains("not replayed") && err.contains("503"), "{err}");
    let (code, out, _) = cli(&c, &c.url, &["network", "list"]);
    assert_eq!(code, 0);
    assert!(!out.contains("red"), "the create did not reach the live controller: {out}");
}

#[test]
fn when_no_controller_answers_the_error_names_each_and_why() {
    let c = ControllerProcess::start();
    let (p1, p2) = (free_port(), free_port());
    let list = format!("https://127.0.0.1:{p1},https://127.0.0.1:{p2}");
    let (code, _, err) = cli(&c, &list, &["network", "list"]);
    assert_eq!(code, 3, "{err}");
    for p in [p1, p2] {
        assert!(err.contains(&format!("https://127.0.0.1:{p}")), "{err}");
    }
    assert!(err.to_lowercase().contains("refused"), "each reason is given: {err}");
}

#[test]
fn a_bad_url_in_the_list_is_named() {
    let c = ControllerProcess::start();
    let (code, _, err) = cli(&c, &format!("{},ftp://x", c.url), &["network", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("ftp://x"), "{err}");
}

#[test]
fn a_name_with_several_addresses_is_tried_address_by_address_with_tls_verifying_the_name() {
    use tessera_api::targets::Target;
    let c = ControllerProcess::start();
    let base = format!("https://localhost:{}", c.port);
    // As a name resolving to 127.0.0.2 (nothing listens there) and
    // 127.0.0.1 would give: the certificate names `localhost`.
    let targets = ["127.0.0.2", "127.0.0.1"]
        .iter()
        .map(|ip| Target { base: base.clone(), pin: Some(("localhost".into(), format!("{ip}:{}", c.port).parse().unwrap())) })
        .collect();
    let creds = tessera_api::auth::Credentials::from_pki(&c.pki, "admin");
    let client = tessera_api::ControllerClient::with_targets(targets, &creds).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let nets: Vec<serde_json::Value> = rt.block_on(client.get("/v1/networks")).expect("the second address answers");
    assert!(nets.is_empty());
    assert_eq!(client.url(), format!("{base} (127.0.0.1)"), "the client sticks to the address that answered");

    // A name the certificate does not hold is refused on every address.
    let wrong = ["127.0.0.1"]
        .iter()
        .map(|ip| Target {
            base: format!("https://elsewhere.test:{}", c.port),
            pin: Some(("elsewhere.test".into(), format!("{ip}:{}", c.port).parse().unwrap())),
        })
        .collect();
    let client = tessera_api::ControllerClient::with_targets(wrong, &creds).unwrap();
    let err = rt.block_on(client.get::<serde_json::Value>("/v1/networks")).unwrap_err().to_string();
    assert!(err.contains("elsewhere.test") && err.contains("(127.0.0.1)"), "{err}");
}
