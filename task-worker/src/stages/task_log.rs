//! [`TaskLog`]: one log line when a task starts and one with its outcome.

use futures_util::future::BoxFuture;
use task_core::pipeline::{Job, Outcome, Stage, Step};

/// Logs `task received` before the run, and the outcome after it.
#[derive(Debug, Default)]
pub(crate) struct TaskLog;

impl Stage for TaskLog {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        tracing::info!(task_id = %job.request.id, task = %job.request.name, "task received");
        Step::Next
    }

    fn after<'a>(
        &'a self,
        job: &'a Job<'_>,
        outcome: &'a mut Outcome,
    ) -> Option<BoxFuture<'a, ()>> {
        let (task_id, task) = (&job.request.id, &job.request.name);
        let elapsed = job.runtime.unwrap_or_default();
        match outcome {
            Outcome::Succeeded { .. } => {
                tracing::info!(%task_id, %task, ?elapsed, "task succeeded");
            }
            Outcome::Failed { error } => {
                tracing::warn!(%task_id, %task, ?elapsed, %error, "task failed");
            }
            Outcome::Retry { error, delay } => {
                tracing::warn!(%task_id, %task, retries = job.request.retries() + 1, ?delay, %error,
                    "task will be retried");
            }
            Outcome::Replaced { signature } => {
                let by = signature
                    .get("task")
                    .and_then(|name| name.as_str())
                    .unwrap_or("?");
                tracing::info!(%task_id, %task, ?elapsed, replaced_by = by, "task replaced");
            }
            _ => {}
        }
        None
    }
}
