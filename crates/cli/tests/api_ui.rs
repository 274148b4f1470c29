//! The web page `/ui` as the controller serves it: to anyone (it holds no
//! data), with headers that let it run only its own inline script and
//! style, talk only to the controller and never be framed.

mod support;

use support::{Caller, ControllerProcess};

#[test]
fn the_page_is_served_without_credentials_under_a_strict_policy() {
    let c = ControllerProcess::start();
    let r = c.http(&Caller::Nobody).get(format!("{}/ui", c.url)).send().expect("GET /ui");
    assert_eq!(r.status().as_u16(), 200);
    let header = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    let policy = header("content-security-policy");
    assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"), "{policy}");
    for part in ["connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"] {
        assert!(policy.contains(part), "{part} missing from {policy}");
    }
    assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{policy}");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let page = r.text().unwrap();
    assert!(page.contains("<title>Tessera</title>") && page.contains("/v1/flows/follow"), "{page}");
    // Only the page is open: the API behind it still asks who calls.
    let api = c.http(&Caller::Nobody).get(format!("{}/v1/networks", c.url)).send().unwrap();
    assert_eq!(api.status().as_u16(), 401);
}
