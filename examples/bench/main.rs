//! Benchmarks: this framework against RabbitMQ's own limit (plain lapin, the
//! same message shape) and against Python Celery 5.7, on the same broker.
//!
//! ```text
//! cargo run --release --example bench -- --all      # everything, 3 runs, medians
//! cargo run --release --example bench -- --quick    # CI smoke: small N, 1 run, < 60 s
//! cargo run --release --example bench -- --only raw,framework --runs 5 --n 50000
//! cargo run --release --example bench -- --redis    # the Redis result backend only
//! ```
//!
//! Sections, run one after another against the same RabbitMQ:
//! 1. `raw`: lapin only. Confirmed publishes (pipelined), round trips through
//!    a raw consumer process (prefetch, reply to `reply_to`, late ack), and
//!    one-at-a-time round trips.
//! 2. `framework`: `tasks.add` via `add.delay(..)` and `.get()`, against the
//!    example worker binary as a child process (`-Q <queue> -c <n>
//!    --loglevel warn`), then against an in-process `task_worker::Worker`.
//! 3. `celery`: Celery 5.7 prefork worker (`-c 2`) and a Python client, `rpc://`.
//! 4. `cost`: CPU seconds per 10,000 tasks (client and worker) and the worker's
//!    RSS over a run of 100,000 tasks.
//! 5. `delays`: 10,000 tasks with countdowns uniform in [0, 10 s], kept by
//!    RabbitMQ's delay levels: the time to publish them, each task's lateness
//!    (start - ETA; none may start early) and the worker's RSS meanwhile.
//!    The worker is this binary run as `task_worker::cli::main()` (see
//!    `delays.rs`), with a bench task that returns its start time.
//! 6. `drain`: a backlog of `--n` tasks with `ignore_result` (no replies)
//!    worked off with late acks by the example worker, against the raw lapin
//!    worker on the same backlog: tasks per second between 90% and 10% of
//!    the backlog left (see `drain.rs`).
//! 7. `redis`: the Redis result backend (`redis_backend.rs`): round trips
//!    as in `framework`, with `redis://` against `rpc://`, and Celery 5.7
//!    with its Redis backend against `rpc://`, all in the same run, with
//!    the redis-server's CPU next to RabbitMQ's; then `--await-n` (100,000)
//!    results awaited at once by one client (its RSS, the collection time).
//! 8. `canvas`: 10,000 `tasks.add` as plain calls, as a group and as a
//!    chord's header (on RabbitMQ alone and on Redis), a chain of 1,000
//!    steps against a plain round trip, and Celery's chord on its Redis
//!    backend against its plain calls, all in the same run (`canvas.rs`).
//! 9. `events`: round trips with task events on (`-E`) and a monitor
//!    attached, against events off, in the same run (`events.rs`).
//! 10. `beat`: the periodic-task scheduler's lateness against Celery beat's,
//!     and the CPU and memory of one scheduler with 10,000 entries
//!     (`beat.rs`).
//! 11. `quorum`: classic against quorum task queues in the same run: round
//!     trips, delayed tasks' lateness (the hex cascade against Celery's
//!     native levels) and the CPU of client, worker and RabbitMQ, on the
//!     shared node and (not with `--quick`) on a private 3-node cluster
//!     (`quorum.rs`).
//! 12. `redis_broker`: Redis as the broker: `tasks.add` round trips (as
//!     in `framework`, results over `rpc://` on each side's broker) of the
//!     example worker on Redis against the same worker on RabbitMQ and
//!     against Celery 5.7 on the same Redis (and, not with `--quick`,
//!     Celery on RabbitMQ), in the same run, with the CPU of client,
//!     worker, RabbitMQ and redis-server (`INFO cpu`) per 10,000 tasks;
//!     each Redis side under a `global_keyprefix` of its own, deleted at
//!     its end (`redis_broker.rs`).
//!
//! Every figure is the median of `--runs` runs; every comparison is a ratio
//! taken within one run, then the median of those ratios. Results are printed
//! as a table and written as JSON to `bench-results/` (or `--json PATH`).
//! Timings are never asserted: the exit status only says whether every
//! section ran.
//!
//! `bash examples/bench/profile.sh` profiles the hot path (callgrind and DHAT
//! of the worker, the raw worker and the client), using the hidden
//! `--drive`, `--declare`, `--delete` and `--raw-consumer` modes (and the
//! `TASK_BENCH_AS_WORKER` environment variable, which makes this binary a
//! worker).

