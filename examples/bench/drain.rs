//! The drain section: a backlog of tasks that want no result
//! (`ignore_result`), worked off by a worker with late acks, against the raw
//! lapin worker on the same backlog shape. Nothing is replied; the rate is
//! how fast the queue empties.
//!
//! Both sides fill a queue with `n` messages while nothing consumes it,
//! then start their worker (a child process) and sample the queue's ready
//! count every few milliseconds. The rate is taken between the samples at
//! 90% and 10% of the backlog left, so neither the worker's start nor the
//! last prefetch window counts.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection};
use serde::Serialize;
use task_core::App;

use crate::child::ChildProc;
use crate::{admin, framework, raw, Config};

/// One drain run: tasks per second worked off the backlog, each side.
#[derive(Debug, Clone, Serialize)]
pub struct DrainRun {
    pub tasks: usize,
    pub raw_rate: f64,
    pub framework_rate: f64,
}

/// One run of both sides; the raw side first on odd runs.
pub async fn bench(cfg: &Config, raw_first: bool) -> Result<DrainRun> {
    let admin = admin::connect(&cfg.broker).await?;
    let (raw_rate, framework_rate) = if raw_first {
        let raw = raw_side(cfg, &admin).await?;
        (raw, framework_side(cfg, &admin).await?)
    } else {
        let framework = framework_side(cfg, &admin).await?;
        (raw_side(cfg, &admin).await?, framework)
    };
    let _ = admin.close(200, "done".into()).await;
    Ok(DrainRun {
        tasks: cfg.n,
        raw_rate,
        framework_rate,
    })
}

/// The raw lapin worker (acks each message; it replies only to messages
/// with a `reply_to`, and these have none).
async fn raw_side(cfg: &Config, admin: &Connection) -> Result<f64> {
    let queue = admin::unique_queue("drain-raw", false);
    raw::declare_task_queue(admin, &queue).await?;
    let channel = admin.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_headers(raw::header_template_without_reply()?);
    let mut inflight = FuturesUnordered::new();
    for i in 0..cfg.n {
        if inflight.len() >= cfg.window {
            if let Some(done) = inflight.next().await {
                raw::check(done?)?;
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let body = format!("[[{i}, 1], {{}}, {}]", raw::EMBED);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties.clone().with_correlation_id(id.into()),
            )
            .await?;
        inflight.push(confirm);
    }
    while let Some(done) = inflight.next().await {
        raw::check(done?)?;
    }
    let _ = channel.close(200, "filled".into()).await;
    let mut command = Command::new(std::env::current_exe()?);
    command.args([
        "--raw-consumer",
        &queue,
        "--prefetch",
        &cfg.prefetch().to_string(),
        "--broker",
        &cfg.broker,
    ]);
    let mut worker = ChildProc::spawn("raw drain worker", command)?;
    let rate = drain_rate(admin, &queue, cfg.n, || worker.check_alive()).await;
    worker.terminate(Duration::from_secs(5))?;
    admin::delete(admin, &queue, false).await?;
    rate
}

/// The example worker binary on a backlog of `add.s(i, 1).ignore_result()`.
async fn framework_side(cfg: &Config, admin: &Connection) -> Result<f64> {
    let queue = admin::unique_queue("drain-fw", true);
    let app = App::builder()
        .broker_url(cfg.broker.clone())
        .set_as_default(false)
        .connect()
        .await?;
    app.ensure_queue(&queue).await?;
    let mut inflight = FuturesUnordered::new();
    for i in 0..cfg.n {
        if inflight.len() >= cfg.window {
            if let Some(done) = inflight.next().await {
                done?;
            }
        }
        let call = task_examples::add
            .s(i as i64, 1)
            .queue(queue.clone())
            .ignore_result();
        let app = app.clone();
        inflight.push(async move { call.apply_async_with(&app).await.map(drop) });
    }
    while let Some(done) = inflight.next().await {
        done?;
    }
    let mut worker = framework::spawn_worker_unwaited(cfg, &queue)?;
    let rate = drain_rate(admin, &queue, cfg.n, || worker.check_alive()).await;
    worker.terminate(Duration::from_secs(5))?;
    app.broker().close().await?;
    admin::delete(admin, &queue, true).await?;
    rate
}

/// Samples `queue`'s ready count until it is empty; the rate between the
/// samples at 90% and 10% of `n` left.
async fn drain_rate(
    admin: &Connection,
    queue: &str,
    n: usize,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let (high, low) = (n as f64 * 0.9, n as f64 * 0.1);
    // (when, ready count) of the first sample at or below each mark.
    let mut at_high: Option<(Instant, u32)> = None;
    let mut at_low: Option<(Instant, u32)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        alive()?;
        let (ready, _) = admin::queue_state(admin, queue)
            .await?
            .context("the drain queue disappeared")?;
        let now = Instant::now();
        if at_high.is_none() && f64::from(ready) <= high {
            at_high = Some((now, ready));
        }
        if at_low.is_none() && f64::from(ready) <= low {
            at_low = Some((now, ready));
        }
        if ready == 0 {
            break;
        }
        if now > deadline {
            bail!("{ready} tasks still queued after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ((t1, left1), (t2, left2)) = (
        at_high.context("never sampled")?,
        at_low.context("never sampled")?,
    );
    let seconds = (t2 - t1).as_secs_f64();
    if seconds <= 0.0 || left1 <= left2 {
        bail!("the backlog drained between two samples: use a larger --n");
    }
    Ok(f64::from(left1 - left2) / seconds)
}
