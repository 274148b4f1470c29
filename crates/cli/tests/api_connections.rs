//! What one client may hold of the controller: watches start only from a
//! revision the store still has (and say the current one when not), idle
//! connections are closed, and the number of connections is bounded without
//! hurting the connections already open. Against real controller processes.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{assert_error, Api, ControllerProcess};

#[test]
fn a_watch_from_a_discarded_revision_is_refused_with_the_current_revision() {
    let c = ControllerProcess::start_with(&["--retain-events", "10"], false);
    let api = Api::new(&c);
    for i in 0..20 {
        assert_eq!(api.post("/v1/projects", json!({"name": format!("default-domain:p{i}")})).0, 201);
    }
    let (_, snap) = api.get("/v1/snapshot");
    let current = snap["revision"].as_u64().expect("a snapshot has a revision");
    assert!(current >= 20, "{snap}");

    let r = api.get("/v1/watch?after=1");
    assert_error(&r, 410, "compacted", Some("after"));
    assert_eq!(r.1["error"]["details"]["revision"].as_u64(), Some(current), "the refusal names the current revision: {}", r.1);

    let r = api.get(&format!("/v1/watch?after={}", current + 1000));
    assert_error(&r, 400, "invalid_argument", Some("after"));
    assert!(r.1["error"]["message"].as_str().unwrap().contains(&current.to_string()), "{}", r.1);

    // From the current revision the watch streams (first a progress line).
    let http = c.http(&support::Caller::Admin);
    let mut resp = http.get(format!("{}/v1/watch?after={current}", c.url)).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut first = [0u8; 1];
    resp.read_exact(&mut first).expect("the watch sends a line within its progress interval");
}

/// Sends one `GET /healthz` on `s` and reads the whole answer (headers and
/// `content-length` bytes of body).
fn healthz(s: &mut TcpStream) -> std::io::Result<String> {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: tessera\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0);
            if body.len() >= len {
                return Ok(text);
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(text);
        }
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_connection_on_which_nothing_moves_is_closed_after_the_idle_timeout() {
    let c = ControllerProcess::start_with(&["--idle-timeout", "2"], true);
    let mut s = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let answer = healthz(&mut s).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Kept alive, then silent: the controller closes it.
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "the idle connection was closed, not answered");
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10), "closed after {waited:?}, not about 2 s");

    // A connection that never sends a request is closed too.
    let mut silent = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    assert_eq!(silent.read(&mut buf).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(10), "a silent connection lived {:?}", started.elapsed());
}

#[test]
fn connections_past_the_limit_wait_and_those_open_are_served() {
    let c = ControllerProcess::start_with(&["--max-connections", "4"], true);
    let mut open: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert!(healthz(&mut s).unwrap().starts_with("HTTP/1.1 200"));
            s
        })
        .collect();

    // The fifth is accepted by the kernel but not served while four are open...
    let mut fifth = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    fifth.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let waiting = healthz(&mut fifth);
    assert!(
        matches!(&waiting, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "a connection past the limit was served: {waiting:?}"
    );
    // ... while the open ones are served as before.
    for s in &mut open {
        assert!(healthz(s).unwrap().starts_with("HTTP/1.1 200"), "an open connection is still served");
    }
    // One closes: the fifth is served.
    drop(open.pop());
    fifth.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !String::from_utf8_lossy(&buf).contains("\r\n\r\n") {
        let n = fifth.read(&mut chunk).expect("the fifth connection is served once a slot is free");
        assert!(n > 0, "the fifth connection was closed");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
}