mod admin;
mod beat;
mod canvas;
mod celery;
mod child;
mod delays;
mod drain;
mod events;
mod framework;
#[path = "../../tests/common/private_cluster.rs"]
mod private_cluster;
mod quorum;
mod raw;
mod redis_backend;
mod redis_broker;
mod report;
mod sys;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::sys::Latency;

/// Benchmarks the framework against raw lapin and Python Celery on RabbitMQ.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(about, long_about = None)]
struct Args {
    /// Run every section with full sizes (the default when no section is named).
    #[arg(long)]
    all: bool,
    /// CI smoke version: small sizes, one run, finishes in under a minute.
    #[arg(long)]
    quick: bool,
    /// Only these sections (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// The Redis result backend section (the same as `--only redis`; with
    /// `--only`, added to its sections).
    #[arg(long)]
    redis: bool,
    /// The Redis server of the `redis` section (result keys of its own
    /// tasks only, all deleted at the end) and of the `redis_broker`
    /// section (keys under prefixes of its own, all deleted at the end).
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = redis_backend::DEFAULT_REDIS_URL,
        hide_env_values = true
    )]
    redis_url: String,
    /// Results awaited at once in the `redis` section (default 100,000;
    /// --quick 2,000).
    #[arg(long)]
    await_n: Option<usize>,
    /// Tasks of the `canvas` section's plain calls, group and chord
    /// (default 10,000; --quick 500).
    #[arg(long)]
    canvas_n: Option<usize>,
    /// Steps of the `canvas` section's chain (default 1,000; --quick 50).
    #[arg(long)]
    chain_steps: Option<usize>,
    /// Tasks per throughput measurement (default 20,000; --quick 2,000).
    #[arg(long)]
    n: Option<usize>,
    /// Runs per figure; the median is reported (default 3; --quick 1).
    #[arg(long)]
    runs: Option<usize>,
    /// Where to write the JSON results (default bench-results/bench-<time>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// One-at-a-time round trips per run (default 2,000; --quick 300).
    #[arg(long)]
    seq: Option<usize>,
    /// Tasks in flight during throughput runs (confirms pending / results pending).
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// Worker concurrency (`-c`) of the framework worker; the raw worker gets
    /// the same prefetch (4 × this, the framework's default).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Tasks per Celery throughput run (default N / 4; Celery is slower).
    #[arg(long)]
    celery_n: Option<usize>,
    /// One-at-a-time Celery round trips per run (default 1,000; --quick 100).
    #[arg(long)]
    celery_seq: Option<usize>,
    /// Tasks in the worker-cost run (default 100,000; --quick 5,000).
    #[arg(long)]
    cost_n: Option<usize>,
    /// Delayed tasks in the delays section (default 10,000; --quick 1,000).
    #[arg(long)]
    delay_n: Option<usize>,
    /// Countdowns are uniform in [0, this] seconds (default 10; --quick 3).
    #[arg(long)]
    delay_max_s: Option<f64>,
    /// Delayed publishes in flight (default: --window).
    #[arg(long)]
    delay_window: Option<usize>,
    /// Seed of the countdowns (run k uses seed + k - 1; default: the time).
    #[arg(long)]
    delay_seed: Option<u64>,
    /// Skip the in-process worker variant of the framework section.
    #[arg(long)]
    no_in_process: bool,
    /// Do not run `cargo build --example worker`; require the binary.
    #[arg(long)]
    no_build: bool,
    /// Broker URL.
    #[arg(
        long,
        env = "BROKER_URL",
        default_value = task_core::DEFAULT_BROKER_URL,
        hide_env_values = true
    )]
    broker: String,
    /// Internal: run as the raw baseline's worker on this queue.
    #[arg(long, hide = true)]
    raw_consumer: Option<String>,
    /// Internal (profiling): only send `--n` tasks.add round trips to this
    /// queue, whose worker is already running, and print the rate.
    #[arg(long, hide = true)]
    drive: Option<String>,
    /// Internal (profiling): declare this queue as the framework declares a
    /// task queue.
    #[arg(long, hide = true)]
    declare: Option<String>,
    /// Internal (profiling): delete this queue and its same-name exchange.
    #[arg(long, hide = true)]
    delete: Option<String>,
    /// Seconds each scheduler runs in the `beat` section's lateness
    /// measurement (default 20; --quick 4).
    #[arg(long)]
    beat_seconds: Option<f64>,
    /// Entries of the `beat` section's load measurement (default 10,000;
    /// --quick 1,000).
    #[arg(long)]
    beat_entries: Option<usize>,
    /// Their period in seconds, all due together (default 10; --quick 2).
    #[arg(long)]
    beat_period: Option<f64>,
    /// Round trips per `quorum` measurement (default --n; --quick 1,000).
    #[arg(long)]
    quorum_n: Option<usize>,
    /// One-at-a-time round trips per `quorum` measurement (default --seq;
    /// --quick 200).
    #[arg(long)]
    quorum_seq: Option<usize>,
    /// Delayed tasks per `quorum` measurement (default 2,000; --quick 200).
    #[arg(long)]
    quorum_delay_n: Option<usize>,
    /// Their countdowns are uniform in [1, this] seconds (default 5;
    /// --quick 2).
    #[arg(long)]
    quorum_delay_max_s: Option<f64>,
    /// Skip the `quorum` section's private 3-node cluster (never started
    /// with --quick).
    #[arg(long)]
    no_quorum_cluster: bool,
    /// Round trips per framework side of the `redis_broker` section
    /// (default --n; --quick 1,000). Its Celery side runs --celery-n.
    #[arg(long)]
    redis_broker_n: Option<usize>,
    /// One-at-a-time round trips per framework side of the `redis_broker`
    /// section (default --seq; --quick 100). Its Celery side runs
    /// --celery-seq.
    #[arg(long)]
    redis_broker_seq: Option<usize>,
    /// Internal: the raw worker's prefetch.
    #[arg(long, hide = true, default_value_t = 64)]
    prefetch: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Section {
    Raw,
    Framework,
    Celery,
    Cost,
    Delays,
    Drain,
    Redis,
    Canvas,
    Events,
    Beat,
    Quorum,
    #[value(name = "redis_broker", alias = "redis-broker")]
    #[serde(rename = "redis_broker")]
    RedisBroker,
}

