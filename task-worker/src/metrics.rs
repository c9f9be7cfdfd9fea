//! Prometheus metrics of a worker (and of the clients in its process),
//! through the `metrics` facade and `metrics-exporter-prometheus`: served
//! on `--metrics-addr` ([`serve`]). Without it nothing is recorded, at the
//! cost of one atomic load per record (`task_core::metrics::enabled`).
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `task_worker_tasks_total` | counter | `task`, `state`: the outcome (`succeeded`, `failed`, `retried`, `revoked`, `rejected`, `requeued`, `deferred`, `replaced`, `ignored`) |
//! | `task_worker_task_runtime_seconds` | histogram | `task` |
//! | `task_worker_queue_wait_seconds` | histogram | `task`: from publish (or the ETA, if later) to the start of the run; for messages that say when they were published (this framework's clients and workers; Celery's do not) |
//! | `task_worker_tasks_active` | gauge | tasks running now |
//! | `task_worker_messages_held` | gauge | messages taken from the queues and not yet settled (the prefetch in use) |
//! | `task_worker_rate_limit_waits_total` | counter | `task`: runs that waited for their rate-limit turn |
//! | `task_worker_broker_reconnects_total` | counter | |
//! | `task_client_published_total` | counter | tasks published (confirmed) by apps in the process |
//! | `task_client_publish_seconds` | histogram | publish to confirm |

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

/// Tasks by name and outcome.
pub(crate) const TASKS: &str = "task_worker_tasks_total";
/// Body run time by task.
pub(crate) const RUNTIME: &str = "task_worker_task_runtime_seconds";
/// From publish (or ETA) to start, by task.
pub(crate) const QUEUE_WAIT: &str = "task_worker_queue_wait_seconds";
/// Tasks running now.
pub(crate) const ACTIVE: &str = "task_worker_tasks_active";
/// Messages held (prefetch in use).
pub(crate) const HELD: &str = "task_worker_messages_held";
/// Rate-limit waits by task.
pub(crate) const RATE_LIMIT_WAITS: &str = "task_worker_rate_limit_waits_total";
/// Lost broker connections the worker resumed from.
pub(crate) const RECONNECTS: &str = "task_worker_broker_reconnects_total";

/// The histograms' buckets, in seconds: from a millisecond to five minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {reason}")]
pub struct MetricsError {
    addr: SocketAddr,
    reason: String,
}

/// Records this process's metrics from now on and serves them for
/// Prometheus at `http://<addr>/metrics` (any path answers), on the
/// current tokio runtime. Once per process: the recorder is global.
pub fn serve(addr: SocketAddr) -> Result<(), MetricsError> {
    let failed = |reason: String| MetricsError { addr, reason };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(BUCKETS)
        .map_err(|error| failed(error.to_string()))?
        .install()
        .map_err(|error| failed(error.to_string()))?;
    describe();
    task_core::metrics::set_enabled(true);
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(TASKS, "Tasks by name and outcome");
    describe_histogram!(RUNTIME, Unit::Seconds, "How long task bodies ran");
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "From publish (or the ETA, if later) to the start of the run"
    );
    describe_gauge!(ACTIVE, "Tasks running now");
    describe_counter!(
        task_core::metrics::BEAT_RUNS,
        "Runs the periodic-task scheduler sent, by entry"
    );
    describe_histogram!(
        task_core::metrics::BEAT_LATENESS,
        Unit::Seconds,
        "From a periodic run's scheduled time to its confirmed publish"
    );
    describe_gauge!(
        task_core::metrics::BEAT_LEADING,
        "1 while this process's scheduler leads its group"
    );
    describe_gauge!(HELD, "Messages taken from the queues and not yet settled");
    describe_counter!(
        RATE_LIMIT_WAITS,
        "Runs that waited for their rate-limit turn"
    );
    describe_counter!(
        RECONNECTS,
        "Lost broker connections the worker resumed from"
    );
    describe_counter!(
        task_core::metrics::PUBLISHED,
        "Tasks published and confirmed by this process's apps"
    );
    describe_histogram!(
        task_core::metrics::PUBLISH_SECONDS,
        Unit::Seconds,
        "From publish to the broker's confirm"
    );
}
