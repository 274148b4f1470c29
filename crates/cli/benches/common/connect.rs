//! New connections per second, for the benchmarks: a server that accepts
//! and closes, a client that connects and resets, one after the other. Run
//! inside containers as roles of the benchmark's own binary.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// A connect that took longer than this stalled (a SYN retried).
pub const STALL: Duration = Duration::from_millis(200);

/// Accepts and closes connections on `port` until killed, with a listen
/// queue of `net.core.somaxconn` (see the method in the header).
pub fn accept_server(port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port))?;
    // listen(2) again on a listening socket sets its queue.
    nix::sys::socket::listen(&l, nix::sys::socket::Backlog::MAXCONN)?;
    for s in l.incoming() {
        drop(s);
    }
    Ok(())
}

/// Connects to `addr` and resets each connection, one after the other, for
/// `secs` (or, with `until_eof`, until its standard input closes); prints
/// the connections per second and how many connects stalled.
pub fn connect_client(addr: SocketAddr, secs: Duration, until_eof: bool) -> Result<()> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if until_eof {
        let stop = stop.clone();
        thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let start = Instant::now();
    let (mut n, mut failed, mut stalled) = (0u64, 0u64, 0u64);
    let mut last_error = None;
    while start.elapsed() < secs && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let at = Instant::now();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(conn) => {
                let linger = nix::libc::linger { l_onoff: 1, l_linger: 0 };
                let _ = nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::Linger, &linger);
                drop(conn);
                n += 1;
            }
            Err(e) => {
                failed += 1;
                last_error = Some(e);
            }
        }
        if at.elapsed() >= STALL {
            stalled += 1;
        }
    }
    if failed * 100 > n.max(1) {
        bail!("{failed} of {} connections failed; the last: {last_error:?}", n + failed);
    }
    println!("{:.1} {stalled}", n as f64 / start.elapsed().as_secs_f64());
    Ok(())
}
