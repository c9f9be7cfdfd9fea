//! Celery's events (CELERY_OPERATIONS.md §2): what workers and clients
//! publish on the `celeryev` topic exchange for Flower, `celery events` and
//! any other monitor, typed.
//!
//! - [`Event`] / [`EventKind`]: one event, with the fields every event
//!   carries ([`EventHeader`]) and those of its type, to and from Celery's
//!   JSON (`Event::to_json`, `Event::from_json`);
//! - [`EventDispatcher`]: publishes events, worker events one per message,
//!   task events in batches (a JSON list on `task.multi`, as Celery's
//!   worker sends them);
//! - [`EventReceiver`]: a typed stream of the events on the exchange, for
//!   Rust monitors ([`App::events`](crate::App::events));
//! - [`LamportClock`]: the logical clock events and remote control carry.

mod clock;
mod dispatcher;
mod event;
mod receiver;

pub use clock::LamportClock;
pub(crate) use dispatcher::now_seconds;
pub use dispatcher::{EventDispatcher, BATCH_ROUTING_KEY, EVENT_EXCHANGE};
pub use event::{
    Event, EventDecodeError, EventHeader, EventKind, TaskFailed, TaskReceived, TaskRejected,
    TaskRetried, TaskRevoked, TaskSent, TaskStarted, TaskSucceeded, WorkerStatus,
};
pub use receiver::{EventReceiver, EventStreamError};
