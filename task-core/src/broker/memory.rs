//! [`Broker`] in process: the `memory://` transport.
//!
//! A [`MemoryBroker`] keeps queues, exchanges, consumers and unacked
//! deliveries in memory, with the semantics of the RabbitMQ broker for
//! everything the framework uses:
//!
//! - queues are FIFO; a declaration is idempotent and a re-declaration with
//!   other flags or arguments fails like RabbitMQ's `PRECONDITION_FAILED`;
//!   refusals carry RabbitMQ's reply code for the same situation
//!   ([`BrokerError::reply_code`]: 404, 405, 406, 403, 540);
//! - exchange `""` routes by queue name, [`QueueSpec::same_name_exchange`]
//!   adds a direct exchange of the queue's name; declared exchanges route
//!   by their kind (direct: the exact key; fanout: every bound queue; topic:
//!   patterns with `*` and `#`), and an auto-delete one goes with its last
//!   binding; an unroutable publish is [`BrokerError::Unroutable`]; a
//!   publish is confirmed once enqueued;
//! - consumers have a prefetch window shared by their queues (or one per
//!   queue, [`ConsumeOptions::prefetch_per_queue`]), manual ack, reject
//!   (with or without requeue) or `no_ack`; a requeued message goes back to
//!   the head of its queue marked redelivered, and closing (or dropping) a
//!   consumer requeues every message it has not settled;
//! - queue arguments `x-max-priority`, `x-message-ttl`,
//!   `x-dead-letter-exchange` and `x-dead-letter-routing-key`, and per-message
//!   `expiration`, are honoured, as are `x-max-length` and `x-max-length-bytes`
//!   with `x-overflow` `drop-head` (the oldest ready messages are dropped;
//!   dropped, not dead-lettered) or `reject-publish` (the publish fails with
//!   [`BrokerError::Nacked`], RabbitMQ's confirm `nack`); dead-lettered
//!   messages carry RabbitMQ's `x-death` headers. `x-expires` is checked but
//!   not enforced;
//! - quorum queues (`x-queue-type: quorum`, [`QueueSpec::quorum`]) behave as
//!   RabbitMQ 3.10's: their type is compared on re-declaration (no type means
//!   classic), arguments of the other type are refused (`x-max-priority`,
//!   `x-queue-mode`; on a classic queue, `x-delivery-limit`,
//!   `x-dead-letter-strategy`), a redelivery carries `x-delivery-count` (the
//!   returns so far), a message returned more than `x-delivery-limit` times
//!   is dead-lettered with the reason `delivery_limit` (or dropped), a
//!   `reject-publish` quorum queue takes the message that takes it over its
//!   limit and refuses publishes until it is back under 80% of it, and one
//!   prefetch window over several queues (RabbitMQ's global QoS) is refused
//!   for a quorum queue with 540 `NOT_IMPLEMENTED`. Dead-lettering is
//!   synchronous, so `x-dead-letter-strategy` `at-most-once` and
//!   `at-least-once` do the same (a dead letter no queue takes is dropped,
//!   where RabbitMQ's `at-least-once` keeps it until one does). Streams
//!   (`x-queue-type: stream`) are refused ([`Broker::supports_streams`]);
//! - an exclusive queue (e.g. a server-named one) belongs to the connection
//!   (handle) that declared it: another may publish to it, but not consume,
//!   bind, count or delete it (`RESOURCE_LOCKED`), and it is deleted when
//!   its connection closes. `amq.` names are refused (RabbitMQ's predeclared
//!   `amq.direct` and the like do not exist here).
//!
//! Expiry is driven by a tokio timer, armed for the earliest deadline in the
//! broker: the expiry of a message at the head of a queue (RabbitMQ expires
//! messages at the head) or the due time of a delayed message. So a message
//! left in a queue with `x-message-ttl` moves to its dead-letter target on
//! time even when nobody reads the queue (delays kept as bucket queues whose
//! TTL dead-letters into a task queue work as on RabbitMQ), and each message
//! given to [`Broker::publish_delayed`] reaches its queue when due, to the
//! millisecond of the tokio clock. A timer runs on the runtime of the
//! operation that armed it; if that runtime shuts down, the next operation
//! arms it again.
//!
//! Each [`MemoryBroker`] handle is a connection: closing it ends its own
//! consumers (requeueing what they had not settled), not the broker. Handles
//! made by [`MemoryBroker::shared`] with the same URL, and
//! [`MemoryBroker::connection`]s of one broker, share its queues.

