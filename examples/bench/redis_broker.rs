//! The Redis broker (`--only redis_broker`, also in `--all` and, smaller,
//! in `--quick`): this framework with Redis as its broker against the same
//! framework on RabbitMQ, and against Celery 5.7 on the same Redis, in the
//! same run, the order alternating between runs (Redis first in odd runs).
//!
//! Each side runs `tasks.add` round trips as in the `framework` section:
//! `add.delay(..)` and `.get()` with `--window` in flight (tasks per
//! second), then one at a time (p50, p99), against a worker in a child
//! process; `--redis-broker-n` / `--redis-broker-seq` of them on the
//! framework sides (default `--n` / `--seq`; `--quick`: 1,000 / 100, so
//! that the section takes seconds):
//!
//! - `fw RabbitMQ`: the example worker binary (`-Q <queue> -c <n>
//!   --loglevel warn --broker amqp://...`) and a client app on RabbitMQ;
//! - `fw Redis`: the same binary and client with `--broker
//!   redis://...?global_keyprefix=<prefix>` (kombu's transport options in
//!   the URL's query, as the Rust broker reads them);
//! - `Celery Redis`: the `celery` section's prefork worker (`-c 2`) and
//!   Python client with `broker_url='redis://...'` and the same prefix in
//!   `broker_transport_options` (`celery_bench.py` takes it from the URL);
//!   `--celery-n` / `--celery-seq` round trips (Celery is slower);
//! - not with `--quick`: `Celery RabbitMQ`, the `celery` section's side on
//!   RabbitMQ, so that what Redis costs Celery sits beside what it costs
//!   this framework.
//!
//! Results go back through `rpc://` on every side: the caller's reply queue
//! on the broker under test (a reply list on Redis, kombu's layout; a reply
//! queue on RabbitMQ). It is the pairing where the broker is the only
//! thing that differs: every message of a round trip (task and result)
//! crosses the broker measured, and Celery uses the same result backend
//! kind on the same broker. (The Redis result backend on top of a Redis
//! broker would make Redis carry the results twice over, by pub/sub and by
//! key, and on the RabbitMQ side it would mix the two servers.)
//!
//! Where the time goes: CPU seconds per 10,000 tasks over the pipelined
//! round trips of the client (this process; Celery's client reports its
//! own), the worker (process tree: a prefork pool counts), RabbitMQ's
//! Erlang VM (`/proc/<pid>/stat`) and the redis-server: its own count,
//! `used_cpu_sys + used_cpu_user` of `INFO cpu` before and after, divided
//! by the tasks (so a remote server is measured too; the `Celery RMQ`
//! side, the `celery` section's code, reads a local server's
//! `/proc/<pid>/stat`, the same kernel count). Both servers are read on
//! every side: the server a side does not use shows what other clients
//! made it do meanwhile (the floor under the other side's figure; on a
//! shared Redis, other clients' commands are in every figure).
//!
//! Keys: each Redis side has a `global_keyprefix` of its own
//! (`bench.redis_broker.<side>.<uuid>.`); once the side ends, whatever
//! happened, every key under it is deleted (`SCAN MATCH <prefix>*` and
//! `DEL`) and what is left counted (0 expected); a side that left no key
//! there did not use its prefix, an error. At the end of each run, keys
//! naming the section's queues (`*bench.redis_broker.*`) outside any
//! prefix are counted and deleted (0 expected). RabbitMQ queues are named
//! `bench.redis-broker-*.<uuid>` and deleted as in the other sections.

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;
use task_core::App;
use task_examples::add;

use crate::child::ChildProc;
use crate::raw::{broker_per_10k, per_10k, per_task};
use crate::redis_backend::RedisAdmin;
use crate::sys::{self, Latency};
use crate::{admin, celery, framework, Config, SideRun};

const RESULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a worker may take to answer its first task.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The result backend of every side (see the module docs).
pub const RESULT_BACKEND: &str = "rpc://";

