//! The core path against the real RabbitMQ: `#[task]` → publish (confirmed)
//! → worker → result → typed `.get()`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestWorker, RESULT_TIMEOUT};
use serde::{Deserialize, Serialize};
use task_core::{task, Error, Signature, TaskError, TaskState};
use task_examples::{add, hello, parse_int, stats, Stats};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    items: Vec<String>,
    note: Option<String>,
}

#[task(name = "test.core.echo_order")]
async fn echo_order(order: Order) -> Result<Order, TaskError> {
    Ok(order)
}

#[task(name = "test.core.maybe_double")]
async fn maybe_double(value: Option<i64>) -> Result<Option<i64>, TaskError> {
    Ok(value.map(|v| v * 2))
}

#[task(name = "test.core.nothing")]
async fn nothing() -> Result<(), TaskError> {
    Ok(())
}

#[task(name = "test.core.describe")]
async fn describe(name: String, times: u32, loud: bool) -> Result<String, TaskError> {
    let text = name.repeat(times as usize);
    Ok(if loud { text.to_uppercase() } else { text })
}

#[task(name = "test.core.panics")]
async fn panics(message: String) -> Result<i64, TaskError> {
    panic!("{message}");
}

#[task(name = "test.core.custom_error")]
async fn custom_error() -> Result<i64, TaskError> {
    Err(TaskError::new("ValueError", "the answer is not 42"))
}

#[task(name = "test.core.slow")]
async fn slow(millis: u64) -> Result<u64, TaskError> {
    tokio::time::sleep(Duration::from_millis(millis)).await;
    Ok(millis)
}

