//! Remote control of Rust workers by the real Celery 5.7 command line
//! (`celery inspect` / `celery control`, kombu's pidbox) and by the Rust
//! API (`App::control`), on the real RabbitMQ: every inspect command,
//! the control commands acting on the worker (rate and time limits, pool
//! size, events, revoke, terminate, shutdown), `destination` and patterns,
//! and revokes that reach workers started later (the revoke log).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestWorker;
use serde_json::{json, Value};
use task_core::control::{host_name, Broadcast};
use task_core::{task, Error, TaskError};
use task_examples as _;
use tokio::sync::Notify;

const TIMEOUT: Duration = Duration::from_secs(20);

/// One `rc.held` run's signals, by its tag: tests run in parallel.
#[derive(Default)]
struct Gate {
    started: Notify,
    release: Notify,
}

fn gate(tag: &str) -> Arc<Gate> {
    static GATES: Mutex<Option<HashMap<String, Arc<Gate>>>> = Mutex::new(None);
    let mut gates = GATES.lock().unwrap();
    Arc::clone(
        gates
            .get_or_insert_with(HashMap::new)
            .entry(tag.to_owned())
            .or_default(),
    )
}

/// Runs until released (or terminated).
#[task(name = "rc.held")]
async fn held(tag: String) -> Result<String, TaskError> {
    let gate = gate(&tag);
    gate.started.notify_one();
    gate.release.notified().await;
    Ok(tag)
}

static BLOCKING_STARTED: Notify = Notify::const_new();
static RELEASE_BLOCKING: AtomicBool = AtomicBool::new(false);

/// A blocking body: runs on a thread until released.
#[task(name = "rc.blocking_held")]
fn blocking_held() -> Result<u32, TaskError> {
    BLOCKING_STARTED.notify_one();
    while !RELEASE_BLOCKING.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(1)
}

/// `celery -b <broker> <args> --json` (inspect or control), parsed: the
/// replies by node name; `{}` when no node replied.
async fn celery(args: &[&str]) -> Value {
    let broker = common::broker_url();
    let full = ["-m", "celery", "-b", &broker]
        .iter()
        .chain(args)
        .chain(&["--timeout", "5", "--json"])
        .map(|a| (*a).to_owned())
        .collect();
    let output = common::python_output(full).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No nodes replied") {
        return json!({});
    }
    assert!(output.status.success(), "celery failed: {stdout}{stderr}");
    let parsed: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    // `inspect` prints one object by node, `control` a list of them.
    match parsed {
        Value::Array(replies) => Value::Object(
            replies
                .into_iter()
                .filter_map(|reply| match reply {
                    Value::Object(by_node) => Some(by_node),
                    _ => None,
                })
                .flatten()
                .collect(),
        ),
        by_node => by_node,
    }
}

/// The reply of `node` to a `celery` command.
async fn reply_of(node: &str, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend(["-d", node]);
    let replies = celery(&full).await;
    replies
        .get(node)
        .cloned()
        .unwrap_or_else(|| panic!("no reply from {node}: {replies}"))
}

fn node_of(worker: &TestWorker) -> String {
    format!("{}@{}", worker.queue, host_name())
}

