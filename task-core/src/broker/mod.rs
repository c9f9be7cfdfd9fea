//! The broker abstraction: what the framework needs from a message broker
//! (declare queues, publish with confirmation, consume with acknowledgements),
//! independent of AMQP. [`amqp::AmqpBroker`] implements it on RabbitMQ,
//! [`redis::RedisBroker`] on Redis (kombu's Redis transport layout),
//! [`memory::MemoryBroker`] in the process.

pub mod amqp;
mod amqp_link;
mod connect_failure;
pub mod credentials;
mod dead_letter;
mod declaration;
pub mod delay_topology;
mod field_table;
pub mod headers;
pub mod memory;
pub mod redis;
mod reply_code;
mod tls;
mod url;

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value};

pub use connect_failure::{ConnectFailure, TlsFailure};
pub use credentials::Credentials;
pub use headers::{HeaderValue, Headers};
pub use reply_code::ReplyCode;
pub use tls::TlsOptions;
pub use url::{redact, split_nodes, BrokerNodes, NODE_SEPARATOR};

/// Errors from the broker connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker URL could not be parsed or uses an unsupported scheme.
    #[error("invalid broker URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given (credentials included: do not log it unredacted).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection to the broker was lost (or could not be replaced
    /// within the reconnection deadline).
    #[error("broker connection error: {reason}")]
    Connection {
        /// What was lost, during which operation.
        reason: String,
        /// The code the broker closed the connection with (e.g. 320
        /// `CONNECTION_FORCED` when RabbitMQ shuts down), if it sent one.
        reply_code: Option<ReplyCode>,
        /// The client library's error, or the failed reconnection's.
        #[source]
        source: Option<BoxError>,
    },
    /// The first connection to the broker could not be opened: what failed,
    /// where, and what to check, in one line.
    #[error("{}", connect_failure::describe(.url, .address, .failure))]
    Connect {
        /// The URL without its password (`amqp://user@host:port/vhost`).
        url: String,
        /// `host:port`.
        address: String,
        /// Why it failed.
        failure: ConnectFailure,
        /// The client library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// None of the nodes of a failover list (`amqp://a;amqp://b`) could be
    /// connected to: each node's failure, in the order tried (with a single
    /// node, its [`BrokerError::Connect`] is reported as is).
    #[error("{}", connect_failure::describe_attempts(.attempts))]
    NoNodeReachable {
        /// Why each node failed (most often [`BrokerError::Connect`]s,
        /// which name their node without its password).
        attempts: Vec<BrokerError>,
    },
    /// A broker password file ([`Credentials::password_file`]) could not
    /// be used; nothing was sent.
    #[error("broker password file `{}`: {reason}", .path.display())]
    CredentialsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it (never its content).
        reason: String,
    },
    /// The broker credentials given in the environment are incomplete or
    /// contradictory ([`Credentials::from_env`]).
    #[error("broker credentials: {reason}")]
    Credentials {
        /// What is wrong.
        reason: String,
    },
    /// A TLS file ([`TlsOptions`]) could not be read or holds no usable
    /// certificate or key; nothing was sent.
    #[error("TLS file `{}`: {reason}", .path.display())]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The broker refused the message (publisher confirm `nack`).
    #[error("the broker refused (nack) the message published to `{routing_key}`")]
    Nacked {
        /// Where the message was sent.
        routing_key: String,
    },
    /// No queue is bound to where the message was published.
    #[error(
        "no queue receives messages published to exchange `{exchange}` with key `{routing_key}`"
    )]
    Unroutable {
        /// The exchange published to.
        exchange: String,
        /// The routing key used.
        routing_key: String,
    },
    /// A name (queue, exchange, routing key) or a text property is longer
    /// than the 255 bytes AMQP allows; nothing was sent.
    #[error("{what} is {len} bytes long, over AMQP's limit of 255: `{preview}`")]
    TooLong {
        /// What it is (`"queue name"`, `"correlation_id"`, ...).
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// Its first characters.
        preview: String,
    },
    /// The broker refused an operation (with a [`ReplyCode`], e.g. 406
    /// `PRECONDITION_FAILED`), or the client could not carry it out (no code).
    /// (See [`BrokerError::reply_code`].)
    #[error("broker operation `{operation}` failed: {reason}")]
    Operation {
        /// The operation attempted (`"queue.declare"`, `"basic.publish"`, ...).
        operation: &'static str,
        /// The broker's reply text (`PRECONDITION_FAILED - inequivalent
        /// arg ...`) or the client's explanation, after what it was about.
        reason: String,
        /// The broker's reply code, when the broker refused.
        reply_code: Option<ReplyCode>,
        /// The client library's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

/// An error from the client library, kept as the source of a [`BrokerError`]
/// without exposing its type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl BrokerError {
    /// An operation the broker refused with `reply_code`.
    pub(crate) fn refused(
        operation: &'static str,
        reply_code: ReplyCode,
        reason: impl Into<String>,
    ) -> Self {
        BrokerError::Operation {
            operation,
            reason: reason.into(),
            reply_code: Some(reply_code),
            source: None,
        }
    }

    /// An operation the client could not carry out (no reply code).
    pub(crate) fn failed(operation: &'static str, reason: impl Into<String>) -> Self {
        BrokerError::Operation {
            operation,
            reason: reason.into(),
            reply_code: None,
            source: None,
        }
    }

    /// The AMQP reply code the broker answered with: for a refused
    /// operation, a connection the broker closed, or a first connection it
    /// refused. `None` when the broker sent none (a lost socket, a check
    /// made by the client, a refusal of the client library).
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            BrokerError::Operation { reply_code, .. }
            | BrokerError::Connection { reply_code, .. } => *reply_code,
            BrokerError::Connect { source, .. } => source
                .downcast_ref::<lapin::Error>()
                .and_then(ReplyCode::of_lapin),
            // The code every node answered with, if they agree.
            BrokerError::NoNodeReachable { attempts } => {
                let mut codes = attempts.iter().map(BrokerError::reply_code);
                let first = codes.next().flatten();
                codes.all(|code| code == first).then_some(first).flatten()
            }
            _ => None,
        }
    }

    /// Whether the broker refused because the object exists with other
    /// settings, an argument is invalid, or a delivery tag is unknown
    /// (AMQP's 406 `PRECONDITION_FAILED`).
    pub fn is_precondition_failed(&self) -> bool {
        self.reply_code() == Some(ReplyCode::PreconditionFailed)
    }

    /// Whether the broker answered that the queue or exchange does not
    /// exist (404 `NOT_FOUND`).
    pub fn is_not_found(&self) -> bool {
        self.reply_code() == Some(ReplyCode::NotFound)
    }

    /// Whether the broker refused access (403 `ACCESS_REFUSED`: permissions,
    /// a reserved `amq.` name, the default exchange).
    pub fn is_access_refused(&self) -> bool {
        self.reply_code() == Some(ReplyCode::AccessRefused)
    }

    /// Whether the queue is exclusive to another connection (405
    /// `RESOURCE_LOCKED`).
    pub fn is_resource_locked(&self) -> bool {
        self.reply_code() == Some(ReplyCode::ResourceLocked)
    }
}

