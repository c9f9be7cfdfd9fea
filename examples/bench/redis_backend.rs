//! The Redis result backend (`--redis`, also in `--all`), against `rpc://`
//! and against Celery 5.7's Redis backend, in the same run:
//!
//! 1. Round trips: `tasks.add` via `add.delay(..)` and `.get()` with
//!    `--window` in flight, then one at a time, against the example worker
//!    binary (`-c`, `--result-backend rpc://` or `redis://...`), and the
//!    same through Celery (prefork `-c 2`, `rpc://` or `redis://...`, the
//!    client and worker of the `celery` section). Each side reports its
//!    client, worker, RabbitMQ and redis-server CPU per 10,000 tasks (the
//!    redis-server CPU of an `rpc://` side is whatever else used Redis
//!    meanwhile: the floor the Redis figures stand on).
//! 2. Awaited at once: `--await-n` (100,000) `tasks.add` published with
//!    the Redis backend while no worker runs, each handle subscribed and
//!    waiting; then the worker starts and they are all collected by one
//!    client. Reports the client's RSS (before publishing, once all are
//!    awaited, the peak, after collecting them), the time to collect them,
//!    and what Redis holds meanwhile (memory, pub/sub channels).
//!
//! Keys: task ids are uuids; every result key a side creates is deleted
//! when it ends (the framework sides by id from here, the Celery sides by
//! their Python client), and the workers store with a one hour expiry, so
//! a run killed halfway leaves nothing for long. Nothing else of the
//! shared Redis is touched.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures_util::stream::FuturesUnordered;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use task_core::App;
use task_examples::add;

use crate::child::ChildProc;
use crate::raw::{broker_per_10k, per_10k};
use crate::sys::{self, Latency};
use crate::{admin, celery, Config, SideRun};

/// The Redis the benchmark uses unless told otherwise.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// How long the workers of this section keep results (`--result-expires`,
/// Celery's `result_expires`): a safety net, every key is deleted anyway.
const EXPIRES_S: u64 = 3600;

const RESULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection of the benchmark's own to the Redis server (not the
/// backend's), to read its pid, memory and pub/sub counts and to delete
/// the keys a run created.
pub struct RedisAdmin {
    connection: redis::aio::MultiplexedConnection,
    /// The local redis-server process, when there is one.
    pub pid: Option<u32>,
}

impl RedisAdmin {
    pub async fn connect(url: &str) -> Result<Self> {
        let redacted = task_core::broker::redact(url);
        let client = redis::Client::open(url).with_context(|| format!("Redis URL {redacted}"))?;
        let connect = client.get_multiplexed_async_connection();
        let connection = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|c| Ok(c?))
            .with_context(|| format!("cannot connect to Redis at {redacted} (is it running?)"))?;
        let mut admin = Self {
            connection,
            pid: None,
        };
        let reported = admin.info_field("server", "process_id").await;
        admin.pid = redis_server_pid(reported.map(|pid| pid as u32));
        Ok(admin)
    }

    /// One numeric field of `INFO <section>`.
    async fn info_field(&mut self, section: &str, field: &str) -> Option<u64> {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.connection)
            .await
            .ok()?;
        info.lines().find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            value.trim().parse().ok()
        })
    }

    /// The server's CPU seconds so far (`None` if it does not run here).
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.pid.and_then(sys::process_cpu_seconds)
    }

    /// Memory and pub/sub channels as the server reports them.
    pub async fn state(&mut self) -> RedisState {
        RedisState {
            used_memory_bytes: self.info_field("memory", "used_memory").await,
            rss_kib: self.pid.and_then(|pid| sys::status_kib(pid, "VmRSS")),
            pubsub_channels: self.info_field("stats", "pubsub_channels").await,
        }
    }

    /// Deletes the result keys of these task ids.
    pub async fn delete_results(&mut self, ids: impl IntoIterator<Item = String>) -> Result<()> {
        let keys: Vec<String> = ids
            .into_iter()
            .map(|id| task_core::backend::redis::task_key(&id))
            .collect();
        for chunk in keys.chunks(1000) {
            let _deleted: u64 = redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut self.connection)
                .await
                .context("deleting the benchmark's result keys")?;
        }
        Ok(())
    }
}