#[tokio::test]
async fn celery_inspect_answers_for_a_rust_worker() {
    let w = TestWorker::start("rc-inspect", 2).await;
    let node = node_of(&w);
    let n = node.as_str();
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

    assert_eq!(
        reply_of(n, &["inspect", "ping"]).await,
        json!({"ok": "pong"})
    );

    let stats = reply_of(n, &["inspect", "stats"]).await;
    assert_eq!(stats["total"]["tasks.add"], 1, "{stats}");
    assert_eq!(stats["broker"]["transport"], "amqp", "{stats}");
    assert_eq!(stats["pool"]["max-concurrency"], 2, "{stats}");
    assert_eq!(stats["prefetch_count"], 8, "{stats}");
    assert!(stats["clock"].is_string(), "{stats}");
    assert_eq!(stats["pid"], std::process::id());

    let registered = reply_of(n, &["inspect", "registered"]).await;
    let names: Vec<&str> = registered
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        names.contains(&"tasks.add") && names.contains(&"rc.held"),
        "{registered}"
    );
    assert!(
        !names.iter().any(|name| name.starts_with("celery.")),
        "{registered}"
    );

    let queues = reply_of(n, &["inspect", "active_queues"]).await;
    assert_eq!(queues[0]["name"], w.queue.as_str(), "{queues}");
    for key in [
        "exclusive",
        "durable",
        "routing_key",
        "no_ack",
        "alias",
        "queue_arguments",
        "binding_arguments",
        "auto_delete",
    ] {
        assert!(queues[0].get(key).is_some(), "{key} missing: {queues}");
    }

    assert!(
        reply_of(n, &["inspect", "clock"]).await["clock"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        reply_of(n, &["inspect", "conf"]).await["worker_concurrency"],
        2
    );
    // Revokes are shared by every worker (the revoke log): other tests'.
    assert!(reply_of(n, &["inspect", "revoked"]).await.is_array());
    assert_eq!(reply_of(n, &["inspect", "scheduled"]).await, json!([]));
    assert_eq!(reply_of(n, &["inspect", "reserved"]).await, json!([]));

    // A running task, as `active` and `query_task` show it.
    let running = w
        .app
        .signature("rc.held")
        .arg("inspected")
        .returning::<String>()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    gate("inspected").started.notified().await;
    let active = reply_of(n, &["inspect", "active"]).await;
    let task = &active[0];
    assert_eq!(task["id"], running.id(), "{active}");
    assert_eq!(
        (&task["name"], &task["args"]),
        (&json!("rc.held"), &json!(["inspected"]))
    );
    assert_eq!(task["hostname"], n);
    assert_eq!(task["delivery_info"]["routing_key"], w.queue.as_str());
    assert!(task["time_start"].as_f64().unwrap() > 0.0, "{active}");
    let queried = reply_of(n, &["inspect", "query_task", running.id()]).await;
    assert_eq!(queried[running.id()][0], "active", "{queried}");
    gate("inspected").release.notify_one();
    assert_eq!(running.get(TIMEOUT).await.unwrap(), "inspected");

    // The Rust API gets the same answers.
    let control = w.app.control();
    let pong = control.ping(Broadcast::to([n], TIMEOUT)).await.unwrap();
    assert_eq!(pong, [(node.clone(), json!({"ok": "pong"}))]);
    w.stop().await;
}

