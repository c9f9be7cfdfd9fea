//! Consuming on Redis: the queues' lists through the atomic pop script, on a
//! connection of the consumer's own that Redis tells (RESP3 invalidation
//! pushes, `CLIENT TRACKING ... BCAST`) when a queue's lists change, so an
//! idle consumer wakes when a message arrives without holding it in a
//! blocking pop; queues bound to a fanout exchange through pub/sub, as
//! kombu consumes them (no acknowledgement, nothing kept while nobody
//! listens).
//!
//! Every consumer claims its queues in Redis for as long as it consumes
//! (a lease its process renews), so that an exclusive consumer is the only
//! one on its queues, among Rust processes (kombu's consumers claim
//! nothing).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{Stream, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::envelope::{self, Decoded, DeliveryInfo};
use super::{broker_error, is_transient, upkeep, Inner};
use crate::broker::{
    Acknowledger, BrokerError, ConsumeOptions, Consumer, ConsumerCancel, Delivery, Message,
    ReplyCode,
};

/// The most messages one pop takes.
const BATCH: usize = 32;
/// The window of a consumer without a prefetch limit (0).
const UNLIMITED: usize = 10_000;
/// How long an idle consumer waits for a push before it pops anyway (a
/// safety net: pushes are not expected to go missing).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long a consumer's claim on its queues lasts unless renewed: the
/// queues of a process that died without releasing its claims are free
/// again after this.
const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// The tags a consumer holds unacknowledged, each with the order it was
/// delivered in.
#[derive(Default)]
struct Held {
    delivered: u64,
    tags: HashMap<String, u64>,
}

/// What the parts of one consumer share: its stop switch, what it holds,
/// whether it was closed.
pub(crate) struct ConsumerState {
    inner: Arc<Inner>,
    queues: Vec<String>,
    /// Those of its queues a Rust process declared: the consumer ends when
    /// one of their records goes (deleted by any process).
    declared: Vec<String>,
    claim: Claim,
    stop: watch::Sender<bool>,
    held: Mutex<Held>,
    closed: AtomicBool,
}

impl ConsumerState {
    /// Records `tag` as delivered and held.
    fn hold(&self, tag: &str) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.delivered += 1;
        let order = held.delivered;
        held.tags.insert(tag.to_owned(), order);
    }

    /// Takes `tag` out of what is held; false if it is not held (settled
    /// already, or given back by a close).
    fn settle(&self, tag: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tags
            .remove(tag)
            .is_some()
    }

    /// Takes every held tag, the last delivered first: restored to the
    /// front of their lists in this order, they are popped again in the
    /// order they were first delivered, as RabbitMQ requeues them.
    fn take_held(&self) -> Vec<String> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tags: Vec<(String, u64)> = held.tags.drain().collect();
        tags.sort_unstable_by_key(|(_, order)| std::cmp::Reverse(*order));
        tags.into_iter().map(|(tag, _)| tag).collect()
    }

    /// Stops the flow of new deliveries.
    fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Stops the flow of new deliveries and gives up the claim on the
    /// queues, before returning (another consumer may take them at once).
    async fn cancel(&self) {
        self.stop();
        self.claim.release(&self.inner, true).await;
    }
}

