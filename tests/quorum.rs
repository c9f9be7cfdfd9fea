//! Quorum queues on the real RabbitMQ (one node): declared as Celery 5.5+
//! declares them, consumed with per-consumer prefetch, delays and retries
//! through Celery's native delayed delivery levels, the delivery limit as a
//! poison guard, and Python Celery 5.7 peers on the same quorum queues with
//! countdowns both ways. (A node's death is in `tests/cluster.rs`.)

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{json, Value};

use common::{repo, TestWorker, RESULT_TIMEOUT};
use task_core::broker::delay_topology::celery;
use task_core::broker::{
    dead_letter_headers, ConsumeOptions, Message, Properties, QueueSpec, QueueType,
};
use task_core::{current_task, task, App, Signature, TaskError};
use task_examples::add;

/// An app whose task queues are quorum queues (and its delays Celery's
/// native levels), not the process's default app.
async fn quorum_app(delivery_limit: Option<u32>) -> App {
    App::builder()
        .broker_url(common::broker_url())
        .set_as_default(false)
        .queue_type(QueueType::Quorum)
        .delivery_limit(delivery_limit)
        .connect()
        .await
        .expect("RabbitMQ is running")
}

/// Deletes `queue`, its dead-letter queue and its same-name exchange.
async fn cleanup(app: &App, queue: &str) {
    let broker = app.broker();
    broker.delete_queue(queue).await.unwrap();
    let dead_letters = QueueSpec::dead_letter_queue(queue).name;
    broker.delete_queue(&dead_letters).await.unwrap();
    broker.delete_exchange(queue).await.unwrap();
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// When it ran, in seconds since the epoch, as Python's `pyq.stamp` says.
#[task(name = "quorum.stamp")]
async fn stamp(label: String) -> Result<Value, TaskError> {
    Ok(json!({"label": label, "ran_at": now_secs()}))
}

/// Attempt times per key.
static ATTEMPTS: Mutex<Vec<(String, u32, Instant)>> = Mutex::new(Vec::new());

#[task(name = "quorum.flaky")]
async fn flaky(key: String) -> Result<u32, TaskError> {
    let retries = current_task().expect("in a worker").retries();
    ATTEMPTS
        .lock()
        .unwrap()
        .push((key, retries, Instant::now()));
    if retries == 0 {
        return Err(TaskError::msg("first attempt fails").retry_in(Duration::from_millis(1200)));
    }
    Ok(retries)
}

#[tokio::test]
async fn a_worker_consumes_two_quorum_queues_with_a_prefetch_per_queue() {
    let app = quorum_app(None).await;
    let first = common::unique_queue("quorum-two-a");
    let second = common::unique_queue("quorum-two-b");
    // RabbitMQ refuses a global prefetch on quorum queues (540): a worker
    // on two of them consumes with a window per queue.
    let w = TestWorker::start_on(first.clone(), app.clone(), 2, |b| {
        b.queues([first.clone(), second.clone()])
    })
    .await;
    for (queue, x) in [(&first, 1), (&second, 2)] {
        let result = add
            .s(x, x)
            .queue(queue.clone())
            .apply_async_with(&app)
            .await
            .unwrap();
        assert_eq!(result.get(RESULT_TIMEOUT).await.unwrap(), 2 * x);
    }
    // A quorum queue: a classic declaration of the same name is refused.
    for queue in [&first, &second] {
        let classic = app
            .broker()
            .declare_queue(&QueueSpec::task_queue(queue.as_str()))
            .await
            .expect_err("a classic declaration of a quorum queue is refused");
        assert!(classic.is_precondition_failed(), "{classic}");
    }
    let (app, _) = w.halt().await;
    cleanup(&app, &first).await;
    cleanup(&app, &second).await;
}

#[tokio::test]
async fn a_quorum_delay_walks_celerys_levels_and_arrives_in_whole_seconds() {
    let app = quorum_app(None).await;
    let queue = common::unique_queue("quorum-levels");
    app.ensure_queue(&queue).await.unwrap();
    let message = Message {
        properties: Properties {
            persistent: true,
            ..Properties::default()
        },
        body: b"delayed".to_vec(),
    };
    let sent = Instant::now();
    // 3.4 s: whole seconds 3 = bits 1 and 0, the fraction cut.
    app.broker()
        .publish_delayed(&queue, &message, Duration::from_millis(3400))
        .await
        .unwrap();
    let arrived = common::next_message(&app, &queue).await;
    let waited = sent.elapsed();
    assert_eq!(arrived.body, b"delayed");
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_millis(3400 + 2000),
        "arrived after {waited:?}"
    );
    // It went through levels 1 (2 s) then 0 (1 s), dead-lettered by each.
    let headers = &arrived.properties.headers;
    assert_eq!(
        headers.get_str("x-first-death-queue"),
        Some(celery::level_name(1).as_str())
    );
    let history: Vec<String> = headers
        .get_json("x-death")
        .and_then(|deaths| deaths.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|death| death["queue"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(history, [celery::level_name(0), celery::level_name(1)]);
    println!("3.4 s on Celery's levels: arrived after {waited:?}");
    cleanup(&app, &queue).await;
}

#[tokio::test]
async fn a_countdown_and_a_retry_on_quorum_queues_wait_their_time() {
    let app = quorum_app(None).await;
    let w = TestWorker::start_on(common::unique_queue("quorum-countdown"), app, 1, |b| b).await;
    let sent = Instant::now();
    let delayed = add
        .s(1, 1)
        .queue(w.queue.clone())
        .countdown(Duration::from_millis(2500))
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(delayed.get(RESULT_TIMEOUT).await.unwrap(), 2);
    let late = sent.elapsed();
    // 2 s in the levels, the last 0.5 s held by the worker.
    assert!(late >= Duration::from_millis(2500), "ran after {late:?}");
    println!("countdown 2.5 s on quorum queues: result after {late:?}");

    let key = w.queue.clone();
    let retried = flaky
        .s(key.clone())
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(retried.get(RESULT_TIMEOUT).await.unwrap(), 1);
    let attempts: Vec<(u32, Instant)> = ATTEMPTS
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, ..)| *k == key)
        .map(|(_, retries, at)| (*retries, *at))
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let gap = attempts[1].1 - attempts[0].1;
    assert!(gap >= Duration::from_millis(1200), "retried after {gap:?}");
    let (app, queue) = w.halt().await;
    cleanup(&app, &queue).await;
}

