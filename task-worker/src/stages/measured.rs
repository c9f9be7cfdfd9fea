//! [`Measured`]: each message's outcome and run time as Prometheus metrics
//! (see `crate::metrics`). First in the stage list, so that every ending
//! is counted.

use futures_util::future::BoxFuture;
use task_core::metrics::enabled;
use task_core::pipeline::{Job, Outcome, Stage, Step};

use crate::metrics::{HELD, RUNTIME, TASKS};

/// Counts outcomes by task and state, times bodies, and tracks the
/// messages held.
#[derive(Debug, Default)]
pub(crate) struct Measured;

impl Stage for Measured {
    fn before<'a>(&'a self, _job: &'a mut Job<'_>) -> Step<'a> {
        if enabled() {
            metrics::gauge!(HELD).increment(1.0);
        }
        Step::Next
    }

    fn after<'a>(
        &'a self,
        job: &'a Job<'_>,
        outcome: &'a mut Outcome,
    ) -> Option<BoxFuture<'a, ()>> {
        if !enabled() {
            return None;
        }
        metrics::gauge!(HELD).decrement(1.0);
        let task = job.task.name;
        let state = match outcome {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Retry { .. } => "retried",
            Outcome::Revoked { .. } => "revoked",
            Outcome::Rejected(_) => "rejected",
            Outcome::Deferred { .. } => "deferred",
            Outcome::Replaced { .. } => "replaced",
            Outcome::Requeued { .. } => "requeued",
            _ => "ignored",
        };
        metrics::counter!(TASKS, "task" => task, "state" => state).increment(1);
        if let Some(runtime) = job.runtime {
            metrics::histogram!(RUNTIME, "task" => task).record(runtime.as_secs_f64());
        }
        None
    }
}
