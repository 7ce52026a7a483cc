//! NATS publishing figures for `/metrics` (zero while `[nats]` is off).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What the cluster link reports, and the one place it keeps its counts (`/ready` and
/// `/v1/stats` read them back). Cheap to clone: handles to shared values.
#[derive(Debug, Clone, Default)]
pub struct NatsMetrics {
    /// Stream messages (events, lifecycle records) JetStream acknowledged.
    pub published: Counter,
    /// Records dropped because the publish queue (`nats.max_pending`) was full.
    pub unpublished: Counter,
    /// Records waiting to be published.
    pub pending: Gauge,
    /// 1 while publishing succeeds, 0 while NATS is down or failing.
    pub connected: Gauge,
}

impl NatsMetrics {
    /// Fresh figures, registered in `registry` under `nats_*`.
    pub fn registered(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "nats_published",
            "Stream messages (events and lifecycle records) JetStream acknowledged",
            m.published.clone(),
        );
        registry.register(
            "nats_unpublished",
            "Records dropped unpublished because the queue (nats.max_pending) was full",
            m.unpublished.clone(),
        );
        registry.register(
            "nats_pending",
            "Records waiting to be published to NATS",
            m.pending.clone(),
        );
        registry.register(
            "nats_connected",
            "1 while publishing to NATS succeeds, 0 while it fails",
            m.connected.clone(),
        );
        m
    }
}
