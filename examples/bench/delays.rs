//! Delayed tasks: `N` tasks with random countdowns (uniform in `[0, max]`),
//! kept by RabbitMQ's delay levels (`task_core::broker::delay_topology`), not
//! by the worker.
//!
//! The worker is a child process: this same binary started with
//! [`AS_WORKER_ENV`] set, which runs `task_worker::cli::main()` exactly as
//! `examples/worker.rs` does (same command line: `-Q <queue> -c <n>
//! --loglevel warn`), with one more task linked in: [`started_at`], which
//! returns the worker's wall clock when its body starts. (A task defined here
//! cannot be linked into `examples/worker`; the example tasks have no such
//! task.) Its resident memory is sampled every 250 ms from `/proc`.
//!
//! Each task's ETA is computed on the client as the framework computes it:
//! the `eta` header is `Utc::now() + countdown`, taken when the call is
//! encoded and written with microseconds (truncated). The client reads
//! `Utc::now()` just before `apply_async_with`, whose first poll encodes the
//! call without yielding (the queue and reply queue are declared by a warm-up
//! call first), so the client's `trunc_µs(sent + countdown)` is at most a few
//! microseconds before the header's ETA and never after it: a start before
//! the client's ETA is a start before the header's ETA. Client and worker
//! read the same clock (same machine). Lateness is `start - ETA`.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use task_core::broker::delay_topology;
use task_core::{task, App, TaskError};

use crate::child::ChildProc;
use crate::framework::{flat_tolerance_kib, WARMUP_FRACTION};
use crate::{admin, sys, Config};

/// Set (to anything) in the environment, this binary is a worker:
/// `task_worker::cli::main()` with the example tasks and [`started_at`].
pub const AS_WORKER_ENV: &str = "TASK_BENCH_AS_WORKER";

/// Nanoseconds since the Unix epoch.
fn unix_nanos(time: DateTime<Utc>) -> i64 {
    time.timestamp() * 1_000_000_000 + i64::from(time.timestamp_subsec_nanos())
}

fn from_unix_nanos(nanos: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

/// The worker's wall clock when the task's body starts (ns since the epoch).
#[task(name = "bench.started_at")]
pub async fn started_at() -> Result<i64, TaskError> {
    Ok(unix_nanos(Utc::now()))
}

/// Countdowns uniform in `[0, max]` at microsecond resolution (splitmix64,
/// reproducible from the seed).
fn countdowns(n: usize, max: Duration, seed: u64) -> Vec<Duration> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let span = u64::try_from(max.as_micros()).unwrap_or(u64::MAX / 2) + 1;
    let mut out: Vec<Duration> = (0..n)
        .map(|_| Duration::from_micros(next() % span))
        .collect();
    // The first publish is timed alone (it declares the delay levels): make
    // it a delayed one by moving the longest countdown first (same set).
    if let Some(longest) = (0..out.len()).max_by_key(|&i| out[i]) {
        out.swap(0, longest);
    }
    out
}

/// Percentiles of per-task times, in milliseconds (lateness `start - ETA`;
/// publish latency `confirm - send`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub tasks: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The smallest (for lateness, negative means a task started before its ETA).
    pub min_ms: f64,
    pub mean_ms: f64,
}

impl Spread {
    pub(crate) fn of(mut ms: Vec<f64>) -> Option<Self> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Some(Self {
            tasks: ms.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: ms[ms.len() - 1],
            min_ms: ms[0],
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
        })
    }
}

/// A task that started before its ETA (a bug).
#[derive(Debug, Clone, Serialize)]
pub struct EarlyStart {
    pub task_id: String,
    pub countdown_ms: f64,
    /// The ETA as the `eta` header writes it (client side, see the module docs).
    pub eta: String,
    /// The worker's clock when the body started.
    pub started: String,
    pub early_by_ms: f64,
}

