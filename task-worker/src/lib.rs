//! The worker side of task-core: a [`Worker`] consumes task queues, runs each
//! message's registered `#[task]` and publishes its result; [`cli::main`] is
//! the command line a worker binary calls.
//!
//! A worker runs the tasks linked into its binary: `inventory` only sees
//! crates that are linked, so a worker binary must use the crate that defines
//! its tasks (see ARCHITECTURE.md).

pub mod autoscale;
pub mod beat_cli;
mod canvas;
mod chord_entries;
pub mod cli;
pub mod control_cli;
pub mod dead_letters;
mod events;
mod executor;
mod expired;
pub mod logging;
pub mod metrics;
mod node;
mod rate_limiter;
mod remote_control;
mod requests;
mod resume;
mod revoke_log;
mod revokes;
mod settle;
pub mod shutdown;
mod stages;
mod worker;

pub use worker::{
    Worker, WorkerBuilder, WorkerError, DEFAULT_ACK_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_NODE_NAME, DEFAULT_RESULT_STORE_DEADLINE,
};
