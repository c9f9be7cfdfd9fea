//! The Redis result backend against the real Python Celery 5.7 (with the
//! `redis` client), both ways, over the real RabbitMQ and Redis: results
//! stored by one side are read by id by the other, in processes that did
//! not send the task; STARTED, RETRY and FAILURE with its traceback;
//! `result_extended` fields; `forget` seen across.
//!
//! The Python side is `tests/interop/pyapp_redis.py` (a worker) and
//! `tests/interop/py_redis_client.py` (send, get, state, forget).

mod common;

use std::process::Command;
use std::time::Duration;

use common::TestWorker;
use redis::AsyncCommands;
use serde_json::{json, Value};
use task_core::broker::QueueSpec;
use task_core::{current_task, task, App, TaskError, TaskState};
use task_examples as _;
use tokio::sync::Notify;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Released by the test once it has seen the task STARTED.
static RELEASE_HELD: Notify = Notify::const_new();

#[task(name = "interop.redis.held", track_started)]
async fn held() -> Result<String, TaskError> {
    RELEASE_HELD.notified().await;
    Ok("released".into())
}

#[task(name = "interop.redis.retry_once")]
async fn retry_once(value: i64) -> Result<i64, TaskError> {
    let retries = current_task().map_or(0, |task| task.retries());
    if retries == 0 {
        return Err(TaskError::new("RuntimeError", "once more").retry_in(Duration::ZERO));
    }
    Ok(value)
}

/// Replaces itself with a group of Python tasks on `queue`: a Python worker
/// runs the members and the `celery.accumulate` body Celery's replace adds.
#[task(name = "interop.redis.fan_out_to_python")]
async fn fan_out_to_python(queue: String, n: i64) -> Result<Vec<i64>, TaskError> {
    let members = (1..=n).map(|x| {
        task_core::Signature::<i64>::new("interop.py_add")
            .arg(x)
            .arg(x)
            .queue(queue.clone())
    });
    Err(TaskError::replace(task_core::canvas::group(members)))
}

/// An app storing results in the shared Redis, with `result_extended`
/// (declaring queues as Celery does, like the Python peers).
async fn redis_app() -> App {
    App::builder()
        .broker_url(common::broker_url())
        .result_backend(common::redis_url())
        .result_extended(true)
        .set_as_default(false)
        .connect()
        .await
        .expect("RabbitMQ and Redis are running")
}

/// Runs `py_redis_client.py` with `args`; returns its stdout, trimmed.
async fn py_client(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(common::python());
        command
            .arg(common::repo().join("tests/interop/py_redis_client.py"))
            .args(&args)
            .env("BROKER_URL", common::broker_url())
            .env("INTEROP_RESULT_BACKEND", common::redis_url());
        let output = common::output_within(command, common::CHILD_PROCESS_TIMEOUT);
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        output
    })
    .await
    .unwrap();
    assert!(output.status.success(), "python client failed");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A Python process that did not send the task reads its result by id.
async fn py_get(task_id: &str) -> Value {
    serde_json::from_str(&py_client(&["get", task_id, "--timeout", "60"]).await)
        .expect("one JSON line")
}

/// A Rust worker on its own queue whose app stores results in Redis.
async fn rust_worker(label: &str) -> TestWorker {
    TestWorker::start_on(common::unique_queue(label), redis_app().await, 4, |b| b).await
}

async fn delete_queue(app: &App, queue: &str) {
    app.broker().delete_queue(queue).await.unwrap();
    let dead_letters = QueueSpec::dead_letter_queue(queue).name;
    app.broker().delete_queue(&dead_letters).await.unwrap();
    app.broker().delete_exchange(queue).await.unwrap();
}

