//! Benchmark 7: a rule change that refuses a running stream → the stream's
//! last byte at the server. The stream runs from c1 on h1 to c2 on h2 (on
//! the fast path when the agents run it: established for a second), 1 KiB
//! every millisecond; the change is `PUT /v1/policies/{name}/rules/{index}`
//! of the policy's last rule (the stream's `pass`) to `deny`, and the time
//! runs from sending the request until the server's last read. Then the
//! rule is made `pass` again and the next stream starts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tessera_testkit::Cluster;

/// How long the stream runs before the change.
const ESTABLISHED: Duration = Duration::from_secs(1);
/// No byte for this long after the change: the stream has stopped.
const QUIET: Duration = Duration::from_millis(300);
/// A stream still flowing this long after the change is an error.
const LIMIT: Duration = Duration::from_secs(10);

/// The policy whose last rule (index `last`) passes `network`'s TCP to
/// `port`: `changes` times, a stream to `server:port` is refused by making
/// that rule `deny`; returns how long each stream lasted after the request
/// was sent, in ms.
pub fn stream_end(c: &Cluster, policy: &str, last: usize, network: &str, server: SocketAddr, changes: usize) -> Result<Vec<f64>> {
    let builder = tessera_testkit::admin_http(c)?;
    let http = tessera_fabric::run_in(c.host_netns(c.controller_host())?, || {
        builder.no_proxy().timeout(Duration::from_secs(30)).build()
    })??;
    let rule_url = format!("{}/v1/policies/{policy}/rules/{last}", c.url);
    let set = |action: &str| -> Result<()> {
        let rule = format!("{action} tcp {network} any > {network} {}", server.port());
        let resp = http.put(&rule_url).json(&rule).send()?;
        if !resp.status().is_success() {
            bail!("PUT {rule_url}: {} {}", resp.status(), resp.text().unwrap_or_default());
        }
        Ok(())
    };

    let base = Instant::now();
    let since_base = move || base.elapsed().as_micros() as u64;
    let last_read = Arc::new(AtomicU64::new(0));
    let listener = tessera_fabric::run_in(c.netns_of("c2")?, move || TcpListener::bind(server))?
        .with_context(|| format!("listen on {server} in c2"))?;
    let reader = {
        let last_read = last_read.clone();
        thread::spawn(move || {
            // One stream per change; a refused stream's reads end by timeout.
            for conn in listener.incoming().take(changes) {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 65536];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    last_read.store(since_base(), Ordering::Relaxed);
                }
            }
        })
    };

    let mut lasted = Vec::with_capacity(changes);
    for _ in 0..changes {
        let mut stream =
            tessera_fabric::run_in(c.netns_of("c1")?, move || TcpStream::connect_timeout(&server, Duration::from_secs(2)))?
                .with_context(|| format!("connect from c1 to {server}"))?;
        stream.set_nodelay(true)?;
        // Writes stop when the refused stream's send buffer fills.
        stream.set_write_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if stream.write_all(&[0u8; 1024]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            })
        };
        thread::sleep(ESTABLISHED);
        if since_base().saturating_sub(last_read.load(Ordering::Relaxed)) > 100_000 {
            stop.store(true, Ordering::Relaxed);
            bail!("the stream to {server} does not flow before the change");
        }
        let sent = since_base();
        set("deny")?;
        loop {
            thread::sleep(Duration::from_millis(20));
            let (now, read) = (since_base(), last_read.load(Ordering::Relaxed));
            if now.saturating_sub(read) >= QUIET.as_micros() as u64 {
                lasted.push(read.saturating_sub(sent) as f64 / 1e3);
                break;
            }
            if now - sent > LIMIT.as_micros() as u64 {
                stop.store(true, Ordering::Relaxed);
                bail!("the stream to {server} still flows {LIMIT:?} after its rule became deny");
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = writer.join();
        set("pass")?;
        // The agents apply it before the next stream connects.
        thread::sleep(Duration::from_millis(500));
    }
    let _ = reader.join();
    Ok(lasted)
}