/// The pid of the local redis-server: the one the server reports if it is
/// a redis-server process here, else the only redis-server process here.
fn redis_server_pid(reported: Option<u32>) -> Option<u32> {
    let is_redis = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "redis-server")
    };
    if let Some(pid) = reported.filter(|pid| is_redis(*pid)) {
        return Some(pid);
    }
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|pid| is_redis(*pid))
        .collect();
    match all[..] {
        [pid] => Some(pid),
        _ => None,
    }
}

/// What the Redis server holds at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RedisState {
    pub used_memory_bytes: Option<u64>,
    pub rss_kib: Option<u64>,
    pub pubsub_channels: Option<u64>,
}

/// The round trips of one run: four sides, each `None` when not measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundTrips {
    pub framework_rpc: Option<SideRun>,
    pub framework_redis: Option<SideRun>,
    pub celery_rpc: Option<SideRun>,
    pub celery_redis: Option<SideRun>,
    pub redis_server_local: bool,
}

/// The example worker binary on `queue` with this result backend.
pub fn spawn_worker(cfg: &Config, queue: &str, backend: &str) -> Result<ChildProc> {
    let mut command = Command::new(&cfg.worker_binary);
    command
        .args(["-Q", queue, "-c", &cfg.concurrency.to_string()])
        .args(["--loglevel", "warn", "--result-backend", backend])
        .args(["--result-expires", &EXPIRES_S.to_string()])
        .env("BROKER_URL", &cfg.broker);
    ChildProc::spawn("example worker", command)
}

/// A client app publishing to `queue` with this result backend, made the
/// default app so that `add.delay(..)` uses it.
async fn client_app(cfg: &Config, queue: &str, backend: &str) -> Result<App> {
    App::builder()
        .broker_url(cfg.broker.clone())
        .result_backend(backend)
        .default_queue(queue)
        .set_as_default(true)
        .connect()
        .await
        .with_context(|| {
            format!(
                "client app with result backend {}",
                task_core::broker::redact(backend)
            )
        })
}

/// `n` round trips, `window` in flight; each task id is pushed to `ids`.
async fn round_trips(n: usize, window: usize, ids: &Mutex<Vec<String>>) -> Result<f64> {
    let start = Instant::now();
    futures_util::stream::iter(0..n as i64)
        .map(|i| async move {
            let result = add.delay(i, 1).await?;
            ids.lock().unwrap().push(result.id().to_owned());
            let sum = result.get(RESULT_TIMEOUT).await?;
            ensure!(sum == i + 1, "tasks.add({i}, 1) returned {sum}");
            Ok(())
        })
        .buffer_unordered(window)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// One `.delay()` → `.get()` at a time.
async fn sequential(calls: usize, ids: &Mutex<Vec<String>>) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls as i64 {
        let start = Instant::now();
        let result = add.delay(i, 1).await?;
        let sum = result.get(RESULT_TIMEOUT).await?;
        samples.push(start.elapsed());
        ids.lock().unwrap().push(result.id().to_owned());
        ensure!(sum == i + 1, "tasks.add({i}, 1) returned {sum}");
    }
    Ok(samples)
}

/// One framework side: the example worker and a client, both on `backend`.
async fn framework_side(cfg: &Config, redis: &mut RedisAdmin, backend: &str) -> Result<SideRun> {
    let ids = Mutex::new(Vec::new());
    let outcome = framework_side_inner(cfg, redis, backend, &ids).await;
    // Whatever happened, the keys this side created go.
    let ids = ids.into_inner().unwrap();
    if !backend.starts_with("rpc") {
        redis.delete_results(ids).await?;
    }
    outcome
}

