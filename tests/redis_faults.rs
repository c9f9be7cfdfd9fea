//! Fault tests of the Redis broker (`redis://`): worker processes killed
//! mid-task, Redis restarted and SIGKILLed under a stream of publishes, a
//! task running for many visibility timeouts, countdowns across a restart.
//!
//! Each test runs a private `redis-server` of its own
//! (`common/private_redis.rs`: its own port and directory, `appendonly` with
//! `appendfsync always`), never the shared one at 6379, and keeps its
//! results in the Redis result backend on that same server. Workers are the
//! shipped worker binary (`examples/worker.rs`, rebuilt by the first test
//! that needs it; its log names every task it receives and finishes, by id)
//! or in-process workers running a task of this file's own that records
//! each of its runs.
//!
//! What the broker promises (`task_core::broker::redis`): a message popped
//! is in `unacked` until it is acked, which happens after its result is
//! stored; a process renews the messages it holds every third of the
//! visibility timeout, and every consuming process puts back those nobody
//! renewed for a whole timeout. So a task is never lost and runs at least
//! once; it runs again only when its worker died (or lost a pop's reply)
//! before its ack. Each test prints its figures: sent, completed,
//! duplicated (tasks that ran more than once; for the killed worker, those
//! run again although their result was already stored, the tasks it killed
//! mid-run being printed apart), send errors (typed), hung publishes, lost,
//! and how long things took (restore after a kill, resume after Redis came
//! back).

mod common;
#[path = "common/private_redis.rs"]
mod private_redis;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use private_redis::{PrivateRedis, Resp};
use serde_json::Value;
use task_core::broker::redis::RedisBroker;
use task_core::broker::Broker;
use task_core::{current_task, task, App, AsyncResult, Error, TaskError};
use task_examples::{add, sleep};
use task_worker::Worker;
use tokio_util::sync::CancellationToken;

/// Every wait in these tests is bounded by one of these.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long all the results of one test may take to arrive, in all.
const RESULTS_TIMEOUT: Duration = Duration::from_secs(45);
/// A publish that takes longer than this is counted as hung (the broker
/// tries again through a lost connection for 60 s, and a restart here lasts
/// about a second).
const PUBLISH_BOUND: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Worker processes

/// `target/<profile>/examples/worker`, rebuilt once per test run: `cargo test
/// --test redis_faults` does not build the examples, and a stale worker
/// would test old code.
fn worker_binary() -> PathBuf {
    common::fresh_example_binary("worker")
}

/// The worker binary as a child process on a Redis broker, its results in
/// the Redis backend, its log kept line by line.
struct WorkerProcess {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Output pipes read to their end (2 once the process is gone).
    pipes_done: Arc<AtomicUsize>,
    exited: Option<ExitStatus>,
}