/// AMQP-style message properties, in the framework's own terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// MIME type of the body (`application/json` for Celery messages;
    /// borrowed when it is a constant, so the common values cost no
    /// allocation per message).
    pub content_type: Option<Cow<'static, str>>,
    /// Body encoding (`utf-8`).
    pub content_encoding: Option<Cow<'static, str>>,
    /// The task id, on task and result messages.
    pub correlation_id: Option<String>,
    /// The queue results should be sent to.
    pub reply_to: Option<String>,
    /// Whether the broker must keep the message on disk (`delivery_mode=2`).
    pub persistent: bool,
    /// Message priority, on queues declared with a maximum priority.
    pub priority: Option<u8>,
    /// Per-message TTL in milliseconds.
    pub expiration: Option<String>,
    /// Application headers (Celery's task headers), in AMQP's types.
    pub headers: Headers,
}

/// A message to publish or a message received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// Properties and headers.
    pub properties: Properties,
    /// The body bytes.
    pub body: Vec<u8>,
}

/// How long one attempt to open a broker connection (TCP, TLS and the AMQP
/// handshake, up to the first channel) may take before it fails with
/// [`ConnectFailure::TimedOut`].
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// AMQP's limit for names and text properties ("short strings"), in bytes.
pub const MAX_SHORT_STRING: usize = 255;

/// Refuses `value` if it is longer than AMQP allows for `what`.
pub(crate) fn check_short(what: &'static str, value: &str) -> Result<(), BrokerError> {
    if value.len() <= MAX_SHORT_STRING {
        return Ok(());
    }
    Err(BrokerError::TooLong {
        what,
        len: value.len(),
        preview: value.chars().take(40).chain("…".chars()).collect(),
    })
}

