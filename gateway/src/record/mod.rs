//! Recording: the append-only session store and its records.

mod event;
mod held;
mod journal;
mod schema;
mod sessions;
mod store;

pub use event::EventKind;
pub use held::{HOLD_FOR, HeldEvents};
pub use sessions::{
    Ancestor, ContainerInfo, EventRecord, JobRecord, NewSession, Origin, ProcessInfo, Records,
    RenderedEvent, SessionEnd, SessionKind, SessionPath, SessionRecord, SessionSummary, now,
};
pub use store::{Failure, Health, Store, StoreError};

#[cfg(test)]
mod tests;
