//! Fault tests of the issue "Nothing lost": real RabbitMQ, real worker
//! processes (`examples/worker.rs`, rebuilt by the first test that needs it).
//!
//! Killing or stopping a worker does not disturb the broker, so those tests
//! use the shared RabbitMQ. Tests that stop or restart the broker run a
//! private node of their own (`common/private_broker.rs`).
//!
//! Each test prints its figures: sent, completed, duplicated (a task that
//! started more than once: at-least-once delivery), dead-lettered, typed
//! errors, lost.
//!
//! What "nothing lost" means with `rpc://` results: a task message is
//! durable and persistent and is acked only after its result was published,
//! so a task is never lost: it runs at least once. Its result is not
//! durable: it is a transient message in the caller's reply queue, which is
//! auto-delete and goes away with the caller's connection when RabbitMQ
//! stops. So a broker restart can drop a result that was in flight: one
//! sitting in the reply queue at the restart, or one published after the
//! restart before the caller declared its reply queue again (a worker that
//! reconnected first retries such a publish for twice its longest
//! reconnection backoff, then drops it, as Celery does). Celery's `rpc://`
//! backend has the same limits. So a waiting `.get()` may end with a typed
//! error instead of the value; such a task must still have run. The restart
//! test checks exactly that: every task sent either returns its value, or
//! fails with a typed error AND shows in the workers' side effects (the
//! worker process's log of task ids, the in-process task's record of
//! executions). A task with neither is lost, and fails the test. Since a
//! dropped result never comes, the tests do not wait a whole `.get()`
//! timeout for it: they stop waiting once every missing result's task has
//! run and nothing changed for a few seconds (`settle`).

mod common;
#[path = "common/private_broker.rs"]
mod private_broker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use private_broker::PrivateBroker;
use serde_json::Value;
use task_core::broker::amqp::{AmqpBroker, ReconnectPolicy};
use task_core::broker::{BrokerError, QueueSpec};
use task_core::canvas::{chord, group, Partial};
use task_core::protocol::chord_join;
use task_core::{current_task, task, App, AsyncResult, Error, TaskError};
use task_examples::{add, sleep, Stats};
use task_worker::Worker;

/// Every wait in these tests is bounded by one of these.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Worker processes

/// `target/<profile>/examples/worker`, rebuilt once per test run: `cargo test`
/// builds examples only when no test target is named (`cargo test --test
/// faults` does not), and a stale worker would test old code.
fn worker_binary() -> PathBuf {
    common::fresh_example_binary("worker")
}

/// The shipped worker binary as a child process, its log kept line by line
/// (the log names every task it receives and finishes, by id).
struct WorkerProcess {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Output pipes read to their end (2 once the process is gone).
    pipes_done: Arc<AtomicUsize>,
    exited: Option<ExitStatus>,
}

impl WorkerProcess {
    fn spawn(name: &str, broker: &str, queue: &str, concurrency: usize) -> Self {
        let mut command = Command::new(worker_binary());
        command
            .args(["--broker", broker, "-Q", queue, "-c"])
            .arg(concurrency.to_string())
            .args(["--loglevel", "info", "--shutdown-timeout", "20"])
            .env_remove("RUST_LOG")
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
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(event))
            .filter_map(|line| {
                let start = line.find("task_id=")? + "task_id=".len();
                let id = line[start..].split_whitespace().next()?;
                Some(id.trim_matches('"').to_owned())
            })
            .collect()
    }

    /// Tasks started (once per start: a redelivered task appears again).
    fn received(&self) -> Vec<String> {
        self.ids("task received")
    }

    /// Tasks finished with success.
    fn succeeded(&self) -> Vec<String> {
        self.ids("task succeeded")
    }

    /// When the worker started task `id` (first time), from its log.
    fn received_at(&self, id: &str) -> Option<DateTime<Utc>> {
        let log = self.log.lock().unwrap();
        let line = log
            .iter()
            .find(|line| line.contains("task received") && line.contains(id))?;
        let stamp = line.split_whitespace().next()?;
        DateTime::parse_from_rfc3339(stamp)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
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
        self.wait_until("ready", READY_TIMEOUT, |w| w.logged("worker ready"))
            .await;
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, signal) };
    }

    /// Waits (bounded) for the process to exit and for its whole log: what
    /// it wrote before it died may still be in the pipes.
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
// Tasks sent, and what became of them

/// Executions of `test.faults.record` by the in-process workers, by task id.
static RECORDED: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