mod exchange;
pub(crate) use self::exchange::topic_matches;
mod handles;
mod state;
mod timer;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::handles::{MemoryConsumerCancel, MemoryDeliveries, Outcome};
use self::state::State;
use super::declaration::parse_expiration;
use super::{
    check_binding, check_declared_name, check_publish, check_queue_names, check_short, Broker,
    BrokerError, ConsumeOptions, Consumer, ExchangeSpec, Message, QueueSpec,
};

/// The URL scheme of the in-process broker.
pub const SCHEME: &str = "memory";

/// Whether `url` names the in-process broker (`memory://...`).
pub fn is_memory_url(url: &str) -> bool {
    memory_name(url).is_some()
}

/// The broker name in a `memory://name` URL (`""` for `memory://`).
fn memory_name(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    scheme
        .eq_ignore_ascii_case(SCHEME)
        .then(|| rest.trim_end_matches('/'))
}

/// The in-process broker (`memory://`): see the [module documentation](self).
///
/// A value is one connection to a broker; cloning it shares the connection,
/// [`MemoryBroker::connection`] opens another one on the same broker.
#[derive(Clone)]
pub struct MemoryBroker {
    core: Arc<Core>,
    session: Arc<Session>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("name", &self.core.name)
            .field("connection", &self.session.id)
            .field("closed", &self.session.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A private broker, empty, reachable only through this value, its clones
    /// and its [`connection`](Self::connection)s.
    pub fn new() -> Self {
        Self::connect_to(Arc::new(Core::new(None)))
    }

    /// A connection to the process-wide broker named by `url`: `memory://`
    /// (the default broker) or `memory://name`. Every call with the same name
    /// reaches the same broker, so a worker and a client in one process meet.
    pub fn shared(url: &str) -> Result<Self, BrokerError> {
        static SHARED: OnceLock<Mutex<HashMap<String, Arc<Core>>>> = OnceLock::new();
        let name = memory_name(url).ok_or_else(|| BrokerError::InvalidUrl {
            url: super::url::redact(url),
            reason: format!("not a `{SCHEME}://` URL"),
        })?;
        let core = SHARED
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Core::new(Some(name.to_owned()))))
            .clone();
        Ok(Self::connect_to(core))
    }

    /// Another connection to the same broker (its own consumers, closed on its own).
    pub fn connection(&self) -> Self {
        Self::connect_to(Arc::clone(&self.core))
    }

    /// Whether `self` and `other` are connections to the same broker.
    pub fn same_broker(&self, other: &MemoryBroker) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
    }

    fn connect_to(core: Arc<Core>) -> Self {
        static SESSIONS: AtomicU64 = AtomicU64::new(1);
        Self {
            core,
            session: Arc::new(Session {
                id: SESSIONS.fetch_add(1, Ordering::Relaxed),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The broker state, locked, if this connection is open. (The closed
    /// flag is read and written under the lock, so an operation never runs
    /// on a connection that `close` has already swept.) A closed connection
    /// is a refusal, not a lost connection: retrying cannot help, as with
    /// an `AmqpBroker` its owner closed.
    fn open(&self) -> Result<MutexGuard<'_, State>, BrokerError> {
        let state = self.core.lock();
        if self.session.closed.load(Ordering::Acquire) {
            return Err(BrokerError::failed(
                "connection",
                "the memory:// connection was closed by this client",
            ));
        }
        Ok(state)
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        check_declared_name(spec, true)?;
        self.open()?.declare(spec, self.session.id)
    }

    async fn declare_server_named_queue(&self, spec: &QueueSpec) -> Result<String, BrokerError> {
        check_declared_name(spec, false)?;
        self.open()?.declare_server_named(spec, self.session.id)
    }

    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        check_short("exchange name", &spec.name)?;
        self.open()?.declare_exchange(spec)
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        check_binding(queue, exchange, routing_key)?;
        self.open()?
            .bind(self.session.id, queue, exchange, routing_key)
    }

    async fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        check_binding(queue, exchange, routing_key)?;
        self.open()?
            .unbind(self.session.id, queue, exchange, routing_key)
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), BrokerError> {
        check_publish(exchange, routing_key, &message.properties)?;
        let expiration = parse_expiration(message)?;
        self.open()?
            .publish(&self.core, exchange, routing_key, message, expiration)
    }

    async fn publish_delayed(
        &self,
        queue: &str,
        message: &Message,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        if delay.is_zero() {
            return self.publish("", queue, message).await;
        }
        check_publish("", queue, &message.properties)?;
        parse_expiration(message)?;
        self.open()?
            .publish_delayed(&self.core, queue, message, delay)
    }

    async fn redeliver_unrouted(&self) -> Result<u32, BrokerError> {
        Ok(self.open()?.redeliver_unrouted(&self.core))
    }

    async fn consume(
        &self,
        queues: &[String],
        options: ConsumeOptions,
    ) -> Result<Consumer, BrokerError> {
        check_queue_names(queues)?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        let id = self.open()?.add_consumer(
            &self.core,
            self.session.id,
            queues,
            options,
            sender,
            Arc::clone(&closed),
        )?;
        let core = Arc::downgrade(&self.core);
        Ok(Consumer {
            deliveries: Box::pin(MemoryDeliveries::new(receiver, closed, core.clone(), id)),
            cancel: Box::new(MemoryConsumerCancel::new(core, id)),
        })
    }

    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        check_short("queue name", name)?;
        self.open()?.delete_queue_for(self.session.id, name)
    }

    async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        self.open()?.delete_exchange(name)
    }

    async fn queue_message_count(&self, name: &str) -> Result<u32, BrokerError> {
        check_short("queue name", name)?;
        self.open()?.ready_count(&self.core, self.session.id, name)
    }

    async fn close(&self) -> Result<(), BrokerError> {
        let mut state = self.core.lock();
        if !self.session.closed.swap(true, Ordering::AcqRel) {
            state.close_session(&self.core, self.session.id);
        }
        Ok(())
    }
}

