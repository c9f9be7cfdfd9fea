//! The raw baseline: lapin only, the shape a task takes, so the framework can
//! be measured against what RabbitMQ itself allows on this machine.
//!
//! Client: one connection, a confirm-mode publishing channel and a no-ack
//! consumer on its own reply queue (as the framework's `App`). Each message
//! carries the same properties, header table and body as a framework task
//! message for `tasks.add` (the header table is built once and cloned).
//! Worker (a child process, this same binary with `--raw-consumer`): one
//! connection, a consumer with prefetch and manual acks, a confirm-mode
//! channel for replies; each reply is published to `reply_to`, and the task
//! message is acked once the reply's confirm arrives (late ack, as the
//! framework's worker does), all pipelined.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

use crate::child::ChildProc;
use crate::sys::{self, Latency};
use crate::{admin, Config, SideRun};

pub const EMBED: &str = r#"{"callbacks": null, "errbacks": null, "chain": null, "chord": null}"#;

/// A framework task message's header table, as AMQP (built once).
fn header_template() -> Result<FieldTable> {
    header_template_for(false)
}

/// The header table of a call that wants no result (`ignore_result`).
pub fn header_template_without_reply() -> Result<FieldTable> {
    header_template_for(true)
}

fn header_template_for(ignore_result: bool) -> Result<FieldTable> {
    let args = [
        serde_json::value::to_raw_value(&1)?,
        serde_json::value::to_raw_value(&1)?,
    ];
    let message = task_core::protocol::task_message::encode_task(
        &task_core::protocol::task_message::TaskCall {
            id: "00000000-0000-0000-0000-000000000000",
            name: "tasks.add",
            args: &args,
            kwargs: &[],
            reply_to: (!ignore_result).then_some("00000000-0000-0000-0000-000000000000"),
            eta: None,
            expires: None,
            priority: None,
            time_limit: None,
            soft_time_limit: None,
            ignore_result,
            retries: 0,
            root_id: None,
            parent_id: None,
        },
    )?;
    Ok(message.properties.headers.to_field_table())
}

pub fn check(confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        other => bail!("publish not confirmed: {other:?}"),
    }
}

async fn confirm_channel(conn: &Connection) -> Result<Channel> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// A raw producer with its reply queue.
struct RawClient {
    conn: Connection,
    publisher: Channel,
    properties: BasicProperties,
    reply_queue: String,
    /// One permit per reply received.
    replies: Arc<Semaphore>,
    received: Arc<AtomicU64>,
    reader: tokio::task::JoinHandle<Result<()>>,
}

