//! Handling one delivery: decode it, find its task, run it, publish its
//! result, then settle the message with the broker.
//!
//! The message is acknowledged only after the result was published (late
//! ack) unless the task opted into early ack. Messages that can never succeed
//! (oversized, malformed, unknown task) are moved to the queue's dead-letter
//! queue with the reason attached, so nothing is lost and nothing loops; their
//! callers, when known, still get a FAILURE.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use task_core::broker::headers::integer_value;
use task_core::broker::{dead_letter_headers, BrokerError, Delivery, Message, QueueSpec};
use task_core::protocol::result_message::{self, ExceptionInfo, TaskState};
use task_core::protocol::task_message::{decode_task, PartialRequest, TaskRequest};
use task_core::protocol::{format_time, process_name};
use task_core::{App, Registry, TaskArgs, TaskContext, TaskError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::rate_limiter::RateLimiter;

/// What the executor needs from its worker.
#[derive(Clone)]
pub(crate) struct Executor {
    pub(crate) app: App,
    pub(crate) registry: &'static Registry,
    /// Larger message bodies are dead-lettered unread.
    pub(crate) max_message_size: usize,
    /// Rate limiters of the rate-limited tasks, by task name.
    pub(crate) rate_limiters: Arc<HashMap<&'static str, RateLimiter>>,
}

/// A task whose ETA is less than this far away waits in the worker; a later
/// one is handed back to the broker's delay levels.
const PARK_THRESHOLD: Duration = Duration::from_millis(50);

/// A worker's concurrency slot, which a task gives back while it waits for
/// its rate limit so that other tasks can run meanwhile.
pub(crate) struct Slot {
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    pub(crate) slots: Arc<Semaphore>,
}

impl Slot {
    async fn wait_for_turn(&mut self, limiter: &RateLimiter) {
        self.permit = None;
        limiter.acquire().await;
        self.permit = Arc::clone(&self.slots).acquire_owned().await.ok();
    }
}

/// What to do with a delivery once its handling is over.
enum Settle {
    /// Done: acknowledge it.
    Ack,
    /// Already acknowledged before the task ran.
    AlreadyAcked,
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
            Settle::AlreadyAcked => Ok(()),
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
        let spec = QueueSpec::dead_letter_queue(&delivery.queue);
        let mut copy = delivery.message.clone();
        copy.properties.persistent = true;
        let headers = &mut copy.properties.headers;
        headers.insert_str(dead_letter_headers::REASON, reason);
        headers.insert_str(dead_letter_headers::QUEUE, &delivery.queue);
        headers.insert_str(dead_letter_headers::AT, &format_time(Utc::now()));
        headers.insert_str(dead_letter_headers::WORKER, process_name());
        let published = match self.app.ensure_declared(&spec).await {
            Ok(()) => self.app.broker().publish("", &spec.name, &copy).await,
            Err(error) => Err(error),
        };
        match published {
            Ok(()) => delivery.acker.ack().await,
            Err(error) => {
                tracing::error!(%error, queue = %spec.name, "could not dead-letter a message; returning it to its queue");
                delivery.acker.reject(true).await
            }
        }
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

        if request.expires.is_some_and(|expires| expires <= Utc::now()) {
            tracing::warn!(task_id = %request.id, task = %request.name, "discarding an expired task");
            if let Some(reply_to) = reply_to {
                self.publish_result(reply_to, result_message::revoked(&request.id, "expired"))
                    .await;
            }
            return Settle::Ack;
        }
        if let Some(eta) = request.eta {
            if let Ok(wait) = (eta - Utc::now()).to_std() {
                if wait > PARK_THRESHOLD && self.park(delivery, wait).await {
                    return Settle::Ack;
                }
                tokio::time::sleep(wait).await;
            }
        }
        if let Some(limiter) = self.rate_limiters.get(task.name) {
            slot.wait_for_turn(limiter).await;
        }

        let settle = if task.options.early_ack {
            if let Err(error) = delivery.acker.ack().await {
                tracing::warn!(task_id = %request.id, %error, "early ack failed; not running the task");
                return Settle::AlreadyAcked;
            }
            Settle::AlreadyAcked
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
        );
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

    /// Hands a task that is not due yet back to the broker's delay levels
    /// (e.g. a Python producer's ETA, or one longer than the levels reach).
    /// Returns false if that failed: the caller then waits in the worker.
    async fn park(&self, delivery: &Delivery, wait: Duration) -> bool {
        match self
            .app
            .broker()
            .publish_delayed(&delivery.queue, &delivery.message, wait)
            .await
        {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "could not park a task in the broker; waiting for its ETA in the worker");
                false
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
            tracing::error!(task_id = %request.id, %publish_error, "could not publish a retry; returning the task to its queue");
            if matches!(settle, Settle::Ack) {
                if let Err(error) = delivery.acker.reject(true).await {
                    tracing::warn!(%error, "could not requeue the task");
                }
            }
            return Settle::AlreadyAcked;
        }
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
    /// queue no longer exists) is not an error: Celery drops such results too.
    async fn publish_result(&self, reply_to: &str, message: Message) {
        match self.app.broker().publish_reply(reply_to, &message).await {
            Ok(()) => {}
            Err(BrokerError::Unroutable { .. }) => {
                tracing::debug!(%reply_to, "result dropped: the caller's reply queue is gone");
            }
            Err(error) => tracing::error!(%reply_to, %error, "could not publish a result"),
        }
    }
}
