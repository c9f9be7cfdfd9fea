//! [`Broker`] on RabbitMQ through lapin.
//!
//! One connection per broker handle; one long-lived publishing channel in
//! confirm mode shared by every publisher (lapin pipelines publishes and
//! resolves each confirm independently, so concurrent publishers never wait on
//! each other's confirms); one channel per consumer; declarations on a
//! short-lived channel of their own, so a refused declaration
//! (PRECONDITION_FAILED closes the channel) cannot break publishing.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel};
use tokio::sync::OnceCell;

pub use super::amqp_link::ReconnectPolicy;
use super::amqp_link::{lost, Link, LinkKeeper};
use super::delay_topology;
use super::field_table::json_to_table;
/// [`broker::redact`](super::redact), kept here for existing callers.
pub use super::url::redact;
use super::{
    check_binding, check_declared_name, check_publish, check_queue_names, check_short,
    Acknowledger, Broker, BrokerError, ConsumeOptions, Consumer, ConsumerCancel, Credentials,
    Delivery, ExchangeKind, ExchangeSpec, Headers, Message, Properties, QueueSpec, StreamOffset,
    TlsOptions,
};

/// A RabbitMQ connection used as the framework's broker. It reconnects by
/// itself when RabbitMQ goes away (see [`ReconnectPolicy`]).
pub struct AmqpBroker {
    link: LinkKeeper,
    /// Which delay levels delayed messages go through.
    delay_layout: delay_topology::Layout,
    /// The delay levels, declared on first use (see [`delay_topology`]).
    delay_levels: OnceCell<()>,
    /// Queues already bound to the delay delivery exchange.
    delay_targets: Mutex<HashMap<String, std::time::Instant>>,
}

