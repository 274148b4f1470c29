//! The flow records agents report, as the controller holds them: per host,
//! at most a bounded number, the oldest first out, and a stream of records
//! as they come (for `GET /v1/flows/follow`).

use std::collections::{HashMap, VecDeque};

use tessera_model::FlowRecord;

/// Records kept per host unless the controller is told otherwise.
pub const DEFAULT_FLOW_RECORDS: usize = 100_000;

/// The records of every host, and the stream of records as they come.
#[derive(Debug)]
pub struct FlowStore {
    pub(super) per_host: usize,
    pub(super) hosts: HashMap<String, HostFlows>,
    pub(super) live: tokio::sync::broadcast::Sender<FlowRecord>,
}

#[derive(Debug, Default)]
pub(super) struct HostFlows {
    pub(super) records: HashMap<u64, FlowRecord>,
    /// Ids, oldest first.
    order: VecDeque<u64>,
}

impl Default for FlowStore {
    fn default() -> Self {
        FlowStore { per_host: DEFAULT_FLOW_RECORDS, hosts: HashMap::new(), live: tokio::sync::broadcast::channel(4096).0 }
    }
}

impl FlowStore {
    /// Adds or updates `host`'s records, dropping its oldest beyond the bound.
    pub(super) fn put(&mut self, host: &str, records: Vec<FlowRecord>) {
        let flows = self.hosts.entry(host.to_string()).or_default();
        for r in records {
            let _ = self.live.send(r.clone());
            if flows.records.insert(r.id, r.clone()).is_none() {
                flows.order.push_back(r.id);
            }
        }
        while flows.order.len() > self.per_host {
            if let Some(old) = flows.order.pop_front() {
                flows.records.remove(&old);
            }
        }
    }
}
