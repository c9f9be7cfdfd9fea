//! [`App`]: a connection to the broker for calling tasks and receiving their
//! results, and the process-wide default app that `.delay()` uses.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use crate::async_result::PendingResults;
use crate::backend::redis::RedisOptions;
use crate::backend::{BackendError, BackendUrl, RedisBackend, ResultBackend, ResultMeta};
use crate::broker::amqp::{AmqpBroker, ReconnectPolicy};
use crate::broker::delay_topology::Layout;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::{RedisBroker, RedisBrokerOptions};
use crate::broker::{
    redact, Broker, BrokerError, ConsumeOptions, Credentials, Message, QueueSpec, QueueType,
    TlsOptions,
};
use crate::protocol::result_message::ResultBody;
use crate::signature::EncodedCall;
use crate::{AsyncResult, Error, Signature, States};

/// The broker URL used when none is configured.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Celery's default task queue.
pub const DEFAULT_QUEUE: &str = "celery";

static DEFAULT_APP: RwLock<Option<App>> = RwLock::new(None);

/// A client of the task broker: publishes task calls and receives their
/// results on a reply queue of its own. Cheap to clone (one shared connection).
///
/// The app connected last in a process is the process's default app, which
/// `task.delay(..)` and `signature.apply_async()` use; see
/// [`App::set_as_default`] and [`Signature::apply_async_with`].
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    broker: Arc<dyn Broker>,
    default_queue: String,
    queue_specs: HashMap<String, QueueSpec>,
    /// How task queues not in `queue_specs` are declared.
    queue_type: QueueType,
    /// `x-delivery-limit` of quorum task queues not in `queue_specs`.
    delivery_limit: Option<u32>,
    declared_queues: Mutex<HashSet<String>>,
    reply_queue: OnceCell<String>,
    /// Set while the reply consumer has lost the broker and not resumed:
    /// a call sent meanwhile declares the reply queue first, so that its
    /// result waits there instead of being dropped as unroutable.
    reply_consumer_down: Arc<AtomicBool>,
    pending: Arc<PendingResults>,
    /// Where results are stored and read, when not `rpc://` (the reply
    /// queue above).
    backend: Option<Arc<dyn ResultBackend>>,
    /// This client's id, sent as `reply_to` when results go to a backend
    /// (as Celery sends its `oid`); no queue of that name is declared.
    client_id: String,
    eager: bool,
    /// What eager runs give `State<T>` parameters.
    states: Arc<States>,
    /// The logical clock of this app's events and remote control requests.
    clock: Arc<crate::events::LamportClock>,
    /// The broker URL, password left out.
    broker_url: String,
    /// Sends `task-sent` events, when asked to.
    sent_events: Option<crate::events::EventDispatcher>,
}

impl Drop for AppInner {
    /// The last handle of an app closes its broker connection (in the
    /// background, on the current runtime), unless someone else still holds
    /// the broker (a clone of [`App::broker`], or one given to
    /// [`AppBuilder::build_with`]): its reply consumer then keeps routing
    /// results. An [`AsyncResult`] still waiting for its result holds its
    /// app, so the last handle is the app's or the last awaited result's,
    /// whichever goes last. (Should a waiter remain anyway, it ends at once
    /// with [`Error::ResultLost`].) The reply consumer's task holds one
    /// reference of its own, and ends once the connection is closed.
    fn drop(&mut self) {
        let own_references = 1 + usize::from(self.reply_queue.get().is_some());
        if Arc::strong_count(&self.broker) > own_references {
            return;
        }
        self.pending.fail_all(
            "the app was dropped (its last handle went away), which closed its connection",
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let broker = Arc::clone(&self.broker);
            runtime.spawn(async move {
                if let Err(error) = broker.close().await {
                    tracing::debug!(%error, "closing a dropped app's broker connection");
                }
            });
        }
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("default_queue", &self.inner.default_queue)
            .field("reply_queue", &self.inner.reply_queue.get())
            .finish_non_exhaustive()
    }
}

/// Configures and connects an [`App`].
#[derive(Clone)]
pub struct AppBuilder {
    broker_url: String,
    default_queue: String,
    queue_specs: HashMap<String, QueueSpec>,
    queue_type: QueueType,
    delivery_limit: Option<u32>,
    credentials: Option<Credentials>,
    set_as_default: bool,
    eager: bool,
    reconnect: ReconnectPolicy,
    tls: Option<TlsOptions>,
    states: States,
    result_backend: String,
    redis_options: RedisOptions,
    redis_broker_options: RedisBrokerOptions,
    backend: Option<Arc<dyn ResultBackend>>,
    send_sent_events: bool,
}

impl std::fmt::Debug for AppBuilder {
    /// URLs without their passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field("broker_url", &redact(&self.broker_url))
            .field("default_queue", &self.default_queue)
            .field("queue_specs", &self.queue_specs)
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .field("credentials", &self.credentials)
            .field("set_as_default", &self.set_as_default)
            .field("eager", &self.eager)
            .field("reconnect", &self.reconnect)
            .field("tls", &self.tls)
            .field("result_backend", &redact(&self.result_backend))
            .field("send_sent_events", &self.send_sent_events)
            .finish_non_exhaustive()
    }
}