/// A task with a side effect the test can see: it records its execution.
#[task(name = "test.faults.record")]
async fn record(value: i64) -> Result<i64, TaskError> {
    let id = current_task().expect("runs in a worker").id().to_owned();
    *RECORDED.lock().unwrap().entry(id).or_default() += 1;
    Ok(value)
}

fn recorded(id: &str) -> u32 {
    RECORDED.lock().unwrap().get(id).copied().unwrap_or(0)
}

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

/// What the test saw, printed at its end.
#[derive(Debug, Default)]
struct Figures {
    sent: usize,
    completed: usize,
    duplicated: usize,
    dead_lettered: u32,
    /// `.delay()` itself failed with a typed error: the caller knows.
    send_errors: usize,
    /// `.get()` failed with a typed error, but the task ran (result lost).
    typed_errors: usize,
    /// Neither a result nor a trace of execution: silently lost.
    lost: usize,
}

impl Figures {
    fn print(&self, test: &str) {
        println!(
            "[faults] {test}: sent={} completed={} duplicated={} dead-lettered={} \
             send-errors={} typed-errors={} lost={}",
            self.sent,
            self.completed,
            self.duplicated,
            self.dead_lettered,
            self.send_errors,
            self.typed_errors,
            self.lost
        );
    }
}

/// Waits until every result is in (value or typed error), or until the
/// missing ones have all run (seen by `ran`) and nothing changed for `quiet`
/// (their results were dropped: they will not come), or [`SETTLE_LIMIT`].
/// Returns each `.get()`'s outcome, in order.
async fn settle(
    sent: &[Sent],
    ran: impl Fn(&str) -> bool,
    quiet: Duration,
) -> Vec<Result<Value, Error>> {
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut before = (0, 0);
    loop {
        let mut outcomes = Vec::with_capacity(sent.len());
        for task in sent {
            outcomes.push(task.result.get(Duration::ZERO).await);
        }
        let missing: Vec<&Sent> = sent
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| matches!(outcome, Err(Error::Timeout { .. })))
            .map(|(task, _)| task)
            .collect();
        let missing_that_ran = missing.iter().filter(|t| ran(t.id())).count();
        let now = (sent.len() - missing.len(), missing_that_ran);
        if now != before {
            before = now;
            last_progress = Instant::now();
        }
        let quiet_enough = last_progress.elapsed() >= quiet && missing_that_ran == missing.len();
        if missing.is_empty() || quiet_enough || started.elapsed() >= SETTLE_LIMIT {
            return outcomes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sorts outcomes into figures; panics on a wrong value.
fn tally(sent: &[Sent], outcomes: &[Result<Value, Error>], ran: impl Fn(&str) -> bool) -> Figures {
    let mut figures = Figures {
        sent: sent.len(),
        ..Figures::default()
    };
    for (task, outcome) in sent.iter().zip(outcomes) {
        match outcome {
            Ok(value) => {
                assert_eq!(
                    value,
                    &task.expected,
                    "task {} returned a wrong value",
                    task.id()
                );
                figures.completed += 1;
            }
            Err(error) if ran(task.id()) => {
                println!(
                    "[faults]   task {} ran, but its .get() failed: {error}",
                    task.id()
                );
                figures.typed_errors += 1;
            }
            Err(error) => {
                println!(
                    "[faults]   LOST: task {} never ran and .get() failed: {error}",
                    task.id()
                );
                figures.lost += 1;
            }
        }
    }
    figures
}

/// Ids that occur more than once.
fn duplicates<'a>(ids: impl IntoIterator<Item = &'a String>) -> HashSet<&'a String> {
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect()
}

/// Messages in `queue`'s dead-letter queue (0 when it does not exist).
async fn dead_lettered(app: &App, queue: &str) -> u32 {
    let name = QueueSpec::dead_letter_queue(queue).name;
    app.broker().queue_message_count(&name).await.unwrap_or(0)
}

/// Messages waiting in the broker's delay levels.
async fn delayed_messages(app: &App) -> u32 {
    let mut total = 0;
    for queue in task_core::broker::delay_topology::wait_queues() {
        total += app.broker().queue_message_count(&queue).await.unwrap_or(0);
    }
    total
}

/// Polls `queue`'s ready count until it is `expected` (bounded).
/// One test at a time runs a private RabbitMQ node: two Erlang VMs
/// booting and restarting on two cores beside the shared broker slowed
/// reconnections past the timings the outage tests check.
async fn private_node_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    TURN.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

