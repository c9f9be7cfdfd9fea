//! The durable record of each entry's last run: a RabbitMQ stream queue
//! (`<prefix>.runs`) holding every fired task message itself, plus
//! snapshots of every entry's last run.
//!
//! A fired task is published once, to its task queue, with a `BCC` header
//! naming the stream: RabbitMQ routes that one message to both queues and
//! confirms it when both have it. So a run is recorded exactly when it is
//! sent, never one without the other (the guarantee the scheduler's
//! takeover rests on: see [`crate::beat`]). The `BCC` header is removed by
//! the broker; the copies carry `beat_entry` and `beat_run` (the run's
//! scheduled time, milliseconds since the Unix epoch).
//!
//! A scheduler that takes over reads the stream up to a marker of its own
//! (published first, so it knows where the end is), starting a few
//! snapshot periods back, or from the start if no snapshot is found there.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use crate::broker::headers::as_integer;
use crate::broker::{
    Broker, BrokerError, ConsumeOptions, HeaderValue, Message, Properties, QueueSpec, StreamOffset,
};

/// The header naming a fired run's entry.
pub const ENTRY_HEADER: &str = "beat_entry";
/// The header holding a fired run's scheduled time (milliseconds since
/// the Unix epoch).
pub const RUN_HEADER: &str = "beat_run";
/// The header of a snapshot record (its body: `{entry: run ms}`).
const SNAPSHOT_HEADER: &str = "beat_snapshot";
/// The header of a reader's end marker.
const MARKER_HEADER: &str = "beat_marker";

/// How often the leader writes a snapshot of every entry's last run.
pub(crate) const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);

/// How many records are read ahead.
const READ_AHEAD: u16 = 1000;

/// How long reading the record may take before the takeover fails (and
/// is tried again).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The last run of each entry, as the record says.
pub(crate) type LastRuns = HashMap<String, DateTime<Utc>>;

/// The stream queue of one scheduler group.
#[derive(Debug, Clone)]
pub(crate) struct RunLog {
    pub(crate) queue: String,
    max_bytes: u64,
}

impl RunLog {
    pub(crate) fn new(queue: String, max_bytes: u64) -> Self {
        Self { queue, max_bytes }
    }

    /// The stream's declaration: durable, bounded by size in 1 MB segments
    /// (no age limit: the snapshots keep every entry's last run in it).
    pub(crate) fn queue_spec(&self) -> QueueSpec {
        let mut arguments = Map::new();
        arguments.insert("x-queue-type".into(), Value::from("stream"));
        arguments.insert("x-max-length-bytes".into(), Value::from(self.max_bytes));
        arguments.insert(
            "x-stream-max-segment-size-bytes".into(),
            Value::from(1_000_000),
        );
        QueueSpec {
            name: self.queue.clone(),
            durable: true,
            auto_delete: false,
            exclusive: false,
            arguments,
            same_name_exchange: None,
        }
    }

    /// Names the entry and run on a task message, and, when `recorded`,
    /// has the same publish record it in this log (`BCC`).
    pub(crate) fn mark(
        &self,
        message: &mut Message,
        entry: &str,
        run: DateTime<Utc>,
        recorded: bool,
    ) {
        let headers = &mut message.properties.headers;
        headers.insert_str(ENTRY_HEADER, entry);
        headers.insert(RUN_HEADER, HeaderValue::LongLongInt(run.timestamp_millis()));
        if recorded {
            headers.insert(
                "BCC",
                HeaderValue::FieldArray(
                    vec![HeaderValue::LongString(self.queue.as_str().into())].into(),
                ),
            );
        }
    }

    /// Appends a snapshot of `last` (confirmed).
    pub(crate) async fn snapshot(
        &self,
        broker: &dyn Broker,
        last: impl Iterator<Item = (&str, DateTime<Utc>)>,
    ) -> Result<(), BrokerError> {
        let runs: Map<String, Value> = last
            .map(|(entry, run)| (entry.to_owned(), Value::from(run.timestamp_millis())))
            .collect();
        let mut message = record(Value::Object(runs).to_string().into_bytes());
        message
            .properties
            .headers
            .insert(SNAPSHOT_HEADER, HeaderValue::Boolean(true));
        broker.publish("", &self.queue, &message).await
    }

    /// Reads every entry's last run: from a few snapshot periods back if a
    /// snapshot is there, else from the start of the stream.
    pub(crate) async fn read(&self, broker: &dyn Broker) -> Result<LastRuns, BrokerError> {
        let since = crate::clock::now()
            - chrono::Duration::from_std(SNAPSHOT_EVERY * 3).unwrap_or(chrono::Duration::MAX);
        let (last, saw_snapshot) = self.read_from(broker, StreamOffset::Since(since)).await?;
        if saw_snapshot {
            return Ok(last);
        }
        let (last, _) = self.read_from(broker, StreamOffset::First).await?;
        Ok(last)
    }

    async fn read_from(
        &self,
        broker: &dyn Broker,
        offset: StreamOffset,
    ) -> Result<(LastRuns, bool), BrokerError> {
        let marker = uuid::Uuid::new_v4().to_string();
        let mut message = record(Vec::new());
        message
            .properties
            .headers
            .insert_str(MARKER_HEADER, &marker);
        broker.publish("", &self.queue, &message).await?;
        let consumer = broker
            .consume(
                std::slice::from_ref(&self.queue),
                ConsumeOptions::manual_ack(READ_AHEAD).from_stream_offset(offset),
            )
            .await?;
        let mut deliveries = consumer.deliveries;
        let mut last = LastRuns::new();
        let mut saw_snapshot = false;
        let read = async {
            while let Some(delivery) = deliveries.next().await {
                let delivery = delivery?;
                let headers = &delivery.message.properties.headers;
                if headers.get_str(MARKER_HEADER) == Some(marker.as_str()) {
                    return Ok(());
                }
                if headers.get(SNAPSHOT_HEADER).is_some() {
                    saw_snapshot = true;
                    let runs: Map<String, Value> =
                        serde_json::from_slice(&delivery.message.body).unwrap_or_default();
                    for (entry, run) in runs {
                        if let Some(run) = run.as_i64().and_then(DateTime::from_timestamp_millis) {
                            note(&mut last, entry, run);
                        }
                    }
                } else if let (Some(entry), Some(run)) = (
                    headers.get_str(ENTRY_HEADER),
                    headers
                        .get(RUN_HEADER)
                        .and_then(as_integer)
                        .and_then(DateTime::from_timestamp_millis),
                ) {
                    note(&mut last, entry.to_owned(), run);
                }
                delivery.acker.ack().await?;
            }
            Err(BrokerError::failed(
                "basic.consume",
                "the run log's consumer ended before the end of the log",
            ))
        };
        let outcome = tokio::time::timeout(READ_TIMEOUT, read).await;
        let _ = consumer.cancel.close().await;
        match outcome {
            Ok(Ok(())) => Ok((last, saw_snapshot)),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(BrokerError::failed(
                "basic.consume",
                format!(
                    "reading the run log `{}` took longer than {READ_TIMEOUT:?}",
                    self.queue
                ),
            )),
        }
    }
}

/// Keeps the later of two runs of `entry`.
fn note(last: &mut LastRuns, entry: String, run: DateTime<Utc>) {
    let slot = last.entry(entry).or_insert(run);
    if run > *slot {
        *slot = run;
    }
}

/// A persistent record message with `body`.
fn record(body: Vec<u8>) -> Message {
    Message {
        properties: Properties {
            content_type: Some("application/json".into()),
            persistent: true,
            ..Properties::default()
        },
        body,
    }
}
