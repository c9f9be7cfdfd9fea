//! The AMQP connection behind an `AmqpBroker` (`broker::amqp`), and
//! its replacement when RabbitMQ goes away (restart, network cut).
//!
//! Every broker operation runs through [`LinkKeeper::run`]: on a lost
//! connection it reconnects with capped exponential backoff and runs the
//! operation again, until the policy's deadline; then it fails with a typed
//! error. Reconnection is single-flight: concurrent operations that saw the
//! same connection fail wait for one new connection.
//!
//! The URL may name several broker nodes, in Celery's failover form
//! (`amqp://a;amqp://b;amqps://c`): the first connection tries them in
//! order, and each reconnection attempt tries every node once, starting
//! with the one after the node just lost (round-robin, as Celery's
//! failover strategy), before backing off.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use tokio::time::Instant;

use super::connect_failure::{connect_error, connect_timed_out, Target};
use super::url::{has_userinfo, redact, BrokerNodes};
use super::{BrokerError, Credentials, ReplyCode, TlsOptions, CONNECT_TIMEOUT};

/// How a broker connection recovers from RabbitMQ going away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The first wait between connection attempts.
    pub initial_backoff: Duration,
    /// The longest wait between connection attempts.
    pub max_backoff: Duration,
    /// How long one operation (a publish, a declaration) keeps retrying
    /// through reconnections before it fails.
    pub operation_deadline: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            operation_deadline: Duration::from_secs(30),
        }
    }
}

/// How often a publish that found no queue is tried again while the broker's
/// queues may still be coming back after a reconnection (see
/// [`LinkKeeper::run_awaiting_queues`]).
const UNROUTABLE_RETRY: Duration = Duration::from_millis(250);

/// How many times in a row an operation is retried on a connection that is
/// still open after one of its channels was closed (see
/// [`LinkKeeper::run`]), before the connection is replaced all the same.
const CHANNEL_RETRIES: u32 = 3;

/// One connection and its publishing channel (in confirm mode).
pub(crate) struct Link {
    /// Counts connections: a failure is reported against the link it saw.
    pub(crate) generation: u64,
    /// Which broker node (its index in the URL's list) it is connected to.
    pub(crate) node: usize,
    /// When the connection was opened.
    pub(crate) opened_at: Instant,
    pub(crate) connection: Connection,
    /// Replaced on the same connection when the broker closes it (it does
    /// when it refuses a publish: a missing exchange, an invalid property).
    publisher: RwLock<Channel>,
}