/// Sizes and settings of one benchmark invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub broker_redacted: String,
    #[serde(skip)]
    pub broker: String,
    pub quick: bool,
    pub runs: usize,
    pub n: usize,
    pub seq: usize,
    pub window: usize,
    pub concurrency: usize,
    pub prefetch: u16,
    pub warmup: usize,
    pub celery_n: usize,
    pub celery_seq: usize,
    pub cost_n: usize,
    pub delay_n: usize,
    /// Countdowns are uniform in [0, delay_max_s] seconds.
    pub delay_max_s: f64,
    pub delay_window: usize,
    pub delay_seed: u64,
    pub in_process: bool,
    pub worker_binary: PathBuf,
    pub redis_url_redacted: String,
    #[serde(skip)]
    pub redis_url: String,
    pub await_n: usize,
    pub canvas_n: usize,
    pub chain_steps: usize,
    pub quorum_n: usize,
    pub quorum_seq: usize,
    pub quorum_delay_n: usize,
    /// Countdowns of the `quorum` section are uniform in [1, this] seconds.
    pub quorum_delay_max_s: f64,
    /// Whether the `quorum` section runs on a private 3-node cluster too.
    pub quorum_cluster: bool,
    /// Round trips per framework side of the `redis_broker` section.
    pub redis_broker_n: usize,
    /// One-at-a-time round trips per framework side of `redis_broker`.
    pub redis_broker_seq: usize,
}

impl Config {
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }

    pub fn seq_warmup(&self) -> usize {
        (self.seq / 10).clamp(20, 200)
    }
}

/// What one side measured in one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SideRun {
    /// Confirmed publishes per second with nobody consuming (`.delay()` for
    /// the framework; unconfirmed sends for Celery, its default).
    pub publish_rate: Option<f64>,
    /// Round trips per second (publish, run, reply collected).
    pub e2e_rate: Option<f64>,
    /// One-at-a-time round trips.
    pub seq: Option<Latency>,
    pub client_cpu_s_per_10k: Option<f64>,
    pub worker_cpu_s_per_10k: Option<f64>,
    /// Thread context switches per task over the end-to-end phase.
    pub client_ctx_switches_per_task: Option<f64>,
    pub worker_ctx_switches_per_task: Option<f64>,
    /// The local RabbitMQ's CPU over the end-to-end phase.
    pub broker_cpu_s_per_10k: Option<f64>,
    /// The local redis-server's CPU over the end-to-end phase (`redis`
    /// section only).
    pub redis_cpu_s_per_10k: Option<f64>,
    pub worker_peak_rss_kib: Option<u64>,
    pub notes: Vec<String>,
}