impl WorkerProcess {
    fn spawn(
        name: &str,
        broker: &str,
        backend: &str,
        queue: &str,
        concurrency: usize,
        extra: &[&str],
    ) -> Self {
        let binary = worker_binary();
        let mut command = Command::new(binary);
        command
            .args(["--broker", broker, "--result-backend", backend, "-Q", queue])
            .args(["-c", &concurrency.to_string()])
            .args(["--loglevel", "info", "--shutdown-timeout", "20"])
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("BROKER_URL")
            .env_remove("RESULT_BACKEND")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A test process killed before its drops ran takes its workers along.
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            // SAFETY: only an async-signal-safe call between fork and exec.
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("the worker binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let pipes_done = Arc::new(AtomicUsize::new(0));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for pipe in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let log = Arc::clone(&log);
            let pipes_done = Arc::clone(&pipes_done);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(strip_ansi(&line));
                }
                pipes_done.fetch_add(1, Ordering::SeqCst);
            });
        }
        Self {
            name: name.to_owned(),
            child,
            log,
            pipes_done,
            exited: None,
        }
    }

    /// Task ids of the log lines containing `event`, once per line.
    fn ids(&self, event: &str) -> Vec<String> {
        self.lines(event)
            .iter()
            .filter_map(|line| task_id_of(line))
            .collect()
    }

    fn lines(&self, text: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(text))
            .cloned()
            .collect()
    }

    /// Tasks started (once per run: a task run again appears again).
    fn received(&self) -> Vec<String> {
        self.ids("task received")
    }

    /// Tasks finished with success.
    fn succeeded(&self) -> Vec<String> {
        self.ids("task succeeded")
    }

    /// When the worker started task `id` (first time), from its log.
    fn received_at(&self, id: &str) -> Option<DateTime<Utc>> {
        self.lines("task received")
            .iter()
            .find(|line| task_id_of(line).as_deref() == Some(id))
            .and_then(|line| timestamp_of(line))
    }

    /// When the worker first logged `event` after `after`.
    fn first_after(&self, event: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.lines(event)
            .iter()
            .filter_map(|line| timestamp_of(line))
            .find(|at| *at > after)
    }

    /// Waits (bounded) until `condition` holds.
    async fn wait_until(&self, what: &str, timeout: Duration, condition: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "worker {}: {what} did not happen within {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&self) {
        self.wait_until("ready", READY_TIMEOUT, |w| {
            !w.lines("worker ready").is_empty()
        })
        .await;
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: sending a signal to our own child process, not reaped yet.
        unsafe { libc::kill(pid, signal) };
    }

    /// Waits (bounded) for the process to exit and for its whole log.
    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the worker") {
                self.exited = Some(status);
                self.wait_until("log read to its end", Duration::from_secs(5), |w| {
                    w.pipes_done.load(Ordering::SeqCst) == 2
                })
                .await;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not exit within {EXIT_TIMEOUT:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then the exit status (graceful shutdown).
    async fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit().await
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.log.lock().unwrap();
            let tail = &log[log.len().saturating_sub(60)..];
            eprintln!("--- worker {} log (tail) ---", self.name);
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

fn task_id_of(line: &str) -> Option<String> {
    let start = line.find("task_id=")? + "task_id=".len();
    let id = line[start..].split_whitespace().next()?;
    Some(id.trim_matches('"').to_owned())
}

/// The RFC 3339 time stamp a log line starts with.
fn timestamp_of(line: &str) -> Option<DateTime<Utc>> {
    let stamp = line.split_whitespace().next()?;
    DateTime::parse_from_rfc3339(stamp)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// In-process workers and the task of this file's own

/// The runs of `test.redis_faults.record` by the in-process workers, by task
/// id: when each run started.
static RUNS: Mutex<BTreeMap<String, Vec<Instant>>> = Mutex::new(BTreeMap::new());

/// A task with a side effect the test can see: it records each of its runs.
#[task(name = "test.redis_faults.record")]
async fn record(value: i64) -> Result<i64, TaskError> {
    let id = current_task().expect("runs in a worker").id().to_owned();
    RUNS.lock()
        .unwrap()
        .entry(id)
        .or_default()
        .push(Instant::now());
    Ok(value)
}

fn runs_of(id: &str) -> Vec<Instant> {
    RUNS.lock().unwrap().get(id).cloned().unwrap_or_default()
}

/// An app on the private Redis: broker `broker_url`, results in `backend`.
async fn redis_app(broker_url: &str, backend: &str) -> App {
    App::builder()
        .broker_url(broker_url)
        .result_backend(backend)
        .set_as_default(false)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {broker_url}: {e}"))
}

/// An in-process worker of an app of its own (so a Redis broker of its
/// own: another "process" for the visibility upkeep) on `queue`.
struct LocalWorker {
    stop: CancellationToken,
    running: tokio::task::JoinHandle<Result<(), task_worker::WorkerError>>,
    app: App,
}

impl LocalWorker {
    async fn start(broker_url: &str, backend: &str, queue: &str, concurrency: usize) -> Self {
        common::init_logs();
        let app = redis_app(broker_url, backend).await;
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let ready = Mutex::new(Some(ready));
        let worker = Worker::builder()
            .app(app.clone())
            .queues([queue.to_owned()])
            .concurrency(concurrency)
            .node_name(format!("{queue}@%h"))
            .on_ready(move |_| {
                if let Some(ready) = ready.lock().unwrap().take() {
                    let _ = ready.send(());
                }
            })
            .build()
            .await
            .expect("the in-process worker starts");
        let stop = worker.shutdown_handle();
        let running = tokio::spawn(worker.run());
        tokio::time::timeout(READY_TIMEOUT, is_ready)
            .await
            .expect("the in-process worker gets ready")
            .expect("the in-process worker gets ready");
        Self { stop, running, app }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(EXIT_TIMEOUT, self.running)
            .await
            .expect("the in-process worker stops")
            .expect("the worker task does not panic")
            .expect("the worker stops cleanly");
        let _ = self.app.close().await;
    }
}

// ---------------------------------------------------------------------------
// Tasks sent, and what became of them

/// One task sent and its expected value.
struct Sent {
    expected: Value,
    result: AsyncResult<Value>,
}

impl Sent {
    fn id(&self) -> &str {
        self.result.id()
    }
}

async fn send_sleep(app: &App, queue: &str, seconds: f64) -> Result<Sent, Error> {
    let result = sleep
        .s(seconds)
        .queue(queue.to_owned())
        .returning::<Value>()
        .apply_async_with(app)
        .await?;
    Ok(Sent {
        expected: Value::from(seconds),
        result,
    })
}

async fn send_add(app: &App, queue: &str, x: i64) -> Result<Sent, Error> {
    let result = add
        .s(x, 1000)
        .queue(queue.to_owned())
        .returning::<Value>()
        .apply_async_with(app)
        .await?;
    Ok(Sent {
        expected: Value::from(x + 1000),
        result,
    })
}

async fn send_record(app: &App, queue: &str, x: i64) -> Result<Sent, Error> {
    let result = record
        .s(x)
        .queue(queue.to_owned())
        .returning::<Value>()
        .apply_async_with(app)
        .await?;
    Ok(Sent {
        expected: Value::from(x),
        result,
    })
}

/// Waits for every result (all within [`RESULTS_TIMEOUT`]); returns how many
/// arrived with the right value, and the ids of the others (lost), printed.
async fn collect(test: &str, sent: &[Sent]) -> (usize, Vec<String>) {
    let deadline = Instant::now() + RESULTS_TIMEOUT;
    let mut completed = 0;
    let mut lost = Vec::new();
    for task in sent {
        let left = deadline.saturating_duration_since(Instant::now());
        match task.result.get(left).await {
            Ok(value) => {
                assert_eq!(
                    value,
                    task.expected,
                    "task {} returned a wrong value",
                    task.id()
                );
                completed += 1;
            }
            Err(error) => {
                println!("[redis faults] {test}: LOST task {}: {error}", task.id());
                lost.push(task.id().to_owned());
            }
        }
    }
    (completed, lost)
}

/// Ids that occur more than once.
fn duplicates<'a>(ids: impl IntoIterator<Item = &'a String>) -> Vec<&'a String> {
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    let mut repeated: Vec<&String> = counts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect();
    repeated.sort();
    repeated
}

