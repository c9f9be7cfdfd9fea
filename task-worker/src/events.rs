//! [`WorkerEvents`]: the events a worker sends (CELERY_OPERATIONS.md §2):
//! `worker-online`, a `worker-heartbeat` every 2 s and `worker-offline`
//! always (Flower's online status comes from them), and task events while
//! they are enabled (`-E`, or the `enable_events` command), in batches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use task_core::events::{EventDispatcher, EventKind, WorkerStatus};

/// Celery's heartbeat interval.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// How long sending one worker event may take (the broker may be away).
const SEND_WITHIN: Duration = Duration::from_secs(2);

/// Sends this worker's events.
#[derive(Debug)]
pub(crate) struct WorkerEvents {
    dispatcher: EventDispatcher,
    task_events: AtomicBool,
}

impl WorkerEvents {
    pub(crate) fn new(dispatcher: EventDispatcher, task_events: bool) -> Self {
        Self {
            dispatcher,
            task_events: AtomicBool::new(task_events),
        }
    }

    /// Whether task events are sent now.
    pub(crate) fn task_events(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Turns task events on or off; returns whether that changed anything.
    pub(crate) fn set_task_events(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed) != on
    }

    /// Adds a task event to the next batch (only call while
    /// [`WorkerEvents::task_events`]).
    pub(crate) fn task(&self, kind: EventKind) {
        self.dispatcher.buffer(kind);
    }

    /// Sends a worker event now (logged, never failing the worker). Gives
    /// up after [`SEND_WITHIN`]: while the broker is away an event waits
    /// for the reconnection, and must not hold up a heartbeat's successor
    /// or the worker's shutdown.
    pub(crate) async fn worker(&self, kind: EventKind) {
        match tokio::time::timeout(SEND_WITHIN, self.dispatcher.send(kind)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "could not send a worker event"),
            Err(_) => tracing::debug!("a worker event was not sent in time; dropped"),
        }
    }

    /// Sends the task events waiting for their batch (giving up after
    /// [`SEND_WITHIN`], as [`WorkerEvents::worker`]).
    pub(crate) async fn flush(&self) {
        match tokio::time::timeout(SEND_WITHIN, self.dispatcher.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "could not send task events"),
            Err(_) => tracing::debug!("task events were not sent in time; dropped"),
        }
    }
}

/// A worker event's fields: `active` and `processed` counts, with the load
/// average, as Celery's heartbeat sends them.
pub(crate) fn worker_status(freq: f64, counts: Option<(u64, u64)>) -> WorkerStatus {
    WorkerStatus {
        freq,
        active: counts.map(|(active, _)| active),
        processed: counts.map(|(_, processed)| processed),
        loadavg: counts.map(|_| load_average()),
        sw_ident: env!("CARGO_PKG_NAME").to_owned(),
        sw_ver: env!("CARGO_PKG_VERSION").to_owned(),
        sw_sys: system_name(),
    }
}

/// The host's 1, 5 and 15 minute load averages (zeros where the system
/// does not say).
fn load_average() -> Vec<f64> {
    let read = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut loads: Vec<f64> = read
        .split_whitespace()
        .take(3)
        .map(|field| field.parse().unwrap_or(0.0))
        .collect();
    loads.resize(3, 0.0);
    loads
}

/// Python's `platform.system()`: `Linux`, `Darwin`, `Windows`.
fn system_name() -> String {
    match std::env::consts::OS {
        "linux" => "Linux".into(),
        "macos" => "Darwin".into(),
        "windows" => "Windows".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_has_counts_and_the_load_and_a_manual_one_has_neither() {
        let beat = worker_status(2.0, Some((1, 7)));
        assert_eq!((beat.active, beat.processed), (Some(1), Some(7)));
        assert_eq!(beat.loadavg.map(|l| l.len()), Some(3));
        let manual = worker_status(5.0, None);
        assert!(manual.active.is_none() && manual.loadavg.is_none());
    }
}
