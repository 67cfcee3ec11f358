//! The `Authorization` value a token is sent as, kept for the life of the process so that
//! sending it touches no reference count.
//!
//! Every request carries a clone of the token's header, dropped by the inner service once the
//! request is written. For a header whose bytes were allocated at run time, that clone and
//! that drop are two atomic operations on one shared count (9.5 ns the pair here, `cargo bench
//! --bench primitives`), about a tenth of what the layer adds to a request. A header over
//! `&'static` bytes clones and drops for free, so a token's header is made static: its bytes
//! are never freed. Tokens are few (one an hour, the floor on forced refreshes doubling up to
//! that), so this keeps about 50 bytes an hour; past [`STATIC_MAX`] bytes in all, headers are
//! reference-counted again.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::HeaderValue;

/// The most bytes the process keeps for token headers.
const STATIC_MAX: usize = 1 << 20;

/// Bytes kept so far, by every layer of the process.
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// A sensitive header value holding `text`, and whether its bytes are static; `None` when
/// `text` is not a valid header value.
pub(crate) fn sensitive(text: String) -> Option<(HeaderValue, bool)> {
    keep(text, &KEPT, STATIC_MAX)
}

fn keep(text: String, kept: &AtomicUsize, max: usize) -> Option<(HeaderValue, bool)> {
    // Checked before anything is kept: a bad token keeps nothing.
    let mut value = HeaderValue::from_str(&text).ok()?;
    let len = text.len();
    let room = kept
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |so_far| {
            so_far.checked_add(len).filter(|&total| total <= max)
        })
        .is_ok();
    if room {
        let bytes: &'static [u8] = Box::leak(text.into_bytes().into_boxed_slice());
        value = HeaderValue::from_maybe_shared(Bytes::from_static(bytes)).ok()?;
    }
    value.set_sensitive(true);
    Some((value, room))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_static_until_the_budget_is_spent_then_counted() {
        let kept = AtomicUsize::new(0);
        let (first, is_static) = keep("a".repeat(40), &kept, 100).unwrap();
        assert!(is_static && first.is_sensitive());
        assert_eq!(first, "a".repeat(40).as_str());
        assert_eq!(kept.load(Ordering::Relaxed), 40);
        let (_, is_static) = keep("b".repeat(60), &kept, 100).unwrap();
        assert!(is_static, "exactly at the budget");
        let (third, is_static) = keep("c".to_owned(), &kept, 100).unwrap();
        assert!(!is_static, "over the budget: counted, not kept");
        assert!(third.is_sensitive());
        assert_eq!(third, "c");
        assert_eq!(kept.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn a_bad_token_keeps_nothing() {
        let kept = AtomicUsize::new(0);
        assert!(keep("bad\ntoken".to_owned(), &kept, 100).is_none());
        assert_eq!(kept.load(Ordering::Relaxed), 0);
    }
}