/// Refuses a publish whose exchange, routing key or text properties are too
/// long for AMQP.
pub(crate) fn check_publish(
    exchange: &str,
    routing_key: &str,
    properties: &Properties,
) -> Result<(), BrokerError> {
    check_short("exchange name", exchange)?;
    check_short("routing key", routing_key)?;
    for (what, value) in [
        ("content_type", properties.content_type.as_deref()),
        ("content_encoding", properties.content_encoding.as_deref()),
        ("correlation_id", properties.correlation_id.as_deref()),
        ("reply_to", properties.reply_to.as_deref()),
        ("expiration", properties.expiration.as_deref()),
    ] {
        if let Some(value) = value {
            check_short(what, value)?;
        }
    }
    Ok(())
}

/// Checks the name of a queue to declare: [`Broker::declare_queue`] needs
/// one (`named`), [`Broker::declare_server_named_queue`] none.
pub(crate) fn check_declared_name(spec: &QueueSpec, named: bool) -> Result<(), BrokerError> {
    match (named, spec.name.is_empty()) {
        (true, true) => Err(BrokerError::failed(
            "queue.declare",
            "a queue to declare needs a name (declare_server_named_queue lets the broker pick one)",
        )),
        (false, false) => Err(BrokerError::failed(
            "queue.declare",
            format!(
                "queue `{}`: a server-named queue is declared with an empty name",
                spec.name
            ),
        )),
        _ => {
            check_short("queue name", &spec.name)?;
            check_queue_kind(spec)
        }
    }
}

/// Refuses what a quorum queue cannot be, before the broker does (with a
/// reason that says what to change).
fn check_queue_kind(spec: &QueueSpec) -> Result<(), BrokerError> {
    if !spec.is_quorum() {
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(BrokerError::failed(
            "queue.declare",
            format!("queue `{}`: a quorum queue {why}", spec.name),
        ))
    };
    if !spec.durable || spec.auto_delete || spec.exclusive {
        return refuse("is durable, never exclusive nor auto-delete");
    }
    if spec.arguments.contains_key("x-max-priority") {
        return refuse(
            "has no x-max-priority (RabbitMQ 4.0+ gives quorum queues two priority levels, \
             0-4 and 5+, without any argument; before 4.0 they have none)",
        );
    }
    Ok(())
}

/// Refuses a binding whose names are too long for AMQP.
pub(crate) fn check_binding(
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), BrokerError> {
    check_short("queue name", queue)?;
    check_short("exchange name", exchange)?;
    check_short("routing key", routing_key)
}

/// Refuses queue names too long for AMQP.
pub(crate) fn check_queue_names<'a>(
    names: impl IntoIterator<Item = &'a String>,
) -> Result<(), BrokerError> {
    names
        .into_iter()
        .try_for_each(|name| check_short("queue name", name))
}

/// The suffix of a task queue's dead-letter queue.
pub const DEAD_LETTER_SUFFIX: &str = ".dead_letter";

/// The longest message TTL RabbitMQ accepts (`x-message-ttl`), in milliseconds.
pub const MAX_MESSAGE_TTL_MS: u64 = u32::MAX as u64;

/// Checks that `queue` can be a task queue: its name and every name derived
/// from it (its dead-letter queue, the routing key that carries its delayed
/// messages) fit in AMQP's 255 bytes. A worker refuses at start a queue that
/// fails this, rather than finding out on the first message it cannot
/// dead-letter or delay.
pub fn check_task_queue_name(queue: &str) -> Result<(), BrokerError> {
    check_short("queue name", queue)?;
    check_short(
        "dead-letter queue name",
        &format!("{queue}{DEAD_LETTER_SUFFIX}"),
    )?;
    check_short(
        "delayed-delivery routing key",
        &delay_topology::routing_key(delay_topology::MAX_DELAY_MS, queue),
    )
}

/// How much a dead-letter queue keeps. Beyond a limit the oldest messages
/// are dropped, so a flood of poison messages cannot fill the broker's disk;
/// `None` lifts a limit. Applied when the worker declares the queue: a queue
/// that exists already with other settings keeps them (the worker warns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterRetention {
    /// The most messages kept (default 10,000).
    pub max_messages: Option<u32>,
    /// The most body bytes kept (default 1 GiB).
    pub max_bytes: Option<u64>,
    /// How long a message is kept (default 14 days; RabbitMQ's limit is
    /// about 49 days).
    pub max_age: Option<Duration>,
}

impl Default for DeadLetterRetention {
    fn default() -> Self {
        Self {
            max_messages: Some(10_000),
            max_bytes: Some(1 << 30),
            max_age: Some(Duration::from_secs(14 * 24 * 3600)),
        }
    }
}

