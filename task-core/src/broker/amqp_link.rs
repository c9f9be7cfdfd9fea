//! The AMQP connection behind an `AmqpBroker` (`broker::amqp`), and
//! its replacement when RabbitMQ goes away (restart, network cut).
//!
//! Every broker operation runs through [`LinkKeeper::run`]: on a lost
//! connection it reconnects with capped exponential backoff and runs the
//! operation again, until the policy's deadline; then it fails with a typed
//! error. Reconnection is single-flight: concurrent operations that saw the
//! same connection fail wait for one new connection.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use tokio::time::Instant;

use super::connect_failure::{connect_error, connect_timed_out, Target};
use super::url::redact;
use super::{BrokerError, ReplyCode, TlsOptions, CONNECT_TIMEOUT};

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
    pub(crate) async fn connect(
        url: &str,
        policy: ReconnectPolicy,
        tls: Option<&TlsOptions>,
    ) -> Result<Self, BrokerError> {
        let endpoint = Endpoint::new(url, tls)?;
        let link = endpoint.open(0).await?;
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
    pub(crate) async fn connect_once(
        url: &str,
        tls: Option<&TlsOptions>,
    ) -> Result<Self, BrokerError> {
        Ok(Self {
            reconnects: false,
            ..Self::connect(url, ReconnectPolicy::default(), tls).await?
        })
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
            match operation(Arc::clone(&link)).await {
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
        loop {
            if self.is_closed() {
                return Err(closed());
            }
            // A failed attempt is a lost connection still (callers retry
            // those), with the readable reason.
            match self
                .endpoint
                .open(current.generation + 1)
                .await
                .map_err(|e| match e {
                    BrokerError::Connect { .. } => BrokerError::Connection {
                        reason: e.to_string(),
                        reply_code: e.reply_code(),
                        source: Some(Box::new(e)),
                    },
                    other => other,
                }) {
                Ok(link) => {
                    tracing::info!(generation = link.generation, "reconnected to the broker");
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(link);
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

/// Where and how to connect: the parsed URL and, for `amqps://`, the TLS
/// configuration (its files read once, at the first connection).
struct Endpoint {
    uri: AMQPUri,
    target: Target,
    tls: OwnedTLSConfig,
}

impl Endpoint {
    fn new(url: &str, tls: Option<&TlsOptions>) -> Result<Self, BrokerError> {
        let uri: AMQPUri = url.parse().map_err(|reason| BrokerError::InvalidUrl {
            url: redact(url),
            reason,
        })?;
        let tls = match (&uri.scheme, tls) {
            (AMQPScheme::AMQPS, Some(tls)) => tls.load()?,
            (AMQPScheme::AMQPS, None) => OwnedTLSConfig::default(),
            (AMQPScheme::AMQP, None) => OwnedTLSConfig::default(),
            (AMQPScheme::AMQP, Some(_)) => {
                return Err(BrokerError::InvalidUrl {
                    url: redact(url),
                    reason: "TLS options were given but the URL is amqp:// (plaintext): \
                             use amqps://"
                        .into(),
                })
            }
        };
        Ok(Self {
            target: Target::of(&uri),
            uri,
            tls,
        })
    }

    /// Opens a connection; an `amqps://` one is TLS or fails (lapin is built
    /// with rustls: see the workspace Cargo.toml).
    /// Opens a connection and its publishing channel, within
    /// [`CONNECT_TIMEOUT`] (a peer that accepts but never answers must not
    /// hold a worker's start or a reconnection forever).
    async fn open(&self, generation: u64) -> Result<Link, BrokerError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.open_unbounded(generation))
            .await
            .map_err(|elapsed| connect_timed_out(&self.target, elapsed))?
    }

    async fn open_unbounded(&self, generation: u64) -> Result<Link, BrokerError> {
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
        open_channels(connection, generation).await
    }
}

async fn open_channels(connection: Connection, generation: u64) -> Result<Link, BrokerError> {
    let publisher = open_publisher(&connection).await?;
    Ok(Link {
        generation,
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
    if is_connection_lost(&error) {
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
