//! `[router]` in the device config: raw keys, and their validation into
//! [`RouterSettings`] (every problem reported with the others).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::budget::Prices;
use super::{KeySource, RouterSettings};
use crate::answer::MAX_QUESTION_CHARS;

/// `[router]`: every key optional; an empty `upstream_url` means no router.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouter {
    pub upstream_url: Option<String>,
    pub upstream_model: Option<String>,
    pub upstream_key_file: Option<PathBuf>,
    pub upstream_key_env: Option<String>,
    pub upstream_timeout_ms: Option<i64>,
    pub price_prompt_per_mtok: Option<f64>,
    pub price_completion_per_mtok: Option<f64>,
    pub budget_per_day: Option<f64>,
    pub upstream_routes: Option<Vec<String>>,
    pub local_routes: Option<Vec<String>>,
    pub upstream_min_chars: Option<i64>,
    pub upstream_below_score: Option<f64>,
    pub breaker_failures: Option<i64>,
    pub breaker_open_s: Option<i64>,
    pub spend_file: Option<PathBuf>,
}

impl RawRouter {
    /// The settings, `None` without an upstream; problems go to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) -> Option<RouterSettings> {
        let url = self.upstream_url.as_deref().map(str::trim).unwrap_or("");
        if url.is_empty() {
            return None;
        }
        let before = problems.len();
        let url = parse_url(url, problems);
        let model = self
            .upstream_model
            .as_deref()
            .map(str::trim)
            .unwrap_or("")
            .to_owned();
        if model.is_empty() {
            problems.push(
                "router.upstream_model is empty: name the upstream's model (e.g. \"gpt-4o-mini\")"
                    .into(),
            );
        }
        let key_file = self
            .upstream_key_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        let key_env = self
            .upstream_key_env
            .clone()
            .filter(|v| !v.trim().is_empty());
        let key = match (key_file, key_env) {
            (Some(_), Some(_)) => {
                problems.push(
                    "router.upstream_key_file and router.upstream_key_env are both set: keep one"
                        .into(),
                );
                KeySource::None
            }
            (Some(file), None) => KeySource::File(file),
            (None, Some(var)) => KeySource::Env(var),
            (None, None) => KeySource::None,
        };
        if let (Some(url), false) = (&url, key == KeySource::None) {
            let loopback = url.host_str().is_some_and(|h| {
                h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            if url.scheme() == "http" && !loopback {
                problems.push(format!(
                    "router.upstream_url = {url}: an API key would cross the network in clear text; use https://"
                ));
            }
        }
        let mut int = |key: &str, value: Option<i64>, default: i64, min: i64, max: i64| {
            let v = value.unwrap_or(default);
            if (min..=max).contains(&v) {
                v
            } else {
                problems.push(format!(
                    "router.{key} = {v}: must be between {min} and {max}"
                ));
                default
            }
        };
        let timeout_ms = int(
            "upstream_timeout_ms",
            self.upstream_timeout_ms,
            4000,
            100,
            120_000,
        );
        let min_chars = int(
            "upstream_min_chars",
            self.upstream_min_chars,
            0,
            0,
            MAX_QUESTION_CHARS as i64,
        );
        let breaker_failures = int("breaker_failures", self.breaker_failures, 3, 1, 1000);
        let breaker_open_s = int("breaker_open_s", self.breaker_open_s, 30, 1, 86_400);
        let mut money = |key: &str, value: Option<f64>| {
            let v = value.unwrap_or(0.0);
            if v.is_finite() && v >= 0.0 {
                v
            } else {
                problems.push(format!(
                    "router.{key} = {v}: must be a number of at least 0"
                ));
                0.0
            }
        };
        let prices = Prices {
            prompt_per_mtok: money("price_prompt_per_mtok", self.price_prompt_per_mtok),
            completion_per_mtok: money("price_completion_per_mtok", self.price_completion_per_mtok),
        };
        let budget = money("budget_per_day", self.budget_per_day);
        let below = self.upstream_below_score.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&below) {
            problems.push(format!(
                "router.upstream_below_score = {below}: must be between 0 and 1 (0: no confidence rule)"
            ));
        }
        let routes = |v: &Option<Vec<String>>| -> Vec<String> {
            v.iter()
                .flatten()
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect()
        };
        let upstream_routes = routes(&self.upstream_routes);
        let local_routes = routes(&self.local_routes);
        if let Some(both) = upstream_routes.iter().find(|r| local_routes.contains(r)) {
            problems.push(format!(
                "router: route {both:?} is in both upstream_routes and local_routes"
            ));
        }
        if problems.len() > before {
            return None;
        }
        Some(RouterSettings {
            url: url?,
            model,
            key,
            timeout: Duration::from_millis(timeout_ms as u64),
            // The budget is in the prices' currency; kept in millionths.
            budget_per_day_micros: (budget > 0.0).then(|| (budget * 1e6).round() as u64),
            prices,
            upstream_routes,
            local_routes,
            upstream_min_chars: min_chars as usize,
            upstream_below_score: below as f32,
            breaker_failures: breaker_failures as u32,
            breaker_open: Duration::from_secs(breaker_open_s as u64),
            spend_file: self
                .spend_file
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
        })
    }
}