impl Link {
    /// The publishing channel.
    pub(crate) fn publisher(&self) -> Channel {
        self.publisher
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Holds the current [`Link`] and replaces it when it is lost.
pub(crate) struct LinkKeeper {
    endpoint: Endpoint,
    policy: ReconnectPolicy,
    current: RwLock<Arc<Link>>,
    reconnecting: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    /// Whether a lost connection is replaced; when not, every operation
    /// after the loss fails (see [`LinkKeeper::connect_once`]).
    reconnects: bool,
}

impl LinkKeeper {
    /// Connects for the first time (no retry: a wrong URL fails at once,
    /// with a [`BrokerError::Connect`] saying why). `tls` applies to
    /// `amqps://` URLs (default: the system's roots); giving it with an
    /// `amqp://` URL is refused rather than ignored.
    ///
    /// `url` may list several nodes (`amqp://a;amqp://b`): they are tried
    /// in order and the first that connects is used; when none does, the
    /// error is a [`BrokerError::NoNodeReachable`] with each node's
    /// failure. `tls` then applies to every `amqps://` node, and is
    /// refused if any node is `amqp://`.
    ///
    /// `credentials` apply to the nodes whose URL names no user
    /// (`amqp://host/%2f`; a URL's own `user:pass@` wins).
    pub(crate) async fn connect_with_credentials(
        url: &str,
        policy: ReconnectPolicy,
        tls: Option<&TlsOptions>,
        credentials: Option<&Credentials>,
    ) -> Result<Self, BrokerError> {
        let endpoint = Endpoint::new(url, tls, credentials)?;
        let link = endpoint.connect_first().await?;
        Ok(Self {
            endpoint,
            policy,
            current: RwLock::new(Arc::new(link)),
            reconnecting: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            reconnects: true,
        })
    }

    /// Connects once, for a connection that is never replaced: when it is
    /// lost, every operation fails with [`BrokerError::Connection`]. What
    /// the connection holds (an exclusive queue used as a lock) then ends
    /// with it, and nothing is done on a new connection that does not hold
    /// it.
    /// `url`, `tls` and `credentials` as in
    /// [`LinkKeeper::connect_with_credentials`].
    pub(crate) async fn connect_once_with_credentials(
        url: &str,
        tls: Option<&TlsOptions>,
        credentials: Option<&Credentials>,
    ) -> Result<Self, BrokerError> {
        Ok(Self {
            reconnects: false,
            ..Self::connect_with_credentials(url, ReconnectPolicy::default(), tls, credentials)
                .await?
        })
    }

    /// The node in use, as its URL is written without its password
    /// (`amqp://user:***@host:5672/%2f`), for logs.
    pub(crate) fn connected_node(&self) -> String {
        self.endpoint.shown(self.current().node)
    }

    /// The link in use.
    pub(crate) fn current(&self) -> Arc<Link> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `operation` on the current link; if the connection is lost, waits
    /// for a new one and runs it again, until the operation deadline.
    ///
    /// A channel lost on a connection that is still open (the broker closes
    /// the publishing channel when it refuses a publish, and a publish
    /// racing that refusal sees the channel closed) does not replace the
    /// connection, which would lose its exclusive queues and consumers: the
    /// publishing channel is reopened if it is closed, and the operation
    /// runs again on the same connection, a few times at most.
    pub(crate) async fn run<T, F, Fut>(&self, operation: F) -> Result<T, BrokerError>
    where
        F: FnMut(Arc<Link>) -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        self.run_inner(operation, false).await
    }

    /// [`LinkKeeper::run`] for a publish to a queue that another client
    /// declares (a caller's `rpc://` reply queue): right after a
    /// reconnection, a publish that no queue receives is tried again for a
    /// while instead of failing at once. After a broker restart, auto-delete
    /// and non-durable queues exist again only once their owner has
    /// reconnected and declared them, and a worker that came back first
    /// would otherwise drop the results of its callers. The owner is given
    /// twice the longest reconnection backoff.
    pub(crate) async fn run_awaiting_queues<T, F, Fut>(
        &self,
        operation: F,
    ) -> Result<T, BrokerError>
    where
        F: FnMut(Arc<Link>) -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        self.run_inner(operation, true).await
    }

