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
///
/// A head is one pointer to its buffer, so that it is handed back from [`Head::copy`] in a
/// register: a head of several fields came back through memory, and the first read of it
/// waited for the writes.
pub(crate) struct Head(Option<Box<Buffer>>);

/// A head's buffer, taken from this thread's pool and given back to it when the head is
/// dropped unused.
struct Buffer {
    version: Version,
    extensions: Extensions,
    /// The method's code and the scheme's (1 byte each), the lengths of the spelled-out
    /// method, spelled-out scheme, authority and path (2 bytes each), then their bytes.
    /// Then for each header but `Authorization`: the name's length, or its code for a name in
    /// `NAMES` (2 bytes), the value's length (4 bytes), the flags (1 byte: sensitive, name
    /// coded), the name unless coded, the value.
    /// Every byte of it is initialised; the head is its first `len`, the rest is left over
    /// from earlier heads of this thread.
    bytes: Vec<u8>,
    len: usize,
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
/// Room a write may use past its own bytes: small pieces are copied in whole words.
const SLACK: usize = 8;

thread_local! {
    /// Heads take their buffer from this thread's pool: most requests are answered without a
    /// replay, so the same few buffers serve request after request without touching the
    /// allocator.
    static POOL: Pool<Box<Buffer>> = const { Pool::new() };
}

#[inline(always)]
fn pooled() -> Box<Buffer> {
    crate::local::take(&POOL).unwrap_or_else(|| {
        Box::new(Buffer {
            version: Version::default(),
            extensions: Extensions::new(),
            bytes: vec![0; INITIAL_CAPACITY],
            len: 0,
        })
    })
}

impl Drop for Head {
    #[inline]
    fn drop(&mut self) {
        let Some(mut buffer) = self.0.take() else {
            return;
        };
        if buffer.bytes.len() > POOL_MAX_CAPACITY {
            return;
        }
        buffer.extensions.clear();
        // The bytes are overwritten by the next head; they may hold cookies, so the buffer
        // never leaves this crate.
        crate::local::give(&POOL, buffer);
    }
}

/// Writes a head into a buffer whose every byte is initialised, at a cursor: a write checks
/// its room once, and a piece of up to 32 bytes is copied in a few word moves instead of a
/// call to `memcpy` (a head is mostly such pieces).
struct Writer<'a> {
    bytes: &'a mut Vec<u8>,
    at: usize,
}

