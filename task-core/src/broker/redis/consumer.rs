//! Consuming on Redis: the queues' lists through the atomic pop script, on a
//! connection of the consumer's own that Redis tells (RESP3 invalidation
//! pushes, `CLIENT TRACKING ... BCAST`) when a queue's lists change, so an
//! idle consumer wakes when a message arrives without holding it in a
//! blocking pop; queues bound to a fanout exchange through pub/sub, as
//! kombu consumes them (no acknowledgement, nothing kept while nobody
//! listens).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::envelope::{self, Decoded, DeliveryInfo};
use super::{broker_error, is_transient, upkeep, Inner};
use crate::broker::{
    Acknowledger, BrokerError, ConsumeOptions, Consumer, ConsumerCancel, Delivery, Message,
};

/// The most messages one pop takes.
const BATCH: usize = 32;
/// The window of a consumer without a prefetch limit (0).
const UNLIMITED: usize = 10_000;
/// How long an idle consumer waits for a push before it pops anyway (a
/// safety net: pushes are not expected to go missing).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// What one consumer holds unacknowledged, restored when it is closed.
type ConsumerHeld = Arc<Mutex<HashSet<String>>>;

/// Starts a consumer of `queues`.
pub(super) async fn start(
    inner: &Arc<Inner>,
    queues: &[String],
    options: ConsumeOptions,
) -> Result<Consumer, BrokerError> {
    let (lists, fanouts): (Vec<String>, Vec<String>) = queues
        .iter()
        .cloned()
        .partition(|queue| inner.routing.fanout_of(queue).is_none());
    let (sender, receiver) = mpsc::channel::<Result<Delivery, BrokerError>>(BATCH * 2);
    let (stop, stopped) = watch::channel(false);
    let held = ConsumerHeld::default();
    if !lists.is_empty() {
        let window = match usize::from(options.prefetch) {
            0 => UNLIMITED,
            n => n,
        };
        // The first connection is made here, so an unreachable Redis is
        // an error of `consume` itself.
        let connection = ListConnection::open(inner, &lists).await?;
        let popper = Popper {
            inner: Arc::clone(inner),
            queues: lists.into_iter().collect(),
            record: !options.no_ack,
            window: Arc::new(Semaphore::new(window)),
            held: Arc::clone(&held),
            id: uuid::Uuid::new_v4().simple().to_string(),
            sequence: 0,
        };
        tokio::spawn(popper.run(connection, sender.clone(), stopped.clone()));
    }
    if !fanouts.is_empty() {
        let subscriber = Subscriber::open(inner, &fanouts).await?;
        tokio::spawn(subscriber.run(sender, stopped));
    }
    let deliveries = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
    .boxed();
    Ok(Consumer {
        deliveries,
        cancel: Box::new(RedisConsumerCancel {
            inner: Arc::clone(inner),
            stop,
            held,
        }),
    })
}

/// A consumer's own connection: tracking its queues' keys, and popping.
struct ListConnection {
    connection: MultiplexedConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
}

impl ListConnection {
    /// Opens the connection and asks Redis to report every write to the
    /// keys of `queues` (their lists share the queue's name as prefix).
    async fn open(inner: &Inner, queues: &[String]) -> Result<Self, BrokerError> {
        let (push_sender, pushes) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(crate::broker::CONNECT_TIMEOUT))
            .set_response_timeout(Some(inner.options.response_timeout))
            .set_push_sender(push_sender);
        let mut connection = inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| broker_error("consume", e))?;
        let mut tracking = redis::cmd("CLIENT");
        tracking
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("NOLOOP");
        for prefix in tracking_prefixes(inner, queues) {
            tracking.arg("PREFIX").arg(prefix);
        }
        tracking
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| broker_error("client tracking", e))?;
        Ok(Self { connection, pushes })
    }
}

/// The key prefixes that cover every list of `queues`, none a prefix of
/// another (Redis refuses overlapping prefixes).
fn tracking_prefixes(inner: &Inner, queues: &[String]) -> Vec<String> {
    let mut prefixes: Vec<String> = queues
        .iter()
        .map(|queue| inner.keys.list(queue, 0))
        .collect();
    prefixes.sort();
    prefixes.dedup();
    let mut kept: Vec<String> = Vec::new();
    for prefix in prefixes {
        // Sorted: a covering prefix comes before what it covers.
        if !kept
            .iter()
            .any(|shorter| prefix.starts_with(shorter.as_str()))
        {
            kept.push(prefix);
        }
    }
    kept
}

/// The loop that pops a consumer's list queues.
struct Popper {
    inner: Arc<Inner>,
    /// Round robin: the queue last delivered from goes to the end.
    queues: VecDeque<String>,
    record: bool,
    window: Arc<Semaphore>,
    held: ConsumerHeld,
    id: String,
    sequence: u64,
}

/// One popped message.
struct Popped {
    tag: String,
    queue: String,
    raw: Vec<u8>,
}