async fn wait_for_ready_count(app: &App, queue: &str, expected: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = app.broker().queue_message_count(queue).await.unwrap();
        if count == expected || Instant::now() >= deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client(url: &str) -> App {
    App::builder()
        .broker_url(url)
        .set_as_default(false)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Deletes a shared-broker test queue (and its exchange and dead-letter
/// queue) at the end of the test, or from drop when the test failed.
struct QueueCleanup {
    url: String,
    queue: String,
}

impl QueueCleanup {
    async fn run(app: &App, queue: &str) {
        let broker = app.broker();
        let _ = broker.delete_queue(queue).await;
        let _ = broker.delete_exchange(queue).await;
        let _ = broker
            .delete_queue(&QueueSpec::dead_letter_queue(queue).name)
            .await;
    }
}

impl Drop for QueueCleanup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return; // the test cleaned up itself
        }
        let (url, queue) = (self.url.clone(), self.queue.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let cleanup = async {
                    let app = client(&url).await;
                    QueueCleanup::run(&app, &queue).await;
                    let _ = app.close().await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), cleanup).await;
            });
        })
        .join();
    }
}

async fn send_sleep(app: &App, queue: &str, seconds: f64) -> Sent {
    let result = sleep
        .s(seconds)
        .queue(queue.to_owned())
        .returning::<Value>()
        .apply_async_with(app)
        .await
        .expect("sent");
    Sent {
        expected: Value::from(seconds),
        result,
    }
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

// ---------------------------------------------------------------------------
// Worker faults (shared broker)

/// SIGKILL a worker in the middle of its tasks: late ack means the broker
/// redelivers every task it had not finished, and a second worker runs
/// them. Every result reaches the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_no_task() {
    let url = common::broker_url();
    let queue = common::unique_queue("faults.kill");
    let app = client(&url).await;
    app.ensure_queue(&queue).await.unwrap();
    let cleanup = QueueCleanup {
        url: url.clone(),
        queue: queue.clone(),
    };

    let mut first = WorkerProcess::spawn("kill-1", &url, &queue, 4);
    first.wait_ready().await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(send_sleep(&app, &queue, 1.0).await);
        sent.push(send_add(&app, &queue, i).await.expect("sent"));
    }
    let slow: HashSet<String> = sent
        .iter()
        .filter(|t| t.expected == 1.0)
        .map(|t| t.id().to_owned())
        .collect();
    // Kill it while a second round of slow tasks runs.
    first
        .wait_until(
            "a second round of slow tasks",
            Duration::from_secs(20),
            |w| {
                let done = w.succeeded().iter().filter(|id| slow.contains(*id)).count();
                let started = w.received().iter().filter(|id| slow.contains(*id)).count();
                done >= 4 && started > done
            },
        )
        .await;
    first.signal(libc::SIGKILL);
    let status = first.wait_exit().await;
    assert!(!status.success(), "killed: {status}");
    let done_by_first: HashSet<String> = first.succeeded().into_iter().collect();
    let in_flight: Vec<String> = first
        .received()
        .into_iter()
        .filter(|id| !done_by_first.contains(id))
        .collect();

    let mut second = WorkerProcess::spawn("kill-2", &url, &queue, 4);
    second.wait_ready().await;
    let ran =
        |id: &str| done_by_first.contains(id) || second.succeeded().iter().any(|done| done == id);
    let outcomes = settle(&sent, ran, Duration::from_secs(3)).await;
    let mut figures = tally(&sent, &outcomes, ran);
    let all_starts: Vec<String> = first
        .received()
        .into_iter()
        .chain(second.received())
        .collect();
    figures.duplicated = duplicates(&all_starts).len();
    figures.dead_lettered = dead_lettered(&app, &queue).await;
    figures.print("SIGKILL a busy worker");
    println!(
        "[faults]   first worker: {} done, {} in flight when killed; second worker: {} done",
        done_by_first.len(),
        in_flight.len(),
        second.succeeded().len()
    );

    assert_eq!(figures.completed, figures.sent, "every result arrived");
    assert!(!in_flight.is_empty(), "the worker was killed mid-task");
    let redone: HashSet<String> = second.succeeded().into_iter().collect();
    for id in &in_flight {
        assert!(redone.contains(id), "task {id}, killed mid-run, ran again");
    }
    assert_eq!(figures.dead_lettered, 0);
    assert!(second.terminate().await.success());
    QueueCleanup::run(&app, &queue).await;
    drop(cleanup);
    app.close().await.unwrap();
}

