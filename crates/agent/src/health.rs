//! The health of this host's service instances: every [`CHECK_EVERY`], each
//! local service port is checked (its host-side link is there and its
//! container side is up; with the service's probe, its address answers a
//! ping or accepts a TCP connection from the host, through the network's
//! table) and the result, with the port's traffic, is reported to the
//! controller (`PUT /v1/endpoints/{id}/health`) when it changes, and the
//! traffic at most every [`TRAFFIC_EVERY`]. Every host takes an unhealthy
//! instance out of its chains when the report reaches it, so a failed
//! instance leaves the chain within about a second.
//!
//! A link that goes down is unhealthy at once; a probe must fail
//! [`PROBE_FAILURES`] times in a row (one lost ping is not a failure).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_api::ControllerClient;
use tessera_dataplane::desired::{host_veth_name, table_id};
use tessera_dataplane::Dataplane;
use tessera_model::watch::Snapshot;
use tessera_model::{EndpointStatus, Health, HealthReport, PortTraffic, Probe, Service};
use tokio::sync::watch;
use uuid::Uuid;

/// How often each local service port is checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a probe waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// Failed probes in a row that make a port unhealthy.
pub const PROBE_FAILURES: u32 = 2;
/// Traffic alone is reported at most this often.
pub const TRAFFIC_EVERY: Duration = Duration::from_secs(2);

/// What was last reported for a port, and its probe failures in a row.
#[derive(Default)]
struct PortState {
    reported: Option<(Health, PortTraffic)>,
    at: Option<Instant>,
    failures: u32,
}

/// Checks and reports until the agent stops.
pub async fn run(snapshot: watch::Receiver<Option<Arc<Snapshot>>>, dp: Arc<dyn Dataplane>, client: ControllerClient, me: String) {
    let client = client.with_attempts(1);
    let mut states: HashMap<Uuid, PortState> = HashMap::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(snap) = snapshot.borrow().clone() else { continue };
        let ports: Vec<_> = snap
            .endpoints
            .iter()
            .filter(|e| e.host == me && e.owner.service.is_some() && e.status == EndpointStatus::Active)
            .collect();
        states.retain(|id, _| ports.iter().any(|p| p.id == *id));
        if ports.is_empty() {
            continue;
        }
        let vifs = match dp.interfaces().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the interfaces to check service ports");
                continue;
            }
        };
        for port in ports {
            let service: Option<&Service> =
                port.owner.service.as_ref().and_then(|sp| snap.services.iter().find(|s| s.id == sp.service));
            let vni = snap.networks.iter().find(|n| n.id == port.network).map(|n| n.vni);
            let vif = vifs.iter().find(|v| v.name == host_veth_name(port.id));
            let state = states.entry(port.id).or_default();
            let (traffic, link) = match vif {
                None => (PortTraffic::default(), Err("its host interface is gone".to_string())),
                Some(v) => {
                    // The host side receives what the instance sends.
                    let traffic = PortTraffic {
                        packets_in: v.tx_packets,
                        bytes_in: v.tx_bytes,
                        packets_out: v.rx_packets,
                        bytes_out: v.rx_bytes,
                    };
                    let up = v.flags.iter().any(|f| f == "lower_up");
                    (traffic, if up { Ok(()) } else { Err("its interface in the instance is down".to_string()) })
                }
            };
            let verdict = match (link, service.and_then(|s| s.probe), vni) {
                (Err(why), _, _) => Err(why),
                (Ok(()), Some(probe), Some(vni)) => {
                    let address = port.ips.first().map(|n| n.addr());
                    match address {
                        Some(a) => match check(probe, a, table_id(vni)).await {
                            Ok(()) => {
                                state.failures = 0;
                                Ok(())
                            }
                            Err(why) => {
                                state.failures += 1;
                                if state.failures >= PROBE_FAILURES {
                                    Err(format!("{probe} probe of {a}: {why}"))
                                } else {
                                    // One miss: keep what was reported.
                                    state.reported.as_ref().map_or(Ok(()), |(h, _)| match h.healthy {
                                        true => Ok(()),
                                        false => Err(h.message.clone().unwrap_or_default()),
                                    })
                                }
                            }
                        },
                        None => Err("it has no address to probe".to_string()),
                    }
                }
                (Ok(()), _, _) => Ok(()),
            };
            let health = match verdict {
                Ok(()) => Health { healthy: true, message: None },
                Err(why) => Health { healthy: false, message: Some(why) },
            };
            let changed = state.reported.as_ref().is_none_or(|(h, _)| *h != health) || port.health.as_ref() != Some(&health);
            let traffic_due = state.reported.as_ref().is_some_and(|(_, t)| *t != traffic)
                && state.at.is_none_or(|at| at.elapsed() >= TRAFFIC_EVERY);
            if !(changed || traffic_due) {
                continue;
            }
            let report = HealthReport { health: health.clone(), traffic };
            // To every controller: the traffic is kept in memory by each; the
            // health is written to the store by the first, the others find it
            // there unchanged.
            let path = format!("/v1/endpoints/{}/health", port.id);
            match client.report_to_each(reqwest::Method::PUT, &path, &report).await {
                Ok(()) => {
                    if changed {
                        tracing::info!(endpoint = %port.name, healthy = health.healthy, reason = ?health.message, "service port health");
                    }
                    state.reported = Some((health, traffic));
                    state.at = Some(Instant::now());
                }
                Err(e) => tracing::debug!(endpoint = %port.name, error = %e, "cannot report service port health"),
            }
        }
    }
}

/// One probe of `address` from this host, routed by table `mark`.
async fn check(probe: Probe, address: IpAddr, mark: u32) -> Result<(), String> {
    match probe {
        Probe::Tcp(port) => {
            let socket = match address {
                IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .map_err(|e| e.to_string())?;
            socket2::SockRef::from(&socket).set_mark(mark).map_err(|e| format!("cannot mark the probe: {e}"))?;
            match tokio::time::timeout(PROBE_TIMEOUT, socket.connect(SocketAddr::new(address, port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer".into()),
            }
        }
        Probe::Ping => {
            let wait = format!("{:.1}", PROBE_TIMEOUT.as_secs_f32());
            let out = tokio::process::Command::new("ping")
                .args(["-n", "-q", "-c", "1", "-W", &wait, "-m", &mark.to_string(), &address.to_string()])
                .output()
                .await
                .map_err(|e| format!("cannot run ping: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err("no answer".into())
            }
        }
    }
}