impl AmqpBroker {
    /// Connects to `url` (`amqp://user:pass@host:port/vhost`) with the
    /// default [`ReconnectPolicy`].
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with(url, ReconnectPolicy::default()).await
    }

    /// Connects to `url`, recovering from lost connections as `policy` says.
    /// An `amqps://` URL verifies the broker against the system's roots.
    pub async fn connect_with(url: &str, policy: ReconnectPolicy) -> Result<Self, BrokerError> {
        Self::connect_inner(url, policy, None).await
    }

    /// Connects to an `amqps://` `url` with these TLS settings (CA file,
    /// client certificate). A TLS configuration with an `amqp://` URL is
    /// refused ([`BrokerError::InvalidUrl`]): it would not be used.
    pub async fn connect_with_tls(
        url: &str,
        policy: ReconnectPolicy,
        tls: &TlsOptions,
    ) -> Result<Self, BrokerError> {
        Self::connect_inner(url, policy, Some(tls)).await
    }

    /// Connects to `url` with a connection that is never replaced: once it
    /// is lost, every operation fails with [`BrokerError::Connection`]. For
    /// what must end with the connection (the scheduler's lock, an
    /// exclusive queue, and the publishes made while holding it: see
    /// [`crate::beat`]). `tls` as in [`AmqpBroker::connect_with_tls`].
    pub async fn connect_once(url: &str, tls: Option<&TlsOptions>) -> Result<Self, BrokerError> {
        Self::connect_once_with_credentials(url, tls, None).await
    }

    /// [`AmqpBroker::connect_once`] with [`Credentials`] for the nodes
    /// whose URL names no user.
    pub async fn connect_once_with_credentials(
        url: &str,
        tls: Option<&TlsOptions>,
        credentials: Option<&Credentials>,
    ) -> Result<Self, BrokerError> {
        Ok(Self::on(
            LinkKeeper::connect_once_with_credentials(url, tls, credentials).await?,
        ))
    }

    /// Connects to `url`: one broker URL, or several separated by `;`
    /// (Celery's failover form, `amqp://a//;amqp://b//`: the first node
    /// that answers is used, the next ones in turn when it is lost). `tls`
    /// applies to every `amqps://` node (`None`: the system's roots); the
    /// `credentials` to every node whose URL names no user (a URL's own
    /// `user:password@` wins). Lost connections are recovered as `policy`
    /// says.
    pub async fn connect_with_credentials(
        url: &str,
        policy: ReconnectPolicy,
        tls: Option<&TlsOptions>,
        credentials: Option<&Credentials>,
    ) -> Result<Self, BrokerError> {
        Ok(Self::on(
            LinkKeeper::connect_with_credentials(url, policy, tls, credentials).await?,
        ))
    }

    async fn connect_inner(
        url: &str,
        policy: ReconnectPolicy,
        tls: Option<&TlsOptions>,
    ) -> Result<Self, BrokerError> {
        Self::connect_with_credentials(url, policy, tls, None).await
    }

    fn on(link: LinkKeeper) -> Self {
        Self {
            link,
            delay_layout: delay_topology::Layout::default(),
            delay_levels: OnceCell::new(),
            delay_targets: Mutex::new(HashMap::new()),
        }
    }

    /// The node in use (its URL, password hidden): with a list of nodes,
    /// the one this broker is connected to now.
    pub fn connected_node(&self) -> String {
        self.link.connected_node()
    }

    /// Sends delayed messages through these delay levels (default: the
    /// cascade; Celery's native levels for quorum queues: see
    /// [`delay_topology::Layout::for_queue_type`]). Set before first use.
    pub fn with_delay_layout(mut self, layout: delay_topology::Layout) -> Self {
        self.delay_layout = layout;
        self
    }

    /// The delay levels in use.
    pub fn delay_layout(&self) -> delay_topology::Layout {
        self.delay_layout
    }

    /// The reconnection policy in force.
    pub fn reconnect_policy(&self) -> ReconnectPolicy {
        self.link.policy()
    }

    /// Runs `declare` on a fresh channel of the current connection, closed
    /// afterwards (a refused declaration closes its channel: it must not be
    /// the publisher's), reconnecting first if the connection is lost.
    async fn on_own_channel<T, F, Fut>(
        &self,
        operation: &'static str,
        declare: F,
    ) -> Result<T, BrokerError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, lapin::Error>>,
    {
        self.link
            .run(|link| {
                let declare = &declare;
                async move {
                    let channel = link
                        .connection
                        .create_channel()
                        .await
                        .map_err(|e| lost("channel.open", e))?;
                    let result = declare(channel.clone()).await;
                    let _ = channel.close(200, "done".into()).await;
                    result.map_err(|e| lost(operation, e))
                }
            })
            .await
    }

    /// Declares the delay levels once per broker.
    async fn ensure_delay_levels(&self) -> Result<(), BrokerError> {
        self.delay_levels
            .get_or_try_init(|| async {
                match self.delay_layout {
                    delay_topology::Layout::Celery { level_type } => {
                        self.on_own_channel("declare Celery's delay levels", |channel| {
                            declare_celery_delay_levels(channel, level_type)
                        })
                        .await
                    }
                    _ => {
                        self.on_own_channel("declare delay levels", declare_delay_levels)
                            .await
                    }
                }
            })
            .await
            .map(|_| ())
    }

    /// Binds `queue` to the delay delivery exchange: once, then again when
    /// the binding is [`DELAY_BINDING_RECHECK`] old (a queue deleted and
    /// declared again elsewhere lost it; what came due meanwhile was kept
    /// by the unrouted queue) or when this broker declared the queue.
    async fn ensure_delay_target(&self, queue: &str) -> Result<(), BrokerError> {
        if self
            .delay_targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(queue)
            .is_some_and(|bound| bound.elapsed() < DELAY_BINDING_RECHECK)
        {
            return Ok(());
        }
        let (exchange, pattern) = match self.delay_layout {
            delay_topology::Layout::Celery { .. } => (
                delay_topology::celery::DELIVERY_EXCHANGE,
                delay_topology::celery::delivery_pattern(queue),
            ),
            _ => (
                delay_topology::DELIVERY_EXCHANGE,
                delay_topology::delivery_pattern(queue),
            ),
        };
        self.on_own_channel("bind delay target", |channel| {
            let pattern = pattern.clone();
            async move {
                channel
                    .queue_bind(
                        queue.into(),
                        exchange.into(),
                        pattern.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            }
        })
        .await?;
        self.delay_targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.to_owned(), std::time::Instant::now());
        Ok(())
    }
}

