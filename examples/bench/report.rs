//! Medians over runs, the targets, and the printed table.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::delays::DelayRun;
use crate::redis_backend::{AwaitRun, RoundTrips};
use crate::sys::{median, Machine};
use crate::{Config, Run, Section, SideRun};

/// The medians of one side over all runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SideSummary {
    pub runs: usize,
    pub publish_rate: Option<f64>,
    pub e2e_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    pub seq_calls: Option<usize>,
    pub client_cpu_s_per_10k: Option<f64>,
    pub worker_cpu_s_per_10k: Option<f64>,
    pub broker_cpu_s_per_10k: Option<f64>,
    pub redis_cpu_s_per_10k: Option<f64>,
    pub client_ctx_switches_per_task: Option<f64>,
    pub worker_ctx_switches_per_task: Option<f64>,
    pub worker_peak_rss_kib: Option<f64>,
    pub notes: Vec<String>,
}

impl SideSummary {
    fn of<'a>(sides: impl Iterator<Item = &'a SideRun> + Clone) -> Option<Self> {
        let count = sides.clone().count();
        if count == 0 {
            return None;
        }
        let m = |f: fn(&SideRun) -> Option<f64>| median(sides.clone().map(f));
        let mut notes: Vec<String> = sides.clone().flat_map(|s| s.notes.clone()).collect();
        notes.dedup();
        Some(Self {
            runs: count,
            publish_rate: m(|s| s.publish_rate),
            e2e_rate: m(|s| s.e2e_rate),
            p50_ms: m(|s| s.seq.map(|l| l.p50_ms)),
            p99_ms: m(|s| s.seq.map(|l| l.p99_ms)),
            mean_ms: m(|s| s.seq.map(|l| l.mean_ms)),
            seq_calls: sides.clone().find_map(|s| s.seq.map(|l| l.calls)),
            client_cpu_s_per_10k: m(|s| s.client_cpu_s_per_10k),
            worker_cpu_s_per_10k: m(|s| s.worker_cpu_s_per_10k),
            broker_cpu_s_per_10k: m(|s| s.broker_cpu_s_per_10k),
            redis_cpu_s_per_10k: m(|s| s.redis_cpu_s_per_10k),
            client_ctx_switches_per_task: m(|s| s.client_ctx_switches_per_task),
            worker_ctx_switches_per_task: m(|s| s.worker_ctx_switches_per_task),
            worker_peak_rss_kib: m(|s| s.worker_peak_rss_kib.map(|k| k as f64)),
            notes,
        })
    }
}

/// A ratio: its median and its value in each run.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub median: f64,
    pub runs: Vec<f64>,
}

/// The cost runs, summarized.
#[derive(Debug, Clone, Serialize)]
pub struct CostSummary {
    pub runs: usize,
    pub tasks: usize,
    pub rate: Option<f64>,
    pub client_cpu_s_per_10k: Option<f64>,
    pub worker_cpu_s_per_10k: Option<f64>,
    pub worker_peak_rss_kib: Option<f64>,
    pub worker_rss_start_kib: Option<f64>,
    pub worker_rss_after_warmup_kib: Option<f64>,
    pub worker_rss_end_kib: Option<f64>,
    pub growth_after_warmup_kib: Option<f64>,
    pub flat_in_every_run: Option<bool>,
}

/// The delays runs, summarized: medians over runs, except where a worst
/// case says more (the largest lateness, the largest RSS growth, the early
/// starts, which are summed).
#[derive(Debug, Clone, Serialize)]
pub struct DelaySummary {
    pub runs: usize,
    pub tasks: usize,
    pub max_countdown_s: f64,
    pub first_publish_ms: Option<f64>,
    pub publish_s: Option<f64>,
    pub publish_rate: Option<f64>,
    pub publish_latency_p50_ms: Option<f64>,
    pub publish_latency_p99_ms: Option<f64>,
    pub broker_cpu_ms_per_task: Option<f64>,
    pub lateness_p50_ms: Option<f64>,
    pub lateness_p99_ms: Option<f64>,
    /// The largest over all runs.
    pub lateness_max_ms: Option<f64>,
    /// The smallest over all runs (negative: a task started early).
    pub lateness_min_ms: Option<f64>,
    /// Summed over all runs; must be 0.
    pub started_before_eta: usize,
    pub tasks_checked: usize,
    pub worker_rss_idle_kib: Option<f64>,
    pub worker_rss_after_warmup_kib: Option<f64>,
    pub worker_rss_end_kib: Option<f64>,
    pub worker_hwm_kib: Option<f64>,
    /// The largest over all runs.
    pub growth_after_warmup_kib: Option<f64>,
    pub flat_in_every_run: Option<bool>,
}

