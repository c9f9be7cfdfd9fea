//! The Redis broker against the real Python Celery 5.7 (kombu 5.7's Redis
//! transport, redis-py) on the shared Redis, both ways: a Python client
//! calling a Rust worker (arguments, keyword arguments, a failure with its
//! exception type, a countdown Celery publishes straight to the queue with
//! its `eta` that the Rust worker parks in Redis until due, priorities
//! served in Celery-on-Redis order, `ignore_result`), a Rust client calling
//! a Python worker (the same, the Rust countdown moved from Redis's sorted
//! set by the client's own broker while only Python consumes), results
//! over the Redis result backend both ways; and redelivery across: the
//! message a SIGKILLed Python worker held is restored by Rust after the
//! visibility timeout and run by a Rust worker, while a Rust task running
//! longer than that timeout is never restored by a live Python worker's
//! restorer.
//!
//! Each test has a key prefix of its own (kombu's `global_keyprefix`, the
//! same on both sides) and its own queues, and deletes its keys at the end
//! (and the results it stored, which Celery's Redis backend keeps outside
//! the prefix). The Python side is `tests/interop/pyapp_redis_broker.py`
//! (the app and its worker) and `tests/interop/py_redis_broker_client.py`.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{PythonWorker, TestWorker};
use serde_json::{json, Value};
use task_core::{task, App, TaskContext, TaskError, TaskState};
use task_examples as _;
use tokio::sync::Notify;

/// How long a test waits for one result (a Python worker starts within it).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Priorities sent in this order, and the order Celery on Redis serves
/// them in: kombu's steps 0, 3, 6, 9 (a priority goes to the greatest step
/// not above it), lower steps first, first in first out within a step.
const PRIORITIES: [(&str, u8); 8] = [
    ("p9a", 9),
    ("p0a", 0),
    ("p6", 6),
    ("p3", 3),
    ("p0b", 0),
    ("p9b", 9),
    ("p5", 5),
    ("p2", 2),
];
const SERVED: [&str; 8] = ["p0a", "p0b", "p2", "p3", "p5", "p6", "p9a", "p9b"];

/// One run of a Rust task of this file.
#[derive(Debug, Clone)]
struct Run {
    /// What the test looks it up by.
    key: String,
    label: String,
    /// When it started, in seconds since the epoch.
    at: f64,
    redelivered: bool,
    priority: Option<u8>,
    ignore_result: bool,
}

static RUNS: Mutex<Vec<Run>> = Mutex::new(Vec::new());
static RAN: Notify = Notify::const_new();

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn note(key: &str, label: &str, task: &TaskContext) {
    RUNS.lock().unwrap().push(Run {
        key: key.to_owned(),
        label: label.to_owned(),
        at: now_secs(),
        redelivered: task.delivery().redelivered,
        priority: task.delivery().priority,
        ignore_result: task.ignore_result(),
    });
    RAN.notify_waiters();
}

/// Waits until `n` runs were noted under `key`; returns them in order.
async fn runs(key: &str, n: usize) -> Vec<Run> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let ran = RAN.notified();
        tokio::pin!(ran);
        ran.as_mut().enable();
        let found: Vec<Run> = RUNS
            .lock()
            .unwrap()
            .iter()
            .filter(|run| run.key == key)
            .cloned()
            .collect();
        if found.len() >= n {
            return found;
        }
        tokio::time::timeout_at(deadline, ran)
            .await
            .unwrap_or_else(|_| panic!("{n} runs under {key}; got {found:?}"));
    }
}

/// The Rust twin of the Python task: notes its run under `key`.
#[task(name = "interop.rb.record")]
async fn record(key: String, label: String, task: TaskContext) -> Result<String, TaskError> {
    note(&key, &label, &task);
    Ok(label)
}

/// When it ran and the eta its message carried (seconds since the epoch).
#[task(name = "interop.rb.stamp")]
async fn stamp(label: String, task: TaskContext) -> Result<Value, TaskError> {
    let eta = task.eta().map(|eta| eta.timestamp_micros() as f64 / 1e6);
    Ok(json!({"label": label, "ran_at": now_secs(), "eta": eta}))
}