impl AmqpBroker {
    /// [`Broker::publish_delayed`] through Celery's native levels: the whole
    /// seconds of `delay` (a message due in less than a second goes to its
    /// queue at once, where the worker holds it for the rest).
    async fn publish_delayed_celery(
        &self,
        queue: &str,
        message: &Message,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        use delay_topology::celery;
        let Some(level) = celery::entry_level(delay.as_secs()) else {
            return self.publish("", queue, message).await;
        };
        let routing_key = celery::routing_key(delay.as_secs(), queue);
        check_short("delayed routing key (56 bytes + queue name)", &routing_key)?;
        self.ensure_delay_levels().await?;
        self.ensure_delay_target(queue).await?;
        let exchange = celery::level_name(level);
        if delay_topology::has_death_history(&message.properties.headers) {
            let mut fresh = message.clone();
            delay_topology::strip_death_history(&mut fresh.properties.headers);
            return self.publish(&exchange, &routing_key, &fresh).await;
        }
        self.publish(&exchange, &routing_key, message).await
    }
}

/// How long a delayed-delivery binding is trusted before it is made again.
const DELAY_BINDING_RECHECK: Duration = Duration::from_secs(60);

/// Declares the queue of `spec` (named by the broker when `spec.name` is
/// empty) and returns its name.
async fn declare_on(channel: Channel, spec: &QueueSpec) -> Result<String, lapin::Error> {
    let options = QueueDeclareOptions {
        passive: false,
        durable: spec.durable,
        exclusive: spec.exclusive,
        auto_delete: spec.auto_delete,
        nowait: false,
    };
    let queue = channel
        .queue_declare(
            spec.name.as_str().into(),
            options,
            json_to_table(&spec.arguments),
        )
        .await?;
    let name = queue.name().as_str().to_owned();
    if let Some(kind) = spec.same_name_exchange {
        let exchange = ShortString::from(name.as_str());
        channel
            .exchange_declare(
                exchange.clone(),
                lapin_kind(kind),
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                exchange.clone(),
                exchange.clone(),
                exchange,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(name)
}

/// lapin's name for an exchange kind.
fn lapin_kind(kind: ExchangeKind) -> lapin::ExchangeKind {
    match kind {
        ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        ExchangeKind::Topic => lapin::ExchangeKind::Topic,
    }
}

async fn publish_on(
    publisher: &Channel,
    exchange: &str,
    routing_key: &str,
    message: &Message,
) -> Result<(), BrokerError> {
    let confirm = publisher
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &message.body,
            to_lapin_properties(&message.properties),
        )
        .await
        .map_err(|e| lost("basic.publish", e))?;
    match confirm.await.map_err(|e| lost("basic.publish", e))? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        }),
        Confirmation::Nack(_) => Err(BrokerError::Nacked {
            routing_key: routing_key.to_owned(),
        }),
        Confirmation::NotRequested => Err(BrokerError::failed(
            "basic.publish",
            "publisher confirms are not enabled on the publishing channel",
        )),
    }
}