fn kib(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

impl DelaySummary {
    fn of(runs: &[&DelayRun]) -> Option<Self> {
        let first = runs.first()?;
        let m = |f: fn(&DelayRun) -> Option<f64>| median(runs.iter().map(|r| f(r)));
        let all = |f: fn(&DelayRun) -> Option<f64>| runs.iter().filter_map(move |r| f(r));
        Some(Self {
            runs: runs.len(),
            tasks: first.tasks,
            max_countdown_s: first.max_countdown_s,
            first_publish_ms: m(|r| Some(r.first_publish_ms)),
            publish_s: m(|r| Some(r.publish_s)),
            publish_rate: m(|r| Some(r.publish_rate)),
            publish_latency_p50_ms: m(|r| r.publish_latency.map(|l| l.p50_ms)),
            publish_latency_p99_ms: m(|r| r.publish_latency.map(|l| l.p99_ms)),
            broker_cpu_ms_per_task: m(|r| r.broker_cpu_s.map(|s| s * 1e3 / r.tasks as f64)),
            lateness_p50_ms: m(|r| r.lateness.map(|l| l.p50_ms)),
            lateness_p99_ms: m(|r| r.lateness.map(|l| l.p99_ms)),
            lateness_max_ms: all(|r| r.lateness.map(|l| l.max_ms)).reduce(f64::max),
            lateness_min_ms: all(|r| r.lateness.map(|l| l.min_ms)).reduce(f64::min),
            started_before_eta: runs.iter().map(|r| r.started_before_eta).sum(),
            tasks_checked: runs
                .iter()
                .filter_map(|r| r.lateness)
                .map(|l| l.tasks)
                .sum(),
            worker_rss_idle_kib: m(|r| kib(r.worker_rss_idle_kib)),
            worker_rss_after_warmup_kib: m(|r| kib(r.worker_rss_after_warmup_kib)),
            worker_rss_end_kib: m(|r| kib(r.worker_rss_end_kib)),
            worker_hwm_kib: m(|r| kib(r.worker_hwm_kib)),
            growth_after_warmup_kib: all(|r| r.growth_after_warmup_kib.map(|g| g as f64))
                .reduce(f64::max),
            flat_in_every_run: runs
                .iter()
                .map(|r| r.flat)
                .collect::<Option<Vec<bool>>>()
                .map(|all| all.iter().all(|f| *f)),
        })
    }
}

/// A target and whether it is met.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: &'static str,
    pub goal: &'static str,
    pub value: Option<f64>,
    pub met: Option<bool>,
}

/// The awaited-at-once runs of the `redis` section: medians over runs.
#[derive(Debug, Clone, Serialize)]
pub struct AwaitSummary {
    pub backend: &'static str,
    pub runs: usize,
    pub tasks: usize,
    pub publish_s: Option<f64>,
    pub collect_s: Option<f64>,
    pub collect_rate: Option<f64>,
    pub client_rss_before_kib: Option<f64>,
    pub client_rss_awaiting_kib: Option<f64>,
    pub client_rss_peak_kib: Option<f64>,
    pub client_rss_after_kib: Option<f64>,
    pub client_rss_after_trim_kib: Option<f64>,
    /// (awaiting - before) / tasks.
    pub client_bytes_per_awaited_result: Option<f64>,
    /// Redis `used_memory` (awaiting - before) / tasks: the subscriptions.
    pub redis_bytes_per_subscription: Option<f64>,
    /// Redis `used_memory` (after - before) / tasks: the stored results.
    pub redis_bytes_per_stored_result: Option<f64>,
    pub client_cpu_s_per_10k: Option<f64>,
    pub worker_cpu_s_per_10k: Option<f64>,
    pub broker_cpu_s_per_10k: Option<f64>,
    pub redis_cpu_s_per_10k: Option<f64>,
    /// The largest over all runs (0 expected).
    pub still_awaited_after: usize,
}

