//! [`Canvas`]: what follows a task in its message's `embed`, as Celery's
//! worker does it (`celery/app/trace.py`; the messages are built by
//! `task_core::protocol::canvas`): after a success, the callbacks (`link`)
//! and then the next chain step are published before the task's result and
//! its ack; after a failure, the errbacks (`link_error`) are published with
//! the failed task's id and every remaining chain step is told FAILURE.
//! A header part of a chord (Celery's Redis-backend chords) joins the chord
//! in the result backend after it ran; the part that completes the header
//! publishes the body with the parts' values, or, when a part failed, tells
//! the body FAILURE (`ChordError`) and publishes the body's errbacks.
//! A group, chain or chord as a chain step, callback or errback is applied
//! as Celery's worker applies it (a chord's size written to the backend
//! before its header goes out). Chords without a backend that joins them,
//! and shapes Celery never sends, are refused, not half-run.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use task_core::backend::{ChordEnd, ChordJoin, ChordPart, ResultRecord};
use task_core::pipeline::{CanvasRefusal, Job, Outcome, Stage, Step};
use task_core::protocol::canvas::{Embed, FollowUp};
use task_core::protocol::result_message::{self, ExceptionInfo};
use task_core::{App, Registry, TaskError, TaskState};

/// Runs the canvas a Celery message carries (see the module docs).
pub(crate) struct Canvas {
    /// Publishes the steps, callbacks and errbacks.
    pub(crate) app: App,
    /// Where a step's task is queued when its signature names no queue.
    pub(crate) registry: Registry,
}

impl Stage for Canvas {
    /// Nested canvas, and chords unless the backend joins them, are
    /// refused (see [`CanvasRefusal`]).
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        let chords = self
            .app
            .result_backend()
            .is_some_and(|backend| backend.joins_chords());
        static JOINING: CanvasRefusal = CanvasRefusal { chords: true };
        static REFUSING: CanvasRefusal = CanvasRefusal { chords: false };
        if chords { &JOINING } else { &REFUSING }.before(job)
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
                    let joined = match published {
                        Ok(()) => {
                            self.join_chord(job, &embed, TaskState::Success, value)
                                .await
                        }
                        Err(error) => Err(error),
                    };
                    if let Err(error) = joined {
                        // Not acked: the task runs again and so do its
                        // follow-ups (at least once, never lost; a chord
                        // counts a part once however often it runs).
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
                    let exception = serde_json::value::to_raw_value(&ExceptionInfo::from(&*error));
                    let joined = match exception {
                        Ok(exception) => {
                            self.join_chord(job, &embed, TaskState::Failure, &exception)
                                .await
                        }
                        Err(error) => Err(error.to_string()),
                    };
                    if let Err(join_error) = joined {
                        tracing::error!(task_id = %job.request.id, error = %join_error,
                            "could not join the failed part to its chord; it will run again");
                        *outcome = Outcome::Retry {
                            error: TaskError::new("CanvasPublishError", join_error),
                            delay: Duration::from_secs(1),
                        };
                    }
                }
                _ => {}
            }
        }))
    }
}

impl Canvas {
    /// Joins a chord part's result (`state`, `result`) to its chord in the
    /// result backend; the part that completes the header publishes the
    /// body (or tells it a part failed). Nothing to do for other tasks.
    async fn join_chord(
        &self,
        job: &Job<'_>,
        embed: &Embed,
        state: TaskState,
        result: &RawValue,
    ) -> Result<(), String> {
        if !embed.is_chord_part() {
            return Ok(());
        }
        // The run step moved the lineage into the task's context: read the
        // group from the message.
        let headers = &job.message.properties.headers;
        let Some(group_id) = headers.get_str("group") else {
            tracing::warn!(task_id = %job.request.id,
                "a chord part without a group: its chord cannot be joined");
            return Ok(());
        };
        let backend = self
            .app
            .result_backend()
            .filter(|backend| backend.joins_chords())
            .ok_or("no result backend joins chords here")?;
        let part = ChordPart {
            group_id,
            task_id: &job.request.id,
            group_index: headers.get_json("group_index").and_then(|v| v.as_u64()),
            state,
            result,
        };
        let claim = match backend.join_chord_part(&part).await {
            Ok(ChordJoin::Complete(claim)) => claim,
            Ok(_) => return Ok(()),
            Err(error) => return Err(error.to_string()),
        };
        if let Some(failed) = claim.failed_part() {
            let reason = result_message::chord_error_reason(&failed.task_id, &failed.result);
            tracing::warn!(task_id = %job.request.id, group_id, %reason, "a chord failed");
            self.fail_chord_body(job, embed, &reason).await;
            return backend
                .finish_chord(&claim, ChordEnd::Failed)
                .await
                .map_err(|e| e.to_string());
        }
        let sent = match claim.values() {
            Ok(values) => match embed.chord_body(&job.request, group_id, &values) {
                Ok(body) => self.publish_all(vec![body]).await,
                Err(error) => Err(error),
            },
            Err(error) => Err(error.to_string()),
        };
        match sent {
            Ok(()) => backend
                .finish_chord(&claim, ChordEnd::BodySent)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => {
                // Given back, so the part's next run claims it again.
                if let Err(release) = backend.finish_chord(&claim, ChordEnd::NotSent).await {
                    tracing::warn!(%release, "could not give back a chord's claim (it expires)");
                }
                Err(error)
            }
        }
    }

    /// Tells the chord's body FAILURE (`ChordError`, `reason`) and
    /// publishes its errbacks, as Celery's `chord_error_from_stack`; the
    /// chain steps after the body are told the same (none of them runs).
    async fn fail_chord_body(&self, job: &Job<'_>, embed: &Embed, reason: &str) {
        for (body_id, reply_to) in embed.chord_body_callers() {
            let failure = result_message::chord_error(&body_id, reason);
            let record = ResultRecord {
                task_id: &body_id,
                result: &failure,
                reply_to: reply_to.as_deref(),
                task: None,
            };
            if let Err(error) = job.results.publish_result(&record).await {
                tracing::error!(task_id = %body_id, %error, "could not tell a chord body its chord failed");
            }
        }
        let errbacks = match embed.chord_body_errbacks() {
            Ok(errbacks) => self.publish_all(errbacks).await,
            Err(error) => Err(error),
        };
        if let Err(error) = errbacks {
            tracing::error!(%error, "could not publish a failed chord body's errbacks");
        }
    }

    /// Publishes each follow-up (confirmed) to its queue: the one its
    /// signature names, else its task's declared queue, else the default.
    async fn publish_all(&self, follow: Vec<FollowUp>) -> Result<(), String> {
        for follow_up in follow {
            if let Some((group_id, size)) = &follow_up.chord_size {
                // A chord starts here (in a chain or a callback): its size
                // goes to the backend before its header is published.
                let backend = self
                    .app
                    .result_backend()
                    .filter(|backend| backend.joins_chords())
                    .ok_or("no result backend joins chords here")?;
                backend
                    .set_chord_size(group_id, *size)
                    .await
                    .map_err(|e| e.to_string())?;
            }
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
