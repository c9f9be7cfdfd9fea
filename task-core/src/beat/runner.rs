//! [`Beat`]: the scheduler process. Instances contend for leadership
//! (`leadership`); the leader reads the run log (`run_log`), then fires
//! each entry's due runs (`due`) until it stops or loses its connection.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::due::{due, jitter};
use super::leadership::{Leadership, Role};
use super::run_log::{LastRuns, RunLog, SNAPSHOT_EVERY};
use super::{BeatError, DeclaredEntry, Entry, EntryError, MissedRuns};
use crate::broker::amqp::AmqpBroker;
use crate::broker::memory::MemoryBroker;
use crate::broker::redact;
use crate::broker::redis::{RedisBroker, RedisBrokerOptions};
use crate::broker::{Broker, BrokerError, Credentials, QueueSpec, QueueType, TlsOptions};
use crate::schedule::Schedule;
use crate::{Expiry, Signature, DEFAULT_BROKER_URL, DEFAULT_QUEUE};

/// The header Celery's beat puts on what it sends.
pub const BEAT_TASK_HEADER: &str = "celery_beat_task";

/// Default for [`BeatBuilder::grace`].
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Default for [`BeatBuilder::standby_poll`].
pub const DEFAULT_STANDBY_POLL: Duration = Duration::from_millis(500);

/// Default for [`BeatBuilder::log_max_bytes`].
pub const DEFAULT_LOG_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The longest the leader sleeps before it looks again (and checks that
/// its connection, hence its lock, is still there).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// How long an instance waits after losing its connection before it
/// connects again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The AMQP heartbeat asked for on a scheduler's connection when its URL
/// names none (seconds): a leader cut off from the broker loses its
/// connection, hence the lock, within about two of them.
pub const BEAT_HEARTBEAT_S: u16 = 10;

/// The longest group name: its queues' names stay within AMQP's 255 bytes.
const MAX_GROUP_NAME: usize = 200;

/// How many entries are fired at once.
const FIRING_AT_ONCE: usize = 256;

/// An entry checked and ready to fire.
#[derive(Debug)]
struct Scheduled {
    name: String,
    signature: Signature,
    queue: String,
    schedule: Schedule,
    jitter: Option<Duration>,
    missed: MissedRuns,
}

/// Builds a [`Beat`]: its entries, where it publishes, and how it
/// coordinates with other instances.
#[must_use]
pub struct BeatBuilder {
    entries: Vec<Entry>,
    declared: bool,
    group: String,
    broker_url: String,
    tls: Option<TlsOptions>,
    credentials: Option<Credentials>,
    broker: Option<Arc<dyn Broker>>,
    timezone: Option<String>,
    grace: Duration,
    standby_poll: Duration,
    default_queue: String,
    queues: HashMap<String, QueueSpec>,
    queue_type: QueueType,
    log_max_bytes: u64,
}

impl Default for BeatBuilder {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            declared: false,
            group: "default".into(),
            broker_url: DEFAULT_BROKER_URL.into(),
            tls: None,
            credentials: None,
            broker: None,
            timezone: None,
            grace: DEFAULT_GRACE,
            standby_poll: DEFAULT_STANDBY_POLL,
            default_queue: DEFAULT_QUEUE.into(),
            queues: HashMap::new(),
            queue_type: QueueType::default(),
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
        }
    }
}

impl BeatBuilder {
    /// Adds an entry.
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    /// Adds entries (e.g. those of a schedule file:
    /// [`ScheduleFile::entries`](super::ScheduleFile::entries)).
    pub fn entries(mut self, entries: impl IntoIterator<Item = Entry>) -> Self {
        self.entries.extend(entries);
        self
    }

    /// Adds every entry registered with [`periodic!`](crate::periodic) in
    /// the code linked into this binary.
    pub fn declared_entries(mut self) -> Self {
        self.declared = true;
        self
    }