impl Default for AppBuilder {
    fn default() -> Self {
        Self {
            broker_url: std::env::var("BROKER_URL").unwrap_or_else(|_| DEFAULT_BROKER_URL.into()),
            default_queue: DEFAULT_QUEUE.into(),
            queue_specs: HashMap::new(),
            queue_type: QueueType::default(),
            delivery_limit: None,
            credentials: None,
            set_as_default: true,
            eager: false,
            reconnect: ReconnectPolicy::default(),
            tls: None,
            states: States::new(),
            result_backend: std::env::var("RESULT_BACKEND").unwrap_or_else(|_| "rpc://".into()),
            redis_options: RedisOptions::default(),
            redis_broker_options: RedisBrokerOptions::default(),
            backend: None,
            send_sent_events: false,
        }
    }
}

impl AppBuilder {
    /// How an `amqp://` connection recovers from RabbitMQ going away: backoff
    /// between attempts, and how long a publish keeps retrying before it
    /// fails (default: 100 ms doubling up to 5 s, 30 s per operation).
    pub fn reconnect_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// TLS settings for an `amqps://` broker URL: a CA file to trust besides
    /// the system's roots, a client certificate (default: the system's
    /// roots, no client certificate). The broker's certificate and host name
    /// are always verified, and an `amqps://` connection never falls back to
    /// plaintext. Given with an `amqp://` URL, `connect` refuses to connect
    /// rather than ignore it.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The broker to connect to (default: `$BROKER_URL`, else [`DEFAULT_BROKER_URL`]).
    pub fn broker_url(mut self, url: impl Into<String>) -> Self {
        self.broker_url = url.into();
        self
    }

    /// The user and password for the broker nodes whose URL names no user
    /// (default: from the environment, [`Credentials::from_env`]:
    /// `BROKER_USER` with `BROKER_PASSWORD` or `BROKER_PASSWORD_FILE`), so
    /// that a secret need not sit in the URL.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The queue for calls that name none (default `celery`).
    pub fn default_queue(mut self, queue: impl Into<String>) -> Self {
        self.default_queue = queue.into();
        self
    }

    /// Declares `spec.name` with these settings (e.g. `x-max-priority`)
    /// instead of as a plain durable queue. Callers and workers that share a
    /// queue must declare it alike, or RabbitMQ refuses the second declaration.
    pub fn queue(mut self, spec: QueueSpec) -> Self {
        self.queue_specs.insert(spec.name.clone(), spec);
        self
    }

    /// The type of the task queues this app declares (Celery's
    /// `task_default_queue_type`; default classic), except those given with
    /// [`AppBuilder::queue`]. [`QueueType::Quorum`]: every task queue is a
    /// quorum queue as Celery 5.5+ declares one ([`QueueSpec::quorum`]), and
    /// so are the worker's dead-letter, expired-task and chord-join queues;
    /// delays and retries go through Celery's native delayed delivery
    /// levels (quorum queues dead-lettering at least once: see
    /// [`delay_topology::celery`](crate::broker::delay_topology::celery)),
    /// which Python peers on the same queues share; workers use
    /// per-consumer prefetch (quorum queues refuse a global one).
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// With [`QueueType::Quorum`], gives the task queues this app declares
    /// a poison-message guard ([`QueueSpec::delivery_limit`]): a message
    /// delivered `limit` times without an ack goes to the queue's
    /// dead-letter queue. Every peer must declare the queue alike (or use
    /// a RabbitMQ policy). Ignored for classic queues, which have no
    /// delivery count. Default: none.
    pub fn delivery_limit(mut self, limit: Option<u32>) -> Self {
        self.delivery_limit = limit;
        self
    }

    /// Whether this app becomes the process default app, replacing the
    /// previous one, as a new Celery app becomes `current_app` (default: yes).
    pub fn set_as_default(mut self, yes: bool) -> Self {
        self.set_as_default = yes;
        self
    }

    /// Runs every call inline, in the caller, instead of publishing it
    /// (Celery's `task_always_eager`), for tests; see [`App::eager`].
    /// An eager app connects to no broker (default: no).
    pub fn eager(mut self, yes: bool) -> Self {
        self.eager = yes;
        self
    }

    /// Provides `value` to the tasks an eager app runs that take a
    /// [`State<T>`](crate::State) of its type (a worker has
    /// `WorkerBuilder::state` for the same). Ignored by an app that is not
    /// eager: its calls run on workers.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Where results are stored and read (Celery's `result_backend`;
    /// default: `$RESULT_BACKEND`, else `rpc://`): `rpc://` sends each
    /// result to the caller's reply queue; `redis://host:port/db` or
    /// `rediss://...` stores results in Redis as Celery does, readable by id
    /// from any process ([`App::result`]). Workers and their callers must
    /// name the same backend, as in Celery.
    pub fn result_backend(mut self, url: impl Into<String>) -> Self {
        self.result_backend = url.into();
        self
    }

