//! The periodic-task scheduler (`--only beat`, also in `--all`):
//!
//! 1. Lateness: 10 entries every second for `--beat-seconds`, sent by this
//!    framework's scheduler (`worker beat`, a child process) and by Celery
//!    5.7's `celery beat`, one after the other in the same run, received by a
//!    consumer here. This scheduler's lateness is receipt − the run's
//!    scheduled time (its `beat_run` header). Celery's interval schedule is
//!    relative to the last send, so it drifts: its lateness is an entry's
//!    k-th receipt − (its first receipt + k periods), which leaves out its
//!    first run's own delay and its delivery time (to Celery's advantage).
//!    Then two instances of each scheduler at once on one entry every
//!    second: runs received per second (Celery beat has no coordination:
//!    each instance sends every run).
//! 2. Load: one scheduler with `--beat-entries` (10,000) entries, all due
//!    together every `--beat-period` seconds (the worst case: a burst of
//!    10,000 publishes): its CPU per 1,000 runs, its resident memory, and
//!    each burst's lateness (receipt − scheduled time).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde::Serialize;
use task_core::broker::{headers::as_integer, ConsumeOptions, Consumer};
use task_core::App;

use crate::child::ChildProc;
use crate::sys::{self, Latency};
use crate::{admin, Config};

/// One run of the section.
#[derive(Debug, Clone, Serialize)]
pub struct BeatRun {
    pub entries: usize,
    pub seconds: f64,
    /// This framework: receipt − scheduled time.
    pub framework_late: Option<Latency>,
    pub framework_runs: usize,
    /// Celery beat: an entry's k-th receipt − (its first + k periods).
    pub celery_late: Option<Latency>,
    pub celery_runs: usize,
    /// Runs each side should have sent in `seconds` (entries × seconds).
    pub ideal_runs: usize,
    /// Two instances of each scheduler running at once on one entry every
    /// second: messages received per second (1.0: each run sent once).
    pub two_instances_framework_per_s: f64,
    pub two_instances_celery_per_s: Option<f64>,
    pub load: LoadRun,
}

/// One scheduler with many entries.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRun {
    pub entries: usize,
    pub period_s: f64,
    pub runs: usize,
    /// Receipt − scheduled time, over every run of every burst.
    pub late: Option<Latency>,
    pub late_max_ms: f64,
    /// CPU seconds of the scheduler process per 1,000 runs sent, while
    /// firing (start-up excluded).
    pub cpu_ms_per_1k_runs: f64,
    pub rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
}

impl BeatRun {
    /// The ratios this run contributes (`beat:` keys).
    pub fn ratios(&self) -> Vec<(&'static str, f64)> {
        let mut ratios = Vec::new();
        if let (Some(fw), Some(py)) = (self.framework_late, self.celery_late) {
            ratios.push((
                "beat:celery_p50_late_over_framework_p50_late",
                py.p50_ms / fw.p50_ms.max(0.001),
            ));
            ratios.push((
                "beat:celery_p99_late_over_framework_p99_late",
                py.p99_ms / fw.p99_ms.max(0.001),
            ));
        }
        ratios
    }
}

/// A consumer of `queue` on `app`.
async fn consume(app: &App, queue: &str) -> Result<Consumer> {
    app.ensure_queue(queue).await?;
    Ok(app
        .broker()
        .consume(&[queue.to_owned()], ConsumeOptions::no_ack())
        .await?)
}

/// Deliveries of `consumer` for `span` from the first, each with its
/// receipt time (wall clock, ms) and message.
async fn collect(
    consumer: &mut Consumer,
    first_within: Duration,
    span: Duration,
) -> Result<Vec<(f64, task_core::broker::Message)>> {
    let mut got = Vec::new();
    let first = tokio::time::timeout(first_within, consumer.deliveries.next())
        .await
        .context("no run within the start-up time")?
        .context("consumer ended")??;
    got.push((now_ms(), first.message));
    let until = tokio::time::Instant::now() + span;
    while let Ok(Some(delivery)) = tokio::time::timeout_at(until, consumer.deliveries.next()).await
    {
        got.push((now_ms(), delivery?.message));
    }
    Ok(got)
}

