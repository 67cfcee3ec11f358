//! What the layer, its services and their response futures share: the token cache and the
//! settings a request needs (the origin tokens may go to, the statuses that mean "rejected").

use std::net::IpAddr;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, StatusCode, Uri, header};

use crate::error::Error;
use crate::rejection::Routes;
use crate::token::Cache;

/// The cache and the settings; futures hold it by `Arc` while they may need it.
pub(crate) struct Shared {
    pub(crate) cache: Arc<Cache>,
    pub(crate) api_url: Uri,
    pub(crate) origin: Origin,
    pub(crate) refresh_on: Vec<StatusCode>,
    pub(crate) replay_body_limit: usize,
    /// Routes whose rejections force no refresh.
    pub(crate) routes: Routes,
}

/// A handle to the shared state held by the layer and its services. When the last one is
/// dropped the refresher stops, while requests already in flight finish their work.
pub(crate) struct Handle(pub(crate) Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.cache.shutdown();
    }
}

/// The scheme, host and port tokens may be sent to.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// Lowercase.
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of `api_url`: https, or plain http on loopback only.
    pub(crate) fn parse(uri: &Uri) -> Result<Self, Error> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(Error::config(format!(
                    "api_url `{uri}` must start with https:// (or http:// on loopback)"
                )));
            }
        };
        let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
            return Err(Error::config(format!("api_url `{uri}` has no host")));
        };
        let host = host.to_ascii_lowercase();
        if !https && !is_loopback(&host) {
            return Err(Error::config(format!(
                "api_url `{uri}` would send the credentials in clear text: use https:// (http:// is allowed only on loopback)"
            )));
        }
        let scheme = if https { Scheme::HTTPS } else { Scheme::HTTP };
        Ok(Self {
            port: uri.port_u16().unwrap_or_else(|| default_port(&scheme)),
            scheme,
            authority: authority.clone(),
            host,
        })
    }

    /// Whether `request` goes to this origin. A path-only URI is resolved against the origin
    /// (scheme and authority filled in), unless its `Host` header names another host: then it
    /// is not this origin's, and is left as it is.
    pub(crate) fn admits<B>(&self, request: &mut Request<B>) -> bool {
        let uri = request.uri();
        if let Some(authority) = uri.authority() {
            // Spelled byte for byte as `api_url` spells it (the usual case, and a plain
            // compare), or else compared part by part, the host in any case.
            let same = authority.as_str() == self.authority.as_str();
            return (same && uri.scheme() == Some(&self.scheme))
                || self.matches(uri.scheme(), uri.host(), uri.port_u16());
        }
        if let Some(host) = request.headers().get(header::HOST) {
            let named = Authority::try_from(host.as_bytes()).ok();
            let ours = named
                .is_some_and(|a| self.matches(Some(&self.scheme), Some(a.host()), a.port_u16()));
            if !ours {
                return false;
            }
        }
        let mut parts = uri.clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        match Uri::from_parts(parts) {
            Ok(resolved) => {
                *request.uri_mut() = resolved;
                true
            }
            // Cannot happen with a valid origin and path; such a request is not ours.
            Err(_) => false,
        }
    }

    fn matches(&self, scheme: Option<&Scheme>, host: Option<&str>, port: Option<u16>) -> bool {
        let (Some(scheme), Some(host)) = (scheme, host) else {
            return false;
        };
        *scheme == self.scheme
            && port.unwrap_or_else(|| default_port(scheme)) == self.port
            && host.eq_ignore_ascii_case(&self.host)
    }
}

fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTPS { 443 } else { 80 }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admits(origin: &Origin, uri: &str, host: Option<&str>) -> Option<Uri> {
        let mut request = Request::get(uri).body(()).unwrap();
        if let Some(host) = host {
            let host = host.parse().unwrap();
            request.headers_mut().insert(header::HOST, host);
        }
        origin.admits(&mut request).then(|| request.uri().clone())
    }

    #[test]
    fn absolute_uris_match_scheme_host_and_port() {
        let origin = Origin::parse(&Uri::from_static("https://api.lengow.io")).unwrap();
        for yes in [
            "https://api.lengow.io/v3.0/orders",
            "https://API.lengow.io:443/x",
        ] {
            assert!(admits(&origin, yes, None).is_some(), "{yes}");
        }
        for no in [
            "http://api.lengow.io/v3.0/orders",
            "https://api.lengow.io:8443/x",
            "https://evil.example/x",
            "https://api.lengow.io.evil.example/x",
        ] {
            assert!(admits(&origin, no, None).is_none(), "{no}");
        }
        let local = Origin::parse(&Uri::from_static("http://127.0.0.1:40123")).unwrap();
        assert!(admits(&local, "http://127.0.0.1:40123/", None).is_some());
        assert!(admits(&local, "http://127.0.0.1:40124/", None).is_none());
        assert!(admits(&local, "http://localhost:40123/", None).is_none());
    }

    #[test]
    fn path_only_uris_are_resolved_unless_the_host_header_names_another_host() {
        let origin = Origin::parse(&Uri::from_static("https://api.lengow.io")).unwrap();
        let resolved = admits(&origin, "/v3.0/orders?account_id=1", None).unwrap();
        assert_eq!(resolved, "https://api.lengow.io/v3.0/orders?account_id=1");
        let resolved = admits(&origin, "/x", Some("API.lengow.io:443")).unwrap();
        assert_eq!(resolved, "https://api.lengow.io/x");
        assert!(admits(&origin, "/x", Some("evil.example")).is_none());
        assert!(admits(&origin, "/x", Some("api.lengow.io:8443")).is_none());
    }

    #[test]
    fn plain_http_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:1",
            "https://x.example",
        ] {
            assert!(Origin::parse(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.lengow.io",
            "http://10.0.0.1",
            "ftp://x",
            "/path",
        ] {
            let e = Origin::parse(&bad.parse().unwrap()).unwrap_err();
            assert!(e.is_config(), "{bad}");
        }
    }
}
