//! [`EarlyAck`]: tasks that opted into early ack are acked before they run.

use task_core::pipeline::{Job, Outcome, Stage, Step};

/// Acks the message before the task runs when the task opted into it
/// (`#[task(early_ack)]`, Celery's `acks_late = False`): at most once instead of
/// at least once. If the ack fails the task is not run (the broker will
/// redeliver it).
#[derive(Debug, Default)]
pub(crate) struct EarlyAck;

impl Stage for EarlyAck {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        if !job.task.options.early_ack {
            return Step::Next;
        }
        let Some(acker) = job.acker else {
            return Step::Next;
        };
        Step::Wait(Box::pin(async move {
            let acked = acker.ack().await;
            job.mark_settled();
            match acked {
                Ok(()) => None,
                Err(error) => {
                    tracing::warn!(task_id = %job.request.id, %error,
                        "early ack failed; not running the task");
                    Some(Outcome::Ignored {
                        reason: format!("early ack failed: {error}"),
                    })
                }
            }
        }))
    }
}
