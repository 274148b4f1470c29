//! An intruder on a fabric's underlay: a VXLAN device in the underlay's own
//! namespace, from an address no host registered, that speaks to one host
//! exactly as another host of the fabric would (the host's VTEP MAC, a
//! network's VNI, the networks' port or the fast path's). What the host's
//! guard drops of it is counted by the rules of the `input` chain of `inet
//! tessera` ([`guard_drops`]).

use std::net::Ipv4Addr;

use crate::{exec_in, Cluster, Netns};

/// The comment of the host guard's rules that drop VXLAN from outside the
/// fabric.
const GUARD: &str = "VXLAN from a host outside the fabric";

/// The device `evil` and the intruder's address on the underlay bridge; both
/// go when it is dropped.
pub struct Intruder<'a> {
    ns: &'a Netns,
    /// With its prefix length.
    address: String,
}

fn run(ns: &Netns, args: &[&str]) {
    let out = exec_in(ns, args[0], &args[1..]).unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(out.status.success(), "{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl<'a> Intruder<'a> {
    /// An intruder at the underlay's `.250` towards `host` on UDP `port`, in
    /// network `vni`, that owns `inner` (an address of the network) and
    /// routes `to` (addresses on `host`) through its tunnel.
    pub fn new(c: &'a Cluster, host: &str, port: u16, vni: u32, inner: &str, to: &[&str]) -> Intruder<'a> {
        let target = c.underlay_ip(host).unwrap_or_else(|e| panic!("the underlay address of {host}: {e}"));
        let ns = c.fabric.underlay_netns().expect("the fabric's underlay namespace");
        let o = c.fabric.underlay().addr().octets();
        let address = format!("{}/{}", Ipv4Addr::new(o[0], o[1], o[2], 250), c.fabric.underlay().prefix_len());
        let bridge = tessera_fabric::UNDERLAY_BRIDGE;
        let [a, b, cc, d] = target.octets();
        let vtep_mac = format!("0e:00:{a:02x}:{b:02x}:{cc:02x}:{d:02x}");
        run(ns, &["ip", "addr", "add", &address, "dev", bridge]);
        let intruder = Intruder { ns, address };
        let (vni, port, target) = (vni.to_string(), port.to_string(), target.to_string());
        let local = intruder.address.split('/').next().unwrap_or_default();
        let device = ["ip", "link", "add", "evil", "type", "vxlan", "id", &vni, "local", local, "remote", &target];
        // Without a UDP checksum, as the fast path sends.
        run(ns, &[&device[..], &["dstport", &port, "noudpcsum", "dev", bridge]].concat());
        run(ns, &["ip", "addr", "add", &format!("{inner}/32"), "dev", "evil"]);
        run(ns, &["ip", "link", "set", "evil", "up"]);
        for addr in to {
            run(ns, &["ip", "route", "add", &format!("{addr}/32"), "dev", "evil"]);
            run(ns, &["ip", "neigh", "replace", addr, "lladdr", &vtep_mac, "dev", "evil", "nud", "permanent"]);
        }
        intruder
    }

    /// Runs `program` with `args` in the intruder's namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::process::Output {
        exec_in(self.ns, program, args).unwrap_or_else(|e| panic!("{program} on the underlay: {e}"))
    }
}

impl Drop for Intruder<'_> {
    fn drop(&mut self) {
        let _ = exec_in(self.ns, "ip", ["link", "del", "evil"]);
        let _ = exec_in(self.ns, "ip", ["addr", "del", &self.address, "dev", tessera_fabric::UNDERLAY_BRIDGE]);
    }
}

/// The packets the guard of `host` dropped as VXLAN from outside the fabric.
pub fn guard_drops(c: &Cluster, host: &str) -> u64 {
    crate::nft_counted(c, host, "input", GUARD)
}
