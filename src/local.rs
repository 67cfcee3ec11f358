//! Per-thread state of the hot path, so that requests on different threads write to no shared
//! cache line: each thread's own copy of the token and of its header, and the pools the hot
//! path reuses its buffers from instead of allocating.

use std::cell::{Cell, RefCell};
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
    /// Where a value goes that the pool cannot keep (the pool is full, or its thread has
    /// ended); dropped when `None`.
    retire: Option<fn(T)>,
}

impl<T> Pool<T> {
    pub(crate) const fn new() -> Self {
        Self {
            last: Cell::new(None),
            rest: RefCell::new(Vec::new()),
            retire: None,
        }
    }

    /// A pool that hands the values it cannot keep to `retire` instead of dropping them.
    pub(crate) const fn retiring(retire: fn(T)) -> Self {
        Self {
            last: Cell::new(None),
            rest: RefCell::new(Vec::new()),
            retire: Some(retire),
        }
    }

    fn retire(&self, value: T) {
        if let Some(retire) = self.retire {
            retire(value);
        }
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

/// Values a pool keeps at most: as many as a thread has requests in flight, up to this.
const POOL_SIZE: usize = 16;

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

/// Gives `value` back to this thread's `pool`; when the pool is full it is retired. The value
/// comes back when the pool is gone (its thread is ending).
#[inline(always)]
pub(crate) fn give<T: 'static>(pool: &'static LocalKey<Pool<T>>, value: T) -> Option<T> {
    let mut value = Some(value);
    let _ = pool.try_with(|pool| {
        let Some(previous) = pool.last.replace(value.take()) else {
            return;
        };
        match pool.rest.try_borrow_mut() {
            Ok(mut rest) if rest.len() < POOL_SIZE - 1 => rest.push(previous),
            _ => pool.retire(previous),
        }
    });
    value
}

impl<T> Drop for Pool<T> {
    fn drop(&mut self) {
        let Some(retire) = self.retire else {
            return;
        };
        let last = self.last.take();
        for value in last.into_iter().chain(self.rest.get_mut().drain(..)) {
            retire(value);
        }
    }
}
