//! The worker's settlement: the one place where a job's [`Outcome`] becomes
//! publishes (its result, its retry, its parked or dead-lettered copy) and
//! then the ack, in the order that loses nothing: whatever must be published
//! is confirmed before the original message is acked; if it cannot be, the
//! message goes back to its queue (after a backoff pause).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use task_core::backend::{BackendError, ResultBackend, ResultRecord, TaskMessageRef};
use task_core::broker::{
    dead_letter_headers, BrokerError, DeadLetterRetention, Delivery, Message, QueueSpec,
};
use task_core::pipeline::{Job, Outcome, Processed, Rejection, ResultSink};
use task_core::protocol::task_message::{retried_copy, retried_copy_with, PartialRequest};
use task_core::protocol::{format_time, process_name};
use task_core::App;

use crate::logging::Throttle;

/// Settles the jobs of one worker.
#[derive(Clone)]
pub(crate) struct Settler {
    pub(crate) app: App,
    /// How much the dead-letter queues keep.
    pub(crate) dead_letter_retention: DeadLetterRetention,
    /// Spaces out messages returned to their queue after a failure.
    pub(crate) requeue_backoff: Arc<RequeueBackoff>,
    /// Where results go.
    pub(crate) results: Arc<WorkerResults>,
}

/// Results published to the callers' reply queues (`rpc://`) or stored in
/// the app's result backend.
pub(crate) struct WorkerResults {
    pub(crate) app: App,
    /// Warnings that could repeat for every message.
    pub(crate) warnings: Warnings,
    /// How long storing one result in the backend is tried (with backoff)
    /// before the task's message is given back to the broker instead.
    pub(crate) store_deadline: Duration,
}

/// Warnings that a stream of messages could repeat: at most one line per
/// kind every ten seconds, with a count of the ones held back.
#[derive(Debug)]
pub(crate) struct Warnings {
    dropped_result: Throttle,
    dead_letter_settings: Throttle,
    store_failed: Throttle,
}

impl Default for Warnings {
    fn default() -> Self {
        let every = Duration::from_secs(10);
        Self {
            dropped_result: Throttle::new(every),
            dead_letter_settings: Throttle::new(every),
            store_failed: Throttle::new(every),
        }
    }
}

/// How long to hold a message before returning it to its queue after the
/// worker failed to settle it otherwise (could not dead-letter it or publish
/// its retry): the broker would hand it straight back, and a tight loop of
/// redeliveries helps nobody. Doubles with each consecutive failure, from
/// 100 ms to 30 s; any success resets it.
#[derive(Debug, Default)]
pub(crate) struct RequeueBackoff {
    consecutive_failures: AtomicU32,
}

impl RequeueBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    /// Counts a failure and returns how long to wait before requeueing.
    pub(crate) fn failed(&self) -> Duration {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        Self::FIRST
            .saturating_mul(1u32 << failures.min(16))
            .min(Self::MAX)
    }

    /// A message was settled as intended: the next failure starts over.
    pub(crate) fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl ResultSink for WorkerResults {
    async fn publish_result(&self, record: &ResultRecord<'_>) -> Result<(), BackendError> {
        self.publish(record).await
    }
}

impl WorkerResults {
    /// Hands a result to its caller (called directly by settlement: no
    /// boxed future): stores it in the result backend, trying again with
    /// backoff while the backend is unreachable (an error after the store
    /// deadline), or publishes it to the caller's reply queue (`rpc://`).
    pub(crate) async fn publish(&self, record: &ResultRecord<'_>) -> Result<(), BackendError> {
        match self.app.result_backend() {
            Some(backend) => self.store(backend.as_ref(), record).await,
            None => {
                if let Some(reply_to) = record.reply_to {
                    self.publish_reply(reply_to, record.result).await;
                }
                Ok(())
            }
        }
    }

