//! Shared fixtures for the integration tests: a client app and an in-process
//! worker on queues of the test's own, against the real RabbitMQ at
//! `$TEST_BROKER_URL` / `$BROKER_URL` (default 127.0.0.1:5672), and where the
//! shared Redis is (`$TEST_REDIS_URL`, default 127.0.0.1:6379).
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use task_core::broker::QueueSpec;
use task_core::{App, DEFAULT_BROKER_URL};
use task_worker::{Worker, WorkerError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for any single result before failing.
pub const RESULT_TIMEOUT: Duration = Duration::from_secs(20);

/// The broker the tests use.
pub fn broker_url() -> String {
    std::env::var("TEST_BROKER_URL")
        .or_else(|_| std::env::var("BROKER_URL"))
        .unwrap_or_else(|_| DEFAULT_BROKER_URL.to_owned())
}

/// The shared Redis the Redis result backend's tests use:
/// `$TEST_REDIS_URL`, default `redis://127.0.0.1:6379/0`
/// (`scripts/ensure-redis.sh` starts it).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// The repository's root (also from a member crate's tests that include
/// this module).
pub fn repo() -> &'static std::path::Path {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("scripts/ensure-python-celery.sh").exists())
        .unwrap_or(manifest)
}

/// The interop venv's python (real Celery 5.7 with the Redis client), built
/// once per test binary by `scripts/ensure-python-celery.sh`.
pub fn python() -> &'static std::path::Path {
    static PYTHON: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let output = std::process::Command::new("bash")
            .arg(repo().join("scripts/ensure-python-celery.sh"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("bash runs");
        assert!(output.status.success(), "could not build the celery venv");
        std::path::PathBuf::from(String::from_utf8(output.stdout).expect("utf-8 path").trim())
    })
}

/// Runs the venv's python with `args` to completion (bounded by
/// [`CHILD_PROCESS_TIMEOUT`]), off the async runtime's threads, with
/// `BROKER_URL` set to the tests' broker.
pub async fn python_output(args: Vec<String>) -> std::process::Output {
    python_output_in(args, &[]).await
}

/// [`python_output`] with more environment variables.
pub async fn python_output_in(args: Vec<String>, env: &[(&str, &str)]) -> std::process::Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(python());
        command
            .args(&args)
            .env("BROKER_URL", broker_url())
            .envs(env);
        output_within(command, CHILD_PROCESS_TIMEOUT)
    })
    .await
    .expect("the python child is awaited")
}

/// A Python Celery 5.7 worker process (`celery -A <module> worker`, run in
/// `tests/interop` with `BROKER_URL` set to the tests' broker and named
/// after its queue), killed on drop. Callers wait for it to answer a task
/// before they use it.
pub struct PythonWorker {
    child: std::process::Child,
}

impl PythonWorker {
    /// Starts `celery -A module worker` with `args` (queues, pool) and `env`.
    pub fn spawn(module: &str, queue: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let child = std::process::Command::new(python())
            .args(["-m", "celery", "-A", module, "worker"])
            .args(args)
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ])
            .args(["-l", "warning", "-n", &format!("{queue}@%h")])
            .current_dir(repo().join("tests/interop"))
            .env("BROKER_URL", broker_url())
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("the python celery worker starts");
        Self { child }
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `method url` (`GET`, or `POST` with `form` fields) through
/// `tests/interop/py_http.py`: the status (0 when nothing answered) and the
/// body.
pub async fn http(method: &str, url: &str, form: &serde_json::Value) -> (u16, String) {
    let script = repo().join("tests/interop/py_http.py");
    let args = vec![
        script.display().to_string(),
        method.to_owned(),
        url.to_owned(),
        form.to_string(),
    ];
    let output = python_output(args).await;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// `target/<profile>/examples/<name>` (the worker binary is `worker`),
/// built by `cargo test` with the tests.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let test_exe = std::env::current_exe().expect("test executable path");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: `cargo test` builds it; or run `cargo build --examples`",
        binary.display()
    );
    binary
}