/// The Rust twin of the Python task that the test kills its worker in:
/// here it returns at once, noted under its task id.
#[task(name = "interop.rb.hold")]
async fn hold(seconds: f64, task: TaskContext) -> Result<String, TaskError> {
    let _ = seconds;
    note(task.id(), "hold", &task);
    Ok("rust".into())
}

/// Runs `seconds`, noted under `label` when it starts.
#[task(name = "interop.rb.long")]
async fn long(label: String, seconds: f64, task: TaskContext) -> Result<String, TaskError> {
    note(&label, "long", &task);
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    Ok("rust".into())
}

/// A test's key prefix, visibility timeout and stored results, shared by
/// its Rust and Python sides; its keys are deleted when it is dropped.
struct Fixture {
    prefix: String,
    visibility_secs: Option<u64>,
    results: Mutex<Vec<String>>,
}

impl Fixture {
    fn new(label: &str, visibility_secs: Option<u64>) -> Self {
        Self {
            prefix: format!("t.rb.{label}.{}:", uuid::Uuid::new_v4().simple()),
            visibility_secs,
            results: Mutex::new(Vec::new()),
        }
    }

    /// The prefixed key `name`.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// kombu's list of `queue` for the priority step `step`.
    fn list(&self, queue: &str, step: u8) -> String {
        match step {
            0 => self.key(queue),
            step => self.key(&format!("{queue}\x06\x16{step}")),
        }
    }

    /// An app on the shared Redis as broker (under the prefix) and as
    /// result backend.
    async fn app(&self) -> App {
        let base = common::redis_url();
        let separator = if base.contains('?') { '&' } else { '?' };
        let mut url = format!("{base}{separator}global_keyprefix={}", self.prefix);
        if let Some(seconds) = self.visibility_secs {
            url.push_str(&format!("&visibility_timeout={seconds}"));
        }
        App::builder()
            .broker_url(url)
            .result_backend(common::redis_url())
            .result_expires(Some(Duration::from_secs(600)))
            .set_as_default(false)
            .connect()
            .await
            .expect("Redis is running")
    }

    /// The Python side's environment: the same Redis, prefix and timeout.
    /// `BROKER_URL` and `RESULT_BACKEND` too: the `celery` command reads
    /// them (its `--broker` / `--result-backend`) and they override the
    /// app's own settings, and the test harness sets `BROKER_URL` to
    /// RabbitMQ.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("BROKER_URL", common::redis_url()),
            ("RESULT_BACKEND", common::redis_url()),
            ("REDIS_BROKER_URL", common::redis_url()),
            ("REDIS_BROKER_PREFIX", self.prefix.clone()),
            ("INTEROP_RESULT_BACKEND", common::redis_url()),
        ];
        if let Some(seconds) = self.visibility_secs {
            env.push(("REDIS_VISIBILITY_TIMEOUT", seconds.to_string()));
        }
        env
    }

    /// A Celery worker of `pyapp_redis_broker` (solo pool, one process,
    /// prefetch 1) on `queue`, whose restorer sweeps the prefix every
    /// second; killed (SIGKILL) when dropped.
    fn python_worker(&self, queue: &str) -> PythonWorker {
        self.python_worker_sweeping(queue, 1)
    }

    /// [`Self::python_worker`] whose restorer sweeps once at start, then
    /// every `seconds` (kombu's `unacked_restore_interval`).
    fn python_worker_sweeping(&self, queue: &str, seconds: u64) -> PythonWorker {
        let mut env = self.env();
        env.push(("REDIS_RESTORE_INTERVAL", seconds.to_string()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        PythonWorker::spawn(
            "pyapp_redis_broker",
            queue,
            &["-Q", queue, "-P", "solo", "-c", "1"],
            &env,
        )
    }

    /// Runs `py_redis_broker_client.py` with `args`; its JSON output.
    async fn py_client(&self, args: &[&str]) -> Value {
        let mut all = vec![common::repo()
            .join("tests/interop/py_redis_broker_client.py")
            .display()
            .to_string()];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let output = common::python_output_in(all, &env).await;
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "the python client failed");
        serde_json::from_slice(&output.stdout).expect("one JSON line")
    }

    /// Sends `calls` from a Python client; their ids (results to delete).
    async fn py_send(&self, calls: Value) -> Vec<Value> {
        let sent = self.py_client(&["send", &calls.to_string()]).await;
        let sent = sent.as_array().expect("a list").clone();
        for call in &sent {
            self.stored(call["id"].as_str().unwrap());
        }
        sent
    }

    /// Remembers a task id whose stored result the test deletes.
    fn stored(&self, id: &str) {
        self.results.lock().unwrap().push(id.to_owned());
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(common::redis_url()) else {
            return;
        };
        let Ok(mut connection) = client.get_connection() else {
            return;
        };
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut connection)
            .unwrap_or_default();
        keys.extend(
            self.results
                .lock()
                .unwrap()
                .iter()
                .map(|id| format!("celery-task-meta-{id}")),
        );
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
    }
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

