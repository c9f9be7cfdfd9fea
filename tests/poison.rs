//! Poison messages interleaved with good tasks, against the real RabbitMQ:
//! every good task succeeds, every bad message lands in the queue's
//! dead-letter queue with its reason, and the worker goes on.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::StreamExt;
use serde_json::Value;
use task_core::broker::{dead_letter_headers, ConsumeOptions, Message, QueueSpec};
use task_core::{task, TaskError};
use task_examples::hello;
use task_worker::Worker;

/// The header each poison message carries, naming it in its dead letter.
const MARKER: &str = "x-test-poison-marker";

/// How many times each good task ran, by its argument.
static GOOD_RUNS: Mutex<Vec<i64>> = Mutex::new(Vec::new());

/// A good task that records each of its runs.
#[task(name = "test.poison.good")]
async fn good(i: i64) -> Result<i64, TaskError> {
    GOOD_RUNS.lock().unwrap().push(i);
    Ok(i + 1)
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_their_reason_and_good_tasks_succeed() {
    let queue = common::unique_queue("poison");
    let app = common::client(&[&queue]).await;
    let worker = Worker::builder()
        .app(app.clone())
        .queues([queue.clone()])
        .concurrency(2)
        .max_message_size(4096)
        .build()
        .await
        .unwrap();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());

    let mut poison: Vec<(&str, Message)> = Vec::new();
    let base = common::task_message("tasks.add");
    let mut m = base.clone();
    m.body = b"{not json".to_vec();
    poison.push(("DecodeError: malformed body", m));
    let mut m = base.clone();
    m.body = b"[[1, 2], {}]".to_vec();
    poison.push(("DecodeError: malformed body", m));
    let mut m = base.clone();
    m.body = br#"{"args": [1, 2]}"#.to_vec();
    poison.push(("DecodeError: malformed body", m));
    let mut m = base.clone();
    m.properties.content_type = Some("application/x-python-serialize".into());
    m.body = b"\x80\x04\x95".to_vec();
    poison.push(("DecodeError: unsupported content type", m));
    let mut m = base.clone();
    m.properties.headers.remove("task");
    poison.push(("DecodeError: the message has no `task` header", m));
    let mut m = base.clone();
    m.body = format!("[[\"{}\"], {{}}, {{}}]", "x".repeat(5000)).into_bytes();
    poison.push(("MessageTooLarge", m));
    poison.push(("NotRegistered", common::task_message("tasks.no_such_task")));
    // Each poison message names itself, so its dead letter is matched to it.
    for (marker, (_, message)) in poison.iter_mut().enumerate() {
        message
            .properties
            .headers
            .insert_str(MARKER, &marker.to_string());
    }

    // Interleave: good, bad, good, bad, ...
    let mut good_results = Vec::new();
    for (i, (_, message)) in poison.iter().enumerate() {
        good_results.push(
            good.s(i as i64)
                .queue(queue.clone())
                .apply_async_with(&app)
                .await
                .unwrap(),
        );
        app.broker().publish("", &queue, message).await.unwrap();
    }
    let after = hello
        .s("after".into())
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    let mut completed = 0;
    for (i, pending) in good_results.iter().enumerate() {
        assert_eq!(
            pending.get(common::RESULT_TIMEOUT).await.unwrap(),
            i as i64 + 1
        );
        completed += 1;
    }
    assert_eq!(
        after.get(common::RESULT_TIMEOUT).await.unwrap(),
        "Hello, after!"
    );
    completed += 1;

    // The last message has run, so every message before it was taken; a
    // graceful stop waits for those still being handled. From then on the
    // dead-letter queue holds every dead letter there will ever be.
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(app.broker().queue_message_count(&queue).await.unwrap(), 0);
    let mut runs: HashMap<i64, usize> = HashMap::new();
    for i in GOOD_RUNS.lock().unwrap().iter() {
        *runs.entry(*i).or_default() += 1;
    }
    let duplicated_runs: usize = runs.values().map(|n| n - 1).sum();
    assert_eq!(runs.len(), poison.len(), "every good task ran: {runs:?}");

    let dead_letter_queue = QueueSpec::dead_letter_queue(&queue).name;
    let dead_lettered = app
        .broker()
        .queue_message_count(&dead_letter_queue)
        .await
        .unwrap() as usize;
    let mut consumer = app
        .broker()
        .consume(
            std::slice::from_ref(&dead_letter_queue),
            ConsumeOptions::no_ack(),
        )
        .await
        .unwrap();
    // Dead letters by the marker of the message they copy.
    let mut by_marker: HashMap<String, Vec<(String, Vec<u8>)>> = HashMap::new();
    for _ in 0..dead_lettered {
        let delivery = tokio::time::timeout(common::RESULT_TIMEOUT, consumer.deliveries.next())
            .await
            .expect("a dead letter counted in the queue is delivered")
            .unwrap()
            .unwrap();
        let headers = delivery.message.properties.headers.to_json();
        assert_eq!(
            headers[dead_letter_headers::QUEUE],
            Value::from(queue.as_str())
        );
        assert!(headers[dead_letter_headers::AT]
            .as_str()
            .unwrap()
            .ends_with("+00:00"));
        let marker = headers[MARKER]
            .as_str()
            .unwrap_or_else(|| panic!("a dead letter of no poison message: {headers:?}"))
            .to_owned();
        let reason = headers[dead_letter_headers::REASON]
            .as_str()
            .unwrap()
            .to_owned();
        by_marker
            .entry(marker)
            .or_default()
            .push((reason, delivery.message.body));
    }
    let duplicated_dead_letters: usize = by_marker.values().map(|copies| copies.len() - 1).sum();
    // One to one: each poison message has exactly one dead letter, with its
    // own reason and its own body (kept for a replay).
    for (marker, (expected, message)) in poison.iter().enumerate() {
        let copies = by_marker.remove(&marker.to_string()).unwrap_or_default();
        let [(reason, body)] = copies.as_slice() else {
            panic!(
                "poison message {marker} (`{expected}`) has {} dead letters: {copies:?}",
                copies.len()
            );
        };
        assert!(
            reason.starts_with(expected),
            "poison message {marker}: reason `{reason}`, expected `{expected}`"
        );
        assert_eq!(body, &message.body, "poison message {marker}: body kept");
    }
    assert!(by_marker.is_empty(), "unknown markers: {by_marker:?}");
    assert_eq!(duplicated_runs, 0, "good tasks ran twice: {runs:?}");
    println!(
        "poison: sent {} good + {} bad, completed {completed}, dead-lettered {dead_lettered}, \
         duplicated {} (runs {duplicated_runs}, dead letters {duplicated_dead_letters})",
        poison.len() + 1,
        poison.len(),
        duplicated_runs + duplicated_dead_letters,
    );
    app.broker().delete_queue(&queue).await.unwrap();
    app.broker().delete_queue(&dead_letter_queue).await.unwrap();
    app.close().await.unwrap();
}