/// A Celery worker of `pyapp_redis` on `queue`, ready once it answered.
async fn python_worker(app: &App, queue: &str) -> common::PythonWorker {
    app.ensure_queue(queue).await.unwrap();
    let env = [("INTEROP_RESULT_BACKEND", common::redis_url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let worker =
        common::PythonWorker::spawn("pyapp_redis", queue, &["-Q", queue, "-P", "solo"], &env);
    let ping = app
        .signature("interop.py_add")
        .arg(0)
        .arg(0)
        .returning::<i64>()
        .queue(queue.to_owned())
        .apply_async_with(app)
        .await
        .unwrap();
    assert_eq!(ping.get(TIMEOUT).await.unwrap(), 0);
    worker
}

#[tokio::test]
async fn python_sends_rust_runs_and_another_python_process_reads_by_id() {
    let w = rust_worker("redis-py2rs").await;
    let q = w.queue.as_str();
    let sum_id = py_client(&["send", "tasks.add", "[2, 3]", "--queue", q]).await;
    let sum = py_get(&sum_id).await;
    assert_eq!(sum["state"], "SUCCESS", "{sum}");
    assert_eq!(sum["result"], 5);
    assert_eq!(sum["task_id"], sum_id.as_str());
    // result_extended fields, as Python reads them.
    assert_eq!(sum["name"], "tasks.add");
    assert_eq!(sum["args"], json!([2, 3]));
    assert_eq!(sum["kwargs"], json!({}));
    assert_eq!(sum["queue"], q);
    assert_eq!(sum["retries"], 0);
    assert!(sum["worker"].as_str().unwrap().contains('@'), "{sum}");

    let failed_id = py_client(&["send", "tasks.parse_int", r#"["forty-two"]"#, "--queue", q]).await;
    let failed = py_get(&failed_id).await;
    assert_eq!(failed["state"], "FAILURE", "{failed}");
    assert_eq!(failed["result"]["exc_type"], "ParseIntError");
    assert!(
        failed["traceback"]
            .as_str()
            .unwrap()
            .contains("invalid digit"),
        "{failed}"
    );

    let retried_id = py_client(&["send", "interop.redis.retry_once", "[7]", "--queue", q]).await;
    let retried = py_get(&retried_id).await;
    assert_eq!(
        (&retried["state"], &retried["result"]),
        (&json!("SUCCESS"), &json!(7))
    );
    assert_eq!(retried["retries"], 1, "{retried}");

    // STARTED, stored by the Rust worker, read by Python while the task runs.
    let held_id = py_client(&["send", "interop.redis.held", "[]", "--queue", q]).await;
    let held_result = w.app.result::<String>(&held_id).await.unwrap();
    let state = held_result
        .wait_for_state(|s| s == TaskState::Started, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(state, TaskState::Started);
    assert_eq!(py_client(&["state", &held_id]).await, "STARTED");
    RELEASE_HELD.notify_one();
    assert_eq!(held_result.get(TIMEOUT).await.unwrap(), "released");
    assert_eq!(py_get(&held_id).await["result"], "released");

    // forget from Python is seen by Rust.
    py_client(&["forget", &sum_id]).await;
    assert!(w.app.result_meta(&sum_id).await.unwrap().is_none());
    w.stop().await;
}

#[tokio::test]
async fn rust_reads_a_python_workers_results_by_id() {
    let queue = common::unique_queue("redis-rs2py");
    let app = redis_app().await;
    let _python = python_worker(&app, &queue).await;
    let call = |name: &'static str| app.signature(name).queue(queue.clone());

    let sent = call("interop.py_add")
        .arg(20)
        .arg(22)
        .returning::<i64>()
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(sent.get(TIMEOUT).await.unwrap(), 42);
    // Another Rust app, which did not send it, reads it by id.
    let reader = redis_app().await;
    let read = reader.result::<i64>(sent.id()).await.unwrap();
    assert_eq!(read.state(), TaskState::Success);
    assert_eq!(read.get(TIMEOUT).await.unwrap(), 42);
    let meta = reader.result_meta(sent.id()).await.unwrap().unwrap();
    assert_eq!(meta.name.as_deref(), Some("interop.py_add"));
    assert_eq!(meta.args.unwrap().get(), "[20, 22]");
    assert_eq!(meta.queue.as_deref(), Some(queue.as_str()));

    // FAILURE with Python's traceback.
    let failed = call("interop.py_fail")
        .arg("boom")
        .returning::<i64>()
        .apply_async_with(&app)
        .await
        .unwrap();
    let error = reader
        .result::<i64>(failed.id())
        .await
        .unwrap()
        .get(TIMEOUT)
        .await
        .unwrap_err();
    let failure = error.as_task_failure().expect("a task failure");
    assert_eq!(
        (failure.exc_type.as_str(), failure.message.as_str()),
        ("ValueError", "boom")
    );
    assert!(failure
        .traceback
        .as_deref()
        .unwrap()
        .contains("ValueError: boom"));

    // RETRY then SUCCESS, retries counted in the stored meta.
    let retried = call("interop.py_retry_once")
        .arg(5)
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(
        retried.get(TIMEOUT).await.unwrap(),
        json!({"value": 5, "retries": 1})
    );
    assert_eq!(
        reader
            .result_meta(retried.id())
            .await
            .unwrap()
            .unwrap()
            .retries,
        Some(1)
    );

    // STARTED from the Python worker, pushed to a Rust reader.
    let key = format!("interop.redis.release.{}", uuid::Uuid::new_v4().simple());
    let waiting = call("interop.py_wait_for_key")
        .arg(&key)
        .returning::<String>()
        .apply_async_with(&app)
        .await
        .unwrap();
    let watched = reader.result::<String>(waiting.id()).await.unwrap();
    let state = watched
        .wait_for_state(|s| s == TaskState::Started, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(state, TaskState::Started);
    let mut redis = redis::Client::open(common::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis.set_ex(&key, "go", 60).await.unwrap();
    assert_eq!(watched.get(TIMEOUT).await.unwrap(), "go");
    let _: () = redis.del(&key).await.unwrap();

    // forget from Rust is seen by Python.
    reader.forget(sent.id()).await.unwrap();
    assert_eq!(py_client(&["state", sent.id()]).await, "PENDING");

    reader.close().await.unwrap();
    delete_queue(&app, &queue).await;
    app.close().await.unwrap();
}

/// Chords a Python client sends (Celery's Redis-backend chords) with header
/// parts on a Rust worker: the part that completes the header publishes the
/// body, Rust or Python, with the values in header order; a header with
/// parts on both a Rust and a Python worker joins as one; a failed part
/// fails the body with Celery's `ChordError`.
#[tokio::test]
async fn python_chords_join_across_rust_and_python_workers() {
    let w = rust_worker("redis-chord").await;
    let py_queue = common::unique_queue("redis-chord-py");
    let _python = python_worker(&w.app, &py_queue).await;
    let rq = w.queue.as_str();
    let pq = py_queue.as_str();
    let add = |x: i64| json!({"task": "tasks.add", "args": [x, x], "queue": rq});
    let header = json!([add(1), add(2), add(3)]).to_string();

    let rust_body = json!({"task": "tasks.stats", "queue": rq}).to_string();
    let body_id = py_client(&["chord", &header, &rust_body]).await;
    let stats: Value = w
        .app
        .result(&body_id)
        .await
        .unwrap()
        .get(TIMEOUT)
        .await
        .unwrap();
    assert_eq!(stats, json!({"count": 3, "mean": 4.0, "max": 6.0}));

    let python_body = json!({"task": "interop.py_sum", "queue": pq}).to_string();
    let body_id = py_client(&["chord", &header, &python_body]).await;
    let summed = py_get(&body_id).await;
    assert_eq!(
        (&summed["state"], &summed["result"]),
        (&json!("SUCCESS"), &json!(12))
    );

    let python_part = json!({"task": "interop.py_add", "args": [10, 10], "queue": pq});
    let mixed = json!([add(1), python_part, add(2)]).to_string();
    let body_id = py_client(&["chord", &mixed, &python_body]).await;
    assert_eq!(py_get(&body_id).await["result"], 26);

    let failing = json!({"task": "tasks.parse_int", "args": ["x"], "queue": rq});
    let failed_header = json!([add(1), failing]).to_string();
    let body_id = py_client(&["chord", &failed_header, &rust_body]).await;
    let failed = py_get(&body_id).await;
    assert_eq!(failed["state"], "FAILURE", "{failed}");
    assert_eq!(failed["result"]["exc_type"], "ChordError", "{failed}");
    assert!(
        failed["result"]["message"]
            .as_str()
            .unwrap()
            .contains("raised ParseIntError"),
        "{failed}"
    );
    let error = w
        .app
        .result::<Value>(&body_id)
        .await
        .unwrap()
        .get(TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(error.as_task_failure().unwrap().exc_type, "ChordError");

    delete_queue(&w.app, &py_queue).await;
    w.stop().await;
}

/// Nested canvas a Python client sends, run by a Rust worker as Celery's
/// worker runs it (CELERY_OPERATIONS.md §1.7): a group chained into a task
/// (Celery sends a `celery.chord` chain element: the worker publishes the
/// header with the previous result in front, the body gets the values in
/// order), the same with a step after the body, a chain ending in a group,
/// a group holding a chain, and a chord step whose Python body runs on a
/// Python worker.
#[tokio::test]
async fn python_nested_canvas_runs_on_a_rust_worker() {
    let w = rust_worker("redis-nested").await;
    let py_queue = common::unique_queue("redis-nested-py");
    let _python = python_worker(&w.app, &py_queue).await;
    let rq = w.queue.as_str();
    let pq = py_queue.as_str();
    let add = |args: Value| json!({"task": "tasks.add", "args": args, "queue": rq});
    let sum_all = json!({"task": "tasks.sum_all", "queue": rq});
    let apply = |tree: Value| async move {
        let printed = py_client(&["canvas", &tree.to_string()]).await;
        serde_json::from_str::<Value>(&printed).expect("one JSON id")
    };
    let value_of = |id: Value| {
        let app = w.app.clone();
        async move {
            let id = id.as_str().expect("one task id").to_owned();
            app.result::<i64>(&id)
                .await
                .unwrap()
                .get(TIMEOUT)
                .await
                .unwrap()
        }
    };

    // add(1,1) | group(add(10), add(20)) | sum_all: (2+10) + (2+20).
    let chord_in_chain = json!({"chain": [
        add(json!([1, 1])),
        {"group": [add(json!([10])), add(json!([20]))]},
        sum_all,
    ]});
    assert_eq!(value_of(apply(chord_in_chain).await).await, 34);

    // The chain goes on after the chord's body.
    let step_after_chord = json!({"chain": [
        add(json!([1, 1])),
        {"group": [add(json!([10])), add(json!([20]))]},
        sum_all,
        add(json!([100])),
    ]});
    assert_eq!(value_of(apply(step_after_chord).await).await, 134);

    // A chain that ends in a group: each member gets the result.
    let ends_in_group = json!({"chain": [
        add(json!([1, 2])),
        {"group": [add(json!([10])), add(json!([20])), add(json!([30]))]},
    ]});
    let ids = apply(ends_in_group).await;
    let mut values = Vec::new();
    for id in ids.as_array().expect("a group's ids").clone() {
        values.push(value_of(id).await);
    }
    assert_eq!(values, [13, 23, 33]);

    // A group holding a chain.
    let chain_in_group = json!({"group": [
        {"chain": [add(json!([1, 2])), add(json!([3]))]},
        add(json!([5, 5])),
    ]});
    let ids = apply(chain_in_group).await;
    let mut values = Vec::new();
    for id in ids.as_array().expect("a group's ids").clone() {
        values.push(value_of(id).await);
    }
    assert_eq!(values, [6, 10]);

    // Rust steps, then a chord whose body is a Python task.
    let python_body = json!({"chain": [
        add(json!([2, 2])),
        {"group": [add(json!([1])), add(json!([2]))]},
        {"task": "interop.py_sum", "queue": pq},
    ]});
    let body_id = apply(python_body).await;
    let summed = py_get(body_id.as_str().unwrap()).await;
    assert_eq!(summed["result"], 11, "{summed}");

    delete_queue(&w.app, &py_queue).await;
    w.stop().await;
}

/// Canvas stored in Celery's dict form crosses both ways: what a Python
/// client dumps (`json.dumps(sig)`), Rust reads with `Canvas::from_json`
/// and sends; what Rust writes with `to_dict`, Python reads with
/// `celery.signature(dict)` and applies. The tasks run on a Rust worker.
#[tokio::test]
async fn canvas_in_celerys_dict_form_crosses_between_python_and_rust() {
    use task_core::canvas::{chain, chord, group, Canvas, Partial};
    let w = rust_worker("redis-dict").await;
    let rq = w.queue.as_str();
    let add = |args: Value| json!({"task": "tasks.add", "args": args, "queue": rq});
    let sum_all = json!({"task": "tasks.sum_all", "queue": rq});
    let python_dict = |tree: Value| async move {
        let printed = py_client(&["dict", &tree.to_string()]).await;
        Canvas::from_json(&printed).unwrap_or_else(|e| panic!("{e}: {printed}"))
    };

    // Python → Rust: a chain, a group and a chord, each read and sent by Rust.
    let Canvas::Chain(steps) =
        python_dict(json!({"chain": [add(json!([1, 1])), add(json!([10]))]})).await
    else {
        panic!("a chain")
    };
    let sum = steps
        .returning::<i64>()
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(sum.get(TIMEOUT).await.unwrap(), 12);

    let Canvas::Group(members) =
        python_dict(json!({"group": [add(json!([1, 2])), add(json!([3, 4]))]})).await
    else {
        panic!("a group")
    };
    let sums = members
        .returning::<i64>()
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(sums.get(TIMEOUT).await.unwrap(), [3, 7]);

    let tree = json!({"chord": [add(json!([1, 1])), add(json!([2, 2]))], "body": sum_all});
    let Canvas::Chord(joined) = python_dict(tree).await else {
        panic!("a chord")
    };
    let total = joined
        .returning::<i64, i64>()
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(total.get(TIMEOUT).await.unwrap(), 6);

    // Rust → Python: Celery's client applies what Rust wrote.
    let add_sig = |x: i64, y: i64| {
        w.app
            .signature("tasks.add")
            .arg(x)
            .arg(y)
            .returning::<i64>()
            .queue(rq.to_owned())
    };
    let total = Partial::new(
        w.app
            .signature("tasks.sum_all")
            .returning::<i64>()
            .queue(rq.to_owned()),
    );
    let apply = |dict: Value| async move {
        let printed = py_client(&["apply-dict", &dict.to_string()]).await;
        serde_json::from_str::<Value>(&printed).expect("one JSON id")
    };
    let chord_id = apply(chord(group([add_sig(1, 2), add_sig(3, 4)]), total).to_dict()).await;
    assert_eq!(py_get(chord_id.as_str().unwrap()).await["result"], 10);
    let chain_id = apply(
        chain(add_sig(5, 5))
            .then(Partial::<i64, i64>::new(
                w.app
                    .signature("tasks.add")
                    .arg(100)
                    .returning::<i64>()
                    .queue(rq.to_owned()),
            ))
            .to_dict(),
    )
    .await;
    assert_eq!(py_get(chain_id.as_str().unwrap()).await["result"], 110);

    w.stop().await;
}

/// A chord built in Rust runs on Python workers: header parts and body on a
/// Python Celery worker, joined in Redis by Celery's own code; a Rust
/// header with a Python body; a chord step in a chain applied by a Python
/// worker, with parts on both.
#[tokio::test]
async fn rust_chords_run_on_python_workers() {
    use task_core::canvas::{chord, group};
    let w = rust_worker("redis-rs-chord").await;
    let py_queue = common::unique_queue("redis-rs-chord-py");
    let _python = python_worker(&w.app, &py_queue).await;
    let py_add = |x: i64| {
        w.app
            .signature("interop.py_add")
            .arg(x)
            .arg(x)
            .queue(py_queue.clone())
            .returning::<i64>()
    };
    let py_sum = || {
        task_core::canvas::Partial::new(
            w.app
                .signature("interop.py_sum")
                .queue(py_queue.clone())
                .returning::<i64>(),
        )
    };
    let all_python = chord(group((1..=4).map(py_add)), py_sum())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(all_python.get(TIMEOUT).await.unwrap(), 20);

    let rust_parts = group((1..=3).map(|x| task_examples::add.s(x, x).queue(w.queue.clone())));
    let rust_header = chord(rust_parts, py_sum())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(rust_header.get(TIMEOUT).await.unwrap(), 12);

    // A chord step inside a chain built in Rust: a Python worker runs the
    // step before it, so Celery's own worker applies the `celery.chord`
    // element (header parts on Python and Rust workers), and the step after
    // the body is a Rust task.
    let py_add_to = |y: i64| {
        task_core::canvas::Partial::new(
            w.app
                .signature("interop.py_add")
                .arg(y)
                .queue(py_queue.clone())
                .returning::<i64>(),
        )
    };
    let rust_add_to = |y: i64| {
        task_examples::add
            .partial(y)
            .with(|s| s.queue(w.queue.clone()))
    };
    let mixed = task_core::canvas::chain(py_add(1))
        .then_chord([py_add_to(10), rust_add_to(20)], py_sum())
        .then(rust_add_to(100));
    let total = mixed.apply_async_with(&w.app).await.unwrap();
    assert_eq!(total.get(TIMEOUT).await.unwrap(), (2 + 10) + (2 + 20) + 100);

    // A Rust task that replaces itself with a group of Python tasks: the
    // Python worker runs the members and `celery.accumulate`, the caller
    // gets the list under the Rust task's id.
    let fanned = w
        .app
        .send(
            fan_out_to_python
                .s(py_queue.clone(), 3)
                .queue(w.queue.clone()),
        )
        .await
        .unwrap();
    assert_eq!(fanned.get(TIMEOUT).await.unwrap(), vec![2, 4, 6]);

    delete_queue(&w.app, &py_queue).await;
    w.stop().await;
}
