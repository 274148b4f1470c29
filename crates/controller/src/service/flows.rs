//! Flow records the agents report, kept in memory (observations, like hit
//! counters): at most a bounded number per host, the oldest first out, and
//! answered to queries filtered by network, endpoint, host, verdict,
//! addresses, port and time. A token of a project sees only the records
//! with a side in one of its networks ([`in_project`]).

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use tessera_model::{FieldError, FlowRecord, FlowReport, FlowVerdict, FqName, ProjectName};

use super::controller::Controller;
use crate::error::Result;

/// The most records one query answers.
pub const MAX_FLOW_LIMIT: usize = 10_000;

/// Filters of `GET /v1/flows`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct FlowFilter {
    /// A network (fully qualified or bare name) on either side.
    pub network: Option<String>,
    /// An endpoint name on either side.
    pub endpoint: Option<String>,
    /// The host that recorded it.
    pub host: Option<String>,
    pub verdict: Option<FlowVerdict>,
    #[param(value_type = Option<String>)]
    pub src: Option<IpAddr>,
    #[param(value_type = Option<String>)]
    pub dst: Option<IpAddr>,
    /// A port on either side.
    pub port: Option<u16>,
    /// Flows that ran at or after this time (ms since the epoch).
    pub since: Option<u64>,
    /// Flows that started before this time (ms since the epoch).
    pub until: Option<u64>,
    /// The most records answered, newest first (100 by default, at most 10,000).
    pub limit: Option<usize>,
}

/// What `GET /v1/flows/top` groups by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TopBy {
    /// Source and destination (endpoints, or addresses outside the fabric).
    #[default]
    Pair,
    /// Each side's endpoint (a flow counts for both).
    Endpoint,
    /// Protocol and destination port.
    Port,
    /// Source and destination networks (fully qualified; `outside` for a
    /// side that is not the fabric's).
    Network,
}

/// Parameters of `GET /v1/flows/top`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct TopParams {
    #[param(value_type = Option<String>)]
    pub by: Option<TopBy>,
    /// Flows that ran at or after this time (ms since the epoch).
    pub since: Option<u64>,
    /// The most groups answered (20 by default).
    pub limit: Option<usize>,
}

/// One group of `GET /v1/flows/top`: bytes and packets both ways.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopEntry {
    /// `SRC > DST` for a pair or a pair of networks, else the endpoint or
    /// `PROTOCOL/PORT`.
    pub key: String,
    /// The two sides of a pair or a pair of networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// What `GET /v1/flows/top?by=network` names a side that is not the
/// fabric's (no network name is without its project's colons).
pub const OUTSIDE: &str = "outside";

fn name_of(addr: IpAddr, endpoint: &Option<String>) -> String {
    endpoint.clone().unwrap_or_else(|| addr.to_string())
}

/// The key of a directed group, `SRC > DST`, with its sides.
fn pair(src: String, dst: String) -> (String, Option<(String, String)>) {
    (format!("{src} > {dst}"), Some((src, dst)))
}

fn network_of(network: &Option<String>) -> String {
    network.clone().unwrap_or_else(|| OUTSIDE.to_string())
}

/// Whether a token of `project` sees `r`: the network of one of its sides
/// (fully qualified, `domain:project:name`) is `project`'s.
pub fn in_project(r: &FlowRecord, project: &ProjectName) -> bool {
    [&r.src_network, &r.dst_network].into_iter().flatten().any(|n| n.parse::<FqName>().is_ok_and(|f| f.project() == project))
}

/// Whether a caller limited to `scope` (a token's project; none for an
/// administrator) sees `r`.
pub fn visible(r: &FlowRecord, scope: Option<&ProjectName>) -> bool {
    scope.is_none_or(|p| in_project(r, p))
}

impl FlowFilter {
    /// Whether `r` passes the filter.
    pub fn matches(&self, r: &FlowRecord) -> bool {
        let network = |n: &Option<String>| {
            self.network
                .as_ref()
                .is_none_or(|want| n.as_ref().is_some_and(|have| have == want || have.rsplit(':').next() == Some(want.as_str())))
        };
        (network(&r.src_network) || network(&r.dst_network))
            && self.endpoint.as_ref().is_none_or(|e| r.src_endpoint.as_ref() == Some(e) || r.dst_endpoint.as_ref() == Some(e))
            && self.host.as_ref().is_none_or(|h| &r.host == h)
            && self.verdict.is_none_or(|v| r.verdict == v)
            && self.src.is_none_or(|a| r.src == a)
            && self.dst.is_none_or(|a| r.dst == a)
            && self.port.is_none_or(|p| r.sport == p || r.dport == p)
            && self.since.is_none_or(|t| r.end_ms.is_none_or(|end| end >= t))
            && self.until.is_none_or(|t| r.start_ms < t)
    }
}