/// Waits (polling Redis, bounded by [`TIMEOUT`]) until `check` holds.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops a worker, bounded by [`TIMEOUT`]: a worker that never stops fails
/// its test instead of holding the whole run.
async fn stop(worker: TestWorker) {
    tokio::time::timeout(TIMEOUT, worker.stop())
        .await
        .expect("the worker stops");
}

/// Closes an app, bounded by [`TIMEOUT`].
async fn close(app: App) {
    tokio::time::timeout(TIMEOUT, app.close())
        .await
        .expect("the app closes")
        .unwrap();
}

/// The lengths of `queue`'s four priority lists.
async fn list_lengths(fixture: &Fixture, queue: &str) -> [u64; 4] {
    let mut lengths = [0; 4];
    for (length, step) in lengths.iter_mut().zip([0, 3, 6, 9]) {
        *length = raw(&["LLEN", &fixture.list(queue, step)]).await;
    }
    lengths
}

async fn unacked(fixture: &Fixture) -> u64 {
    raw(&["HLEN", &fixture.key("unacked")]).await
}

#[tokio::test]
async fn a_python_client_calls_a_rust_worker() {
    let fixture = Fixture::new("py2rs", None);
    let worker = TestWorker::start_on(
        common::unique_queue("rb-py2rs"),
        fixture.app().await,
        4,
        |b| b,
    )
    .await;
    let q = worker.queue.as_str();
    let ignored_key = fixture.key("ignored");
    let countdown = 2.0;
    let sent = fixture
        .py_send(json!([
            {"name": "tasks.add", "args": [2, 3], "queue": q},
            {"name": "tasks.add", "kwargs": {"x": 4, "y": 5}, "queue": q},
            {"name": "tasks.add", "args": [1], "kwargs": {"y": 2}, "queue": q},
            {"name": "tasks.stats", "args": [[1.0, 2.0, 6.0]], "queue": q},
            {"name": "tasks.parse_int", "args": ["forty-two"], "queue": q},
            {"name": "interop.rb.stamp", "args": ["later"], "countdown": countdown, "queue": q},
            {"name": "interop.rb.record", "args": [ignored_key, "ignored"],
             "ignore_result": true, "queue": q},
        ]))
        .await;
    let id = |i: usize| sent[i]["id"].as_str().unwrap().to_owned();

    // Celery put the countdown straight in the queue with its eta; the
    // Rust worker parks it in Redis's delayed set until due.
    let delayed = fixture.key("_task_core.delayed");
    until("the countdown parked in the delayed set", || async {
        raw::<u64>(&["ZCARD", &delayed]).await == 1
    })
    .await;

    // The ignored result's task runs all the same.
    let ignored = runs(&ignored_key, 1).await;
    assert_eq!(ignored[0].label, "ignored");
    assert!(ignored[0].ignore_result);

    let ids = json!((0..6).map(id).collect::<Vec<_>>()).to_string();
    let got = fixture.py_client(&["get", &ids]).await;
    let value = |i: usize| {
        assert_eq!(got[i]["state"], "SUCCESS", "{}", got[i]);
        got[i]["result"].clone()
    };
    assert_eq!(value(0), 5);
    assert_eq!(value(1), 9);
    assert_eq!(value(2), 3);
    assert_eq!(value(3), json!({"count": 3, "mean": 3.0, "max": 6.0}));
    // The failure as Python sees it: Celery rebuilt the exception type.
    assert_eq!(got[4]["state"], "FAILURE", "{}", got[4]);
    assert_eq!(got[4]["result"]["exc_type"], "ParseIntError", "{}", got[4]);
    assert_eq!(got[4]["result"]["message"], "invalid digit found in string");
    // Not before its eta, which is the countdown after the call.
    let stamped = value(5);
    let eta = stamped["eta"].as_f64().expect("the message had an eta");
    let ran_at = stamped["ran_at"].as_f64().unwrap();
    assert!(ran_at >= eta, "ran at {ran_at}, before its eta {eta}");
    let sent_before = sent[5]["sent_before"].as_f64().unwrap();
    let sent_after = sent[5]["sent_after"].as_f64().unwrap();
    assert!(
        eta >= sent_before + countdown - 0.001 && eta <= sent_after + countdown + 0.001,
        "eta {eta}, sent between {sent_before} and {sent_after}"
    );
    assert!(ran_at < eta + 10.0, "ran at {ran_at}, long after {eta}");

    // Settled: nothing left unacknowledged, and no result stored for the
    // call that asked for none.
    until("every message acknowledged", || async {
        unacked(&fixture).await == 0
    })
    .await;
    let meta: u64 = raw(&["EXISTS", &format!("celery-task-meta-{}", id(6))]).await;
    assert_eq!(meta, 0, "a result was stored for an ignore_result call");
    assert_eq!(list_lengths(&fixture, q).await, [0; 4]);
    stop(worker).await;
}

