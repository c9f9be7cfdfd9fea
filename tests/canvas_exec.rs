//! Celery canvas in a message's `embed`, run by a Rust worker (on
//! `memory://`; the chain on RabbitMQ and with real Celery is in
//! `dead_letters.rs` and `interop.rs`): several callbacks go out as a group,
//! errbacks get the failed task's id, and a failed chain's remaining steps
//! are told FAILURE.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use task_core::broker::{ConsumeOptions, QueueSpec};
use task_core::protocol::task_message::{encode_task, TaskCall};
use task_core::{task, App, FailedTask, TaskError};
use task_worker::Worker;

const WAIT: Duration = Duration::from_secs(10);

/// (value, label, group id, group index) of one `canvas.record` run.
type Record = (serde_json::Value, String, Option<String>, Option<u32>);

/// (label, root id, parent id) of each `canvas.record` run.
static LINEAGE: Mutex<Vec<(String, String, Option<String>)>> = Mutex::new(Vec::new());

/// Every `canvas.record` run.
static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

#[task(name = "canvas.add")]
async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

#[task(name = "canvas.fail")]
async fn fail() -> Result<i64, TaskError> {
    Err(TaskError::new("ValueError", "boom"))
}

#[task(name = "canvas.record")]
async fn record(value: serde_json::Value, label: String) -> Result<(), TaskError> {
    let group = task_core::current_task().and_then(|t| t.group().map(|(id, i)| (id.to_owned(), i)));
    let (group_id, index) = match group {
        Some((id, index)) => (Some(id), index),
        None => (None, None),
    };
    if let Some(task) = task_core::current_task() {
        let parent = task.parent_id().map(str::to_owned);
        LINEAGE
            .lock()
            .unwrap()
            .push((label.clone(), task.root_id().to_owned(), parent));
    }
    RECORDS
        .lock()
        .unwrap()
        .push((value, label, group_id, index));
    Ok(())
}

fn sig(task: &str, args: serde_json::Value, options: serde_json::Value) -> serde_json::Value {
    json!({"task": task, "args": args, "kwargs": {}, "options": options, "subtask_type": null, "immutable": false})
}