async fn framework_side_inner(
    cfg: &Config,
    redis: &RedisAdmin,
    backend: &str,
    ids: &Mutex<Vec<String>>,
) -> Result<SideRun> {
    let mut out = SideRun::default();
    let admin = admin::connect(&cfg.broker).await?;
    let label = if backend.starts_with("rpc") {
        "redis-sect-fw-rpc"
    } else {
        "redis-sect-fw-redis"
    };
    let queue = admin::unique_queue(label, true);
    let mut worker = spawn_worker(cfg, &queue, backend)?;
    admin::wait_for_consumer(&admin, &queue, Duration::from_secs(30), || {
        worker.check_alive()
    })
    .await?;
    let app = client_app(cfg, &queue, backend).await?;
    round_trips(cfg.warmup, cfg.window, ids).await?;
    let client_before = sys::self_cpu_seconds();
    let worker_before = worker.cpu_seconds();
    let broker_before = sys::broker_cpu_seconds();
    let redis_before = redis.cpu_seconds();
    out.e2e_rate = Some(round_trips(cfg.n, cfg.window, ids).await?);
    out.broker_cpu_s_per_10k = broker_per_10k(broker_before, cfg.n);
    out.redis_cpu_s_per_10k = redis
        .cpu_seconds()
        .zip(redis_before)
        .map(|(after, before)| per_10k(after - before, cfg.n));
    out.client_cpu_s_per_10k = Some(per_10k(sys::self_cpu_seconds() - client_before, cfg.n));
    out.worker_cpu_s_per_10k = Some(per_10k(worker.cpu_seconds() - worker_before, cfg.n));

    sequential(cfg.seq_warmup(), ids).await?;
    out.seq = Latency::of(&sequential(cfg.seq, ids).await?);
    out.worker_peak_rss_kib = worker.peak_rss_kib();
    worker.terminate(Duration::from_secs(10))?;
    app.close().await?;
    admin::delete(&admin, &queue, true).await?;
    let _ = admin.close(200, "done".into()).await;
    Ok(out)
}

/// The round trips of one run. Odd runs measure `rpc://` first, even runs
/// Redis first, so that a drift in the machine's load favours neither.
pub async fn round_trip_bench(
    cfg: &Config,
    python: Option<&std::path::Path>,
    rpc_first: bool,
) -> Result<RoundTrips> {
    let mut redis = RedisAdmin::connect(&cfg.redis_url).await?;
    let mut out = RoundTrips {
        redis_server_local: redis.pid.is_some(),
        ..RoundTrips::default()
    };
    let url = cfg.redis_url.as_str();
    let order: [Option<&str>; 2] = if rpc_first {
        [None, Some(url)]
    } else {
        [Some(url), None]
    };
    for backend in order {
        let side = framework_side(cfg, &mut redis, backend.unwrap_or("rpc://")).await?;
        match backend {
            None => out.framework_rpc = Some(side),
            Some(_) => out.framework_redis = Some(side),
        }
    }
    if let Some(python) = python {
        let admin = admin::connect(&cfg.broker).await?;
        for backend in order {
            let mut side = SideRun::default();
            let label = match backend {
                None => "redis-sect-celery-rpc",
                Some(_) => "redis-sect-celery-redis",
            };
            celery::round_trip_side(cfg, python, &admin, backend, redis.pid, label, &mut side)
                .await?;
            match backend {
                None => out.celery_rpc = Some(side),
                Some(_) => out.celery_redis = Some(side),
            }
        }
        let _ = admin.close(200, "done".into()).await;
    }
    Ok(out)
}

/// Many results awaited at once by one client, with the Redis backend
/// and, as a baseline, with `rpc://` (the same client and worker; the
/// client's memory that is not the backend's is in both).
#[derive(Debug, Clone, Serialize)]
pub struct AwaitRuns {
    pub redis: AwaitRun,
    pub rpc: AwaitRun,
}

