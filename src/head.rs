//! [`Head`]: the copy of a request head kept for a replay, made on every request.
//! Method, URI and headers are laid as bytes in one buffer; they are parsed back only on a replay.

use bytes::{Buf, Bytes};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Extensions, HeaderName, HeaderValue, Method, Request, Uri, Version, header};

use crate::local::Pool;

/// What a replay needs of the first request but its body and token.
///
/// Cloning is the obvious copy and not the cheapest: a `HeaderMap` clone allocates twice, and
/// every header value or URI built at run time allocates again the first time its bytes are
/// shared. Copying the bytes into one buffer from this thread's pool allocates nothing once
/// the pool holds a buffer, whatever the request.
pub(crate) struct Head {
    version: Version,
    extensions: Extensions,
    /// The method's code and the scheme's (1 byte each), the lengths of the spelled-out
    /// method, spelled-out scheme, authority and path (2 bytes each), then their bytes.
    /// Then for each header but `Authorization`: the name's length, or its code for a name in
    /// `NAMES` (2 bytes), the value's length (4 bytes), the flags (1 byte: sensitive, name
    /// coded), the name unless coded, the value.
    /// Taken from this thread's pool, and given back to it when the head is dropped unused.
    bytes: Vec<u8>,
}

/// A larger buffer is freed rather than kept.
const POOL_MAX_CAPACITY: usize = 4096;
/// The methods a head stores as one byte.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];
/// Header names a head stores as a code (their place here) instead of spelled out: the ones
/// Lengow requests carry most.
const NAMES: [HeaderName; 8] = [
    header::ACCEPT,
    header::CONTENT_TYPE,
    header::USER_AGENT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::CONTENT_LENGTH,
    header::HOST,
    header::COOKIE,
];
/// A header's flags (one byte): its value is sensitive, its name is a code.
const SENSITIVE: u8 = 1;
const NAME_CODED: u8 = 2;
/// The scheme's code: none (a path-only URI), https, http, or another, spelled out.
const SCHEME_NONE: u8 = 0;
const SCHEME_HTTPS: u8 = 1;
const SCHEME_HTTP: u8 = 2;
const SCHEME_OTHER: u8 = 3;

/// What a new buffer starts with: a typical Lengow request head fits.
const INITIAL_CAPACITY: usize = 512;

thread_local! {
    /// Heads take their buffer from this thread's pool: most requests are answered without a
    /// replay, so the same few buffers serve request after request without touching the
    /// allocator.
    static POOL: Pool<Vec<u8>> = const { Pool::new() };
}

#[inline(always)]
fn pooled() -> Vec<u8> {
    crate::local::take(&POOL).unwrap_or_else(|| Vec::with_capacity(INITIAL_CAPACITY))
}

impl Drop for Head {
    #[inline]
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.bytes);
        if bytes.capacity() == 0 || bytes.capacity() > POOL_MAX_CAPACITY {
            return;
        }
        // The bytes are overwritten by the next head; they may hold cookies, so the buffer
        // never leaves this crate.
        bytes.clear();
        crate::local::give(&POOL, bytes);
    }
}

impl Head {
    /// Copies the head of a request, leaving out its `Authorization`; `None` for a method
    /// of 64 KiB or more (a URI and a header name are always shorter).
    ///
    /// A standard method and an http or https scheme are one byte each; codes and lengths
    /// go first, in one write, then the authority and the path, then three writes a header
    /// (its lengths and flags, its name, its value; two for a name in `NAMES`), into a buffer
    /// that is usually already large enough.
    pub(crate) fn copy<B>(request: &Request<B>) -> Option<Self> {
        let uri = request.uri();
        let method = request.method();
        let method_code = METHODS.iter().position(|known| known == method);
        let (scheme_code, scheme) = match uri.scheme_str() {
            None => (SCHEME_NONE, ""),
            Some("https") => (SCHEME_HTTPS, ""),
            Some("http") => (SCHEME_HTTP, ""),
            Some(other) => (SCHEME_OTHER, other),
        };
        let pieces = [
            if method_code.is_some() {
                ""
            } else {
                method.as_str()
            }
            .as_bytes(),
            scheme.as_bytes(),
            uri.authority().map_or("", Authority::as_str).as_bytes(),
            uri.path_and_query()
                .map_or("", PathAndQuery::as_str)
                .as_bytes(),
        ];
        if pieces
            .iter()
            .any(|piece| piece.len() > usize::from(u16::MAX))
        {
            return None;
        }
        let mut bytes = pooled();
        let mut prefix = [0; 10];
        // 0 for a method spelled out, else its place in METHODS plus one (under 10).
        prefix[0] = method_code.map_or(0, |i| i as u8 + 1);
        prefix[1] = scheme_code;
        for (length, piece) in prefix[2..].chunks_exact_mut(2).zip(pieces) {
            length.copy_from_slice(&(piece.len() as u16).to_le_bytes());
        }
        bytes.extend_from_slice(&prefix);
        for piece in pieces {
            if !piece.is_empty() {
                bytes.extend_from_slice(piece);
            }
        }
        for (name, value) in request.headers() {
            if name == header::AUTHORIZATION {
                continue;
            }
            let value_len = (value.len() as u32).to_le_bytes();
            let sensitive = if value.is_sensitive() { SENSITIVE } else { 0 };
            let (name_len, flags, spelled) = match NAMES.iter().position(|known| known == name) {
                Some(code) => ((code as u16).to_le_bytes(), sensitive | NAME_CODED, &[][..]),
                None => {
                    let spelled = name.as_str().as_bytes();
                    ((spelled.len() as u16).to_le_bytes(), sensitive, spelled)
                }
            };
            bytes.extend_from_slice(&[
                name_len[0],
                name_len[1],
                value_len[0],
                value_len[1],
                value_len[2],
                value_len[3],
                flags,
            ]);
            if !spelled.is_empty() {
                bytes.extend_from_slice(spelled);
            }
            bytes.extend_from_slice(value.as_bytes());
        }
        Some(Self {
            version: request.version(),
            extensions: request.extensions().clone(),
            bytes,
        })
    }