    /// The scheduler group: instances with the same name (and broker)
    /// share one leader and one record of runs (`task_core.beat.<name>.*`);
    /// default `default`. Every instance of a group must have the same
    /// entries.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.group = name.into();
        self
    }

    /// The broker (`amqp://`, `amqps://`; `memory://` for tests, without a
    /// durable record). Default: [`DEFAULT_BROKER_URL`].
    pub fn broker_url(mut self, url: impl Into<String>) -> Self {
        self.broker_url = url.into();
        self
    }

    /// TLS settings for an `amqps://` broker.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Publishes through this broker instead of connecting to the URL
    /// (and does not close it). The lock then lasts as long as the
    /// broker's connection, which may be replaced under it, or until the
    /// scheduler stops: for tests and single instances; several instances
    /// should connect by URL.
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// The time zone cron entries are read in unless they name their own
    /// (Celery's `timezone`); default UTC.
    pub fn timezone(mut self, zone: impl Into<String>) -> Self {
        self.timezone = Some(zone.into());
        self
    }

    /// How late a run may be and still fire whatever its entry's
    /// [`MissedRuns`] policy (a takeover, a pause): older runs are missed.
    /// Default 30 s.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How often a standby instance tries to take the lead; with the
    /// leader's connection closing at once when its process dies, this
    /// bounds the takeover time. Default 500 ms.
    pub fn standby_poll(mut self, every: Duration) -> Self {
        self.standby_poll = every.max(Duration::from_millis(10));
        self
    }

    /// The queue for entries whose signature names none (default `celery`).
    pub fn default_queue(mut self, queue: impl Into<String>) -> Self {
        self.default_queue = queue.into();
        self
    }

    /// The broker user and password for nodes whose URL names none
    /// (default: from the environment, as
    /// [`AppBuilder::credentials`](crate::AppBuilder::credentials)).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The type of the task queues the scheduler declares before sending
    /// to them (as the workers' [`AppBuilder::queue_type`](crate::AppBuilder::queue_type);
    /// default classic).
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// How a queue is declared, when not as Celery declares a task queue.
    pub fn queue(mut self, spec: QueueSpec) -> Self {
        self.queues.insert(spec.name.clone(), spec);
        self
    }

    /// The most bytes the run log keeps (default 64 MiB).
    pub fn log_max_bytes(mut self, bytes: u64) -> Self {
        self.log_max_bytes = bytes.max(1_000_000);
        self
    }

    /// Checks every entry (schedule, time zone, arguments, unique names)
    /// and builds the scheduler; every invalid entry is reported at once,
    /// each by name.
    pub fn build(self) -> Result<Beat, BeatError> {
        let mut entries = self.entries;
        if self.declared {
            entries.extend(inventory::iter::<DeclaredEntry>().map(|declared| (declared.0)()));
        }
        let mut errors = Vec::new();
        let mut names = HashSet::new();
        let mut scheduled = Vec::with_capacity(entries.len());
        for entry in entries {
            let fail = |reason: String| EntryError {
                entry: entry.name.clone(),
                reason,
            };
            if entry.name.trim().is_empty() {
                errors.push(fail("an entry needs a name".into()));
                continue;
            }
            if !names.insert(entry.name.clone()) {
                errors.push(fail("two entries have this name".into()));
                continue;
            }
            let schedule = match entry.resolve(self.timezone.as_deref()) {
                Ok(schedule) => schedule,
                Err(error) => {
                    errors.push(fail(error.to_string()));
                    continue;
                }
            };
            let mut signature = entry.signature;
            // Each run is a task of its own, marked as Celery's beat marks it.
            signature.options.task_id = None;
            signature
                .options
                .headers
                .retain(|(name, _)| name != BEAT_TASK_HEADER);
            let signature = signature.header(BEAT_TASK_HEADER, true);
            if let Err(error) = signature.encode_call(None) {
                errors.push(fail(error.to_string()));
                continue;
            }
            let queue = signature
                .options
                .queue
                .as_deref()
                .unwrap_or(&self.default_queue)
                .to_owned();
            scheduled.push(Scheduled {
                name: entry.name,
                signature,
                queue,
                schedule,
                jitter: entry.jitter,
                missed: entry.missed,
            });
        }
        if !errors.is_empty() {
            return Err(BeatError::Entries(errors));
        }
        if let Some(zone) = &self.timezone {
            // Checked even when no entry uses it.
            if let Err(error) = Schedule::every(Duration::from_secs(60))
                .and_then(|schedule| schedule.in_timezone(zone))
            {
                return Err(BeatError::Config(error.to_string()));
            }
        }
        if self.group.is_empty() || self.group.len() > MAX_GROUP_NAME {
            return Err(BeatError::Config(format!(
                "the scheduler group name must be 1 to {MAX_GROUP_NAME} bytes long (it names \
                 the group's queues), not `{}`",
                self.group
            )));
        }
        let prefix = format!("task_core.beat.{}", self.group);
        let (role, _) = watch::channel(Role::Starting);
        Ok(Beat {
            inner: Arc::new(Inner {
                entries: scheduled,
                broker_url: self.broker_url,
                tls: self.tls,
                credentials: self.credentials,
                broker: self.broker,
                leadership: Leadership::new(format!("{prefix}.leader")),
                log: RunLog::new(format!("{prefix}.runs"), self.log_max_bytes),
                grace: self.grace,
                standby_poll: self.standby_poll,
                queues: self.queues,
                queue_type: self.queue_type,
                role,
                local_last: Mutex::new(LastRuns::new()),
            }),
        })
    }
}

