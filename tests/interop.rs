//! Wire compatibility with the real Python Celery 5.7 (`rpc://` results), both
//! ways, over the real RabbitMQ: Python clients call Rust tasks, Rust calls
//! tasks run by a Python Celery worker.
//!
//! The venv with `celery==5.7.0` is built on first use by
//! `scripts/ensure-python-celery.sh` (git-ignored `.venv-interop/`, reused).

mod common;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use task_core::broker::QueueSpec;
use task_core::{task, App, Error, Signature, TaskError};
// Link the example tasks (tasks.add, ...) into this test binary.
use task_examples as _;
use task_worker::Worker;

const TIMEOUT: Duration = Duration::from_secs(60);

use common::TestWorker;
use common::{plain_app, python, repo};

#[task(name = "interop.echo_json")]
async fn echo_json(value: Value) -> Result<Value, TaskError> {
    Ok(value)
}

#[task(name = "interop.value_error")]
async fn value_error(message: String) -> Result<i64, TaskError> {
    Err(TaskError::new("ValueError", message))
}

/// Fails as `raise ExpectedException('Task expected to fail', 'test')` in
/// the Python module `interop_errors` (`tests/interop/interop_errors.py`).
#[task(name = "interop.expected_failure")]
async fn expected_failure() -> Result<i64, TaskError> {
    Err(TaskError::new("ExpectedException", "Task expected to fail")
        .with_module("interop_errors")
        .with_args([json!("Task expected to fail"), json!("test")]))
}

/// Rejects its first delivery (requeued or not); a redelivery returns
/// `true`.
#[task(name = "interop.reject_first")]
async fn reject_first(requeue: bool) -> Result<bool, TaskError> {
    let task = task_core::current_task().ok_or_else(|| TaskError::msg("no task context"))?;
    if task.delivery().redelivered {
        return Ok(true);
    }
    Err(TaskError::reject("not now", requeue))
}

/// Called with `x` positionally, retries with it as a keyword argument
/// (and the other way round): reports how its last run got it.
#[task(name = "interop.switch")]
async fn switch(x: i64) -> Result<String, TaskError> {
    let task = task_core::current_task().ok_or_else(|| TaskError::msg("no task context"))?;
    let positional = task.header("x_positional").is_none() && task.retries() == 0;
    if task.retries() == 0 {
        let retry = task_core::Retry::new().countdown(Duration::from_millis(50));
        let retry = if positional {
            retry
                .args([])
                .kwargs(json!({"x": x + 1}).as_object().cloned().unwrap_or_default())
        } else {
            retry.args([json!(x + 1)]).kwargs(serde_json::Map::new())
        };
        return Err(TaskError::msg("switch").retry_with(retry));
    }
    Ok(format!("{x} after {} retry", task.retries()))
}

/// What a Rust task sees of a request a Python client sent.
#[task(name = "interop.request")]
async fn request_fields() -> Result<Value, TaskError> {
    let task = task_core::current_task().ok_or_else(|| TaskError::msg("no task context"))?;
    let (hard, soft) = task.time_limits();
    Ok(json!({
        "eta": task.eta().is_some(),
        "expires": task.expires().is_some(),
        "reply_to": task.reply_to().is_some(),
        "time_limit": hard.map(|d| d.as_secs_f64()),
        "soft_time_limit": soft.map(|d| d.as_secs_f64()),
        "priority": task.delivery().priority,
        "root_id": task.root_id(),
        "hostname": task.hostname().is_some(),
        "nesting": task.replaced_task_nesting(),
        "header": task.header("x_custom"),
    }))
}

async fn cleanup(app: &App, queue: &str) {
    app.broker().delete_queue(queue).await.unwrap();
    let dead_letters = QueueSpec::dead_letter_queue(queue).name;
    app.broker().delete_queue(&dead_letters).await.unwrap();
    app.broker().delete_exchange(queue).await.unwrap();
    app.close().await.unwrap();
}

// ---------------------------------------------------------------- Python → Rust

/// A Rust worker on its own (plain, Celery-declared) queue.
async fn rust_worker(label: &str) -> TestWorker {
    TestWorker::start_on(common::unique_queue(label), plain_app().await, 4, |b| b).await
}

