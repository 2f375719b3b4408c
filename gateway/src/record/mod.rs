//! Recording: the append-only session store and its records.

mod event;
mod journal;
mod schema;
mod sessions;
mod store;

pub use event::EventKind;
pub use sessions::{
    Ancestor, ContainerInfo, EventRecord, JobRecord, NewSession, Origin, ProcessInfo, Records,
    RenderedEvent, SessionEnd, SessionKind, SessionPath, SessionRecord, SessionSummary, now,
};
pub use store::{Failure, Health, Store, StoreError};

#[cfg(test)]
mod tests;
