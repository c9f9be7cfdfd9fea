//! [`Control`]: sends remote control requests to workers and collects
//! their replies, as `celery inspect` / `celery control` do.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use super::{ControlRequest, ReplyTo, PIDBOX_EXCHANGE, REPLY_EXCHANGE};
use crate::broker::{
    Broker, BrokerError, ConsumeOptions, ExchangeSpec, Headers, Message, Properties, QueueSpec,
};
use crate::events::LamportClock;

/// Why a request could not be sent or its replies read.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The broker refused or the connection failed.
    #[error("remote control: {0}")]
    Broker(#[from] BrokerError),
}

/// Who a request goes to and whether to wait for replies.
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// The node names it is for; `None`: every worker.
    pub destination: Option<Vec<String>>,
    /// A glob the node names must match instead.
    pub pattern: Option<String>,
    /// How long to collect replies (`None`: a cast, no reply wanted). The
    /// wait ends early once every node in `destination` replied.
    pub reply_timeout: Option<Duration>,
}

impl Broadcast {
    /// To every worker, collecting replies for `timeout` (the `celery`
    /// command line waits 1 s).
    pub fn all(timeout: Duration) -> Self {
        Self {
            destination: None,
            pattern: None,
            reply_timeout: Some(timeout),
        }
    }

    /// To the named workers only, collecting their replies for at most
    /// `timeout`.
    pub fn to<I, S>(nodes: I, timeout: Duration) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            destination: Some(nodes.into_iter().map(Into::into).collect()),
            pattern: None,
            reply_timeout: Some(timeout),
        }
    }

    /// Sent without waiting for any reply (a cast).
    pub fn cast(mut self) -> Self {
        self.reply_timeout = None;
        self
    }
}

/// The replies to one request: `(node name, its answer)`, in the order
/// they came.
pub type Replies = Vec<(String, Value)>;

