//! Handling one delivery: decode it, find its task, run it, publish its
//! result, then settle the message with the broker.
//!
//! The message is acknowledged only after the result was published (late
//! ack) unless the task opted into early ack. Messages that can never succeed
//! (oversized, malformed, unknown task) are moved to the queue's dead-letter
//! queue with the reason attached, so nothing is lost and nothing loops; their
//! callers, when known, still get a FAILURE.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use task_core::broker::headers::integer_value;
use task_core::broker::{
    dead_letter_headers, BrokerError, DeadLetterRetention, Delivery, Message, QueueSpec,
};
use task_core::protocol::result_message::{self, ExceptionInfo, TaskState};
use task_core::protocol::task_message::{decode_task, PartialRequest, TaskRequest};
use task_core::protocol::{format_time, process_name};
use task_core::{App, DeliveryInfo, Lineage, Registry, TaskArgs, TaskContext, TaskError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::logging::Throttle;
use crate::rate_limiter::{RateLimiter, Turn};

/// What the executor needs from its worker.
#[derive(Clone)]
pub(crate) struct Executor {
    pub(crate) app: App,
    pub(crate) registry: &'static Registry,
    /// Larger message bodies are dead-lettered unread.
    pub(crate) max_message_size: usize,
    /// Rate limiters of the rate-limited tasks, by task name.
    pub(crate) rate_limiters: Arc<HashMap<&'static str, RateLimiter>>,
    /// How much the dead-letter queues keep.
    pub(crate) dead_letter_retention: DeadLetterRetention,
    /// Spaces out messages returned to their queue after a failure.
    pub(crate) requeue_backoff: Arc<RequeueBackoff>,
    /// Warnings that could repeat for every message.
    pub(crate) warnings: Arc<Warnings>,
}

/// Warnings that a stream of messages could repeat: at most one line per
/// kind every ten seconds, with a count of the ones held back.
#[derive(Debug)]
pub(crate) struct Warnings {
    dropped_result: Throttle,
    dead_letter_settings: Throttle,
}

impl Default for Warnings {
    fn default() -> Self {
        let every = Duration::from_secs(10);
        Self {
            dropped_result: Throttle::new(every),
            dead_letter_settings: Throttle::new(every),
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

/// A task whose ETA is less than this far away waits in the worker; a later
/// one is handed back to the broker's delay levels.
const PARK_THRESHOLD: Duration = Duration::from_millis(50);

/// A rate-limited task whose turn is less than this far away waits in the
/// worker (unacknowledged, its concurrency slot given back); a later one is
/// handed back to the broker's delay levels until its turn, so that waiting
/// deliveries do not fill the prefetch window that other task types need.
const RATE_LIMIT_HORIZON: Duration = Duration::from_secs(1);

/// A worker's concurrency slot, which a task gives back while it waits for
/// its rate limit so that other tasks can run meanwhile.
pub(crate) struct Slot {
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    pub(crate) slots: Arc<Semaphore>,
}

impl Slot {
    /// Gives the concurrency slot back for good: what is left to do with
    /// this delivery is broker I/O (parking it), not running a task.
    fn release(&mut self) {
        self.permit = None;
    }

    /// Waits until `turn` without holding a concurrency slot.
    async fn wait_until(&mut self, turn: tokio::time::Instant) {
        if turn <= tokio::time::Instant::now() {
            return;
        }
        self.permit = None;
        tokio::time::sleep_until(turn).await;
        self.permit = Arc::clone(&self.slots).acquire_owned().await.ok();
    }
}

/// What to do with a delivery once its handling is over.
enum Settle {
    /// Done: acknowledge it.
    Ack,
    /// Already settled (acknowledged before the task ran, or requeued).
    AlreadySettled,
    /// It can never be processed: move it to the dead-letter queue.
    DeadLetter(String),
}

impl Executor {
    /// Processes one delivery to the end, never panicking.
    pub(crate) async fn handle(&self, delivery: Delivery, mut slot: Slot) {
        let settle = if delivery.message.body.len() > self.max_message_size {
            let reason = format!(
                "message body of {} bytes exceeds the worker's limit of {} bytes",
                delivery.message.body.len(),
                self.max_message_size
            );
            self.refuse(&delivery.message, "MessageTooLarge", &reason)
                .await
        } else {
            match decode_task(&delivery.message) {
                Ok(request) => self.handle_request(request, &delivery, &mut slot).await,
                Err(error) => {
                    self.refuse(&delivery.message, "DecodeError", &error.to_string())
                        .await
                }
            }
        };
        let settled = match settle {
            Settle::Ack => delivery.acker.ack().await,
            Settle::AlreadySettled => Ok(()),
            Settle::DeadLetter(reason) => self.dead_letter(&delivery, &reason).await,
        };
        if let Err(error) = settled {
            tracing::warn!(%error, "could not settle a message; the broker will redeliver it");
        }
    }

    /// A message that is not a task this worker can run: tell its caller
    /// (when known) and dead-letter it.
    async fn refuse(&self, message: &Message, exc_type: &str, reason: &str) -> Settle {
        let partial = PartialRequest::of(message);
        tracing::error!(
            task_id = partial.id.as_deref().unwrap_or("?"),
            task = partial.name.as_deref().unwrap_or("?"),
            %reason,
            "dead-lettering a message that is not a valid task"
        );
        if let (Some(id), Some(reply_to)) = (&partial.id, &partial.reply_to) {
            let failure = TaskError::new(exc_type.to_owned(), reason);
            self.publish_result(reply_to, result_message::failure(id, &failure))
                .await;
        }
        Settle::DeadLetter(format!("{exc_type}: {reason}"))
    }

    /// Publishes a copy of the message, with the reason in its headers, to
    /// the queue's dead-letter queue, then acks the original. If the copy
    /// cannot be published, the original goes back to its queue.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BrokerError> {
        let spec = QueueSpec::dead_letter_queue_with(&delivery.queue, &self.dead_letter_retention);
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
                if let Some(suppressed) = self.warnings.dead_letter_settings.allow() {
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

    async fn handle_request(
        &self,
        mut request: TaskRequest,
        delivery: &Delivery,
        slot: &mut Slot,
    ) -> Settle {
        let Some(task) = self.registry.get(&request.name) else {
            tracing::error!(task_id = %request.id, task = %request.name, "received an unregistered task");
            if let Some(reply_to) = &request.reply_to {
                let message = result_message::not_registered(&request.id, &request.name);
                self.publish_result(reply_to, message).await;
            }
            return Settle::DeadLetter(format!(
                "NotRegistered: no task `{}` in this worker",
                request.name
            ));
        };
        let reply_to = request
            .reply_to
            .as_deref()
            .filter(|_| !request.ignore_result());

        // Canvas is not implemented yet: running the task and dropping the
        // rest of the workflow would lose work in silence. Keep the message
        // (dead-lettered, so it can be replayed later) and tell the caller.
        let canvas = request.canvas_parts();
        if !canvas.is_empty() {
            let parts = canvas.join(", ");
            tracing::warn!(task_id = %request.id, task = %request.name, %parts,
                "this worker cannot run canvas (chain, group callbacks, chord) yet: \
                 not running the task, dead-lettering it");
            let reason = format!(
                "this Rust worker does not run canvas yet: the message carries {parts}; \
                 the task was not run and was moved to the queue's dead-letter queue"
            );
            // As Celery fails a chain: this task and every remaining step,
            // so that whoever waits on the chain's last id hears of it.
            let failure = TaskError::new("NotImplementedError", reason.clone());
            let steps = request
                .chain_step_ids()
                .into_iter()
                .map(|(id, reply_to)| (id, reply_to.or_else(|| request.reply_to.clone())));
            for (id, reply_to) in
                std::iter::once((request.id.clone(), request.reply_to.clone())).chain(steps)
            {
                if let Some(reply_to) = reply_to {
                    self.publish_result(&reply_to, result_message::failure(&id, &failure))
                        .await;
                }
            }
            return Settle::DeadLetter(format!("NotImplementedError: {reason}"));
        }

        if self.expired(&request, reply_to).await {
            return Settle::Ack;
        }
        if let Some(eta) = request.eta {
            if let Ok(wait) = (eta - Utc::now()).to_std() {
                if wait > PARK_THRESHOLD {
                    slot.release();
                    return self.park(delivery, wait).await;
                }
                tokio::time::sleep(wait).await;
            }
        }
        if let Some(limiter) = self.rate_limiters.get(task.name) {
            match limiter.reserve(RATE_LIMIT_HORIZON) {
                Turn::At(turn) => slot.wait_until(turn).await,
                Turn::Park(wait) => {
                    slot.release();
                    return self.park(delivery, wait).await;
                }
            }
        }
        // The waits above may have outlived the task's expiry.
        if self.expired(&request, reply_to).await {
            return Settle::Ack;
        }

        let settle = if task.options.early_ack {
            if let Err(error) = delivery.acker.ack().await {
                tracing::warn!(task_id = %request.id, %error, "early ack failed; not running the task");
                return Settle::AlreadySettled;
            }
            Settle::AlreadySettled
        } else {
            Settle::Ack
        };

        tracing::info!(task_id = %request.id, task = %request.name, "task received");
        if task.options.track_started {
            if let Some(reply_to) = reply_to {
                self.publish_result(reply_to, result_message::started(&request.id))
                    .await;
            }
        }
        let (hard, soft) = task.limits(&request);
        let started = Instant::now();
        let context = TaskContext::new(
            request.id.clone(),
            request.name.clone(),
            delivery.queue.clone(),
            request.retries(),
            soft.map(|soft| tokio::time::Instant::now() + soft),
        )
        // (Field by field: `reply_to` still borrows the request.)
        .with_lineage(Lineage {
            root_id: request.root_id.take(),
            parent_id: request.parent_id.take(),
            group_id: request.group_id.take(),
            group_index: request.group_index,
        })
        .with_delivery(DeliveryInfo {
            exchange: delivery.exchange.clone(),
            routing_key: delivery.routing_key.clone(),
            redelivered: delivery.redelivered,
            priority: delivery.message.properties.priority,
        });
        let args = TaskArgs::new(
            task.name,
            std::mem::take(&mut request.args),
            std::mem::take(&mut request.kwargs),
        );
        let outcome = task.run(args, context, hard).await;
        let elapsed = started.elapsed();
        if let Err(error) = &outcome {
            if let Some(delay) = task.retry_delay(error, request.retries(), fastrand::f64()) {
                return self
                    .retry(delivery, &request, reply_to, error, delay, settle)
                    .await;
            }
        }
        let message = match &outcome {
            Ok(value) => {
                tracing::info!(task_id = %request.id, task = %request.name, ?elapsed, "task succeeded");
                result_message::success(&request.id, value)
            }
            Err(error) => {
                tracing::warn!(task_id = %request.id, task = %request.name, ?elapsed, %error, "task failed");
                result_message::failure(&request.id, error)
            }
        };
        if let Some(reply_to) = reply_to {
            self.publish_result(reply_to, message).await;
        }
        settle
    }

    /// Whether the task's `expires` has passed; if so its caller is told
    /// REVOKED and the message can be acked.
    async fn expired(&self, request: &TaskRequest, reply_to: Option<&str>) -> bool {
        if request.expires.is_none_or(|expires| expires > Utc::now()) {
            return false;
        }
        tracing::warn!(task_id = %request.id, task = %request.name, "discarding an expired task");
        if let Some(reply_to) = reply_to {
            self.publish_result(reply_to, result_message::revoked(&request.id, "expired"))
                .await;
        }
        true
    }

    /// Hands a task that may not run yet (its ETA, e.g. a Python producer's
    /// or one longer than the levels reach, or its rate-limit turn) back to
    /// the broker's delay levels, due after `wait`, and acks the original
    /// once the copy is confirmed. If the broker refuses, the task is not
    /// held in the worker for its whole wait (a concurrency slot and an
    /// unacked delivery for as long as the ETA): it goes back to its queue
    /// after a backoff pause.
    async fn park(&self, delivery: &Delivery, wait: Duration) -> Settle {
        match self
            .app
            .broker()
            .publish_delayed(&delivery.queue, &delivery.message, wait)
            .await
        {
            Ok(()) => {
                self.requeue_backoff.succeeded();
                Settle::Ack
            }
            Err(error) => {
                let pause = self.requeue_backoff.failed();
                tracing::warn!(%error, ?pause,
                    "could not park a task in the broker until it is due; returning it to its queue after a pause");
                if let Err(error) = self.requeue_later(delivery, pause.min(wait)).await {
                    tracing::warn!(%error, "could not requeue the task");
                }
                Settle::AlreadySettled
            }
        }
    }

    /// Publishes the task again with `retries + 1`, due after `delay`, tells
    /// the caller RETRY, and settles the original only once the new message
    /// is confirmed (if it cannot be published, the original is requeued).
    async fn retry(
        &self,
        delivery: &Delivery,
        request: &TaskRequest,
        reply_to: Option<&str>,
        error: &TaskError,
        delay: Duration,
        settle: Settle,
    ) -> Settle {
        let retries = request.retries().saturating_add(1);
        let mut again = delivery.message.clone();
        let headers = &mut again.properties.headers;
        headers.insert("retries", integer_value(i64::from(retries)));
        let eta = Utc::now() + delay;
        headers.insert_str("eta", &format_time(eta));
        let broker = self.app.broker();
        let published = if delay.is_zero() {
            broker.publish("", &delivery.queue, &again).await
        } else {
            broker.publish_delayed(&delivery.queue, &again, delay).await
        };
        if let Err(publish_error) = published {
            let wait = self.requeue_backoff.failed();
            tracing::error!(task_id = %request.id, %publish_error, ?wait,
                "could not publish a retry; returning the task to its queue after a pause");
            if matches!(settle, Settle::Ack) {
                if let Err(error) = self.requeue_later(delivery, wait).await {
                    tracing::warn!(%error, "could not requeue the task");
                }
            }
            return Settle::AlreadySettled;
        }
        self.requeue_backoff.succeeded();
        tracing::warn!(task_id = %request.id, task = %request.name, retries, ?delay, %error, "task will be retried");
        if let Some(reply_to) = reply_to {
            let info = ExceptionInfo::from(error);
            let message =
                result_message::exception(&request.id, TaskState::Retry, &info, error.traceback());
            self.publish_result(reply_to, message).await;
        }
        settle
    }

    /// Publishes a result to the caller's queue. A caller that is gone (its
    /// queue no longer exists) is not an error, Celery drops such results
    /// too, but it is reported (at most once every ten seconds).
    async fn publish_result(&self, reply_to: &str, message: Message) {
        match self.app.broker().publish_reply(reply_to, &message).await {
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