/// SIGKILL a worker while a chord's parts run, the chord joined on RabbitMQ
/// alone (no result backend): a second worker runs the parts that were
/// lost, the join counts each part once however often it ran, and the body
/// runs once, with every part's value; its one result reaches the caller,
/// and the join queue is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chord_joined_on_rabbitmq_survives_a_killed_worker() {
    let url = common::broker_url();
    let queue = common::unique_queue("faults.chord");
    let app = client(&url).await;
    app.ensure_queue(&queue).await.unwrap();
    let cleanup = QueueCleanup {
        url: url.clone(),
        queue: queue.clone(),
    };
    let mut first = WorkerProcess::spawn("chord-1", &url, &queue, 4);
    first.wait_ready().await;
    let parts = 8;
    let header = group((0..parts).map(|_| sleep.s(1.0).queue(queue.clone())));
    let join_queue = chord_join::join_queue_name(header.id());
    let body = Partial::new(
        app.signature("tasks.stats")
            .queue(queue.clone())
            .returning::<Stats>(),
    );
    let stats = chord(header, body).apply_async_with(&app).await.unwrap();
    let body_id = stats.id().to_owned();
    // Killed once some parts are done and others run.
    first
        .wait_until("a second round of parts", Duration::from_secs(20), |w| {
            let done = w.succeeded().len();
            done >= 4 && w.received().len() > done
        })
        .await;
    first.signal(libc::SIGKILL);
    assert!(!first.wait_exit().await.success());
    let in_flight = first.received().len() - first.succeeded().len();

    let mut second = WorkerProcess::spawn("chord-2", &url, &queue, 4);
    second.wait_ready().await;
    let stats = stats.get(SETTLE_LIMIT).await.expect("the body's result");
    assert_eq!((stats.count, stats.mean), (parts, Some(1.0)));
    common::wait_until_deleted(&app, &join_queue).await;
    assert!(second.terminate().await.success());
    let body_runs = first
        .received()
        .into_iter()
        .chain(second.received())
        .filter(|id| *id == body_id)
        .count();
    println!(
        "[faults] SIGKILL mid-chord: {parts} parts, {in_flight} in flight when killed, \
         {} part runs in all, body ran {body_runs} time(s)",
        first.received().len() + second.received().len() - body_runs
    );
    assert!(in_flight > 0, "the worker was killed mid-part");
    assert_eq!(body_runs, 1, "the body runs once");
    QueueCleanup::run(&app, &queue).await;
    drop(cleanup);
    app.close().await.unwrap();
}

/// SIGTERM a busy worker: it stops taking tasks, lets the running ones
/// finish (their results arrive), returns the prefetched ones to the queue
/// and exits 0; a second worker runs the rest. Nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_worker_finishes_its_tasks_and_returns_the_rest() {
    let url = common::broker_url();
    let queue = common::unique_queue("faults.term");
    let app = client(&url).await;
    app.ensure_queue(&queue).await.unwrap();
    let cleanup = QueueCleanup {
        url: url.clone(),
        queue: queue.clone(),
    };

    let mut first = WorkerProcess::spawn("term-1", &url, &queue, 4);
    first.wait_ready().await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(send_sleep(&app, &queue, 1.0).await);
        if i % 2 == 0 {
            sent.push(send_add(&app, &queue, i).await.expect("sent"));
        }
    }
    first
        .wait_until(
            "a second round of tasks started",
            Duration::from_secs(20),
            |w| w.succeeded().len() >= 6 && w.received().len() > w.succeeded().len(),
        )
        .await;
    let done_before_term = first.succeeded().len();
    let status = first.terminate().await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let started_by_first = first.received();
    let done_by_first = first.succeeded();
    let finished_after_term = done_by_first.len() - done_before_term;
    let unfinished: Vec<&String> = started_by_first
        .iter()
        .filter(|id| !done_by_first.contains(id))
        .collect();
    assert!(
        unfinished.is_empty(),
        "tasks running at SIGTERM finished before the exit: {unfinished:?}"
    );
    assert!(finished_after_term > 0, "tasks were running at SIGTERM");
    // Everything the first worker did not start, prefetched or not, is back
    // in the queue before any other worker runs.
    let expected_back = u32::try_from(sent.len() - started_by_first.len()).unwrap();
    let back = wait_for_ready_count(&app, &queue, expected_back).await;
    assert_eq!(back, expected_back, "unstarted tasks are back in the queue");

    let mut second = WorkerProcess::spawn("term-2", &url, &queue, 4);
    second.wait_ready().await;
    let ran = |id: &str| {
        done_by_first.iter().any(|done| done == id) || second.succeeded().iter().any(|d| d == id)
    };
    let outcomes = settle(&sent, ran, Duration::from_secs(3)).await;
    let mut figures = tally(&sent, &outcomes, ran);
    let all_starts: Vec<String> = started_by_first
        .iter()
        .cloned()
        .chain(second.received())
        .collect();
    figures.duplicated = duplicates(&all_starts).len();
    figures.dead_lettered = dead_lettered(&app, &queue).await;
    figures.print("SIGTERM a busy worker");
    println!(
        "[faults]   first worker: {} done ({} of them after SIGTERM), {status}; \
         {back} returned to the queue; second worker: {} done",
        done_by_first.len(),
        finished_after_term,
        second.succeeded().len()
    );

    assert_eq!(figures.completed, figures.sent, "every result arrived");
    assert_eq!(
        figures.duplicated, 0,
        "a graceful shutdown runs nothing twice"
    );
    assert_eq!(figures.dead_lettered, 0);
    assert!(second.terminate().await.success());
    QueueCleanup::run(&app, &queue).await;
    drop(cleanup);
    app.close().await.unwrap();
}

