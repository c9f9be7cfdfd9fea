//! Quorum queues (`--only quorum`, also in `--all`): what replication costs
//! against classic queues, in the same run, the order alternating between
//! runs (classic first in odd runs).
//!
//! 1. On the shared RabbitMQ (one node): `tasks.add` round trips as in the
//!    `framework` section (pipelined, `--window` in flight: tasks per
//!    second; then one at a time: p50 and p99), with classic task queues
//!    (`QueueType::Classic`) and with quorum ones (`QueueType::Quorum`,
//!    client and worker alike).
//! 2. Delayed tasks: `--quorum-delay-n` tasks with countdowns uniform in
//!    `[1, --quorum-delay-max-s]` seconds (the same countdowns on both
//!    sides), through this framework's hexadecimal cascade of classic TTL
//!    queues (millisecond resolution) and through Celery's native delayed
//!    delivery levels (`celery_delayed_0..27`, quorum queues, whole seconds;
//!    the worker holds the sub-second rest). Lateness is the task body's
//!    start (the worker's clock) − its ETA (the client's `now + countdown`,
//!    as `delays.rs` computes it); a task that starts early is counted, not
//!    asserted. A task that comes out of Celery's levels up to a second
//!    early is held by the worker in one of its `-c` slots until its ETA,
//!    so tasks due within the same second queue behind each other's holds:
//!    with `-c 16` that, more than the levels, makes quorum's lateness
//!    (with `--quorum-delay-n 20` or `--concurrency 200` its p50 was about
//!    2 ms).
//! 3. Not with `--quick` (nor `--no-quorum-cluster`): the same on a private
//!    three-node cluster (`tests/common/private_cluster.rs`, started once for
//!    every run, 20-40 s, halted at the end), client and worker connected
//!    through the node list (node 0 first, where the queues' leaders are).
//!
//! Where the time goes: CPU seconds per 1,000 tasks of the client (this
//! process), of the worker (a child process) and of each RabbitMQ node's
//! Erlang VM (`beam.smp`, read from `/proc/<pid>/stat`: the shared node is
//! the one [`sys::broker_pid`] finds, the cluster's nodes are found by
//! `RABBITMQ_NODENAME` in their environment), over the pipelined round
//! trips and over the delayed tasks (first publish to last result). The
//! shared node's figure includes whatever other clients make it do
//! meanwhile.
//!
//! The worker is this binary run as `task_worker::cli::main()` (as in
//! `delays.rs`: the example tasks and `bench.started_at`) with `-Q <queue>
//! -c <n> --loglevel warn --queue-type <type>`. Task queues are named
//! `bench.quorum.<uuid>` and deleted at the end of each side; the delay
//! levels are shared and stay.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::Utc;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use task_core::broker::QueueType;
use task_core::App;
use task_examples::add;

use crate::child::ChildProc;
use crate::delays::{started_at, AS_WORKER_ENV};
use crate::private_cluster::PrivateCluster;
use crate::sys::{self, Latency};
use crate::{admin, framework, Config};

const RESULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest countdown: every delayed task goes through the levels.
const MIN_COUNTDOWN: Duration = Duration::from_secs(1);

/// CPU seconds per 1,000 tasks over one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// This process (the client).
    pub client_s_per_1k: f64,
    /// The worker process.
    pub worker_s_per_1k: f64,
    /// Every node's Erlang VM together (`None` if one was not found).
    pub broker_s_per_1k: Option<f64>,
    /// Each node's, in node order.
    pub broker_nodes_s_per_1k: Vec<Option<f64>>,
}

impl Cpu {
    /// Client, worker and RabbitMQ together.
    pub fn total(&self) -> Option<f64> {
        Some(self.client_s_per_1k + self.worker_s_per_1k + self.broker_s_per_1k?)
    }
}

/// CPU counters at the start of a phase.
struct Mark {
    client: f64,
    worker: f64,
    nodes: Vec<Option<f64>>,
}

impl Mark {
    fn take(worker: &ChildProc, pids: &[Option<u32>]) -> Self {
        Self {
            client: sys::self_cpu_seconds(),
            worker: worker.cpu_seconds(),
            nodes: node_cpu(pids),
        }
    }