impl DeadLetterRetention {
    /// No limit at all: every dead-lettered message stays until removed.
    pub const UNBOUNDED: DeadLetterRetention = DeadLetterRetention {
        max_messages: None,
        max_bytes: None,
        max_age: None,
    };
}

/// Headers a worker adds to a dead-lettered message.
pub mod dead_letter_headers {
    /// Why the message could not be processed.
    pub const REASON: &str = "x-dead-letter-reason";
    /// The queue it was consumed from.
    pub const QUEUE: &str = "x-dead-letter-queue";
    /// When it was dead-lettered (ISO-8601, UTC).
    pub const AT: &str = "x-dead-lettered-at";
    /// The worker process (`<pid>@<host>`) that dead-lettered it.
    pub const WORKER: &str = "x-dead-letter-worker";
}

/// How a queue is declared.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last consumer goes away.
    pub auto_delete: bool,
    /// Only usable by the declaring connection.
    pub exclusive: bool,
    /// Queue arguments (`x-max-priority`, `x-expires`, `x-dead-letter-exchange`, ...).
    pub arguments: Map<String, Value>,
    /// Also declare an exchange of the same name, of this kind, and bind the
    /// queue to it with its name as routing key, as Celery does for its task
    /// queues (direct by default; topic for quorum queues, which Celery's
    /// native delayed delivery needs: [`QueueSpec::quorum`]).
    pub same_name_exchange: Option<ExchangeKind>,
}

/// The kind of RabbitMQ queue a task queue is (Celery's
/// `task_default_queue_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// A classic queue: kept by one node of a cluster (gone with it until
    /// it comes back); priorities up to `x-max-priority`.
    #[default]
    Classic,
    /// A quorum queue (`x-queue-type: quorum`): replicated by Raft over
    /// the cluster's nodes, so a task survives the death of a minority of
    /// them. Durable, never exclusive nor auto-delete; no global prefetch;
    /// priorities: none before RabbitMQ 4.0, two levels (0-4 normal, 5+
    /// high) from 4.0, without any queue argument. Delays go through
    /// Celery's native delayed delivery levels, themselves quorum queues
    /// ([`delay_topology::celery`]).
    Quorum,
}

impl QueueType {
    /// RabbitMQ's name for it (`classic`, `quorum`): the value of
    /// `x-queue-type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QueueType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!(
                "unknown queue type `{other}`: expected `classic` or `quorum`"
            )),
        }
    }
}

