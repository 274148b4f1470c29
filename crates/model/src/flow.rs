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