#[tokio::test]
async fn a_rust_worker_serves_python_priorities_in_celery_on_redis_order() {
    let fixture = Fixture::new("py2rs-prio", None);
    let queue = common::unique_queue("rb-py2rs-prio");
    let key = fixture.key("order");
    // Nobody consumes yet.
    let calls: Vec<Value> = PRIORITIES
        .iter()
        .map(|(label, priority)| {
            json!({"name": "interop.rb.record", "args": [key, label],
                   "priority": priority, "queue": queue})
        })
        .collect();
    fixture.py_send(Value::Array(calls)).await;
    // kombu's lists, one per step, as Celery filled them.
    assert_eq!(list_lengths(&fixture, &queue).await, [3, 2, 1, 2]);

    // One at a time: the order the worker takes them in is the order they
    // run in.
    let worker = TestWorker::start_on(queue, fixture.app().await, 1, |b| b.prefetch(1)).await;
    let ran = runs(&key, PRIORITIES.len()).await;
    let order: Vec<&str> = ran.iter().map(|run| run.label.as_str()).collect();
    assert_eq!(order, SERVED);
    // Each with the priority Celery gave it.
    for run in &ran {
        let sent = PRIORITIES.iter().find(|(l, _)| *l == run.label).unwrap().1;
        assert_eq!(run.priority, Some(sent), "{run:?}");
    }
    until("every message acknowledged", || async {
        unacked(&fixture).await == 0
    })
    .await;
    stop(worker).await;
}

