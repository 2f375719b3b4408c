//! Outcome events held back to be stored with the session's next write-ahead record: a
//! statement's result goes with the next statement (one journal write per statement instead of
//! two), or is stored on its own once the session idles for [`HOLD_FOR`] (the session's own
//! timer), or ends. Nothing waits on an outcome record, so holding it only moves its write.
//!
//! Readers do not wait for that: every query of the store (`Store::call`) first stores what the
//! live sessions hold, so what a client has received is on record for whoever looks. What a
//! `kill -9` of the daemon can lose is the outcomes of the last [`HOLD_FOR`]; the write-ahead
//! records of the operations themselves are durable before anything is forwarded.

use std::{
    collections::HashMap,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;

use super::{RenderedEvent, Store, StoreError};

/// How long an outcome may wait for the next operation to be stored with it.
pub const HOLD_FOR: Duration = Duration::from_millis(200);

/// The held outcomes of one session.
pub struct HeldEvents {
    store: Store,
    held: Arc<Held>,
    /// Its entry in the store's [`Registry`].
    key: u64,
}

/// What a session holds, as the store's readers reach it.
struct Held {
    session_id: i64,
    events: Mutex<Vec<RenderedEvent>>,
}

/// The live sessions' held outcomes, for [`Registry::store_all`] before each query.
#[derive(Default)]
pub(super) struct Registry {
    sessions: Mutex<HashMap<u64, Weak<Held>>>,
    next_key: AtomicU64,
}

impl Registry {
    /// Stores what every live session holds (called before a query reads the store).
    pub(super) fn store_all(&self, store: &Store) {
        let live: Vec<Arc<Held>> = self
            .sessions
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for held in live {
            held.store(store);
        }
    }
}

impl Held {
    fn take(&self) -> Vec<RenderedEvent> {
        std::mem::take(&mut *self.events.lock())
    }

    fn store(&self, store: &Store) {
        let events = self.take();
        if !events.is_empty() {
            store.note_rendered(self.session_id, events);
        }
    }
}

impl HeldEvents {
    pub fn new(store: Store, session_id: i64) -> HeldEvents {
        let held = Arc::new(Held {
            session_id,
            events: Mutex::new(Vec::new()),
        });
        let registry = store.held_registry();
        let key = registry.next_key.fetch_add(1, Ordering::Relaxed);
        registry.sessions.lock().insert(key, Arc::downgrade(&held));
        HeldEvents { store, held, key }
    }

    /// Holds an outcome until the next write-ahead record, or until the session idles.
    pub fn hold(&self, event: RenderedEvent) {
        self.held.events.lock().push(event);
    }

    /// Whether outcomes wait to be stored.
    pub fn is_empty(&self) -> bool {
        self.held.events.lock().is_empty()
    }

    /// Stores `events` after the held outcomes, with one journal write; resolves once durable.
    pub fn append(&self, events: Vec<RenderedEvent>) -> Result<(), StoreError> {
        self.store
            .append_rendered(self.held.session_id, self.with_held(events))
    }

    /// Stores the held outcomes now (not waited for).
    pub fn flush(&self) {
        self.held.store(&self.store);
    }

    fn with_held(&self, events: Vec<RenderedEvent>) -> Vec<RenderedEvent> {
        let mut held = self.held.take();
        if held.is_empty() {
            return events;
        }
        held.extend(events);
        held
    }
}

impl Drop for HeldEvents {
    fn drop(&mut self) {
        self.store.held_registry().sessions.lock().remove(&self.key);
        self.flush();
    }
}
