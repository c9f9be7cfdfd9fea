//! Canvas (`--only canvas`, also in `--all`): what composing costs against
//! plain calls, in the same run, against the example worker binary:
//!
//! 1. `--canvas-n` (10,000) `tasks.add` sent at once as plain calls
//!    (`apply_async` each, then every `.get()`), as one `group`, and as the
//!    header of a `chord` whose body (`tasks.sum_all`) gets their values:
//!    the wall time from the first publish to the last value. With `rpc://`
//!    the chord is joined on RabbitMQ alone (its join queue and join task),
//!    with the Redis backend in Redis (Celery's protocol).
//! 2. A chain of `--chain-steps` (1,000) `tasks.add` steps, each sent by
//!    the worker that ran the one before: its time per step against a plain
//!    one-at-a-time round trip (the median of 200).
//! 3. Celery 5.7 on its Redis backend (prefork `-c 2`): the same plain
//!    calls and the same chord (`celery_client.py burst` / `chord`), so the
//!    chord's cost is a ratio within Celery too.
//!
//! Every result key the framework sides create in Redis is deleted where
//! its id is known here (the members of the chain and the chord's parts
//! expire with the worker's one hour `--result-expires`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use task_core::canvas::{chain, chord, group};
use task_core::App;
use task_examples::{add, sum_all};

use crate::redis_backend::RedisAdmin;
use crate::sys::Latency;
use crate::{admin, celery, redis_backend, Config};

const RESULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One framework side: these timings, all on one result backend.
#[derive(Debug, Clone, Serialize)]
pub struct CanvasSide {
    pub backend: String,
    /// `n` plain calls sent at once, until the last value: seconds.
    pub plain_s: f64,
    /// The same as one group.
    pub group_s: f64,
    /// The same as a chord's header, until the body's value.
    pub chord_s: f64,
    /// A chain of `chain_steps` steps, until the last value.
    pub chain_s: f64,
    /// One plain round trip at a time.
    pub round_trip: Option<Latency>,
}

/// Celery on its Redis backend.
#[derive(Debug, Clone, Serialize)]
pub struct CelerySide {
    pub plain_s: f64,
    pub chord_s: f64,
}

/// One run of the section.
#[derive(Debug, Clone, Serialize)]
pub struct CanvasRun {
    pub n: usize,
    pub chain_steps: usize,
    pub rpc: CanvasSide,
    pub redis: Option<CanvasSide>,
    pub celery_redis: Option<CelerySide>,
    /// Why Celery's side has no figures, when it failed (its chords have
    /// been seen to hang: the run keeps the framework's figures).
    pub celery_error: Option<String>,
}

impl CanvasRun {
    /// The ratios this run contributes (`canvas:` keys).
    pub fn ratios(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            (
                "canvas:rpc_group_over_plain",
                self.rpc.group_s / self.rpc.plain_s,
            ),
            (
                "canvas:rpc_chord_on_rabbitmq_over_plain",
                self.rpc.chord_s / self.rpc.plain_s,
            ),
        ];
        let per_step = |side: &CanvasSide| {
            let step_ms = side.chain_s * 1e3 / self.chain_steps as f64;
            side.round_trip.map(|rt| step_ms / rt.p50_ms)
        };
        if let Some(ratio) = per_step(&self.rpc) {
            out.push(("canvas:rpc_chain_step_over_round_trip_p50", ratio));
        }
        if let Some(redis) = &self.redis {
            out.push((
                "canvas:redis_group_over_plain",
                redis.group_s / redis.plain_s,
            ));
            out.push((
                "canvas:redis_chord_over_plain",
                redis.chord_s / redis.plain_s,
            ));
            if let Some(ratio) = per_step(redis) {
                out.push(("canvas:redis_chain_step_over_round_trip_p50", ratio));
            }
            if let Some(celery) = &self.celery_redis {
                out.push((
                    "canvas:celery_redis_chord_over_fw_redis_chord",
                    celery.chord_s / redis.chord_s,
                ));
            }
        }
        if let Some(celery) = &self.celery_redis {
            out.push((
                "canvas:celery_redis_chord_over_celery_plain",
                celery.chord_s / celery.plain_s,
            ));
        }
        out
    }
}