impl Popper {
    async fn run(
        mut self,
        first: ListConnection,
        sender: mpsc::Sender<Result<Delivery, BrokerError>>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut connection = Some(first);
        let mut pause = Duration::from_millis(50);
        loop {
            if *stopped.borrow() || sender.is_closed() {
                return;
            }
            // A slot of the window (prefetch) first, then as many more as
            // are free, up to a batch.
            let first = tokio::select! {
                permit = Arc::clone(&self.window).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = stopped.changed() => continue,
                _ = sender.closed() => return,
            };
            let mut permits = vec![first];
            while permits.len() < BATCH {
                match Arc::clone(&self.window).try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let Some(open) = connection.as_mut() else {
                match ListConnection::open(&self.inner, self.queues.make_contiguous()).await {
                    Ok(open) => {
                        if pause > Duration::from_millis(50) {
                            tracing::info!(queues = ?self.queues, "redis broker: consuming again");
                        }
                        connection = Some(open);
                        pause = Duration::from_millis(50);
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?pause, "redis broker: cannot consume yet");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stopped.changed() => {}
                        }
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                }
                continue;
            };
            // Pushes before this pop are covered by it.
            while open.pushes.try_recv().is_ok() {}
            let popped = match self.pop(&mut open.connection, permits.len()).await {
                Ok(popped) => popped,
                Err(error) => {
                    if is_transient(&error) {
                        tracing::warn!(%error, "redis broker: consumer connection lost");
                    } else {
                        tracing::error!(%error, "redis broker: pop failed");
                    }
                    connection = None;
                    continue;
                }
            };
            if popped.is_empty() {
                drop(permits);
                let wake = tokio::select! {
                    push = open.pushes.recv() => push.is_some(),
                    _ = tokio::time::sleep(IDLE_POLL) => true,
                    _ = stopped.changed() => true,
                    _ = sender.closed() => return,
                };
                if !wake {
                    // The push channel closed: the connection is gone.
                    connection = None;
                }
                continue;
            }
            for (popped, permit) in popped.into_iter().zip(permits.drain(..)) {
                if let Some(at) = self.queues.iter().position(|q| *q == popped.queue) {
                    if let Some(queue) = self.queues.remove(at) {
                        self.queues.push_back(queue);
                    }
                }
                let tag = popped.tag.clone();
                let delivery = self.delivery(popped, permit);
                if sender.send(Ok(delivery)).await.is_err() {
                    // Nobody reads any more: what was popped goes back.
                    if self.record {
                        let _ = self.inner.restore(&tag, None, true).await;
                    }
                    return;
                }
            }
        }
    }

    /// Pops up to `max` messages in one script run.
    async fn pop(
        &mut self,
        connection: &mut MultiplexedConnection,
        max: usize,
    ) -> Result<Vec<Popped>, redis::RedisError> {
        self.sequence += 1;
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.pop.prepare_invoke();
        invocation.key(&keys.unacked).key(&keys.unacked_index);
        let mut list_queues = Vec::with_capacity(self.queues.len() * keys.steps().len());
        for step in keys.steps() {
            for queue in &self.queues {
                invocation.key(keys.list(queue, *step));
                list_queues.push(queue.as_str());
            }
        }
        invocation
            .arg(format!("{:.6}", upkeep::now_secs()))
            .arg(max)
            .arg(if self.record { "1" } else { "0" })
            .arg(format!("{}.{}.", self.id, self.sequence));
        for queue in &list_queues {
            invocation.arg(serde_json::Value::from(*queue).to_string());
        }
        let flat: Vec<redis::Value> = invocation.invoke_async(connection).await?;
        let mut popped = Vec::with_capacity(flat.len() / 3);
        let mut items = flat.into_iter();
        while let (Some(tag), Some(index), Some(raw)) = (items.next(), items.next(), items.next()) {
            let tag: String = redis::FromRedisValue::from_redis_value(tag)?;
            let index: usize = redis::FromRedisValue::from_redis_value(index)?;
            let raw: Vec<u8> = redis::FromRedisValue::from_redis_value(raw)?;
            let queue = list_queues
                .get(index.saturating_sub(1))
                .map_or_else(String::new, |queue| (*queue).to_owned());
            if self.record {
                self.inner.hold(&tag);
                self.held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(tag.clone());
            }
            popped.push(Popped { tag, queue, raw });
        }
        Ok(popped)
    }

