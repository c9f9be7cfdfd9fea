//! The Redis broker on the real Redis (`$TEST_REDIS_URL`): kombu's layout
//! (lists per priority step, `unacked` / `unacked_index`, binding sets),
//! late acks, visibility restore and renewal, delays kept in Redis,
//! fanout over pub/sub, and a Rust worker and client on `redis://`. Each
//! test works under a key prefix of its own (kombu's `global_keyprefix`)
//! and deletes its keys at the end.

mod common;
#[path = "common/redis_keys.rs"]
mod redis_keys;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use task_core::broker::redis::{RedisBroker, RedisBrokerOptions};
use task_core::broker::{Broker, ConsumeOptions, Delivery, ExchangeSpec, Message, QueueSpec};

use common::RESULT_TIMEOUT;

/// A prefix of the test's own, for every key it makes.
fn prefix(label: &str) -> String {
    format!("t.{label}.{}:", uuid::Uuid::new_v4().simple())
}

async fn broker(prefix: &str, visibility: Duration) -> RedisBroker {
    RedisBroker::connect_with(
        &common::redis_url(),
        RedisBrokerOptions::default()
            .key_prefix(prefix)
            .visibility_timeout(visibility),
    )
    .await
    .expect("redis broker connects")
}

/// A raw command on the shared Redis.
async fn raw<T: redis::FromRedisValue>(args: &[&str]) -> T {
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query_async(&mut connection).await.unwrap()
}

fn text(body: &str, priority: Option<u8>) -> Message {
    let mut message = Message {
        body: body.as_bytes().to_vec(),
        ..Message::default()
    };
    message.properties.content_type = Some("text/plain".into());
    message.properties.priority = priority;
    message.properties.persistent = true;
    message
}

async fn next(deliveries: &mut task_core::broker::DeliveryStream) -> Delivery {
    tokio::time::timeout(RESULT_TIMEOUT, deliveries.next())
        .await
        .expect("a delivery comes")
        .expect("the stream goes on")
        .expect("no consume error")
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8(delivery.message.body.clone()).unwrap()
}

#[tokio::test]
async fn a_message_is_in_unacked_until_acked_and_its_lists_are_kombus() {
    let prefix = prefix("ack");
    let broker = broker(&prefix, Duration::from_secs(3600)).await;
    broker
        .declare_queue(&QueueSpec::task_queue("q"))
        .await
        .unwrap();
    broker.publish("", "q", &text("one", None)).await.unwrap();
    broker
        .publish("", "q", &text("urgent", Some(9)))
        .await
        .unwrap();
    // kombu's lists: the base one, and the `\x06\x169` step.
    let lens: (u64, u64) = (
        raw(&["LLEN", &format!("{prefix}q")]).await,
        raw(&["LLEN", &format!("{prefix}q\x06\x169")]).await,
    );
    assert_eq!(lens, (1, 1));
    let members: Vec<String> = raw(&["SMEMBERS", &format!("{prefix}_kombu.binding.q")]).await;
    assert_eq!(members, ["q\x06\x16\x06\x16q"]);

    let mut consumer = broker
        .consume(&["q".to_owned()], ConsumeOptions::manual_ack(10))
        .await
        .unwrap();
    // As in Celery on Redis, the lower priority number comes first.
    let first = next(&mut consumer.deliveries).await;
    let second = next(&mut consumer.deliveries).await;
    assert_eq!(
        (body(&first), body(&second)),
        ("one".into(), "urgent".into())
    );
    assert_eq!(
        first.message.properties.content_type.as_deref(),
        Some("text/plain")
    );
    assert_eq!(broker.unacked_count().await.unwrap(), 2);
    first.acker.ack().await.unwrap();
    second.acker.ack().await.unwrap();
    assert_eq!(broker.unacked_count().await.unwrap(), 0);
    let index: u64 = raw(&["ZCARD", &format!("{prefix}unacked_index")]).await;
    assert_eq!(index, 0);
    consumer.cancel.cancel().await.unwrap();
    redis_keys::delete_redis_keys(&prefix).await;
}