/// A periodic-task scheduler, safe to run as several instances at once:
/// one leads and fires each due run exactly once, the others stand by and
/// take over within about [`BeatBuilder::standby_poll`] once it is gone.
/// See [`crate::beat`] for the design and its guarantees.
///
/// ```no_run
/// # async fn demo() -> Result<(), task_core::beat::BeatError> {
/// use std::time::Duration;
/// use task_core::beat::{Beat, Entry};
/// use task_core::Signature;
///
/// let beat = Beat::builder()
///     .broker_url("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .entry(Entry::every("tick", Duration::from_secs(5), Signature::<()>::new("tasks.tick")))
///     .build()?;
/// beat.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Beat {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Vec<Scheduled>,
    broker_url: String,
    tls: Option<TlsOptions>,
    credentials: Option<Credentials>,
    broker: Option<Arc<dyn Broker>>,
    leadership: Leadership,
    log: RunLog,
    grace: Duration,
    standby_poll: Duration,
    queues: HashMap<String, QueueSpec>,
    queue_type: QueueType,
    role: watch::Sender<Role>,
    /// Last runs kept in this process, where the broker keeps no streams
    /// (`memory://`).
    local_last: Mutex<LastRuns>,
}

/// An entry and its next runs ([`Beat::upcoming`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upcoming {
    /// The entry's name.
    pub entry: String,
    /// The task it sends.
    pub task: String,
    /// The queue it sends to.
    pub queue: String,
    /// Its schedule, described (`cron '0 3 * * *' (Europe/Paris)`).
    pub schedule: String,
    /// Its next runs, soonest first (fewer if it has no more).
    pub next: Vec<DateTime<Utc>>,
}

/// Why a leadership term ended.
enum TermEnd {
    Stopped,
    Lost(BeatError),
}

impl Beat {
    /// A builder.
    pub fn builder() -> BeatBuilder {
        BeatBuilder::default()
    }

    /// The entries' names, in the order given.
    pub fn entry_names(&self) -> impl Iterator<Item = &str> {
        self.inner.entries.iter().map(|entry| entry.name.as_str())
    }

    /// Each entry with its next `runs` runs after `after` (what
    /// `worker beat --check` prints).
    pub fn upcoming(&self, after: DateTime<Utc>, runs: usize) -> Vec<Upcoming> {
        self.inner
            .entries
            .iter()
            .map(|entry| Upcoming {
                entry: entry.name.clone(),
                task: entry.signature.name().to_owned(),
                queue: entry.queue.clone(),
                schedule: entry.schedule.to_string(),
                next: std::iter::successors(entry.schedule.next_after(after), |run| {
                    entry.schedule.next_after(*run)
                })
                .take(runs)
                .collect(),
            })
            .collect()
    }