impl RawClient {
    async fn connect(url: &str) -> Result<Self> {
        let conn = Connection::connect(
            url,
            ConnectionProperties::default().with_connection_name("task-bench raw client".into()),
        )
        .await?;
        let publisher = confirm_channel(&conn).await?;
        // Declared as the framework declares its reply queue.
        let reply_queue = admin::unique_queue("raw-reply", false);
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongInt(86_400_000));
        let consumer_channel = conn.create_channel().await?;
        consumer_channel
            .queue_declare(
                reply_queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await?;
        let mut consumer = consumer_channel
            .basic_consume(
                reply_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let replies = Arc::new(Semaphore::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let reader = tokio::spawn({
            let replies = Arc::clone(&replies);
            let received = Arc::clone(&received);
            async move {
                let _keep_channel = consumer_channel;
                while let Some(delivery) = consumer.next().await {
                    let delivery = delivery?;
                    if delivery.properties.correlation_id().is_none() {
                        bail!("a reply without correlation_id");
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                    replies.add_permits(1);
                }
                Ok(())
            }
        });
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2)
            .with_reply_to(reply_queue.as_str().into())
            .with_headers(header_template()?);
        Ok(Self {
            conn,
            publisher,
            properties,
            reply_queue,
            replies,
            received,
            reader,
        })
    }

    /// Publishes one task-shaped message and waits for its confirm. The
    /// future owns what it needs, so that many run at once: lapin then
    /// writes their frames in batches (awaiting each `basic_publish` in
    /// turn would cost a hand-over to lapin's I/O thread per message).
    fn publish(&self, queue: &str, i: u64) -> impl std::future::Future<Output = Result<()>> {
        let channel = self.publisher.clone();
        let queue = ShortString::from(queue);
        let id = uuid::Uuid::new_v4().to_string();
        let properties = self.properties.clone().with_correlation_id(id.into());
        async move {
            let body = format!("[[{i}, 1], {{}}, {EMBED}]");
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue,
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    body.as_bytes(),
                    properties,
                )
                .await?;
            check(confirm.await?)
        }
    }

    /// Confirmed publishes only (nobody consumes `queue`), `window` confirms
    /// outstanding at most. Returns messages per second.
    async fn publish_only(&self, queue: &str, n: usize, window: usize) -> Result<f64> {
        let start = Instant::now();
        let mut inflight = FuturesUnordered::new();
        let mut sent = 0;
        loop {
            tokio::select! {
                () = std::future::ready(()), if sent < n && inflight.len() < window => {
                    inflight.push(self.publish(queue, sent as u64));
                    sent += 1;
                }
                Some(done) = inflight.next(), if !inflight.is_empty() => done?,
                else => break,
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }

    /// `n` round trips with `window` in flight; returns round trips per second.
    async fn round_trips(&self, queue: &str, n: usize, window: usize) -> Result<f64> {
        let window = window.min(n).max(1);
        let before = self.received.load(Ordering::Relaxed);
        self.replies.add_permits(window);
        let start = Instant::now();
        let mut inflight = FuturesUnordered::new();
        let mut sent = 0;
        loop {
            tokio::select! {
                permit = self.replies.acquire(), if sent < n => {
                    permit?.forget();
                    inflight.push(self.publish(queue, sent as u64));
                    sent += 1;
                }
                Some(done) = inflight.next(), if !inflight.is_empty() => done?,
                else => break,
            }
        }
        let all = u32::try_from(window)?;
        tokio::time::timeout(Duration::from_secs(120), self.replies.acquire_many(all))
            .await
            .context("replies did not all arrive within 120 s")??
            .forget();
        let elapsed = start.elapsed();
        let got = self.received.load(Ordering::Relaxed) - before;
        if got != n as u64 {
            bail!("expected {n} replies, got {got}");
        }
        Ok(n as f64 / elapsed.as_secs_f64())
    }

    /// One call at a time: publish, await its confirm, await its reply.
    async fn sequential(&self, queue: &str, calls: usize) -> Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(calls);
        for i in 0..calls as u64 {
            let start = Instant::now();
            self.publish(queue, i).await?;
            tokio::time::timeout(Duration::from_secs(20), self.replies.acquire())
                .await
                .context("no reply within 20 s")??
                .forget();
            samples.push(start.elapsed());
        }
        Ok(samples)
    }

    async fn close(self) -> Result<()> {
        self.reader.abort();
        let _ = self.conn.close(200, "done".into()).await;
        Ok(())
    }
}

/// The raw "worker": runs in a child process (`bench --raw-consumer QUEUE`).
pub async fn consumer_main(url: &str, queue: &str, prefetch: u16) -> Result<()> {
    let conn = Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name("task-bench raw worker".into()),
    )
    .await?;
    let publisher = confirm_channel(&conn).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Every delivery is answered by a future of its own (reply published,
    // its confirm awaited, then the task acked), all driven concurrently.
    let mut settling = FuturesUnordered::new();
    loop {
        tokio::select! {
            delivery = consumer.next() => {
                let Some(delivery) = delivery else { break };
                settling.push(reply(publisher.clone(), delivery?));
            }
            Some(settled) = settling.next(), if !settling.is_empty() => settled?,
        }
    }
    Ok(())
}

async fn reply(publisher: Channel, delivery: lapin::message::Delivery) -> Result<()> {
    let id = delivery
        .properties
        .correlation_id()
        .clone()
        .unwrap_or_else(|| "".into());
    if let Some(reply_to) = delivery.properties.reply_to().clone() {
        let body = format!(
            r#"{{"task_id": "{}", "status": "SUCCESS", "result": 2, "traceback": null, "children": [], "date_done": "2026-01-01T00:00:00.000000+00:00"}}"#,
            id.as_str()
        );
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(1)
            .with_correlation_id(id)
            .with_headers(FieldTable::default());
        // A vanished reply queue (a returned message) is not an error here.
        publisher
            .basic_publish(
                "".into(),
                reply_to,
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body.as_bytes(),
                properties,
            )
            .await?
            .await?;
    }
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// One raw run: confirmed publish alone, round trips, one-at-a-time.
pub async fn bench(cfg: &Config) -> Result<SideRun> {
    let mut out = SideRun::default();
    let client = RawClient::connect(&cfg.broker).await?;
    let admin = admin::connect(&cfg.broker).await?;

    // 1. Confirmed publishes to a queue nobody consumes.
    let queue = admin::unique_queue("raw-pub", false);
    declare_task_queue(&client.conn, &queue).await?;
    client.publish_only(&queue, cfg.warmup, cfg.window).await?;
    out.publish_rate = Some(client.publish_only(&queue, cfg.n, cfg.window).await?);
    admin::delete(&admin, &queue, false).await?;

    // 2. Round trips through a raw worker process.
    let queue = admin::unique_queue("raw", false);
    declare_task_queue(&client.conn, &queue).await?;
    let mut command = Command::new(std::env::current_exe()?);
    command.args([
        "--raw-consumer",
        &queue,
        "--prefetch",
        &cfg.prefetch().to_string(),
        "--broker",
        &cfg.broker,
    ]);
    let mut worker = ChildProc::spawn("raw worker", command)?;
    admin::wait_for_consumer(&admin, &queue, Duration::from_secs(20), || {
        worker.check_alive()
    })
    .await?;
    client.round_trips(&queue, cfg.warmup, cfg.window).await?;
    let (client_cpu, worker_cpu) = (sys::self_cpu_seconds(), worker.cpu_seconds());
    let broker_cpu = sys::broker_cpu_seconds();
    let switches = (
        sys::context_switches(std::process::id()),
        worker.context_switches(),
    );
    out.e2e_rate = Some(client.round_trips(&queue, cfg.n, cfg.window).await?);
    out.client_ctx_switches_per_task =
        per_task(switches.0, sys::context_switches(std::process::id()), cfg.n);
    out.worker_ctx_switches_per_task =
        per_task(Some(switches.1), Some(worker.context_switches()), cfg.n);
    out.client_cpu_s_per_10k = Some(per_10k(sys::self_cpu_seconds() - client_cpu, cfg.n));
    out.worker_cpu_s_per_10k = Some(per_10k(worker.cpu_seconds() - worker_cpu, cfg.n));
    out.broker_cpu_s_per_10k = broker_per_10k(broker_cpu, cfg.n);

    // 3. One at a time.
    client.sequential(&queue, cfg.seq_warmup()).await?;
    out.seq = Latency::of(&client.sequential(&queue, cfg.seq).await?);
    out.worker_peak_rss_kib = worker.peak_rss_kib();
    worker.terminate(Duration::from_secs(5))?;
    admin::delete(&admin, &queue, false).await?;
    let reply_queue = client.reply_queue.clone();
    client.close().await?;
    admin::delete(&admin, &reply_queue, false).await?;
    let _ = admin.close(200, "done".into()).await;
    Ok(out)
}

/// A durable classic queue, as a task queue (expiring 10 minutes after last
/// use as a safety net should the run be killed).
pub async fn declare_task_queue(conn: &Connection, queue: &str) -> Result<()> {
    let channel = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// A counter's increase per task.
pub fn per_task(before: Option<u64>, after: Option<u64>, tasks: usize) -> Option<f64> {
    Some(after?.saturating_sub(before?) as f64 / tasks as f64)
}

/// The broker's CPU since `before`, per 10,000 tasks.
pub fn broker_per_10k(before: Option<f64>, tasks: usize) -> Option<f64> {
    Some(per_10k(sys::broker_cpu_seconds()? - before?, tasks))
}

pub fn per_10k(cpu_seconds: f64, tasks: usize) -> f64 {
    cpu_seconds / tasks as f64 * 10_000.0
}