#[task(name = "test.core.track", track_started)]
async fn track(millis: u64) -> Result<u64, TaskError> {
    tokio::time::sleep(Duration::from_millis(millis)).await;
    Ok(millis)
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MAX_RUNNING: AtomicUsize = AtomicUsize::new(0);

#[task(name = "test.core.probe_concurrency")]
async fn probe_concurrency() -> Result<usize, TaskError> {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MAX_RUNNING.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    Ok(now)
}

fn failure(error: Error) -> task_core::TaskFailure {
    match error {
        Error::TaskFailed(failure) => *failure,
        other => panic!("expected a task failure, got {other:?}"),
    }
}

#[tokio::test]
async fn results_of_several_types_round_trip() {
    let w = TestWorker::start("types", 4).await;
    let q = w.queue.clone();

    let sum = add
        .s(2, 3)
        .queue(q.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let text = hello
        .s("Zoë ✓".into())
        .queue(q.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let order = Order {
        id: u64::MAX,
        items: vec!["a".into(), "ü".into()],
        note: None,
    };
    let echoed = echo_order
        .s(order.clone())
        .queue(q.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let summary = stats
        .s(vec![1.0, 2.0, 6.0])
        .queue(q.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let empty = stats
        .s(vec![])
        .queue(q.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let some = maybe_double
        .s(Some(21))
        .queue(q.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let none = maybe_double
        .s(None)
        .queue(q.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let unit = nothing
        .s()
        .queue(q.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();

    assert_eq!(sum.get(RESULT_TIMEOUT).await.unwrap(), 5);
    assert_eq!(text.get(RESULT_TIMEOUT).await.unwrap(), "Hello, Zoë ✓!");
    assert_eq!(echoed.get(RESULT_TIMEOUT).await.unwrap(), order);
    assert_eq!(
        summary.get(RESULT_TIMEOUT).await.unwrap(),
        Stats {
            count: 3,
            mean: Some(3.0),
            max: Some(6.0)
        }
    );
    assert_eq!(
        empty.get(RESULT_TIMEOUT).await.unwrap(),
        Stats {
            count: 0,
            mean: None,
            max: None
        }
    );
    assert_eq!(some.get(RESULT_TIMEOUT).await.unwrap(), Some(42));
    assert_eq!(none.get(RESULT_TIMEOUT).await.unwrap(), None);
    unit.get(RESULT_TIMEOUT).await.unwrap();
    assert_eq!(sum.state(), TaskState::Success);
    w.stop().await;
}

#[tokio::test]
async fn positional_keyword_and_mixed_calls_by_name() {
    let w = TestWorker::start("kwargs", 2).await;
    let call = |sig: Signature<String>| sig.queue(w.queue.clone()).apply_async_with(&w.app);

    let positional = call(
        Signature::new("test.core.describe")
            .arg("ab")
            .arg(2)
            .arg(false),
    )
    .await
    .unwrap();
    let keywords = call(
        Signature::new("test.core.describe")
            .kwarg("loud", true)
            .kwarg("times", 3)
            .kwarg("name", "x"),
    )
    .await
    .unwrap();
    let mixed = call(
        Signature::new("test.core.describe")
            .arg("é")
            .kwarg("loud", true)
            .kwarg("times", 1),
    )
    .await
    .unwrap();

    assert_eq!(positional.get(RESULT_TIMEOUT).await.unwrap(), "abab");
    assert_eq!(keywords.get(RESULT_TIMEOUT).await.unwrap(), "XXX");
    assert_eq!(mixed.get(RESULT_TIMEOUT).await.unwrap(), "É");
    w.stop().await;
}

#[tokio::test]
async fn task_errors_become_failures_with_type_and_message() {
    let w = TestWorker::start("errors", 2).await;
    let parse = parse_int
        .s("forty-two".into())
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let custom = custom_error
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();

    let parse = failure(parse.get(RESULT_TIMEOUT).await.unwrap_err());
    assert_eq!(parse.exc_type, "ParseIntError");
    assert_eq!(parse.message, "invalid digit found in string");
    let custom = failure(custom.get(RESULT_TIMEOUT).await.unwrap_err());
    assert_eq!(
        (custom.exc_type.as_str(), custom.exc_module.as_deref()),
        ("ValueError", Some("builtins"))
    );
    assert_eq!(custom.message, "the answer is not 42");
    w.stop().await;
}

#[tokio::test]
async fn a_panicking_task_fails_and_the_worker_keeps_running() {
    let w = TestWorker::start("panic", 1).await;
    let boom = panics
        .s("kaboom".into())
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let after = add
        .s(1, 1)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();

    let boom = failure(boom.get(RESULT_TIMEOUT).await.unwrap_err());
    assert_eq!(boom.exc_type, "Panic");
    assert_eq!(boom.message, "kaboom");
    assert_eq!(after.get(RESULT_TIMEOUT).await.unwrap(), 2);
    w.stop().await;
}

#[tokio::test]
async fn an_unknown_task_fails_not_registered_and_is_dead_lettered_not_requeued() {
    let w = TestWorker::start("unknown", 1).await;
    let unknown = Signature::<i64>::new("test.core.does_not_exist")
        .arg(1)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let unknown = failure(unknown.get(RESULT_TIMEOUT).await.unwrap_err());
    assert_eq!(unknown.exc_type, "NotRegistered");
    assert_eq!(unknown.message, "'test.core.does_not_exist'");

    // The worker goes on, and the rejected message is gone from the queue
    // once the worker has stopped (a requeued one would be back).
    let after = add
        .s(2, 2)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(after.get(RESULT_TIMEOUT).await.unwrap(), 4);
    let (app, queue) = w.halt().await;
    assert_eq!(app.broker().queue_message_count(&queue).await.unwrap(), 0);
    app.broker().delete_queue(&queue).await.unwrap();
    let dead_letters = task_core::broker::QueueSpec::dead_letter_queue(&queue).name;
    assert_eq!(
        app.broker()
            .queue_message_count(&dead_letters)
            .await
            .unwrap(),
        1
    );
    app.broker().delete_queue(&dead_letters).await.unwrap();
}

#[tokio::test]
async fn wrong_missing_and_extra_arguments_fail_naming_task_and_argument() {
    let w = TestWorker::start("badargs", 2).await;
    let call = |sig: Signature<i64>| sig.queue(w.queue.clone()).apply_async_with(&w.app);
    let wrong_type = call(Signature::new("tasks.add").arg("two").arg(3))
        .await
        .unwrap();
    let missing = call(Signature::new("tasks.add").arg(2)).await.unwrap();
    let extra = call(Signature::new("tasks.add").arg(1).arg(2).arg(3))
        .await
        .unwrap();
    let unknown_kw = call(Signature::new("tasks.add").arg(1).arg(2).kwarg("z", 3))
        .await
        .unwrap();
    let twice = call(Signature::new("tasks.add").arg(1).arg(2).kwarg("x", 3))
        .await
        .unwrap();
    let good = call(Signature::new("tasks.add").kwarg("y", 2).kwarg("x", 40))
        .await
        .unwrap();

    let wrong_type = failure(wrong_type.get(RESULT_TIMEOUT).await.unwrap_err());
    assert_eq!(wrong_type.exc_type, "TypeError");
    assert!(
        wrong_type
            .message
            .starts_with("tasks.add() argument `x`: invalid type: string \"two\", expected i64"),
        "{}",
        wrong_type.message
    );
    let missing = failure(missing.get(RESULT_TIMEOUT).await.unwrap_err());
    assert_eq!(missing.message, "tasks.add() missing required argument `y`");
    let extra = failure(extra.get(RESULT_TIMEOUT).await.unwrap_err());
    assert_eq!(
        extra.message,
        "tasks.add() takes 2 positional arguments but 3 were given"
    );
    let unknown_kw = failure(unknown_kw.get(RESULT_TIMEOUT).await.unwrap_err());
    assert_eq!(
        unknown_kw.message,
        "tasks.add() got an unexpected keyword argument `z`"
    );
    let twice = failure(twice.get(RESULT_TIMEOUT).await.unwrap_err());
    assert_eq!(
        twice.message,
        "tasks.add() got multiple values for argument `x`"
    );
    assert_eq!(good.get(RESULT_TIMEOUT).await.unwrap(), 42);
    w.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_delays_all_return_correct_results() {
    const N: i64 = 1_000;
    let w = TestWorker::start("thousand", 8).await;
    let sends = (0..N).map(|i| {
        add.s(i, i * 1_000)
            .queue(w.queue.clone())
            .apply_async_with(&w.app)
    });
    let pending = futures_util::future::try_join_all(sends).await.unwrap();
    let results =
        futures_util::future::try_join_all(pending.iter().map(|p| p.get(Duration::from_secs(120))))
            .await
            .unwrap();
    for (i, value) in results.into_iter().enumerate() {
        assert_eq!(value, i as i64 * 1_001);
    }
    assert_eq!(w.app.pending_results(), 0);
    w.stop().await;
}

#[tokio::test]
async fn track_started_shows_started_before_success() {
    let w = TestWorker::start("started", 1).await;
    let pending = track
        .s(300)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    // The task sleeps 300 ms: STARTED is the state until then.
    let state = pending
        .wait_for_state(|s| s != TaskState::Pending, RESULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(state, TaskState::Started);
    assert_eq!(pending.state(), TaskState::Started);
    assert_eq!(pending.get(RESULT_TIMEOUT).await.unwrap(), 300);
    assert_eq!(pending.state(), TaskState::Success);
    w.stop().await;
}

#[tokio::test]
async fn the_hard_time_limit_fails_the_task() {
    let w = TestWorker::start("timelimit", 1).await;
    let pending = slow
        .s(10_000)
        .queue(w.queue.clone())
        .time_limit(Duration::from_millis(100))
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let error = failure(pending.get(RESULT_TIMEOUT).await.unwrap_err());
    assert_eq!(error.exc_type, "TimeLimitExceeded");
    w.stop().await;
}

#[tokio::test]
async fn expired_tasks_are_revoked_and_countdown_is_not_early() {
    let w = TestWorker::start("expiry", 2).await;
    let expired = add
        .s(1, 2)
        .queue(w.queue.clone())
        .expires_at(chrono::Utc::now() - chrono::Duration::seconds(5))
        .apply_async_with(&w.app)
        .await
        .unwrap();
    match expired.get(RESULT_TIMEOUT).await {
        Err(Error::Revoked { reason, .. }) => assert_eq!(reason, "expired"),
        other => panic!("expected REVOKED, got {other:?}"),
    }

    let sent = Instant::now();
    let delayed = add
        .s(1, 2)
        .queue(w.queue.clone())
        .countdown(Duration::from_millis(500))
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(delayed.get(RESULT_TIMEOUT).await.unwrap(), 3);
    assert!(
        sent.elapsed() >= Duration::from_millis(500),
        "ran {:?} after sending",
        sent.elapsed()
    );
    w.stop().await;
}

#[tokio::test]
async fn concurrency_is_bounded_by_the_worker_setting() {
    let w = TestWorker::start("concurrency", 2).await;
    let sends = (0..12).map(|_| {
        probe_concurrency
            .s()
            .queue(w.queue.clone())
            .apply_async_with(&w.app)
    });
    let pending = futures_util::future::try_join_all(sends).await.unwrap();
    for p in &pending {
        p.get(RESULT_TIMEOUT).await.unwrap();
    }
    assert_eq!(MAX_RUNNING.load(Ordering::SeqCst), 2);
    w.stop().await;
}

#[tokio::test]
async fn ignored_results_have_nothing_to_wait_for() {
    let w = TestWorker::start("ignore", 1).await;
    let fire = add
        .s(1, 1)
        .queue(w.queue.clone())
        .ignore_result()
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert!(matches!(
        fire.get(Duration::from_millis(10)).await,
        Err(Error::ResultIgnored { .. })
    ));
    w.stop().await;
}

#[tokio::test]
async fn get_times_out_with_a_typed_error_and_can_wait_again() {
    let w = TestWorker::start("timeout", 1).await;
    let pending = slow
        .s(400)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    match pending.get(Duration::from_millis(20)).await {
        Err(Error::Timeout { task_id, .. }) => assert_eq!(task_id, pending.id()),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(pending.get(RESULT_TIMEOUT).await.unwrap(), 400);
    w.stop().await;
}

#[tokio::test]
async fn publishing_on_a_closed_connection_is_an_error_not_a_success() {
    let queue = common::unique_queue("closed");
    let app = common::client(&[&queue]).await;
    app.ensure_queue(&queue).await.unwrap();
    app.broker().delete_queue(&queue).await.unwrap();
    app.close().await.unwrap();
    let result = add.s(1, 2).queue(queue).apply_async_with(&app).await;
    assert!(matches!(result, Err(Error::Broker(_))), "{result:?}");
}

#[tokio::test]
async fn many_results_in_flight_are_routed_by_task_id() {
    // Results arrive out of order (different durations) and each reaches its own handle.
    let w = TestWorker::start("routing", 8).await;
    let mut pending = HashMap::new();
    for millis in [90u64, 10, 50, 0, 70, 30] {
        let p = slow
            .s(millis)
            .queue(w.queue.clone())
            .apply_async_with(&w.app)
            .await
            .unwrap();
        pending.insert(millis, p);
    }
    for (millis, p) in pending {
        assert_eq!(p.get(RESULT_TIMEOUT).await.unwrap(), millis);
    }
    w.stop().await;
}

#[task(name = "test.core.wraps_up", soft_time_limit = 0.2, time_limit = 5)]
async fn wraps_up() -> Result<u64, TaskError> {
    let task = task_core::current_task().expect("runs in a worker");
    let started = Instant::now();
    task.soft_time_limit().await;
    assert!(task.soft_time_limit_exceeded());
    Ok(started.elapsed().as_millis() as u64)
}

#[tokio::test]
async fn the_soft_time_limit_lets_the_task_wrap_up_before_the_hard_one() {
    let w = TestWorker::start("softlimit", 1).await;
    let pending = wraps_up
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let waited_ms = pending.get(RESULT_TIMEOUT).await.unwrap();
    assert!(
        (190..5_000).contains(&waited_ms),
        "the soft limit (200 ms) passed after {waited_ms} ms"
    );
    w.stop().await;
}

static EARLY_STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[task(name = "test.core.early", early_ack)]
async fn early() -> Result<(), TaskError> {
    EARLY_STARTED.notify_one();
    std::future::pending::<()>().await;
    Ok(())
}

static LATE_STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[task(name = "test.core.late")]
async fn late() -> Result<(), TaskError> {
    LATE_STARTED.notify_one();
    std::future::pending::<()>().await;
    Ok(())
}

/// A worker that stops without waiting for its running tasks (as if it
/// died): what happens to the message of the task it was running.
async fn interrupted_task_requeued(
    send: impl std::future::Future<Output = ()>,
    started: &tokio::sync::Notify,
    queue: &str,
    app: &task_core::App,
) -> u32 {
    let worker = task_worker::Worker::builder()
        .app(app.clone())
        .queues([queue.to_owned()])
        .concurrency(1)
        .shutdown_timeout(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    send.await;
    started.notified().await;
    stop.cancel();
    running.await.unwrap().unwrap();
    app.broker().queue_message_count(queue).await.unwrap()
}

#[tokio::test]
async fn early_ack_is_at_most_once_and_late_ack_is_at_least_once() {
    for (label, early_ack) in [("early", true), ("late", false)] {
        let queue = common::unique_queue(label);
        let app = common::client(&[&queue]).await;
        let send = async {
            let signature = if early_ack { early.s() } else { late.s() };
            signature
                .queue(queue.clone())
                .ignore_result()
                .apply_async_with(&app)
                .await
                .unwrap();
        };
        let started = if early_ack {
            &EARLY_STARTED
        } else {
            &LATE_STARTED
        };
        let left = interrupted_task_requeued(send, started, &queue, &app).await;
        let expected = if early_ack { 0 } else { 1 };
        assert_eq!(
            left, expected,
            "{label} ack: messages back in the queue after the worker stopped mid-task"
        );
        app.broker().delete_queue(&queue).await.unwrap();
        app.close().await.unwrap();
    }
}

#[tokio::test]
async fn dropping_the_last_app_handle_closes_its_connection() {
    let queue = common::unique_queue("dropped-app");
    let app = common::client(&[&queue]).await;
    // No worker: the call creates the app's reply queue, which is
    // auto-delete and so goes away with the app's connection; its result is
    // no longer awaited once its handle is dropped.
    let awaited = add
        .s(1, 1)
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    drop(awaited);
    let reply_queue = app.reply_queue_name().unwrap().to_owned();
    let observer = common::client(&[]).await;
    assert!(observer
        .broker()
        .queue_message_count(&reply_queue)
        .await
        .is_ok());
    drop(app);
    let deadline = Instant::now() + RESULT_TIMEOUT;
    while observer
        .broker()
        .queue_message_count(&reply_queue)
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the dropped app's connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    observer.broker().delete_queue(&queue).await.unwrap();
    observer.close().await.unwrap();
}

#[tokio::test]
async fn a_task_id_too_long_for_amqp_is_a_typed_error_not_a_panic() {
    let queue = common::unique_queue("long-id");
    let app = common::client(&[&queue]).await;
    let error = add
        .s(1, 1)
        .queue(queue.clone())
        .task_id("x".repeat(300))
        .apply_async_with(&app)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Broker(task_core::broker::BrokerError::TooLong {
                what: "correlation_id",
                len: 300,
                ..
            })
        ),
        "{error}"
    );
    assert_eq!(app.pending_results(), 0, "nothing left waiting");
    app.broker().delete_queue(&queue).await.unwrap();
    app.close().await.unwrap();
}

#[tokio::test]
async fn a_dropped_app_stays_connected_while_its_broker_is_shared() {
    let queue = common::unique_queue("kept-app");
    let observer = common::client(&[&queue]).await;
    observer.ensure_queue(&queue).await.unwrap();

    // A broker handle kept elsewhere: dropping the app must not close it.
    let app = common::client(&[&queue]).await;
    let shared = std::sync::Arc::clone(app.broker());
    drop(app);
    // A close would have been spawned by the drop: let it start; it would
    // refuse every operation of the shared handle from then on.
    tokio::task::yield_now().await;
    assert_eq!(shared.queue_message_count(&queue).await.unwrap(), 0);
    shared.close().await.unwrap();

    observer.broker().delete_queue(&queue).await.unwrap();
    observer.close().await.unwrap();
}

#[tokio::test]
async fn an_awaited_result_outlives_its_app_and_its_drop_closes_the_connection() {
    let queue = common::unique_queue("awaited-app");
    let app = common::client(&[&queue]).await;
    // No worker: the observer answers by hand.
    let awaited = add
        .s(1, 1)
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    let reply_queue = app.reply_queue_name().unwrap().to_owned();
    let observer = common::client(&[]).await;
    drop(app);
    // The result still arrives after the app's last handle is gone.
    let value = serde_json::value::to_raw_value(&2).unwrap();
    let result = task_core::protocol::result_message::success(awaited.id(), &value);
    observer
        .broker()
        .publish_reply(&reply_queue, &result)
        .await
        .unwrap();
    assert_eq!(awaited.get(RESULT_TIMEOUT).await.unwrap(), 2);
    // The result handle was the last: the connection closes, and the
    // auto-delete reply queue goes with it.
    drop(awaited);
    let deadline = Instant::now() + RESULT_TIMEOUT;
    while observer
        .broker()
        .queue_message_count(&reply_queue)
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the connection stayed open after the last handle went"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    observer.broker().delete_queue(&queue).await.unwrap();
    observer.close().await.unwrap();
}

#[task(name = "test.core.fails_std")]
async fn fails_std(text: String) -> Result<i64, std::num::ParseIntError> {
    text.parse()
}

#[task(name = "test.core.fails_string")]
async fn fails_string() -> Result<i64, String> {
    Err("no luck".to_owned())
}

#[task(name = "test.core.fails_boxed")]
async fn fails_boxed() -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    let cause = "x".parse::<i64>().unwrap_err();
    Err(Box::new(Wrapped(cause)))
}

#[task(name = "test.core.fails_anyhow")]
async fn fails_anyhow() -> anyhow::Result<i64> {
    use anyhow::Context as _;
    let number = "x".parse::<i64>().context("reading the count")?;
    Ok(number)
}

#[derive(Debug, thiserror::Error)]
#[error("wrapped")]
struct Wrapped(#[source] std::num::ParseIntError);

/// One Python exception per variant.
#[derive(Debug, thiserror::Error)]
enum LookupFailure {
    #[error("no such key: {0}")]
    NotFound(String),
    #[error("invalid key: {0}")]
    Invalid(String),
}

impl task_core::CeleryException for LookupFailure {
    fn exc_type(&self) -> &str {
        match self {
            LookupFailure::NotFound(_) => "KeyError",
            LookupFailure::Invalid(_) => "ValueError",
        }
    }
}

#[task(name = "test.core.fails_lookup")]
async fn fails_lookup(key: String) -> Result<i64, LookupFailure> {
    Err(if key.is_empty() {
        LookupFailure::Invalid(key)
    } else {
        LookupFailure::NotFound(key)
    })
}

#[task(name = "test.core.fails_lookup_blocking")]
fn fails_lookup_blocking(key: String) -> Result<i64, LookupFailure> {
    Err(LookupFailure::NotFound(key))
}

fn eager_app() -> task_core::App {
    task_core::App::builder()
        .eager(true)
        .set_as_default(false)
        .build_with(std::sync::Arc::new(
            task_core::broker::memory::MemoryBroker::new(),
        ))
}

/// Runs `signature` on an eager app and returns its failure.
async fn eager_failure(signature: Signature<i64>) -> task_core::TaskFailure {
    let app = eager_app();
    let result = signature.apply_async_with(&app).await.unwrap();
    failure(result.get(RESULT_TIMEOUT).await.unwrap_err())
}

#[tokio::test]
async fn each_task_error_kind_reaches_the_caller_with_its_exc_type() {
    let std_error = eager_failure(fails_std.s("x".into())).await;
    assert_eq!(
        (std_error.exc_type.as_str(), std_error.message.as_str()),
        ("ParseIntError", "invalid digit found in string")
    );
    assert_eq!(std_error.exc_module.as_deref(), Some("rust"));

    let string = eager_failure(fails_string.s()).await;
    assert_eq!(
        (string.exc_type.as_str(), string.message.as_str()),
        ("Exception", "no luck")
    );
    assert_eq!(string.exc_module.as_deref(), Some("builtins"));

    let boxed = eager_failure(fails_boxed.s()).await;
    assert_eq!(
        (boxed.exc_type.as_str(), boxed.message.as_str()),
        ("Exception", "wrapped")
    );
    assert_eq!(
        boxed.traceback.as_deref(),
        Some("Exception: wrapped\nCaused by:\n    invalid digit found in string")
    );

    let anyhow = eager_failure(fails_anyhow.s()).await;
    assert_eq!(
        (anyhow.exc_type.as_str(), anyhow.message.as_str()),
        ("Exception", "reading the count")
    );
    assert_eq!(
        anyhow.traceback.as_deref(),
        Some("Exception: reading the count\nCaused by:\n    invalid digit found in string")
    );

    let not_found = eager_failure(fails_lookup.s("k".into())).await;
    assert_eq!(
        (not_found.exc_type.as_str(), not_found.message.as_str()),
        ("KeyError", "no such key: k")
    );
    assert_eq!(not_found.exc_module.as_deref(), Some("builtins"));
    let invalid = eager_failure(fails_lookup.s(String::new())).await;
    assert_eq!(invalid.exc_type, "ValueError");
    let blocking = eager_failure(fails_lookup_blocking.s("k".into())).await;
    assert_eq!(blocking.exc_type, "KeyError");
}