/// Messages per second over `span` (the first message starts it).
fn per_second(got: &[(f64, task_core::broker::Message)], span: Duration) -> f64 {
    // `collect` takes the first message and then `span` more.
    (got.len().saturating_sub(1)) as f64 / span.as_secs_f64()
}

fn now_ms() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e3
}

fn scheduled_ms(message: &task_core::broker::Message) -> Option<f64> {
    let run = message
        .properties
        .headers
        .get("beat_run")
        .and_then(as_integer)?;
    Some(run as f64)
}

/// Writes a schedule file of `entries` entries every `period_s` to `queue`.
fn schedule_file(
    dir: &Path,
    entries: usize,
    period_s: f64,
    queue: &str,
) -> Result<std::path::PathBuf> {
    let mut text = String::new();
    for i in 0..entries {
        text.push_str(&format!(
            "[entries.e{i}]\ntask = \"bench.beat_tick\"\nevery = {period_s}\nargs = [{i}]\n[entries.e{i}.options]\nqueue = \"{queue}\"\n"
        ));
    }
    let path = dir.join(format!("schedule-{entries}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Celery's `celery beat` (`celery_beat.py`) with `entries` entries every
/// second to `queue`, its schedule file in `dir` named after `label`.
fn spawn_celery_beat(
    cfg: &Config,
    python: &Path,
    dir: &Path,
    label: &str,
    queue: &str,
    entries: usize,
) -> Result<ChildProc> {
    let mut command = Command::new(python);
    command
        .args([
            "-m",
            "celery",
            "-A",
            "celery_beat",
            "beat",
            "-l",
            "warning",
            "--pidfile=",
        ])
        .arg("-s")
        .arg(dir.join(label.replace(' ', "-")))
        .current_dir(sys::workspace_root().join("examples/bench"))
        .env("BROKER_URL", &cfg.broker)
        .env("BENCH_QUEUE", queue)
        .env("BENCH_ENTRIES", entries.to_string())
        .env("BENCH_PERIOD", "1");
    ChildProc::spawn(label, command)
}

fn spawn_scheduler(cfg: &Config, schedule: &Path, group: &str) -> Result<ChildProc> {
    let mut command = Command::new(&cfg.worker_binary);
    command
        .args([
            "--broker",
            &cfg.broker,
            "--loglevel",
            "warning",
            "beat",
            "--schedule",
        ])
        .arg(schedule)
        .args(["--beat-name", group]);
    ChildProc::spawn("beat", command)
}

async fn delete_log(cfg: &Config, group: &str) -> Result<()> {
    let conn = admin::connect(&cfg.broker).await?;
    let channel = conn.create_channel().await?;
    channel
        .queue_delete(
            format!("task_core.beat.{group}.runs").as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

pub async fn bench(
    cfg: &Config,
    python: Option<&Path>,
    seconds: f64,
    load_entries: usize,
    load_period: f64,
) -> Result<BeatRun> {
    let dir = std::env::temp_dir().join(format!("task-bench-beat-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let entries = 10;
    let app = App::builder()
        .broker_url(cfg.broker.clone())
        .set_as_default(false)
        .connect()
        .await?;
    let span = Duration::from_secs_f64(seconds);

    // 1a. This framework.
    let queue = admin::unique_queue("beat-fw", true);
    let group = queue.replace('.', "-");
    let mut consumer = consume(&app, &queue).await?;
    let schedule = schedule_file(&dir, entries, 1.0, &queue)?;
    let scheduler = spawn_scheduler(cfg, &schedule, &group)?;
    let got = collect(&mut consumer, Duration::from_secs(30), span).await?;
    scheduler.terminate(Duration::from_secs(10))?;
    let mut late: Vec<f64> = got
        .iter()
        .filter_map(|(received, message)| Some(received - scheduled_ms(message)?))
        .collect();
    let framework_runs = late.len();
    let framework_late = Latency::of_ms(&mut late);
    let _ = consumer.cancel.close().await;
    admin::delete(&admin::connect(&cfg.broker).await?, &queue, true).await?;
    delete_log(cfg, &group).await?;

    // 1b. Celery beat.
    let (celery_late, celery_runs) = match python {
        Some(python) => {
            let queue = admin::unique_queue("beat-py", true);
            let mut consumer = consume(&app, &queue).await?;
            let beat = spawn_celery_beat(cfg, python, &dir, "celery beat", &queue, entries)?;
            let got = collect(&mut consumer, Duration::from_secs(60), span).await?;
            beat.terminate(Duration::from_secs(10))?;
            // Each entry's k-th run against its first receipt + k periods.
            let mut seen: HashMap<i64, (f64, u32)> = HashMap::new();
            let mut late = Vec::new();
            for (received, message) in &got {
                let body: serde_json::Value = serde_json::from_slice(&message.body)?;
                let Some(entry) = body[0][0].as_i64() else {
                    continue;
                };
                let (origin, k) = seen.entry(entry).or_insert((*received, 0));
                late.push(received - (*origin + f64::from(*k) * 1000.0));
                *k += 1;
            }
            let _ = consumer.cancel.close().await;
            admin::delete(&admin::connect(&cfg.broker).await?, &queue, true).await?;
            (Latency::of_ms(&mut late), got.len())
        }
        None => (None, 0),
    };

    // 1c. Two instances of each at once.
    let two_span = Duration::from_secs_f64(seconds.min(10.0));
    let two_instances_framework_per_s = {
        let queue = admin::unique_queue("beat-fw2", true);
        let group = queue.replace('.', "-");
        let mut consumer = consume(&app, &queue).await?;
        let schedule = schedule_file(&dir, 1, 1.0, &queue)?;
        let first = spawn_scheduler(cfg, &schedule, &group)?;
        let second = spawn_scheduler(cfg, &schedule, &group)?;
        let got = collect(&mut consumer, Duration::from_secs(30), two_span).await?;
        first.terminate(Duration::from_secs(10))?;
        second.terminate(Duration::from_secs(10))?;
        let _ = consumer.cancel.close().await;
        admin::delete(&admin::connect(&cfg.broker).await?, &queue, true).await?;
        delete_log(cfg, &group).await?;
        per_second(&got, two_span)
    };
    let two_instances_celery_per_s = match python {
        Some(python) => {
            let queue = admin::unique_queue("beat-py2", true);
            let mut consumer = consume(&app, &queue).await?;
            let beats = ["a", "b"]
                .iter()
                .map(|name| {
                    spawn_celery_beat(cfg, python, &dir, &format!("celery beat {name}"), &queue, 1)
                })
                .collect::<Result<Vec<_>>>()?;
            // Both started: the second's first run is in.
            let _ = collect(
                &mut consumer,
                Duration::from_secs(60),
                Duration::from_secs(2),
            )
            .await?;
            let got = collect(&mut consumer, Duration::from_secs(30), two_span).await?;
            for beat in beats {
                beat.terminate(Duration::from_secs(10))?;
            }
            let _ = consumer.cancel.close().await;
            admin::delete(&admin::connect(&cfg.broker).await?, &queue, true).await?;
            Some(per_second(&got, two_span))
        }
        None => None,
    };

    // 2. Many entries.
    let load = load_run(cfg, &app, &dir, load_entries, load_period).await?;
    app.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BeatRun {
        entries,
        seconds,
        framework_late,
        framework_runs,
        celery_late,
        celery_runs,
        ideal_runs: entries * seconds.round() as usize,
        two_instances_framework_per_s,
        two_instances_celery_per_s,
        load,
    })
}

async fn load_run(
    cfg: &Config,
    app: &App,
    dir: &Path,
    entries: usize,
    period_s: f64,
) -> Result<LoadRun> {
    const BURSTS: usize = 3;
    let queue = admin::unique_queue("beat-load", true);
    let group = queue.replace('.', "-");
    let mut consumer = consume(app, &queue).await?;
    let schedule = schedule_file(dir, entries, period_s, &queue)?;
    let scheduler = spawn_scheduler(cfg, &schedule, &group)?;
    // The first burst: start-up is over once it has been sent.
    let mut first = Vec::new();
    let started = Instant::now();
    while first.len() < entries {
        let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.deliveries.next())
            .await
            .context("the first burst did not arrive")?
            .context("consumer ended")??;
        first.push(delivery);
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the first burst took over 2 min");
        }
    }
    let cpu_before = scheduler.cpu_seconds();
    let mut late = Vec::with_capacity(entries * BURSTS);
    while late.len() < entries * BURSTS {
        let delivery = tokio::time::timeout(
            Duration::from_secs_f64(period_s * 3.0 + 30.0),
            consumer.deliveries.next(),
        )
        .await
        .context("a burst did not arrive")?
        .context("consumer ended")??;
        let received = now_ms();
        if let Some(run) = scheduled_ms(&delivery.message) {
            late.push(received - run);
        }
    }
    let cpu = scheduler.cpu_seconds() - cpu_before;
    let rss_kib = scheduler.rss_kib();
    let peak_rss_kib = scheduler.peak_rss_kib();
    scheduler.terminate(Duration::from_secs(10))?;
    let _ = consumer.cancel.close().await;
    admin::delete(&admin::connect(&cfg.broker).await?, &queue, true).await?;
    delete_log(cfg, &group).await?;
    let runs = late.len();
    let late_max_ms = late.iter().copied().fold(0.0, f64::max);
    Ok(LoadRun {
        entries,
        period_s,
        runs,
        late: Latency::of_ms(&mut late),
        late_max_ms,
        cpu_ms_per_1k_runs: cpu * 1e3 / runs as f64 * 1e3,
        rss_kib,
        peak_rss_kib,
    })
}

/// Prints the section's medians.
pub fn print(runs: &[BeatRun]) {
    let Some(first) = runs.first() else { return };
    let median =
        |values: Vec<Option<f64>>| sys::median(values).map_or("?".into(), |v| format!("{v:.1}"));
    let fw = |f: fn(&Latency) -> f64| {
        median(
            runs.iter()
                .map(|r| r.framework_late.as_ref().map(f))
                .collect(),
        )
    };
    let py = |f: fn(&Latency) -> f64| {
        median(runs.iter().map(|r| r.celery_late.as_ref().map(f)).collect())
    };
    println!(
        "\nbeat: {} entries every 1 s for {:.0} s (medians of runs): this scheduler's lateness \
         (receipt − scheduled) p50 {} ms, p99 {} ms, {} runs of {}; Celery beat's (k-th receipt − first − k periods) \
         p50 {} ms, p99 {} ms, {} runs of {}",
        first.entries,
        first.seconds,
        fw(|l| l.p50_ms),
        fw(|l| l.p99_ms),
        first.framework_runs,
        first.ideal_runs,
        py(|l| l.p50_ms),
        py(|l| l.p99_ms),
        first.celery_runs,
        first.ideal_runs,
    );
    println!(
        "beat, two instances at once on one entry every second: this scheduler sent {} runs per second, \
         Celery beat {} (each run sent by both)",
        median(runs.iter().map(|r| Some(r.two_instances_framework_per_s)).collect()),
        median(runs.iter().map(|r| r.two_instances_celery_per_s).collect()),
    );
    let load = |f: fn(&LoadRun) -> Option<f64>| median(runs.iter().map(|r| f(&r.load)).collect());
    println!(
        "beat load: {} entries due together every {} s, {} runs: CPU {} ms per 1,000 runs, RSS {} KiB \
         (peak {} KiB), lateness p50 {} ms, p99 {} ms, max {} ms",
        first.load.entries,
        first.load.period_s,
        first.load.runs,
        load(|l| Some(l.cpu_ms_per_1k_runs)),
        load(|l| l.rss_kib.map(|v| v as f64)),
        load(|l| l.peak_rss_kib.map(|v| v as f64)),
        load(|l| l.late.map(|l| l.p50_ms)),
        load(|l| l.late.map(|l| l.p99_ms)),
        load(|l| Some(l.late_max_ms)),
    );
}
