//! Celery's events from Rust workers, on the real RabbitMQ: read by the
//! real Celery 5.7 receiver (what Flower and `celery events` use) with
//! Celery's fields, and by a Rust monitor through `App::events`; task
//! events off until enabled, as in Celery.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestWorker;
use serde_json::Value;
use task_core::control::{host_name, Broadcast};
use task_core::events::{Event, EventKind};
use task_examples as _;

const TIMEOUT: Duration = Duration::from_secs(30);

fn node_of(worker: &TestWorker) -> String {
    format!("{}@{}", worker.queue, host_name())
}

#[tokio::test]
async fn celerys_receiver_sees_a_rust_worker_and_its_tasks() {
    let queue = common::unique_queue("events-py");
    let app = common::client(&[&queue]).await;
    let w = TestWorker::start_on(queue, app, 2, |builder| builder.task_events(true)).await;
    let node = node_of(&w);
    let failing_id = uuid::Uuid::new_v4().to_string();
    let mut receiver = Command::new(common::python())
        .arg(common::repo().join("tests/interop/py_events.py"))
        .args([&node, &failing_id])
        .env("BROKER_URL", common::broker_url())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the python receiver starts");
    let (lines, mut events) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let stdout = receiver.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str(&line) {
                let _ = lines.send(event);
            }
        }
    });
    // The receiver is consuming once it got a first event (it wakes the
    // workers up: a heartbeat comes at once).
    let first = tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first["type"], "worker-heartbeat", "{first}");

    let add = w
        .app
        .signature("tasks.add")
        .arg(2)
        .arg(3)
        .returning::<i64>();
    let sum = add
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(sum.get(TIMEOUT).await.unwrap(), 5);
    let parse = w
        .app
        .signature("tasks.parse_int")
        .arg("x")
        .returning::<i64>();
    let failed = parse
        .task_id(failing_id.clone())
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert!(failed.get(TIMEOUT).await.is_err());

    let mut seen = vec![first];
    while let Ok(Some(event)) = tokio::time::timeout(TIMEOUT, events.recv()).await {
        let last = event["type"] == "task-failed" && event["uuid"] == failing_id.as_str();
        seen.push(event);
        if last {
            break;
        }
    }
    let _ = receiver.kill();
    let _ = receiver.wait();
    let of = |kind: &str, id: &str| {
        seen.iter()
            .find(|e| e["type"] == kind && e["uuid"] == id)
            .unwrap_or_else(|| panic!("no {kind} for {id} in {seen:#?}"))
            .clone()
    };
    for event in &seen {
        assert_eq!(event["hostname"], node.as_str());
        assert!(
            event["timestamp"].is_f64() && event["utcoffset"].is_number(),
            "{event}"
        );
        assert!(event["clock"].is_u64() && event["pid"].is_u64(), "{event}");
    }
    let received = of("task-received", sum.id());
    assert_eq!(received["name"], "tasks.add");
    assert_eq!(received["args"], "(2, 3)");
    assert_eq!(received["root_id"], sum.id());
    of("task-started", sum.id());
    let succeeded = of("task-succeeded", sum.id());
    assert_eq!(succeeded["result"], "5");
    assert!(succeeded["runtime"].as_f64().unwrap() >= 0.0);
    let failure = of("task-failed", &failing_id);
    assert!(
        failure["exception"]
            .as_str()
            .unwrap()
            .starts_with("ParseIntError("),
        "{failure}"
    );
    assert!(failure["traceback"].is_string(), "{failure}");
    w.stop().await;
}

/// The events of `node` from `receiver`, until its `worker-offline`.
async fn until_offline(receiver: &mut task_core::events::EventReceiver, node: &str) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(TIMEOUT, receiver.next())
            .await
            .expect("the worker goes offline")
            .expect("the stream goes on")
            .expect("an event");
        if event.header.hostname != node {
            continue;
        }
        let offline = matches!(event.kind, EventKind::WorkerOffline(_));
        seen.push(event);
        if offline {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_rust_monitor_gets_typed_events_and_task_events_wait_until_enabled() {
    let queue = common::unique_queue("events-rs");
    let app = common::client(&[&queue]).await;
    let mut receiver = app.events().await.unwrap();
    let w = TestWorker::start_on(queue, app, 2, |builder| builder).await;
    let node = node_of(&w);
    let add = |x: i64| {
        w.app
            .signature("tasks.add")
            .arg(x)
            .arg(1)
            .returning::<i64>()
            .queue(w.queue.clone())
    };
    let quiet = add(1).apply_async_with(&w.app).await.unwrap();
    assert_eq!(quiet.get(TIMEOUT).await.unwrap(), 2);
    let enabled = w
        .app
        .control()
        .request(
            "enable_events",
            Default::default(),
            &Broadcast::to([&node], TIMEOUT),
        )
        .await
        .unwrap();
    assert_eq!(enabled.len(), 1);
    let seen_task = add(2).apply_async_with(&w.app).await.unwrap();
    assert_eq!(seen_task.get(TIMEOUT).await.unwrap(), 3);
    let seen_id = seen_task.id().to_owned();
    let quiet_id = quiet.id().to_owned();
    w.stop().await;

    let events = until_offline(&mut receiver, &node).await;
    assert!(
        matches!(events[0].kind, EventKind::WorkerOnline(_)),
        "{events:#?}"
    );
    let about = |id: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|e| e.kind.task_id() == Some(id))
            .map(|e| e.kind.event_type())
            .collect()
    };
    assert!(
        about(&quiet_id).is_empty(),
        "task events were off: {events:#?}"
    );
    assert_eq!(
        about(&seen_id),
        ["task-received", "task-started", "task-succeeded"]
    );
    let Some(EventKind::TaskSucceeded(done)) = events
        .iter()
        .map(|e| &e.kind)
        .find(|k| matches!(k, EventKind::TaskSucceeded(_)))
    else {
        unreachable!()
    };
    assert_eq!(done.result, "3");
    let _ = receiver.close().await;
}

/// A client that sends `task-sent` (Celery's `task_send_sent_event`), as
/// `gen<pid>@host`, with Celery's fields.
#[tokio::test]
async fn a_client_sends_task_sent_when_asked() {
    let queue = common::unique_queue("events-sent");
    let app = task_core::App::builder()
        .broker_url(common::broker_url())
        .queue(common::test_queue_spec(&queue))
        .send_sent_events(true)
        .set_as_default(false)
        .connect()
        .await
        .unwrap();
    let mut receiver = app.events().await.unwrap();
    let sent = app
        .signature("tasks.add")
        .arg(2)
        .arg(3)
        .returning::<i64>()
        .queue(queue.clone())
        .ignore_result()
        .apply_async_with(&app)
        .await
        .unwrap();
    let event = loop {
        let event = tokio::time::timeout(TIMEOUT, receiver.next())
            .await
            .expect("the task-sent event comes")
            .unwrap()
            .unwrap();
        if event.kind.task_id() == Some(sent.id()) {
            break event;
        }
    };
    assert_eq!(
        event.header.hostname,
        format!("gen{}@{}", std::process::id(), host_name())
    );
    let EventKind::TaskSent(fields) = event.kind else {
        panic!("{event:?}")
    };
    assert_eq!(
        (fields.name.as_str(), fields.args.as_str()),
        ("tasks.add", "(2, 3)")
    );
    assert_eq!(fields.queue.as_deref(), Some(queue.as_str()));
    assert_eq!(fields.root_id.as_deref(), Some(sent.id()));
    app.broker().delete_queue(&queue).await.unwrap();
    let _ = receiver.close().await;
}