/// The task ids of the messages in `unacked` now (kombu's entries:
/// `[envelope, exchange, routing key]`, the task id in the envelope's
/// headers).
fn unacked_task_ids(redis: &PrivateRedis) -> Vec<String> {
    let Ok(Resp::Array(Some(entries))) = redis.command(&["HVALS", "unacked"]) else {
        panic!("HVALS unacked answers an array");
    };
    entries
        .iter()
        .map(|entry| {
            let text = entry.text().expect("an unacked entry is a string");
            let (envelope, _, _): (Value, String, String) =
                serde_json::from_str(&text).expect("kombu's [message, exchange, routing key]");
            envelope["headers"]["id"]
                .as_str()
                .expect("a task message's id header")
                .to_owned()
        })
        .collect()
}

/// The state stored for task `id` in the result backend (`None`: nothing).
fn stored_state(redis: &PrivateRedis, id: &str) -> Option<String> {
    let reply = redis
        .command(&["GET", &format!("celery-task-meta-{id}")])
        .expect("the private Redis answers");
    let meta: Value = serde_json::from_str(&reply.text()?).expect("a stored result is JSON");
    meta["status"].as_str().map(str::to_owned)
}

/// Waits (bounded) until `unacked` is empty; returns what is left.
async fn wait_unacked_empty(inspector: &RedisBroker, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let left = inspector.unacked_count().await.expect("unacked count");
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a test saw, printed at its end.
#[derive(Debug, Default)]
struct Figures {
    sent: usize,
    completed: usize,
    duplicated: usize,
    send_errors: usize,
    hung: usize,
    lost: usize,
}

impl Figures {
    fn print(&self, test: &str) {
        println!(
            "[redis faults] {test}: sent={} completed={} duplicated={} send-errors={} \
             hung={} lost={}",
            self.sent, self.completed, self.duplicated, self.send_errors, self.hung, self.lost
        );
    }
}

// ---------------------------------------------------------------------------
// 1. A worker process killed mid-task

/// SIGKILL a worker process in the middle of its tasks: what it held (the
/// tasks it ran and those it had taken ahead) stays in `unacked`, nobody
/// renews it any more, and once the visibility timeout has passed a second
/// worker process restores it and runs it. Every result arrives; a task
/// runs twice only if it was killed between storing its result and its ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_process_loses_no_task_on_redis() {
    worker_binary(); // built before the clock starts
    let started = Instant::now();
    let visibility = Duration::from_secs(2);
    let redis = PrivateRedis::start().await;
    let backend = redis.url();
    let broker_url = format!(
        "{}?visibility_timeout={}",
        redis.url(),
        visibility.as_secs()
    );
    let queue = common::unique_queue("redis-faults.kill");
    let app = redis_app(&broker_url, &backend).await;
    let inspector = RedisBroker::connect(&broker_url).await.expect("inspector");

    let mut first = WorkerProcess::spawn("kill-1", &broker_url, &backend, &queue, 4, &[]);
    first.wait_ready().await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(send_sleep(&app, &queue, 1.0).await.expect("sent"));
        sent.push(send_add(&app, &queue, i).await.expect("sent"));
    }
    let slow: HashSet<String> = sent
        .iter()
        .filter(|t| t.expected == 1.0)
        .map(|t| t.id().to_owned())
        .collect();
    first
        .wait_until(
            "a second round of slow tasks",
            Duration::from_secs(20),
            |w| {
                let done = w.succeeded().iter().filter(|id| slow.contains(*id)).count();
                let running = w.received().iter().filter(|id| slow.contains(*id)).count();
                done >= 4 && running > done
            },
        )
        .await;
    first.signal(libc::SIGKILL);
    let killed_at = Utc::now();
    assert!(!first.wait_exit().await.success(), "killed");

    // What the dead worker held: running or taken ahead, not acked.
    let held = unacked_task_ids(&redis);
    let started_by_first: HashSet<String> = first.received().into_iter().collect();
    let done_by_first: HashSet<String> = first.succeeded().into_iter().collect();
    let running_at_kill: Vec<&String> = held
        .iter()
        .filter(|id| started_by_first.contains(*id))
        .collect();
    // Killed between storing its result and its ack: it will run again.
    let stored_at_kill: HashSet<&String> = held
        .iter()
        .filter(|id| stored_state(&redis, id).as_deref() == Some("SUCCESS"))
        .collect();
    assert!(
        !running_at_kill.is_empty(),
        "the worker was killed mid-task"
    );
    for id in &started_by_first {
        assert!(
            done_by_first.contains(id) || held.contains(id),
            "task {id}, unfinished, is in unacked after the kill"
        );
    }

    let mut second = WorkerProcess::spawn("kill-2", &broker_url, &backend, &queue, 4, &[]);
    second.wait_ready().await;
    let (completed, lost) = collect("SIGKILL a worker process", &sent).await;
    let left = wait_unacked_empty(&inspector, Duration::from_secs(10)).await;
    assert!(second.terminate().await.success());

    let redone: HashSet<String> = second.received().into_iter().collect();
    for id in &held {
        assert!(
            redone.contains(id),
            "task {id}, held by the dead worker, ran again"
        );
    }
    // Nobody renewed them after the kill, so they came back a visibility
    // timeout after their last renewal (a third of a timeout before the
    // kill at most), not sooner.
    let restored_after = held
        .iter()
        .filter_map(|id| second.received_at(id))
        .min()
        .map(|at| (at - killed_at).to_std().unwrap_or_default())
        .expect("the held tasks ran in the second worker");
    let all_runs: Vec<String> = first
        .received()
        .into_iter()
        .chain(second.received())
        .collect();
    let repeated = duplicates(&all_runs);
    let after_result = repeated
        .iter()
        .filter(|id| stored_at_kill.contains(**id))
        .count();
    let figures = Figures {
        sent: sent.len(),
        completed,
        // A run of a task whose result was already stored.
        duplicated: after_result,
        lost: lost.len(),
        ..Figures::default()
    };
    figures.print("SIGKILL a worker process");
    println!(
        "[redis faults]   first worker: {} done, {} held at the kill ({} running, {} taken \
         ahead, {} with their result already stored); second worker: {} done; the held tasks \
         came back {:.1?} after the kill (visibility timeout {visibility:?}); started twice: {} \
         (killed mid-run), of which {after_result} ran again although their result was \
         stored (the duplicates); {:.1?} in all",
        done_by_first.len(),
        held.len(),
        running_at_kill.len(),
        held.len() - running_at_kill.len(),
        stored_at_kill.len(),
        second.succeeded().len(),
        restored_after,
        repeated.len(),
        started.elapsed(),
    );
    assert_eq!(figures.lost, 0, "every result arrived");
    assert_eq!(left, 0, "nothing stays in unacked");
    assert!(
        restored_after >= visibility / 2,
        "restored {restored_after:?} after the kill: before the visibility timeout"
    );
    // Every task that ran twice was one the dead worker held.
    for id in &repeated {
        assert!(
            held.contains(*id),
            "task {id} ran twice, not held at the kill"
        );
    }
    assert_eq!(inspector.queue_message_count(&queue).await.unwrap(), 0);
    app.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// 2. Redis restarted, or killed, under a stream of publishes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// SIGTERM, then started again on the same directory.
    Restart,
    /// SIGKILL, then started again on the same directory.
    Kill,
}