impl AwaitSummary {
    fn of(runs: &[&AwaitRun]) -> Option<Self> {
        let first = runs.first()?;
        let m = |f: &dyn Fn(&AwaitRun) -> Option<f64>| median(runs.iter().map(|r| f(r)));
        let per_task = |a: Option<u64>, b: Option<u64>, n: usize, unit: f64| {
            Some((a? as f64 - b? as f64) * unit / n as f64)
        };
        Some(Self {
            backend: first.backend,
            runs: runs.len(),
            tasks: first.tasks,
            publish_s: m(&|r| Some(r.publish_s)),
            collect_s: m(&|r| Some(r.collect_s)),
            collect_rate: m(&|r| Some(r.collect_rate)),
            client_rss_before_kib: m(&|r| kib(r.client_rss_before_kib)),
            client_rss_awaiting_kib: m(&|r| kib(r.client_rss_awaiting_kib)),
            client_rss_peak_kib: m(&|r| kib(r.client_rss_peak_kib)),
            client_rss_after_kib: m(&|r| kib(r.client_rss_after_kib)),
            client_rss_after_trim_kib: m(&|r| kib(r.client_rss_after_trim_kib)),
            client_bytes_per_awaited_result: m(&|r| {
                per_task(
                    r.client_rss_awaiting_kib,
                    r.client_rss_before_kib,
                    r.tasks,
                    1024.0,
                )
            }),
            redis_bytes_per_subscription: m(&|r| {
                per_task(
                    r.redis_awaiting.used_memory_bytes,
                    r.redis_before.used_memory_bytes,
                    r.tasks,
                    1.0,
                )
            }),
            redis_bytes_per_stored_result: m(&|r| {
                per_task(
                    r.redis_after.used_memory_bytes,
                    r.redis_before.used_memory_bytes,
                    r.tasks,
                    1.0,
                )
            }),
            client_cpu_s_per_10k: m(&|r| Some(r.client_cpu_s_per_10k)),
            worker_cpu_s_per_10k: m(&|r| Some(r.worker_cpu_s_per_10k)),
            broker_cpu_s_per_10k: m(&|r| r.broker_cpu_s_per_10k),
            redis_cpu_s_per_10k: m(&|r| r.redis_cpu_s_per_10k),
            still_awaited_after: runs
                .iter()
                .map(|r| r.still_awaited_after)
                .max()
                .unwrap_or(0),
        })
    }
}

/// The sides of the `redis` section's round trips.
pub const REDIS_SIDES: [(&str, &str); 4] = [
    ("framework_rpc", "fw rpc://"),
    ("framework_redis", "fw redis://"),
    ("celery_rpc", "Celery rpc://"),
    ("celery_redis", "Celery redis"),
];

fn redis_side<'a>(run: &'a RoundTrips, key: &str) -> Option<&'a SideRun> {
    match key {
        "framework_rpc" => run.framework_rpc.as_ref(),
        "framework_redis" => run.framework_redis.as_ref(),
        "celery_rpc" => run.celery_rpc.as_ref(),
        "celery_redis" => run.celery_redis.as_ref(),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub sides: BTreeMap<&'static str, SideSummary>,
    /// The `redis` section's round trips, by side.
    pub redis_sides: BTreeMap<&'static str, SideSummary>,
    /// Results awaited at once: Redis, then the `rpc://` baseline.
    pub redis_await: Option<AwaitSummary>,
    pub rpc_await: Option<AwaitSummary>,
    pub ratios: BTreeMap<&'static str, Ratio>,
    pub cost: Option<CostSummary>,
    pub delays: Option<DelaySummary>,
    pub targets: Vec<Target>,
}

pub const SIDES: [(&str, &str); 4] = [
    ("raw", "raw lapin"),
    ("framework", "framework"),
    ("framework_in_process", "fw in-proc"),
    ("celery", "Celery 5.7"),
];

fn side<'a>(run: &'a Run, key: &str) -> Option<&'a SideRun> {
    match key {
        "raw" => run.raw.as_ref(),
        "framework" => run.framework.as_ref(),
        "framework_in_process" => run.framework_in_process.as_ref(),
        "celery" => run.celery.as_ref(),
        _ => None,
    }
}