impl QueueSpec {
    /// A task queue as Celery declares one: durable, no arguments, bound to a
    /// direct exchange of the same name. See [`QueueSpec::quorum`] for
    /// Celery's quorum form.
    pub fn task_queue(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            durable: true,
            auto_delete: false,
            exclusive: false,
            arguments: Map::new(),
            same_name_exchange: Some(ExchangeKind::Direct),
        }
    }

    /// A client's result queue: auto-delete, expiring one day after its
    /// last use, as Celery 5.7 declares it, but not durable (Celery's is):
    /// in a cluster, a durable queue whose node died cannot be declared
    /// again on another node until that node is back (404 "home node ...
    /// is down"), so a client could not fail over; RabbitMQ deletes a
    /// transient one with its node, and the client declares it again where
    /// it reconnected. (Results are transient messages either way, and
    /// only the client declares its reply queue.)
    pub fn reply_queue(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            durable: false,
            auto_delete: true,
            exclusive: false,
            arguments: Map::new(),
            same_name_exchange: None,
        }
        .expires_after(Duration::from_secs(86_400))
    }

    /// Where a worker puts the messages of `queue` that it cannot process
    /// (malformed, oversized, unknown task): `<queue>.dead_letter`, durable,
    /// keeping what the default [`DeadLetterRetention`] allows.
    pub fn dead_letter_queue(queue: &str) -> Self {
        Self::dead_letter_queue_with(queue, &DeadLetterRetention::default())
    }

    /// [`QueueSpec::dead_letter_queue`] with its own retention: the limits
    /// become the queue arguments `x-max-length`, `x-max-length-bytes` and
    /// `x-message-ttl`, with `x-overflow` `drop-head` (the oldest go first).
    pub fn dead_letter_queue_with(queue: &str, retention: &DeadLetterRetention) -> Self {
        let mut arguments = Map::new();
        if let Some(max) = retention.max_messages {
            arguments.insert("x-max-length".into(), Value::from(max));
        }
        if let Some(max) = retention.max_bytes {
            arguments.insert("x-max-length-bytes".into(), Value::from(max));
        }
        if let Some(age) = retention.max_age {
            let ms = u64::try_from(age.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, MAX_MESSAGE_TTL_MS);
            arguments.insert("x-message-ttl".into(), Value::from(ms));
        }
        if !arguments.is_empty() {
            arguments.insert("x-overflow".into(), Value::from("drop-head"));
        }
        Self {
            name: format!("{queue}{DEAD_LETTER_SUFFIX}"),
            durable: true,
            auto_delete: false,
            exclusive: false,
            arguments,
            same_name_exchange: None,
        }
    }

    /// A queue the broker names (`amq.gen-…`), for
    /// [`Broker::declare_server_named_queue`]: exclusive to the declaring
    /// connection, deleted when its last consumer goes (or with the
    /// connection), not durable. For a process's own reply queue, or a
    /// consumer of a fanout exchange.
    pub fn server_named() -> Self {
        Self {
            name: String::new(),
            durable: false,
            auto_delete: true,
            exclusive: true,
            arguments: Map::new(),
            same_name_exchange: None,
        }
    }

    /// Sets `x-expires`: the broker deletes the queue once it has gone
    /// `unused` unused (no consumer, no declaration, no get).
    pub fn expires_after(mut self, unused: Duration) -> Self {
        let ms = u64::try_from(unused.as_millis()).unwrap_or(u64::MAX).max(1);
        self.arguments.insert("x-expires".into(), Value::from(ms));
        self
    }

    /// Makes this a quorum queue as Celery 5.5+ declares one
    /// (`task_default_queue_type = "quorum"`): `x-queue-type: quorum`,
    /// durable, not exclusive nor auto-delete, and its same-name exchange a
    /// topic exchange (set `task_default_exchange_type = "topic"` on the
    /// Python side, as Celery's native delayed delivery requires). Peers
    /// must declare a queue the same way: RabbitMQ refuses a declaration
    /// that differs in its type (406). An `x-max-priority` is refused when
    /// the queue is declared (quorum queues have none before RabbitMQ 4.0,
    /// and two levels without any argument from 4.0).
    pub fn quorum(mut self) -> Self {
        self.arguments.insert(
            "x-queue-type".into(),
            Value::from(QueueType::Quorum.as_str()),
        );
        self.durable = true;
        self.auto_delete = false;
        self.exclusive = false;
        if self.same_name_exchange.is_some() {
            self.same_name_exchange = Some(ExchangeKind::Topic);
        }
        self
    }

    /// [`QueueSpec::quorum`] for [`QueueType::Quorum`], unchanged for
    /// [`QueueType::Classic`].
    pub fn of_type(self, queue_type: QueueType) -> Self {
        match queue_type {
            QueueType::Classic => self,
            QueueType::Quorum => self.quorum(),
        }
    }

    /// The queue's type, from its `x-queue-type` argument (classic without).
    pub fn queue_type(&self) -> Option<QueueType> {
        match self.arguments.get("x-queue-type").and_then(Value::as_str) {
            None | Some("classic") => Some(QueueType::Classic),
            Some("quorum") => Some(QueueType::Quorum),
            Some(_) => None,
        }
    }

    /// Whether it is a quorum queue.
    pub fn is_quorum(&self) -> bool {
        self.queue_type() == Some(QueueType::Quorum)
    }

    /// A quorum queue's poison-message guard (`x-delivery-limit`): a message
    /// delivered more than `limit` times without an ack (a worker that dies
    /// on it, again and again) is dead-lettered instead of delivered again,
    /// to [`EXPIRED_EXCHANGE`], where workers copy it into the queue's
    /// dead-letter queue with the reason `delivery_limit`, at least once
    /// (`x-dead-letter-strategy: at-least-once`, which needs `x-overflow:
    /// reject-publish`: a full queue refuses publishes rather than drop its
    /// oldest). Every peer declaring the queue must give the same arguments;
    /// for a queue Python peers declare too, set a RabbitMQ policy instead
    /// (`delivery-limit`, `dead-letter-exchange`, `dead-letter-strategy`).
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self = self.quorum();
        self.arguments
            .insert("x-delivery-limit".into(), Value::from(limit));
        self.arguments.insert(
            "x-dead-letter-exchange".into(),
            Value::from(EXPIRED_EXCHANGE),
        );
        self.arguments.insert(
            "x-dead-letter-strategy".into(),
            Value::from("at-least-once"),
        );
        self.arguments
            .insert("x-overflow".into(), Value::from("reject-publish"));
        self
    }

    /// Sets the kind of the same-name exchange (when there is one).
    pub fn exchange_kind(mut self, kind: ExchangeKind) -> Self {
        if self.same_name_exchange.is_some() {
            self.same_name_exchange = Some(kind);
        }
        self
    }

    /// Sets `x-max-priority` so the queue orders messages by priority.
    pub fn max_priority(mut self, max: u8) -> Self {
        self.arguments
            .insert("x-max-priority".into(), Value::from(max));
        self
    }

    /// Dead-letters what the broker drops from this queue to
    /// [`EXPIRED_EXCHANGE`] (`x-dead-letter-exchange`), where workers drain
    /// it: a task message that expired while it waited (Celery's clients
    /// give a message with `expires` an AMQP TTL) is answered REVOKED
    /// there instead of vanishing, and anything else the broker dropped is
    /// kept in the queue's dead-letter queue. Python peers must declare the
    /// queue with the same argument (kombu's `Queue(queue_arguments=...)`);
    /// for a queue declared without it (Celery's `celery`), a RabbitMQ
    /// policy does the same: `rabbitmqctl set_policy expired-tasks
    /// '^celery$' '{"dead-letter-exchange":"task_core.expired"}' --apply-to
    /// queues`.
    pub fn revoking_expired(mut self) -> Self {
        self.arguments.insert(
            "x-dead-letter-exchange".into(),
            Value::from(EXPIRED_EXCHANGE),
        );
        self
    }

    /// The queue workers drain [`EXPIRED_EXCHANGE`] through: durable,
    /// shared by every worker.
    pub fn expired_tasks() -> Self {
        Self {
            same_name_exchange: None,
            ..Self::task_queue(EXPIRED_QUEUE)
        }
    }
}