/// `target/<profile>/examples/<name>`, rebuilt once per test process:
/// `cargo test` builds the examples only when no test target is named
/// (`cargo test --test faults` does not), and a stale binary would test old
/// code.
pub fn fresh_example_binary(name: &str) -> std::path::PathBuf {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<HashMap<String, std::path::PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(binary) = built.get(name) {
        return binary.clone();
    }
    let test_exe = std::env::current_exe().expect("test executable path");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--example", name]);
    match profile_dir.file_name().and_then(|dir| dir.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cargo.arg("--release");
        }
        Some(profile) => {
            cargo.args(["--profile", profile]);
        }
    }
    let output = cargo
        .output()
        .unwrap_or_else(|e| panic!("run cargo build --example {name}: {e}"));
    assert!(
        output.status.success(),
        "cargo build --example {name} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let binary = example_binary(name);
    built.insert(name.to_owned(), binary.clone());
    binary
}

/// A well-formed task message for `name`: no arguments, no result wanted.
pub fn task_message(name: &str) -> task_core::broker::Message {
    use task_core::protocol::task_message::{encode_task, TaskCall};
    encode_task(&TaskCall {
        id: &uuid::Uuid::new_v4().to_string(),
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
    .expect("a task message")
}

/// How long a child process a test runs to completion (the worker binary
/// refusing its arguments, a Python client) may take before the test fails.
pub const CHILD_PROCESS_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `command` to completion like [`std::process::Command::output`],
/// but kills it and fails the test if it has not exited within `limit`: a
/// hung child must fail its test, not hold the whole run.
pub fn output_within(mut command: std::process::Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let pid = child.id();
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match outcome.recv_timeout(limit) {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {command:?}: {e}")),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            let output = outcome.recv().ok().and_then(Result::ok);
            panic!(
                "{command:?} did not exit within {limit:?}; killed. stderr: {}",
                output
                    .map(|output| String::from_utf8_lossy(&output.stderr).into_owned())
                    .unwrap_or_default()
            );
        }
    }
}

/// An app on the tests' broker whose queues are declared exactly as
/// Celery declares them, like the Python peers' (not the tests' default
/// app).
pub async fn plain_app() -> App {
    App::builder()
        .broker_url(broker_url())
        .set_as_default(false)
        .connect()
        .await
        .expect("RabbitMQ is running")
}

/// A queue name no other test (or test run) uses.
pub fn unique_queue(label: &str) -> String {
    format!("test.{label}.{}", uuid::Uuid::new_v4().simple())
}

/// How test queues are declared: like task queues, but expiring two minutes
/// after their last use, so an aborted test leaves nothing behind.
pub fn test_queue_spec(name: &str) -> QueueSpec {
    QueueSpec {
        same_name_exchange: None,
        ..QueueSpec::task_queue(name)
    }
    .expires_after(Duration::from_secs(120))
}

/// The next message in `queue` (taken without an ack), waited for up to
/// [`RESULT_TIMEOUT`].
pub async fn next_message(app: &App, queue: &str) -> task_core::broker::Message {
    use futures_util::StreamExt;
    let mut consumer = app
        .broker()
        .consume(
            &[queue.to_owned()],
            task_core::broker::ConsumeOptions::no_ack(),
        )
        .await
        .expect("a consumer");
    let delivery = tokio::time::timeout(RESULT_TIMEOUT, consumer.deliveries.next())
        .await
        .unwrap_or_else(|_| panic!("no message in {queue}"))
        .expect("a delivery")
        .expect("a delivery");
    let _ = consumer.cancel.close().await;
    delivery.message
}

/// Waits (bounded by [`RESULT_TIMEOUT`]) until `queue` is gone: a chord's
/// join deletes its join queue just after it published the body.
pub async fn wait_until_deleted(app: &App, queue: &str) {
    let deadline = tokio::time::Instant::now() + RESULT_TIMEOUT;
    while !app
        .broker()
        .queue_message_count(queue)
        .await
        .is_err_and(|error| error.is_not_found())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {queue} stays"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client app that declares `queues` as test queues. It does not become
/// the process's default app, so tests running in parallel stay independent.
pub async fn client(queues: &[&str]) -> App {
    let mut builder = App::builder()
        .broker_url(broker_url())
        .set_as_default(false);
    for queue in queues {
        builder = builder.queue(test_queue_spec(queue));
    }
    builder
        .connect()
        .await
        .expect("RabbitMQ must be running at TEST_BROKER_URL / BROKER_URL / 127.0.0.1:5672")
}

/// Shows the framework's logs when `RUST_LOG` is set (e.g. `RUST_LOG=debug`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A worker running in this process on the test's own queue.
pub struct TestWorker {
    /// The queue it consumes.
    pub queue: String,
    /// An app for calling tasks on that queue (shares the worker's connection).
    pub app: App,
    stop: CancellationToken,
    running: JoinHandle<Result<(), WorkerError>>,
}

impl TestWorker {
    /// Starts a worker on a fresh queue (`rpc://` results).
    pub async fn start(label: &str, concurrency: usize) -> Self {
        let queue = unique_queue(label);
        let app = client(&[&queue]).await;
        Self::start_on(queue, app, concurrency, |builder| builder).await
    }

    /// Starts a worker of `app` (its broker, result backend and queue
    /// declarations) on `queue`, the builder finished by `configure`.
    pub async fn start_on(
        queue: String,
        app: App,
        concurrency: usize,
        configure: impl FnOnce(task_worker::WorkerBuilder) -> task_worker::WorkerBuilder,
    ) -> Self {
        init_logs();
        // Its own node name (remote control and events tell workers apart
        // by it).
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let ready = std::sync::Mutex::new(Some(ready));
        let worker = configure(
            Worker::builder()
                .app(app.clone())
                .queues([queue.clone()])
                .concurrency(concurrency)
                .node_name(format!("{queue}@%h")),
        )
        .on_ready(move |_| {
            if let Some(ready) = ready.lock().unwrap().take() {
                let _ = ready.send(());
            }
        })
        .build()
        .await
        .expect("worker starts");
        let stop = worker.shutdown_handle();
        let running = tokio::spawn(worker.run());
        // Consuming, and answering remote control.
        tokio::time::timeout(RESULT_TIMEOUT, is_ready)
            .await
            .expect("the worker gets ready")
            .expect("the worker gets ready");
        Self {
            queue,
            app,
            stop,
            running,
        }
    }

    /// Waits (at most `limit`) for the worker to stop by itself (e.g. told
    /// to by remote control), then deletes its queues as `stop` does.
    pub async fn wait_stopped(self, limit: Duration) {
        let Self {
            queue,
            app,
            stop,
            running,
        } = self;
        tokio::time::timeout(limit, running)
            .await
            .expect("the worker stops")
            .expect("worker task does not panic")
            .expect("worker stops cleanly");
        Self {
            queue,
            app,
            stop,
            running: tokio::spawn(async { Ok(()) }),
        }
        .stop()
        .await;
    }

    /// Stops the worker gracefully, keeping its queue; returns the app and queue.
    pub async fn halt(self) -> (App, String) {
        self.stop.cancel();
        self.running
            .await
            .expect("worker task does not panic")
            .expect("worker stops cleanly");
        (self.app, self.queue)
    }

    /// Stops the worker gracefully, deletes its queue, the queue's
    /// dead-letter queue and same-name exchange, and closes its app.
    pub async fn stop(self) {
        let (app, queue) = self.halt().await;
        let dead_letters = QueueSpec::dead_letter_queue(&queue).name;
        for queue in [&queue, &dead_letters] {
            app.broker()
                .delete_queue(queue)
                .await
                .expect("queue deleted");
        }
        app.broker()
            .delete_exchange(&queue)
            .await
            .expect("exchange deleted");
        let _ = app.close().await;
    }
}