/// One run of the section.
#[derive(Debug, Clone, Serialize)]
pub struct RedisBrokerRun {
    /// Whether the Redis sides ran first in this run.
    pub redis_first: bool,
    pub result_backend: &'static str,
    /// Pipelined round trips of the framework sides, `window` in flight.
    pub n: usize,
    pub window: usize,
    /// One-at-a-time round trips of the framework sides.
    pub seq: usize,
    /// The same for the Celery sides.
    pub celery_n: usize,
    pub celery_seq: usize,
    /// Whether the redis-server runs on this machine (competing for its
    /// CPUs); its CPU is read from `INFO cpu` either way.
    pub redis_server_local: bool,
    pub framework_redis: SideRun,
    pub framework_rabbitmq: SideRun,
    /// `None` when Python Celery is not available.
    pub celery_redis: Option<SideRun>,
    /// Not with `--quick`, nor without Python Celery.
    pub celery_rabbitmq: Option<SideRun>,
    /// Keys deleted under the Redis sides' prefixes at their ends.
    pub redis_keys_deleted: usize,
    /// Keys still there under those prefixes after the deletion (0 expected).
    pub redis_keys_left: usize,
    /// Keys naming the section's queues outside any side's prefix, found
    /// (and deleted) at the end of the run: a prefix not applied (0
    /// expected).
    pub redis_keys_stray: usize,
}

/// The sides of a run, as the table shows them.
const SIDES: [(&str, &str); 4] = [
    ("framework_rabbitmq", "fw RabbitMQ"),
    ("framework_redis", "fw Redis"),
    ("celery_redis", "Celery Redis"),
    ("celery_rabbitmq", "Celery RMQ"),
];

impl RedisBrokerRun {
    fn side(&self, key: &str) -> Option<&SideRun> {
        match key {
            "framework_rabbitmq" => Some(&self.framework_rabbitmq),
            "framework_redis" => Some(&self.framework_redis),
            "celery_redis" => self.celery_redis.as_ref(),
            "celery_rabbitmq" => self.celery_rabbitmq.as_ref(),
            _ => None,
        }
    }

    /// The ratios this run contributes (`redis_broker:` keys).
    pub fn ratios(&self) -> Vec<(&'static str, f64)> {
        let (redis, rabbitmq) = (Some(&self.framework_redis), Some(&self.framework_rabbitmq));
        let (py_redis, py_rabbitmq) = (self.celery_redis.as_ref(), self.celery_rabbitmq.as_ref());
        let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        let e2e = |s: Option<&SideRun>| s.and_then(|s| s.e2e_rate);
        let p50 = |s: Option<&SideRun>| s.and_then(|s| s.seq).map(|l| l.p50_ms);
        let p99 = |s: Option<&SideRun>| s.and_then(|s| s.seq).map(|l| l.p99_ms);
        let client = |s: Option<&SideRun>| s.and_then(|s| s.client_cpu_s_per_10k);
        let worker = |s: Option<&SideRun>| s.and_then(|s| s.worker_cpu_s_per_10k);
        let rabbitmq_cpu = |s: Option<&SideRun>| s.and_then(|s| s.broker_cpu_s_per_10k);
        let redis_cpu = |s: Option<&SideRun>| s.and_then(|s| s.redis_cpu_s_per_10k);
        let candidates = [
            (
                "redis_broker:fw_e2e_redis_over_rabbitmq",
                div(e2e(redis), e2e(rabbitmq)),
            ),
            (
                "redis_broker:fw_p50_redis_over_rabbitmq",
                div(p50(redis), p50(rabbitmq)),
            ),
            (
                "redis_broker:fw_p99_redis_over_rabbitmq",
                div(p99(redis), p99(rabbitmq)),
            ),
            (
                "redis_broker:fw_client_cpu_redis_over_rabbitmq",
                div(client(redis), client(rabbitmq)),
            ),
            (
                "redis_broker:fw_worker_cpu_redis_over_rabbitmq",
                div(worker(redis), worker(rabbitmq)),
            ),
            // The server each side uses: redis-server against RabbitMQ.
            (
                "redis_broker:fw_server_cpu_redis_over_rabbitmq",
                div(redis_cpu(redis), rabbitmq_cpu(rabbitmq)),
            ),
            (
                "redis_broker:fw_all_cpu_redis_over_rabbitmq",
                div(all_cpu(redis, true), all_cpu(rabbitmq, false)),
            ),
            (
                "redis_broker:fw_redis_e2e_over_celery_redis_e2e",
                div(e2e(redis), e2e(py_redis)),
            ),
            (
                "redis_broker:fw_redis_p50_over_celery_redis_p50",
                div(p50(redis), p50(py_redis)),
            ),
            (
                "redis_broker:fw_redis_p99_over_celery_redis_p99",
                div(p99(redis), p99(py_redis)),
            ),
            (
                "redis_broker:fw_redis_server_cpu_over_celery_redis_server_cpu",
                div(redis_cpu(redis), redis_cpu(py_redis)),
            ),
            (
                "redis_broker:fw_redis_all_cpu_over_celery_redis_all_cpu",
                div(all_cpu(redis, true), all_cpu(py_redis, true)),
            ),
            (
                "redis_broker:celery_e2e_redis_over_rabbitmq",
                div(e2e(py_redis), e2e(py_rabbitmq)),
            ),
        ];
        candidates
            .into_iter()
            .filter_map(|(key, value)| Some((key, value.filter(|v| v.is_finite())?)))
            .collect()
    }
}