#[tokio::test]
async fn a_message_over_the_delivery_limit_goes_to_the_dead_letter_queue() {
    let app = quorum_app(Some(1)).await;
    let queue = common::unique_queue("quorum-poison");
    app.ensure_queue(&queue).await.unwrap();
    let pending = add
        .s(2, 2)
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    // A consumer that never settles it (as a worker that dies on it would):
    // delivered, returned, delivered again, returned: over the limit of 1.
    let mut consumer = app
        .broker()
        .consume(std::slice::from_ref(&queue), ConsumeOptions::manual_ack(1))
        .await
        .unwrap();
    for delivery in 0..2 {
        let taken = tokio::time::timeout(RESULT_TIMEOUT, consumer.deliveries.next())
            .await
            .unwrap_or_else(|_| panic!("delivery {delivery} comes"))
            .expect("a delivery")
            .expect("a delivery");
        assert_eq!(taken.redelivered, delivery > 0);
        taken.acker.reject(true).await.unwrap();
    }
    consumer.cancel.close().await.unwrap();
    // The broker dead-letters it to `task_core.expired`; a worker's drain
    // (this one's, or any other's) keeps it in the queue's dead-letter
    // queue, with the reason.
    let w = TestWorker::start_on(queue.clone(), app, 1, |b| b).await;
    let dead_letter = QueueSpec::dead_letter_queue(&queue).name;
    // The drain declares the dead-letter queue as it keeps the message.
    let deadline = Instant::now() + RESULT_TIMEOUT;
    while !matches!(w.app.broker().queue_message_count(&dead_letter).await, Ok(n) if n > 0) {
        assert!(Instant::now() < deadline, "nothing reaches {dead_letter}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept = common::next_message(&w.app, &dead_letter).await;
    let reason = kept
        .properties
        .headers
        .get_str(dead_letter_headers::REASON)
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("delivery_limit"), "reason: {reason}");
    assert_eq!(
        kept.properties.correlation_id.as_deref(),
        Some(pending.id())
    );
    assert_eq!(w.app.broker().queue_message_count(&queue).await.unwrap(), 0);
    assert!(!pending.ready(), "the poison task never ran");
    let (app, queue) = w.halt().await;
    cleanup(&app, &queue).await;
}

// ------------------------------------------------------------ Python peers

/// A Python Celery worker on a quorum queue (`tests/interop/py_quorum.py`),
/// once it answered a task.
async fn python_worker(app: &App, queue: &str) -> common::PythonWorker {
    let env = [("QUORUM_QUEUE", queue)];
    let worker = common::PythonWorker::spawn("py_quorum", queue, &["-P", "solo"], &env);
    let ping = Signature::<Value>::new("pyq.stamp")
        .arg("ping")
        .queue(queue.to_owned())
        .apply_async_with(app)
        .await
        .unwrap();
    ping.get(Duration::from_secs(60)).await.unwrap();
    worker
}

#[tokio::test]
async fn a_rust_countdown_reaches_a_python_worker_on_quorum_queues_at_its_eta() {
    let app = quorum_app(None).await;
    let queue = common::unique_queue("quorum-rs2py");
    app.ensure_queue(&queue).await.unwrap();
    let python = python_worker(&app, &queue).await;
    let sent_at = now_secs();
    let result = Signature::<Value>::new("pyq.stamp")
        .arg("delayed")
        .queue(queue.clone())
        .countdown(Duration::from_millis(2500))
        .apply_async_with(&app)
        .await
        .unwrap();
    let ran = result.get(RESULT_TIMEOUT).await.unwrap();
    let waited = ran["ran_at"].as_f64().unwrap() - sent_at;
    assert!(waited >= 2.5, "the Python worker ran it {waited} s after");
    assert!(waited < 5.0, "the Python worker ran it {waited} s after");
    println!("Rust countdown 2.5 s → Python worker on quorum queues: ran after {waited:.3} s");
    drop(python);
    cleanup(&app, &queue).await;
}

#[tokio::test]
async fn a_python_countdown_on_quorum_queues_reaches_the_rust_worker_at_its_eta() {
    let app = quorum_app(None).await;
    let w = TestWorker::start_on(common::unique_queue("quorum-py2rs"), app, 2, |b| b).await;
    let queue = w.queue.clone();
    let calls = json!([{"name": "quorum.stamp", "args": ["delayed"], "countdown": 2}]);
    let output = common::python_output_in(
        vec![
            repo()
                .join("tests/interop/py_quorum.py")
                .display()
                .to_string(),
            calls.to_string(),
        ],
        &[("QUORUM_QUEUE", queue.as_str())],
    )
    .await;
    assert!(
        output.status.success(),
        "python client: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reports: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    let ran_at = reports[0]["result"]["ran_at"].as_f64().unwrap();
    let waited = ran_at - reports[0]["sent_at"].as_f64().unwrap();
    assert!(waited >= 2.0, "the Rust worker ran it {waited} s after");
    assert!(waited < 4.5, "the Rust worker ran it {waited} s after");
    println!("Python countdown 2 s → Rust worker on quorum queues: ran after {waited:.3} s");
    let (app, queue) = w.halt().await;
    cleanup(&app, &queue).await;
}

#[tokio::test]
async fn a_worker_refuses_a_queue_another_peer_declared_as_classic_naming_it() {
    let queue = common::unique_queue("quorum-mismatch");
    let classic = common::plain_app().await;
    classic.ensure_queue(&queue).await.unwrap();
    let started = task_worker::Worker::builder()
        .app(quorum_app(None).await)
        .queues([queue.clone()])
        .build()
        .await;
    match started {
        Err(task_worker::WorkerError::QueueMismatch {
            queue: named,
            source,
        }) => {
            assert_eq!(named, queue);
            assert!(source.is_precondition_failed(), "{source}");
        }
        Err(other) => panic!("expected QueueMismatch, got {other}"),
        Ok(_) => panic!("a quorum worker started on a classic queue"),
    }
    cleanup(&classic, &queue).await;
}