impl Summary {
    pub fn of(runs: &[Run]) -> Self {
        let mut sides = BTreeMap::new();
        for (key, _) in SIDES {
            if let Some(summary) = SideSummary::of(runs.iter().filter_map(|r| side(r, key))) {
                sides.insert(key, summary);
            }
        }
        let mut redis_sides = BTreeMap::new();
        for (key, _) in REDIS_SIDES {
            let of_runs = runs
                .iter()
                .filter_map(|r| r.redis_round_trips.as_ref())
                .filter_map(|r| redis_side(r, key));
            if let Some(summary) = SideSummary::of(of_runs) {
                redis_sides.insert(key, summary);
            }
        }
        let awaits = |f: fn(&crate::redis_backend::AwaitRuns) -> &AwaitRun| {
            let of_runs: Vec<&AwaitRun> = runs
                .iter()
                .filter_map(|r| r.redis_await.as_ref())
                .map(f)
                .collect();
            AwaitSummary::of(&of_runs)
        };
        let redis_await = awaits(|a| &a.redis);
        let rpc_await = awaits(|a| &a.rpc);
        let mut ratios: BTreeMap<&'static str, Ratio> = BTreeMap::new();
        for run in runs {
            for (key, value) in &run.ratios {
                ratios
                    .entry(key)
                    .or_insert_with(|| Ratio {
                        median: f64::NAN,
                        runs: Vec::new(),
                    })
                    .runs
                    .push(*value);
            }
        }
        for ratio in ratios.values_mut() {
            ratio.median = median(ratio.runs.iter().copied().map(Some)).unwrap_or(f64::NAN);
        }
        let costs: Vec<_> = runs.iter().filter_map(|r| r.cost.as_ref()).collect();
        let cost = (!costs.is_empty()).then(|| {
            let m = |f: fn(&crate::framework::CostRun) -> Option<f64>| {
                median(costs.iter().map(|c| f(c)))
            };
            CostSummary {
                runs: costs.len(),
                tasks: costs[0].tasks,
                rate: m(|c| Some(c.rate)),
                client_cpu_s_per_10k: m(|c| Some(c.client_cpu_s_per_10k)),
                worker_cpu_s_per_10k: m(|c| Some(c.worker_cpu_s_per_10k)),
                worker_peak_rss_kib: m(|c| c.worker_peak_rss_kib.map(|v| v as f64)),
                worker_rss_start_kib: m(|c| c.worker_rss_start_kib.map(|v| v as f64)),
                worker_rss_after_warmup_kib: m(|c| c.worker_rss_after_warmup_kib.map(|v| v as f64)),
                worker_rss_end_kib: m(|c| c.worker_rss_end_kib.map(|v| v as f64)),
                growth_after_warmup_kib: m(|c| c.growth_after_warmup_kib.map(|v| v as f64)),
                flat_in_every_run: costs
                    .iter()
                    .map(|c| c.flat)
                    .collect::<Option<Vec<bool>>>()
                    .map(|all| all.iter().all(|f| *f)),
            }
        });
        let delay_runs: Vec<&DelayRun> = runs.iter().filter_map(|r| r.delays.as_ref()).collect();
        let delays = DelaySummary::of(&delay_runs);
        let r = |key: &str| ratios.get(key).map(|r| r.median);
        let at_least = |v: Option<f64>, goal: f64| v.map(|v| v >= goal);
        let targets = vec![
            Target {
                target: "framework end-to-end / raw round trip",
                goal: ">= 0.90",
                value: r("framework_e2e_over_raw_e2e"),
                met: at_least(r("framework_e2e_over_raw_e2e"), 0.9),
            },
            Target {
                target: ".delay() rate / raw confirmed publish",
                goal: ">= 0.90",
                value: r("framework_publish_over_raw_publish"),
                met: at_least(r("framework_publish_over_raw_publish"), 0.9),
            },
            Target {
                target: "one-at-a-time p50: framework - raw (ms)",
                goal: "<= 0.20 ms",
                value: r("framework_p50_minus_raw_p50_ms"),
                met: r("framework_p50_minus_raw_p50_ms").map(|v| v <= 0.2),
            },
            Target {
                target: "drain (ignore_result, late ack): framework / raw",
                goal: ">= 0.90",
                value: r("framework_drain_over_raw_drain"),
                met: at_least(r("framework_drain_over_raw_drain"), 0.9),
            },
            Target {
                target: "end-to-end: framework / Celery",
                goal: ">= 10",
                value: r("framework_e2e_over_celery_e2e"),
                met: at_least(r("framework_e2e_over_celery_e2e"), 10.0),
            },
            Target {
                target: "p50: Celery / framework",
                goal: ">= 3",
                value: r("celery_p50_over_framework_p50"),
                met: at_least(r("celery_p50_over_framework_p50"), 3.0),
            },
            Target {
                target: "worker RSS flat after warm-up",
                goal: "growth <= max(1 MiB, 5%)",
                value: cost
                    .as_ref()
                    .and_then(|c| c.growth_after_warmup_kib)
                    .map(|k| k / 1024.0),
                met: cost.as_ref().and_then(|c| c.flat_in_every_run),
            },
            Target {
                target: "delayed tasks started before their ETA",
                goal: "= 0",
                value: delays.as_ref().map(|d| d.started_before_eta as f64),
                met: delays.as_ref().map(|d| d.started_before_eta == 0),
            },
            Target {
                target: "worker RSS flat over delayed tasks",
                goal: "growth <= max(1 MiB, 5%)",
                value: delays
                    .as_ref()
                    .and_then(|d| d.growth_after_warmup_kib)
                    .map(|k| k / 1024.0),
                met: delays.as_ref().and_then(|d| d.flat_in_every_run),
            },
        ];
        Self {
            sides,
            redis_sides,
            redis_await,
            rpc_await,
            ratios,
            cost,
            delays,
            targets,
        }
    }
}

