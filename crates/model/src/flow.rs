//! Flow records: who talked to whom, how much, and what policy did to it.
//! Each host's agent records the flows that start at its endpoints (or
//! come from outside the fabric) from the kernel's connection tracking and
//! reports them to the controller, which keeps a bounded number per host
//! and answers queries over them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What happened to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowVerdict {
    /// Let through (a connection the kernel tracked).
    Forwarded,
    /// Dropped by policy or isolation.
    Denied,
    /// Answered with a reset or an ICMP error by policy.
    Rejected,
    /// Dropped as forged (anti-spoofing).
    Spoofed,
}

/// One flow, as the host where it started recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FlowRecord {
    /// The host that recorded it.
    pub host: String,
    /// Unique per host (records of one flow, while it runs and when it
    /// ends, share it).
    pub id: u64,
    /// IP protocol number.
    pub protocol: u8,
    #[schema(value_type = String)]
    pub src: IpAddr,
    pub sport: u16,
    #[schema(value_type = String)]
    pub dst: IpAddr,
    pub dport: u16,
    /// The networks (fully qualified) of each side, when they are the fabric's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_network: Option<String>,
    /// The endpoints (names) of each side, when they are the fabric's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_endpoint: Option<String>,
    pub verdict: FlowVerdict,
    /// Milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// When it ended; running when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    /// Packets and bytes (IP layer) from source to destination, and back.
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// How many connections the record stands for: short flows alike
    /// (same protocol, addresses, destination port and endpoints) that
    /// started and ended between two reports of their host are one record,
    /// with their packets and bytes summed.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub connections: u64,
    /// The rule of a policy that decided the flow's fate, `POLICY rules[i]`
    /// (the policy's fully qualified name); absent when none did (a flow
    /// within one network, or one a rule list's default decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why a refused flow was refused, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The TCP flags seen (for a tracked connection, those its states imply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_flags: Vec<TcpFlag>,
}

/// A TCP flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TcpFlag {
    Syn,
    Ack,
    Fin,
    Rst,
}

impl TcpFlag {
    /// The flags set in a TCP header's flags byte (those [`TcpFlag`] names).
    pub fn from_bits(bits: u8) -> Vec<TcpFlag> {
        [(0x02, TcpFlag::Syn), (0x10, TcpFlag::Ack), (0x01, TcpFlag::Fin), (0x04, TcpFlag::Rst)]
            .into_iter()
            .filter(|(b, _)| bits & b != 0)
            .map(|(_, f)| f)
            .collect()
    }

    /// `flags` with `more` added, each once, in [`TcpFlag`]'s order.
    pub fn union(flags: &mut Vec<TcpFlag>, more: &[TcpFlag]) {
        flags.extend_from_slice(more);
        flags.sort();
        flags.dedup();
    }
}

impl std::fmt::Display for TcpFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TcpFlag::Syn => "SYN",
            TcpFlag::Ack => "ACK",
            TcpFlag::Fin => "FIN",
            TcpFlag::Rst => "RST",
        })
    }
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

/// What makes short flows alike: protocol, addresses, destination port,
/// endpoints, verdict and rule.
type Alike = (u8, IpAddr, IpAddr, u16, Option<String>, Option<String>, FlowVerdict, Option<String>);

/// Records of one report, with the short flows alike made one
/// ([`FlowRecord::connections`]) and each flow once (its last state):
/// `reported` says whether a record's flow was in an earlier report (such a
/// flow keeps its own record).
pub fn aggregate(records: Vec<FlowRecord>, reported: impl Fn(u64) -> bool) -> Vec<FlowRecord> {
    use std::collections::HashMap;
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        last.insert(r.id, i);
    }
    let mut out: Vec<FlowRecord> = Vec::new();
    let mut alike: HashMap<Alike, usize> = HashMap::new();
    for (i, r) in records.into_iter().enumerate() {
        if last[&r.id] != i {
            continue;
        }
        if r.end_ms.is_none() || reported(r.id) {
            out.push(r);
            continue;
        }
        let key = (r.protocol, r.src, r.dst, r.dport, r.src_endpoint.clone(), r.dst_endpoint.clone(), r.verdict, r.rule.clone());
        match alike.get(&key) {
            Some(&at) => {
                let a = &mut out[at];
                a.connections += r.connections;
                a.packets += r.packets;
                a.bytes += r.bytes;
                a.reply_packets += r.reply_packets;
                a.reply_bytes += r.reply_bytes;
                a.start_ms = a.start_ms.min(r.start_ms);
                a.end_ms = a.end_ms.max(r.end_ms);
                TcpFlag::union(&mut a.tcp_flags, &r.tcp_flags);
            }
            None => {
                alike.insert(key, out.len());
                out.push(r);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, sport: u16, end: Option<u64>, bytes: u64) -> FlowRecord {
        FlowRecord {
            host: "h1".into(),
            id,
            protocol: 6,
            src: "10.0.0.2".parse().unwrap(),
            sport,
            dst: "10.0.0.3".parse().unwrap(),
            dport: 80,
            src_network: None,
            dst_network: None,
            src_endpoint: Some("a".into()),
            dst_endpoint: Some("b".into()),
            verdict: FlowVerdict::Forwarded,
            start_ms: 1000 + id,
            end_ms: end,
            packets: 1,
            bytes,
            reply_packets: 1,
            reply_bytes: 10,
            connections: 1,
            rule: None,
            reason: None,
            tcp_flags: vec![TcpFlag::Syn],
        }
    }

    #[test]
    fn short_flows_alike_become_one_and_each_flow_is_reported_once() {
        let records = vec![
            rec(1, 40001, None, 0),
            rec(1, 40001, Some(2000), 100),
            rec(2, 40002, Some(2000), 200),
            rec(3, 40003, None, 50),
            rec(4, 40004, Some(2100), 300),
        ];
        let out = aggregate(records, |id| id == 4);
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!((out[0].id, out[0].connections, out[0].bytes), (1, 2, 300));
        assert_eq!((out[1].id, out[1].end_ms), (3, None), "a running flow keeps its record");
        assert_eq!((out[2].id, out[2].connections), (4, 1), "a flow reported before keeps its record");
    }
}

/// What an agent reports (`POST /v1/hosts/{name}/flows`): records new or
/// changed since its last report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowReport {
    pub records: Vec<FlowRecord>,
}

/// The most records one report may carry.
pub const MAX_REPORT_RECORDS: usize = 10_000;

impl FlowReport {
    /// Bounds what a report holds: the count, and the names and words in
    /// each record (at most 256 bytes each); fields are named
    /// `records[i].…`.
    pub fn check(&self) -> Result<(), crate::FieldError> {
        crate::limits::check_count("records", &self.records, MAX_REPORT_RECORDS, "records")?;
        for (i, r) in self.records.iter().enumerate() {
            for (name, v) in [
                ("host", Some(&r.host)),
                ("src_network", r.src_network.as_ref()),
                ("dst_network", r.dst_network.as_ref()),
                ("src_endpoint", r.src_endpoint.as_ref()),
                ("dst_endpoint", r.dst_endpoint.as_ref()),
                ("rule", r.rule.as_ref()),
                ("reason", r.reason.as_ref()),
            ] {
                if let Some(v) = v {
                    crate::limits::check_text(&format!("records[{i}].{name}"), v, 256)?;
                }
            }
        }
        Ok(())
    }
}