    /// TLS settings for a `rediss://` result backend: a CA file (then only
    /// that CA is trusted) and a client certificate (default: the system's
    /// roots). Given with a `redis://` URL, `connect` refuses rather than
    /// ignore it.
    pub fn result_backend_tls(mut self, tls: TlsOptions) -> Self {
        self.redis_options.tls = Some(tls);
        self
    }

    /// Uses this backend, already connected (e.g. a [`RedisBackend`] shared
    /// by several apps), instead of one named by URL.
    pub fn result_backend_with(mut self, backend: Arc<dyn ResultBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// How long a key-value backend keeps results (Celery's
    /// `result_expires`; default one day; `None` keeps them until
    /// forgotten).
    pub fn result_expires(mut self, expires: Option<std::time::Duration>) -> Self {
        self.redis_options.expires = expires;
        self
    }

    /// Whether workers of this app store each task's name, arguments,
    /// worker, retries and queue with its result (Celery's
    /// `result_extended`; default no).
    pub fn result_extended(mut self, yes: bool) -> Self {
        self.redis_options.extended = yes;
        self
    }

    /// Sends a `task-sent` event for each task this app publishes (Celery's
    /// `task_send_sent_event`; default no), as `gen<pid>@<host>`, so that
    /// monitors (Flower) see tasks before a worker takes them.
    pub fn send_sent_events(mut self, yes: bool) -> Self {
        self.send_sent_events = yes;
        self
    }

    /// How a `redis://` broker behaves: visibility timeout, key prefix,
    /// priority steps (see [`RedisBrokerOptions`]; the URL's query
    /// parameters `visibility_timeout` and `global_keyprefix` apply over
    /// them).
    pub fn redis_broker_options(mut self, options: RedisBrokerOptions) -> Self {
        self.redis_broker_options = options;
        self
    }

    /// Connects to the broker the URL's scheme names: `amqp://` or `amqps://`
    /// (RabbitMQ; `amqps://` is TLS, see [`AppBuilder::tls`]), `redis://` or
    /// `rediss://` (Redis, laid out as kombu's Redis transport: see
    /// [`RedisBroker`]), or `memory://[name]` (the in-process broker of that name, shared by every
    /// app of the process that names it). An eager app connects to nothing.
    ///
    /// A broker that cannot be reached fails at once with
    /// [`BrokerError::Connect`], whose message says what failed, where and
    /// what to check.
    pub async fn connect(self) -> Result<App, Error> {
        let url = self.broker_url.as_str();
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        let broker: Arc<dyn Broker> = match scheme.as_deref() {
            _ if self.eager => Arc::new(MemoryBroker::new()),
            Some("memory") => Arc::new(MemoryBroker::shared(url)?),
            Some("amqp" | "amqps") => {
                let credentials = match &self.credentials {
                    Some(credentials) => Some(credentials.clone()),
                    None => Credentials::from_env()?,
                };
                Arc::new(
                    AmqpBroker::connect_with_credentials(
                        url,
                        self.reconnect,
                        self.tls.as_ref(),
                        credentials.as_ref(),
                    )
                    .await?
                    .with_delay_layout(Layout::for_queue_type(self.queue_type)),
                )
            }
            Some("redis" | "rediss") => {
                let mut options = self.redis_broker_options.clone();
                if let (Some(tls), None) = (&self.tls, &options.tls) {
                    options.tls = Some(tls.clone());
                }
                Arc::new(RedisBroker::connect_with(url, options).await?)
            }
            _ => return Err(BrokerError::InvalidUrl {
                url: redact(url),
                reason:
                    "unsupported scheme: use amqp://, amqps://, redis://, rediss:// or memory://"
                        .into(),
            }
            .into()),
        };
        let mut app = self;
        if app.backend.is_none() && !app.eager {
            app.backend = match BackendUrl::parse(&app.result_backend)? {
                BackendUrl::Rpc => None,
                BackendUrl::Redis(url) => Some(Arc::new(
                    RedisBackend::connect(&url, app.redis_options.clone()).await?,
                )),
            };
        }
        Ok(app.build_with(broker))
    }

    /// Builds an app on an already-connected broker.
    pub fn build_with(self, broker: Arc<dyn Broker>) -> App {
        let clock: Arc<crate::events::LamportClock> = Arc::default();
        let sent_events = (self.send_sent_events && !self.eager).then(|| {
            let name = format!("gen{}@{}", std::process::id(), crate::control::host_name());
            crate::events::EventDispatcher::new(Arc::clone(&broker), name, Arc::clone(&clock))
        });
        let app = App {
            inner: Arc::new(AppInner {
                broker,
                default_queue: self.default_queue,
                queue_specs: self.queue_specs,
                queue_type: self.queue_type,
                delivery_limit: self.delivery_limit,
                declared_queues: Mutex::new(HashSet::new()),
                clock,
                broker_url: redact(&self.broker_url),
                sent_events,
                reply_queue: OnceCell::new(),
                reply_consumer_down: Arc::new(AtomicBool::new(false)),
                pending: Arc::new(PendingResults::default()),
                backend: self.backend.filter(|_| !self.eager),
                client_id: uuid::Uuid::new_v4().to_string(),
                eager: self.eager,
                states: Arc::new(self.states),
            }),
        };
        if self.set_as_default {
            app.set_as_default();
        }
        app
    }
}

impl App {
    /// Connects to `url` with default settings and makes the new app the
    /// process's default app.
    pub async fn connect(url: &str) -> Result<App, Error> {
        Self::builder().broker_url(url).connect().await
    }

