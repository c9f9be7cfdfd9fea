//! Delays kept by the broker, retries, priorities and routing, against the
//! real RabbitMQ.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{TestWorker, RESULT_TIMEOUT};
use task_core::broker::QueueSpec;
use task_core::protocol::task_message::{encode_task, TaskCall};
use task_core::{current_task, task, App, Error, TaskError, TaskState};
use task_examples::add;
use task_worker::Worker;

/// Attempts seen per key, with the retry count and task id of each.
static ATTEMPTS: Mutex<Vec<(String, u32, String, Instant)>> = Mutex::new(Vec::new());

fn record_attempt(key: &str) -> u32 {
    let context = current_task().expect("runs in a worker");
    let mut attempts = ATTEMPTS.lock().unwrap();
    attempts.push((
        key.to_owned(),
        context.retries(),
        context.id().to_owned(),
        Instant::now(),
    ));
    attempts.iter().filter(|(k, ..)| k == key).count() as u32
}

fn attempts_of(key: &str) -> Vec<(u32, String, Instant)> {
    ATTEMPTS
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, ..)| k == key)
        .map(|(_, retries, id, at)| (*retries, id.clone(), *at))
        .collect()
}

#[task(name = "test.retry.flaky")]
async fn flaky(key: String, failures: u32) -> Result<u32, TaskError> {
    let attempt = record_attempt(&key);
    if attempt <= failures {
        return Err(TaskError::msg(format!("attempt {attempt} failed"))
            .retry_in(Duration::from_millis(300)));
    }
    Ok(attempt)
}