/// One connection's identity and state.
#[derive(Debug)]
struct Session {
    id: u64,
    closed: AtomicBool,
}

/// One broker: everything behind one lock (every operation is short).
struct Core {
    name: Option<String>,
    state: Mutex<State>,
}

impl Core {
    fn new(name: Option<String>) -> Self {
        Self {
            name,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Settles delivery `tag` of consumer `consumer`.
    fn settle_delivery(
        self: &Arc<Self>,
        consumer: u64,
        tag: u64,
        outcome: Outcome,
    ) -> Result<(), BrokerError> {
        self.lock().settle_delivery(self, consumer, tag, outcome)
    }

    /// Stops new deliveries to a consumer (its unacked ones stay).
    fn cancel_consumer(&self, consumer: u64) {
        self.lock().cancel_consumer(consumer);
    }

    /// Ends a consumer, requeueing what it had not settled.
    fn close_consumer(self: &Arc<Self>, consumer: u64) {
        self.lock().close_consumer(self, consumer);
    }

    /// The timer fired: expire and deliver what is due.
    fn on_timer(self: &Arc<Self>, token: u64) {
        self.lock().on_timer(self, token, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use serde_json::{json, Value};
    use tokio::time::Instant;

    use super::*;
    use crate::broker::Delivery;

    fn spec(name: &str, arguments: Value) -> QueueSpec {
        let mut spec = QueueSpec::task_queue(name);
        spec.same_name_exchange = None;
        if let Value::Object(arguments) = arguments {
            spec.arguments = arguments;
        }
        spec
    }

    fn message(body: &str) -> Message {
        Message {
            body: body.as_bytes().to_vec(),
            ..Message::default()
        }
    }

    const OPTIONS: ConsumeOptions = ConsumeOptions {
        prefetch: 10,
        prefetch_per_queue: false,
        no_ack: false,
        ack_timeout: None,
        exclusive: false,
        stream_offset: None,
    };

    async fn next(consumer: &mut Consumer) -> Delivery {
        tokio::time::timeout(Duration::from_secs(3600), consumer.deliveries.next())
            .await
            .expect("a delivery in time")
            .expect("the consumer is open")
            .expect("a delivery")
    }

    fn body(delivery: &Delivery) -> &str {
        std::str::from_utf8(&delivery.message.body).unwrap()
    }

    #[test]
    fn memory_urls_name_one_broker_per_process() {
        let a = MemoryBroker::shared("memory://").unwrap();
        assert!(a.same_broker(&MemoryBroker::shared("memory://").unwrap()));
        let named = MemoryBroker::shared("memory://unit-tests-a").unwrap();
        assert!(!named.same_broker(&a));
        assert!(named.same_broker(&MemoryBroker::shared("MEMORY://unit-tests-a/").unwrap()));
        assert!(!MemoryBroker::new().same_broker(&MemoryBroker::new()));
        assert!(a.connection().same_broker(&a));
        assert!(matches!(
            MemoryBroker::shared("amqp://guest:secret@host"),
            Err(BrokerError::InvalidUrl { url, .. }) if !url.contains("secret")
        ));
        assert!(is_memory_url("memory://x") && !is_memory_url("amqp://x"));
    }

    #[tokio::test]
    async fn closing_a_connection_ends_its_consumers_only() {
        let first = MemoryBroker::new();
        let second = first.connection();
        first.declare_queue(&spec("q", json!({}))).await.unwrap();
        first.publish("", "q", &message("a")).await.unwrap();
        let mut mine = first.consume(&["q".into()], OPTIONS).await.unwrap();
        let held = next(&mut mine).await;
        let mut theirs = second.consume(&["q".into()], OPTIONS).await.unwrap();

        first.close().await.unwrap();
        assert!(mine.deliveries.next().await.is_none());
        assert!(held.acker.ack().await.is_err());
        assert!(matches!(
            first.publish("", "q", &message("b")).await,
            Err(BrokerError::Operation {
                operation: "connection",
                ..
            })
        ));
        let returned = next(&mut theirs).await;
        assert_eq!((body(&returned), returned.redelivered), ("a", true));
        second.publish("", "q", &message("b")).await.unwrap();
        assert_eq!(body(&next(&mut theirs).await), "b");
    }

    #[tokio::test(start_paused = true)]
    async fn delays_are_exact_and_need_no_reader() {
        let broker = MemoryBroker::new();
        broker
            .declare_queue(&spec("target", json!({})))
            .await
            .unwrap();
        let bucket = json!({
            "x-message-ttl": 1500,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "target",
        });
        broker.declare_queue(&spec("bucket", bucket)).await.unwrap();
        let start = Instant::now();
        broker.publish("", "bucket", &message("one")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        broker.publish("", "bucket", &message("two")).await.unwrap();
        // Nobody reads either queue: the timers alone move the messages.
        tokio::time::sleep_until(start + Duration::from_millis(1499)).await;
        assert_eq!(broker.queue_message_count("target").await.unwrap(), 0);
        tokio::time::sleep_until(start + Duration::from_millis(1500)).await;
        tokio::task::yield_now().await;
        assert_eq!(broker.queue_message_count("target").await.unwrap(), 1);

        let mut consumer = broker.consume(&["target".into()], OPTIONS).await.unwrap();
        assert_eq!(body(&next(&mut consumer).await), "one");
        let two = next(&mut consumer).await;
        assert_eq!(body(&two), "two");
        assert_eq!(start.elapsed(), Duration::from_millis(2200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_requeued_message_keeps_its_deadline() {
        let broker = MemoryBroker::new();
        broker
            .declare_queue(&spec("target", json!({})))
            .await
            .unwrap();
        let ttl = json!({"x-message-ttl": 1000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "target"});
        broker.declare_queue(&spec("short", ttl)).await.unwrap();
        broker.publish("", "short", &message("held")).await.unwrap();
        let mut consumer = broker.consume(&["short".into()], OPTIONS).await.unwrap();
        let held = next(&mut consumer).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            broker.queue_message_count("target").await.unwrap(),
            0,
            "in flight, it does not expire"
        );
        held.acker.reject(true).await.unwrap();
        // Back at the head past its deadline: it expires instead of being redelivered.
        assert_eq!(broker.queue_message_count("target").await.unwrap(), 1);
        assert_eq!(broker.queue_message_count("short").await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_cycles_are_dropped() {
        let broker = MemoryBroker::new();
        for (name, next) in [("ping", "pong"), ("pong", "ping")] {
            let arguments = json!({"x-message-ttl": 10, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": next});
            broker.declare_queue(&spec(name, arguments)).await.unwrap();
        }
        broker.publish("", "ping", &message("loop")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert_eq!(broker.queue_message_count("pong").await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(broker.queue_message_count("ping").await.unwrap(), 0);
        assert_eq!(broker.queue_message_count("pong").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn repeated_deaths_are_counted_in_x_death() {
        let broker = MemoryBroker::new();
        for (name, next) in [("a", "b"), ("b", "a")] {
            let arguments =
                json!({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": next});
            broker.declare_queue(&spec(name, arguments)).await.unwrap();
        }
        broker.publish("", "a", &message("m")).await.unwrap();
        let mut consumer = broker
            .consume(&["a".into(), "b".into()], OPTIONS)
            .await
            .unwrap();
        for _ in 0..3 {
            next(&mut consumer).await.acker.reject(false).await.unwrap();
        }
        let last = next(&mut consumer).await;
        assert_eq!(last.queue, "b");
        let headers = last.message.properties.headers.to_json();
        let deaths: Vec<(String, u64)> = headers["x-death"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["queue"].as_str().unwrap().to_owned(),
                    d["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(deaths, [("a".to_owned(), 2), ("b".to_owned(), 1)]);
        assert_eq!(headers["x-first-death-queue"], "a");
    }

    #[tokio::test]
    async fn dead_letters_can_go_through_a_same_name_exchange() {
        let broker = MemoryBroker::new();
        let mut target = spec("target", json!({}));
        target.same_name_exchange = Some(crate::broker::ExchangeKind::Direct);
        broker.declare_queue(&target).await.unwrap();
        let arguments =
            json!({"x-dead-letter-exchange": "target", "x-dead-letter-routing-key": "target"});
        broker
            .declare_queue(&spec("source", arguments))
            .await
            .unwrap();
        broker.publish("", "source", &message("m")).await.unwrap();
        let mut consumer = broker.consume(&["source".into()], OPTIONS).await.unwrap();
        next(&mut consumer).await.acker.reject(false).await.unwrap();
        assert_eq!(broker.queue_message_count("target").await.unwrap(), 1);
        let death = broker.publish("target", "elsewhere", &message("x")).await;
        assert!(matches!(death, Err(BrokerError::Unroutable { .. })));
    }

    #[tokio::test]
    async fn invalid_declarations_and_consumers_are_refused() {
        let broker = MemoryBroker::new();
        for bad in [
            spec("", json!({})),
            spec("amq.mine", json!({})),
            spec("q", json!({"x-message-ttl": -1})),
            spec("q", json!({"x-message-ttl": "10"})),
            spec("q", json!({"x-expires": 0})),
            spec("q", json!({"x-dead-letter-exchange": 1})),
        ] {
            let error = broker.declare_queue(&bad).await.unwrap_err();
            assert!(
                matches!(
                    error,
                    BrokerError::Operation {
                        operation: "queue.declare",
                        ..
                    }
                ),
                "{error}"
            );
        }
        // Arguments RabbitMQ does not compare are not compared.
        broker
            .declare_queue(&spec("q", json!({"x-max-priority": 3, "x-custom": 1})))
            .await
            .unwrap();
        broker
            .declare_queue(&spec("q", json!({"x-max-priority": 3, "x-custom": 2})))
            .await
            .unwrap();
        let missing = broker.consume(&["q".into(), "nope".into()], OPTIONS).await;
        assert!(matches!(
            missing,
            Err(BrokerError::Operation {
                operation: "basic.consume",
                ..
            })
        ));
        assert!(broker.delete_exchange("").await.is_err());
    }

    fn quorum(name: &str, arguments: Value) -> QueueSpec {
        spec(name, arguments).quorum()
    }

    fn is_nacked(result: Result<(), BrokerError>) -> bool {
        matches!(result, Err(BrokerError::Nacked { .. }))
    }

    #[tokio::test]
    async fn queue_types_and_their_arguments_are_checked() {
        let broker = MemoryBroker::new();
        for bad in [
            spec("q", json!({"x-queue-type": "stream"})),
            spec("q", json!({"x-queue-type": "bogus"})),
            spec("q", json!({"x-queue-type": 1})),
            spec("q", json!({"x-delivery-limit": 3})),
            spec("q", json!({"x-quorum-initial-group-size": 3})),
            spec("q", json!({"x-overflow": "reject-publish-dlx"})),
            spec("q", json!({"x-overflow": "bogus"})),
            quorum("q", json!({"x-delivery-limit": -1})),
            quorum("q", json!({"x-delivery-limit": "3"})),
            quorum("q", json!({"x-dead-letter-strategy": "bogus"})),
            quorum("q", json!({"x-queue-version": 2})),
        ] {
            let error = broker.declare_queue(&bad).await.unwrap_err();
            assert!(error.is_precondition_failed(), "{error}");
        }
        assert!(broker
            .queue_message_count("q")
            .await
            .unwrap_err()
            .is_not_found());
        // No type and `classic` are the same type; quorum is another.
        broker.declare_queue(&spec("c", json!({}))).await.unwrap();
        let explicit = spec("c", json!({"x-queue-type": "classic"}));
        broker.declare_queue(&explicit).await.unwrap();
        broker.declare_queue(&spec("c", json!({}))).await.unwrap();
        let error = broker
            .declare_queue(&quorum("c", json!({})))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("x-queue-type"), "{error}");
        let limited = QueueSpec::task_queue("limited").delivery_limit(5);
        broker.declare_queue(&limited).await.unwrap();
        broker.declare_queue(&limited).await.unwrap();
        let error = broker
            .declare_queue(&QueueSpec::task_queue("limited").delivery_limit(6))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("x-delivery-limit"), "{error}");
    }

    #[tokio::test]
    async fn a_zero_delivery_limit_dead_letters_on_the_first_return() {
        let broker = MemoryBroker::new();
        broker
            .declare_queue(&spec("dead", json!({})))
            .await
            .unwrap();
        let arguments = json!({
            "x-delivery-limit": 0,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dead",
        });
        broker.declare_queue(&quorum("q", arguments)).await.unwrap();
        for text in ["requeued", "rejected"] {
            broker.publish("", "q", &message(text)).await.unwrap();
        }
        let mut consumer = broker.consume(&["q".into()], OPTIONS).await.unwrap();
        next(&mut consumer).await.acker.reject(true).await.unwrap();
        next(&mut consumer).await.acker.reject(false).await.unwrap();
        let mut dead = broker.consume(&["dead".into()], OPTIONS).await.unwrap();
        for (text, reason) in [("requeued", "delivery_limit"), ("rejected", "rejected")] {
            let delivery = next(&mut dead).await;
            assert_eq!(body(&delivery), text);
            let headers = delivery.message.properties.headers.to_json();
            assert_eq!(headers["x-death"][0]["reason"], reason);
        }
        assert_eq!(broker.queue_message_count("q").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_full_quorum_queue_takes_publishes_again_under_80_percent() {
        let broker = MemoryBroker::new();
        let arguments = json!({"x-overflow": "reject-publish", "x-max-length": 5});
        broker.declare_queue(&quorum("q", arguments)).await.unwrap();
        // The sixth takes it over its limit: taken, and the next refused.
        for i in 0..6 {
            broker
                .publish("", "q", &message(&i.to_string()))
                .await
                .unwrap();
        }
        assert!(is_nacked(broker.publish("", "q", &message("x")).await));
        let one = ConsumeOptions {
            prefetch: 1,
            ..OPTIONS
        };
        let mut consumer = broker.consume(&["q".into()], one).await.unwrap();
        let first = next(&mut consumer).await;
        // 5 ready: under the limit, not under 80% of it (4).
        assert!(is_nacked(broker.publish("", "q", &message("x")).await));
        first.acker.ack().await.unwrap();
        let _second = next(&mut consumer).await;
        broker.publish("", "q", &message("6")).await.unwrap();
        broker.publish("", "q", &message("7")).await.unwrap();
        assert!(is_nacked(broker.publish("", "q", &message("x")).await));
        assert_eq!(broker.queue_message_count("q").await.unwrap(), 6);
    }

    #[tokio::test]
    async fn a_publish_one_full_queue_refuses_is_nacked_and_kept_by_the_others() {
        let broker = MemoryBroker::new();
        let full = json!({"x-overflow": "reject-publish", "x-max-length-bytes": 3});
        broker.declare_queue(&spec("small", full)).await.unwrap();
        broker.declare_queue(&spec("big", json!({}))).await.unwrap();
        let fanout = ExchangeSpec::fanout("both");
        broker.declare_exchange(&fanout).await.unwrap();
        for queue in ["small", "big"] {
            broker.bind_queue(queue, "both", "").await.unwrap();
        }
        broker.publish("both", "", &message("aa")).await.unwrap();
        assert!(is_nacked(broker.publish("both", "", &message("bb")).await));
        broker.publish("", "small", &message("c")).await.unwrap();
        assert_eq!(broker.queue_message_count("small").await.unwrap(), 2);
        assert_eq!(broker.queue_message_count("big").await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_queue_takes_its_expiries_along() {
        let broker = MemoryBroker::new();
        broker.declare_queue(&spec("t", json!({}))).await.unwrap();
        let arguments = json!({"x-message-ttl": 100, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "t"});
        broker.declare_queue(&spec("q", arguments)).await.unwrap();
        broker.publish("", "q", &message("m")).await.unwrap();
        broker.delete_queue("q").await.unwrap();
        broker.declare_queue(&spec("q", json!({}))).await.unwrap();
        broker.publish("", "q", &message("m")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(broker.queue_message_count("q").await.unwrap(), 1);
        assert_eq!(broker.queue_message_count("t").await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_publishes_arrive_exactly_when_due_in_due_order() {
        let broker = MemoryBroker::new();
        broker.declare_queue(&spec("q", json!({}))).await.unwrap();
        let start = Instant::now();
        for (text, ms) in [
            ("late", 900),
            ("early", 300),
            ("same-a", 600),
            ("same-b", 600),
        ] {
            broker
                .publish_delayed("q", &message(text), Duration::from_millis(ms))
                .await
                .unwrap();
        }
        let mut consumer = broker.consume(&["q".into()], OPTIONS).await.unwrap();
        for (text, ms) in [
            ("early", 300),
            ("same-a", 600),
            ("same-b", 600),
            ("late", 900),
        ] {
            let delivery = next(&mut consumer).await;
            assert_eq!(body(&delivery), text);
            assert_eq!(start.elapsed(), Duration::from_millis(ms));
        }
        let missing = broker
            .publish_delayed("nope", &message("x"), Duration::from_secs(1))
            .await;
        assert!(matches!(missing, Err(BrokerError::Unroutable { .. })));
        // A queue deleted before the message is due drops it.
        broker
            .declare_queue(&spec("gone", json!({})))
            .await
            .unwrap();
        broker
            .publish_delayed("gone", &message("x"), Duration::from_secs(1))
            .await
            .unwrap();
        broker.delete_queue("gone").await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(broker.queue_message_count("gone").await.is_err());
    }

    #[test]
    fn timers_outlive_the_runtime_that_armed_them() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let broker = MemoryBroker::new();
        runtime().block_on(async {
            broker.declare_queue(&spec("q", json!({}))).await.unwrap();
            let bucket = json!({
                "x-message-ttl": 300,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "q",
            });
            broker.declare_queue(&spec("bucket", bucket)).await.unwrap();
            let delay = Duration::from_millis(200);
            broker
                .publish_delayed("q", &message("delayed"), delay)
                .await
                .unwrap();
            broker
                .publish("", "bucket", &message("expired"))
                .await
                .unwrap();
        });
        // The runtime that armed the timer is gone; a consumer on another
        // one still gets the messages when they are due.
        runtime().block_on(async {
            let mut consumer = broker.consume(&["q".into()], OPTIONS).await.unwrap();
            for expected in ["delayed", "expired"] {
                let delivery = tokio::time::timeout(Duration::from_secs(5), next(&mut consumer))
                    .await
                    .expect("delivered in time");
                assert_eq!(body(&delivery), expected);
            }
        });
    }
}
