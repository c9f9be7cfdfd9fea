//! Operating a Rust worker on a Redis broker with Celery 5.7's own tools:
//! `celery inspect` / `celery control` (remote control over kombu's pidbox:
//! requests on the `celery.pidbox` fanout exchange, i.e. Redis pub/sub,
//! replies in the requester's list) and Celery's event receiver (what
//! `celery events` and Flower use: `celeryev` is fanout on Redis, so events
//! travel by pub/sub). The worker runs in this process on the shared Redis
//! (`$TEST_REDIS_URL`) with a queue and node name of its own; requests name
//! it (`-d`), so tests running at once do not answer each other.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestWorker;
use serde_json::{json, Value};
use task_core::control::host_name;
use task_core::App;
use task_examples as _;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A worker on the shared Redis as its broker (results over `rpc://`,
/// i.e. reply lists), with `configure` applied.
async fn redis_worker(
    label: &str,
    configure: impl FnOnce(task_worker::WorkerBuilder) -> task_worker::WorkerBuilder,
) -> TestWorker {
    let queue = common::unique_queue(label);
    let app = App::builder()
        .broker_url(common::redis_url())
        .set_as_default(false)
        .connect()
        .await
        .expect("Redis is running");
    TestWorker::start_on(queue, app, 2, configure).await
}

/// `celery -b <redis> <args> -d <node> --json`: the node's reply.
async fn reply_of(node: &str, args: &[&str]) -> Value {
    let broker = common::redis_url();
    let full = ["-m", "celery", "-b", &broker]
        .iter()
        .chain(args)
        .chain(&["-d", node, "--timeout", "5", "--json"])
        .map(|a| (*a).to_owned())
        .collect();
    let output = common::python_output(full).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "celery failed: {stdout}{stderr}");
    let parsed: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    // `inspect` prints one object by node, `control` a list of them.
    let by_node = match parsed {
        Value::Array(replies) => replies
            .into_iter()
            .filter_map(|reply| reply.get(node).cloned())
            .next(),
        by_node => by_node.get(node).cloned(),
    };
    by_node.unwrap_or_else(|| panic!("no reply from {node}: {stdout}{stderr}"))
}

/// Deletes the worker's queue and its Redis keys.
async fn finish(worker: TestWorker) {
    worker.stop().await;
}

#[tokio::test]
async fn celery_inspect_and_control_reach_a_rust_worker_on_redis() {
    let w = redis_worker("redis-rc", |b| b).await;
    let node = format!("{}@{}", w.queue, host_name());
    let n = node.as_str();

    assert_eq!(
        reply_of(n, &["inspect", "ping"]).await,
        json!({"ok": "pong"})
    );
    let stats = reply_of(n, &["inspect", "stats"]).await;
    assert_eq!(stats["broker"]["transport"], "redis", "{stats}");
    assert_eq!(stats["broker"]["port"], 6379, "{stats}");
    let queues = reply_of(n, &["inspect", "active_queues"]).await;
    assert_eq!(queues[0]["name"], w.queue.as_str(), "{queues}");

    // A control command changes the worker, and the change is seen.
    let limited = reply_of(n, &["control", "rate_limit", "tasks.add", "10/m"]).await;
    assert!(
        limited["ok"]
            .as_str()
            .is_some_and(|ok| ok.contains("rate limit")),
        "{limited}"
    );
    let registered = reply_of(n, &["inspect", "registered", "rate_limit"]).await;
    assert!(
        registered
            .as_array()
            .is_some_and(|tasks| tasks.iter().any(|t| t == "tasks.add [rate_limit=10/m]")),
        "{registered}"
    );
    finish(w).await;
}

#[tokio::test]
async fn celerys_event_receiver_sees_a_rust_worker_on_redis() {
    let w = redis_worker("redis-events", |b| b.task_events(true)).await;
    let node = format!("{}@{}", w.queue, host_name());
    let failing_id = uuid::Uuid::new_v4().to_string();
    let mut receiver = Command::new(common::python())
        .arg(common::repo().join("tests/interop/py_events.py"))
        .args([&node, &failing_id])
        .env("BROKER_URL", common::redis_url())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the python receiver starts");
    let (lines, mut events) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let stdout = receiver.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str(&line) {
                let _ = lines.send(event);
            }
        }
    });
    // Subscribed once a first event came (the receiver wakes the workers
    // up, so a heartbeat comes at once).
    let first = tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .expect("an event within the timeout")
        .expect("the receiver runs");
    assert_eq!(first["type"], "worker-heartbeat", "{first}");
    assert_eq!(first["hostname"], node.as_str());

    let add = w
        .app
        .signature("tasks.add")
        .arg(2)
        .arg(3)
        .returning::<i64>()
        .queue(w.queue.clone());
    let handle = add.apply_async_with(&w.app).await.expect("published");
    assert_eq!(handle.get(TIMEOUT).await.expect("a result"), 5);
    let failing = w
        .app
        .signature("tasks.parse_int")
        .arg("not a number")
        .task_id(failing_id.clone())
        .queue(w.queue.clone());
    let _ = failing.apply_async_with(&w.app).await.expect("published");

    // Until the receiver saw the failure and exited.
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(TIMEOUT, events.recv()).await {
        let kind = event["type"].as_str().unwrap_or_default().to_owned();
        let done = kind == "task-failed";
        seen.push((kind, event));
        if done {
            break;
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|(kind, _)| kind.as_str()).collect();
    for expected in [
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
    ] {
        assert!(kinds.contains(&expected), "no {expected} in {kinds:?}");
    }
    let succeeded = seen
        .iter()
        .find(|(kind, _)| kind == "task-succeeded")
        .map(|(_, event)| event)
        .expect("task-succeeded");
    assert_eq!(succeeded["uuid"], handle.id());
    assert_eq!(succeeded["result"], "5");
    let status = tokio::task::spawn_blocking(move || receiver.wait())
        .await
        .expect("joined")
        .expect("the receiver exits");
    assert!(status.success());
    finish(w).await;
}