pub fn print_header(cfg: &Config, machine: &Machine, sections: &[Section]) {
    println!(
        "task-core benchmark: tasks.add round trips, {} CPUs ({}), {} RAM, RabbitMQ {}, load {}",
        machine.nproc,
        machine.cpu_model,
        machine.mem_total,
        machine.rabbitmq_version,
        machine.load_average_at_start
    );
    println!(
        "sections {:?}; {} run(s), median shown; N={} (Celery {}), window {} in flight, \
         framework worker -c {} (prefetch {}), one-at-a-time {} calls (Celery {}), cost run {} tasks, \
         delays {} tasks with countdowns in [0, {} s], {} results awaited at once (Redis {}){}",
        sections,
        cfg.runs,
        cfg.n,
        cfg.celery_n,
        cfg.window,
        cfg.concurrency,
        cfg.prefetch,
        cfg.seq,
        cfg.celery_seq,
        cfg.cost_n,
        cfg.delay_n,
        cfg.delay_max_s,
        cfg.await_n,
        cfg.redis_url_redacted,
        if cfg.quick {
            " [--quick: smoke sizes, figures not meaningful]"
        } else {
            ""
        }
    );
}

fn fmt_rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.0}", v))
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

pub fn print_table(cfg: &Config, summary: &Summary, runs: &[Run]) {
    let cols: Vec<(&str, &str)> = SIDES
        .iter()
        .copied()
        .filter(|(key, _)| summary.sides.contains_key(key))
        .collect();
    if !cols.is_empty() {
        print_sides(summary, &cols);
    }

    if let Some(cost) = &summary.cost {
        let mib = |k: Option<f64>| fmt(k.map(|k| k / 1024.0), 1);
        println!(
            "\nworker cost over {} tasks ({} run(s)): {} tasks/s, worker CPU {} s / 10k, client CPU {} s / 10k",
            cost.tasks,
            cost.runs,
            fmt_rate(cost.rate),
            fmt(cost.worker_cpu_s_per_10k, 2),
            fmt(cost.client_cpu_s_per_10k, 2)
        );
        println!(
            "  worker RSS (MiB): start {}, after {:.0}% of tasks {}, end {}, peak (VmHWM) {}; growth after warm-up {} MiB",
            mib(cost.worker_rss_start_kib),
            crate::framework::WARMUP_FRACTION * 100.0,
            mib(cost.worker_rss_after_warmup_kib),
            mib(cost.worker_rss_end_kib),
            mib(cost.worker_peak_rss_kib),
            fmt(cost.growth_after_warmup_kib.map(|k| k / 1024.0), 2)
        );
        if let Some(last) = runs.iter().rev().find_map(|r| r.cost.as_ref()) {
            let step = (last.samples.len() / 10).max(1);
            let points: Vec<String> = last
                .samples
                .iter()
                .step_by(step)
                .chain(last.samples.last())
                .map(|(t, done, rss)| {
                    format!("{t:.1}s/{}k:{:.1}", done / 1000, *rss as f64 / 1024.0)
                })
                .collect();
            println!("  RSS samples (time/tasks done:MiB): {}", points.join("  "));
        }
    }

    if let Some(delays) = &summary.delays {
        print_delays(delays, runs);
    }

    let drains: Vec<_> = runs.iter().filter_map(|r| r.drain.as_ref()).collect();
    if !drains.is_empty() {
        let m = |f: fn(&crate::drain::DrainRun) -> f64| median(drains.iter().map(|d| Some(f(d))));
        println!(
            "\ndrain of {} queued tasks with ignore_result, late acks ({} run(s)): raw lapin worker {} tasks/s, framework worker {} tasks/s",
            drains[0].tasks,
            drains.len(),
            fmt_rate(m(|d| d.raw_rate)),
            fmt_rate(m(|d| d.framework_rate)),
        );
    }

    print_redis(summary);

    println!("\nratios (median of the per-run ratios; per run in brackets)");
    for (key, ratio) in &summary.ratios {
        let per_run: Vec<String> = ratio.runs.iter().map(|v| format!("{v:.3}")).collect();
        println!(
            "  {key:<48} {:>9.3}  [{}]",
            ratio.median,
            per_run.join(", ")
        );
    }

    println!("\ntargets");
    for t in &summary.targets {
        let verdict = match t.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "n/a",
        };
        println!(
            "  {:<42} {:>9}  goal {:<26} {}",
            t.target,
            fmt(t.value, 3),
            t.goal,
            verdict
        );
    }
    if cfg.quick {
        println!("  (--quick: smoke sizes on a shared machine; these verdicts mean nothing)");
    }
    for run in runs {
        for error in &run.errors {
            println!("ERROR: {error}");
        }
    }
}