/// Runs the Python client on `calls` and returns its per-call reports.
async fn python_client(calls: Value) -> Vec<Value> {
    let python = python().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(python);
        command
            .arg(repo().join("tests/interop/py_client.py"))
            .arg(calls.to_string())
            .env("BROKER_URL", common::broker_url());
        let output = common::output_within(command, common::CHILD_PROCESS_TIMEOUT);
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        output
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "python client failed: {}",
        output.status
    );
    serde_json::from_slice(&output.stdout).expect("python client prints JSON")
}

#[tokio::test]
async fn python_calls_rust_tasks_with_positional_and_keyword_arguments() {
    let w = rust_worker("py2rs-args").await;
    let nested = json!({
        "text": "naïve café ✓ 日本",
        "nested": {"list": [1, 2.5, null, true, {"deep": "é"}], "empty": {}},
        "null": null,
        "big": 4_611_686_018_427_387_904_i64,
        "negative": -9_007_199_254_740_993_i64,
        "float": 0.1,
    });
    let q = &w.queue;
    let reports = python_client(json!([
        {"name": "tasks.add", "queue": q, "args": [2, 3]},
        {"name": "tasks.add", "queue": q, "kwargs": {"x": 2, "y": 40}},
        {"name": "tasks.add", "queue": q, "args": [4_000_000_000_000_i64], "kwargs": {"y": 1}},
        {"name": "tasks.hello", "queue": q, "args": ["Zoë ✓"]},
        {"name": "interop.echo_json", "queue": q, "args": [nested]},
        {"name": "interop.echo_json", "queue": q, "kwargs": {"value": null}},
        {"name": "tasks.stats", "queue": q, "args": [[1.5, 2.5]]},
        // Replaced by tasks.add on the Rust worker: the Python caller gets
        // the replacement's result over rpc:// (Celery's own worker would
        // send it to itself).
        {"name": "tasks.delegate_add", "queue": q, "args": [20, 22]},
    ]))
    .await;
    let values: Vec<&Value> = reports.iter().map(|r| &r["result"]).collect();
    assert!(
        reports.iter().all(|r| r["status"] == "SUCCESS"),
        "{reports:#?}"
    );
    assert_eq!(values[0], &json!(5));
    assert_eq!(values[1], &json!(42));
    assert_eq!(values[2], &json!(4_000_000_000_001_i64));
    assert_eq!(values[3], &json!("Hello, Zoë ✓!"));
    assert_eq!(values[4], &nested);
    assert_eq!(values[5], &Value::Null);
    assert_eq!(values[6], &json!({"count": 2, "mean": 2.0, "max": 2.5}));
    assert_eq!(values[7], &json!(42));
    w.stop().await;
}