/// Many results awaited at once by one client, on one backend.
#[derive(Debug, Clone, Serialize)]
pub struct AwaitRun {
    pub backend: &'static str,
    pub tasks: usize,
    /// Publishing them all (each subscribed before it is published).
    pub publish_s: f64,
    /// `(tasks published, seconds)` at each tenth of them.
    pub publish_progress: Vec<(u64, f64)>,
    /// From the worker's start to the last result received.
    pub collect_s: f64,
    pub collect_rate: f64,
    pub client_rss_before_kib: Option<u64>,
    /// Once all are published and awaited, before the worker starts.
    pub client_rss_awaiting_kib: Option<u64>,
    /// The peak over publishing and collecting (VmHWM, reset before
    /// publishing, and samples every 20 ms).
    pub client_rss_peak_kib: Option<u64>,
    /// Once all are collected and their handles dropped.
    pub client_rss_after_kib: Option<u64>,
    /// The same once the allocator returned its free memory to the system
    /// (`malloc_trim`): what is still allocated, not kept for reuse.
    pub client_rss_after_trim_kib: Option<u64>,
    /// Whether the kernel let the benchmark reset its VmHWM (else the
    /// peak is the sampled one only).
    pub peak_reset: bool,
    /// Results the client still waited for at the end (0 expected).
    pub still_awaited_after: usize,
    pub redis_before: RedisState,
    pub redis_awaiting: RedisState,
    pub redis_after: RedisState,
    /// Over the collection.
    pub client_cpu_s_per_10k: f64,
    pub worker_cpu_s_per_10k: f64,
    pub broker_cpu_s_per_10k: Option<f64>,
    pub redis_cpu_s_per_10k: Option<f64>,
}

/// The ids of the awaited tasks: uuids counted up from a random base, so
/// that they need not be kept in memory (where they would count in the
/// client's RSS) to delete their keys afterwards.
fn await_id(base: u128, i: usize) -> String {
    uuid::Uuid::from_u128(base.wrapping_add(i as u128))
        .hyphenated()
        .to_string()
}

/// Both backends, Redis first when `redis_first` (alternated between runs:
/// the second starts with whatever the allocator kept of the first, as
/// little as possible after `malloc_trim`).
pub async fn await_bench(cfg: &Config, redis_first: bool) -> Result<AwaitRuns> {
    let mut redis = RedisAdmin::connect(&cfg.redis_url).await?;
    let (mut on_redis, mut on_rpc) = (None, None);
    for use_redis in [redis_first, !redis_first] {
        if use_redis {
            let base = uuid::Uuid::new_v4().as_u128() & !u128::from(u32::MAX);
            let outcome = await_inner(cfg, &mut redis, Some(base)).await;
            redis
                .delete_results((0..cfg.await_n).map(|i| await_id(base, i)))
                .await?;
            on_redis = Some(outcome?);
        } else {
            on_rpc = Some(await_inner(cfg, &mut redis, None).await?);
        }
    }
    Ok(AwaitRuns {
        redis: on_redis.context("the Redis run did not run")?,
        rpc: on_rpc.context("the rpc:// run did not run")?,
    })
}

