//! Eager mode (Celery's `task_always_eager`): an eager [`App`] runs each call
//! inline, in the caller, and returns a result that is already ready, so an
//! application's tests exercise its tasks without a broker or a worker.
//!
//! The call still crosses the wire format both ways, so a test catches what
//! a real broker and worker would reject: the full task message is encoded
//! ([`encode_task`]) and decoded ([`decode_task`]), the task is looked up in
//! [`Registry::global`] (an unknown name is FAILURE `NotRegistered`, as a
//! worker answers), its handler runs with panics caught and under its hard
//! time limit, and the outcome is encoded as a result message and decoded
//! through the same [`PendingResults`] path as a result from the reply queue.
//!
//! Unlike a worker, an eager call runs at once: `countdown`, `eta` and rate
//! limits are ignored (as in Celery), while an `expires` already past answers
//! REVOKED. A failure the worker would retry (`TaskError::retry`, or a type in
//! the task's `autoretry_for`, while `max_retries` allows) is retried inline
//! at once, each attempt seeing its retry count in
//! [`current_task`](crate::current_task), with a RETRY state in between (at
//! most 100 times per call).

use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;

use crate::async_result::PendingResults;
use crate::backend::{BackendError, ResultRecord};
use crate::broker::memory::MemoryBroker;
use crate::broker::Message;
use crate::pipeline::{CanvasRefusal, Expiry, Input, Outcome, Pipeline, Processed, ResultSink};
use crate::protocol::canvas::{ChordBody, ChordStart, Embed, FollowUp};
use crate::protocol::result_message::{self, ExceptionInfo, ResultBody};
use crate::protocol::task_message::{retried_copy, retried_copy_with, PartialRequest};
use crate::registry::DuplicateTaskName;
use crate::signature::EncodedCall;
use crate::{App, AsyncResult, DeliveryInfo, Error, Registry, Signature, States, TaskError};

/// The `reply_to` of an eager call's message: results never leave the process.
pub(crate) const EAGER_REPLY_TO: &str = "eager";

/// At most this many inline retries of one call, so a task that always
/// fails under an unlimited retry policy ends its test instead of hanging it.
const MAX_EAGER_RETRIES: u32 = 100;

impl App {
    /// An app that runs every call inline instead of publishing it (Celery's
    /// `task_always_eager`), for tests: `add.delay(2, 3).await?` runs `add`
    /// before returning, and the returned result is ready. It connects to no
    /// broker (its [`broker`](App::broker) is a private `memory://` one that
    /// calls never use) and becomes the process's default app, so code under
    /// test that calls `.delay()` runs its tasks eagerly.
    ///
    /// ```
    /// use std::time::Duration;
    /// use task_core::{task, App, TaskError};
    ///
    /// #[task(name = "doc.eager.add")]
    /// async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    ///     Ok(x + y)
    /// }
    ///
    /// # #[tokio::main] async fn main() -> Result<(), task_core::Error> {
    /// let _app = App::eager();
    /// let result = add.delay(2, 3).await?;
    /// assert!(result.ready());
    /// assert_eq!(result.get(Duration::ZERO).await?, 5);
    /// # Ok(()) }
    /// ```
    pub fn eager() -> App {
        App::builder()
            .eager(true)
            .build_with(Arc::new(MemoryBroker::new()))
    }
}