fn print_sides(summary: &Summary, cols: &[(&str, &str)]) {
    println!();
    print!("{:<38}", "median of runs");
    for (_, label) in cols {
        print!("{label:>13}");
    }
    println!();
    let row = |name: &str, f: &dyn Fn(&SideSummary) -> String| {
        print!("{name:<38}");
        for (key, _) in cols {
            print!("{:>13}", f(&summary.sides[key]));
        }
        println!();
    };
    row("publish, confirmed (msg/s)", &|s| fmt_rate(s.publish_rate));
    row("end-to-end round trips (tasks/s)", &|s| {
        fmt_rate(s.e2e_rate)
    });
    row("one-at-a-time p50 (ms)", &|s| fmt(s.p50_ms, 3));
    row("one-at-a-time p99 (ms)", &|s| fmt(s.p99_ms, 3));
    row("one-at-a-time mean (ms)", &|s| fmt(s.mean_ms, 3));
    row("client CPU s / 10k tasks", &|s| {
        fmt(s.client_cpu_s_per_10k, 2)
    });
    row("worker CPU s / 10k tasks", &|s| {
        fmt(s.worker_cpu_s_per_10k, 2)
    });
    row("RabbitMQ CPU s / 10k tasks", &|s| {
        fmt(s.broker_cpu_s_per_10k, 2)
    });
    row("client context switches / task", &|s| {
        fmt(s.client_ctx_switches_per_task, 2)
    });
    row("worker context switches / task", &|s| {
        fmt(s.worker_ctx_switches_per_task, 2)
    });
    row("worker peak RSS (MiB)", &|s| {
        fmt(s.worker_peak_rss_kib.map(|k| k / 1024.0), 1)
    });
    if summary.sides.contains_key("celery") {
        println!("  (Celery's publish column is unconfirmed sends, its default; its worker is -c 2 prefork, main + pool)");
    }
    if summary.sides.contains_key("framework_in_process") {
        println!("  (fw in-proc: client and worker share one process; its client CPU includes the worker)");
    }
}