    /// Connects to `$BROKER_URL`, or [`DEFAULT_BROKER_URL`] when unset.
    pub async fn from_env() -> Result<App, Error> {
        Self::builder().connect().await
    }

    /// Starts configuring an app.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// The default app, used by `.delay()` and `.apply_async()`.
    pub fn current() -> Result<App, Error> {
        DEFAULT_APP
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Error::NoDefaultApp)
    }

    /// Makes this app the process's default app, replacing any other. A
    /// replaced default app stays connected while its results are awaited
    /// (each [`AsyncResult`] holds its app), then closes.
    pub fn set_as_default(&self) {
        *DEFAULT_APP.write().unwrap_or_else(PoisonError::into_inner) = Some(self.clone());
    }

    /// Receives every worker's and client's events (Celery's `celeryev`
    /// exchange: what Flower and `celery events` read), typed; see
    /// [`EventReceiver`](crate::events::EventReceiver).
    pub async fn events(&self) -> Result<crate::events::EventReceiver, BrokerError> {
        crate::events::EventReceiver::start(&self.inner.broker, "#").await
    }

    /// Sends remote control requests to workers (Celery's `app.control`
    /// and `inspect`): ping, inspect, revoke, rate limits, shutdown; see
    /// [`Control`](crate::control::Control).
    pub fn control(&self) -> crate::control::Control {
        crate::control::Control::new(Arc::clone(&self.inner.broker), self.clock())
    }

    /// The logical clock this app's events and remote control requests
    /// carry (a worker shares its app's).
    pub fn clock(&self) -> Arc<crate::events::LamportClock> {
        Arc::clone(&self.inner.clock)
    }

    /// The broker URL this app was built for, its password left out.
    pub fn broker_url(&self) -> &str {
        &self.inner.broker_url
    }

    /// The broker connection.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// Whether calls run inline instead of being published ([`App::eager`]).
    pub fn is_eager(&self) -> bool {
        self.inner.eager
    }

    /// The queue used when a call names none.
    pub fn default_queue(&self) -> &str {
        &self.inner.default_queue
    }

    /// How `queue` is declared: as configured, else as a Celery task queue
    /// of the app's [`QueueType`].
    pub fn queue_spec(&self, queue: &str) -> QueueSpec {
        if let Some(spec) = self.inner.queue_specs.get(queue) {
            return spec.clone();
        }
        let spec = QueueSpec::task_queue(queue).of_type(self.inner.queue_type);
        match self.inner.delivery_limit {
            Some(limit) if spec.is_quorum() => spec.delivery_limit(limit),
            _ => spec,
        }
    }

    /// The type of the task queues this app declares by default
    /// ([`AppBuilder::queue_type`]); the worker's own queues (dead letters,
    /// expired tasks, chord joins) follow it.
    pub fn queue_type(&self) -> QueueType {
        self.inner.queue_type
    }

    /// Declares `queue` once per app (later calls return at once).
    pub async fn ensure_queue(&self, queue: &str) -> Result<(), BrokerError> {
        if self.declared(queue) {
            return Ok(());
        }
        self.ensure_declared(&self.queue_spec(queue)).await
    }

    /// Declares the queue `spec` describes, once per app and queue name.
    pub async fn ensure_declared(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        if self.declared(&spec.name) {
            return Ok(());
        }
        self.inner.broker.declare_queue(spec).await?;
        self.mark_declared(&spec.name);
        Ok(())
    }