#[tokio::test]
async fn python_sees_rust_errors_started_and_revoked_like_from_a_python_worker() {
    let w = rust_worker("py2rs-states").await;
    let q = &w.queue;
    let reports = python_client(json!([
        {"name": "tasks.parse_int", "queue": q, "args": ["forty-two"]},
        {"name": "interop.value_error", "queue": q, "args": ["bad value"]},
        {"name": "tasks.add", "queue": q, "args": ["two", 3]},
        {"name": "tasks.nope", "queue": q, "args": []},
        {"name": "tasks.sleep", "queue": q, "args": [0.3], "watch_states": true},
        {"name": "tasks.add", "queue": q, "args": [1, 2], "options": {"expires": -10}},
        {"name": "interop.expected_failure", "queue": q},
        {"name": "interop.reject_first", "queue": q, "args": [false]},
        {"name": "interop.reject_first", "queue": q, "args": [true]},
        {"name": "interop.switch", "queue": q, "args": [1]},
        {"name": "interop.switch", "queue": q, "kwargs": {"x": 10}, "options": {"headers": {"x_positional": false}}},
        {"name": "interop.request", "queue": q, "options": {
            "countdown": 0.2, "expires": 3600, "priority": 5, "time_limit": 30,
            "soft_time_limit": 20, "headers": {"x_custom": "yes"}}},
    ]))
    .await;

    // Reject without requeue: Celery's own class; with requeue: run again.
    let rejected = &reports[7];
    assert_eq!(
        (&rejected["exc_type"], &rejected["exc_module"]),
        (&json!("Reject"), &json!("celery.exceptions")),
        "{rejected}"
    );
    assert_eq!(rejected["args"], json!(["not now", false]));
    assert_eq!(reports[8]["result"], json!(true), "{:#?}", reports[8]);
    // Retries that switch positional and keyword arguments.
    assert_eq!(reports[9]["result"], "2 after 1 retry", "{:#?}", reports[9]);
    assert_eq!(
        reports[10]["result"], "11 after 1 retry",
        "{:#?}",
        reports[10]
    );

    // Every request field Celery's client set.
    let request = &reports[11]["result"];
    assert_eq!(
        request,
        &json!({"eta": true, "expires": true, "reply_to": true, "time_limit": 30.0,
                "soft_time_limit": 20.0, "priority": 5, "root_id": reports[11]["id"],
                "hostname": true, "nesting": 0, "header": "yes"}),
        "{reports:#?}"
    );

    // The caller's own class (its module imported), with both arguments.
    let expected = &reports[6];
    assert_eq!(
        (&expected["exc_type"], &expected["exc_module"]),
        (&json!("ExpectedException"), &json!("interop_errors")),
        "{expected}"
    );
    assert_eq!(expected["args"], json!(["Task expected to fail", "test"]));

    let rust_error = &reports[0];
    assert_eq!(rust_error["status"], "FAILURE");
    assert_eq!(rust_error["exc_type"], "ParseIntError");
    assert_eq!(rust_error["message"], "invalid digit found in string");

    let builtin = &reports[1];
    assert_eq!(
        (&builtin["exc_type"], &builtin["exc_module"]),
        (&json!("ValueError"), &json!("builtins"))
    );
    assert_eq!(builtin["message"], "bad value");

    let bad_args = &reports[2];
    assert_eq!(bad_args["exc_type"], "TypeError");
    assert!(
        bad_args["message"]
            .as_str()
            .unwrap()
            .contains("argument `x`"),
        "{bad_args}"
    );

    let unknown = &reports[3];
    assert_eq!(unknown["exc_type"], "NotRegistered");

    let tracked = &reports[4];
    assert_eq!(tracked["result"], json!(0.3));
    let states: Vec<&str> = tracked["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(states.contains(&"STARTED"), "states seen: {states:?}");
    assert_eq!(states.last(), Some(&"SUCCESS"));

    let expired = &reports[5];
    assert_eq!(expired["status"], "REVOKED");
    assert_eq!(expired["exc_type"], "TaskRevokedError");
    w.stop().await;
}

/// What `interop.record` was called with, by label.
static RECORDED: Mutex<Vec<(i64, String)>> = Mutex::new(Vec::new());

/// The values `interop.record` got with `label`, once there is one (or
/// fails with `never`).
async fn recorded_with(label: &str, never: &str) -> Vec<i64> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let calls: Vec<i64> = RECORDED
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l == label)
            .map(|(value, _)| *value)
            .collect();
        if !calls.is_empty() {
            return calls;
        }
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[task(name = "interop.record")]
async fn record(value: i64, label: String) -> Result<(), TaskError> {
    RECORDED.lock().unwrap().push((value, label));
    Ok(())
}

