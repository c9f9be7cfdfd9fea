//! The worker's side of Celery's remote control (kombu's pidbox,
//! CELERY_OPERATIONS.md §3): its own queue `<node>.celery.pidbox`, bound
//! to the `celery.pidbox` fanout exchange, the requests meant for it run
//! by [`commands`], and the replies sent to the requester's queue with the
//! request's ticket.

mod commands;

use std::sync::Arc;
use task_core::protocol::task_message::unix_seconds;

use futures_util::StreamExt;
use serde_json::{Map, Value};
use task_core::broker::{
    BrokerError, ConsumeOptions, Consumer, ExchangeSpec, Headers, Message, Properties, QueueSpec,
};
use task_core::control::{node_queue, ControlRequest, PIDBOX_EXCHANGE};
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::resume::consumer_until_stopped;

/// Starts consuming `node`'s requests, so that the worker answers from the
/// moment it says it is ready; `None` (logged) if that failed: [`serve`]
/// then keeps trying.
pub(crate) async fn start(node: &Node) -> Option<Consumer> {
    match consume(node).await {
        Ok(consumer) => Some(consumer),
        Err(error) => {
            tracing::warn!(%error, "cannot consume remote control requests yet; retrying");
            None
        }
    }
}

/// Answers remote control requests for `node` from `started` (or a
/// consumer of its own) until `stop`, resuming after a lost connection.
pub(crate) async fn serve(node: Arc<Node>, started: Option<Consumer>, stop: CancellationToken) {
    let mut next = started;
    loop {
        let consumer = match next.take() {
            Some(consumer) => consumer,
            None => {
                let resumed =
                    consumer_until_stopped(&stop, "remote control requests", || consume(&node));
                match resumed.await {
                    Some(consumer) => consumer,
                    None => return,
                }
            }
        };
        answer(&node, consumer, &stop).await;
        if stop.is_cancelled() {
            return;
        }
    }
}

/// Answers what `consumer` delivers until `stop` (then closes it) or until
/// the consumer ends.
async fn answer(node: &Node, mut consumer: Consumer, stop: &CancellationToken) {
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => {
                let _ = consumer.cancel.close().await;
                return;
            }
            delivery = consumer.deliveries.next() => delivery,
        };
        match delivery {
            Some(Ok(delivery)) => handle(node, &delivery.message).await,
            Some(Err(error)) => {
                tracing::warn!(%error, "lost the remote control consumer; resuming");
                return;
            }
            None => return,
        }
    }
}

/// Declares this node's queue (as kombu declares it, but not exclusive),
/// binds it and starts consuming it without acks.
///
/// kombu declares it exclusive, so that a second worker of the same name
/// is refused (405). That refusal closes a channel, and lapin can take a
/// channel opened meanwhile for a protocol error and close the whole
/// connection: one misnamed worker would disturb everything else its
/// connection carries. Two workers of the same name share the queue here
/// instead (each request reaches one of them).
async fn consume(node: &Node) -> Result<Consumer, BrokerError> {
    let broker = node.app.broker();
    broker
        .declare_exchange(&ExchangeSpec::fanout(PIDBOX_EXCHANGE).durable(false))
        .await?;
    let mut arguments = Map::new();
    arguments.insert("x-expires".into(), Value::from(10_000));
    arguments.insert("x-message-ttl".into(), Value::from(300_000));
    let spec = QueueSpec {
        name: node_queue(&node.hostname),
        durable: false,
        auto_delete: true,
        exclusive: false,
        arguments,
        same_name_exchange: None,
    };
    broker.declare_queue(&spec).await?;
    broker.bind_queue(&spec.name, PIDBOX_EXCHANGE, "").await?;
    broker
        .consume(std::slice::from_ref(&spec.name), ConsumeOptions::no_ack())
        .await
}

/// Runs one request if it is for this node and still wanted, and replies
/// when asked to. What cannot be read is logged and skipped.
async fn handle(node: &Node, message: &Message) {
    let headers = &message.properties.headers;
    if let Some(clock) = headers.get_json("clock").and_then(|c| c.as_u64()) {
        node.app.clock().adjust(clock);
    }
    let expires = headers.get_json("expires").and_then(|e| e.as_f64());
    if expires.is_some_and(|at| at < unix_seconds(task_core::clock::now())) {
        tracing::debug!("an expired remote control request; skipped");
        return;
    }
    let request: ControlRequest = match serde_json::from_slice(&message.body) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(%error, "a remote control request that cannot be read; skipped");
            return;
        }
    };
    if !request.is_for(&node.hostname) {
        return;
    }
    tracing::debug!(method = %request.method, "remote control request");
    let Some(answer) = commands::run(node, &request).await else {
        return;
    };
    let Some(reply_to) = &request.reply_to else {
        return;
    };
    let mut body = Map::new();
    body.insert(node.hostname.clone(), answer);
    let mut headers = Headers::new();
    if let Some(ticket) = &request.ticket {
        headers.insert_str("ticket", ticket);
    }
    headers.insert_json("clock", &Value::from(node.app.clock().forward()));
    let reply = Message {
        properties: Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            persistent: false,
            headers,
            ..Properties::default()
        },
        body: serde_json::to_vec(&body).unwrap_or_default(),
    };
    if let Err(error) = node
        .app
        .broker()
        .publish_transient(&reply_to.exchange, &reply_to.routing_key, &reply)
        .await
    {
        tracing::warn!(%error, method = %request.method, "could not send a remote control reply");
    }
}