/// Sends remote control requests and collects replies; see
/// [`App::control`](crate::App::control).
///
/// ```no_run
/// # async fn demo(app: task_core::App) -> Result<(), task_core::control::ControlError> {
/// use std::time::Duration;
/// use task_core::control::Broadcast;
/// let control = app.control();
/// for (node, answer) in control.ping(Broadcast::all(Duration::from_secs(1))).await? {
///     println!("{node}: {answer}"); // {"ok": "pong"}
/// }
/// control.revoke("d9f3…", false).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Control {
    broker: Arc<dyn Broker>,
    clock: Arc<LamportClock>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// A client sending through `broker`.
    pub fn new(broker: Arc<dyn Broker>, clock: Arc<LamportClock>) -> Self {
        Self { broker, clock }
    }

    /// Sends `method` with `arguments` to the workers `to` names and
    /// collects their replies.
    pub async fn request(
        &self,
        method: &str,
        arguments: Map<String, Value>,
        to: &Broadcast,
    ) -> Result<Replies, ControlError> {
        self.broker
            .declare_exchange(&ExchangeSpec::fanout(PIDBOX_EXCHANGE).durable(false))
            .await?;
        let mut request = ControlRequest {
            method: method.to_owned(),
            arguments,
            destination: to.destination.clone(),
            pattern: to.pattern.clone(),
            matcher: to.pattern.as_ref().map(|_| "glob".to_owned()),
            ticket: None,
            reply_to: None,
        };
        let Some(timeout) = to.reply_timeout else {
            self.publish(&request, Duration::from_secs(10)).await?;
            return Ok(Vec::new());
        };
        let client_id = uuid::Uuid::new_v4().to_string();
        let ticket = uuid::Uuid::new_v4().to_string();
        let replies = self.reply_queue(&client_id).await?;
        request.ticket = Some(ticket.clone());
        request.reply_to = Some(ReplyTo {
            exchange: REPLY_EXCHANGE.to_owned(),
            routing_key: client_id,
        });
        let collected = async {
            let mut consumer = self
                .broker
                .consume(std::slice::from_ref(&replies), ConsumeOptions::no_ack())
                .await?;
            self.publish(&request, timeout).await?;
            let expected = to.destination.as_ref().map(Vec::len);
            let mut collected = Vec::new();
            let deadline = tokio::time::Instant::now() + timeout;
            while expected.is_none_or(|n| collected.len() < n) {
                let delivery =
                    match tokio::time::timeout_at(deadline, consumer.deliveries.next()).await {
                        Err(_) | Ok(None) => break,
                        Ok(Some(delivery)) => delivery?,
                    };
                let headers = &delivery.message.properties.headers;
                if headers.get_str("ticket") != Some(ticket.as_str()) {
                    continue;
                }
                if let Some(clock) = headers.get_json("clock").and_then(|c| c.as_u64()) {
                    self.clock.adjust(clock);
                }
                let Ok(Value::Object(reply)) =
                    serde_json::from_slice::<Value>(&delivery.message.body)
                else {
                    tracing::warn!("a remote control reply that is not a JSON object; skipped");
                    continue;
                };
                collected.extend(reply);
            }
            let _ = consumer.cancel.close().await;
            Ok::<_, ControlError>(collected)
        }
        .await;
        let _ = self.broker.delete_queue(&replies).await;
        collected
    }

    /// Publishes `request` on the pidbox exchange, expiring after `ttl`.
    async fn publish(&self, request: &ControlRequest, ttl: Duration) -> Result<(), ControlError> {
        let mut headers = Headers::new();
        headers.insert_json("clock", &json!(self.clock.forward()));
        let expires = crate::events::now_seconds() + ttl.as_secs_f64();
        headers.insert_json("expires", &json!(expires));
        let message = Message {
            properties: Properties {
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                persistent: true,
                headers,
                ..Properties::default()
            },
            body: serde_json::to_vec(request).unwrap_or_default(),
        };
        self.broker
            .publish_transient(PIDBOX_EXCHANGE, "", &message)
            .await?;
        Ok(())
    }

    /// Declares this request's reply queue, bound to the reply exchange
    /// with `client_id`, as kombu declares its own.
    async fn reply_queue(&self, client_id: &str) -> Result<String, ControlError> {
        self.broker
            .declare_exchange(&ExchangeSpec::direct(REPLY_EXCHANGE).durable(false))
            .await?;
        let mut arguments = Map::new();
        arguments.insert("x-expires".into(), Value::from(10_000));
        arguments.insert("x-message-ttl".into(), Value::from(300_000));
        let spec = QueueSpec {
            name: format!("{client_id}.reply.celery.pidbox"),
            durable: false,
            auto_delete: true,
            exclusive: true,
            arguments,
            same_name_exchange: None,
        };
        self.broker.declare_queue(&spec).await?;
        self.broker
            .bind_queue(&spec.name, REPLY_EXCHANGE, client_id)
            .await?;
        Ok(spec.name)
    }

    /// `ping`: `{"ok": "pong"}` from each worker that is up.
    pub async fn ping(&self, to: Broadcast) -> Result<Replies, ControlError> {
        self.request("ping", Map::new(), &to).await
    }

    /// An inspect command (`active`, `reserved`, `scheduled`, `registered`,
    /// `stats`, `active_queues`, `revoked`, `conf`, `clock`, ...) without
    /// arguments.
    pub async fn inspect(&self, method: &str, to: Broadcast) -> Result<Replies, ControlError> {
        self.request(method, Map::new(), &to).await
    }

    /// Revokes a task: written to the revoke log (where every worker,
    /// also those started later, reads it; on brokers with streams), then
    /// broadcast to the running workers (a cast). It will not run, and
    /// with `terminate` a run in progress is stopped (an async body is
    /// cancelled; a blocking one cannot be).
    pub async fn revoke(&self, task_id: &str, terminate: bool) -> Result<(), ControlError> {
        let mut arguments = Map::new();
        if self.broker.supports_streams() {
            let entry = super::revoke_log::RevokeEntry::revoking(vec![task_id.to_owned()]);
            super::revoke_log::append(self.broker.as_ref(), &entry).await?;
            // The workers need not write it again.
            arguments.insert("logged".into(), true.into());
        }
        arguments.insert("task_id".into(), task_id.into());
        arguments.insert("terminate".into(), terminate.into());
        arguments.insert("signal".into(), "SIGTERM".into());
        let to = Broadcast::all(Duration::ZERO).cast();
        self.request("revoke", arguments, &to).await.map(drop)
    }

    /// Sets a task type's rate limit (`"10/m"`; `"0"` or empty: none) on
    /// the workers `to` names.
    pub async fn rate_limit(
        &self,
        task_name: &str,
        rate_limit: &str,
        to: Broadcast,
    ) -> Result<Replies, ControlError> {
        let mut arguments = Map::new();
        arguments.insert("task_name".into(), task_name.into());
        arguments.insert("rate_limit".into(), rate_limit.into());
        self.request("rate_limit", arguments, &to).await
    }

    /// Asks the workers `to` names to shut down (warm: running tasks
    /// finish). They do not reply.
    pub async fn shutdown(&self, to: Broadcast) -> Result<(), ControlError> {
        self.request("shutdown", Map::new(), &to.cast())
            .await
            .map(drop)
    }
}