#[tokio::test]
async fn celery_control_changes_a_rust_workers_limits_pool_and_events() {
    let w = TestWorker::start("rc-control", 2).await;
    let node = node_of(&w);
    let n = node.as_str();

    let limited = reply_of(n, &["control", "rate_limit", "tasks.add", "10/m"]).await;
    assert_eq!(limited, json!({"ok": "new rate limit set successfully"}));
    let registered = reply_of(n, &["inspect", "registered"]).await;
    assert!(
        registered
            .as_array()
            .unwrap()
            .contains(&json!("tasks.add [rate_limit=10/m]")),
        "{registered}"
    );
    let unknown = reply_of(n, &["control", "rate_limit", "no.such.task", "1/s"]).await;
    assert_eq!(unknown, json!({"error": "unknown task"}));
    let unlimited = reply_of(n, &["control", "rate_limit", "tasks.add", "0"]).await;
    assert_eq!(unlimited["ok"], "rate limit disabled successfully");

    let timed = reply_of(n, &["control", "time_limit", "rc.held", "0.5", "1"]).await;
    assert_eq!(timed, json!({"ok": "time limits set successfully"}));
    let timed_out = w
        .app
        .signature("rc.held")
        .arg("late")
        .returning::<String>()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    match timed_out.get(TIMEOUT).await {
        Err(Error::TaskFailed(failure)) => assert_eq!(failure.exc_type, "TimeLimitExceeded"),
        other => panic!("the new time limit stops the task: {other:?}"),
    }

    assert_eq!(
        reply_of(n, &["control", "pool_grow", "2"]).await["ok"],
        "pool will grow"
    );
    assert_eq!(
        reply_of(n, &["inspect", "stats"]).await["pool"]["max-concurrency"],
        4
    );
    assert_eq!(
        reply_of(n, &["control", "pool_shrink", "3"]).await["ok"],
        "pool will shrink"
    );
    assert_eq!(
        reply_of(n, &["inspect", "stats"]).await["pool"]["max-concurrency"],
        1
    );
    // Celery's answer where autoscaling is off.
    assert_eq!(
        reply_of(n, &["control", "autoscale", "3", "1"]).await,
        json!({"error": "Autoscale not enabled"})
    );
    let floor = reply_of(n, &["control", "pool_shrink", "1"]).await;
    assert!(
        floor["error"].as_str().unwrap().contains("below one"),
        "{floor}"
    );

    assert_eq!(
        reply_of(n, &["control", "enable_events"]).await["ok"],
        "task events enabled"
    );
    assert_eq!(
        reply_of(n, &["inspect", "conf"]).await["worker_send_task_events"],
        true
    );
    assert_eq!(
        reply_of(n, &["control", "disable_events"]).await["ok"],
        "task events disabled"
    );
    assert_eq!(
        reply_of(n, &["inspect", "conf"]).await["worker_send_task_events"],
        false
    );

    let unknown = reply_of(n, &["control", "autoscale", "4", "1"]).await;
    assert!(unknown.get("error").is_some(), "{unknown}");

    // Queues added and cancelled while it runs.
    let extra = common::unique_queue("rc-control-extra");
    let added = reply_of(n, &["control", "add_consumer", &extra]).await;
    assert_eq!(added["ok"], format!("add consumer {extra}"));
    let queues = reply_of(n, &["inspect", "active_queues"]).await;
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert_eq!(names, [w.queue.as_str(), extra.as_str()]);
    let on_extra = w
        .app
        .signature("tasks.add")
        .arg(1)
        .arg(1)
        .returning::<i64>();
    let sum = on_extra
        .queue(extra.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(sum.get(TIMEOUT).await.unwrap(), 2);
    let cancelled = reply_of(n, &["control", "cancel_consumer", &w.queue]).await;
    assert_eq!(
        cancelled["ok"],
        format!("no longer consuming from {}", w.queue)
    );
    let queues = reply_of(n, &["inspect", "active_queues"]).await;
    assert_eq!(queues.as_array().unwrap().len(), 1, "{queues}");
    let last = reply_of(n, &["control", "cancel_consumer", &extra]).await;
    assert!(
        last["error"].as_str().unwrap().contains("only queue"),
        "{last}"
    );
    w.app.broker().delete_queue(&extra).await.unwrap();
    w.app.broker().delete_exchange(&extra).await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn a_revoked_task_never_runs_and_terminate_stops_a_running_one() {
    let w = TestWorker::start("rc-revoke", 2).await;
    let node = node_of(&w);
    let n = node.as_str();

    // Revoked before it is sent: REVOKED, never run.
    let id = uuid::Uuid::new_v4().to_string();
    let flagged = reply_of(n, &["control", "revoke", &id]).await;
    assert_eq!(
        flagged["ok"],
        format!("tasks {{'{id}'}} flagged as revoked")
    );
    let revoked = reply_of(n, &["inspect", "revoked"]).await;
    assert!(
        revoked.as_array().unwrap().contains(&json!(id)),
        "{revoked}"
    );
    let revoked = w
        .app
        .signature("rc.held")
        .arg("never")
        .returning::<String>()
        .task_id(id.clone())
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert!(matches!(
        revoked.get(TIMEOUT).await,
        Err(Error::Revoked { .. })
    ));

    // Terminated while it runs: the async body is dropped, REVOKED
    // "terminated" to the caller.
    let running = w
        .app
        .signature("rc.held")
        .arg("stopped")
        .returning::<String>()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    gate("stopped").started.notified().await;
    let terminated = reply_of(n, &["control", "terminate", "SIGTERM", running.id()]).await;
    assert_eq!(terminated["ok"], format!("terminate: {}", running.id()));
    match running.get(TIMEOUT).await {
        Err(Error::Revoked { reason, .. }) => assert!(reason.contains("terminated"), "{reason}"),
        other => panic!("terminated: {other:?}"),
    }

    // A blocking body cannot be interrupted: the reply says so.
    let blocking = w
        .app
        .signature("rc.blocking_held")
        .returning::<u32>()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    BLOCKING_STARTED.notified().await;
    let refused = reply_of(n, &["control", "terminate", "SIGKILL", blocking.id()]).await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("cannot be interrupted"),
        "{refused}"
    );
    RELEASE_BLOCKING.store(true, Ordering::Relaxed);
    let _ = blocking.get(TIMEOUT).await;
    w.stop().await;
}

#[tokio::test]
async fn requests_reach_only_the_workers_they_name() {
    let a = TestWorker::start("rc-dest-a", 1).await;
    let b = TestWorker::start("rc-dest-b", 1).await;
    let (node_a, node_b) = (node_of(&a), node_of(&b));
    let both = celery(&["inspect", "ping", "-d", &format!("{node_a},{node_b}")]).await;
    assert_eq!(both.as_object().unwrap().len(), 2, "{both}");
    let one = celery(&["inspect", "ping", "-d", &node_a]).await;
    assert_eq!(
        one.as_object().unwrap().keys().collect::<Vec<_>>(),
        [&node_a]
    );

    // A glob pattern, through the Rust API.
    let control = a.app.control();
    let to_b = Broadcast {
        destination: None,
        pattern: Some(format!("{}@*", b.queue)),
        reply_timeout: Some(Duration::from_secs(2)),
    };
    let replies = control.ping(to_b).await.unwrap();
    assert_eq!(replies, [(node_b.clone(), json!({"ok": "pong"}))]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_revoke_reaches_workers_started_later_and_shutdown_stops_a_worker() {
    // Revoked through the `celery` command line while only `a` runs: `a`
    // writes it to the revoke log.
    let a = TestWorker::start("rc-later-a", 1).await;
    let node_a = node_of(&a);
    let id = uuid::Uuid::new_v4().to_string();
    reply_of(&node_a, &["control", "revoke", &id]).await;
    a.stop().await;

    // `b` starts after `a` stopped: it read the log before it took tasks
    // (and before it answers remote control).
    let b = TestWorker::start("rc-later-b", 1).await;
    let node_b = node_of(&b);
    let known = reply_of(&node_b, &["inspect", "revoked"]).await;
    assert!(known.as_array().unwrap().contains(&json!(id)), "{known}");
    let never = b
        .app
        .signature("rc.held")
        .arg("never")
        .returning::<String>()
        .task_id(id.clone())
        .queue(b.queue.clone())
        .apply_async_with(&b.app)
        .await
        .unwrap();
    assert!(matches!(
        never.get(TIMEOUT).await,
        Err(Error::Revoked { .. })
    ));

    // Revoked through the Rust API: logged by the client itself.
    let other = uuid::Uuid::new_v4().to_string();
    b.app.control().revoke(&other, false).await.unwrap();
    let c = TestWorker::start("rc-later-c", 1).await;
    let known = reply_of(&node_of(&c), &["inspect", "revoked"]).await;
    assert!(known.as_array().unwrap().contains(&json!(other)), "{known}");
    c.stop().await;

    // `shutdown` stops the worker (no reply, as in Celery).
    let none = celery(&["control", "shutdown", "-d", &node_b]).await;
    assert_eq!(none, json!({}));
    b.wait_stopped(TIMEOUT).await;
}

/// The worker binary's own `inspect` / `control` commands, for teams
/// without Python: Celery's output, exit code 69 when no worker replied.
#[tokio::test]
async fn the_worker_binary_inspects_and_controls_running_workers() {
    let w = TestWorker::start("rc-binary", 1).await;
    let node = node_of(&w);
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let mut command = Command::new(common::example_binary("worker"));
            command
                .args(["--broker", &common::broker_url()])
                .args(&args);
            common::output_within(command, common::CHILD_PROCESS_TIMEOUT)
        })
        .await
        .unwrap()
    };
    let args = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();

    let ping = run(args(&["inspect", "ping", "-d", &node, "-t", "5"])).await;
    let text = String::from_utf8_lossy(&ping.stdout);
    let errors = String::from_utf8_lossy(&ping.stderr);
    assert!(ping.status.success(), "{text}{errors}");
    assert!(
        text.contains(&format!("->  {node}: OK")) && text.contains("pong"),
        "{text}"
    );

    let limited = run(args(&[
        "control",
        "rate_limit",
        "tasks.add",
        "5/s",
        "-d",
        &node,
        "-t",
        "5",
    ]))
    .await;
    assert!(String::from_utf8_lossy(&limited.stdout).contains("new rate limit set successfully"));
    let registered = run(args(&[
        "inspect",
        "registered",
        "-d",
        &node,
        "-t",
        "5",
        "--json",
    ]))
    .await;
    let replies: Value = serde_json::from_slice(&registered.stdout).unwrap();
    assert!(replies[&node]
        .as_array()
        .unwrap()
        .contains(&json!("tasks.add [rate_limit=5/s]")));

    let nobody = run(args(&[
        "inspect",
        "ping",
        "-d",
        "nobody@nowhere",
        "-t",
        "0.5",
    ]))
    .await;
    assert_eq!(nobody.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("No nodes replied"));

    let shutdown = run(args(&["control", "shutdown", "-d", &node])).await;
    assert!(shutdown.status.success());
    w.wait_stopped(TIMEOUT).await;
}