#[tokio::test]
async fn a_rust_client_calls_a_python_worker() {
    let fixture = Fixture::new("rs2py", None);
    let app = fixture.app().await;
    let queue = common::unique_queue("rb-rs2py");
    let call = |name: &'static str| app.signature(name).queue(queue.clone());

    // Priorities, sent while nobody consumes.
    let order_key = fixture.key("order");
    let mut recorded = Vec::new();
    for (label, priority) in PRIORITIES {
        let sent = call("interop.rb.record")
            .arg(&order_key)
            .arg(label)
            .priority(priority)
            .apply_async_with(&app)
            .await
            .unwrap();
        fixture.stored(sent.id());
        recorded.push((priority, sent));
    }
    assert_eq!(list_lengths(&fixture, &queue).await, [3, 2, 1, 2]);

    let _python = fixture.python_worker(&queue);
    for (priority, sent) in recorded {
        let seen = sent.get(TIMEOUT).await.unwrap();
        assert_eq!(seen["priority"], priority, "{seen}");
    }
    let order: Vec<String> = raw(&["LRANGE", &order_key, "0", "-1"]).await;
    assert_eq!(order, SERVED);

    // Arguments and keyword arguments, results through the Redis backend.
    let sum = call("interop.rb.add")
        .arg(20)
        .arg(22)
        .returning::<i64>()
        .apply_async_with(&app)
        .await
        .unwrap();
    fixture.stored(sum.id());
    assert_eq!(sum.get(TIMEOUT).await.unwrap(), 42);
    let echoed = call("interop.rb.echo")
        .arg(1)
        .arg("two")
        .arg(json!([3.5, null]))
        .kwarg("flag", true)
        .kwarg("nested", json!({"k": [1, 2]}))
        .apply_async_with(&app)
        .await
        .unwrap();
    fixture.stored(echoed.id());
    assert_eq!(
        echoed.get(TIMEOUT).await.unwrap(),
        json!({"args": [1, "two", [3.5, null]], "kwargs": {"flag": true, "nested": {"k": [1, 2]}}})
    );

    // A failure: TaskFailed with the Python exception type.
    let failed = call("interop.rb.fail")
        .arg("boom")
        .apply_async_with(&app)
        .await
        .unwrap();
    fixture.stored(failed.id());
    let error = failed.get(TIMEOUT).await.unwrap_err();
    assert!(
        matches!(error, task_core::Error::TaskFailed(_)),
        "{error:?}"
    );
    let failure = error.as_task_failure().unwrap();
    assert_eq!(
        (failure.exc_type.as_str(), failure.message.as_str()),
        ("ValueError", "boom")
    );

    // A countdown: kept in Redis's delayed set, moved to the queue when
    // due by this client's broker (only Python consumes the queue).
    let countdown = Duration::from_secs(2);
    let sent_before = now_secs();
    let later = call("interop.rb.stamp")
        .arg("later")
        .countdown(countdown)
        .apply_async_with(&app)
        .await
        .unwrap();
    let sent_after = now_secs();
    fixture.stored(later.id());
    let delayed: u64 = raw(&["ZCARD", &fixture.key("_task_core.delayed")]).await;
    assert_eq!(delayed, 1);
    assert_eq!(list_lengths(&fixture, &queue).await, [0; 4]);
    let stamped = later.get(TIMEOUT).await.unwrap();
    let ran_at = stamped["ran_at"].as_f64().unwrap();
    let countdown = countdown.as_secs_f64();
    assert!(
        ran_at >= sent_before + countdown,
        "ran at {ran_at}, sent at {sent_before}"
    );
    if let Some(eta) = stamped["eta"].as_f64() {
        assert!(ran_at >= eta, "ran at {ran_at}, before its eta {eta}");
        assert!(
            eta >= sent_before + countdown - 0.001 && eta <= sent_after + countdown + 0.001,
            "eta {eta}, sent between {sent_before} and {sent_after}"
        );
    }
    assert!(
        ran_at < sent_after + countdown + 10.0,
        "ran at {ran_at}, long after"
    );
    let delayed: u64 = raw(&["ZCARD", &fixture.key("_task_core.delayed")]).await;
    assert_eq!(delayed, 0);
    close(app).await;
}