#[tokio::test]
async fn a_task_retries_until_it_succeeds_keeping_its_id() {
    let w = TestWorker::start("retry-success", 2).await;
    let pending = flaky
        .s("success".into(), 2)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    // Each retry waits its countdown: RETRY is the state meanwhile.
    let state = pending
        .wait_for_state(|s| s == TaskState::Retry, RESULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(state, TaskState::Retry, "the caller saw the RETRY state");
    assert_eq!(pending.get(RESULT_TIMEOUT).await.unwrap(), 3);
    let attempts = attempts_of("success");
    assert_eq!(
        attempts
            .iter()
            .map(|(retries, ..)| *retries)
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(
        attempts.iter().all(|(_, id, _)| id == pending.id()),
        "retries keep the task id"
    );
    for pair in attempts.windows(2) {
        let gap = pair[1].2 - pair[0].2;
        assert!(
            gap >= Duration::from_millis(300),
            "retried after {gap:?}, before its countdown"
        );
    }
    w.stop().await;
}

#[tokio::test]
async fn a_task_that_keeps_failing_fails_with_its_last_error_after_max_retries() {
    let w = TestWorker::start("retry-exhausted", 2).await;
    let pending = flaky
        .s("exhausted".into(), 100)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    match pending.get(RESULT_TIMEOUT).await {
        Err(Error::TaskFailed(failure)) => {
            assert_eq!(failure.exc_type, "TaskError");
            assert_eq!(
                failure.message, "attempt 4 failed",
                "the last error (default max_retries = 3)"
            );
        }
        other => panic!("expected FAILURE, got {other:?}"),
    }
    assert_eq!(attempts_of("exhausted").len(), 4);
    w.stop().await;
}

#[tokio::test]
async fn a_delayed_task_is_kept_by_the_broker_not_the_worker() {
    // One slot: a countdown task held by the worker would block the next task.
    let w = TestWorker::start("countdown", 1).await;
    let sent = Instant::now();
    let delayed = add
        .s(1, 1)
        .queue(w.queue.clone())
        .countdown(Duration::from_millis(1500))
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let immediate = add
        .s(2, 2)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(immediate.get(RESULT_TIMEOUT).await.unwrap(), 4);
    assert!(
        !delayed.ready(),
        "the immediate task ran while the delayed one waited in the broker"
    );
    assert_eq!(delayed.get(RESULT_TIMEOUT).await.unwrap(), 2);
    let late = sent.elapsed();
    assert!(
        late >= Duration::from_millis(1500),
        "ran {late:?} after sending, before its countdown"
    );
    println!("countdown 1500 ms: result after {late:?}");
    w.stop().await;
}

static ETA_TASK_STARTED: Mutex<Option<chrono::DateTime<chrono::Utc>>> = Mutex::new(None);
static ETA_TASK_RAN: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[task(name = "test.eta.record_start")]
async fn record_start() -> Result<(), TaskError> {
    *ETA_TASK_STARTED.lock().unwrap() = Some(chrono::Utc::now());
    ETA_TASK_RAN.notify_one();
    Ok(())
}

#[tokio::test]
async fn a_future_eta_from_another_producer_is_parked_in_the_broker() {
    // A message published straight to the queue with a future ETA, as a
    // Python producer does: the worker hands it to the delay levels instead
    // of holding it, and it still runs, not before its ETA.
    let w = TestWorker::start("foreign-eta", 1).await;
    let eta = chrono::Utc::now() + chrono::Duration::milliseconds(1200);
    let message = encode_task(&TaskCall {
        id: &uuid::Uuid::new_v4().to_string(),
        name: "test.eta.record_start",
        args: &[],
        kwargs: &[],
        reply_to: None,
        eta: Some(eta),
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
    w.app
        .broker()
        .publish("", &w.queue, &message)
        .await
        .unwrap();
    let immediate = add
        .s(2, 2)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(
        immediate.get(RESULT_TIMEOUT).await.unwrap(),
        4,
        "the worker is not blocked by the ETA task"
    );
    assert!(
        chrono::Utc::now() < eta,
        "the immediate task finished before the ETA"
    );
    tokio::time::timeout(RESULT_TIMEOUT, ETA_TASK_RAN.notified())
        .await
        .expect("the parked task runs");
    let started = ETA_TASK_STARTED.lock().unwrap().expect("start recorded");
    assert!(started >= eta, "started at {started}, before its ETA {eta}");
    w.stop().await;
}

static PRIORITY_ORDER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

#[task(name = "test.priority.record")]
async fn record_priority(priority: u8) -> Result<u8, TaskError> {
    PRIORITY_ORDER.lock().unwrap().push(priority);
    Ok(priority)
}

#[tokio::test]
async fn a_priority_queue_runs_higher_priorities_first() {
    let queue = common::unique_queue("priority");
    let mut spec = common::test_queue_spec(&queue);
    spec = QueueSpec {
        arguments: {
            let mut a = spec.arguments.clone();
            a.insert("x-max-priority".into(), 10.into());
            a
        },
        ..spec
    };
    let app = App::builder()
        .broker_url(common::broker_url())
        .set_as_default(false)
        .queue(spec)
        .connect()
        .await
        .unwrap();
    let mut pending = Vec::new();
    for priority in [1u8, 9, 5, 3, 7] {
        pending.push(
            record_priority
                .s(priority)
                .queue(queue.clone())
                .priority(priority)
                .apply_async_with(&app)
                .await
                .unwrap(),
        );
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
    for p in &pending {
        p.get(RESULT_TIMEOUT).await.unwrap();
    }
    assert_eq!(*PRIORITY_ORDER.lock().unwrap(), [9, 7, 5, 3, 1]);
    stop.cancel();
    running.await.unwrap().unwrap();
    app.broker().delete_queue(&queue).await.unwrap();
}

#[task(name = "test.routing.where")]
async fn where_am_i() -> Result<String, TaskError> {
    Ok(current_task().expect("runs in a worker").queue().to_owned())
}

#[tokio::test]
async fn a_task_routed_to_a_queue_reaches_only_the_worker_consuming_it() {
    common::init_logs();
    let queue_a = common::unique_queue("route-a");
    let queue_b = common::unique_queue("route-b");
    let app = common::client(&[&queue_a, &queue_b]).await;
    let start = |queue: &String| {
        let builder = Worker::builder()
            .app(app.clone())
            .queues([queue.clone()])
            .concurrency(2);
        async move {
            let worker = builder.build().await.expect("worker starts");
            let stop = worker.shutdown_handle();
            (stop, tokio::spawn(worker.run()))
        }
    };
    // Only worker A runs at first: B's tasks are sent first, so a worker A
    // that wrongly consumed B's queue would take them before its own.
    let (stop_a, running_a) = start(&queue_a).await;
    let mut for_b = Vec::new();
    for _ in 0..10 {
        for_b.push(
            where_am_i
                .s()
                .queue(queue_b.clone())
                .apply_async_with(&app)
                .await
                .unwrap(),
        );
    }
    let mut for_a = Vec::new();
    for _ in 0..10 {
        for_a.push(
            where_am_i
                .s()
                .queue(queue_a.clone())
                .apply_async_with(&app)
                .await
                .unwrap(),
        );
    }
    let mut ran_on: HashMap<String, Vec<String>> = HashMap::new();
    for pending in &for_a {
        let queue = pending.get(RESULT_TIMEOUT).await.unwrap();
        ran_on
            .entry(queue)
            .or_default()
            .push(pending.id().to_owned());
    }
    // Worker A ran all of its tasks and none of B's: they all still wait in
    // B's queue, none ready.
    assert_eq!(
        app.broker().queue_message_count(&queue_b).await.unwrap(),
        10,
        "worker A took tasks routed to B's queue"
    );
    assert!(for_b.iter().all(|pending| !pending.ready()));
    let (stop_b, running_b) = start(&queue_b).await;
    for pending in &for_b {
        let queue = pending.get(RESULT_TIMEOUT).await.unwrap();
        ran_on
            .entry(queue)
            .or_default()
            .push(pending.id().to_owned());
    }
    // Each task ran from the queue it was routed to, exactly once.
    let ids = |handles: &[task_core::AsyncResult<String>]| {
        handles
            .iter()
            .map(|pending| pending.id().to_owned())
            .collect::<Vec<_>>()
    };
    let expected = HashMap::from([
        (queue_a.clone(), ids(&for_a)),
        (queue_b.clone(), ids(&for_b)),
    ]);
    assert_eq!(ran_on, expected);
    for (stop, running) in [(stop_a, running_a), (stop_b, running_b)] {
        stop.cancel();
        running.await.unwrap().unwrap();
    }
    for queue in [&queue_a, &queue_b] {
        assert_eq!(app.broker().queue_message_count(queue).await.unwrap(), 0);
        app.broker().delete_queue(queue).await.unwrap();
    }
    app.close().await.unwrap();
}

#[task(
    name = "test.retry.backoff",
    autoretry_for = ["Flaky"],
    max_retries = 5,
    retry_backoff = 0.2,
    retry_backoff_max = 0.5,
    retry_jitter = false
)]
async fn backoff(key: String) -> Result<u32, TaskError> {
    record_attempt(&key);
    Err(TaskError::new("Flaky", "still failing"))
}

#[task(
    name = "test.retry.jittered",
    autoretry_for = ["Flaky"],
    max_retries = 6,
    retry_backoff = 0.25,
    retry_backoff_max = 0.5
)]
async fn jittered(key: String) -> Result<u32, TaskError> {
    record_attempt(&key);
    Err(TaskError::new("Flaky", "still failing"))
}

fn gaps(key: &str) -> Vec<Duration> {
    attempts_of(key)
        .windows(2)
        .map(|pair| pair[1].2 - pair[0].2)
        .collect()
}

#[tokio::test]
async fn exponential_backoff_delays_stay_within_their_bounds() {
    let w = TestWorker::start("backoff", 2).await;
    let exact = backoff
        .s("exact".into())
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let jitter = jittered
        .s("jitter".into())
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    for pending in [&exact, &jitter] {
        match pending.get(RESULT_TIMEOUT).await {
            Err(Error::TaskFailed(failure)) => assert_eq!(failure.exc_type, "Flaky"),
            other => panic!("expected FAILURE after the retries, got {other:?}"),
        }
    }
    // Without jitter: 0.2 s, 0.4 s, then the cap of 0.5 s (never earlier).
    // Uncapped, retries 3 and 4 would wait 1.6 s and 3.2 s: the upper bound
    // (1 s of slack for a noisy machine) fails if the cap were ignored.
    let exact_gaps = gaps("exact");
    assert_eq!(exact_gaps.len(), 5);
    for (gap, expected_ms) in exact_gaps.iter().zip([200u64, 400, 500, 500, 500]) {
        let expected = Duration::from_millis(expected_ms);
        assert!(
            *gap >= expected,
            "retried after {gap:?}, before its backoff of {expected:?}"
        );
        assert!(
            *gap < expected + Duration::from_secs(1),
            "retried after {gap:?}, expected about {expected:?} (the cap is 500 ms)"
        );
    }
    // Full jitter: each delay is drawn from [0, min(0.25 × 2^n, 0.5)] s (the
    // exact bounds are pinned by `RetryPolicy::delay`'s unit test). Without
    // jitter every gap would be at least its full delay; with it, the chance
    // that all six draws land within the routing time of the top is nil.
    let jitter_gaps = gaps("jitter");
    assert_eq!(jitter_gaps.len(), 6);
    let caps: Vec<Duration> = (0..6)
        .map(|n| Duration::from_millis((250u64 << n).min(500)))
        .collect();
    assert!(
        jitter_gaps.iter().zip(&caps).any(|(gap, cap)| gap < cap),
        "no retry waited less than its full delay {caps:?}: jitter is off ({jitter_gaps:?})"
    );
    for (n, (gap, cap)) in jitter_gaps.iter().zip(&caps).enumerate() {
        assert!(
            *gap < *cap + Duration::from_secs(1),
            "retry {n} waited {gap:?}, far above its cap of {cap:?}"
        );
    }
    println!("backoff gaps: exact {exact_gaps:?}, jittered {jitter_gaps:?}");
    w.stop().await;
}

/// What the rate-limit test's tasks did, in the order they did it.
static RATE_EVENTS: Mutex<Vec<RateEvent>> = Mutex::new(Vec::new());

#[derive(Debug, Clone, Copy)]
enum RateEvent {
    /// A rate-limited run started.
    Limited(Instant),
    /// The task of another type ran.
    Other,
}

#[task(name = "test.rate.limited", rate_limit = "5/s")]
async fn limited(i: u32) -> Result<u32, TaskError> {
    RATE_EVENTS
        .lock()
        .unwrap()
        .push(RateEvent::Limited(Instant::now()));
    Ok(i)
}

#[task(name = "test.rate.unlimited")]
async fn unlimited() -> Result<(), TaskError> {
    RATE_EVENTS.lock().unwrap().push(RateEvent::Other);
    Ok(())
}

#[tokio::test]
async fn a_rate_limit_holds_a_burst_to_its_rate_without_dropping_any() {
    let w = TestWorker::start("rate", 4).await;
    let mut pending = Vec::new();
    for i in 0..10 {
        pending.push(
            limited
                .s(i)
                .queue(w.queue.clone())
                .apply_async_with(&w.app)
                .await
                .unwrap(),
        );
    }
    // Another task type, sent behind the burst, is not held up by it.
    unlimited
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap()
        .get(RESULT_TIMEOUT)
        .await
        .unwrap();
    for (i, p) in pending.iter().enumerate() {
        assert_eq!(p.get(RESULT_TIMEOUT).await.unwrap(), i as u32);
    }
    let events = RATE_EVENTS.lock().unwrap().clone();
    let other = events
        .iter()
        .position(|event| matches!(event, RateEvent::Other))
        .expect("the other task ran");
    // At 5/s the burst runs over 1.8 s; the other task ran while most of it
    // still waited its turn (about one run starts before it; held up behind
    // the burst, at least seven would have).
    let waiting = events.len() - 1 - other;
    let order: String = events
        .iter()
        .map(|event| match event {
            RateEvent::Limited(_) => 'L',
            RateEvent::Other => 'O',
        })
        .collect();
    assert!(
        waiting >= 5,
        "only {waiting} of 10 rate-limited runs started after the other task: it was held up (order of runs: {order})"
    );
    let starts: Vec<Instant> = events
        .iter()
        .filter_map(|event| match event {
            RateEvent::Limited(at) => Some(*at),
            RateEvent::Other => None,
        })
        .collect();
    let spacing: Vec<Duration> = starts.windows(2).map(|pair| pair[1] - pair[0]).collect();
    assert_eq!(starts.len(), 10, "every held-back task ran");
    // The limiter spaces turns 200 ms apart; a run may start a little late
    // on a busy machine (so the next gap looks shorter), never in a burst.
    for gap in &spacing {
        assert!(
            *gap >= Duration::from_millis(100),
            "two runs only {gap:?} apart at 5/s"
        );
    }
    let span = starts[9] - starts[0];
    assert!(
        span >= Duration::from_millis(1700),
        "10 runs at 5/s took only {span:?}"
    );
    println!("rate 5/s: 10 runs over {span:?}, the other task ran before {waiting} of them");
    w.stop().await;
}