/// The fanout exchange task queues dead-letter to
/// ([`QueueSpec::revoking_expired`]).
pub const EXPIRED_EXCHANGE: &str = "task_core.expired";

/// The queue every worker drains [`EXPIRED_EXCHANGE`] through.
pub const EXPIRED_QUEUE: &str = "task_core.expired";

/// How an exchange routes a message to the queues bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExchangeKind {
    /// To the queues bound with exactly the message's routing key.
    Direct,
    /// To every bound queue, whatever the routing key.
    Fanout,
    /// To the queues whose binding pattern matches the routing key: words
    /// separated by `.`, where `*` stands for exactly one word and `#` for
    /// zero or more (`celery.#`, `*.task.*`).
    Topic,
}

impl ExchangeKind {
    /// Its AMQP name (`"direct"`, `"fanout"`, `"topic"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an exchange is declared. A re-declaration must match (kind, durable,
/// auto-delete), or the broker refuses it with 406 `PRECONDITION_FAILED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// Exchange name (not `""`, the default exchange, nor `amq.`-prefixed).
    pub name: String,
    /// How it routes.
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last queue is unbound from it (once it had one).
    pub auto_delete: bool,
}

impl ExchangeSpec {
    /// A durable exchange of this kind, not auto-deleted.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        Self {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
        }
    }

    /// A durable direct exchange.
    pub fn direct(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Direct)
    }

    /// A durable fanout exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Fanout)
    }

    /// A durable topic exchange.
    pub fn topic(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Topic)
    }

    /// Sets [`ExchangeSpec::durable`].
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Sets [`ExchangeSpec::auto_delete`].
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }
}

/// How to consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Unacknowledged messages the broker may send ahead (0 = unlimited),
    /// over all the queues together, or per queue with
    /// [`ConsumeOptions::prefetch_per_queue`].
    pub prefetch: u16,
    /// The prefetch window applies to each queue's consumer on its own
    /// (RabbitMQ's per-consumer QoS), not to all of them together (global
    /// QoS, which quorum queues refuse: 540 `NOT_IMPLEMENTED`). A worker
    /// consuming a quorum queue sets it, as Celery's does.
    pub prefetch_per_queue: bool,
    /// The broker forgets a message as soon as it is sent (no ack needed).
    pub no_ack: bool,
    /// How long a delivery may stay unacknowledged before the broker gives
    /// up on the consumer (RabbitMQ's `consumer_timeout`, 30 min by default;
    /// sent as the `x-consumer-timeout` consumer argument, which RabbitMQ
    /// 3.11.15+ honours). `None`: the broker's setting.
    pub ack_timeout: Option<Duration>,
    /// The only consumer of its queues: refused with 403 `ACCESS_REFUSED`
    /// while another consumer is on one of them, and other consumers are
    /// refused while it is (AMQP's exclusive `basic.consume`). A mutex
    /// held by the broker: it goes with the consumer's channel.
    pub exclusive: bool,
    /// Where to start reading a stream queue (RabbitMQ's
    /// `x-stream-offset`); `None` for other queues.
    pub stream_offset: Option<StreamOffset>,
}

