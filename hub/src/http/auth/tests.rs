use axum::http::{header, HeaderMap, HeaderValue};

use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(*name, HeaderValue::from_str(value).expect("header value"));
    }
    h
}

#[test]
fn the_session_cookie_is_found_among_others() {
    let h = headers(&[("cookie", "theme=dark; outpost_session=abc123; other=1")]);
    assert_eq!(session_cookie(&h), Some("abc123"));
    assert_eq!(
        session_cookie(&headers(&[("cookie", "outpost_sessionx=1")])),
        None
    );
}

#[test]
fn another_origin_or_site_is_cross_origin_and_no_browser_headers_are_not() {
    let host = ("host", "127.0.0.1:8091");
    assert!(!cross_origin(&headers(&[host])));
    assert!(!cross_origin(&headers(&[
        host,
        ("origin", "http://127.0.0.1:8091")
    ])));
    assert!(cross_origin(&headers(&[
        host,
        ("origin", "http://evil.example")
    ])));
    assert!(cross_origin(&headers(&[host, ("origin", "null")])));
    assert!(cross_origin(&headers(&[
        host,
        ("sec-fetch-site", "cross-site")
    ])));
    assert!(cross_origin(&headers(&[
        host,
        ("sec-fetch-site", "same-site")
    ])));
    assert!(!cross_origin(&headers(&[
        host,
        ("sec-fetch-site", "same-origin")
    ])));
}

#[test]
fn sessions_expire_and_are_bounded() {
    let sessions = Sessions::default();
    let (cookie, csrf) = sessions.create(1_000).expect("session");
    assert_ne!(cookie, csrf);
    assert_eq!(cookie.len(), 64);
    assert_eq!(sessions.csrf(&cookie, 2_000), Some(csrf));
    let ttl = u64::try_from(SESSION_TTL.as_millis()).expect("ttl");
    assert_eq!(sessions.csrf(&cookie, 1_000 + ttl), None, "expired");
    for i in 0..(MAX_SESSIONS as u64 + 10) {
        sessions.create(5_000 + i).expect("session");
    }
    let kept = sessions.map.lock().expect("lock").len();
    assert_eq!(kept, MAX_SESSIONS);
    sessions.remove(&cookie);
}

#[test]
fn the_cookie_is_http_only_and_same_site_strict() {
    let v = cookie_header("abc", 60).expect("header");
    let v = v.to_str().expect("ascii");
    assert!(v.contains("HttpOnly") && v.contains("SameSite=Strict") && v.contains("Path=/"));
    let _ = header::SET_COOKIE;
}
