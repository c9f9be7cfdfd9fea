//! Failover between broker nodes (Celery's `amqp://a;amqp://b` form): two
//! independent private RabbitMQ nodes, A and B (`common/private_broker.rs`),
//! each test with nodes of its own, one test at a time.
//!
//! What they show: a client on `A;B` connects to A; when A goes away its
//! operations continue on B (and back on A when B goes in turn); a first
//! connection skips a node that is down; with every node down the error
//! names every node's failure without a password; and while publishes
//! stream, stopping A loses none of the publishes reported Ok (each is
//! found on A, once its application is back, or on B).

mod common;
#[path = "common/private_broker.rs"]
mod private_broker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use private_broker::PrivateBroker;
use task_core::broker::amqp::{AmqpBroker, ReconnectPolicy};
use task_core::broker::{
    redact, Broker, BrokerError, BrokerNodes, ConnectFailure, ConsumeOptions, Message, Properties,
    QueueSpec,
};

/// A password no message may show.
const SECRET: &str = "failover-s3cret";

/// One test at a time runs private nodes: two Erlang VMs per test on two
/// cores are plenty.
async fn private_node_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    TURN.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// Nodes A and B, booted side by side.
async fn two_nodes(label: &str) -> (PrivateBroker, PrivateBroker) {
    let (a, b) = (format!("{label}-a"), format!("{label}-b"));
    tokio::join!(PrivateBroker::start(&a), PrivateBroker::start(&b))
}

/// Quick reconnections, and time enough to reach the other node.
fn policy() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        operation_deadline: Duration::from_secs(30),
    }
}

/// A failover URL listing `nodes`, spaced as people write them.
fn list(nodes: &[&PrivateBroker]) -> String {
    nodes
        .iter()
        .map(|node| node.url())
        .collect::<Vec<_>>()
        .join(" ; ")
}

/// A durable queue, as task queues are (survives the restart of a node's
/// application with its persistent messages).
fn durable(name: &str) -> QueueSpec {
    QueueSpec::task_queue(name)
}

fn persistent(body: impl Into<Vec<u8>>) -> Message {
    Message {
        properties: Properties {
            persistent: true,
            ..Properties::default()
        },
        body: body.into(),
    }
}

/// A connection to this node only.
async fn direct(node: &PrivateBroker) -> AmqpBroker {
    AmqpBroker::connect(&node.url())
        .await
        .expect("connect to the node directly")
}

/// Every message in `queue` on `node`, taken off it.
async fn drain(node: &PrivateBroker, queue: &str) -> Vec<Vec<u8>> {
    let broker = direct(node).await;
    let ready = broker
        .queue_message_count(queue)
        .await
        .expect("the queue exists") as usize;
    let mut bodies = Vec::with_capacity(ready);
    if ready > 0 {
        let mut consumer = broker
            .consume(&[queue.to_owned()], ConsumeOptions::no_ack())
            .await
            .expect("consume");
        while bodies.len() < ready {
            let delivery =
                tokio::time::timeout(Duration::from_secs(20), consumer.deliveries.next())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("{} of {ready} messages read from {queue}", bodies.len())
                    })
                    .expect("the consumer does not end")
                    .expect("a delivery");
            bodies.push(delivery.message.body);
        }
        consumer.cancel.close().await.expect("close the consumer");
    }
    broker.close().await.expect("close");
    bodies
}

/// A lost node's operations continue on the next one, and back on the
/// first when the second goes in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_fails_over_to_the_next_and_back() {
    let _turn = private_node_turn().await;
    let (a, b) = two_nodes("failover-next").await;
    let queue = common::unique_queue("failover.next");
    let broker = AmqpBroker::connect_with(&list(&[&a, &b]), policy())
        .await
        .expect("connect to A;B");

    // The first connection is A's: what it declares is on A, not on B.
    broker.declare_queue(&durable(&queue)).await.unwrap();
    let on_b = direct(&b).await;
    let missing = on_b.queue_message_count(&queue).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
    on_b.declare_queue(&durable(&queue)).await.unwrap();
    assert_eq!(
        direct(&a).await.queue_message_count(&queue).await.unwrap(),
        0
    );

    // A goes: the next publish is confirmed by B, and consumed from B.
    a.stop_app().await;
    broker
        .publish("", &queue, &persistent("to B"))
        .await
        .expect("published on B once A is gone");
    assert_eq!(broker.queue_message_count(&queue).await.unwrap(), 1);
    assert_eq!(drain(&b, &queue).await, [b"to B".to_vec()]);

    // A is back, B goes: the connection returns to A (the node after B).
    a.start_app().await;
    b.stop_app().await;
    broker
        .publish("", &queue, &persistent("back to A"))
        .await
        .expect("published on A once B is gone");
    assert_eq!(drain(&a, &queue).await, [b"back to A".to_vec()]);

    broker.close().await.unwrap();
    drop(on_b);
    tokio::join!(a.shutdown(), b.shutdown());
}