    /// This instance's role, as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.inner.role.subscribe()
    }

    /// Runs until `shutdown` completes: stands by, leads when it can, and
    /// stands by again if its connection is lost. A broker that cannot be
    /// reached at the start, or that refuses the scheduler's declarations
    /// (a queue declared otherwise, a permission), ends it with an error;
    /// a broker lost later is waited for.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) -> Result<(), BeatError> {
        tokio::pin!(shutdown);
        let inner = &self.inner;
        // A broker given by the caller is theirs: not closed here.
        let owned = inner.broker.is_none();
        let mut connected_once = false;
        loop {
            inner.role.send_replace(Role::Standby);
            let broker = tokio::select! {
                () = &mut shutdown => return Ok(()),
                connected = self.connect() => match connected {
                    Ok(broker) => broker,
                    Err(error) if !connected_once => return Err(error.into()),
                    Err(error) => {
                        tracing::warn!(%error, "beat: cannot reach the broker; retrying");
                        tokio::select! {
                            () = &mut shutdown => return Ok(()),
                            () = tokio::time::sleep(RECONNECT_PAUSE) => continue,
                        }
                    }
                },
            };
            connected_once = true;
            let acquired = tokio::select! {
                () = &mut shutdown => {
                    if owned {
                        let _ = broker.close().await;
                    }
                    return Ok(());
                }
                acquired = inner.leadership.acquire(broker.as_ref(), inner.standby_poll) => acquired,
            };
            if let Err(error) = acquired {
                tracing::warn!(%error, "beat: lost the broker while standing by; reconnecting");
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
            inner.role.send_replace(Role::Leading);
            set_leading_gauge(true);
            tracing::info!(lock = %inner.leadership.queue(), "beat: leading");
            let end = self.lead(broker.as_ref(), &mut shutdown).await;
            inner.role.send_replace(Role::Standby);
            set_leading_gauge(false);
            // Closing the connection releases the lock at once; on a
            // broker given by the caller, the lock is deleted instead.
            if owned {
                let _ = broker.close().await;
            } else {
                let _ = broker.delete_queue(inner.leadership.queue()).await;
            }
            match end {
                TermEnd::Stopped => return Ok(()),
                TermEnd::Lost(BeatError::Broker(error)) if !is_refusal(&error) => {
                    tracing::warn!(%error, "beat: lost the lead; standing by");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                TermEnd::Lost(error) => return Err(error),
            }
        }
    }

    /// A connection of its own for this term (by URL), or the broker given.
    async fn connect(&self) -> Result<Arc<dyn Broker>, BrokerError> {
        let inner = &self.inner;
        if let Some(broker) = &inner.broker {
            return Ok(Arc::clone(broker));
        }
        let url = inner.broker_url.as_str();
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("memory") => Ok(Arc::new(MemoryBroker::shared(url)?)),
            Some("amqp" | "amqps") => {
                let credentials = match &inner.credentials {
                    Some(credentials) => Some(credentials.clone()),
                    None => Credentials::from_env()?,
                };
                Ok(Arc::new(
                    AmqpBroker::connect_once_with_credentials(
                        &with_heartbeat(url),
                        inner.tls.as_ref(),
                        credentials.as_ref(),
                    )
                    .await?,
                ))
            }
            // The group's lock is an exclusive queue there too (owned while
            // this connection's lease holds); the record of runs is kept in
            // this process (Redis has no streams), as on memory://.
            Some("redis" | "rediss") => {
                let mut options = RedisBrokerOptions::default();
                if let (Some(tls), Some("rediss")) = (&inner.tls, scheme.as_deref()) {
                    options = options.tls(tls.clone());
                }
                Ok(Arc::new(RedisBroker::connect_with(url, options).await?))
            }
            _ => Err(BrokerError::InvalidUrl {
                url: redact(url),
                reason:
                    "unsupported scheme: use amqp://, amqps://, redis://, rediss:// or memory://"
                        .into(),
            }),
        }
    }

    /// One leadership term: read the record, then fire due runs until
    /// shutdown or a broker error.
    async fn lead(
        &self,
        broker: &dyn Broker,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> TermEnd {
        let inner = &self.inner;
        let durable = broker.supports_streams();
        let started = async {
            let mut last = if durable {
                broker.declare_queue(&inner.log.queue_spec()).await?;
                inner.log.read(broker).await?
            } else {
                inner
                    .local_last
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            };
            let mut declared = HashSet::new();
            for entry in &inner.entries {
                if declared.insert(entry.queue.as_str()) {
                    let spec = inner.queues.get(&entry.queue).cloned().unwrap_or_else(|| {
                        QueueSpec::task_queue(entry.queue.as_str()).of_type(inner.queue_type)
                    });
                    match broker.declare_queue(&spec).await {
                        Ok(()) => {}
                        // Declared by others with other arguments (a
                        // priority, a dead-letter exchange): it exists.
                        Err(error) if error.is_precondition_failed() => {
                            tracing::warn!(queue = %spec.name, %error,
                                "beat: the queue exists with other arguments; sending to it as it is");
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            // An entry seen for the first time counts from now.
            let now = crate::clock::now();
            for entry in &inner.entries {
                last.entry(entry.name.clone()).or_insert(now);
            }
            if durable {
                self.snapshot(broker, &last).await?;
            }
            Ok::<_, BeatError>(last)
        };
        let mut last = tokio::select! {
            () = &mut *shutdown => return TermEnd::Stopped,
            started = started => match started {
                Ok(last) => last,
                Err(error) => return TermEnd::Lost(error),
            },
        };
        tracing::info!(
            entries = inner.entries.len(),
            durable,
            "beat: schedule loaded"
        );
        let mut queue: BinaryHeap<Reverse<(DateTime<Utc>, usize)>> = inner
            .entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| {
                Some(Reverse((self.fire_time(entry, last[&entry.name])?, index)))
            })
            .collect();
        let mut next_snapshot = crate::clock::now() + to_chrono(SNAPSHOT_EVERY);
        loop {
            let now = crate::clock::now();
            let wake = queue
                .peek()
                .map_or(next_snapshot, |Reverse((at, _))| *at)
                .min(next_snapshot);
            if wake > now {
                // Still holding the lock (a lost connection fails here),
                // checked before the wait so that it delays no run.
                if let Err(error) = inner.leadership.confirm(broker).await {
                    return TermEnd::Lost(error.into());
                }
                let wait = (wake - crate::clock::now())
                    .to_std()
                    .unwrap_or_default()
                    .min(MAX_SLEEP);
                tokio::select! {
                    () = &mut *shutdown => return TermEnd::Stopped,
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let mut due = Vec::new();
            while let Some(Reverse((at, index))) = queue.peek().copied() {
                if at > now {
                    break;
                }
                queue.pop();
                due.push(index);
            }
            let fired = futures_util::stream::iter(due)
                .map(|index| {
                    let entry = &inner.entries[index];
                    let since = last[&entry.name];
                    async move {
                        (
                            index,
                            self.fire_due(broker, entry, since, now, durable).await,
                        )
                    }
                })
                .buffer_unordered(FIRING_AT_ONCE)
                .collect::<Vec<_>>();
            let fired = tokio::select! {
                () = &mut *shutdown => return TermEnd::Stopped,
                fired = fired => fired,
            };
            let mut failure = None;
            for (index, outcome) in fired {
                let entry = &inner.entries[index];
                let accounted = match outcome {
                    Ok(accounted) => accounted,
                    Err((accounted, error)) => {
                        failure.get_or_insert(error);
                        accounted
                    }
                };
                // Every entry has its place in `last` since the term began.
                if let Some(slot) = last.get_mut(&entry.name) {
                    *slot = accounted;
                }
                if !durable {
                    inner
                        .local_last
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(entry.name.clone(), accounted);
                }
                if let Some(at) = self.fire_time(entry, accounted) {
                    queue.push(Reverse((at, index)));
                }
            }
            if let Some(error) = failure {
                return TermEnd::Lost(error);
            }
            if crate::clock::now() >= next_snapshot {
                if durable {
                    if let Err(error) = self.snapshot(broker, &last).await {
                        return TermEnd::Lost(error);
                    }
                }
                next_snapshot = crate::clock::now() + to_chrono(SNAPSHOT_EVERY);
            }
        }
    }

    /// When `entry` next fires, its runs accounted for up to `last`: its
    /// next run (delayed by its jitter), or at once if that run is past.
    fn fire_time(&self, entry: &Scheduled, last: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let run = entry.schedule.next_after(last)?;
        let delay = entry
            .jitter
            .map_or(Duration::ZERO, |max| jitter(&entry.name, run, max));
        Some(run + to_chrono(delay))
    }

    /// Fires the runs of `entry` due at `now` after `since`, oldest first;
    /// returns the run it is accounted up to (with the error that stopped
    /// it, if one did).
    async fn fire_due(
        &self,
        broker: &dyn Broker,
        entry: &Scheduled,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        durable: bool,
    ) -> Result<DateTime<Utc>, (DateTime<Utc>, BeatError)> {
        let inner = &self.inner;
        let due = due(&entry.schedule, since, now, entry.missed, inner.grace);
        let mut accounted = due.missed_through;
        if due.runs.is_empty() && accounted > since {
            tracing::info!(entry = %entry.name, until = %accounted, policy = ?entry.missed, "beat: skipped missed runs");
        }
        for run in due.runs {
            if let Err(error) = self.fire(broker, entry, run, durable).await {
                return Err((accounted, error));
            }
            accounted = accounted.max(run);
        }
        Ok(accounted)
    }

    /// Publishes one run of `entry` (recorded in the run log by the same
    /// publish when `durable`).
    async fn fire(
        &self,
        broker: &dyn Broker,
        entry: &Scheduled,
        run: DateTime<Utc>,
        durable: bool,
    ) -> Result<(), BeatError> {
        let encoded = entry.signature.encode_call(None).map_err(|error| {
            BeatError::Entries(vec![EntryError {
                entry: entry.name.clone(),
                reason: error.to_string(),
            }])
        })?;
        let mut message = encoded.message;
        // As Celery's clients: an expiry is also the message's TTL.
        let ttl = entry.signature.options.expires.map(|expiry| match expiry {
            Expiry::After(after) => after,
            Expiry::At(at) => (at - crate::clock::now()).to_std().unwrap_or_default(),
        });
        if let Some(ttl) = ttl {
            message.properties.expiration = Some(ttl.as_millis().max(1).to_string());
        }
        self.inner.log.mark(&mut message, &entry.name, run, durable);
        broker.publish("", &entry.queue, &message).await?;
        if crate::metrics::enabled() {
            metrics::counter!(crate::metrics::BEAT_RUNS, "entry" => entry.name.clone())
                .increment(1);
            metrics::histogram!(crate::metrics::BEAT_LATENESS).record(
                (crate::clock::now() - run)
                    .to_std()
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
        }
        tracing::info!(entry = %entry.name, task = %entry.signature.name(), task_id = %encoded.task_id, %run,
            late_ms = (crate::clock::now() - run).num_milliseconds(), "beat: sent due task");
        Ok(())
    }

    async fn snapshot(&self, broker: &dyn Broker, last: &LastRuns) -> Result<(), BeatError> {
        let current = self
            .inner
            .entries
            .iter()
            .filter_map(|entry| Some((entry.name.as_str(), *last.get(&entry.name)?)));
        self.inner.log.snapshot(broker, current).await?;
        Ok(())
    }
}

/// Whether `error` is the broker refusing something (a configuration
/// problem, reported) rather than a lost connection (retried).
fn is_refusal(error: &BrokerError) -> bool {
    !matches!(
        error,
        BrokerError::Connection { .. } | BrokerError::Connect { .. }
    ) && error.reply_code().is_some()
}

fn set_leading_gauge(leading: bool) {
    if crate::metrics::enabled() {
        metrics::gauge!(crate::metrics::BEAT_LEADING).set(if leading { 1.0 } else { 0.0 });
    }
}

/// `url` (each node of a `;` list) with [`BEAT_HEARTBEAT_S`] unless it sets
/// a heartbeat itself.
fn with_heartbeat(url: &str) -> String {
    let node = |url: &str| {
        let url = url.trim();
        if url.is_empty() || url.contains("heartbeat=") {
            url.to_owned()
        } else if url.contains('?') {
            format!("{url}&heartbeat={BEAT_HEARTBEAT_S}")
        } else {
            format!("{url}?heartbeat={BEAT_HEARTBEAT_S}")
        }
    };
    crate::broker::split_nodes(url)
        .into_iter()
        .map(node)
        .collect::<Vec<_>>()
        .join(";")
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::with_heartbeat;

    #[test]
    fn every_node_of_a_list_gets_the_heartbeat_unless_it_sets_one() {
        assert_eq!(
            with_heartbeat("amqp://a//; amqp://b//?heartbeat=3;amqps://c//?x=1"),
            "amqp://a//?heartbeat=10;amqp://b//?heartbeat=3;amqps://c//?x=1&heartbeat=10"
        );
        assert_eq!(with_heartbeat("amqp://a//"), "amqp://a//?heartbeat=10");
        // A `;` in a password does not split the node.
        assert_eq!(
            with_heartbeat("amqp://u:pa;ss@a//"),
            "amqp://u:pa;ss@a//?heartbeat=10"
        );
    }
}