async fn publish(
    app: &App,
    queue: &str,
    name: &str,
    id: &str,
    args: serde_json::Value,
    embed: serde_json::Value,
) {
    let mut message = encode_task(&TaskCall {
        id,
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
    .unwrap();
    message.body = serde_json::to_vec(&json!([args, {}, embed])).unwrap();
    app.broker().publish("", queue, &message).await.unwrap();
}

fn records_of(
    label_prefix: &str,
    n: usize,
) -> Vec<(serde_json::Value, String, Option<String>, Option<u32>)> {
    let started = Instant::now();
    loop {
        let found: Vec<_> = RECORDS
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.1.starts_with(label_prefix))
            .cloned()
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(started.elapsed() < WAIT, "only {found:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn start(
    label: &str,
) -> (
    App,
    String,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), task_worker::WorkerError>>,
) {
    let app = App::builder()
        .broker_url(format!("memory://canvas-{label}"))
        .set_as_default(false)
        .connect()
        .await
        .unwrap();
    let queue = format!("canvas.{label}");
    let worker = Worker::builder()
        .app(app.clone())
        .queues([queue.clone()])
        .build()
        .await
        .unwrap();
    let stop = worker.shutdown_handle();
    (app, queue, stop, tokio::spawn(worker.run()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_callbacks_go_out_as_a_group_with_the_result_first() {
    let (app, queue, stop, handle) = start("callbacks").await;
    let options = json!({"queue": queue});
    publish(&app, &queue, "canvas.add", "cb-parent", json!([1, 2]), json!({
        "callbacks": [sig("canvas.record", json!(["cb-a"]), options.clone()), sig("canvas.record", json!(["cb-b"]), options)],
        "errbacks": null, "chain": null, "chord": null
    }))
    .await;
    let mut records = tokio::task::spawn_blocking(|| records_of("cb-", 2))
        .await
        .unwrap();
    records.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        (records[0].0.clone(), records[0].1.as_str()),
        (json!(3), "cb-a")
    );
    assert_eq!(
        (records[1].0.clone(), records[1].1.as_str()),
        (json!(3), "cb-b")
    );
    assert!(
        records[0].2.is_some() && records[0].2 == records[1].2,
        "one new group: {records:?}"
    );
    assert_eq!((records[0].3, records[1].3), (Some(0), Some(1)));
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_calls_its_errbacks_with_its_id_and_fails_the_rest_of_the_chain() {
    let (app, queue, stop, handle) = start("errbacks").await;
    let replies = format!("{queue}.replies");
    app.broker()
        .declare_queue(&QueueSpec::task_queue(replies.clone()))
        .await
        .unwrap();
    let options = json!({"queue": queue});
    publish(&app, &queue, "canvas.fail", "eb-parent", json!([]), json!({
        "callbacks": null,
        "errbacks": [sig("canvas.record", json!(["eb-on-error"]), options.clone())],
        "chain": [sig("canvas.add", json!([1]), json!({"task_id": "eb-step", "reply_to": replies, "queue": queue}))],
        "chord": null
    }))
    .await;
    let records = tokio::task::spawn_blocking(|| records_of("eb-", 1))
        .await
        .unwrap();
    // Celery passes the failed task's id as the errback's first argument.
    assert_eq!(records[0].0, json!("eb-parent"));
    let mut consumer = app
        .broker()
        .consume(std::slice::from_ref(&replies), ConsumeOptions::no_ack())
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, consumer.deliveries.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&delivery.message.body).unwrap();
    assert_eq!(body["task_id"], "eb-step");
    assert_eq!(body["status"], "FAILURE");
    assert_eq!(body["result"]["exc_type"], "ValueError");
    consumer.cancel.close().await.unwrap();
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_carries_its_result_and_its_root_to_every_step() {
    let (app, queue, stop, handle) = start("chain").await;
    let options = |id: &str| json!({"task_id": id, "queue": queue});
    // add(1, 2) | add.s(10) | record.s("ch-end"): the next step last.
    publish(
        &app,
        &queue,
        "canvas.add",
        "ch-1",
        json!([1, 2]),
        json!({
            "callbacks": null, "errbacks": null, "chord": null,
            "chain": [
                sig("canvas.record", json!(["ch-end"]), options("ch-3")),
                sig("canvas.add", json!([10]), options("ch-2")),
            ]
        }),
    )
    .await;
    let records = tokio::task::spawn_blocking(|| records_of("ch-", 1))
        .await
        .unwrap();
    assert_eq!(
        records[0].0,
        json!(13),
        "each step got the previous result first"
    );
    let lineage = LINEAGE.lock().unwrap().clone();
    let (_, root, parent) = lineage
        .iter()
        .find(|(label, ..)| label == "ch-end")
        .unwrap();
    assert_eq!(root, "ch-1", "the root is the chain's first task");
    assert_eq!(
        parent.as_deref(),
        Some("ch-2"),
        "the parent is the step before"
    );
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_and_errbacks_set_in_rust_run_on_the_worker() {
    let (app, queue, stop, handle) = start("rust-link").await;
    let record_sig = |label: &str| {
        task_core::Signature::<()>::new("canvas.record")
            .arg(label)
            .queue(queue.clone())
    };
    let sum = add
        .s(1, 2)
        .queue(queue.clone())
        .link(record_sig("rl-after"))
        .link(
            task_core::Signature::<()>::new("canvas.record")
                .arg(7)
                .arg("rl-immutable")
                .queue(queue.clone())
                .immutable(),
        )
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(sum.get(WAIT).await.unwrap(), 3);
    let failed = fail
        .s()
        .queue(queue.clone())
        .link_error(record_sig("rl-error"))
        .apply_async_with(&app)
        .await
        .unwrap();
    let failed_id = failed.id().to_owned();
    assert!(failed.get(WAIT).await.is_err());
    let mut records = tokio::task::spawn_blocking(|| records_of("rl-", 3))
        .await
        .unwrap();
    records.sort_by(|a, b| a.1.cmp(&b.1));
    let seen: Vec<(serde_json::Value, &str)> = records
        .iter()
        .map(|r| (r.0.clone(), r.1.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (json!(3), "rl-after"),
            (json!(failed_id), "rl-error"),
            (json!(7), "rl-immutable"),
        ]
    );
    stop.cancel();
    handle.await.unwrap().unwrap();
}

/// (failed id, the failure's type and message if told, label) of each
/// `canvas.on_failure` run.
type FailureRecord = (String, Option<(String, String)>, String);

/// Every `canvas.on_failure` run.
static FAILURES: Mutex<Vec<FailureRecord>> = Mutex::new(Vec::new());

#[task(name = "canvas.on_failure")]
async fn on_failure(failed: FailedTask, label: String) -> Result<(), TaskError> {
    let failure = failed
        .failure()
        .map(|failure| (failure.exc_type.clone(), failure.message.clone()));
    FAILURES
        .lock()
        .unwrap()
        .push((failed.task_id().to_owned(), failure, label));
    Ok(())
}

#[task(name = "canvas.refuse")]
async fn refuse(x: i64) -> Result<i64, TaskError> {
    Err(TaskError::new("ValueError", format!("{x} refused")))
}

#[task(name = "canvas.sum")]
async fn sum_all(values: Vec<i64>) -> Result<i64, TaskError> {
    Ok(values.iter().sum())
}

fn failures_of(label: &str) -> FailureRecord {
    let started = Instant::now();
    loop {
        let found = FAILURES
            .lock()
            .unwrap()
            .iter()
            .find(|entry| entry.2 == label)
            .cloned();
        if let Some(found) = found {
            return found;
        }
        assert!(started.elapsed() < WAIT, "no errback ran for {label}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_errback_taking_a_failed_task_receives_the_failure_itself() {
    let (app, queue, stop, handle) = start("failed-task").await;
    let errback = |label: &str| {
        on_failure
            .partial(label.to_owned())
            .with(|s| s.queue(queue.clone()))
    };
    let failed = fail
        .s()
        .queue(queue.clone())
        .link_error(errback("ft-direct"))
        .apply_async_with(&app)
        .await
        .unwrap();
    let failed_id = failed.id().to_owned();
    assert!(failed.get(WAIT).await.is_err());
    let seen = tokio::task::spawn_blocking(|| failures_of("ft-direct"))
        .await
        .unwrap();
    assert_eq!(
        seen,
        (
            failed_id,
            Some(("ValueError".to_owned(), "boom".to_owned())),
            "ft-direct".to_owned()
        )
    );

    // A chord whose part fails: the body's errback hears of its ChordError.
    let body = sum_all
        .partial()
        .with(|s| s.queue(queue.clone()).link_error(errback("ft-chord")));
    let header = task_core::canvas::group([
        add.s(1, 1).queue(queue.clone()),
        fail.s().queue(queue.clone()),
    ]);
    let total = task_core::canvas::chord(header, body)
        .apply_async_with(&app)
        .await
        .unwrap();
    let body_id = total.id().to_owned();
    assert!(total.get(WAIT).await.is_err());
    let (id, failure, _) = tokio::task::spawn_blocking(|| failures_of("ft-chord"))
        .await
        .unwrap();
    assert_eq!(id, body_id);
    let (exc_type, message) = failure.expect("the chord's failure");
    assert_eq!(exc_type, "ChordError");
    assert!(message.contains("boom"), "{message}");
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chains_link_follows_its_last_step_and_its_link_error_any_step() {
    let (app, queue, stop, handle) = start("chain-links").await;
    let on_queue = |s: task_core::Signature<i64>| s.queue(queue.clone());
    let linked = task_core::canvas::chain(add.s(1, 2).queue(queue.clone()))
        .then(add.partial(3).with(on_queue))
        .link(
            task_core::Signature::<()>::new("canvas.record")
                .arg("cl-linked")
                .queue(queue.clone()),
        )
        .link_error(
            on_failure
                .partial("cl-never".to_owned())
                .with(|s| s.queue(queue.clone())),
        )
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(linked.get(WAIT).await.unwrap(), 6);
    let records = tokio::task::spawn_blocking(|| records_of("cl-linked", 1))
        .await
        .unwrap();
    assert_eq!(records[0].0, json!(6));

    // The second step fails: its errback runs once, with its failure.
    let failing = task_core::canvas::chain(add.s(1, 2).queue(queue.clone()))
        .then(refuse.partial().with(on_queue))
        .then(add.partial(1).with(on_queue))
        .link_error(
            on_failure
                .partial("cl-failed".to_owned())
                .with(|s| s.queue(queue.clone())),
        )
        .apply_async_with(&app)
        .await
        .unwrap();
    let error = failing.get(WAIT).await.unwrap_err();
    assert!(error.to_string().contains("3 refused"), "{error}");
    let (_, failure, _) = tokio::task::spawn_blocking(|| failures_of("cl-failed"))
        .await
        .unwrap();
    assert_eq!(
        failure,
        Some(("ValueError".to_owned(), "3 refused".to_owned()))
    );
    let runs = FAILURES
        .lock()
        .unwrap()
        .iter()
        .filter(|entry| entry.2.starts_with("cl-"))
        .count();
    assert_eq!(runs, 1, "one errback run, for the failed step only");
    stop.cancel();
    handle.await.unwrap().unwrap();
}