/// Client + worker + the server the side uses (redis-server or RabbitMQ),
/// CPU seconds per 10,000 tasks.
fn all_cpu(side: Option<&SideRun>, on_redis: bool) -> Option<f64> {
    let side = side?;
    let server = if on_redis {
        side.redis_cpu_s_per_10k?
    } else {
        side.broker_cpu_s_per_10k?
    };
    Some(side.client_cpu_s_per_10k? + side.worker_cpu_s_per_10k? + server)
}

/// The redis-server's own CPU count: `used_cpu_sys + used_cpu_user` of
/// `INFO cpu` (the server's `getrusage`), on a connection of the section's
/// own.
struct RedisCpu {
    connection: redis::aio::MultiplexedConnection,
}

impl RedisCpu {
    async fn connect(redis_url: &str) -> Result<Self> {
        let client = redis::Client::open(redis_url).context("Redis URL")?;
        let connection = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .context("timed out connecting to Redis")?
        .context("connecting to Redis to read its CPU")?;
        Ok(Self { connection })
    }

    /// The server's CPU seconds so far (system + user).
    async fn seconds(&self) -> Result<f64> {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut self.connection.clone())
            .await
            .context("INFO cpu")?;
        let field = |name: &str| -> Result<f64> {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .with_context(|| format!("INFO cpu has no {name}: {info:?}"))?
                .trim()
                .parse()
                .with_context(|| format!("INFO cpu: {name}"))
        };
        Ok(field("used_cpu_sys")? + field("used_cpu_user")?)
    }
}

/// The keys of one Redis side: a `global_keyprefix` of its own.
struct KeySpace {
    prefix: String,
}

impl KeySpace {
    fn new(label: &str) -> Self {
        Self {
            prefix: format!(
                "{PREFIX_ROOT}{label}.{}.",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
        }
    }

    /// `redis_url` with this prefix as kombu's transport option.
    fn broker_url(&self, redis_url: &str) -> String {
        let separator = if redis_url.contains('?') { '&' } else { '?' };
        format!("{redis_url}{separator}global_keyprefix={}", self.prefix)
    }

    /// Deletes every key under the prefix: `(deleted, left)`.
    async fn delete(&self, redis_url: &str) -> Result<(usize, usize)> {
        let client = redis::Client::open(redis_url).context("Redis URL")?;
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .context("connecting to Redis to delete the section's keys")?;
        // The prefix is `[a-z0-9._]`: no glob characters to escape.
        let pattern = format!("{}*", self.prefix);
        let mut deleted = 0;
        let keys = scan(&mut connection, &pattern).await?;
        for chunk in keys.chunks(500) {
            let count: usize = redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut connection)
                .await
                .context("deleting the section's keys")?;
            deleted += count;
        }
        let left = scan(&mut connection, &pattern).await?.len();
        Ok((deleted, left))
    }
}

