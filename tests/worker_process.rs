//! The shipped worker binary (`examples/worker.rs`), run as a real child
//! process with its command line, against the real RabbitMQ.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use common::RESULT_TIMEOUT;
use task_core::App;
use task_examples::{add, cpu_sum, hello};

/// `target/<profile>/examples/worker`, built by `cargo test` with the tests.
fn worker_binary() -> PathBuf {
    common::example_binary("worker")
}

struct ChildWorker(Child);

impl ChildWorker {
    fn spawn(queue: &str) -> Self {
        Self::spawn_with(queue, "warn", false)
    }

    /// Starts the worker on `queue` at `loglevel`; with `piped`, its stdout
    /// and stderr are pipes whose read ends the caller can take.
    fn spawn_with(queue: &str, loglevel: &str, piped: bool) -> Self {
        let output = || {
            if piped {
                Stdio::piped()
            } else {
                Stdio::inherit()
            }
        };
        let child = Command::new(worker_binary())
            .args([
                "--broker",
                &common::broker_url(),
                "-Q",
                queue,
                "-c",
                "2",
                "--loglevel",
                loglevel,
            ])
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .spawn()
            .expect("worker binary starts");
        Self(child)
    }

    /// Sends SIGTERM and returns the exit status, or `None` if the worker
    /// did not exit within `patience`.
    fn terminate_within(mut self, patience: Duration) -> Option<ExitStatus> {
        let pid = i32::try_from(self.0.id()).expect("pid fits i32");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + patience;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().expect("worker status") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM and returns the exit status.
    fn terminate(self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(60))
            .expect("the worker exits after SIGTERM")
    }
}

/// `target/<profile>/examples/<name>`, built by `cargo test` with the tests.
fn example_binary(name: &str) -> PathBuf {
    common::example_binary(name)
}

/// Runs the worker binary with `args` to the end (it must exit by itself).
fn run_worker(args: &[&str]) -> Output {
    let mut command = Command::new(worker_binary());
    command.args(args).stdin(Stdio::null());
    common::output_within(command, common::CHILD_PROCESS_TIMEOUT)
}

/// An AMQP URL where nothing listens.
const NOWHERE: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

impl Drop for ChildWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_worker_binary_runs_tasks_and_exits_cleanly_on_sigterm() {
    let queue = common::unique_queue("process");
    // Declared like the worker declares it (a plain Celery task queue).
    let app = App::builder()
        .broker_url(common::broker_url())
        .set_as_default(false)
        .connect()
        .await
        .expect("RabbitMQ is running");
    app.ensure_queue(&queue).await.unwrap();
    let worker = ChildWorker::spawn(&queue);

    let sum = add
        .s(19, 23)
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    let greeting = hello
        .s("process".into())
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    let blocking = cpu_sum
        .s(1_000)
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(sum.get(RESULT_TIMEOUT).await.unwrap(), 42);
    assert_eq!(
        greeting.get(RESULT_TIMEOUT).await.unwrap(),
        "Hello, process!"
    );
    assert_eq!(blocking.get(RESULT_TIMEOUT).await.unwrap(), 499_500);

    let status = worker.terminate();
    assert!(status.success(), "worker exited with {status}");
    app.broker().delete_queue(&queue).await.unwrap();
    app.broker().delete_exchange(&queue).await.unwrap();
    app.close().await.unwrap();
}

#[tokio::test]
async fn a_worker_whose_log_pipe_is_closed_keeps_working_and_stops_on_sigterm() {
    let queue = common::unique_queue("closed-pipe");
    let app = App::builder()
        .broker_url(common::broker_url())
        .set_as_default(false)
        .connect()
        .await
        .expect("RabbitMQ is running");
    app.ensure_queue(&queue).await.unwrap();
    // `worker 2>&1 | head -1`: the reader goes away; every log line written
    // after that fails with EPIPE.
    let mut worker = ChildWorker::spawn_with(&queue, "debug", true);
    drop(worker.0.stdout.take());
    drop(worker.0.stderr.take());

    let mut pending = Vec::new();
    for i in 0..16 {
        pending.push(
            add.s(i, 1)
                .queue(queue.clone())
                .apply_async_with(&app)
                .await
                .unwrap(),
        );
    }
    for (i, result) in (0..).zip(&pending) {
        assert_eq!(result.get(RESULT_TIMEOUT).await.unwrap(), i + 1);
    }
    let status = worker
        .terminate_within(Duration::from_secs(30))
        .expect("the worker obeys SIGTERM although it cannot log");
    assert!(status.success(), "worker exited with {status}");
    assert_eq!(app.broker().queue_message_count(&queue).await.unwrap(), 0);
    app.broker().delete_queue(&queue).await.unwrap();
    app.broker().delete_exchange(&queue).await.unwrap();
    app.close().await.unwrap();
}