impl Controller {
    /// How many records are kept per host.
    pub fn set_flow_records(&self, per_host: usize) {
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).per_host = per_host.max(1);
    }

    /// Records what `host`'s agent reports.
    pub fn report_flows(&self, host: &str, report: FlowReport) -> Result<()> {
        report.check()?;
        if let Some((i, _)) = report.records.iter().enumerate().find(|(_, r)| r.host != host) {
            return Err(FieldError::new(format!("records[{i}].host"), format!("a host reports its own flows ({host})")).into());
        }
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).put(host, report.records);
        Ok(())
    }

    /// Records as they are reported, from now on.
    pub fn follow_flows(&self) -> tokio::sync::broadcast::Receiver<FlowRecord> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).live.subscribe()
    }

    /// Groups of the flows `scope` sees ([`visible`]) by bytes (both
    /// ways), most first.
    pub fn top_flows(&self, p: &TopParams, scope: Option<&ProjectName>) -> Result<Vec<TopEntry>> {
        let by = p.by.unwrap_or_default();
        let store = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        let mut groups: HashMap<String, TopEntry> = HashMap::new();
        let since = FlowFilter { since: p.since, ..Default::default() };
        for r in store.hosts.values().flat_map(|h| h.records.values()).filter(|r| since.matches(r) && visible(r, scope)) {
            let keys = match by {
                TopBy::Pair => vec![pair(name_of(r.src, &r.src_endpoint), name_of(r.dst, &r.dst_endpoint))],
                TopBy::Network => vec![pair(network_of(&r.src_network), network_of(&r.dst_network))],
                TopBy::Endpoint => vec![(name_of(r.src, &r.src_endpoint), None), (name_of(r.dst, &r.dst_endpoint), None)],
                TopBy::Port => vec![(format!("{}/{}", r.protocol, r.dport), None)],
            };
            for (key, sides) in keys {
                let (src, dst) = sides.unzip();
                let e = groups.entry(key.clone()).or_insert(TopEntry { key, src, dst, flows: 0, packets: 0, bytes: 0 });
                e.flows += 1;
                e.packets += r.packets + r.reply_packets;
                e.bytes += r.bytes + r.reply_bytes;
            }
        }
        let mut out: Vec<TopEntry> = groups.into_values().collect();
        out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.key.cmp(&b.key)));
        out.truncate(p.limit.unwrap_or(20).min(MAX_FLOW_LIMIT));
        Ok(out)
    }

    /// The records `filter` matches that `scope` sees ([`visible`]), newest first.
    pub fn flows(&self, filter: &FlowFilter, scope: Option<&ProjectName>) -> Result<Vec<FlowRecord>> {
        let limit = filter.limit.unwrap_or(100);
        if limit > MAX_FLOW_LIMIT {
            return Err(FieldError::new("limit", format!("{limit} is over {MAX_FLOW_LIMIT}")).into());
        }
        let store = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<FlowRecord> = store
            .hosts
            .values()
            .flat_map(|h| h.records.values())
            .filter(|r| filter.matches(r) && visible(r, scope))
            .cloned()
            .collect();
        out.sort_by(|a, b| b.start_ms.cmp(&a.start_ms).then_with(|| a.host.cmp(&b.host)).then_with(|| b.id.cmp(&a.id)));
        out.truncate(limit);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(src_network: Option<&str>, dst_network: Option<&str>) -> FlowRecord {
        serde_json::from_value(serde_json::json!({"host": "h1", "id": 1, "protocol": 6, "src": "10.1.0.2", "sport": 40000,
            "dst": "10.2.0.3", "dport": 80, "src_network": src_network, "dst_network": dst_network, "verdict": "forwarded",
            "start_ms": 1000, "packets": 1, "bytes": 60, "reply_packets": 1, "reply_bytes": 60}))
        .expect("a flow record")
    }

    #[test]
    fn a_project_sees_the_flows_with_a_side_in_its_networks() {
        let blue: ProjectName = "default-domain:blue".parse().unwrap();
        assert!(in_project(&record(Some("default-domain:blue:web"), None), &blue));
        assert!(in_project(&record(Some("default-domain:red:db"), Some("default-domain:blue:web")), &blue));
        assert!(!in_project(&record(Some("default-domain:red:db"), Some("default-domain:red:web")), &blue));
        assert!(!in_project(&record(None, None), &blue), "a flow of no network is the administrators'");
        assert!(!in_project(&record(Some("blue"), None), &blue), "a bare name names no project");
        assert!(!in_project(&record(Some("other-domain:blue:web"), None), &blue), "the domain counts");
        assert!(visible(&record(None, None), None), "an administrator sees everything");
    }
}