/// Every key matching `pattern` (SCAN, so the server is never blocked).
async fn scan(
    connection: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await
            .context("SCAN")?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Key counts of the Redis sides of a run.
#[derive(Default)]
struct Keys {
    deleted: usize,
    left: usize,
}

impl Keys {
    /// Deletes `space`'s keys at the end of a side whose `outcome` this
    /// is: a side that ran but left no key under its prefix did not use it
    /// (kombu's binding set of its queue stays until the queue is deleted).
    async fn end_of_side(
        &mut self,
        space: &KeySpace,
        redis_url: &str,
        outcome: Result<SideRun>,
    ) -> Result<SideRun> {
        let (deleted, left) = space.delete(redis_url).await?;
        self.deleted += deleted;
        self.left += left;
        let side = outcome?;
        ensure!(
            deleted > 0,
            "no key under {}: the side did not use its key prefix",
            space.prefix
        );
        Ok(side)
    }
}

/// The queue names of the Redis sides all start with this; their keys
/// under a side's prefix read `<PREFIX_ROOT><label>.<12 hex digits>.`.
const PREFIX_ROOT: &str = "bench.redis_broker.";

/// Keys naming the section's queues that are under no side's prefix (the
/// prefixes of this process's sides are deleted by then; those of another
/// process running the section at once are recognised by their shape),
/// deleted: how many there were.
async fn delete_stray_keys(redis_url: &str) -> Result<usize> {
    let client = redis::Client::open(redis_url).context("Redis URL")?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis to look for stray keys")?;
    let under_a_prefix = |key: &[u8]| {
        let Some(rest) = key.strip_prefix(PREFIX_ROOT.as_bytes()) else {
            return false;
        };
        let mut parts = rest.splitn(3, |b| *b == b'.');
        let (label, id, tail) = (parts.next(), parts.next(), parts.next());
        label.is_some_and(|l| !l.is_empty())
            && id.is_some_and(|id| id.len() == 12 && id.iter().all(u8::is_ascii_hexdigit))
            && tail.is_some()
    };
    let stray: Vec<Vec<u8>> = scan(&mut connection, &format!("*{PREFIX_ROOT}*"))
        .await?
        .into_iter()
        .filter(|key| !under_a_prefix(key))
        .collect();
    for key in &stray {
        eprintln!(
            "  redis_broker: stray key outside the sides' prefixes: {}",
            String::from_utf8_lossy(key)
        );
    }
    for chunk in stray.chunks(500) {
        let _: usize = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut connection)
            .await
            .context("deleting stray keys")?;
    }
    Ok(stray.len())
}

/// Run `k` of the section.
pub async fn bench(cfg: &Config, python: Option<&Path>, k: usize) -> Result<RedisBrokerRun> {
    let redis_first = !k.is_multiple_of(2);
    let redis = RedisAdmin::connect(&cfg.redis_url).await?;
    let cpu = RedisCpu::connect(&cfg.redis_url).await?;
    let mut keys = Keys::default();
    let order = if redis_first {
        [true, false]
    } else {
        [false, true]
    };
    let (mut fw_redis, mut fw_rabbitmq) = (None, None);
    for on_redis in order {
        if on_redis {
            fw_redis = Some(
                framework_redis(cfg, &cpu, &mut keys)
                    .await
                    .context("framework on Redis")?,
            );
        } else {
            fw_rabbitmq = Some(
                framework_rabbitmq(cfg, &cpu)
                    .await
                    .context("framework on RabbitMQ")?,
            );
        }
    }
    let (mut py_redis, mut py_rabbitmq) = (None, None);
    if let Some(python) = python {
        for on_redis in order {
            if on_redis {
                py_redis = Some(
                    celery_redis(cfg, python, &cpu, &mut keys)
                        .await
                        .context("Celery on Redis")?,
                );
            } else if !cfg.quick {
                py_rabbitmq = Some(
                    celery_rabbitmq(cfg, python, &redis)
                        .await
                        .context("Celery on RabbitMQ")?,
                );
            }
        }
    }
    Ok(RedisBrokerRun {
        redis_first,
        result_backend: RESULT_BACKEND,
        n: cfg.redis_broker_n,
        window: cfg.window,
        seq: cfg.redis_broker_seq,
        celery_n: cfg.celery_n,
        celery_seq: cfg.celery_seq,
        redis_server_local: redis.pid.is_some(),
        framework_redis: fw_redis.context("the Redis side did not run")?,
        framework_rabbitmq: fw_rabbitmq.context("the RabbitMQ side did not run")?,
        celery_redis: py_redis,
        celery_rabbitmq: py_rabbitmq,
        redis_keys_deleted: keys.deleted,
        redis_keys_left: keys.left,
        redis_keys_stray: delete_stray_keys(&cfg.redis_url).await?,
    })
}