    async fn run_inner<T, F, Fut>(
        &self,
        mut operation: F,
        await_queues: bool,
    ) -> Result<T, BrokerError>
    where
        F: FnMut(Arc<Link>) -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        let deadline = Instant::now() + self.policy.operation_deadline;
        let mut channel_retries = 0;
        loop {
            if self.is_closed() {
                return Err(closed());
            }
            let link = self.current();
            // Bounded: a broker that never answers (a publisher confirm
            // that never comes) must not hold the caller forever.
            let attempt = tokio::time::timeout_at(deadline, operation(Arc::clone(&link)));
            let Ok(outcome) = attempt.await else {
                return Err(BrokerError::failed(
                    "broker operation",
                    format!(
                        "the broker did not answer within {:?} (a publish may or may not \
                         have been taken)",
                        self.policy.operation_deadline
                    ),
                ));
            };
            match outcome {
                // Closed by this client: nothing to recover, and not a lost
                // connection (which callers such as the reply consumer retry).
                Err(BrokerError::Connection { .. }) if self.is_closed() => return Err(closed()),
                Err(error @ BrokerError::Connection { .. })
                    if !self.reconnects && !link.connection.status().connected() =>
                {
                    return Err(error)
                }
                Err(BrokerError::Connection { reason, .. })
                    if channel_retries < CHANNEL_RETRIES
                        && link.connection.status().connected() =>
                {
                    channel_retries += 1;
                    tracing::debug!(%reason, "a channel closed on an open connection; retrying on it");
                    if let Err(error) = self.reopen_publisher(&link).await {
                        tracing::warn!(%error, "could not reopen the publishing channel; reconnecting");
                        self.reconnect(link.generation, deadline).await?;
                    }
                }
                Err(BrokerError::Connection { reason, .. }) => {
                    channel_retries = 0;
                    tracing::warn!(%reason, "broker connection lost; reconnecting");
                    self.reconnect(link.generation, deadline).await?;
                }
                Err(BrokerError::Unroutable {
                    exchange,
                    routing_key,
                }) if await_queues && self.queues_may_be_coming_back(&link, deadline) => {
                    tracing::debug!(%exchange, %routing_key, "unroutable just after a reconnection; trying again");
                    tokio::time::sleep(UNROUTABLE_RETRY).await;
                }
                other => return other,
            }
        }
    }

    /// Replaces the publishing channel `nacked_on` (a channel id) with a new
    /// one on the same connection, unless that was done already. After a
    /// quorum queue's leader died, RabbitMQ 3.10 may keep refusing (nack)
    /// every publish a channel makes to that queue, while a new channel's
    /// are taken. The old channel is closed once publishes in flight on it
    /// had the operation deadline to be confirmed.
    pub(crate) async fn renew_publisher(&self, nacked_on: u16) -> Result<(), BrokerError> {
        let _single_flight = self.reconnecting.lock().await;
        let link = self.current();
        let old = link.publisher();
        if old.id() != nacked_on || !link.connection.status().connected() {
            return Ok(());
        }
        let publisher = open_publisher(&link.connection).await?;
        tracing::debug!(
            generation = link.generation,
            "opened a new publishing channel after refused publishes"
        );
        *link
            .publisher
            .write()
            .unwrap_or_else(PoisonError::into_inner) = publisher;
        let grace = self.policy.operation_deadline;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = old.close(200, "replaced".into()).await;
        });
        Ok(())
    }

    /// Opens a new publishing channel on `link`'s connection if the broker
    /// closed the current one (single-flight with reconnections).
    async fn reopen_publisher(&self, link: &Link) -> Result<(), BrokerError> {
        let _single_flight = self.reconnecting.lock().await;
        if link.publisher().status().connected() {
            return Ok(());
        }
        let publisher = open_publisher(&link.connection).await?;
        tracing::debug!(
            generation = link.generation,
            "reopened the publishing channel"
        );
        *link
            .publisher
            .write()
            .unwrap_or_else(PoisonError::into_inner) = publisher;
        Ok(())
    }

    /// Replaces the link of generation `failed` (unless another caller did
    /// already), retrying with capped exponential backoff until `deadline`.
    /// Each attempt tries every node once, starting with the one after the
    /// node just lost (which is tried last).
    pub(crate) async fn reconnect(
        &self,
        failed: u64,
        deadline: Instant,
    ) -> Result<(), BrokerError> {
        let _single_flight = self.reconnecting.lock().await;
        let current = self.current();
        if current.generation != failed && current.connection.status().connected() {
            return Ok(());
        }
        if !self.reconnects {
            return Err(BrokerError::Connection {
                reason: "the broker connection was lost (this connection is not replaced)".into(),
                reply_code: None,
                source: None,
            });
        }
        let mut backoff = self.policy.initial_backoff;
        let first = self.endpoint.after(current.node);
        loop {
            if self.is_closed() {
                return Err(closed());
            }
            // A failed attempt is a lost connection still (callers retry
            // those), with the readable reason.
            match self
                .endpoint
                .open_round(first, current.generation + 1, Some(deadline))
                .await
                .map_err(|attempts| match self.endpoint.failure(attempts) {
                    e @ (BrokerError::Connect { .. } | BrokerError::NoNodeReachable { .. }) => {
                        BrokerError::Connection {
                            reason: e.to_string(),
                            reply_code: e.reply_code(),
                            source: Some(Box::new(e)),
                        }
                    }
                    other => other,
                }) {
                Ok((link, _)) => {
                    let generation = link.generation;
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(link);
                    tracing::info!(
                        generation,
                        node = %self.connected_node(),
                        "reconnected to the broker"
                    );
                    return Ok(());
                }
                Err(error) if Instant::now() + backoff >= deadline => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "reconnection failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                }
            }
        }
    }

    /// Whether `link` is a reconnection recent enough that queues declared by
    /// other clients may not be back yet, with time left before `deadline`.
    fn queues_may_be_coming_back(&self, link: &Link, deadline: Instant) -> bool {
        link.generation > 0
            && link.opened_at.elapsed() < self.policy.max_backoff * 2
            && Instant::now() + UNROUTABLE_RETRY < deadline
    }

    /// Closes the connection for good: operations fail from now on.
    pub(crate) async fn close(&self) -> Result<(), BrokerError> {
        self.closed.store(true, Ordering::SeqCst);
        let link = self.current();
        link.connection
            .close(200, "closing".into())
            .await
            .map_err(|e| lost("connection.close", e))
    }

    /// Whether [`LinkKeeper::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The policy in force.
    pub(crate) fn policy(&self) -> ReconnectPolicy {
        self.policy
    }
}

