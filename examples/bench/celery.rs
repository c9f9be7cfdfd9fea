//! Python Celery 5.7 on the same broker: a prefork worker (`-c 2`) running
//! tests/interop/pyapp.py's `tasks.add` (through `celery_bench.py`) and a
//! Python client (`celery_client.py`) using `tasks_add.delay(..)` and
//! `rpc://` results (or, for the `redis` section, Celery's Redis backend:
//! `BENCH_RESULT_BACKEND`, see `celery_bench.py`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::child::ChildProc;
use crate::raw::{broker_per_10k, per_10k, per_task};
use crate::sys::{self, Latency};
use crate::{admin, Config, SideRun};

/// The interop venv's python (`scripts/ensure-python-celery.sh` builds it
/// if needed), or why there is none.
pub fn find_python() -> Result<PathBuf, String> {
    let root = sys::workspace_root();
    let out = Command::new("bash")
        .arg(root.join("scripts/ensure-python-celery.sh"))
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run scripts/ensure-python-celery.sh: {e}"))?;
    let python = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || python.is_empty() || !Path::new(&python).exists() {
        return Err(format!(
            "no Celery venv (scripts/ensure-python-celery.sh failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(python))
}

fn python_path() -> String {
    let root = sys::workspace_root();
    format!(
        "{}:{}",
        root.join("examples/bench").display(),
        root.join("tests/interop").display()
    )
}

/// The Celery app's environment: broker, queue, result backend (`None`:
/// `rpc://`).
fn celery_env(command: &mut Command, cfg: &Config, queue: &str, backend: Option<&str>) {
    command
        .current_dir(sys::workspace_root().join("examples/bench"))
        .env("PYTHONPATH", python_path())
        .env("BROKER_URL", &cfg.broker)
        .env("BENCH_QUEUE", queue);
    match backend {
        Some(url) => command.env("BENCH_RESULT_BACKEND", url),
        None => command.env_remove("BENCH_RESULT_BACKEND"),
    };
}

/// Runs the client script in `mode`; its last stdout line is JSON.
pub async fn client(
    cfg: &Config,
    python: &Path,
    queue: &str,
    backend: Option<&str>,
    args: &[String],
) -> Result<Value> {
    let mut command = Command::new(python);
    command
        .arg(sys::workspace_root().join("examples/bench/celery_client.py"))
        .args(args);
    celery_env(&mut command, cfg, queue, backend);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    if !output.status.success() {
        bail!(
            "celery client {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("celery client printed {stdout:?}"))
}

pub fn number(value: &Value, key: &str) -> Result<f64> {
    value[key]
        .as_f64()
        .with_context(|| format!("celery client output has no `{key}`: {value}"))
}

/// One Celery run.
pub async fn bench(cfg: &Config, python: &Path) -> Result<SideRun> {
    let mut out = SideRun::default();
    let admin = admin::connect(&cfg.broker).await?;
    let n = cfg.celery_n;

    // 1. Sending alone (no worker yet).
    let queue = admin::unique_queue("celery-pub", true);
    let sent = client(
        cfg,
        python,
        &queue,
        None,
        &["publish".into(), n.to_string()],
    )
    .await?;
    out.publish_rate = Some(n as f64 / number(&sent, "seconds")?);
    admin::delete(&admin, &queue, true).await?;

    // 2. and 3.: round trips, then one at a time.
    round_trip_side(cfg, python, &admin, None, None, "celery", &mut out).await?;
    let _ = admin.close(200, "done".into()).await;
    Ok(out)
}

/// A Celery prefork worker (`-c 2`) on `queue` with this result backend
/// (`None`: `rpc://`).
pub fn spawn_worker(
    cfg: &Config,
    python: &Path,
    queue: &str,
    backend: Option<&str>,
) -> Result<ChildProc> {
    let mut command = Command::new(python);
    command
        .args(["-m", "celery", "-A", "celery_bench", "worker", "-Q", queue])
        .args(["-c", "2", "-P", "prefork", "--loglevel", "WARNING"])
        .args([
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ])
        .args(["-n", &format!("{queue}@%h")]);
    celery_env(&mut command, cfg, queue, backend);
    ChildProc::spawn("celery worker", command)
}

/// Round trips through a prefork worker (`window` in flight), then one at
/// a time, with this result backend (`None`: `rpc://`) on both sides; with
/// `redis_pid`, the redis-server's CPU over the round trips too.
pub async fn round_trip_side(
    cfg: &Config,
    python: &Path,
    admin: &lapin::Connection,
    backend: Option<&str>,
    redis_pid: Option<u32>,
    label: &str,
    out: &mut SideRun,
) -> Result<()> {
    let (n, seq) = (cfg.celery_n, cfg.celery_seq);
    let queue = admin::unique_queue(label, true);
    let mut worker = spawn_worker(cfg, python, &queue, backend)?;
    admin::wait_for_consumer(admin, &queue, Duration::from_secs(60), || {
        worker.check_alive()
    })
    .await?;
    let window = cfg.window.to_string();
    client(
        cfg,
        python,
        &queue,
        backend,
        &["warm".into(), cfg.warmup.min(n).to_string(), window.clone()],
    )
    .await?;
    let worker_before = worker.cpu_seconds();
    let broker_before = sys::broker_cpu_seconds();
    let redis_cpu = || redis_pid.and_then(sys::process_cpu_seconds);
    let redis_before = redis_cpu();
    let switches = worker.context_switches();
    let e2e = client(
        cfg,
        python,
        &queue,
        backend,
        &["e2e".into(), n.to_string(), window],
    )
    .await?;
    let worker_after = worker.cpu_seconds();
    // The client deletes its result keys after its timing: the Redis CPU
    // of the deletion is in here, a small share of the stores'.
    out.redis_cpu_s_per_10k = redis_cpu()
        .zip(redis_before)
        .map(|(after, before)| per_10k(after - before, n));
    out.worker_ctx_switches_per_task = per_task(Some(switches), Some(worker.context_switches()), n);
    out.broker_cpu_s_per_10k = broker_per_10k(broker_before, n);
    out.e2e_rate = Some(n as f64 / number(&e2e, "seconds")?);
    out.client_cpu_s_per_10k = Some(per_10k(number(&e2e, "cpu_seconds")?, n));
    out.worker_cpu_s_per_10k = Some(per_10k(worker_after - worker_before, n));

    // 3. One at a time (the client warms up with a few calls first).
    let timed = client(
        cfg,
        python,
        &queue,
        backend,
        &["seq".into(), (seq + 20).to_string()],
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
        "Celery's defaults: no publisher confirms, prefetch multiplier 4, prefork -c 2; \
         worker CPU and RSS are the main process plus its pool"
            .into(),
    );
    worker.terminate(Duration::from_secs(15))?;
    admin::delete(admin, &queue, true).await?;
    Ok(())
}
