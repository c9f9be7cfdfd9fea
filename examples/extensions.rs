//! The worker's extension points in one process, on the embedded broker:
//! shared state and the task's context as parameters, a worker running a
//! chosen set of tasks, a user stage around each task (Celery's
//! `task_prerun` / `task_failure` signals), lifecycle hooks, and a rate
//! limit changed while the worker runs.
//!
//! ```sh
//! cargo run --example extensions
//! ```

use std::time::Duration;

use task_core::pipeline::{BoxFuture, Job, Outcome, Stage, Step};
use task_core::{task, App, Registry, State, TaskContext, TaskError};
use task_worker::Worker;

/// What a database pool would be.
struct Db {
    url: String,
}

#[task(name = "orders.ship")]
async fn ship(db: State<Db>, order: u64, task: TaskContext) -> Result<String, TaskError> {
    if order == 0 {
        return Err(TaskError::new("ValueError", "no order 0"));
    }
    Ok(format!(
        "order {order} shipped through {} (try {})",
        db.url,
        task.retries()
    ))
}

#[task(name = "orders.count")]
async fn count() -> Result<u64, TaskError> {
    Ok(42)
}

/// Celery's task_prerun / task_failure signals, as a stage.
struct Audit;

impl Stage for Audit {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        println!("audit: starting {} {}", job.request.name, job.request.id);
        Step::Next
    }

    fn after<'a>(
        &'a self,
        job: &'a Job<'_>,
        outcome: &'a mut Outcome,
    ) -> Option<BoxFuture<'a, ()>> {
        if let Outcome::Failed { error } = outcome {
            println!("audit: {} failed for good: {error}", job.request.name);
        }
        None // or Some(Box::pin(async move { .. })) to await something
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let app = App::connect("memory://extensions").await?;
    let worker = Worker::builder()
        .app(app.clone())
        .queues(["celery"])
        .registry(Registry::new().with(ship).with(count)) // default: every linked task
        .state(Db {
            url: "postgres://db/orders".into(),
        })
        .stage(Audit)
        .on_ready(|worker| println!("ready on {:?}", worker.queues()))
        .on_shutdown(|_| println!("stopped"))
        .build()
        .await?;
    // Rate and time limits can change while the worker runs.
    worker
        .task_settings()
        .set_rate_limit("orders.ship", "100/s".parse().ok());
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());

    // Callers pass neither the state nor the context.
    let shipped = ship.delay(7).await?.get(Duration::from_secs(10)).await?;
    println!("{shipped}");
    let failed = ship.delay(0).await?.get(Duration::from_secs(10)).await;
    println!(
        "order 0: {}",
        failed.err().map(|e| e.to_string()).unwrap_or_default()
    );
    println!(
        "count: {}",
        count.delay().await?.get(Duration::from_secs(10)).await?
    );

    stop.cancel();
    running.await??;
    Ok(())
}