/// One run: `rpc://`, then the Redis backend and Celery when Redis is
/// reachable (`redis`) and Celery is (`python`).
pub async fn bench(cfg: &Config, python: Option<&Path>, redis: bool) -> Result<CanvasRun> {
    let rpc = side(cfg, "rpc://").await?;
    let (mut redis_side, mut celery_redis, mut celery_error) = (None, None, None);
    if redis {
        redis_side = Some(side(cfg, &cfg.redis_url).await?);
        if let Some(python) = python {
            match celery_side(cfg, python).await {
                Ok(celery) => celery_redis = Some(celery),
                Err(error) => {
                    eprint!("(celery's side failed: {error:#}) ");
                    celery_error = Some(format!("{error:#}"));
                }
            }
        }
    }
    Ok(CanvasRun {
        n: cfg.canvas_n,
        chain_steps: cfg.chain_steps,
        rpc,
        redis: redis_side,
        celery_redis,
        celery_error,
    })
}

/// The framework on `backend`: plain, group, chord, chain, round trips.
async fn side(cfg: &Config, backend: &str) -> Result<CanvasSide> {
    let conn = admin::connect(&cfg.broker).await?;
    let label = if backend.starts_with("rpc") {
        "canvas-rpc"
    } else {
        "canvas-redis"
    };
    let queue = admin::unique_queue(label, true);
    let mut worker = redis_backend::spawn_worker(cfg, &queue, backend)?;
    admin::wait_for_consumer(&conn, &queue, Duration::from_secs(30), || {
        worker.check_alive()
    })
    .await?;
    let app = App::builder()
        .broker_url(cfg.broker.clone())
        .result_backend(backend)
        .default_queue(&queue)
        .set_as_default(false)
        .connect()
        .await
        .context("the canvas section's client app")?;
    let mut keys = Vec::new();
    let outcome = measure(cfg, &app, &queue, &mut keys).await;
    if !backend.starts_with("rpc") {
        let mut redis = RedisAdmin::connect(backend).await?;
        redis.delete_results(keys).await?;
    }
    worker.terminate(Duration::from_secs(10))?;
    app.close().await?;
    admin::delete(&conn, &queue, true).await?;
    let _ = conn.close(200, "done".into()).await;
    let (plain_s, group_s, chord_s, chain_s, round_trip) = outcome?;
    Ok(CanvasSide {
        backend: task_core::broker::redact(backend),
        plain_s,
        group_s,
        chord_s,
        chain_s,
        round_trip,
    })
}

type Timings = (f64, f64, f64, f64, Option<Latency>);

async fn measure(cfg: &Config, app: &App, queue: &str, keys: &mut Vec<String>) -> Result<Timings> {
    let n = cfg.canvas_n;
    let add_on = |i: usize| add.s(i as i64, 1).queue(queue.to_owned());
    let expected: Vec<i64> = (0..n as i64).map(|i| i + 1).collect();
    // Warm-up: connections, queues, the worker's first tasks.
    plain(app, (0..200.min(n)).map(add_on).collect(), keys).await?;

    let started = Instant::now();
    let values = plain(app, (0..n).map(add_on).collect(), keys).await?;
    let plain_s = started.elapsed().as_secs_f64();
    ensure!(values == expected, "plain calls returned wrong values");

    let started = Instant::now();
    let sent = group((0..n).map(add_on)).apply_async_with(app).await?;
    let values = sent.get(RESULT_TIMEOUT).await?;
    let group_s = started.elapsed().as_secs_f64();
    keys.extend(sent.results().iter().map(|r| r.id().to_owned()));
    ensure!(values == expected, "the group returned wrong values");

    let started = Instant::now();
    let body = sum_all.partial().with(|s| s.queue(queue.to_owned()));
    let total = chord(group((0..n).map(add_on)), body)
        .apply_async_with(app)
        .await?;
    let sum = total.get(RESULT_TIMEOUT).await?;
    let chord_s = started.elapsed().as_secs_f64();
    keys.push(total.id().to_owned());
    ensure!(
        sum == expected.iter().sum::<i64>(),
        "the chord's body returned {sum}"
    );

    let steps = cfg.chain_steps.max(1);
    let mut long = chain(add.s(0, 1).queue(queue.to_owned()));
    for _ in 1..steps {
        long = long.then(add.partial(1).with(|s| s.queue(queue.to_owned())));
    }
    let started = Instant::now();
    let last = long.apply_async_with(app).await?;
    let value = last.get(RESULT_TIMEOUT).await?;
    let chain_s = started.elapsed().as_secs_f64();
    keys.push(last.id().to_owned());
    ensure!(value == steps as i64, "the chain returned {value}");

    let mut samples = Vec::with_capacity(220);
    for i in 0..220 {
        let started = Instant::now();
        let result = add_on(i).apply_async_with(app).await?;
        let _ = result.get(RESULT_TIMEOUT).await?;
        if i >= 20 {
            samples.push(started.elapsed());
        }
        keys.push(result.id().to_owned());
    }
    Ok((plain_s, group_s, chord_s, chain_s, Latency::of(&samples)))
}

