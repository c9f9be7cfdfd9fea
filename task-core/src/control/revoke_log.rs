//! The revoke log: revoked task ids kept by RabbitMQ itself, in a stream
//! queue that every worker reads from its start and follows, so that a
//! revoke reaches workers started later and survives the restart of every
//! worker (Celery keeps revokes in each worker's memory only).
//!
//! One entry per revoke (`{"ids": [...], "at": <epoch seconds>}`), kept
//! [`KEEP_FOR`] (the stream's `x-max-age`, trimmed by segment) and at most
//! [`MAX_BYTES`]. Entries are published persistent and confirmed: a revoke
//! is in the log before it is reported done.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::broker::{Broker, BrokerError, Message, Properties, QueueSpec};

/// The stream queue.
pub const REVOKE_LOG: &str = "task_core.revoked";

/// How long a revoke is kept (Celery keeps revoked ids 3 hours).
pub const KEEP_FOR: Duration = Duration::from_secs(3 * 3600);

/// The most the log keeps, in bytes (about a million revokes).
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// How the log is declared: a durable stream, trimmed by age and size in
/// 1 MB segments (RabbitMQ's default segment, 500 MB, would keep
/// everything below that size forever).
pub fn queue_spec() -> QueueSpec {
    let mut arguments = Map::new();
    arguments.insert("x-queue-type".into(), Value::from("stream"));
    arguments.insert(
        "x-max-age".into(),
        Value::from(format!("{}s", KEEP_FOR.as_secs())),
    );
    arguments.insert("x-max-length-bytes".into(), Value::from(MAX_BYTES));
    arguments.insert(
        "x-stream-max-segment-size-bytes".into(),
        Value::from(1_000_000),
    );
    QueueSpec {
        name: REVOKE_LOG.to_owned(),
        durable: true,
        auto_delete: false,
        exclusive: false,
        arguments,
        same_name_exchange: None,
    }
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokeEntry {
    /// The revoked task ids.
    #[serde(default)]
    pub ids: Vec<String>,
    /// When they were revoked, seconds since the Unix epoch.
    pub at: f64,
    /// A reader's own mark, published to learn when it has read
    /// everything before it (no ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

impl RevokeEntry {
    /// An entry revoking `ids` now.
    pub fn revoking(ids: Vec<String>) -> Self {
        Self {
            ids,
            at: crate::events::now_seconds(),
            marker: None,
        }
    }

    /// How long ago it was written.
    pub fn age(&self) -> Duration {
        Duration::try_from_secs_f64((crate::events::now_seconds() - self.at).max(0.0))
            .unwrap_or_default()
    }
}

/// Appends `entry` to the log (declared first), and returns once RabbitMQ
/// confirmed it.
pub async fn append(broker: &dyn Broker, entry: &RevokeEntry) -> Result<(), BrokerError> {
    broker.declare_queue(&queue_spec()).await?;
    let message = Message {
        properties: Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            persistent: true,
            ..Properties::default()
        },
        body: serde_json::to_vec(entry).unwrap_or_default(),
    };
    broker.publish("", REVOKE_LOG, &message).await
}
