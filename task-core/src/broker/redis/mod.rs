//! [`Broker`] on Redis, wire-compatible with kombu 5.7's Redis transport, so
//! Python Celery processes and Rust processes share queues both ways.
//!
//! The layout is kombu's ([`keys`]): a list per queue and priority step,
//! binding sets, the `unacked` hash and `unacked_index` sorted set, fanout
//! exchanges as pub/sub channels, and kombu's JSON envelope around each
//! message (module `envelope`). What this broker does better than kombu:
//!
//! - **A pop is never a loss.** Each pop and its record in `unacked` are one
//!   Lua script (`scripts::POP`); kombu's `BRPOP` takes the message out
//!   of Redis before it is recorded, so a worker (or Redis) that dies in
//!   between loses it. An idle consumer waits for Redis's key-invalidation
//!   pushes on its queues (`CLIENT TRACKING ... BCAST PREFIX`, RESP3)
//!   instead of blocking in a pop.
//! - **A task still running is never redelivered.** kombu restores every
//!   message unacknowledged for longer than the visibility timeout (one
//!   hour), so a longer task runs twice. Here each process renews the score
//!   of the messages it holds in `unacked_index` every third of the
//!   timeout, so only the messages of a process that died come back (and
//!   kombu's own restorers, which read the same scores, leave them too).
//! - **Countdowns and ETAs are kept in Redis**, in a sorted set by due time
//!   (`_task_core.delayed`), moved to their lists when due by any Rust
//!   process connected to the same Redis that consumes or has published a
//!   delay; not in a worker's memory, where kombu keeps them (and where a
//!   visibility timeout shorter than the delay duplicates them).
//! - Poison messages go to the queue's dead-letter list with the reason
//!   (the worker does it, as on RabbitMQ).
//!
//! - **Declarations are checked as RabbitMQ checks them**
//!   (module `declarations`): a different re-declaration is refused (406), a
//!   queue or exchange nobody declared is not found (404), an exclusive
//!   queue is its connection's (405) and goes with it, an auto-delete queue
//!   goes with its last consumer, and a queue declared with
//!   `x-dead-letter-exchange` dead-letters what is rejected, with `x-death`.
//!
//! What Redis does differently is explicit in the contract
//! (`tests/broker_contract.rs`, the `is_redis` branches): no publisher
//! confirms beyond Redis's reply (durability is the server's `appendonly` /
//! `appendfsync`); no message expires (`x-message-ttl`, `expiration`) and
//! no delivery is counted (`x-delivery-limit`); a full `reject-publish`
//! queue keeps what goes over; priorities are kombu's steps, lowest served
//! first; headers travel as JSON; a fanout exchange reaches only the queues
//! consumed at the time (pub/sub, as kombu); consumers of one queue take no
//! turns; the default exchange pushes to a queue nobody declared (no
//! `Unroutable`, as kombu); no streams.

mod consumer;
mod dead_letter;
mod declarations;
mod envelope;
pub mod keys;
mod routing;
mod scripts;
mod upkeep;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo};
use serde_json::Value;

use self::envelope::DeliveryInfo;
use self::keys::{binding_member, Keys};
use self::routing::Routing;
use self::scripts::Scripts;
use self::upkeep::Upkeep;
use super::connect_failure::ConnectFailure;
use super::{
    check_binding, check_declared_name, check_publish, check_queue_names, check_short, Broker,
    BrokerError, ConsumeOptions, Consumer, ExchangeKind, ExchangeSpec, Message, QueueSpec,
    TlsOptions,
};
use crate::broker::redact;

/// How the Redis broker behaves; kombu's transport options of the same
/// names where there is one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisBrokerOptions {
    /// How long a delivered message may go unacknowledged, with nobody
    /// renewing it, before it is put back in its queue (kombu's
    /// `visibility_timeout`, default one hour). A Rust worker renews what
    /// it runs, so this bounds how long the messages of a worker that died
    /// wait, not how long a task may run. Python workers on the same Redis
    /// must use the same value (`broker_transport_options`).
    pub visibility_timeout: Duration,
    /// A prefix before every key and channel (kombu's `global_keyprefix`),
    /// to share one Redis database between several apps.
    pub key_prefix: String,
    /// kombu's `priority_steps`: a message of priority `p` goes to the list
    /// of the greatest step not above `p` (default `0, 3, 6, 9`). As in
    /// Celery on Redis, **lower numbers are served first** (the lists are
    /// popped from the first step up), the opposite of RabbitMQ.
    pub priority_steps: Vec<u8>,
    /// How long an operation keeps trying through a lost connection (a
    /// Redis restart) before it fails (default 60 s).
    pub reconnect_deadline: Duration,
    /// How long one command may take before it fails (default 10 s).
    pub response_timeout: Duration,
    /// TLS settings for a `rediss://` URL (CA file, client certificate).
    pub tls: Option<TlsOptions>,
    /// How long the exclusive queues of a connection stay its own after
    /// its process vanished without closing it (default 30 s): the
    /// connection renews its lease every third of this while it is open,
    /// and another connection may take them over once it lapsed (RabbitMQ
    /// frees them when the socket closes).
    pub connection_lease: Duration,
}