/// The example worker binary on `queue` of the broker at `broker_url`.
fn spawn_worker(cfg: &Config, broker_url: &str, queue: &str) -> Result<ChildProc> {
    let mut command = Command::new(&cfg.worker_binary);
    command
        .args(["-Q", queue, "-c", &cfg.concurrency.to_string()])
        .args(["--loglevel", "warn", "--result-backend", RESULT_BACKEND])
        .args(["--broker", broker_url])
        .env("BROKER_URL", broker_url);
    ChildProc::spawn("example worker", command)
}

/// `future`, failing early if `worker` exits meanwhile.
async fn while_alive<T>(
    worker: &mut ChildProc,
    future: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(future);
    loop {
        tokio::select! {
            out = &mut future => return out,
            _ = tokio::time::sleep(Duration::from_millis(100)) => worker.check_alive()?,
        }
    }
}

/// One round trip that the worker answers once it consumes: on Redis
/// nothing tells that a queue has a consumer (RabbitMQ's consumer count).
async fn first_round_trip(worker: &mut ChildProc) -> Result<()> {
    while_alive(worker, async {
        let sum = add.delay(1, 1).await?.get(READY_TIMEOUT).await?;
        ensure!(sum == 2, "tasks.add(1, 1) returned {sum}");
        Ok(())
    })
    .await
    .context("the worker's first task")
}

/// One `.delay()` → `.get()` at a time (on the default app).
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

/// The framework on Redis: its own key prefix, deleted at the end.
async fn framework_redis(cfg: &Config, redis: &RedisCpu, keys: &mut Keys) -> Result<SideRun> {
    let space = KeySpace::new("fw");
    let url = space.broker_url(&cfg.redis_url);
    let queue = format!("{PREFIX_ROOT}fw");
    let outcome = framework_side(cfg, redis, &url, &queue, None).await;
    keys.end_of_side(&space, &cfg.redis_url, outcome).await
}

/// The framework on RabbitMQ: a queue of its own, deleted at the end.
async fn framework_rabbitmq(cfg: &Config, redis: &RedisCpu) -> Result<SideRun> {
    let admin = admin::connect(&cfg.broker).await?;
    let queue = admin::unique_queue("redis-broker-fw", true);
    let outcome = framework_side(cfg, redis, &cfg.broker, &queue, Some(&admin)).await;
    let deleted = admin::delete(&admin, &queue, true).await;
    let _ = admin.close(200, "done".into()).await;
    let side = outcome?;
    deleted?;
    Ok(side)
}