/// A Celery worker (`acks_late`) is SIGKILLed while it runs a task: its
/// message stays in `unacked`; the Rust side restores it once the
/// visibility timeout (2 s on both sides) has passed since Python took it,
/// and a Rust worker runs it, marked redelivered.
#[tokio::test]
async fn a_message_a_killed_python_worker_held_is_run_by_a_rust_worker() {
    let fixture = Fixture::new("restore", Some(2));
    let app = fixture.app().await;
    let queue = common::unique_queue("rb-restore");
    // Its restorer sweeps once at start only: with a 2 s timeout it would
    // otherwise put back (and take again) the message it holds itself if
    // it were killed more than 2 s after taking it.
    let python = fixture.python_worker_sweeping(&queue, 3600);
    let ping = app
        .signature("interop.rb.add")
        .arg(0)
        .arg(0)
        .queue(queue.clone())
        .returning::<i64>()
        .apply_async_with(&app)
        .await
        .unwrap();
    fixture.stored(ping.id());
    assert_eq!(ping.get(TIMEOUT).await.unwrap(), 0);

    let held = app
        .signature("interop.rb.hold")
        .arg(60.0)
        .queue(queue.clone())
        .returning::<String>()
        .apply_async_with(&app)
        .await
        .unwrap();
    fixture.stored(held.id());
    let state = held
        .wait_for_state(|s| s == TaskState::Started, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(state, TaskState::Started);
    // What Python took: one entry, scored when it was delivered.
    let index: Vec<(String, f64)> = raw(&[
        "ZRANGE",
        &fixture.key("unacked_index"),
        "0",
        "-1",
        "WITHSCORES",
    ])
    .await;
    assert_eq!(index.len(), 1, "{index:?}");
    let delivered_at = index[0].1;
    drop(python); // SIGKILL
    assert_eq!(unacked(&fixture).await, 1);
    assert_eq!(list_lengths(&fixture, &queue).await, [0; 4]);

    let worker = TestWorker::start_on(queue, app, 1, |b| b).await;
    assert_eq!(held.get(TIMEOUT).await.unwrap(), "rust");
    let run = &runs(held.id(), 1).await[0];
    assert!(run.redelivered, "{run:?}");
    assert!(
        run.at >= delivered_at + 2.0,
        "restored at {}, {} s after Python took it",
        run.at,
        run.at - delivered_at
    );
    until("every message acknowledged", || async {
        unacked(&fixture).await == 0
    })
    .await;
    assert_eq!(runs(held.id(), 1).await.len(), 1);
    stop(worker).await;
}

/// A Rust task runs three times the visibility timeout (2 s on both sides)
/// while a Celery worker, whose restorer sweeps this prefix every second,
/// is alive: the Rust side renews its message's score, so Python never
/// restores it and it runs exactly once.
#[tokio::test]
async fn a_long_rust_task_is_not_restored_by_a_python_worker() {
    let fixture = Fixture::new("renew", Some(2));
    let py_queue = common::unique_queue("rb-renew-py");
    let _python = fixture.python_worker(&py_queue);

    // First, the Python restorer at work (nothing Rust restores under this
    // prefix yet): a message left unacknowledged 10 s ago by a consumer
    // that died comes back to its queue.
    let canary = json!([
        {"body": "", "content-encoding": "utf-8", "content-type": "text/plain",
         "headers": {}, "properties": {"delivery_info": {"exchange": "", "routing_key": "canary"},
         "priority": 0, "body_encoding": "base64", "delivery_tag": "canary"}},
        "",
        "canary",
    ])
    .to_string();
    let _: () = raw(&["HSET", &fixture.key("unacked"), "canary", &canary]).await;
    let long_ago = format!("{:.6}", now_secs() - 10.0);
    let _: () = raw(&["ZADD", &fixture.key("unacked_index"), &long_ago, "canary"]).await;
    until("the Python restorer restores a stale message", || async {
        raw::<u64>(&["LLEN", &fixture.key("canary")]).await == 1
    })
    .await;
    assert_eq!(unacked(&fixture).await, 0);
    // A Rust client of the Python worker's queue (asks it for a ping at the end).
    let caller = fixture.app().await;

    // Two slots: a copy restored to the queue would run at once, beside
    // the first.
    let worker = TestWorker::start_on(
        common::unique_queue("rb-renew"),
        fixture.app().await,
        2,
        |b| b,
    )
    .await;
    let label = fixture.key("long");
    let started = Instant::now();
    let running = worker
        .app
        .signature("interop.rb.long")
        .arg(&label)
        .arg(6.0)
        .queue(worker.queue.clone())
        .returning::<String>()
        .apply_async_with(&worker.app)
        .await
        .unwrap();
    fixture.stored(running.id());
    assert_eq!(running.get(TIMEOUT).await.unwrap(), "rust");
    assert!(started.elapsed() >= Duration::from_secs(6));
    let ran = runs(&label, 1).await;
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(!ran[0].redelivered);

    // The Python worker was alive all along.
    let ping = caller
        .signature("interop.rb.add")
        .arg(1)
        .arg(1)
        .queue(py_queue.clone())
        .returning::<i64>()
        .apply_async_with(&caller)
        .await
        .unwrap();
    fixture.stored(ping.id());
    assert_eq!(ping.get(TIMEOUT).await.unwrap(), 2);
    until("every message acknowledged", || async {
        unacked(&fixture).await == 0
    })
    .await;
    assert_eq!(list_lengths(&fixture, &worker.queue).await, [0; 4]);
    assert_eq!(runs(&label, 1).await.len(), 1);
    stop(worker).await;
    close(caller).await;
}
