//! [`EventReceiver`]: the events on Celery's event exchange, as a typed
//! stream, for monitors written in Rust.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::{Event, EventDecodeError, EVENT_EXCHANGE};
use crate::broker::{Broker, BrokerError, ConsumeOptions, Consumer, ExchangeSpec, QueueSpec};

/// Why the next event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EventStreamError {
    /// The broker connection failed (the receiver's queue went with it:
    /// make a new receiver).
    #[error("event stream: {0}")]
    Broker(#[from] BrokerError),
    /// A message on the exchange was not an event; the stream goes on.
    #[error(transparent)]
    Decode(#[from] EventDecodeError),
}

/// Receives the events of every worker and client on the broker, from a
/// queue of its own as Celery's receivers do (`celeryev.<uuid>`:
/// exclusive, auto-delete, events kept 5 s, the queue 60 s after its
/// receiver went away). A batch (`task.multi`) comes out one event at a
/// time, in order.
///
/// ```no_run
/// # async fn demo(app: task_core::App) -> Result<(), Box<dyn std::error::Error>> {
/// use task_core::events::EventKind;
/// let mut events = app.events().await?;
/// while let Some(event) = events.next().await {
///     if let EventKind::TaskSucceeded(done) = event?.kind {
///         println!("{} took {:.3} s", done.uuid, done.runtime);
///     }
/// }
/// # Ok(()) }
/// ```
pub struct EventReceiver {
    consumer: Consumer,
    queue: String,
    ready: VecDeque<Event>,
}

impl std::fmt::Debug for EventReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReceiver")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl EventReceiver {
    /// Starts receiving the events whose routing key matches `pattern`
    /// (`#`: all; `task.#`, `worker.#`, `task.multi`: the batches).
    pub async fn start(broker: &Arc<dyn Broker>, pattern: &str) -> Result<Self, BrokerError> {
        broker
            .declare_exchange(&ExchangeSpec::topic(EVENT_EXCHANGE))
            .await?;
        let mut arguments = Map::new();
        arguments.insert("x-message-ttl".into(), Value::from(5_000));
        arguments.insert(
            "x-expires".into(),
            Value::from(Duration::from_secs(60).as_millis() as u64),
        );
        let spec = QueueSpec {
            name: format!("celeryev.{}", uuid::Uuid::new_v4()),
            durable: false,
            auto_delete: true,
            exclusive: true,
            arguments,
            same_name_exchange: None,
        };
        broker.declare_queue(&spec).await?;
        broker
            .bind_queue(&spec.name, EVENT_EXCHANGE, pattern)
            .await?;
        let consumer = broker
            .consume(std::slice::from_ref(&spec.name), ConsumeOptions::no_ack())
            .await?;
        Ok(Self {
            consumer,
            queue: spec.name,
            ready: VecDeque::new(),
        })
    }

    /// The receiver's queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The next event; `None` once the broker ended the stream. A message
    /// that is not an event is an `Err` the stream goes on after.
    pub async fn next(&mut self) -> Option<Result<Event, EventStreamError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            let delivery = match self.consumer.deliveries.next().await? {
                Ok(delivery) => delivery,
                Err(error) => return Some(Err(error.into())),
            };
            match Event::from_body(&delivery.message.body) {
                Ok(events) => self.ready.extend(events),
                Err(error) => return Some(Err(error.into())),
            }
        }
    }

    /// Stops receiving (the queue goes with the consumer).
    pub async fn close(self) -> Result<(), BrokerError> {
        self.consumer.cancel.close().await
    }
}