// ---------------------------------------------------------------------------
// Broker faults (private node)

/// Restarts RabbitMQ (stop_app, pause, start_app) while a client sends tasks
/// to a worker process and to an in-process worker. Every task sent before,
/// during and after the restart runs; every `.get()` returns its value or a
/// typed error for a task that ran (see the module comment); no process
/// hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_task() {
    let _turn = private_node_turn().await;
    let node = PrivateBroker::start("restart").await;
    let url = node.url();
    let process_queue = common::unique_queue("faults.restart.process");
    let local_queue = common::unique_queue("faults.restart.local");
    let app = client(&url).await;
    app.ensure_queue(&process_queue).await.unwrap();

    let mut process = WorkerProcess::spawn("restart", &url, &process_queue, 4);
    let worker = Worker::builder()
        .app(client(&url).await)
        .queues([local_queue.clone()])
        .concurrency(4)
        .build()
        .await
        .expect("in-process worker");
    let stop_local = worker.shutdown_handle();
    let local = tokio::spawn(worker.run());
    process.wait_ready().await;

    // The client sends for a while; the broker restarts in the middle.
    let sender = {
        let app = app.clone();
        let (process_queue, local_queue) = (process_queue.clone(), local_queue.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut send_errors = Vec::new();
            let mut longest_send = Duration::ZERO;
            for i in 0..60i64 {
                let round = Instant::now();
                let to_process = if i % 6 == 0 {
                    sleep
                        .s(0.3)
                        .queue(process_queue.clone())
                        .returning::<Value>()
                        .apply_async_with(&app)
                        .await
                        .map(|result| Sent {
                            expected: Value::from(0.3),
                            result,
                        })
                } else {
                    send_add(&app, &process_queue, i).await
                };
                let to_local = record
                    .s(i)
                    .queue(local_queue.clone())
                    .returning::<Value>()
                    .apply_async_with(&app)
                    .await
                    .map(|result| Sent {
                        expected: Value::from(i),
                        result,
                    });
                longest_send = longest_send.max(round.elapsed());
                for outcome in [to_process, to_local] {
                    match outcome {
                        Ok(task) => sent.push(task),
                        Err(error) => send_errors.push(error),
                    }
                }
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
            (sent, send_errors, longest_send)
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restart = Instant::now();
    node.restart_app(Duration::from_secs(1)).await;
    println!("[faults]   broker restarted in {:.1?}", restart.elapsed());
    let (sent, send_errors, longest_send) = tokio::time::timeout(Duration::from_secs(90), sender)
        .await
        .expect("the sender does not hang")
        .expect("the sender does not panic");
    println!("[faults]   the longest send waited {longest_send:.1?} (through the outage)");
    for error in &send_errors {
        println!("[faults]   send failed: {error}");
    }

    let ran = |id: &str| recorded(id) > 0 || process.succeeded().iter().any(|done| done == id);
    let outcomes = settle(&sent, ran, Duration::from_secs(5)).await;
    let mut figures = tally(&sent, &outcomes, ran);
    figures.send_errors = send_errors.len();
    let process_starts = process.received();
    let local_duplicates = RECORDED
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, n)| **n > 1 && sent.iter().any(|t| t.id() == id.as_str()))
        .count();
    figures.duplicated = duplicates(&process_starts).len() + local_duplicates;
    figures.dead_lettered =
        dead_lettered(&app, &process_queue).await + dead_lettered(&app, &local_queue).await;
    figures.print("restart RabbitMQ under load");

    assert_eq!(figures.lost, 0, "no task silently lost");
    assert_eq!(
        figures.send_errors, 0,
        "the restart is shorter than the send deadline"
    );
    assert_eq!(figures.dead_lettered, 0);
    assert!(
        figures.completed > 0 && figures.completed + figures.typed_errors == figures.sent,
        "every .get() ended"
    );

    // Both workers stop cleanly after the restart.
    let status = process.terminate().await;
    assert!(
        status.success(),
        "the worker process exits 0 after the restart: {status}"
    );
    stop_local.cancel();
    tokio::time::timeout(EXIT_TIMEOUT, local)
        .await
        .expect("the in-process worker stops")
        .expect("no panic")
        .expect("the in-process worker stops cleanly");
    let _ = tokio::time::timeout(Duration::from_secs(10), app.close()).await;
    node.shutdown().await;
}

