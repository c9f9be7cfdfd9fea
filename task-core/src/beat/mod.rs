//! Periodic tasks: a scheduler (Celery's "beat") that several processes
//! can run at once without firing a run twice or missing one.
//!
//! Entries ([`Entry`]) are declared in code (on a [`BeatBuilder`], or next
//! to their task with [`periodic!`](crate::periodic)) or in a TOML file
//! ([`ScheduleFile`]); each sends a normal task message, with Celery's
//! `celery_beat_task: true` header (and, for an `expires`, the AMQP
//! expiration Celery's clients set), so Python workers run what a Rust
//! scheduler sends. When entries are due is [`crate::schedule`]'s business.
//!
//! # High availability
//!
//! Run the scheduler on as many machines as you like, with the same
//! entries and group name ([`BeatBuilder::name`]):
//!
//! - **One leader.** Each instance opens a connection of its own and
//!   declares the group's lock, an exclusive queue
//!   (`task_core.beat.<group>.leader`). RabbitMQ grants it to one
//!   connection and refuses the others (`RESOURCE_LOCKED`) until that
//!   connection closes; standby instances try again every
//!   [`BeatBuilder::standby_poll`] (500 ms). A killed process's socket is
//!   closed by its kernel, so the lock is free at once: a standby takes
//!   over within the poll interval plus the time to read the record (well
//!   under the 5 s goal; measured in `tests/beat.rs`). A leader cut off by
//!   the network loses its connection when the broker stops hearing its
//!   heartbeats (10 s, [`BEAT_HEARTBEAT_S`], unless the URL sets
//!   `?heartbeat=`), so within about 20 s.
//! - **Publishes only while holding the lock.** The leader publishes on
//!   the connection that holds the lock, and that connection is never
//!   replaced ([`AmqpBroker::connect_once`](crate::broker::amqp::AmqpBroker::connect_once)):
//!   once it is lost, every publish fails, and the instance stands by
//!   again on a new connection. RabbitMQ processes a connection's frames
//!   in order and deletes the exclusive queue only once the connection is
//!   closed, so every publish of an old leader is routed before a new
//!   leader can hold the lock.
//! - **Each run recorded by its own publish.** A run is one message
//!   published to its task queue with a `BCC` header naming the group's
//!   run log, a stream queue (`task_core.beat.<group>.runs`): RabbitMQ
//!   routes the one message to both queues and confirms it once both hold
//!   it. A run is thus in the record exactly if it was sent: a leader that
//!   dies before, during or after a publish leaves no run sent and
//!   unrecorded, and none recorded and unsent.
//! - **The new leader reads the record first.** It publishes a marker to
//!   the log and reads up to it (from a few snapshot periods back, the
//!   leader writing every entry's last run to the log every minute, or
//!   from the start), takes each entry's last run, and fires what is due
//!   after it. So across a takeover no run fires twice and none is
//!   skipped: runs that fell due during the takeover fire late (within
//!   [`BeatBuilder::grace`], 30 s, whatever the entry's policy).
//! - **Missed runs.** Runs older than the grace period (every instance was
//!   down) follow the entry's [`MissedRuns`]: skip, fire the latest once
//!   (the default, as Celery), or fire each up to a bound. An entry seen
//!   for the first time counts from then.
//!
//! What this does not cover: instances whose entries differ (each group
//! must share one configuration), a RabbitMQ node that loses the stream
//! (use a cluster with replicated streams), a cluster whose stream leader
//! is on another node than the old leader's connection (the ordering above
//! is argued for one node; in a cluster an unconfirmed publish of a dying
//! leader could in principle reach the stream after the new leader's
//! marker), and the clock: runs are
//! scheduled by each instance's wall clock, so a leader whose clock is
//! late fires late (never twice: the record is by scheduled time).
//!
//! `memory://` has no streams: there the record lives in the process (for
//! tests and development; a single instance). Nor has Redis: on a
//! `redis://` broker the group's lock is the same exclusive queue (a
//! connection owns it while its lease in Redis holds: a vanished leader's
//! lock frees itself within `RedisBrokerOptions::connection_lease`, 30 s),
//! and the record lives in the leader's process, so an instance that takes
//! over counts each entry from the moment it leads: a run that fell due
//! during the handover is not sent (nor is a run sent again).

mod config;
mod due;
mod entry;
mod leadership;
mod run_log;
mod runner;

pub use config::ScheduleFile;
pub use entry::{DeclaredEntry, Entry, MissedRuns};
pub use leadership::Role;
pub use run_log::{ENTRY_HEADER, RUN_HEADER};
pub use runner::{
    Beat, BeatBuilder, Upcoming, BEAT_HEARTBEAT_S, BEAT_TASK_HEADER, DEFAULT_GRACE,
    DEFAULT_LOG_MAX_BYTES, DEFAULT_STANDBY_POLL,
};

use crate::broker::BrokerError;

/// Why a scheduler could not be built or could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BeatError {
    /// Entries that cannot be scheduled, each named with its reason.
    #[error("invalid periodic {}: {}", if .0.len() == 1 { "entry" } else { "entries" },
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Entries(Vec<EntryError>),
    /// A schedule file or setting that cannot be used.
    #[error("{0}")]
    Config(String),
    /// The broker refused something (a queue declared otherwise, a
    /// permission).
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// One entry that cannot be scheduled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry `{entry}`: {reason}")]
pub struct EntryError {
    /// The entry's name.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

#[cfg(test)]
mod tests;