/// `stats.autoscaler` of `node` (asked through the Rust API).
async fn autoscaler_of(w: &TestWorker, node: &str) -> Value {
    let replies = w
        .app
        .control()
        .inspect("stats", Broadcast::to([node], Duration::from_secs(2)))
        .await
        .unwrap();
    let (_, stats) = replies
        .into_iter()
        .find(|(name, _)| name == node)
        .unwrap_or_else(|| panic!("no stats from {node}"));
    stats["autoscaler"].clone()
}

#[tokio::test]
async fn an_autoscaled_worker_grows_with_its_backlog_and_shrinks_when_idle() {
    use task_worker::autoscale::Autoscale;
    let queue = common::unique_queue("rc-autoscale");
    let app = common::client(&[&queue]).await;
    let w = TestWorker::start_on(queue, app, 1, |builder| {
        builder
            .autoscale(Autoscale::new(3, 1).unwrap())
            .autoscale_keepalive(Duration::from_millis(300))
    })
    .await;
    let node = node_of(&w);
    let n = node.as_str();
    let idle = autoscaler_of(&w, n).await;
    assert_eq!(idle, json!({"max": 3, "min": 1, "current": 1, "qty": 0}));

    // Three tasks that run until released: all three run at once only if
    // the worker grew from its one slot.
    let tags: Vec<String> = (0..3).map(|i| format!("{}-{i}", w.queue)).collect();
    let mut handles = Vec::new();
    for tag in &tags {
        let handle = w
            .app
            .signature("rc.held")
            .arg(tag.clone())
            .returning::<String>()
            .queue(w.queue.clone())
            .apply_async_with(&w.app)
            .await
            .unwrap();
        handles.push(handle);
    }
    for tag in &tags {
        tokio::time::timeout(TIMEOUT, gate(tag).started.notified())
            .await
            .unwrap_or_else(|_| panic!("{tag} never started: the worker did not grow"));
    }
    assert_eq!(autoscaler_of(&w, n).await["current"], 3);
    for tag in &tags {
        gate(tag).release.notify_one();
    }
    for (handle, tag) in handles.into_iter().zip(&tags) {
        assert_eq!(&handle.get(TIMEOUT).await.unwrap(), tag);
    }

    // Idle past the keep-alive: back to its minimum.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while autoscaler_of(&w, n).await["current"] != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never shrank back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // New bounds from the command line: at least two slots at once.
    assert_eq!(
        reply_of(n, &["control", "autoscale", "5", "2"]).await,
        json!({"ok": "autoscale now max=5 min=2"})
    );
    let bounds = autoscaler_of(&w, n).await;
    assert_eq!(
        (bounds["max"].clone(), bounds["min"].clone()),
        (json!(5), json!(2))
    );
    assert_eq!(
        reply_of(n, &["inspect", "stats"]).await["pool"]["max-concurrency"],
        2
    );
    w.stop().await;
}