/// A task delayed by a countdown waits in the broker's delay levels, survives
/// a broker restart there, and runs after the restart, not before its ETA.
///
/// The caller reconnects slowly (10 s backoff): the task falls due, and the
/// worker, back first, runs it and publishes its result while the caller's
/// reply queue (auto-delete, gone with the restart) is not declared again
/// yet. The worker's publish must wait for it rather than drop the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_task_survives_a_broker_restart() {
    let _turn = private_node_turn().await;
    let node = PrivateBroker::start("delay").await;
    let url = node.url();
    let queue = common::unique_queue("faults.delay");
    let admin = client(&url).await;
    admin.ensure_queue(&queue).await.unwrap();
    let slow_reconnect = ReconnectPolicy {
        initial_backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(10),
        operation_deadline: Duration::from_secs(60),
    };
    let app = App::builder().set_as_default(false).build_with(Arc::new(
        AmqpBroker::connect_with(&url, slow_reconnect)
            .await
            .expect("connect to the private node"),
    ));
    let mut process = WorkerProcess::spawn("delay", &url, &queue, 2);
    process.wait_ready().await;

    let countdown = Duration::from_secs(8);
    let sent_at = Instant::now();
    let eta_at_least = Utc::now() + countdown;
    let delayed = add
        .s(20, 22)
        .queue(queue.clone())
        .countdown(countdown)
        .returning::<Value>()
        .apply_async_with(&app)
        .await
        .expect("sent");
    assert_eq!(
        delayed_messages(&admin).await,
        1,
        "kept in the delay levels"
    );
    assert_eq!(admin.broker().queue_message_count(&queue).await.unwrap(), 0);

    node.restart_app(Duration::from_millis(500)).await;
    let restarted_at = sent_at.elapsed();
    let restarted_utc = Utc::now();
    // On a slow machine the restart can outlast the countdown: the task is
    // then due as the broker comes back, and this check has nothing to see.
    let kept = if restarted_at + Duration::from_millis(500) < countdown {
        let kept = delayed_messages(&admin).await;
        assert_eq!(kept, 1, "still in the delay levels after the restart");
        Some(kept)
    } else {
        None
    };

    let sent = [Sent {
        expected: Value::from(42),
        result: delayed,
    }];
    let ran = |id: &str| process.succeeded().iter().any(|done| done == id);
    // Longer than the worker's grace for unroutable publishes (10 s).
    let outcomes = settle(&sent, ran, Duration::from_secs(12)).await;
    let settled_at = sent_at.elapsed();
    let mut figures = tally(&sent, &outcomes, ran);
    figures.duplicated = duplicates(&process.received()).len();
    figures.dead_lettered = dead_lettered(&admin, &queue).await;
    figures.print("delayed task across a broker restart");
    let started = process.received_at(sent[0].id());
    let unroutable_retries = process
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("NO_ROUTE"))
        .count();
    println!(
        "[faults]   countdown {countdown:?}; restart done at {restarted_at:.1?}; in the delay \
         levels after it: {kept:?}; started by the worker {:?} after the ETA; result settled at \
         {settled_at:.1?}; result publishes returned unroutable meanwhile: {unroutable_retries}",
        started.map(|at| at - eta_at_least)
    );
    assert_eq!(figures.lost, 0, "the delayed task was not lost");
    assert_eq!(
        figures.completed, 1,
        "the result waited for the caller's reply queue to come back"
    );
    let started = started.expect("the worker ran the delayed task");
    assert!(
        started >= eta_at_least,
        "started {started}, before its ETA {eta_at_least}"
    );
    assert!(
        started >= restarted_utc - chrono::Duration::seconds(1),
        "started after the restart"
    );
    assert_eq!(process.received().len(), 1, "ran once");
    if let Ok(value) = &outcomes[0] {
        assert!(
            settled_at >= countdown,
            "result after {settled_at:?}, before its ETA"
        );
        assert_eq!(value, &Value::from(42));
    }
    assert!(process.terminate().await.success());
    let _ = tokio::time::timeout(Duration::from_secs(10), app.close()).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), admin.close()).await;
    node.shutdown().await;
}

