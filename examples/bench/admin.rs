//! Broker housekeeping with plain lapin: unique names, waiting for a worker to
//! consume, and deleting what a run declared (no residue).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

/// Queues and exchanges created by this process, deleted by [`cleanup`].
static CREATED: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());

/// A fresh name for `label`, remembered for cleanup (`with_exchange`: a
/// same-name exchange is declared too, as Celery and this framework do).
pub fn unique_queue(label: &str, with_exchange: bool) -> String {
    let name = format!(
        "bench.{label}.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    CREATED.lock().unwrap().push((name.clone(), with_exchange));
    name
}

pub async fn connect(url: &str) -> Result<Connection> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name("task-bench admin".into()),
    )
    .await
    .with_context(|| format!("cannot connect to RabbitMQ at {url} (is it running?)"))
}

/// `(messages ready, consumers)` of a queue, `None` if it does not exist.
pub async fn queue_state(conn: &Connection, queue: &str) -> Result<Option<(u32, u32)>> {
    let channel = conn.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    // A passive declare of a missing queue closes the channel with 404.
    let _ = channel.close(200, "inspected".into()).await;
    Ok(declared
        .ok()
        .map(|q| (q.message_count(), q.consumer_count())))
}

/// Waits until `queue` has at least one consumer (a worker is ready).
pub async fn wait_for_consumer(
    conn: &Connection,
    queue: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        alive()?;
        if let Some((_, consumers)) = queue_state(conn, queue).await? {
            if consumers > 0 {
                return Ok(());
            }
        }
        if start.elapsed() > timeout {
            bail!("no consumer on queue `{queue}` after {timeout:?}: the worker did not start");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Deletes one queue (and its same-name exchange) now.
pub async fn delete(conn: &Connection, queue: &str, with_exchange: bool) -> Result<()> {
    let channel = conn.create_channel().await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("deleting queue {queue}"))?;
    if with_exchange {
        channel
            .exchange_delete(queue.into(), ExchangeDeleteOptions::default())
            .await
            .with_context(|| format!("deleting exchange {queue}"))?;
    }
    let _ = channel.close(200, "deleted".into()).await;
    CREATED.lock().unwrap().retain(|(name, _)| name != queue);
    Ok(())
}

/// Deletes every queue and exchange this process still has on record (the
/// end of a run, or after an error).
pub async fn cleanup(url: &str) -> Result<usize> {
    let left: Vec<(String, bool)> = CREATED.lock().unwrap().clone();
    if left.is_empty() {
        return Ok(0);
    }
    let conn = connect(url).await?;
    for (queue, exchange) in &left {
        delete(&conn, queue, *exchange).await?;
    }
    let _ = conn.close(200, "cleanup".into()).await;
    Ok(left.len())
}