    /// Remembers that `queue` exists, so it is not declared again.
    fn mark_declared(&self, queue: &str) {
        self.inner
            .declared_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.to_owned());
    }

    /// Declares a queue the framework shares between all the apps of a
    /// virtual host (`task_core.expired`, `task_core.chord_join`), or,
    /// when it exists with other settings (another app declared it as
    /// another [`QueueType`], or an earlier version with other arguments),
    /// uses it as it is: all that matters is that it exists. Logged once
    /// per app and queue.
    pub async fn ensure_shared(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        match self.ensure_declared(spec).await {
            Err(error) if error.is_precondition_failed() => {
                self.inner.broker.queue_message_count(&spec.name).await?;
                tracing::info!(queue = %spec.name, %error,
                    "the shared queue exists with other settings; using it as it is");
                self.mark_declared(&spec.name);
                Ok(())
            }
            other => other,
        }
    }

    /// How the chord join tasks' queue is declared: a task queue of the
    /// app's type (without a delivery limit: a join waits, unacked, for its
    /// parts).
    pub fn chord_join_queue_spec(&self) -> QueueSpec {
        QueueSpec::task_queue(crate::protocol::chord_join::JOIN_TASK_QUEUE)
            .of_type(self.inner.queue_type)
    }

    fn declared(&self, queue: &str) -> bool {
        self.inner
            .declared_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(queue)
    }

    /// Starts a call of the task registered as `name` (any language). Its
    /// result is untyped, a [`serde_json::Value`]; say which type to read it
    /// as with [`Signature::returning`]:
    ///
    /// ```no_run
    /// # async fn demo(app: task_core::App) -> Result<(), task_core::Error> {
    /// use std::time::Duration;
    /// let untyped = app.signature("tasks.add").arg(2).arg(3);
    /// let value: serde_json::Value = untyped.apply_async_with(&app).await?.get(Duration::from_secs(5)).await?;
    /// let typed = app.signature("tasks.add").arg(2).arg(3).returning::<i64>();
    /// let sum: i64 = typed.apply_async_with(&app).await?.get(Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// (A result type left to inference would otherwise become `()` when
    /// the result is not used, and fail to decode.)
    pub fn signature(&self, name: impl Into<std::borrow::Cow<'static, str>>) -> Signature {
        Signature::new(name)
    }

    /// Publishes `signature` and returns once the broker confirmed it.
    pub async fn send<R: DeserializeOwned>(
        &self,
        signature: Signature<R>,
    ) -> Result<AsyncResult<R>, Error> {
        self.send_awaited(signature, true).await
    }

    /// Publishes `signature`; when `awaited` is off, its result is stored
    /// (or sent) as usual but this app does not wait for it (a chord's
    /// header parts: only the body is awaited), and the handle has no waiter.
    pub(crate) async fn send_awaited<R: DeserializeOwned>(
        &self,
        signature: Signature<R>,
        awaited: bool,
    ) -> Result<AsyncResult<R>, Error> {
        if self.inner.eager {
            let inner = &self.inner;
            return crate::eager::apply(
                &inner.pending,
                &inner.states,
                &inner.default_queue,
                signature,
            )
            .await;
        }
        let queue = signature
            .options
            .queue
            .as_deref()
            .unwrap_or(&self.inner.default_queue);
        self.ensure_queue(queue).await?;
        let backend = self.inner.backend.as_ref();
        let reply_to = match (signature.options.ignore_result, backend) {
            (true, _) => None,
            (false, Some(_)) => Some(self.inner.client_id.as_str()),
            (false, None) => Some(self.live_reply_queue().await?),
        };
        let EncodedCall {
            task_id,
            message,
            eta,
        } = signature.encode_call(reply_to)?;
        let slot = match (reply_to, backend) {
            (None, _) => None,
            (Some(_), _) if !awaited => None,
            // Subscribed before publishing: no state can be missed.
            (Some(_), Some(backend)) => Some(backend.watch(&task_id, false).await?.waiter),
            (Some(_), None) => Some(self.inner.pending.expect(&task_id)),
        };
        // Dropped unpublished, the handle stops expecting the result.
        let app = slot.as_ref().map(|_| self.clone());
        let result = AsyncResult::new(task_id, slot, app);
        // A future ETA is kept by the broker (delay levels), not by a worker.
        let delay = eta
            .and_then(|eta| (eta - crate::clock::now()).to_std().ok())
            .filter(|delay| !delay.is_zero());
        let publishing = std::time::Instant::now();
        let published = match delay {
            Some(delay) => {
                self.inner
                    .broker
                    .publish_delayed(queue, &message, delay)
                    .await
            }
            None => self.inner.broker.publish("", queue, &message).await,
        };
        match published {
            Ok(()) => {
                if crate::metrics::enabled() {
                    metrics::counter!(crate::metrics::PUBLISHED).increment(1);
                    metrics::histogram!(crate::metrics::PUBLISH_SECONDS)
                        .record(publishing.elapsed().as_secs_f64());
                }
                if let Some(events) = &self.inner.sent_events {
                    send_task_sent(events, &message, queue).await;
                }
                Ok(result)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The name of this app's reply queue, declared and consumed on first use.
    async fn reply_queue(&self) -> Result<&str, BrokerError> {
        self.inner
            .reply_queue
            .get_or_try_init(|| async {
                let name = uuid::Uuid::new_v4().to_string();
                let broker = Arc::clone(&self.inner.broker);
                let deliveries = consume_reply_queue(broker.as_ref(), &name).await?;
                tokio::spawn(route_results(
                    broker,
                    name.clone(),
                    deliveries,
                    Arc::clone(&self.inner.pending),
                    Arc::clone(&self.inner.reply_consumer_down),
                ));
                Ok(name)
            })
            .await
            .map(String::as_str)
    }

    /// The reply queue, declared again first while its consumer is down
    /// (after a broker restart it exists again only once declared: a
    /// worker answering a call sent meanwhile would find no queue, and
    /// drop the result).
    async fn live_reply_queue(&self) -> Result<&str, BrokerError> {
        let name = self.reply_queue().await?;
        if self.inner.reply_consumer_down.load(Ordering::Acquire) {
            self.inner
                .broker
                .declare_queue(&QueueSpec::reply_queue(name.to_owned()))
                .await?;
        }
        Ok(name)
    }

    /// Where the results of this app's calls go (their `reply_to`): the
    /// reply queue under `rpc://` (declared and consumed on first use), this
    /// client's id with a result backend, eager mode's own address. A chain
    /// freezes each step with it, so its last step answers this app.
    pub(crate) async fn result_address(&self) -> Result<String, Error> {
        if self.inner.eager {
            return Ok(crate::eager::EAGER_REPLY_TO.to_owned());
        }
        match &self.inner.backend {
            Some(_) => Ok(self.inner.client_id.clone()),
            None => Ok(self.live_reply_queue().await?.to_owned()),
        }
    }

    /// The name of this app's reply queue, once its first call created it.
    pub fn reply_queue_name(&self) -> Option<&str> {
        self.inner.reply_queue.get().map(String::as_str)
    }

    /// How many results this app is still waiting for.
    pub fn pending_results(&self) -> usize {
        self.inner.pending.len() + self.inner.backend.as_ref().map_or(0, |b| b.awaited())
    }

    /// A handle to task `task_id` that has already failed with `failure`
    /// (a result message), for outcomes decided in the caller (an eager
    /// chord whose part failed).
    pub(crate) fn failed_result<R>(
        &self,
        task_id: String,
        failure: &crate::broker::Message,
    ) -> AsyncResult<R> {
        let waiter = self.inner.pending.expect(&task_id);
        match ResultBody::decode(&failure.body) {
            Ok(body) => self.inner.pending.deliver(body),
            Err(_) => self.inner.pending.forget(&task_id),
        }
        AsyncResult::new(task_id, Some(waiter), None)
    }

    /// The result backend, when it is not `rpc://`.
    pub fn result_backend(&self) -> Option<&Arc<dyn ResultBackend>> {
        self.inner.backend.as_ref()
    }

    /// A handle to the result of task `task_id`, typed by the caller: the
    /// same handle `.delay()` returns, for a task sent by any process (a web
    /// request that enqueued it, a Python client, this process before a
    /// restart). With a key-value backend, what is stored already is read
    /// before this returns, so [`AsyncResult::state`] is current, and later
    /// states arrive as they are stored. With `rpc://` only a task this app
    /// sent can be awaited (its result comes to this app's reply queue).
    ///
    /// ```no_run
    /// # async fn demo(app: task_core::App, id: &str) -> Result<(), task_core::Error> {
    /// use std::time::Duration;
    /// let result = app.result::<i64>(id).await?;
    /// println!("{id} is {}", result.state());
    /// let sum = result.get(Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn result<R>(&self, task_id: &str) -> Result<AsyncResult<R>, Error> {
        let waiter = match &self.inner.backend {
            Some(backend) => backend.watch(task_id, true).await?.waiter,
            None => self.inner.pending.expect(task_id),
        };
        Ok(AsyncResult::new(
            task_id.to_owned(),
            Some(waiter),
            Some(self.clone()),
        ))
    }

    /// Everything the backend holds for `task_id` (Celery's result meta:
    /// state, result, traceback, date done, parent and group, and with
    /// `result_extended` the task's name, arguments, worker, retries and
    /// queue), or `None` when nothing is stored (Celery's PENDING).
    /// `rpc://` cannot read results by id: [`BackendError::Unsupported`].
    pub async fn result_meta(&self, task_id: &str) -> Result<Option<ResultMeta>, Error> {
        Ok(self.backend("read a result by id")?.meta(task_id).await?)
    }

    /// Deletes the stored result of `task_id` (Celery's `forget`); under
    /// `rpc://`, stops waiting for it.
    pub async fn forget(&self, task_id: &str) -> Result<(), Error> {
        match &self.inner.backend {
            Some(backend) => Ok(backend.forget(task_id).await?),
            None => {
                self.inner.pending.forget(task_id);
                Ok(())
            }
        }
    }

    /// Saves the member ids of group `group_id` in the backend (Celery's
    /// `GroupResult.save`), so any process can restore the group.
    pub async fn save_group(&self, group_id: &str, task_ids: &[String]) -> Result<(), Error> {
        Ok(self
            .backend("save a group")?
            .save_group(group_id, task_ids)
            .await?)
    }

    /// The member ids of a saved group (`GroupResult.restore`), `None` when
    /// none is saved under `group_id`.
    pub async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, Error> {
        Ok(self
            .backend("restore a group")?
            .restore_group(group_id)
            .await?)
    }

    /// Deletes a saved group (`GroupResult.delete`).
    pub async fn forget_group(&self, group_id: &str) -> Result<(), Error> {
        Ok(self
            .backend("delete a group")?
            .forget_group(group_id)
            .await?)
    }

    fn backend(&self, operation: &'static str) -> Result<&Arc<dyn ResultBackend>, BackendError> {
        self.inner
            .backend
            .as_ref()
            .ok_or(BackendError::Unsupported {
                backend: "rpc://",
                operation,
            })
    }

    /// Closes the broker connection (dropping the last handle of an app
    /// does it too, in the background).
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.broker.close().await.map_err(Error::from)
    }
}

