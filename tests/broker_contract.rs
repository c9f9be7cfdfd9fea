//! The broker contract: what the framework relies on from a [`Broker`],
//! checked by the same test functions against RabbitMQ ([`AmqpBroker`], at
//! `$TEST_BROKER_URL` / `$BROKER_URL` / 127.0.0.1:5672) and against the
//! in-process broker ([`MemoryBroker`]).
//!
//! `contract_test!(name)` turns `async fn name(f: Fixture)` into the tests
//! `name::amqp` and `name::memory`. Every test uses queues of its own
//! (expiring on RabbitMQ should the test abort) and deletes them at the end.
//! Tests wait on events (a delivery, with a timeout); they sleep only to
//! show that something did not happen early.

mod common;
#[path = "common/redis_keys.rs"]
mod redis_keys;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::types::DecimalValue;
use serde_json::{json, Map, Value};
use task_core::broker::amqp::AmqpBroker;
use task_core::broker::memory::MemoryBroker;
use task_core::broker::redis::{RedisBroker, RedisBrokerOptions};
use task_core::broker::{
    Broker, BrokerError, ConsumeOptions, Consumer, Delivery, ExchangeKind, ExchangeSpec,
    HeaderValue, Headers, Message, Properties, QueueSpec, ReplyCode,
};

/// How long a test waits for any one event.
const WAIT: Duration = Duration::from_secs(10);

/// A broker under test and what to delete afterwards.
struct Fixture {
    broker: Arc<dyn Broker>,
    /// How to open another connection to the same broker.
    origin: Origin,
    queues: Vec<String>,
    exchanges: Vec<String>,
}

/// Which broker a fixture tests.
enum Origin {
    Amqp,
    Memory(MemoryBroker),
    /// The shared Redis, every key under this test's own prefix (kombu's
    /// `global_keyprefix`).
    Redis {
        prefix: String,
    },
}

async fn amqp_connect() -> Arc<dyn Broker> {
    let broker = AmqpBroker::connect(&common::broker_url())
        .await
        .expect("RabbitMQ must be running at TEST_BROKER_URL / BROKER_URL / 127.0.0.1:5672");
    Arc::new(broker)
}

async fn amqp_fixture() -> Fixture {
    Fixture::new(amqp_connect().await, Origin::Amqp)
}

fn memory_fixture() -> Fixture {
    let broker = MemoryBroker::new();
    Fixture::new(Arc::new(broker.clone()), Origin::Memory(broker))
}

async fn redis_connect(prefix: &str) -> Arc<dyn Broker> {
    let options = RedisBrokerOptions::default().key_prefix(prefix);
    let broker = RedisBroker::connect_with(&common::redis_url(), options)
        .await
        .expect("Redis must be running at TEST_REDIS_URL / 127.0.0.1:6379");
    Arc::new(broker)
}

async fn redis_fixture() -> Fixture {
    let prefix = format!("t.contract.{}:", uuid::Uuid::new_v4().simple());
    Fixture::new(redis_connect(&prefix).await, Origin::Redis { prefix })
}

impl Fixture {
    fn new(broker: Arc<dyn Broker>, origin: Origin) -> Self {
        Self {
            broker,
            origin,
            queues: Vec::new(),
            exchanges: Vec::new(),
        }
    }

    /// Another connection to the same broker (closed by the test).
    async fn another_connection(&self) -> Arc<dyn Broker> {
        match &self.origin {
            Origin::Amqp => amqp_connect().await,
            Origin::Memory(broker) => Arc::new(broker.connection()),
            Origin::Redis { prefix } => redis_connect(prefix).await,
        }
    }

    /// Whether this fixture tests the Redis broker.
    fn is_redis(&self) -> bool {
        matches!(self.origin, Origin::Redis { .. })
    }

    /// A fresh exchange name, deleted by [`Fixture::finish`].
    fn exchange_name(&mut self, label: &str) -> String {
        let name = common::unique_queue(&format!("exchange.{label}"));
        self.exchanges.push(name.clone());
        name
    }

    /// Declares a fresh exchange of `kind` (not durable: a test object).
    async fn exchange(&mut self, label: &str, kind: ExchangeKind) -> String {
        let name = self.exchange_name(label);
        let spec = ExchangeSpec::new(name.clone(), kind).durable(false);
        self.broker
            .declare_exchange(&spec)
            .await
            .expect("exchange declared");
        name
    }

    async fn bind(&self, queue: &str, exchange: &str, key: &str) {
        self.broker
            .bind_queue(queue, exchange, key)
            .await
            .expect("bound");
    }

    /// Publishes to `exchange` with `key`, expecting it to be routed.
    async fn publish_to(&self, exchange: &str, key: &str, text: &str) {
        self.broker
            .publish(exchange, key, &message(text))
            .await
            .unwrap_or_else(|e| panic!("publish to {exchange} with key {key:?}: {e}"));
    }

    /// A fresh queue name, deleted by [`Fixture::finish`].
    fn name(&mut self, label: &str) -> String {
        let name = common::unique_queue(label);
        self.queues.push(name.clone());
        name
    }

    /// A test queue (expiring on RabbitMQ) with these extra arguments.
    fn spec(&self, name: &str, arguments: Value) -> QueueSpec {
        let mut spec = common::test_queue_spec(name);
        if let Value::Object(arguments) = arguments {
            spec.arguments.extend(arguments);
        }
        spec
    }

    /// Declares a fresh test queue with these extra arguments.
    async fn queue(&mut self, label: &str, arguments: Value) -> String {
        let name = self.name(label);
        let spec = self.spec(&name, arguments);
        self.broker.declare_queue(&spec).await.expect("declared");
        name
    }

    async fn publish(&self, queue: &str, message: &Message) {
        self.broker
            .publish("", queue, message)
            .await
            .expect("published");
    }

    async fn consume(&self, queues: &[&str], prefetch: u16) -> Consumer {
        let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
        self.broker
            .consume(&queues, ConsumeOptions::manual_ack(prefetch))
            .await
            .expect("consuming")
    }

    async fn count(&self, queue: &str) -> u32 {
        self.broker
            .queue_message_count(queue)
            .await
            .expect("counted")
    }