/// Where and how to connect: the broker nodes, in the order given.
struct Endpoint {
    /// At least one.
    nodes: Vec<Node>,
}

/// One broker node: the parsed URL (with the credentials it uses) and, for
/// `amqps://`, the TLS configuration (its files read once, at the first
/// connection).
struct Node {
    uri: AMQPUri,
    target: Target,
    tls: OwnedTLSConfig,
    /// The URL as written, without its password (for logs).
    shown: String,
}

impl Endpoint {
    fn new(
        url: &str,
        tls: Option<&TlsOptions>,
        credentials: Option<&Credentials>,
    ) -> Result<Self, BrokerError> {
        let list = BrokerNodes::parse(url)?;
        let count = list.len();
        if tls.is_some() {
            let plaintext = list
                .entries()
                .enumerate()
                .find(|(_, (_, uri))| uri.scheme == AMQPScheme::AMQP);
            if let Some((k, (entry, _))) = plaintext {
                let which = if count > 1 {
                    format!(" (node {} of {count})", k + 1)
                } else {
                    String::new()
                };
                return Err(BrokerError::InvalidUrl {
                    url: redact(entry),
                    reason: format!(
                        "TLS options were given but the URL is amqp:// (plaintext): \
                         use amqps://{which}"
                    ),
                });
            }
        }
        let tls = tls.map(TlsOptions::load).transpose()?.unwrap_or_default();
        let nodes = list
            .entries()
            .map(|(entry, uri)| {
                let mut uri = uri.clone();
                if let Some(credentials) = credentials.filter(|_| !has_userinfo(entry)) {
                    uri.authority.userinfo = AMQPUserInfo {
                        username: credentials.user().to_owned(),
                        password: credentials.password().to_owned(),
                    };
                }
                let tls = match uri.scheme {
                    AMQPScheme::AMQPS => tls.clone(),
                    AMQPScheme::AMQP => OwnedTLSConfig::default(),
                };
                Node {
                    target: Target::of(&uri),
                    uri,
                    tls,
                    shown: redact(entry),
                }
            })
            .collect();
        Ok(Self { nodes })
    }

    /// Node `index`'s URL without its password.
    fn shown(&self, index: usize) -> String {
        self.nodes
            .get(index)
            .map_or_else(String::new, |node| node.shown.clone())
    }

    /// The node after `index`, where a reconnection starts.
    fn after(&self, index: usize) -> usize {
        (index + 1) % self.nodes.len().max(1)
    }