#[tokio::test]
async fn an_unacked_message_of_a_dead_consumer_comes_back_after_the_visibility_timeout() {
    let prefix = prefix("restore");
    let visibility = Duration::from_millis(600);
    let dead = broker(&prefix, visibility).await;
    dead.declare_queue(&QueueSpec::task_queue("q"))
        .await
        .unwrap();
    dead.publish("", "q", &text("lost?", None)).await.unwrap();
    let mut consumer = dead
        .consume(&["q".to_owned()], ConsumeOptions::manual_ack(1))
        .await
        .unwrap();
    let delivery = next(&mut consumer.deliveries).await;
    assert!(!delivery.redelivered);
    // The consumer's process "dies": nothing renews its message any more.
    dead.close().await.unwrap();
    std::mem::forget(delivery);
    std::mem::forget(consumer);

    let alive = broker(&prefix, visibility).await;
    let mut consumer = alive
        .consume(&["q".to_owned()], ConsumeOptions::manual_ack(1))
        .await
        .unwrap();
    let started = Instant::now();
    let again = next(&mut consumer.deliveries).await;
    assert_eq!(body(&again), "lost?");
    assert!(again.redelivered);
    assert!(
        started.elapsed() >= visibility / 2,
        "not before the timeout"
    );
    again.acker.ack().await.unwrap();
    assert_eq!(alive.unacked_count().await.unwrap(), 0);
    consumer.cancel.cancel().await.unwrap();
    redis_keys::delete_redis_keys(&prefix).await;
}

#[tokio::test]
async fn a_message_held_longer_than_the_visibility_timeout_is_not_restored() {
    let prefix = prefix("renew");
    let visibility = Duration::from_millis(500);
    let holder = broker(&prefix, visibility).await;
    holder
        .declare_queue(&QueueSpec::task_queue("q"))
        .await
        .unwrap();
    holder
        .publish("", "q", &text("long task", None))
        .await
        .unwrap();
    let mut consumer = holder
        .consume(&["q".to_owned()], ConsumeOptions::manual_ack(1))
        .await
        .unwrap();
    let delivery = next(&mut consumer.deliveries).await;
    // Another process restores what is stale, again and again, for six
    // visibility timeouts: the holder renews its message each time.
    let restorer = broker(&prefix, visibility).await;
    let until = Instant::now() + visibility * 6;
    while Instant::now() < until {
        assert_eq!(restorer.restore_visible().await.unwrap(), 0);
        tokio::time::sleep(visibility / 5).await;
    }
    assert_eq!(restorer.queue_message_count("q").await.unwrap(), 0);
    delivery.acker.ack().await.unwrap();
    consumer.cancel.cancel().await.unwrap();
    redis_keys::delete_redis_keys(&prefix).await;
}

#[tokio::test]
async fn a_rejected_message_is_requeued_or_dropped_and_close_gives_back_the_rest() {
    let prefix = prefix("reject");
    let broker = broker(&prefix, Duration::from_secs(3600)).await;
    for body in ["a", "b", "c"] {
        broker.publish("", "q", &text(body, None)).await.unwrap();
    }
    let mut consumer = broker
        .consume(&["q".to_owned()], ConsumeOptions::manual_ack(3))
        .await
        .unwrap();
    let a = next(&mut consumer.deliveries).await;
    let b = next(&mut consumer.deliveries).await;
    let c = next(&mut consumer.deliveries).await;
    a.acker.reject(true).await.unwrap();
    let again = next(&mut consumer.deliveries).await;
    assert_eq!(body(&again), "a");
    assert!(again.redelivered);
    b.acker.reject(false).await.unwrap();
    // Closing the consumer gives back what it holds (c and a).
    consumer.cancel.close().await.unwrap();
    drop((c, again));
    assert_eq!(broker.queue_message_count("q").await.unwrap(), 2);
    assert_eq!(broker.unacked_count().await.unwrap(), 0);
    redis_keys::delete_redis_keys(&prefix).await;
}

#[tokio::test]
async fn a_delayed_message_waits_in_redis_until_due() {
    let prefix = prefix("delay");
    let broker = broker(&prefix, Duration::from_secs(3600)).await;
    broker
        .declare_queue(&QueueSpec::task_queue("q"))
        .await
        .unwrap();
    let delay = Duration::from_millis(700);
    let sent = Instant::now();
    broker
        .publish_delayed("q", &text("later", Some(3)), delay)
        .await
        .unwrap();
    assert_eq!(broker.delayed_count().await.unwrap(), 1);
    assert_eq!(broker.queue_message_count("q").await.unwrap(), 0);
    let mut consumer = broker
        .consume(&["q".to_owned()], ConsumeOptions::manual_ack(1))
        .await
        .unwrap();
    let delivery = next(&mut consumer.deliveries).await;
    assert!(sent.elapsed() >= delay, "not before it is due");
    assert_eq!(body(&delivery), "later");
    assert_eq!(delivery.message.properties.priority, Some(3));
    assert_eq!(broker.delayed_count().await.unwrap(), 0);
    delivery.acker.ack().await.unwrap();
    consumer.cancel.cancel().await.unwrap();
    redis_keys::delete_redis_keys(&prefix).await;
}