/// A RabbitMQ restart while a chord joined on RabbitMQ alone runs: the
/// join queue (durable), the parts' entries (persistent) and the join task
/// survive it, and the body runs once, with every part's value. (Its
/// `rpc://` result may be lost in the restart, as any result in flight:
/// the worker's log shows the body ran.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chord_joined_on_rabbitmq_survives_a_broker_restart() {
    let _turn = private_node_turn().await;
    let node = PrivateBroker::start("chord").await;
    let url = node.url();
    let queue = common::unique_queue("faults.chord-restart");
    let app = client(&url).await;
    app.ensure_queue(&queue).await.unwrap();
    let mut process = WorkerProcess::spawn("chord-restart", &url, &queue, 2);
    process.wait_ready().await;
    let parts = 6;
    let header = group((0..parts).map(|_| sleep.s(1.0).queue(queue.clone())));
    let join_queue = chord_join::join_queue_name(header.id());
    let body = Partial::new(
        app.signature("tasks.stats")
            .queue(queue.clone())
            .returning::<Stats>(),
    );
    let stats = chord(header, body).apply_async_with(&app).await.unwrap();
    let body_id = stats.id().to_owned();
    process
        .wait_until("two parts done", Duration::from_secs(20), |w| {
            w.succeeded().len() >= 2
        })
        .await;
    let before_restart = process.succeeded().len();
    node.restart_app(Duration::from_millis(500)).await;
    process
        .wait_until("the body ran", SETTLE_LIMIT, |w| {
            w.succeeded().contains(&body_id)
        })
        .await;
    let outcome = stats.get(Duration::from_secs(15)).await;
    let body_runs = process
        .received()
        .iter()
        .filter(|id| **id == body_id)
        .count();
    println!(
        "[faults] broker restart mid-chord: {before_restart} of {parts} parts done before it, \
         {} part runs in all, body ran {body_runs} time(s), its result: {}",
        process.received().len() - body_runs,
        match &outcome {
            Ok(stats) => format!("{} values", stats.count),
            Err(error) => format!("lost in the restart ({error})"),
        }
    );
    assert_eq!(body_runs, 1, "the body runs once");
    if let Ok(stats) = outcome {
        assert_eq!((stats.count, stats.mean), (parts, Some(1.0)));
    }
    let admin = client(&url).await;
    common::wait_until_deleted(&admin, &join_queue).await;
    assert!(process.terminate().await.success());
    let _ = tokio::time::timeout(Duration::from_secs(10), app.close()).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), admin.close()).await;
    node.shutdown().await;
}