/// Puts back in their queues the messages under `tags`, in that order;
/// the first error is returned once every tag was tried.
async fn restore_all(inner: &Inner, tags: Vec<String>) -> Result<(), BrokerError> {
    let mut first_error = None;
    for tag in tags {
        if let Err(error) = inner.restore(&tag, None, true).await {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Ends this process's consumers of `queue` (deleted), as RabbitMQ cancels
/// the consumers of a deleted queue: their streams end, and what they held
/// goes with the queue.
pub(super) async fn end_consumers_of(inner: &Inner, queue: &str) {
    let ended: Vec<Arc<ConsumerState>> = inner
        .consumers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .filter(|state| state.queues.iter().any(|q| q == queue))
        .collect();
    for state in ended {
        end(&state).await;
    }
}

/// Ends a consumer whose queue was deleted: its stream ends, its claim
/// goes (deleting nothing), and what it held goes with the queue.
async fn end(state: &ConsumerState) {
    // Taken and dropped first: once the stream has ended, none of it can be
    // settled, and none of it is left in `unacked`.
    for tag in state.take_held() {
        if let Err(error) = state.inner.ack(&tag).await {
            tracing::warn!(%error, "redis broker: cannot drop a message of a deleted queue");
        }
    }
    state.closed.store(true, Ordering::Release);
    state.stop();
    state.claim.release(&state.inner, false).await;
}

/// Starts a consumer of `queues`.
pub(super) async fn start(
    inner: &Arc<Inner>,
    queues: &[String],
    declared: Vec<String>,
    options: ConsumeOptions,
) -> Result<Consumer, BrokerError> {
    let claim = Claim::take(inner, queues, options.exclusive).await?;
    let (lists, fanouts): (Vec<String>, Vec<String>) = queues
        .iter()
        .cloned()
        .partition(|queue| inner.routing.fanout_of(queue).is_none());
    let (sender, receiver) = mpsc::channel::<Result<Delivery, BrokerError>>(BATCH * 2);
    let (stop, stopped) = watch::channel(false);
    let state = Arc::new(ConsumerState {
        inner: Arc::clone(inner),
        queues: queues.to_vec(),
        declared,
        claim,
        stop,
        held: Mutex::new(Held::default()),
        closed: AtomicBool::new(false),
    });
    let started = start_flows(inner, &state, lists, fanouts, options, &sender, &stopped).await;
    if let Err(error) = started {
        state.cancel().await;
        return Err(error);
    }
    drop(sender);
    {
        let mut consumers = inner
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        consumers.retain(|consumer| consumer.strong_count() > 0);
        consumers.push(Arc::downgrade(&state));
    }
    tokio::spawn(Claim::keep(Arc::clone(&state), stopped));
    Ok(Consumer {
        deliveries: Receiving {
            receiver,
            state: Arc::clone(&state),
        }
        .boxed(),
        cancel: Box::new(RedisConsumerCancel { state }),
    })
}

/// Starts the poppers of the list queues (one over all of them, sharing
/// one window, or one per queue with a window each when the prefetch is
/// per queue) and the subscriber of the fanout-bound ones. Their first
/// connections are made here, so an unreachable Redis is an error of
/// `consume` itself.
async fn start_flows(
    inner: &Arc<Inner>,
    state: &Arc<ConsumerState>,
    lists: Vec<String>,
    fanouts: Vec<String>,
    options: ConsumeOptions,
    sender: &mpsc::Sender<Result<Delivery, BrokerError>>,
    stopped: &watch::Receiver<bool>,
) -> Result<(), BrokerError> {
    let window = match usize::from(options.prefetch) {
        0 => UNLIMITED,
        n => n,
    };
    let groups: Vec<Vec<String>> = if options.prefetch_per_queue {
        lists.into_iter().map(|queue| vec![queue]).collect()
    } else if lists.is_empty() {
        Vec::new()
    } else {
        vec![lists]
    };
    let mut poppers = Vec::with_capacity(groups.len());
    for group in groups {
        let connection = ListConnection::open(inner, &group).await?;
        let popper = Popper {
            inner: Arc::clone(inner),
            queues: group.into_iter().collect(),
            record: !options.no_ack,
            window: Arc::new(Semaphore::new(window)),
            state: Arc::clone(state),
            id: uuid::Uuid::new_v4().simple().to_string(),
            sequence: 0,
        };
        poppers.push((popper, connection));
    }
    let subscriber = if fanouts.is_empty() {
        None
    } else {
        Some(Subscriber::open(inner, &fanouts).await?)
    };
    for (popper, connection) in poppers {
        tokio::spawn(popper.run(connection, sender.clone(), stopped.clone()));
    }
    if let Some(subscriber) = subscriber {
        tokio::spawn(subscriber.run(sender.clone(), stopped.clone()));
    }
    Ok(())
}

/// A consumer's deliveries. Dropped, it stops the consumer and gives back
/// what the consumer holds, as a closed AMQP channel does (after a close,
/// it ends: what it still buffered was given back).
struct Receiving {
    receiver: mpsc::Receiver<Result<Delivery, BrokerError>>,
    state: Arc<ConsumerState>,
}

impl Stream for Receiving {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.state.closed.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        self.receiver.poll_recv(cx)
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.state.stop();
        let tags = self.state.take_held();
        if tags.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                held = tags.len(),
                "redis broker: a consumer dropped outside a runtime; what it held comes back after the visibility timeout"
            );
            return;
        };
        let inner = Arc::clone(&self.state.inner);
        runtime.spawn(async move {
            if let Err(error) = restore_all(&inner, tags).await {
                tracing::warn!(%error, "redis broker: cannot give back what a dropped consumer held; it comes back after the visibility timeout");
            }
        });
    }
}

