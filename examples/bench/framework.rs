//! This framework: `tasks.add` through `.delay()` and `.get()`, against the
//! real example worker binary run as a child process, or against an
//! in-process `task_worker::Worker`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use task_core::App;
use task_examples::add;

use crate::child::ChildProc;
use crate::raw::{broker_per_10k, per_10k, per_task};
use crate::sys::{self, Latency};
use crate::{admin, Config, SideRun};

const RESULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the example worker binary is: beside this benchmark's binary.
pub fn worker_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("benchmark binary has no directory")?;
    Ok(dir.join(format!("worker{}", std::env::consts::EXE_SUFFIX)))
}

/// Builds the example worker with this benchmark's profile (`cargo build
/// --release --example worker`), unless told not to; checks it exists.
pub fn ensure_worker_binary(build: bool) -> Result<PathBuf> {
    let binary = worker_binary()?;
    if build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(sys::workspace_root()).args([
            "build",
            "--quiet",
            "--example",
            "worker",
        ]);
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        let status = command
            .status()
            .context("running cargo to build the worker")?;
        ensure!(status.success(), "`cargo build --example worker` failed");
    }
    ensure!(
        binary.exists(),
        "{} is missing: run `cargo build --release --examples` (or drop --no-build)",
        binary.display()
    );
    Ok(binary)
}

/// A client app whose default queue is `queue`, made the default app so
/// that `add.delay(..)` publishes there.
pub async fn client_app(cfg: &Config, queue: &str) -> Result<App> {
    App::builder()
        .broker_url(cfg.broker.clone())
        .default_queue(queue)
        .set_as_default(true)
        .connect()
        .await
        .context("client app cannot connect")
}