/// A first connection skips a node that is down and takes the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_connection_skips_a_node_that_is_down() {
    let _turn = private_node_turn().await;
    let (a, b) = two_nodes("failover-first").await;
    let queue = common::unique_queue("failover.first");
    a.stop_app().await;

    let broker = AmqpBroker::connect_with(&list(&[&a, &b]), policy())
        .await
        .expect("connect to B with A down");
    broker.declare_queue(&durable(&queue)).await.unwrap();
    broker
        .publish("", &queue, &persistent("first on B"))
        .await
        .unwrap();
    assert_eq!(drain(&b, &queue).await, [b"first on B".to_vec()]);

    // Declared on B only: A, back, has never seen it.
    a.start_app().await;
    let on_a = direct(&a).await.queue_message_count(&queue).await;
    assert!(
        on_a.as_ref().is_err_and(BrokerError::is_not_found),
        "{on_a:?}"
    );

    broker.close().await.unwrap();
    tokio::join!(a.shutdown(), b.shutdown());
}

/// With every node down, one typed error names every node's failure, on
/// one line, without a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_node_down_the_error_lists_each_without_passwords() {
    let _turn = private_node_turn().await;
    let (a, b) = two_nodes("failover-down").await;
    // One node's application stopped, the other node halted.
    a.stop_app().await;
    let a_url = a.url().replace("guest:guest", &format!("guest:{SECRET}"));
    let b_url = b.url().replace("guest:guest", &format!("guest:{SECRET}"));
    b.shutdown().await;

    let url = format!("{a_url};{b_url}");
    let error = match AmqpBroker::connect_with(&url, policy()).await {
        Err(error) => error,
        Ok(_) => panic!("connected with every node down"),
    };
    let shown = error.to_string();
    println!("[failover] {shown}");
    let BrokerError::NoNodeReachable { attempts } = &error else {
        panic!("expected NoNodeReachable, got {error:?}");
    };
    assert_eq!(attempts.len(), 2, "{shown}");
    for (attempt, node_url) in attempts.iter().zip([&a_url, &b_url]) {
        let node: lapin::uri::AMQPUri = node_url.parse().unwrap();
        let address = format!("127.0.0.1:{}", node.authority.port);
        match attempt {
            BrokerError::Connect {
                failure,
                address: named,
                ..
            } => {
                assert_eq!(*failure, ConnectFailure::Refused, "{attempt}");
                assert_eq!(*named, address);
            }
            other => panic!("expected a Connect error for {address}, got {other:?}"),
        }
        assert!(shown.contains(&address), "{address} missing: {shown}");
    }
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!format!("{error:?}").contains(SECRET), "{error:?}");
    assert!(!shown.contains('\n'), "{shown}");
    assert!(
        shown.contains("is RabbitMQ running, is the port right?; nothing is listening at"),
        "{shown}"
    );

    // The list as callers print it: passwords hidden.
    let nodes = BrokerNodes::parse(&url).unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes.to_string(), redact(&url));
    assert!(!redact(&url).contains(SECRET));
    a.shutdown().await;
}

/// What became of the publishes of the streaming test.
#[derive(Debug, Default)]
struct Outcome {
    confirmed: Vec<u64>,
    errors: Vec<(u64, BrokerError)>,
}