/// Sends the `task-sent` event of a task just published to `queue`
/// (logged, never failing the call).
async fn send_task_sent(events: &crate::events::EventDispatcher, message: &Message, queue: &str) {
    use crate::events::{EventKind, TaskSent};
    let headers = &message.properties.headers;
    let text = |key: &str| headers.get_str(key).map(str::to_owned);
    let sent = TaskSent {
        uuid: text("id").unwrap_or_default(),
        name: text("task").unwrap_or_default(),
        args: text("argsrepr").unwrap_or_default(),
        kwargs: text("kwargsrepr").unwrap_or_default(),
        root_id: text("root_id"),
        parent_id: text("parent_id"),
        retries: headers
            .get_json("retries")
            .and_then(|r| r.as_u64())
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0),
        eta: text("eta"),
        expires: text("expires"),
        queue: Some(queue.to_owned()),
        exchange: Some(String::new()),
        routing_key: Some(queue.to_owned()),
    };
    if let Err(error) = events.send(EventKind::TaskSent(sent)).await {
        tracing::debug!(%error, "could not send a task-sent event");
    }
}

/// Declares (again, after a reconnection: it is auto-delete) and consumes
/// the reply queue `name`.
async fn consume_reply_queue(
    broker: &dyn Broker,
    name: &str,
) -> Result<crate::broker::DeliveryStream, BrokerError> {
    broker
        .declare_queue(&QueueSpec::reply_queue(name.to_owned()))
        .await?;
    let consumer = broker
        .consume(
            std::slice::from_ref(&name.to_owned()),
            ConsumeOptions::no_ack(),
        )
        .await?;
    Ok(consumer.deliveries)
}