    fn since(&self, worker: &ChildProc, pids: &[Option<u32>], tasks: usize) -> Cpu {
        let per_1k = |seconds: f64| seconds * 1_000.0 / tasks.max(1) as f64;
        let nodes: Vec<Option<f64>> = node_cpu(pids)
            .into_iter()
            .zip(&self.nodes)
            .map(|(after, before)| Some(per_1k(after? - (*before)?)))
            .collect();
        Cpu {
            client_s_per_1k: per_1k(sys::self_cpu_seconds() - self.client),
            worker_s_per_1k: per_1k(worker.cpu_seconds() - self.worker),
            broker_s_per_1k: nodes.iter().copied().sum(),
            broker_nodes_s_per_1k: nodes,
        }
    }
}

fn node_cpu(pids: &[Option<u32>]) -> Vec<Option<f64>> {
    pids.iter()
        .map(|pid| pid.and_then(sys::process_cpu_seconds))
        .collect()
}

/// The Erlang VM (`beam.smp`) of the node called `name`: its environment
/// has `RABBITMQ_NODENAME=<name>`.
fn vm_pid(name: &str) -> Option<u32> {
    let wanted = format!("RABBITMQ_NODENAME={name}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp")
                && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                    environ
                        .split(|byte| *byte == 0)
                        .any(|variable| variable == wanted.as_bytes())
                })
        })
}

/// Lateness of delayed tasks (start − ETA), in milliseconds; a negative
/// minimum: a task started before its ETA.
type Lateness = crate::delays::Spread;

/// The delayed tasks of one side.
#[derive(Debug, Clone, Serialize)]
pub struct Delayed {
    pub tasks: usize,
    /// Countdowns are uniform in `[min, max]` seconds.
    pub min_countdown_s: f64,
    pub max_countdown_s: f64,
    pub seed: u64,
    /// All publishes, confirmed (`--delay-window` in flight).
    pub publish_s: f64,
    /// From the first publish to the last result.
    pub wall_s: f64,
    pub lateness: Option<Lateness>,
    /// Tasks whose body started before their ETA (should be 0).
    pub early: usize,
    /// From the first publish to the last result, per 1,000 delayed tasks.
    pub cpu: Cpu,
}

/// One queue type on one broker setup.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub queue_type: &'static str,
    pub n: usize,
    /// Pipelined round trips per second.
    pub e2e_rate: f64,
    /// Over the pipelined round trips.
    pub e2e_cpu: Cpu,
    /// One at a time.
    pub seq: Option<Latency>,
    pub delayed: Delayed,
    pub worker_peak_rss_kib: Option<u64>,
}

/// Classic against quorum on one broker setup.
#[derive(Debug, Clone, Serialize)]
pub struct SetupRun {
    pub nodes: usize,
    pub quorum_first: bool,
    pub classic: Side,
    pub quorum: Side,
}

/// One run of the section.
#[derive(Debug, Clone, Serialize)]
pub struct QuorumRun {
    /// The shared RabbitMQ.
    pub single: SetupRun,
    /// The private three-node cluster (not with `--quick`).
    pub cluster: Option<SetupRun>,
    /// How long the cluster took to start (the run that started it).
    pub cluster_start_s: Option<f64>,
    /// Why the cluster part did not run (an error of the run).
    pub cluster_error: Option<String>,
}

/// The ratio keys of one setup.
struct Keys {
    e2e: &'static str,
    p50: &'static str,
    p99: &'static str,
    broker_cpu: &'static str,
    all_cpu: &'static str,
    late_p50: &'static str,
    late_p99: &'static str,
    delayed_broker_cpu: &'static str,
}

const SINGLE_KEYS: Keys = Keys {
    e2e: "quorum:1node_e2e_quorum_over_classic",
    p50: "quorum:1node_p50_quorum_over_classic",
    p99: "quorum:1node_p99_quorum_over_classic",
    broker_cpu: "quorum:1node_rabbitmq_cpu_quorum_over_classic",
    all_cpu: "quorum:1node_all_cpu_quorum_over_classic",
    late_p50: "quorum:1node_late_p50_quorum_minus_classic_ms",
    late_p99: "quorum:1node_late_p99_quorum_minus_classic_ms",
    delayed_broker_cpu: "quorum:1node_delayed_rabbitmq_cpu_quorum_over_classic",
};

