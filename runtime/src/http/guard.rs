//! Who may reach which route: the checks that run before any handler.
//!
//! - [`check_host`] (every route): the `Host` must be an IP literal,
//!   `localhost`, or a name in `[server] allowed_hosts`; anything else gets
//!   421. A web page on a DNS-rebinding domain (a name the attacker first
//!   points at its own server, then at 127.0.0.1 or the kiosk's address)
//!   runs in the kiosk's browser with that name as its `Host`, so it never
//!   reaches the API.
//! - [`require_key`] (the `/v1/*` and `/metrics` routes): the API key, when
//!   one is configured.
//! - [`require_admin`] (`/admin/*`): the admin key when `[server] admin_key`
//!   is set, from any peer; without one, only loopback peers. Never the API
//!   key: the kiosk's key is in every kiosk page's reach, the admin's is
//!   not. Requests a browser marks as made by a web page (`Origin`,
//!   `Sec-Fetch-Site` other than `none`) are refused whatever they carry:
//!   no page, the kiosk's own included, administers the device.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// Lower-cased host names, without a trailing dot, that a request may name
/// besides IP literals and `localhost`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    pub fn new(names: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        Self(names.into_iter().map(|n| normalize(n.as_ref())).collect())
    }

    /// True when a request with this `Host` value (`name[:port]`,
    /// `ip[:port]`, `[ipv6][:port]`) may be served.
    pub fn allows(&self, host: &str) -> bool {
        let name = strip_port(host.trim());
        if name.is_empty() {
            return false;
        }
        // An IP literal cannot be rebound: the page's origin is that address.
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = normalize(name);
        // Browsers resolve `localhost` (and its subdomains) to loopback
        // themselves, never through DNS (RFC 6761).
        name == "localhost" || name.ends_with(".localhost") || self.0.contains(&name)
    }
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `host` without its `:port`, and an IPv6 literal without its brackets.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) if tail.is_empty() || is_port(tail) => ip,
            _ => "",
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && is_port(&format!(":{port}")) => name,
        // More than one ':' without brackets: a bare IPv6 literal.
        Some(_) if host.parse::<IpAddr>().is_ok() => host,
        Some(_) => "",
        None => host,
    }
}

fn is_port(tail: &str) -> bool {
    tail.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The host a request names: its `Host` header, or the authority of an
/// absolute (HTTP/2) URI. `None` when it names none, which no browser does.
fn requested_host(request: &Request) -> Option<Result<String, ()>> {
    match request.headers().get(header::HOST) {
        Some(v) => Some(v.to_str().map(str::to_owned).map_err(|_| ())),
        None => request.uri().authority().map(|a| Ok(a.as_str().to_owned())),
    }
}

pub(super) async fn check_host(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = match requested_host(&request) {
        None => true,
        Some(Ok(host)) => app.config.allowed_hosts.allows(&host),
        Some(Err(())) => false,
    };
    if allowed {
        return next.run(request).await;
    }
    app.fail(ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "host_not_allowed",
        "this device does not answer for that host name; use its IP address or add \
         the name to [server] allowed_hosts",
    ))
    .into_response()
}

pub(super) async fn require_key(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = app.config.api_key.as_deref() else {
        return next.run(request).await;
    };
    if bearer_matches(request.headers(), key) {
        return next.run(request).await;
    }
    app.fail(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong API key; send Authorization: Bearer <key>",
    ))
    .into_response()
}

pub(super) async fn require_admin(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if from_a_web_page(request.headers()) {
        return app
            .fail(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_from_browser",
                "admin routes do not answer requests made by web pages",
            ))
            .into_response();
    }
    match app.config.admin_key.as_deref() {
        Some(key) if bearer_matches(request.headers(), key) => next.run(request).await,
        Some(_) => app
            .fail(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "admin_unauthorized",
                "missing or wrong admin key; send Authorization: Bearer <admin_key>",
            ))
            .into_response(),
        None if peer_is_loopback(&request) => next.run(request).await,
        None => app
            .fail(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_loopback_only",
                "admin routes answer only on loopback unless [server] admin_key is set",
            ))
            .into_response(),
    }
}

/// Browsers add `Origin` to every cross-origin request and to same-origin
/// POSTs, and `Sec-Fetch-Site` to everything; `none` is the user typing an
/// address. Tools (curl, the agent) send neither.
fn from_a_web_page(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() != b"none")
}

/// The connection's peer is a loopback address. Unknown peers (a router
/// served without connect info) are not.
fn peer_is_loopback(request: &Request) -> bool {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| peer.ip().to_canonical().is_loopback())
}

fn bearer_matches(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|presented| constant_time_eq(presented.as_bytes(), key.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_and_localhost_are_served_and_other_names_only_when_listed() {
        let hosts = AllowedHosts::new(["Kiosk-7.Shop.Example."]);
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3:80",
            "[::1]:8080",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST:8080",
            "app.localhost",
            "kiosk-7.shop.example",
            "kiosk-7.shop.example.:8080",
        ] {
            assert!(hosts.allows(ok), "{ok} should be served");
        }
        for refused in [
            "rebind.attacker.example",
            "rebind.attacker.example:8080",
            "127.0.0.1.nip.io",
            "localhost.attacker.example",
            "shop.example",
            "",
            ":8080",
            "[::1]x",
            "127.0.0.1:80a",
            "kiosk-7.shop.example:",
        ] {
            assert!(!hosts.allows(refused), "{refused:?} should be refused");
        }
    }

    #[test]
    fn browser_requests_are_recognised_by_their_fetch_headers() {
        let mut headers = HeaderMap::new();
        assert!(!from_a_web_page(&headers));
        headers.insert("sec-fetch-site", "none".parse().unwrap());
        assert!(!from_a_web_page(&headers), "the user typed the address");
        headers.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(from_a_web_page(&headers));
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(from_a_web_page(&headers));
    }

    #[test]
    fn keys_compare_whole() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer adm1n".parse().unwrap());
        assert!(bearer_matches(&headers, "adm1n"));
        assert!(!bearer_matches(&headers, "adm1"));
        assert!(!bearer_matches(&headers, "adm1n!"));
        headers.insert(header::AUTHORIZATION, "adm1n".parse().unwrap());
        assert!(!bearer_matches(&headers, "adm1n"));
    }
}