/// Where a consumer of a stream queue starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOffset {
    /// The oldest message the stream still keeps.
    First,
    /// Only messages published from now on.
    Next,
    /// The messages the broker stored from about this time on (by chunk:
    /// a few earlier ones may come first).
    Since(chrono::DateTime<chrono::Utc>),
}

impl ConsumeOptions {
    /// Manual acknowledgements with a prefetch window of `prefetch`.
    pub fn manual_ack(prefetch: u16) -> Self {
        Self {
            prefetch,
            prefetch_per_queue: false,
            no_ack: false,
            ack_timeout: None,
            exclusive: false,
            stream_offset: None,
        }
    }

    /// No acknowledgements, no prefetch limit (e.g. for results).
    pub fn no_ack() -> Self {
        Self {
            prefetch: 0,
            prefetch_per_queue: false,
            no_ack: true,
            ack_timeout: None,
            exclusive: false,
            stream_offset: None,
        }
    }

    /// Sets [`ConsumeOptions::prefetch_per_queue`].
    pub fn with_prefetch_per_queue(mut self, per_queue: bool) -> Self {
        self.prefetch_per_queue = per_queue;
        self
    }

    /// Sets [`ConsumeOptions::exclusive`].
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Sets [`ConsumeOptions::stream_offset`].
    pub fn from_stream_offset(mut self, offset: StreamOffset) -> Self {
        self.stream_offset = Some(offset);
        self
    }

    /// Sets [`ConsumeOptions::ack_timeout`].
    pub fn with_ack_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.ack_timeout = timeout;
        self
    }
}

/// A received message and the means to settle it.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// The queue it was consumed from.
    pub queue: String,
    /// The exchange it was published to (`""`: the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The broker delivered it before, to a consumer that did not ack it.
    pub redelivered: bool,
    /// Settles the message with the broker.
    pub acker: Box<dyn Acknowledger>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("queue", &self.queue)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

/// Settles one delivery.
#[async_trait]
pub trait Acknowledger: Send + Sync {
    /// The message was handled: the broker forgets it.
    async fn ack(&self) -> Result<(), BrokerError>;
    /// The message was not handled: requeue it, or drop / dead-letter it.
    async fn reject(&self, requeue: bool) -> Result<(), BrokerError>;
}

/// A stream of deliveries from one or more queues.
pub type DeliveryStream = BoxStream<'static, Result<Delivery, BrokerError>>;