const CLUSTER_KEYS: Keys = Keys {
    e2e: "quorum:3node_e2e_quorum_over_classic",
    p50: "quorum:3node_p50_quorum_over_classic",
    p99: "quorum:3node_p99_quorum_over_classic",
    broker_cpu: "quorum:3node_rabbitmq_cpu_quorum_over_classic",
    all_cpu: "quorum:3node_all_cpu_quorum_over_classic",
    late_p50: "quorum:3node_late_p50_quorum_minus_classic_ms",
    late_p99: "quorum:3node_late_p99_quorum_minus_classic_ms",
    delayed_broker_cpu: "quorum:3node_delayed_rabbitmq_cpu_quorum_over_classic",
};

impl SetupRun {
    fn ratios(&self, keys: &Keys, out: &mut Vec<(&'static str, f64)>) {
        let (c, q) = (&self.classic, &self.quorum);
        let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        let sub = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        let p50 = |s: &Side| s.seq.map(|l| l.p50_ms);
        let p99 = |s: &Side| s.seq.map(|l| l.p99_ms);
        let late = |s: &Side, f: fn(&Lateness) -> f64| s.delayed.lateness.as_ref().map(f);
        let candidates = [
            (keys.e2e, Some(q.e2e_rate / c.e2e_rate)),
            (keys.p50, div(p50(q), p50(c))),
            (keys.p99, div(p99(q), p99(c))),
            (
                keys.broker_cpu,
                div(q.e2e_cpu.broker_s_per_1k, c.e2e_cpu.broker_s_per_1k),
            ),
            (keys.all_cpu, div(q.e2e_cpu.total(), c.e2e_cpu.total())),
            (
                keys.late_p50,
                sub(late(q, |l| l.p50_ms), late(c, |l| l.p50_ms)),
            ),
            (
                keys.late_p99,
                sub(late(q, |l| l.p99_ms), late(c, |l| l.p99_ms)),
            ),
            (
                keys.delayed_broker_cpu,
                div(q.delayed.cpu.broker_s_per_1k, c.delayed.cpu.broker_s_per_1k),
            ),
        ];
        out.extend(
            candidates
                .into_iter()
                .filter_map(|(key, value)| Some((key, value.filter(|v| v.is_finite())?))),
        );
    }
}

impl QuorumRun {
    /// The ratios this run contributes (`quorum:` keys).
    pub fn ratios(&self) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        self.single.ratios(&SINGLE_KEYS, &mut out);
        if let Some(cluster) = &self.cluster {
            cluster.ratios(&CLUSTER_KEYS, &mut out);
            out.push((
                "quorum:3node_quorum_e2e_over_1node_quorum_e2e",
                cluster.quorum.e2e_rate / self.single.quorum.e2e_rate,
            ));
            out.push((
                "quorum:3node_classic_e2e_over_1node_classic_e2e",
                cluster.classic.e2e_rate / self.single.classic.e2e_rate,
            ));
        }
        out
    }
}

/// The private cluster, started by the first run that needs it and kept
/// for the others; [`ClusterSlot::shutdown`] halts it.
#[derive(Default)]
pub struct ClusterSlot {
    cluster: Option<PrivateCluster>,
    failed: Option<String>,
}

impl ClusterSlot {
    /// The cluster, and how long it took to start if it was started now.
    async fn get(&mut self) -> Result<(&PrivateCluster, Option<f64>)> {
        if let Some(why) = &self.failed {
            bail!("{why}");
        }
        let mut started_in = None;
        if self.cluster.is_none() {
            eprintln!("starting a private 3-node RabbitMQ cluster");
            let started = Instant::now();
            // The fixture panics if the cluster cannot start: the panic
            // (caught by the task) becomes this section's error.
            match tokio::spawn(PrivateCluster::start("bench-quorum")).await {
                Ok(cluster) => {
                    self.cluster = Some(cluster);
                    started_in = Some(started.elapsed().as_secs_f64());
                }
                Err(error) => {
                    let why = match error.try_into_panic() {
                        Ok(panic) => panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "panicked".into()),
                        Err(error) => error.to_string(),
                    };
                    let why = format!("the private 3-node cluster did not start: {why}");
                    self.failed = Some(why.clone());
                    bail!(why);
                }
            }
        }
        let cluster = self.cluster.as_ref().context("no cluster")?;
        Ok((cluster, started_in))
    }

    /// Halts the cluster's nodes (seconds: `rabbitmqctl stop` on each).
    pub async fn shutdown(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
        }
    }
}