impl Default for RedisBrokerOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(3600),
            key_prefix: String::new(),
            priority_steps: keys::DEFAULT_PRIORITY_STEPS.to_vec(),
            reconnect_deadline: Duration::from_secs(60),
            response_timeout: Duration::from_secs(10),
            tls: None,
            connection_lease: Duration::from_secs(30),
        }
    }
}

impl RedisBrokerOptions {
    /// Sets [`RedisBrokerOptions::visibility_timeout`].
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// Sets [`RedisBrokerOptions::key_prefix`].
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets [`RedisBrokerOptions::priority_steps`].
    pub fn priority_steps(mut self, steps: impl Into<Vec<u8>>) -> Self {
        self.priority_steps = steps.into();
        self
    }

    /// Sets [`RedisBrokerOptions::reconnect_deadline`].
    pub fn reconnect_deadline(mut self, deadline: Duration) -> Self {
        self.reconnect_deadline = deadline;
        self
    }

    /// Sets [`RedisBrokerOptions::connection_lease`].
    pub fn connection_lease(mut self, lease: Duration) -> Self {
        self.connection_lease = lease;
        self
    }

    /// Sets [`RedisBrokerOptions::tls`].
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Reads the options a broker URL may carry in its query and returns
    /// the URL without them: `visibility_timeout` (seconds, as in kombu's
    /// transport options), `global_keyprefix`. Other parameters stay for
    /// the Redis client.
    fn take_from_url(mut self, url: &str) -> Result<(String, Self), String> {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), self));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| format!("`{name}` is not UTF-8"))?;
            match name {
                "visibility_timeout" => {
                    let seconds: f64 = value
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s > 0.0)
                        .ok_or_else(|| {
                            format!(
                                "visibility_timeout `{value}` is not a positive number of seconds"
                            )
                        })?;
                    self.visibility_timeout = Duration::from_secs_f64(seconds);
                }
                "global_keyprefix" => self.key_prefix = value.into_owned(),
                _ => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((url, self))
    }
}

/// A Redis used as the framework's broker. Cheap to share (`Arc` inside).
pub struct RedisBroker {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    client: redis::Client,
    commands: ConnectionManager,
    keys: Keys,
    options: RedisBrokerOptions,
    url: String,
    routing: Routing,
    scripts: Scripts,
    /// Queues declared by this process, with what their lists keep.
    queues: Mutex<HashMap<String, ListLimits>>,
    /// The tags of the messages this process holds unacknowledged (every
    /// consumer's), renewed in `unacked_index` by the upkeep.
    held: Mutex<HashMap<String, ()>>,
    upkeep: Upkeep,
    closed: AtomicBool,
    /// This connection's id: the owner of the exclusive queues it declares.
    id: String,
    /// The exclusive queues this connection declared, deleted when it
    /// closes.
    exclusive_queues: Mutex<HashSet<String>>,
    /// Whether this connection keeps a lease (once it declared an
    /// exclusive queue).
    leased: AtomicBool,
    /// This process's consumers, ended when one of their queues is deleted.
    consumers: Mutex<Vec<std::sync::Weak<consumer::ConsumerState>>>,
}

/// What a declared queue's lists keep (from its arguments).
#[derive(Debug, Clone, Copy, Default)]
struct ListLimits {
    /// `x-max-length`: the newest this many are kept (the oldest dropped).
    max_length: Option<u64>,
    /// `x-expires` (ms): the lists go when unused this long.
    expires_ms: Option<u64>,
}