#[test]
fn celery_log_levels_keep_fatal_errors_visible() {
    for level in ["warning", "WARNING", "ERROR", "critical"] {
        let output = run_worker(&["--broker", NOWHERE, "-l", level]);
        assert_eq!(output.status.code(), Some(1), "{level}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("ERROR"), "{level}: {stderr:?}");
    }
}

#[test]
fn unknown_log_levels_and_zero_settings_are_refused_with_a_reason() {
    for (args, reason) in [
        (&["-l", "nonsense"][..], "unknown log level `nonsense`"),
        (&["-l", "verbose"], "unknown log level `verbose`"),
        (&["-c", "0"], "-c"),
        (&["--prefetch", "0"], "--prefetch"),
    ] {
        let output = run_worker(&[&["--broker", NOWHERE][..], args].concat());
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{args:?}: {stderr:?}");
    }
}

#[test]
fn version_names_the_worker_binary() {
    let output = run_worker(&["--version"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.trim(),
        format!(
            "task-examples {} (task-worker {})",
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn logs_go_to_stderr_without_colour_codes_and_as_json_lines_on_request() {
    let text = run_worker(&["--broker", NOWHERE]);
    assert!(text.stdout.is_empty(), "logs are not on stdout");
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(stderr.contains("ERROR"), "{stderr:?}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no escape codes in a pipe: {stderr:?}"
    );

    let json = run_worker(&["--broker", NOWHERE, "--log-format", "json"]);
    let stderr = String::from_utf8_lossy(&json.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    assert!(
        lines.iter().any(|line| line["level"] == "ERROR"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn the_dead_letters_command_lists_shows_and_replays() {
    use task_core::broker::{dead_letter_headers, QueueSpec};
    use task_core::protocol::task_message::{encode_task, TaskCall};

    let queue = common::unique_queue("dlq-cli");
    let app = App::builder()
        .broker_url(common::broker_url())
        .set_as_default(false)
        .connect()
        .await
        .expect("RabbitMQ is running");
    app.ensure_queue(&queue).await.unwrap();
    let spec = QueueSpec::dead_letter_queue(&queue);
    app.broker().declare_queue(&spec).await.unwrap();
    let mut message = encode_task(&TaskCall {
        id: "cli-1",
        name: "tasks.gone",
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
    let headers = &mut message.properties.headers;
    headers.insert_str(
        dead_letter_headers::REASON,
        "NotRegistered: no task `tasks.gone`",
    );
    headers.insert_str(dead_letter_headers::QUEUE, &queue);
    app.broker()
        .publish("", &spec.name, &message)
        .await
        .unwrap();

    let broker = common::broker_url();
    let cli = |args: &[&str]| {
        let output = run_worker(&[&["--broker", &broker, "dead-letters"][..], args].concat());
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let listed = cli(&["list", "-Q", &queue]);
    assert!(listed.starts_with("1 message(s)"), "{listed}");
    assert!(listed.contains("cli-1\ttasks.gone"), "{listed}");
    assert!(listed.contains("reason=NotRegistered"), "{listed}");
    let shown = cli(&["show", "-Q", &queue, "cli-1"]);
    assert!(shown.contains("\"x-dead-letter-reason\""), "{shown}");
    let replayed = cli(&["replay", "-Q", &queue, "cli-1"]);
    assert!(
        replayed.starts_with("replayed 1 message(s); 0 left"),
        "{replayed}"
    );
    assert_eq!(app.broker().queue_message_count(&queue).await.unwrap(), 1);
    assert_eq!(
        app.broker().queue_message_count(&spec.name).await.unwrap(),
        0
    );
    for name in [&queue, &spec.name] {
        app.broker().delete_queue(name).await.unwrap();
    }
    app.broker().delete_exchange(&queue).await.unwrap();
    app.close().await.unwrap();
}

#[tokio::test]
async fn the_client_example_calls_a_worker_in_another_process() {
    let queue = common::unique_queue("client-example");
    let app = App::builder()
        .broker_url(common::broker_url())
        .set_as_default(false)
        .connect()
        .await
        .expect("RabbitMQ is running");
    app.ensure_queue(&queue).await.unwrap();
    let worker = ChildWorker::spawn(&queue);
    let mut command = Command::new(example_binary("client"));
    command
        .args(["-Q", &queue, "--name", "Zoë", "40", "2"])
        .env("BROKER_URL", common::broker_url());
    let client = tokio::task::spawn_blocking(move || {
        common::output_within(command, common::CHILD_PROCESS_TIMEOUT)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&client.stdout);
    assert!(client.status.success(), "{client:?}");
    assert!(stdout.contains("tasks.add(40, 2) = 42"), "{stdout}");
    assert!(stdout.contains("\"Hello, Zoë!\""), "{stdout}");
    assert!(
        stdout.contains("failed as expected: ParseIntError"),
        "{stdout}"
    );
    assert!(worker.terminate().success());
    app.broker().delete_queue(&queue).await.unwrap();
    app.broker().delete_exchange(&queue).await.unwrap();
    app.close().await.unwrap();
}

/// A wrong password: the worker exits at once, non-zero, with one ERROR
/// line that names the problem (and not the password), none of lapin's.
#[test]
fn the_worker_binary_reports_a_wrong_password_in_one_error_line() {
    let good: lapin::uri::AMQPUri = common::broker_url().parse().expect("the test broker URL");
    let user = &good.authority.userinfo.username;
    let url = format!(
        "amqp://{user}:not-the-password@{}:{}/%2f",
        good.authority.host, good.authority.port
    );
    let mut command = Command::new(worker_binary());
    command
        .args([
            "--broker",
            &url,
            "-Q",
            &common::unique_queue("wrong-password"),
        ])
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    let output = common::output_within(command, common::CHILD_PROCESS_TIMEOUT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let errors: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|line| line.contains("ERROR"))
        .collect();
    assert!(
        !output.status.success(),
        "the worker exited with {}",
        output.status
    );
    assert_eq!(errors.len(), 1, "stderr:\n{stderr}\nstdout:\n{stdout}");
    assert!(
        errors[0].contains(&format!("authentication refused by amqp://{user}@"))
            && errors[0].contains("check the user name and password"),
        "{}",
        errors[0]
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}

#[tokio::test]
async fn a_result_whose_reply_queue_is_gone_is_reported_at_warn() {
    use std::io::BufRead;
    use task_core::protocol::task_message::{encode_task, TaskCall};

    let queue = common::unique_queue("dropped-result");
    let app = App::builder()
        .broker_url(common::broker_url())
        .set_as_default(false)
        .connect()
        .await
        .expect("RabbitMQ is running");
    app.ensure_queue(&queue).await.unwrap();
    let mut worker = ChildWorker::spawn_with(&queue, "WARNING", true);
    drop(worker.0.stdout.take());
    let stderr = worker.0.stderr.take().expect("piped stderr");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let gone = common::unique_queue("gone-replies");
    let message = encode_task(&TaskCall {
        id: "orphan-1",
        name: "tasks.add",
        args: &[
            serde_json::value::to_raw_value(&1).unwrap(),
            serde_json::value::to_raw_value(&2).unwrap(),
        ],
        kwargs: &[],
        reply_to: Some(&gone),
        eta: None,
        expires: None,
        priority: None,
        time_limit: None,
        soft_time_limit: None,
        ignore_result: false,
        retries: 0,
        root_id: None,
        parent_id: None,
    })
    .unwrap();
    app.broker().publish("", &queue, &message).await.unwrap();
    let warning = tokio::task::spawn_blocking(move || {
        seen.iter()
            .find(|line| line.contains("result dropped"))
            .expect("a warning before stderr closes")
    });
    let warning = tokio::time::timeout(RESULT_TIMEOUT, warning)
        .await
        .expect("the dropped result is reported")
        .unwrap();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("orphan-1") && warning.contains(&gone),
        "{warning}"
    );
    assert!(worker.terminate().success());
    app.broker().delete_queue(&queue).await.unwrap();
    app.broker().delete_exchange(&queue).await.unwrap();
    app.close().await.unwrap();
}