async fn consume_on(
    link: &Link,
    queues: &[String],
    options: ConsumeOptions,
) -> Result<Consumer, BrokerError> {
    let channel = link
        .connection
        .create_channel()
        .await
        .map_err(|e| lost("channel.open", e))?;
    if options.prefetch > 0 {
        // One window for all the queues needs RabbitMQ's channel-wide
        // (global) prefetch, which costs the broker more per message (and
        // which quorum queues refuse); a single queue gets the same bound
        // from the per-consumer one.
        let global = queues.len() > 1 && !options.prefetch_per_queue;
        channel
            .basic_qos(options.prefetch, BasicQosOptions { global })
            .await
            .map_err(|e| lost("basic.qos", e))?;
    }
    let mut streams = Vec::with_capacity(queues.len());
    let mut tags = Vec::with_capacity(queues.len());
    for queue in queues {
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: options.no_ack,
                    exclusive: options.exclusive,
                    ..BasicConsumeOptions::default()
                },
                consumer_arguments(&options),
            )
            .await
            .map_err(|e| in_context(lost("basic.consume", e), || format!("queue `{queue}`")))?;
        tags.push(consumer.tag());
        let queue = queue.clone();
        streams.push(
            consumer
                .map(move |delivery| {
                    delivery
                        .map(|d| from_lapin_delivery(d, &queue))
                        .map_err(|e| lost("basic.deliver", e))
                })
                .boxed(),
        );
    }
    Ok(Consumer {
        deliveries: futures_util::stream::select_all(streams).boxed(),
        cancel: Box::new(AmqpConsumerCancel { channel, tags }),
    })
}

