//! Revokes that hold, with real worker processes (`examples/worker.rs`) on
//! the real RabbitMQ: a task revoked while a worker holds it, that worker
//! SIGKILLed, never runs on the worker that gets the message back; and a
//! revoke outlives the restart of every worker (the revoke log). Celery
//! loses both: its revokes live in each worker's memory.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use task_core::control::{host_name, Broadcast};
use task_core::{App, Error, TaskState};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A worker process on `queue` named `<label>-<queue>@host`, killed when
/// dropped.
struct WorkerProcess {
    child: Child,
    node: String,
}

impl WorkerProcess {
    /// Starts it and waits until it answers remote control (it has read the
    /// revoke log by then: it reads it before it consumes anything).
    async fn start(app: &App, queue: &str, label: &str) -> Self {
        let name = format!("{label}-{queue}");
        let child = Command::new(common::example_binary("worker"))
            .args(["--broker", &common::broker_url(), "-Q", queue, "-c", "1"])
            .args(["-n", &format!("{name}@%h"), "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("the worker binary starts (cargo test builds it)");
        let worker = Self {
            child,
            node: format!("{name}@{}", host_name()),
        };
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let to = Broadcast::to([worker.node.clone()], Duration::from_secs(1));
        while app.control().ping(to.clone()).await.unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never answered",
                worker.node
            );
        }
        worker
    }

    /// The ids it knows as revoked.
    async fn revoked(&self, app: &App) -> serde_json::Value {
        let to = Broadcast::to([self.node.clone()], TIMEOUT);
        let replies = app.control().inspect("revoked", to).await.unwrap();
        replies.into_iter().next().expect("a reply").1
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_revoked_task_never_runs_after_its_worker_dies_nor_after_every_worker_restarts() {
    let queue = common::unique_queue("revokes-hold");
    // Declares the queue as the worker processes do (a task queue).
    let app = common::client(&[]).await;

    // The first worker takes a long task, which is revoked while it holds
    // it (not terminated: it would run to its end there), then dies.
    let first = WorkerProcess::start(&app, &queue, "first").await;
    let long = app
        .signature("tasks.sleep")
        .arg(30.0)
        .returning::<f64>()
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    let started = long
        .wait_for_state(|state| state == TaskState::Started, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(started, TaskState::Started);
    let id = long.id().to_owned();
    app.control().revoke(&id, false).await.unwrap();
    first.kill();

    // RabbitMQ gives the message to the next worker, which drops it.
    let second = WorkerProcess::start(&app, &queue, "second").await;
    match long.get(TIMEOUT).await {
        Err(Error::Revoked { reason, .. }) => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("the revoked task must not run: {other:?}"),
    }
    second.kill();

    // No worker runs now. The next one still knows the revoke, and drops a
    // message with that id.
    let third = WorkerProcess::start(&app, &queue, "third").await;
    let known = third.revoked(&app).await;
    assert!(known.as_array().unwrap().contains(&json!(id)), "{known}");
    let again = app
        .signature("tasks.add")
        .arg(1)
        .arg(2)
        .returning::<i64>()
        .task_id(id.clone())
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    assert!(matches!(
        again.get(TIMEOUT).await,
        Err(Error::Revoked { .. })
    ));
    third.kill();
    app.broker().delete_queue(&queue).await.unwrap();
    let dead_letters = task_core::broker::QueueSpec::dead_letter_queue(&queue).name;
    app.broker().delete_queue(&dead_letters).await.unwrap();
    app.broker().delete_exchange(&queue).await.unwrap();
}
