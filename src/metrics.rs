//! The Prometheus metrics every part of the relay updates. Names are part of the external
//! contract (dashboards and alert rules depend on them): see the design's metric list.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub tenant: String,
    /// transient, permanent or auth
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub tenant: String,
    /// ok or error
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

pub struct Metrics {
    registry: Registry,
    pub messages_received: Family<TenantLabel, Counter>,
    pub messages_delivered: Family<TenantLabel, Counter>,
    pub delivery_failures: Family<FailureLabels, Counter>,
    pub messages_bounced: Family<TenantLabel, Counter>,
    pub queue_messages: Gauge,
    pub queue_oldest_age_seconds: Gauge,
    pub token_expiry: Family<TenantLabel, Gauge>,
    pub token_refresh: Family<RefreshLabels, Counter>,
    pub client_secret_expiry: Family<TenantLabel, Gauge>,
    pub smtp_sessions_active: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("authrelay");
        let m = Metrics {
            messages_received: Family::default(),
            messages_delivered: Family::default(),
            delivery_failures: Family::default(),
            messages_bounced: Family::default(),
            queue_messages: Gauge::default(),
            queue_oldest_age_seconds: Gauge::default(),
            token_expiry: Family::default(),
            token_refresh: Family::default(),
            client_secret_expiry: Family::default(),
            smtp_sessions_active: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_received",
            "Messages accepted from local clients",
            m.messages_received.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages accepted by the upstream",
            m.messages_delivered.clone(),
        );
        registry.register(
            "delivery_failures",
            "Failed delivery attempts by kind (transient, permanent, auth)",
            m.delivery_failures.clone(),
        );
        registry.register(
            "messages_bounced",
            "Messages given up on and bounced",
            m.messages_bounced.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in the spool waiting for delivery",
            m.queue_messages.clone(),
        );
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest message waiting for delivery",
            m.queue_oldest_age_seconds.clone(),
        );
        registry.register(
            "token_expiry_timestamp_seconds",
            "When the current access token expires (Unix time)",
            m.token_expiry.clone(),
        );
        registry.register(
            "token_refresh",
            "Token requests by result",
            m.token_refresh.clone(),
        );
        registry.register(
            "client_secret_expiry_timestamp_seconds",
            "When the Azure client secret or certificate expires (Unix time)",
            m.client_secret_expiry.clone(),
        );
        registry.register(
            "smtp_sessions_active",
            "Open SMTP sessions from local clients",
            m.smtp_sessions_active.clone(),
        );
        let build_info: Family<VersionLabel, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "Version of the running binary", build_info);
        Metrics { registry, ..m }
    }

    pub fn tenant(name: &str) -> TenantLabel {
        TenantLabel {
            tenant: name.to_string(),
        }
    }

    pub fn failure(&self, tenant: &str, kind: &str) {
        self.delivery_failures
            .get_or_create(&FailureLabels {
                tenant: tenant.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn refresh(&self, tenant: &str, ok: bool) {
        self.token_refresh
            .get_or_create(&RefreshLabels {
                tenant: tenant.to_string(),
                result: if ok { "ok" } else { "error" }.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition, which Prometheus and `promtool check metrics` read.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