/// The example worker and a client app on `broker_url` (`admin`: the
/// RabbitMQ connection to wait for the worker's consumer with).
async fn framework_side(
    cfg: &Config,
    redis: &RedisCpu,
    broker_url: &str,
    queue: &str,
    admin: Option<&lapin::Connection>,
) -> Result<SideRun> {
    let mut out = SideRun::default();
    let mut worker = spawn_worker(cfg, broker_url, queue)?;
    if let Some(admin) = admin {
        admin::wait_for_consumer(admin, queue, Duration::from_secs(30), || {
            worker.check_alive()
        })
        .await?;
    }
    let app = App::builder()
        .broker_url(broker_url)
        .result_backend(RESULT_BACKEND)
        .default_queue(queue)
        .set_as_default(true)
        .connect()
        .await
        .with_context(|| format!("client app on {}", task_core::broker::redact(broker_url)))?;
    first_round_trip(&mut worker).await?;
    while_alive(
        &mut worker,
        framework::round_trips(cfg.warmup, cfg.window, None, true),
    )
    .await?;

    let me = std::process::id();
    let client_before = sys::self_cpu_seconds();
    let worker_before = worker.cpu_seconds();
    let broker_before = sys::broker_cpu_seconds();
    let redis_before = redis.seconds().await?;
    let switches = (sys::context_switches(me), worker.context_switches());
    let n = cfg.redis_broker_n;
    out.e2e_rate = Some(
        while_alive(
            &mut worker,
            framework::round_trips(n, cfg.window, None, true),
        )
        .await?,
    );
    out.client_cpu_s_per_10k = Some(per_10k(sys::self_cpu_seconds() - client_before, n));
    out.worker_cpu_s_per_10k = Some(per_10k(worker.cpu_seconds() - worker_before, n));
    out.broker_cpu_s_per_10k = broker_per_10k(broker_before, n);
    out.redis_cpu_s_per_10k = Some(per_10k(redis.seconds().await? - redis_before, n));
    out.client_ctx_switches_per_task = per_task(switches.0, sys::context_switches(me), n);
    out.worker_ctx_switches_per_task =
        per_task(Some(switches.1), Some(worker.context_switches()), n);

    let seq_warmup = (cfg.redis_broker_seq / 10).clamp(20, 200);
    while_alive(&mut worker, sequential(seq_warmup)).await?;
    out.seq = Latency::of(&while_alive(&mut worker, sequential(cfg.redis_broker_seq)).await?);
    out.worker_peak_rss_kib = worker.peak_rss_kib();
    stop(worker, Duration::from_secs(10), &mut out)?;
    app.close().await?;
    Ok(out)
}

/// Celery on Redis: its own key prefix, deleted at the end.
async fn celery_redis(
    cfg: &Config,
    python: &Path,
    redis: &RedisCpu,
    keys: &mut Keys,
) -> Result<SideRun> {
    let space = KeySpace::new("celery");
    // The Celery worker and client take their broker from the config.
    let on_redis = Config {
        broker: space.broker_url(&cfg.redis_url),
        ..cfg.clone()
    };
    let queue = format!("{PREFIX_ROOT}celery");
    let outcome = celery_redis_side(&on_redis, python, redis, &queue).await;
    keys.end_of_side(&space, &cfg.redis_url, outcome).await
}

/// Round trips through Celery's prefork worker on Redis (`cfg.broker` is
/// the Redis URL), as `celery::round_trip_side` does on RabbitMQ.
async fn celery_redis_side(
    cfg: &Config,
    python: &Path,
    redis: &RedisCpu,
    queue: &str,
) -> Result<SideRun> {
    let mut out = SideRun::default();
    let (n, seq) = (cfg.celery_n, cfg.celery_seq);
    let mut worker = celery::spawn_worker(cfg, python, queue, None)?;
    let window = cfg.window.to_string();
    // The warm-up also waits for the worker: its first tasks wait in Redis.
    let warm = [
        "warm".to_owned(),
        cfg.warmup.min(n).to_string(),
        window.clone(),
    ];
    while_alive(&mut worker, celery::client(cfg, python, queue, None, &warm)).await?;

    let worker_before = worker.cpu_seconds();
    let broker_before = sys::broker_cpu_seconds();
    let redis_before = redis.seconds().await?;
    let switches = worker.context_switches();
    let e2e_args = ["e2e".to_owned(), n.to_string(), window];
    let e2e = while_alive(
        &mut worker,
        celery::client(cfg, python, queue, None, &e2e_args),
    )
    .await?;
    out.worker_cpu_s_per_10k = Some(per_10k(worker.cpu_seconds() - worker_before, n));
    out.broker_cpu_s_per_10k = broker_per_10k(broker_before, n);
    out.redis_cpu_s_per_10k = Some(per_10k(redis.seconds().await? - redis_before, n));
    out.worker_ctx_switches_per_task = per_task(Some(switches), Some(worker.context_switches()), n);
    out.e2e_rate = Some(n as f64 / celery::number(&e2e, "seconds")?);
    out.client_cpu_s_per_10k = Some(per_10k(celery::number(&e2e, "cpu_seconds")?, n));

    // One at a time (the client warms up with 20 calls first).
    let seq_args = ["seq".to_owned(), (seq + 20).to_string()];
    let timed = while_alive(
        &mut worker,
        celery::client(cfg, python, queue, None, &seq_args),
    )
    .await?;
    let mut ms: Vec<f64> = timed["latencies_ms"]
        .as_array()
        .context("no latencies")?
        .iter()
        .skip(20)
        .filter_map(Value::as_f64)
        .collect();
    out.seq = Latency::of_ms(&mut ms);
    out.worker_peak_rss_kib = worker.peak_rss_kib();
    out.notes.push(
        "Celery on Redis: kombu 5.7's Redis transport, rpc:// replies on Redis, prefork -c 2, \
         prefetch multiplier 4; worker CPU and RSS are the main process plus its pool"
            .into(),
    );
    stop(worker, Duration::from_secs(15), &mut out)?;
    Ok(out)
}

