//! The worker's own pipeline stages (see `task_core::pipeline` for the
//! shared ones and the order): waits that only a worker makes, early ack,
//! and the task log.

mod early_ack;
mod eta;
mod rate_limit;
mod task_log;

pub(crate) use early_ack::EarlyAck;
pub(crate) use eta::Eta;
pub(crate) use rate_limit::RateLimited;
pub(crate) use task_log::TaskLog;
