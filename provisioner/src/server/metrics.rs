//! Prometheus metrics (prometheus-client), served at `GET /metrics` on the HTTPS listener
//! to operators: boot scripts served, enrolments, refusals by reason, request latency,
//! config reloads and the store's size. Label values come from short, fixed sets (a
//! reason code, a route template), never from what a client sent.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// One label: `outcome`, `kind` or `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// The value.
    pub outcome: String,
}

/// A refusal's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// `http` or `https` (or `tftp`).
    pub listener: String,
    /// A short code (`token_expired`, `too_many_connections`, `body_too_large`...).
    pub reason: String,
}

/// A request's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    /// `http` or `https`.
    pub listener: String,
    /// The route template (`/v1/machines/{mac}`), or `other`.
    pub route: String,
    /// The status class: `2xx`, `4xx`...
    pub status: String,
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    /// Boot scripts served, by outcome (`token`, `discovery`, `no_token`).
    pub boots: Family<Outcome, Counter>,
    /// Enrolments, by kind (`machine`, `discovery`).
    pub enrolments: Family<Outcome, Counter>,
    /// proxyDHCP answers, by what was offered (`undionly.kpxe`, `ipxe.efi`, `script`).
    pub pxe_answers: Family<Outcome, Counter>,
    /// Refusals, by listener and reason.
    pub refusals: Family<Reason, Counter>,
    /// Request latency in seconds.
    pub latency: Family<Route, Histogram, fn() -> Histogram>,
    /// `--config-dir` reloads, by outcome (`ok`, `error`).
    pub reloads: Family<Outcome, Counter>,
    /// The store's bytes on disk (set at each scrape).
    pub store_bytes: Gauge,
    /// Machines with a record (set at each scrape).
    pub machines: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("plinth");
        let boots = Family::<Outcome, Counter>::default();
        let enrolments = Family::<Outcome, Counter>::default();
        let pxe_answers = Family::<Outcome, Counter>::default();
        let refusals = Family::<Reason, Counter>::default();
        let latency =
            Family::<Route, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let reloads = Family::<Outcome, Counter>::default();
        let store_bytes = Gauge::default();
        let machines = Gauge::default();
        registry.register(
            "boot_scripts",
            "Boot scripts served, by outcome (token, discovery, no_token)",
            boots.clone(),
        );
        registry.register(
            "enrolments",
            "Certificates issued at enrolment, by kind (machine, discovery)",
            enrolments.clone(),
        );
        registry.register(
            "proxydhcp_answers",
            "proxyDHCP answers to PXE clients, by what was offered (undionly.kpxe, ipxe.efi, script)",
            pxe_answers.clone(),
        );
        registry.register(
            "refusals",
            "Requests, connections and packets refused, by listener and reason",
            refusals.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer, by listener, route and status class",
            latency.clone(),
        );
        registry.register(
            "config_reloads",
            "Reloads of --config-dir, by outcome (ok, error)",
            reloads.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes the store takes on disk",
            store_bytes.clone(),
        );
        registry.register("machines", "Machines with a record", machines.clone());
        Metrics {
            registry,
            boots,
            enrolments,
            pxe_answers,
            refusals,
            latency,
            reloads,
            store_bytes,
            machines,
        }
    }

    /// Counts `outcome` on `family`.
    pub fn count(family: &Family<Outcome, Counter>, outcome: &str) {
        family
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts a refusal.
    pub fn refused(&self, listener: &str, reason: &str) {
        self.refusals
            .get_or_create(&Reason {
                listener: listener.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_carries_every_family() {
        let m = Metrics::new();
        Metrics::count(&m.boots, "token");
        m.refused("https", "token_expired");
        m.latency
            .get_or_create(&Route {
                listener: "https".into(),
                route: "/v1/enroll".into(),
                status: "2xx".into(),
            })
            .observe(0.01);
        m.store_bytes.set(4096);
        let text = m.encode();
        for needle in [
            "plinth_boot_scripts_total{outcome=\"token\"} 1",
            "plinth_refusals_total{listener=\"https\",reason=\"token_expired\"} 1",
            "plinth_request_duration_seconds_bucket{listener=\"https\",route=\"/v1/enroll\",status=\"2xx\",le=",
            "plinth_store_bytes 4096",
        ] {
            assert!(text.contains(needle), "{needle} not in:\n{text}");
        }
    }
}
