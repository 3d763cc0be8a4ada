//! Prometheus metrics of the device API and engine (`GET /metrics`).
//!
//! Counters and histograms are updated by the HTTP layer as requests finish;
//! engine gauges (queue depth, active sequences, KV cells) are read from
//! [`EngineStats`] at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::{EngineHandle, EngineStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    pub cached_prompt_tokens: Counter,
    pub time_to_first_token: Histogram,
    pub tokens_per_second: Histogram,
    pub request_duration: Histogram,
    queue_depth: Gauge,
    active_sequences: Gauge,
    kv_cells_used: Gauge,
    kv_cells_total: Gauge,
    prefix_hits: Gauge,
    prefix_misses: Gauge,
    prefix_cache_bytes: Gauge,
    /// The model router's (registered whether or not one is configured).
    pub router: crate::router::RouterMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("outpost");
        let m = Self {
            requests: Family::default(),
            errors: Family::default(),
            prompt_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            cached_prompt_tokens: Counter::default(),
            // 5 ms .. ~40 s
            time_to_first_token: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            // 1 .. ~4000 tokens/s
            tokens_per_second: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            request_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            queue_depth: Gauge::default(),
            active_sequences: Gauge::default(),
            kv_cells_used: Gauge::default(),
            kv_cells_total: Gauge::default(),
            prefix_hits: Gauge::default(),
            prefix_misses: Gauge::default(),
            prefix_cache_bytes: Gauge::default(),
            router: crate::router::RouterMetrics::default(),
            registry: Registry::default(),
        };
        m.router.register(&mut registry);
        registry.register("requests", "API requests by route", m.requests.clone());
        registry.register("errors", "Failed requests by error kind", m.errors.clone());
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Completion tokens generated",
            m.completion_tokens.clone(),
        );
        registry.register(
            "cached_prompt_tokens",
            "Prompt tokens restored from the shared-prefix cache",
            m.cached_prompt_tokens.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "From request arrival to the first generated token",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "generation_tokens_per_second",
            "Decode speed of each completed request",
            m.tokens_per_second.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Whole generation requests",
            m.request_duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for a sequence slot",
            m.queue_depth.clone(),
        );
        registry.register(
            "active_sequences",
            "Sequences being decoded",
            m.active_sequences.clone(),
        );
        registry.register(
            "kv_cells_used",
            "KV cache cells in use",
            m.kv_cells_used.clone(),
        );
        registry.register(
            "kv_cells_total",
            "KV cache cells available",
            m.kv_cells_total.clone(),
        );
        registry.register(
            "prefix_cache_hits",
            "Requests whose shared prefix was restored from cache",
            m.prefix_hits.clone(),
        );
        registry.register(
            "prefix_cache_misses",
            "Requests whose shared prefix had to be computed",
            m.prefix_misses.clone(),
        );
        registry.register(
            "prefix_cache_bytes",
            "RAM held by saved prompt prefixes",
            m.prefix_cache_bytes.clone(),
        );
        Self { registry, ..m }
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabel { kind }).inc();
    }

    pub fn request(&self, route: &'static str) {
        self.requests.get_or_create(&RouteLabel { route }).inc();
    }

    /// Prometheus text exposition, with engine gauges read now.
    pub fn render(&self, engine: &EngineHandle) -> String {
        let stats = engine.stats();
        let set = |gauge: &Gauge, v: u64| {
            gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.queue_depth, engine.queue_depth() as u64);
        set(
            &self.active_sequences,
            EngineStats::get(&stats.active_slots),
        );
        set(&self.kv_cells_used, EngineStats::get(&stats.kv_cells_used));
        set(
            &self.kv_cells_total,
            EngineStats::get(&stats.kv_cells_total),
        );
        set(&self.prefix_hits, EngineStats::get(&stats.prefix_hits));
        set(&self.prefix_misses, EngineStats::get(&stats.prefix_misses));
        set(
            &self.prefix_cache_bytes,
            EngineStats::get(&stats.prefix_cache_bytes),
        );
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