    /// The first connection: every node in order, once.
    async fn connect_first(&self) -> Result<Link, BrokerError> {
        match self.open_round(0, 0, None).await {
            Ok((link, skipped)) => {
                if !skipped.is_empty() {
                    tracing::warn!(
                        node = %self.shown(link.node),
                        unreachable = %super::connect_failure::describe_attempts(&skipped),
                        "connected to a broker node after the nodes before it failed"
                    );
                }
                Ok(link)
            }
            Err(attempts) => Err(self.failure(attempts)),
        }
    }

    /// Tries every node once, starting with `first`, until one connects
    /// (with the failures of those tried before it); a node is not tried
    /// once `deadline` has passed (the first always is). Else every
    /// node's failure.
    async fn open_round(
        &self,
        first: usize,
        generation: u64,
        deadline: Option<Instant>,
    ) -> Result<(Link, Vec<BrokerError>), Vec<BrokerError>> {
        let mut attempts = Vec::new();
        for index in rotation(first, self.nodes.len()) {
            if !attempts.is_empty() && deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
            match self.open(index, generation).await {
                Ok(link) => return Ok((link, attempts)),
                Err(error) => {
                    if self.nodes.len() > 1 {
                        tracing::debug!(node = %self.shown(index), %error, "broker node unreachable");
                    }
                    attempts.push(error);
                }
            }
        }
        Err(attempts)
    }

    /// The error for a round that failed: with a single node, its own
    /// error, as it was before lists of nodes.
    fn failure(&self, mut attempts: Vec<BrokerError>) -> BrokerError {
        if self.nodes.len() == 1 && attempts.len() == 1 {
            if let Some(only) = attempts.pop() {
                return only;
            }
        }
        BrokerError::NoNodeReachable { attempts }
    }

    /// Opens a connection to node `index` and its publishing channel,
    /// within [`CONNECT_TIMEOUT`] (a peer that accepts but never answers
    /// must not hold a worker's start or a reconnection forever). An
    /// `amqps://` connection is TLS or fails (lapin is built with rustls:
    /// see the workspace Cargo.toml).
    async fn open(&self, index: usize, generation: u64) -> Result<Link, BrokerError> {
        let Some(node) = self.nodes.get(index) else {
            return Err(BrokerError::failed(
                "connect",
                format!("no broker node {index}"),
            ));
        };
        tokio::time::timeout(CONNECT_TIMEOUT, node.open_unbounded(index, generation))
            .await
            .map_err(|elapsed| connect_timed_out(&node.target, elapsed))?
    }
}

impl Node {
    async fn open_unbounded(&self, index: usize, generation: u64) -> Result<Link, BrokerError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("task-core pid={}", std::process::id()).into());
        let runtime =
            lapin::runtime::default_runtime().map_err(|e| connect_error(&self.target, e))?;
        let connection = Connection::connect_uri_with_config(
            self.uri.clone(),
            properties,
            self.tls.clone(),
            runtime,
        )
        .await
        .map_err(|e| connect_error(&self.target, e))?;
        open_channels(connection, index, generation).await
    }
}

/// The nodes in the order a round tries them: `first`, the ones after it,
/// then the ones before it.
fn rotation(first: usize, len: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |k| (first + k) % len)
}

async fn open_channels(
    connection: Connection,
    node: usize,
    generation: u64,
) -> Result<Link, BrokerError> {
    let publisher = open_publisher(&connection).await?;
    Ok(Link {
        generation,
        node,
        opened_at: Instant::now(),
        connection,
        publisher: RwLock::new(publisher),
    })
}

/// A channel in confirm mode, for publishing.
async fn open_publisher(connection: &Connection) -> Result<Channel, BrokerError> {
    let publisher = connection
        .create_channel()
        .await
        .map_err(|e| lost("channel.open", e))?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| lost("confirm.select", e))?;
    Ok(publisher)
}

/// What operations fail with once [`LinkKeeper::close`] was called: a
/// refusal, not a lost connection, so that nothing retries it.
fn closed() -> BrokerError {
    BrokerError::failed(
        "connection",
        "the broker connection was closed by this client",
    )
}

