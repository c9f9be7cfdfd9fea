//! A client in a process of its own, calling tasks that a separate worker
//! process runs: the shape of a real deployment (a web service publishing,
//! a fleet of workers consuming).
//!
//! ```text
//! cargo run --example worker                     # terminal 1: the worker (RabbitMQ at BROKER_URL)
//! cargo run --example client                     # terminal 2: calls it and prints the results
//! cargo run --example client -- --name Zoë 40 2  # other arguments
//! cargo run --example worker -- -Q math & cargo run --example client -- -Q math
//! ```
//!
//! Both default to the local RabbitMQ (`amqp://guest:guest@127.0.0.1:5672/%2f`);
//! set `BROKER_URL` for another broker. `memory://` cannot work here: it
//! lives inside one process.

use std::time::Duration;

use anyhow::Context;
use task_core::broker::redact;
use task_core::{App, DEFAULT_BROKER_URL};
use task_examples::{add, hello, parse_int};

/// How long to wait for each result: the worker may still be starting.
const RESULT_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut name = "world".to_owned();
    let mut queue = task_core::DEFAULT_QUEUE.to_owned();
    let mut numbers = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--name" {
            name = args.next().context("--name needs a value")?;
        } else if arg == "-Q" || arg == "--queue" {
            queue = args.next().context("-Q needs a queue name")?;
        } else {
            numbers.push(
                arg.parse::<i64>()
                    .with_context(|| format!("`{arg}` is not an integer"))?,
            );
        }
    }
    let (x, y) = match numbers[..] {
        [] => (2, 3),
        [x, y] => (x, y),
        _ => anyhow::bail!("give two integers to add, or none"),
    };

    let url = std::env::var("BROKER_URL").unwrap_or_else(|_| DEFAULT_BROKER_URL.to_owned());
    anyhow::ensure!(
        !url.starts_with("memory://"),
        "memory:// lives inside one process; point BROKER_URL at RabbitMQ to reach a worker process"
    );
    let app = App::connect(&url)
        .await
        .with_context(|| format!("connecting to {}", redact(&url)))?;
    println!("connected to {}", redact(&url));

    // Publish all three first (each returns once RabbitMQ confirmed it),
    // then collect: the worker runs them concurrently.
    // (`add.delay(x, y)` is the same call on the default queue.)
    let sum = add.s(x, y).queue(queue.clone()).apply_async().await?;
    let greeting = hello.s(name).queue(queue.clone()).apply_async().await?;
    let failing = parse_int
        .s("not a number".to_owned())
        .queue(queue)
        .apply_async()
        .await?;
    println!("sent {}, {}, {}", sum.id(), greeting.id(), failing.id());

    let waiting = || {
        format!("no result within {RESULT_TIMEOUT:?}: is a worker running (`cargo run --example worker`)?")
    };
    println!(
        "tasks.add({x}, {y}) = {}",
        sum.get(RESULT_TIMEOUT).await.with_context(waiting)?
    );
    println!(
        "tasks.hello = {:?}",
        greeting.get(RESULT_TIMEOUT).await.with_context(waiting)?
    );
    match failing.get(RESULT_TIMEOUT).await {
        Err(task_core::Error::TaskFailed(failure)) => {
            println!(
                "tasks.parse_int failed as expected: {}: {}",
                failure.exc_type, failure.message
            );
        }
        other => anyhow::bail!("tasks.parse_int should fail, got {other:?}"),
    }
    app.close().await?;
    Ok(())
}