    /// The request again, with `body`; its parts share one buffer.
    pub(crate) fn into_request<B>(mut self, body: B) -> Request<B> {
        let mut rest = Bytes::from(std::mem::take(&mut self.bytes));
        let (method_code, scheme_code) = (rest.get_u8(), rest.get_u8());
        let lengths = [(); 4].map(|()| usize::from(rest.get_u16_le()));
        let [method, scheme, authority, path] = lengths.map(|len| rest.split_to(len));
        // Every piece came from a valid method, URI and header, so each parses again.
        let method = match usize::from(method_code).checked_sub(1) {
            Some(i) => METHODS.get(i).cloned().unwrap_or_default(),
            None => Method::from_bytes(&method).unwrap_or_default(),
        };
        let mut uri = http::uri::Parts::default();
        uri.scheme = match scheme_code {
            SCHEME_HTTPS => Some(Scheme::HTTPS),
            SCHEME_HTTP => Some(Scheme::HTTP),
            SCHEME_OTHER => Scheme::try_from(&scheme[..]).ok(),
            _ => None,
        };
        uri.authority = (!authority.is_empty())
            .then(|| Authority::from_maybe_shared(authority).ok())
            .flatten();
        uri.path_and_query = (!path.is_empty())
            .then(|| PathAndQuery::from_maybe_shared(path).ok())
            .flatten();
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
        *request.version_mut() = self.version;
        *request.extensions_mut() = std::mem::take(&mut self.extensions);
        let headers = request.headers_mut();
        while !rest.is_empty() {
            let name_len = usize::from(rest.get_u16_le());
            let value_len = rest.get_u32_le() as usize;
            let flags = rest.get_u8();
            let name = if flags & NAME_CODED != 0 {
                NAMES.get(name_len).cloned().ok_or(())
            } else {
                HeaderName::from_bytes(&rest.split_to(name_len)).map_err(|_| ())
            };
            let value = rest.split_to(value_len);
            if let (Ok(name), Ok(mut value)) = (name, HeaderValue::from_maybe_shared(value)) {
                value.set_sensitive(flags & SENSITIVE != 0);
                headers.append(name, value);
            }
        }
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(request: Request<()>) -> (Request<()>, Request<()>) {
        let copy = Head::copy(&request).unwrap().into_request(());
        (request, copy)
    }

    #[test]
    fn every_part_comes_back_but_authorization() {
        let mut secret = HeaderValue::from_static("cookie-value");
        secret.set_sensitive(true);
        let request = Request::post("https://api.lengow.io:8443/v3.0/orders/actions/?a=1&b=2")
            .version(Version::HTTP_2)
            .header(header::ACCEPT, "application/json")
            .header("x-custom", "one")
            .header("x-custom", HeaderValue::from_bytes(b"two \xff").unwrap())
            .header(header::COOKIE, secret)
            .header(header::AUTHORIZATION, "old-token")
            .header("x-empty", "")
            .extension(42u32)
            .body(())
            .unwrap();
        let (original, copy) = round_trip(request);
        assert_eq!(copy.method(), Method::POST);
        assert_eq!(copy.uri(), original.uri());
        assert_eq!(copy.version(), Version::HTTP_2);
        assert_eq!(copy.extensions().get::<u32>(), Some(&42));
        let mut expected = original.headers().clone();
        expected.remove(header::AUTHORIZATION);
        assert_eq!(copy.headers(), &expected);
        let values: Vec<_> = copy.headers().get_all("x-custom").iter().collect();
        assert_eq!(values.len(), 2);
        assert_eq!(values[0], "one");
        assert_eq!(values[1].as_bytes(), b"two \xff");
        assert!(copy.headers()[header::COOKIE].is_sensitive());
        assert!(!copy.headers()[header::ACCEPT].is_sensitive());
    }

    #[test]
    fn names_stored_as_codes_come_back_with_their_values_and_flags() {
        let mut request = Request::get("/v3.0/orders");
        for (i, name) in NAMES.iter().enumerate() {
            let mut value = HeaderValue::from_str(&format!("value {i}")).unwrap();
            value.set_sensitive(i % 2 == 0);
            request = request.header(name, value);
        }
        let request = request.header("x-after", "spelled").body(()).unwrap();
        let (original, copy) = round_trip(request);
        assert_eq!(copy.headers(), original.headers());
        for (name, value) in original.headers() {
            assert_eq!(
                copy.headers()[name].is_sensitive(),
                value.is_sensitive(),
                "{name}"
            );
        }
    }

    #[test]
    fn path_only_uris_and_extension_methods_come_back() {
        let request = Request::builder()
            .method(Method::from_bytes(b"PURGE").unwrap())
            .uri("/v3.0/orders?account_id=1")
            .body(())
            .unwrap();
        let (original, copy) = round_trip(request);
        assert_eq!(copy.method().as_str(), "PURGE");
        assert_eq!(copy.uri(), original.uri());
        assert!(copy.headers().is_empty());
    }

    #[test]
    fn a_method_of_64_kib_is_not_copied() {
        let long = vec![b'X'; usize::from(u16::MAX) + 1];
        let request = Request::builder()
            .method(Method::from_bytes(&long).unwrap())
            .uri("/v3.0/orders")
            .body(())
            .unwrap();
        assert!(Head::copy(&request).is_none());
        let request = Request::builder()
            .method(Method::from_bytes(&long[1..]).unwrap())
            .uri("/v3.0/orders")
            .body(())
            .unwrap();
        let copy = Head::copy(&request).unwrap().into_request(());
        assert_eq!(copy.method().as_str().len(), usize::from(u16::MAX));
    }

    #[test]
    fn every_method_and_scheme_comes_back() {
        let purge = Method::from_bytes(b"PURGE").unwrap();
        let methods = METHODS.iter().chain([&purge]);
        for (method, uri) in methods.zip(
            [
                "https://api.lengow.io/v3.0/orders",
                "http://127.0.0.1:8080/v3.0/orders?a=1",
                "ws://127.0.0.1/socket",
                "/v3.0/orders",
                "https://api.lengow.io",
            ]
            .into_iter()
            .cycle(),
        ) {
            let request = Request::builder()
                .method(method.clone())
                .uri(uri)
                .body(())
                .unwrap();
            let (original, copy) = round_trip(request);
            assert_eq!(copy.method(), method);
            assert_eq!(copy.uri(), original.uri(), "{method} {uri}");
            assert_eq!(copy.uri().scheme_str(), original.uri().scheme_str());
        }
    }

    #[test]
    fn a_buffer_grows_for_a_large_head_and_a_reused_one_holds_only_the_new_head() {
        let mut large = Request::post("https://api.lengow.io/v3.0/orders/actions/");
        for i in 0..100 {
            large = large.header(format!("x-large-{i}"), "v".repeat(20));
        }
        let large = large.body(()).unwrap();
        let (original, copy) = round_trip(large.clone());
        assert_eq!(copy.headers(), original.headers());
        // A head dropped unused gives its grown buffer (about 3 KiB) back to this thread's
        // pool; the next head takes it, and a small head written over it comes back alone.
        POOL.with(Pool::clear);
        drop(Head::copy(&large));
        let grown = crate::local::take(&POOL).unwrap();
        assert!(grown.capacity() > INITIAL_CAPACITY);
        assert!(grown.is_empty());
        crate::local::give(&POOL, grown);
        drop(Head::copy(&large));
        drop(Head::copy(&large));
        assert_eq!(POOL.with(Pool::len), 1, "one buffer served both");
        // Two heads alive at once: both buffers come back, neither is lost.
        let (first, second) = (Head::copy(&large), Head::copy(&large));
        drop((first, second));
        assert_eq!(POOL.with(Pool::len), 2);
        let (original, copy) = round_trip(
            Request::get("/v3.0/orders")
                .header(header::ACCEPT, "application/json")
                .body(())
                .unwrap(),
        );
        assert_eq!(copy.headers(), original.headers());
        assert_eq!(copy.uri(), original.uri());
    }
}
