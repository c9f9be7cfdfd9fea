//! Poison messages interleaved with good tasks, against the real RabbitMQ:
//! every good task succeeds, every bad message lands in the queue's
//! dead-letter queue with its reason, and the worker goes on.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use task_core::broker::{dead_letter_headers, ConsumeOptions, Message, QueueSpec};
use task_core::protocol::task_message::{encode_task, TaskCall};
use task_examples::{add, hello};
use task_worker::Worker;

/// A well-formed task message for `name` with no arguments and no result.
fn task_message(name: &str) -> Message {
    encode_task(&TaskCall {
        id: &uuid::Uuid::new_v4().to_string(),
        name,
        args: &[],
        kwargs: &[],
        reply_to: None,
        eta: None,
        expires: None,
        priority: None,
        time_limit: None,
        soft_time_limit: None,
        ignore_result: true,
        retries: 0,
        root_id: None,
        parent_id: None,
    })
    .unwrap()
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
    let base = task_message("tasks.add");
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
    poison.push(("NotRegistered", task_message("tasks.no_such_task")));

    // Interleave: good, bad, good, bad, ...
    let mut good_results = Vec::new();
    for (i, (_, message)) in poison.iter().enumerate() {
        good_results.push(
            add.s(i as i64, 1)
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

    let dead_letter_queue = QueueSpec::dead_letter_queue(&queue).name;
    let mut consumer = app
        .broker()
        .consume(
            std::slice::from_ref(&dead_letter_queue),
            ConsumeOptions::no_ack(),
        )
        .await
        .unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < poison.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.deliveries.next())
            .await
            .expect("every poison message reaches the dead-letter queue")
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
        reasons.push(
            headers[dead_letter_headers::REASON]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for (expected, _) in &poison {
        assert!(
            reasons.iter().any(|reason| reason.starts_with(expected)),
            "no dead-lettered message with reason `{expected}` in {reasons:#?}"
        );
    }
    println!(
        "poison: sent {} good + {} bad, completed {completed}, dead-lettered {}, duplicated 0",
        poison.len() + 1,
        poison.len(),
        reasons.len()
    );
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(app.broker().queue_message_count(&queue).await.unwrap(), 0);
    app.broker().delete_queue(&queue).await.unwrap();
    app.broker().delete_queue(&dead_letter_queue).await.unwrap();
    app.close().await.unwrap();
}
