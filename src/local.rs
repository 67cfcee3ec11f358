//! Per-thread state of the hot path, so that requests on different threads write to no shared
//! cache line: each thread's own copy of the token (and of its header, unless that is static),
//! and the pools the hot path reuses its buffers and body slots from instead of allocating.

use std::cell::{Cell, RefCell, RefMut};
use std::sync::Arc;
use std::thread::LocalKey;

use http::HeaderValue;

use crate::token::{Token, TokenSlot, WallTime};

/// This thread's copy of a layer's current token and of its header.
struct LocalToken {
    layer: u64,
    token: Arc<Token>,
    header: HeaderValue,
}

/// Slots of the per-thread token cache; a layer always uses the same one.
const SLOTS: usize = 4;

thread_local! {
    static TOKENS: RefCell<[Option<LocalToken>; SLOTS]> = const { RefCell::new([None, None, None, None]) };
}

/// What a request is sent with.
pub(crate) struct Sending {
    pub(crate) header: HeaderValue,
    pub(crate) generation: u64,
    pub(crate) unproven: bool,
}

/// The current token of layer `layer` if it may be sent now, from this thread's copy.
///
/// The copy is checked against the slot's generation (one atomic load, no reference count) and
/// renewed from the slot when a new token is in. A static header (see `token::header`) is
/// cloned as it is; a counted one is copied into this thread's own, as cloning the token's
/// shared header would bump one reference count from every thread.
#[inline]
pub(crate) fn token(layer: u64, slot: &TokenSlot, wall: WallTime) -> Option<Sending> {
    let generation = slot.generation();
    if generation == 0 {
        return None;
    }
    let sending = |local: &LocalToken| {
        local.token.is_fresh(wall).then(|| Sending {
            header: local.header.clone(),
            generation: local.token.generation,
            unproven: local.token.unproven_forced(),
        })
    };
    TOKENS
        .try_with(|tokens| {
            let mut tokens = tokens.try_borrow_mut().ok()?;
            let entry = &mut tokens[(layer % SLOTS as u64) as usize];
            match entry {
                Some(local) if local.layer == layer && local.token.generation == generation => {
                    sending(local)
                }
                _ => {
                    let token = slot.load_full()?;
                    let header = if token.static_header {
                        token.header.clone()
                    } else {
                        let mut own = HeaderValue::from_bytes(token.header.as_bytes()).ok()?;
                        own.set_sensitive(true);
                        own
                    };
                    let local = entry.insert(LocalToken {
                        layer,
                        token,
                        header,
                    });
                    sending(local)
                }
            }
        })
        .ok()
        .flatten()
}

/// A per-thread pool of reusable values, declared with `thread_local!` as
/// `static NAME: Pool<T> = const { Pool::new() };`.
///
/// The value given back last waits in a slot of its own: a thread that sends one request at a
/// time moves that one value out and back in, without borrowing the vector behind it.
pub(crate) struct Pool<T> {
    last: Cell<Option<T>>,
    rest: RefCell<Vec<T>>,
    /// The most values the pool holds.
    max: usize,
    /// Where the values go that the pool cannot keep, in batches: all it holds when it is
    /// full, or when its thread ends. They are dropped when `None`.
    retire: Option<fn(Vec<T>)>,
}

/// Values a pool keeps at most by default: as many as a thread has requests in flight, up to
/// this.
const POOL_SIZE: usize = 16;

impl<T> Pool<T> {
    pub(crate) const fn new() -> Self {
        Self::with(POOL_SIZE, None)
    }

    /// A pool of up to `max` values (at least 2) that hands those it cannot keep to
    /// `retire`, many at a time, instead of dropping them.
    pub(crate) const fn retiring(max: usize, retire: fn(Vec<T>)) -> Self {
        Self::with(max, Some(retire))
    }

    const fn with(max: usize, retire: Option<fn(Vec<T>)>) -> Self {
        assert!(max >= 2);
        Self {
            last: Cell::new(None),
            rest: RefCell::new(Vec::new()),
            max,
            retire,
        }
    }

    /// `value` does not fit in the pool (`rest` is full, or borrowed when `None`): it is
    /// dropped, or retired with all the pool held.
    #[cold]
    fn overflow(&self, rest: Option<RefMut<'_, Vec<T>>>, value: T) {
        let Some(retire) = self.retire else {
            return;
        };
        let full = match rest {
            Some(mut rest) => std::mem::replace(&mut *rest, vec![value]),
            None => vec![value],
        };
        retire(full);
    }

    /// How many values the pool holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let last = self.last.take();
        let held = usize::from(last.is_some()) + self.rest.borrow().len();
        self.last.set(last);
        held
    }

    /// Drops every value the pool holds.
    #[cfg(test)]
    pub(crate) fn clear(&self) {
        self.last.set(None);
        self.rest.borrow_mut().clear();
    }
}

/// A value from this thread's `pool`, if it holds one.
#[inline(always)]
pub(crate) fn take<T: 'static>(pool: &'static LocalKey<Pool<T>>) -> Option<T> {
    pool.try_with(|pool| match pool.last.take() {
        Some(value) => Some(value),
        None => pool.rest.try_borrow_mut().ok()?.pop(),
    })
    .ok()
    .flatten()
}

/// Gives `value` back to this thread's `pool`. When the pool is full, what it held goes to
/// its retiring function in one batch (or is dropped). The value comes back when the pool is
/// gone (its thread is ending).
#[inline(always)]
pub(crate) fn give<T: 'static>(pool: &'static LocalKey<Pool<T>>, value: T) -> Option<T> {
    let mut value = Some(value);
    let _ = pool.try_with(|pool| {
        let Some(previous) = pool.last.replace(value.take()) else {
            return;
        };
        match pool.rest.try_borrow_mut() {
            Ok(mut rest) if rest.len() < pool.max - 1 => rest.push(previous),
            Ok(rest) => pool.overflow(Some(rest), previous),
            Err(_) => pool.overflow(None, previous),
        }
    });
    value
}

impl<T> Drop for Pool<T> {
    fn drop(&mut self) {
        let Some(retire) = self.retire else {
            return;
        };
        let mut all = std::mem::take(self.rest.get_mut());
        all.extend(self.last.take());
        if !all.is_empty() {
            retire(all);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    static RETIRED: Mutex<Vec<Vec<u32>>> = Mutex::new(Vec::new());

    fn retire(values: Vec<u32>) {
        RETIRED.lock().unwrap().push(values);
    }

    thread_local! {
        static NUMBERS: Pool<u32> = const { Pool::retiring(4, retire) };
    }

    #[test]
    fn a_retiring_pool_hands_on_what_it_cannot_keep_in_batches_and_all_it_holds_at_its_end() {
        std::thread::spawn(|| {
            for n in 0..6 {
                assert_eq!(give(&NUMBERS, n), None);
            }
            assert_eq!(NUMBERS.with(Pool::len), 3);
        })
        .join()
        .unwrap();
        let retired = std::mem::take(&mut *RETIRED.lock().unwrap());
        // Full at the fifth value: the three before the last given went in one batch; the
        // rest when the thread ended. Nothing was dropped.
        assert_eq!(retired.len(), 2, "{retired:?}");
        let mut all: Vec<u32> = retired.concat();
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3, 4, 5]);
        assert_eq!(retired[0].len(), 3);
    }
}