/// An http(s) API root, with a trailing `/` so paths join under it.
fn parse_url(url: &str, problems: &mut Vec<String>) -> Option<reqwest::Url> {
    let with_slash = if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    };
    match reqwest::Url::parse(&with_slash) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {
            Some(u)
        }
        Ok(_) => {
            problems.push(format!(
                "router.upstream_url = {url:?}: must be an http:// or https:// address"
            ));
            None
        }
        Err(e) => {
            problems.push(format!(
                "router.upstream_url = {url:?}: {e} (e.g. \"https://api.example.com/v1\")"
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: &str) -> RawRouter {
        RawRouter {
            upstream_url: Some(url.into()),
            upstream_model: Some("big".into()),
            ..RawRouter::default()
        }
    }

    #[test]
    fn no_url_no_router_and_defaults_otherwise() {
        let mut problems = Vec::new();
        assert!(RawRouter::default().validate(&mut problems).is_none());
        let s = raw("http://127.0.0.1:8081/v1")
            .validate(&mut problems)
            .expect("valid");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            s.url.join("chat/completions").expect("join").as_str(),
            "http://127.0.0.1:8081/v1/chat/completions"
        );
        assert_eq!(s.timeout, Duration::from_secs(4));
        assert_eq!(s.budget_per_day_micros, None);
        assert_eq!(s.breaker_failures, 3);
    }

    #[test]
    fn every_problem_is_named() {
        let mut r = raw("ftp://x");
        r.upstream_model = Some(" ".into());
        r.upstream_timeout_ms = Some(5);
        r.price_prompt_per_mtok = Some(-1.0);
        r.upstream_below_score = Some(2.0);
        r.upstream_routes = Some(vec!["complex".into()]);
        r.local_routes = Some(vec!["complex".into()]);
        let mut problems = Vec::new();
        assert!(r.validate(&mut problems).is_none());
        for needle in [
            "upstream_url",
            "upstream_model",
            "upstream_timeout_ms",
            "price_prompt_per_mtok",
            "upstream_below_score",
            "both upstream_routes and local_routes",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_key_is_refused_over_plain_http_beyond_loopback() {
        let mut r = raw("http://upstream.lan:8080/v1");
        r.upstream_key_env = Some("UPSTREAM_KEY".into());
        let mut problems = Vec::new();
        assert!(r.validate(&mut problems).is_none());
        assert!(problems[0].contains("clear text"), "{problems:?}");

        let mut r = raw("https://upstream.lan/v1");
        r.upstream_key_env = Some("UPSTREAM_KEY".into());
        let mut problems = Vec::new();
        let s = r.validate(&mut problems).expect("https is fine");
        assert_eq!(s.key, KeySource::Env("UPSTREAM_KEY".into()));
        let mut r = raw("http://127.0.0.1:9/v1");
        r.upstream_key_file = Some("/etc/outpost/key".into());
        assert!(r.validate(&mut problems).is_some(), "{problems:?}");
    }
}