/// Publishers stream persistent messages to `A;B` while A is stopped: no
/// publish reported Ok is lost (each is on A, once its application is back,
/// or on B; a publish in flight at the loss may be on both: counted as a
/// duplicate), and the ones that failed did so with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_confirmed_publish_is_lost_when_a_node_stops_mid_stream() {
    const PUBLISHERS: u64 = 4;
    const AT_LEAST: u64 = 2000;
    let _turn = private_node_turn().await;
    let (a, b) = two_nodes("failover-stream").await;
    let queue = common::unique_queue("failover.stream");
    direct(&a)
        .await
        .declare_queue(&durable(&queue))
        .await
        .unwrap();
    direct(&b)
        .await
        .declare_queue(&durable(&queue))
        .await
        .unwrap();
    let broker = Arc::new(
        AmqpBroker::connect_with(&list(&[&a, &b]), policy())
            .await
            .expect("connect to A;B"),
    );

    // Publishers take numbers from one counter until told to stop; each
    // publish is awaited (its confirm) before the next.
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        let (broker, next, stop, queue) = (
            Arc::clone(&broker),
            Arc::clone(&next),
            Arc::clone(&stop),
            queue.clone(),
        );
        publishers.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            while !stop.load(Ordering::SeqCst) {
                let id = next.fetch_add(1, Ordering::SeqCst);
                match broker
                    .publish("", &queue, &persistent(id.to_string()))
                    .await
                {
                    Ok(()) => outcome.confirmed.push(id),
                    Err(error) => outcome.errors.push((id, error)),
                }
            }
            outcome
        }));
    }

    // A stops mid-stream; the stream goes on on B, to at least AT_LEAST.
    let wait_for = |count: u64| {
        let next = Arc::clone(&next);
        async move {
            tokio::time::timeout(Duration::from_secs(120), async {
                while next.load(Ordering::SeqCst) < count {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("fewer than {count} publishes in 120 s"));
        }
    };
    wait_for(AT_LEAST / 4).await;
    let before_stop = next.load(Ordering::SeqCst);
    a.stop_app().await;
    let after_stop = next.load(Ordering::SeqCst);
    wait_for((after_stop + AT_LEAST / 4).max(AT_LEAST)).await;
    stop.store(true, Ordering::SeqCst);
    let mut outcome = Outcome::default();
    for publisher in publishers {
        let done = publisher.await.expect("a publisher does not panic");
        outcome.confirmed.extend(done.confirmed);
        outcome.errors.extend(done.errors);
    }
    let sent = next.load(Ordering::SeqCst);
    broker.close().await.unwrap();

    // A's application back: its durable queue with what it confirmed.
    a.start_app().await;
    let mut found: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    let (on_a, on_b) = tokio::join!(drain(&a, &queue), drain(&b, &queue));
    for (bodies, on_a) in [(&on_a, true), (&on_b, false)] {
        for body in bodies {
            let id: u64 = std::str::from_utf8(body)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or_else(|| panic!("an unexpected body: {body:?}"));
            let seen = found.entry(id).or_default();
            if on_a {
                seen.0 += 1;
            } else {
                seen.1 += 1;
            }
        }
    }
    let lost: Vec<u64> = outcome
        .confirmed
        .iter()
        .copied()
        .filter(|id| !found.contains_key(id))
        .collect();
    let duplicated: Vec<(u64, (u32, u32))> = found
        .iter()
        .filter(|(_, (on_a, on_b))| on_a + on_b > 1)
        .map(|(id, seen)| (*id, *seen))
        .collect();
    // A message nobody confirmed may still have reached a node (its
    // confirm lost with A): not a loss, and reported.
    let confirmed: HashSet<u64> = outcome.confirmed.iter().copied().collect();
    let unconfirmed_found = found.keys().filter(|id| !confirmed.contains(id)).count();
    let mut error_kinds: HashMap<String, usize> = HashMap::new();
    for (_, error) in &outcome.errors {
        let kind = format!("{error:?}");
        let kind = kind.split([' ', '{', '(']).next().unwrap_or_default();
        *error_kinds.entry(kind.to_owned()).or_default() += 1;
    }
    println!(
        "[failover] sent {sent} (A stopped between #{before_stop} and #{after_stop}): \
         confirmed {}, on A {}, on B {}, duplicated {}, found unconfirmed {unconfirmed_found}, \
         typed errors {} {error_kinds:?}, lost {}",
        outcome.confirmed.len(),
        on_a.len(),
        on_b.len(),
        duplicated.len(),
        outcome.errors.len(),
        lost.len(),
    );
    for (id, error) in outcome.errors.iter().take(5) {
        println!("[failover]   #{id} failed: {error}");
    }
    if !duplicated.is_empty() {
        println!(
            "[failover]   duplicates (id, (on A, on B)): {:?}",
            &duplicated[..duplicated.len().min(10)]
        );
    }
    assert!(lost.is_empty(), "confirmed but found nowhere: {lost:?}");
    assert_eq!(
        outcome.confirmed.len() + outcome.errors.len(),
        sent as usize,
        "every publish ended Ok or with an error"
    );
    assert!(sent >= AT_LEAST);
    assert!(
        !on_a.is_empty(),
        "nothing was published on A before it stopped"
    );
    assert!(
        !on_b.is_empty(),
        "nothing was published on B after A stopped"
    );
    // A publish that failed did so with a refusal or a lost connection,
    // never as a success.
    for (id, error) in &outcome.errors {
        assert!(
            matches!(
                error,
                BrokerError::Connection { .. }
                    | BrokerError::NoNodeReachable { .. }
                    | BrokerError::Nacked { .. }
                    | BrokerError::Unroutable { .. }
            ),
            "#{id}: {error:?}"
        );
    }
    tokio::join!(a.shutdown(), b.shutdown());
}
