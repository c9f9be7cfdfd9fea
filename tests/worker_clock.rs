//! The worker's time-dependent paths on `memory://` with tokio's paused
//! clock: they run in milliseconds and never wait on the wall clock. (What
//! they test is the worker's own logic; RabbitMQ's behaviour is pinned by the
//! broker contract and the integration tests.)

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use task_core::{task, App, Error, TaskError, TaskState};
use task_worker::{Worker, WorkerError};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(600);

static LONG_FINISHED: AtomicBool = AtomicBool::new(false);

#[task(name = "clock.long", track_started)]
async fn long() -> Result<(), TaskError> {
    tokio::time::sleep(Duration::from_secs(60)).await;
    LONG_FINISHED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Completion order across the tasks of one test.
static ORDER: AtomicU32 = AtomicU32::new(0);
/// When each `clock.limited` run started.
static LIMITED_STARTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[task(name = "clock.limited", rate_limit = "1/s")]
async fn limited() -> Result<u32, TaskError> {
    LIMITED_STARTS.lock().unwrap().push(Instant::now());
    Ok(ORDER.fetch_add(1, Ordering::SeqCst))
}

/// Rate-limited like `clock.limited`, for the test that needs the wall clock.
#[task(name = "clock.limited_slowly", rate_limit = "2/s")]
async fn limited_slowly() -> Result<(), TaskError> {
    Ok(())
}

#[task(name = "clock.quick")]
async fn quick() -> Result<u32, TaskError> {
    Ok(ORDER.fetch_add(1, Ordering::SeqCst))
}

struct Running {
    app: App,
    queue: String,
    stop: CancellationToken,
    handle: JoinHandle<Result<(), WorkerError>>,
}

async fn start(
    label: &str,
    configure: impl FnOnce(task_worker::WorkerBuilder) -> task_worker::WorkerBuilder,
) -> Running {
    let app = App::builder()
        .broker_url(format!("memory://clock-{label}"))
        .set_as_default(false)
        .connect()
        .await
        .unwrap();
    let queue = format!("clock.{label}");
    let worker = configure(Worker::builder().app(app.clone()).queues([queue.clone()]))
        .build()
        .await
        .unwrap();
    Running {
        app,
        queue,
        stop: worker.shutdown_handle(),
        handle: tokio::spawn(worker.run()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_still_running_at_the_shutdown_timeout_is_stopped_and_its_message_requeued() {
    let w = start("shutdown", |b| b.shutdown_timeout(Duration::from_secs(1))).await;
    let pending = long
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    pending
        .wait_for_state(|state| state == TaskState::Started, WAIT)
        .await
        .unwrap();
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
    // Long after `run` returned, the task has not run on beside the copy
    // that went back to the queue.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        !LONG_FINISHED.load(Ordering::SeqCst),
        "the task ran on after run() returned"
    );
    assert_eq!(
        w.app.broker().queue_message_count(&w.queue).await.unwrap(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limited_deliveries_do_not_hold_up_other_tasks_and_keep_their_rate() {
    let w = start("rate", |b| b.concurrency(2).prefetch(2)).await;
    let mut pending = Vec::new();
    for _ in 0..10 {
        pending.push(
            limited
                .s()
                .queue(w.queue.clone())
                .apply_async_with(&w.app)
                .await
                .unwrap(),
        );
    }
    let other = quick
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let other_done = other.get(WAIT).await.unwrap();
    let mut limited_done = Vec::new();
    for result in &pending {
        limited_done.push(result.get(WAIT).await.unwrap());
    }
    // The quick task did not wait behind the rate-limited ones that filled
    // the prefetch window (it used to finish last).
    assert!(
        limited_done
            .iter()
            .filter(|&&done| done > other_done)
            .count()
            >= 5,
        "quick finished {other_done}th, limited ones at {limited_done:?}"
    );
    let starts = LIMITED_STARTS.lock().unwrap().clone();
    assert_eq!(starts.len(), 10, "every rate-limited task ran once");
    let mut sorted = starts.clone();
    sorted.sort();
    for pair in sorted.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(999),
            "runs closer than the 1/s rate: {:?}",
            pair[1] - pair[0]
        );
    }
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

/// Expiry is wall-clock time (`expires` is an absolute UTC time on the
/// wire), so this one runs on the real clock: about half a second.
#[tokio::test]
async fn a_task_that_expires_while_waiting_for_its_rate_limit_is_revoked_not_run() {
    let w = start("rate-expiry", |b| b.concurrency(2)).await;
    let first = limited_slowly
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    // Its turn comes half a second after the first: past its expiry.
    let second = limited_slowly
        .s()
        .queue(w.queue.clone())
        .expires_in(Duration::from_millis(200))
        .apply_async_with(&w.app)
        .await
        .unwrap();
    first.get(WAIT).await.unwrap();
    match second.get(WAIT).await {
        Err(Error::Revoked { .. }) => {}
        other => panic!("expected REVOKED, got {other:?}"),
    }
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

/// When each `clock.stamp` run started, by the tokio clock.
static STAMPS: Mutex<Vec<(u32, Instant)>> = Mutex::new(Vec::new());

#[task(name = "clock.stamp")]
async fn stamp(tag: u32) -> Result<u32, TaskError> {
    STAMPS.lock().unwrap().push((tag, Instant::now()));
    Ok(tag)
}

fn stamped(tag: u32) -> Instant {
    STAMPS
        .lock()
        .unwrap()
        .iter()
        .find(|(t, _)| *t == tag)
        .map(|(_, at)| *at)
        .expect("the task ran")
}

#[tokio::test(start_paused = true)]
async fn countdowns_and_etas_run_when_due_never_before() {
    let w = start("eta", |b| b).await;
    let sent = Instant::now();
    let in_90s = stamp
        .s(90)
        .countdown(Duration::from_secs(90))
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let in_3h = stamp
        .s(10_800)
        .eta(task_core::clock::now() + chrono::Duration::hours(3))
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let now = stamp
        .s(0)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(now.get(WAIT).await.unwrap(), 0);
    assert_eq!(in_90s.get(WAIT).await.unwrap(), 90);
    assert_eq!(
        in_3h.get(Duration::from_secs(4 * 3600)).await.unwrap(),
        10_800
    );
    for (tag, due) in [(0u32, 0u64), (90, 90), (10_800, 10_800)] {
        let started = stamped(tag) - sent;
        assert!(
            started >= Duration::from_secs(due)
                && started < Duration::from_secs(due) + Duration::from_secs(1),
            "task {tag} due after {due} s started after {started:?}"
        );
    }
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

static BACKOFF_RUNS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[task(
    name = "clock.backoff",
    autoretry_for = ["Flaky"],
    max_retries = 4,
    retry_backoff = 2,
    retry_backoff_max = 10,
    retry_jitter = false
)]
async fn backoff() -> Result<u32, TaskError> {
    let mut runs = BACKOFF_RUNS.lock().unwrap();
    runs.push(Instant::now());
    if runs.len() < 5 {
        return Err(TaskError::new("Flaky", "not yet"));
    }
    Ok(runs.len() as u32)
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_up_to_the_cap() {
    let w = start("backoff", |b| b).await;
    let result = backoff
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(result.get(WAIT).await.unwrap(), 5);
    let runs = BACKOFF_RUNS.lock().unwrap().clone();
    let gaps: Vec<u64> = runs.windows(2).map(|p| (p[1] - p[0]).as_secs()).collect();
    // 2 s, 4 s, 8 s, then the 10 s cap (not 16 s).
    assert_eq!(gaps, [2, 4, 8, 10], "{runs:?}");
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

static JITTER_RUNS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[task(
    name = "clock.jitter",
    autoretry_for = ["Flaky"],
    max_retries = 8,
    retry_backoff = 64,
    retry_backoff_max = 64
)]
async fn jittered() -> Result<(), TaskError> {
    let mut runs = JITTER_RUNS.lock().unwrap();
    runs.push(Instant::now());
    if runs.len() < 9 {
        return Err(TaskError::new("Flaky", "not yet"));
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn retry_jitter_spreads_the_delays_below_their_cap() {
    let w = start("jitter", |b| b).await;
    let result = jittered
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    result.get(Duration::from_secs(3600)).await.unwrap();
    let runs = JITTER_RUNS.lock().unwrap().clone();
    let gaps: Vec<Duration> = runs.windows(2).map(|p| p[1] - p[0]).collect();
    assert_eq!(gaps.len(), 8);
    // Full jitter: each delay uniform in [0, 64 s]; eight of them all within
    // 1 s of the cap would mean no jitter (chance about 1e-14).
    assert!(
        gaps.iter().all(|gap| *gap <= Duration::from_secs(65)),
        "{gaps:?}"
    );
    assert!(
        gaps.iter().any(|gap| *gap < Duration::from_secs(63)),
        "no jitter: {gaps:?}"
    );
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

#[task(name = "clock.slow", soft_time_limit = 5, time_limit = 20)]
async fn slow(work_secs: u64) -> Result<String, TaskError> {
    let context = task_core::current_task().expect("runs in a worker");
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(work_secs)) => Ok("finished".into()),
        () = context.soft_time_limit() => {
            // Wrap up after the soft limit; past the hard one this is cut.
            tokio::time::sleep(Duration::from_secs(work_secs)).await;
            Ok("wrapped up".into())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_soft_limit_warns_the_task_and_the_hard_limit_stops_it() {
    let w = start("limits", |b| b).await;
    let run = |secs| slow.s(secs).queue(w.queue.clone()).apply_async_with(&w.app);
    let finishes = run(1).await.unwrap();
    let wraps_up = run(10).await.unwrap();
    let too_slow = run(30).await.unwrap();
    assert_eq!(finishes.get(WAIT).await.unwrap(), "finished");
    assert_eq!(wraps_up.get(WAIT).await.unwrap(), "wrapped up");
    let error = too_slow.get(WAIT).await.unwrap_err();
    assert_eq!(
        error.as_task_failure().unwrap().exc_type,
        "TimeLimitExceeded"
    );
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}
