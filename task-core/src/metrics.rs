//! The metrics clients and workers record (through the `metrics` facade),
//! and whether they record them at all: only once the process installed a
//! recorder and said so ([`set_enabled`], done by the worker's
//! `--metrics-addr`), so that a process without one pays one atomic load
//! per record, not the facade's calls.

use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Records metrics from now on (a recorder is installed), or not.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether metrics are recorded.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Tasks published and confirmed by this process's apps (a counter).
pub const PUBLISHED: &str = "task_client_published_total";

/// Seconds from publish to the broker's confirm (a histogram).
pub const PUBLISH_SECONDS: &str = "task_client_publish_seconds";

/// Runs a periodic-task scheduler sent, by entry (a counter).
pub const BEAT_RUNS: &str = "task_beat_runs_total";

/// From a run's scheduled time to its confirmed publish (a histogram).
pub const BEAT_LATENESS: &str = "task_beat_lateness_seconds";

/// 1 while this process's scheduler leads its group, else 0 (a gauge).
pub const BEAT_LEADING: &str = "task_beat_leading";
