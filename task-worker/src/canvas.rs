//! [`Canvas`]: what follows a task in its message's `embed`, as Celery's
//! worker does it (`celery/app/trace.py`; the messages are built by
//! `task_core::protocol::canvas`): after a success, the callbacks (`link`)
//! and then the next chain step are published before the task's result and
//! its ack; after a failure, the errbacks (`link_error`) are published with
//! the failed task's id and every remaining chain step is told FAILURE.
//! A header part of a chord joins the chord after it ran: in the result
//! backend (Celery's Redis chords), where the part that completes the
//! header publishes the body with the parts' values, or, when a part
//! failed, tells the body FAILURE (`ChordError`) and publishes the body's
//! errbacks; or on the broker, when the part names its chord's join queue
//! ([`chord_join`]), where it puts its result in that queue and the chord's
//! join task, run here too ([`Canvas::join_on_broker`]), does the same once
//! every part is in. A group, chain or chord as a chain step, callback or
//! errback is applied as Celery's worker applies it (a chord's join set up
//! before its header goes out). Shapes Celery never sends are refused, not
//! half-run.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use task_core::backend::{ChordEnd, ChordJoin, ChordPart, ResultRecord};
use task_core::broker::{ConsumeOptions, HeaderValue};
use task_core::canvas::start_join_on_broker;
use task_core::pipeline::{CanvasRefusal, Job, Outcome, Rejection, Stage, Step};
use task_core::protocol::canvas::{self, ChordBody, Embed, FollowUp};
use task_core::protocol::chord_join::{
    entries_of, JoinRequest, PartEntry, PartKey, JOIN_QUEUE_HEADER, JOIN_TASK,
};
use task_core::protocol::result_message::{self, ExceptionInfo};
use task_core::trace_context::{TraceParent, TRACEPARENT};
use task_core::{App, Registry, TaskError, TaskState};
use tokio_util::sync::CancellationToken;

use crate::chord_entries::ChordEntries;

/// How long a join task waits for its chord's parts before it gives them
/// back and runs again (a delivery held longer would meet RabbitMQ's
/// consumer timeout, 30 minutes by default).
const JOIN_WAIT_LIMIT: Duration = Duration::from_secs(10 * 60);

/// How long a join task that cannot go on now (its join queue held by
/// another join task, the broker gone, the worker stopping) waits before
/// it runs again.
const JOIN_RETRY: Duration = Duration::from_secs(1);

/// Runs the canvas a Celery message carries (see the module docs).
pub(crate) struct Canvas {
    /// Publishes the steps, callbacks and errbacks.
    pub(crate) app: App,
    /// Where a step's task is queued when its signature names no queue.
    pub(crate) registry: Registry,
    /// Ends the wait of a join task when the worker stops.
    pub(crate) shutdown: CancellationToken,
    /// Puts finished chord parts' entries into their join queues.
    pub(crate) chord_entries: ChordEntries,
}