/// A client publishes a steady stream of tasks, half to a worker process,
/// half to an in-process worker, while Redis goes away for a second and
/// comes back on the same data (`outage`) in the middle. Every publish returns within a bound, Ok or a
/// typed error; every task published gets its result; both workers resume
/// by themselves; nothing stays in `unacked`; duplicates are counted.
async fn a_stream_through_an_outage(outage: Outage, test: &str) {
    const TASKS: usize = 500;
    const OUTAGE_AT: usize = 150;
    const OUTAGE: Duration = Duration::from_secs(1);
    worker_binary(); // built before the clock starts
    let started = Instant::now();
    let mut redis = PrivateRedis::start().await;
    let backend = redis.url();
    // A pop whose reply the outage swallowed is in unacked, held by
    // nobody: it comes back after this long.
    let broker_url = format!("{}?visibility_timeout=2", redis.url());
    let label = match outage {
        Outage::Restart => "redis-faults.restart",
        Outage::Kill => "redis-faults.sigkill",
    };
    let process_queue = common::unique_queue(&format!("{label}.process"));
    let local_queue = common::unique_queue(&format!("{label}.local"));
    let app = redis_app(&broker_url, &backend).await;
    let inspector = RedisBroker::connect(&broker_url).await.expect("inspector");

    let mut process = WorkerProcess::spawn(test, &broker_url, &backend, &process_queue, 4, &[]);
    let local = LocalWorker::start(&broker_url, &backend, &local_queue, 4).await;
    process.wait_ready().await;

    let progress = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (app, progress) = (app.clone(), Arc::clone(&progress));
        let (process_queue, local_queue) = (process_queue.clone(), local_queue.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut send_errors = Vec::new();
            let mut hung = 0;
            let mut longest = Duration::ZERO;
            for i in 0..TASKS {
                let x = i64::try_from(i).unwrap();
                let publishing = Instant::now();
                let publish = async {
                    if i % 2 == 0 {
                        send_add(&app, &process_queue, x).await
                    } else {
                        send_record(&app, &local_queue, x).await
                    }
                };
                match tokio::time::timeout(PUBLISH_BOUND, publish).await {
                    Ok(Ok(task)) => sent.push(task),
                    Ok(Err(error)) => send_errors.push(error),
                    Err(_) => hung += 1,
                }
                longest = longest.max(publishing.elapsed());
                progress.store(i + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (sent, send_errors, hung, longest)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.load(Ordering::SeqCst) < OUTAGE_AT {
        assert!(Instant::now() < deadline, "the stream does not flow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let down = Instant::now();
    match outage {
        Outage::Restart => redis.stop().await,
        Outage::Kill => redis.kill().await,
    }
    assert!(!redis.is_running());
    // Down for a while: every client meets refused connections, not just a
    // reset one (the pause is the outage itself, not a synchronization).
    tokio::time::sleep(OUTAGE).await;
    redis.restart().await;
    let (back, back_wall) = (Instant::now(), Utc::now());
    let sent_before_back = progress.load(Ordering::SeqCst);
    println!(
        "[redis faults]   {test}: Redis down and back in {:.1?}, after {sent_before_back} publishes",
        back.duration_since(down)
    );

    let (sent, send_errors, hung, longest) = tokio::time::timeout(Duration::from_secs(90), sender)
        .await
        .expect("the sender does not hang")
        .expect("the sender does not panic");
    for error in &send_errors {
        println!("[redis faults]   {test}: a publish failed: {error}");
    }
    let (completed, lost) = collect(test, &sent).await;
    let left = wait_unacked_empty(&inspector, Duration::from_secs(10)).await;

    // When each worker ran its first task after Redis was back.
    let local_resumed = sent
        .iter()
        .flat_map(|task| runs_of(task.id()))
        .filter(|at| *at > back)
        .min()
        .map(|at| at.duration_since(back));
    let process_resumed = process
        .first_after("task succeeded", back_wall)
        .map(|at| (at - back_wall).to_std().unwrap_or_default());
    let process_runs = process.received();
    let local_repeated = sent
        .iter()
        .filter(|task| runs_of(task.id()).len() > 1)
        .count();
    let restored_lines = process.lines("restored messages").len();
    let figures = Figures {
        sent: sent.len(),
        completed,
        duplicated: duplicates(&process_runs).len() + local_repeated,
        send_errors: send_errors.len(),
        hung,
        lost: lost.len(),
    };
    figures.print(test);
    println!(
        "[redis faults]   {test}: {} publishes after the outage; the longest publish took \
         {longest:.1?}; resumed after Redis was back: worker process {process_resumed:.1?}, \
         in-process worker {local_resumed:.1?}; the worker process restored messages \
         left in unacked {restored_lines} time(s); {:.1?} in all",
        TASKS - sent_before_back,
        started.elapsed(),
    );

    assert_eq!(
        figures.hung, 0,
        "every publish returned within {PUBLISH_BOUND:?}"
    );
    assert_eq!(figures.lost, 0, "every task published got its result");
    assert_eq!(left, 0, "nothing stays in unacked");
    assert!(process_resumed.is_some(), "the worker process resumed");
    assert!(local_resumed.is_some(), "the in-process worker resumed");
    for queue in [&process_queue, &local_queue] {
        assert_eq!(inspector.queue_message_count(queue).await.unwrap(), 0);
    }
    assert!(process.terminate().await.success());
    local.stop().await;
    app.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_a_stream_of_tasks_loses_none() {
    a_stream_through_an_outage(Outage::Restart, "restart Redis under load").await;
}

/// With `appendfsync always` what Redis acknowledged is on disk before the
/// reply: a SIGKILL loses no publish that returned Ok, no pop's record in
/// `unacked`, no ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_killed_under_a_stream_of_tasks_loses_none() {
    a_stream_through_an_outage(Outage::Kill, "SIGKILL Redis under load").await;
}

// ---------------------------------------------------------------------------
// 3. A task longer than the visibility timeout

/// A "two-hour task" in small: a visibility timeout of 1 s and a task of
/// 5 s, with a second worker process consuming the same queue (and
/// restoring stale messages every 250 ms) and the test restoring too: the
/// holder renews its message, so nobody restores it, the task runs exactly
/// once, and its message leaves `unacked` once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_longer_than_the_visibility_timeout_runs_once() {
    worker_binary(); // built before the clock starts
    let started = Instant::now();
    let visibility = Duration::from_secs(1);
    let task_seconds = 5.0;
    let redis = PrivateRedis::start().await;
    let backend = redis.url();
    let broker_url = format!("{}?visibility_timeout=1", redis.url());
    let queue = common::unique_queue("redis-faults.long");
    let app = redis_app(&broker_url, &backend).await;
    let inspector = RedisBroker::connect(&broker_url).await.expect("inspector");
    assert_eq!(inspector.options().visibility_timeout, visibility);

    // One task at a time, nothing taken ahead: the holder holds only it.
    let holder = WorkerProcess::spawn(
        "long-holder",
        &broker_url,
        &backend,
        &queue,
        1,
        &["--prefetch", "1"],
    );
    holder.wait_ready().await;
    let long = send_sleep(&app, &queue, task_seconds).await.expect("sent");
    holder
        .wait_until("the long task starts", READY_TIMEOUT, |w| {
            w.received().iter().any(|id| id == long.id())
        })
        .await;
    let other = WorkerProcess::spawn("long-other", &broker_url, &backend, &queue, 2, &[]);
    other.wait_ready().await;
    // The other worker is a live consumer: quick tasks sent now run there
    // (the holder is busy) while the long one runs.
    let mut quick = Vec::new();
    for i in 0..3 {
        quick.push(send_add(&app, &queue, i).await.expect("sent"));
    }
    let (quick_done, quick_lost) = collect("long task: quick tasks", &quick).await;
    assert_eq!(quick_lost.len(), 0);
    assert!(
        !long.result.ready(),
        "the quick tasks ran during the long one"
    );

    // Restore what is stale, again and again, until the task is done: its
    // holder keeps renewing it, so it is never restored.
    let mut passes = 0;
    let mut held_throughout = true;
    while !long.result.ready() {
        assert_eq!(
            inspector.restore_visible().await.unwrap(),
            0,
            "a message still held was restored"
        );
        held_throughout &= inspector.unacked_count().await.unwrap() == 1;
        passes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            started.elapsed() < RESULTS_TIMEOUT,
            "the long task does not finish"
        );
    }
    let (done, lost) = collect("long task", std::slice::from_ref(&long)).await;
    assert_eq!((done, lost.len()), (1, 0));
    let left = wait_unacked_empty(&inspector, Duration::from_secs(10)).await;
    let runs = holder
        .received()
        .into_iter()
        .chain(other.received())
        .filter(|id| id == long.id())
        .count();
    println!(
        "[redis faults] a {task_seconds} s task with a visibility timeout of {visibility:?}: \
         ran {runs} time(s); {quick_done} quick tasks ran meanwhile on the other worker; \
         {passes} restore passes by the test found nothing to restore; left in unacked at the \
         end: {left}; {:.1?} in all",
        started.elapsed()
    );
    assert_eq!(runs, 1, "the long task ran exactly once");
    assert!(
        held_throughout,
        "its message stayed in unacked while it ran"
    );
    assert_eq!(left, 0, "its message left unacked once done");
    assert!(
        other.received().iter().all(|id| id != long.id()),
        "the other worker never got the long task"
    );
    drop((holder, other));
    app.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// 4. Countdowns across a restart

/// Countdown tasks published before a Redis restart are kept in Redis (the
/// delayed set), not in a process's memory: after the restart they are all
/// still waiting, none in its queue before it is due, and each runs once,
/// not before its countdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn countdowns_survive_a_redis_restart() {
    const TASKS: i64 = 12;
    let started = Instant::now();
    let mut redis = PrivateRedis::start().await;
    let backend = redis.url();
    let broker_url = format!("{}?visibility_timeout=2", redis.url());
    let queue = common::unique_queue("redis-faults.delays");
    let app = redis_app(&broker_url, &backend).await;
    let inspector = RedisBroker::connect(&broker_url).await.expect("inspector");
    let local = LocalWorker::start(&broker_url, &backend, &queue, 4).await;

    let base = Duration::from_secs(3);
    let mut sent = Vec::new();
    let mut dues = Vec::new();
    for i in 0..TASKS {
        let countdown = base + Duration::from_millis(100) * u32::try_from(i).unwrap();
        let sent_at = Instant::now();
        let result = record
            .s(i)
            .queue(queue.clone())
            .countdown(countdown)
            .returning::<Value>()
            .apply_async_with(&app)
            .await
            .expect("sent");
        sent.push(Sent {
            expected: Value::from(i),
            result,
        });
        dues.push(sent_at + countdown);
    }
    redis.restart().await;
    let restarted_after = started.elapsed();
    // Checked only when the restart was quicker than the first countdown.
    let earliest = dues[0];
    let (delayed, queued) = (
        inspector.delayed_count().await.unwrap(),
        inspector.queue_message_count(&queue).await.unwrap(),
    );
    let checked_before_due = Instant::now() < earliest;
    if checked_before_due {
        assert_eq!(delayed, u64::try_from(TASKS).unwrap(), "every delay kept");
        assert_eq!(queued, 0, "none moved before it was due");
    }

    let (completed, lost) = collect("countdowns across a restart", &sent).await;
    let mut earliest_margin: Option<Duration> = None;
    let mut early = Vec::new();
    let mut repeated = 0;
    for (task, due) in sent.iter().zip(&dues) {
        let runs = runs_of(task.id());
        repeated += usize::from(runs.len() > 1);
        let first = *runs.first().expect("the task ran");
        // The worker runs a task whose ETA is less than 50 ms away.
        if first + Duration::from_millis(50) < *due {
            early.push(task.id().to_owned());
        }
        let margin = first.saturating_duration_since(*due);
        earliest_margin = Some(earliest_margin.map_or(margin, |m| m.min(margin)));
    }
    let left = wait_unacked_empty(&inspector, Duration::from_secs(10)).await;
    let figures = Figures {
        sent: sent.len(),
        completed,
        duplicated: repeated,
        lost: lost.len(),
        ..Figures::default()
    };
    figures.print("countdowns across a Redis restart");
    println!(
        "[redis faults]   restarted {restarted_after:.1?} after the first publish; in the \
         delayed set after it: {delayed} (queued: {queued}; checked before due: \
         {checked_before_due}); early runs: {}; the first run came {earliest_margin:.1?} \
         after its due time at the soonest; {:.1?} in all",
        early.len(),
        started.elapsed()
    );
    assert_eq!(figures.lost, 0, "every countdown task ran");
    assert!(
        early.is_empty(),
        "tasks ran before their countdown: {early:?}"
    );
    assert_eq!(repeated, 0, "each ran once");
    assert_eq!(left, 0);
    assert_eq!(inspector.delayed_count().await.unwrap(), 0);
    local.stop().await;
    app.close().await.unwrap();
}