/// Sends every call at once, then reads every value in order.
async fn plain(
    app: &App,
    calls: Vec<task_core::Signature<i64>>,
    keys: &mut Vec<String>,
) -> Result<Vec<i64>> {
    let handles =
        futures_util::future::try_join_all(calls.into_iter().map(|c| c.apply_async_with(app)))
            .await?;
    let mut values = Vec::with_capacity(handles.len());
    for handle in &handles {
        values.push(handle.get(RESULT_TIMEOUT).await?);
        keys.push(handle.id().to_owned());
    }
    Ok(values)
}

/// Celery on its Redis backend: the same plain calls and chord.
async fn celery_side(cfg: &Config, python: &Path) -> Result<CelerySide> {
    let conn = admin::connect(&cfg.broker).await?;
    let queue = admin::unique_queue("canvas-celery", true);
    let mut worker = celery::spawn_worker(cfg, python, &queue, Some(&cfg.redis_url))?;
    let measured = async {
        admin::wait_for_consumer(&conn, &queue, Duration::from_secs(60), || {
            worker.check_alive()
        })
        .await?;
        celery_timings(cfg, python, &queue).await
    }
    .await;
    worker.terminate(Duration::from_secs(15))?;
    admin::delete(&conn, &queue, true).await?;
    let _ = conn.close(200, "done".into()).await;
    measured
}

async fn celery_timings(cfg: &Config, python: &Path, queue: &str) -> Result<CelerySide> {
    let queue = queue.to_owned();
    let backend = Some(cfg.redis_url.as_str());
    let n = cfg.canvas_n.to_string();
    celery::client(
        cfg,
        python,
        &queue,
        backend,
        &["warm".into(), "200".into(), "64".into()],
    )
    .await?;
    let burst = celery::client(cfg, python, &queue, backend, &["burst".into(), n.clone()]).await?;
    let chord = celery::client(cfg, python, &queue, backend, &["chord".into(), n]).await?;
    Ok(CelerySide {
        plain_s: celery::number(&burst, "seconds")?,
        chord_s: celery::number(&chord, "seconds")?,
    })
}

/// The section's lines of the report: medians over the runs.
pub fn print(runs: &[CanvasRun]) {
    if runs.is_empty() {
        return;
    }
    let median = |mut values: Vec<f64>| -> Option<f64> {
        values.retain(|v| v.is_finite());
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    };
    let (n, steps) = (runs[0].n, runs[0].chain_steps);
    println!("\ncanvas: {n} tasks.add at once, a chain of {steps} steps (median seconds)");
    let line = |label: &str, pick: &dyn Fn(&CanvasRun) -> Option<f64>| {
        let shown = median(runs.iter().filter_map(pick).collect())
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
        println!("  {label:<44} {shown:>9}");
    };
    line("framework rpc://: plain calls", &|r| Some(r.rpc.plain_s));
    line("framework rpc://: group", &|r| Some(r.rpc.group_s));
    line("framework rpc://: chord (joined on RabbitMQ)", &|r| {
        Some(r.rpc.chord_s)
    });
    line("framework rpc://: chain", &|r| Some(r.rpc.chain_s));
    line("framework redis: plain calls", &|r| {
        r.redis.as_ref().map(|s| s.plain_s)
    });
    line("framework redis: group", &|r| {
        r.redis.as_ref().map(|s| s.group_s)
    });
    line("framework redis: chord (Celery's protocol)", &|r| {
        r.redis.as_ref().map(|s| s.chord_s)
    });
    line("framework redis: chain", &|r| {
        r.redis.as_ref().map(|s| s.chain_s)
    });
    line("celery redis: plain calls", &|r| {
        r.celery_redis.as_ref().map(|s| s.plain_s)
    });
    line("celery redis: chord", &|r| {
        r.celery_redis.as_ref().map(|s| s.chord_s)
    });
    for (k, run) in runs.iter().enumerate() {
        if let Some(error) = &run.celery_error {
            let first_line = error.lines().next().unwrap_or_default();
            println!("  (run {}: Celery's side failed: {first_line})", k + 1);
        }
    }
}