fn print_delays(summary: &DelaySummary, runs: &[Run]) {
    let delay_runs: Vec<&DelayRun> = runs.iter().filter_map(|r| r.delays.as_ref()).collect();
    let mib = |k: Option<u64>| fmt(k.map(|k| k as f64 / 1024.0), 1);
    println!(
        "\ndelayed tasks: {} tasks, countdowns uniform in [0, {} s], {} publishes in flight, run by the \
         worker CLI in a child process (-c, --loglevel warn); lateness = body start - ETA (eta header = \
         send time + countdown)",
        summary.tasks,
        summary.max_countdown_s,
        delay_runs.first().map_or(0, |r| r.window)
    );
    print!("{:<46}", "");
    for k in 1..=delay_runs.len() {
        print!("{:>11}", format!("run {k}"));
    }
    println!("{:>14}", "summary");
    let row = |name: &str, f: &dyn Fn(&DelayRun) -> String, total: String| {
        print!("{name:<46}");
        for run in &delay_runs {
            print!("{:>11}", f(run));
        }
        println!("{total:>14}");
    };
    let lat = |f: fn(&crate::delays::Spread) -> f64| {
        move |r: &DelayRun| fmt(r.lateness.as_ref().map(f), 1)
    };
    row(
        "first delayed publish, declares levels (ms)",
        &|r| fmt(Some(r.first_publish_ms), 1),
        fmt(summary.first_publish_ms, 1) + " med",
    );
    row(
        &format!("publish all {} (s)", summary.tasks),
        &|r| fmt(Some(r.publish_s), 2),
        fmt(summary.publish_s, 2) + " med",
    );
    row(
        "publish rate (tasks/s)",
        &|r| fmt_rate(Some(r.publish_rate)),
        fmt_rate(summary.publish_rate) + " med",
    );
    let publat = |f: fn(&crate::delays::Spread) -> f64| {
        move |r: &DelayRun| fmt(r.publish_latency.as_ref().map(f), 1)
    };
    row(
        "publish latency, send to confirm, p50 (ms)",
        &publat(|l| l.p50_ms),
        fmt(summary.publish_latency_p50_ms, 1) + " med",
    );
    row(
        "publish latency, send to confirm, p99 (ms)",
        &publat(|l| l.p99_ms),
        fmt(summary.publish_latency_p99_ms, 1) + " med",
    );
    row(
        "in the delay level queues after publishing",
        &|r| {
            r.in_delay_levels_after_publish
                .map_or_else(|| "-".into(), |v| v.to_string())
        },
        String::new(),
    );
    row(
        "lateness p50 (ms)",
        &lat(|l| l.p50_ms),
        fmt(summary.lateness_p50_ms, 1) + " med",
    );
    row(
        "lateness p99 (ms)",
        &lat(|l| l.p99_ms),
        fmt(summary.lateness_p99_ms, 1) + " med",
    );
    row(
        "lateness max (ms)",
        &lat(|l| l.max_ms),
        fmt(summary.lateness_max_ms, 1) + " max",
    );
    row(
        "lateness min (ms; < 0 is an early start)",
        &lat(|l| l.min_ms),
        fmt(summary.lateness_min_ms, 3) + " min",
    );
    row(
        "STARTED BEFORE ETA (must be 0)",
        &|r| r.started_before_eta.to_string(),
        summary.started_before_eta.to_string() + " sum",
    );
    row(
        "worker RSS idle, before publishing (MiB)",
        &|r| mib(r.worker_rss_idle_kib),
        String::new(),
    );
    row(
        &format!(
            "worker RSS after {:.0}% of tasks (MiB)",
            crate::framework::WARMUP_FRACTION * 100.0
        ),
        &|r| mib(r.worker_rss_after_warmup_kib),
        String::new(),
    );
    row(
        "worker RSS max after warm-up (MiB)",
        &|r| mib(r.worker_rss_max_after_warmup_kib),
        String::new(),
    );
    row(
        "worker RSS at the end (MiB)",
        &|r| mib(r.worker_rss_end_kib),
        String::new(),
    );
    row(
        "worker peak RSS, VmHWM (MiB)",
        &|r| mib(r.worker_hwm_kib),
        fmt(summary.worker_hwm_kib.map(|k| k / 1024.0), 1) + " med",
    );
    row(
        "RSS growth after warm-up (MiB)",
        &|r| fmt(r.growth_after_warmup_kib.map(|k| k as f64 / 1024.0), 2),
        fmt(summary.growth_after_warmup_kib.map(|k| k / 1024.0), 2) + " max",
    );
    row(
        "flat: growth <= max(1 MiB, 5%)",
        &|r| match r.flat {
            Some(true) => "yes".into(),
            Some(false) => "NO".into(),
            None => "-".into(),
        },
        match summary.flat_in_every_run {
            Some(true) => "yes".into(),
            Some(false) => "NO".into(),
            None => "-".into(),
        },
    );
    row(
        "worker CPU s (whole run)",
        &|r| fmt(Some(r.worker_cpu_s), 2),
        String::new(),
    );
    row(
        "RabbitMQ CPU ms per delayed task",
        &|r| fmt(r.broker_cpu_s.map(|s| s * 1e3 / r.tasks as f64), 2),
        fmt(summary.broker_cpu_ms_per_task, 2) + " med",
    );
    let existed: Vec<String> = delay_runs
        .iter()
        .map(|r| match r.delay_levels_existed {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => "?".into(),
        })
        .collect();
    println!(
        "  (delay levels already declared before each run: {}; the first delayed publish of an app \
         declares them all the same: 129 idempotent declarations and their bindings)",
        existed.join(", ")
    );
    if let Some(last) = delay_runs.last() {
        let step = (last.samples.len() / 12).max(1);
        let points: Vec<String> = last
            .samples
            .iter()
            .step_by(step)
            .chain(last.samples.last())
            .map(|(t, done, rss)| format!("{t:.1}s/{done}:{:.1}", *rss as f64 / 1024.0))
            .collect();
        println!(
            "  RSS samples, last run (time/tasks done:MiB): {}",
            points.join("  ")
        );
    }
    println!(
        ">>> TASKS STARTED BEFORE THEIR ETA: {} of {}{}",
        summary.started_before_eta,
        summary.tasks_checked,
        if summary.started_before_eta == 0 {
            " (none: OK)"
        } else {
            "  <<< BUG"
        }
    );
    for (k, run) in delay_runs.iter().enumerate() {
        for e in &run.early_examples {
            println!(
                "    run {}: task {} countdown {:.3} ms, eta {}, started {} ({:.3} ms early)",
                k + 1,
                e.task_id,
                e.countdown_ms,
                e.eta,
                e.started,
                e.early_by_ms
            );
        }
    }
}