/// A message broker, as the framework uses it.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Declares a queue (idempotent when the declaration matches; 406
    /// `PRECONDITION_FAILED` when it does not). The name must not be empty:
    /// see [`Broker::declare_server_named_queue`].
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError>;

    /// Declares a queue the broker names (`amq.gen-…`), as `spec` says
    /// otherwise (its `name` must be empty: [`QueueSpec::server_named`]),
    /// and returns the name.
    ///
    /// An exclusive queue belongs to the connection that declared it: other
    /// connections may publish to it, but not consume, bind or delete it
    /// (405 `RESOURCE_LOCKED`), and it goes with the connection. An AMQP
    /// broker handle replaces a lost connection, so after a reconnection
    /// its exclusive queues are gone and must be declared again (their
    /// consumers end).
    async fn declare_server_named_queue(&self, spec: &QueueSpec) -> Result<String, BrokerError>;

    /// Declares an exchange (idempotent when the declaration matches; 406
    /// `PRECONDITION_FAILED` when it does not, 403 `ACCESS_REFUSED` for
    /// the default exchange `""` or a new `amq.` name).
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError>;

    /// Binds `queue` to `exchange` with `routing_key` (a pattern, for a
    /// topic exchange; ignored by a fanout exchange). Idempotent; 404
    /// `NOT_FOUND` if either is missing, 403 for the default exchange.
    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError>;

    /// Removes the binding of `queue` to `exchange` with `routing_key`: no
    /// error if there is none, nor if the queue or the exchange does not
    /// exist (as RabbitMQ answers); 403 for the default exchange. An
    /// auto-delete exchange goes with its last binding.
    async fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError>;

    /// Publishes a message to `exchange` (`""`: the default exchange, which
    /// routes to the queue named `routing_key`) and returns once the broker
    /// has taken responsibility for it (publisher confirm). Unroutable
    /// messages are an error, never a silent success; a missing exchange is
    /// 404 `NOT_FOUND`.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), BrokerError>;

    /// Publishes a message nobody must wait for (events, remote control
    /// replies): not mandatory (a message no queue takes is dropped, not
    /// an error) and without waiting for the publisher confirm. An error
    /// means it could not be handed to the connection at all.
    async fn publish_transient(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), BrokerError> {
        match self.publish(exchange, routing_key, message).await {
            Err(BrokerError::Unroutable { .. }) => Ok(()),
            other => other,
        }
    }

    /// Publishes a result to a client's reply queue (default exchange). After
    /// a reconnection, a reply queue (auto-delete) exists again only once its
    /// owner has reconnected and declared it, so an implementation may try an
    /// unroutable reply again for a while before reporting
    /// [`BrokerError::Unroutable`]; a plain [`Broker::publish`] fails at once.
    async fn publish_reply(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
        self.publish("", queue, message).await
    }

    /// Publishes `message` so that it reaches `queue` once `delay` has passed,
    /// kept by the broker meanwhile (not by any consumer), and returns once
    /// the broker has taken responsibility for it.
    async fn publish_delayed(
        &self,
        queue: &str,
        message: &Message,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        let _ = (queue, message, delay);
        Err(BrokerError::failed(
            "publish_delayed",
            "this broker has no delayed delivery",
        ))
    }

    /// Makes sure delayed messages for `queue` reach it, before any is
    /// published: declares the delay levels and binds the queue to their
    /// delivery exchange. Workers call it for their queues when they start,
    /// as Celery's workers do for its native delayed delivery, since Python
    /// clients publish into levels they never declare. (Does nothing where
    /// the first [`Broker::publish_delayed`] does it.)
    async fn prepare_delays_for(&self, queue: &str) -> Result<(), BrokerError> {
        let _ = queue;
        Ok(())
    }

    /// The finest delay [`Broker::publish_delayed`] keeps: a delay is cut
    /// down to a multiple of it, so a delayed message may arrive up to this
    /// much before it is due (workers hold such a task for the rest).
    fn delay_resolution(&self) -> Duration {
        Duration::ZERO
    }

    /// Moves delayed messages that came due while their queue could not be
    /// reached (deleted and declared again, or not declared yet), and were
    /// kept for it, to their queues that exist now; returns how many moved.
    /// Workers call it when they start and then periodically, so that such
    /// messages arrive late rather than never.
    async fn redeliver_unrouted(&self) -> Result<u32, BrokerError> {
        Ok(0)
    }

    /// Starts consuming from `queues` on one channel, with one prefetch window
    /// shared by all of them.
    async fn consume(
        &self,
        queues: &[String],
        options: ConsumeOptions,
    ) -> Result<Consumer, BrokerError>;

    /// Whether the broker itself drops messages (a per-message TTL run out,
    /// a delivery limit) and dead-letters them to an exchange, which workers
    /// then drain ([`EXPIRED_EXCHANGE`]). Redis does not: there a task's
    /// expiry is seen by the worker that takes it.
    fn dead_letters_dropped(&self) -> bool {
        true
    }

    /// Whether this broker keeps stream queues (`x-queue-type: stream`,
    /// read from an offset by any number of consumers, RabbitMQ 3.9+).
    fn supports_streams(&self) -> bool {
        false
    }

    /// Deletes a queue and its messages (no error if it does not exist).
    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError>;

    /// Deletes an exchange (no error if it does not exist).
    async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError>;

    /// How many messages are ready in a queue (not counting those delivered
    /// to a consumer and not yet settled).
    async fn queue_message_count(&self, name: &str) -> Result<u32, BrokerError>;

    /// Closes the connection.
    async fn close(&self) -> Result<(), BrokerError>;
}

/// An active consumer: its deliveries, and a handle to stop it.
pub struct Consumer {
    /// Deliveries, in the order the broker sends them.
    pub deliveries: DeliveryStream,
    /// Stops the flow of new deliveries (unacked ones stay with the consumer
    /// until settled or until the consumer is dropped).
    pub cancel: Box<dyn ConsumerCancel>,
}

/// Stops a consumer's flow of new deliveries.
#[async_trait]
pub trait ConsumerCancel: Send + Sync {
    /// Asks the broker to stop sending; deliveries already received stay.
    async fn cancel(&self) -> Result<(), BrokerError>;
    /// Closes the consumer's channel: the broker requeues every unacked message.
    async fn close(&self) -> Result<(), BrokerError>;
}