#[tokio::test]
async fn python_canvas_runs_on_a_rust_worker() {
    let w = rust_worker("py2rs-canvas").await;
    let q = &w.queue;
    let label = format!("linked-{q}");
    let reports = python_client(json!([
        // chain(add.s(2, 3), add.s(10), add.s(100)): the caller waits on
        // the last step's id.
        {"name": "tasks.add", "queue": q, "args": [2, 3],
         "chain": [{"name": "tasks.add", "args": [10]}, {"name": "tasks.add", "args": [100]}]},
        // A callback gets the parent's result in front of its arguments.
        {"name": "tasks.add", "queue": q, "args": [1, 1], "link": {"name": "interop.record", "args": [&label]}},
        // A step that fails: the rest of the chain never runs, and the
        // caller of its last step hears of the failure.
        {"name": "tasks.add", "queue": q, "args": [1, 1],
         "chain": [{"name": "tasks.parse_int", "args": []}, {"name": "tasks.add", "args": [1]}]},
        {"name": "tasks.add", "queue": q, "args": [2, 2]},
    ]))
    .await;
    assert_eq!(reports[0]["result"], json!(115), "{:#}", reports[0]);
    assert_eq!(reports[1]["result"], json!(2), "{:#}", reports[1]);
    assert_eq!(reports[2]["status"], "FAILURE", "{:#}", reports[2]);
    assert_eq!(reports[2]["exc_type"], "TypeError", "{:#}", reports[2]);
    assert_eq!(reports[3]["result"], json!(4), "plain calls still run");
    let calls = recorded_with(&label, "the callback never ran").await;
    assert_eq!(
        calls,
        [2],
        "the callback ran once, with the parent's result"
    );
    w.stop().await;
}

#[tokio::test]
async fn python_sees_the_rust_error_and_its_causes_as_the_traceback() {
    let w = rust_worker("py2rs-traceback").await;
    let reports = python_client(json!([
        {"name": "interop.chained_error", "queue": &w.queue, "args": []},
    ]))
    .await;
    assert_eq!(reports[0]["exc_type"], "ConfigError");
    assert_eq!(reports[0]["message"], "could not load the configuration");
    assert_eq!(
        reports[0]["traceback"],
        "ConfigError: could not load the configuration\nCaused by:\n    file not found: app.toml"
    );
    w.stop().await;
}