fn print_redis(summary: &Summary) {
    let cols: Vec<(&str, &str)> = REDIS_SIDES
        .iter()
        .copied()
        .filter(|(key, _)| summary.redis_sides.contains_key(key))
        .collect();
    if !cols.is_empty() {
        println!(
            "\nRedis result backend: round trips as above, the same worker and client on each backend"
        );
        print!("{:<38}", "median of runs");
        for (_, label) in &cols {
            print!("{label:>15}");
        }
        println!();
        let row = |name: &str, f: &dyn Fn(&SideSummary) -> String| {
            print!("{name:<38}");
            for (key, _) in &cols {
                print!("{:>15}", f(&summary.redis_sides[key]));
            }
            println!();
        };
        row("end-to-end round trips (tasks/s)", &|s| {
            fmt_rate(s.e2e_rate)
        });
        row("one-at-a-time p50 (ms)", &|s| fmt(s.p50_ms, 3));
        row("one-at-a-time p99 (ms)", &|s| fmt(s.p99_ms, 3));
        row("client CPU s / 10k tasks", &|s| {
            fmt(s.client_cpu_s_per_10k, 2)
        });
        row("worker CPU s / 10k tasks", &|s| {
            fmt(s.worker_cpu_s_per_10k, 2)
        });
        row("RabbitMQ CPU s / 10k tasks", &|s| {
            fmt(s.broker_cpu_s_per_10k, 2)
        });
        row("redis-server CPU s / 10k tasks", &|s| {
            fmt(s.redis_cpu_s_per_10k, 2)
        });
        row("worker peak RSS (MiB)", &|s| {
            fmt(s.worker_peak_rss_kib.map(|k| k / 1024.0), 1)
        });
        println!(
            "  (redis-server CPU on the rpc:// sides is other use of the shared Redis meanwhile)"
        );
    }
    for a in [&summary.redis_await, &summary.rpc_await]
        .into_iter()
        .flatten()
    {
        print_await(a);
    }
}

fn print_await(a: &AwaitSummary) {
    let mib = |k: Option<f64>| fmt(k.map(|k| k / 1024.0), 1);
    let redis = a.backend == "redis";
    println!(
        "\n{} results awaited at once by one client, {} ({} run(s), medians): published in {} s \
         with no worker, collected in {} s from the worker's start ({} tasks/s)",
        a.tasks,
        if redis {
            "Redis backend"
        } else {
            "rpc:// (baseline)"
        },
        a.runs,
        fmt(a.publish_s, 2),
        fmt(a.collect_s, 2),
        fmt_rate(a.collect_rate)
    );
    println!(
        "  client RSS (MiB): before {}, all awaited {}, peak {}, after collecting {} ({} after malloc_trim); \
         {} bytes per awaited result",
        mib(a.client_rss_before_kib),
        mib(a.client_rss_awaiting_kib),
        mib(a.client_rss_peak_kib),
        mib(a.client_rss_after_kib),
        mib(a.client_rss_after_trim_kib),
        fmt(a.client_bytes_per_awaited_result, 0)
    );
    if redis {
        println!(
            "  Redis used_memory: +{} bytes per subscription while awaited, +{} bytes per stored result after",
            fmt(a.redis_bytes_per_subscription, 0),
            fmt(a.redis_bytes_per_stored_result, 0),
        );
    }
    println!(
        "  CPU s / 10k over the collection: client {}, worker {} (from its start), RabbitMQ {}, redis-server {}; \
         results still awaited at the end: {}",
        fmt(a.client_cpu_s_per_10k, 2),
        fmt(a.worker_cpu_s_per_10k, 2),
        fmt(a.broker_cpu_s_per_10k, 2),
        fmt(a.redis_cpu_s_per_10k, 2),
        a.still_awaited_after
    );
}