/// Eager mode's pipeline: the worker's steps without the waits (no ETA, no
/// rate limit, as in Celery) and without a broker to ack.
fn pipeline() -> Result<&'static Pipeline, DuplicateTaskName> {
    static PIPELINE: OnceLock<Result<Pipeline, DuplicateTaskName>> = OnceLock::new();
    PIPELINE
        .get_or_init(|| {
            let registry = Registry::global()?.clone();
            Ok(Pipeline::builder(registry)
                .eager(true)
                // Chords in chains and callbacks run inline (parts of a
                // chord joined elsewhere never reach eager mode).
                .stage(CanvasRefusal {
                    backend_joins: false,
                    broker_joins: true,
                })
                .stage(Expiry)
                .build())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs `signature` inline, as if consumed from its queue (else
/// `default_queue`), and returns its ready result.
pub(crate) async fn apply<R: DeserializeOwned>(
    pending: &PendingResults,
    states: &Arc<States>,
    default_queue: &str,
    signature: Signature<R>,
) -> Result<AsyncResult<R>, Error> {
    let EncodedCall {
        task_id, message, ..
    } = signature.encode_call(Some(EAGER_REPLY_TO))?;
    let queue = signature.options.queue.as_deref().unwrap_or(default_queue);
    let slot = (!signature.options.ignore_result).then(|| pending.expect(&task_id));
    execute(
        message,
        queue,
        default_queue,
        &EagerResults { pending },
        states,
    )
    .await;
    // Ready already: nothing more arrives through an app.
    Ok(AsyncResult::new(task_id, slot, None))
}

/// Hands each result to its waiter, read as the reply-queue consumer reads
/// results.
struct EagerResults<'p> {
    pending: &'p PendingResults,
}

#[async_trait::async_trait]
impl ResultSink for EagerResults<'_> {
    async fn publish_result(&self, record: &ResultRecord<'_>) -> Result<(), BackendError> {
        self.deliver(record.result);
        Ok(())
    }
}

impl EagerResults<'_> {
    fn deliver(&self, message: &Message) {
        match ResultBody::decode(&message.body) {
            Ok(body) => self.pending.deliver(body),
            Err(error) => {
                let task_id = message.properties.correlation_id.as_deref().unwrap_or("?");
                tracing::error!(%task_id, %error, "an eager result message does not decode");
                // Its waiter sees the result as lost rather than waiting forever.
                self.pending.forget(task_id);
            }
        }
    }
}

/// What a worker does with the task message, through the same pipeline,
/// with eager mode's settlement: results go to the caller, and a retry runs
/// again at once.
async fn execute(
    mut message: Message,
    queue: &str,
    default_queue: &str,
    results: &EagerResults<'_>,
    states: &Arc<States>,
) {
    let pipeline = match pipeline() {
        Ok(pipeline) => pipeline,
        Err(duplicate) => {
            let id = PartialRequest::of(&message).id.unwrap_or_default();
            let failure = TaskError::new("DuplicateTaskName", duplicate.to_string());
            results.deliver(&result_message::failure(&id, &failure));
            return;
        }
    };
    // As if published to the default exchange with the queue as routing key.
    let delivery = DeliveryInfo {
        routing_key: queue.to_owned(),
        priority: message.properties.priority,
        ..DeliveryInfo::default()
    };
    let mut attempts = 0;
    loop {
        let input = Input {
            message: &message,
            queue,
            delivery: delivery.clone(),
            acker: None,
            slot: None,
            results,
            states,
        };
        let Processed { job, outcome } = pipeline.process(input).await;
        if let Outcome::Rejected(rejection) = &outcome {
            for (id, _) in &rejection.notify {
                results.deliver(&rejection.result_for(id));
            }
            return;
        }
        let Some(job) = job else {
            return;
        };
        // No queue takes it back: run again, it would loop.
        if let Outcome::Requeued { reason } = &outcome {
            let _ = job
                .report(&result_message::rejected(&job.request.id, reason))
                .await;
            return;
        }
        let outcome = match outcome {
            Outcome::Retry { error, .. } if attempts == MAX_EAGER_RETRIES => {
                Outcome::Failed { error }
            }
            other => other,
        };
        if let Some(result) = outcome.caller_result(&job.request.id) {
            // Eager results cannot fail to arrive.
            let _ = job.report(&result).await;
        }
        if !matches!(outcome, Outcome::Retry { .. }) {
            follow_up(pipeline, &job, &outcome, default_queue, results, states).await;
            return;
        }
        attempts += 1;
        let retries = job.request.retries().saturating_add(1);
        let changes = match &outcome {
            Outcome::Retry { error, .. } => error.retry_changes(),
            _ => None,
        };
        let retried = match changes {
            Some(changes) => retried_copy_with(job.message, retries, crate::clock::now(), changes)
                .unwrap_or_else(|_| retried_copy(job.message, retries, crate::clock::now())),
            None => retried_copy(job.message, retries, crate::clock::now()),
        };
        drop(job);
        message = retried;
    }
}