impl Writer<'_> {
    /// Makes room for `n` bytes and [`SLACK`] more.
    #[inline(always)]
    fn room(&mut self, n: usize) {
        if self.bytes.len() - self.at < n + SLACK {
            self.grow(n + SLACK);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, n: usize) {
        let len = (self.at + n).max(self.bytes.len() * 2);
        self.bytes.resize(len, 0);
    }

    /// Eight bytes at the cursor, which moves on by `n` (at most 8) of them; room was made,
    /// so the chunk is always there. Written as a chunk rather than into an indexed range,
    /// which compiled to more instructions (a second bounds check and its panic path).
    #[inline(always)]
    fn word(&mut self, word: [u8; 8], n: usize) {
        if let Some(to) = self.bytes[self.at..].first_chunk_mut::<8>() {
            *to = word;
        }
        self.at += n;
    }

    /// `piece` at the cursor; room was made.
    #[inline(always)]
    fn put(&mut self, piece: &[u8]) {
        let n = piece.len();
        let to = &mut self.bytes[self.at..self.at + n];
        // Two moves that overlap in the middle cover any length between one word and two. A
        // macro, not a generic function: both ways of writing it as a function compiled to
        // more instructions (callgrind, `hot_get`).
        macro_rules! halves {
            ($w:literal) => {
                if let (Some(a), Some(b), Some(to_a)) = (
                    piece.first_chunk::<$w>(),
                    piece.last_chunk::<$w>(),
                    to.first_chunk_mut::<$w>(),
                ) {
                    *to_a = *a;
                    if let Some(to_b) = to.last_chunk_mut::<$w>() {
                        *to_b = *b;
                    }
                }
            };
        }
        match n {
            0 => {}
            1..=3 => {
                to[0] = piece[0];
                to[n / 2] = piece[n / 2];
                to[n - 1] = piece[n - 1];
            }
            4..=7 => halves!(4),
            8..=15 => halves!(8),
            16..=32 => halves!(16),
            _ => to.copy_from_slice(piece),
        }
        self.at += n;
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
        let mut buffer = pooled();
        let mut out = Writer {
            bytes: &mut buffer.bytes,
            at: 0,
        };
        // 0 for a method spelled out, else its place in METHODS plus one (under 10). The
        // codes and lengths are put together in a register and written as two words: written
        // a byte at a time, they were read back as a word before the bytes had landed.
        let [method_len, scheme_len, authority_len, path_len] = pieces.map(|piece| piece.len());
        let codes = u64::from(method_code.map_or(0, |i| i as u8 + 1))
            | u64::from(scheme_code) << 8
            | (method_len as u64) << 16
            | (scheme_len as u64) << 32
            | (authority_len as u64) << 48;
        out.room(10 + method_len + scheme_len + authority_len + path_len);
        out.word(codes.to_le_bytes(), 8);
        out.word((path_len as u64).to_le_bytes(), 2);
        for piece in pieces {
            out.put(piece);
        }
        for (name, value) in request.headers() {
            if name == header::AUTHORIZATION {
                continue;
            }
            let sensitive = if value.is_sensitive() { SENSITIVE } else { 0 };
            let value = value.as_bytes();
            let value_len = (value.len() as u32).to_le_bytes();
            let (name_len, flags, spelled) = match NAMES.iter().position(|known| known == name) {
                Some(code) => ((code as u16).to_le_bytes(), sensitive | NAME_CODED, &[][..]),
                None => {
                    let spelled = name.as_str().as_bytes();
                    ((spelled.len() as u16).to_le_bytes(), sensitive, spelled)
                }
            };
            out.room(7 + spelled.len() + value.len());
            out.word(
                [
                    name_len[0],
                    name_len[1],
                    value_len[0],
                    value_len[1],
                    value_len[2],
                    value_len[3],
                    flags,
                    0,
                ],
                7,
            );
            out.put(spelled);
            out.put(value);
        }
        buffer.len = out.at;
        buffer.version = request.version();
        buffer.extensions = request.extensions().clone();
        Some(Self(Some(buffer)))
    }

    /// The request again, with `body`; its parts share one copy of the head's bytes.
    pub(crate) fn into_request<B>(mut self, body: B) -> Request<B> {
        let buffer = self
            .0
            .as_deref_mut()
            .expect("a head holds its buffer until it is dropped");
        // The request's parts share one copy of the bytes; the buffer goes back to the pool
        // when the head is dropped, so the next request does not make a new one.
        let mut rest = Bytes::copy_from_slice(&buffer.bytes[..buffer.len]);
        let version = buffer.version;
        let extensions = std::mem::take(&mut buffer.extensions);
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
        *request.version_mut() = version;
        *request.extensions_mut() = extensions;
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
    fn pieces_of_every_length_come_back_byte_for_byte() {
        // Every length a piece may be copied by (none, bytes, words of 4, 8 and 16, memcpy),
        // each on both sides of its bounds, in one head so that each write lands after
        // another of a different length; a reused buffer holds the bytes of the head before.
        for round in 0..2 {
            let mut request = Request::get(format!(
                "https://api.lengow.io/{}?q={}",
                "p".repeat(round * 17),
                "q".repeat(40 - round * 9)
            ));
            for len in 0..=70 {
                let value: String = (0..len)
                    .map(|i| char::from(b'a' + (i % 26) as u8))
                    .collect();
                let name = format!("x-{}", "n".repeat(len % 40));
                request = request.header(name, format!("{value}{round}"));
            }
            let (original, copy) = round_trip(request.body(()).unwrap());
            assert_eq!(copy.uri(), original.uri());
            assert_eq!(copy.headers(), original.headers());
            let values = |request: &Request<()>| -> Vec<Vec<u8>> {
                request
                    .headers()
                    .iter()
                    .map(|(name, value)| [name.as_str().as_bytes(), value.as_bytes()].concat())
                    .collect()
            };
            assert_eq!(values(&copy), values(&original));
        }
    }

    #[test]
    fn a_head_used_for_a_replay_gives_its_buffer_back() {
        POOL.with(Pool::clear);
        let request = Request::get("/v3.0/orders")
            .header(header::ACCEPT, "application/json")
            .extension(7u8)
            .body(())
            .unwrap();
        let head = Head::copy(&request).unwrap();
        assert_eq!(POOL.with(Pool::len), 0);
        let copy = head.into_request(());
        assert_eq!(copy.headers(), request.headers());
        assert_eq!(copy.extensions().get::<u8>(), Some(&7));
        assert_eq!(POOL.with(Pool::len), 1, "the buffer is back in the pool");
        let pooled = crate::local::take(&POOL).unwrap();
        assert!(pooled.extensions.is_empty());
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
        assert!(grown.bytes.len() > INITIAL_CAPACITY);
        assert!(
            grown.extensions.is_empty(),
            "a pooled buffer holds no extensions"
        );
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
