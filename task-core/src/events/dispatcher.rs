//! [`EventDispatcher`]: publishes events on Celery's `celeryev` exchange.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OnceCell};

use super::{Event, EventHeader, EventKind, LamportClock};
use crate::broker::{Broker, BrokerError, ExchangeSpec, Headers, Message, Properties};

/// Celery's event exchange: a durable topic exchange.
pub const EVENT_EXCHANGE: &str = "celeryev";

/// The routing key of a batch of task events (a JSON list), as Celery's
/// worker sends them.
pub const BATCH_ROUTING_KEY: &str = "task.multi";

/// Task events waiting for their batch are sent at the latest this long
/// after the first of them.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// A batch is sent at once when it holds this many events.
const BATCH_MAX: usize = 100;

/// Publishes events as `hostname`: worker events and `task-sent` one per
/// message ([`EventDispatcher::send`]), task events in batches
/// ([`EventDispatcher::buffer`]: a JSON list on `task.multi`, sent every
/// 100 ms or every 100 events). Messages are transient and unconfirmed, as
/// Celery's are: an event nobody listens to is dropped by the broker.
/// Cloning shares the dispatcher.
#[derive(Clone)]
pub struct EventDispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventDispatcher")
            .field("hostname", &self.inner.hostname)
            .finish_non_exhaustive()
    }
}

struct Inner {
    broker: Arc<dyn Broker>,
    hostname: String,
    pid: u32,
    utcoffset: f64,
    clock: Arc<LamportClock>,
    exchange: OnceCell<()>,
    pending: Mutex<Vec<Event>>,
    /// Wakes the batch sender: a first event is waiting, the batch is
    /// full, or the dispatcher is gone.
    wake: Arc<Notify>,
    flusher: std::sync::Once,
}

impl EventDispatcher {
    /// A dispatcher publishing through `broker` as `hostname`, its events
    /// stamped with `clock`.
    pub fn new(
        broker: Arc<dyn Broker>,
        hostname: impl Into<String>,
        clock: Arc<LamportClock>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker,
                hostname: hostname.into(),
                pid: std::process::id(),
                utcoffset: utcoffset_hours_west(),
                clock,
                exchange: OnceCell::new(),
                pending: Mutex::new(Vec::new()),
                wake: Arc::new(Notify::new()),
                flusher: std::sync::Once::new(),
            }),
        }
    }

    /// The node name events are sent as.
    pub fn hostname(&self) -> &str {
        &self.inner.hostname
    }

    /// The clock events are stamped with.
    pub fn clock(&self) -> &Arc<LamportClock> {
        &self.inner.clock
    }

    /// `kind` as an event sent now by this dispatcher.
    pub fn event(&self, kind: EventKind) -> Event {
        Event {
            header: EventHeader {
                hostname: self.inner.hostname.clone(),
                utcoffset: self.inner.utcoffset,
                pid: self.inner.pid,
                clock: self.inner.clock.forward(),
                timestamp: now_seconds(),
            },
            kind,
        }
    }

    /// Publishes one event now, alone in its message, on the routing key of
    /// its type.
    pub async fn send(&self, kind: EventKind) -> Result<(), BrokerError> {
        let event = self.event(kind);
        let body = serde_json::to_vec(&event.to_json()).unwrap_or_default();
        self.inner.publish(&event.kind.routing_key(), body).await
    }

    /// Adds a task event to the next batch. Never waits: the batch goes out
    /// from a task of its own (started on the first call, on the current
    /// tokio runtime).
    pub fn buffer(&self, kind: EventKind) {
        let event = self.event(kind);
        let waiting = {
            let mut pending = self
                .inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pending.push(event);
            pending.len()
        };
        self.inner.flusher.call_once(|| {
            tokio::spawn(flush_batches(
                Arc::downgrade(&self.inner),
                Arc::clone(&self.inner.wake),
            ));
        });
        if waiting == 1 || waiting >= BATCH_MAX {
            self.inner.wake.notify_one();
        }
    }

    /// Sends the events waiting for their batch now.
    pub async fn flush(&self) -> Result<(), BrokerError> {
        self.inner.flush().await
    }
}

impl Inner {
    async fn publish(&self, routing_key: &str, body: Vec<u8>) -> Result<(), BrokerError> {
        self.exchange
            .get_or_try_init(|| async {
                self.broker
                    .declare_exchange(&ExchangeSpec::topic(EVENT_EXCHANGE))
                    .await
            })
            .await?;
        let mut headers = Headers::new();
        headers.insert_str("hostname", &self.hostname);
        let message = Message {
            properties: Properties {
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                persistent: false,
                headers,
                ..Properties::default()
            },
            body,
        };
        self.broker
            .publish_transient(EVENT_EXCHANGE, routing_key, &message)
            .await
    }

    async fn flush(&self) -> Result<(), BrokerError> {
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return Ok(());
        }
        let list: Vec<serde_json::Value> = batch.iter().map(Event::to_json).collect();
        let body = serde_json::to_vec(&list).unwrap_or_default();
        self.publish(BATCH_ROUTING_KEY, body).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the batch sender, which finds the dispatcher gone.
        self.wake.notify_one();
    }
}

/// Sends each batch [`FLUSH_INTERVAL`] after its first event, or at once
/// when it is full, until the dispatcher is dropped.
async fn flush_batches(dispatcher: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let full = || {
            dispatcher.upgrade().is_none_or(|inner| {
                inner
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len()
                    >= BATCH_MAX
            })
        };
        if !full() {
            // A full batch wakes the sender early.
            let _ = tokio::time::timeout(FLUSH_INTERVAL, wake.notified()).await;
        }
        let Some(inner) = dispatcher.upgrade() else {
            return;
        };
        if let Err(error) = inner.flush().await {
            tracing::debug!(%error, "could not send task events");
        }
    }
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// This host's offset from UTC in hours, west positive, as Celery sends it.
fn utcoffset_hours_west() -> f64 {
    let east_seconds = chrono::Local::now().offset().local_minus_utc();
    // `0.0 -`, not a negation: UTC is `0.0`, as Python sends it, not `-0.0`.
    0.0 - f64::from(east_seconds) / 3600.0
}