    /// A popped message as a delivery. An envelope that cannot be read is
    /// delivered with its raw text as the body and no properties, for the
    /// worker to dead-letter (it stays in `unacked` until then).
    fn delivery(&self, popped: Popped, permit: OwnedSemaphorePermit) -> Delivery {
        let Popped { tag, queue, raw } = popped;
        let (message, info) = match envelope::decode(&raw) {
            Ok(Decoded { message, info, .. }) => (message, info),
            Err(error) => {
                tracing::warn!(%queue, %error, "redis broker: a message that is not kombu's envelope");
                (
                    Message {
                        properties: Default::default(),
                        body: raw,
                    },
                    DeliveryInfo {
                        exchange: String::new(),
                        routing_key: queue.clone(),
                        redelivered: false,
                    },
                )
            }
        };
        let acker: Box<dyn Acknowledger> = if self.record {
            Box::new(ListAcker {
                inner: Arc::clone(&self.inner),
                tag,
                held: Arc::clone(&self.held),
                permit: Mutex::new(Some(permit)),
            })
        } else {
            Box::new(NoAcker { _permit: permit })
        };
        Delivery {
            message,
            queue,
            exchange: info.exchange,
            routing_key: info.routing_key,
            redelivered: info.redelivered,
            acker,
        }
    }
}

/// Settles a message popped from a list.
struct ListAcker {
    inner: Arc<Inner>,
    tag: String,
    held: ConsumerHeld,
    /// The consumer's window slot, given back once settled.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl ListAcker {
    fn settled(&self) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.tag);
        self.permit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

#[async_trait]
impl Acknowledger for ListAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        let result = self.inner.ack(&self.tag).await;
        self.settled();
        result
    }

    async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        let result = if requeue {
            self.inner.restore(&self.tag, None, true).await.map(|_| ())
        } else {
            self.inner.ack(&self.tag).await
        };
        self.settled();
        result
    }
}

/// A message that needs no settling (no-ack consumers, fanout).
struct NoAcker {
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Acknowledger for NoAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn reject(&self, _requeue: bool) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// A fanout-bound queue's subscription.
struct Subscriber {
    inner: Arc<Inner>,
    /// (channel pattern, queue).
    topics: Vec<(String, String)>,
    pubsub: Option<redis::aio::PubSub>,
}

impl Subscriber {
    async fn open(inner: &Arc<Inner>, queues: &[String]) -> Result<Self, BrokerError> {
        let topics = queues
            .iter()
            .filter_map(|queue| {
                let (exchange, key) = inner.routing.fanout_of(queue)?;
                Some((inner.keys.fanout_topic(&exchange, &key), queue.clone()))
            })
            .collect();
        let mut subscriber = Self {
            inner: Arc::clone(inner),
            topics,
            pubsub: None,
        };
        subscriber.pubsub = Some(subscriber.subscribe().await?);
        Ok(subscriber)
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, BrokerError> {
        let mut pubsub = self
            .inner
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| broker_error("psubscribe", e))?;
        for (topic, _) in &self.topics {
            pubsub
                .psubscribe(topic)
                .await
                .map_err(|e| broker_error("psubscribe", e))?;
        }
        Ok(pubsub)
    }

    async fn run(
        mut self,
        sender: mpsc::Sender<Result<Delivery, BrokerError>>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let unlimited = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
        let mut pause = Duration::from_millis(50);
        loop {
            if *stopped.borrow() {
                return;
            }
            let pubsub = match self.pubsub.take() {
                Some(pubsub) => pubsub,
                None => match self.subscribe().await {
                    Ok(pubsub) => {
                        pause = Duration::from_millis(50);
                        pubsub
                    }
                    Err(error) => {
                        tracing::warn!(%error, "redis broker: cannot subscribe yet");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stopped.changed() => {}
                        }
                        pause = (pause * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            let mut messages = pubsub.into_on_message();
            loop {
                let message = tokio::select! {
                    message = messages.next() => message,
                    _ = stopped.changed() => return,
                    _ = sender.closed() => return,
                };
                let Some(message) = message else {
                    tracing::warn!("redis broker: subscription lost");
                    break;
                };
                let pattern: String = message.get_pattern().unwrap_or_default();
                let queue = self
                    .topics
                    .iter()
                    .find(|(topic, _)| *topic == pattern)
                    .map_or_else(String::new, |(_, queue)| queue.clone());
                let Ok(decoded) = envelope::decode(message.get_payload_bytes()) else {
                    tracing::warn!(%queue, "redis broker: a broadcast that is not kombu's envelope, dropped");
                    continue;
                };
                let Ok(permit) = Arc::clone(&unlimited).try_acquire_owned() else {
                    continue;
                };
                let delivery = Delivery {
                    message: decoded.message,
                    queue,
                    exchange: decoded.info.exchange,
                    routing_key: decoded.info.routing_key,
                    redelivered: false,
                    acker: Box::new(NoAcker { _permit: permit }),
                };
                if sender.send(Ok(delivery)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Stops a Redis consumer.
struct RedisConsumerCancel {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    held: ConsumerHeld,
}

#[async_trait]
impl ConsumerCancel for RedisConsumerCancel {
    async fn cancel(&self) -> Result<(), BrokerError> {
        let _ = self.stop.send(true);
        Ok(())
    }

    async fn close(&self) -> Result<(), BrokerError> {
        let _ = self.stop.send(true);
        let held: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for tag in held {
            self.inner.restore(&tag, None, true).await?;
        }
        Ok(())
    }
}