#[tokio::test]
async fn a_fanout_exchange_broadcasts_over_pub_sub() {
    let prefix = prefix("fanout");
    let broker = broker(&prefix, Duration::from_secs(3600)).await;
    broker
        .declare_exchange(&ExchangeSpec::fanout("bcast"))
        .await
        .unwrap();
    let mut consumers = Vec::new();
    for queue in ["one", "two"] {
        broker
            .declare_queue(&QueueSpec::server_named().tap_name(queue))
            .await
            .unwrap();
        broker.bind_queue(queue, "bcast", "").await.unwrap();
        consumers.push(
            broker
                .consume(&[queue.to_owned()], ConsumeOptions::no_ack())
                .await
                .unwrap(),
        );
    }
    // A second process (no local knowledge of the exchange) publishes.
    let publisher = self::broker(&prefix, Duration::from_secs(3600)).await;
    publisher
        .publish("bcast", "", &text("hello all", None))
        .await
        .unwrap();
    for consumer in &mut consumers {
        let delivery = next(&mut consumer.deliveries).await;
        assert_eq!(body(&delivery), "hello all");
    }
    // Nobody listening: unroutable when mandatory, fine when transient.
    for consumer in consumers {
        consumer.cancel.cancel().await.unwrap();
    }
    redis_keys::delete_redis_keys(&prefix).await;
}

trait TapName {
    fn tap_name(self, name: &str) -> Self;
}

impl TapName for QueueSpec {
    fn tap_name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }
}

/// An app on the shared Redis as broker, under `prefix`, with results
/// over `rpc://` (reply lists) or the Redis backend.
async fn redis_app(prefix: &str, result_backend: &str) -> task_core::App {
    task_core::App::builder()
        .broker_url(format!("{}?global_keyprefix={prefix}", common::redis_url()))
        .result_backend(result_backend)
        .set_as_default(false)
        .connect()
        .await
        .expect("redis broker connects")
}

async fn worker_round_trips(label: &str, result_backend: &str) {
    use task_examples::{add, parse_int};
    let prefix = prefix(label);
    let app = redis_app(&prefix, result_backend).await;
    let queue = common::unique_queue(label);
    let worker = common::TestWorker::start_on(queue.clone(), app.clone(), 4, |b| b).await;
    let mut handles = Vec::new();
    for i in 0..50 {
        handles.push(
            add.s(i, i)
                .queue(queue.clone())
                .apply_async_with(&app)
                .await
                .unwrap(),
        );
    }
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.get(RESULT_TIMEOUT).await.unwrap(), 2 * i as i64);
    }
    let failed = parse_int
        .s("nope".into())
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap()
        .get(RESULT_TIMEOUT)
        .await;
    assert!(
        matches!(failed, Err(task_core::Error::TaskFailed(_))),
        "{failed:?}"
    );
    let sent = Instant::now();
    let later = add
        .s(20, 22)
        .queue(queue.clone())
        .countdown(Duration::from_millis(600))
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(later.get(RESULT_TIMEOUT).await.unwrap(), 42);
    assert!(sent.elapsed() >= Duration::from_millis(600));
    worker.stop().await;
    let broker = broker(&prefix, Duration::from_secs(3600)).await;
    assert_eq!(broker.unacked_count().await.unwrap(), 0);
    redis_keys::delete_redis_keys(&prefix).await;
}

#[tokio::test]
async fn a_rust_worker_and_client_on_redis_with_rpc_results() {
    worker_round_trips("rpc", "rpc://").await;
}

#[tokio::test]
async fn a_rust_worker_and_client_on_redis_with_the_redis_backend() {
    worker_round_trips("backend", &common::redis_url()).await;
}

