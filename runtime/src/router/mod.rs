//! The model router: which model writes a grounded answer, the device's
//! own or a stronger upstream one (`[router]` in the device config).
//!
//! Rules, in order ([`Router::rule`]):
//! 1. the PII scan finds personal data in the question or the history →
//!    local, always: the upstream never sees the text;
//! 2. the prompt set's route is in `local_routes` → local, in
//!    `upstream_routes` → upstream (the explicit "complex" route);
//! 3. the question has at least `upstream_min_chars` characters → upstream;
//! 4. retrieval's best score is below `upstream_below_score` → upstream;
//! 5. otherwise local.
//!
//! A question bound upstream still stays local when the day's budget is
//! spent ([`budget`]) or the circuit breaker is open ([`breaker`]); and
//! when the upstream fails before its first token, within
//! `upstream_timeout_ms`, the local model answers it. Every routed answer
//! carries a [`Routing`]: who answered, why, the upstream's tokens and
//! cost, or for a local answer what it would have cost upstream.
//!
//! What the upstream sees is exactly what the local model would: the
//! prompt set's rendered messages (system prompt, examples, the retrieved
//! sources and the question).

pub mod breaker;
pub mod budget;
pub mod config;
pub mod upstream;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outpost_prompts::Message;
use outpost_protocol::{find_pii, AnsweredBy, RouteReason, RoutedAnswer, Seq};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use self::breaker::{Admission, Breaker, BreakerState, FailureKind};
use self::budget::{Budget, Prices};
use self::upstream::{estimate_tokens, Piece, Upstream, UpstreamError};
use crate::answer::AnswerDelta;
use crate::engine::ChatMessage;

/// The validated `[router]` section.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// The upstream API root, e.g. `https://api.example/v1/`.
    pub url: reqwest::Url,
    pub model: String,
    /// Where the API key comes from; the binary reads it.
    pub key: KeySource,
    /// Until the upstream's first token; past it the device answers.
    pub timeout: Duration,
    pub budget_per_day_micros: Option<u64>,
    pub prices: Prices,
    pub upstream_routes: Vec<String>,
    pub local_routes: Vec<String>,
    /// 0: no length rule.
    pub upstream_min_chars: usize,
    /// 0: no confidence rule.
    pub upstream_below_score: f32,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    /// Today's upstream spend; `None`: the data folder's `router-spend.json`.
    pub spend_file: Option<PathBuf>,
}

/// Where the upstream's API key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    None,
    File(PathBuf),
    Env(String),
}

/// What the router did with one answer: the fleet's own record of it,
/// whose `answer_seq` the agent sets when it records the answer.
pub type Routing = RoutedAnswer;

/// Where a question is to be answered, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub target: AnsweredBy,
    pub reason: RouteReason,
}

impl Decision {
    fn local(reason: RouteReason) -> Self {
        Self {
            target: AnsweredBy::Local,
            reason,
        }
    }
    fn upstream(reason: RouteReason) -> Self {
        Self {
            target: AnsweredBy::Upstream,
            reason,
        }
    }
}

/// What the rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub text: &'a str,
    pub history: &'a [Message],
    /// The prompt set's route for it.
    pub route: &'a str,
    /// Retrieval's best similarity.
    pub top_score: Option<f32>,
}

/// An upstream answer.
#[derive(Debug, Clone)]
pub struct UpstreamAnswer {
    pub text: String,
    pub time_to_first_token: Duration,
    pub routing: Routing,
}

/// Why the upstream gave no answer.
#[derive(Debug)]
pub enum UpstreamFailure {
    /// Nothing was shown yet: answer locally (reason `upstream_failed`).
    Fallback(UpstreamError),
    /// Text was already streamed to the customer: the answer fails.
    MidAnswer(UpstreamError),
    /// The customer left.
    Cancelled,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    model: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The router's Prometheus metrics, registered into the device's registry.
#[derive(Clone, Debug)]
pub struct RouterMetrics {
    decisions: Family<DecisionLabel, Counter>,
    upstream_errors: Family<KindLabel, Counter>,
    upstream_first_token: Histogram,
    breaker_state: Gauge,
    upstream_cost_micros: Counter,
    budget_spent_micros: Gauge,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self {
            decisions: Family::default(),
            upstream_errors: Family::default(),
            // 10 ms .. ~80 s
            upstream_first_token: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            breaker_state: Gauge::default(),
            upstream_cost_micros: Counter::default(),
            budget_spent_micros: Gauge::default(),
        }
    }
}