/// One run of every selected section, and the ratios within it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    pub raw: Option<SideRun>,
    pub framework: Option<SideRun>,
    pub framework_in_process: Option<SideRun>,
    pub celery: Option<SideRun>,
    pub cost: Option<framework::CostRun>,
    pub delays: Option<delays::DelayRun>,
    pub drain: Option<drain::DrainRun>,
    pub redis_round_trips: Option<redis_backend::RoundTrips>,
    pub redis_await: Option<redis_backend::AwaitRuns>,
    pub canvas: Option<canvas::CanvasRun>,
    pub events: Option<events::EventsRun>,
    pub beat: Option<beat::BeatRun>,
    pub quorum: Option<quorum::QuorumRun>,
    pub redis_broker: Option<redis_broker::RedisBrokerRun>,
    pub ratios: BTreeMap<&'static str, f64>,
    pub errors: Vec<String>,
}

impl Run {
    fn compute_ratios(&mut self) {
        let mut put = |key: &'static str, value: Option<f64>| {
            if let Some(v) = value.filter(|v| v.is_finite()) {
                self.ratios.insert(key, v);
            }
        };
        let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        let sub = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        let (raw, fw, inproc, celery) = (
            self.raw.as_ref(),
            self.framework.as_ref(),
            self.framework_in_process.as_ref(),
            self.celery.as_ref(),
        );
        let e2e = |s: Option<&SideRun>| s.and_then(|s| s.e2e_rate);
        let publish = |s: Option<&SideRun>| s.and_then(|s| s.publish_rate);
        let p50 = |s: Option<&SideRun>| s.and_then(|s| s.seq).map(|l| l.p50_ms);
        let p99 = |s: Option<&SideRun>| s.and_then(|s| s.seq).map(|l| l.p99_ms);
        put("framework_e2e_over_raw_e2e", div(e2e(fw), e2e(raw)));
        put(
            "framework_publish_over_raw_publish",
            div(publish(fw), publish(raw)),
        );
        put("framework_p50_minus_raw_p50_ms", sub(p50(fw), p50(raw)));
        put("framework_p99_minus_raw_p99_ms", sub(p99(fw), p99(raw)));
        // CPU seconds per task of client + worker + RabbitMQ: on a machine whose
        // CPUs are saturated, throughput goes as their inverse, whatever the
        // other processes on the machine happen to do during one run.
        let cpu = |s: Option<&SideRun>| {
            s.and_then(|s| {
                Some(s.client_cpu_s_per_10k? + s.worker_cpu_s_per_10k? + s.broker_cpu_s_per_10k?)
            })
        };
        put(
            "raw_cpu_over_framework_cpu_per_task",
            div(cpu(raw), cpu(fw)),
        );
        put("in_process_e2e_over_raw_e2e", div(e2e(inproc), e2e(raw)));
        put(
            "in_process_p50_minus_raw_p50_ms",
            sub(p50(inproc), p50(raw)),
        );
        put("framework_e2e_over_celery_e2e", div(e2e(fw), e2e(celery)));
        if let Some(drain) = &self.drain {
            put(
                "framework_drain_over_raw_drain",
                Some(drain.framework_rate / drain.raw_rate),
            );
        }
        put("celery_p50_over_framework_p50", div(p50(celery), p50(fw)));
        put("celery_p99_over_framework_p99", div(p99(celery), p99(fw)));
        put(
            "framework_publish_over_celery_publish",
            div(publish(fw), publish(celery)),
        );
        if let Some(r) = &self.redis_round_trips {
            let (fw_rpc, fw_redis, py_rpc, py_redis) = (
                r.framework_rpc.as_ref(),
                r.framework_redis.as_ref(),
                r.celery_rpc.as_ref(),
                r.celery_redis.as_ref(),
            );
            put(
                "redis:fw_redis_e2e_over_fw_rpc_e2e",
                div(e2e(fw_redis), e2e(fw_rpc)),
            );
            put(
                "redis:fw_redis_e2e_over_celery_redis_e2e",
                div(e2e(fw_redis), e2e(py_redis)),
            );
            put(
                "redis:celery_redis_e2e_over_celery_rpc_e2e",
                div(e2e(py_redis), e2e(py_rpc)),
            );
            put(
                "redis:fw_redis_p50_minus_fw_rpc_p50_ms",
                sub(p50(fw_redis), p50(fw_rpc)),
            );
            put(
                "redis:celery_redis_p50_over_fw_redis_p50",
                div(p50(py_redis), p50(fw_redis)),
            );
            let redis_cpu = |s: Option<&SideRun>| s.and_then(|s| s.redis_cpu_s_per_10k);
            let broker_cpu = |s: Option<&SideRun>| s.and_then(|s| s.broker_cpu_s_per_10k);
            put(
                "redis:fw_redis_redis_cpu_over_rabbitmq_cpu",
                div(redis_cpu(fw_redis), broker_cpu(fw_redis)),
            );
            // All CPU per task (client, worker, RabbitMQ, Redis).
            let all_cpu = |s: Option<&SideRun>| {
                s.and_then(|s| {
                    Some(
                        s.client_cpu_s_per_10k?
                            + s.worker_cpu_s_per_10k?
                            + s.broker_cpu_s_per_10k?
                            + s.redis_cpu_s_per_10k.unwrap_or(0.0),
                    )
                })
            };
            put(
                "redis:fw_redis_cpu_over_fw_rpc_cpu_per_task",
                div(all_cpu(fw_redis), all_cpu(fw_rpc)),
            );
            put(
                "redis:celery_redis_cpu_over_fw_redis_cpu_per_task",
                div(all_cpu(py_redis), all_cpu(fw_redis)),
            );
        }
        if let Some(canvas) = &self.canvas {
            for (key, value) in canvas.ratios() {
                put(key, Some(value));
            }
        }
        if let Some(events) = &self.events {
            for (key, value) in events.ratios() {
                put(key, Some(value));
            }
        }
        if let Some(beat) = &self.beat {
            for (key, value) in beat.ratios() {
                put(key, Some(value));
            }
        }
        if let Some(quorum) = &self.quorum {
            for (key, value) in quorum.ratios() {
                put(key, Some(value));
            }
        }
        if let Some(redis_broker) = &self.redis_broker {
            for (key, value) in redis_broker.ratios() {
                put(key, Some(value));
            }
        }
        if let Some(a) = &self.redis_await {
            put(
                "redis:await_collect_rate_redis_over_rpc",
                Some(a.redis.collect_rate / a.rpc.collect_rate),
            );
            let growth = |r: &redis_backend::AwaitRun| {
                Some(r.client_rss_peak_kib? as f64 - r.client_rss_before_kib? as f64)
            };
            put(
                "redis:await_peak_rss_growth_redis_over_rpc",
                div(growth(&a.redis), growth(&a.rpc)),
            );
        }
    }
}