impl Stage for Canvas {
    /// A chord's join task waits here for the chord's parts (without its
    /// concurrency slot). Shapes Celery never sends, and chord parts that
    /// nothing here joins, are refused (see [`CanvasRefusal`]).
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        if job.task.name == JOIN_TASK {
            if let Some(slot) = job.slot.as_deref_mut() {
                slot.release();
            }
            return Step::Wait(Box::pin(
                async move { Some(self.join_on_broker(job).await) },
            ));
        }
        static BACKEND_JOINS: CanvasRefusal = CanvasRefusal {
            backend_joins: true,
            broker_joins: true,
        };
        static BROKER_JOINS: CanvasRefusal = CanvasRefusal {
            backend_joins: false,
            broker_joins: true,
        };
        if self.backend_joins() {
            &BACKEND_JOINS
        } else {
            &BROKER_JOINS
        }
        .before(job)
    }

    fn after<'a>(
        &'a self,
        job: &'a Job<'_>,
        outcome: &'a mut Outcome,
    ) -> Option<BoxFuture<'a, ()>> {
        if let Outcome::Replaced { signature } = outcome {
            let signature = signature.clone();
            return Some(Box::pin(self.replace(job, signature, outcome)));
        }
        if !matches!(outcome, Outcome::Succeeded { .. } | Outcome::Failed { .. })
            || job.task.name == JOIN_TASK
        {
            return None;
        }
        let embed = Embed::of(&job.request)?;
        Some(Box::pin(async move {
            match outcome {
                Outcome::Succeeded { value } => {
                    let published = match embed.after_success(&job.request, value) {
                        Ok(follow) => self.publish_all(job.trace, follow).await,
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
                    let published = match embed.after_failure(&job.request, error) {
                        Ok(errbacks) => self.publish_all(job.trace, errbacks).await,
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
    /// Publishes the replacement of a task that replaced itself (Celery's
    /// `Task.replace`) before the task's ack; a replacement that cannot be
    /// sent fails the task, one that cannot be published now retries it.
    async fn replace(
        &self,
        job: &Job<'_>,
        signature: Box<serde_json::Value>,
        outcome: &mut Outcome,
    ) {
        let replacement = match canvas::replacement(job.message, &job.request, &signature) {
            Ok(replacement) => replacement,
            Err(reason) => {
                tracing::warn!(task_id = %job.request.id, %reason, "the task's replacement cannot be sent");
                *outcome = Outcome::Failed {
                    error: TaskError::new("ReplaceError", reason),
                };
                return;
            }
        };
        if let Err(error) = self.publish_all(job.trace, replacement).await {
            tracing::error!(task_id = %job.request.id, %error,
                "could not publish the task's replacement; it will run again");
            *outcome = Outcome::Retry {
                error: TaskError::new("CanvasPublishError", error),
                delay: Duration::from_secs(1),
            };
        }
    }

    /// Whether the result backend joins chords (Celery's Redis chords).
    fn backend_joins(&self) -> bool {
        self.app
            .result_backend()
            .is_some_and(|backend| backend.joins_chords())
    }

    /// Joins a chord part's result (`state`, `result`) to its chord: on the
    /// broker when the part names its join queue, else in the result
    /// backend, where the part that completes the header publishes the
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
        let group_index = headers.get_json("group_index").and_then(|v| v.as_u64());
        if let Some(join_queue) = headers.get_str(JOIN_QUEUE_HEADER) {
            let entry = PartEntry {
                task_id: job.request.id.clone(),
                group_index,
                state,
                result: result.to_owned(),
            };
            return self.chord_entries.put(join_queue, entry).await;
        }
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
            group_index,
            state,
            result,
        };
        let claim = match backend.join_chord_part(&part).await {
            Ok(ChordJoin::Complete(claim)) => claim,
            Ok(_) => return Ok(()),
            Err(error) => return Err(error.to_string()),
        };
        let Some(body) = embed.chord_body() else {
            return Ok(());
        };
        if let Some(failed) = claim.failed_part() {
            let reason = result_message::chord_error_reason(&failed.task_id, &failed.result);
            tracing::warn!(task_id = %job.request.id, group_id, %reason, "a chord failed");
            self.fail_chord_body(job, body, &reason).await;
            return backend
                .finish_chord(&claim, ChordEnd::Failed)
                .await
                .map_err(|e| e.to_string());
        }
        let root_id = job.request.root_id.as_deref().unwrap_or(&job.request.id);
        let sent = match claim.values() {
            Ok(values) => match body.message(&job.request.id, root_id, group_id, &values) {
                Ok(body) => self.publish_all(job.trace, vec![body]).await,
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

    /// Runs a chord's join task: takes the chord's join queue alone, holds
    /// the parts' entries (unacked: a join that dies gives them back) until
    /// one per part is in, publishes the body with their values in header
    /// order (or tells the body a part failed), then deletes the join
    /// queue. The body is published at least once, always under its frozen
    /// task id: a join task that dies after publishing it and before
    /// deleting the queue publishes it again when it runs again.
    async fn join_on_broker(&self, job: &Job<'_>) -> Outcome {
        let request = match JoinRequest::of(&job.request) {
            Ok(request) => request,
            Err(reason) => {
                return Outcome::Rejected(Rejection::new(
                    format!("MalformedJoin: {reason}"),
                    TaskError::new("MalformedJoin", reason),
                    Vec::new(),
                ))
            }
        };
        let join_queue = task_core::protocol::chord_join::join_queue_name(&request.group_id);
        let again = |why: String| {
            tracing::info!(group_id = %request.group_id, %why, "the chord join runs again later");
            Outcome::Retry {
                error: TaskError::new("ChordJoinPending", why),
                delay: JOIN_RETRY,
            }
        };
        let broker = self.app.broker();
        let options = ConsumeOptions::manual_ack(0).exclusive(true);
        let mut consumer = match broker
            .consume(std::slice::from_ref(&join_queue), options)
            .await
        {
            Ok(consumer) => consumer,
            // Deleted once its body was sent: joined already.
            Err(error) if error.is_not_found() => return Outcome::Succeeded { value: null() },
            Err(error) => return again(format!("cannot take the join queue: {error}")),
        };
        let mut parts: BTreeMap<PartKey, PartEntry> = BTreeMap::new();
        let mut last_part = None;
        let deadline = tokio::time::sleep(JOIN_WAIT_LIMIT);
        tokio::pin!(deadline);
        while parts.len() < request.size {
            let delivery = tokio::select! {
                () = self.shutdown.cancelled() => None,
                () = &mut deadline => None,
                delivery = consumer.deliveries.next() => Some(delivery),
            };
            let delivery = match delivery {
                Some(Some(Ok(delivery))) => delivery,
                Some(Some(Err(error))) => {
                    let _ = consumer.cancel.close().await;
                    return again(format!("lost the join queue: {error}"));
                }
                Some(None) => return again("the join queue's consumer ended".to_owned()),
                None => {
                    // Given back for the next run of the join task.
                    let _ = consumer.cancel.close().await;
                    return again("the worker stops, or the parts take long".to_owned());
                }
            };
            match entries_of(&delivery.message) {
                Ok(entries) => {
                    for entry in entries {
                        last_part = Some(entry.task_id.clone());
                        parts.entry(entry.key()).or_insert(entry);
                    }
                }
                Err(error) => {
                    tracing::warn!(join_queue, %error, "dropping what is not a chord part's entry");
                    let _ = delivery.acker.ack().await;
                }
            }
        }
        let parts: Vec<PartEntry> = parts.into_values().collect();
        let body = ChordBody::new(&request.body);
        let outcome = match parts.iter().find(|part| part.state != TaskState::Success) {
            Some(failed) => {
                let reason = result_message::chord_error_reason(&failed.task_id, &failed.result);
                tracing::warn!(group_id = %request.group_id, %reason, "a chord failed");
                self.fail_chord_body(job, body, &reason).await;
                Ok(())
            }
            None => {
                let root_id = job.request.root_id.as_deref().unwrap_or(&job.request.id);
                let parent_id = last_part.as_deref().unwrap_or(&job.request.id);
                self.publish_chord_body(job.trace, body, &request, parent_id, root_id, &parts)
                    .await
            }
        };
        if let Err(error) = outcome {
            let _ = consumer.cancel.close().await;
            return again(format!("could not publish the chord's body: {error}"));
        }
        // The entries go with the queue; a late copy of a part finds no
        // queue and is not counted.
        if let Err(error) = broker.delete_queue(&join_queue).await {
            tracing::warn!(join_queue, %error, "could not delete a joined chord's queue (it expires)");
        }
        let _ = consumer.cancel.close().await;
        Outcome::Succeeded { value: null() }
    }

    /// Publishes a complete chord's body to its queue with the parts'
    /// values, in header order, in front of its arguments.
    async fn publish_chord_body(
        &self,
        trace: Option<TraceParent>,
        body: ChordBody<'_>,
        request: &JoinRequest,
        parent_id: &str,
        root_id: &str,
        parts: &[PartEntry],
    ) -> Result<(), String> {
        let values: Vec<&RawValue> = parts.iter().map(|part| &*part.result).collect();
        let values = serde_json::value::to_raw_value(&values).map_err(|e| e.to_string())?;
        let mut body = body.message(parent_id, root_id, &request.group_id, &values)?;
        if body.queue.is_none() {
            body.queue = Some(request.body_queue.clone());
        }
        self.publish_all(trace, vec![body]).await
    }

    /// Tells the chord's body FAILURE (`ChordError`, `reason`) and
    /// publishes its errbacks, as Celery's `chord_error_from_stack`; the
    /// chain steps after the body are told the same (none of them runs).
    async fn fail_chord_body(&self, job: &Job<'_>, body: ChordBody<'_>, reason: &str) {
        for (body_id, reply_to) in body.callers() {
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
        let errbacks = match body.errbacks(reason) {
            Ok(errbacks) => self.publish_all(job.trace, errbacks).await,
            Err(error) => Err(error),
        };
        if let Err(error) = errbacks {
            tracing::error!(%error, "could not publish a failed chord body's errbacks");
        }
    }

    /// Publishes each follow-up (confirmed) to its queue: the one its
    /// signature names, else its task's declared queue, else the default;
    /// each a span of `trace` (the task's) unless its signature set one.
    /// A chord that starts here is set up first: its size written to the
    /// result backend when it joins chords, else its join started on the
    /// broker (its header parts then name the join queue).
    async fn publish_all(
        &self,
        trace: Option<TraceParent>,
        follow: Vec<FollowUp>,
    ) -> Result<(), String> {
        // The chord joined on the broker that the messages belong to.
        let mut joined_on_broker: Option<(String, String)> = None;
        for mut follow_up in follow {
            if let Some(start) = &follow_up.chord_start {
                match self
                    .app
                    .result_backend()
                    .filter(|backend| backend.joins_chords())
                {
                    Some(backend) => backend
                        .set_chord_size(&start.group_id, start.size)
                        .await
                        .map_err(|e| e.to_string())?,
                    None => {
                        let body = ChordBody::new(&start.body);
                        let body_queue = body
                            .queue()
                            .or_else(|| {
                                let task = body.task()?;
                                Some(self.registry.get(&task)?.options.queue?.to_owned())
                            })
                            .unwrap_or_else(|| self.app.default_queue().to_owned());
                        let request = JoinRequest {
                            group_id: start.group_id.clone(),
                            size: start.size,
                            body: start.body.clone(),
                            body_queue,
                        };
                        let root_id = follow_up.message.properties.headers.get_str("root_id");
                        let join_queue = start_join_on_broker(&self.app, &request, root_id)
                            .await
                            .map_err(|e| e.to_string())?;
                        joined_on_broker = Some((start.group_id.clone(), join_queue));
                    }
                }
            }
            if let (Some(group), Some((joined, join_queue))) =
                (&follow_up.chord_group, &joined_on_broker)
            {
                if group == joined {
                    let message = &mut follow_up.message;
                    message
                        .properties
                        .headers
                        .insert_str(JOIN_QUEUE_HEADER, join_queue);
                    // Its result goes to the join alone (see `chord`).
                    message
                        .properties
                        .headers
                        .insert("ignore_result", HeaderValue::Boolean(true));
                }
            }
            if let Some(trace) = trace {
                let headers = &mut follow_up.message.properties.headers;
                if !headers.contains_key(TRACEPARENT) {
                    headers.insert(TRACEPARENT, trace.header_value());
                }
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

/// A JSON `null`, the join task's value.
fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!("null is JSON"))
}
