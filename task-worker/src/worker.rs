//! [`Worker`]: consumes task queues and runs each message's task, at most
//! `concurrency` at a time, until told to stop.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use task_core::broker::{BrokerError, ConsumeOptions, TlsOptions};
use task_core::registry::DuplicateTaskName;
use task_core::{App, Registry};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::executor::{Executor, Slot};
use crate::rate_limiter;

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
}

/// Configures a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    app: Option<App>,
    broker_url: Option<String>,
    tls: Option<TlsOptions>,
    queues: Vec<String>,
    concurrency: usize,
    prefetch: Option<u16>,
    shutdown_timeout: Duration,
    max_message_size: usize,
    ack_timeout: Option<Duration>,
}

/// How long a task may keep its message unacknowledged by default: a day,
/// far above RabbitMQ's 30-minute `consumer_timeout`, so long tasks do not
/// get the channel closed under them (RabbitMQ 3.11.15+).
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The default limit on a task message's body: larger ones are dead-lettered.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

impl Default for WorkerBuilder {
    fn default() -> Self {
        Self {
            app: None,
            broker_url: None,
            tls: None,
            queues: Vec::new(),
            concurrency: std::thread::available_parallelism().map_or(4, usize::from),
            prefetch: None,
            shutdown_timeout: Duration::from_secs(30),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            ack_timeout: Some(DEFAULT_ACK_TIMEOUT),
        }
    }
}

impl WorkerBuilder {
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

    /// Use an already-connected app (its queue declarations included).
    pub fn app(mut self, app: App) -> Self {
        self.app = Some(app);
        self
    }

    /// Consume these queues (default: the app's default queue, `celery`).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Run at most this many tasks at once (default: the number of CPUs).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Let the broker send this many unacknowledged messages ahead (default:
    /// four per concurrency slot, as Celery's prefetch multiplier).
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

    /// Connects, checks the task registry and declares the queues.
    pub async fn build(self) -> Result<Worker, WorkerError> {
        let registry = Registry::global()?;
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
                builder.connect().await?
            }
        };
        let queues = if self.queues.is_empty() {
            vec![app.default_queue().to_owned()]
        } else {
            self.queues
        };
        if queues.iter().all(|q| q.is_empty()) {
            return Err(WorkerError::NoQueues);
        }
        for queue in &queues {
            app.ensure_queue(queue).await?;
        }
        let default_prefetch = self.concurrency.saturating_mul(4);
        Ok(Worker {
            app,
            registry,
            queues,
            concurrency: self.concurrency,
            prefetch: self
                .prefetch
                .unwrap_or_else(|| u16::try_from(default_prefetch).unwrap_or(u16::MAX)),
            shutdown_timeout: self.shutdown_timeout,
            max_message_size: self.max_message_size,
            ack_timeout: self.ack_timeout,
            shutdown: CancellationToken::new(),
        })
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
    registry: &'static Registry,
    queues: Vec<String>,
    concurrency: usize,
    prefetch: u16,
    shutdown_timeout: Duration,
    max_message_size: usize,
    ack_timeout: Option<Duration>,
    shutdown: CancellationToken,
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

    /// The queues this worker consumes.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// The app the worker publishes results (and sub-tasks) with.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Consumes until the shutdown handle is cancelled (reconnecting and
    /// resuming whenever the broker goes away), then stops consuming,
    /// lets running tasks finish (up to the shutdown timeout), returns the
    /// prefetched but unstarted messages to their queues and returns.
    pub async fn run(self) -> Result<(), WorkerError> {
        let mut consumer = self.consume().await?;
        tracing::info!(
            queues = ?self.queues,
            concurrency = self.concurrency,
            prefetch = self.prefetch,
            tasks = ?self.registry.names(),
            "worker ready"
        );
        let executor = Executor {
            app: self.app.clone(),
            registry: self.registry,
            max_message_size: self.max_message_size,
            rate_limiters: Arc::new(rate_limiter::limiters(self.registry)),
        };
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let running = TaskTracker::new();
        'consuming: loop {
            let lost = loop {
                let slot = tokio::select! {
                    _ = self.shutdown.cancelled() => break 'consuming,
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break 'consuming,
                    },
                };
                let delivery = tokio::select! {
                    _ = self.shutdown.cancelled() => break 'consuming,
                    delivery = consumer.deliveries.next() => delivery,
                };
                match delivery {
                    Some(Ok(delivery)) => {
                        let executor = executor.clone();
                        let slot = Slot {
                            permit: Some(slot),
                            slots: Arc::clone(&slots),
                        };
                        running.spawn(async move { executor.handle(delivery, slot).await });
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
            tracing::info!(queues = ?self.queues, "resumed consuming");
        }
        tracing::info!("worker stopping: no new tasks will start");
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
                "shutdown timeout reached; unfinished tasks go back to the queue"
            );
        }
        // Closing the channel returns every unacknowledged message to its queue.
        if let Err(error) = consumer.cancel.close().await {
            tracing::debug!(%error, "could not close the consumer channel");
        }
        tracing::info!("worker stopped");
        Ok(())
    }

    async fn consume(&self) -> Result<task_core::broker::Consumer, BrokerError> {
        let options = ConsumeOptions::manual_ack(self.prefetch).with_ack_timeout(self.ack_timeout);
        self.app.broker().consume(&self.queues, options).await
    }
}