#[derive(Debug, thiserror::Error)]
#[error("could not load the configuration")]
struct ConfigError(#[source] std::io::Error);

#[task(name = "interop.chained_error")]
async fn chained_error() -> Result<(), ConfigError> {
    Err(ConfigError(std::io::Error::other(
        "file not found: app.toml",
    )))
}

#[tokio::test]
async fn python_countdown_is_honoured_by_the_rust_worker() {
    let w = rust_worker("py2rs-countdown").await;
    let reports = python_client(json!([
        {"name": "tasks.add", "queue": &w.queue, "args": [1, 1], "options": {"countdown": 1}},
    ]))
    .await;
    assert_eq!(reports[0]["result"], json!(2));
    let elapsed = reports[0]["elapsed"].as_f64().unwrap();
    assert!(elapsed >= 1.0, "ran {elapsed} s after sending");
    w.stop().await;
}

static PRIORITY_ORDER: Mutex<Vec<i64>> = Mutex::new(Vec::new());

#[task(name = "interop.record_priority")]
async fn record_priority(priority: i64) -> Result<i64, TaskError> {
    PRIORITY_ORDER.lock().unwrap().push(priority);
    Ok(priority)
}

#[tokio::test]
async fn python_priorities_order_a_rust_workers_priority_queue() {
    let queue = common::unique_queue("py2rs-priority");
    let spec = QueueSpec::task_queue(queue.clone()).max_priority(10);
    let app = App::builder()
        .broker_url(common::broker_url())
        .set_as_default(false)
        .queue(spec)
        .connect()
        .await
        .unwrap();
    app.ensure_queue(&queue).await.unwrap();
    let priorities = [1, 9, 5, 3, 7];
    let calls: Vec<Value> = priorities
        .iter()
        .map(|p| {
            json!({"name": "interop.record_priority", "queue": &queue, "args": [p],
                   "queue_arguments": {"x-max-priority": 10}, "options": {"priority": p}})
        })
        .collect();
    // The client sends everything, then waits; the worker starts once all are queued.
    let client = tokio::spawn(python_client(Value::Array(calls)));
    let deadline = Instant::now() + TIMEOUT;
    while app.broker().queue_message_count(&queue).await.unwrap() < priorities.len() as u32 {
        assert!(
            Instant::now() < deadline,
            "the python client did not publish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worker = Worker::builder()
        .app(app.clone())
        .queues([queue.clone()])
        .concurrency(1)
        .prefetch(1)
        .build()
        .await
        .unwrap();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let reports = client.await.unwrap();
    assert!(
        reports.iter().all(|r| r["status"] == "SUCCESS"),
        "{reports:#?}"
    );
    assert_eq!(*PRIORITY_ORDER.lock().unwrap(), [9, 7, 5, 3, 1]);
    stop.cancel();
    running.await.unwrap().unwrap();
    cleanup(&app, &queue).await;
}

#[tokio::test]
async fn the_default_queue_is_declared_exactly_as_celery_declares_it() {
    // Python declares `celery` as Celery does, then Rust, then Python again:
    // any difference in flags or arguments would be a PRECONDITION_FAILED.
    let declare_in_python = || {
        let status = Command::new(python())
            .args(["-c", "from pyapp import app\nwith app.connection() as c:\n    app.amqp.queues[app.conf.task_default_queue](c.default_channel).declare()"])
            .current_dir(repo().join("tests/interop"))
            .env("BROKER_URL", common::broker_url())
            .status()
            .expect("python runs");
        assert!(status.success(), "Python could not declare `celery`");
    };
    tokio::task::spawn_blocking(declare_in_python)
        .await
        .unwrap();
    let app = plain_app().await;
    app.ensure_queue(task_core::DEFAULT_QUEUE)
        .await
        .expect("Rust declares `celery` like Celery");
    tokio::task::spawn_blocking(declare_in_python)
        .await
        .unwrap();
    app.close().await.unwrap();
}

#[tokio::test]
async fn a_python_and_a_rust_worker_share_one_queue() {
    let queue = common::unique_queue("mixed-fleet");
    let app = plain_app().await;
    let _python = python_worker(&app, &queue).await;
    let worker = Worker::builder()
        .app(app.clone())
        .queues([queue.clone()])
        .concurrency(2)
        .build()
        .await
        .unwrap();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let sends = (0..40).map(|i| {
        Signature::<i64>::new("tasks.add")
            .arg(i)
            .arg(1000)
            .queue(queue.clone())
            .apply_async_with(&app)
    });
    let pending = futures_util::future::try_join_all(sends).await.unwrap();
    for (i, p) in pending.iter().enumerate() {
        assert_eq!(p.get(TIMEOUT).await.unwrap(), i as i64 + 1000);
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    drop(_python);
    cleanup(&app, &queue).await;
}

#[tokio::test]
async fn a_python_task_that_expires_behind_a_busy_late_ack_worker_comes_back_revoked() {
    // Declared as the Python client declares it too: what the broker drops
    // goes to the workers' drain.
    let queue = common::unique_queue("py2rs-expired");
    let spec = QueueSpec::task_queue(queue.clone()).revoking_expired();
    let app = App::builder()
        .broker_url(common::broker_url())
        .set_as_default(false)
        .queue(spec)
        .connect()
        .await
        .unwrap();
    // One task at a time, one message ahead: the second waits in the queue
    // while the first runs, past its expiry.
    let w = TestWorker::start_on(queue.clone(), app, 1, |b| b.prefetch(1)).await;
    let declared = json!({"x-dead-letter-exchange": "task_core.expired"});
    let reports = python_client(json!([
        {"name": "tasks.sleep", "queue": &queue, "queue_arguments": declared, "args": [1.5]},
        {"name": "tasks.add", "queue": &queue, "queue_arguments": declared, "args": [1, 2],
         "options": {"expires": 0.5}},
    ]))
    .await;
    assert_eq!(reports[0]["result"], json!(1.5), "{reports:#?}");
    assert_eq!(reports[1]["status"], "REVOKED", "{reports:#?}");
    assert_eq!(reports[1]["exc_type"], "TaskRevokedError", "{reports:#?}");
    w.stop().await;
}

/// A RabbitMQ policy, cleared when dropped.
struct Policy(String);

impl Policy {
    /// Sets policy `name` on the queues `pattern` matches.
    fn set(name: &str, pattern: &str, definition: &Value) -> Self {
        let status = Command::new("rabbitmqctl")
            .args(["set_policy", name, pattern, &definition.to_string()])
            .args(["--apply-to", "queues"])
            .stdout(Stdio::null())
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl set_policy failed");
        Self(name.to_owned())
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["clear_policy", &self.0])
            .stdout(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn on_a_queue_declared_as_celery_does_a_policy_brings_expired_tasks_back_revoked() {
    // Declared without arguments, as Celery declares `celery`: a policy
    // names the drain instead.
    let queue = common::unique_queue("py2rs-policy");
    let _policy = Policy::set(
        &queue,
        &format!("^{}$", queue.replace('.', "\\.")),
        &json!({"dead-letter-exchange": "task_core.expired"}),
    );
    let w = TestWorker::start_on(queue.clone(), plain_app().await, 1, |b| b.prefetch(1)).await;
    let reports = python_client(json!([
        {"name": "tasks.sleep", "queue": &queue, "args": [1.5]},
        {"name": "tasks.add", "queue": &queue, "args": [1, 2], "options": {"expires": 0.5}},
    ]))
    .await;
    assert_eq!(reports[0]["result"], json!(1.5), "{reports:#?}");
    assert_eq!(reports[1]["status"], "REVOKED", "{reports:#?}");
    w.stop().await;
}

// ---------------------------------------------------------------- Rust → Python

/// A Python Celery worker (`pyapp`) on `queue`, once it answered a task.
async fn python_worker(app: &App, queue: &str) -> common::PythonWorker {
    app.ensure_queue(queue).await.unwrap();
    let args = ["-Q", queue, "-P", "prefork", "-c", "2"];
    let worker = common::PythonWorker::spawn("pyapp", queue, &args, &[]);
    // Ready when it answers a task (the event, not a sleep).
    let ping = Signature::<i64>::new("py.add")
        .arg(0)
        .arg(0)
        .queue(queue.to_owned());
    let ping = ping.apply_async_with(app).await.unwrap();
    assert_eq!(ping.get(TIMEOUT).await.unwrap(), 0);
    worker
}

#[tokio::test]
async fn rust_calls_python_tasks_and_gets_values_and_errors() {
    let queue = common::unique_queue("rs2py-values");
    let app = plain_app().await;
    let _python = python_worker(&app, &queue).await;
    let call = |name: &'static str| Signature::<Value>::new(name).queue(queue.clone());

    let sum = call("py.add")
        .arg(2)
        .arg(3)
        .returning::<i64>()
        .apply_async_with(&app)
        .await
        .unwrap();
    let nested = json!({"text": "naïve ✓ 日本", "list": [1, null, {"x": 2.5}], "big": 9_007_199_254_740_993_i64});
    let echo = call("py.echo")
        .arg("é")
        .arg(Value::Null)
        .arg(1u64 << 62)
        .arg(-0.5)
        .kwarg("nested", nested.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    let failing = call("py.fail")
        .arg("bad input ✗")
        .apply_async_with(&app)
        .await
        .unwrap();
    let unknown = call("py.nope").apply_async_with(&app).await.unwrap();
    let expected = call("py.expected_failure")
        .apply_async_with(&app)
        .await
        .unwrap();
    let unserializable = call("py.unserializable_failure")
        .apply_async_with(&app)
        .await
        .unwrap();

    assert_eq!(sum.get(TIMEOUT).await.unwrap(), 5);
    assert_eq!(
        echo.get(TIMEOUT).await.unwrap(),
        json!({"args": ["é", null, 1u64 << 62, -0.5], "kwargs": {"nested": nested}})
    );
    match failing.get(TIMEOUT).await {
        Err(Error::TaskFailed(failure)) => {
            assert_eq!(failure.exc_type, "ValueError");
            assert_eq!(failure.message, "bad input ✗");
            assert!(
                failure
                    .traceback
                    .as_deref()
                    .unwrap_or("")
                    .contains("Traceback"),
                "{failure:?}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    match unknown.get(TIMEOUT).await {
        Err(Error::TaskFailed(failure)) => assert_eq!(failure.exc_type, "NotRegistered"),
        other => panic!("expected NotRegistered, got {other:?}"),
    }
    // Python's argument list, as sent.
    match expected.get(TIMEOUT).await {
        Err(Error::TaskFailed(failure)) => {
            assert_eq!(failure.exc_type, "ExpectedException");
            assert_eq!(failure.exc_module.as_deref(), Some("interop_errors"));
            assert_eq!(
                failure.exc_args,
                [json!("Task expected to fail"), json!("test")]
            );
        }
        other => panic!("expected ExpectedException, got {other:?}"),
    }
    // An argument Python could not serialize comes as Celery's worker sends
    // it: its repr.
    match unserializable.get(TIMEOUT).await {
        Err(Error::TaskFailed(failure)) => {
            let first = failure.exc_args[0].as_str().unwrap_or_default();
            assert!(first.starts_with("<object object at"), "{failure:?}");
            assert_eq!(failure.exc_args[1], "x");
        }
        other => panic!("expected ExpectedException, got {other:?}"),
    }
    drop(_python);
    cleanup(&app, &queue).await;
}

#[tokio::test]
async fn python_workers_honour_rust_call_options() {
    let queue = common::unique_queue("rs2py-options");
    let app = plain_app().await;
    let _python = python_worker(&app, &queue).await;
    let call = |name: &'static str| Signature::<Value>::new(name).queue(queue.clone());

    let eta = chrono::Utc::now() + chrono::Duration::milliseconds(1_500);
    let sent = Instant::now();
    let delayed = call("py.add")
        .arg(1)
        .arg(1)
        .countdown(Duration::from_secs(1))
        .apply_async_with(&app)
        .await
        .unwrap();
    let expired = call("py.add")
        .arg(1)
        .arg(1)
        .expires_at(chrono::Utc::now() - chrono::Duration::seconds(10))
        .apply_async_with(&app)
        .await
        .unwrap();
    let request = call("py.request")
        .eta(eta)
        .expires_in(Duration::from_secs(3600))
        .priority(7)
        .time_limit(Duration::from_secs(30))
        .soft_time_limit(Duration::from_secs(20))
        .apply_async_with(&app)
        .await
        .unwrap();
    let hard = call("py.sleep")
        .arg(10)
        .time_limit(Duration::from_secs(1))
        .apply_async_with(&app)
        .await
        .unwrap();
    let soft = call("py.soft_limited")
        .arg(10)
        .soft_time_limit(Duration::from_millis(500))
        .time_limit(Duration::from_secs(5))
        .apply_async_with(&app)
        .await
        .unwrap();

    assert_eq!(delayed.get(TIMEOUT).await.unwrap(), json!(2));
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "ran after {:?}",
        sent.elapsed()
    );
    match expired.get(TIMEOUT).await {
        Err(Error::Revoked { reason, .. }) => assert_eq!(reason, "expired"),
        other => panic!("expected REVOKED, got {other:?}"),
    }
    let seen = request.get(TIMEOUT).await.unwrap();
    assert!(chrono::Utc::now() >= eta, "ran before its eta");
    let seen_eta = chrono::DateTime::parse_from_rfc3339(seen["eta"].as_str().unwrap()).unwrap();
    assert_eq!(seen_eta.timestamp_micros(), eta.timestamp_micros());
    assert!(
        seen["expires"].as_str().unwrap().ends_with("+00:00"),
        "{seen}"
    );
    assert_eq!(seen["timelimit"], json!([30.0, 20.0]));
    assert_eq!(seen["priority"], json!(7));
    assert_eq!(seen["root_id"], seen["id"]);
    assert_eq!(seen["parent_id"], Value::Null);
    assert_eq!(seen["argsrepr"], "()");
    assert!(
        seen["origin"].as_str().unwrap().starts_with("gen"),
        "{seen}"
    );
    assert_eq!(seen["correlation_id"], seen["id"]);
    match hard.get(TIMEOUT).await {
        Err(Error::TaskFailed(failure)) => assert_eq!(failure.exc_type, "TimeLimitExceeded"),
        other => panic!("expected TimeLimitExceeded, got {other:?}"),
    }
    assert_eq!(soft.get(TIMEOUT).await.unwrap(), json!("soft limit seen"));
    drop(_python);
    cleanup(&app, &queue).await;
}

#[tokio::test]
async fn a_callback_set_in_rust_is_run_by_a_python_worker_and_reaches_a_rust_one() {
    // py.add runs on Python; its callback, interop.record, on Rust.
    let rust = rust_worker("rs2py-link").await;
    let py_queue = common::unique_queue("rs2py-link-py");
    let python_worker = python_worker(&rust.app, &py_queue).await;
    let label = format!("py-linked-{py_queue}");
    let callback = Signature::<()>::new("interop.record")
        .arg(&label)
        .queue(rust.queue.clone());
    let sum = Signature::<i64>::new("py.add")
        .arg(20)
        .arg(22)
        .queue(py_queue.clone())
        .link(callback)
        .apply_async_with(&rust.app)
        .await
        .unwrap();
    assert_eq!(sum.get(TIMEOUT).await.unwrap(), 42);
    let calls = recorded_with(&label, "the callback never reached the Rust worker").await;
    assert_eq!(
        calls,
        [42],
        "Celery put the result in front of the callback's args"
    );
    drop(python_worker);
    rust.stop().await;
    // (cleanup closes the app it is given.)
    cleanup(&plain_app().await, &py_queue).await;
}

// ---------------------------------------------------------------- chains built in Rust

/// A step of a chain known by name, taking an `i64` first, on `queue`.
fn py_step(name: &'static str, arg: i64, queue: &str) -> task_core::canvas::Partial<i64, i64> {
    task_core::canvas::Partial::new(Signature::new(name).arg(arg).queue(queue.to_owned()))
}

#[tokio::test]
async fn a_chain_built_in_rust_runs_on_a_python_worker() {
    let queue = common::unique_queue("rs2py-chain");
    let app = plain_app().await;
    let python_worker = python_worker(&app, &queue).await;
    // py.mul(py.add(py.add(2, 3), 10), 2): Celery's worker reads embed.chain,
    // each step's frozen id and reply_to bring the last value back.
    let first = Signature::<i64>::new("py.add")
        .arg(2)
        .arg(3)
        .queue(queue.clone());
    let result = task_core::canvas::chain(first)
        .then(py_step("py.add", 10, &queue))
        .then(py_step("py.mul", 2, &queue))
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(result.get(TIMEOUT).await.unwrap(), 30);

    // A failing step: Celery tells the remaining step FAILURE, to our reply queue.
    let failed = task_core::canvas::chain(
        Signature::<Value>::new("py.fail")
            .arg("chain broke")
            .queue(queue.clone()),
    )
    .then(task_core::canvas::Partial::<Value, i64>::new(
        Signature::new("py.add").arg(1).queue(queue.clone()),
    ))
    .apply_async_with(&app)
    .await
    .unwrap();
    let error = failed.get(TIMEOUT).await.unwrap_err();
    let failure = error.as_task_failure().expect("a task failure");
    assert_eq!(
        (failure.exc_type.as_str(), failure.message.as_str()),
        ("ValueError", "chain broke")
    );
    drop(python_worker);
    cleanup(&app, &queue).await;
}

#[tokio::test]
async fn a_chain_built_in_rust_crosses_rust_and_python_workers() {
    // tasks.add on the Rust worker, py.mul on the Python one, then Rust again.
    let rust = rust_worker("rs-py-chain").await;
    let py_queue = common::unique_queue("rs-py-chain-py");
    let python_worker = python_worker(&rust.app, &py_queue).await;
    let result = task_core::canvas::chain(task_examples::add.s(2, 3).queue(rust.queue.clone()))
        .then(py_step("py.mul", 10, &py_queue))
        .then(
            task_examples::add
                .partial(-8)
                .with(|s| s.queue(rust.queue.clone())),
        )
        .apply_async_with(&rust.app)
        .await
        .unwrap();
    assert_eq!(result.get(TIMEOUT).await.unwrap(), 42);
    drop(python_worker);
    rust.stop().await;
    cleanup(&plain_app().await, &py_queue).await;
}