/// `n` confirmed `.delay()` calls with `window` in flight, nobody consuming.
async fn delay_only(n: usize, window: usize) -> Result<f64> {
    let start = Instant::now();
    futures_util::stream::iter(0..n as i64)
        .map(|i| async move { add.delay(i, 1).await.map(drop) })
        .buffer_unordered(window)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `n` tasks, `.delay()` then `.get()`, `window` in flight; tasks per second.
/// (`check`: the sum must be right; off when profiling against the raw
/// worker, which answers without reading the task.)
pub async fn round_trips(
    n: usize,
    window: usize,
    done: Option<&AtomicU64>,
    check: bool,
) -> Result<f64> {
    let start = Instant::now();
    futures_util::stream::iter(0..n as i64)
        .map(|i| async move {
            let sum = add.delay(i, 1).await?.get(RESULT_TIMEOUT).await?;
            if check && sum != i + 1 {
                bail!("tasks.add({i}, 1) returned {sum}");
            }
            if let Some(done) = done {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .buffer_unordered(window)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// One `.delay()` → `.get()` at a time.
async fn sequential(calls: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls as i64 {
        let start = Instant::now();
        let sum = add.delay(i, 1).await?.get(RESULT_TIMEOUT).await?;
        samples.push(start.elapsed());
        ensure!(sum == i + 1, "tasks.add({i}, 1) returned {sum}");
    }
    Ok(samples)
}

/// Profiling driver: `n` round trips to `queue` (a worker is already
/// consuming it), window `window`; prints the rate and the client's CPU.
pub async fn drive(broker: &str, queue: &str, n: usize, window: usize) -> Result<()> {
    let admin = admin::connect(broker).await?;
    admin::wait_for_consumer(&admin, queue, Duration::from_secs(300), || Ok(())).await?;
    let app = App::builder()
        .broker_url(broker)
        .default_queue(queue)
        .connect()
        .await?;
    round_trips(window.min(n), window, None, false).await?;
    // Time to zero a profiler's counters (`callgrind_control -z`) after warm-up.
    if let Some(pause) = std::env::var("BENCH_DRIVE_PAUSE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        println!(
            "warmed up (pid {}); measuring in {pause} s",
            std::process::id()
        );
        tokio::time::sleep(Duration::from_secs_f64(pause)).await;
    }
    let cpu = sys::self_cpu_seconds();
    let rate = round_trips(n, window, None, false).await?;
    println!(
        "{n} round trips: {rate:.0} tasks/s, client CPU {:.3} s / 10k",
        per_10k(sys::self_cpu_seconds() - cpu, n)
    );
    app.close().await?;
    let _ = admin.close(200, "done".into()).await;
    Ok(())
}

/// Starts the example worker binary on `queue` and waits until it consumes.
pub async fn spawn_worker(
    cfg: &Config,
    admin: &lapin::Connection,
    queue: &str,
) -> Result<ChildProc> {
    spawn_worker_with(cfg, admin, queue, &[]).await
}

/// [`spawn_worker`] with `extra` arguments.
pub async fn spawn_worker_with(
    cfg: &Config,
    admin: &lapin::Connection,
    queue: &str,
    extra: &[&str],
) -> Result<ChildProc> {
    let mut worker = spawn_worker_unwaited_with(cfg, queue, extra)?;
    admin::wait_for_consumer(admin, queue, Duration::from_secs(30), || {
        worker.check_alive()
    })
    .await?;
    Ok(worker)
}

/// Starts the example worker binary on `queue`.
pub fn spawn_worker_unwaited(cfg: &Config, queue: &str) -> Result<ChildProc> {
    spawn_worker_unwaited_with(cfg, queue, &[])
}

fn spawn_worker_unwaited_with(cfg: &Config, queue: &str, extra: &[&str]) -> Result<ChildProc> {
    let mut command = Command::new(&cfg.worker_binary);
    command.args(extra);
    command
        .args([
            "-Q",
            queue,
            "-c",
            &cfg.concurrency.to_string(),
            "--loglevel",
            "warn",
        ])
        .env("BROKER_URL", &cfg.broker);
    ChildProc::spawn("example worker", command)
}

/// Where the worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    /// `target/release/examples/worker` as a child process.
    ChildProcess,
    /// `task_worker::Worker` on this process's runtime.
    InProcess,
}

/// One framework run.
pub async fn bench(cfg: &Config, kind: WorkerKind) -> Result<SideRun> {
    let mut out = SideRun::default();
    let admin = admin::connect(&cfg.broker).await?;
    let label = match kind {
        WorkerKind::ChildProcess => "fw",
        WorkerKind::InProcess => "fw-inproc",
    };

    // 1. `.delay()` alone, nobody consuming (the child-process run only: the
    //    client side does not depend on where the worker runs).
    if kind == WorkerKind::ChildProcess {
        let queue = admin::unique_queue(&format!("{label}-pub"), true);
        let app = client_app(cfg, &queue).await?;
        delay_only(cfg.warmup, cfg.window).await?;
        out.publish_rate = Some(delay_only(cfg.n, cfg.window).await?);
        app.close().await?;
        admin::delete(&admin, &queue, true).await?;
    }

    // 2. Round trips.
    let queue = admin::unique_queue(label, true);
    let mut child = None;
    let mut in_process = None;
    match kind {
        WorkerKind::ChildProcess => child = Some(spawn_worker(cfg, &admin, &queue).await?),
        WorkerKind::InProcess => {
            let worker = task_worker::Worker::builder()
                .broker_url(cfg.broker.clone())
                .queues([queue.clone()])
                .concurrency(cfg.concurrency)
                .build()
                .await?;
            let stop = worker.shutdown_handle();
            let running = tokio::spawn(worker.run());
            admin::wait_for_consumer(&admin, &queue, Duration::from_secs(30), || Ok(())).await?;
            in_process = Some((stop, running));
        }
    }
    let app = client_app(cfg, &queue).await?;
    round_trips(cfg.warmup, cfg.window, None, true).await?;
    let worker_cpu = |child: &Option<ChildProc>| child.as_ref().map(ChildProc::cpu_seconds);
    let (client_before, worker_before) = (sys::self_cpu_seconds(), worker_cpu(&child));
    let broker_before = sys::broker_cpu_seconds();
    let me = std::process::id();
    let switches = (
        sys::context_switches(me),
        child.as_ref().map(ChildProc::context_switches),
    );
    out.e2e_rate = Some(round_trips(cfg.n, cfg.window, None, true).await?);
    out.client_ctx_switches_per_task = per_task(switches.0, sys::context_switches(me), cfg.n);
    out.worker_ctx_switches_per_task = per_task(
        switches.1,
        child.as_ref().map(ChildProc::context_switches),
        cfg.n,
    );
    out.broker_cpu_s_per_10k = broker_per_10k(broker_before, cfg.n);
    out.client_cpu_s_per_10k = Some(per_10k(sys::self_cpu_seconds() - client_before, cfg.n));
    if let (Some(before), Some(after)) = (worker_before, worker_cpu(&child)) {
        out.worker_cpu_s_per_10k = Some(per_10k(after - before, cfg.n));
    }

    // 3. One at a time.
    sequential(cfg.seq_warmup()).await?;
    out.seq = Latency::of(&sequential(cfg.seq).await?);

    if let Some(worker) = child {
        out.worker_peak_rss_kib = worker.peak_rss_kib();
        worker.terminate(Duration::from_secs(10))?;
    }
    if let Some((stop, running)) = in_process {
        stop.cancel();
        running.await??;
        out.notes
            .push("client CPU includes the in-process worker".into());
    }
    app.close().await?;
    admin::delete(&admin, &queue, true).await?;
    let _ = admin.close(200, "done".into()).await;
    Ok(out)
}

/// Worker cost over a long run: CPU per 10,000 tasks, peak RSS, and RSS
/// sampled while it runs (to see whether it is flat after warm-up).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CostRun {
    pub tasks: usize,
    pub rate: f64,
    pub client_cpu_s_per_10k: f64,
    pub worker_cpu_s_per_10k: f64,
    pub worker_peak_rss_kib: Option<u64>,
    pub worker_rss_start_kib: Option<u64>,
    /// RSS once `warmup_fraction` of the tasks are done.
    pub worker_rss_after_warmup_kib: Option<u64>,
    pub worker_rss_end_kib: Option<u64>,
    pub growth_after_warmup_kib: Option<i64>,
    pub flat: Option<bool>,
    /// `(seconds, tasks done, RSS KiB)`.
    pub samples: Vec<(f64, u64, u64)>,
}

/// After this share of the tasks, RSS counts as warmed up.
pub const WARMUP_FRACTION: f64 = 0.2;

/// RSS growth after warm-up that still counts as flat: the larger of 1 MiB
/// and 5 % of the warmed-up RSS (allocator noise, not a per-task leak: a
/// leak of even 10 bytes per task is 1 MiB per 100,000 tasks).
pub fn flat_tolerance_kib(warm_kib: u64) -> u64 {
    (warm_kib / 20).max(1024)
}

fn seconds(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 100.0).round() / 100.0
}

pub async fn cost(cfg: &Config) -> Result<CostRun> {
    let admin = admin::connect(&cfg.broker).await?;
    let queue = admin::unique_queue("fw-cost", true);
    let worker = spawn_worker(cfg, &admin, &queue).await?;
    let app = client_app(cfg, &queue).await?;
    let pid = worker.pid();
    let rss_start = worker.rss_kib();
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
                    samples.push((seconds(start), done.load(Ordering::Relaxed), rss));
                }
                tokio::select! {
                    _ = stop.notified() => break,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            samples
        }
    });
    let (client_before, worker_before) = (sys::self_cpu_seconds(), worker.cpu_seconds());
    let rate = round_trips(cfg.cost_n, cfg.window, Some(&done), true).await?;
    let client_cpu = sys::self_cpu_seconds() - client_before;
    let worker_cpu = worker.cpu_seconds() - worker_before;
    let rss_end = worker.rss_kib();
    stop.notify_one();
    let mut samples = sampler.await?;
    if let Some(rss) = rss_end {
        samples.push((seconds(start), cfg.cost_n as u64, rss));
    }
    let peak = worker.peak_rss_kib();
    worker.terminate(Duration::from_secs(10))?;
    app.close().await?;
    admin::delete(&admin, &queue, true).await?;
    let _ = admin.close(200, "done".into()).await;

    let warm_at = (cfg.cost_n as f64 * WARMUP_FRACTION) as u64;
    let rss_warm = samples.iter().find(|s| s.1 >= warm_at).map(|s| s.2);
    let growth = match (rss_warm, rss_end) {
        (Some(warm), Some(end)) => Some(end as i64 - warm as i64),
        _ => None,
    };
    let flat = match (rss_warm, growth) {
        (Some(warm), Some(growth)) => Some(growth <= flat_tolerance_kib(warm) as i64),
        _ => None,
    };
    Ok(CostRun {
        tasks: cfg.cost_n,
        rate,
        client_cpu_s_per_10k: per_10k(client_cpu, cfg.cost_n),
        worker_cpu_s_per_10k: per_10k(worker_cpu, cfg.cost_n),
        worker_peak_rss_kib: peak,
        worker_rss_start_kib: rss_start,
        worker_rss_after_warmup_kib: rss_warm,
        worker_rss_end_kib: rss_end,
        growth_after_warmup_kib: growth,
        flat,
        samples,
    })
}
