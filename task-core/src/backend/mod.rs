//! Result backends: where workers store each state of a task and where any
//! process reads it back by task id (Celery's `result_backend`).
//!
//! The backend is chosen by URL ([`BackendUrl`]), on the app builder
//! ([`AppBuilder::result_backend`](crate::AppBuilder::result_backend)) or
//! with the `RESULT_BACKEND` environment variable:
//!
//! - `rpc://` (the default): results travel to the caller's reply queue on
//!   the broker; only the process that sent a task receives its result, once.
//!   Kept by the [`App`](crate::App) itself, not behind this trait's reads.
//! - `redis://host:port/db`, `rediss://...` (TLS): [`RedisBackend`], Celery's
//!   Redis layout (`celery-task-meta-<id>` keys, readiness by pub/sub), so
//!   Python and Rust processes read each other's results.
//!
//! A worker stores results through [`ResultBackend::store`]; until a final
//! state is stored the task's message is not acknowledged (see the worker's
//! settlement), so a backend that is down delays results but loses none.

mod chord;
mod cleanup;
mod error;
mod meta;
pub mod redis;

use std::time::Duration;

pub use chord::{ChordClaim, ChordEnd, ChordJoin, ChordPart, ChordPartResult};
pub(crate) use cleanup::backend_cleanup;
pub use cleanup::BACKEND_CLEANUP_TASK;
pub use error::BackendError;
pub use meta::{ResultMeta, ResultRecord, TaskMessageRef};
pub use redis::RedisBackend;

use crate::async_result::Waiter;

/// Celery's default `result_expires`: results are kept one day.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(24 * 60 * 60);

/// A result backend: stores task states (worker side) and reads them back
/// by task id (any process). One per app, shared by its clones.
///
/// Implemented by this crate's backends only (sealed): waiting handles are
/// fed through crate-internal tables. A new backend is a module of
/// `task_core::backend` (see ARCHITECTURE.md).
#[async_trait::async_trait]
pub trait ResultBackend: sealed::Sealed + Send + Sync + 'static {
    /// Stores one state of a task. Returns once the backend holds it;
    /// an error means it is not stored (the caller retries or gives the
    /// task back to the broker).
    async fn store(&self, record: &ResultRecord<'_>) -> Result<(), BackendError>;

    /// What is stored for `task_id`: `None` when nothing is (Celery's
    /// PENDING: unknown, not started yet, expired or forgotten).
    async fn meta(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError>;

    /// Starts delivering `task_id`'s states to the returned watch. When
    /// `read_stored` is set, what is stored already is read after the
    /// subscription is in place (no state can fall between the two);
    /// callers that subscribe before publishing the task skip that read.
    async fn watch(&self, task_id: &str, read_stored: bool) -> Result<ResultWatch, BackendError>;

    /// Deletes what is stored for `task_id` (Celery's `forget`).
    async fn forget(&self, task_id: &str) -> Result<(), BackendError>;

    /// Stores the member ids of group `group_id` (Celery's
    /// `GroupResult.save`, key `celery-taskset-meta-<gid>`).
    async fn save_group(&self, group_id: &str, task_ids: &[String]) -> Result<(), BackendError>;

    /// The member ids of a saved group (`GroupResult.restore`), `None` when
    /// none is saved under `group_id`.
    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError>;

    /// Deletes a saved group (`GroupResult.delete`).
    async fn forget_group(&self, group_id: &str) -> Result<(), BackendError>;

    /// A URL naming the backend, with any password hidden (for logs).
    fn describe(&self) -> String;

    /// How many task ids this process is waiting on through the backend.
    fn awaited(&self) -> usize {
        0
    }

    /// Whether this backend joins chords ([`ResultBackend::join_chord_part`]).
    fn joins_chords(&self) -> bool {
        false
    }

    /// Records the size of chord `group_id`'s header before its parts are
    /// sent (Celery's `set_chord_size`; a claim of an earlier run of the
    /// same group id is cleared).
    async fn set_chord_size(&self, group_id: &str, size: usize) -> Result<(), BackendError> {
        let _ = (group_id, size);
        Err(BackendError::Unsupported {
            backend: "this",
            operation: "join chords",
        })
    }

    /// Records the result of one header part of chord `part.group_id` and
    /// tells whether the chord is now complete; the one caller that
    /// completes it gets the claim to publish its body
    /// ([`ChordJoin::Complete`]). Counting is by task id and index, so a
    /// part that runs twice counts once.
    async fn join_chord_part(&self, part: &ChordPart<'_>) -> Result<ChordJoin, BackendError> {
        let _ = part;
        Err(BackendError::Unsupported {
            backend: "this",
            operation: "join chords",
        })
    }

    /// Ends a chord whose claim this process holds, as [`ChordEnd`] says.
    async fn finish_chord(&self, claim: &ChordClaim, end: ChordEnd) -> Result<(), BackendError> {
        let _ = (claim, end);
        Err(BackendError::Unsupported {
            backend: "this",
            operation: "join chords",
        })
    }
}

impl std::fmt::Debug for dyn ResultBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

pub(crate) mod sealed {
    /// Keeps [`ResultBackend`](super::ResultBackend) implemented in this crate only.
    pub trait Sealed {}
    impl Sealed for super::RedisBackend {}
}

/// One task's states as a backend delivers them to a waiting
/// [`AsyncResult`](crate::AsyncResult) (opaque: made by
/// [`ResultBackend::watch`]).
#[derive(Debug)]
pub struct ResultWatch {
    pub(crate) waiter: Waiter,
}

/// A result backend named by URL, before it is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendUrl {
    /// `rpc://`: results to the caller's reply queue (the default).
    Rpc,
    /// `redis://` or `rediss://`: the Redis backend at this URL.
    Redis(String),
}

impl BackendUrl {
    /// Reads a `result_backend` URL: `rpc://` (or `rpc`), `redis://...`,
    /// `rediss://...`.
    pub fn parse(url: &str) -> Result<Self, BackendError> {
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .unwrap_or_else(|| url.to_ascii_lowercase());
        match scheme.as_str() {
            "rpc" => Ok(Self::Rpc),
            "redis" | "rediss" => Ok(Self::Redis(url.to_owned())),
            _ => Err(BackendError::InvalidUrl {
                url: crate::broker::redact(url),
                reason: "unsupported result backend: use rpc://, redis:// or rediss://".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_are_read_by_scheme() {
        assert_eq!(BackendUrl::parse("rpc://").unwrap(), BackendUrl::Rpc);
        assert_eq!(BackendUrl::parse("RPC").unwrap(), BackendUrl::Rpc);
        assert_eq!(
            BackendUrl::parse("redis://127.0.0.1:6379/3").unwrap(),
            BackendUrl::Redis("redis://127.0.0.1:6379/3".into())
        );
        assert!(matches!(
            BackendUrl::parse("rediss://h:6380/0").unwrap(),
            BackendUrl::Redis(_)
        ));
        let error = BackendUrl::parse("db+postgresql://u:secret@h/db").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("unsupported result backend"), "{text}");
        assert!(!text.contains("secret"), "the password is hidden: {text}");
    }
}