/// Declares Celery's native delay levels exactly as kombu 5.7 does
/// (`declare_native_delayed_delivery_exchanges_and_queues`), so that Python
/// peers declaring them too are not refused: durable topic exchanges,
/// durable queues of `level_type` with the same arguments, the same
/// bindings (see [`delay_topology::celery`]).
async fn declare_celery_delay_levels(
    channel: Channel,
    level_type: super::QueueType,
) -> Result<(), lapin::Error> {
    use delay_topology::celery;
    let durable_topic = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for k in (0..celery::BITS).rev() {
        let level = ShortString::from(celery::level_name(k));
        channel
            .exchange_declare(
                level.clone(),
                lapin::ExchangeKind::Topic,
                durable_topic,
                FieldTable::default(),
            )
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(level_type.as_str().into()),
        );
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        let ttl = i64::try_from(celery::wait_ms(k)).unwrap_or(i64::MAX);
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(celery::next_exchange(k).into()),
        );
        if level_type == super::QueueType::Quorum {
            arguments.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
        }
        channel
            .queue_declare(level.clone(), durable, arguments)
            .await?;
        channel
            .queue_bind(
                level.clone(),
                level,
                celery::queue_pattern(k).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .exchange_declare(
            celery::DELIVERY_EXCHANGE.into(),
            lapin::ExchangeKind::Topic,
            durable_topic,
            FieldTable::default(),
        )
        .await?;
    for k in (0..celery::BITS).rev() {
        channel
            .exchange_bind(
                celery::next_exchange(k).into(),
                celery::level_name(k).into(),
                celery::pass_pattern(k).into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares the delivery exchange and every level (exchange, TTL queue,
/// bindings) of the delay cascade, lowest level first so that each level's
/// dead-letter exchange exists before it.
async fn declare_delay_levels(channel: Channel) -> Result<(), lapin::Error> {
    let durable_topic = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    // What the delivery exchange cannot route is kept, not dropped.
    channel
        .exchange_declare(
            delay_topology::UNROUTED.into(),
            lapin::ExchangeKind::Fanout,
            durable_topic,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            delay_topology::UNROUTED.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            delay_topology::UNROUTED.into(),
            delay_topology::UNROUTED.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut delivery_arguments = FieldTable::default();
    delivery_arguments.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(delay_topology::UNROUTED.into()),
    );
    channel
        .exchange_declare(
            delay_topology::DELIVERY_EXCHANGE.into(),
            lapin::ExchangeKind::Topic,
            durable_topic,
            delivery_arguments,
        )
        .await?;
    for k in 0..delay_topology::LEVELS {
        let level = ShortString::from(delay_topology::level_name(k));
        let next = ShortString::from(delay_topology::next_exchange(k));
        channel
            .exchange_declare(
                level.clone(),
                lapin::ExchangeKind::Topic,
                durable_topic,
                FieldTable::default(),
            )
            .await?;
        for digit in delay_topology::WAITING_DIGITS {
            let queue = ShortString::from(delay_topology::wait_queue_name(k, digit));
            let ttl = i64::try_from(delay_topology::wait_ms(k, digit)).unwrap_or(i64::MAX);
            let mut arguments = FieldTable::default();
            arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(next.as_str().into()),
            );
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(queue.clone(), durable, arguments)
                .await?;
            channel
                .queue_bind(
                    queue,
                    level.clone(),
                    delay_topology::level_pattern(k, digit).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .exchange_bind(
                next,
                level,
                delay_topology::level_pattern(k, 0).into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        check_declared_name(spec, true)?;
        // Declared (perhaps again, after a deletion that took its bindings):
        // its delayed-delivery binding is made again on the next use.
        self.delay_targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&spec.name);
        self.on_own_channel("queue.declare", |channel| declare_on(channel, spec))
            .await
            .map(drop)
            .map_err(|e| in_context(e, || format!("queue `{}`", spec.name)))
    }

    async fn declare_server_named_queue(&self, spec: &QueueSpec) -> Result<String, BrokerError> {
        check_declared_name(spec, false)?;
        self.on_own_channel("queue.declare", |channel| declare_on(channel, spec))
            .await
            .map_err(|e| in_context(e, || "server-named queue".to_owned()))
    }

    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        check_short("exchange name", &spec.name)?;
        self.on_own_channel("exchange.declare", |channel| async move {
            let options = ExchangeDeclareOptions {
                durable: spec.durable,
                auto_delete: spec.auto_delete,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    spec.name.as_str().into(),
                    lapin_kind(spec.kind),
                    options,
                    FieldTable::default(),
                )
                .await
        })
        .await
        .map_err(|e| in_context(e, || format!("exchange `{}`", spec.name)))
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        check_binding(queue, exchange, routing_key)?;
        self.on_own_channel("queue.bind", |channel| async move {
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await
        .map_err(|e| in_context(e, || format!("queue `{queue}` to exchange `{exchange}`")))
    }

    async fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        check_binding(queue, exchange, routing_key)?;
        self.on_own_channel("queue.unbind", |channel| async move {
            channel
                .queue_unbind(
                    queue.into(),
                    exchange.into(),
                    routing_key.into(),
                    FieldTable::default(),
                )
                .await
        })
        .await
        .map_err(|e| in_context(e, || format!("queue `{queue}` from exchange `{exchange}`")))
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), BrokerError> {
        check_publish(exchange, routing_key, &message.properties)?;
        // A quorum queue electing a new leader (its node died) refuses
        // publishes for a moment: a nack is tried again, with backoff, until
        // the operation deadline (a nacked message was not taken, so the
        // retry cannot duplicate it).
        // RabbitMQ 3.10 may go on refusing a channel's publishes to a
        // queue whose leader moved: the next try is on a new channel.
        let policy = self.link.policy();
        let deadline = tokio::time::Instant::now() + policy.operation_deadline;
        let mut backoff = policy.initial_backoff;
        let used_channel = std::sync::atomic::AtomicU16::new(0);
        loop {
            let published = self
                .link
                .run(|link| {
                    let publisher = link.publisher();
                    used_channel.store(publisher.id(), std::sync::atomic::Ordering::Relaxed);
                    async move { publish_on(&publisher, exchange, routing_key, message).await }
                })
                .await;
            match published {
                Err(BrokerError::Nacked { .. })
                    if tokio::time::Instant::now() + backoff < deadline =>
                {
                    tracing::debug!(%exchange, %routing_key, ?backoff,
                        "the broker refused a publish (nack); trying again on a new channel");
                    let nacked_on = used_channel.load(std::sync::atomic::Ordering::Relaxed);
                    if let Err(error) = self.link.renew_publisher(nacked_on).await {
                        tracing::debug!(%error, "could not open a new publishing channel");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(policy.max_backoff);
                }
                other => return other,
            }
        }
    }

    async fn publish_transient(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), BrokerError> {
        check_publish(exchange, routing_key, &message.properties)?;
        self.link
            .run(|link| async move {
                // The confirm is not awaited: dropping it leaves lapin to
                // settle it when the broker's ack arrives.
                link.publisher()
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        &message.body,
                        to_lapin_properties(&message.properties),
                    )
                    .await
                    .map(drop)
                    .map_err(|e| lost("basic.publish", e))
            })
            .await
    }

    async fn publish_reply(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
        check_publish("", queue, &message.properties)?;
        self.link
            .run_awaiting_queues(|link| async move {
                publish_on(&link.publisher(), "", queue, message).await
            })
            .await
    }

    async fn publish_delayed(
        &self,
        queue: &str,
        message: &Message,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        if let delay_topology::Layout::Celery { .. } = self.delay_layout {
            return self.publish_delayed_celery(queue, message, delay).await;
        }
        // The routing key and the delivery binding are the queue name after
        // the delay's digits; `publish` below checks the rest.
        check_short(
            "delayed routing key (16 bytes + queue name)",
            &delay_topology::delivery_pattern(queue),
        )?;
        self.ensure_delay_levels().await?;
        self.ensure_delay_target(queue).await?;
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let exchange = delay_topology::entry_exchange(delay_ms);
        let routing_key = delay_topology::routing_key(delay_ms, queue);
        // A message that went through the levels before carries their
        // `x-death` history; RabbitMQ would take a second trip for a
        // dead-letter cycle and drop it. The history is dropped instead.
        if delay_topology::has_death_history(&message.properties.headers) {
            let mut fresh = message.clone();
            delay_topology::strip_death_history(&mut fresh.properties.headers);
            return self.publish(&exchange, &routing_key, &fresh).await;
        }
        self.publish(&exchange, &routing_key, message).await
    }

    fn delay_resolution(&self) -> Duration {
        self.delay_layout.resolution()
    }

    async fn prepare_delays_for(&self, queue: &str) -> Result<(), BrokerError> {
        if self.delay_layout == delay_topology::Layout::Cascade {
            return Ok(()); // declared and bound by the first delayed publish
        }
        self.ensure_delay_levels().await?;
        self.ensure_delay_target(queue).await
    }

    async fn redeliver_unrouted(&self) -> Result<u32, BrokerError> {
        if self.delay_layout != delay_topology::Layout::Cascade {
            return Ok(0); // Celery's levels keep nothing unrouted
        }
        self.ensure_delay_levels().await?;
        let held = self.queue_message_count(delay_topology::UNROUTED).await?;
        if held == 0 {
            return Ok(0);
        }
        self.on_own_channel("redeliver unrouted delayed messages", |channel| {
            redeliver_unrouted_on(channel, held)
        })
        .await
    }

    async fn consume(
        &self,
        queues: &[String],
        options: ConsumeOptions,
    ) -> Result<Consumer, BrokerError> {
        check_queue_names(queues)?;
        self.link
            .run(|link| async move { consume_on(&link, queues, options).await })
            .await
    }

    fn supports_streams(&self) -> bool {
        true
    }

    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        check_short("queue name", name)?;
        self.on_own_channel("queue.delete", |channel| async move {
            channel
                .queue_delete(name.into(), QueueDeleteOptions::default())
                .await
                .map(drop)
        })
        .await
        .map_err(|e| in_context(e, || format!("queue `{name}`")))
    }

    async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        check_short("exchange name", name)?;
        self.on_own_channel("exchange.delete", |channel| async move {
            channel
                .exchange_delete(name.into(), ExchangeDeleteOptions::default())
                .await
        })
        .await
        .map_err(|e| in_context(e, || format!("exchange `{name}`")))
    }

    async fn queue_message_count(&self, name: &str) -> Result<u32, BrokerError> {
        check_short("queue name", name)?;
        self.on_own_channel("queue.declare(passive)", |channel| async move {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(name.into(), passive, FieldTable::default())
                .await
                .map(|queue| queue.message_count())
        })
        .await
        .map_err(|e| in_context(e, || format!("queue `{name}`")))
    }

    async fn close(&self) -> Result<(), BrokerError> {
        self.link.close().await
    }
}

/// `x-consumer-timeout` when the consumer asks for an acknowledgement timeout
/// of its own (RabbitMQ 3.11.15+ honours it; older versions ignore it).
/// The header recording when a delayed message was first found with no queue
/// to go to (milliseconds since the epoch).
const UNROUTED_SINCE: &str = "x-task-unrouted-since";

/// How long a delayed message waits for its queue to exist again before it
/// is dropped (with a warning), as long as dead letters are kept by default.
const UNROUTED_KEPT: Duration = Duration::from_secs(14 * 24 * 3600);

/// Takes up to `limit` messages from the unrouted-delayed queue: each one
/// whose queue exists now is published to it and acked once confirmed; the
/// others go back to the end of the unrouted queue (published again with
/// their routing key, then acked), so one pass sees each message once.
async fn redeliver_unrouted_on(channel: Channel, limit: u32) -> Result<u32, lapin::Error> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut moved = 0;
    for _ in 0..limit {
        let Some(held) = channel
            .basic_get(
                delay_topology::UNROUTED.into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let delivery = held.delivery;
        let target = delay_topology::target_queue(delivery.routing_key.as_str());
        let mandatory = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let routed = match target {
            Some(queue) => {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        mandatory,
                        &delivery.data,
                        delivery.properties.clone(),
                    )
                    .await?
                    .await?;
                // A returned message (no such queue) is acked with it.
                matches!(confirm, Confirmation::Ack(None))
            }
            None => false,
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let since = match headers.inner().get(UNROUTED_SINCE) {
            Some(AMQPValue::LongLongInt(since)) => *since,
            _ => now_ms,
        };
        if routed {
            moved += 1;
        } else if now_ms.saturating_sub(since) > UNROUTED_KEPT.as_millis() as i64 {
            tracing::warn!(
                routing_key = %delivery.routing_key,
                "dropping a delayed message whose queue has not existed for 14 days"
            );
        } else {
            headers.insert(UNROUTED_SINCE.into(), AMQPValue::LongLongInt(since));
            channel
                .basic_publish(
                    delay_topology::UNROUTED.into(),
                    delivery.routing_key.clone(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    delivery.properties.clone().with_headers(headers),
                )
                .await?
                .await?;
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(moved)
}

fn consumer_arguments(options: &ConsumeOptions) -> FieldTable {
    let mut arguments = FieldTable::default();
    if let Some(timeout) = options.ack_timeout.filter(|_| !options.no_ack) {
        let millis = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        arguments.insert("x-consumer-timeout".into(), AMQPValue::LongLongInt(millis));
    }
    if let Some(offset) = options.stream_offset {
        let offset = match offset {
            StreamOffset::First => AMQPValue::LongString("first".into()),
            StreamOffset::Next => AMQPValue::LongString("next".into()),
            // An AMQP timestamp: seconds since the Unix epoch.
            StreamOffset::Since(time) => {
                AMQPValue::Timestamp(u64::try_from(time.timestamp()).unwrap_or(0))
            }
        };
        arguments.insert("x-stream-offset".into(), offset);
    }
    arguments
}

/// Prefixes a refusal's reason with what it was about.
fn in_context(error: BrokerError, what: impl FnOnce() -> String) -> BrokerError {
    match error {
        BrokerError::Operation {
            operation,
            reason,
            reply_code,
            source,
        } => BrokerError::Operation {
            operation,
            reason: format!("{}: {reason}", what()),
            reply_code,
            source,
        },
        other => other,
    }
}

struct AmqpConsumerCancel {
    channel: Channel,
    tags: Vec<ShortString>,
}

#[async_trait]
impl ConsumerCancel for AmqpConsumerCancel {
    async fn cancel(&self) -> Result<(), BrokerError> {
        for tag in &self.tags {
            self.channel
                .basic_cancel(tag.clone(), BasicCancelOptions::default())
                .await
                .map_err(|e| lost("basic.cancel", e))?;
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), BrokerError> {
        self.channel
            .close(200, "consumer closed".into())
            .await
            .map_err(|e| lost("channel.close", e))
    }
}

struct AmqpAcker(lapin::Acker);

#[async_trait]
impl Acknowledger for AmqpAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        let settled = self
            .0
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| lost("basic.ack", e))?;
        not_settled_is_an_error("basic.ack", settled)
    }

    async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        let settled = self
            .0
            .reject(BasicRejectOptions { requeue })
            .await
            .map_err(|e| lost("basic.reject", e))?;
        not_settled_is_an_error("basic.reject", settled)
    }
}

/// lapin answers `false` when it did not send the settlement: the delivery
/// was settled already, or its channel is gone (and RabbitMQ requeues it).
fn not_settled_is_an_error(operation: &'static str, settled: bool) -> Result<(), BrokerError> {
    if settled {
        Ok(())
    } else {
        Err(BrokerError::failed(
            operation,
            "the delivery was already settled or its channel is closed",
        ))
    }
}

fn from_lapin_delivery(delivery: lapin::message::Delivery, queue: &str) -> Delivery {
    let p = &delivery.properties;
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
    // Celery's values are shared constants, not copied for every message.
    let known = |s: &Option<ShortString>, common: &'static [&'static str]| {
        s.as_ref()
            .map(|s| match common.iter().find(|c| **c == s.as_str()) {
                Some(common) => std::borrow::Cow::Borrowed(*common),
                None => std::borrow::Cow::Owned(s.as_str().to_owned()),
            })
    };
    let mut properties = Properties {
        content_type: known(p.content_type(), &[crate::protocol::CONTENT_TYPE_JSON]),
        content_encoding: known(
            p.content_encoding(),
            &[crate::protocol::CONTENT_ENCODING_UTF8],
        ),
        correlation_id: text(p.correlation_id()),
        reply_to: text(p.reply_to()),
        persistent: *p.delivery_mode() == Some(2),
        priority: *p.priority(),
        expiration: text(p.expiration()),
        headers: Headers::new(),
    };
    if p.headers().is_some() {
        properties.headers = Headers::received(delivery.properties);
    }
    Delivery {
        message: Message {
            properties,
            body: delivery.data,
        },
        queue: queue.to_owned(),
        exchange: delivery.exchange.as_str().to_owned(),
        routing_key: delivery.routing_key.as_str().to_owned(),
        redelivered: delivery.redelivered,
        acker: Box::new(AmqpAcker(delivery.acker)),
    }
}

fn to_lapin_properties(p: &Properties) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(if p.persistent { 2 } else { 1 })
        .with_headers(p.headers.to_field_table());
    if let Some(v) = &p.content_type {
        properties = properties.with_content_type(v.as_ref().into());
    }
    if let Some(v) = &p.content_encoding {
        properties = properties.with_content_encoding(v.as_ref().into());
    }
    if let Some(v) = &p.correlation_id {
        properties = properties.with_correlation_id(v.as_str().into());
    }
    if let Some(v) = &p.reply_to {
        properties = properties.with_reply_to(v.as_str().into());
    }
    if let Some(v) = p.priority {
        properties = properties.with_priority(v);
    }
    if let Some(v) = &p.expiration {
        properties = properties.with_expiration(v.as_str().into());
    }
    properties
}