    /// Waits until `queue` holds `expected` ready messages.
    async fn wait_count(&self, queue: &str, expected: u32) {
        let started = Instant::now();
        loop {
            let count = self.count(queue).await;
            if count == expected {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "queue {queue} still holds {count} messages, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) {
        for queue in &self.queues {
            self.broker
                .delete_queue(queue)
                .await
                .expect("queue deleted");
        }
        for exchange in &self.exchanges {
            self.broker
                .delete_exchange(exchange)
                .await
                .expect("exchange deleted");
        }
        let _ = self.broker.close().await;
        if let Origin::Redis { prefix } = &self.origin {
            redis_keys::delete_redis_keys(prefix).await;
        }
    }
}

/// Runs each contract test on both brokers: `name::amqp` and `name::memory`.
/// `contract_test!(name, amqp_ignore = "why")` marks the RabbitMQ case ignored.
macro_rules! contract_test {
    ($name:ident) => {
        contract_test!(@expand $name, #[tokio::test]);
    };
    ($name:ident, amqp_ignore = $why:literal) => {
        contract_test!(@expand $name, #[tokio::test] #[ignore = $why]);
    };
    (@expand $name:ident, $(#[$amqp_attr:meta])*) => {
        mod $name {
            $(#[$amqp_attr])*
            async fn amqp() {
                super::$name(super::amqp_fixture().await).await;
            }

            #[tokio::test]
            async fn memory() {
                super::$name(super::memory_fixture()).await;
            }

            #[tokio::test]
            async fn redis() {
                super::$name(super::redis_fixture().await).await;
            }
        }
    };
}

fn message(body: &str) -> Message {
    Message {
        properties: Properties {
            content_type: Some("text/plain".into()),
            ..Properties::default()
        },
        body: body.as_bytes().to_vec(),
    }
}

fn body(delivery: &Delivery) -> &str {
    std::str::from_utf8(&delivery.message.body).expect("UTF-8 body")
}

/// The next delivery, failing the test if none arrives in time.
async fn next(consumer: &mut Consumer) -> Delivery {
    match tokio::time::timeout(WAIT, consumer.deliveries.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(error))) => panic!("delivery failed: {error}"),
        Ok(None) => panic!("the consumer ended"),
        Err(_) => panic!("no delivery within {WAIT:?}"),
    }
}

/// Waits for the consumer's stream to end.
async fn ended(consumer: &mut Consumer) {
    match tokio::time::timeout(WAIT, consumer.deliveries.next()).await {
        Ok(None) => {}
        Ok(Some(Ok(delivery))) => panic!("unexpected delivery {delivery:?}"),
        Ok(Some(Err(error))) => panic!("delivery failed: {error}"),
        Err(_) => panic!("the consumer did not end within {WAIT:?}"),
    }
}

fn is_precondition_failed(error: &BrokerError) -> bool {
    matches!(
        error,
        BrokerError::Operation {
            operation: "queue.declare",
            reply_code: Some(ReplyCode::PreconditionFailed),
            ..
        }
    ) && error.is_precondition_failed()
}

contract_test!(declaring_is_idempotent_and_a_different_declaration_fails);
async fn declaring_is_idempotent_and_a_different_declaration_fails(mut f: Fixture) {
    let q = f.name("declare");
    let spec = f.spec(&q, json!({"x-max-priority": 5}));
    f.broker.declare_queue(&spec).await.unwrap();
    f.publish(&q, &message("kept")).await;
    f.broker.declare_queue(&spec).await.unwrap();
    assert_eq!(f.count(&q).await, 1, "a re-declaration keeps the messages");

    let mut not_durable = spec.clone();
    not_durable.durable = false;
    let mut other_priority = spec.clone();
    other_priority
        .arguments
        .insert("x-max-priority".into(), json!(6));
    let mut no_priority = spec.clone();
    no_priority.arguments.remove("x-max-priority");
    let mut with_ttl = spec.clone();
    with_ttl
        .arguments
        .insert("x-message-ttl".into(), json!(1000));
    for different in [not_durable, other_priority, no_priority, with_ttl] {
        let error = f.broker.declare_queue(&different).await.unwrap_err();
        assert!(is_precondition_failed(&error), "{error}");
    }
    let invalid_name = f.name("invalid");
    let mut invalid = f.spec(&invalid_name, json!({"x-max-priority": 300}));
    let error = f.broker.declare_queue(&invalid).await.unwrap_err();
    assert!(is_precondition_failed(&error), "{error}");
    invalid.arguments = Map::from_iter([("x-dead-letter-routing-key".into(), json!("k"))]);
    let error = f.broker.declare_queue(&invalid).await.unwrap_err();
    assert!(is_precondition_failed(&error), "{error}");

    f.broker.declare_queue(&spec).await.unwrap();
    assert_eq!(f.count(&q).await, 1);
    f.finish().await;
}

contract_test!(round_trip_preserves_body_properties_and_every_header_type);
async fn round_trip_preserves_body_properties_and_every_header_type(mut f: Fixture) {
    let q = f.name("round-trip");
    let mut spec = f.spec(&q, json!({}));
    spec.same_name_exchange = Some(ExchangeKind::Direct);
    f.exchanges.push(q.clone());
    f.broker.declare_queue(&spec).await.unwrap();

    let json = json!({
        "text": "Zoë ✓ 𝄞", "empty": "", "int": 42, "negative": -7, "zero": 0,
        "big": 1u64 << 40, "min": i64::MIN, "float": 0.25, "huge": 1e300, "whole_float": 2.0,
        "true": true, "false": false, "null": null,
        "list": [1, "a", null, [true], {"k": -1.5}], "empty_list": [],
        "object": {"nested": {"deeper": ["x"]}, "n": 3}, "empty_object": {}
    });
    let Value::Object(json) = json else {
        unreachable!()
    };
    let mut headers = Headers::from_json(&json);
    // The AMQP types peers (py-amqp, RabbitMQ itself) write beyond those; a
    // short string is stored as a long one (RabbitMQ reads `s` as an integer).
    let mut nested = Headers::new();
    nested.insert("short", HeaderValue::ShortString("s".into()));
    for (key, value) in [
        ("i8", HeaderValue::ShortShortInt(-8)),
        ("i16", HeaderValue::ShortInt(-16)),
        ("i64_small", HeaderValue::LongLongInt(64)),
        ("f32", HeaderValue::Float(0.5)),
        ("timestamp", HeaderValue::Timestamp(1_700_000_000)),
        (
            "decimal",
            HeaderValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 150,
            }),
        ),
        ("bytes", HeaderValue::LongString(vec![0xff, 0, 1].into())),
        ("table", HeaderValue::FieldTable(nested.to_field_table())),
    ] {
        headers.insert(key, value);
    }
    let full = Message {
        properties: Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            correlation_id: Some("c0rr-é".into()),
            reply_to: Some("somewhere".into()),
            persistent: true,
            priority: Some(7),
            expiration: Some("60000".into()),
            headers,
        },
        body: vec![0, 159, 146, 150, 255, b'{', 0],
    };
    let bare = Message::default();
    f.broker.publish("", &q, &full).await.unwrap();
    f.broker.publish(&q, &q, &bare).await.unwrap();

    let mut consumer = f.consume(&[&q], 10).await;
    if f.is_redis() {
        // Redis (kombu's layout): priority 7 is served after none (lower
        // numbers first), and headers travel as JSON in kombu's envelope,
        // so AMQP's own types (integer widths, timestamps, decimals, byte
        // strings) come back as their JSON values.
        let second = next(&mut consumer).await;
        assert_eq!(second.message, bare);
        let first = next(&mut consumer).await;
        assert_eq!(first.queue, q);
        assert!(!first.redelivered);
        assert_eq!(first.message.body, full.body);
        assert_eq!(
            first.message.properties.headers.to_json(),
            full.properties.headers.to_json()
        );
        let without_headers = |message: &Message| Properties {
            headers: Headers::new(),
            ..message.properties.clone()
        };
        assert_eq!(without_headers(&first.message), without_headers(&full));
        first.acker.ack().await.unwrap();
        second.acker.ack().await.unwrap();
        consumer.cancel.close().await.unwrap();
        f.finish().await;
        return;
    }
    let first = next(&mut consumer).await;
    assert_eq!(first.message, full);
    assert_eq!(first.queue, q);
    assert!(!first.redelivered);
    let second = next(&mut consumer).await;
    assert_eq!(second.message, bare);
    first.acker.ack().await.unwrap();
    second.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(an_acked_message_is_gone);
async fn an_acked_message_is_gone(mut f: Fixture) {
    let q = f.queue("ack", json!({})).await;
    f.publish(&q, &message("a")).await;
    let mut consumer = f.consume(&[&q], 10).await;
    let a = next(&mut consumer).await;
    a.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    assert_eq!(f.count(&q).await, 0);

    f.publish(&q, &message("b")).await;
    let mut consumer = f.consume(&[&q], 10).await;
    let b = next(&mut consumer).await;
    assert_eq!((body(&b), b.redelivered), ("b", false));
    b.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(a_requeued_message_comes_back_marked_redelivered);
/// Only redelivery and its flag are the contract, not the position: RabbitMQ
/// puts a requeued message back at its old place "if possible", but with a
/// channel-wide (global) prefetch the freed credit can reach the queue before
/// the requeue does, and `b` is then delivered first.
async fn a_requeued_message_comes_back_marked_redelivered(mut f: Fixture) {
    let q = f.queue("requeue", json!({})).await;
    f.publish(&q, &message("a")).await;
    f.publish(&q, &message("b")).await;
    let mut consumer = f.consume(&[&q], 1).await;
    let a = next(&mut consumer).await;
    assert_eq!((body(&a), a.redelivered), ("a", false));
    a.acker.reject(true).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = next(&mut consumer).await;
        seen.push((body(&d).to_owned(), d.redelivered));
        d.acker.ack().await.unwrap();
    }
    seen.sort();
    assert_eq!(
        seen,
        [("a".to_owned(), true), ("b".to_owned(), false)],
        "the requeued `a` comes back once, marked redelivered; `b` is not"
    );
    consumer.cancel.close().await.unwrap();
    assert_eq!(f.count(&q).await, 0);
    f.finish().await;
}

contract_test!(a_message_rejected_without_requeue_is_gone);
async fn a_message_rejected_without_requeue_is_gone(mut f: Fixture) {
    let q = f.queue("reject", json!({})).await;
    f.publish(&q, &message("a")).await;
    f.publish(&q, &message("b")).await;
    let mut consumer = f.consume(&[&q], 1).await;
    let a = next(&mut consumer).await;
    a.acker.reject(false).await.unwrap();
    let b = next(&mut consumer).await;
    assert_eq!((body(&b), b.redelivered), ("b", false));
    b.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    assert_eq!(f.count(&q).await, 0);
    f.finish().await;
}

contract_test!(a_rejected_message_is_dead_lettered_when_the_queue_says_so);
async fn a_rejected_message_is_dead_lettered_when_the_queue_says_so(mut f: Fixture) {
    let target = f.queue("rejected-target", json!({})).await;
    let q = f
        .queue(
            "rejecting",
            json!({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": target}),
        )
        .await;
    let mut sent = message("poison");
    sent.properties.headers.insert_json("kept", &json!(1));
    f.publish(&q, &sent).await;
    let mut consumer = f.consume(&[&q], 1).await;
    next(&mut consumer).await.acker.reject(false).await.unwrap();
    let mut dead = f.consume(&[&target], 1).await;
    let poison = next(&mut dead).await;
    assert_eq!(body(&poison), "poison");
    let headers = poison.message.properties.headers.to_json();
    assert_eq!(headers["kept"], 1);
    assert_eq!(headers["x-death"][0]["reason"], "rejected");
    assert_eq!(headers["x-death"][0]["queue"], q.as_str());
    assert_eq!(headers["x-death"][0]["count"], 1);
    assert_eq!(headers["x-first-death-reason"], "rejected");
    // In RabbitMQ's own AMQP types: a 64-bit count and a timestamp (on
    // Redis, headers travel as JSON: a number each).
    if f.is_redis() {
        assert!(headers["x-death"][0]["time"].is_u64(), "{headers:?}");
        poison.acker.ack().await.unwrap();
        consumer.cancel.close().await.unwrap();
        dead.cancel.close().await.unwrap();
        f.finish().await;
        return;
    }
    let Some(HeaderValue::FieldArray(deaths)) = poison.message.properties.headers.get("x-death")
    else {
        panic!("x-death is an array")
    };
    let Some(HeaderValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("x-death holds tables")
    };
    assert_eq!(
        death.inner().get("count"),
        Some(&HeaderValue::LongLongInt(1))
    );
    assert!(matches!(
        death.inner().get("time"),
        Some(HeaderValue::Timestamp(_))
    ));
    poison.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    dead.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(unacked_messages_return_when_the_consumer_closes);
async fn unacked_messages_return_when_the_consumer_closes(mut f: Fixture) {
    let q = f.queue("close", json!({})).await;
    for text in ["a", "b", "c"] {
        f.publish(&q, &message(text)).await;
    }
    let mut consumer = f.consume(&[&q], 10).await;
    let a = next(&mut consumer).await;
    let b = next(&mut consumer).await;
    let c = next(&mut consumer).await;
    b.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    // Too late: `a` is back in the queue whatever this answers.
    let _ = a.acker.ack().await;
    drop(c);

    let mut again = f.consume(&[&q], 10).await;
    let first = next(&mut again).await;
    let second = next(&mut again).await;
    assert_eq!(
        [
            (body(&first), first.redelivered),
            (body(&second), second.redelivered)
        ],
        [("a", true), ("c", true)]
    );
    first.acker.ack().await.unwrap();
    second.acker.ack().await.unwrap();
    again.cancel.close().await.unwrap();
    assert_eq!(f.count(&q).await, 0);
    f.finish().await;
}

contract_test!(settling_twice_or_after_the_consumer_closed_is_an_error);
async fn settling_twice_or_after_the_consumer_closed_is_an_error(mut f: Fixture) {
    let q = f.queue("settle-errors", json!({})).await;
    f.publish(&q, &message("a")).await;
    f.publish(&q, &message("b")).await;
    let mut consumer = f.consume(&[&q], 10).await;
    let a = next(&mut consumer).await;
    let b = next(&mut consumer).await;
    a.acker.ack().await.unwrap();
    assert!(a.acker.ack().await.is_err(), "acked twice");
    assert!(
        a.acker.reject(true).await.is_err(),
        "rejected after its ack"
    );
    consumer.cancel.close().await.unwrap();
    assert!(
        b.acker.ack().await.is_err(),
        "acked after its consumer closed, when it is back in the queue"
    );
    assert_eq!(f.count(&q).await, 1);
    f.finish().await;
}

contract_test!(unacked_messages_return_when_the_consumer_is_dropped);
async fn unacked_messages_return_when_the_consumer_is_dropped(mut f: Fixture) {
    let q = f.queue("drop", json!({})).await;
    f.publish(&q, &message("a")).await;
    let mut consumer = f.consume(&[&q], 10).await;
    let a = next(&mut consumer).await;
    assert!(!a.redelivered);
    drop(consumer);

    let mut again = f.consume(&[&q], 10).await;
    let returned = next(&mut again).await;
    assert_eq!((body(&returned), returned.redelivered), ("a", true));
    returned.acker.ack().await.unwrap();
    again.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(cancel_stops_new_deliveries_and_keeps_the_unacked_ones);
async fn cancel_stops_new_deliveries_and_keeps_the_unacked_ones(mut f: Fixture) {
    let q = f.queue("cancel", json!({})).await;
    f.publish(&q, &message("a")).await;
    let mut consumer = f.consume(&[&q], 10).await;
    let a = next(&mut consumer).await;
    consumer.cancel.cancel().await.unwrap();
    ended(&mut consumer).await;
    f.publish(&q, &message("b")).await;
    assert_eq!(f.count(&q).await, 1, "b waits: nobody consumes");
    a.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    assert_eq!(f.count(&q).await, 1, "a was acked, not requeued");
    f.finish().await;
}

contract_test!(prefetch_bounds_deliveries_in_flight_across_the_consumers_queues);
async fn prefetch_bounds_deliveries_in_flight_across_the_consumers_queues(mut f: Fixture) {
    let q1 = f.queue("prefetch-1", json!({})).await;
    let q2 = f.queue("prefetch-2", json!({})).await;
    for i in 0..3 {
        f.publish(&q1, &message(&format!("1-{i}"))).await;
        f.publish(&q2, &message(&format!("2-{i}"))).await;
    }
    let mut consumer = f.consume(&[&q1, &q2], 2).await;
    let first = next(&mut consumer).await;
    let _second = next(&mut consumer).await;
    // Unacked deliveries are not ready: the other four wait in their queues.
    assert_eq!(f.count(&q1).await + f.count(&q2).await, 4);
    first.acker.ack().await.unwrap();
    let _third = next(&mut consumer).await;
    assert_eq!(f.count(&q1).await + f.count(&q2).await, 3);
    consumer.cancel.close().await.unwrap();
    assert_eq!(f.count(&q1).await + f.count(&q2).await, 5);
    f.finish().await;
}

contract_test!(no_ack_deliveries_are_forgotten_when_sent);
async fn no_ack_deliveries_are_forgotten_when_sent(mut f: Fixture) {
    let q = f.queue("no-ack", json!({})).await;
    for text in ["a", "b", "c"] {
        f.publish(&q, &message(text)).await;
    }
    let mut consumer = f
        .broker
        .consume(
            std::slice::from_ref(&q),
            ConsumeOptions {
                prefetch: 1,
                ..ConsumeOptions::no_ack()
            },
        )
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(body(&next(&mut consumer).await).to_owned());
    }
    assert_eq!(bodies, ["a", "b", "c"]);
    consumer.cancel.close().await.unwrap();
    assert_eq!(f.count(&q).await, 0);
    f.finish().await;
}

contract_test!(an_exclusive_consumer_holds_its_queue_alone_until_it_goes);
async fn an_exclusive_consumer_holds_its_queue_alone_until_it_goes(mut f: Fixture) {
    let q = f.queue("exclusive-consume", json!({})).await;
    let queues = std::slice::from_ref(&q);
    let exclusive = ConsumeOptions::manual_ack(0).exclusive(true);
    let other = f.another_connection().await;
    let holder = f.broker.consume(queues, exclusive).await.unwrap();
    // Neither a second exclusive consumer nor a plain one gets in.
    for options in [exclusive, ConsumeOptions::manual_ack(1)] {
        let refused = other.consume(queues, options).await.err().expect("refused");
        assert_eq!(
            refused.reply_code(),
            Some(ReplyCode::AccessRefused),
            "{refused}"
        );
    }
    // Nor does an exclusive consumer while a plain one is on the queue.
    holder.cancel.close().await.unwrap();
    let plain = other
        .consume(queues, ConsumeOptions::manual_ack(1))
        .await
        .unwrap();
    let third = f.another_connection().await;
    let refused = third
        .consume(queues, exclusive)
        .await
        .err()
        .expect("refused");
    assert_eq!(
        refused.reply_code(),
        Some(ReplyCode::AccessRefused),
        "{refused}"
    );
    // Once it has gone, the queue can be taken again.
    plain.cancel.close().await.unwrap();
    let mut again = third.consume(queues, exclusive).await.unwrap();
    f.publish(&q, &message("m")).await;
    assert_eq!(body(&next(&mut again).await), "m");
    again.cancel.close().await.unwrap();
    other.close().await.unwrap();
    third.close().await.unwrap();
    f.finish().await;
}

contract_test!(higher_priorities_come_first_in_publish_order_within_a_priority);
async fn higher_priorities_come_first_in_publish_order_within_a_priority(mut f: Fixture) {
    let q = f.queue("priority", json!({"x-max-priority": 10})).await;
    // (body, priority): 20 counts as the maximum, 10; none counts as 0.
    let sent = [
        ("p1", Some(1)),
        ("p5-first", Some(5)),
        ("none", None),
        ("p9", Some(9)),
        ("p5-second", Some(5)),
        ("p20", Some(20)),
        ("p10", Some(10)),
        ("p0", Some(0)),
    ];
    for (text, priority) in sent {
        let mut m = message(text);
        m.properties.priority = priority;
        f.publish(&q, &m).await;
    }
    let mut consumer = f.consume(&[&q], 1).await;
    let mut received = Vec::new();
    for _ in 0..sent.len() {
        let delivery = next(&mut consumer).await;
        received.push(body(&delivery).to_owned());
        delivery.acker.ack().await.unwrap();
    }
    let expected = if f.is_redis() {
        // kombu's priority steps (0, 3, 6, 9; 20 counts as 9), served
        // lowest first, as Celery on Redis does.
        [
            "p1",
            "none",
            "p0",
            "p5-first",
            "p5-second",
            "p9",
            "p20",
            "p10",
        ]
    } else {
        [
            "p20",
            "p10",
            "p9",
            "p5-first",
            "p5-second",
            "p1",
            "none",
            "p0",
        ]
    };
    assert_eq!(received, expected);
    consumer.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(a_queue_ttl_dead_letters_to_the_target_queue_on_time);
async fn a_queue_ttl_dead_letters_to_the_target_queue_on_time(mut f: Fixture) {
    // Delayed delivery: a bucket queue nobody reads, whose TTL moves each
    // message to the target queue.
    const TTL: Duration = Duration::from_millis(600);
    if f.is_redis() {
        return redis_keeps_messages_past_their_ttl(f).await;
    }
    let target = f.queue("delay-target", json!({})).await;
    let bucket = f
        .queue(
            "delay-bucket",
            json!({
                "x-message-ttl": TTL.as_millis() as u64,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": target,
            }),
        )
        .await;
    let mut consumer = f.consume(&[&target], 10).await;
    let mut first = message("first");
    first.properties.headers.insert_str("kept", "yes");
    first.properties.correlation_id = Some("id-1".into());
    let sent_first = Instant::now();
    f.publish(&bucket, &first).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent_second = Instant::now();
    f.publish(&bucket, &message("second")).await;
    let waiting = f.count(&bucket).await;
    // Only meaningful if the count was taken before the first TTL ran out
    // (a stalled test process must not turn into a failure).
    if sent_first.elapsed() < TTL {
        assert_eq!(waiting, 2, "nothing leaves early");
    }

    let a = next(&mut consumer).await;
    let a_after = sent_first.elapsed();
    let b = next(&mut consumer).await;
    let b_after = sent_second.elapsed();
    assert_eq!((body(&a), body(&b)), ("first", "second"));
    for after in [a_after, b_after] {
        assert!(after >= TTL, "delivered early, after {after:?}");
        assert!(
            after < TTL + Duration::from_secs(3),
            "delivered late, after {after:?}"
        );
    }
    let properties = &a.message.properties;
    assert_eq!(properties.correlation_id.as_deref(), Some("id-1"));
    let headers = properties.headers.to_json();
    assert_eq!(headers["kept"], "yes");
    let death = &headers["x-death"][0];
    assert_eq!(
        (
            &death["reason"],
            &death["queue"],
            &death["count"],
            &death["exchange"]
        ),
        (&json!("expired"), &json!(bucket), &json!(1), &json!(""))
    );
    assert_eq!(death["routing-keys"], json!([bucket]));
    assert_eq!(headers["x-first-death-queue"], bucket.as_str());
    assert_eq!(f.count(&bucket).await, 0);
    a.acker.ack().await.unwrap();
    b.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    f.finish().await;
}

/// Redis expires no message (kombu neither): `x-message-ttl` and a
/// message's `expiration` are accepted and kept, not applied; a task's own
/// expiry is checked by the worker that takes it.
async fn redis_keeps_messages_past_their_ttl(mut f: Fixture) {
    let q = f.queue("ttl-kept", json!({"x-message-ttl": 1})).await;
    let mut expiring = message("kept");
    expiring.properties.expiration = Some("1".into());
    f.publish(&q, &expiring).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(f.count(&q).await, 1, "nothing expires on Redis");
    let mut consumer = f.consume(&[&q], 1).await;
    let kept = next(&mut consumer).await;
    assert_eq!(body(&kept), "kept");
    assert_eq!(kept.message.properties.expiration.as_deref(), Some("1"));
    kept.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(a_message_expiration_applies_at_the_head_of_the_queue);
async fn a_message_expiration_applies_at_the_head_of_the_queue(mut f: Fixture) {
    if f.is_redis() {
        return redis_keeps_messages_past_their_ttl(f).await;
    }
    let target = f.queue("expired-target", json!({})).await;
    let q = f
        .queue(
            "expiring",
            json!({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": target}),
        )
        .await;
    let mut dead = f.consume(&[&target], 10).await;

    // Alone in its queue, it expires on time and is dead-lettered without
    // its expiration (kept in x-death).
    let mut short = message("short");
    short.properties.expiration = Some("300".into());
    let sent = Instant::now();
    f.publish(&q, &short).await;
    let expired = next(&mut dead).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "expired early"
    );
    assert_eq!(body(&expired), "short");
    assert_eq!(expired.message.properties.expiration, None);
    let headers = expired.message.properties.headers.to_json();
    let death = &headers["x-death"][0];
    assert_eq!(death["reason"], "expired");
    assert_eq!(death["original-expiration"], "300");
    expired.acker.ack().await.unwrap();

    // Behind a message that does not expire, it waits for the head.
    f.publish(&q, &message("long")).await;
    let mut behind = message("behind");
    behind.properties.expiration = Some("100".into());
    f.publish(&q, &behind).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        f.count(&q).await,
        2,
        "an expired message behind the head stays"
    );
    let mut consumer = f.consume(&[&q], 10).await;
    let long = next(&mut consumer).await;
    assert_eq!(body(&long), "long");
    let behind = next(&mut dead).await;
    assert_eq!(body(&behind), "behind", "reaching the head, it expired");
    long.acker.ack().await.unwrap();
    behind.acker.ack().await.unwrap();
    assert_eq!(f.count(&q).await, 0);

    // Without a dead-letter exchange, an expired message is dropped.
    let plain = f.queue("expiring-plain", json!({})).await;
    let mut gone = message("gone");
    gone.properties.expiration = Some("50".into());
    f.publish(&plain, &gone).await;
    f.wait_count(&plain, 0).await;

    consumer.cancel.close().await.unwrap();
    dead.cancel.close().await.unwrap();
    f.finish().await;
}

/// Asserts that a publish through the default exchange to `missing` (no
/// such queue) is unroutable.
async fn assert_default_exchange_unroutable(f: &Fixture, missing: &str) {
    match f.broker.publish("", missing, &message("x")).await {
        Err(BrokerError::Unroutable {
            exchange,
            routing_key,
        }) => assert_eq!((exchange.as_str(), routing_key.as_str()), ("", missing)),
        other => panic!("expected Unroutable, got {other:?}"),
    }
}

contract_test!(an_unroutable_publish_is_an_error);
async fn an_unroutable_publish_is_an_error(mut f: Fixture) {
    let missing = common::unique_queue("missing");
    if f.is_redis() {
        // Redis (as kombu): the default exchange pushes to the queue's
        // list whether or not anyone declared it; the message waits there.
        f.queues.push(missing.clone());
        f.broker
            .publish("", &missing, &message("x"))
            .await
            .expect("kept in its list");
        assert_eq!(f.count(&missing).await, 1);
    } else {
        assert_default_exchange_unroutable(&f, &missing).await;
    }

    let q = f.name("routed");
    let mut spec = f.spec(&q, json!({}));
    spec.same_name_exchange = Some(ExchangeKind::Direct);
    f.exchanges.push(q.clone());
    f.broker.declare_queue(&spec).await.unwrap();
    f.broker.publish(&q, &q, &message("routed")).await.unwrap();
    let error = f
        .broker
        .publish(&q, "another-key", &message("x"))
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::Unroutable { .. }), "{error}");
    assert_eq!(f.count(&q).await, 1);

    f.broker.delete_queue(&q).await.unwrap();
    let error = f.broker.publish(&q, &q, &message("x")).await.unwrap_err();
    assert!(
        matches!(error, BrokerError::Unroutable { .. }),
        "the exchange stays, its binding went with the queue: {error}"
    );
    // The broker goes on publishing after unroutable messages.
    let other = f.queue("after-unroutable", json!({})).await;
    f.publish(&other, &message("fine")).await;
    assert_eq!(f.count(&other).await, 1);
    f.finish().await;
}

contract_test!(invalid_publishes_fail_and_the_broker_goes_on);
async fn invalid_publishes_fail_and_the_broker_goes_on(mut f: Fixture) {
    let q = f.queue("invalid-publish", json!({})).await;
    let mut bad = message("x");
    bad.properties.expiration = Some("soon".into());
    assert!(f.broker.publish("", &q, &bad).await.is_err());
    let missing = common::unique_queue("no-exchange");
    assert!(f
        .broker
        .publish(&missing, "k", &message("x"))
        .await
        .is_err());
    f.publish(&q, &message("fine")).await;
    assert_eq!(f.count(&q).await, 1);
    f.finish().await;
}

contract_test!(names_and_text_properties_over_255_bytes_are_refused);
async fn names_and_text_properties_over_255_bytes_are_refused(mut f: Fixture) {
    let q = f.queue("too-long", json!({})).await;
    let long = "é".repeat(128);
    let too_long = |result: Result<(), BrokerError>| {
        matches!(result, Err(BrokerError::TooLong { len: 256, .. }))
    };
    let mut long_id = message("x");
    long_id.properties.correlation_id = Some(long.clone());
    assert!(too_long(f.broker.publish("", &q, &long_id).await));
    assert!(too_long(f.broker.publish("", &long, &message("x")).await));
    assert!(too_long(f.broker.publish(&long, &q, &message("x")).await));
    assert!(too_long(f.broker.publish_reply(&long, &message("x")).await));
    assert!(too_long(
        f.broker
            .declare_queue(&QueueSpec::task_queue(long.clone()))
            .await
    ));
    let consumed = f
        .broker
        .consume(std::slice::from_ref(&long), ConsumeOptions::manual_ack(1))
        .await;
    assert!(matches!(consumed, Err(BrokerError::TooLong { .. })));
    assert!(matches!(
        f.broker.queue_message_count(&long).await,
        Err(BrokerError::TooLong { .. })
    ));
    f.publish(&q, &message("fine")).await;
    assert_eq!(f.count(&q).await, 1);
    f.finish().await;
}

contract_test!(message_counts_are_ready_messages);
async fn message_counts_are_ready_messages(mut f: Fixture) {
    let q = f.queue("count", json!({})).await;
    assert_eq!(f.count(&q).await, 0);
    for text in ["a", "b", "c"] {
        f.publish(&q, &message(text)).await;
    }
    assert_eq!(f.count(&q).await, 3, "a confirmed publish is counted");
    let mut consumer = f.consume(&[&q], 1).await;
    let a = next(&mut consumer).await;
    assert_eq!(f.count(&q).await, 2, "a delivery in flight is not ready");
    consumer.cancel.cancel().await.unwrap();
    a.acker.ack().await.unwrap();
    assert_eq!(f.count(&q).await, 2);
    consumer.cancel.close().await.unwrap();
    assert_eq!(f.count(&q).await, 2);

    let error = f
        .broker
        .queue_message_count(&common::unique_queue("missing"))
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::Operation { .. }), "{error}");
    f.finish().await;
}

contract_test!(deleting_removes_queues_and_their_messages);
async fn deleting_removes_queues_and_their_messages(mut f: Fixture) {
    let q = f.queue("delete", json!({})).await;
    f.publish(&q, &message("a")).await;
    f.publish(&q, &message("b")).await;
    let mut consumer = f.consume(&[&q], 1).await;
    let a = next(&mut consumer).await;
    f.broker.delete_queue(&q).await.unwrap();
    ended(&mut consumer).await;
    drop(a);
    assert!(f.broker.queue_message_count(&q).await.is_err());
    if f.is_redis() {
        // The default exchange pushes to a list whoever declared it (as
        // kombu): a publish after the deletion is kept, in a new list.
        f.publish(&q, &message("x")).await;
        f.broker.delete_queue(&q).await.unwrap();
    } else {
        assert_default_exchange_unroutable(&f, &q).await;
    }

    // A new queue of the same name starts empty, with new arguments.
    let spec = f.spec(&q, json!({"x-max-priority": 3}));
    f.broker.declare_queue(&spec).await.unwrap();
    assert_eq!(f.count(&q).await, 0);

    f.broker.delete_queue(&q).await.unwrap();
    f.broker
        .delete_queue(&common::unique_queue("never"))
        .await
        .unwrap();
    f.broker
        .delete_exchange(&common::unique_queue("never"))
        .await
        .unwrap();
    f.finish().await;
}

contract_test!(consumers_of_one_queue_take_turns);
async fn consumers_of_one_queue_take_turns(mut f: Fixture) {
    let q = f.queue("turns", json!({})).await;
    let mut one = f.consume(&[&q], 1).await;
    let mut two = f.consume(&[&q], 1).await;
    f.publish(&q, &message("a")).await;
    f.publish(&q, &message("b")).await;
    let first = next(&mut one).await;
    let second = next(&mut two).await;
    if f.is_redis() {
        // Each consumer pops what it has room for: one message each, in
        // either order (no round robin among Redis consumers).
        let mut bodies = [body(&first), body(&second)];
        bodies.sort_unstable();
        assert_eq!(bodies, ["a", "b"]);
    } else {
        assert_eq!((body(&first), body(&second)), ("a", "b"));
    }
    first.acker.ack().await.unwrap();
    second.acker.ack().await.unwrap();
    one.cancel.close().await.unwrap();
    two.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(an_auto_delete_queue_goes_with_its_last_consumer);
async fn an_auto_delete_queue_goes_with_its_last_consumer(mut f: Fixture) {
    // As the app's reply queue is declared.
    let q = f.name("auto-delete");
    f.broker
        .declare_queue(&QueueSpec::reply_queue(q.clone()))
        .await
        .unwrap();
    f.publish(&q, &message("a")).await;
    let one = f.consume(&[&q], 0).await;
    let two = f.consume(&[&q], 0).await;
    one.cancel.cancel().await.unwrap();
    f.publish(&q, &message("still there")).await;
    two.cancel.cancel().await.unwrap();
    let started = Instant::now();
    while f.broker.queue_message_count(&q).await.is_ok() {
        assert!(started.elapsed() < WAIT, "the queue outlived its consumers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.finish().await;
}

contract_test!(a_delayed_publish_reaches_its_queue_when_due_and_not_before);
async fn a_delayed_publish_reaches_its_queue_when_due_and_not_before(mut f: Fixture) {
    let q = f.queue("delayed", json!({})).await;
    let mut consumer = f.consume(&[&q], 10).await;
    let sent = Instant::now();
    let mut later = message("later");
    later
        .properties
        .headers
        .insert_json("kept", &json!([1, "two"]));
    f.broker
        .publish_delayed(&q, &later, Duration::from_millis(700))
        .await
        .unwrap();
    f.broker
        .publish_delayed(&q, &message("sooner"), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(f.count(&q).await, 0, "nothing arrives at once");
    for (text, due) in [("sooner", 300), ("later", 700)] {
        let delivery = next(&mut consumer).await;
        let after = sent.elapsed();
        assert_eq!(body(&delivery), text);
        assert!(
            after >= Duration::from_millis(due),
            "{text} arrived early, after {after:?}"
        );
        assert!(
            after < Duration::from_millis(due + 3000),
            "{text} arrived late, after {after:?}"
        );
        if text == "later" {
            assert_eq!(
                delivery.message.properties.headers.to_json()["kept"],
                json!([1, "two"])
            );
        }
        delivery.acker.ack().await.unwrap();
    }
    consumer.cancel.close().await.unwrap();
    f.finish().await;
}

/// The ready messages of each queue, in order.
async fn counts(f: &Fixture, queues: &[&str]) -> Vec<u32> {
    let mut counts = Vec::with_capacity(queues.len());
    for queue in queues {
        counts.push(f.count(queue).await);
    }
    counts
}

/// Asserts that a publish to `exchange` with `key` reaches no queue.
async fn assert_unroutable(f: &Fixture, exchange: &str, key: &str) {
    match f.broker.publish(exchange, key, &message("nowhere")).await {
        Err(BrokerError::Unroutable { .. }) => {}
        other => panic!("{exchange} with key {key:?}: expected Unroutable, got {other:?}"),
    }
}

contract_test!(a_direct_exchange_routes_by_the_exact_key);
async fn a_direct_exchange_routes_by_the_exact_key(mut f: Fixture) {
    let exchange = f.exchange("direct", ExchangeKind::Direct).await;
    let q1 = f.queue("direct-1", json!({})).await;
    let q2 = f.queue("direct-2", json!({})).await;
    f.bind(&q1, &exchange, "a").await;
    f.bind(&q1, &exchange, "a").await; // idempotent
    f.bind(&q1, &exchange, "shared").await;
    f.bind(&q2, &exchange, "b").await;
    f.bind(&q2, &exchange, "shared").await;
    f.publish_to(&exchange, "a", "a").await;
    f.publish_to(&exchange, "b", "b").await;
    f.publish_to(&exchange, "shared", "both").await;
    assert_eq!(counts(&f, &[&q1, &q2]).await, [2, 2]);
    assert_unroutable(&f, &exchange, "a.b").await;
    assert_unroutable(&f, &exchange, "").await;

    f.broker.unbind_queue(&q1, &exchange, "a").await.unwrap();
    f.broker.unbind_queue(&q1, &exchange, "a").await.unwrap(); // none left: no error
    assert_unroutable(&f, &exchange, "a").await;

    let mut consumer = f.consume(&[&q1], 10).await;
    let first = next(&mut consumer).await;
    assert_eq!(
        (
            body(&first),
            first.exchange.as_str(),
            first.routing_key.as_str()
        ),
        ("a", exchange.as_str(), "a")
    );
    first.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(a_fanout_exchange_reaches_every_bound_queue_once_whatever_the_key);
async fn a_fanout_exchange_reaches_every_bound_queue_once_whatever_the_key(mut f: Fixture) {
    let exchange = f.exchange("fanout", ExchangeKind::Fanout).await;
    assert_unroutable(&f, &exchange, "x").await;
    if f.is_redis() {
        return redis_fanout_reaches_the_queues_consumed_now(f, exchange).await;
    }
    let q1 = f.queue("fanout-1", json!({})).await;
    let q2 = f.queue("fanout-2", json!({})).await;
    f.bind(&q1, &exchange, "").await;
    f.bind(&q1, &exchange, "other").await;
    f.bind(&q2, &exchange, "ignored").await;
    f.publish_to(&exchange, "", "one").await;
    f.publish_to(&exchange, "any.key", "two").await;
    assert_eq!(counts(&f, &[&q1, &q2]).await, [2, 2]);

    // Each binding goes on its own; the queue is reached while one is left.
    f.broker.unbind_queue(&q1, &exchange, "").await.unwrap();
    f.publish_to(&exchange, "k", "three").await;
    f.broker
        .unbind_queue(&q1, &exchange, "other")
        .await
        .unwrap();
    f.publish_to(&exchange, "k", "four").await;
    assert_eq!(counts(&f, &[&q1, &q2]).await, [3, 4]);
    f.finish().await;
}

contract_test!(a_topic_exchange_matches_star_and_hash_patterns);
async fn a_topic_exchange_matches_star_and_hash_patterns(mut f: Fixture) {
    let exchange = f.exchange("topic", ExchangeKind::Topic).await;
    let patterns = [
        "task.*",      // one word after `task`
        "task.#",      // `task` then any number of words
        "*.succeeded", // any one word, then `succeeded`
        "#",           // everything
        "a.#.z",       // `a`, anything, `z`
        "",            // only the empty key
    ];
    let mut queues = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let queue = f.queue(&format!("topic-{i}"), json!({})).await;
        f.bind(&queue, &exchange, pattern).await;
        queues.push(queue);
    }
    let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
    // (routing key, which patterns match it)
    let cases: [(&str, [u32; 6]); 7] = [
        ("task", [0, 1, 0, 1, 0, 0]),
        ("task.succeeded", [1, 1, 1, 1, 0, 0]),
        ("task.a.b", [0, 1, 0, 1, 0, 0]),
        ("worker.succeeded", [0, 0, 1, 1, 0, 0]),
        ("a.z", [0, 0, 0, 1, 1, 0]),
        ("a.b.c.z", [0, 0, 0, 1, 1, 0]),
        ("", [0, 0, 0, 1, 0, 1]),
    ];
    let mut expected = [0u32; 6];
    for (key, hits) in cases {
        f.publish_to(&exchange, key, key).await;
        for (total, hit) in expected.iter_mut().zip(hits) {
            *total += hit;
        }
        assert_eq!(counts(&f, &queues).await, expected, "after key {key:?}");
    }
    f.finish().await;
}

/// On Redis a fanout exchange is a pub/sub channel (kombu's layout): it
/// reaches each bound queue *being consumed* once, and nothing is kept for
/// a queue nobody consumes (with none consumed, a publish is unroutable).
async fn redis_fanout_reaches_the_queues_consumed_now(mut f: Fixture, exchange: String) {
    let q1 = f.queue("fanout-1", json!({})).await;
    let q2 = f.queue("fanout-2", json!({})).await;
    f.bind(&q1, &exchange, "").await;
    f.bind(&q2, &exchange, "").await;
    assert_unroutable(&f, &exchange, "").await;
    let mut one = f.consume(&[&q1], 10).await;
    let mut two = f.consume(&[&q2], 10).await;
    for text in ["one", "two"] {
        f.publish_to(&exchange, "", text).await;
    }
    for consumer in [&mut one, &mut two] {
        for expected in ["one", "two"] {
            let delivery = next(consumer).await;
            assert_eq!(body(&delivery), expected, "each once, in order");
            delivery.acker.ack().await.unwrap();
        }
    }
    assert_eq!(
        counts(&f, &[&q1, &q2]).await,
        [0, 0],
        "nothing in the lists"
    );
    one.cancel.close().await.unwrap();
    two.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(exchange_declarations_and_bindings_are_checked_with_reply_codes);
async fn exchange_declarations_and_bindings_are_checked_with_reply_codes(mut f: Fixture) {
    let name = f.exchange("checked", ExchangeKind::Direct).await;
    let spec = ExchangeSpec::direct(name.clone()).durable(false);
    f.broker.declare_exchange(&spec).await.unwrap();
    for different in [
        ExchangeSpec::fanout(name.clone()).durable(false),
        spec.clone().durable(true),
        spec.clone().auto_delete(true),
    ] {
        let error = f.broker.declare_exchange(&different).await.unwrap_err();
        assert_eq!(
            error.reply_code(),
            Some(ReplyCode::PreconditionFailed),
            "{error}"
        );
        assert!(error.is_precondition_failed());
    }
    for refused in ["", "amq.test-never"] {
        let error = f
            .broker
            .declare_exchange(&ExchangeSpec::direct(refused))
            .await
            .unwrap_err();
        assert!(error.is_access_refused(), "{refused:?}: {error}");
    }
    let q = f.queue("binding-checks", json!({})).await;
    let missing = common::unique_queue("missing");
    let error = f.broker.bind_queue(&q, &missing, "k").await.unwrap_err();
    assert!(error.is_not_found(), "missing exchange: {error}");
    let error = f.broker.bind_queue(&missing, &name, "k").await.unwrap_err();
    assert!(error.is_not_found(), "missing queue: {error}");
    let error = f.broker.bind_queue(&q, "", &q).await.unwrap_err();
    assert!(error.is_access_refused(), "default exchange: {error}");
    // Unbinding is idempotent, even from or of what does not exist.
    f.broker.unbind_queue(&q, &missing, "k").await.unwrap();
    f.broker.unbind_queue(&missing, &name, "k").await.unwrap();
    let error = f.broker.unbind_queue(&q, "", &q).await.unwrap_err();
    assert!(error.is_access_refused(), "default exchange: {error}");
    // A same-name exchange of another kind refuses the task queue.
    let clash = f.name("same-name-clash");
    f.exchanges.push(clash.clone());
    f.broker
        .declare_exchange(&ExchangeSpec::fanout(clash.clone()))
        .await
        .unwrap();
    let mut spec = f.spec(&clash, json!({}));
    spec.same_name_exchange = Some(ExchangeKind::Direct);
    let error = f.broker.declare_queue(&spec).await.unwrap_err();
    assert!(is_precondition_failed(&error), "{error}");
    // The broker goes on after refusals: the queue binds and is reached.
    f.bind(&q, &name, "k").await;
    f.publish_to(&name, "k", "m").await;
    assert_eq!(f.count(&q).await, 1);
    f.finish().await;
}

contract_test!(an_auto_delete_exchange_goes_with_its_last_binding);
async fn an_auto_delete_exchange_goes_with_its_last_binding(mut f: Fixture) {
    let q1 = f.queue("auto-delete-exchange-1", json!({})).await;
    let q2 = f.queue("auto-delete-exchange-2", json!({})).await;
    let exchange = f.exchange_name("auto-delete");
    let spec = ExchangeSpec::direct(exchange.clone())
        .durable(false)
        .auto_delete(true);
    f.broker.declare_exchange(&spec).await.unwrap();
    // Unused from the start, it stays until it had a binding.
    f.bind(&q1, &exchange, "").await;
    f.bind(&q2, &exchange, "").await;
    f.broker.unbind_queue(&q1, &exchange, "").await.unwrap();
    f.publish_to(&exchange, "", "still there").await;
    // Its last binding goes with its queue.
    f.broker.delete_queue(&q2).await.unwrap();
    let error = f.broker.bind_queue(&q1, &exchange, "").await.unwrap_err();
    assert!(
        error.is_not_found(),
        "the exchange outlived its bindings: {error}"
    );
    f.finish().await;
}

contract_test!(a_server_named_queue_is_exclusive_to_its_connection);
async fn a_server_named_queue_is_exclusive_to_its_connection(f: Fixture) {
    let owner = f.another_connection().await;
    let name = owner
        .declare_server_named_queue(&QueueSpec::server_named())
        .await
        .unwrap();
    assert!(name.starts_with("amq.gen-"), "{name}");
    let error = owner
        .declare_server_named_queue(&QueueSpec::task_queue("named"))
        .await
        .unwrap_err();
    assert_eq!(error.reply_code(), None, "refused before sending: {error}");

    // Other connections may publish to it, but not consume, count or
    // delete it.
    f.publish(&name, &message("from another connection")).await;
    let consumed = f
        .broker
        .consume(std::slice::from_ref(&name), ConsumeOptions::manual_ack(1))
        .await;
    assert!(
        matches!(&consumed, Err(error) if error.is_resource_locked()),
        "consumed another connection's exclusive queue: {:?}",
        consumed.err()
    );
    let error = f.broker.queue_message_count(&name).await.unwrap_err();
    assert!(error.is_resource_locked(), "{error}");
    let error = f.broker.delete_queue(&name).await.unwrap_err();
    assert!(error.is_resource_locked(), "{error}");

    // Its owner binds it to a fanout exchange, as a broadcast consumer does.
    let exchange = common::unique_queue("exchange.server-named");
    owner
        .declare_exchange(&ExchangeSpec::fanout(exchange.clone()).durable(false))
        .await
        .unwrap();
    let error = f.broker.bind_queue(&name, &exchange, "").await.unwrap_err();
    assert!(error.is_resource_locked(), "{error}");
    owner.bind_queue(&name, &exchange, "").await.unwrap();
    let error = f
        .broker
        .unbind_queue(&name, &exchange, "")
        .await
        .unwrap_err();
    assert!(error.is_resource_locked(), "{error}");
    owner.bind_queue(&name, &exchange, "").await.unwrap();
    let expected: &[&str] = if f.is_redis() {
        // A queue bound to a fanout exchange is consumed from its pub/sub
        // channel (kombu's layout): only what is published while it is
        // consumed reaches it, and not its list.
        &["through the fanout"]
    } else {
        f.publish_to(&exchange, "", "through the fanout").await;
        &["from another connection", "through the fanout"]
    };
    let mut consumer = owner
        .consume(std::slice::from_ref(&name), ConsumeOptions::manual_ack(10))
        .await
        .unwrap();
    if f.is_redis() {
        f.publish_to(&exchange, "", "through the fanout").await;
    }
    for &expected in expected {
        let delivery = next(&mut consumer).await;
        assert_eq!(body(&delivery), expected);
        delivery.acker.ack().await.unwrap();
    }

    // It goes with its connection.
    owner.close().await.unwrap();
    let started = Instant::now();
    loop {
        match f.broker.queue_message_count(&name).await {
            Err(error) if error.is_not_found() => break,
            other => {
                assert!(
                    started.elapsed() < WAIT,
                    "the queue outlived its connection: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    f.broker.delete_exchange(&exchange).await.unwrap();
    f.finish().await;
}

contract_test!(refusals_carry_the_same_reply_codes);
async fn refusals_carry_the_same_reply_codes(mut f: Fixture) {
    let missing = common::unique_queue("missing");
    let consumed = f
        .broker
        .consume(
            std::slice::from_ref(&missing),
            ConsumeOptions::manual_ack(1),
        )
        .await;
    assert!(
        matches!(&consumed, Err(e) if e.is_not_found()),
        "{:?}",
        consumed.err()
    );
    let error = f.broker.queue_message_count(&missing).await.unwrap_err();
    assert!(error.is_not_found(), "{error}");
    let error = f
        .broker
        .declare_queue(&f.spec("amq.test-reserved", json!({})))
        .await
        .unwrap_err();
    assert!(error.is_access_refused(), "{error}");
    let error = f.broker.delete_exchange("").await.unwrap_err();
    assert!(error.is_access_refused(), "{error}");
    // A refused publish (RabbitMQ closes the publishing channel) leaves the
    // connection as it is: its exclusive queue stays usable.
    let mine = f
        .broker
        .declare_server_named_queue(&QueueSpec::server_named())
        .await
        .unwrap();
    let error = f
        .broker
        .publish(&missing, "k", &message("x"))
        .await
        .unwrap_err();
    assert!(
        error.is_not_found(),
        "publish to a missing exchange: {error}"
    );
    let mut invalid = message("x");
    invalid.properties.expiration = Some("soon".into());
    let error = f.broker.publish("", &mine, &invalid).await.unwrap_err();
    assert!(
        error.is_precondition_failed(),
        "invalid expiration: {error}"
    );
    f.publish(&mine, &message("after the refusals")).await;
    assert_eq!(f.count(&mine).await, 1, "the connection was replaced");
    let error = f
        .broker
        .declare_queue(&QueueSpec::server_named())
        .await
        .unwrap_err();
    assert_eq!(error.reply_code(), None, "refused before sending: {error}");

    // Settling twice is refused by the client, without a code.
    let q = f.queue("codes", json!({})).await;
    f.publish(&q, &message("a")).await;
    let mut consumer = f.consume(&[&q], 1).await;
    let a = next(&mut consumer).await;
    a.acker.ack().await.unwrap();
    let error = a.acker.ack().await.unwrap_err();
    assert_eq!(error.reply_code(), None, "{error}");
    consumer.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(a_delayed_message_due_while_its_queue_was_deleted_arrives_once_it_is_back);
/// RabbitMQ drops the delayed-delivery binding with a deleted queue, and a
/// queue declared again by another connection does not get it back: what
/// comes due meanwhile is kept for it (the delivery exchange's alternate
/// exchange) and moved to it by `redeliver_unrouted`, never lost.
async fn a_delayed_message_due_while_its_queue_was_deleted_arrives_once_it_is_back(mut f: Fixture) {
    let q = f.queue("unrouted-delay", json!({})).await;
    f.broker
        .publish_delayed(
            &q,
            &message("kept for its queue"),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    f.broker.delete_queue(&q).await.unwrap();
    let other = f.another_connection().await;
    other.declare_queue(&f.spec(&q, json!({}))).await.unwrap();
    let started = Instant::now();
    while f.count(&q).await == 0 {
        assert!(
            started.elapsed() < WAIT,
            "the delayed message never arrived"
        );
        f.broker.redeliver_unrouted().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut consumer = f.consume(&[&q], 10).await;
    let delivery = next(&mut consumer).await;
    assert_eq!(body(&delivery), "kept for its queue");
    delivery.acker.ack().await.unwrap();
    assert_eq!(f.count(&q).await, 0, "delivered once");
    consumer.cancel.close().await.unwrap();
    let _ = other.close().await;
    f.finish().await;
}

/// A quorum test queue (expiring on RabbitMQ) with these extra arguments.
fn quorum_spec(f: &Fixture, name: &str, arguments: Value) -> QueueSpec {
    f.spec(name, arguments).quorum()
}

/// The `x-delivery-count` header a quorum queue sets on a redelivery.
fn delivery_count(delivery: &Delivery) -> Option<&HeaderValue> {
    delivery.message.properties.headers.get("x-delivery-count")
}

contract_test!(a_quorum_queue_redeclares_equivalently_and_compares_its_arguments);
/// As RabbitMQ 3.10 compares a quorum queue's arguments: its type, and
/// `x-delivery-limit` and `x-dead-letter-strategy` like the others.
async fn a_quorum_queue_redeclares_equivalently_and_compares_its_arguments(mut f: Fixture) {
    let q = f.name("quorum-declare");
    let spec = quorum_spec(&f, &q, json!({}));
    assert!(spec.is_quorum());
    f.broker.declare_queue(&spec).await.unwrap();
    f.publish(&q, &message("kept")).await;
    f.broker.declare_queue(&spec).await.unwrap();
    assert_eq!(f.count(&q).await, 1, "a re-declaration keeps the messages");
    // Arguments RabbitMQ does not compare are not compared.
    let mut custom = spec.clone();
    custom.arguments.insert("x-custom".into(), json!(1));
    f.broker.declare_queue(&custom).await.unwrap();

    let with = |key: &str, value: Value| {
        let mut different = spec.clone();
        different.arguments.insert(key.into(), value);
        different
    };
    for different in [
        with("x-delivery-limit", json!(3)),
        with("x-dead-letter-strategy", json!("at-least-once")),
        with("x-overflow", json!("reject-publish")),
        with("x-max-length", json!(5)),
    ] {
        let error = f.broker.declare_queue(&different).await.unwrap_err();
        assert!(is_precondition_failed(&error), "{error}");
    }

    let limited = f.name("quorum-declare-limited");
    let arguments = json!({
        "x-delivery-limit": 3,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    });
    let spec = quorum_spec(&f, &limited, arguments);
    f.broker.declare_queue(&spec).await.unwrap();
    f.broker.declare_queue(&spec).await.unwrap();
    let without = |key: &str| {
        let mut different = spec.clone();
        different.arguments.remove(key);
        different
    };
    let mut other_limit = spec.clone();
    other_limit
        .arguments
        .insert("x-delivery-limit".into(), json!(4));
    let mut other_strategy = spec.clone();
    other_strategy
        .arguments
        .insert("x-dead-letter-strategy".into(), json!("at-most-once"));
    for different in [
        other_limit,
        other_strategy,
        without("x-delivery-limit"),
        without("x-dead-letter-strategy"),
    ] {
        let error = f.broker.declare_queue(&different).await.unwrap_err();
        assert!(is_precondition_failed(&error), "{error}");
    }
    assert_eq!(f.count(&q).await, 1);
    f.finish().await;
}

contract_test!(classic_and_quorum_redeclarations_refuse_each_other);
/// A queue's type is fixed: a classic queue is refused as quorum and a
/// quorum queue as classic (406), with or without `x-queue-type: classic`,
/// which means the same as no type.
async fn classic_and_quorum_redeclarations_refuse_each_other(mut f: Fixture) {
    let classic = f.name("classic-not-quorum");
    let classic_spec = f.spec(&classic, json!({}));
    f.broker.declare_queue(&classic_spec).await.unwrap();
    let error = f
        .broker
        .declare_queue(&classic_spec.clone().quorum())
        .await
        .unwrap_err();
    assert!(is_precondition_failed(&error), "{error}");
    let explicit = f.spec(&classic, json!({"x-queue-type": "classic"}));
    f.broker.declare_queue(&explicit).await.unwrap();

    let quorum = f.name("quorum-not-classic");
    f.broker
        .declare_queue(&quorum_spec(&f, &quorum, json!({})))
        .await
        .unwrap();
    for different in [
        f.spec(&quorum, json!({})),
        f.spec(&quorum, json!({"x-queue-type": "classic"})),
    ] {
        let error = f.broker.declare_queue(&different).await.unwrap_err();
        assert!(is_precondition_failed(&error), "{error}");
    }
    let unknown = f.name("unknown-type");
    let error = f
        .broker
        .declare_queue(&f.spec(&unknown, json!({"x-queue-type": "bogus"})))
        .await
        .unwrap_err();
    assert!(is_precondition_failed(&error), "{error}");
    f.finish().await;
}

contract_test!(arguments_of_the_other_queue_type_are_refused);
/// What a quorum queue cannot have: `x-max-priority` or a non-durable
/// declaration, refused by the client before RabbitMQ does (no reply code);
/// `x-queue-mode`, refused by RabbitMQ (406). And a classic queue has no
/// `x-delivery-limit` nor `x-dead-letter-strategy` (406).
async fn arguments_of_the_other_queue_type_are_refused(mut f: Fixture) {
    let q = f.name("quorum-refusals");
    let mut not_durable = quorum_spec(&f, &q, json!({}));
    not_durable.durable = false;
    for refused in [quorum_spec(&f, &q, json!({})).max_priority(5), not_durable] {
        let error = f.broker.declare_queue(&refused).await.unwrap_err();
        assert!(
            matches!(
                &error,
                BrokerError::Operation {
                    operation: "queue.declare",
                    reply_code: None,
                    ..
                }
            ),
            "refused before sending: {error}"
        );
    }
    let error = f
        .broker
        .declare_queue(&quorum_spec(&f, &q, json!({"x-queue-mode": "lazy"})))
        .await
        .unwrap_err();
    assert!(is_precondition_failed(&error), "{error}");
    for arguments in [
        json!({"x-delivery-limit": 3}),
        json!({"x-dead-letter-strategy": "at-most-once"}),
    ] {
        let error = f
            .broker
            .declare_queue(&f.spec(&q, arguments))
            .await
            .unwrap_err();
        assert!(is_precondition_failed(&error), "{error}");
    }
    // Nothing was declared.
    let error = f.broker.queue_message_count(&q).await.unwrap_err();
    assert!(error.is_not_found(), "{error}");
    f.queues.retain(|queue| *queue != q);
    f.finish().await;
}

contract_test!(a_message_rejected_past_the_delivery_limit_is_dead_lettered);
/// RabbitMQ 3.10's rule: a message returned to its quorum queue more than
/// `x-delivery-limit` times is dead-lettered instead (so it is delivered
/// limit + 1 times), with the reason `delivery_limit`; each redelivery
/// carries `x-delivery-count`, the returns so far.
async fn a_message_rejected_past_the_delivery_limit_is_dead_lettered(mut f: Fixture) {
    const LIMIT: i64 = 2;
    let dlx = f.exchange("delivery-limit-dlx", ExchangeKind::Fanout).await;
    let target = f.queue("delivery-limit-target", json!({})).await;
    f.bind(&target, &dlx, "").await;
    let q = f.name("delivery-limit");
    let arguments = json!({"x-delivery-limit": LIMIT, "x-dead-letter-exchange": dlx});
    f.broker
        .declare_queue(&quorum_spec(&f, &q, arguments))
        .await
        .unwrap();
    let mut sent = message("poison");
    sent.properties.headers.insert_json("kept", &json!(1));
    f.publish(&q, &sent).await;

    let mut consumer = f.consume(&[&q], 1).await;
    if f.is_redis() {
        return redis_counts_no_deliveries(f, consumer, LIMIT).await;
    }
    for returns in 0..=LIMIT {
        let delivery = next(&mut consumer).await;
        assert_eq!(body(&delivery), "poison");
        assert_eq!(delivery.redelivered, returns > 0);
        let expected = (returns > 0).then_some(HeaderValue::LongLongInt(returns));
        assert_eq!(delivery_count(&delivery), expected.as_ref(), "{returns}");
        delivery.acker.reject(true).await.unwrap();
    }
    let mut dead = f.consume(&[&target], 1).await;
    let poison = next(&mut dead).await;
    assert_eq!(body(&poison), "poison");
    assert_eq!(delivery_count(&poison), None, "on deliveries only");
    let headers = poison.message.properties.headers.to_json();
    assert_eq!(headers["kept"], 1);
    let death = &headers["x-death"][0];
    assert_eq!(
        (
            &death["reason"],
            &death["queue"],
            &death["count"],
            &death["exchange"]
        ),
        (&json!("delivery_limit"), &json!(q), &json!(1), &json!(""))
    );
    assert_eq!(death["routing-keys"], json!([q]));
    assert_eq!(headers["x-first-death-reason"], "delivery_limit");
    assert_eq!(headers["x-first-death-queue"], q.as_str());
    poison.acker.ack().await.unwrap();

    // Never delivered again: the next delivery is the next message.
    f.publish(&q, &message("next")).await;
    let after = next(&mut consumer).await;
    assert_eq!((body(&after), after.redelivered), ("next", false));
    after.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    dead.cancel.close().await.unwrap();
    f.finish().await;
}

/// Redis counts no deliveries (kombu neither): `x-delivery-limit` is
/// accepted and compared, not applied, and no `x-delivery-count` is set; a
/// message returned past the limit is delivered again. (The worker's own
/// dead-lettering of poison messages works the same on every broker.)
async fn redis_counts_no_deliveries(f: Fixture, mut consumer: Consumer, limit: i64) {
    for returns in 0..=limit + 1 {
        let delivery = next(&mut consumer).await;
        assert_eq!(body(&delivery), "poison");
        assert_eq!(delivery.redelivered, returns > 0);
        assert_eq!(delivery_count(&delivery), None);
        if returns > limit {
            delivery.acker.ack().await.unwrap();
        } else {
            delivery.acker.reject(true).await.unwrap();
        }
    }
    consumer.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(a_message_left_unacked_past_the_delivery_limit_is_dropped_without_a_dlx);
/// A consumer that goes without settling returns its messages as a reject
/// with requeue does, counted against the delivery limit; past it, a queue
/// without a dead-letter exchange drops the message.
async fn a_message_left_unacked_past_the_delivery_limit_is_dropped_without_a_dlx(mut f: Fixture) {
    let q = f.name("delivery-limit-close");
    f.broker
        .declare_queue(&quorum_spec(&f, &q, json!({"x-delivery-limit": 1})))
        .await
        .unwrap();
    f.publish(&q, &message("poison")).await;
    if f.is_redis() {
        let consumer = f.consume(&[&q], 1).await;
        return redis_counts_no_deliveries(f, consumer, 1).await;
    }
    for returns in 0..=1_i64 {
        let mut consumer = f.consume(&[&q], 1).await;
        let delivery = next(&mut consumer).await;
        assert_eq!(body(&delivery), "poison");
        let expected = (returns > 0).then_some(HeaderValue::LongLongInt(returns));
        assert_eq!(delivery_count(&delivery), expected.as_ref());
        consumer.cancel.close().await.unwrap();
    }
    f.publish(&q, &message("next")).await;
    let mut consumer = f.consume(&[&q], 1).await;
    let after = next(&mut consumer).await;
    assert_eq!((body(&after), after.redelivered), ("next", false));
    after.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();
    assert_eq!(f.count(&q).await, 0);
    f.finish().await;
}

/// Publishes `text` to `queue`, expecting the broker's `nack`.
async fn assert_nacked(f: &Fixture, queue: &str, text: &str) {
    match f.broker.publish("", queue, &message(text)).await {
        Err(BrokerError::Nacked { routing_key }) => assert_eq!(routing_key, queue),
        other => panic!("{text}: expected Nacked, got {other:?}"),
    }
}

contract_test!(a_full_reject_publish_queue_nacks_publishes);
/// `x-overflow: reject-publish`: a classic queue refuses (confirm `nack`)
/// a message that would take it over `x-max-length`. A quorum queue
/// (RabbitMQ 3.10) takes the message that takes it over, refuses the next
/// ones, and takes them again once back under 80% of the limit.
async fn a_full_reject_publish_queue_nacks_publishes(mut f: Fixture) {
    let limits = json!({"x-overflow": "reject-publish", "x-max-length": 1});
    let classic = f.queue("reject-publish", limits.clone()).await;
    f.publish(&classic, &message("a")).await;
    if f.is_redis() {
        // Redis refuses no publish: a reject-publish queue keeps what goes
        // over its limit (never drops it, as drop-head would).
        f.publish(&classic, &message("b")).await;
        assert_eq!(f.count(&classic).await, 2);
        f.finish().await;
        return;
    }
    assert_nacked(&f, &classic, "b").await;
    assert_eq!(f.count(&classic).await, 1);
    let mut consumer = f.consume(&[&classic], 1).await;
    let a = next(&mut consumer).await;
    // Delivered (even unacked), it leaves room; `c` waits behind it.
    f.publish(&classic, &message("c")).await;
    assert_nacked(&f, &classic, "d").await;
    a.acker.ack().await.unwrap();
    let c = next(&mut consumer).await;
    assert_eq!(body(&c), "c");
    c.acker.ack().await.unwrap();
    consumer.cancel.close().await.unwrap();

    let quorum = f.name("reject-publish-quorum");
    f.broker
        .declare_queue(&quorum_spec(&f, &quorum, limits))
        .await
        .unwrap();
    f.publish(&quorum, &message("a")).await;
    f.publish(&quorum, &message("b")).await;
    assert_nacked(&f, &quorum, "c").await;
    assert_eq!(f.count(&quorum).await, 2);
    let mut consumer = f.consume(&[&quorum], 10).await;
    for expected in ["a", "b"] {
        let delivery = next(&mut consumer).await;
        assert_eq!(body(&delivery), expected);
        delivery.acker.ack().await.unwrap();
    }
    f.publish(&quorum, &message("e")).await;
    assert_eq!(body(&next(&mut consumer).await), "e");
    consumer.cancel.close().await.unwrap();
    f.finish().await;
}

contract_test!(one_prefetch_window_over_a_quorum_queue_and_another_is_not_implemented);
/// One prefetch window over several queues is RabbitMQ's global QoS, which
/// quorum queues refuse (540 `NOT_IMPLEMENTED`, verified with a plain AMQP
/// client on RabbitMQ 3.10: `basic.qos(global)` then `basic.consume` of a
/// quorum queue, with or without acks).
async fn one_prefetch_window_over_a_quorum_queue_and_another_is_not_implemented(mut f: Fixture) {
    let classic = f.queue("global-qos-classic", json!({})).await;
    let quorum = f.name("global-qos-quorum");
    f.broker
        .declare_queue(&quorum_spec(&f, &quorum, json!({})))
        .await
        .unwrap();
    let queues = [classic.clone(), quorum.clone()];
    if f.is_redis() {
        // Redis has no such limit: one window over both.
        let consumer = f
            .broker
            .consume(&queues, ConsumeOptions::manual_ack(2))
            .await
            .unwrap();
        consumer.cancel.close().await.unwrap();
        f.finish().await;
        return;
    }
    for options in [
        ConsumeOptions::manual_ack(2),
        ConsumeOptions {
            prefetch: 2,
            ..ConsumeOptions::no_ack()
        },
    ] {
        let refused = f
            .broker
            .consume(&queues, options)
            .await
            .err()
            .expect("refused");
        assert_eq!(
            refused.reply_code(),
            Some(ReplyCode::NotImplemented),
            "{refused}"
        );
    }
    // Without a window, or with one per queue, it is no global QoS.
    for options in [
        ConsumeOptions::manual_ack(0),
        ConsumeOptions::manual_ack(2).with_prefetch_per_queue(true),
    ] {
        let consumer = f.broker.consume(&queues, options).await.unwrap();
        consumer.cancel.close().await.unwrap();
    }
    f.finish().await;
}

contract_test!(a_per_queue_prefetch_gives_each_queue_its_own_window);
/// With `prefetch_per_queue`, each queue of a consumer has a window of its
/// own (RabbitMQ's per-consumer QoS), as a consumer of quorum queues needs.
async fn a_per_queue_prefetch_gives_each_queue_its_own_window(mut f: Fixture) {
    let classic = f.queue("per-queue-classic", json!({})).await;
    let quorum = f.name("per-queue-quorum");
    f.broker
        .declare_queue(&quorum_spec(&f, &quorum, json!({})))
        .await
        .unwrap();
    let queues = [classic.clone(), quorum.clone()];
    for i in 0..3 {
        f.publish(&classic, &message(&format!("classic-{i}"))).await;
        f.publish(&quorum, &message(&format!("quorum-{i}"))).await;
    }
    let options = ConsumeOptions::manual_ack(2).with_prefetch_per_queue(true);
    let mut consumer = f.broker.consume(&queues, options).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(next(&mut consumer).await);
    }
    let from = |held: &[Delivery], queue: &str| held.iter().filter(|d| d.queue == queue).count();
    assert_eq!(
        (from(&held, &classic), from(&held, &quorum)),
        (2, 2),
        "two from each"
    );
    assert_eq!(f.count(&classic).await + f.count(&quorum).await, 2);
    // An ack frees room in its own queue's window only.
    let index = held.iter().position(|d| d.queue == quorum).unwrap();
    held.remove(index).acker.ack().await.unwrap();
    let third = next(&mut consumer).await;
    assert_eq!(body(&third), "quorum-2");
    assert_eq!(f.count(&classic).await, 1);
    held.push(third);
    for delivery in held {
        delivery.acker.ack().await.unwrap();
    }
    consumer.cancel.close().await.unwrap();
    f.finish().await;
}
