//! Events (`--only events`, also in `--all`): what Celery's task events
//! cost. Round trips against the example worker binary with task events on
//! (`-E`) and a monitor attached (an `EventReceiver` in this process taking
//! every event, as Flower would), against the same worker without `-E`, in
//! the same run; the order alternates between runs. Worker events
//! (heartbeats) and remote control run in both: they are part of the
//! no-events figure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::{admin, framework, Config};

/// One run of the section.
#[derive(Debug, Clone, Serialize)]
pub struct EventsRun {
    pub n: usize,
    /// Round trips per second without task events.
    pub off_rate: f64,
    /// Round trips per second with task events on and a monitor.
    pub on_rate: f64,
    /// Task events the monitor received during the measured round trips.
    pub task_events_received: u64,
}

impl EventsRun {
    /// The ratios this run contributes (`events:` keys).
    pub fn ratios(&self) -> Vec<(&'static str, f64)> {
        vec![("events:on_over_off", self.on_rate / self.off_rate)]
    }
}

/// Both sides, `on_first` or not.
pub async fn bench(cfg: &Config, on_first: bool) -> Result<EventsRun> {
    let (off_rate, on) = if on_first {
        let on = side(cfg, true).await?;
        (side(cfg, false).await?.0, on)
    } else {
        let off = side(cfg, false).await?;
        (off.0, side(cfg, true).await?)
    };
    Ok(EventsRun {
        n: cfg.n,
        off_rate,
        on_rate: on.0,
        task_events_received: on.1,
    })
}

/// Round trips per second with or without task events, and the task
/// events a monitor received meanwhile.
async fn side(cfg: &Config, events: bool) -> Result<(f64, u64)> {
    let admin = admin::connect(&cfg.broker).await?;
    let queue = admin::unique_queue(if events { "ev-on" } else { "ev-off" }, true);
    let extra: &[&str] = if events { &["-E"] } else { &[] };
    let worker = framework::spawn_worker_with(cfg, &admin, &queue, extra).await?;
    let app = framework::client_app(cfg, &queue).await?;
    let received = Arc::new(AtomicU64::new(0));
    let monitor = if events {
        let mut receiver = app.events().await?;
        let received = Arc::clone(&received);
        Some(tokio::spawn(async move {
            while let Some(event) = receiver.next().await {
                if event.is_ok_and(|e| e.kind.task_id().is_some()) {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }))
    } else {
        None
    };
    framework::round_trips(cfg.warmup, cfg.window, None, true).await?;
    let before = received.load(Ordering::Relaxed);
    let rate = framework::round_trips(cfg.n, cfg.window, None, true).await?;
    worker.terminate(Duration::from_secs(10))?;
    let got = received.load(Ordering::Relaxed) - before;
    if let Some(monitor) = monitor {
        monitor.abort();
    }
    app.close().await?;
    admin::delete(&admin, &queue, true).await?;
    let _ = admin.close(200, "done".into()).await;
    Ok((rate, got))
}

/// Prints the section's medians.
pub fn print(runs: &[EventsRun]) {
    if runs.is_empty() {
        return;
    }
    let median = |mut values: Vec<f64>| -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let off = median(runs.iter().map(|r| r.off_rate).collect());
    let on = median(runs.iter().map(|r| r.on_rate).collect());
    let ratio = median(runs.iter().map(|r| r.on_rate / r.off_rate).collect());
    println!(
        "\nevents: {} round trips (median): task events off {off:.0}/s, on with a monitor \
         {on:.0}/s; on/off {ratio:.3} (goal >= 0.85); task events received per run: {:?}",
        runs[0].n,
        runs.iter()
            .map(|r| r.task_events_received)
            .collect::<Vec<_>>()
    );
}