fn main() -> std::process::ExitCode {
    if std::env::var_os(delays::AS_WORKER_ENV).is_some() {
        // The delays section's worker: the example worker's `main`, with
        // this binary's `bench.started_at` task linked in.
        return task_worker::cli::main();
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start tokio: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = match (&args.raw_consumer, &args.drive) {
        (Some(queue), _) => {
            runtime.block_on(raw::consumer_main(&args.broker, queue, args.prefetch))
        }
        (None, Some(queue)) => runtime.block_on(framework::drive(
            &args.broker,
            queue,
            args.n.unwrap_or(5_000),
            args.window,
        )),
        (None, None) => match (&args.declare, &args.delete) {
            (Some(queue), _) => runtime.block_on(async {
                let app = task_core::App::builder()
                    .broker_url(args.broker.clone())
                    .set_as_default(false)
                    .connect()
                    .await?;
                app.ensure_queue(queue).await?;
                Ok(app.close().await?)
            }),
            (None, Some(queue)) => runtime.block_on(async {
                let conn = admin::connect(&args.broker).await?;
                admin::delete(&conn, queue, true).await
            }),
            (None, None) => runtime.block_on(bench(args)),
        },
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bench(args: Args) -> Result<()> {
    let quick = args.quick;
    let every = vec![
        Section::Raw,
        Section::Framework,
        Section::Celery,
        Section::Cost,
        Section::Delays,
        Section::Drain,
        Section::Redis,
        Section::Canvas,
        Section::Events,
        Section::Beat,
        Section::Quorum,
        Section::RedisBroker,
    ];
    let mut sections: Vec<Section> = args.only.clone();
    if args.redis && !sections.contains(&Section::Redis) {
        sections.push(Section::Redis);
    }
    // Named on the command line: a Redis that cannot be reached is an error.
    let redis_named = sections.contains(&Section::Redis) && !args.all;
    if args.all || sections.is_empty() {
        sections = every;
    }
    let n = args.n.unwrap_or(if quick { 2_000 } else { 20_000 }).max(1);
    let concurrency = args.concurrency.max(1);
    let needs_worker = sections.contains(&Section::Framework)
        || sections.contains(&Section::Cost)
        || sections.contains(&Section::Drain)
        || sections.contains(&Section::Redis)
        || sections.contains(&Section::Canvas)
        || sections.contains(&Section::Events)
        || sections.contains(&Section::Beat)
        || sections.contains(&Section::RedisBroker);
    let worker_binary = if needs_worker {
        framework::ensure_worker_binary(!args.no_build)?
    } else {
        framework::worker_binary()?
    };
    let cfg = Config {
        broker_redacted: task_core::broker::redact(&args.broker),
        broker: args.broker.clone(),
        quick,
        runs: args.runs.unwrap_or(if quick { 1 } else { 3 }).max(1),
        n,
        seq: args.seq.unwrap_or(if quick { 300 } else { 2_000 }).max(1),
        window: args.window.max(1),
        concurrency,
        prefetch: u16::try_from(concurrency * 4).unwrap_or(u16::MAX),
        warmup: if quick { 200 } else { 1_000 }.min(n),
        celery_n: args
            .celery_n
            .unwrap_or(if quick { 300 } else { (n / 4).max(1) })
            .max(1),
        celery_seq: args
            .celery_seq
            .unwrap_or(if quick { 100 } else { 1_000 })
            .max(1),
        cost_n: args
            .cost_n
            .unwrap_or(if quick { 5_000 } else { 100_000 })
            .max(1),
        delay_n: args
            .delay_n
            .unwrap_or(if quick { 1_000 } else { 10_000 })
            .max(1),
        delay_max_s: args
            .delay_max_s
            .unwrap_or(if quick { 3.0 } else { 10.0 })
            .clamp(0.0, 86_400.0),
        delay_window: args.delay_window.unwrap_or(args.window).max(1),
        delay_seed: args.delay_seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        }),
        in_process: !args.no_in_process,
        worker_binary,
        redis_url_redacted: task_core::broker::redact(&args.redis_url),
        redis_url: args.redis_url.clone(),
        await_n: args
            .await_n
            .unwrap_or(if quick { 2_000 } else { 100_000 })
            .max(1),
        canvas_n: args
            .canvas_n
            .unwrap_or(if quick { 500 } else { 10_000 })
            .max(1),
        chain_steps: args
            .chain_steps
            .unwrap_or(if quick { 50 } else { 1_000 })
            .max(1),
        quorum_n: args
            .quorum_n
            .or(args.n)
            .unwrap_or(if quick { 1_000 } else { 20_000 })
            .max(1),
        quorum_seq: args
            .quorum_seq
            .or(args.seq)
            .unwrap_or(if quick { 200 } else { 2_000 })
            .max(1),
        quorum_delay_n: args
            .quorum_delay_n
            .unwrap_or(if quick { 200 } else { 2_000 })
            .max(1),
        quorum_delay_max_s: args
            .quorum_delay_max_s
            .unwrap_or(if quick { 2.0 } else { 5.0 })
            .clamp(1.0, 86_400.0),
        quorum_cluster: !quick && !args.no_quorum_cluster,
        redis_broker_n: args
            .redis_broker_n
            .or(args.n)
            .unwrap_or(if quick { 1_000 } else { 20_000 })
            .max(1),
        redis_broker_seq: args
            .redis_broker_seq
            .or(args.seq)
            .unwrap_or(if quick { 100 } else { 2_000 })
            .max(1),
    };
    let machine = sys::Machine::describe();
    let mut notes = Vec::new();
    // The canvas section measures the Redis backend's chords when Redis
    // answers, and only RabbitMQ's otherwise.
    let canvas_redis = sections.contains(&Section::Canvas)
        && redis_backend::RedisAdmin::connect(&cfg.redis_url)
            .await
            .is_ok();
    if sections.contains(&Section::Canvas) && !canvas_redis {
        notes.push("canvas: no Redis, the Redis backend's chords not measured".into());
    }
    if sections.contains(&Section::Redis) {
        match redis_backend::RedisAdmin::connect(&cfg.redis_url).await {
            Ok(redis) => {
                if redis.pid.is_none() {
                    notes.push(format!(
                        "no local redis-server process for {}: Redis CPU not measured",
                        cfg.redis_url_redacted
                    ));
                }
            }
            Err(why) if !redis_named => {
                eprintln!("skipping the Redis section: {why:#}");
                notes.push(format!("Redis section skipped: {why:#}"));
                sections.retain(|s| *s != Section::Redis);
            }
            Err(why) => return Err(why),
        }
    }
    if sections.contains(&Section::RedisBroker) {
        let named = args.only.contains(&Section::RedisBroker) && !args.all;
        match redis_backend::RedisAdmin::connect(&cfg.redis_url).await {
            // Its redis-server CPU comes from `INFO cpu`, local or not.
            Ok(_) => {}
            Err(why) if !named => {
                eprintln!("skipping the Redis broker section: {why:#}");
                notes.push(format!("Redis broker section skipped: {why:#}"));
                sections.retain(|s| *s != Section::RedisBroker);
            }
            Err(why) => return Err(why),
        }
    }
    let python = if sections.contains(&Section::Celery)
        || sections.contains(&Section::Redis)
        || sections.contains(&Section::RedisBroker)
        || sections.contains(&Section::Canvas)
        || sections.contains(&Section::Beat)
    {
        match celery::find_python() {
            Ok(python) => Some(python),
            Err(why) => {
                eprintln!("skipping Celery: {why}");
                notes.push(format!("Celery skipped: {why}"));
                None
            }
        }
    } else {
        None
    };
    report::print_header(&cfg, &machine, &sections);

    let cpu_share = sys::CpuShare::start();
    // The `quorum` section's private cluster: started by its first run,
    // halted after the last.
    let mut quorum_cluster = quorum::ClusterSlot::default();
    let mut runs = Vec::new();
    for k in 1..=cfg.runs {
        let mut run = Run::default();
        macro_rules! section {
            ($field:ident, $label:expr, $future:expr) => {{
                eprint!("  run {k}/{}: {:<24}", cfg.runs, $label);
                let started = std::time::Instant::now();
                match $future.await {
                    Ok(value) => {
                        eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
                        run.$field = Some(value);
                    }
                    Err(error) => {
                        eprintln!("FAILED: {error:#}");
                        run.errors.push(format!("{}: {error:#}", $label));
                    }
                }
            }};
        }
        // Odd runs measure raw first, even runs the framework first, so that
        // a drift in the machine's load does not always favour one side.
        let raw_first = k % 2 == 1;
        if raw_first && sections.contains(&Section::Raw) {
            section!(raw, "raw lapin", raw::bench(&cfg));
        }
        if sections.contains(&Section::Framework) {
            section!(
                framework,
                "framework (child)",
                framework::bench(&cfg, framework::WorkerKind::ChildProcess)
            );
        }
        if !raw_first && sections.contains(&Section::Raw) {
            section!(raw, "raw lapin", raw::bench(&cfg));
        }
        if sections.contains(&Section::Framework) && cfg.in_process {
            section!(
                framework_in_process,
                "framework (in-process)",
                framework::bench(&cfg, framework::WorkerKind::InProcess)
            );
        }
        if let (Some(python), true) = (&python, sections.contains(&Section::Celery)) {
            section!(celery, "celery", celery::bench(&cfg, python));
        }
        if sections.contains(&Section::Cost) {
            section!(cost, "cost (worker RSS)", framework::cost(&cfg));
        }
        if sections.contains(&Section::Delays) {
            let seed = cfg.delay_seed.wrapping_add(k as u64 - 1);
            section!(delays, "delays (countdowns)", delays::bench(&cfg, seed));
        }
        if sections.contains(&Section::Drain) {
            section!(
                drain,
                "drain (ignore_result)",
                drain::bench(&cfg, raw_first)
            );
        }
        if sections.contains(&Section::Redis) {
            section!(
                redis_round_trips,
                "redis: round trips",
                redis_backend::round_trip_bench(&cfg, python.as_deref(), raw_first)
            );
            section!(
                redis_await,
                "redis: awaited at once",
                redis_backend::await_bench(&cfg, !raw_first)
            );
        }
        if sections.contains(&Section::Canvas) {
            section!(
                canvas,
                "canvas (group, chord, chain)",
                canvas::bench(&cfg, python.as_deref(), canvas_redis)
            );
        }
        if sections.contains(&Section::Events) {
            section!(
                events,
                "events (task events on/off)",
                events::bench(&cfg, raw_first)
            );
        }
        if sections.contains(&Section::Beat) {
            section!(
                beat,
                "beat (scheduler)",
                beat::bench(
                    &cfg,
                    python.as_deref(),
                    args.beat_seconds
                        .unwrap_or(if quick { 4.0 } else { 20.0 })
                        .max(1.0),
                    args.beat_entries
                        .unwrap_or(if quick { 1_000 } else { 10_000 })
                        .max(1),
                    args.beat_period
                        .unwrap_or(if quick { 2.0 } else { 10.0 })
                        .max(1.0),
                )
            );
        }
        if sections.contains(&Section::Quorum) {
            section!(
                quorum,
                "quorum (classic vs quorum)",
                quorum::bench(&cfg, k, &mut quorum_cluster)
            );
            if let Some(why) = run.quorum.as_ref().and_then(|q| q.cluster_error.clone()) {
                eprintln!("  quorum: the 3-node part FAILED: {why}");
                run.errors.push(format!("quorum (3 nodes): {why}"));
            }
        }
        if sections.contains(&Section::RedisBroker) {
            section!(
                redis_broker,
                "redis_broker (vs RMQ)",
                redis_broker::bench(&cfg, python.as_deref(), k)
            );
        }
        run.compute_ratios();
        runs.push(run);
        // Whatever a failed section left behind.
        admin::cleanup(&cfg.broker).await?;
    }

    quorum_cluster.shutdown().await;
    let cpu_use = cpu_share.finish();
    let summary = report::Summary::of(&runs);
    report::print_table(&cfg, &summary, &runs);
    let canvas_runs: Vec<canvas::CanvasRun> =
        runs.iter().filter_map(|r| r.canvas.clone()).collect();
    canvas::print(&canvas_runs);
    let events_runs: Vec<events::EventsRun> =
        runs.iter().filter_map(|r| r.events.clone()).collect();
    events::print(&events_runs);
    let beat_runs: Vec<beat::BeatRun> = runs.iter().filter_map(|r| r.beat.clone()).collect();
    beat::print(&beat_runs);
    let quorum_runs: Vec<quorum::QuorumRun> =
        runs.iter().filter_map(|r| r.quorum.clone()).collect();
    quorum::print(&quorum_runs);
    let redis_broker_runs: Vec<redis_broker::RedisBrokerRun> =
        runs.iter().filter_map(|r| r.redis_broker.clone()).collect();
    redis_broker::print(&redis_broker_runs);
    let cpus = |v: Option<f64>| v.map_or_else(|| "?".into(), |v| format!("{v:.2}"));
    println!(
        "machine: {} CPUs; over these {:.0} s on average {} CPUs were busy: benchmark {:.2} \
         (client, workers, Python), RabbitMQ {}, other processes {}; load average {} at start, {} at end",
        machine.nproc,
        cpu_use.wall_seconds,
        cpus(cpu_use.machine_busy_cpus),
        cpu_use.benchmark_cpus,
        cpus(cpu_use.rabbitmq_cpus),
        cpus(cpu_use.other_processes_cpus),
        machine.load_average_at_start,
        sys::load_average()
    );
    let path = match &args.json {
        Some(path) => path.clone(),
        None => sys::workspace_root().join("bench-results").join(format!(
            "bench-{}{}.json",
            chrono::Utc::now().format("%Y%m%d-%H%M%S"),
            if quick { "-quick" } else { "" }
        )),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::json!({
        "benchmark": "task-core tasks.add round trips: raw lapin vs framework vs Celery 5.7; delayed tasks (countdowns) through RabbitMQ's delay levels; the Redis result backend against rpc:// and Celery's Redis backend; the Redis broker against RabbitMQ and Celery on Redis",
        "finished_at": chrono::Utc::now().to_rfc3339(),
        "args": args,
        "config": cfg,
        "machine": machine,
        "load_average_at_end": sys::load_average(),
        "cpu_use": cpu_use,
        "sections": sections,
        "summary": summary,
        "runs": runs,
        "notes": notes,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nJSON: {}", path.display());
    let failures: Vec<&String> = runs.iter().flat_map(|r| &r.errors).collect();
    anyhow::ensure!(
        failures.is_empty(),
        "{} section run(s) failed: {failures:?}",
        failures.len()
    );
    Ok(())
}