/// How long the reply consumer pauses between two attempts to resume (each
/// attempt itself retries until the reconnection deadline).
const RESUME_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads the reply queue and hands each result to its waiter. When the
/// connection is lost it resumes on the new one (waiters keep waiting:
/// results published after that arrive). While it cannot resume (the broker
/// stays away past the reconnection deadline) it fails every waiter with a
/// typed error and keeps trying, so that the app receives results again once
/// the broker is back; it stops when the broker refuses (the app was closed,
/// the queue cannot be declared) or the app is gone.
async fn route_results(
    broker: Arc<dyn Broker>,
    name: String,
    mut deliveries: crate::broker::DeliveryStream,
    pending: Arc<PendingResults>,
    down: Arc<AtomicBool>,
) {
    loop {
        let lost = loop {
            match deliveries.next().await {
                Some(Ok(delivery)) => match ResultBody::decode(&delivery.message.body) {
                    Ok(body) => pending.deliver(body),
                    Err(error) => tracing::warn!(%error, "dropping a malformed result message"),
                },
                Some(Err(error)) => break format!("result consumer failed: {error}"),
                None => break "result consumer stopped".to_owned(),
            }
        };
        down.store(true, Ordering::Release);
        let mut failed_attempts = 0u32;
        deliveries = loop {
            match consume_reply_queue(broker.as_ref(), &name).await {
                Ok(resumed) => {
                    down.store(false, Ordering::Release);
                    tracing::info!(%lost, failed_attempts, "resumed consuming results");
                    break resumed;
                }
                Err(error) => {
                    let reason = format!("{lost}; could not resume: {error}");
                    pending.fail_all(&reason);
                    // Only this task holds the broker: the app was dropped.
                    let app_gone = Arc::strong_count(&broker) == 1;
                    if app_gone || !matches!(error, BrokerError::Connection { .. }) {
                        tracing::warn!(%reason, "no more results will arrive on this app's reply queue");
                        return;
                    }
                    if failed_attempts == 0 {
                        tracing::warn!(%reason, "no result can arrive until the broker is back; still trying");
                    }
                    failed_attempts += 1;
                    tokio::time::sleep(RESUME_PAUSE).await;
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::sync::Notify;

    use super::*;
    use crate::broker::{Consumer, ExchangeSpec, Message};

    const WAIT: Duration = Duration::from_secs(5);

    /// An in-process broker that signals when it is closed.
    struct ObservedBroker {
        inner: MemoryBroker,
        closed: Arc<Notify>,
    }

    #[async_trait]
    impl Broker for ObservedBroker {
        async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
            self.inner.declare_queue(spec).await
        }

        async fn declare_server_named_queue(
            &self,
            spec: &QueueSpec,
        ) -> Result<String, BrokerError> {
            self.inner.declare_server_named_queue(spec).await
        }

        async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
            self.inner.declare_exchange(spec).await
        }

        async fn bind_queue(
            &self,
            queue: &str,
            exchange: &str,
            routing_key: &str,
        ) -> Result<(), BrokerError> {
            self.inner.bind_queue(queue, exchange, routing_key).await
        }

        async fn unbind_queue(
            &self,
            queue: &str,
            exchange: &str,
            routing_key: &str,
        ) -> Result<(), BrokerError> {
            self.inner.unbind_queue(queue, exchange, routing_key).await
        }

        async fn publish(
            &self,
            exchange: &str,
            routing_key: &str,
            message: &Message,
        ) -> Result<(), BrokerError> {
            self.inner.publish(exchange, routing_key, message).await
        }

        async fn consume(
            &self,
            queues: &[String],
            options: ConsumeOptions,
        ) -> Result<Consumer, BrokerError> {
            self.inner.consume(queues, options).await
        }

        async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
            self.inner.delete_queue(name).await
        }

        async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
            self.inner.delete_exchange(name).await
        }

        async fn queue_message_count(&self, name: &str) -> Result<u32, BrokerError> {
            self.inner.queue_message_count(name).await
        }

        async fn close(&self) -> Result<(), BrokerError> {
            self.closed.notify_one();
            self.inner.close().await
        }
    }

    fn observed_app() -> (App, Arc<Notify>) {
        let closed = Arc::new(Notify::new());
        let broker = ObservedBroker {
            inner: MemoryBroker::new(),
            closed: Arc::clone(&closed),
        };
        let app = App::builder()
            .set_as_default(false)
            .build_with(Arc::new(broker));
        (app, closed)
    }

    /// A call no worker will ever run (nobody consumes its queue).
    async fn unanswered(app: &App) -> AsyncResult<serde_json::Value> {
        app.send(
            app.signature("test.app.never_runs")
                .queue("test.app.nobody"),
        )
        .await
        .expect("the memory broker takes the call")
    }

    /// Celery result bodies with the REJECTED and IGNORED states, as a
    /// Python worker could send them, fed to the app's reply queue: the
    /// caller gets a typed answer rather than waiting out its timeout.
    #[tokio::test]
    async fn rejected_and_ignored_results_on_the_reply_queue_reach_the_caller() {
        let (app, _) = observed_app();
        let rejected = unanswered(&app).await;
        let ignored = unanswered(&app).await;
        let reply_queue = app
            .reply_queue_name()
            .expect("the calls made it")
            .to_owned();
        let bodies = [
            format!(
                r#"{{"task_id": "{}", "status": "REJECTED", "result": "no room", "traceback": null, "children": [], "date_done": null}}"#,
                rejected.id()
            ),
            format!(
                r#"{{"task_id": "{}", "status": "IGNORED", "result": null, "traceback": null, "children": [], "date_done": null}}"#,
                ignored.id()
            ),
        ];
        for body in bodies {
            let message = Message {
                properties: crate::broker::Properties {
                    content_type: Some("application/json".into()),
                    ..Default::default()
                },
                body: body.into_bytes(),
            };
            app.broker()
                .publish_reply(&reply_queue, &message)
                .await
                .expect("the reply queue exists");
        }
        match rejected.get(WAIT).await {
            Err(Error::Rejected { task_id, reason }) => {
                assert_eq!(
                    (task_id.as_str(), reason.as_str()),
                    (rejected.id(), "no room")
                )
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        match ignored.get(WAIT).await {
            Err(Error::Ignored { task_id }) => assert_eq!(task_id, ignored.id()),
            other => panic!("expected Ignored, got {other:?}"),
        }
        assert_eq!(app.pending_results(), 0);
    }

    #[tokio::test]
    async fn a_dropped_result_handle_is_no_longer_awaited() {
        let (app, _) = observed_app();
        let awaited = unanswered(&app).await;
        assert_eq!(app.pending_results(), 1);
        drop(awaited);
        assert_eq!(
            app.pending_results(),
            0,
            "the dropped handle's waiter leaked"
        );
    }

    #[tokio::test]
    async fn an_awaited_result_keeps_its_app_connected_and_the_last_handle_closes_it() {
        let (app, closed) = observed_app();
        let awaited = unanswered(&app).await;
        let reply_queue = app.reply_queue_name().unwrap().to_owned();
        let broker = Arc::downgrade(app.broker());
        drop(app);
        // The result still arrives after the app's last handle is gone.
        let value = serde_json::value::to_raw_value(&7).unwrap();
        let result = crate::protocol::result_message::success(awaited.id(), &value);
        let still_connected = broker.upgrade().expect("the awaited result holds its app");
        still_connected
            .publish_reply(&reply_queue, &result)
            .await
            .expect("the reply queue still exists");
        drop(still_connected);
        assert_eq!(awaited.get(WAIT).await.unwrap(), 7);
        // Then the result handle was the app's last: the connection closes.
        drop(awaited);
        tokio::time::timeout(WAIT, closed.notified())
            .await
            .expect("the last handle closed the broker connection");
    }

    #[tokio::test]
    async fn a_result_handle_dropped_unawaited_lets_its_app_close() {
        let (app, closed) = observed_app();
        let awaited = unanswered(&app).await;
        drop(app);
        drop(awaited);
        tokio::time::timeout(WAIT, closed.notified())
            .await
            .expect("no leaked waiter keeps the connection open");
    }
}
