//! Where the agent may download artifacts from: the hub's configured base.
//! A signed desired state names the URLs, but a hub misconfiguration (or an
//! operator tool that signs) must still not send the device to another host.
//!
//! [`ArtifactBase::allows`] matches scheme, host, port and path prefix and
//! refuses userinfo, `.`/`..` segments (also percent-encoded) and
//! backslashes, so no URL that merely *starts* like the base passes.

/// Why a base URL did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("artifact base URL {url:?}: {reason}")]
pub struct BaseError {
    url: String,
    reason: &'static str,
}

/// The allowed download location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactBase {
    /// `None`: http or https.
    scheme: Option<String>,
    host: String,
    /// `None`: any port (a base derived from the broker's host only).
    port: Option<u16>,
    /// Ends with `/`.
    path_prefix: String,
}

struct Parts<'a> {
    scheme: &'a str,
    host: String,
    port: Option<u16>,
    path: &'a str,
}

fn split(url: &str) -> Result<Parts<'_>, &'static str> {
    let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
    if scheme != "http" && scheme != "https" {
        return Err("not http or https");
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err("userinfo is not allowed");
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            (host, Some(port.parse::<u16>().map_err(|_| "bad port")?))
        }
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err("no host");
    }
    let default = if scheme == "https" { 443 } else { 80 };
    Ok(Parts {
        scheme,
        host: host.to_ascii_lowercase(),
        port: Some(port.unwrap_or(default)),
        path: if path.is_empty() { "/" } else { path },
    })
}

impl ArtifactBase {
    /// An exact base, e.g. `https://hub.lan:8443/` (`[agent] artifact_base_url`).
    pub fn parse(url: &str) -> Result<Self, BaseError> {
        let bad = |reason| BaseError {
            url: url.to_owned(),
            reason,
        };
        let parts = split(url).map_err(bad)?;
        if parts.path.contains(['?', '#']) {
            return Err(bad("a base has no query or fragment"));
        }
        let mut path_prefix = parts.path.to_owned();
        if !path_prefix.ends_with('/') {
            path_prefix.push('/');
        }
        Ok(Self {
            scheme: Some(parts.scheme.to_owned()),
            host: parts.host,
            port: parts.port,
            path_prefix,
        })
    }

    /// The default when no base is configured: the broker's host (the hub
    /// serves both), any port and path, http or https (the hub's public URL
    /// may carry a port and path prefix the agent cannot know).
    pub fn hub_host(host: &str) -> Self {
        Self {
            scheme: None,
            host: host.to_ascii_lowercase(),
            port: None,
            path_prefix: "/".into(),
        }
    }

    /// `Ok` when `url` is under this base; otherwise why not.
    pub fn allows(&self, url: &str) -> Result<(), &'static str> {
        let parts = split(url)?;
        if self.scheme.as_deref().is_some_and(|s| s != parts.scheme) {
            return Err("another scheme than the artifact base");
        }
        if parts.host != self.host {
            return Err("another host than the artifact base");
        }
        if self.port.is_some() && parts.port != self.port {
            return Err("another port than the artifact base");
        }
        let path = parts.path.split(['?', '#']).next().unwrap_or("");
        if path.contains('\\') {
            return Err("a backslash in the path");
        }
        let lower = path.to_ascii_lowercase();
        for segment in lower.split('/') {
            let decoded = segment.replace("%2e", ".");
            if decoded == "." || decoded == ".." || segment.contains("%2f") {
                return Err("a dot segment or encoded slash in the path");
            }
        }
        if !path.starts_with(&self.path_prefix) {
            return Err("outside the artifact base path");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_urls_under_the_base_are_allowed() {
        let base = ArtifactBase::parse("https://hub.lan:8443/outpost").expect("base");
        assert!(base
            .allows("https://hub.lan:8443/outpost/artifacts/sha256/ab")
            .is_ok());
        assert!(base.allows("https://HUB.lan:8443/outpost/x").is_ok());
        for bad in [
            "https://evil.example/outpost/x",
            "http://hub.lan:8443/outpost/x",
            "https://hub.lan/outpost/x",
            "https://hub.lan:8444/outpost/x",
            "https://hub.lan:8443/outpostx/y",
            "https://hub.lan:8443/other/x",
            "https://hub.lan:8443/outpost/../admin",
            "https://hub.lan:8443/outpost/%2E%2e/admin",
            "https://hub.lan:8443/outpost/a%2fb",
            "https://user@hub.lan:8443/outpost/x",
            "https://hub.lan:8443@evil.example/outpost/x",
            "https://hub.lan:8443/outpost\\..\\x",
        ] {
            assert!(base.allows(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_base_from_the_broker_host_allows_any_port_on_that_host() {
        let base = ArtifactBase::hub_host("127.0.0.1");
        assert!(base
            .allows("http://127.0.0.1:41234/artifacts/sha256/ab")
            .is_ok());
        assert!(base.allows("http://127.0.0.2:41234/artifacts/x").is_err());
        assert!(base.allows("http://127.0.0.1:41234/a/../x").is_err());
    }
}