#[tokio::test]
async fn stamped_tasks_are_revoked_by_their_stamps_and_report_answers() {
    let w = TestWorker::start("rc-stamps", 2).await;
    let node = node_of(&w);
    let n = node.as_str();

    let report = reply_of(n, &["inspect", "report"]).await;
    let text = report["ok"].as_str().unwrap_or_default();
    assert!(text.contains("software -> task-worker:"), "{report}");

    // Revoked by the `celery` command line before the task is sent.
    let stamp = format!("{}-revoked", w.queue);
    let revoked = reply_of(
        n,
        &[
            "control",
            "revoke_by_stamped_headers",
            &format!("mtask_id={stamp}"),
        ],
    )
    .await;
    assert_eq!(
        revoked["ok"],
        format!("headers {{'mtask_id': '{stamp}'}} flagged as revoked, but not terminated")
    );
    let add = |stamp: &str| {
        w.app
            .signature("tasks.add")
            .arg(1)
            .arg(2)
            .returning::<i64>()
            .queue(w.queue.clone())
            .stamp("mtask_id", stamp)
    };
    let never = add(&stamp).apply_async_with(&w.app).await.unwrap();
    match never.get(TIMEOUT).await {
        Err(Error::Revoked { .. }) => {}
        other => panic!("revoked by its stamp: {other:?}"),
    }
    let other = add("another").apply_async_with(&w.app).await.unwrap();
    assert_eq!(other.get(TIMEOUT).await.unwrap(), 3);

    // With terminate (through the Rust API): a running task with the stamp
    // is stopped.
    let tag = format!("{}-held", w.queue);
    let running = w
        .app
        .signature("rc.held")
        .arg(tag.clone())
        .returning::<String>()
        .queue(w.queue.clone())
        .stamp("batch", json!(["x", "late"]))
        .apply_async_with(&w.app)
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, gate(&tag).started.notified())
        .await
        .expect("the held task starts");
    let mut arguments = serde_json::Map::new();
    arguments.insert("headers".into(), json!({"batch": "late"}));
    arguments.insert("terminate".into(), json!(true));
    let replies = w
        .app
        .control()
        .request(
            "revoke_by_stamped_headers",
            arguments,
            &Broadcast::to([n], Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].1["ok"], "headers [{'batch': 'late'}] revoked");
    match running.get(TIMEOUT).await {
        Err(Error::Revoked { reason, .. }) => assert_eq!(reason, "terminated"),
        other => panic!("terminated by its stamp: {other:?}"),
    }
    w.stop().await;
}