/// Whether `error` means the connection (or the channel it was used on) is
/// gone, so that the operation may succeed on a new connection.
pub(crate) fn is_connection_lost(error: &lapin::Error) -> bool {
    match error.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::RuntimeShutdownError(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..) => true,
        ErrorKind::ProtocolError(_) => error.is_amqp_hard_error(),
        _ => false,
    }
}

/// Classifies a lapin error from `operation`: a lost connection (retried
/// after reconnecting) or a refusal (reported as is), with the broker's
/// reply code when it sent one and lapin's error as the source. A refusal's
/// reason is the broker's reply text (`NOT_FOUND - no queue 'q' ...`).
pub(crate) fn lost(operation: &'static str, error: lapin::Error) -> BrokerError {
    let reply_code = ReplyCode::of_lapin(&error);
    // 540 NOT_IMPLEMENTED (e.g. a global prefetch on a quorum queue) closes
    // the connection, but the same request would be refused again on a new
    // one: a refusal, not a lost connection (the next operation replaces
    // the closed connection).
    let refused_for_good = reply_code == Some(ReplyCode::NotImplemented);
    if is_connection_lost(&error) && !refused_for_good {
        BrokerError::Connection {
            reason: format!("{operation}: {error}"),
            reply_code,
            source: Some(Box::new(error)),
        }
    } else {
        let reason = match error.kind() {
            ErrorKind::ProtocolError(refusal) => refusal.get_message().as_str().to_owned(),
            _ => error.to_string(),
        };
        BrokerError::Operation {
            operation,
            reason,
            reply_code,
            source: Some(Box::new(error)),
        }
    }
}