/// One delays run.
#[derive(Debug, Clone, Serialize)]
pub struct DelayRun {
    pub tasks: usize,
    pub max_countdown_s: f64,
    pub seed: u64,
    /// Whether the 32 level queues existed before this run (they are shared
    /// and durable; this harness never deletes them).
    pub delay_levels_existed: Option<bool>,
    /// The first delayed publish alone, confirmed: declares the 65 delay
    /// objects (32 exchanges, 32 queues, the delivery exchange) and their
    /// bindings, and binds the task queue to the delivery exchange.
    pub first_publish_ms: f64,
    /// Publishes in flight (awaiting their confirm) after the first.
    pub window: usize,
    /// All `tasks` publishes, the first included (confirmed, `window` in flight).
    pub publish_s: f64,
    pub publish_rate: f64,
    /// Per task, from just before `apply_async_with` to its confirm. A
    /// delay starts when RabbitMQ routes the message into the levels, so
    /// time a publish waits in RabbitMQ adds to the task's lateness.
    pub publish_latency: Option<Spread>,
    /// Messages in the 32 level queues (anyone's) right after the last
    /// publish was confirmed: where the delays are kept.
    pub in_delay_levels_after_publish: Option<u64>,
    /// From the first publish to the last result.
    pub wall_s: f64,
    pub lateness: Option<Spread>,
    /// Tasks whose body started before their ETA: must be 0.
    pub started_before_eta: usize,
    /// The earliest of them (up to 10).
    pub early_examples: Vec<EarlyStart>,
    pub worker_rss_idle_kib: Option<u64>,
    /// RSS once `WARMUP_FRACTION` of the tasks have run.
    pub worker_rss_after_warmup_kib: Option<u64>,
    /// The largest RSS sampled from warm-up on.
    pub worker_rss_max_after_warmup_kib: Option<u64>,
    pub worker_rss_end_kib: Option<u64>,
    /// VmHWM at the end of the run (the process's peak).
    pub worker_hwm_kib: Option<u64>,
    /// Largest RSS from warm-up on minus RSS at warm-up.
    pub growth_after_warmup_kib: Option<i64>,
    /// Growth within max(1 MiB, 5 % of the warmed-up RSS).
    pub flat: Option<bool>,
    pub worker_cpu_s: f64,
    /// The local RabbitMQ's CPU from the first publish to the last result.
    pub broker_cpu_s: Option<f64>,
    /// `(seconds since the first publish, tasks done, VmRSS KiB)`.
    pub samples: Vec<(f64, u64, u64)>,
}

/// Starts this binary as a worker on `queue` and waits until it consumes.
async fn spawn_worker(cfg: &Config, admin: &lapin::Connection, queue: &str) -> Result<ChildProc> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args([
            "-Q",
            queue,
            "-c",
            &cfg.concurrency.to_string(),
            "--loglevel",
            "warn",
        ])
        .env(AS_WORKER_ENV, "1")
        .env("BROKER_URL", &cfg.broker);
    let mut worker = ChildProc::spawn("delay worker", command)?;
    admin::wait_for_consumer(admin, queue, Duration::from_secs(30), || {
        worker.check_alive()
    })
    .await?;
    Ok(worker)
}

/// Messages in the delay levels' queues, `None` if one is missing.
async fn in_delay_levels(admin: &lapin::Connection) -> Result<Option<u64>> {
    let mut total = 0u64;
    for queue in delay_topology::wait_queues() {
        match admin::queue_state(admin, &queue).await? {
            Some((ready, _)) => total += u64::from(ready),
            None => return Ok(None),
        }
    }
    Ok(Some(total))
}

/// What one publish left to check.
struct Sent {
    task_id: String,
    countdown: Duration,
    /// ETA as the header has it, in ns since the epoch (µs resolution).
    eta_nanos: i64,
    publish_ms: f64,
    started: tokio::task::JoinHandle<Result<i64, task_core::Error>>,
}