impl ListLimits {
    fn of(spec: &QueueSpec) -> Self {
        Self {
            // Only a drop-head queue drops its oldest: Redis refuses no
            // publish, so a reject-publish queue keeps what goes over.
            max_length: match spec.arguments.get("x-overflow").and_then(Value::as_str) {
                None | Some("drop-head") => {
                    spec.arguments.get("x-max-length").and_then(Value::as_u64)
                }
                Some(_) => None,
            },
            expires_ms: spec.arguments.get("x-expires").and_then(Value::as_u64),
        }
    }
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.inner.url)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to `redis://[:password@]host[:port][/db]` (`rediss://` for
    /// TLS) with the default options, or those the URL's query gives
    /// (`?visibility_timeout=30&global_keyprefix=app1:`). A server that
    /// cannot be reached fails at once with [`BrokerError::Connect`]; later
    /// losses are reconnected.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with(url, RedisBrokerOptions::default()).await
    }

    /// [`RedisBroker::connect`] with these options (the URL's query
    /// parameters still apply over them).
    pub async fn connect_with(url: &str, options: RedisBrokerOptions) -> Result<Self, BrokerError> {
        let redacted = redact(url);
        let invalid = |reason: String| BrokerError::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let (client_url, options) = options.take_from_url(url).map_err(invalid)?;
        if options.visibility_timeout.is_zero() {
            return Err(invalid("the visibility timeout must be positive".into()));
        }
        let info = client_url
            .as_str()
            .into_connection_info()
            .map_err(|e| invalid(e.to_string()))?;
        // Invalidation pushes (an idle consumer's wake-up) need RESP3.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let db = info.redis_settings().db();
        let address = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
            other => other.to_string(),
        };
        let tls_url = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        let client = match &options.tls {
            None => redis::Client::open(info),
            Some(_) if !tls_url => {
                return Err(invalid(
                    "TLS settings were given for a plaintext redis:// URL (use rediss://)".into(),
                ))
            }
            Some(tls) => {
                let pem = tls.pem()?;
                let certificates = redis::TlsCertificates {
                    client_tls: pem.client.map(|(client_cert, client_key)| {
                        redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        }
                    }),
                    root_cert: pem.ca,
                };
                redis::Client::build_with_tls(info, certificates)
            }
        }
        .map_err(|e| invalid(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(super::CONNECT_TIMEOUT))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let commands = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| BrokerError::Connect {
                url: redacted.clone(),
                address: address.clone(),
                failure: connect_failure(&e),
                source: Box::new(e),
            })?;
        let keys = Keys::new(&options.key_prefix, &options.priority_steps, db);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                commands,
                keys,
                options,
                url: redacted,
                routing: Routing::default(),
                scripts: Scripts::new(),
                queues: Mutex::new(HashMap::new()),
                held: Mutex::new(HashMap::new()),
                upkeep: Upkeep::default(),
                closed: AtomicBool::new(false),
                id: uuid::Uuid::new_v4().simple().to_string(),
                exclusive_queues: Mutex::new(HashSet::new()),
                leased: AtomicBool::new(false),
                consumers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The options in force (the URL's included).
    pub fn options(&self) -> &RedisBrokerOptions {
        &self.inner.options
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// How many messages wait in the delayed set (countdowns and ETAs not
    /// yet due, every queue's).
    pub async fn delayed_count(&self) -> Result<u64, BrokerError> {
        let key = self.inner.keys.delayed.clone();
        self.inner
            .retrying("zcard", move |mut c| {
                let key = key.clone();
                async move { c.zcard(&key).await }
            })
            .await
    }

    /// How many messages are delivered and not yet acknowledged, by every
    /// process on this Redis (kombu's `unacked` hash).
    pub async fn unacked_count(&self) -> Result<u64, BrokerError> {
        let key = self.inner.keys.unacked.clone();
        self.inner
            .retrying("hlen", move |mut c| {
                let key = key.clone();
                async move { c.hlen(&key).await }
            })
            .await
    }

    /// Puts back in their queues, now, the unacknowledged messages
    /// delivered (or last renewed) longer than the visibility timeout ago,
    /// as the consumers' periodic restore does; returns how many.
    pub async fn restore_visible(&self) -> Result<u32, BrokerError> {
        upkeep::restore_visible(&self.inner).await
    }

    /// Moves the delayed messages that are due to their queues now, as the
    /// periodic mover does; returns how many.
    pub async fn move_due(&self) -> Result<u32, BrokerError> {
        upkeep::move_due(&self.inner).await.map(|(moved, _)| moved)
    }
}

/// Refuses an `expiration` property RabbitMQ would refuse (406): it must
/// be a whole number of milliseconds. Redis expires no message (the
/// property is carried, for the consumer), but a publish that fails on
/// RabbitMQ fails here too.
fn check_expiration(message: &Message) -> Result<(), BrokerError> {
    match &message.properties.expiration {
        Some(text)
            if !text
                .parse::<u64>()
                .is_ok_and(|ms| ms <= super::MAX_MESSAGE_TTL_MS) =>
        {
            Err(BrokerError::refused(
                "basic.publish",
                super::ReplyCode::PreconditionFailed,
                format!("PRECONDITION_FAILED - invalid expiration '{text}'"),
            ))
        }
        _ => Ok(()),
    }
}

/// Classifies a failed first connection.
fn connect_failure(error: &redis::RedisError) -> ConnectFailure {
    if error.is_connection_refusal() {
        ConnectFailure::Refused
    } else if error.is_timeout() {
        ConnectFailure::TimedOut
    } else if matches!(error.kind(), redis::ErrorKind::AuthenticationFailed)
        || error.to_string().contains("WRONGPASS")
        || error.to_string().contains("NOAUTH")
    {
        ConnectFailure::AuthenticationFailed
    } else {
        ConnectFailure::Other(error.to_string())
    }
}

/// Whether `error` is worth trying again once the connection is back
/// (lost, refused, timed out, or Redis still loading its data).
pub(crate) fn is_transient(error: &redis::RedisError) -> bool {
    if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
    {
        return true;
    }
    let text = error.to_string();
    [
        "LOADING",
        "TRYAGAIN",
        "MASTERDOWN",
        "BUSY",
        "broken pipe",
        "Connection reset",
    ]
    .iter()
    .any(|mark| text.contains(mark))
}

/// A Redis error as a broker error of `operation`.
pub(crate) fn broker_error(operation: &'static str, error: redis::RedisError) -> BrokerError {
    if is_transient(&error) {
        BrokerError::Connection {
            reason: format!("{operation}: {error}"),
            reply_code: None,
            source: Some(Box::new(error)),
        }
    } else {
        BrokerError::Operation {
            operation,
            reason: error.to_string(),
            reply_code: None,
            source: Some(Box::new(error)),
        }
    }
}

impl Inner {
    /// Runs `op` on the command connection, again through transient
    /// failures (a Redis restart) until the reconnect deadline.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        operation: &'static str,
        op: F,
    ) -> Result<T, BrokerError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let deadline = Instant::now() + self.options.reconnect_deadline;
        let mut pause = Duration::from_millis(50);
        loop {
            match op(self.commands.clone()).await {
                Ok(value) => return Ok(value),
                Err(error)
                    if is_transient(&error)
                        && Instant::now() + pause < deadline
                        && !self.closed.load(Ordering::Acquire) =>
                {
                    tracing::debug!(operation, %error, "redis broker: trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(error) => return Err(broker_error(operation, error)),
            }
        }
    }

    /// The kind of `exchange`: known here, or kept in Redis by the Rust
    /// process that declared it; none if no Rust process declared it (a
    /// kombu exchange is direct, or does not exist).
    async fn exchange_kind(&self, exchange: &str) -> Result<Option<ExchangeKind>, BrokerError> {
        if let Some(kind) = self.routing.known_kind(exchange) {
            return Ok(Some(kind));
        }
        let kind = self.exchange_record(exchange).await?.map(|r| r.kind());
        if let Some(kind) = kind {
            self.routing.remember_kind(exchange, kind);
        }
        Ok(kind)
    }

    /// The kind of `exchange`, refused (404) if it does not exist: neither
    /// declared by a Rust process nor holding bindings (kombu's, direct).
    async fn existing_exchange_kind(
        &self,
        exchange: &str,
        operation: &'static str,
    ) -> Result<ExchangeKind, BrokerError> {
        match self.exchange_kind(exchange).await? {
            Some(kind) => Ok(kind),
            None if self.exchange_exists(exchange).await? => Ok(ExchangeKind::Direct),
            None => Err(declarations::exchange_not_found(operation, exchange)),
        }
    }

    /// The binding members of `exchange`.
    async fn bindings_of(&self, exchange: &str) -> Result<Vec<String>, BrokerError> {
        let key = self.keys.bindings(exchange);
        self.retrying("smembers", move |mut c| {
            let key = key.clone();
            async move { c.smembers(&key).await }
        })
        .await
    }

    /// The queues `exchange` routes `routing_key` to.
    async fn route(
        &self,
        exchange: &str,
        kind: ExchangeKind,
        routing_key: &str,
    ) -> Result<Vec<String>, BrokerError> {
        let members = self.bindings_of(exchange).await?;
        Ok(routing::route(kind, &members, routing_key)
            .into_iter()
            .map(str::to_owned)
            .collect())
    }

    /// Pushes one envelope to each of `queues` (their list for the
    /// message's priority), trimming and refreshing the expiry of lists
    /// this process declared with limits; one atomic step.
    async fn push(
        &self,
        queues: &[String],
        priority: u8,
        raw: &str,
        expires_ms: Option<u64>,
    ) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        {
            let declared = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            for queue in queues {
                let list = self.keys.list(queue, priority);
                pipe.lpush(&list, raw).ignore();
                let limits = declared.get(queue.as_str()).copied().unwrap_or_default();
                if let Some(max) = limits.max_length {
                    let keep = isize::try_from(max).unwrap_or(isize::MAX).max(1);
                    pipe.ltrim(&list, 0, keep - 1).ignore();
                }
                if let Some(ms) = limits.expires_ms.or(expires_ms) {
                    for list in self.keys.lists(queue) {
                        pipe.pexpire(list, i64::try_from(ms).unwrap_or(i64::MAX))
                            .ignore();
                    }
                }
            }
        }
        self.retrying("lpush", move |mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
    }

    /// Publishes `message` as kombu's `basic_publish` does; `mandatory`:
    /// no queue taking it is [`BrokerError::Unroutable`].
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
        mandatory: bool,
        expires_ms: Option<u64>,
    ) -> Result<(), BrokerError> {
        check_publish(exchange, routing_key, &message.properties)?;
        check_expiration(message)?;
        let info = DeliveryInfo {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            redelivered: false,
        };
        let tag = uuid::Uuid::new_v4().to_string();
        let raw = envelope::encode(message, &info, &tag);
        let priority = message.properties.priority.unwrap_or(0);
        if exchange.is_empty() {
            return self
                .push(&[routing_key.to_owned()], priority, &raw, expires_ms)
                .await;
        }
        let kind = self.exchange_kind(exchange).await?;
        if kind == Some(ExchangeKind::Fanout) {
            let topic = self.keys.fanout_topic(exchange, routing_key);
            let receivers: u64 = self
                .retrying("publish", move |mut c| {
                    let (topic, raw) = (topic.clone(), raw.clone());
                    async move { c.publish(&topic, &raw).await }
                })
                .await?;
            if receivers == 0 && mandatory {
                return Err(BrokerError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                });
            }
            return Ok(());
        }
        let members = self.bindings_of(exchange).await?;
        if kind.is_none() && members.is_empty() {
            return Err(declarations::exchange_not_found("basic.publish", exchange));
        }
        let kind = kind.unwrap_or(ExchangeKind::Direct);
        let queues: Vec<String> = routing::route(kind, &members, routing_key)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if queues.is_empty() {
            return if mandatory {
                Err(BrokerError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                })
            } else {
                Ok(())
            };
        }
        self.push(&queues, priority, &raw, expires_ms).await
    }

    /// Adds `tags` to those this process holds.
    pub(crate) fn hold(&self, tag: &str) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tag.to_owned(), ());
    }

    /// Removes `tag` from those this process holds.
    pub(crate) fn release(&self, tag: &str) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tag);
    }

    /// The tags held now.
    pub(crate) fn held_tags(&self) -> Vec<String> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Acknowledges `tag`: forgets it in `unacked` and `unacked_index`.
    pub(crate) async fn ack(&self, tag: &str) -> Result<(), BrokerError> {
        let (hash, index, field) = (
            self.keys.unacked.clone(),
            self.keys.unacked_index.clone(),
            tag.to_owned(),
        );
        let result = self
            .retrying("ack", move |mut c| {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .zrem(&index, &field)
                    .ignore()
                    .hdel(&hash, &field)
                    .ignore();
                async move { pipe.query_async::<()>(&mut c).await }
            })
            .await;
        self.release(tag);
        result
    }

    /// The `unacked` entry held under `tag` (`[envelope, exchange, routing
    /// key]`), if it is still held.
    pub(crate) async fn unacked_entry(&self, tag: &str) -> Result<Option<String>, BrokerError> {
        let (hash, field) = (self.keys.unacked.clone(), tag.to_owned());
        self.retrying("hget", move |mut c| {
            let (hash, field) = (hash.clone(), field.clone());
            async move { c.hget(&hash, &field).await }
        })
        .await
    }

    /// Puts the message held under `tag` back in its queue (`front`: next
    /// to be popped; else last), marked redelivered; `ceil`: only if its
    /// score is not above it (a visibility restore). Returns whether it was
    /// restored.
    pub(crate) async fn restore(
        &self,
        tag: &str,
        ceil: Option<f64>,
        front: bool,
    ) -> Result<bool, BrokerError> {
        let Some(entry) = self.unacked_entry(tag).await? else {
            // Settled meanwhile, or restored by someone else.
            let index = self.keys.unacked_index.clone();
            let field = tag.to_owned();
            let _: () = self
                .retrying("zrem", move |mut c| {
                    let (index, field) = (index.clone(), field.clone());
                    async move { c.zrem(&index, &field).await }
                })
                .await?;
            self.release(tag);
            return Ok(false);
        };
        let (raw, targets) = match self.restore_targets(&entry).await {
            Ok(found) => found,
            Err(reason) => {
                // kombu logs and drops what it cannot restore; it is kept
                // here, in the dead-letter list of `unacked`, with why.
                tracing::error!(tag, %reason, "redis broker: an unacknowledged entry cannot be restored; moved to unacked.dead_letter");
                (
                    entry.clone(),
                    vec![format!(
                        "{}unacked{}",
                        self.keys.prefix(),
                        super::DEAD_LETTER_SUFFIX
                    )],
                )
            }
        };
        let ceil = ceil.map(|c| format!("{c:.6}")).unwrap_or_default();
        let side = if front { "front" } else { "back" };
        let keys = [self.keys.unacked.clone(), self.keys.unacked_index.clone()]
            .into_iter()
            .chain(targets)
            .collect::<Vec<_>>();
        let script = &self.scripts.restore;
        let restored: i64 = self
            .retrying("restore", |mut c| {
                let mut invocation = script.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                invocation.arg(tag).arg(&ceil).arg(&raw).arg(side);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        self.release(tag);
        Ok(restored == 1)
    }

    /// An `unacked` entry (`[envelope, exchange, routing key]`) read: the
    /// envelope marked redelivered, and the lists it goes back to.
    async fn restore_targets(&self, entry: &str) -> Result<(String, Vec<String>), String> {
        let parsed: (Box<serde_json::value::RawValue>, String, String) =
            serde_json::from_str(entry)
                .map_err(|e| format!("not kombu's [message, exchange, routing key]: {e}"))?;
        let (raw, exchange, routing_key) = parsed;
        let raw = raw.get();
        let marked = envelope::mark_redelivered(raw).ok_or("the message is not a JSON object")?;
        let priority = envelope::priority_of(raw);
        let queues = if exchange.is_empty() {
            vec![routing_key.clone()]
        } else {
            let kind = self
                .exchange_kind(&exchange)
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or(ExchangeKind::Direct);
            self.route(&exchange, kind, &routing_key)
                .await
                .map_err(|e| e.to_string())?
        };
        if queues.is_empty() {
            return Err(format!(
                "no queue is bound to exchange `{exchange}` with key `{routing_key}` any more"
            ));
        }
        Ok((
            marked,
            queues
                .iter()
                .map(|queue| self.keys.list(queue, priority))
                .collect(),
        ))
    }
}

impl RedisBroker {
    /// Declares queue `spec.name`: its same-name exchange first (a clash
    /// refuses the queue, 406), then its record (checked against an
    /// earlier declaration), what its lists keep, its binding to that
    /// exchange, their expiry.
    async fn declare_lists(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        let inner = &self.inner;
        if let Some(kind) = spec.same_name_exchange {
            let exchange = ExchangeSpec::new(spec.name.clone(), kind);
            inner.record_exchange(&exchange).await.map_err(|error| {
                if error.is_precondition_failed() {
                    BrokerError::refused(
                        "queue.declare",
                        super::ReplyCode::PreconditionFailed,
                        format!("its same-name exchange: {error}"),
                    )
                } else {
                    error
                }
            })?;
            inner.routing.remember_kind(&spec.name, kind);
        }
        if spec.exclusive {
            declarations::ensure_lease(inner).await?;
        }
        inner.record_queue(spec).await?;
        let limits = ListLimits::of(spec);
        inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(spec.name.clone(), limits);
        if spec.same_name_exchange.is_some() {
            self.bind_queue(&spec.name, &spec.name, &spec.name).await?;
        }
        if let Some(ms) = limits.expires_ms {
            let lists = inner.keys.lists(&spec.name);
            let ms = i64::try_from(ms).unwrap_or(i64::MAX);
            inner
                .retrying("pexpire", move |mut c| {
                    let mut pipe = redis::pipe();
                    for list in &lists {
                        pipe.pexpire(list, ms).ignore();
                    }
                    async move { pipe.query_async::<()>(&mut c).await }
                })
                .await?;
        }
        Ok(())
    }

    /// Deletes queue `name` (refused, 405, if it is another connection's
    /// exclusive queue): its lists, its record, its bindings (an
    /// auto-delete exchange left without any goes too), and ends this
    /// process's consumers of it.
    async fn delete_queue_as(
        &self,
        name: &str,
        operation: &'static str,
    ) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.check_owner(name, operation).await?;
        inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        inner
            .exclusive_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        inner.routing.forget_queue(name);
        consumer::end_consumers_of(inner, name).await;
        let lists = inner.keys.lists(name);
        let (keys, queue) = (inner.keys.clone(), name.to_owned());
        let emptied: Vec<String> = inner
            .retrying("del", move |mut c| {
                let (keys, queue, lists) = (keys.clone(), queue.clone(), lists.clone());
                async move {
                    // Its bindings go with it: to its same-name exchange
                    // (Celery's task queues) and to every exchange a Rust
                    // process declared (kombu's, unknown here, keep theirs,
                    // as kombu itself forgets only those it made).
                    let mut exchanges: Vec<String> = c.hkeys(&keys.exchanges).await?;
                    exchanges.push(queue.clone());
                    exchanges.sort_unstable();
                    exchanges.dedup();
                    let mut read = redis::pipe();
                    for exchange in &exchanges {
                        read.smembers(keys.bindings(exchange));
                    }
                    let tables: Vec<Vec<String>> = read.query_async(&mut c).await?;
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    for list in &lists {
                        pipe.del(list).ignore();
                    }
                    pipe.hdel(&keys.queues, &queue).ignore();
                    let mut emptied = Vec::new();
                    for (exchange, members) in exchanges.iter().zip(&tables) {
                        let gone: Vec<&String> = members
                            .iter()
                            .filter(|member| {
                                keys::parse_binding(member).is_some_and(|(_, _, q)| q == queue)
                            })
                            .collect();
                        if !gone.is_empty() {
                            if gone.len() == members.len() {
                                emptied.push(exchange.clone());
                            }
                            pipe.srem(keys.bindings(exchange), &gone)
                                .ignore()
                                .srem(keys.permanent_bindings(exchange), &gone)
                                .ignore();
                        }
                    }
                    pipe.query_async::<()>(&mut c).await?;
                    Ok(emptied)
                }
            })
            .await?;
        for exchange in emptied {
            self.delete_if_auto_delete(&exchange).await?;
        }
        Ok(())
    }

    /// Deletes `exchange` if it was declared auto-delete and has no binding
    /// left (RabbitMQ deletes such an exchange with its last binding).
    async fn delete_if_auto_delete(&self, exchange: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let auto_delete = inner
            .exchange_record(exchange)
            .await?
            .is_some_and(|record| record.auto_delete());
        if auto_delete && inner.bindings_of(exchange).await?.is_empty() {
            self.delete_exchange(exchange).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        check_declared_name(spec, true)?;
        if spec.name.starts_with("amq.") {
            return Err(BrokerError::refused(
                "queue.declare",
                super::ReplyCode::AccessRefused,
                format!(
                    "ACCESS_REFUSED - queue name `{}` is reserved (amq.: server-named queues)",
                    spec.name
                ),
            ));
        }
        self.declare_lists(spec).await
    }

    async fn declare_server_named_queue(&self, spec: &QueueSpec) -> Result<String, BrokerError> {
        check_declared_name(spec, false)?;
        let name = format!("amq.gen-{}", uuid::Uuid::new_v4().simple());
        let named = QueueSpec {
            name: name.clone(),
            ..spec.clone()
        };
        self.declare_lists(&named).await?;
        Ok(name)
    }

    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        check_short("exchange name", &spec.name)?;
        if spec.name.is_empty() || spec.name.starts_with("amq.") {
            return Err(BrokerError::refused(
                "exchange.declare",
                super::ReplyCode::AccessRefused,
                format!(
                    "ACCESS_REFUSED - exchange name `{}` is reserved (the default exchange, or amq.)",
                    spec.name
                ),
            ));
        }
        self.inner.record_exchange(spec).await?;
        self.inner.routing.remember_kind(&spec.name, spec.kind);
        Ok(())
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        check_binding(queue, exchange, routing_key)?;
        if exchange.is_empty() {
            return Err(BrokerError::refused(
                "queue.bind",
                super::ReplyCode::AccessRefused,
                "ACCESS_REFUSED - operation not permitted on the default exchange",
            ));
        }
        let inner = &self.inner;
        let kind = inner.existing_exchange_kind(exchange, "queue.bind").await?;
        inner.existing_queue(queue, "queue.bind").await?;
        if kind == ExchangeKind::Fanout {
            inner.routing.bind_fanout(queue, exchange, routing_key);
        }
        let pattern = match kind {
            ExchangeKind::Topic => topic_pattern(routing_key),
            _ => String::new(),
        };
        let member = binding_member(routing_key, &pattern, queue);
        let (table, permanent) = (
            inner.keys.bindings(exchange),
            inner.keys.permanent_bindings(exchange),
        );
        inner
            .retrying("sadd", move |mut c| {
                let mut pipe = redis::pipe();
                pipe.sadd(&table, &member)
                    .ignore()
                    .sadd(&permanent, &member)
                    .ignore();
                async move { pipe.query_async::<()>(&mut c).await }
            })
            .await
    }

    async fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        check_binding(queue, exchange, routing_key)?;
        if exchange.is_empty() {
            return Err(BrokerError::refused(
                "queue.unbind",
                super::ReplyCode::AccessRefused,
                "ACCESS_REFUSED - operation not permitted on the default exchange",
            ));
        }
        let inner = &self.inner;
        inner.check_owner(queue, "queue.unbind").await?;
        inner.routing.unbind_fanout(queue, exchange);
        let (table, permanent) = (
            inner.keys.bindings(exchange),
            inner.keys.permanent_bindings(exchange),
        );
        let (routing_key, queue) = (routing_key.to_owned(), queue.to_owned());
        inner
            .retrying("srem", move |mut c| {
                let (table, permanent) = (table.clone(), permanent.clone());
                let (routing_key, queue) = (routing_key.clone(), queue.clone());
                async move {
                    // Whatever pattern it was bound with.
                    let members: Vec<String> = c.smembers(&table).await?;
                    let gone: Vec<&String> = members
                        .iter()
                        .filter(|member| {
                            keys::parse_binding(member)
                                .is_some_and(|(key, _, q)| key == routing_key && q == queue)
                        })
                        .collect();
                    if gone.is_empty() {
                        return Ok(());
                    }
                    let mut pipe = redis::pipe();
                    pipe.srem(&table, &gone)
                        .ignore()
                        .srem(&permanent, &gone)
                        .ignore();
                    pipe.query_async::<()>(&mut c).await
                }
            })
            .await?;
        self.delete_if_auto_delete(exchange).await
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), BrokerError> {
        self.inner
            .publish(exchange, routing_key, message, true, None)
            .await
    }

    async fn publish_transient(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), BrokerError> {
        self.inner
            .publish(exchange, routing_key, message, false, None)
            .await
    }

    async fn publish_reply(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
        // A reply list goes a day after its last result, as Celery's reply
        // queues do (`x-expires`), should its client be gone.
        self.inner
            .publish("", queue, message, true, Some(86_400_000))
            .await
    }

    async fn publish_delayed(
        &self,
        queue: &str,
        message: &Message,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        check_publish("", queue, &message.properties)?;
        check_expiration(message)?;
        let inner = &self.inner;
        let info = DeliveryInfo {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            redelivered: false,
        };
        let tag = uuid::Uuid::new_v4().to_string();
        let raw = envelope::encode(message, &info, &tag);
        let list = inner
            .keys
            .list(queue, message.properties.priority.unwrap_or(0));
        let member = scripts::delayed_member(&list, &raw);
        let due_ms =
            upkeep::now_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        let key = inner.keys.delayed.clone();
        inner
            .retrying("zadd", move |mut c| {
                let (key, member) = (key.clone(), member.clone());
                async move { c.zadd::<_, _, _, ()>(&key, &member, due_ms).await }
            })
            .await?;
        upkeep::start(&self.inner);
        inner.upkeep.wake_mover(due_ms);
        Ok(())
    }

    async fn consume(
        &self,
        queues: &[String],
        options: ConsumeOptions,
    ) -> Result<Consumer, BrokerError> {
        check_queue_names(queues)?;
        if options.stream_offset.is_some() {
            return Err(BrokerError::failed(
                "basic.consume",
                "Redis has no stream queues (Broker::supports_streams is false)",
            ));
        }
        let mut declared = Vec::new();
        for queue in queues {
            if self
                .inner
                .existing_queue(queue, "basic.consume")
                .await?
                .declared
            {
                declared.push(queue.clone());
            }
        }
        if !options.no_ack {
            upkeep::start(&self.inner);
        }
        consumer::start(&self.inner, queues, declared, options).await
    }

    fn dead_letters_dropped(&self) -> bool {
        false
    }

    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        check_short("queue name", name)?;
        self.delete_queue_as(name, "queue.delete").await
    }

    async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        check_short("exchange name", name)?;
        if name.is_empty() {
            return Err(BrokerError::refused(
                "exchange.delete",
                super::ReplyCode::AccessRefused,
                "ACCESS_REFUSED - operation not permitted on the default exchange",
            ));
        }
        let inner = &self.inner;
        inner.routing.forget(name);
        let keys = [
            inner.keys.bindings(name),
            inner.keys.permanent_bindings(name),
        ];
        let (kinds, field) = (inner.keys.exchanges.clone(), name.to_owned());
        inner
            .retrying("del", move |mut c| {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .del(&keys)
                    .ignore()
                    .hdel(&kinds, &field)
                    .ignore();
                async move { pipe.query_async::<()>(&mut c).await }
            })
            .await
    }

    async fn queue_message_count(&self, name: &str) -> Result<u32, BrokerError> {
        check_short("queue name", name)?;
        let state = self.inner.existing_queue(name, "queue.declare").await?;
        Ok(u32::try_from(state.ready).unwrap_or(u32::MAX))
    }

    async fn close(&self) -> Result<(), BrokerError> {
        // Its exclusive queues go with it, as with an AMQP connection.
        let exclusive: Vec<String> = self
            .inner
            .exclusive_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        for queue in exclusive {
            if let Err(error) = self.delete_queue_as(&queue, "queue.delete").await {
                tracing::warn!(%queue, %error, "redis broker: cannot delete an exclusive queue of a closing connection");
            }
        }
        self.inner.closed.store(true, Ordering::Release);
        self.inner.upkeep.stop();
        if self.inner.leased.load(Ordering::Acquire) {
            let key = self.inner.keys.connection(&self.inner.id);
            let mut commands = self.inner.commands.clone();
            if let Err(error) = commands.del::<_, ()>(&key).await {
                tracing::debug!(%error, "redis broker: a closed connection's lease will lapse by itself");
            }
        }
        Ok(())
    }
}