/// What the client and the worker connect to, and the nodes' VMs.
struct Brokers {
    /// A URL, or a `;` list of the cluster's nodes.
    url: String,
    /// One node (the first) for housekeeping.
    admin_url: String,
    /// Each node's Erlang VM, in node order (`None`: not found).
    pids: Vec<Option<u32>>,
    /// The shared RabbitMQ: queue names go on record for `admin::cleanup`.
    shared: bool,
}

/// Run `k` of the section.
pub async fn bench(cfg: &Config, k: usize, slot: &mut ClusterSlot) -> Result<QuorumRun> {
    let quorum_first = k.is_multiple_of(2);
    let seed = cfg.delay_seed.wrapping_add(k as u64 - 1);
    let first_node = cfg.broker.split(';').next().unwrap_or(&cfg.broker);
    let shared = Brokers {
        url: cfg.broker.clone(),
        admin_url: first_node.to_owned(),
        pids: vec![sys::broker_pid()],
        shared: true,
    };
    let single = setup(cfg, &shared, 1, quorum_first, seed).await?;
    let mut run = QuorumRun {
        single,
        cluster: None,
        cluster_start_s: None,
        cluster_error: None,
    };
    if cfg.quick || !cfg.quorum_cluster {
        return Ok(run);
    }
    let outcome = async {
        let (cluster, started_in) = slot.get().await?;
        run.cluster_start_s = started_in;
        let nodes = cluster.urls().len();
        let brokers = Brokers {
            url: cluster.urls().join(";"),
            admin_url: cluster.url(0),
            pids: (0..nodes).map(|i| vm_pid(cluster.node(i))).collect(),
            shared: false,
        };
        setup(cfg, &brokers, nodes, quorum_first, seed).await
    }
    .await;
    match outcome {
        Ok(cluster) => run.cluster = Some(cluster),
        Err(error) => run.cluster_error = Some(format!("{error:#}")),
    }
    Ok(run)
}

async fn setup(
    cfg: &Config,
    brokers: &Brokers,
    nodes: usize,
    quorum_first: bool,
    seed: u64,
) -> Result<SetupRun> {
    let (classic, quorum) = if quorum_first {
        let quorum = side(cfg, brokers, QueueType::Quorum, seed).await?;
        (side(cfg, brokers, QueueType::Classic, seed).await?, quorum)
    } else {
        let classic = side(cfg, brokers, QueueType::Classic, seed).await?;
        (classic, side(cfg, brokers, QueueType::Quorum, seed).await?)
    };
    Ok(SetupRun {
        nodes,
        quorum_first,
        classic,
        quorum,
    })
}

