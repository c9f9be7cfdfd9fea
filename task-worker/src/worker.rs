//! [`Worker`]: consumes task queues and runs each message's task, at most
//! `concurrency` at a time, until told to stop.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use task_core::broker::{
    check_task_queue_name, BrokerError, ConsumeOptions, Credentials, DeadLetterRetention,
    QueueType, TlsOptions,
};
use task_core::pipeline::{Expiry, Pipeline, Slot, Stage, TaskSettings};
use task_core::protocol::chord_join;
use task_core::registry::DuplicateTaskName;
use task_core::{App, Registry, States};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use task_core::control::{host_name, node_name};
use task_core::events::{EventDispatcher, EventKind};

use crate::autoscale::{self, Autoscale, Autoscaler};
use crate::canvas::Canvas;
use crate::chord_entries::ChordEntries;
use crate::events::{worker_status, WorkerEvents, HEARTBEAT_EVERY};
use crate::executor::Executor;
use crate::expired;
use crate::node::{Node, NodeParts, QueueChange};
use crate::rate_limiter;
use crate::remote_control;
use crate::resume::drain_until_stopped;
use crate::revoke_log;
use crate::settle::{RequeueBackoff, Settler, Warnings, WorkerResults};
use crate::stages;

/// Why a worker could not start or stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Could not connect to the broker.
    #[error("could not connect to the broker: {0}")]
    Connect(#[from] task_core::Error),
    /// The broker refused an operation or the connection was lost.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Two tasks share a name: the worker refuses to guess which to run.
    #[error(transparent)]
    DuplicateTaskName(#[from] DuplicateTaskName),
    /// The worker was given no queue to consume.
    #[error("the worker has no queue to consume")]
    NoQueues,
    /// A queue cannot be a task queue: its name, or a name derived from it
    /// (its dead-letter queue, its delayed-delivery routing key), is too
    /// long for AMQP.
    #[error("queue `{queue}` cannot be consumed: {source}")]
    InvalidQueue {
        /// The queue given.
        queue: String,
        /// What does not fit.
        source: BrokerError,
    },
    /// A queue to consume exists with other settings than this worker
    /// declares it with (another type, delivery limit, priority, dead-letter
    /// exchange): RabbitMQ refuses a declaration that differs.
    #[error(
        "queue `{queue}` exists with other settings than this worker's: every peer must \
         declare it alike (the same queue type, delivery limit and priority; Python peers: \
         the same task_default_queue_type and queue_arguments): {source}"
    )]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// RabbitMQ's refusal (406, naming the argument that differs).
        source: BrokerError,
    },
    /// A task takes a `State<T>` the worker was not given.
    #[error(
        "task `{task}` takes a `State<{state}>`, which this worker does not provide: \
         give it with `WorkerBuilder::state(..)`"
    )]
    MissingState {
        /// The task.
        task: &'static str,
        /// The type of the missing state.
        state: &'static str,
    },
    /// The metrics endpoint could not start (`--metrics-addr`).
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The embedded scheduler (`-B`) cannot be built: an invalid entry or
    /// schedule file.
    #[error(transparent)]
    Beat(#[from] task_core::beat::BeatError),
    /// A setting is out of range.
    #[error("invalid worker setting `{setting}`: {reason}")]
    InvalidSetting {
        /// The setting (`concurrency`, `prefetch`).
        setting: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Configures a [`Worker`].
#[derive(Clone)]
pub struct WorkerBuilder {
    app: Option<App>,
    broker_url: Option<String>,
    tls: Option<TlsOptions>,
    credentials: Option<Credentials>,
    queue_type: QueueType,
    delivery_limit: Option<u32>,
    queues: Vec<String>,
    concurrency: usize,
    autoscale: Option<Autoscale>,
    autoscale_keepalive: Duration,
    prefetch: Option<u16>,
    shutdown_timeout: Duration,
    max_message_size: usize,
    ack_timeout: Option<Duration>,
    dead_letter_retention: DeadLetterRetention,
    registry: Option<Registry>,
    states: States,
    hooks: Hooks,
    result_backend: Option<String>,
    result_expires: Option<Option<Duration>>,
    result_extended: Option<bool>,
    result_backend_tls: Option<TlsOptions>,
    result_store_deadline: Duration,
    node_name: String,
    task_events: bool,
    heartbeat: bool,
    remote_control: bool,
}

impl std::fmt::Debug for WorkerBuilder {
    /// URLs without their passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |url: &Option<String>| url.as_deref().map(task_core::broker::redact);
        f.debug_struct("WorkerBuilder")
            .field("app", &self.app)
            .field("broker_url", &redacted(&self.broker_url))
            .field("tls", &self.tls)
            .field("credentials", &self.credentials)
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("autoscale", &self.autoscale)
            .field("prefetch", &self.prefetch)
            .field("result_backend", &redacted(&self.result_backend))
            .field("node_name", &self.node_name)
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

/// User code called at a point of the worker's life.
type LifecycleHook = Arc<dyn Fn(&Worker) + Send + Sync>;

/// What user code adds around tasks and the worker's life.
#[derive(Clone, Default)]
struct Hooks {
    /// Stages run after the worker's own, just before each task.
    stages: Vec<Arc<dyn Stage>>,
    /// Called once consuming has started.
    ready: Vec<LifecycleHook>,
    /// Called once the worker has stopped (its tasks finished or stopped).
    shutdown: Vec<LifecycleHook>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("stages", &self.stages.len())
            .field("ready", &self.ready.len())
            .field("shutdown", &self.shutdown.len())
            .finish()
    }
}

/// How long a task may keep its message unacknowledged by default: a day,
/// far above RabbitMQ's 30-minute `consumer_timeout`, so long tasks do not
/// get the channel closed under them (RabbitMQ 3.11.15+).
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How long storing one result in the result backend is tried (with
/// backoff) before the task's message goes back to its queue instead.
pub const DEFAULT_RESULT_STORE_DEADLINE: Duration = Duration::from_secs(60);

/// The default limit on a task message's body: larger ones are dead-lettered.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

impl Default for WorkerBuilder {
    fn default() -> Self {
        Self {
            app: None,
            broker_url: None,
            tls: None,
            credentials: None,
            queue_type: QueueType::default(),
            delivery_limit: None,
            queues: Vec::new(),
            concurrency: std::thread::available_parallelism().map_or(4, usize::from),
            autoscale: None,
            autoscale_keepalive: crate::autoscale::DEFAULT_KEEPALIVE,
            prefetch: None,
            shutdown_timeout: Duration::from_secs(30),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            ack_timeout: Some(DEFAULT_ACK_TIMEOUT),
            dead_letter_retention: DeadLetterRetention::default(),
            registry: None,
            states: States::new(),
            hooks: Hooks::default(),
            result_backend: None,
            result_expires: None,
            result_extended: None,
            result_backend_tls: None,
            result_store_deadline: DEFAULT_RESULT_STORE_DEADLINE,
            node_name: DEFAULT_NODE_NAME.to_owned(),
            task_events: false,
            heartbeat: true,
            remote_control: true,
        }
    }
}

/// Celery's default node name template: `celery@` and the host name.
pub const DEFAULT_NODE_NAME: &str = "celery@%h";

impl WorkerBuilder {
    /// The worker's node name, as Celery's `-n` takes it: `%h` the host
    /// name, `%n` its first label, `%d` its domain; `celery@` is put in
    /// front of a name without `@`. Default `celery@%h`. Remote control
    /// and events know the worker by it: give each worker on a host its
    /// own.
    pub fn node_name(mut self, template: impl Into<String>) -> Self {
        self.node_name = template.into();
        self
    }

    /// Sends task events (`task-received`, `task-started`,
    /// `task-succeeded`, ...) from the start, as Celery's `-E`; they can
    /// also be turned on and off while the worker runs (the
    /// `enable_events` / `disable_events` commands, which Flower sends).
    /// Off by default.
    pub fn task_events(mut self, on: bool) -> Self {
        self.task_events = on;
        self
    }

    /// Sends `worker-online`, a `worker-heartbeat` every 2 s and
    /// `worker-offline` (what Flower's online status reads). On by
    /// default; Celery's `--without-heartbeat` turns it off.
    pub fn heartbeat(mut self, on: bool) -> Self {
        self.heartbeat = on;
        self
    }

    /// Answers remote control (`celery inspect`, `celery control`,
    /// Flower's buttons). On by default.
    pub fn remote_control(mut self, on: bool) -> Self {
        self.remote_control = on;
        self
    }

    /// Connect to this broker (default: `$BROKER_URL`, else the local RabbitMQ).
    pub fn broker_url(mut self, url: impl Into<String>) -> Self {
        self.broker_url = Some(url.into());
        self
    }

    /// TLS settings for an `amqps://` broker URL (see
    /// [`AppBuilder::tls`](task_core::AppBuilder::tls)); not used with
    /// [`WorkerBuilder::app`], whose app is connected already.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The broker user and password for nodes whose URL names none (see
    /// [`AppBuilder::credentials`](task_core::AppBuilder::credentials);
    /// default: from the environment); not used with [`WorkerBuilder::app`].
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The type of the task queues the worker declares (see
    /// [`AppBuilder::queue_type`](task_core::AppBuilder::queue_type):
    /// quorum queues, their dead-letter queues and delay levels; Celery's
    /// `task_default_queue_type`; default classic); not used with
    /// [`WorkerBuilder::app`], whose app has its own.
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// The poison-message guard of quorum task queues (see
    /// [`AppBuilder::delivery_limit`](task_core::AppBuilder::delivery_limit));
    /// not used with [`WorkerBuilder::app`].
    pub fn delivery_limit(mut self, limit: Option<u32>) -> Self {
        self.delivery_limit = limit;
        self
    }

    /// Store results in this backend (see
    /// [`AppBuilder::result_backend`](task_core::AppBuilder::result_backend);
    /// default: `$RESULT_BACKEND`, else `rpc://`); not used with
    /// [`WorkerBuilder::app`], whose app has its backend already.
    pub fn result_backend(mut self, url: impl Into<String>) -> Self {
        self.result_backend = Some(url.into());
        self
    }

    /// How long the backend keeps results (Celery's `result_expires`,
    /// default one day, `None`: until forgotten); not used with
    /// [`WorkerBuilder::app`].
    pub fn result_expires(mut self, expires: Option<Duration>) -> Self {
        self.result_expires = Some(expires);
        self
    }

    /// Store each task's name, arguments, worker, retries and queue with its
    /// result (Celery's `result_extended`); not used with
    /// [`WorkerBuilder::app`].
    pub fn result_extended(mut self, yes: bool) -> Self {
        self.result_extended = Some(yes);
        self
    }

    /// TLS settings for a `rediss://` result backend (see
    /// [`AppBuilder::result_backend_tls`](task_core::AppBuilder::result_backend_tls));
    /// not used with [`WorkerBuilder::app`].
    pub fn result_backend_tls(mut self, tls: TlsOptions) -> Self {
        self.result_backend_tls = Some(tls);
        self
    }

    /// How long storing one result is tried while the backend is
    /// unreachable before the task's message goes back to its queue to run
    /// again (default [`DEFAULT_RESULT_STORE_DEADLINE`]). The message is
    /// never acked before its result is stored.
    pub fn result_store_deadline(mut self, deadline: Duration) -> Self {
        self.result_store_deadline = deadline;
        self
    }

    /// Use an already-connected app (its queue declarations included).
    pub fn app(mut self, app: App) -> Self {
        self.app = Some(app);
        self
    }

    /// Consume these queues (default: the app's default queue, `celery`,
    /// and every queue a registered task names as its default, as
    /// `#[task(queue = "...")]`).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Run at most this many tasks at once (default: the number of CPUs).
    /// Zero is refused by [`WorkerBuilder::build`].
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sizes the concurrency to the work (Celery's `--autoscale MAX,MIN`):
    /// the worker starts with `min` slots, grows every second to the tasks
    /// it holds, up to `max`, and shrinks back towards `min` once it has
    /// not had to grow for the keep-alive
    /// ([`autoscale_keepalive`](Self::autoscale_keepalive)). Overrides
    /// [`concurrency`](Self::concurrency); the prefetch defaults to four per
    /// slot of `max`, so that the backlog it grows for reaches it. Remote
    /// control's `autoscale`, `pool_grow` and `pool_shrink` change the
    /// bounds.
    pub fn autoscale(mut self, bounds: Autoscale) -> Self {
        self.autoscale = Some(bounds);
        self
    }

    /// How long an autoscaled worker stays grown after it last had to grow
    /// (default 30 s, Celery's `AUTOSCALE_KEEPALIVE`).
    pub fn autoscale_keepalive(mut self, keepalive: Duration) -> Self {
        self.autoscale_keepalive = keepalive;
        self
    }

    /// Let the broker send this many unacknowledged messages ahead (default:
    /// four per concurrency slot, as Celery's prefetch multiplier). Zero,
    /// which AMQP reads as "no limit" (the broker would push the whole queue
    /// into the worker), is refused by [`WorkerBuilder::build`].
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// How long running tasks may take to finish after shutdown is asked.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Dead-letter task messages whose body is larger than `bytes` without
    /// reading them (default [`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// How long a running task may keep its message unacknowledged before
    /// RabbitMQ closes the channel (`x-consumer-timeout`, default
    /// [`DEFAULT_ACK_TIMEOUT`]; `None` leaves the broker's `consumer_timeout`).
    pub fn ack_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// How much the dead-letter queues of this worker's queues keep (default
    /// [`DeadLetterRetention::default`]: 10,000 messages, 1 GiB, 14 days).
    pub fn dead_letter_retention(mut self, retention: DeadLetterRetention) -> Self {
        self.dead_letter_retention = retention;
        self
    }

    /// Run only the tasks of `registry` (default: every `#[task]` linked into
    /// the binary, [`Registry::global`]): e.g. a worker for a chosen subset,
    /// built with [`Registry::new`] and [`Registry::with`]. Messages for other tasks are answered
    /// `NotRegistered` and dead-lettered, as for an unknown name.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Provides `value` to every task that takes a [`State<T>`](task_core::State)
    /// parameter of its type (a database pool, an HTTP client, settings):
    /// one value per type, shared by all runs. The worker refuses to start
    /// ([`WorkerError::MissingState`]) when a task it runs takes a state it
    /// was not given.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Runs `stage` around every task, after the worker's own stages (so just
    /// before the task runs, once it is due and its turn has come) and, for
    /// the outcome, first: Celery's `task_prerun` is its
    /// [`before`](Stage::before), `task_postrun`, `task_success`,
    /// `task_failure`, `task_retry` and `task_revoked` are its
    /// [`after`](Stage::after) matching the [`Outcome`](task_core::pipeline::Outcome).
    /// Stages run in the order they are added.
    pub fn stage(mut self, stage: impl Stage) -> Self {
        self.hooks.stages.push(Arc::new(stage));
        self
    }

    /// Calls `hook` once the worker consumes its queues (Celery's
    /// `worker_ready`).
    pub fn on_ready(mut self, hook: impl Fn(&Worker) + Send + Sync + 'static) -> Self {
        self.hooks.ready.push(Arc::new(hook));
        self
    }

    /// Calls `hook` once the worker has stopped, its tasks finished or
    /// stopped, just before [`Worker::run`] returns (Celery's
    /// `worker_shutdown`).
    pub fn on_shutdown(mut self, hook: impl Fn(&Worker) + Send + Sync + 'static) -> Self {
        self.hooks.shutdown.push(Arc::new(hook));
        self
    }

    /// Connects, checks the settings, the task registry and the queue names,
    /// and declares the queues.
    pub async fn build(self) -> Result<Worker, WorkerError> {
        if self.concurrency == 0 {
            return Err(WorkerError::InvalidSetting {
                setting: "concurrency",
                reason: "must be at least 1",
            });
        }
        if self.prefetch == Some(0) {
            return Err(WorkerError::InvalidSetting {
                setting: "prefetch",
                reason: "must be at least 1 (0 would mean no limit: the broker would push \
                         the whole queue into this worker)",
            });
        }
        let registry = match self.registry {
            Some(registry) => registry,
            None => Registry::global()?.clone(),
        };
        registry.check()?;
        check_states(&registry, &self.states)?;
        let mut queues = self.queues;
        queues.retain(|queue| !queue.is_empty());
        for queue in &queues {
            check_task_queue_name(queue).map_err(|source| WorkerError::InvalidQueue {
                queue: queue.clone(),
                source,
            })?;
        }
        let explicit_queues = !queues.is_empty();
        let app = match self.app {
            Some(app) => app,
            None => {
                let builder = App::builder();
                let builder = match self.broker_url {
                    Some(url) => builder.broker_url(url),
                    None => builder,
                };
                let builder = match self.tls {
                    Some(tls) => builder.tls(tls),
                    None => builder,
                };
                let builder = match self.credentials {
                    Some(credentials) => builder.credentials(credentials),
                    None => builder,
                };
                let builder = builder
                    .queue_type(self.queue_type)
                    .delivery_limit(self.delivery_limit);
                let builder = match self.result_backend {
                    Some(url) => builder.result_backend(url),
                    None => builder,
                };
                let builder = match self.result_expires {
                    Some(expires) => builder.result_expires(expires),
                    None => builder,
                };
                let builder = match self.result_extended {
                    Some(yes) => builder.result_extended(yes),
                    None => builder,
                };
                let builder = match self.result_backend_tls {
                    Some(tls) => builder.result_backend_tls(tls),
                    None => builder,
                };
                builder.connect().await?
            }
        };
        if !explicit_queues {
            queues = default_queues(app.default_queue(), &registry);
            for queue in &queues {
                check_task_queue_name(queue).map_err(|source| WorkerError::InvalidQueue {
                    queue: queue.clone(),
                    source,
                })?;
            }
        }
        if queues.is_empty() {
            return Err(WorkerError::NoQueues);
        }
        warn_about_unreachable_tasks(&registry, &queues);
        for queue in &queues {
            app.ensure_queue(queue).await.map_err(|source| {
                if source.is_precondition_failed() {
                    WorkerError::QueueMismatch {
                        queue: queue.clone(),
                        source,
                    }
                } else {
                    WorkerError::Broker(source)
                }
            })?;
            app.broker().prepare_delays_for(queue).await?;
        }
        // Autoscaled: starts with its minimum, prefetches for its maximum.
        let (concurrency, most) = match self.autoscale {
            Some(bounds) => (bounds.min, bounds.max),
            None => (self.concurrency, self.concurrency),
        };
        let default_prefetch = most.saturating_mul(4);
        let prefetch = self
            .prefetch
            .unwrap_or_else(|| u16::try_from(default_prefetch).unwrap_or(u16::MAX));
        let settings: Arc<TaskSettings> = Arc::default();
        let shutdown = CancellationToken::new();
        let hostname = node_name(&self.node_name, &host_name());
        let dispatcher =
            EventDispatcher::new(Arc::clone(app.broker()), hostname.clone(), app.clock());
        let (queue_changes, changes) = mpsc::unbounded_channel();
        let node = Arc::new(Node::new(NodeParts {
            hostname,
            app: app.clone(),
            registry: registry.clone(),
            settings: Arc::clone(&settings),
            events: WorkerEvents::new(dispatcher, self.task_events),
            queues: queues.clone(),
            prefetch,
            concurrency,
            autoscaler: self
                .autoscale
                .map(|bounds| Autoscaler::new(bounds, self.autoscale_keepalive)),
            shutdown: shutdown.clone(),
            queue_changes,
        }));
        Ok(Worker {
            app,
            registry,
            queues,
            concurrency,
            prefetch,
            shutdown_timeout: self.shutdown_timeout,
            max_message_size: self.max_message_size,
            ack_timeout: self.ack_timeout,
            dead_letter_retention: self.dead_letter_retention,
            result_store_deadline: self.result_store_deadline,
            states: Arc::new(self.states),
            hooks: self.hooks,
            settings,
            shutdown,
            node,
            heartbeat: self.heartbeat,
            remote_control: self.remote_control,
            queue_changes: Mutex::new(Some(changes)),
        })
    }
}

/// How often a worker moves delayed messages kept for want of their queue
/// (see [`Broker::redeliver_unrouted`](task_core::broker::Broker::redeliver_unrouted)).
const UNROUTED_SWEEP: Duration = Duration::from_secs(10);

/// Moves delayed messages that came due while their queue could not be
/// reached to their queues, now and every [`UNROUTED_SWEEP`], until `stop`.
async fn sweep_unrouted(broker: Arc<dyn task_core::broker::Broker>, stop: CancellationToken) {
    loop {
        match broker.redeliver_unrouted().await {
            Ok(0) => {}
            Ok(moved) => tracing::warn!(
                moved,
                "moved delayed messages that came due while their queue could not be \
                 reached (deleted and declared again?) to their queues"
            ),
            Err(error) => tracing::debug!(%error, "could not look for unrouted delayed messages"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(UNROUTED_SWEEP) => {}
        }
    }
}

/// Refuses a registry with a task that takes a state `states` lacks.
fn check_states(registry: &Registry, states: &States) -> Result<(), WorkerError> {
    for name in registry.names() {
        let Some(task) = registry.get(name) else {
            continue;
        };
        if let Some(missing) = task.states.iter().find(|state| !states.provides(state)) {
            return Err(WorkerError::MissingState {
                task: task.name,
                state: missing.name(),
            });
        }
    }
    Ok(())
}

/// The queues a worker consumes when it is not told: the app's default
/// queue and each queue a registered task names, in name order.
fn default_queues(default_queue: &str, registry: &Registry) -> Vec<String> {
    let mut queues = vec![default_queue.to_owned()];
    for name in registry.names() {
        if let Some(queue) = registry.get(name).and_then(|task| task.options.queue) {
            if !queues.iter().any(|known| known == queue) {
                queues.push(queue.to_owned());
            }
        }
    }
    queues
}

/// Warns about what would otherwise fail in silence: a worker with no task
/// at all (its binary does not link the crate that defines them), and tasks
/// whose default queue this worker does not consume (their callers would
/// wait for a result that no worker here produces).
fn warn_about_unreachable_tasks(registry: &Registry, queues: &[String]) {
    if registry.is_empty() {
        tracing::warn!(
            "no task is registered in this worker binary: every message will fail with \
             NotRegistered; link the crate that defines the tasks (`use my_tasks as _;`)"
        );
        return;
    }
    let unconsumed: Vec<String> = registry
        .names()
        .into_iter()
        .filter_map(|name| {
            let queue = registry.get(name)?.options.queue?;
            (!queues.iter().any(|consumed| consumed == queue)).then(|| format!("{name} → {queue}"))
        })
        .collect();
    if !unconsumed.is_empty() {
        tracing::warn!(
            tasks = ?unconsumed,
            consumed = ?queues,
            "these tasks are sent to queues this worker does not consume; add them with -Q \
             (or leave -Q out to consume every queue the tasks name)"
        );
    }
}

/// Consumes task queues and runs their tasks.
///
/// ```no_run
/// # async fn demo() -> Result<(), task_worker::WorkerError> {
/// let worker = task_worker::Worker::builder()
///     .broker_url("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .queues(["celery", "math"])
///     .concurrency(8)
///     .build()
///     .await?;
/// let stop = worker.shutdown_handle();
/// tokio::spawn(async move {
///     tokio::signal::ctrl_c().await.ok();
///     stop.cancel();
/// });
/// worker.run().await
/// # }
/// ```
#[derive(Debug)]
pub struct Worker {
    app: App,
    registry: Registry,
    queues: Vec<String>,
    concurrency: usize,
    prefetch: u16,
    shutdown_timeout: Duration,
    max_message_size: usize,
    ack_timeout: Option<Duration>,
    dead_letter_retention: DeadLetterRetention,
    result_store_deadline: Duration,
    states: Arc<States>,
    hooks: Hooks,
    settings: Arc<TaskSettings>,
    shutdown: CancellationToken,
    node: Arc<Node>,
    heartbeat: bool,
    remote_control: bool,
    /// `add_consumer` / `cancel_consumer` requests, taken by `run`.
    queue_changes: Mutex<Option<mpsc::UnboundedReceiver<QueueChange>>>,
}

impl Worker {
    /// Starts configuring a worker.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    /// A token that stops the worker when cancelled.
    pub fn shutdown_handle(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The per-task settings (rate limits, time limits) this worker runs
    /// with, which can be changed while it runs: a change applies to the
    /// runs that start after it.
    pub fn task_settings(&self) -> Arc<TaskSettings> {
        Arc::clone(&self.settings)
    }

    /// The worker's node name (`celery@host`), as remote control and
    /// events know it.
    pub fn node_name(&self) -> &str {
        &self.node.hostname
    }

    /// The queues this worker was given to consume (remote control's
    /// `add_consumer` / `cancel_consumer` change them while it runs).
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// The app the worker publishes results (and sub-tasks) with.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The worker's pipeline: the shared steps with the worker's stages, in
    /// order (see `task_core::pipeline`).
    fn pipeline(&self) -> Pipeline {
        let builder = Pipeline::builder(self.registry.clone())
            .hostname(self.node.hostname.as_str())
            .settings(Arc::clone(&self.settings))
            .max_message_size(self.max_message_size)
            .stage(stages::Measured)
            .stage(stages::Received {
                node: Arc::clone(&self.node),
            })
            .stage(Canvas {
                app: self.app.clone(),
                registry: self.registry.clone(),
                shutdown: self.shutdown.clone(),
                chord_entries: ChordEntries::new(self.app.clone()),
            })
            .stage(Expiry)
            .stage(stages::Eta::for_resolution(
                self.app.broker().delay_resolution(),
            ))
            .stage(stages::RateLimited::new(
                Arc::clone(&self.settings),
                rate_limiter::limiters(&self.registry),
            ))
            // The waits above may have outlived the task's expiry.
            .stage(Expiry)
            .stage(stages::EarlyAck)
            .stage(stages::TaskLog);
        self.hooks
            .stages
            .iter()
            .fold(builder, |builder, stage| {
                builder.shared_stage(Arc::clone(stage))
            })
            // Last: the task is active from here, and can be terminated.
            .stage(stages::Running {
                node: Arc::clone(&self.node),
            })
            .build()
    }

    /// Consumes until the shutdown handle is cancelled (reconnecting and
    /// resuming whenever the broker goes away), then stops consuming,
    /// lets running tasks finish (up to the shutdown timeout), returns the
    /// prefetched but unstarted messages to their queues and returns. Tasks
    /// still running at the timeout are stopped (their futures dropped, their
    /// messages returned to the queue), so that none runs on beside a
    /// redelivered copy; a blocking (`fn`) task's thread cannot be stopped
    /// and finishes its body, without publishing or acknowledging.
    pub async fn run(self) -> Result<(), WorkerError> {
        // Remote control, heartbeats and the revoke log are followed until
        // the worker has stopped.
        let node_stop = CancellationToken::new();
        // Every revoke still kept is known before the first task is taken.
        let revokes = revoke_log::catch_up(&self.node).await.map(|log| {
            tokio::spawn(revoke_log::follow(
                Arc::clone(&self.node),
                log,
                node_stop.clone(),
            ))
        });
        let mut consumer = self.consume().await?;
        let mut changes = self
            .queue_changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Consumers replaced by a change of queues: their channels stay open
        // until the tasks they delivered are settled (closed at the end).
        let mut retired = Vec::new();
        // Answering before the worker says it is ready.
        let control = if self.remote_control {
            let started = remote_control::start(&self.node).await;
            Some(tokio::spawn(remote_control::serve(
                Arc::clone(&self.node),
                started,
                node_stop.clone(),
            )))
        } else {
            None
        };
        let heartbeats = self
            .heartbeat
            .then(|| tokio::spawn(send_heartbeats(Arc::clone(&self.node), node_stop.clone())));
        let autoscaling = tokio::spawn(autoscale::run(Arc::clone(&self.node), node_stop.clone()));
        tracing::info!(
            node = %self.node.hostname,
            queues = ?self.queues,
            concurrency = self.concurrency,
            autoscale = self.node.autoscaler.as_ref().map(|s| s.bounds().to_string()),
            prefetch = self.prefetch,
            task_events = self.node.events.task_events(),
            tasks = ?self.registry.names(),
            "worker ready"
        );
        for ready in &self.hooks.ready {
            ready(&self);
        }
        // Shared by every delivery's task (one Arc clone each, not a copy of
        // the pipeline and its registry).
        let executor = Arc::new(Executor {
            pipeline: self.pipeline(),
            states: Arc::clone(&self.states),
            settler: Settler {
                app: self.app.clone(),
                dead_letter_retention: self.dead_letter_retention,
                requeue_backoff: Arc::new(RequeueBackoff::default()),
                results: Arc::new(WorkerResults {
                    app: self.app.clone(),
                    warnings: Warnings::default(),
                    store_deadline: self.result_store_deadline,
                }),
            },
        });
        let sweeper = tokio::spawn(sweep_unrouted(
            Arc::clone(self.app.broker()),
            self.shutdown.clone(),
        ));
        let slots = Arc::clone(&self.node.slots);
        let running = TaskTracker::new();
        // Cancelled when the shutdown timeout runs out: the tasks still
        // running are dropped, so none runs on after `run` returned.
        let abandon = CancellationToken::new();
        let joins = tokio::spawn(consume_chord_joins(
            self.app.clone(),
            Arc::clone(&executor),
            running.clone(),
            abandon.clone(),
            self.shutdown.clone(),
        ));
        let expired = tokio::spawn(expired::drain(
            self.app.clone(),
            Arc::clone(&executor),
            running.clone(),
            abandon.clone(),
            self.shutdown.clone(),
        ));
        'consuming: loop {
            let lost = loop {
                let delivery = loop {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break 'consuming,
                        Some(change) = next_change(&mut changes) => {
                            self.change_queues(change, &mut consumer, &mut retired).await;
                        }
                        delivery = consumer.deliveries.next() => break delivery,
                    }
                };
                match delivery {
                    Some(Ok(delivery)) => {
                        // A task waits for a slot here (what autoscaling
                        // grows for); dropped unsettled at shutdown, it goes
                        // back to its queue when the channel closes.
                        let slot = match slots.clone().try_acquire_owned() {
                            Ok(slot) => slot,
                            Err(_) => {
                                self.node.set_waiting_for_slot(true);
                                let slot = loop {
                                    tokio::select! {
                                        _ = self.shutdown.cancelled() => break None,
                                        Some(change) = next_change(&mut changes) => {
                                            self.change_queues(change, &mut consumer, &mut retired).await;
                                        }
                                        slot = Arc::clone(&slots).acquire_owned() => break slot.ok(),
                                    }
                                };
                                self.node.set_waiting_for_slot(false);
                                match slot {
                                    Some(slot) => slot,
                                    None => break 'consuming,
                                }
                            }
                        };
                        let executor = Arc::clone(&executor);
                        let slot = Slot::new(slot, Arc::clone(&slots));
                        let abandon = abandon.clone();
                        running.spawn(async move {
                            // Dropped unsettled, the delivery goes back to its
                            // queue when the channel closes. Boxed: the
                            // spawned future stays small, and tokio moves it
                            // several times on the way into its task.
                            let handled = Box::pin(executor.handle(delivery, Some(slot)));
                            unless_abandoned(&abandon, handled).await;
                        });
                    }
                    Some(Err(error)) => break error.to_string(),
                    None => break "the broker closed the consumer".to_owned(),
                }
            };
            // Unacked deliveries of the lost channel go back to their queues
            // on the broker's side; running tasks finish and publish their
            // results through the new connection (their acks fail, so the
            // broker redelivers them: at-least-once).
            tracing::warn!(%lost, "lost the broker; reconnecting");
            metrics::counter!(crate::metrics::RECONNECTS).increment(1);
            let mut backoff = Duration::from_millis(100);
            consumer = loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => break 'consuming,
                    resumed = self.consume() => match resumed {
                        Ok(resumed) => break resumed,
                        Err(error) => {
                            tracing::warn!(%error, ?backoff, "could not resume consuming; retrying");
                            tokio::select! {
                                _ = self.shutdown.cancelled() => break 'consuming,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    },
                }
            };
            tracing::info!(queues = ?self.node.queues(), "resumed consuming");
        }
        tracing::info!("worker stopping: no new tasks will start");
        if let Err(error) = joins.await {
            tracing::debug!(%error, "the chord joins consumer ended abnormally");
        }
        if let Err(error) = expired.await {
            tracing::debug!(%error, "the expired tasks consumer ended abnormally");
        }
        if let Err(error) = consumer.cancel.cancel().await {
            tracing::debug!(%error, "could not cancel the consumer");
        }
        running.close();
        if tokio::time::timeout(self.shutdown_timeout, running.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = running.len(),
                "shutdown timeout reached; stopping the unfinished tasks, their messages go back to the queue"
            );
            abandon.cancel();
            running.wait().await;
        }
        // Closing the channel returns every unacknowledged message to its queue.
        if let Err(error) = consumer.cancel.close().await {
            tracing::debug!(%error, "could not close the consumer channel");
        }
        for old in retired {
            let _ = old.cancel.close().await;
        }
        sweeper.abort();
        node_stop.cancel();
        if let Some(control) = control {
            let _ = control.await;
        }
        if let Some(heartbeats) = heartbeats {
            let _ = heartbeats.await;
        }
        let _ = autoscaling.await;
        if let Some(revokes) = revokes {
            let _ = revokes.await;
        }
        self.node.events.flush().await;
        tracing::info!("worker stopped");
        for shutdown in &self.hooks.shutdown {
            shutdown(&self);
        }
        Ok(())
    }

    /// Consumes the queues of the moment (those given, changed by
    /// `add_consumer` / `cancel_consumer`).
    async fn consume(&self) -> Result<task_core::broker::Consumer, BrokerError> {
        self.consume_queues(&self.node.queues()).await
    }

    async fn consume_queues(
        &self,
        queues: &[String],
    ) -> Result<task_core::broker::Consumer, BrokerError> {
        // Quorum queues refuse a window shared by all the queues (global
        // QoS): each queue's consumer gets its own, as Celery's workers do.
        let per_queue = queues
            .iter()
            .any(|queue| self.app.queue_spec(queue).is_quorum());
        let options = ConsumeOptions::manual_ack(self.prefetch)
            .with_prefetch_per_queue(per_queue)
            .with_ack_timeout(self.ack_timeout);
        self.app.broker().consume(queues, options).await
    }

    /// Starts or stops consuming a queue: a new consumer on the new set of
    /// queues replaces the current one, which stops receiving (its channel
    /// stays open until what it delivered is settled). Answers the remote
    /// control command that asked.
    async fn change_queues(
        &self,
        change: QueueChange,
        consumer: &mut task_core::broker::Consumer,
        retired: &mut Vec<task_core::broker::Consumer>,
    ) {
        let reply = |text: String, ok: bool| {
            let key = if ok { "ok" } else { "error" };
            serde_json::json!({ key: text })
        };
        let mut queues = self.node.queues();
        let (queue, answer, wanted) = match change {
            QueueChange::Add { queue, answer } => {
                if queues.contains(&queue) {
                    let _ = answer.send(reply(format!("already consuming from {queue}"), true));
                    return;
                }
                if let Err(error) = check_task_queue_name(&queue) {
                    let _ = answer.send(reply(error.to_string(), false));
                    return;
                }
                let declared = match self.app.ensure_queue(&queue).await {
                    Ok(()) => self.app.broker().prepare_delays_for(&queue).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = declared {
                    let _ = answer.send(reply(error.to_string(), false));
                    return;
                }
                queues.push(queue.clone());
                (queue, answer, true)
            }
            QueueChange::Cancel { queue, answer } => {
                if !queues.contains(&queue) {
                    let _ = answer.send(reply(format!("not consuming from {queue}"), false));
                    return;
                }
                if queues.len() == 1 {
                    let _ = answer.send(reply(
                        format!("{queue} is the only queue this worker consumes"),
                        false,
                    ));
                    return;
                }
                queues.retain(|q| *q != queue);
                (queue, answer, false)
            }
        };
        match self.consume_queues(&queues).await {
            Ok(new) => {
                let old = std::mem::replace(consumer, new);
                if let Err(error) = old.cancel.cancel().await {
                    tracing::debug!(%error, "could not cancel the replaced consumer");
                }
                retired.push(old);
                self.node.set_queues(queues.clone());
                tracing::info!(queues = ?queues, "now consuming");
                let text = if wanted {
                    format!("add consumer {queue}")
                } else {
                    format!("no longer consuming from {queue}")
                };
                let _ = answer.send(reply(text, true));
            }
            Err(error) => {
                let _ = answer.send(reply(error.to_string(), false));
            }
        }
    }
}

/// Consumes the chord join tasks ([`chord_join::JOIN_TASK_QUEUE`]) until
/// `stop`, reconnecting when the broker goes away. A join task waits for
/// its chord's parts without a concurrency slot and outside the task
/// queues' prefetch window (its own consumer has none), so that joins
/// waiting on a worker never keep the parts they wait for from running
/// there.
async fn consume_chord_joins(
    app: App,
    executor: Arc<Executor>,
    running: TaskTracker,
    abandon: CancellationToken,
    stop: CancellationToken,
) {
    let consume = || async {
        app.ensure_shared(&app.chord_join_queue_spec()).await?;
        app.broker()
            .consume(
                &[chord_join::JOIN_TASK_QUEUE.to_owned()],
                ConsumeOptions::manual_ack(0),
            )
            .await
    };
    drain_until_stopped(&stop, "the chord joins", consume, |delivery| {
        let executor = Arc::clone(&executor);
        let abandon = abandon.clone();
        running.spawn(async move {
            let handled = Box::pin(executor.handle(delivery, None));
            unless_abandoned(&abandon, handled).await;
        });
    })
    .await;
}

/// The next queue change, if the worker takes them; never otherwise.
async fn next_change(
    changes: &mut Option<mpsc::UnboundedReceiver<QueueChange>>,
) -> Option<QueueChange> {
    match changes {
        Some(changes) => changes.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends `worker-online`, then a `worker-heartbeat` every 2 s until `stop`,
/// then `worker-offline`.
async fn send_heartbeats(node: Arc<Node>, stop: CancellationToken) {
    let freq = HEARTBEAT_EVERY.as_secs_f64();
    let status = |node: &Node| {
        worker_status(
            freq,
            Some((node.requests.active_count(), node.requests.processed())),
        )
    };
    node.events
        .worker(EventKind::WorkerOnline(status(&node)))
        .await;
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    every.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        node.events
            .worker(EventKind::WorkerHeartbeat(status(&node)))
            .await;
    }
    node.events.flush().await;
    node.events
        .worker(EventKind::WorkerOffline(status(&node)))
        .await;
}

/// Runs `work` to its end, unless `abandon` is cancelled first (then `work`
/// is dropped).
///
/// Runs for every delivery, so the cancellation is cheaper than a `select!`:
/// its future is polled once, to register the task's waker with the token,
/// and later polls read the token's flag (a `select!` drew a random branch
/// order and polled that future again on every poll). A cancellation wakes
/// the registered waker, which is the spawned task's own: every poll of the
/// task gets the same one.
pub(crate) async fn unless_abandoned(abandon: &CancellationToken, work: impl Future<Output = ()>) {
    let mut cancelled = pin!(abandon.cancelled());
    let mut work = pin!(work);
    let mut registered = false;
    poll_fn(|cx| {
        if registered {
            if abandon.is_cancelled() {
                return Poll::Ready(());
            }
        } else {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            registered = true;
        }
        work.as_mut().poll(cx)
    })
    .await;
}

#[cfg(test)]
mod tests {
    use futures_util::future::BoxFuture;
    use task_core::registry::{TaskOutcome, TaskRegistration};
    use task_core::{TaskArgs, TaskOptions};
    use tracing_subscriber::EnvFilter;

    use super::*;
    use crate::logging::capture;

    fn never_run(_: TaskArgs) -> BoxFuture<'static, TaskOutcome> {
        Box::pin(async { unreachable!("not run in these tests") })
    }

    static PLAIN: TaskRegistration = TaskRegistration {
        name: "tests.plain",
        params: &[],
        options: TaskOptions::DEFAULT,
        states: &[],
        handler: never_run,
    };
    static ORDERS: TaskRegistration = TaskRegistration {
        name: "tests.orders",
        params: &[],
        options: TaskOptions::DEFAULT.with_queue("orders"),
        states: &[],
        handler: never_run,
    };

    fn registry(tasks: &[&'static TaskRegistration]) -> Registry {
        Registry::from_registrations(tasks.iter().copied()).unwrap()
    }

    fn warnings(registry: &Registry, queues: &[&str]) -> String {
        let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
        capture(EnvFilter::new("warn"), || {
            warn_about_unreachable_tasks(registry, &queues);
        })
    }

    #[tokio::test]
    async fn work_runs_to_its_end_unless_abandoned() {
        let abandon = CancellationToken::new();
        let (done, finished) = tokio::sync::oneshot::channel();
        unless_abandoned(&abandon, async move {
            tokio::task::yield_now().await;
            done.send(()).unwrap();
        })
        .await;
        assert!(finished.await.is_ok(), "the work ran to its end");

        // Abandoned while it waits (after its first poll registered the
        // waker): the work is dropped.
        let abandon = CancellationToken::new();
        let (dropped, was_dropped) = tokio::sync::oneshot::channel::<()>();
        let waiting = tokio::spawn({
            let abandon = abandon.clone();
            async move {
                unless_abandoned(&abandon, async move {
                    let _dropped = dropped;
                    std::future::pending::<()>().await;
                })
                .await;
            }
        });
        tokio::task::yield_now().await;
        abandon.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the abandoned work stops")
            .unwrap();
        assert!(was_dropped.await.is_err(), "the work was dropped");

        // Abandoned before it starts: never polled.
        let abandon = CancellationToken::new();
        abandon.cancel();
        unless_abandoned(&abandon, async {
            unreachable!("abandoned before it started")
        })
        .await;
    }

    #[test]
    fn without_queues_a_worker_consumes_the_default_and_every_task_queue() {
        let queues = default_queues("celery", &registry(&[&PLAIN, &ORDERS]));
        assert_eq!(queues, ["celery", "orders"]);
        assert_eq!(default_queues("orders", &registry(&[&ORDERS])), ["orders"]);
    }

    #[test]
    fn a_worker_without_tasks_says_so() {
        let logged = warnings(&registry(&[]), &["celery"]);
        assert!(logged.contains("no task is registered"), "{logged}");
    }

    #[test]
    fn a_task_whose_queue_is_not_consumed_is_named() {
        let logged = warnings(&registry(&[&PLAIN, &ORDERS]), &["celery"]);
        assert!(logged.contains("tests.orders → orders"), "{logged}");
        assert!(!logged.contains("tests.plain"), "{logged}");
        assert_eq!(
            warnings(&registry(&[&PLAIN, &ORDERS]), &["celery", "orders"]),
            ""
        );
    }
}