    /// Stores `record`, retrying transient failures (Redis restarting, a
    /// timeout) with a pause doubling from 100 ms to 5 s, until the store
    /// deadline.
    async fn store(
        &self,
        backend: &dyn ResultBackend,
        record: &ResultRecord<'_>,
    ) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + self.store_deadline;
        let mut pause = Duration::from_millis(100);
        loop {
            match backend.store(record).await {
                Ok(()) => return Ok(()),
                Err(error)
                    if error.is_transient() && tokio::time::Instant::now() + pause < deadline =>
                {
                    if let Some(suppressed) = self.warnings.store_failed.allow() {
                        tracing::warn!(task_id = %record.task_id, %error, ?pause, suppressed,
                            "could not store a result; trying again (the task is not acked until it is stored)");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Publishes a result to the caller's reply queue. A caller that is
    /// gone (its queue no longer exists) is not an error, Celery drops such
    /// results too, but it is reported (at most once every ten seconds).
    async fn publish_reply(&self, reply_to: &str, message: &Message) {
        match self.app.broker().publish_reply(reply_to, message).await {
            Ok(()) => {}
            Err(BrokerError::Unroutable { .. }) => {
                if let Some(suppressed) = self.warnings.dropped_result.allow() {
                    let task_id = message.properties.correlation_id.as_deref().unwrap_or("?");
                    tracing::warn!(%task_id, %reply_to, suppressed,
                        "result dropped: the caller's reply queue no longer exists \
                         (the caller is gone or its reply queue expired)");
                }
            }
            Err(error) => tracing::error!(%reply_to, %error, "could not publish a result"),
        }
    }
}

impl Settler {
    /// Settles `delivery` as its processing ended.
    pub(crate) async fn settle(&self, delivery: &Delivery, processed: Processed<'_>) {
        let Processed { job, outcome } = processed;
        // The rarer endings are boxed: their futures (dead-lettering above
        // all) would otherwise size the state of every delivery's task.
        let settled = match (job, outcome) {
            (job, Outcome::Rejected(rejection)) => {
                Box::pin(self.reject(delivery, job.as_ref(), &rejection)).await
            }
            (None, _) => Ok(()),
            (Some(job), Outcome::Retry { error, delay }) => {
                let outcome = Outcome::Retry { error, delay };
                Box::pin(self.retry(delivery, &job, &outcome, delay)).await
            }
            (Some(job), Outcome::Deferred { wait }) => {
                Box::pin(self.park(delivery, &job, wait)).await
            }
            (Some(job), Outcome::Requeued { reason }) => {
                if job.is_settled() {
                    tracing::warn!(task_id = %job.request.id, %reason,
                        "the task rejected its message with requeue, but it was acked early: dropped");
                    Ok(())
                } else {
                    tracing::info!(task_id = %job.request.id, %reason, "requeuing the task's message");
                    delivery.acker.reject(true).await
                }
            }
            (Some(job), outcome) => match self.report(&job, &outcome).await {
                Ok(()) => self.ack(delivery, &job).await,
                Err(error) => Box::pin(self.not_stored(delivery, &job, &error)).await,
            },
        };
        if let Err(error) = settled {
            tracing::warn!(%error, "could not settle a message; the broker will redeliver it");
        }
    }

    /// Tells the caller the outcome, unless it wants no result.
    async fn report(&self, job: &Job<'_>, outcome: &Outcome) -> Result<(), BackendError> {
        if job.request.ignore_result() {
            return Ok(());
        }
        let Some(result) = outcome.caller_result(&job.request.id) else {
            return Ok(());
        };
        let record = ResultRecord {
            task_id: &job.request.id,
            result: &result,
            reply_to: job.request.reply_to.as_deref(),
            task: Some(TaskMessageRef {
                message: job.message,
                queue: job.queue,
            }),
        };
        self.results.publish(&record).await
    }

    /// A final result could not be stored: the message is not acked but
    /// given back to its queue after a pause (the task runs again, and its
    /// result is stored then), unless it was acked early.
    async fn not_stored(
        &self,
        delivery: &Delivery,
        job: &Job<'_>,
        error: &BackendError,
    ) -> Result<(), BrokerError> {
        let wait = self.requeue_backoff.failed();
        if job.is_settled() {
            tracing::error!(task_id = %job.request.id, %error,
                "could not store the result of a task acked early: the result is lost");
            return Ok(());
        }
        tracing::error!(task_id = %job.request.id, %error, ?wait,
            "could not store a result; returning the task to its queue after a pause");
        self.requeue_later(delivery, wait).await
    }

    /// Acks the message unless a stage did already.
    async fn ack(&self, delivery: &Delivery, job: &Job<'_>) -> Result<(), BrokerError> {
        if job.is_settled() {
            return Ok(());
        }
        delivery.acker.ack().await
    }

    /// A message that can never run here: tell its callers and dead-letter it.
    async fn reject(
        &self,
        delivery: &Delivery,
        job: Option<&Job<'_>>,
        rejection: &Rejection,
    ) -> Result<(), BrokerError> {
        let (task_id, task) = match job {
            Some(job) => (Some(job.request.id.clone()), Some(job.request.name.clone())),
            None => {
                let partial = PartialRequest::of(&delivery.message);
                (partial.id, partial.name)
            }
        };
        tracing::error!(
            task_id = task_id.as_deref().unwrap_or("?"),
            task = task.as_deref().unwrap_or("?"),
            reason = %rejection.reason,
            "dead-lettering a message that cannot run on this worker"
        );
        for (id, reply_to) in &rejection.notify {
            let result = rejection.result_for(id);
            let record = ResultRecord {
                task_id: id,
                result: &result,
                // Empty: the result backend's alone.
                reply_to: Some(reply_to.as_str()).filter(|to| !to.is_empty()),
                task: None,
            };
            if let Err(error) = self.results.publish(&record).await {
                let wait = self.requeue_backoff.failed();
                tracing::error!(task_id = %id, %error, ?wait,
                    "could not store the failure of a rejected task; returning it to its queue after a pause");
                return self.requeue_later(delivery, wait).await;
            }
        }
        if job.is_some_and(|job| job.is_settled()) {
            return Ok(());
        }
        self.dead_letter(delivery, &rejection.reason).await
    }

    /// Publishes a copy of the message, with the reason in its headers, to
    /// the queue's dead-letter queue, then acks the original. If the copy
    /// cannot be published, the original goes back to its queue.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BrokerError> {
        let spec = QueueSpec::dead_letter_queue_with(&delivery.queue, &self.dead_letter_retention)
            .of_type(self.app.queue_type());
        let mut copy = delivery.message.clone();
        copy.properties.persistent = true;
        let headers = &mut copy.properties.headers;
        headers.insert_str(dead_letter_headers::REASON, reason);
        headers.insert_str(dead_letter_headers::QUEUE, &delivery.queue);
        headers.insert_str(dead_letter_headers::AT, &format_time(Utc::now()));
        headers.insert_str(dead_letter_headers::WORKER, process_name());
        let declared = match self.app.ensure_declared(&spec).await {
            // Declared before with other settings (by an earlier version, or
            // with other retention): use it as it is.
            Err(error) if error.is_precondition_failed() => {
                if let Some(suppressed) = self.results.warnings.dead_letter_settings.allow() {
                    tracing::warn!(queue = %spec.name, %error, suppressed,
                        "the dead-letter queue exists with other settings; using it as it is \
                         (its retention limits are not applied: delete it once empty to apply them)");
                }
                Ok(())
            }
            other => other,
        };
        let published = match declared {
            Ok(()) => self.app.broker().publish("", &spec.name, &copy).await,
            Err(error) => Err(error),
        };
        match published {
            Ok(()) => {
                self.requeue_backoff.succeeded();
                delivery.acker.ack().await
            }
            Err(error) => {
                let wait = self.requeue_backoff.failed();
                tracing::error!(%error, queue = %spec.name, ?wait,
                    "could not dead-letter a message; returning it to its queue after a pause");
                self.requeue_later(delivery, wait).await
            }
        }
    }

    /// Returns a delivery to its queue after `wait`, holding it meanwhile so
    /// that the broker does not hand it straight back.
    async fn requeue_later(&self, delivery: &Delivery, wait: Duration) -> Result<(), BrokerError> {
        tokio::time::sleep(wait).await;
        delivery.acker.reject(true).await
    }

    /// Hands a task that may not run yet (its ETA, e.g. a Python producer's
    /// or one longer than the levels reach, or its rate-limit turn) back to
    /// the broker's delay levels, due after `wait`, and acks the original
    /// once the copy is confirmed. If the broker refuses, the task is not
    /// held in the worker for its whole wait (a concurrency slot and an
    /// unacked delivery for as long as the ETA): it goes back to its queue
    /// after a backoff pause.
    async fn park(
        &self,
        delivery: &Delivery,
        job: &Job<'_>,
        wait: Duration,
    ) -> Result<(), BrokerError> {
        match self
            .app
            .broker()
            .publish_delayed(&delivery.queue, &delivery.message, wait)
            .await
        {
            Ok(()) => {
                self.requeue_backoff.succeeded();
                self.ack(delivery, job).await
            }
            Err(error) => {
                let pause = self.requeue_backoff.failed();
                tracing::warn!(%error, ?pause,
                    "could not park a task in the broker until it is due; returning it to its queue after a pause");
                self.requeue_later(delivery, pause.min(wait)).await
            }
        }
    }

    /// Publishes the task again with `retries + 1`, due after `delay`, tells
    /// the caller RETRY, and acks the original only once the new message is
    /// confirmed (if it cannot be published, the original is requeued; one
    /// acked early is lost then, as early ack accepts).
    async fn retry(
        &self,
        delivery: &Delivery,
        job: &Job<'_>,
        outcome: &Outcome,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        let retries = job.request.retries().saturating_add(1);
        let eta = task_core::clock::now() + delay;
        // Changed by the task (`TaskError::retry_with`): its arguments, its
        // queue.
        let changes = match outcome {
            Outcome::Retry { error, .. } => error.retry_changes(),
            _ => None,
        };
        let again = match changes.map(|c| retried_copy_with(&delivery.message, retries, eta, c)) {
            Some(Ok(again)) => again,
            Some(Err(error)) => {
                tracing::error!(task_id = %job.request.id, %error,
                    "could not give the retry its new arguments; retrying with the old ones");
                retried_copy(&delivery.message, retries, eta)
            }
            None => retried_copy(&delivery.message, retries, eta),
        };
        let queue = changes
            .and_then(|c| c.new_queue())
            .unwrap_or(&delivery.queue);
        let broker = self.app.broker();
        let published = match self.app.ensure_queue(queue).await {
            Err(error) => Err(error),
            Ok(()) if delay.is_zero() => broker.publish("", queue, &again).await,
            Ok(()) => broker.publish_delayed(queue, &again, delay).await,
        };
        if let Err(publish_error) = published {
            let wait = self.requeue_backoff.failed();
            tracing::error!(task_id = %job.request.id, %publish_error, ?wait,
                "could not publish a retry; returning the task to its queue after a pause");
            if job.is_settled() {
                return Ok(());
            }
            return self.requeue_later(delivery, wait).await;
        }
        self.requeue_backoff.succeeded();
        if let Err(error) = self.report(job, outcome).await {
            // The retry is published: the task is not lost, only its RETRY state.
            tracing::warn!(task_id = %job.request.id, %error, "could not store RETRY");
        }
        self.ack(delivery, job).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_backoff_doubles_up_to_its_cap_and_resets_on_success() {
        let backoff = RequeueBackoff::default();
        let waits: Vec<Duration> = (0..12).map(|_| backoff.failed()).collect();
        assert_eq!(waits[0], Duration::from_millis(100));
        assert_eq!(waits[1], Duration::from_millis(200));
        assert_eq!(waits[4], Duration::from_millis(1600));
        assert!(waits.windows(2).all(|pair| pair[0] <= pair[1]), "{waits:?}");
        assert_eq!(waits[11], RequeueBackoff::MAX);
        for _ in 0..100 {
            assert_eq!(backoff.failed(), RequeueBackoff::MAX, "no overflow");
        }
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(100));
    }
}