#[cfg(test)]
impl LinkKeeper {
    /// [`LinkKeeper::connect_with_credentials`] without credentials.
    async fn connect(
        url: &str,
        policy: ReconnectPolicy,
        tls: Option<&TlsOptions>,
    ) -> Result<Self, BrokerError> {
        Self::connect_with_credentials(url, policy, tls, None).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// lapin without a TLS backend connects `amqps://` URLs in plaintext;
    /// this pins that ours is built with one: the first bytes an `amqps://`
    /// connection sends are a TLS handshake record, never AMQP's header.
    #[tokio::test]
    async fn an_amqps_url_never_connects_in_plaintext() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 3];
            socket.read_exact(&mut first).await.unwrap();
            first
        });
        let url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
        let connecting = LinkKeeper::connect(&url, ReconnectPolicy::default(), None);
        let (connected, first) = tokio::join!(connecting, peer);
        let first = first.unwrap();
        assert_ne!(
            &first, b"AMQ",
            "an amqps:// URL sent the plaintext AMQP header"
        );
        // 0x16: a TLS handshake record; 0x03: TLS's major version.
        assert_eq!(first[..2], [0x16, 0x03], "not a TLS ClientHello: {first:?}");
        assert!(
            connected.is_err(),
            "the peer closed without a TLS handshake, yet the connection opened"
        );
    }

    fn refusal(code: u16, text: &str) -> lapin::Error {
        let amqp = lapin::protocol::AMQPError::from_id(code, text.into()).expect("a known code");
        lapin::Error::from(ErrorKind::ProtocolError(amqp))
    }

    #[test]
    fn a_soft_refusal_keeps_its_code_reply_text_and_source() {
        let text = "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q'";
        let error = lost("queue.declare", refusal(406, text));
        let BrokerError::Operation {
            operation,
            reason,
            reply_code,
            source,
        } = &error
        else {
            panic!("a refusal, not a lost connection: {error:?}");
        };
        assert_eq!(
            (*operation, reason.as_str(), *reply_code),
            ("queue.declare", text, Some(ReplyCode::PreconditionFailed))
        );
        assert!(source.as_ref().is_some_and(|s| s.is::<lapin::Error>()));
        assert!(error.is_precondition_failed() && !error.is_not_found());
        assert!(std::error::Error::source(&error).is_some());
        for (code, check) in [
            (404, BrokerError::is_not_found as fn(&BrokerError) -> bool),
            (403, BrokerError::is_access_refused),
            (405, BrokerError::is_resource_locked),
        ] {
            let error = lost("queue.bind", refusal(code, "refused"));
            assert!(check(&error), "{code}: {error:?}");
            assert_eq!(error.reply_code().map(ReplyCode::code), Some(code));
        }
    }

    #[test]
    fn a_hard_error_or_a_lost_socket_is_a_lost_connection() {
        let forced = lost(
            "basic.publish",
            refusal(320, "CONNECTION_FORCED - shutdown"),
        );
        assert!(
            matches!(
                forced,
                BrokerError::Connection {
                    reply_code: Some(ReplyCode::ConnectionForced),
                    source: Some(_),
                    ..
                }
            ),
            "{forced:?}"
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let lost_socket = lost("basic.publish", lapin::Error::from(reset));
        assert!(
            matches!(
                lost_socket,
                BrokerError::Connection {
                    reply_code: None,
                    ..
                }
            ),
            "{lost_socket:?}"
        );
        assert!(!lost_socket.is_precondition_failed());
        // A refused first connection shows the broker's code too.
        let uri: AMQPUri = "amqp://guest:guest@127.0.0.1:5672/%2f".parse().unwrap();
        let target = Target::of(&uri);
        let refused = connect_error(&target, refusal(530, "NOT_ALLOWED - vhost"));
        assert_eq!(refused.reply_code(), Some(ReplyCode::NotAllowed));
        // The client's own checks have no code.
        assert_eq!(closed().reply_code(), None);
    }

    #[test]
    fn a_round_starts_after_the_lost_node_and_ends_with_it() {
        let order = |first, len| rotation(first, len).collect::<Vec<_>>();
        assert_eq!(order(0, 1), [0]);
        assert_eq!(order(0, 3), [0, 1, 2]);
        assert_eq!(order(1, 3), [1, 2, 0]);
        assert_eq!(order(2, 3), [2, 0, 1]);
        let endpoint = Endpoint::new("amqp://a;amqp://b;amqp://c", None, None).unwrap();
        assert_eq!(endpoint.after(0), 1);
        assert_eq!(endpoint.after(1), 2);
        assert_eq!(endpoint.after(2), 0, "after the last node comes the first");
        let single = Endpoint::new("amqp://a", None, None).unwrap();
        assert_eq!(single.after(0), 0, "a single node is retried");
    }

    #[test]
    fn credentials_apply_to_the_nodes_without_userinfo_only() {
        let credentials = Credentials::new("wörker", "p@ss:w/rd;%?#");
        let endpoint = Endpoint::new(
            "amqp://own:secret@a:1/%2f; amqp://b:2/%2f ;amqps://c:3/v?heartbeat=5",
            None,
            Some(&credentials),
        )
        .unwrap();
        let users: Vec<(&str, &str)> = endpoint
            .nodes
            .iter()
            .map(|node| {
                let userinfo = &node.uri.authority.userinfo;
                (userinfo.username.as_str(), userinfo.password.as_str())
            })
            .collect();
        assert_eq!(
            users,
            [
                ("own", "secret"),
                ("wörker", "p@ss:w/rd;%?#"),
                ("wörker", "p@ss:w/rd;%?#")
            ]
        );
        let shown: Vec<String> = (0..3).map(|k| endpoint.shown(k)).collect();
        assert_eq!(
            shown,
            [
                "amqp://own:***@a:1/%2f",
                "amqp://b:2/%2f",
                "amqps://c:3/v?heartbeat=5"
            ]
        );
        // The target names the user in use, never a password.
        assert_eq!(endpoint.nodes[1].target.url, "amqp://w%C3%B6rker@b:2/%2f");
        assert_eq!(endpoint.nodes[2].uri.query.heartbeat, Some(5));
        // Without credentials, lapin's default stays.
        let plain = Endpoint::new("amqp://b:2/%2f", None, None).unwrap();
        assert_eq!(plain.nodes[0].uri.authority.userinfo.username, "guest");
    }

    #[test]
    fn tls_options_with_a_list_holding_an_amqp_node_are_refused() {
        let refused = Endpoint::new(
            "amqps://u:secret@a:5671/%2f;amqp://u:secret@b:5672/%2f",
            Some(&TlsOptions::new()),
            None,
        );
        match refused {
            Err(BrokerError::InvalidUrl { url, reason }) => {
                assert_eq!(url, "amqp://u:***@b:5672/%2f");
                assert!(reason.contains("use amqps:// (node 2 of 2)"), "{reason}");
            }
            Err(other) => panic!("expected InvalidUrl, got {other}"),
            Ok(_) => panic!("TLS options accepted with a plaintext node"),
        }
        let all_tls = Endpoint::new(
            "amqps://a:5671/%2f;amqps://b:5671/%2f",
            Some(&TlsOptions::new()),
            None,
        );
        assert!(all_tls.is_ok());
    }

    /// A port that was free a moment ago: nothing listens there.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn no_reachable_node_lists_every_failure_and_one_node_keeps_its_error() {
        let (a, b) = (closed_port(), closed_port());
        let url = format!("amqp://u:s3cret@127.0.0.1:{a}/%2f;amqp://u:s3cret@127.0.0.1:{b}/%2f");
        let error = match LinkKeeper::connect(&url, ReconnectPolicy::default(), None).await {
            Err(error) => error,
            Ok(_) => panic!("connected to closed ports"),
        };
        let BrokerError::NoNodeReachable { attempts } = &error else {
            panic!("expected NoNodeReachable, got {error:?}");
        };
        assert_eq!(attempts.len(), 2);
        assert!(attempts.iter().all(|attempt| matches!(
            attempt,
            BrokerError::Connect {
                failure: super::super::ConnectFailure::Refused,
                ..
            }
        )));
        let shown = error.to_string();
        assert!(
            shown.contains(&format!("127.0.0.1:{a}")) && shown.contains(&format!("127.0.0.1:{b}")),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        let single = format!("amqp://u:s3cret@127.0.0.1:{a}/%2f");
        let error = LinkKeeper::connect(&single, ReconnectPolicy::default(), None).await;
        assert!(
            matches!(error, Err(BrokerError::Connect { .. })),
            "one node keeps its Connect error"
        );
    }

    /// A round tries the nodes from the one it starts with: each fake node
    /// accepts and hangs up, and records when it was tried.
    #[tokio::test]
    async fn a_round_tries_every_node_once_in_rotation() {
        let tried = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut urls = Vec::new();
        for node in 0..3usize {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            urls.push(format!("amqp://127.0.0.1:{port}/%2f"));
            let tried = Arc::clone(&tried);
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    tried.lock().unwrap().push(node);
                    drop(socket);
                }
            });
        }
        let endpoint = Endpoint::new(&urls.join(";"), None, None).unwrap();
        let failed = endpoint
            .open_round(
                endpoint.after(0),
                1,
                Some(Instant::now() + Duration::from_secs(60)),
            )
            .await;
        let attempts = match failed {
            Err(attempts) => attempts,
            Ok(_) => panic!("a node that hangs up connected"),
        };
        assert_eq!(attempts.len(), 3);
        assert_eq!(*tried.lock().unwrap(), [1, 2, 0]);
        assert!(matches!(
            endpoint.failure(attempts),
            BrokerError::NoNodeReachable { .. }
        ));
    }

    #[tokio::test]
    async fn tls_options_with_an_amqp_url_are_refused() {
        let refused = LinkKeeper::connect(
            "amqp://guest:guest@127.0.0.1:1/%2f",
            ReconnectPolicy::default(),
            Some(&TlsOptions::new()),
        )
        .await;
        match refused {
            Err(BrokerError::InvalidUrl { url, reason }) => {
                assert_eq!(url, "amqp://guest:***@127.0.0.1:1/%2f");
                assert!(reason.contains("use amqps://"), "{reason}");
            }
            Err(other) => panic!("expected InvalidUrl, got {other}"),
            Ok(_) => panic!("connected in plaintext with TLS options"),
        }
    }
}