/// SIGTERM to `worker`, SIGKILL after `grace`; a kill is noted in `out`
/// (the worker's shutdown is not timed, but should not hang).
fn stop(worker: ChildProc, grace: Duration, out: &mut SideRun) -> Result<()> {
    let started = Instant::now();
    worker.terminate(grace)?;
    if started.elapsed() >= grace {
        out.notes.push(format!(
            "the worker did not stop within {grace:?} of SIGTERM: killed"
        ));
    }
    Ok(())
}

/// Celery on RabbitMQ: the `celery` section's round trips, with the
/// redis-server's CPU read too (the floor).
async fn celery_rabbitmq(cfg: &Config, python: &Path, redis: &RedisAdmin) -> Result<SideRun> {
    let admin = admin::connect(&cfg.broker).await?;
    let mut side = SideRun::default();
    let outcome = celery::round_trip_side(
        cfg,
        python,
        &admin,
        None,
        redis.pid,
        "redis-broker-celery",
        &mut side,
    )
    .await;
    let _ = admin.close(200, "done".into()).await;
    outcome?;
    Ok(side)
}

type Field = fn(&SideRun) -> Option<f64>;

/// Prints the section's medians: one column per side, then the medians of
/// the per-run ratios.
pub fn print(runs: &[RedisBrokerRun]) {
    let Some(first) = runs.first() else { return };
    let sides: Vec<(&str, &str)> = SIDES
        .iter()
        .copied()
        .filter(|(key, _)| runs.iter().any(|r| r.side(key).is_some()))
        .collect();
    let celery = if first.celery_redis.is_some() {
        format!(
            ", Celery {} ({} one at a time)",
            first.celery_n, first.celery_seq
        )
    } else {
        ", no Celery".to_owned()
    };
    println!(
        "\nRedis broker: the framework on Redis against the framework on RabbitMQ and Celery 5.7 \
         on Redis, {} run(s), medians; results over {} on each side's own broker; {} round trips \
         with {} in flight, {} one at a time{celery}; CPU from /proc, the redis-server's from \
         INFO cpu",
        runs.len(),
        first.result_backend,
        first.n,
        first.window,
        first.seq,
    );
    // `None` as the field: client + worker + the side's own server.
    let rows: [(&str, usize, Option<Field>); 12] = [
        ("round trips /s (pipelined)", 0, Some(|s| s.e2e_rate)),
        ("one at a time p50 ms", 3, Some(|s| s.seq.map(|l| l.p50_ms))),
        ("one at a time p99 ms", 3, Some(|s| s.seq.map(|l| l.p99_ms))),
        ("CPU s/10k: client", 2, Some(|s| s.client_cpu_s_per_10k)),
        ("CPU s/10k: worker", 2, Some(|s| s.worker_cpu_s_per_10k)),
        ("CPU s/10k: RabbitMQ", 2, Some(|s| s.broker_cpu_s_per_10k)),
        (
            "CPU s/10k: redis-server",
            2,
            Some(|s| s.redis_cpu_s_per_10k),
        ),
        (
            "CPU µs/task: redis-server",
            1,
            Some(|s| s.redis_cpu_s_per_10k.map(|v| v * 100.0)),
        ),
        ("CPU s/10k: client+worker+server", 2, None),
        (
            "context switches/task: client",
            2,
            Some(|s| s.client_ctx_switches_per_task),
        ),
        (
            "context switches/task: worker",
            2,
            Some(|s| s.worker_ctx_switches_per_task),
        ),
        (
            "worker peak RSS MiB",
            1,
            Some(|s| s.worker_peak_rss_kib.map(|k| k as f64 / 1024.0)),
        ),
    ];
    let mut header = format!("  {:<34}", "");
    for (_, label) in &sides {
        header.push_str(&format!(" {label:>12}"));
    }
    header.push_str(&format!(" {:>10} {:>10}", "Redis/RMQ", "fw/Celery"));
    println!("{header}");
    let fmt = |v: Option<f64>, d: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.d$}"));
    for (label, decimals, field) in rows {
        let value = |run: &RedisBrokerRun, key: &str| match field {
            Some(field) => run.side(key).and_then(field),
            None => all_cpu(run.side(key), key.ends_with("redis")),
        };
        let mut line = format!("  {label:<34}");
        for (key, _) in &sides {
            let median = sys::median(runs.iter().map(|r| value(r, key)));
            line.push_str(&format!(" {:>12}", fmt(median, decimals)));
        }
        let ratio = |of: &dyn Fn(&RedisBrokerRun) -> Option<f64>| {
            sys::median(runs.iter().map(|r| of(r).filter(|v| v.is_finite())))
        };
        let over = |a: &str, b: &str| ratio(&|r| Some(value(r, a)? / value(r, b)?));
        // The server rows compare each side's own server: redis-server on
        // the Redis side against RabbitMQ on the RabbitMQ side.
        let (redis_over_rabbitmq, fw_over_celery) = if label.ends_with("RabbitMQ") {
            (None, None)
        } else if label.ends_with("redis-server") {
            (
                ratio(&|r| {
                    Some(
                        r.framework_redis.redis_cpu_s_per_10k?
                            / r.framework_rabbitmq.broker_cpu_s_per_10k?,
                    )
                }),
                over("framework_redis", "celery_redis"),
            )
        } else {
            (
                over("framework_redis", "framework_rabbitmq"),
                over("framework_redis", "celery_redis"),
            )
        };
        line.push_str(&format!(
            " {:>10} {:>10}",
            fmt(redis_over_rabbitmq, 2),
            fmt(fw_over_celery, 2)
        ));
        println!("{line}");
    }
    println!(
        "  (Redis/RMQ: fw Redis / fw RabbitMQ, on the redis-server row its redis-server CPU / the \
         RabbitMQ side's RabbitMQ CPU; fw/Celery: fw Redis / Celery Redis; medians of the per-run \
         ratios. A side's figure for the server it does not use is other clients' work meanwhile; \
         client+worker+server counts the side's own server only)"
    );
    let orders: Vec<&str> = runs
        .iter()
        .map(|r| {
            if r.redis_first {
                "Redis first"
            } else {
                "RabbitMQ first"
            }
        })
        .collect();
    println!("  order per run: {}", orders.join(", "));
    let deleted: usize = runs.iter().map(|r| r.redis_keys_deleted).sum();
    let left: usize = runs.iter().map(|r| r.redis_keys_left).sum();
    let stray: usize = runs.iter().map(|r| r.redis_keys_stray).sum();
    println!(
        "  Redis keys under the sides' prefixes: {deleted} deleted at the sides' ends, {left} left; \
         {stray} outside them{}",
        if left + stray == 0 {
            ""
        } else {
            "  <<< LEFT BEHIND"
        }
    );
    let killed: Vec<String> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            SIDES.iter().filter_map(move |(key, label)| {
                let side = r.side(key)?;
                side.notes
                    .iter()
                    .any(|n| n.contains("SIGTERM: killed"))
                    .then(|| format!("{label} (run {})", i + 1))
            })
        })
        .collect();
    if !killed.is_empty() {
        println!(
            "  workers that did not stop on SIGTERM (killed): {}  <<< SHUTDOWN HANG",
            killed.join(", ")
        );
    }
    if !first.redis_server_local {
        println!("  (the redis-server is not on this machine: it does not compete for its CPUs)");
    }
}