/// Returns free heap memory to the system, where the allocator can.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One backend: Redis (ids counted from `base`) or `rpc://` (`None`).
async fn await_inner(cfg: &Config, redis: &mut RedisAdmin, base: Option<u128>) -> Result<AwaitRun> {
    let n = cfg.await_n;
    let (backend, label, url) = match base {
        Some(_) => ("redis", "redis-sect-await-redis", cfg.redis_url.as_str()),
        None => ("rpc", "redis-sect-await-rpc", "rpc://"),
    };
    let admin = admin::connect(&cfg.broker).await?;
    let queue = admin::unique_queue(label, true);
    let app = client_app(cfg, &queue, url).await?;
    app.ensure_queue(&queue).await?;
    let me = std::process::id();
    let rss = || sys::status_kib(me, "VmRSS");
    let redis_before = redis.state().await;
    trim_heap();
    let client_rss_before = rss();
    let peak_reset = sys::reset_peak_rss();
    let peak = Arc::new(AtomicU64::new(client_rss_before.unwrap_or(0)));
    let stop = Arc::new(tokio::sync::Notify::new());
    let sampler = tokio::spawn({
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        async move {
            loop {
                if let Some(now) = sys::status_kib(me, "VmRSS") {
                    peak.fetch_max(now, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = stop.notified() => break,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
    });

    // Publish them all, nobody consuming: each handle is subscribed. The
    // time at each tenth tells whether publishing slows down as more
    // results are awaited.
    let started = Instant::now();
    let published = AtomicU64::new(0);
    let tenth = (n / 10).max(1) as u64;
    let progress = Mutex::new(Vec::new());
    let handles: Vec<(i64, task_core::AsyncResult<i64>)> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (published, progress) = (&published, &progress);
            async move {
                let call = add.s(i as i64, 1);
                let call = match base {
                    Some(base) => call.task_id(await_id(base, i)),
                    None => call,
                };
                let handle = call.apply_async().await?;
                let count = published.fetch_add(1, Ordering::Relaxed) + 1;
                if count % tenth == 0 {
                    let at = started.elapsed().as_secs_f64();
                    progress.lock().unwrap().push((count, at));
                }
                anyhow::Ok((i as i64, handle))
            }
        })
        .buffer_unordered(cfg.window)
        .try_collect()
        .await?;
    let publish_s = started.elapsed().as_secs_f64();
    let publish_progress = progress.into_inner().unwrap();
    let client_rss_awaiting = rss();
    let redis_awaiting = redis.state().await;

    // The worker starts; every result is awaited at once.
    let timeout = Duration::from_secs(120).max(Duration::from_millis(10 * n as u64));
    let (client_before, broker_before, redis_cpu_before) = (
        sys::self_cpu_seconds(),
        sys::broker_cpu_seconds(),
        redis.cpu_seconds(),
    );
    let started = Instant::now();
    let worker = spawn_worker(cfg, &queue, url)?;
    let mut waiting: FuturesUnordered<_> = handles
        .into_iter()
        .map(|(i, handle)| async move {
            let sum = handle.get(timeout).await?;
            ensure!(sum == i + 1, "tasks.add({i}, 1) returned {sum}");
            Ok(())
        })
        .collect();
    while let Some(done) = waiting.next().await {
        done?;
    }
    drop(waiting);
    let collect_s = started.elapsed().as_secs_f64();
    let worker_cpu = worker.cpu_seconds();
    let client_cpu = sys::self_cpu_seconds() - client_before;
    let broker_cpu = broker_per_10k(broker_before, n);
    let redis_cpu = redis
        .cpu_seconds()
        .zip(redis_cpu_before)
        .map(|(after, before)| per_10k(after - before, n));
    // Unsubscribing is asynchronous (the backend's control task).
    let still_awaited_after = app.pending_results();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client_rss_after = rss();
    trim_heap();
    let client_rss_after_trim = rss();
    stop.notify_one();
    sampler.await?;
    let hwm = if peak_reset {
        sys::status_kib(me, "VmHWM")
    } else {
        None
    };
    let sampled = Some(peak.load(Ordering::Relaxed)).filter(|k| *k > 0);
    let client_rss_peak = hwm.max(sampled);
    let redis_after = redis.state().await;
    worker.terminate(Duration::from_secs(10))?;
    app.close().await?;
    admin::delete(&admin, &queue, true).await?;
    let _ = admin.close(200, "done".into()).await;
    Ok(AwaitRun {
        backend,
        tasks: n,
        publish_s,
        publish_progress,
        collect_s,
        collect_rate: n as f64 / collect_s,
        client_rss_before_kib: client_rss_before,
        client_rss_awaiting_kib: client_rss_awaiting,
        client_rss_peak_kib: client_rss_peak,
        client_rss_after_kib: client_rss_after,
        client_rss_after_trim_kib: client_rss_after_trim,
        peak_reset,
        still_awaited_after,
        redis_before,
        redis_awaiting,
        redis_after,
        client_cpu_s_per_10k: per_10k(client_cpu, n),
        worker_cpu_s_per_10k: per_10k(worker_cpu, n),
        broker_cpu_s_per_10k: broker_cpu,
        redis_cpu_s_per_10k: redis_cpu,
    })
}
