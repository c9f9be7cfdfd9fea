//! The worker's own pipeline stages (see `task_core::pipeline` for the
//! shared ones and the order): waits that only a worker makes, early ack,
//! the task log, and the tracking of each task for remote control and events.

mod early_ack;
mod eta;
mod measured;
mod rate_limit;
mod task_log;
mod tracking;

pub(crate) use early_ack::EarlyAck;
pub(crate) use eta::Eta;
pub(crate) use measured::Measured;
pub(crate) use rate_limit::RateLimited;
pub(crate) use task_log::TaskLog;
pub(crate) use tracking::{Received, Running};