impl RouterMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "router_decisions",
            "Routed answers by the model that wrote them and why",
            self.decisions.clone(),
        );
        registry.register(
            "router_upstream_errors",
            "Failed upstream calls by kind (unreachable, status, protocol)",
            self.upstream_errors.clone(),
        );
        registry.register(
            "router_upstream_first_token_seconds",
            "From sending a question upstream to its first token",
            self.upstream_first_token.clone(),
        );
        registry.register(
            "router_breaker_state",
            "The upstream's circuit breaker: 0 closed, 1 open, 2 half-open",
            self.breaker_state.clone(),
        );
        registry.register(
            "router_upstream_cost_micros",
            "What upstream answers cost, in millionths of the configured currency",
            self.upstream_cost_micros.clone(),
        );
        registry.register(
            "router_budget_spent_micros",
            "Today's upstream spend (UTC day)",
            self.budget_spent_micros.clone(),
        );
    }
}

struct RouterState {
    breaker: Breaker,
    budget: Budget,
}

/// The router; shared by every answer (cheap to clone).
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RouterSettings,
    upstream: Upstream,
    /// Held only to read or update the breaker and budget, never across a
    /// wait.
    state: Mutex<RouterState>,
    metrics: RouterMetrics,
}

impl Router {
    /// A router to `settings.url`, authenticating with `key` (read by the
    /// caller from `settings.key`), its spend kept in `spend_file`.
    pub fn new(
        settings: RouterSettings,
        key: Option<String>,
        spend_file: PathBuf,
        metrics: RouterMetrics,
    ) -> Result<Self, String> {
        let upstream = Upstream::new(&settings.url, settings.model.clone(), key)?;
        let state = RouterState {
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_open),
            budget: Budget::open(
                settings.budget_per_day_micros,
                Some(spend_file),
                now_unix_ms(),
            ),
        };
        metrics
            .budget_spent_micros
            .set(gauge_value(state.budget.spent_micros()));
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                upstream,
                state: Mutex::new(state),
                metrics,
            }),
        })
    }

    /// What the rules say, before budget and breaker.
    pub fn rule(&self, q: &Question<'_>) -> Decision {
        let s = &self.inner.settings;
        let personal = !find_pii(q.text).is_empty()
            || q.history.iter().any(|m| !find_pii(&m.content).is_empty());
        if personal {
            return Decision::local(RouteReason::PersonalData);
        }
        if s.local_routes.iter().any(|r| r == q.route) {
            return Decision::local(RouteReason::Route);
        }
        if s.upstream_routes.iter().any(|r| r == q.route) {
            return Decision::upstream(RouteReason::Route);
        }
        if s.upstream_min_chars > 0 && q.text.chars().count() >= s.upstream_min_chars {
            return Decision::upstream(RouteReason::LongQuestion);
        }
        if s.upstream_below_score > 0.0 && q.top_score.is_some_and(|t| t < s.upstream_below_score) {
            return Decision::upstream(RouteReason::LowConfidence);
        }
        Decision::local(RouteReason::NoRule)
    }

    /// Where `q` is answered now: the rules, then the budget and the
    /// breaker. May start the breaker's background probe.
    pub fn decide(&self, q: &Question<'_>) -> Decision {
        let rule = self.rule(q);
        if rule.target == AnsweredBy::Local {
            return rule;
        }
        let admission = {
            let mut state = self.lock();
            if !state.budget.allows(now_unix_ms()) {
                return Decision::local(RouteReason::BudgetSpent);
            }
            state.breaker.admit(Instant::now())
        };
        match admission {
            Admission::Allow => rule,
            Admission::Deny => Decision::local(RouteReason::BreakerOpen),
            Admission::DenyAndProbe => {
                self.publish_breaker(BreakerState::HalfOpen);
                self.spawn_probe();
                Decision::local(RouteReason::BreakerOpen)
            }
        }
    }

    /// The routing record of a local answer of `prompt` + `completion`
    /// tokens, made for `reason`.
    pub fn local(&self, reason: RouteReason, prompt: u32, completion: u32) -> Routing {
        self.count(AnsweredBy::Local, reason);
        Routing {
            answer_seq: Seq::default(),
            answered_by: AnsweredBy::Local,
            reason,
            upstream_prompt_tokens: 0,
            upstream_completion_tokens: 0,
            cost_micros: 0,
            avoided_cost_micros: self.inner.settings.prices.cost_micros(prompt, completion),
        }
    }

    /// Asks the upstream, streaming its text into `deltas`. Fails with
    /// [`UpstreamFailure::Fallback`] when nothing came within the
    /// timeout (the caller answers locally), having told the breaker.
    pub async fn answer_upstream(
        &self,
        reason: RouteReason,
        messages: &[ChatMessage],
        max_tokens: u32,
        temperature: f32,
        deltas: Option<&mpsc::Sender<AnswerDelta>>,
    ) -> Result<UpstreamAnswer, UpstreamFailure> {
        let timeout = self.inner.settings.timeout;
        let started = Instant::now();
        let fallback = |e: UpstreamError| {
            self.failed(&e);
            UpstreamFailure::Fallback(e)
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let within = |what: &'static str| {
            move |_| UpstreamError::Unreachable(format!("no {what} within {timeout:?}"))
        };
        let mut reply = tokio::time::timeout_at(
            deadline,
            self.inner.upstream.start(messages, max_tokens, temperature),
        )
        .await
        .map_err(within("reply"))
        .and_then(|r| r)
        .map_err(fallback)?;
        let first = tokio::time::timeout_at(deadline, reply.next())
            .await
            .map_err(within("first token"))
            .and_then(|r| r)
            .map_err(fallback)?;
        let time_to_first_token = started.elapsed();
        self.inner
            .metrics
            .upstream_first_token
            .observe(time_to_first_token.as_secs_f64());
        let mut text = String::new();
        let mut piece = first;
        let usage = loop {
            match piece {
                Piece::Text(t) => {
                    if let Some(d) = deltas {
                        d.send(AnswerDelta::Text(t.clone()))
                            .await
                            .map_err(|_| UpstreamFailure::Cancelled)?;
                    }
                    text.push_str(&t);
                }
                Piece::Done { usage } => break usage,
            }
            // Later pieces each get the same bound: a stalled stream ends.
            piece = match tokio::time::timeout(timeout, reply.next()).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Err(self.mid_answer(e, deltas.is_some(), text)),
                Err(_) => {
                    let e =
                        UpstreamError::Unreachable(format!("the stream stalled for {timeout:?}"));
                    return Err(self.mid_answer(e, deltas.is_some(), text));
                }
            };
        };
        let (prompt, completion) = usage.unwrap_or_else(|| {
            let prompt: String = messages.iter().map(|m| m.content.as_str()).collect();
            (estimate_tokens(&prompt), estimate_tokens(&text))
        });
        let cost = self.inner.settings.prices.cost_micros(prompt, completion);
        {
            let mut state = self.lock();
            state.breaker.success();
            state.budget.charge(cost, now_unix_ms());
            self.inner
                .metrics
                .budget_spent_micros
                .set(gauge_value(state.budget.spent_micros()));
        }
        self.publish_breaker(BreakerState::Closed);
        self.inner.metrics.upstream_cost_micros.inc_by(cost);
        self.count(AnsweredBy::Upstream, reason);
        Ok(UpstreamAnswer {
            text,
            time_to_first_token,
            routing: Routing {
                answer_seq: Seq::default(),
                answered_by: AnsweredBy::Upstream,
                reason,
                upstream_prompt_tokens: prompt,
                upstream_completion_tokens: completion,
                cost_micros: cost,
                avoided_cost_micros: 0,
            },
        })
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.lock().breaker.state()
    }

    /// A failure after text: when nothing was streamed yet (a whole
    /// answer), the local model can still answer.
    fn mid_answer(&self, e: UpstreamError, streamed: bool, text: String) -> UpstreamFailure {
        self.failed(&e);
        if streamed && !text.is_empty() {
            UpstreamFailure::MidAnswer(e)
        } else {
            UpstreamFailure::Fallback(e)
        }
    }

    fn failed(&self, e: &UpstreamError) {
        tracing::warn!(error = %e, "upstream failed");
        self.inner
            .metrics
            .upstream_errors
            .get_or_create(&KindLabel { kind: e.label() })
            .inc();
        let kind = match e {
            UpstreamError::Unreachable(_) => FailureKind::Unreachable,
            _ => FailureKind::Error,
        };
        let state = {
            let mut state = self.lock();
            state.breaker.failure(kind, Instant::now());
            state.breaker.state()
        };
        self.publish_breaker(state);
    }

    fn spawn_probe(&self) {
        let router = self.clone();
        tokio::spawn(async move {
            let healthy = router
                .inner
                .upstream
                .probe(router.inner.settings.timeout)
                .await;
            tracing::info!(healthy, "upstream probe");
            let state = {
                let mut state = router.lock();
                state.breaker.probe_result(healthy, Instant::now());
                state.breaker.state()
            };
            router.publish_breaker(state);
        });
    }

    fn count(&self, model: AnsweredBy, reason: RouteReason) {
        self.inner
            .metrics
            .decisions
            .get_or_create(&DecisionLabel {
                model: match model {
                    AnsweredBy::Upstream => "upstream",
                    _ => "local",
                },
                reason: reason_label(reason),
            })
            .inc();
    }

    fn publish_breaker(&self, state: BreakerState) {
        self.inner.metrics.breaker_state.set(state as i64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        // The state is two small structs updated in place; a panic while
        // holding it cannot leave them half-written.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The stable label of a routing reason (metrics, answers' JSON, the hub).
pub fn reason_label(reason: RouteReason) -> &'static str {
    match reason {
        RouteReason::PersonalData => "personal_data",
        RouteReason::Route => "route",
        RouteReason::LongQuestion => "long_question",
        RouteReason::LowConfidence => "low_confidence",
        RouteReason::NoRule => "no_rule",
        RouteReason::BreakerOpen => "breaker_open",
        RouteReason::BudgetSpent => "budget_spent",
        RouteReason::UpstreamFailed => "upstream_failed",
        _ => "other",
    }
}

fn gauge_value(micros: u64) -> i64 {
    i64::try_from(micros).unwrap_or(i64::MAX)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RouterSettings {
        RouterSettings {
            url: "http://127.0.0.1:9/v1/".parse().expect("url"),
            model: "big".into(),
            key: KeySource::None,
            timeout: Duration::from_millis(300),
            budget_per_day_micros: None,
            prices: Prices {
                prompt_per_mtok: 1.0,
                completion_per_mtok: 2.0,
            },
            upstream_routes: vec!["complex".into()],
            local_routes: vec!["technical".into()],
            upstream_min_chars: 80,
            upstream_below_score: 0.5,
            breaker_failures: 3,
            breaker_open: Duration::from_secs(30),
            spend_file: None,
        }
    }

    fn router(dir: &std::path::Path) -> Router {
        Router::new(
            settings(),
            None,
            dir.join("spend.json"),
            RouterMetrics::default(),
        )
        .expect("router")
    }

    fn ask<'a>(text: &'a str, route: &'a str, top: f32) -> Question<'a> {
        Question {
            text,
            history: &[],
            route,
            top_score: Some(top),
        }
    }

    #[test]
    fn personal_data_stays_local_whatever_else_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = router(dir.path());
        let pii =
            "My card 4111 1111 1111 1111 was charged twice, please explain the complex billing";
        assert_eq!(
            r.rule(&ask(pii, "complex", 0.1)),
            Decision::local(RouteReason::PersonalData)
        );
        let history = [Message {
            role: "user".into(),
            content: "mail me at jo@example.com".into(),
        }];
        let q = Question {
            history: &history,
            ..ask("and the warranty?", "complex", 0.9)
        };
        assert_eq!(r.rule(&q), Decision::local(RouteReason::PersonalData));
    }

    #[test]
    fn rules_apply_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = router(dir.path());
        let long = "x".repeat(90);
        assert_eq!(
            r.rule(&ask(&long, "technical", 0.1)),
            Decision::local(RouteReason::Route),
            "a local route wins over length and confidence"
        );
        assert_eq!(
            r.rule(&ask("short", "complex", 0.9)),
            Decision::upstream(RouteReason::Route)
        );
        assert_eq!(
            r.rule(&ask(&long, "general", 0.9)),
            Decision::upstream(RouteReason::LongQuestion)
        );
        assert_eq!(
            r.rule(&ask("short", "general", 0.4)),
            Decision::upstream(RouteReason::LowConfidence)
        );
        assert_eq!(
            r.rule(&ask("short", "general", 0.6)),
            Decision::local(RouteReason::NoRule)
        );
    }

    #[tokio::test]
    async fn an_unreachable_upstream_falls_back_within_the_timeout_then_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A listener that accepts and never answers: a black hole.
        let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut s = settings();
        s.url = format!("http://{}/v1/", hole.local_addr().expect("addr"))
            .parse()
            .expect("url");
        let r = Router::new(
            s,
            None,
            dir.path().join("spend.json"),
            RouterMetrics::default(),
        )
        .expect("router");
        let q = ask("short", "complex", 0.9);
        assert_eq!(r.decide(&q).target, AnsweredBy::Upstream);
        let started = Instant::now();
        let messages = [ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }];
        let failure = r
            .answer_upstream(RouteReason::Route, &messages, 8, 0.0, None)
            .await
            .expect_err("nothing answers");
        let waited = started.elapsed();
        assert!(matches!(
            failure,
            UpstreamFailure::Fallback(UpstreamError::Unreachable(_))
        ));
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        assert_eq!(r.breaker_state(), BreakerState::Open);
        assert_eq!(
            r.decide(&q),
            Decision::local(RouteReason::BreakerOpen),
            "the next question does not wait"
        );
        drop(hole);
    }
}