/// `.delay()` during an outage: retried until the broker is back within the
/// deadline; a typed error once the broker stays down past it (no hang, and
/// pending `.get()`s fail with a typed error too). When the broker returns,
/// the same app works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_during_an_outage_retries_then_fails_with_a_typed_error() {
    let _turn = private_node_turn().await;
    let node = PrivateBroker::start("outage").await;
    let url = node.url();
    let deadline = Duration::from_secs(8);
    let policy = ReconnectPolicy {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        operation_deadline: deadline,
    };
    let broker = AmqpBroker::connect_with(&url, policy)
        .await
        .expect("connect to the private node");
    let app = App::builder()
        .set_as_default(false)
        .build_with(Arc::new(broker));
    let queue = common::unique_queue("faults.outage");
    let parked_queue = common::unique_queue("faults.outage.parked");
    app.ensure_queue(&queue).await.unwrap();
    let mut process = WorkerProcess::spawn("outage", &url, &queue, 2);
    process.wait_ready().await;
    let mut figures = Figures::default();
    let timeout = Duration::from_secs(20);

    // Warm up: queue declared, reply queue consumed.
    assert_eq!(
        send_add(&app, &queue, 1)
            .await
            .unwrap()
            .result
            .get(timeout)
            .await
            .unwrap(),
        1001
    );
    figures.sent += 1;
    figures.completed += 1;

    // 1. An outage shorter than the deadline: `.delay()` waits it out.
    node.stop_app().await;
    let started = Instant::now();
    let during = {
        let app = app.clone();
        let queue = queue.clone();
        tokio::spawn(async move { send_add(&app, &queue, 2).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.start_app().await;
    let during = tokio::time::timeout(deadline * 2, during)
        .await
        .expect("the send does not hang")
        .expect("no panic")
        .expect("sent once the broker was back, within the deadline");
    let waited = started.elapsed();
    figures.sent += 1;
    assert_eq!(during.result.get(timeout).await.unwrap(), 1002);
    figures.completed += 1;
    println!(
        "[faults]   short outage: .delay() returned after {waited:.1?} (deadline {deadline:?})"
    );

    // 2. An outage longer than the deadline: a typed error, in time. A
    // `.get()` pending meanwhile (its task sits in a queue no worker
    // consumes) fails with a typed error too, instead of waiting its whole
    // timeout.
    let parked = app
        .signature("tasks.add")
        .returning::<i64>()
        .arg(1)
        .arg(2)
        .queue(parked_queue.clone())
        .apply_async_with(&app)
        .await
        .expect("sent");
    figures.sent += 1;
    node.stop_app().await;
    let started = Instant::now();
    let refused = tokio::time::timeout(deadline * 3, send_add(&app, &queue, 3))
        .await
        .expect("the send does not hang");
    let failed_after = started.elapsed();
    match &refused {
        Err(Error::Broker(BrokerError::Connection { reason, .. })) => {
            println!("[faults]   long outage: .delay() failed after {failed_after:.1?}: {reason}");
        }
        Err(other) => panic!("expected a connection error, got {other}"),
        Ok(_) => panic!("expected a connection error, the send succeeded with the broker down"),
    }
    figures.send_errors += 1;
    assert!(
        failed_after >= deadline - Duration::from_secs(1)
            && failed_after <= deadline + Duration::from_secs(3),
        "failed after {failed_after:?}, deadline {deadline:?}"
    );
    let pending = tokio::time::timeout(Duration::from_secs(5), parked.get(Duration::from_secs(60)))
        .await
        .expect("the pending .get() ends once the reply consumer gives up");
    match &pending {
        Err(error @ Error::ResultLost { .. }) => {
            println!("[faults]   pending .get() failed with: {error}");
        }
        other => panic!("expected ResultLost, got {other:?}"),
    }
    figures.typed_errors += 1; // never ran (no worker on its queue): it is still there, see below

    // A worker asked to stop while the broker is away exits at once, cleanly.
    let asked = Instant::now();
    let status = process.terminate().await;
    println!(
        "[faults]   worker stopped during the outage: {status} after {:.1?}",
        asked.elapsed()
    );
    assert!(status.success(), "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "stopped promptly"
    );
    let first_received = process.received();

    // 3. The broker is back: the same app sends and receives again.
    node.start_app().await;
    let mut process = WorkerProcess::spawn("outage-2", &url, &queue, 2);
    process.wait_ready().await;
    let recovered = Instant::now();
    let after = tokio::time::timeout(deadline * 2, send_add(&app, &queue, 4))
        .await
        .expect("the send does not hang")
        .expect("the app works again once the broker is back");
    figures.sent += 1;
    let value = after.result.get(timeout).await;
    println!(
        "[faults]   after the outage: sent and answered in {:.1?}: {value:?}",
        recovered.elapsed()
    );
    assert_eq!(value.expect("a result after the outage"), 1004);
    figures.completed += 1;
    assert_eq!(
        app.broker()
            .queue_message_count(&parked_queue)
            .await
            .unwrap(),
        1,
        "the parked task whose .get() failed is still in its queue: not lost"
    );
    let all_starts: Vec<String> = first_received
        .into_iter()
        .chain(process.received())
        .collect();
    figures.duplicated = duplicates(&all_starts).len();
    figures.dead_lettered = dead_lettered(&app, &queue).await;
    figures.print(".delay() during an outage");
    assert!(process.terminate().await.success());
    let _ = tokio::time::timeout(Duration::from_secs(10), app.close()).await;
    node.shutdown().await;
}
