//! The controller's Prometheus metrics (`GET /metrics`, administrators
//! only): API requests and their latency by route, the store's revision,
//! watchers and the events they share, and objects by kind (counted when
//! scraped).

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Every metric of one controller.
pub struct ControllerMetrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub revision: IntGauge,
    pub watchers: IntGauge,
    pub objects: IntGaugeVec,
    /// The watch hub's ring of encoded events shared by the watchers.
    pub watch_ring_events: IntGauge,
    pub watch_ring_bytes: IntGauge,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("tessera_controller_http_requests_total", "API requests answered, by route, method and status"),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "tessera_controller_http_request_duration_seconds",
                "Time to answer an API request, by route and method",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["route", "method"],
        )
        .expect("valid metric");
        let revision = IntGauge::new("tessera_controller_store_revision", "The store's current revision").expect("valid metric");
        let watchers = IntGauge::new("tessera_controller_watchers", "Watch streams open (agents and plugins mirroring)")
            .expect("valid metric");
        let objects = IntGaugeVec::new(Opts::new("tessera_controller_objects", "Objects stored, by kind"), &["kind"])
            .expect("valid metric");
        let watch_ring_events =
            IntGauge::new("tessera_controller_watch_ring_events", "Recent watch events held encoded, shared by every watcher")
                .expect("valid metric");
        let watch_ring_bytes =
            IntGauge::new("tessera_controller_watch_ring_bytes", "Bytes of the recent watch events held encoded")
                .expect("valid metric");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(revision.clone()),
            Box::new(watchers.clone()),
            Box::new(objects.clone()),
            Box::new(watch_ring_events.clone()),
            Box::new(watch_ring_bytes.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        ControllerMetrics { registry, requests, latency, revision, watchers, objects, watch_ring_events, watch_ring_bytes }
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("metrics encode");
        String::from_utf8(out).expect("metrics are text")
    }
}

/// Counts a watch stream while it lives.
pub struct WatcherGuard(IntGauge);

impl WatcherGuard {
    pub fn new(g: &IntGauge) -> Self {
        g.inc();
        WatcherGuard(g.clone())
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
