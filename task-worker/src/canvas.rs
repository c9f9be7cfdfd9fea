//! [`Canvas`]: what follows a task in its message's `embed`, as Celery's
//! worker does it (`celery/app/trace.py`; the messages are built by
//! `task_core::protocol::canvas`): after a success, the callbacks (`link`)
//! and then the next chain step are published before the task's result and
//! its ack; after a failure, the errbacks (`link_error`) are published with
//! the failed task's id and every remaining chain step is told FAILURE.
//! Chords and nested canvas (a group or chain as a callback or step) are
//! refused, not half-run, until they are built.

use std::time::Duration;

use futures_util::future::BoxFuture;
use task_core::backend::ResultRecord;
use task_core::pipeline::{CanvasRefusal, Job, Outcome, Stage, Step};
use task_core::protocol::canvas::{Embed, FollowUp};
use task_core::protocol::result_message;
use task_core::{App, Registry, TaskError};

/// Runs the canvas a Celery message carries (see the module docs).
pub(crate) struct Canvas {
    /// Publishes the steps, callbacks and errbacks.
    pub(crate) app: App,
    /// Where a step's task is queued when its signature names no queue.
    pub(crate) registry: Registry,
}

impl Stage for Canvas {
    /// Chords and nested canvas are refused (see [`CanvasRefusal`]).
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        CanvasRefusal.before(job)
    }

    fn after<'a>(
        &'a self,
        job: &'a Job<'_>,
        outcome: &'a mut Outcome,
    ) -> Option<BoxFuture<'a, ()>> {
        if !matches!(outcome, Outcome::Succeeded { .. } | Outcome::Failed { .. }) {
            return None;
        }
        let embed = Embed::of(&job.request)?;
        Some(Box::pin(async move {
            match outcome {
                Outcome::Succeeded { value } => {
                    let published = match embed.after_success(&job.request, value) {
                        Ok(follow) => self.publish_all(follow).await,
                        Err(error) => Err(error),
                    };
                    if let Err(error) = published {
                        // Not acked: the task runs again and so do its
                        // follow-ups (at least once, never lost).
                        tracing::error!(task_id = %job.request.id, %error,
                            "could not publish what follows the task; it will run again");
                        *outcome = Outcome::Retry {
                            error: TaskError::new("CanvasPublishError", error),
                            delay: Duration::from_secs(1),
                        };
                    }
                }
                Outcome::Failed { error } => {
                    let published = match embed.after_failure(&job.request) {
                        Ok(errbacks) => self.publish_all(errbacks).await,
                        Err(error) => Err(error),
                    };
                    if let Err(error) = published {
                        tracing::error!(task_id = %job.request.id, %error,
                            "could not publish the errbacks");
                    }
                    // None of the remaining steps will run: their callers
                    // hear of the failure (Celery's `_fail_chain`).
                    for (id, reply_to) in embed.chain_callers(job.request.reply_to.as_deref()) {
                        let failure = result_message::failure(&id, error);
                        let record = ResultRecord {
                            task_id: &id,
                            result: &failure,
                            reply_to: Some(&reply_to),
                            task: None,
                        };
                        if let Err(error) = job.results.publish_result(&record).await {
                            tracing::error!(task_id = %id, %error,
                                "could not tell a remaining chain step of the failure");
                        }
                    }
                }
                _ => {}
            }
        }))
    }
}

impl Canvas {
    /// Publishes each follow-up (confirmed) to its queue: the one its
    /// signature names, else its task's declared queue, else the default.
    async fn publish_all(&self, follow: Vec<FollowUp>) -> Result<(), String> {
        for follow_up in follow {
            let queue = follow_up.queue_in(&self.registry, self.app.default_queue());
            self.app
                .ensure_queue(&queue)
                .await
                .map_err(|e| e.to_string())?;
            self.app
                .broker()
                .publish("", &queue, &follow_up.message)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
