//! The shipped worker binary (`examples/worker.rs`), run as a real child
//! process with its command line, against the real RabbitMQ.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::RESULT_TIMEOUT;
use task_core::App;
use task_examples::{add, cpu_sum, hello};

/// `target/<profile>/examples/worker`, built by `cargo test` with the tests.
fn worker_binary() -> PathBuf {
    let test_exe = std::env::current_exe().expect("test executable path");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("worker{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: `cargo test` builds it; or run `cargo build --examples`",
        binary.display()
    );
    binary
}

struct ChildWorker(Child);

impl ChildWorker {
    fn spawn(queue: &str) -> Self {
        let child = Command::new(worker_binary())
            .args([
                "--broker",
                &common::broker_url(),
                "-Q",
                queue,
                "-c",
                "2",
                "--loglevel",
                "warn",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("worker binary starts");
        Self(child)
    }

    /// Sends SIGTERM and returns the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.0.id()).expect("pid fits i32");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.0.wait().expect("worker exits")
    }
}

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
    let output = Command::new(worker_binary())
        .args([
            "--broker",
            &url,
            "-Q",
            &common::unique_queue("wrong-password"),
        ])
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("the worker binary runs");
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