/// What follows a task in its `embed`, run inline as a worker would publish
/// it: after a success the callbacks and the next chain step, after a
/// failure the errbacks (and FAILURE for the remaining chain steps).
async fn follow_up(
    pipeline: &Pipeline,
    job: &crate::pipeline::Job<'_>,
    outcome: &Outcome,
    default_queue: &str,
    results: &EagerResults<'_>,
    states: &Arc<States>,
) {
    let follow = if let Outcome::Replaced { signature } = outcome {
        // The replacement answers the caller, under the same id.
        match crate::protocol::canvas::replacement(job.message, &job.request, signature) {
            Ok(replacement) => Ok(replacement),
            Err(reason) => {
                let failure = TaskError::new("ReplaceError", reason);
                results.deliver(&result_message::failure(&job.request.id, &failure));
                return;
            }
        }
    } else {
        let Some(embed) = Embed::of(&job.request) else {
            return;
        };
        match outcome {
            Outcome::Succeeded { value } => embed.after_success(&job.request, value),
            Outcome::Failed { error } => {
                for (id, _) in embed.chain_callers(job.request.reply_to.as_deref()) {
                    results.deliver(&result_message::failure(&id, error));
                }
                embed.after_failure(&job.request, error)
            }
            _ => return,
        }
    };
    let follow = match follow {
        Ok(follow) => follow,
        Err(error) => {
            tracing::error!(task_id = %job.request.id, %error, "what follows an eager task does not encode");
            return;
        }
    };
    let mut follow = follow.into_iter().peekable();
    while let Some(mut follow_up) = follow.next() {
        if let Some(start) = follow_up.chord_start.take() {
            // A chord in a chain or callback: its parts follow its first.
            let mut parts = vec![follow_up];
            while let Some(part) =
                follow.next_if(|next| next.chord_group.as_deref() == Some(&start.group_id))
            {
                parts.push(part);
            }
            let context = InlineContext {
                pipeline,
                default_queue,
                results,
                states,
            };
            Box::pin(run_chord_inline(&context, start, parts)).await;
            continue;
        }
        let queue = follow_up.queue_in(pipeline.registry(), default_queue);
        Box::pin(execute(
            follow_up.message,
            &queue,
            default_queue,
            results,
            states,
        ))
        .await;
    }
}

/// What running a message inline needs.
struct InlineContext<'a, 'p> {
    pipeline: &'a Pipeline,
    default_queue: &'a str,
    results: &'a EagerResults<'p>,
    states: &'a Arc<States>,
}

impl InlineContext<'_, '_> {
    async fn execute(&self, follow_up: FollowUp) {
        let queue = follow_up.queue_in(self.pipeline.registry(), self.default_queue);
        Box::pin(execute(
            follow_up.message,
            &queue,
            self.default_queue,
            self.results,
            self.states,
        ))
        .await;
    }
}

/// A chord a chain or callback reached, run inline: its parts one after
/// the other (without the body they carry), then its body with their
/// values, or, when a part failed, `ChordError` for the body and the steps
/// after it, and the body's errbacks.
async fn run_chord_inline(
    context: &InlineContext<'_, '_>,
    start: ChordStart,
    parts: Vec<FollowUp>,
) {
    let pending = context.results.pending;
    let mut values = Vec::with_capacity(parts.len());
    let mut failed: Option<String> = None;
    let mut last_part = String::new();
    let mut root_id = None;
    for mut part in parts {
        let id = part
            .message
            .properties
            .correlation_id
            .clone()
            .unwrap_or_default();
        root_id = root_id.or_else(|| {
            part.message
                .properties
                .headers
                .get_str("root_id")
                .map(str::to_owned)
        });
        without_chord(&mut part.message);
        let handle =
            AsyncResult::<serde_json::Value>::new(id.clone(), Some(pending.expect(&id)), None);
        context.execute(part).await;
        match handle.get(std::time::Duration::ZERO).await {
            Ok(value) => values.push(value),
            Err(error) => {
                failed.get_or_insert_with(|| failed_part_reason(&id, &error));
            }
        }
        last_part = id;
    }
    let body = ChordBody::new(&start.body);
    if let Some(reason) = failed {
        for (body_id, _) in body.callers() {
            context
                .results
                .deliver(&result_message::chord_error(&body_id, &reason));
        }
        match body.errbacks(&reason) {
            Ok(errbacks) => {
                for errback in errbacks {
                    context.execute(errback).await;
                }
            }
            Err(error) => tracing::error!(%error, "a chord body's errbacks do not encode"),
        }
        return;
    }
    let sent = serde_json::value::to_raw_value(&values)
        .map_err(|e| e.to_string())
        .and_then(|values| {
            let root = root_id.as_deref().unwrap_or(&last_part);
            body.message(&last_part, root, &start.group_id, &values)
        });
    match sent {
        Ok(message) => context.execute(message).await,
        Err(error) => tracing::error!(%error, "an eager chord's body does not encode"),
    }
}

