//! The drain of what the broker dropped from task queues declared
//! [`revoking_expired`](task_core::broker::QueueSpec::revoking_expired)
//! (or under a RabbitMQ policy naming the same exchange): Celery's clients
//! give a message with `expires` an AMQP TTL, so with late acks and a busy
//! worker such a message can expire while it waits in its queue, and
//! RabbitMQ drops it unseen: its caller would wait forever. Dead-lettered
//! to [`EXPIRED_EXCHANGE`] instead, it reaches every worker's drain, which
//! runs it through the pipeline, where it is found expired and its caller
//! is told REVOKED (with the `task-revoked` event), as a Python worker
//! does for an expired task it received. What the broker dropped for
//! another reason (a Python worker's `Reject`, a length limit) is kept in
//! its queue's dead-letter queue, never lost.

use std::sync::Arc;

use chrono::Utc;
use task_core::broker::{
    dead_letter_headers, ConsumeOptions, Delivery, ExchangeSpec, QueueSpec, EXPIRED_EXCHANGE,
    EXPIRED_QUEUE,
};
use task_core::protocol::{format_time, process_name};
use task_core::App;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::executor::Executor;
use crate::resume::drain_until_stopped;
use crate::worker::unless_abandoned;

/// How many dropped messages a worker takes at once from the drain.
const PREFETCH: u16 = 16;

/// Drains [`EXPIRED_QUEUE`] until `stop` (resuming after a lost
/// connection).
pub(crate) async fn drain(
    app: App,
    executor: Arc<Executor>,
    running: TaskTracker,
    abandon: CancellationToken,
    stop: CancellationToken,
) {
    if !app.broker().dead_letters_dropped() {
        // Nothing ever arrives there (Redis).
        return;
    }
    let consume = || async {
        app.broker()
            .declare_exchange(&ExchangeSpec::fanout(EXPIRED_EXCHANGE))
            .await?;
        app.ensure_shared(&QueueSpec::expired_tasks().of_type(app.queue_type()))
            .await?;
        app.broker()
            .bind_queue(EXPIRED_QUEUE, EXPIRED_EXCHANGE, "")
            .await?;
        app.broker()
            .consume(
                &[EXPIRED_QUEUE.to_owned()],
                ConsumeOptions::manual_ack(PREFETCH),
            )
            .await
    };
    drain_until_stopped(&stop, "the expired tasks", consume, |delivery| {
        if death_reason(&delivery) == Some("expired") {
            let executor = Arc::clone(&executor);
            let abandon = abandon.clone();
            running.spawn(async move {
                let handled = Box::pin(executor.handle(delivery, None));
                unless_abandoned(&abandon, handled).await;
            });
        } else {
            let app = app.clone();
            running.spawn(async move { keep(&app, delivery).await });
        }
    })
    .await;
}

/// Why the broker dead-lettered the message (`x-first-death-reason`:
/// `expired`, `rejected`, `maxlen`, `delivery_limit`).
fn death_reason(delivery: &Delivery) -> Option<&str> {
    delivery
        .message
        .properties
        .headers
        .get_str("x-first-death-reason")
}

/// Puts a message the broker dropped for another reason than its expiry
/// in the dead-letter queue of the queue it was dropped from, then acks it;
/// if it cannot, gives it back to the drain.
async fn keep(app: &App, delivery: Delivery) {
    let headers = &delivery.message.properties.headers;
    let origin = headers
        .get_str("x-first-death-queue")
        .unwrap_or(EXPIRED_QUEUE)
        .to_owned();
    let reason = format!(
        "dropped by the broker ({})",
        death_reason(&delivery).unwrap_or("unknown reason")
    );
    let spec = QueueSpec::dead_letter_queue(&origin).of_type(app.queue_type());
    let mut copy = delivery.message.clone();
    let copy_headers = &mut copy.properties.headers;
    copy_headers.insert_str(dead_letter_headers::REASON, &reason);
    copy_headers.insert_str(dead_letter_headers::QUEUE, &origin);
    copy_headers.insert_str(dead_letter_headers::AT, &format_time(Utc::now()));
    copy_headers.insert_str(dead_letter_headers::WORKER, process_name());
    let kept = match app.ensure_declared(&spec).await {
        Ok(()) => app.broker().publish("", &spec.name, &copy).await,
        // Declared with other retention settings: used as it is.
        Err(error) if error.is_precondition_failed() => {
            app.broker().publish("", &spec.name, &copy).await
        }
        Err(error) => Err(error),
    };
    let settled = match kept {
        Ok(()) => {
            tracing::warn!(queue = %origin, %reason, "kept a message the broker dropped in the dead-letter queue");
            delivery.acker.ack().await
        }
        Err(error) => {
            tracing::error!(queue = %origin, %error, "could not keep a message the broker dropped; it stays in the drain");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            delivery.acker.reject(true).await
        }
    };
    if let Err(error) = settled {
        tracing::warn!(%error, "could not settle a dropped message; the broker will redeliver it");
    }
}