/// A consumer's claim on its queues, kept in Redis for as long as it
/// consumes: an exclusive consumer is refused while any other consumer is
/// on one of its queues, any consumer while an exclusive one is (403
/// `ACCESS_REFUSED`, as RabbitMQ refuses them).
struct Claim {
    queues: Vec<String>,
    /// Per queue: its exclusive holder's key, then its consumers' set.
    keys: Vec<String>,
    id: String,
    exclusive: bool,
    /// Whether it was released; held while it is renewed or released, so
    /// that a renewal never takes it again after its release.
    released: tokio::sync::Mutex<bool>,
}

impl Claim {
    /// Claims `queues`, or says which one is taken.
    async fn take(inner: &Inner, queues: &[String], exclusive: bool) -> Result<Self, BrokerError> {
        let claim = Self {
            queues: queues.to_vec(),
            keys: queues
                .iter()
                .flat_map(|queue| [inner.keys.exclusive(queue), inner.keys.consumers(queue)])
                .collect(),
            id: uuid::Uuid::new_v4().simple().to_string(),
            exclusive,
            released: tokio::sync::Mutex::new(false),
        };
        let now = upkeep::now_ms();
        let lease = lease_ms();
        let script = &inner.scripts.claim;
        let taken: usize = inner
            .retrying("claim", |mut c| {
                let mut invocation = script.prepare_invoke();
                for key in &claim.keys {
                    invocation.key(key);
                }
                invocation
                    .arg(now)
                    .arg(now.saturating_add(lease))
                    .arg(&claim.id)
                    .arg(if exclusive { "1" } else { "0" })
                    .arg(lease);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        match taken.checked_sub(1).and_then(|at| queues.get(at)) {
            None => Ok(claim),
            Some(queue) => Err(BrokerError::refused(
                "basic.consume",
                ReplyCode::AccessRefused,
                if exclusive {
                    format!("ACCESS_REFUSED - queue `{queue}` has other consumers: it cannot be consumed exclusively")
                } else {
                    format!("ACCESS_REFUSED - queue `{queue}` in exclusive use")
                },
            )),
        }
    }

    /// Renews the claim of `state`'s consumer until it stops (or its
    /// broker is closed), then releases it.
    async fn keep(state: Arc<ConsumerState>, mut stopped: watch::Receiver<bool>) {
        let (claim, inner) = (&state.claim, &state.inner);
        loop {
            tokio::select! {
                changed = stopped.changed() => {
                    if changed.is_err() || *stopped.borrow() {
                        break;
                    }
                    continue;
                }
                _ = tokio::time::sleep(CLAIM_LEASE / 3) => {}
            }
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            match claim.renew(inner).await {
                Ok(0) => {}
                Ok(lost) => tracing::warn!(
                    lost,
                    "redis broker: an exclusive consumer's claim lapsed and another consumer took its queue"
                ),
                Err(error) => tracing::warn!(%error, "redis broker: cannot renew a consumer's claim yet"),
            }
            // A queue deleted by another process ends its consumers here
            // too (within a renewal period).
            if !state.declared.is_empty() {
                match inner.records_gone(&state.declared).await {
                    Ok(gone) if !gone.is_empty() => {
                        tracing::info!(queues = ?gone, "redis broker: a consumed queue was deleted; the consumer ends");
                        end(&state).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(%error, "redis broker: cannot check the consumed queues yet")
                    }
                }
            }
        }
        claim.release(inner, true).await;
    }

    /// Extends the claim; returns on how many queues an exclusive claim
    /// was lost to another consumer meanwhile.
    async fn renew(&self, inner: &Inner) -> Result<usize, BrokerError> {
        let released = self.released.lock().await;
        if *released {
            return Ok(0);
        }
        let lease = lease_ms();
        let until = upkeep::now_ms().saturating_add(lease);
        let script = &inner.scripts.renew_claim;
        inner
            .retrying("claim", |mut c| {
                let mut invocation = script.prepare_invoke();
                for key in &self.keys {
                    invocation.key(key);
                }
                invocation
                    .arg(until)
                    .arg(&self.id)
                    .arg(if self.exclusive { "1" } else { "0" })
                    .arg(lease);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await
    }

    /// Gives the claim up, once (it lapses by itself should this fail),
    /// then, if `auto_delete`, deletes those of its auto-delete queues it
    /// was the last consumer of.
    async fn release(&self, inner: &Arc<Inner>, auto_delete: bool) {
        let mut released = self.released.lock().await;
        if std::mem::replace(&mut *released, true) {
            return;
        }
        let script = &inner.scripts.release_claim;
        let emptied: Result<Vec<usize>, BrokerError> = inner
            .retrying("claim", |mut c| {
                let mut invocation = script.prepare_invoke();
                for key in &self.keys {
                    invocation.key(key);
                }
                invocation.arg(&self.id).arg(upkeep::now_ms());
                async move { invocation.invoke_async(&mut c).await }
            })
            .await;
        // Deleting a queue below releases the claims of its consumers, this
        // one's included.
        drop(released);
        if !auto_delete {
            return;
        }
        let emptied = match emptied {
            Ok(emptied) => emptied,
            Err(error) => {
                tracing::debug!(%error, "redis broker: a consumer's claim will lapse by itself");
                return;
            }
        };
        for queue in emptied
            .iter()
            .filter_map(|n| n.checked_sub(1).and_then(|at| self.queues.get(at)))
        {
            let auto_delete = match inner.queue_record(queue).await {
                Ok(record) => record.is_some_and(|r| r.auto_delete()),
                Err(_) => false,
            };
            if auto_delete {
                if let Err(error) = delete_auto_delete(inner, queue.clone()).await {
                    tracing::warn!(%queue, %error, "redis broker: cannot delete an auto-delete queue its last consumer left");
                }
            }
        }
    }
}

/// Deletes auto-delete queue `queue` its last consumer left. Boxed, as
/// deleting a queue ends its consumers, which release their claims (without
/// deleting anything): a cycle of futures otherwise.
fn delete_auto_delete(
    inner: &Arc<Inner>,
    queue: String,
) -> Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>> {
    let broker = super::RedisBroker {
        inner: Arc::clone(inner),
    };
    Box::pin(async move { broker.delete_queue_as(&queue, "queue.delete").await })
}

/// [`CLAIM_LEASE`] in milliseconds.
fn lease_ms() -> u64 {
    u64::try_from(CLAIM_LEASE.as_millis()).unwrap_or(u64::MAX)
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
    state: Arc<ConsumerState>,
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
                    // Nobody reads any more: what was popped goes back
                    // (unless the close or drop that stopped the reader
                    // took it back already).
                    if self.record && self.state.settle(&tag) {
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
                self.state.hold(&tag);
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
                queue: queue.clone(),
                state: Arc::clone(&self.state),
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

/// Settles a message popped from a list, once: settling it again, or
/// after its consumer was closed (which gave it back), is an error, as
/// an AMQP client refuses it.
struct ListAcker {
    inner: Arc<Inner>,
    tag: String,
    /// The queue it was popped from.
    queue: String,
    state: Arc<ConsumerState>,
    /// The consumer's window slot, given back once settled.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl ListAcker {
    /// Takes the message out of what its consumer holds, or refuses to
    /// settle it (`operation`) again.
    fn settling(&self, operation: &'static str) -> Result<(), BrokerError> {
        if self.state.settle(&self.tag) {
            return Ok(());
        }
        Err(BrokerError::failed(
            operation,
            format!(
                "delivery `{}` was settled already, or its consumer was closed (which gave it back to its queue)",
                self.tag
            ),
        ))
    }

    /// Gives the consumer's window slot back.
    fn settled(&self) {
        self.permit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

#[async_trait]
impl Acknowledger for ListAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.settling("basic.ack")?;
        let result = self.inner.ack(&self.tag).await;
        self.settled();
        result
    }

    async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        self.settling("basic.reject")?;
        let result = if requeue {
            self.inner.restore(&self.tag, None, true).await.map(|_| ())
        } else {
            self.inner.reject_for_good(&self.tag, &self.queue).await
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
    state: Arc<ConsumerState>,
}

#[async_trait]
impl ConsumerCancel for RedisConsumerCancel {
    async fn cancel(&self) -> Result<(), BrokerError> {
        self.state.cancel().await;
        Ok(())
    }

    async fn close(&self) -> Result<(), BrokerError> {
        self.state.cancel().await;
        self.state.closed.store(true, Ordering::Release);
        let held = self.state.take_held();
        restore_all(&self.state.inner, held).await
    }
}