/// The `ChordError` reason for a chord whose part `part_id` ended in
/// `error`, in Celery's words (eager mode learns of a part's failure as an
/// [`Error`], not as the stored exception a worker's join reads).
pub(crate) fn failed_part_reason(part_id: &str, error: &Error) -> String {
    let (exc_type, message) = match error.as_task_failure() {
        Some(failure) => (failure.exc_type.clone(), failure.message.clone()),
        None => ("Exception".to_owned(), error.to_string()),
    };
    let info = ExceptionInfo {
        exc_type,
        exc_message: serde_json::Value::Array(vec![message.into()]),
        exc_module: None,
    };
    match serde_json::value::to_raw_value(&info) {
        Ok(raised) => result_message::chord_error_reason(part_id, &raised),
        Err(_) => format!("Dependency {part_id} raised {}", info.exc_type),
    }
}

/// Removes the chord body a header part carries (`embed.chord`): inline,
/// the chord is joined by its runner, not by its parts.
fn without_chord(message: &mut Message) {
    let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(&message.body) else {
        return;
    };
    if let Some(embed) = body.get_mut(2).and_then(serde_json::Value::as_object_mut) {
        embed.insert("chord".into(), serde_json::Value::Null);
    }
    if let Ok(bytes) = serde_json::to_vec(&body) {
        message.body = bytes;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{task, App, Error, Signature, TaskError, TaskState};

    #[task(name = "test.eager.add")]
    async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
        Ok(x + y)
    }

    #[task(name = "test.eager.boom")]
    async fn boom() -> Result<i64, TaskError> {
        panic!("kaboom")
    }

    #[task(name = "test.eager.takes_float")]
    async fn takes_float(x: f64) -> Result<f64, TaskError> {
        Ok(x)
    }

    static ATTEMPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    #[task(name = "test.eager.flaky", max_retries = 5, autoretry_for = ["Flaky"])]
    async fn flaky(fail_times: u32) -> Result<u32, TaskError> {
        ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let retries = crate::current_task().map_or(u32::MAX, |t| t.retries());
        if retries < fail_times {
            return Err(TaskError::new("Flaky", format!("attempt {retries}")));
        }
        Ok(retries)
    }

    fn app() -> App {
        App::builder()
            .eager(true)
            .set_as_default(false)
            .build_with(std::sync::Arc::new(
                crate::broker::memory::MemoryBroker::new(),
            ))
    }

    #[tokio::test]
    async fn calls_run_inline_and_come_back_ready() {
        let app = app();
        assert!(app.is_eager());
        let result = add.s(2, 3).apply_async_with(&app).await.unwrap();
        assert!(result.ready());
        assert_eq!(result.state(), TaskState::Success);
        assert_eq!(result.get(Duration::ZERO).await.unwrap(), 5);
        assert_eq!(app.pending_results(), 0);
    }

    #[tokio::test]
    async fn failures_panics_and_unknown_tasks_are_failures() {
        let app = app();
        let error = boom.s().apply_async_with(&app).await.unwrap();
        let error = error.get(Duration::ZERO).await.unwrap_err();
        let failure = error.as_task_failure().unwrap();
        assert_eq!(
            (failure.exc_type.as_str(), failure.message.as_str()),
            ("Panic", "kaboom")
        );

        let unknown = Signature::<i64>::new("test.eager.nobody")
            .apply_async_with(&app)
            .await
            .unwrap();
        let error = unknown.get(Duration::ZERO).await.unwrap_err();
        assert_eq!(error.as_task_failure().unwrap().exc_type, "NotRegistered");

        let bad = Signature::<i64>::new("test.eager.add")
            .arg("two")
            .arg(3)
            .apply_async_with(&app)
            .await
            .unwrap();
        let error = bad.get(Duration::ZERO).await.unwrap_err();
        assert_eq!(error.as_task_failure().unwrap().exc_type, "TypeError");
    }

    #[tokio::test]
    async fn what_the_wire_cannot_carry_fails_as_it_would_on_a_worker() {
        let app = app();
        // JSON has no NaN: the argument arrives as null, which no f64 accepts.
        let result = takes_float
            .s(f64::NAN)
            .apply_async_with(&app)
            .await
            .unwrap();
        let error = result.get(Duration::ZERO).await.unwrap_err();
        assert_eq!(error.as_task_failure().unwrap().exc_type, "TypeError");
        // Keys that are not strings cannot be encoded at all.
        let map = std::collections::HashMap::from([((1, 2), 3)]);
        let error = Signature::<i64>::new("test.eager.add")
            .arg(map)
            .apply_async_with(&app)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::EncodeArguments { .. }), "{error}");
    }

    #[tokio::test]
    async fn expired_calls_are_revoked_and_ignored_results_have_none() {
        let app = app();
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        let revoked = add
            .s(1, 1)
            .expires_at(past)
            .apply_async_with(&app)
            .await
            .unwrap();
        assert!(matches!(
            revoked.get(Duration::ZERO).await,
            Err(Error::Revoked { .. })
        ));
        let ignored = add
            .s(1, 1)
            .ignore_result()
            .apply_async_with(&app)
            .await
            .unwrap();
        assert!(matches!(
            ignored.get(Duration::ZERO).await,
            Err(Error::ResultIgnored { .. })
        ));
    }

    static LINKED: std::sync::Mutex<Vec<i64>> = std::sync::Mutex::new(Vec::new());

    #[task(name = "test.eager.linked")]
    async fn linked(value: i64, offset: i64) -> Result<(), TaskError> {
        LINKED.lock().unwrap().push(value + offset);
        Ok(())
    }

    #[tokio::test]
    async fn callbacks_and_errbacks_run_inline() {
        let app = app();
        let result = add
            .s(1, 2)
            .link(Signature::<()>::new("test.eager.linked").arg(1000))
            .apply_async_with(&app)
            .await
            .unwrap();
        assert_eq!(result.get(Duration::ZERO).await.unwrap(), 3);
        let failed = boom
            .s()
            .link_error(Signature::<()>::new("test.eager.add").arg(1))
            .apply_async_with(&app)
            .await
            .unwrap();
        assert!(failed.get(Duration::ZERO).await.is_err());
        // The callback got the result first (the errback, `add(<id>, 1)`,
        // fails on its string id: errbacks are called, their own failures
        // are theirs).
        assert!(LINKED.lock().unwrap().contains(&1003));
    }

    #[tokio::test]
    async fn failures_the_worker_would_retry_are_retried_inline() {
        let app = app();
        ATTEMPTS.store(0, std::sync::atomic::Ordering::SeqCst);
        let result = flaky.s(2).apply_async_with(&app).await.unwrap();
        assert_eq!(result.get(Duration::ZERO).await.unwrap(), 2);
        assert_eq!(ATTEMPTS.load(std::sync::atomic::Ordering::SeqCst), 3);

        let exhausted = flaky.s(10).apply_async_with(&app).await.unwrap();
        let error = exhausted.get(Duration::ZERO).await.unwrap_err();
        let failure = error.as_task_failure().unwrap();
        assert_eq!(
            (failure.exc_type.as_str(), failure.message.as_str()),
            ("Flaky", "attempt 5")
        );
    }
}
