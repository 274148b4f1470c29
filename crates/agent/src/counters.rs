//! Hit counters of the policy rules this host enforces: read from the data
//! plane and reported to the controller (`PUT /v1/hosts/{name}/counters`),
//! which sums them over hosts for `tessera policy show`.
//!
//! Off the critical path: the reconcile loop only hands over the desired
//! state it reconciled to ([`Counters::reconciled`], a `watch` send). A task
//! of its own ([`Counters::run`]) reads the counters at most every
//! [`COLLECT_EVERY`], attributes them to rules as that desired state
//! compiles them, and sends a report when they changed. Reading is not free
//! with big policies (the kernel dumps every element of every map: about a
//! second of CPU for 50,000 rules), so the pause between reads is also at
//! least [`BUSY_FACTOR`] times the last read: the counters take at most a
//! tenth of a core, and the data plane keeps the rest. A failed read or
//! report is retried at the next round; counters are observations, and the
//! next report replaces the last one whole.

use std::sync::Arc;
use std::time::Duration;

use tessera_dataplane::{Dataplane, DesiredHost, RuleCounter};
use tessera_model::{HostCounters, RuleHits};
use tokio::sync::watch;

use tessera_api::ControllerClient;

/// Counters are read and reported at most this often.
pub const COLLECT_EVERY: Duration = Duration::from_secs(2);
/// The pause between two reads is at least this many times the last read.
pub const BUSY_FACTOR: u32 = 10;

/// The pause before the next read, after one that took `last_read`.
pub fn pause_after(last_read: Duration) -> Duration {
    COLLECT_EVERY.max(last_read * BUSY_FACTOR)
}

/// The hand-over from the reconcile loop to the counter task.
pub struct Counters {
    desired: watch::Sender<Option<Arc<DesiredHost>>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

impl Counters {
    pub fn new() -> Self {
        Counters { desired: watch::channel(None).0 }
    }

    /// Records the desired state the kernel was last reconciled to: the
    /// counters of its rules are read from then on. Never waits.
    pub fn reconciled(&self, desired: Arc<DesiredHost>) {
        self.desired.send_replace(Some(desired));
    }

    /// The desired state the kernel was last reconciled to, as it changes.
    pub fn reconciled_states(&self) -> watch::Receiver<Option<Arc<DesiredHost>>> {
        self.desired.subscribe()
    }

    /// Reads and reports the counters until the agent stops.
    pub async fn run(self: Arc<Self>, dp: Arc<dyn Dataplane>, client: ControllerClient, host: String) {
        let mut rx = self.desired.subscribe();
        let mut last: Option<HostCounters> = None;
        let mut pause = COLLECT_EVERY;
        loop {
            tokio::time::sleep(pause).await;
            let Some(desired) = rx.borrow_and_update().clone() else { continue };
            if desired.policies.is_empty() && last.as_ref().is_some_and(|l| l.rules.is_empty()) {
                continue;
            }
            let started = std::time::Instant::now();
            let read = dp.policy_counters(&desired).await;
            pause = pause_after(started.elapsed());
            tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "policy counters read");
            let report = match read {
                Ok(c) => report(&c),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the policy counters");
                    continue;
                }
            };
            if last.as_ref() == Some(&report) {
                continue;
            }
            match client.report_counters(&host, &report).await {
                Ok(()) => last = Some(report),
                Err(e) => tracing::debug!(error = %e, "cannot report the policy counters"),
            }
        }
    }
}

/// The report of a host's rule counters: the rules with hits, and for a
/// policy none of whose rules has any, one rule with zeros (so that the host
/// is still listed under the policy). The rules left out count zero: a
/// 50,000-rule policy whose traffic hits a handful of rules is reported in
/// a handful of entries, not 50,000.
pub fn report(counters: &[RuleCounter]) -> HostCounters {
    let hits = |c: &RuleCounter| RuleHits { policy: c.policy, rule: c.rule, packets: c.packets, bytes: c.bytes };
    let mut rules: Vec<RuleHits> = counters.iter().filter(|c| c.packets > 0 || c.bytes > 0).map(hits).collect();
    let mut listed: std::collections::BTreeSet<uuid::Uuid> = rules.iter().map(|r| r.policy).collect();
    for c in counters {
        if listed.insert(c.policy) {
            rules.push(hits(c));
        }
    }
    HostCounters { rules }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_dataplane::FakeDataplane;

    #[test]
    fn a_report_carries_the_rules_with_hits_and_names_every_policy() {
        let (hit, quiet) = (uuid::Uuid::from_u128(7), uuid::Uuid::from_u128(8));
        let r = report(&[
            RuleCounter { policy: hit, rule: 0, packets: 0, bytes: 0 },
            RuleCounter { policy: hit, rule: 1, packets: 3, bytes: 180 },
            RuleCounter { policy: hit, rule: 2, packets: 0, bytes: 0 },
            RuleCounter { policy: quiet, rule: 0, packets: 0, bytes: 0 },
            RuleCounter { policy: quiet, rule: 1, packets: 0, bytes: 0 },
        ]);
        let entries: Vec<_> = r.rules.iter().map(|h| (h.policy, h.rule, h.packets, h.bytes)).collect();
        assert_eq!(entries, vec![(hit, 1, 3, 180), (quiet, 0, 0, 0)]);
        let summed = tessera_model::PolicyCounters::sum(hit, 3, [("h1", &r)]);
        assert_eq!(summed.rules.iter().map(|c| c.packets).collect::<Vec<_>>(), vec![0, 3, 0], "left out is zero");
        assert!(tessera_model::PolicyCounters::sum(quiet, 2, [("h1", &r)]).hosts.contains_key("h1"), "a quiet host is listed");
    }

    #[test]
    fn slow_reads_space_out_the_next_ones() {
        assert_eq!(pause_after(Duration::from_millis(5)), COLLECT_EVERY);
        assert_eq!(pause_after(Duration::from_millis(800)), Duration::from_secs(8));
    }

    #[tokio::test]
    async fn the_hand_over_keeps_the_latest_desired_state() {
        let c = Counters::new();
        let rx = c.desired.subscribe();
        let d = Arc::new(DesiredHost {
            published: vec![],
            steering: vec![],
            uplinks: vec![],
            underlay_ip: "10.99.0.1".parse().unwrap(),
            underlay_ifname: "eth0".into(),
            underlay_mtu: 1500,
            peers: vec![],
            networks: vec![],
            pair_zones: vec![],
            policies: vec![],
            watches: vec![],
        });
        c.reconciled(d.clone());
        assert!(Arc::ptr_eq(rx.borrow().as_ref().unwrap(), &d));
        let fake = FakeDataplane::new();
        assert!(fake.policy_counters(&d).await.unwrap().is_empty(), "no programs, no counters");
    }
}