#[tokio::test]
async fn an_exclusive_queue_is_its_connections_until_that_connection_closes_or_vanishes() {
    let prefix = prefix("lease");
    let url = common::redis_url();
    let connect = || {
        RedisBroker::connect_with(
            &url,
            RedisBrokerOptions::default()
                .key_prefix(&prefix)
                .connection_lease(Duration::from_millis(300)),
        )
    };
    let spec = || QueueSpec {
        exclusive: true,
        ..QueueSpec::task_queue("lock")
    };
    let (owner, other) = (connect().await.unwrap(), connect().await.unwrap());
    owner.declare_queue(&spec()).await.unwrap();
    let refused = other.declare_queue(&spec()).await.unwrap_err();
    assert!(refused.is_resource_locked(), "{refused}");

    // Closed, it gives the queue up at once.
    owner.close().await.unwrap();
    other.declare_queue(&spec()).await.unwrap();

    // Vanished (dropped without closing, as a killed process), its queue is
    // free once its lease lapsed, not before.
    let third = connect().await.unwrap();
    assert!(third
        .declare_queue(&spec())
        .await
        .unwrap_err()
        .is_resource_locked());
    drop(other);
    let started = Instant::now();
    loop {
        match third.declare_queue(&spec()).await {
            Ok(()) => break,
            Err(error) if error.is_resource_locked() => {
                assert!(started.elapsed() < RESULT_TIMEOUT, "the lease never lapsed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("{error}"),
        }
    }
    third.close().await.unwrap();
    redis_keys::delete_redis_keys(&prefix).await;
}

#[tokio::test]
async fn poison_messages_on_redis_go_to_the_dead_letter_list_with_their_reason() {
    use task_core::broker::dead_letter_headers;
    use task_examples::add;
    let prefix = prefix("poison");
    let app = redis_app(&prefix, "rpc://").await;
    let queue = common::unique_queue("redis-poison");
    let worker = common::TestWorker::start_on(queue.clone(), app.clone(), 2, |b| b).await;

    let mut malformed = common::task_message("tasks.add");
    malformed.body = b"{not json".to_vec();
    app.broker().publish("", &queue, &malformed).await.unwrap();
    let unknown = common::task_message("tasks.no_such_task");
    app.broker().publish("", &queue, &unknown).await.unwrap();
    // Not even kombu's envelope: pushed straight into the queue's list.
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("LPUSH")
        .arg(format!("{prefix}{queue}"))
        .arg("garbage, not JSON")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    // The worker goes on: a task sent after them all succeeds.
    let after = add
        .s(2, 3)
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(after.get(RESULT_TIMEOUT).await.unwrap(), 5);
    // Stopped gracefully, it has settled every message it took.
    let (app, _) = worker.halt().await;

    let dead_letters = QueueSpec::dead_letter_queue(&queue).name;
    let mut consumer = app
        .broker()
        .consume(
            std::slice::from_ref(&dead_letters),
            ConsumeOptions::no_ack(),
        )
        .await
        .unwrap();
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let delivery = next(&mut consumer.deliveries).await;
        let headers = delivery.message.properties.headers.to_json();
        assert_eq!(headers[dead_letter_headers::QUEUE], queue.as_str());
        reasons.push(
            headers[dead_letter_headers::REASON]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        if delivery.message.body == b"garbage, not JSON" {
            assert!(reasons.last().unwrap().starts_with("DecodeError"));
        }
    }
    reasons.sort();
    assert!(reasons[0].starts_with("DecodeError"), "{reasons:?}");
    assert!(reasons[1].starts_with("DecodeError"), "{reasons:?}");
    assert!(reasons[2].starts_with("NotRegistered"), "{reasons:?}");
    assert_eq!(
        app.broker()
            .queue_message_count(&dead_letters)
            .await
            .unwrap(),
        0
    );
    consumer.cancel.close().await.unwrap();
    app.close().await.unwrap();
    let broker = broker(&prefix, Duration::from_secs(3600)).await;
    assert_eq!(
        broker.unacked_count().await.unwrap(),
        0,
        "every poison message was settled"
    );
    redis_keys::delete_redis_keys(&prefix).await;
}

#[tokio::test]
async fn deleting_a_queue_ends_its_consumers_in_other_processes_too() {
    let prefix = prefix("deleted");
    let (deleter, consuming) = (
        broker(&prefix, Duration::from_secs(3600)).await,
        broker(&prefix, Duration::from_secs(3600)).await,
    );
    deleter
        .declare_queue(&QueueSpec::task_queue("q"))
        .await
        .unwrap();
    deleter.publish("", "q", &text("held", None)).await.unwrap();
    let mut consumer = consuming
        .consume(&["q".to_owned()], ConsumeOptions::manual_ack(1))
        .await
        .unwrap();
    let held = next(&mut consumer.deliveries).await;
    deleter.delete_queue("q").await.unwrap();
    // The other process's consumer sees the deletion at its next claim
    // renewal and ends, as RabbitMQ cancels the consumers of a deleted queue.
    let ended = tokio::time::timeout(RESULT_TIMEOUT, consumer.deliveries.next()).await;
    assert!(matches!(ended, Ok(None)), "the consumer did not end");
    assert!(
        held.acker.ack().await.is_err(),
        "what it held went with the queue"
    );
    assert_eq!(deleter.unacked_count().await.unwrap(), 0);
    deleter.close().await.unwrap();
    consuming.close().await.unwrap();
    redis_keys::delete_redis_keys(&prefix).await;
}