/// One queue type: its task queue, its worker, round trips and delayed
/// tasks; the queue is deleted whatever happened.
async fn side(cfg: &Config, brokers: &Brokers, queue_type: QueueType, seed: u64) -> Result<Side> {
    let admin = admin::connect(&brokers.admin_url).await?;
    let queue = if brokers.shared {
        admin::unique_queue("quorum", true)
    } else {
        format!(
            "bench.quorum.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    };
    let outcome = measure(cfg, brokers, &admin, &queue, queue_type, seed).await;
    let deleted = admin::delete(&admin, &queue, true).await;
    let _ = admin.close(200, "done".into()).await;
    let side = outcome.with_context(|| format!("{queue_type} queues"))?;
    deleted?;
    Ok(side)
}

async fn measure(
    cfg: &Config,
    brokers: &Brokers,
    admin: &lapin::Connection,
    queue: &str,
    queue_type: QueueType,
    seed: u64,
) -> Result<Side> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args([
            "-Q",
            queue,
            "-c",
            &cfg.concurrency.to_string(),
            "--loglevel",
            "warn",
            "--queue-type",
            queue_type.as_str(),
        ])
        .env(AS_WORKER_ENV, "1")
        .env("BROKER_URL", &brokers.url);
    let mut worker = ChildProc::spawn("quorum worker", command)?;
    admin::wait_for_consumer(admin, queue, Duration::from_secs(60), || {
        worker.check_alive()
    })
    .await?;
    let app = App::builder()
        .broker_url(brokers.url.clone())
        .default_queue(queue)
        .queue_type(queue_type)
        .set_as_default(true)
        .connect()
        .await
        .context("client app cannot connect")?;

    // Round trips: pipelined, then one at a time.
    let n = cfg.quorum_n;
    framework::round_trips(cfg.warmup.min(n), cfg.window, None, true).await?;
    let mark = Mark::take(&worker, &brokers.pids);
    let e2e_rate = framework::round_trips(n, cfg.window, None, true).await?;
    let e2e_cpu = mark.since(&worker, &brokers.pids, n);
    sequential((cfg.quorum_seq / 10).clamp(20, 200)).await?;
    let seq = Latency::of(&sequential(cfg.quorum_seq).await?);

    let delayed = delayed(cfg, &app, &worker, &brokers.pids, seed).await?;
    let worker_peak_rss_kib = worker.peak_rss_kib();
    worker.terminate(Duration::from_secs(10))?;
    app.close().await?;
    Ok(Side {
        queue_type: queue_type.as_str(),
        n,
        e2e_rate,
        e2e_cpu,
        seq,
        delayed,
        worker_peak_rss_kib,
    })
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

/// `n` countdowns uniform in `[min, max]` at microsecond resolution
/// (splitmix64, reproducible from the seed).
fn countdowns(n: usize, min: Duration, max: Duration, seed: u64) -> Vec<Duration> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let span = u64::try_from(max.saturating_sub(min).as_micros()).unwrap_or(u64::MAX / 2) + 1;
    (0..n)
        .map(|_| min + Duration::from_micros(next() % span))
        .collect()
}

fn unix_nanos(time: chrono::DateTime<Utc>) -> i64 {
    time.timestamp() * 1_000_000_000 + i64::from(time.timestamp_subsec_nanos())
}

/// Delayed tasks on `app`: lateness of each task's start against its ETA.
async fn delayed(
    cfg: &Config,
    app: &App,
    worker: &ChildProc,
    pids: &[Option<u32>],
    seed: u64,
) -> Result<Delayed> {
    let max = Duration::from_secs_f64(cfg.quorum_delay_max_s).max(MIN_COUNTDOWN);
    let timeout = max + Duration::from_secs(120);
    // Warm-up: the worker's clock against ours, and one delayed task, whose
    // first publish declares the delay levels (28 quorum queues on the
    // cluster take seconds: not to be counted as lateness).
    for _ in 0..10 {
        let sent = Utc::now();
        let started = started_at
            .s()
            .apply_async_with(app)
            .await?
            .get(timeout)
            .await?;
        ensure!(
            started >= unix_nanos(sent),
            "the worker's clock is behind the client's"
        );
    }
    started_at
        .s()
        .countdown(MIN_COUNTDOWN)
        .apply_async_with(app)
        .await?
        .get(timeout)
        .await
        .context("the warm-up delayed task")?;

    let n = cfg.quorum_delay_n;
    let plan = countdowns(n, MIN_COUNTDOWN, max, seed);
    let mark = Mark::take(worker, pids);
    let start = Instant::now();
    let publish = |countdown: Duration| async move {
        // Read just before the call is encoded (see `delays.rs`).
        let sent = Utc::now();
        let result = started_at
            .s()
            .countdown(countdown)
            .apply_async_with(app)
            .await?;
        let eta_nanos = (sent + countdown).timestamp_micros() * 1_000;
        let started = tokio::spawn(async move { result.get(timeout).await });
        anyhow::Ok((countdown, eta_nanos, started))
    };
    let sent: Vec<_> = futures_util::stream::iter(plan)
        .map(publish)
        .buffer_unordered(cfg.delay_window)
        .try_collect()
        .await?;
    let publish_s = start.elapsed().as_secs_f64();
    let mut late_ms = Vec::with_capacity(n);
    let mut early = 0;
    for (countdown, eta_nanos, started) in sent {
        let started = started
            .await?
            .with_context(|| format!("a delayed task (countdown {countdown:?})"))?;
        let late = started - eta_nanos;
        if late < 0 {
            early += 1;
        }
        late_ms.push(late as f64 / 1e6);
    }
    let wall_s = start.elapsed().as_secs_f64();
    Ok(Delayed {
        tasks: n,
        min_countdown_s: MIN_COUNTDOWN.as_secs_f64(),
        max_countdown_s: max.as_secs_f64(),
        seed,
        publish_s,
        wall_s,
        lateness: Lateness::of(late_ms),
        early,
        cpu: mark.since(worker, pids, n),
    })
}

/// How a row compares quorum with classic.
#[derive(Clone, Copy)]
enum Compare {
    /// quorum / classic.
    Ratio,
    /// quorum − classic.
    Difference,
    /// No comparison (a node's share).
    Neither,
    /// No comparison; the largest of the runs, not their median (a count
    /// that should be 0).
    Most,
}

type Field = Box<dyn Fn(&Side) -> Option<f64>>;

/// Prints the section's medians as a table: per setup, classic, quorum and
/// the median of the per-run comparisons.
pub fn print(runs: &[QuorumRun]) {
    let Some(first) = runs.first() else { return };
    let setups: Vec<(&str, Vec<&SetupRun>)> = [
        ("1 node", runs.iter().map(|r| &r.single).collect::<Vec<_>>()),
        (
            "3 nodes",
            runs.iter().filter_map(|r| r.cluster.as_ref()).collect(),
        ),
    ]
    .into_iter()
    .filter(|(_, of_runs)| !of_runs.is_empty())
    .collect();
    let nodes = setups.iter().map(|(_, s)| s[0].nodes).max().unwrap_or(1);
    let cpu =
        |f: fn(&Side) -> &Cpu, g: fn(&Cpu) -> Option<f64>| -> Field { Box::new(move |s| g(f(s))) };
    let mut rows: Vec<(String, usize, Compare, Field)> = vec![
        (
            "round trips /s (pipelined)".into(),
            0,
            Compare::Ratio,
            Box::new(|s| Some(s.e2e_rate)),
        ),
        (
            "one at a time p50 ms".into(),
            2,
            Compare::Ratio,
            Box::new(|s| s.seq.map(|l| l.p50_ms)),
        ),
        (
            "one at a time p99 ms".into(),
            2,
            Compare::Ratio,
            Box::new(|s| s.seq.map(|l| l.p99_ms)),
        ),
        (
            "CPU s/1k tasks: client".into(),
            3,
            Compare::Ratio,
            cpu(|s| &s.e2e_cpu, |c| Some(c.client_s_per_1k)),
        ),
        (
            "CPU s/1k tasks: worker".into(),
            3,
            Compare::Ratio,
            cpu(|s| &s.e2e_cpu, |c| Some(c.worker_s_per_1k)),
        ),
        (
            "CPU s/1k tasks: RabbitMQ".into(),
            3,
            Compare::Ratio,
            cpu(|s| &s.e2e_cpu, |c| c.broker_s_per_1k),
        ),
    ];
    if nodes > 1 {
        for i in 0..nodes {
            rows.push((
                format!("  RabbitMQ node {i}"),
                3,
                Compare::Neither,
                Box::new(move |s| s.e2e_cpu.broker_nodes_s_per_1k.get(i).copied().flatten()),
            ));
        }
    }
    rows.extend([
        (
            "CPU s/1k tasks: all".to_owned(),
            3,
            Compare::Ratio,
            cpu(|s| &s.e2e_cpu, Cpu::total),
        ),
        (
            "delayed: lateness p50 ms".into(),
            1,
            Compare::Difference,
            Box::new(|s: &Side| s.delayed.lateness.map(|l| l.p50_ms)) as Field,
        ),
        (
            "delayed: lateness p99 ms".into(),
            1,
            Compare::Difference,
            Box::new(|s| s.delayed.lateness.map(|l| l.p99_ms)),
        ),
        (
            "delayed: lateness max ms".into(),
            1,
            Compare::Difference,
            Box::new(|s| s.delayed.lateness.map(|l| l.max_ms)),
        ),
        (
            "delayed: lateness min ms".into(),
            1,
            Compare::Difference,
            Box::new(|s| s.delayed.lateness.map(|l| l.min_ms)),
        ),
        (
            "delayed: started early (most)".into(),
            0,
            Compare::Most,
            Box::new(|s| Some(s.delayed.early as f64)),
        ),
        (
            "delayed: publish s".into(),
            2,
            Compare::Ratio,
            Box::new(|s| Some(s.delayed.publish_s)),
        ),
        (
            "delayed: CPU s/1k: worker".into(),
            3,
            Compare::Ratio,
            cpu(|s| &s.delayed.cpu, |c| Some(c.worker_s_per_1k)),
        ),
        (
            "delayed: CPU s/1k: RabbitMQ".into(),
            3,
            Compare::Ratio,
            cpu(|s| &s.delayed.cpu, |c| c.broker_s_per_1k),
        ),
    ]);

    let delayed = &first.single.classic.delayed;
    println!(
        "\nquorum: classic vs quorum task queues, {} run(s), medians (q/c: median of the per-run \
         quorum/classic ratios; q-c: of the differences); {} round trips, {} one at a time, \
         {} delayed tasks with countdowns in [{}, {}] s (classic: the hex cascade; quorum: \
         Celery's native levels); CPU from /proc",
        runs.len(),
        first.single.classic.n,
        first.single.classic.seq.map_or(0, |l| l.calls),
        delayed.tasks,
        delayed.min_countdown_s,
        delayed.max_countdown_s,
    );
    let mut header = format!("  {:<30}", "");
    for (label, _) in &setups {
        header.push_str(&format!(
            " {:>10} {:>10} {:>8}",
            format!("{label}:"),
            "",
            ""
        ));
    }
    println!("{header}");
    let mut header = format!("  {:<30}", "");
    for _ in &setups {
        header.push_str(&format!(" {:>10} {:>10} {:>8}", "classic", "quorum", "q/c"));
    }
    println!("{header}");
    for (label, decimals, compare, field) in &rows {
        let mut line = format!("  {label:<30}");
        for (_, of_runs) in &setups {
            let value = |pick: fn(&SetupRun) -> &Side| {
                let values = of_runs.iter().map(|s| field(pick(s)));
                if matches!(compare, Compare::Most) {
                    values.flatten().reduce(f64::max)
                } else {
                    sys::median(values)
                }
            };
            let (c, q) = (value(|s| &s.classic), value(|s| &s.quorum));
            let compared = sys::median(of_runs.iter().map(|s| {
                let (c, q) = (field(&s.classic)?, field(&s.quorum)?);
                match compare {
                    Compare::Ratio => Some(q / c).filter(|r| r.is_finite()),
                    Compare::Difference => Some(q - c),
                    Compare::Neither | Compare::Most => None,
                }
            }));
            let fmt =
                |v: Option<f64>, d: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.d$}"));
            let compared = match compare {
                Compare::Ratio => fmt(compared, 2),
                Compare::Difference => fmt(compared, 1),
                Compare::Neither | Compare::Most => String::new(),
            };
            line.push_str(&format!(
                " {:>10} {:>10} {:>8}",
                fmt(c, *decimals),
                fmt(q, *decimals),
                compared
            ));
        }
        println!("{line}");
    }
    println!(
        "  (lateness rows compare q-c in ms; the shared node's CPU includes other clients' work \
         meanwhile; the 3-node cluster's queues and levels have their leaders on node 0)"
    );
    let orders: Vec<&str> = runs
        .iter()
        .map(|r| {
            if r.single.quorum_first {
                "quorum first"
            } else {
                "classic first"
            }
        })
        .collect();
    println!("  order per run: {}", orders.join(", "));
    if let Some(start) = runs.iter().find_map(|r| r.cluster_start_s) {
        println!("  the private cluster started in {start:.1} s");
    }
    for error in runs.iter().filter_map(|r| r.cluster_error.as_ref()) {
        println!("  3-node part failed: {error}");
    }
}
