//! The agent's Prometheus metrics, served over HTTP at `/metrics` on
//! `--metrics-listen` (off by default): its endpoints and networks, the
//! reconcile loop (how many, how long, actions applied, kernel operations
//! that failed), its mirror of the controller (connected, revision), and,
//! read when scraped, each network's packets, bytes and drops on its bridge
//! and tunnel, the DHCP server's answers and a gateway's translations.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tessera_model::vif::{VifEntry, VifKind};

/// Every metric of one agent.
pub struct AgentMetrics {
    registry: Registry,
    pub endpoints: IntGauge,
    pub networks: IntGauge,
    pub reconciles: IntCounter,
    pub reconcile_seconds: HistogramVec,
    pub actions: IntCounterVec,
    pub failures: IntCounter,
    pub connected: IntGauge,
    /// Times the mirror's watch moved to another controller.
    pub failovers: IntCounter,
    /// Snapshots the mirror took.
    snapshots: IntCounter,
    /// Endpoints the mirror holds, and the networks of its scope.
    mirror_endpoints: IntGauge,
    scope_networks: IntGauge,
    pub revision: IntGauge,
    traffic: IntCounterVec,
    pub flows_active: IntGauge,
    pub flows_recorded: IntCounter,
    pub flows_lost: IntCounter,
    dhcp: IntCounterVec,
    nat: IntCounterVec,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl AgentMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let m = AgentMetrics {
            endpoints: gauge("tessera_agent_endpoints", "Local endpoints programmed in the data plane"),
            networks: gauge("tessera_agent_networks", "Networks (VRFs) present on this host"),
            reconciles: IntCounter::new("tessera_agent_reconciles_total", "Reconciles of the data plane with the intent")
                .expect("valid metric"),
            reconcile_seconds: HistogramVec::new(
                HistogramOpts::new("tessera_agent_reconcile_duration_seconds", "Time to reconcile the data plane, by outcome")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["outcome"],
            )
            .expect("valid metric"),
            actions: counter_vec(
                "tessera_agent_actions_applied_total",
                "Kernel actions applied, by kind (netlink or nftables)",
                &["kind"],
            ),
            failures: IntCounter::new(
                "tessera_agent_action_failures_total",
                "Kernel actions that failed (netlink, nftables, conntrack)",
            )
            .expect("valid metric"),
            connected: gauge("tessera_agent_controller_connected", "1 while the agent's mirror of the controller is connected"),
            failovers: IntCounter::new(
                "tessera_agent_controller_failovers_total",
                "Times the agent's watch moved to another controller after its own broke",
            )
            .expect("valid metric"),
            snapshots: IntCounter::new(
                "tessera_agent_mirror_snapshots_total",
                "Snapshots the agent's mirror took (at start, after a watch could not resume, when the host needed other networks)",
            )
            .expect("valid metric"),
            mirror_endpoints: gauge("tessera_agent_mirror_endpoints", "Endpoints the agent mirrors (those of its scope)"),
            scope_networks: gauge(
                "tessera_agent_mirror_scope_networks",
                "Networks whose endpoints the agent mirrors besides its own (-1: every network's)",
            ),
            revision: gauge("tessera_agent_intent_revision", "The controller revision the agent's intent is at"),
            traffic: counter_vec(
                "tessera_agent_network_traffic_total",
                "Packets, bytes and drops of each network on this host, by device (bridge, tunnel) and direction",
                &["vni", "device", "direction", "unit"],
            ),
            flows_active: gauge("tessera_agent_flows_active", "Flows running that this host records"),
            flows_recorded: IntCounter::new("tessera_agent_flow_records_total", "Flow records made or completed")
                .expect("valid metric"),
            flows_lost: IntCounter::new(
                "tessera_agent_flow_records_dropped_total",
                "Flow records lost: conntrack events the kernel could not deliver, flows beyond the bound, reports the controller never took",
            )
            .expect("valid metric"),
            dhcp: counter_vec(
                "tessera_agent_dhcp_messages_total",
                "DHCP messages of local endpoints, by what the server did",
                &["result"],
            ),
            nat: counter_vec(
                "tessera_agent_nat_packets_total",
                "Packets translated by this gateway, by external address and direction",
                &["address", "direction"],
            ),
            registry,
        };
        for c in [
            Box::new(m.endpoints.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.networks.clone()),
            Box::new(m.reconciles.clone()),
            Box::new(m.reconcile_seconds.clone()),
            Box::new(m.actions.clone()),
            Box::new(m.failures.clone()),
            Box::new(m.connected.clone()),
            Box::new(m.failovers.clone()),
            Box::new(m.snapshots.clone()),
            Box::new(m.mirror_endpoints.clone()),
            Box::new(m.scope_networks.clone()),
            Box::new(m.revision.clone()),
            Box::new(m.traffic.clone()),
            Box::new(m.flows_active.clone()),
            Box::new(m.flows_recorded.clone()),
            Box::new(m.flows_lost.clone()),
            Box::new(m.dhcp.clone()),
            Box::new(m.nat.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("metrics encode");
        String::from_utf8(out).expect("metrics are text")
    }
}

/// Sets a counter to a value the kernel counts (counters only grow; a
/// device made again starts from zero, which Prometheus reads as a reset).
fn set_counter(c: &IntCounter, value: u64) {
    let now = c.get();
    if value >= now {
        c.inc_by(value - now);
    } else {
        c.reset();
        c.inc_by(value);
    }
}

impl AgentMetrics {
    /// The metrics as Prometheus' text format, with what is read when
    /// scraped: the interfaces (`vifs`), the DHCP server's totals (requests,
    /// acks, naks, ignored), how the mirror stands (connected, failovers,
    /// snapshots, scope) and how many endpoints it holds.
    pub fn text(
        &self,
        vifs: &[VifEntry],
        dhcp: [u64; 4],
        mirror: &tessera_api::mirror::MirrorState,
        mirrored_endpoints: usize,
    ) -> String {
        let m = self;
        m.connected.set(i64::from(mirror.connected));
        set_counter(&m.failovers, mirror.failovers);
        set_counter(&m.snapshots, mirror.snapshots);
        m.mirror_endpoints.set(mirrored_endpoints as i64);
        m.scope_networks.set(match &mirror.scope {
            tessera_api::scope::Scope::Everything => -1,
            tessera_api::scope::Scope::Networks(ids) => ids.len() as i64,
        });
        for v in vifs {
            let device = match v.kind {
                VifKind::Bridge => "bridge",
                VifKind::Tunnel => "tunnel",
                _ => {
                    for t in &v.translations {
                        let a = t.external.to_string();
                        set_counter(&m.nat.with_label_values(&[&a, "in"]), t.in_packets);
                        set_counter(&m.nat.with_label_values(&[&a, "out"]), t.out_packets);
                    }
                    continue;
                }
            };
            let Some(vni) = v.vni else { continue };
            let vni = vni.to_string();
            for (direction, unit, value) in [
                ("rx", "packets", v.rx_packets),
                ("rx", "bytes", v.rx_bytes),
                ("rx", "drops", v.rx_dropped),
                ("tx", "packets", v.tx_packets),
                ("tx", "bytes", v.tx_bytes),
                ("tx", "drops", v.tx_dropped),
            ] {
                set_counter(&m.traffic.with_label_values(&[&vni, device, direction, unit]), value);
            }
        }
        for (result, value) in ["request", "ack", "nak", "ignored"].into_iter().zip(dhcp) {
            set_counter(&m.dhcp.with_label_values(&[result]), value);
        }
        m.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::mirror::MirrorState;

    #[test]
    fn the_mirror_s_connection_and_failovers_are_reported() {
        let m = AgentMetrics::new();
        let mirror = MirrorState { connected: true, failovers: 2, ..Default::default() };
        let text = m.text(&[], [0; 4], &mirror, 7);
        assert!(text.contains("tessera_agent_controller_connected 1"), "{text}");
        assert!(text.contains("tessera_agent_controller_failovers_total 2"), "{text}");
        assert!(text.contains("tessera_agent_mirror_endpoints 7"), "{text}");
        assert!(text.contains("tessera_agent_mirror_scope_networks -1"), "{text}");
        let scope = tessera_api::scope::Scope::own();
        let text = m.text(&[], [0; 4], &MirrorState { failovers: 3, snapshots: 2, scope, ..mirror }, 1);
        assert!(text.contains("tessera_agent_controller_failovers_total 3"), "{text}");
        assert!(text.contains("tessera_agent_mirror_snapshots_total 2"), "{text}");
        assert!(text.contains("tessera_agent_mirror_scope_networks 0"), "{text}");
    }
}