fn rounded(seconds: f64) -> f64 {
    (seconds * 100.0).round() / 100.0
}

pub async fn bench(cfg: &Config, seed: u64) -> Result<DelayRun> {
    let admin = admin::connect(&cfg.broker).await?;
    let delay_levels_existed = admin::queue_state(&admin, &delay_topology::wait_queue_name(0, 1))
        .await?
        .map(|_| true)
        .or(Some(false));
    let queue = admin::unique_queue("delays", true);
    let worker = spawn_worker(cfg, &admin, &queue).await?;
    let app = App::builder()
        .broker_url(cfg.broker.clone())
        .default_queue(queue.clone())
        .set_as_default(false)
        .connect()
        .await
        .context("client app cannot connect")?;
    let max_countdown = Duration::from_secs_f64(cfg.delay_max_s);
    let result_timeout = max_countdown + Duration::from_secs(120);

    // Warm-up without a countdown: declares the task queue and the reply
    // queue (so that every timed call encodes on its first poll) and checks
    // that the worker runs the task on the same clock.
    for _ in 0..20 {
        let sent = Utc::now();
        let started = started_at
            .s()
            .apply_async_with(&app)
            .await?
            .get(result_timeout)
            .await?;
        ensure!(
            started >= unix_nanos(sent),
            "the worker's clock is behind the client's: started {} < sent {}",
            from_unix_nanos(started),
            sent
        );
    }
    let pid = worker.pid();
    let rss_idle = sys::status_kib(pid, "VmRSS");

    let plan = countdowns(cfg.delay_n, max_countdown, seed);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let start = Instant::now();
    let sampler = tokio::spawn({
        let done = Arc::clone(&done);
        let stop = Arc::clone(&stop);
        async move {
            let mut samples = Vec::new();
            loop {
                if let Some(rss) = sys::status_kib(pid, "VmRSS") {
                    samples.push((
                        rounded(start.elapsed().as_secs_f64()),
                        done.load(Ordering::Relaxed),
                        rss,
                    ));
                }
                tokio::select! {
                    _ = stop.notified() => break,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            samples
        }
    });
    let worker_cpu_before = worker.cpu_seconds();
    let broker_cpu_before = sys::broker_cpu_seconds();

    let publish = |countdown: Duration| {
        let app = &app;
        let done = Arc::clone(&done);
        async move {
            // Read just before the call is encoded (same poll, no await in between).
            let sent = Utc::now();
            let result = started_at
                .s()
                .countdown(countdown)
                .apply_async_with(app)
                .await?;
            let confirmed = Utc::now();
            let eta_nanos = (sent + countdown).timestamp_micros() * 1_000;
            let task_id = result.id().to_owned();
            let started = tokio::spawn(async move {
                let started = result.get(result_timeout).await;
                done.fetch_add(1, Ordering::Relaxed);
                started
            });
            anyhow::Ok(Sent {
                task_id,
                countdown,
                eta_nanos,
                publish_ms: (confirmed - sent).as_seconds_f64() * 1e3,
                started,
            })
        }
    };
    let mut sent = Vec::with_capacity(plan.len());
    let mut first_publish_ms = f64::NAN;
    if let Some(&first) = plan.first() {
        let t = Instant::now();
        sent.push(publish(first).await?);
        first_publish_ms = t.elapsed().as_secs_f64() * 1e3;
    }
    let rest: Vec<Sent> = futures_util::stream::iter(plan.iter().skip(1).copied())
        .map(publish)
        .buffer_unordered(cfg.delay_window)
        .try_collect()
        .await?;
    sent.extend(rest);
    let publish_s = start.elapsed().as_secs_f64();
    let in_levels = in_delay_levels(&admin).await?;

    let publish_latency = Spread::of(sent.iter().map(|s| s.publish_ms).collect());
    let mut lateness_ms = Vec::with_capacity(sent.len());
    let mut early = Vec::new();
    for s in sent {
        let started = s
            .started
            .await?
            .with_context(|| format!("task {} (countdown {:?})", s.task_id, s.countdown))?;
        let late = started - s.eta_nanos;
        lateness_ms.push(late as f64 / 1e6);
        if late < 0 {
            early.push(EarlyStart {
                task_id: s.task_id,
                countdown_ms: s.countdown.as_secs_f64() * 1e3,
                eta: from_unix_nanos(s.eta_nanos).to_rfc3339_opts(SecondsFormat::Micros, false),
                started: from_unix_nanos(started).to_rfc3339_opts(SecondsFormat::Nanos, false),
                early_by_ms: -late as f64 / 1e6,
            });
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    let worker_cpu_s = worker.cpu_seconds() - worker_cpu_before;
    let broker_cpu_s = sys::broker_cpu_seconds()
        .zip(broker_cpu_before)
        .map(|(after, before)| after - before);
    let rss_end = sys::status_kib(pid, "VmRSS");
    let hwm = sys::status_kib(pid, "VmHWM");
    stop.notify_one();
    let mut samples = sampler.await?;
    if let Some(rss) = rss_end {
        samples.push((rounded(wall_s), cfg.delay_n as u64, rss));
    }
    worker.terminate(Duration::from_secs(10))?;
    app.close().await?;
    // Deleting the queue also removes its binding to the delivery exchange.
    admin::delete(&admin, &queue, true).await?;
    let _ = admin.close(200, "done".into()).await;

    let started_before_eta = early.len();
    early.sort_by(|a, b| b.early_by_ms.total_cmp(&a.early_by_ms));
    early.truncate(10);
    let warm_at = (cfg.delay_n as f64 * WARMUP_FRACTION) as u64;
    let warm_index = samples.iter().position(|s| s.1 >= warm_at);
    let rss_warm = warm_index.map(|i| samples[i].2);
    let rss_max = warm_index.and_then(|i| samples[i..].iter().map(|s| s.2).max());
    let growth = match (rss_warm, rss_max) {
        (Some(warm), Some(max)) => Some(max as i64 - warm as i64),
        _ => None,
    };
    let flat = match (rss_warm, growth) {
        (Some(warm), Some(growth)) => Some(growth <= flat_tolerance_kib(warm) as i64),
        _ => None,
    };
    Ok(DelayRun {
        tasks: cfg.delay_n,
        max_countdown_s: cfg.delay_max_s,
        seed,
        delay_levels_existed,
        first_publish_ms,
        window: cfg.delay_window,
        publish_s,
        publish_rate: cfg.delay_n as f64 / publish_s,
        publish_latency,
        in_delay_levels_after_publish: in_levels,
        wall_s,
        lateness: Spread::of(lateness_ms),
        started_before_eta,
        early_examples: early,
        worker_rss_idle_kib: rss_idle,
        worker_rss_after_warmup_kib: rss_warm,
        worker_rss_max_after_warmup_kib: rss_max,
        worker_rss_end_kib: rss_end,
        worker_hwm_kib: hwm,
        growth_after_warmup_kib: growth,
        flat,
        worker_cpu_s,
        broker_cpu_s,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdowns_are_in_range_and_the_longest_comes_first() {
        let max = Duration::from_secs(10);
        let plan = countdowns(10_000, max, 7);
        assert_eq!(plan.len(), 10_000);
        assert!(plan.iter().all(|d| *d <= max));
        assert_eq!(plan[0], *plan.iter().max().unwrap());
        let mean = plan.iter().map(Duration::as_secs_f64).sum::<f64>() / 10_000.0;
        assert!((mean - 5.0).abs() < 0.2, "mean {mean}");
        assert_eq!(countdowns(5, max, 7), countdowns(5, max, 7));
    }

    #[test]
    fn nanos_round_trip() {
        let now = Utc::now();
        assert_eq!(from_unix_nanos(unix_nanos(now)), now);
    }
}