/// kombu's regular expression for a topic binding key (its
/// `TopicExchange.key_to_pattern`), stored in the binding member so that
/// kombu publishers route to the queue too.
fn topic_pattern(key: &str) -> String {
    let words: Vec<String> = key
        .split('.')
        .map(|word| match word {
            "*" => r".*?[^\.]".to_owned(),
            "#" => ".*?".to_owned(),
            word => word
                .chars()
                .flat_map(|ch| {
                    let escape = !(ch.is_alphanumeric() || ch == '_');
                    escape.then_some('\\').into_iter().chain([ch])
                })
                .collect(),
        })
        .collect();
    format!("^{}$", words.join(r"\."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_are_kombus() {
        assert_eq!(topic_pattern("a.*.#"), r"^a\..*?[^\.]\..*?$");
        assert_eq!(topic_pattern("x-y"), r"^x\-y$");
    }

    #[test]
    fn the_url_query_carries_kombus_transport_options() {
        let (url, options) = RedisBrokerOptions::default()
            .take_from_url(
                "redis://h:6379/2?visibility_timeout=2.5&global_keyprefix=app1%3A&protocol=resp3",
            )
            .unwrap();
        assert_eq!(url, "redis://h:6379/2?protocol=resp3");
        assert_eq!(options.visibility_timeout, Duration::from_millis(2500));
        assert_eq!(options.key_prefix, "app1:");
        let refused =
            RedisBrokerOptions::default().take_from_url("redis://h?visibility_timeout=-1");
        assert!(refused.unwrap_err().contains("positive"));
    }
}
