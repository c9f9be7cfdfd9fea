//! The README flow, end to end, in one process: connect, start a worker,
//! call tasks, print what happened.
//!
//! Without `BROKER_URL` it runs on the embedded in-process broker
//! (`memory://`), so it works before RabbitMQ is installed:
//!
//! ```text
//! cargo run --example quickstart                                                  # memory://
//! BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example quickstart # RabbitMQ
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use task_core::broker::memory::is_memory_url;
use task_core::broker::redact;
use task_core::App;
use task_examples::{add, hello, parse_int, stats};
use task_worker::Worker;

/// The broker used when `BROKER_URL` is not set: in this process.
const EMBEDDED_BROKER_URL: &str = "memory://";
/// How to run the quickstart against the local RabbitMQ instead.
const RABBITMQ_HINT: &str =
    "BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example quickstart";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("BROKER_URL").unwrap_or_else(|_| EMBEDDED_BROKER_URL.to_owned());
    let app = App::connect(&url)
        .await
        .with_context(|| format!("connecting to {} (is RabbitMQ running?)", redact(&url)))?;
    if is_memory_url(&url) {
        println!("no RabbitMQ needed: running on the embedded in-process broker ({url}),");
        println!("with the worker and the client in this process.");
        println!("To run it against RabbitMQ: {RABBITMQ_HINT}");
    } else {
        println!("connected to the broker at {}", redact(&url));
    }

    // A worker in this process, consuming Celery's default queue `celery`. In
    // production it is a separate process: `cargo run --example worker`.
    let worker = Worker::builder()
        .app(app.clone())
        .concurrency(4)
        .build()
        .await?;
    let stop = worker.shutdown_handle();
    let worker = tokio::spawn(worker.run());
    println!("worker started on queue `{}`", app.default_queue());

    let timeout = Duration::from_secs(10);
    let started = Instant::now();
    let pending = add.delay(2, 3).await?;
    println!(
        "add(2, 3) published as task {} (confirmed by the broker)",
        pending.id()
    );
    let sum: i64 = pending.get(timeout).await?;
    println!("add(2, 3) = {sum}   [round trip {:?}]", started.elapsed());

    let greeting = hello.delay("Wörld".into()).await?;
    println!("hello(\"Wörld\") = {:?}", greeting.get(timeout).await?);

    let summary = stats.delay(vec![1.5, 2.5, 8.0]).await?;
    println!("stats([1.5, 2.5, 8.0]) = {:?}", summary.get(timeout).await?);

    let later = Instant::now();
    let delayed = add
        .s(40, 2)
        .countdown(Duration::from_secs(1))
        .apply_async()
        .await?;
    println!(
        "add(40, 2) with countdown 1s = {} after {:?}",
        delayed.get(timeout).await?,
        later.elapsed()
    );

    let failing = parse_int.delay("forty-two".into()).await?;
    match failing.get(timeout).await {
        Err(task_core::Error::TaskFailed(failure)) => {
            println!(
                "parse_int(\"forty-two\") failed as expected: {}: {}",
                failure.exc_type, failure.message
            )
        }
        other => anyhow::bail!("parse_int should have failed, got {other:?}"),
    }

    stop.cancel();
    worker.await??;
    println!("worker stopped; quickstart done.");
    if is_memory_url(&url) {
        println!("Next: the same against RabbitMQ: {RABBITMQ_HINT}");
        println!(
            "(a worker in a process of its own, `cargo run --example worker`, needs a broker \
             both processes reach: RabbitMQ; `bash scripts/ensure-rabbitmq.sh` starts one)"
        );
    } else {
        println!(
            "Next: `cargo run --example worker` runs these tasks in a worker process of their own."
        );
    }
    Ok(())
}
